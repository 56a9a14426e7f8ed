//! Pure forwarding core: the learning switch's decision, its FDB and its port table.
//!
//! Contract:
//!
//! * [`Switch::decide`] is a pure function of (frame headers, ingress port, FDB, port
//!   table, config, `now_ms`) returning an [`Action`]. It does no I/O and never reads the
//!   clock; the caller passes monotonic milliseconds in. Its only side effects are on the
//!   FDB (learning the source MAC, dropping an expired destination entry) and on
//!   [`SwitchCounters`].
//! * The port table ([`Switch::set_port`], [`Switch::forget_port`]) gives each port a
//!   [`PortRole`] and, optionally, a [`PortPolicy`]. A port the table does not know is an
//!   [`PortRole::Endpoint`] without policy. The table changes only through those calls
//!   (control plane), never through `decide`.
//! * **Anti-spoofing** applies to an [`PortRole::Endpoint`] port whose policy has
//!   `spoof_check` set. Such a port may only send: Ethernet source = its MAC
//!   ([`DropReason::SpoofedMac`]); untagged frames (802.1Q → [`DropReason::Unsupported`]);
//!   IPv4 with a source in its list, IPv6 with a source in its list or `::` or link-local
//!   `fe80::/10` ([`DropReason::SpoofedIp`]); Ethernet/IPv4 ARP whose sender MAC is its MAC
//!   and whose sender IP is in its list or `0.0.0.0`, an RFC 5227 probe
//!   ([`DropReason::SpoofedArp`]). Other ethertypes pass the MAC check only. A spoofed
//!   frame is dropped *before* learning: it teaches the FDB nothing. Gateway ports are
//!   never checked (they speak for the world outside the subnet).
//! * **ICC off** ([`SwitchConfig::icc`] = false): a frame from an endpoint port may only
//!   reach gateway ports. Known unicast to another endpoint is
//!   [`DropReason::IccDenied`]; broadcast, multicast and unknown unicast become
//!   [`Action::ToGateways`]. Frames from a gateway port are switched as usual. Learning is
//!   unchanged.
//! * **FDB limits**: a new source MAC is learned only while the FDB holds fewer than
//!   [`SwitchConfig::fdb_limit`] entries *and* its ingress port fewer than its own limit
//!   ([`SwitchConfig::fdb_port_limit`], or the port's [`PortOptions::fdb_limit`]), so one
//!   port cannot fill the table and starve later joiners. A MAC not learned is counted
//!   ([`SwitchCounters`], [`PortFdb::limit_hits`]) and its frame is still forwarded.
//!   The per-port counts are exact: kept in step on learn, move, ageing (on lookup and in
//!   [`Switch::expire`]), policy change and port removal.
//! * [`check_vnet_hdr`] validates the virtio-net header that precedes every frame on a
//!   port, so that the switch never hands a tap a header the kernel would reject.
//! * Frames are plain byte slices supplied by containers. Every parser here tests the
//!   length first (`first_chunk`, `get`) and indexes only within what that test proved:
//!   **no panic after the length check**, on any input.
//!
//! MAC addresses are packed into a `u64` (big-endian, upper 16 bits zero) for the FDB
//! key, hashed with `FxHash`; a hit only updates the entry in place. The port table is an
//! `FxHashMap` too, looked up once per frame only when some port is checked or ICC is
//! off, so a network without policy pays one predictable branch.

use rustc_hash::FxHashMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use tapnet_wire::vnet::{self, VnetHdr};

/// Index of a port within one switch.
pub type PortId = u32;

/// A 48-bit Ethernet MAC address (defined in [`tapnet_wire::mac`]).
pub use tapnet_wire::MacAddr;

/// Why a frame was dropped. `as usize` indexes the per-port drop counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum DropReason {
    /// Shorter than an Ethernet header, or an L3 header it announces is cut short.
    Truncated = 0,
    /// Source MAC is multicast/broadcast or all zeros.
    BadSourceMac = 1,
    /// The virtio-net header is inconsistent (unknown GSO type, offsets past the frame).
    BadVnetHdr = 2,
    /// Destination was learned on the ingress port itself.
    SameSegment = 3,
    /// A write to the egress port failed (queue full, device gone).
    TxError = 4,
    /// From a checked endpoint port, with an Ethernet source other than the port's MAC.
    SpoofedMac = 5,
    /// From a checked endpoint port, with an IPv4/IPv6 source that is not the port's.
    SpoofedIp = 6,
    /// From a checked endpoint port, an ARP whose sender MAC or sender IP is not the
    /// port's (or that is not Ethernet/IPv4 ARP, so its sender cannot be checked).
    SpoofedArp = 7,
    /// A frame kind a checked endpoint port may not send (802.1Q-tagged: tapnet networks
    /// are untagged).
    Unsupported = 8,
    /// ICC is off and the frame went from one endpoint to another.
    IccDenied = 9,
}

