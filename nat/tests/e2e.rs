//! In-process end-to-end tests: a smoltcp "sandbox" on the far end of the gateway's
//! socketpair, real host servers on 127.0.0.1. No privileges, loopback traffic only.

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use smoltcp::iface::{Config as IfaceConfig, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::socket::{icmp, tcp, udp};
use smoltcp::time::Instant as SmolInstant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr, IpEndpoint};
use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};
use tapnet_nat::{Config, Gateway, GatewayHandle, NameRecord, Proto, PublishSpec};

const GW: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 1);
const SB: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 2);

struct Dev {
    sock: UnixDatagram,
    rx: VecDeque<Vec<u8>>,
    tx: VecDeque<Vec<u8>>,
}
struct Rx(Vec<u8>);
struct Tx<'a>(&'a mut VecDeque<Vec<u8>>);
impl phy::RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}
impl phy::TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut b = vec![0u8; 10 + len];
        let r = f(&mut b[10..]);
        self.0.push_back(b);
        r
    }
}
impl Device for Dev {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx<'a>;
    fn receive(&mut self, _: SmolInstant) -> Option<(Rx, Tx<'_>)> {
        let p = self.rx.pop_front()?;
        Some((Rx(p), Tx(&mut self.tx)))
    }
    fn transmit(&mut self, _: SmolInstant) -> Option<Tx<'_>> {
        Some(Tx(&mut self.tx))
    }
    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ethernet;
        c.max_transmission_unit = 1514;
        c
    }
}

/// The sandbox: a smoltcp interface on the gateway's socketpair.
struct Sandbox {
    iface: Interface,
    dev: Dev,
    sockets: SocketSet<'static>,
    start: Instant,
}

impl Sandbox {
    fn now(&self) -> SmolInstant {
        SmolInstant::from_micros(self.start.elapsed().as_micros() as i64)
    }
    fn pump(&mut self) {
        let mut buf = vec![0u8; 70000];
        while let Ok(n) = self.dev.sock.recv(&mut buf) {
            if n > 10 {
                self.dev.rx.push_back(buf[10..n].to_vec());
            }
        }
        let now = self.now();
        self.iface.poll(now, &mut self.dev, &mut self.sockets);
        while let Some(f) = self.dev.tx.front() {
            match self.dev.sock.send(f) {
                Ok(_) => {
                    self.dev.tx.pop_front();
                }
                Err(_) => break,
            }
        }
    }
    fn run_until(&mut self, secs: u64, mut done: impl FnMut(&mut Sandbox) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < deadline {
            self.pump();
            if done(self) {
                return;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        panic!("timed out");
    }
    fn tcp(&mut self) -> SocketHandle {
        let s = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; 256 * 1024]),
            tcp::SocketBuffer::new(vec![0; 256 * 1024]),
        );
        self.sockets.add(s)
    }
    fn udp(&mut self, port: u16) -> SocketHandle {
        let mut s = udp::Socket::new(
            udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 16], vec![0; 65536]),
            udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 16], vec![0; 65536]),
        );
        s.bind(port).expect("bind");
        self.sockets.add(s)
    }
}

fn start(cfg_fn: impl FnOnce(&mut Config)) -> (GatewayHandle, Sandbox) {
    // What DatagramPort::pair() does: the port end plays the switch side (here: the
    // sandbox directly), the peer end goes to the gateway.
    let (port, peer) = UnixDatagram::pair().expect("pair");
    port.set_nonblocking(true).expect("nonblocking");
    let mut cfg = Config::new([2, 0, 0, 0, 0, 1], GW, 24);
    cfg.rewrite_loopback_clients = false;
    cfg_fn(&mut cfg);
    let gw = Gateway::spawn(cfg, peer).expect("spawn");
    let mut dev = Dev {
        sock: port,
        rx: VecDeque::new(),
        tx: VecDeque::new(),
    };
    let mut ic = IfaceConfig::new(HardwareAddress::Ethernet(EthernetAddress([
        2, 0, 0, 0, 0, 2,
    ])));
    ic.random_seed = 7;
    let start = Instant::now();
    let mut iface = Interface::new(ic, &mut dev, SmolInstant::from_micros(0));
    iface.update_ip_addrs(|a| {
        a.push(IpCidr::new(IpAddress::Ipv4(SB), 24)).expect("addr");
    });
    iface
        .routes_mut()
        .add_default_ipv4_route(GW)
        .expect("route");
    let sb = Sandbox {
        iface,
        dev,
        sockets: SocketSet::new(Vec::new()),
        start,
    };
    (gw, sb)
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 % 251) as u8).collect()
}

