//! The VXLAN tunnel as a port of a network's switch.
//!
//! Contract:
//!
//! * A [`VxlanPort`] is a [`FrameIo`] over one non-blocking [`UdpSocket`] carrying **one
//!   VNI**: either its own socket ([`VxlanPort::new`]) or, for the daemon's one socket
//!   shared by every VNI, a port made by [`crate::demux::VxlanSocket::port`], which sends
//!   on the shared socket and receives through the dispatcher (see [`crate::demux`]).
//! * Local-only MACs ([`VxlanControl::SetLocalOnly`]: the overlay's anycast gateway,
//!   whose IP and MAC every host answers itself): a frame to or from one of them is
//!   never tunnelled (dropped at send, counted `local_only`) and never taken from the
//!   tunnel (dropped at receive, counted `local_only`, not learned).
//! * [`FrameIo::send`] takes a frame from the switch (a virtio-net header, then the
//!   Ethernet frame). A GSO super-frame is cut into wire-size frames and a `NEEDS_CSUM`
//!   checksum completed ([`tapnet_wire::gso::Segmenter`]); every resulting frame is
//!   encapsulated ([`crate::header`]) and sent to the VTEP the [`VtepTable`] gives for
//!   its destination MAC, or to every VTEP of the VNI (head-end replication of
//!   broadcast, multicast and unknown unicast). A frame that cannot be segmented or
//!   encapsulated is counted ([`VxlanStatsSnapshot::tx_invalid`]) and refused with
//!   `InvalidData` (the switch counts a `TxError`); a failed `send_to` is counted
//!   ([`VxlanStatsSnapshot::tx_errors`]), and the call fails only if no copy went out.
//! * ARP/NDP suppression: when the port has neighbours ([`VxlanControl::SetNeighbours`],
//!   which must be endpoints behind *other* VTEPs), a query for one of them is not
//!   tunnelled; the reply ([`crate::suppress`]) is sent, encapsulated, to the port's own
//!   socket so that it comes back through [`FrameIo::recv`] (the worker only reads a port
//!   whose fd is readable) and is switched to the asker like a frame from the tunnel.
//! * [`FrameIo::recv`] reads datagrams until one is good: it is decapsulated in place,
//!   its VNI checked, the inner source MAC learned (→ the sender's address; not for the
//!   port's own suppression replies), and the inner frame returned behind an all-zero
//!   virtio-net header. Malformed datagrams, other VNIs and frames that do not fit the
//!   buffer are dropped and counted, never returned and never a panic; an ICMP error
//!   reported on the socket is counted and skipped, so the port stays in the poll.
//! * [`FrameIo::control`] takes a [`VxlanControl`] in a
//!   [`PortControl::Custom`]: the VNI's peer list (flood list), static MAC → VTEP
//!   entries, and the neighbours answered locally. It answers [`PortReply::Done`]
//!   ([`VxlanControl::Stats`]: a [`VxlanStatsSnapshot`] in a [`PortReply::Custom`]).
//! * Split horizon: the switch never sends a frame back out of the port it came in on,
//!   so nothing that came from the tunnel goes back into it; a single tunnel port per
//!   network needs nothing more.
//! * Datagrams are accepted from any sender (learning records whoever sent them);
//!   accepting only the VNI's peers is a follow-up.
//! * MTU: the port does not enforce the inner MTU. The driver gives endpoints an MTU of
//!   underlay MTU − [`crate::header::OVERHEAD_V4`] (50); a datagram larger than the
//!   underlay's is the kernel's to fragment or refuse (counted as a `tx_errors`).
//! * Time: learned entries are stamped with a monotonic clock started with the port and
//!   aged ([`VtepTable::expire`]) at most once a second, from `recv`.
//! * Encryption ([`VxlanControl::SetKeys`], see [`crate::crypt`]): once a port has a
//!   key set it never sends in clear. Every datagram (suppression replies included) is
//!   sealed right before it is sent (no send key: dropped, counted `tx_no_key`), and
//!   every datagram received is opened right after it is read, before decapsulation
//!   (failure — truncated, unknown key id, tag mismatch, replayed: dropped, counted
//!   `auth_failed`; nothing of it is learned).
//! * Counters are atomics the worker writes and anyone may read ([`VxlanPort::stats`]).

