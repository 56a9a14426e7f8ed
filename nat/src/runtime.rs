//! The gateway's I/O layer: one `mio::Poll`, the switch link and every host socket the
//! gateway opens, run either on a thread of its own ([`Gateway::spawn`]) or inline, by
//! the switch worker that serves the gateway's port ([`Gateway::inline`]).
//!
//! Contract:
//!
//! * Both ways run the same loop turn (host events, commands, frames from the switch,
//!   the TCP stack, expiry) over the same state; only the waiting differs. The thread
//!   sleeps in its poll until the next deadline. Inline, the poll's descriptor is the
//!   port's (the switch worker's poll watches it), a `timerfd` in it stands for the next
//!   deadline, and frames cross between switch and gateway in plain queues owned by the
//!   port ([`InlineGateway`]): no thread, no lock, no wake-up between threads. Inline,
//!   the gateway's handle is answered only while the switch worker runs.
//! * [`Gateway::spawn`] takes its end of the link to the switch ([`Link`]): the peer end of
//!   a `DatagramPort::pair()` (made non-blocking here) or a [`GatewayLink`] of an
//!   in-process [`crate::port::link`] (what the engine uses), and starts the thread. The [`GatewayHandle`] talks to it with commands over a
//!   crossbeam channel plus a `mio::Waker`, like the switch runtime; every call waits for
//!   the thread's answer; a stopped thread answers [`Error::Gone`].
//! * [`GatewayHandle::publish`] binds the host socket on the caller's thread, so "address
//!   in use" comes back as [`Error::PortInUse`] and nothing is left half-made.
//! * Frames to the switch carry a zeroed vnet header. When the switch socket's (or the
//!   link's) queue is full, frames wait in a bounded queue flushed on writability (the
//!   link's space signal); past the bound they are dropped and counted
//!   ([`DropReason::TxError`]). On the in-process link a received frame's buffer is the
//!   gateway's: a big TCP segment's goes to the stack as is, the others go back to the
//!   link, and each loop turn moves the buffers of frames the switch took into the stack's
//!   pool and the pool's surplus (beyond `LINK_KEEP`, 16) back to the link, so frames are
//!   built and received in reused buffers both ways. At most `RX_BATCH` (256) frames are taken
//!   per turn; if more are queued the next poll does not sleep. The link is read on every
//!   loop turn and signals the gateway only while it is parked in the poll
//!   ([`GatewayLink::park`]).
//! * TCP: an egress SYN starts a non-blocking host connect and is held; the SYN is fed to
//!   the stack (a socket listening on its destination) only once the host connection is
//!   up, so a refused connect outside is answered with an RST to the SYN inside. Bytes are
//!   spliced straight between smoltcp's bounded buffers and the host socket: the host is
//!   read only into free smoltcp send space, smoltcp is drained only as far as the host
//!   socket accepts. FIN is carried both ways as a half-close, RST both ways as an abort
//!   (host side: `SO_LINGER` 0).
//! * This thread is the only reader of the clock: the cores ([`crate::core`],
//!   [`crate::flows`], [`crate::tcp`], [`crate::dns`]) are handed the time. The DNS
//!   forwarder runs on the time of the loop turn, read once when the poll returns; the
//!   poll sleeps no longer than the forwarder's next deadline.
//! * Frame contents never make the thread panic.
//! * Limits (`docs/security.md`): a new UDP, TCP or ICMP egress flow is admitted by the
//!   per-endpoint and per-network [`Limiter`], then by a descriptor of the process-wide
//!   [`crate::budget`]; a forwarded DNS query by the network's pending-forward cap
//!   ([`crate::Limits::dns_pending`]; past it the query gets SERVFAIL) and a descriptor
//!   (held until its answer, its SERVFAIL or its timeout); a published-port connection by
//!   its port's cap ([`crate::Limits::published_conns`]) and a descriptor (past either it
//!   is accepted and reset at once: `SO_LINGER` 0), a published UDP client by the same cap
//!   on the port's client table. Every refusal is counted as a drop
//!   ([`DropReason::FlowLimit`], [`DropReason::FdBudget`], [`DropReason::DnsLimit`],
//!   [`DropReason::PublishedConnLimit`]) and logged once per episode, not per packet.
//!   Permits are held by the flow records, so they go back whenever a flow does.
//! * Memory: the per-flow buffers are bounded ([`crate::tcp::SOCKET_BUF`] from the
//!   sandbox, [`crate::tcp::TO_SANDBOX_BUF`] toward it,
//!   [`DNS_TCP_MAX`] per DNS-over-TCP connection, at most [`DNS_TCP_CONNS_MAX`] of
//!   them); when the last TCP flow ends after at
//!   least [`TRIM_AFTER_FLOWS`] were open at once, free heap pages go back to the system
//!   ([`crate::mem::trim`]).

use crate::budget::{self, FdPermit};
use crate::core::{self, Core, Verdict, DNS_PORT};
use crate::dns::{Answer, Forward, Forwarder, Names};
use crate::flows::{FlowTable, LimitKind, Limiter};
use crate::port::GatewayLink;
use crate::stats::{DropReason, FlowProto, Stats, StatsSnapshot};
use crate::tcp::{Stack, TX_HEADROOM};
use crate::vnet;
use crate::{Config, Error, NameRecord, Proto, PublishSpec};
use crossbeam_channel::{Receiver, Sender, TryRecvError};
use ipnet::IpNet;
use mio::net::{TcpListener, TcpStream, UdpSocket};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use rustc_hash::FxHashMap;
use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp::State;
use socket2::{Domain, Protocol, SockRef, Socket, Type};
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixDatagram;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tapnet_switch::runtime::{FrameBatch, FrameIo};
use tapnet_switch::VNET_HDR_LEN;

const WAKER: Token = Token(usize::MAX);
const SWITCH: Token = Token(0);
/// The in-process link's "room again toward the switch" descriptor.
const SWITCH_SPACE: Token = Token(usize::MAX - 1);
/// The inline gateway's timer (its next deadline).
const TIMER: Token = Token(usize::MAX - 2);
/// Poll events taken per loop turn.
const EVENTS: usize = 1024;
/// Spare buffers the gateway keeps in its own pool before giving the rest back to the
/// in-process link (for the switch to fill).
const LINK_KEEP: usize = 16;
/// Frames waiting for room on the switch socket.
const OUT_QUEUE_MAX: usize = 4096;
/// Switch datagrams read per loop turn.
const RX_BATCH: usize = 256;
/// Most bytes buffered for one DNS-over-TCP connection.
const DNS_TCP_MAX: usize = 65537;
/// Most DNS-over-TCP connections open at once on one gateway (each holds a TCP socket's
/// buffers); past it a new one is reset.
const DNS_TCP_CONNS_MAX: usize = 256;

type Reply<T> = Sender<Result<T, Error>>;

enum Command {
    SetNames(Vec<NameRecord>),
    UpdateNames {
        removed: Vec<NameRecord>,
        added: Vec<NameRecord>,
    },
    SetIsolated(Vec<IpNet>),
    Publish {
        spec: PublishSpec,
        bound: SocketAddr,
        sock: HostSock,
        reply: Reply<()>,
    },
    Unpublish {
        proto: Proto,
        addr: SocketAddr,
        reply: Reply<()>,
    },
    Shutdown,
}

enum HostSock {
    Tcp(TcpListener),
    Udp(UdpSocket),
}

/// Starts gateways.
pub struct Gateway;

/// The gateway's end of its link to the switch.
pub enum Link {
    /// The peer end of a `DatagramPort::pair()` (one datagram per frame).
    Socket(UnixDatagram),
    /// The gateway's end of an in-process [`crate::port::link`] (shared frame queues).
    Queue(GatewayLink),
}

impl From<UnixDatagram> for Link {
    fn from(s: UnixDatagram) -> Link {
        Link::Socket(s)
    }
}

impl From<GatewayLink> for Link {
    fn from(l: GatewayLink) -> Link {
        Link::Queue(l)
    }
}

/// The link as the worker holds it.
enum SwitchLink {
    Socket(mio::net::UnixDatagram),
    Queue(GatewayLink),
    /// The gateway runs on the switch worker ([`InlineGateway`]): plain queues, no locks.
    Inline(InlineQueues),
}

/// The frames between the switch and an [`InlineGateway`], both ways, and spare buffers.
#[derive(Default)]
struct InlineQueues {
    /// Frames from the switch, not yet handled.
    inbox: VecDeque<Vec<u8>>,
    inbox_bytes: usize,
    /// Frames toward the switch, not yet taken.
    outbox: VecDeque<Vec<u8>>,
    outbox_bytes: usize,
    /// Buffers for frames from the switch.
    spare: Vec<Vec<u8>>,
}

impl InlineQueues {
    fn give(&mut self, buf: Vec<u8>) {
        if self.spare.len() < crate::port::SPARE_MAX {
            self.spare.push(buf);
        }
    }
}

/// Control handle of a running gateway. Dropping it stops the gateway.
pub struct GatewayHandle {
    tx: Sender<Command>,
    waker: Arc<Waker>,
    stats: Arc<Stats>,
    internal: bool,
    subnets: Vec<IpNet>,
    thread: Option<JoinHandle<()>>,
}

fn io_err(op: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    let op = op.into();
    move |source| Error::Io { op, source }
}

