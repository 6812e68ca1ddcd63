//! The tokens of a pod's `serviceAccountToken` projections, as the
//! kubelet's token manager keeps them: each asked of the apiserver's
//! TokenRequest API with the node's credential (audience from the source
//! or the API's default, the source's `expirationSeconds`, bound to the
//! pod by name and uid), held by the pod's worker, and asked again when
//! 80 % of its lifetime has passed or it is older than 24 hours
//! ([`requires_refresh`]). A refresh that fails keeps the token while it
//! is still valid and is tried again with back-off ([`RETRY_FIRST`]
//! doubling to [`RETRY_MAX`]). A token is never logged.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::Api;
use kube::api::PostParams;

/// `expirationSeconds` when the source names none (the API's default).
pub const DEFAULT_EXPIRATION_SECS: i64 = 3600;
/// The oldest a token gets before it is renewed, whatever its lifetime.
pub const MAX_AGE_SECS: i64 = 24 * 3600;
/// The first pause after a failed request, doubled after each failure.
pub const RETRY_FIRST: Duration = Duration::from_secs(1);
/// The longest pause between tries.
pub const RETRY_MAX: Duration = Duration::from_secs(64);
/// Longest token accepted from the apiserver.
const MAX_TOKEN_LEN: usize = 16 * 1024;

/// What a source asks for: the tokens of two sources asking the same are
/// one.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct TokenKey {
    /// Empty: the API's default audiences.
    pub audience: String,
    pub expiration_secs: i64,
}

impl TokenKey {
    /// The key of a projection.
    pub fn of(src: &k8s_openapi::api::core::v1::ServiceAccountTokenProjection) -> Self {
        Self {
            audience: src.audience.clone().unwrap_or_default(),
            expiration_secs: src.expiration_seconds.unwrap_or(DEFAULT_EXPIRATION_SECS),
        }
    }
}

/// A token held, with what decides its renewal. Debug never shows the
/// token.
#[derive(Clone, PartialEq, Eq)]
pub struct Held {
    pub token: String,
    /// Seconds since the epoch.
    pub expires: i64,
    /// The lifetime granted (`spec.expirationSeconds` of the answer).
    pub ttl_secs: i64,
}

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Held")
            .field("token", &"<redacted>")
            .field("expires", &self.expires)
            .field("ttl_secs", &self.ttl_secs)
            .finish()
    }
}

/// The kubelet's `requiresRefresh`: true once `now` is past 80 % of the
/// token's lifetime, or the token is older than [`MAX_AGE_SECS`].
pub fn requires_refresh(held: &Held, now: i64) -> bool {
    let issued = held.expires.saturating_sub(held.ttl_secs);
    if now > issued.saturating_add(MAX_AGE_SECS) {
        return true;
    }
    now > held.expires.saturating_sub(held.ttl_secs * 20 / 100)
}

/// Why a token could not be had.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("requesting a token for service account {account:?}: {source}")]
    Request {
        account: String,
        source: kube::Error,
    },
    #[error("the apiserver's TokenRequest answer for {0:?} holds no usable token")]
    Answer(String),
    #[error("requesting a token for service account {0:?} timed out")]
    Timeout(String),
    #[error("no token for service account {0:?} yet (retrying)")]
    Waiting(String),
}

#[derive(Debug, Default)]
struct Slot {
    held: Option<Held>,
    /// When the next try may be, and the pause after it, after failures.
    retry: Option<(tokio::time::Instant, Duration)>,
}

/// The tokens one pod's worker holds.
#[derive(Debug, Default)]
pub struct PodTokens {
    slots: BTreeMap<TokenKey, Slot>,
}

/// The keys of the pod's token projections.
pub fn wanted(pod: &Pod) -> Vec<TokenKey> {
    let mut keys: Vec<TokenKey> = pod
        .spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .filter_map(|v| v.projected.as_ref())
        .flat_map(|p| p.sources.iter().flatten())
        .filter_map(|s| s.service_account_token.as_ref())
        .map(TokenKey::of)
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

/// Asks the apiserver for a token for `pod` as `key` says.
async fn request(client: &kube::Client, pod: &Pod, key: &TokenKey) -> Result<Held, TokenError> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let account = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "default".into());
    let tr = TokenRequest {
        spec: TokenRequestSpec {
            audiences: if key.audience.is_empty() {
                Vec::new()
            } else {
                vec![key.audience.clone()]
            },
            expiration_seconds: Some(key.expiration_secs),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
            }),
        },
        ..Default::default()
    };
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
    let answer = tokio::time::timeout(
        Duration::from_secs(10),
        api.create_token_request(&account, &PostParams::default(), &tr),
    )
    .await
    .map_err(|_| TokenError::Timeout(account.clone()))?
    .map_err(|source| TokenError::Request {
        account: account.clone(),
        source,
    })?;
    let status = answer
        .status
        .ok_or_else(|| TokenError::Answer(account.clone()))?;
    if status.token.is_empty()
        || status.token.len() > MAX_TOKEN_LEN
        || status.token.contains(['\n', '\r'])
    {
        return Err(TokenError::Answer(account));
    }
    Ok(Held {
        token: status.token,
        expires: status.expiration_timestamp.0.as_second(),
        ttl_secs: answer
            .spec
            .expiration_seconds
            .unwrap_or(key.expiration_secs),
    })
}

