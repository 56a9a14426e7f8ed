//! The Internet checksum (RFC 1071), its pseudo-headers and incremental updates.
//!
//! Contract:
//!
//! * [`Sum`] accumulates a ones'-complement sum over any number of byte slices of any
//!   length, in order, exactly as if they were one slice (an odd-length slice shifts the
//!   next one by a byte; [`Sum`] accounts for it). [`Sum::fold`] gives the 16-bit sum,
//!   [`Sum::checksum`] its complement: the value a checksum field holds.
//! * [`checksum`] is the checksum of one slice; [`verify`] says whether a slice that
//!   includes its checksum field sums to all ones.
//! * [`pseudo_v4`] / [`pseudo_v6`] are the TCP/UDP/ICMPv6 pseudo-header sums
//!   (RFC 793, RFC 768, RFC 8200 §8.1).
//! * [`update`] / [`update_u32`] / [`update_bytes`] adjust a checksum field after header
//!   words change, without touching the rest of the packet (RFC 1624, eqn. 3).
//! * [`complete_partial`] finishes a `CHECKSUM_PARTIAL` checksum (the virtio-net
//!   `NEEDS_CSUM` request) in place; [`fill_ipv4_header`] computes an IPv4 header's.
//! * Nothing here panics, on any input: sums take any slice, the in-place functions check
//!   their offsets and return [`Error`].

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// A running ones'-complement sum. Feed it slices in order with [`Sum::add_bytes`]; the sum is
/// the same as over their concatenation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sum {
    /// Unfolded sum of big-endian 16-bit words (never more than 48 bits used per add).
    acc: u64,
    /// The bytes so far had odd length: the next byte is the low half of a word.
    odd: bool,
}

/// Fold a 64-bit ones'-complement accumulator to 16 bits (not complemented).
#[inline]
const fn fold64(mut s: u64) -> u16 {
    s = (s & 0xffff_ffff) + (s >> 32);
    s = (s & 0xffff_ffff) + (s >> 32);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    // Three 16-bit folds of a value below 2^33 leave at most 16 bits.
    s as u16
}

/// Folded sum of `data` as if it started at an even offset.
///
/// The bulk is summed 8 bytes at a time in native byte order (two 32-bit halves per
/// load into a 64-bit accumulator: 2^32 loads cannot overflow it), folded, and byte-swapped
/// on little-endian machines: a ones'-complement sum of byte-swapped words is the
/// byte-swapped sum (RFC 1071 §2(B)). The tail (under 8 bytes) is summed big-endian.
#[inline]
fn raw_sum(data: &[u8]) -> u16 {
    let mut native: u64 = 0;
    let mut words = data.chunks_exact(8);
    for w in &mut words {
        let mut b = [0u8; 8];
        b.copy_from_slice(w);
        let v = u64::from_ne_bytes(b);
        native += (v & 0xffff_ffff) + (v >> 32);
    }
    let native = fold64(native);
    let mut acc = u64::from(if cfg!(target_endian = "little") {
        native.swap_bytes()
    } else {
        native
    });
    let mut rest = words.remainder().chunks_exact(2);
    for w in &mut rest {
        acc += u64::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [a] = *rest.remainder() {
        acc += u64::from(a) << 8;
    }
    fold64(acc)
}

impl Sum {
    /// An empty sum.
    pub const fn new() -> Sum {
        Sum { acc: 0, odd: false }
    }

    /// Add the next bytes.
    #[inline]
    pub fn add_bytes(mut self, data: &[u8]) -> Sum {
        let s = raw_sum(data);
        // Bytes that start at an odd offset contribute their sum byte-swapped (RFC 1071
        // §2(B), byte-order independence).
        self.acc += u64::from(if self.odd { s.swap_bytes() } else { s });
        self.odd ^= data.len() % 2 == 1;
        self
    }

    /// Add one 16-bit word (big-endian value). Must come at an even offset.
    #[inline]
    pub const fn add_u16(mut self, v: u16) -> Sum {
        self.acc += v as u64;
        self
    }

    /// Add one 32-bit value as two 16-bit words. Must come at an even offset.
    #[inline]
    pub const fn add_u32(mut self, v: u32) -> Sum {
        self.acc += (v >> 16) as u64 + (v & 0xffff) as u64;
        self
    }

    /// The folded 16-bit sum, not complemented (what a `CHECKSUM_PARTIAL` field holds for
    /// a pseudo-header).
    #[inline]
    pub const fn fold(self) -> u16 {
        fold64(self.acc)
    }

    /// The checksum: the complement of the folded sum.
    #[inline]
    pub const fn checksum(self) -> u16 {
        !self.fold()
    }
}

/// The Internet checksum of `data` (complemented ones'-complement sum).
#[inline]
pub fn checksum(data: &[u8]) -> u16 {
    !raw_sum(data)
}

/// True if `data`, checksum field included, sums to `0xffff` (a valid checksum).
#[inline]
pub fn verify(data: &[u8]) -> bool {
    raw_sum(data) == 0xffff
}

/// The IPv4 pseudo-header sum for `proto` (6 TCP, 17 UDP) and an L4 length of `len`.
#[inline]
pub fn pseudo_v4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, len: u32) -> Sum {
    Sum::new()
        .add_u32(src.to_bits())
        .add_u32(dst.to_bits())
        .add_u16(u16::from(proto))
        .add_u32(len)
}

