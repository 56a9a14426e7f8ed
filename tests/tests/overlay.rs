//! Overlay networks without a cluster store: two "hosts" (the test's namespace and a
//! second network namespace, joined by a veth underlay 192.0.2.1/24 ↔ 192.0.2.2/24),
//! each with its own `tapnetd`; a static overlay (`vxlanid_list`, `peers`) between
//! them, real sandboxes, real traffic through the real VXLAN socket.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use serde_json::Value;
use tapnet_tests::{in_namespace, Env};

const VNI: &str = "com.docker.network.driver.overlay.vxlanid_list";
const PEERS: &str = "com.tapnet.overlay.peers";

fn create_overlay(env: &Env, peer: &str) {
    env.ok(&[
        "network",
        "create",
        "-d",
        "overlay",
        "--subnet",
        "10.90.0.0/24",
        "-o",
        &format!("{VNI}=4242"),
        "-o",
        &format!("{PEERS}={peer}"),
        "ov",
    ]);
}

/// The MTU of `eth0` in `sandbox`.
fn mtu(env: &Env, sandbox: &str) -> u32 {
    let out = env.exec_ok(sandbox, &["ip", "-o", "link", "show", "eth0"]);
    let after = out.split(" mtu ").nth(1).expect("mtu in ip link output");
    after.split_whitespace().next().unwrap().parse().unwrap()
}

/// `ping` output (count echoes) from `sandbox` to `ip`; panics unless all were answered.
fn ping_out(env: &Env, sandbox: &str, ip: &str) -> String {
    env.exec_ok(
        sandbox,
        &["ping", "-n", "-c", "3", "-i", "0.2", "-W", "2", ip],
    )
}

/// ARP replies with sender 10.90.0.1 that reach `sandbox`'s eth0 while it pings `gw`.
fn arp_replies_from_gateway(env: &Env, sandbox: &str, gw: &str) -> u32 {
    let capture = std::thread::scope(|s| {
        let cap = s.spawn(|| {
            env.python(
                sandbox,
                r#"
import socket, time
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806))
s.bind(("eth0", 0))
s.settimeout(0.2)
n = 0
end = time.time() + 2.5
while time.time() < end:
    try:
        f = s.recv(65535)
    except socket.timeout:
        continue
    if len(f) >= 42 and f[12:14] == b"\x08\x06" and f[20:22] == b"\x00\x02" and f[28:32] == bytes([10, 90, 0, 1]):
        n += 1
print(n)
"#,
            )
        });
        std::thread::sleep(std::time::Duration::from_millis(500));
        ping_out(env, sandbox, gw);
        cap.join().unwrap()
    });
    assert!(capture.status.success(), "{capture:?}");
    String::from_utf8_lossy(&capture.stdout)
        .trim()
        .parse()
        .unwrap()
}

/// POST /networks/create for an overlay network with `options`; (status, message).
fn create_with(env: &Env, name: &str, options: &str) -> (u16, String) {
    let body = format!(
        r#"{{"Name":"{name}","Driver":"overlay","IPAM":{{"Config":[{{"Subnet":"10.91.0.0/24"}}]}},"Options":{options}}}"#
    );
    let (code, v) = env.api("POST", "/networks/create", Some(&body));
    (code, v["message"].as_str().unwrap_or_default().to_string())
}

