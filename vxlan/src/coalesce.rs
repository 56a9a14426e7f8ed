//! Receive coalescing: consecutive in-order TCP segments of one flow, as they come out
//! of the tunnel, merged back into one GSO super-frame for the tap (software GRO).
//!
//! Contract:
//!
//! * [`Coalescer::start`] looks at an inner Ethernet frame that has just been copied to
//!   `out[VNET_HDR_LEN..]` behind a virtio-net header: it is a *candidate* only if it is
//!   untagged IPv4 (no options, not a fragment, header checksum good, total length =
//!   the frame's) or IPv6 (next header TCP, payload length = the frame's) carrying a TCP
//!   segment with payload whose flags are ACK alone (PSH, FIN, SYN, RST, URG, ECE and CWR
//!   are never merged: such a segment is passed on as it is).
//! * [`Coalescer::append`] takes the next frame of the same sender and merges its payload
//!   if, and only if, it continues the flow: the same length of headers, every header
//!   byte equal to the first segment's except the IP length, IPv4 id and header
//!   checksum, the TCP sequence number (which must be the next expected), PSH (allowed on
//!   the last merged segment), and the TCP checksum; a payload no longer than the first
//!   segment's; IPv4 header checksum good; and room in `out` and in the 16-bit IP length.
//!   A segment shorter than the first, or with PSH, ends the super-frame. A frame that
//!   does not continue the flow is refused and left to the caller, untouched.
//! * [`Coalescer::finish`] writes the result: with one segment, the frame as it came
//!   (an all-zero virtio-net header: the tap's kernel verifies its checksums); with
//!   more, the IP length (and IPv4 header checksum) of the whole, the TCP checksum field
//!   set to the pseudo-header sum, and a virtio-net header `NEEDS_CSUM` + `GSO_TCPV4`/
//!   `GSO_TCPV6` with `gso_size` = the first segment's payload, so the tap's kernel
//!   takes it as one packet (or re-segments it if it forwards it).
//! * Checksums of merged segments are not verified one by one: each came in a UDP
//!   datagram whose checksum the underlay's kernel verified, from a VTEP the port
//!   accepts (see [`crate::port`]); the merged frame is handed on as checksum-partial,
//!   like a TSO frame from a local tap.
//! * Pure: no I/O, no clock, no allocation; nothing panics on any input.

use tapnet_wire::checksum;
use tapnet_wire::vnet::{GsoType, VnetHdrRepr, VNET_HDR_LEN, ZERO_HDR};

const ETH: usize = tapnet_wire::ETH_HDR_LEN;
const IPV4_HDR: usize = 20;
const IPV6_HDR: usize = 40;
const TCP_ACK: u8 = 0x10;
const TCP_PSH: u8 = 0x08;
/// Most header bytes a merged segment can have (Ethernet + IPv6 + TCP with options).
const MAX_HDRS: usize = ETH + IPV6_HDR + 60;

/// A super-frame being built in the caller's buffer (see the module docs).
#[derive(Debug)]
pub struct Coalescer {
    ipv6: bool,
    /// Offset of the TCP header in the frame.
    tcp: usize,
    /// Length of all headers (Ethernet + IP + TCP).
    hdrs: usize,
    /// Payload bytes of the first segment (the GSO size).
    mss: usize,
    /// Frame bytes in `out` after the virtio-net header.
    len: usize,
    segments: usize,
    next_seq: u32,
    /// Flags of the super-frame (PSH from the last segment).
    flags: u8,
    /// The first segment's headers, the reference every appended one is compared to.
    first: [u8; MAX_HDRS],
    /// No more segments can be merged.
    closed: bool,
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(*b.get(at..)?.first_chunk::<2>()?))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(*b.get(at..)?.first_chunk::<4>()?))
}