/// The IPv6 pseudo-header sum for next header `proto` and an upper-layer length `len`.
#[inline]
pub fn pseudo_v6(src: Ipv6Addr, dst: Ipv6Addr, proto: u8, len: u32) -> Sum {
    Sum::new()
        .add_bytes(&src.octets())
        .add_bytes(&dst.octets())
        .add_u32(len)
        .add_u16(u16::from(proto))
}

/// The pseudo-header sum from raw address bytes: 4 + 4 (IPv4) or 16 + 16 (IPv6) bytes of
/// source and destination, as they lie in an IP header.
#[inline]
pub fn pseudo_raw(addrs: &[u8], proto: u8, len: u32) -> Sum {
    Sum::new()
        .add_bytes(addrs)
        .add_u16(u16::from(proto))
        .add_u32(len)
}

/// RFC 1624 eqn. 3: the checksum field after one 16-bit word of the covered data went
/// from `old` to `new` (`csum` is the field's current value).
#[inline]
pub const fn update(csum: u16, old: u16, new: u16) -> u16 {
    // HC' = ~(~HC + ~m + m')
    !fold64((!csum) as u64 + (!old) as u64 + new as u64)
}

/// [`update`] for a 32-bit value (an IPv4 address, a TCP sequence number).
#[inline]
pub const fn update_u32(csum: u16, old: u32, new: u32) -> u16 {
    let c = update(csum, (old >> 16) as u16, (new >> 16) as u16);
    update(c, old as u16, new as u16)
}

/// [`update`] for a run of bytes at an even offset (an IPv6 address). `old` and `new`
/// must be the same length; an odd last byte counts as the high half of a word.
#[inline]
pub fn update_bytes(csum: u16, old: &[u8], new: &[u8]) -> u16 {
    // ~HC + ~sum(old) + sum(new) = ~HC + (0xffff - sum(old)) + sum(new)
    !fold64(u64::from(!csum) + u64::from(!raw_sum(old)) + u64::from(raw_sum(new)))
}

/// Why an in-place checksum could not be written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// The checksum field or the covered range lies past the end of the buffer.
    OutOfBounds,
    /// Not an IPv4 header (too short, wrong version, IHL below 5 or past the buffer).
    BadIpv4Header,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Error::OutOfBounds => "checksum offsets past the end of the frame",
            Error::BadIpv4Header => "not an IPv4 header",
        })
    }
}

impl std::error::Error for Error {}

