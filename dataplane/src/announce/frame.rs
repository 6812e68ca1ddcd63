//! ARP (RFC 826) and NDP (RFC 4861) frames as the responder reads and
//! writes them: Ethernet II frames, parsed with bounds checks only (no
//! allocation, no panic, whatever the bytes), built into fixed arrays.
//!
//! It owns nothing and touches nothing: pure functions over bytes.

use std::net::{Ipv4Addr, Ipv6Addr};

/// An Ethernet (EUI-48) address.
pub type Mac = [u8; 6];

pub const ETHERTYPE_ARP: u16 = 0x0806;
pub const ETHERTYPE_IPV6: u16 = 0x86dd;
const ETH_HLEN: usize = 14;
const ARP_LEN: usize = 28;
const IPV6_HLEN: usize = 40;
const ICMPV6: u8 = 58;
const NEIGHBOR_SOLICITATION: u8 = 135;
const NEIGHBOR_ADVERTISEMENT: u8 = 136;
const OPT_SOURCE_LL: u8 = 1;
const OPT_TARGET_LL: u8 = 2;
/// Neighbor Advertisement flags (RFC 4861 4.4): Solicited, Override.
const NA_SOLICITED: u8 = 0x40;
const NA_OVERRIDE: u8 = 0x20;
/// The shortest Ethernet frame without its FCS; shorter ones are padded.
const ETH_MIN: usize = 60;
/// An ARP frame as sent: header and body, padded to the Ethernet minimum.
pub const ARP_FRAME_LEN: usize = ETH_MIN;
/// A Neighbor Advertisement with a target link-layer address option.
pub const NA_FRAME_LEN: usize = ETH_HLEN + IPV6_HLEN + 24 + 8;

/// Why a frame was not understood (counted, never answered).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("shorter than its headers say")]
    Truncated,
    #[error("wrong ethertype or IP version")]
    WrongType,
    #[error("a multicast, broadcast or zero sender address")]
    BadSender,
    #[error("hop limit is not 255 (not from the link)")]
    HopLimit,
    #[error("bad ICMPv6 checksum")]
    Checksum,
    #[error("bad ICMPv6 code or option")]
    BadMessage,
    #[error("multicast target address")]
    MulticastTarget,
}

/// An ARP request for an IPv4 address on Ethernet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArpRequest {
    pub sender_mac: Mac,
    /// 0.0.0.0 for an address probe (RFC 5227), answered as Linux does.
    pub sender_ip: Ipv4Addr,
    pub target_ip: Ipv4Addr,
}

/// A Neighbor Solicitation from a node that wants an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Solicitation {
    /// Where the advertisement goes: the source link-layer address option,
    /// else the frame's source.
    pub reply_mac: Mac,
    pub source: Ipv6Addr,
    pub target: Ipv6Addr,
}

