//! Batched tap I/O with io_uring, and the choice between it and one `read`/`write` per
//! frame.
//!
//! Contract:
//! * A [`UringTap`] is a switch port ([`FrameIo`]) over a [`Tap`] with one io_uring of
//!   its own. One multishot read (`IORING_OP_READ_MULTISHOT`) stays in flight, taking
//!   `depth` [`RECV_BUF_LEN`] buffers the port owns from a provided-buffer ring; the
//!   kernel reads every queued frame on one wake-up, one completion per frame.
//!   Completions (and, on a deferred ring, reads waiting to run) are signalled on an
//!   eventfd registered with the ring, and the port's [`AsRawFd`] is that eventfd, so
//!   the worker's edge-triggered poll works as for any port. The eventfd is for
//!   edge-triggered polling only: its counter is never emptied.
//! * [`FrameIo::recv_batch`] takes completed reads in completion order (which is the
//!   tap's queue order) without a system call per frame: each filled buffer is *lent*
//!   to the batch ([`FrameBatch::push_loan`]) and a spare one from the batch takes its
//!   place in the buffer ring, so no frame is copied. When the multishot read ends (no
//!   buffer left: the tap keeps the frames) it is submitted again, one
//!   `io_uring_enter`. The eventfd is signalled only while the port is idle: it is
//!   turned off (`IORING_CQ_EVENTFD_DISABLED`, no system call) while the worker keeps
//!   the port on its ready list and while the port writes, and turned on and the ring
//!   looked at again (completions and the `TASKRUN` flag) when `recv_batch` finds
//!   nothing, so none is missed; reads that complete or become due during a write on an
//!   idle port are signalled by hand. A read that fails with anything
//!   but `ENOBUFS`/`EINTR`/`EAGAIN`/`ECANCELED` or an empty read (seen at the end of
//!   a multishot run) stops the port (that error, after the frames read before it);
//!   `recv_batch` never returns `Ok(0)` (end of stream: a tap has none).
//! * [`FrameIo::send_batch`] submits every write of the batch (up to [`MAX_WRITES`]) in
//!   one `io_uring_enter` that does not ask for completions (so deferred reads do not
//!   run in it); the kernel issues them in order, inline, and the call waits for any
//!   not complete yet before returning (the frames' memory is the caller's).
//!   They are not linked (`IOSQE_IO_LINK` runs each next write from task work: measured
//!   15% fewer frames/s), so the writes after a failed one were done too: the first
//!   failure is reported as the contract says, and the results of the writes after it
//!   are kept and given when the caller sends those frames again (same addresses and
//!   lengths; anything else forgets them), so no frame is written twice. Read
//!   completions seen meanwhile are kept for the next `recv_batch`.
//! * Both ports hand a batch to their [`crate::udp_merge::UdpMerge`] first: if runs of
//!   UDP datagrams of one flow halve its writes, it writes the batch itself, one
//!   `write` per run (a run as one USO super-frame), with the same error contract.
//! * Dropping the port cancels the read in flight and waits for its last completion,
//!   then unregisters the buffer ring, before the buffers are freed (the kernel never
//!   writes freed memory); if waiting fails they are leaked instead. A deferred ring
//!   refuses both to any thread but its submitter (`EEXIST`: the control thread drops
//!   a port its worker gave back); then the ring is closed first, which cancels the read
//!   without running it (see `Drop`), and the buffers are freed after.
//! * [`open_port`] picks the path for a tap: [`TapIo::Uring`] fails if io_uring cannot
//!   be set up (ENOSYS, EPERM from `kernel.io_uring_disabled` or seccomp, ENOMEM);
//!   [`TapIo::Auto`] then falls back to [`RwTap`] (one `read`/`write` per frame), logs
//!   the first fallback and counts every port per path ([`path_counts`]).
//!
//! * Task work: io_uring completes a read that waited for data in task work of the
//!   thread that *submitted* it. The ring defers it (`IORING_SETUP_DEFER_TASKRUN` with
//!   `SINGLE_ISSUER`, Linux 6.1+): a frame arriving on the tap signals the eventfd from
//!   the sender's context (as a readable tap wakes an epoll waiter) and its read runs
//!   only when `recv_batch` enters the ring asking for completions (the `TASKRUN` flag
//!   says one is due), never inside the worker's other system calls. The ring is made
//!   disabled (`R_DISABLED`) and enabled by the thread that first uses the port (the
//!   worker's first `recv_batch`), which becomes its single issuer; the port submits
//!   nothing before. Kernels without deferred task work get cooperative task work
//!   (`COOP_TASKRUN`, 5.19+: the read runs at the worker's next system call, which a
//!   sleeping worker's poll returns from with `EINTR`), else a plain ring.
//!   [`set_deferred_taskrun`] picks the cooperative ring on any kernel (tests, A/B).
//!   Why deferred: with cooperative task work the worker's poll returned `EINTR` on
//!   about one wake-up in ten and the reads ran inside its writes and eventfd signals;
//!   bulk TCP through the gateway lost to read/write (docs/benchmarks.md).
//!
//! Why a multishot read and not N plain reads in flight: every plain read waiting on
//! the tap has its own poll entry on the tap's wait queue, so each arriving frame woke
//! all N (one read wins, the others fail with `EAGAIN` and re-arm): measured, 64 reads
//! in flight forwarded less than 4. The multishot read has one poll entry. The
//! (non-blocking) tap fd is polled by io_uring itself, no kernel thread. Buffers are not
//! registered (`READ_FIXED`): they move between the port and the worker's batch, which
//! fixed buffers cannot do without a copy.

