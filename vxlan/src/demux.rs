//! One UDP socket per daemon, demultiplexed by VNI.
//!
//! Contract:
//!
//! * A [`VxlanSocket`] owns the daemon's VXLAN UDP socket (`--data-path-port`, default
//!   4789, with `UDP_GRO` where the kernel has it) and a dispatcher thread that reads
//!   it with `recvmmsg` ([`crate::udp::RecvBatch`]: up to 8 batches per call, a batch
//!   being one datagram or a GRO run of one sender's datagrams), reads the VNI of each
//!   datagram from its VXLAN header and hands it to the port registered for that VNI.
//!   Malformed datagrams and VNIs nobody registered are counted ([`DemuxStatsSnapshot`])
//!   and dropped.
//! * [`VxlanSocket::port`] registers a VNI (at most one port per VNI: a second
//!   registration is refused with `AddrInUse`) and returns a [`VxlanPort`] for it. The
//!   port **sends** directly on a clone of the shared socket (same file description, so
//!   the datagrams leave from the daemon's one address and port, as peers expect); it
//!   **receives** from its own end of a `socketpair(AF_UNIX, SOCK_DGRAM)` the
//!   dispatcher writes into. That end is the fd the switch's worker polls, so a port is
//!   readable exactly when datagrams for its VNI are queued. Each message is a run of
//!   consecutive datagrams of one VNI from one batch, as they came (VXLAN headers kept,
//!   `stride` bytes apart, the last maybe shorter), then a [`TRAILER_LEN`]-byte
//!   trailer: the sender's address (IPv6 or v4-mapped, port big-endian; 18 bytes) and
//!   the stride (big-endian u16). The port strips it, splits the run and merges TCP
//!   segments back into super-frames (see [`crate::port`]).
//! * Why a socket pair and not a shared queue plus an eventfd: the socket pair *is* a
//!   queue with a pollable fd, bounded by its socket buffers, and needs neither locks
//!   on the fast path nor unsafe code. Its cost is two copies of each received batch
//!   and two syscalls per *batch* (up to 64 KiB with GRO), not per datagram. Measured
//!   with `benches/overlay.sh` (docs/benchmarks.md, "Overlay throughput") the hand-off
//!   is ~6 % of the daemons' CPU samples, 2 of the 8 copies a 64 KiB frame takes end to
//!   end: worth replacing (a per-port ring + eventfd) but not alone what keeps the
//!   tunnel at a third of the kernel's throughput.
//!   A full pair (the port's worker is behind) drops the run and counts its datagrams
//!   (`rx_queue_full`), as a full socket buffer would.
//! * Dropping the port unregisters its VNI (only its own registration: a VNI
//!   registered again since is left alone). Dropping the [`VxlanSocket`] stops the
//!   dispatcher and joins it; ports made from it keep sending but receive nothing.
//! * The dispatcher never panics on what a peer sends: it checks the length before it
//!   reads the header.

use crate::header::{self, Vni};
use crate::port::VxlanPort;
use crate::table::TableConfig;
use crate::udp::{self, Received, RecvBatch};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use nix::sys::socket::{sendmsg, MsgFlags, UnixAddr};
use std::collections::HashMap;
use std::io::{self, IoSlice};
use std::net::{IpAddr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

/// Bytes after each batch handed to a port: the sender's address (18) and the stride (2).
pub const TRAILER_LEN: usize = 20;
/// Socket buffer asked for on both ends of a port's socket pair.
const PAIR_BUFFER: usize = 4 << 20;
const SOCK: Token = Token(0);
const WAKE: Token = Token(1);

/// The trailer for a batch from `from` whose datagrams are `stride` bytes apart.
fn put_trailer(from: SocketAddr, stride: u16, out: &mut [u8; TRAILER_LEN]) {
    let ip = match from.ip() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    out[..16].copy_from_slice(&ip.octets());
    out[16..18].copy_from_slice(&from.port().to_be_bytes());
    out[18..].copy_from_slice(&stride.to_be_bytes());
}

/// The sender's address and the stride from a trailer.
pub(crate) fn read_trailer(t: &[u8; TRAILER_LEN]) -> (SocketAddr, usize) {
    let mut ip = [0u8; 16];
    ip.copy_from_slice(&t[..16]);
    let ip = Ipv6Addr::from(ip);
    let port = u16::from_be_bytes([t[16], t[17]]);
    let stride = usize::from(u16::from_be_bytes([t[18], t[19]]));
    let from = match ip.to_ipv4_mapped() {
        Some(v4) => SocketAddr::new(v4.into(), port),
        None => SocketAddr::new(ip.into(), port),
    };
    (from, stride)
}

/// The dispatcher's counters.
#[derive(Debug, Default)]
struct DemuxStats {
    datagrams: AtomicU64,
    malformed: AtomicU64,
    unknown_vni: AtomicU64,
    queue_full: AtomicU64,
}

/// A copy of the dispatcher's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DemuxStatsSnapshot {
    /// Datagrams handed to a port.
    pub datagrams: u64,
    /// Datagrams dropped as not VXLAN.
    pub malformed: u64,
    /// Datagrams dropped because no port has their VNI.
    pub unknown_vni: u64,
    /// Datagrams dropped because the port's queue was full.
    pub rx_queue_full: u64,
}

