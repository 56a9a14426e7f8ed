//! Virtio-net header handling for frames arriving from the switch: software segmentation of
//! GSO super-frames and completion of partial checksums (done by [`tapnet_wire::gso`]),
//! and the headers of what the gateway sends with tap offloads.
//!
//! Contract:
//!
//! * [`ingest`] takes one datagram as it crosses a switch port (a [`VNET_HDR_LEN`]-byte
//!   virtio-net header, then the Ethernet frame) and appends to `out` one or more plain
//!   Ethernet frames, every checksum complete, each at most `gso_size` bytes of L4 payload.
//! * Supported: `GSO_NONE` (with or without `NEEDS_CSUM`), `GSO_TCPV4`, `GSO_TCPV6` (with
//!   or without the ECN bit) and `GSO_UDP_L4`. `GSO_UDP` (UFO, IP fragmentation) is refused.
//! * Everything a frame supplies is checked before use; after the length checks nothing
//!   panics: malformed input is an `Err(`[`DropReason`]`)`, never a panic.
//! * Frames the gateway *emits* carry a zeroed header ([`ZERO_HDR`]): no offloads.

use crate::stats::DropReason;
use tapnet_wire::checksum;
use tapnet_wire::gso::{self, Headers, Segmenter, L4};
use tapnet_wire::vnet::{self, GsoType, VnetHdrRepr, VNET_HDR_LEN};

/// The virtio-net header the gateway puts in front of every frame it emits: no offloads.
pub use tapnet_wire::vnet::ZERO_HDR;

/// Ethernet header length (no VLAN tags: the switch carries untagged frames).
pub use tapnet_wire::ETH_HDR_LEN;

/// The gateway's name for why segmentation refused a frame.
fn gso_drop(e: gso::Error) -> DropReason {
    match e {
        gso::Error::Truncated => DropReason::Truncated,
        gso::Error::BadVnetHdr(_) => DropReason::BadVnetHdr,
        gso::Error::Malformed | gso::Error::BufferTooSmall(_) => DropReason::Malformed,
        gso::Error::Unsupported => DropReason::UnsupportedGso,
    }
}

/// Turn one switch datagram (vnet header + Ethernet frame) into plain, checksummed
/// Ethernet frames appended to `out`.
pub fn ingest(datagram: &[u8], out: &mut Vec<Vec<u8>>) -> Result<(), DropReason> {
    let (hdr, eth) = vnet::split(datagram).map_err(|_| DropReason::Truncated)?;
    hdr.check(eth.len()).map_err(|_| DropReason::BadVnetHdr)?;
    // UFO would hand the core IP fragments, which it does not reassemble.
    if hdr.gso_type() == Some(GsoType::Udp) {
        return Err(DropReason::UnsupportedGso);
    }
    let mut segments = Segmenter::with_header(&hdr, eth).map_err(gso_drop)?;
    segments.drain_to_vecs(out).map_err(gso_drop)?;
    Ok(())
}

// ---- offload mode (the gateway faces taps) -------------------------------------------

/// The MSS the gateway hands its TCP stack in place of a sandbox's (offload mode), so that
/// the stack's segments are bounded only by its 64 KiB interface MTU.
pub const BIG_MSS: u16 = 65535 - 40;

/// Offload mode, receive side: make the frame of one switch datagram ready for the core
/// *in place*. `Ok(true)`: `dg[VNET_HDR_LEN..]` is the frame to classify; `Ok(false)`: the
/// datagram needs [`ingest`] (UDP segmentation).
///
/// * A TCP GSO super-frame stays one frame (one big TCP segment): its IP length field is
///   set to the frame's length (and the IPv4 header checksum refilled); the TCP checksum
///   is left partial: in offload mode nothing verifies TCP checksums (the sender is the
///   sandbox's kernel over a tap).
/// * A `NEEDS_CSUM` frame has its checksum completed unless it is TCP.
pub fn prepare_offloaded(dg: &mut [u8]) -> Result<bool, DropReason> {
    let (hdr, eth) = vnet::split_mut(dg).map_err(|_| DropReason::Truncated)?;
    hdr.check(eth.len()).map_err(|_| DropReason::BadVnetHdr)?;
    match hdr.gso_type() {
        Some(GsoType::None) => {
            if hdr.needs_csum() && tcp_offsets(eth.get(ETH_HDR_LEN..).unwrap_or_default()).is_none()
            {
                let (start, offset) = (hdr.csum_start(), hdr.csum_offset());
                checksum::complete_partial(eth, usize::from(start), usize::from(offset))
                    .map_err(|_| DropReason::BadVnetHdr)?;
            }
            Ok(true)
        }
        Some(GsoType::TcpV4 | GsoType::TcpV6) => {
            let h = Headers::parse(eth, L4::Tcp).map_err(gso_drop)?;
            h.set_ip_len(eth).map_err(gso_drop)?;
            Ok(true)
        }
        Some(GsoType::UdpL4) => Ok(false),
        _ => Err(DropReason::UnsupportedGso),
    }
}

