//! Ferry's eBPF programs, one object loaded by `ferry-agent`.
//!
//! Owns the per-connection decisions: which backend a service frontend
//! translates to (at random, by ClientIP affinity or by a Maglev table),
//! and making replies look as if they came from the frontend, at the
//! socket hooks, at TC ([`packet`]), at XDP ([`xdp`]) and across nodes by
//! direct server return ([`dsr`]); and NetworkPolicy's verdicts at pod
//! devices ([`policy`]). Reads the maps in [`maps`]; it must never write the
//! service, backend, Maglev, settings or policy maps (the agent owns them),
//! only the affinity, socket reverse-NAT, conntrack (the services' and
//! policy's) and statistics maps.
//!
//! Every lookup is a hash or array lookup keyed by the packet or socket, so
//! the cost does not grow with the number of services or endpoints.

#![no_std]
#![no_main]

mod dsr;
mod flow;
mod maps;
mod observe;
mod packet;
mod policy;
mod service;
mod sock;
mod xdp;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any path that could reach here; it is never run.
    loop {}
}

// GPL-compatible, so the kernel offers every helper the programs use.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
