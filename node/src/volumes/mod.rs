//! A pod's volumes: what each holds on the node, and the mounts each
//! container gets.
//!
//! | Volume | On the node | In the container |
//! |---|---|---|
//! | `emptyDir` | `<state-dir>/pods/<uid>/_volumes/<name>` (0777), removed with the pod; `medium: Memory` is a plain directory too (a tmpfs would have to be mounted in the node's namespace to be shared by the pod's containers); `sizeLimit` is not enforced | read-write |
//! | `hostPath` | the path under `--host-root`, or through a `--host-path-map` ([`host_path`]) | as asked |
//! | `configMap`, `secret`, `downwardAPI`, `projected` | `<state-dir>/pods/<uid>/_volumes/<name>`, written by [`atomic_writer`] from [`sources`] (a projected `serviceAccountToken`: the token [`token`] holds), refreshed every [`REFRESH`] | read-only (as the kubelet mounts them) |
//!
//! [`validate`] refuses what cannot run (the pod is rejected); a volume
//! that cannot be set up yet (a missing ConfigMap or Secret without
//! `optional`, a hostPath type mismatch) keeps the pod's containers
//! waiting, with a `FailedMount` event, until it can.
//!
//! Mount paths: a process container sees the node's own file system, so
//! making a missing mount point there would make it on the node. Inside
//! an emptyDir mounted above it (the runtime's own directory) ferry-node
//! makes it; inside another volume it must exist (the container waits
//! with `CreateContainerConfigError`); elsewhere the container's process
//! covers the deepest existing directory above it with a tmpfs that holds
//! the same entries and makes it there ([`mount_points`]), so the node's
//! file system and mount table never change (not under `/proc`).

pub mod atomic_writer;
pub mod host_path;
pub mod mount;
pub mod mount_points;
pub mod sources;
pub mod subpath;
pub mod token;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, Volume};

use crate::env::{PodAddresses, References};
use crate::state::StateDir;
use mount::{MountSpec, PointKind, Propagation};

/// Most volumes one pod may have.
pub const MAX_VOLUMES: usize = 64;
/// How often the contents of configMap, secret, downwardAPI and projected
/// volumes are brought up to date (the kubelet's sync is about a minute).
pub const REFRESH: Duration = Duration::from_secs(10);

/// Why a pod cannot run with its volumes: it is rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Unsupported(String),
}

impl SpecError {
    /// The pod status `reason`.
    pub fn reason(&self) -> &'static str {
        match self {
            SpecError::Invalid(_) => "InvalidVolume",
            SpecError::Unsupported(_) => "UnsupportedVolume",
        }
    }
}

/// What kind of volume, as far as mounting goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    EmptyDir,
    HostPath,
    /// configMap, secret, downwardAPI, projected: written by ferry-node,
    /// mounted read-only.
    Written,
}

