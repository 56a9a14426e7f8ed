//! The batched port interface and the port control channel: the `FrameIo` defaults on an
//! in-memory port, and a fake batching port on a live datapath that records the batches
//! and the control messages it gets.
#![allow(clippy::unwrap_used)]

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tapnet_switch::core::{DropReason, SwitchConfig};
use tapnet_switch::runtime::{
    DatagramPort, Datapath, Error, FrameBatch, FrameIo, Frames, NetworkHandle, PortControl,
    PortReply, PortStats, SendBatchError,
};
use tapnet_switch::testing::wait_until;
use tapnet_switch::VNET_HDR_LEN;

fn frame(src: u8, tag: u8) -> Vec<u8> {
    let mut f = vec![0u8; VNET_HDR_LEN];
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, src]);
    f.extend_from_slice(&[0x08, 0x00]);
    f.resize(VNET_HDR_LEN + 14 + 46, tag);
    f
}

// ---- the defaults, on an in-memory port ---------------------------------------------

/// A port over queues: `rx` is what `recv` returns in turn (then `WouldBlock`); `send`
/// fails for frames whose last byte is in `fail_tags`.
#[derive(Default)]
struct MemPort {
    rx: VecDeque<io::Result<Vec<u8>>>,
    sent: Vec<Vec<u8>>,
    fail_tags: Vec<u8>,
}

impl AsRawFd for MemPort {
    fn as_raw_fd(&self) -> RawFd {
        -1
    }
}

impl FrameIo for MemPort {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.rx.pop_front() {
            None => Err(io::ErrorKind::WouldBlock.into()),
            Some(Err(e)) => Err(e),
            Some(Ok(f)) => {
                let n = f.len().min(buf.len());
                buf[..n].copy_from_slice(&f[..n]);
                Ok(n)
            }
        }
    }
    fn send(&mut self, frame: &[u8]) -> io::Result<usize> {
        if self.fail_tags.contains(frame.last().unwrap()) {
            return Err(io::Error::other("queue full"));
        }
        self.sent.push(frame.to_vec());
        Ok(frame.len())
    }
}

fn mem(frames: impl IntoIterator<Item = io::Result<Vec<u8>>>) -> MemPort {
    MemPort {
        rx: frames.into_iter().collect(),
        ..MemPort::default()
    }
}

#[test]
fn default_recv_batch_reads_until_empty_and_keeps_the_stop() {
    let mut p = mem((0..5).map(|t| Ok(frame(1, t))));
    let mut b = FrameBatch::new(64, 100, 1000);
    assert_eq!(p.recv_batch(&mut b).unwrap(), 5);
    assert_eq!(b.len(), 5);
    assert_eq!(b.get(3).unwrap(), &frame(1, 3)[..]);
    assert_eq!(b.iter().count(), 5);
    assert_eq!(
        b.take_stop().map(|e| e.kind()),
        Some(io::ErrorKind::WouldBlock)
    );
    b.clear();
    assert_eq!(
        p.recv_batch(&mut b).unwrap_err().kind(),
        io::ErrorKind::WouldBlock
    );
    assert!(b.is_empty());
}

#[test]
fn default_recv_batch_respects_limit_and_room() {
    let mut p = mem((0..10).map(|t| Ok(frame(1, t))));
    // Frames are 70 bytes: after three, 40 bytes are left, less than the 100 needed.
    let mut b = FrameBatch::new(64, 100, 250);
    assert_eq!(p.recv_batch(&mut b).unwrap(), 3);
    assert!(b.is_full() && b.take_stop().is_none());
    b.clear();
    b.set_limit(2);
    assert_eq!(p.recv_batch(&mut b).unwrap(), 2);
    assert_eq!(b.get(0).unwrap(), &frame(1, 3)[..]);
    // `commit` past the limit is ignored; a full batch is refused.
    b.commit(10);
    assert_eq!(b.len(), 2);
    assert_eq!(
        p.recv_batch(&mut b).unwrap_err().kind(),
        io::ErrorKind::InvalidInput
    );
}

#[test]
fn default_recv_batch_end_of_stream_errors_and_interrupts() {
    let mut p = mem([
        Err(io::ErrorKind::Interrupted.into()),
        Ok(frame(1, 0)),
        Ok(Vec::new()),
    ]);
    let mut b = FrameBatch::new(64, 100, 1000);
    assert_eq!(p.recv_batch(&mut b).unwrap(), 1, "Interrupted is retried");
    assert_eq!(
        b.take_stop().map(|e| e.kind()),
        Some(io::ErrorKind::UnexpectedEof)
    );
    let mut p = mem([Ok(Vec::new())]);
    b.clear();
    assert_eq!(p.recv_batch(&mut b).unwrap(), 0, "end of stream");
    let mut p = mem([Ok(frame(1, 0)), Err(io::Error::other("gone"))]);
    b.clear();
    assert_eq!(p.recv_batch(&mut b).unwrap(), 1);
    assert_eq!(b.take_stop().map(|e| e.kind()), Some(io::ErrorKind::Other));
}