impl Gateway {
    /// Run a gateway for `config` on `link` (the switch port's peer end: a socket or an
    /// in-process link) on a new thread.
    pub fn spawn(config: Config, link: impl Into<Link>) -> Result<GatewayHandle, Error> {
        let poll = Poll::new().map_err(io_err("create poll"))?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER).map_err(io_err("create waker"))?);
        let switch = match link.into() {
            Link::Socket(sock) => {
                sock.set_nonblocking(true)
                    .map_err(io_err("set gateway socket non-blocking"))?;
                let mut switch = mio::net::UnixDatagram::from_std(sock);
                poll.registry()
                    .register(&mut switch, SWITCH, Interest::READABLE | Interest::WRITABLE)
                    .map_err(io_err("register gateway socket"))?;
                SwitchLink::Socket(switch)
            }
            Link::Queue(l) => {
                let r = poll.registry();
                r.register(&mut SourceFd(&l.ready_fd()), SWITCH, Interest::READABLE)
                    .map_err(io_err("register gateway link"))?;
                r.register(
                    &mut SourceFd(&l.space_fd()),
                    SWITCH_SPACE,
                    Interest::READABLE,
                )
                .map_err(io_err("register gateway link"))?;
                SwitchLink::Queue(l)
            }
        };
        let (mut handle, worker) = assemble(config, poll, waker, switch);
        let thread = std::thread::Builder::new()
            .name("tapnet-gw".into())
            .spawn(move || worker.run())
            .map_err(io_err("spawn gateway thread"))?;
        handle.thread = Some(thread);
        Ok(handle)
    }

    /// A gateway for `config` that runs on the switch worker serving its port: the
    /// returned [`InlineGateway`] is that port (attach it to the network's switch), the
    /// handle controls it as it controls a spawned one. No thread of its own and no
    /// wake-ups between threads: frames from the switch are handled, and the frames
    /// they cause are handed back, in the worker's own loop turns (see
    /// [`InlineGateway`]). The gateway lives as long as the port: removing the port
    /// closes its host sockets; [`GatewayHandle::shutdown`] makes the port end.
    pub fn inline(config: Config) -> Result<(GatewayHandle, InlineGateway), Error> {
        let poll = Poll::new().map_err(io_err("create poll"))?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER).map_err(io_err("create waker"))?);
        let timer = TimerFd::new(
            ClockId::CLOCK_MONOTONIC,
            TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
        )
        .map_err(|e| Error::Io {
            op: "create the gateway timer".into(),
            source: e.into(),
        })?;
        poll.registry()
            .register(
                &mut SourceFd(&timer.as_fd().as_raw_fd()),
                TIMER,
                Interest::READABLE,
            )
            .map_err(io_err("register gateway timer"))?;
        let switch = SwitchLink::Inline(InlineQueues::default());
        let (handle, worker) = assemble(config, poll, Arc::clone(&waker), switch);
        let port = InlineGateway {
            worker: Box::new(worker),
            events: Events::with_capacity(EVENTS),
            timer,
            armed: None,
            waker,
            woken: false,
            stopped: false,
        };
        Ok((handle, port))
    }
}

/// A gateway's state and its handle (no thread yet) for `config` over `poll` and `switch`.
fn assemble(
    config: Config,
    poll: Poll,
    waker: Arc<Waker>,
    switch: SwitchLink,
) -> (GatewayHandle, Worker) {
    let (tx, rx) = crossbeam_channel::unbounded();
    let stats = Arc::new(Stats::default());
    let subnets = subnets_of(&config);
    let handle = GatewayHandle {
        tx,
        waker,
        stats: Arc::clone(&stats),
        internal: config.internal,
        subnets: subnets.clone(),
        thread: None,
    };
    let worker = Worker::new(config, poll, switch, rx, stats, subnets);
    (handle, worker)
}

/// The subnets a gateway serves: its IPv4 one and, if any, its IPv6 one.
fn subnets_of(config: &Config) -> Vec<IpNet> {
    let mut subnets = vec![IpNet::V4(
        ipnet::Ipv4Net::new(config.ipv4, config.ipv4_prefix.min(32))
            .unwrap_or_else(|_| ipnet::Ipv4Net::from(config.ipv4))
            .trunc(),
    )];
    if let Some((a, p)) = config.ipv6 {
        subnets.push(IpNet::V6(
            ipnet::Ipv6Net::new(a, p.min(128))
                .unwrap_or_else(|_| ipnet::Ipv6Net::from(a))
                .trunc(),
        ));
    }
    subnets
}

/// A gateway run by the switch worker that serves it ([`Gateway::inline`]), as that
/// worker's port.
///
/// * Its descriptor is the gateway's own `epoll` (host sockets, the control handle's
///   waker, a `timerfd` armed for the gateway's next deadline), registered in the worker's
///   poll like any port's: it becomes readable when anything of the gateway's is.
/// * [`FrameIo::send`] hands a frame to the gateway. When nothing is queued before it and
///   the frame needs no offload preparation (tap offloads on: no GSO but TCP's with a
///   correct IP length, no partial checksum but TCP's), it is handled where it lies, in
///   the switch's batch: a TCP segment goes into the stack at once (smoltcp copies its
///   payload into the flow's buffer, the only copy), anything else as on the queued path.
///   Otherwise it is queued (a copy into a reused buffer); past
///   [`crate::port::QUEUE_BYTES`] queued it says `WouldBlock`. Either way the waker rings,
///   once until the worker next serves the port, so the worker comes back to this port
///   after its batch for the rest of the turn (host writes, ACKs).
/// * [`FrameIo::recv_batch`] runs the gateway's loop turns without sleeping (host
///   events, commands, the queued frames, the TCP stack, expiry) until nothing is
///   pending, then hands over the frames they produced: long ones lent to the batch
///   ([`FrameBatch::push_loan`]), short ones copied. With none, it arms the timer and
///   says `WouldBlock`. Once the gateway was told to stop it reads end of stream (the
///   switch retires the port) and refuses frames.
pub struct InlineGateway {
    worker: Box<Worker>,
    events: Events,
    timer: TimerFd,
    /// When the timer fires, if armed.
    armed: Option<Instant>,
    waker: Arc<Waker>,
    /// The waker was rung since the worker last served this port.
    woken: bool,
    stopped: bool,
}

/// The inline timer never waits less than this (a deadline due now is served by the
/// turn the timer causes, not by spinning).
const TIMER_MIN: Duration = Duration::from_micros(50);

impl InlineGateway {
    fn queues(&mut self) -> &mut InlineQueues {
        match &mut self.worker.switch {
            SwitchLink::Inline(q) => q,
            // Not reached: an inline gateway's worker is made with inline queues.
            _ => unreachable!("inline gateway without inline queues"),
        }
    }

    /// Run loop turns without sleeping until nothing is pending. A panic in the gateway
    /// (a bug: frame contents must never cause one) stops this gateway, not the switch
    /// worker that runs it and its other ports.
    fn service(&mut self) {
        let (worker, events) = (&mut self.worker, &mut self.events);
        let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            loop {
                if let Err(e) = worker.poll.poll(events, Some(Duration::ZERO)) {
                    if e.kind() != io::ErrorKind::Interrupted {
                        tracing::error!(error = %e, "gateway: poll failed; stopping");
                        return false;
                    }
                }
                if !worker.turn(events) {
                    return false;
                }
                let more_events = events.iter().count() >= EVENTS;
                if !more_events && !worker.switch_more {
                    break;
                }
            }
            worker.flush_out();
            true
        }));
        match served {
            Ok(true) => {}
            Ok(false) => self.stop(),
            Err(_) => {
                tracing::error!("gateway panicked; it is stopped (its network's switch goes on)");
                self.stop();
            }
        }
    }

    /// Handle a frame from the switch where it lies, when nothing is queued before it
    /// ([`Worker::datagram_in_place`]); false if it needs the copying path. A panic stops
    /// the gateway (as in [`InlineGateway::service`]) and counts as handled.
    fn in_place(&mut self, frame: &[u8]) -> bool {
        let worker = &mut self.worker;
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            worker.datagram_in_place(frame)
        })) {
            Ok(done) => done,
            Err(_) => {
                tracing::error!("gateway panicked; it is stopped (its network's switch goes on)");
                self.stop();
                true
            }
        }
    }

    /// Have the worker come back to this port (its poll) once its batch is done: ring the
    /// waker unless it was rung since the worker last served the port.
    fn want_turn(&mut self) {
        if self.woken {
            return;
        }
        self.woken = true;
        if let Err(e) = self.waker.wake() {
            tracing::warn!(error = %e, "gateway: wake");
        }
    }

    /// Stop for good: the port reads end of stream from now on, and the handle's calls
    /// (queued or future) say [`Error::Gone`] instead of waiting for a gateway that no
    /// longer runs. Host sockets close when the switch drops the port.
    fn stop(&mut self) {
        self.stopped = true;
        let (_, gone) = crossbeam_channel::unbounded();
        self.worker.rx = gone;
    }

    /// Arm the timer for the gateway's next deadline, unless it is armed for an earlier
    /// one that has not passed (an early turn is harmless, a late one is not).
    fn arm(&mut self) {
        let timeout = self.worker.next_timeout(false).max(TIMER_MIN);
        let now = Instant::now();
        let at = now + timeout;
        if self.armed.is_some_and(|t| t > now && t <= at) {
            return;
        }
        let spec = TimeSpec::from_duration(timeout);
        match self
            .timer
            .set(Expiration::OneShot(spec), TimerSetTimeFlags::empty())
        {
            Ok(()) => self.armed = Some(at),
            Err(e) => tracing::warn!(error = %e, "gateway: arm timer"),
        }
    }

    /// Serve the gateway unless frames already wait for the switch; false once it is
    /// stopped (the port then reads end of stream). The worker is serving the port, so the
    /// waker's event is spent: the next frame from the switch rings it again (the port
    /// stays ready while it hands over frames, and serves the gateway once they are out).
    fn fill(&mut self) -> bool {
        self.woken = false;
        if !self.stopped && self.queues().outbox.is_empty() {
            self.service();
        }
        !self.stopped
    }

    /// The next frame toward the switch if `lendable` accepts it (it sees the frame).
    fn pop_out(&mut self, lendable: impl FnOnce(&Vec<u8>) -> bool) -> Option<Vec<u8>> {
        let q = self.queues();
        if !lendable(q.outbox.front()?) {
            return None;
        }
        let f = q.outbox.pop_front()?;
        q.outbox_bytes -= f.len();
        Some(f)
    }
}

impl AsRawFd for InlineGateway {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.worker.poll.as_raw_fd()
    }
}

impl FrameIo for InlineGateway {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if !self.fill() {
            return Ok(0);
        }
        let Some(f) = self.pop_out(|_| true) else {
            self.arm();
            return Err(io::ErrorKind::WouldBlock.into());
        };
        let n = f.len().min(buf.len());
        buf[..n].copy_from_slice(&f[..n]);
        self.worker.stack.recycle(f);
        Ok(n)
    }

    fn recv_batch(&mut self, batch: &mut FrameBatch) -> io::Result<usize> {
        if batch.room() == 0 {
            return Err(io::ErrorKind::InvalidInput.into());
        }
        if !self.fill() {
            return Ok(0);
        }
        let mut n = 0;
        while batch.room() > 0 {
            let full = batch.is_full();
            let Some(frame) = self.pop_out(|f| crate::port::lendable(f) || !full) else {
                self.worker.flush_out();
                if self.queues().outbox.is_empty() {
                    self.arm();
                    if n == 0 {
                        return Err(io::ErrorKind::WouldBlock.into());
                    }
                    if !full {
                        batch.set_stop(io::ErrorKind::WouldBlock.into());
                    }
                    break;
                }
                if full {
                    break;
                }
                continue;
            };
            if let Some(spare) = crate::port::lend_or_copy(batch, frame) {
                self.worker.stack.recycle(spare);
            }
            n += 1;
        }
        Ok(n)
    }

    fn send(&mut self, frame: &[u8]) -> io::Result<usize> {
        if self.stopped {
            return Err(io::ErrorKind::ConnectionRefused.into());
        }
        if self.queues().inbox.is_empty() && self.in_place(frame) {
            self.want_turn();
            return Ok(frame.len());
        }
        let q = self.queues();
        if !q.inbox.is_empty() && q.inbox_bytes + frame.len() > crate::port::QUEUE_BYTES {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let mut buf = q.spare.pop().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(frame);
        q.inbox_bytes += frame.len();
        q.inbox.push_back(buf);
        self.want_turn();
        Ok(frame.len())
    }
}

