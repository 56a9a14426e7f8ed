//! Gathered transmit: a TCP super-frame cut into VXLAN datagrams whose payload is never
//! copied in user space.
//!
//! Contract:
//!
//! * [`TcpCut::new`] takes a frame from the switch (its virtio-net header and Ethernet
//!   frame) and accepts only a TSO super-frame (`GSO_TCPV4`/`GSO_TCPV6`, ECN allowed)
//!   that [`tapnet_wire::gso::Segmenter`] accepts and that becomes more than one
//!   segment; anything else is `None` and goes the copying way (the caller's).
//! * [`TcpCut::write_headers`] writes, for every segment, the VXLAN header and the
//!   segment's Ethernet/IP/TCP headers into one small buffer, [`TcpCut::header_len`]
//!   bytes apart; [`TcpCut::payload`] is segment `i`'s payload, a slice of the frame.
//!   Header `i` followed by payload `i` is, byte for byte, the VXLAN header followed by
//!   the frame `Segmenter::next_into` writes for segment `i`: the same sequence numbers,
//!   IPv4 ids, IP lengths, flags (FIN and PSH on the last segment only, CWR on the
//!   first only) and complete IPv4 header and TCP checksums (the TCP checksum summed
//!   over the header and the payload slice where it lies: read, not copied). The
//!   datagrams are then sent with `sendmsg` iovecs (see
//!   [`crate::udp::Sender::send_gathered`]), so the payload's one copy is the kernel's.
//! * Every datagram but the last is [`TcpCut::stride`] bytes (UDP GSO's layout).
//! * Pure: no I/O, no clock; allocation only to grow the header buffer; nothing panics
//!   on any input (the frame was validated by the segmenter's constructor).

use crate::header::{self, Vni, VXLAN_HDR_LEN};
use tapnet_wire::checksum;
use tapnet_wire::gso::{Headers, Segmenter, L4};
use tapnet_wire::vnet::{GsoType, VnetHdr};

const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_CWR: u8 = 0x80;

/// A TSO super-frame to be sent as gathered VXLAN datagrams (see the module docs).
#[derive(Clone, Copy, Debug)]
pub struct TcpCut<'a> {
    frame: &'a [u8],
    h: Headers,
    mss: usize,
    count: usize,
    seq0: u32,
    id0: u16,
}

fn be16(b: &[u8], at: usize) -> u16 {
    b.get(at..at + 2)
        .and_then(|s| s.first_chunk::<2>())
        .map_or(0, |s| u16::from_be_bytes(*s))
}

fn be32(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .and_then(|s| s.first_chunk::<4>())
        .map_or(0, |s| u32::from_be_bytes(*s))
}

fn set(b: &mut [u8], at: usize, v: &[u8]) {
    if let Some(d) = b.get_mut(at..at + v.len()) {
        d.copy_from_slice(v);
    }
}

impl<'a> TcpCut<'a> {
    /// The cut of `frame` (the Ethernet frame `hdr` describes), or `None` if it is not a
    /// TSO super-frame of more than one segment that the segmenter accepts.
    pub fn new<T: AsRef<[u8]>>(hdr: &VnetHdr<T>, frame: &'a [u8]) -> Option<TcpCut<'a>> {
        if !matches!(hdr.gso_type(), Some(GsoType::TcpV4 | GsoType::TcpV6)) {
            return None;
        }
        // The segmenter's constructor is the validation (lengths fit their fields...).
        let seg = Segmenter::with_header(hdr, frame).ok()?;
        if seg.len() < 2 {
            return None;
        }
        let h = Headers::parse(frame, L4::Tcp).ok()?;
        let mss = usize::from(hdr.gso_size());
        if mss == 0 || frame.len() <= h.payload_off {
            return None;
        }
        Some(TcpCut {
            frame,
            h,
            mss,
            count: seg.len(),
            seq0: be32(frame, h.l4_off + 4),
            id0: if h.ipv6 { 0 } else { be16(frame, h.ip_off + 4) },
        })
    }

    /// Segments (datagrams).
    pub fn len(&self) -> usize {
        self.count
    }

    /// Never true: a cut has at least two segments.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Bytes of one segment's headers, VXLAN header included.
    pub fn header_len(&self) -> usize {
        VXLAN_HDR_LEN + self.h.payload_off
    }

    /// Bytes of every datagram but the last.
    pub fn stride(&self) -> usize {
        self.header_len() + self.mss
    }

    /// Payload bytes of every segment but the last (the GSO size).
    pub fn mss(&self) -> usize {
        self.mss
    }

    /// Whether the last segment is full too (a payload that is a multiple of the MSS,
    /// as TCP's TSO frames are but for the end of a burst): then the next frame's
    /// datagrams may follow it in the same UDP GSO send.
    pub fn ends_full(&self) -> bool {
        (self.frame.len() - self.h.payload_off).is_multiple_of(self.mss)
    }

    /// Segment `i`'s payload, where it lies in the frame.
    pub fn payload(&self, i: usize) -> &'a [u8] {
        let start = self.h.payload_off + i * self.mss;
        let end = (start + self.mss).min(self.frame.len());
        self.frame.get(start..end).unwrap_or_default()
    }