fn kind(v: &Volume) -> Result<Kind, SpecError> {
    let set = [
        (v.empty_dir.is_some(), Kind::EmptyDir),
        (v.host_path.is_some(), Kind::HostPath),
        (v.config_map.is_some(), Kind::Written),
        (v.secret.is_some(), Kind::Written),
        (v.downward_api.is_some(), Kind::Written),
        (v.projected.is_some(), Kind::Written),
    ];
    let mut kinds = set.iter().filter(|(on, _)| *on).map(|(_, k)| *k);
    match (kinds.next(), kinds.next()) {
        (Some(k), None) => Ok(k),
        (Some(_), Some(_)) => Err(SpecError::Invalid(format!(
            "volume {:?}: more than one volume source",
            v.name
        ))),
        (None, _) => {
            let json = serde_json::to_value(v).unwrap_or_default();
            let what = json
                .as_object()
                .and_then(|o| o.keys().find(|k| *k != "name").cloned())
                .unwrap_or_else(|| "no source".into());
            Err(SpecError::Unsupported(format!(
                "volume {:?}: {what} volumes are not supported by ferry-node",
                v.name
            )))
        }
    }
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// An absolute path without `..` or NUL.
fn clean_abs(path: &str) -> bool {
    path.starts_with('/')
        && !path.contains('\0')
        && !Path::new(path)
            .components()
            .any(|c| matches!(c, Component::ParentDir))
}

/// Checks the pod's volumes and every container's volume mounts.
pub fn validate(spec: &PodSpec) -> Result<(), SpecError> {
    let invalid = |m: String| Err(SpecError::Invalid(m));
    let volumes = spec.volumes.as_deref().unwrap_or_default();
    if volumes.len() > MAX_VOLUMES {
        return invalid(format!(
            "{} volumes: at most {MAX_VOLUMES} per pod",
            volumes.len()
        ));
    }
    let mut kinds = BTreeMap::new();
    for v in volumes {
        if !is_dns_label(&v.name) {
            return invalid(format!("volume name {:?}: must be a DNS label", v.name));
        }
        if kinds.insert(v.name.as_str(), kind(v)?).is_some() {
            return invalid(format!("volume name {:?}: used twice", v.name));
        }
        if let Some(h) = &v.host_path
            && !clean_abs(&h.path)
        {
            return invalid(format!(
                "volume {:?}: hostPath {:?} must be an absolute path without '..'",
                v.name, h.path
            ));
        }
        let mut item_paths: Vec<&str> = Vec::new();
        if let Some(cm) = &v.config_map {
            item_paths.extend(cm.items.iter().flatten().map(|i| i.path.as_str()));
        }
        if let Some(s) = &v.secret {
            if s.secret_name.as_deref().unwrap_or_default().is_empty() {
                return invalid(format!("volume {:?}: secretName is required", v.name));
            }
            item_paths.extend(s.items.iter().flatten().map(|i| i.path.as_str()));
        }
        if let Some(d) = &v.downward_api {
            item_paths.extend(d.items.iter().flatten().map(|i| i.path.as_str()));
        }
        for src in v.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
            if let Some(t) = &src.service_account_token {
                item_paths.push(t.path.as_str());
            }
            if src.cluster_trust_bundle.is_some() {
                return Err(SpecError::Unsupported(format!(
                    "volume {:?}: clusterTrustBundle projections are not supported by ferry-node",
                    v.name
                )));
            }
            if let Some(cm) = &src.config_map {
                item_paths.extend(cm.items.iter().flatten().map(|i| i.path.as_str()));
            }
            if let Some(s) = &src.secret {
                item_paths.extend(s.items.iter().flatten().map(|i| i.path.as_str()));
            }
            if let Some(d) = &src.downward_api {
                item_paths.extend(d.items.iter().flatten().map(|i| i.path.as_str()));
            }
        }
        for p in item_paths {
            if let Err(e) = atomic_writer::validate_path(p) {
                return invalid(format!("volume {:?}: {e}", v.name));
            }
        }
    }
    for c in spec
        .init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
    {
        let privileged = c
            .security_context
            .as_ref()
            .and_then(|s| s.privileged)
            .unwrap_or(false);
        let mut paths = BTreeSet::new();
        for m in c.volume_mounts.iter().flatten() {
            let at = format!("container {:?}: volumeMount {:?}", c.name, m.name);
            if !kinds.contains_key(m.name.as_str()) {
                return invalid(format!("{at}: no volume of that name"));
            }
            if !clean_abs(&m.mount_path) {
                return invalid(format!(
                    "{at}: mountPath {:?} must be an absolute path without '..'",
                    m.mount_path
                ));
            }
            if !paths.insert(Path::new(&m.mount_path).components().collect::<PathBuf>()) {
                return invalid(format!("{at}: mountPath {:?} must be unique", m.mount_path));
            }
            if m.sub_path.as_deref().is_some_and(|s| !s.is_empty())
                && m.sub_path_expr.as_deref().is_some_and(|s| !s.is_empty())
            {
                return invalid(format!("{at}: subPath and subPathExpr are exclusive"));
            }
            if let Some(sub) = m.sub_path.as_deref().filter(|s| !s.is_empty())
                && let Err(e) = subpath::validate(sub)
            {
                return invalid(format!("{at}: {e}"));
            }
            match m.mount_propagation.as_deref() {
                None | Some("None" | "HostToContainer") => {}
                Some("Bidirectional") if privileged => {}
                Some("Bidirectional") => {
                    return invalid(format!(
                        "{at}: Bidirectional mount propagation is available only to privileged containers"
                    ));
                }
                Some(other) => {
                    return invalid(format!("{at}: unsupported mountPropagation {other:?}"));
                }
            }
            if m.recursive_read_only
                .as_deref()
                .is_some_and(|r| r != "Disabled")
            {
                return Err(SpecError::Unsupported(format!(
                    "{at}: recursiveReadOnly is not supported by ferry-node"
                )));
            }
        }
    }
    Ok(())
}

