//! The userspace gateway of bridge networks, with real traffic to and from a "wan"
//! namespace standing for the outside world (see `Env::wan` in the harness): ARP and
//! ping of the gateway, NAT egress (TCP with RST and half-close, UDP, ICMP), published
//! TCP/UDP ports with the client's source address preserved, embedded DNS (peers,
//! aliases, round-robin, PTR, forwarding, SERVFAIL), `tapnet run`, and the network
//! policy (internal networks, ICC off, cross-network isolation, anti-spoofing).
//!
//! Every socket has a timeout: a broken path fails a test, it never hangs it.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use serde_json::Value;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tapnet_tests::{
    connect_in, in_namespace, n, python3, tcp_server, udp_echo_in, udp_roundtrip_in, Env, Wan,
    WAN_DEAD_IP, WAN_DNS_ANSWER, WAN_DNS_NAME, WAN_HOST_IP, WAN_IP,
};

const ECHO: u16 = 7;
const HALF_CLOSE: u16 = 9000;
const CLOSED: u16 = 9;

fn host_ip() -> IpAddr {
    WAN_HOST_IP.parse().unwrap()
}

fn wan_ip() -> IpAddr {
    WAN_IP.parse().unwrap()
}

/// The wan namespace, and the daemon restarted from nothing with `--dns 198.18.0.2`.
fn wan_and_daemon(env: &mut Env) -> Wan {
    let wan = env.wan();
    env.restart_fresh(&["--dns", WAN_IP]);
    wan
}

/// Write `len` patterned bytes and read them back through an echo server.
fn echo_roundtrip(s: &mut std::net::TcpStream, len: usize) {
    let data: Vec<u8> = (0..len)
        .map(|i| (i % 251) as u8 ^ (i >> 12) as u8)
        .collect();
    let mut w = s.try_clone().unwrap();
    let sent = data.clone();
    let writer = std::thread::spawn(move || w.write_all(&sent));
    let mut got = vec![0u8; len];
    s.read_exact(&mut got).expect("echo reply");
    writer.join().unwrap().expect("write to echo server");
    assert!(got == data, "echoed data differs from what was sent");
}

/// The harness itself: the wan's servers answer the daemon's host directly (no tapnet
/// in the path), so a failure in the tests below is tapnet's, not the harness's.
#[test]
fn wan_harness_self_check() {
    in_namespace("wan_harness_self_check", |env| {
        let wan = env.wan();
        let echo = wan.tcp_echo(ECHO);
        let _half = wan.tcp_half_close(HALF_CLOSE);
        let _udp = wan.udp_echo(ECHO);
        let dns = wan.dns();
        let host =
            tapnet_sandbox::netns::Netns::open(std::path::Path::new("/proc/self/ns/net")).unwrap();
        let mut c = connect_in(&host, &format!("{WAN_IP}:{ECHO}"), Duration::from_secs(2)).unwrap();
        echo_roundtrip(&mut c, 1 << 20);
        assert_eq!(echo.seen()[0].ip(), host_ip());
        let err =
            connect_in(&host, &format!("{WAN_IP}:{CLOSED}"), Duration::from_secs(2)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ConnectionRefused);
        let mut c = connect_in(
            &host,
            &format!("{WAN_IP}:{HALF_CLOSE}"),
            Duration::from_secs(2),
        )
        .unwrap();
        c.write_all(b"12345").unwrap();
        c.shutdown(std::net::Shutdown::Write).unwrap();
        let mut reply = String::new();
        c.read_to_string(&mut reply).unwrap();
        assert_eq!(reply, "got 5 bytes");
        let (r, _) = udp_roundtrip_in(&host, &format!("{WAN_IP}:{ECHO}"), b"u").unwrap();
        assert_eq!(r, b"u");
        // The DNS server, asked with the same raw-query script the sandboxes use.
        let out = Command::new(python3())
            .args([
                "-c",
                tapnet_tests::DNS_QUERY_PY,
                WAN_IP,
                WAN_DNS_NAME,
                "A",
                "3",
            ])
            .output()
            .unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{out:?}"));
        assert_eq!(v["rcode"], 0);
        assert_eq!(v["answers"][0], WAN_DNS_ANSWER);
        assert_eq!(dns.query_count(), 1);
    });
}

#[test]
fn gateway_answers_arp_and_ping() {
    in_namespace("gateway_answers_arp_and_ping", |env| {
        env.network("net1", "10.70.0.0/24");
        env.sandbox("a");
        env.connect("net1", "a");
        let gw = env.gateway_of("net1");
        assert_eq!(gw, "10.70.0.1");
        assert!(env.ping("a", &gw, 3), "the gateway does not answer ping");
        // The sandbox learnt the gateway's MAC by ARP: 02:42 + the gateway's IPv4.
        let neigh = env.exec_ok("a", &["ip", "neigh", "show", &gw]);
        assert!(
            neigh.contains("02:42:0a:46:00:01"),
            "ARP entry of the gateway: {neigh}"
        );
        let g = env.gateway_stats("net1");
        assert!(n(&g, "FramesIn") >= 4 && n(&g, "FramesOut") >= 4, "{g}");
        // The switch's view of the same conversation: its gateway port carried it.
        let sp = &g["SwitchPort"];
        assert_eq!(sp["Interface"], "gateway", "{g}");
        assert!(n(sp, "TxPackets") >= 4 && n(sp, "RxPackets") >= 4, "{g}");
    });
}

