//! Datapath tests over Unix datagram socket pairs standing in for taps.
#![allow(clippy::unwrap_used)]

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::unix::net::UnixDatagram;
use std::sync::Arc;
use std::time::Duration;
use tapnet_switch::core::{DropReason, MacAddr, SwitchConfig};
use tapnet_switch::runtime::{
    DatagramPort, Datapath, Error, FrameIo, NetworkHandle, PortOptions, PortPolicy, PortRole,
    PortStats,
};
use tapnet_switch::testing::{frame, mac, wait_until, BCAST};
use tapnet_switch::VNET_HDR_LEN;

struct TestPort {
    id: u32,
    stats: Arc<PortStats>,
    peer: UnixDatagram,
}

impl TestPort {
    fn add(net: &NetworkHandle) -> TestPort {
        let (port, peer) = DatagramPort::pair().unwrap();
        peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let (id, stats) = net.add_port(Box::new(port)).unwrap();
        TestPort { id, stats, peer }
    }

    fn add_with(net: &NetworkHandle, opts: PortOptions) -> TestPort {
        let (port, peer) = DatagramPort::pair().unwrap();
        peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let (id, stats) = net.add_port_with(Box::new(port), opts).unwrap();
        TestPort { id, stats, peer }
    }

    fn send(&self, f: &[u8]) {
        self.peer.send(f).unwrap();
    }

    fn recv(&self) -> Vec<u8> {
        let mut buf = vec![0u8; 70_000];
        let n = self.peer.recv(&mut buf).expect("frame expected");
        buf.truncate(n);
        buf
    }

    /// Nothing queued right now.
    fn assert_empty(&self) {
        self.peer.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 2048];
        let r = self.peer.recv(&mut buf);
        self.peer.set_nonblocking(false).unwrap();
        assert_eq!(
            r.unwrap_err().kind(),
            io::ErrorKind::WouldBlock,
            "unexpected frame"
        );
    }
}

fn setup(ports: usize) -> (Datapath, NetworkHandle, Vec<TestPort>) {
    let dp = Datapath::start(2).unwrap();
    let net = dp.add_network(SwitchConfig::default()).unwrap();
    let p = (0..ports).map(|_| TestPort::add(&net)).collect();
    (dp, net, p)
}

#[test]
fn flood_then_unicast() {
    let (dp, net, p) = setup(3);
    assert_eq!(p.iter().map(|p| p.id).collect::<Vec<_>>(), vec![0, 1, 2]);

    // A (port 0) broadcasts: ports 1 and 2 get it, port 0 does not.
    let arp = frame(BCAST, mac(0xa), 1);
    p[0].send(&arp);
    assert_eq!(p[1].recv(), arp);
    assert_eq!(p[2].recv(), arp);

    // B (port 1) answers A: unicast to port 0 only.
    let reply = frame(mac(0xa), mac(0xb), 2);
    p[1].send(&reply);
    assert_eq!(
        p[0].recv(),
        reply,
        "vnet header and frame pass through untouched"
    );

    // A to B, now known: unicast to port 1.
    let data = frame(mac(0xb), mac(0xa), 3);
    p[0].send(&data);
    assert_eq!(p[1].recv(), data);

    // A marker broadcast from each sender: it must be the first thing port 2 sees,
    // so none of the unicasts leaked there, and port 0 never got its own broadcast.
    let m0 = frame(BCAST, mac(0xa), 9);
    let m1 = frame(BCAST, mac(0xb), 9);
    p[0].send(&m0);
    assert_eq!(p[2].recv(), m0);
    assert_eq!(p[1].recv(), m0);
    p[1].send(&m1);
    assert_eq!(p[2].recv(), m1);
    assert_eq!(p[0].recv(), m1);
    p[0].assert_empty();
    p[1].assert_empty();
    p[2].assert_empty();

    let fdb = net.fdb().unwrap();
    assert_eq!(fdb.len(), 2);
    assert_eq!(fdb[0].mac, MacAddr(mac(0xa)));
    assert_eq!(fdb[0].port, p[0].id);
    assert_eq!(fdb[1].port, p[1].id);
    assert_eq!(net.counters().unwrap().fdb_limit_hits, 0);
    dp.shutdown();
}