/// Why a volume cannot be set up (yet): the pod waits and retries.
#[derive(Debug, thiserror::Error)]
#[error("MountVolume.SetUp failed for volume {volume:?} : {what}")]
pub struct SetUpError {
    pub volume: String,
    pub what: String,
}

/// Why a container's mounts cannot be made: it waits with
/// `CreateContainerConfigError`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MountPlanError {
    #[error(
        "failed to prepare subPath for volumeMount {volume:?} of container {container:?}: {what}"
    )]
    SubPath {
        volume: String,
        container: String,
        what: String,
    },
    #[error(
        "mount path {path:?} of volumeMount {volume:?} does not exist: ferry-node makes mount points only inside an emptyDir or hostPath volume or outside every volume (never under /proc)"
    )]
    NoMountPoint { volume: String, path: String },
    #[error("volume {0:?} is not set up")]
    NotReady(String),
}

/// A container's mounts, in order, and the directories its process
/// covers first to make the missing mount points ([`mount_points`]),
/// shallowest first.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MountPlan {
    pub mounts: Vec<MountSpec>,
    pub shadows: Vec<PathBuf>,
}

/// What the pod's volumes are on this node.
#[derive(Debug, Default)]
pub struct PodVolumes {
    /// Volume name → (kind, the path to bind-mount).
    ready: BTreeMap<String, (Kind, PathBuf)>,
}

/// What setting the volumes up needs besides the pod.
pub struct SetUpContext<'a> {
    pub state: &'a StateDir,
    pub host: &'a host_path::HostPaths,
    pub refs: &'a References,
    pub addrs: &'a PodAddresses,
}

impl PodVolumes {
    /// Whether every volume was set up once.
    pub fn all_ready(&self, pod: &Pod) -> bool {
        pod.spec
            .iter()
            .flat_map(|s| s.volumes.iter().flatten())
            .all(|v| self.ready.contains_key(&v.name))
    }

