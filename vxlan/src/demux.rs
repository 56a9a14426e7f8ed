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
//!   that mixes VNIs is copied out run by run. The port's pollable fd watches its end of
//!   a `socketpair(AF_UNIX, SOCK_DGRAM)`, a *doorbell*: the dispatcher sends one byte
//!   after queueing a run, so the switch's worker finds the port readable when runs are
//!   queued; the port empties the doorbell before it reports `WouldBlock` and looks
//!   at the queue once more, so a ring is never lost. The port then splits each run and
//!   merges TCP segments back into super-frames (see [`crate::port`]).
//! * **One VNI, no hand-off**: while exactly one port is registered, that port reads the
//!   socket itself (on the switch worker's thread) and the dispatcher leaves it alone:
//!   the port's pollable fd is an epoll set of its own (the doorbell, plus the socket
//!   while it is the lone reader); the socket moves between the dispatcher's poll and
//!   the port's whenever a registration comes or goes (the new reader gets it before the
//!   old one lets go, so it is never unread; both reading for a moment is harmless). A
//!   batch the port reads that is all its VNI is taken in place (counted `datagrams` and
//!   `read_by_port`); one that mixes VNIs, or carries malformed datagrams, is split and
//!   queued exactly as the dispatcher would (its own runs come back through its queue).
//!   Why: the hop from the dispatcher thread to the worker (a wake-up per batch) was a
//!   measured cost on the single-network path (docs/benchmarks.md).
//! * Why a queue of owned buffers and a doorbell, not the batch itself through the socket
//!   pair (the first version): the pair cost two copies of every batch; measured with
//!   `benches/overlay.sh` that was ~6 % of the daemons' CPU (docs/benchmarks.md). No
//!   `unsafe` either way. A full queue (the port's worker is behind) drops the run and
//!   counts its datagrams (`rx_queue_full`), as a full socket buffer would.
//! * Dropping the port unregisters its VNI (only its own registration: a VNI
//!   registered again since is left alone). Dropping the [`VxlanSocket`] takes the socket
//!   from a lone port, stops the dispatcher and joins it; ports made from it keep
//!   sending but receive nothing.
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
use mio::{Events, Interest, Poll, Registry, Token, Waker};
use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

const SOCK: Token = Token(0);
const WAKE: Token = Token(1);

/// The doorbell's token in a port's own poll.
const BELL: Token = Token(2);

/// The dispatcher's counters.
#[derive(Debug, Default)]
struct DemuxStats {
    datagrams: AtomicU64,
    read_by_port: AtomicU64,
    malformed: AtomicU64,
    unknown_vni: AtomicU64,
    queue_full: AtomicU64,
}

/// A copy of the dispatcher's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DemuxStatsSnapshot {
    /// Datagrams handed to a port (queued by the dispatcher, or read by a lone port
    /// itself).
    pub datagrams: u64,
    /// Of `datagrams`, those a lone port read from the socket itself (no hand-off).
    pub read_by_port: u64,
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
/// port's fd readable; and the port's own poll, which holds the socket while the port
/// reads it itself (`direct`).
#[derive(Debug)]
struct Route {
    id: u64,
    queue: Sender<Handoff>,
    bell: UnixDatagram,
    direct: Arc<AtomicBool>,
    poll: Registry,
}

/// The registered VNIs and who reads the socket.
#[derive(Debug)]
struct State {
    routes: HashMap<Vni, Route>,
    /// The socket is in the dispatcher's poll.
    dispatcher_reads: bool,
    /// The `VxlanSocket` is gone: nobody is given the socket any more.
    closed: bool,
}

/// What the dispatcher and the ports share.
#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// The socket (the fd every poll registration uses).
    sock: UdpSocket,
    /// The dispatcher's poll.
    dispatcher: Registry,
    stats: DemuxStats,
    /// Buffers ports are done with, for reuse.
    spare_tx: Sender<Box<[u8]>>,
    spare_rx: Receiver<Box<[u8]>>,
}