fn mac_at(b: &[u8], at: usize) -> Option<Mac> {
    b.get(at..at + 6)?.try_into().ok()
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn v6_at(b: &[u8], at: usize) -> Option<Ipv6Addr> {
    let a: [u8; 16] = b.get(at..at + 16)?.try_into().ok()?;
    Some(Ipv6Addr::from(a))
}

/// A unicast, non-zero station address.
fn is_station(mac: &Mac) -> bool {
    mac[0] & 1 == 0 && *mac != [0; 6]
}

/// Reads an ARP frame: `Ok(Some)` for a request about an IPv4 address on
/// Ethernet, `Ok(None)` for well-formed ARP that asks nothing of us
/// (replies, other hardware or protocol types).
pub fn parse_arp(frame: &[u8]) -> Result<Option<ArpRequest>, Malformed> {
    if u16_at(frame, 12).ok_or(Malformed::Truncated)? != ETHERTYPE_ARP {
        return Err(Malformed::WrongType);
    }
    let arp = frame
        .get(ETH_HLEN..ETH_HLEN + ARP_LEN)
        .ok_or(Malformed::Truncated)?;
    let (htype, ptype, hlen, plen, op) = (
        u16_at(arp, 0),
        u16_at(arp, 2),
        arp.get(4),
        arp.get(5),
        u16_at(arp, 6),
    );
    if htype != Some(1) || ptype != Some(0x0800) || hlen != Some(&6) || plen != Some(&4) {
        return Ok(None);
    }
    if op != Some(1) {
        return Ok(None);
    }
    let sender_mac = mac_at(arp, 8).ok_or(Malformed::Truncated)?;
    if !is_station(&sender_mac) {
        return Err(Malformed::BadSender);
    }
    let ip = |at: usize| -> Option<Ipv4Addr> {
        let a: [u8; 4] = arp.get(at..at + 4)?.try_into().ok()?;
        Some(Ipv4Addr::from(a))
    };
    Ok(Some(ArpRequest {
        sender_mac,
        sender_ip: ip(14).ok_or(Malformed::Truncated)?,
        target_ip: ip(24).ok_or(Malformed::Truncated)?,
    }))
}

fn eth_header(out: &mut [u8], dst: Mac, src: Mac, ethertype: u16) {
    out[0..6].copy_from_slice(&dst);
    out[6..12].copy_from_slice(&src);
    out[12..14].copy_from_slice(&ethertype.to_be_bytes());
}

#[allow(clippy::too_many_arguments)]
fn arp_frame(
    eth_dst: Mac,
    op: u16,
    sha: Mac,
    spa: Ipv4Addr,
    tha: Mac,
    tpa: Ipv4Addr,
) -> [u8; ARP_FRAME_LEN] {
    let mut f = [0u8; ARP_FRAME_LEN];
    eth_header(&mut f, eth_dst, sha, ETHERTYPE_ARP);
    let a = &mut f[ETH_HLEN..ETH_HLEN + ARP_LEN];
    a[0..2].copy_from_slice(&1u16.to_be_bytes());
    a[2..4].copy_from_slice(&0x0800u16.to_be_bytes());
    a[4] = 6;
    a[5] = 4;
    a[6..8].copy_from_slice(&op.to_be_bytes());
    a[8..14].copy_from_slice(&sha);
    a[14..18].copy_from_slice(&spa.octets());
    a[18..24].copy_from_slice(&tha);
    a[24..28].copy_from_slice(&tpa.octets());
    f
}

/// The answer to `req`: `ip` is at `mac`, sent to the asker.
pub fn arp_reply(mac: Mac, ip: Ipv4Addr, req: &ArpRequest) -> [u8; ARP_FRAME_LEN] {
    arp_frame(req.sender_mac, 2, mac, ip, req.sender_mac, req.sender_ip)
}

/// Gratuitous ARP for `ip` at `mac`, broadcast: an announcement (a request
/// for `ip` from `ip`, RFC 5227) and a reply whose target is the sender
/// itself. Linux takes either as gratuitous and overrides an existing
/// neighbour entry at once.
pub fn gratuitous_arp(mac: Mac, ip: Ipv4Addr) -> [[u8; ARP_FRAME_LEN]; 2] {
    let broadcast = [0xff; 6];
    [
        arp_frame(broadcast, 1, mac, ip, [0; 6], ip),
        arp_frame(broadcast, 2, mac, ip, mac, ip),
    ]
}

/// The Internet checksum of the ICMPv6 message `msg` with the IPv6
/// pseudo-header (RFC 8200 8.1): zero when `msg` carries a correct one.
pub fn icmpv6_checksum(src: &Ipv6Addr, dst: &Ipv6Addr, msg: &[u8]) -> u16 {
    let mut sum: u64 = 0;
    let mut add = |bytes: &[u8]| {
        let mut chunks = bytes.chunks_exact(2);
        for c in &mut chunks {
            sum += u64::from(u16::from_be_bytes([c[0], c[1]]));
        }
        if let [last] = chunks.remainder() {
            sum += u64::from(u16::from_be_bytes([*last, 0]));
        }
    };
    add(&src.octets());
    add(&dst.octets());
    // Upper-layer length (32 bits) and next header; a message is at most a
    // frame long, so the length fits.
    let len = u32::try_from(msg.len()).unwrap_or(u32::MAX);
    add(&len.to_be_bytes());
    add(&[0, 0, 0, ICMPV6]);
    add(msg);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Reads an IPv6 frame: `Ok(Some)` for a Neighbor Solicitation that wants
/// an answer (RFC 4861 7.1.1 validation: hop limit 255, checksum, code 0,
/// non-multicast target, options of non-zero length), `Ok(None)` for other
/// ICMPv6 and for duplicate address detection probes (from `::`), which
/// an announcer leaves alone.
pub fn parse_solicitation(frame: &[u8]) -> Result<Option<Solicitation>, Malformed> {
    if u16_at(frame, 12).ok_or(Malformed::Truncated)? != ETHERTYPE_IPV6 {
        return Err(Malformed::WrongType);
    }
    let ip = frame
        .get(ETH_HLEN..ETH_HLEN + IPV6_HLEN)
        .ok_or(Malformed::Truncated)?;
    if ip[0] >> 4 != 6 {
        return Err(Malformed::WrongType);
    }
    if ip[6] != ICMPV6 {
        return Ok(None);
    }
    let payload = usize::from(u16_at(ip, 4).ok_or(Malformed::Truncated)?);
    let msg = frame
        .get(ETH_HLEN + IPV6_HLEN..ETH_HLEN + IPV6_HLEN + payload)
        .ok_or(Malformed::Truncated)?;
    if msg.first() != Some(&NEIGHBOR_SOLICITATION) {
        return Ok(None);
    }
    if ip[7] != 255 {
        return Err(Malformed::HopLimit);
    }
    if msg.len() < 24 {
        return Err(Malformed::Truncated);
    }
    if msg[1] != 0 {
        return Err(Malformed::BadMessage);
    }
    let source = v6_at(ip, 8).ok_or(Malformed::Truncated)?;
    let dest = v6_at(ip, 24).ok_or(Malformed::Truncated)?;
    if icmpv6_checksum(&source, &dest, msg) != 0 {
        return Err(Malformed::Checksum);
    }
    let target = v6_at(msg, 8).ok_or(Malformed::Truncated)?;
    if target.is_multicast() {
        return Err(Malformed::MulticastTarget);
    }
    let mut source_ll = None;
    let mut opts = msg.get(24..).unwrap_or_default();
    while !opts.is_empty() {
        let (Some(&kind), Some(&units)) = (opts.first(), opts.get(1)) else {
            return Err(Malformed::Truncated);
        };
        let len = usize::from(units) * 8;
        if len == 0 {
            return Err(Malformed::BadMessage);
        }
        let opt = opts.get(..len).ok_or(Malformed::Truncated)?;
        if kind == OPT_SOURCE_LL && units == 1 {
            source_ll = mac_at(opt, 2);
        }
        opts = opts.get(len..).unwrap_or_default();
    }
    if source.is_unspecified() {
        // Duplicate address detection; it must not carry a source address.
        return if source_ll.is_some() {
            Err(Malformed::BadMessage)
        } else {
            Ok(None)
        };
    }
    let reply_mac = match source_ll {
        Some(m) => m,
        None => mac_at(frame, 6).ok_or(Malformed::Truncated)?,
    };
    if !is_station(&reply_mac) {
        return Err(Malformed::BadSender);
    }
    Ok(Some(Solicitation {
        reply_mac,
        source,
        target,
    }))
}

fn advertisement(
    eth_dst: Mac,
    mac: Mac,
    target: Ipv6Addr,
    dst: Ipv6Addr,
    flags: u8,
) -> [u8; NA_FRAME_LEN] {
    let mut f = [0u8; NA_FRAME_LEN];
    eth_header(&mut f, eth_dst, mac, ETHERTYPE_IPV6);
    let (ip, msg) = f[ETH_HLEN..].split_at_mut(IPV6_HLEN);
    ip[0] = 0x60;
    ip[4..6].copy_from_slice(&32u16.to_be_bytes());
    ip[6] = ICMPV6;
    ip[7] = 255;
    // From the target address itself: this node answers for it.
    ip[8..24].copy_from_slice(&target.octets());
    ip[24..40].copy_from_slice(&dst.octets());
    msg[0] = NEIGHBOR_ADVERTISEMENT;
    msg[4] = flags;
    msg[8..24].copy_from_slice(&target.octets());
    msg[24] = OPT_TARGET_LL;
    msg[25] = 1;
    msg[26..32].copy_from_slice(&mac);
    let sum = icmpv6_checksum(&target, &dst, msg);
    msg[2..4].copy_from_slice(&sum.to_be_bytes());
    f
}

/// The Neighbor Advertisement answering `sol`: `sol.target` is at `mac`
/// (Solicited and Override set, target link-layer address option, hop
/// limit 255), sent to the solicitor.
pub fn neighbor_advertisement(mac: Mac, sol: &Solicitation) -> [u8; NA_FRAME_LEN] {
    advertisement(
        sol.reply_mac,
        mac,
        sol.target,
        sol.source,
        NA_SOLICITED | NA_OVERRIDE,
    )
}

/// An unsolicited Neighbor Advertisement (RFC 4861 7.2.6) to all nodes:
/// `target` is now at `mac` (Override set), so neighbours holding an
/// entry for it switch at once.
pub fn unsolicited_advertisement(mac: Mac, target: Ipv6Addr) -> [u8; NA_FRAME_LEN] {
    advertisement(
        [0x33, 0x33, 0, 0, 0, 1],
        mac,
        target,
        Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1),
        NA_OVERRIDE,
    )
}

/// The solicited-node multicast group of `ip` (RFC 4291 2.7.1), which the
/// responder joins so that the device accepts solicitations for it.
pub fn solicited_node(ip: Ipv6Addr) -> Ipv6Addr {
    let o = ip.octets();
    Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | u16::from(o[13]),
        u16::from_be_bytes([o[14], o[15]]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let digits: Vec<u8> = s
            .bytes()
            .filter(u8::is_ascii_hexdigit)
            .map(|c| match c {
                b'0'..=b'9' => c - b'0',
                b'a'..=b'f' => c - b'a' + 10,
                _ => c - b'A' + 10,
            })
            .collect();
        digits.chunks(2).map(|p| p[0] << 4 | p[1]).collect()
    }

    // Frames Linux 6.18 sent between two namespaces (192.0.2.10 /
    // 2001:db8::a at 02:00:00:00:00:0a resolving 192.0.2.11 /
    // 2001:db8::b at 02:00:00:00:00:0b), as tcpdump -xx printed them.
    const KERNEL_ARP_REQUEST: &str = "ffff ffff ffff 0200 0000 000a 0806 0001
        0800 0604 0001 0200 0000 000a c000 020a 0000 0000 0000 c000 020b";
    const KERNEL_ARP_REPLY: &str = "0200 0000 000a 0200 0000 000b 0806 0001
        0800 0604 0002 0200 0000 000b c000 020b 0200 0000 000a c000 020a";
    const KERNEL_NS: &str = "3333 ff00 000b 0200 0000 000a 86dd 6000
        0000 0020 3aff 2001 0db8 0000 0000 0000 0000 0000 000a ff02 0000 0000 0000 0000
        0001 ff00 000b 8700 1c03 0000 0000 2001 0db8 0000 0000 0000 0000 0000 000b 0101
        0200 0000 000a";
    const KERNEL_NA: &str = "0200 0000 000a 0200 0000 000b 86dd 6000
        0000 0020 3aff 2001 0db8 0000 0000 0000 0000 0000 000b 2001 0db8 0000 0000 0000
        0000 0000 000a 8800 8a4d 6000 0000 2001 0db8 0000 0000 0000 0000 0000 000b 0201
        0200 0000 000b";
    const A: Mac = [2, 0, 0, 0, 0, 0x0a];
    const B: Mac = [2, 0, 0, 0, 0, 0x0b];

    #[test]
    fn answers_an_arp_request_as_the_kernel_does() {
        let req = parse_arp(&hex(KERNEL_ARP_REQUEST))
            .expect("well formed")
            .expect("a request");
        assert_eq!(
            req,
            ArpRequest {
                sender_mac: A,
                sender_ip: Ipv4Addr::new(192, 0, 2, 10),
                target_ip: Ipv4Addr::new(192, 0, 2, 11),
            }
        );
        let reply = arp_reply(B, req.target_ip, &req);
        let kernel = hex(KERNEL_ARP_REPLY);
        assert_eq!(&reply[..kernel.len()], &kernel[..]);
        assert!(reply[kernel.len()..].iter().all(|b| *b == 0), "padding");
        // A reply is not a request.
        assert_eq!(parse_arp(&kernel), Ok(None));
    }

    #[test]
    fn answers_a_solicitation_as_the_kernel_does() {
        let sol = parse_solicitation(&hex(KERNEL_NS))
            .expect("well formed")
            .expect("a solicitation");
        let target: Ipv6Addr = "2001:db8::b".parse().expect("ip");
        assert_eq!(
            sol,
            Solicitation {
                reply_mac: A,
                source: "2001:db8::a".parse().expect("ip"),
                target,
            }
        );
        // Byte for byte the kernel's own advertisement, checksum included.
        assert_eq!(neighbor_advertisement(B, &sol).to_vec(), hex(KERNEL_NA));
        assert_eq!(
            solicited_node(target),
            "ff02::1:ff00:b".parse::<Ipv6Addr>().expect("ip")
        );
    }

    #[test]
    fn checksum_follows_rfc_4861_layout() {
        // An advertisement laid out by hand (RFC 4861 4.4), checksummed by
        // summing 16-bit words of the pseudo-header and message.
        let na = unsolicited_advertisement(B, "2001:db8::b".parse().expect("ip"));
        let mut words: u32 = 0;
        let src = &na[22..38];
        let dst = &na[38..54];
        let msg = &na[54..];
        for part in [src, dst, &[0, 0, 0, 32, 0, 0, 0, 58][..], msg] {
            for w in part.chunks(2) {
                words += u32::from(w[0]) << 8 | u32::from(w[1]);
            }
        }
        while words > 0xffff {
            words = (words & 0xffff) + (words >> 16);
        }
        assert_eq!(words, 0xffff, "a correct checksum sums to all ones");
        assert_eq!(&na[0..6], &[0x33, 0x33, 0, 0, 0, 1]);
        assert_eq!(na[21], 255, "hop limit");
        assert_eq!(msg[0], 136);
        assert_eq!(msg[4], 0x20, "Override only");
        assert_eq!(&dst[..2], &[0xff, 0x02]);
        assert_eq!(&msg[24..32], &[2, 1, 2, 0, 0, 0, 0, 0x0b]);
    }

    #[test]
    fn gratuitous_arp_is_taken_as_such() {
        let ip = Ipv4Addr::new(198, 51, 100, 7);
        let [announce, reply] = gratuitous_arp(B, ip);
        for f in [&announce, &reply] {
            assert_eq!(&f[0..6], &[0xff; 6]);
            // Sender and target protocol address are both the IP.
            assert_eq!(&f[28..32], &ip.octets());
            assert_eq!(&f[38..42], &ip.octets());
            assert_eq!(&f[22..28], &B);
        }
        assert_eq!(
            parse_arp(&announce)
                .expect("ok")
                .expect("request")
                .target_ip,
            ip
        );
        // The reply names the sender as its own target (Linux's test).
        assert_eq!(&reply[32..38], &B);
    }

    #[test]
    fn malformed_frames_are_refused_without_panic() {
        let ns = hex(KERNEL_NS);
        let arp = hex(KERNEL_ARP_REQUEST);
        // Every truncation of a valid frame.
        for n in 0..ns.len() {
            assert!(parse_solicitation(&ns[..n]).is_err(), "NS cut at {n}");
        }
        for n in 0..arp.len() {
            assert!(parse_arp(&arp[..n]).is_err(), "ARP cut at {n}");
        }
        let with = |frame: &[u8], at: usize, value: u8| {
            let mut f = frame.to_vec();
            f[at] = value;
            f
        };
        assert_eq!(
            parse_solicitation(&with(&ns, 21, 64)),
            Err(Malformed::HopLimit)
        );
        assert_eq!(
            parse_solicitation(&with(&ns, 77, 0x0c)),
            Err(Malformed::Checksum)
        );
        assert_eq!(
            parse_solicitation(&with(&ns, 14, 0x40)),
            Err(Malformed::WrongType)
        );
        assert_eq!(parse_solicitation(&arp), Err(Malformed::WrongType));
        assert_eq!(parse_arp(&ns), Err(Malformed::WrongType));
        // A payload length past the frame.
        assert_eq!(
            parse_solicitation(&with(&ns, 19, 0xff)),
            Err(Malformed::Truncated)
        );
        // A zero-length option (would loop forever if trusted).
        let mut zero_opt = ns.clone();
        zero_opt[79] = 0;
        fix_checksum(&mut zero_opt);
        assert_eq!(parse_solicitation(&zero_opt), Err(Malformed::BadMessage));
        // An option running past the message.
        let mut long_opt = ns.clone();
        long_opt[79] = 2;
        fix_checksum(&mut long_opt);
        assert_eq!(parse_solicitation(&long_opt), Err(Malformed::Truncated));
        // A multicast target.
        let mut mc = ns.clone();
        mc[62] = 0xff;
        fix_checksum(&mut mc);
        assert_eq!(parse_solicitation(&mc), Err(Malformed::MulticastTarget));
        // DAD probe (from ::, no source address option): left alone; with
        // the option it is invalid.
        let mut dad = ns.clone();
        dad[22..38].fill(0);
        fix_checksum(&mut dad);
        assert_eq!(parse_solicitation(&dad), Err(Malformed::BadMessage));
        dad.truncate(78);
        dad[19] = 24;
        fix_checksum(&mut dad);
        assert_eq!(parse_solicitation(&dad), Ok(None));
        // A broadcast sender would have us answer everyone.
        assert_eq!(parse_arp(&with(&arp, 22, 0xff)), Err(Malformed::BadSender));
        // Not ARP for IPv4 on Ethernet: ignored, not an error.
        assert_eq!(parse_arp(&with(&arp, 17, 0x06)), Ok(None));
        // Random bytes of every length never panic.
        let mut x: u32 = 0x1234_5678;
        for len in 0..200 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            let _ = parse_arp(&bytes);
            let _ = parse_solicitation(&bytes);
            let mut v6 = bytes.clone();
            if v6.len() > 54 {
                v6[12] = 0x86;
                v6[13] = 0xdd;
                v6[14] = 0x60;
                v6[20] = 58;
                v6[21] = 255;
                v6[54] = 135;
                let _ = parse_solicitation(&v6);
            }
        }
    }

    fn fix_checksum(frame: &mut [u8]) {
        let src = v6_at(frame, 22).expect("src");
        let dst = v6_at(frame, 38).expect("dst");
        let end = 54 + usize::from(u16_at(frame, 18).expect("len"));
        frame[56] = 0;
        frame[57] = 0;
        let sum = icmpv6_checksum(&src, &dst, &frame[54..end]);
        frame[56..58].copy_from_slice(&sum.to_be_bytes());
    }
}