/// Offload mode: whether [`prepare_offloaded`] would leave this datagram untouched and
/// return `Ok(true)`, so the gateway may handle it where it lies (no copy): a valid header,
/// and no GSO but TCP's with the IP length already right, no partial checksum to complete
/// but a TCP one. Anything else (including what `prepare_offloaded` would drop) is `false`
/// and takes the copying path, which counts the drop.
pub fn ready_in_place(dg: &[u8]) -> bool {
    let Ok((hdr, eth)) = vnet::split(dg) else {
        return false;
    };
    if hdr.check(eth.len()).is_err() {
        return false;
    }
    match hdr.gso_type() {
        Some(GsoType::None) => {
            !hdr.needs_csum() || tcp_offsets(eth.get(ETH_HDR_LEN..).unwrap_or_default()).is_some()
        }
        Some(GsoType::TcpV4 | GsoType::TcpV6) => {
            Headers::parse(eth, L4::Tcp).is_ok_and(|h| h.ip_len_matches(eth))
        }
        _ => false,
    }
}

/// Where the TCP header of an IP packet lies: `(v6, l4_off, tcp_hdr_len)`, `None` if the
/// packet is not a well-formed unfragmented TCP packet (no IPv6 extension headers).
fn tcp_offsets(ip: &[u8]) -> Option<(bool, usize, usize)> {
    let (v6, l4_off) = match ip.first()? >> 4 {
        4 => {
            let ihl = usize::from(ip.first()? & 0x0f) * 4;
            let frag = u16::from_be_bytes([*ip.get(6)?, *ip.get(7)?]);
            if ihl < 20 || *ip.get(9)? != 6 || frag & 0x3fff != 0 {
                return None;
            }
            (false, ihl)
        }
        6 => {
            if *ip.get(6)? != 6 {
                return None;
            }
            (true, 40)
        }
        _ => return None,
    };
    let thl = usize::from(ip.get(l4_off + 12)? >> 4) * 4;
    if thl < 20 || ip.len() < l4_off + thl {
        return None;
    }
    Some((v6, l4_off, thl))
}

/// The source and destination endpoints of a TCP IP packet.
pub fn tcp_endpoints(ip: &[u8]) -> Option<(std::net::SocketAddr, std::net::SocketAddr)> {
    use std::net::{IpAddr, SocketAddr};
    let (v6, l4, _) = tcp_offsets(ip)?;
    let (src, dst) = if v6 {
        let s: [u8; 16] = ip.get(8..24)?.try_into().ok()?;
        let d: [u8; 16] = ip.get(24..40)?.try_into().ok()?;
        (IpAddr::from(s), IpAddr::from(d))
    } else {
        let s: [u8; 4] = ip.get(12..16)?.try_into().ok()?;
        let d: [u8; 4] = ip.get(16..20)?.try_into().ok()?;
        (IpAddr::from(s), IpAddr::from(d))
    };
    let sp = u16::from_be_bytes([*ip.get(l4)?, *ip.get(l4 + 1)?]);
    let dp = u16::from_be_bytes([*ip.get(l4 + 2)?, *ip.get(l4 + 3)?]);
    Some((SocketAddr::new(src, sp), SocketAddr::new(dst, dp)))
}

/// If `ip` is a TCP SYN (or SYN-ACK) with an MSS option, replace the MSS with
/// `f(v6, old)` and return the old one. The TCP checksum is *not* updated: offload mode
/// only (received segments are not verified, sent ones get a partial checksum).
fn rewrite_syn_mss(ip: &mut [u8], f: impl FnOnce(bool, u16) -> u16) -> Option<u16> {
    let (v6, l4, thl) = tcp_offsets(ip)?;
    if ip.get(l4 + 13)? & 0x02 == 0 {
        return None;
    }
    let opts = ip.get_mut(l4 + 20..l4 + thl)?;
    let mut i = 0;
    while i < opts.len() {
        match opts[i] {
            0 => return None,
            1 => i += 1,
            kind => {
                let len = usize::from(*opts.get(i + 1)?);
                if len < 2 || i + len > opts.len() {
                    return None;
                }
                if kind == 2 && len == 4 {
                    let old = u16::from_be_bytes([opts[i + 2], opts[i + 3]]);
                    opts[i + 2..i + 4].copy_from_slice(&f(v6, old).to_be_bytes());
                    return Some(old);
                }
                i += len;
            }
        }
    }
    None
}

