//! The topology: a testbed [`World`] of one node whose pods ([`Role`]s)
//! are wired by `ferry-cni`, connect sinks in the server and `open` pods,
//! `ferry-apiserver` in the world's underlay holding the [`Shape`]'s
//! objects, and `ferry-agent` on the node attached to the pods' veths
//! (`--pod-devices fer`), with or without NetworkPolicy.
//!
//! Everything is inside the world's namespaces (or the agent's own cgroup
//! and bpffs directory) and goes with it on drop, also on error or panic.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use ferry_testbed::{Cni, Node, Pod, Process, World};
use k8s_openapi::api::core::v1::{Namespace, Pod as PodObject};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::Value;

use super::population::{self, Role, SINK_PORT, Shape};
use crate::run_bounded;
use crate::services::api;
use crate::services::cluster::{Agent, Binaries, MapSizes, start_apiserver};
use crate::services::model::{self as svc_model, Proto, Svc};

/// The server's Service: a ClusterIP in front of the server's sink.
pub const SERVER_SERVICE_IP: Ipv4Addr = svc_model::CONNECT_IP;
pub const SERVICE_PORT: u16 = svc_model::SERVICE_PORT;
/// ferry-cni's host veth prefix (the agent's `--pod-devices`).
pub const POD_DEVICES: &str = "fer";

/// The world, its sinks and the apiserver. Field order is drop order.
pub struct Lab {
    _sinks: Vec<Process>,
    apiserver: Option<Process>,
    pub kubeconfig: PathBuf,
    api_ip: Ipv4Addr,
    roles: Vec<Role>,
    pub world: World,
}

impl Lab {
    /// The world with one pod per role, and the sinks started.
    pub fn build(bins: &Binaries, shape: &Shape) -> Result<Self> {
        let roles = Role::all(shape);
        let world = World::builder()
            .nodes(1)
            .pods_per_node(roles.len())
            .cni(Cni::ferry(
                bins.cni.parent().map(Path::to_path_buf).unwrap_or_default(),
            ))
            .build()
            .context("building the testbed world")?;
        let api_ip = crate::services::cluster::apiserver_address(&world)?;
        let mut lab = Self {
            _sinks: Vec::new(),
            apiserver: None,
            kubeconfig: PathBuf::new(),
            api_ip,
            roles,
            world,
        };
        let port = SINK_PORT.to_string();
        for role in lab.roles.clone().into_iter().filter(|r| r.serves()) {
            let pod = lab.pod(role)?;
            let mut sink = pod
                .netns
                .spawn([
                    bins.bench.as_os_str(),
                    "sink".as_ref(),
                    "--port".as_ref(),
                    port.as_ref(),
                ])
                .with_context(|| format!("starting the sink in {}", pod.name))?;
            sink.wait_for_output(crate::services::sink::READY, Duration::from_secs(10))
                .with_context(|| format!("the sink in {}", pod.name))?;
            lab._sinks.push(sink);
        }
        Ok(lab)
    }

    pub fn node(&self) -> &Node {
        self.world.node(0)
    }

    /// The world's pod playing `role`.
    pub fn pod(&self, role: Role) -> Result<&Pod> {
        let j = self
            .roles
            .iter()
            .position(|r| *r == role)
            .with_context(|| format!("no pod plays {role:?}"))?;
        Ok(self.world.pod(0, j))
    }

    pub fn ipv4(&self, role: Role) -> Result<Ipv4Addr> {
        let pod = self.pod(role)?;
        pod.ipv4()
            .with_context(|| format!("pod {} has no IPv4 address", pod.name))
    }

    /// `role`'s sink, at its pod address.
    pub fn sink(&self, role: Role) -> Result<SocketAddr> {
        Ok(SocketAddr::new(IpAddr::V4(self.ipv4(role)?), SINK_PORT))
    }

