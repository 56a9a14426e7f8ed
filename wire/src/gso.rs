//! Software GSO: cut a super-frame described by a virtio-net header into wire-size
//! frames, every checksum complete (software TSO4/TSO6, USO and UFO).
//!
//! Contract:
//!
//! * A [`Segmenter`] is built from a virtio-net header and the Ethernet frame after it
//!   ([`Segmenter::new`] takes the whole port datagram). Construction validates
//!   everything: the header ([`crate::vnet::VnetHdr::check`]), the Ethernet, IP and L4
//!   headers ([`Headers::parse`]) and that every segment's lengths fit their fields.
//!   Afterwards [`Segmenter::next_into`] can only fail on a too-small output buffer.
//! * The segmenter is polled until empty, boringtun-style: each call writes the next
//!   frame into the caller's buffer and returns its length; no allocation
//!   ([`segment_to_vecs`] is the allocating convenience).
//! * `GSO_NONE`: one frame, a copy of the input, its `NEEDS_CSUM` checksum completed
//!   ([`crate::checksum::complete_partial`]).
//! * `GSO_TCPV4`/`GSO_TCPV6` (ECN bit allowed): segments of `gso_size` payload bytes;
//!   sequence numbers advance by the payload, FIN and PSH stay on the last segment only,
//!   CWR on the first only; IPv4 ids count up from the super-frame's; IP lengths, the IPv4
//!   header checksum and the TCP checksum are computed for each segment.
//! * `GSO_UDP_L4` (USO): UDP datagrams of `gso_size` payload bytes each, with the UDP
//!   header copied, its length and checksum (zero sent as `0xffff`) computed per datagram;
//!   IPv4 ids count up.
//! * `GSO_UDP` (UFO): one UDP datagram sent as IP fragments of `gso_size` bytes (rounded
//!   down to a multiple of 8) of IP payload; the UDP checksum is computed over the whole
//!   datagram first. IPv4 fragments share the super-frame's id (DF cleared); IPv6
//!   fragments get a Fragment header whose identification is
//!   [`Segmenter::set_frag_id`]'s (by default derived from the datagram).
//! * Supported frames: untagged Ethernet, IPv4 (options allowed, not a fragment) or IPv6
//!   with the TCP/UDP header right after the fixed header (no extension headers); the
//!   ethertype decides the IP version, the GSO type only TCP versus UDP. The checksum a
//!   super-frame carries is ignored and recomputed. Anything else is an [`Error`]; malformed
//!   input never panics (**no panic after the length checks**).

use crate::checksum;
use crate::vnet::{self, GsoType, VnetHdr};
use crate::{ETHERTYPE_IPV4, ETHERTYPE_IPV6, ETH_HDR_LEN, IPPROTO_TCP, IPPROTO_UDP};
use std::fmt;

/// Why a frame cannot be segmented.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// Shorter than an Ethernet header, or a header cut short before its length is known.
    Truncated,
    /// The virtio-net header is inconsistent.
    BadVnetHdr(vnet::Error),
    /// An IP or L4 header is malformed, or a segment would not fit its length fields.
    Malformed,
    /// A layout this module does not segment: not IPv4/IPv6, an L4 protocol other than
    /// the GSO type's, an IPv4 fragment, IPv6 extension headers.
    Unsupported,
    /// The output buffer is shorter than the next frame (which needs this many bytes).
    BufferTooSmall(usize),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Truncated => f.write_str("frame truncated"),
            Error::BadVnetHdr(e) => write!(f, "{e}"),
            Error::Malformed => f.write_str("malformed IP or L4 header"),
            Error::Unsupported => f.write_str("frame layout not supported for segmentation"),
            Error::BufferTooSmall(n) => write!(f, "output buffer shorter than {n} bytes"),
        }
    }
}

impl std::error::Error for Error {}

impl From<vnet::Error> for Error {
    fn from(e: vnet::Error) -> Error {
        match e {
            vnet::Error::Truncated => Error::Truncated,
            e => Error::BadVnetHdr(e),
        }
    }
}

/// The transport protocol of a super-frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum L4 {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