#[test]
fn tcp_egress_transfers_10mb_intact_with_half_close() {
    let server = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = server.local_addr().expect("addr");
    // Echo server: copies until EOF (our half-close), then closes its side.
    let echo = std::thread::spawn(move || {
        let (mut s, _) = server.accept().expect("accept");
        let mut buf = vec![0u8; 65536];
        let mut total = 0usize;
        loop {
            let n = s.read(&mut buf).expect("read");
            if n == 0 {
                break;
            }
            s.write_all(&buf[..n]).expect("write");
            total += n;
        }
        s.shutdown(std::net::Shutdown::Write).expect("shutdown");
        total
    });
    let (gw, mut sb) = start(|_| {});
    let h = sb.tcp();
    let now = sb.now();
    let _ = now;
    {
        let cx = sb.iface.context();
        let s = sb.sockets.get_mut::<tcp::Socket<'_>>(h);
        s.connect(
            cx,
            IpEndpoint::new(IpAddress::Ipv4(Ipv4Addr::LOCALHOST), addr.port()),
            40000,
        )
        .expect("connect");
    }
    let data = pattern(10 * 1024 * 1024);
    let mut sent = 0;
    let mut got = Vec::with_capacity(data.len());
    let mut closed_tx = false;
    sb.run_until(120, |sb| {
        let s = sb.sockets.get_mut::<tcp::Socket<'_>>(h);
        if s.can_send() && sent < data.len() {
            sent += s.send_slice(&data[sent..]).expect("send");
        }
        if sent == data.len() && !closed_tx {
            s.close();
            closed_tx = true;
        }
        while s.can_recv() {
            s.recv(|b| {
                got.extend_from_slice(b);
                (b.len(), ())
            })
            .expect("recv");
        }
        // Done when the server's FIN arrived after all the data.
        got.len() == data.len() && !s.may_recv()
    });
    assert!(got == data, "echoed data differs");
    assert_eq!(echo.join().expect("echo"), data.len());
    let st = gw.stats();
    assert_eq!(st.flows_total[0], 1);
}

#[test]
fn refused_tcp_connect_is_a_reset_inside() {
    let addr = {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let (_gw, mut sb) = start(|_| {});
    let h = sb.tcp();
    {
        let cx = sb.iface.context();
        let s = sb.sockets.get_mut::<tcp::Socket<'_>>(h);
        s.connect(
            cx,
            IpEndpoint::new(IpAddress::Ipv4(Ipv4Addr::LOCALHOST), addr.port()),
            40001,
        )
        .expect("connect");
    }
    let mut established = false;
    sb.run_until(10, |sb| {
        let s = sb.sockets.get_mut::<tcp::Socket<'_>>(h);
        established |= s.state() == tcp::State::Established;
        s.state() == tcp::State::Closed
    });
    assert!(
        !established,
        "a refused connection must never look established"
    );
}

#[test]
fn udp_egress_round_trip() {
    let server = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let addr = server.local_addr().expect("addr");
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        for _ in 0..2 {
            let (n, from) = server.recv_from(&mut buf).expect("recv");
            let mut r = b"echo:".to_vec();
            r.extend_from_slice(&buf[..n]);
            server.send_to(&r, from).expect("send");
        }
    });
    let (gw, mut sb) = start(|_| {});
    let h = sb.udp(5000);
    let to = IpEndpoint::new(IpAddress::Ipv4(Ipv4Addr::LOCALHOST), addr.port());
    sb.sockets
        .get_mut::<udp::Socket<'_>>(h)
        .send_slice(b"hi", to)
        .expect("send");
    let mut reply = Vec::new();
    sb.run_until(10, |sb| {
        let s = sb.sockets.get_mut::<udp::Socket<'_>>(h);
        if let Ok((b, meta)) = s.recv() {
            assert_eq!(meta.endpoint, to);
            reply = b.to_vec();
            return true;
        }
        false
    });
    assert_eq!(reply, b"echo:hi");
    assert_eq!(gw.stats().flows_active[1], 1);
}

