//! tapnet-vxlan: the overlay's data plane, RFC 7348 VXLAN.
//!
//! * [`header`]: the 8-byte VXLAN header ([`header::VxlanHeader`], a checked view),
//!   [`header::Vni`], and [`header::encap`] / [`header::decap`], pure functions over
//!   caller-owned buffers. The outer UDP/IP headers are the kernel's: tunnels send
//!   over a UDP socket (default port [`header::VXLAN_PORT`]).
//! * [`table`]: the [`table::VtepTable`], per VNI: remote MAC → VTEP address (static
//!   entries from the control plane, learned entries from the data plane, aged with
//!   `now` passed in) and the flood list used for head-end replication.
//! * [`suppress`]: ARP requests and IPv6 neighbour solicitations for addresses the
//!   control plane knows are answered locally ([`suppress::NeighTable`]), never tunnelled.
//! * [`port`]: [`port::VxlanPort`], the tunnel as a port of a network's switch
//!   (a [`tapnet_switch::runtime::FrameIo`] over a non-blocking UDP socket).
//! * [`crypt`]: encrypted overlays: AES-256-GCM sealing of whole datagrams
//!   ([`crypt::seal`] / [`crypt::open`]) and a port's [`crypt::KeyRing`].
//! * [`udp`]: the UDP I/O: batches of datagrams sent with segmentation offload
//!   (`UDP_SEGMENT`, `sendmmsg` for replication) and read with `UDP_GRO` + `recvmmsg`,
//!   with run-time fallbacks.
//! * [`gather`]: a TSO super-frame cut into VXLAN datagrams sent with `sendmsg` iovecs
//!   (headers from a small buffer, payload from the switch's frame: no copy).
//! * [`coalesce`]: received TCP segments of one flow merged back into a GSO super-frame
//!   (software GRO) for the tap.
//! * [`demux`]: [`demux::VxlanSocket`], the daemon's one UDP socket and the dispatcher
//!   that hands each datagram to the port of its VNI.
//!
//! Common contract: the pure modules read no clock and do no I/O; every function that
//! reads bytes a peer supplied checks the length first and indexes only within what the
//! check proved, so **nothing here panics after the length check**, on any input.
#![forbid(unsafe_code)]

pub mod coalesce;
pub mod crypt;
pub mod demux;
pub mod gather;
pub mod header;
pub mod port;
pub mod suppress;
pub mod table;
pub mod udp;

pub use crypt::{KeyMaterial, KeySet};
pub use demux::{DemuxStatsSnapshot, VxlanSocket};
pub use header::{decap, encap, Vni, VxlanHeader};
pub use port::{VxlanControl, VxlanPort, VxlanStats, VxlanStatsSnapshot};
pub use suppress::NeighTable;
pub use table::{Dest, TableConfig, VtepTable};
