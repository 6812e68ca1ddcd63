//! The kube-proxy replacement's user-space half: which frontends and
//! backends each Service gets ([`model`]), writing them into the BPF maps
//! without a window of dropped traffic ([`programmer`]), and the watch loop
//! that drives both ([`proxy`]), the health-check node ports of Local
//! LoadBalancer Services ([`health`]) and their source ranges
//! ([`firewall`]).

pub mod firewall;
pub mod health;
pub mod maglev;
pub mod model;
pub mod nat_ports;
pub mod programmer;
pub mod proxy;