#[test]
fn tcp_egress_echo_refused_and_half_close() {
    in_namespace("tcp_egress_echo_refused_and_half_close", |env| {
        let wan = wan_and_daemon(env);
        let echo = wan.tcp_echo(ECHO);
        let half = wan.tcp_half_close(HALF_CLOSE);
        env.network("net1", "10.71.0.0/24");
        env.sandbox("a");
        env.connect("net1", "a");
        let ns = env.sandbox_ns("a");

        // Data through the NAT both ways, intact (several MB: windows fill and drain).
        let mut s = connect_in(&ns, &format!("{WAN_IP}:{ECHO}"), Duration::from_secs(5))
            .expect("connect to the wan echo server");
        echo_roundtrip(&mut s, 4 << 20);
        drop(s);
        // The wan saw the host's address, not the sandbox's.
        let seen = echo.seen();
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert_eq!(seen[0].ip(), host_ip(), "source seen by the wan: {seen:?}");

        // Nothing listens outside: the connect inside is refused (RST), quickly.
        let t0 = Instant::now();
        let err = connect_in(&ns, &format!("{WAN_IP}:{CLOSED}"), Duration::from_secs(8))
            .expect_err("connected to a closed port");
        assert_eq!(
            err.kind(),
            ErrorKind::ConnectionRefused,
            "want ECONNREFUSED, got {err} after {:?}",
            t0.elapsed()
        );
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());

        // Half-close: shut our write side, the server reads EOF and still replies.
        let mut s = connect_in(
            &ns,
            &format!("{WAN_IP}:{HALF_CLOSE}"),
            Duration::from_secs(5),
        )
        .expect("connect to the half-close server");
        s.write_all(&[0x5a; 100_000]).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply)
            .expect("reply after our FIN (half-close)");
        assert_eq!(reply, "got 100000 bytes");
        assert_eq!(half.seen().len(), 1);

        let g = env.gateway_stats("net1");
        assert!(n(&g["Flows"]["tcp"], "Total") >= 3, "{g}");
    });
}

#[test]
fn udp_and_icmp_egress() {
    in_namespace("udp_and_icmp_egress", |env| {
        let wan = wan_and_daemon(env);
        let echo = wan.udp_echo(ECHO);
        env.network("net1", "10.72.0.0/24");
        env.sandbox("a");
        env.connect("net1", "a");
        let ns = env.sandbox_ns("a");
        let (reply, from) = udp_roundtrip_in(&ns, &format!("{WAN_IP}:{ECHO}"), b"hello wan")
            .expect("no UDP echo reply through the gateway");
        assert_eq!(reply, b"hello wan");
        assert_eq!(
            from,
            format!("{WAN_IP}:{ECHO}").parse::<SocketAddr>().unwrap()
        );
        let seen = echo.seen();
        assert!(
            !seen.is_empty() && seen.iter().all(|p| p.ip() == host_ip()),
            "{seen:?}"
        );
        // A bigger datagram (fragmented neither side of a 1500 MTU).
        let big = vec![0xa5u8; 1400];
        let (reply, _) = udp_roundtrip_in(&ns, &format!("{WAN_IP}:{ECHO}"), &big)
            .expect("no reply to a 1400-byte datagram");
        assert_eq!(reply, big);
        // ICMP echo to the outside.
        assert!(
            env.ping("a", WAN_IP, 3),
            "ping 198.18.0.2 through the gateway"
        );
        let g = env.gateway_stats("net1");
        assert!(n(&g["Flows"]["udp"], "Total") >= 1, "{g}");
        assert!(n(&g["Flows"]["icmp"], "Total") >= 1, "{g}");
    });
}

