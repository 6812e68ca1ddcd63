//! What every namespace holds for its pods' API access, as
//! kube-controller-manager's `serviceaccount` and `root-ca-cert-publisher`
//! controllers keep it: the `default` ServiceAccount, and the ConfigMap
//! `kube-root-ca.crt` whose `ca.crt` is the cluster CA. Each is made when
//! its namespace appears and made again when deleted (the ConfigMap also
//! when changed), never in a namespace being deleted.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use super::{Change, Controller, list_all, log_failure, write_opts};
use crate::admission::serviceaccount::{DEFAULT_SERVICE_ACCOUNT, ROOT_CA_CONFIGMAP};
use crate::object;
use crate::registry::Registry;
use crate::resources::{CONFIGMAPS, NAMESPACES, Resource, SERVICEACCOUNTS};
use crate::store::EventType;

/// The annotation upstream's publisher sets on the ConfigMap.
const DESCRIPTION_KEY: &str = "kubernetes.io/description";
const DESCRIPTION: &str = "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters.";

/// Whether namespace `ns` exists and is not being deleted.
fn active(reg: &Registry, ns: &str) -> bool {
    matches!(reg.store.get(&NAMESPACES, "", ns), Ok(Some(n)) if object::deletion_timestamp(&n).is_none())
}

/// The namespaces a change concerns: a namespace itself, or the one of
/// an object named `name` of `kind`.
fn concerned(ev: &Change, kind: &str, name: &str) -> Option<String> {
    if ev.resource.kind == "Namespace" {
        return (ev.kind != EventType::Deleted).then(|| object::name(ev.object_meta()).to_owned());
    }
    (ev.resource.kind == kind && object::name(ev.object_meta()) == name)
        .then(|| ev.namespace.clone())
}

/// Makes the `default` ServiceAccount in every namespace.
#[derive(Debug, Default)]
pub struct ServiceAccounts {
    pending: BTreeSet<String>,
}

impl Controller for ServiceAccounts {
    fn name(&self) -> &'static str {
        "serviceaccount"
    }

    fn watches(&self, res: &Resource) -> bool {
        matches!(res.kind, "Namespace" | "ServiceAccount")
    }

    fn resync(&mut self, reg: &Registry) {
        for ns in list_all(reg, &NAMESPACES, None) {
            self.pending.insert(object::name(&ns).to_owned());
        }
    }

    fn observe(&mut self, _reg: &Registry, ev: &Change) {
        if ev.resource.kind == "ServiceAccount" && ev.kind != EventType::Deleted {
            return;
        }
        if let Some(ns) = concerned(ev, "ServiceAccount", DEFAULT_SERVICE_ACCOUNT) {
            self.pending.insert(ns);
        }
    }

    fn reconcile(&mut self, reg: &Registry) {
        for ns in std::mem::take(&mut self.pending) {
            if !active(reg, &ns)
                || matches!(
                    reg.store
                        .entry(&SERVICEACCOUNTS, &ns, DEFAULT_SERVICE_ACCOUNT),
                    Ok(Some(_))
                )
            {
                continue;
            }
            let sa = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": DEFAULT_SERVICE_ACCOUNT}});
            match reg.create(&SERVICEACCOUNTS, &ns, sa, &write_opts()) {
                Ok(_) => tracing::debug!(namespace = %ns, "created the default service account"),
                Err(e) if matches!(e.code, 403 | 409) => {}
                Err(e) => log_failure(self.name(), &ns, &e),
            }
        }
    }
}

/// Keeps `kube-root-ca.crt` (`ca.crt`: the cluster CA) in every namespace.
#[derive(Debug)]
pub struct RootCaPublisher {
    ca: String,
    pending: BTreeSet<String>,
}

impl RootCaPublisher {
    /// A publisher of the CA certificate(s) `ca` (PEM).
    pub fn new(ca: String) -> Self {
        Self {
            ca,
            pending: BTreeSet::new(),
        }
    }

    fn wanted(&self) -> Value {
        json!({"ca.crt": self.ca})
    }

