//! `tapnetd --tap-io`: endpoint taps on io_uring and on one read/write per frame carry
//! ping and 1 MiB of TCP (checked byte by byte) between two sandboxes, also after a
//! daemon restart (taps re-opened); a bad value is refused by name. `--worker-nice` sets
//! the datapath workers' nice value and nothing else's; `--worker-nice auto` (the default)
//! steps a busy worker back and brings it back when CPU-bound threads starve it. A flood of UDP datagrams arrives
//! whole and in order, merged into super-frames (`--tap-udp-merge`) or not.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tapnet_tests::{in_namespace, in_namespace_as_root, Env};

fn traffic(env: &Env, ip_a: &str, ip_b: &str, port: u16) {
    assert!(env.ping("a", ip_b, 3), "a cannot ping b");
    assert!(env.ping("b", ip_a, 3), "b cannot ping a");
    tapnet_tests::tcp_bytes(env, "a", "b", ip_b, port, 1 << 20);
}

/// Network `n1` on `subnet` with sandboxes `a` and `b` on it, carrying [`traffic`] on
/// `port`; their addresses.
fn pair_with_traffic(env: &Env, subnet: &str, port: u16) -> (String, String) {
    env.network("n1", subnet);
    env.sandbox("a");
    env.sandbox("b");
    let ip_a = env.connect("n1", "a");
    let ip_b = env.connect("n1", "b");
    traffic(env, &ip_a, &ip_b, port);
    (ip_a, ip_b)
}

/// Remove what [`pair_with_traffic`] made.
fn remove_pair(env: &Env) {
    for s in ["a", "b"] {
        env.ok(&["sandbox", "rm", s]);
    }
    env.ok(&["network", "rm", "n1"]);
}

fn check_mode(env: &mut Env, mode: &str, log_says: &str, subnet: &str) {
    let path = if mode == "uring" { "uring" } else { "rw" };
    let port_path = format!("path=\"{path}\"");
    env.restart_fresh(&["--tap-io", mode]);
    assert!(
        env.daemon_log().contains(log_says),
        "--tap-io {mode}: the log does not say {log_says:?}:\n{}",
        env.daemon_log()
    );
    let info = env.get("/info");
    assert_eq!(info["TapnetTapIo"], mode, "{info}");
    assert_eq!(info["TapnetTapIoPath"], path, "{info}");
    let (ip_a, ip_b) = pair_with_traffic(env, subnet, 5001);
    let attached = |log: &str| {
        log.lines()
            .filter(|l| l.contains("tap port attached") && l.contains(&port_path))
            .count()
    };
    assert_eq!(attached(&env.daemon_log()), 2, "{}", env.daemon_log());
    // Daemon restart: the taps are re-opened and attached on the same path.
    env.stop_daemon();
    env.start_daemon_with(&["--tap-io", mode]);
    traffic(env, &ip_a, &ip_b, 5002);
    assert_eq!(
        attached(&env.daemon_log()),
        4,
        "both taps re-opened on {path}"
    );
    let stats = env.port_stats("n1", "b");
    assert!(
        tapnet_tests::n(&stats, "RxPackets") > 0,
        "no frames counted on b's port: {stats}"
    );
    // Disconnect: b's eth0 is gone when the call returns, and b connects again as eth0.
    env.ok(&["network", "disconnect", "n1", "b"]);
    let links = env.exec_ok("b", &["ip", "-o", "link", "show"]);
    assert!(
        !links.contains("eth0"),
        "--tap-io {mode}: eth0 stayed: {links}"
    );
    let ip_b = env.connect("n1", "b");
    let links = env.exec_ok("b", &["ip", "-o", "link", "show"]);
    assert!(links.contains("eth0"), "--tap-io {mode}: {links}");
    traffic(env, &ip_a, &ip_b, 5004);
    remove_pair(env);
}

#[test]
fn uring_and_rw_tap_io_carry_ping_and_tcp_across_a_restart() {
    in_namespace(
        "uring_and_rw_tap_io_carry_ping_and_tcp_across_a_restart",
        |env| {
            check_mode(env, "uring", "tap I/O: io_uring", "10.81.0.0/24");
            check_mode(
                env,
                "rw",
                "tap I/O: one read/write per frame",
                "10.82.0.0/24",
            );
        },
    );
}