    /// The destination MAC's bytes (for the VTEP lookup).
    pub fn dst_mac(&self) -> Option<[u8; 6]> {
        self.frame.first_chunk::<6>().copied()
    }

    /// Write every segment's headers (VXLAN header for `vni`, then Ethernet, IP and
    /// TCP, lengths, ids and checksums filled in) into `out` from offset `at`,
    /// `header_len()` bytes apart, growing it as needed. Returns where they end.
    pub fn write_headers(&self, vni: Vni, out: &mut Vec<u8>, at: usize) -> usize {
        let hl = self.header_len();
        let end = at + hl * self.count;
        if out.len() < end {
            out.resize(end, 0);
        }
        let h = self.h;
        let template = self.frame.get(..h.payload_off).unwrap_or_default();
        let addrs = if h.ipv6 {
            self.frame.get(h.ip_off + 8..h.ip_off + 40)
        } else {
            self.frame.get(h.ip_off + 12..h.ip_off + 20)
        }
        .unwrap_or_default();
        let region = out.get_mut(at..end).unwrap_or_default();
        for (i, seg) in region.chunks_exact_mut(hl).enumerate() {
            let _ = header::emit_header(vni, seg);
            let Some(f) = seg.get_mut(VXLAN_HDR_LEN..) else {
                continue;
            };
            f.copy_from_slice(template);
            let payload = self.payload(i);
            let l4_len = h.l4_hdr_len() + payload.len();
            // Lengths were checked to fit 16 bits by the segmenter's constructor.
            if h.ipv6 {
                set(f, h.ip_off + 4, &(l4_len as u16).to_be_bytes());
            } else {
                let total = (h.ip_hdr_len() + l4_len) as u16;
                set(f, h.ip_off + 2, &total.to_be_bytes());
                set(
                    f,
                    h.ip_off + 4,
                    &self.id0.wrapping_add(i as u16).to_be_bytes(),
                );
                if let Some(ip) = f.get_mut(h.ip_off..h.l4_off) {
                    let _ = checksum::fill_ipv4_header(ip);
                }
            }
            let last = i + 1 == self.count;
            let seq = self.seq0.wrapping_add((i * self.mss) as u32);
            set(f, h.l4_off + 4, &seq.to_be_bytes());
            if let Some(flags) = f.get_mut(h.l4_off + 13) {
                if !last {
                    *flags &= !(TCP_FIN | TCP_PSH);
                }
                if i != 0 {
                    *flags &= !TCP_CWR;
                }
            }
            set(f, h.l4_off + 16, &[0, 0]);
            let tcp = f.get(h.l4_off..).unwrap_or_default();
            let c = checksum::pseudo_raw(addrs, tapnet_wire::IPPROTO_TCP, l4_len as u32)
                .add_bytes(tcp)
                .add_bytes(payload)
                .checksum();
            set(f, h.l4_off + 16, &c.to_be_bytes());
        }
        end
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tapnet_wire::vnet::{self, VnetHdrRepr, VNET_HDR_LEN};

    /// A TSO super-frame (vnet header + frame): IPv4 (with `ip_opts` option bytes) or
    /// IPv6, TCP with timestamps, `payload` bytes in `mss` segments, TCP `flags`.
    fn super_frame(ipv6: bool, ip_opts: usize, payload: usize, mss: u16, flags: u8) -> Vec<u8> {
        let ip_len = if ipv6 { 40 } else { 20 + ip_opts };
        let (gso, ethertype) = if ipv6 {
            (GsoType::TcpV6, [0x86, 0xdd])
        } else {
            (GsoType::TcpV4, [0x08, 0x00])
        };
        let mut f = VnetHdrRepr::partial_csum((14 + ip_len) as u16, 16)
            .with_gso(gso, (14 + ip_len + 32) as u16, mss)
            .to_bytes()
            .to_vec();
        f.extend_from_slice(&[2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1]);
        f.extend_from_slice(&ethertype);
        if ipv6 {
            f.extend_from_slice(&[0x60, 0, 0, 0, 0, 0, 6, 64]);
            f.extend((0..32).map(|i| i as u8));
        } else {
            f.extend_from_slice(&[0x40 | (ip_len / 4) as u8, 0, 0, 0, 0x12, 0x34, 0x40, 0]);
            f.extend_from_slice(&[64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2]);
            f.extend(std::iter::repeat_n(1u8, ip_opts)); // NOPs
        }
        f.extend_from_slice(&[0x30, 0x39, 0x00, 0x50, 0xff, 0xff, 0xff, 0x00]);
        f.extend_from_slice(&[0, 0, 0, 7, 0x80, flags, 0xff, 0xff, 0, 0, 0, 0]);
        f.extend_from_slice(&[1, 1, 8, 10, 0, 0, 0, 5, 0, 0, 0, 6]);
        f.extend((0..payload).map(|i| (i * 7 + i / 251) as u8));
        f
    }

    /// Header `i` + payload `i` for every segment, as the bytes sent.
    fn gathered(sf: &[u8], vni: Vni) -> Option<(Vec<Vec<u8>>, usize)> {
        let (hdr, eth) = vnet::split(sf).ok()?;
        let cut = TcpCut::new(&hdr, eth)?;
        // Written after 5 bytes of something else: offsets are honoured.
        let mut hb = vec![0xee; 5];
        assert_eq!(
            cut.write_headers(vni, &mut hb, 5),
            5 + cut.len() * cut.header_len()
        );
        assert_eq!(hb[..5], [0xee; 5]);
        let hb = hb.split_off(5);
        assert_eq!(cut.ends_full(), (payload_of(sf)).is_multiple_of(cut.mss()));
        let hl = cut.header_len();
        let out = (0..cut.len())
            .map(|i| {
                let mut d = hb[i * hl..(i + 1) * hl].to_vec();
                d.extend_from_slice(cut.payload(i));
                d
            })
            .collect();
        Some((out, cut.stride()))
    }

    fn payload_of(sf: &[u8]) -> usize {
        let (_, eth) = vnet::split(sf).unwrap();
        let h = Headers::parse(eth, L4::Tcp).unwrap();
        eth.len() - h.payload_off
    }

    /// The copying way: VXLAN header + `Segmenter::next_into`'s frame.
    fn copied(sf: &[u8], vni: Vni) -> Vec<Vec<u8>> {
        let mut seg = Segmenter::new(sf).unwrap();
        let mut out = Vec::new();
        while let Some(n) = seg.next_len() {
            let mut d = vec![0u8; VXLAN_HDR_LEN + n];
            header::emit_header(vni, &mut d).unwrap();
            seg.next_into(&mut d[VXLAN_HDR_LEN..]).unwrap();
            out.push(d);
        }
        out
    }

    #[test]
    fn gathered_datagrams_equal_the_copied_ones() {
        let vni = Vni::new(4242).unwrap();
        for ipv6 in [false, true] {
            for ip_opts in [0, 8] {
                if ipv6 && ip_opts > 0 {
                    continue;
                }
                for (payload, mss) in [(65_000, 1398), (2796, 1398), (2797, 1398), (7, 3)] {
                    // ACK, ACK|PSH|FIN, CWR|ECE|ACK|PSH.
                    for flags in [0x10, 0x19, 0xd8] {
                        let sf = super_frame(ipv6, ip_opts, payload, mss, flags);
                        let (got, stride) = gathered(&sf, vni).unwrap();
                        let want = copied(&sf, vni);
                        assert_eq!(got.len(), want.len());
                        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                            assert_eq!(g, w, "v6 {ipv6} opts {ip_opts} len {payload} seg {i}");
                            if i + 1 < got.len() {
                                assert_eq!(g.len(), stride);
                            } else {
                                assert!(g.len() <= stride && !g.is_empty());
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn only_multi_segment_tso_frames_are_cut() {
        let vni = Vni::new(1).unwrap();
        // One segment: the copying way.
        assert!(gathered(&super_frame(false, 0, 1000, 1398, 0x10), vni).is_none());
        // Not GSO.
        let mut plain = super_frame(false, 0, 3000, 1000, 0x10);
        plain[..VNET_HDR_LEN].copy_from_slice(&vnet::ZERO_HDR);
        assert!(gathered(&plain, vni).is_none());
        // Malformed: truncated inside the TCP header; a bad IP version.
        let sf = super_frame(false, 0, 3000, 1000, 0x10);
        assert!(gathered(&sf[..VNET_HDR_LEN + 40], vni).is_none());
        let mut bad = sf.clone();
        bad[VNET_HDR_LEN + 14] = 0x75;
        assert!(gathered(&bad, vni).is_none());
        // Any prefix of a super-frame: never a panic.
        for n in 0..200 {
            let _ = gathered(&sf[..n.min(sf.len())], vni);
        }
    }
}