    /// Sets up the volumes not set up yet and brings the written ones up
    /// to date (writing only what changed). Stops at the first failure;
    /// a written volume that fails keeps what it held.
    pub fn set_up(&mut self, pod: &Pod, cx: &SetUpContext<'_>) -> Result<(), SetUpError> {
        let uid = pod.metadata.uid.as_deref().unwrap_or_default();
        for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
            let fail = |what: String| SetUpError {
                volume: v.name.clone(),
                what,
            };
            let k = kind(v).map_err(|e| fail(e.to_string()))?;
            let dir = cx.state.volume_dir(uid, &v.name);
            match k {
                Kind::EmptyDir => {
                    if !self.ready.contains_key(&v.name) {
                        make_empty_dir(&dir).map_err(|e| fail(format!("{e:#}")))?;
                        self.ready.insert(v.name.clone(), (k, dir));
                    }
                }
                Kind::HostPath => {
                    if !self.ready.contains_key(&v.name)
                        && let Some(h) = &v.host_path
                    {
                        let real = cx
                            .host
                            .prepare(&h.path, h.type_.as_deref().unwrap_or_default())
                            .map_err(|e| fail(e.to_string()))?;
                        self.ready.insert(v.name.clone(), (k, real));
                    }
                }
                Kind::Written => {
                    let payload = written_payload(pod, v, cx).map_err(|e| fail(e.to_string()))?;
                    atomic_writer::write(&dir, &payload).map_err(|e| fail(e.to_string()))?;
                    self.ready.insert(v.name.clone(), (k, dir));
                }
            }
        }
        Ok(())
    }

    /// The mounts of `container`, parents first; `expand` expands
    /// `$(VAR)` in a subPathExpr with the container's env. Missing subPath
    /// directories are made (inside their volume).
    pub fn mounts(
        &self,
        container: &Container,
        expand: impl Fn(&str) -> String,
    ) -> Result<MountPlan, MountPlanError> {
        let mut list: Vec<&k8s_openapi::api::core::v1::VolumeMount> =
            container.volume_mounts.iter().flatten().collect();
        list.sort_by_key(|m| Path::new(&m.mount_path).components().count());
        // (target, the path on the node the container sees there, kind)
        let mut made: Vec<(PathBuf, PathBuf, Kind)> = Vec::new();
        let mut out = Vec::new();
        let mut shadows: Vec<PathBuf> = Vec::new();
        for m in list {
            let (k, source) = self
                .ready
                .get(&m.name)
                .ok_or_else(|| MountPlanError::NotReady(m.name.clone()))?;
            let sub = match (m.sub_path.as_deref(), m.sub_path_expr.as_deref()) {
                (Some(s), _) if !s.is_empty() => Some(s.to_owned()),
                (_, Some(e)) if !e.is_empty() => Some(expand(e)),
                _ => None,
            };
            let sub_err = |what: String| MountPlanError::SubPath {
                volume: m.name.clone(),
                container: container.name.clone(),
                what,
            };
            let seen = match &sub {
                Some(sub) => {
                    // Made if missing (as the kubelet), never outside.
                    let fd =
                        subpath::open(source, sub, true).map_err(|e| sub_err(e.to_string()))?;
                    std::fs::read_link(subpath::fd_path(&fd)).map_err(|e| sub_err(e.to_string()))?
                }
                None => source.clone(),
            };
            let target = Path::new(&m.mount_path).components().collect::<PathBuf>();
            // Where the mount point is, as the container will see it: in
            // the deepest earlier mount above it, else the node's own.
            let above = made
                .iter()
                .filter(|(t, _, _)| target.starts_with(t) && *t != target)
                .max_by_key(|(t, _, _)| t.components().count());
            let (point, may_make) = match above {
                // In an emptyDir, or in a hostPath as a container runtime
                // makes it (in the node's directory the volume is: a
                // hostPath is the node's by definition); never in what
                // ferry-node writes.
                Some((t, seen, k)) => (
                    seen.join(target.strip_prefix(t).unwrap_or(&target)),
                    matches!(k, Kind::EmptyDir | Kind::HostPath),
                ),
                None => (target.clone(), false),
            };
            let kind_of_point = if seen.is_dir() {
                PointKind::Dir
            } else {
                PointKind::File
            };
            let mut make_point = None;
            if std::fs::symlink_metadata(&point).is_err() && above.is_none() {
                // Outside every volume: the container covers what is above.
                let dir = mount_points::deepest_existing(&point);
                if dir.starts_with("/proc") {
                    return Err(MountPlanError::NoMountPoint {
                        volume: m.name.clone(),
                        path: m.mount_path.clone(),
                    });
                }
                if !shadows.contains(&dir) {
                    shadows.push(dir);
                }
                make_point = Some(kind_of_point);
            } else if std::fs::symlink_metadata(&point).is_err() {
                if !may_make {
                    return Err(MountPlanError::NoMountPoint {
                        volume: m.name.clone(),
                        path: m.mount_path.clone(),
                    });
                }
                // Inside the emptyDir or hostPath, never through a symlink
                // a container planted there.
                if let Some((t, base, _)) = above {
                    let rel = target.strip_prefix(t).unwrap_or(&target);
                    make_inside(base, rel, kind_of_point)
                        .map_err(|e| sub_err(format!("making {}: {e}", point.display())))?;
                }
            }
            let propagation = match m.mount_propagation.as_deref() {
                // Bidirectional (privileged containers only) cannot reach
                // the node: the node's mount table never changes. The
                // container still sees the node's mounts.
                Some("HostToContainer" | "Bidirectional") => Propagation::Slave,
                _ => Propagation::Private,
            };
            out.push(MountSpec {
                source: source.clone(),
                sub_path: sub,
                target: target.clone(),
                read_only: m.read_only.unwrap_or(false) || *k == Kind::Written,
                propagation,
                make_point,
            });
            made.push((target, seen, *k));
        }
        shadows.sort_by_key(|d| d.components().count());
        // A directory covered already covers what is below it only as it
        // was: each is covered in turn, shallowest first.
        Ok(MountPlan {
            mounts: out,
            shadows,
        })
    }
}

