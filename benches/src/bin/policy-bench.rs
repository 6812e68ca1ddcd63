//! `policy-bench`: the pod programs' per-packet cost under NetworkPolicy by
//! BPF_PROG_TEST_RUN with 0, 100 and 10,000 policies over 10,000 pods;
//! writes a markdown table. Needs root (loading BPF); attaches nothing.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use ferry_benches::policy::{cluster::Cluster, packet, table};

#[derive(Debug, Parser)]
#[command(
    name = "policy-bench",
    about = "Per-packet cost of Ferry's pod programs under NetworkPolicy"
)]
struct Args {
    /// Policy counts, one world each.
    #[arg(long, value_delimiter = ',', default_value = "0,100,10000")]
    policies: Vec<usize>,
    /// Namespaces of the synthetic cluster.
    #[arg(long, default_value_t = 100)]
    namespaces: usize,
    /// Pods per namespace (at least 10).
    #[arg(long, default_value_t = 100)]
    pods_per_namespace: usize,
    /// Packets timed per program, case and policy count.
    #[arg(long, default_value_t = 20_000)]
    packets: usize,
    /// Rounds interleaving the policy counts.
    #[arg(long, default_value_t = 20)]
    rounds: usize,
    /// Where the table goes (also printed).
    #[arg(long)]
    out: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.pods_per_namespace >= 10 && args.namespaces >= 3,
        "the cluster needs at least 3 namespaces of 10 pods"
    );
    let options = packet::Options {
        cluster: Cluster {
            namespaces: args.namespaces,
            pods_per_namespace: args.pods_per_namespace,
        },
        policies: args.policies.clone(),
        packets: args.packets,
        rounds: args.rounds,
    };
    let worlds = packet::measure(&options).context("measuring the pod programs")?;
    let table = table::table(&options, &worlds);
    println!("{table}");
    if let Some(out) = &args.out {
        if let Some(dir) = out.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(out, &table).with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(())
}
