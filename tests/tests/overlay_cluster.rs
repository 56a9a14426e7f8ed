//! Three "hosts" on one underlay with a real etcd: a global overlay network carries
//! traffic between sandboxes on different hosts, and keeps doing so through a host's
//! death, a daemon restart and a partition.
//!
//! Setup ([`tapnet_tests::Env::cluster`]): a kernel bridge `ul0` in the test's
//! namespace (192.0.2.254/24, where etcd listens: the underlay is not what is tested)
//! with a veth per host namespace `h1`..`h3` (`eth0` 192.0.2.1..3/24), one `tapnetd`
//! per host with `--cluster-store etcd://192.0.2.254:2379 --cluster-advertise
//! 192.0.2.K --cluster-ttl 2`. The overlay `ov` (10.90.0.0/24) is created on `h1`
//! only; sandbox `sK` lives on host `hK`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::needless_range_loop,
    missing_docs
)]

use serde_json::Value;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tapnet_engine::store::KvStore;
use tapnet_tests::{connect_in, in_namespace, n, tcp_server, Cluster, Env};

const TTL: &str = "2";
/// Bytes of each TCP transfer across hosts.
const TCP_BYTES: usize = 4 << 20;
const TCP_PORT: u16 = 5001;

/// Wait (at most `secs`) until `f` holds; returns how long it took.
fn eventually(secs: u64, what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(secs);
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out after {secs} s: {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    t0.elapsed()
}

/// The byte at offset `i` of every TCP stream these tests send (251 is prime: the
/// pattern never lines up with segment or buffer sizes).
fn pattern(i: u64) -> u8 {
    (i % 251) as u8
}

/// A TCP sink: reads to EOF, checking every byte against [`pattern`], then answers
/// `"<bytes read> <bytes before the first wrong one>"` and closes.
fn checking_sink(mut s: std::net::TcpStream) {
    let mut total: u64 = 0;
    let mut good: Option<u64> = None;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => {
                if good.is_none() {
                    if let Some(j) = (0..k).find(|&j| buf[j] != pattern(total + j as u64)) {
                        good = Some(total + j as u64);
                    }
                }
                total += k as u64;
            }
            Err(_) => return,
        }
    }
    let _ = write!(s, "{total} {}", good.unwrap_or(total));
}

/// Write `[from, to)` of the pattern to `s`.
fn send_pattern(s: &mut std::net::TcpStream, from: u64, to: u64) {
    let mut buf = vec![0u8; 1 << 16];
    let mut off = from;
    while off < to {
        let k = ((to - off) as usize).min(buf.len());
        for (j, b) in buf[..k].iter_mut().enumerate() {
            *b = pattern(off + j as u64);
        }
        s.write_all(&buf[..k])
            .unwrap_or_else(|e| panic!("write at byte {off}: {e}"));
        off += k as u64;
    }
}

/// Close the sending side and read the sink's answer: (bytes read, bytes right).
fn finish(mut s: std::net::TcpStream) -> (u64, u64) {
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).expect("the sink's answer");
    let mut it = reply.split_whitespace().map(|x| x.parse::<u64>().unwrap());
    (it.next().unwrap(), it.next().unwrap())
}

/// 4 MiB from `src` (sandbox on `from`) to `dst_ip:port` (a [`checking_sink`] in `dst`
/// on `to`); asserts every byte arrived, in order.
fn tcp_check(from: &Env, src: &str, to: &Env, dst: &str, dst_ip: &str, port: u16) {
    let _sink = tcp_server(
        &to.sandbox_ns(dst),
        &format!("{dst_ip}:{port}"),
        checking_sink,
    );
    let mut s = connect_in(
        &from.sandbox_ns(src),
        &format!("{dst_ip}:{port}"),
        Duration::from_secs(10),
    )
    .unwrap_or_else(|e| panic!("connect {src} -> {dst} ({dst_ip}:{port}): {e}"));
    send_pattern(&mut s, 0, TCP_BYTES as u64);
    let (total, good) = finish(s);
    assert_eq!(
        (total, good),
        (TCP_BYTES as u64, TCP_BYTES as u64),
        "{src} -> {dst}: bytes read, bytes right"
    );
}

