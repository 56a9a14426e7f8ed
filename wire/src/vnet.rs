//! The virtio-net header (`struct virtio_net_hdr`, linux/virtio_net.h) that precedes
//! every frame on a tapnet port.
//!
//! Contract:
//!
//! * The header is [`VNET_HDR_LEN`] = 10 bytes, fields little-endian (what a tap uses on
//!   a little-endian host, and what tapnet puts on every port): `flags`, `gso_type`,
//!   `hdr_len`, `gso_size`, `csum_start`, `csum_offset`. Bytes past the tenth are never
//!   looked at.
//! * [`VnetHdr`] is a view over bytes, smoltcp-style: [`VnetHdr::new_checked`] proves the
//!   length once and is the only way to build one, so no accessor or setter panics
//!   afterwards (**no panic after the length check**).
//! * [`VnetHdr::check`] is the consistency test the switch applies to every frame before
//!   forwarding it (so a tap is never handed a header its kernel would reject): a known
//!   `gso_type` (ECN bit allowed), a non-zero `gso_size` for a GSO type, and a
//!   `NEEDS_CSUM` field that lies inside the frame. It does not look inside the frame.
//! * [`VnetHdrRepr`] is the same header as plain values, with builders for what tapnet
//!   emits (nothing, a partial checksum, a TCP GSO super-frame) and
//!   [`VnetHdrRepr::to_bytes`] / [`VnetHdrRepr::emit`] to write it.

use std::fmt;

/// Length of the virtio-net header tapnet uses on every port (`struct virtio_net_hdr`,
/// no `num_buffers`; the `TUNSETVNETHDRSZ` default).
pub const VNET_HDR_LEN: usize = 10;

/// `flags`: the checksum at `csum_start + csum_offset` must be completed
/// (`VIRTIO_NET_HDR_F_NEEDS_CSUM`).
pub const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;
/// `flags`: the checksums were verified by the sender (`VIRTIO_NET_HDR_F_DATA_VALID`).
pub const VIRTIO_NET_HDR_F_DATA_VALID: u8 = 2;
/// `gso_type`: not a GSO frame (`VIRTIO_NET_HDR_GSO_NONE`).
pub const VIRTIO_NET_HDR_GSO_NONE: u8 = 0;
/// `gso_type`: TCP over IPv4 (`VIRTIO_NET_HDR_GSO_TCPV4`).
pub const VIRTIO_NET_HDR_GSO_TCPV4: u8 = 1;
/// `gso_type`: UDP fragmentation offload (`VIRTIO_NET_HDR_GSO_UDP`): IP fragments.
pub const VIRTIO_NET_HDR_GSO_UDP: u8 = 3;
/// `gso_type`: TCP over IPv6 (`VIRTIO_NET_HDR_GSO_TCPV6`).
pub const VIRTIO_NET_HDR_GSO_TCPV6: u8 = 4;
/// `gso_type`: UDP segmentation offload (`VIRTIO_NET_HDR_GSO_UDP_L4`): UDP datagrams.
pub const VIRTIO_NET_HDR_GSO_UDP_L4: u8 = 5;
/// `gso_type` modifier: TCP with ECN (`VIRTIO_NET_HDR_GSO_ECN`).
pub const VIRTIO_NET_HDR_GSO_ECN: u8 = 0x80;

/// The header of a frame with no offloads: all zero.
pub const ZERO_HDR: [u8; VNET_HDR_LEN] = [0; VNET_HDR_LEN];

/// A `gso_type` without its ECN bit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GsoType {
    /// Not a super-frame.
    None,
    /// TCP over IPv4.
    TcpV4,
    /// TCP over IPv6.
    TcpV6,
    /// UDP to be sent as IP fragments (UFO).
    Udp,
    /// UDP to be cut into datagrams (USO).
    UdpL4,
}

