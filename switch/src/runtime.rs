//! Datapath runtime: worker threads that move frames between ports.
//!
//! Contract:
//!
//! * [`Datapath::start`] spawns N workers, each owning a `mio::Poll`, a `mio::Waker` and
//!   the receiving end of a command channel, all on one clock. A network (its [`Switch`]
//!   and all its ports) lives on one worker, picked round-robin (the *owner*), unless it
//!   is spread ([`Datapath::add_network_spread`]) over the owner and the next workers
//!   (*shards*). The switch (FDB, port table, switch counters) and the capture
//!   subscribers are shared by a network's shards behind one mutex, taken once per
//!   batch (uncontended on a network with one shard); sends happen outside it.
//!   [`Datapath::start_with`] has each worker thread run a [`WorkerInit`] first (the
//!   daemon sets the workers' nice value there) and fails, stopping the workers already
//!   started, if one returns an error; [`Datapath::start_with_tick`] also has each worker
//!   make a [`WorkerTick`] it calls once per loop turn between batches (the daemon's
//!   automatic nice).
//! * **Multi-queue ports** ([`NetworkHandle::add_port_queues`]): queue 0 goes to the
//!   owner, queue k to shard k. The owner holds a queue of every port; a shard reads its
//!   queues and writes a switched frame to the egress port's queue on the same shard, or,
//!   for a port with no queue there (a gateway or tunnel port, a single-queue tap), hands
//!   a copy to the owner (one command and one wake-up per batch, counted:
//!   [`NetworkHandle::relayed`]), which writes it. A port is added on the owner first and
//!   removed from the other shards first, so a shard never holds a queue of a port the
//!   switch does not know. The owner alone ages the FDB and answers the control plane.
//! * The control plane talks to a network through a [`NetworkHandle`]: every call sends a
//!   command with a one-shot reply channel, wakes the worker and waits for the answer.
//!   A worker that has stopped answers [`Error::WorkerGone`].
//! * Ports are [`FrameIo`]s, registered edge-triggered for readability. A worker keeps a
//!   ready list and serves ready ports round-robin, at most [`BATCH`] frames per port per
//!   turn; a port leaves the list only when a read says `WouldBlock`.
//! * Ports move frames in batches: the worker reads with [`FrameIo::recv_batch`] into its
//!   one [`FrameBatch`], decides every frame of the batch, then hands each egress port the
//!   frames it gets in one [`FrameIo::send_batch`] (per-port order is arrival order). Both
//!   have defaults that fall back to one [`FrameIo::recv`]/[`FrameIo::send`] per frame
//!   (what a tap on `--tap-io rw` uses); a port with a vectored call overrides them (an
//!   io_uring tap port lends the batch its filled buffers instead of copying them:
//!   [`FrameBatch::push_loan`]). The batch buffer and the per-port send lists are
//!   allocated when the worker and the port are made, so the hot path does not allocate
//!   (lent buffers' spares stay in the batch after warm-up).
//! * Per frame: the virtio-net header is checked ([`check_vnet_hdr`]), the Ethernet frame
//!   goes through [`Switch::decide`] with `now_ms` read once per poll turn from a
//!   monotonic clock started with the worker, and the frame is written *unchanged*
//!   (header included: no segmentation, no checksumming) to the egress port(s):
//!   [`Action::Flood`] to every port but the ingress, [`Action::ToGateways`] to every
//!   port added with [`PortRole::Gateway`]. A failed
//!   write is counted as [`DropReason::TxError`] on the egress port and never buffered.
//!   Every second the worker ages out FDB entries.
//! * The control plane can talk to an attached port: [`NetworkHandle::control_port`]
//!   delivers a [`PortControl`] message to the port's [`FrameIo::control`] on its worker
//!   (between batches) and returns the port's [`PortReply`] (so a tunnel port can be
//!   given its peers). Ports that take no messages answer `Unsupported`.
//! * Each port has a [`PortRole`] fixed when it is added ([`NetworkHandle::add_port_with`])
//!   and an optional [`PortPolicy`] that [`NetworkHandle::set_policy`] replaces (addresses
//!   change); both live in the network's [`Switch`] port table, so anti-spoofing and ICC are
//!   decided by [`Switch::decide`]. Policy drops are counted per reason like any other.
//! * Counters are atomics, added to with `fetch_add` (a multi-queue port's counters have
//!   one writer per shard); readers use [`PortStats`].
//!   rx counts every frame read (dropped ones too), tx every frame written; byte counts
//!   exclude the vnet header.
//! * **Capture taps** ([`NetworkHandle::capture`]): a subscriber gets a copy of every
//!   frame the network's switch reads from any port ([`CaptureScope::Network`]), or of
//!   every frame one port sends and is sent ([`CaptureScope::Port`]), Ethernet only (the
//!   vnet header stripped), timestamped (wall clock) when the worker switches it, dropped
//!   ones included. Each subscriber has a bounded queue ([`CAPTURE_QUEUE_FRAMES`] frames,
//!   [`CAPTURE_QUEUE_BYTES`] bytes); a frame that does not fit is dropped and counted
//!   ([`Capture::dropped`]), so a slow reader never slows the datapath. A network has at
//!   most [`MAX_CAPTURES`] subscribers ([`Error::TooManyCaptures`]). Dropping the
//!   [`Capture`] removes the subscriber (a worker also drops one whose reader is gone,
//!   and a port's subscribers when the port is removed: their reader sees the end).
//!   With no subscriber the hot path pays one branch per frame (an empty `Vec`).
//! * Frame contents never make a worker panic. A port whose `recv` fails with anything
//!   but `WouldBlock`/`Interrupted` (or returns 0, end of stream) is deregistered from
//!   the poll and logged, and stays in the table until the control plane removes it.

pub use crate::core::{PortOptions, PortPolicy, PortRole};

use crate::core::{
    check_vnet_hdr, Action, DropReason, FdbEntry, PortFdb, PortId, Switch, SwitchConfig,
    SwitchCounters,
};
use crate::VNET_HDR_LEN;
use crossbeam_channel::{Receiver, Sender, TryRecvError};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use rustc_hash::FxHashMap;
use std::any::Any;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

/// A port's frame I/O. Frames carry a [`crate::VNET_HDR_LEN`]-byte virtio-net
/// header in front of the Ethernet frame. The fd must be non-blocking; it is
/// registered with the worker's `mio::Poll` for readability.
///
/// Only [`FrameIo::recv`] and [`FrameIo::send`] are required; the batch calls default to
/// one of them per frame, and [`FrameIo::control`] to `Unsupported`.
pub trait FrameIo: AsRawFd + Send {
    /// Read one frame (vnet header + Ethernet frame) into `buf`; `WouldBlock` when empty.
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    /// Write one frame (vnet header + Ethernet frame).
    fn send(&mut self, frame: &[u8]) -> io::Result<usize>;

    /// Read frames into `batch` (appending, see [`FrameBatch::spare`] and
    /// [`FrameBatch::commit`]) until it is full or the port has none left.
    ///
    /// Returns `Ok(n)`, the frames appended, `n > 0`; if reading stopped at an error after
    /// some frames (`WouldBlock` included), that error is left in the batch
    /// ([`FrameBatch::set_stop`]) for the caller to handle after the frames. `Ok(0)` is end
    /// of stream; `Err` means no frame was read (a batch with no room is `InvalidInput`).
    /// The default calls [`FrameIo::recv`] once per frame, retrying `Interrupted`.
    fn recv_batch(&mut self, batch: &mut FrameBatch) -> io::Result<usize> {
        if batch.is_full() {
            return Err(io::ErrorKind::InvalidInput.into());
        }
        let mut n = 0;
        while !batch.is_full() {
            match self.recv(batch.spare()) {
                Ok(0) if n == 0 => return Ok(0),
                Ok(0) => {
                    batch.set_stop(io::ErrorKind::UnexpectedEof.into());
                    break;
                }
                Ok(len) => {
                    batch.commit(len);
                    n += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if n == 0 => return Err(e),
                Err(e) => {
                    batch.set_stop(e);
                    break;
                }
            }
        }
        Ok(n)
    }

    /// Write `frames` in order. `Err` says how many were written before the one that
    /// failed; the frames after it were not tried. The default calls [`FrameIo::send`]
    /// once per frame, retrying `Interrupted`.
    fn send_batch(&mut self, frames: Frames<'_>) -> Result<(), SendBatchError> {
        for (sent, frame) in frames.iter().enumerate() {
            loop {
                match self.send(frame) {
                    Ok(_) => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(error) => return Err(SendBatchError { sent, error }),
                }
            }
        }
        Ok(())
    }

    /// The port is being removed ([`NetworkHandle::remove_port`]): stop any I/O the
    /// kernel still does on its behalf, so that the device goes as soon as the caller
    /// drops the port. Runs on the port's worker, after its last batch (an io_uring port
    /// cancels its read in flight here: the ring takes that only from this thread, and a
    /// read left in flight would keep the tap open until the ring's asynchronous
    /// teardown). The default does nothing.
    fn detach(&mut self) {}

    /// Called on the port's worker about once a second (every 1,000 ms, `EXPIRE_EVERY_MS`): a port that
    /// has read nothing since the previous call may give back memory it keeps for reads
    /// (an io_uring port's receive buffers, 2 MiB once bulk TCP has filled them all). The
    /// default does nothing.
    fn trim(&mut self) {}

    /// Handle a control-plane message ([`NetworkHandle::control_port`]). Runs on the
    /// port's worker, between batches. The default refuses with `Unsupported`.
    fn control(&mut self, msg: PortControl) -> io::Result<PortReply> {
        let _ = msg;
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "this port takes no control messages",
        ))
    }
}

