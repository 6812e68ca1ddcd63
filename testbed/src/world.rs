//! A world: an underlay bridge, N node namespaces on it, and pods wired into
//! the nodes by a CNI plugin.
//!
//! ```text
//!   <p>-ul:   br0 ── n0 ┐        ┌ n1 ── (br0)
//!                        veth     veth
//!   <p>-n0:   ul0 172.31.k.1     ul0 172.31.k.2   :<p>-n1
//!             sink0 ⇄ sink1 (default routes, v4 and v6)
//!             ip_forward on, lo up
//!   <p>-n0-p0 … : pods, wired by the CNI plugin run inside <p>-n0
//! ```

use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde_json::Value;

use crate::cmd;
use crate::cni::{self, Attachment, Cni, CniCommand};
use crate::error::{Error, Result};
use crate::names;
use crate::netns::{self, IP_TIMEOUT, Netns};

/// Name of a node's underlay interface (inside the node namespace).
pub const UNDERLAY_IF: &str = "ul0";
/// Name of the bridge inside the underlay namespace.
pub const UNDERLAY_BRIDGE: &str = "br0";
/// The sink pair inside each node: default routes point out of `sink0`,
/// whose peer `sink1` answers nothing, so unrouted traffic times out
/// inside the node instead of leaving the test's namespaces.
pub const SINK_IFS: [&str; 2] = ["sink0", "sink1"];
/// Most nodes a world can have (one underlay /24).
pub const MAX_NODES: usize = 250;

type CidrFn = dyn Fn(usize) -> Vec<IpNet> + Send + Sync;

/// One node: a network namespace on the underlay.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Node {
    /// Position in the world, from 0.
    pub index: usize,
    /// The node's name: its namespace's name, also fit as a Kubernetes node
    /// name.
    pub name: String,
    /// The node's namespace (the "host" of its pods).
    pub netns: Netns,
    /// The node's underlay interface, [`UNDERLAY_IF`].
    pub underlay_if: String,
    /// The node's underlay IPv4 address.
    pub ipv4: Ipv4Addr,
    /// The node's underlay IPv6 address.
    pub ipv6: Ipv6Addr,
    /// The underlay's IPv4 subnet.
    pub underlay_v4: Ipv4Net,
    /// The underlay's IPv6 subnet.
    pub underlay_v6: Ipv6Net,
    /// The node's pod CIDRs (for the CNI config and the node routes).
    pub pod_cidrs: Vec<IpNet>,
    /// A directory for this node's files (IPAM `dataDir`, kubeconfigs),
    /// removed with the world.
    pub state_dir: PathBuf,
}

impl Node {
    /// The node's underlay address of the same family as `other`.
    pub fn ip_like(&self, other: IpAddr) -> IpAddr {
        match other {
            IpAddr::V4(_) => IpAddr::V4(self.ipv4),
            IpAddr::V6(_) => IpAddr::V6(self.ipv6),
        }
    }
}

/// One pod: a network namespace wired by the CNI plugin.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Pod {
    /// Index of its node.
    pub node: usize,
    /// Kubernetes name (`K8S_POD_NAME`).
    pub name: String,
    /// Kubernetes namespace (`K8S_POD_NAMESPACE`).
    pub namespace: String,
    /// The pod's network namespace.
    pub netns: Netns,
    /// What the plugin was called with.
    pub attachment: Attachment,
    /// The network config used for ADD (and CHECK/DEL).
    pub netconf: Value,
    /// The ADD result, as the plugin printed it.
    pub result: Value,
    /// The pod's addresses from the result, with prefix lengths.
    pub ips: Vec<IpNet>,
}

impl Pod {
    /// The pod's first IPv4 address.
    pub fn ipv4(&self) -> Option<Ipv4Addr> {
        cni::first_v4(&self.ips)
    }

    /// The pod's first IPv6 address.
    pub fn ipv6(&self) -> Option<Ipv6Addr> {
        cni::first_v6(&self.ips)
    }

