//! The OpenAPI documents kubectl reads, and server-side field validation.
//!
//! The schemas are upstream's: `openapi/definitions.json` holds the
//! definitions of kube-apiserver's own `swagger.json` reachable from the
//! served kinds (descriptions and `x-kubernetes-*` extensions included),
//! vendored by `cargo xtask gen-api`. From them:
//! - `/openapi/v3` and `/openapi/v3/<group-version>`: per group-version
//!   documents with every operation of the served paths (each carrying its
//!   `x-kubernetes-group-version-kind`, and `fieldValidation` where kube has
//!   it, which tells kubectl the server validates fields itself) and the
//!   schemas those kinds reach, in v3 form (`#/components/schemas/`, a `$ref`
//!   with siblings wrapped in `allOf`, as kube-apiserver publishes them).
//!   `kubectl explain`, `kubectl apply`'s patch computation and its
//!   validation probe read these.
//! - `/openapi/v2`: the same operations and all the definitions, as JSON or,
//!   as kubectl asks for it, gnostic's OpenAPI v2 protobuf (kubectl's
//!   client-side validation of `kind: List` items uses it).
//!
//! Server-side field validation reads the same file, in its own compact
//! form (`field_validation`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::OnceLock;

use bytes::Bytes;
use serde_json::{Map, Value, json};

use super::discovery::KUBE_GIT_VERSION;
use super::protobuf::{put_bytes, put_key, put_varint};
use crate::error::ApiError;
use crate::resources::{self, GROUPS, Resource};

/// The media type of the v2 document in protobuf, as kube-openapi answers
/// it; kubectl asks with the deprecated `...spec.v2@v1.0+protobuf`, whose `@`
/// Go's media type parser refuses in a Content-Type.
pub const V2_PROTOBUF: &str = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";
const V2_PROTOBUF_DEPRECATED: &str = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf";

pub(super) static DEFINITIONS_JSON: &str = include_str!("../../openapi/definitions.json");

type Schemas = Map<String, Value>;

fn definitions() -> &'static Schemas {
    static DEFS: OnceLock<Schemas> = OnceLock::new();
    DEFS.get_or_init(|| {
        match serde_json::from_str::<Value>(DEFINITIONS_JSON) {
            Ok(Value::Object(mut doc)) => match doc.remove("definitions") {
                Some(Value::Object(defs)) => defs,
                _ => Schemas::new(),
            },
            // Compiled-in data, checked by the tests below.
            _ => Schemas::new(),
        }
    })
}

/// The definition name of a served kind (from its group-version-kind
/// extension, as kube-openapi looks kinds up).
fn definition_of(group: &str, version: &str, kind: &str) -> Option<&'static str> {
    type ByKind = HashMap<(String, String, String), &'static str>;
    static BY_KIND: OnceLock<ByKind> = OnceLock::new();
    let by_kind = BY_KIND.get_or_init(|| {
        let mut m = ByKind::new();
        for (name, d) in definitions() {
            let gvks = d
                .get("x-kubernetes-group-version-kind")
                .and_then(Value::as_array);
            for g in gvks.into_iter().flatten() {
                let s = |k: &str| g[k].as_str().unwrap_or("").to_string();
                m.insert((s("group"), s("version"), s("kind")), name.as_str());
            }
        }
        m
    });
    by_kind
        .get(&(group.to_string(), version.to_string(), kind.to_string()))
        .copied()
}

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

fn gvk(group: &str, version: &str, kind: &str) -> Value {
    json!({"group": group, "version": version, "kind": kind})
}

/// One operation: (method, action, kind it answers, query parameters).
struct Op {
    method: &'static str,
    action: &'static str,
    gvk: Value,
    schema: String,
    params: &'static [&'static str],
}

const WRITE: &[&str] = &["dryRun", "fieldManager", "fieldValidation"];
const PATCH: &[&str] = &["dryRun", "fieldManager", "fieldValidation", "force"];
const READ: &[&str] = &[];
const LIST: &[&str] = &[
    "labelSelector",
    "fieldSelector",
    "limit",
    "continue",
    "resourceVersion",
    "watch",
];
const DELETE: &[&str] = &["dryRun", "gracePeriodSeconds", "propagationPolicy"];

