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
//!   **receives** runs of its VNI's datagrams (VXLAN headers kept, `stride` bytes apart,
//!   the last maybe shorter, with the sender's address and the stride) from a bounded
//!   queue (`crossbeam-channel`, 64 runs) the dispatcher fills. The buffer a batch was
//!   read into *moves* to the port when the batch is one run (the common case: no copy),
//!   and comes back to the dispatcher for reuse when the port is done with it; a batch
//!   that mixes VNIs is copied out run by run. The port's pollable fd is its end of a
//!   `socketpair(AF_UNIX, SOCK_DGRAM)`, a *doorbell*: the dispatcher sends one byte after
//!   queueing a run, so the switch's worker finds the port readable exactly when runs
//!   are queued; the port empties the doorbell before it reports `WouldBlock` and looks
//!   at the queue once more, so a ring is never lost. The port then splits each run and
//!   merges TCP segments back into super-frames (see [`crate::port`]).
//! * Why a queue of owned buffers and a doorbell, not the batch itself through the socket
//!   pair (the first version): the pair cost two copies of every batch; measured with
//!   `benches/overlay.sh` that was ~6 % of the daemons' CPU (docs/benchmarks.md). No
//!   `unsafe` either way. A full queue (the port's worker is behind) drops the run and
//!   counts its datagrams (`rx_queue_full`), as a full socket buffer would.
//! * Dropping the port unregisters its VNI (only its own registration: a VNI
//!   registered again since is left alone). Dropping the [`VxlanSocket`] stops the
//!   dispatcher and joins it; ports made from it keep sending but receive nothing.
//! * Encrypted networks change nothing here: the VXLAN header stays in clear
//!   ([`crate::crypt`]), so sealed datagrams are dispatched by VNI like plain ones; the
//!   port checks the sender and opens each datagram.
//! * The dispatcher never panics on what a peer sends: it checks the length before it
//!   reads the header.

use crate::header::{self, Vni};
use crate::port::VxlanPort;
use crate::table::TableConfig;
use crate::udp::{self, Received, RecvBatch};
use crossbeam_channel::{Receiver, Sender};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

const SOCK: Token = Token(0);
const WAKE: Token = Token(1);

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

/// A run of one VNI's datagrams handed to its port: the buffer itself moves (no copy).
#[derive(Debug)]
pub(crate) struct Handoff {
    /// The buffer the batch was read into (its ownership moves to the port).
    pub buf: Box<[u8]>,
    /// Where the run starts in `buf`.
    pub start: usize,
    /// Bytes of the run.
    pub len: usize,
    /// Bytes per datagram (the last may be shorter).
    pub stride: usize,
    /// The sender.
    pub from: SocketAddr,
}

/// Where the dispatcher puts a VNI's runs: the queue and the doorbell that makes the
/// port's fd readable.
#[derive(Debug)]
struct Route {
    id: u64,
    queue: Sender<Handoff>,
    bell: UnixDatagram,
}

type Routes = Arc<Mutex<HashMap<Vni, Route>>>;

/// Runs queued per port before the dispatcher drops (`rx_queue_full`): 64 × 64 KiB.
const QUEUE_LEN: usize = 64;

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
        if routes.get(&self.vni).is_some_and(|r| r.id == self.id) {
            routes.remove(&self.vni);
        }
    }
}

/// The daemon's VXLAN socket and its dispatcher (see the module docs).
#[derive(Debug)]
pub struct VxlanSocket {
    sock: UdpSocket,
    routes: Routes,
    /// Where ports return the buffers they are done with, for the dispatcher to reuse.
    spare: Sender<Box<[u8]>>,
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
        let (spare, spare_rx) = crossbeam_channel::bounded(QUEUE_LEN);
        let d = Dispatcher {
            sock: sock.try_clone()?,
            spare: spare_rx,
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
            spare,
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
        theirs.set_nonblocking(true)?;
        ours.set_nonblocking(true)?;
        let (queue, runs) = crossbeam_channel::bounded(QUEUE_LEN);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        {
            let mut routes = lock(&self.routes);
            if routes.contains_key(&vni) {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("VNI {vni} has a port on this socket already"),
                ));
            }
            routes.insert(
                vni,
                Route {
                    id,
                    queue,
                    bell: theirs,
                },
            );
        }
        let reg = Registration {
            routes: Arc::clone(&self.routes),
            vni,
            id,
        };
        let rx = DemuxRx {
            runs,
            bell: ours,
            spare: self.spare.clone(),
            reg,
        };
        VxlanPort::demuxed(self.sock.try_clone()?, rx, vni, config)
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