    /// All the pod's addresses.
    pub fn addrs(&self) -> Vec<IpAddr> {
        self.ips.iter().map(IpNet::addr).collect()
    }
}

/// Builds a [`World`]. See [`World::builder`].
#[derive(Clone)]
pub struct WorldBuilder {
    nodes: usize,
    pods_per_node: usize,
    cni: Option<Cni>,
    pod_cidrs: Arc<CidrFn>,
    route_pod_cidrs: bool,
    underlay_v4: Option<Ipv4Net>,
    underlay_v6: Option<Ipv6Net>,
    pod_namespace: String,
    ifname: String,
    parallel_adds: usize,
}

impl std::fmt::Debug for WorldBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorldBuilder")
            .field("nodes", &self.nodes)
            .field("pods_per_node", &self.pods_per_node)
            .field("cni", &self.cni)
            .field("route_pod_cidrs", &self.route_pod_cidrs)
            .field("underlay_v4", &self.underlay_v4)
            .field("underlay_v6", &self.underlay_v6)
            .finish_non_exhaustive()
    }
}

/// The default pod CIDRs of node `i`: `10.244.<i>.0/24` and
/// `fd00:10:244:<i>::/64`, inside the README's cluster CIDRs.
pub fn default_pod_cidrs(i: usize) -> Vec<IpNet> {
    let i = u8::try_from(i).unwrap_or(u8::MAX);
    let v4 = Ipv4Net::new(Ipv4Addr::new(10, 244, i, 0), 24).map(IpNet::V4);
    let v6 = Ipv6Net::new(
        Ipv6Addr::new(0xfd00, 0x10, 0x244, u16::from(i), 0, 0, 0, 0),
        64,
    )
    .map(IpNet::V6);
    [v4.ok(), v6.ok()].into_iter().flatten().collect()
}

static UNDERLAY_COUNTER: AtomicU8 = AtomicU8::new(0);

impl WorldBuilder {
    fn new() -> Self {
        WorldBuilder {
            nodes: 1,
            pods_per_node: 0,
            cni: None,
            pod_cidrs: Arc::new(default_pod_cidrs),
            route_pod_cidrs: false,
            underlay_v4: None,
            underlay_v6: None,
            pod_namespace: "default".into(),
            ifname: "eth0".into(),
            parallel_adds: 16,
        }
    }

    /// Number of nodes (default 1, at most [`MAX_NODES`]).
    #[must_use]
    pub fn nodes(mut self, n: usize) -> Self {
        self.nodes = n;
        self
    }

    /// Pods created on every node at build time (default 0; needs
    /// [`cni`](Self::cni)). More can be added with [`World::add_pod`].
    #[must_use]
    pub fn pods_per_node(mut self, n: usize) -> Self {
        self.pods_per_node = n;
        self
    }

    /// How pods are wired.
    #[must_use]
    pub fn cni(mut self, cni: Cni) -> Self {
        self.cni = Some(cni);
        self
    }

    /// The pod CIDRs of node `i` (default [`default_pod_cidrs`]). They end up
    /// in [`Node::pod_cidrs`], for the CNI config and the node routes.
    #[must_use]
    pub fn pod_cidrs(mut self, f: impl Fn(usize) -> Vec<IpNet> + Send + Sync + 'static) -> Self {
        self.pod_cidrs = Arc::new(f);
        self
    }

    /// Whether the world routes, in every node, each other node's pod CIDRs
    /// via that node's underlay address (default false: the Ferry agent
    /// programs these routes itself). See [`World::route_pod_cidrs`].
    #[must_use]
    pub fn route_pod_cidrs(mut self, on: bool) -> Self {
        self.route_pod_cidrs = on;
        self
    }

