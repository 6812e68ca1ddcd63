//! TokenRequest (`POST /api/v1/namespaces/NS/serviceaccounts/NAME/token`,
//! `kubectl create token`), as kube-apiserver's
//! `registry/core/serviceaccount/storage/token.go` and NodeRestriction:
//!
//! - `spec.expirationSeconds`: default 3600, at least 600 ("may not specify
//!   a duration less than 10 minutes"), at most 2^32; longer than
//!   [`super::MAX_EXPIRATION_SECS`] (48 h) is cut to it, as
//!   `--service-account-max-token-expiration` does.
//! - `spec.audiences`: default the API's (the issuer).
//! - `spec.boundObjectRef`: a Pod (which must run as this ServiceAccount;
//!   the token then names the pod's Node too), a Secret, or none; a `uid`
//!   given must be the object's.
//! - A node may ask only for tokens bound to a pod (uid given) that runs
//!   on it.

use serde_json::{Value, json};

use super::token::{Claims, ObjectRef};
use super::{MAX_EXPIRATION_SECS, Tokens, unix_now};
use crate::auth::User;
use crate::error::{ApiError, Cause};
use crate::resources::{NODES, PODS, Resource, SECRETS, SERVICEACCOUNTS};
use crate::store::Store;

/// The kind a TokenRequest body is (for error details only: never stored).
pub const TOKEN_REQUESTS: Resource = Resource {
    group: "authentication.k8s.io",
    version: "v1",
    plural: "tokenrequests",
    singular: "tokenrequest",
    kind: "TokenRequest",
    namespaced: true,
    short_names: &[],
    categories: &[],
    subresources: &[],
};

/// Default `spec.expirationSeconds`.
pub const DEFAULT_EXPIRATION_SECS: i64 = 3600;
/// The shortest lifetime that may be asked for.
pub const MIN_EXPIRATION_SECS: i64 = 600;

fn invalid(name: &str, causes: Vec<Cause>) -> ApiError {
    let err = ApiError::invalid(&TOKEN_REQUESTS, name, causes);
    // Upstream names the kind with its group.
    let message = err
        .message
        .replacen("TokenRequest ", "TokenRequest.authentication.k8s.io ", 1);
    err.with_message(message)
}

fn str_at<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or_default()
}

/// Answers a TokenRequest `body` for ServiceAccount `ns/name` asked by
/// `requester`: the TokenRequest with its `status` (201).
pub fn create(
    store: &Store,
    tokens: &Tokens,
    requester: &User,
    ns: &str,
    name: &str,
    body: &Value,
) -> Result<Value, ApiError> {
    if let Some(kind) = body.get("kind").and_then(Value::as_str)
        && kind != "TokenRequest"
    {
        return Err(ApiError::bad_request(format!(
            "the body is a {kind}, not a TokenRequest"
        )));
    }
    let spec = body.get("spec").cloned().unwrap_or_else(|| json!({}));
    let mut causes = Vec::new();
    let expiration = match spec.get("expirationSeconds") {
        None | Some(Value::Null) => DEFAULT_EXPIRATION_SECS,
        Some(v) => match v.as_i64() {
            Some(n) => n,
            None => {
                return Err(ApiError::bad_request(format!(
                    "spec.expirationSeconds: {v} is not an integer"
                )));
            }
        },
    };
    if expiration < MIN_EXPIRATION_SECS {
        causes.push(Cause::invalid(
            "spec.expirationSeconds",
            expiration,
            "may not specify a duration less than 10 minutes",
        ));
    }
    if expiration > 1 << 32 {
        causes.push(Cause::invalid(
            "spec.expirationSeconds",
            expiration,
            "may not specify a duration larger than 2^32 seconds",
        ));
    }
    let mut audiences: Vec<String> = Vec::new();
    for a in spec
        .get("audiences")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        match a.as_str() {
            Some(s) if !s.is_empty() => audiences.push(s.to_owned()),
            _ => causes.push(Cause::invalid(
                "spec.audiences",
                a,
                "must be a non-empty string",
            )),
        }
    }
    if !causes.is_empty() {
        return Err(invalid(name, causes));
    }
    if audiences.is_empty() {
        audiences = tokens.api_audiences().to_vec();
    }
    let sa = store
        .get(&SERVICEACCOUNTS, ns, name)?
        .ok_or_else(|| ApiError::not_found(&SERVICEACCOUNTS, name))?;
    let reference = spec.get("boundObjectRef").filter(|r| r.is_object());
    if let Some(node) = crate::rbac::node::node_of(requester) {
        node_may_ask(store, node, ns, name, reference)?;
    }
    let expiration = expiration.min(MAX_EXPIRATION_SECS);
    let mut claims = Claims::new(
        ns,
        ObjectRef {
            name: name.to_owned(),
            uid: crate::object::uid(&sa).to_owned(),
        },
        audiences.clone(),
        unix_now(),
        expiration,
    );
    if let Some(r) = reference {
        bind(store, ns, name, r, &mut claims)?;
    }
    let token = tokens
        .signer()
        .sign(&claims)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let expires = jiff::Timestamp::from_second(claims.exp)
        .map_err(|e| ApiError::internal(e.to_string()))?
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let mut out_spec = json!({"audiences": audiences, "expirationSeconds": expiration});
    if let Some(r) = reference {
        out_spec["boundObjectRef"] = r.clone();
    }
    Ok(json!({
        "kind": "TokenRequest",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"name": name, "namespace": ns, "creationTimestamp": null},
        "spec": out_spec,
        "status": {"token": token, "expirationTimestamp": expires},
    }))
}