impl DropReason {
    /// Number of reasons (size of counter arrays).
    pub const COUNT: usize = 10;
    /// All reasons, in counter order.
    pub const ALL: [DropReason; Self::COUNT] = [
        DropReason::Truncated,
        DropReason::BadSourceMac,
        DropReason::BadVnetHdr,
        DropReason::SameSegment,
        DropReason::TxError,
        DropReason::SpoofedMac,
        DropReason::SpoofedIp,
        DropReason::SpoofedArp,
        DropReason::Unsupported,
        DropReason::IccDenied,
    ];
    /// Stable snake_case name used in the API and metrics.
    pub fn name(self) -> &'static str {
        match self {
            DropReason::Truncated => "truncated",
            DropReason::BadSourceMac => "bad_source_mac",
            DropReason::BadVnetHdr => "bad_vnet_hdr",
            DropReason::SameSegment => "same_segment",
            DropReason::TxError => "tx_error",
            DropReason::SpoofedMac => "spoofed_mac",
            DropReason::SpoofedIp => "spoofed_ip",
            DropReason::SpoofedArp => "spoofed_arp",
            DropReason::Unsupported => "unsupported",
            DropReason::IccDenied => "icc_denied",
        }
    }
}

/// What to do with one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Drop it, counting the reason against the ingress port.
    Drop(DropReason),
    /// Send it to exactly this port.
    Unicast(PortId),
    /// Send it to every port except `except` (the ingress).
    Flood {
        /// The ingress port, which never gets its own frame back.
        except: PortId,
    },
    /// Send it to every [`PortRole::Gateway`] port (ICC off: what an endpoint floods
    /// reaches the gateway only). The ingress is an endpoint, so it is never among them.
    ToGateways,
}

/// Switch configuration.
#[derive(Clone, Copy, Debug)]
pub struct SwitchConfig {
    /// FDB entry lifetime in milliseconds (default 300 000).
    pub ageing_ms: u64,
    /// Maximum number of learned MACs in this switch (default 8192).
    pub fdb_limit: usize,
    /// Maximum number of learned MACs per port (default 1024, an eighth of the network
    /// limit: a container has one MAC, a nested bridge or VM a handful, so 1024 is
    /// generous, yet one port can take at most an eighth of the table and later joiners
    /// are still learned). A port added with [`PortOptions::fdb_limit`] (an uplink or a
    /// tunnel that stands for many hosts) has its own limit instead.
    pub fdb_port_limit: usize,
    /// Inter-container communication (default true). When false, endpoint ports reach
    /// gateway ports only (Docker's `com.docker.network.bridge.enable_icc=false`).
    pub icc: bool,
}

impl Default for SwitchConfig {
    fn default() -> Self {
        SwitchConfig {
            ageing_ms: 300_000,
            fdb_limit: 8192,
            fdb_port_limit: 1024,
            icc: true,
        }
    }
}

/// What a port is to its network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum PortRole {
    /// A sandbox's interface (the default).
    #[default]
    Endpoint,
    /// The network's gateway: exempt from anti-spoofing, and the only port endpoints
    /// reach when ICC is off.
    Gateway,
}

/// The addresses an endpoint port owns, and whether the switch enforces them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortPolicy {
    /// The endpoint's MAC.
    pub mac: MacAddr,
    /// The endpoint's IPv4 addresses.
    pub ipv4: Vec<Ipv4Addr>,
    /// The endpoint's IPv6 addresses (`::` and `fe80::/10` are always allowed as sources).
    pub ipv6: Vec<Ipv6Addr>,
    /// Drop and count frames whose source MAC, ARP sender or IP source is not the
    /// endpoint's. Ignored on gateway ports.
    pub spoof_check: bool,
}

impl PortPolicy {
    /// A policy for `mac` and the given addresses, with `spoof_check` on.
    pub fn new(mac: MacAddr, ipv4: Vec<Ipv4Addr>, ipv6: Vec<Ipv6Addr>) -> PortPolicy {
        PortPolicy {
            mac,
            ipv4,
            ipv6,
            spoof_check: true,
        }
    }
}

