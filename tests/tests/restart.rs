//! Store and restart: state survives a graceful stop and a `kill -9`, a live TCP
//! stream survives a `kill -9` + restart, sandboxes whose namespace vanished are
//! cleaned up, SIGTERM leaves sandboxes working (live restore).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use serde_json::Value;
use std::io::{Read, Write};
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
            let mut got = 0usize;
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let k = s
                    .read(&mut buf)
                    .map_err(|e| format!("read after {got} bytes: {e}"))?;
                if k == 0 {
                    return Ok(got);
                }
                for &byte in &buf[..k] {
                    if byte != pattern(got) {
                        return Err(format!("corrupt or reordered byte at offset {got}"));
                    }
                    got += 1;
                }
                rx_count.store(got, Ordering::Relaxed);
            }
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
