//! Ethernet MAC addresses.
//!
//! Contract:
//!
//! * [`MacAddr`] is six octets in wire order. `Display` (and `Debug`) print the canonical
//!   lowercase `02:42:0a:00:00:02`; `FromStr` accepts exactly six colon- or
//!   hyphen-separated groups of two hex digits, either case, and says what is wrong
//!   otherwise ([`ParseMacError`]). Parsing then formatting gives the canonical form.
//! * The predicates look at the I/G bit (group), the U/L bit (locally administered) and
//!   the all-ones/all-zero patterns only; none of them panics.
//! * [`MacAddr::to_u64`] packs the address into the low 48 bits of a `u64` (big-endian
//!   octet order), the key layout of the switch's FDB; [`MacAddr::from_u64`] inverts it.

use std::fmt;
use std::str::FromStr;

/// A 48-bit Ethernet MAC address, octets in wire order.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// The broadcast address `ff:ff:ff:ff:ff:ff`.
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);
    /// The all-zero address `00:00:00:00:00:00`.
    pub const ZERO: MacAddr = MacAddr([0; 6]);

    /// The address's octets.
    pub const fn octets(self) -> [u8; 6] {
        self.0
    }

    /// True for group (multicast and broadcast) addresses: the I/G bit of the first octet.
    pub const fn is_multicast(self) -> bool {
        self.0[0] & 1 != 0
    }

    /// True for individual (unicast) addresses: the I/G bit is clear. `00:..:00` counts
    /// as unicast here; combine with [`MacAddr::is_zero`] to refuse it.
    pub const fn is_unicast(self) -> bool {
        !self.is_multicast()
    }

    /// True for `ff:ff:ff:ff:ff:ff`.
    pub fn is_broadcast(self) -> bool {
        self == Self::BROADCAST
    }

    /// True for `00:00:00:00:00:00`.
    pub fn is_zero(self) -> bool {
        self == Self::ZERO
    }

    /// True for locally administered addresses (the U/L bit of the first octet), like the
    /// `02:42:…` addresses tapnet gives endpoints.
    pub const fn is_local(self) -> bool {
        self.0[0] & 2 != 0
    }

    /// The address packed into the low 48 bits of a `u64` (big-endian octet order).
    pub const fn to_u64(self) -> u64 {
        let m = self.0;
        u64::from_be_bytes([0, 0, m[0], m[1], m[2], m[3], m[4], m[5]])
    }

    /// Inverse of [`MacAddr::to_u64`]; the upper 16 bits are ignored.
    pub const fn from_u64(v: u64) -> MacAddr {
        let b = v.to_be_bytes();
        MacAddr([b[2], b[3], b[4], b[5], b[6], b[7]])
    }
}

impl From<[u8; 6]> for MacAddr {
    fn from(octets: [u8; 6]) -> MacAddr {
        MacAddr(octets)
    }
}

impl From<MacAddr> for [u8; 6] {
    fn from(mac: MacAddr) -> [u8; 6] {
        mac.0
    }
}

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

/// Why a string is not a MAC address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParseMacError {
    /// Not six groups (the count found).
    GroupCount(usize),
    /// Group `index` (0-based) is not two hex digits.
    BadGroup {
        /// Which group.
        index: usize,
        /// What it was.
        group: String,
    },
    /// Both `:` and `-` are used as separators.
    MixedSeparators,
}

impl fmt::Display for ParseMacError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseMacError::GroupCount(n) => write!(
                f,
                "expected 6 groups of 2 hex digits separated by ':', found {n} group{}",
                if *n == 1 { "" } else { "s" }
            ),
            ParseMacError::BadGroup { index, group } => {
                write!(f, "group {} ({group:?}) is not 2 hex digits", index + 1)
            }
            ParseMacError::MixedSeparators => write!(f, "mixes ':' and '-' as separators"),
        }
    }
}

impl std::error::Error for ParseMacError {}

impl FromStr for MacAddr {
    type Err = ParseMacError;

