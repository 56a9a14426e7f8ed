//! `tapnetd --tap-io`: endpoint taps on io_uring and on one read/write per frame carry
//! ping and 1 MiB of TCP (checked byte by byte) between two sandboxes, also after a
//! daemon restart (taps re-opened); a bad value is refused by name.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::PathBuf;
use std::process::Command;
use tapnet_tests::{in_namespace, Env};

fn traffic(env: &Env, ip_a: &str, ip_b: &str, port: u16) {
    assert!(env.ping("a", ip_b, 3), "a cannot ping b");
    assert!(env.ping("b", ip_a, 3), "b cannot ping a");
    tapnet_tests::tcp_bytes(env, "a", "b", ip_b, port, 1 << 20);
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
    env.network("n1", subnet);
    env.sandbox("a");
    env.sandbox("b");
    let ip_a = env.connect("n1", "a");
    let ip_b = env.connect("n1", "b");
    traffic(env, &ip_a, &ip_b, 5001);
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
    for s in ["a", "b"] {
        env.ok(&["sandbox", "rm", s]);
    }
    env.ok(&["network", "rm", "n1"]);
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
