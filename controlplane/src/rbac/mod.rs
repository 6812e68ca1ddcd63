//! Authorization of every authenticated request, as kube-apiserver's
//! `--authorization-mode=Node,RBAC`.
//!
//! # How a request is authorized
//!
//! 1. The front door authenticates the bearer token (`crate::auth`); a
//!    missing or unknown token is 401 and never gets here, except on
//!    `/version`, `/livez`, `/readyz` and `/healthz`, which a request
//!    without a token reaches as `system:anonymous` in group
//!    `system:unauthenticated`. Every authenticated user is also in group
//!    `system:authenticated`.
//! 2. The request is read as kube-apiserver's RequestInfoFactory reads it
//!    ([`attributes`]): verb (`get`/`list`/`watch` by name and `watch=true`,
//!    `create`, `update`, `patch`, `delete`/`deletecollection`), API group,
//!    resource, subresource, namespace, name (a list's `fieldSelector`
//!    `metadata.name=X` names X), or a non-resource path with the
//!    lowercase method as its verb. This happens before routing, so an
//!    unknown path is authorized (and 403) before it is 404.
//! 3. Group `system:masters` is allowed everything.
//! 4. A node (`system:node:<name>` in `system:nodes`) is decided by the
//!    Node authorizer ([`node`]): allowed, or no opinion with a reason.
//! 5. RBAC ([`index`]): allowed when any rule ([`rules`]) of any role bound
//!    to the user, to one of its groups or (as `system:serviceaccount:NS:NAME`)
//!    to its service account allows it; ClusterRoleBindings everywhere,
//!    RoleBindings in their namespace (referencing a Role there or a
//!    ClusterRole, granted in that namespace only).
//! 6. Otherwise 403, with kube-apiserver's Status and text
//!    ([`Attributes::forbidden`]).
//!
//! Writes of Roles, ClusterRoles and bindings are further held to
//! kube's escalation check ([`Authorizer::write_guard`]): a role may grant
//! only what its author holds (or has `escalate` on it), a binding may
//! bind only a role whose rules its author holds (or has `bind` on it);
//! `system:masters` is exempt. A node may create only the Node and Lease
//! of its own name.
//!
//! The policy and the pod → node graph live in memory ([`Authorizer`]),
//! loaded from the store before the server accepts a connection and
//! brought up to date from the store's event history at the start of
//! every request (so a grant or revocation applies to the very next
//! request); the default roles are created at start ([`bootstrap`]);
//! `authorization.k8s.io` reviews ask the same authorizer ([`review`]).

pub mod attributes;
pub mod bootstrap;
pub mod index;
pub mod node;
pub mod review;
pub mod rules;

use std::sync::{Arc, PoisonError, RwLock};

use serde_json::Value;

pub use attributes::{Attributes, Target};

use crate::auth::User;
use crate::error::ApiError;
use crate::registry::WriteGuard;
use crate::resources::Resource;
use crate::store::{EventType, Store};
use index::Policy;
use node::Graph;
use rules::Rule;

/// The group allowed everything.
pub const MASTERS_GROUP: &str = "system:masters";
/// The group every authenticated user is in.
pub const AUTHENTICATED_GROUP: &str = "system:authenticated";
/// The group of a request without credentials.
pub const UNAUTHENTICATED_GROUP: &str = "system:unauthenticated";
/// The user of a request without credentials.
pub const ANONYMOUS_USER: &str = "system:anonymous";

const RBAC_GROUP: &str = "rbac.authorization.k8s.io";

#[derive(Debug, Default)]
struct State {
    /// The store revision the state reflects.
    revision: u64,
    policy: Policy,
    graph: Graph,
}

impl State {
    fn load(store: &Store) -> Self {
        // Read before listing: events after it are applied again, which is
        // harmless (both the policy and the graph take whole states).
        let revision = store.revision();
        let mut graph = Graph::default();
        match store.list(&crate::resources::PODS, None, |_| true) {
            Ok(pods) => {
                for p in pods {
                    graph.set_pod(
                        crate::object::namespace(&p),
                        crate::object::name(&p),
                        Some(&p),
                    );
                }
            }
            Err(e) => tracing::error!(error = %e, "listing pods for the node authorizer"),
        }
        Self {
            revision,
            policy: Policy::load(store),
            graph,
        }
    }
}

