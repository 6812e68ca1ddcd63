//! Settings: what CoreDNS's default Kubernetes Corefile expresses (zone, TTL,
//! pods mode, upstreams, cache, namespaces filter, listen addresses), read
//! from a TOML file and overridden by flags, then validated into
//! [`Settings`]. Every error names the setting it is about.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

/// How `a-b-c-d.<ns>.pod.<zone>` names are answered (CoreDNS's `pods`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PodsMode {
    /// Any well-formed address in an existing namespace.
    #[default]
    Insecure,
    /// Only the address of a pod in that namespace.
    Verified,
    /// Never (NXDOMAIN).
    Disabled,
}

/// The settings file, each field optional; unknown keys are errors so a
/// misspelt setting is not silently ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct File {
    pub zone: Option<String>,
    pub ttl: Option<u32>,
    pub pods: Option<PodsMode>,
    pub upstreams: Option<Vec<String>>,
    pub resolv_conf: Option<PathBuf>,
    pub cache_size: Option<usize>,
    pub cache_ttl: Option<u64>,
    pub namespaces: Option<Vec<String>>,
    pub listen: Option<Vec<String>>,
    pub metrics_listen: Option<String>,
    pub max_concurrent: Option<usize>,
    pub tcp_idle_timeout: Option<u64>,
    pub tcp_max_connections: Option<usize>,
    pub http_header_timeout: Option<u64>,
    pub http_max_connections: Option<usize>,
}

/// The same settings as flags; a flag wins over the file.
#[derive(Debug, Default, clap::Args)]
pub struct Flags {
    /// The cluster zone [default: cluster.local].
    #[arg(long)]
    pub zone: Option<String>,
    /// TTL of the zone's answers, 0-3600 s [default: 30].
    #[arg(long)]
    pub ttl: Option<u32>,
    /// Pod records: insecure, verified or disabled [default: insecure].
    #[arg(long, value_enum)]
    pub pods: Option<PodsMode>,
    /// Upstream resolver ADDR[:PORT], repeatable [default: the nameservers
    /// of --resolv-conf].
    #[arg(long = "upstream")]
    pub upstreams: Vec<String>,
    /// Where upstreams come from when none are given [default: /etc/resolv.conf].
    #[arg(long)]
    pub resolv_conf: Option<PathBuf>,
    /// Forwarded answers kept, entries; 0 turns the cache off [default: 9984].
    #[arg(long)]
    pub cache_size: Option<usize>,
    /// Longest a forwarded answer is cached, seconds [default: 30].
    #[arg(long)]
    pub cache_ttl: Option<u64>,
    /// Only these namespaces are answered for, repeatable [default: all].
    #[arg(long = "namespace")]
    pub namespaces: Vec<String>,
    /// UDP and TCP address to serve DNS on, repeatable [default: 0.0.0.0:53].
    #[arg(long)]
    pub listen: Vec<String>,
    /// Address of /health, /ready and /metrics [default: 0.0.0.0:9153].
    #[arg(long)]
    pub metrics_listen: Option<String>,
    /// Queries forwarded upstream at once; beyond it, REFUSED at once
    /// (CoreDNS's `max_concurrent`) [default: 1000].
    #[arg(long)]
    pub max_concurrent: Option<usize>,
    /// A DNS-over-TCP client must send each query (and read each answer)
    /// within this many seconds [default: 10].
    #[arg(long)]
    pub tcp_idle_timeout: Option<u64>,
    /// DNS-over-TCP connections open at once; beyond it new ones wait in the
    /// listen backlog [default: 256].
    #[arg(long)]
    pub tcp_max_connections: Option<usize>,
    /// Seconds an HTTP client has to send a request head (/health, /ready,
    /// /metrics) [default: 10].
    #[arg(long)]
    pub http_header_timeout: Option<u64>,
    /// HTTP connections open at once [default: 64].
    #[arg(long)]
    pub http_max_connections: Option<usize>,
}

