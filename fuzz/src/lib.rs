//! Shared pieces of tapnet's fuzz targets (`fuzz/fuzz_targets/*.rs`): the input format
//! and the fixture every target builds its state from.
//!
//! Input format: most targets read their input as a configuration byte and then a
//! sequence of *records*, each `[tag: u8][len: u16 little-endian][len bytes]`; a record
//! cut short by the end of the input takes what is left. The tag picks the operation
//! (a frame from a port, time passing, a control-plane change...) and, in its high bits,
//! a port. `examples/seeds.rs` writes the seed corpora in this format from real frames.
//!
//! The fixture is one network: IPv4 10.0.0.0/24 and IPv6 fd00::/64, gateway 10.0.0.1 /
//! fd00::1 with MAC [`GW_MAC`], endpoints `10.0.0.(10+i)` / `fd00::(10+i)` with MAC
//! [`ep_mac`]`(i)` on switch port `i` (port [`GW_PORT`] is the gateway's).

use std::net::{Ipv4Addr, Ipv6Addr};

/// The gateway's MAC.
pub const GW_MAC: [u8; 6] = [0x02, 0x42, 0x0a, 0x00, 0x00, 0x01];
/// The gateway's IPv4 address.
pub const GW_V4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
/// The gateway's IPv6 address.
pub const GW_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
/// The gateway's switch port.
pub const GW_PORT: u32 = 0;
/// Switch ports in the fixture: the gateway's and four endpoints'.
pub const PORTS: u32 = 5;

/// MAC of the endpoint on port `i`.
pub fn ep_mac(i: u32) -> [u8; 6] {
    [0x02, 0x42, 0x0a, 0x00, 0x00, 10 + i as u8]
}

/// IPv4 address of the endpoint on port `i`.
pub fn ep_v4(i: u32) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 0, 10 + i as u8)
}

/// IPv6 address of the endpoint on port `i`.
pub fn ep_v6(i: u32) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 10 + i as u16)
}

/// A reader over fuzz input: never panics, yields zeros past the end.
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    /// Read `data`.
    pub fn new(data: &'a [u8]) -> Input<'a> {
        Input { data }
    }

    /// True when everything was read.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The next byte (0 past the end).
    pub fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    /// The next little-endian u16 (zero-filled past the end).
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }

    /// The next `n` bytes, or what is left.
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (a, b) = self.data.split_at(n);
        self.data = b;
        a
    }

    /// The next record: `(tag, body)`; `None` at the end.
    pub fn record(&mut self) -> Option<(u8, &'a [u8])> {
        if self.data.is_empty() {
            return None;
        }
        let tag = self.byte();
        let len = usize::from(self.u16());
        Some((tag, self.bytes(len)))
    }
}

/// Append one record to `out` (the seed generator's side of [`Input::record`]).
pub fn push_record(out: &mut Vec<u8>, tag: u8, body: &[u8]) {
    let len = u16::try_from(body.len()).unwrap_or(u16::MAX);
    out.push(tag);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&body[..usize::from(len)]);
}

/// The fixed AES-256 key of the encrypted-overlay fuzzing (`vxlan_packet`), id 7.
pub const VXLAN_KEY: [u8; 32] = [0x5a; 32];
/// Its key id.
pub const VXLAN_KEY_ID: u32 = 7;
/// The VNI of the fuzzed tunnel port.
pub const VXLAN_VNI: u32 = 4242;