impl GatewayHandle {
    fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, Error> {
        let (reply, answer) = crossbeam_channel::bounded(1);
        self.tx.send(make(reply)).map_err(|_| Error::Gone)?;
        self.waker.wake().map_err(io_err("wake gateway"))?;
        answer.recv().map_err(|_| Error::Gone)?
    }

    /// Replace the names the embedded DNS answers.
    pub fn set_names(&self, names: Vec<NameRecord>) -> Result<(), Error> {
        self.tx
            .send(Command::SetNames(names))
            .map_err(|_| Error::Gone)?;
        self.waker.wake().map_err(io_err("wake gateway"))
    }

    /// Change the names the embedded DNS answers by one endpoint's records: take the
    /// addresses of `removed` from their names, then add those of `added`
    /// ([`crate::dns::Names::remove`], [`crate::dns::Names::add`]); the other names and
    /// addresses stay.
    pub fn update_names(
        &self,
        removed: Vec<NameRecord>,
        added: Vec<NameRecord>,
    ) -> Result<(), Error> {
        self.tx
            .send(Command::UpdateNames { removed, added })
            .map_err(|_| Error::Gone)?;
        self.waker.wake().map_err(io_err("wake gateway"))
    }

    /// Replace the subnets (and addresses, as /32 or /128) the gateway must not route
    /// to: [`Config::isolated_subnets`] while the gateway runs. Flows already open
    /// are left alone; new ones are judged by the new list.
    pub fn set_isolated(&self, subnets: Vec<IpNet>) -> Result<(), Error> {
        self.tx
            .send(Command::SetIsolated(subnets))
            .map_err(|_| Error::Gone)?;
        self.waker.wake().map_err(io_err("wake gateway"))
    }

    /// Publish a port; returns the bound host address (its port is the one picked when
    /// `host_port` is 0). Fails with [`Error::PortInUse`] if the host port is taken.
    pub fn publish(&self, spec: PublishSpec) -> Result<SocketAddr, Error> {
        if self.internal {
            return Err(Error::Internal);
        }
        if !self.subnets.iter().any(|n| n.contains(&spec.sandbox_ip)) {
            return Err(Error::NotOnNetwork(spec.sandbox_ip));
        }
        let addr = SocketAddr::new(spec.host_ip, spec.host_port);
        let in_use = |e: io::Error| {
            if e.kind() == io::ErrorKind::AddrInUse {
                Error::PortInUse {
                    proto: spec.proto,
                    addr,
                }
            } else {
                Error::Io {
                    op: format!("bind {:?} {addr}", spec.proto),
                    source: e,
                }
            }
        };
        let (sock, bound) = match spec.proto {
            Proto::Tcp => {
                let l = crate::hostsock::bind_tcp(addr).map_err(in_use)?;
                let b = l.local_addr().map_err(io_err("local address"))?;
                (HostSock::Tcp(l), b)
            }
            Proto::Udp => {
                let u = crate::hostsock::bind_udp(addr).map_err(in_use)?;
                let b = u.local_addr().map_err(io_err("local address"))?;
                (HostSock::Udp(u), b)
            }
        };
        self.call(|reply| Command::Publish {
            spec,
            bound,
            sock,
            reply,
        })?;
        Ok(bound)
    }

    /// Stop publishing the port bound at `addr` (as returned by [`Self::publish`]).
    pub fn unpublish(&self, proto: Proto, addr: SocketAddr) -> Result<(), Error> {
        self.call(|reply| Command::Unpublish { proto, addr, reply })
    }

    /// The gateway's counters.
    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    /// Stop the gateway and join its thread (closing every host socket).
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let _ = self.tx.send(Command::Shutdown);
        let _ = self.waker.wake();
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::error!("gateway thread panicked");
            }
        }
    }
}

