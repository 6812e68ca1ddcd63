//! Defaults and validation of the apps/v1 workload kinds (Deployment,
//! ReplicaSet, DaemonSet, StatefulSet) and of core/v1 Secrets, as
//! kube-apiserver's `SetDefaults_*` and `Validate*` functions apply them.

use base64::Engine;
use serde_json::{Map, Value, json};

use crate::error::Cause;
use crate::selector::LabelSelector;

const IMMUTABLE: &str = "field is immutable";

fn set_default(obj: &mut Value, field: &str, value: Value) {
    if obj.get(field).is_none_or(Value::is_null) {
        obj[field] = value;
    }
}

/// Defaults of a pod spec that kube-apiserver applies to pods and to pod
/// templates alike (`SetDefaults_PodSpec`, `SetDefaults_Container`), and
/// the structural checks on its containers; `at` prefixes field paths.
pub fn pod_spec(spec: &mut Value, at: &str, causes: &mut Vec<Cause>) {
    if !spec.is_object() {
        causes.push(Cause::required(format!("{at}.containers")));
        return;
    }
    for (field, default) in [
        ("restartPolicy", json!("Always")),
        ("dnsPolicy", json!("ClusterFirst")),
        ("schedulerName", json!("default-scheduler")),
        ("terminationGracePeriodSeconds", json!(30)),
        ("securityContext", json!({})),
    ] {
        set_default(spec, field, default);
    }
    match spec.get_mut("containers").and_then(Value::as_array_mut) {
        None => causes.push(Cause::required(format!("{at}.containers"))),
        Some(cs) if cs.is_empty() => causes.push(Cause::required(format!("{at}.containers"))),
        Some(cs) => containers(cs, &format!("{at}.containers"), causes),
    }
    if let Some(cs) = spec.get_mut("initContainers").and_then(Value::as_array_mut) {
        containers(cs, &format!("{at}.initContainers"), causes);
    }
}

fn containers(cs: &mut [Value], at: &str, causes: &mut Vec<Cause>) {
    let mut names = std::collections::BTreeSet::new();
    for (i, c) in cs.iter_mut().enumerate() {
        let name = c
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if name.is_empty() {
            causes.push(Cause::required(format!("{at}[{i}].name")));
        } else if !super::meta::is_dns1123_label(&name) {
            causes.push(Cause::invalid(format!("{at}[{i}].name"), format!("\"{name}\""), "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character"));
        } else if !names.insert(name) {
            causes.push(Cause::duplicate(format!("{at}[{i}].name"), "name"));
        }
        let image = c
            .get("image")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if image.is_empty() {
            causes.push(Cause::required(format!("{at}[{i}].image")));
        }
        if c.get("imagePullPolicy").is_none() {
            // The tag follows the last ':' after the last '/' (a registry
            // port is not a tag); a digest pins the image.
            let last = image.rsplit('/').next().unwrap_or("");
            let tag = last
                .split('@')
                .next()
                .and_then(|s| s.split_once(':'))
                .map(|(_, t)| t);
            let pinned = image.contains('@');
            c["imagePullPolicy"] = json!(if !pinned && tag.is_none_or(|t| t == "latest") {
                "Always"
            } else {
                "IfNotPresent"
            });
        }
        // Go clients always send the (struct) resources, empty or not.
        set_default(c, "resources", json!({}));
        set_default(c, "terminationMessagePath", json!("/dev/termination-log"));
        set_default(c, "terminationMessagePolicy", json!("File"));
        for p in c
            .get_mut("ports")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            set_default(p, "protocol", json!("TCP"));
        }
    }
}

fn as_map(v: Option<&Value>) -> Map<String, Value> {
    v.and_then(Value::as_object).cloned().unwrap_or_default()
}

/// Go's `%v` of a label map, as validation messages print them.
fn go_map(m: &Map<String, Value>) -> String {
    let inner: Vec<String> = m
        .iter()
        .map(|(k, v)| format!("{k:?}:{:?}", v.as_str().unwrap_or("")))
        .collect();
    format!("map[string]string{{{}}}", inner.join(", "))
}

