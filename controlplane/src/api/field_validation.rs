//! Server-side field validation (`fieldValidation=Strict|Warn|Ignore`): the
//! fields of a written object its kind's schema does not have.
//!
//! The schemas are the vendored upstream definitions `openapi` serves, read
//! here into a compact tree that keeps only what finding an unknown field
//! needs: each schema's property names, its map values and its list items.
//! They are read straight from the compiled-in text, descriptions skipped,
//! never as a `serde_json::Value` tree: a client's first write must not make
//! the apiserver hold every description in memory (the tree and the v2
//! document take about 8 MiB). The full documents are built only when a
//! client asks for `/openapi`, as kubectl does.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::OnceLock;

use serde::Deserialize;
use serde_json::Value;

use super::openapi::DEFINITIONS_JSON;
use crate::error::ApiError;
use crate::resources::Resource;

/// How deep [`unknown_fields`] follows an object; deeper parts are not
/// checked (the body limits bound nesting well before this).
const MAX_DEPTH: usize = 128;

/// How a write treats fields its kind does not have (`fieldValidation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldValidation {
    /// Drop them silently.
    Ignore,
    /// Drop them with a `Warning` header each (kube-apiserver's default).
    Warn,
    /// Refuse the write (400).
    Strict,
}

impl FieldValidation {
    pub fn parse(v: Option<&str>) -> Result<Self, ApiError> {
        match v {
            None | Some("") | Some("Warn") => Ok(Self::Warn),
            Some("Ignore") => Ok(Self::Ignore),
            Some("Strict") => Ok(Self::Strict),
            Some(other) => Err(ApiError::bad_request(format!(
                "fieldValidation parameter unsupported: {other:?}; valid values are Ignore, Warn, Strict"
            ))),
        }
    }

    /// Checks `obj` (an object, or a patch when `patch` is set: its `$`
    /// directives are not fields) against the kind's schema: Strict refuses
    /// unknown fields, Warn returns a warning for each.
    pub fn check(self, res: &Resource, obj: &Value, patch: bool) -> Result<Vec<String>, ApiError> {
        if self == Self::Ignore {
            return Ok(Vec::new());
        }
        let unknown = unknown_fields(res, obj, patch);
        if unknown.is_empty() {
            return Ok(Vec::new());
        }
        let list: Vec<String> = unknown
            .iter()
            .map(|f| format!("unknown field \"{f}\""))
            .collect();
        match self {
            Self::Strict => Err(ApiError::bad_request(format!(
                "{kind} in version \"{v}\" cannot be handled as a {kind}: strict decoding error: {}",
                list.join(", "),
                kind = res.kind,
                v = res.version,
            ))),
            _ => Ok(list),
        }
    }
}

/// The paths (`spec.foo`, `spec.containers[0].bar`) of the fields of `obj`
/// that its kind's schema does not have, in document order.
pub fn unknown_fields(res: &Resource, obj: &Value, patch: bool) -> Vec<String> {
    let schemas = Schemas::get();
    let key = (
        res.group.to_string(),
        res.version.to_string(),
        res.kind.to_string(),
    );
    let Some(&root) = schemas.kinds.get(&key) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    schemas.walk(root, obj, &mut String::new(), patch, 0, &mut out);
    out
}

/// One schema, as far as field names go.
#[derive(Debug)]
enum Node {
    /// A scalar, or a free-form object: anything goes below it.
    Any,
    /// An object with these fields (sorted by name).
    Fields(Box<[(Box<str>, usize)]>),
    /// An object whose every value has this schema.
    Map(usize),
    /// A list whose every item has this schema.
    List(usize),
}

#[derive(Debug)]
struct Schemas {
    nodes: Vec<Node>,
    /// (group, version, kind) → its definition's node.
    kinds: HashMap<(String, String, String), usize>,
}

/// A schema as the definitions file holds it, keeping only what [`Node`]
/// needs; every other keyword (descriptions first) is skipped unread.
#[derive(Deserialize)]
struct Raw {
    #[serde(rename = "$ref")]
    reference: Option<String>,
    properties: Option<BTreeMap<String, Raw>>,
    #[serde(rename = "additionalProperties")]
    additional: Option<Additional>,
    items: Option<Box<Raw>>,
    #[serde(rename = "x-kubernetes-group-version-kind", default)]
    kinds: Vec<Gvk>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Additional {
    Schema(Box<Raw>),
    /// `true` or `false`: no schema for the values.
    Allowed(serde::de::IgnoredAny),
}

#[derive(Deserialize)]
struct Gvk {
    group: String,
    version: String,
    kind: String,
}

#[derive(Deserialize)]
struct File {
    definitions: BTreeMap<String, Raw>,
}

impl Schemas {
    fn get() -> &'static Schemas {
        static SCHEMAS: OnceLock<Schemas> = OnceLock::new();
        // Compiled-in data, checked by the tests below; were it unreadable,
        // no field would be reported unknown.
        SCHEMAS.get_or_init(|| match serde_json::from_str::<File>(DEFINITIONS_JSON) {
            Ok(file) => Self::build(file.definitions),
            Err(_) => Self {
                nodes: Vec::new(),
                kinds: HashMap::new(),
            },
        })
    }

