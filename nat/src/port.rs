//! The in-process link between a network's switch and its gateway: two bounded frame
//! queues in shared memory instead of a socket pair.
//!
//! A socket pair costs, per frame and direction, a `send` (copy into a freshly allocated
//! socket buffer, a wake-up of the peer) and a `recv` (copy out, free); for a 64 KiB GSO
//! super-frame that is two 64 KiB kernel copies and a page allocation. Here a frame is one
//! user-space copy: the switch's [`SwitchPort::send`] copies the frame into a reused buffer
//! the gateway then owns (and may hand to its TCP stack without copying again); a frame
//! from the gateway is a buffer the gateway built in place, which [`SwitchPort::recv`]
//! copies into the switch's receive buffer and hands back for reuse. The switch reads in
//! batches: there a frame of at least [`LEND_MIN`] bytes is not copied at all but lent to
//! the switch's batch (`FrameBatch::push_loan`), which writes it to the tap from the
//! gateway's buffer; a spare buffer of the batch goes back to the gateway in its place.
//!
//! Contract:
//!
//! * [`link`] makes the two ends: a [`SwitchPort`] (a [`FrameIo`] for the switch,
//!   registered like any port: its descriptor is an `eventfd` that becomes readable each
//!   time the queue toward the switch goes from empty to non-empty) and a [`GatewayLink`]
//!   for [`crate::Gateway::spawn`].
//! * Datagram semantics, as on the socket pair: each frame is one virtio-net header plus
//!   one Ethernet frame, delivered whole and in order; a frame longer than the receiver's
//!   buffer is cut to it (counted nowhere, as `recv` on a datagram socket).
//! * Each direction holds at most [`QUEUE_BYTES`] bytes of frames (the socket pair's
//!   buffer size). Past it the switch's `send` says `WouldBlock` (the switch counts the
//!   drop, as for a full socket); the gateway's [`GatewayLink::send`] gives the frame back
//!   and the link signals the gateway's space descriptor once the switch has taken a
//!   frame from the full queue.
//! * Wake-ups only on the empty → non-empty edge (decided under the queue's lock, so none
//!   is lost): a consumer that is already draining the queue is not woken per frame.
//!   Toward the gateway, only while the gateway is parked: it calls
//!   [`GatewayLink::park`] before it sleeps (which fails if frames are queued) and
//!   [`GatewayLink::unpark`] when it wakes, and reads the queue on every loop turn; a frame
//!   queued while it runs costs no `eventfd` write.
//! * When one end is dropped the other end's sends fail with `ConnectionRefused` (as on a
//!   socket pair whose peer is closed); its receives drain what was queued, then say
//!   `WouldBlock`.
//! * Buffers are reused both ways; at most [`SPARE_MAX`] spare buffers are kept per
//!   direction.

use nix::sys::eventfd::{EfdFlags, EventFd};
use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tapnet_switch::runtime::{FrameBatch, FrameIo};

/// Most bytes of frames queued per direction (the socket pair's buffer size).
pub const QUEUE_BYTES: usize = 8 << 20;

/// Most spare buffers kept per direction (at most about 1 MiB of 64 KiB frames each way
/// stays allocated after a burst; the rest is freed).
pub const SPARE_MAX: usize = 16;

#[derive(Default)]
struct Queue {
    frames: VecDeque<Vec<u8>>,
    bytes: usize,
    /// The producer found the queue full and waits for the space signal.
    space_wanted: bool,
}

impl Queue {
    fn has_room(&self, len: usize) -> bool {
        self.frames.is_empty() || self.bytes + len <= QUEUE_BYTES
    }
}

struct Shared {
    to_gateway: Mutex<Queue>,
    to_switch: Mutex<Queue>,
    /// Buffers the switch fills (frames toward the gateway), given back by the gateway.
    gateway_spare: Mutex<Vec<Vec<u8>>>,
    /// Buffers of frames the switch took, for the gateway to reuse.
    switch_spent: Mutex<Vec<Vec<u8>>>,
    /// Readable when the queue toward the gateway went non-empty.
    gateway_ready: EventFd,
    /// Readable when the queue toward the switch went non-empty.
    switch_ready: EventFd,
    /// Readable when the full queue toward the switch has room again.
    gateway_space: EventFd,
    switch_gone: AtomicBool,
    gateway_gone: AtomicBool,
    /// The gateway is (about to be) asleep: the next frame must signal `gateway_ready`.
    gateway_parked: AtomicBool,
}

/// A lock that a panicking holder cannot poison for the other side: the queues hold
/// plain data, consistent between statements.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn signal(fd: &EventFd) {
    // `EAGAIN` only when the counter is at its maximum: it is readable then anyway.
    let _ = fd.write(1);
}

fn eventfd() -> io::Result<EventFd> {
    EventFd::from_flags(EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC).map_err(io::Error::from)
}