#[test]
fn published_tcp_and_udp_ports() {
    in_namespace("published_tcp_and_udp_ports", |env| {
        let wan = wan_and_daemon(env);
        env.network("net1", "10.73.0.0/24");
        env.ok(&[
            "sandbox",
            "create",
            "-p",
            "8080:80",
            "-p",
            "9999:99/udp",
            "web",
        ]);
        let ip = env.connect("net1", "web");
        let ns = env.sandbox_ns("web");
        // TCP server inside the sandbox: sends a greeting with the peer it sees, then echoes.
        let server = tcp_server(&ns, "0.0.0.0:80", |mut s| {
            let peer = s.peer_addr().unwrap();
            let _ = s.write_all(format!("you are {peer}\n").as_bytes());
            let mut buf = [0u8; 4096];
            while let Ok(k) = s.read(&mut buf) {
                if k == 0 || s.write_all(&buf[..k]).is_err() {
                    break;
                }
            }
        });
        let udp = udp_echo_in(&ns, "0.0.0.0:99");

        // From the wan, to the host's address.
        let wns = &wan.ns;
        let mut c = connect_in(wns, &format!("{WAN_HOST_IP}:8080"), Duration::from_secs(5))
            .expect("connect to the published port from the wan");
        let client_addr = c.local_addr().unwrap();
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while byte[0] != b'\n' {
            c.read_exact(&mut byte).expect("greeting from the sandbox");
            line.push(byte[0]);
        }
        let line = String::from_utf8(line).unwrap();
        assert_eq!(
            line.trim(),
            format!("you are {client_addr}"),
            "the server in the sandbox must see the wan client's own address and port"
        );
        echo_roundtrip(&mut c, 1 << 20);
        drop(c);
        assert_eq!(server.seen()[0].ip(), wan_ip());

        let (reply, from) = udp_roundtrip_in(wns, &format!("{WAN_HOST_IP}:9999"), b"ping udp")
            .expect("no reply through the published UDP port");
        assert_eq!(reply, b"ping udp");
        assert_eq!(from.to_string(), format!("{WAN_HOST_IP}:9999"));
        let seen = udp.seen();
        assert!(
            !seen.is_empty() && seen.iter().all(|p| p.ip() == wan_ip()),
            "{seen:?}"
        );

        // What the CLI and the API show.
        let port = env.ok(&["port", "web"]);
        assert!(port.contains("80/tcp -> 0.0.0.0:8080"), "{port}");
        assert!(port.contains("99/udp -> 0.0.0.0:9999"), "{port}");
        let v = env.get("/sandboxes/web");
        assert_eq!(v["Ports"]["80/tcp"][0]["HostPort"], "8080", "{v}");
        assert_eq!(v["Ports"]["99/udp"][0]["HostPort"], "9999", "{v}");
        let _ = ip;

        // A second sandbox asking for the same host port: a clear error, nothing made.
        let before = env.get("/sandboxes");
        let err = env.fails(&["sandbox", "create", "-p", "8080:80", "web2"]);
        assert!(
            err.contains("8080"),
            "the error should name the port: {err}"
        );
        assert_eq!(
            env.get("/sandboxes"),
            before,
            "state changed by a failed create"
        );
        let (code, _) = env.api("GET", "/sandboxes/web2", None);
        assert_eq!(code, 404);

        // A port that becomes busy between create and connect: the connect fails and is
        // rolled back (no endpoint, no address held, the sandbox unchanged).
        env.ok(&["sandbox", "create", "-p", "8081:80", "web3"]);
        let squatter = TcpListener::bind("0.0.0.0:8081").unwrap();
        let err = env.fails(&["network", "connect", "net1", "web3"]);
        assert!(
            err.contains("8081"),
            "the error should name the port: {err}"
        );
        let v = env.get("/sandboxes/web3");
        assert!(
            v["Endpoints"]
                .as_object()
                .map(|e| e.is_empty())
                .unwrap_or(true),
            "half-made endpoint after a failed connect: {v}"
        );
        let net = env.get("/networks/net1");
        assert_eq!(net["Containers"].as_object().unwrap().len(), 1, "{net}");
        drop(squatter);

        // Removing the sandbox frees its host ports.
        env.ok(&["sandbox", "rm", "web"]);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let tcp = TcpListener::bind("0.0.0.0:8080");
            let udp = UdpSocket::bind("0.0.0.0:9999");
            if tcp.is_ok() && udp.is_ok() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "host ports still held after sandbox rm: tcp {:?} udp {:?}",
                tcp.err(),
                udp.err()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    });
}

#[test]
fn random_host_port_and_run_publish() {
    in_namespace("random_host_port_and_run_publish", |env| {
        let wan = wan_and_daemon(env);
        env.network("net1", "10.74.0.0/24");
        env.ok(&["sandbox", "create", "-p", "80", "web"]);
        env.connect("net1", "web");
        let ns = env.sandbox_ns("web");
        let _server = tcp_server(&ns, "0.0.0.0:80", |mut s| {
            let _ = s.write_all(b"hi");
        });
        let port = env.ok(&["port", "web"]);
        let host_port: u16 = port
            .lines()
            .find(|l| l.starts_with("80/tcp -> "))
            .and_then(|l| l.rsplit(':').next())
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("no random host port for 80/tcp: {port}"));
        assert_ne!(host_port, 0);
        let mut c = connect_in(
            &wan.ns,
            &format!("{WAN_HOST_IP}:{host_port}"),
            Duration::from_secs(5),
        )
        .expect("connect to the random host port");
        let mut got = String::new();
        c.read_to_string(&mut got).unwrap();
        assert_eq!(got, "hi");
    });
}