    /// The underlay subnets (default `172.31.<k>.0/24` and
    /// `fd00:31:<k>::/64`, `k` counting worlds in this process). Node `i`
    /// gets host address `i + 1`.
    #[must_use]
    pub fn underlay(mut self, v4: Ipv4Net, v6: Ipv6Net) -> Self {
        self.underlay_v4 = Some(v4);
        self.underlay_v6 = Some(v6);
        self
    }

    /// `K8S_POD_NAMESPACE` of the pods (default `default`).
    #[must_use]
    pub fn pod_namespace(mut self, ns: impl Into<String>) -> Self {
        self.pod_namespace = ns.into();
        self
    }

    /// `CNI_IFNAME` of the pods (default `eth0`).
    #[must_use]
    pub fn ifname(mut self, ifname: impl Into<String>) -> Self {
        self.ifname = ifname.into();
        self
    }

    /// How many of the build-time pods' CNI ADDs run at once (default 16;
    /// 1 makes addresses follow pod order).
    #[must_use]
    pub fn parallel_adds(mut self, n: usize) -> Self {
        self.parallel_adds = n.max(1);
        self
    }

    /// Creates the world: checks for root, sweeps leftovers of dead runs,
    /// then builds the underlay, the nodes, the pods and (if asked) the node
    /// routes. Whatever was built is torn down again if a step fails.
    pub fn build(self) -> Result<World> {
        if !crate::is_root() {
            return Err(Error::NotRoot);
        }
        if self.nodes == 0 || self.nodes > MAX_NODES {
            return Err(Error::Config(format!(
                "nodes must be 1..={MAX_NODES}, not {}",
                self.nodes
            )));
        }
        if self.pods_per_node > 0 && self.cni.is_none() {
            return Err(Error::Config("pods need a CNI config".into()));
        }
        let swept = names::sweep();
        if !swept.namespaces.is_empty() || !swept.failures.is_empty() {
            eprintln!(
                "ferry-testbed: swept leftovers of dead runs: {:?}; failures: {:?}",
                swept.namespaces, swept.failures
            );
        }
        let k = UNDERLAY_COUNTER.fetch_add(1, Ordering::Relaxed);
        let v4 = match self.underlay_v4 {
            Some(net) => net,
            None => Ipv4Net::new(Ipv4Addr::new(172, 31, k, 0), 24)
                .map_err(|e| Error::Config(e.to_string()))?,
        };
        let v6 = match self.underlay_v6 {
            Some(net) => net,
            None => Ipv6Net::new(Ipv6Addr::new(0xfd00, 0x31, u16::from(k), 0, 0, 0, 0, 0), 64)
                .map_err(|e| Error::Config(e.to_string()))?,
        };
        let (prefix, state_dir) = names::claim_prefix()?;
        let mut world = World {
            underlay: Netns::named(format!("{prefix}-ul")),
            prefix,
            state_dir,
            nodes: Vec::new(),
            pods: Vec::new(),
            next_pod: Vec::new(),
            cni: self.cni.clone(),
            pod_namespace: self.pod_namespace.clone(),
            ifname: self.ifname.clone(),
            pod_cidrs: Arc::clone(&self.pod_cidrs),
            torn_down: false,
        };
        // From here on an error drops `world`, which removes what exists.
        world.build_underlay()?;
        for i in 0..self.nodes {
            let pod_cidrs = (self.pod_cidrs)(i);
            world.build_node(i, v4, v6, pod_cidrs)?;
        }
        if self.pods_per_node > 0 {
            world.add_pods_parallel(self.pods_per_node, self.parallel_adds)?;
        }
        if self.route_pod_cidrs {
            world.route_pod_cidrs()?;
        }
        Ok(world)
    }
}

