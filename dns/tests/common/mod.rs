//! What the DNS integration tests share: a world with ferry-apiserver and
//! ferry-dns in its node's namespace, and `dig` with its answer parsed.

#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

use ferry_testbed::{Cni, ControlPlane, Netns, Pod, Process, World, binary};
use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RecordType};
use serde_json::{Value, json};

pub const NS: &str = "dns-test";

/// One resource record as dig prints it.
#[derive(Clone, Debug, PartialEq)]
pub struct Rr {
    pub name: String,
    pub ttl: u32,
    pub rtype: String,
    pub data: String,
}

/// A reply as dig printed it.
#[derive(Clone, Debug, Default)]
pub struct Reply {
    pub status: String,
    pub flags: Vec<String>,
    /// The OPT record's UDP size, when the reply had one.
    pub edns_udp: Option<u32>,
    pub answer: Vec<Rr>,
    pub authority: Vec<Rr>,
    pub additional: Vec<Rr>,
}

impl Reply {
    /// The answer records' data, sorted.
    pub fn data(&self) -> Vec<String> {
        let mut v: Vec<String> = self.answer.iter().map(|r| r.data.clone()).collect();
        v.sort();
        v
    }

    pub fn is_nodata(&self) -> bool {
        self.status == "NOERROR"
            && self.answer.is_empty()
            && self.authority.len() == 1
            && self.authority[0].rtype == "SOA"
    }

    pub fn is_nxdomain(&self) -> bool {
        self.status == "NXDOMAIN" && self.authority.len() == 1 && self.authority[0].rtype == "SOA"
    }
}

pub fn parse_dig(text: &str) -> Reply {
    let mut reply = Reply::default();
    let mut section = "";
    for line in text.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix(";; ->>HEADER<<-") {
            if let Some(s) = rest.split("status: ").nth(1) {
                reply.status = s.split(',').next().unwrap_or_default().trim().to_string();
            }
        } else if let Some(rest) = line.strip_prefix(";; flags:") {
            let flags = rest.split(';').next().unwrap_or_default();
            reply.flags = flags.split_whitespace().map(str::to_string).collect();
        } else if let Some(rest) = line.strip_prefix("; EDNS:") {
            reply.edns_udp = rest
                .split("udp: ")
                .nth(1)
                .and_then(|u| u.trim().parse().ok());
        } else if line.starts_with(";; ") && line.ends_with("SECTION:") {
            section = if line.contains("ANSWER") {
                "answer"
            } else if line.contains("AUTHORITY") {
                "authority"
            } else if line.contains("ADDITIONAL") {
                "additional"
            } else {
                ""
            };
        } else if !line.is_empty() && !line.starts_with(';') {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 5 {
                continue;
            }
            let rr = Rr {
                name: f[0].to_string(),
                ttl: f[1].parse().unwrap_or(u32::MAX),
                rtype: f[3].to_string(),
                data: f[4..].join(" "),
            };
            match section {
                "answer" => reply.answer.push(rr),
                "authority" => reply.authority.push(rr),
                "additional" => reply.additional.push(rr),
                _ => {}
            }
        }
    }
    reply
}

/// `dig @server name type` from inside `netns`, with `extra` options.
pub fn dig(netns: &Netns, server: SocketAddr, name: &str, qtype: &str, extra: &[&str]) -> Reply {
    let at = format!("@{}", server.ip());
    let port = server.port().to_string();
    let mut args = vec![
        "dig",
        &at,
        "-p",
        &port,
        name,
        qtype,
        "+time=3",
        "+tries=1",
        "+nocookie",
    ];
    args.extend_from_slice(extra);
    let out = netns.exec(args).expect("dig");
    let reply = parse_dig(&out);
    assert!(
        !reply.status.is_empty(),
        "no reply to {name} {qtype}:\n{out}"
    );
    reply
}

