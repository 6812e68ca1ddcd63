//! Ferry's own components in a `ferry up` cluster, installed the way a user
//! installs them on any cluster: the objects of `deploy/` (ferry-agent's
//! DaemonSet, ferry-dns's Deployment behind the `kube-dns` Service, their
//! RBAC and ConfigMaps), rendered for this cluster and applied with
//! server-side apply. Rendering changes only what `deploy/`'s README says
//! an operator sets: the apiserver's address, the nodes' uplink and routing
//! mode, where each node's agent keeps its pins and ferry-cni its state,
//! and the cluster DNS Service's addresses.

use std::net::IpAddr;

use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{Value, json};

use crate::{Error, Result};

/// `deploy/`'s manifests, in the kustomization's order.
pub const MANIFESTS: &[(&str, &str)] = &[
    (
        "agent-rbac.yaml",
        include_str!("../../deploy/agent-rbac.yaml"),
    ),
    (
        "agent-config.yaml",
        include_str!("../../deploy/agent-config.yaml"),
    ),
    (
        "agent-daemonset.yaml",
        include_str!("../../deploy/agent-daemonset.yaml"),
    ),
    ("dns-rbac.yaml", include_str!("../../deploy/dns-rbac.yaml")),
    (
        "dns-config.yaml",
        include_str!("../../deploy/dns-config.yaml"),
    ),
    (
        "dns-deployment.yaml",
        include_str!("../../deploy/dns-deployment.yaml"),
    ),
    (
        "dns-service.yaml",
        include_str!("../../deploy/dns-service.yaml"),
    ),
    ("dns-pdb.yaml", include_str!("../../deploy/dns-pdb.yaml")),
];

/// The field manager of `ferry up`'s applies.
pub const FIELD_MANAGER: &str = "ferry-up";

/// What this cluster's rendering of `deploy/` needs to know.
#[derive(Debug, Clone)]
pub struct Render<'a> {
    /// The apiserver's address and port as the nodes reach it (the
    /// `kubernetes` ClusterIP works only once the agent runs).
    pub apiserver: (IpAddr, u16),
    /// The nodes' link onto the underlay (`FERRY_AGENT_DEVICES`).
    pub uplink: &'a str,
    /// Where each node's agent pins: `<bpffs_prefix>$(NODE_NAME)`, expanded
    /// by the node runtime from the pod's own `NODE_NAME`.
    pub bpffs_prefix: &'a str,
    /// Where each node's ferry-cni keeps its state on the node:
    /// `<cni_state_prefix>$(NODE_NAME)` (the plugin runs on the node, not in
    /// a container, so this is a node path).
    pub cni_state_prefix: &'a str,
    /// The cluster DNS Service's addresses, the primary family first.
    pub cluster_dns: &'a [IpAddr],
}

/// Every object of `deploy/`, parsed, in order.
pub fn manifests() -> Result<Vec<Value>> {
    let mut all = Vec::new();
    for (file, text) in MANIFESTS {
        let docs: Vec<Value> = serde_saphyr::from_multiple(text)
            .map_err(|e| Error::Config(format!("deploy/{file}: {e}")))?;
        all.extend(docs.into_iter().filter(|d| !d.is_null()));
    }
    Ok(all)
}

/// `deploy/`'s objects set for this cluster.
pub fn render(r: &Render<'_>) -> Result<Vec<Value>> {
    let mut objects = manifests()?;
    for o in &mut objects {
        let kind = o["kind"].as_str().unwrap_or_default().to_owned();
        let name = o["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        match (kind.as_str(), name.as_str()) {
            ("ConfigMap", "ferry-agent") => {
                let data = &mut o["data"];
                data["KUBERNETES_SERVICE_HOST"] = json!(r.apiserver.0.to_string());
                data["KUBERNETES_SERVICE_PORT"] = json!(r.apiserver.1.to_string());
                data["FERRY_AGENT_DEVICES"] = json!(r.uplink);
                // The nodes share one L2 underlay; `ferry up` routes the
                // pod CIDRs in it.
                data["FERRY_AGENT_ROUTING"] = json!("direct");
            }
            ("DaemonSet", "ferry-agent") => {
                let bpffs = format!("{}$(NODE_NAME)", r.bpffs_prefix);
                let spec = &mut o["spec"]["template"]["spec"];
                for list in ["initContainers", "containers"] {
                    for c in spec[list].as_array_mut().into_iter().flatten() {
                        set_env(c, "FERRY_AGENT_BPFFS_ROOT", &format!("{bpffs}/ferry"));
                        if c["name"] == "install-cni"
                            && let Some(command) = c["command"].as_array_mut()
                        {
                            command.push(json!("--cni-state-dir"));
                            command.push(json!(format!("{}$(NODE_NAME)", r.cni_state_prefix)));
                        }
                    }
                }
            }
            ("Service", "kube-dns") => {
                let ips: Vec<String> = r.cluster_dns.iter().map(ToString::to_string).collect();
                let spec = &mut o["spec"];
                spec["clusterIP"] = json!(ips.first());
                spec["clusterIPs"] = json!(ips);
                spec["ipFamilyPolicy"] = json!(if ips.len() > 1 {
                    "RequireDualStack"
                } else {
                    "SingleStack"
                });
                spec["ipFamilies"] = json!(
                    r.cluster_dns
                        .iter()
                        .map(|ip| if ip.is_ipv4() { "IPv4" } else { "IPv6" })
                        .collect::<Vec<_>>()
                );
            }
            _ => {}
        }
    }
    Ok(objects)
}

