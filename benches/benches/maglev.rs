//! Maglev table builds (`ferry_dataplane::service::maglev`) for 1,000
//! Services of 100 backends each at the default table size (16381): the
//! time per table (with the builder's scratch and output buffer reused, and
//! with a fresh table allocated as a one-off build does), the time for all
//! 1,000, and the memory the 1,000 tables take (printed before the timings:
//! 1,000 × 16381 entries × 2 bytes = 32.8 MB, 31.2 MiB).
//!
//! `cargo bench -p ferry-benches --bench maglev` (about 20 s).

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ferry_dataplane::service::maglev::{BackendId, DEFAULT_SIZE, Seed, Table, TableBuilder};

const SERVICES: u16 = 1000;
const BACKENDS: u8 = 100;

/// Service `s`'s backends: 10.(s / 256).(s % 256).1..=100, port 8080.
fn services() -> Vec<Vec<BackendId>> {
    (0..SERVICES)
        .map(|s| {
            let [hi, lo] = s.to_be_bytes();
            (1..=BACKENDS)
                .map(|b| BackendId::new(IpAddr::V4(Ipv4Addr::new(10, hi, lo, b)), 8080))
                .collect()
        })
        .collect()
}

fn build_all(
    builder: &mut TableBuilder,
    services: &[Vec<BackendId>],
    seed: &Seed,
) -> Vec<Vec<u16>> {
    services
        .iter()
        .map(|backends| {
            let mut table = Vec::new();
            if let Err(e) = builder.fill(backends, DEFAULT_SIZE, seed, &mut table) {
                panic!("building a table: {e}");
            }
            table
        })
        .collect()
}

/// One untimed-by-criterion build of all tables, to report their memory.
fn report_memory(services: &[Vec<BackendId>], seed: &Seed) {
    let start = Instant::now();
    let tables = build_all(&mut TableBuilder::default(), services, seed);
    let elapsed = start.elapsed();
    let bytes: usize = tables
        .iter()
        .map(|t| std::mem::size_of_val(t.as_slice()))
        .sum();
    println!(
        "maglev: {} tables of {} backends at M={DEFAULT_SIZE}: {} entries of {} bytes = {bytes} bytes \
         ({:.1} MiB); one cold build of all: {elapsed:.2?}",
        tables.len(),
        BACKENDS,
        tables.iter().map(Vec::len).sum::<usize>(),
        std::mem::size_of::<u16>(),
        bytes as f64 / (1024.0 * 1024.0),
    );
}

fn maglev(c: &mut Criterion) {
    let services = services();
    let seed = Seed::from_setting("bench");
    report_memory(&services, &seed);

    let mut group = c.benchmark_group("maglev");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));

    let one = &services[0];
    let mut builder = TableBuilder::default();
    let mut out = Vec::new();
    group.throughput(Throughput::Elements(1));
    group.bench_function("table_100_backends_m16381_reused_buffers", |b| {
        b.iter(|| {
            if let Err(e) = builder.fill(black_box(one), DEFAULT_SIZE, &seed, &mut out) {
                panic!("building a table: {e}");
            }
            black_box(&out);
        })
    });
    group.bench_function("table_100_backends_m16381_fresh_table", |b| {
        b.iter(|| match Table::build(black_box(one), DEFAULT_SIZE, &seed) {
            Ok(table) => table,
            Err(e) => panic!("building a table: {e}"),
        })
    });

    group.throughput(Throughput::Elements(u64::from(SERVICES)));
    group.bench_function("1000_services_x_100_backends_m16381", |b| {
        b.iter(|| build_all(&mut builder, black_box(&services), &seed))
    });
    group.finish();
}

criterion_group!(benches, maglev);
criterion_main!(benches);
