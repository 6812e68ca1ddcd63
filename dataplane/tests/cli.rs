//! ferry-agent's command line: settings are taken before or after a
//! subcommand, as kubectl takes them, and errors name the setting.

use std::process::Command;

fn agent(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ferry-agent"))
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("run ferry-agent")
}

#[test]
fn settings_are_taken_after_a_subcommand() {
    // A directory that does not exist: nothing is created or touched.
    let root = std::env::temp_dir().join(format!("ferry-cli-{}-no-pins", std::process::id()));
    let root = root.to_string_lossy();
    for args in [
        vec!["inspect", "services", "--bpffs-root", &root],
        vec!["--bpffs-root", &root, "inspect", "services"],
        vec!["inspect", "--bpffs-root", &root, "conntrack"],
    ] {
        let out = agent(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(!err.contains("unexpected argument"), "{args:?}: {err}");
        // The setting was taken: the error is about that directory.
        assert!(
            err.contains(&*root) && err.contains("--bpffs-root"),
            "{args:?}: {err}"
        );
    }
    let help = agent(&["inspect", "--help"]);
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(text.contains("--bpffs-root"), "{text}");
}