#[test]
fn malformed_frames_are_counted_and_forwarding_continues() {
    let (dp, _net, p) = setup(2);
    let bad_gso = {
        let mut f = frame(mac(2), mac(1), 0);
        f[1] = 7; // no such gso_type
        f
    };
    let bad_csum = {
        let mut f = frame(mac(2), mac(1), 0);
        f[0] = 1; // NEEDS_CSUM
        f[6..8].copy_from_slice(&1000u16.to_le_bytes()); // csum_start past the frame
        f
    };
    let short_ip = frame(mac(2), mac(1), 0)[..VNET_HDR_LEN + 14 + 10].to_vec();
    let mcast_src = frame(mac(2), [0x01, 0, 0x5e, 0, 0, 1], 0);
    let bad: Vec<Vec<u8>> = vec![
        vec![0; 3],                // shorter than the vnet header
        vec![0; VNET_HDR_LEN + 5], // shorter than Ethernet
        short_ip,                  // IPv4 header cut short
        bad_gso,
        bad_csum,
        mcast_src,
        frame(mac(2), [0; 6], 0), // all-zero source
    ];
    for f in &bad {
        p[0].send(f);
    }
    let good = frame(BCAST, mac(1), 7);
    p[0].send(&good);
    assert_eq!(p[1].recv(), good, "switch still forwards after garbage");
    p[1].assert_empty();

    let s = p[0].stats.snapshot();
    assert_eq!(s.rx_packets, 8);
    let drops: std::collections::HashMap<_, _> = s.drops.into_iter().collect();
    assert_eq!(drops[&DropReason::Truncated], 3);
    assert_eq!(drops[&DropReason::BadVnetHdr], 2);
    assert_eq!(drops[&DropReason::BadSourceMac], 2);
    assert_eq!(drops[&DropReason::SameSegment], 0);
    // tx is counted right after the write: the frame can arrive first.
    wait_until("tx counted", || p[1].stats.snapshot().tx_packets == 1);
    dp.shutdown();
}

#[test]
fn gso_super_frame_passes_untouched() {
    let (dp, _net, p) = setup(2);
    let mut f = frame(BCAST, mac(1), 0);
    f[0] = 1; // NEEDS_CSUM
    f[1] = 1; // TCPV4
    f[4..6].copy_from_slice(&1448u16.to_le_bytes());
    f[6..8].copy_from_slice(&34u16.to_le_bytes());
    f[8..10].copy_from_slice(&16u16.to_le_bytes());
    f.resize(VNET_HDR_LEN + 65_000, 0xab);
    p[0].send(&f);
    assert_eq!(p[1].recv(), f);
    wait_until("tx counted", || p[1].stats.snapshot().tx_bytes == 65_000);
    dp.shutdown();
}

#[test]
fn same_segment_is_dropped() {
    let (dp, _net, p) = setup(2);
    p[0].send(&frame(BCAST, mac(1), 0));
    p[0].send(&frame(BCAST, mac(2), 0));
    p[1].recv();
    p[1].recv();
    p[0].send(&frame(mac(2), mac(1), 0));
    let m = frame(BCAST, mac(1), 9);
    p[0].send(&m);
    assert_eq!(p[1].recv(), m);
    assert_eq!(p[0].stats.drops(DropReason::SameSegment), 1);
    dp.shutdown();
}