/// A port's end of the hand-off: runs, the doorbell it polls, where spent buffers go.
#[derive(Debug)]
pub(crate) struct DemuxRx {
    pub runs: Receiver<Handoff>,
    pub bell: UnixDatagram,
    pub spare: Sender<Box<[u8]>>,
    #[allow(dead_code)] // held: dropping it unregisters the VNI
    pub reg: Registration,
}

struct Dispatcher {
    sock: UdpSocket,
    spare: Receiver<Box<[u8]>>,
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
        let mut runs = Vec::new();
        loop {
            let n = match batch.recv(&self.sock) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                // Interrupted, or an ICMP error reported on the socket: skip it.
                Err(_) => continue,
            };
            let routes = lock(&self.routes);
            for i in 0..n {
                runs.clear();
                let Some((r, data)) = batch.get(i) else {
                    continue;
                };
                if !self.runs(r, data, &mut runs) {
                    continue;
                }
                // One run covering the batch (the common case): its buffer moves to the
                // port. Several: each is copied into a buffer of its own.
                let whole = matches!(runs.as_slice(), [(_, 0, end)] if *end == data.len());
                for &(vni, start, end) in &runs {
                    let Some(route) = routes.get(&vni) else {
                        let count = (end - start).div_ceil(r.stride.max(1)) as u64;
                        self.stats.unknown_vni.fetch_add(count, Ordering::Relaxed);
                        continue;
                    };
                    let (buf, at) = if whole {
                        (batch.take(i, self.spare_buf()), 0)
                    } else {
                        let mut b = self.spare_buf();
                        match (b.get_mut(..end - start), batch.get(i)) {
                            (Some(to), Some((_, d))) => {
                                to.copy_from_slice(d.get(start..end).unwrap_or_default())
                            }
                            _ => continue,
                        }
                        (b, 0)
                    };
                    self.forward(route, r, buf, at, end - start);
                }
            }
        }
    }

    /// A spent buffer from a port, or a new one.
    fn spare_buf(&self) -> Box<[u8]> {
        self.spare
            .try_recv()
            .unwrap_or_else(|_| vec![0u8; udp::RECV_BUF].into_boxed_slice())
    }

    /// The runs of consecutive datagrams of one VNI in a batch, as `(VNI, start, end)`;
    /// false if the batch is dropped whole (cut short by the kernel).
    fn runs(&self, r: Received, data: &[u8], runs: &mut Vec<(Vni, usize, usize)>) -> bool {
        let stride = r.stride.max(1);
        if r.truncated || u16::try_from(stride).is_err() {
            let count = data.len().div_ceil(stride) as u64;
            self.stats.malformed.fetch_add(count, Ordering::Relaxed);
            return false;
        }
        if data.is_empty() {
            // An empty datagram: not VXLAN either.
            self.stats.malformed.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let mut at = 0;
        while at < data.len() {
            let end = (at + stride).min(data.len());
            match data.get(at..end).map(header::decap) {
                Some(Ok((vni, _))) => match runs.last_mut() {
                    Some((v, _, e)) if *v == vni && *e == at => *e = end,
                    _ => runs.push((vni, at, end)),
                },
                _ => {
                    self.stats.malformed.fetch_add(1, Ordering::Relaxed);
                }
            }
            at = end;
        }
        true
    }

    /// Queue a run for its port and ring the port's doorbell.
    fn forward(&self, route: &Route, r: Received, buf: Box<[u8]>, start: usize, len: usize) {
        let stride = r.stride.max(1);
        let count = len.div_ceil(stride) as u64;
        let h = Handoff {
            buf,
            start,
            len,
            stride,
            from: r.from,
        };
        match route.queue.try_send(h) {
            Ok(()) => {
                self.stats.datagrams.fetch_add(count, Ordering::Relaxed);
                // A full doorbell already has a ring pending: nothing lost.
                let _ = route.bell.send(&[1]);
            }
            Err(_) => {
                self.stats.queue_full.fetch_add(count, Ordering::Relaxed);
            }
        }
    }
}