/// The default, `auto`, where io_uring is refused (as under Docker's default seccomp
/// profile): the daemon says so once, takes one read/write per frame, and carries ping
/// and TCP; with `--tap-io uring` it refuses to start, by name.
#[test]
fn auto_falls_back_to_rw_where_io_uring_is_refused() {
    in_namespace("auto_falls_back_to_rw_where_io_uring_is_refused", |env| {
        env.stop_daemon();
        env.start_daemon_via(Some("deny_io_uring"), &[]);
        let log = env.daemon_log();
        assert!(
            log.contains("tap I/O: io_uring unavailable, one read/write per frame (--tap-io auto)"),
            "{log}"
        );
        let info = env.get("/info");
        assert_eq!(info["TapnetTapIo"], "auto", "{info}");
        assert_eq!(info["TapnetTapIoPath"], "rw", "{info}");
        pair_with_traffic(env, "10.84.0.0/24", 5003);
        let rw_ports = env
            .daemon_log()
            .lines()
            .filter(|l| l.contains("tap port attached") && l.contains("path=\"rw\""))
            .count();
        assert_eq!(rw_ports, 2, "{}", env.daemon_log());
        remove_pair(env);
        env.stop_daemon();
    });
    // `--tap-io uring` where io_uring is refused: the daemon does not start.
    let root = std::env::temp_dir().join(format!("tapnet-deny-uring-{}", std::process::id()));
    let out = run_refused(Some("deny_io_uring"), &["--tap-io", "uring"], &root);
    let _ = std::fs::remove_dir_all(&root);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started without io_uring: {err}");
    assert!(
        err.contains("--tap-io uring: io_uring is not available here"),
        "{err}"
    );
}

#[test]
fn bad_tap_io_value_is_refused_by_name() {
    let exe = std::env::current_exe().unwrap();
    let tapnetd: PathBuf = exe.parent().unwrap().parent().unwrap().join("tapnetd");
    let out = Command::new(tapnetd)
        .args(["--tap-io", "fast"])
        .output()
        .expect("run tapnetd");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--tap-io") && err.contains("auto, uring or rw"),
        "{err}"
    );
}

/// Nice value of every thread of process `pid`, by thread name (`/proc/PID/task/*/stat`:
/// the name in parentheses, then the 19th field is the nice value).
fn thread_nices(pid: u32) -> Vec<(String, i32)> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let Ok(stat) = std::fs::read_to_string(t.unwrap().path().join("stat")) else {
            continue;
        };
        let (open, close) = (stat.find('(').unwrap(), stat.rfind(')').unwrap());
        let name = stat[open + 1..close].to_string();
        let nice = stat[close + 2..]
            .split(' ')
            .nth(16)
            .unwrap()
            .parse()
            .unwrap();
        out.push((name, nice));
    }
    out
}