/// A test's network world (`Send + Sync`: share `&World` across threads).
/// Dropping it (also while unwinding from a panic)
/// runs CNI DEL for every pod, kills every process left in its namespaces
/// and deletes them all, and removes its state directory.
pub struct World {
    prefix: String,
    state_dir: PathBuf,
    underlay: Netns,
    nodes: Vec<Node>,
    pods: Vec<Pod>,
    /// Per node: the index the next auto-named pod gets.
    next_pod: Vec<usize>,
    cni: Option<Cni>,
    pod_namespace: String,
    ifname: String,
    /// The pod CIDRs of node `i`, for nodes added later.
    pod_cidrs: Arc<CidrFn>,
    torn_down: bool,
}

impl std::fmt::Debug for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("World")
            .field("prefix", &self.prefix)
            .field("state_dir", &self.state_dir)
            .field("nodes", &self.nodes)
            .field("pods", &self.pods)
            .field("cni", &self.cni)
            .finish_non_exhaustive()
    }
}

impl World {
    /// A builder, defaulting to one node and no pods.
    pub fn builder() -> WorldBuilder {
        WorldBuilder::new()
    }

    /// `nodes` nodes with `pods_per_node` pods each, wired by `cni`; no node
    /// routes. Fails with [`Error::NotRoot`] when not root.
    pub fn new(nodes: usize, pods_per_node: usize, cni: Cni) -> Result<World> {
        World::builder()
            .nodes(nodes)
            .pods_per_node(pods_per_node)
            .cni(cni)
            .build()
    }

    /// The world's name prefix (`ft` + 6 characters): every namespace it
    /// makes is `<prefix>-...`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The world's state directory under [`names::STATE_ROOT`] (owner
    /// marker, per-node directories), removed on drop.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// The namespace holding the underlay bridge.
    pub fn underlay(&self) -> &Netns {
        &self.underlay
    }

    /// The underlay's end of node `i`'s link (a bridge port in the
    /// underlay namespace).
    pub fn underlay_port(&self, i: usize) -> String {
        format!("n{i}")
    }

    /// All nodes.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Node `i`.
    ///
    /// # Panics
    /// When there is no node `i`, like slice indexing.
    pub fn node(&self, i: usize) -> &Node {
        match self.nodes.get(i) {
            Some(node) => node,
            None => panic!("world {} has no node {i}", self.prefix),
        }
    }

