//! A pod's sandbox: its network namespace (a bind-mounted file under
//! `<state-dir>/netns/`) wired by the CNI plugins of the node's config
//! directory, called as a container runtime calls them (through the
//! testbed's [`Cni`], the project's one implementation of the runtime's
//! side of CNI), and the record of it kept under the pod's state directory
//! so that a restarted ferry-node can adopt or clean it.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use anyhow::{Context as _, bail};
use ferry_testbed::{Cni, CniCall, CniCommand};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::process::Command;

use crate::state::StateDir;

/// `CNI_IFNAME` of every pod.
pub const IFNAME: &str = "eth0";

/// Time limit of the helper commands (`unshare`, `ip`).
const CMD_TIMEOUT: Duration = Duration::from_secs(20);

/// statfs(2) magic of nsfs: what a namespace file bind mount reads as.
const NSFS_MAGIC: i64 = 0x6e73_6673;

/// A pod's sandbox, as recorded in `<pod>/_pod/sandbox.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sandbox {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    /// `CNI_CONTAINERID`.
    pub id: String,
    /// The network namespace file; `None` for a hostNetwork pod.
    pub netns: Option<PathBuf>,
    pub ifname: String,
    /// The network config ADD ran with (DEL runs with the same).
    pub netconf: Value,
    /// The ADD result (`None` while ADD has not finished).
    pub result: Option<Value>,
    pub ips: Vec<IpAddr>,
}

impl Sandbox {
    /// `CNI_ARGS` for this pod.
    pub fn cni_args(&self) -> String {
        format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={}",
            self.namespace, self.name, self.id, self.uid
        )
    }
}

/// The sandbox id (`CNI_CONTAINERID`) of the pod with `uid`: valid by the
/// CNI spec's rule (alphanumerics, `_`, `.`, `-`).
pub fn sandbox_id(uid: &str) -> String {
    let clean: String = uid
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .take(200)
        .collect();
    format!("ferry-{clean}")
}

/// The node's pod network: its CNI config directory and plugin path.
#[derive(Debug, Clone)]
pub struct Network {
    cni: Cni,
    conf_dir: PathBuf,
}

impl Network {
    pub fn new(conf_dir: PathBuf, bin_dirs: Vec<PathBuf>) -> Self {
        Network {
            cni: Cni::plugins(bin_dirs),
            conf_dir,
        }
    }

    pub fn conf_dir(&self) -> &Path {
        &self.conf_dir
    }

    /// The network config a runtime uses: the first `*.conf`, `*.conflist`
    /// or `*.json` of the config directory in lexical order, parsed.
    pub fn config(&self) -> anyhow::Result<(PathBuf, Value)> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.conf_dir)
            .with_context(|| format!("reading {}", self.conf_dir.display()))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.is_file()
                    && p.extension()
                        .is_some_and(|e| e == "conf" || e == "conflist" || e == "json")
            })
            .collect();
        files.sort();
        let Some(first) = files.into_iter().next() else {
            bail!("no CNI configuration file in {}", self.conf_dir.display());
        };
        let meta = std::fs::metadata(&first)?;
        if meta.len() > 1 << 20 {
            bail!("{} is larger than 1 MiB", first.display());
        }
        let text = std::fs::read_to_string(&first)
            .with_context(|| format!("reading {}", first.display()))?;
        let value: Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not JSON", first.display()))?;
        if !value.is_object() {
            bail!("{} is not a JSON object", first.display());
        }
        Ok((first, value))
    }

    /// Makes the pod's network namespace and runs CNI ADD for it. The
    /// record is written before ADD (so a crash in between is cleaned at
    /// the next start) and again with the result. On failure everything
    /// made is removed again (DEL, then the namespace).
    pub async fn create(
        &self,
        state: &StateDir,
        uid: &str,
        namespace: &str,
        name: &str,
    ) -> anyhow::Result<Sandbox> {
        let (_, netconf) = self.config()?;
        let id = sandbox_id(uid);
        let path = state.netns_dir().join(&id);
        let mut sandbox = Sandbox {
            uid: uid.into(),
            namespace: namespace.into(),
            name: name.into(),
            id,
            netns: Some(path.clone()),
            ifname: IFNAME.into(),
            netconf,
            result: None,
            ips: Vec::new(),
        };
        state.write_sandbox(&sandbox)?;
        let made = async {
            create_netns(&path).await?;
            let result = self.call(CniCommand::Add, &sandbox, None).await?;
            let result = result.context("CNI ADD printed no result")?;
            let ips = ferry_testbed::result_ips(&result)
                .map_err(|e| anyhow::anyhow!("CNI result: {e}"))?;
            Ok::<_, anyhow::Error>((result, ips))
        }
        .await;
        match made {
            Ok((result, ips)) => {
                sandbox.ips = ips.iter().map(|n| n.addr()).collect();
                sandbox.result = Some(result);
                state.write_sandbox(&sandbox)?;
                Ok(sandbox)
            }
            Err(e) => {
                if let Err(del) = self.destroy(state, &sandbox).await {
                    tracing::warn!(pod = %name, error = %format!("{del:#}"), "cleaning up after a failed sandbox");
                }
                Err(e)
            }
        }
    }

    /// CNI DEL (with the cached result), then the namespace and the
    /// record. Idempotent: a DEL of what is gone succeeds.
    pub async fn destroy(&self, state: &StateDir, sandbox: &Sandbox) -> anyhow::Result<()> {
        let mut first_err = None;
        if sandbox.netns.is_some()
            && let Err(e) = self
                .call(CniCommand::Del, sandbox, sandbox.result.clone())
                .await
        {
            first_err = Some(e.context("CNI DEL"));
        }
        if let Some(path) = &sandbox.netns
            && let Err(e) = remove_netns(path)
        {
            first_err.get_or_insert(e);
        }
        state.remove_sandbox(&sandbox.uid);
        first_err.map_or(Ok(()), Err)
    }

    async fn call(
        &self,
        command: CniCommand,
        sandbox: &Sandbox,
        cached: Option<Value>,
    ) -> anyhow::Result<Option<Value>> {
        let cni = self.cni.clone();
        let sandbox = sandbox.clone();
        tokio::task::spawn_blocking(move || {
            let args = sandbox.cni_args();
            let netns = sandbox.netns.clone().unwrap_or_default();
            let call = CniCall {
                container_id: &sandbox.id,
                netns: &netns,
                ifname: &sandbox.ifname,
                args: &args,
            };
            cni.call(command, None, &sandbox.netconf, &call, cached.as_ref())
                .map_err(anyhow::Error::from)
        })
        .await
        .context("CNI call task")?
    }

    /// CNI GC (for configs of version 1.1.0 and later, as libcni): the
    /// plugins release every attachment but `valid`.
    pub async fn gc(&self, valid: Vec<(String, String)>) -> anyhow::Result<()> {
        let (_, netconf) = self.config()?;
        let version = netconf
            .get("cniVersion")
            .and_then(Value::as_str)
            .unwrap_or("0.0.0");
        if !version_at_least(version, (1, 1, 0)) {
            tracing::debug!(version, "CNI config older than 1.1.0: no GC");
            return Ok(());
        }
        let cni = self.cni.clone();
        tokio::task::spawn_blocking(move || {
            let pairs: Vec<(&str, &str)> = valid
                .iter()
                .map(|(a, b)| (a.as_str(), b.as_str()))
                .collect();
            cni.gc_valid(None, &netconf, &pairs)
                .map_err(anyhow::Error::from)
        })
        .await
        .context("CNI GC task")?
    }
}