/// Where the headers of an untagged Ethernet + IPv4/IPv6 + TCP/UDP frame lie.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Headers {
    /// IPv6 (else IPv4).
    pub ipv6: bool,
    /// The transport protocol.
    pub l4: L4,
    /// Offset of the IP header (the Ethernet header's length).
    pub ip_off: usize,
    /// Offset of the TCP/UDP header.
    pub l4_off: usize,
    /// Offset of the L4 payload (end of all headers).
    pub payload_off: usize,
}

impl Headers {
    /// Find the headers of `frame` (an Ethernet frame) carrying `l4`. The IP length fields
    /// are not trusted (a super-frame's may be stale or zero): only the header lengths are
    /// checked against the frame.
    pub fn parse(frame: &[u8], l4: L4) -> Result<Headers, Error> {
        let eth = frame.first_chunk::<ETH_HDR_LEN>().ok_or(Error::Truncated)?;
        let ip_off = ETH_HDR_LEN;
        let ip = frame.get(ip_off..).unwrap_or_default();
        let want = match l4 {
            L4::Tcp => IPPROTO_TCP,
            L4::Udp => IPPROTO_UDP,
        };
        let (ipv6, ip_hlen) = match u16::from_be_bytes([eth[12], eth[13]]) {
            ETHERTYPE_IPV4 => {
                let h = ip.first_chunk::<20>().ok_or(Error::Malformed)?;
                let ihl = usize::from(h[0] & 0x0f) * 4;
                if h[0] >> 4 != 4 || ihl < 20 || ip.len() < ihl {
                    return Err(Error::Malformed);
                }
                let frag = u16::from_be_bytes([h[6], h[7]]);
                // More-fragments bit or a fragment offset: already a fragment.
                if h[9] != want || frag & 0x3fff != 0 {
                    return Err(Error::Unsupported);
                }
                (false, ihl)
            }
            ETHERTYPE_IPV6 => {
                let h = ip.first_chunk::<40>().ok_or(Error::Malformed)?;
                if h[0] >> 4 != 6 {
                    return Err(Error::Malformed);
                }
                // Extension headers in front of the L4 header are not segmented.
                if h[6] != want {
                    return Err(Error::Unsupported);
                }
                (true, 40)
            }
            _ => return Err(Error::Unsupported),
        };
        let l4_off = ip_off + ip_hlen;
        let l4_hdr = frame.get(l4_off..).ok_or(Error::Truncated)?;
        let (l4_hlen, min) = match l4 {
            L4::Tcp => {
                let doff = *l4_hdr.get(12).ok_or(Error::Truncated)?;
                (usize::from(doff >> 4) * 4, 20)
            }
            L4::Udp => (8, 8),
        };
        if l4_hlen < min || l4_hdr.len() < l4_hlen {
            return Err(Error::Malformed);
        }
        Ok(Headers {
            ipv6,
            l4,
            ip_off,
            l4_off,
            payload_off: l4_off + l4_hlen,
        })
    }

    /// Length of the IP header.
    pub fn ip_hdr_len(&self) -> usize {
        self.l4_off - self.ip_off
    }

    /// Length of the TCP/UDP header.
    pub fn l4_hdr_len(&self) -> usize {
        self.payload_off - self.l4_off
    }

    /// The source and destination address bytes of `frame` (4 + 4 or 16 + 16), as the
    /// pseudo-header takes them.
    fn addrs<'f>(&self, frame: &'f [u8]) -> &'f [u8] {
        let r = if self.ipv6 { 8..40 } else { 12..20 };
        frame
            .get(self.ip_off + r.start..self.ip_off + r.end)
            .unwrap_or_default()
    }

    /// Whether the IP length field already describes `frame` whole (what
    /// [`Headers::set_ip_len`] would write). `frame` must be the one parsed.
    pub fn ip_len_matches(&self, frame: &[u8]) -> bool {
        let len = frame.len();
        let Some(ip) = frame.get(self.ip_off..) else {
            return false;
        };
        let (at, want) = if self.ipv6 {
            (4, len.checked_sub(self.l4_off))
        } else {
            (2, len.checked_sub(self.ip_off))
        };
        match (ip.get(at..at + 2), want) {
            (Some(b), Some(w)) => usize::from(u16::from_be_bytes([b[0], b[1]])) == w,
            _ => false,
        }
    }

    /// Make the IP length field describe `frame` whole (IPv4 total length, refilling the
    /// header checksum; IPv6 payload length). `frame` must be the one parsed.
    pub fn set_ip_len(&self, frame: &mut [u8]) -> Result<(), Error> {
        let len = frame.len();
        let ip = frame.get_mut(self.ip_off..).ok_or(Error::Truncated)?;
        if self.ipv6 {
            let v = u16::try_from(len - self.l4_off).map_err(|_| Error::Malformed)?;
            set_be16(ip, 4, v);
        } else {
            let v = u16::try_from(len - self.ip_off).map_err(|_| Error::Malformed)?;
            set_be16(ip, 2, v);
            checksum::fill_ipv4_header(ip).map_err(|_| Error::Malformed)?;
        }
        Ok(())
    }
}