/// A message for an attached port ([`NetworkHandle::control_port`]).
#[derive(Debug)]
#[non_exhaustive]
pub enum PortControl {
    /// A message only the port's own type understands (a tunnel port's peer list, ...):
    /// the port downcasts it.
    Custom(Box<dyn Any + Send>),
}

/// A port's answer to a [`PortControl`].
#[derive(Debug)]
#[non_exhaustive]
pub enum PortReply {
    /// Done; nothing to report.
    Done,
    /// An answer only the sender understands: it downcasts it.
    Custom(Box<dyn Any + Send>),
}

/// [`FrameIo::send_batch`] stopped at a frame it could not write.
#[derive(Debug)]
pub struct SendBatchError {
    /// Frames written before the failed one (the index of the failed one).
    pub sent: usize,
    /// Why the write failed.
    pub error: io::Error,
}

/// Frames read in one go, packed one after another into one buffer allocated up front.
///
/// A receive needs [`FrameBatch::frame_room`] bytes (the longest frame a port may
/// return): the batch is full when it holds its frame limit or has less room than that.
///
/// A port that reads into buffers of its own (io_uring reads kept in flight) does not
/// copy them in: it *lends* the filled buffer to the batch ([`FrameBatch::push_loan`])
/// and takes a spare one in exchange ([`FrameBatch::take_buffer`]), so a 64 KiB
/// super-frame is never copied. [`FrameBatch::clear`] keeps lent buffers as spares, so
/// after the first batches the exchange allocates nothing; the spares are at most the
/// frame limit.
pub struct FrameBatch {
    buf: Box<[u8]>,
    /// Where each frame is, in arrival order.
    spans: Vec<Span>,
    /// Buffers lent to the batch with their frame ([`FrameBatch::push_loan`]); they go
    /// to `pool` at [`FrameBatch::clear`].
    loans: Vec<Box<[u8]>>,
    /// Spare buffers for [`FrameBatch::take_buffer`].
    pool: Vec<Box<[u8]>>,
    /// Bytes of `buf` in use.
    used: usize,
    /// Most frames the current fill may take (at most `spans`' capacity).
    limit: usize,
    max_frames: usize,
    frame_room: usize,
    stop: Option<io::Error>,
}

impl FrameBatch {
    /// A batch of at most `max_frames` frames, `frame_room` bytes needed per receive, and
    /// a buffer of `bytes` bytes (at least `frame_room`).
    pub fn new(max_frames: usize, frame_room: usize, bytes: usize) -> FrameBatch {
        FrameBatch {
            buf: vec![0u8; bytes.max(frame_room)].into_boxed_slice(),
            spans: Vec::with_capacity(max_frames),
            loans: Vec::with_capacity(max_frames),
            pool: Vec::with_capacity(max_frames),
            used: 0,
            limit: max_frames,
            max_frames,
            frame_room,
            stop: None,
        }
    }

    /// Empty the batch (and forget a stop error); the frame limit goes back to the maximum.
    pub fn clear(&mut self) {
        self.spans.clear();
        self.pool.append(&mut self.loans);
        self.used = 0;
        self.limit = self.max_frames;
        self.stop = None;
    }

    /// Take at most `frames` frames (capped by the maximum) until the next
    /// [`FrameBatch::clear`].
    pub fn set_limit(&mut self, frames: usize) {
        self.limit = frames.min(self.max_frames);
    }

    /// Frames in the batch.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// No frames.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Bytes a receive needs.
    pub fn frame_room(&self) -> usize {
        self.frame_room
    }

    /// At the frame limit, or less than [`FrameBatch::frame_room`] bytes left.
    pub fn is_full(&self) -> bool {
        self.spans.len() >= self.limit || self.buf.len() - self.used < self.frame_room
    }

    /// The free space: receive the next frame at its start, then [`FrameBatch::commit`].
    pub fn spare(&mut self) -> &mut [u8] {
        self.buf.get_mut(self.used..).unwrap_or_default()
    }

    /// Add the first `len` bytes of [`FrameBatch::spare`] as the next frame (`len` is
    /// capped to the space there is). Ignored when the batch is at its frame limit.
    pub fn commit(&mut self, len: usize) {
        if self.spans.len() >= self.limit {
            return;
        }
        let len = len.min(self.buf.len() - self.used);
        self.spans.push(Span::Packed {
            start: self.used,
            len,
        });
        self.used += len;
    }

    /// Frames the batch may still take before its frame limit.
    pub fn room(&self) -> usize {
        self.limit.saturating_sub(self.spans.len())
    }

    /// Add the first `len` bytes of `buf` (capped to its length) as the next frame,
    /// without copying: the batch keeps `buf` as a spare after [`FrameBatch::clear`].
    /// At the frame limit the buffer is handed back as `Err`.
    pub fn push_loan(&mut self, buf: Box<[u8]>, len: usize) -> Result<(), Box<[u8]>> {
        if self.spans.len() >= self.limit {
            return Err(buf);
        }
        self.spans.push(Span::Lent {
            index: self.loans.len(),
            len: len.min(buf.len()),
        });
        self.loans.push(buf);
        Ok(())
    }

    /// A buffer of at least `len` bytes: a spare one if there is one that big, else a
    /// new zeroed one. Its contents are whatever the last frame left.
    pub fn take_buffer(&mut self, len: usize) -> Box<[u8]> {
        while let Some(b) = self.pool.pop() {
            if b.len() >= len {
                return b;
            }
        }
        vec![0u8; len].into_boxed_slice()
    }

    /// Frame `i`.
    pub fn get(&self, i: usize) -> Option<&[u8]> {
        self.span(self.spans.get(i)?)
    }

    fn span(&self, span: &Span) -> Option<&[u8]> {
        match *span {
            Span::Packed { start, len } => self.buf.get(start..start + len),
            Span::Lent { index, len } => self.loans.get(index)?.get(..len),
        }
    }

    /// The frames in arrival order.
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.spans
            .iter()
            .map(|span| self.span(span).unwrap_or_default())
    }

    /// Record the error that ended a fill after some frames were read.
    pub fn set_stop(&mut self, e: io::Error) {
        self.stop = Some(e);
    }

    /// Take the error that ended the last fill, if any.
    pub fn take_stop(&mut self) -> Option<io::Error> {
        self.stop.take()
    }
}

/// Where a frame of a [`FrameBatch`] is.
#[derive(Clone, Copy, Debug)]
enum Span {
    /// In the batch's own buffer.
    Packed { start: usize, len: usize },
    /// In lent buffer `index`.
    Lent { index: usize, len: usize },
}

impl std::fmt::Debug for FrameBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the buffer: it is hundreds of KiB.
        f.debug_struct("FrameBatch")
            .field("frames", &self.spans.len())
            .field("lent", &self.loans.len())
            .field("spare_buffers", &self.pool.len())
            .field("bytes_used", &self.used)
            .field("bytes", &self.buf.len())
            .field("limit", &self.limit)
            .field("frame_room", &self.frame_room)
            .field("stop", &self.stop)
            .finish()
    }
}

/// Some frames of a [`FrameBatch`], in order: what [`FrameIo::send_batch`] writes.
#[derive(Clone, Copy, Debug)]
pub struct Frames<'a> {
    batch: &'a FrameBatch,
    /// Indexes into `batch`; `None`: every frame from `skip` on.
    picks: Option<&'a [u32]>,
    skip: usize,
}

impl<'a> Frames<'a> {
    /// Every frame of `batch`.
    pub fn all(batch: &'a FrameBatch) -> Frames<'a> {
        Frames {
            batch,
            picks: None,
            skip: 0,
        }
    }

    /// The frames of `batch` at `picks` (indexes past the end are skipped).
    pub fn picked(batch: &'a FrameBatch, picks: &'a [u32]) -> Frames<'a> {
        Frames {
            batch,
            picks: Some(picks),
            skip: 0,
        }
    }

    /// Number of frames.
    pub fn len(&self) -> usize {
        match self.picks {
            Some(p) => p.len(),
            None => self.batch.len().saturating_sub(self.skip),
        }
    }

