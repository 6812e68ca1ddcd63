//! The files a pod's containers see at `/etc/resolv.conf` and `/etc/hosts`
//! (bind-mounted in their mount namespace), as the kubelet writes them.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::Pod;

/// The node's DNS settings and the cluster's.
#[derive(Debug, Clone, Default)]
pub struct DnsSettings {
    /// `--cluster-dns`: the cluster's DNS servers (empty: none).
    pub cluster_dns: Vec<IpAddr>,
    /// `--cluster-domain`.
    pub cluster_domain: String,
    /// The node's own resolv.conf text (dnsPolicy Default).
    pub node_resolv_conf: String,
}

/// Parsed resolv.conf.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Resolv {
    nameservers: Vec<String>,
    searches: Vec<String>,
    options: Vec<String>,
}

impl Resolv {
    fn parse(text: &str) -> Self {
        let mut r = Resolv::default();
        for line in text.lines() {
            let line = line.split(['#', ';']).next().unwrap_or_default();
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => r.nameservers.extend(words.next().map(str::to_owned)),
                Some("search" | "domain") => r.searches = words.map(str::to_owned).collect(),
                Some("options") => r.options.extend(words.map(str::to_owned)),
                _ => {}
            }
        }
        r
    }

    fn render(&self) -> String {
        let mut out = String::new();
        for ns in &self.nameservers {
            out.push_str(&format!("nameserver {ns}\n"));
        }
        if !self.searches.is_empty() {
            out.push_str(&format!("search {}\n", self.searches.join(" ")));
        }
        if !self.options.is_empty() {
            out.push_str(&format!("options {}\n", self.options.join(" ")));
        }
        out
    }
}

/// The pod's resolv.conf per its dnsPolicy (ClusterFirst when unset;
/// ClusterFirst falls back to Default when no cluster DNS is configured,
/// and a hostNetwork pod needs ClusterFirstWithHostNet for the cluster's),
/// with `dnsConfig` merged in.
pub fn resolv_conf(pod: &Pod, dns: &DnsSettings) -> String {
    let spec = pod.spec.as_ref();
    let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);
    let policy = spec
        .and_then(|s| s.dns_policy.as_deref())
        .unwrap_or("ClusterFirst");
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let zone = dns.cluster_domain.trim_matches('.');
    let cluster = |r: &mut Resolv| {
        r.nameservers = dns.cluster_dns.iter().map(ToString::to_string).collect();
        let node = Resolv::parse(&dns.node_resolv_conf);
        r.searches = vec![
            format!("{namespace}.svc.{zone}"),
            format!("svc.{zone}"),
            zone.to_owned(),
        ];
        // The node's search domains follow the cluster's, as upstream.
        r.searches.extend(node.searches);
        r.options = vec!["ndots:5".into()];
    };
    let mut r = Resolv::default();
    match policy {
        "None" => {}
        "ClusterFirstWithHostNet" if !dns.cluster_dns.is_empty() => cluster(&mut r),
        "ClusterFirst" if !dns.cluster_dns.is_empty() && !host_network => cluster(&mut r),
        _ => r = Resolv::parse(&dns.node_resolv_conf),
    }
    if let Some(cfg) = spec.and_then(|s| s.dns_config.as_ref()) {
        for ns in cfg.nameservers.iter().flatten() {
            if !r.nameservers.contains(ns) {
                r.nameservers.push(ns.clone());
            }
        }
        for s in cfg.searches.iter().flatten() {
            if !r.searches.contains(s) {
                r.searches.push(s.clone());
            }
        }
        for opt in cfg.options.iter().flatten() {
            let Some(name) = opt.name.clone().filter(|n| !n.is_empty()) else {
                continue;
            };
            let rendered = match &opt.value {
                Some(v) => format!("{name}:{v}"),
                None => name.clone(),
            };
            let key = |o: &str| o.split(':').next().unwrap_or_default().to_owned();
            r.options.retain(|o| key(o) != name);
            r.options.push(rendered);
        }
    }
    // glibc reads at most 3 nameservers and 32 search domains.
    r.nameservers.truncate(3);
    r.searches.truncate(32);
    r.render()
}

