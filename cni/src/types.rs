//! The CNI result, held in one version-independent form and written out in
//! the exact shape of the version a config asks for.
//!
//! | version | `ips[].version` | interface `mtu` | route `mtu`/`advmss`/`priority`/`table`/`scope` |
//! |---|---|---|---|
//! | 0.3.0, 0.3.1, 0.4.0 | yes | no | no |
//! | 1.0.0 | no | no | no |
//! | 1.1.0 | no | yes | yes |

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::error::{Error, Result};
use crate::version::Version;

/// An interface the plugin created (or one a previous plugin reported).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(
        default,
        rename = "socketPath",
        skip_serializing_if = "Option::is_none"
    )]
    pub socket_path: Option<String>,
    #[serde(default, rename = "pciID", skip_serializing_if = "Option::is_none")]
    pub pci_id: Option<String>,
}

/// One address and the interface (index into `interfaces`) it is on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// The address with its prefix length, e.g. `10.244.1.5/32`.
    pub address: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

/// A route for the sandbox interface. The 1.1.0 fields are optional.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub dst: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advmss: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<u8>,
}

impl Route {
    pub fn new(dst: IpNet, gw: Option<IpAddr>) -> Route {
        Route {
            dst,
            gw,
            mtu: None,
            advmss: None,
            priority: None,
            table: None,
            scope: None,
        }
    }
}

/// DNS settings, passed through from the config.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty()
            && self.domain.is_none()
            && self.search.is_empty()
            && self.options.is_empty()
    }
}

/// A CNI result in version-independent form.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniResult {
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    #[serde(default)]
    pub ips: Vec<IpConfig>,
    #[serde(default)]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub dns: Dns,
}

impl CniResult {
    /// The result as the spec's JSON for `version`.
    pub fn to_json(&self, version: Version) -> Value {
        let interfaces: Vec<Value> = self
            .interfaces
            .iter()
            .map(|i| {
                let mut o = Map::new();
                o.insert("name".into(), json!(i.name));
                if let Some(mac) = &i.mac {
                    o.insert("mac".into(), json!(mac));
                }
                if version.has_1_1_fields()
                    && let Some(mtu) = i.mtu
                {
                    o.insert("mtu".into(), json!(mtu));
                }
                if let Some(sandbox) = &i.sandbox {
                    o.insert("sandbox".into(), json!(sandbox));
                }
                if version.has_1_1_fields() {
                    if let Some(p) = &i.socket_path {
                        o.insert("socketPath".into(), json!(p));
                    }
                    if let Some(p) = &i.pci_id {
                        o.insert("pciID".into(), json!(p));
                    }
                }
                Value::Object(o)
            })
            .collect();
        let ips: Vec<Value> = self
            .ips
            .iter()
            .map(|ip| {
                let mut o = Map::new();
                if version.has_ip_version_field() {
                    let v = if ip.address.addr().is_ipv4() {
                        "4"
                    } else {
                        "6"
                    };
                    o.insert("version".into(), json!(v));
                }
                o.insert("address".into(), json!(ip.address.to_string()));
                if let Some(gw) = ip.gateway {
                    o.insert("gateway".into(), json!(gw.to_string()));
                }
                if let Some(idx) = ip.interface {
                    o.insert("interface".into(), json!(idx));
                }
                Value::Object(o)
            })
            .collect();
        let routes: Vec<Value> = self
            .routes
            .iter()
            .map(|r| {
                let mut o = Map::new();
                o.insert("dst".into(), json!(r.dst.to_string()));
                if let Some(gw) = r.gw {
                    o.insert("gw".into(), json!(gw.to_string()));
                }
                if version.has_1_1_fields() {
                    for (k, v) in [
                        ("mtu", r.mtu),
                        ("advmss", r.advmss),
                        ("priority", r.priority),
                        ("table", r.table),
                    ] {
                        if let Some(v) = v {
                            o.insert(k.into(), json!(v));
                        }
                    }
                    if let Some(scope) = r.scope {
                        o.insert("scope".into(), json!(scope));
                    }
                }
                Value::Object(o)
            })
            .collect();
        let mut out = Map::new();
        out.insert("cniVersion".into(), json!(version.to_string()));
        out.insert("interfaces".into(), Value::Array(interfaces));
        out.insert("ips".into(), Value::Array(ips));
        out.insert("routes".into(), Value::Array(routes));
        out.insert(
            "dns".into(),
            serde_json::to_value(&self.dns).unwrap_or_else(|_| json!({})),
        );
        Value::Object(out)
    }