    /// Definition `i` of `defs` (by name order) becomes node `i`; inline
    /// schemas follow them.
    fn build(defs: BTreeMap<String, Raw>) -> Self {
        let index: HashMap<&str, usize> = defs
            .keys()
            .enumerate()
            .map(|(i, n)| (n.as_str(), i))
            .collect();
        let mut s = Self {
            nodes: (0..defs.len()).map(|_| Node::Any).collect(),
            kinds: HashMap::new(),
        };
        for (i, raw) in defs.values().enumerate() {
            for g in &raw.kinds {
                s.kinds
                    .insert((g.group.clone(), g.version.clone(), g.kind.clone()), i);
            }
            s.nodes[i] = s.node_of(raw, &index);
        }
        s
    }

    /// The node of an inline schema: a reference is its definition's node,
    /// anything else is appended.
    fn add(&mut self, raw: &Raw, index: &HashMap<&str, usize>) -> usize {
        if let Some(i) = reference(raw, index) {
            return i;
        }
        let node = self.node_of(raw, index);
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    /// The node of a schema's own keywords. A definition that is only a
    /// reference has none in upstream's file (the field-for-field test
    /// below would find one); inline references go through [`Self::add`].
    fn node_of(&mut self, raw: &Raw, index: &HashMap<&str, usize>) -> Node {
        if let Some(props) = &raw.properties {
            let fields = props
                .iter()
                .map(|(k, v)| (Box::from(k.as_str()), self.add(v, index)))
                .collect();
            return Node::Fields(fields);
        }
        if let Some(Additional::Schema(values)) = &raw.additional {
            return Node::Map(self.add(values, index));
        }
        if let Some(items) = &raw.items {
            return Node::List(self.add(items, index));
        }
        Node::Any
    }

    /// Walks `v` against `node`, `path` being where `v` is; `path` is one
    /// buffer extended and cut back per field, copied only for an unknown
    /// field.
    fn walk(
        &self,
        node: usize,
        v: &Value,
        path: &mut String,
        patch: bool,
        depth: usize,
        out: &mut Vec<String>,
    ) {
        if depth > MAX_DEPTH {
            return;
        }
        let at = path.len();
        let enter = |path: &mut String, k: &str| {
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(k);
        };
        match (self.nodes.get(node), v) {
            (Some(Node::Fields(fields)), Value::Object(m)) => {
                for (k, val) in m {
                    enter(path, k);
                    match fields.binary_search_by(|(name, _)| (**name).cmp(k.as_str())) {
                        Ok(i) => self.walk(fields[i].1, val, path, patch, depth + 1, out),
                        Err(_) if patch && k.starts_with('$') => {}
                        Err(_) => out.push(path.clone()),
                    }
                    path.truncate(at);
                }
            }
            (Some(Node::Map(values)), Value::Object(m)) => {
                for (k, val) in m {
                    enter(path, k);
                    self.walk(*values, val, path, patch, depth + 1, out);
                    path.truncate(at);
                }
            }
            (Some(Node::List(items)), Value::Array(a)) => {
                for (i, item) in a.iter().enumerate() {
                    let _ = write!(path, "[{i}]");
                    self.walk(*items, item, path, patch, depth + 1, out);
                    path.truncate(at);
                }
            }
            _ => {}
        }
    }
}

/// The definition a `$ref` (`#/definitions/<name>`) names, if it is one.
fn reference(raw: &Raw, index: &HashMap<&str, usize>) -> Option<usize> {
    let name = raw.reference.as_deref()?.rsplit('/').next()?;
    index.get(name).copied()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::resources;

    #[test]
    fn every_served_kind_has_its_fields() {
        let s = Schemas::get();
        for r in resources::RESOURCES
            .iter()
            .filter(|r| r.has_vendored_schema())
        {
            let key = (
                r.group.to_string(),
                r.version.to_string(),
                r.kind.to_string(),
            );
            let root = s
                .kinds
                .get(&key)
                .unwrap_or_else(|| panic!("{} has no schema", r.kind));
            let Node::Fields(f) = &s.nodes[*root] else {
                panic!("{} is not an object", r.kind)
            };
            assert!(f.iter().any(|(n, _)| &**n == "metadata"), "{}", r.kind);
        }
    }

    /// The compact tree has exactly the fields, maps and lists of the
    /// definitions as `openapi` serves them, definition by definition.
    #[test]
    fn the_compact_tree_is_the_schemas_field_for_field() {
        let doc: Value = serde_json::from_str(DEFINITIONS_JSON).expect("definitions");
        let defs = doc["definitions"].as_object().expect("definitions");
        let s = Schemas::get();
        let names: Vec<&String> = defs.keys().collect();
        assert!(s.nodes.len() >= names.len());
        let mut seen = std::collections::HashSet::new();
        for (i, name) in names.iter().enumerate() {
            same(s, defs, &names, &defs[name.as_str()], i, name, &mut seen);
        }
        assert_eq!(seen.len(), names.len());

        fn same<'a>(
            s: &Schemas,
            defs: &'a serde_json::Map<String, Value>,
            names: &[&String],
            schema: &'a Value,
            node: usize,
            at: &str,
            seen: &mut std::collections::HashSet<usize>,
        ) {
            let mut schema = schema;
            if let Some(r) = schema["$ref"].as_str() {
                let name = r.rsplit('/').next().expect("name");
                let i = names
                    .iter()
                    .position(|n| n.as_str() == name)
                    .expect("dangling");
                assert_eq!(node, i, "{at}: {r}");
                schema = &defs[name];
            }
            if node < names.len() && !seen.insert(node) {
                return;
            }
            match &s.nodes[node] {
                Node::Fields(fields) => {
                    let props = schema["properties"]
                        .as_object()
                        .unwrap_or_else(|| panic!("{at}"));
                    let want: Vec<&str> = props.keys().map(String::as_str).collect();
                    let have: Vec<&str> = fields.iter().map(|(n, _)| &**n).collect();
                    assert_eq!(have, want, "{at}");
                    for (k, n) in fields.iter() {
                        same(s, defs, names, &props[&**k], *n, &format!("{at}.{k}"), seen);
                    }
                }
                Node::Map(n) => {
                    assert!(schema.get("properties").is_none(), "{at}");
                    same(
                        s,
                        defs,
                        names,
                        &schema["additionalProperties"],
                        *n,
                        &format!("{at}{{}}"),
                        seen,
                    );
                }
                Node::List(n) => {
                    assert!(schema.get("properties").is_none(), "{at}");
                    assert!(!schema["additionalProperties"].is_object(), "{at}");
                    same(
                        s,
                        defs,
                        names,
                        &schema["items"],
                        *n,
                        &format!("{at}[]"),
                        seen,
                    );
                }
                Node::Any => {
                    assert!(schema.get("properties").is_none(), "{at}");
                    assert!(!schema["additionalProperties"].is_object(), "{at}");
                    assert!(schema.get("items").is_none(), "{at}");
                }
            }
        }
    }

