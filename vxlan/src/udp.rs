//! The tunnel's UDP I/O: segmentation offload on send, GRO and `recvmmsg` on receive,
//! with run-time fallbacks.
//!
//! Contract:
//!
//! * A *batch* is a buffer of VXLAN datagrams laid end to end, each `stride` bytes but
//!   the last (which may be shorter) — the layout of `UDP_SEGMENT` (send) and `UDP_GRO`
//!   (receive) alike.
//!   The bytes are sent and read as they are: on an encrypted network the port hands
//!   over datagrams already sealed (stride and length grown by the seal's overhead)
//!   and opens what it reads ([`crate::crypt`]).
//! * [`Sender::send`] sends a batch to one or more VTEPs: one `sendmsg` with a
//!   `UDP_SEGMENT` control message per chunk of at most [`MAX_GSO_SEGMENTS`] datagrams
//!   and [`MAX_GSO_BYTES`] bytes, or, to several VTEPs (head-end replication), one
//!   `sendmmsg` carrying a chunk to every VTEP. When the kernel refuses segmentation
//!   offload (`EIO`: the device or path cannot; `EINVAL`/`ENOPROTOOPT`: an old kernel)
//!   the chunk is sent again as plain datagrams and the sender stops asking for it
//!   ([`Sender::gso_enabled`] turns false and stays so). A chunk whose segments exceed
//!   the path MTU (`EMSGSIZE`: an inner MTU set too large) goes out as plain datagrams,
//!   which the kernel fragments as it did before GSO, and GSO stays on. A batch of one
//!   datagram never asks for it.
//! * [`enable_gro`] asks for `UDP_GRO` on a socket (ignored where the kernel lacks it);
//!   [`recv_one`] and [`RecvBatch::recv`] then return a batch per read with its stride
//!   (the `UDP_GRO` control message; without one the stride is the length: one
//!   datagram). [`RecvBatch`] reads up to [`RECV_BATCH`] batches per `recvmmsg`.
//! * Errors are the socket's: `WouldBlock` when there is nothing to read, the ICMP
//!   errors (`ConnectionRefused` …) the kernel reports on a UDP socket.
//!
//! Why not `quinn-udp` (evaluated: it does GSO send and GRO + `recvmmsg` receive): its
//! socket set-up forces `IP_PMTUDISC_PROBE`/`IPV6_DONTFRAG` (DF on every outer packet,
//! where the kernel's VXLAN and this tunnel leave fragmentation to the kernel), turns on
//! timestamp, packet-info and TOS control messages for every datagram, has no
//! `sendmmsg`, and after a refused GSO send retries with the same segment size, so the
//! re-split would be ours anyway. `nix`, already a dependency, has safe wrappers of
//! `sendmsg`/`sendmmsg`/`recvmmsg` with the `UDP_SEGMENT`/`UDP_GRO` control messages.

use nix::errno::Errno;
use nix::sys::socket::{
    recvmmsg, recvmsg, sendmmsg, sendmsg, setsockopt, sockopt, ControlMessage, ControlMessageOwned,
    MsgFlags, MultiHeaders, SockaddrStorage,
};
use std::io::{self, IoSlice, IoSliceMut};
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::AsRawFd;

/// Most datagrams in one `UDP_SEGMENT` send (the kernel's `UDP_MAX_SEGMENTS`, 64 on
/// older kernels).
pub const MAX_GSO_SEGMENTS: usize = 64;
/// Most bytes in one `UDP_SEGMENT` send (a UDP payload is at most 65,507 bytes).
pub const MAX_GSO_BYTES: usize = 65_000;
/// Batches read per `recvmmsg` by [`RecvBatch`].
pub const RECV_BATCH: usize = 8;
/// Room for one received batch: GRO stops at 64 KiB.
pub const RECV_BUF: usize = 65_536;

/// Socket buffer asked for on a tunnel socket, each way: a few dozen 64 KiB batches.
pub const SOCKET_BUFFER: usize = 4 << 20;

