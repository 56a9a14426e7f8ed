//! Limits that hold under abuse (issue 10 item 1): a client that stalls mid-request
//! cannot hold an API connection, and it delays no other client.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;
use tapnet_tests::{in_namespace, n, Env};

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