#[test]
fn counters_add_up() {
    let (dp, _net, p) = setup(3);
    p[1].send(&frame(BCAST, mac(2), 0));
    p[0].recv();
    p[2].recv();
    let n = 200u64;
    let reader = {
        let peer = p[1].peer.try_clone().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            let mut got = 0;
            while got < n {
                peer.recv(&mut buf).unwrap();
                got += 1;
            }
        })
    };
    for i in 0..n {
        p[0].send(&frame(mac(2), mac(1), i as u8));
    }
    reader.join().unwrap();
    wait_until("tx counted", || p[1].stats.snapshot().tx_packets == n);
    // The first frame from mac(1) is unicast too: mac(2) is already known.
    let s0 = p[0].stats.snapshot();
    let s1 = p[1].stats.snapshot();
    let s2 = p[2].stats.snapshot();
    let len = (14 + 46) as u64;
    assert_eq!((s0.rx_packets, s0.rx_bytes), (n, n * len));
    assert_eq!((s1.tx_packets, s1.tx_bytes), (n, n * len));
    assert_eq!((s1.rx_packets, s1.rx_bytes), (1, len));
    assert_eq!(
        s0.tx_packets + s2.tx_packets,
        2,
        "only the broadcast was flooded"
    );
    assert!(s0
        .drops
        .iter()
        .chain(&s1.drops)
        .chain(&s2.drops)
        .all(|&(_, c)| c == 0));
    dp.shutdown();
}

#[test]
fn full_egress_counts_tx_error_and_does_not_stall() {
    let (dp, _net, p) = setup(3);
    p[1].send(&frame(BCAST, mac(2), 0));
    p[0].recv();
    p[2].recv();
    // Nobody reads port 1: its socket fills and writes fail.
    let n = 3000u64;
    for _ in 0..n {
        p[0].send(&frame(mac(2), mac(1), 0));
    }
    wait_until("all frames handled", || {
        let s = p[1].stats.snapshot();
        s.tx_packets + p[1].stats.drops(DropReason::TxError) == n
    });
    assert!(p[1].stats.drops(DropReason::TxError) > 0);
    // Other traffic still flows.
    let m = frame(BCAST, mac(1), 9);
    p[0].send(&m);
    assert_eq!(p[2].recv(), m);
    dp.shutdown();
}

#[test]
fn remove_port_stops_delivery_and_forgets_macs() {
    let (dp, net, p) = setup(3);
    p[1].send(&frame(BCAST, mac(2), 0));
    p[0].recv();
    p[2].recv();
    assert_eq!(net.fdb().unwrap().len(), 1);

    let io: Box<dyn FrameIo> = net.remove_port(p[1].id).unwrap();
    assert!(net.fdb().unwrap().is_empty(), "port 1's MACs are forgotten");
    assert!(matches!(
        net.remove_port(p[1].id),
        Err(Error::NoSuchPort(1))
    ));

    // To mac(2), now unknown: flooded to port 2 only; the removed port gets nothing.
    let f = frame(mac(2), mac(1), 5);
    p[0].send(&f);
    assert_eq!(p[2].recv(), f);
    p[1].assert_empty();
    // Frames sent into the removed port are not read.
    p[1].send(&frame(BCAST, mac(2), 6));
    let m = frame(BCAST, mac(1), 9);
    p[0].send(&m);
    assert_eq!(p[2].recv(), m);
    assert_eq!(p[1].stats.snapshot().rx_packets, 1);

    // Ids are not reused.
    let p3 = TestPort::add(&net);
    assert_eq!(p3.id, 3);
    drop(io);
    dp.shutdown();
}

#[test]
fn dead_port_is_retired_and_others_keep_working() {
    let (dp, net, mut p) = setup(3);
    // Closing the peer makes the port read end-of-stream.
    let gone = p.remove(1);
    drop(gone.peer);
    let m = frame(BCAST, mac(1), 9);
    p[0].send(&m);
    assert_eq!(p[1].recv(), m); // old port 2
    net.remove_port(gone.id).unwrap();
    p[0].send(&m);
    assert_eq!(p[1].recv(), m);
    dp.shutdown();
}

