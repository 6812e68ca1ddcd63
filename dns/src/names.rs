//! What a query name means: a name of the cluster zone (service, endpoint,
//! SRV, pod, or one of the zone's fixed names), a reverse name, or a name
//! outside, which is forwarded.
//!
//! Parsing works on the lowercased text of the name, so every lookup after it
//! is case-insensitive; Kubernetes names are lowercase already.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hickory_proto::rr::Name;

/// A name inside the cluster zone, by the labels in front of the zone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ZoneName<'a> {
    /// The zone itself.
    Apex,
    /// `dns-version.<zone>`.
    DnsVersion,
    /// `ns.dns.<zone>`, the name the zone's NS record points at.
    NameServer,
    /// `svc.<zone>`.
    Services,
    /// `pod.<zone>`.
    Pods,
    /// `<ns>.svc.<zone>`.
    ServiceNamespace { namespace: &'a str },
    /// `<ns>.pod.<zone>`.
    PodNamespace { namespace: &'a str },
    /// `<svc>.<ns>.svc.<zone>`.
    Service {
        namespace: &'a str,
        service: &'a str,
    },
    /// `<endpoint>.<svc>.<ns>.svc.<zone>`.
    Endpoint {
        namespace: &'a str,
        service: &'a str,
        endpoint: &'a str,
    },
    /// `_<port>._<proto>.<svc>.<ns>.svc.<zone>`.
    Srv {
        namespace: &'a str,
        service: &'a str,
        port: &'a str,
        protocol: &'a str,
    },
    /// `<a-b-c-d>.<ns>.pod.<zone>`; `ip` is `None` when the label is not a
    /// dashed address.
    Pod {
        namespace: &'a str,
        ip: Option<IpAddr>,
    },
    /// Anything else in the zone: it does not exist.
    Unknown,
}

/// Where a query name belongs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parsed<'a> {
    Zone(ZoneName<'a>),
    /// A complete `in-addr.arpa` or `ip6.arpa` name.
    Reverse(IpAddr),
    /// Outside the zone (including partial reverse names).
    Outside,
}

/// The lowercased, dot-joined text of `name` without the trailing dot;
/// `None` for a label that cannot be a Kubernetes name (a dot or a byte
/// outside printable ASCII inside it), which then matches nothing.
pub fn lower_text(name: &Name) -> Option<String> {
    let mut out = String::with_capacity(name.len());
    for label in name.iter() {
        if !out.is_empty() {
            out.push('.');
        }
        for &b in label {
            if b == b'.' || !b.is_ascii_graphic() {
                return None;
            }
            out.push(b.to_ascii_lowercase() as char);
        }
    }
    Some(out)
}

/// Parses `text` (from [`lower_text`]) against `zone` (lowercase, no
/// trailing dot).
pub fn parse<'a>(text: &'a str, zone: &str) -> Parsed<'a> {
    if let Some(ip) = reverse(text) {
        return Parsed::Reverse(ip);
    }
    let rest = if text == zone {
        ""
    } else if let Some(head) = text
        .strip_suffix(zone)
        .and_then(|h| h.strip_suffix('.'))
        .filter(|_| !zone.is_empty())
    {
        head
    } else if zone.is_empty() {
        text
    } else {
        return Parsed::Outside;
    };
    Parsed::Zone(zone_name(rest))
}

fn zone_name(rest: &str) -> ZoneName<'_> {
    if rest.is_empty() {
        return ZoneName::Apex;
    }
    // Labels from the zone outwards: the last label is the kind.
    let mut labels = rest.rsplit('.');
    let kind = labels.next().unwrap_or_default();
    // At most four labels in front of the kind mean anything; a fixed
    // array keeps the query path free of allocations here.
    let mut l: [&str; 4] = [""; 4];
    let mut n = 0;
    for label in labels {
        if n == l.len() {
            return ZoneName::Unknown;
        }
        l[n] = label;
        n += 1;
    }
    match (kind, &l[..n]) {
        ("dns-version", []) => ZoneName::DnsVersion,
        ("dns", ["ns"]) => ZoneName::NameServer,
        ("svc", []) => ZoneName::Services,
        ("pod", []) => ZoneName::Pods,
        ("svc", [ns]) => ZoneName::ServiceNamespace { namespace: ns },
        ("pod", [ns]) => ZoneName::PodNamespace { namespace: ns },
        ("svc", [ns, svc]) => ZoneName::Service {
            namespace: ns,
            service: svc,
        },
        ("svc", [ns, svc, endpoint]) => ZoneName::Endpoint {
            namespace: ns,
            service: svc,
            endpoint,
        },
        // CoreDNS reads two labels in front of the service as port and
        // protocol, each losing one leading underscore if it has one.
        ("svc", [ns, svc, proto, port]) => ZoneName::Srv {
            namespace: ns,
            service: svc,
            port: port.strip_prefix('_').unwrap_or(port),
            protocol: proto.strip_prefix('_').unwrap_or(proto),
        },
        ("pod", [ns, pod]) => ZoneName::Pod {
            namespace: ns,
            ip: undash(pod),
        },
        _ => ZoneName::Unknown,
    }
}

/// `10-1-2-3` → 10.1.2.3; `fd00--1` → fd00::1 (an IPv6 address with its
/// colons written as dashes, as pod and endpoint names spell them).
pub fn undash(label: &str) -> Option<IpAddr> {
    if label.contains('.') || label.contains(':') {
        return None;
    }
    let dotted = label.replace('-', ".");
    if let Ok(v4) = dotted.parse::<Ipv4Addr>() {
        return Some(IpAddr::V4(v4));
    }
    label
        .replace('-', ":")
        .parse::<Ipv6Addr>()
        .ok()
        .map(IpAddr::V6)
}

