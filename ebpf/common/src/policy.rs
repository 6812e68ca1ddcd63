//! NetworkPolicy's maps: what the agent compiles policies into and the pod
//! devices' TC programs read, one verdict per new flow in a fixed number of
//! lookups (no loop over policies, rules, pods or namespaces).
//!
//! - [`MAP_POLICY_ENDPOINTS`]: this node's pods, by address: which policy
//!   set judges them ([`PolicyEndpoint::set`]) and in which directions they
//!   are isolated. A pod not here is never judged.
//! - [`MAP_POLICY_IDENTITIES`]: every pod address in the cluster (and this
//!   node's own addresses, [`IDENTITY_HOST`]) to its identity: pods with the
//!   same namespace and named ports, and the same labels under the keys some
//!   policy's selectors name (pod labels for podSelectors, namespace labels
//!   for namespaceSelectors), share one; labels no selector reads (a
//!   pod-template-hash, a StatefulSet pod name) tell no pods apart.
//! - [`MAP_POLICY_CIDRS`]: an LPM trie of every prefix the ipBlocks of the
//!   node's policies name (CIDRs and excepts) to a CIDR identity
//!   ([`IDENTITY_CIDR_BIT`] set): the set of ipBlocks holding an address is
//!   decided by the longest of those prefixes that holds it.
//! - [`MAP_POLICY_RULES`]: an LPM trie of allowed (set, direction, peer
//!   identity, protocol, port) keys; a rule for every protocol or every port
//!   is a shorter prefix, a port range a few prefixes.
//! - [`MAP_POLICY_CT`]: flows already judged, both directions, so replies
//!   and later packets pass at one lookup (stateful, as the API requires).
//!
//! A new flow at an isolated endpoint is allowed when one of at most three
//! lookups in the rules finds an entry: with the peer's pod identity, with
//! its CIDR identity, and with [`IDENTITY_ANY`] (rules with no peers).

/// The rule's peer is anyone (a rule with no `from`/`to`).
pub const IDENTITY_ANY: u32 = 0;
/// This node's own addresses: ingress from them is always allowed (kubelet
/// probes, hostNetwork pods).
pub const IDENTITY_HOST: u32 = 1;
/// The first identity the agent gives to a pod label set.
pub const IDENTITY_FIRST_POD: u32 = 16;
/// Set in every CIDR identity (never in a pod's).
pub const IDENTITY_CIDR_BIT: u32 = 1 << 31;

/// [`PolicyEndpoint::flags`]: policies select the pod for ingress.
pub const EP_ISOLATED_INGRESS: u32 = 1;
/// [`PolicyEndpoint::flags`]: policies select the pod for egress.
pub const EP_ISOLATED_EGRESS: u32 = 2;

/// [`PolicyRuleKey::dir`].
pub const DIR_INGRESS: u8 = 0;
pub const DIR_EGRESS: u8 = 1;

/// Prefix lengths of [`PolicyRuleKey`] (in bits of its data, after the LPM
/// trie's own 32-bit length): set, peer and direction always; then the
/// protocol; then the port's bits.
pub const RULE_PREFIX_ANY_PROTO: u32 = 72;
pub const RULE_PREFIX_ANY_PORT: u32 = 80;
pub const RULE_PREFIX_FULL: u32 = 96;

/// A pod of this node, as policy sees it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PolicyEndpoint {
    /// The policy set: pods selected by the same policies (with the same
    /// named ports, which ingress rules resolve on the pod itself) share it.
    pub set: u32,
    /// `EP_ISOLATED_*`.
    pub flags: u32,
    /// The pod's host-side device, when known (0: any): a packet from
    /// another device claiming the pod's address is not the pod's.
    pub ifindex: u32,
    pub _pad: u32,
}