/// Ask for [`SOCKET_BUFFER`]-byte send and receive buffers on `sock` (past the sysctl
/// limits where the process may, `SO_RCVBUFFORCE`; else as much as they allow). The
/// default (208 KiB) holds three 64 KiB GRO batches: a dispatcher that falls a little
/// behind would drop datagrams (`UdpRcvbufErrors`) and TCP over the tunnel would crawl.
pub fn set_buffers(sock: &UdpSocket) {
    let _ = setsockopt(sock, sockopt::RcvBufForce, &SOCKET_BUFFER)
        .or_else(|_| setsockopt(sock, sockopt::RcvBuf, &SOCKET_BUFFER));
    let _ = setsockopt(sock, sockopt::SndBufForce, &SOCKET_BUFFER)
        .or_else(|_| setsockopt(sock, sockopt::SndBuf, &SOCKET_BUFFER));
}

/// Ask for `UDP_GRO` on `sock`; false if the kernel does not have it.
pub fn enable_gro(sock: &UdpSocket) -> bool {
    setsockopt(sock, sockopt::UdpGroSegment, &true).is_ok()
}

fn to_socket_addr(a: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(SocketAddr::V4(SocketAddrV4::from(*v4)));
    }
    a.as_sockaddr_in6()
        .map(|v6| SocketAddr::V6(SocketAddrV6::from(*v6)))
}

/// What one read gave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Received {
    /// Bytes of the batch.
    pub len: usize,
    /// The sender.
    pub from: SocketAddr,
    /// Bytes per datagram (the last may be shorter); `len` for a single datagram.
    pub stride: usize,
    /// The datagram did not fit the buffer (it is cut: drop it).
    pub truncated: bool,
}

fn stride_of(cmsgs: impl Iterator<Item = ControlMessageOwned>, len: usize) -> usize {
    for c in cmsgs {
        if let ControlMessageOwned::UdpGroSegments(s) = c {
            if let Ok(s) = usize::try_from(s) {
                if s > 0 {
                    return s.min(len.max(1));
                }
            }
        }
    }
    len
}

/// Read one batch from `sock` into `buf`.
pub fn recv_one(sock: &UdpSocket, buf: &mut [u8]) -> io::Result<Received> {
    let mut cmsg = nix::cmsg_space!(i32);
    let cap = buf.len();
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<SockaddrStorage>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_DONTWAIT,
    )
    .map_err(io::Error::from)?;
    let len = msg.bytes;
    let from = msg
        .address
        .as_ref()
        .and_then(to_socket_addr)
        .ok_or_else(|| io::Error::other("datagram without an IP sender"))?;
    // A cut datagram, or a cut control message (the stride unknown): dropped.
    let (stride, ctrunc) = match msg.cmsgs() {
        Ok(c) => (stride_of(c, len), false),
        Err(_) => (len, true),
    };
    let truncated = msg.flags.contains(MsgFlags::MSG_TRUNC) || len > cap || ctrunc;
    Ok(Received {
        len,
        from,
        stride,
        truncated,
    })
}

/// Buffers for `recvmmsg`, allocated once.
pub struct RecvBatch {
    bufs: Vec<Box<[u8]>>,
    got: Vec<Received>,
}

impl std::fmt::Debug for RecvBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBatch")
            .field("bufs", &self.bufs.len())
            .finish()
    }
}

impl Default for RecvBatch {
    fn default() -> Self {
        RecvBatch::new()
    }
}

impl RecvBatch {
    /// [`RECV_BATCH`] buffers of [`RECV_BUF`] bytes.
    pub fn new() -> RecvBatch {
        RecvBatch {
            bufs: (0..RECV_BATCH)
                .map(|_| vec![0u8; RECV_BUF].into_boxed_slice())
                .collect(),
            got: Vec::with_capacity(RECV_BATCH),
        }
    }

