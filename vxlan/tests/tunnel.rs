//! Two switches joined by VXLAN ports over loopback UDP; endpoints are socketpair ends.
//! Needs no privileges.
#![allow(clippy::unwrap_used)]

use std::net::{SocketAddr, UdpSocket};
use std::os::unix::net::UnixDatagram;
use std::sync::Arc;
use std::time::Duration;
use tapnet_switch::core::SwitchConfig;
use tapnet_switch::runtime::{
    DatagramPort, Datapath, NetworkHandle, PortControl, PortReply, PortStats,
};
use tapnet_switch::testing::{frame, mac, wait_until, BCAST};
use tapnet_switch::VNET_HDR_LEN;
use tapnet_vxlan::header::{decap, encap, Vni};
use tapnet_vxlan::table::TableConfig;
use tapnet_vxlan::{VxlanControl, VxlanPort, VxlanStats, VxlanStatsSnapshot};
use tapnet_wire::checksum;

fn vni() -> Vni {
    Vni::new(4242).unwrap()
}

struct Endpoint {
    peer: UnixDatagram,
    stats: Arc<PortStats>,
}

impl Endpoint {
    fn add(net: &NetworkHandle) -> Endpoint {
        let (port, peer) = DatagramPort::pair().unwrap();
        peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let (_, stats) = net.add_port(Box::new(port)).unwrap();
        Endpoint { peer, stats }
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
}

/// One side: a network with a VXLAN port and one endpoint.
struct Side {
    net: NetworkHandle,
    tunnel: u32,
    addr: SocketAddr,
    vx: Arc<VxlanStats>,
    ep: Endpoint,
}

impl Side {
    fn new(dp: &Datapath) -> Side {
        let net = dp.add_network(SwitchConfig::default()).unwrap();
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = VxlanPort::new(sock, vni(), TableConfig::default()).unwrap();
        let addr = port.local_addr().unwrap();
        let vx = port.stats();
        let (tunnel, _) = net.add_port(Box::new(port)).unwrap();
        let ep = Endpoint::add(&net);
        Side {
            net,
            tunnel,
            addr,
            vx,
            ep,
        }
    }
    fn control(&self, msg: VxlanControl) -> PortReply {
        self.net
            .control_port(self.tunnel, PortControl::Custom(Box::new(msg)))
            .unwrap()
    }
    fn set_peers(&self, peers: &[SocketAddr]) {
        assert!(matches!(
            self.control(VxlanControl::SetPeers(peers.to_vec())),
            PortReply::Done
        ));
    }
    fn vx(&self) -> VxlanStatsSnapshot {
        self.vx.snapshot()
    }
}

/// A bare VTEP: a UDP socket that reads what the ports send.
fn raw_vtep() -> (UdpSocket, SocketAddr) {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let a = s.local_addr().unwrap();
    (s, a)
}

fn raw_recv(s: &UdpSocket) -> (Vec<u8>, SocketAddr) {
    let mut buf = vec![0u8; 70_000];
    let (n, from) = s.recv_from(&mut buf).expect("datagram expected");
    buf.truncate(n);
    (buf, from)
}

fn pair() -> (Datapath, Side, Side, UdpSocket, SocketAddr) {
    let dp = Datapath::start(2).unwrap();
    let a = Side::new(&dp);
    let b = Side::new(&dp);
    let (c, c_addr) = raw_vtep();
    a.set_peers(&[b.addr, c_addr]);
    b.set_peers(&[a.addr, c_addr]);
    (dp, a, b, c, c_addr)
}

#[test]
fn broadcast_floods_to_every_vtep_and_the_reply_takes_the_learned_path() {
    let (dp, a, b, c, _) = pair();

    // A's endpoint broadcasts: B's endpoint gets it unchanged (behind a zero vnet
    // header), and the third VTEP gets a copy (head-end replication).
    let hello = frame(BCAST, mac(0xa), 1);
    a.ep.send(&hello);
    assert_eq!(b.ep.recv(), hello);
    let (d, from) = raw_recv(&c);
    assert_eq!(from, a.addr);
    assert_eq!(d[..8], [0x08, 0, 0, 0, 0, 0x10, 0x92, 0], "VNI 4242");
    assert_eq!(d[8..], hello[VNET_HDR_LEN..]);

    // B's endpoint answers A: B's switch learned A's MAC on the tunnel port, the tunnel
    // learned A's MAC behind A's address: one datagram, to A only.
    let reply = frame(mac(0xa), mac(0xb), 2);
    b.ep.send(&reply);
    assert_eq!(a.ep.recv(), reply);

    // A marker broadcast from B: the first thing C sees, so the unicast was not flooded.
    let marker = frame(BCAST, mac(0xb), 9);
    b.ep.send(&marker);
    let (d, from) = raw_recv(&c);
    assert_eq!((from, &d[8..]), (b.addr, &marker[VNET_HDR_LEN..]));
    assert_eq!(a.ep.recv(), marker);

    // And A to B now goes unicast too: A learned B's MAC from the reply.
    let data = frame(mac(0xb), mac(0xa), 3);
    a.ep.send(&data);
    assert_eq!(b.ep.recv(), data);

    wait_until("counters", || {
        a.vx().tx_datagrams == 3
            && b.vx().tx_datagrams == 3
            && b.ep.stats.snapshot().tx_packets == 2
    });
    let (sa, sb) = (a.vx(), b.vx());
    assert_eq!((sa.tx_frames, sa.tx_flooded, sa.tx_datagrams), (2, 1, 3));
    assert_eq!((sb.tx_frames, sb.tx_flooded, sb.tx_datagrams), (2, 1, 3));
    assert_eq!((sa.rx_datagrams, sa.learned), (2, 1));
    assert_eq!((sb.rx_datagrams, sb.learned), (2, 1));
    assert_eq!(sa.rx_malformed + sa.rx_wrong_vni + sa.tx_errors, 0);
    assert_eq!(a.ep.stats.snapshot().rx_packets, 2);
    assert_eq!(b.ep.stats.snapshot().tx_packets, 2);

    // The stats message answers the same numbers.
    match b.control(VxlanControl::Stats) {
        PortReply::Custom(s) => {
            assert_eq!(*s.downcast::<VxlanStatsSnapshot>().unwrap(), b.vx())
        }
        r => panic!("unexpected {r:?}"),
    }
    dp.shutdown();
}

#[test]
fn wrong_vni_and_malformed_datagrams_are_dropped_and_counted() {
    let (dp, _a, b, c, _) = pair();
    let inner = frame(BCAST, mac(0xc), 5);
    let mut d = vec![0u8; 200];

    let n = encap(Vni::new(99).unwrap(), &inner[VNET_HDR_LEN..], &mut d).unwrap();
    c.send_to(&d[..n], b.addr).unwrap();
    c.send_to(&[1, 2, 3], b.addr).unwrap();
    c.send_to(&[0; 8], b.addr).unwrap(); // I flag clear
    let mut cut = [0u8; 8 + 5];
    cut[0] = 0x08;
    c.send_to(&cut, b.addr).unwrap(); // inner frame cut short
    c.send_to(&[], b.addr).unwrap();

    // The port is still there: a good datagram gets through.
    let n = encap(vni(), &inner[VNET_HDR_LEN..], &mut d).unwrap();
    c.send_to(&d[..n], b.addr).unwrap();
    assert_eq!(b.ep.recv(), inner);

    let s = b.vx();
    assert_eq!(s.rx_wrong_vni, 1);
    assert_eq!(s.rx_malformed, 4);
    assert_eq!(s.rx_datagrams, 1);
    dp.shutdown();
}

#[test]
fn gso_super_frames_are_segmented_before_encapsulation() {
    let (dp, a, _b, c, _) = pair();
    // TSO4 super-frame to an unknown unicast MAC (flooded: C and B get it), 3000 bytes
    // of payload in 1000-byte segments, checksum left to the datapath.
    let payload = 3000;
    let mut f = vec![0u8; VNET_HDR_LEN];
    f[0] = 1; // NEEDS_CSUM
    f[1] = 1; // TCPV4
    f[2..4].copy_from_slice(&54u16.to_le_bytes());
    f[4..6].copy_from_slice(&1000u16.to_le_bytes());
    f[6..8].copy_from_slice(&34u16.to_le_bytes());
    f[8..10].copy_from_slice(&16u16.to_le_bytes());
    f.extend_from_slice(&mac(0xd));
    f.extend_from_slice(&mac(0xa));
    f.extend_from_slice(&[0x08, 0x00]);
    let total = (20 + 20 + payload) as u16;
    f.extend_from_slice(&[0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 6, 0, 0]);
    f[VNET_HDR_LEN + 16..VNET_HDR_LEN + 18].copy_from_slice(&total.to_be_bytes());
    f.extend_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2]);
    f.extend_from_slice(&[0x30, 0x39, 0x00, 0x50, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x18]);
    f.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0]);
    f.resize(VNET_HDR_LEN + 54 + payload, 0x5a);
    a.ep.send(&f);

    for i in 0..3 {
        let (d, _) = raw_recv(&c);
        let (v, inner) = decap(&d).unwrap();
        assert_eq!(v, vni());
        assert_eq!(inner.len(), 54 + 1000, "segment {i}");
        assert!(checksum::verify(&inner[14..34]), "IPv4 header checksum");
        let tcp = &inner[34..];
        let sum = checksum::pseudo_v4(
            [10, 0, 0, 1].into(),
            [10, 0, 0, 2].into(),
            6,
            tcp.len() as u32,
        )
        .add_bytes(tcp);
        assert_eq!(sum.fold(), 0xffff, "TCP checksum of segment {i}");
        let seq = u32::from_be_bytes(tcp[4..8].try_into().unwrap());
        assert_eq!(seq, 1 + 1000 * i);
    }
    wait_until("counters", || a.vx().tx_datagrams == 6);
    let s = a.vx();
    assert_eq!((s.tx_frames, s.tx_flooded, s.tx_invalid), (3, 3, 0));
    assert_eq!(
        s.tx_gathered, 3,
        "sent gathered: headers + slices of the frame"
    );
    dp.shutdown();
}