#[test]
fn networks_are_isolated() {
    let dp = Datapath::start(2).unwrap();
    assert_eq!(dp.workers(), 2);
    let n1 = dp.add_network(SwitchConfig::default()).unwrap();
    let n2 = dp.add_network(SwitchConfig::default()).unwrap();
    let n3 = dp.add_network(SwitchConfig::default()).unwrap(); // shares a worker with n1
    let a = [TestPort::add(&n1), TestPort::add(&n1)];
    let b = [TestPort::add(&n2), TestPort::add(&n2)];
    let c = [TestPort::add(&n3), TestPort::add(&n3)];
    assert_eq!(
        (a[0].id, b[0].id, c[0].id),
        (0, 0, 0),
        "port ids are per network"
    );
    for (i, pair) in [&a, &b, &c].iter().enumerate() {
        let f = frame(BCAST, mac(i as u8 + 1), i as u8);
        pair[0].send(&f);
        assert_eq!(pair[1].recv(), f);
    }
    for pair in [&a, &b, &c] {
        pair[0].assert_empty();
        pair[1].assert_empty();
    }
    assert_eq!(n1.fdb().unwrap()[0].mac, MacAddr(mac(1)));
    assert_eq!(n3.fdb().unwrap()[0].mac, MacAddr(mac(3)));
    n1.remove().unwrap();
    // n3, on the same worker, is unaffected.
    let f = frame(BCAST, mac(3), 7);
    c[0].send(&f);
    assert_eq!(c[1].recv(), f);
    n2.remove().unwrap();
    dp.shutdown();
    assert!(matches!(n3.fdb(), Err(Error::WorkerGone)));
    assert!(matches!(n3.counters(), Err(Error::WorkerGone)));
}

#[test]
fn fdb_limit_is_reported() {
    let dp = Datapath::start(1).unwrap();
    let net = dp
        .add_network(SwitchConfig {
            ageing_ms: 300_000,
            fdb_limit: 1,
            ..SwitchConfig::default()
        })
        .unwrap();
    let p = [TestPort::add(&net), TestPort::add(&net)];
    p[0].send(&frame(BCAST, mac(1), 0));
    p[0].send(&frame(BCAST, mac(2), 0));
    p[1].recv();
    p[1].recv();
    assert_eq!(net.fdb().unwrap().len(), 1);
    assert_eq!(net.counters().unwrap().fdb_limit_hits, 1);
    drop(dp); // Drop stops the workers too.
    assert!(matches!(net.fdb(), Err(Error::WorkerGone)));
}

#[test]
fn fdb_port_limit_is_reported_per_port() {
    let dp = Datapath::start(1).unwrap();
    let net = dp
        .add_network(SwitchConfig {
            ageing_ms: 300_000,
            fdb_port_limit: 2,
            ..SwitchConfig::default()
        })
        .unwrap();
    let p = [
        TestPort::add(&net),
        TestPort::add(&net),
        TestPort::add(&net),
    ];
    // Port 0 sends from four MACs: two are learned, two refused and counted.
    for n in 1..=4 {
        p[0].send(&frame(BCAST, mac(n), 0));
        p[1].recv();
        p[2].recv();
    }
    // A later joiner on port 1 is still learned: unicast to it from port 2 is not
    // flooded to port 0.
    p[1].send(&frame(BCAST, mac(9), 0));
    p[0].recv();
    p[2].recv();
    p[2].send(&frame(mac(9), mac(10), 0));
    p[1].recv();
    p[0].assert_empty();
    assert_eq!(net.fdb().unwrap().len(), 4);
    assert_eq!(net.counters().unwrap().fdb_port_limit_hits, 2);
    let ports = net.port_fdb().unwrap();
    let of = |id: u32| ports.iter().find(|(q, _)| *q == id).unwrap().1;
    assert_eq!((of(p[0].id).learned, of(p[0].id).limit_hits), (2, 2));
    assert_eq!((of(p[1].id).learned, of(p[1].id).limit_hits), (1, 0));
    assert_eq!((of(p[2].id).learned, of(p[2].id).limit_hits), (1, 0));
    dp.shutdown();
}

