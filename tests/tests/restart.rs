//! Store and restart: state survives a graceful stop and a `kill -9`, a live TCP
//! stream survives a `kill -9` + restart, sandboxes whose namespace vanished are
//! cleaned up, SIGTERM leaves sandboxes working (live restore).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use serde_json::Value;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tapnet_sandbox::netns::Netns;
use tapnet_tests::{in_namespace, Env};

/// Everything the API says about networks and sandboxes.
fn state(env: &Env) -> (Value, Value) {
    (env.get("/networks"), env.get("/sandboxes"))
}

/// Addresses in use on `network` (from its Containers).
fn addresses(env: &Env, network: &str) -> Vec<String> {
    let v = env.get(&format!("/networks/{network}"));
    let mut out: Vec<String> = v["Containers"]
        .as_object()
        .unwrap()
        .values()
        .map(|c| c["IPv4Address"].as_str().unwrap().to_string())
        .collect();
    out.sort();
    out
}

#[test]
fn state_survives_graceful_and_kill9_restart() {
    in_namespace("state_survives_graceful_and_kill9_restart", |env| {
        env.network("n1", "10.70.0.0/24");
        env.network("n2", "10.71.0.0/24");
        for s in ["a", "b", "c", "d"] {
            env.sandbox(s);
        }
        env.connect("n1", "a");
        env.connect("n1", "b");
        env.connect("n1", "c");
        env.connect("n2", "a");
        env.connect("n2", "d");
        // A hole in n1's addresses: .3 is free again; .4 stays taken.
        env.ok(&["network", "disconnect", "n1", "b"]);
        let before = state(env);
        assert_eq!(addresses(env, "n1"), ["10.70.0.2/24", "10.70.0.4/24"]);

        env.stop_daemon();
        env.start_daemon();
        assert_eq!(
            state(env),
            before,
            "state changed across a graceful restart"
        );

        env.kill9_daemon();
        env.start_daemon();
        assert_eq!(state(env), before, "state changed across kill -9 + start");
        let log = env.daemon_log();
        assert!(log.contains("restored 4 endpoints"), "{log}");

        // Forwarding resumed on both networks.
        assert!(
            env.ping("a", &env.ip_of("n1", "c"), 2),
            "n1 does not forward"
        );
        assert!(
            env.ping("d", &env.ip_of("n2", "a"), 2),
            "n2 does not forward"
        );

        // New connects get free addresses only: first the hole, then above .4.
        assert_eq!(env.connect("n1", "b"), "10.70.0.3");
        assert_eq!(env.connect("n1", "d"), "10.70.0.5");
        assert_eq!(env.connect("n2", "c"), "10.71.0.4");
        let ips = addresses(env, "n1");
        let mut dedup = ips.clone();
        dedup.dedup();
        assert_eq!(ips, dedup, "an address was handed out twice");
        assert!(env.ping("b", &env.ip_of("n1", "d"), 2));
        // The MACs follow the stored records.
        let sb = env.get("/sandboxes/a");
        assert_eq!(
            sb["Endpoints"]["n1"]["MacAddress"], "02:42:0a:46:00:02",
            "{sb}"
        );
    });
}

fn pattern(i: usize) -> u8 {
    (i % 251) as u8 ^ (i >> 16) as u8
}