/// Validated settings.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// Lowercase, without the trailing dot.
    pub zone: String,
    pub ttl: u32,
    pub pods: PodsMode,
    pub upstreams: Vec<SocketAddr>,
    pub cache_size: usize,
    pub cache_ttl: Duration,
    /// `None` when every namespace is answered for.
    pub namespaces: Option<BTreeSet<String>>,
    pub listen: Vec<SocketAddr>,
    pub metrics_listen: SocketAddr,
    /// Queries forwarded at once.
    pub max_concurrent: usize,
    /// Per query (and answer) on a DNS-over-TCP connection.
    pub tcp_idle_timeout: Duration,
    pub tcp_max_connections: usize,
    pub http_header_timeout: Duration,
    pub http_max_connections: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("setting `{setting}`: {message}")]
    Invalid {
        setting: &'static str,
        message: String,
    },
}

fn invalid(setting: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        setting,
        message: message.into(),
    }
}

/// CoreDNS's `kubernetes` plugin caps `ttl` here.
const MAX_TTL: u32 = 3600;

impl File {
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source: Box::new(source),
        })
    }

    pub fn parse(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }
}

impl Settings {
    /// `file` overridden by `flags`, with the defaults of CoreDNS's default
    /// Kubernetes Corefile for what neither sets.
    pub fn resolve(file: File, flags: Flags) -> Result<Self, ConfigError> {
        let zone = flags
            .zone
            .or(file.zone)
            .unwrap_or_else(|| "cluster.local".into());
        let zone = zone.trim_end_matches('.').to_ascii_lowercase();
        if zone.is_empty()
            || zone.split('.').any(|l| {
                l.is_empty()
                    || l.len() > 63
                    || !l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            })
        {
            return Err(invalid("zone", format!("{zone:?} is not a domain name")));
        }
        let ttl = flags.ttl.or(file.ttl).unwrap_or(30);
        if ttl > MAX_TTL {
            return Err(invalid("ttl", format!("{ttl} is above {MAX_TTL} seconds")));
        }
        let upstream_texts = if flags.upstreams.is_empty() {
            file.upstreams
        } else {
            Some(flags.upstreams)
        };
        let upstreams = match upstream_texts {
            Some(list) => list
                .iter()
                .map(|u| parse_addr(u, 53).map_err(|m| invalid("upstreams", m)))
                .collect::<Result<Vec<_>, _>>()?,
            None => {
                let path = flags
                    .resolv_conf
                    .or(file.resolv_conf)
                    .unwrap_or_else(|| PathBuf::from("/etc/resolv.conf"));
                match std::fs::read_to_string(&path) {
                    Ok(text) => nameservers(&text),
                    // No resolv.conf: nothing to forward to, which the
                    // server answers with REFUSED.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                    Err(e) => {
                        return Err(invalid(
                            "resolv-conf",
                            format!("reading {}: {e}", path.display()),
                        ));
                    }
                }
            }
        };
        let namespaces = if flags.namespaces.is_empty() {
            file.namespaces
        } else {
            Some(flags.namespaces)
        };
        let namespaces = match namespaces {
            Some(list) if !list.is_empty() => {
                if let Some(bad) = list.iter().find(|n| !is_dns_label(n)) {
                    return Err(invalid(
                        "namespaces",
                        format!("{bad:?} is not a namespace name"),
                    ));
                }
                Some(list.into_iter().collect())
            }
            _ => None,
        };
        let listen_texts = if flags.listen.is_empty() {
            file.listen.unwrap_or_else(|| vec!["0.0.0.0:53".into()])
        } else {
            flags.listen
        };
        if listen_texts.is_empty() {
            return Err(invalid("listen", "at least one address is needed"));
        }
        let listen = listen_texts
            .iter()
            .map(|l| parse_addr(l, 53).map_err(|m| invalid("listen", m)))
            .collect::<Result<Vec<_>, _>>()?;
        let metrics_listen = flags
            .metrics_listen
            .or(file.metrics_listen)
            .unwrap_or_else(|| "0.0.0.0:9153".into());
        let metrics_listen =
            parse_addr(&metrics_listen, 9153).map_err(|m| invalid("metrics-listen", m))?;
        let cache_ttl = flags.cache_ttl.or(file.cache_ttl).unwrap_or(30);
        if cache_ttl == 0 || cache_ttl > 86_400 {
            return Err(invalid(
                "cache-ttl",
                format!("{cache_ttl} is not between 1 and 86400 seconds"),
            ));
        }
        let max_concurrent = within(
            "max-concurrent",
            flags.max_concurrent.or(file.max_concurrent).unwrap_or(1000),
            1,
            100_000,
        )?;
        let tcp_idle_timeout = within(
            "tcp-idle-timeout",
            flags
                .tcp_idle_timeout
                .or(file.tcp_idle_timeout)
                .unwrap_or(10),
            1,
            300,
        )?;
        let tcp_max_connections = within(
            "tcp-max-connections",
            flags
                .tcp_max_connections
                .or(file.tcp_max_connections)
                .unwrap_or(256),
            1,
            65_536,
        )?;
        let http_header_timeout = within(
            "http-header-timeout",
            flags
                .http_header_timeout
                .or(file.http_header_timeout)
                .unwrap_or(10),
            1,
            300,
        )?;
        let http_max_connections = within(
            "http-max-connections",
            flags
                .http_max_connections
                .or(file.http_max_connections)
                .unwrap_or(64),
            1,
            4096,
        )?;
        Ok(Self {
            max_concurrent,
            tcp_idle_timeout: Duration::from_secs(tcp_idle_timeout),
            tcp_max_connections,
            http_header_timeout: Duration::from_secs(http_header_timeout),
            http_max_connections,
            zone,
            ttl,
            pods: flags.pods.or(file.pods).unwrap_or_default(),
            upstreams,
            cache_size: flags.cache_size.or(file.cache_size).unwrap_or(9984),
            cache_ttl: Duration::from_secs(cache_ttl),
            namespaces,
            listen,
            metrics_listen,
        })
    }
}

