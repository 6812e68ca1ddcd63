//! Raw frames for running packet programs with BPF_PROG_TEST_RUN:
//! Ethernet + IPv4/IPv6 + TCP/UDP/SCTP with valid checksums (SCTP's is
//! CRC32c), and the reverse, reading addresses and ports back after
//! checking every checksum.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_SCTP: u8 = 132;

/// CRC32c as RFC 9260 defines SCTP's checksum, a bit at a time.
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82f6_3b78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Whether an SCTP packet's stored CRC32c is right.
fn sctp_ok(l4: &[u8]) -> bool {
    if l4.len() < 12 {
        return false;
    }
    let stored = [l4[8], l4[9], l4[10], l4[11]];
    let mut copy = l4.to_vec();
    copy[8..12].fill(0);
    crc32c(&copy).to_le_bytes() == stored
}

/// One end of a flow.
pub type Endpoint = (IpAddr, u16);

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

fn sum16(bytes: &[u8]) -> u32 {
    bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)])))
        .sum()
}

fn octets(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

fn pseudo(src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> u32 {
    sum16(&octets(src)) + sum16(&octets(dst)) + u32::from(proto) + len as u32
}

/// A frame from `src` to `dst`: TCP (a SYN when `syn`, else an ACK), UDP,
/// or SCTP (an INIT when `syn`, else a DATA chunk), carrying a few bytes of
/// payload. Both addresses must be of one family.
pub fn frame(proto: u8, src: Endpoint, dst: Endpoint, syn: bool) -> Vec<u8> {
    let payload = b"ferry";
    let mut l4 = Vec::with_capacity(40);
    l4.extend_from_slice(&src.1.to_be_bytes());
    l4.extend_from_slice(&dst.1.to_be_bytes());
    if proto == PROTO_SCTP {
        // Verification tag, checksum (filled below), then one chunk: type,
        // flags, length, and a body ending in the payload, padded to 4.
        l4.extend_from_slice(&(if syn { 0u32 } else { 0x5eed_f00d }).to_be_bytes());
        l4.extend_from_slice(&[0; 4]);
        let body = [&[0u8; 12][..], payload, &[0, 0, 0]].concat();
        l4.push(if syn { 1 } else { 0 });
        l4.push(if syn { 0 } else { 3 });
        l4.extend_from_slice(&((4 + 12 + payload.len()) as u16).to_be_bytes());
        l4.extend_from_slice(&body);
        let c = crc32c(&l4);
        l4[8..12].copy_from_slice(&c.to_le_bytes());
    } else if proto == PROTO_TCP {
        l4.extend_from_slice(&1u32.to_be_bytes());
        l4.extend_from_slice(&0u32.to_be_bytes());
        l4.push(5 << 4);
        l4.push(if syn { 0x02 } else { 0x10 });
        l4.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0]);
    } else {
        let len = (8 + payload.len()) as u16;
        l4.extend_from_slice(&len.to_be_bytes());
        l4.extend_from_slice(&[0, 0]);
    }
    if proto != PROTO_SCTP {
        l4.extend_from_slice(payload);
        let at = if proto == PROTO_TCP { 16 } else { 6 };
        let mut c = !fold(pseudo(src.0, dst.0, proto, l4.len()) + sum16(&l4));
        if c == 0 && proto == PROTO_UDP {
            c = 0xffff;
        }
        l4[at..at + 2].copy_from_slice(&c.to_be_bytes());
    }
    wrap(proto, src.0, dst.0, &l4)
}

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_ICMPV6: u8 = 58;

/// An ICMP (IPv4) or ICMPv6 (IPv6) message of type `ty` from `src` to
/// `dst`, with identifier `id` (echo), sequence 1 and a little payload.
pub fn icmp(src: IpAddr, dst: IpAddr, ty: u8, id: u16) -> Vec<u8> {
    let proto = if src.is_ipv4() {
        PROTO_ICMP
    } else {
        PROTO_ICMPV6
    };
    let mut l4 = vec![ty, 0, 0, 0];
    l4.extend_from_slice(&id.to_be_bytes());
    l4.extend_from_slice(&1u16.to_be_bytes());
    l4.extend_from_slice(b"ferry");
    let sum = if proto == PROTO_ICMPV6 {
        pseudo(src, dst, proto, l4.len()) + sum16(&l4)
    } else {
        sum16(&l4)
    };
    let c = !fold(sum);
    l4[2..4].copy_from_slice(&c.to_be_bytes());
    wrap(proto, src, dst, &l4)
}