/// Three hosts, `ov` created on h1 and seen on all, sandbox `sK` on host `hK`
/// connected at the same time on all three; returns the cluster and the sandboxes'
/// addresses.
fn three_hosts(env: &mut Env) -> (Cluster, Vec<String>) {
    let c = env.cluster(3, &["--cluster-ttl", TTL]);
    c.hosts[0].ok(&[
        "network",
        "create",
        "-d",
        "overlay",
        "--subnet",
        "10.90.0.0/24",
        "ov",
    ]);
    for h in &c.hosts {
        eventually(10, "every host has ov", || {
            h.api("GET", "/networks/ov", None).0 == 200
        });
    }
    for (i, h) in c.hosts.iter().enumerate() {
        h.sandbox(&format!("s{}", i + 1));
    }
    std::thread::scope(|s| {
        for (i, h) in c.hosts.iter().enumerate() {
            s.spawn(move || h.ok(&["network", "connect", "ov", &format!("s{}", i + 1)]));
        }
    });
    let ips: Vec<String> = (0..3)
        .map(|i| c.hosts[i].ip_of("ov", &format!("s{}", i + 1)))
        .collect();
    let mut sorted = ips.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 3, "addresses given twice: {ips:?}");
    (c, ips)
}

/// Wait until every sandbox `sK` pings every other one.
fn all_reach(c: &Cluster, ips: &[String]) {
    for i in 0..ips.len() {
        for j in 0..ips.len() {
            if i != j {
                let sb = format!("s{}", i + 1);
                eventually(15, &format!("{sb} reaches {}", ips[j]), || {
                    c.hosts[i].ping(&sb, &ips[j], 1)
                });
            }
        }
    }
}

/// `Tunnel` of `GET /networks/ov/stats` on `h`.
fn tunnel(h: &Env) -> Value {
    let v = h.get("/networks/ov/stats");
    assert!(v["Tunnel"].is_object(), "no Tunnel counters: {v}");
    v["Tunnel"].clone()
}

#[test]
fn three_hosts_concurrent_connects_ping_and_tcp_by_ip() {
    in_namespace(
        "three_hosts_concurrent_connects_ping_and_tcp_by_ip",
        |env| {
            let (c, ips) = three_hosts(env);
            // Three more sandboxes per host, all nine connects at once: nine distinct
            // addresses (claimed in etcd transactions), none the gateway.
            for (i, h) in c.hosts.iter().enumerate() {
                for k in 0..3 {
                    h.sandbox(&format!("c{}{k}", i + 1));
                }
            }
            std::thread::scope(|s| {
                for (i, h) in c.hosts.iter().enumerate() {
                    for k in 0..3 {
                        s.spawn(move || {
                            h.ok(&["network", "connect", "ov", &format!("c{}{k}", i + 1)])
                        });
                    }
                }
            });
            let mut all: Vec<(usize, String, String)> = Vec::new();
            for (i, h) in c.hosts.iter().enumerate() {
                all.push((i, format!("s{}", i + 1), ips[i].clone()));
                for k in 0..3 {
                    let sb = format!("c{}{k}", i + 1);
                    let ip = h.ip_of("ov", &sb);
                    all.push((i, sb, ip));
                }
            }
            let mut addrs: Vec<&String> = all.iter().map(|(_, _, ip)| ip).collect();
            addrs.sort();
            addrs.dedup();
            assert_eq!(addrs.len(), 12, "addresses given twice: {all:?}");
            assert!(!addrs.iter().any(|a| *a == "10.90.0.1"), "{all:?}");
            let kv = tapnet_tests::etcd_client(Duration::from_secs(2)).unwrap();
            assert_eq!(kv.range("endpoints/").unwrap().len(), 12);
            assert_eq!(kv.range("ipam/").unwrap().len(), 12);

            // Every sandbox is reachable from the first sandbox of every other host.
            for i in 0..3 {
                let src = format!("s{}", i + 1);
                for (j, sb, ip) in &all {
                    if *j != i {
                        eventually(15, &format!("{src} reaches {sb} ({ip})"), || {
                            c.hosts[i].ping(&src, ip, 1)
                        });
                    }
                }
            }
            // Five echoes each way between the hosts' first sandboxes, none lost.
            for i in 0..3 {
                let j = (i + 1) % 3;
                assert!(
                    c.hosts[i].ping(&format!("s{}", i + 1), &ips[j], 5),
                    "s{} -> s{}: echoes lost",
                    i + 1,
                    j + 1
                );
            }

            // 4 MiB across each pair of hosts, every byte checked (h1→h2, h2→h3, h3→h1).
            for i in 0..3 {
                let j = (i + 1) % 3;
                tcp_check(
                    &c.hosts[i],
                    &format!("s{}", i + 1),
                    &c.hosts[j],
                    &format!("s{}", j + 1),
                    &ips[j],
                    TCP_PORT + i as u16,
                );
            }
            // The tunnels carried it: each host sent and received datagrams.
            for h in &c.hosts {
                let t = tunnel(h);
                assert!(n(&t["Port"], "tx_datagrams") > 0, "{t}");
                assert!(n(&t["Port"], "rx_datagrams") > 0, "{t}");
            }
        },
    );
}