fn kind_schema(r: &Resource, kind: &str) -> String {
    definition_of(r.group, r.version, kind)
        .unwrap_or("io.k8s.apimachinery.pkg.apis.meta.v1.Status")
        .to_string()
}

/// Every served path of a kind and its operations, as kube-apiserver lists
/// them.
fn paths_of(r: &Resource) -> Vec<(String, Vec<Op>)> {
    let base = format!("/{}", gv_path(r.group, r.version));
    let collection = if r.namespaced {
        format!("{base}/namespaces/{{namespace}}/{}", r.plural)
    } else {
        format!("{base}/{}", r.plural)
    };
    let object = format!("{collection}/{{name}}");
    let own = gvk(r.group, r.version, r.kind);
    let obj = kind_schema(r, r.kind);
    let list = kind_schema(r, &r.list_kind());
    let op = |method, action, params, gvk: &Value, schema: &str| Op {
        method,
        action,
        gvk: gvk.clone(),
        schema: schema.to_string(),
        params,
    };
    let mut out = vec![
        (
            collection.clone(),
            vec![
                op("get", "list", LIST, &own, &list),
                op("post", "post", WRITE, &own, &obj),
                op(
                    "delete",
                    "deletecollection",
                    DELETE,
                    &own,
                    "io.k8s.apimachinery.pkg.apis.meta.v1.Status",
                ),
            ],
        ),
        (
            object.clone(),
            vec![
                op("get", "get", READ, &own, &obj),
                op("put", "put", WRITE, &own, &obj),
                op("patch", "patch", PATCH, &own, &obj),
                op("delete", "delete", DELETE, &own, &obj),
            ],
        ),
    ];
    if r.namespaced {
        out.push((
            format!("{base}/{}", r.plural),
            vec![op("get", "list", LIST, &own, &list)],
        ));
    }
    for sub in r.subresources {
        let (g, s) = match *sub {
            "scale" => (
                gvk("autoscaling", "v1", "Scale"),
                "io.k8s.api.autoscaling.v1.Scale".to_string(),
            ),
            "status" => (own.clone(), obj.clone()),
            _ => continue,
        };
        out.push((
            format!("{object}/{sub}"),
            vec![
                op("get", "get", READ, &g, &s),
                op("put", "put", WRITE, &g, &s),
                op("patch", "patch", PATCH, &g, &s),
            ],
        ));
    }
    out
}

fn operation_id(op: &Op, r: &Resource) -> String {
    format!("{}{}", op.action, r.kind)
}

/// A schema of v2 form in v3 form: refs under components, a ref with
/// siblings wrapped in `allOf`.
fn to_v3(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut out = Map::new();
            for (k, v) in m {
                if k == "$ref" {
                    let r = v.as_str().unwrap_or("").replacen(
                        "#/definitions/",
                        "#/components/schemas/",
                        1,
                    );
                    if m.len() == 1 {
                        out.insert(k.clone(), json!(r));
                    } else {
                        out.insert("allOf".into(), json!([{"$ref": r}]));
                    }
                } else {
                    out.insert(k.clone(), to_v3(v));
                }
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(to_v3).collect()),
        v => v.clone(),
    }
}