/// How a port joins a switch: its role and optional policy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortOptions {
    /// The port's role.
    pub role: PortRole,
    /// Addresses and anti-spoofing (meaningful for endpoint ports).
    pub policy: Option<PortPolicy>,
    /// This port's learned-MAC limit, in place of [`SwitchConfig::fdb_port_limit`]
    /// (`None`: the config's). Set with [`Switch::set_port_fdb_limit`].
    pub fdb_limit: Option<usize>,
}

/// One FDB entry as reported to the control plane.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FdbEntry {
    /// Learned MAC.
    pub mac: MacAddr,
    /// Port it was learned on.
    pub port: PortId,
    /// `now_ms` when last seen.
    pub last_seen_ms: u64,
}

/// Counters the switch itself keeps (not per port).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SwitchCounters {
    /// Frames whose new source MAC was not learned because the FDB was full.
    pub fdb_limit_hits: u64,
    /// Frames whose new source MAC was not learned because their ingress port already
    /// held its limit of learned MACs ([`SwitchConfig::fdb_port_limit`]); per port in
    /// [`Switch::port_fdb`].
    pub fdb_port_limit_hits: u64,
}

/// What the FDB holds for one port, as reported to the control plane.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortFdb {
    /// MACs learned on the port now (expired entries included until
    /// [`Switch::expire`] runs).
    pub learned: usize,
    /// Frames from the port whose new source MAC was not learned because the port was at
    /// its limit.
    pub limit_hits: u64,
    /// The port's own limit, if it has one ([`PortOptions::fdb_limit`]).
    pub limit: Option<usize>,
}

/// Length of an Ethernet II header (dst, src, ethertype).
pub const ETH_HDR_LEN: usize = tapnet_wire::ETH_HDR_LEN;
/// Length of one 802.1Q tag (TPID + TCI).
const VLAN_TAG_LEN: usize = 4;
const ETH_P_IP: u16 = libc::ETH_P_IP as u16;
const ETH_P_IPV6: u16 = libc::ETH_P_IPV6 as u16;
const ETH_P_ARP: u16 = libc::ETH_P_ARP as u16;
const ETH_P_8021Q: u16 = libc::ETH_P_8021Q as u16;
/// Minimum IPv4 header.
const IPV4_MIN_LEN: usize = 20;
/// Fixed IPv6 header.
const IPV6_LEN: usize = 40;
/// ARP for Ethernet/IPv4.
const ARP_LEN: usize = 28;

/// Minimum L3 length the ethertype announces (0 for ethertypes the switch does not inspect).
#[inline]
fn l3_min_len(ethertype: u16) -> usize {
    match ethertype {
        ETH_P_IP => IPV4_MIN_LEN,
        ETH_P_IPV6 => IPV6_LEN,
        ETH_P_ARP => ARP_LEN,
        _ => 0,
    }
}

/// Pack 6 octets into a `u64` key (same layout as [`MacAddr::to_u64`]).
#[inline(always)]
fn pack(m: &[u8; 14], at: usize) -> u64 {
    // `at` is 0 or 6: a constant after inlining, so these indexes are checked at compile time.
    u64::from_be_bytes([
        0,
        0,
        m[at],
        m[at + 1],
        m[at + 2],
        m[at + 3],
        m[at + 4],
        m[at + 5],
    ])
}

/// Group bit of a packed MAC (the I/G bit of its first octet).
const GROUP_BIT: u64 = 1 << 40;

pub use tapnet_wire::vnet::{
    VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_ECN, VIRTIO_NET_HDR_GSO_NONE,
    VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6, VIRTIO_NET_HDR_GSO_UDP,
    VIRTIO_NET_HDR_GSO_UDP_L4,
};

/// Check a virtio-net header (`struct virtio_net_hdr`, little-endian fields, as taps use
/// on little-endian hosts) against the length of the Ethernet frame that follows it
/// ([`tapnet_wire::vnet::VnetHdr::check`]).
///
/// Rejects, with [`DropReason::BadVnetHdr`], an unknown `gso_type`, a GSO type with a
/// zero `gso_size`, and a `NEEDS_CSUM` request whose checksum field lies past the end of
/// the frame. A header shorter than [`crate::VNET_HDR_LEN`] is
/// [`DropReason::Truncated`]. Bytes past the first [`crate::VNET_HDR_LEN`] are ignored.
#[inline]
pub fn check_vnet_hdr(hdr: &[u8], frame_len: usize) -> Result<(), DropReason> {
    let h = VnetHdr::new_checked(hdr).map_err(|_| DropReason::Truncated)?;
    h.check(frame_len).map_err(|e| match e {
        vnet::Error::Truncated => DropReason::Truncated,
        _ => DropReason::BadVnetHdr,
    })
}