#[test]
fn start_zero_means_one_per_core() {
    let dp = Datapath::start(0).unwrap();
    assert!(dp.workers() >= 1);
    dp.shutdown();
}

#[test]
fn worker_ages_out_fdb_entries() {
    let dp = Datapath::start(1).unwrap();
    let net = dp
        .add_network(SwitchConfig {
            ageing_ms: 10,
            fdb_limit: 16,
            ..SwitchConfig::default()
        })
        .unwrap();
    let p = [TestPort::add(&net), TestPort::add(&net)];
    p[0].send(&frame(BCAST, mac(1), 0));
    p[1].recv();
    assert_eq!(net.fdb().unwrap().len(), 1);
    // The worker expires about once a second, without traffic.
    wait_until("entry aged out", || net.fdb().unwrap().is_empty());
    dp.shutdown();
}

/// A port whose reads fail with an I/O error once `fail` is set; counts `recv` calls.
struct FailingPort {
    inner: DatagramPort,
    fail: Arc<std::sync::atomic::AtomicBool>,
    recvs: Arc<std::sync::atomic::AtomicUsize>,
}

impl std::os::fd::AsRawFd for FailingPort {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.inner.as_raw_fd()
    }
}

impl FrameIo for FailingPort {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use std::sync::atomic::Ordering::SeqCst;
        self.recvs.fetch_add(1, SeqCst);
        if self.fail.load(SeqCst) {
            return Err(io::Error::other("device gone"));
        }
        self.inner.recv(buf)
    }
    fn send(&mut self, frame: &[u8]) -> io::Result<usize> {
        self.inner.send(frame)
    }
}

#[test]
fn port_with_read_errors_is_deregistered() {
    use std::sync::atomic::Ordering::SeqCst;
    let (dp, net, p) = setup(2);
    let (inner, peer) = DatagramPort::pair().unwrap();
    let fail = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let recvs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let io = FailingPort {
        inner,
        fail: Arc::clone(&fail),
        recvs: Arc::clone(&recvs),
    };
    let (id, _stats) = net.add_port(Box::new(io)).unwrap();

    fail.store(true, SeqCst);
    peer.send(&frame(BCAST, mac(5), 0)).unwrap();
    wait_until("failed read", || recvs.load(SeqCst) > 0);
    // A frame from a healthy port gets through (it is flooded to the failed port as well).
    let m = frame(BCAST, mac(1), 9);
    p[0].send(&m);
    assert_eq!(p[1].recv(), m);
    let after = recvs.load(SeqCst);
    // More input on the failed port: it is out of the poll, so nobody reads it.
    peer.send(&frame(BCAST, mac(5), 1)).unwrap();
    p[0].send(&m);
    assert_eq!(p[1].recv(), m);
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(
        recvs.load(SeqCst),
        after,
        "a failed port is not polled again"
    );
    // The control plane can still remove it.
    net.remove_port(id).unwrap();
    dp.shutdown();
}

// ---- Port policy ----

fn ip4(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 0, n)
}

/// An endpoint owning mac(n) and 10.0.0.n, anti-spoofing on.
fn endpoint(n: u8) -> PortOptions {
    PortOptions {
        role: PortRole::Endpoint,
        policy: Some(PortPolicy::new(MacAddr(mac(n)), vec![ip4(n)], vec![])),
        fdb_limit: None,
    }
}

fn gateway() -> PortOptions {
    PortOptions {
        role: PortRole::Gateway,
        policy: None,
        fdb_limit: None,
    }
}

/// vnet header + Ethernet + IPv4 header from `src_ip`, padded to 60 bytes with `tag`.
fn ipv4(dst: [u8; 6], src: [u8; 6], src_ip: Ipv4Addr, tag: u8) -> Vec<u8> {
    let mut f = frame(dst, src, tag);
    let l3 = VNET_HDR_LEN + 14;
    f[l3..l3 + 20].fill(0);
    f[l3] = 0x45;
    f[l3 + 8] = 64;
    f[l3 + 9] = 17;
    f[l3 + 12..l3 + 16].copy_from_slice(&src_ip.octets());
    f
}