use crate::tap::Tap;
use crate::udp_merge::UdpMerge;
use io_uring::{opcode, types, IoUring};
use std::alloc::Layout;
use std::collections::VecDeque;
use std::io;
use std::mem::ManuallyDrop;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{fence, AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;
use tapnet_switch::runtime::{FrameBatch, FrameIo, Frames, SendBatchError, RECV_BUF_LEN};

/// Receive buffers per port unless told otherwise.
pub const DEFAULT_DEPTH: usize = 32;
/// Most writes submitted in one go (a longer batch is sent in chunks of this many).
pub const MAX_WRITES: usize = 64;

/// `user_data` bit marking a write (the rest is its index in the chunk).
const WRITE_TAG: u64 = 1 << 62;
/// `user_data` of the cancel request sent on drop.
const CANCEL_TAG: u64 = 1 << 61;

/// How tap ports move frames (`tapnetd --tap-io`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TapIo {
    /// io_uring where the kernel allows it, else one read/write per frame: the default
    /// since the comparison run of 2026-12-01 15:34 UTC measured io_uring ahead of or
    /// level with read/write on every bridge and gateway row but one (64 B UDP 1.20×,
    /// TCP 1.04×/1.09×, NAT egress 1.00×, toward the sandbox 0.90–0.97×;
    /// docs/benchmarks.md, "io_uring becomes the default").
    #[default]
    Auto,
    /// io_uring only: opening a port fails if io_uring cannot be set up.
    Uring,
    /// One `read`/`write` system call per frame.
    Rw,
}

impl TapIo {
    /// The flag's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            TapIo::Auto => "auto",
            TapIo::Uring => "uring",
            TapIo::Rw => "rw",
        }
    }
}

impl std::str::FromStr for TapIo {
    type Err = String;
    fn from_str(s: &str) -> Result<TapIo, String> {
        match s {
            "auto" => Ok(TapIo::Auto),
            "uring" => Ok(TapIo::Uring),
            "rw" => Ok(TapIo::Rw),
            _ => Err(format!("unknown tap I/O mode {s:?} (auto, uring or rw)")),
        }
    }
}

/// The path a port got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TapIoPath {
    /// [`UringTap`].
    Uring,
    /// [`RwTap`].
    Rw,
}

impl TapIoPath {
    /// `"uring"` or `"rw"`.
    pub fn as_str(self) -> &'static str {
        match self {
            TapIoPath::Uring => "uring",
            TapIoPath::Rw => "rw",
        }
    }
}

static URING_PORTS: AtomicU64 = AtomicU64::new(0);
static RW_PORTS: AtomicU64 = AtomicU64::new(0);
static FALLBACKS: AtomicU64 = AtomicU64::new(0);
static FALLBACK_LOGGED: AtomicBool = AtomicBool::new(false);
/// New ports try deferred task work first (see [`set_deferred_taskrun`]).
static DEFER: AtomicBool = AtomicBool::new(true);

/// Whether ports made from now on try `IORING_SETUP_DEFER_TASKRUN` first (the default)
/// or go straight to cooperative task work, the ring older kernels (5.19–6.0) get:
/// lets tests and benchmarks run both kinds of ring on one kernel.
pub fn set_deferred_taskrun(on: bool) {
    DEFER.store(on, Ordering::Relaxed);
}

/// Ports opened on each path since the process started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PathCounts {
    /// Ports on io_uring.
    pub uring: u64,
    /// Ports on read/write.
    pub rw: u64,
    /// Of the `rw` ports, those that asked for io_uring (`auto`) and fell back.
    pub fallbacks: u64,
}

/// Ports opened per path in this process.
pub fn path_counts() -> PathCounts {
    PathCounts {
        uring: URING_PORTS.load(Ordering::Relaxed),
        rw: RW_PORTS.load(Ordering::Relaxed),
        fallbacks: FALLBACKS.load(Ordering::Relaxed),
    }
}

/// Is io_uring usable by this thread now? Sets up (and drops) a small ring; the error
/// is the kernel's answer.
pub fn probe() -> io::Result<()> {
    IoUring::new(2).map(drop)
}

