//! `--host-access route`, with a namespace of the test's own standing in for
//! the host (the real host's network is never touched by tests): the "host"
//! reaches NodePorts at the nodes' addresses and pods at their IPs; nothing
//! is published on loopback for NodePorts; a clash with a route the host
//! already has changes nothing; and the cluster's drop leaves the "host" as
//! it was.

mod common;

use common::{TestCluster, unique_name};
use ferry_cluster::HostAccess;
use ferry_cluster::host_route::HostRoute;
use ferry_testbed::{Netns, skip_if_not_root};

/// A namespace made for the test, removed on drop.
struct FakeHost(Netns);

impl FakeHost {
    fn new() -> Self {
        let ns = Netns::named(format!("{}-host", unique_name()));
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", ns.name()])
            .output();
        let out = std::process::Command::new("ip")
            .args(["netns", "add", ns.name()])
            .output()
            .expect("ip netns add");
        assert!(out.status.success(), "{out:?}");
        ns.exec(["ip", "link", "set", "lo", "up"]).expect("lo up");
        Self(ns)
    }

    fn curl(&self, url: &str) -> Result<String, String> {
        self.0
            .exec(["curl", "-sS", "--max-time", "3", url])
            .map_err(|e| e.to_string())
    }

    /// Links and routes, as the "host" sees them.
    fn network(&self) -> String {
        let links = self.0.exec(["ip", "-o", "link", "show"]).expect("links");
        let routes = self.0.exec(["ip", "route", "show"]).expect("routes");
        let routes6 = self.0.exec(["ip", "-6", "route", "show"]).expect("routes");
        format!("{links}{routes}{routes6}")
    }
}

impl Drop for FakeHost {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", self.0.name()])
            .output();
    }
}

#[test]
fn host_access_route_reaches_node_ports_and_pods_and_leaves_nothing() {
    if skip_if_not_root() {
        return;
    }
    let host = FakeHost::new();
    let before = host.network();
    let c = TestCluster::up_settings(2, |s| {
        s.host_access = HostAccess::Route {
            host: Some(host.0.clone()),
        };
    });
    let info = c.cluster.info();
    let route = info.host_route.clone().expect("the host route in the info");
    assert!(host.network().contains(&route.link), "{}", host.network());

    c.k(&[
        "create",
        "deployment",
        "web",
        "--image=nginx",
        "--replicas=2",
    ]);
    c.k(&[
        "expose",
        "deployment",
        "web",
        "--type=NodePort",
        "--port=80",
    ]);
    c.k(&["rollout", "status", "deploy/web", "--timeout=60s"]);
    let port = c.k(&[
        "get",
        "svc",
        "web",
        "-o",
        "jsonpath={.spec.ports[0].nodePort}",
    ]);
    // Every node's address answers the NodePort; every pod its own IP.
    for node in c.cluster.nodes() {
        let url = format!("http://{}:{port}/", node.ip);
        c.eventually(&format!("{url} from the host"), 30, || {
            host.curl(&url)
                .is_ok_and(|p| p.contains("Welcome to nginx!"))
        });
    }
    let pod_ips = c.k(&[
        "get",
        "pods",
        "-l",
        "app=web",
        "-o",
        "jsonpath={.items[*].status.podIP}",
    ]);
    assert_eq!(pod_ips.split_whitespace().count(), 2, "{pod_ips}");
    for ip in pod_ips.split_whitespace() {
        let page = host.curl(&format!("http://{ip}/"));
        assert!(
            page.as_ref().is_ok_and(|p| p.contains("Welcome to nginx!")),
            "pod {ip}: {page:?}"
        );
    }
    // NodePorts are not published on loopback in this mode: the apiserver
    // alone is.
    let published: Vec<String> = c
        .cluster
        .published()
        .iter()
        .map(|p| p.what.clone())
        .collect();
    assert_eq!(published, ["apiserver"], "{published:?}");

    // A second link onto the same underlay meets the routes of the first:
    // refused with the clashing route named, and nothing changed.
    let during = host.network();
    let underlay_ip = c.cluster.world().node(0).underlay_v4.network();
    let via = std::net::IpAddr::V4(std::net::Ipv4Addr::from(u32::from(underlay_ip) + 250));
    let err = HostRoute::add(c.cluster.world(), Some(host.0.clone()), &[via])
        .expect_err("a clashing host route");
    assert!(err.to_string().contains("already routes"), "{err}");
    assert_eq!(host.network(), during);

    drop(c);
    assert_eq!(host.network(), before, "the host as it was");
}