/// vnet header + Ethernet + IPv6 header from `src_ip`.
fn ipv6(dst: [u8; 6], src: [u8; 6], src_ip: Ipv6Addr) -> Vec<u8> {
    let mut f = frame(dst, src, 0);
    let l3 = VNET_HDR_LEN + 14;
    f[VNET_HDR_LEN + 12..l3].copy_from_slice(&[0x86, 0xdd]);
    f[l3] = 0x60;
    f[l3 + 8..l3 + 24].copy_from_slice(&src_ip.octets());
    f
}

/// vnet header + broadcast Ethernet/IPv4 ARP request with the given sender fields.
fn arp(src: [u8; 6], sha: [u8; 6], spa: Ipv4Addr) -> Vec<u8> {
    let mut f = frame(BCAST, src, 0);
    let l3 = VNET_HDR_LEN + 14;
    f[VNET_HDR_LEN + 12..l3].copy_from_slice(&[0x08, 0x06]);
    f[l3..l3 + 8].copy_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    f[l3 + 8..l3 + 14].copy_from_slice(&sha);
    f[l3 + 14..l3 + 18].copy_from_slice(&spa.octets());
    f
}

fn drops(p: &TestPort) -> std::collections::HashMap<DropReason, u64> {
    p.stats.snapshot().drops.into_iter().collect()
}

#[test]
fn spoofed_frames_are_dropped_and_counted() {
    let dp = Datapath::start(1).unwrap();
    let net = dp.add_network(SwitchConfig::default()).unwrap();
    let a = TestPort::add_with(&net, endpoint(1));
    let b = TestPort::add_with(&net, endpoint(2));
    let spoofed = [
        ipv4(BCAST, mac(2), ip4(1), 0),                      // B's MAC
        ipv4(BCAST, mac(1), ip4(2), 0),                      // B's IPv4
        ipv4(BCAST, mac(1), Ipv4Addr::UNSPECIFIED, 0),       // 0.0.0.0 outside ARP
        ipv6(BCAST, mac(1), "2001:db8::1".parse().unwrap()), // not A's IPv6
        arp(mac(1), mac(2), ip4(1)),                         // ARP sender MAC
        arp(mac(1), mac(1), ip4(2)),                         // ARP sender IP
    ];
    for f in &spoofed {
        a.send(f);
    }
    let allowed = [
        arp(mac(1), mac(1), Ipv4Addr::UNSPECIFIED), // RFC 5227 probe
        ipv6(BCAST, mac(1), Ipv6Addr::UNSPECIFIED), // DAD
        ipv6(BCAST, mac(1), "fe80::1".parse().unwrap()),
        ipv4(BCAST, mac(1), ip4(1), 9),
    ];
    for f in &allowed {
        a.send(f);
    }
    for f in &allowed {
        assert_eq!(&b.recv(), f);
    }
    b.assert_empty();
    let d = drops(&a);
    assert_eq!(d[&DropReason::SpoofedMac], 1);
    assert_eq!(d[&DropReason::SpoofedIp], 3);
    assert_eq!(d[&DropReason::SpoofedArp], 2);
    assert_eq!(a.stats.snapshot().rx_packets, 10);
    // Nothing spoofed was learned: only A's own MAC, on A's port.
    let fdb = net.fdb().unwrap();
    assert_eq!(fdb.len(), 1);
    assert_eq!((fdb[0].mac, fdb[0].port), (MacAddr(mac(1)), a.id));
    dp.shutdown();
}

