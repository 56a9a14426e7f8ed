//! Batched tap I/O with io_uring, and the choice between it and one `read`/`write` per
//! frame.
//!
//! Contract:
//! * A [`UringTap`] is a switch port ([`FrameIo`]) over a [`Tap`] with one io_uring of
//!   its own. It keeps `depth` reads in flight, each into a [`RECV_BUF_LEN`] buffer the
//!   port owns; completions are signalled on an eventfd registered with the ring, and
//!   the port's [`AsRawFd`] is that eventfd, so the worker's edge-triggered poll works
//!   as for any port.
//! * [`FrameIo::recv_batch`] takes completed reads in completion order (which is the
//!   tap's queue order) without a system call per frame: each filled buffer is *lent*
//!   to the batch ([`FrameBatch::push_loan`]) and a spare one from the batch takes its
//!   place in a new read, so no frame is copied. The new reads are submitted with one
//!   `io_uring_enter` per call. The eventfd is drained only when the ring looks empty,
//!   before looking again, so a completion is never missed. A read that fails with
//!   anything but `EINTR`/`EAGAIN`/`ECANCELED` stops the port (that error, after the
//!   frames read before it).
//! * [`FrameIo::send_batch`] submits every write of the batch in one `io_uring_enter`,
//!   linked (`IOSQE_IO_LINK`) so they run in order and the first failure cancels the
//!   rest, and waits for all their completions before returning (the frames' memory is
//!   the caller's). The first failed frame is reported with its error; the ones after
//!   it were not written. Read completions seen meanwhile are kept for the next
//!   `recv_batch`.
//! * Dropping the port cancels every read in flight and waits for each one's
//!   completion before the buffers are freed (the kernel never writes freed memory);
//!   if waiting fails the buffers are leaked instead.
//! * [`open_port`] picks the path for a tap: [`TapIo::Uring`] fails if io_uring cannot
//!   be set up (ENOSYS, EPERM from `kernel.io_uring_disabled` or seccomp, ENOMEM);
//!   [`TapIo::Auto`] then falls back to [`RwTap`] (one `read`/`write` per frame), logs
//!   the first fallback and counts every port per path ([`path_counts`]).
//!
//! * Threads: io_uring completes a read that waited for data in task work run by the
//!   thread that *submitted* it, interrupting that thread's blocking system calls
//!   (`EINTR`). So the port submits nothing until its first `recv_batch` (the worker
//!   calls it when the port is added): every read is submitted, and completed, on the
//!   port's worker thread, whose poll retries `EINTR`.
//!
//! Reads use plain `IORING_OP_READ` on the (non-blocking) tap fd: io_uring waits for
//! readiness with its own poll, not a thread. Buffers are not registered
//! (`READ_FIXED`): they move between the port and the worker's batch, which fixed
//! buffers cannot do without a copy.

use crate::tap::Tap;
use io_uring::{opcode, squeue, types, IoUring};
use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use tapnet_switch::runtime::{FrameBatch, FrameIo, Frames, SendBatchError, RECV_BUF_LEN};

/// Reads kept in flight per port unless told otherwise.
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
    /// io_uring where the kernel allows it, else one read/write per frame.
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
/// `depth` reads in flight on io_uring.
pub fn open_port(
    tap: Arc<Tap>,
    mode: TapIo,
    depth: usize,
) -> io::Result<(Box<dyn FrameIo>, TapIoPath)> {
    if mode == TapIo::Rw {
        RW_PORTS.fetch_add(1, Ordering::Relaxed);
        return Ok((Box::new(RwTap(tap)), TapIoPath::Rw));
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
            Ok((Box::new(RwTap(tap)), TapIoPath::Rw))
        }
    }
}

/// A tap as a switch port, one `read`/`write` system call per frame.
#[derive(Debug, Clone)]
pub struct RwTap(pub Arc<Tap>);

