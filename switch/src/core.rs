//! Pure forwarding core: the learning switch's decision and its FDB.
//!
//! Contract:
//!
//! * [`Switch::decide`] is a pure function of (frame headers, ingress port, FDB, config,
//!   `now_ms`) returning an [`Action`]. It does no I/O and never reads the clock; the
//!   caller passes monotonic milliseconds in. Its only side effects are on the FDB
//!   (learning the source MAC, dropping an expired destination entry) and on
//!   [`SwitchCounters`].
//! * [`check_vnet_hdr`] validates the virtio-net header that precedes every frame on a
//!   port, so that the switch never hands a tap a header the kernel would reject.
//! * Frames are plain byte slices supplied by containers. Every parser here tests the
//!   length first (`first_chunk`, `get`) and indexes only within what that test proved:
//!   **no panic after the length check**, on any input.
//!
//! MAC addresses are packed into a `u64` (big-endian, upper 16 bits zero) for the FDB
//! key, hashed with `FxHash`; a hit only updates the entry in place.

use rustc_hash::FxHashMap;
use std::fmt;

/// Index of a port within one switch.
pub type PortId = u32;

/// A 48-bit Ethernet MAC address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MacAddr(pub [u8; 6]);

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}
impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

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
}

impl DropReason {
    /// Number of reasons (size of counter arrays).
    pub const COUNT: usize = 5;
    /// All reasons, in counter order.
    pub const ALL: [DropReason; Self::COUNT] = [
        DropReason::Truncated,
        DropReason::BadSourceMac,
        DropReason::BadVnetHdr,
        DropReason::SameSegment,
        DropReason::TxError,
    ];
    /// Stable snake_case name used in the API and metrics.
    pub fn name(self) -> &'static str {
        match self {
            DropReason::Truncated => "truncated",
            DropReason::BadSourceMac => "bad_source_mac",
            DropReason::BadVnetHdr => "bad_vnet_hdr",
            DropReason::SameSegment => "same_segment",
            DropReason::TxError => "tx_error",
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
}

/// Switch configuration.
#[derive(Clone, Copy, Debug)]
pub struct SwitchConfig {
    /// FDB entry lifetime in milliseconds (default 300 000).
    pub ageing_ms: u64,
    /// Maximum number of learned MACs in this switch (default 8192).
    pub fdb_limit: usize,
}

impl Default for SwitchConfig {
    fn default() -> Self {
        SwitchConfig {
            ageing_ms: 300_000,
            fdb_limit: 8192,
        }
    }
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
}

impl MacAddr {
    /// The broadcast address `ff:ff:ff:ff:ff:ff`.
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);

    /// True for group (multicast and broadcast) addresses: the I/G bit of the first octet.
    pub fn is_multicast(self) -> bool {
        self.0[0] & 1 != 0
    }

    /// True for `00:00:00:00:00:00`.
    pub fn is_zero(self) -> bool {
        self.0 == [0; 6]
    }

    /// The address packed into the low 48 bits of a `u64` (big-endian octet order).
    pub fn to_u64(self) -> u64 {
        let m = self.0;
        u64::from_be_bytes([0, 0, m[0], m[1], m[2], m[3], m[4], m[5]])
    }

    /// Inverse of [`MacAddr::to_u64`]; the upper 16 bits are ignored.
    pub fn from_u64(v: u64) -> MacAddr {
        let b = v.to_be_bytes();
        MacAddr([b[2], b[3], b[4], b[5], b[6], b[7]])
    }
}

/// Length of an Ethernet II header (dst, src, ethertype).
pub const ETH_HDR_LEN: usize = libc::ETH_HLEN as usize;
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

/// `flags` bit of the virtio-net header: the checksum at `csum_start + csum_offset`
/// must be completed (`VIRTIO_NET_HDR_F_NEEDS_CSUM`, linux/virtio_net.h).
pub const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;
/// `gso_type`: not a GSO frame (`VIRTIO_NET_HDR_GSO_NONE`).
pub const VIRTIO_NET_HDR_GSO_NONE: u8 = 0;
/// `gso_type`: TCP over IPv4 (`VIRTIO_NET_HDR_GSO_TCPV4`).
pub const VIRTIO_NET_HDR_GSO_TCPV4: u8 = 1;
/// `gso_type`: UDP fragmentation offload (`VIRTIO_NET_HDR_GSO_UDP`).
pub const VIRTIO_NET_HDR_GSO_UDP: u8 = 3;
/// `gso_type`: TCP over IPv6 (`VIRTIO_NET_HDR_GSO_TCPV6`).
pub const VIRTIO_NET_HDR_GSO_TCPV6: u8 = 4;
/// `gso_type`: UDP segmentation offload (`VIRTIO_NET_HDR_GSO_UDP_L4`).
pub const VIRTIO_NET_HDR_GSO_UDP_L4: u8 = 5;
/// `gso_type` modifier: TCP with ECN (`VIRTIO_NET_HDR_GSO_ECN`).
pub const VIRTIO_NET_HDR_GSO_ECN: u8 = 0x80;

