//! NetworkPolicy conformance in a `ferry up` cluster, from the upstream
//! e2e netpol suite (namespaces x, y, z; pods a, b, c; servers on TCP and
//! UDP 80 and 81; probes from every pod to every pod's address and
//! Service; a whole truth table per check) and from cyclonus's generator
//! families, every verdict checked against the suite's own model
//! (`netpol/model.rs`), which is itself checked here against upstream's
//! hand-written tables.
//!
//! One two-node cluster serves every case: between cases all policies are
//! deleted and every label put back. Probes are `ferry-probe` processes in
//! the source pod's network namespace and cgroup, 160 at a time, 1 s for a
//! denial (see `netpol/probe.rs`).
//!
//! Environment: `FERRY_NETPOL_CASES` (default 20) random cases from `FERRY_NETPOL_SEED`
//! (default 13); `FERRY_NETPOL_FILTER` runs only the cases (and the checks
//! after them: held connections, no RST, observe, hostile input, pods
//! outside the agent's cgroup) whose name holds it.

mod common;

mod netpol {
    pub mod cases;
    pub mod generate;
    pub mod model;
    pub mod probe;
    pub mod runner;
    pub mod world;
}

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::TestCluster;
use ferry_testbed::skip_if_not_root;
use netpol::cases::{self, Env, Expect, Step};
use netpol::generate::{self, Rng};
use netpol::model::{Cidr, Dir, Op, Peer, Policy, PortSpec, Proto, Rule, Selector};
use netpol::probe::{Outcome, Prober, Spec};
use netpol::runner::{self, Runner};
use netpol::world::{self, WorldPod};

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Addresses like a two-node cluster's, for the model-only tests.
fn fake_env() -> Env {
    let mut ips = BTreeMap::new();
    let mut k = 0u8;
    for ns in world::NAMESPACES {
        for pod in world::PODS {
            ips.insert(format!("{ns}/{pod}"), Ipv4Addr::new(10, 244, k % 2, 10 + k));
            k += 1;
        }
    }
    Env { ips }
}

fn all_cases() -> Vec<cases::Case> {
    let mut all = cases::upstream();
    all.extend(cases::ours());
    all
}

