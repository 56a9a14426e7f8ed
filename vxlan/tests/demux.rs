//! The daemon's one VXLAN socket shared by two VNIs on each of two "hosts" (loopback
//! sockets): each VNI's frames reach only that VNI's switch, both directions leave
//! from the shared socket's address, and local-only MACs never cross. No privileges.
#![allow(clippy::unwrap_used)]

use std::net::{SocketAddr, UdpSocket};
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};
use tapnet_switch::core::SwitchConfig;
use tapnet_switch::runtime::{DatagramPort, Datapath, NetworkHandle, PortControl, PortReply};
use tapnet_switch::testing::{frame, mac, BCAST};
use tapnet_switch::VNET_HDR_LEN;
use tapnet_vxlan::header::{encap, Vni};
use tapnet_vxlan::table::TableConfig;
use tapnet_vxlan::{VxlanControl, VxlanSocket, VxlanStats};
use tapnet_wire::MacAddr;

struct Net {
    _net: NetworkHandle,
    ep: UnixDatagram,
    vx: std::sync::Arc<VxlanStats>,
}

fn net(dp: &Datapath, sock: &VxlanSocket, vni: u32, peer: SocketAddr) -> Net {
    let n = dp.add_network(SwitchConfig::default()).unwrap();
    let port = sock
        .port(Vni::new(vni).unwrap(), TableConfig::default())
        .unwrap();
    let vx = port.stats();
    let (tunnel, _) = n.add_port(Box::new(port)).unwrap();
    let r = n
        .control_port(
            tunnel,
            PortControl::Custom(Box::new(VxlanControl::SetPeers(vec![peer]))),
        )
        .unwrap();
    assert!(matches!(r, PortReply::Done));
    let r = n
        .control_port(
            tunnel,
            PortControl::Custom(Box::new(VxlanControl::SetLocalOnly(vec![MacAddr(mac(
                0xee,
            ))]))),
        )
        .unwrap();
    assert!(matches!(r, PortReply::Done));
    let (p, ep) = DatagramPort::pair().unwrap();
    ep.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    n.add_port(Box::new(p)).unwrap();
    Net { _net: n, ep, vx }
}

fn recv(ep: &UnixDatagram) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 70_000];
    let n = ep.recv(&mut buf).ok()?;
    buf.truncate(n);
    Some(buf)
}

#[test]
fn one_socket_carries_two_vnis_each_to_its_own_switch() {
    let dp = Datapath::start(2).unwrap();
    let ha = VxlanSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let hb = VxlanSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let (aa, ba) = (ha.local_addr().unwrap(), hb.local_addr().unwrap());
    let a1 = net(&dp, &ha, 100, ba);
    let a2 = net(&dp, &ha, 200, ba);
    let b1 = net(&dp, &hb, 100, aa);
    let b2 = net(&dp, &hb, 200, aa);
    // A second port for a VNI that has one is refused.
    let e = ha
        .port(Vni::new(100).unwrap(), TableConfig::default())
        .err()
        .unwrap();
    assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse);

    let f1 = frame(BCAST, mac(1), 1);
    a1.ep.send(&f1).unwrap();
    assert_eq!(recv(&b1.ep).unwrap(), f1);
    assert!(recv(&b2.ep).is_none(), "VNI 100 leaked into VNI 200");
    let f2 = frame(mac(1), mac(2), 2);
    b2.ep.send(&f2).unwrap();
    assert_eq!(recv(&a2.ep).unwrap(), f2);
    assert!(recv(&a1.ep).is_none(), "VNI 200 leaked into VNI 100");
    // B's VNI-100 port learned A's MAC behind A's shared socket: its reply is unicast.
    let r = frame(mac(1), mac(3), 3);
    b1.ep.send(&r).unwrap();
    assert_eq!(recv(&a1.ep).unwrap(), r);
    let s = b1.vx.snapshot();
    assert_eq!((s.learned, s.tx_flooded), (1, 0), "{s:?}");

    // Frames to or from the local-only MAC stay home, both ways.
    let before = a1.vx.snapshot().tx_datagrams;
    // (Unknown unicast to it first: once the switch has learned it on the endpoint's
    // port, that frame would not leave the switch at all.)
    a1.ep.send(&frame(mac(0xee), mac(1), 5)).unwrap();
    a1.ep.send(&frame(BCAST, mac(0xee), 4)).unwrap();
    assert!(recv(&b1.ep).is_none());
    let deadline = Instant::now() + Duration::from_secs(5);
    while a1.vx.snapshot().local_only < 2 {
        assert!(Instant::now() < deadline, "{:?}", a1.vx.snapshot());
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(a1.vx.snapshot().tx_datagrams, before);
    // And one arriving from outside is dropped at receive.
    let raw = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut d = vec![0u8; 200];
    let inner = frame(BCAST, mac(0xee), 6);
    let n = encap(Vni::new(100).unwrap(), &inner[VNET_HDR_LEN..], &mut d).unwrap();
    raw.send_to(&d[..n], aa).unwrap();
    // A VNI nobody has, garbage and an empty datagram: counted by the dispatcher.
    let n = encap(Vni::new(300).unwrap(), &inner[VNET_HDR_LEN..], &mut d).unwrap();
    raw.send_to(&d[..n], aa).unwrap();
    raw.send_to(b"junk", aa).unwrap();
    raw.send_to(b"", aa).unwrap();
    assert!(recv(&a1.ep).is_none());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let st = ha.stats();
        if st.unknown_vni == 1 && st.malformed == 2 && a1.vx.snapshot().local_only == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "{st:?} {:?}", a1.vx.snapshot());
        std::thread::sleep(Duration::from_millis(5));
    }

    // Dropping a network's port frees its VNI for a new one.
    drop(a1);
    drop(b1);
    dp.shutdown();
    let dp = Datapath::start(1).unwrap();
    let _again = net(&dp, &ha, 100, ba);
    dp.shutdown();
}