    /// Reads a result of any supported version (0.3.0 and later), e.g. a
    /// `prevResult`. Unknown keys are ignored; `ips[].version` is checked
    /// against the address when present.
    pub fn from_json(value: &Value) -> Result<CniResult> {
        let decode = |what: &str, e: serde_json::Error| {
            Error::Decode(format!("cannot decode prevResult {what}: {e}"))
        };
        let Some(obj) = value.as_object() else {
            return Err(Error::Decode("prevResult is not a JSON object".into()));
        };
        if obj.contains_key("ip4") || obj.contains_key("ip6") {
            return Err(Error::Decode(
                "prevResult is a 0.2.0 result (ip4/ip6), which this plugin cannot read".into(),
            ));
        }
        let field = |k: &str| obj.get(k).cloned().filter(|v| !v.is_null());
        let interfaces: Vec<Interface> = match field("interfaces") {
            Some(v) => serde_json::from_value(v).map_err(|e| decode("interfaces", e))?,
            None => Vec::new(),
        };
        let mut ips = Vec::new();
        if let Some(v) = field("ips") {
            let raw: Vec<Value> = serde_json::from_value(v).map_err(|e| decode("ips", e))?;
            for mut item in raw {
                let version = item.as_object_mut().and_then(|o| o.remove("version"));
                let ip: IpConfig = serde_json::from_value(item).map_err(|e| decode("ips", e))?;
                if let Some(v) = version {
                    let want = if ip.address.addr().is_ipv4() {
                        "4"
                    } else {
                        "6"
                    };
                    if v.as_str() != Some(want) {
                        return Err(Error::Decode(format!(
                            "prevResult ip {} has version {v}",
                            ip.address
                        )));
                    }
                }
                ips.push(ip);
            }
        }
        let routes: Vec<Route> = match field("routes") {
            Some(v) => serde_json::from_value(v).map_err(|e| decode("routes", e))?,
            None => Vec::new(),
        };
        let dns: Dns = match field("dns") {
            Some(v) => serde_json::from_value(v).map_err(|e| decode("dns", e))?,
            None => Dns::default(),
        };
        Ok(CniResult {
            interfaces,
            ips,
            routes,
            dns,
        })
    }

    /// Appends `other` (this plugin's own result) to a previous plugin's
    /// result, shifting `other`'s interface indexes past ours.
    pub fn merged_with(mut self, other: CniResult) -> CniResult {
        let shift = self.interfaces.len();
        self.interfaces.extend(other.interfaces);
        self.ips.extend(other.ips.into_iter().map(|mut ip| {
            ip.interface = ip.interface.map(|i| i + shift);
            ip
        }));
        self.routes.extend(other.routes);
        if self.dns.is_empty() {
            self.dns = other.dns;
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![
                Interface {
                    name: "fer0123456789a".into(),
                    mac: Some("aa:bb:cc:dd:ee:ff".into()),
                    mtu: Some(1400),
                    ..Default::default()
                },
                Interface {
                    name: "eth0".into(),
                    mac: Some("11:22:33:44:55:66".into()),
                    sandbox: Some("/var/run/netns/p".into()),
                    mtu: Some(1400),
                    ..Default::default()
                },
            ],
            ips: vec![
                IpConfig {
                    address: "10.1.0.5/32".parse().expect("test literal"),
                    gateway: Some("169.254.1.1".parse().expect("test literal")),
                    interface: Some(1),
                },
                IpConfig {
                    address: "fd00::5/128".parse().expect("test literal"),
                    gateway: Some("fe80::1".parse().expect("test literal")),
                    interface: Some(1),
                },
            ],
            routes: vec![Route {
                table: Some(254),
                ..Route::new("0.0.0.0/0".parse().expect("test literal"), None)
            }],
            dns: Dns {
                nameservers: vec!["10.96.0.10".into()],
                ..Default::default()
            },
        }
    }

    #[test]
    fn versioned_shapes() {
        let r = sample();
        let old = r.to_json(Version(0, 3, 1));
        assert_eq!(old["cniVersion"], "0.3.1");
        assert_eq!(old["ips"][0]["version"], "4");
        assert_eq!(old["ips"][1]["version"], "6");
        assert!(old["interfaces"][0].get("mtu").is_none());
        assert!(old["routes"][0].get("table").is_none());
        let v1 = r.to_json(Version::V1_0_0);
        assert!(v1["ips"][0].get("version").is_none());
        assert!(v1["interfaces"][1].get("mtu").is_none());
        let v11 = r.to_json(Version::V1_1_0);
        assert_eq!(v11["interfaces"][1]["mtu"], 1400);
        assert_eq!(v11["routes"][0]["table"], 254);
        assert_eq!(v11["dns"]["nameservers"][0], "10.96.0.10");
        // And back, from every shape.
        for v in [Version(0, 3, 0), Version::V0_4_0, Version::V1_0_0] {
            let back = CniResult::from_json(&r.to_json(v)).ok();
            assert_eq!(back.as_ref().map(|b| b.ips.clone()), Some(r.ips.clone()));
        }
        assert_eq!(CniResult::from_json(&v11).ok(), Some(r));
    }

    #[test]
    fn merge_shifts_indexes() {
        let prev = CniResult {
            interfaces: vec![Interface {
                name: "other".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let merged = prev.merged_with(sample());
        assert_eq!(merged.interfaces.len(), 3);
        assert_eq!(merged.ips[0].interface, Some(2));
    }

    #[test]
    fn rejects_bad_prev_results() {
        assert_eq!(
            CniResult::from_json(&json!({"ip4": {}}))
                .err()
                .map(|e| e.code()),
            Some(6)
        );
        assert_eq!(
            CniResult::from_json(&json!({"ips": [{"version": "6", "address": "10.0.0.1/32"}]}))
                .err()
                .map(|e| e.code()),
            Some(6)
        );
        assert_eq!(
            CniResult::from_json(&json!([])).err().map(|e| e.code()),
            Some(6)
        );
    }
}