/// Python: receive one UDP datagram on `port` (joining `group` on `local` first if
/// given); print `<payload> <sender address>`.
fn receiver(port: u16, group: Option<(&str, &str)>) -> String {
    let join = match group {
        Some((g, local)) => format!(
            "s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, \
             struct.pack('4s4s', socket.inet_aton('{g}'), socket.inet_aton('{local}')))"
        ),
        None => String::new(),
    };
    format!(
        r#"
import socket, struct
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("", {port}))
{join}
s.settimeout(20)
d, a = s.recvfrom(2048)
print(d.decode(), a[0])
"#
    )
}

/// Python: send `payload` to `dst:port` every 0.2 s for 10 s (broadcast allowed,
/// multicast with TTL 4 out of `local`), so receivers started at about the same time
/// get one.
fn sender(dst: &str, port: u16, local: &str, payload: &str) -> String {
    format!(
        r#"
import socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 4)
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("{local}"))
for _ in range(50):
    s.sendto(b"{payload}", ("{dst}", {port}))
    time.sleep(0.2)
"#
    )
}

/// Python: an ARP request from `eth0` for `target`; prints the MAC of the first reply
/// (exit 1 after 1 s without one).
fn arp_probe(target: &str) -> String {
    format!(
        r#"
import socket, struct, sys, time, fcntl
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806))
s.bind(("eth0", 0))
mac = s.getsockname()[4]
ip = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", b"eth0"))[20:24]
tip = socket.inet_aton("{target}")
arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, mac, ip, b"\0" * 6, tip)
s.send(b"\xff" * 6 + mac + b"\x08\x06" + arp)
s.settimeout(0.2)
end = time.time() + 1
while time.time() < end:
    try:
        f = s.recv(2048)
    except socket.timeout:
        continue
    if len(f) >= 42 and f[12:14] == b"\x08\x06" and f[20:22] == b"\x00\x02" and f[28:32] == tip:
        print(":".join("%02x" % b for b in f[22:28]))
        sys.exit(0)
sys.exit(1)
"#
    )
}

/// The MAC of `sandbox` on `ov`, from sandbox inspect.
fn mac_of(h: &Env, sandbox: &str) -> String {
    let v = h.get(&format!("/sandboxes/{sandbox}"));
    v["Endpoints"]["ov"]["MacAddress"]
        .as_str()
        .unwrap_or_else(|| panic!("no MAC of {sandbox}: {v}"))
        .to_lowercase()
}