type Routes = Arc<Mutex<HashMap<Vni, (u64, UnixDatagram)>>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A port's hold on its VNI; dropping it unregisters the VNI.
#[derive(Debug)]
pub(crate) struct Registration {
    routes: Routes,
    vni: Vni,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut routes = lock(&self.routes);
        if routes.get(&self.vni).is_some_and(|(id, _)| *id == self.id) {
            routes.remove(&self.vni);
        }
    }
}

/// The daemon's VXLAN socket and its dispatcher (see the module docs).
#[derive(Debug)]
pub struct VxlanSocket {
    sock: UdpSocket,
    routes: Routes,
    next_id: AtomicU64,
    stats: Arc<DemuxStats>,
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
    thread: Option<JoinHandle<()>>,
}

impl VxlanSocket {
    /// Bind `addr` (port 0: an ephemeral port) and start the dispatcher.
    pub fn bind(addr: SocketAddr) -> io::Result<VxlanSocket> {
        let sock = UdpSocket::bind(addr)?;
        sock.set_nonblocking(true)?;
        udp::enable_gro(&sock);
        udp::set_buffers(&sock);
        let routes: Routes = Arc::default();
        let stats = Arc::new(DemuxStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKE)?);
        let fd = sock.as_raw_fd();
        poll.registry()
            .register(&mut SourceFd(&fd), SOCK, Interest::READABLE)?;
        let d = Dispatcher {
            sock: sock.try_clone()?,
            routes: Arc::clone(&routes),
            stats: Arc::clone(&stats),
            stop: Arc::clone(&stop),
        };
        let thread = std::thread::Builder::new()
            .name("vxlan-demux".into())
            .spawn(move || d.run(poll))?;
        Ok(VxlanSocket {
            sock,
            routes,
            next_id: AtomicU64::new(1),
            stats,
            stop,
            waker,
            thread: Some(thread),
        })
    }

    /// The bound address (the real port when bound to port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.sock.local_addr()
    }

    /// A port for `vni` that sends on this socket and receives what the dispatcher
    /// hands it. `AddrInUse` if a live port has the VNI already.
    pub fn port(&self, vni: Vni, config: TableConfig) -> io::Result<VxlanPort> {
        let (ours, theirs) = UnixDatagram::pair()?;
        for s in [&ours, &theirs] {
            use nix::sys::socket::{setsockopt, sockopt};
            let _ = setsockopt(s, sockopt::SndBufForce, &PAIR_BUFFER)
                .or_else(|_| setsockopt(s, sockopt::SndBuf, &PAIR_BUFFER));
            let _ = setsockopt(s, sockopt::RcvBufForce, &PAIR_BUFFER)
                .or_else(|_| setsockopt(s, sockopt::RcvBuf, &PAIR_BUFFER));
        }
        theirs.set_nonblocking(true)?;
        ours.set_nonblocking(true)?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        {
            let mut routes = lock(&self.routes);
            if routes.contains_key(&vni) {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("VNI {vni} has a port on this socket already"),
                ));
            }
            routes.insert(vni, (id, theirs));
        }
        let reg = Registration {
            routes: Arc::clone(&self.routes),
            vni,
            id,
        };
        VxlanPort::demuxed(self.sock.try_clone()?, ours, reg, vni, config)
    }

    /// The dispatcher's counters.
    pub fn stats(&self) -> DemuxStatsSnapshot {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        DemuxStatsSnapshot {
            datagrams: l(&self.stats.datagrams),
            malformed: l(&self.stats.malformed),
            unknown_vni: l(&self.stats.unknown_vni),
            rx_queue_full: l(&self.stats.queue_full),
        }
    }
}

