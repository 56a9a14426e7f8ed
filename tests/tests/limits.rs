//! Limits that hold under abuse (issue 10 item 1): a client that stalls mid-request
//! cannot hold an API connection, and it delays no other client.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;
use tapnet_tests::{in_namespace, n, Env, WAN_HOST_IP, WAN_IP};

/// Generous upper bound on waiting for the daemon to close a stalled connection (its
/// timeouts are 2 s here): not a timing assertion, a bound on a hung test.
const EOF_WAIT: Duration = Duration::from_secs(60);

/// Everything the daemon sends on `s` until it closes the connection; panics if it does
/// not close it within [`EOF_WAIT`].
fn read_until_closed(s: &mut UnixStream) -> String {
    s.set_read_timeout(Some(EOF_WAIT)).unwrap();
    let mut got = Vec::new();
    match s.read_to_end(&mut got) {
        Ok(_) => String::from_utf8_lossy(&got).into_owned(),
        Err(e) => panic!(
            "the daemon did not close a stalled connection within {EOF_WAIT:?}: {e} (got {:?})",
            String::from_utf8_lossy(&got)
        ),
    }
}

fn stalled(env: &Env, sent: &[u8]) -> UnixStream {
    let mut s = UnixStream::connect(&env.socket).unwrap();
    s.write_all(sent).unwrap();
    s
}

#[test]
fn stalled_http_clients_are_cut_off_and_block_nobody() {
    in_namespace("stalled_http_clients_are_cut_off_and_block_nobody", |env| {
        env.restart_fresh(&[
            "--http-header-timeout",
            "2s",
            "--http-body-timeout",
            "2s",
            "--log-level",
            "info,tapnet_engine::api::server=debug",
        ]);
        let before = env.get("/networks");

        // Half a request line; a request head without its end; a body cut short; nothing.
        let mut half_line = stalled(env, b"GET /netw");
        let mut half_head = stalled(env, b"GET /networks HTTP/1.1\r\nHost: x\r\n");
        let body = r#"{"Name":"stall","IPAM":{"Config":[{"Subnet":"10.77.0.0/24"}]}}"#;
        let head = format!(
            "POST /networks/create HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let mut half_body = stalled(env, format!("{head}{}", &body[..10]).as_bytes());
        let mut silent = stalled(env, b"");

        // Meanwhile the API answers other clients.
        for _ in 0..5 {
            let (code, v) = env.api("GET", "/networks", None);
            assert_eq!(code, 200, "{v}");
            assert_eq!(v, before);
        }

        // Each stalled connection is closed, without a success answer.
        for (what, s) in [
            ("half a request line", &mut half_line),
            ("half a request head", &mut half_head),
            ("an idle connection", &mut silent),
        ] {
            let got = read_until_closed(s);
            assert!(!got.contains(" 200 "), "{what}: answered {got:?}");
        }
        let got = read_until_closed(&mut half_body);
        let status = got.split(' ').nth(1).unwrap_or("");
        assert_eq!(status, "400", "a body cut short: answered {got:?}");
        // The half-sent create changed nothing, and the API still answers.
        assert_eq!(env.get("/networks"), before);
        let (code, _) = env.api("GET", "/_ping", None);
        assert_eq!(code, 200);
        // Each closed connection was logged.
        let log = env.daemon_log();
        assert!(
            log.matches("HTTP connection closed").count() >= 3,
            "daemon log:\n{log}"
        );
    });
}

/// Frames `x` sends from 10,000 made-up source MACs (more than a network's whole FDB) (broadcast, a local experimental
/// ethertype) on its eth0.
const MAC_FLOOD: &str = r#"
import socket
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("eth0", 0))
for i in range(10000):
    src = bytes([0x06, 0xee, 0, 0, i >> 8, i & 0xff])
    s.send(b"\xff" * 6 + src + b"\x88\xb5" + b"\x00" * 46)