    /// No frames.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Frame `i` of these.
    pub fn get(&self, i: usize) -> Option<&'a [u8]> {
        let batch: &'a FrameBatch = self.batch;
        match self.picks {
            Some(p) => batch.get(usize::try_from(*p.get(i)?).ok()?),
            None => batch.get(self.skip.checked_add(i)?),
        }
    }

    /// The frames, in order.
    pub fn iter(&self) -> impl Iterator<Item = &'a [u8]> + 'a {
        let this = *self;
        (0..this.len()).filter_map(move |i| this.get(i))
    }

    /// These frames without the first `n`.
    pub fn after(self, n: usize) -> Frames<'a> {
        match self.picks {
            Some(p) => Frames {
                picks: Some(p.get(n..).unwrap_or_default()),
                ..self
            },
            None => Frames {
                skip: self.skip.saturating_add(n),
                ..self
            },
        }
    }
}

/// Per-port counters, updated by the worker, read by the control plane.
#[derive(Debug, Default)]
pub struct PortStats {
    /// Frames received from the port.
    pub rx_packets: AtomicU64,
    /// Bytes received (Ethernet frame bytes, vnet header excluded).
    pub rx_bytes: AtomicU64,
    /// Frames sent to the port.
    pub tx_packets: AtomicU64,
    /// Bytes sent.
    pub tx_bytes: AtomicU64,
    /// Drops charged to this port, indexed by `DropReason as usize`.
    pub drops: [AtomicU64; DropReason::COUNT],
}

/// A plain-value copy of [`PortStats`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortStatsSnapshot {
    /// Frames received from the port.
    pub rx_packets: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Frames sent to the port.
    pub tx_packets: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// (reason, count) for every reason.
    pub drops: Vec<(DropReason, u64)>,
}

impl PortStats {
    /// Copy the counters out.
    pub fn snapshot(&self) -> PortStatsSnapshot {
        PortStatsSnapshot {
            rx_packets: self.rx_packets.load(Ordering::Relaxed),
            rx_bytes: self.rx_bytes.load(Ordering::Relaxed),
            tx_packets: self.tx_packets.load(Ordering::Relaxed),
            tx_bytes: self.tx_bytes.load(Ordering::Relaxed),
            drops: DropReason::ALL
                .iter()
                .map(|&r| (r, self.drops[r as usize].load(Ordering::Relaxed)))
                .collect(),
        }
    }

    /// Drops charged to this port for `reason`.
    pub fn drops(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize].load(Ordering::Relaxed)
    }
}

/// Errors of the datapath runtime.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An OS call failed.
    #[error("{op}: {source}")]
    Io {
        /// The operation.
        op: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The worker owning the network has stopped.
    #[error("datapath worker is gone")]
    WorkerGone,
    /// No such port on this network.
    #[error("no port {0} on this network")]
    NoSuchPort(PortId),
    /// The network has [`MAX_CAPTURES`] capture subscribers already.
    #[error("network has {MAX_CAPTURES} capture subscribers already")]
    TooManyCaptures,
    /// More queues than the network has shards.
    #[error("{queues} queues given but the network is spread over {shards} workers")]
    TooManyQueues {
        /// Queues given.
        queues: usize,
        /// Shards of the network.
        shards: usize,
    },
    /// The port refused or failed a control message.
    #[error("port {port}: control message: {source}")]
    PortControl {
        /// The port.
        port: PortId,
        /// Its answer.
        #[source]
        source: io::Error,
    },
}

/// Frames read from one port per turn before the worker moves to the next ready port.
pub const BATCH: usize = 64;
/// Room each receive needs: a 64 KiB GSO super-frame plus headers.
pub const RECV_BUF_LEN: usize = 65536 + 2048;
/// Size of each worker's [`FrameBatch`] buffer: four receives' worth (four super-frames,
/// or a full [`BATCH`] of MTU-size frames).
pub const BATCH_BUF_LEN: usize = 4 * RECV_BUF_LEN;
/// How often, in milliseconds, a worker ages out FDB entries.
const EXPIRE_EVERY_MS: u64 = 1000;
/// Most frames waiting in one capture subscriber's queue.
pub const CAPTURE_QUEUE_FRAMES: usize = 4096;
/// Most bytes waiting in one capture subscriber's queue (Ethernet bytes).
pub const CAPTURE_QUEUE_BYTES: usize = 16 << 20;
/// Most capture subscribers of one network.
pub const MAX_CAPTURES: usize = 16;
/// The waker's token; port tokens are slab indexes and never reach it.
const WAKER: Token = Token(usize::MAX);

/// Add to a counter that only the worker writes (a plain load + store, no locked op).
#[inline(always)]
fn bump(c: &AtomicU64, by: u64) {
    c.fetch_add(by, Ordering::Relaxed);
}

type Reply<T> = Sender<Result<T, Error>>;

/// Control-plane requests to a worker.
enum Command {
    AddNetwork {
        net: u64,
        shared: Arc<Mutex<Shared>>,
        /// `None` on the owner; the owner's address on every other shard.
        relay: Option<RelayTo>,
        read: Arc<AtomicU64>,
        reply: Reply<()>,
    },
    /// Attach queue `io` of the owner's port `port` to this (non-owner) shard.
    AddQueue {
        net: u64,
        port: PortId,
        role: PortRole,
        io: Box<dyn FrameIo>,
        stats: Arc<PortStats>,
        reply: Reply<()>,
    },
    /// Detach this shard's queue of `port` (nothing if it has none).
    RemoveQueue {
        net: u64,
        port: PortId,
        reply: Reply<()>,
    },
    /// Frames a shard switched to ports it has no queue of; sent by the owner.
    Relay {
        net: u64,
        frames: Vec<Vec<u8>>,
        to: Vec<(u32, PortId)>,
    },
    RemoveNetwork {
        net: u64,
        reply: Reply<()>,
    },
    AddPort {
        net: u64,
        io: Box<dyn FrameIo>,
        opts: PortOptions,
        reply: Reply<(PortId, Arc<PortStats>)>,
    },
    SetPolicy {
        net: u64,
        port: PortId,
        policy: Option<PortPolicy>,
        reply: Reply<()>,
    },
    RemovePort {
        net: u64,
        port: PortId,
        reply: Reply<Box<dyn FrameIo>>,
    },
    ControlPort {
        net: u64,
        port: PortId,
        msg: PortControl,
        reply: Reply<PortReply>,
    },
    Fdb {
        net: u64,
        reply: Reply<(u64, Vec<FdbEntry>)>,
    },
    Counters {
        net: u64,
        reply: Reply<SwitchCounters>,
    },
    PortFdb {
        net: u64,
        reply: Reply<Vec<(PortId, PortFdb)>>,
    },
    AddCapture {
        net: u64,
        tap: CaptureTap,
        reply: Reply<()>,
    },
    /// No reply: sent by a dropped [`Capture`].
    RemoveCapture {
        net: u64,
        id: u64,
    },
    Shutdown,
}

/// Send a command built around a fresh reply channel, wake the worker, wait for the answer.
fn call<T>(
    tx: &Sender<Command>,
    waker: &Waker,
    make: impl FnOnce(Reply<T>) -> Command,
) -> Result<T, Error> {
    let (reply, answer) = crossbeam_channel::bounded(1);
    tx.send(make(reply)).map_err(|_| Error::WorkerGone)?;
    waker.wake().map_err(|source| Error::Io {
        op: "wake datapath worker",
        source,
    })?;
    answer.recv().map_err(|_| Error::WorkerGone)?
}

/// The datapath: N worker threads, each with its own `mio::Poll`.
pub struct Datapath {
    workers: Vec<WorkerHandle>,
    next_worker: AtomicUsize,
    next_net: AtomicU64,
}

/// The owner's address, as a non-owner shard holds it.
struct RelayTo {
    tx: Sender<Command>,
    waker: Arc<Waker>,
    relayed: Arc<AtomicU64>,
}

/// Run by every datapath worker thread before it serves anything
/// ([`Datapath::start_with`]).
pub type WorkerInit = Arc<dyn Fn() -> io::Result<()> + Send + Sync>;

/// A worker's own periodic hook: called on the worker thread with the datapath clock
/// (milliseconds since start) once per loop turn, between batches; it must return
/// quickly (the daemon's automatic nice samples the thread's scheduling in it).
pub type WorkerTick = Box<dyn FnMut(u64) + Send>;

/// Makes a [`WorkerTick`] in each worker thread, after its [`WorkerInit`]
/// ([`Datapath::start_with_tick`]).
pub type WorkerTickMaker = Arc<dyn Fn() -> Option<WorkerTick> + Send + Sync>;

/// The control plane's side of one worker.
struct WorkerHandle {
    tx: Sender<Command>,
    waker: Arc<Waker>,
    thread: Option<JoinHandle<()>>,
}