    /// Read what is queued (up to [`RECV_BATCH`] batches); the number read.
    pub fn recv(&mut self, sock: &UdpSocket) -> io::Result<usize> {
        self.got.clear();
        let mut iovs: Vec<[IoSliceMut<'_>; 1]> = self
            .bufs
            .iter_mut()
            .map(|b| [IoSliceMut::new(&mut b[..])])
            .collect();
        // Fresh headers every call: the kernel shrinks each `msg_controllen` to what it
        // wrote, and nix does not reset it, so reused headers would lose the GRO message.
        let mut headers = MultiHeaders::preallocate(RECV_BATCH, Some(nix::cmsg_space!(i32)));
        let res = recvmmsg(
            sock.as_raw_fd(),
            &mut headers,
            iovs.iter_mut(),
            MsgFlags::MSG_DONTWAIT,
            None,
        )
        .map_err(io::Error::from)?;
        for msg in res {
            let len = msg.bytes;
            let Some(from) = msg.address.as_ref().and_then(to_socket_addr) else {
                continue;
            };
            // A cut datagram, or a cut control message (the stride unknown): dropped.
            let (stride, ctrunc) = match msg.cmsgs() {
                Ok(c) => (stride_of(c, len), false),
                Err(_) => (len, true),
            };
            let truncated = msg.flags.contains(MsgFlags::MSG_TRUNC) || len > RECV_BUF || ctrunc;
            self.got.push(Received {
                len,
                from,
                stride,
                truncated,
            });
        }
        Ok(self.got.len())
    }

    /// Take the buffer of the `i`th batch of the last read (its bytes are the batch's),
    /// leaving `replacement` (at least [`RECV_BUF`] bytes) in its place.
    pub fn take(&mut self, i: usize, replacement: Box<[u8]>) -> Box<[u8]> {
        match self.bufs.get_mut(i) {
            Some(b) if replacement.len() >= RECV_BUF => std::mem::replace(b, replacement),
            _ => replacement,
        }
    }

    /// The `i`th batch of the last read, with its bytes.
    pub fn get(&self, i: usize) -> Option<(Received, &[u8])> {
        let r = *self.got.get(i)?;
        let b = self.bufs.get(i)?.get(..r.len.min(RECV_BUF))?;
        Some((r, b))
    }
}

/// The result of a [`Sender::send`].
#[derive(Debug, Default)]
pub struct Sent {
    /// Datagrams that went out (each datagram to each VTEP counts once).
    pub datagrams: u64,
    /// UDP payload bytes that went out (every copy).
    pub bytes: u64,
    /// Failed sends (a chunk to a VTEP).
    pub errors: u64,
    /// The last error.
    pub last_error: Option<io::Error>,
}

/// Sends batches, with segmentation offload while the kernel takes it.
pub struct Sender {
    gso: bool,
    refused: u64,
    addrs: Vec<Option<SockaddrStorage>>,
}

impl std::fmt::Debug for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender")
            .field("gso", &self.gso)
            .field("refused", &self.refused)
            .finish()
    }
}

impl Default for Sender {
    fn default() -> Self {
        Sender::new()
    }
}

/// `sendmmsg` headers for `n` messages.
fn headers(n: usize, cmsg: bool) -> MultiHeaders<SockaddrStorage> {
    MultiHeaders::preallocate(n, cmsg.then(|| nix::cmsg_space!(u16)))
}

/// Errors of a `UDP_SEGMENT` send that a plain send may not have: the device or path
/// cannot segment (`EIO`), the kernel does not know the option (`EINVAL`,
/// `ENOPROTOOPT`), or a segment exceeds the path MTU (`EMSGSIZE`).
fn gso_refused(e: Errno) -> bool {
    matches!(
        e,
        Errno::EIO | Errno::EINVAL | Errno::ENOPROTOOPT | Errno::EMSGSIZE
    )
}

impl Sender {
    /// A sender that tries segmentation offload first.
    pub fn new() -> Sender {
        Sender {
            gso: true,
            refused: 0,
            addrs: Vec::with_capacity(8),
        }
    }

    /// Whether sends still ask for segmentation offload.
    pub fn gso_enabled(&self) -> bool {
        self.gso
    }