/// Check a virtio-net header (`struct virtio_net_hdr`, little-endian fields, as taps use
/// on little-endian hosts) against the length of the Ethernet frame that follows it.
///
/// Rejects, with [`DropReason::BadVnetHdr`], an unknown `gso_type`, a GSO type with a
/// zero `gso_size`, and a `NEEDS_CSUM` request whose checksum field lies past the end of
/// the frame. A header shorter than [`crate::VNET_HDR_LEN`] is
/// [`DropReason::Truncated`]. Bytes past the first [`crate::VNET_HDR_LEN`] are ignored.
#[inline]
pub fn check_vnet_hdr(hdr: &[u8], frame_len: usize) -> Result<(), DropReason> {
    let Some(h) = hdr.first_chunk::<{ crate::VNET_HDR_LEN }>() else {
        return Err(DropReason::Truncated);
    };
    let flags = h[0];
    let gso_type = h[1];
    let gso_size = u16::from_le_bytes([h[4], h[5]]);
    let csum_start = usize::from(u16::from_le_bytes([h[6], h[7]]));
    let csum_offset = usize::from(u16::from_le_bytes([h[8], h[9]]));
    match gso_type & !VIRTIO_NET_HDR_GSO_ECN {
        VIRTIO_NET_HDR_GSO_NONE => {}
        VIRTIO_NET_HDR_GSO_TCPV4
        | VIRTIO_NET_HDR_GSO_UDP
        | VIRTIO_NET_HDR_GSO_TCPV6
        | VIRTIO_NET_HDR_GSO_UDP_L4 => {
            if gso_size == 0 {
                return Err(DropReason::BadVnetHdr);
            }
        }
        _ => return Err(DropReason::BadVnetHdr),
    }
    // u16 + u16 + 2 cannot overflow usize.
    if flags & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 && csum_start + csum_offset + 2 > frame_len {
        return Err(DropReason::BadVnetHdr);
    }
    Ok(())
}

/// What the FDB keeps per MAC.
#[derive(Clone, Copy, Debug)]
struct Entry {
    port: PortId,
    last_seen_ms: u64,
}

/// A learning switch: FDB + config. The decision is pure.
pub struct Switch {
    config: SwitchConfig,
    fdb: FxHashMap<u64, Entry>,
    counters: SwitchCounters,
}

impl Switch {
    /// A switch with an empty FDB.
    pub fn new(config: SwitchConfig) -> Switch {
        Switch {
            config,
            fdb: FxHashMap::default(),
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

        self.learn(src, ingress, now_ms);

        if dst & GROUP_BIT != 0 {
            return Action::Flood { except: ingress };
        }
        match self.fdb.get(&dst) {
            Some(e) if now_ms.saturating_sub(e.last_seen_ms) > self.config.ageing_ms => {
                self.fdb.remove(&dst);
                Action::Flood { except: ingress }
            }
            Some(e) if e.port == ingress => Action::Drop(DropReason::SameSegment),
            Some(e) => Action::Unicast(e.port),
            None => Action::Flood { except: ingress },
        }
    }

    /// Learn (or refresh, or move) `src` on `port`.
    #[inline(always)]
    fn learn(&mut self, src: u64, port: PortId, now_ms: u64) {
        if let Some(e) = self.fdb.get_mut(&src) {
            e.port = port;
            e.last_seen_ms = now_ms;
        } else if self.fdb.len() >= self.config.fdb_limit {
            self.counters.fdb_limit_hits += 1;
        } else {
            self.fdb.insert(
                src,
                Entry {
                    port,
                    last_seen_ms: now_ms,
                },
            );
        }
    }

    /// Forget every entry learned on `port` (port removed).
    pub fn forget_port(&mut self, port: PortId) {
        self.fdb.retain(|_, e| e.port != port);
    }

    /// Remove entries older than the ageing time.
    pub fn expire(&mut self, now_ms: u64) {
        let ageing = self.config.ageing_ms;
        self.fdb
            .retain(|_, e| now_ms.saturating_sub(e.last_seen_ms) <= ageing);
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
