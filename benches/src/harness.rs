//! What every harness binary does around its measurements: find the
//! binaries it runs, run them on a thread that stops cleanly on ctrl-c,
//! SIGTERM or a time limit, and write the table.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::BenchError;

/// Runs `run` on a thread named `name` under [`watch`]: `run` gets the
/// stop flag, which is set on ctrl-c, SIGTERM or after `limit`.
pub fn run_watched<T: Send + 'static>(
    name: &str,
    limit: Duration,
    say: fn(&str),
    run: impl FnOnce(Arc<AtomicBool>) -> T + Send + 'static,
) -> Result<T, BenchError> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    let worker = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || run(flag))
        .map_err(|e| BenchError::io("starting the benchmark thread", e))?;
    watch(limit, stop, worker, say)
}

/// Waits for the benchmark thread; on ctrl-c, SIGTERM or the time limit,
/// sets `stop` (the run then ends at its next step and removes what it made)
/// and still waits for it, so cleanup finishes before exit. A panic on the
/// thread goes on here.
pub fn watch<T: Send + 'static>(
    limit: Duration,
    stop: Arc<AtomicBool>,
    worker: std::thread::JoinHandle<T>,
    say: fn(&str),
) -> Result<T, BenchError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| BenchError::io("starting the signal runtime", e))?;
    let joined = runtime.block_on(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| BenchError::io("listening for SIGTERM", e))?;
        let mut done = tokio::task::spawn_blocking(move || worker.join());
        let why = tokio::select! {
            r = &mut done => return Ok(r),
            _ = tokio::signal::ctrl_c() => "interrupted",
            _ = term.recv() => "terminated",
            () = tokio::time::sleep(limit) => "out of time",
        };
        say(&format!("{why}: stopping and cleaning up"));
        stop.store(true, Ordering::Relaxed);
        Ok::<_, BenchError>(done.await)
    })?;
    match joined {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(e) => Err(BenchError::io(
            "waiting for the benchmark thread",
            std::io::Error::other(e),
        )),
    }
}

/// Writes `table` to `out` (making its directory) and prints it.
pub fn write_table(out: &Path, table: &str, say: fn(&str)) -> Result<(), BenchError> {
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| BenchError::io(format!("creating {}", dir.display()), e))?;
    }
    std::fs::write(out, table)
        .map_err(|e| BenchError::io(format!("writing {}", out.display()), e))?;
    println!("{table}");
    say(&format!("wrote {}", out.display()));
    Ok(())
}

/// `name` where `given` says, else beside this binary when it is there,
/// else target/release/`name`: an absolute path to an existing file, or an
/// error naming `cargo xtask bench <bench>` and the `--<flag>` to pass.
pub fn beside(
    name: &str,
    flag: &str,
    given: Option<&PathBuf>,
    bench: &str,
) -> Result<PathBuf, BenchError> {
    let path = match given {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(|d| d.join(name)))
            .filter(|p| p.exists())
            .unwrap_or_else(|| PathBuf::from("target/release").join(name)),
    };
    let path = std::path::absolute(&path).map_err(|source| BenchError::Io {
        what: format!("resolving {name}"),
        source,
    })?;
    if !path.is_file() {
        return Err(BenchError::Check(format!(
            "{} not found: build it with `cargo xtask bench {bench}` or pass --{flag}",
            path.display()
        )));
    }
    Ok(path)
}

/// The first line `program arg` prints (its version), or "(version
/// unknown)".
pub fn version_of(program: &Path, arg: &str) -> String {
    std::process::Command::new(program)
        .arg(arg)
        .output()
        .ok()
        .map(|o| {
            let text = String::from_utf8_lossy(&o.stdout);
            text.lines().next().unwrap_or("").trim().to_string()
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "(version unknown)".into())
}

/// Fails early, naming the first of `tools` not on the PATH.
pub fn require_tools(tools: &[&str]) -> Result<(), BenchError> {
    for t in tools {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(t).is_file()))
            .unwrap_or(false);
        if !found {
            return Err(BenchError::Check(format!(
                "`{t}` is not installed (cargo xtask setup installs what the benches need)"
            )));
        }
    }
    Ok(())
}