/// Make a switch port for `tap` on the path `mode` asks for (see the module doc);
/// `depth` receive buffers on io_uring.
pub fn open_port(
    tap: Arc<Tap>,
    mode: TapIo,
    depth: usize,
) -> io::Result<(Box<dyn FrameIo>, TapIoPath)> {
    if mode == TapIo::Rw {
        RW_PORTS.fetch_add(1, Ordering::Relaxed);
        return Ok((Box::new(RwTap::new(tap)), TapIoPath::Rw));
    }
    match UringTap::new(Arc::clone(&tap), depth) {
        Ok(port) => {
            URING_PORTS.fetch_add(1, Ordering::Relaxed);
            Ok((Box::new(port), TapIoPath::Uring))
        }
        Err(e) if mode == TapIo::Uring => Err(io::Error::new(
            e.kind(),
            format!("io_uring tap I/O unavailable (--tap-io uring): {e}"),
        )),
        Err(e) => {
            if !FALLBACK_LOGGED.swap(true, Ordering::Relaxed) {
                tracing::warn!(error = %e, "io_uring unavailable; tap ports use one read/write per frame");
            }
            FALLBACKS.fetch_add(1, Ordering::Relaxed);
            RW_PORTS.fetch_add(1, Ordering::Relaxed);
            Ok((Box::new(RwTap::new(tap)), TapIoPath::Rw))
        }
    }
}

/// A tap as a switch port, one `read`/`write` system call per frame (runs of UDP
/// datagrams merged, see [`crate::udp_merge`]).
#[derive(Debug)]
pub struct RwTap {
    tap: Arc<Tap>,
    merge: UdpMerge,
}

impl RwTap {
    /// A port over `tap`.
    pub fn new(tap: Arc<Tap>) -> RwTap {
        let merge = UdpMerge::for_tap(&tap);
        RwTap { tap, merge }
    }
}

impl AsRawFd for RwTap {
    fn as_raw_fd(&self) -> RawFd {
        self.tap.as_raw_fd()
    }
}

impl FrameIo for RwTap {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.tap.read(buf)
    }
    fn send(&mut self, frame: &[u8]) -> io::Result<usize> {
        self.tap.write(frame)
    }
    fn send_batch(&mut self, frames: Frames<'_>) -> Result<(), SendBatchError> {
        self.merge
            .send(&self.tap, frames)
            .unwrap_or_else(|| crate::udp_merge::write_each(&self.tap, frames.iter(), 0))
    }
}

/// A tap as a switch port on io_uring (see the module doc).
pub struct UringTap {
    /// Closed explicitly in `drop`, before the buffers it may write are freed.
    ring: ManuallyDrop<IoUring>,
    /// Task work is deferred (`IORING_SETUP_DEFER_TASKRUN`): reads run only when this
    /// port's thread enters the ring asking for completions.
    defer: bool,
    /// The ring is enabled (a deferred ring is made disabled and enabled by the thread
    /// that first uses the port, which becomes its only submitter).
    enabled: bool,
    tap: Arc<Tap>,
    /// Signalled by the ring on every completion; what the worker polls.
    event: OwnedFd,
    /// Buffer `bid` of the provided-buffer ring; the kernel's while it is in the ring.
    bufs: Vec<Box<[u8]>>,
    /// The provided-buffer ring's entries (page-aligned, `entries` long), shared with
    /// the kernel.
    br: NonNull<types::BufRingEntry>,
    br_layout: Layout,
    /// Entries of the buffer ring (a power of two).
    entries: u16,
    /// Our copy of the buffer ring's tail (entries published so far).
    tail: u16,
    /// The buffer ring is registered with the kernel.
    br_registered: bool,
    /// The multishot read is in flight.
    armed: bool,
    /// A frame was handed out since the last [`FrameIo::trim`].
    read_since_trim: bool,
    /// The receive buffers' pages were given back and no frame has been read since.
    trimmed: bool,
    /// The eventfd is signalled on completions (the port is idle).
    evfd_on: bool,
    /// Read completions taken from the ring, not yet handed out: `(result, flags)`.
    done: VecDeque<(i32, u32)>,
    /// Results of the writes of the chunk being sent.
    write_res: Vec<Option<i32>>,
    /// Frames written past a failed one, `(address, length, result)`, not yet reported.
    owed: VecDeque<(usize, usize, i32)>,
    /// Runs of UDP datagrams written as super-frames.
    merge: UdpMerge,
}

// SAFETY: `br` points at memory this port owns (allocated in `new`, freed in `drop`) and
// only touches through `&mut self`; nothing in the port is tied to the thread that made it.
unsafe impl Send for UringTap {}

impl std::fmt::Debug for UringTap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringTap")
            .field("tap", &self.tap.name())
            .field("buffers", &self.bufs.len())
            .field("armed", &self.armed)
            .field("done", &self.done.len())
            .finish()
    }
}

/// The error of a write of `len` bytes that returned `res`, if it failed.
fn write_error(res: i32, len: usize) -> Option<io::Error> {
    if res < 0 {
        Some(cqe_err(res))
    } else if (res as usize) < len {
        Some(io::Error::new(
            io::ErrorKind::WriteZero,
            "short write to tap",
        ))
    } else {
        None
    }
}