impl AsRawFd for RwTap {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl FrameIo for RwTap {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
    fn send(&mut self, frame: &[u8]) -> io::Result<usize> {
        self.0.write(frame)
    }
}

/// A tap as a switch port on io_uring (see the module doc).
pub struct UringTap {
    ring: IoUring,
    tap: Arc<Tap>,
    /// Signalled by the ring on every completion; what the worker polls.
    event: OwnedFd,
    /// Read slot buffers; a slot's buffer is the kernel's while its read is in flight.
    bufs: Vec<Box<[u8]>>,
    /// Slot has a read in flight.
    in_flight: Vec<bool>,
    /// Slots whose read must be (re)submitted.
    idle: Vec<usize>,
    /// Read completions taken from the ring, not yet handed out: `(slot, result)`.
    done: VecDeque<(usize, i32)>,
    /// Results of the writes of the chunk being sent.
    write_res: Vec<Option<i32>>,
}

impl std::fmt::Debug for UringTap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringTap")
            .field("tap", &self.tap.name())
            .field("depth", &self.bufs.len())
            .field("in_flight", &self.in_flight.iter().filter(|&&b| b).count())
            .field("done", &self.done.len())
            .finish()
    }
}

/// An error from a negative completion result.
fn cqe_err(res: i32) -> io::Error {
    io::Error::from_raw_os_error(res.saturating_neg())
}

impl UringTap {
    /// A port over `tap` that will keep `depth` reads in flight (at least 1).
    pub fn new(tap: Arc<Tap>, depth: usize) -> io::Result<UringTap> {
        let depth = depth.clamp(1, 4096);
        let entries = u32::try_from((depth + MAX_WRITES + 2).next_power_of_two())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let ring = IoUring::builder()
            .setup_cqsize(entries.saturating_mul(2))
            .build(entries)?;
        // SAFETY: eventfd takes no pointers; the result is checked before use.
        let efd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if efd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `efd` is a fresh fd that nothing else owns.
        let event = unsafe { OwnedFd::from_raw_fd(efd) };
        ring.submitter().register_eventfd(event.as_raw_fd())?;
        let port = UringTap {
            ring,
            tap,
            event,
            bufs: (0..depth)
                .map(|_| vec![0u8; RECV_BUF_LEN].into_boxed_slice())
                .collect(),
            in_flight: vec![false; depth],
            idle: (0..depth).collect(),
            done: VecDeque::with_capacity(depth),
            write_res: Vec::with_capacity(MAX_WRITES),
        };
        // Setting up the ring is all that can fail for lack of io_uring; reads are
        // submitted by the first `recv_batch` (see the note on threads in the module doc).
        Ok(port)
    }

    /// Reads in flight (for tests).
    pub fn in_flight(&self) -> usize {
        self.in_flight.iter().filter(|&&b| b).count()
    }

    /// Queue a read for every idle slot and submit (one system call if any).
    fn arm(&mut self) -> io::Result<()> {
        if self.idle.is_empty() {
            return Ok(());
        }
        let fd = types::Fd(self.tap.as_raw_fd());
        {
            let mut sq = self.ring.submission();
            while let Some(&slot) = self.idle.last() {
                let Some(buf) = self.bufs.get_mut(slot) else {
                    self.idle.pop();
                    continue;
                };
                let len = u32::try_from(buf.len()).unwrap_or(u32::MAX);
                let sqe = opcode::Read::new(fd, buf.as_mut_ptr(), len)
                    .offset(u64::MAX)
                    .build()
                    .user_data(slot as u64);
                // SAFETY: the buffer stays alive and untouched by us until this read's
                // completion is taken (`in_flight[slot]`); drop waits for it.
                if unsafe { sq.push(&sqe) }.is_err() {
                    break;
                }
                self.idle.pop();
                if let Some(f) = self.in_flight.get_mut(slot) {
                    *f = true;
                }
            }
        }
        self.submit(0)
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
            } else if ud & CANCEL_TAG != 0 {
                // The drop's cancel request itself.
            } else {
                let slot = ud as usize;
                if let Some(f) = self.in_flight.get_mut(slot) {
                    *f = false;
                    self.done.push_back((slot, cqe.result()));
                }
            }
        }
        writes
    }

    /// Empty the eventfd's counter (it only wakes the poll).
    fn drain_event(&self) {
        let mut v = [0u8; 8];
        // SAFETY: reads at most 8 bytes into `v`, a live local; the fd is open.
        let _ = unsafe { libc::read(self.event.as_raw_fd(), v.as_mut_ptr().cast(), v.len()) };
    }

    /// Hand completed reads to `batch` in order; returns frames added, or the first
    /// read error when no frame came before it.
    fn take_done(&mut self, batch: &mut FrameBatch, n: &mut usize) -> Option<io::Error> {
        while batch.room() > 0 {
            let (slot, res) = self.done.pop_front()?;
            self.idle.push(slot);
            if res < 0 {
                match -res {
                    libc::EINTR | libc::EAGAIN | libc::ECANCELED => continue,
                    _ => return Some(cqe_err(res)),
                }
            }
            if res == 0 {
                return Some(io::ErrorKind::UnexpectedEof.into());
            }
            let Some(slot_buf) = self.bufs.get_mut(slot) else {
                continue;
            };
            let spare = batch.take_buffer(RECV_BUF_LEN);
            let full = std::mem::replace(slot_buf, spare);
            match batch.push_loan(full, res as usize) {
                Ok(()) => *n += 1,
                Err(full) => {
                    // Cannot happen (room was checked); keep the frame for later.
                    *slot_buf = full;
                    self.idle.pop();
                    self.done.push_front((slot, res));
                    return None;
                }
            }
        }
        None
    }
}