/// The selector and template checks every workload kind shares.
fn selector_and_template(
    kind: &str,
    obj: &mut Value,
    old: Option<&Value>,
    causes: &mut Vec<Cause>,
) {
    let selector = obj.pointer("/spec/selector").cloned();
    match &selector {
        None | Some(Value::Null) => causes.push(Cause::required("spec.selector")),
        Some(sel) => match LabelSelector::from_api(sel) {
            Err(e) => causes.push(Cause::invalid("spec.selector", "", &e)),
            Ok(parsed) if parsed.is_empty() => causes.push(Cause::invalid(
                "spec.selector",
                sel,
                &format!(
                    "empty selector is invalid for {}",
                    kind.to_ascii_lowercase()
                ),
            )),
            Ok(parsed) => {
                let labels = as_map(obj.pointer("/spec/template/metadata/labels"));
                if !parsed.matches_with(|k| labels.get(k).and_then(Value::as_str)) {
                    causes.push(Cause::invalid(
                        "spec.template.metadata.labels",
                        go_map(&labels),
                        "`selector` does not match template `labels`",
                    ));
                }
            }
        },
    }
    if let Some(old) = old
        && old.pointer("/spec/selector") != selector.as_ref()
    {
        causes.push(Cause::invalid(
            "spec.selector",
            selector.unwrap_or(Value::Null),
            IMMUTABLE,
        ));
    }
    match obj.pointer_mut("/spec/template/spec") {
        Some(spec) => {
            pod_spec(spec, "spec.template.spec", causes);
            let policy = spec
                .get("restartPolicy")
                .and_then(Value::as_str)
                .unwrap_or("");
            if policy != "Always" {
                causes.push(Cause::unsupported(
                    "spec.template.spec.restartPolicy",
                    policy,
                    &["Always"],
                ));
            }
        }
        None => causes.push(Cause::required("spec.template.spec.containers")),
    }
    for field in ["replicas", "minReadySeconds", "revisionHistoryLimit"] {
        if let Some(n) = obj
            .pointer(&format!("/spec/{field}"))
            .and_then(Value::as_i64)
            && n < 0
        {
            causes.push(Cause::invalid(
                format!("spec.{field}"),
                n,
                "must be greater than or equal to 0",
            ));
        }
    }
}

/// An intOrString of a rolling update as a count of `total` (percentages
/// rounded up or down); Err when malformed.
pub fn scaled_value(v: Option<&Value>, total: i64, round_up: bool) -> Result<i64, String> {
    match v {
        None | Some(Value::Null) => Ok(0),
        Some(Value::Number(n)) => n.as_i64().ok_or_else(|| format!("{n} is not an integer")),
        Some(Value::String(s)) => {
            let pct: i64 = s
                .strip_suffix('%')
                .and_then(|p| p.parse().ok())
                .ok_or_else(|| format!("invalid value for IntOrString: invalid type: string is not a percentage: {s:?}"))?;
            let scaled = pct * total;
            Ok(if round_up {
                (scaled + 99).div_euclid(100)
            } else {
                scaled.div_euclid(100)
            })
        }
        Some(other) => Err(format!("invalid value for IntOrString: {other}")),
    }
}

fn int_or_percent(v: Option<&Value>, at: &str, causes: &mut Vec<Cause>) -> Option<i64> {
    match v {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => {
            let n = n.as_i64().unwrap_or(-1);
            if n < 0 {
                causes.push(Cause::invalid(at, n, "must be greater than or equal to 0"));
            }
            Some(n)
        }
        Some(Value::String(s)) => match s.strip_suffix('%').and_then(|p| p.parse::<i64>().ok()) {
            Some(p) if p > 100 => {
                causes.push(Cause::invalid(
                    at,
                    format!("\"{s}\""),
                    "must not be greater than 100%",
                ));
                Some(p)
            }
            Some(p) if p < 0 => {
                causes.push(Cause::invalid(
                    at,
                    format!("\"{s}\""),
                    "must be greater than or equal to 0",
                ));
                Some(p)
            }
            Some(p) => Some(p),
            None => {
                causes.push(Cause::invalid(at, format!("\"{s}\""), "a valid percent string must be a numeric string followed by an ending '%' (e.g. '1%',  or '93%', regex used for validation is '[0-9]+%')"));
                None
            }
        },
        Some(other) => {
            causes.push(Cause::invalid(
                at,
                other,
                "must be an integer or percentage",
            ));
            None
        }
    }
}

