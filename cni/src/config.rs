//! The network configuration on stdin: decoding (errors 6), validation
//! (errors 7 and 2) and defaults.
//!
//! ```json
//! {
//!   "cniVersion": "1.1.0", "name": "ferry", "type": "ferry-cni",
//!   "mtu": 1450,
//!   "dataDir": "/var/lib/cni/ferry",
//!   "dns": { "nameservers": ["10.96.0.10"], "search": ["svc.cluster.local"] },
//!   "ipam": {
//!     "type": "host-local",
//!     "ranges": [[{ "subnet": "10.244.1.0/24" }], [{ "subnet": "fd00:10:244:1::/64" }]],
//!     "routes": [{ "dst": "0.0.0.0/0" }, { "dst": "::/0" }],
//!     "dataDir": "/var/lib/cni/networks"
//!   }
//! }
//! ```
//!
//! Without `ipam.ranges` (and without host-local's legacy `ipam.subnet`) the
//! ranges are the node's `spec.podCIDRs`, read through the Kubernetes API
//! with `ipam.kubeconfig` (default [`DEFAULT_KUBECONFIG`]) for the node
//! `ipam.nodeName` (default: the hostname). Both keys are also accepted at
//! the top level.

use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use serde::Deserialize;
use serde_json::Value;

use crate::env::is_valid_name;
use crate::error::{Error, Result};
use crate::ipam::range::{Range, RangeSet};
use crate::types::{CniResult, Dns, Route};
use crate::version::{self, Version};

/// Where results are cached when the config has no top-level `dataDir`.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/ferry";
/// Where address reservations live without `ipam.dataDir` (host-local's
/// default, so state written by host-local is honoured).
pub const DEFAULT_IPAM_DATA_DIR: &str = "/var/lib/cni/networks";
/// The kubeconfig used for the podCIDR lookup without `ipam.kubeconfig`.
pub const DEFAULT_KUBECONFIG: &str = "/etc/cni/net.d/ferry-kubeconfig";
/// The MTU of both veth ends without `mtu`.
pub const DEFAULT_MTU: u32 = 1500;
/// The longest network name: it names a directory under both data
/// directories, so it must fit in NAME_MAX.
pub const MAX_NETWORK_NAME_LEN: usize = 255;

/// IPAM `type`s whose config this plugin understands: its own, and
/// host-local's (whose format it accepts unchanged).
const IPAM_TYPES: [&str; 3] = ["host-local", "ferry", "ferry-cni"];

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawConf {
    mtu: Option<u32>,
    ip_masq: Option<bool>,
    ipam: Option<RawIpam>,
    dns: Option<Dns>,
    data_dir: Option<PathBuf>,
    prev_result: Option<Value>,
    #[serde(rename = "cni.dev/valid-attachments")]
    valid_attachments: Option<Vec<Attachment>>,
    /// The name libcni also sends, after a typo in an early 1.1.0 draft.
    #[serde(rename = "cni.dev/attachments")]
    attachments: Option<Vec<Attachment>>,
    kubeconfig: Option<PathBuf>,
    node_name: Option<String>,
    log_level: Option<String>,
    dataplane: Option<RawDataplane>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawDataplane {
    wait_for: Vec<String>,
    timeout_ms: Option<u64>,
}

/// `dataplane`: files the node's dataplane makes once it has taken a new
/// pod's host veth (ferry-agent pins its programs' links), which ADD waits
/// for before it returns, so no container of the pod runs before the
/// dataplane (NetworkPolicy among it) is on its device. `{hostVeth}` in a
/// path stands for the veth's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dataplane {
    pub wait_for: Vec<String>,
    pub timeout: std::time::Duration,
}

/// The placeholder in [`Dataplane::wait_for`].
pub const HOST_VETH_PLACEHOLDER: &str = "{hostVeth}";
/// [`Dataplane::timeout`] unless set; at most [`MAX_DATAPLANE_TIMEOUT_MS`].
pub const DEFAULT_DATAPLANE_TIMEOUT_MS: u64 = 10_000;
pub const MAX_DATAPLANE_TIMEOUT_MS: u64 = 120_000;