/// Binds `claims` to the object `r` names, as upstream checks it.
fn bind(
    store: &Store,
    ns: &str,
    sa_name: &str,
    r: &Value,
    claims: &mut Claims,
) -> Result<(), ApiError> {
    let kind = str_at(r, "/kind");
    let api_version = str_at(r, "/apiVersion");
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let obj_name = str_at(r, "/name");
    let want_uid = str_at(r, "/uid");
    let (res, obj): (&Resource, _) = match (group, kind) {
        ("", "Pod") => (&PODS, store.get(&PODS, ns, obj_name)?),
        ("", "Secret") => (&SECRETS, store.get(&SECRETS, ns, obj_name)?),
        _ => {
            return Err(ApiError::bad_request(format!(
                "cannot bind token to object of type {group}/{version}, Kind={kind}"
            )));
        }
    };
    let obj = obj.ok_or_else(|| ApiError::not_found(res, obj_name))?;
    let uid = crate::object::uid(&obj);
    if res.kind == "Pod" && str_at(&obj, "/spec/serviceAccountName") != sa_name {
        return Err(ApiError::bad_request(format!(
            "cannot bind token for serviceaccount {sa_name:?} to pod running with different serviceaccount name."
        )));
    }
    if !want_uid.is_empty() && want_uid != uid {
        return Err(ApiError::generic(
            409,
            format!(
                "Operation cannot be fulfilled on {kind} {obj_name:?}: the UID in the bound object reference ({want_uid}) does not match the UID in record. The object might have been deleted and then recreated"
            ),
        ));
    }
    let bound = ObjectRef {
        name: obj_name.to_owned(),
        uid: uid.to_owned(),
    };
    if res.kind == "Pod" {
        claims.kubernetes.pod = Some(bound);
        let node = str_at(&obj, "/spec/nodeName");
        if !node.is_empty()
            && let Some(n) = store.get(&NODES, "", node)?
        {
            claims.kubernetes.node = Some(ObjectRef {
                name: node.to_owned(),
                uid: crate::object::uid(&n).to_owned(),
            });
        }
    } else {
        claims.kubernetes.secret = Some(bound);
    }
    Ok(())
}

/// NodeRestriction: a node asks only for tokens bound to a pod (named by
/// uid) that runs on it.
fn node_may_ask(
    store: &Store,
    node: &str,
    ns: &str,
    name: &str,
    reference: Option<&Value>,
) -> Result<(), ApiError> {
    let forbidden = |why: &str| {
        ApiError::forbidden(
            &SERVICEACCOUNTS,
            name,
            format!("serviceaccounts {name:?} is forbidden: {why}"),
        )
    };
    let Some(r) = reference else {
        return Err(forbidden("node requested token not bound to a pod"));
    };
    if str_at(r, "/kind") != "Pod" {
        return Err(forbidden("node requested token bound to a non-pod object"));
    }
    let uid = str_at(r, "/uid");
    if uid.is_empty() {
        return Err(forbidden(
            "node requested token with a pod binding without a uid",
        ));
    }
    let pod = store
        .get(&PODS, ns, str_at(r, "/name"))?
        .ok_or_else(|| forbidden("node requested token bound to a pod that does not exist"))?;
    if crate::object::uid(&pod) != uid {
        return Err(forbidden(&format!(
            "the UID in the bound object reference ({uid}) does not match the UID in record. The object might have been deleted and then recreated"
        )));
    }
    if str_at(&pod, "/spec/nodeName") != node {
        return Err(forbidden(
            "node requested token bound to a pod scheduled on a different node",
        ));
    }
    Ok(())
}