impl Datapath {
    /// Start `workers` worker threads (0 = one per core).
    pub fn start(workers: usize) -> Result<Datapath, Error> {
        Datapath::start_with(workers, None)
    }

    /// [`Datapath::start`], each worker thread first running `init` (e.g. to set its own
    /// nice value). The call returns once every worker ran it; if one fails, the workers
    /// started so far are stopped and its error is returned.
    pub fn start_with(workers: usize, init: Option<WorkerInit>) -> Result<Datapath, Error> {
        Datapath::start_with_tick(workers, init, None)
    }

    /// [`Datapath::start_with`], each worker thread then making its own [`WorkerTick`]
    /// with `tick` and calling it every loop turn.
    pub fn start_with_tick(
        workers: usize,
        init: Option<WorkerInit>,
        tick: Option<WorkerTickMaker>,
    ) -> Result<Datapath, Error> {
        let n = match workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        // Built incrementally: on error, dropping `dp` stops the workers already started.
        let mut dp = Datapath {
            workers: Vec::with_capacity(n),
            next_worker: AtomicUsize::new(0),
            next_net: AtomicU64::new(0),
        };
        // One clock for every worker: a network spread over several shares its FDB.
        let start = Instant::now();
        for i in 0..n {
            let poll = Poll::new().map_err(|source| Error::Io {
                op: "create poll",
                source,
            })?;
            let waker =
                Arc::new(
                    Waker::new(poll.registry(), WAKER).map_err(|source| Error::Io {
                        op: "create waker",
                        source,
                    })?,
                );
            let (tx, rx) = crossbeam_channel::unbounded();
            let mut worker = Worker::new(poll, rx, start);
            let init = init.clone();
            let tick = tick.clone();
            let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
            let thread = std::thread::Builder::new()
                .name(format!("tapnet-dp{i}"))
                .spawn(move || {
                    let ready = init.map_or(Ok(()), |f| f());
                    let ok = ready.is_ok();
                    let _ = ready_tx.send(ready);
                    if ok {
                        worker.tick = tick.and_then(|make| make());
                        worker.run();
                    }
                })
                .map_err(|source| Error::Io {
                    op: "spawn datapath worker",
                    source,
                })?;
            dp.workers.push(WorkerHandle {
                tx,
                waker,
                thread: Some(thread),
            });
            let ready = ready_rx
                .recv()
                .unwrap_or_else(|_| Err(io::Error::other("worker thread ended before set-up")));
            ready.map_err(|source| Error::Io {
                op: "set up datapath worker",
                source,
            })?;
        }
        Ok(dp)
    }

    /// Number of worker threads.
    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// Create a switch for a network on one of the workers (picked round-robin).
    pub fn add_network(&self, config: SwitchConfig) -> Result<NetworkHandle, Error> {
        self.add_network_spread(config, 1)
    }

    /// Create a switch for a network spread over `shards` workers (at most
    /// [`Datapath::workers`]; 0 or 1 is [`Datapath::add_network`]): the owner (picked
    /// round-robin) and the next `shards - 1` workers. Each worker reads and writes the
    /// queues of multi-queue ports given to it ([`NetworkHandle::add_port_queues`]),
    /// switching under the network's one shared switch (see the module doc).
    pub fn add_network_spread(
        &self,
        config: SwitchConfig,
        shards: usize,
    ) -> Result<NetworkHandle, Error> {
        let workers = self.workers.len().max(1);
        let shards = shards.clamp(1, workers);
        let first = self.next_worker.fetch_add(1, Ordering::Relaxed) % workers;
        let net = self.next_net.fetch_add(1, Ordering::Relaxed);
        let captures = Arc::new(AtomicUsize::new(0));
        let relayed = Arc::new(AtomicU64::new(0));
        let shared = Arc::new(Mutex::new(Shared {
            switch: Switch::new(config),
            dir: Vec::new(),
            next_port: 0,
            taps: Vec::new(),
            captures: Arc::clone(&captures),
        }));
        let mut on: Vec<ShardAddr> = Vec::with_capacity(shards);
        let mut read_by = Vec::with_capacity(shards);
        for k in 0..shards {
            let w = self
                .workers
                .get((first + k) % workers)
                .ok_or(Error::WorkerGone)?;
            let relay = on.first().map(|owner| RelayTo {
                tx: owner.tx.clone(),
                waker: Arc::clone(&owner.waker),
                relayed: Arc::clone(&relayed),
            });
            let shared = Arc::clone(&shared);
            let read = Arc::new(AtomicU64::new(0));
            let counted = Arc::clone(&read);
            let added = call(&w.tx, &w.waker, |reply| Command::AddNetwork {
                net,
                shared,
                relay,
                read: counted,
                reply,
            });
            if let Err(e) = added {
                // Unwind: the shards made so far forget the network.
                for s in on.iter().rev() {
                    let _ = call(&s.tx, &s.waker, |reply| Command::RemoveNetwork {
                        net,
                        reply,
                    });
                }
                return Err(e);
            }
            on.push(ShardAddr {
                tx: w.tx.clone(),
                waker: Arc::clone(&w.waker),
            });
            read_by.push(read);
        }
        let owner = on.remove(0);
        Ok(NetworkHandle {
            tx: owner.tx,
            waker: owner.waker,
            shards: on,
            net,
            captures,
            relayed,
            read_by,
        })
    }

    /// Stop all workers and join them. Ports' `FrameIo`s are dropped.
    pub fn shutdown(self) {
        // Drop does the work.
    }

    fn stop(&mut self) {
        for w in &self.workers {
            // A worker that is already gone needs no telling.
            let _ = w.tx.send(Command::Shutdown);
            let _ = w.waker.wake();
        }
        for w in &mut self.workers {
            if let Some(t) = w.thread.take() {
                if t.join().is_err() {
                    tracing::error!("datapath worker panicked");
                }
            }
        }
    }
}