/// The data of a [`MAP_POLICY_RULES`] key (the trie's prefix length comes
/// before it). Multi-byte fields before `port` are always fully inside the
/// prefix, so their byte order does not matter; `port` is in network order,
/// so a prefix of its bits is a range of ports.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct PolicyRuleKey {
    pub set: u32,
    pub peer: u32,
    /// `DIR_*`.
    pub dir: u8,
    /// IP protocol number.
    pub proto: u8,
    /// Network byte order.
    pub port: u16,
}

/// What an allowing rule entry says (for flow events and `inspect`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PolicyRuleValue {
    /// The agent's number for the NetworkPolicy that allows (for events).
    pub policy: u32,
}

/// The data of a [`MAP_POLICY_CIDRS`] key: an address as every map holds
/// it (IPv4-mapped for IPv4; its prefix length counts the 96 mapped bits).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct PolicyCidrKey {
    pub addr: [u32; 4],
}

/// [`PolicyCtValue::flags`]: a FIN or RST was seen.
pub const PCT_FLAG_CLOSING: u32 = 1;
/// [`PolicyCtValue::flags`]: packets with this tuple pass a pod's ingress
/// hook (the destination let the flow in, or it is the reply of a flow the
/// destination started).
pub const PCT_FLAG_INGRESS: u32 = 2;
/// [`PolicyCtValue::flags`]: packets with this tuple pass a pod's egress
/// hook. Kept apart from [`PCT_FLAG_INGRESS`]: when both ends are on one
/// node, the source's egress hook passing a flow must not let it through
/// the destination's ingress hook unjudged.
pub const PCT_FLAG_EGRESS: u32 = 4;

/// A judged flow (keyed by [`crate::CtKey`], one entry per direction of the
/// flow's packets; the flags say which hooks they pass).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PolicyCtValue {
    /// `bpf_ktime_get_ns()` when last refreshed (at most once a second).
    pub last_seen_ns: u64,
    pub flags: u32,
    pub _pad: u32,
}

/// Indexes into [`PolicyStats::verdicts`]: `what * 2 + dir`.
pub const POLICY_STAT_ALLOWED: usize = 0;
pub const POLICY_STAT_DENIED: usize = 1;

/// Reasons counted in [`PolicyStats`] (`crate::observe::REASON_*` are
/// below this).
pub const POLICY_REASONS: usize = 8;

/// New flows judged at this node's pods (per CPU), by why and direction:
/// `counts[reason * 2 + dir]`, `reason` one of `crate::observe::REASON_*`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PolicyStats {
    pub counts: [u64; 2 * POLICY_REASONS],
}

impl PolicyStats {
    /// Allowed and denied per direction: `[allowed ingress, allowed
    /// egress, denied ingress, denied egress]`.
    pub fn verdicts(&self) -> [u64; 4] {
        let mut v = [0u64; 4];
        for (i, c) in self.counts.iter().enumerate() {
            let what = if denies((i / 2) as u8) {
                POLICY_STAT_DENIED
            } else {
                POLICY_STAT_ALLOWED
            };
            v[what * 2 + i % 2] += c;
        }
        v
    }

    /// Adds another CPU's counts.
    pub fn add(&mut self, other: &Self) {
        for (t, c) in self.counts.iter_mut().zip(other.counts) {
            *t += c;
        }
    }
}

/// Whether a packet judged for `reason` is dropped.
pub fn denies(reason: u8) -> bool {
    reason == crate::observe::REASON_POLICY_DENIED || reason == crate::observe::REASON_SPOOFED
}

pub const MAP_POLICY_ENDPOINTS: &str = "FERRY_POL_EP";
pub const MAP_POLICY_IDENTITIES: &str = "FERRY_POL_IDS";
pub const MAP_POLICY_CIDRS: &str = "FERRY_POL_CIDRS";
pub const MAP_POLICY_RULES: &str = "FERRY_POL_RULES";
pub const MAP_POLICY_CT: &str = "FERRY_POL_CT";
/// Renamed from `FERRY_POL_STATS` when it grew reasons: a pinned map keeps
/// the size it was made with.
pub const MAP_POLICY_STATS: &str = "FERRY_POL_VERDICTS";