#[test]
fn arp_for_a_known_remote_endpoint_is_answered_locally() {
    let (dp, a, b, c, _) = pair();
    let remote_mac = mac(0xb);
    a.control(VxlanControl::SetNeighbours(vec![(
        "10.0.0.2".parse().unwrap(),
        remote_mac.into(),
    )]));
    let mut req = vec![0u8; VNET_HDR_LEN];
    req.extend_from_slice(&BCAST);
    req.extend_from_slice(&mac(0xa));
    req.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    req.extend_from_slice(&mac(0xa));
    req.extend_from_slice(&[10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 10, 0, 0, 2]);
    a.ep.send(&req);
    let reply = a.ep.recv();
    assert_eq!(reply[..VNET_HDR_LEN], [0; VNET_HDR_LEN]);
    let arp = &reply[VNET_HDR_LEN..];
    assert_eq!(arp[..6], mac(0xa));
    assert_eq!(arp[6..12], remote_mac);
    assert_eq!(arp[20..22], [0, 2], "a reply");
    assert_eq!(arp[22..28], remote_mac);
    assert_eq!(arp[28..32], [10, 0, 0, 2]);

    // Nothing was tunnelled: the first thing C and B see is a marker.
    let marker = frame(BCAST, mac(0xa), 9);
    a.ep.send(&marker);
    assert_eq!(raw_recv(&c).0[8..], marker[VNET_HDR_LEN..]);
    assert_eq!(b.ep.recv(), marker);
    let s = a.vx();
    assert_eq!(
        (s.suppressed, s.learned),
        (1, 0),
        "own replies are not learned"
    );
    dp.shutdown();
}

