//! Bridge networks on the userspace switch: real taps in real sandboxes, real traffic.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use tapnet_sandbox::netns::Netns;
use tapnet_tests::{in_namespace, n};

#[test]
fn two_sandboxes_ping_both_ways() {
    in_namespace("two_sandboxes_ping_both_ways", |env| {
        env.network("net1", "10.10.0.0/24");
        env.sandbox("a");
        env.sandbox("b");
        let ip_a = env.connect("net1", "a");
        let ip_b = env.connect("net1", "b");
        assert_eq!(ip_a, "10.10.0.2", "first address after the gateway");
        assert_eq!(ip_b, "10.10.0.3");
        assert!(env.ping("a", &ip_b, 3), "a cannot ping b");
        assert!(env.ping("b", &ip_a, 3), "b cannot ping a");
        // The traffic went through the switch: both ports counted it.
        let pa = env.port_stats("net1", "a");
        let pb = env.port_stats("net1", "b");
        assert!(
            n(&pa, "RxPackets") >= 6 && n(&pb, "RxPackets") >= 6,
            "{pa} {pb}"
        );
        assert!(
            n(&pa, "TxPackets") >= 6 && n(&pb, "TxPackets") >= 6,
            "{pa} {pb}"
        );
        // The interface inside the sandbox is eth0 with Docker's MAC scheme.
        let out = env.exec("a", &["ip", "-o", "link", "show", "eth0"]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("02:42:0a:0a:00:02"), "{text}");
        // `tapnet exec` returns the command's exit code.
        let out = env.exec("a", &["sh", "-c", "exit 7"]);
        assert_eq!(out.status.code(), Some(7));
    });
}

#[test]
fn learned_unicast_does_not_reach_third_sandbox() {
    in_namespace("learned_unicast_does_not_reach_third_sandbox", |env| {
        env.network("net1", "10.20.0.0/24");
        for s in ["a", "b", "c"] {
            env.sandbox(s);
            env.connect("net1", s);
        }
        let ip_b = env.ip_of("net1", "b");
        // Learn: a and b talk (ARP both ways).
        assert!(env.ping("a", &ip_b, 2));
        let before = env.port_stats("net1", "c");
        // Capture on c's tap while a sends unicast to b.
        let capture = std::thread::scope(|s| {
            let cap = s.spawn(|| {
                env.python(
                    "c",
                    r#"
import socket, time
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.bind(("eth0", 0))
s.settimeout(0.2)
n = 0
end = time.time() + 3.0
while time.time() < end:
    try:
        f = s.recv(65535)
    except socket.timeout:
        continue
    if len(f) > 23 and f[12:14] == b"\x08\x00" and f[23] == 1:
        n += 1
print(n)
"#,
                )
            });
            std::thread::sleep(std::time::Duration::from_millis(500));
            assert!(env.ping("a", &ip_b, 40), "a cannot ping b");
            cap.join().unwrap()
        });
        assert!(capture.status.success(), "{capture:?}");
        let seen: u32 = String::from_utf8_lossy(&capture.stdout)
            .trim()
            .parse()
            .unwrap();
        assert_eq!(
            seen, 0,
            "c's tap saw {seen} ICMP frames of the a<->b conversation"
        );
        let after = env.port_stats("net1", "c");
        let b_stats = env.port_stats("net1", "b");
        assert!(n(&b_stats, "TxPackets") >= 42, "b got the pings: {b_stats}");
        // c's egress counter must not have moved by the 80 ICMP frames of the
        // conversation; what it did see is IPv6 multicast (MLD, router solicitations)
        // that the new sandboxes send, which a switch floods.
        let delta = n(&after, "TxPackets") - n(&before, "TxPackets");
        assert!(
            delta < 20,
            "c's port sent {delta} frames during a<->b unicast"
        );
        // The FDB knows a and b.
        let fdb = env.get("/networks/net1/fdb");
        assert!(fdb.as_array().unwrap().len() >= 2, "{fdb}");
    });
}

#[test]
fn networks_are_isolated() {
    in_namespace("networks_are_isolated", |env| {
        env.network("red", "10.30.0.0/24");
        env.network("blue", "10.31.0.0/24");
        for s in ["r1", "r2"] {
            env.sandbox(s);
            env.connect("red", s);
        }
        env.sandbox("b1");
        let ip_b1 = env.connect("blue", "b1");
        let ip_r2 = env.ip_of("red", "r2");
        assert!(env.ping("r1", &ip_r2, 2));
        // Broadcast and unknown unicast in red.
        let _ = env.exec(
            "r1",
            &[
                "ping",
                "-b",
                "-c",
                "3",
                "-i",
                "0.2",
                "-W",
                "1",
                "10.30.0.255",
            ],
        );
        // r1 cannot reach b1 (different network; the gateway does not route).
        assert!(!env.ping("r1", &ip_b1, 2), "red reached blue");
        let b1 = env.port_stats("blue", "b1");
        assert_eq!(
            n(&b1, "TxPackets"),
            0,
            "blue's only port was sent frames: {b1}"
        );
        // Blue's switch never learned a red MAC.
        let fdb = env.get("/networks/blue/fdb");
        for e in fdb.as_array().unwrap() {
            let mac = e["MacAddress"].as_str().unwrap();
            assert!(
                !mac.starts_with("02:42:0a:1e"),
                "red MAC {mac} in blue's FDB"
            );
        }
    });
}

