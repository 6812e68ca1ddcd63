//! `deploy/`, the manifests that install ferry-agent and ferry-dns on a
//! cluster: every object is valid against Kubernetes 1.32's schemas
//! (PyPI's `kubernetes-validate --strict`: unknown fields fail, and so does
//! any warning), `kubectl kustomize deploy/` renders, and what the manifests
//! say to the agent is what the agent takes (its subcommands, flags and the
//! ConfigMap's environment variables). The test lives with the agent
//! because most of `deploy/` is the agent's command line.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use ferry_testbed::{
    ControlPlane, World, binary, command_output, output_text as text, skip_if_not_root,
};
use serde_json::Value;

const KUBERNETES_VERSION: &str = "1.32.0";

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
}

/// Runs `cmd` (feeding it `input`), bounded in time.
fn run(cmd: &mut Command, input: Option<&[u8]>) -> Output {
    command_output(cmd, input, Duration::from_secs(60)).expect("run a command")
}

/// The manifests, without the Kustomization (no schema: kubernetes-validate
/// only warns about it).
fn manifest_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(deploy_dir())
        .expect("deploy/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .filter(|p| p.file_name().is_some_and(|n| n != "kustomization.yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 8, "{files:?}");
    files
}

fn objects() -> Vec<Value> {
    manifest_files()
        .iter()
        .flat_map(|f| {
            let text = std::fs::read_to_string(f).expect("read");
            serde_saphyr::from_multiple::<Value>(&text)
                .unwrap_or_else(|e| panic!("{}: {e}", f.display()))
        })
        .filter(|v| !v.is_null())
        .collect()
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in deploy/"))
}

/// A validation that passed: rc 0 and no warning or error line.
fn assert_valid(what: &str, out: &Output) {
    let all = text(out);
    assert!(out.status.success(), "{what}: {all}");
    for line in all.lines() {
        assert!(
            !line.starts_with("WARN") && !line.starts_with("ERROR"),
            "{what}: {line}\n{all}"
        );
    }
}

#[test]
fn manifests_are_valid_for_kubernetes_1_32() {
    if !on_path("kubernetes-validate") {
        println!("SKIP: kubernetes-validate is not installed (`cargo xtask setup` installs it)");
        return;
    }
    for file in manifest_files() {
        let out = run(
            Command::new("kubernetes-validate")
                .args(["-k", KUBERNETES_VERSION, "--strict"])
                .arg(&file),
            None,
        );
        assert_valid(&file.display().to_string(), &out);
        let passed = String::from_utf8_lossy(&out.stdout)
            .matches(" passed ")
            .count()
            + String::from_utf8_lossy(&out.stderr)
                .matches(" passed ")
                .count();
        assert!(
            passed >= 1,
            "{}: nothing validated\n{}",
            file.display(),
            text(&out)
        );
    }
    // The validator does fail: an unknown field in a copy of the DaemonSet.
    let ds = std::fs::read_to_string(deploy_dir().join("agent-daemonset.yaml")).expect("read");
    let bad = ds.replacen(
        "      hostNetwork: true",
        "      hostNetwork: true\n      hostNetwrk: true",
        1,
    );
    assert_ne!(bad, ds);
    let out = run(
        Command::new("kubernetes-validate").args(["-k", KUBERNETES_VERSION, "--strict", "-"]),
        Some(bad.as_bytes()),
    );
    assert!(!out.status.success(), "{}", text(&out));
}

