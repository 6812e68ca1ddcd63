//! The `ferry-cni` binary: environment and stdin in, one JSON document out.

use std::io::{IsTerminal as _, Write as _};
use std::process::ExitCode;

use ferry_cni::config::{peek_log_level, peek_version};
use ferry_cni::env::Env;
use ferry_cni::{input, plugin, version};

/// Log filter (tracing's syntax); the config's `logLevel` is the fallback.
const LOG_ENV: &str = "FERRY_CNI_LOG";

fn main() -> ExitCode {
    let command = std::env::var("CNI_COMMAND").unwrap_or_default();
    // VERSION may be run by hand, with nothing on stdin. Anything else is
    // read up to input::STDIN_LIMIT and refused beyond it.
    let read = if command == "VERSION" && std::io::stdin().is_terminal() {
        Ok(Vec::new())
    } else {
        input::read_stdin(std::io::stdin().lock())
    };
    let (stdin, read_err) = match read {
        Ok(bytes) => (bytes, None),
        Err(e) => (Vec::new(), Some(e)),
    };
    init_logging(&stdin);
    if command.is_empty() {
        eprintln!(
            "ferry-cni {}: Ferry's CNI plugin; CNI protocol versions supported: {}",
            env!("CARGO_PKG_VERSION"),
            version::SUPPORTED.join(", ")
        );
    }
    let outcome = match read_err {
        Some(e) => Err(e),
        None => {
            Env::from_lookup(|k| std::env::var(k).ok()).and_then(|env| plugin::run(&env, &stdin))
        }
    };
    match outcome {
        Ok(out) => {
            if let Some(v) = out
                && let Err(e) = print(&v)
            {
                tracing::error!(error = %e, "writing the result to stdout");
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            // The config's version when it names one, else the newest.
            let version = peek_version(&stdin)
                .filter(|v| version::Version::parse(v).is_some())
                .unwrap_or_else(|| version::LATEST.to_string());
            tracing::debug!(code = e.code(), error = %e, "failed");
            let _ = print(&e.to_json(&version));
            ExitCode::FAILURE
        }
    }
}

fn print(v: &serde_json::Value) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, v)?;
    out.write_all(b"\n")?;
    out.flush()
}

fn init_logging(stdin: &[u8]) {
    let filter = std::env::var(LOG_ENV)
        .ok()
        .or_else(|| peek_log_level(stdin))
        .unwrap_or_else(|| "warn".into());
    let filter = tracing_subscriber::EnvFilter::try_new(&filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(false)
        .init();
}