/// An error from a negative completion result.
fn cqe_err(res: i32) -> io::Error {
    io::Error::from_raw_os_error(res.saturating_neg())
}

/// Buffer group id of a port's buffer ring (each port has a ring of its own).
const BGID: u16 = 0;
/// `user_data` of the multishot read.
const READ_TAG: u64 = 1 << 60;

impl UringTap {
    /// A port over `tap` with `depth` receive buffers (rounded up to a power of two,
    /// 1..=4096) for its multishot read.
    pub fn new(tap: Arc<Tap>, depth: usize) -> io::Result<UringTap> {
        let entries = depth.clamp(1, 4096).next_power_of_two();
        let sq = u32::try_from((MAX_WRITES + 4).next_power_of_two())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // Room for every write of a chunk plus every frame the buffers can hold.
        let cq = u32::try_from(2 * (MAX_WRITES + entries))
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // Deferred task work (6.1+): a frame arriving on the tap signals the eventfd
        // from the sender's context, like a readable tap under epoll, and its read runs
        // only when the worker asks for completions (`recv_batch`), never inside another
        // system call (see the module doc). The ring is created disabled so that the
        // thread that first uses the port, not this one, becomes its single issuer.
        // Older kernels: cooperative task work (5.19+; the read runs at the worker's next
        // system call, no IPI), else a plain ring.
        let deferred = if DEFER.load(Ordering::Relaxed) {
            IoUring::builder()
                .setup_cqsize(cq)
                .setup_single_issuer()
                .setup_defer_taskrun()
                .setup_taskrun_flag()
                .setup_r_disabled()
                .build(sq)
        } else {
            Err(io::Error::from_raw_os_error(libc::EINVAL))
        };
        let (ring, defer, enabled) = match deferred {
            Ok(ring) => (ring, true, false),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                match IoUring::builder()
                    .setup_cqsize(cq)
                    .setup_coop_taskrun()
                    .setup_taskrun_flag()
                    .build(sq)
                {
                    Ok(ring) => (ring, false, true),
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                        (IoUring::builder().setup_cqsize(cq).build(sq)?, false, true)
                    }
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(e),
        };
        // SAFETY: eventfd takes no pointers; the result is checked before use.
        let efd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if efd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `efd` is a fresh fd that nothing else owns.
        let event = unsafe { OwnedFd::from_raw_fd(efd) };
        ring.submitter().register_eventfd(event.as_raw_fd())?;
        let br_layout = Layout::from_size_align(
            (entries * std::mem::size_of::<types::BufRingEntry>()).max(4096),
            4096,
        )
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { std::alloc::alloc_zeroed(br_layout) };
        let Some(br) = NonNull::new(raw.cast::<types::BufRingEntry>()) else {
            return Err(io::ErrorKind::OutOfMemory.into());
        };
        let merge = UdpMerge::for_tap(&tap);
        let mut port = UringTap {
            ring: ManuallyDrop::new(ring),
            defer,
            enabled,
            tap,
            event,
            bufs: (0..entries)
                .map(|_| vec![0u8; RECV_BUF_LEN].into_boxed_slice())
                .collect(),
            br,
            br_layout,
            entries: u16::try_from(entries)
                .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?,
            tail: 0,
            br_registered: false,
            armed: false,
            read_since_trim: false,
            trimmed: false,
            evfd_on: true,
            done: VecDeque::with_capacity(entries),
            write_res: Vec::with_capacity(MAX_WRITES),
            owed: VecDeque::with_capacity(MAX_WRITES),
            merge,
        };
        // SAFETY: `br` is page-aligned, zeroed, `entries` entries long, and stays
        // allocated until `drop`, which unregisters it first (or the ring is closed).
        unsafe {
            port.ring.submitter().register_buf_ring_with_flags(
                port.br.as_ptr() as u64,
                port.entries,
                BGID,
                0,
            )?;
        }
        port.br_registered = true;
        for bid in 0..port.entries {
            port.provide(bid);
        }
        port.publish();
        // Setting up is all that can fail for lack of io_uring; the read is submitted by
        // the first `recv_batch` (see the note on threads in the module doc).
        Ok(port)
    }

    /// The multishot read is in flight (for tests).
    pub fn in_flight(&self) -> bool {
        self.armed
    }

    /// The port's task work is deferred (`IORING_SETUP_DEFER_TASKRUN`; else
    /// cooperative, or plain on kernels before 5.19).
    pub fn deferred(&self) -> bool {
        self.defer
    }

    /// Enable a deferred ring on first use: the calling thread becomes its only
    /// submitter (the worker, whose first `recv_batch` comes before anything else).
    fn enable(&mut self) -> io::Result<()> {
        if !self.enabled {
            self.ring.submitter().register_enable_rings()?;
            self.enabled = true;
        }
        Ok(())
    }

