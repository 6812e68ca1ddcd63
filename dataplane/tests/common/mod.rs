//! What the dataplane's integration tests share: Node objects and the
//! agent, beside the testbed's control plane and binaries.

#![allow(dead_code)]

use std::path::Path;

use ferry_testbed::{Cni, Node, Process};
pub use ferry_testbed::{ControlPlane, binary};
use serde_json::{Value, json};

/// Ferry's own plugin, wired exactly as a runtime would call it.
pub fn ferry_cni() -> Cni {
    let dir = binary("ferry-cni", "ferry-cni");
    Cni::ferry(dir.parent().map(Path::to_path_buf).unwrap_or_default())
}

pub fn node_object(node: &Node) -> Value {
    let cidrs: Vec<String> = node.pod_cidrs.iter().map(ToString::to_string).collect();
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": node.name},
        "spec": {"podCIDR": cidrs[0], "podCIDRs": cidrs},
        "status": {"addresses": [
            {"type": "InternalIP", "address": node.ipv4.to_string()},
            {"type": "InternalIP", "address": node.ipv6.to_string()},
        ]},
    })
}

/// `ferry-agent` for `node`, in its namespace, with `args` after the
/// kubeconfig and node name.
pub fn start_agent(cp: &ControlPlane, node: &Node, args: &[&str]) -> Process {
    start_agent_under(cp, node, &[], args)
}

/// [`start_agent`] run by `wrapper` (`prlimit ...`, which execs it, so the
/// pid stays the agent's).
pub fn start_agent_under(
    cp: &ControlPlane,
    node: &Node,
    wrapper: &[&str],
    args: &[&str],
) -> Process {
    let mut argv: Vec<String> = wrapper.iter().map(|a| (*a).to_owned()).collect();
    argv.extend([
        binary("ferry-dataplane", "ferry-agent")
            .to_string_lossy()
            .into_owned(),
        "--kubeconfig".into(),
        cp.kubeconfig.to_string_lossy().into_owned(),
        "--node-name".into(),
        node.name.clone(),
    ]);
    argv.extend(args.iter().map(|a| (*a).to_owned()));
    node.netns.spawn(argv).expect("start agent")
}