/// `--worker-nice N` sets the nice value of the datapath workers, and of nothing else in
/// the daemon; traffic flows as before. An out-of-range value is refused by name.
#[test]
fn worker_nice_applies_to_the_datapath_workers_only() {
    in_namespace("worker_nice_applies_to_the_datapath_workers_only", |env| {
        env.restart_fresh(&["--workers", "2", "--worker-nice", "7"]);
        let nices = thread_nices(env.daemon_pid().expect("daemon pid"));
        let workers: Vec<_> = nices
            .iter()
            .filter(|(n, _)| n.starts_with("tapnet-dp"))
            .collect();
        assert_eq!(workers.len(), 2, "{nices:?}");
        assert!(workers.iter().all(|(_, v)| *v == 7), "{nices:?}");
        let others: Vec<_> = nices
            .iter()
            .filter(|(n, _)| !n.starts_with("tapnet-dp"))
            .collect();
        // The daemon's other threads keep the nice value it was started with (ours).
        let ours = tapnet_sandbox::sched::thread_nice().unwrap();
        assert!(
            !others.is_empty() && others.iter().all(|(_, v)| *v == ours),
            "{nices:?}"
        );
        assert!(
            env.daemon_log().contains("datapath workers' nice value"),
            "{}",
            env.daemon_log()
        );
        let info = env.get("/info");
        assert_eq!(info["TapnetWorkerNice"], 7, "{info}");
        let text = env.ok(&["info"]);
        assert!(text.contains("2 workers at nice 7,"), "{text}");
        pair_with_traffic(env, "10.85.0.0/24", 5005);
        // /metrics shows each worker's nice value and the scheduler's account of it.
        let metrics = env.metrics_text();
        for w in ["tapnet-dp0", "tapnet-dp1"] {
            assert!(
                metrics.contains(&format!(
                    "tapnet_datapath_worker_nice{{worker=\"{w}\"}} 7\n"
                )),
                "{metrics}"
            );
        }
        let cpu: f64 = metrics
            .lines()
            .filter(|l| l.starts_with("tapnet_datapath_worker_cpu_seconds_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        assert!(
            cpu > 0.0,
            "the workers that carried the traffic ran: {metrics}"
        );
        remove_pair(env);
    });
    let exe = std::env::current_exe().unwrap();
    let tapnetd: PathBuf = exe.parent().unwrap().parent().unwrap().join("tapnetd");
    for bad in ["20", "-21", "low"] {
        let out = Command::new(&tapnetd)
            .args(["--worker-nice", bad])
            .output()
            .expect("run tapnetd");
        assert!(!out.status.success(), "--worker-nice {bad} accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--worker-nice"), "{bad}: {err}");
    }
}

/// A TCP stream from sandbox `from` to `to_ip:port` in sandbox `to`, sending as fast as
/// it can until [`Bulk::stop`], which checks that every byte sent arrived.
struct Bulk {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    sender: std::thread::JoinHandle<()>,
    receiver: std::thread::JoinHandle<u64>,
}

impl Bulk {
    fn start(env: &Env, from: &str, to: &str, to_ip: &str, port: u16) -> Bulk {
        use std::io::{Read, Write};
        let listener = env
            .sandbox_ns(to)
            .run(move || std::net::TcpListener::bind(("0.0.0.0", port)))
            .expect("enter the receiver's namespace")
            .expect("listen");
        let receiver = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().expect("accept");
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            let mut buf = vec![0u8; 1 << 16];
            let mut got = 0u64;
            loop {
                match s.read(&mut buf) {
                    Ok(0) => return got,
                    Ok(n) => got += n as u64,
                    Err(e) => panic!("receive: {e} after {got} bytes"),
                }
            }
        });
        let addr = format!("{to_ip}:{port}");
        let mut stream = env
            .sandbox_ns(from)
            .run(|| std::net::TcpStream::connect(&addr))
            .expect("enter the sender's namespace")
            .unwrap_or_else(|e| panic!("{from} cannot reach {addr}: {e}"));
        stream
            .set_write_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let (stop, sent) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
        );
        let (stop2, sent2) = (stop.clone(), sent.clone());
        let sender = std::thread::spawn(move || {
            let chunk = vec![0x5a_u8; 1 << 16];
            while !stop2.load(Ordering::Relaxed) {
                stream.write_all(&chunk).expect("send");
                sent2.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
        });
        Bulk {
            stop,
            sent,
            sender,
            receiver,
        }
    }

    /// Stop sending; every byte sent arrived. Returns the bytes moved.
    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.sender.join().expect("sender");
        let got = self.receiver.join().expect("receiver");
        let sent = self.sent.load(Ordering::Relaxed);
        assert_eq!(got, sent, "not every byte sent arrived");
        got
    }
}

/// The nice values of the daemon's datapath workers (`tapnet-dp*`).
fn worker_nices(pid: u32) -> Vec<i32> {
    thread_nices(pid)
        .into_iter()
        .filter(|(n, _)| n.starts_with("tapnet-dp"))
        .map(|(_, v)| v)
        .collect()
}

/// `tapnet_datapath_worker_nice_steps{step}` from `/metrics`.
fn nice_steps(env: &Env, step: &str) -> u64 {
    let key = format!("tapnet_datapath_worker_nice_steps_total{{step=\"{step}\"}} ");
    let text = env.metrics_text();
    text.lines()
        .find_map(|l| l.strip_prefix(&key)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {key} in /metrics:\n{text}"))
}

/// Poll `cond` every 100 ms until it holds or `limit` passes (a liveness bound, not a
/// speed requirement).
fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    cond()
}

