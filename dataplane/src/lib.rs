//! Ferry's node agent (`ferry-agent`): everything a node does with what the
//! Kubernetes API says. Today it programs the routes that join the nodes'
//! pod CIDRs (direct routing or a VXLAN overlay); the eBPF service dataplane
//! joins it next.
//!
//! It owns the routes it installs (marked with its own route protocol) and
//! the `ferry.vxlan` device, in the network namespace it runs in. It must not
//! touch pod interfaces (the CNI plugin's) or routes it did not install.

pub mod nodes;
pub mod routing;
