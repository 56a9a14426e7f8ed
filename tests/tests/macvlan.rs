//! The macvlan driver: a "lan" network namespace joined to the daemon's namespace by a
//! veth pair; the daemon-side end `lan0` (up, no address) is the macvlan parent, the
//! lan side `eth0` has 192.168.50.1/24 (the network's gateway, a router on the LAN)
//! and runs the servers. Everything is checked with real traffic through the switch and
//! its AF_PACKET uplink port.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use serde_json::Value;
use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;
use tapnet_sandbox::netns::Netns;
use tapnet_tests::{connect_in, in_namespace, tcp_server, Env};

const LAN_HOST: &str = "192.168.50.1";
const SUBNET: &str = "192.168.50.0/24";

/// Build the lan namespace (`/run/netns/lan`, on a private tmpfs over `/run`) and the
/// veth parent `lan0`.
fn lan(env: &Env) -> Netns {
    env.host_cmd(&["mount", "-t", "tmpfs", "tapnet-test-run", "/run"]);
    std::fs::create_dir_all("/run/netns").unwrap();
    env.host_cmd(&["ip", "netns", "add", "lan"]);
    env.host_cmd(&[
        "ip", "link", "add", "lan0", "type", "veth", "peer", "name", "eth0", "netns", "lan",
    ]);
    env.host_cmd(&["ip", "link", "set", "lan0", "up"]);
    env.host_cmd(&[
        "ip",
        "-n",
        "lan",
        "addr",
        "add",
        "192.168.50.1/24",
        "dev",
        "eth0",
    ]);
    env.host_cmd(&["ip", "-n", "lan", "link", "set", "eth0", "up"]);
    env.host_cmd(&["ip", "-n", "lan", "link", "set", "lo", "up"]);
    Netns::open(Path::new("/run/netns/lan")).expect("open /run/netns/lan")
}

/// A command in the lan namespace.
fn in_lan(env: &Env, cmd: &[&str]) -> std::process::Output {
    env.nsenter(Path::new("/run/netns/lan"), cmd)
}

fn create_macvlan(env: &Env, name: &str) {
    env.ok(&[
        "network",
        "create",
        "-d",
        "macvlan",
        "-o",
        "parent=lan0",
        "-o",
        "macvlan_mode=bridge",
        "--subnet",
        SUBNET,
        "--gateway",
        LAN_HOST,
        name,
    ]);
}

/// `ping` from the lan namespace; true when every echo was answered.
fn lan_ping(env: &Env, ip: &str) -> bool {
    in_lan(
        env,
        &["ping", "-n", "-q", "-c", "3", "-i", "0.2", "-W", "2", ip],
    )
    .status
    .success()
}

/// The MAC of `eth0` in `sandbox`.
fn sandbox_mac(env: &Env, sandbox: &str) -> String {
    let out = env.exec_ok(sandbox, &["cat", "/sys/class/net/eth0/address"]);
    out.trim().to_string()
}