#[test]
fn static_overlay_between_two_hosts() {
    in_namespace("static_overlay_between_two_hosts", |a| {
        // Host B's VXLAN socket is on 192.0.2.2:4790 (the flags), A's on the default
        // 0.0.0.0:4789: each names the other's port explicitly where it is not its own.
        let b = a.second_host(
            "hostb",
            "192.0.2.1/24",
            "192.0.2.2/24",
            &["--data-path-port", "4790", "--data-path-addr", "192.0.2.2"],
        );
        create_overlay(a, "192.0.2.2:4790");
        create_overlay(&b, "192.0.2.1:4789");
        let out = b.nsenter(std::path::Path::new("/run/netns/hostb"), &["ss", "-Huln"]);
        let ss = String::from_utf8_lossy(&out.stdout);
        assert!(ss.contains("192.0.2.2:4790"), "B's VXLAN socket: {ss}");

        // Docker's shape: a global-scope network of driver overlay.
        for env in [&*a, &b] {
            let v: Value = env.get("/networks/ov");
            assert_eq!(v["Scope"], "global", "{v}");
            assert_eq!(v["Driver"], "overlay", "{v}");
        }

        a.sandbox("sa");
        b.sandbox("sb");
        a.ok(&["network", "connect", "--ip", "10.90.0.10", "ov", "sa"]);
        b.ok(&["network", "connect", "--ip", "10.90.0.20", "ov", "sb"]);

        // Inner MTU: the underlay's 1500 minus the VXLAN overhead, on every tap.
        assert_eq!(mtu(a, "sa"), 1450);
        assert_eq!(mtu(&b, "sb"), 1450);

        // Across hosts, both ways (through the tunnel: MACs learned from the data plane).
        let out = ping_out(a, "sa", "10.90.0.20");
        assert!(!out.contains("DUP"), "{out}");
        let out = ping_out(&b, "sb", "10.90.0.10");
        assert!(!out.contains("DUP"), "{out}");

        // Introspection: the FDB names the VTEP behind each remote MAC (API and CLI);
        // the tunnel counts packets and bytes both ways.
        let fdb: Value = a.get("/networks/ov/fdb");
        let remote: Vec<&Value> = fdb
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["Vtep"] == "192.0.2.2:4790")
            .collect();
        assert!(!remote.is_empty(), "no FDB row behind B's VTEP: {fdb}");
        let cli = a.ok(&["network", "fdb", "ov"]);
        assert!(
            cli.contains("VTEP") && cli.contains("192.0.2.2:4790"),
            "{cli}"
        );
        let t = &a.get("/networks/ov/stats")["Tunnel"];
        for c in ["tx_datagrams", "tx_bytes", "rx_datagrams", "rx_bytes"] {
            assert!(tapnet_tests::n(&t["Port"], c) > 0, "{c}: {t}");
        }

        // TCP across hosts: 4 MiB from a to b (GSO super-frames from the tap are cut to
        // the inner MTU before encapsulation; nothing exceeds the underlay's 1500). The
        // bytes are a pattern, their digest compared: the segments A sends gathered
        // (headers + slices of the tap's frame, see tapnet_vxlan::gather) must carry
        // every byte in order.
        let (client, got) = std::thread::scope(|s| {
            let server = s.spawn(|| {
                b.python(
                    "sb",
                    r#"
import hashlib, socket
l = socket.socket()
l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("10.90.0.20", 5001))
l.listen(1)
l.settimeout(20)
c, _ = l.accept()
c.settimeout(20)
n = 0
h = hashlib.sha256()
while True:
    d = c.recv(65536)
    if not d:
        break
    n += len(d)
    h.update(d)
print(n, h.hexdigest())
"#,
                )
            });
            std::thread::sleep(std::time::Duration::from_millis(700));
            let client = a.python(
                "sa",
                r#"
import hashlib, socket
data = (bytes(range(251)) * 16712)[: 4 << 20]
c = socket.create_connection(("10.90.0.20", 5001), timeout=20)
c.sendall(data)
c.close()
print(len(data), hashlib.sha256(data).hexdigest())
"#,
            );
            assert!(client.status.success(), "{client:?}");
            (client, server.join().unwrap())
        });
        assert!(got.status.success(), "{got:?}");
        assert_eq!(
            String::from_utf8_lossy(&got.stdout).trim(),
            String::from_utf8_lossy(&client.stdout).trim()
        );
        assert!(String::from_utf8_lossy(&got.stdout).starts_with("4194304 "));
        let t = &a.get("/networks/ov/stats")["Tunnel"];
        assert!(tapnet_tests::n(&t["Port"], "tx_gathered") > 0, "{t}");

        // The anycast gateway: each host's own gateway answers, once (a remote copy
        // would show up as DUP! replies), with the same MAC on both hosts.
        let mut macs = Vec::new();
        for (env, sb) in [(&*a, "sa"), (&b, "sb")] {
            let gw = env.gateway_of("ov");
            assert_eq!(gw, "10.90.0.1");
            // Exactly one ARP reply for the gateway: the other host's gateway also
            // hears the (tunnelled) broadcast, but its reply, from the gateway MAC,
            // never enters the tunnel.
            env.exec_ok(sb, &["ip", "neigh", "flush", "dev", "eth0"]);
            assert_eq!(arp_replies_from_gateway(env, sb, &gw), 1);
            let before = env.gateway_stats("ov");
            let out = ping_out(env, sb, &gw);
            assert!(!out.contains("DUP"), "{out}");
            let after = env.gateway_stats("ov");
            assert_ne!(before, after, "the local gateway saw nothing");
            let neigh = env.exec_ok(sb, &["ip", "neigh", "show", &gw]);
            macs.push(
                neigh
                    .split_whitespace()
                    .nth(4)
                    .unwrap_or_default()
                    .to_string(),
            );
        }
        assert_eq!(macs[0], "02:42:0a:5a:00:01", "{macs:?}");
        assert_eq!(macs[0], macs[1]);

        // A bad VNI and an unknown option are 400s naming the option.
        for bad in ["0", "16777216", "x"] {
            let (code, msg) = create_with(a, "bad", &format!(r#"{{"{VNI}":"{bad}"}}"#));
            assert_eq!(code, 400, "{bad}: {msg}");
            assert!(msg.contains(VNI), "{msg}");
        }
        let (code, msg) = create_with(a, "bad", r#"{"com.example.nope":"1"}"#);
        assert_eq!(code, 400, "{msg}");
        assert!(msg.contains("com.example.nope"), "{msg}");
        // The VNI is taken by ov: a second network on it is a conflict.
        let (code, msg) = create_with(a, "dup", &format!(r#"{{"{VNI}":"4242"}}"#));
        assert_eq!(code, 409, "{msg}");
        // The mtu option overrides the derived MTU.
        let (code, msg) = create_with(
            a,
            "small",
            &format!(r#"{{"{VNI}":"77","com.docker.network.driver.mtu":"1300"}}"#),
        );
        assert_eq!(code, 201, "{msg}");
        a.sandbox("sc");
        a.ok(&["network", "connect", "small", "sc"]);
        assert_eq!(mtu(a, "sc"), 1300);

        // A restart of host A's daemon re-creates the overlay (same VNI, same socket
        // port) and re-attaches the tap: traffic resumes.
        a.stop_daemon();
        a.start_daemon();
        assert!(
            a.ping("sa", "10.90.0.20", 3),
            "no traffic after A's restart"
        );
        assert!(b.ping("sb", "10.90.0.10", 3));

        // Disconnect and remove: the VNI is free again.
        a.ok(&["network", "disconnect", "ov", "sa"]);
        a.ok(&["network", "rm", "ov"]);
        create_overlay(a, "192.0.2.2:4790");
        drop(b);
    });
}

/// The anycast gateway is each host's own way out: a sandbox's egress is NATed by the
/// daemon of the host it runs on (the wan sees that host's address), and a port a
/// sandbox publishes is reached at its own host's address, never through the tunnel.
/// The wan hangs off host A; host B reaches it through A, which routes between its two
/// links (so B's egress shows up at the wan with B's underlay address).
#[test]
fn overlay_egress_and_published_ports_stay_on_their_host() {
    use std::io::{Read, Write};
    use std::time::Duration;
    use tapnet_tests::{connect_in, tcp_server, WAN_HOST_IP, WAN_IP};
    in_namespace(
        "overlay_egress_and_published_ports_stay_on_their_host",
        |a| {
            let wan = a.wan();
            let b = a.second_host(
                "hostb",
                "192.0.2.1/24",
                "192.0.2.2/24",
                &["--data-path-port", "4790", "--data-path-addr", "192.0.2.2"],
            );
            a.host_cmd(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
            a.host_cmd(&[
                "ip",
                "-n",
                "wan",
                "route",
                "add",
                "192.0.2.0/24",
                "via",
                WAN_HOST_IP,
            ]);
            a.host_cmd(&[
                "ip",
                "-n",
                "hostb",
                "route",
                "add",
                "198.18.0.0/24",
                "via",
                "192.0.2.1",
            ]);
            create_overlay(a, "192.0.2.2:4790");
            create_overlay(&b, "192.0.2.1:4789");
            a.ok(&["sandbox", "create", "-p", "8080:80", "sa"]);
            b.ok(&["sandbox", "create", "-p", "8080:80", "sb"]);
            a.ok(&["network", "connect", "--ip", "10.90.0.10", "ov", "sa"]);
            b.ok(&["network", "connect", "--ip", "10.90.0.20", "ov", "sb"]);
            // The tunnel works (so a gateway reached through it would be possible).
            ping_out(a, "sa", "10.90.0.20");

            // Egress: each sandbox's connection leaves from its own host.
            let echo = wan.tcp_echo(7777);
            for (env, sandbox) in [(&*a, "sa"), (&b, "sb")] {
                let ns = env.sandbox_ns(sandbox);
                let mut c = connect_in(&ns, &format!("{WAN_IP}:7777"), Duration::from_secs(5))
                    .unwrap_or_else(|e| panic!("egress from {sandbox}: {e}"));
                c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let msg = format!("hello from {sandbox}");
                c.write_all(msg.as_bytes()).unwrap();
                let mut got = vec![0u8; msg.len()];
                c.read_exact(&mut got).expect("echo through the NAT");
                assert_eq!(got, msg.as_bytes());
            }
            let seen: Vec<String> = echo.seen().iter().map(|p| p.ip().to_string()).collect();
            assert_eq!(
                seen,
                [WAN_HOST_IP, "192.0.2.2"],
                "each host's egress must carry its own address"
            );

            // Published ports: each host serves its own sandbox's port 80, and the server
            // sees the wan client's address.
            let _sa = tcp_server(&a.sandbox_ns("sa"), "0.0.0.0:80", |mut s| {
                let peer = s
                    .peer_addr()
                    .map(|p| p.ip().to_string())
                    .unwrap_or_default();
                let _ = s.write_all(format!("sa {peer}\n").as_bytes());
            });
            let _sb = tcp_server(&b.sandbox_ns("sb"), "0.0.0.0:80", |mut s| {
                let peer = s
                    .peer_addr()
                    .map(|p| p.ip().to_string())
                    .unwrap_or_default();
                let _ = s.write_all(format!("sb {peer}\n").as_bytes());
            });
            for (host, want) in [(WAN_HOST_IP, "sa"), ("192.0.2.2", "sb")] {
                let mut c = connect_in(&wan.ns, &format!("{host}:8080"), Duration::from_secs(5))
                    .unwrap_or_else(|e| panic!("published port on {host}: {e}"));
                c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut line = String::new();
                c.read_to_string(&mut line).expect("greeting");
                assert_eq!(line.trim(), format!("{want} {WAN_IP}"), "via {host}");
            }

            // `--internal`: an overlay with no way out (its anycast gateway NATs nothing).
            a.ok(&[
                "network",
                "create",
                "-d",
                "overlay",
                "--internal",
                "--subnet",
                "10.91.0.0/24",
                "-o",
                &format!("{VNI}=4243"),
                "-o",
                &format!("{PEERS}=192.0.2.2:4790"),
                "ovi",
            ]);
            a.sandbox("si");
            a.ok(&["network", "connect", "ovi", "si"]);
            let v: Value = a.get("/networks/ovi");
            assert_eq!(v["Internal"], true, "{v}");
            let out = connect_in(
                &a.sandbox_ns("si"),
                &format!("{WAN_IP}:7777"),
                Duration::from_secs(2),
            );
            assert!(out.is_err(), "egress from an internal overlay");
            assert_eq!(echo.seen().len(), 2, "the wan saw the internal overlay");
        },
    );
}
