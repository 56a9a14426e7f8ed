//! Two switches joined by encrypted VXLAN ports over loopback UDP: frames cross sealed,
//! a third VTEP sees only ciphertext, forged datagrams are counted `auth_failed`, a
//! port without a send key sends nothing; a TCP super-frame crosses sealed as one UDP
//! GSO send and is merged back, and a forged datagram inside a GRO batch is dropped
//! without breaking the merge of the rest. Needs no privileges.
#![allow(clippy::unwrap_used)]

use std::net::{SocketAddr, UdpSocket};
use std::os::unix::net::UnixDatagram;
use std::time::Duration;
use tapnet_switch::core::SwitchConfig;
use tapnet_switch::runtime::{DatagramPort, Datapath, NetworkHandle, PortControl, PortReply};
use tapnet_switch::testing::{mac, wait_until, BCAST};
use tapnet_switch::VNET_HDR_LEN;
use tapnet_vxlan::crypt::{self, KeyMaterial, KeyRing, KeySet};
use tapnet_vxlan::header::{decap, encap, Vni};
use tapnet_vxlan::table::TableConfig;
use tapnet_vxlan::udp::Sender;
use tapnet_vxlan::{VxlanControl, VxlanPort, VxlanStats, VxlanStatsSnapshot};
use tapnet_wire::gso::Segmenter;
use tapnet_wire::vnet;

fn vni() -> Vni {
    Vni::new(4242).unwrap()
}

/// Zero vnet header + Ethernet frame whose payload is `marker` repeated.
fn frame(dst: [u8; 6], src: [u8; 6], marker: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; VNET_HDR_LEN];
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&[0x08, 0x00]);
    for _ in 0..8 {
        f.extend_from_slice(marker);
    }
    f
}

fn keys(ids: &[u32], send: Option<u32>) -> KeySet {
    KeySet {
        keys: ids
            .iter()
            .map(|&id| KeyMaterial {
                id,
                key: [id as u8 ^ 0x5a; crypt::KEY_LEN],
            })
            .collect(),
        send,
    }
}

struct Side {
    net: NetworkHandle,
    tunnel: u32,
    addr: SocketAddr,
    vx: std::sync::Arc<VxlanStats>,
    peer: UnixDatagram,
}

