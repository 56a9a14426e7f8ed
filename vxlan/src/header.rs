//! The VXLAN header (RFC 7348 §5) and encapsulation/decapsulation over buffers.
//!
//! Contract:
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |R|R|R|R|I|R|R|R|            Reserved                           |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                VXLAN Network Identifier (VNI) |   Reserved    |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//!
//! * [`VxlanHeader::new_checked`] accepts a buffer of at least [`VXLAN_HDR_LEN`] bytes
//!   whose I flag is set; the accessors then cannot fail.
//! * Receive follows the RFC: the I flag MUST be set (else [`Error::NoVni`]); the
//!   reserved bits and fields "MUST be ignored on receipt", so they are — a header with
//!   reserved bits set is accepted (its [`VxlanHeader::flags`] shows them).
//!   Transmit writes them as zero ([`emit_header`], [`encap`]).
//! * [`encap`] writes header + inner Ethernet frame into a caller-owned buffer;
//!   [`decap`] returns the VNI and the inner frame as a subslice of the datagram (no
//!   copy). Both refuse an inner frame shorter than an Ethernet header
//!   ([`Error::InnerTooShort`]). The outer IP/UDP headers are not ours: the tunnel sends
//!   over a UDP socket.
//! * Nothing here panics, on any input.

use std::fmt;
use tapnet_wire::ETH_HDR_LEN;

/// Length of the VXLAN header.
pub const VXLAN_HDR_LEN: usize = 8;
/// The IANA port of VXLAN (RFC 7348 §5), the default destination port.
pub const VXLAN_PORT: u16 = 4789;
/// The I flag: the VNI is valid.
pub const FLAG_I: u8 = 0x08;
/// Bytes the overlay adds to an inner IP packet over an IPv4 underlay: outer IPv4 (20),
/// UDP (8), VXLAN (8) and the inner Ethernet header (14). Inner MTU = underlay MTU − 50.
pub const OVERHEAD_V4: usize = 50;
/// The same over an IPv6 underlay (outer IPv6 is 40 bytes).
pub const OVERHEAD_V6: usize = 70;

/// A 24-bit VXLAN Network Identifier.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Vni(u32);

impl Vni {
    /// The largest VNI, `2^24 - 1`.
    pub const MAX: u32 = 0x00ff_ffff;

    /// `v` as a VNI, `None` if it does not fit 24 bits.
    pub const fn new(v: u32) -> Option<Vni> {
        if v > Vni::MAX {
            None
        } else {
            Some(Vni(v))
        }
    }

    /// The number.
    pub const fn get(self) -> u32 {
        self.0
    }

    /// The three VNI octets of the header, big-endian.
    const fn octets(self) -> [u8; 3] {
        let b = self.0.to_be_bytes();
        [b[1], b[2], b[3]]
    }
}

impl TryFrom<u32> for Vni {
    type Error = Error;
    fn try_from(v: u32) -> Result<Vni, Error> {
        Vni::new(v).ok_or(Error::VniTooLarge(v))
    }
}

impl fmt::Display for Vni {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// Why a buffer is not a VXLAN datagram, or cannot take one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// Shorter than the VXLAN header.
    Truncated,
    /// The I flag is clear: no valid VNI.
    NoVni,
    /// The inner frame is shorter than an Ethernet header.
    InnerTooShort,
    /// The output buffer is shorter than this many bytes.
    BufferTooSmall(usize),
    /// Not a 24-bit number.
    VniTooLarge(u32),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Truncated => f.write_str("shorter than a VXLAN header"),
            Error::NoVni => f.write_str("VXLAN I flag clear"),
            Error::InnerTooShort => f.write_str("inner frame shorter than an Ethernet header"),
            Error::BufferTooSmall(n) => write!(f, "output buffer shorter than {n} bytes"),
            Error::VniTooLarge(v) => write!(f, "VNI {v} does not fit 24 bits"),
        }
    }
}

impl std::error::Error for Error {}