#[test]
fn control_refuses_foreign_messages() {
    let (dp, a, _b, _c, _) = pair();
    let e = a
        .net
        .control_port(a.tunnel, PortControl::Custom(Box::new(7u32)))
        .unwrap_err();
    assert!(e.to_string().contains("VxlanControl"), "{e}");
    dp.shutdown();
}

#[test]
fn datagrams_from_unknown_vteps_are_dropped_and_counted() {
    let (dp, _a, b, c, _) = pair();
    let inner = frame(BCAST, mac(0xc), 7);
    let mut d = vec![0u8; 200];
    let n = encap(vni(), &inner[VNET_HDR_LEN..], &mut d).unwrap();

    // A stranger (another address than any peer) is not heard, and nothing is learned.
    let stranger = UdpSocket::bind("127.0.0.2:0").unwrap();
    stranger.send_to(&d[..n], b.addr).unwrap();
    stranger.send_to(&d[..n], b.addr).unwrap();
    // A peer is: its frame is the only thing B's endpoint gets.
    c.send_to(&d[..n], b.addr).unwrap();
    assert_eq!(b.ep.recv(), inner);
    // (Loopback may deliver the three datagrams in any order.)
    wait_until("the drops", || b.vx().unknown_vtep == 2);
    let s = b.vx();
    assert_eq!((s.unknown_vtep, s.rx_datagrams, s.learned), (2, 1, 1));

    // Once C's address is no longer a peer's, C is a stranger too (peers are known by
    // IP address: a VTEP may send from any port).
    b.set_peers(&["127.0.0.3:4789".parse().unwrap()]);
    let later = frame(BCAST, mac(0xc), 8);
    let n = encap(vni(), &later[VNET_HDR_LEN..], &mut d).unwrap();
    c.send_to(&d[..n], b.addr).unwrap();
    wait_until("the drop", || b.vx().unknown_vtep == 3);
    assert_eq!(b.vx().rx_datagrams, 1);
    assert_eq!(b.ep.stats.snapshot().tx_packets, 1);
    dp.shutdown();
}

