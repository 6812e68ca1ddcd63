//! Bearer-token authentication against a static token file in the data dir
//! (`token,user,uid,groups` per line, as kube-apiserver's --token-auth-file),
//! and the kubeconfigs that carry those tokens.
//!
//! The file is only ever replaced whole (written aside, synced, renamed,
//! under a lock file), user names are checked before they are written, and
//! a line that cannot be read is skipped with an error naming it: one bad
//! line never stops the server.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::SystemTime;

use base64::Engine;
use rand::RngCore;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum AuthError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("user name {user:?} {reason}")]
    InvalidUser { user: String, reason: &'static str },
}

/// Longest user name accepted (`system:serviceaccount:NS:NAME` fits).
pub const MAX_USER_NAME: usize = 512;

/// Checks that `user` can be written as one field of the token file: not
/// empty, bounded, no comma, quote or control character (a newline would
/// start a line of the caller's choosing), no surrounding blanks.
pub fn validate_user_name(user: &str) -> Result<(), AuthError> {
    let reason = if user.is_empty() {
        Some("is empty")
    } else if user.len() > MAX_USER_NAME {
        Some("is longer than 512 bytes")
    } else if user.contains(',') {
        Some("contains a comma, which separates the fields of the token file")
    } else if user.contains('"') {
        Some("contains a double quote")
    } else if user.chars().any(char::is_control) {
        Some("contains a control character such as a newline")
    } else if user.trim() != user {
        Some("starts or ends with a blank")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(AuthError::InvalidUser {
            user: user.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

/// The token of an `Authorization` header value: the `Bearer` scheme,
/// matched case-insensitively (RFC 7235, as kube-apiserver).
pub fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Who a request comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
}

#[derive(Debug, Default)]
struct Loaded {
    tokens: HashMap<String, User>,
    modified: Option<SystemTime>,
}

/// The token file, re-read when it changes so tokens added while the server
/// runs (a new node) work at once.
#[derive(Debug)]
pub struct TokenAuth {
    path: PathBuf,
    loaded: RwLock<Loaded>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> AuthError + '_ {
    move |source| AuthError::Io {
        path: path.into(),
        source,
    }
}

/// A new random token (32 bytes, URL-safe base64).
pub fn new_token() -> String {
    let mut raw = [0u8; 32];
    rand::rng().fill_bytes(&mut raw);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

/// The tokens of the file; a line that cannot be read is skipped with an
/// error naming the file and the line.
fn parse(path: &Path, text: &str) -> HashMap<String, User> {
    let mut tokens = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.splitn(4, ',');
        let (Some(token), Some(user), Some(_uid)) = (fields.next(), fields.next(), fields.next())
        else {
            tracing::error!(
                file = %path.display(),
                line = i + 1,
                "skipping a line of the token file: expected token,user,uid[,groups]"
            );
            continue;
        };
        if token.is_empty() || validate_user_name(user).is_err() {
            tracing::error!(
                file = %path.display(),
                line = i + 1,
                "skipping a line of the token file: empty token or invalid user name"
            );
            continue;
        }
        let groups = fields
            .next()
            .map(|g| {
                g.trim_matches('"')
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default();
        tokens.insert(
            token.to_string(),
            User {
                name: user.to_string(),
                groups,
            },
        );
    }
    tokens
}

impl TokenAuth {
    /// Opens the token file in `data_dir`, creating it with an admin token
    /// the first time.
    pub fn open(data_dir: &Path) -> Result<Self, AuthError> {
        let path = data_dir.join("tokens.csv");
        let auth = Self {
            path,
            loaded: RwLock::new(Loaded::default()),
        };
        if !auth.path.exists() {
            auth.add("admin", &["system:masters"])?;
        }
        auth.reload()?;
        Ok(auth)
    }

    fn reload(&self) -> Result<(), AuthError> {
        let modified = fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .map_err(io_err(&self.path))?;
        let text = fs::read_to_string(&self.path).map_err(io_err(&self.path))?;
        let tokens = parse(&self.path, &text);
        if let Ok(mut l) = self.loaded.write() {
            *l = Loaded {
                tokens,
                modified: Some(modified),
            };
        }
        Ok(())
    }

    /// The token of `user`, added to the file when missing.
    pub fn token_for(&self, user: &str, groups: &[&str]) -> Result<String, AuthError> {
        validate_user_name(user)?;
        self.reload()?;
        if let Ok(l) = self.loaded.read()
            && let Some((t, _)) = l.tokens.iter().find(|(_, u)| u.name == user)
        {
            return Ok(t.clone());
        }
        let token = self.add(user, groups)?;
        self.reload()?;
        Ok(token)
    }

    /// Adds a token for `user`: the file is rewritten aside (0600),
    /// synced and renamed into place under a lock, so a reader sees the old
    /// or the new file and two writers never lose each other's line.
    fn add(&self, user: &str, groups: &[&str]) -> Result<String, AuthError> {
        validate_user_name(user)?;
        let lock_path = self.path.with_extension("csv.lock");
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        lock.lock().map_err(io_err(&lock_path))?;
        let mut text = match fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(io_err(&self.path)(e)),
        };
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        let token = new_token();
        let uid = uuid::Uuid::new_v4();
        text.push_str(&format!("{token},{user},{uid},\"{}\"\n", groups.join(",")));
        crate::data_dir::write_private(&self.path, text.as_bytes()).map_err(io_err(&self.path))?;
        if let Some(dir) = self.path.parent()
            && let Ok(d) = fs::File::open(dir)
        {
            let _ = d.sync_all();
        }
        drop(lock);
        Ok(token)
    }

    /// The user a bearer token belongs to.
    pub fn authenticate(&self, token: &str) -> Option<User> {
        if let Some(u) = self.loaded.read().ok()?.tokens.get(token) {
            return Some(u.clone());
        }
        // Unknown token: pick up a file changed since the last read.
        let changed = fs::metadata(&self.path).and_then(|m| m.modified()).ok();
        let stale = self.loaded.read().ok()?.modified != changed;
        if stale && self.reload().is_ok() {
            return self.loaded.read().ok()?.tokens.get(token).cloned();
        }
        None
    }
}

/// Writes a kubeconfig for `user` with `token`, trusting the CA in `ca_pem`.
pub fn write_kubeconfig(
    path: &Path,
    server: &str,
    ca_pem: &str,
    user: &str,
    token: &str,
) -> Result<(), AuthError> {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let text = format!(
        "apiVersion: v1
kind: Config
clusters:
- name: ferry
  cluster:
    server: {server}
    certificate-authority-data: {ca}
users:
- name: {user}
  user:
    token: {token}
contexts:
- name: {user}@ferry
  context:
    cluster: ferry
    user: {user}
    namespace: default
current-context: {user}@ferry
"
    );
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    // A client reading the file while a restarted server rewrites it sees
    // the old or the new one, never half.
    crate::data_dir::write_private(path, text.as_bytes()).map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_names_that_would_break_the_file_are_refused() {
        for bad in [
            "",
            "n1,uid\nTOKEN,system:node:n2",
            "a,b",
            "a\"b",
            "a\rb",
            "a\tb",
            " admin",
            &"x".repeat(MAX_USER_NAME + 1),
        ] {
            assert!(validate_user_name(bad).is_err(), "{bad:?} accepted");
        }
        for good in [
            "admin",
            "system:node:node-1",
            "system:serviceaccount:ns:sa",
            "jane doe",
        ] {
            assert!(validate_user_name(good).is_ok(), "{good:?} refused");
        }
    }

    #[test]
    fn a_bad_line_is_skipped_and_the_rest_kept() {
        let text = "t1,admin,u1,\"system:masters\"\ngarbage\n\n# comment\n,nobody,u3\nt2,system:node:n1,u2,\"system:nodes\"\n";
        let tokens = parse(Path::new("tokens.csv"), text);
        assert_eq!(tokens.len(), 2);
        assert_eq!(tokens["t1"].groups, ["system:masters"]);
        assert_eq!(tokens["t2"].name, "system:node:n1");
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer abc"), Some("abc"));
        assert_eq!(bearer_token("BEARER  abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer "), None);
        assert_eq!(bearer_token("Bearerabc"), None);
    }

    #[test]
    fn tokens_are_added_atomically_and_privately() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let auth = TokenAuth::open(dir.path()).expect("open");
        let node = auth
            .token_for("system:node:n1", &["system:nodes"])
            .expect("add");
        assert_eq!(
            auth.authenticate(&node).map(|u| u.name),
            Some("system:node:n1".into())
        );
        assert!(auth.token_for("n1,uid\nT,system:node:n2", &[]).is_err());
        let text = fs::read_to_string(dir.path().join("tokens.csv")).expect("read");
        assert_eq!(text.lines().count(), 2, "{text}");
        let mode = fs::metadata(dir.path().join("tokens.csv"))
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!dir.path().join("tokens.csv.tmp").exists());
    }
}