#[test]
fn dns_names_aliases_round_robin_ptr_forwarding() {
    in_namespace("dns_names_aliases_round_robin_ptr_forwarding", |env| {
        let wan = wan_and_daemon(env);
        let upstream = wan.dns();
        env.network("net1", "10.75.0.0/24");
        for s in ["a", "b", "c"] {
            env.sandbox(s);
        }
        let ip_a = env.connect("net1", "a");
        env.ok(&["network", "connect", "--alias", "db", "net1", "b"]);
        env.ok(&["network", "connect", "--alias", "db", "net1", "c"]);
        let ip_b = env.ip_of("net1", "b");
        let ip_c = env.ip_of("net1", "c");
        let gw = env.gateway_of("net1");

        // resolv.conf and hosts seen through `tapnet exec`.
        let resolv = env.exec_ok("a", &["cat", "/etc/resolv.conf"]);
        assert!(
            resolv
                .lines()
                .any(|l| l.trim() == format!("nameserver {gw}")),
            "{resolv}"
        );
        assert!(
            !resolv.contains("10.255.255") && !resolv.contains(WAN_IP),
            "{resolv}"
        );
        let hosts = env.exec_ok("a", &["cat", "/etc/hosts"]);
        assert!(has_hosts_line(&hosts, &ip_a, "a"), "{hosts}");
        assert!(hosts.contains("localhost"), "{hosts}");

        // Peer names and aliases, through the libc resolver (resolv.conf → gateway).
        let out = env.python(
            "a",
            r#"
import socket
for n in ["b", "c", "db"]:
    print(n, sorted({ai[4][0] for ai in socket.getaddrinfo(n, 80, socket.AF_INET, socket.SOCK_STREAM)}))
"#,
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains(&format!("b ['{ip_b}']")), "{text}");
        assert!(text.contains(&format!("c ['{ip_c}']")), "{text}");
        let mut both = [ip_b.clone(), ip_c.clone()];
        both.sort();
        assert!(
            text.contains(&format!("db ['{}', '{}']", both[0], both[1])),
            "{text}"
        );

        // Raw queries: both answers, order rotating across queries.
        let mut firsts = std::collections::BTreeSet::new();
        for _ in 0..4 {
            let (rcode, answers) = env.dns_query("a", &gw, "db", "A", 5);
            assert_eq!(rcode, 0);
            let mut sorted = answers.clone();
            sorted.sort();
            assert_eq!(sorted, both, "answers for db: {answers:?}");
            firsts.insert(answers[0].clone());
        }
        assert_eq!(firsts.len(), 2, "round-robin never rotated: {firsts:?}");

        // PTR for a peer.
        let rev: Vec<&str> = ip_b.split('.').rev().collect();
        let arpa = format!("{}.in-addr.arpa", rev.join("."));
        let (rcode, answers) = env.dns_query("a", &gw, &arpa, "PTR", 5);
        assert_eq!(rcode, 0, "{answers:?}");
        assert!(
            answers.iter().any(|a| a == "b." || a.starts_with("b.")),
            "PTR {arpa}: {answers:?}"
        );
        // Unknown single-label name: NXDOMAIN, answered locally.
        let (rcode, _) = env.dns_query("a", &gw, "nosuchpeer", "A", 5);
        assert_eq!(rcode, 3, "want NXDOMAIN");

        // An outside name goes to the daemon's upstream (the wan DNS server).
        let before = upstream.query_count();
        let (rcode, answers) = env.dns_query("a", &gw, WAN_DNS_NAME, "A", 5);
        assert_eq!((rcode, answers), (0, vec![WAN_DNS_ANSWER.to_string()]));
        assert!(
            upstream.query_count() > before,
            "the wan DNS server was not asked"
        );
        assert!(
            upstream.seen().iter().all(|p| p.ip() == host_ip()),
            "{:?}",
            upstream.seen()
        );
        let out = env.exec_ok("a", &["getent", "hosts", WAN_DNS_NAME]);
        assert!(out.contains(WAN_DNS_ANSWER), "{out}");
        // Unknown outside names: the upstream's NXDOMAIN comes back.
        let (rcode, _) = env.dns_query("a", &gw, "nothing.example", "A", 5);
        assert_eq!(rcode, 3);

        let g = env.gateway_stats("net1");
        assert!(n(&g, "DnsLocal") >= 5, "{g}");
        assert!(n(&g, "DnsForwarded") >= 2, "{g}");
    });
}

#[test]
fn dns_servfail_when_upstream_is_dead() {
    in_namespace("dns_servfail_when_upstream_is_dead", |env| {
        let _wan = env.wan();
        // Nothing answers at 198.18.0.3.
        env.restart_fresh(&["--dns", WAN_DEAD_IP]);
        env.network("net1", "10.76.0.0/24");
        env.sandbox("a");
        env.sandbox("b");
        env.connect("net1", "a");
        let ip_b = env.connect("net1", "b");
        let gw = env.gateway_of("net1");
        let t0 = Instant::now();
        let (rcode, _) = env.dns_query("a", &gw, WAN_DNS_NAME, "A", 15);
        let took = t0.elapsed();
        assert_eq!(rcode, 2, "want SERVFAIL");
        assert!(took < Duration::from_secs(10), "SERVFAIL took {took:?}");
        // Local names still answer at once.
        let (rcode, answers) = env.dns_query("a", &gw, "b", "A", 3);
        assert_eq!((rcode, answers), (0, vec![ip_b]));
        let g = env.gateway_stats("net1");
        assert!(n(&g, "DnsServfail") >= 1, "{g}");
    });
}

fn has_hosts_line(hosts: &str, ip: &str, name: &str) -> bool {
    hosts.lines().any(|l| {
        let mut f = l.split_whitespace();
        f.next() == Some(ip) && f.any(|n| n == name)
    })
}