impl Drop for Datapath {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Control-plane handle to one network's switch. Dropping it does not remove the
/// network; call [`NetworkHandle::remove`].
pub struct NetworkHandle {
    /// The owner's worker.
    tx: Sender<Command>,
    waker: Arc<Waker>,
    /// The other shards' workers, in shard order (empty: the network is on one worker).
    shards: Vec<ShardAddr>,
    net: u64,
    /// Capture subscribers now (written by the workers).
    captures: Arc<AtomicUsize>,
    /// Frames other shards relayed to the owner.
    relayed: Arc<AtomicU64>,
    /// Frames each shard read, in shard order.
    read_by: Vec<Arc<AtomicU64>>,
}

/// The control plane's address of one shard's worker.
struct ShardAddr {
    tx: Sender<Command>,
    waker: Arc<Waker>,
}

impl NetworkHandle {
    /// Attach an endpoint port without policy; returns its id and its live counters.
    /// Shorthand for [`NetworkHandle::add_port_with`] and `PortOptions::default()`.
    pub fn add_port(&self, io: Box<dyn FrameIo>) -> Result<(PortId, Arc<PortStats>), Error> {
        self.add_port_with(io, PortOptions::default())
    }
    /// Attach a port with a role (fixed for the port's life) and an optional policy;
    /// returns its id and its live counters. The policy is in force for the first frame.
    pub fn add_port_with(
        &self,
        io: Box<dyn FrameIo>,
        opts: PortOptions,
    ) -> Result<(PortId, Arc<PortStats>), Error> {
        let net = self.net;
        call(&self.tx, &self.waker, |reply| Command::AddPort {
            net,
            io,
            opts,
            reply,
        })
    }
    /// Attach a multi-queue port: `ios[0]` on the owner (as [`NetworkHandle::add_port_with`]),
    /// `ios[k]` on shard `k`, all counted on the one [`PortStats`] returned. A shard given
    /// no queue relays this port's frames to the owner. More queues than shards is
    /// [`Error::TooManyQueues`], no queues `InvalidInput`; on any failure every queue
    /// attached so far is detached again.
    pub fn add_port_queues(
        &self,
        ios: Vec<Box<dyn FrameIo>>,
        opts: PortOptions,
    ) -> Result<(PortId, Arc<PortStats>), Error> {
        if ios.len() > self.shards() {
            return Err(Error::TooManyQueues {
                queues: ios.len(),
                shards: self.shards(),
            });
        }
        let role = opts.role;
        let mut ios = ios.into_iter();
        let first = ios.next().ok_or(Error::Io {
            op: "attach a multi-queue port",
            source: io::Error::new(io::ErrorKind::InvalidInput, "no queues given"),
        })?;
        let (port, stats) = self.add_port_with(first, opts)?;
        for (shard, io) in self.shards.iter().zip(ios) {
            let net = self.net;
            let st = Arc::clone(&stats);
            let added = call(&shard.tx, &shard.waker, |reply| Command::AddQueue {
                net,
                port,
                role,
                io,
                stats: st,
                reply,
            });
            if let Err(e) = added {
                // Unwind: the queues attached so far, then the port.
                let _ = self.remove_port(port);
                return Err(e);
            }
        }
        Ok((port, stats))
    }
    /// Workers this network is spread over (1: only the owner).
    pub fn shards(&self) -> usize {
        1 + self.shards.len()
    }
    /// Frames other shards switched to ports they hold no queue of and relayed to the
    /// owner (each frame once, whatever the number of its egress ports).
    pub fn relayed(&self) -> u64 {
        self.relayed.load(Ordering::Relaxed)
    }
    /// Frames each shard read from its ports so far, in shard order (owner first): how
    /// the kernel spread the flows over a multi-queue tap's queues.
    pub fn shard_frames(&self) -> Vec<u64> {
        self.read_by
            .iter()
            .map(|r| r.load(Ordering::Relaxed))
            .collect()
    }
    /// Replace a port's policy (`None`: no policy, no anti-spoofing). Frames read after
    /// the call returns are judged by the new policy.
    pub fn set_policy(&self, port: PortId, policy: Option<PortPolicy>) -> Result<(), Error> {
        let net = self.net;
        call(&self.tx, &self.waker, |reply| Command::SetPolicy {
            net,
            port,
            policy,
            reply,
        })
    }
    /// Detach a port, forgetting its FDB entries; hands the `FrameIo` back to the caller
    /// (queue 0 of a multi-queue port: the other shards' queues are dropped first).
    pub fn remove_port(&self, port: PortId) -> Result<Box<dyn FrameIo>, Error> {
        let net = self.net;
        for shard in &self.shards {
            call(&shard.tx, &shard.waker, |reply| Command::RemoveQueue {
                net,
                port,
                reply,
            })?;
        }
        call(&self.tx, &self.waker, |reply| Command::RemovePort {
            net,
            port,
            reply,
        })
    }
    /// Deliver `msg` to the port's [`FrameIo::control`] on its worker and return the
    /// port's answer. A port that takes no messages answers [`Error::PortControl`] with
    /// `Unsupported`.
    pub fn control_port(&self, port: PortId, msg: PortControl) -> Result<PortReply, Error> {
        let net = self.net;
        call(&self.tx, &self.waker, |reply| Command::ControlPort {
            net,
            port,
            msg,
            reply,
        })
    }
    /// Snapshot of this network's FDB.
    pub fn fdb(&self) -> Result<Vec<FdbEntry>, Error> {
        self.fdb_at().map(|(_, entries)| entries)
    }
    /// Snapshot of this network's FDB together with the worker's clock (`now_ms`, the
    /// time base of [`FdbEntry::last_seen_ms`]), so callers can compute exact ages.
    pub fn fdb_at(&self) -> Result<(u64, Vec<FdbEntry>), Error> {
        let net = self.net;
        call(&self.tx, &self.waker, |reply| Command::Fdb { net, reply })
    }
    /// Switch-level counters.
    pub fn counters(&self) -> Result<SwitchCounters, Error> {
        let net = self.net;
        call(&self.tx, &self.waker, |reply| Command::Counters {
            net,
            reply,
        })
    }
    /// The FDB's view of each port: learned MACs, limit hits, own limit
    /// ([`Switch::ports_fdb`]).
    pub fn port_fdb(&self) -> Result<Vec<(PortId, PortFdb)>, Error> {
        let net = self.net;
        call(&self.tx, &self.waker, |reply| Command::PortFdb {
            net,
            reply,
        })
    }
    /// Subscribe to a copy of the network's frames (see the module doc): `scope` says
    /// which. [`Error::TooManyCaptures`] past [`MAX_CAPTURES`]; [`Error::NoSuchPort`]
    /// for a port scope naming no port.
    pub fn capture(&self, scope: CaptureScope) -> Result<Capture, Error> {
        static NEXT_CAPTURE: AtomicU64 = AtomicU64::new(1);
        let id = NEXT_CAPTURE.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = crossbeam_channel::bounded(CAPTURE_QUEUE_FRAMES);
        let shared = Arc::new(CaptureShared::default());
        let tap = CaptureTap {
            id,
            scope,
            tx,
            shared: Arc::clone(&shared),
        };
        let net = self.net;
        call(&self.tx, &self.waker, |reply| Command::AddCapture {
            net,
            tap,
            reply,
        })?;
        Ok(Capture {
            rx,
            shared,
            id,
            net,
            tx: self.tx.clone(),
            waker: Arc::clone(&self.waker),
        })
    }
    /// Capture subscribers of this network now.
    pub fn capture_subscribers(&self) -> usize {
        self.captures.load(Ordering::Relaxed)
    }
    /// Remove the network from its workers (all ports must have been removed; any left are dropped).
    pub fn remove(self) -> Result<(), Error> {
        let net = self.net;
        for shard in &self.shards {
            call(&shard.tx, &shard.waker, |reply| Command::RemoveNetwork {
                net,
                reply,
            })?;
        }
        call(&self.tx, &self.waker, |reply| Command::RemoveNetwork {
            net,
            reply,
        })
    }
}

/// Which frames a capture subscriber gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CaptureScope {
    /// Every frame the switch reads, from any port.
    Network,
    /// Every frame this port sends to the switch, and every frame the switch sends it.
    Port(PortId),
}

/// One captured frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CapturedFrame {
    /// When the worker switched it (wall clock).
    pub time: SystemTime,
    /// The Ethernet frame (the vnet header removed).
    pub data: Vec<u8>,
}

/// Counters shared by a subscriber and its worker.
#[derive(Debug, Default)]
struct CaptureShared {
    /// Ethernet bytes queued, not yet taken by the reader.
    queued_bytes: AtomicUsize,
    /// Frames not queued because the queue was full.
    dropped: AtomicU64,
}

/// A capture subscription ([`NetworkHandle::capture`]): read frames with
/// [`Capture::recv_timeout`]. Dropping it removes the subscriber from the worker.
pub struct Capture {
    rx: Receiver<CapturedFrame>,
    shared: Arc<CaptureShared>,
    id: u64,
    net: u64,
    tx: Sender<Command>,
    waker: Arc<Waker>,
}

impl Capture {
    /// The next frame, waiting at most `timeout`. `Disconnected` once the network or
    /// its worker is gone.
    pub fn recv_timeout(
        &self,
        timeout: Duration,
    ) -> Result<CapturedFrame, crossbeam_channel::RecvTimeoutError> {
        let f = self.rx.recv_timeout(timeout)?;
        self.shared
            .queued_bytes
            .fetch_sub(f.data.len(), Ordering::Relaxed);
        Ok(f)
    }
    /// Frames this subscriber missed because its queue was full.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }
}

impl std::fmt::Debug for Capture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capture")
            .field("id", &self.id)
            .field("net", &self.net)
            .field("dropped", &self.dropped())
            .finish()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        // A worker that is gone has dropped the subscriber already.
        let _ = self.tx.send(Command::RemoveCapture {
            net: self.net,
            id: self.id,
        });
        let _ = self.waker.wake();
    }
}

/// A subscriber as the worker holds it.
struct CaptureTap {
    id: u64,
    scope: CaptureScope,
    tx: Sender<CapturedFrame>,
    shared: Arc<CaptureShared>,
}

impl CaptureTap {
    /// Queue a copy of `eth`, or count it dropped. False when the reader is gone.
    fn offer(&self, eth: &[u8], time: SystemTime) -> bool {
        let queued = self.shared.queued_bytes.load(Ordering::Relaxed);
        if queued.saturating_add(eth.len()) > CAPTURE_QUEUE_BYTES {
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            return true;
        }
        self.shared
            .queued_bytes
            .fetch_add(eth.len(), Ordering::Relaxed);
        let frame = CapturedFrame {
            time,
            data: eth.to_vec(),
        };
        match self.tx.try_send(frame) {
            Ok(()) => true,
            Err(e) => {
                self.shared
                    .queued_bytes
                    .fetch_sub(eth.len(), Ordering::Relaxed);
                match e {
                    crossbeam_channel::TrySendError::Full(_) => {
                        self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                        true
                    }
                    crossbeam_channel::TrySendError::Disconnected(_) => false,
                }
            }
        }
    }
}

/// A port as the worker holds it.
struct Port {
    id: PortId,
    role: PortRole,
    io: Box<dyn FrameIo>,
    stats: Arc<PortStats>,
    token: usize,
    /// False once the port's `recv` failed for good and it left the poll.
    registered: bool,
    /// Indexes (in the worker's batch) of the frames to send this port; capacity
    /// [`BATCH`], reserved when the port is added.
    txq: Vec<u32>,
}

impl Port {
    /// Queue frame `k` of the current batch for this port; true if the queue was empty.
    #[inline(always)]
    fn queue(&mut self, k: u32) -> bool {
        self.txq.push(k);
        self.txq.len() == 1
    }

