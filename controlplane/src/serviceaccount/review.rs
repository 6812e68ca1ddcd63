//! TokenReview (`POST /apis/authentication.k8s.io/v1/tokenreviews`): who a
//! bearer token is, answered by the same authenticators the front door
//! uses (the static token file, then ServiceAccount tokens) and never
//! stored.

use serde_json::{Value, json};

use super::{Tokens, looks_like_jwt};
use crate::auth::TokenAuth;
use crate::store::Store;

/// Answers a TokenReview `body`.
pub fn answer(store: &Store, auth: &TokenAuth, tokens: &Tokens, body: &Value) -> Value {
    let spec = body.get("spec").cloned().unwrap_or_else(|| json!({}));
    let token = spec.get("token").and_then(Value::as_str).unwrap_or("");
    let wanted: Vec<String> = spec
        .get("audiences")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(String::from)
        .collect();
    let api = tokens.api_audiences();
    let status = if token.is_empty() {
        json!({"authenticated": false, "user": {}, "error": "no token given"})
    } else if let Some(user) = auth.authenticate(token) {
        // The token file knows no audiences: its tokens are the API's.
        let audiences: Vec<&String> = if wanted.is_empty() {
            api.iter().collect()
        } else {
            wanted.iter().filter(|a| api.contains(a)).collect()
        };
        if audiences.is_empty() {
            json!({"authenticated": false, "user": {}, "error": "token audiences do not match the requested audiences"})
        } else {
            let mut groups = user.groups.clone();
            if !groups.iter().any(|g| g == crate::rbac::AUTHENTICATED_GROUP) {
                groups.push(crate::rbac::AUTHENTICATED_GROUP.into());
            }
            json!({
                "authenticated": true,
                "user": {"username": user.name, "groups": groups},
                "audiences": audiences,
            })
        }
    } else if looks_like_jwt(token) {
        match tokens.authenticate(store, token, &wanted) {
            Ok(id) => json!({
                "authenticated": true,
                "user": {"username": id.user.name, "uid": id.uid, "groups": id.user.groups, "extra": id.extra},
                "audiences": id.audiences,
            }),
            Err(e) => {
                json!({"authenticated": false, "user": {}, "error": format!("invalid bearer token, {e}")})
            }
        }
    } else {
        json!({"authenticated": false, "user": {}, "error": "invalid bearer token"})
    };
    let mut out = json!({
        "kind": "TokenReview",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"creationTimestamp": null},
        "spec": spec,
        "status": status,
    });
    if let Some(m) = body.get("metadata").filter(|m| m.is_object()) {
        out["metadata"] = m.clone();
    }
    out
}