fn refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v.as_str()) {
                    ("$ref", Some(r)) => {
                        if let Some(name) = r.rsplit('/').next() {
                            out.push(name.to_string());
                        }
                    }
                    _ => refs(v, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

/// The definitions reachable from `roots`.
fn closure(roots: impl IntoIterator<Item = String>) -> BTreeMap<String, Value> {
    let defs = definitions();
    let mut todo: Vec<String> = roots.into_iter().collect();
    let mut out = BTreeMap::new();
    while let Some(name) = todo.pop() {
        if out.contains_key(&name) {
            continue;
        }
        if let Some(d) = defs.get(&name) {
            refs(d, &mut todo);
            out.insert(name, d.clone());
        }
    }
    out
}

fn v3_document(group: &str, version: &str) -> Option<Value> {
    let mut paths = Map::new();
    let mut roots = BTreeSet::new();
    for r in resources::in_group_version(group, version) {
        for (path, ops) in paths_of(r) {
            let mut item = Map::new();
            for op in ops {
                roots.insert(op.schema.clone());
                let params: Vec<Value> = op
                    .params
                    .iter()
                    .map(|p| {
                        let ty = match *p {
                            "force" | "watch" => "boolean",
                            "limit" | "gracePeriodSeconds" => "integer",
                            _ => "string",
                        };
                        json!({"name": p, "in": "query", "schema": {"type": ty, "uniqueItems": true}})
                    })
                    .collect();
                let schema_ref = json!({"$ref": format!("#/components/schemas/{}", op.schema)});
                let mut o = json!({
                    "operationId": operation_id(&op, r),
                    "parameters": params,
                    "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": schema_ref}}}},
                    "x-kubernetes-action": op.action,
                    "x-kubernetes-group-version-kind": op.gvk,
                });
                if matches!(op.method, "post" | "put") {
                    o["requestBody"] =
                        json!({"content": {"*/*": {"schema": schema_ref}}, "required": true});
                }
                if op.method == "patch" {
                    let patch = json!({"schema": {"$ref": "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.Patch"}});
                    roots.insert("io.k8s.apimachinery.pkg.apis.meta.v1.Patch".into());
                    o["requestBody"] = json!({"content": {
                        "application/apply-patch+yaml": patch,
                        "application/json-patch+json": patch,
                        "application/merge-patch+json": patch,
                        "application/strategic-merge-patch+json": patch,
                    }, "required": true});
                }
                item.insert(op.method.to_string(), o);
            }
            paths.insert(path, Value::Object(item));
        }
    }
    if paths.is_empty() {
        return None;
    }
    let schemas: Map<String, Value> = closure(roots)
        .into_iter()
        .map(|(k, v)| (k, to_v3(&v)))
        .collect();
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": KUBE_GIT_VERSION},
        "paths": paths,
        "components": {"schemas": schemas},
    }))
}

fn served_group_versions() -> impl Iterator<Item = (&'static str, &'static str)> {
    [("", "v1")]
        .into_iter()
        .chain(GROUPS.iter().copied())
        .filter(|(g, _)| !resources::WITHOUT_VENDORED_SCHEMA.contains(g))
}

