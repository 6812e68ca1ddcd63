//! The CNI commands. Each returns what goes on stdout (or nothing); the
//! binary prints errors.

use std::collections::{BTreeSet, HashSet};

use ipnet::IpNet;
use serde_json::{Value, json};

use crate::cache::{Cache, Entry};
use crate::config::{self, Config};
use crate::env::{Command, Env};
use crate::error::{Error, Result};
use crate::ipam::{self, store::Key, store::Store};
use crate::netns::NetNs;
use crate::types::{CniResult, Interface, IpConfig};
use crate::version::{self, SUPPORTED, Version};
use crate::wiring::{self, Expected, Plan};

/// Runs one invocation: `env` already validated, `stdin` as read.
pub fn run(env: &Env, stdin: &[u8]) -> Result<Option<Value>> {
    if env.command == Command::Version {
        return Ok(Some(version_info(stdin)));
    }
    let config = Config::parse(stdin)?;
    tracing::debug!(
        command = ?env.command,
        network = %config.name,
        container = %env.container_id,
        ifname = %env.ifname,
        pod_namespace = env.args.pod_namespace().unwrap_or_default(),
        pod_name = env.args.pod_name().unwrap_or_default(),
        "invoked"
    );
    match env.command {
        Command::Add => add(env, &config).map(Some),
        Command::Del => del(env, &config).map(|()| None),
        Command::Check => {
            version::require(config.version, Version::V0_4_0, "CHECK")?;
            check(env, &config).map(|()| None)
        }
        Command::Gc => {
            version::require(config.version, Version::V1_1_0, "GC")?;
            gc(&config).map(|()| None)
        }
        Command::Status => {
            version::require(config.version, Version::V1_1_0, "STATUS")?;
            status(&config).map(|()| None)
        }
        Command::Version => Ok(Some(version_info(stdin))),
    }
}

/// VERSION: echoes the input's `cniVersion` (1.1.0 when there is none).
fn version_info(stdin: &[u8]) -> Value {
    let v = config::peek_version(stdin)
        .filter(|v| Version::parse(v).is_some())
        .unwrap_or_else(|| version::LATEST.to_string());
    json!({ "cniVersion": v, "supportedVersions": SUPPORTED })
}

fn key(env: &Env) -> Key {
    Key::new(&env.container_id, &env.ifname)
}

fn netns_path(env: &Env) -> Result<&std::path::Path> {
    env.netns
        .as_deref()
        .ok_or_else(|| Error::InvalidEnv("required env variables [CNI_NETNS] missing".into()))
}