/// Anti-spoofing of the L3 header of an untagged frame from the checked port `p`.
/// `l3` is everything after the Ethernet header.
#[inline]
fn check_source(p: &PortState, ethertype: u16, l3: &[u8]) -> Result<(), DropReason> {
    let Some(policy) = p.policy.as_ref() else {
        return Ok(());
    };
    match ethertype {
        ETH_P_IP => {
            let Some(h) = l3.first_chunk::<IPV4_MIN_LEN>() else {
                return Err(DropReason::Truncated);
            };
            let src = Ipv4Addr::new(h[12], h[13], h[14], h[15]);
            if policy.ipv4.contains(&src) {
                Ok(())
            } else {
                Err(DropReason::SpoofedIp)
            }
        }
        ETH_P_IPV6 => {
            let Some(h) = l3.first_chunk::<IPV6_LEN>() else {
                return Err(DropReason::Truncated);
            };
            let mut a = [0u8; 16];
            a.copy_from_slice(&h[8..24]);
            let src = Ipv6Addr::from(a);
            // `::` (duplicate address detection) and link-local fe80::/10 are always allowed.
            if src.is_unspecified()
                || src.segments()[0] & 0xffc0 == 0xfe80
                || policy.ipv6.contains(&src)
            {
                Ok(())
            } else {
                Err(DropReason::SpoofedIp)
            }
        }
        ETH_P_ARP => {
            let Some(h) = l3.first_chunk::<ARP_LEN>() else {
                return Err(DropReason::Truncated);
            };
            // htype Ethernet (1), ptype IPv4, hlen 6, plen 4: otherwise the sender
            // fields are not where we look, and the frame cannot be vouched for.
            if h[..6] != [0, 1, 0x08, 0x00, 6, 4] {
                return Err(DropReason::SpoofedArp);
            }
            let sha = u64::from_be_bytes([0, 0, h[8], h[9], h[10], h[11], h[12], h[13]]);
            let spa = Ipv4Addr::new(h[14], h[15], h[16], h[17]);
            // 0.0.0.0: an RFC 5227 probe.
            if sha == p.mac && (spa.is_unspecified() || policy.ipv4.contains(&spa)) {
                Ok(())
            } else {
                Err(DropReason::SpoofedArp)
            }
        }
        _ => Ok(()),
    }
}

/// True for a port the table marks as an endpoint or does not know (the default role).
#[inline(always)]
fn is_endpoint(state: Option<&PortState>) -> bool {
    !matches!(state, Some(p) if p.role != PortRole::Endpoint)
}

/// What the FDB keeps per MAC.
#[derive(Clone, Copy, Debug)]
struct Entry {
    port: PortId,
    last_seen_ms: u64,
}

/// What the port table keeps per port.
#[derive(Clone, Debug)]
struct PortState {
    role: PortRole,
    policy: Option<PortPolicy>,
    /// The policy's MAC packed, valid when `checked`.
    mac: u64,
    /// Anti-spoofing applies: an endpoint whose policy has `spoof_check`.
    checked: bool,
}

impl PortState {
    fn new(role: PortRole, policy: Option<PortPolicy>) -> PortState {
        let checked = role == PortRole::Endpoint && policy.as_ref().is_some_and(|p| p.spoof_check);
        let mac = policy.as_ref().map_or(0, |p| p.mac.to_u64());
        PortState {
            role,
            policy,
            mac,
            checked,
        }
    }
}

/// A learning switch: FDB + port table + config. The decision is pure.
pub struct Switch {
    config: SwitchConfig,
    fdb: FxHashMap<u64, Entry>,
    ports: FxHashMap<PortId, PortState>,
    /// Per port: learned MACs (exact: kept in step with `fdb` on every insert, move and
    /// removal), limit hits and limit override. A port without an entry has none.
    port_fdb: FxHashMap<PortId, PortFdb>,
    /// `decide` must consult the port table: ICC is off or some port is checked.
    filtering: bool,
    counters: SwitchCounters,
}

impl Switch {
    /// A switch with an empty FDB and port table.
    pub fn new(config: SwitchConfig) -> Switch {
        Switch {
            config,
            fdb: FxHashMap::default(),
            ports: FxHashMap::default(),
            port_fdb: FxHashMap::default(),
            filtering: !config.icc,
            counters: SwitchCounters::default(),
        }
    }

