//! Writing a batch of frames to a tap with consecutive UDP datagrams of one flow merged
//! into USO super-frames ([`tapnet_wire::uso`]): one write, and one pass through the
//! receiver's IP stack, per run instead of per datagram.
//!
//! Contract:
//!
//! * A [`UdpMerge`] belongs to one tap port. It merges only the families the tap took
//!   USO for (`TUN_F_USO4` / `TUN_F_USO6`, Linux 6.2+: an older kernel refuses a
//!   `GSO_UDP_L4` write), and nothing while merging is off process-wide
//!   ([`set_enabled`], `tapnetd --tap-udp-merge off`; read when the port is opened).
//! * [`UdpMerge::send`] plans the batch and writes it only if merging at least halves
//!   the writes; otherwise it returns `None` and the port writes the batch its usual
//!   way (a batch of TCP super-frames or ACKs costs one plan, a pass over headers).
//! * It writes the runs in order with one `write` each (a super-frame replaces a dozen
//!   writes, so the port's io_uring batching is not needed here) and keeps
//!   [`tapnet_switch::runtime::FrameIo::send_batch`]'s contract: on a failed write it
//!   returns how many frames were written before the failed one. A super-frame that
//!   fails is not lost: its datagrams are written one by one, so an error is reported
//!   against the one frame whose own write failed. A super-frame refused with `EINVAL`
//!   turns merging off for the port (logged once per process), so a kernel that
//!   advertises USO but refuses it costs one failed write.
//! * Every super-frame written and every datagram in one are counted process-wide
//!   ([`counts`]: `/metrics`), so an operator sees the merging work.

use crate::tap::Tap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use tapnet_switch::runtime::{Frames, SendBatchError};
use tapnet_wire::uso::{self, Families, Run};

static ENABLED: AtomicBool = AtomicBool::new(true);
static SUPERFRAMES: AtomicU64 = AtomicU64::new(0);
static DATAGRAMS: AtomicU64 = AtomicU64::new(0);
static REFUSED_LOGGED: AtomicBool = AtomicBool::new(false);

/// Whether ports opened from now on merge UDP datagrams (the default) or not.
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Whether ports opened now merge UDP datagrams.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Merging done in this process since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MergeCounts {
    /// Super-frames written.
    pub superframes: u64,
    /// Datagrams written inside them.
    pub datagrams: u64,
}

/// Super-frames and the datagrams in them, written by every port of this process.
pub fn counts() -> MergeCounts {
    MergeCounts {
        superframes: SUPERFRAMES.load(Ordering::Relaxed),
        datagrams: DATAGRAMS.load(Ordering::Relaxed),
    }
}

/// A tap port's merging state (see the module doc).
#[derive(Debug, Default)]
pub struct UdpMerge {
    families: Families,
    runs: Vec<Run>,
    buf: Vec<u8>,
}

/// Write all of `frame` to `tap`, retrying `EINTR`; a short write is an error.
fn write_frame(tap: &Tap, frame: &[u8]) -> io::Result<()> {
    loop {
        match tap.write(frame) {
            Ok(n) if n == frame.len() => return Ok(()),
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "short write to tap",
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

impl UdpMerge {
    /// The state for a port over `tap`: the families its offloads allow, none if
    /// merging is off.
    pub fn for_tap(tap: &Tap) -> UdpMerge {
        let on = enabled();
        let off = tap.offloads();
        UdpMerge {
            families: Families {
                v4: on && off & libc::TUN_F_USO4 != 0,
                v6: on && off & libc::TUN_F_USO6 != 0,
            },
            runs: Vec::new(),
            buf: Vec::new(),
        }
    }

    /// Write `frames` to `tap` with runs merged, if that at least halves the writes
    /// (see the module doc); `None`: nothing was written, the caller writes them.
    pub fn send(&mut self, tap: &Tap, frames: Frames<'_>) -> Option<Result<(), SendBatchError>> {
        if !self.families.any() || frames.len() < 2 {
            return None;
        }
        uso::plan(frames.iter(), self.families, &mut self.runs);
        if self.runs.len() * 2 > frames.len() {
            return None;
        }
        let runs = std::mem::take(&mut self.runs);
        let r = self.write_runs(tap, frames, &runs);
        self.runs = runs;
        Some(r)
    }

    fn write_runs(
        &mut self,
        tap: &Tap,
        frames: Frames<'_>,
        runs: &[Run],
    ) -> Result<(), SendBatchError> {
        for run in runs {
            let these = frames.after(run.start);
            if run.len > 1 {
                self.buf.clear();
                let merged = uso::build(these.iter().take(run.len), &mut self.buf);
                let Some(range) = merged else {
                    // Not what plan made (cannot happen): write them one by one.
                    self.write_each(tap, these, run)?;
                    continue;
                };
                match write_frame(tap, self.buf.get(range).unwrap_or_default()) {
                    Ok(()) => {
                        SUPERFRAMES.fetch_add(1, Ordering::Relaxed);
                        DATAGRAMS.fetch_add(run.len as u64, Ordering::Relaxed);
                        continue;
                    }
                    Err(e) => {
                        if e.raw_os_error() == Some(libc::EINVAL) {
                            self.families = Families::NONE;
                            if !REFUSED_LOGGED.swap(true, Ordering::Relaxed) {
                                tracing::warn!(tap = tap.name(), error = %e,
                                    "the tap refused a UDP super-frame; this port writes datagrams one by one");
                            }
                        }
                    }
                }
            }
            self.write_each(tap, these, run)?;
        }
        Ok(())
    }

    /// Write the frames of `run` one by one (`these` starts at its first).
    fn write_each(&self, tap: &Tap, these: Frames<'_>, run: &Run) -> Result<(), SendBatchError> {
        write_each(tap, these.iter().take(run.len), run.start)
    }
}

/// Write `frames` to `tap` one by one, in order; at the first failure, the error with
/// the failed frame's index (counted from `first`).
pub fn write_each<'a>(
    tap: &Tap,
    frames: impl IntoIterator<Item = &'a [u8]>,
    first: usize,
) -> Result<(), SendBatchError> {
    for (i, frame) in frames.into_iter().enumerate() {
        if let Err(error) = write_frame(tap, frame) {
            return Err(SendBatchError {
                sent: first + i,
                error,
            });
        }
    }
    Ok(())
}
