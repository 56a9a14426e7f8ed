//! The VXLAN tunnel as a port of a network's switch.
//!
//! Contract:
//!
//! * A [`VxlanPort`] is a [`FrameIo`] over one non-blocking [`UdpSocket`] carrying **one
//!   VNI**: either its own socket ([`VxlanPort::new`]) or, for the daemon's one socket
//!   shared by every VNI, a port made by [`crate::demux::VxlanSocket::port`], which sends
//!   on the shared socket and receives through the dispatcher, or reads the socket itself
//!   while it is the socket's only port (see [`crate::demux`]).
//! * Local-only MACs ([`VxlanControl::SetLocalOnly`]: the overlay's anycast gateway,
//!   whose IP and MAC every host answers itself): a frame to or from one of them is
//!   never tunnelled (dropped at send, counted `local_only`) and never taken from the
//!   tunnel (dropped at receive, counted `local_only`, not learned).
//! * [`FrameIo::send`] takes a frame from the switch (a virtio-net header, then the
//!   Ethernet frame). A GSO super-frame is cut once into wire-size frames and a
//!   `NEEDS_CSUM` checksum completed ([`tapnet_wire::gso::Segmenter`]); each frame is
//!   encapsulated ([`crate::header`]) in place in the port's transmit buffer, the
//!   datagrams laid end to end a fixed stride apart, and the whole batch is sent to the
//!   VTEP the [`VtepTable`] gives for the destination MAC, or to every VTEP of the VNI
//!   (head-end replication of broadcast, multicast and unknown unicast), as UDP GSO sends
//!   (`UDP_SEGMENT`; `sendmmsg` to several VTEPs; plain datagrams where the kernel
//!   refuses offload, see [`crate::udp`]). **Every datagram to a peer goes through one
//!   function, `VxlanPort::transmit`** (a batch of same-stride datagrams and their
//!   destination): the one place where datagrams are sealed (encrypted networks, below).
//!   The one exception, for networks in clear only: a TCP super-frame (`GSO_TCPV4/6`) of
//!   more than one segment is not copied at all ([`crate::gather`]): each segment's
//!   headers (VXLAN to TCP, checksums complete) are written to a small buffer and the
//!   datagrams go out as `sendmsg` iovecs — header, then the payload's slice of the
//!   switch's frame — through `VxlanPort::transmit_cuts`, same batching, GSO and
//!   fallbacks, same bytes on the wire (counted `tx_gathered`); a port with keys never
//!   takes that way (`transmit_cuts` refuses it). [`FrameIo::send_batch`] goes one step
//!   further: consecutive such frames to one VTEP (a unicast entry), of one header
//!   length and MSS, each but the last a whole number of segments (TCP's TSO frames
//!   are), are sent as *one* gathered batch (a *train*, at most 16 frames), so the UDP
//!   GSO sends are full: a 46-segment frame alone needs a send of 44 datagrams and one
//!   of 2 (a send carries at most ~64 KiB).
//!   A frame
//!   that cannot be segmented or encapsulated is counted
//!   ([`VxlanStatsSnapshot::tx_invalid`]) and refused with `InvalidData` (the switch
//!   counts a `TxError`); a failed send is counted ([`VxlanStatsSnapshot::tx_errors`]),
//!   and the call fails only if no copy went out.
//! * ARP/NDP suppression: when the port has neighbours ([`VxlanControl::SetNeighbours`],
//!   which must be endpoints behind *other* VTEPs), a query for one of them is not
//!   tunnelled; the reply ([`crate::suppress`]) is sent, encapsulated, to the port's own
//!   socket so that it comes back through [`FrameIo::recv`] (the worker only reads a port
//!   whose fd is readable) and is switched to the asker like a frame from the tunnel.
//! * [`FrameIo::recv`] reads a *batch* (from its own socket, with `UDP_GRO`: several
//!   datagrams of one sender; or from the dispatcher: a run of its VNI's datagrams) and
//!   hands its datagrams out one frame per call: each is opened (encrypted networks,
//!   below), decapsulated, its VNI checked,
//!   the inner frame copied behind a virtio-net header and the inner source MAC learned
//!   (→ the sender's address; not for the port's own suppression replies). Consecutive
//!   datagrams that continue the same TCP flow are merged into that frame
//!   ([`crate::coalesce`]: one GSO super-frame, `NEEDS_CSUM` + `GSO_TCPV4/6`, so the tap
//!   takes one write for up to 64 KiB); other frames come with an all-zero header.
//!   Malformed datagrams, other VNIs and frames that do not fit the buffer are dropped
//!   and counted, never returned and never a panic; an ICMP error reported on the
//!   socket is counted and skipped, so the port stays in the poll.
//! * Known VTEPs only: a batch is accepted only from an IP address of the VNI's peers
//!   (the flood list, [`VxlanControl::SetPeers`]: the control plane's nodes or the static
//!   `peers` option) or from the port's own address (its suppression replies); anything
//!   else is dropped and counted ([`VxlanStatsSnapshot::unknown_vtep`]) before it is
//!   looked at, and nothing is learned from it. Peers are known by IP address, not port:
//!   a VTEP may send from any source port (Linux's `vxlan` does).
//! * [`FrameIo::control`] takes a [`VxlanControl`] in a
//!   [`PortControl::Custom`]: the VNI's peer list (flood list), static MAC → VTEP
//!   entries, and the neighbours answered locally, each either replaced whole
//!   (`SetPeers`, `SetStatics`, `SetNeighbours`: a re-sync) or changed one entry at a
//!   time (`AddPeer` / `RemovePeer`, `AddRemote` / `RemoveRemote`: one endpoint's
//!   static entry and neighbours, the work of one cluster event, O(1) but for the
//!   known-VTEP set a peer change walks). The known VTEPs follow the flood list. It answers [`PortReply::Done`]
//!   ([`VxlanControl::Stats`]: a [`VxlanStatsSnapshot`] in a [`PortReply::Custom`]).
//! * Split horizon: the switch never sends a frame back out of the port it came in on,
//!   so nothing that came from the tunnel goes back into it; a single tunnel port per
//!   network needs nothing more.
//! * MTU: the port does not enforce the inner MTU. The driver gives endpoints an MTU of
//!   underlay MTU − [`crate::header::OVERHEAD_V4`] (50); a datagram larger than the
//!   underlay's is the kernel's to fragment or refuse (counted as a `tx_errors`).
//! * Time: learned entries are stamped with a monotonic clock started with the port and
//!   aged ([`VtepTable::expire`]) at most once a second, from `recv`.
//! * Encryption ([`VxlanControl::SetKeys`], see [`crate::crypt`]): once a port has a
//!   key set it never sends in clear. In `VxlanPort::transmit` every datagram of the
//!   batch is sealed (it grows by [`crypt::OVERHEAD`]) and the batch re-laid
//!   `stride + OVERHEAD` apart, so it still goes out as one UDP GSO send (the last
//!   datagram may be shorter); suppression replies, sent to the port itself, are sealed
//!   too. No send key: nothing of the batch is sent, its frames counted `tx_no_key`.
//!   On receive, the known-VTEP check comes first; then every datagram is opened in
//!   place right before it is decapsulated, the first of a frame and each one the
//!   merging looks at alike (so merging sees only clear, authenticated segments). One
//!   that fails (truncated, unknown key id, tag mismatch, replayed) is dropped and
//!   counted `auth_failed`, nothing of it is learned, and the datagrams after it are
//!   handed out (and merged) as usual.
//! * Counters are atomics the worker writes and anyone may read ([`VxlanPort::stats`]).