/// Waits (bounded) until the dataplane has taken `host_veth`: every file
/// of `dp` exists.
fn wait_for_dataplane(dp: &crate::config::Dataplane, host_veth: &str) -> Result<()> {
    let paths = dp.paths(host_veth);
    let deadline = std::time::Instant::now() + dp.timeout;
    let mut pause = std::time::Duration::from_millis(1);
    loop {
        let Some(missing) = paths.iter().find(|p| !p.exists()) else {
            return Ok(());
        };
        if std::time::Instant::now() >= deadline {
            return Err(Error::TryAgainLater(format!(
                "the node's dataplane did not take {host_veth} within {} ms ({} does not exist): \
                 is ferry-agent running with --pod-devices matching it? (dataplane.waitFor in the network config)",
                dp.timeout.as_millis(),
                missing.display()
            )));
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(std::time::Duration::from_millis(20));
    }
}

fn add(env: &Env, config: &Config) -> Result<Value> {
    let netns = NetNs::open(netns_path(env)?)?;
    let prev = config.prev_result()?;
    let host_veth = wiring::host_veth_name(&env.container_id, &env.ifname);
    wiring::ensure_absent(&netns, &host_veth, &env.ifname)?;
    let dns = if config.dns.is_empty() {
        match &config.ipam.resolv_conf {
            Some(path) => ipam::dns_from_resolv_conf(path)?,
            None => Default::default(),
        }
    } else {
        config.dns.clone()
    };
    let sets = ipam::range_sets(&config.ipam)?;
    let store = Store::new(&config.ipam.data_dir, &config.name);
    let key = key(env);
    // Reserved before any network change: a crash from here on leaves a
    // reservation keyed by this attachment, which DEL or GC frees.
    let ips = store.allocate(&key, &sets)?;
    tracing::debug!(?ips, "reserved");
    crate::crash_point("after-reserve");
    let routes = ipam::pod_routes(&config.ipam, &ips);
    let plan = Plan {
        netns: &netns,
        host_veth: &host_veth,
        ifname: &env.ifname,
        mtu: config.mtu,
        ips: &ips,
        routes: &routes,
    };
    let rollback = |err: Error| -> Error {
        if let Err(e) = wiring::teardown(&host_veth) {
            tracing::warn!(error = %e, host_veth, "rollback: deleting the host veth failed");
        }
        if let Err(e) = store.release(&key) {
            tracing::warn!(error = %e, "rollback: releasing the addresses failed");
        }
        err
    };
    let wired = wiring::setup(&plan).map_err(&rollback)?;
    if let Some(dp) = &config.dataplane {
        wait_for_dataplane(dp, &host_veth).map_err(&rollback)?;
    }
    let result = CniResult {
        interfaces: vec![
            Interface {
                name: host_veth.clone(),
                mac: Some(wired.host_mac),
                mtu: Some(config.mtu),
                ..Default::default()
            },
            Interface {
                name: env.ifname.clone(),
                mac: Some(wired.pod_mac),
                sandbox: Some(netns.path().display().to_string()),
                mtu: Some(config.mtu),
                ..Default::default()
            },
        ],
        ips: ips
            .iter()
            .map(|ip| IpConfig {
                address: wiring::host_net(*ip),
                gateway: Some(wiring::gateway_for(ip.is_ipv4())),
                interface: Some(1),
            })
            .collect(),
        routes: wired.routes,
        dns,
    };
    let entry = Entry {
        container_id: env.container_id.clone(),
        ifname: env.ifname.clone(),
        netns: netns.path().display().to_string(),
        host_veth: host_veth.clone(),
        pod_namespace: env.args.pod_namespace().map(str::to_string),
        pod_name: env.args.pod_name().map(str::to_string),
        result: result.clone(),
    };
    Cache::new(&config.data_dir, &config.name)
        .write(&entry)
        .map_err(&rollback)?;
    let out = match prev {
        Some(prev) => prev.merged_with(result),
        None => result,
    };
    Ok(out.to_json(config.version))
}

/// Best effort and idempotent: deletes the host veth if it is there,
/// releases whatever the attachment holds, forgets the cached result. The
/// pod's namespace is never needed (it may already be gone).
fn del(env: &Env, config: &Config) -> Result<()> {
    let cache = Cache::new(&config.data_dir, &config.name);
    let host_veth = match cache.read(&env.container_id, &env.ifname) {
        Ok(Some(entry)) => entry.host_veth,
        Ok(None) => wiring::host_veth_name(&env.container_id, &env.ifname),
        Err(e) => {
            tracing::warn!(error = %e, "ignoring an unreadable cached result");
            wiring::host_veth_name(&env.container_id, &env.ifname)
        }
    };
    // If the veth cannot be deleted its routes still point at the pod, so
    // the addresses are kept and the runtime retries.
    wiring::teardown(&host_veth)?;
    let freed = Store::new(&config.ipam.data_dir, &config.name).release(&key(env))?;
    tracing::debug!(?freed, host_veth, "released");
    cache.remove(&env.container_id, &env.ifname)
}

fn check(env: &Env, config: &Config) -> Result<()> {
    let Some(raw) = &config.prev_result else {
        return Err(Error::InvalidConfig(
            "CHECK needs prevResult in the network config".into(),
        ));
    };
    let prev = CniResult::from_json(raw)?;
    let netns = NetNs::open(netns_path(env)?)?;
    let failed = |m: String| Error::CheckFailed(m);
    let pod_idx = prev
        .interfaces
        .iter()
        .position(|i| i.name == env.ifname && i.sandbox.as_deref().is_some_and(|s| !s.is_empty()))
        .ok_or_else(|| {
            failed(format!(
                "prevResult lists no sandbox interface {}",
                env.ifname
            ))
        })?;
    let cache = Cache::new(&config.data_dir, &config.name);
    let cached = cache.read(&env.container_id, &env.ifname)?;
    let host_veth = cached
        .as_ref()
        .map(|c| c.host_veth.clone())
        .unwrap_or_else(|| wiring::host_veth_name(&env.container_id, &env.ifname));
    let host_mac = prev
        .interfaces
        .iter()
        .find(|i| i.name == host_veth && i.sandbox.as_deref().is_none_or(str::is_empty))
        .and_then(|i| i.mac.as_deref());
    let addresses: Vec<IpNet> = prev
        .ips
        .iter()
        .filter(|ip| ip.interface == Some(pod_idx))
        .map(|ip| ip.address)
        .collect();
    if addresses.is_empty() {
        return Err(failed(format!(
            "prevResult lists no address on {}",
            env.ifname
        )));
    }
    if let Some(c) = &cached {
        let mine: Vec<IpNet> = c.result.ips.iter().map(|i| i.address).collect();
        if mine != addresses {
            return Err(failed(format!(
                "prevResult addresses {addresses:?} differ from the ones ADD assigned {mine:?}"
            )));
        }
    }
    let families: Vec<bool> = addresses.iter().map(|a| a.addr().is_ipv4()).collect();
    let routes: Vec<_> = prev
        .routes
        .iter()
        .filter(|r| families.contains(&r.dst.addr().is_ipv4()))
        .cloned()
        .collect();
    wiring::check(
        &netns,
        &Expected {
            host_veth: &host_veth,
            host_mac,
            ifname: &env.ifname,
            pod_mac: prev.interfaces[pod_idx].mac.as_deref(),
            addresses: &addresses,
            routes: &routes,
        },
    )?;
    let held = Store::new(&config.ipam.data_dir, &config.name).find(&key(env))?;
    for a in &addresses {
        if !held.contains(&a.addr()) {
            return Err(failed(format!(
                "address {} is not reserved for this attachment",
                a.addr()
            )));
        }
    }
    Ok(())
}

/// Frees everything of this network that belongs to no valid attachment:
/// reservations, cached results and host veths. Keeps going past errors
/// and reports the first.
fn gc(config: &Config) -> Result<()> {
    let Some(valid) = &config.valid_attachments else {
        return Err(Error::InvalidConfig(
            "GC needs cni.dev/valid-attachments in the network config".into(),
        ));
    };
    let valid: HashSet<Key> = valid
        .iter()
        .map(|a| Key::new(&a.container_id, &a.ifname))
        .collect();
    let mut first_err: Option<Error> = None;
    let mut note = |r: Result<()>| {
        if let Err(e) = r {
            tracing::warn!(error = %e, "gc");
            first_err.get_or_insert(e);
        }
    };
    let mut veths: BTreeSet<String> = BTreeSet::new();
    match Store::new(&config.ipam.data_dir, &config.name).gc(&valid) {
        Ok(freed) => {
            for r in freed {
                tracing::info!(ip = %r.ip, container = %r.container_id, "gc: released a stale reservation");
                if let Some(ifname) = &r.ifname {
                    veths.insert(wiring::host_veth_name(&r.container_id, ifname));
                }
            }
        }
        Err(e) => note(Err(e)),
    }
    let cache = Cache::new(&config.data_dir, &config.name);
    match cache.list() {
        Ok(entries) => {
            for e in entries {
                if !valid.contains(&Key::new(&e.container_id, &e.ifname)) {
                    veths.insert(e.host_veth.clone());
                    note(cache.remove(&e.container_id, &e.ifname));
                }
            }
        }
        Err(e) => note(Err(e)),
    }
    for v in veths {
        note(wiring::teardown(&v).map(|deleted| {
            if deleted {
                tracing::info!(host_veth = %v, "gc: deleted a stale host veth");
            }
        }));
    }
    first_err.map_or(Ok(()), Err)
}

/// Ready when the address ranges are known, the store is usable and every
/// range set has a free address; otherwise error 50.
fn status(config: &Config) -> Result<()> {
    let unavailable = |what: &str, e: Error| Error::PluginNotAvailable(format!("{what}: {e}"));
    let sets =
        ipam::range_sets(&config.ipam).map_err(|e| unavailable("pod address ranges unknown", e))?;
    let store = Store::new(&config.ipam.data_dir, &config.name);
    store
        .probe()
        .map_err(|e| unavailable("IPAM store unusable", e))?;
    std::fs::create_dir_all(&config.data_dir).map_err(|e| {
        unavailable(
            "result cache unusable",
            Error::io(config.data_dir.display().to_string(), e),
        )
    })?;
    for set in &sets {
        let used = store
            .reserved_in(set)
            .map_err(|e| unavailable("IPAM store unreadable", e))?;
        if used >= set.capacity() {
            let ranges: Vec<String> = set
                .0
                .iter()
                .map(|r| format!("{}-{}", r.start, r.end))
                .collect();
            return Err(Error::PluginNotAvailable(format!(
                "no free address in range set {} ({used} reserved)",
                ranges.join(",")
            )));
        }
    }
    Ok(())
}