#[test]
fn three_hosts_broadcast_arp_and_multicast() {
    in_namespace("three_hosts_broadcast_arp_and_multicast", |env| {
        let (c, ips) = three_hosts(env);
        all_reach(&c, &ips);

        // ARP across hosts: s1 asks for s2's and s3's addresses and gets their MACs.
        for j in 1..3 {
            let out = c.hosts[0].python("s1", &arp_probe(&ips[j]));
            assert!(
                out.status.success(),
                "no ARP reply for {}: {}",
                ips[j],
                String::from_utf8_lossy(&out.stderr)
            );
            let got = String::from_utf8_lossy(&out.stdout).trim().to_string();
            assert_eq!(got, mac_of(&c.hosts[j], &format!("s{}", j + 1)));
        }

        // A broadcast datagram from s1 reaches s2 and s3 (the flood list of the tunnel),
        // then an IPv4 multicast datagram to 239.1.2.3 reaches the members on h2 and h3.
        for (dst, port, multicast) in [("10.90.0.255", 6001, false), ("239.1.2.3", 6002, true)] {
            let payload = format!("hello-{port}");
            let got = std::thread::scope(|s| {
                let rx: Vec<_> = (1..3)
                    .map(|j| {
                        let h = &c.hosts[j];
                        let code = receiver(port, multicast.then_some((dst, ips[j].as_str())));
                        let sb = format!("s{}", j + 1);
                        s.spawn(move || h.python(&sb, &code))
                    })
                    .collect();
                std::thread::sleep(Duration::from_millis(500));
                let tx = c.hosts[0].python("s1", &sender(dst, port, &ips[0], &payload));
                assert!(
                    tx.status.success(),
                    "sender: {}",
                    String::from_utf8_lossy(&tx.stderr)
                );
                rx.into_iter()
                    .map(|t| t.join().unwrap())
                    .collect::<Vec<_>>()
            });
            for (k, out) in got.iter().enumerate() {
                assert!(
                    out.status.success(),
                    "s{} got nothing to {dst}: {}",
                    k + 2,
                    String::from_utf8_lossy(&out.stderr)
                );
                assert_eq!(
                    String::from_utf8_lossy(&out.stdout).trim(),
                    format!("{payload} {}", ips[0]),
                    "s{} to {dst}",
                    k + 2
                );
            }
        }
        let t = tunnel(&c.hosts[0]);
        assert!(n(&t["Port"], "tx_flooded") > 0, "{t}");
    });
}

#[test]
fn three_hosts_ping_and_tcp_by_name() {
    in_namespace("three_hosts_ping_and_tcp_by_name", |env| {
        let (c, ips) = three_hosts(env);
        all_reach(&c, &ips);
        for i in 0..3 {
            let j = (i + 1) % 3;
            let (src, dst) = (format!("s{}", i + 1), format!("s{}", j + 1));
            // Ping by name (the embedded DNS of i's host answers j's name).
            let out = c.hosts[i].exec(&src, &["ping", "-c", "2", "-W", "2", &dst]);
            assert!(
                out.status.success(),
                "ping {dst} from {src}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                String::from_utf8_lossy(&out.stdout).contains(&ips[j]),
                "{dst} resolved elsewhere: {}",
                String::from_utf8_lossy(&out.stdout)
            );
            // TCP by name: 4 MiB from a Python client that resolves the name.
            let port = TCP_PORT + 10 + i as u16;
            let _sink = tcp_server(
                &c.hosts[j].sandbox_ns(&dst),
                &format!("{}:{port}", ips[j]),
                checking_sink,
            );
            let code = format!(
                r#"
import socket
s = socket.create_connection(("{dst}", {port}), timeout=10)
n = {TCP_BYTES}
block = bytes(i % 251 for i in range(251 * 261))
off = 0
while off < n:
    k = min(len(block) - off % 251, n - off)
    s.sendall(block[off % 251:off % 251 + k])
    off += k
s.shutdown(socket.SHUT_WR)
reply = b""
while True:
    r = s.recv(100)
    if not r:
        break
    reply += r
print(reply.decode())
"#
            );
            let out = c.hosts[i].python(&src, &code);
            assert!(
                out.status.success(),
                "TCP {src} -> {dst}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(
                String::from_utf8_lossy(&out.stdout).trim(),
                format!("{TCP_BYTES} {TCP_BYTES}")
            );
        }
    });
}