impl Side {
    fn new(dp: &Datapath) -> Side {
        let net = dp.add_network(SwitchConfig::default()).unwrap();
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = VxlanPort::new(sock, vni(), TableConfig::default()).unwrap();
        let addr = port.local_addr().unwrap();
        let vx = port.stats();
        let (tunnel, _) = net.add_port(Box::new(port)).unwrap();
        let (ep, peer) = DatagramPort::pair().unwrap();
        peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        net.add_port(Box::new(ep)).unwrap();
        Side {
            net,
            tunnel,
            addr,
            vx,
            peer,
        }
    }
    fn control(&self, msg: VxlanControl) {
        let r = self
            .net
            .control_port(self.tunnel, PortControl::Custom(Box::new(msg)))
            .unwrap();
        assert!(matches!(r, PortReply::Done));
    }
    fn recv(&self) -> Vec<u8> {
        let mut buf = vec![0u8; 70_000];
        let n = self.peer.recv(&mut buf).expect("frame expected");
        buf.truncate(n);
        buf
    }
    fn vx(&self) -> VxlanStatsSnapshot {
        self.vx.snapshot()
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn sealed_frames_cross_and_a_third_vtep_sees_no_plaintext() {
    let dp = Datapath::start(2).unwrap();
    let (a, b) = (Side::new(&dp), Side::new(&dp));
    let c = UdpSocket::bind("127.0.0.1:0").unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let c_addr = c.local_addr().unwrap();
    a.control(VxlanControl::SetPeers(vec![b.addr, c_addr]));
    b.control(VxlanControl::SetPeers(vec![a.addr, c_addr]));
    a.control(VxlanControl::SetKeys(keys(&[1], Some(1))));
    b.control(VxlanControl::SetKeys(keys(&[1], Some(1))));

    let marker = b"SECRET-MARKER-0123456789";
    let hello = frame(BCAST, mac(0xa), marker);
    a.peer.send(&hello).unwrap();
    assert_eq!(b.recv(), hello);
    let mut d = vec![0u8; 70_000];
    let (n, from) = c.recv_from(&mut d).unwrap();
    assert_eq!(from, a.addr);
    assert_eq!(n, 8 + hello.len() - VNET_HDR_LEN + crypt::OVERHEAD);
    assert_eq!(d[..8], [0x08, 0, 0, 0, 0, 0x10, 0x92, 0], "VNI in clear");
    assert!(!contains(&d[..n], marker), "plaintext on the wire");
    assert!(!contains(&d[..n], &mac(0xa)), "inner MAC on the wire");

    // Reply the other way (unicast, learned).
    let reply = frame(mac(0xa), mac(0xb), marker);
    b.peer.send(&reply).unwrap();
    assert_eq!(a.recv(), reply);

    // Forged: plain VXLAN, garbage "sealed", a replayed datagram under another VNI
    // header, a truncated one: all dropped, counted, and the port still works.
    let mut plain = vec![0u8; 400];
    let m = encap(vni(), &hello[VNET_HDR_LEN..], &mut plain).unwrap();
    c.send_to(&plain[..m], b.addr).unwrap();
    let mut garbage = d[..n].to_vec();
    let last = garbage.len() - 1;
    garbage[last] ^= 1;
    c.send_to(&garbage, b.addr).unwrap();
    c.send_to(&d[..40], b.addr).unwrap();
    let mut other_key = d[..n].to_vec();
    other_key[8..12].copy_from_slice(&7u32.to_be_bytes());
    c.send_to(&other_key, b.addr).unwrap();
    wait_until("auth failures", || b.vx().auth_failed == 4);
    // The captured datagram itself, replayed: refused (B saw it already).
    let before = b.vx().rx_datagrams;
    c.send_to(&d[..n], b.addr).unwrap();
    wait_until("replay refused", || b.vx().auth_failed == 5);
    assert_eq!(b.vx().rx_datagrams, before);
    assert_eq!(b.vx().rx_malformed, 0);

    // Rotation: B accepts key 2 first, then A sends with it.
    b.control(VxlanControl::SetKeys(keys(&[1, 2], Some(1))));
    a.control(VxlanControl::SetKeys(keys(&[1, 2], Some(2))));
    a.peer.send(&hello).unwrap();
    assert_eq!(b.recv(), hello);
    let (n, _) = c.recv_from(&mut d).unwrap();
    assert_eq!(crypt::key_id(&d[..n]).unwrap(), 2);
    // Key 1 retired at B: what A sent with it no longer opens.
    b.control(VxlanControl::SetKeys(keys(&[2, 3], Some(2))));
    a.control(VxlanControl::SetKeys(keys(&[1], Some(1))));
    a.peer.send(&hello).unwrap();
    wait_until("retired key refused", || b.vx().auth_failed == 6);

    // No send key: nothing leaves, counted.
    a.control(VxlanControl::SetKeys(KeySet::default()));
    a.peer.send(&hello).unwrap();
    wait_until("tx_no_key", || a.vx().tx_no_key == 1);
    c.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    // Only the datagram sealed with key 1 before may be queued at C; then nothing.
    let mut left = 0;
    while let Ok((n, _)) = c.recv_from(&mut d) {
        assert!(!contains(&d[..n], marker));
        left += 1;
    }
    assert_eq!(left, 1);
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

/// The wire frames (no vnet header) a super-frame is cut into.
fn segments(sf: &[u8]) -> Vec<Vec<u8>> {
    let (hdr, eth) = vnet::split(sf).unwrap();
    let mut seg = Segmenter::with_header(&hdr, eth).unwrap();
    let mut out = Vec::new();
    while seg.remaining() > 0 {
        let mut f = vec![0u8; seg.max_frame_len()];
        let n = seg.next_into(&mut f).unwrap().unwrap();
        f.truncate(n);
        out.push(f);
    }
    out
}

/// Read super-frames at `side` until `total` TCP payload bytes came: the payload in
/// order and the number of frames.
fn recv_stream(side: &Side, total: usize, mss: u16) -> (Vec<u8>, u64) {
    let mut payload = Vec::new();
    let mut frames = 0u64;
    while payload.len() < total {
        let got = side.recv();
        frames += 1;
        let (hdr, g) = got.split_at(VNET_HDR_LEN);
        let seq = u32::from_be_bytes(g[38..42].try_into().unwrap());
        assert_eq!(seq as usize, 1 + payload.len(), "frame {frames} in order");
        if g.len() - 54 > mss as usize {
            assert_eq!((hdr[0], hdr[1]), (1, 1), "merged: NEEDS_CSUM + GSO_TCPV4");
            assert_eq!(u16::from_le_bytes([hdr[4], hdr[5]]), mss, "gso_size");
        }
        payload.extend_from_slice(&g[54..]);
    }
    (payload, frames)
}

#[test]
fn a_sealed_super_frame_crosses_as_gso_sends_and_comes_out_merged() {
    let dp = Datapath::start(2).unwrap();
    let (a, b) = (Side::new(&dp), Side::new(&dp));
    let c = UdpSocket::bind("127.0.0.1:0").unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let c_addr = c.local_addr().unwrap();
    a.control(VxlanControl::SetPeers(vec![b.addr, c_addr]));
    b.control(VxlanControl::SetPeers(vec![a.addr, c_addr]));
    a.control(VxlanControl::SetKeys(keys(&[1], Some(1))));
    b.control(VxlanControl::SetKeys(keys(&[1], Some(1))));

    // 65,000 bytes in 1,400-byte segments: 47 sealed datagrams of 1,462 + 32 bytes (the
    // last short), two GSO sends per VTEP; B opens each and merges them back.
    let sf = tso4(mac(0xb), 65_000, 1400);
    a.peer.send(&sf).unwrap();
    let (payload, frames) = recv_stream(&b, 65_000, 1400);
    assert_eq!(
        payload,
        sf[VNET_HDR_LEN + 54..],
        "every payload byte, in order"
    );
    assert!(frames <= 2, "{frames} frames: merged");

    // C (no GRO) reads the 47 datagrams one by one: each sealed, each opens (nonces in
    // send order) to exactly the segment the segmenter makes.
    let want = segments(&sf);
    assert_eq!(want.len(), 47);
    let mut ring = KeyRing::new(&keys(&[1], None));
    let mut d = vec![0u8; 70_000];
    let mut last_seq = None;
    for (i, w) in want.iter().enumerate() {
        let (n, from) = c.recv_from(&mut d).unwrap();
        assert_eq!(from, a.addr);
        assert_eq!(n, 8 + w.len() + crypt::OVERHEAD, "datagram {i} length");
        assert!(!contains(&d[..n], &w[54..120]), "datagram {i} in clear");
        let nonce_ctr =
            u64::from_be_bytes(d[12 + 4..12 + 12].try_into().unwrap()) & 0xffff_ffff_ffff;
        if let Some(prev) = last_seq {
            assert_eq!(nonce_ctr, prev + 1, "datagram {i}: nonces in send order");
        }
        last_seq = Some(nonce_ctr);
        let m = ring.open(&mut d, n).unwrap();
        let (v, inner) = decap(&d[..m]).unwrap();
        assert_eq!(v, vni());
        assert_eq!(inner, &w[..], "datagram {i} opens to segment {i}");
    }
    wait_until("counters", || {
        b.vx().rx_datagrams == 47 && a.vx().tx_datagrams == 94
    });
    let (sa, sb) = (a.vx(), b.vx());
    assert_eq!((sa.tx_frames, sa.tx_no_key, sa.gso_refused), (47, 0, 0));
    assert_eq!(
        sa.tx_gathered, 0,
        "sealed datagrams are built whole in the port's buffer"
    );
    assert_eq!((sb.rx_merged, sb.auth_failed), (47 - frames, 0));
    dp.shutdown();
}

#[test]
fn a_forged_datagram_inside_a_gro_batch_is_dropped_and_the_rest_still_merge() {
    let dp = Datapath::start(2).unwrap();
    let b = Side::new(&dp);
    let c = UdpSocket::bind("127.0.0.1:0").unwrap();
    let c_addr = c.local_addr().unwrap();
    b.control(VxlanControl::SetPeers(vec![c_addr]));
    b.control(VxlanControl::SetKeys(keys(&[1], Some(1))));

    // C seals ten 1,400-byte segments of one flow and slips, between the 5th and the
    // 6th, a copy of the 6th with one bit of its tag flipped: eleven datagrams of one
    // size, sent as one UDP GSO send, which B's GRO socket reads as one batch.
    let sf = tso4(mac(0xb), 14_000, 1400);
    let segs = segments(&sf);
    assert_eq!(segs.len(), 10);
    let mut ring = KeyRing::new(&keys(&[1], Some(1)));
    let mut sealed = Vec::new();
    for s in &segs {
        let mut d = vec![0u8; 8 + s.len() + crypt::OVERHEAD];
        let n = encap(vni(), s, &mut d).unwrap();
        let n = ring.seal(&mut d, n).unwrap();
        d.truncate(n);
        sealed.push(d);
    }
    let mut forged = sealed[5].clone();
    let last = forged.len() - 1;
    forged[last] ^= 0x80;
    sealed.insert(5, forged);
    let stride = sealed[0].len();
    assert!(sealed.iter().all(|d| d.len() == stride));
    let batch = sealed.concat();
    let sent = Sender::new().send(&c, &batch, stride, &[b.addr]);
    assert_eq!(sent.datagrams, 11);

    let (payload, frames) = recv_stream(&b, 14_000, 1400);
    assert_eq!(
        payload,
        sf[VNET_HDR_LEN + 54..],
        "every payload byte, in order"
    );
    assert_eq!(frames, 1, "the forged datagram did not cut the merge");
    wait_until("counters", || b.vx().auth_failed == 1);
    let sb = b.vx();
    assert_eq!((sb.rx_datagrams, sb.rx_merged), (10, 9));
    assert_eq!((sb.rx_malformed, sb.unknown_vtep), (0, 0));
    dp.shutdown();
}