#[test]
fn set_policy_changes_addresses_and_can_turn_checks_off() {
    let dp = Datapath::start(1).unwrap();
    let net = dp.add_network(SwitchConfig::default()).unwrap();
    let a = TestPort::add_with(&net, endpoint(1));
    let b = TestPort::add(&net);
    // A gets a new address: the old one is now spoofed.
    net.set_policy(
        a.id,
        Some(PortPolicy::new(MacAddr(mac(1)), vec![ip4(7)], vec![])),
    )
    .unwrap();
    a.send(&ipv4(BCAST, mac(1), ip4(1), 1));
    let ok = ipv4(BCAST, mac(1), ip4(7), 2);
    a.send(&ok);
    assert_eq!(b.recv(), ok);
    assert_eq!(a.stats.drops(DropReason::SpoofedIp), 1);
    // Checks off (port_security=false): anything goes.
    let mut off = PortPolicy::new(MacAddr(mac(1)), vec![ip4(7)], vec![]);
    off.spoof_check = false;
    net.set_policy(a.id, Some(off)).unwrap();
    let any = ipv4(BCAST, mac(9), ip4(99), 3);
    a.send(&any);
    assert_eq!(b.recv(), any);
    net.set_policy(a.id, None).unwrap();
    a.send(&any);
    assert_eq!(b.recv(), any);
    assert_eq!(a.stats.drops(DropReason::SpoofedIp), 1);
    assert!(matches!(
        net.set_policy(42, None),
        Err(Error::NoSuchPort(42))
    ));
    dp.shutdown();
}

#[test]
fn gateway_port_is_not_checked() {
    let dp = Datapath::start(1).unwrap();
    let net = dp.add_network(SwitchConfig::default()).unwrap();
    let gw = TestPort::add_with(
        &net,
        PortOptions {
            role: PortRole::Gateway,
            policy: Some(PortPolicy::new(MacAddr(mac(1)), vec![ip4(1)], vec![])),
            fdb_limit: None,
        },
    );
    let a = TestPort::add_with(&net, endpoint(2));
    // NATed reply: from the gateway MAC, with an outside source address.
    let f = ipv4(BCAST, mac(1), Ipv4Addr::new(93, 184, 216, 34), 1);
    gw.send(&f);
    assert_eq!(a.recv(), f);
    assert!(gw.stats.snapshot().drops.iter().all(|&(_, c)| c == 0));
    dp.shutdown();
}

#[test]
fn icc_off_endpoints_reach_only_the_gateway() {
    let dp = Datapath::start(1).unwrap();
    let net = dp
        .add_network(SwitchConfig {
            icc: false,
            ..SwitchConfig::default()
        })
        .unwrap();
    let gw = TestPort::add_with(&net, gateway());
    let a = TestPort::add_with(&net, endpoint(2));
    let b = TestPort::add_with(&net, endpoint(3));
    // A broadcasts: only the gateway hears it.
    let bc = arp(mac(2), mac(2), ip4(2));
    a.send(&bc);
    assert_eq!(gw.recv(), bc);
    // B broadcasts: same; and the gateway's broadcast reaches both.
    let bc = arp(mac(3), mac(3), ip4(3));
    b.send(&bc);
    assert_eq!(gw.recv(), bc);
    let g = ipv4(BCAST, mac(1), ip4(1), 1);
    gw.send(&g);
    assert_eq!(a.recv(), g);
    assert_eq!(b.recv(), g);
    // A to B, both known: denied. Unknown unicast from A goes to the gateway only.
    a.send(&ipv4(mac(3), mac(2), ip4(2), 2));
    let unknown = ipv4(mac(0x77), mac(2), ip4(2), 3);
    a.send(&unknown);
    assert_eq!(gw.recv(), unknown);
    // A to the gateway and back: fine.
    let up = ipv4(mac(1), mac(2), ip4(2), 4);
    a.send(&up);
    assert_eq!(gw.recv(), up);
    let down = ipv4(mac(2), mac(1), ip4(1), 5);
    gw.send(&down);
    assert_eq!(a.recv(), down);
    a.assert_empty();
    b.assert_empty();
    gw.assert_empty();
    assert_eq!(a.stats.drops(DropReason::IccDenied), 1);
    assert_eq!(
        b.stats.snapshot().tx_packets,
        1,
        "only the gateway's broadcast"
    );
    // Learning still happened for everyone.
    assert_eq!(net.fdb().unwrap().len(), 3);
    dp.shutdown();
}