#[test]
fn kustomization_renders_every_manifest_validly() {
    if !on_path("kubectl") {
        println!("SKIP: kubectl is not installed");
        return;
    }
    let out = run(
        Command::new("kubectl").arg("kustomize").arg(deploy_dir()),
        None,
    );
    assert!(out.status.success(), "{}", text(&out));
    let rendered = String::from_utf8_lossy(&out.stdout).into_owned();
    let docs: Vec<Value> = serde_saphyr::from_multiple(&rendered).expect("rendered YAML");
    assert_eq!(
        docs.len(),
        objects().len(),
        "every object is in the kustomization"
    );
    for d in &docs {
        let namespaced = !matches!(
            d["kind"].as_str(),
            Some("ClusterRole" | "ClusterRoleBinding")
        );
        if namespaced {
            assert_eq!(d["metadata"]["namespace"], "kube-system", "{d}");
        }
    }
    if !on_path("kubernetes-validate") {
        println!("SKIP: kubernetes-validate is not installed; rendered output not validated");
        return;
    }
    let out = run(
        Command::new("kubernetes-validate").args(["-k", KUBERNETES_VERSION, "--strict", "-"]),
        Some(rendered.as_bytes()),
    );
    assert_valid("kubectl kustomize deploy/", &out);
}

/// The store's revision, as a list reports it.
fn revision(cp: &ControlPlane) -> u64 {
    let list: Value = serde_json::from_str(
        &cp.kubectl(&["get", "--raw", "/api/v1/namespaces/kube-system/configmaps"])
            .expect("list"),
    )
    .expect("json");
    list["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|v| v.parse().ok())
        .expect("a list's resourceVersion")
}

/// `kubectl apply --dry-run=server -k deploy/` against ferry-apiserver:
/// every object passes admission (RBAC kinds included) and is reported
/// created, yet nothing is stored, the revision does not move and the
/// DNS Service's address stays free, so the real apply that follows gets
/// it.
#[test]
fn server_side_dry_run_stores_nothing_then_apply_installs_everything() {
    if skip_if_not_root() || !on_path("kubectl") {
        return;
    }
    let world = World::builder().nodes(1).build().expect("world");
    let cp = ControlPlane::start(&world);
    let deploy = deploy_dir().to_string_lossy().into_owned();
    let before = revision(&cp);
    let out = cp
        .kubectl(&["apply", "--dry-run=server", "-k", &deploy])
        .expect("server-side dry run");
    let reported = out
        .lines()
        .filter(|l| l.ends_with("(server dry run)"))
        .count();
    assert_eq!(reported, objects().len(), "{out}");
    assert_eq!(revision(&cp), before, "a dry run moved the store: {out}");
    let missing = cp.kubectl(&["get", "-k", &deploy, "-o", "name"]);
    assert!(
        missing.as_ref().is_err_and(|e| e.contains("NotFound")),
        "{missing:?}"
    );

    let out = cp.kubectl(&["apply", "-k", &deploy]).expect("apply");
    assert_eq!(
        out.lines().filter(|l| l.ends_with(" created")).count(),
        objects().len(),
        "{out}"
    );
    let ip = cp
        .kubectl(&[
            "-n",
            "kube-system",
            "get",
            "svc",
            "kube-dns",
            "-o",
            "jsonpath={.spec.clusterIP}",
        ])
        .expect("kube-dns");
    assert_eq!(
        ip,
        find(&objects(), "Service", "kube-dns")["spec"]["clusterIP"]
    );
    // The disruption controller counts the budget: ferry-dns's two pods,
    // unscheduled in a cluster of no node, are expected and not healthy.
    cp.eventually("the PodDisruptionBudget's status", 20, || {
        cp.kubectl(&[
            "-n",
            "kube-system",
            "get",
            "pdb",
            "ferry-dns",
            "-o",
            "jsonpath={.status.expectedPods}/{.status.currentHealthy}/{.status.disruptionsAllowed}",
        ])
        .is_ok_and(|s| s == "2/0/0")
    });
    let table = cp
        .kubectl(&["-n", "kube-system", "get", "pdb"])
        .expect("get pdb");
    assert!(
        table
            .starts_with("NAME        MIN AVAILABLE   MAX UNAVAILABLE   ALLOWED DISRUPTIONS   AGE"),
        "{table}"
    );
    roles_grant_exactly_what_deploy_lists(&cp);
}

/// What `deploy/`'s bindings grant one ServiceAccount: (resource as
/// kubectl names it, verb, namespaced to kube-system).
fn granted(objects: &[Value], account: &str) -> Vec<(String, String, bool)> {
    let mut out = Vec::new();
    for binding in objects
        .iter()
        .filter(|o| o["kind"] == "ClusterRoleBinding" || o["kind"] == "RoleBinding")
    {
        let bound = binding["subjects"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| s["kind"] == "ServiceAccount" && s["name"] == account);
        if !bound {
            continue;
        }
        let role_ref = &binding["roleRef"];
        let role = find(
            objects,
            role_ref["kind"].as_str().expect("roleRef kind"),
            role_ref["name"].as_str().expect("roleRef name"),
        );
        let namespaced = binding["kind"] == "RoleBinding";
        for rule in role["rules"].as_array().into_iter().flatten() {
            for group in rule["apiGroups"].as_array().into_iter().flatten() {
                let group = group.as_str().unwrap_or_default();
                for resource in rule["resources"].as_array().into_iter().flatten() {
                    let resource = resource.as_str().unwrap_or_default();
                    let name = if group.is_empty() {
                        resource.to_owned()
                    } else {
                        format!("{resource}.{group}")
                    };
                    for verb in rule["verbs"].as_array().into_iter().flatten() {
                        out.push((
                            name.clone(),
                            verb.as_str().unwrap_or_default().to_owned(),
                            namespaced,
                        ));
                    }
                }
            }
        }
    }
    out
}

/// Each component's ServiceAccount may do what `deploy/` grants it and
/// nothing more (`kubectl auth can-i --list` with its own token), and a
/// ServiceAccount with no role is refused every one of those verbs, a
/// real list answered with kube-apiserver's 403.
fn roles_grant_exactly_what_deploy_lists(cp: &ControlPlane) {
    let objects = objects();
    cp.kubectl(&["-n", "kube-system", "create", "serviceaccount", "nobody"])
        .expect("create nobody");
    let token = |sa: &str| {
        cp.kubectl(&["-n", "kube-system", "create", "token", sa])
            .unwrap_or_else(|e| panic!("a token for {sa}: {e}"))
            .trim()
            .to_owned()
    };
    let nobody = token("nobody");
    // What every authenticated user may do (system:basic-user), beyond
    // the components' roles.
    let basic = [
        "selfsubjectaccessreviews.authorization.k8s.io",
        "selfsubjectrulesreviews.authorization.k8s.io",
        "selfsubjectreviews.authentication.k8s.io",
    ];
    for account in ["ferry-agent", "ferry-dns"] {
        let rules = granted(&objects, account);
        assert!(rules.len() >= 4, "{account}: {rules:?}");
        let own = token(account);
        for (resource, verb, namespaced) in &rules {
            let scope = if *namespaced { "-n" } else { "-A" };
            let mut args = vec!["--token", &own, "auth", "can-i", verb, resource, scope];
            if *namespaced {
                args.push("kube-system");
            }
            assert_eq!(
                cp.kubectl(&args).map(|s| s.trim().to_owned()),
                Ok("yes".to_owned()),
                "{account} may {verb} {resource}"
            );
            args[1] = &nobody;
            let refused = cp.kubectl(&args);
            assert!(
                refused
                    .as_ref()
                    .is_err_and(|e| e.trim_end().ends_with(": no")),
                "nobody may not {verb} {resource}: {refused:?}"
            );
            if verb == "list" {
                let got = cp.kubectl(&["--token", &nobody, "-n", "kube-system", "get", resource]);
                let want = format!(
                    "User \"system:serviceaccount:kube-system:nobody\" cannot list resource \"{}\"",
                    resource.split('.').next().unwrap_or_default()
                );
                assert!(
                    got.as_ref()
                        .is_err_and(|e| e.contains("(Forbidden)") && e.contains(&want)),
                    "nobody lists {resource}: {got:?}"
                );
            }
        }
        // Nothing more: every rule the account holds in kube-system is one
        // of deploy/'s or every user's.
        let list = cp
            .kubectl(&[
                "--token",
                &own,
                "auth",
                "can-i",
                "--list",
                "-n",
                "kube-system",
            ])
            .expect("can-i --list");
        for (resource, _, _) in &rules {
            assert!(
                list.contains(resource.as_str()),
                "{resource} not listed:\n{list}"
            );
        }
        for line in list.lines().skip(1) {
            let Some(resource) = line
                .split_whitespace()
                .next()
                .filter(|r| !r.starts_with('['))
            else {
                continue;
            };
            let verbs = line
                .rsplit_once('[')
                .map(|(_, v)| v.trim_end().trim_end_matches(']'))
                .unwrap_or_default();
            for verb in verbs.split_whitespace() {
                assert!(
                    basic.contains(&resource)
                        || rules.iter().any(|(r, v, _)| r == resource && v == verb),
                    "{account} holds {verb} {resource}, which deploy/ does not grant:\n{list}"
                );
            }
        }
    }
}

/// Every image is the workspace version's, never pulled.
#[test]
fn images_are_this_version_and_never_pulled() {
    let objects = objects();
    let want = format!("localhost/ferry:{}", env!("CARGO_PKG_VERSION"));
    let mut seen = 0;
    for o in &objects {
        let spec = &o["spec"]["template"]["spec"];
        for list in ["initContainers", "containers"] {
            for c in spec[list].as_array().into_iter().flatten() {
                assert_eq!(c["image"], want.as_str(), "{}", c["name"]);
                assert_eq!(c["imagePullPolicy"], "IfNotPresent", "{}", c["name"]);
                seen += 1;
            }
        }
    }
    assert_eq!(seen, 4);
    let kustomization =
        std::fs::read_to_string(deploy_dir().join("kustomization.yaml")).expect("read");
    assert!(
        kustomization.contains(&format!("newTag: \"{}\"", env!("CARGO_PKG_VERSION"))),
        "{kustomization}"
    );
}

/// The agent takes what the DaemonSet gives it: each container's command
/// line parses (`--help` after it stops before running), and every
/// ConfigMap key is an environment variable the agent reads, with a value
/// it accepts.
#[test]
fn the_agent_takes_its_manifests_settings() {
    let objects = objects();
    let agent = binary("ferry-dataplane", "ferry-agent");
    let help = run(Command::new(&agent).arg("--help"), None);
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    let mut read: BTreeSet<String> = help
        .split("[env: ")
        .skip(1)
        .filter_map(|s| s.split(['=', ']']).next().map(str::to_owned))
        .collect();
    // kube's in-cluster configuration reads these two.
    read.extend([
        "KUBERNETES_SERVICE_HOST".into(),
        "KUBERNETES_SERVICE_PORT".into(),
    ]);
    let config = &find(&objects, "ConfigMap", "ferry-agent")["data"];
    let config = config.as_object().expect("data");
    let mut env: Vec<(String, String)> = Vec::new();
    for (k, v) in config {
        assert!(
            read.contains(k),
            "{k} is not read by ferry-agent (it reads {read:?})"
        );
        env.push((k.clone(), v.as_str().expect("string").to_owned()));
    }
    let ds = find(&objects, "DaemonSet", "ferry-agent");
    let spec = &ds["spec"]["template"]["spec"];
    let containers: Vec<&Value> = ["initContainers", "containers"]
        .iter()
        .flat_map(|l| spec[*l].as_array().into_iter().flatten())
        .collect();
    assert_eq!(containers.len(), 3);
    for c in containers {
        let argv: Vec<&str> = c["command"]
            .as_array()
            .expect("command")
            .iter()
            .chain(c["args"].as_array().into_iter().flatten())
            .map(|a| a.as_str().expect("string"))
            .collect();
        assert_eq!(argv[0], "/usr/bin/ferry-agent");
        let out = run(
            Command::new(&agent)
                .args(&argv[1..])
                .arg("--help")
                .env_clear()
                .envs(env.iter().map(|(k, v)| (k, v))),
            None,
        );
        assert!(out.status.success(), "{argv:?}: {}", text(&out));
        // The values parse: `check` reads every setting before it runs.
        let out = run(
            Command::new(&agent)
                .args(["check", "--kernel-btf", "/nonexistent"])
                .env_clear()
                .envs(env.iter().map(|(k, v)| (k, v))),
            None,
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !err.contains("invalid value") && !err.contains("unexpected"),
            "{err}"
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains("/run/ferry/cgroupv2"),
            "the ConfigMap's cgroup root was not taken: {stdout}"
        );
    }
    // The probes read the agent's health endpoints where it serves them.
    let agent_c = &spec["containers"][0];
    let metrics = config["FERRY_AGENT_METRICS_BIND_ADDRESS"]
        .as_str()
        .expect("metrics");
    let port: u16 = metrics
        .rsplit_once(':')
        .expect("port")
        .1
        .parse()
        .expect("port");
    for (probe, path) in [
        ("startupProbe", "/healthz"),
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
    ] {
        let get = &agent_c[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}");
        assert_eq!(get["port"], u64::from(port), "{probe}");
        assert_eq!(get["host"], "127.0.0.1", "{probe}");
    }
}

/// ferry-dns's settings file in the ConfigMap is one ferry-dns takes, and
/// the probes and ports are where it serves them.
#[test]
fn ferry_dns_takes_its_manifests_settings() {
    let objects = objects();
    let config = find(&objects, "ConfigMap", "ferry-dns")["data"]["ferry-dns.toml"]
        .as_str()
        .expect("ferry-dns.toml")
        .to_owned();
    let tmp = tempfile::tempdir().expect("tmp");
    let file = tmp.path().join("ferry-dns.toml");
    std::fs::write(&file, &config).expect("write");
    // Settings are validated before the API is reached: with a kubeconfig
    // that does not exist, the error must be about that kubeconfig.
    let dns = binary("ferry-dns", "ferry-dns");
    let out = run(
        Command::new(&dns)
            .arg("--config")
            .arg(&file)
            .args(["--kubeconfig", "/nonexistent/kubeconfig"])
            .env_remove("RUST_BACKTRACE"),
        None,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("/nonexistent/kubeconfig"), "{err}");
    let deploy = find(&objects, "Deployment", "ferry-dns");
    let c = &deploy["spec"]["template"]["spec"]["containers"][0];
    assert!(
        config.contains("metrics-listen = \"[::]:9153\""),
        "{config}"
    );
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/health");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/ready");
    assert_eq!(c["livenessProbe"]["httpGet"]["port"], 9153);
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], 9153);
    assert_eq!(deploy["spec"]["replicas"], 2);
    // CoreDNS's Service, as its tooling looks for it.
    let svc = find(&objects, "Service", "kube-dns");
    assert_eq!(svc["metadata"]["labels"]["k8s-app"], "kube-dns");
    assert_eq!(svc["spec"]["clusterIP"], "10.96.0.10");
    let ports: Vec<(String, u64, String)> = svc["spec"]["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap_or_default().to_owned(),
                p["port"].as_u64().unwrap_or_default(),
                p["protocol"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        ports,
        [
            ("dns".into(), 53, "UDP".into()),
            ("dns-tcp".into(), 53, "TCP".into()),
            ("metrics".into(), 9153, "TCP".into())
        ]
    );
    // The Service, the PDB and the anti-affinity select the Deployment's pods.
    let labels = &deploy["spec"]["template"]["metadata"]["labels"];
    let pdb = find(&objects, "PodDisruptionBudget", "ferry-dns");
    for (k, v) in svc["spec"]["selector"]
        .as_object()
        .into_iter()
        .flatten()
        .chain(
            pdb["spec"]["selector"]["matchLabels"]
                .as_object()
                .into_iter()
                .flatten(),
        )
    {
        assert_eq!(&labels[k], v, "{k}");
    }
}
