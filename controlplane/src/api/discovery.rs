//! Discovery documents (/api, /apis, per group-version; legacy and
//! aggregated v2) and /version. The OpenAPI documents are in `openapi.rs`.

use serde_json::{Value, json};

use crate::resources::{self, GROUPS, Resource};

/// The Kubernetes version Ferry's API follows. kubectl picks its own version
/// by the minor reported here.
pub const KUBE_MAJOR: &str = "1";
pub const KUBE_MINOR: &str = "32";
pub const KUBE_GIT_VERSION: &str = "v1.32.0-ferry";

/// The media type marking an aggregated discovery response.
pub const AGGREGATED_CT: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

pub fn version() -> Value {
    json!({
        "major": KUBE_MAJOR,
        "minor": KUBE_MINOR,
        "gitVersion": KUBE_GIT_VERSION,
        "gitCommit": env!("CARGO_PKG_VERSION"),
        "gitTreeState": "clean",
        "buildDate": "1970-01-01T00:00:00Z",
        "goVersion": "n/a (ferry, rust)",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, if cfg!(target_arch = "x86_64") { "amd64" } else { std::env::consts::ARCH }),
    })
}

/// The verbs of a stored kind, as discovery lists them.
pub(crate) const VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// The verbs of a kind's main resource: a review is create-only.
fn verbs_of(r: &Resource) -> &'static [&'static str] {
    if r.is_review() { &["create"] } else { VERBS }
}

fn sub_verbs(sub: &str) -> Vec<&'static str> {
    match sub {
        "finalize" => vec!["update"],
        "log" => vec!["get"],
        "exec" | "portforward" => vec!["create", "get"],
        "token" => vec!["create"],
        _ => vec!["get", "patch", "update"],
    }
}

/// True when the Accept header asks for aggregated discovery.
pub fn wants_aggregated(accept: &str) -> bool {
    accept.split(',').any(|part| {
        let p: Vec<&str> = part.split(';').map(str::trim).collect();
        p.first() == Some(&"application/json")
            && p.contains(&"g=apidiscovery.k8s.io")
            && p.contains(&"v=v2")
            && p.contains(&"as=APIGroupDiscoveryList")
    })
}

pub fn api_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

fn group_entry(group: &str, version: &str) -> Value {
    let gv = json!({"groupVersion": format!("{group}/{version}"), "version": version});
    json!({"name": group, "versions": [gv.clone()], "preferredVersion": gv})
}

pub fn api_group_list() -> Value {
    json!({
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": GROUPS.iter().map(|(g, v)| group_entry(g, v)).collect::<Vec<_>>(),
    })
}

pub fn api_group(group: &str) -> Option<Value> {
    let (g, v) = GROUPS.iter().find(|(g, _)| *g == group)?;
    let mut entry = group_entry(g, v);
    entry["kind"] = json!("APIGroup");
    entry["apiVersion"] = json!("v1");
    Some(entry)
}

pub fn resource_list(group: &str, version: &str) -> Option<Value> {
    let mut out = Vec::new();
    for r in resources::in_group_version(group, version) {
        out.push(json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": verbs_of(r),
            "shortNames": r.short_names,
            "categories": r.categories,
        }));
        for sub in r.subresources {
            let mut entry = json!({
                "name": format!("{}/{sub}", r.plural),
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": r.kind,
                "verbs": sub_verbs(sub),
            });
            if *sub == "scale" {
                // The scale client finds the Scale's group/version here.
                entry["group"] = json!("autoscaling");
                entry["version"] = json!("v1");
                entry["kind"] = json!("Scale");
            }
            if *sub == "exec" {
                entry["kind"] = json!("PodExecOptions");
            }
            if *sub == "portforward" {
                entry["kind"] = json!("PodPortForwardOptions");
            }
            if *sub == "token" {
                entry["group"] = json!("authentication.k8s.io");
                entry["version"] = json!("v1");
                entry["kind"] = json!("TokenRequest");
            }
            out.push(entry);
        }
    }
    if out.is_empty() {
        return None;
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": out}),
    )
}

fn response_kind(r: &Resource) -> Value {
    json!({"group": r.group, "version": r.version, "kind": r.kind})
}

/// What a subresource answers with: the object itself, or for `scale` an
/// autoscaling/v1 Scale.
fn sub_response_kind(r: &Resource, sub: &str) -> Value {
    if sub == "scale" {
        json!({"group": "autoscaling", "version": "v1", "kind": "Scale"})
    } else if sub == "exec" {
        json!({"group": "", "version": "v1", "kind": "PodExecOptions"})
    } else if sub == "portforward" {
        json!({"group": "", "version": "v1", "kind": "PodPortForwardOptions"})
    } else if sub == "token" {
        json!({"group": "authentication.k8s.io", "version": "v1", "kind": "TokenRequest"})
    } else {
        response_kind(r)
    }
}

fn discovery_group(group: &str, version: &str) -> Value {
    let resources: Vec<Value> = resources::in_group_version(group, version)
        .map(|r| {
            let mut d = json!({
                "resource": r.plural,
                "responseKind": response_kind(r),
                "scope": if r.namespaced { "Namespaced" } else { "Cluster" },
                "singularResource": r.singular,
                "verbs": verbs_of(r),
            });
            if !r.short_names.is_empty() {
                d["shortNames"] = json!(r.short_names);
            }
            if !r.categories.is_empty() {
                d["categories"] = json!(r.categories);
            }
            if !r.subresources.is_empty() {
                d["subresources"] = r
                    .subresources
                    .iter()
                    .map(|s| json!({"subresource": s, "responseKind": sub_response_kind(r, s), "verbs": sub_verbs(s)}))
                    .collect();
            }
            d
        })
        .collect();
    json!({
        "metadata": {"name": group},
        "versions": [{"version": version, "resources": resources, "freshness": "Current"}],
    })
}

/// Aggregated discovery for `/api` (core) or `/apis` (the named groups).
pub fn aggregated(core: bool) -> Value {
    let items: Vec<Value> = if core {
        vec![discovery_group("", "v1")]
    } else {
        GROUPS.iter().map(|(g, v)| discovery_group(g, v)).collect()
    };
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items})
}