/// Ethernet and IP headers (no options, no extension headers) around `l4`.
fn wrap(proto: u8, src: IpAddr, dst: IpAddr, l4: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 12];
    match (src, dst) {
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            p.extend_from_slice(&0x86ddu16.to_be_bytes());
            p.extend_from_slice(&[0x60, 0, 0, 0]);
            p.extend_from_slice(&(l4.len() as u16).to_be_bytes());
            p.extend_from_slice(&[proto, 64]);
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
        }
        (s, d) => {
            let v4 = |ip: IpAddr| match ip {
                IpAddr::V4(v4) => v4,
                IpAddr::V6(v6) => v6.to_ipv4_mapped().unwrap_or(Ipv4Addr::UNSPECIFIED),
            };
            let mut h = vec![0x45, 0];
            h.extend_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
            h.extend_from_slice(&[0, 1, 0x40, 0, 64, proto, 0, 0]);
            h.extend_from_slice(&v4(s).octets());
            h.extend_from_slice(&v4(d).octets());
            let c = !fold(sum16(&h));
            h[10..12].copy_from_slice(&c.to_be_bytes());
            p.extend_from_slice(&0x0800u16.to_be_bytes());
            p.extend_from_slice(&h);
        }
    }
    p.extend_from_slice(l4);
    p
}

/// The source and destination of a frame made like [`frame`]'s, after
/// checking the IPv4 header and TCP/UDP checksums.
pub fn endpoints(p: &[u8]) -> Result<(Endpoint, Endpoint), String> {
    if p.len() < 14 {
        return Err(format!("{} bytes is no Ethernet frame", p.len()));
    }
    let short = || format!("{} bytes is too short", p.len());
    let (src, dst, proto, l4) = match u16::from_be_bytes([p[12], p[13]]) {
        0x0800 => {
            let h = p.get(14..34).ok_or_else(short)?;
            if fold(sum16(h)) != 0xffff {
                return Err("bad IPv4 header checksum".into());
            }
            let s = Ipv4Addr::new(h[12], h[13], h[14], h[15]);
            let d = Ipv4Addr::new(h[16], h[17], h[18], h[19]);
            (
                IpAddr::V4(s),
                IpAddr::V4(d),
                h[9],
                p.get(34..).ok_or_else(short)?,
            )
        }
        0x86dd => {
            let h = p.get(14..54).ok_or_else(short)?;
            let mut s = [0u8; 16];
            let mut d = [0u8; 16];
            s.copy_from_slice(&h[8..24]);
            d.copy_from_slice(&h[24..40]);
            (
                IpAddr::V6(Ipv6Addr::from(s)),
                IpAddr::V6(Ipv6Addr::from(d)),
                h[6],
                p.get(54..).ok_or_else(short)?,
            )
        }
        other => return Err(format!("ethertype {other:#06x} is not IP")),
    };
    if l4.len() < 8 {
        return Err(short());
    }
    let good = if proto == PROTO_SCTP {
        sctp_ok(l4)
    } else {
        fold(pseudo(src, dst, proto, l4.len()) + sum16(l4)) == 0xffff
    };
    if !good {
        return Err(format!("bad L4 checksum (protocol {proto})"));
    }
    let port = |i: usize| u16::from_be_bytes([l4[i], l4[i + 1]]);
    Ok(((src, port(0)), (dst, port(2))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_with_valid_checksums() {
        for (s, d) in [("10.0.0.1", "10.0.0.2"), ("fd00::1", "fd00::2")] {
            for proto in [PROTO_TCP, PROTO_UDP, PROTO_SCTP] {
                let src: Endpoint = (s.parse().expect("ip"), 1234);
                let dst: Endpoint = (d.parse().expect("ip"), 80);
                let f = frame(proto, src, dst, true);
                assert_eq!(endpoints(&f), Ok((src, dst)));
                let mut bad = f.clone();
                let last = bad.len() - 1;
                bad[last] ^= 1;
                assert!(
                    endpoints(&bad).is_err(),
                    "a flipped byte breaks the checksum"
                );
            }
        }
        assert!(endpoints(&[0u8; 10]).is_err());
    }

    #[test]
    fn crc32c_matches_the_rfc_test_vector() {
        // RFC 3720 B.4: 32 bytes of zeros.
        assert_eq!(crc32c(&[0; 32]), 0x8a91_36aa);
    }
}
