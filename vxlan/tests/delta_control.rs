//! The per-entry control messages of a VXLAN port (`AddPeer` / `RemovePeer`,
//! `AddRemote` / `RemoveRemote`): each changes one entry of the flood list, the known
//! VTEPs, the static table and the suppression table, and leaves the others alone.
//! Loopback UDP, socketpair endpoints; needs no privileges.
#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::unix::net::UnixDatagram;
use std::time::Duration;
use tapnet_switch::core::SwitchConfig;
use tapnet_switch::runtime::{DatagramPort, Datapath, NetworkHandle, PortControl, PortReply};
use tapnet_switch::testing::{frame, wait_until, BCAST};
use tapnet_switch::VNET_HDR_LEN;
use tapnet_vxlan::header::{encap, Vni};
use tapnet_vxlan::table::TableConfig;
use tapnet_vxlan::{VxlanControl, VxlanPort, VxlanStats};
use tapnet_wire::MacAddr;

fn vni() -> Vni {
    Vni::new(4242).unwrap()
}

struct Side {
    net: NetworkHandle,
    tunnel: u32,
    addr: SocketAddr,
    vx: std::sync::Arc<VxlanStats>,
    ep: UnixDatagram,
}

impl Side {
    fn new(dp: &Datapath) -> Side {
        let net = dp.add_network(SwitchConfig::default()).unwrap();
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = VxlanPort::new(sock, vni(), TableConfig::default()).unwrap();
        let addr = port.local_addr().unwrap();
        let vx = port.stats();
        let (tunnel, _) = net.add_port(Box::new(port)).unwrap();
        let (port, ep) = DatagramPort::pair().unwrap();
        ep.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        net.add_port(Box::new(port)).unwrap();
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
    fn done(&self, msg: VxlanControl) {
        assert!(matches!(self.control(msg), PortReply::Done));
    }
    fn entries(&self) -> Vec<(MacAddr, SocketAddr)> {
        match self.control(VxlanControl::Entries) {
            PortReply::Custom(e) => *e.downcast::<Vec<(MacAddr, SocketAddr)>>().unwrap(),
            r => panic!("unexpected {r:?}"),
        }
    }
    fn recv(&self) -> Vec<u8> {
        let mut buf = vec![0u8; 70_000];
        let n = self.ep.recv(&mut buf).expect("frame expected");
        buf.truncate(n);
        buf
    }
}

fn raw(ip: &str) -> (UdpSocket, SocketAddr) {
    let s = UdpSocket::bind(format!("{ip}:0")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let a = s.local_addr().unwrap();
    (s, a)
}

fn raw_recv(s: &UdpSocket) -> Vec<u8> {
    let mut buf = vec![0u8; 70_000];
    let (n, _) = s.recv_from(&mut buf).expect("datagram expected");
    buf.truncate(n);
    buf
}

#[test]
fn peers_added_and_removed_one_at_a_time_are_flooded_to_and_heard() {
    let dp = Datapath::start(1).unwrap();
    let a = Side::new(&dp);
    let (c, c_addr) = raw("127.0.0.2");
    let (d, d_addr) = raw("127.0.0.3");
    a.done(VxlanControl::AddPeer(c_addr));
    a.done(VxlanControl::AddPeer(d_addr));
    a.done(VxlanControl::AddPeer(c_addr));

    // A broadcast reaches both peers, once each.
    let hello = frame(BCAST, [2, 0, 0, 0, 0, 0xa], 1);
    a.ep.send(&hello).unwrap();
    assert_eq!(raw_recv(&c)[8..], hello[VNET_HDR_LEN..]);
    assert_eq!(raw_recv(&d)[8..], hello[VNET_HDR_LEN..]);
    wait_until("the flood", || a.vx.snapshot().tx_datagrams == 2);

    // Both are heard.
    let mut buf = vec![0u8; 200];
    let from_c = frame(BCAST, [2, 0, 0, 0, 0, 0xc], 2);
    let n = encap(vni(), &from_c[VNET_HDR_LEN..], &mut buf).unwrap();
    c.send_to(&buf[..n], a.addr).unwrap();
    assert_eq!(a.recv(), from_c);

    // D removed: no longer flooded to, and no longer heard; C still is.
    a.done(VxlanControl::RemovePeer(d_addr));
    let from_d = frame(BCAST, [2, 0, 0, 0, 0, 0xd], 3);
    let n = encap(vni(), &from_d[VNET_HDR_LEN..], &mut buf).unwrap();
    d.send_to(&buf[..n], a.addr).unwrap();
    wait_until("the drop", || a.vx.snapshot().unknown_vtep == 1);
    let again = frame(BCAST, [2, 0, 0, 0, 0, 0xa], 4);
    a.ep.send(&again).unwrap();
    assert_eq!(raw_recv(&c)[8..], again[VNET_HDR_LEN..]);
    wait_until("the flood", || a.vx.snapshot().tx_datagrams == 3);
    assert_eq!(a.vx.snapshot().tx_datagrams, 3, "one copy: C only");
    let n = encap(vni(), &from_c[VNET_HDR_LEN..], &mut buf).unwrap();
    c.send_to(&buf[..n], a.addr).unwrap();
    assert_eq!(a.recv(), from_c, "C still heard");

    // Two peers on one IP address: removing one keeps the address known.
    let other_port: SocketAddr = format!("127.0.0.2:{}", c_addr.port() + 1).parse().unwrap();
    a.done(VxlanControl::AddPeer(other_port));
    a.done(VxlanControl::RemovePeer(other_port));
    c.send_to(&buf[..n], a.addr).unwrap();
    assert_eq!(a.recv(), from_c, "C's address still known");
    assert_eq!(a.vx.snapshot().unknown_vtep, 1);
    dp.shutdown();
}

#[test]
fn remote_endpoints_added_and_removed_one_at_a_time() {
    let dp = Datapath::start(1).unwrap();
    let a = Side::new(&dp);
    let (c, c_addr) = raw("127.0.0.2");
    let (_d, d_addr) = raw("127.0.0.3");
    let (m1, m2) = (MacAddr([2, 0, 0, 0, 0, 1]), MacAddr([2, 0, 0, 0, 0, 2]));
    let ip1: Vec<IpAddr> = vec!["10.0.0.2".parse().unwrap(), "fd00::2".parse().unwrap()];
    let ip2: Vec<IpAddr> = vec!["10.0.0.3".parse().unwrap()];
    a.done(VxlanControl::AddPeer(c_addr));
    a.done(VxlanControl::AddPeer(d_addr));
    a.done(VxlanControl::AddRemote {
        mac: m1,
        vtep: c_addr,
        ips: ip1.clone(),
    });
    a.done(VxlanControl::AddRemote {
        mac: m2,
        vtep: d_addr,
        ips: ip2.clone(),
    });
    let mut both = vec![(m1, c_addr), (m2, d_addr)];
    both.sort_by_key(|(m, _)| m.0);

    // ARP for 10.0.0.2 is answered locally with m1.
    let arp = |tpa: [u8; 4]| {
        let mut req = vec![0u8; VNET_HDR_LEN];
        req.extend_from_slice(&BCAST);
        req.extend_from_slice(&[2, 0, 0, 0, 0, 0xa]);
        req.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
        req.extend_from_slice(&[2, 0, 0, 0, 0, 0xa]);
        req.extend_from_slice(&[10, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
        req.extend_from_slice(&tpa);
        req
    };
    a.ep.send(&arp([10, 0, 0, 2])).unwrap();
    let reply = a.recv();
    assert_eq!(reply[VNET_HDR_LEN + 22..VNET_HDR_LEN + 28], m1.0);
    assert_eq!(a.vx.snapshot().suppressed, 1);

    // A stale removal (m2 with the wrong VTEP: it moved) keeps m2's entry and addresses.
    a.done(VxlanControl::RemoveRemote {
        mac: m2,
        vtep: c_addr,
        ips: ip2.clone(),
    });
    assert_eq!(a.entries(), both);

    // m1 removed: its entry and its neighbours go, m2's stay.
    a.done(VxlanControl::RemoveRemote {
        mac: m1,
        vtep: c_addr,
        ips: ip1,
    });
    assert_eq!(a.entries(), vec![(m2, d_addr)]);
    a.ep.send(&arp([10, 0, 0, 3])).unwrap();
    assert_eq!(a.recv()[VNET_HDR_LEN + 22..VNET_HDR_LEN + 28], m2.0);
    assert_eq!(a.vx.snapshot().suppressed, 2);
    a.ep.send(&arp([10, 0, 0, 2])).unwrap();
    assert_eq!(
        raw_recv(&c)[8..20],
        arp([10, 0, 0, 2])[VNET_HDR_LEN..][..12]
    );
    assert_eq!(a.vx.snapshot().suppressed, 2, "10.0.0.2 no longer answered");
    dp.shutdown();
}