/// The dashed label for an address: the inverse of [`undash`] (IPv6 in its
/// compressed form, `::` as `--`).
pub fn dash(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string().replace('.', "-"),
        IpAddr::V6(v6) => v6.to_string().replace(':', "-"),
    }
}

/// A complete reverse name: four octets under `in-addr.arpa`, 32 nibbles
/// under `ip6.arpa`.
fn reverse(text: &str) -> Option<IpAddr> {
    if let Some(head) = text.strip_suffix(".in-addr.arpa") {
        let mut octets = [0u8; 4];
        let mut n = 0;
        for label in head.split('.') {
            if n == 4 || label.is_empty() || (label.len() > 1 && label.starts_with('0')) {
                return None;
            }
            octets[3 - n] = label.parse().ok()?;
            n += 1;
        }
        return (n == 4).then(|| IpAddr::V4(Ipv4Addr::from(octets)));
    }
    let head = text.strip_suffix(".ip6.arpa")?;
    let mut value: u128 = 0;
    let mut n = 0;
    for label in head.split('.') {
        let [c] = label.as_bytes() else {
            return None;
        };
        let nibble = (*c as char).to_digit(16)?;
        if n == 32 {
            return None;
        }
        // The first label is the lowest nibble.
        value |= u128::from(nibble) << (4 * n);
        n += 1;
    }
    (n == 32).then(|| IpAddr::V6(Ipv6Addr::from(value)))
}

/// The reverse name of an address, as PTR owners are written.
pub fn reverse_name(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            format!("{d}.{c}.{b}.{a}.in-addr.arpa.")
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let mut out = String::with_capacity(72);
            for i in 0..32 {
                let nibble = (bits >> (4 * i)) & 0xf;
                out.push(char::from_digit(nibble as u32, 16).unwrap_or('0'));
                out.push('.');
            }
            out.push_str("ip6.arpa.");
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Parsed<'_> {
        parse(text, "cluster.local")
    }

    #[test]
    fn zone_names() {
        assert_eq!(p("cluster.local"), Parsed::Zone(ZoneName::Apex));
        assert_eq!(
            p("dns-version.cluster.local"),
            Parsed::Zone(ZoneName::DnsVersion)
        );
        assert_eq!(p("svc.cluster.local"), Parsed::Zone(ZoneName::Services));
        assert_eq!(
            p("default.svc.cluster.local"),
            Parsed::Zone(ZoneName::ServiceNamespace {
                namespace: "default"
            })
        );
        assert_eq!(
            p("web.default.svc.cluster.local"),
            Parsed::Zone(ZoneName::Service {
                namespace: "default",
                service: "web"
            })
        );
        assert_eq!(
            p("web-0.web.default.svc.cluster.local"),
            Parsed::Zone(ZoneName::Endpoint {
                namespace: "default",
                service: "web",
                endpoint: "web-0"
            })
        );
        assert_eq!(
            p("_http._tcp.web.default.svc.cluster.local"),
            Parsed::Zone(ZoneName::Srv {
                namespace: "default",
                service: "web",
                port: "http",
                protocol: "tcp"
            })
        );
        assert_eq!(
            p("10-0-0-1.default.pod.cluster.local"),
            Parsed::Zone(ZoneName::Pod {
                namespace: "default",
                ip: Some("10.0.0.1".parse().expect("ip"))
            })
        );
        assert_eq!(
            p("x.y.z.web.default.svc.cluster.local"),
            Parsed::Zone(ZoneName::Unknown)
        );
        assert_eq!(
            p("http.tcp.web.default.svc.cluster.local"),
            p("_http._tcp.web.default.svc.cluster.local")
        );
        assert_eq!(p("example.com"), Parsed::Outside);
        assert_eq!(p("notcluster.local"), Parsed::Outside);
        assert_eq!(p("local"), Parsed::Outside);
    }

    #[test]
    fn dashed_addresses() {
        assert_eq!(undash("10-1-2-3"), Some("10.1.2.3".parse().expect("ip")));
        assert_eq!(undash("fd00--1"), Some("fd00::1".parse().expect("ip")));
        assert_eq!(undash("10-1-2"), None);
        assert_eq!(undash("300-1-2-3"), None);
        assert_eq!(undash("web-0"), None);
        for ip in ["10.1.2.3", "fd00::1", "2001:db8:0:1::a"] {
            let ip: IpAddr = ip.parse().expect("ip");
            assert_eq!(undash(&dash(ip)), Some(ip));
        }
    }

    #[test]
    fn reverse_names() {
        assert_eq!(
            p("4.3.2.10.in-addr.arpa"),
            Parsed::Reverse("10.2.3.4".parse().expect("ip"))
        );
        assert_eq!(p("3.2.10.in-addr.arpa"), Parsed::Outside);
        assert_eq!(p("04.3.2.10.in-addr.arpa"), Parsed::Outside);
        for ip in ["10.2.3.4", "fd00::1", "2001:db8::ff00:42:8329"] {
            let ip: IpAddr = ip.parse().expect("ip");
            let name = reverse_name(ip);
            assert_eq!(p(name.trim_end_matches('.')), Parsed::Reverse(ip), "{name}");
        }
        assert_eq!(p("1.0.0.d.f.ip6.arpa"), Parsed::Outside);
    }

    #[test]
    fn case_and_odd_labels() {
        let name = Name::from_ascii("WeB.DeFault.SVC.cluster.LOCAL.").expect("name");
        assert_eq!(
            lower_text(&name).as_deref(),
            Some("web.default.svc.cluster.local")
        );
        let odd = Name::from_labels(vec![b"a.b".to_vec(), b"svc".to_vec()]).expect("name");
        assert_eq!(lower_text(&odd), None);
        assert_eq!(lower_text(&Name::root()).as_deref(), Some(""));
    }
}