/// The MAC of the lan host's `eth0` (netlink: `/sys` is the test namespace's).
fn lan_mac(env: &Env) -> String {
    let out = in_lan(env, &["ip", "-o", "link", "show", "eth0"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let after = text
        .split("link/ether ")
        .nth(1)
        .expect("link/ether in ip link");
    after.split_whitespace().next().unwrap().to_string()
}

/// The lan host's neighbour entry for `ip` (`ip neigh` lladdr), if any.
fn lan_neigh(env: &Env, ip: &str) -> Option<String> {
    let out = in_lan(env, &["ip", "neigh", "show", ip]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut it = text.split_whitespace();
    while let Some(w) = it.next() {
        if w == "lladdr" {
            return it.next().map(str::to_string);
        }
    }
    None
}

/// A TCP server in `ns` answering each connection with `"hello from " + what` after
/// reading one line.
fn hello_server(ns: &Netns, addr: &str) -> tapnet_tests::Server {
    tcp_server(ns, addr, |mut s| {
        let mut buf = [0u8; 64];
        let _ = s.read(&mut buf);
        let _ = s.write_all(b"hello\n");
    })
}

/// Connect from `ns` to `addr`, send a line, return the answer.
fn hello_client(ns: &Netns, addr: &str) -> String {
    let mut s = connect_in(ns, addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.write_all(b"hi\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn stats(env: &Env, net: &str) -> Value {
    env.get(&format!("/networks/{net}/stats"))
}

/// The switch counters of the uplink port (endpoint id `uplink`).
fn uplink_port(v: &Value) -> Value {
    v["Ports"]
        .as_array()
        .expect("Ports")
        .iter()
        .find(|p| p["EndpointID"] == "uplink")
        .cloned()
        .unwrap_or_else(|| panic!("no uplink port in {v}"))
}

#[test]
fn sandboxes_reach_each_other_and_the_lan_with_their_own_macs() {
    in_namespace(
        "sandboxes_reach_each_other_and_the_lan_with_their_own_macs",
        |env| {
            let lan_ns = lan(env);
            create_macvlan(env, "mv");
            env.sandbox("a");
            env.sandbox("b");
            let ip_a = env.connect("mv", "a");
            let ip_b = env.connect("mv", "b");
            assert!(
                ip_a.starts_with("192.168.50.") && ip_a != LAN_HOST,
                "{ip_a}"
            );

            // Through the switch: a ↔ b, ICMP and TCP.
            assert!(
                env.ping("a", &ip_b, 3),
                "a cannot ping b\n{}",
                env.daemon_log()
            );
            let b_ns = env.sandbox_ns("b");
            let _srv_b = hello_server(&b_ns, &format!("{ip_b}:7000"));
            let a_ns = env.sandbox_ns("a");
            assert_eq!(hello_client(&a_ns, &format!("{ip_b}:7000")), "hello\n");

            // Through the uplink: each sandbox ↔ the lan host, both ways.
            let _srv_lan = hello_server(&lan_ns, &format!("{LAN_HOST}:7001"));
            for (sb, ns, ip) in [("a", &a_ns, &ip_a), ("b", &b_ns, &ip_b)] {
                assert!(env.ping(sb, LAN_HOST, 3), "{sb} cannot ping the lan host");
                assert_eq!(hello_client(ns, &format!("{LAN_HOST}:7001")), "hello\n");
                assert!(lan_ping(env, ip), "the lan host cannot ping {sb}");
                // The lan host knows each sandbox by its own MAC.
                let mac = sandbox_mac(env, sb);
                assert_eq!(lan_neigh(env, ip).as_deref(), Some(mac.as_str()), "{sb}");
            }
            assert_ne!(sandbox_mac(env, "a"), sandbox_mac(env, "b"));
            let _srv_a = hello_server(&a_ns, &format!("{ip_a}:7002"));
            assert_eq!(hello_client(&lan_ns, &format!("{ip_a}:7002")), "hello\n");

            // The default route is the network's gateway, the lan router.
            let routes = env.exec_ok("a", &["ip", "-4", "route", "show", "default"]);
            assert!(routes.contains(&format!("via {LAN_HOST}")), "{routes}");

            // The uplink shows in the stats and the FDB.
            let v = stats(env, "mv");
            let up = uplink_port(&v);
            assert!(tapnet_tests::n(&up, "RxPackets") > 0, "{up}");
            assert!(tapnet_tests::n(&up, "TxPackets") > 0, "{up}");
            assert!(v["Uplink"]["rx_frames"].as_u64().unwrap() > 0, "{v}");
            assert!(v["Uplink"]["tx_frames"].as_u64().unwrap() > 0, "{v}");
            let fdb = env.get("/networks/mv/fdb");
            let lan_mac = lan_mac(env);
            let row = fdb
                .as_array()
                .expect("fdb rows")
                .iter()
                .find(|r| r["MacAddress"] == lan_mac.as_str())
                .unwrap_or_else(|| panic!("lan MAC {lan_mac} not in {fdb}"));
            assert_eq!(row["EndpointID"], "uplink", "{row}");
        },
    );
}

/// A deterministic payload of `len` bytes.
fn payload(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x1234_5678;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

#[test]
fn bulk_tcp_crosses_the_uplink_byte_exact_both_ways() {
    in_namespace("bulk_tcp_crosses_the_uplink_byte_exact_both_ways", |env| {
        let lan_ns = lan(env);
        create_macvlan(env, "mv");
        env.sandbox("a");
        env.connect("mv", "a");
        let a_ns = env.sandbox_ns("a");
        const LEN: usize = 16 << 20;
        let data = payload(LEN);
        let before = uplink_port(&stats(env, "mv"));

        // Sandbox → lan host: the lan server reads everything and answers what it got.
        let _sink = tcp_server(&lan_ns, &format!("{LAN_HOST}:7100"), move |mut s| {
            let mut got = Vec::new();
            let _ = s.read_to_end(&mut got);
            let ok = got.len() == LEN && got == payload(LEN);
            let _ = s.write_all(format!("{} {ok}", got.len()).as_bytes());
        });
        let mut c = connect_in(&a_ns, &format!("{LAN_HOST}:7100"), Duration::from_secs(5))
            .expect("connect to the lan sink");
        c.write_all(&data).expect("send the payload");
        c.shutdown(std::net::Shutdown::Write).unwrap();
        let mut answer = String::new();
        c.read_to_string(&mut answer).unwrap();
        assert_eq!(answer, format!("{LEN} true"), "sandbox → lan");

        // Lan host → sandbox: a lan server sends the payload to a sandbox client.
        let _src = tcp_server(&lan_ns, &format!("{LAN_HOST}:7101"), |mut s| {
            let _ = s.write_all(&payload(LEN));
        });
        let mut c = connect_in(&a_ns, &format!("{LAN_HOST}:7101"), Duration::from_secs(5))
            .expect("connect to the lan source");
        let mut got = Vec::new();
        c.read_to_end(&mut got).unwrap();
        assert_eq!(got.len(), LEN, "lan → sandbox length");
        assert!(got == data, "lan → sandbox bytes differ");

        // The uplink's counters saw both directions' bytes (vnet headers excluded).
        let after = uplink_port(&stats(env, "mv"));
        let d = |f: &str| tapnet_tests::n(&after, f) - tapnet_tests::n(&before, f);
        assert!(
            d("TxBytes") >= LEN as u64,
            "uplink tx bytes {}",
            d("TxBytes")
        );
        assert!(
            d("RxBytes") >= LEN as u64,
            "uplink rx bytes {}",
            d("RxBytes")
        );
        // Super-frames, not 1500-byte frames: far fewer frames than MTU-sized segments.
        assert!(
            d("TxPackets") < (LEN / 1448) as u64,
            "uplink sent {} frames for {LEN} bytes: no GSO",
            d("TxPackets")
        );
        let v = stats(env, "mv");
        for drop in [
            "rx_truncated",
            "rx_malformed",
            "tx_malformed",
            "tx_too_long",
        ] {
            assert_eq!(v["Uplink"][drop], 0, "{drop}: {v}");
        }
    });
}

/// `POST /networks/create` with `body`; (status, message).
fn create_raw(env: &Env, body: &str) -> (u16, String) {
    let (code, v) = env.api("POST", "/networks/create", Some(body));
    (code, v["message"].as_str().unwrap_or_default().to_string())
}

#[test]
fn bad_parent_mode_or_option_is_a_400_and_creates_nothing() {
    in_namespace(
        "bad_parent_mode_or_option_is_a_400_and_creates_nothing",
        |env| {
            let _lan = lan(env);
            let count = |env: &Env| env.get("/networks").as_array().unwrap().len();
            let before = count(env);
            let body = |opts: &str| {
                format!(
                    r#"{{"Name":"mv","Driver":"macvlan","Options":{{{opts}}},"IPAM":{{"Config":[{{"Subnet":"{SUBNET}"}}]}}}}"#
                )
            };
            for (opts, needle) in [
                (r#""parent":"nosuch0""#, "nosuch0"),
                (r#""parent":"lan0.10""#, "802.1q"),
                (r#""parent":"lan0","macvlan_mode":"vepa""#, "vepa"),
                (r#""parent":"lan0","macvlan_mode":"passthru""#, "passthru"),
                (r#""parent":"lan0","ipvlan_mode":"l2""#, "ipvlan_mode"),
                ("", "parent"),
            ] {
                let (code, msg) = create_raw(env, &body(opts));
                assert_eq!(code, 400, "{opts}: {msg}");
                assert!(msg.contains(needle), "{opts}: {msg}");
                assert_eq!(count(env), before, "{opts} left a network");
            }
            // The CLI says the same.
            let err = env.fails(&[
                "network",
                "create",
                "-d",
                "macvlan",
                "-o",
                "parent=lan0",
                "-o",
                "macvlan_mode=private",
                "--subnet",
                SUBNET,
                "mv",
            ]);
            assert!(err.contains("private"), "{err}");
            // Nothing was held: the same name and subnet work once the options are right.
            create_macvlan(env, "mv");
            // One macvlan network per parent.
            let (code, msg) = create_raw(
                env,
                r#"{"Name":"mv2","Driver":"macvlan","Options":{"parent":"lan0"},"IPAM":{"Config":[{"Subnet":"192.168.51.0/24"}]}}"#,
            );
            assert_eq!(code, 409, "{msg}");
            assert!(msg.contains("lan0"), "{msg}");
            assert_eq!(count(env), before + 1);
            // The uplink holds the parent promiscuous while the network exists, and
            // removing the network closes it.
            let flags = || {
                let out = std::process::Command::new("ip")
                    .args(["-d", "-o", "link", "show", "lan0"])
                    .output()
                    .unwrap();
                String::from_utf8_lossy(&out.stdout).into_owned()
            };
            assert!(flags().contains("promiscuity 1"), "{}", flags());
            env.ok(&["network", "rm", "mv"]);
            assert!(flags().contains("promiscuity 0"), "{}", flags());
            assert_eq!(count(env), before);
        },
    );
}

#[test]
fn internal_macvlan_has_no_uplink() {
    in_namespace("internal_macvlan_has_no_uplink", |env| {
        let _lan = lan(env);
        env.ok(&[
            "network",
            "create",
            "-d",
            "macvlan",
            "--internal",
            "--subnet",
            SUBNET,
            "mvi",
        ]);
        env.sandbox("a");
        env.sandbox("b");
        env.connect("mvi", "a");
        let ip_b = env.connect("mvi", "b");
        assert!(
            env.ping("a", &ip_b, 2),
            "internal endpoints reach each other"
        );
        assert!(
            !env.ping("a", LAN_HOST, 1),
            "an internal network reached the lan"
        );
        let v = stats(env, "mvi");
        assert!(
            v["Ports"]
                .as_array()
                .unwrap()
                .iter()
                .all(|p| p["EndpointID"] != "uplink"),
            "{v}"
        );
    });
}

#[test]
fn a_daemon_restart_keeps_sandboxes_on_the_lan() {
    in_namespace("a_daemon_restart_keeps_sandboxes_on_the_lan", |env| {
        let lan_ns = lan(env);
        create_macvlan(env, "mv");
        env.sandbox("a");
        let ip_a = env.connect("mv", "a");
        assert!(env.ping("a", LAN_HOST, 2));
        env.stop_daemon();
        env.start_daemon();
        let _srv = hello_server(&lan_ns, &format!("{LAN_HOST}:7200"));
        assert!(
            env.ping("a", LAN_HOST, 3),
            "after the restart a cannot ping the lan host\n{}",
            env.daemon_log()
        );
        let a_ns = env.sandbox_ns("a");
        assert_eq!(hello_client(&a_ns, &format!("{LAN_HOST}:7200")), "hello\n");
        assert!(
            lan_ping(env, &ip_a),
            "the lan host cannot reach a after the restart"
        );
        let up = uplink_port(&stats(env, "mv"));
        assert!(tapnet_tests::n(&up, "TxPackets") > 0, "{up}");
    });
}

#[test]
fn published_ports_on_a_macvlan_only_sandbox_are_refused_by_name() {
    in_namespace(
        "published_ports_on_a_macvlan_only_sandbox_are_refused_by_name",
        |env| {
            let _lan = lan(env);
            create_macvlan(env, "mv");
            env.ok(&["sandbox", "create", "-p", "8080:80", "web"]);
            let err = env.fails(&["network", "connect", "mv", "web"]);
            assert!(err.contains("-p") && err.contains("macvlan"), "{err}");
            let v = env.get("/sandboxes/web");
            assert!(
                v["Endpoints"].as_object().is_none_or(|m| m.is_empty()),
                "{v}"
            );
            // Published on a bridge network first, the sandbox may join the macvlan too.
            env.network("br", "10.77.0.0/24");
            env.connect("br", "web");
            env.connect("mv", "web");
            assert!(env.ping("web", LAN_HOST, 2));
        },
    );
}

#[test]
fn only_frames_for_the_sandboxes_reach_them() {
    in_namespace("only_frames_for_the_sandboxes_reach_them", |env| {
        let _lan = lan(env);
        create_macvlan(env, "mv");
        env.sandbox("a");
        env.connect("mv", "a");
        let mac_a = sandbox_mac(env, "a");
        let mac_bytes: Vec<String> = mac_a.split(':').map(|b| format!("0x{b}")).collect();
        let mac_py = format!("bytes([{}])", mac_bytes.join(","));
        // The sandbox counts frames of ethertype 0x88b5 reaching its eth0.
        let capture = std::thread::scope(|s| {
            let cap = s.spawn(|| {
                env.python(
                    "a",
                    r#"
import socket, time
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x88b5))
s.bind(("eth0", 0))
s.settimeout(0.2)
n = 0
end = time.time() + 3
while time.time() < end:
    try:
        f = s.recv(65535)
    except socket.timeout:
        continue
    n += 1
print(n)
"#,
                )
            });
            std::thread::sleep(Duration::from_millis(800));
            // From the lan: 5 frames to a, 5 to a MAC nobody has, 5 VLAN-tagged to a.
            let code = format!(
                r#"
import socket
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("eth0", 0))
src = s.getsockname()[4][:6]
a = {mac_py}
other = bytes([2, 0, 0, 0, 0, 0x99])
for _ in range(5):
    s.send(a + src + b"\x88\xb5" + b"x" * 50)
    s.send(other + src + b"\x88\xb5" + b"y" * 50)
    s.send(a + src + b"\x81\x00\x00\x0a\x88\xb5" + b"z" * 50)
"#
            );
            let out = in_lan(env, &[tapnet_tests::python3(), "-c", &code]);
            assert!(out.status.success(), "{out:?}");
            cap.join().unwrap()
        });
        assert!(capture.status.success(), "{capture:?}");
        let got: u32 = String::from_utf8_lossy(&capture.stdout)
            .trim()
            .parse()
            .unwrap();
        assert_eq!(got, 5, "frames of 0x88b5 reaching a");
        let v = stats(env, "mv");
        // The foreign frames stopped at the socket's BPF filter, in the kernel: none
        // reached the port's own check.
        assert_eq!(v["Uplink"]["rx_not_ours"], 0, "{v}");
        assert_eq!(v["Uplink"]["rx_vlan"], 5, "{v}");
    });
}
