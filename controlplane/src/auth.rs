//! Bearer-token authentication against a static token file in the data dir
//! (`token,user,uid,groups` per line, as kube-apiserver's --token-auth-file),
//! and the kubeconfigs that carry those tokens.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
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
    #[error("{path}:{line}: expected token,user,uid[,groups]")]
    Malformed { path: PathBuf, line: usize },
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

fn new_token() -> String {
    let mut raw = [0u8; 32];
    rand::rng().fill_bytes(&mut raw);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

fn parse(path: &Path, text: &str) -> Result<HashMap<String, User>, AuthError> {
    let mut tokens = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.splitn(4, ',');
        let (Some(token), Some(user), Some(_uid)) = (fields.next(), fields.next(), fields.next())
        else {
            return Err(AuthError::Malformed {
                path: path.into(),
                line: i + 1,
            });
        };
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
    Ok(tokens)
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
        let tokens = parse(&self.path, &text)?;
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

    fn add(&self, user: &str, groups: &[&str]) -> Result<String, AuthError> {
        let token = new_token();
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&self.path)
            .map_err(io_err(&self.path))?;
        let uid = uuid::Uuid::new_v4();
        writeln!(f, "{token},{user},{uid},\"{}\"", groups.join(",")).map_err(io_err(&self.path))?;
        f.sync_all().map_err(io_err(&self.path))?;
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
    // Written aside and renamed into place: a client reading the file while
    // a restarted server rewrites it sees the old or the new one, never half.
    let staged = path.with_extension("kubeconfig-tmp");
    let mut f = fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&staged)
        .map_err(io_err(&staged))?;
    f.write_all(text.as_bytes()).map_err(io_err(&staged))?;
    fs::rename(&staged, path).map_err(io_err(path))
}