use crate::coalesce::Coalescer;
use crate::crypt::{self, KeyRing, KeySet};
use crate::demux::DemuxRx;
use crate::gather::TcpCut;
use crate::header::{self, Vni, VXLAN_HDR_LEN};
use crate::suppress::NeighTable;
use crate::table::{Dest, Learned, TableConfig, VtepTable};
use crate::udp::{self, Sender};
use std::io::{self, IoSlice};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::ops::Range;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tapnet_switch::runtime::{FrameIo, Frames, PortControl, PortReply, SendBatchError};
use tapnet_wire::gso::Segmenter;
use tapnet_wire::vnet::{self, VNET_HDR_LEN, ZERO_HDR};
use tapnet_wire::MacAddr;

/// Largest UDP payload over IPv4, the size of the port's transmit buffer.
const MAX_DATAGRAM: usize = 65_535;
/// Most frames sent as one gathered batch by `send_batch` (a *train*).
const MAX_TRAIN: usize = 16;
/// How often, in milliseconds, learned entries are aged.
const EXPIRE_EVERY_MS: u64 = 1000;

/// A control-plane message for a [`VxlanPort`], sent as
/// `PortControl::Custom(Box::new(msg))` through
/// [`tapnet_switch::runtime::NetworkHandle::control_port`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum VxlanControl {
    /// Replace the VNI's flood list: the VTEPs of the network.
    SetPeers(Vec<SocketAddr>),
    /// Replace the static MAC → VTEP entries.
    SetStatics(Vec<(MacAddr, SocketAddr)>),
    /// Replace the neighbours (IP → MAC, endpoints behind other VTEPs) answered locally.
    SetNeighbours(Vec<(IpAddr, MacAddr)>),
    /// Add one VTEP to the VNI's flood list (and to the known VTEPs).
    AddPeer(SocketAddr),
    /// Take one VTEP out of the VNI's flood list (and out of the known VTEPs, unless
    /// another peer has its IP address).
    RemovePeer(SocketAddr),
    /// One remote endpoint: `mac` is behind `vtep` (a static entry) and answers for
    /// `ips` (neighbours).
    AddRemote {
        /// The endpoint's MAC.
        mac: MacAddr,
        /// Its host's VTEP.
        vtep: SocketAddr,
        /// Its addresses.
        ips: Vec<IpAddr>,
    },
    /// Forget one remote endpoint: its static entry if it still points at `vtep`, and
    /// each of `ips` still answered with `mac` (nothing when `mac`'s entry points at
    /// another VTEP: the endpoint moved there).
    RemoveRemote {
        /// The endpoint's MAC.
        mac: MacAddr,
        /// Its host's VTEP.
        vtep: SocketAddr,
        /// Its addresses.
        ips: Vec<IpAddr>,
    },
    /// Replace the local-only MACs: frames to or from them never cross the tunnel.
    SetLocalOnly(Vec<MacAddr>),
    /// Seal every datagram with these keys from now on (see [`crate::crypt`]); once
    /// set, the port never sends in clear (an empty set: nothing is sent).
    SetKeys(KeySet),
    /// Answer a [`VxlanStatsSnapshot`] (in a [`PortReply::Custom`]).
    Stats,
    /// Answer the VNI's MAC → VTEP entries, static and learned, as a
    /// `Vec<(MacAddr, SocketAddr)>` in a [`PortReply::Custom`] (for `network fdb`).
    Entries,
}

/// A [`VxlanPort`]'s counters (single writer: the worker).
#[derive(Debug, Default)]
pub struct VxlanStats {
    tx_frames: AtomicU64,
    tx_datagrams: AtomicU64,
    tx_flooded: AtomicU64,
    tx_errors: AtomicU64,
    tx_invalid: AtomicU64,
    suppressed: AtomicU64,
    rx_datagrams: AtomicU64,
    rx_malformed: AtomicU64,
    rx_wrong_vni: AtomicU64,
    rx_too_long: AtomicU64,
    rx_errors: AtomicU64,
    learned: AtomicU64,
    learn_refused: AtomicU64,
    local_only: AtomicU64,
    unknown_vtep: AtomicU64,
    rx_merged: AtomicU64,
    gso_refused: AtomicU64,
    auth_failed: AtomicU64,
    tx_no_key: AtomicU64,
    tx_bytes: AtomicU64,
    rx_bytes: AtomicU64,
    tx_gathered: AtomicU64,
}

