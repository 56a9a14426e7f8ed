//! Virtio-net header handling for frames arriving from the switch: software segmentation of
//! GSO super-frames and completion of partial checksums.
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
use smoltcp::wire::{
    EthernetFrame, EthernetProtocol, IpAddress, IpProtocol, Ipv4Packet, Ipv6Packet, TcpPacket,
    UdpPacket,
};
use tapnet_switch::core::{
    check_vnet_hdr, VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_ECN, VIRTIO_NET_HDR_GSO_NONE,
    VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6, VIRTIO_NET_HDR_GSO_UDP_L4,
};
use tapnet_switch::VNET_HDR_LEN;

/// The virtio-net header the gateway puts in front of every frame it emits.
pub const ZERO_HDR: [u8; VNET_HDR_LEN] = [0; VNET_HDR_LEN];

/// Ethernet header length (no VLAN tags: the switch carries untagged frames).
pub const ETH_HDR_LEN: usize = 14;

/// Decoded virtio-net header fields (little-endian on the wire).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VnetHdr {
    /// `flags` (`NEEDS_CSUM`, ...).
    pub flags: u8,
    /// `gso_type`, ECN bit included.
    pub gso_type: u8,
    /// `gso_size`: L4 payload bytes per segment.
    pub gso_size: u16,
    /// Where checksumming starts (from the start of the Ethernet frame).
    pub csum_start: u16,
    /// Offset of the checksum field from `csum_start`.
    pub csum_offset: u16,
}

impl VnetHdr {
    /// Decode the first [`VNET_HDR_LEN`] bytes; `None` if shorter.
    pub fn parse(b: &[u8]) -> Option<VnetHdr> {
        let h = b.first_chunk::<VNET_HDR_LEN>()?;
        Some(VnetHdr {
            flags: h[0],
            gso_type: h[1],
            gso_size: u16::from_le_bytes([h[4], h[5]]),
            csum_start: u16::from_le_bytes([h[6], h[7]]),
            csum_offset: u16::from_le_bytes([h[8], h[9]]),
        })
    }
}

