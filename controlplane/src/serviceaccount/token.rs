//! ServiceAccount tokens: JSON Web Tokens (RFC 7519) signed ES256 with the
//! apiserver's P-256 key, carrying the claims kube-apiserver's bound tokens
//! carry: `iss`, `sub` (`system:serviceaccount:NS:NAME`), `aud`, `exp`,
//! `iat`, `nbf`, `jti` and the private `kubernetes.io` claim naming the
//! namespace, the ServiceAccount and the pod and node the token is bound to.
//!
//! [`Signer::verify`] judges only the token itself: its form, algorithm,
//! key id, signature, issuer, times and audience. Whether the objects it
//! names still exist (a deleted pod revokes its tokens) is the
//! authenticator's business.

use std::fs;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _,
    UnparsedPublicKey,
};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Value, json};
use thiserror::Error;

/// The issuer kubeadm configures (`--service-account-issuer`), and the
/// tokens' default audience.
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// The longest token looked at: a real one is under 2 KiB.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;
/// Clock skew forgiven on `exp`, `nbf` and `iat` (kube-apiserver's leeway).
pub const LEEWAY_SECS: i64 = 60;
/// The signing algorithm, the only one accepted.
pub const ALGORITHM: &str = "ES256";

#[derive(Debug, Error)]
pub enum TokenError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a usable P-256 private key: {detail}")]
    Key { path: PathBuf, detail: String },
    #[error("signing: {0}")]
    Signing(String),
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    #[error("token signed with {0:?}, only ES256 is accepted")]
    Algorithm(String),
    #[error("token signed by another key")]
    KeyId,
    #[error("invalid signature")]
    Signature,
    #[error("token issued by {0:?}, not by this apiserver")]
    Issuer(String),
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("token audiences {0:?} are not this apiserver's")]
    Audience(Vec<String>),
}

/// A named object a token is bound to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectRef {
    pub name: String,
    pub uid: String,
}

/// The private claim `kubernetes.io`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bound {
    pub namespace: String,
    pub serviceaccount: ObjectRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<ObjectRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<ObjectRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<ObjectRef>,
}

/// A token's claims.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    /// Always written as an array; a single string is read too (RFC 7519
    /// allows both).
    #[serde(deserialize_with = "one_or_many")]
    pub aud: Vec<String>,
    pub exp: i64,
    pub iat: i64,
    pub nbf: i64,
    pub jti: String,
    #[serde(rename = "kubernetes.io")]
    pub kubernetes: Bound,
}

fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Aud {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Aud::deserialize(d)? {
        Aud::One(a) => vec![a],
        Aud::Many(a) => a,
    })
}

/// The user name of a ServiceAccount.
pub fn username(namespace: &str, name: &str) -> String {
    format!("system:serviceaccount:{namespace}:{name}")
}

impl Claims {
    /// Claims for `serviceaccount` in `namespace`, valid from `now` for
    /// `ttl_secs`, with a fresh `jti`.
    pub fn new(
        namespace: &str,
        serviceaccount: ObjectRef,
        audiences: Vec<String>,
        now: i64,
        ttl_secs: i64,
    ) -> Self {
        Claims {
            iss: ISSUER.to_owned(),
            sub: username(namespace, &serviceaccount.name),
            aud: audiences,
            exp: now.saturating_add(ttl_secs),
            iat: now,
            nbf: now,
            jti: uuid::Uuid::new_v4().to_string(),
            kubernetes: Bound {
                namespace: namespace.to_owned(),
                serviceaccount,
                pod: None,
                secret: None,
                node: None,
            },
        }
    }
}

/// What a presented token must match besides its signature.
#[derive(Debug, Clone, Copy)]
pub struct Expect<'a> {
    pub issuer: &'a str,
    /// The token must name at least one of these.
    pub audiences: &'a [String],
    /// Seconds since the epoch.
    pub now: i64,
}

#[derive(Serialize, Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    typ: Option<String>,
}

/// The DER prefix of a P-256 SubjectPublicKeyInfo, before the 65-byte
/// uncompressed point (RFC 5480): what the key id is a hash of.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// The apiserver's token key: signs new tokens and checks presented ones.
pub struct Signer {
    pair: EcdsaKeyPair,
    /// base64url(SHA-256(SubjectPublicKeyInfo DER)), as kube-apiserver's.
    kid: String,
    rng: SystemRandom,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").field("kid", &self.kid).finish()
    }
}

impl Signer {
    /// The key in `path` (PEM, PKCS#8), generated (mode 0600, written aside
    /// and renamed) when the file is absent.
    pub fn load_or_create(path: &Path) -> Result<Self, TokenError> {
        let io = |source| TokenError::Io {
            path: path.into(),
            source,
        };
        let key_err = |detail: String| TokenError::Key {
            path: path.into(),
            detail,
        };
        if !path.exists() {
            let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
                .map_err(|e| key_err(e.to_string()))?;
            crate::data_dir::write_private(path, key.serialize_pem().as_bytes()).map_err(io)?;
            tracing::info!(path = %path.display(), "generated the ServiceAccount token key");
        }
        let pem = fs::read_to_string(path).map_err(io)?;
        let key = rcgen::KeyPair::from_pem(&pem).map_err(|e| key_err(e.to_string()))?;
        if !key.is_compatible(&rcgen::PKCS_ECDSA_P256_SHA256) {
            return Err(key_err("the key is not ECDSA P-256".into()));
        }
        Self::from_pkcs8(&key.serialize_der()).map_err(|e| key_err(e.to_string()))
    }