/// `--worker-nice auto`, the default, as the real root (which may set a thread's nice back
/// down): a worker busy with a bulk stream steps back to 10 above the daemon's nice, and
/// CPU-bound threads beside it (one per CPU, in the daemon's scheduling group) make its
/// waits for a core long enough that it returns to the daemon's value. The step-back
/// thresholds are relaxed (`TAPNET_AUTO_NICE_YIELD_BELOW_US`, `_BUSY_PERMILLE`,
/// `_MIN_RUN_US`) so that the first half does not depend on how loaded the test machine
/// is; the return uses the built-in threshold. The
/// stream's bytes all arrive in both halves.
#[test]
fn worker_nice_auto_steps_back_while_busy_and_returns_when_starved() {
    in_namespace_as_root(
        "worker_nice_auto_steps_back_while_busy_and_returns_when_starved",
        |env| {
            std::env::set_var("TAPNET_AUTO_NICE_YIELD_BELOW_US", "1000000000");
            std::env::set_var("TAPNET_AUTO_NICE_BUSY_PERMILLE", "50");
            std::env::set_var("TAPNET_AUTO_NICE_MIN_RUN_US", "0");
            env.restart_fresh(&["--workers", "1"]);
            let info = env.get("/info");
            assert_eq!(info["TapnetWorkerNiceAuto"], "on", "{info}");
            let base = i32::try_from(info["TapnetWorkerNice"].as_i64().unwrap()).unwrap();
            assert_eq!(base, tapnet_sandbox::sched::thread_nice().unwrap());
            let text = env.ok(&["info"]);
            assert!(
                text.contains(&format!("1 workers at nice {base} (auto),")),
                "{text}"
            );
            assert!(
                env.daemon_log().contains("nice value: automatic"),
                "{}",
                env.daemon_log()
            );
            let pid = env.daemon_pid().expect("daemon pid");
            let (_, ip_b) = pair_with_traffic(env, "10.86.0.0/24", 5011);
            assert_eq!(
                nice_steps(env, "yield"),
                0,
                "no step back before the stream"
            );

            // Busy: the worker steps back.
            let stepped = base + 10;
            let flow = Bulk::start(env, "a", "b", &ip_b, 5012);
            let seen = eventually(Duration::from_secs(30), || {
                worker_nices(pid) == vec![stepped]
            });
            let metrics = env.metrics_text();
            let moved = flow.stop();
            assert!(seen, "the busy worker stayed at {:?}", worker_nices(pid));
            assert!(moved > 0);
            assert!(nice_steps(env, "yield") >= 1);
            assert!(
                metrics.contains(&format!(
                    "tapnet_datapath_worker_nice{{worker=\"tapnet-dp0\"}} {stepped}\n"
                )),
                "{metrics}"
            );

            // CPU-bound threads in the daemon's scheduling group: it returns to base.
            let spin = Arc::new(AtomicBool::new(true));
            let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
            let hogs: Vec<_> = (0..cpus)
                .map(|_| {
                    let spin = spin.clone();
                    std::thread::spawn(move || {
                        let mut x = 0u64;
                        while spin.load(Ordering::Relaxed) {
                            x = std::hint::black_box(x.wrapping_add(1));
                        }
                    })
                })
                .collect();
            let flow = Bulk::start(env, "a", "b", &ip_b, 5013);
            let back = eventually(Duration::from_secs(30), || {
                nice_steps(env, "back_waits") >= 1
            });
            let nices = worker_nices(pid);
            spin.store(false, Ordering::Relaxed);
            for h in hogs {
                h.join().unwrap();
            }
            flow.stop();
            assert!(back, "the starved worker did not return: {nices:?}");
            // Held at base after a return for long waits (5 s at first).
            assert_eq!(nices, vec![base], "right after its return");
            remove_pair(env);
        },
    );
}

