//! The NetworkPolicy compiler (`PolicyState::compile`) for one node over
//! the synthetic cluster of `ferry_benches::policy::cluster` (10,000 pods
//! in 100 namespaces, 100 of them on the node) with 1,000 policies:
//! - a full compile from a state never compiled (every identity, set and
//!   CIDR number allocated);
//! - a compile after one pod is relabelled (the agent's case after a
//!   change: the compile is a full recompute with the numbers kept);
//! - a compile with nothing changed.
//!
//! What the compile produces (rule entries, identities, sets) is printed
//! first. `cargo bench -p ferry-benches --bench policy_compile`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use ferry_benches::policy::cluster::{Cluster, NODE};
use ferry_dataplane::policy::PolicyState;

const POLICIES: usize = 1000;

fn state(cluster: &Cluster) -> PolicyState {
    match cluster.state(POLICIES) {
        Ok(s) => s,
        Err(e) => panic!("building the cluster: {e}"),
    }
}

fn compile(state: &mut PolicyState, cluster: &Cluster) -> ferry_dataplane::policy::Desired {
    match state.compile(NODE, &cluster.node_addrs()) {
        Ok(d) => d,
        Err(e) => panic!("compiling: {e}"),
    }
}

fn policy_compile(c: &mut Criterion) {
    let cluster = Cluster::default();
    let mut warm = state(&cluster);
    let d = compile(&mut warm, &cluster);
    println!(
        "policy compile: {} pods, {POLICIES} policies, {} local endpoints: {} rule entries, \
         {} pod identities, {} sets, {} CIDR prefixes, {} failed closed",
        cluster.pods(),
        d.endpoints.len(),
        d.rules.len(),
        ferry_benches::policy::distinct_identities(&d),
        d.sets.len(),
        d.cidrs.len(),
        d.problems.len()
    );

    let mut group = c.benchmark_group("policy_compile");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(10));

    group.bench_function("full_1000_policies_10000_pods", |b| {
        b.iter_batched(
            || state(&cluster),
            |mut s| black_box(compile(&mut s, &cluster)),
            BatchSize::LargeInput,
        )
    });

    // One pod, not on the node, relabelled back and forth between two
    // apps policies name: its identity and the rules naming it change
    // every time.
    let moved = (3, 42);
    let relabelled = [
        cluster.pod(moved, &[("app", "app-1")]),
        cluster.pod(moved, &[]),
    ];
    let mut flip = 0;
    group.bench_function("one_pod_relabelled_1000_policies_10000_pods", |b| {
        b.iter(|| {
            flip ^= 1;
            warm.upsert_pod(relabelled[flip].clone());
            black_box(compile(&mut warm, &cluster))
        })
    });

    group.bench_function("unchanged_1000_policies_10000_pods", |b| {
        b.iter(|| black_box(compile(&mut warm, &cluster)))
    });
    group.finish();
}

criterion_group!(benches, policy_compile);
criterion_main!(benches);
