//! The world node tests share: a testbed world with ferry-apiserver in its
//! underlay and ferry-node on each node, cleaned up on drop.

#![allow(dead_code)]

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ferry_testbed::{AgentHooks, ControlPlane, Node, Process, World, binary, host_local_ranges};
use serde_json::{Value, json};

/// One node's ferry-node and everything it was given; cleans up on drop
/// (also during a panic) what a crashed ferry-node could leave: processes
/// in the pods' cgroups, the cgroups, the netns bind mounts.
pub struct NodeRuntime {
    pub process: Option<Process>,
    pub argv: Vec<String>,
    pub node: Node,
    pub hooks: AgentHooks,
    pub state_dir: PathBuf,
    pub ipam_dir: PathBuf,
}

impl NodeRuntime {
    pub fn start(cp: &ControlPlane, world: &World, i: usize) -> Self {
        Self::start_with(cp, world, i, &[])
    }

    /// Starts ferry-node with `extra` flags after the usual ones.
    pub fn start_with(cp: &ControlPlane, world: &World, i: usize, extra: &[String]) -> Self {
        let node = world.node(i).clone();
        let cni = binary("ferry-cni", "ferry-cni");
        // The catalogue's web server and agnhost: found next to ferry-node.
        binary("ferry-testbed", "ferry-netexec");
        let conf_dir = node.state_dir.join("cni");
        let state_dir = node.state_dir.join("ferry-node");
        let ipam_dir = node.state_dir.join("ipam");
        std::fs::create_dir_all(&conf_dir).expect("conf dir");
        let conflist = json!({
            "cniVersion": "1.1.0", "name": "ferry",
            "plugins": [{
                "type": "ferry-cni",
                "dataDir": node.state_dir.join("ferry-cni"),
                "ipam": {"type": "host-local", "ranges": host_local_ranges(&node), "dataDir": ipam_dir},
            }],
        });
        std::fs::write(conf_dir.join("10-ferry.conflist"), conflist.to_string()).expect("conflist");
        let hooks = AgentHooks::create(&format!("{}-node{i}", world.prefix())).expect("cgroup");
        let argv: Vec<String> = vec![
            env!("CARGO_BIN_EXE_ferry-node").into(),
            "--kubeconfig".into(),
            cp.kubeconfig.to_string_lossy().into_owned(),
            "--node-name".into(),
            node.name.clone(),
            "--node-ip".into(),
            node.ipv4.to_string(),
            "--cni-conf-dir".into(),
            conf_dir.to_string_lossy().into_owned(),
            "--cni-bin-dir".into(),
            cni.parent()
                .expect("bin dir")
                .to_string_lossy()
                .into_owned(),
            "--cgroup-root".into(),
            hooks.cgroup.to_string_lossy().into_owned(),
            "--state-dir".into(),
            state_dir.to_string_lossy().into_owned(),
            "--cluster-dns".into(),
            "10.96.0.10".into(),
            "--health-port".into(),
            "0".into(),
        ];
        let argv: Vec<String> = argv.into_iter().chain(extra.iter().cloned()).collect();
        let mut me = NodeRuntime {
            process: None,
            argv,
            node,
            hooks,
            state_dir,
            ipam_dir,
        };
        me.restart();
        me
    }

    /// Starts ferry-node (again) inside the node's namespace.
    pub fn restart(&mut self) {
        let mut p = self.node.netns.spawn(&self.argv).expect("start ferry-node");
        p.wait_for_output("running pods bound to this node", Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("ferry-node did not come up: {e}\n{}", p.output()));
        self.process = Some(p);
    }

    /// Kills ferry-node (SIGKILL: no chance to clean anything).
    pub fn crash(&mut self) -> String {
        let mut p = self.process.take().expect("running");
        let _ = p.kill();
        p.output()
    }

    pub fn output(&self) -> String {
        self.process
            .as_ref()
            .map(Process::output)
            .unwrap_or_default()
    }

    pub fn netns_dir(&self) -> PathBuf {
        self.state_dir.join("netns")
    }

    pub fn pod_cgroup(&self, uid: &str) -> PathBuf {
        self.hooks.cgroup.join(format!("pod{uid}"))
    }

