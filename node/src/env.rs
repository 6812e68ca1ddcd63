//! A container's environment, as the kubelet builds it: the Service
//! variables (`<SVC>_SERVICE_HOST`, docker-link style `<SVC>_PORT_...`),
//! then `envFrom`, then `env` (values with `$(VAR)` expanded, `fieldRef`,
//! `configMapKeyRef`, `secretKeyRef`), later entries replacing earlier ones.
//!
//! Everything here is pure: the worker fetches the ConfigMaps, Secrets and
//! Services first ([`References`]).

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret, Service};

/// PATH when the container's env has none (what a Debian image sets).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Why an environment cannot be built: the container waits with reason
/// `CreateContainerConfigError` and this message.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvError {
    #[error("configmap {0:?} not found")]
    ConfigMapMissing(String),
    #[error("secret {0:?} not found")]
    SecretMissing(String),
    #[error("couldn't find key {key} in ConfigMap {namespace}/{name}")]
    ConfigMapKey {
        namespace: String,
        name: String,
        key: String,
    },
    #[error("couldn't find key {key} in Secret {namespace}/{name}")]
    SecretKey {
        namespace: String,
        name: String,
        key: String,
    },
    #[error("env {name}: unsupported fieldRef {path:?}")]
    FieldPath { name: String, path: String },
    #[error("env {name}: {what} is not supported by ferry-node yet")]
    Unsupported { name: String, what: &'static str },
}

/// The API objects a container's env refers to, fetched beforehand:
/// `None` where the object does not exist.
#[derive(Debug, Default, Clone)]
pub struct References {
    pub config_maps: BTreeMap<String, Option<ConfigMap>>,
    pub secrets: BTreeMap<String, Option<Secret>>,
    /// Services of the pod's namespace (for service links) and
    /// `default/kubernetes`.
    pub services: Vec<Service>,
    /// The pod's ServiceAccount tokens, by what their projections ask
    /// ([`crate::volumes::token`]).
    pub tokens: BTreeMap<crate::volumes::token::TokenKey, String>,
}

/// What the downward API reads besides the pod itself.
#[derive(Debug, Clone, Default)]
pub struct PodAddresses {
    pub pod_ips: Vec<IpAddr>,
    pub host_ips: Vec<IpAddr>,
}

/// The names of the ConfigMaps and Secrets `container` refers to.
pub fn referenced(container: &Container) -> (Vec<String>, Vec<String>) {
    let mut cms = Vec::new();
    let mut secrets = Vec::new();
    for from in container.env_from.iter().flatten() {
        if let Some(r) = &from.config_map_ref {
            cms.push(r.name.clone());
        }
        if let Some(r) = &from.secret_ref {
            secrets.push(r.name.clone());
        }
    }
    for var in container.env.iter().flatten() {
        if let Some(from) = &var.value_from {
            if let Some(r) = &from.config_map_key_ref {
                cms.push(r.name.clone());
            }
            if let Some(r) = &from.secret_key_ref {
                secrets.push(r.name.clone());
            }
        }
    }
    cms.sort();
    cms.dedup();
    secrets.sort();
    secrets.dedup();
    (cms, secrets)
}

/// An ordered environment where setting a name again replaces its value.
#[derive(Debug, Default, Clone)]
pub struct Env {
    vars: Vec<(String, String)>,
}

impl Env {
    pub fn set(&mut self, name: impl Into<String>, value: impl Into<String>) {
        let name = name.into();
        let value = value.into();
        match self.vars.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = value,
            None => self.vars.push((name, value)),
        }
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn vars(&self) -> &[(String, String)] {
        &self.vars
    }

    /// `$(VAR)` references in `s` replaced by this env's values, as the
    /// kubelet expands them: `$$` is a literal `$`, an undefined reference
    /// stays as written.
    pub fn expand(&self, s: &str) -> String {
        expand(s, |name| self.get(name).map(str::to_owned))
    }
}