/// A tiny upstream DNS server: answers every A query with 203.0.113.7.
fn upstream_dns() -> SocketAddr {
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let addr = sock.local_addr().expect("addr");
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        loop {
            let Ok((n, from)) = sock.recv_from(&mut buf) else {
                return;
            };
            let Ok(q) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let mut r = Message::response(q.metadata.id, OpCode::Query);
            r.add_queries(q.queries.iter().cloned());
            if let Some(first) = q.queries.first() {
                r.add_answer(Record::from_rdata(
                    first.name().clone(),
                    30,
                    RData::A(A(Ipv4Addr::new(203, 0, 113, 7))),
                ));
            }
            let _ = sock.send_to(&r.to_vec().expect("encode"), from);
        }
    });
    addr
}

fn ask(sb: &mut Sandbox, h: SocketHandle, name: &str, id: u16) -> Message {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(
        Name::from_ascii(name).expect("name"),
        RecordType::A,
    ));
    let gw53 = IpEndpoint::new(IpAddress::Ipv4(GW), 53);
    sb.sockets
        .get_mut::<udp::Socket<'_>>(h)
        .send_slice(&m.to_vec().expect("encode"), gw53)
        .expect("send");
    let mut out = None;
    sb.run_until(10, |sb| {
        if let Ok((b, meta)) = sb.sockets.get_mut::<udp::Socket<'_>>(h).recv() {
            assert_eq!(meta.endpoint, gw53);
            out = Some(Message::from_vec(b).expect("decode"));
            return true;
        }
        false
    });
    out.expect("answer")
}

fn a_of(m: &Message) -> Vec<Ipv4Addr> {
    m.answers
        .iter()
        .filter_map(|r| match r.data {
            RData::A(A(a)) => Some(a),
            _ => None,
        })
        .collect()
}

#[test]
fn dns_local_names_and_forwarding() {
    let up = upstream_dns();
    let (gw, mut sb) = start(|c| c.upstream_dns = vec![up]);
    gw.set_names(vec![NameRecord {
        name: "web".into(),
        ipv4s: vec![Ipv4Addr::new(172, 30, 0, 9)],
        ipv6s: vec![],
    }])
    .expect("names");
    let h = sb.udp(5353);
    let m = ask(&mut sb, h, "web", 1);
    assert_eq!(m.metadata.id, 1);
    assert_eq!(a_of(&m), vec![Ipv4Addr::new(172, 30, 0, 9)]);
    let m = ask(&mut sb, h, "nosuch", 2);
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    let m = ask(&mut sb, h, "example.com.", 3);
    assert_eq!(m.metadata.id, 3);
    assert_eq!(a_of(&m), vec![Ipv4Addr::new(203, 0, 113, 7)]);
    let st = gw.stats();
    assert_eq!((st.dns_local, st.dns_forwarded), (2, 1));
}

#[test]
fn dns_names_updated_one_record_at_a_time() {
    let (gw, mut sb) = start(|_| {});
    let rec = |name: &str, last: u8| NameRecord {
        name: name.into(),
        ipv4s: vec![Ipv4Addr::new(172, 30, 0, last)],
        ipv6s: vec![],
    };
    gw.set_names(vec![rec("web", 9)]).expect("names");
    gw.update_names(vec![], vec![rec("web", 10), rec("db", 11)])
        .expect("update");
    let h = sb.udp(5353);
    let mut web = a_of(&ask(&mut sb, h, "web", 1));
    web.sort();
    assert_eq!(
        web,
        vec![Ipv4Addr::new(172, 30, 0, 9), Ipv4Addr::new(172, 30, 0, 10)]
    );
    assert_eq!(
        a_of(&ask(&mut sb, h, "db", 2)),
        vec![Ipv4Addr::new(172, 30, 0, 11)]
    );
    // One "web" leaves, "db" moves to another address.
    gw.update_names(vec![rec("web", 9), rec("db", 11)], vec![rec("db", 12)])
        .expect("update");
    assert_eq!(
        a_of(&ask(&mut sb, h, "web", 3)),
        vec![Ipv4Addr::new(172, 30, 0, 10)]
    );
    assert_eq!(
        a_of(&ask(&mut sb, h, "db", 4)),
        vec![Ipv4Addr::new(172, 30, 0, 12)]
    );
    gw.update_names(vec![rec("web", 10)], vec![])
        .expect("update");
    let m = ask(&mut sb, h, "web", 5);
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
}