/// Like [`dig`], `None` when nothing answered.
pub fn try_dig(netns: &Netns, server: SocketAddr, name: &str, qtype: &str) -> Option<Reply> {
    let at = format!("@{}", server.ip());
    let port = server.port().to_string();
    let out = netns
        .exec(["dig", &at, "-p", &port, name, qtype, "+time=1", "+tries=1"])
        .ok()?;
    let reply = parse_dig(&out);
    (!reply.status.is_empty()).then_some(reply)
}

/// One query through hickory's message types over UDP or TCP, from inside
/// `netns`: the response, parsed.
pub fn hickory_query(
    netns: &Netns,
    server: SocketAddr,
    name: &str,
    qtype: RecordType,
    tcp: bool,
) -> Message {
    let mut msg = Message::query();
    msg.metadata.id = 0x4242;
    msg.metadata.recursion_desired = true;
    msg.add_query(Query::query(Name::from_ascii(name).expect("name"), qtype));
    let bytes = msg.to_vec().expect("encode");
    let reply = netns
        .in_netns(move || raw_exchange(server, &bytes, tcp))
        .expect("netns")
        .expect("exchange");
    Message::from_vec(&reply).expect("parse reply")
}

/// Sends `bytes` and returns the reply (UDP, or TCP with length framing).
pub fn raw_exchange(server: SocketAddr, bytes: &[u8], tcp: bool) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Write};
    let timeout = Duration::from_secs(3);
    if tcp {
        let mut s = std::net::TcpStream::connect_timeout(&server, timeout)?;
        s.set_read_timeout(Some(timeout))?;
        let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(bytes);
        s.write_all(&framed)?;
        let mut len = [0u8; 2];
        s.read_exact(&mut len)?;
        let mut out = vec![0u8; u16::from_be_bytes(len) as usize];
        s.read_exact(&mut out)?;
        Ok(out)
    } else {
        let local: SocketAddr = if server.is_ipv4() {
            "0.0.0.0:0".parse().expect("addr")
        } else {
            "[::]:0".parse().expect("addr")
        };
        let s = UdpSocket::bind(local)?;
        s.set_read_timeout(Some(timeout))?;
        s.send_to(bytes, server)?;
        let mut buf = vec![0u8; 65535];
        let (n, _) = s.recv_from(&mut buf)?;
        buf.truncate(n);
        Ok(buf)
    }
}

