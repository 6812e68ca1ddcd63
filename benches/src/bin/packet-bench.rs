//! `packet-bench`: the TC program's per-packet cost by BPF_PROG_TEST_RUN
//! with 1, 1,000 and 100,000 services in the maps; writes a markdown table.
//! Needs root (loading BPF); attaches nothing.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use ferry_benches::packet;

#[derive(Debug, Parser)]
#[command(name = "packet-bench", about = "Per-packet cost of Ferry's TC program")]
struct Args {
    /// Service counts, one table row each.
    #[arg(long, value_delimiter = ',', default_value = "1,1000,100000")]
    services: Vec<usize>,
    /// Distinct flows timed (new, then established).
    #[arg(long, default_value_t = 20_000)]
    flows: usize,
    /// Runs of the kernel's loop for the mean rows.
    #[arg(long, default_value_t = 200_000)]
    repeat: u32,
    /// Where the table goes (also printed).
    #[arg(long)]
    out: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut rows = Vec::new();
    for &n in &args.services {
        eprintln!("packet-bench: {n} services");
        rows.push(
            packet::measure(n, args.flows, args.repeat)
                .with_context(|| format!("measuring with {n} services"))?,
        );
    }
    let table = format!(
        "## TC ingress per-packet cost (BPF_PROG_TEST_RUN)\n\n{}",
        packet::table(&rows)
    );
    println!("{table}");
    if let Some(out) = &args.out {
        if let Some(dir) = out.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(out, &table).with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(())
}