pub fn deployment(mut obj: Value, old: Option<&Value>, causes: &mut Vec<Cause>) -> Value {
    if !obj.get("spec").is_some_and(Value::is_object) {
        obj["spec"] = json!({});
    }
    let spec = &mut obj["spec"];
    set_default(spec, "replicas", json!(1));
    set_default(spec, "revisionHistoryLimit", json!(10));
    set_default(spec, "progressDeadlineSeconds", json!(600));
    set_default(spec, "strategy", json!({}));
    set_default(&mut spec["strategy"], "type", json!("RollingUpdate"));
    let strategy = spec["strategy"]["type"].as_str().unwrap_or("").to_string();
    match strategy.as_str() {
        "RollingUpdate" => {
            set_default(&mut spec["strategy"], "rollingUpdate", json!({}));
            let ru = &mut spec["strategy"]["rollingUpdate"];
            set_default(ru, "maxUnavailable", json!("25%"));
            set_default(ru, "maxSurge", json!("25%"));
            let at = "spec.strategy.rollingUpdate";
            let unavailable = int_or_percent(
                ru.get("maxUnavailable"),
                &format!("{at}.maxUnavailable"),
                causes,
            );
            let surge = int_or_percent(ru.get("maxSurge"), &format!("{at}.maxSurge"), causes);
            if unavailable == Some(0) && surge == Some(0) {
                causes.push(Cause::invalid(
                    format!("{at}.maxUnavailable"),
                    ru["maxUnavailable"].clone(),
                    "may not be 0 when `maxSurge` is 0",
                ));
            }
        }
        "Recreate" => {
            if spec["strategy"]
                .get("rollingUpdate")
                .is_some_and(|r| !r.is_null())
            {
                causes.push(Cause::forbidden(
                    "spec.strategy.rollingUpdate",
                    "may not be specified when strategy `type` is 'Recreate'",
                ));
            }
        }
        other => causes.push(Cause::unsupported(
            "spec.strategy.type",
            other,
            &["Recreate", "RollingUpdate"],
        )),
    }
    let min_ready = spec
        .get("minReadySeconds")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    if let Some(deadline) = spec.get("progressDeadlineSeconds").and_then(Value::as_i64)
        && deadline <= min_ready
    {
        causes.push(Cause::invalid(
            "spec.progressDeadlineSeconds",
            deadline,
            "must be greater than minReadySeconds",
        ));
    }
    selector_and_template("Deployment", &mut obj, old, causes);
    obj
}

pub fn replica_set(mut obj: Value, old: Option<&Value>, causes: &mut Vec<Cause>) -> Value {
    if !obj.get("spec").is_some_and(Value::is_object) {
        obj["spec"] = json!({});
    }
    set_default(&mut obj["spec"], "replicas", json!(1));
    selector_and_template("ReplicaSet", &mut obj, old, causes);
    obj
}

pub fn daemon_set(mut obj: Value, old: Option<&Value>, causes: &mut Vec<Cause>) -> Value {
    if !obj.get("spec").is_some_and(Value::is_object) {
        obj["spec"] = json!({});
    }
    let spec = &mut obj["spec"];
    set_default(spec, "revisionHistoryLimit", json!(10));
    set_default(spec, "updateStrategy", json!({}));
    set_default(&mut spec["updateStrategy"], "type", json!("RollingUpdate"));
    match spec["updateStrategy"]["type"].as_str().unwrap_or("") {
        "RollingUpdate" => {
            set_default(&mut spec["updateStrategy"], "rollingUpdate", json!({}));
            let ru = &mut spec["updateStrategy"]["rollingUpdate"];
            set_default(ru, "maxUnavailable", json!(1));
            set_default(ru, "maxSurge", json!(0));
            let at = "spec.updateStrategy.rollingUpdate";
            int_or_percent(
                ru.get("maxUnavailable"),
                &format!("{at}.maxUnavailable"),
                causes,
            );
            int_or_percent(ru.get("maxSurge"), &format!("{at}.maxSurge"), causes);
        }
        "OnDelete" => {}
        other => causes.push(Cause::unsupported(
            "spec.updateStrategy.type",
            other,
            &["OnDelete", "RollingUpdate"],
        )),
    }
    selector_and_template("DaemonSet", &mut obj, old, causes);
    obj
}

