//! The `CNI_*` environment: which variables each command needs, and the
//! spec's rules for container IDs and interface names.

use std::path::PathBuf;

use crate::error::{Error, Result};

/// A CNI command (`CNI_COMMAND`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Gc,
    Status,
}

impl Command {
    pub fn parse(s: &str) -> Option<Command> {
        Some(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "GC" => Command::Gc,
            "STATUS" => Command::Status,
            _ => return None,
        })
    }

    /// Commands that act on one attachment (container ID + interface).
    pub fn is_attachment(self) -> bool {
        matches!(self, Command::Add | Command::Del | Command::Check)
    }
}

/// The parsed environment of one invocation.
#[derive(Clone, Debug)]
pub struct Env {
    pub command: Command,
    pub container_id: String,
    /// `CNI_NETNS`; optional for DEL.
    pub netns: Option<PathBuf>,
    pub ifname: String,
    pub args: CniArgs,
    pub path: Vec<PathBuf>,
}

/// `CNI_ARGS`: `KEY=VALUE` pairs separated by `;`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CniArgs {
    pub pairs: Vec<(String, String)>,
}

impl CniArgs {
    pub fn parse(raw: &str) -> Result<CniArgs> {
        let mut pairs = Vec::new();
        for item in raw.split(';').filter(|s| !s.is_empty()) {
            let Some((k, v)) = item.split_once('=') else {
                return Err(Error::InvalidEnv(format!(
                    "invalid CNI_ARGS pair {item:?}: expected KEY=VALUE"
                )));
            };
            if k.is_empty() {
                return Err(Error::InvalidEnv(format!(
                    "invalid CNI_ARGS pair {item:?}: empty key"
                )));
            }
            pairs.push((k.to_string(), v.to_string()));
        }
        Ok(CniArgs { pairs })
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn pod_namespace(&self) -> Option<&str> {
        self.get("K8S_POD_NAMESPACE")
    }

    pub fn pod_name(&self) -> Option<&str> {
        self.get("K8S_POD_NAME")
    }
}

impl Env {
    /// Reads and validates the environment through `get` (which returns
    /// `None` for unset variables). Errors are code 4 and name the variables.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Env> {
        let read = |name: &str| get(name).filter(|v| !v.is_empty());
        let Some(raw_cmd) = read("CNI_COMMAND") else {
            return Err(Error::InvalidEnv(
                "required env variables [CNI_COMMAND] missing".into(),
            ));
        };
        let Some(command) = Command::parse(&raw_cmd) else {
            return Err(Error::InvalidEnv(format!("unknown CNI_COMMAND: {raw_cmd}")));
        };
        let required: &[&str] = match command {
            Command::Add | Command::Check => {
                &["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"]
            }
            Command::Del => &["CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"],
            Command::Gc | Command::Status => &["CNI_PATH"],
            Command::Version => &[],
        };
        let missing: Vec<&str> = required
            .iter()
            .copied()
            .filter(|n| read(n).is_none())
            .collect();
        if !missing.is_empty() {
            return Err(Error::InvalidEnv(format!(
                "required env variables [{}] missing",
                missing.join(",")
            )));
        }
        let container_id = read("CNI_CONTAINERID").unwrap_or_default();
        let ifname = read("CNI_IFNAME").unwrap_or_default();
        if command.is_attachment() {
            validate_container_id(&container_id)?;
            validate_ifname(&ifname)?;
        }
        let args = CniArgs::parse(&read("CNI_ARGS").unwrap_or_default())?;
        let path = read("CNI_PATH")
            .map(|p| {
                p.split(':')
                    .filter(|s| !s.is_empty())
                    .map(PathBuf::from)
                    .collect()
            })
            .unwrap_or_default();
        Ok(Env {
            command,
            container_id,
            netns: read("CNI_NETNS").map(PathBuf::from),
            ifname,
            args,
            path,
        })
    }
}

/// The spec's name rule (container IDs and network names): an alphanumeric
/// first character, then alphanumerics, `_`, `.` or `-`.
pub fn is_valid_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphanumeric())
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// The longest container ID accepted. The spec sets no bound, but a
/// container ID names files (the cached result,
/// `<containerID>@<ifname>.json`), and a name must fit in NAME_MAX (255
/// bytes) with the longest interface name and the decoration: 255 - 15 - 6.
/// Runtimes use 64 hex digits.
pub const MAX_CONTAINER_ID_LEN: usize = 234;

/// The longest interface name Linux accepts (IFNAMSIZ - 1).
pub const MAX_IFNAME_LEN: usize = 15;

pub fn validate_container_id(id: &str) -> Result<()> {
    if id.is_empty() {
        return Err(Error::InvalidEnv(
            "required env variables [CNI_CONTAINERID] missing".into(),
        ));
    }
    if id.len() > MAX_CONTAINER_ID_LEN {
        return Err(Error::InvalidEnv(format!(
            "CNI_CONTAINERID is {} bytes long, more than the {MAX_CONTAINER_ID_LEN} allowed",
            id.len()
        )));
    }
    if !is_valid_name(id) {
        return Err(Error::InvalidEnv(format!(
            "invalid characters in CNI_CONTAINERID {id:?}"
        )));
    }
    Ok(())
}

