//! `ferry_xdp_pass`: an XDP program that lets every packet through, in an
//! object of its own (no maps). Attached to the far end of a veth that a
//! node uses as its uplink (a test world's or `ferry up`'s underlay), it
//! turns on that end's XDP receive path, without which a veth drops the
//! frames the node's XDP fast path sends back with `XDP_TX`.

#![no_std]
#![no_main]

use aya_ebpf::bindings::xdp_action::XDP_PASS;
use aya_ebpf::macros::xdp;
use aya_ebpf::programs::XdpContext;

#[xdp]
pub fn ferry_xdp_pass(_ctx: XdpContext) -> u32 {
    XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