pub fn stateful_set(mut obj: Value, old: Option<&Value>, causes: &mut Vec<Cause>) -> Value {
    if !obj.get("spec").is_some_and(Value::is_object) {
        obj["spec"] = json!({});
    }
    let spec = &mut obj["spec"];
    set_default(spec, "replicas", json!(1));
    set_default(spec, "revisionHistoryLimit", json!(10));
    set_default(spec, "podManagementPolicy", json!("OrderedReady"));
    set_default(
        spec,
        "persistentVolumeClaimRetentionPolicy",
        json!({"whenDeleted": "Retain", "whenScaled": "Retain"}),
    );
    set_default(spec, "updateStrategy", json!({}));
    set_default(&mut spec["updateStrategy"], "type", json!("RollingUpdate"));
    match spec["updateStrategy"]["type"].as_str().unwrap_or("") {
        "RollingUpdate" => {
            set_default(&mut spec["updateStrategy"], "rollingUpdate", json!({}));
            set_default(
                &mut spec["updateStrategy"]["rollingUpdate"],
                "partition",
                json!(0),
            );
        }
        "OnDelete" => {}
        other => causes.push(Cause::unsupported(
            "spec.updateStrategy.type",
            other,
            &["OnDelete", "RollingUpdate"],
        )),
    }
    match spec["podManagementPolicy"].as_str().unwrap_or("") {
        "OrderedReady" | "Parallel" => {}
        other => causes.push(Cause::unsupported(
            "spec.podManagementPolicy",
            other,
            &["OrderedReady", "Parallel"],
        )),
    }
    if let Some(old) = old {
        // Only replicas, template, updateStrategy, persistentVolumeClaimRetentionPolicy,
        // minReadySeconds, ordinals and revisionHistoryLimit may change.
        for field in ["serviceName", "podManagementPolicy", "volumeClaimTemplates"] {
            if old.pointer(&format!("/spec/{field}")) != obj.pointer(&format!("/spec/{field}")) {
                causes.push(Cause::forbidden("spec", "updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'revisionHistoryLimit', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden"));
                break;
            }
        }
    }
    selector_and_template("StatefulSet", &mut obj, old, causes);
    obj
}

/// A ControllerRevision: its revision number may not be negative.
pub fn controller_revision(obj: Value, causes: &mut Vec<Cause>) -> Value {
    if let Some(r) = obj.get("revision").and_then(Value::as_i64)
        && r < 0
    {
        causes.push(Cause::invalid(
            "revision",
            r,
            "must be greater than or equal to 0",
        ));
    }
    obj
}

fn valid_config_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 253
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && k != "."
        && k != ".."
        && !k.starts_with("..")
}

/// Largest total of a Secret's data (kube's MaxSecretSize).
const MAX_SECRET_BYTES: usize = 1024 * 1024;