impl GsoType {
    /// The type a raw `gso_type` names (ECN bit ignored), `None` if unknown.
    pub const fn from_raw(raw: u8) -> Option<GsoType> {
        match raw & !VIRTIO_NET_HDR_GSO_ECN {
            VIRTIO_NET_HDR_GSO_NONE => Some(GsoType::None),
            VIRTIO_NET_HDR_GSO_TCPV4 => Some(GsoType::TcpV4),
            VIRTIO_NET_HDR_GSO_TCPV6 => Some(GsoType::TcpV6),
            VIRTIO_NET_HDR_GSO_UDP => Some(GsoType::Udp),
            VIRTIO_NET_HDR_GSO_UDP_L4 => Some(GsoType::UdpL4),
            _ => None,
        }
    }

    /// The raw `gso_type` value (without ECN).
    pub const fn raw(self) -> u8 {
        match self {
            GsoType::None => VIRTIO_NET_HDR_GSO_NONE,
            GsoType::TcpV4 => VIRTIO_NET_HDR_GSO_TCPV4,
            GsoType::TcpV6 => VIRTIO_NET_HDR_GSO_TCPV6,
            GsoType::Udp => VIRTIO_NET_HDR_GSO_UDP,
            GsoType::UdpL4 => VIRTIO_NET_HDR_GSO_UDP_L4,
        }
    }

    /// True for TCP super-frames.
    pub const fn is_tcp(self) -> bool {
        matches!(self, GsoType::TcpV4 | GsoType::TcpV6)
    }
}

/// Why a virtio-net header is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// Fewer than [`VNET_HDR_LEN`] bytes.
    Truncated,
    /// A `gso_type` this crate does not know (the raw value).
    UnknownGsoType(u8),
    /// A GSO type with `gso_size` 0.
    ZeroGsoSize,
    /// `NEEDS_CSUM`, but `csum_start + csum_offset + 2` is past the end of the frame.
    CsumOutOfBounds,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Truncated => write!(f, "virtio-net header shorter than {VNET_HDR_LEN} bytes"),
            Error::UnknownGsoType(t) => write!(f, "unknown virtio-net gso_type {t:#04x}"),
            Error::ZeroGsoSize => f.write_str("virtio-net GSO header with gso_size 0"),
            Error::CsumOutOfBounds => f.write_str("virtio-net checksum field past the frame"),
        }
    }
}

impl std::error::Error for Error {}