/// Store a big-endian u16 at `at` if it fits (callers have checked that it does).
#[inline(always)]
fn set_be16(b: &mut [u8], at: usize, v: u16) {
    if let Some(f) = b.get_mut(at..at + 2) {
        f.copy_from_slice(&v.to_be_bytes());
    }
}

/// Store a big-endian u32 at `at` if it fits.
#[inline(always)]
fn set_be32(b: &mut [u8], at: usize, v: u32) {
    if let Some(f) = b.get_mut(at..at + 4) {
        f.copy_from_slice(&v.to_be_bytes());
    }
}

#[inline(always)]
fn be16(b: &[u8], at: usize) -> u16 {
    b.get(at..at + 2)
        .and_then(|s| s.first_chunk::<2>())
        .map_or(0, |s| u16::from_be_bytes(*s))
}

#[inline(always)]
fn be32(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .and_then(|s| s.first_chunk::<4>())
        .map_or(0, |s| u32::from_be_bytes(*s))
}

/// TCP flags that belong to the last segment only (FIN, PSH) and the first only (CWR).
const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_CWR: u8 = 0x80;
/// IPv4 more-fragments flag (in the flags/offset word).
const IPV4_MF: u16 = 0x2000;
/// IPv6 Fragment header: next-header value and length.
const IPV6_FRAG: u8 = 44;
const IPV6_FRAG_LEN: usize = 8;

#[derive(Clone, Copy, Debug)]
enum Mode {
    /// Not a super-frame: one copy, with the partial checksum at (start, offset) completed.
    Whole(Option<(usize, usize)>),
    /// TSO.
    Tcp,
    /// USO.
    UdpL4,
    /// UFO: the UDP length and checksum of the whole datagram.
    Ufo { udp_len: u16, udp_csum: u16 },
}

/// Cuts one super-frame into wire frames, written one at a time into caller buffers.
#[derive(Clone, Debug)]
pub struct Segmenter<'a> {
    frame: &'a [u8],
    mode: Mode,
    hdrs: Headers,
    /// Bytes of payload per segment (UFO: of IP payload per fragment).
    mss: usize,
    count: usize,
    next: usize,
    seq0: u32,
    id0: u16,
    frag_id: u32,
}