    /// Times the kernel refused segmentation offload (it is off after the first).
    pub fn gso_refused(&self) -> u64 {
        self.refused
    }

    /// Send `batch` (datagrams of `stride` bytes, the last maybe shorter) to every
    /// address of `to`.
    pub fn send(
        &mut self,
        sock: &UdpSocket,
        batch: &[u8],
        stride: usize,
        to: &[SocketAddr],
    ) -> Sent {
        let mut sent = Sent::default();
        if to.is_empty() || batch.is_empty() {
            return sent;
        }
        let stride = stride.clamp(1, batch.len());
        self.addrs.clear();
        self.addrs
            .extend(to.iter().map(|a| Some(SockaddrStorage::from(*a))));
        let per_chunk = (MAX_GSO_BYTES / stride).clamp(1, MAX_GSO_SEGMENTS);
        for chunk in batch.chunks(per_chunk * stride) {
            if self.gso && chunk.len() > stride {
                let r = self.send_chunk(sock, chunk, Some(stride), &mut sent);
                if self.offloaded(r) {
                    continue;
                }
            }
            for d in chunk.chunks(stride) {
                // Plain sends: an error is counted per VTEP inside.
                let _ = self.send_chunk(sock, d, None, &mut sent);
            }
        }
        sent
    }

    /// Send a *gathered* batch to every address of `to`: datagram `i` is the
    /// concatenation of `parts[i * per .. (i + 1) * per]` (each datagram `per` slices:
    /// headers from one buffer, payload from another, so nothing is copied into a batch
    /// first), every datagram `stride` bytes but the last. Chunked, offloaded and
    /// falling back exactly like [`Sender::send`] (same GSO state); datagrams whose
    /// lengths disagree with `stride` are not sent (`InvalidInput`, counted an error).
    pub fn send_gathered(
        &mut self,
        sock: &UdpSocket,
        parts: &[IoSlice<'_>],
        per: usize,
        stride: usize,
        to: &[SocketAddr],
    ) -> Sent {
        let mut sent = Sent::default();
        let per = per.max(1);
        if to.is_empty() || parts.is_empty() || !parts.len().is_multiple_of(per) || stride == 0 {
            return sent;
        }
        let count = parts.len() / per;
        let len_of = |d: &[IoSlice<'_>]| d.iter().map(|s| s.len()).sum::<usize>();
        // Every datagram but the last `stride` bytes, the last at most: the GSO layout.
        let fits = parts.chunks(per).enumerate().all(|(i, d)| {
            let n = len_of(d);
            n == stride || (i + 1 == count && n > 0 && n <= stride)
        });
        if !fits || stride > usize::from(u16::MAX) {
            sent.errors += 1;
            sent.last_error = Some(io::ErrorKind::InvalidInput.into());
            return sent;
        }
        let per_chunk = (MAX_GSO_BYTES / stride).clamp(1, MAX_GSO_SEGMENTS);
        let fd = sock.as_raw_fd();
        for addr in to {
            let to = SockaddrStorage::from(*addr);
            for chunk in parts.chunks(per_chunk * per) {
                let len = len_of(chunk);
                if self.gso && chunk.len() > per {
                    let r = send_iov(fd, chunk, len, Some(stride), &to, &mut sent);
                    if self.offloaded(r) {
                        continue;
                    }
                }
                for d in chunk.chunks(per) {
                    let _ = send_iov(fd, d, len_of(d), None, &to, &mut sent);
                }
            }
        }
        sent
    }

    /// What one `UDP_SEGMENT` send's result means for its chunk and for GSO: true if it
    /// went out; false if the chunk must go out plain instead. Segments larger than the
    /// path MTU (`EMSGSIZE`: an inner MTU set too large) leave GSO on, for the kernel to
    /// fragment this chunk's plain datagrams; any other refusal turns GSO off for good.
    fn offloaded(&mut self, r: Result<(), Errno>) -> bool {
        match r {
            Ok(()) => true,
            Err(Errno::EMSGSIZE) => false,
            Err(_) => {
                self.gso = false;
                self.refused += 1;
                false
            }
        }
    }

    /// Send `chunk` to every address (`segment`: with `UDP_SEGMENT`). `Err` only when the
    /// kernel refused segmentation offload before anything of the chunk went out.
    fn send_chunk(
        &mut self,
        sock: &UdpSocket,
        chunk: &[u8],
        segment: Option<usize>,
        sent: &mut Sent,
    ) -> Result<(), Errno> {
        let datagrams = segment.map_or(1, |s| chunk.len().div_ceil(s)) as u64;
        let seg = segment.and_then(|s| u16::try_from(s).ok());
        let seg_ref = seg.as_ref();
        let cmsg_one: [ControlMessage<'_>; 1];
        let cmsgs: &[ControlMessage<'_>] = match seg_ref {
            Some(s) => {
                cmsg_one = [ControlMessage::UdpGsoSegments(s)];
                &cmsg_one
            }
            None => &[],
        };
        let fd = sock.as_raw_fd();
        let iov = [IoSlice::new(chunk)];
        if self.addrs.len() == 1 {
            return match self.addrs.first().copied().flatten() {
                Some(to) => send_iov(fd, &iov, chunk.len(), segment, &to, sent),
                None => Ok(()),
            };
        }
        // Head-end replication: the same chunk to every VTEP in one sendmmsg. (The
        // headers are made here: nix's are not `Send`, and a port moves to its worker.)
        let mut headers = headers(self.addrs.len(), seg.is_some());
        let slices: Vec<[IoSlice<'_>; 1]> = self.addrs.iter().map(|_| iov).collect();
        let mut start = 0;
        while start < self.addrs.len() {
            let addrs = self.addrs.get(start..).unwrap_or_default();
            let res = sendmmsg(
                fd,
                &mut headers,
                slices.get(start..).unwrap_or_default(),
                addrs,
                cmsgs,
                MsgFlags::empty(),
            )
            .map(|r| r.count());
            match res {
                Ok(0) => break,
                Ok(n) => {
                    sent.datagrams += datagrams * n as u64;
                    sent.bytes += (chunk.len() * n) as u64;
                    start += n;
                }
                Err(Errno::EINTR) => {}
                Err(e) if seg.is_some() && gso_refused(e) && start == 0 => return Err(e),
                Err(e) => {
                    // The message at `start` failed: count it, go on with the next VTEP.
                    sent.errors += 1;
                    sent.last_error = Some(e.into());
                    start += 1;
                }
            }
        }
        Ok(())
    }
}

/// One `sendmsg` of the datagram (or, with `segment`, the `UDP_SEGMENT` batch) made of
/// `iov` (`len` bytes) to `to`, counted in `sent`. `Err` only when the kernel refused
/// segmentation offload (nothing went out); other errors are counted and `Ok`.
fn send_iov(
    fd: std::os::fd::RawFd,
    iov: &[IoSlice<'_>],
    len: usize,
    segment: Option<usize>,
    to: &SockaddrStorage,
    sent: &mut Sent,
) -> Result<(), Errno> {
    let datagrams = segment.map_or(1, |s| len.div_ceil(s.max(1))) as u64;
    let seg = segment.and_then(|s| u16::try_from(s).ok());
    let cmsg_one: [ControlMessage<'_>; 1];
    let cmsgs: &[ControlMessage<'_>] = match seg.as_ref() {
        Some(s) => {
            cmsg_one = [ControlMessage::UdpGsoSegments(s)];
            &cmsg_one
        }
        None => &[],
    };
    loop {
        match sendmsg(fd, iov, cmsgs, MsgFlags::empty(), Some(to)) {
            Ok(_) => {
                sent.datagrams += datagrams;
                sent.bytes += len as u64;
                return Ok(());
            }
            Err(Errno::EINTR) => continue,
            Err(e) if seg.is_some() && gso_refused(e) => return Err(e),
            Err(e) => {
                sent.errors += 1;
                sent.last_error = Some(e.into());
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn socket() -> UdpSocket {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap_or_else(|e| panic!("{e}"));
        s
    }

    /// A batch of `n` datagrams of `stride` bytes (the last `last` bytes), each filled
    /// with its index.
    fn batch(n: usize, stride: usize, last: usize) -> Vec<u8> {
        let mut b = Vec::new();
        for i in 0..n {
            let len = if i + 1 == n { last } else { stride };
            b.extend(std::iter::repeat_n(i as u8, len));
        }
        b
    }

    #[test]
    fn a_gso_batch_arrives_as_separate_datagrams_without_gro() {
        let (tx, rx, rx2) = (socket(), socket(), socket());
        let mut s = Sender::new();
        let b = batch(5, 1000, 300);
        let to = [
            rx.local_addr().unwrap_or_else(|e| panic!("{e}")),
            rx2.local_addr().unwrap_or_else(|e| panic!("{e}")),
        ];
        let sent = s.send(&tx, &b, 1000, &to);
        assert_eq!((sent.datagrams, sent.errors), (10, 0));
        for r in [&rx, &rx2] {
            let mut buf = [0u8; 2000];
            for i in 0..5u8 {
                let n = r.recv(&mut buf).unwrap_or_else(|e| panic!("{e}"));
                assert_eq!(n, if i == 4 { 300 } else { 1000 });
                assert!(buf[..n].iter().all(|&x| x == i));
            }
        }
    }

    /// `n` gathered datagrams of `stride` bytes (the last `last`): a 3-byte "header"
    /// from one buffer, the rest from another, datagram `i` filled with `i`.
    fn gathered(n: usize, stride: usize, last: usize) -> (Vec<u8>, Vec<u8>) {
        let (mut hdrs, mut body) = (Vec::new(), Vec::new());
        for i in 0..n {
            let len = if i + 1 == n { last } else { stride };
            hdrs.extend(std::iter::repeat_n(i as u8, 3));
            body.extend(std::iter::repeat_n(i as u8, len - 3));
        }
        (hdrs, body)
    }

    fn parts<'a>(hdrs: &'a [u8], body: &'a [u8], stride: usize) -> Vec<IoSlice<'a>> {
        hdrs.chunks(3)
            .zip(body.chunks(stride - 3))
            .flat_map(|(h, b)| [IoSlice::new(h), IoSlice::new(b)])
            .collect()
    }

    #[test]
    fn a_gathered_batch_arrives_as_the_datagrams_it_describes() {
        for gso in [true, false] {
            let (tx, rx, rx2) = (socket(), socket(), socket());
            let mut s = Sender::new();
            // Without GSO: the plain fallback, one sendmsg of two iovecs per datagram.
            s.gso = gso;
            // 70 datagrams: more than one GSO send (64 segments at most per send).
            let (h, b) = gathered(70, 900, 500);
            let p = parts(&h, &b, 900);
            let to = [
                rx.local_addr().unwrap_or_else(|e| panic!("{e}")),
                rx2.local_addr().unwrap_or_else(|e| panic!("{e}")),
            ];
            let sent = s.send_gathered(&tx, &p, 2, 900, &to);
            assert_eq!((sent.datagrams, sent.errors), (140, 0), "gso {gso}");
            assert_eq!(sent.bytes, 2 * (69 * 900 + 500));
            for r in [&rx, &rx2] {
                let mut buf = [0u8; 2000];
                for i in 0..70u8 {
                    let n = r.recv(&mut buf).unwrap_or_else(|e| panic!("{e}"));
                    assert_eq!(n, if i == 69 { 500 } else { 900 });
                    assert!(buf[..n].iter().all(|&x| x == i), "datagram {i}");
                }
            }
        }
    }

    #[test]
    fn with_gro_a_gathered_batch_is_read_whole() {
        let (tx, rx) = (socket(), socket());
        assert!(enable_gro(&rx), "this kernel has UDP_GRO");
        let (h, b) = gathered(5, 1200, 1000);
        let p = parts(&h, &b, 1200);
        let to = [rx.local_addr().unwrap_or_else(|e| panic!("{e}"))];
        let mut s = Sender::new();
        assert_eq!(s.send_gathered(&tx, &p, 2, 1200, &to).datagrams, 5);
        std::thread::sleep(Duration::from_millis(20));
        let mut buf = vec![0u8; RECV_BUF];
        let r = recv_one(&rx, &mut buf).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((r.len, r.stride, r.truncated), (5800, 1200, false));
        let want: Vec<u8> = (0..5u8)
            .flat_map(|i| std::iter::repeat_n(i, if i == 4 { 1000 } else { 1200 }))
            .collect();
        assert_eq!(&buf[..r.len], &want[..]);
    }

    #[test]
    fn a_gathered_batch_off_its_stride_is_not_sent() {
        let (tx, rx) = (socket(), socket());
        rx.set_nonblocking(true).unwrap_or_else(|e| panic!("{e}"));
        let to = [rx.local_addr().unwrap_or_else(|e| panic!("{e}"))];
        let mut s = Sender::new();
        let (h, b) = gathered(3, 900, 500);
        let p = parts(&h, &b, 900);
        // A middle datagram shorter than the stride; a last one longer; a ragged list.
        for (p, stride, per) in [(&p[..], 1000, 2), (&p[..], 500, 2), (&p[..5], 900, 2)] {
            let sent = s.send_gathered(&tx, p, per, stride, &to);
            assert_eq!((sent.datagrams, sent.bytes), (0, 0));
            assert_eq!(sent.errors, u64::from(p.len().is_multiple_of(per)));
        }
        let mut buf = [0u8; 2000];
        assert_eq!(
            rx.recv(&mut buf).map_err(|e| e.kind()),
            Err(io::ErrorKind::WouldBlock),
            "nothing went out"
        );
    }

    #[test]
    fn with_gro_a_batch_is_read_whole_with_its_stride() {
        let (tx, rx) = (socket(), socket());
        let gro = enable_gro(&rx);
        let mut s = Sender::new();
        let b = batch(4, 1200, 1200);
        let to = [rx.local_addr().unwrap_or_else(|e| panic!("{e}"))];
        assert_eq!(s.send(&tx, &b, 1200, &to).datagrams, 4);
        let mut buf = vec![0u8; RECV_BUF];
        let mut got = Vec::new();
        while got.len() < b.len() {
            std::thread::sleep(Duration::from_millis(5));
            match recv_one(&rx, &mut buf) {
                Ok(r) => {
                    assert!(!r.truncated);
                    assert_eq!(r.from, tx.local_addr().unwrap_or_else(|e| panic!("{e}")));
                    if gro && s.gso_enabled() {
                        assert_eq!((r.len, r.stride), (4800, 1200));
                    }
                    got.extend_from_slice(&buf[..r.len]);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(got, b);
    }

    #[test]
    fn recv_batch_keeps_the_stride_after_a_plain_datagram() {
        let (tx, rx) = (socket(), socket());
        assert!(enable_gro(&rx), "this kernel has UDP_GRO");
        rx.set_nonblocking(true).unwrap_or_else(|e| panic!("{e}"));
        let to = [rx.local_addr().unwrap_or_else(|e| panic!("{e}"))];
        let mut s = Sender::new();
        let mut r = RecvBatch::new();
        // Read rounds: a plain datagram (no GRO message), then GSO batches.
        for round in 0..3 {
            let b = batch(3, 1000, 1000);
            let (stride, want) = if round == 0 {
                (100, (100, 100))
            } else {
                (1000, (3000, 1000))
            };
            let b = if round == 0 { &b[..100] } else { &b[..] };
            s.send(&tx, b, stride, &to);
            std::thread::sleep(Duration::from_millis(20));
            assert_eq!(r.recv(&rx).unwrap_or_else(|e| panic!("{e}")), 1);
            let (got, bytes) = r.get(0).unwrap_or_else(|| panic!("a batch"));
            assert_eq!((got.len, got.stride), want, "round {round}");
            assert!(!got.truncated);
            assert_eq!(bytes, b);
        }
    }
}