#[test]
fn worker_init_runs_on_every_worker_before_it_serves() {
    let names = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = Arc::clone(&names);
    let init: tapnet_switch::runtime::WorkerInit = Arc::new(move || {
        let name = std::thread::current().name().unwrap_or("").to_string();
        seen.lock().unwrap().push(name);
        Ok(())
    });
    let dp = Datapath::start_with(2, Some(init)).unwrap();
    let mut got = names.lock().unwrap().clone();
    got.sort();
    assert_eq!(
        got,
        vec!["tapnet-dp0", "tapnet-dp1"],
        "ran on each worker, once"
    );
    // The workers serve as usual.
    forwards_a_broadcast(&dp);
    dp.shutdown();
}

#[test]
fn a_failing_worker_init_fails_the_start_and_stops_the_workers() {
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let first = Arc::new(std::sync::Mutex::new(None));
    let (n, tid) = (Arc::clone(&calls), Arc::clone(&first));
    let init: tapnet_switch::runtime::WorkerInit = Arc::new(move || {
        // The second worker fails: the first, already running, must be stopped.
        if n.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 1 {
            return Err(io::Error::from_raw_os_error(libc_eacces()));
        }
        *tid.lock().unwrap() = std::fs::read_link("/proc/thread-self").ok();
        Ok(())
    });
    let err = Datapath::start_with(3, Some(init))
        .err()
        .expect("start fails");
    let msg = err.to_string();
    assert!(msg.contains("set up datapath worker"), "{msg}");
    assert!(msg.contains("denied"), "{msg}");
    assert_eq!(
        calls.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "no worker is started after the failing one"
    );
    // The first worker was stopped and joined: its thread is gone.
    let task = first
        .lock()
        .unwrap()
        .clone()
        .expect("first worker's thread");
    assert!(
        !std::path::Path::new("/proc").join(&task).exists(),
        "{task:?} still runs"
    );
}

/// A network on `dp` with two ports forwards a broadcast from one to the other.
fn forwards_a_broadcast(dp: &Datapath) {
    let net = dp.add_network(SwitchConfig::default()).unwrap();
    let a = TestPort::add(&net);
    let b = TestPort::add(&net);
    let f = frame(BCAST, mac(0xa), 1);
    a.send(&f);
    assert_eq!(b.recv(), f);
}

/// `start_with_tick`: each worker makes its own tick on its own thread and calls it with
/// the datapath clock, also while frames flow.
#[test]
fn each_worker_calls_its_own_tick_with_the_clock() {
    use std::sync::Mutex;
    type Calls = Arc<Mutex<Vec<(String, u64)>>>;
    let calls: Calls = Arc::default();
    let made = Arc::clone(&calls);
    let maker: tapnet_switch::runtime::WorkerTickMaker = Arc::new(move || {
        let calls = Arc::clone(&made);
        let name = std::thread::current().name().unwrap_or("").to_string();
        let tick = move |now: u64| calls.lock().unwrap().push((name.clone(), now));
        Some(Box::new(tick) as tapnet_switch::runtime::WorkerTick)
    });
    let dp = Datapath::start_with_tick(2, None, Some(maker)).unwrap();
    forwards_a_broadcast(&dp);
    // Idle workers tick at least once a second (their poll's longest sleep).
    std::thread::sleep(std::time::Duration::from_millis(2100));
    dp.shutdown();
    let calls = calls.lock().unwrap().clone();
    for w in ["tapnet-dp0", "tapnet-dp1"] {
        let times: Vec<u64> = calls.iter().filter(|(n, _)| n == w).map(|c| c.1).collect();
        assert!(times.len() >= 2, "{w}: {calls:?}");
        assert!(times.windows(2).all(|p| p[0] <= p[1]), "{w}: {times:?}");
    }
}

/// EACCES (the error a refused nice value gives).
fn libc_eacces() -> i32 {
    13
}