/// Runs queued per port before the dispatcher drops (`rx_queue_full`): 64 × 64 KiB.
const QUEUE_LEN: usize = 64;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    /// Give the socket to the one port when exactly one VNI is registered, else to the
    /// dispatcher. The new reader gets it before the old one lets go, so it is never
    /// unread; for a moment both may read it, which is harmless (each reads whole
    /// batches and hands runs of other VNIs to their ports).
    fn rebalance(&self, st: &mut State) {
        if st.closed {
            return;
        }
        let fd = self.sock.as_raw_fd();
        let lone = match st.routes.len() {
            1 => st.routes.values().next(),
            _ => None,
        };
        if let Some(r) = lone {
            if !r.direct.load(Ordering::SeqCst)
                && r.poll
                    .register(&mut SourceFd(&fd), SOCK, Interest::READABLE)
                    .is_ok()
            {
                r.direct.store(true, Ordering::SeqCst);
                // Data already waiting: the port's poll reports it; ring anyway.
                let _ = r.bell.send(&[1]);
            }
            if r.direct.load(Ordering::SeqCst)
                && st.dispatcher_reads
                && self.dispatcher.deregister(&mut SourceFd(&fd)).is_ok()
            {
                st.dispatcher_reads = false;
            }
            return;
        }
        if !st.dispatcher_reads
            && self
                .dispatcher
                .register(&mut SourceFd(&fd), SOCK, Interest::READABLE)
                .is_ok()
        {
            st.dispatcher_reads = true;
        }
        if st.dispatcher_reads {
            for r in st.routes.values() {
                if r.direct.load(Ordering::SeqCst) && r.poll.deregister(&mut SourceFd(&fd)).is_ok()
                {
                    r.direct.store(false, Ordering::SeqCst);
                }
            }
        }
    }

    /// A spent buffer from a port, or a new one.
    fn spare_buf(&self) -> Box<[u8]> {
        self.spare_rx
            .try_recv()
            .unwrap_or_else(|_| vec![0u8; udp::RECV_BUF].into_boxed_slice())
    }

    /// The runs of consecutive datagrams of one VNI in a batch, as `(VNI, start, end)`;
    /// false if the batch is dropped whole (cut short by the kernel).
    fn runs(&self, r: Received, data: &[u8], runs: &mut Vec<(Vni, usize, usize)>) -> bool {
        runs.clear();
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
        let malformed = split_runs(data, stride, runs);
        self.stats.malformed.fetch_add(malformed, Ordering::Relaxed);
        true
    }

    /// Copy each run of `data` into a buffer of its own and queue it for its port.
    fn scatter(&self, routes: &HashMap<Vni, Route>, r: Received, data: &[u8], runs: &[Run]) {
        for &(vni, start, end) in runs {
            let Some(route) = routes.get(&vni) else {
                self.unknown(r, start, end);
                continue;
            };
            let mut b = self.spare_buf();
            match (b.get_mut(..end - start), data.get(start..end)) {
                (Some(to), Some(from)) => to.copy_from_slice(from),
                _ => continue,
            }
            self.forward(route, r, b, 0, end - start);
        }
    }

    /// Count the datagrams of a run nobody registered.
    fn unknown(&self, r: Received, start: usize, end: usize) {
        let count = (end - start).div_ceil(r.stride.max(1)) as u64;
        self.stats.unknown_vni.fetch_add(count, Ordering::Relaxed);
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

/// `(VNI, start, end)` of a run in a batch.
pub type Run = (Vni, usize, usize);

/// Split `data`, datagrams `stride` bytes apart (the last maybe shorter), into runs of
/// consecutive well-formed datagrams of one VNI, appended to `runs` as `(VNI, start,
/// end)`; returns the number of malformed datagrams skipped. Pure: the dispatcher's
/// (and a lone port's) parsing of a received batch, exposed for the fuzz targets.
#[doc(hidden)]
pub fn split_runs(data: &[u8], stride: usize, runs: &mut Vec<Run>) -> u64 {
    let stride = stride.max(1);
    let mut malformed = 0;
    let mut at = 0;
    while at < data.len() {
        let end = at.saturating_add(stride).min(data.len());
        match data.get(at..end).map(header::decap) {
            Some(Ok((vni, _))) => match runs.last_mut() {
                Some((v, _, e)) if *v == vni && *e == at => *e = end,
                _ => runs.push((vni, at, end)),
            },
            _ => malformed += 1,
        }
        at = end;
    }
    malformed
}

/// A port's hold on its VNI; dropping it unregisters the VNI.
#[derive(Debug)]
pub(crate) struct Registration {
    shared: Arc<Shared>,
    vni: Vni,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut st = lock(&self.shared.state);
        if st.routes.get(&self.vni).is_some_and(|r| r.id == self.id) {
            st.routes.remove(&self.vni);
            self.shared.rebalance(&mut st);
        }
    }
}

