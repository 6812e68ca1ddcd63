//! ServiceAccount tokens, as kube-apiserver issues and accepts them:
//!
//! - [`token`]: the signed JWT itself (ES256 with the apiserver's P-256
//!   key in `<data-dir>/pki/sa.key`, made at first start), its claims and
//!   the JWKS the key is published as.
//! - [`request`]: TokenRequest (`POST
//!   .../serviceaccounts/NAME/token`, `kubectl create token`): validation
//!   and binding to a Pod or Secret as upstream.
//! - [`review`]: TokenReview (`authentication.k8s.io/v1`), answered and
//!   never stored.
//! - [`Tokens::authenticate`]: a bearer token that is not a static one is
//!   checked here: signature and claims (cached for at most [`CACHE_TTL`],
//!   keyed by the token's SHA-256, [`CACHE_ENTRIES`] at most), then on
//!   every request the objects it names: the ServiceAccount (same uid, not
//!   being deleted), and for a bound token the Pod or Secret and Node (same
//!   uid). Deleting one revokes its tokens at the next request.
//!
//! The user of a token is `system:serviceaccount:NS:NAME` in groups
//! `system:serviceaccounts` and `system:serviceaccounts:NS`.

pub mod request;
pub mod review;
pub mod token;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::auth::User;
use crate::resources::{NODES, PODS, Resource, SECRETS, SERVICEACCOUNTS};
use crate::store::Store;
use token::{Claims, ISSUER, Signer, TokenError};

/// How long a verified signature is trusted without checking it again.
pub const CACHE_TTL: Duration = Duration::from_secs(10);
/// Most verified tokens remembered.
pub const CACHE_ENTRIES: usize = 4096;
/// The longest lifetime a TokenRequest gets (longer requests are cut to
/// it, as `--service-account-max-token-expiration=48h` does).
pub const MAX_EXPIRATION_SECS: i64 = 48 * 3600;
/// The group of every ServiceAccount.
pub const ALL_GROUP: &str = "system:serviceaccounts";
/// The `extra` key naming a token's pod, as upstream.
const EXTRA_POD_NAME: &str = "authentication.kubernetes.io/pod-name";
const EXTRA_POD_UID: &str = "authentication.kubernetes.io/pod-uid";
const EXTRA_NODE_NAME: &str = "authentication.kubernetes.io/node-name";
const EXTRA_NODE_UID: &str = "authentication.kubernetes.io/node-uid";
const EXTRA_CREDENTIAL_ID: &str = "authentication.kubernetes.io/credential-id";

/// Who a ServiceAccount token names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: User,
    /// The ServiceAccount's uid.
    pub uid: String,
    pub extra: BTreeMap<String, Vec<String>>,
    /// The token's audiences.
    pub audiences: Vec<String>,
}