#[test]
fn a_killed_host_leaves_the_others_within_the_ttl() {
    in_namespace("a_killed_host_leaves_the_others_within_the_ttl", |env| {
        let (mut c, ips) = three_hosts(env);
        all_reach(&c, &ips);
        let kv = tapnet_tests::etcd_client(Duration::from_secs(2)).unwrap();
        assert_eq!(kv.range("endpoints/").unwrap().len(), 3);
        // While h3 is alive its address is answered (ARP) on h1 and h2.
        for i in 0..2 {
            let out = c.hosts[i].python(&format!("s{}", i + 1), &arp_probe(&ips[2]));
            assert!(out.status.success(), "h{} has no neighbour s3", i + 1);
        }

        c.kill_host(2);
        let t0 = Instant::now();
        // Its records go with its lease (under load a 2 s lease can expire and be
        // granted again before the kill, leaving the node record and the endpoint record
        // on different leases for a moment: wait for both, not for one then the other)...
        eventually(15, "h3's endpoint and node records expired", || {
            kv.range("endpoints/").unwrap().len() == 2
                && kv.range("nodes/192.0.2.3").unwrap().is_empty()
        });
        // ...and h1 and h2 forget it: no host answers s3's address any more (the tunnel's
        // neighbour table, which answered it locally while s3 was known, dropped it).
        for i in 0..2 {
            let sb = format!("s{}", i + 1);
            eventually(15, &format!("h{} forgot s3", i + 1), || {
                !c.hosts[i].python(&sb, &arp_probe(&ips[2])).status.success()
            });
        }
        eprintln!(
            "h3 forgotten {:?} after kill -9 (TTL {TTL} s)",
            t0.elapsed()
        );
        // The network goes on between the survivors, and h3's address is free again:
        // a new sandbox on h1 gets the lowest free address, which is s3's.
        assert!(c.hosts[0].ping("s1", &ips[1], 2));
        assert!(c.hosts[1].ping("s2", &ips[0], 2));
        c.hosts[0].sandbox("n1");
        let ip = c.hosts[0].connect("ov", "n1");
        assert_eq!(ip, ips[2], "the freed address is reused ({ips:?})");
        eventually(15, "s2 reaches n1", || c.hosts[1].ping("s2", &ip, 1));
    });
}

