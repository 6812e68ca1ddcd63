//! `cargo xtask gen-api`: generates ferry-apiserver's Kubernetes wire tables
//! from upstream's own sources, so nothing in them is written by hand.
//!
//! Inputs (checkouts of upstream repositories at the release Ferry follows):
//! - `--k8s-api`: kubernetes/api (`core/v1`, `apps/v1`, ... each with its
//!   `generated.proto` and `types.go`);
//! - `--apimachinery`: kubernetes/apimachinery (`pkg/apis/meta/v1`,
//!   `pkg/runtime`, `pkg/util/intstr`, `pkg/api/resource`);
//! - `--swagger`: kubernetes/kubernetes `api/openapi-spec/swagger.json` of
//!   the same release (the OpenAPI v2 document kube-apiserver serves).
//!
//! Outputs:
//! - `controlplane/src/api/protobuf/schema.rs`: for every message reachable
//!   from a served kind, its fields: number, JSON name, wire type, and how
//!   Go's JSON encoding treats the field (pointer, `omitempty`, inlined), which
//!   the `.proto` alone does not say and `types.go`'s struct tags do.
//! - `controlplane/openapi/definitions.json`: upstream's schema definitions
//!   reachable from the served kinds, unchanged (descriptions, `x-kubernetes-*`
//!   extensions and all), and nothing else.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};

/// The served kinds: (proto package, message). Lists are added for each.
const ROOTS: &[(&str, &[&str])] = &[
    (
        "k8s.io.api.core.v1",
        &[
            "Namespace",
            "Node",
            "Pod",
            "Service",
            "Endpoints",
            "ConfigMap",
            "ServiceAccount",
            "Event",
            "Secret",
        ],
    ),
    (
        "k8s.io.api.apps.v1",
        &[
            "Deployment",
            "ReplicaSet",
            "DaemonSet",
            "StatefulSet",
            "ControllerRevision",
        ],
    ),
    ("k8s.io.api.discovery.v1", &["EndpointSlice"]),
    ("k8s.io.api.networking.v1", &["NetworkPolicy"]),
    ("k8s.io.api.coordination.v1", &["Lease"]),
    (
        "k8s.io.api.rbac.v1",
        &["Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"],
    ),
    ("k8s.io.api.policy.v1", &["PodDisruptionBudget"]),
];

/// Messages served besides the kinds: the `scale` subresource's Scale, the
/// access reviews and the token kinds, which are created and answered but
/// never stored (so have no lists).
const EXTRA: &[&str] = &[
    "k8s.io.api.autoscaling.v1.Scale",
    "k8s.io.api.authorization.v1.SelfSubjectAccessReview",
    "k8s.io.api.authorization.v1.SelfSubjectRulesReview",
    "k8s.io.api.authorization.v1.SubjectAccessReview",
    "k8s.io.api.authentication.v1.TokenRequest",
    "k8s.io.api.authentication.v1.TokenReview",
];

/// Messages whose JSON form is not their fields (custom marshallers in Go).
const SPECIAL: &[(&str, &str)] = &[
    ("k8s.io.apimachinery.pkg.apis.meta.v1.Time", "Time"),
    (
        "k8s.io.apimachinery.pkg.apis.meta.v1.MicroTime",
        "MicroTime",
    ),
    ("k8s.io.apimachinery.pkg.apis.meta.v1.Duration", "Duration"),
    ("k8s.io.apimachinery.pkg.apis.meta.v1.FieldsV1", "RawJson"),
    ("k8s.io.apimachinery.pkg.runtime.RawExtension", "RawJson"),
    (
        "k8s.io.apimachinery.pkg.util.intstr.IntOrString",
        "IntOrString",
    ),
    ("k8s.io.apimachinery.pkg.api.resource.Quantity", "Quantity"),
    // `type ExtraValue []string`: a JSON array of strings, a message of
    // one repeated field on the wire.
    ("k8s.io.api.authentication.v1.ExtraValue", "StringList"),
    ("k8s.io.api.authorization.v1.ExtraValue", "StringList"),
];

#[derive(Debug, Clone)]
struct ProtoField {
    name: String,
    num: u32,
    repeated: bool,
    /// `map<string, V>`: the value type.
    map_value: Option<String>,
    /// Scalar name or fully qualified message name.
    ty: String,
}

#[derive(Debug, Default)]
struct Protos {
    /// Fully qualified message name -> fields.
    messages: BTreeMap<String, Vec<ProtoField>>,
}

const SCALARS: &[&str] = &["string", "bool", "int32", "int64", "bytes", "double"];

fn resolve(pkg: &str, ty: &str) -> String {
    if SCALARS.contains(&ty) {
        ty.to_string()
    } else if let Some(abs) = ty.strip_prefix('.') {
        abs.to_string()
    } else if ty.contains('.') {
        ty.to_string()
    } else {
        format!("{pkg}.{ty}")
    }
}

