//! The same workload against etcd: Debian's `/usr/bin/etcd`, one member on
//! loopback, driven with etcd-client over gRPC. Keys follow kube-apiserver's
//! layout (`/registry/services/specs/NS/NAME`), values are the JSON ferry
//! stored for the same objects.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use etcd_client::{Client, GetOptions, WatchOptions};
use k8s_openapi::api::core::v1::Service;

use crate::measure::{Watcher, check_count, collect, load_of, timed_writes};
use crate::objects::{self, BULK_NAMESPACE, Clock, WATCH_NAMESPACE};
use crate::process::{CpuMeter, Rss, ServerProcess, free_ports};
use crate::report::{Fanout, Lists, Load};
use crate::stats::Samples;
use crate::{BenchError, Result, Workload, bounded, run_bounded};

const READY_WITHIN: Duration = Duration::from_secs(30);
const SERVICES: &str = "/registry/services/specs/";
const SLICES: &str = "/registry/endpointslices/";

fn service_prefix(ns: &str) -> String {
    format!("{SERVICES}{ns}/")
}

/// The key after every key starting with `prefix`, as etcd's `WithPrefix`.
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// A running single-member etcd on 127.0.0.1.
pub struct Etcd {
    process: ServerProcess,
    endpoint: String,
    pub version: String,
}

impl std::fmt::Debug for Etcd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Etcd")
            .field("endpoint", &self.endpoint)
            .field("pid", &self.process.pid())
            .finish_non_exhaustive()
    }
}

impl Etcd {
    /// Starts `binary` with free client and peer ports and waits until it
    /// answers a status call.
    pub async fn start(binary: &Path) -> Result<Self> {
        let out = Command::new(binary)
            .arg("--version")
            .output()
            .map_err(|e| BenchError::io(format!("running {} --version", binary.display()), e))?;
        let version = String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or("")
            .trim()
            .to_string();
        let dir = tempfile::Builder::new()
            .prefix("ferry-bench-etcd-")
            .tempdir()
            .map_err(|e| BenchError::io("creating a temp dir", e))?;
        let ports = free_ports(2)?;
        let (client_port, peer_port) = match ports.as_slice() {
            [c, p] => (*c, *p),
            _ => return Err(BenchError::Check("could not find two free ports".into())),
        };
        let endpoint = format!("http://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let mut cmd = Command::new(binary);
        cmd.arg("--name")
            .arg("bench")
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--listen-client-urls")
            .arg(&endpoint)
            .arg("--advertise-client-urls")
            .arg(&endpoint)
            .arg("--listen-peer-urls")
            .arg(&peer)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer)
            .arg("--initial-cluster")
            .arg(format!("bench={peer}"))
            .arg("--initial-cluster-state")
            .arg("new")
            .arg("--logger")
            .arg("zap")
            .arg("--log-level")
            .arg("warn");
        let mut process = ServerProcess::spawn("etcd", cmd, dir)?;
        let ep = endpoint.clone();
        process
            .wait_ready(READY_WITHIN, || {
                let ep = ep.clone();
                async move {
                    let mut c = Client::connect([ep], None)
                        .await
                        .map_err(|e| e.to_string())?;
                    c.status().await.map(|_| true).map_err(|e| e.to_string())
                }
            })
            .await?;
        Ok(Self {
            process,
            endpoint,
            version,
        })
    }