fn sandbox_names(env: &Env) -> Vec<String> {
    env.get("/sandboxes")
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["Name"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn tapnet_run_exit_code_rm_keep_and_streaming() {
    in_namespace("tapnet_run_exit_code_rm_keep_and_streaming", |env| {
        env.network("net1", "10.77.0.0/24");
        env.sandbox("peer");
        let ip_peer = env.connect("net1", "peer");
        let before = sandbox_names(env);

        // Exit code, output, and the sandbox removed afterwards.
        let out = env.tapnet(&[
            "run",
            "--rm",
            "--network",
            "net1",
            "--",
            "sh",
            "-c",
            "echo out-line; echo err-line >&2; exit 3",
        ]);
        assert_eq!(out.status.code(), Some(3), "{out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "out-line");
        assert!(String::from_utf8_lossy(&out.stderr).contains("err-line"));
        assert_eq!(
            sandbox_names(env),
            before,
            "tapnet run left a sandbox behind"
        );

        // Inside: resolv.conf names the gateway, hosts names the sandbox, peers resolve.
        let script = format!(
            "cat /etc/resolv.conf; cat /etc/hosts; {} -c \"import socket; print('peer=' + socket.gethostbyname('peer'))\"",
            python3()
        );
        let out = env.tapnet(&[
            "run",
            "--rm",
            "--name",
            "runner",
            "--network",
            "net1",
            "--ip",
            "10.77.0.50",
            "--",
            "sh",
            "-c",
            &script,
        ]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("nameserver 10.77.0.1"), "{text}");
        assert!(has_hosts_line(&text, "10.77.0.50", "runner"), "{text}");
        assert!(text.contains(&format!("peer={ip_peer}")), "{text}");
        assert_eq!(sandbox_names(env), before);

        // Without --rm it stays, connected (as a docker container does).
        let out = env.tapnet(&[
            "run",
            "--name",
            "kept",
            "--network",
            "net1",
            "--alias",
            "k",
            "--",
            "true",
        ]);
        assert!(out.status.success(), "{out:?}");
        let v = env.get("/sandboxes/kept");
        assert!(v["Endpoints"]["net1"].is_object(), "{v}");

        // Output is streamed: the first line arrives while the command still runs.
        let mut child = Command::new(tapnet_bin(env))
            .args(["-H", &format!("unix://{}", env.socket.display())])
            .args(["run", "--rm", "--network", "net1", "--", "sh", "-c"])
            .arg("echo first; sleep 4; echo second")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            let t0 = Instant::now();
            let k = stdout.read(&mut buf).unwrap_or(0);
            let _ = tx.send((
                String::from_utf8_lossy(&buf[..k]).into_owned(),
                t0.elapsed(),
            ));
            let mut rest = String::new();
            let _ = stdout.read_to_string(&mut rest);
        });
        let (first, after) = rx
            .recv_timeout(Duration::from_secs(15))
            .expect("no output from tapnet run");
        assert!(first.starts_with("first"), "{first:?}");
        assert!(
            after < Duration::from_secs(3),
            "first line arrived after {after:?}: output not streamed"
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                assert!(st.success());
                break;
            }
            assert!(Instant::now() < deadline, "tapnet run did not finish");
            std::thread::sleep(Duration::from_millis(50));
        }
    });
}

/// The `tapnet` binary next to the test executable.
fn tapnet_bin(_env: &Env) -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().join("tapnet")
}

#[test]
fn internal_network_no_egress_no_publish() {
    in_namespace("internal_network_no_egress_no_publish", |env| {
        let wan = wan_and_daemon(env);
        let echo = wan.tcp_echo(ECHO);
        let udp = wan.udp_echo(ECHO);
        env.ok(&[
            "network",
            "create",
            "--internal",
            "--subnet",
            "10.78.0.0/24",
            "inet",
        ]);
        env.sandbox("a");
        env.sandbox("b");
        env.connect("inet", "a");
        let ip_b = env.connect("inet", "b");
        let ns = env.sandbox_ns("a");
        // No way out.
        assert!(
            connect_in(&ns, &format!("{WAN_IP}:{ECHO}"), Duration::from_secs(3)).is_err(),
            "an internal network reached the wan over TCP"
        );
        assert!(
            udp_roundtrip_in(&ns, &format!("{WAN_IP}:{ECHO}"), b"x").is_none(),
            "an internal network reached the wan over UDP"
        );
        assert!(
            !env.ping("a", WAN_IP, 2),
            "an internal network pinged the wan"
        );
        assert!(echo.seen().is_empty() && udp.seen().is_empty());
        // The gateway and the network's own names still answer.
        let gw = env.gateway_of("inet");
        assert!(env.ping("a", &gw, 2), "gateway of an internal network");
        let (rcode, answers) = env.dns_query("a", &gw, "b", "A", 5);
        assert_eq!((rcode, answers), (0, vec![ip_b]));
        assert!(env.ping("a", "b", 2), "peer by name on an internal network");

        // No published ports on an internal network: a sandbox that publishes may join it
        // (ports are bound on the first non-internal network only), but nothing is bound.
        env.ok(&["sandbox", "create", "-p", "8082:80", "p"]);
        env.ok(&["network", "connect", "inet", "p"]);
        let pns = env.sandbox_ns("p");
        let server = tcp_server(&pns, "0.0.0.0:80", |_| {});
        let r = connect_in(
            &wan.ns,
            &format!("{WAN_HOST_IP}:8082"),
            Duration::from_secs(3),
        );
        assert_eq!(
            r.as_ref().map_err(|e| e.kind()).err(),
            Some(ErrorKind::ConnectionRefused),
            "host port 8082 of a sandbox on an internal network: {r:?}"
        );
        assert!(server.seen().is_empty());
        let port = env.ok(&["port", "p"]);
        assert!(!port.contains("0.0.0.0:8082"), "{port}");
        // Host port 8082 is free.
        drop(TcpListener::bind("0.0.0.0:8082").expect("host port 8082 held"));
    });
}

