//! Capture taps of the datapath ([`NetworkHandle::capture`]) over Unix datagram socket
//! pairs standing in for taps.
#![allow(clippy::unwrap_used)]

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};
use tapnet_switch::core::SwitchConfig;
use tapnet_switch::runtime::{
    Capture, CaptureScope, DatagramPort, Datapath, Error, NetworkHandle, MAX_CAPTURES,
};
use tapnet_switch::testing::{frame, mac, BCAST};

fn port(net: &NetworkHandle) -> (u32, UnixDatagram) {
    let (p, peer) = DatagramPort::pair().unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let (id, _) = net.add_port(Box::new(p)).unwrap();
    (id, peer)
}

/// The tag bytes of the frames `cap` holds now (waits a little for the first).
fn tags(cap: &Capture) -> Vec<u8> {
    let mut out = Vec::new();
    let mut wait = Duration::from_secs(2);
    while let Ok(f) = cap.recv_timeout(wait) {
        assert!(f.time <= std::time::SystemTime::now());
        assert_eq!(f.data.len(), 60, "Ethernet frame without the vnet header");
        out.push(*f.data.last().unwrap());
        wait = Duration::from_millis(200);
    }
    out
}

fn recv(peer: &UnixDatagram) -> Vec<u8> {
    let mut buf = vec![0u8; 2048];
    let n = peer.recv(&mut buf).unwrap();
    buf.truncate(n);
    buf
}

#[test]
fn network_and_port_scopes_see_their_frames() {
    let dp = Datapath::start(1).unwrap();
    let net = dp.add_network(SwitchConfig::default()).unwrap();
    let (a, pa) = port(&net);
    let (b, pb) = port(&net);
    let (_c, pc) = port(&net);
    assert_eq!(net.capture_subscribers(), 0);
    let all = net.capture(CaptureScope::Network).unwrap();
    let only_b = net.capture(CaptureScope::Port(b)).unwrap();
    assert_eq!(net.capture_subscribers(), 2);

    // a floods (b learns nothing yet): everyone gets it; b's capture sees it as sent to b.
    pa.send(&frame(BCAST, mac(1), 1)).unwrap();
    recv(&pb);
    recv(&pc);
    // b answers a: unicast, b's own frame.
    pb.send(&frame(mac(1), mac(2), 2)).unwrap();
    recv(&pa);
    // c talks to a: nothing to do with b (a is learned, so it is unicast).
    pc.send(&frame(mac(1), mac(3), 3)).unwrap();
    recv(&pa);
    assert_eq!(tags(&all), vec![1, 2, 3]);
    assert_eq!(tags(&only_b), vec![1, 2]);
    assert_eq!((all.dropped(), only_b.dropped()), (0, 0));

    // Dropping a subscription removes it.
    drop(all);
    let deadline = Instant::now() + Duration::from_secs(5);
    while net.capture_subscribers() != 1 {
        assert!(Instant::now() < deadline, "subscriber not removed");
        std::thread::sleep(Duration::from_millis(10));
    }
    // Removing the port ends its subscribers' stream.
    drop(net.remove_port(b).unwrap());
    assert_eq!(net.capture_subscribers(), 0);
    assert!(matches!(
        only_b.recv_timeout(Duration::from_secs(2)),
        Err(crossbeam_channel::RecvTimeoutError::Disconnected)
    ));
    assert!(matches!(
        net.capture(CaptureScope::Port(b)),
        Err(Error::NoSuchPort(_))
    ));
    let _ = a;
}

#[test]
fn slow_reader_drops_and_limit_holds() {
    let dp = Datapath::start(1).unwrap();
    let net = dp.add_network(SwitchConfig::default()).unwrap();
    let (_a, pa) = port(&net);
    let (_b, pb) = port(&net);
    let cap = net.capture(CaptureScope::Network).unwrap();
    // Never read: past the queue's bound, frames are dropped and counted, and still
    // switched.
    let n = tapnet_switch::runtime::CAPTURE_QUEUE_FRAMES + 100;
    for i in 0..n {
        pa.send(&frame(mac(2), mac(1), (i % 251) as u8)).unwrap();
        recv(&pb);
    }
    assert_eq!(cap.dropped(), 100);
    let caps: Vec<Capture> = (1..MAX_CAPTURES)
        .map(|_| net.capture(CaptureScope::Network).unwrap())
        .collect();
    assert_eq!(net.capture_subscribers(), MAX_CAPTURES);
    assert!(matches!(
        net.capture(CaptureScope::Network),
        Err(Error::TooManyCaptures)
    ));
    drop(caps);
    drop(cap);
}