fn version_at_least(v: &str, min: (u64, u64, u64)) -> bool {
    let mut parts = v.split('.').map(|p| p.parse::<u64>().unwrap_or(0));
    let got = (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    );
    got >= min
}

/// Runs `cmd` with a time limit; a non-zero exit is an error with stderr.
pub async fn run(mut cmd: Command, timeout: Duration) -> anyhow::Result<Output> {
    let shown = format!("{:?}", cmd.as_std());
    cmd.kill_on_drop(true)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let out = tokio::time::timeout(timeout, cmd.output())
        .await
        .with_context(|| format!("{shown} took longer than {timeout:?}"))?
        .with_context(|| format!("running {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

/// Whether `path` is a namespace file (an nsfs bind mount).
// `f_type`'s integer type differs between architectures.
#[allow(clippy::useless_conversion)]
pub fn is_netns(path: &Path) -> bool {
    rustix::fs::statfs(path).is_ok_and(|s| i64::from(s.f_type) == NSFS_MAGIC)
}

/// A new network namespace bound to `path` (util-linux `unshare --net=`),
/// with `lo` up.
async fn create_netns(path: &Path) -> anyhow::Result<()> {
    if is_netns(path) {
        remove_netns(path)?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut unshare = Command::new("unshare");
    unshare.arg(format!("--net={}", path.display())).arg("true");
    run(unshare, CMD_TIMEOUT)
        .await
        .context("creating the pod's network namespace")?;
    let mut lo = Command::new("nsenter");
    lo.arg(format!("--net={}", path.display()))
        .args(["--", "ip", "link", "set", "lo", "up"]);
    run(lo, CMD_TIMEOUT).await.context("bringing lo up")?;
    Ok(())
}

/// Unmounts and deletes a namespace file; gone already is fine.
pub fn remove_netns(path: &Path) -> anyhow::Result<()> {
    if is_netns(path) {
        rustix::mount::unmount(path, rustix::mount::UnmountFlags::DETACH)
            .with_context(|| format!("unmounting {}", path.display()))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_versions() {
        assert_eq!(
            sandbox_id("6b1f0c2e-1a2b-4c3d-8e9f-0a1b2c3d4e5f"),
            "ferry-6b1f0c2e-1a2b-4c3d-8e9f-0a1b2c3d4e5f"
        );
        assert_eq!(sandbox_id("a/b c"), "ferry-abc");
        assert!(version_at_least("1.1.0", (1, 1, 0)));
        assert!(version_at_least("1.2", (1, 1, 0)));
        assert!(!version_at_least("1.0.0", (1, 1, 0)));
        assert!(!version_at_least("0.4.0", (1, 1, 0)));
    }

    #[test]
    fn picks_the_first_config_in_lexical_order() {
        let dir = std::env::temp_dir().join(format!("ferry-node-cni-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("20-b.conflist"), r#"{"name":"b","plugins":[]}"#).expect("b");
        std::fs::write(dir.join("10-a.conf"), r#"{"name":"a","type":"x"}"#).expect("a");
        std::fs::write(dir.join("00-ignored.txt"), "x").expect("txt");
        let net = Network::new(dir.clone(), vec![]);
        let (path, value) = net.config().expect("config");
        assert!(path.ends_with("10-a.conf"));
        assert_eq!(value["name"], "a");
        std::fs::remove_dir_all(&dir).expect("cleanup");
        assert!(net.config().is_err());
    }
}