#[test]
fn icc_off_isolates_sandboxes_but_not_gateway_or_wan() {
    in_namespace("icc_off_isolates_sandboxes_but_not_gateway_or_wan", |env| {
        let wan = wan_and_daemon(env);
        let echo = wan.tcp_echo(ECHO);
        env.ok(&[
            "network",
            "create",
            "--subnet",
            "10.79.0.0/24",
            "-o",
            "com.docker.network.bridge.enable_icc=false",
            "noicc",
        ]);
        env.sandbox("a");
        env.sandbox("b");
        let ip_a = env.connect("noicc", "a");
        let ip_b = env.connect("noicc", "b");
        let gw = env.gateway_of("noicc");
        assert!(
            env.ping("a", &gw, 2) && env.ping("b", &gw, 2),
            "gateway unreachable"
        );
        // ARP between them goes to the gateway only, so they cannot learn each other's
        // MAC; give each a static neighbour entry, so that known unicast to the other
        // endpoint reaches the switch (it learnt both MACs from gateway traffic).
        let mac = |s: &str| {
            env.get(&format!("/sandboxes/{s}"))["Endpoints"]["noicc"]["MacAddress"]
                .as_str()
                .unwrap()
                .to_string()
        };
        let (mac_a, mac_b) = (mac("a"), mac("b"));
        env.exec_ok(
            "a",
            &[
                "ip", "neigh", "replace", &ip_b, "lladdr", &mac_b, "dev", "eth0",
            ],
        );
        env.exec_ok(
            "b",
            &[
                "ip", "neigh", "replace", &ip_a, "lladdr", &mac_a, "dev", "eth0",
            ],
        );
        assert!(!env.ping("a", &ip_b, 2), "a reached b with ICC off");
        assert!(!env.ping("b", &ip_a, 2), "b reached a with ICC off");
        let nsb = env.sandbox_ns("b");
        let server = tcp_server(&nsb, "0.0.0.0:80", |_| {});
        let nsa = env.sandbox_ns("a");
        assert!(connect_in(&nsa, &format!("{ip_b}:80"), Duration::from_secs(2)).is_err());
        assert!(server.seen().is_empty());
        // Both still reach the outside.
        for s in ["a", "b"] {
            let ns = env.sandbox_ns(s);
            let mut c = connect_in(&ns, &format!("{WAN_IP}:{ECHO}"), Duration::from_secs(5))
                .unwrap_or_else(|e| panic!("{s} cannot reach the wan with ICC off: {e}"));
            echo_roundtrip(&mut c, 10_000);
        }
        assert_eq!(echo.seen().len(), 2);
        let drops = |s| n(&env.port_stats("noicc", s)["Drops"], "icc_denied");
        assert!(
            drops("a") >= 2 && drops("b") >= 2,
            "{}",
            env.get("/networks/noicc/stats")
        );
    });
}

#[test]
fn networks_isolated_through_the_gateway() {
    in_namespace("networks_isolated_through_the_gateway", |env| {
        let wan = wan_and_daemon(env);
        let echo = wan.tcp_echo(ECHO);
        env.network("net1", "10.80.0.0/24");
        env.network("net2", "10.81.0.0/24");
        env.sandbox("a");
        env.sandbox("b");
        env.connect("net1", "a");
        let ip_b = env.connect("net2", "b");
        let gw2 = env.gateway_of("net2");
        let nsb = env.sandbox_ns("b");
        let server = tcp_server(&nsb, "0.0.0.0:80", |_| {});
        let udp = udp_echo_in(&nsb, "0.0.0.0:99");
        let nsa = env.sandbox_ns("a");
        assert!(!env.ping("a", &ip_b, 2), "net1 reached net2's sandbox");
        assert!(!env.ping("a", &gw2, 2), "net1 reached net2's gateway");
        assert!(connect_in(&nsa, &format!("{ip_b}:80"), Duration::from_secs(2)).is_err());
        assert!(connect_in(&nsa, &format!("{gw2}:53"), Duration::from_secs(2)).is_err());
        assert!(udp_roundtrip_in(&nsa, &format!("{ip_b}:99"), b"x").is_none());
        assert!(server.seen().is_empty() && udp.seen().is_empty());
        // ... while the outside still works from net1.
        let mut c = connect_in(&nsa, &format!("{WAN_IP}:{ECHO}"), Duration::from_secs(5))
            .expect("net1 reaches the wan");
        echo_roundtrip(&mut c, 1000);
        assert_eq!(echo.seen().len(), 1);
    });
}

/// Python in the attacker: sends (1) a frame with a foreign source MAC, (2) IPv4 with a
/// foreign source address, (3) a gratuitous ARP claiming the gateway's address, each to
/// the victim, five times.
const SPOOF_PY: &str = r#"
import socket, struct, sys, time
victim_mac = bytes.fromhex(sys.argv[1].replace(":", ""))
victim_ip = socket.inet_aton(sys.argv[2])
claimed_ip = socket.inet_aton(sys.argv[3])
foreign_ip = socket.inet_aton(sys.argv[4])
own = bytes.fromhex(open("/sys/class/net/eth0/address").read().strip().replace(":", ""))
own_ip = socket.inet_aton(sys.argv[5])
foreign_mac = bytes.fromhex("02deadbeef01")
def csum(b):
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xFFFF); s += s >> 16
    return ~s & 0xFFFF
def ipv4_udp(src, dst, payload):
    udp = struct.pack("!HHHH", 40000, 9, 8 + len(payload), 0) + payload
    h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0, src, dst)
    h = h[:10] + struct.pack("!H", csum(h)) + h[12:]
    return h + udp
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("eth0", 0))
f1 = victim_mac + foreign_mac + b"\x08\x00" + ipv4_udp(own_ip, victim_ip, b"SPOOF-MAC")
f2 = victim_mac + own + b"\x08\x00" + ipv4_udp(foreign_ip, victim_ip, b"SPOOF-IP")
arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 2, own, claimed_ip, b"\xff" * 6, claimed_ip)
f3 = b"\xff" * 6 + own + b"\x08\x06" + arp
for _ in range(5):
    for f in (f1, f2, f3):
        s.send(f)
    time.sleep(0.05)
print("sent")
"#;