impl<'a> Segmenter<'a> {
    /// A segmenter for one port datagram: a virtio-net header, then the Ethernet frame.
    pub fn new(datagram: &'a [u8]) -> Result<Segmenter<'a>, Error> {
        let (hdr, frame) = vnet::split(datagram)?;
        Segmenter::with_header(&hdr, frame)
    }

    /// A segmenter for `frame`, described by `hdr`.
    pub fn with_header<T: AsRef<[u8]>>(
        hdr: &VnetHdr<T>,
        frame: &'a [u8],
    ) -> Result<Segmenter<'a>, Error> {
        hdr.check(frame.len())?;
        let gso = hdr
            .gso_type()
            .ok_or(Error::BadVnetHdr(vnet::Error::UnknownGsoType(
                hdr.gso_type_raw(),
            )))?;
        let gso_size = usize::from(hdr.gso_size());
        let mut s = Segmenter {
            frame,
            mode: Mode::Whole(None),
            hdrs: Headers {
                ipv6: false,
                l4: L4::Tcp,
                ip_off: 0,
                l4_off: 0,
                payload_off: 0,
            },
            mss: 0,
            count: 1,
            next: 0,
            seq0: 0,
            id0: 0,
            frag_id: 0,
        };
        let (l4, mode) = match gso {
            GsoType::None => {
                if hdr.needs_csum() {
                    let at = (
                        usize::from(hdr.csum_start()),
                        usize::from(hdr.csum_offset()),
                    );
                    s.mode = Mode::Whole(Some(at));
                }
                return Ok(s);
            }
            GsoType::TcpV4 | GsoType::TcpV6 => (L4::Tcp, Mode::Tcp),
            GsoType::UdpL4 => (L4::Udp, Mode::UdpL4),
            GsoType::Udp => (
                L4::Udp,
                Mode::Ufo {
                    udp_len: 0,
                    udp_csum: 0,
                },
            ),
        };
        let h = Headers::parse(frame, l4)?;
        s.hdrs = h;
        s.id0 = if h.ipv6 { 0 } else { be16(frame, h.ip_off + 4) };
        s.seq0 = be32(frame, h.l4_off + 4);
        let too_long = |n: usize| {
            if n > 0xffff {
                Err(Error::Malformed)
            } else {
                Ok(())
            }
        };
        match mode {
            Mode::Tcp | Mode::UdpL4 => {
                let payload = frame.len() - h.payload_off;
                s.mss = gso_size;
                s.count = payload.div_ceil(gso_size).max(1);
                s.mode = mode;
                // The largest segment's IP length must fit its field.
                let largest = h.l4_hdr_len() + payload.min(gso_size);
                too_long(largest + if h.ipv6 { 0 } else { h.ip_hdr_len() })?;
            }
            Mode::Ufo { .. } => {
                let udp_len = frame.len() - h.l4_off;
                too_long(udp_len)?;
                // Fragment data (all but the last) is a multiple of 8 bytes.
                s.mss = gso_size & !7;
                if s.mss == 0 {
                    return Err(Error::BadVnetHdr(vnet::Error::ZeroGsoSize));
                }
                s.count = udp_len.div_ceil(s.mss).max(1);
                let largest = udp_len.min(s.mss);
                too_long(
                    largest
                        + if h.ipv6 {
                            IPV6_FRAG_LEN
                        } else {
                            h.ip_hdr_len()
                        },
                )?;
                let udp = frame.get(h.l4_off..).unwrap_or_default();
                // udp_len <= 0xffff was checked above.
                let len16 = udp_len as u16;
                let sum = checksum::pseudo_raw(h.addrs(frame), IPPROTO_UDP, u32::from(len16))
                    .add_bytes(udp.get(..4).unwrap_or_default())
                    .add_u16(len16)
                    .add_bytes(udp.get(8..).unwrap_or_default());
                let udp_csum = match sum.checksum() {
                    0 => 0xffff,
                    c => c,
                };
                s.mode = Mode::Ufo {
                    udp_len: len16,
                    udp_csum,
                };
                s.frag_id = default_frag_id(h.addrs(frame), udp, udp_csum);
            }
            Mode::Whole(_) => {}
        }
        Ok(s)
    }

    /// Use `id` as the identification of the IPv6 Fragment headers (UFO over IPv6).
    pub fn set_frag_id(&mut self, id: u32) {
        self.frag_id = id;
    }

    /// Number of frames this super-frame becomes.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Never true: even an empty payload gives one frame.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Frames not yet written.
    pub fn remaining(&self) -> usize {
        self.count - self.next
    }

    /// The length of the next frame, `None` when done.
    pub fn next_len(&self) -> Option<usize> {
        if self.next >= self.count {
            return None;
        }
        Some(self.len_of(self.next))
    }

    /// A buffer of this many bytes holds any of the frames.
    pub fn max_frame_len(&self) -> usize {
        self.len_of(0)
    }

    /// Where the `i`th frame's payload lies in the input (`Whole`: the frame itself).
    fn chunk(&self, i: usize) -> (usize, usize) {
        let base = match self.mode {
            Mode::Whole(_) => return (0, self.frame.len()),
            Mode::Tcp | Mode::UdpL4 => self.hdrs.payload_off,
            Mode::Ufo { .. } => self.hdrs.l4_off,
        };
        let start = base + i * self.mss;
        (start, (start + self.mss).min(self.frame.len()))
    }