#[test]
fn disconnect_removes_tap_and_stops_traffic() {
    in_namespace("disconnect_removes_tap_and_stops_traffic", |env| {
        env.network("net1", "10.40.0.0/24");
        env.sandbox("a");
        env.sandbox("b");
        env.connect("net1", "a");
        let ip_b = env.connect("net1", "b");
        assert!(env.ping("a", &ip_b, 2));
        env.ok(&["network", "disconnect", "net1", "b"]);
        let out = env.exec("b", &["ip", "-o", "link"]);
        let links = String::from_utf8_lossy(&out.stdout);
        assert!(
            !links.contains("eth0"),
            "eth0 still in b after disconnect: {links}"
        );
        assert!(!env.ping("a", &ip_b, 2), "traffic still reaches b");
        let inspect = env.get("/networks/net1");
        assert_eq!(
            inspect["Containers"].as_object().unwrap().len(),
            1,
            "{inspect}"
        );
        // The address was freed: the next connect gets it again.
        env.sandbox("c");
        assert_eq!(env.connect("net1", "c"), ip_b);
        // Reconnecting b works and gives it eth0 again.
        env.connect("net1", "b");
        let ip_b2 = env.ip_of("net1", "b");
        assert!(env.ping("a", &ip_b2, 2));
    });
}

#[test]
fn bulk_tcp_transfer_arrives_intact() {
    in_namespace("bulk_tcp_transfer_arrives_intact", |env| {
        const TOTAL: usize = 100 * 1024 * 1024;
        env.network("net1", "10.50.0.0/24");
        env.sandbox("a");
        env.sandbox("b");
        env.connect("net1", "a");
        let ip_b = env.connect("net1", "b");
        let ns_a = Netns::open(&env.netns_path("a")).unwrap();
        let ns_b = Netns::open(&env.netns_path("b")).unwrap();
        // Sockets belong to the namespace they are created in.
        let listener = ns_b
            .run(|| TcpListener::bind("0.0.0.0:5001"))
            .unwrap()
            .unwrap();
        let receiver = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut got = 0usize;
            let mut hash: u64 = 0xcbf29ce484222325;
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let k = s.read(&mut buf).unwrap();
                if k == 0 {
                    break;
                }
                for &byte in &buf[..k] {
                    // Check content and order: byte i must be pattern(i).
                    assert_eq!(byte, pattern(got), "corrupt byte at offset {got}");
                    got += 1;
                    hash = (hash ^ byte as u64).wrapping_mul(0x100000001b3);
                }
            }
            (got, hash)
        });
        let addr = format!("{ip_b}:5001");
        let mut stream = ns_a.run(|| TcpStream::connect(&addr)).unwrap().unwrap();
        let mut sent_hash: u64 = 0xcbf29ce484222325;
        let mut chunk = vec![0u8; 1 << 16];
        let mut off = 0usize;
        while off < TOTAL {
            let k = chunk.len().min(TOTAL - off);
            for (i, b) in chunk[..k].iter_mut().enumerate() {
                *b = pattern(off + i);
                sent_hash = (sent_hash ^ *b as u64).wrapping_mul(0x100000001b3);
            }
            stream.write_all(&chunk[..k]).unwrap();
            off += k;
        }
        drop(stream);
        let (got, hash) = receiver.join().unwrap();
        assert_eq!(got, TOTAL);
        assert_eq!(hash, sent_hash);
        // Offloads on: the sender's kernel handed the switch GSO super-frames, so far
        // fewer frames than 1500-byte segments crossed the port.
        let pa = env.port_stats("net1", "a");
        let frames = n(&pa, "RxPackets");
        assert!(n(&pa, "RxBytes") >= TOTAL as u64, "{pa}");
        assert!(
            frames < (TOTAL / 1448) as u64,
            "no GSO super-frames seen: {pa}"
        );
    });
}

fn pattern(i: usize) -> u8 {
    (i % 251) as u8 ^ (i >> 16) as u8
}

#[test]
fn malformed_frames_are_dropped_and_counted() {
    in_namespace("malformed_frames_are_dropped_and_counted", |env| {
        env.network("net1", "10.60.0.0/24");
        env.sandbox("a");
        env.sandbox("b");
        env.connect("net1", "a");
        let ip_b = env.connect("net1", "b");
        assert!(env.ping("a", &ip_b, 1));
        let out = env.python(
            "a",
            r#"
import socket
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("eth0", 0))
bcast = b"\xff" * 6
own = open("/sys/class/net/eth0/address").read().strip()
own = bytes(int(x, 16) for x in own.split(":"))
# 1, 2: multicast and all-zero source MACs
s.send(bcast + b"\x01\x00\x5e\x00\x00\x01" + b"\x08\x00" + b"\x45" + b"\x00" * 40)
s.send(bcast + b"\x00" * 6 + b"\x08\x00" + b"\x45" + b"\x00" * 40)
# 3, 4, 5: IPv4, ARP and IPv6 headers cut short
s.send(bcast + own + b"\x08\x00" + b"\x45\x00\x00")
s.send(bcast + own + b"\x08\x06" + b"\x00\x01\x08\x00")
s.send(bcast + own + b"\x86\xdd" + b"\x60" + b"\x00" * 10)
print("sent")
"#,
        );
        assert!(out.status.success(), "{out:?}");
        std::thread::sleep(std::time::Duration::from_millis(300));
        let pa = env.port_stats("net1", "a");
        let drops = &pa["Drops"];
        assert!(n(drops, "bad_source_mac") >= 2, "{pa}");
        assert!(n(drops, "truncated") >= 3, "{pa}");
        // The switch keeps working.
        assert!(env.ping("a", &ip_b, 2), "switch stopped forwarding");
        assert!(env.ping("b", &env.ip_of("net1", "a"), 2));
    });
}
