//! In-process end-to-end tests: a smoltcp "sandbox" on the far end of the gateway's
//! socketpair (or, for the `linked_*` tests, of its in-process link,
//! `tapnet_nat::port`; for the `inline_*` tests, the sandbox drives an
//! [`InlineGateway`] as the switch worker would, on its own thread), real host servers on
//! 127.0.0.1. No privileges, loopback traffic only.

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
use tapnet_nat::port::SwitchPort;
use tapnet_nat::{Config, Gateway, GatewayHandle, InlineGateway, NameRecord, Proto, PublishSpec};
use tapnet_switch::runtime::FrameIo;

const GW: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 1);
const SB: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 2);

/// The switch side of the gateway's link, played by the sandbox.
enum Wire {
    Socket(UnixDatagram),
    Link(SwitchPort),
    Inline(Box<InlineGateway>),
}

/// How the gateway is reached.
#[derive(Clone, Copy)]
enum Via {
    /// A socket pair, the gateway on its thread.
    Socket,
    /// The in-process link, the gateway on its thread.
    Link,
    /// The gateway run by the caller's thread ([`Gateway::inline`]).
    Inline,
    /// Inline, with tap offloads (as the engine runs it): frames from the sandbox are
    /// handled where they lie (no copy), big segments toward it leave as GSO frames.
    InlineOffload,
}

impl Wire {
    fn recv(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Wire::Socket(s) => s.recv(buf),
            Wire::Link(p) => p.recv(buf),
            Wire::Inline(g) => g.recv(buf),
        }
    }
    fn send(&mut self, frame: &[u8]) -> std::io::Result<usize> {
        match self {
            Wire::Socket(s) => s.send(frame),
            Wire::Link(p) => p.send(frame),
            Wire::Inline(g) => g.send(frame),
        }
    }
}

struct Dev {
    sock: Wire,
    rx: VecDeque<Vec<u8>>,
    tx: VecDeque<Vec<u8>>,
    /// Tap offloads: frames up to 64 KiB, TCP checksums left partial by the gateway.
    offloads: bool,
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
        if self.offloads {
            // What a tap with offloads hands the kernel: GSO super-frames (smoltcp takes
            // frames past its MTU; its MSS stays that of a 1500-byte MTU, like a
            // sandbox's) whose TCP checksum is partial (the kernel takes them as valid).
            c.checksum.tcp = phy::Checksum::Tx;
        }
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
    /// Run `f` (a call on the gateway's handle) on another thread while this one pumps:
    /// an inline gateway answers its handle only while its port is served.
    fn while_pumping<T: Send>(&mut self, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|scope| {
            let call = scope.spawn(f);
            while !call.is_finished() {
                self.pump();
                std::thread::sleep(Duration::from_micros(200));
            }
            call.join().expect("gateway call")
        })
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
    start_on(Via::Socket, cfg_fn)
}