#[test]
fn dns_servfail_when_upstream_is_dead() {
    let silent = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let dead = silent.local_addr().expect("addr");
    let (gw, mut sb) = start(|c| {
        c.upstream_dns = vec![dead, dead];
        c.dns_timeout = Duration::from_millis(300);
    });
    let h = sb.udp(5353);
    let t = Instant::now();
    let m = ask(&mut sb, h, "example.com", 9);
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    assert!(
        t.elapsed() >= Duration::from_millis(600),
        "both servers tried"
    );
    assert_eq!(gw.stats().dns_servfail, 1);
    drop(silent);
}

#[test]
fn published_tcp_port_delivers_the_clients_real_address() {
    let (gw, mut sb) = start(|_| {});
    let bound = gw
        .publish(PublishSpec {
            host_ip: Ipv4Addr::LOCALHOST.into(),
            host_port: 0,
            proto: Proto::Tcp,
            sandbox_ip: SB.into(),
            sandbox_port: 8080,
        })
        .expect("publish");
    // The same port again: a clear error.
    let again = gw.publish(PublishSpec {
        host_ip: Ipv4Addr::LOCALHOST.into(),
        host_port: bound.port(),
        proto: Proto::Tcp,
        sandbox_ip: SB.into(),
        sandbox_port: 8080,
    });
    assert!(
        matches!(again, Err(tapnet_nat::Error::PortInUse { .. })),
        "{again:?}"
    );
    let h = sb.tcp();
    sb.sockets
        .get_mut::<tcp::Socket<'_>>(h)
        .listen(8080)
        .expect("listen");
    let client = std::thread::spawn(move || {
        let mut c = TcpStream::connect(bound).expect("connect");
        let me = c.local_addr().expect("local");
        c.write_all(b"hello").expect("write");
        let mut r = String::new();
        c.read_to_string(&mut r).expect("read");
        (me, r)
    });
    let mut seen = None;
    let mut got = Vec::new();
    let mut replied = false;
    sb.run_until(10, |sb| {
        let s = sb.sockets.get_mut::<tcp::Socket<'_>>(h);
        if let Some(ep) = s.remote_endpoint() {
            seen = Some(ep);
        }
        while s.can_recv() {
            s.recv(|b| {
                got.extend_from_slice(b);
                (b.len(), ())
            })
            .expect("recv");
        }
        if got == b"hello" && !replied && s.can_send() {
            s.send_slice(b"from sandbox").expect("send");
            s.close();
            replied = true;
        }
        replied
            && matches!(
                s.state(),
                tcp::State::Closed | tcp::State::TimeWait | tcp::State::FinWait2
            )
    });
    let (me, reply) = client.join().expect("client");
    assert_eq!(reply, "from sandbox");
    let seen = seen.expect("remote endpoint");
    assert_eq!(seen.addr, IpAddress::Ipv4(Ipv4Addr::LOCALHOST));
    assert_eq!(seen.port, me.port());
    gw.unpublish(Proto::Tcp, bound).expect("unpublish");
}