/// FNV-1a, 64 bits: the `hash` kubectl caches a document under.
fn fnv64(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325, |h, &x| {
        (h ^ u64::from(x)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The serialized v3 documents by `group/version` path, with their hashes.
fn v3_documents() -> &'static HashMap<String, (Bytes, String)> {
    static DOCS: OnceLock<HashMap<String, (Bytes, String)>> = OnceLock::new();
    DOCS.get_or_init(|| {
        served_group_versions()
            .filter_map(|(g, v)| {
                let doc = serde_json::to_vec(&v3_document(g, v)?).ok()?;
                let hash = format!("{:016X}", fnv64(&doc));
                Some((gv_path(g, v), (Bytes::from(doc), hash)))
            })
            .collect()
    })
}

/// `/openapi/v3`: where each group-version's document is.
pub fn v3_root() -> Value {
    let mut paths = Map::new();
    for (g, v) in served_group_versions() {
        let p = gv_path(g, v);
        if let Some((_, hash)) = v3_documents().get(&p) {
            paths.insert(
                p.clone(),
                json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={hash}")}),
            );
        }
    }
    json!({ "paths": paths })
}

/// `/openapi/v3/<group-version>` (`group` empty for core).
pub fn v3(group: &str, version: &str) -> Option<Bytes> {
    v3_documents()
        .get(&gv_path(group, version))
        .map(|(b, _)| b.clone())
}

fn v2_document() -> Value {
    let mut paths = Map::new();
    for r in resources::RESOURCES
        .iter()
        .filter(|r| r.has_vendored_schema())
    {
        for (path, ops) in paths_of(r) {
            let mut item = Map::new();
            for op in ops {
                let params: Vec<Value> = op
                    .params
                    .iter()
                    .map(|p| {
                        let ty = match *p {
                            "force" | "watch" => "boolean",
                            "limit" | "gracePeriodSeconds" => "integer",
                            _ => "string",
                        };
                        json!({"name": p, "in": "query", "type": ty, "uniqueItems": true})
                    })
                    .collect();
                let mut o = json!({
                    "operationId": operation_id(&op, r),
                    "produces": ["application/json", "application/yaml", "application/vnd.kubernetes.protobuf"],
                    "parameters": params,
                    "responses": {"200": {"description": "OK", "schema": {"$ref": format!("#/definitions/{}", op.schema)}}},
                    "x-kubernetes-action": op.action,
                    "x-kubernetes-group-version-kind": op.gvk,
                });
                if op.method == "patch" {
                    o["consumes"] = json!([
                        "application/json-patch+json",
                        "application/merge-patch+json",
                        "application/strategic-merge-patch+json",
                        "application/apply-patch+yaml"
                    ]);
                }
                item.insert(op.method.to_string(), o);
            }
            paths.insert(path, Value::Object(item));
        }
    }
    json!({
        "swagger": "2.0",
        "info": {"title": "Kubernetes", "version": KUBE_GIT_VERSION},
        "paths": paths,
        "definitions": definitions(),
    })
}

/// `/openapi/v2` as JSON.
pub fn v2_json() -> Bytes {
    static DOC: OnceLock<Bytes> = OnceLock::new();
    DOC.get_or_init(|| Bytes::from(serde_json::to_vec(&v2_document()).unwrap_or_default()))
        .clone()
}

/// `/openapi/v2` in gnostic's OpenAPI v2 protobuf.
pub fn v2_protobuf() -> Result<Bytes, ApiError> {
    static DOC: OnceLock<Result<Bytes, String>> = OnceLock::new();
    DOC.get_or_init(|| gnostic::document(&v2_document()).map(Bytes::from))
        .clone()
        .map_err(|e| ApiError::internal(format!("encoding the OpenAPI v2 document: {e}")))
}

/// Whether an Accept header asks for the v2 document in protobuf.
pub fn wants_v2_protobuf(accept: &str) -> bool {
    accept.split(',').any(|p| {
        let ty = p.split(';').next().unwrap_or("").trim();
        ty == V2_PROTOBUF || ty == V2_PROTOBUF_DEPRECATED
    })
}

/// Whether an Accept header takes JSON.
pub fn takes_json(accept: &str) -> bool {
    accept.is_empty()
        || accept.split(',').any(|p| {
            let ty = p.split(';').next().unwrap_or("").trim();
            matches!(ty, "application/json" | "application/*" | "*/*")
        })
}

/// gnostic's `openapi_v2.Document` encoding of a Swagger 2.0 document.
mod gnostic {
    use super::*;

    type R = Result<Vec<u8>, String>;

    fn any(v: &Value) -> R {
        // gnostic keeps extension and default values as YAML; JSON is YAML.
        let text = serde_json::to_string(v).map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        put_bytes(2, text.as_bytes(), &mut out);
        Ok(out)
    }

    fn named_any(name: &str, v: &Value) -> R {
        let mut out = Vec::new();
        put_bytes(1, name.as_bytes(), &mut out);
        put_bytes(2, &any(v)?, &mut out);
        Ok(out)
    }

    fn str_of<'a>(v: &'a Value, key: &str) -> Result<&'a str, String> {
        v.as_str().ok_or_else(|| format!("{key} is not a string"))
    }

    fn put_double(num: u64, v: &Value, out: &mut Vec<u8>) -> Result<(), String> {
        let d = v.as_f64().ok_or("not a number")?;
        put_key(num, 1, out);
        out.extend_from_slice(&d.to_le_bytes());
        Ok(())
    }

    fn put_int(num: u64, v: &Value, out: &mut Vec<u8>) -> Result<(), String> {
        let i = v.as_i64().ok_or("not an integer")?;
        put_key(num, 0, out);
        put_varint(i as u64, out);
        Ok(())
    }

    fn put_bool(num: u64, v: &Value, out: &mut Vec<u8>) -> Result<(), String> {
        if v.as_bool().ok_or("not a boolean")? {
            put_key(num, 0, out);
            put_varint(1, out);
        }
        Ok(())
    }

    pub(super) fn schema(s: &Value) -> R {
        let m = s.as_object().ok_or("a schema is not an object")?;
        let mut out = Vec::new();
        for (k, v) in m {
            match k.as_str() {
                "$ref" => put_bytes(1, str_of(v, k)?.as_bytes(), &mut out),
                "format" => put_bytes(2, str_of(v, k)?.as_bytes(), &mut out),
                "title" => put_bytes(3, str_of(v, k)?.as_bytes(), &mut out),
                "description" => put_bytes(4, str_of(v, k)?.as_bytes(), &mut out),
                "default" => put_bytes(5, &any(v)?, &mut out),
                "maximum" => put_double(7, v, &mut out)?,
                "minimum" => put_double(9, v, &mut out)?,
                "maxLength" => put_int(11, v, &mut out)?,
                "minLength" => put_int(12, v, &mut out)?,
                "pattern" => put_bytes(13, str_of(v, k)?.as_bytes(), &mut out),
                "maxItems" => put_int(14, v, &mut out)?,
                "minItems" => put_int(15, v, &mut out)?,
                "uniqueItems" => put_bool(16, v, &mut out)?,
                "required" => {
                    for r in v.as_array().ok_or("required is not a list")? {
                        put_bytes(19, str_of(r, k)?.as_bytes(), &mut out);
                    }
                }
                "enum" => {
                    for e in v.as_array().ok_or("enum is not a list")? {
                        put_bytes(20, &any(e)?, &mut out);
                    }
                }
                "additionalProperties" => {
                    let mut item = Vec::new();
                    match v {
                        Value::Bool(b) => {
                            put_key(2, 0, &mut item);
                            put_varint(u64::from(*b), &mut item);
                        }
                        _ => put_bytes(1, &schema(v)?, &mut item),
                    }
                    put_bytes(21, &item, &mut out);
                }
                "type" => {
                    let mut item = Vec::new();
                    match v {
                        Value::Array(a) => {
                            for t in a {
                                put_bytes(1, str_of(t, k)?.as_bytes(), &mut item);
                            }
                        }
                        t => put_bytes(1, str_of(t, k)?.as_bytes(), &mut item),
                    }
                    put_bytes(22, &item, &mut out);
                }
                "items" => {
                    let mut item = Vec::new();
                    match v {
                        Value::Array(a) => {
                            for s in a {
                                put_bytes(1, &schema(s)?, &mut item);
                            }
                        }
                        s => put_bytes(1, &schema(s)?, &mut item),
                    }
                    put_bytes(23, &item, &mut out);
                }
                "allOf" => {
                    for s in v.as_array().ok_or("allOf is not a list")? {
                        put_bytes(24, &schema(s)?, &mut out);
                    }
                }
                "properties" => {
                    let mut props = Vec::new();
                    for (name, s) in v.as_object().ok_or("properties is not a map")? {
                        let mut named = Vec::new();
                        put_bytes(1, name.as_bytes(), &mut named);
                        put_bytes(2, &schema(s)?, &mut named);
                        put_bytes(1, &named, &mut props);
                    }
                    put_bytes(25, &props, &mut out);
                }
                "readOnly" => put_bool(27, v, &mut out)?,
                "example" => put_bytes(30, &any(v)?, &mut out),
                x if x.starts_with("x-") => put_bytes(31, &named_any(x, v)?, &mut out),
                other => return Err(format!("schema keyword {other:?} has no encoding")),
            }
        }
        Ok(out)
    }

    fn parameter(p: &Value) -> R {
        let mut q = Vec::new();
        if p["required"] == true {
            put_key(1, 0, &mut q);
            put_varint(1, &mut q);
        }
        put_bytes(2, str_of(&p["in"], "in")?.as_bytes(), &mut q);
        put_bytes(4, str_of(&p["name"], "name")?.as_bytes(), &mut q);
        put_bytes(6, str_of(&p["type"], "type")?.as_bytes(), &mut q);
        put_bool(20, &p["uniqueItems"], &mut q)?;
        // NonBodyParameter.query_parameter_sub_schema, in Parameter, in
        // ParametersItem.
        let mut non_body = Vec::new();
        put_bytes(3, &q, &mut non_body);
        let mut param = Vec::new();
        put_bytes(2, &non_body, &mut param);
        let mut item = Vec::new();
        put_bytes(1, &param, &mut item);
        Ok(item)
    }

    fn operation(o: &Value) -> R {
        let m = o.as_object().ok_or("an operation is not an object")?;
        let mut out = Vec::new();
        for (k, v) in m {
            match k.as_str() {
                "operationId" => put_bytes(5, str_of(v, k)?.as_bytes(), &mut out),
                "produces" | "consumes" => {
                    let num = if k == "produces" { 6 } else { 7 };
                    for t in v.as_array().ok_or("not a list")? {
                        put_bytes(num, str_of(t, k)?.as_bytes(), &mut out);
                    }
                }
                "parameters" => {
                    for p in v.as_array().ok_or("parameters is not a list")? {
                        put_bytes(8, &parameter(p)?, &mut out);
                    }
                }
                "responses" => {
                    let mut responses = Vec::new();
                    for (code, r) in v.as_object().ok_or("responses is not a map")? {
                        let mut response = Vec::new();
                        put_bytes(
                            1,
                            str_of(&r["description"], "description")?.as_bytes(),
                            &mut response,
                        );
                        let mut schema_item = Vec::new();
                        put_bytes(1, &schema(&r["schema"])?, &mut schema_item);
                        put_bytes(2, &schema_item, &mut response);
                        let mut value = Vec::new();
                        put_bytes(1, &response, &mut value);
                        let mut named = Vec::new();
                        put_bytes(1, code.as_bytes(), &mut named);
                        put_bytes(2, &value, &mut named);
                        put_bytes(1, &named, &mut responses);
                    }
                    put_bytes(9, &responses, &mut out);
                }
                x if x.starts_with("x-") => put_bytes(13, &named_any(x, v)?, &mut out),
                other => return Err(format!("operation field {other:?} has no encoding")),
            }
        }
        Ok(out)
    }

    pub(super) fn document(doc: &Value) -> R {
        let mut out = Vec::new();
        put_bytes(1, str_of(&doc["swagger"], "swagger")?.as_bytes(), &mut out);
        let mut info = Vec::new();
        put_bytes(
            1,
            str_of(&doc["info"]["title"], "title")?.as_bytes(),
            &mut info,
        );
        put_bytes(
            2,
            str_of(&doc["info"]["version"], "version")?.as_bytes(),
            &mut info,
        );
        put_bytes(2, &info, &mut out);
        let mut paths = Vec::new();
        for (path, item) in doc["paths"].as_object().ok_or("paths is not a map")? {
            let mut path_item = Vec::new();
            for (method, op) in item.as_object().ok_or("a path is not a map")? {
                let num = match method.as_str() {
                    "get" => 2,
                    "put" => 3,
                    "post" => 4,
                    "delete" => 5,
                    "patch" => 8,
                    other => return Err(format!("method {other}")),
                };
                put_bytes(num, &operation(op)?, &mut path_item);
            }
            let mut named = Vec::new();
            put_bytes(1, path.as_bytes(), &mut named);
            put_bytes(2, &path_item, &mut named);
            put_bytes(2, &named, &mut paths);
        }
        put_bytes(8, &paths, &mut out);
        let mut defs = Vec::new();
        for (name, s) in doc["definitions"]
            .as_object()
            .ok_or("definitions is not a map")?
        {
            let mut named = Vec::new();
            put_bytes(1, name.as_bytes(), &mut named);
            put_bytes(2, &schema(s)?, &mut named);
            put_bytes(1, &named, &mut defs);
        }
        put_bytes(9, &defs, &mut out);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_served_kind_and_its_list_has_its_upstream_schema() {
        assert!(definitions().len() > 200);
        for r in resources::RESOURCES
            .iter()
            .filter(|r| r.has_vendored_schema())
        {
            let d = definition_of(r.group, r.version, r.kind)
                .unwrap_or_else(|| panic!("{} has no schema", r.kind));
            assert!(definitions()[d]["description"].is_string(), "{d}");
            assert!(definition_of(r.group, r.version, &r.list_kind()).is_some());
        }
        // Every reference resolves inside the vendored set.
        let mut all = Vec::new();
        refs(&Value::Object(definitions().clone()), &mut all);
        for name in all {
            assert!(definitions().contains_key(&name), "{name} dangles");
        }
    }

    #[test]
    fn v3_documents_carry_kinds_operations_and_explainable_schemas() {
        let root = v3_root();
        let url = root["paths"]["apis/apps/v1"]["serverRelativeURL"]
            .as_str()
            .expect("apps/v1 listed");
        assert!(url.starts_with("/openapi/v3/apis/apps/v1?hash="), "{url}");
        let doc: Value = serde_json::from_slice(&v3("apps", "v1").expect("apps/v1")).expect("json");
        let patch =
            &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
        assert_eq!(
            patch["x-kubernetes-group-version-kind"],
            gvk("apps", "v1", "Deployment")
        );
        assert!(
            patch["parameters"]
                .as_array()
                .expect("params")
                .iter()
                .any(|p| p["name"] == "fieldValidation")
        );
        let schemas = &doc["components"]["schemas"];
        let spec = &schemas["io.k8s.api.apps.v1.DeploymentSpec"];
        assert_eq!(
            spec["properties"]["strategy"]["allOf"][0]["$ref"],
            "#/components/schemas/io.k8s.api.apps.v1.DeploymentStrategy"
        );
        assert!(
            schemas["io.k8s.api.apps.v1.DeploymentStrategy"]["properties"]["type"]["description"]
                .as_str()
                .expect("description")
                .contains("Recreate")
        );
        // The core types a pod template reaches come with the document.
        assert!(schemas["io.k8s.api.core.v1.PodSpec"].is_object());
        assert_eq!(
            schemas["io.k8s.api.apps.v1.Deployment"]["x-kubernetes-group-version-kind"][0]["kind"],
            "Deployment"
        );
        // No v2 refs left.
        assert!(!String::from_utf8_lossy(&v3("", "v1").expect("v1")).contains("#/definitions/"));
        assert!(v3("batch", "v1").is_none());
    }

    #[test]
    fn v2_protobuf_encodes_the_whole_document() {
        let pb = v2_protobuf().expect("encodes");
        let json = v2_json();
        assert!(pb.len() > 100_000, "{}", pb.len());
        // Spot checks: the swagger version first, then the kinds' names.
        assert_eq!(&pb[..5], b"\x0a\x032.0");
        let text = String::from_utf8_lossy(&pb);
        assert!(text.contains("io.k8s.api.apps.v1.DeploymentSpec"));
        assert!(text.contains("x-kubernetes-group-version-kind"));
        assert!(text.contains("fieldValidation"));
        let doc: Value = serde_json::from_slice(&json).expect("json");
        assert_eq!(doc["swagger"], "2.0");
        // A keyword the encoder does not know is an error, never dropped.
        assert!(gnostic::schema(&json!({"type": "object", "oneOf": []})).is_err());
    }
}