    /// The output of a run, as `kubectl logs` shows it (the file holds
    /// CRI records).
    pub fn log(&self, uid: &str, container: &str, restart: u32) -> String {
        let raw = std::fs::read(
            self.state_dir
                .join(format!("pods/{uid}/{container}/{restart}.log")),
        )
        .unwrap_or_default();
        let mut out = Vec::new();
        for line in raw.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let rec = ferry_node::logs::parse(line);
            out.extend_from_slice(rec.content);
            if !rec.partial {
                out.push(b'\n');
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

impl Drop for NodeRuntime {
    fn drop(&mut self) {
        if let Some(mut p) = self.process.take() {
            let _ = p.kill();
        }
        // Processes first (cgroup.kill reaches every descendant), then the
        // child cgroups deepest first, then the namespace files.
        let _ = std::fs::write(self.hooks.cgroup.join("cgroup.kill"), "1");
        std::thread::sleep(Duration::from_millis(100));
        remove_child_cgroups(&self.hooks.cgroup);
        if let Ok(entries) = std::fs::read_dir(self.netns_dir()) {
            for e in entries.flatten() {
                let _ = std::process::Command::new("umount")
                    .arg("-l")
                    .arg(e.path())
                    .status();
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

pub fn remove_child_cgroups(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_child_cgroups(&e.path());
                for _ in 0..50 {
                    if std::fs::remove_dir(e.path()).is_ok() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }
}

/// A world of `n` nodes with the apiserver in its underlay. Fields drop in
/// order: the nodes' runtimes, then the apiserver, then the world.
pub struct Cluster {
    pub nodes: Vec<NodeRuntime>,
    pub cp: ControlPlane,
    pub world: World,
}

impl Cluster {
    pub fn new(n: usize) -> Self {
        let world = World::builder().nodes(n).build().expect("world");
        let cp = ControlPlane::start(&world);
        let nodes = (0..n).map(|i| NodeRuntime::start(&cp, &world, i)).collect();
        Cluster { nodes, cp, world }
    }

    /// `n` nodes, node `i` started with the flags `flags(world, i)` gives.
    pub fn with_flags(n: usize, flags: impl Fn(&World, usize) -> Vec<String>) -> Self {
        let world = World::builder().nodes(n).build().expect("world");
        let cp = ControlPlane::start(&world);
        let nodes = (0..n)
            .map(|i| NodeRuntime::start_with(&cp, &world, i, &flags(&world, i)))
            .collect();
        Cluster { nodes, cp, world }
    }

    pub fn kubectl(&self, args: &[&str]) -> String {
        self.cp
            .kubectl(args)
            .unwrap_or_else(|e| panic!("kubectl {args:?}: {e}"))
    }

    pub fn get(&self, args: &[&str]) -> Option<Value> {
        let mut all = vec!["get"];
        all.extend_from_slice(args);
        all.extend(["-o", "json"]);
        let out = self.cp.kubectl(&all).ok()?;
        serde_json::from_str(&out).ok()
    }

    pub fn pod(&self, name: &str) -> Option<Value> {
        self.get(&["pod", name])
    }

    pub fn create_pod(&self, name: &str, node: usize, spec: Value) {
        let mut spec = spec;
        spec["nodeName"] = json!(self.world.node(node).name);
        self.cp.apply(&json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "labels": {"test": name}},
            "spec": spec,
        }));
    }

    /// Waits (bounded) until the pod satisfies `f`; returns it.
    pub fn wait_pod(&self, name: &str, secs: u64, what: &str, f: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let pod = self.pod(name);
            if let Some(p) = &pod
                && f(p)
            {
                return p.clone();
            }
            assert!(
                Instant::now() < deadline,
                "pod {name}: {what} not within {secs}s; pod: {:#}\nferry-node: {}",
                pod.unwrap_or(Value::Null),
                self.nodes
                    .iter()
                    .map(NodeRuntime::output)
                    .collect::<Vec<_>>()
                    .join("\n---\n")
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn events_for(&self, name: &str) -> Vec<Value> {
        let sel = format!("involvedObject.name={name}");
        self.get(&["events", "--field-selector", &sel])
            .and_then(|v| v["items"].as_array().cloned())
            .unwrap_or_default()
    }
}

pub fn condition<'a>(obj: &'a Value, kind: &str) -> Option<&'a Value> {
    obj["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
}

pub fn cond_is(obj: &Value, kind: &str, status: &str) -> bool {
    condition(obj, kind).is_some_and(|c| c["status"] == status)
}

pub fn uid(pod: &Value) -> String {
    pod["metadata"]["uid"].as_str().expect("uid").to_owned()
}

pub fn pod_ip(pod: &Value) -> IpAddr {
    pod["status"]["podIP"]
        .as_str()
        .expect("podIP")
        .parse()
        .expect("ip")
}

pub fn container_status<'a>(pod: &'a Value, name: &str) -> &'a Value {
    pod["status"]["containerStatuses"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["name"] == name))
        .unwrap_or(&Value::Null)
}

pub fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "{what}: not within {secs}s");
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub fn busybox(command: &str) -> Value {
    json!({"name": "main", "image": "busybox:1.36", "command": ["sh", "-c", command]})
}