/// Why a token was refused.
#[derive(Debug, thiserror::Error)]
pub enum Invalid {
    #[error(transparent)]
    Token(#[from] TokenError),
    /// A named object is gone or was replaced: upstream's "service
    /// account token has been invalidated" family.
    #[error("{0}")]
    Revoked(String),
}

#[derive(Debug)]
struct Cached {
    until: Instant,
    claims: Claims,
}

/// The apiserver's ServiceAccount token issuer and authenticator.
#[derive(Debug)]
pub struct Tokens {
    signer: Signer,
    /// `--api-audiences`: what a token must be for to reach the API.
    audiences: Vec<String>,
    cache: Mutex<HashMap<[u8; 32], Cached>>,
}

/// Seconds since the epoch.
pub fn unix_now() -> i64 {
    jiff::Timestamp::now().as_second()
}

/// Whether `token` has a JWT's shape (three base64url parts), so a token
/// of another kind is never parsed as one.
pub fn looks_like_jwt(token: &str) -> bool {
    token.len() <= token::MAX_TOKEN_LEN
        && token.split('.').count() == 3
        && token.starts_with("eyJ")
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// The uid of a stored object and whether it is being deleted, reading
/// only its metadata.
fn stored_meta(store: &Store, res: &Resource, ns: &str, name: &str) -> Option<(String, bool)> {
    #[derive(serde::Deserialize)]
    struct Meta {
        #[serde(default)]
        uid: String,
        #[serde(default, rename = "deletionTimestamp")]
        deletion: Option<Value>,
    }
    #[derive(serde::Deserialize)]
    struct Obj {
        metadata: Meta,
    }
    let entry = store.entry(res, ns, name).ok().flatten()?;
    let obj: Obj = serde_json::from_slice(&entry.json).ok()?;
    Some((
        obj.metadata.uid,
        obj.metadata.deletion.is_some_and(|d| !d.is_null()),
    ))
}

impl Tokens {
    /// The key in `path`, made when missing.
    pub fn open(path: &Path) -> Result<Self, TokenError> {
        Ok(Self::with_signer(Signer::load_or_create(path)?))
    }

    pub fn with_signer(signer: Signer) -> Self {
        Self {
            signer,
            audiences: vec![ISSUER.to_owned()],
            cache: Mutex::new(HashMap::new()),
        }
    }

    pub fn signer(&self) -> &Signer {
        &self.signer
    }

    /// The API's audiences (the issuer).
    pub fn api_audiences(&self) -> &[String] {
        &self.audiences
    }

    /// The OpenID discovery document (`/.well-known/openid-configuration`).
    pub fn openid_configuration(&self) -> Value {
        serde_json::json!({
            "issuer": ISSUER,
            "jwks_uri": format!("{ISSUER}/openid/v1/jwks"),
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": [token::ALGORITHM],
        })
    }

    /// The claims of `token` if it is this apiserver's, for one of
    /// `audiences`, and in date; a verified signature is remembered for
    /// [`CACHE_TTL`].
    fn verified(&self, token: &str, audiences: &[String], now: i64) -> Result<Claims, Invalid> {
        let key: [u8; 32] = {
            let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
            let mut k = [0u8; 32];
            k.copy_from_slice(d.as_ref());
            k
        };
        let at = Instant::now();
        let hit = {
            let cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
            cache
                .get(&key)
                .filter(|c| c.until > at)
                .map(|c| c.claims.clone())
        };
        let claims = match hit {
            Some(c) => c,
            None => {
                // The audience is checked below, on every use.
                let claims = self.signer.verify_any_audience(token, ISSUER, now)?;
                let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
                if cache.len() >= CACHE_ENTRIES {
                    cache.retain(|_, c| c.until > at);
                    if cache.len() >= CACHE_ENTRIES {
                        cache.clear();
                    }
                }
                cache.insert(
                    key,
                    Cached {
                        until: at + CACHE_TTL,
                        claims: claims.clone(),
                    },
                );
                claims
            }
        };
        token::check_times(&claims, now)?;
        if !claims.aud.iter().any(|a| audiences.contains(a)) {
            return Err(TokenError::Audience(claims.aud).into());
        }
        Ok(claims)
    }

    /// Authenticates `token` for `audiences` (the API's when empty)
    /// against the objects in `store`.
    pub fn authenticate(
        &self,
        store: &Store,
        token: &str,
        audiences: &[String],
    ) -> Result<Identity, Invalid> {
        let audiences = if audiences.is_empty() {
            &self.audiences[..]
        } else {
            audiences
        };
        let claims = self.verified(token, audiences, unix_now())?;
        let k = &claims.kubernetes;
        let ns = k.namespace.as_str();
        let sa = &k.serviceaccount;
        match stored_meta(store, &SERVICEACCOUNTS, ns, &sa.name) {
            Some((uid, deleting)) if uid == sa.uid && !deleting => {}
            Some((uid, _)) if uid != sa.uid => {
                return Err(Invalid::Revoked(format!(
                    "service account UID ({}) does not match claim ({})",
                    uid, sa.uid
                )));
            }
            Some(_) => {
                return Err(Invalid::Revoked(format!(
                    "service account {ns}/{} has been deleted",
                    sa.name
                )));
            }
            None => {
                return Err(Invalid::Revoked(format!(
                    "service account {ns}/{} has been deleted",
                    sa.name
                )));
            }
        }
        let bound = |res: &Resource, r: &token::ObjectRef, what: &str, ns: &str| match stored_meta(
            store, res, ns, &r.name,
        ) {
            Some((uid, _)) if uid == r.uid => Ok(()),
            Some((uid, _)) => Err(Invalid::Revoked(format!(
                "{what} UID ({uid}) does not match claim ({})",
                r.uid
            ))),
            None => Err(Invalid::Revoked(format!(
                "{what} {}{} has been deleted",
                if ns.is_empty() {
                    String::new()
                } else {
                    format!("{ns}/")
                },
                r.name
            ))),
        };
        if let Some(p) = &k.pod {
            bound(&PODS, p, "pod", ns)?;
        }
        if let Some(s) = &k.secret {
            bound(&SECRETS, s, "secret", ns)?;
        }
        let mut extra = BTreeMap::new();
        if let Some(p) = &k.pod {
            extra.insert(EXTRA_POD_NAME.to_owned(), vec![p.name.clone()]);
            extra.insert(EXTRA_POD_UID.to_owned(), vec![p.uid.clone()]);
        }
        if let Some(n) = &k.node {
            // A pod-bound token outlives neither its pod nor the pod's
            // node; a node-only binding is checked the same way.
            if k.pod.is_none() {
                bound(&NODES, n, "node", "")?;
            }
            extra.insert(EXTRA_NODE_NAME.to_owned(), vec![n.name.clone()]);
            extra.insert(EXTRA_NODE_UID.to_owned(), vec![n.uid.clone()]);
        }
        extra.insert(
            EXTRA_CREDENTIAL_ID.to_owned(),
            vec![format!("JTI={}", claims.jti)],
        );
        let audiences = claims
            .aud
            .iter()
            .filter(|a| audiences.contains(a))
            .cloned()
            .collect();
        Ok(Identity {
            user: User {
                name: token::username(ns, &sa.name),
                groups: vec![
                    ALL_GROUP.to_owned(),
                    format!("{ALL_GROUP}:{ns}"),
                    crate::rbac::AUTHENTICATED_GROUP.to_owned(),
                ],
            },
            uid: sa.uid.clone(),
            extra,
            audiences,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{Registry, WriteOptions};
    use serde_json::json;
    use token::ObjectRef;

    fn setup() -> (tempfile::TempDir, Tokens, Registry) {
        let dir = tempfile::tempdir().expect("tmp");
        let tokens = Tokens::open(&dir.path().join("sa.key")).expect("key");
        let reg = Registry::in_memory().expect("registry");
        (dir, tokens, reg)
    }

    fn create(reg: &Registry, res: &'static Resource, ns: &str, v: Value) -> String {
        let e = reg
            .create(res, ns, v, &WriteOptions::default())
            .expect("create");
        crate::object::uid(&e.value().expect("json")).to_string()
    }

    #[test]
    fn only_jwt_shapes_are_tried() {
        assert!(looks_like_jwt("eyJhbGciOiJFUzI1NiJ9.eyJ4IjoxfQ.c2ln"));
        for not in ["abc", "eyJ.a", "eyJ.a.b.c", "eyJ a.b.c", "xyz.a.b"] {
            assert!(!looks_like_jwt(not), "{not}");
        }
    }

    #[test]
    fn a_token_names_its_account_and_dies_with_it_and_its_pod() {
        let (_d, tokens, reg) = setup();
        let sa_uid = create(
            &reg,
            &SERVICEACCOUNTS,
            "default",
            json!({"metadata": {"name": "robot"}}),
        );
        let pod_uid = create(
            &reg,
            &PODS,
            "default",
            json!({"metadata": {"name": "p"}, "spec": {"serviceAccountName": "robot", "containers": [{"name": "c", "image": "x"}]}}),
        );
        let now = unix_now();
        let sa = ObjectRef {
            name: "robot".into(),
            uid: sa_uid.clone(),
        };
        let plain = Claims::new("default", sa.clone(), vec![ISSUER.into()], now, 3600);
        let mut bound = plain.clone();
        bound.jti = "other".into();
        bound.kubernetes.pod = Some(ObjectRef {
            name: "p".into(),
            uid: pod_uid,
        });
        let t_plain = tokens.signer().sign(&plain).expect("sign");
        let t_bound = tokens.signer().sign(&bound).expect("sign");
        let id = tokens
            .authenticate(&reg.store, &t_bound, &[])
            .expect("valid");
        assert_eq!(id.user.name, "system:serviceaccount:default:robot");
        assert_eq!(
            id.user.groups,
            [
                "system:serviceaccounts",
                "system:serviceaccounts:default",
                "system:authenticated"
            ]
        );
        assert_eq!(id.uid, sa_uid);
        assert_eq!(id.extra[EXTRA_POD_NAME], ["p"]);
        // Another audience: refused even though the signature is cached.
        let vault = vec!["vault".to_owned()];
        assert!(matches!(
            tokens.authenticate(&reg.store, &t_bound, &vault),
            Err(Invalid::Token(TokenError::Audience(_)))
        ));
        // The pod goes: its token is refused at once, the other is not.
        reg.delete(&PODS, "default", "p", &Default::default())
            .expect("delete pod");
        // A pod with a grace period is only marked; force it out.
        let _ = reg.delete(
            &PODS,
            "default",
            "p",
            &crate::registry::DeleteOptions {
                grace_period_seconds: Some(0),
                ..Default::default()
            },
        );
        assert!(matches!(
            tokens.authenticate(&reg.store, &t_bound, &[]),
            Err(Invalid::Revoked(_))
        ));
        assert!(tokens.authenticate(&reg.store, &t_plain, &[]).is_ok());
        // The account goes and comes back with another uid: still refused.
        reg.delete(&SERVICEACCOUNTS, "default", "robot", &Default::default())
            .expect("delete sa");
        assert!(matches!(
            tokens.authenticate(&reg.store, &t_plain, &[]),
            Err(Invalid::Revoked(_))
        ));
        create(
            &reg,
            &SERVICEACCOUNTS,
            "default",
            json!({"metadata": {"name": "robot"}}),
        );
        assert!(matches!(
            tokens.authenticate(&reg.store, &t_plain, &[]),
            Err(Invalid::Revoked(_))
        ));
    }

    #[test]
    fn the_cache_is_bounded() {
        let (_d, tokens, reg) = setup();
        let uid = create(
            &reg,
            &SERVICEACCOUNTS,
            "default",
            json!({"metadata": {"name": "robot"}}),
        );
        let now = unix_now();
        for i in 0..(CACHE_ENTRIES + 10) {
            let mut c = Claims::new(
                "default",
                ObjectRef {
                    name: "robot".into(),
                    uid: uid.clone(),
                },
                vec![ISSUER.into()],
                now,
                3600,
            );
            c.jti = format!("j{i}");
            let t = tokens.signer().sign(&c).expect("sign");
            assert!(tokens.authenticate(&reg.store, &t, &[]).is_ok());
            let n = tokens
                .cache
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .len();
            assert!(n <= CACHE_ENTRIES, "{n}");
        }
    }
}