impl Protos {
    fn parse(&mut self, path: &Path) -> Result<()> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut pkg = String::new();
        let mut current: Option<(String, Vec<ProtoField>)> = None;
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split("//").next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            if let Some(p) = line.strip_prefix("package ") {
                pkg = p.trim_end_matches(';').trim().to_string();
            } else if let Some(m) = line.strip_prefix("message ") {
                let name = m.trim_end_matches('{').trim();
                current = Some((format!("{pkg}.{name}"), Vec::new()));
            } else if line == "}" {
                if let Some((name, fields)) = current.take() {
                    self.messages.insert(name, fields);
                }
            } else if let Some((_, fields)) = current.as_mut() {
                let bad = || format!("{}:{}: cannot read field {line:?}", path.display(), i + 1);
                let (decl, num) = line
                    .trim_end_matches(';')
                    .split_once('=')
                    .with_context(bad)?;
                let num: u32 = num.trim().parse().with_context(bad)?;
                let parts: Vec<&str> = decl.split_whitespace().collect();
                let field = if let Some(rest) = decl.trim().strip_prefix("map<") {
                    let (kv, name) = rest.split_once('>').with_context(bad)?;
                    let (k, v) = kv.split_once(',').with_context(bad)?;
                    if k.trim() != "string" {
                        bail!("{}: map key {k} is not a string", bad());
                    }
                    ProtoField {
                        name: name.trim().to_string(),
                        num,
                        repeated: false,
                        map_value: Some(resolve(&pkg, v.trim())),
                        ty: String::new(),
                    }
                } else {
                    let [label, ty, name] = parts.as_slice() else {
                        bail!("{}", bad());
                    };
                    ProtoField {
                        name: (*name).to_string(),
                        num,
                        repeated: match *label {
                            "optional" => false,
                            "repeated" => true,
                            _ => bail!("{}", bad()),
                        },
                        map_value: None,
                        ty: resolve(&pkg, ty),
                    }
                };
                fields.push(field);
            }
        }
        Ok(())
    }
}

/// What a Go struct tag and type say about one field.
#[derive(Debug, Clone)]
struct GoField {
    json: String,
    omitempty: bool,
    inline: bool,
    pointer: bool,
}

/// (proto package, struct name) -> proto field number -> Go field.
type GoStructs = HashMap<(String, String), BTreeMap<u32, GoField>>;

fn parse_go_dir(pkg: &str, dir: &Path, out: &mut GoStructs) -> Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let n = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            n.ends_with(".go") && !n.ends_with("_test.go") && !n.starts_with("zz_generated")
        })
        .collect();
    entries.sort();
    for path in entries {
        let text = std::fs::read_to_string(&path)?;
        let mut current: Option<String> = None;
        for line in text.lines() {
            let t = line.trim();
            if let Some(rest) = t.strip_prefix("type ")
                && let Some(name) = rest.strip_suffix(" struct {")
            {
                current = Some(name.trim().to_string());
                continue;
            }
            if line.starts_with('}') {
                current = None;
                continue;
            }
            let Some(st) = &current else { continue };
            if t.starts_with("//") || !t.contains("protobuf:\"") {
                continue;
            }
            let Some((decl, tags)) = t.split_once('`') else {
                continue;
            };
            let decl: Vec<&str> = decl.split_whitespace().collect();
            let go_ty = match decl.as_slice() {
                [ty] | [_, ty] => *ty,
                _ => bail!("{}: cannot read Go field {t:?}", path.display()),
            };
            let tag = |key: &str| -> Option<String> {
                let start = tags.find(&format!("{key}:\""))? + key.len() + 2;
                let end = tags[start..].find('"')? + start;
                Some(tags[start..end].to_string())
            };
            let pb = tag("protobuf").context("protobuf tag")?;
            if pb == "-" {
                continue;
            }
            let num: u32 = pb
                .split(',')
                .nth(1)
                .and_then(|n| n.parse().ok())
                .with_context(|| format!("{}: protobuf tag {pb:?}", path.display()))?;
            let json = tag("json").unwrap_or_default();
            let mut parts = json.split(',');
            let json_name = parts.next().unwrap_or("").to_string();
            let opts: Vec<&str> = parts.collect();
            out.entry((pkg.to_string(), st.clone()))
                .or_default()
                .insert(
                    num,
                    GoField {
                        json: json_name,
                        omitempty: opts.contains(&"omitempty"),
                        inline: opts.contains(&"inline"),
                        pointer: go_ty.starts_with('*'),
                    },
                );
        }
    }
    Ok(())
}