/// A view over a virtio-net header at the start of `T`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VnetHdr<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> VnetHdr<T> {
    /// Wrap `buffer` if it holds at least [`VNET_HDR_LEN`] bytes.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<VnetHdr<T>, Error> {
        if buffer.as_ref().len() < VNET_HDR_LEN {
            return Err(Error::Truncated);
        }
        Ok(VnetHdr { buffer })
    }

    /// The wrapped buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The ten header bytes. Cannot fail: the length was checked at construction.
    #[inline(always)]
    fn bytes(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    #[inline(always)]
    fn le16(&self, at: usize) -> u16 {
        let b = self.bytes();
        // `at` + 1 < VNET_HDR_LEN <= b.len(), proved by `new_checked`.
        u16::from_le_bytes([b[at], b[at + 1]])
    }

    /// `flags`.
    #[inline]
    pub fn flags(&self) -> u8 {
        self.bytes()[0]
    }

    /// `flags` has `NEEDS_CSUM`.
    #[inline]
    pub fn needs_csum(&self) -> bool {
        self.flags() & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0
    }

    /// `gso_type` as stored (ECN bit included).
    #[inline]
    pub fn gso_type_raw(&self) -> u8 {
        self.bytes()[1]
    }

    /// `gso_type` without the ECN bit; `None` if unknown.
    #[inline]
    pub fn gso_type(&self) -> Option<GsoType> {
        GsoType::from_raw(self.gso_type_raw())
    }

    /// The ECN bit of `gso_type`.
    #[inline]
    pub fn ecn(&self) -> bool {
        self.gso_type_raw() & VIRTIO_NET_HDR_GSO_ECN != 0
    }

    /// `hdr_len`: the length of all headers of a super-frame (a hint; 0 allowed).
    #[inline]
    pub fn hdr_len(&self) -> u16 {
        self.le16(2)
    }

    /// `gso_size`: the L4 payload bytes per segment of a super-frame.
    #[inline]
    pub fn gso_size(&self) -> u16 {
        self.le16(4)
    }

    /// `csum_start`: where checksumming starts, from the start of the Ethernet frame.
    #[inline]
    pub fn csum_start(&self) -> u16 {
        self.le16(6)
    }

    /// `csum_offset`: where the checksum field lies, from `csum_start`.
    #[inline]
    pub fn csum_offset(&self) -> u16 {
        self.le16(8)
    }

    /// Check the header against the length of the Ethernet frame that follows it: a known
    /// `gso_type`, a non-zero `gso_size` for a GSO type, and, with `NEEDS_CSUM`, a
    /// checksum field inside the frame.
    #[inline]
    pub fn check(&self, frame_len: usize) -> Result<(), Error> {
        match self.gso_type() {
            None => return Err(Error::UnknownGsoType(self.gso_type_raw())),
            Some(GsoType::None) => {}
            Some(_) => {
                if self.gso_size() == 0 {
                    return Err(Error::ZeroGsoSize);
                }
            }
        }
        let field_end = usize::from(self.csum_start()) + usize::from(self.csum_offset()) + 2;
        // u16 + u16 + 2 cannot overflow usize.
        if self.needs_csum() && field_end > frame_len {
            return Err(Error::CsumOutOfBounds);
        }
        Ok(())
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> VnetHdr<T> {
    #[inline(always)]
    fn bytes_mut(&mut self) -> &mut [u8] {
        self.buffer.as_mut()
    }

    #[inline(always)]
    fn set_le16(&mut self, at: usize, v: u16) {
        let b = self.bytes_mut();
        // `at` + 1 < VNET_HDR_LEN <= b.len(), proved by `new_checked`.
        b[at..at + 2].copy_from_slice(&v.to_le_bytes());
    }

    /// Set `flags`.
    #[inline]
    pub fn set_flags(&mut self, v: u8) {
        self.bytes_mut()[0] = v;
    }

    /// Set `gso_type` (raw, ECN bit included).
    #[inline]
    pub fn set_gso_type_raw(&mut self, v: u8) {
        self.bytes_mut()[1] = v;
    }

    /// Set `hdr_len`.
    #[inline]
    pub fn set_hdr_len(&mut self, v: u16) {
        self.set_le16(2, v);
    }

    /// Set `gso_size`.
    #[inline]
    pub fn set_gso_size(&mut self, v: u16) {
        self.set_le16(4, v);
    }

    /// Set `csum_start`.
    #[inline]
    pub fn set_csum_start(&mut self, v: u16) {
        self.set_le16(6, v);
    }

    /// Set `csum_offset`.
    #[inline]
    pub fn set_csum_offset(&mut self, v: u16) {
        self.set_le16(8, v);
    }

    /// Zero the header: no offloads.
    #[inline]
    pub fn clear(&mut self) {
        self.bytes_mut()[..VNET_HDR_LEN].fill(0);
    }
}

/// Split one port datagram into its virtio-net header view and the Ethernet frame.
#[inline]
pub fn split(datagram: &[u8]) -> Result<(VnetHdr<&[u8]>, &[u8]), Error> {
    let (hdr, frame) = datagram
        .split_at_checked(VNET_HDR_LEN)
        .ok_or(Error::Truncated)?;
    Ok((VnetHdr::new_checked(hdr)?, frame))
}

/// Mutable [`split`].
#[inline]
pub fn split_mut(datagram: &mut [u8]) -> Result<(VnetHdr<&mut [u8]>, &mut [u8]), Error> {
    let (hdr, frame) = datagram
        .split_at_mut_checked(VNET_HDR_LEN)
        .ok_or(Error::Truncated)?;
    Ok((VnetHdr::new_checked(hdr)?, frame))
}

/// A virtio-net header as plain values (host byte order), to build or inspect one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VnetHdrRepr {
    /// `flags` (`NEEDS_CSUM`, `DATA_VALID`).
    pub flags: u8,
    /// `gso_type`, ECN bit included.
    pub gso_type: u8,
    /// Length of all headers of a super-frame.
    pub hdr_len: u16,
    /// L4 payload bytes per segment.
    pub gso_size: u16,
    /// Where checksumming starts, from the start of the Ethernet frame.
    pub csum_start: u16,
    /// Offset of the checksum field from `csum_start`.
    pub csum_offset: u16,
}

impl VnetHdrRepr {
    /// No offloads (all zero).
    pub const NONE: VnetHdrRepr = VnetHdrRepr {
        flags: 0,
        gso_type: 0,
        hdr_len: 0,
        gso_size: 0,
        csum_start: 0,
        csum_offset: 0,
    };

    /// Read a header.
    #[inline]
    pub fn parse<T: AsRef<[u8]>>(hdr: &VnetHdr<T>) -> VnetHdrRepr {
        VnetHdrRepr {
            flags: hdr.flags(),
            gso_type: hdr.gso_type_raw(),
            hdr_len: hdr.hdr_len(),
            gso_size: hdr.gso_size(),
            csum_start: hdr.csum_start(),
            csum_offset: hdr.csum_offset(),
        }
    }

    /// A frame whose checksum is left partial: `NEEDS_CSUM`, the field at
    /// `csum_start + csum_offset` holding the pseudo-header sum (TCP: offset 16, UDP: 6).
    pub const fn partial_csum(csum_start: u16, csum_offset: u16) -> VnetHdrRepr {
        VnetHdrRepr {
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
            csum_start,
            csum_offset,
            ..VnetHdrRepr::NONE
        }
    }

    /// This header describing a super-frame of `gso` type, whose headers are `hdr_len`
    /// bytes and whose segments carry `gso_size` payload bytes each.
    pub const fn with_gso(self, gso: GsoType, hdr_len: u16, gso_size: u16) -> VnetHdrRepr {
        VnetHdrRepr {
            gso_type: gso.raw(),
            hdr_len,
            gso_size,
            ..self
        }
    }

    /// `gso_type` without ECN; `None` if unknown.
    pub const fn gso(&self) -> Option<GsoType> {
        GsoType::from_raw(self.gso_type)
    }

    /// `flags` has `NEEDS_CSUM`.
    pub const fn needs_csum(&self) -> bool {
        self.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0
    }

    /// The ten header bytes.
    pub fn to_bytes(&self) -> [u8; VNET_HDR_LEN] {
        let mut b = ZERO_HDR;
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        b
    }

    /// Write the header into `hdr`.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, hdr: &mut VnetHdr<T>) {
        hdr.bytes_mut()[..VNET_HDR_LEN].copy_from_slice(&self.to_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(flags: u8, gso_type: u8, gso_size: u16, csum_start: u16, csum_offset: u16) -> [u8; 10] {
        VnetHdrRepr {
            flags,
            gso_type,
            hdr_len: 54,
            gso_size,
            csum_start,
            csum_offset,
        }
        .to_bytes()
    }

    #[test]
    fn accessors_read_little_endian_fields() {
        let b = [
            1, 0x81, 0x36, 0x00, 0xa8, 0x05, 0x22, 0x00, 0x10, 0x00, 0xff, 0xff,
        ];
        let h = VnetHdr::new_checked(&b[..]).expect("long enough");
        assert_eq!(h.flags(), 1);
        assert!(h.needs_csum());
        assert_eq!(h.gso_type_raw(), 0x81);
        assert_eq!(h.gso_type(), Some(GsoType::TcpV4));
        assert!(h.ecn());
        assert_eq!(h.hdr_len(), 54);
        assert_eq!(h.gso_size(), 1448);
        assert_eq!(h.csum_start(), 34);
        assert_eq!(h.csum_offset(), 16);
        let r = VnetHdrRepr::parse(&h);
        assert_eq!(r.to_bytes(), b[..10]);
        let ecn = VnetHdrRepr {
            gso_type: VIRTIO_NET_HDR_GSO_TCPV4 | VIRTIO_NET_HDR_GSO_ECN,
            ..VnetHdrRepr::partial_csum(34, 16).with_gso(GsoType::TcpV4, 54, 1448)
        };
        assert_eq!(r, ecn);
    }

    #[test]
    fn setters_and_emit_round_trip() {
        let mut b = [0xaau8; 12];
        let mut h = VnetHdr::new_checked(&mut b[..]).expect("long enough");
        h.clear();
        assert_eq!(VnetHdrRepr::parse(&h), VnetHdrRepr::NONE);
        h.set_flags(1);
        h.set_gso_type_raw(4);
        h.set_hdr_len(74);
        h.set_gso_size(1440);
        h.set_csum_start(54);
        h.set_csum_offset(16);
        let r = VnetHdrRepr::parse(&h);
        assert_eq!(
            r,
            VnetHdrRepr::partial_csum(54, 16).with_gso(GsoType::TcpV6, 74, 1440)
        );
        let mut c = [0u8; 10];
        r.emit(&mut VnetHdr::new_checked(&mut c[..]).expect("10 bytes"));
        assert_eq!(c, b[..10]);
        assert_eq!(b[10..], [0xaa, 0xaa], "bytes past the header untouched");
    }

    #[test]
    fn short_headers_are_refused() {
        for n in 0..VNET_HDR_LEN {
            assert_eq!(
                VnetHdr::new_checked(&[0u8; 10][..n]).err(),
                Some(Error::Truncated)
            );
            assert_eq!(split(&[0u8; 10][..n]).err(), Some(Error::Truncated));
        }
        let (h, f) = split(&[0u8; 12]).expect("long enough");
        assert_eq!((h.gso_type(), f.len()), (Some(GsoType::None), 2));
    }

    #[test]
    fn check_gso_types() {
        let ok = |b: [u8; 10], len| VnetHdr::new_checked(&b[..]).expect("10").check(len);
        assert_eq!(ok(ZERO_HDR, 0), Ok(()));
        for t in [1u8, 3, 4, 5] {
            assert_eq!(ok(raw(0, t, 1448, 0, 0), 65_000), Ok(()));
            assert_eq!(ok(raw(0, t | 0x80, 1448, 0, 0), 65_000), Ok(()));
            assert_eq!(ok(raw(0, t, 0, 0, 0), 65_000), Err(Error::ZeroGsoSize));
        }
        for t in [2u8, 6, 7, 0x40, 0x7f, 0xff, 0x82] {
            assert_eq!(
                ok(raw(0, t, 1448, 0, 0), 1500),
                Err(Error::UnknownGsoType(t))
            );
        }
        assert_eq!(ok(raw(1, 0, 0, 34, 16), 52), Ok(()));
        assert_eq!(ok(raw(1, 0, 0, 34, 16), 51), Err(Error::CsumOutOfBounds));
        assert_eq!(
            ok(raw(1, 0, 0, 0xffff, 0xffff), 65_536),
            Err(Error::CsumOutOfBounds)
        );
        assert_eq!(ok(raw(2, 0, 0, 0xffff, 0xffff), 60), Ok(()));
    }

    #[test]
    fn gso_type_round_trip() {
        for t in [
            GsoType::None,
            GsoType::TcpV4,
            GsoType::TcpV6,
            GsoType::Udp,
            GsoType::UdpL4,
        ] {
            assert_eq!(GsoType::from_raw(t.raw()), Some(t));
            assert_eq!(GsoType::from_raw(t.raw() | VIRTIO_NET_HDR_GSO_ECN), Some(t));
        }
        assert!(GsoType::TcpV6.is_tcp() && !GsoType::UdpL4.is_tcp());
    }
}