/// A TSO4 super-frame (vnet header + frame) from mac(0xa) to `dst`: `payload` bytes in
/// `mss`-byte segments, PSH on the last, checksum left to the datapath.
fn tso4(dst: [u8; 6], payload: usize, mss: u16) -> Vec<u8> {
    let mut f = vec![0u8; VNET_HDR_LEN];
    f[0] = 1; // NEEDS_CSUM
    f[1] = 1; // TCPV4
    f[2..4].copy_from_slice(&54u16.to_le_bytes());
    f[4..6].copy_from_slice(&mss.to_le_bytes());
    f[6..8].copy_from_slice(&34u16.to_le_bytes());
    f[8..10].copy_from_slice(&16u16.to_le_bytes());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&mac(0xa));
    f.extend_from_slice(&[0x08, 0x00]);
    let total = (20 + 20 + payload) as u16;
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&total.to_be_bytes());
    f.extend_from_slice(&[0, 1, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2]);
    f.extend_from_slice(&[0x30, 0x39, 0x00, 0x50, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x18]);
    f.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0]);
    for i in 0..payload {
        f.push((i * 7 % 251) as u8);
    }
    f
}

#[test]
fn a_super_frame_crosses_the_tunnel_as_one_gso_send_and_comes_out_merged() {
    let (dp, a, b, c, _) = pair();
    // 65,000 bytes in 1,400-byte segments: 47 datagrams (the last short), sent as two
    // UDP GSO sends per VTEP (44 + 3: a send carries at most 65,000 bytes), read by B's
    // GRO socket as two batches and merged back into super-frames: one, or two if the
    // second batch was not there yet when the first was handed out.
    let sf = tso4(mac(0xb), 65_000, 1400);
    a.ep.send(&sf);
    let s = &sf[VNET_HDR_LEN..];
    let mut payload = Vec::new();
    let mut frames = 0u64;
    while payload.len() < 65_000 {
        let got = b.ep.recv();
        frames += 1;
        let hdr = &got[..VNET_HDR_LEN];
        let g = &got[VNET_HDR_LEN..];
        let len = g.len() - 54;
        assert!(len > 1400, "frame {frames}: merged, not a lone segment");
        assert_eq!(hdr[0], 1, "NEEDS_CSUM");
        assert_eq!(hdr[1], 1, "GSO_TCPV4");
        assert_eq!(u16::from_le_bytes([hdr[4], hdr[5]]), 1400, "gso_size");
        assert_eq!(u16::from_le_bytes([hdr[2], hdr[3]]), 54, "hdr_len");
        assert_eq!(
            (
                u16::from_le_bytes([hdr[6], hdr[7]]),
                u16::from_le_bytes([hdr[8], hdr[9]])
            ),
            (34, 16)
        );
        assert_eq!(
            g[..16],
            s[..16],
            "Ethernet and IPv4 header up to the length"
        );
        assert_eq!(u16::from_be_bytes([g[16], g[17]]) as usize, 40 + len);
        assert!(checksum::verify(&g[14..34]), "IPv4 header checksum");
        assert_eq!(g[26..38], s[26..38], "addresses, ports");
        let seq = u32::from_be_bytes(g[38..42].try_into().unwrap());
        assert_eq!(seq as usize, 1 + payload.len());
        assert_eq!(g[42..47], s[42..47], "ack, data offset");
        let last = payload.len() + len == 65_000;
        assert_eq!(
            g[47],
            if last { 0x18 } else { 0x10 },
            "PSH on the last only"
        );
        assert_eq!(g[48..50], s[48..50], "window");
        // The TCP checksum field holds the pseudo-header sum of the whole.
        let pseudo = checksum::pseudo_v4(
            [10, 0, 0, 1].into(),
            [10, 0, 0, 2].into(),
            6,
            20 + len as u32,
        );
        assert_eq!(g[50..52], pseudo.fold().to_be_bytes());
        payload.extend_from_slice(&g[54..]);
    }
    assert_eq!(payload, s[54..], "every payload byte, in order");
    assert!(frames <= 2, "{frames} frames");

    // The bare VTEP (no GRO) got the same 47 datagrams one by one, each complete.
    for i in 0..47u32 {
        let (d, _) = raw_recv(&c);
        let (_, inner) = decap(&d).unwrap();
        let tcp = &inner[34..];
        let seq = u32::from_be_bytes(tcp[4..8].try_into().unwrap());
        assert_eq!(seq, 1 + 1400 * i);
        let sum = checksum::pseudo_v4(
            [10, 0, 0, 1].into(),
            [10, 0, 0, 2].into(),
            6,
            tcp.len() as u32,
        )
        .add_bytes(tcp);
        assert_eq!(sum.fold(), 0xffff, "TCP checksum of segment {i}");
    }
    wait_until("counters", || {
        b.vx().rx_datagrams == 47
            && a.vx().tx_datagrams == 94
            && b.ep.stats.snapshot().tx_packets == frames
    });
    let (sa, sb) = (a.vx(), b.vx());
    assert_eq!((sa.tx_frames, sa.tx_datagrams, sa.gso_refused), (47, 94, 0));
    assert_eq!(sa.tx_gathered, 47);
    assert_eq!((sb.rx_datagrams, sb.rx_merged), (47, 47 - frames));
    dp.shutdown();
}