    /// The node-side veth of every pod.
    pub fn host_veths(&self) -> Result<Vec<String>> {
        self.world
            .pods()
            .iter()
            .map(|p| {
                p.result
                    .get("interfaces")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter(|i| i.get("sandbox").is_none())
                    .filter_map(|i| i.get("name").and_then(Value::as_str))
                    .find(|n| n.starts_with(POD_DEVICES))
                    .map(str::to_string)
                    .with_context(|| format!("no host veth in {}'s CNI result", p.name))
            })
            .collect()
    }

    pub fn start_apiserver(&mut self, bins: &Binaries) -> Result<()> {
        let (server, kubeconfig) = start_apiserver(
            &self.world,
            bins,
            self.api_ip,
            1,
            &["--service-cluster-ip-range", svc_model::SERVICE_CIDR],
        )?;
        self.kubeconfig = kubeconfig;
        self.apiserver = Some(server);
        Ok(())
    }

    pub fn apiserver_output(&self) -> String {
        self.apiserver
            .as_ref()
            .map(Process::output)
            .unwrap_or_default()
    }

    /// The agent, attached to every pod's veth; `policy`: enforcing
    /// NetworkPolicy (else `--no-network-policy`). Returns it and the time
    /// from its start until it was attached everywhere.
    pub fn start_agent(
        &self,
        bins: &Binaries,
        tag: &str,
        policy: bool,
    ) -> Result<(Agent, Duration)> {
        let mut extra = vec!["--pod-devices".to_string(), POD_DEVICES.to_string()];
        if !policy {
            extra.push("--no-network-policy".into());
        }
        let t0 = Instant::now();
        let mut agent = Agent::spawn(
            &self.world,
            self.node(),
            &self.kubeconfig,
            bins,
            tag,
            MapSizes::for_load(4, 4),
            &extra,
        )?;
        agent.wait_synced(Duration::from_secs(60))?;
        let links = ferry_dataplane::bpf::Layout {
            bpffs_root: agent.hooks.bpffs.clone(),
            cgroup_root: agent.hooks.cgroup.clone(),
        }
        .links_dir();
        let veths = self.host_veths()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let missing: Vec<&String> = veths
                .iter()
                .filter(|v| {
                    !ferry_dataplane::bpf::pod_device_pins(&links, v)
                        .iter()
                        .all(|p| p.exists())
                })
                .collect();
            if missing.is_empty() {
                break;
            }
            agent.check_running()?;
            if Instant::now() > deadline {
                bail!(
                    "the agent did not attach to {missing:?} within 30 s; its log:\n{}",
                    agent.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok((agent, t0.elapsed()))
    }
}

/// What the load took.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    pub objects: usize,
    pub wall: Duration,
}

async fn create_each<K>(api: &Api<K>, objects: Vec<Value>, concurrency: usize) -> Result<()>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::Serialize + serde::de::DeserializeOwned,
    K: Send + Sync + 'static,
{
    let objects: Vec<K> = objects
        .into_iter()
        .map(serde_json::from_value)
        .collect::<serde_json::Result<_>>()?;
    run_bounded(objects.len(), concurrency, |i| {
        let api = api.clone();
        let obj = objects.get(i).cloned();
        async move {
            if let Some(obj) = obj {
                api.create(&PostParams::default(), &obj).await?;
            }
            Ok(())
        }
    })
    .await?;
    Ok(())
}

/// Pods created, then given their status (the apiserver drops a status
/// sent with the create).
async fn create_pods(
    client: &kube::Client,
    pods: Vec<(Value, Vec<IpAddr>)>,
    concurrency: usize,
) -> Result<()> {
    let pods: Vec<(PodObject, Value)> = pods
        .into_iter()
        .map(|(obj, ips)| Ok((serde_json::from_value(obj)?, population::pod_status(&ips))))
        .collect::<serde_json::Result<_>>()?;
    run_bounded(pods.len(), concurrency, |i| {
        let item = pods.get(i).cloned();
        let client = client.clone();
        async move {
            let Some((pod, status)) = item else {
                return Ok(());
            };
            let ns = pod.metadata.namespace.clone().unwrap_or_default();
            let api: Api<PodObject> = Api::namespaced(client, &ns);
            let made = api.create(&PostParams::default(), &pod).await?;
            let name = made.metadata.name.unwrap_or_default();
            api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                .await?;
            Ok(())
        }
    })
    .await?;
    Ok(())
}

/// Loads the shape's objects: the Node and the `bench` namespace, the
/// namespaces, the remote and the real pods, the server's Service, the
/// policies.
pub async fn load(
    client: &kube::Client,
    lab: &Lab,
    shape: &Shape,
    concurrency: usize,
) -> Result<Loaded> {
    let t0 = Instant::now();
    api::setup(client, lab.node()).await?;
    let namespaces: Vec<Value> = (0..shape.namespaces)
        .map(population::namespace_object)
        .collect();
    let mut objects = namespaces.len();
    create_each(
        &Api::<Namespace>::all(client.clone()),
        namespaces,
        concurrency,
    )
    .await
    .context("creating namespaces")?;
    let mut pods: Vec<(Value, Vec<IpAddr>)> = (0..shape.remote_pods)
        .map(|i| population::remote_pod(i, shape))
        .collect();
    for role in Role::all(shape) {
        let pod = lab.pod(role)?;
        pods.push((population::local_pod(role, &lab.node().name), pod.addrs()));
    }
    objects += pods.len();
    create_pods(client, pods, concurrency)
        .await
        .context("creating pods")?;
    let svc = server_service(lab)?;
    api::create(client, std::slice::from_ref(&svc), 1)
        .await
        .context("creating the server's Service")?;
    let policies = population::policies(shape);
    objects += policies.len() + 2;
    let by_ns = policies_by_namespace(policies);
    for (ns, list) in by_ns {
        create_each(
            &Api::<NetworkPolicy>::namespaced(client.clone(), &ns),
            list,
            concurrency,
        )
        .await
        .with_context(|| format!("creating the policies of {ns}"))?;
    }
    Ok(Loaded {
        objects,
        wall: t0.elapsed(),
    })
}

fn policies_by_namespace(policies: Vec<Value>) -> std::collections::BTreeMap<String, Vec<Value>> {
    let mut by_ns: std::collections::BTreeMap<String, Vec<Value>> = Default::default();
    for p in policies {
        let ns = p["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        by_ns.entry(ns).or_default().push(p);
    }
    by_ns
}

/// The server's ClusterIP Service and its slice.
pub fn server_service(lab: &Lab) -> Result<Svc> {
    Ok(Svc {
        name: "server".into(),
        ip: SERVER_SERVICE_IP,
        endpoints: vec![lab.ipv4(Role::Server)?],
        target_port: SINK_PORT,
        protocol: Proto::Tcp,
        node_port: None,
    })
}

/// What the API holds now (what kube-router's informers would hold).
pub async fn snapshot(
    client: &kube::Client,
) -> Result<(Vec<Namespace>, Vec<PodObject>, Vec<NetworkPolicy>)> {
    let lp = ListParams::default();
    let ns = Api::<Namespace>::all(client.clone()).list(&lp).await?.items;
    let pods = Api::<PodObject>::all(client.clone()).list(&lp).await?.items;
    let pols = Api::<NetworkPolicy>::all(client.clone())
        .list(&lp)
        .await?
        .items;
    Ok((ns, pods, pols))
}

/// Creates `obj` (a NetworkPolicy); returns when the API answered.
pub async fn create_policy(client: &kube::Client, obj: &Value) -> Result<()> {
    let np: NetworkPolicy = serde_json::from_value(obj.clone())?;
    let ns = np.metadata.namespace.clone().unwrap_or_default();
    Api::<NetworkPolicy>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &np)
        .await
        .context("creating a policy")?;
    Ok(())
}

pub async fn delete_policy(client: &kube::Client, ns: &str, name: &str) -> Result<()> {
    Api::<NetworkPolicy>::namespaced(client.clone(), ns)
        .delete(name, &DeleteParams::default())
        .await
        .with_context(|| format!("deleting policy {ns}/{name}"))?;
    Ok(())
}