    /// Send the queued frames of `batch` in one [`FrameIo::send_batch`] (again after each
    /// failed frame), counting the outcome on this port, and empty the queue.
    fn flush(&mut self, batch: &FrameBatch) {
        let Port { io, stats, txq, .. } = self;
        let mut frames = Frames::picked(batch, txq);
        while !frames.is_empty() {
            let (sent, failed) = match io.send_batch(frames) {
                Ok(()) => (frames.len(), false),
                Err(e) => (e.sent.min(frames.len()), true),
            };
            let bytes: usize = frames
                .iter()
                .take(sent)
                .map(|f| f.len().saturating_sub(VNET_HDR_LEN))
                .sum();
            bump(&stats.tx_packets, sent as u64);
            bump(&stats.tx_bytes, bytes as u64);
            if !failed {
                break;
            }
            bump(&stats.drops[DropReason::TxError as usize], 1);
            frames = frames.after(sent + 1);
        }
        txq.clear();
    }
}

/// What every shard of a network shares: the switch (FDB, port table, counters), the
/// port directory and the capture subscribers. Locked once per batch; on a network with
/// one shard the lock is never contended.
struct Shared {
    switch: Switch,
    /// Every port of the network and its role, sorted by id. The owner holds a queue of
    /// each; another shard only of the multi-queue ports given one for it.
    dir: Vec<(PortId, PortRole)>,
    next_port: PortId,
    /// Capture subscribers (empty: nothing to do per frame).
    taps: Vec<CaptureTap>,
    /// `taps.len()`, for the control plane.
    captures: Arc<AtomicUsize>,
}

impl Shared {
    fn role_of(&self, id: PortId) -> Option<PortRole> {
        self.dir
            .binary_search_by_key(&id, |&(p, _)| p)
            .ok()
            .and_then(|j| self.dir.get(j))
            .map(|&(_, r)| r)
    }

    /// Offer a frame received on port `ingress` (vnet header + Ethernet frame), switched
    /// to `action`, to every capture subscriber whose scope takes it.
    #[cold]
    fn tap_frame(&mut self, ingress: PortId, frame: &[u8], action: Action) {
        let Some(eth) = frame.get(VNET_HDR_LEN..) else {
            return;
        };
        let time = SystemTime::now();
        let dir = &self.dir;
        let sent_to = |p: PortId| match action {
            Action::Drop(_) => false,
            Action::Unicast(q) => q == p,
            Action::Flood { except } => except != p,
            Action::ToGateways => dir
                .binary_search_by_key(&p, |&(x, _)| x)
                .ok()
                .and_then(|j| dir.get(j))
                .is_some_and(|&(_, r)| r == PortRole::Gateway),
        };
        let before = self.taps.len();
        self.taps.retain(|t| {
            let wanted = match t.scope {
                CaptureScope::Network => true,
                CaptureScope::Port(p) => p == ingress || sent_to(p),
            };
            !wanted || t.offer(eth, time)
        });
        if self.taps.len() != before {
            self.captures.store(self.taps.len(), Ordering::Relaxed);
        }
    }
}

/// Lock a network's shared part. A worker that panicked while holding it left nothing
/// half-written that matters more than stopping the datapath, so poisoning is ignored.
fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

/// A shard's way to the owner for frames to ports it holds no queue of.
struct Relay {
    net: u64,
    tx: Sender<Command>,
    waker: Arc<Waker>,
    /// Frames relayed (for the control plane).
    relayed: Arc<AtomicU64>,
    /// The current batch's copies and their (copy index, port) targets.
    frames: Vec<Vec<u8>>,
    to: Vec<(u32, PortId)>,
    /// Frame `k` of the batch is `frames[copied.1]` when `copied.0 == k`.
    copied: Option<(u32, u32)>,
}

impl Relay {
    /// Relay frame `k` of the batch to port `to`.
    fn push(&mut self, k: u32, frame: &[u8], to: PortId) {
        let idx = match self.copied {
            Some((kk, idx)) if kk == k => idx,
            _ => {
                let idx = self.frames.len() as u32;
                self.frames.push(frame.to_vec());
                self.copied = Some((k, idx));
                idx
            }
        };
        self.to.push((idx, to));
    }

    /// Hand the batch's relayed frames to the owner (one command, one wake-up).
    fn flush(&mut self) {
        self.copied = None;
        if self.to.is_empty() {
            self.frames.clear();
            return;
        }
        let frames = std::mem::take(&mut self.frames);
        let to = std::mem::take(&mut self.to);
        bump(&self.relayed, frames.len() as u64);
        // The owner gone means the network is being removed: the frames go with it.
        if self
            .tx
            .send(Command::Relay {
                net: self.net,
                frames,
                to,
            })
            .is_ok()
        {
            let _ = self.waker.wake();
        }
    }
}

/// One shard of a network on its worker: the ports (queues) it reads and writes, sorted
/// by id, and the shared part.
struct Network {
    shared: Arc<Mutex<Shared>>,
    local: Local,
}

/// A shard's own ports and per-batch scratch.
struct Local {
    /// Frames this shard read (for the control plane: [`NetworkHandle::shard_frames`]).
    read: Arc<AtomicU64>,
    ports: Vec<Port>,
    /// Indexes (in `ports`) of ports with queued frames; capacity reserved for every port.
    dirty: Vec<usize>,
    /// `None` on the owner (it holds a queue of every port); on other shards, where
    /// frames for ports without a local queue go.
    relay: Option<Relay>,
}

impl Network {
    fn index_of(&self, id: PortId) -> Option<usize> {
        self.local.index_of(id)
    }

    /// Switch a batch of frames received on `self.local.ports[i]` (under the shared
    /// lock), then send each egress port its share (outside it).
    #[inline]
    fn forward_batch(&mut self, i: usize, batch: &FrameBatch, now_ms: u64) {
        {
            let mut sh = lock(&self.shared);
            for (k, frame) in batch.iter().enumerate() {
                // A batch holds at most BATCH frames.
                self.local.forward(&mut sh, i, k as u32, frame, now_ms);
            }
        }
        let Local {
            ports,
            dirty,
            relay,
            ..
        } = &mut self.local;
        for j in dirty.drain(..) {
            if let Some(port) = ports.get_mut(j) {
                port.flush(batch);
            }
        }
        if let Some(r) = relay {
            r.flush();
        }
    }
}

impl Local {
    fn index_of(&self, id: PortId) -> Option<usize> {
        self.ports.binary_search_by_key(&id, |p| p.id).ok()
    }

    /// Send frames another shard relayed (owner only), one write each, counted on the
    /// egress port like switched ones. A port removed meanwhile is skipped.
    fn send_relayed(&mut self, frames: &[Vec<u8>], to: &[(u32, PortId)]) {
        for &(idx, id) in to {
            let (Some(frame), Some(i)) = (frames.get(idx as usize), self.index_of(id)) else {
                continue;
            };
            let Some(port) = self.ports.get_mut(i) else {
                continue;
            };
            let sent = loop {
                match port.io.send(frame) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    r => break r.is_ok(),
                }
            };
            if sent {
                bump(&port.stats.tx_packets, 1);
                bump(
                    &port.stats.tx_bytes,
                    frame.len().saturating_sub(VNET_HDR_LEN) as u64,
                );
            } else {
                bump(&port.stats.drops[DropReason::TxError as usize], 1);
            }
        }
    }

    /// Queue frame `k` for port `id`: on its local queue, or relayed to the owner.
    #[inline]
    fn queue_to(&mut self, id: PortId, k: u32, frame: &[u8]) {
        match self.ports.binary_search_by_key(&id, |p| p.id) {
            Ok(j) => {
                if let Some(port) = self.ports.get_mut(j) {
                    if port.queue(k) {
                        self.dirty.push(j);
                    }
                }
            }
            Err(_) => {
                if let Some(r) = &mut self.relay {
                    r.push(k, frame, id);
                }
            }
        }
    }

    /// Switch frame `k` of the batch (vnet header + Ethernet frame) received on
    /// `self.ports[i]`: count it and queue it on its egress port(s).
    #[inline]
    fn forward(&mut self, sh: &mut Shared, i: usize, k: u32, frame: &[u8], now_ms: u64) {
        let Some(ingress) = self.ports.get(i) else {
            return;
        };
        let ingress_id = ingress.id;
        let stats = &ingress.stats;
        bump(&stats.rx_packets, 1);
        bump(
            &stats.rx_bytes,
            frame.len().saturating_sub(VNET_HDR_LEN) as u64,
        );
        let action = match frame.split_at_checked(VNET_HDR_LEN) {
            None => Action::Drop(DropReason::Truncated),
            Some((hdr, eth)) => match check_vnet_hdr(hdr, eth.len()) {
                Err(r) => Action::Drop(r),
                Ok(()) => sh.switch.decide(eth, ingress_id, now_ms),
            },
        };
        match action {
            Action::Drop(r) => bump(&stats.drops[r as usize], 1),
            Action::Unicast(p) => self.queue_to(p, k, frame),
            Action::Flood { except } if self.relay.is_none() => {
                for (j, port) in self.ports.iter_mut().enumerate() {
                    if port.id != except && port.queue(k) {
                        self.dirty.push(j);
                    }
                }
            }
            Action::ToGateways if self.relay.is_none() => {
                for (j, port) in self.ports.iter_mut().enumerate() {
                    if port.role == PortRole::Gateway && port.queue(k) {
                        self.dirty.push(j);
                    }
                }
            }
            // A shard that holds queues of only some ports walks the directory.
            Action::Flood { except } => {
                for &(p, _) in &sh.dir {
                    if p != except {
                        self.queue_to(p, k, frame);
                    }
                }
            }
            Action::ToGateways => {
                for &(p, role) in &sh.dir {
                    if role == PortRole::Gateway {
                        self.queue_to(p, k, frame);
                    }
                }
            }
        }
        if !sh.taps.is_empty() {
            sh.tap_frame(ingress_id, frame, action);
        }
    }
}