#[test]
fn a_gro_batch_that_mixes_vnis_is_split_into_runs() {
    let dp = Datapath::start(1).unwrap();
    let ha = VxlanSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let aa = ha.local_addr().unwrap();
    let raw = UdpSocket::bind("127.0.0.1:0").unwrap();
    let peer = raw.local_addr().unwrap();
    let a1 = net(&dp, &ha, 100, peer);
    let a2 = net(&dp, &ha, 200, peer);
    // Five same-size datagrams in one UDP GSO send (one GRO batch at A): VNIs 100,
    // 100, 200, 300 (nobody's), 100.
    let vnis = [100, 100, 200, 300, 100];
    let frames: Vec<Vec<u8>> = (0..5).map(|i| frame(BCAST, mac(0x10 + i), i)).collect();
    let mut batch = Vec::new();
    for (f, v) in frames.iter().zip(vnis) {
        let mut d = vec![0u8; 200];
        let n = encap(Vni::new(v).unwrap(), &f[VNET_HDR_LEN..], &mut d).unwrap();
        batch.extend_from_slice(&d[..n]);
    }
    let stride = batch.len() / 5;
    let sent = tapnet_vxlan::udp::Sender::new().send(&raw, &batch, stride, &[aa]);
    assert_eq!(sent.datagrams, 5);
    for i in [0, 1, 4] {
        assert_eq!(recv(&a1.ep).unwrap(), frames[i], "frame {i} on VNI 100");
    }
    assert_eq!(recv(&a2.ep).unwrap(), frames[2]);
    assert!(recv(&a1.ep).is_none() && recv(&a2.ep).is_none());
    let st = ha.stats();
    assert_eq!(
        (st.datagrams, st.unknown_vni, st.malformed),
        (4, 1, 0),
        "{st:?}"
    );
    assert_eq!(a1.vx.snapshot().rx_datagrams, 3);
    drop((a1, a2));
    dp.shutdown();
}

/// One UDP GSO send of `frames`, each encapsulated with its VNI, from `raw` to `to`.
fn send_batch(raw: &UdpSocket, to: SocketAddr, frames: &[Vec<u8>], vnis: &[u32]) {
    let mut batch = Vec::new();
    for (f, &v) in frames.iter().zip(vnis) {
        let mut d = vec![0u8; 200];
        let n = encap(Vni::new(v).unwrap(), &f[VNET_HDR_LEN..], &mut d).unwrap();
        batch.extend_from_slice(&d[..n]);
    }
    let stride = batch.len() / frames.len();
    let sent = tapnet_vxlan::udp::Sender::new().send(raw, &batch, stride, &[to]);
    assert_eq!(sent.datagrams, frames.len() as u64);
}

#[test]
fn a_lone_port_reads_the_socket_itself_and_the_dispatcher_takes_over_for_two() {
    let dp = Datapath::start(1).unwrap();
    let hc = VxlanSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let ca = hc.local_addr().unwrap();
    let raw = UdpSocket::bind("127.0.0.1:0").unwrap();
    let peer = raw.local_addr().unwrap();
    let c1 = net(&dp, &hc, 100, peer);
    let fr: Vec<Vec<u8>> = (0..4).map(|i| frame(BCAST, mac(0x20 + i), i)).collect();

    // The only VNI: its port reads the socket itself. A batch that mixes VNIs is still
    // split: its own runs reach it, the VNI nobody has is counted.
    send_batch(&raw, ca, &fr, &[100, 300, 100, 100]);
    for i in [0, 2, 3] {
        assert_eq!(recv(&c1.ep).unwrap(), fr[i], "frame {i}");
    }
    let st = hc.stats();
    assert_eq!((st.datagrams, st.unknown_vni), (3, 1), "{st:?}");
    // A batch all of its VNI is taken in place, no hand-off.
    send_batch(&raw, ca, &fr[..2], &[100, 100]);
    assert_eq!(recv(&c1.ep).unwrap(), fr[0]);
    assert_eq!(recv(&c1.ep).unwrap(), fr[1]);
    let st = hc.stats();
    assert_eq!((st.datagrams, st.read_by_port), (5, 2), "{st:?}");

    // A second VNI: the dispatcher reads the socket again, each VNI to its own switch.
    let c2 = net(&dp, &hc, 200, peer);
    send_batch(&raw, ca, &fr[..2], &[100, 200]);
    assert_eq!(recv(&c1.ep).unwrap(), fr[0]);
    assert_eq!(recv(&c2.ep).unwrap(), fr[1]);
    assert!(recv(&c1.ep).is_none() && recv(&c2.ep).is_none());
    let st = hc.stats();
    assert_eq!((st.datagrams, st.read_by_port), (7, 2), "{st:?}");

    // The second network goes (its port dropped with it): the first reads again.
    c2._net.remove().unwrap();
    send_batch(&raw, ca, &fr[3..], &[100]);
    assert_eq!(recv(&c1.ep).unwrap(), fr[3]);
    let st = hc.stats();
    assert_eq!((st.datagrams, st.read_by_port), (8, 3), "{st:?}");

    // The socket dropped: the port keeps its fd but receives nothing any more.
    drop(hc);
    send_batch(&raw, ca, &fr[..1], &[100]);
    assert!(recv(&c1.ep).is_none());
    drop(c1);
    dp.shutdown();
}