#[test]
fn tcp_stream_survives_kill9_and_restart() {
    in_namespace("tcp_stream_survives_kill9_and_restart", |env| {
        const TOTAL: usize = 64 * 1024 * 1024;
        const CHUNK: usize = 64 * 1024;
        env.network("net1", "10.74.0.0/24");
        env.sandbox("a");
        env.sandbox("b");
        env.connect("net1", "a");
        let ip_b = env.connect("net1", "b");
        let ns_a = Netns::open(&env.netns_path("a")).unwrap();
        let ns_b = Netns::open(&env.netns_path("b")).unwrap();
        let timeout = Some(Duration::from_secs(60));
        let listener = ns_b
            .run(|| TcpListener::bind("0.0.0.0:5001"))
            .unwrap()
            .unwrap();
        let received = Arc::new(AtomicUsize::new(0));
        let rx_count = Arc::clone(&received);
        let receiver = std::thread::spawn(move || -> Result<usize, String> {
            let (mut s, _) = listener.accept().map_err(|e| e.to_string())?;
            s.set_read_timeout(timeout).map_err(|e| e.to_string())?;
            tapnet_tests::read_checked(&mut s, pattern, Some(&rx_count))
        });
        let addr = format!("{ip_b}:5001");
        let mut stream = ns_a.run(|| TcpStream::connect(&addr)).unwrap().unwrap();
        stream.set_write_timeout(timeout).unwrap();
        let sent = Arc::new(AtomicUsize::new(0));
        let tx_count = Arc::clone(&sent);
        // Paced: ~2 ms per 64 KiB, so 64 MiB take a couple of seconds.
        let sender = std::thread::spawn(move || -> Result<(), String> {
            let mut chunk = vec![0u8; CHUNK];
            let mut off = 0usize;
            while off < TOTAL {
                let k = CHUNK.min(TOTAL - off);
                for (i, b) in chunk[..k].iter_mut().enumerate() {
                    *b = pattern(off + i);
                }
                stream
                    .write_all(&chunk[..k])
                    .map_err(|e| format!("write at {off}: {e}"))?;
                off += k;
                tx_count.store(off, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(2));
            }
            Ok(())
        });
        // Kill the daemon in the middle of the transfer.
        let deadline = Instant::now() + Duration::from_secs(30);
        while received.load(Ordering::Relaxed) < 8 * 1024 * 1024 {
            assert!(Instant::now() < deadline, "transfer did not start");
            std::thread::sleep(Duration::from_millis(5));
        }
        env.kill9_daemon();
        let at_kill = received.load(Ordering::Relaxed);
        assert!(at_kill < TOTAL, "transfer finished before the kill");
        std::thread::sleep(Duration::from_secs(1));
        let stalled = received.load(Ordering::Relaxed);
        assert!(
            stalled < TOTAL,
            "transfer finished while the daemon was down"
        );
        env.start_daemon();
        sender.join().unwrap().unwrap();
        let got = receiver.join().unwrap().unwrap();
        assert_eq!(got, TOTAL, "not every byte arrived");
        eprintln!("killed at {at_kill} bytes received, {stalled} while down, {got} in the end");
    });
}