/// Which port a poll token stands for.
struct Slot {
    net: u64,
    port: PortId,
    /// On the ready list.
    ready: bool,
}

/// One worker thread's state. Everything here is touched by that thread only.
struct Worker {
    poll: Poll,
    rx: Receiver<Command>,
    networks: FxHashMap<u64, Network>,
    /// Token → port; `None` slots are on `free`.
    slots: Vec<Option<Slot>>,
    free: Vec<usize>,
    /// Tokens of ports that may have frames queued, served round-robin.
    ready: Vec<usize>,
    /// Scratch for the next turn's ready list (kept to reuse its allocation).
    still_ready: Vec<usize>,
    batch: FrameBatch,
    start: Instant,
    tick: Option<WorkerTick>,
}

impl Worker {
    fn new(poll: Poll, rx: Receiver<Command>, start: Instant) -> Worker {
        Worker {
            poll,
            rx,
            networks: FxHashMap::default(),
            slots: Vec::new(),
            free: Vec::new(),
            ready: Vec::new(),
            still_ready: Vec::new(),
            batch: FrameBatch::new(BATCH, RECV_BUF_LEN, BATCH_BUF_LEN),
            start,
            tick: None,
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        let mut last_expire = 0;
        loop {
            let timeout = if self.ready.is_empty() {
                Duration::from_millis(EXPIRE_EVERY_MS)
            } else {
                Duration::ZERO
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    tracing::error!(error = %e, "datapath worker: poll failed; stopping");
                    return;
                }
            }
            for ev in events.iter() {
                if ev.token() != WAKER {
                    self.mark_ready(ev.token().0);
                }
            }
            if !self.drain_commands() {
                return;
            }
            let now = self.now_ms();
            if now.saturating_sub(last_expire) >= EXPIRE_EVERY_MS {
                // The owner ages a spread network's shared FDB.
                for net in self.networks.values() {
                    if net.local.relay.is_none() {
                        lock(&net.shared).switch.expire(now);
                    }
                }
                // Ports idle since the last tick give back what they keep for reads.
                for net in self.networks.values_mut() {
                    for port in net.local.ports.iter_mut().filter(|p| p.registered) {
                        port.io.trim();
                    }
                }
                last_expire = now;
            }
            if let Some(tick) = self.tick.as_mut() {
                tick(now);
            }
            self.serve_ready(now);
        }
    }

    fn mark_ready(&mut self, token: usize) {
        if let Some(Some(slot)) = self.slots.get_mut(token) {
            if !slot.ready {
                slot.ready = true;
                self.ready.push(token);
            }
        }
    }

    /// One round-robin turn over the ready ports.
    fn serve_ready(&mut self, now_ms: u64) {
        let mut turn = std::mem::take(&mut self.ready);
        for &token in &turn {
            if self.serve_port(token, now_ms) {
                self.still_ready.push(token);
            } else if let Some(Some(slot)) = self.slots.get_mut(token) {
                slot.ready = false;
            }
        }
        turn.clear();
        self.ready = std::mem::replace(&mut self.still_ready, turn);
    }