fn ident(fqn: &str) -> String {
    let parts: Vec<&str> = fqn.split('.').collect();
    let n = parts.len();
    format!("{}_{}_{}", parts[n - 3], parts[n - 2], parts[n - 1]).replace('-', "_")
}

fn scalar_ty(ty: &str) -> Option<&'static str> {
    Some(match ty {
        "string" => "Ty::Str",
        "bool" => "Ty::Bool",
        "int32" => "Ty::Int32",
        "int64" => "Ty::Int64",
        "bytes" => "Ty::Bytes",
        "double" => "Ty::Double",
        _ => return None,
    })
}

fn ty_expr(ty: &str) -> String {
    if let Some(s) = scalar_ty(ty) {
        return s.to_string();
    }
    if let Some((_, special)) = SPECIAL.iter().find(|(n, _)| *n == ty) {
        return format!("Ty::{special}");
    }
    format!("Ty::Msg(&{})", ident(ty))
}

pub struct Inputs {
    pub k8s_api: PathBuf,
    pub apimachinery: PathBuf,
    pub swagger: PathBuf,
    pub k8s_api_version: String,
    pub kubernetes_version: String,
}

pub fn generate(inputs: &Inputs, root: &Path) -> Result<()> {
    let mut protos = Protos::default();
    let mut go = GoStructs::new();
    let api_groups = [
        "core/v1",
        "apps/v1",
        "discovery/v1",
        "networking/v1",
        "coordination/v1",
        "autoscaling/v1",
        "rbac/v1",
        "policy/v1",
        "authorization/v1",
        "authentication/v1",
    ];
    for g in api_groups {
        let dir = inputs.k8s_api.join(g);
        protos.parse(&dir.join("generated.proto"))?;
        parse_go_dir(
            &format!("k8s.io.api.{}", g.replace('/', ".")),
            &dir,
            &mut go,
        )?;
    }
    for (p, parse) in [
        ("pkg/apis/meta/v1", true),
        ("pkg/runtime", false),
        ("pkg/runtime/schema", false),
        ("pkg/util/intstr", false),
        ("pkg/api/resource", false),
    ] {
        let dir = inputs.apimachinery.join(p);
        protos.parse(&dir.join("generated.proto"))?;
        if parse {
            parse_go_dir(
                &format!("k8s.io.apimachinery.{}", p.replace('/', ".")),
                &dir,
                &mut go,
            )?;
        }
    }

    // The closure of messages reachable from the roots.
    let mut roots: Vec<String> = Vec::new();
    for (pkg, kinds) in ROOTS {
        for k in *kinds {
            roots.push(format!("{pkg}.{k}"));
            roots.push(format!("{pkg}.{k}List"));
        }
    }
    roots.extend(EXTRA.iter().map(|s| (*s).to_string()));
    let mut seen = BTreeSet::new();
    let mut todo = roots.clone();
    while let Some(m) = todo.pop() {
        if SPECIAL.iter().any(|(n, _)| *n == m) || !seen.insert(m.clone()) {
            continue;
        }
        let fields = protos
            .messages
            .get(&m)
            .with_context(|| format!("message {m} not found in the protos"))?;
        for f in fields {
            let t = f.map_value.as_deref().unwrap_or(&f.ty);
            if scalar_ty(t).is_none() {
                todo.push(t.to_string());
            }
        }
    }

    let mut out = String::new();
    writeln!(
        out,
        "//! @generated by `cargo xtask gen-api` from kubernetes/api {} and\n\
         //! kubernetes/apimachinery {} (`generated.proto` for numbers and types,\n\
         //! `types.go` struct tags for JSON names, `omitempty`, pointers and\n\
         //! inlined structs). Do not edit by hand; see `xtask/src/apigen.rs`.\n",
        inputs.k8s_api_version, inputs.k8s_api_version
    )?;
    out.push_str("use super::{Label, Message, Presence, Ty, f};\n\n");
    out.push_str(
        "/// The message of a served kind (or its list, `Scale`, a review or a token kind) by API group and kind.\n\
         pub fn root(group: &str, kind: &str) -> Option<&'static Message> {\n    Some(match (group, kind) {\n",
    );
    for r in &roots {
        let parts: Vec<&str> = r.split('.').collect();
        let n = parts.len();
        let group = match (parts[2], parts[n - 3]) {
            ("api", "core") => String::new(),
            ("api", g @ ("apps" | "autoscaling" | "policy")) => g.to_string(),
            ("api", "rbac") => "rbac.authorization.k8s.io".to_owned(),
            ("api", g) => format!("{g}.k8s.io"),
            _ => bail!("root {r} outside k8s.io/api"),
        };
        writeln!(
            out,
            "        ({group:?}, {:?}) => &{},",
            parts[n - 1],
            ident(r)
        )?;
    }
    out.push_str("        _ => return None,\n    })\n}\n");
    let mut nfields = 0;
    for m in &seen {
        let parts: Vec<&str> = m.rsplitn(2, '.').collect();
        let (name, pkg) = (parts[0], parts[1]);
        let gofields = go
            .get(&(pkg.to_string(), name.to_string()))
            .with_context(|| format!("no Go struct for {m}"))?;
        writeln!(
            out,
            "\n#[allow(non_upper_case_globals)]\npub static {}: Message = Message {{\n    name: {m:?},\n    fields: &[",
            ident(m)
        )?;
        for pf in &protos.messages[m] {
            let gf = gofields
                .get(&pf.num)
                .with_context(|| format!("{m}.{} ({}): no Go field", pf.name, pf.num))?;
            if gf.json == "-" {
                bail!("{m}.{}: not in JSON", pf.name);
            }
            let is_msg = pf.map_value.is_none() && scalar_ty(&pf.ty).is_none();
            let (label, ty) = match (&pf.map_value, pf.repeated) {
                (Some(v), _) => ("Label::Map", ty_expr(v)),
                (None, true) => ("Label::Repeated", ty_expr(&pf.ty)),
                (None, false) => ("Label::Single", ty_expr(&pf.ty)),
            };
            let presence = if gf.inline {
                if !is_msg || pf.repeated {
                    bail!("{m}.{}: inlined field is not a message", pf.name);
                }
                "Presence::Inline"
            } else if gf.pointer {
                "Presence::Pointer"
            } else if pf.repeated || pf.map_value.is_some() {
                if gf.omitempty {
                    "Presence::OmitEmpty"
                } else {
                    "Presence::Always"
                }
            } else if is_msg {
                // Go's omitempty never omits a struct.
                "Presence::Always"
            } else if gf.omitempty {
                "Presence::OmitEmpty"
            } else {
                "Presence::Always"
            };
            let json = if gf.inline { "" } else { gf.json.as_str() };
            if !gf.inline && json.is_empty() {
                bail!("{m}.{}: no JSON name", pf.name);
            }
            writeln!(
                out,
                "        f({}, {json:?}, {ty}, {label}, {presence}),",
                pf.num
            )?;
            nfields += 1;
        }
        out.push_str("    ],\n};\n");
    }
    let schema_rs = root.join("controlplane/src/api/protobuf/schema.rs");
    std::fs::write(&schema_rs, out)?;
    println!(
        "wrote {} ({} messages, {nfields} fields)",
        schema_rs.display(),
        seen.len()
    );

    // OpenAPI: upstream's definitions reachable from the served kinds.
    let swagger: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&inputs.swagger)
            .with_context(|| format!("reading {}", inputs.swagger.display()))?,
    )?;
    let defs = swagger
        .get("definitions")
        .and_then(|d| d.as_object())
        .context("swagger.json has no definitions")?;
    let def_name = |fqn: &str| -> String {
        let s = fqn.replacen("k8s.io.api.", "io.k8s.api.", 1);
        s.replacen("k8s.io.apimachinery.", "io.k8s.apimachinery.", 1)
    };
    let mut todo: Vec<String> = roots.iter().map(|r| def_name(r)).collect();
    // What the documents' operations refer to besides the kinds.
    todo.push("io.k8s.apimachinery.pkg.apis.meta.v1.Patch".into());
    todo.push("io.k8s.apimachinery.pkg.apis.meta.v1.Status".into());
    let mut keep = BTreeMap::new();
    while let Some(name) = todo.pop() {
        if keep.contains_key(&name) {
            continue;
        }
        let d = defs
            .get(&name)
            .with_context(|| format!("definition {name} not in swagger.json"))?;
        collect_refs(d, &mut todo);
        keep.insert(name, d.clone());
    }
    let doc = serde_json::json!({
        "source": format!(
            "kubernetes/kubernetes {} api/openapi-spec/swagger.json: the definitions reachable from the kinds ferry-apiserver serves, unchanged; generated by `cargo xtask gen-api`",
            inputs.kubernetes_version
        ),
        "definitions": keep,
    });
    let path = root.join("controlplane/openapi/definitions.json");
    std::fs::create_dir_all(path.parent().context("no parent")?)?;
    let mut bytes = serde_json::to_vec(&doc)?;
    bytes.push(b'\n');
    std::fs::write(&path, &bytes)?;
    println!(
        "wrote {} ({} definitions, {} bytes)",
        path.display(),
        keep.len(),
        bytes.len()
    );
    Ok(())
}

fn collect_refs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                if k == "$ref"
                    && let Some(r) = v.as_str().and_then(|s| s.strip_prefix("#/definitions/"))
                {
                    out.push(r.to_string());
                } else {
                    collect_refs(v, out);
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| collect_refs(v, out)),
        _ => {}
    }
}