/// Kubernetes' `$(VAR)` expansion.
pub fn expand(s: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(rest.get(..i).unwrap_or_default());
        let after = rest.get(i + 1..).unwrap_or_default();
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(') {
            match inner.find(')') {
                Some(end) => {
                    let name = inner.get(..end).unwrap_or_default();
                    match lookup(name) {
                        Some(v) => out.push_str(&v),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = inner.get(end + 1..).unwrap_or_default();
                }
                None => {
                    out.push_str("$(");
                    rest = inner;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// Builds `container`'s environment in `pod`.
pub fn build(
    pod: &Pod,
    container: &Container,
    refs: &References,
    addrs: &PodAddresses,
    hostname: &str,
) -> Result<Env, EnvError> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut env = Env::default();
    env.set("PATH", DEFAULT_PATH);
    env.set("HOSTNAME", hostname);
    env.set("HOME", "/root");
    let links = pod
        .spec
        .as_ref()
        .and_then(|s| s.enable_service_links)
        .unwrap_or(true);
    for (name, value) in service_env(&refs.services, namespace, links) {
        env.set(name, value);
    }
    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.as_deref().unwrap_or_default();
        if let Some(r) = &from.config_map_ref {
            match refs.config_maps.get(&r.name).and_then(Option::as_ref) {
                Some(cm) => {
                    for (k, v) in cm.data.iter().flatten() {
                        let name = format!("{prefix}{k}");
                        if is_env_name(&name) {
                            env.set(name, v.clone());
                        }
                    }
                }
                None if r.optional == Some(true) => {}
                None => return Err(EnvError::ConfigMapMissing(r.name.clone())),
            }
        }
        if let Some(r) = &from.secret_ref {
            match refs.secrets.get(&r.name).and_then(Option::as_ref) {
                Some(s) => {
                    for (k, v) in secret_entries(s) {
                        let name = format!("{prefix}{k}");
                        if is_env_name(&name) {
                            env.set(name, v);
                        }
                    }
                }
                None if r.optional == Some(true) => {}
                None => return Err(EnvError::SecretMissing(r.name.clone())),
            }
        }
    }
    for var in container.env.iter().flatten() {
        let value = match &var.value_from {
            None => Some(env.expand(var.value.as_deref().unwrap_or_default())),
            Some(from) => {
                if let Some(f) = &from.field_ref {
                    Some(field(pod, addrs, &var.name, &f.field_path)?)
                } else if let Some(r) = &from.config_map_key_ref {
                    let optional = r.optional == Some(true);
                    match refs.config_maps.get(&r.name).and_then(Option::as_ref) {
                        Some(cm) => match cm.data.as_ref().and_then(|d| d.get(&r.key)) {
                            Some(v) => Some(v.clone()),
                            None if optional => None,
                            None => {
                                return Err(EnvError::ConfigMapKey {
                                    namespace: namespace.into(),
                                    name: r.name.clone(),
                                    key: r.key.clone(),
                                });
                            }
                        },
                        None if optional => None,
                        None => return Err(EnvError::ConfigMapMissing(r.name.clone())),
                    }
                } else if let Some(r) = &from.secret_key_ref {
                    let optional = r.optional == Some(true);
                    match refs.secrets.get(&r.name).and_then(Option::as_ref) {
                        Some(s) => match secret_entries(s).into_iter().find(|(k, _)| *k == r.key) {
                            Some((_, v)) => Some(v),
                            None if optional => None,
                            None => {
                                return Err(EnvError::SecretKey {
                                    namespace: namespace.into(),
                                    name: r.name.clone(),
                                    key: r.key.clone(),
                                });
                            }
                        },
                        None if optional => None,
                        None => return Err(EnvError::SecretMissing(r.name.clone())),
                    }
                } else if from.resource_field_ref.is_some() {
                    return Err(EnvError::Unsupported {
                        name: var.name.clone(),
                        what: "resourceFieldRef",
                    });
                } else {
                    return Err(EnvError::Unsupported {
                        name: var.name.clone(),
                        what: "this valueFrom source",
                    });
                }
            }
        };
        if let Some(value) = value {
            env.set(var.name.clone(), value);
        }
    }
    Ok(env)
}

/// A Secret's entries, `stringData` (which the apiserver normally folds
/// into `data`) included.
fn secret_entries(s: &Secret) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = s
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), String::from_utf8_lossy(&v.0).into_owned()))
        .collect();
    for (k, v) in s.string_data.iter().flatten() {
        out.retain(|(n, _)| n != k);
        out.push((k.clone(), v.clone()));
    }
    out
}

/// What envFrom accepts as a name (the kubelet skips the rest).
fn is_env_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