    /// Read and switch up to [`BATCH`] frames from one port, in batches. True if it may
    /// have more.
    fn serve_port(&mut self, token: usize, now_ms: u64) -> bool {
        let Some(Some(slot)) = self.slots.get(token) else {
            return false;
        };
        let (net_id, port_id) = (slot.net, slot.port);
        let Some(net) = self.networks.get_mut(&net_id) else {
            return false;
        };
        let Some(i) = net.index_of(port_id) else {
            return false;
        };
        let mut budget = BATCH;
        while budget > 0 {
            let Some(port) = net.local.ports.get_mut(i) else {
                return false;
            };
            if !port.registered {
                return false;
            }
            self.batch.clear();
            self.batch.set_limit(budget);
            match port.io.recv_batch(&mut self.batch) {
                Ok(0) => {
                    // End of stream (a datagram peer closed); a tap never reads 0.
                    let e = io::Error::from(io::ErrorKind::UnexpectedEof);
                    retire_port(&self.poll, net_id, port, &e);
                    return false;
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                    budget -= 1;
                    continue;
                }
                Err(e) => {
                    retire_port(&self.poll, net_id, port, &e);
                    return false;
                }
            }
            budget = budget.saturating_sub(self.batch.len().max(1));
            bump(&net.local.read, self.batch.len() as u64);
            net.forward_batch(i, &self.batch, now_ms);
            match self.batch.take_stop() {
                None => {}
                Some(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Some(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Some(e) => {
                    if let Some(port) = net.local.ports.get_mut(i) {
                        retire_port(&self.poll, net_id, port, &e);
                    }
                    return false;
                }
            }
        }
        true
    }

    /// Handle queued commands. False when the worker must stop.
    fn drain_commands(&mut self) -> bool {
        loop {
            match self.rx.try_recv() {
                Ok(Command::Shutdown) | Err(TryRecvError::Disconnected) => return false,
                Ok(cmd) => self.handle(cmd),
                Err(TryRecvError::Empty) => return true,
            }
        }
    }

    fn handle(&mut self, cmd: Command) {
        // Reply errors mean the caller stopped waiting; nothing to do about it.
        match cmd {
            Command::AddNetwork {
                net,
                shared,
                relay,
                read,
                reply,
            } => {
                let relay = relay.map(|r| Relay {
                    net,
                    tx: r.tx,
                    waker: r.waker,
                    relayed: r.relayed,
                    frames: Vec::new(),
                    to: Vec::new(),
                    copied: None,
                });
                self.networks.insert(
                    net,
                    Network {
                        shared,
                        local: Local {
                            read,
                            ports: Vec::new(),
                            dirty: Vec::new(),
                            relay,
                        },
                    },
                );
                let _ = reply.send(Ok(()));
            }
            Command::RemoveNetwork { net, reply } => {
                if let Some(network) = self.networks.remove(&net) {
                    if network.local.relay.is_none() {
                        let mut sh = lock(&network.shared);
                        sh.taps.clear();
                        sh.captures.store(0, Ordering::Relaxed);
                    }
                    for port in &network.local.ports {
                        self.release(port);
                    }
                }
                let _ = reply.send(Ok(()));
            }
            Command::AddQueue {
                net,
                port,
                role,
                io,
                stats,
                reply,
            } => {
                let _ = reply.send(self.add_queue(net, port, role, io, stats));
            }
            Command::RemoveQueue { net, port, reply } => {
                let removed = self.networks.get_mut(&net).and_then(|n| {
                    let i = n.index_of(port)?;
                    Some(n.local.ports.remove(i))
                });
                if let Some(p) = removed {
                    self.release(&p);
                }
                let _ = reply.send(Ok(()));
            }
            Command::Relay { net, frames, to } => {
                if let Some(n) = self.networks.get_mut(&net) {
                    n.local.send_relayed(&frames, &to);
                }
            }
            Command::AddPort {
                net,
                io,
                opts,
                reply,
            } => {
                let _ = reply.send(self.add_port(net, io, opts));
            }
            Command::SetPolicy {
                net,
                port,
                policy,
                reply,
            } => {
                let _ = reply.send(self.set_policy(net, port, policy));
            }
            Command::RemovePort { net, port, reply } => {
                let _ = reply.send(self.remove_port(net, port));
            }
            Command::ControlPort {
                net,
                port,
                msg,
                reply,
            } => {
                let _ = reply.send(self.control_port(net, port, msg));
            }
            Command::Fdb { net, reply } => {
                let now = self.now_ms();
                let r = self
                    .networks
                    .get(&net)
                    .map(|n| (now, lock(&n.shared).switch.fdb()))
                    .ok_or(Error::WorkerGone);
                let _ = reply.send(r);
            }
            Command::PortFdb { net, reply } => {
                let r = self
                    .networks
                    .get(&net)
                    .map(|n| lock(&n.shared).switch.ports_fdb())
                    .ok_or(Error::WorkerGone);
                let _ = reply.send(r);
            }
            Command::Counters { net, reply } => {
                let r = self
                    .networks
                    .get(&net)
                    .map(|n| lock(&n.shared).switch.counters())
                    .ok_or(Error::WorkerGone);
                let _ = reply.send(r);
            }
            Command::AddCapture { net, tap, reply } => {
                let _ = reply.send(self.add_capture(net, tap));
            }
            Command::RemoveCapture { net, id } => {
                if let Some(n) = self.networks.get(&net) {
                    let mut sh = lock(&n.shared);
                    sh.taps.retain(|t| t.id != id);
                    sh.captures.store(sh.taps.len(), Ordering::Relaxed);
                }
            }
            Command::Shutdown => {}
        }
    }

    fn add_capture(&mut self, net_id: u64, tap: CaptureTap) -> Result<(), Error> {
        let net = self.networks.get(&net_id).ok_or(Error::WorkerGone)?;
        let mut sh = lock(&net.shared);
        if let CaptureScope::Port(p) = tap.scope {
            sh.role_of(p).ok_or(Error::NoSuchPort(p))?;
        }
        if sh.taps.len() >= MAX_CAPTURES {
            sh.captures.store(sh.taps.len(), Ordering::Relaxed);
            return Err(Error::TooManyCaptures);
        }
        sh.taps.push(tap);
        sh.captures.store(sh.taps.len(), Ordering::Relaxed);
        Ok(())
    }

    fn add_port(
        &mut self,
        net_id: u64,
        io: Box<dyn FrameIo>,
        opts: PortOptions,
    ) -> Result<(PortId, Arc<PortStats>), Error> {
        let shared = Arc::clone(&self.networks.get(&net_id).ok_or(Error::WorkerGone)?.shared);
        let id = lock(&shared).next_port;
        let stats = Arc::new(PortStats::default());
        self.attach(net_id, id, opts.role, io, Arc::clone(&stats))?;
        // Registered: now the switch may send to it (the owner holds every port).
        let mut sh = lock(&shared);
        sh.next_port = id.wrapping_add(1);
        sh.switch.set_port(id, opts.role, opts.policy);
        sh.switch.set_port_fdb_limit(id, opts.fdb_limit);
        if let Err(j) = sh.dir.binary_search_by_key(&id, |&(p, _)| p) {
            sh.dir.insert(j, (id, opts.role));
        }
        Ok((id, stats))
    }

    /// Attach a queue of the owner's port `id` to this shard.
    fn add_queue(
        &mut self,
        net_id: u64,
        id: PortId,
        role: PortRole,
        io: Box<dyn FrameIo>,
        stats: Arc<PortStats>,
    ) -> Result<(), Error> {
        let net = self.networks.get(&net_id).ok_or(Error::WorkerGone)?;
        if net.local.relay.is_none() || net.index_of(id).is_some() {
            return Err(Error::Io {
                op: "attach a port queue",
                source: io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "this shard holds a queue of the port already",
                ),
            });
        }
        if lock(&net.shared).role_of(id).is_none() {
            return Err(Error::NoSuchPort(id));
        }
        self.attach(net_id, id, role, io, stats)
    }

    /// Register `io` with the poll and put it in the shard's port table as port `id`.
    fn attach(
        &mut self,
        net_id: u64,
        id: PortId,
        role: PortRole,
        io: Box<dyn FrameIo>,
        stats: Arc<PortStats>,
    ) -> Result<(), Error> {
        let net = self.networks.get_mut(&net_id).ok_or(Error::WorkerGone)?;
        let token = match self.free.pop() {
            Some(t) => t,
            None => {
                self.slots.push(None);
                self.slots.len() - 1
            }
        };
        let fd = io.as_raw_fd();
        if let Err(source) =
            self.poll
                .registry()
                .register(&mut SourceFd(&fd), Token(token), Interest::READABLE)
        {
            self.free.push(token);
            return Err(Error::Io {
                op: "register port with poll",
                source,
            });
        }
        // Ids are unique on a shard (add_queue checks); keep the table sorted.
        let at = net.local.ports.partition_point(|p| p.id < id);
        net.local.ports.insert(
            at,
            Port {
                id,
                role,
                io,
                stats,
                token,
                registered: true,
                txq: Vec::with_capacity(BATCH),
            },
        );
        // Every port can be dirty at once: no allocation while switching.
        let n = net.local.ports.len();
        net.local.dirty.reserve(n);
        if let Some(slot) = self.slots.get_mut(token) {
            *slot = Some(Slot {
                net: net_id,
                port: id,
                ready: false,
            });
        }
        // Frames may already be queued; one read finds out.
        self.mark_ready(token);
        Ok(())
    }

    fn set_policy(
        &mut self,
        net_id: u64,
        id: PortId,
        policy: Option<PortPolicy>,
    ) -> Result<(), Error> {
        let net = self.networks.get(&net_id).ok_or(Error::WorkerGone)?;
        let mut sh = lock(&net.shared);
        let role = sh.role_of(id).ok_or(Error::NoSuchPort(id))?;
        sh.switch.set_port(id, role, policy);
        Ok(())
    }

    fn control_port(
        &mut self,
        net_id: u64,
        id: PortId,
        msg: PortControl,
    ) -> Result<PortReply, Error> {
        let net = self.networks.get_mut(&net_id).ok_or(Error::WorkerGone)?;
        let i = net.index_of(id).ok_or(Error::NoSuchPort(id))?;
        let port = net.local.ports.get_mut(i).ok_or(Error::NoSuchPort(id))?;
        port.io
            .control(msg)
            .map_err(|source| Error::PortControl { port: id, source })
    }

    fn remove_port(&mut self, net_id: u64, id: PortId) -> Result<Box<dyn FrameIo>, Error> {
        let net = self.networks.get_mut(&net_id).ok_or(Error::WorkerGone)?;
        let i = net.index_of(id).ok_or(Error::NoSuchPort(id))?;
        let port = net.local.ports.remove(i);
        {
            let mut sh = lock(&net.shared);
            sh.switch.forget_port(id);
            if let Ok(j) = sh.dir.binary_search_by_key(&id, |&(p, _)| p) {
                sh.dir.remove(j);
            }
            // The port's own subscribers end: their readers see the stream close.
            sh.taps.retain(|t| t.scope != CaptureScope::Port(id));
            sh.captures.store(sh.taps.len(), Ordering::Relaxed);
        }
        self.release(&port);
        let mut io = port.io;
        io.detach();
        Ok(io)
    }

    /// Take a port out of the poll, the token slab and the ready list.
    fn release(&mut self, port: &Port) {
        if port.registered {
            let fd = port.io.as_raw_fd();
            if let Err(e) = self.poll.registry().deregister(&mut SourceFd(&fd)) {
                tracing::debug!(port = port.id, error = %e, "deregister port");
            }
        }
        if let Some(slot) = self.slots.get_mut(port.token) {
            *slot = None;
            self.free.push(port.token);
        }
        self.ready.retain(|&t| t != port.token);
    }
}

/// Deregister a port whose reads fail for good; it stays in the table until removed.
fn retire_port(poll: &Poll, net: u64, port: &mut Port, e: &io::Error) {
    tracing::warn!(network = net, port = port.id, error = %e, "port read failed; port stopped");
    let fd = port.io.as_raw_fd();
    if let Err(e) = poll.registry().deregister(&mut SourceFd(&fd)) {
        tracing::debug!(port = port.id, error = %e, "deregister failed port");
    }
    port.registered = false;
}

/// A [`FrameIo`] over a non-blocking Unix datagram socket, one datagram per frame.
/// Used by tests and to join switches in-process; a zero-length read is end of stream.
pub struct DatagramPort(UnixDatagram);

impl DatagramPort {
    /// Wrap `sock`, switching it to non-blocking mode.
    pub fn new(sock: UnixDatagram) -> io::Result<DatagramPort> {
        sock.set_nonblocking(true)?;
        Ok(DatagramPort(sock))
    }

    /// A connected pair: the port end (non-blocking) and the peer end (blocking), which
    /// plays the host side of a tap.
    pub fn pair() -> io::Result<(DatagramPort, UnixDatagram)> {
        let (a, b) = UnixDatagram::pair()?;
        Ok((DatagramPort::new(a)?, b))
    }
}

impl AsRawFd for DatagramPort {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.as_raw_fd()
    }
}

impl FrameIo for DatagramPort {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.recv(buf)
    }
    fn send(&mut self, frame: &[u8]) -> io::Result<usize> {
        self.0.send(frame)
    }
}