/// The daemon's VXLAN socket and its dispatcher (see the module docs).
#[derive(Debug)]
pub struct VxlanSocket {
    shared: Arc<Shared>,
    next_id: AtomicU64,
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
        let stop = Arc::new(AtomicBool::new(false));
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKE)?);
        let fd = sock.as_raw_fd();
        poll.registry()
            .register(&mut SourceFd(&fd), SOCK, Interest::READABLE)?;
        let (spare_tx, spare_rx) = crossbeam_channel::bounded(QUEUE_LEN);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                routes: HashMap::new(),
                dispatcher_reads: true,
                closed: false,
            }),
            sock,
            dispatcher: poll.registry().try_clone()?,
            stats: DemuxStats::default(),
            spare_tx,
            spare_rx,
        });
        let d = Dispatcher {
            shared: Arc::clone(&shared),
            stop: Arc::clone(&stop),
        };
        let thread = std::thread::Builder::new()
            .name("vxlan-demux".into())
            .spawn(move || d.run(poll))?;
        Ok(VxlanSocket {
            shared,
            next_id: AtomicU64::new(1),
            stop,
            waker,
            thread: Some(thread),
        })
    }

    /// The bound address (the real port when bound to port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.shared.sock.local_addr()
    }

    /// A port for `vni` that sends on this socket and receives what the dispatcher
    /// hands it (or, while it is the only port, reads the socket itself). `AddrInUse`
    /// if a live port has the VNI already.
    pub fn port(&self, vni: Vni, config: TableConfig) -> io::Result<VxlanPort> {
        let (ours, theirs) = UnixDatagram::pair()?;
        theirs.set_nonblocking(true)?;
        ours.set_nonblocking(true)?;
        let poll = Poll::new()?;
        let bell_fd = ours.as_raw_fd();
        poll.registry()
            .register(&mut SourceFd(&bell_fd), BELL, Interest::READABLE)?;
        let direct = Arc::new(AtomicBool::new(false));
        let (queue, runs) = crossbeam_channel::bounded(QUEUE_LEN);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let send_sock = self.shared.sock.try_clone()?;
        {
            let mut st = lock(&self.shared.state);
            if st.routes.contains_key(&vni) {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("VNI {vni} has a port on this socket already"),
                ));
            }
            st.routes.insert(
                vni,
                Route {
                    id,
                    queue,
                    bell: theirs,
                    direct: Arc::clone(&direct),
                    poll: poll.registry().try_clone()?,
                },
            );
            self.shared.rebalance(&mut st);
        }
        let reg = Registration {
            shared: Arc::clone(&self.shared),
            vni,
            id,
        };
        let rx = DemuxRx {
            runs,
            bell: ours,
            poll,
            direct,
            vni,
            scratch: Vec::new(),
            reg,
        };
        VxlanPort::demuxed(send_sock, rx, vni, config)
    }

    /// The dispatcher's counters.
    pub fn stats(&self) -> DemuxStatsSnapshot {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let s = &self.shared.stats;
        DemuxStatsSnapshot {
            datagrams: l(&s.datagrams),
            read_by_port: l(&s.read_by_port),
            malformed: l(&s.malformed),
            unknown_vni: l(&s.unknown_vni),
            rx_queue_full: l(&s.queue_full),
        }
    }
}