print("sent")
"#;

#[test]
fn one_port_cannot_fill_the_fdb() {
    in_namespace("one_port_cannot_fill_the_fdb", |env| {
        env.ok(&[
            "network",
            "create",
            "--subnet",
            "10.86.0.0/24",
            "-o",
            "com.tapnet.port_security=false",
            "open",
        ]);
        env.sandbox("x");
        env.connect("open", "x");
        let out = env.python("x", MAC_FLOOD);
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("sent"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Joiners after the flood are learned (without the per-port limit the FDB would
        // be full), and unicast between them is not flooded to x.
        env.sandbox("b");
        env.sandbox("c");
        let ip_b = env.connect("open", "b");
        env.connect("open", "c");
        assert!(env.ping("c", &ip_b, 1));
        let tx_x = n(&env.port_stats("open", "x"), "TxPackets");
        assert!(env.ping("c", &ip_b, 10));
        // 20 unicast frames between b and c: none of them went to x.
        let tx_x_after = n(&env.port_stats("open", "x"), "TxPackets");
        assert!(
            tx_x_after - tx_x < 10,
            "unicast between b and c reached x: {tx_x} -> {tx_x_after}"
        );

        let stats = env.get("/networks/open/stats");
        let x = env.port_stats("open", "x");
        assert_eq!(n(&x, "FdbEntries"), 1024, "{x}");
        let hits = n(&x, "FdbLimitHits");
        assert!((10_000 - 1024..=10_000).contains(&hits), "{x}");
        assert_eq!(n(&stats, "FdbPortLimitHits"), hits, "{stats}");
        assert_eq!(n(&stats, "FdbLimitHits"), 0, "{stats}");
        for s in ["b", "c"] {
            let p = env.port_stats("open", s);
            assert!(n(&p, "FdbEntries") >= 1, "{s} not learned: {p}");
            assert_eq!(n(&p, "FdbLimitHits"), 0, "{p}");
        }
    });
}

// ---------------------------------------------------------------------------------------
// The descriptor budget (issue 10 item 1): every per-flow resource counts against a budget
// sized from the daemon's RLIMIT_NOFILE. These tests give the daemon a low limit
// (`--rlimit-nofile`, hidden) so that a flood reaches it cheaply.
// ---------------------------------------------------------------------------------------

/// The daemon's open descriptors (`/proc/PID/fd`).
fn daemon_fds(env: &Env) -> usize {
    let pid = env.daemon_pid().expect("daemon running");
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// The daemon's resident set (`VmRSS` of `/proc/PID/status`), in KiB.
fn daemon_rss_kib(env: &Env) -> u64 {
    daemon_status_kib(env, "VmRSS:")
}

/// A size field of the daemon's `/proc/PID/status` (`VmRSS:`, `VmHWM:`, ...), in KiB.
fn daemon_status_kib(env: &Env, field: &str) -> u64 {
    let pid = env.daemon_pid().expect("daemon running");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// Idle io_uring ports give their receive buffers back (`FrameIo::trim`): bulk TCP from
/// twelve sandboxes fills the receive buffers of their ports (up to 32 × 66 KiB each),
/// and once the traffic stops the daemon's resident set comes back to where it was
/// before; the ports then read again as before.
#[test]
fn idle_io_uring_ports_give_their_receive_buffers_back() {
    in_namespace(
        "idle_io_uring_ports_give_their_receive_buffers_back",
        |env| {
            env.restart_fresh(&["--tap-io", "uring"]);
            env.network("n1", "10.86.0.0/24");
            env.sandbox("srv");
            let srv = env.connect("n1", "srv");
            let clients: Vec<String> = (0..12).map(|i| format!("c{i}")).collect();
            for c in &clients {
                env.sandbox(c);
                env.connect("n1", c);
                assert!(env.ping(c, &srv, 2), "{c} cannot reach srv");
            }
            // What the set-up's frames touched is given back too: a tick or two of quiet.
            std::thread::sleep(Duration::from_millis(2500));
            let before = daemon_rss_kib(env);
            for (i, c) in clients.iter().enumerate() {
                tapnet_tests::tcp_bytes(env, c, "srv", &srv, 6000 + i as u16, 4 << 20);
            }
            let peak = daemon_status_kib(env, "VmHWM:");
            assert!(
            peak >= before + 12 * 1024,
            "the bulk traffic did not fill the ports' buffers (rss {before} KiB, peak {peak} KiB): \
             the test measures nothing"
        );
            let mut now = 0;
            wait_until(
                "idle io_uring ports kept their receive buffers",
                Duration::from_secs(15),
                || {
                    now = daemon_rss_kib(env);
                    now <= before + 6 * 1024
                },
            );
            eprintln!("rss before {before} KiB, peak {peak} KiB, after idle {now} KiB");
            // The trimmed ports read on: the reads were re-armed.
            tapnet_tests::tcp_bytes(env, "c0", "srv", &srv, 6100, 1 << 20);
            assert!(
                env.ping("c11", &srv, 2),
                "c11 cannot reach srv after the trim"
            );
        },
    );
}

/// Wait (at most `within`) until `cond` holds; panics with `what` otherwise. A bound on a
/// hung test, not a timing assertion.
fn wait_until(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + within;
    while !cond() {
        assert!(std::time::Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A low descriptor limit for the daemon: 1,024 → a reserve of 256, 64 API connections
/// per HTTP socket, a flow budget of 640 (`tapnet_nat::budget::split`).
const LOW_NOFILE: &str = "1024";
const LOW_NOFILE_FLOWS: u64 = 640;

/// Run `f` repeatedly on this thread while `flood` runs on another; returns the flood's
/// result and the slowest `f` seen.
fn while_flooding<T: Send>(
    flood: impl FnOnce() -> T + Send,
    mut f: impl FnMut(usize),
) -> (T, Duration, usize) {
    std::thread::scope(|s| {
        let h = s.spawn(flood);
        let mut slowest = Duration::ZERO;
        let mut i = 0;
        while !h.is_finished() {
            let t0 = std::time::Instant::now();
            f(i);
            slowest = slowest.max(t0.elapsed());
            i += 1;
        }
        (h.join().unwrap(), slowest, i)
    })
}

#[test]
fn udp_flood_from_five_sandboxes_is_refused_and_the_api_keeps_answering() {
    in_namespace(
        "udp_flood_from_five_sandboxes_is_refused_and_the_api_keeps_answering",
        |env| {
            let _wan = env.wan();
            env.restart_fresh(&["--rlimit-nofile", LOW_NOFILE]);
            assert!(
                env.daemon_log()
                    .contains("file descriptors: RLIMIT_NOFILE raised and shared"),
                "{}",
                env.daemon_log()
            );
            env.network("flood", "10.87.0.0/24");
            let names: Vec<String> = (0..5).map(|i| format!("f{i}")).collect();
            for s in &names {
                env.sandbox(s);
                env.connect("flood", s);
            }
            // Each sandbox sends one datagram to each of 4,096 ports of the wan: 20,480
            // flows, each within the per-endpoint limit (4,096), far past the flow budget.
            let flood = format!(
                r#"
import socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for p in range(4096):
    s.sendto(b"x", ("{WAN_IP}", 10000 + p))
    if p % 256 == 255:
        time.sleep(0.01)
print("sent")
"#
            );
            let env_ref = &*env;
            let mut slowest_get = Duration::ZERO;
            let (outs, slowest, rounds) = while_flooding(
                || {
                    std::thread::scope(|s| {
                        let hs: Vec<_> = names
                            .iter()
                            .map(|n| s.spawn(|| env_ref.python(n, &flood)))
                            .collect();
                        hs.into_iter()
                            .map(|h| h.join().unwrap())
                            .collect::<Vec<_>>()
                    })
                },
                |i| {
                    let t0 = std::time::Instant::now();
                    let (code, v) = env_ref.api("GET", "/networks", None);
                    slowest_get = slowest_get.max(t0.elapsed());
                    assert_eq!(code, 200, "{v}");
                    env_ref.ok(&["network", "ls"]);
                    env_ref.ok(&["sandbox", "create", &format!("during{i}")]);
                },
            );
            for o in &outs {
                assert!(
                    String::from_utf8_lossy(&o.stdout).contains("sent"),
                    "{}",
                    String::from_utf8_lossy(&o.stderr)
                );
            }
            eprintln!(
                "during the flood: {rounds} rounds of GET /networks + network ls + sandbox create, \
                 slowest round {slowest:?}, slowest GET /networks {slowest_get:?}"
            );
            // After it too.
            env.ok(&["network", "ls"]);
            env.ok(&["sandbox", "create", "after"]);
            env.connect("flood", "after");
            let g = env.gateway_stats("flood");
            assert!(n(&g["Drops"], "fd_budget") >= 1, "{g}");
            assert!(n(&g, "FlowLimitHits") >= n(&g["Drops"], "fd_budget"), "{g}");
            let active = n(&g["Flows"]["udp"], "Active");
            assert!(
                (LOW_NOFILE_FLOWS / 2..=LOW_NOFILE_FLOWS).contains(&active),
                "{active} UDP flows open with a budget of {LOW_NOFILE_FLOWS}: {g}"
            );
            let log = env.daemon_log();
            assert!(!log.contains("Too many open files"), "{log}");
            let logged = log.matches("descriptor budget for flows is spent").count();
            assert!(
                (1..=5).contains(&logged),
                "the budget's refusal was logged {logged} times"
            );
        },
    );
}

#[test]
fn dns_forwards_to_a_silent_upstream_are_bounded_and_given_back() {
    in_namespace(
        "dns_forwards_to_a_silent_upstream_are_bounded_and_given_back",
        |env| {
            let wan = env.wan();
            // An upstream that takes queries and never answers (nor sends port unreachable).
            let silent = wan
                .run(|| std::net::UdpSocket::bind(format!("{WAN_IP}:53")))
                .unwrap();
            env.restart_fresh(&[
                "--rlimit-nofile",
                LOW_NOFILE,
                "--dns",
                WAN_IP,
                "--max-dns-pending",
                "64",
            ]);
            env.network("dnsnet", "10.88.0.0/24");
            env.sandbox("q");
            env.connect("dnsnet", "q");
            let gw = env.gateway_of("dnsnet");
            let before = daemon_fds(env);
            let flood = format!(
                r#"
import socket, struct, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(3000):
    q = struct.pack(">HHHHHH", i & 0xffff, 0x0100, 1, 0, 0, 0)
    for label in ("n%d" % i, "example", "org"):
        q += bytes([len(label)]) + label.encode()
    q += b"\x00" + struct.pack(">HH", 1, 1)
    s.sendto(q, ("{gw}", 53))
    if i % 100 == 99:
        time.sleep(0.005)
print("sent")
"#
            );
            let env_ref = &*env;
            let mut most = before;
            let (out, slowest, rounds) = while_flooding(
                || env_ref.python("q", &flood),
                |_| {
                    env_ref.ok(&["network", "ls"]);
                    most = most.max(daemon_fds(env_ref));
                },
            );
            assert!(
                String::from_utf8_lossy(&out.stdout).contains("sent"),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            eprintln!(
            "DNS flood: {rounds} network ls, slowest {slowest:?}; fds {before} before, at most {most} seen"
        );
            let g = env.gateway_stats("dnsnet");
            assert!(n(&g["Drops"], "dns_limit") >= 1, "{g}");
            assert!(n(&g, "DnsForwarded") >= 64, "{g}");
            // At most 64 forwards (one socket each) were open at any time.
            assert!(
                most <= before + 64 + 16,
                "{most} descriptors open during the flood ({before} before)"
            );
            // The forwards time out (2 s): their sockets go.
            wait_until(
                "the DNS forwards' sockets were not closed",
                Duration::from_secs(30),
                || daemon_fds(env) <= before + 2,
            );
            env.ok(&["network", "ls"]);
            let log = env.daemon_log();
            assert!(!log.contains("Too many open files"), "{log}");
            assert!(log.contains("too many DNS queries wait"), "{log}");
            drop(silent);
        },
    );
}

/// An echo server on port 80 of `sandbox`.
fn echo_in_sandbox(env: &Env, sandbox: &str) -> tapnet_tests::Server {
    tapnet_tests::tcp_server(&env.sandbox_ns(sandbox), "0.0.0.0:80", |mut s| {
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(k) => {
                    if s.write_all(&buf[..k]).is_err() {
                        break;
                    }
                }
            }
        }
    })
}

/// `count` connections from the wan to the daemon host's `port`.
fn connect_many(wan: &tapnet_tests::Wan, port: u16, count: usize) -> Vec<std::net::TcpStream> {
    let addr: std::net::SocketAddr = format!("{WAN_HOST_IP}:{port}").parse().unwrap();
    wan.run(|| {
        (0..count)
            .map(|_| {
                let s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(10))
                    .expect("connect to the published port");
                s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
                s
            })
            .collect()
    })
}

/// Write `len` bytes tagged with `tag` on each connection, then read them all back.
fn echo_all(conns: &mut [std::net::TcpStream], len: usize) {
    let data = |tag: usize| -> Vec<u8> { (0..len).map(|i| (i * 7 + tag) as u8).collect() };
    for (tag, c) in conns.iter_mut().enumerate() {
        c.write_all(&data(tag))
            .expect("write through the published port");
    }
    for (tag, c) in conns.iter_mut().enumerate() {
        let mut got = vec![0u8; len];
        c.read_exact(&mut got)
            .expect("echo through the published port");
        assert!(got == data(tag), "connection {tag}: echoed bytes differ");
    }
}

#[test]
fn published_port_connection_cap() {
    in_namespace("published_port_connection_cap", |env| {
        let wan = env.wan();
        env.restart_fresh(&["--max-published-connections", "32"]);
        env.network("pub", "10.89.0.0/24");
        env.ok(&["sandbox", "create", "-p", "8080:80", "web"]);
        env.connect("pub", "web");
        let _echo = echo_in_sandbox(env, "web");
        let mut first = connect_many(&wan, 8080, 32);
        echo_all(&mut first, 4096);
        // 16 more while the 32 are open: each is closed at once (the kernel accepted it,
        // the gateway resets it).
        // A reset can come before `connect` returns (the socket's error is then
        // ECONNRESET): that one was refused too.
        let addr: std::net::SocketAddr = format!("{WAN_HOST_IP}:8080").parse().unwrap();
        let extra: Vec<std::net::TcpStream> = wan.run(|| {
            (0..16)
                .filter_map(|_| {
                    match std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(10)) {
                        Ok(s) => {
                            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                            Some(s)
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => None,
                        Err(e) => panic!("connect to the published port: {e}"),
                    }
                })
                .collect()
        });
        for (i, mut c) in extra.into_iter().enumerate() {
            let _ = c.write_all(b"hello?");
            let mut b = [0u8; 16];
            match c.read(&mut b) {
                Ok(0) => {}
                Err(e)
                    if e.kind() != std::io::ErrorKind::WouldBlock
                        && e.kind() != std::io::ErrorKind::TimedOut => {}
                other => panic!("connection {} past the cap was served: {other:?}", 32 + i),
            }
        }
        // The first 32 still work, end to end.
        echo_all(&mut first, 1 << 16);
        let g = env.gateway_stats("pub");
        assert_eq!(n(&g["Drops"], "published_conn_limit"), 16, "{g}");
        assert_eq!(n(&g["Flows"]["tcp"], "Active"), 32, "{g}");
        assert!(env
            .daemon_log()
            .contains("published port refuses new connections"));
        drop(first);
        wait_until("the flows did not end", Duration::from_secs(30), || {
            n(&env.gateway_stats("pub")["Flows"]["tcp"], "Active") == 0
        });
        // Room again.
        let mut again = connect_many(&wan, 8080, 32);
        echo_all(&mut again, 4096);
        assert_eq!(
            n(&env.gateway_stats("pub")["Drops"], "published_conn_limit"),
            16
        );
    });
}

/// Waves of short connections through a published port: the memory they took goes back
/// to the system once they end (issue 10: waves left the RSS at 2.4 GB with no flow open).
#[test]
fn published_port_waves_give_memory_back() {
    in_namespace("published_port_waves_give_memory_back", |env| {
        let wan = env.wan();
        env.restart_fresh(&[]);
        env.network("pub", "10.90.0.0/24");
        env.ok(&["sandbox", "create", "-p", "8080:80", "web"]);
        env.connect("pub", "web");
        let _echo = echo_in_sandbox(env, "web");
        let mut warm = connect_many(&wan, 8080, 4);
        echo_all(&mut warm, 4096);
        drop(warm);
        let start = daemon_rss_kib(env);
        let mut peak = start;
        for _ in 0..6 {
            let mut wave = connect_many(&wan, 8080, 400);
            echo_all(&mut wave, 1 << 16);
            peak = peak.max(daemon_rss_kib(env));
            drop(wave);
            wait_until(
                "a wave's flows did not end",
                Duration::from_secs(60),
                || n(&env.gateway_stats("pub")["Flows"]["tcp"], "Active") == 0,
            );
        }
        // The gateway gives memory back within a second or two of its last flow ending.
        let bound = start + 48 * 1024;
        let mut end = daemon_rss_kib(env);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while end > bound && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(250));
            end = daemon_rss_kib(env);
        }
        eprintln!(
            "RSS: {start} KiB at start, {peak} KiB at most during the waves, {end} KiB after"
        );
        assert!(
            end <= bound,
            "RSS {end} KiB after the waves ended, {start} KiB before (peak {peak} KiB)"
        );
    });
}

#[test]
fn idle_api_connections_are_shed_for_new_clients() {
    in_namespace("idle_api_connections_are_shed_for_new_clients", |env| {
        // Idle connections are only closed by the cap here: the header timeout is long.
        env.restart_fresh(&[
            "--max-api-connections",
            "16",
            "--http-header-timeout",
            "300s",
        ]);
        let before = daemon_fds(env);
        let mut idle: Vec<UnixStream> = (0..64)
            .map(|_| UnixStream::connect(&env.socket).unwrap())
            .collect();
        // A fresh client is answered.
        let (code, v) = env.api("GET", "/networks", None);
        assert_eq!(code, 200, "{v}");
        env.ok(&["network", "ls"]);
        // The oldest idle connections were closed to make room (the first one for sure).
        let mut b = [0u8; 1];
        idle[0]
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        assert_eq!(
            idle[0]
                .read(&mut b)
                .expect("the oldest idle connection was not closed"),
            0
        );
        // Never more than the cap open at once (and the listener, store, taps...).
        let open = daemon_fds(env);
        assert!(open <= before + 16, "{open} fds open, {before} before");
        let log = env.daemon_log();
        assert!(log.contains("API connection limit reached"), "{log}");
        // The newest idle connection is still served when it speaks.
        let last = idle.last_mut().unwrap();
        last.write_all(b"GET /_ping HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        last.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut got = [0u8; 12];
        last.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"HTTP/1.1 200");
    });
}