#[test]
fn frames_views_and_default_send_batch() {
    let mut src = mem((0..6).map(|t| Ok(frame(1, t))));
    let mut b = FrameBatch::new(64, 100, 1000);
    src.recv_batch(&mut b).unwrap();
    let all = Frames::all(&b);
    assert_eq!(all.len(), 6);
    assert_eq!(all.after(4).len(), 2);
    assert_eq!(all.after(4).get(0).unwrap(), &frame(1, 4)[..]);
    assert_eq!(all.after(9).len(), 0);
    let picks = [5u32, 1, 3];
    let some = Frames::picked(&b, &picks);
    let tags: Vec<u8> = some.iter().map(|f| *f.last().unwrap()).collect();
    assert_eq!(tags, [5, 1, 3]);
    assert_eq!(some.after(1).get(0).unwrap(), &frame(1, 1)[..]);

    let mut out = MemPort {
        fail_tags: vec![1],
        ..MemPort::default()
    };
    let err = out.send_batch(some).unwrap_err();
    assert_eq!(err.sent, 1, "stopped at the failed frame");
    assert_eq!(out.sent, [frame(1, 5)]);
    out.send_batch(some.after(err.sent + 1)).unwrap();
    assert_eq!(out.sent, [frame(1, 5), frame(1, 3)]);
    // A port without control answers Unsupported.
    let e = out.control(PortControl::Custom(Box::new(1u8))).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::Unsupported);
}

// ---- a batching port on a live datapath ---------------------------------------------

/// What the fake port saw.
#[derive(Default, Debug)]
struct Log {
    /// Frames per successful `recv_batch` call.
    recv_batches: Vec<usize>,
    /// Frames per `send_batch` call.
    send_batches: Vec<usize>,
    /// Peers given through the control channel, per message.
    controls: Vec<Vec<String>>,
}

/// A tunnel-port stand-in's control message.
struct SetPeers(Vec<String>);

/// A port with its own batch calls (standing in for a vectored socket) and a control
/// handler; frames go through a datagram socket pair.
struct BatchPort {
    inner: DatagramPort,
    log: Arc<Mutex<Log>>,
    /// Tags whose frames `send` refuses.
    fail_tags: Vec<u8>,
}

impl AsRawFd for BatchPort {
    fn as_raw_fd(&self) -> RawFd {
        self.inner.as_raw_fd()
    }
}

impl FrameIo for BatchPort {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.recv(buf)
    }
    fn send(&mut self, frame: &[u8]) -> io::Result<usize> {
        if self.fail_tags.contains(frame.last().unwrap()) {
            return Err(io::Error::other("queue full"));
        }
        self.inner.send(frame)
    }
    fn recv_batch(&mut self, batch: &mut FrameBatch) -> io::Result<usize> {
        let mut n = 0;
        while !batch.is_full() {
            match self.inner.recv(batch.spare()) {
                Ok(len) => {
                    batch.commit(len);
                    n += 1;
                }
                Err(e) if n == 0 => return Err(e),
                Err(e) => {
                    batch.set_stop(e);
                    break;
                }
            }
        }
        self.log.lock().unwrap().recv_batches.push(n);
        Ok(n)
    }
    fn send_batch(&mut self, frames: Frames<'_>) -> Result<(), SendBatchError> {
        self.log.lock().unwrap().send_batches.push(frames.len());
        for (sent, f) in frames.iter().enumerate() {
            if let Err(error) = self.send(f) {
                return Err(SendBatchError { sent, error });
            }
        }
        Ok(())
    }
    fn control(&mut self, msg: PortControl) -> io::Result<PortReply> {
        match msg {
            PortControl::Custom(m) => match m.downcast::<SetPeers>() {
                Ok(peers) => {
                    let n = peers.0.len();
                    self.log.lock().unwrap().controls.push(peers.0);
                    Ok(PortReply::Custom(Box::new(n)))
                }
                Err(_) => Err(io::ErrorKind::InvalidInput.into()),
            },
            _ => Err(io::ErrorKind::Unsupported.into()),
        }
    }
}

fn peer_recv(peer: &UnixDatagram) -> Vec<u8> {
    let mut buf = vec![0u8; 70_000];
    let n = peer.recv(&mut buf).expect("frame expected");
    buf.truncate(n);
    buf
}

/// A batching port with `fail_tags`; its peer end and its log.
fn batch_port(
    net: &NetworkHandle,
    fail_tags: Vec<u8>,
    queued: &[Vec<u8>],
) -> (u32, Arc<PortStats>, UnixDatagram, Arc<Mutex<Log>>) {
    let (inner, peer) = DatagramPort::pair().unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    for f in queued {
        peer.send(f).unwrap();
    }
    let log = Arc::new(Mutex::new(Log::default()));
    let io = BatchPort {
        inner,
        log: Arc::clone(&log),
        fail_tags,
    };
    let (id, stats) = net.add_port(Box::new(io)).unwrap();
    (id, stats, peer, log)
}