/// A gateway reached `via` a socket pair, the in-process link (`tapnet_nat::port::link`)
/// or run inline by the sandbox's thread.
fn start_on(via: Via, cfg_fn: impl FnOnce(&mut Config)) -> (GatewayHandle, Sandbox) {
    let mut cfg = Config::new([2, 0, 0, 0, 0, 1], GW, 24);
    cfg.rewrite_loopback_clients = false;
    cfg.tap_offloads = matches!(via, Via::InlineOffload);
    cfg_fn(&mut cfg);
    let (gw, wire) = if let Via::Link = via {
        let (port, link) = tapnet_nat::port::link().expect("link");
        (Gateway::spawn(cfg, link).expect("spawn"), Wire::Link(port))
    } else if let Via::Inline | Via::InlineOffload = via {
        let (gw, port) = Gateway::inline(cfg).expect("inline");
        (gw, Wire::Inline(Box::new(port)))
    } else {
        // What DatagramPort::pair() does: the port end plays the switch side (here: the
        // sandbox directly), the peer end goes to the gateway.
        let (port, peer) = UnixDatagram::pair().expect("pair");
        port.set_nonblocking(true).expect("nonblocking");
        (
            Gateway::spawn(cfg, peer).expect("spawn"),
            Wire::Socket(port),
        )
    };
    let mut dev = Dev {
        sock: wire,
        rx: VecDeque::new(),
        tx: VecDeque::new(),
        offloads: matches!(via, Via::InlineOffload),
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
    tcp_egress_10mb(Via::Socket);
}

#[test]
fn linked_tcp_egress_transfers_10mb_intact_with_half_close() {
    tcp_egress_10mb(Via::Link);
}

#[test]
fn inline_tcp_egress_transfers_10mb_intact_with_half_close() {
    tcp_egress_10mb(Via::Inline);
}

#[test]
fn inline_offload_tcp_egress_transfers_10mb_intact_with_half_close() {
    tcp_egress_10mb(Via::InlineOffload);
}

fn tcp_egress_10mb(via: Via) {
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
    let (gw, mut sb) = start_on(via, |_| {});
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

/// Read everything the sandbox's socket `h` has.
fn drain(sb: &mut Sandbox, h: SocketHandle, got: &mut Vec<u8>, at_most: usize) {
    let s = sb.sockets.get_mut::<tcp::Socket<'_>>(h);
    let mut taken = 0;
    while s.can_recv() && taken < at_most {
        taken += s
            .recv(|b| {
                let k = b.len().min(at_most - taken);
                got.extend_from_slice(&b[..k]);
                (k, k)
            })
            .expect("recv");
    }
}

/// A sandbox connection to the host server at `addr`, from `port`.
fn connect_out(sb: &mut Sandbox, addr: SocketAddr, port: u16) -> SocketHandle {
    let h = sb.tcp();
    let cx = sb.iface.context();
    sb.sockets
        .get_mut::<tcp::Socket<'_>>(h)
        .connect(
            cx,
            IpEndpoint::new(IpAddress::Ipv4(Ipv4Addr::LOCALHOST), addr.port()),
            port,
        )
        .expect("connect");
    h
}

#[test]
fn published_port_bulk_both_ways_with_half_close() {
    published_bulk(Via::Socket);
}

#[test]
fn linked_published_port_bulk_both_ways_with_half_close() {
    published_bulk(Via::Link);
}

#[test]
fn inline_published_port_bulk_both_ways_with_half_close() {
    published_bulk(Via::Inline);
}

#[test]
fn inline_offload_published_port_bulk_both_ways_with_half_close() {
    published_bulk(Via::InlineOffload);
}

/// A published-port client sends 6 MB and half-closes; the sandbox checks every byte,
/// answers 6 MB of another pattern and closes; the client checks every byte.
fn published_bulk(via: Via) {
    let (gw, mut sb) = start_on(via, |_| {});
    let bound = sb
        .while_pumping(|| {
            gw.publish(PublishSpec {
                host_ip: Ipv4Addr::LOCALHOST.into(),
                host_port: 0,
                proto: Proto::Tcp,
                sandbox_ip: SB.into(),
                sandbox_port: 8081,
            })
        })
        .expect("publish");
    let up = pattern(6 << 20);
    let down: Vec<u8> = pattern((6 << 20) + 13).into_iter().rev().collect();
    let (up2, down2) = (up.clone(), down.clone());
    let client = std::thread::spawn(move || {
        let mut c = TcpStream::connect(bound).expect("connect");
        let writer = {
            let mut w = c.try_clone().expect("clone");
            std::thread::spawn(move || {
                w.write_all(&up2).expect("write");
                w.shutdown(std::net::Shutdown::Write).expect("half-close");
            })
        };
        let mut r = Vec::new();
        c.read_to_end(&mut r).expect("read");
        writer.join().expect("writer");
        assert!(
            r == down2,
            "the client got {} bytes, not the sandbox's",
            r.len()
        );
    });
    let h = sb.tcp();
    sb.sockets
        .get_mut::<tcp::Socket<'_>>(h)
        .listen(8081)
        .expect("listen");
    let mut got = Vec::new();
    sb.run_until(120, |sb| {
        drain(sb, h, &mut got, usize::MAX);
        let s = sb.sockets.get_mut::<tcp::Socket<'_>>(h);
        got.len() >= up.len() && !s.may_recv()
    });
    if let Via::InlineOffload = via {
        // With tap offloads the client's bytes reach the sandbox in GSO super-frames
        // (the gateway's stack believes the sandbox's MSS is 64 KiB): 6 MiB in about a
        // hundred frames, not the ~4,400 of 1,440-byte segments.
        let st = sb.while_pumping(|| gw.stats());
        assert!(
            st.frames_out < 1000,
            "{} frames toward the sandbox for 6 MiB: no super-frames",
            st.frames_out
        );
    }
    let mut sent = 0;
    let mut closed = false;
    sb.run_until(120, |sb| {
        drain(sb, h, &mut got, usize::MAX);
        let s = sb.sockets.get_mut::<tcp::Socket<'_>>(h);
        // Answer once the client's half-close arrived after all its bytes.
        if got.len() == up.len() && !s.may_recv() {
            if sent < down.len() && s.can_send() {
                sent += s.send_slice(&down[sent..]).expect("send");
            }
            if sent == down.len() && !closed {
                s.close();
                closed = true;
            }
        }
        closed && client.is_finished()
    });
    assert!(
        got == up,
        "the sandbox got {} bytes, not the client's",
        got.len()
    );
    client.join().expect("client");
}

#[test]
fn tcp_resets_cross_the_gateway_both_ways() {
    resets(Via::Socket);
}

#[test]
fn linked_tcp_resets_cross_the_gateway_both_ways() {
    resets(Via::Link);
}

#[test]
fn inline_tcp_resets_cross_the_gateway_both_ways() {
    resets(Via::Inline);
}

#[test]
fn inline_offload_tcp_resets_cross_the_gateway_both_ways() {
    resets(Via::InlineOffload);
}

/// An abort inside reaches the host as a reset (not an end of stream), and a reset
/// outside aborts the sandbox's connection (no FIN, no CloseWait).
fn resets(via: Via) {
    let server = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = server.local_addr().expect("addr");
    let host = std::thread::spawn(move || {
        // First connection: read until the sandbox's abort shows.
        let (mut a, _) = server.accept().expect("accept");
        let mut buf = [0u8; 16];
        let mut got = Vec::new();
        let first_end = loop {
            match a.read(&mut buf) {
                Ok(0) => break None,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => break Some(e.kind()),
            }
        };
        // Second connection: send a little, then reset it (SO_LINGER 0).
        let (mut b, _) = server.accept().expect("accept");
        b.write_all(b"bye").expect("write");
        std::thread::sleep(Duration::from_millis(200));
        socket2::SockRef::from(&b)
            .set_linger(Some(Duration::ZERO))
            .expect("linger");
        drop(b);
        (got, first_end)
    });
    let (_gw, mut sb) = start_on(via, |_| {});
    let h = connect_out(&mut sb, addr, 40100);
    let mut aborted = false;
    let mut sent = false;
    sb.run_until(10, |sb| {
        let s = sb.sockets.get_mut::<tcp::Socket<'_>>(h);
        if s.state() == tcp::State::Established && !sent && s.can_send() {
            s.send_slice(b"abc").expect("send");
            sent = true;
        } else if sent && !aborted && s.send_queue() == 0 {
            s.abort();
            aborted = true;
        }
        aborted && s.state() == tcp::State::Closed
    });
    let h2 = connect_out(&mut sb, addr, 40101);
    let mut got = Vec::new();
    let mut close_wait = false;
    let mut established = false;
    sb.run_until(10, |sb| {
        drain(sb, h2, &mut got, usize::MAX);
        let s = sb.sockets.get_mut::<tcp::Socket<'_>>(h2);
        established |= s.state() == tcp::State::Established;
        close_wait |= s.state() == tcp::State::CloseWait;
        established && s.state() == tcp::State::Closed
    });
    let (first, first_end) = host.join().expect("host");
    assert_eq!(first, b"abc");
    assert_eq!(
        first_end,
        Some(std::io::ErrorKind::ConnectionReset),
        "the sandbox's abort must reach the host as a reset"
    );
    assert_eq!(got, b"bye");
    assert!(
        !close_wait,
        "a reset outside must not look like a clean close"
    );
}

#[test]
fn slow_readers_both_ways_get_every_byte() {
    slow_readers(Via::Socket);
}

#[test]
fn linked_slow_readers_both_ways_get_every_byte() {
    slow_readers(Via::Link);
}

#[test]
fn inline_slow_readers_both_ways_get_every_byte() {
    slow_readers(Via::Inline);
}

#[test]
fn inline_offload_slow_readers_both_ways_get_every_byte() {
    slow_readers(Via::InlineOffload);
}

/// Windows close and reopen: a host reader that starts late and reads in small pieces,
/// and a sandbox that reads at most 2 KiB per turn, each getting 3 MB intact.
fn slow_readers(via: Via) {
    const LEN: usize = 3 << 20;
    let server = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = server.local_addr().expect("addr");
    let host = std::thread::spawn(move || {
        // Upload: the host reads late and slowly.
        let (mut up, _) = server.accept().expect("accept");
        std::thread::sleep(Duration::from_millis(500));
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = up.read(&mut buf).expect("read");
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
            if got.len() % (256 << 10) < 4096 {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        // Download: the host writes everything at once; the sandbox reads slowly.
        let (mut down, _) = server.accept().expect("accept");
        down.write_all(&pattern(LEN + 1)[1..]).expect("write");
        drop(down);
        got
    });
    let (_gw, mut sb) = start_on(via, |_| {});
    let data = pattern(LEN);
    let h = connect_out(&mut sb, addr, 40200);
    let mut sent = 0;
    let mut closed = false;
    sb.run_until(60, |sb| {
        let s = sb.sockets.get_mut::<tcp::Socket<'_>>(h);
        if sent < data.len() && s.can_send() {
            sent += s.send_slice(&data[sent..]).expect("send");
        }
        if sent == data.len() && !closed {
            s.close();
            closed = true;
        }
        closed && matches!(s.state(), tcp::State::FinWait2 | tcp::State::TimeWait)
    });
    let h2 = connect_out(&mut sb, addr, 40201);
    let mut got = Vec::new();
    sb.run_until(60, |sb| {
        drain(sb, h2, &mut got, 2048);
        let s = sb.sockets.get_mut::<tcp::Socket<'_>>(h2);
        got.len() == LEN && !s.may_recv()
    });
    assert!(
        got == pattern(LEN + 1)[1..],
        "the sandbox's download differs"
    );
    let up = host.join().expect("host");
    assert!(
        up == data,
        "the host got {} bytes, not the sandbox's",
        up.len()
    );
}

/// An inline gateway told to stop ends its port: the switch reads end of stream (and
/// retires the port) and frames toward it are refused; its handle's calls say `Gone`.
#[test]
fn inline_shutdown_ends_the_port() {
    let cfg = Config::new([2, 0, 0, 0, 0, 1], GW, 24);
    let (gw, mut port) = Gateway::inline(cfg).expect("inline");
    let mut buf = vec![0u8; 70000];
    // Nothing to say yet: no frame, and the port is not ended.
    let e = port.recv(&mut buf).expect_err("no frame yet");
    assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock);
    gw.shutdown();
    assert_eq!(port.recv(&mut buf).expect("end of stream"), 0);
    let e = port.send(&[0u8; 60]).expect_err("refused");
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);
}

/// Readiness as the switch worker sees it: every frame the switch hands an inline
/// gateway makes the port readable (its waker), even when the frame was handled at once
/// and its reply left the port in the same `recv_batch` — the worker then stops serving
/// the port until its next event, so a missing wake-up would leave the next frames
/// unanswered until some timer. Both with tap offloads (frames handled where they lie)
/// and without (frames queued).
#[test]
fn inline_port_is_readable_after_every_frame_it_is_sent() {
    use std::os::fd::AsRawFd;
    use tapnet_switch::runtime::FrameBatch;
    for offloads in [true, false] {
        let mut cfg = Config::new([2, 0, 0, 0, 0, 1], GW, 24);
        cfg.tap_offloads = offloads;
        let (_gw, mut port) = Gateway::inline(cfg).expect("inline");
        // The worker's poll: edge-triggered, so only a new event counts.
        let mut poll = mio::Poll::new().expect("poll");
        let fd = port.as_raw_fd();
        poll.registry()
            .register(
                &mut mio::unix::SourceFd(&fd),
                mio::Token(0),
                mio::Interest::READABLE,
            )
            .expect("register");
        let mut events = mio::Events::with_capacity(8);
        let mut readable = || {
            poll.poll(&mut events, Some(Duration::ZERO)).expect("poll");
            !events.is_empty()
        };
        readable();
        // ARP request for the gateway from 172.30.0.2 (02:00:00:00:00:02), after a zeroed
        // virtio-net header: answered by an ARP reply.
        let mut frame = vec![0u8; 10];
        frame.extend_from_slice(&[0xff; 6]);
        frame.extend_from_slice(&[2, 0, 0, 0, 0, 2, 0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
        frame.extend_from_slice(&[2, 0, 0, 0, 0, 2, 172, 30, 0, 2, 0, 0, 0, 0, 0, 0]);
        frame.extend_from_slice(&[172, 30, 0, 1]);
        let mut batch = FrameBatch::new(64, 70_000, 1 << 20);
        for round in 0..4 {
            port.send(&frame).expect("send");
            assert!(
                readable(),
                "offloads {offloads}, round {round}: a frame was sent but the port is not readable"
            );
            // What the worker does: read batches until one stops short.
            let mut replies = 0;
            loop {
                batch.clear();
                match port.recv_batch(&mut batch) {
                    Ok(n) => replies += n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("recv_batch: {e}"),
                }
                if batch.take_stop().is_some() {
                    break;
                }
            }
            assert_eq!(
                replies, 1,
                "offloads {offloads}, round {round}: one ARP reply"
            );
        }
    }
}