impl Drop for VxlanSocket {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.waker.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Dispatcher {
    sock: UdpSocket,
    routes: Routes,
    stats: Arc<DemuxStats>,
    stop: Arc<AtomicBool>,
}

impl Dispatcher {
    fn run(self, mut poll: Poll) {
        let mut events = Events::with_capacity(4);
        let mut batch = RecvBatch::new();
        while !self.stop.load(Ordering::SeqCst) {
            if let Err(e) = poll.poll(&mut events, None) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return;
            }
            self.drain(&mut batch);
        }
    }

    /// Read until the socket would block.
    fn drain(&self, batch: &mut RecvBatch) {
        loop {
            let n = match batch.recv(&self.sock) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                // Interrupted, or an ICMP error reported on the socket: skip it.
                Err(_) => continue,
            };
            let routes = lock(&self.routes);
            for i in 0..n {
                if let Some((r, data)) = batch.get(i) {
                    self.dispatch(&routes, r, data);
                }
            }
        }
    }

    /// Hand a batch's datagrams to their ports: each run of consecutive datagrams of one
    /// VNI goes as one message.
    fn dispatch(&self, routes: &HashMap<Vni, (u64, UnixDatagram)>, r: Received, data: &[u8]) {
        let stride = r.stride.max(1);
        let count = data.len().div_ceil(stride) as u64;
        if r.truncated {
            self.stats.malformed.fetch_add(count, Ordering::Relaxed);
            return;
        }
        let Ok(stride16) = u16::try_from(stride) else {
            self.stats.malformed.fetch_add(count, Ordering::Relaxed);
            return;
        };
        let mut trailer = [0u8; TRAILER_LEN];
        put_trailer(r.from, stride16, &mut trailer);
        // (VNI, start) of the run being gathered.
        let mut run: Option<(Vni, usize)> = None;
        let mut at = 0;
        while at <= data.len() {
            let d = data
                .get(at..(at + stride).min(data.len()))
                .unwrap_or_default();
            let vni = if d.is_empty() {
                None // the end
            } else {
                match header::decap(d) {
                    Ok((vni, _)) => Some(vni),
                    Err(_) => {
                        self.stats.malformed.fetch_add(1, Ordering::Relaxed);
                        None
                    }
                }
            };
            if let Some((rv, start)) = run {
                if vni != Some(rv) {
                    let part = data.get(start..at).unwrap_or_default();
                    self.forward(routes, rv, part, stride, &trailer);
                    run = None;
                }
            }
            if d.is_empty() {
                break;
            }
            if let (Some(v), None) = (vni, run) {
                run = Some((v, at));
            }
            at += d.len();
        }
    }

    /// Send `part` (datagrams of `vni`, `stride` apart) and the trailer to the VNI's port.
    fn forward(
        &self,
        routes: &HashMap<Vni, (u64, UnixDatagram)>,
        vni: Vni,
        part: &[u8],
        stride: usize,
        trailer: &[u8; TRAILER_LEN],
    ) {
        let count = part.len().div_ceil(stride) as u64;
        let Some((_, to)) = routes.get(&vni) else {
            self.stats.unknown_vni.fetch_add(count, Ordering::Relaxed);
            return;
        };
        let iov = [IoSlice::new(part), IoSlice::new(trailer)];
        match sendmsg::<UnixAddr>(to.as_raw_fd(), &iov, &[], MsgFlags::MSG_DONTWAIT, None) {
            Ok(_) => {
                self.stats.datagrams.fetch_add(count, Ordering::Relaxed);
            }
            Err(_) => {
                self.stats.queue_full.fetch_add(count, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailer_round_trips() {
        for a in ["192.0.2.1:4789", "[2001:db8::1]:5000", "127.0.0.1:0"] {
            let a: SocketAddr = a.parse().unwrap_or_else(|_| unreachable!());
            let mut t = [0u8; TRAILER_LEN];
            put_trailer(a, 1450, &mut t);
            assert_eq!(read_trailer(&t), (a, 1450));
        }
    }
}