impl PodTokens {
    /// Brings the pod's tokens up to date at `now` (seconds since the
    /// epoch) and returns them by key; an error when a token is needed and
    /// none valid is held.
    pub async fn refresh(
        &mut self,
        client: &kube::Client,
        pod: &Pod,
        now: i64,
    ) -> Result<BTreeMap<TokenKey, String>, TokenError> {
        let keys = wanted(pod);
        self.slots.retain(|k, _| keys.contains(k));
        for key in &keys {
            let slot = self.slots.entry(key.clone()).or_default();
            let due = slot.held.as_ref().is_none_or(|h| requires_refresh(h, now));
            let waiting = slot
                .retry
                .is_some_and(|(at, _)| tokio::time::Instant::now() < at);
            if !due || waiting {
                continue;
            }
            match request(client, pod, key).await {
                Ok(h) => {
                    slot.held = Some(h);
                    slot.retry = None;
                }
                Err(e) => {
                    let pause = slot
                        .retry
                        .map_or(RETRY_FIRST, |(_, d)| (d * 2).min(RETRY_MAX));
                    slot.retry = Some((tokio::time::Instant::now() + pause, pause));
                    let valid = slot.held.as_ref().is_some_and(|h| h.expires > now);
                    if !valid {
                        return Err(e);
                    }
                    tracing::warn!(
                        pod = ?pod.metadata.name,
                        error = %e,
                        retry_in_ms = pause.as_millis() as u64,
                        "refreshing a service account token failed; keeping the current one"
                    );
                }
            }
        }
        let mut out = BTreeMap::new();
        for key in keys {
            match self.slots.get(&key).and_then(|s| s.held.as_ref()) {
                Some(h) if h.expires > now => {
                    out.insert(key, h.token.clone());
                }
                _ => return Err(TokenError::Waiting(key.audience)),
            }
        }
        Ok(out)
    }