/// The pod's hostname: `spec.hostname` or its name, at most 63 bytes.
pub fn hostname(pod: &Pod) -> String {
    let name = pod
        .spec
        .as_ref()
        .and_then(|s| s.hostname.clone())
        .filter(|h| !h.is_empty())
        .or_else(|| pod.metadata.name.clone())
        .unwrap_or_else(|| "pod".into());
    let mut h: String = name.chars().take(63).collect();
    while h.ends_with(['-', '.']) {
        h.pop();
    }
    h
}

/// The kubelet-managed /etc/hosts: localhost, the pod's addresses with its
/// hostname (and FQDN under a subdomain), then `hostAliases`.
pub fn hosts(pod: &Pod, pod_ips: &[IpAddr], cluster_domain: &str) -> String {
    let mut out = String::from(
        "# Kubernetes-managed hosts file (ferry-node).\n\
         127.0.0.1\tlocalhost\n\
         ::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\n\
         fe00::0\tip6-mcastprefix\n\
         fe00::1\tip6-allnodes\n\
         fe00::2\tip6-allrouters\n",
    );
    let host = hostname(pod);
    let names = match pod
        .spec
        .as_ref()
        .and_then(|s| s.subdomain.as_deref())
        .filter(|s| !s.is_empty())
    {
        Some(sub) => {
            let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
            format!(
                "{host}.{sub}.{ns}.svc.{}\t{host}",
                cluster_domain.trim_matches('.')
            )
        }
        None => host,
    };
    for ip in pod_ips {
        out.push_str(&format!("{ip}\t{names}\n"));
    }
    let aliases = pod.spec.as_ref().and_then(|s| s.host_aliases.as_ref());
    if let Some(aliases) = aliases.filter(|a| !a.is_empty()) {
        out.push_str("\n# Entries added by HostAliases.\n");
        for a in aliases {
            let hostnames = a.hostnames.as_deref().unwrap_or_default().join("\t");
            out.push_str(&format!("{}\t{hostnames}\n", a.ip));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(
            json!({"metadata": {"name": "web-0", "namespace": "shop"}, "spec": spec}),
        )
        .expect("pod")
    }

    fn settings() -> DnsSettings {
        DnsSettings {
            cluster_dns: vec!["10.96.0.10".parse().expect("ip")],
            cluster_domain: "cluster.local".into(),
            node_resolv_conf: "nameserver 192.0.2.53\nsearch corp.example\noptions edns0\n".into(),
        }
    }

    #[test]
    fn cluster_first() {
        let text = resolv_conf(&pod(json!({"containers": []})), &settings());
        assert_eq!(
            text,
            "nameserver 10.96.0.10\n\
             search shop.svc.cluster.local svc.cluster.local cluster.local corp.example\n\
             options ndots:5\n"
        );
    }

    #[test]
    fn default_none_and_host_network() {
        let text = resolv_conf(
            &pod(json!({"dnsPolicy": "Default", "containers": []})),
            &settings(),
        );
        assert_eq!(
            text,
            "nameserver 192.0.2.53\nsearch corp.example\noptions edns0\n"
        );
        let text = resolv_conf(
            &pod(json!({"dnsPolicy": "None", "containers": [], "dnsConfig": {
                "nameservers": ["1.1.1.1"], "searches": ["a.example"],
                "options": [{"name": "ndots", "value": "2"}, {"name": "rotate"}]}})),
            &settings(),
        );
        assert_eq!(
            text,
            "nameserver 1.1.1.1\nsearch a.example\noptions ndots:2 rotate\n"
        );
        let text = resolv_conf(
            &pod(json!({"hostNetwork": true, "containers": []})),
            &settings(),
        );
        assert!(text.starts_with("nameserver 192.0.2.53"), "{text}");
    }

    #[test]
    fn hosts_file() {
        let p = pod(json!({"subdomain": "web", "containers": [],
            "hostAliases": [{"ip": "192.0.2.1", "hostnames": ["a", "b"]}]}));
        let text = hosts(&p, &["10.244.0.7".parse().expect("ip")], "cluster.local");
        assert!(text.contains("127.0.0.1\tlocalhost\n"));
        assert!(
            text.contains("10.244.0.7\tweb-0.web.shop.svc.cluster.local\tweb-0\n"),
            "{text}"
        );
        assert!(text.contains("192.0.2.1\ta\tb\n"));
    }
}
