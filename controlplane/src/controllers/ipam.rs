//! Address management controllers: node podCIDRs cut from the cluster CIDRs,
//! and LoadBalancer ingress IPs from the configured pools.

use super::key_of;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::{Value, json};

use super::{Change, Controller, list_all, log_failure, write_opts};
use crate::alloc::IpAllocator;
use crate::config::{ClusterConfig, family_of};
use crate::object;
use crate::patch::PatchType;
use crate::registry::Registry;
use crate::resources::{NODES, Resource, SERVICES};
use crate::store::EventType;

/// Carves node-sized subnets out of one cluster CIDR.
#[derive(Debug)]
struct SubnetPool {
    cidr: IpNet,
    mask: u8,
    used: BTreeSet<IpNet>,
}

impl SubnetPool {
    fn next(&mut self) -> Option<IpNet> {
        let subnets = self.cidr.subnets(self.mask).ok()?;
        let free = subnets.take(1 << 20).find(|s| !self.used.contains(s))?;
        self.used.insert(free);
        Some(free)
    }
}

/// Gives each Node `spec.podCIDR(s)` from the cluster CIDRs.
#[derive(Debug)]
pub struct NodeIpam {
    pools: Vec<SubnetPool>,
    /// Node name -> CIDRs it holds.
    held: BTreeMap<String, Vec<IpNet>>,
    queue: BTreeSet<String>,
}

fn node_cidrs(node: &Value) -> Vec<IpNet> {
    node.pointer("/spec/podCIDRs")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|c| c.as_str()?.parse().ok()).collect())
        .unwrap_or_default()
}

impl NodeIpam {
    pub fn new(config: &ClusterConfig) -> Self {
        let pools = config
            .cluster_cidrs
            .iter()
            .map(|c| SubnetPool {
                cidr: *c,
                mask: match c {
                    IpNet::V4(_) => config.node_cidr_mask_size,
                    IpNet::V6(_) => config.node_mask_v6(c),
                },
                used: BTreeSet::new(),
            })
            .collect();
        Self {
            pools,
            held: BTreeMap::new(),
            queue: BTreeSet::new(),
        }
    }

    fn hold(&mut self, name: &str, cidrs: Vec<IpNet>) {
        for c in &cidrs {
            for p in &mut self.pools {
                if p.cidr.contains(c) {
                    p.used.insert(*c);
                }
            }
        }
        self.held.insert(name.to_string(), cidrs);
    }

    fn release(&mut self, name: &str) {
        for c in self.held.remove(name).unwrap_or_default() {
            for p in &mut self.pools {
                p.used.remove(&c);
            }
        }
    }
}

impl Controller for NodeIpam {
    fn name(&self) -> &'static str {
        "nodeipam"
    }

    fn watches(&self, res: &Resource) -> bool {
        res.kind == "Node"
    }

    fn resync(&mut self, reg: &Registry) {
        for p in &mut self.pools {
            p.used.clear();
        }
        self.held.clear();
        for node in list_all(reg, &NODES, None) {
            let name = object::name(&node).to_string();
            let cidrs = node_cidrs(&node);
            if cidrs.is_empty() {
                self.queue.insert(name);
            } else {
                self.hold(&name, cidrs);
            }
        }
    }

    fn observe(&mut self, _reg: &Registry, ev: &Change) {
        let name = object::name(ev.object_meta()).to_string();
        if ev.kind == EventType::Deleted {
            self.release(&name);
            return;
        }
        let cidrs = node_cidrs(ev.object());
        if cidrs.is_empty() {
            self.queue.insert(name);
        } else {
            self.release(&name);
            self.hold(&name, cidrs);
        }
    }

    fn reconcile(&mut self, reg: &Registry) {
        for name in std::mem::take(&mut self.queue) {
            if self.held.contains_key(&name) {
                continue;
            }
            let Some(cidrs) = self
                .pools
                .iter_mut()
                .map(SubnetPool::next)
                .collect::<Option<Vec<_>>>()
            else {
                tracing::warn!(node = %name, "cluster CIDR exhausted; node gets no podCIDR");
                continue;
            };
            let strs: Vec<String> = cidrs.iter().map(ToString::to_string).collect();
            let patch = json!({"spec": {"podCIDR": strs.first(), "podCIDRs": strs}});
            match reg.patch(
                &NODES,
                "",
                &name,
                None,
                (PatchType::Merge, patch.to_string().as_bytes()),
                &write_opts(),
            ) {
                Ok(_) => self.hold(&name, cidrs),
                Err(e) => {
                    for c in &cidrs {
                        for p in &mut self.pools {
                            p.used.remove(c);
                        }
                    }
                    log_failure(self.name(), &name, &e);
                }
            }
        }
    }
}

/// The loadBalancerClass this controller serves; Services naming another
/// class belong to another implementation.
pub const LB_CLASS: &str = "ferry.dev/loadbalancer";

/// Assigns `status.loadBalancer.ingress` to LoadBalancer Services.
#[derive(Debug)]
pub struct LoadBalancerIpam {
    pools: Vec<IpAllocator>,
    held: BTreeMap<(String, String), Vec<IpAddr>>,
    queue: BTreeSet<(String, String)>,
}

fn wants_lb(svc: &Value) -> bool {
    svc.pointer("/spec/type").and_then(Value::as_str) == Some("LoadBalancer")
        && svc
            .pointer("/spec/loadBalancerClass")
            .and_then(Value::as_str)
            .is_none_or(|c| c == LB_CLASS)
}