#[test]
fn a_daemon_restart_keeps_a_cross_host_tcp_stream() {
    in_namespace("a_daemon_restart_keeps_a_cross_host_tcp_stream", |env| {
        let (mut c, ips) = three_hosts(env);
        all_reach(&c, &ips);
        // A stream s1 (h1) → s2 (h2) runs while h2's daemon, then h1's, stops (SIGTERM)
        // and starts again (live restore): every byte arrives, in order.
        let _sink = tcp_server(
            &c.hosts[1].sandbox_ns("s2"),
            &format!("{}:{TCP_PORT}", ips[1]),
            checking_sink,
        );
        let mut s = connect_in(
            &c.hosts[0].sandbox_ns("s1"),
            &format!("{}:{TCP_PORT}", ips[1]),
            Duration::from_secs(10),
        )
        .expect("connect s1 -> s2");
        let stop = AtomicBool::new(false);
        let sent = std::thread::scope(|sc| {
            let writer = sc.spawn(|| {
                let mut off = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    send_pattern(&mut s, off, off + (64 << 10));
                    off += 64 << 10;
                    std::thread::sleep(Duration::from_millis(5));
                }
                off
            });
            std::thread::sleep(Duration::from_millis(500));
            for i in [1, 0] {
                c.hosts[i].stop_daemon();
                std::thread::sleep(Duration::from_millis(500));
                c.start(i);
                std::thread::sleep(Duration::from_millis(1000));
            }
            stop.store(true, Ordering::SeqCst);
            writer.join().unwrap()
        });
        let (total, good) = finish(s);
        assert!(sent > 0);
        assert_eq!((total, good), (sent, sent), "bytes read, bytes right");
        eprintln!("{sent} bytes across two daemon restarts");
        // Still one endpoint each in the store, under the restarted nodes' leases.
        let kv = tapnet_tests::etcd_client(Duration::from_secs(2)).unwrap();
        std::thread::sleep(Duration::from_secs(3));
        assert_eq!(kv.range("endpoints/").unwrap().len(), 3);
        all_reach(&c, &ips);
    });
}

#[test]
fn a_short_partition_keeps_a_cross_host_tcp_stream() {
    in_namespace("a_short_partition_keeps_a_cross_host_tcp_stream", |env| {
        let (c, ips) = three_hosts(env);
        all_reach(&c, &ips);
        // A stream s1 (h1) → s3 (h3) runs while h3 is cut off the underlay for about a
        // second (shorter than the TTL: its lease survives): nothing crosses during the
        // cut, and afterwards every byte arrives, in order.
        let _sink = tcp_server(
            &c.hosts[2].sandbox_ns("s3"),
            &format!("{}:{TCP_PORT}", ips[2]),
            checking_sink,
        );
        let mut s = connect_in(
            &c.hosts[0].sandbox_ns("s1"),
            &format!("{}:{TCP_PORT}", ips[2]),
            Duration::from_secs(10),
        )
        .expect("connect s1 -> s3");
        let stop = AtomicBool::new(false);
        let sent = std::thread::scope(|sc| {
            let writer = sc.spawn(|| {
                let mut off = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    send_pattern(&mut s, off, off + (64 << 10));
                    off += 64 << 10;
                    std::thread::sleep(Duration::from_millis(5));
                }
                off
            });
            std::thread::sleep(Duration::from_millis(500));
            c.set_link(2, false);
            let leaked = c.hosts[1]
                .exec("s2", &["ping", "-n", "-q", "-c", "1", "-W", "1", &ips[2]])
                .status
                .success();
            c.set_link(2, true);
            assert!(!leaked, "the partition leaks");
            std::thread::sleep(Duration::from_millis(1500));
            stop.store(true, Ordering::SeqCst);
            writer.join().unwrap()
        });
        let (total, good) = finish(s);
        assert_eq!((total, good), (sent, sent), "bytes read, bytes right");
        all_reach(&c, &ips);
    });
}

#[test]
fn a_partition_longer_than_the_ttl_heals() {
    in_namespace("a_partition_longer_than_the_ttl_heals", |env| {
        let (c, ips) = three_hosts(env);
        all_reach(&c, &ips);
        // Cut h3 off the underlay for longer than the TTL: its records expire and the
        // others forget it; nothing crosses meanwhile.
        c.set_link(2, false);
        let kv = tapnet_tests::etcd_client(Duration::from_secs(2)).unwrap();
        eventually(15, "h3's records expired", || {
            kv.range("endpoints/").unwrap().len() == 2
        });
        assert!(!c.hosts[0].ping("s1", &ips[2], 1), "the partition leaks");
        assert!(!c.hosts[2].ping("s3", &ips[1], 1), "the partition leaks");
        // Between h1 and h2 it goes on.
        assert!(c.hosts[0].ping("s1", &ips[1], 2));
        // Healed: h3 registers again, re-records its endpoint, traffic resumes both ways.
        c.set_link(2, true);
        let took = eventually(30, "h3's endpoint recorded again", || {
            kv.range("endpoints/").unwrap().len() == 3
        });
        eprintln!("h3 re-recorded {took:?} after the link came back");
        all_reach(&c, &ips);
        tcp_check(&c.hosts[2], "s3", &c.hosts[0], "s1", &ips[0], TCP_PORT);
    });
}