/// A copy of a [`VxlanStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VxlanStatsSnapshot {
    /// Frames (after segmentation) encapsulated for the tunnel.
    pub tx_frames: u64,
    /// Datagrams sent (one per frame and destination VTEP).
    pub tx_datagrams: u64,
    /// Frames replicated to the flood list.
    pub tx_flooded: u64,
    /// `send_to` failures.
    pub tx_errors: u64,
    /// Frames from the switch that could not be segmented or encapsulated.
    pub tx_invalid: u64,
    /// ARP/NDP queries answered locally instead of tunnelled.
    pub suppressed: u64,
    /// Good datagrams received and handed to the switch.
    pub rx_datagrams: u64,
    /// Datagrams dropped as not VXLAN (short, I flag clear, inner frame cut).
    pub rx_malformed: u64,
    /// Datagrams dropped for carrying another VNI.
    pub rx_wrong_vni: u64,
    /// Datagrams dropped because the frame did not fit the switch's buffer.
    pub rx_too_long: u64,
    /// Errors reported on the socket (ICMP unreachable and the like), skipped.
    pub rx_errors: u64,
    /// New or moved MAC → VTEP entries learned.
    pub learned: u64,
    /// New MACs refused at the table's limit.
    pub learn_refused: u64,
    /// Frames to or from a local-only MAC kept off the tunnel (either direction).
    pub local_only: u64,
    /// Datagrams dropped because their sender is not a peer of the VNI.
    pub unknown_vtep: u64,
    /// Datagrams merged into the frame before them (receive coalescing), counted in
    /// `rx_datagrams` too.
    pub rx_merged: u64,
    /// Times the kernel refused UDP segmentation offload (sends are plain after the first).
    pub gso_refused: u64,
    /// Datagrams dropped on an encrypted network: not sealed with a key the port
    /// accepts (truncated, unknown key id, tag mismatch: forged or tampered), or
    /// replayed (see [`crate::crypt`]).
    pub auth_failed: u64,
    /// Frames not sent on an encrypted network for want of a send key.
    pub tx_no_key: u64,
    /// UDP payload bytes sent (VXLAN header, sealing and frame; every copy).
    pub tx_bytes: u64,
    /// Inner frame bytes received from the tunnel and handed to the switch.
    pub rx_bytes: u64,
    /// Of `tx_frames`, the segments of TSO super-frames sent *gathered*: headers from a
    /// small buffer, payload straight from the switch's frame (no copy in user space).
    pub tx_gathered: u64,
}

impl VxlanStats {
    /// Copy the counters out.
    pub fn snapshot(&self) -> VxlanStatsSnapshot {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        VxlanStatsSnapshot {
            tx_frames: l(&self.tx_frames),
            tx_datagrams: l(&self.tx_datagrams),
            tx_flooded: l(&self.tx_flooded),
            tx_errors: l(&self.tx_errors),
            tx_invalid: l(&self.tx_invalid),
            suppressed: l(&self.suppressed),
            rx_datagrams: l(&self.rx_datagrams),
            rx_malformed: l(&self.rx_malformed),
            rx_wrong_vni: l(&self.rx_wrong_vni),
            rx_too_long: l(&self.rx_too_long),
            rx_errors: l(&self.rx_errors),
            learned: l(&self.learned),
            learn_refused: l(&self.learn_refused),
            local_only: l(&self.local_only),
            unknown_vtep: l(&self.unknown_vtep),
            rx_merged: l(&self.rx_merged),
            gso_refused: l(&self.gso_refused),
            auth_failed: l(&self.auth_failed),
            tx_bytes: l(&self.tx_bytes),
            rx_bytes: l(&self.rx_bytes),
            tx_gathered: l(&self.tx_gathered),
            tx_no_key: l(&self.tx_no_key),
        }
    }
}

/// The VTEPs `dest` stands for; a flood of `frames` frames is counted.
fn vteps<'d>(dest: &'d Dest<'_>, stats: &VxlanStats, frames: u64) -> &'d [SocketAddr] {
    match dest {
        Dest::Unicast(addr) => std::slice::from_ref(addr),
        Dest::Flood(all) => {
            bump(&stats.tx_flooded, frames);
            all
        }
    }
}

/// Count what one send did (`refused`: GSO refusals it met); `Ok` if any datagram went
/// out, else its last error.
fn counted(stats: &VxlanStats, sent: crate::udp::Sent, refused: u64) -> io::Result<()> {
    bump(&stats.gso_refused, refused);
    bump(&stats.tx_datagrams, sent.datagrams);
    bump(&stats.tx_bytes, sent.bytes);
    bump(&stats.tx_errors, sent.errors);
    match sent.last_error {
        Some(e) if sent.datagrams == 0 => Err(e),
        _ => Ok(()),
    }
}

/// Add to a counter only the worker writes.
fn bump(c: &AtomicU64, by: u64) {
    c.store(
        c.load(Ordering::Relaxed).wrapping_add(by),
        Ordering::Relaxed,
    );
}

/// Where a port's datagrams come from.
enum Rx {
    /// Its own socket.
    Socket,
    /// The dispatcher of a shared socket: a queue of runs and a doorbell.
    Demux(DemuxRx),
}

/// The batch being handed out: datagrams `stride` apart from one sender.
struct RxBatch {
    buf: Box<[u8]>,
    /// Bytes of datagrams in `buf`.
    len: usize,
    /// Where the next datagram starts.
    pos: usize,
    stride: usize,
    from: SocketAddr,
    /// The datagram at `pos` was opened in place (encrypted network): its clear length.
    opened: Option<usize>,
}