    /// The configuration this switch was built with.
    pub fn config(&self) -> SwitchConfig {
        self.config
    }

    /// Number of learned MACs (expired entries included until [`Switch::expire`] runs).
    pub fn fdb_len(&self) -> usize {
        self.fdb.len()
    }

    /// Give `port` a role and a policy (replacing what it had). Setting a checked policy
    /// also forgets FDB entries learned on `port` for any other MAC, so an address change
    /// takes effect at once, and the entry of the policy's MAC learned on another port:
    /// the port owns that MAC now (an overlay endpoint that takes the address, and so
    /// the MAC, of a remote one that left must not stay hidden behind the tunnel port
    /// until the stale entry ages out).
    pub fn set_port(&mut self, port: PortId, role: PortRole, policy: Option<PortPolicy>) {
        let state = PortState::new(role, policy);
        if state.checked {
            let mac = state.mac;
            self.fdb
                .retain(|&m, e| (e.port != port || m == mac) && (m != mac || e.port == port));
            self.recount();
        }
        self.ports.insert(port, state);
        self.refresh_filtering();
    }

    /// The role of `port` ([`PortRole::Endpoint`] for a port the table does not know).
    pub fn port_role(&self, port: PortId) -> PortRole {
        self.ports.get(&port).map_or(PortRole::Endpoint, |p| p.role)
    }

    /// The policy of `port`, if it has one.
    pub fn port_policy(&self, port: PortId) -> Option<&PortPolicy> {
        self.ports.get(&port).and_then(|p| p.policy.as_ref())
    }

    /// Give `port` its own learned-MAC limit (`None`: [`SwitchConfig::fdb_port_limit`]).
    /// MACs already learned beyond a lowered limit stay until they age out or move.
    pub fn set_port_fdb_limit(&mut self, port: PortId, limit: Option<usize>) {
        self.port_fdb.entry(port).or_default().limit = limit;
    }

    /// The FDB's view of `port` (all zeros for a port that never learned anything).
    pub fn port_fdb(&self, port: PortId) -> PortFdb {
        self.port_fdb.get(&port).copied().unwrap_or_default()
    }

    /// The FDB's view of every port that has learned or been refused a MAC, or has its own
    /// limit, sorted by port.
    pub fn ports_fdb(&self) -> Vec<(PortId, PortFdb)> {
        let mut v: Vec<(PortId, PortFdb)> = self.port_fdb.iter().map(|(&p, f)| (p, *f)).collect();
        v.sort_unstable_by_key(|(p, _)| *p);
        v
    }

    /// Recompute every port's `learned` from the FDB (after a bulk removal).
    fn recount(&mut self) {
        for p in self.port_fdb.values_mut() {
            p.learned = 0;
        }
        for e in self.fdb.values() {
            self.port_fdb.entry(e.port).or_default().learned += 1;
        }
    }

    /// Remove the entry of `mac` (learned on `port`), keeping the port's count exact.
    #[inline]
    fn unlearn(&mut self, mac: u64, port: PortId) {
        if self.fdb.remove(&mac).is_some() {
            if let Some(p) = self.port_fdb.get_mut(&port) {
                p.learned = p.learned.saturating_sub(1);
            }
        }
    }

    /// True when `port` may learn one more MAC; counts a hit when it may not.
    #[inline]
    fn port_has_room(&mut self, port: PortId) -> bool {
        let default = self.config.fdb_port_limit;
        let p = self.port_fdb.entry(port).or_default();
        if p.learned < p.limit.unwrap_or(default) {
            true
        } else {
            p.limit_hits += 1;
            self.counters.fdb_port_limit_hits += 1;
            false
        }
    }

    fn refresh_filtering(&mut self) {
        self.filtering = !self.config.icc || self.ports.values().any(|p| p.checked);
    }

