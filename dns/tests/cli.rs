//! The binary's settings: a bad file or flag is refused with an error that
//! names the setting, before anything is bound or watched.

use std::process::Command;

use ferry_testbed::binary;

fn run(args: &[&str]) -> (bool, String) {
    let out = Command::new(binary("ferry-dns", "ferry-dns"))
        .args(args)
        .output()
        .expect("run ferry-dns");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_settings_are_refused_by_name() {
    let dir = std::env::temp_dir().join(format!("ferry-dns-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let cases = [
        ("ttl = 9000\n", "`ttl`"),
        ("upstreams = [\"resolver.example\"]\n", "`upstreams`"),
        ("listen = [\"0.0.0.0:70000\"]\n", "`listen`"),
        ("tll = 5\n", "tll"),
        ("pods = \"sometimes\"\n", "sometimes"),
    ];
    for (i, (text, needle)) in cases.iter().enumerate() {
        let file = dir.join(format!("bad-{i}.toml"));
        std::fs::write(&file, text).expect("write");
        let (ok, stderr) = run(&[
            "--kubeconfig",
            "/nonexistent",
            "--config",
            &file.to_string_lossy(),
        ]);
        assert!(!ok, "{text} was accepted");
        assert!(stderr.contains(needle), "{text}: {stderr}");
    }
    let (ok, stderr) = run(&["--kubeconfig", "/nonexistent", "--ttl", "4000"]);
    assert!(!ok);
    assert!(stderr.contains("`ttl`"), "{stderr}");
    let (ok, stderr) = run(&["--config", "/nonexistent/ferry-dns.toml"]);
    assert!(!ok);
    assert!(stderr.contains("/nonexistent/ferry-dns.toml"), "{stderr}");
    std::fs::remove_dir_all(&dir).ok();
}
