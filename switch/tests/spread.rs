//! A network spread over two workers ([`Datapath::add_network_spread`]): multi-queue ports
//! made of Unix datagram socket pairs standing in for a tap's queues. Every frame is
//! checked where it arrives: on the local queue of the shard that read it, relayed to the
//! owner for a port with one queue, flooded to every port but the ingress, learned into
//! the one shared FDB and captured.
#![allow(clippy::unwrap_used)]

use std::io;
use std::os::unix::net::UnixDatagram;
use std::sync::Arc;
use std::time::Duration;
use tapnet_switch::core::{MacAddr, SwitchConfig};
use tapnet_switch::runtime::{
    CaptureScope, DatagramPort, Datapath, Error, FrameIo, NetworkHandle, PortOptions, PortRole,
    PortStats,
};
use tapnet_switch::testing::{frame, mac, wait_until, BCAST};

/// A port with one socket pair per queue; `peers[k]` is the test's end of queue k.
struct MqPort {
    id: u32,
    stats: Arc<PortStats>,
    peers: Vec<UnixDatagram>,
}

impl MqPort {
    fn add(net: &NetworkHandle, queues: usize, role: PortRole) -> MqPort {
        let mut ios: Vec<Box<dyn FrameIo>> = Vec::new();
        let mut peers = Vec::new();
        for _ in 0..queues {
            let (port, peer) = DatagramPort::pair().unwrap();
            peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            ios.push(Box::new(port));
            peers.push(peer);
        }
        let opts = PortOptions {
            role,
            ..PortOptions::default()
        };
        let (id, stats) = net.add_port_queues(ios, opts).unwrap();
        MqPort { id, stats, peers }
    }

    fn recv(&self, q: usize) -> Vec<u8> {
        let mut buf = vec![0u8; 70_000];
        let n = self.peers[q].recv(&mut buf).expect("frame expected");
        buf.truncate(n);
        buf
    }

    fn assert_empty(&self) {
        for (q, peer) in self.peers.iter().enumerate() {
            peer.set_nonblocking(true).unwrap();
            let mut buf = [0u8; 2048];
            let r = peer.recv(&mut buf);
            peer.set_nonblocking(false).unwrap();
            assert_eq!(
                r.unwrap_err().kind(),
                io::ErrorKind::WouldBlock,
                "unexpected frame on queue {q}"
            );
        }
    }
}

#[test]
fn spread_network_switches_on_every_shard() {
    let dp = Datapath::start(2).unwrap();
    let net = dp
        .add_network_spread(SwitchConfig::default(), 2)
        .expect("spread network");
    assert_eq!(net.shards(), 2);
    let a = MqPort::add(&net, 2, PortRole::Endpoint);
    let b = MqPort::add(&net, 2, PortRole::Endpoint);
    // One queue only: a gateway port lives on the owner.
    let g = MqPort::add(&net, 1, PortRole::Gateway);
    let cap = net.capture(CaptureScope::Network).unwrap();

    // A broadcasts on queue 1 (shard 1): B gets it on its shard-1 queue, the gateway
    // (no queue on shard 1) through the owner.
    let arp = frame(BCAST, mac(0xa), 1);
    a.peers[1].send(&arp).unwrap();
    assert_eq!(b.recv(1), arp);
    assert_eq!(g.recv(0), arp);
    assert_eq!(net.relayed(), 1);

    // B answers on queue 0 (the owner): A was learned by shard 1 into the shared FDB, so
    // this is a unicast to A's owner queue only.
    let reply = frame(mac(0xa), mac(0xb), 2);
    b.peers[0].send(&reply).unwrap();
    assert_eq!(a.recv(0), reply);
    g.assert_empty();

    // A unicast from shard 1 to the gateway's MAC goes through the owner.
    let to_gw = frame(mac(0x1), mac(0xa), 3);
    g.peers[0].send(&frame(BCAST, mac(0x1), 4)).unwrap();
    assert_eq!(a.recv(0), frame(BCAST, mac(0x1), 4));
    assert_eq!(b.recv(0), frame(BCAST, mac(0x1), 4));
    a.peers[1].send(&to_gw).unwrap();
    assert_eq!(g.recv(0), to_gw);
    assert_eq!(net.relayed(), 2);

    // Shard 1 to shard 1: B is known, its shard-1 queue gets it, nothing is relayed.
    let ab = frame(mac(0xb), mac(0xa), 5);
    a.peers[1].send(&ab).unwrap();
    assert_eq!(b.recv(1), ab);
    assert_eq!(net.relayed(), 2);

    // One FDB: both MACs learned, whichever shard saw them.
    let fdb = net.fdb().unwrap();
    let port_of = |m: [u8; 6]| {
        fdb.iter()
            .find(|e| e.mac == MacAddr(m))
            .map(|e| e.port)
            .unwrap()
    };
    assert_eq!(port_of(mac(0xa)), a.id);
    assert_eq!(port_of(mac(0xb)), b.id);

    // Counters add up over both queues of a port.
    wait_until("counters", || {
        a.stats.snapshot().rx_packets == 3 && b.stats.snapshot().tx_packets == 3
    });
    assert_eq!(g.stats.snapshot().tx_packets, 2);
    // Shard 1 read A's two frames on queue 1 plus the ab frame; the owner the rest.
    assert_eq!(net.shard_frames(), vec![2, 3]);

    // The capture saw every frame the switch read, from both shards.
    let mut seen = 0;
    while cap.recv_timeout(Duration::from_millis(200)).is_ok() {
        seen += 1;
    }
    assert_eq!(seen, 5);

    for p in [&a, &b, &g] {
        p.assert_empty();
    }

    // Removing A drops its shard-1 queue too: that socket's peer sees nothing more and
    // frames to A's MAC are flooded, not sent to a stale queue.
    net.remove_port(a.id).unwrap();
    b.peers[1].send(&frame(mac(0xa), mac(0xb), 6)).unwrap();
    assert_eq!(g.recv(0), frame(mac(0xa), mac(0xb), 6));
    a.assert_empty();
    net.remove_port(b.id).unwrap();
    net.remove_port(g.id).unwrap();
    net.remove().unwrap();
    drop(dp);
}