    fn sync(&self, reg: &Registry, ns: &str) {
        if !active(reg, ns) {
            return;
        }
        let current = match reg.store.get(&CONFIGMAPS, ns, ROOT_CA_CONFIGMAP) {
            Ok(c) => c,
            Err(e) => return log_failure(self.name(), ns, &e),
        };
        let result = match current {
            None => {
                let cm = json!({
                    "apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": ROOT_CA_CONFIGMAP, "annotations": {DESCRIPTION_KEY: DESCRIPTION}},
                    "data": self.wanted(),
                });
                reg.create(&CONFIGMAPS, ns, cm, &write_opts()).map(drop)
            }
            Some(cm) => {
                let described = cm
                    .pointer("/metadata/annotations")
                    .and_then(|a| a.get(DESCRIPTION_KEY))
                    .and_then(Value::as_str)
                    .is_some_and(|d| !d.is_empty());
                if cm.get("data") == Some(&self.wanted()) && described {
                    return;
                }
                let mut next = (*cm).clone();
                next["data"] = self.wanted();
                if let Some(m) = next.as_object_mut() {
                    m.remove("binaryData");
                }
                if !next
                    .pointer("/metadata/annotations")
                    .is_some_and(Value::is_object)
                {
                    next["metadata"]["annotations"] = json!({});
                }
                next["metadata"]["annotations"][DESCRIPTION_KEY] = json!(DESCRIPTION);
                tracing::info!(namespace = %ns, "restoring the kube-root-ca.crt ConfigMap");
                reg.update(
                    &CONFIGMAPS,
                    ns,
                    ROOT_CA_CONFIGMAP,
                    None,
                    next,
                    &write_opts(),
                )
                .map(drop)
            }
        };
        match result {
            Ok(()) => {}
            Err(e) if e.code == 403 => {}
            Err(e) => log_failure(self.name(), ns, &e),
        }
    }
}

impl Controller for RootCaPublisher {
    fn name(&self) -> &'static str {
        "root-ca-cert-publisher"
    }

    fn watches(&self, res: &Resource) -> bool {
        matches!(res.kind, "Namespace" | "ConfigMap")
    }

    fn resync(&mut self, reg: &Registry) {
        for ns in list_all(reg, &NAMESPACES, None) {
            self.pending.insert(object::name(&ns).to_owned());
        }
    }

    fn observe(&mut self, _reg: &Registry, ev: &Change) {
        if let Some(ns) = concerned(ev, "ConfigMap", ROOT_CA_CONFIGMAP) {
            self.pending.insert(ns);
        }
    }

    fn reconcile(&mut self, reg: &Registry) {
        for ns in std::mem::take(&mut self.pending) {
            self.sync(reg, &ns);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::WriteOptions;

    #[test]
    fn the_default_account_and_the_ca_are_made_and_restored() {
        let reg = Registry::in_memory().expect("registry");
        let mut sas = ServiceAccounts::default();
        let mut ca = RootCaPublisher::new("PEM".into());
        sas.resync(&reg);
        ca.resync(&reg);
        sas.reconcile(&reg);
        ca.reconcile(&reg);
        for ns in ["default", "kube-system"] {
            assert!(
                reg.store
                    .get(&SERVICEACCOUNTS, ns, "default")
                    .expect("get")
                    .is_some()
            );
            let cm = reg
                .store
                .get(&CONFIGMAPS, ns, ROOT_CA_CONFIGMAP)
                .expect("get")
                .expect("made");
            assert_eq!(cm["data"]["ca.crt"], "PEM");
        }
        // Changed: put back.
        let mut cm = (*reg
            .store
            .get(&CONFIGMAPS, "default", ROOT_CA_CONFIGMAP)
            .expect("get")
            .expect("cm"))
        .clone();
        cm["data"] = json!({"ca.crt": "forged"});
        reg.update(
            &CONFIGMAPS,
            "default",
            ROOT_CA_CONFIGMAP,
            None,
            cm,
            &WriteOptions::default(),
        )
        .expect("update");
        ca.pending.insert("default".into());
        ca.reconcile(&reg);
        let cm = reg
            .store
            .get(&CONFIGMAPS, "default", ROOT_CA_CONFIGMAP)
            .expect("get")
            .expect("cm");
        assert_eq!(cm["data"]["ca.crt"], "PEM");
    }
}