/// Make the two ends of a switch↔gateway link.
pub fn link() -> io::Result<(SwitchPort, GatewayLink)> {
    let shared = Arc::new(Shared {
        to_gateway: Mutex::default(),
        to_switch: Mutex::default(),
        gateway_spare: Mutex::default(),
        switch_spent: Mutex::default(),
        gateway_ready: eventfd()?,
        switch_ready: eventfd()?,
        gateway_space: eventfd()?,
        switch_gone: AtomicBool::new(false),
        gateway_gone: AtomicBool::new(false),
        gateway_parked: AtomicBool::new(true),
    });
    Ok((
        SwitchPort {
            shared: Arc::clone(&shared),
            // For A/B measurements (benches/egress.sh): TAPNET_GATEWAY_LEND=0 copies
            // every frame, as before lending existed.
            lend: std::env::var_os("TAPNET_GATEWAY_LEND").is_none_or(|v| v != "0"),
        },
        GatewayLink { shared },
    ))
}

/// The switch's end of a [`link`]: a port.
pub struct SwitchPort {
    shared: Arc<Shared>,
    /// Lend long frames to the batch (else copy every frame).
    lend: bool,
}

impl AsRawFd for SwitchPort {
    fn as_raw_fd(&self) -> RawFd {
        self.shared.switch_ready.as_raw_fd()
    }
}

/// Frames from the gateway at least this long are lent to the switch's batch instead of
/// copied (when their buffer has little room past the frame: see [`lendable`]).
pub const LEND_MIN: usize = 16 * 1024;

/// Whether `frame` is worth lending: long, and its buffer's spare capacity small enough
/// that filling it (a boxed slice has no spare capacity) costs little next to a copy.
pub(crate) fn lendable(frame: &Vec<u8>) -> bool {
    frame.len() >= LEND_MIN && frame.capacity() - frame.len() <= frame.len() / 8
}

/// Append `frame` to `batch` (which has room for one more): lent if [`lendable`], else
/// copied. Returns a buffer for the producer to reuse: the batch's spare one given in
/// exchange for a lent frame, or the copied frame's own.
pub(crate) fn lend_or_copy(batch: &mut FrameBatch, mut frame: Vec<u8>) -> Option<Vec<u8>> {
    if !lendable(&frame) {
        copy_into(batch, &frame);
        return Some(frame);
    }
    let len = frame.len();
    frame.resize(frame.capacity(), 0);
    match batch.push_loan(frame.into_boxed_slice(), len) {
        Err(back) => {
            // Not reached: the batch had room. Copy instead of losing it.
            copy_into(batch, &back[..len.min(back.len())]);
            None
        }
        Ok(()) => {
            let spare = batch.take_buffer(0);
            (spare.len() >= LEND_MIN).then(|| spare.into_vec())
        }
    }
}

/// Copy `frame` into `batch`'s spare room (cut to it).
fn copy_into(batch: &mut FrameBatch, frame: &[u8]) {
    let spare = batch.spare();
    let k = frame.len().min(spare.len());
    spare[..k].copy_from_slice(&frame[..k]);
    batch.commit(k);
}

impl SwitchPort {
    /// The next frame toward the switch if `take` accepts it (it sees the frame).
    fn pop_if(&self, take: impl FnOnce(&Vec<u8>) -> bool) -> Option<Vec<u8>> {
        let s = &*self.shared;
        let mut q = lock(&s.to_switch);
        if !take(q.frames.front()?) {
            return None;
        }
        let f = q.frames.pop_front()?;
        q.bytes -= f.len();
        if std::mem::take(&mut q.space_wanted) {
            signal(&s.gateway_space);
        }
        Some(f)
    }

    /// Hand a consumed buffer back for the gateway to reuse.
    fn spent(&self, buf: Vec<u8>) {
        let mut spent = lock(&self.shared.switch_spent);
        if spent.len() < SPARE_MAX {
            spent.push(buf);
        }
    }
}