    /// Parse `aa:bb:cc:dd:ee:ff` (or `aa-bb-cc-dd-ee-ff`), hex digits of either case.
    fn from_str(s: &str) -> Result<MacAddr, ParseMacError> {
        let sep = match (s.contains(':'), s.contains('-')) {
            (true, true) => return Err(ParseMacError::MixedSeparators),
            (false, true) => '-',
            _ => ':',
        };
        let groups = s.split(sep).count();
        if groups != 6 {
            return Err(ParseMacError::GroupCount(groups));
        }
        let mut out = [0u8; 6];
        for (index, (group, slot)) in s.split(sep).zip(out.iter_mut()).enumerate() {
            let ok = group.len() == 2 && group.bytes().all(|b| b.is_ascii_hexdigit());
            *slot = match u8::from_str_radix(group, 16) {
                Ok(v) if ok => v,
                _ => {
                    return Err(ParseMacError::BadGroup {
                        index,
                        group: group.to_string(),
                    })
                }
            };
        }
        Ok(MacAddr(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_debug_and_packing() {
        let m = MacAddr([0x02, 0x42, 0x0a, 0x00, 0x00, 0x02]);
        assert_eq!(m.to_string(), "02:42:0a:00:00:02");
        assert_eq!(format!("{m:?}"), "02:42:0a:00:00:02");
        assert_eq!(m.to_u64(), 0x0242_0a00_0002);
        assert_eq!(MacAddr::from_u64(m.to_u64()), m);
        assert_eq!(MacAddr::from_u64(0xffff_0242_0a00_0002), m);
        assert_eq!(<[u8; 6]>::from(m), m.octets());
        assert_eq!(MacAddr::from(m.0), m);
    }

    #[test]
    fn predicates() {
        let m = MacAddr([0x02, 0x42, 0x0a, 0x00, 0x00, 0x02]);
        assert!(m.is_unicast() && !m.is_multicast() && m.is_local());
        assert!(!m.is_broadcast() && !m.is_zero());
        assert!(MacAddr::BROADCAST.is_broadcast() && MacAddr::BROADCAST.is_multicast());
        let mcast = MacAddr([0x01, 0x00, 0x5e, 0, 0, 1]);
        assert!(mcast.is_multicast() && !mcast.is_unicast() && !mcast.is_broadcast());
        assert!(MacAddr::default().is_zero() && MacAddr::ZERO.is_unicast());
        assert!(!MacAddr([0x00, 0x1b, 0x21, 1, 2, 3]).is_local());
    }

    #[test]
    fn parse_round_trips_and_normalises() {
        for s in [
            "02:42:0a:00:00:02",
            "ff:ff:ff:ff:ff:ff",
            "00:00:00:00:00:00",
        ] {
            let m: MacAddr = s.parse().expect("valid");
            assert_eq!(m.to_string(), s);
        }
        let m: MacAddr = "02:AA:bb:cc:dd:01".parse().expect("mixed case");
        assert_eq!(m.to_string(), "02:aa:bb:cc:dd:01");
        let h: MacAddr = "02-aa-bb-cc-dd-01".parse().expect("hyphens");
        assert_eq!(h, m);
    }

    #[test]
    fn parse_errors_say_what_is_wrong() {
        let err = |s: &str| s.parse::<MacAddr>().expect_err(s);
        assert_eq!(err("02:42"), ParseMacError::GroupCount(2));
        assert_eq!(err(""), ParseMacError::GroupCount(1));
        assert_eq!(err("02:42:0a:00:00:02:03"), ParseMacError::GroupCount(7));
        assert_eq!(
            err("02:42:zz:00:00:01"),
            ParseMacError::BadGroup {
                index: 2,
                group: "zz".into()
            }
        );
        assert!(matches!(
            err("2:42:0a:00:00:02"),
            ParseMacError::BadGroup { index: 0, .. }
        ));
        assert!(matches!(
            err("+2:42:0a:00:00:02"),
            ParseMacError::BadGroup { index: 0, .. }
        ));
        assert!(matches!(
            err("02:42:0a:00:00:éé"),
            ParseMacError::BadGroup { index: 5, .. }
        ));
        assert_eq!(err("02:42-0a:00:00:02"), ParseMacError::MixedSeparators);
        assert_eq!(
            err("02:42:zz:00:00:01").to_string(),
            "group 3 (\"zz\") is not 2 hex digits"
        );
        assert_eq!(
            err("02:42").to_string(),
            "expected 6 groups of 2 hex digits separated by ':', found 2 groups"
        );
    }
}