    /// All pods, in creation order.
    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }

    /// The pods on node `node`, in creation order.
    pub fn pods_on(&self, node: usize) -> impl Iterator<Item = &Pod> {
        self.pods.iter().filter(move |p| p.node == node)
    }

    /// The `j`-th pod on node `node`.
    ///
    /// # Panics
    /// When there is no such pod, like slice indexing.
    pub fn pod(&self, node: usize, j: usize) -> &Pod {
        match self.pods_on(node).nth(j) {
            Some(pod) => pod,
            None => panic!("world {} has no pod {j} on node {node}", self.prefix),
        }
    }

    /// The pod with Kubernetes name `name`.
    pub fn pod_named(&self, name: &str) -> Option<&Pod> {
        self.pods.iter().find(|p| p.name == name)
    }

    /// Adds a pod to node `node`, named `<prefix>-n<node>-p<j>` (namespace
    /// and Kubernetes name alike), wired by the world's CNI plugin.
    pub fn add_pod(&mut self, node: usize) -> Result<&Pod> {
        self.add_pod_inner(node, None)
    }

    /// Adds a pod with the Kubernetes name `name` (its namespace is still
    /// named by the testbed).
    pub fn add_pod_named(&mut self, node: usize, name: &str) -> Result<&Pod> {
        self.add_pod_inner(node, Some(name))
    }

    fn add_pod_inner(&mut self, node_index: usize, name: Option<&str>) -> Result<&Pod> {
        let cni = self.cni()?.clone();
        let plan = self.plan_pod(node_index, name)?;
        let pod = wire_pod(&cni, plan)?;
        self.pods.push(pod);
        self.pods
            .last()
            .ok_or_else(|| Error::Config("pod vanished".into()))
    }

    /// Adds `per_node` auto-named pods to every node, running up to
    /// `parallel` CNI ADDs at once (as a kubelet starting many pods does).
    /// Pods whose ADD succeeded are kept even when another failed; the first
    /// error is returned.
    fn add_pods_parallel(&mut self, per_node: usize, parallel: usize) -> Result<()> {
        let cni = self.cni()?.clone();
        let mut plans = Vec::new();
        for node in 0..self.nodes.len() {
            for _ in 0..per_node {
                plans.push(Mutex::new(Some(self.plan_pod(node, None)?)));
            }
        }
        let results: Vec<Mutex<Option<Result<Pod>>>> =
            plans.iter().map(|_| Mutex::new(None)).collect();
        let next = AtomicUsize::new(0);
        thread::scope(|scope| {
            for _ in 0..parallel.clamp(1, plans.len().max(1)) {
                scope.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let (Some(plan), Some(slot)) = (plans.get(i), results.get(i)) else {
                            break;
                        };
                        if let Some(plan) = lock(plan).take() {
                            *lock(slot) = Some(wire_pod(&cni, plan));
                        }
                    }
                });
            }
        });
        let mut first_err = None;
        for slot in results {
            match slot.into_inner().unwrap_or_else(PoisonError::into_inner) {
                Some(Ok(pod)) => self.pods.push(pod),
                Some(Err(e)) => {
                    first_err.get_or_insert(e);
                }
                None => {
                    first_err.get_or_insert(Error::Config("a pod ADD never ran".into()));
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    fn cni(&self) -> Result<&Cni> {
        self.cni
            .as_ref()
            .ok_or_else(|| Error::Config("this world has no CNI config".into()))
    }

    /// Names a new pod on `node_index` (reserving its index).
    fn plan_pod(&mut self, node_index: usize, name: Option<&str>) -> Result<PodPlan> {
        let node = self
            .nodes
            .get(node_index)
            .cloned()
            .ok_or_else(|| Error::Config(format!("no node {node_index}")))?;
        let counter = self
            .next_pod
            .get_mut(node_index)
            .ok_or_else(|| Error::Config(format!("no node {node_index}")))?;
        let j = *counter;
        *counter += 1;
        let ns = Netns::named(format!("{}-p{j}", node.name));
        let name = name.map_or_else(|| ns.name().to_owned(), str::to_owned);
        if self.pod_named(&name).is_some() {
            return Err(Error::Config(format!("a pod named {name} exists")));
        }
        let attachment = Attachment {
            container_id: ns.name().to_owned(),
            netns: ns,
            ifname: self.ifname.clone(),
            pod_namespace: self.pod_namespace.clone(),
            pod_name: name,
        };
        Ok(PodPlan { node, attachment })
    }

    /// Runs CNI CHECK for the pod named `name`.
    pub fn check_pod(&self, name: &str) -> Result<()> {
        let pod = self
            .pod_named(name)
            .ok_or_else(|| Error::Config(format!("no pod {name}")))?;
        let cni = self.cni()?;
        let node = self.node(pod.node);
        cni.invoke(
            CniCommand::Check,
            &node.netns,
            &pod.attachment,
            &pod.netconf,
            Some(&pod.result),
        )
        .map(drop)
    }

    /// Runs CNI GC on node `node`, the world's pods on it being the valid
    /// attachments.
    pub fn gc(&self, node: usize) -> Result<()> {
        let cni = self.cni()?;
        let on = self
            .nodes
            .get(node)
            .ok_or_else(|| Error::Config(format!("no node {node}")))?;
        let valid: Vec<Attachment> = self.pods_on(node).map(|p| p.attachment.clone()).collect();
        cni.gc(&on.netns, &cni.config_for(on), &valid)
    }

    /// The world's CNI setup, if it has one (to call [`Cni::invoke`],
    /// [`Cni::status`] or [`Cni::version`] directly).
    pub fn cni_setup(&self) -> Option<&Cni> {
        self.cni.as_ref()
    }

    /// Removes the pod named `name`: kills what runs in it, runs CNI DEL,
    /// deletes its namespace. The DEL error, if any, is returned after the
    /// namespace is gone.
    pub fn remove_pod(&mut self, name: &str) -> Result<()> {
        let pos = self
            .pods
            .iter()
            .position(|p| p.name == name)
            .ok_or_else(|| Error::Config(format!("no pod {name}")))?;
        let pod = self.pods.remove(pos);
        self.unwire(&pod)
    }

    fn unwire(&self, pod: &Pod) -> Result<()> {
        netns::kill_all_in(&pod.netns);
        let del = match (&self.cni, self.nodes.get(pod.node)) {
            (Some(cni), Some(node)) => cni
                .invoke(
                    CniCommand::Del,
                    &node.netns,
                    &pod.attachment,
                    &pod.netconf,
                    Some(&pod.result),
                )
                .map(drop),
            _ => Ok(()),
        };
        let destroyed = netns::destroy(&pod.netns);
        del.and(destroyed)
    }

    /// Adds (or replaces), in node `node`, a route to `dst` via node `via`'s
    /// underlay address of the same family.
    pub fn add_route(&self, node: usize, dst: IpNet, via: usize) -> Result<()> {
        let on = self
            .nodes
            .get(node)
            .ok_or_else(|| Error::Config(format!("no node {node}")))?;
        let gw = self
            .nodes
            .get(via)
            .ok_or_else(|| Error::Config(format!("no node {via}")))?
            .ip_like(dst.addr());
        ip_batch(
            &on.netns,
            &[format!(
                "route replace {} via {gw} dev {UNDERLAY_IF}",
                dst.trunc()
            )],
        )
    }

    /// Routes, in every node, every other node's pod CIDRs via that node's
    /// underlay address: direct routing, as the Ferry agent will later do
    /// itself from Node objects.
    pub fn route_pod_cidrs(&self) -> Result<()> {
        for on in &self.nodes {
            let mut lines = Vec::new();
            for other in self.nodes.iter().filter(|n| n.index != on.index) {
                for cidr in &other.pod_cidrs {
                    lines.push(format!(
                        "route replace {} via {} dev {UNDERLAY_IF}",
                        cidr.trunc(),
                        other.ip_like(cidr.addr())
                    ));
                }
            }
            if !lines.is_empty() {
                ip_batch(&on.netns, &lines)?;
            }
        }
        Ok(())
    }

    /// Adds a node to the built world, on the same underlay, with the next
    /// index (a cluster growing).
    pub fn add_node(&mut self) -> Result<&Node> {
        let i = self.nodes.len();
        if i >= MAX_NODES {
            return Err(Error::Config(format!(
                "a world has at most {MAX_NODES} nodes"
            )));
        }
        let first = self
            .nodes
            .first()
            .ok_or_else(|| Error::Config("a world has at least one node".into()))?;
        let (v4, v6) = (first.underlay_v4, first.underlay_v6);
        let pod_cidrs = (self.pod_cidrs)(i);
        self.build_node(i, v4, v6, pod_cidrs)?;
        self.nodes
            .get(i)
            .ok_or_else(|| Error::Config("the added node is missing".into()))
    }

    /// Tears the world down now and reports what could not be cleaned up
    /// (dropping does the same but can only print the problems).
    pub fn close(mut self) -> Result<()> {
        let problems = self.teardown();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::Teardown(problems))
        }
    }

    fn build_underlay(&mut self) -> Result<()> {
        netns::create(&self.underlay)?;
        ip_batch(
            &self.underlay,
            &[
                "link set lo up".into(),
                format!("link add {UNDERLAY_BRIDGE} type bridge stp_state 0"),
                format!("link set {UNDERLAY_BRIDGE} up"),
            ],
        )?;
        // The underlay's own senders (the tests' outside clients) too.
        self.underlay
            .exec(["ethtool", "-K", UNDERLAY_BRIDGE, "tx", "off"])
            .map(|_| ())
            .map_err(|e| Error::Config(format!("{UNDERLAY_BRIDGE}: checksum offload off (ethtool; `cargo xtask setup` installs it): {e}")))
    }

    fn build_node(
        &mut self,
        i: usize,
        v4: Ipv4Net,
        v6: Ipv6Net,
        pod_cidrs: Vec<IpNet>,
    ) -> Result<()> {
        let host = u32::try_from(i + 1).map_err(|e| Error::Config(e.to_string()))?;
        let ipv4 = Ipv4Addr::from(u32::from(v4.network()) + host);
        let ipv6 = Ipv6Addr::from(u128::from(v6.network()) + u128::from(host));
        if !v4.contains(&ipv4) || ipv4 == v4.broadcast() {
            return Err(Error::Config(format!(
                "underlay {v4} too small for node {i}"
            )));
        }
        let name = format!("{}-n{i}", self.prefix);
        let ns = Netns::named(&name);
        let state_dir = self.state_dir.join(format!("n{i}"));
        fs::create_dir_all(&state_dir)
            .map_err(|e| Error::io(format!("creating {}", state_dir.display()), e))?;
        netns::create(&ns)?;
        // The veth is created in the underlay namespace with its peer made
        // directly in the node's: neither end ever exists in the root
        // namespace.
        ip_batch(
            &self.underlay,
            &[
                format!("link add n{i} type veth peer name {UNDERLAY_IF} netns {name}"),
                format!("link set n{i} master {UNDERLAY_BRIDGE}"),
                format!("link set n{i} up"),
            ],
        )?;
        set_sysctls(
            &ns,
            &[
                ("net/ipv4/ip_forward", "1"),
                ("net/ipv6/conf/all/forwarding", "1"),
                ("net/ipv6/conf/default/forwarding", "1"),
                // No duplicate address detection on the node side: in a
                // test world nothing can clash, and a tentative host-side
                // address (a CNI plugin's gateway, say) silently drops the
                // first seconds of IPv6 traffic to a new pod. Pod
                // namespaces are left as a runtime leaves them.
                ("net/ipv6/conf/all/accept_dad", "0"),
                ("net/ipv6/conf/default/accept_dad", "0"),
            ],
        )?;
        let [sink0, sink1] = SINK_IFS;
        ip_batch(
            &ns,
            &[
                "link set lo up".into(),
                format!("link set {UNDERLAY_IF} up"),
                format!("addr add {ipv4}/{} dev {UNDERLAY_IF}", v4.prefix_len()),
                format!(
                    "addr add {ipv6}/{} dev {UNDERLAY_IF} nodad",
                    v6.prefix_len()
                ),
                format!("link add {sink0} type veth peer name {sink1}"),
                format!("link set {sink1} up"),
                format!("link set {sink0} up"),
                format!("route add 0.0.0.0/0 dev {sink0}"),
                format!("route add ::/0 dev {sink0}"),
            ],
        )?;
        // Frames on the underlay carry whole checksums, as a physical
        // network's do: a local sender's veth frames otherwise hold only the
        // pseudo-header's sum (checksum offload), which an XDP program that
        // rewrites addresses cannot tell from a real checksum.
        ns.exec(["ethtool", "-K", UNDERLAY_IF, "tx", "off"])
            .map_err(|e| Error::Config(format!("{UNDERLAY_IF}: checksum offload off (ethtool; `cargo xtask setup` installs it): {e}")))?;
        self.nodes.push(Node {
            index: i,
            name: name.clone(),
            netns: ns,
            underlay_if: UNDERLAY_IF.into(),
            ipv4,
            ipv6,
            underlay_v4: v4,
            underlay_v6: v6,
            pod_cidrs,
            state_dir,
        });
        self.next_pod.push(0);
        Ok(())
    }

    /// Removes everything; returns the problems met. Idempotent.
    fn teardown(&mut self) -> Vec<String> {
        if self.torn_down {
            return Vec::new();
        }
        self.torn_down = true;
        let mut problems = Vec::new();
        let pods = std::mem::take(&mut self.pods);
        for pod in pods.iter().rev() {
            if let Err(e) = self.unwire(pod) {
                problems.push(format!("pod {}: {e}", pod.name));
            }
        }
        // Every namespace with our prefix, also half-built ones: pods, then
        // nodes, then the underlay (longest names first).
        let mut names: Vec<String> = netns::list()
            .into_iter()
            .filter(|n| names::prefix_of(n) == Some(self.prefix.as_str()))
            .collect();
        names.sort_by_key(|n| std::cmp::Reverse(n.len()));
        for name in names {
            if let Err(e) = netns::destroy(&Netns::named(&name)) {
                problems.push(format!("netns {name}: {e}"));
            }
        }
        if let Err(e) = names::remove_state_dir(&self.state_dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            problems.push(format!("{}: {e}", self.state_dir.display()));
        }
        problems
    }
}