    /// A signer from a PKCS#8 P-256 key.
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, TokenError> {
        let rng = SystemRandom::new();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng)
            .map_err(|e| TokenError::Signing(e.to_string()))?;
        let mut spki = P256_SPKI_PREFIX.to_vec();
        spki.extend_from_slice(pair.public_key().as_ref());
        let kid = URL_SAFE_NO_PAD.encode(ring::digest::digest(&ring::digest::SHA256, &spki));
        Ok(Signer { pair, kid, rng })
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The token for `claims`.
    pub fn sign(&self, claims: &Claims) -> Result<String, TokenError> {
        let header = Header {
            alg: ALGORITHM.to_owned(),
            kid: Some(self.kid.clone()),
            typ: None,
        };
        let mut token = encode_json(&header)?;
        token.push('.');
        token.push_str(&encode_json(claims)?);
        let sig = self
            .pair
            .sign(&self.rng, token.as_bytes())
            .map_err(|e| TokenError::Signing(e.to_string()))?;
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(sig.as_ref()));
        Ok(token)
    }

    /// The claims of `token` if this key signed it and it meets `expect`.
    pub fn verify(&self, token: &str, expect: Expect<'_>) -> Result<Claims, TokenError> {
        let claims = self.verify_any_audience(token, expect.issuer, expect.now)?;
        if !claims.aud.iter().any(|a| expect.audiences.contains(a)) {
            return Err(TokenError::Audience(claims.aud));
        }
        Ok(claims)
    }

    /// The claims of `token` if this key signed it, `issuer` issued it
    /// and it is in date at `now`, whatever its audience.
    pub fn verify_any_audience(
        &self,
        token: &str,
        issuer: &str,
        now: i64,
    ) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed("longer than 16 KiB"));
        }
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(sig), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed("not three dot-separated parts"));
        };
        let decode = |part: &str| {
            URL_SAFE_NO_PAD
                .decode(part)
                .map_err(|_| TokenError::Malformed("a part is not base64url"))
        };
        let header: Header = serde_json::from_slice(&decode(header)?)
            .map_err(|_| TokenError::Malformed("the header is not a JWS header"))?;
        if header.alg != ALGORITHM {
            return Err(TokenError::Algorithm(header.alg));
        }
        if header.kid.as_deref().is_some_and(|k| k != self.kid) {
            return Err(TokenError::KeyId);
        }
        let signed_len = token.len() - sig.len() - 1;
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, self.pair.public_key().as_ref())
            .verify(&token.as_bytes()[..signed_len], &decode(sig)?)
            .map_err(|_| TokenError::Signature)?;
        let claims: Claims = serde_json::from_slice(&decode(payload)?)
            .map_err(|_| TokenError::Malformed("the claims are not a ServiceAccount token's"))?;
        if claims.iss != issuer {
            return Err(TokenError::Issuer(claims.iss));
        }
        check_times(&claims, now)?;
        Ok(claims)
    }

    /// The public key as a JSON Web Key Set (`/openid/v1/jwks`).
    pub fn jwks(&self) -> Value {
        let point = self.pair.public_key().as_ref();
        // Uncompressed point: 0x04 || x (32 bytes) || y (32 bytes).
        let (x, y) = (
            point.get(1..33).unwrap_or_default(),
            point.get(33..65).unwrap_or_default(),
        );
        json!({"keys": [{
            "use": "sig", "kty": "EC", "crv": "P-256", "alg": ALGORITHM,
            "kid": self.kid, "x": URL_SAFE_NO_PAD.encode(x), "y": URL_SAFE_NO_PAD.encode(y),
        }]})
    }
}

/// Whether `claims` are in date at `now`, with [`LEEWAY_SECS`].
pub fn check_times(claims: &Claims, now: i64) -> Result<(), TokenError> {
    if claims.exp.saturating_add(LEEWAY_SECS) < now {
        return Err(TokenError::Expired);
    }
    if claims.nbf.max(claims.iat).saturating_sub(LEEWAY_SECS) > now {
        return Err(TokenError::NotYetValid);
    }
    Ok(())
}