/// A Secret: `stringData` merged into `data` (base64), type defaulted to
/// Opaque, keys and size checked, the type-specific keys required, type
/// and (once immutable) data kept on update.
pub fn secret(mut obj: Value, old: Option<&Value>, causes: &mut Vec<Cause>) -> Value {
    let b64 = base64::engine::general_purpose::STANDARD;
    if let Some(Value::Object(string_data)) =
        obj.as_object_mut().and_then(|m| m.remove("stringData"))
    {
        if !obj.get("data").is_some_and(Value::is_object) {
            obj["data"] = json!({});
        }
        for (k, v) in string_data {
            obj["data"][k.as_str()] = json!(b64.encode(v.as_str().unwrap_or("").as_bytes()));
        }
    }
    set_default(&mut obj, "type", json!("Opaque"));
    let data = as_map(obj.get("data"));
    let mut total = 0usize;
    for (k, v) in &data {
        if !valid_config_key(k) {
            causes.push(Cause::invalid(format!("data[{k}]"), format!("\"{k}\""), "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')"));
        }
        total += v.as_str().map_or(0, |s| s.len() / 4 * 3);
    }
    if total > MAX_SECRET_BYTES {
        causes.push(Cause {
            reason: "FieldValueTooLong",
            field: "data".into(),
            message: format!("Too long: may not be more than {MAX_SECRET_BYTES} bytes"),
        });
    }
    let ty = obj
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let need = |keys: &[&str], causes: &mut Vec<Cause>| {
        for k in keys {
            if !data.contains_key(*k) {
                causes.push(Cause::required(format!("data[{k}]")));
            }
        }
    };
    match ty.as_str() {
        "kubernetes.io/tls" => need(&["tls.crt", "tls.key"], causes),
        "kubernetes.io/dockerconfigjson" => need(&[".dockerconfigjson"], causes),
        "kubernetes.io/dockercfg" => need(&[".dockercfg"], causes),
        "kubernetes.io/ssh-auth" => need(&["ssh-privatekey"], causes),
        "kubernetes.io/basic-auth"
            if !data.contains_key("username") && !data.contains_key("password") =>
        {
            causes.push(Cause::required("data[username]"));
        }
        "kubernetes.io/service-account-token"
            if obj
                .pointer("/metadata/annotations/kubernetes.io~1service-account.name")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty) =>
        {
            causes.push(Cause::required(
                "metadata.annotations[kubernetes.io/service-account.name]",
            ));
        }
        _ => {}
    }
    if let Some(old) = old {
        let old_ty = old.get("type").and_then(Value::as_str).unwrap_or("Opaque");
        if old_ty != ty {
            causes.push(Cause::invalid("type", format!("\"{ty}\""), IMMUTABLE));
        }
        if old.get("immutable").and_then(Value::as_bool) == Some(true) {
            if old.get("data") != obj.get("data") {
                causes.push(Cause::forbidden(
                    "data",
                    "field is immutable when `immutable` is set",
                ));
            }
            if obj.get("immutable").and_then(Value::as_bool) != Some(true) {
                causes.push(Cause::forbidden(
                    "immutable",
                    "field is immutable when `immutable` is set",
                ));
            }
        }
    }
    obj
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deployment_defaults_and_selector_checks() {
        let d = json!({"metadata": {"name": "d"}, "spec": {"selector": {"matchLabels": {"app": "x"}},
            "template": {"metadata": {"labels": {"app": "x"}}, "spec": {"containers": [{"name": "c", "image": "nginx:latest", "ports": [{"containerPort": 80}]}]}}}});
        let mut causes = Vec::new();
        let out = deployment(d.clone(), None, &mut causes);
        assert!(causes.is_empty(), "{causes:?}");
        assert_eq!(out["spec"]["replicas"], 1);
        assert_eq!(
            out["spec"]["strategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}})
        );
        assert_eq!(out["spec"]["revisionHistoryLimit"], 10);
        assert_eq!(out["spec"]["progressDeadlineSeconds"], 600);
        let c = &out["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["imagePullPolicy"], "Always");
        assert_eq!(c["ports"][0]["protocol"], "TCP");
        assert_eq!(out["spec"]["template"]["spec"]["dnsPolicy"], "ClusterFirst");

        let mut bad = d.clone();
        bad["spec"]["template"]["metadata"]["labels"] = json!({"app": "y"});
        let mut causes = Vec::new();
        deployment(bad, None, &mut causes);
        assert_eq!(causes[0].field, "spec.template.metadata.labels");
        assert!(
            causes[0]
                .message
                .contains("`selector` does not match template `labels`")
        );

        let mut moved = d.clone();
        moved["spec"]["selector"] = json!({"matchLabels": {"app": "x", "tier": "a"}});
        moved["spec"]["template"]["metadata"]["labels"] = json!({"app": "x", "tier": "a"});
        let mut causes = Vec::new();
        deployment(moved, Some(&out), &mut causes);
        assert!(
            causes
                .iter()
                .any(|c| c.field == "spec.selector" && c.message.contains("immutable")),
            "{causes:?}"
        );

        let mut none = d;
        none["spec"]
            .as_object_mut()
            .expect("spec")
            .remove("selector");
        let mut causes = Vec::new();
        deployment(none, None, &mut causes);
        assert!(
            causes
                .iter()
                .any(|c| c.field == "spec.selector" && c.reason == "FieldValueRequired")
        );
    }

    #[test]
    fn pull_policy_by_tag() {
        for (image, want) in [
            ("nginx", "Always"),
            ("nginx:latest", "Always"),
            ("nginx:1.25", "IfNotPresent"),
            ("registry:5000/nginx", "Always"),
            ("nginx@sha256:abc", "IfNotPresent"),
        ] {
            let mut cs = vec![json!({"name": "c", "image": image})];
            containers(&mut cs, "c", &mut Vec::new());
            assert_eq!(cs[0]["imagePullPolicy"], want, "{image}");
        }
    }

    #[test]
    fn secret_string_data_is_merged() {
        let s = json!({"metadata": {"name": "s"}, "data": {"a": "eA=="}, "stringData": {"b": "hello", "a": "y"}});
        let mut causes = Vec::new();
        let out = secret(s, None, &mut causes);
        assert!(causes.is_empty());
        assert_eq!(out["type"], "Opaque");
        assert_eq!(out["data"], json!({"a": "eQ==", "b": "aGVsbG8="}));
        assert!(out.get("stringData").is_none());
        let tls = json!({"metadata": {"name": "t"}, "type": "kubernetes.io/tls", "data": {"tls.crt": "eA=="}});
        let mut causes = Vec::new();
        secret(tls, None, &mut causes);
        assert_eq!(causes[0].field, "data[tls.key]");
    }

    #[test]
    fn scaled_values_round_like_intstr() {
        assert_eq!(scaled_value(Some(&json!("25%")), 3, true), Ok(1));
        assert_eq!(scaled_value(Some(&json!("25%")), 3, false), Ok(0));
        assert_eq!(scaled_value(Some(&json!(2)), 3, false), Ok(2));
        assert_eq!(scaled_value(Some(&json!("25%")), 10, true), Ok(3));
    }
}