#[test]
fn a_super_frame_to_a_known_vtep_goes_out_gathered_to_it_alone() {
    let (dp, a, b, c, _) = pair();
    c.set_nonblocking(true).unwrap();
    assert!(matches!(
        a.control(VxlanControl::SetStatics(vec![(
            tapnet_wire::MacAddr(mac(0xb)),
            b.addr
        )])),
        PortReply::Done
    ));
    // 10 segments of 1,000 bytes, unicast to B: B's endpoint gets every payload byte
    // (merged), C nothing; no segment was copied in user space on A.
    let sf = tso4(mac(0xb), 10_000, 1000);
    a.ep.send(&sf);
    let mut payload = Vec::new();
    while payload.len() < 10_000 {
        let got = b.ep.recv();
        let g = &got[VNET_HDR_LEN..];
        let h = &sf[VNET_HDR_LEN..];
        assert_eq!(
            (&g[..16], &g[26..38]),
            (&h[..16], &h[26..38]),
            "addresses, ports"
        );
        assert!(checksum::verify(&g[14..34]), "IPv4 header checksum");
        payload.extend_from_slice(&g[54..]);
    }
    assert_eq!(payload, sf[VNET_HDR_LEN + 54..]);
    // A one-segment TSO frame takes the copying way, and arrives as well.
    a.ep.send(&tso4(mac(0xb), 700, 1000));
    let got = b.ep.recv();
    assert_eq!(
        got[VNET_HDR_LEN + 54..],
        tso4(mac(0xb), 700, 1000)[VNET_HDR_LEN + 54..]
    );
    wait_until("counters", || a.vx().tx_datagrams == 11);
    let sa = a.vx();
    assert_eq!(
        (sa.tx_frames, sa.tx_gathered, sa.tx_flooded, sa.tx_errors),
        (11, 10, 0, 0)
    );
    let mut buf = [0u8; 2000];
    assert!(c.recv(&mut buf).is_err(), "nothing flooded to C");
    dp.shutdown();
}