use crate::crypt::{self, KeyRing, KeySet};
use crate::demux::{read_trailer, Registration, TRAILER_LEN};
use crate::header::{self, Vni, VXLAN_HDR_LEN};
use crate::suppress::NeighTable;
use crate::table::{Dest, Learned, TableConfig, VtepTable};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tapnet_switch::runtime::{FrameIo, PortControl, PortReply};
use tapnet_wire::gso::Segmenter;
use tapnet_wire::vnet::{self, VNET_HDR_LEN, ZERO_HDR};
use tapnet_wire::MacAddr;

/// Largest UDP payload over IPv4, the size of the port's transmit buffer.
const MAX_DATAGRAM: usize = 65_535;
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
    /// Replace the local-only MACs: frames to or from them never cross the tunnel.
    SetLocalOnly(Vec<MacAddr>),
    /// Seal every datagram with these keys from now on (see [`crate::crypt`]); once
    /// set, the port never sends in clear (an empty set: nothing is sent).
    SetKeys(KeySet),
    /// Answer a [`VxlanStatsSnapshot`] (in a [`PortReply::Custom`]).
    Stats,
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
    auth_failed: AtomicU64,
    tx_no_key: AtomicU64,
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
    /// Datagrams dropped on an encrypted network: not sealed with a key the port
    /// accepts (truncated, unknown key id, tag mismatch: forged or tampered), or
    /// replayed (see [`crate::crypt`]).
    pub auth_failed: u64,
    /// Frames not sent on an encrypted network for want of a send key.
    pub tx_no_key: u64,
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
            auth_failed: l(&self.auth_failed),
            tx_no_key: l(&self.tx_no_key),
        }
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
    /// The dispatcher of a shared socket, through a socket pair.
    Demux(UnixDatagram, #[allow(dead_code)] Registration),
}

/// The tunnel port of one VNI. See the module docs.
pub struct VxlanPort {
    sock: UdpSocket,
    rx: Rx,
    local_only: Vec<MacAddr>,
    vni: Vni,
    table: VtepTable,
    neigh: NeighTable,
    /// Where the port's own suppression replies are sent (and come from).
    self_addr: SocketAddr,
    stats: Arc<VxlanStats>,
    /// Transmit scratch: VXLAN header + one frame.
    buf: Box<[u8]>,
    start: Instant,
    last_expire_ms: u64,
    /// Keys of an encrypted network (`None`: datagrams in clear).
    crypt: Option<KeyRing>,
}

