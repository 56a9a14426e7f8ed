//! Control-plane scale benchmark (run through `benches/scale.sh`, which builds the
//! release binaries and re-executes this inside a private user+net+mount namespace).
//!
//! `scale TAPNETD EXEC_ROOT DATA_ROOT [N] [RSS_AT]`: starts `tapnetd`, creates a /16
//! network, creates N sandboxes and connects each (timing every connect with a
//! minimal HTTP client on the unix socket, so no curl process is in the figure),
//! reads the daemon's VmRSS at RSS_AT and at N endpoints, then `kill -9`s the daemon,
//! starts it again and measures the time from spawn until every port is back in the
//! network's stats and the first sandbox can ping the last one.
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn request(sock: &Path, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let mut s = UnixStream::connect(sock).expect("connect to the daemon socket");
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: tapnet\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let code = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    // Bodies are small; a chunked body is a single chunk here.
    let body = if out
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body.split_once("\r\n")
            .map_or("", |(_, b)| b)
            .rsplit_once("\r\n0")
            .map_or("", |(b, _)| b)
    } else {
        body
    };
    (code, body.to_string())
}

fn ok(sock: &Path, method: &str, path: &str, body: Option<&str>) -> serde_json::Value {
    let (code, text) = request(sock, method, path, body);
    assert!(
        (200..300).contains(&code),
        "{method} {path} -> {code}: {text}"
    );
    serde_json::from_str(&text).unwrap_or(serde_json::Value::Null)
}

fn spawn(tapnetd: &Path, sock: &Path, exec_root: &Path, data_root: &Path, log: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Command::new(tapnetd)
        .arg("-H")
        .arg(format!("unix://{}", sock.display()))
        .arg("--exec-root")
        .arg(exec_root)
        .arg("--data-root")
        .arg(data_root)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn tapnetd")
}

fn wait_ping(sock: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if UnixStream::connect(sock).is_ok() && request(sock, "GET", "/_ping", None).0 == 200 {
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    panic!("daemon did not answer /_ping");
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

fn ping(netns: &str, ip: &str) -> bool {
    Command::new("nsenter")
        .arg(format!("--net={netns}"))
        .args(["ping", "-n", "-q", "-c", "1", "-W", "1", ip])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    assert!(
        args.len() >= 4,
        "usage: scale TAPNETD EXEC_ROOT DATA_ROOT [N] [RSS_AT]"
    );
    let tapnetd = PathBuf::from(&args[1]);
    let exec_root = PathBuf::from(&args[2]);
    let data_root = PathBuf::from(&args[3]);
    let n: usize = args.get(4).and_then(|v| v.parse().ok()).unwrap_or(1000);
    let rss_at: usize = args.get(5).and_then(|v| v.parse().ok()).unwrap_or(100);
    let sock = exec_root.join("tapnet.sock");
    let log = exec_root.join("tapnetd.log");

    let mut daemon = spawn(&tapnetd, &sock, &exec_root, &data_root, &log);
    wait_ping(&sock);
    ok(
        &sock,
        "POST",
        "/networks/create",
        Some(r#"{"Name":"scale","IPAM":{"Config":[{"Subnet":"10.128.0.0/16"}]}}"#),
    );
    let mut create = Vec::with_capacity(n);
    let mut connect = Vec::with_capacity(n);
    let mut rss_small = 0;
    for i in 0..n {
        let t = Instant::now();
        ok(
            &sock,
            "POST",
            "/sandboxes",
            Some(&format!(r#"{{"Name":"s{i}"}}"#)),
        );
        create.push(t.elapsed());
        let t = Instant::now();
        ok(
            &sock,
            "POST",
            "/networks/scale/connect",
            Some(&format!(r#"{{"Container":"s{i}"}}"#)),
        );
        connect.push(t.elapsed());
        if i + 1 == rss_at {
            std::thread::sleep(Duration::from_secs(1));
            rss_small = rss_kib(daemon.id());
        }
    }
    std::thread::sleep(Duration::from_secs(1));
    let rss_all = rss_kib(daemon.id());
    let first_ten: Vec<f64> = connect
        .iter()
        .take(10)
        .map(|d| d.as_secs_f64() * 1000.0)
        .collect();
    let last_ten: Vec<f64> = connect
        .iter()
        .rev()
        .take(10)
        .map(|d| d.as_secs_f64() * 1000.0)
        .collect();
    create.sort();
    connect.sort();
    println!("sandboxes/endpoints: {n}");
    println!(
        "connect latency: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (first 10 mean {:.2} ms, last 10 mean {:.2} ms)",
        pct(&connect, 0.5),
        pct(&connect, 0.99),
        pct(&connect, 1.0),
        first_ten.iter().sum::<f64>() / first_ten.len().max(1) as f64,
        last_ten.iter().sum::<f64>() / last_ten.len().max(1) as f64,
    );
    println!(
        "sandbox create latency: p50 {:.2} ms, p99 {:.2} ms",
        pct(&create, 0.5),
        pct(&create, 0.99)
    );
    println!(
        "daemon RSS: {} KiB at {rss_at} idle endpoints, {} KiB at {n}",
        rss_small, rss_all
    );

    let first = ok(&sock, "GET", "/sandboxes/s0", None);
    let last = ok(&sock, "GET", &format!("/sandboxes/s{}", n - 1), None);
    let ns_first = first["NetnsPath"].as_str().unwrap().to_string();
    let ip_last = last["Endpoints"]["scale"]["IPv4Address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    assert!(
        ping(&ns_first, &ip_last),
        "s0 cannot ping s{} before the restart",
        n - 1
    );

    // kill -9 and restart.
    daemon.kill().unwrap();
    daemon.wait().unwrap();
    let t0 = Instant::now();
    let mut daemon = spawn(&tapnetd, &sock, &exec_root, &data_root, &log);
    wait_ping(&sock);
    let api_up = t0.elapsed();
    let ports = loop {
        let stats = ok(&sock, "GET", "/networks/scale/stats", None);
        let k = stats["Ports"].as_array().map_or(0, Vec::len);
        if k == n {
            break t0.elapsed();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "only {k} ports after 60 s"
        );
    };
    while !ping(&ns_first, &ip_last) {
        assert!(t0.elapsed() < Duration::from_secs(60), "no ping after 60 s");
    }
    let pinged = t0.elapsed();
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    let restored = log_text
        .lines()
        .rev()
        .find(|l| l.contains("restored") && l.contains("endpoints in"))
        .unwrap_or("")
        .to_string();
    println!(
        "restart after kill -9: API up {:.0} ms, all {n} ports attached {:.0} ms, s0 -> s{} ping {:.0} ms after spawn",
        api_up.as_secs_f64() * 1000.0,
        ports.as_secs_f64() * 1000.0,
        n - 1,
        pinged.as_secs_f64() * 1000.0
    );
    println!("daemon: {}", restored.split("INFO ").last().unwrap_or(""));
    daemon.kill().unwrap();
    daemon.wait().unwrap();
}