    /// The token held for `key` (tests, diagnostics).
    pub fn held(&self, key: &TokenKey) -> Option<&Held> {
        self.slots.get(key).and_then(|s| s.held.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pod with one projected token (the API's audience, an hour) and
    /// the key it is held under.
    fn token_pod() -> (Pod, TokenKey) {
        let pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "d", "uid": "u"},
            "spec": {"containers": [], "volumes": [{"name": "t", "projected": {"sources": [
                {"serviceAccountToken": {"path": "token"}}]}}]}
        }))
        .expect("pod");
        let key = TokenKey {
            audience: String::new(),
            expiration_secs: 3600,
        };
        (pod, key)
    }

    fn held(expires: i64, ttl: i64) -> Held {
        Held {
            token: "secret-token".into(),
            expires,
            ttl_secs: ttl,
        }
    }

    #[test]
    fn a_token_is_renewed_at_80_percent_of_its_life_or_after_a_day() {
        // Issued at 1000 for an hour: renewed after 1000 + 2880.
        let h = held(1000 + 3600, 3600);
        assert!(!requires_refresh(&h, 1000));
        assert!(!requires_refresh(&h, 1000 + 2880));
        assert!(requires_refresh(&h, 1000 + 2881));
        assert!(requires_refresh(&h, 1000 + 4000));
        // A week-long token: renewed after a day, well before 80 %.
        let week = 7 * 24 * 3600;
        let h = held(1000 + week, week);
        assert!(!requires_refresh(&h, 1000 + MAX_AGE_SECS));
        assert!(requires_refresh(&h, 1000 + MAX_AGE_SECS + 1));
    }

    #[tokio::test]
    async fn a_failed_refresh_keeps_a_valid_token_and_backs_off() {
        // Nothing listens on port 1: every request fails at once.
        let cfg = kube::Config::new("http://127.0.0.1:1".parse().expect("url"));
        let client = kube::Client::try_from(cfg).expect("client");
        let (pod, key) = token_pod();
        let mut tokens = PodTokens::default();
        // Nothing held and the request fails: the volume cannot be made.
        assert!(tokens.refresh(&client, &pod, 2000).await.is_err());
        // Issued at 2000 for an hour, due for renewal at 5000: the
        // renewal fails, the token stays, the next try waits.
        tokens.slots.insert(
            key.clone(),
            Slot {
                held: Some(held(2000 + 3600, 3600)),
                retry: None,
            },
        );
        let got = tokens.refresh(&client, &pod, 5000).await.expect("kept");
        assert_eq!(got[&key], "secret-token");
        let first = tokens.slots[&key].retry.expect("backing off").1;
        assert_eq!(first, RETRY_FIRST);
        // While waiting, no request (and no new pause).
        tokens.refresh(&client, &pod, 5001).await.expect("kept");
        assert_eq!(tokens.slots[&key].retry.expect("still").1, RETRY_FIRST);
        // Once expired, nothing is served.
        if let Some(s) = tokens.slots.get_mut(&key) {
            s.retry = s.retry.map(|(_, d)| (tokio::time::Instant::now(), d));
        }
        assert!(tokens.refresh(&client, &pod, 2000 + 3601).await.is_err());
        assert_eq!(
            tokens.slots[&key].retry.expect("doubled").1,
            RETRY_FIRST * 2
        );
    }

    /// An apiserver stand-in answering every TokenRequest with token
    /// `tok-N` (N counts requests) issued at `issued` for an hour.
    async fn token_server(issued: i64) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::atomic::Ordering;
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let served = count.clone();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let mut req = Vec::new();
                let mut buf = [0u8; 4096];
                // The head, then the body its Content-Length announces.
                while let Ok(n) = conn.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    req.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&req).to_string();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let len = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if body.len() >= len {
                            break;
                        }
                    }
                }
                let n = served.fetch_add(1, Ordering::SeqCst) + 1;
                let exp = jiff::Timestamp::from_second(issued + 3600).expect("time");
                let body = serde_json::json!({
                    "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                    "spec": {"audiences": [], "expirationSeconds": 3600},
                    "status": {"token": format!("tok-{n}"), "expirationTimestamp": crate::time::at(exp)},
                })
                .to_string();
                let resp = format!(
                    "HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(resp.as_bytes()).await;
            }
        });
        (url, count)
    }

    #[tokio::test]
    async fn a_token_is_requested_once_and_renewed_when_due() {
        use std::sync::atomic::Ordering;
        let (url, count) = token_server(1000).await;
        let client =
            kube::Client::try_from(kube::Config::new(url.parse().expect("url"))).expect("client");
        let (pod, key) = token_pod();
        let mut tokens = PodTokens::default();
        let got = tokens.refresh(&client, &pod, 1000).await.expect("token");
        assert_eq!(got[&key], "tok-1");
        assert_eq!(tokens.held(&key).map(|h| h.expires), Some(4600));
        // Before 80 % of the hour: the same token, no request.
        let got = tokens
            .refresh(&client, &pod, 1000 + 2880)
            .await
            .expect("token");
        assert_eq!(got[&key], "tok-1");
        assert_eq!(count.load(Ordering::SeqCst), 1);
        // Past it: a new one.
        let got = tokens
            .refresh(&client, &pod, 1000 + 2881)
            .await
            .expect("token");
        assert_eq!(got[&key], "tok-2");
        assert_eq!(count.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn the_token_never_shows_in_debug_output() {
        let s = format!("{:?}", held(1, 1));
        assert!(!s.contains("secret-token"), "{s}");
    }

    #[test]
    fn sources_asking_the_same_share_a_token() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [], "volumes": [
                {"name": "a", "projected": {"sources": [
                    {"serviceAccountToken": {"path": "t1"}},
                    {"serviceAccountToken": {"path": "t2", "expirationSeconds": 3600}},
                    {"serviceAccountToken": {"path": "t3", "audience": "vault", "expirationSeconds": 600}},
                ]}},
            ]}
        }))
        .expect("pod");
        assert_eq!(
            wanted(&pod),
            [
                TokenKey {
                    audience: String::new(),
                    expiration_secs: 3600
                },
                TokenKey {
                    audience: "vault".into(),
                    expiration_secs: 600
                },
            ]
        );
    }
}