/// Ones'-complement sum of `data` folded to 16 bits (not complemented), starting at `init`.
fn ones_sum(data: &[u8], init: u32) -> u16 {
    let mut sum = u64::from(init);
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u64::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u64::from(u16::from_be_bytes([*last, 0]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    // The loop leaves at most 16 bits.
    sum as u16
}

/// Turn one switch datagram (vnet header + Ethernet frame) into plain, checksummed
/// Ethernet frames appended to `out`.
pub fn ingest(datagram: &[u8], out: &mut Vec<Vec<u8>>) -> Result<(), DropReason> {
    let (hdr, eth) = datagram
        .split_at_checked(VNET_HDR_LEN)
        .ok_or(DropReason::Truncated)?;
    check_vnet_hdr(hdr, eth.len()).map_err(|_| DropReason::BadVnetHdr)?;
    let h = VnetHdr::parse(hdr).ok_or(DropReason::Truncated)?;
    match h.gso_type & !VIRTIO_NET_HDR_GSO_ECN {
        VIRTIO_NET_HDR_GSO_NONE => {
            let mut f = eth.to_vec();
            if h.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 {
                complete_partial_csum(&mut f, h)?;
            }
            out.push(f);
            Ok(())
        }
        VIRTIO_NET_HDR_GSO_TCPV4 | VIRTIO_NET_HDR_GSO_TCPV6 => {
            segment(eth, usize::from(h.gso_size), L4::Tcp, out)
        }
        VIRTIO_NET_HDR_GSO_UDP_L4 => segment(eth, usize::from(h.gso_size), L4::Udp, out),
        _ => Err(DropReason::UnsupportedGso),
    }
}

/// Complete a `CHECKSUM_PARTIAL` checksum: the field at `csum_start + csum_offset` holds
/// the pseudo-header sum; sum from `csum_start` to the end and store the complement.
fn complete_partial_csum(f: &mut [u8], h: VnetHdr) -> Result<(), DropReason> {
    let start = usize::from(h.csum_start);
    let field = start + usize::from(h.csum_offset);
    if field + 2 > f.len() {
        return Err(DropReason::BadVnetHdr);
    }
    let sum = ones_sum(f.get(start..).ok_or(DropReason::BadVnetHdr)?, 0);
    let mut csum = !sum;
    // A computed UDP checksum of zero is sent as all ones (RFC 768); harmless for TCP.
    if csum == 0 {
        csum = 0xffff;
    }
    f.get_mut(field..field + 2)
        .ok_or(DropReason::BadVnetHdr)?
        .copy_from_slice(&csum.to_be_bytes());
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum L4 {
    Tcp,
    Udp,
}

/// Where the headers of a super-frame lie.
struct Layout {
    v6: bool,
    ip_off: usize,
    l4_off: usize,
    payload_off: usize,
    src: IpAddress,
    dst: IpAddress,
}

fn layout(eth: &[u8], l4: L4) -> Result<Layout, DropReason> {
    let frame = EthernetFrame::new_checked(eth).map_err(|_| DropReason::Truncated)?;
    let want = match l4 {
        L4::Tcp => IpProtocol::Tcp,
        L4::Udp => IpProtocol::Udp,
    };
    let ip_off = ETH_HDR_LEN;
    let ip = eth.get(ip_off..).ok_or(DropReason::Truncated)?;
    let (v6, l4_off, src, dst) = match frame.ethertype() {
        EthernetProtocol::Ipv4 => {
            // Checked by hand: a super-frame's total length field may be stale or zero.
            let p = Ipv4Packet::new_unchecked(ip);
            if ip.len() < 20
                || p.version() != 4
                || p.header_len() < 20
                || ip.len() < usize::from(p.header_len())
            {
                return Err(DropReason::Malformed);
            }
            if p.next_header() != want || p.more_frags() || p.frag_offset() != 0 {
                return Err(DropReason::UnsupportedGso);
            }
            (
                false,
                ip_off + usize::from(p.header_len()),
                IpAddress::Ipv4(p.src_addr()),
                IpAddress::Ipv4(p.dst_addr()),
            )
        }
        EthernetProtocol::Ipv6 => {
            // The length check only needs the fixed header; the payload length field of a
            // super-frame may not describe the whole frame.
            let p = Ipv6Packet::new_unchecked(ip);
            if ip.len() < 40 || p.version() != 6 {
                return Err(DropReason::Malformed);
            }
            if p.next_header() != want {
                // Extension headers in front of the L4 header are not segmented.
                return Err(DropReason::UnsupportedGso);
            }
            (
                true,
                ip_off + 40,
                IpAddress::Ipv6(p.src_addr()),
                IpAddress::Ipv6(p.dst_addr()),
            )
        }
        _ => return Err(DropReason::UnsupportedGso),
    };
    let l4_hdr = eth.get(l4_off..).ok_or(DropReason::Truncated)?;
    let l4_len = match l4 {
        L4::Tcp => {
            let first = *l4_hdr.get(12).ok_or(DropReason::Truncated)?;
            usize::from(first >> 4) * 4
        }
        L4::Udp => 8,
    };
    if l4_len < if l4 == L4::Tcp { 20 } else { 8 } || l4_hdr.len() < l4_len {
        return Err(DropReason::Malformed);
    }
    Ok(Layout {
        v6,
        ip_off,
        l4_off,
        payload_off: l4_off + l4_len,
        src,
        dst,
    })
}

/// TCP flags that belong to the last segment only (FIN, PSH) and the first only (CWR).
const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_CWR: u8 = 0x80;

fn segment(eth: &[u8], gso_size: usize, l4: L4, out: &mut Vec<Vec<u8>>) -> Result<(), DropReason> {
    if gso_size == 0 {
        return Err(DropReason::BadVnetHdr);
    }
    let lay = layout(eth, l4)?;
    let headers = eth.get(..lay.payload_off).ok_or(DropReason::Truncated)?;
    let payload = eth.get(lay.payload_off..).ok_or(DropReason::Truncated)?;
    let l4_hlen = lay.payload_off - lay.l4_off;
    let ip_hlen = lay.l4_off - lay.ip_off;
    let n = payload.len().div_ceil(gso_size).max(1);
    let chunks: Vec<&[u8]> = if payload.is_empty() {
        vec![payload]
    } else {
        payload.chunks(gso_size).collect()
    };
    // Fields of the original headers.
    let seq0 = headers
        .get(lay.l4_off + 4..lay.l4_off + 8)
        .and_then(|b| b.first_chunk::<4>())
        .map(|b| u32::from_be_bytes(*b))
        .unwrap_or(0);
    let id0 = if lay.v6 {
        0
    } else {
        headers
            .get(lay.ip_off + 4..lay.ip_off + 6)
            .and_then(|b| b.first_chunk::<2>())
            .map(|b| u16::from_be_bytes(*b))
            .unwrap_or(0)
    };
    for (i, chunk) in chunks.iter().enumerate() {
        let mut f = Vec::with_capacity(headers.len() + chunk.len());
        f.extend_from_slice(headers);
        f.extend_from_slice(chunk);
        let ip_total = ip_hlen + l4_hlen + chunk.len();
        let l4_total = l4_hlen + chunk.len();
        let last = i + 1 == n;
        // IP header.
        {
            let ip = f.get_mut(lay.ip_off..).ok_or(DropReason::Truncated)?;
            if lay.v6 {
                let mut p = Ipv6Packet::new_unchecked(ip);
                p.set_payload_len(u16::try_from(l4_total).map_err(|_| DropReason::Malformed)?);
            } else {
                let mut p = Ipv4Packet::new_unchecked(ip);
                p.set_total_len(u16::try_from(ip_total).map_err(|_| DropReason::Malformed)?);
                // `i` < 65536 segments since the frame is < 64 KiB... but wrap anyway.
                p.set_ident(id0.wrapping_add(i as u16));
                p.fill_checksum();
            }
        }
        // L4 header.
        let seg = f.get_mut(lay.l4_off..).ok_or(DropReason::Truncated)?;
        match l4 {
            L4::Tcp => {
                let mut t = TcpPacket::new_unchecked(&mut *seg);
                t.set_seq_number(smoltcp::wire::TcpSeqNumber(
                    seq0.wrapping_add((i * gso_size) as u32) as i32,
                ));
                let raw = seg.get_mut(13).ok_or(DropReason::Truncated)?;
                if !last {
                    *raw &= !(TCP_FIN | TCP_PSH);
                }
                if i != 0 {
                    *raw &= !TCP_CWR;
                }
                let mut t = TcpPacket::new_unchecked(&mut *seg);
                t.fill_checksum(&lay.src, &lay.dst);
            }
            L4::Udp => {
                let mut u = UdpPacket::new_unchecked(&mut *seg);
                u.set_len(u16::try_from(l4_total).map_err(|_| DropReason::Malformed)?);
                u.fill_checksum(&lay.src, &lay.dst);
            }
        }
        out.push(f);
    }
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
    let (hdr, eth) = dg
        .split_at_mut_checked(VNET_HDR_LEN)
        .ok_or(DropReason::Truncated)?;
    check_vnet_hdr(hdr, eth.len()).map_err(|_| DropReason::BadVnetHdr)?;
    let h = VnetHdr::parse(hdr).ok_or(DropReason::Truncated)?;
    match h.gso_type & !VIRTIO_NET_HDR_GSO_ECN {
        VIRTIO_NET_HDR_GSO_NONE => {
            if h.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0
                && tcp_offsets(eth.get(ETH_HDR_LEN..).unwrap_or_default()).is_none()
            {
                complete_partial_csum(eth, h)?;
            }
            Ok(true)
        }
        VIRTIO_NET_HDR_GSO_TCPV4 | VIRTIO_NET_HDR_GSO_TCPV6 => {
            let lay = layout(eth, L4::Tcp)?;
            let frame_len = eth.len();
            let ip = eth.get_mut(lay.ip_off..).ok_or(DropReason::Truncated)?;
            if lay.v6 {
                let len =
                    u16::try_from(frame_len - lay.l4_off).map_err(|_| DropReason::Malformed)?;
                Ipv6Packet::new_unchecked(ip).set_payload_len(len);
            } else {
                let len =
                    u16::try_from(frame_len - lay.ip_off).map_err(|_| DropReason::Malformed)?;
                let mut p = Ipv4Packet::new_unchecked(ip);
                p.set_total_len(len);
                p.fill_checksum();
            }
            Ok(true)
        }
        VIRTIO_NET_HDR_GSO_UDP_L4 => Ok(false),
        _ => Err(DropReason::UnsupportedGso),
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

/// A sandbox's SYN or SYN-ACK on its way into the TCP stack: raise its MSS option to
/// [`BIG_MSS`] and return the sandbox's real MSS.
pub fn raise_syn_mss(ip: &mut [u8]) -> Option<u16> {
    rewrite_syn_mss(ip, |_, _| BIG_MSS)
}

/// A SYN or SYN-ACK of the TCP stack on its way to a sandbox: clamp its MSS option to
/// what fits the network's MTU (`mtu` − IP header − 20).
pub fn clamp_syn_mss(ip: &mut [u8], mtu: usize) {
    rewrite_syn_mss(ip, |v6, old| {
        let fit = mtu.saturating_sub(if v6 { 60 } else { 40 });
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
    let (addrs, proto_len) = if v6 {
        (ip.get(8..40), 6 + l4_len as u32)
    } else {
        (ip.get(12..20), 6 + l4_len as u32)
    };
    let Some(addrs) = addrs else {
        return ZERO_HDR;
    };
    let sum = ones_sum(addrs, (proto_len & 0xffff) + (proto_len >> 16));
    if let Some(c) = ip.get_mut(l4 + 16..l4 + 18) {
        c.copy_from_slice(&sum.to_be_bytes());
    }
    let csum_start = (ETH_HDR_LEN + l4) as u16;
    let mut h = [0u8; VNET_HDR_LEN];
    h[0] = VIRTIO_NET_HDR_F_NEEDS_CSUM;
    if ip.len() > mtu {
        let fit = mtu.saturating_sub(l4 + thl).max(1);
        let gso = usize::from(mss.unwrap_or(u16::MAX)).clamp(1, fit);
        h[1] = if v6 {
            VIRTIO_NET_HDR_GSO_TCPV6
        } else {
            VIRTIO_NET_HDR_GSO_TCPV4
        };
        h[2..4].copy_from_slice(&((ETH_HDR_LEN + l4 + thl) as u16).to_le_bytes());
        h[4..6].copy_from_slice(&(gso as u16).to_le_bytes());
    }
    h[6..8].copy_from_slice(&csum_start.to_le_bytes());
    h[8..10].copy_from_slice(&16u16.to_le_bytes());
    h
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
