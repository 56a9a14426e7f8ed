//! tapnet-wire: the byte-level layer the switch, the gateway and the coming VXLAN code
//! share. No I/O, no clock, no allocation except where a function says so, no `unsafe`.
//!
//! * [`vnet`]: a checked view over the virtio-net header that precedes every frame on a
//!   port ([`vnet::VnetHdr`]), its constants, and [`vnet::VnetHdrRepr`] to build one.
//! * [`checksum`]: the one Internet checksum (RFC 1071 sum and fold, pseudo-headers,
//!   RFC 1624 incremental updates, `CHECKSUM_PARTIAL` completion).
//! * [`gso`]: software segmentation of TCP (TSO4/TSO6) and UDP (USO, UFO) super-frames
//!   described by a virtio-net header into wire-size frames, written into caller-owned
//!   buffers, every checksum complete.
//! * [`uso`]: the reverse of USO: consecutive UDP datagrams of one flow merged into one
//!   super-frame for a tap (software GRO for UDP).
//! * [`mac`]: [`MacAddr`], with `aa:bb:cc:dd:ee:ff` formatting and parsing.
//!
//! Common contract: every function that reads bytes a peer supplied checks the length
//! first (`first_chunk`, `get`, a checked constructor) and indexes only within what that
//! check proved, so **nothing here panics after the length check**, on any input;
//! malformed input is an `Err`.
#![forbid(unsafe_code)]

pub mod checksum;
pub mod gso;
pub mod mac;
pub mod uso;
pub mod vnet;

pub use mac::MacAddr;

/// Length of an untagged Ethernet II header (destination, source, ethertype).
pub const ETH_HDR_LEN: usize = 14;
/// Ethertype of IPv4.
pub const ETHERTYPE_IPV4: u16 = 0x0800;
/// Ethertype of ARP.
pub const ETHERTYPE_ARP: u16 = 0x0806;
/// Ethertype of an 802.1Q VLAN tag.
pub const ETHERTYPE_VLAN: u16 = 0x8100;
/// Ethertype of IPv6.
pub const ETHERTYPE_IPV6: u16 = 0x86dd;
/// IP protocol number of TCP.
pub const IPPROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const IPPROTO_UDP: u8 = 17;