impl AsRawFd for UringTap {
    fn as_raw_fd(&self) -> RawFd {
        self.event.as_raw_fd()
    }
}

impl FrameIo for UringTap {
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
        let mut n = 0;
        self.reap();
        let mut stop = self.take_done(batch, &mut n);
        if n == 0 && stop.is_none() {
            // Looks empty: reset the eventfd, then look again, so a completion posted
            // after the look is either taken now or wakes the poll again.
            self.drain_event();
            self.reap();
            stop = self.take_done(batch, &mut n);
        }
        let armed = self.arm();
        match (n, stop, armed) {
            (0, Some(e), _) => Err(e),
            (0, None, Err(e)) => Err(e),
            (0, None, Ok(())) => Err(io::ErrorKind::WouldBlock.into()),
            (n, Some(e), _) | (n, None, Err(e)) => {
                batch.set_stop(e);
                Ok(n)
            }
            (n, None, Ok(())) => {
                // More completions may be waiting; the worker calls again.
                if self.done.is_empty() && self.ring.completion().is_empty() {
                    batch.set_stop(io::ErrorKind::WouldBlock.into());
                }
                Ok(n)
            }
        }
    }

    fn send_batch(&mut self, frames: Frames<'_>) -> Result<(), SendBatchError> {
        let fd = types::Fd(self.tap.as_raw_fd());
        let mut base = 0;
        while base < frames.len() {
            let chunk = frames.after(base);
            let count = chunk.len().min(MAX_WRITES);
            self.write_res.clear();
            self.write_res.resize(count, None);
            let mut queued = 0;
            {
                let mut sq = self.ring.submission();
                for (i, frame) in chunk.iter().take(count).enumerate() {
                    let len = u32::try_from(frame.len()).unwrap_or(u32::MAX);
                    let mut sqe = opcode::Write::new(fd, frame.as_ptr(), len)
                        .offset(u64::MAX)
                        .build()
                        .user_data(WRITE_TAG | i as u64);
                    if i + 1 < count {
                        sqe = sqe.flags(squeue::Flags::IO_LINK);
                    }
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
            while complete < queued {
                if let Err(e) = self.submit(1) {
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
            for (i, r) in self.write_res.iter().enumerate() {
                let res = r.unwrap_or(-libc::EIO);
                let frame_len = chunk.get(i).map_or(0, <[u8]>::len);
                if res < 0 || (res as usize) < frame_len {
                    let error = if res < 0 {
                        cqe_err(res)
                    } else {
                        io::Error::new(io::ErrorKind::WriteZero, "short write to tap")
                    };
                    return Err(SendBatchError {
                        sent: base + i,
                        error,
                    });
                }
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

impl Drop for UringTap {
    fn drop(&mut self) {
        let in_flight = self.in_flight();
        if in_flight == 0 {
            return;
        }
        let cancel = opcode::AsyncCancel2::new(
            types::CancelBuilder::fd(types::Fd(self.tap.as_raw_fd())).all(),
        )
        .build()
        .user_data(CANCEL_TAG);
        // SAFETY: the cancel request points at no memory.
        let pushed = unsafe { self.ring.submission().push(&cancel) }.is_ok();
        let mut waits = 0;
        while pushed && self.in_flight() > 0 && waits < 1000 {
            waits += 1;
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
            self.reap();
        }
        if self.in_flight() > 0 {
            tracing::error!(
                tap = self.tap.name(),
                reads = self.in_flight(),
                "io_uring reads not cancelled; leaking their buffers"
            );
            for (buf, live) in self.bufs.iter_mut().zip(&self.in_flight) {
                if *live {
                    std::mem::forget(std::mem::take(buf));
                }
            }
        }
    }
}