/// Sets `name` in container `c`'s `env`, after `NODE_NAME` when it is
/// there (`$(NODE_NAME)` expands only from variables defined before).
fn set_env(c: &mut Value, name: &str, value: &str) {
    let env = &mut c["env"];
    if !env.is_array() {
        *env = json!([]);
    }
    let Some(list) = env.as_array_mut() else {
        return;
    };
    list.retain(|e| e["name"] != name);
    list.push(json!({"name": name, "value": value}));
}

/// Applies `objects` (server-side, as [`FIELD_MANAGER`], taking over
/// fields another manager set).
pub async fn apply(client: &kube::Client, objects: &[Value]) -> Result<()> {
    let params = PatchParams::apply(FIELD_MANAGER).force();
    for o in objects {
        let (api_version, kind) = (
            o["apiVersion"].as_str().unwrap_or_default(),
            o["kind"].as_str().unwrap_or_default(),
        );
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind));
        let name = o["metadata"]["name"].as_str().unwrap_or_default();
        let api: Api<DynamicObject> = match o["metadata"]["namespace"].as_str() {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
            None => Api::all_with(client.clone(), &resource),
        };
        api.patch(name, &params, &Patch::Apply(o))
            .await
            .map_err(|e| Error::Config(format!("applying {kind} {name} from deploy/: {e}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The manifests embedded are the kustomization's, in its order.
    #[test]
    fn manifests_are_the_kustomizations_resources() {
        let k: Value = serde_saphyr::from_str(include_str!("../../deploy/kustomization.yaml"))
            .expect("kustomization");
        let listed: Vec<&str> = k["resources"]
            .as_array()
            .expect("resources")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let embedded: Vec<&str> = MANIFESTS.iter().map(|(f, _)| *f).collect();
        assert_eq!(embedded, listed);
    }

    fn rendered(dns: &[IpAddr]) -> Vec<Value> {
        render(&Render {
            apiserver: ("10.0.0.250".parse().expect("ip"), 6443),
            uplink: "ul0",
            bpffs_prefix: "/sys/fs/bpf/ft1-",
            cni_state_prefix: "/var/lib/ft1/cni-",
            cluster_dns: dns,
        })
        .expect("render")
    }

    fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
        objects
            .iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
            .expect("object")
    }

    #[test]
    fn rendering_sets_what_an_operator_sets_and_nothing_else() {
        let dns: Vec<IpAddr> = vec!["10.96.0.10".parse().expect("ip")];
        let before = manifests().expect("manifests");
        let after = rendered(&dns);
        assert_eq!(before.len(), after.len());
        let changed: Vec<String> = before
            .iter()
            .zip(&after)
            .filter(|(b, a)| b != a)
            .map(|(_, a)| {
                format!(
                    "{}/{}",
                    a["kind"].as_str().unwrap_or(""),
                    a["metadata"]["name"].as_str().unwrap_or("")
                )
            })
            .collect();
        assert_eq!(
            changed,
            [
                "ConfigMap/ferry-agent",
                "DaemonSet/ferry-agent",
                "Service/kube-dns"
            ]
        );
        let cm = &find(&after, "ConfigMap", "ferry-agent")["data"];
        assert_eq!(cm["KUBERNETES_SERVICE_HOST"], "10.0.0.250");
        assert_eq!(cm["KUBERNETES_SERVICE_PORT"], "6443");
        assert_eq!(cm["FERRY_AGENT_DEVICES"], "ul0");
        assert_eq!(cm["FERRY_AGENT_ROUTING"], "direct");
        let ds = find(&after, "DaemonSet", "ferry-agent");
        let pod = &ds["spec"]["template"]["spec"];
        let containers = pod["initContainers"].as_array().into_iter().flatten();
        for c in containers.chain(pod["containers"].as_array().into_iter().flatten()) {
            let env = c["env"].as_array().expect("env");
            let names: Vec<&str> = env.iter().filter_map(|e| e["name"].as_str()).collect();
            let at = names
                .iter()
                .position(|n| *n == "FERRY_AGENT_BPFFS_ROOT")
                .expect("set");
            assert!(names[..at].contains(&"NODE_NAME"), "{names:?}");
            assert_eq!(env[at]["value"], "/sys/fs/bpf/ft1-$(NODE_NAME)/ferry");
        }
        let install = pod["initContainers"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["name"] == "install-cni")
            .expect("install-cni");
        let command = install["command"].as_array().expect("command");
        assert_eq!(
            command[command.len() - 2..],
            [
                json!("--cni-state-dir"),
                json!("/var/lib/ft1/cni-$(NODE_NAME)")
            ]
        );
        let svc = &find(&after, "Service", "kube-dns")["spec"];
        assert_eq!(svc["clusterIPs"], json!(["10.96.0.10"]));
        assert_eq!(svc["ipFamilyPolicy"], "SingleStack");
    }

    #[test]
    fn a_dual_stack_cluster_gets_a_dual_stack_dns_service() {
        let dns: Vec<IpAddr> = vec![
            "fd00:10:96::a".parse().expect("ip"),
            "10.96.0.10".parse().expect("ip"),
        ];
        let objects = rendered(&dns);
        let svc = &find(&objects, "Service", "kube-dns")["spec"];
        assert_eq!(svc["clusterIP"], "fd00:10:96::a");
        assert_eq!(svc["ipFamilies"], json!(["IPv6", "IPv4"]));
        assert_eq!(svc["ipFamilyPolicy"], "RequireDualStack");
    }
}