/// Makes `base/rel` (a directory, or an empty file) without leaving
/// `base` or following a symlink.
fn make_inside(base: &Path, rel: &Path, kind: PointKind) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let rel_s = rel.to_string_lossy();
    match kind {
        PointKind::Dir => subpath::open(base, &rel_s, true)
            .map(drop)
            .map_err(|e| e.to_string()),
        PointKind::File => {
            let name = rel.file_name().ok_or("no file name")?;
            let parent = match rel.parent().filter(|p| !p.as_os_str().is_empty()) {
                Some(p) => {
                    subpath::open(base, &p.to_string_lossy(), true).map_err(|e| e.to_string())?
                }
                None => subpath::open(base, ".", false).map_err(|e| e.to_string())?,
            };
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                .open(subpath::fd_path(&parent).join(name))
                .map(drop)
                .map_err(|e| e.to_string())
        }
    }
}

fn make_empty_dir(dir: &Path) -> anyhow::Result<()> {
    use anyhow::Context as _;
    if !dir.is_dir() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777))
            .with_context(|| format!("setting the mode of {}", dir.display()))?;
    }
    Ok(())
}

/// A configMap, secret, downwardAPI or projected volume's files.
fn written_payload(
    pod: &Pod,
    v: &Volume,
    cx: &SetUpContext<'_>,
) -> Result<atomic_writer::Payload, sources::SourceError> {
    if let Some(cm) = &v.config_map {
        return sources::merge(vec![sources::config_map(
            cx.refs,
            &cm.name,
            cm.items.as_ref(),
            cm.default_mode,
            cm.optional.unwrap_or(false),
        )?]);
    }
    if let Some(s) = &v.secret {
        return sources::merge(vec![sources::secret(
            cx.refs,
            s.secret_name.as_deref().unwrap_or_default(),
            s.items.as_ref(),
            s.default_mode,
            s.optional.unwrap_or(false),
        )?]);
    }
    if let Some(d) = &v.downward_api {
        return sources::merge(vec![sources::downward_api(
            pod,
            cx.addrs,
            d.items.as_deref().unwrap_or_default(),
            d.default_mode,
        )?]);
    }
    if let Some(p) = &v.projected {
        let parts = p
            .sources
            .iter()
            .flatten()
            .map(|s| sources::projection(pod, cx.addrs, cx.refs, s, p.default_mode))
            .collect::<Result<Vec<_>, _>>()?;
        return sources::merge(parts);
    }
    Ok(atomic_writer::Payload::new())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(v: serde_json::Value) -> PodSpec {
        serde_json::from_value(v).expect("pod spec")
    }

    fn err(v: serde_json::Value) -> SpecError {
        validate(&spec(v)).expect_err("refused")
    }

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "ferry-node-plan-{name}-{}-{}",
            std::process::id(),
            jiff::Timestamp::now().as_nanosecond()
        ));
        std::fs::create_dir_all(&d).expect("tmp dir");
        d
    }

    #[test]
    fn mount_points_are_never_made_on_the_node() {
        let top = tmpdir("points");
        let empty = top.join("empty");
        let cfg = top.join("cfg");
        let outside = top.join("outside");
        for d in [&empty, &cfg, &outside] {
            std::fs::create_dir_all(d).expect("dir");
        }
        std::os::unix::fs::symlink(&outside, empty.join("link")).expect("planted link");
        let mut vols = PodVolumes::default();
        vols.ready
            .insert("data".into(), (Kind::EmptyDir, empty.clone()));
        vols.ready
            .insert("cfg".into(), (Kind::Written, cfg.clone()));
        let container = |mounts: serde_json::Value| -> Container {
            serde_json::from_value(json!({"name": "c", "volumeMounts": mounts})).expect("container")
        };
        let at = top.join("mnt");
        let plan = vols
            .mounts(
                &container(json!([
                    {"name": "data", "mountPath": at},
                    {"name": "cfg", "mountPath": at.join("in/cfg")},
                    {"name": "cfg", "mountPath": top.join("missing/deeper")},
                ])),
                str::to_owned,
            )
            .expect("plan");
        // Inside the emptyDir: made there. Outside every volume: the
        // container covers the deepest existing directory.
        assert!(empty.join("in/cfg").is_dir());
        assert!(
            !at.exists() && !top.join("missing").exists(),
            "made on the node"
        );
        assert_eq!(plan.shadows, vec![top.clone()]);
        let targets: Vec<_> = plan.mounts.iter().map(|m| m.target.clone()).collect();
        assert_eq!(
            targets,
            vec![at.clone(), top.join("missing/deeper"), at.join("in/cfg")]
        );
        assert_eq!(plan.mounts[0].make_point, Some(PointKind::Dir));
        assert_eq!(plan.mounts[2].make_point, None);
        assert!(plan.mounts[2].read_only, "written volumes are read-only");
        // A mount point through a symlink planted in the emptyDir is
        // refused, nothing is made outside.
        let e = vols
            .mounts(
                &container(json!([
                    {"name": "data", "mountPath": at},
                    {"name": "cfg", "mountPath": at.join("link/new")},
                ])),
                str::to_owned,
            )
            .expect_err("through the link");
        assert!(matches!(e, MountPlanError::SubPath { .. }), "{e}");
        assert!(!outside.join("new").exists());
        // Inside a written volume a missing mount point is refused.
        let e = vols
            .mounts(
                &container(json!([
                    {"name": "cfg", "mountPath": at},
                    {"name": "data", "mountPath": at.join("nope")},
                ])),
                str::to_owned,
            )
            .expect_err("inside a configMap");
        assert!(matches!(e, MountPlanError::NoMountPoint { .. }), "{e}");
        // Inside a hostPath it is made in the node's directory, as a
        // container runtime makes it (the DaemonSet's `/run/ferry` holding
        // `/run/ferry/cgroupv2`).
        let host = top.join("host");
        std::fs::create_dir_all(&host).expect("dir");
        vols.ready
            .insert("state".into(), (Kind::HostPath, host.clone()));
        vols.mounts(
            &container(json!([
                {"name": "state", "mountPath": at},
                {"name": "cfg", "mountPath": at.join("cgroupv2")},
            ])),
            str::to_owned,
        )
        .expect("inside a hostPath");
        assert!(host.join("cgroupv2").is_dir());
        // subPathExpr is expanded; an escaping subPath is refused.
        std::fs::create_dir_all(empty.join("web")).expect("dir");
        let plan = vols
            .mounts(
                &container(
                    json!([{"name": "data", "mountPath": &outside, "subPathExpr": "$(POD)"}]),
                ),
                |s| s.replace("$(POD)", "web"),
            )
            .expect("subPathExpr");
        assert_eq!(plan.mounts[0].sub_path.as_deref(), Some("web"));
        let e = vols
            .mounts(
                &container(json!([{"name": "data", "mountPath": &outside, "subPath": "link"}])),
                str::to_owned,
            )
            .expect_err("escape");
        assert!(e.to_string().contains("failed to prepare subPath"), "{e}");
        let _ = std::fs::remove_dir_all(&top);
    }

    #[test]
    fn validation() {
        let ok = spec(json!({"volumes": [
                {"name": "data", "emptyDir": {}},
                {"name": "cfg", "configMap": {"name": "c", "items": [{"key": "a", "path": "x/a"}]}}],
            "containers": [{"name": "c", "volumeMounts": [
                {"name": "data", "mountPath": "/data"},
                {"name": "cfg", "mountPath": "/data/cfg", "subPath": "x"}]}]}));
        assert_eq!(validate(&ok), Ok(()));
        let token = spec(json!({"volumes": [{"name": "t", "projected": {"sources": [
            {"serviceAccountToken": {"path": "token"}}]}}], "containers": []}));
        assert_eq!(validate(&token), Ok(()));
        let escaping = err(json!({"volumes": [{"name": "t", "projected": {"sources": [
            {"serviceAccountToken": {"path": "../token"}}]}}], "containers": []}));
        assert_eq!(escaping.reason(), "InvalidVolume");
        let pvc = err(
            json!({"volumes": [{"name": "p", "persistentVolumeClaim": {"claimName": "x"}}],
            "containers": []}),
        );
        assert!(pvc.to_string().contains("persistentVolumeClaim"), "{pvc}");
        let many: Vec<_> = (0..=MAX_VOLUMES)
            .map(|i| json!({"name": format!("v{i}"), "emptyDir": {}}))
            .collect();
        assert!(matches!(
            err(json!({"volumes": many, "containers": []})),
            SpecError::Invalid(_)
        ));
        for (vol, mount) in [
            (
                json!({"name": "Bad_Name", "emptyDir": {}}),
                json!({"name": "Bad_Name", "mountPath": "/d"}),
            ),
            (
                json!({"name": "d", "emptyDir": {}}),
                json!({"name": "nope", "mountPath": "/d"}),
            ),
            (
                json!({"name": "d", "emptyDir": {}}),
                json!({"name": "d", "mountPath": "relative"}),
            ),
            (
                json!({"name": "d", "emptyDir": {}}),
                json!({"name": "d", "mountPath": "/a/../etc"}),
            ),
            (
                json!({"name": "d", "emptyDir": {}}),
                json!({"name": "d", "mountPath": "/d", "subPath": "../x"}),
            ),
            (
                json!({"name": "d", "emptyDir": {}}),
                json!({"name": "d", "mountPath": "/d", "subPath": "/abs"}),
            ),
            (
                json!({"name": "d", "emptyDir": {}}),
                json!({"name": "d", "mountPath": "/d", "mountPropagation": "Bidirectional"}),
            ),
            (
                json!({"name": "d", "hostPath": {"path": "/a/../b"}}),
                json!({"name": "d", "mountPath": "/d"}),
            ),
            (
                json!({"name": "d", "configMap": {"name": "c", "items": [{"key": "k", "path": "../k"}]}}),
                json!({"name": "d", "mountPath": "/d"}),
            ),
        ] {
            let e = err(
                json!({"volumes": [vol], "containers": [{"name": "c", "volumeMounts": [mount]}]}),
            );
            assert!(matches!(e, SpecError::Invalid(_)), "{vol} {mount}: {e}");
        }
        // Bidirectional for a privileged container passes validation.
        assert_eq!(
            validate(&spec(json!({"volumes": [{"name": "d", "emptyDir": {}}],
                "containers": [{"name": "c", "securityContext": {"privileged": true},
                    "volumeMounts": [{"name": "d", "mountPath": "/d", "mountPropagation": "Bidirectional"}]}]}))),
            Ok(())
        );
    }
}