impl Dataplane {
    /// The files to wait for, for host veth `veth`.
    pub fn paths(&self, veth: &str) -> Vec<PathBuf> {
        self.wait_for
            .iter()
            .map(|p| PathBuf::from(p.replace(HOST_VETH_PLACEHOLDER, veth)))
            .collect()
    }
}

fn dataplane(raw: Option<RawDataplane>) -> Result<Option<Dataplane>> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    if raw.wait_for.is_empty() || raw.wait_for.len() > 16 {
        return Err(Error::InvalidConfig(
            "dataplane.waitFor must name 1 to 16 files".into(),
        ));
    }
    if let Some(p) = raw.wait_for.iter().find(|p| !p.starts_with('/')) {
        return Err(Error::InvalidConfig(format!(
            "dataplane.waitFor: {p:?} is not an absolute path"
        )));
    }
    let ms = raw.timeout_ms.unwrap_or(DEFAULT_DATAPLANE_TIMEOUT_MS);
    if ms == 0 || ms > MAX_DATAPLANE_TIMEOUT_MS {
        return Err(Error::InvalidConfig(format!(
            "dataplane.timeoutMs {ms} is outside 1..={MAX_DATAPLANE_TIMEOUT_MS}"
        )));
    }
    Ok(Some(Dataplane {
        wait_for: raw.wait_for,
        timeout: std::time::Duration::from_millis(ms),
    }))
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawIpam {
    #[serde(rename = "type")]
    ipam_type: Option<String>,
    ranges: Option<Vec<Vec<RawRange>>>,
    // host-local's legacy single range.
    subnet: Option<String>,
    range_start: Option<IpAddr>,
    range_end: Option<IpAddr>,
    gateway: Option<IpAddr>,
    routes: Option<Vec<Route>>,
    data_dir: Option<PathBuf>,
    resolv_conf: Option<PathBuf>,
    kubeconfig: Option<PathBuf>,
    node_name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawRange {
    subnet: String,
    range_start: Option<IpAddr>,
    range_end: Option<IpAddr>,
    gateway: Option<IpAddr>,
}

/// One entry of `cni.dev/valid-attachments`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Deserialize)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// Where pod addresses come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AddressSource {
    /// `ipam.ranges` (or the legacy `ipam.subnet`): one address per range set.
    Ranges(Vec<RangeSet>),
    /// The node's podCIDRs, one range set each.
    Node {
        kubeconfig: PathBuf,
        node_name: String,
    },
}

/// The validated IPAM section.
#[derive(Clone, Debug)]
pub struct IpamConfig {
    pub source: AddressSource,
    /// `ipam.routes`; `None` means a default route per address family.
    pub routes: Option<Vec<Route>>,
    pub data_dir: PathBuf,
    pub resolv_conf: Option<PathBuf>,
}

/// The validated network configuration of one invocation.
#[derive(Clone, Debug)]
pub struct Config {
    pub version: Version,
    pub name: String,
    pub mtu: u32,
    pub ipam: IpamConfig,
    pub dns: Dns,
    /// Root of the result cache.
    pub data_dir: PathBuf,
    pub prev_result: Option<Value>,
    pub valid_attachments: Option<Vec<Attachment>>,
    pub log_level: Option<String>,
    pub dataplane: Option<Dataplane>,
}

/// Decodes stdin far enough to learn its `cniVersion`, for error output.
pub fn peek_version(stdin: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(stdin).ok()?;
    v.get("cniVersion")?.as_str().map(str::to_string)
}

/// Reads the `logLevel` key without validating anything else.
pub fn peek_log_level(stdin: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(stdin).ok()?;
    v.get("logLevel")?.as_str().map(str::to_string)
}

