//! ClusterRole aggregation (kube-controller-manager's
//! `clusterrole-aggregation`): a ClusterRole with an `aggregationRule` has
//! its `rules` set to the union of the rules of every other ClusterRole
//! whose labels match one of its `clusterRoleSelectors`, taken in name
//! order with duplicates dropped, and kept so as those roles change.

use serde_json::{Value, json};

use super::{Change, Controller, list_all, log_failure, write_opts};
use crate::object;
use crate::rbac::rules::Rule;
use crate::registry::Registry;
use crate::resources::{CLUSTERROLES, Resource};
use crate::selector::LabelSelector;

#[derive(Debug, Default)]
pub struct ClusterRoleAggregation {
    /// A ClusterRole changed since the last reconcile.
    dirty: bool,
}

/// The rules `role` should hold, from `all` ClusterRoles (sorted by
/// name); None when it has no aggregation rule or a selector is invalid.
pub fn aggregated_rules(role: &Value, all: &[std::sync::Arc<Value>]) -> Option<Vec<Rule>> {
    let selectors = role
        .pointer("/aggregationRule/clusterRoleSelectors")
        .and_then(Value::as_array)?;
    let selectors: Vec<LabelSelector> = selectors
        .iter()
        .map(LabelSelector::from_api)
        .collect::<Result<_, _>>()
        .ok()?;
    let mut rules: Vec<Rule> = Vec::new();
    for other in all {
        if object::name(other) == object::name(role) {
            continue;
        }
        let labels = object::labels(other);
        let label = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        if !selectors.iter().any(|s| s.matches_with(label)) {
            continue;
        }
        for r in Rule::all_of(other) {
            if !rules.contains(&r) {
                rules.push(r);
            }
        }
    }
    Some(rules)
}

impl Controller for ClusterRoleAggregation {
    fn name(&self) -> &'static str {
        "clusterrole-aggregation"
    }

    fn watches(&self, res: &Resource) -> bool {
        *res == CLUSTERROLES
    }

    fn resync(&mut self, _reg: &Registry) {
        self.dirty = true;
    }

    fn observe(&mut self, _reg: &Registry, _ev: &Change) {
        self.dirty = true;
    }

    fn reconcile(&mut self, reg: &Registry) {
        if !std::mem::take(&mut self.dirty) {
            return;
        }
        let mut all = list_all(reg, &CLUSTERROLES, None);
        all.sort_by(|a, b| object::name(a).cmp(object::name(b)));
        for role in &all {
            let Some(wanted) = aggregated_rules(role, &all) else {
                continue;
            };
            if Rule::all_of(role) == wanted {
                continue;
            }
            let mut next = (**role).clone();
            next["rules"] = json!(wanted.iter().map(Rule::to_json).collect::<Vec<_>>());
            let name = object::name(role);
            if let Err(e) = reg.update(&CLUSTERROLES, "", name, None, next, &write_opts()) {
                log_failure(self.name(), name, &e);
                // Try again on the next wakeup.
                self.dirty = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn an_aggregated_role_holds_the_union_of_the_matching_roles_rules() {
        let role = |name: &str, label: Option<&str>, verbs: &[&str]| {
            let mut r = json!({"metadata": {"name": name}, "rules": [{"verbs": verbs, "apiGroups": [""], "resources": ["pods"]}]});
            if let Some(l) = label {
                r["metadata"]["labels"] = json!({ l: "true" });
            }
            Arc::new(r)
        };
        let agg = Arc::new(json!({
            "metadata": {"name": "view"},
            "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"to-view": "true"}}]},
        }));
        let all = vec![
            role("a", Some("to-view"), &["get"]),
            role("b", Some("other"), &["delete"]),
            role("c", Some("to-view"), &["list"]),
            role("d", Some("to-view"), &["get"]),
            agg.clone(),
        ];
        let rules = aggregated_rules(&agg, &all).expect("aggregated");
        let verbs: Vec<&str> = rules.iter().map(|r| r.verbs[0].as_str()).collect();
        assert_eq!(verbs, ["get", "list"]);
        assert!(aggregated_rules(&all[0], &all).is_none());
    }
}