/// `value` if it lies in `min..=max`, else an error naming `setting`.
fn within<T: PartialOrd + std::fmt::Display + Copy>(
    setting: &'static str,
    value: T,
    min: T,
    max: T,
) -> Result<T, ConfigError> {
    if value < min || value > max {
        return Err(invalid(
            setting,
            format!("{value} is not between {min} and {max}"),
        ));
    }
    Ok(value)
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// `ADDR`, `ADDR:PORT`, `[V6]:PORT` or bare `V6`.
pub fn parse_addr(text: &str, default_port: u16) -> Result<SocketAddr, String> {
    if let Ok(addr) = SocketAddr::from_str(text) {
        return Ok(addr);
    }
    if let Ok(ip) = IpAddr::from_str(text.trim_start_matches('[').trim_end_matches(']')) {
        return Ok(SocketAddr::new(ip, default_port));
    }
    // CoreDNS writes a listen address as `:53`: every address.
    if let Some(port) = text.strip_prefix(':')
        && let Ok(port) = port.parse()
    {
        return Ok(SocketAddr::new(IpAddr::from([0, 0, 0, 0]), port));
    }
    Err(format!(
        "{text:?} is not an address (ADDR, ADDR:PORT or [IPV6]:PORT)"
    ))
}

/// The `nameserver` lines of a resolv.conf.
pub fn nameservers(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next()? == "nameserver").then_some(())?;
            // A zone index (fe80::1%eth0) cannot be given to a socket here.
            let ip = words.next()?.split('%').next()?;
            IpAddr::from_str(ip).ok().map(|ip| SocketAddr::new(ip, 53))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags() -> Flags {
        Flags {
            resolv_conf: Some(PathBuf::from("/nonexistent/resolv.conf")),
            ..Flags::default()
        }
    }

    #[test]
    fn defaults_follow_the_default_corefile() {
        let s = Settings::resolve(File::default(), flags()).expect("settings");
        assert_eq!(s.zone, "cluster.local");
        assert_eq!(s.ttl, 30);
        assert_eq!(s.pods, PodsMode::Insecure);
        assert_eq!(s.cache_size, 9984);
        assert_eq!(s.cache_ttl, Duration::from_secs(30));
        assert_eq!(s.listen, vec!["0.0.0.0:53".parse().expect("addr")]);
        assert!(s.upstreams.is_empty());
        assert_eq!(s.namespaces, None);
    }

    #[test]
    fn flags_win_over_the_file() {
        let file = File::parse(
            r#"
            zone = "Cluster.Example."
            ttl = 5
            pods = "verified"
            upstreams = ["10.0.0.10", "[fd00::53]:5353"]
            namespaces = ["default", "kube-system"]
            listen = ["127.0.0.1:5353"]
            cache-size = 100
            "#,
        )
        .expect("parse");
        let s = Settings::resolve(
            file,
            Flags {
                ttl: Some(7),
                upstreams: vec!["192.0.2.1:53".into()],
                ..flags()
            },
        )
        .expect("settings");
        assert_eq!(s.zone, "cluster.example");
        assert_eq!(s.ttl, 7);
        assert_eq!(s.pods, PodsMode::Verified);
        assert_eq!(s.upstreams, vec!["192.0.2.1:53".parse().expect("addr")]);
        assert_eq!(s.cache_size, 100);
        assert_eq!(
            s.namespaces,
            Some(["default".to_string(), "kube-system".to_string()].into())
        );
        assert_eq!(s.listen, vec!["127.0.0.1:5353".parse().expect("addr")]);
    }

    #[test]
    fn bad_settings_are_named() {
        let cases: &[(&str, &str)] = &[
            ("ttl = 4000", "`ttl`"),
            (r#"zone = "a..b""#, "`zone`"),
            (r#"upstreams = ["not-an-ip"]"#, "`upstreams`"),
            (r#"listen = ["1.2.3.4:99999"]"#, "`listen`"),
            (r#"namespaces = ["Bad_NS"]"#, "`namespaces`"),
            ("cache-ttl = 0", "`cache-ttl`"),
            ("max-concurrent = 0", "`max-concurrent`"),
            ("tcp-idle-timeout = 0", "`tcp-idle-timeout`"),
            ("tcp-max-connections = 0", "`tcp-max-connections`"),
            ("http-header-timeout = 301", "`http-header-timeout`"),
            ("http-max-connections = 0", "`http-max-connections`"),
        ];
        for (text, setting) in cases {
            let file = File::parse(text).expect(text);
            let err = Settings::resolve(file, flags()).expect_err(text);
            assert!(err.to_string().contains(setting), "{text}: {err}");
        }
        let err = File::parse("tll = 5").expect_err("unknown key");
        assert!(err.to_string().contains("tll"), "{err}");
        let err = File::parse(r#"pods = "sometimes""#).expect_err("bad mode");
        assert!(err.to_string().contains("sometimes"), "{err}");
    }

    #[test]
    fn limits_default_and_come_from_the_file_or_flags() {
        let s = Settings::resolve(File::default(), flags()).expect("settings");
        assert_eq!(s.max_concurrent, 1000);
        assert_eq!(s.tcp_idle_timeout, Duration::from_secs(10));
        assert_eq!(s.tcp_max_connections, 256);
        assert_eq!(s.http_header_timeout, Duration::from_secs(10));
        assert_eq!(s.http_max_connections, 64);
        let file = File::parse("max-concurrent = 50\ntcp-max-connections = 9").expect("file");
        let s = Settings::resolve(
            file,
            Flags {
                max_concurrent: Some(7),
                ..flags()
            },
        )
        .expect("settings");
        assert_eq!((s.max_concurrent, s.tcp_max_connections), (7, 9));
    }

    #[test]
    fn resolv_conf_nameservers() {
        let text = "# comment\nsearch example.com\nnameserver 10.0.0.2\nnameserver fe80::1%eth0\nnameserver bogus\noptions ndots:5\n";
        assert_eq!(
            nameservers(text),
            vec![
                "10.0.0.2:53".parse().expect("addr"),
                "[fe80::1]:53".parse().expect("addr")
            ]
        );
        assert_eq!(
            parse_addr(":1053", 53),
            Ok("0.0.0.0:1053".parse().expect("addr"))
        );
        assert_eq!(
            parse_addr("fd00::1", 53),
            Ok("[fd00::1]:53".parse().expect("addr"))
        );
    }
}