impl Drop for World {
    fn drop(&mut self) {
        for problem in self.teardown() {
            eprintln!("ferry-testbed: teardown of {}: {problem}", self.prefix);
        }
    }
}

/// A pod named but not yet wired.
struct PodPlan {
    node: Node,
    attachment: Attachment,
}

/// Creates the pod's namespace and runs CNI ADD for it, as a runtime does;
/// on failure runs DEL and removes the namespace again.
fn wire_pod(cni: &Cni, plan: PodPlan) -> Result<Pod> {
    let PodPlan { node, attachment } = plan;
    let ns = attachment.netns.clone();
    netns::create(&ns)?;
    let netconf = cni.config_for(&node);
    let added = ip_batch(&ns, &["link set lo up".to_owned()]).and_then(|()| {
        let result = cni
            .invoke(CniCommand::Add, &node.netns, &attachment, &netconf, None)?
            .unwrap_or(Value::Null);
        let ips = cni::result_ips(&result).map_err(|reason| Error::CniResult {
            plugin: PathBuf::from(
                netconf
                    .get("type")
                    .and_then(Value::as_str)
                    .unwrap_or("conflist"),
            ),
            reason,
        })?;
        Ok((result, ips))
    });
    match added {
        Ok((result, ips)) => Ok(Pod {
            node: node.index,
            name: attachment.pod_name.clone(),
            namespace: attachment.pod_namespace.clone(),
            netns: ns,
            attachment,
            netconf,
            result,
            ips,
        }),
        Err(e) => {
            // What a runtime does after a failed ADD: DEL, then drop the
            // sandbox.
            let _ = cni.invoke(CniCommand::Del, &node.netns, &attachment, &netconf, None);
            let _ = netns::destroy(&ns);
            Err(e)
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs `ip -n <ns> -batch -` with `lines`: one process for many changes.
fn ip_batch(ns: &Netns, lines: &[String]) -> Result<()> {
    let mut input = lines.join("\n");
    input.push('\n');
    cmd::run(
        Command::new("ip").args(["-n", ns.name(), "-batch", "-"]),
        Some(input.as_bytes()),
        IP_TIMEOUT,
    )
    .map(drop)
}

/// Writes sysctls (paths under `/proc/sys`) inside `ns` from a thread that
/// entered it: `/proc/sys/net` shows the writer's namespace.
fn set_sysctls(ns: &Netns, settings: &[(&str, &str)]) -> Result<()> {
    ns.in_netns(|| {
        for (key, value) in settings {
            let path = Path::new("/proc/sys").join(key);
            fs::write(&path, value).map_err(|e| {
                Error::io(format!("setting {} in {}", path.display(), ns.name()), e)
            })?;
        }
        Ok(())
    })?
}