    pub fn rss(&self) -> Result<Rss> {
        self.process.rss()
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// A new client with its own HTTP/2 connection.
    pub async fn client(&self) -> Result<Client> {
        Ok(Client::connect([self.endpoint.as_str()], None).await?)
    }

    /// Puts `services` under the Service keys, then `slices` under the
    /// EndpointSlice keys, `w.concurrency` at a time.
    pub async fn load(
        &self,
        w: &Workload,
        client: &Client,
        services: Vec<Vec<u8>>,
        slices: Vec<Vec<u8>>,
    ) -> Result<(Load, Load)> {
        let mut loads = Vec::with_capacity(2);
        for (what, prefix, values) in [
            ("Service", SERVICES, services),
            ("EndpointSlice", SLICES, slices),
        ] {
            let values = std::sync::Arc::new(values);
            let cpu = CpuMeter::start(self.pid())?;
            let (wall, latency, sizes) = bounded(
                &format!("etcd: putting {what} keys"),
                w.phase_timeout,
                run_bounded(values.len(), w.concurrency, |i| {
                    let mut kv = client.kv_client();
                    let values = values.clone();
                    let key = format!("{prefix}{BULK_NAMESPACE}/{}", objects::service_name(i));
                    async move {
                        let value = values.get(i).cloned().unwrap_or_default();
                        let len = value.len();
                        kv.put(key, value, None).await?;
                        Ok(len)
                    }
                }),
            )
            .await?;
            let bytes: usize = sizes.iter().sum();
            let mut load = load_of(wall, latency, &[]);
            load.count = sizes.len();
            load.mean_bytes = bytes.checked_div(sizes.len()).unwrap_or(0);
            load.cpu = cpu.stop()?;
            loads.push(load);
        }
        let slices = loads.pop().unwrap_or_default();
        let services = loads.pop().unwrap_or_default();
        Ok((services, slices))
    }

    /// Range-gets every Service key whole, then in pages of `w.page_size`
    /// at one revision (as kube-apiserver pages over etcd).
    pub async fn lists(&self, w: &Workload, client: &Client) -> Result<Lists> {
        bounded("etcd: range gets", w.phase_timeout, async {
            let mut kv = client.kv_client();
            let prefix = service_prefix(BULK_NAMESPACE);
            let end = prefix_end(&prefix);
            let mut out = Lists::default();
            let mut full = Samples::new();
            let cpu = CpuMeter::start(self.pid())?;
            for _ in 0..w.list_runs {
                let t0 = Instant::now();
                let resp = kv
                    .get(prefix.as_str(), Some(GetOptions::new().with_prefix()))
                    .await?;
                full.push(t0.elapsed());
                check_count("full range", resp.kvs().len(), w.services)?;
                out.items = resp.kvs().len();
                out.full_bytes = resp.kvs().iter().map(|kv| kv.value().len()).sum();
            }
            let limit = i64::try_from(w.page_size).unwrap_or(i64::MAX);
            out.full_cpu = cpu.stop()?;
            let mut paged = Samples::new();
            let cpu = CpuMeter::start(self.pid())?;
            for _ in 0..w.list_runs {
                let t0 = Instant::now();
                let mut start = prefix.as_bytes().to_vec();
                let mut revision = 0;
                let mut items = 0;
                let mut pages = 0;
                loop {
                    let mut opts = GetOptions::new().with_range(end.clone()).with_limit(limit);
                    if revision > 0 {
                        opts = opts.with_revision(revision);
                    }
                    let resp = kv.get(start.clone(), Some(opts)).await?;
                    if revision == 0 {
                        revision = resp.header().map_or(0, |h| h.revision());
                    }
                    pages += 1;
                    items += resp.kvs().len();
                    match resp.kvs().last() {
                        Some(last) if resp.more() => {
                            start = last.key().to_vec();
                            start.push(0);
                        }
                        _ => break,
                    }
                }
                paged.push(t0.elapsed());
                check_count("paged range", items, w.services)?;
                out.pages = pages;
            }
            out.paged_cpu = cpu.stop()?;
            out.runs = w.list_runs;
            out.full = full.summary();
            out.paged = paged.summary();
            Ok(out)
        })
        .await
    }

    /// The fan-out of [`crate::ferry::Ferry::fanout`]: `w.watchers` prefix
    /// watches from the current revision, then `w.writes` timed puts of
    /// Service JSON shaped like `template` (ferry's stored Service).
    pub async fn fanout(
        &self,
        w: &Workload,
        writer: &Client,
        clock: Clock,
        template: Option<Service>,
    ) -> Result<Fanout> {
        let prefix = service_prefix(WATCH_NAMESPACE);
        let revision = writer
            .kv_client()
            .get(prefix.as_str(), Some(GetOptions::new().with_count_only()))
            .await?
            .header()
            .map_or(0, |h| h.revision());
        let mut clients = Vec::with_capacity(w.watch_clients());
        for _ in 0..w.watch_clients() {
            clients.push(self.client().await?);
        }
        let per_client = w.watchers_per_client.max(1);
        let (open_wall, _, opened) = bounded(
            "etcd: opening watches",
            w.phase_timeout,
            run_bounded(w.watchers, 32, |k| {
                let mut watch = clients[(k / per_client) % clients.len()].watch_client();
                let prefix = prefix.clone();
                async move {
                    let opts = WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(revision + 1);
                    Ok(watch.watch(prefix, Some(opts)).await?)
                }
            }),
        )
        .await?;
        let rss_with_watches = self.rss().ok();

        // Dropping a `Watcher` closes its request stream: keep them to the end.
        let mut handles = Vec::with_capacity(opened.len());
        let deadline = tokio::time::Instant::now() + w.delivery_deadline();
        let mut watchers = tokio::task::JoinSet::new();
        for (handle, mut stream) in opened {
            handles.push(handle);
            let writes = w.writes;
            watchers.spawn(async move {
                let mut out = Watcher::new(writes);
                while out.received < writes {
                    match tokio::time::timeout_at(deadline, stream.message()).await {
                        Err(_) => {
                            out.fail("timed out waiting for events".into());
                            break;
                        }
                        Ok(Err(e)) => {
                            out.fail(e.to_string());
                            break;
                        }
                        Ok(Ok(None)) => {
                            out.fail("the watch stream ended".into());
                            break;
                        }
                        Ok(Ok(Some(resp))) => {
                            if resp.canceled() {
                                out.fail(format!("watch canceled: {}", resp.cancel_reason()));
                                break;
                            }
                            for ev in resp.events() {
                                let Some(kv) = ev.kv() else { continue };
                                match serde_json::from_slice::<Service>(kv.value())
                                    .ok()
                                    .as_ref()
                                    .and_then(objects::sent_ns)
                                {
                                    Some(sent) => out.record(clock.since(sent)),
                                    None => out.fail("an event without the send time".into()),
                                }
                            }
                        }
                    }
                }
                out
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;

        let kv = writer.kv_client();
        let template = std::sync::Arc::new(template);
        let cpu = CpuMeter::start(self.pid())?;
        let write_latency = bounded(
            "etcd: timed puts",
            w.delivery_deadline(),
            timed_writes(w, move |i| {
                let mut kv = kv.clone();
                let template = template.clone();
                let prefix = prefix.clone();
                async move {
                    let name = objects::timed_name(i);
                    let stamped = objects::timed_service(i, &clock);
                    let svc = match template.as_ref() {
                        Some(t) => {
                            let mut svc = t.clone();
                            svc.metadata.name = stamped.metadata.name;
                            svc.metadata.namespace = stamped.metadata.namespace;
                            svc.metadata.annotations = stamped.metadata.annotations;
                            svc
                        }
                        None => stamped,
                    };
                    let value = serde_json::to_vec(&svc)?;
                    kv.put(format!("{prefix}{name}"), value, None).await?;
                    Ok(())
                }
            }),
        )
        .await?;
        let mut fanout = collect(w, watchers).await?;
        fanout.cpu = cpu.stop()?;
        drop(handles);
        fanout.clients = clients.len();
        fanout.open_wall = open_wall;
        fanout.write_latency = write_latency.summary();
        fanout.rss_with_watches = rss_with_watches;
        Ok(fanout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_the_last_byte() {
        assert_eq!(prefix_end("/a/"), b"/a0".to_vec());
        assert_eq!(prefix_end("a\u{7f}"), b"a\x80".to_vec());
    }
}