    #[test]
    fn unknown_fields_are_found_where_kube_finds_them() {
        let d = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x", "labels": {"a": "b"}, "bogus": 1},
            "spec": {"foo": 1, "selector": {"matchLabels": {"a": "b"}},
                "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "i", "imagePull": "x",
                    "resources": {"limits": {"cpu": "1"}}, "ports": [{"containerPort": 80, "hostPortt": 1}]}]}}}});
        assert_eq!(
            unknown_fields(&resources::DEPLOYMENTS, &d, false),
            [
                "metadata.bogus",
                "spec.foo",
                "spec.template.spec.containers[0].imagePull",
                "spec.template.spec.containers[0].ports[0].hostPortt",
            ]
        );
        // Free-form parts (a ControllerRevision's data) take anything.
        let cr = json!({"apiVersion": "apps/v1", "kind": "ControllerRevision", "metadata": {"name": "x"}, "revision": 1, "data": {"any": {"thing": 1}}});
        assert!(unknown_fields(&resources::CONTROLLERREVISIONS, &cr, false).is_empty());
        // A strategic merge patch's directives are not fields.
        let p = json!({"spec": {"template": {"spec": {"$setElementOrder/containers": [{"name": "c"}], "containers": [{"name": "c", "$patch": "delete"}]}}}});
        assert!(unknown_fields(&resources::DEPLOYMENTS, &p, true).is_empty());
        assert_eq!(unknown_fields(&resources::DEPLOYMENTS, &p, false).len(), 2);

        let err = FieldValidation::Strict
            .check(
                &resources::DEPLOYMENTS,
                &json!({"spec": {"foo": 1, "bar": 2}}),
                false,
            )
            .expect_err("strict");
        assert_eq!(err.code, 400);
        assert_eq!(
            err.message,
            "Deployment in version \"v1\" cannot be handled as a Deployment: strict decoding error: unknown field \"spec.bar\", unknown field \"spec.foo\""
        );
        let warnings = FieldValidation::Warn
            .check(&resources::DEPLOYMENTS, &json!({"spec": {"foo": 1}}), false)
            .expect("warn");
        assert_eq!(warnings, ["unknown field \"spec.foo\""]);
        assert!(
            FieldValidation::Ignore
                .check(&resources::DEPLOYMENTS, &json!({"spec": {"foo": 1}}), false)
                .expect("ignore")
                .is_empty()
        );
        assert!(FieldValidation::parse(Some("strict")).is_err());
    }
}