/// The authorizer: the RBAC policy and the node graph, kept current from
/// the store.
#[derive(Debug)]
pub struct Authorizer {
    state: RwLock<State>,
}

fn is_master(user: &User) -> bool {
    user.groups.iter().any(|g| g == MASTERS_GROUP)
}

impl Authorizer {
    /// Loads the policy and the graph from `store`.
    pub fn new(store: &Store) -> Self {
        Self {
            state: RwLock::new(State::load(store)),
        }
    }

    /// Applies the store's changes since the last call: pods to the graph,
    /// and any change of an RBAC object as a reload of the policy. When
    /// the history no longer holds them, everything is reloaded.
    pub fn refresh(&self, store: &Store) {
        let current = store.revision();
        if self
            .state
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .revision
            >= current
        {
            return;
        }
        let mut st = self.state.write().unwrap_or_else(PoisonError::into_inner);
        if st.revision >= current {
            return;
        }
        match store.events_after(st.revision) {
            Ok(events) => {
                let mut policy_changed = false;
                for ev in events {
                    if ev.resource.group == RBAC_GROUP {
                        policy_changed = true;
                    } else if *ev.resource == crate::resources::PODS {
                        match ev.object.value() {
                            Ok(pod) => {
                                let name = crate::object::name(&pod).to_string();
                                let now = (ev.kind != EventType::Deleted).then_some(&pod);
                                st.graph.set_pod(&ev.namespace, &name, now);
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "a pod event the node authorizer cannot read")
                            }
                        }
                    }
                    st.revision = st.revision.max(ev.revision);
                }
                st.revision = st.revision.max(current);
                if policy_changed {
                    st.policy = Policy::load(store);
                }
            }
            Err(_) => *st = State::load(store),
        }
    }

    /// Decides `attrs` on the current state: (allowed, reason).
    fn decide(&self, attrs: &Attributes, with_node: bool) -> (bool, String) {
        if is_master(&attrs.user) {
            return (true, String::new());
        }
        let st = self.state.read().unwrap_or_else(PoisonError::into_inner);
        let mut reasons = Vec::new();
        if with_node && let Some(node) = node::node_of(&attrs.user) {
            match node::authorize(&st.graph, node, attrs) {
                node::Decision::Allow => return (true, String::new()),
                node::Decision::NoOpinion(r) if !r.is_empty() => reasons.push(r),
                node::Decision::NoOpinion(_) => {}
            }
        }
        let (allowed, errors) = st
            .policy
            .visit(&attrs.user, attrs.namespace(), |r| r.allows(attrs));
        if allowed {
            return (true, String::new());
        }
        if !errors.is_empty() {
            let list = if errors.len() == 1 {
                errors.join("")
            } else {
                format!("[{}]", errors.join(", "))
            };
            reasons.push(format!("RBAC: {list}"));
        }
        (false, reasons.join(", "))
    }

    /// Authorizes one request after catching up with `store`: Ok, or
    /// kube-apiserver's 403.
    pub fn authorize(&self, store: &Store, attrs: &Attributes) -> Result<(), ApiError> {
        // `system:masters` needs no policy: its requests (the admin's, and
        // every component's in `ferry up`) never pay for catching up.
        if is_master(&attrs.user) {
            return Ok(());
        }
        self.refresh(store);
        match self.decide(attrs, true) {
            (true, _) => Ok(()),
            (false, reason) => Err(attrs.forbidden(&reason)),
        }
    }

    /// Whether `attrs` would be allowed now (for reviews): (allowed,
    /// reason).
    pub fn allowed(&self, attrs: &Attributes) -> (bool, String) {
        self.decide(attrs, true)
    }

    /// The RBAC rules `user` holds in `namespace`, and whether the list is
    /// incomplete (a node's rights come from the Node authorizer).
    pub fn rules_for(&self, user: &User, namespace: &str) -> (Vec<Rule>, bool) {
        let st = self.state.read().unwrap_or_else(PoisonError::into_inner);
        (
            st.policy.rules_for(user, namespace),
            node::node_of(user).is_some(),
        )
    }

    /// The check every write of `user` goes through inside the registry
    /// (after admission, with the stored object on update): NodeRestriction
    /// for nodes, escalation prevention for RBAC objects. None for
    /// `system:masters`, which is exempt from both.
    pub fn write_guard(self: &Arc<Self>, user: &User) -> Option<WriteGuard> {
        if is_master(user) {
            return None;
        }
        let this = self.clone();
        let user = user.clone();
        Some(WriteGuard::new(move |res, obj, old| {
            if let Some(node) = node::node_of(&user)
                && old.is_none()
            {
                node::admit(node, res.kind, obj)?;
            }
            if res.group == RBAC_GROUP {
                this.check_escalation(&user, res, obj, old)?;
            }
            Ok(())
        }))
    }

    /// kube's escalation prevention for a Role/ClusterRole or a binding.
    fn check_escalation(
        &self,
        user: &User,
        res: &Resource,
        obj: &Value,
        old: Option<&Value>,
    ) -> Result<(), ApiError> {
        let ns = crate::object::namespace(obj);
        let name = crate::object::name(obj);
        let unchanged =
            |fields: &[&str]| old.is_some_and(|o| fields.iter().all(|f| o.get(*f) == obj.get(*f)));
        let forbidden = |why: String| {
            attributes::forbidden_status(
                res.plural.to_string(),
                Some(name.to_string()),
                RBAC_GROUP,
                res.plural.to_string(),
                why,
            )
        };
        let granted: Vec<Rule> = match res.kind {
            "Role" | "ClusterRole" => {
                if unchanged(&["rules", "aggregationRule"]) {
                    return Ok(());
                }
                let escalate =
                    Attributes::resource(user, "escalate", RBAC_GROUP, res.plural, ns, Some(name));
                if self.decide(&escalate, false).0 {
                    return Ok(());
                }
                // The aggregation controller fills such a role with any
                // rules: only who may escalate may write one.
                if obj.get("aggregationRule").is_some_and(|a| !a.is_null()) {
                    return Err(forbidden(
                        "must have cluster-admin privileges to use the aggregationRule".into(),
                    ));
                }
                Rule::all_of(obj)
            }
            "RoleBinding" | "ClusterRoleBinding" => {
                if unchanged(&["roleRef", "subjects"]) {
                    return Ok(());
                }
                let kind = obj
                    .pointer("/roleRef/kind")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let role = obj
                    .pointer("/roleRef/name")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let plural = if kind == "Role" {
                    "roles"
                } else {
                    "clusterroles"
                };
                let bind = Attributes::resource(user, "bind", RBAC_GROUP, plural, ns, Some(role));
                if self.decide(&bind, false).0 {
                    return Ok(());
                }
                let st = self.state.read().unwrap_or_else(PoisonError::into_inner);
                match st.policy.referenced_rules(ns, kind, role) {
                    Some(rules) => rules.as_ref().clone(),
                    None => {
                        let singular = if kind == "Role" {
                            "role"
                        } else {
                            "clusterrole"
                        };
                        return Err(forbidden(format!(
                            "{singular}.rbac.authorization.k8s.io {role:?} not found"
                        )));
                    }
                }
            }
            _ => return Ok(()),
        };
        let held = self.rules_for(user, ns).0;
        let missing: Vec<String> = granted
            .iter()
            .flat_map(|r| rules::missing(&held, r))
            .map(|r| r.compact_string())
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let groups: Vec<String> = user.groups.iter().map(|g| format!("{g:?}")).collect();
        Err(forbidden(format!(
            "user {:?} (groups=[{}]) is attempting to grant RBAC permissions not currently held:\n{}",
            user.name,
            groups.join(" "),
            missing.join("\n")
        )))
    }
}