/// `(ipv6, tcp offset, header length)` of a frame that may be merged, or `None`.
fn candidate(frame: &[u8]) -> Option<(bool, usize, usize)> {
    let ethertype = be16(frame, 12)?;
    let (ipv6, tcp) = match ethertype {
        0x0800 => {
            let ip = frame.get(ETH..ETH + IPV4_HDR)?;
            // Version 4, no options; not a fragment (MF clear, offset 0); TCP.
            if ip[0] != 0x45 || be16(ip, 6)? & 0x3fff != 0 || ip[9] != 6 {
                return None;
            }
            if usize::from(be16(ip, 2)?) != frame.len() - ETH || !checksum::verify(ip) {
                return None;
            }
            (false, ETH + IPV4_HDR)
        }
        0x86dd => {
            let ip = frame.get(ETH..ETH + IPV6_HDR)?;
            if ip[0] >> 4 != 6 || ip[6] != 6 {
                return None;
            }
            if usize::from(be16(ip, 4)?) != frame.len() - ETH - IPV6_HDR {
                return None;
            }
            (true, ETH + IPV6_HDR)
        }
        _ => return None,
    };
    let th = frame.get(tcp..tcp + 20)?;
    let doff = usize::from(th[12] >> 4) * 4;
    if doff < 20 {
        return None;
    }
    let hdrs = tcp + doff;
    if frame.len() <= hdrs || hdrs > MAX_HDRS {
        return None;
    }
    Some((ipv6, tcp, hdrs))
}

impl Coalescer {
    /// Begin with the frame at `out[VNET_HDR_LEN..VNET_HDR_LEN + len]`. `None` if it is
    /// not a candidate: the caller hands it on as it is.
    pub fn start(out: &[u8], len: usize) -> Option<Coalescer> {
        let frame = out.get(VNET_HDR_LEN..VNET_HDR_LEN + len)?;
        let (ipv6, tcp, hdrs) = candidate(frame)?;
        let flags = *frame.get(tcp + 13)?;
        if flags != TCP_ACK {
            return None;
        }
        let mss = len - hdrs;
        let seq = be32(frame, tcp + 4)?;
        let mut first = [0u8; MAX_HDRS];
        first.get_mut(..hdrs)?.copy_from_slice(frame.get(..hdrs)?);
        Some(Coalescer {
            ipv6,
            tcp,
            hdrs,
            mss,
            len,
            segments: 1,
            next_seq: seq.wrapping_add(u32::try_from(mss).ok()?),
            flags,
            first,
            closed: false,
        })
    }

    /// Whether more segments may still be merged (no short or PSH segment yet, room
    /// left in the 16-bit IP length).
    pub fn is_open(&self) -> bool {
        !self.closed && self.len + self.mss - ETH <= usize::from(u16::MAX)
    }

    /// Segments merged so far.
    pub fn segments(&self) -> usize {
        self.segments
    }

    /// Whether `frame` continues the flow: headers equal to the first's but for the
    /// fields that may differ, the next sequence number, a payload that fits.
    fn continues(&self, frame: &[u8]) -> Option<u8> {
        let hdrs = self.hdrs;
        if frame.len() <= hdrs || frame.len() - hdrs > self.mss {
            return None;
        }
        let (a, b) = (frame.get(..hdrs)?, self.first.get(..hdrs)?);
        let tcp = self.tcp;
        // Ethernet, then the IP header but its variable fields.
        if a.get(..ETH)? != b.get(..ETH)? {
            return None;
        }
        if self.ipv6 {
            // Version/class/flow (0..4), next header and hop limit (6..8), addresses.
            if a.get(ETH..ETH + 4)? != b.get(ETH..ETH + 4)?
                || a.get(ETH + 6..tcp)? != b.get(ETH + 6..tcp)?
                || usize::from(be16(a, ETH + 4)?) != frame.len() - ETH - IPV6_HDR
            {
                return None;
            }
        } else {
            // Version..TOS (0..2), flags/offset..protocol (6..10), addresses (12..20).
            if a.get(ETH..ETH + 2)? != b.get(ETH..ETH + 2)?
                || a.get(ETH + 6..ETH + 10)? != b.get(ETH + 6..ETH + 10)?
                || a.get(ETH + 12..tcp)? != b.get(ETH + 12..tcp)?
                || usize::from(be16(a, ETH + 2)?) != frame.len() - ETH
                || !checksum::verify(a.get(ETH..tcp)?)
            {
                return None;
            }
        }
        // TCP: ports (0..4), ack..data offset (8..13), window (14..16), options (20..).
        if a.get(tcp..tcp + 4)? != b.get(tcp..tcp + 4)?
            || be32(a, tcp + 4)? != self.next_seq
            || a.get(tcp + 8..tcp + 13)? != b.get(tcp + 8..tcp + 13)?
            || a.get(tcp + 14..tcp + 16)? != b.get(tcp + 14..tcp + 16)?
            || a.get(tcp + 18..)? != b.get(tcp + 18..)?
        {
            return None;
        }
        let flags = *a.get(tcp + 13)?;
        (flags == TCP_ACK || flags == TCP_ACK | TCP_PSH).then_some(flags)
    }