impl Config {
    /// Decodes and validates stdin in the order libcni's skeleton does:
    /// JSON (6), network name (7), version (1), the rest (6, 7, 2).
    pub fn parse(stdin: &[u8]) -> Result<Config> {
        let value: Value = serde_json::from_slice(stdin)
            .map_err(|e| Error::Decode(format!("error unmarshalling network config: {e}")))?;
        let Some(obj) = value.as_object() else {
            return Err(Error::Decode("network config is not a JSON object".into()));
        };
        let name = match obj.get("name") {
            None | Some(Value::Null) => {
                return Err(Error::InvalidConfig("missing network name".into()));
            }
            Some(Value::String(s)) if s.is_empty() => {
                return Err(Error::InvalidConfig("missing network name".into()));
            }
            Some(Value::String(s)) => s.clone(),
            Some(other) => {
                return Err(Error::Decode(format!(
                    "network name is not a string: {other}"
                )));
            }
        };
        if !is_valid_name(&name) {
            return Err(Error::InvalidConfig(format!(
                "invalid characters found in network name {name:?}"
            )));
        }
        if name.len() > MAX_NETWORK_NAME_LEN {
            return Err(Error::InvalidConfig(format!(
                "network name is {} bytes long, more than the {MAX_NETWORK_NAME_LEN} allowed",
                name.len()
            )));
        }
        let raw_version = match obj.get("cniVersion") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.as_str()),
            Some(other) => {
                return Err(Error::Decode(format!(
                    "cniVersion is not a string: {other}"
                )));
            }
        };
        let version = version::negotiate(raw_version)?;
        let raw: RawConf = serde_json::from_value(value.clone())
            .map_err(|e| Error::Decode(format!("error decoding network config: {e}")))?;
        Config::validate(version, name, raw)
    }

    fn validate(version: Version, name: String, raw: RawConf) -> Result<Config> {
        if raw.ip_masq == Some(true) {
            return Err(Error::UnsupportedField {
                key: "ipMasq".into(),
                value: "true".into(),
            });
        }
        let mtu = raw.mtu.unwrap_or(DEFAULT_MTU);
        if !(68..=65535).contains(&mtu) {
            return Err(Error::InvalidConfig(format!(
                "mtu {mtu} is outside 68..=65535"
            )));
        }
        let ipam = raw.ipam.unwrap_or_default();
        if let Some(t) = &ipam.ipam_type
            && !t.is_empty()
            && !IPAM_TYPES.contains(&t.as_str())
        {
            return Err(Error::UnsupportedField {
                key: "ipam.type".into(),
                value: t.clone(),
            });
        }
        let mut sets: Vec<RangeSet> = Vec::new();
        if let Some(subnet) = &ipam.subnet {
            let legacy = RawRange {
                subnet: subnet.clone(),
                range_start: ipam.range_start,
                range_end: ipam.range_end,
                gateway: ipam.gateway,
            };
            sets.push(RangeSet(vec![canonical_range(&legacy)?]));
        }
        if let Some(ranges) = &ipam.ranges {
            if ranges.is_empty() && sets.is_empty() {
                return Err(Error::InvalidConfig(
                    "ipam.ranges is empty: no IP ranges specified".into(),
                ));
            }
            for set in ranges {
                if set.is_empty() {
                    return Err(Error::InvalidConfig(
                        "ipam.ranges has an empty range set".into(),
                    ));
                }
                let ranges = set
                    .iter()
                    .map(canonical_range)
                    .collect::<Result<Vec<_>>>()?;
                sets.push(RangeSet(ranges));
            }
        }
        let source = if sets.is_empty() {
            let node_name = match ipam.node_name.or(raw.node_name) {
                Some(n) => n,
                None => hostname()?,
            };
            AddressSource::Node {
                kubeconfig: ipam
                    .kubeconfig
                    .or(raw.kubeconfig)
                    .unwrap_or_else(|| PathBuf::from(DEFAULT_KUBECONFIG)),
                node_name,
            }
        } else {
            crate::ipam::range::validate_sets(&sets)?;
            AddressSource::Ranges(sets)
        };
        let mut routes = ipam.routes;
        for r in routes.iter_mut().flatten() {
            if let Some(gw) = r.gw
                && gw.is_ipv4() != r.dst.addr().is_ipv4()
            {
                return Err(Error::InvalidConfig(format!(
                    "route to {} has a gateway {gw} of another family",
                    r.dst
                )));
            }
            // host-local passes e.g. "3ffe:ffff:0:01ff::1/64" through; the
            // kernel wants the network address.
            r.dst = r.dst.trunc();
        }
        Ok(Config {
            version,
            name,
            mtu,
            ipam: IpamConfig {
                source,
                routes,
                data_dir: ipam
                    .data_dir
                    .unwrap_or_else(|| PathBuf::from(DEFAULT_IPAM_DATA_DIR)),
                resolv_conf: ipam.resolv_conf,
            },
            dns: raw.dns.unwrap_or_default(),
            data_dir: raw
                .data_dir
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
            prev_result: raw.prev_result.filter(|v| !v.is_null()),
            valid_attachments: raw.valid_attachments.or(raw.attachments),
            log_level: raw.log_level,
            dataplane: dataplane(raw.dataplane)?,
        })
    }

    /// The decoded `prevResult`, if any (error 6 if it cannot be read).
    pub fn prev_result(&self) -> Result<Option<CniResult>> {
        self.prev_result
            .as_ref()
            .map(CniResult::from_json)
            .transpose()
    }
}