impl VxlanPort {
    /// A port for `vni` over `sock` (switched to non-blocking), learning within `config`.
    pub fn new(sock: UdpSocket, vni: Vni, config: TableConfig) -> io::Result<VxlanPort> {
        sock.set_nonblocking(true)?;
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
            rx: Rx::Socket,
            local_only: Vec::new(),
            vni,
            table,
            neigh: NeighTable::new(),
            self_addr,
            stats: Arc::new(VxlanStats::default()),
            buf: vec![0u8; MAX_DATAGRAM + crypt::OVERHEAD].into_boxed_slice(),
            start: Instant::now(),
            last_expire_ms: 0,
            crypt: None,
        })
    }

    /// A port sending on `sock` (a clone of a shared socket) and receiving from `rx`
    /// (datagrams with a sender trailer, see [`crate::demux`]).
    pub(crate) fn demuxed(
        sock: UdpSocket,
        rx: UnixDatagram,
        reg: Registration,
        vni: Vni,
        config: TableConfig,
    ) -> io::Result<VxlanPort> {
        let mut port = VxlanPort::new(sock, vni, config)?;
        port.rx = Rx::Demux(rx, reg);
        Ok(port)
    }

    /// Whether a frame starting with `eth` is to or from a local-only MAC.
    fn is_local_only(&self, eth: &[u8]) -> bool {
        if self.local_only.is_empty() {
            return false;
        }
        let dst = eth.get(..6);
        let src = eth.get(6..12);
        self.local_only
            .iter()
            .any(|m| dst == Some(&m.0[..]) || src == Some(&m.0[..]))
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
            VxlanControl::SetPeers(p) => self.table.set_peers(self.vni, &p),
            VxlanControl::SetStatics(s) => self.table.set_statics(self.vni, &s),
            VxlanControl::SetNeighbours(n) => self.neigh.set_vni(self.vni, &n),
            VxlanControl::SetLocalOnly(m) => self.local_only = m,
            VxlanControl::SetKeys(k) => match &mut self.crypt {
                Some(ring) => ring.update(&k),
                None => self.crypt = Some(KeyRing::new(&k)),
            },
            VxlanControl::Stats => return PortReply::Custom(Box::new(self.stats.snapshot())),
        }
        PortReply::Done
    }

    /// Encapsulate the Ethernet frame already at `buf[8..8 + len]` and send it where the
    /// table says. `Ok` if at least one copy went out (or the query was answered).
    fn send_one(&mut self, len: usize) -> io::Result<()> {
        let VxlanPort {
            sock,
            vni,
            table,
            neigh,
            self_addr,
            stats,
            buf,
            crypt,
            ..
        } = self;
        let n = VXLAN_HDR_LEN + len;
        let Some(datagram) = buf.get_mut(..n) else {
            bump(&stats.tx_invalid, 1);
            return Err(io::ErrorKind::InvalidData.into());
        };
        if header::emit_header(*vni, datagram).is_err() || len < tapnet_wire::ETH_HDR_LEN {
            bump(&stats.tx_invalid, 1);
            return Err(io::ErrorKind::InvalidData.into());
        }
        let (hdr, inner) = datagram.split_at_mut(VXLAN_HDR_LEN);
        // A query a neighbour entry answers: the reply replaces the frame, to ourselves.
        let mut reply = [0u8; VXLAN_HDR_LEN + crate::suppress::NA_LEN + crypt::OVERHEAD];
        if let Some(rlen) = neigh.answer(*vni, inner, &mut reply[VXLAN_HDR_LEN..]) {
            reply[..VXLAN_HDR_LEN].copy_from_slice(hdr);
            bump(&stats.suppressed, 1);
            let Some(rlen) = seal(crypt, &mut reply, VXLAN_HDR_LEN + rlen, stats) else {
                return Err(io::ErrorKind::NotConnected.into());
            };
            let out = reply.get(..rlen).unwrap_or_default();
            return match sock.send_to(out, *self_addr) {
                Ok(_) => Ok(()),
                Err(e) => {
                    bump(&stats.tx_errors, 1);
                    Err(e)
                }
            };
        }
        let dst = inner
            .first_chunk::<6>()
            .map_or(MacAddr::BROADCAST, |d| MacAddr(*d));
        let Some(n) = seal(crypt, buf, n, stats) else {
            return Err(io::ErrorKind::NotConnected.into());
        };
        let datagram = buf.get(..n).unwrap_or_default();
        bump(&stats.tx_frames, 1);
        let (mut sent, mut last_err) = (0u64, None);
        let mut send = |to: SocketAddr| match sock.send_to(datagram, to) {
            Ok(_) => sent += 1,
            Err(e) => {
                bump(&stats.tx_errors, 1);
                last_err = Some(e);
            }
        };
        match table.lookup(*vni, dst) {
            Dest::Unicast(to) => send(to),
            Dest::Flood(all) => {
                bump(&stats.tx_flooded, 1);
                for &to in all {
                    send(to);
                }
            }
        }
        bump(&stats.tx_datagrams, sent);
        match last_err {
            Some(e) if sent == 0 => Err(e),
            _ => Ok(()),
        }
    }
}

/// Seal `buf[..len]` if the port has keys (see [`crate::crypt`]): the length to send,
/// or `None` (counted) if nothing may be sent.
fn seal(
    crypt: &mut Option<KeyRing>,
    buf: &mut [u8],
    len: usize,
    stats: &VxlanStats,
) -> Option<usize> {
    let Some(ring) = crypt else {
        return Some(len);
    };
    match ring.seal(buf, len) {
        Ok(n) => Some(n),
        Err(crypt::Error::NoKey) => {
            bump(&stats.tx_no_key, 1);
            None
        }
        Err(_) => {
            bump(&stats.tx_invalid, 1);
            None
        }
    }
}