/// A view over a VXLAN header at the start of `T` (smoltcp style).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VxlanHeader<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> VxlanHeader<T> {
    /// Wrap `buffer` if it holds at least [`VXLAN_HDR_LEN`] bytes and the I flag is set.
    /// Reserved bits are ignored (RFC 7348 §5).
    pub fn new_checked(buffer: T) -> Result<VxlanHeader<T>, Error> {
        let b = buffer
            .as_ref()
            .first_chunk::<VXLAN_HDR_LEN>()
            .ok_or(Error::Truncated)?;
        if b[0] & FLAG_I == 0 {
            return Err(Error::NoVni);
        }
        Ok(VxlanHeader { buffer })
    }

    /// The wrapped buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn bytes(&self) -> [u8; VXLAN_HDR_LEN] {
        // Proved by `new_checked`; the default is never used.
        self.buffer
            .as_ref()
            .first_chunk::<VXLAN_HDR_LEN>()
            .copied()
            .unwrap_or_default()
    }

    /// The flags octet, reserved bits included.
    pub fn flags(&self) -> u8 {
        self.bytes()[0]
    }

    /// The I flag (always set on a checked header).
    pub fn vni_valid(&self) -> bool {
        self.flags() & FLAG_I != 0
    }

    /// The VNI.
    pub fn vni(&self) -> Vni {
        let b = self.bytes();
        Vni(u32::from_be_bytes([0, b[4], b[5], b[6]]))
    }

    /// The bytes after the header (the inner Ethernet frame).
    pub fn payload(&self) -> &[u8] {
        self.buffer
            .as_ref()
            .get(VXLAN_HDR_LEN..)
            .unwrap_or_default()
    }
}

/// Write a VXLAN header for `vni` (I flag set, reserved fields zero) into the first
/// [`VXLAN_HDR_LEN`] bytes of `out`.
pub fn emit_header(vni: Vni, out: &mut [u8]) -> Result<(), Error> {
    let h = out
        .first_chunk_mut::<VXLAN_HDR_LEN>()
        .ok_or(Error::BufferTooSmall(VXLAN_HDR_LEN))?;
    let [a, b, c] = vni.octets();
    *h = [FLAG_I, 0, 0, 0, a, b, c, 0];
    Ok(())
}

/// Encapsulate `inner` (an Ethernet frame, no FCS) for `vni` into `out`: header, then
/// the frame. Returns the datagram's length (`8 + inner.len()`).
pub fn encap(vni: Vni, inner: &[u8], out: &mut [u8]) -> Result<usize, Error> {
    if inner.len() < ETH_HDR_LEN {
        return Err(Error::InnerTooShort);
    }
    let n = VXLAN_HDR_LEN + inner.len();
    let out = out.get_mut(..n).ok_or(Error::BufferTooSmall(n))?;
    emit_header(vni, out)?;
    out.get_mut(VXLAN_HDR_LEN..)
        .ok_or(Error::BufferTooSmall(n))?
        .copy_from_slice(inner);
    Ok(n)
}