/// Complete a `CHECKSUM_PARTIAL` checksum in place: the 16-bit field at
/// `csum_start + csum_offset` holds the pseudo-header sum; sum everything from
/// `csum_start` to the end of `frame` and store the complement there. A result of zero is
/// stored as `0xffff` (RFC 768 for UDP; equivalent for TCP), as Linux's
/// `skb_checksum_help` does.
pub fn complete_partial(
    frame: &mut [u8],
    csum_start: usize,
    csum_offset: usize,
) -> Result<(), Error> {
    let field = csum_start
        .checked_add(csum_offset)
        .ok_or(Error::OutOfBounds)?;
    if field.checked_add(2).is_none_or(|end| end > frame.len()) {
        return Err(Error::OutOfBounds);
    }
    let covered = frame.get(csum_start..).ok_or(Error::OutOfBounds)?;
    let c = match checksum(covered) {
        0 => 0xffff,
        c => c,
    };
    frame
        .get_mut(field..field + 2)
        .ok_or(Error::OutOfBounds)?
        .copy_from_slice(&c.to_be_bytes());
    Ok(())
}

/// Compute and store the header checksum of the IPv4 header at the start of `ip`
/// (its IHL says how long it is).
pub fn fill_ipv4_header(ip: &mut [u8]) -> Result<(), Error> {
    let first = *ip.first().ok_or(Error::BadIpv4Header)?;
    let ihl = usize::from(first & 0x0f) * 4;
    if first >> 4 != 4 || ihl < 20 {
        return Err(Error::BadIpv4Header);
    }
    let hdr = ip.get_mut(..ihl).ok_or(Error::BadIpv4Header)?;
    hdr[10] = 0;
    hdr[11] = 0;
    let c = checksum(hdr);
    hdr[10..12].copy_from_slice(&c.to_be_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference: RFC 1071 §4.1, 16-bit words, one at a time.
    fn reference(data: &[u8]) -> u16 {
        let mut sum: u32 = 0;
        for c in data.chunks(2) {
            let w = u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]);
            sum += u32::from(w);
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    fn bytes(n: usize, seed: u32) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect()
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 §3: 00 01 f2 03 f4 f5 f6 f7 sums to ddf2.
        let d = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(Sum::new().add_bytes(&d).fold(), 0xddf2);
        assert_eq!(checksum(&d), !0xddf2);
    }

    #[test]
    fn matches_the_reference_at_every_length() {
        for n in 0..300 {
            let d = bytes(n, n as u32 + 7);
            assert_eq!(checksum(&d), reference(&d), "len {n}");
        }
        let big = bytes(65_535, 99);
        assert_eq!(checksum(&big), reference(&big));
        assert_eq!(checksum(&[0xff; 65_536]), reference(&[0xff; 65_536]));
    }

    #[test]
    fn split_sums_equal_whole_sums_even_at_odd_offsets() {
        let d = bytes(257, 3);
        for a in 0..d.len() {
            for b in [a, (a + 1).min(d.len()), (a + 3).min(d.len()), d.len()] {
                let s = Sum::new()
                    .add_bytes(&d[..a])
                    .add_bytes(&d[a..b])
                    .add_bytes(&d[b..]);
                assert_eq!(s.checksum(), reference(&d), "split {a}/{b}");
            }
        }
    }

    #[test]
    fn verify_accepts_a_filled_checksum() {
        let mut d = bytes(101, 5);
        d[10] = 0;
        d[11] = 0;
        let c = checksum(&d);
        d[10..12].copy_from_slice(&c.to_be_bytes());
        assert!(verify(&d));
        d[50] ^= 1;
        assert!(!verify(&d));
    }

    #[test]
    fn pseudo_headers() {
        let (s, d) = (Ipv4Addr::new(172, 17, 0, 2), Ipv4Addr::new(172, 17, 0, 1));
        let words: u32 = 0xac11 + 0x0002 + 0xac11 + 0x0001 + 17 + 13;
        let want = ((words & 0xffff) + (words >> 16)) as u16;
        assert_eq!(pseudo_v4(s, d, 17, 13).fold(), want);
        let mut raw = s.octets().to_vec();
        raw.extend_from_slice(&d.octets());
        assert_eq!(pseudo_raw(&raw, 17, 13).fold(), want);
        let (s6, d6): (Ipv6Addr, Ipv6Addr) = (
            "fd00::2".parse().expect("v6"),
            "2001:db8::1".parse().expect("v6"),
        );
        let mut raw6 = s6.octets().to_vec();
        raw6.extend_from_slice(&d6.octets());
        assert_eq!(
            pseudo_v6(s6, d6, 6, 70_000).fold(),
            pseudo_raw(&raw6, 6, 70_000).fold()
        );
    }

    #[test]
    fn incremental_updates_match_recomputation() {
        let mut d = bytes(64, 11);
        d[6] = 0;
        d[7] = 0;
        let c0 = checksum(&d);
        // One word.
        let old = u16::from_be_bytes([d[20], d[21]]);
        let mut e = d.clone();
        e[20..22].copy_from_slice(&0xbeefu16.to_be_bytes());
        assert_eq!(update(c0, old, 0xbeef), checksum(&e));
        // A 32-bit value.
        let old32 = u32::from_be_bytes([d[12], d[13], d[14], d[15]]);
        let mut f = d.clone();
        f[12..16].copy_from_slice(&0x0a00_0002u32.to_be_bytes());
        assert_eq!(update_u32(c0, old32, 0x0a00_0002), checksum(&f));
        // 16 bytes (an IPv6 address).
        let mut g = d.clone();
        let new = [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9];
        g[32..48].copy_from_slice(&new);
        assert_eq!(update_bytes(c0, &d[32..48], &new), checksum(&g));
        // The result verifies in place.
        g[6..8].copy_from_slice(&update_bytes(c0, &d[32..48], &new).to_be_bytes());
        assert!(verify(&g));
    }

    #[test]
    fn partial_completion_and_bounds() {
        // UDP 172.17.0.2:5000 -> 172.17.0.1:53 "hello", field holding the pseudo sum.
        let (s, d) = (Ipv4Addr::new(172, 17, 0, 2), Ipv4Addr::new(172, 17, 0, 1));
        let mut udp = vec![0x13, 0x88, 0x00, 0x35, 0x00, 0x0d, 0, 0];
        udp.extend_from_slice(b"hello");
        let mut f = vec![0xee; 34];
        f.extend_from_slice(&udp);
        let p = pseudo_v4(s, d, 17, 13).fold();
        f[40..42].copy_from_slice(&p.to_be_bytes());
        complete_partial(&mut f, 34, 6).expect("in bounds");
        assert!(pseudo_v4(s, d, 17, 13).add_bytes(&f[34..]).fold() == 0xffff);
        assert_eq!(complete_partial(&mut f, 34, 13), Err(Error::OutOfBounds));
        assert_eq!(complete_partial(&mut f, 100, 0), Err(Error::OutOfBounds));
        assert_eq!(
            complete_partial(&mut f, usize::MAX, usize::MAX),
            Err(Error::OutOfBounds)
        );
        assert_eq!(complete_partial(&mut [], 0, 0), Err(Error::OutOfBounds));
    }

    #[test]
    fn ipv4_header_fill() {
        let mut ip = vec![
            0x45, 0, 0, 0x54, 0x12, 0x34, 0x40, 0, 64, 1, 0xaa, 0xbb, 10, 0, 0, 2, 10, 0, 0, 1,
        ];
        ip.extend_from_slice(&[9; 8]);
        fill_ipv4_header(&mut ip).expect("ipv4");
        assert!(verify(&ip[..20]));
        assert_eq!(fill_ipv4_header(&mut ip[..19]), Err(Error::BadIpv4Header));
        assert_eq!(fill_ipv4_header(&mut []), Err(Error::BadIpv4Header));
        ip[0] = 0x44;
        assert_eq!(fill_ipv4_header(&mut ip), Err(Error::BadIpv4Header));
        ip[0] = 0x65;
        assert_eq!(fill_ipv4_header(&mut ip), Err(Error::BadIpv4Header));
    }
}