#[test]
fn consecutive_super_frames_to_one_vtep_go_out_as_full_gso_sends() {
    use tapnet_switch::runtime::{FrameBatch, FrameIo, Frames, RECV_BUF_LEN};
    use tapnet_vxlan::udp;
    // A port alone (no switch): its send_batch is called directly, as the switch does.
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut port = VxlanPort::new(sock, vni(), TableConfig::default()).unwrap();
    let stats = port.stats();
    let (rx, rx_addr) = raw_vtep();
    assert!(udp::enable_gro(&rx), "this kernel has UDP_GRO");
    udp::set_buffers(&rx); // 6 batches of up to 64 KiB: more than the default buffer
    rx.set_nonblocking(true).unwrap();
    for m in [
        VxlanControl::SetPeers(vec![rx_addr]),
        VxlanControl::SetStatics(vec![(tapnet_wire::MacAddr(mac(0xb)), rx_addr)]),
    ] {
        port.control(PortControl::Custom(Box::new(m))).unwrap();
    }
    // Four TSO frames of 1,000-byte segments: 64, 64, 63.5 (the last segment short), 64.
    // A send carries at most 61 datagrams of 1,062 bytes. Frames 0-2 are one train (only
    // its last frame may end short): 192 datagrams in sends of 61, 61, 61, 9; frame 3
    // after the short one starts anew: 61 + 3. Six sends, where frame by frame took 8.
    let frames = [
        tso4(mac(0xb), 64_000, 1000),
        tso4(mac(0xb), 64_000, 1000),
        tso4(mac(0xb), 63_500, 1000),
        tso4(mac(0xb), 64_000, 1000),
    ];
    let mut batch = FrameBatch::new(64, RECV_BUF_LEN, 8 * RECV_BUF_LEN);
    let mut want = Vec::new();
    for f in &frames {
        batch.spare()[..f.len()].copy_from_slice(f);
        batch.commit(f.len());
        let mut segs = Vec::new();
        tapnet_wire::gso::segment_to_vecs(f, &mut segs).unwrap();
        for s in segs {
            let mut d = vec![0u8; 8 + s.len()];
            encap(vni(), &s, &mut d).unwrap();
            want.extend_from_slice(&d);
        }
    }
    port.send_batch(Frames::all(&batch)).unwrap();
    let s = stats.snapshot();
    assert_eq!(
        (s.tx_frames, s.tx_gathered, s.tx_datagrams),
        (256, 256, 256)
    );
    assert_eq!((s.tx_errors, s.tx_invalid, s.gso_refused), (0, 0, 0));
    // What arrived: the same bytes as the copying way, in GRO batches one per send.
    let mut buf = vec![0u8; udp::RECV_BUF];
    let (mut got, mut batches) = (Vec::new(), Vec::new());
    wait_until("every datagram", || {
        while let Ok(r) = udp::recv_one(&rx, &mut buf) {
            got.extend_from_slice(&buf[..r.len]);
            batches.push(r.len.div_ceil(r.stride));
        }
        got.len() >= want.len()
    });
    assert_eq!(got.len(), want.len());
    assert!(got == want, "the bytes differ from the copying way's");
    assert_eq!(batches, [61, 61, 61, 9, 61, 3]);
}