fn ingress_ips(svc: &Value) -> Vec<IpAddr> {
    svc.pointer("/status/loadBalancer/ingress")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|i| i.get("ip")?.as_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

impl LoadBalancerIpam {
    pub fn new(config: &ClusterConfig) -> Self {
        Self {
            pools: config
                .loadbalancer_pools
                .iter()
                .map(|n| {
                    // A pool is all usable: a /32 or /128 pool holds one IP.
                    let mut a = IpAllocator::new(*n);
                    a.include_edges();
                    a
                })
                .collect(),
            held: BTreeMap::new(),
            queue: BTreeSet::new(),
        }
    }

    fn take(&mut self, family: &str, want: Option<IpAddr>) -> Option<IpAddr> {
        for pool in self
            .pools
            .iter_mut()
            .filter(|p| family_of(&p.net()) == family)
        {
            match want {
                Some(ip) if pool.net().contains(&ip) => return pool.allocate(ip).ok().map(|()| ip),
                Some(_) => continue,
                None => {
                    if let Ok(ip) = pool.allocate_next() {
                        return Some(ip);
                    }
                }
            }
        }
        None
    }

    fn release(&mut self, key: &(String, String)) {
        for ip in self.held.remove(key).unwrap_or_default() {
            for p in &mut self.pools {
                if p.net().contains(&ip) {
                    p.release(ip);
                }
            }
        }
    }

    fn hold(&mut self, key: (String, String), ips: Vec<IpAddr>) {
        for ip in &ips {
            for p in &mut self.pools {
                if p.net().contains(ip) {
                    let _ = p.allocate(*ip);
                }
            }
        }
        self.held.insert(key, ips);
    }

    fn assign(&mut self, reg: &Registry, key: &(String, String)) {
        let Ok(Some(svc)) = reg.store.get(&SERVICES, &key.0, &key.1) else {
            self.release(key);
            return;
        };
        let current = ingress_ips(&svc);
        if !wants_lb(&svc) {
            if self.held.contains_key(key) {
                self.release(key);
                self.write_status(reg, &svc, &[]);
            }
            return;
        }
        let requested: Option<IpAddr> = svc
            .pointer("/spec/loadBalancerIP")
            .and_then(Value::as_str)
            .and_then(|s| s.parse().ok());
        if !current.is_empty() && requested.is_none_or(|r| current.contains(&r)) {
            return;
        }
        self.release(key);
        let families = object::ip_families(&svc);
        let mut ips = Vec::new();
        for family in &families {
            let want = requested.filter(|r| (family == "IPv6") == r.is_ipv6());
            if let Some(ip) = self.take(family, want) {
                ips.push(ip);
            }
        }
        if ips.is_empty() {
            let message = match requested {
                Some(ip) if !self.pools.iter().any(|p| p.net().contains(&ip)) => format!(
                    "spec.loadBalancerIP {ip} is outside every pool (--loadbalancer-ip-pool {})",
                    self.pools
                        .iter()
                        .map(|p| p.net().to_string())
                        .collect::<Vec<_>>()
                        .join(",")
                ),
                Some(ip) => format!("spec.loadBalancerIP {ip} is already allocated"),
                None if self.pools.is_empty() => {
                    "no load-balancer IP pool is configured (--loadbalancer-ip-pool)".to_owned()
                }
                None => "every load-balancer IP pool of the Service's families is full".to_owned(),
            };
            tracing::warn!(service = %key.1, namespace = %key.0, reason = %message, "no load-balancer IP available");
            super::warn_event(reg, self.name(), &svc, "AllocationFailed", &message);
            return;
        }
        self.held.insert(key.clone(), ips.clone());
        self.write_status(reg, &svc, &ips);
    }

    fn write_status(&self, reg: &Registry, svc: &Value, ips: &[IpAddr]) {
        let ingress: Vec<Value> = ips
            .iter()
            .map(|ip| json!({"ip": ip.to_string(), "ipMode": "VIP"}))
            .collect();
        let patch = json!({"status": {"loadBalancer": {"ingress": if ingress.is_empty() { Value::Null } else { json!(ingress) }}}});
        if let Err(e) = reg.patch(
            &SERVICES,
            object::namespace(svc),
            object::name(svc),
            Some("status"),
            (PatchType::Merge, patch.to_string().as_bytes()),
            &write_opts(),
        ) {
            log_failure(self.name(), object::name(svc), &e);
        }
    }
}

impl Controller for LoadBalancerIpam {
    fn name(&self) -> &'static str {
        "lbipam"
    }

    fn watches(&self, res: &Resource) -> bool {
        res.kind == "Service"
    }

    fn resync(&mut self, reg: &Registry) {
        self.held.clear();
        for p in &mut self.pools {
            *p = {
                let mut a = IpAllocator::new(p.net());
                a.include_edges();
                a
            };
        }
        for svc in list_all(reg, &SERVICES, None) {
            let key = key_of(&svc);
            let ips = ingress_ips(&svc);
            if wants_lb(&svc) && !ips.is_empty() {
                self.hold(key.clone(), ips);
            }
            self.queue.insert(key);
        }
    }

    fn observe(&mut self, _reg: &Registry, ev: &Change) {
        let key = ev.key();
        if ev.kind == EventType::Deleted {
            self.release(&key);
        } else {
            self.queue.insert(key);
        }
    }

    fn reconcile(&mut self, reg: &Registry) {
        for key in std::mem::take(&mut self.queue) {
            self.assign(reg, &key);
        }
    }
}