fn join_ips(ips: &[IpAddr]) -> String {
    ips.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// The downward API's `fieldRef` paths.
pub(crate) fn field(
    pod: &Pod,
    addrs: &PodAddresses,
    name: &str,
    path: &str,
) -> Result<String, EnvError> {
    let meta = &pod.metadata;
    let bracket = |prefix: &str| -> Option<String> {
        path.strip_prefix(prefix)?
            .strip_suffix("']")
            .map(str::to_owned)
    };
    let spec = pod.spec.as_ref();
    Ok(match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.podIP" => addrs
            .pod_ips
            .first()
            .map(ToString::to_string)
            .unwrap_or_default(),
        "status.podIPs" => join_ips(&addrs.pod_ips),
        "status.hostIP" => addrs
            .host_ips
            .first()
            .map(ToString::to_string)
            .unwrap_or_default(),
        "status.hostIPs" => join_ips(&addrs.host_ips),
        _ => {
            if let Some(key) = bracket("metadata.labels['") {
                meta.labels
                    .as_ref()
                    .and_then(|l| l.get(&key))
                    .cloned()
                    .unwrap_or_default()
            } else if let Some(key) = bracket("metadata.annotations['") {
                meta.annotations
                    .as_ref()
                    .and_then(|l| l.get(&key))
                    .cloned()
                    .unwrap_or_default()
            } else {
                return Err(EnvError::FieldPath {
                    name: name.into(),
                    path: path.into(),
                });
            }
        }
    })
}

/// `my-svc` -> `MY_SVC`.
fn env_prefix(service: &str) -> String {
    service.to_ascii_uppercase().replace('-', "_")
}