    fn len_of(&self, i: usize) -> usize {
        let (start, end) = self.chunk(i);
        let chunk = end.saturating_sub(start);
        match self.mode {
            Mode::Whole(_) => chunk,
            Mode::Tcp | Mode::UdpL4 => self.hdrs.payload_off + chunk,
            Mode::Ufo { .. } if self.hdrs.ipv6 => self.hdrs.l4_off + IPV6_FRAG_LEN + chunk,
            Mode::Ufo { .. } => self.hdrs.l4_off + chunk,
        }
    }

    /// Write the next frame into `out`; its length, or `None` when every frame has been
    /// written. On [`Error::BufferTooSmall`] nothing is consumed: retry with a bigger one.
    pub fn next_into(&mut self, out: &mut [u8]) -> Result<Option<usize>, Error> {
        let i = self.next;
        if i >= self.count {
            return Ok(None);
        }
        let n = self.len_of(i);
        let out = out.get_mut(..n).ok_or(Error::BufferTooSmall(n))?;
        let (start, end) = self.chunk(i);
        let chunk = self.frame.get(start..end).unwrap_or_default();
        let last = i + 1 == self.count;
        match self.mode {
            Mode::Whole(partial) => {
                out.copy_from_slice(chunk);
                if let Some((start, offset)) = partial {
                    checksum::complete_partial(out, start, offset)
                        .map_err(|_| Error::BadVnetHdr(vnet::Error::CsumOutOfBounds))?;
                }
            }
            Mode::Tcp | Mode::UdpL4 => self.write_segment(out, chunk, i, last),
            Mode::Ufo { udp_len, udp_csum } => {
                self.write_fragment(out, chunk, start, last, udp_len, udp_csum)
            }
        }
        self.next += 1;
        Ok(Some(n))
    }

    /// Segment `i` of a TSO/USO super-frame: headers, then `chunk`.
    fn write_segment(&self, out: &mut [u8], chunk: &[u8], i: usize, last: bool) {
        let h = self.hdrs;
        let headers = self.frame.get(..h.payload_off).unwrap_or_default();
        let (hdr_out, payload_out) = out.split_at_mut(h.payload_off.min(out.len()));
        hdr_out.copy_from_slice(headers);
        payload_out.copy_from_slice(chunk);
        let l4_len = out.len() - h.l4_off;
        // Lengths were checked to fit 16 bits at construction.
        self.write_ip(out, l4_len as u16, self.id0.wrapping_add(i as u16), None);
        let l4 = out.get_mut(h.l4_off..).unwrap_or_default();
        let csum_at = match h.l4 {
            L4::Tcp => {
                set_be32(l4, 4, self.seq0.wrapping_add((i * self.mss) as u32));
                if let Some(flags) = l4.get_mut(13) {
                    if !last {
                        *flags &= !(TCP_FIN | TCP_PSH);
                    }
                    if i != 0 {
                        *flags &= !TCP_CWR;
                    }
                }
                16
            }
            L4::Udp => {
                set_be16(l4, 4, l4_len as u16);
                6
            }
        };
        set_be16(l4, csum_at, 0);
        let proto = if h.l4 == L4::Tcp {
            IPPROTO_TCP
        } else {
            IPPROTO_UDP
        };
        let c = checksum::pseudo_raw(h.addrs(self.frame), proto, l4_len as u32)
            .add_bytes(l4)
            .checksum();
        let c = if h.l4 == L4::Udp && c == 0 { 0xffff } else { c };
        set_be16(l4, csum_at, c);
    }

