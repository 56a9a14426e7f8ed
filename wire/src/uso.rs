//! UDP coalescing toward a tap: consecutive datagrams of one flow, merged into one UDP
//! segmentation-offload super-frame (`VIRTIO_NET_HDR_GSO_UDP_L4`) that the tap's kernel
//! cuts back into the same datagrams (software GRO for UDP, the way a NIC's GRO hands
//! a receiver a train of segments as one packet).
//!
//! Why: a tap write costs a system call (or a submission) and one pass through the
//! receiver's IP stack per frame. A flood of small datagrams written one per frame made
//! the datapath worker the busiest of the three threads on two cores (sender, worker,
//! receiver); merged, the worker writes about one frame per dozen datagrams
//! (docs/benchmarks.md, "UDP coalescing toward taps").
//!
//! Contract:
//!
//! * Frames are a virtio-net header ([`VNET_HDR_LEN`]) + an untagged Ethernet frame.
//!   [`plan`] splits a sequence of frames into [`Run`]s, in order, covering every frame
//!   once: a run of one is a frame to write as it is; a longer run is frames that
//!   [`build`] merges.
//! * A frame may start a run only if it is a *candidate*: no GSO (`gso_type` 0); untagged
//!   IPv4 (version 4, no options, not a fragment, header checksum good, total length =
//!   the frame's) or IPv6 (next header UDP, no extension headers, payload length = the
//!   frame's); UDP length = the IP payload; at least one payload byte; and a checksum
//!   that is trustworthy: left to complete (`NEEDS_CSUM` pointing at the UDP checksum),
//!   verified by the sender (`DATA_VALID`), absent (IPv4 checksum 0), or verified here.
//!   A datagram with a bad checksum is never merged: it is passed on as it is, for the
//!   receiver's kernel to drop and count, as it would have been.
//! * A candidate joins the run before it only if it *continues* it: the same Ethernet
//!   header, the same IP header except the lengths, the IPv4 id and header checksum,
//!   the same UDP ports, a payload no longer than the run's first (a shorter one ends
//!   the run), at most [`MAX_SEGMENTS`] datagrams, and an IP packet of at most 65,535
//!   bytes. The kernel cuts a super-frame into datagrams of the first one's payload
//!   size, the last one shorter, which is exactly what was merged.
//! * Which families may be merged is the caller's: a tap takes `GSO_UDP_L4` only where
//!   the kernel accepted `TUN_F_USO4`/`TUN_F_USO6` (Linux 6.2+).
//! * [`build`] appends the super-frame to the caller's buffer: the first frame's
//!   headers, every payload in order, the IP length (and IPv4 header checksum) and UDP
//!   length of the whole, the UDP checksum field set to the pseudo-header sum, and a
//!   virtio-net header `NEEDS_CSUM` (start = the UDP header, offset 6) + `GSO_UDP_L4`
//!   with `gso_size` = the first payload's length, `hdr_len` = all headers. The kernel
//!   completes every datagram's checksum when it segments.
//! * Pure: no I/O, no clock; [`build`] allocates only by growing the caller's buffer;
//!   nothing panics on any input.

use crate::checksum;
use crate::vnet::{
    GsoType, VnetHdrRepr, VIRTIO_NET_HDR_F_DATA_VALID, VIRTIO_NET_HDR_F_NEEDS_CSUM, VNET_HDR_LEN,
};
use crate::{ETHERTYPE_IPV4, ETHERTYPE_IPV6, ETH_HDR_LEN, IPPROTO_UDP};

/// Most datagrams merged into one super-frame: the kernel refuses a UDP GSO packet of
/// more segments than `UDP_MAX_SEGMENTS` (64 before Linux 6.13, 128 since).
pub const MAX_SEGMENTS: usize = 64;

const IPV4_HDR: usize = 20;
const IPV6_HDR: usize = 40;
const UDP_HDR: usize = 8;
/// Offset of the IP header in a frame.
const IP: usize = VNET_HDR_LEN + ETH_HDR_LEN;

/// Which address families may be merged (the tap's `TUN_F_USO4` / `TUN_F_USO6`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Families {
    /// IPv4 datagrams.
    pub v4: bool,
    /// IPv6 datagrams.
    pub v6: bool,
}

