//! The connect sink: a listener in each backend pod that accepts and closes
//! connections as fast as they come (a 4096-deep backlog, a few accept
//! threads, no per-connection work). The bare-connect phases dial it, so
//! their rate is bounded by the dataplane and the kernel, not by a server's
//! per-connection thread (`ferry-netexec` spawns one and listens with
//! std's 128-deep backlog, which a connect storm overflows).

use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};

use rustix::net::{AddressFamily, SocketType, bind, listen, socket, sockopt};

/// What the sink prints once it listens.
pub const READY: &str = "services-bench sink: listening";

/// Listens on `0.0.0.0:port` and accepts forever with `threads` threads.
pub fn serve(port: u16, threads: usize) -> Result<(), String> {
    let fd = socket(AddressFamily::INET, SocketType::STREAM, None)
        .map_err(|e| format!("socket: {e}"))?;
    sockopt::set_socket_reuseaddr(&fd, true).map_err(|e| format!("SO_REUSEADDR: {e}"))?;
    bind(&fd, &SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)))
        .map_err(|e| format!("bind :{port}: {e}"))?;
    listen(&fd, 4096).map_err(|e| format!("listen: {e}"))?;
    let listener = TcpListener::from(fd);
    println!("{READY} port={port}");
    let _ = std::io::stdout().flush();
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| {
                loop {
                    // Accept and drop: the client resets it anyway.
                    let _ = listener.accept();
                }
            });
        }
    });
    Ok(())
}