    /// Fragment of a UFO datagram: IP header (+ IPv6 Fragment header), then `chunk`, the
    /// bytes at `start` of the frame (offset `start - l4_off` in the datagram).
    fn write_fragment(
        &self,
        out: &mut [u8],
        chunk: &[u8],
        start: usize,
        last: bool,
        udp_len: u16,
        udp_csum: u16,
    ) {
        let h = self.hdrs;
        let offset = start - h.l4_off;
        let ip_hdrs = self.frame.get(..h.l4_off).unwrap_or_default();
        let data_at = out.len() - chunk.len();
        if let Some(o) = out.get_mut(..h.l4_off) {
            o.copy_from_slice(ip_hdrs);
        }
        if let Some(o) = out.get_mut(data_at..) {
            o.copy_from_slice(chunk);
        }
        if offset == 0 {
            // The first fragment carries the UDP header: the whole datagram's length and
            // checksum.
            set_be16(out, data_at + 4, udp_len);
            set_be16(out, data_at + 6, udp_csum);
        }
        if h.ipv6 {
            // Offset (a multiple of 8 below 64 KiB, checked at construction) in its upper
            // 13 bits, the M flag in bit 0.
            let frag = offset as u16 | u16::from(!last);
            let fh = [
                IPPROTO_UDP,
                0,
                (frag >> 8) as u8,
                frag as u8,
                (self.frag_id >> 24) as u8,
                (self.frag_id >> 16) as u8,
                (self.frag_id >> 8) as u8,
                self.frag_id as u8,
            ];
            if let Some(o) = out.get_mut(h.l4_off..h.l4_off + IPV6_FRAG_LEN) {
                o.copy_from_slice(&fh);
            }
            let plen = (IPV6_FRAG_LEN + chunk.len()) as u16;
            self.write_ip(out, plen, 0, Some(IPV6_FRAG));
        } else {
            let mut flags_off = (offset >> 3) as u16;
            if !last {
                flags_off |= IPV4_MF;
            }
            if let Some(ip) = out.get_mut(h.ip_off..) {
                set_be16(ip, 6, flags_off);
            }
            self.write_ip(out, chunk.len() as u16, self.id0, None);
        }
    }

    /// Set the IP header's length (`l4_len`: bytes after the IP header), IPv4 id and
    /// header checksum; IPv6 payload length (and next header, if given).
    fn write_ip(&self, out: &mut [u8], l4_len: u16, id: u16, next_header: Option<u8>) {
        let h = self.hdrs;
        let Some(ip) = out.get_mut(h.ip_off..) else {
            return;
        };
        if h.ipv6 {
            set_be16(ip, 4, l4_len);
            if let (Some(nh), Some(b)) = (next_header, ip.get_mut(6)) {
                *b = nh;
            }
        } else {
            set_be16(ip, 2, (h.ip_hdr_len() as u16).wrapping_add(l4_len));
            set_be16(ip, 4, id);
            // The header was parsed as IPv4 at construction: this cannot fail.
            let _ = checksum::fill_ipv4_header(ip);
        }
    }

    /// Write every remaining frame, one at a time, into `buf` and hand each to `emit`.
    /// Returns how many were written.
    pub fn for_each(
        &mut self,
        buf: &mut [u8],
        mut emit: impl FnMut(&[u8]),
    ) -> Result<usize, Error> {
        let mut n = 0;
        while let Some(len) = self.next_into(buf)? {
            emit(buf.get(..len).unwrap_or_default());
            n += 1;
        }
        Ok(n)
    }
}

/// A per-datagram IPv6 fragment id when the caller gives none: FNV-1a over the addresses,
/// the UDP ports and the checksum, never zero.
fn default_frag_id(addrs: &[u8], udp: &[u8], csum: u16) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for &b in addrs
        .iter()
        .chain(udp.get(..4).unwrap_or_default())
        .chain(&csum.to_be_bytes())
    {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    h.max(1)
}

/// Segment one port datagram (virtio-net header + Ethernet frame) and append the frames
/// to `out`, each in its own exactly-sized `Vec`. Returns how many were appended; a
/// datagram that cannot be segmented appends nothing.
pub fn segment_to_vecs(datagram: &[u8], out: &mut Vec<Vec<u8>>) -> Result<usize, Error> {
    let mut s = Segmenter::new(datagram)?;
    Segmenter::drain_to_vecs(&mut s, out)
}

impl Segmenter<'_> {
    /// Append every remaining frame to `out`, each in its own exactly-sized `Vec`.
    pub fn drain_to_vecs(&mut self, out: &mut Vec<Vec<u8>>) -> Result<usize, Error> {
        let mut n = 0;
        while let Some(len) = self.next_len() {
            let mut v = vec![0u8; len];
            self.next_into(&mut v)?;
            out.push(v);
            n += 1;
        }
        Ok(n)
    }
}

#[cfg(test)]
#[path = "gso_tests.rs"]
mod tests;