/// Decapsulate a UDP payload: its VNI and the inner Ethernet frame (a subslice).
pub fn decap(datagram: &[u8]) -> Result<(Vni, &[u8]), Error> {
    let h = VxlanHeader::new_checked(datagram)?;
    let inner = datagram.get(VXLAN_HDR_LEN..).unwrap_or_default();
    if inner.len() < ETH_HDR_LEN {
        return Err(Error::InnerTooShort);
    }
    Ok((h.vni(), inner))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const ETH: [u8; 14] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0, 0, 0, 0, 1, 0x08, 0x06,
    ];

    #[test]
    fn vni_is_24_bits() {
        assert_eq!(Vni::new(0).unwrap().get(), 0);
        assert_eq!(Vni::new(0xff_ffff).unwrap().get(), 0xff_ffff);
        assert_eq!(Vni::new(0x100_0000), None);
        assert_eq!(Vni::try_from(u32::MAX), Err(Error::VniTooLarge(u32::MAX)));
        assert_eq!(Vni::new(4096).unwrap().to_string(), "4096");
    }

    #[test]
    fn encap_writes_rfc_7348_bytes() {
        let mut out = [0xaau8; 64];
        let n = encap(Vni::new(0x12_3456).unwrap(), &ETH, &mut out).unwrap();
        assert_eq!(n, 22);
        assert_eq!(out[..8], [0x08, 0, 0, 0, 0x12, 0x34, 0x56, 0]);
        assert_eq!(out[8..22], ETH);
        assert_eq!(out[22], 0xaa, "nothing written past the datagram");
    }

    #[test]
    fn encap_refuses_short_inner_and_small_buffers() {
        let vni = Vni::new(1).unwrap();
        let mut out = [0u8; 64];
        assert_eq!(encap(vni, &ETH[..13], &mut out), Err(Error::InnerTooShort));
        assert_eq!(
            encap(vni, &ETH, &mut out[..21]),
            Err(Error::BufferTooSmall(22))
        );
        assert_eq!(
            emit_header(vni, &mut out[..7]),
            Err(Error::BufferTooSmall(8))
        );
    }

    #[test]
    fn decap_literal_datagram() {
        let mut d = vec![0x08, 0, 0, 0, 0, 0x10, 0x01, 0];
        d.extend_from_slice(&ETH);
        d.extend_from_slice(&[1, 2, 3]);
        let (vni, inner) = decap(&d).unwrap();
        assert_eq!(vni.get(), 0x1001);
        assert_eq!(inner.len(), 17);
        assert_eq!(inner[..14], ETH);
        let h = VxlanHeader::new_checked(&d[..]).unwrap();
        assert_eq!(h.flags(), FLAG_I);
        assert!(h.vni_valid());
        assert_eq!(h.payload(), inner);
    }

    #[test]
    fn decap_rejects_and_ignores_what_the_rfc_says() {
        let mut d = vec![0x08, 0, 0, 0, 0, 0, 0x2a, 0];
        d.extend_from_slice(&ETH);
        // Too short for a header.
        assert_eq!(decap(&d[..7]), Err(Error::Truncated));
        assert_eq!(decap(&[]), Err(Error::Truncated));
        // Header, but the inner frame is cut.
        assert_eq!(decap(&d[..8 + 13]), Err(Error::InnerTooShort));
        // I flag clear.
        let mut no_i = d.clone();
        no_i[0] = 0;
        assert_eq!(decap(&no_i), Err(Error::NoVni));
        // Reserved bits set: ignored on receipt (RFC 7348 §5).
        let mut reserved = d.clone();
        reserved[0] = 0xff;
        reserved[1..4].copy_from_slice(&[1, 2, 3]);
        reserved[7] = 0xee;
        let (vni, inner) = decap(&reserved).unwrap();
        assert_eq!(vni.get(), 42);
        assert_eq!(inner, &ETH);
        assert_eq!(VxlanHeader::new_checked(&reserved).unwrap().flags(), 0xff);
    }

    #[test]
    fn roundtrip() {
        let inner: Vec<u8> = (0..1514u32).map(|i| i as u8).collect();
        let mut out = vec![0u8; 1600];
        for v in [0, 1, 4789, Vni::MAX] {
            let vni = Vni::new(v).unwrap();
            let n = encap(vni, &inner, &mut out).unwrap();
            assert_eq!(decap(&out[..n]).unwrap(), (vni, &inner[..]));
        }
    }

    /// xorshift64*: deterministic noise, no dependency.
    fn rng(state: &mut u64) -> u64 {
        *state ^= *state >> 12;
        *state ^= *state << 25;
        *state ^= *state >> 27;
        state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut s = 0x9e37_79b9_7f4a_7c15u64;
        let mut out = vec![0u8; 256];
        for _ in 0..20_000 {
            let len = (rng(&mut s) % 96) as usize;
            let mut d: Vec<u8> = (0..len).map(|_| rng(&mut s) as u8).collect();
            if len > 0 && rng(&mut s) & 1 == 0 {
                d[0] |= FLAG_I;
            }
            match decap(&d) {
                Ok((vni, inner)) => {
                    assert!(vni.get() <= Vni::MAX);
                    assert_eq!(inner.len(), len - 8);
                    assert!(inner.len() >= ETH_HDR_LEN);
                }
                Err(Error::Truncated) => assert!(len < 8),
                Err(Error::NoVni) => assert_eq!(d[0] & FLAG_I, 0),
                Err(Error::InnerTooShort) => assert!(len < 8 + ETH_HDR_LEN),
                Err(e) => panic!("unexpected {e}"),
            }
            let olen = (rng(&mut s) % 128) as usize;
            let vni = Vni::new((rng(&mut s) as u32) & Vni::MAX).unwrap();
            let _ = encap(vni, &d, &mut out[..olen]);
        }
    }
}