/// Python in the victim: captures for a few seconds, prints how many of each spoofed
/// frame arrived.
const CAPTURE_PY: &str = r#"
import json, socket, sys, time
claimed_ip = socket.inet_aton(sys.argv[1])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.bind(("eth0", 0))
s.settimeout(0.2)
seen = {"mac": 0, "ip": 0, "arp": 0}
print("ready", flush=True, file=sys.stderr)
end = time.time() + float(sys.argv[2])
while time.time() < end:
    try:
        f = s.recv(65535)
    except socket.timeout:
        continue
    if b"SPOOF-MAC" in f: seen["mac"] += 1
    if b"SPOOF-IP" in f: seen["ip"] += 1
    if f[12:14] == b"\x08\x06" and f[28:32] == claimed_ip: seen["arp"] += 1
print(json.dumps(seen))
"#;

/// Run the spoofing exchange on `network` (attacker `a`, victim `b`); returns what the
/// victim saw.
fn spoof_exchange(env: &Env, network: &str) -> Value {
    let ip_a = env.ip_of(network, "a");
    let ip_b = env.ip_of(network, "b");
    let gw = env.gateway_of(network);
    let foreign_ip = {
        let mut o: Vec<&str> = ip_a.split('.').collect();
        o[3] = "200";
        o.join(".")
    };
    assert!(env.ping("a", &ip_b, 1), "a and b talk before the test");
    let mac_b = env.get("/sandboxes/b")["Endpoints"][network]["MacAddress"]
        .as_str()
        .unwrap()
        .to_string();
    let seen = std::thread::scope(|s| {
        let cap = s.spawn(|| env.exec("b", &[python3(), "-c", CAPTURE_PY, &gw, "4"]));
        std::thread::sleep(Duration::from_millis(1500));
        let out = env.exec(
            "a",
            &[
                python3(),
                "-c",
                SPOOF_PY,
                &mac_b,
                &ip_b,
                &gw,
                &foreign_ip,
                &ip_a,
            ],
        );
        assert!(out.status.success(), "spoofer: {out:?}");
        cap.join().unwrap()
    });
    assert!(seen.status.success(), "capture: {seen:?}");
    serde_json::from_slice(&seen.stdout).unwrap()
}

#[test]
fn spoofed_frames_dropped_and_counted() {
    in_namespace("spoofed_frames_dropped_and_counted", |env| {
        env.network("net1", "10.82.0.0/24");
        env.sandbox("a");
        env.sandbox("b");
        env.connect("net1", "a");
        env.connect("net1", "b");
        let seen = spoof_exchange(env, "net1");
        assert_eq!(
            seen,
            serde_json::json!({"mac": 0, "ip": 0, "arp": 0}),
            "spoofed frames reached the victim"
        );
        let pa = env.port_stats("net1", "a");
        let d = &pa["Drops"];
        assert!(n(d, "spoofed_mac") >= 5, "{pa}");
        assert!(n(d, "spoofed_ip") >= 5, "{pa}");
        assert!(n(d, "spoofed_arp") >= 5, "{pa}");
        // The FDB never learnt the foreign MAC.
        let fdb = env.get("/networks/net1/fdb").to_string();
        assert!(!fdb.contains("02:de:ad:be:ef:01"), "{fdb}");
        // a's real traffic still flows.
        assert!(env.ping("a", &env.ip_of("net1", "b"), 2));
    });
}

#[test]
fn port_security_off_lets_spoofed_frames_pass() {
    in_namespace("port_security_off_lets_spoofed_frames_pass", |env| {
        env.ok(&[
            "network",
            "create",
            "--subnet",
            "10.83.0.0/24",
            "-o",
            "com.tapnet.port_security=false",
            "open",
        ]);
        env.sandbox("a");
        env.sandbox("b");
        env.connect("open", "a");
        env.connect("open", "b");
        let seen = spoof_exchange(env, "open");
        for k in ["mac", "ip", "arp"] {
            assert!(n(&seen, k) >= 1, "{k} frames did not pass: {seen}");
        }
        let pa = env.port_stats("open", "a");
        for k in ["spoofed_mac", "spoofed_ip", "spoofed_arp"] {
            assert_eq!(n(&pa["Drops"], k), 0, "{pa}");
        }
    });
}