/// `tapnet_datapath_frames_total` of network `net`, by shard, from `/metrics`.
fn shard_frames(env: &Env, net: &str) -> Vec<u64> {
    let text = env.metrics_text();
    let mut by_shard: Vec<(usize, u64)> = text
        .lines()
        .filter(|l| l.starts_with("tapnet_datapath_frames_total{"))
        .filter(|l| l.contains(&format!("network=\"{net}\"")))
        .map(|l| {
            let key = l.split("key=\"").nth(1).unwrap().split('"').next().unwrap();
            let value = l.rsplit(' ').next().unwrap();
            (key.parse().unwrap(), value.parse().unwrap())
        })
        .collect();
    by_shard.sort();
    by_shard.into_iter().map(|(_, v)| v).collect()
}

/// The `numtxqueues` of a sandbox's `eth0`: 1 for a single-queue tap, the kernel's
/// maximum (256) for a multi-queue one (the queues attached are the real ones).
fn tx_queues(env: &Env, sandbox: &str) -> String {
    let link = env.exec_ok(sandbox, &["ip", "-d", "link", "show", "eth0"]);
    link.split_whitespace()
        .skip_while(|w| *w != "numtxqueues")
        .nth(1)
        .unwrap_or_else(|| panic!("no numtxqueues in {link}"))
        .to_string()
}

/// 16 TCP connections of 256 KiB each, every byte checked: each is a new flow the kernel
/// hashes to one of the tap's queues.
fn flows(env: &Env, ip_b: &str, first_port: u16) {
    for i in 0..16 {
        tapnet_tests::tcp_bytes(env, "a", "b", ip_b, first_port + i, 256 << 10);
    }
}

/// Run [`flows`] and check that both of `n1`'s workers switched some of them. Each flow
/// stays on one worker (the kernel hashes it to a queue of the sender's tap, and the
/// replies follow the queue the worker wrote to) and is about 30 frames; a worker that
/// switched 10 of the flows' frames carried at least one flow. The kernel's hash puts
/// all 16 on one queue about once in 30,000 runs: a fixed count of more frames per
/// worker (this test once asked for 100, about 4 flows) fails a few runs in a hundred.
fn assert_flows_spread(env: &Env, ip_b: &str, first_port: u16) {
    let before = shard_frames(env, "n1");
    flows(env, ip_b, first_port);
    let after = shard_frames(env, "n1");
    assert_eq!((before.len(), after.len()), (2, 2), "{before:?} {after:?}");
    let by_worker: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    assert!(
        by_worker.iter().all(|&f| f >= 10),
        "flows' frames by worker: {by_worker:?}"
    );
}

#[test]
fn tap_queues_spread_a_network_over_two_workers() {
    in_namespace("tap_queues_spread_a_network_over_two_workers", |env| {
        let mq = ["--workers", "2", "--tap-queues", "2"];
        env.restart_fresh(&mq);
        env.network("n1", "10.83.0.0/24");
        env.sandbox("a");
        env.sandbox("b");
        let ip_a = env.connect("n1", "a");
        let ip_b = env.connect("n1", "b");
        let info = env.get("/info");
        assert_eq!(tapnet_tests::n(&info, "TapnetTapQueues"), 2, "{info}");
        assert_eq!(tapnet_tests::n(&info, "TapnetDatapathWorkers"), 2, "{info}");
        assert_eq!(tx_queues(env, "a"), "256", "a's tap is not multi-queue");
        assert_eq!(tx_queues(env, "b"), "256", "b's tap is not multi-queue");
        traffic(env, &ip_a, &ip_b, 5101);
        assert_flows_spread(env, &ip_b, 5200);
        // The gateway's port has one queue: a worker without it relays to the owner.
        assert!(env.ping("a", &env.gateway_of("n1"), 2));

        // Restart, on io_uring: the multi-queue taps are re-opened with both queues,
        // each queue its own ring.
        env.stop_daemon();
        env.start_daemon_with(&["--workers", "2", "--tap-queues", "2", "--tap-io", "uring"]);
        traffic(env, &ip_a, &ip_b, 5102);
        assert_flows_spread(env, &ip_b, 5300);

        // Restart on one queue: the multi-queue device is re-opened on one fd and still
        // carries everything.
        env.stop_daemon();
        env.start_daemon_with(&["--tap-queues", "1"]);
        traffic(env, &ip_a, &ip_b, 5103);
        assert_eq!(shard_frames(env, "n1").len(), 1);
        remove_pair(env);
    });
}