    /// Merge `frame` (the next datagram's inner frame) into `out` if it continues the
    /// flow; false (nothing changed) if it does not, or if the super-frame is closed.
    pub fn append(&mut self, out: &mut [u8], frame: &[u8]) -> bool {
        if self.closed {
            return false;
        }
        let Some(flags) = self.continues(frame) else {
            return false;
        };
        let payload = frame.get(self.hdrs..).unwrap_or_default();
        let ip_len = self.len + payload.len() - ETH;
        if ip_len > usize::from(u16::MAX) {
            self.closed = true;
            return false;
        }
        let at = VNET_HDR_LEN + self.len;
        let Some(dst) = out.get_mut(at..at + payload.len()) else {
            self.closed = true;
            return false;
        };
        dst.copy_from_slice(payload);
        self.len += payload.len();
        self.segments += 1;
        self.next_seq = self
            .next_seq
            .wrapping_add(u32::try_from(payload.len()).unwrap_or(0));
        self.flags = flags;
        if payload.len() < self.mss || flags & TCP_PSH != 0 {
            self.closed = true;
        }
        true
    }

    /// Write the virtio-net header (and, for a merged frame, the IP length and TCP
    /// checksum fields) into `out`; the length of what is there (header + frame).
    pub fn finish(self, out: &mut [u8]) -> usize {
        let total = VNET_HDR_LEN + self.len;
        if self.segments < 2 {
            if let Some(h) = out.get_mut(..VNET_HDR_LEN) {
                h.copy_from_slice(&ZERO_HDR);
            }
            return total;
        }
        let Some(frame) = out.get_mut(VNET_HDR_LEN..total) else {
            return total;
        };
        let tcp = self.tcp;
        let tcp_len = self.len - tcp;
        let mut pseudo = checksum::Sum::new();
        if self.ipv6 {
            let pl = u16::try_from(self.len - ETH - IPV6_HDR).unwrap_or(u16::MAX);
            if let Some(f) = frame.get_mut(ETH + 4..ETH + 6) {
                f.copy_from_slice(&pl.to_be_bytes());
            }
            if let Some(addrs) = frame.get(ETH + 8..ETH + 40) {
                pseudo = checksum::pseudo_raw(addrs, 6, tcp_len as u32);
            }
        } else {
            let tl = u16::try_from(self.len - ETH).unwrap_or(u16::MAX);
            if let Some(f) = frame.get_mut(ETH + 2..ETH + 4) {
                f.copy_from_slice(&tl.to_be_bytes());
            }
            if let Some(ip) = frame.get_mut(ETH..ETH + IPV4_HDR) {
                let _ = checksum::fill_ipv4_header(ip);
            }
            if let Some(addrs) = frame.get(ETH + 12..ETH + 20) {
                pseudo = checksum::pseudo_raw(addrs, 6, tcp_len as u32);
            }
        }
        if let Some(f) = frame.get_mut(tcp + 13) {
            *f = self.flags;
        }
        if let Some(f) = frame.get_mut(tcp + 16..tcp + 18) {
            f.copy_from_slice(&pseudo.fold().to_be_bytes());
        }
        let gso = if self.ipv6 {
            GsoType::TcpV6
        } else {
            GsoType::TcpV4
        };
        let hdr = VnetHdrRepr::partial_csum(tcp as u16, 16).with_gso(
            gso,
            self.hdrs as u16,
            u16::try_from(self.mss).unwrap_or(u16::MAX),
        );
        if let Some(h) = out.get_mut(..VNET_HDR_LEN) {
            h.copy_from_slice(&hdr.to_bytes());
        }
        total
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tapnet_wire::gso::segment_to_vecs;

    /// A TSO4 super-frame (vnet header + frame) with `payload` bytes in `mss` segments.
    fn super_v4(payload: usize, mss: u16, psh: bool) -> Vec<u8> {
        let mut f = VnetHdrRepr::partial_csum(34, 16)
            .with_gso(GsoType::TcpV4, 54 + 12, mss)
            .to_bytes()
            .to_vec();
        f.extend_from_slice(&[2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00]);
        let total = (20 + 32 + payload) as u16;
        f.extend_from_slice(&[0x45, 0]);
        f.extend_from_slice(&total.to_be_bytes());
        f.extend_from_slice(&[0, 1, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2]);
        f.extend_from_slice(&[0x30, 0x39, 0x00, 0x50, 0, 0, 0, 1, 0, 0, 0, 7, 0x80]);
        f.push(if psh { 0x18 } else { 0x10 });
        f.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0]);
        f.extend_from_slice(&[1, 1, 8, 10, 0, 0, 0, 5, 0, 0, 0, 6]);
        for i in 0..payload {
            f.push(i as u8);
        }
        f
    }

    fn merge(segs: &[Vec<u8>]) -> (Vec<u8>, usize) {
        let mut out = vec![0u8; 70_000];
        out[VNET_HDR_LEN..VNET_HDR_LEN + segs[0].len()].copy_from_slice(&segs[0]);
        let mut c = Coalescer::start(&out, segs[0].len()).expect("a candidate");
        let mut taken = 1;
        for s in &segs[1..] {
            if !c.append(&mut out, s) {
                break;
            }
            taken += 1;
        }
        let n = c.finish(&mut out);
        out.truncate(n);
        (out, taken)
    }

    #[test]
    fn segments_merge_back_into_the_super_frame() {
        let sf = super_v4(5000, 1000, true);
        let mut segs = Vec::new();
        segment_to_vecs(&sf, &mut segs).unwrap();
        assert_eq!(segs.len(), 5);
        let (out, taken) = merge(&segs);
        assert_eq!(taken, 5);
        let hdr = VnetHdrRepr::parse(&tapnet_wire::vnet::VnetHdr::new_checked(&out[..]).unwrap());
        assert_eq!(hdr.gso(), Some(GsoType::TcpV4));
        assert_eq!((hdr.gso_size, hdr.hdr_len), (1000, 66));
        assert!(hdr.needs_csum());
        assert_eq!((hdr.csum_start, hdr.csum_offset), (34, 16));
        // Same bytes as the original super-frame but the checksums; PSH from the last.
        let (a, b) = (&out[VNET_HDR_LEN..], &sf[VNET_HDR_LEN..]);
        assert_eq!(a.len(), b.len());
        assert_eq!(a[66..], b[66..], "payload");
        assert_eq!(a[..24], b[..24]);
        assert_eq!(a[26..50], b[26..50]);
        assert!(checksum::verify(&a[14..34]));
        // Segmenting the merged frame again gives the same segments.
        let mut again = Vec::new();
        segment_to_vecs(&out, &mut again).unwrap();
        assert_eq!(
            again.iter().map(|s| s[14..].to_vec()).collect::<Vec<_>>(),
            segs.iter().map(|s| s[14..].to_vec()).collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_gap_or_a_changed_header_stops_the_merge() {
        let sf = super_v4(4000, 1000, false);
        let mut segs = Vec::new();
        segment_to_vecs(&sf, &mut segs).unwrap();
        // Segment 2 missing: 0 and 1 merge, 3 does not.
        let (_, taken) = merge(&[segs[0].clone(), segs[1].clone(), segs[3].clone()]);
        assert_eq!(taken, 2);
        // A different ack number.
        let mut other = segs[1].clone();
        other[14 + 20 + 11] ^= 1;
        let (out, taken) = merge(&[segs[0].clone(), other]);
        assert_eq!(taken, 1);
        assert_eq!(
            out[..VNET_HDR_LEN],
            ZERO_HDR,
            "one segment goes out as it came"
        );
        assert_eq!(out[VNET_HDR_LEN..], segs[0][..]);
        // A bad IPv4 header checksum.
        let mut bad = segs[1].clone();
        bad[14 + 8] ^= 1;
        assert_eq!(merge(&[segs[0].clone(), bad]).1, 1);
        // A longer payload than the first segment's.
        let long = super_v4(3000, 2000, false);
        let mut l = Vec::new();
        segment_to_vecs(&long, &mut l).unwrap();
        assert_eq!(merge(&[segs[0].clone(), l[0].clone()]).1, 1);
    }

    #[test]
    fn only_plain_ack_segments_start_a_merge() {
        let sf = super_v4(1000, 1000, true);
        let mut segs = Vec::new();
        segment_to_vecs(&sf, &mut segs).unwrap();
        let mut out = vec![0u8; 4096];
        out[VNET_HDR_LEN..VNET_HDR_LEN + segs[0].len()].copy_from_slice(&segs[0]);
        assert!(Coalescer::start(&out, segs[0].len()).is_none(), "PSH");
        for junk in [&[][..], &[0u8; 13][..], &[0xffu8; 80][..]] {
            let mut out = vec![0u8; 200];
            out[VNET_HDR_LEN..VNET_HDR_LEN + junk.len()].copy_from_slice(junk);
            assert!(Coalescer::start(&out, junk.len()).is_none());
        }
    }
}
