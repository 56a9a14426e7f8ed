//! The send path's run-time fallback, against a real kernel refusal: in a private
//! user+net namespace (unprivileged: `unshare -Urn`), loopback's MTU is set to 1500, so a
//! `UDP_SEGMENT` send of 2,000-byte datagrams is refused (`EMSGSIZE`); the batch must go
//! out as plain datagrams (fragmented by the kernel) and arrive whole — for contiguous
//! batches and gathered ones (`Sender::send_gathered`) alike.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::IoSlice;
use std::net::UdpSocket;
use std::process::Command;
use std::time::Duration;
use tapnet_vxlan::udp::Sender;

const INNER: &str = "TAPNET_VXLAN_FALLBACK_INNER";

fn body() {
    let ok = |args: &[&str]| {
        let st = Command::new(args[0]).args(&args[1..]).status().unwrap();
        assert!(st.success(), "{args:?}");
    };
    ok(&["ip", "link", "set", "lo", "up", "mtu", "1500"]);
    let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let to = [rx.local_addr().unwrap()];
    let mut batch = Vec::new();
    for i in 0..3u8 {
        batch.extend(std::iter::repeat_n(i, 2000));
    }
    let mut s = Sender::new();
    for round in 0..2 {
        let sent = s.send(&tx, &batch, 2000, &to);
        assert_eq!((sent.datagrams, sent.errors), (3, 0), "round {round}");
        let mut buf = [0u8; 4000];
        for i in 0..3u8 {
            let n = rx.recv(&mut buf).unwrap();
            assert_eq!(n, 2000);
            assert!(buf[..n].iter().all(|&b| b == i), "datagram {i}");
        }
        // An oversized segment is not a reason to give up GSO for good.
        assert!(s.gso_enabled());
        assert_eq!(s.gso_refused(), 0);
    }
    // Datagrams that fit still go as one GSO send (and arrive separately).
    let small: Vec<u8> = (0..4u8)
        .flat_map(|i| std::iter::repeat_n(i, 1000))
        .collect();
    assert_eq!(s.send(&tx, &small, 1000, &to).datagrams, 4);
    let mut buf = [0u8; 4000];
    for i in 0..4u8 {
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!((n, buf[0]), (1000, i));
    }

    // The gathered send (headers and payload from separate buffers, as a TSO frame goes
    // out, see `tapnet_vxlan::gather`) falls back the same way: segments over the MTU
    // plain and fragmented, GSO kept; segments that fit still offloaded.
    for (stride, n) in [(2000usize, 3u8), (1000, 4)] {
        let hdrs: Vec<u8> = (0..n).flat_map(|i| [i; 10]).collect();
        let body: Vec<u8> = (0..n)
            .flat_map(|i| std::iter::repeat_n(i, stride - 10))
            .collect();
        let parts: Vec<IoSlice<'_>> = hdrs
            .chunks(10)
            .zip(body.chunks(stride - 10))
            .flat_map(|(h, b)| [IoSlice::new(h), IoSlice::new(b)])
            .collect();
        let sent = s.send_gathered(&tx, &parts, 2, stride, &to);
        assert_eq!((sent.datagrams, sent.errors), (u64::from(n), 0), "{stride}");
        let mut buf = [0u8; 4000];
        for i in 0..n {
            let got = rx.recv(&mut buf).unwrap();
            assert_eq!(got, stride);
            assert!(buf[..got].iter().all(|&b| b == i), "datagram {i}");
        }
        assert!(s.gso_enabled());
        assert_eq!(s.gso_refused(), 0);
    }
}

#[test]
fn segments_over_the_path_mtu_go_out_as_plain_fragmented_datagrams() {
    if std::env::var(INNER).is_ok() {
        body();
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("unshare")
        .args(["--user", "--map-root-user", "--net"])
        .arg(&exe)
        .args([
            "--exact",
            "segments_over_the_path_mtu_go_out_as_plain_fragmented_datagrams",
            "--nocapture",
        ])
        .env(INNER, "1")
        .output()
        .expect("unshare(1)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "inside the namespace:\n{stdout}\n{stderr}"
    );
}