/// Run `tapnetd ARGS` (through `wrapper`, a helper binary of the tests crate, if given)
/// with its socket and state under `root`, for flags that must stop it from starting:
/// under `timeout`, so a daemon that wrongly starts is stopped and fails the caller.
fn run_refused(wrapper: Option<&str>, args: &[&str], root: &Path) -> Output {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let mut cmd = Command::new("timeout");
    cmd.arg("20");
    if let Some(w) = wrapper {
        cmd.arg(dir.join(w));
    }
    cmd.arg(dir.join("tapnetd"))
        .args(args)
        .arg("-H")
        .arg(format!("unix://{}", root.join("api.sock").display()))
        .arg("--data-root")
        .arg(root.join("data"))
        .arg("--exec-root")
        .arg(root.join("run"))
        .arg("--docker-plugin=false")
        .output()
        .expect("run tapnetd")
}

#[test]
fn more_tap_queues_than_workers_and_bad_flag_values_are_refused_by_name() {
    let root = std::env::temp_dir().join(format!("tapnet-tap-queues-{}", std::process::id()));
    for (args, says) in [
        (
            &["--workers", "2", "--tap-queues", "3"][..],
            "--tap-queues 3",
        ),
        (&["--tap-queues", "0"][..], "--tap-queues"),
        (&["--tap-udp-merge", "yes"][..], "--tap-udp-merge"),
    ] {
        let out = run_refused(None, args, &root);
        assert!(!out.status.success(), "{args:?} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{args:?}: {err}");
        assert!(
            !root.join("data").exists(),
            "{args:?}: state made before refusing"
        );
    }
    let _ = std::fs::remove_dir_all(&root);
}

