//! Two switches joined by encrypted VXLAN ports over loopback UDP: frames cross sealed,
//! a third VTEP sees only ciphertext, forged datagrams are counted `auth_failed`, a
//! port without a send key sends nothing. Needs no privileges.
#![allow(clippy::unwrap_used)]

use std::net::{SocketAddr, UdpSocket};
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};
use tapnet_switch::core::SwitchConfig;
use tapnet_switch::runtime::{DatagramPort, Datapath, NetworkHandle, PortControl, PortReply};
use tapnet_switch::VNET_HDR_LEN;
use tapnet_vxlan::crypt::{self, KeyMaterial, KeySet};
use tapnet_vxlan::header::{encap, Vni};
use tapnet_vxlan::table::TableConfig;
use tapnet_vxlan::{VxlanControl, VxlanPort, VxlanStats, VxlanStatsSnapshot};

const BCAST: [u8; 6] = [0xff; 6];

fn mac(n: u8) -> [u8; 6] {
    [0x02, 0, 0, 0, 0, n]
}

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

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
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