    /// Deferred reads are waiting to run (the ring's `TASKRUN` flag; also set by
    /// cooperative task work). Ordered after a preceding eventfd enable: a read queued
    /// after this load finds the eventfd on and signals it.
    fn taskrun_due(&mut self) -> bool {
        fence(Ordering::SeqCst);
        self.ring.submission().taskrun()
    }

    /// `io_uring_enter` that submits what is queued without asking for completions:
    /// deferred reads do not run in it (writes complete inline and are posted anyway).
    fn submit_only(&mut self) -> io::Result<()> {
        let n = u32::try_from(self.ring.submission().len()).unwrap_or(u32::MAX);
        loop {
            // SAFETY: no argument pointer; `n` entries are queued in the submission ring.
            match unsafe { self.ring.submitter().enter::<libc::sigset_t>(n, 0, 0, None) } {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }

    /// Put buffer `bid` in the buffer ring (seen by the kernel after [`Self::publish`]).
    fn provide(&mut self, bid: u16) {
        let Some(buf) = self.bufs.get_mut(usize::from(bid)) else {
            return;
        };
        let slot = usize::from(self.tail & (self.entries - 1));
        // SAFETY: `slot` < `entries`, so the entry is inside the ring's allocation; the
        // kernel reads entries only up to the published tail, which excludes this one.
        let entry = unsafe { &mut *self.br.as_ptr().add(slot) };
        entry.set_addr(buf.as_mut_ptr() as u64);
        entry.set_len(u32::try_from(buf.len()).unwrap_or(u32::MAX));
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Publish the entries added since the last publish (a release store of the tail).
    fn publish(&self) {
        // SAFETY: `br` is the ring's first entry; its `resv` field is the ring's tail,
        // a u16 the kernel reads atomically; the entry is initialized (zeroed at first).
        let tail = unsafe { types::BufRingEntry::tail(self.br.as_ptr()) };
        // SAFETY: the tail is a properly aligned u16 inside our allocation.
        let tail = unsafe { &*tail.cast::<AtomicU16>() };
        tail.store(self.tail, Ordering::Release);
    }

    /// Submit the multishot read if it is not in flight, and anything queued.
    fn arm(&mut self) -> io::Result<()> {
        if !self.armed {
            // Length 0: each read takes a whole provided buffer.
            let sqe = opcode::ReadMulti::new(types::Fd(self.tap.as_raw_fd()), 0, BGID)
                .build()
                .user_data(READ_TAG);
            // SAFETY: the read writes only into provided buffers, which stay alive
            // until the read's last completion is taken (drop waits for it).
            if unsafe { self.ring.submission().push(&sqe) }.is_err() {
                return Err(io::Error::other("io_uring submission queue full"));
            }
            self.armed = true;
            self.submit(0)?;
        }
        Ok(())
    }

    /// `io_uring_enter`: submit what is queued and wait for `want` completions,
    /// retrying `EINTR`.
    fn submit(&self, want: usize) -> io::Result<()> {
        loop {
            match self.ring.submit_and_wait(want) {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // The ring has completions waiting to be taken: the queue was still
                // submitted up to that point; taking them frees room.
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && want == 0 => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }

    /// Move completions from the ring: reads to `done`, writes to `write_res`.
    /// Returns how many writes completed.
    fn reap(&mut self) -> usize {
        let mut writes = 0;
        for cqe in self.ring.completion() {
            let ud = cqe.user_data();
            if ud & WRITE_TAG != 0 {
                let i = (ud & !WRITE_TAG) as usize;
                if let Some(r) = self.write_res.get_mut(i) {
                    *r = Some(cqe.result());
                    writes += 1;
                }
            } else if ud == READ_TAG {
                if !io_uring::cqueue::more(cqe.flags()) {
                    self.armed = false;
                }
                self.done.push_back((cqe.result(), cqe.flags()));
            }
            // Else: the drop's cancel request.
        }
        writes
    }

    /// Turn the eventfd's signal on (the port is idle: the poll must learn of the next
    /// completion) or off (the port is busy on the worker's ready list, or writing).
    /// Its counter is not emptied (a `read` per idle spell, measured: 0.6 system calls
    /// per frame of bulk TCP): the fd is for edge-triggered polling, where every signal
    /// is an event whatever the count.
    fn set_eventfd(&mut self, on: bool) {
        if on == self.evfd_on {
            return;
        }
        self.evfd_on = on;
        if on {
            self.ring.completion().enable_eventfd();
        } else {
            self.ring.completion().disable_eventfd();
        }
    }

    /// Signal the eventfd by hand (reads completed while its signal was off).
    fn kick(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from `one`, a live local; the fd is open.
        let _ = unsafe { libc::write(self.event.as_raw_fd(), one.as_ptr().cast(), one.len()) };
    }

    /// Hand completed reads to `batch` in order, counting them in `n`; returns the read
    /// error that stops the port, if one came.
    fn take_done(&mut self, batch: &mut FrameBatch, n: &mut usize) -> Option<io::Error> {
        let mut provided = false;
        let mut stop = None;
        while batch.room() > 0 {
            let Some((res, flags)) = self.done.pop_front() else {
                break;
            };
            if res <= 0 {
                // A completion without a frame may still hold a buffer: back to the ring.
                if let Some(bid) = io_uring::cqueue::buffer_select(flags) {
                    self.provide(bid);
                    provided = true;
                }
                match -res {
                    // The multishot read ended (or posted nothing) for a reason that
                    // re-arming cures: no buffer left, interrupted, or an empty read,
                    // which a tap never returns for a frame (seen under load at the end
                    // of a multishot run); `armed` is already false if it ended.
                    0 | libc::ENOBUFS | libc::EINTR | libc::EAGAIN | libc::ECANCELED => continue,
                    _ => stop = Some(cqe_err(res)),
                }
                break;
            }
            let Some(bid) = io_uring::cqueue::buffer_select(flags) else {
                continue;
            };
            let Some(slot) = self.bufs.get_mut(usize::from(bid)) else {
                continue;
            };
            let spare = batch.take_buffer(RECV_BUF_LEN);
            let full = std::mem::replace(slot, spare);
            if let Err(full) = batch.push_loan(full, res as usize) {
                // Cannot happen (room was checked); keep the frame for later.
                if let Some(slot) = self.bufs.get_mut(usize::from(bid)) {
                    *slot = full;
                }
                self.done.push_front((res, flags));
                break;
            }
            *n += 1;
            self.read_since_trim = true;
            self.trimmed = false;
            self.provide(bid);
            provided = true;
        }
        if provided {
            self.publish();
        }
        stop
    }
}

impl AsRawFd for UringTap {
    fn as_raw_fd(&self) -> RawFd {
        self.event.as_raw_fd()
    }
}

impl FrameIo for UringTap {
    /// Give back the receive buffers' pages of a port idle for a tick (`trim_idle`).
    fn trim(&mut self) {
        self.trim_idle();
    }

    /// Cancel the read in flight on the worker, the ring's submitter ([`FrameIo::detach`]).
    fn detach(&mut self) {
        if self.quiesce() {
            tracing::debug!(
                tap = self.tap.name(),
                "io_uring port detached off its worker"
            );
        }
    }

    /// One frame, copied (the worker uses [`FrameIo::recv_batch`]).
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut batch = FrameBatch::new(1, 0, 0);
        match self.recv_batch(&mut batch)? {
            0 => Ok(0),
            _ => {
                let frame = batch.get(0).unwrap_or_default();
                let n = frame.len().min(buf.len());
                buf.get_mut(..n)
                    .unwrap_or_default()
                    .copy_from_slice(frame.get(..n).unwrap_or_default());
                Ok(n)
            }
        }
    }

    fn send(&mut self, frame: &[u8]) -> io::Result<usize> {
        // Writes in send_batch are complete when it returns, so this cannot overtake one.
        self.tap.write(frame)
    }

    fn recv_batch(&mut self, batch: &mut FrameBatch) -> io::Result<usize> {
        if batch.room() == 0 {
            return Err(io::ErrorKind::InvalidInput.into());
        }
        self.enable()?;
        // Busy: completions need no wake-up until the port says it has none.
        self.set_eventfd(false);
        let mut n = 0;
        // Completions that carry no frame (the multishot read ended and was submitted
        // again) are taken without counting: look again, a few times, before saying so.
        for _ in 0..4 {
            if self.ring.submission().taskrun() {
                // Task work is due (reads ready to complete): one enter runs it.
                self.submit(0)?;
            }
            self.reap();
            let stop = self.take_done(batch, &mut n);
            let armed = self.arm();
            if let Some(e) = stop.or(armed.err()) {
                if n == 0 {
                    return Err(e);
                }
                batch.set_stop(e);
                return Ok(n);
            }
            if self.done.is_empty() && self.ring.completion().is_empty() {
                // Going idle: wake-ups on from here. Completions are posted by this
                // thread (task work), so one posted before this is seen below, and one
                // posted after it signals the eventfd.
                self.set_eventfd(true);
                self.reap();
                if self.done.is_empty() && !(self.defer && self.taskrun_due()) {
                    if n == 0 {
                        return Err(io::ErrorKind::WouldBlock.into());
                    }
                    batch.set_stop(io::ErrorKind::WouldBlock.into());
                    return Ok(n);
                }
                self.set_eventfd(false);
            }
            if n > 0 {
                return Ok(n);
            }
        }
        // Still nothing but frameless completions: the worker asks again.
        Err(io::ErrorKind::Interrupted.into())
    }

    fn send_batch(&mut self, frames: Frames<'_>) -> Result<(), SendBatchError> {
        // Write completions wake nobody; reads that complete meanwhile on an idle port
        // are signalled by hand afterwards.
        let was_idle = self.evfd_on;
        if was_idle {
            self.evfd_on = false;
            self.ring.completion().disable_eventfd();
        }
        let r = self.write_all(frames);
        if was_idle {
            self.evfd_on = true;
            self.ring.completion().enable_eventfd();
            if !self.done.is_empty()
                || !self.ring.completion().is_empty()
                || (self.defer && self.taskrun_due())
            {
                self.kick();
            }
        }
        r
    }
}

impl UringTap {
    /// [`FrameIo::send_batch`] without the eventfd handling.
    fn write_all(&mut self, frames: Frames<'_>) -> Result<(), SendBatchError> {
        let fd = types::Fd(self.tap.as_raw_fd());
        if let Err(error) = self.enable() {
            return Err(SendBatchError { sent: 0, error });
        }
        // Frames written past an earlier failure: the caller sends them again (the
        // contract says they were not tried); answer with what their write did.
        let mut base = 0;
        for frame in frames.iter() {
            let Some(&(ptr, len, res)) = self.owed.front() else {
                break;
            };
            if (ptr, len) != (frame.as_ptr() as usize, frame.len()) {
                self.owed.clear();
                break;
            }
            self.owed.pop_front();
            if let Some(error) = write_error(res, len) {
                return Err(SendBatchError { sent: base, error });
            }
            base += 1;
        }
        self.owed.clear();
        if let Some(r) = self.merge.send(&self.tap, frames.after(base)) {
            return r.map_err(|e| SendBatchError {
                sent: base + e.sent,
                error: e.error,
            });
        }
        while base < frames.len() {
            let chunk = frames.after(base);
            let count = chunk.len().min(MAX_WRITES);
            if count == 1 {
                // One frame: a plain `write` is the same system call count and cheaper
                // than a submission (bulk TCP's ACKs mostly come one per batch).
                let frame = chunk.get(0).unwrap_or_default();
                let error = match self.tap.write(frame) {
                    Ok(n) => write_error(i32::try_from(n).unwrap_or(i32::MAX), frame.len()),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => Some(e),
                };
                if let Some(error) = error {
                    return Err(SendBatchError { sent: base, error });
                }
                base += 1;
                continue;
            }
            self.write_res.clear();
            self.write_res.resize(count, None);
            let mut queued = 0;
            {
                let mut sq = self.ring.submission();
                for (i, frame) in chunk.iter().take(count).enumerate() {
                    let len = u32::try_from(frame.len()).unwrap_or(u32::MAX);
                    let sqe = opcode::Write::new(fd, frame.as_ptr(), len)
                        .offset(u64::MAX)
                        .build()
                        .user_data(WRITE_TAG | i as u64);
                    // SAFETY: `frame` borrows the caller's batch, which outlives this
                    // call, and this call waits for every write's completion below.
                    if unsafe { sq.push(&sqe) }.is_err() {
                        break;
                    }
                    queued += 1;
                }
            }
            if queued < count {
                // A full queue cannot happen (the ring has room for a full chunk after
                // the reads); refuse rather than write out of order.
                self.write_res.truncate(queued);
            }
            let mut complete = 0;
            let mut wait_err = None;
            // Writes to a tap complete inline: submit without waiting first, so that
            // deferred reads are not run here; wait only for any that did not.
            let mut first = true;
            while complete < queued {
                let r = if first {
                    self.submit_only()
                } else {
                    self.submit(1)
                };
                first = false;
                if let Err(e) = r {
                    wait_err = Some(e);
                    break;
                }
                complete += self.reap();
            }
            if let Some(error) = wait_err {
                // Writes may still be in flight on memory the caller will reuse: wait
                // them out before reporting (nothing else is safe).
                while complete < queued {
                    if self.ring.submitter().submit_and_wait(1).is_err() {
                        std::thread::yield_now();
                    }
                    complete += self.reap();
                }
                return Err(SendBatchError { sent: base, error });
            }
            let failed = self.write_res.iter().enumerate().find_map(|(i, r)| {
                let len = chunk.get(i).map_or(0, <[u8]>::len);
                write_error(r.unwrap_or(-libc::EIO), len).map(|e| (i, e))
            });
            if let Some((i, error)) = failed {
                for j in i + 1..queued {
                    if let Some(frame) = chunk.get(j) {
                        let res = self
                            .write_res
                            .get(j)
                            .copied()
                            .flatten()
                            .unwrap_or(-libc::EIO);
                        self.owed
                            .push_back((frame.as_ptr() as usize, frame.len(), res));
                    }
                }
                return Err(SendBatchError {
                    sent: base + i,
                    error,
                });
            }
            if queued < count {
                return Err(SendBatchError {
                    sent: base + queued,
                    error: io::Error::other("io_uring submission queue full"),
                });
            }
            base += count;
        }
        Ok(())
    }
}

impl UringTap {
    /// Cancel the multishot read and wait for its last completion, then unregister the
    /// buffer ring. True if the ring refused (`EEXIST`: a deferred ring answers only
    /// the thread that submitted to it). Afterwards no request of this ring holds the
    /// tap's file, so the device goes as soon as its descriptor is closed.
    fn quiesce(&mut self) -> bool {
        let mut refused = self.cancel_read();
        if !self.armed && self.br_registered {
            match self.ring.submitter().unregister_buf_ring(BGID) {
                Ok(()) => self.br_registered = false,
                Err(e) => refused |= e.raw_os_error() == Some(libc::EEXIST),
            }
        }
        refused
    }

    /// Cancel the multishot read and wait for its last completion (what it read meanwhile
    /// stays in `done`). True if the ring refused (`EEXIST`: not its submitter).
    fn cancel_read(&mut self) -> bool {
        let mut refused = false;
        if self.armed {
            let cancel = opcode::AsyncCancel::new(READ_TAG)
                .build()
                .user_data(CANCEL_TAG);
            // SAFETY: the cancel request points at no memory.
            let pushed = unsafe { self.ring.submission().push(&cancel) }.is_ok();
            let mut waits = 0;
            while pushed && self.armed && waits < 1000 {
                waits += 1;
                match self.ring.submit_and_wait(1) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        refused = e.raw_os_error() == Some(libc::EEXIST);
                        break;
                    }
                }
                self.reap();
            }
        }
        refused
    }

    /// A completed read holds a frame not yet handed out (its buffer is in use).
    fn frame_waiting(&self) -> bool {
        self.done.iter().any(|&(res, _)| res > 0)
    }

    /// [`FrameIo::trim`]: once a port has read nothing for a whole tick, stop its read,
    /// give the pages of its receive buffers back to the kernel, and read again. The
    /// buffers stay allocated and in the ring; their pages come back, zeroed, as frames
    /// fill them. Nothing is lost: frames that arrive meanwhile wait in the tap, and a
    /// frame the read took before it stopped keeps the buffers as they are.
    fn trim_idle(&mut self) {
        if std::mem::take(&mut self.read_since_trim) || self.trimmed || !self.enabled {
            return;
        }
        if self.frame_waiting() || self.cancel_read() {
            return;
        }
        if !self.armed && !self.frame_waiting() {
            // SAFETY: sysconf reads a constant of the system; no memory is involved.
            let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) });
            for buf in &mut self.bufs {
                release_pages(buf, page.unwrap_or(4096));
            }
            self.trimmed = true;
        }
        if let Err(e) = self.arm() {
            tracing::warn!(tap = self.tap.name(), error = %e, "io_uring read not re-armed after trim");
        }
        // The cancel's completion (and any frame) is taken by the next `recv_batch`.
        if !self.done.is_empty() || !self.ring.completion().is_empty() {
            self.kick();
        }
    }
}

