//! Socket-level load balancing on the agent's cgroup: connect() and
//! sendto() to a service frontend are rewritten to a backend before any
//! packet exists, so no per-packet NAT is needed and the client's source
//! address reaches the backend unchanged. recvmsg() and getpeername() map
//! the backend back to the frontend the application asked for.

use core::ptr::{read_volatile, write_volatile};

use aya_ebpf::EbpfContext as _;
use aya_ebpf::bindings::bpf_sock_addr;
use aya_ebpf::helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_set_retval};
use aya_ebpf::macros::cgroup_sock_addr;
use aya_ebpf::programs::SockAddrContext;
use ferry_ebpf_common::{
    Backend, NODEPORT_ANY_V4, NODEPORT_ANY_V6, PROTO_SCTP, PROTO_TCP, PROTO_UDP, SCOPE_INTERNAL,
    ServiceKey, SockRevNatKey, SockRevNatValue, is_v4, v4_mapped,
};

use crate::maps::{NODEPORT_ADDRS, SERVICES, SOCK_REVNAT};
use crate::service::{Chosen, Verdict, node_port, select};

const ALLOW: i32 = 1;
const DENY: i32 = 0;
const ECONNREFUSED: i32 = 111;
const EADDRINUSE: i32 = 98;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

/// Bind protection: a node port at a node address (or the wildcard) is
/// the Service's, so a local server cannot take it by accident; bind()
/// fails with `EADDRINUSE`, as with Cilium's bind protection.
#[cgroup_sock_addr(bind4)]
pub fn ferry_bind4(ctx: SockAddrContext) -> i32 {
    protect(&ctx, Family::V4)
}

#[cgroup_sock_addr(bind6)]
pub fn ferry_bind6(ctx: SockAddrContext) -> i32 {
    protect(&ctx, Family::V6)
}

#[inline(always)]
fn protect(ctx: &SockAddrContext, family: Family) -> i32 {
    let sa = ctx.sock_addr;
    let Some(proto) = protocol(sa) else {
        return ALLOW;
    };
    let port = user_port(sa);
    if port == 0 {
        return ALLOW;
    }
    let addr = user_addr(sa, family);
    let wildcard = addr == NODEPORT_ANY_V4 || addr == NODEPORT_ANY_V6;
    if !wildcard && NODEPORT_ADDRS.get_ptr(&addr).is_none() {
        return ALLOW;
    }
    let mut key = ServiceKey {
        addr: if is_v4(&addr) {
            NODEPORT_ANY_V4
        } else {
            NODEPORT_ANY_V6
        },
        port,
        proto,
        scope: SCOPE_INTERNAL,
    };
    let mut taken = SERVICES.get_ptr(&key).is_some();
    // `[::]` without IPV6_V6ONLY takes the IPv4 port too.
    if !taken && addr == NODEPORT_ANY_V6 {
        key.addr = NODEPORT_ANY_V4;
        taken = SERVICES.get_ptr(&key).is_some();
    }
    if !taken {
        return ALLOW;
    }
    unsafe { bpf_set_retval(-EADDRINUSE) };
    DENY
}

#[cgroup_sock_addr(connect4)]
pub fn ferry_connect4(ctx: SockAddrContext) -> i32 {
    translate(&ctx, Family::V4)
}