impl AsRawFd for VxlanPort {
    fn as_raw_fd(&self) -> RawFd {
        match &self.rx {
            Rx::Socket => self.sock.as_raw_fd(),
            Rx::Demux(rx, _) => rx.as_raw_fd(),
        }
    }
}

impl FrameIo for VxlanPort {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // The datagram is read at offset 2, so that its 8-byte VXLAN header is replaced
        // in place by the 10-byte virtio-net header: the inner frame is not copied.
        const AT: usize = VNET_HDR_LEN - VXLAN_HDR_LEN;
        loop {
            let Some(room) = buf.get_mut(AT..) else {
                return Err(io::ErrorKind::InvalidInput.into());
            };
            let got = match &self.rx {
                Rx::Socket => self.sock.recv_from(room),
                Rx::Demux(rx, _) => match rx.recv(room) {
                    Ok(n) if n >= room.len() => Ok((n, self.self_addr)),
                    Ok(n) if n >= TRAILER_LEN => {
                        let mut t = [0u8; TRAILER_LEN];
                        t.copy_from_slice(room.get(n - TRAILER_LEN..n).unwrap_or(&[0; 18]));
                        Ok((n - TRAILER_LEN, read_trailer(&t)))
                    }
                    Ok(_) => {
                        bump(&self.stats.rx_malformed, 1);
                        continue;
                    }
                    Err(e) => Err(e),
                },
            };
            let (n, from) = match got {
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
                    bump(&self.stats.rx_errors, 1);
                    continue;
                }
                Err(e) => return Err(e),
            };
            // recv_from truncates silently: a datagram that filled the room may be cut.
            if n >= room.len() {
                bump(&self.stats.rx_too_long, 1);
                continue;
            }
            let n = match &mut self.crypt {
                None => n,
                Some(ring) => match ring.open(room, n) {
                    Ok(n) => n,
                    Err(_) => {
                        bump(&self.stats.auth_failed, 1);
                        continue;
                    }
                },
            };
            let (vni, src) = match header::decap(room.get(..n).unwrap_or_default()) {
                Ok((vni, inner)) => (vni, inner.get(6..12).and_then(|s| s.try_into().ok())),
                Err(_) => {
                    bump(&self.stats.rx_malformed, 1);
                    continue;
                }
            };
            if vni != self.vni {
                bump(&self.stats.rx_wrong_vni, 1);
                continue;
            }
            if self.is_local_only(
                room.get(VXLAN_HDR_LEN..n.max(VXLAN_HDR_LEN))
                    .unwrap_or_default(),
            ) {
                bump(&self.stats.local_only, 1);
                continue;
            }
            let now = self.now_ms();
            if from != self.self_addr {
                if let Some(src) = src {
                    match self.table.learn(vni, MacAddr(src), from, now) {
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
            let Some(hdr) = buf.get_mut(..VNET_HDR_LEN) else {
                return Err(io::ErrorKind::InvalidInput.into());
            };
            hdr.copy_from_slice(&ZERO_HDR);
            bump(&self.stats.rx_datagrams, 1);
            return Ok(n + AT);
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
        if self.is_local_only(eth) {
            // Not an error: the frame is for (or from) this host's copy of the MAC.
            bump(&self.stats.local_only, 1);
            return Ok(frame.len());
        }
        // Plain frames (the common case) are copied once; others go through the segmenter.
        if hdr.gso_type_raw() == vnet::VIRTIO_NET_HDR_GSO_NONE && !hdr.needs_csum() {
            let Some(out) = self.buf.get_mut(VXLAN_HDR_LEN..VXLAN_HDR_LEN + eth.len()) else {
                return invalid(&self.stats);
            };
            out.copy_from_slice(eth);
            self.send_one(eth.len())?;
            return Ok(frame.len());
        }
        let Ok(mut seg) = Segmenter::with_header(&hdr, eth) else {
            return invalid(&self.stats);
        };
        let mut result = Ok(frame.len());
        loop {
            let next = match self.buf.get_mut(VXLAN_HDR_LEN..) {
                Some(out) => seg.next_into(out),
                None => return invalid(&self.stats),
            };
            match next {
                Ok(Some(len)) => {
                    if let Err(e) = self.send_one(len) {
                        result = Err(e);
                    }
                }
                Ok(None) => return result,
                Err(_) => return invalid(&self.stats),
            }
        }
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