impl RxBatch {
    /// Where the datagram at `pos` ends.
    fn end(&self) -> usize {
        (self.pos + self.stride).min(self.len)
    }

    /// Move past the datagram at `pos`.
    fn advance(&mut self) {
        self.pos = self.end();
        self.opened = None;
    }
}

/// What the batch offers next.
enum Next {
    /// The batch is spent.
    Empty,
    /// The datagram at `pos` failed to open: dropped, counted, skipped.
    Dropped,
    /// The datagram at `pos`, in clear: its bytes in the batch's buffer.
    Ready(Range<usize>),
}

/// The tunnel port of one VNI. See the module docs.
pub struct VxlanPort {
    sock: UdpSocket,
    rx_from: Rx,
    rx: RxBatch,
    sender: Sender,
    local_only: Vec<MacAddr>,
    vni: Vni,
    table: VtepTable,
    /// The IP addresses of the VNI's peers: the only senders accepted.
    peer_ips: Vec<IpAddr>,
    neigh: NeighTable,
    /// Where the port's own suppression replies are sent (and come from).
    self_addr: SocketAddr,
    stats: Arc<VxlanStats>,
    /// Transmit scratch: datagrams (VXLAN header + frame) laid `stride` apart.
    tx: Vec<u8>,
    /// Gathered transmit: each segment's headers (VXLAN to TCP), see [`crate::gather`].
    tx_hdrs: Vec<u8>,
    start: Instant,
    last_expire_ms: u64,
    /// Keys of an encrypted network (`None`: datagrams in clear).
    crypt: Option<KeyRing>,
}

/// Whether a frame starting with `eth` is to or from one of `macs`.
fn local_only_frame(macs: &[MacAddr], eth: &[u8]) -> bool {
    if macs.is_empty() {
        return false;
    }
    let dst = eth.get(..6);
    let src = eth.get(6..12);
    macs.iter()
        .any(|m| dst == Some(&m.0[..]) || src == Some(&m.0[..]))
}

/// `ip`, an IPv4-mapped IPv6 address as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

impl VxlanPort {
    /// A port for `vni` over `sock` (switched to non-blocking, `UDP_GRO` and large
    /// buffers asked for, see [`udp::set_buffers`]), learning within `config`.
    pub fn new(sock: UdpSocket, vni: Vni, config: TableConfig) -> io::Result<VxlanPort> {
        VxlanPort::with_socket(sock, vni, config, true)
    }