pub fn eventually(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "{what}: not within {secs}s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// HTTP status and body of `url`, fetched from inside `netns`.
pub fn http(netns: &Netns, url: &str) -> (u16, String) {
    let out = netns
        .exec(["curl", "-s", "-m", "3", "-w", "\n%{http_code}", url])
        .unwrap_or_default();
    let (body, code) = out.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// A world of one node with `pods` pods, ferry-apiserver (dual-stack
/// service ranges) in its underlay, and the test namespace.
pub struct Cluster {
    pub world: World,
    pub cp: ControlPlane,
}

impl Cluster {
    pub fn new(pods: usize) -> Self {
        let cni_dir = binary("ferry-cni", "ferry-cni");
        let cni = Cni::ferry(cni_dir.parent().map(Path::to_path_buf).unwrap_or_default());
        let world = World::new(1, pods, cni).expect("world");
        let cp = ControlPlane::start_with(
            &world,
            &["--service-cluster-ip-range", "10.96.0.0/16,fd00:96::/108"],
        );
        cp.apply(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}));
        Self { world, cp }
    }

    pub fn node_netns(&self) -> &Netns {
        &self.world.node(0).netns
    }

    pub fn pod(&self, j: usize) -> &Pod {
        self.world.pod(0, j)
    }

    /// ferry-dns in the node's namespace on the node's address, port 53,
    /// and `127.0.0.1:9153` for HTTP; `args` are added.
    pub fn start_dns(&self, args: &[&str]) -> Dns {
        self.start_dns_under(&[], args)
    }

    /// [`start_dns`](Self::start_dns) run by `wrapper` (`prlimit ...`,
    /// which execs it, so the pid stays ferry-dns's).
    pub fn start_dns_under(&self, wrapper: &[&str], args: &[&str]) -> Dns {
        let node = self.world.node(0);
        let addr = SocketAddr::new(IpAddr::V4(node.ipv4), 53);
        let http = SocketAddr::new(IpAddr::from([127, 0, 0, 1]), 9153);
        let mut argv: Vec<String> = wrapper.iter().map(|a| (*a).to_string()).collect();
        argv.push(
            binary("ferry-dns", "ferry-dns")
                .to_string_lossy()
                .into_owned(),
        );
        argv.extend([
            "--kubeconfig".into(),
            self.cp.kubeconfig.to_string_lossy().into_owned(),
            "--listen".into(),
            addr.to_string(),
            "--metrics-listen".into(),
            http.to_string(),
        ]);
        argv.extend(args.iter().map(|a| (*a).to_string()));
        let process = node.netns.spawn(argv).expect("start ferry-dns");
        Dns {
            process,
            addr,
            http,
        }
    }

    /// Applies `obj` (kubectl apply).
    pub fn apply(&self, obj: &Value) {
        self.cp.apply(obj);
    }

    /// The Pod object for world pod `j`, with `labels` and `spec` merged in,
    /// Running and (if `ready`) Ready, so the EndpointSlice controller
    /// lists it.
    pub fn pod_object(&self, j: usize, labels: Value, spec: Value, ready: bool) {
        let pod = self.pod(j);
        let mut spec_obj = json!({"nodeName": self.world.node(0).name,
            "containers": [{"name": "c", "image": "none",
                "ports": [{"name": "pg", "containerPort": 5432}]}]});
        if let (Some(base), Some(more)) = (spec_obj.as_object_mut(), spec.as_object()) {
            base.extend(more.clone());
        }
        self.apply(&json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": pod.name, "namespace": NS, "labels": labels},
            "spec": spec_obj,
        }));
        self.set_ready(j, ready);
    }

    pub fn set_ready(&self, j: usize, ready: bool) {
        let pod = self.pod(j);
        let ips: Vec<Value> = pod
            .addrs()
            .iter()
            .map(|ip| json!({"ip": ip.to_string()}))
            .collect();
        let status = json!({"status": {
            "phase": "Running",
            "podIP": ips[0]["ip"], "podIPs": ips,
            "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
        }});
        self.cp
            .kubectl(&[
                "patch",
                "pod",
                &pod.name,
                "-n",
                NS,
                "--subresource=status",
                "--type=merge",
                "-p",
                &status.to_string(),
            ])
            .expect("pod status");
    }

    /// The cluster IPs of a Service once allocated.
    pub fn cluster_ips(&self, name: &str) -> Vec<IpAddr> {
        let out = self
            .cp
            .kubectl(&[
                "get",
                "svc",
                name,
                "-n",
                NS,
                "-o",
                "jsonpath={.spec.clusterIPs[*]}",
            ])
            .expect("get svc");
        out.split_whitespace()
            .filter_map(|s| s.parse().ok())
            .collect()
    }
}

/// A running ferry-dns.
pub struct Dns {
    pub process: Process,
    /// Where it answers DNS.
    pub addr: SocketAddr,
    /// Where /health, /ready and /metrics are.
    pub http: SocketAddr,
}

impl Dns {
    pub fn wait_ready(&self, netns: &Netns) {
        let url = format!("http://{}/ready", self.http);
        eventually("ferry-dns ready", 30, || http(netns, &url).0 == 200);
    }

    pub fn process_alive(&mut self) -> bool {
        matches!(self.process.try_wait(), Ok(None))
    }

    pub fn metrics(&self, netns: &Netns) -> String {
        http(netns, &format!("http://{}/metrics", self.http)).1
    }
}