#[test]
fn malformed_vxlan_datagrams_are_counted_and_dropped() {
    in_namespace("malformed_vxlan_datagrams_are_counted_and_dropped", |env| {
        let (c, ips) = three_hosts(env);
        all_reach(&c, &ips);
        let before = tunnel(&c.hosts[0]);
        let vni = before["Vni"].as_u64().unwrap() as u32;
        assert!(vni > 0, "{before}");
        let v = vni.to_be_bytes();
        // An inner frame: broadcast ARP-looking Ethernet, 60 bytes.
        let mut frame = vec![0xffu8; 6];
        frame.extend_from_slice(&[0x02, 0x42, 0x0a, 0x5a, 0x00, 0x99, 0x08, 0x06]);
        frame.resize(60, 0);
        let header = |flags: u8, vni: [u8; 4]| vec![flags, 0, 0, 0, vni[1], vni[2], vni[3], 0];
        let mut bad_flags = header(0x00, v);
        bad_flags.extend_from_slice(&frame);
        let mut unknown_vni = header(0x08, 0x00ab_cdefu32.to_be_bytes());
        unknown_vni.extend_from_slice(&frame);
        let mut cut = header(0x08, v);
        cut.extend_from_slice(&frame[..5]);
        let garbage: Vec<u8> = (0..200u32).map(|i| (i * 37 % 256) as u8 & 0xf7).collect();
        let datagrams: Vec<(&str, Vec<u8>)> = vec![
            ("short", vec![0x08, 0, 0]),
            ("bad flags", bad_flags),
            ("garbage", garbage),
            ("unknown vni", unknown_vni),
            ("inner frame cut", cut),
            ("empty", Vec::new()),
        ];
        // Sent from the underlay (the test's namespace, 192.0.2.254) to h1's data port.
        let sock = std::net::UdpSocket::bind("192.0.2.254:0").unwrap();
        for (_, d) in &datagrams {
            sock.send_to(d, "192.0.2.1:4789").unwrap();
        }
        let delta = |after: &Value, part: &str, k: &str| n(&after[part], k) - n(&before[part], k);
        let mut after = Value::Null;
        eventually(10, "the malformed datagrams are counted", || {
            after = tunnel(&c.hosts[0]);
            delta(&after, "Socket", "malformed")
                + delta(&after, "Socket", "unknown_vni")
                + delta(&after, "Port", "rx_malformed")
                >= 6
        });
        // Short, empty, bad flags, garbage and a cut inner frame: dropped by the socket's
        // dispatcher (it decapsulates before it reads the VNI); a VNI nobody has: the
        // dispatcher too. None reached the network's port.
        assert_eq!(delta(&after, "Socket", "malformed"), 5, "{before}\n{after}");
        assert_eq!(
            delta(&after, "Socket", "unknown_vni"),
            1,
            "{before}\n{after}"
        );
        assert_eq!(
            delta(&after, "Port", "rx_malformed"),
            0,
            "{before}\n{after}"
        );
        // Nothing of it reached a sandbox: the switch learned no MAC from it.
        let fdb = c.hosts[0].get("/networks/ov/fdb");
        assert!(
            !fdb.to_string().contains("02:42:0a:5a:00:99"),
            "a malformed frame was switched: {fdb}"
        );
        // The daemon is fine and traffic flows.
        assert!(c.hosts[1].ping("s2", &ips[0], 3));
        tcp_check(&c.hosts[1], "s2", &c.hosts[0], "s1", &ips[0], TCP_PORT);
    });
}