impl Drop for VxlanSocket {
    fn drop(&mut self) {
        {
            // A lone port stops reading the socket: nothing is received any more.
            let mut st = lock(&self.shared.state);
            st.closed = true;
            let fd = self.shared.sock.as_raw_fd();
            for r in st.routes.values() {
                if r.direct.swap(false, Ordering::SeqCst) {
                    let _ = r.poll.deregister(&mut SourceFd(&fd));
                }
            }
        }
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.waker.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A port's end of the hand-off: runs, the doorbell, the port's own poll (its fd: the
/// doorbell, and the socket while the port reads it itself), where spent buffers go.
#[derive(Debug)]
pub(crate) struct DemuxRx {
    runs: Receiver<Handoff>,
    bell: UnixDatagram,
    poll: Poll,
    direct: Arc<AtomicBool>,
    vni: Vni,
    scratch: Vec<Run>,
    reg: Registration,
}

impl AsRawFd for DemuxRx {
    fn as_raw_fd(&self) -> RawFd {
        self.poll.as_raw_fd()
    }
}

impl DemuxRx {
    /// The next run of the port's datagrams, in `buf` (a queued run's buffer replaces
    /// it, the old one going back for reuse): what was received and where it starts.
    /// `Ok(None)`: a batch read from the socket went to the queues (it mixed VNIs):
    /// look again. `WouldBlock` once the queue, the socket (when the port reads it)
    /// and the doorbell are empty.
    pub(crate) fn next(
        &mut self,
        sock: &UdpSocket,
        buf: &mut Box<[u8]>,
    ) -> io::Result<Option<(Received, usize)>> {
        for round in 0..2 {
            if let Ok(h) = self.runs.try_recv() {
                return Ok(Some(self.take(h, buf)));
            }
            if self.direct.load(Ordering::Relaxed) {
                match self.read(sock, buf) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    other => return other,
                }
            }
            if round == 0 {
                // Clear the doorbell, then look once more: a run queued (or the socket
                // handed over) after this rings again, so nothing is missed.
                let mut ring = [0u8; 64];
                while self.bell.recv(&mut ring).is_ok() {}
            }
        }
        Err(io::ErrorKind::WouldBlock.into())
    }

    fn take(&self, h: Handoff, buf: &mut Box<[u8]>) -> (Received, usize) {
        let spent = std::mem::replace(buf, h.buf);
        if spent.len() >= udp::RECV_BUF {
            let _ = self.reg.shared.spare_tx.try_send(spent);
        }
        let r = Received {
            len: h.len,
            from: h.from,
            stride: h.stride,
            truncated: h.start + h.len > buf.len(),
        };
        (r, h.start)
    }

    /// Read one batch from the socket into `buf`: kept in place when it is all this
    /// port's VNI, else split into runs and queued like the dispatcher does.
    fn read(
        &mut self,
        sock: &UdpSocket,
        buf: &mut Box<[u8]>,
    ) -> io::Result<Option<(Received, usize)>> {
        if buf.len() < udp::RECV_BUF {
            *buf = vec![0u8; udp::RECV_BUF].into_boxed_slice();
        }
        let r = udp::recv_one(sock, buf.get_mut(..udp::RECV_BUF).unwrap_or_default())?;
        let data = buf.get(..r.len.min(udp::RECV_BUF)).unwrap_or_default();
        let shared = &self.reg.shared;
        if !shared.runs(r, data, &mut self.scratch) {
            return Ok(None);
        }
        if let [(vni, 0, end)] = self.scratch.as_slice() {
            if *vni == self.vni && *end == data.len() {
                let count = data.len().div_ceil(r.stride.max(1)) as u64;
                shared.stats.datagrams.fetch_add(count, Ordering::Relaxed);
                shared
                    .stats
                    .read_by_port
                    .fetch_add(count, Ordering::Relaxed);
                return Ok(Some((r, 0)));
            }
        }
        let st = lock(&shared.state);
        shared.scatter(&st.routes, r, data, &self.scratch);
        Ok(None)
    }
}

struct Dispatcher {
    shared: Arc<Shared>,
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
            if !self.stop.load(Ordering::SeqCst) {
                self.drain(&mut batch);
            }
        }
    }

    /// Read until the socket would block.
    fn drain(&self, batch: &mut RecvBatch) {
        let sh = &self.shared;
        let mut runs = Vec::new();
        loop {
            let n = match batch.recv(&sh.sock) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                // Interrupted, or an ICMP error reported on the socket: skip it.
                Err(_) => continue,
            };
            let st = lock(&sh.state);
            for i in 0..n {
                let Some((r, data)) = batch.get(i) else {
                    continue;
                };
                if !sh.runs(r, data, &mut runs) {
                    continue;
                }
                // One run covering the batch (the common case): its buffer moves to the
                // port. Several: each is copied into a buffer of its own.
                match runs.as_slice() {
                    [(vni, 0, end)] if *end == data.len() => {
                        let (vni, len) = (*vni, *end);
                        match st.routes.get(&vni) {
                            Some(route) => {
                                let buf = batch.take(i, sh.spare_buf());
                                sh.forward(route, r, buf, 0, len);
                            }
                            None => sh.unknown(r, 0, len),
                        }
                    }
                    _ => sh.scatter(&st.routes, r, data, &runs),
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn dg(vni: u32, inner_len: usize) -> Vec<u8> {
        let mut v = vec![0u8; header::VXLAN_HDR_LEN + inner_len];
        header::encap(Vni::new(vni).unwrap(), &vec![0x02; inner_len], &mut v).unwrap();
        v
    }

    #[test]
    fn split_runs_groups_by_vni_and_counts_malformed() {
        let stride = dg(1, 20).len();
        let mut batch = Vec::new();
        batch.extend(dg(1, 20));
        batch.extend(dg(1, 20));
        batch.extend(vec![0u8; stride]); // I flag clear: malformed
        batch.extend(dg(2, 20));
        batch.extend(dg(2, 14)); // the last, shorter
        let mut runs = Vec::new();
        let malformed = split_runs(&batch, stride, &mut runs);
        assert_eq!(malformed, 1);
        let v = |n| Vni::new(n).unwrap();
        assert_eq!(
            runs,
            vec![(v(1), 0, 2 * stride), (v(2), 3 * stride, batch.len())]
        );
    }

    #[test]
    fn split_runs_never_panics_on_a_short_tail_or_zero_stride() {
        let mut runs = Vec::new();
        // A tail shorter than a VXLAN header, and a stride of 0 (read as 1).
        assert_eq!(split_runs(&[0x08, 0, 0], 64, &mut runs), 1);
        assert!(runs.is_empty());
        assert_eq!(split_runs(&[0x08; 3], 0, &mut runs), 3);
        assert!(runs.is_empty());
    }
}