/// Bytes the kernel's `isspace()` is true for (lib/ctype.c: the ASCII
/// whitespace and 0xA0, Latin-1's no-break space). `dev_valid_name()`
/// rejects a name containing any of them, so a UTF-8 name with 0xA0 as a
/// continuation byte (e.g. "à", C3 A0) is refused by the kernel.
fn is_kernel_space(b: u8) -> bool {
    matches!(b, b'\t' | b'\n' | 0x0b | 0x0c | b'\r' | b' ' | 0xa0)
}

/// Interface names as libcni's `ValidateInterfaceName` and the kernel's
/// `dev_valid_name()` check them: 1–15 bytes, not `.` or `..`, no `/`, `:`
/// or whitespace (Unicode whitespace as libcni, and the bytes the kernel's
/// `isspace()` matches) — and, beyond libcni, no `%`: the kernel reads a
/// name with `%` as a template (`eth%d` becomes `eth0`), so the interface
/// would not get the name asked for. Errors are code 4 naming `CNI_IFNAME`.
pub fn validate_ifname(name: &str) -> Result<()> {
    let bad = |why: &str| {
        Err(Error::InvalidEnv(format!(
            "invalid CNI_IFNAME {name:?}: {why}"
        )))
    };
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > MAX_IFNAME_LEN {
        return bad("must be less than 16 characters");
    }
    if name == "." || name == ".." {
        return bad("must not be . or ..");
    }
    if name.contains('%') {
        return bad("must not contain % (the kernel reads it as a name template)");
    }
    if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace())
        || name.bytes().any(is_kernel_space)
    {
        return bad("must not contain / or : or whitespace");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(vars: &[(&str, &str)]) -> Result<Env> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Env::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn required_per_command() {
        let e = env(&[]).err().map(|e| (e.code(), e.to_string()));
        assert_eq!(e.as_ref().map(|e| e.0), Some(4));
        assert!(e.is_some_and(|e| e.1.contains("CNI_COMMAND")));
        let e = env(&[("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "abc")])
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            e.as_deref(),
            Some("required env variables [CNI_NETNS,CNI_IFNAME,CNI_PATH] missing")
        );
        assert!(
            env(&[
                ("CNI_COMMAND", "DEL"),
                ("CNI_CONTAINERID", "a"),
                ("CNI_IFNAME", "eth0"),
                ("CNI_PATH", "/x")
            ])
            .is_ok()
        );
        assert!(env(&[("CNI_COMMAND", "VERSION")]).is_ok());
        assert!(env(&[("CNI_COMMAND", "GC"), ("CNI_PATH", "/x")]).is_ok());
        assert_eq!(
            env(&[("CNI_COMMAND", "FROB")]).err().map(|e| e.code()),
            Some(4)
        );
    }

    #[test]
    fn names() {
        assert!(is_valid_name("abc-1.2_3"));
        assert!(!is_valid_name("-abc"));
        assert!(!is_valid_name("a b"));
        assert!(!is_valid_name(""));
        assert!(validate_ifname("eth0").is_ok());
        for bad in ["", ".", "..", "a/b", "a:b", "a b", "0123456789abcdef"] {
            assert_eq!(
                validate_ifname(bad).err().map(|e| e.code()),
                Some(4),
                "{bad}"
            );
        }
        assert!(validate_ifname("0123456789abcde").is_ok());
    }

    /// `%` is a kernel name template and 0xA0 a kernel space byte: both
    /// used to pass and fail later in netlink (999 or 100).
    #[test]
    fn ifnames_the_kernel_would_refuse_or_rename() {
        for bad in ["eth%d", "%", "a%b", "\u{e0}", "net\u{a0}1", "eth\u{2003}0"] {
            let e = validate_ifname(bad).err();
            assert_eq!(e.as_ref().map(Error::code), Some(4), "{bad:?}");
            assert!(
                e.is_some_and(|e| e.to_string().contains("CNI_IFNAME")),
                "{bad:?}"
            );
        }
        // Other non-ASCII names are the kernel's to take.
        assert!(validate_ifname("n\u{e9}t0").is_ok());
        assert!(validate_ifname("net-1_a.b@c").is_ok());
        // Through the environment too.
        let e = env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_NETNS", "/run/netns/x"),
            ("CNI_IFNAME", "eth%d"),
            ("CNI_PATH", "/x"),
        ])
        .err();
        assert_eq!(e.as_ref().map(Error::code), Some(4));
        assert!(e.is_some_and(|e| e.to_string().contains("CNI_IFNAME")));
    }

    /// A container ID too long for a file name used to pass and fail after
    /// the pod was wired (cache write: ENAMETOOLONG, error 5), and DEL then
    /// failed for ever on the same name.
    #[test]
    fn container_id_length() {
        let longest = "a".repeat(MAX_CONTAINER_ID_LEN);
        assert!(validate_container_id(&longest).is_ok());
        let e = validate_container_id(&format!("{longest}b")).err();
        assert_eq!(e.as_ref().map(Error::code), Some(4));
        assert!(e.is_some_and(|e| e.to_string().contains("CNI_CONTAINERID")));
    }

    #[test]
    fn cni_args() {
        let a =
            CniArgs::parse("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;").ok();
        assert_eq!(a.as_ref().and_then(|a| a.pod_namespace()), Some("default"));
        assert_eq!(a.as_ref().and_then(|a| a.pod_name()), Some("web-0"));
        assert_eq!(CniArgs::parse("novalue").err().map(|e| e.code()), Some(4));
    }
}