    /// Decide what to do with `frame` (Ethernet frame, *without* the vnet header)
    /// that arrived on `ingress` at time `now_ms`. Learns the source MAC.
    #[inline]
    pub fn decide(&mut self, frame: &[u8], ingress: PortId, now_ms: u64) -> Action {
        let Some(hdr) = frame.first_chunk::<ETH_HDR_LEN>() else {
            return Action::Drop(DropReason::Truncated);
        };
        let dst = pack(hdr, 0);
        let src = pack(hdr, 6);
        if src & GROUP_BIT != 0 || src == 0 {
            return Action::Drop(DropReason::BadSourceMac);
        }
        let mut ethertype = u16::from_be_bytes([hdr[12], hdr[13]]);
        // The ingress port's state, when the table matters at all.
        let state = if self.filtering {
            self.ports.get(&ingress)
        } else {
            None
        };
        let icc_restricted = !self.config.icc && is_endpoint(state);
        if let Some(p) = state.filter(|p| p.checked) {
            if src != p.mac {
                return Action::Drop(DropReason::SpoofedMac);
            }
            if ethertype == ETH_P_8021Q {
                return Action::Drop(DropReason::Unsupported);
            }
            // Untagged: the L3 header starts right after the Ethernet header.
            let l3 = frame.get(ETH_HDR_LEN..).unwrap_or_default();
            if let Err(r) = check_source(p, ethertype, l3) {
                return Action::Drop(r);
            }
        } else {
            let mut l3_len = frame.len() - ETH_HDR_LEN;
            if ethertype == ETH_P_8021Q {
                // The tag's TCI (2 bytes) and the inner ethertype (2 bytes) follow.
                let Some(inner) = frame.get(ETH_HDR_LEN + 2..ETH_HDR_LEN + VLAN_TAG_LEN) else {
                    return Action::Drop(DropReason::Truncated);
                };
                ethertype = u16::from_be_bytes([inner[0], inner[1]]);
                l3_len -= VLAN_TAG_LEN;
            }
            if l3_len < l3_min_len(ethertype) {
                return Action::Drop(DropReason::Truncated);
            }
        }

        self.learn(src, ingress, now_ms);

        let flood = if icc_restricted {
            Action::ToGateways
        } else {
            Action::Flood { except: ingress }
        };
        if dst & GROUP_BIT != 0 {
            return flood;
        }
        match self.fdb.get(&dst) {
            Some(e) if now_ms.saturating_sub(e.last_seen_ms) > self.config.ageing_ms => {
                let port = e.port;
                self.unlearn(dst, port);
                flood
            }
            Some(e) if e.port == ingress => Action::Drop(DropReason::SameSegment),
            Some(e) if icc_restricted && is_endpoint(self.ports.get(&e.port)) => {
                Action::Drop(DropReason::IccDenied)
            }
            Some(e) => Action::Unicast(e.port),
            None => flood,
        }
    }

    /// Learn (or refresh, or move) `src` on `port`. A new MAC is learned only if the
    /// network and the port are both under their limits. A MAC moving to a port at its
    /// limit is forgotten (frames to it flood) rather than left pointing at the port it
    /// left.
    #[inline(always)]
    fn learn(&mut self, src: u64, port: PortId, now_ms: u64) {
        if let Some(e) = self.fdb.get_mut(&src) {
            if e.port == port {
                e.last_seen_ms = now_ms;
                return;
            }
            let old = e.port;
            self.unlearn(src, old);
            // Room in the network is certain: the entry just left it.
        } else if self.fdb.len() >= self.config.fdb_limit {
            self.counters.fdb_limit_hits += 1;
            return;
        }
        if !self.port_has_room(port) {
            return;
        }
        self.port_fdb.entry(port).or_default().learned += 1;
        self.fdb.insert(
            src,
            Entry {
                port,
                last_seen_ms: now_ms,
            },
        );
    }

    /// Forget `port`: every FDB entry learned on it, and its role and policy (port removed).
    pub fn forget_port(&mut self, port: PortId) {
        self.fdb.retain(|_, e| e.port != port);
        self.port_fdb.remove(&port);
        if self.ports.remove(&port).is_some() {
            self.refresh_filtering();
        }
    }

    /// Remove entries older than the ageing time.
    pub fn expire(&mut self, now_ms: u64) {
        let ageing = self.config.ageing_ms;
        let before = self.fdb.len();
        self.fdb
            .retain(|_, e| now_ms.saturating_sub(e.last_seen_ms) <= ageing);
        if self.fdb.len() != before {
            self.recount();
        }
    }

    /// Snapshot of the FDB, sorted by MAC.
    pub fn fdb(&self) -> Vec<FdbEntry> {
        let mut v: Vec<FdbEntry> = self
            .fdb
            .iter()
            .map(|(&mac, e)| FdbEntry {
                mac: MacAddr::from_u64(mac),
                port: e.port,
                last_seen_ms: e.last_seen_ms,
            })
            .collect();
        v.sort_unstable_by_key(|e| e.mac);
        v
    }

    /// Switch-level counters.
    pub fn counters(&self) -> SwitchCounters {
        self.counters
    }
}

#[cfg(test)]
mod tests;