fn canonical_range(raw: &RawRange) -> Result<Range> {
    let subnet: IpNet = raw
        .subnet
        .parse()
        .map_err(|e| Error::InvalidConfig(format!("invalid subnet {:?}: {e}", raw.subnet)))?;
    Range::canonicalize(subnet, raw.range_start, raw.range_end, raw.gateway)
}

/// The kernel's hostname (the default node name, as kubelet uses it).
fn hostname() -> Result<String> {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map_err(|e| Error::io("reading the hostname", e))?;
    let name = raw.trim().to_lowercase();
    if name.is_empty() {
        return Err(Error::InvalidConfig(
            "the hostname is empty: set ipam.nodeName".into(),
        ));
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Config> {
        Config::parse(s.as_bytes())
    }

    fn code(s: &str) -> Option<u32> {
        parse(s).err().map(|e| e.code())
    }

    #[test]
    fn host_local_config_unchanged() {
        // host-local's own README example, including its route with host bits.
        let c = parse(
            r#"{"cniVersion":"0.4.0","name":"net","type":"ferry-cni","ipam":{"type":"host-local",
            "ranges":[[{"subnet":"10.10.0.0/16","rangeStart":"10.10.1.20","rangeEnd":"10.10.3.50","gateway":"10.10.0.254"},
                       {"subnet":"172.16.5.0/24"}],
                      [{"subnet":"3ffe:ffff:0:01ff::/64","rangeStart":"3ffe:ffff:0:01ff::0010","rangeEnd":"3ffe:ffff:0:01ff::0020"}]],
            "routes":[{"dst":"0.0.0.0/0"},{"dst":"192.168.0.0/16","gw":"10.10.5.1"},{"dst":"3ffe:ffff:0:01ff::1/64"}],
            "dataDir":"/run/my-orchestrator/container-ipam-state"}}"#,
        )
        .expect("valid config");
        let AddressSource::Ranges(sets) = &c.ipam.source else {
            panic!("expected ranges");
        };
        assert_eq!(sets.len(), 2);
        assert_eq!(sets[0].0.len(), 2);
        assert_eq!(
            c.ipam.data_dir,
            PathBuf::from("/run/my-orchestrator/container-ipam-state")
        );
        assert_eq!(c.mtu, DEFAULT_MTU);
        let routes = c.ipam.routes.expect("routes");
        assert_eq!(routes.len(), 3);
        assert_eq!(routes[2].dst.to_string(), "3ffe:ffff:0:1ff::/64");
    }

    #[test]
    fn legacy_subnet_and_node_mode() {
        let c = parse(r#"{"cniVersion":"1.0.0","name":"n","ipam":{"type":"host-local","subnet":"10.1.2.0/24"}}"#)
            .expect("legacy");
        assert!(matches!(&c.ipam.source, AddressSource::Ranges(s) if s.len() == 1));
        let c = parse(
            r#"{"cniVersion":"1.1.0","name":"n","ipam":{"kubeconfig":"/k","nodeName":"node-1"}}"#,
        )
        .expect("node mode");
        assert_eq!(
            c.ipam.source,
            AddressSource::Node {
                kubeconfig: "/k".into(),
                node_name: "node-1".into()
            }
        );
    }

    #[test]
    fn error_codes() {
        assert_eq!(code("{"), Some(6));
        assert_eq!(code("[]"), Some(6));
        assert_eq!(code(r#"{"cniVersion":"1.0.0"}"#), Some(7));
        assert_eq!(code(r#"{"cniVersion":"1.0.0","name":"bad name"}"#), Some(7));
        // A name that cannot be a directory name (it used to pass, and DEL
        // then failed for ever with ENAMETOOLONG).
        let long = "n".repeat(MAX_NETWORK_NAME_LEN + 1);
        assert_eq!(
            code(&format!(
                r#"{{"cniVersion":"1.0.0","name":"{long}","ipam":{{"subnet":"10.0.0.0/24"}}}}"#
            )),
            Some(7)
        );
        let longest = "n".repeat(MAX_NETWORK_NAME_LEN);
        assert_eq!(
            code(&format!(
                r#"{{"cniVersion":"1.0.0","name":"{longest}","ipam":{{"subnet":"10.0.0.0/24"}}}}"#
            )),
            None
        );
        assert_eq!(code(r#"{"name":"n"}"#), Some(1));
        assert_eq!(code(r#"{"cniVersion":"0.2.0","name":"n"}"#), Some(1));
        assert_eq!(code(r#"{"cniVersion":"x","name":"n"}"#), Some(6));
        assert_eq!(code(r#"{"cniVersion":1,"name":"n"}"#), Some(6));
        assert_eq!(
            code(r#"{"cniVersion":"1.0.0","name":"n","mtu":"big"}"#),
            Some(6)
        );
        assert_eq!(
            code(r#"{"cniVersion":"1.0.0","name":"n","mtu":10}"#),
            Some(7)
        );
        assert_eq!(
            code(
                r#"{"cniVersion":"1.0.0","name":"n","ipMasq":true,"ipam":{"subnet":"10.0.0.0/24"}}"#
            ),
            Some(2)
        );
        assert_eq!(
            code(r#"{"cniVersion":"1.0.0","name":"n","ipam":{"type":"dhcp"}}"#),
            Some(2)
        );
        assert_eq!(
            code(r#"{"cniVersion":"1.0.0","name":"n","ipam":{"subnet":"10.0.0.1/24"}}"#),
            Some(7)
        );
        assert_eq!(
            code(r#"{"cniVersion":"1.0.0","name":"n","ipam":{"subnet":"10.0.0.0/31"}}"#),
            Some(7)
        );
        assert_eq!(
            code(r#"{"cniVersion":"1.0.0","name":"n","ipam":{"ranges":[]}}"#),
            Some(7)
        );
        assert_eq!(
            code(r#"{"cniVersion":"1.0.0","name":"n","ipam":{"ranges":[[]]}}"#),
            Some(7)
        );
        assert_eq!(
            code(
                r#"{"cniVersion":"1.0.0","name":"n","ipam":{"ranges":[[{"subnet":"10.0.0.0/24"}],[{"subnet":"10.0.0.0/25"}]]}}"#
            ),
            Some(7)
        );
        assert_eq!(
            code(
                r#"{"cniVersion":"1.0.0","name":"n","ipam":{"ranges":[[{"subnet":"10.0.0.0/24"},{"subnet":"fd00::/64"}]]}}"#
            ),
            Some(7)
        );
        assert_eq!(
            code(
                r#"{"cniVersion":"1.0.0","name":"n","ipam":{"ranges":[[{"subnet":"10.0.0.0/24","rangeStart":"10.0.1.1"}]]}}"#
            ),
            Some(7)
        );
    }

    #[test]
    fn attachments_either_key() {
        let c = parse(
            r#"{"cniVersion":"1.1.0","name":"n","ipam":{"subnet":"10.0.0.0/24"},
            "cni.dev/attachments":[{"containerID":"a","ifname":"eth0"}]}"#,
        )
        .expect("gc config");
        assert_eq!(c.valid_attachments.map(|v| v.len()), Some(1));
    }
}