#[test]
fn netpol_model_agrees_with_upstream_truth_tables() {
    let env = fake_env();
    let base = world::base_model(&env.ips);
    let mut failures = Vec::new();
    let mut checked = 0;
    for case in all_cases() {
        let steps = (case.steps)(&env);
        checked += steps
            .iter()
            .filter(|s| matches!(s, Step::Check(e) if e.iter().all(|e| e.upstream.is_some())))
            .count();
        if let Err(e) = runner::model_vs_upstream(&base, &steps) {
            failures.push(format!("{}: {e}", case.name));
        }
    }
    assert!(checked >= 50, "only {checked} checks with upstream tables");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn netpol_model_semantics() {
    let env = fake_env();
    let mut m = world::base_model(&env.ips);
    let (xa, xb, ya, yb, zc) = (
        m.pod_index("x/a"),
        m.pod_index("x/b"),
        m.pod_index("y/a"),
        m.pod_index("y/b"),
        m.pod_index("z/c"),
    );
    // Selectors: NotIn matches a missing key; DoesNotExist; AND of
    // matchLabels and matchExpressions.
    let l = netpol::model::labels(&[("pod", "a")]);
    assert!(Selector::expr("role", Op::NotIn, &["x"]).matches(&l));
    assert!(Selector::expr("role", Op::DoesNotExist, &[]).matches(&l));
    assert!(
        !Selector::labels(&[("pod", "a")])
            .and("pod", Op::In, &["b"])
            .matches(&l)
    );
    // ipBlock except.
    let c = Cidr::new(Ipv4Addr::new(10, 244, 1, 77), 16);
    assert_eq!(c.to_string(), "10.244.0.0/16");
    assert!(
        c.contains(Ipv4Addr::new(10, 244, 200, 1)) && !c.contains(Ipv4Addr::new(10, 245, 0, 1))
    );
    // Defaulted policyTypes: egress rules make Egress; an empty egress
    // list does not.
    let mut p = Policy::new("x", "p", Selector::all());
    p.egress = Some(vec![]);
    assert_eq!(p.effective_types(), vec![Dir::Ingress]);
    p.egress = Some(vec![Rule::all()]);
    assert_eq!(p.effective_types(), vec![Dir::Ingress, Dir::Egress]);
    // Self is always allowed; egress named ports resolve on the peer.
    m.upsert(
        Policy::new("x", "deny", Selector::all())
            .ingress(vec![])
            .egress(vec![Rule::ports(vec![PortSpec::proto_named(
                Proto::Udp,
                "serve-81-udp",
            )])]),
    );
    assert!(m.allowed(xa, xa, 80, Proto::Tcp));
    assert!(!m.allowed(ya, xa, 80, Proto::Tcp));
    assert!(m.allowed(xa, ya, 81, Proto::Udp));
    assert!(!m.allowed(xa, ya, 80, Proto::Udp));
    assert!(
        !m.allowed(xa, xb, 81, Proto::Udp),
        "x/b's ingress is isolated"
    );
    // A second policy adds; endPort is inclusive.
    m.upsert(
        Policy::new("x", "range", Selector::labels(&[("pod", "b")])).ingress(vec![Rule::new(
            vec![Peer::namespaces(Selector::all())],
            vec![PortSpec::range(None, 79, 81)],
        )]),
    );
    assert!(m.allowed(yb, xb, 80, Proto::Tcp), "inside the range");
    assert!(m.allowed(yb, xb, 81, Proto::Tcp), "its end");
    assert!(!m.allowed(yb, xb, 82, Proto::Tcp));
    assert!(!m.allowed(zc, xb, 80, Proto::Udp));
    // Policies of other namespaces never select.
    assert!(m.allowed(zc, yb, 81, Proto::Tcp));
}

#[test]
fn netpol_generated_cases_are_reproducible_and_varied() {
    let env = fake_env();
    let a: Vec<String> = {
        let mut r = Rng::new(13);
        (0..20)
            .map(|_| generate::describe(&generate::case(&mut r, &env)))
            .collect()
    };
    let b: Vec<String> = {
        let mut r = Rng::new(13);
        (0..20)
            .map(|_| generate::describe(&generate::case(&mut r, &env)))
            .collect()
    };
    assert_eq!(a, b);
    // The families show up: named ports, ranges, ipBlocks with except,
    // expressions, relabelling, deletion.
    let all = {
        let mut r = Rng::new(13);
        (0..200)
            .map(|_| generate::describe(&generate::case(&mut r, &env)))
            .collect::<Vec<_>>()
            .join("\n")
    };
    for needle in [
        "serve-81-udp",
        "endPort",
        "except",
        "NotIn",
        "label pod",
        "label ns",
        "delete ",
    ] {
        assert!(all.contains(needle), "no {needle} in 200 generated cases");
    }
    // Not every generated table is trivial.
    let base = world::base_model(&env.ips);
    let mut r = Rng::new(13);
    let mut denied = 0;
    for _ in 0..20 {
        let mut m = base.clone();
        for s in generate::case(&mut r, &env) {
            if let Step::Apply(ps) = s {
                ps.into_iter().for_each(|p| m.upsert(p));
            }
        }
        let t = m.table(80, Proto::Tcp);
        denied += t.cells.iter().flatten().filter(|c| !**c).count();
    }
    assert!(denied > 0);
}

/// The first line `child` prints, within `limit`.
fn first_line(rx: &mpsc::Receiver<String>, limit: Duration) -> Option<String> {
    rx.recv_timeout(limit).ok()
}

#[test]
fn netpol_conformance_in_a_ferry_cluster() {
    if skip_if_not_root() {
        return;
    }
    let started = Instant::now();
    let c = TestCluster::up(2);
    let pods = Runner::timed("world up", || world::build(&c));
    let ips: BTreeMap<String, Ipv4Addr> = pods.iter().map(|p| (p.id(), p.ip)).collect();
    let env = Env { ips: ips.clone() };
    let base = world::base_model(&ips);
    let nodes: std::collections::BTreeSet<&str> = pods.iter().map(|p| p.node.as_str()).collect();
    assert_eq!(nodes.len(), 2, "the world spans both nodes");
    let runner = Runner {
        c: &c,
        prober: Prober::new(pods),
        base: base.clone(),
        env,
        retries: 3,
        retry_pause: Duration::from_millis(700),
        probes: std::cell::Cell::new(0),
    };

    // No policies: every pod reaches every pod and Service on every port
    // and protocol, as the model says (a generous retry budget: Services
    // are being programmed as the world comes up).
    let warmup = Runner {
        retries: 40,
        retry_pause: Duration::from_millis(500),
        ..runner_clone(&runner)
    };
    Runner::timed("no policies: 8 tables of 81", || {
        warmup.check(&base, &generate::all_kinds())
    })
    .unwrap_or_else(|e| panic!("without policies: {e}"));
    Runner::timed("no policies, again", || {
        runner.check(&base, &generate::all_kinds())
    })
    .unwrap_or_else(|e| panic!("without policies: {e}"));

    // The prober tells a refusal (nothing listens on 82: an RST) from a
    // timeout (an address nobody has), which the no-RST check relies on.
    let xa = runner.base.pod_index("x/a");
    let yb_ip = runner.prober.pods[runner.base.pod_index("y/b")].ip;
    let unused = Ipv4Addr::from(u32::from(yb_ip) | 0xfe);
    let out = runner.prober.run(&[
        Spec {
            src: xa,
            addr: SocketAddrV4::new(yb_ip, 82),
            udp: false,
        },
        Spec {
            src: xa,
            addr: SocketAddrV4::new(unused, 80),
            udp: false,
        },
        Spec {
            src: xa,
            addr: SocketAddrV4::new(unused, 80),
            udp: true,
        },
    ]);
    assert_eq!(
        out,
        [Outcome::Refused, Outcome::TimedOut, Outcome::TimedOut],
        "{unused}"
    );

    let filter = std::env::var("FERRY_NETPOL_FILTER").unwrap_or_default();
    let seed = env_num("FERRY_NETPOL_SEED", 13);
    let count = env_num("FERRY_NETPOL_CASES", 20);
    let mut named: Vec<(String, Vec<Step>)> = all_cases()
        .into_iter()
        .filter(|c| c.name.contains(&filter))
        .map(|c| (c.name.to_owned(), (c.steps)(&runner.env)))
        .collect();
    let mut rng = Rng::new(seed);
    for i in 0..count {
        let steps = generate::case(&mut rng, &runner.env);
        let name = format!(
            "generated #{i} (seed {seed}):\n  {}",
            generate::describe(&steps)
        );
        if name.contains(&filter) || filter.is_empty() {
            named.push((name, steps));
        }
    }

    let mut failures = Vec::new();
    for (name, steps) in &named {
        world::reset(&c);
        let t = Instant::now();
        let r = runner.run_case(steps);
        eprintln!(
            "netpol: {} {name} ({:.1?})",
            if r.is_ok() { "ok  " } else { "FAIL" },
            t.elapsed()
        );
        if let Err(e) = r {
            failures.push(format!("=== {name}\n{e}"));
        }
    }
    type Extra = fn(&Runner) -> Result<(), String>;
    let extras: [(&str, Extra); 5] = [
        (
            "an allowed long-lived connection survives an unrelated policy change",
            |r| long_lived_connection_survives_unrelated_change(r, true),
        ),
        (
            "a denied SYN is dropped (timeout, no RST)",
            denied_syn_times_out,
        ),
        (
            "ferry-agent observe shows a drop and an allow with their pods and policies, inspect policy by pod name",
            observe_names_pods_and_policies,
        ),
        (
            "hostile input: a policy of 10,000 ipBlocks fails closed, the agent stays up",
            ten_thousand_ip_blocks_fail_closed,
        ),
        (
            "outside the agent's cgroup: a Service translated at the pod's veth, judged on the backend, observed",
            outside_the_cgroup_judged_on_the_backend,
        ),
    ];
    let mut ran = named.len();
    for (name, check) in extras.iter().filter(|(n, _)| n.contains(&filter)) {
        world::reset(&c);
        let t = Instant::now();
        let r = check(&runner);
        eprintln!(
            "netpol: {} {name} ({:.1?})",
            if r.is_ok() { "ok  " } else { "FAIL" },
            t.elapsed()
        );
        if let Err(e) = r {
            failures.push(format!("=== {name}\n{e}"));
        }
        ran += 1;
    }
    eprintln!(
        "netpol: {} cases, {} probes, {} failed, {:.1?} in all",
        ran,
        runner.probes.get(),
        failures.len(),
        started.elapsed()
    );
    assert!(
        failures.is_empty(),
        "{} failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn runner_clone<'a>(r: &Runner<'a>) -> Runner<'a> {
    Runner {
        c: r.c,
        prober: Prober {
            bin: r.prober.bin.clone(),
            pods: r.prober.pods.clone(),
            workers: r.prober.workers,
            timeout: r.prober.timeout,
        },
        base: r.base.clone(),
        env: r.env.clone(),
        retries: r.retries,
        retry_pause: r.retry_pause,
        probes: std::cell::Cell::new(0),
    }
}

/// x/a isolated for ingress, x/b let in on TCP 80.
fn a_from_b() -> Policy {
    Policy::new("x", "a-from-b", Selector::labels(&[("pod", "a")])).ingress(vec![Rule::new(
        vec![Peer::pods(Selector::labels(&[("pod", "b")]))],
        vec![PortSpec::proto_number(Proto::Tcp, 80)],
    )])
}

/// A check of TCP 80 alone.
fn tcp80() -> Vec<Expect> {
    vec![Expect {
        port: 80,
        proto: Proto::Tcp,
        upstream: None,
    }]
}

/// x/b holds a connection to x/a:80 that a policy allows; a policy of
/// another namespace and one for another pod land (with `probe`, the
/// table shows them enforced); the connection still carries its request.
fn long_lived_connection_survives_unrelated_change(r: &Runner, probe: bool) -> Result<(), String> {
    let allow = a_from_b();
    let tcp80 = tcp80();
    r.run_case(&[Step::Apply(vec![allow.clone()]), Step::Check(tcp80.clone())])?;

    let (xa, xb) = (r.base.pod_index("x/a"), r.base.pod_index("x/b"));
    let release = r.c.data_dir.join("netpol-release");
    let _ = std::fs::remove_file(&release);
    let holder = &r.prober.pods[xb];
    // The held connection's own timeouts: far beyond the test's waits.
    let mut child = netpol::probe::command(
        &r.prober.bin,
        &holder.netns,
        &holder.cgroup,
        SocketAddr::V4(SocketAddrV4::new(r.prober.pods[xa].ip, 80)),
        Duration::from_secs(60),
        &["--hold", &release.to_string_lossy()],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .spawn()
    .map_err(|e| format!("spawning the holder: {e}"))?;
    let rx = lines(&mut child)?;
    let result = (|| {
        let first = first_line(&rx, Duration::from_secs(5)).ok_or("the holder never connected")?;
        if !first.starts_with("connected ") {
            return Err(format!("the holder: {first}"));
        }
        let unrelated = vec![
            Policy::new("y", "deny-ingress", Selector::all()).ingress(vec![]),
            Policy::new("x", "isolate-c", Selector::labels(&[("pod", "c")]))
                .ingress(vec![])
                .egress(vec![]),
        ];
        r.run_steps(
            &[
                Step::Apply(vec![allow.clone()]),
                Step::Apply(unrelated),
                Step::Check(tcp80.clone()),
            ],
            probe,
        )?;
        std::fs::write(&release, "").map_err(|e| e.to_string())?;
        let reply =
            first_line(&rx, Duration::from_secs(10)).ok_or("no reply on the held connection")?;
        if reply.starts_with("ok a ") {
            Ok(())
        } else {
            Err(format!("the held connection: {reply}"))
        }
    })();
    let _ = child.kill();
    let _ = child.wait();
    result
}

/// With ingress denied, a SYN to the pod (and to its Service) is dropped:
/// the client times out after its whole timeout, never refused.
fn denied_syn_times_out(r: &Runner) -> Result<(), String> {
    r.run_case(&[
        Step::Apply(vec![
            Policy::new("x", "deny-ingress", Selector::all()).ingress(vec![]),
        ]),
        Step::Check(tcp80()),
    ])?;
    let (xa, ya) = (r.base.pod_index("x/a"), r.base.pod_index("y/a"));
    let slow = Prober {
        bin: r.prober.bin.clone(),
        pods: r.prober.pods.clone(),
        workers: 2,
        timeout: Duration::from_millis(2000),
    };
    let t = Instant::now();
    let out = slow.run(&[
        Spec {
            src: ya,
            addr: SocketAddrV4::new(r.prober.pods[xa].ip, 80),
            udp: false,
        },
        Spec {
            src: ya,
            addr: SocketAddrV4::new(r.prober.pods[xa].service_ip, 80),
            udp: false,
        },
    ]);
    let took = t.elapsed();
    if out != [Outcome::TimedOut, Outcome::TimedOut] || took < Duration::from_millis(1900) {
        return Err(format!(
            "expected two timeouts after 2 s, got {out:?} in {took:.1?}"
        ));
    }
    Ok(())
}

/// `ferry-agent observe --pod x/a -o json` on x/a's node, with x/a
/// isolated by a policy that lets x/b in on TCP 80: y/a's attempt is a
/// drop at x/a's ingress naming that policy; x/b's a forward naming it as
/// the one that allows; both with the pods' names. Then `ferry-agent
/// inspect policy x/a` shows the pod by name with that policy's table.
fn observe_names_pods_and_policies(r: &Runner) -> Result<(), String> {
    r.run_case(&[Step::Apply(vec![a_from_b()]), Step::Check(tcp80())])?;
    let (xa, xb, ya) = (
        r.base.pod_index("x/a"),
        r.base.pod_index("x/b"),
        r.base.pod_index("y/a"),
    );
    let target = &r.prober.pods[xa];
    let node =
        r.c.cluster
            .nodes()
            .iter()
            .find(|n| n.name == target.node)
            .ok_or("x/a's node is not in the cluster")?;
    let (mut child, rx) = observe(&node.observe_socket, &["--pod", "x/a"])?;
    let policy = serde_json::json!([{"namespace": "x", "name": "a-from-b"}]);
    let is = |v: &serde_json::Value, verdict: &str, reason: &str, from: &str| {
        v["verdict"] == verdict
            && v["reason"] == reason
            && v["direction"] == "ingress"
            && v["policies"] == policy
            && v["source"]["namespace"]
                .as_str()
                .zip(v["source"]["pod"].as_str())
                == from.split_once('/')
            && v["destination"]["namespace"] == "x"
            && v["destination"]["pod"] == "a"
            && v["destination"]["port"] == 80
            && v["protocol"] == "TCP"
            && v["node"] == target.node.as_str()
    };
    let (mut dropped, mut allowed, mut seen) = (false, false, Vec::new());
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(dropped && allowed) && Instant::now() < deadline {
        let addr = SocketAddrV4::new(target.ip, 80);
        r.prober.run(&[
            Spec {
                src: ya,
                addr,
                udp: false,
            },
            Spec {
                src: xb,
                addr,
                udp: false,
            },
        ]);
        while let Ok(line) = rx.recv_timeout(Duration::from_millis(300)) {
            let v: serde_json::Value =
                serde_json::from_str(&line).map_err(|e| format!("{e}: {line}"))?;
            dropped |= is(&v, "DROPPED", "policy-denied", "y/a");
            allowed |= is(&v, "FORWARDED", "policy-allowed", "x/b");
            seen.push(line);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    if dropped && allowed {
        // The same pod by name in `inspect policy`: its policy, and the
        // peer it lets in, named.
        let out =
            std::process::Command::new(ferry_testbed::binary("ferry-dataplane", "ferry-agent"))
                .args(["inspect", "policy", "x/a", "--bpffs-root"])
                .arg(&node.bpffs_root)
                .arg("--observe-socket")
                .arg(&node.observe_socket)
                .output()
                .map_err(|e| format!("running inspect: {e}"))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let head = format!("{}  x/a  set ", target.ip);
        let ok = out.status.success()
            && text.starts_with(&head)
            && text.contains("isolated for ingress  (policies: x/a-from-b)")
            && text.contains("x/b ")
            && text
                .lines()
                .any(|l| l.contains("ingress") && l.contains("TCP") && l.ends_with("x/a-from-b"))
            && text.lines().count() >= 3;
        if ok {
            Ok(())
        } else {
            Err(format!(
                "inspect policy x/a:\n{text}\n{}",
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    } else {
        let mut stderr = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
        }
        Err(format!(
            "drop seen: {dropped}, allow seen: {allowed}; records:\n{}\nstderr: {stderr}",
            seen.join("\n")
        ))
    }
}

/// A NetworkPolicy for x/a with 10,000 ipBlocks (x/b's own address among
/// them), past the agent's limit of ipBlock prefixes per policy: x/a is
/// isolated and nothing is let in (fail closed: neither an open door nor a
/// crash), every other pod is untouched, and the agent's log names the
/// policy and the limit.
fn ten_thousand_ip_blocks_fail_closed(r: &Runner) -> Result<(), String> {
    let xb = r.prober.pods[r.base.pod_index("x/b")].ip;
    let blocks: Vec<serde_json::Value> = (0..10_000u32)
        .map(|i| {
            let cidr = if i == 0 {
                format!("{xb}/32")
            } else {
                format!("{}/32", Ipv4Addr::from(0xc0a8_0000 + i))
            };
            serde_json::json!({"ipBlock": {"cidr": cidr}})
        })
        .collect();
    let np = serde_json::json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"namespace": "x", "name": "hostile"},
        "spec": {
            "podSelector": {"matchLabels": {"pod": "a"}},
            "ingress": [{"from": blocks, "ports": [{"protocol": "TCP", "port": 80}]}],
        },
    });
    let file = r.c.data_dir.join("netpol-hostile.json");
    std::fs::write(&file, np.to_string()).map_err(|e| e.to_string())?;
    r.c.kubectl(&["create", "-f", &file.to_string_lossy()])?;
    // What the agent must do: x/a isolated for ingress, nothing allowed.
    let mut model = r.base.clone();
    model.upsert(Policy::new("x", "hostile", Selector::labels(&[("pod", "a")])).ingress(vec![]));
    let checked = r.check(&model, &tcp80());
    let _ =
        r.c.kubectl(&["delete", "networkpolicy", "hostile", "-n", "x"]);
    checked?;
    // The agents run as `deploy/`'s DaemonSet: their logs are the pods'.
    let text = r.c.kubectl(&[
        "logs",
        "-n",
        "kube-system",
        "-l",
        "k8s-app=ferry-agent",
        "--tail=-1",
        "--prefix",
    ])?;
    if let Some(line) = text.lines().find(|l| l.contains("panicked")) {
        return Err(format!("an agent panicked: {line}"));
    }
    let said = text.contains("x/hostile") && text.contains("more than the limit");
    if said {
        Ok(())
    } else {
        Err("no agent log names x/hostile and the limit it broke".into())
    }
}

/// `ferry-agent observe -o json ARGS` against `socket`: the child and its
/// lines.
fn observe(
    socket: &std::path::Path,
    args: &[&str],
) -> Result<(std::process::Child, mpsc::Receiver<String>), String> {
    let mut child =
        std::process::Command::new(ferry_testbed::binary("ferry-dataplane", "ferry-agent"))
            .arg("observe")
            .arg("--observe-socket")
            .arg(socket)
            .args(["-o", "json"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawning ferry-agent observe: {e}"))?;
    let rx = lines(&mut child)?;
    Ok((child, rx))
}

/// The lines `child` prints, read on a thread of their own.
fn lines(child: &mut std::process::Child) -> Result<mpsc::Receiver<String>, String> {
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    Ok(rx)
}

/// Processes outside the agent's cgroup get no connect()-time
/// translation: their SYN to x/a's Service is translated at their pod's
/// veth and then judged against the backend, x/a, which lets x/b in and
/// not y/a. The source node's agent reports the translation.
fn outside_the_cgroup_judged_on_the_backend(r: &Runner) -> Result<(), String> {
    r.run_case(&[Step::Apply(vec![a_from_b()]), Step::Check(tcp80())])?;
    let pods = &r.prober.pods;
    let (xa, xb, ya) = (
        &pods[r.base.pod_index("x/a")],
        &pods[r.base.pod_index("x/b")],
        &pods[r.base.pod_index("y/a")],
    );
    let node =
        r.c.cluster
            .nodes()
            .iter()
            .find(|n| n.name == xb.node)
            .ok_or("x/b's node is not in the cluster")?;
    let (mut child, rx) = observe(
        &node.observe_socket,
        &["--pod", "x/b", "--verdict", "translated"],
    )?;
    // No `--cgroup`: the probe stays in the test's own cgroup.
    let probe = |from: &WorldPod| {
        let out = std::process::Command::new("nsenter")
            .arg(format!("--net={}", from.netns.display()))
            .arg("--")
            .arg(&r.prober.bin)
            .arg(SocketAddrV4::new(xa.service_ip, 80).to_string())
            .args(["--timeout-ms", "1000"])
            .output();
        match out {
            Ok(o) => netpol::probe::parse(
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .next()
                    .unwrap_or_default(),
                &String::from_utf8_lossy(&o.stderr),
            ),
            Err(e) => Outcome::Failed(e.to_string()),
        }
    };
    let (mut outcomes, mut translated, mut seen) = (Vec::new(), false, Vec::new());
    let deadline = Instant::now() + Duration::from_secs(20);
    while !translated && Instant::now() < deadline {
        outcomes = vec![probe(xb), probe(ya)];
        while let Ok(line) = rx.recv_timeout(Duration::from_millis(300)) {
            let v: serde_json::Value =
                serde_json::from_str(&line).map_err(|e| format!("{e}: {line}"))?;
            translated |= v["verdict"] == "TRANSLATED"
                && v["source"]["namespace"] == "x"
                && v["source"]["pod"] == "b"
                && v["service"]["ip"] == xa.service_ip.to_string()
                && v["service"]["port"] == 80
                && v["destination"]["ip"] == xa.ip.to_string()
                && v["destination"]["pod"] == "a";
            seen.push(line);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let want = [Outcome::Ok("a".into()), Outcome::TimedOut];
    if translated && outcomes == want {
        Ok(())
    } else {
        Err(format!(
            "probes x/b, y/a -> x/a's Service: {outcomes:?} (want {want:?}); translation seen: {translated}; records:\n{}",
            seen.join("\n")
        ))
    }
}