impl FrameIo for SwitchPort {
    /// Long frames (a 64 KiB super-frame toward a sandbox) are lent to the batch
    /// ([`FrameBatch::push_loan`]): the switch writes them to the tap from the buffer the
    /// gateway built them in, and the batch's spare buffers go back to the gateway in
    /// their place. Short ones are copied.
    fn recv_batch(&mut self, batch: &mut FrameBatch) -> io::Result<usize> {
        if batch.room() == 0 {
            return Err(io::ErrorKind::InvalidInput.into());
        }
        let mut n = 0;
        while batch.room() > 0 {
            let full = batch.is_full();
            let lend = self.lend;
            let Some(frame) = self.pop_if(|f| (lend && lendable(f)) || !full) else {
                if n == 0 {
                    // Not reached when full: the worker clears the batch before a read.
                    return Err(if full {
                        io::ErrorKind::InvalidInput
                    } else {
                        io::ErrorKind::WouldBlock
                    }
                    .into());
                }
                if !full {
                    batch.set_stop(io::ErrorKind::WouldBlock.into());
                }
                break;
            };
            if !lend && !batch.is_full() {
                copy_into(batch, &frame);
                self.spent(frame);
            } else if let Some(spare) = lend_or_copy(batch, frame) {
                self.spent(spare);
            }
            n += 1;
        }
        Ok(n)
    }

    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let s = &*self.shared;
        let frame = {
            let mut q = lock(&s.to_switch);
            let Some(f) = q.frames.pop_front() else {
                return Err(io::ErrorKind::WouldBlock.into());
            };
            q.bytes -= f.len();
            if std::mem::take(&mut q.space_wanted) {
                signal(&s.gateway_space);
            }
            f
        };
        let n = frame.len().min(buf.len());
        buf[..n].copy_from_slice(&frame[..n]);
        let mut spent = lock(&s.switch_spent);
        if spent.len() < SPARE_MAX {
            spent.push(frame);
        }
        Ok(n)
    }

    fn send(&mut self, frame: &[u8]) -> io::Result<usize> {
        let s = &*self.shared;
        if s.gateway_gone.load(Ordering::Relaxed) {
            return Err(io::ErrorKind::ConnectionRefused.into());
        }
        let mut buf = lock(&s.gateway_spare).pop().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(frame);
        let mut q = lock(&s.to_gateway);
        if !q.has_room(frame.len()) {
            drop(q);
            let mut spare = lock(&s.gateway_spare);
            if spare.len() < SPARE_MAX {
                spare.push(buf);
            }
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let was_empty = q.frames.is_empty();
        q.bytes += frame.len();
        q.frames.push_back(buf);
        drop(q);
        // The gateway parks only after finding the queue empty under this lock, having
        // set the flag first: either it sees this frame or this sees the flag.
        if was_empty && s.gateway_parked.swap(false, Ordering::SeqCst) {
            signal(&s.gateway_ready);
        }
        Ok(frame.len())
    }
}

impl Drop for SwitchPort {
    fn drop(&mut self) {
        self.shared.switch_gone.store(true, Ordering::Relaxed);
        // A gateway waiting for room would otherwise wait for ever.
        signal(&self.shared.gateway_space);
    }
}

/// The gateway's end of a [`link`].
pub struct GatewayLink {
    shared: Arc<Shared>,
}

impl GatewayLink {
    /// Becomes readable when frames arrive (edge: after [`Self::recv`] found the queue
    /// empty).
    pub fn ready_fd(&self) -> RawFd {
        self.shared.gateway_ready.as_raw_fd()
    }

    /// Becomes readable when a full queue toward the switch has room again.
    pub fn space_fd(&self) -> RawFd {
        self.shared.gateway_space.as_raw_fd()
    }

    /// About to sleep: from now on the first frame queued signals [`Self::ready_fd`].
    /// False (and not parked) if frames are queued already: do not sleep.
    pub fn park(&self) -> bool {
        self.shared.gateway_parked.store(true, Ordering::SeqCst);
        if lock(&self.shared.to_gateway).frames.is_empty() {
            return true;
        }
        self.shared.gateway_parked.store(false, Ordering::SeqCst);
        false
    }

    /// Awake: frames queued from now on are not signalled (the caller reads the queue
    /// on every turn until it parks again).
    pub fn unpark(&self) {
        self.shared.gateway_parked.store(false, Ordering::SeqCst);
    }

    /// Move up to `max` queued frames into `out`; how many.
    pub fn recv(&self, out: &mut VecDeque<Vec<u8>>, max: usize) -> usize {
        let mut q = lock(&self.shared.to_gateway);
        let q = &mut *q;
        let n = q.frames.len().min(max);
        for f in q.frames.drain(..n) {
            q.bytes -= f.len();
            out.push_back(f);
        }
        n
    }

    /// Queue one frame toward the switch. `Err((frame, WouldBlock))` when the queue is full
    /// (the space descriptor fires once there is room); `Err((frame, ConnectionRefused))`
    /// when the switch's end is gone.
    pub fn send(&self, frame: Vec<u8>) -> Result<(), (Vec<u8>, io::ErrorKind)> {
        let s = &*self.shared;
        if s.switch_gone.load(Ordering::Relaxed) {
            return Err((frame, io::ErrorKind::ConnectionRefused));
        }
        let mut q = lock(&s.to_switch);
        if !q.has_room(frame.len()) {
            q.space_wanted = true;
            return Err((frame, io::ErrorKind::WouldBlock));
        }
        let was_empty = q.frames.is_empty();
        q.bytes += frame.len();
        q.frames.push_back(frame);
        drop(q);
        if was_empty {
            signal(&s.switch_ready);
        }
        Ok(())
    }

    /// Give a buffer back for the switch to fill with a later frame.
    pub fn give(&self, buf: Vec<u8>) {
        let mut spare = lock(&self.shared.gateway_spare);
        if spare.len() < SPARE_MAX {
            spare.push(buf);
        }
    }

    /// Take the buffers of frames the switch has consumed.
    pub fn take_spent(&self, into: &mut Vec<Vec<u8>>) {
        into.append(&mut lock(&self.shared.switch_spent));
    }
}

impl Drop for GatewayLink {
    fn drop(&mut self) {
        self.shared.gateway_gone.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
#[path = "tests/port.rs"]
mod tests;