#[test]
fn sandbox_with_vanished_namespace_is_cleaned_up() {
    in_namespace("sandbox_with_vanished_namespace_is_cleaned_up", |env| {
        env.network("n1", "10.72.0.0/24");
        env.sandbox("a");
        env.sandbox("b");
        env.connect("n1", "a");
        let ip_b = env.connect("n1", "b");
        assert_eq!(ip_b, "10.72.0.3");
        let path_b = env.netns_path("b");
        env.stop_daemon();
        nix::mount::umount2(&path_b, nix::mount::MntFlags::MNT_DETACH).unwrap();
        std::fs::remove_file(&path_b).unwrap();
        env.start_daemon();

        let sbs = env.get("/sandboxes");
        let names: Vec<&str> = sbs
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["Name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["a"], "{sbs}");
        let net = env.get("/networks/n1");
        let containers = net["Containers"].as_object().unwrap();
        assert_eq!(containers.len(), 1, "{net}");
        assert!(env.get("/networks/n1").to_string().contains("10.72.0.2"));
        let log = env.daemon_log();
        assert!(
            log.contains("sandbox b removed: its network namespace vanished"),
            "{log}"
        );
        // b's address is free again, and the network still forwards.
        env.sandbox("c");
        assert_eq!(env.connect("n1", "c"), ip_b);
        assert!(env.ping("a", &ip_b, 2));
        // The clean-up was committed: it does not come back on the next start.
        env.kill9_daemon();
        env.start_daemon();
        assert_eq!(env.get("/sandboxes").as_array().unwrap().len(), 2);
        assert_eq!(addresses(env, "n1"), ["10.72.0.2/24", "10.72.0.3/24"]);
    });
}

#[test]
fn sigterm_leaves_sandboxes_working() {
    in_namespace("sigterm_leaves_sandboxes_working", |env| {
        env.network("n1", "10.73.0.0/24");
        env.sandbox("a");
        env.sandbox("b");
        let ip_a = env.connect("n1", "a");
        let ip_b = env.connect("n1", "b");
        assert!(env.ping("a", &ip_b, 1));
        let path_a = env.netns_path("a");
        let took = env.stop_daemon_timed();
        assert!(took < Duration::from_secs(2), "SIGTERM took {took:?}");
        // Live restore: the tap and its address are still in the sandbox.
        let out = env.nsenter(&path_a, &["ip", "-o", "addr", "show", "dev", "eth0"]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains(&format!("{ip_a}/24")),
            "{out:?}"
        );
        env.start_daemon();
        assert!(env.ping("a", &ip_b, 2), "no forwarding after restart");
        assert!(env.ping("b", &ip_a, 2));
    });
}

#[test]
fn missing_tap_is_recreated_on_start() {
    in_namespace("missing_tap_is_recreated_on_start", |env| {
        env.network("n1", "10.75.0.0/24");
        env.sandbox("a");
        env.sandbox("b");
        env.connect("n1", "a");
        let ip_b = env.connect("n1", "b");
        let path_b = env.netns_path("b");
        env.stop_daemon();
        let out = env.nsenter(&path_b, &["ip", "link", "del", "eth0"]);
        assert!(out.status.success(), "{out:?}");
        env.start_daemon();
        let log = env.daemon_log();
        assert!(
            log.contains("re-creating it from the stored record"),
            "{log}"
        );
        let out = env.exec("b", &["ip", "-o", "addr", "show", "dev", "eth0"]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(&format!("{ip_b}/24")), "{text}");
        let out = env.exec("b", &["ip", "-o", "link", "show", "eth0"]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("02:42:0a:4b:00:03"), "{text}");
        assert!(env.ping("a", &ip_b, 2));
    });
}

/// The `Containers` entry of `sandbox` on `network`.
fn container(env: &Env, network: &str, sandbox: &str) -> Value {
    let v = env.get(&format!("/networks/{network}"));
    v["Containers"]
        .as_object()
        .unwrap()
        .values()
        .find(|c| c["Name"] == sandbox)
        .cloned()
        .unwrap_or_else(|| panic!("{sandbox} not on {network}: {v}"))
}

fn sysctl_in(env: &Env, sandbox: &str, key: &str) -> String {
    env.exec_ok(sandbox, &["cat", &format!("/proc/sys/{key}")])
        .trim()
        .to_string()
}

fn ping6(env: &Env, from: &str, to: &str) {
    let out = env.exec(
        from,
        &[
            "ping", "-6", "-n", "-q", "-c", "2", "-i", "0.2", "-W", "2", to,
        ],
    );
    assert!(
        out.status.success(),
        "{from} cannot ping -6 {to}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Everything IPAM and the connect options record survives a `kill -9`: an IPv6
/// network with IPv4 and IPv6 auxiliary addresses and an IPv4 range, an endpoint with
/// aliases and a custom MAC, a static IPv6 address, endpoints on the `host` and `none`
/// networks, the pre-defined networks (not created twice). The API answers the same
/// JSON after the restart, and new connects skip aux and taken addresses.
#[test]
fn ipam_aliases_mac_and_host_endpoints_survive_kill9() {
    in_namespace("ipam_aliases_mac_and_host_endpoints_survive_kill9", |env| {
        env.api_ok(
            "POST",
            "/networks/create",
            Some(
                r#"{"Name":"v6","EnableIPv6":true,"IPAM":{"Config":[
                {"Subnet":"10.80.0.0/24","IPRange":"10.80.0.16/28","AuxiliaryAddresses":{"router":"10.80.0.17"}},
                {"Subnet":"fd00:80::/64","Gateway":"fd00:80::1","AuxiliaryAddresses":{"x":"fd00:80::2"}}]}}"#,
            ),
        );
        env.network("v4", "10.81.0.0/24");
        for s in ["a", "b", "c", "h", "n"] {
            env.sandbox(s);
        }
        env.api_ok(
            "POST",
            "/networks/v6/connect",
            Some(
                r#"{"Container":"a","EndpointConfig":{"Aliases":["web","www"],"MacAddress":"02:42:aa:bb:cc:01"}}"#,
            ),
        );
        env.api_ok(
            "POST",
            "/networks/v6/connect",
            Some(
                r#"{"Container":"b","EndpointConfig":{"IPAMConfig":{"IPv6Address":"fd00:80::4"}}}"#,
            ),
        );
        env.connect("v4", "a");
        env.api_ok(
            "POST",
            "/networks/host/connect",
            Some(r#"{"Container":"h"}"#),
        );
        env.api_ok(
            "POST",
            "/networks/none/connect",
            Some(r#"{"Container":"n"}"#),
        );
        let ca = container(env, "v6", "a");
        assert_eq!(ca["IPv4Address"], "10.80.0.16/24", "{ca}");
        assert_eq!(ca["IPv6Address"], "fd00:80::3/64", "aux skipped: {ca}");
        assert_eq!(ca["MacAddress"], "02:42:aa:bb:cc:01", "{ca}");
        assert_eq!(
            container(env, "v6", "b")["IPv4Address"],
            "10.80.0.18/24",
            "aux skipped"
        );
        // IPv6 stays on for the tap of the IPv6 network, off on the IPv4-only one.
        assert_eq!(sysctl_in(env, "a", "net/ipv6/conf/eth0/disable_ipv6"), "0");
        assert_eq!(sysctl_in(env, "a", "net/ipv6/conf/eth1/disable_ipv6"), "1");
        let before = state(env);
        let sb = env.get("/sandboxes/a");
        assert_eq!(
            sb["Endpoints"]["v6"]["Aliases"],
            serde_json::json!(["web", "www"]),
            "{sb}"
        );

        env.kill9_daemon();
        env.start_daemon();
        let after = state(env);
        assert_eq!(after.0, before.0, "GET /networks changed across kill -9");
        assert_eq!(after.1, before.1, "GET /sandboxes changed across kill -9");
        let names: Vec<String> = after
            .0
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["Name"].as_str().unwrap().to_string())
            .collect();
        for n in ["bridge", "host", "none"] {
            assert_eq!(
                names.iter().filter(|x| *x == n).count(),
                1,
                "{n} after restart: {names:?}"
            );
        }
        let log = env.daemon_log();
        assert!(log.contains("restored 5 endpoints"), "{log}");

        // The restored taps still have their MAC, addresses and IPv6 setting.
        let link = env.exec_ok("a", &["ip", "-o", "link", "show", "eth0"]);
        assert!(link.contains("02:42:aa:bb:cc:01"), "{link}");
        assert_eq!(sysctl_in(env, "a", "net/ipv6/conf/eth0/disable_ipv6"), "0");
        ping6(env, "a", "fd00:80::4");
        assert!(env.ping("b", "10.80.0.16", 2));

        // New connects skip the aux addresses and every taken address, both families.
        env.connect("v6", "c");
        let cc = container(env, "v6", "c");
        assert_eq!(cc["IPv4Address"], "10.80.0.19/24", "{cc}");
        assert_eq!(cc["IPv6Address"], "fd00:80::5/64", "{cc}");
        env.sandbox("d");
        for (addr, what) in [
            ("10.80.0.17", "IPv4 aux"),
            ("10.80.0.16", "taken IPv4"),
            ("10.80.0.1", "IPv4 gateway"),
        ] {
            let (code, v) = env.api(
                "POST",
                "/networks/v6/connect",
                Some(&format!(
                    r#"{{"Container":"d","EndpointConfig":{{"IPAMConfig":{{"IPv4Address":"{addr}"}}}}}}"#
                )),
            );
            assert_eq!(code, 409, "{what} {addr}: {v}");
        }
        for (addr, what) in [
            ("fd00:80::2", "IPv6 aux"),
            ("fd00:80::4", "taken IPv6"),
            ("fd00:80::1", "IPv6 gateway"),
        ] {
            let (code, v) = env.api(
                "POST",
                "/networks/v6/connect",
                Some(&format!(
                    r#"{{"Container":"d","EndpointConfig":{{"IPAMConfig":{{"IPv6Address":"{addr}"}}}}}}"#
                )),
            );
            assert_eq!(code, 409, "{what} {addr}: {v}");
        }
        // The same MAC is still known to be in use on v6.
        let (code, v) = env.api(
            "POST",
            "/networks/v6/connect",
            Some(r#"{"Container":"d","EndpointConfig":{"MacAddress":"02:42:aa:bb:cc:01"}}"#),
        );
        assert_eq!(code, 409, "{v}");
        // host/none endpoints keep their exclusivity rules after the restart.
        let (code, v) = env.api("POST", "/networks/v4/connect", Some(r#"{"Container":"h"}"#));
        assert_eq!(code, 400, "{v}");

        // State in the store equals state in memory after these requests too.
        let before = state(env);
        env.kill9_daemon();
        env.start_daemon();
        assert_eq!(
            state(env),
            before,
            "state changed across the second kill -9"
        );
    });
}