/// Give the whole pages (of `page` bytes) inside `buf` back to the kernel
/// (`MADV_DONTNEED`): they read as zeros afterwards and cost memory again only once
/// written. `buf` must be ours alone (no read in flight may write it). Errors are
/// ignored: the pages just stay.
fn release_pages(buf: &mut [u8], page: usize) {
    let start = buf.as_mut_ptr() as usize;
    let first = start.div_ceil(page) * page;
    let end = (start + buf.len()) / page * page;
    if end > first {
        // SAFETY: [first, end) lies inside `buf`, which we hold exclusively (`&mut`, and
        // the caller guarantees no read in flight writes it); it is private anonymous
        // memory from the allocator, where MADV_DONTNEED only replaces the contents with
        // zeros, which every later use overwrites before reading.
        unsafe {
            libc::madvise(first as *mut libc::c_void, end - first, libc::MADV_DONTNEED);
        }
    }
}

impl Drop for UringTap {
    fn drop(&mut self) {
        // Cancel the read and wait for its last completion (done already if the port's
        // worker detached it, `FrameIo::detach`). A deferred ring refuses every thread
        // but its submitter (`EEXIST`), e.g. the control thread that removed the port
        // from its worker: then it is closed first, below.
        let refused = self.quiesce();
        let released = !self.armed && !self.br_registered;
        // SAFETY: the ring is not used after this.
        unsafe { ManuallyDrop::drop(&mut self.ring) };
        // A deferred ring that refused us is safe to free once closed: its read runs
        // only as task work in its submitter's `io_uring_enter` on this ring, which no
        // longer comes (the port left its thread), and closing the last reference marks
        // the ring dying before `close` returns, after which its task work cancels the
        // read instead of running it; nothing else reads the tap into our buffers.
        if released || (refused && self.defer) {
            // SAFETY: allocated in `new` with this layout; the kernel no longer uses it.
            unsafe { std::alloc::dealloc(self.br.as_ptr().cast(), self.br_layout) };
            return;
        }
        if self.armed {
            tracing::error!(
                tap = self.tap.name(),
                "io_uring read not cancelled; leaking its buffers"
            );
            for buf in &mut self.bufs {
                std::mem::forget(std::mem::take(buf));
            }
        }
        // Leak the buffer ring's memory rather than free what the kernel may hold.
    }
}
