//! SCTP's CRC32c checksum, updated for a rewritten port without reading the
//! packet: the programs translate SCTP ports as they do TCP's and UDP's,
//! and SCTP's checksum (RFC 9260, CRC32c over the SCTP packet, no IP
//! pseudo-header) cannot be patched the one's-complement way.
//!
//! CRC32c is linear: for two messages of the same length,
//! `crc(a) ^ crc(b) = raw(a ^ b)`, where `raw` starts from 0 and has no
//! final inversion. A port rewrite changes 2 bytes at offset 0 or 2 of the
//! common header, so the new checksum is the old one xor `raw` of a message
//! holding only the changed bits followed by zeros: the CRC register of
//! those 2 bytes, carried through the remaining zero bytes, which is a
//! multiplication by `x^(8·n)` modulo the polynomial. Everything here is a
//! fixed number of steps (the verifier sees bounded loops), in the
//! bit-reflected form CRC32c uses (bit 31 is `x^0`).

/// CRC32c's polynomial, bit-reflected.
pub const POLY: u32 = 0x82f6_3b78;

/// `a * b mod POLY`, both bit-reflected polynomials.
#[inline(always)]
pub fn mul(a: u32, b: u32) -> u32 {
    let mut product = 0u32;
    let mut b = b;
    let mut i = 0;
    while i < 32 {
        // Bit `31 - i` of `a` is the coefficient of `x^i`.
        if a & (1u32 << (31 - i)) != 0 {
            product ^= b;
        }
        // b *= x.
        b = if b & 1 != 0 { (b >> 1) ^ POLY } else { b >> 1 };
        i += 1;
    }
    product
}

/// `x^(8·n) mod POLY`: the effect of `n` zero bytes on a CRC register.
/// `n` below 2^16 (an SCTP packet's length).
#[inline(always)]
pub fn zero_bytes(n: u32) -> u32 {
    let mut result = 1u32 << 31; // x^0
    let mut power = 1u32 << (31 - 8); // x^8
    let mut i = 0;
    while i < 16 {
        if n & (1 << i) != 0 {
            result = mul(result, power);
        }
        power = mul(power, power);
        i += 1;
    }
    result
}

/// The CRC register (from 0) after the two bytes of `v`, as stored.
#[inline(always)]
fn raw16(v: u16) -> u32 {
    let mut crc = 0u32;
    let bytes = v.to_ne_bytes();
    let mut i = 0;
    while i < 2 {
        crc ^= u32::from(bytes[i]);
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ POLY
            } else {
                crc >> 1
            };
            bit += 1;
        }
        i += 1;
    }
    crc
}

/// The checksum of an SCTP packet of `len` bytes (from its common header
/// on) whose 2 bytes at `offset` (0: source port, 2: destination port),
/// as stored, change from `old` to `new`. `crc` and the result are the
/// checksum field read and written as a little-endian `u32` (CRC32c's
/// register order, as SCTP stores it).
#[inline(always)]
pub fn update_port(crc: u32, old: u16, new: u16, offset: u32, len: u32) -> u32 {
    let after = len.saturating_sub(offset + 2);
    crc ^ mul(zero_bytes(after), raw16(old ^ new))
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec::Vec;

    /// CRC32c as RFC 9260 Appendix A defines it, one bit at a time.
    fn crc32c(data: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in data {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ POLY
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    /// An SCTP packet with its checksum filled in (little-endian, bytes
    /// 8..12), as a sender writes it.
    fn packet(sport: u16, dport: u16, body: &[u8]) -> Vec<u8> {
        let mut p = Vec::new();
        p.extend_from_slice(&sport.to_be_bytes());
        p.extend_from_slice(&dport.to_be_bytes());
        p.extend_from_slice(&0x1234_5678u32.to_be_bytes());
        p.extend_from_slice(&[0; 4]);
        p.extend_from_slice(body);
        let c = crc32c(&p);
        p[8..12].copy_from_slice(&c.to_le_bytes());
        p
    }

    #[test]
    fn crc32c_matches_the_rfc_test_vector() {
        // RFC 3720 B.4: 32 bytes of zeros.
        assert_eq!(crc32c(&[0; 32]), 0x8a91_36aa);
    }

    #[test]
    fn port_rewrites_keep_the_checksum_right() {
        let mut seed = 0x9e37_79b9u32;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed
        };
        for len in [0usize, 1, 4, 16, 20, 35, 64, 100, 1200, 1452, 9000] {
            let body: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let (sport, dport) = (next() as u16, next() as u16);
            let (new_sport, new_dport) = (next() as u16, next() as u16);
            let before = packet(sport, dport, &body);
            let want = packet(new_sport, new_dport, &body);
            let crc = u32::from_le_bytes([before[8], before[9], before[10], before[11]]);
            let total = before.len() as u32;
            // As the programs see ports: the stored bytes read natively.
            let stored = |p: u16| u16::from_ne_bytes(p.to_be_bytes());
            let crc = update_port(crc, stored(dport), stored(new_dport), 2, total);
            let crc = update_port(crc, stored(sport), stored(new_sport), 0, total);
            assert_eq!(
                crc.to_le_bytes(),
                [want[8], want[9], want[10], want[11]],
                "body of {len} bytes"
            );
        }
    }

    #[test]
    fn zero_bytes_is_repeated_multiplication_by_x8() {
        let x8 = 1u32 << (31 - 8);
        let mut p = 1u32 << 31;
        for n in 0..300 {
            assert_eq!(zero_bytes(n), p, "n = {n}");
            p = mul(p, x8);
        }
    }
}
