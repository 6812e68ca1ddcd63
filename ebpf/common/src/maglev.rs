//! The Maglev flow hash, the one piece of computation the BPF programs and
//! the agent must share bit for bit: the agent builds each group's table
//! from MurmurHash3_x64_128 of its backends (`ferry-dataplane`'s
//! `service::maglev`), and the programs pick entry `flow_hash % M` of it
//! for a new flow. Every node given the same seed computes the same hash
//! for a flow, so every node picks the same backend.
//!
//! [`flow_hash`] is MurmurHash3_x64_128's first half over the 37 bytes of
//! a flow, in this order: source address (16 bytes, stored form), destination
//! address (16), source port (2, network order), destination port (2),
//! protocol (1); with the seed's two keys as the two initial state words.
//! Written for that fixed length so the BPF verifier sees no loop; the
//! agent's tests check it against the general MurmurHash3 implementation.

pub const C1: u64 = 0x87c3_7b91_1142_53d5;
pub const C2: u64 = 0x4cf5_ad43_2745_937f;

/// MurmurHash3's 64-bit finaliser.
#[inline(always)]
pub fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^ (k >> 33)
}

/// Mixes a block's (or the tail's) first word.
#[inline(always)]
pub fn mix_k1(k: u64) -> u64 {
    k.wrapping_mul(C1).rotate_left(31).wrapping_mul(C2)
}

/// Mixes a block's (or the tail's) second word.
#[inline(always)]
pub fn mix_k2(k: u64) -> u64 {
    k.wrapping_mul(C2).rotate_left(33).wrapping_mul(C1)
}

/// One 16-byte block's step on the state `(h1, h2)`.
#[inline(always)]
pub fn block(h1: &mut u64, h2: &mut u64, lo: u64, hi: u64) {
    *h1 ^= mix_k1(lo);
    *h1 = h1
        .rotate_left(27)
        .wrapping_add(*h2)
        .wrapping_mul(5)
        .wrapping_add(0x52dc_e729);
    *h2 ^= mix_k2(hi);
    *h2 = h2
        .rotate_left(31)
        .wrapping_add(*h1)
        .wrapping_mul(5)
        .wrapping_add(0x3849_5ab5);
}

/// The finalisation over `len` bytes hashed: `(h1, h2)`.
#[inline(always)]
pub fn finish(mut h1: u64, mut h2: u64, len: u64) -> (u64, u64) {
    h1 ^= len;
    h2 ^= len;
    h1 = h1.wrapping_add(h2);
    h2 = h2.wrapping_add(h1);
    h1 = fmix64(h1);
    h2 = fmix64(h2);
    h1 = h1.wrapping_add(h2);
    h2 = h2.wrapping_add(h1);
    (h1, h2)
}

/// The little-endian word of two stored address words' bytes.
#[inline(always)]
fn word(a: u32, b: u32) -> u64 {
    u64::from(u32::from_le_bytes(a.to_ne_bytes()))
        | (u64::from(u32::from_le_bytes(b.to_ne_bytes())) << 32)
}

/// Bytes a flow hashes (see the module documentation).
pub const FLOW_BYTES: u64 = 37;

/// The hash a new flow's backend is looked up with: `table[hash % M]`.
/// Addresses in stored form, ports in network order, as packets hold them.
#[inline(always)]
pub fn flow_hash(
    src: &[u32; 4],
    dst: &[u32; 4],
    sport: u16,
    dport: u16,
    proto: u8,
    seed: &[u64; 2],
) -> u64 {
    let (mut h1, mut h2) = (seed[0], seed[1]);
    block(&mut h1, &mut h2, word(src[0], src[1]), word(src[2], src[3]));
    block(&mut h1, &mut h2, word(dst[0], dst[1]), word(dst[2], dst[3]));
    // The 5-byte tail: both ports as stored, then the protocol.
    let tail = u64::from(u16::from_le_bytes(sport.to_ne_bytes()))
        | (u64::from(u16::from_le_bytes(dport.to_ne_bytes())) << 16)
        | (u64::from(proto) << 32);
    h1 ^= mix_k1(tail);
    finish(h1, h2, FLOW_BYTES).0
}
