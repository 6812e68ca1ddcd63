//! authorization.k8s.io/v1 reviews, answered by the authorizer and never
//! stored: SelfSubjectAccessReview (`kubectl auth can-i`),
//! SelfSubjectRulesReview (`kubectl auth can-i --list`) and
//! SubjectAccessReview (the same question about another user).

use serde_json::{Value, json};

use super::Authorizer;
use super::attributes::{Attributes, Target};
use crate::auth::User;
use crate::error::{ApiError, Cause};
use crate::resources::Resource;

fn field<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or("")
}

/// The attributes a review's `spec` asks about, for `user`.
fn asked(res: &Resource, spec: &Value, user: User) -> Result<Attributes, ApiError> {
    let resource = spec.get("resourceAttributes").filter(|v| v.is_object());
    let non_resource = spec.get("nonResourceAttributes").filter(|v| v.is_object());
    match (resource, non_resource) {
        (Some(r), None) => Ok(Attributes {
            user,
            verb: field(r, "/verb").to_string(),
            target: Target::Resource {
                group: field(r, "/group").to_string(),
                resource: field(r, "/resource").to_string(),
                subresource: Some(field(r, "/subresource"))
                    .filter(|s| !s.is_empty())
                    .map(String::from),
                namespace: field(r, "/namespace").to_string(),
                name: Some(field(r, "/name"))
                    .filter(|s| !s.is_empty())
                    .map(String::from),
            },
        }),
        (None, Some(n)) => Ok(Attributes {
            user,
            verb: field(n, "/verb").to_string(),
            target: Target::NonResource {
                path: field(n, "/path").to_string(),
            },
        }),
        _ => Err(ApiError::invalid(
            res,
            "",
            vec![Cause {
                reason: "FieldValueRequired",
                field: "spec.resourceAttributes".into(),
                message: "Required value: exactly one of nonResourceAttributes or resourceAttributes must be specified".into(),
            }],
        )),
    }
}

/// Answers a review `body` posted by `requester`.
pub fn answer(
    authorizer: &Authorizer,
    res: &'static Resource,
    requester: &User,
    body: &Value,
) -> Result<Value, ApiError> {
    let spec = body.get("spec").cloned().unwrap_or_else(|| json!({}));
    let status = match res.kind {
        "SelfSubjectAccessReview" => {
            let attrs = asked(res, &spec, requester.clone())?;
            access_status(authorizer.allowed(&attrs))
        }
        "SubjectAccessReview" => {
            let name = field(&spec, "/user");
            let groups = super::rules::strings(&spec, "groups");
            if name.is_empty() && groups.is_empty() {
                return Err(ApiError::invalid(
                    res,
                    "",
                    vec![Cause {
                        reason: "FieldValueInvalid",
                        field: "spec.user".into(),
                        message:
                            "Invalid value: \"\": at least one of user or group must be specified"
                                .into(),
                    }],
                ));
            }
            let user = User {
                name: name.to_string(),
                groups,
            };
            let attrs = asked(res, &spec, user)?;
            access_status(authorizer.allowed(&attrs))
        }
        "SelfSubjectRulesReview" => {
            let ns = field(&spec, "/namespace");
            let (rules, incomplete) = authorizer.rules_for(requester, ns);
            let mut resource_rules = Vec::new();
            let mut non_resource_rules = Vec::new();
            for r in rules {
                if r.non_resource_urls.is_empty() {
                    let mut j = r.to_json();
                    if let Some(m) = j.as_object_mut() {
                        m.remove("nonResourceURLs");
                    }
                    resource_rules.push(j);
                } else {
                    non_resource_rules
                        .push(json!({"verbs": r.verbs, "nonResourceURLs": r.non_resource_urls}));
                }
            }
            json!({
                "resourceRules": resource_rules,
                "nonResourceRules": non_resource_rules,
                "incomplete": incomplete,
            })
        }
        _ => return Err(ApiError::path_not_found()),
    };
    let mut out = json!({
        "kind": res.kind,
        "apiVersion": res.api_version(),
        "metadata": {"creationTimestamp": null},
        "spec": spec,
        "status": status,
    });
    if let Some(m) = body.get("metadata").filter(|m| m.is_object()) {
        out["metadata"] = m.clone();
    }
    Ok(out)
}

fn access_status((allowed, reason): (bool, String)) -> Value {
    let mut s = json!({ "allowed": allowed });
    if !reason.is_empty() {
        s["reason"] = json!(reason);
    }
    s
}