impl Families {
    /// Neither family.
    pub const NONE: Families = Families {
        v4: false,
        v6: false,
    };

    /// Whether any family may be merged.
    pub const fn any(self) -> bool {
        self.v4 || self.v6
    }
}

/// Frames `start..start + len` of the planned sequence: written as they are if `len` is
/// 1, else merged by [`build`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Run {
    /// Index of the run's first frame.
    pub start: usize,
    /// Frames in the run (at least 1).
    pub len: usize,
}

/// What [`plan`] needs to know of a candidate datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Datagram {
    ipv6: bool,
    /// Offset of the UDP header in the frame.
    udp: usize,
    /// Payload bytes (after the UDP header).
    payload: usize,
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(*b.get(at..)?.first_chunk::<2>()?))
}

/// The candidate datagram `frame` is (see the module docs), or `None`.
fn candidate(frame: &[u8], families: Families) -> Option<Datagram> {
    let hdr = frame.get(..VNET_HDR_LEN)?;
    // virtio-net header: flags, gso_type, hdr_len, gso_size, csum_start, csum_offset.
    let (flags, gso_type) = (hdr[0], hdr[1]);
    if gso_type != 0 {
        return None;
    }
    let (ipv6, udp) = match be16(frame, VNET_HDR_LEN + 12)? {
        ETHERTYPE_IPV4 if families.v4 => {
            let ip = frame.get(IP..IP + IPV4_HDR)?;
            // Version 4, no options; not a fragment (MF clear, offset 0); UDP.
            if ip[0] != 0x45 || be16(ip, 6)? & 0x3fff != 0 || ip[9] != IPPROTO_UDP {
                return None;
            }
            if usize::from(be16(ip, 2)?) != frame.len() - IP || !checksum::verify(ip) {
                return None;
            }
            (false, IP + IPV4_HDR)
        }
        ETHERTYPE_IPV6 if families.v6 => {
            let ip = frame.get(IP..IP + IPV6_HDR)?;
            if ip[0] >> 4 != 6 || ip[6] != IPPROTO_UDP {
                return None;
            }
            if usize::from(be16(ip, 4)?) != frame.len() - IP - IPV6_HDR {
                return None;
            }
            (true, IP + IPV6_HDR)
        }
        _ => return None,
    };
    let udp_len = usize::from(be16(frame, udp + 4)?);
    if udp_len != frame.len() - udp || udp_len <= UDP_HDR {
        return None;
    }
    let csum_start = usize::from(u16::from_le_bytes([hdr[6], hdr[7]]));
    let csum_offset = usize::from(u16::from_le_bytes([hdr[8], hdr[9]]));
    let trusted = if flags & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 {
        csum_start == udp - VNET_HDR_LEN && csum_offset == 6
    } else if flags & VIRTIO_NET_HDR_F_DATA_VALID != 0 {
        true
    } else {
        let field = be16(frame, udp + 6)?;
        if field == 0 {
            // No checksum: allowed over IPv4 only (RFC 768 / RFC 8200).
            !ipv6
        } else {
            let dgram = frame.get(udp..)?;
            let ip = frame.get(IP..udp)?;
            let addrs = if ipv6 {
                ip.get(8..40)?
            } else {
                ip.get(12..20)?
            };
            checksum::pseudo_raw(addrs, IPPROTO_UDP, udp_len as u32)
                .add_bytes(dgram)
                .checksum()
                == 0
        }
    };
    trusted.then_some(Datagram {
        ipv6,
        udp,
        payload: udp_len - UDP_HDR,
    })
}

/// Whether candidate `next` continues the run that `first` (its datagram `d0`) starts:
/// the header bytes that must be equal are (see the module docs).
fn continues(first: &[u8], d0: &Datagram, next: &[u8], dn: &Datagram) -> bool {
    if dn.ipv6 != d0.ipv6 || dn.udp != d0.udp || dn.payload > d0.payload {
        return false;
    }
    let same = |r: std::ops::Range<usize>| match (first.get(r.clone()), next.get(r)) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    };
    // Ethernet header, the UDP ports.
    let eth_ports = same(VNET_HDR_LEN..IP) && same(d0.udp..d0.udp + 4);
    let ip = if d0.ipv6 {
        // Version, class, flow label; next header, hop limit, addresses.
        same(IP..IP + 4) && same(IP + 6..IP + IPV6_HDR)
    } else {
        // Version/IHL, DSCP/ECN; flags/fragment offset, TTL, protocol; addresses.
        same(IP..IP + 2) && same(IP + 6..IP + 10) && same(IP + 12..IP + IPV4_HDR)
    };
    eth_ports && ip
}