#[test]
fn tcp_egress_backpressure_bounded() {
    in_namespace("tcp_egress_backpressure_bounded", |env| {
        let wan = wan_and_daemon(env);
        // A sink that does not read for 3 s after accepting, then reads everything.
        let sink = tcp_server(&wan.ns, &format!("{WAN_IP}:9100"), |mut s| {
            std::thread::sleep(Duration::from_secs(3));
            let mut total = 0u64;
            let mut buf = vec![0u8; 1 << 16];
            while let Ok(k) = s.read(&mut buf) {
                if k == 0 {
                    break;
                }
                total += k as u64;
            }
            let _ = s.write_all(&total.to_le_bytes());
        });
        env.network("net1", "10.84.0.0/24");
        env.sandbox("a");
        env.connect("net1", "a");
        let ns = env.sandbox_ns("a");
        let rss_before = daemon_rss_kib(env);
        let mut s = connect_in(&ns, &format!("{WAN_IP}:9100"), Duration::from_secs(5)).unwrap();
        // Write without blocking until the path is full: what tapnet accepted on the
        // reader's behalf must stay bounded (socket buffers, windows), not 200 MB.
        s.set_nonblocking(true).unwrap();
        let chunk = vec![0x33u8; 1 << 16];
        let mut sent = 0u64;
        let mut idle_since = Instant::now();
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_millis(2500) && sent < 200 << 20 {
            match s.write(&chunk) {
                Ok(k) => {
                    sent += k as u64;
                    idle_since = Instant::now();
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    if idle_since.elapsed() > Duration::from_millis(800) {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => panic!("write: {e}"),
            }
        }
        let rss_full = daemon_rss_kib(env);
        assert!(
            sent < 64 << 20,
            "the sandbox could push {sent} bytes to a reader that reads nothing"
        );
        assert!(
            rss_full < rss_before + 64 * 1024,
            "tapnetd grew from {rss_before} KiB to {rss_full} KiB holding a stalled flow"
        );
        // Then the reader drains: every byte arrives, in order of count.
        s.set_nonblocking(false).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut got = [0u8; 8];
        s.read_exact(&mut got).expect("the sink's count");
        assert_eq!(u64::from_le_bytes(got), sent);
        assert_eq!(sink.seen().len(), 1);
    });
}

fn daemon_rss_kib(env: &Env) -> u64 {
    let pid = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            std::fs::read_link(format!("/proc/{pid}/exe"))
                .map(|p| p.file_name().is_some_and(|n| n == "tapnetd"))
                .unwrap_or(false)
        })
        .expect("tapnetd in /proc");
    let _ = env;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

#[test]
fn udp_flow_limit_per_endpoint_counted_and_logged() {
    in_namespace("udp_flow_limit_per_endpoint_counted_and_logged", |env| {
        let wan = wan_and_daemon(env);
        let echo = wan.udp_echo(ECHO);
        env.network("net1", "10.85.0.0/24");
        env.sandbox("a");
        env.connect("net1", "a");
        // 4,300 UDP flows (distinct source ports) from one endpoint; the default
        // per-endpoint limit is 4,096 concurrent flows.
        let out = env.python(
            "a",
            &format!(
                r#"
import socket, time
socks = []
for i in range(4300):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", 20000 + i))
    s.sendto(b"x", ("{WAN_IP}", {ECHO}))
    socks.append(s)
    if i % 200 == 0:
        time.sleep(0.02)
time.sleep(1)
print("done")
"#
            ),
        );
        assert!(out.status.success(), "{out:?}");
        let g = env.gateway_stats("net1");
        assert!(n(&g, "FlowLimitHits") >= 1, "{g}");
        assert!(n(&g["Drops"], "flow_limit") >= 1, "{g}");
        let ports: std::collections::BTreeSet<u16> = echo.seen().iter().map(|p| p.port()).collect();
        assert!(
            ports.len() <= 4096 && ports.len() >= 4000,
            "{} distinct flows reached the wan",
            ports.len()
        );
        assert!(
            env.daemon_log().contains("flow limit reached"),
            "no log line for the flow limit"
        );
    });
}

/// The embedded DNS answers over TCP as well as UDP (local A and AAAA names on a
/// dual-stack network, PTR, NXDOMAIN, and forwarded names), and the sandbox's
/// resolver reaches peers by name over IPv6 too.
#[test]
fn dns_over_tcp_and_aaaa() {
    in_namespace("dns_over_tcp_and_aaaa", |env| {
        let wan = wan_and_daemon(env);
        let _upstream = wan.dns();
        env.api_ok(
            "POST",
            "/networks/create",
            Some(
                r#"{"Name":"dual","EnableIPv6":true,"IPAM":{"Config":[
                {"Subnet":"10.77.0.0/24"},{"Subnet":"fd77::/64"}]}}"#,
            ),
        );
        env.sandbox("a");
        env.sandbox("b");
        env.connect("dual", "a");
        let ip_b = env.connect("dual", "b");
        let sb = env.get("/sandboxes/b");
        let ip6_b = sb["Endpoints"]["dual"]["IPv6Address"]
            .as_str()
            .unwrap()
            .split('/')
            .next()
            .unwrap()
            .to_string();
        let gw = env.gateway_of("dual");
        for proto in ["udp", "tcp"] {
            let (rcode, answers) = env.dns_query_over("a", &gw, "b", "A", 5, proto);
            assert_eq!((rcode, answers), (0, vec![ip_b.clone()]), "A over {proto}");
            let (rcode, answers) = env.dns_query_over("a", &gw, "b", "AAAA", 5, proto);
            assert_eq!(
                (rcode, answers),
                (0, vec![ip6_b.clone()]),
                "AAAA over {proto}"
            );
            let ptr = format!(
                "{}.in-addr.arpa",
                ip_b.split('.').rev().collect::<Vec<_>>().join(".")
            );
            let (rcode, answers) = env.dns_query_over("a", &gw, &ptr, "PTR", 5, proto);
            assert_eq!(rcode, 0, "PTR over {proto}");
            assert!(answers.iter().any(|a| a.starts_with("b.")), "{answers:?}");
            let (rcode, _) = env.dns_query_over("a", &gw, "nosuchpeer", "A", 5, proto);
            assert_eq!(rcode, 3, "NXDOMAIN over {proto}");
            let (rcode, answers) = env.dns_query_over("a", &gw, WAN_DNS_NAME, "A", 5, proto);
            assert_eq!(
                (rcode, answers),
                (0, vec![WAN_DNS_ANSWER.to_string()]),
                "forwarded over {proto}"
            );
        }
        // The sandbox's own resolver (resolv.conf → gateway) finds the peer over IPv6.
        let out = env.exec_ok("a", &["ping", "-6", "-c", "1", "-W", "2", "b"]);
        assert!(out.contains(&ip6_b), "{out}");
    });
}