#[test]
fn queue_count_checked_and_unwound() {
    let dp = Datapath::start(2).unwrap();
    let single = dp.add_network(SwitchConfig::default()).unwrap();
    assert_eq!(single.shards(), 1);
    let ios: Vec<Box<dyn FrameIo>> = (0..2)
        .map(|_| Box::new(DatagramPort::pair().unwrap().0) as Box<dyn FrameIo>)
        .collect();
    let err = single
        .add_port_queues(ios, PortOptions::default())
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::TooManyQueues {
                queues: 2,
                shards: 1
            }
        ),
        "{err}"
    );
    assert!(single.port_fdb().unwrap().is_empty());
    let err = single
        .add_port_queues(Vec::new(), PortOptions::default())
        .unwrap_err();
    assert!(err.to_string().contains("no queues"), "{err}");

    // More shards than workers is clamped to the workers.
    let spread = dp.add_network_spread(SwitchConfig::default(), 8).unwrap();
    assert_eq!(spread.shards(), 2);
}

#[test]
fn ports_come_and_go_on_a_spread_network_under_traffic() {
    let dp = Datapath::start(2).unwrap();
    let net = dp.add_network_spread(SwitchConfig::default(), 2).unwrap();
    let a = MqPort::add(&net, 2, PortRole::Endpoint);
    // Frames flow on both of A's queues, to a MAC that keeps moving between ports.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let senders: Vec<_> = a
        .peers
        .iter()
        .map(|p| {
            let p = p.try_clone().unwrap();
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut sent = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    // A full socket buffer is fine: the worker drains it.
                    if p.send(&frame(mac(0xb), mac(0xa), 7)).is_ok() {
                        sent += 1;
                    }
                }
                sent
            })
        })
        .collect();
    for round in 0..40u8 {
        let queues = 1 + usize::from(round % 2);
        let b = MqPort::add(&net, queues, PortRole::Endpoint);
        // B announces itself on its last queue, so the FDB points at it.
        b.peers[queues - 1]
            .send(&frame(BCAST, mac(0xb), round))
            .unwrap();
        // A's frames reach B on some queue.
        let mut buf = [0u8; 2048];
        let got = b.peers.iter().any(|p| {
            p.set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            p.recv(&mut buf).is_ok()
        });
        assert!(got, "round {round}: nothing reached B");
        net.remove_port(b.id).unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent: u64 = senders.into_iter().map(|t| t.join().unwrap()).sum();
    assert!(sent > 0);
    // Everything A sent was read and counted, whichever shard read it.
    wait_until("A's frames counted", || {
        a.stats.snapshot().rx_packets >= sent
    });
    // Only A is left: the directory and the FDB agree.
    assert!(net.fdb().unwrap().iter().all(|e| e.port == a.id));
    net.remove_port(a.id).unwrap();
    net.remove().unwrap();
}