#[test]
fn published_udp_port_round_trip() {
    let (gw, mut sb) = start(|_| {});
    let bound = gw
        .publish(PublishSpec {
            host_ip: Ipv4Addr::LOCALHOST.into(),
            host_port: 0,
            proto: Proto::Udp,
            sandbox_ip: SB.into(),
            sandbox_port: 7000,
        })
        .expect("publish");
    let h = sb.udp(7000);
    let client = UdpSocket::bind("127.0.0.1:0").expect("bind");
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    client.send_to(b"ping", bound).expect("send");
    let me = client.local_addr().expect("addr");
    sb.run_until(10, |sb| {
        let s = sb.sockets.get_mut::<udp::Socket<'_>>(h);
        if let Ok((b, meta)) = s.recv() {
            assert_eq!(b, b"ping");
            assert_eq!(meta.endpoint.port, me.port());
            let to = meta.endpoint;
            s.send_slice(b"pong", to).expect("reply");
            return true;
        }
        false
    });
    // Let the reply out.
    for _ in 0..50 {
        sb.pump();
        std::thread::sleep(Duration::from_millis(2));
    }
    let mut buf = [0u8; 64];
    let (n, from) = client.recv_from(&mut buf).expect("reply");
    assert_eq!(&buf[..n], b"pong");
    assert_eq!(from, bound);
}

#[test]
fn internal_network_refuses_publish_and_egress() {
    let (gw, mut sb) = start(|c| c.internal = true);
    let r = gw.publish(PublishSpec {
        host_ip: Ipv4Addr::LOCALHOST.into(),
        host_port: 0,
        proto: Proto::Tcp,
        sandbox_ip: SB.into(),
        sandbox_port: 80,
    });
    assert!(matches!(r, Err(tapnet_nat::Error::Internal)));
    let h = sb.udp(5000);
    let to = IpEndpoint::new(IpAddress::Ipv4(Ipv4Addr::LOCALHOST), 9);
    sb.sockets
        .get_mut::<udp::Socket<'_>>(h)
        .send_slice(b"x", to)
        .expect("send");
    sb.run_until(5, |_| {
        gw.stats().drops(tapnet_nat::DropReason::Internal) >= 1
    });
}

#[test]
fn icmp_echo_egress_or_counted_drop() {
    let (gw, mut sb) = start(|_| {});
    let s = icmp::Socket::new(
        icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 4], vec![0; 4096]),
        icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 4], vec![0; 4096]),
    );
    let h = sb.sockets.add(s);
    sb.sockets
        .get_mut::<icmp::Socket<'_>>(h)
        .bind(icmp::Endpoint::Ident(0x4321))
        .expect("bind");
    let req = smoltcp::wire::Icmpv4Repr::EchoRequest {
        ident: 0x4321,
        seq_no: 5,
        data: b"tapnet",
    };
    let mut bytes = vec![0u8; req.buffer_len()];
    req.emit(
        &mut smoltcp::wire::Icmpv4Packet::new_unchecked(&mut bytes[..]),
        &smoltcp::phy::ChecksumCapabilities::default(),
    );
    sb.sockets
        .get_mut::<icmp::Socket<'_>>(h)
        .send_slice(&bytes, IpAddress::Ipv4(Ipv4Addr::LOCALHOST))
        .expect("send");
    let mut reply = None;
    sb.run_until(10, |sb| {
        if let Ok((b, from)) = sb.sockets.get_mut::<icmp::Socket<'_>>(h).recv() {
            reply = Some((b.to_vec(), from));
            return true;
        }
        gw.stats().drops(tapnet_nat::DropReason::PingNotPermitted) > 0
    });
    match reply {
        Some((b, from)) => {
            assert_eq!(from, IpAddress::Ipv4(Ipv4Addr::LOCALHOST));
            let p = smoltcp::wire::Icmpv4Packet::new_checked(&b[..]).expect("icmp");
            let r = smoltcp::wire::Icmpv4Repr::parse(
                &p,
                &smoltcp::phy::ChecksumCapabilities::default(),
            )
            .expect("checksum");
            assert_eq!(
                r,
                smoltcp::wire::Icmpv4Repr::EchoReply {
                    ident: 0x4321,
                    seq_no: 5,
                    data: b"tapnet"
                }
            );
        }
        None => eprintln!("ping sockets and raw sockets not permitted here: drop counted"),
    }
}
