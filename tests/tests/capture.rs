//! `tapnet capture` (issue 10 item 6): pcap streams of a network's switch and of one
//! sandbox's port, read back with the real `tcpdump -r`, and the capture subscriber
//! going away with its client.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tapnet_tests::{built_binary, in_namespace, python3, Env};

/// Bound on waiting for something that should happen at once (not a timing assertion).
const WAIT: Duration = Duration::from_secs(20);

/// `tapnet capture ARGS` against `env`'s daemon, running in the background.
fn capture(env: &Env, args: &[&str]) -> Child {
    Command::new(built_binary("tapnet"))
        .arg("-H")
        .arg(format!("unix://{}", env.socket.display()))
        .arg("capture")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run tapnet capture")
}

/// Wait until `file` holds at least the pcap global header (the daemon writes it once
/// the subscriber is in place).
fn wait_header(file: &Path, child: &mut Child) {
    let deadline = Instant::now() + WAIT;
    while std::fs::metadata(file).map(|m| m.len()).unwrap_or(0) < 24 {
        if let Ok(Some(st)) = child.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            panic!("tapnet capture exited ({st}) before writing a header: {err}");
        }
        assert!(
            Instant::now() < deadline,
            "no pcap header in {}",
            file.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Stop a capture client we started (SIGTERM, by its pid) and reap it.
fn stop(mut child: Child) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = child.wait();
}

/// `tcpdump -r file` output, one line per packet (payload in ASCII with `-A`).
fn tcpdump(file: &Path, extra: &[&str]) -> String {
    // As root, Debian's tcpdump always switches to its own user, which the test's user
    // namespace cannot do (setgroups is denied there): run it in a nested user
    // namespace, where it is not root (the file is world-readable).
    let out = Command::new("unshare")
        .args(["--user", "tcpdump", "-n", "-r"])
        .arg(file)
        .args(extra)
        .output()
        .expect("run tcpdump (apt-get install tcpdump)");
    assert!(
        out.status.success(),
        "tcpdump -r {} failed: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Send one UDP datagram with `marker` from `sandbox` to `ip`:9999.
fn udp_marker(env: &Env, sandbox: &str, ip: &str, marker: &str) {
    let code = format!(
        "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.sendto(b'{marker}', ('{ip}', 9999))\n"
    );
    let out = env.exec(sandbox, &[python3(), "-c", &code]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `tapnet_capture_subscribers{network="NET"}` from `/metrics`.
fn subscribers(env: &Env, net: &str) -> u64 {
    let text = env.metrics_text();
    let prefix = format!("tapnet_capture_subscribers{{network=\"{net}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {prefix} in /metrics:\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

fn wait_subscribers(env: &Env, net: &str, want: u64) {
    let deadline = Instant::now() + WAIT;
    loop {
        let n = subscribers(env, net);
        if n == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{net}: {n} capture subscribers, want {want}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn has_line(text: &str, what: &[&str]) -> bool {
    text.lines().any(|l| what.iter().all(|w| l.contains(w)))
}

#[test]
fn capture_network_and_sandbox_read_by_tcpdump() {
    in_namespace("capture_network_and_sandbox_read_by_tcpdump", |env| {
        env.network("cap", "10.93.0.0/24");
        for s in ["a", "b", "c"] {
            env.sandbox(s);
        }
        let ip_a = env.connect("cap", "a");
        let ip_b = env.connect("cap", "b");
        let ip_c = env.connect("cap", "c");
        let dir = PathBuf::from(&env.root);
        let (net_file, a_file) = (dir.join("net.pcap"), dir.join("a.pcap"));
        assert_eq!(subscribers(env, "cap"), 0);
        let mut net_cap = capture(env, &["cap", "-w", net_file.to_str().unwrap()]);
        let mut a_cap = capture(env, &["a", "-w", a_file.to_str().unwrap()]);
        wait_header(&net_file, &mut net_cap);
        wait_header(&a_file, &mut a_cap);
        assert_eq!(subscribers(env, "cap"), 2);

        assert!(env.ping("a", &ip_b, 3));
        udp_marker(env, "a", &ip_b, "TAPNET-MARKER-FROM-A");
        assert!(env.ping("c", &ip_b, 2));
        udp_marker(env, "c", &ip_b, "TAPNET-MARKER-FROM-C");
        assert!(env.ping("a", &ip_b, 1));
        // The files hold whole records only, so they can be read while the capture runs:
        // wait until the last replies are in (a stream is written in order).
        let replies = |f: &Path| {
            tcpdump(f, &[])
                .lines()
                .filter(|l| l.contains("ICMP echo reply"))
                .count()
        };
        let deadline = Instant::now() + WAIT;
        while replies(&net_file) < 6 || replies(&a_file) < 4 {
            assert!(
                Instant::now() < deadline,
                "the last replies were not captured"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        stop(net_cap);
        stop(a_cap);
        // The clients are gone: so are their subscribers.
        wait_subscribers(env, "cap", 0);

        let all = tcpdump(&net_file, &["-A"]);
        for (from, to) in [(&ip_a, &ip_b), (&ip_c, &ip_b)] {
            assert!(
                has_line(&all, &[&format!("IP {from} > {to}: ICMP echo request")]),
                "no echo request {from} > {to}:\n{all}"
            );
            assert!(
                has_line(&all, &[&format!("IP {to} > {from}: ICMP echo reply")]),
                "no echo reply {to} > {from}:\n{all}"
            );
        }
        assert!(
            has_line(
                &all,
                &[&format!("IP {ip_a}."), &format!("> {ip_b}.9999: UDP")]
            ),
            "{all}"
        );
        assert!(all.contains("TAPNET-MARKER-FROM-A"), "{all}");
        assert!(all.contains("TAPNET-MARKER-FROM-C"), "{all}");
        // Every echo request of the pings (3 + 2 + 1) and its reply were captured once.
        let requests = all
            .lines()
            .filter(|l| l.contains("ICMP echo request"))
            .count();
        let replies = all
            .lines()
            .filter(|l| l.contains("ICMP echo reply"))
            .count();
        assert_eq!((requests, replies), (6, 6), "{all}");

        // The sandbox capture: a's own exchanges, nothing of c's IP traffic.
        let mine = tcpdump(&a_file, &["-A"]);
        assert!(
            has_line(&mine, &[&format!("IP {ip_a} > {ip_b}: ICMP echo request")]),
            "{mine}"
        );
        assert!(
            has_line(&mine, &[&format!("IP {ip_b} > {ip_a}: ICMP echo reply")]),
            "{mine}"
        );
        assert!(mine.contains("TAPNET-MARKER-FROM-A"), "{mine}");
        assert!(!mine.contains("TAPNET-MARKER-FROM-C"), "{mine}");
        assert!(!has_line(&mine, &[&format!("IP {ip_c} ")]), "{mine}");
        assert!(!has_line(&mine, &[&format!("> {ip_c}: ")]), "{mine}");
    });
}

#[test]
fn capture_count_to_stdout_and_errors() {
    in_namespace("capture_count_to_stdout_and_errors", |env| {
        env.network("cnt", "10.94.0.0/24");
        env.sandbox("a");
        env.sandbox("b");
        env.connect("cnt", "a");
        let ip_b = env.connect("cnt", "b");
        // -c 4 to stdout: exactly four frames, then the client exits by itself.
        let child = capture(env, &["cnt", "-c", "4"]);
        wait_subscribers(env, "cnt", 1);
        assert!(env.ping("a", &ip_b, 4));
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let file = PathBuf::from(&env.root).join("count.pcap");
        std::fs::write(&file, &out.stdout).unwrap();
        let lines = tcpdump(&file, &[]);
        assert_eq!(lines.lines().count(), 4, "{lines}");
        wait_subscribers(env, "cnt", 0);

        // Errors: unknown target, a sandbox on no network (no file made), a bad query
        // parameter.
        env.sandbox("lonely");
        let err = env.fails(&["capture", "nosuch"]);
        assert!(err.contains("no network or sandbox named nosuch"), "{err}");
        let never = PathBuf::from(&env.root).join("never.pcap");
        let err = env.fails(&["capture", "lonely", "-w", never.to_str().unwrap()]);
        assert!(err.contains("not connected"), "{err}");
        assert!(!never.exists(), "a refused capture made its file");
        let err = env.fails(&["capture", "lonely"]);
        assert!(err.contains("not connected"), "{err}");
        // A name that is a network's and a sandbox's: refused, the id is needed.
        env.network("twin", "10.98.0.0/24");
        env.sandbox("twin");
        let err = env.fails(&["capture", "twin"]);
        assert!(err.contains("both a network and a sandbox"), "{err}");
        // At most 16 captures of one network (curl as the client): the 17th is 429, and
        // killing the clients removes every subscriber.
        let curls: Vec<Child> = (0..16)
            .map(|_| {
                Command::new("curl")
                    .args(["-sN", "--unix-socket"])
                    .arg(&env.socket)
                    .args(["-o", "/dev/null", "http://tapnet/networks/cnt/capture"])
                    .stdin(Stdio::null())
                    .spawn()
                    .expect("run curl")
            })
            .collect();
        wait_subscribers(env, "cnt", 16);
        let (code, v) = env.api("GET", "/networks/cnt/capture", None);
        assert_eq!(code, 429, "{v}");
        assert!(
            v["message"].as_str().unwrap().contains("16 captures"),
            "{v}"
        );
        for c in curls {
            stop(c);
        }
        wait_subscribers(env, "cnt", 0);
        let (code, v) = env.api("GET", "/networks/cnt/capture?snaplen=10", None);
        assert_eq!(code, 400, "{v}");
        let (code, v) = env.api("GET", "/sandboxes/a/capture?network=nosuch", None);
        assert_eq!(code, 404, "{v}");
        assert_eq!(subscribers(env, "cnt"), 0);
    });
}