/// A process-wide counter of `/metrics` (no labels).
fn counter(env: &Env, name: &str) -> u64 {
    let text = env.metrics_text();
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

/// Field `field` of the `Udp:` lines of a sandbox's `/proc/net/snmp`.
fn udp_stat(env: &Env, sandbox: &str, field: &str) -> u64 {
    let snmp = env.exec_ok(sandbox, &["cat", "/proc/net/snmp"]);
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (udp.next().unwrap(), udp.next().unwrap());
    let k = names.split_whitespace().position(|w| w == field).unwrap();
    values.split_whitespace().nth(k).unwrap().parse().unwrap()
}

/// Frames a sandbox's `eth0` dropped on transmit (its tap's queue full: the sender ran
/// ahead of the worker), from `/proc/net/dev`.
fn tx_dropped(env: &Env, sandbox: &str) -> u64 {
    let dev = env.exec_ok(sandbox, &["cat", "/proc/net/dev"]);
    let line = dev
        .lines()
        .find(|l| l.trim_start().starts_with("eth0:"))
        .unwrap();
    // rx: bytes packets errs drop fifo frame compressed multicast; tx: bytes packets errs drop
    line.split(':')
        .nth(1)
        .unwrap()
        .split_whitespace()
        .nth(11)
        .unwrap()
        .parse()
        .unwrap()
}

/// Where datagrams of a flood from `a` to `b` may be dropped outside tapnet: `a`'s tap
/// queue, `b`'s full socket. A checksum error at `b` would be a datagram damaged here.
fn flood_drops(env: &Env) -> (u64, u64) {
    assert_eq!(
        udp_stat(env, "b", "InCsumErrors"),
        0,
        "b received damaged datagrams"
    );
    (tx_dropped(env, "a"), udp_stat(env, "b", "RcvbufErrors"))
}

/// Flood `b` from `a` ([`udp_flood`]) and check that every datagram arrived whole or
/// was dropped where [`flood_drops`] counts; how many arrived.
fn udp_flood_accounted(env: &Env, ip_b: &str, port: u16, count: u32) -> u32 {
    let (tx0, rcv0) = flood_drops(env);
    let got = udp_flood(env, ip_b, port, count);
    let (tx1, rcv1) = flood_drops(env);
    let (tx, rcv) = (tx1 - tx0, rcv1 - rcv0);
    eprintln!("{got} of {count} delivered; dropped by a's tap queue {tx}, by b's socket {rcv}");
    assert_eq!(
        u64::from(got) + tx + rcv,
        u64::from(count),
        "datagrams lost in tapnet"
    );
    assert!(got >= count / 10, "only {got} of {count} delivered");
    got
}

/// Send `count` datagrams of 64 bytes from `a` to `b` (bursts of 500), each carrying
/// its sequence number and a pattern derived from it; the receiver checks every one.
/// Returns how many arrived (all checked, in order, none twice).
fn udp_flood(env: &Env, ip_b: &str, port: u16, count: u32) -> u32 {
    use nix::sys::socket::{setsockopt, sockopt};
    let rx = env
        .sandbox_ns("b")
        .run(|| std::net::UdpSocket::bind((ip_b, port)))
        .unwrap()
        .unwrap();
    // As much room as the namespace allows (`net.core.rmem_max`).
    setsockopt(&rx, sockopt::RcvBuf, &(32 << 20)).unwrap();
    rx.set_read_timeout(Some(std::time::Duration::from_secs(2)))
        .unwrap();
    let tx = env
        .sandbox_ns("a")
        .run(|| std::net::UdpSocket::bind("0.0.0.0:0"))
        .unwrap()
        .unwrap();
    let datagram = |seq: u32| -> Vec<u8> {
        let mut d = seq.to_be_bytes().to_vec();
        d.extend((0..60u32).map(|i| (seq.wrapping_mul(7) ^ i) as u8));
        d
    };
    let receiver = std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        let (mut got, mut last) = (0u32, None::<u32>);
        while let Ok(n) = rx.recv(&mut buf) {
            let seq = u32::from_be_bytes(buf[..4].try_into().unwrap());
            assert_eq!(&buf[..n], &datagram(seq)[..], "datagram {seq} corrupted");
            assert!(
                last.is_none_or(|l| seq > l),
                "datagram {seq} after {last:?}"
            );
            last = Some(seq);
            got += 1;
        }
        got
    });
    for seq in 0..count {
        tx.send_to(&datagram(seq), (ip_b, port)).unwrap();
        if seq % 500 == 499 {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
    receiver.join().unwrap()
}

#[test]
fn udp_floods_arrive_whole_merged_into_super_frames_or_not() {
    in_namespace(
        "udp_floods_arrive_whole_merged_into_super_frames_or_not",
        |env| {
            let (_, ip_b) = pair_with_traffic(env, "10.86.0.0/24", 5121);
            assert_eq!(env.get("/info")["TapnetTapUdpMerge"], "on");
            let (frames, merged) = (
                counter(env, "tapnet_tap_udp_superframes_total"),
                counter(env, "tapnet_tap_udp_merged_datagrams_total"),
            );
            udp_flood_accounted(env, &ip_b, 6200, 20_000);
            let frames = counter(env, "tapnet_tap_udp_superframes_total") - frames;
            let merged = counter(env, "tapnet_tap_udp_merged_datagrams_total") - merged;
            eprintln!("{merged} datagrams in {frames} super-frames");
            // The worker found runs of the flood in its batches and wrote them merged.
            assert!(frames > 0, "no super-frame written");
            assert!(
                merged >= 2 * frames,
                "{merged} datagrams in {frames} super-frames"
            );

            // Off: the same flood, datagram by datagram, and nothing merged.
            env.stop_daemon();
            env.start_daemon_with(&["--tap-udp-merge", "off"]);
            assert_eq!(env.get("/info")["TapnetTapUdpMerge"], "off");
            // The taps lost their carrier with the daemon, and the kernel its neighbour
            // entries: resolve b again first, or a's kernel would send the flood's first
            // datagrams (held for the ARP answer) after later ones.
            assert!(env.ping("a", &ip_b, 1), "a cannot ping b after the restart");
            udp_flood_accounted(env, &ip_b, 6201, 20_000);
            assert_eq!(counter(env, "tapnet_tap_udp_superframes_total"), 0);
            remove_pair(env);
        },
    );
}