#[cgroup_sock_addr(connect6)]
pub fn ferry_connect6(ctx: SockAddrContext) -> i32 {
    translate(&ctx, Family::V6)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn ferry_sendmsg4(ctx: SockAddrContext) -> i32 {
    translate(&ctx, Family::V4)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn ferry_sendmsg6(ctx: SockAddrContext) -> i32 {
    translate(&ctx, Family::V6)
}

#[cgroup_sock_addr(recvmsg4)]
pub fn ferry_recvmsg4(ctx: SockAddrContext) -> i32 {
    reverse(&ctx, Family::V4);
    ALLOW
}

#[cgroup_sock_addr(recvmsg6)]
pub fn ferry_recvmsg6(ctx: SockAddrContext) -> i32 {
    reverse(&ctx, Family::V6);
    ALLOW
}

#[cgroup_sock_addr(getpeername4)]
pub fn ferry_getpeername4(ctx: SockAddrContext) -> i32 {
    reverse(&ctx, Family::V4);
    ALLOW
}

#[cgroup_sock_addr(getpeername6)]
pub fn ferry_getpeername6(ctx: SockAddrContext) -> i32 {
    reverse(&ctx, Family::V6);
    ALLOW
}

/// The user address as stored in the maps. The context only allows 4-byte
/// loads of these fields, hence the volatile word reads.
#[inline(always)]
fn user_addr(sa: *mut bpf_sock_addr, family: Family) -> [u32; 4] {
    unsafe {
        match family {
            Family::V4 => v4_mapped(read_volatile(&raw const (*sa).user_ip4)),
            Family::V6 => [
                read_volatile(&raw const (*sa).user_ip6[0]),
                read_volatile(&raw const (*sa).user_ip6[1]),
                read_volatile(&raw const (*sa).user_ip6[2]),
                read_volatile(&raw const (*sa).user_ip6[3]),
            ],
        }
    }
}

#[inline(always)]
fn user_port(sa: *mut bpf_sock_addr) -> u16 {
    // The port sits in network order in the low half of the 32-bit field.
    unsafe { read_volatile(&raw const (*sa).user_port) as u16 }
}

#[inline(always)]
fn set_user(sa: *mut bpf_sock_addr, family: Family, addr: &[u32; 4], port: u16) {
    unsafe {
        match family {
            Family::V4 => write_volatile(&raw mut (*sa).user_ip4, addr[3]),
            Family::V6 => {
                write_volatile(&raw mut (*sa).user_ip6[0], addr[0]);
                write_volatile(&raw mut (*sa).user_ip6[1], addr[1]);
                write_volatile(&raw mut (*sa).user_ip6[2], addr[2]);
                write_volatile(&raw mut (*sa).user_ip6[3], addr[3]);
            }
        }
        write_volatile(&raw mut (*sa).user_port, port as u32);
    }
}

#[inline(always)]
fn protocol(sa: *mut bpf_sock_addr) -> Option<u8> {
    let proto = unsafe { read_volatile(&raw const (*sa).protocol) };
    match proto as u8 {
        p @ (PROTO_TCP | PROTO_UDP | PROTO_SCTP) if proto <= 255 => Some(p),
        _ => None,
    }
}

#[inline(always)]
fn translate(ctx: &SockAddrContext, family: Family) -> i32 {
    let sa = ctx.sock_addr;
    let Some(proto) = protocol(sa) else {
        return ALLOW;
    };
    let addr = user_addr(sa, family);
    let mut key = ServiceKey {
        addr,
        port: user_port(sa),
        proto,
        scope: SCOPE_INTERNAL,
    };
    let _ = node_port(&mut key, true);
    let netns_cookie = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    let mut chosen = Chosen::default();
    // In-cluster balancing stays random: no group the hooks see has a table.
    match select(&key, netns_cookie, None, &mut chosen) {
        Verdict::Pass => ALLOW,
        // Drop is for external traffic only, which never meets a socket.
        Verdict::Reject | Verdict::Drop => {
            // As kube-proxy's REJECT: the client sees "connection refused" at
            // once instead of waiting for a timeout.
            unsafe { bpf_set_retval(-ECONNREFUSED) };
            DENY
        }
        Verdict::To => {
            let backend = chosen.backend;
            // An IPv6 socket can only reach a v4 backend through a mapped
            // address, which is how it is stored; a v4 socket never gets a v6
            // backend because groups are per family.
            if family == Family::V4 && !is_v4(&backend.addr) {
                return ALLOW;
            }
            set_user(sa, family, &backend.addr, backend.port);
            let rkey = SockRevNatKey {
                cookie: unsafe { bpf_get_socket_cookie(ctx.as_ptr()) },
                // Flags are the agent's business, not part of the socket's peer.
                backend: Backend {
                    addr: backend.addr,
                    port: backend.port,
                    ..Backend::default()
                },
                _pad: 0,
            };
            // The address the socket asked for (a NodePort's key holds none).
            let rval = SockRevNatValue {
                addr,
                port: key.port,
                _pad: [0; 2],
            };
            let _ = SOCK_REVNAT.insert(&rkey, &rval, 0);
            ALLOW
        }
    }
}

#[inline(always)]
fn reverse(ctx: &SockAddrContext, family: Family) {
    let sa = ctx.sock_addr;
    let rkey = SockRevNatKey {
        cookie: unsafe { bpf_get_socket_cookie(ctx.as_ptr()) },
        backend: Backend {
            addr: user_addr(sa, family),
            port: user_port(sa),
            ..Backend::default()
        },
        _pad: 0,
    };
    if let Some(p) = SOCK_REVNAT.get_ptr(&rkey) {
        let front: SockRevNatValue = unsafe { *p };
        set_user(sa, family, &front.addr, front.port);
    }
}