/// The Service variables the kubelet injects: every Service with a cluster
/// IP in `namespace` when service links are on, and `default/kubernetes`
/// (the master service) always.
pub fn service_env(services: &[Service], namespace: &str, links: bool) -> Vec<(String, String)> {
    let mut chosen: BTreeMap<String, &Service> = BTreeMap::new();
    for svc in services {
        let Some(name) = svc.metadata.name.as_deref() else {
            continue;
        };
        let ns = svc.metadata.namespace.as_deref().unwrap_or_default();
        let ip = svc
            .spec
            .as_ref()
            .and_then(|s| s.cluster_ip.as_deref())
            .unwrap_or_default();
        if ip.is_empty() || ip == "None" {
            continue;
        }
        if ns == "default" && name == "kubernetes" {
            chosen.entry(name.to_owned()).or_insert(svc);
        } else if ns == namespace && links {
            chosen.insert(name.to_owned(), svc);
        }
    }
    let mut out = Vec::new();
    for (name, svc) in chosen {
        let Some(spec) = svc.spec.as_ref() else {
            continue;
        };
        let ip = spec.cluster_ip.clone().unwrap_or_default();
        let ports = spec.ports.as_deref().unwrap_or_default();
        let prefix = env_prefix(&name);
        out.push((format!("{prefix}_SERVICE_HOST"), ip.clone()));
        if let Some(first) = ports.first() {
            out.push((format!("{prefix}_SERVICE_PORT"), first.port.to_string()));
        }
        for p in ports {
            if let Some(pn) = p.name.as_deref().filter(|n| !n.is_empty()) {
                out.push((
                    format!("{prefix}_SERVICE_PORT_{}", env_prefix(pn)),
                    p.port.to_string(),
                ));
            }
        }
        let host = if ip.contains(':') {
            format!("[{ip}]")
        } else {
            ip.clone()
        };
        for (i, p) in ports.iter().enumerate() {
            let proto = p.protocol.as_deref().unwrap_or("TCP");
            let lower = proto.to_ascii_lowercase();
            let url = format!("{lower}://{host}:{}", p.port);
            if i == 0 {
                out.push((format!("{prefix}_PORT"), url.clone()));
            }
            let pp = format!("{prefix}_PORT_{}_{}", p.port, proto.to_ascii_uppercase());
            out.push((pp.clone(), url));
            out.push((format!("{pp}_PROTO"), lower));
            out.push((format!("{pp}_PORT"), p.port.to_string()));
            out.push((format!("{pp}_ADDR"), ip.clone()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn from_json<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
        serde_json::from_value(v).expect("valid object")
    }

    #[test]
    fn expansion() {
        let lookup = |n: &str| (n == "A").then(|| "x".to_owned());
        assert_eq!(expand("$(A)-$(B)", lookup), "x-$(B)");
        assert_eq!(expand("$$(A) $ $(A", lookup), "$(A) $ $(A");
        assert_eq!(expand("plain", lookup), "plain");
    }

    #[test]
    fn service_links_like_the_kubelet() {
        let services: Vec<Service> = vec![
            from_json(
                json!({"metadata": {"name": "kubernetes", "namespace": "default"},
                "spec": {"clusterIP": "10.96.0.1", "ports": [{"name": "https", "port": 443, "protocol": "TCP"}]}}),
            ),
            from_json(json!({"metadata": {"name": "my-web", "namespace": "apps"},
                "spec": {"clusterIP": "10.96.3.4", "ports": [{"name": "http", "port": 80}, {"name": "dns", "port": 53, "protocol": "UDP"}]}})),
            from_json(
                json!({"metadata": {"name": "headless", "namespace": "apps"},
                "spec": {"clusterIP": "None", "ports": [{"port": 80}]}}),
            ),
        ];
        let env: BTreeMap<_, _> = service_env(&services, "apps", true).into_iter().collect();
        assert_eq!(env["MY_WEB_SERVICE_HOST"], "10.96.3.4");
        assert_eq!(env["MY_WEB_SERVICE_PORT"], "80");
        assert_eq!(env["MY_WEB_SERVICE_PORT_DNS"], "53");
        assert_eq!(env["MY_WEB_PORT"], "tcp://10.96.3.4:80");
        assert_eq!(env["MY_WEB_PORT_53_UDP"], "udp://10.96.3.4:53");
        assert_eq!(env["MY_WEB_PORT_53_UDP_PROTO"], "udp");
        assert_eq!(env["MY_WEB_PORT_80_TCP_ADDR"], "10.96.3.4");
        assert_eq!(env["KUBERNETES_SERVICE_HOST"], "10.96.0.1");
        assert_eq!(env["KUBERNETES_PORT_443_TCP_PORT"], "443");
        assert!(!env.keys().any(|k| k.starts_with("HEADLESS")));
        let off: BTreeMap<_, _> = service_env(&services, "apps", false).into_iter().collect();
        assert!(off.contains_key("KUBERNETES_SERVICE_HOST"));
        assert!(!off.contains_key("MY_WEB_SERVICE_HOST"));
    }

    #[test]
    fn env_sources_in_order() {
        let pod: Pod = from_json(json!({
            "metadata": {"name": "p", "namespace": "apps", "uid": "u1", "labels": {"app": "web"}},
            "spec": {"nodeName": "n0", "containers": [{"name": "c"}]}}));
        let container: Container = from_json(json!({"name": "c",
            "envFrom": [{"configMapRef": {"name": "cm"}, "prefix": "CM_"}],
            "env": [
                {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                {"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "greeting"}}},
                {"name": "PASS", "valueFrom": {"secretKeyRef": {"name": "s", "key": "password"}}},
                {"name": "MSG", "value": "$(GREETING) from $(POD)"},
                {"name": "CM_greeting", "value": "override"}]}));
        let mut refs = References::default();
        refs.config_maps.insert(
            "cm".into(),
            Some(from_json(
                json!({"metadata": {"name": "cm"}, "data": {"greeting": "hello", "1bad": "x"}}),
            )),
        );
        refs.secrets.insert(
            "s".into(),
            Some(from_json(
                json!({"metadata": {"name": "s"}, "data": {"password": "czNjcjN0"}}),
            )),
        );
        let addrs = PodAddresses {
            pod_ips: vec!["10.244.0.5".parse().expect("ip")],
            host_ips: vec![],
        };
        let env = build(&pod, &container, &refs, &addrs, "p").expect("env");
        assert_eq!(env.get("POD"), Some("p"));
        assert_eq!(env.get("IP"), Some("10.244.0.5"));
        assert_eq!(env.get("APP"), Some("web"));
        assert_eq!(env.get("GREETING"), Some("hello"));
        assert_eq!(env.get("PASS"), Some("s3cr3t"));
        assert_eq!(env.get("MSG"), Some("hello from p"));
        assert_eq!(env.get("CM_greeting"), Some("override"));
        assert_eq!(env.get("CM_1bad"), Some("x"));
        assert_eq!(env.get("PATH"), Some(DEFAULT_PATH));

        refs.config_maps.insert("cm".into(), None);
        assert_eq!(
            build(&pod, &container, &refs, &addrs, "p").err(),
            Some(EnvError::ConfigMapMissing("cm".into()))
        );
    }
}