impl std::ops::Drop for GatewayHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What a poll token stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Owner {
    Udp(SocketAddr, SocketAddr),
    Icmp(IcmpKey),
    Tcp(u64),
    PubTcp(SocketAddr),
    PubUdp(SocketAddr),
    Dns(u64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct IcmpKey {
    src: IpAddr,
    ident: u16,
    dst: IpAddr,
}

struct UdpFlow {
    sock: UdpSocket,
    token: Token,
    _fd: FdPermit,
}

struct IcmpFlow {
    sock: Socket,
    raw: bool,
    token: Token,
    _fd: FdPermit,
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum TcpKind {
    /// Sandbox-initiated, to `dst` outside.
    Egress,
    /// From a published-port client into the sandbox.
    Published,
}

struct TcpFlow {
    kind: TcpKind,
    /// The sandbox's endpoint and the far endpoint as the sandbox sees them.
    inside: SocketAddr,
    outside: SocketAddr,
    stream: TcpStream,
    token: Token,
    handle: Option<SocketHandle>,
    /// The held SYN (egress, host connect pending).
    syn: Option<Vec<u8>>,
    connected: bool,
    readable: bool,
    writable: bool,
    host_eof: bool,
    shut_wr: bool,
    /// Counted against the limiter under this source.
    limited: Option<IpAddr>,
    /// A published-port connection: counted against that port (its bound address).
    published: Option<SocketAddr>,
    _fd: FdPermit,
}

struct PubTcp {
    spec: PublishSpec,
    listener: TcpListener,
    /// Connections open now.
    conns: usize,
    /// The connection limit refused one since `conns` was last below it (logged).
    refusing: bool,
}

struct PubUdp {
    spec: PublishSpec,
    sock: UdpSocket,
    token: Token,
    /// Presented client address → real client address.
    clients: FlowTable<SocketAddr, SocketAddr>,
}

enum DnsClient {
    Udp(SocketAddr),
    Tcp(SocketHandle),
}

/// The host side of a forwarded DNS query: the socket to its current upstream server.
struct DnsSock {
    sock: Option<UdpSocket>,
    token: Token,
    _fd: FdPermit,
}

struct DnsConn {
    handle: SocketHandle,
    buf: Vec<u8>,
}

struct Worker {
    core: Core,
    names: Names,
    stack: Stack,
    poll: Poll,
    switch: SwitchLink,
    /// In-process link: frames are left in the link's queue (poll again at once).
    switch_more: bool,
    /// When expiry last ran (`now_ms`).
    last_tick: u64,
    rx: Receiver<Command>,
    stats: Arc<Stats>,
    start: Instant,
    /// The clock of this loop turn (`now_ms`), read once after the poll returns.
    turn_ms: u64,
    out: VecDeque<Vec<u8>>,
    next_token: usize,
    owners: FxHashMap<Token, Owner>,
    limiter: Limiter,
    udp: FlowTable<(SocketAddr, SocketAddr), UdpFlow>,
    icmp: FlowTable<IcmpKey, IcmpFlow>,
    ping_warned: bool,
    tcp: FxHashMap<u64, TcpFlow>,
    tcp_by_key: FxHashMap<(SocketAddr, SocketAddr), u64>,
    next_flow: u64,
    pub_tcp: FxHashMap<SocketAddr, PubTcp>,
    pub_udp: FxHashMap<SocketAddr, PubUdp>,
    /// Forwarded DNS queries: retries and timeouts (no I/O, the clock passed in).
    dns: Forwarder<DnsClient>,
    /// Their host sockets, by forwarded query id.
    dns_socks: FxHashMap<u64, DnsSock>,
    dns_listeners: Vec<(SocketAddr, SocketHandle)>,
    dns_conns: Vec<DnsConn>,
    buf: Vec<u8>,
    /// `Config::tap_offloads`.
    offloads: bool,
    /// With tap offloads: the MSS each sandbox announced, by (sandbox, far end).
    mss: FxHashMap<(SocketAddr, SocketAddr), u16>,
    /// `Limits::dns_pending`, `Limits::published_conns`.
    dns_pending_max: usize,
    published_max: usize,
    /// The DNS pending limit refused a query since the queue was last below 3/4 of it.
    dns_refusing: bool,
    /// Most TCP flows open at once since the last [`crate::mem::trim`].
    tcp_peak: usize,
}

/// TCP flows a gateway must have had open at once before its last one ending makes it
/// hand free memory back ([`crate::mem::trim`]).
const TRIM_AFTER_FLOWS: usize = 64;

fn smol_now(start: Instant) -> smoltcp::time::Instant {
    smoltcp::time::Instant::from_micros(
        i64::try_from(start.elapsed().as_micros()).unwrap_or(i64::MAX),
    )
}

fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

fn unspecified_for(ip: IpAddr) -> SocketAddr {
    match ip {
        IpAddr::V4(_) => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
        IpAddr::V6(_) => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
    }
}

impl Worker {
    fn new(
        cfg: Config,
        poll: Poll,
        switch: SwitchLink,
        rx: Receiver<Command>,
        stats: Arc<Stats>,
        subnets: Vec<IpNet>,
    ) -> Worker {
        let start = Instant::now();
        let names = Names::new(&cfg.dns_suffixes, subnets);
        let limiter = Limiter::new(cfg.limits.per_endpoint, cfg.limits.per_network);
        let udp_idle = u64::try_from(cfg.limits.udp_idle.as_millis()).unwrap_or(u64::MAX);
        let icmp_idle = u64::try_from(cfg.limits.icmp_idle.as_millis()).unwrap_or(u64::MAX);
        let mut stack = Stack::new(&cfg, smol_now(start));
        let mut dns_listeners = Vec::new();
        let gws: Vec<IpAddr> = std::iter::once(IpAddr::V4(cfg.ipv4))
            .chain(cfg.ipv6.map(|(a, _)| IpAddr::V6(a)))
            .collect();
        for gw in gws {
            let at = SocketAddr::new(gw, DNS_PORT);
            if let Some(h) = stack.listen(at) {
                dns_listeners.push((at, h));
            }
        }
        let offloads = cfg.tap_offloads;
        let dns_pending_max = cfg.limits.dns_pending;
        let published_max = cfg.limits.published_conns;
        let dns = Forwarder::new(cfg.upstream_dns.clone(), cfg.dns_timeout);
        Worker {
            offloads,
            mss: FxHashMap::default(),
            dns_pending_max,
            published_max,
            dns_refusing: false,
            tcp_peak: 0,
            core: Core::new(cfg),
            names,
            stack,
            poll,
            switch,
            switch_more: false,
            last_tick: 0,
            rx,
            stats,
            start,
            turn_ms: 0,
            out: VecDeque::new(),
            next_token: 1,
            owners: FxHashMap::default(),
            limiter,
            udp: FlowTable::new(udp_idle),
            icmp: FlowTable::new(icmp_idle),
            ping_warned: false,
            tcp: FxHashMap::default(),
            tcp_by_key: FxHashMap::default(),
            next_flow: 0,
            pub_tcp: FxHashMap::default(),
            pub_udp: FxHashMap::default(),
            dns,
            dns_socks: FxHashMap::default(),
            dns_listeners,
            dns_conns: Vec::new(),
            buf: vec![0u8; tapnet_switch::runtime::RECV_BUF_LEN],
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn token(&mut self, owner: Owner) -> Token {
        let t = Token(self.next_token);
        self.next_token = self.next_token.wrapping_add(1).max(1);
        self.owners.insert(t, owner);
        t
    }

    /// Give a host TCP socket a flow id and a token and register it with the poll;
    /// `None` (nothing left registered) when the registry refuses it.
    fn register_tcp(&mut self, stream: &mut TcpStream) -> Option<(u64, Token)> {
        let id = self.next_flow;
        self.next_flow += 1;
        let token = self.token(Owner::Tcp(id));
        let interest = Interest::READABLE | Interest::WRITABLE;
        if self
            .poll
            .registry()
            .register(stream, token, interest)
            .is_err()
        {
            self.owners.remove(&token);
            return None;
        }
        Some((id, token))
    }

    fn run(mut self) {
        let mut events = Events::with_capacity(EVENTS);
        loop {
            let timeout = self.next_timeout(true);
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    tracing::error!(error = %e, "gateway: poll failed; stopping");
                    return;
                }
            }
            if !self.turn(&events) {
                return;
            }
        }
    }

    /// How long the loop may sleep: until the stack's or the DNS forwarder's next
    /// deadline, at most 500 ms (the once-a-second expiry), zero while frames wait in the
    /// link. With `park`, a thread about to sleep on the in-process link parks it first.
    fn next_timeout(&mut self, park: bool) -> Duration {
        let now = smol_now(self.start);
        let mut timeout = Duration::from_millis(500);
        if self.switch_more {
            timeout = Duration::ZERO;
        }
        if let SwitchLink::Queue(l) = &self.switch {
            if park && !self.switch_more && !l.park() {
                timeout = Duration::ZERO;
            }
        }
        if let Some(d) = self.stack.poll_delay(now) {
            timeout = timeout.min(Duration::from_micros(d.total_micros()));
        }
        if let Some(deadline) = self.dns.next_deadline() {
            let now_ms = u64::try_from(now.total_millis()).unwrap_or(0);
            timeout = timeout.min(Duration::from_millis(deadline.saturating_sub(now_ms)));
        }
        timeout
    }

    /// One loop turn after the poll returned `events`: host sockets, commands, frames
    /// from the switch, the stack, expiry. False when the gateway must stop.
    fn turn(&mut self, events: &Events) -> bool {
        self.turn_ms = self.now_ms();
        let mut switch_readable = false;
        match &self.switch {
            SwitchLink::Queue(l) => {
                l.unpark();
                // Frames queued while awake are not signalled: look on every turn.
                switch_readable = true;
            }
            SwitchLink::Inline(q) => switch_readable = !q.inbox.is_empty(),
            SwitchLink::Socket(_) => {}
        }
        for ev in events.iter() {
            match ev.token() {
                WAKER | TIMER => {}
                SWITCH => {
                    if ev.is_readable() {
                        switch_readable = true;
                    }
                    if ev.is_writable() {
                        self.flush_out();
                    }
                }
                SWITCH_SPACE => self.flush_out(),
                t => self.host_event(t, ev.is_readable(), ev.is_writable()),
            }
        }
        if !self.drain_commands() {
            return false;
        }
        if switch_readable || self.switch_more {
            self.read_switch();
        }
        self.service_tcp();
        self.balance_buffers();
        let ms = self.now_ms();
        if ms.saturating_sub(self.last_tick) >= 1000 {
            self.last_tick = ms;
            self.expire(ms);
        }
        self.dns_timeouts(self.turn_ms);
        true
    }

    // ---- switch side -------------------------------------------------------------

    fn send_frame(&mut self, eth: &[u8]) {
        self.send_datagram(vnet::with_zero_hdr(eth));
    }

    /// Send (or queue) one switch datagram: a zeroed virtio-net header (filled here with
    /// tap offloads) and an Ethernet frame.
    fn send_datagram(&mut self, mut f: Vec<u8>) {
        if self.offloads {
            let mtu = usize::from(self.core.config().mtu);
            let (hdr, frame) = f.split_at_mut(VNET_HDR_LEN);
            let mss = if frame.len() > mtu + vnet::ETH_HDR_LEN {
                frame
                    .get(vnet::ETH_HDR_LEN..)
                    .and_then(vnet::tcp_endpoints)
                    .and_then(|(s, d)| self.mss.get(&(d, s)).copied())
            } else {
                None
            };
            hdr.copy_from_slice(&vnet::offload_hdr(frame, mtu, mss));
        }
        if self.out.is_empty() {
            match self.link_send(f) {
                Ok(()) => {
                    Stats::inc(&self.stats.frames_out);
                    return;
                }
                Err((back, io::ErrorKind::WouldBlock)) => f = back,
                Err(_) => {
                    self.stats.dropped(DropReason::TxError);
                    return;
                }
            }
        }
        if self.out.len() >= OUT_QUEUE_MAX {
            self.stats.dropped(DropReason::TxError);
        } else {
            self.out.push_back(f);
        }
    }

    fn flush_out(&mut self) {
        while let Some(f) = self.out.pop_front() {
            match self.link_send(f) {
                Ok(()) => Stats::inc(&self.stats.frames_out),
                Err((back, io::ErrorKind::WouldBlock)) => {
                    self.out.push_front(back);
                    return;
                }
                Err(_) => self.stats.dropped(DropReason::TxError),
            }
        }
    }

    /// Hand one datagram to the switch; on failure give it back with the error's kind.
    fn link_send(&mut self, f: Vec<u8>) -> Result<(), (Vec<u8>, io::ErrorKind)> {
        match &mut self.switch {
            SwitchLink::Socket(s) => loop {
                match s.send(&f) {
                    Ok(_) => {
                        self.stack.recycle(f);
                        return Ok(());
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err((f, e.kind())),
                }
            },
            SwitchLink::Queue(l) => l.send(f),
            SwitchLink::Inline(q) => {
                if !q.outbox.is_empty() && q.outbox_bytes + f.len() > crate::port::QUEUE_BYTES {
                    return Err((f, io::ErrorKind::WouldBlock));
                }
                q.outbox_bytes += f.len();
                q.outbox.push_back(f);
                Ok(())
            }
        }
    }

    /// In-process link: buffers of frames the switch took go back to the stack's pool,
    /// and the pool's surplus (receive buffers the stack consumed) to the link, for the
    /// switch to fill.
    fn balance_buffers(&mut self) {
        if let SwitchLink::Inline(q) = &mut self.switch {
            let mut bufs = Vec::new();
            let room = crate::port::SPARE_MAX.saturating_sub(q.spare.len());
            self.stack.take_surplus(LINK_KEEP, &mut bufs);
            let keep = bufs.len().min(room);
            q.spare.extend(bufs.drain(..keep));
            return;
        }
        let SwitchLink::Queue(l) = &self.switch else {
            return;
        };
        let mut bufs = Vec::new();
        l.take_spent(&mut bufs);
        for b in bufs.drain(..) {
            self.stack.recycle(b);
        }
        self.stack.take_surplus(LINK_KEEP, &mut bufs);
        for b in bufs {
            l.give(b);
        }
    }

    /// Send one packet of the TCP stack (after [`TX_HEADROOM`] bytes of room): with tap
    /// offloads and a known neighbour, the datagram is built in place.
    fn send_stack(&mut self, mut buf: Vec<u8>) {
        if self.offloads {
            let mtu = usize::from(self.core.config().mtu);
            let ip = buf.get_mut(TX_HEADROOM..).unwrap_or_default();
            vnet::clamp_syn_mss(ip, mtu);
            let dst = vnet::tcp_endpoints(ip).map(|(_, d)| d.ip());
            if let Some((dst, mac)) = dst.and_then(|d| Some((d, self.core.neighbour(d)?))) {
                let ethertype: u16 = if dst.is_ipv4() { 0x0800 } else { 0x86dd };
                let own = self.core.config().mac;
                if let Some(h) = buf.get_mut(..TX_HEADROOM) {
                    h.fill(0);
                    h[VNET_HDR_LEN..VNET_HDR_LEN + 6].copy_from_slice(&mac);
                    h[VNET_HDR_LEN + 6..VNET_HDR_LEN + 12].copy_from_slice(&own);
                    h[VNET_HDR_LEN + 12..].copy_from_slice(&ethertype.to_be_bytes());
                }
                self.send_datagram(buf);
                return;
            }
        }
        buf.drain(..TX_HEADROOM.min(buf.len()));
        self.send_ip(buf);
    }

    /// Address an IP packet to the sandbox side and send it.
    fn send_ip(&mut self, mut packet: Vec<u8>) {
        let mtu = usize::from(self.core.config().mtu);
        if self.offloads {
            // Big TCP segments leave as GSO super-frames (`send_frame`).
            vnet::clamp_syn_mss(&mut packet, mtu);
        }
        if packet.len() > mtu && !(self.offloads && vnet::tcp_endpoints(&packet).is_some()) {
            self.stats.dropped(DropReason::Undeliverable);
            return;
        }
        match self.core.frame_to(packet) {
            Ok(f) => self.send_frame(&f),
            Err(Some(solicit)) => self.send_frame(&solicit),
            Err(None) => {}
        }
    }

    fn read_switch(&mut self) {
        self.switch_more = false;
        if matches!(self.switch, SwitchLink::Queue(_)) {
            self.read_link();
            return;
        }
        if matches!(self.switch, SwitchLink::Inline(_)) {
            // Frames are taken one by one (no batch vector per turn); only the switch
            // worker, which runs this turn, fills the inbox.
            for _ in 0..RX_BATCH {
                let SwitchLink::Inline(q) = &mut self.switch else {
                    return;
                };
                let Some(dg) = q.inbox.pop_front() else {
                    break;
                };
                q.inbox_bytes -= dg.len();
                let n = dg.len();
                if let Some(b) = self.datagram(dg, n) {
                    if let SwitchLink::Inline(q) = &mut self.switch {
                        q.give(b);
                    }
                }
            }
            if let SwitchLink::Inline(q) = &self.switch {
                self.switch_more = !q.inbox.is_empty();
            }
            return;
        }
        for _ in 0..RX_BATCH {
            let SwitchLink::Socket(sock) = &self.switch else {
                return;
            };
            let n = match sock.recv(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            };
            let dg = std::mem::take(&mut self.buf);
            self.buf = match self.datagram(dg, n) {
                Some(b) => b,
                // The stack kept the buffer: receive the next datagram into a pooled one.
                None => self.stack.buffer(tapnet_switch::runtime::RECV_BUF_LEN),
            };
        }
        // More may be queued: mio is edge-triggered, so poll again without sleeping.
        if let SwitchLink::Socket(sock) = &mut self.switch {
            if let Err(e) = self.poll.registry().reregister(
                sock,
                SWITCH,
                Interest::READABLE | Interest::WRITABLE,
            ) {
                tracing::warn!(error = %e, "gateway: reregister switch socket");
            }
        }
    }

    /// Read the in-process link: up to [`RX_BATCH`] frames; if it had more, the next poll
    /// does not sleep.
    fn read_link(&mut self) {
        let SwitchLink::Queue(l) = &self.switch else {
            return;
        };
        let mut frames = VecDeque::new();
        self.switch_more = l.recv(&mut frames, RX_BATCH) == RX_BATCH;
        let mut back = Vec::new();
        for dg in frames {
            let n = dg.len();
            if let Some(b) = self.datagram(dg, n) {
                back.push(b);
            }
        }
        if let SwitchLink::Queue(l) = &self.switch {
            for b in back {
                l.give(b);
            }
        }
    }

    /// Inline gateway, nothing queued before it: handle the switch datagram `dg` where it
    /// lies, without copying it, if [`vnet::ready_in_place`] says the offload preparation
    /// has nothing to change. TCP segments of known flows go to the stack at once
    /// ([`Stack::ingest`]); a SYN or SYN-ACK (whose MSS option is rewritten) takes a copy
    /// of the segment, as on the copying path. False (nothing done) if the datagram needs
    /// the copying path.
    fn datagram_in_place(&mut self, dg: &[u8]) -> bool {
        if !self.offloads || !vnet::ready_in_place(dg) {
            return false;
        }
        Stats::inc(&self.stats.frames_in);
        let eth = dg.get(VNET_HDR_LEN..).unwrap_or_default();
        let v = self.core.classify(eth);
        match self.unflush(v) {
            Verdict::Tcp { at, src, dst, syn } => {
                let Some(ip) = eth.get(at) else {
                    self.stats.dropped(DropReason::Truncated);
                    return true;
                };
                if syn || vnet::has_syn(ip) {
                    // A SYN or SYN-ACK: its MSS option is rewritten (`tcp_in`), in a copy.
                    let p = ip.to_vec();
                    let len = p.len();
                    self.tcp_in(p, 0..len, src, dst, syn);
                    return true;
                }
                // As `tcp_in` for a segment without SYN: the stack takes it, unless its
                // flow's host connect is still pending.
                if !self.connect_pending((src, dst)) {
                    self.stack.ingest(ip, smol_now(self.start));
                }
            }
            v => self.handle_verdict(v),
        }
        true
    }

    /// One switch datagram (its first `n` bytes of `dg`): classify and handle it. Gives
    /// the buffer back unless the TCP stack kept it.
    fn datagram(&mut self, mut dg: Vec<u8>, n: usize) -> Option<Vec<u8>> {
        Stats::inc(&self.stats.frames_in);
        if n > dg.len() {
            self.stats.dropped(DropReason::Truncated);
            return Some(dg);
        }
        if self.offloads {
            match vnet::prepare_offloaded(&mut dg[..n]) {
                Ok(true) => {
                    let eth = dg.get(VNET_HDR_LEN..n).unwrap_or_default();
                    let v = self.core.classify(eth);
                    match self.unflush(v) {
                        Verdict::Tcp { at, src, dst, syn } => {
                            let at = at.start + VNET_HDR_LEN..at.end + VNET_HDR_LEN;
                            if at.len() < crate::tcp::POOL_MIN_LEN {
                                // A small segment (an ACK): copying it is cheaper than
                                // giving up the 64 KiB receive buffer.
                                let p = dg.get(at.clone()).unwrap_or_default().to_vec();
                                let len = p.len();
                                self.tcp_in(p, 0..len, src, dst, syn);
                                return Some(dg);
                            }
                            // Hand the receive buffer itself to the stack (no copy of
                            // the segment).
                            self.tcp_in(dg, at, src, dst, syn);
                            return None;
                        }
                        v => self.handle_verdict(v),
                    }
                    return Some(dg);
                }
                Ok(false) => {}
                Err(r) => {
                    self.stats.dropped(r);
                    return Some(dg);
                }
            }
        }
        let mut frames = Vec::new();
        if let Err(r) = vnet::ingest(&dg[..n], &mut frames) {
            self.stats.dropped(r);
            return Some(dg);
        }
        for f in frames {
            let v = self.core.classify(&f);
            match self.unflush(v) {
                Verdict::Tcp { at, src, dst, syn } => self.tcp_in(f, at, src, dst, syn),
                v => self.handle_verdict(v),
            }
        }
        Some(dg)
    }

    /// Send the frames a verdict flushed from the neighbour queue; what is left to do
    /// with the classified frame itself.
    fn unflush(&mut self, v: Verdict) -> Verdict {
        match v {
            Verdict::Flush(fs) => {
                for f in fs {
                    self.send_frame(&f);
                }
                Verdict::Ignore
            }
            Verdict::FlushThen { flush, then } => {
                for f in flush {
                    self.send_frame(&f);
                }
                *then
            }
            v => v,
        }
    }

    fn handle_verdict(&mut self, v: Verdict) {
        match v {
            Verdict::Reply(f) => self.send_frame(&f),
            v @ (Verdict::Flush(_) | Verdict::FlushThen { .. }) => {
                let v = self.unflush(v);
                self.handle_verdict(v);
            }
            Verdict::Ignore => {}
            Verdict::DropReason(r) => self.stats.dropped(r),
            Verdict::Dns { src, query } => self.dns_query(DnsClient::Udp(src), query),
            Verdict::Udp { src, dst, payload } => self.udp_out(src, dst, &payload),
            Verdict::Echo {
                src,
                dst,
                ident,
                seq,
                data,
            } => self.echo_out(src, dst, ident, seq, &data),
            // `read_switch` hands TCP segments to `tcp_in` with the frame's buffer.
            Verdict::Tcp { .. } => {}
        }
    }

    /// One descriptor of the process's budget for a new flow or query, or `None` (counted
    /// as [`DropReason::FdBudget`], logged once per episode).
    fn fd(&mut self, what: &str) -> Option<FdPermit> {
        match budget::global().acquire() {
            Ok(p) => Some(p),
            Err(e) => {
                self.stats.dropped(DropReason::FdBudget);
                if e.first {
                    tracing::warn!(
                        limit = e.limit, what,
                        "gateway: the daemon's descriptor budget for flows is spent; new flows, DNS forwards and published-port connections are refused until flows end"
                    );
                }
                None
            }
        }
    }

    /// Admit a new flow from `src`: its endpoint's and network's flow limits, then a
    /// descriptor of the budget. `None` (counted, logged once) if any refuses it.
    fn admit(&mut self, src: IpAddr, proto: &str) -> Option<FdPermit> {
        if !self.limit(src, proto) {
            return None;
        }
        match self.fd(proto) {
            Some(p) => Some(p),
            None => {
                self.limiter.release(src);
                Stats::inc(&self.stats.flow_limit_hits);
                None
            }
        }
    }

    fn limit(&mut self, src: IpAddr, proto: &str) -> bool {
        match self.limiter.acquire(src) {
            Ok(()) => true,
            Err(hit) => {
                Stats::inc(&self.stats.flow_limit_hits);
                self.stats.dropped(DropReason::FlowLimit);
                if hit.first {
                    match hit.kind {
                        LimitKind::Endpoint => tracing::warn!(
                            source = %src, limit = hit.limit, proto,
                            "gateway: per-endpoint flow limit reached; new flows from this endpoint are dropped"
                        ),
                        LimitKind::Network => tracing::warn!(
                            limit = hit.limit, proto,
                            "gateway: per-network flow limit reached; new flows on this network are dropped"
                        ),
                    }
                }
                false
            }
        }
    }

    // ---- UDP ------------------------------------------------------------------------

    fn udp_out(&mut self, src: SocketAddr, dst: SocketAddr, payload: &[u8]) {
        let now = self.now_ms();
        // A sandbox answering a published-port client? (One sandbox port may be published
        // on several host sockets: IPv4 and IPv6 of one binding.)
        for p in self
            .pub_udp
            .values_mut()
            .filter(|p| SocketAddr::new(p.spec.sandbox_ip, p.spec.sandbox_port) == src)
        {
            if let Some(client) = p.clients.touch(&dst, now).copied() {
                if p.sock.send_to(payload, client).is_err() {
                    self.stats.dropped(DropReason::HostSocket);
                }
                return;
            }
        }
        if self.core.is_gateway(dst.ip()) || self.core.config().internal {
            self.stats.dropped(if self.core.config().internal {
                DropReason::Internal
            } else {
                DropReason::NotForUs
            });
            return;
        }
        let key = (src, dst);
        if self.udp.touch(&key, now).is_none() {
            let Some(fd) = self.admit(src.ip(), "udp") else {
                return;
            };
            let sock = match UdpSocket::bind(unspecified_for(dst.ip())).and_then(|s| {
                s.connect(dst)?;
                Ok(s)
            }) {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(error = %e, %dst, "gateway: udp flow socket");
                    self.limiter.release(src.ip());
                    self.stats.dropped(DropReason::HostSocket);
                    return;
                }
            };
            let token = self.token(Owner::Udp(src, dst));
            let mut sock = sock;
            if self
                .poll
                .registry()
                .register(&mut sock, token, Interest::READABLE)
                .is_err()
            {
                self.owners.remove(&token);
                self.limiter.release(src.ip());
                self.stats.dropped(DropReason::HostSocket);
                return;
            }
            self.udp.insert(
                key,
                UdpFlow {
                    sock,
                    token,
                    _fd: fd,
                },
                now,
            );
            self.stats.flow_opened(FlowProto::Udp);
        }
        if let Some(f) = self.udp.get(&key) {
            if f.sock.send(payload).is_err() {
                self.stats.dropped(DropReason::HostSocket);
            }
        }
    }

    fn udp_in(&mut self, src: SocketAddr, dst: SocketAddr) {
        let now = self.now_ms();
        loop {
            let Some(f) = self.udp.touch(&(src, dst), now) else {
                return;
            };
            match f.sock.recv(&mut self.buf) {
                Ok(n) => {
                    let payload = self.buf.get(..n).unwrap_or_default().to_vec();
                    match core::udp_packet(dst, src, &payload) {
                        Some(p) => self.send_ip(p),
                        None => self.stats.dropped(DropReason::Undeliverable),
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                // ICMP errors (port unreachable) surface as errors on connected sockets.
                Err(_) => return,
            }
        }
    }

    fn pub_udp_in(&mut self, bound: SocketAddr) {
        let now = self.now_ms();
        loop {
            let Some(p) = self.pub_udp.get_mut(&bound) else {
                return;
            };
            let (n, client) = match p.sock.recv_from(&mut self.buf) {
                Ok(x) => x,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => return,
            };
            let client = canonical(client);
            let sandbox = SocketAddr::new(p.spec.sandbox_ip, p.spec.sandbox_port);
            let presented = present_client(&self.core, client, sandbox);
            if p.clients.touch(&presented, now).is_none() {
                if p.clients.len() >= self.published_max {
                    // Memory, not descriptors: a bounded table of clients.
                    self.stats.dropped(DropReason::PublishedConnLimit);
                    continue;
                }
                p.clients.insert(presented, client, now);
            }
            let payload = self.buf.get(..n).unwrap_or_default().to_vec();
            match core::udp_packet(presented, sandbox, &payload) {
                Some(pkt) => self.send_ip(pkt),
                None => self.stats.dropped(DropReason::Undeliverable),
            }
        }
    }

    // ---- ICMP echo --------------------------------------------------------------------

    fn ping_socket(&mut self, dst: IpAddr) -> Option<(Socket, bool)> {
        let (domain, proto) = match dst {
            IpAddr::V4(_) => (Domain::IPV4, Protocol::ICMPV4),
            IpAddr::V6(_) => (Domain::IPV6, Protocol::ICMPV6),
        };
        let sock = match Socket::new(domain, Type::DGRAM, Some(proto)) {
            Ok(s) => Some((s, false)),
            Err(_) => Socket::new(domain, Type::RAW, Some(proto))
                .ok()
                .map(|s| (s, true)),
        };
        let Some((sock, raw)) = sock else {
            if !self.ping_warned {
                self.ping_warned = true;
                tracing::warn!(
                    "gateway: ICMP echo egress disabled: neither ping sockets \
                     (net.ipv4.ping_group_range) nor raw sockets are permitted; echo requests are dropped"
                );
            }
            return None;
        };
        if sock.set_nonblocking(true).is_err()
            || sock.connect(&SocketAddr::new(dst, 0).into()).is_err()
        {
            return None;
        }
        Some((sock, raw))
    }

    fn echo_out(&mut self, src: IpAddr, dst: IpAddr, ident: u16, seq: u16, data: &[u8]) {
        let now = self.now_ms();
        let key = IcmpKey { src, ident, dst };
        if self.icmp.touch(&key, now).is_none() {
            let Some(permit) = self.admit(src, "icmp") else {
                return;
            };
            let Some((sock, raw)) = self.ping_socket(dst) else {
                self.limiter.release(src);
                self.stats.dropped(DropReason::PingNotPermitted);
                return;
            };
            let token = self.token(Owner::Icmp(key));
            let fd = sock.as_raw_fd();
            if self
                .poll
                .registry()
                .register(&mut SourceFd(&fd), token, Interest::READABLE)
                .is_err()
            {
                self.owners.remove(&token);
                self.limiter.release(src);
                self.stats.dropped(DropReason::HostSocket);
                return;
            }
            self.icmp.insert(
                key,
                IcmpFlow {
                    sock,
                    raw,
                    token,
                    _fd: permit,
                },
                now,
            );
            self.stats.flow_opened(FlowProto::Icmp);
        }
        let Some(f) = self.icmp.get(&key) else {
            return;
        };
        // type, code, checksum, ident, seq, data. Ping sockets fill ident and checksum;
        // for raw IPv4 the checksum is ours, raw ICMPv6 checksums are the kernel's.
        let ty = if dst.is_ipv4() { 8 } else { 128 };
        let mut msg = Vec::with_capacity(8 + data.len());
        msg.extend_from_slice(&[ty, 0, 0, 0]);
        msg.extend_from_slice(&ident.to_be_bytes());
        msg.extend_from_slice(&seq.to_be_bytes());
        msg.extend_from_slice(data);
        if f.raw && dst.is_ipv4() {
            let c = tapnet_wire::checksum::checksum(&msg);
            if let Some(b) = msg.get_mut(2..4) {
                b.copy_from_slice(&c.to_be_bytes());
            }
        }
        if f.sock.send(&msg).is_err() {
            self.stats.dropped(DropReason::HostSocket);
        }
    }

    fn echo_in(&mut self, key: IcmpKey) {
        let now = self.now_ms();
        loop {
            let Some(f) = self.icmp.touch(&key, now) else {
                return;
            };
            let raw = f.raw;
            let n = match (&f.sock).read(&mut self.buf) {
                Ok(n) => n,
                Err(_) => return,
            };
            let msg = self.buf.get(..n).unwrap_or_default();
            // Raw IPv4 sockets deliver the IP header too.
            let msg = if raw && key.dst.is_ipv4() {
                let ihl = usize::from(msg.first().map_or(0, |b| b & 0x0f)) * 4;
                msg.get(ihl..).unwrap_or_default()
            } else {
                msg
            };
            let reply_type = if key.dst.is_ipv4() { 0 } else { 129 };
            let (Some(&ty), Some(id), Some(seq), Some(data)) =
                (msg.first(), msg.get(4..6), msg.get(6..8), msg.get(8..))
            else {
                continue;
            };
            if ty != reply_type {
                continue;
            }
            // Ping sockets rewrite the identifier; raw sockets see every echo reply.
            let ident = u16::from_be_bytes([id[0], id[1]]);
            if raw && ident != key.ident {
                continue;
            }
            let seq = u16::from_be_bytes([seq[0], seq[1]]);
            match core::echo_reply_packet(key.dst, key.src, key.ident, seq, data) {
                Some(p) => self.send_ip(p),
                None => self.stats.dropped(DropReason::Undeliverable),
            }
        }
    }

    // ---- TCP --------------------------------------------------------------------------

    /// One TCP segment from the sandbox side: the IP packet at `at` in `buf`.
    /// The egress flow `key` (sandbox, far end) waits for its host connect: its SYN is
    /// held, and what the sandbox sends meanwhile (retransmissions) is ignored.
    fn connect_pending(&self, key: (SocketAddr, SocketAddr)) -> bool {
        self.tcp_by_key
            .get(&key)
            .and_then(|id| self.tcp.get(id))
            .is_some_and(|f| f.syn.is_some())
    }

    fn tcp_in(
        &mut self,
        mut buf: Vec<u8>,
        at: std::ops::Range<usize>,
        src: SocketAddr,
        dst: SocketAddr,
        syn: bool,
    ) {
        let key = (src, dst);
        if buf.get(at.clone()).is_none() {
            self.stats.dropped(DropReason::Truncated);
            return;
        }
        if self.offloads {
            // Let the stack send big segments; they leave as GSO frames cut to this MSS.
            if let Some(mss) = buf.get_mut(at.clone()).and_then(vnet::raise_syn_mss) {
                self.mss.insert(key, mss);
            }
        }
        if self.tcp_by_key.contains_key(&key) {
            if !self.connect_pending(key) {
                self.stack.push_in(buf, at);
            }
            return;
        }
        if !syn || self.core.is_gateway(dst.ip()) || self.is_published_reply(src, dst) {
            // Not a new egress flow: the stack answers (DNS listener, published flow,
            // or an RST for a closed port / unknown connection).
            self.stack.push_in(buf, at);
            return;
        }
        let Some(fd) = self.admit(src.ip(), "tcp") else {
            return;
        };
        // The SYN is held until the host connect completes: a small copy, once per flow.
        let packet = buf.get(at).unwrap_or_default().to_vec();
        self.stack.recycle(buf);
        let stream = match TcpStream::connect(dst) {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, %dst, "gateway: tcp connect");
                self.limiter.release(src.ip());
                self.refuse(src, dst, &packet);
                return;
            }
        };
        let mut stream = stream;
        let Some((id, token)) = self.register_tcp(&mut stream) else {
            self.limiter.release(src.ip());
            self.stats.dropped(DropReason::HostSocket);
            return;
        };
        self.stats.flow_opened(FlowProto::Tcp);
        self.tcp_by_key.insert(key, id);
        self.tcp.insert(
            id,
            TcpFlow {
                kind: TcpKind::Egress,
                inside: src,
                outside: dst,
                stream,
                token,
                handle: None,
                syn: Some(packet),
                connected: false,
                readable: false,
                writable: false,
                host_eof: false,
                shut_wr: false,
                limited: Some(src.ip()),
                published: None,
                _fd: fd,
            },
        );
        self.tcp_peak = self.tcp_peak.max(self.tcp.len());
    }

    fn is_published_reply(&self, src: SocketAddr, _dst: SocketAddr) -> bool {
        self.pub_tcp
            .values()
            .any(|p| SocketAddr::new(p.spec.sandbox_ip, p.spec.sandbox_port) == src)
    }

    /// Answer a SYN with RST|ACK (connection refused).
    fn refuse(&mut self, src: SocketAddr, dst: SocketAddr, syn_packet: &[u8]) {
        if let Some(seq) = core::tcp_seq(syn_packet) {
            if let Some(rst) = core::tcp_refuse_packet(src, dst, seq) {
                self.send_ip(rst);
            }
        }
    }

    fn tcp_event(&mut self, id: u64, readable: bool, writable: bool) {
        let Some(f) = self.tcp.get_mut(&id) else {
            return;
        };
        f.readable |= readable;
        f.writable |= writable;
        if f.connected || !(writable || readable) {
            return;
        }
        // Host connect finished (one way or the other).
        let failed = match f.stream.take_error() {
            Ok(Some(_)) | Err(_) => true,
            Ok(None) => match f.stream.peer_addr() {
                Ok(_) => false,
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                Err(_) => true,
            },
        };
        let (src, dst) = (f.inside, f.outside);
        let syn = f.syn.take().unwrap_or_default();
        if failed {
            self.refuse(src, dst, &syn);
            self.close_tcp(id, false);
            return;
        }
        let Some(h) = self.stack.listen(dst) else {
            self.refuse(src, dst, &syn);
            self.close_tcp(id, false);
            return;
        };
        f.connected = true;
        f.handle = Some(h);
        self.stack.push(syn);
        self.stack.poll(smol_now(self.start));
        if self.stack.socket(h).state() == State::Listen {
            // The SYN was not accepted (bad segment): give up the flow.
            self.close_tcp(id, false);
        }
    }

    fn close_tcp(&mut self, id: u64, abort_host: bool) {
        let Some(mut f) = self.tcp.remove(&id) else {
            return;
        };
        if abort_host {
            let _ = SockRef::from(&f.stream).set_linger(Some(Duration::ZERO));
        }
        let _ = self.poll.registry().deregister(&mut f.stream);
        self.owners.remove(&f.token);
        if let Some(h) = f.handle {
            self.stack.remove(h);
        }
        if f.kind == TcpKind::Egress {
            self.tcp_by_key.remove(&(f.inside, f.outside));
        }
        self.mss.remove(&(f.inside, f.outside));
        if let Some(src) = f.limited {
            self.limiter.release(src);
        }
        if let Some(p) = f.published.and_then(|b| self.pub_tcp.get_mut(&b)) {
            p.conns = p.conns.saturating_sub(1);
            if p.conns < self.published_max {
                p.refusing = false;
            }
        }
        self.stats.flow_closed(FlowProto::Tcp);
    }

    /// Poll the stack, splice every flow, send what the stack produced; repeat while
    /// anything moves (bounded).
    fn service_tcp(&mut self) {
        for _ in 0..8 {
            let now = smol_now(self.start);
            self.stack.poll(now);
            let mut moved = self.splice_all();
            moved |= self.service_dns_tcp();
            let now = smol_now(self.start);
            self.stack.poll(now);
            let tx = self.stack.take_tx();
            moved |= !tx.is_empty();
            for p in tx {
                self.send_stack(p);
            }
            if !moved {
                break;
            }
        }
    }

    fn splice_all(&mut self) -> bool {
        let ids: Vec<u64> = self.tcp.keys().copied().collect();
        let mut moved = false;
        let mut done = Vec::new();
        for id in ids {
            let Some(f) = self.tcp.get_mut(&id) else {
                continue;
            };
            let (Some(h), true) = (f.handle, f.connected) else {
                continue;
            };
            let s = self.stack.socket(h);
            // Sandbox → host.
            while f.writable && s.can_recv() {
                let r = s.recv(|b| match f.stream.write(b) {
                    Ok(n) => (n, Ok(n)),
                    Err(e) => (0, Err(e)),
                });
                match r {
                    Ok(Ok(0)) => break,
                    Ok(Ok(_)) => moved = true,
                    Ok(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => f.writable = false,
                    Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                    Ok(Err(_)) => {
                        s.abort();
                        done.push((id, true));
                        break;
                    }
                    Err(_) => break,
                }
            }
            // Sandbox FIN → host half-close.
            if !f.shut_wr
                && !s.can_recv()
                && matches!(
                    s.state(),
                    State::CloseWait | State::LastAck | State::Closing | State::TimeWait
                )
            {
                let _ = f.stream.shutdown(std::net::Shutdown::Write);
                f.shut_wr = true;
                moved = true;
            }
            // Host → sandbox, only into free send space.
            while f.readable && !f.host_eof && s.can_send() {
                let r = s.send(|b| match f.stream.read(b) {
                    Ok(n) => (n, Ok(n)),
                    Err(e) => (0, Err(e)),
                });
                match r {
                    Ok(Ok(0)) => {
                        f.host_eof = true;
                        s.close();
                        moved = true;
                    }
                    Ok(Ok(_)) => moved = true,
                    Ok(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => f.readable = false,
                    Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                    Ok(Err(_)) => {
                        // Host RST: abort toward the sandbox.
                        s.abort();
                        done.push((id, false));
                        break;
                    }
                    Err(_) => break,
                }
            }
            match s.state() {
                State::Closed => {
                    let clean = f.host_eof && f.shut_wr;
                    done.push((id, !clean));
                }
                State::TimeWait if f.host_eof && f.shut_wr => done.push((id, false)),
                _ => {}
            }
        }
        for (id, abort) in done {
            // Let smoltcp emit what abort/close queued before the socket goes.
            self.stack.poll(smol_now(self.start));
            for p in self.stack.take_tx() {
                self.send_stack(p);
            }
            self.close_tcp(id, abort);
            moved = true;
        }
        moved
    }

    fn pub_tcp_accept(&mut self, bound: SocketAddr) {
        loop {
            let Some(p) = self.pub_tcp.get(&bound) else {
                return;
            };
            let (stream, client) = match p.listener.accept() {
                Ok(x) => x,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::debug!(error = %e, "gateway: accept");
                    return;
                }
            };
            let (conns, spec) = (p.conns, p.spec);
            if conns >= self.published_max {
                self.refuse_published(bound, stream, "connection limit of the published port");
                continue;
            }
            let Some(fd) = self.fd("published tcp") else {
                self.refuse_published(bound, stream, "descriptor budget");
                continue;
            };
            let sandbox = SocketAddr::new(spec.sandbox_ip, spec.sandbox_port);
            let presented = present_client(&self.core, canonical(client), sandbox);
            let Some(h) = self.stack.connect(presented, sandbox) else {
                self.stats.dropped(DropReason::HostSocket);
                continue;
            };
            let mut stream = stream;
            let Some((id, token)) = self.register_tcp(&mut stream) else {
                self.stack.remove(h);
                continue;
            };
            self.stats.flow_opened(FlowProto::Tcp);
            self.tcp.insert(
                id,
                TcpFlow {
                    kind: TcpKind::Published,
                    inside: sandbox,
                    outside: presented,
                    stream,
                    token,
                    handle: Some(h),
                    syn: None,
                    connected: true,
                    readable: true,
                    writable: true,
                    host_eof: false,
                    shut_wr: false,
                    limited: None,
                    published: Some(bound),
                    _fd: fd,
                },
            );
            if let Some(p) = self.pub_tcp.get_mut(&bound) {
                p.conns += 1;
            }
            self.tcp_peak = self.tcp_peak.max(self.tcp.len());
        }
    }

    /// Close a just-accepted published-port connection at once (RST: `SO_LINGER` 0)
    /// because `why` refuses it; counted, logged once while the port keeps refusing.
    fn refuse_published(&mut self, bound: SocketAddr, stream: TcpStream, why: &str) {
        let _ = SockRef::from(&stream).set_linger(Some(Duration::ZERO));
        drop(stream);
        self.stats.dropped(DropReason::PublishedConnLimit);
        if let Some(p) = self.pub_tcp.get_mut(&bound) {
            if !p.refusing {
                p.refusing = true;
                tracing::warn!(
                    port = %bound, limit = self.published_max, open = p.conns, why,
                    "gateway: published port refuses new connections"
                );
            }
        }
    }

    // ---- DNS --------------------------------------------------------------------------

    fn dns_query(&mut self, client: DnsClient, query: Vec<u8>) {
        match self.names.answer(&query) {
            Answer::Reply(r) => {
                Stats::inc(&self.stats.dns_local);
                self.dns_reply(client, r);
            }
            Answer::Ignore => self.stats.dropped(DropReason::Malformed),
            Answer::Forward => {
                if self.dns.waiting() >= self.dns_pending_max {
                    self.stats.dropped(DropReason::DnsLimit);
                    if !self.dns_refusing {
                        self.dns_refusing = true;
                        tracing::warn!(
                            limit = self.dns_pending_max,
                            "gateway: too many DNS queries wait for the upstream servers; new ones get SERVFAIL"
                        );
                    }
                    Stats::inc(&self.stats.dns_servfail);
                    if let Some(r) = crate::dns::servfail(&query) {
                        self.dns_reply(client, r);
                    }
                    return;
                }
                if self.dns.waiting() < self.dns_pending_max / 4 * 3 {
                    self.dns_refusing = false;
                }
                Stats::inc(&self.stats.dns_forwarded);
                let step = self.dns.start(client, query, rand::random(), self.turn_ms);
                self.dns_step(Some(step));
            }
        }
    }

    /// Carry out the forwarder's steps: send to the upstream server it names, asking it
    /// for the next one while a server cannot be used; answer SERVFAIL when it gives up.
    fn dns_step(&mut self, mut step: Option<Forward<DnsClient>>) {
        while let Some(s) = step.take() {
            match s {
                Forward::Send { id, server, msg } => {
                    if !self.dns_send(id, server, &msg) {
                        step = self.dns.next_server(id, self.turn_ms);
                    }
                }
                Forward::Fail { id, client, reply } => {
                    self.dns_close(id);
                    Stats::inc(&self.stats.dns_servfail);
                    if let Some(r) = reply {
                        self.dns_reply(client, r);
                    }
                }
            }
        }
    }

    /// Send forwarded query `id` to `server` on a fresh socket (the previous server's
    /// socket is closed). False if the socket could not be made, sent on or registered.
    fn dns_send(&mut self, id: u64, server: SocketAddr, msg: &[u8]) -> bool {
        let token = match self.dns_socks.get_mut(&id) {
            Some(d) => {
                if let Some(mut old) = d.sock.take() {
                    let _ = self.poll.registry().deregister(&mut old);
                }
                d.token
            }
            None => {
                let Some(fd) = self.fd("dns forward") else {
                    return false;
                };
                let token = self.token(Owner::Dns(id));
                self.dns_socks.insert(
                    id,
                    DnsSock {
                        sock: None,
                        token,
                        _fd: fd,
                    },
                );
                token
            }
        };
        let sock = UdpSocket::bind(unspecified_for(server.ip())).and_then(|s| {
            s.connect(server)?;
            s.send(msg)?;
            Ok(s)
        });
        let Ok(mut sock) = sock else {
            return false;
        };
        if self
            .poll
            .registry()
            .register(&mut sock, token, Interest::READABLE)
            .is_err()
        {
            return false;
        }
        if let Some(d) = self.dns_socks.get_mut(&id) {
            d.sock = Some(sock);
        }
        true
    }

    /// Close the host side of forwarded query `id`.
    fn dns_close(&mut self, id: u64) {
        if let Some(mut d) = self.dns_socks.remove(&id) {
            if let Some(mut s) = d.sock.take() {
                let _ = self.poll.registry().deregister(&mut s);
            }
            self.owners.remove(&d.token);
        }
    }

    fn dns_upstream_in(&mut self, id: u64) {
        loop {
            let Some(sock) = self.dns_socks.get(&id).and_then(|d| d.sock.as_ref()) else {
                return;
            };
            let n = match sock.recv(&mut self.buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => {
                    // ICMP unreachable on a connected socket: next server now.
                    let step = self.dns.next_server(id, self.turn_ms);
                    self.dns_step(step);
                    return;
                }
            };
            let resp = self.buf.get(..n).unwrap_or_default();
            let Some((client, r)) = self.dns.answer(id, resp) else {
                continue;
            };
            self.dns_close(id);
            self.dns_reply(client, r);
            return;
        }
    }

    fn dns_timeouts(&mut self, now_ms: u64) {
        for step in self.dns.expire(now_ms) {
            self.dns_step(Some(step));
        }
    }

    fn dns_reply(&mut self, client: DnsClient, resp: Vec<u8>) {
        match client {
            DnsClient::Udp(to) => {
                let Some(gw) = self.core.gateway_for(to.ip()) else {
                    return;
                };
                match core::udp_packet(SocketAddr::new(gw, DNS_PORT), to, &resp) {
                    Some(p) => self.send_ip(p),
                    None => self.stats.dropped(DropReason::Undeliverable),
                }
            }
            DnsClient::Tcp(h) => {
                let s = self.stack.socket(h);
                let len = u16::try_from(resp.len()).unwrap_or(u16::MAX);
                let mut framed = len.to_be_bytes().to_vec();
                framed.extend_from_slice(resp.get(..usize::from(len)).unwrap_or_default());
                if s.can_send() {
                    let _ = s.send_slice(&framed);
                }
            }
        }
    }

    /// Serve DNS-over-TCP connections; keep one listener per gateway address.
    fn service_dns_tcp(&mut self) -> bool {
        let mut moved = false;
        let mut i = 0;
        while i < self.dns_listeners.len() {
            let Some(&(at, h)) = self.dns_listeners.get(i) else {
                break;
            };
            if self.stack.socket(h).state() != State::Listen {
                if self.dns_conns.len() >= DNS_TCP_CONNS_MAX {
                    // Reset now; removed below once closed.
                    self.stack.socket(h).abort();
                    self.stats.dropped(DropReason::DnsLimit);
                }
                self.dns_conns.push(DnsConn {
                    handle: h,
                    buf: Vec::new(),
                });
                match self.stack.listen(at) {
                    Some(nh) => {
                        if let Some(slot) = self.dns_listeners.get_mut(i) {
                            *slot = (at, nh);
                        }
                    }
                    None => {
                        self.dns_listeners.remove(i);
                        continue;
                    }
                }
            }
            i += 1;
        }
        let mut queries = Vec::new();
        let mut closed = Vec::new();
        for (idx, c) in self.dns_conns.iter_mut().enumerate() {
            let s = self.stack.socket(c.handle);
            while s.can_recv() {
                let _ = s.recv(|b| {
                    c.buf.extend_from_slice(b);
                    (b.len(), ())
                });
                moved = true;
            }
            while let Some(len) = c
                .buf
                .first_chunk::<2>()
                .map(|b| usize::from(u16::from_be_bytes(*b)))
            {
                if c.buf.len() < 2 + len {
                    break;
                }
                let msg: Vec<u8> = c.buf.drain(..2 + len).skip(2).collect();
                queries.push((c.handle, msg));
            }
            if c.buf.len() > DNS_TCP_MAX {
                s.abort();
            }
            if !s.may_recv() && !s.can_recv() && s.state() != State::SynReceived {
                if s.may_send() {
                    s.close();
                }
                if matches!(s.state(), State::Closed | State::TimeWait) {
                    closed.push(idx);
                }
            }
        }
        for idx in closed.into_iter().rev() {
            let c = self.dns_conns.remove(idx);
            self.stack.remove(c.handle);
        }
        for (h, q) in queries {
            self.dns_query(DnsClient::Tcp(h), q);
        }
        moved
    }

    // ---- events, commands, timers -------------------------------------------------------

    fn host_event(&mut self, t: Token, readable: bool, writable: bool) {
        let Some(&owner) = self.owners.get(&t) else {
            return;
        };
        match owner {
            Owner::Udp(s, d) => self.udp_in(s, d),
            Owner::Icmp(k) => self.echo_in(k),
            Owner::Tcp(id) => self.tcp_event(id, readable, writable),
            Owner::PubTcp(b) => self.pub_tcp_accept(b),
            Owner::PubUdp(b) => self.pub_udp_in(b),
            Owner::Dns(id) => self.dns_upstream_in(id),
        }
    }

    fn drain_commands(&mut self) -> bool {
        loop {
            match self.rx.try_recv() {
                Ok(Command::Shutdown) | Err(TryRecvError::Disconnected) => return false,
                Err(TryRecvError::Empty) => return true,
                Ok(Command::SetNames(n)) => self.names.set(n),
                Ok(Command::UpdateNames { removed, added }) => {
                    removed.iter().for_each(|r| self.names.remove(r));
                    added.iter().for_each(|r| self.names.add(r));
                }
                Ok(Command::SetIsolated(n)) => self.core.set_isolated(n),
                Ok(Command::Publish {
                    spec,
                    bound,
                    sock,
                    reply,
                }) => {
                    let _ = reply.send(self.publish(spec, bound, sock));
                }
                Ok(Command::Unpublish { proto, addr, reply }) => {
                    let _ = reply.send(self.unpublish(proto, addr));
                }
            }
        }
    }

    fn publish(
        &mut self,
        spec: PublishSpec,
        bound: SocketAddr,
        sock: HostSock,
    ) -> Result<(), Error> {
        let udp_idle =
            u64::try_from(self.core.config().limits.udp_idle.as_millis()).unwrap_or(u64::MAX);
        match sock {
            HostSock::Tcp(mut l) => {
                let token = self.token(Owner::PubTcp(bound));
                self.poll
                    .registry()
                    .register(&mut l, token, Interest::READABLE)
                    .map_err(io_err("register published listener"))?;
                self.pub_tcp.insert(
                    bound,
                    PubTcp {
                        spec,
                        listener: l,
                        conns: 0,
                        refusing: false,
                    },
                );
            }
            HostSock::Udp(mut u) => {
                let token = self.token(Owner::PubUdp(bound));
                self.poll
                    .registry()
                    .register(&mut u, token, Interest::READABLE)
                    .map_err(io_err("register published socket"))?;
                self.pub_udp.insert(
                    bound,
                    PubUdp {
                        spec,
                        sock: u,
                        token,
                        clients: FlowTable::new(udp_idle),
                    },
                );
            }
        }
        Ok(())
    }

    fn unpublish(&mut self, proto: Proto, addr: SocketAddr) -> Result<(), Error> {
        match proto {
            Proto::Tcp => {
                let mut p = self
                    .pub_tcp
                    .remove(&addr)
                    .ok_or(Error::NotPublished { proto, addr })?;
                let _ = self.poll.registry().deregister(&mut p.listener);
                self.owners.retain(|_, o| *o != Owner::PubTcp(addr));
            }
            Proto::Udp => {
                let mut p = self
                    .pub_udp
                    .remove(&addr)
                    .ok_or(Error::NotPublished { proto, addr })?;
                let _ = self.poll.registry().deregister(&mut p.sock);
                self.owners.remove(&p.token);
            }
        }
        Ok(())
    }

    fn expire(&mut self, now_ms: u64) {
        for ((src, _), mut f) in self.udp.expire(now_ms) {
            let _ = self.poll.registry().deregister(&mut f.sock);
            self.owners.remove(&f.token);
            self.limiter.release(src.ip());
            self.stats.flow_closed(FlowProto::Udp);
        }
        for (k, f) in self.icmp.expire(now_ms) {
            let fd = f.sock.as_raw_fd();
            let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
            self.owners.remove(&f.token);
            self.limiter.release(k.src);
            self.stats.flow_closed(FlowProto::Icmp);
        }
        for p in self.pub_udp.values_mut() {
            let _ = p.clients.expire(now_ms);
        }
        if self.tcp.is_empty() && self.tcp_peak >= TRIM_AFTER_FLOWS {
            // A busy period is over: give its memory back (see `crate::mem`).
            self.tcp_peak = 0;
            crate::mem::trim();
        }
        if self.dns.waiting() < self.dns_pending_max / 4 * 3 {
            self.dns_refusing = false;
        }
        if self.mss.len() > self.tcp.len() {
            // MSS of refused SYNs and of DNS connections: keep only live flows' (a
            // forgotten one only means the default GSO size, which fits the MTU).
            let live: rustc_hash::FxHashSet<(SocketAddr, SocketAddr)> =
                self.tcp.values().map(|f| (f.inside, f.outside)).collect();
            self.mss.retain(|k, _| live.contains(k));
        }
    }
}

/// The address a published-port client is presented from inside the sandbox: its own,
/// or the gateway's when it is on loopback (and rewriting is on) or of the other family.
fn present_client(core: &Core, client: SocketAddr, sandbox: SocketAddr) -> SocketAddr {
    let same_family = client.is_ipv4() == sandbox.is_ipv4();
    if same_family && !(core.config().rewrite_loopback_clients && client.ip().is_loopback()) {
        return client;
    }
    match core.gateway_for(sandbox.ip()) {
        Some(gw) => SocketAddr::new(gw, client.port()),
        None => client,
    }
}