    fn with_socket(
        sock: UdpSocket,
        vni: Vni,
        config: TableConfig,
        own: bool,
    ) -> io::Result<VxlanPort> {
        sock.set_nonblocking(true)?;
        if own {
            udp::enable_gro(&sock);
            udp::set_buffers(&sock);
        }
        let local = sock.local_addr()?;
        let self_addr = match local.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => {
                SocketAddr::new(Ipv4Addr::LOCALHOST.into(), local.port())
            }
            IpAddr::V6(ip) if ip.is_unspecified() => {
                SocketAddr::new(Ipv6Addr::LOCALHOST.into(), local.port())
            }
            _ => local,
        };
        let mut table = VtepTable::new(config);
        table.add_vni(vni);
        Ok(VxlanPort {
            sock,
            rx_from: Rx::Socket,
            rx: RxBatch {
                buf: vec![0u8; udp::RECV_BUF].into_boxed_slice(),
                len: 0,
                pos: 0,
                stride: 1,
                from: self_addr,
                opened: None,
            },
            sender: Sender::new(),
            local_only: Vec::new(),
            vni,
            table,
            peer_ips: Vec::new(),
            neigh: NeighTable::new(),
            self_addr,
            stats: Arc::new(VxlanStats::default()),
            tx: vec![0u8; MAX_DATAGRAM],
            tx_hdrs: Vec::new(),
            start: Instant::now(),
            last_expire_ms: 0,
            crypt: None,
        })
    }

    /// A port sending on `sock` (a clone of a shared socket) and receiving from `rx`
    /// (runs of datagrams the dispatcher hands over, see [`crate::demux`]).
    pub(crate) fn demuxed(
        sock: UdpSocket,
        rx: DemuxRx,
        vni: Vni,
        config: TableConfig,
    ) -> io::Result<VxlanPort> {
        // The shared socket was set up by the `VxlanSocket`.
        let mut port = VxlanPort::with_socket(sock, vni, config, false)?;
        port.rx_from = Rx::Demux(rx);
        Ok(port)
    }

    /// Whether a frame starting with `eth` is to or from a local-only MAC.
    fn is_local_only(&self, eth: &[u8]) -> bool {
        local_only_frame(&self.local_only, eth)
    }

    /// The port's counters, live.
    pub fn stats(&self) -> Arc<VxlanStats> {
        Arc::clone(&self.stats)
    }

    /// The VNI.
    pub fn vni(&self) -> Vni {
        self.vni
    }

    /// The socket's local address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.sock.local_addr()
    }

    /// The VTEP table (one VNI).
    pub fn table(&self) -> &VtepTable {
        &self.table
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn apply(&mut self, msg: VxlanControl) -> PortReply {
        match msg {
            VxlanControl::SetPeers(p) => {
                self.peer_ips = p.iter().map(|a| canonical(a.ip())).collect();
                self.table.set_peers(self.vni, &p);
            }
            VxlanControl::AddPeer(p) => {
                self.table.add_peer(self.vni, p);
                let ip = canonical(p.ip());
                if !self.peer_ips.contains(&ip) {
                    self.peer_ips.push(ip);
                }
            }
            VxlanControl::RemovePeer(p) => {
                self.table.remove_peer(self.vni, p);
                let ip = canonical(p.ip());
                let (table, vni) = (&self.table, self.vni);
                if !table.peers(vni).iter().any(|q| canonical(q.ip()) == ip) {
                    self.peer_ips.retain(|q| *q != ip);
                }
            }
            VxlanControl::AddRemote { mac, vtep, ips } => {
                self.table.add_static(self.vni, mac, vtep);
                for ip in ips {
                    self.neigh.insert(self.vni, ip, mac);
                }
            }
            VxlanControl::RemoveRemote { mac, vtep, ips } => {
                let gone = self.table.remove_static(self.vni, mac, vtep);
                // A MAC that moved to another VTEP keeps its addresses (the new record's).
                if !gone && self.table.static_vtep(self.vni, mac).is_some() {
                    return PortReply::Done;
                }
                for ip in ips {
                    self.neigh.remove_if(self.vni, ip, mac);
                }
            }
            VxlanControl::SetStatics(s) => self.table.set_statics(self.vni, &s),
            VxlanControl::SetNeighbours(n) => self.neigh.set_vni(self.vni, &n),
            VxlanControl::SetLocalOnly(m) => self.local_only = m,
            VxlanControl::SetKeys(k) => match &mut self.crypt {
                Some(ring) => ring.update(&k),
                None => self.crypt = Some(KeyRing::new(&k)),
            },
            VxlanControl::Stats => return PortReply::Custom(Box::new(self.stats.snapshot())),
            VxlanControl::Entries => {
                return PortReply::Custom(Box::new(self.table.entries(self.vni)));
            }
        }
        PortReply::Done
    }

    /// Encapsulate the Ethernet frame already at `tx[8..8 + len]` and send it where the
    /// table says. `Ok` if at least one copy went out (or the query was answered).
    fn send_one(&mut self, len: usize) -> io::Result<()> {
        let n = VXLAN_HDR_LEN + len;
        let Some(datagram) = self.tx.get_mut(..n) else {
            bump(&self.stats.tx_invalid, 1);
            return Err(io::ErrorKind::InvalidData.into());
        };
        if header::emit_header(self.vni, datagram).is_err() || len < tapnet_wire::ETH_HDR_LEN {
            bump(&self.stats.tx_invalid, 1);
            return Err(io::ErrorKind::InvalidData.into());
        }
        let (hdr, inner) = datagram.split_at_mut(VXLAN_HDR_LEN);
        // A query a neighbour entry answers: the reply replaces the frame, to ourselves.
        let mut reply = [0u8; VXLAN_HDR_LEN + crate::suppress::NA_LEN + crypt::OVERHEAD];
        if let Some(rlen) = self
            .neigh
            .answer(self.vni, inner, &mut reply[VXLAN_HDR_LEN..])
        {
            reply[..VXLAN_HDR_LEN].copy_from_slice(hdr);
            bump(&self.stats.suppressed, 1);
            // Sealed like every datagram: it comes back through `recv`, which opens it.
            let rlen = VXLAN_HDR_LEN + rlen;
            let rlen = match &mut self.crypt {
                None => rlen,
                Some(ring) => match ring.seal(&mut reply, rlen) {
                    Ok(n) => n,
                    Err(e) => return Err(seal_failed(&self.stats, e, 1)),
                },
            };
            let out = reply.get(..rlen).unwrap_or_default();
            return match self.sock.send_to(out, self.self_addr) {
                Ok(_) => Ok(()),
                Err(e) => {
                    bump(&self.stats.tx_errors, 1);
                    Err(e)
                }
            };
        }
        let dst = inner
            .first_chunk::<6>()
            .map_or(MacAddr::BROADCAST, |d| MacAddr(*d));
        self.transmit(dst, 0..n, n)
    }

    /// **Every datagram to a peer leaves through here**: the datagrams at `tx[range]`
    /// (VXLAN header + frame each, `stride` apart, the last maybe shorter), all for the
    /// inner destination `dst`, are sealed if the port has keys ([`Self::seal_batch`])
    /// and go to the VTEP the table gives for it, or to every VTEP of the VNI. `Ok` if
    /// at least one copy went out. Nothing beyond `range.end` in `tx` is live: sealing
    /// may use it.
    fn transmit(&mut self, dst: MacAddr, range: Range<usize>, stride: usize) -> io::Result<()> {
        let (range, stride) = self.seal_batch(range, stride)?;
        let VxlanPort {
            sock,
            vni,
            table,
            stats,
            tx,
            sender,
            ..
        } = self;
        let Some(batch) = tx.get(range) else {
            bump(&stats.tx_invalid, 1);
            return Err(io::ErrorKind::InvalidData.into());
        };
        let frames = batch.len().div_ceil(stride.max(1)) as u64;
        bump(&stats.tx_frames, frames);
        let dest = table.lookup(*vni, dst);
        let refused = sender.gso_refused();
        let sent = sender.send(sock, batch, stride, vteps(&dest, stats, frames));
        counted(stats, sent, sender.gso_refused() - refused)
    }

    /// The train of frames starting at `frames[i]`, into `cuts` (emptied first): the
    /// longest run (at most [`MAX_TRAIN`]) of TSO frames that `send` would send gathered
    /// (network in clear, not local-only), all to one VTEP (a unicast entry: flooded
    /// frames are not trained), with the same header length and MSS, every one but the
    /// last ending on a full segment, so that their datagrams form one UDP GSO batch.
    fn train<'a>(&self, frames: Frames<'a>, i: usize, cuts: &mut Vec<TcpCut<'a>>) {
        cuts.clear();
        if self.crypt.is_some() {
            return;
        }
        let mut to = None;
        for k in i..frames.len().min(i + MAX_TRAIN) {
            let Some(frame) = frames.get(k) else {
                break;
            };
            let Ok((hdr, eth)) = vnet::split(frame) else {
                break;
            };
            if eth.len() < tapnet_wire::ETH_HDR_LEN || self.is_local_only(eth) {
                break;
            }
            let Some(cut) = TcpCut::new(&hdr, eth) else {
                break;
            };
            let dst = cut.dst_mac().map_or(MacAddr::BROADCAST, MacAddr);
            let Dest::Unicast(addr) = self.table.lookup(self.vni, dst) else {
                break;
            };
            if let Some(prev) = cuts.last() {
                if to != Some(addr)
                    || !prev.ends_full()
                    || prev.header_len() != cut.header_len()
                    || prev.mss() != cut.mss()
                {
                    break;
                }
            }
            to = Some(addr);
            cuts.push(cut);
        }
    }

    /// The gathered twin of [`Self::transmit`], for a port **without keys** (one with
    /// keys refuses: nothing is sent, `tx_invalid`; sealing needs the datagrams whole in
    /// `tx`, so `send` never comes here then): the segments of `cut` (headers written to
    /// `tx_hdrs`, payloads left where they are in the switch's frame) go, as UDP GSO
    /// sends of `sendmsg` iovecs, to the VTEP the table gives for the inner destination,
    /// or to every VTEP of the VNI. `Ok` if at least one copy went out.
    fn transmit_cuts(&mut self, cuts: &[TcpCut<'_>]) -> io::Result<()> {
        let VxlanPort {
            sock,
            vni,
            table,
            stats,
            tx_hdrs,
            sender,
            crypt,
            ..
        } = self;
        if crypt.is_some() {
            bump(&stats.tx_invalid, 1);
            return Err(io::ErrorKind::InvalidInput.into());
        }
        let Some(first) = cuts.first() else {
            return Ok(());
        };
        let (hl, stride) = (first.header_len(), first.stride());
        // One batch: same layout, and every frame but the last ends on a full segment.
        let n = cuts.len();
        let fits = cuts.iter().enumerate().all(|(k, c)| {
            c.header_len() == hl && c.stride() == stride && (k + 1 == n || c.ends_full())
        });
        if !fits {
            bump(&stats.tx_invalid, n as u64);
            return Err(io::ErrorKind::InvalidInput.into());
        }
        let mut end = 0;
        for c in cuts {
            end = c.write_headers(*vni, tx_hdrs, end);
        }
        let segments: usize = cuts.iter().map(|c| c.len()).sum();
        let mut parts = Vec::with_capacity(2 * segments);
        let mut hdrs = tx_hdrs.get(..end).unwrap_or_default().chunks_exact(hl);
        for c in cuts {
            for i in 0..c.len() {
                parts.push(IoSlice::new(hdrs.next().unwrap_or_default()));
                parts.push(IoSlice::new(c.payload(i)));
            }
        }
        let frames = segments as u64;
        bump(&stats.tx_frames, frames);
        bump(&stats.tx_gathered, frames);
        let dst = first.dst_mac().map_or(MacAddr::BROADCAST, MacAddr);
        let dest = table.lookup(*vni, dst);
        let refused = sender.gso_refused();
        let sent = sender.send_gathered(sock, &parts, 2, stride, vteps(&dest, stats, frames));
        counted(stats, sent, sender.gso_refused() - refused)
    }

    /// Seal every datagram of the batch at `tx[range]` (`stride` apart, the last maybe
    /// shorter) if the port has keys: datagram `i` moves to `range.start + i * (stride +
    /// OVERHEAD)` and is sealed there (nonces in send order), so the sealed batch keeps a
    /// fixed stride (UDP GSO) and only the last may be shorter. The batch to send: its
    /// range and stride (unchanged without keys). If any datagram cannot be sealed,
    /// nothing is sent and the batch's frames are counted (`tx_no_key`, or `tx_invalid`).
    fn seal_batch(
        &mut self,
        range: Range<usize>,
        stride: usize,
    ) -> io::Result<(Range<usize>, usize)> {
        let VxlanPort {
            crypt, tx, stats, ..
        } = self;
        let Some(ring) = crypt else {
            return Ok((range, stride));
        };
        let stride = stride.max(1);
        if range.end > tx.len() || range.is_empty() {
            bump(&stats.tx_invalid, 1);
            return Err(io::ErrorKind::InvalidData.into());
        }
        let count = range.len().div_ceil(stride);
        let sealed = stride + crypt::OVERHEAD;
        let len_of = |i: usize| (range.len() - i * stride).min(stride);
        let need = range.start + count * sealed;
        if tx.len() < need {
            tx.resize(need, 0);
        }
        // Back to front: each datagram moves right, never onto one not yet moved.
        for i in (1..count).rev() {
            let from = range.start + i * stride;
            tx.copy_within(from..from + len_of(i), range.start + i * sealed);
        }
        for i in 0..count {
            let at = range.start + i * sealed;
            let res = match tx.get_mut(at..at + sealed) {
                Some(d) => ring.seal(d, len_of(i)),
                None => Err(crypt::Error::BufferTooSmall),
            };
            if let Err(e) = res {
                return Err(seal_failed(stats, e, count as u64));
            }
        }
        let end = range.start + (count - 1) * sealed + len_of(count - 1) + crypt::OVERHEAD;
        Ok((range.start..end, sealed))
    }

    /// The datagram at `rx.pos`, opened in place first if the port has keys (once: the
    /// merging may look at it and leave it for the next frame). One that fails to open
    /// is counted `auth_failed` and skipped.
    fn next_datagram(&mut self) -> Next {
        let rx = &mut self.rx;
        if rx.pos >= rx.len {
            return Next::Empty;
        }
        let end = rx.end();
        let Some(ring) = &mut self.crypt else {
            return Next::Ready(rx.pos..end);
        };
        if let Some(n) = rx.opened {
            return Next::Ready(rx.pos..rx.pos + n);
        }
        let opened = match rx.buf.get_mut(rx.pos..end) {
            Some(d) => {
                let n = d.len();
                ring.open(d, n)
            }
            None => Err(crypt::Error::Truncated),
        };
        match opened {
            Ok(n) => {
                rx.opened = Some(n);
                Next::Ready(rx.pos..rx.pos + n)
            }
            Err(_) => {
                bump(&self.stats.auth_failed, 1);
                rx.advance();
                Next::Dropped
            }
        }
    }

    /// Read the next batch into `self.rx`: from the socket (a GRO batch) or from the
    /// dispatcher (a run of one VNI's datagrams and a trailer). Batches from senders
    /// that are not peers (nor the port itself) are dropped and counted here.
    fn fill(&mut self) -> io::Result<()> {
        let rx = &mut self.rx;
        rx.len = 0;
        rx.pos = 0;
        rx.opened = None;
        let mut start = 0;
        let got = match &mut self.rx_from {
            Rx::Socket => udp::recv_one(
                &self.sock,
                rx.buf.get_mut(..udp::RECV_BUF).unwrap_or_default(),
            ),
            Rx::Demux(d) => match d.next(&self.sock, &mut rx.buf) {
                Ok(Some((r, at))) => {
                    start = at;
                    Ok(r)
                }
                // A batch of several VNIs went to the queues: look again.
                Ok(None) => return Ok(()),
                Err(e) => Err(e),
            },
        };
        let r = match got {
            Ok(r) => r,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionRefused
                        | io::ErrorKind::ConnectionReset
                        | io::ErrorKind::HostUnreachable
                        | io::ErrorKind::NetworkUnreachable
                ) =>
            {
                // An ICMP error reported on the socket: counted, skipped.
                bump(&self.stats.rx_errors, 1);
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let datagrams = r.len.div_ceil(r.stride.max(1)).max(1) as u64;
        if r.truncated {
            bump(&self.stats.rx_too_long, datagrams);
            return Ok(());
        }
        if r.from != self.self_addr && !self.peer_ips.contains(&canonical(r.from.ip())) {
            bump(&self.stats.unknown_vtep, datagrams);
            return Ok(());
        }
        if r.len == 0 {
            bump(&self.stats.rx_malformed, 1);
            return Ok(());
        }
        rx.pos = start;
        rx.len = start + r.len;
        rx.stride = r.stride.max(1);
        rx.from = r.from;
        Ok(())
    }
}

/// Count a batch of `frames` that could not be sealed (`tx_no_key`: no send key;
/// else `tx_invalid`) and the error to return: nothing of it is sent.
fn seal_failed(stats: &VxlanStats, e: crypt::Error, frames: u64) -> io::Error {
    match e {
        crypt::Error::NoKey => {
            bump(&stats.tx_no_key, frames);
            io::ErrorKind::NotConnected.into()
        }
        _ => {
            bump(&stats.tx_invalid, frames);
            io::ErrorKind::InvalidData.into()
        }
    }
}

impl AsRawFd for VxlanPort {
    fn as_raw_fd(&self) -> RawFd {
        match &self.rx_from {
            Rx::Socket => self.sock.as_raw_fd(),
            Rx::Demux(d) => d.as_raw_fd(),
        }
    }
}

impl FrameIo for VxlanPort {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            // The next datagram of the batch (opened); the rest wait in `self.rx`.
            let r = match self.next_datagram() {
                Next::Empty => {
                    self.fill()?;
                    continue;
                }
                Next::Dropped => continue,
                Next::Ready(r) => r,
            };
            self.rx.advance();
            let from = self.rx.from;
            let Some(d) = self.rx.buf.get(r) else {
                continue;
            };
            let inner = match header::decap(d) {
                Ok((vni, _)) if vni != self.vni => {
                    bump(&self.stats.rx_wrong_vni, 1);
                    continue;
                }
                Ok((_, inner)) => inner,
                Err(_) => {
                    bump(&self.stats.rx_malformed, 1);
                    continue;
                }
            };
            if local_only_frame(&self.local_only, inner) {
                bump(&self.stats.local_only, 1);
                continue;
            }
            let Some(out) = buf.get_mut(VNET_HDR_LEN..VNET_HDR_LEN + inner.len()) else {
                bump(&self.stats.rx_too_long, 1);
                continue;
            };
            out.copy_from_slice(inner);
            let src = inner.get(6..12).and_then(|s| <[u8; 6]>::try_from(s).ok());
            bump(&self.stats.rx_datagrams, 1);
            // Software GRO: the datagrams after it that continue its TCP flow, in this
            // batch and, while the frame has room, in the sender's next batch if it is
            // already queued (a 64 KiB super-frame crosses as two UDP GSO sends).
            let mut len = VNET_HDR_LEN + inner.len();
            if let Some(mut c) = Coalescer::start(buf, inner.len()) {
                loop {
                    let r = match self.next_datagram() {
                        Next::Ready(r) => r,
                        // Dropped and counted: the merge goes on with the next one.
                        Next::Dropped => continue,
                        Next::Empty => {
                            if !c.is_open() || self.fill().is_err() {
                                break;
                            }
                            if self.rx.len == 0 || self.rx.from != from {
                                break;
                            }
                            continue;
                        }
                    };
                    let Some(Ok((vni, inner))) = self.rx.buf.get(r).map(header::decap) else {
                        break;
                    };
                    if vni != self.vni || !c.append(buf, inner) {
                        break;
                    }
                    self.rx.advance();
                }
                let merged = (c.segments() - 1) as u64;
                bump(&self.stats.rx_datagrams, merged);
                bump(&self.stats.rx_merged, merged);
                len = c.finish(buf);
            } else if let Some(hdr) = buf.get_mut(..VNET_HDR_LEN) {
                hdr.copy_from_slice(&ZERO_HDR);
            }
            let now = self.now_ms();
            if from != self.self_addr {
                if let Some(src) = src {
                    match self.table.learn(self.vni, MacAddr(src), from, now) {
                        Learned::New | Learned::Moved => bump(&self.stats.learned, 1),
                        Learned::Refused => bump(&self.stats.learn_refused, 1),
                        Learned::Refreshed | Learned::Ignored => {}
                    }
                }
            }
            if now.saturating_sub(self.last_expire_ms) >= EXPIRE_EVERY_MS {
                self.table.expire(now);
                self.last_expire_ms = now;
            }
            bump(
                &self.stats.rx_bytes,
                len.saturating_sub(VNET_HDR_LEN) as u64,
            );
            return Ok(len);
        }
    }

    fn send(&mut self, frame: &[u8]) -> io::Result<usize> {
        let invalid = |stats: &VxlanStats| {
            bump(&stats.tx_invalid, 1);
            Err(io::Error::from(io::ErrorKind::InvalidData))
        };
        let Ok((hdr, eth)) = vnet::split(frame) else {
            return invalid(&self.stats);
        };
        if eth.len() < tapnet_wire::ETH_HDR_LEN {
            return invalid(&self.stats);
        }
        if self.is_local_only(eth) {
            // Not an error: the frame is for (or from) this host's copy of the MAC.
            bump(&self.stats.local_only, 1);
            return Ok(frame.len());
        }
        // Plain frames (the common case) are copied once; others go through the segmenter.
        if hdr.gso_type_raw() == vnet::VIRTIO_NET_HDR_GSO_NONE && !hdr.needs_csum() {
            let n = VXLAN_HDR_LEN + eth.len();
            if self.tx.len() < n {
                self.tx.resize(n, 0);
            }
            let Some(out) = self.tx.get_mut(VXLAN_HDR_LEN..n) else {
                return invalid(&self.stats);
            };
            out.copy_from_slice(eth);
            self.send_one(eth.len())?;
            return Ok(frame.len());
        }
        // A TSO super-frame on a network in clear: no copy of its payload here, the
        // datagrams go out gathered (headers + slices of `frame`).
        if self.crypt.is_none() {
            if let Some(cut) = TcpCut::new(&hdr, eth) {
                return self.transmit_cuts(&[cut]).map(|()| frame.len());
            }
        }
        let Ok(mut seg) = Segmenter::with_header(&hdr, eth) else {
            return invalid(&self.stats);
        };
        if seg.len() <= 1 {
            let n = VXLAN_HDR_LEN + seg.max_frame_len();
            if self.tx.len() < n {
                self.tx.resize(n, 0);
            }
            return match self.tx.get_mut(VXLAN_HDR_LEN..).map(|o| seg.next_into(o)) {
                Some(Ok(Some(len))) => self.send_one(len).map(|()| frame.len()),
                _ => invalid(&self.stats),
            };
        }
        // Every segment encapsulated in place, `stride` apart: one GSO batch.
        let stride = VXLAN_HDR_LEN + seg.max_frame_len();
        let need = stride * seg.len();
        if self.tx.len() < need {
            self.tx.resize(need, 0);
        }
        let dst = eth
            .first_chunk::<6>()
            .map_or(MacAddr::BROADCAST, |d| MacAddr(*d));
        let (mut at, mut batch_start, mut result) = (0usize, 0usize, Ok(frame.len()));
        while seg.remaining() > 0 {
            let next = match self.tx.get_mut(at..at + stride) {
                Some(out) => {
                    let _ = header::emit_header(self.vni, out);
                    out.get_mut(VXLAN_HDR_LEN..).map(|o| seg.next_into(o))
                }
                None => None,
            };
            match next {
                Some(Ok(Some(len))) => {
                    at += VXLAN_HDR_LEN + len;
                    // A short segment ends a batch (only the last may be short).
                    if len + VXLAN_HDR_LEN < stride && seg.remaining() > 0 {
                        if let Err(e) = self.transmit(dst, batch_start..at, stride) {
                            result = Err(e);
                        }
                        at = at.next_multiple_of(stride);
                        batch_start = at;
                    }
                }
                _ => return invalid(&self.stats),
            }
        }
        if at > batch_start {
            if let Err(e) = self.transmit(dst, batch_start..at, stride) {
                result = Err(e);
            }
        }
        result
    }

    /// Frames one at a time through [`FrameIo::send`], but for *trains*: consecutive
    /// TSO frames to one VTEP (see `VxlanPort::train`) go out as one gathered batch, so
    /// the UDP GSO sends are full (a 46-segment frame alone takes a send of 44 and one
    /// of 2). A train that fails whole is reported at its first frame (the switch goes
    /// on with the next one, the rest of the train then frame by frame).
    fn send_batch(&mut self, frames: Frames<'_>) -> Result<(), SendBatchError> {
        let mut cuts = Vec::new();
        let mut i = 0;
        while i < frames.len() {
            self.train(frames, i, &mut cuts);
            if cuts.len() > 1 {
                if let Err(error) = self.transmit_cuts(&cuts) {
                    return Err(SendBatchError { sent: i, error });
                }
                i += cuts.len();
                continue;
            }
            let Some(frame) = frames.get(i) else {
                break;
            };
            loop {
                match self.send(frame) {
                    Ok(_) => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(error) => return Err(SendBatchError { sent: i, error }),
                }
            }
            i += 1;
        }
        Ok(())
    }

    fn control(&mut self, msg: PortControl) -> io::Result<PortReply> {
        match msg {
            PortControl::Custom(m) => match m.downcast::<VxlanControl>() {
                Ok(m) => Ok(self.apply(*m)),
                Err(_) => Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "a VXLAN port takes VxlanControl messages",
                )),
            },
            _ => Err(io::ErrorKind::Unsupported.into()),
        }
    }
}
