//! IPv6 polish of issue 10 item 6: `--ipv6` without a subnet takes a /64 of the host's
//! unique local /48, and `-p` without a host IP listens on IPv4 and IPv6.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::Ipv6Addr;
use std::time::Duration;
use tapnet_tests::{connect_in, in_namespace, tcp_server, udp_echo_in, Env, WAN_HOST_IP, WAN_IP};

/// An IPv6 subnet: network address and prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Ipv6Net(Ipv6Addr, u8);

impl std::str::FromStr for Ipv6Net {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, l) = s.split_once('/').ok_or(s.to_string())?;
        Ok(Ipv6Net(
            a.parse().map_err(|_| s.to_string())?,
            l.parse().map_err(|_| s.to_string())?,
        ))
    }
}

impl std::fmt::Display for Ipv6Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.0, self.1)
    }
}

impl Ipv6Net {
    fn network(self) -> Ipv6Addr {
        self.0
    }
    fn prefix_len(self) -> u8 {
        self.1
    }
    fn mask(self) -> u128 {
        u128::MAX.checked_shl(128 - u32::from(self.1)).unwrap_or(0)
    }
    fn contains(&self, a: &Ipv6Addr) -> bool {
        u128::from(*a) & self.mask() == u128::from(self.0)
    }
    /// The /48 this subnet is in.
    fn slash48(self) -> Ipv6Addr {
        Ipv6Addr::from(u128::from(self.0) & Ipv6Net(self.0, 48).mask())
    }
}

/// The IPv6 (subnet, gateway) of `network`'s IPAM config.
fn v6_config(env: &Env, network: &str) -> (Ipv6Net, Ipv6Addr) {
    let v = env.get(&format!("/networks/{network}"));
    assert_eq!(v["EnableIPv6"], true, "{v}");
    let c = v["IPAM"]["Config"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["Subnet"].as_str().unwrap_or("").contains(':'))
        .unwrap_or_else(|| panic!("{network} has no IPv6 subnet: {v}"))
        .clone();
    (
        c["Subnet"].as_str().unwrap().parse().unwrap(),
        c["Gateway"].as_str().unwrap().parse().unwrap(),
    )
}

