//! Validation of object metadata shared by every kind: names, labels and
//! annotations, with the messages kube-apiserver gives.

use serde_json::Value;

use crate::error::Cause;
use crate::object;
use crate::resources::Resource;

fn dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// apimachinery's IsDNS1123Subdomain: at most 253 characters in all, with
/// no limit per label.
pub fn dns1123_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

fn dns1035_label(s: &str) -> bool {
    dns1123_label(s) && s.starts_with(|c: char| c.is_ascii_lowercase())
}

const LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const DNS1035_MSG: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')";

/// Checks `name` by the rule kube-apiserver applies to `kind`.
pub fn check_name(kind: &str, name: &str) -> Option<&'static str> {
    match kind {
        "Service" => (!dns1035_label(name)).then_some(DNS1035_MSG),
        "Namespace" => (!dns1123_label(name)).then_some(LABEL_MSG),
        // apimachinery's IsValidPathSegmentName, as kube-apiserver's
        // ValidateRBACName: `system:node` is a valid role name.
        "Role" | "ClusterRole" | "RoleBinding" | "ClusterRoleBinding" => match name {
            "." => Some("may not be '.'"),
            ".." => Some("may not be '..'"),
            _ if name.contains('/') => Some("may not contain '/'"),
            _ if name.contains('%') => Some("may not contain '%'"),
            _ => None,
        },
        _ => (!dns1123_subdomain(name)).then_some(SUBDOMAIN_MSG),
    }
}

pub fn is_dns1123_label(s: &str) -> bool {
    dns1123_label(s)
}

fn qualified_name_part(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// `[prefix/]name` as label and annotation keys are written.
pub fn qualified_name(key: &str) -> bool {
    match key.split_once('/') {
        Some((prefix, name)) => dns1123_subdomain(prefix) && qualified_name_part(name),
        None => qualified_name_part(key),
    }
}

pub fn label_value(v: &str) -> bool {
    v.is_empty() || qualified_name_part(v)
}

/// Field errors in `obj`'s metadata.
pub fn validate(res: &Resource, obj: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let name = object::name(obj);
    if name.is_empty() {
        causes.push(Cause::required("metadata.name"));
    } else if let Some(msg) = check_name(res.kind, name) {
        causes.push(Cause::invalid("metadata.name", format!("\"{name}\""), msg));
    }
    if let Some(labels) = object::labels(obj) {
        for (k, v) in labels {
            if !qualified_name(k) {
                causes.push(Cause::invalid(
                    "metadata.labels",
                    format!("\"{k}\""),
                    "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character",
                ));
            }
            match v.as_str() {
                Some(s) if label_value(s) => {}
                _ => causes.push(Cause::invalid(
                    "metadata.labels",
                    v,
                    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character",
                )),
            }
        }
    }
    validate_managed_fields(obj, &mut causes);
    if let Some(annotations) = object::metadata(obj)
        .and_then(|m| m.get("annotations"))
        .and_then(Value::as_object)
    {
        let mut total = 0usize;
        for (k, v) in annotations {
            total += k.len() + v.as_str().map_or(0, str::len);
            if !qualified_name(k) {
                causes.push(Cause::invalid(
                    "metadata.annotations",
                    format!("\"{k}\""),
                    "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character",
                ));
            }
        }
        if total > 256 * 1024 {
            causes.push(Cause {
                reason: "FieldValueTooLong",
                field: "metadata.annotations".into(),
                message: "Too long: must have at most 262144 bytes".into(),
            });
        }
    }
    causes
}

/// apimachinery's ValidateManagedFields: each entry's operation is Apply or
/// Update, its fieldsType FieldsV1, its manager at most 128 printable
/// characters. (A fieldsV1 that is not a field set is ignored later, as
/// kube-apiserver's field manager does.)
fn validate_managed_fields(obj: &Value, causes: &mut Vec<Cause>) {
    let Some(list) = object::metadata(obj).and_then(|m| m.get("managedFields")) else {
        return;
    };
    let Some(entries) = list.as_array() else {
        causes.push(Cause::invalid(
            "metadata.managedFields",
            "",
            "must be a list of entries",
        ));
        return;
    };
    for (i, e) in entries.iter().enumerate() {
        let field = |f: &str| format!("metadata.managedFields[{i}].{f}");
        let op = e.get("operation").and_then(Value::as_str).unwrap_or("");
        if !matches!(op, "Apply" | "Update") {
            causes.push(Cause::invalid(
                field("operation"),
                format!("\"{op}\""),
                "must be `Apply` or `Update`",
            ));
        }
        let ty = e.get("fieldsType").and_then(Value::as_str).unwrap_or("");
        if !ty.is_empty() && ty != "FieldsV1" {
            causes.push(Cause::invalid(
                field("fieldsType"),
                format!("\"{ty}\""),
                "must be `FieldsV1`",
            ));
        }
        let manager = e.get("manager").and_then(Value::as_str).unwrap_or("");
        if manager.chars().count() > 128 {
            causes.push(Cause {
                reason: "FieldValueTooLong",
                field: field("manager"),
                message: "Too long: may not be more than 128 bytes".into(),
            });
        } else if manager.chars().any(char::is_control) {
            causes.push(Cause::invalid(
                field("manager"),
                format!("{manager:?}"),
                "must only contain printable characters",
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(check_name("Service", "web-1").is_none());
        assert!(check_name("Service", "1web").is_some());
        assert!(check_name("Namespace", "a.b").is_some());
        assert!(check_name("ConfigMap", "a.b").is_none());
        assert!(check_name("Pod", "A").is_some());
        assert!(check_name("Pod", "-a").is_some());
        assert!(qualified_name("app.kubernetes.io/name"));
        assert!(!qualified_name("bad/key/x"));
        assert!(label_value(""));
        assert!(!label_value("-x"));
        // Subdomains have no 63-character rule per label, as in kube.
        assert!(check_name("ConfigMap", &"a".repeat(253)).is_none());
        assert!(check_name("ConfigMap", &"a".repeat(254)).is_some());
        assert!(check_name("ConfigMap", &format!("{}.b", "a".repeat(100))).is_none());
        assert!(check_name("ConfigMap", "a..b").is_some());
        assert!(check_name("Namespace", &"a".repeat(64)).is_some());
    }

    #[test]
    fn managed_fields_entries() {
        let res = &crate::resources::CONFIGMAPS;
        let with = |entries: Value| serde_json::json!({"metadata": {"name": "x", "managedFields": entries}});
        let ok = with(
            serde_json::json!([{"manager": "kubectl", "operation": "Update", "fieldsType": "FieldsV1", "fieldsV1": {}}]),
        );
        assert!(validate(res, &ok).is_empty());
        let bad = with(
            serde_json::json!([{"manager": "m", "operation": "Merge", "fieldsType": "FieldsV2"}]),
        );
        let fields: Vec<String> = validate(res, &bad).into_iter().map(|c| c.field).collect();
        assert_eq!(
            fields,
            [
                "metadata.managedFields[0].operation",
                "metadata.managedFields[0].fieldsType"
            ]
        );
        let long = with(serde_json::json!([{"manager": "m".repeat(129), "operation": "Apply"}]));
        assert_eq!(validate(res, &long).len(), 1);
        assert_eq!(validate(res, &with(serde_json::json!("x"))).len(), 1);
    }
}