/// Whether `ip` is a TCP packet with the SYN flag (a SYN or a SYN-ACK: the packets whose
/// MSS option the gateway rewrites).
pub fn has_syn(ip: &[u8]) -> bool {
    tcp_offsets(ip).is_some_and(|(_, l4, _)| ip.get(l4 + 13).is_some_and(|f| f & 0x02 != 0))
}

/// A sandbox's SYN or SYN-ACK on its way into the TCP stack: raise its MSS option to
/// [`BIG_MSS`] and return the sandbox's real MSS.
pub fn raise_syn_mss(ip: &mut [u8]) -> Option<u16> {
    rewrite_syn_mss(ip, |_, _| BIG_MSS)
}

/// A SYN or SYN-ACK of the TCP stack on its way to a sandbox: clamp its MSS option to
/// what fits the network's MTU (`mtu` − IP header − 20), rounded down to a multiple of
/// [`crate::tcp::WINDOW_UNIT`] (so the sandbox's full segments never leave the stack's
/// rounded window edge behind; see there).
pub fn clamp_syn_mss(ip: &mut [u8], mtu: usize) {
    rewrite_syn_mss(ip, |v6, old| {
        let fit = mtu.saturating_sub(if v6 { 60 } else { 40 });
        let fit = (fit - fit % crate::tcp::WINDOW_UNIT).max(crate::tcp::WINDOW_UNIT);
        old.min(u16::try_from(fit).unwrap_or(u16::MAX))
    });
}

/// Offload mode, send side: the virtio-net header for an Ethernet frame going to a tap.
///
/// A TCP segment gets a partial checksum: the pseudo-header sum is written into its
/// checksum field and the header says `NEEDS_CSUM` (csum_start = the TCP header,
/// csum_offset = 16); the sandbox's kernel takes a `CHECKSUM_PARTIAL` packet as valid.
/// A segment longer than `mtu` (IP packet size) becomes a GSO super-frame:
/// `GSO_TCPV4`/`GSO_TCPV6`, `hdr_len` = all headers, `gso_size` = `mss` capped to what
/// fits `mtu`. Anything else keeps its checksums and gets [`ZERO_HDR`].
pub fn offload_hdr(eth: &mut [u8], mtu: usize, mss: Option<u16>) -> [u8; VNET_HDR_LEN] {
    let Some(ip) = eth.get_mut(ETH_HDR_LEN..) else {
        return ZERO_HDR;
    };
    let Some((v6, l4, thl)) = tcp_offsets(ip) else {
        return ZERO_HDR;
    };
    let l4_len = ip.len() - l4;
    let Some(addrs) = (if v6 { ip.get(8..40) } else { ip.get(12..20) }) else {
        return ZERO_HDR;
    };
    // A frame is far below 4 GiB.
    let sum = checksum::pseudo_raw(addrs, 6, l4_len as u32).fold();
    if let Some(c) = ip.get_mut(l4 + 16..l4 + 18) {
        c.copy_from_slice(&sum.to_be_bytes());
    }
    // Header offsets are below 64 KiB: `tcp_offsets` read them from one IP header.
    let mut h = VnetHdrRepr::partial_csum((ETH_HDR_LEN + l4) as u16, 16);
    if ip.len() > mtu {
        let fit = mtu.saturating_sub(l4 + thl).max(1);
        let gso = usize::from(mss.unwrap_or(u16::MAX)).clamp(1, fit);
        let kind = if v6 { GsoType::TcpV6 } else { GsoType::TcpV4 };
        h = h.with_gso(kind, (ETH_HDR_LEN + l4 + thl) as u16, gso as u16);
    }
    h.to_bytes()
}

/// Prefix an Ethernet frame with a zeroed virtio-net header, for sending to the switch.
pub fn with_zero_hdr(eth: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(VNET_HDR_LEN + eth.len());
    v.extend_from_slice(&ZERO_HDR);
    v.extend_from_slice(eth);
    v
}

#[cfg(test)]
#[path = "tests/vnet.rs"]
mod tests;