fn ping6(env: &Env, sandbox: &str, to: &str) {
    let out = env.exec(
        sandbox,
        &[
            "ping", "-6", "-n", "-q", "-c", "3", "-i", "0.2", "-W", "2", to,
        ],
    );
    assert!(
        out.status.success(),
        "{sandbox} cannot ping -6 {to}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn ipv6_without_subnet_takes_a_ula_64() {
    in_namespace("ipv6_without_subnet_takes_a_ula_64", |env| {
        env.ok(&["network", "create", "--ipv6", "u1"]);
        env.ok(&["network", "create", "--ipv6", "u2"]);
        let (s1, gw1) = v6_config(env, "u1");
        let (s2, gw2) = v6_config(env, "u2");
        assert_ne!(s1, s2);
        for (s, gw) in [(s1, gw1), (s2, gw2)] {
            assert_eq!(s.prefix_len(), 64, "{s}");
            assert_eq!(s.network().segments()[0] & 0xff00, 0xfd00, "ULA: {s}");
            assert_eq!(gw, Ipv6Addr::from(u128::from(s.network()) + 1), "{s} {gw}");
        }
        // Both from the same /48.
        let s48 = Ipv6Net::slash48;
        assert_eq!(s48(s1), s48(s2));

        // Sandboxes get addresses there and reach their gateway and each other over v6.
        for s in ["a", "b", "c"] {
            env.sandbox(s);
        }
        env.connect("u1", "a");
        env.connect("u1", "b");
        env.connect("u2", "c");
        let ip6 = |sb: &str, net: &str| {
            let v = env.get(&format!("/sandboxes/{sb}"));
            let a = v["Endpoints"][net]["IPv6Address"]
                .as_str()
                .unwrap()
                .to_string();
            let (addr, len) = a.split_once('/').unwrap();
            assert_eq!(len, "64", "{v}");
            addr.to_string()
        };
        let (a6, b6, c6) = (ip6("a", "u1"), ip6("b", "u1"), ip6("c", "u2"));
        assert!(
            s1.contains(&a6.parse::<Ipv6Addr>().unwrap()),
            "{a6} in {s1}"
        );
        assert!(
            s2.contains(&c6.parse::<Ipv6Addr>().unwrap()),
            "{c6} in {s2}"
        );
        ping6(env, "a", &gw1.to_string());
        ping6(env, "b", &gw1.to_string());
        ping6(env, "c", &gw2.to_string());
        ping6(env, "a", &b6);

        // After a restart the subnets are the same, and a new network gets another /64.
        env.stop_daemon();
        env.start_daemon();
        assert_eq!(v6_config(env, "u1"), (s1, gw1));
        assert_eq!(v6_config(env, "u2"), (s2, gw2));
        env.ok(&["network", "create", "--ipv6", "u3"]);
        let (s3, _) = v6_config(env, "u3");
        assert!(s3 != s1 && s3 != s2 && s48(s3) == s48(s1), "{s3}");
        ping6(env, "a", &gw1.to_string());

        // The pool can be replaced; an explicit subnet still wins.
        env.stop_daemon();
        env.start_daemon_with(&["--default-ipv6-pool", "base=fd42:1:2::/56,size=64"]);
        env.ok(&["network", "create", "--ipv6", "u4"]);
        let (s4, _) = v6_config(env, "u4");
        assert_eq!(s4.to_string(), "fd42:1:2::/64");
        env.ok(&["network", "create", "--ipv6", "--subnet", "fd99::/64", "u5"]);
        assert_eq!(v6_config(env, "u5").0.to_string(), "fd99::/64");
    });
}

/// Read one line from `c`.
fn read_line(c: &mut std::net::TcpStream) -> String {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while byte[0] != b'\n' {
        std::io::Read::read_exact(c, &mut byte).expect("a line from the sandbox");
        line.push(byte[0]);
    }
    String::from_utf8(line).unwrap().trim().to_string()
}

/// The greeting of the server in the sandbox, seen from the wan through `addr`.
fn greeting(wan: &tapnet_tests::Wan, addr: &str) -> String {
    let mut c = connect_in(&wan.ns, addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect to {addr} from the wan: {e}"));
    read_line(&mut c)
}

/// One UDP request/response from the wan to `addr` (either family), retried up to 5
/// times (1 s each): the reply and where it came from.
fn udp_roundtrip(
    wan: &tapnet_tests::Wan,
    addr: &str,
    payload: &[u8],
) -> Option<(Vec<u8>, std::net::SocketAddr)> {
    let to: std::net::SocketAddr = addr.parse().unwrap();
    let local = if to.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" };
    let sock = wan.run(|| std::net::UdpSocket::bind(local)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut buf = vec![0u8; 2048];
    for _ in 0..5 {
        sock.send_to(payload, to).unwrap();
        if let Ok((k, from)) = sock.recv_from(&mut buf) {
            return Some((buf[..k].to_vec(), from));
        }
    }
    None
}

#[test]
fn publish_without_host_ip_listens_on_v4_and_v6() {
    in_namespace("publish_without_host_ip_listens_on_v4_and_v6", |env| {
        let wan = env.wan();
        // IPv6 on the wan link too: host fd77::1, wan fd77::2.
        env.host_cmd(&["ip", "addr", "add", "fd77::1/64", "dev", "wan0", "nodad"]);
        env.host_cmd(&[
            "ip",
            "-n",
            "wan",
            "addr",
            "add",
            "fd77::2/64",
            "dev",
            "eth0",
            "nodad",
        ]);
        env.network("pub", "10.97.0.0/24");
        env.ok(&[
            "sandbox",
            "create",
            "-p",
            "8080:80",
            "-p",
            "9999:99/udp",
            "-p",
            "0.0.0.0:8082:80",
            "-p",
            "81",
            "web",
        ]);
        env.connect("pub", "web");
        let ns = env.sandbox_ns("web");
        let server = tcp_server(&ns, "0.0.0.0:80", |mut s| {
            let peer = s.peer_addr().unwrap();
            let _ = std::io::Write::write_all(&mut s, format!("hello {peer}\n").as_bytes());
        });
        let _server81 = tcp_server(&ns, "0.0.0.0:81", |mut s| {
            let _ = std::io::Write::write_all(&mut s, b"hello 81\n");
        });
        let udp = udp_echo_in(&ns, "0.0.0.0:99");

        // The same port over IPv4 and IPv6, bytes back from the sandbox.
        let v4 = greeting(&wan, &format!("{WAN_HOST_IP}:8080"));
        assert!(v4.starts_with(&format!("hello {WAN_IP}:")), "{v4}");
        let v6 = greeting(&wan, "[fd77::1]:8080");
        // An IPv6 client reaches the IPv4 sandbox from the network's gateway address.
        assert!(v6.starts_with("hello 10.97.0.1:"), "{v6}");
        assert_eq!(server.seen().len(), 2);
        for addr in [format!("{WAN_HOST_IP}:9999"), "[fd77::1]:9999".to_string()] {
            let (reply, from) = udp_roundtrip(&wan, &addr, b"dual udp")
                .unwrap_or_else(|| panic!("no UDP reply through {addr}"));
            assert_eq!(reply, b"dual udp");
            assert_eq!(from.to_string(), addr);
        }
        assert_eq!(udp.seen().len(), 2, "{:?}", udp.seen());
        // An explicit 0.0.0.0 is IPv4 only.
        assert!(greeting(&wan, &format!("{WAN_HOST_IP}:8082")).starts_with("hello "));
        assert!(connect_in(&wan.ns, "[fd77::1]:8082", Duration::from_secs(5)).is_err());

        // The API lists both sockets, as dockerd does; a picked port is the same on both.
        let v = env.get("/sandboxes/web");
        let ports = &v["Ports"];
        assert_eq!(
            ports["80/tcp"],
            serde_json::json!([
                {"HostIp": "0.0.0.0", "HostPort": "8080"},
                {"HostIp": "::", "HostPort": "8080"},
                {"HostIp": "0.0.0.0", "HostPort": "8082"}
            ]),
            "{v}"
        );
        assert_eq!(
            ports["99/udp"],
            serde_json::json!([{"HostIp": "0.0.0.0", "HostPort": "9999"}, {"HostIp": "::", "HostPort": "9999"}]),
            "{v}"
        );
        let picked = ports["81/tcp"][0]["HostPort"].as_str().unwrap().to_string();
        assert_eq!(ports["81/tcp"][1]["HostPort"], picked.as_str(), "{v}");
        assert_eq!(greeting(&wan, &format!("[fd77::1]:{picked}")), "hello 81");
        assert_eq!(
            greeting(&wan, &format!("{WAN_HOST_IP}:{picked}")),
            "hello 81"
        );

        // A daemon restart binds both again.
        env.stop_daemon();
        env.start_daemon();
        assert!(greeting(&wan, "[fd77::1]:8080").starts_with("hello 10.97.0.1:"));
        assert!(greeting(&wan, &format!("{WAN_HOST_IP}:8080")).starts_with("hello "));

        // Removing the sandbox frees both families' sockets.
        env.ok(&["sandbox", "rm", "web"]);
        drop(std::net::TcpListener::bind("0.0.0.0:8080").expect("IPv4 8080 freed"));
        drop(std::net::TcpListener::bind("[::]:8080").expect("IPv6 8080 freed"));
        drop(std::net::UdpSocket::bind("[::]:9999").expect("IPv6 9999 freed"));
    });
}