/// A plain (default-batching) port; frames queued on its peer before it is attached.
fn plain_port(net: &NetworkHandle, queued: &[Vec<u8>]) -> (u32, Arc<PortStats>, UnixDatagram) {
    let (port, peer) = DatagramPort::pair().unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    for f in queued {
        peer.send(f).unwrap();
    }
    let (id, stats) = net.add_port(Box::new(port)).unwrap();
    (id, stats, peer)
}

#[test]
fn worker_reads_and_writes_whole_batches() {
    let dp = Datapath::start(1).unwrap();
    let net = dp.add_network(SwitchConfig::default()).unwrap();
    // Receive side: ten frames wait on the batching port before it is attached; its
    // first `recv_batch` takes all of them, and they reach the plain port in order.
    let (_b, b_stats, b_peer) = plain_port(&net, &[]);
    let sent: Vec<Vec<u8>> = (0..10).map(|t| frame(1, t)).collect();
    let (_a, a_stats, a_peer, log) = batch_port(&net, vec![], &sent);
    for f in &sent {
        assert_eq!(&peer_recv(&b_peer), f);
    }
    assert_eq!(log.lock().unwrap().recv_batches.first(), Some(&10));
    assert_eq!(a_stats.snapshot().rx_packets, 10);
    wait_until("counters", || b_stats.snapshot().tx_packets == 10);

    // Send side: ten frames wait on a plain port (default `recv_batch`, one read per
    // frame) before it is attached; they are flooded to the batching port in one
    // `send_batch` of ten.
    let back: Vec<Vec<u8>> = (0..10).map(|t| frame(2, 100 + t)).collect();
    let (_c, c_stats, _c_peer) = plain_port(&net, &back);
    for f in &back {
        assert_eq!(&peer_recv(&a_peer), f);
    }
    assert_eq!(log.lock().unwrap().send_batches, [10]);
    wait_until("counters", || a_stats.snapshot().tx_packets == 10);
    assert_eq!(
        a_stats.snapshot().tx_bytes,
        back.iter()
            .map(|f| (f.len() - VNET_HDR_LEN) as u64)
            .sum::<u64>()
    );
    assert_eq!(c_stats.snapshot().rx_packets, 10);
    dp.shutdown();
}

#[test]
fn failed_frames_in_a_batch_are_counted_and_the_rest_sent() {
    let dp = Datapath::start(1).unwrap();
    let net = dp.add_network(SwitchConfig::default()).unwrap();
    let (_a, a_stats, a_peer, log) = batch_port(&net, vec![0, 3, 9], &[]);
    let frames: Vec<Vec<u8>> = (0..10).map(|t| frame(1, t)).collect();
    let _b = plain_port(&net, &frames);
    for t in [1u8, 2, 4, 5, 6, 7, 8] {
        assert_eq!(peer_recv(&a_peer), frame(1, t));
    }
    wait_until("counters", || a_stats.drops(DropReason::TxError) == 3);
    assert_eq!(a_stats.snapshot().tx_packets, 7);
    // One call for the batch, then one after each failed frame that has frames after it.
    assert_eq!(log.lock().unwrap().send_batches, [10, 9, 6]);
    dp.shutdown();
}

#[test]
fn control_messages_reach_the_port() {
    let dp = Datapath::start(2).unwrap();
    let net = dp.add_network(SwitchConfig::default()).unwrap();
    let (a, _stats, _peer, log) = batch_port(&net, vec![], &[]);
    let (plain, _, _) = plain_port(&net, &[]);

    let peers = vec!["192.0.2.1".to_string(), "192.0.2.2".to_string()];
    let reply = net
        .control_port(a, PortControl::Custom(Box::new(SetPeers(peers.clone()))))
        .unwrap();
    match reply {
        PortReply::Custom(n) => assert_eq!(*n.downcast::<usize>().unwrap(), 2),
        other => panic!("unexpected reply {other:?}"),
    }
    assert_eq!(log.lock().unwrap().controls, [peers]);

    // A message the port does not understand, a port that takes none, no such port.
    match net.control_port(a, PortControl::Custom(Box::new(7u32))) {
        Err(Error::PortControl { port, source }) => {
            assert_eq!((port, source.kind()), (a, io::ErrorKind::InvalidInput));
        }
        other => panic!("unexpected {other:?}"),
    }
    match net.control_port(plain, PortControl::Custom(Box::new(SetPeers(vec![])))) {
        Err(Error::PortControl { port, source }) => {
            assert_eq!((port, source.kind()), (plain, io::ErrorKind::Unsupported));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(matches!(
        net.control_port(999, PortControl::Custom(Box::new(()))),
        Err(Error::NoSuchPort(999))
    ));
    assert_eq!(log.lock().unwrap().controls.len(), 1);
    dp.shutdown();
}