/// base64url of `v`'s JSON.
fn encode_json<T: Serialize>(v: &T) -> Result<String, TokenError> {
    let bytes = serde_json::to_vec(v).map_err(|e| TokenError::Signing(e.to_string()))?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> (tempfile::TempDir, Signer) {
        let dir = tempfile::tempdir().expect("tmp");
        let s = Signer::load_or_create(&dir.path().join("sa.key")).expect("key");
        (dir, s)
    }

    fn claims(now: i64) -> Claims {
        Claims::new(
            "ns",
            ObjectRef {
                name: "sa".into(),
                uid: "u1".into(),
            },
            vec![ISSUER.into()],
            now,
            3600,
        )
    }

    fn expect(now: i64, aud: &[String]) -> Expect<'_> {
        Expect {
            issuer: ISSUER,
            audiences: aud,
            now,
        }
    }

    #[test]
    fn a_signed_token_verifies_and_round_trips_its_claims() {
        let (_d, s) = signer();
        let mut c = claims(1000);
        c.kubernetes.pod = Some(ObjectRef {
            name: "p".into(),
            uid: "pu".into(),
        });
        let t = s.sign(&c).expect("sign");
        let aud = vec![ISSUER.to_owned()];
        assert_eq!(s.verify(&t, expect(1500, &aud)).expect("verify"), c);
        assert_eq!(c.sub, "system:serviceaccount:ns:sa");
    }

    #[test]
    fn the_key_persists_and_another_key_is_refused() {
        let (d, s) = signer();
        let again = Signer::load_or_create(&d.path().join("sa.key")).expect("reload");
        assert_eq!(again.kid(), s.kid());
        let t = s.sign(&claims(0)).expect("sign");
        let aud = vec![ISSUER.to_owned()];
        assert!(again.verify(&t, expect(10, &aud)).is_ok());
        let (_d2, other) = signer();
        assert!(matches!(
            other.verify(&t, expect(10, &aud)),
            Err(TokenError::KeyId)
        ));
        use std::os::unix::fs::PermissionsExt as _;
        let mode = fs::metadata(d.path().join("sa.key"))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn tampering_times_audience_and_algorithm_are_refused() {
        let (_d, s) = signer();
        let aud = vec![ISSUER.to_owned()];
        let t = s.sign(&claims(1000)).expect("sign");
        // A changed payload breaks the signature.
        let parts: Vec<&str> = t.split('.').collect();
        let mut forged = claims(1000);
        forged.sub = "system:serviceaccount:kube-system:admin".into();
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).expect("json"));
        let t2 = format!("{}.{payload}.{}", parts[0], parts[2]);
        assert!(matches!(
            s.verify(&t2, expect(1000, &aud)),
            Err(TokenError::Signature)
        ));
        // alg none, with or without a signature.
        let none = URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#);
        for t3 in [
            format!("{none}.{}.", parts[1]),
            format!("{none}.{}.{}", parts[1], parts[2]),
        ] {
            assert!(matches!(
                s.verify(&t3, expect(1000, &aud)),
                Err(TokenError::Algorithm(_))
            ));
        }
        // Times, with the leeway.
        assert!(
            s.verify(&t, expect(1000 + 3600 + LEEWAY_SECS, &aud))
                .is_ok()
        );
        assert!(matches!(
            s.verify(&t, expect(1000 + 3600 + LEEWAY_SECS + 1, &aud)),
            Err(TokenError::Expired)
        ));
        assert!(matches!(
            s.verify(&t, expect(1000 - LEEWAY_SECS - 1, &aud)),
            Err(TokenError::NotYetValid)
        ));
        // Audience and issuer.
        let other = vec!["vault".to_owned()];
        assert!(matches!(
            s.verify(&t, expect(1000, &other)),
            Err(TokenError::Audience(_))
        ));
        let e = Expect {
            issuer: "https://elsewhere",
            audiences: &aud,
            now: 1000,
        };
        assert!(matches!(s.verify(&t, e), Err(TokenError::Issuer(_))));
        // Garbage of every shape, and an oversized token.
        for bad in [
            "",
            "a",
            "a.b",
            "a.b.c.d",
            "!!.??.##",
            &"a".repeat(MAX_TOKEN_LEN + 1),
        ] {
            assert!(
                matches!(
                    s.verify(bad, expect(1000, &aud)),
                    Err(TokenError::Malformed(_))
                ),
                "{bad:.20}"
            );
        }
    }

    #[test]
    fn a_single_string_audience_is_read() {
        let v = json!({"iss": ISSUER, "sub": "s", "aud": "a", "exp": 1, "iat": 0, "nbf": 0, "jti": "j",
            "kubernetes.io": {"namespace": "n", "serviceaccount": {"name": "sa", "uid": "u"}}});
        let c: Claims = serde_json::from_value(v).expect("claims");
        assert_eq!(c.aud, ["a"]);
    }

    #[test]
    fn jwks_names_the_key() {
        let (_d, s) = signer();
        let j = s.jwks();
        assert_eq!(j["keys"][0]["kid"], s.kid());
        assert_eq!(
            URL_SAFE_NO_PAD
                .decode(j["keys"][0]["x"].as_str().expect("x"))
                .expect("b64")
                .len(),
            32
        );
        assert_eq!(
            URL_SAFE_NO_PAD
                .decode(j["keys"][0]["y"].as_str().expect("y"))
                .expect("b64")
                .len(),
            32
        );
    }
}
