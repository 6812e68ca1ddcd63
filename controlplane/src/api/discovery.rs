//! Discovery documents (/api, /apis, per group-version; legacy and
//! aggregated v2), /version, and the OpenAPI v3 documents kubectl reads to
//! learn that the server validates fields itself.

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

const VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

fn sub_verbs(sub: &str) -> Vec<&'static str> {
    match sub {
        "finalize" => vec!["update"],
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
            "verbs": VERBS,
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
                "verbs": VERBS,
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

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// The OpenAPI v3 root: one document per served group-version.
pub fn openapi_v3_root() -> Value {
    let mut paths = serde_json::Map::new();
    for (g, v) in [("", "v1")].into_iter().chain(GROUPS.iter().copied()) {
        let p = gv_path(g, v);
        paths.insert(
            p.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={}", env!("CARGO_PKG_VERSION"))}),
        );
    }
    json!({ "paths": paths })
}

fn schema_name(r: &Resource) -> String {
    let group = match r.group {
        "" => "core".to_string(),
        g => g.split('.').next().unwrap_or(g).to_string(),
    };
    format!("io.k8s.api.{group}.{}.{}", r.version, r.kind)
}

fn patch_op(r: &Resource) -> Value {
    let param = |name: &str, ty: &str| json!({"name": name, "in": "query", "schema": {"type": ty, "uniqueItems": true}});
    let body_ref = json!({"schema": {"$ref": "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.Patch"}});
    json!({
        "x-kubernetes-group-version-kind": response_kind(r),
        "x-kubernetes-action": "patch",
        "parameters": [param("dryRun", "string"), param("fieldManager", "string"), param("fieldValidation", "string"), param("force", "boolean")],
        "requestBody": {"content": {
            "application/apply-patch+yaml": body_ref.clone(),
            "application/json-patch+json": body_ref.clone(),
            "application/merge-patch+json": body_ref.clone(),
            "application/strategic-merge-patch+json": body_ref,
        }, "required": true},
        "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{}", schema_name(r))}}}}},
    })
}

/// The OpenAPI v3 document of one group-version: a PATCH operation per
/// object path, each declaring server-side field validation.
pub fn openapi_v3(group: &str, version: &str) -> Option<Value> {
    let mut paths = serde_json::Map::new();
    let mut schemas = serde_json::Map::new();
    schemas.insert(
        "io.k8s.apimachinery.pkg.apis.meta.v1.Patch".into(),
        json!({"type": "object", "description": "Patch is provided to give a concrete name and type to the Kubernetes PATCH request body."}),
    );
    for r in resources::in_group_version(group, version) {
        let base = format!("/{}", gv_path(group, version));
        let object_path = if r.namespaced {
            format!("{base}/namespaces/{{namespace}}/{}/{{name}}", r.plural)
        } else {
            format!("{base}/{}/{{name}}", r.plural)
        };
        paths.insert(object_path.clone(), json!({"patch": patch_op(r)}));
        for sub in r.subresources.iter().filter(|s| **s == "status") {
            paths.insert(
                format!("{object_path}/{sub}"),
                json!({"patch": patch_op(r)}),
            );
        }
        schemas.insert(
            schema_name(r),
            // No x-kubernetes-group-version-kind here: without a full schema
            // kubectl would fail to compute patches from it; left out, it
            // uses the patch metadata compiled in for built-in kinds.
            json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}),
        );
    }
    if paths.is_empty() {
        return None;
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": KUBE_GIT_VERSION},
        "paths": paths,
        "components": {"schemas": schemas},
    }))
}

/// The OpenAPI v2 (Swagger) document, JSON only: a PATCH operation per object
/// path with its group-version-kind, as the v3 documents carry.
pub fn openapi_v2() -> Value {
    let mut paths = serde_json::Map::new();
    let mut definitions = serde_json::Map::new();
    for r in resources::RESOURCES {
        let base = format!("/{}", gv_path(r.group, r.version));
        let path = if r.namespaced {
            format!("{base}/namespaces/{{namespace}}/{}/{{name}}", r.plural)
        } else {
            format!("{base}/{}/{{name}}", r.plural)
        };
        let param = |name: &str, ty: &str| json!({"name": name, "in": "query", "type": ty, "uniqueItems": true});
        paths.insert(
            path,
            json!({"patch": {
                "x-kubernetes-group-version-kind": response_kind(r),
                "x-kubernetes-action": "patch",
                "consumes": ["application/json-patch+json", "application/merge-patch+json", "application/strategic-merge-patch+json", "application/apply-patch+yaml"],
                "produces": ["application/json"],
                "parameters": [param("dryRun", "string"), param("fieldManager", "string"), param("fieldValidation", "string"), param("force", "boolean")],
                "responses": {"200": {"description": "OK", "schema": {"$ref": format!("#/definitions/{}", schema_name(r))}}},
            }}),
        );
        definitions.insert(schema_name(r), json!({"type": "object"}));
    }
    json!({
        "swagger": "2.0",
        "info": {"title": "Kubernetes", "version": KUBE_GIT_VERSION},
        "paths": paths,
        "definitions": definitions,
    })
}