/// Split `frames` into runs (see the module docs), appended to `runs` (cleared first).
pub fn plan<'a>(
    frames: impl IntoIterator<Item = &'a [u8]>,
    families: Families,
    runs: &mut Vec<Run>,
) {
    runs.clear();
    // The open run: its first frame and datagram, and the IP length merged so far.
    let mut open: Option<(&[u8], Datagram, usize)> = None;
    for (i, frame) in frames.into_iter().enumerate() {
        let d = candidate(frame, families);
        if let (Some((first, d0, ip_len)), Some(dn), Some(run)) = (open, d, runs.last_mut()) {
            let grown = ip_len + dn.payload;
            if run.len < MAX_SEGMENTS && grown <= 0xffff && continues(first, &d0, frame, &dn) {
                run.len += 1;
                open = (dn.payload == d0.payload).then_some((first, d0, grown));
                continue;
            }
        }
        runs.push(Run { start: i, len: 1 });
        open = d.map(|d| (frame, d, frame.len() - IP));
    }
}

/// Append the super-frame merging `frames` (a run [`plan`] made, of at least two
/// frames) to `out`; the range of `out` it took, or `None` (and `out` as it was) if the
/// frames are not such a run.
pub fn build<'a>(
    frames: impl IntoIterator<Item = &'a [u8]>,
    out: &mut Vec<u8>,
) -> Option<std::ops::Range<usize>> {
    let at = out.len();
    let r = build_at(frames, out, at);
    if r.is_none() {
        out.truncate(at);
    }
    r
}

fn build_at<'a>(
    frames: impl IntoIterator<Item = &'a [u8]>,
    out: &mut Vec<u8>,
    at: usize,
) -> Option<std::ops::Range<usize>> {
    let mut frames = frames.into_iter();
    let first = frames.next()?;
    let d0 = candidate(first, Families { v4: true, v6: true })?;
    out.extend_from_slice(first);
    let mut segments = 1;
    for f in frames {
        out.extend_from_slice(f.get(d0.udp + UDP_HDR..)?);
        segments += 1;
    }
    if !(2..=MAX_SEGMENTS).contains(&segments) {
        return None;
    }
    let frame = out.get_mut(at..)?;
    let ip_len = frame.len() - IP;
    let udp_len = frame.len() - d0.udp;
    let ip = frame.get_mut(IP..d0.udp)?;
    if d0.ipv6 {
        let payload = u16::try_from(udp_len).ok()?;
        ip.get_mut(4..6)?.copy_from_slice(&payload.to_be_bytes());
    } else {
        let total = u16::try_from(ip_len).ok()?;
        ip.get_mut(2..4)?.copy_from_slice(&total.to_be_bytes());
        checksum::fill_ipv4_header(ip).ok()?;
    }
    let addrs = if d0.ipv6 {
        ip.get(8..40)?
    } else {
        ip.get(12..20)?
    };
    let pseudo = checksum::pseudo_raw(addrs, IPPROTO_UDP, udp_len as u32).fold();
    let udp = frame.get_mut(d0.udp..d0.udp + UDP_HDR)?;
    udp.get_mut(4..6)?
        .copy_from_slice(&u16::try_from(udp_len).ok()?.to_be_bytes());
    udp.get_mut(6..8)?.copy_from_slice(&pseudo.to_be_bytes());
    let l4 = u16::try_from(d0.udp - VNET_HDR_LEN).ok()?;
    let hdr = VnetHdrRepr::partial_csum(l4, 6).with_gso(
        GsoType::UdpL4,
        l4 + UDP_HDR as u16,
        u16::try_from(d0.payload).ok()?,
    );
    frame
        .get_mut(..VNET_HDR_LEN)?
        .copy_from_slice(&hdr.to_bytes());
    Some(at..out.len())
}

#[cfg(test)]
#[path = "uso_tests.rs"]
mod tests;
