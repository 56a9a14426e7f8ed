//! Tap ports on io_uring (`tapnet_sandbox::uring`) with real taps and real traffic.
//!
//! Each test re-executes this binary, filtered to exactly itself, inside fresh
//! `unshare -Urnm --propagation private` namespaces (as the sandbox crate's privileged
//! tests do): the inner run makes two network namespaces with a tap each, attaches the
//! taps to a live datapath (or drives a port directly), and checks what arrives.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tapnet_sandbox::netns::Netns;
use tapnet_sandbox::tap::{Tap, TapConfig, VNET_HDR_LEN};
use tapnet_sandbox::uring::{self, TapIo, TapIoPath, UringTap};
use tapnet_switch::core::SwitchConfig;
use tapnet_switch::runtime::{CaptureScope, Datapath, FrameBatch, FrameIo, Frames, RECV_BUF_LEN};

const INNER_ENV: &str = "TAPNET_URING_IN_NS";

/// Run `body` inside fresh user+net+mount namespaces (re-exec of this test binary),
/// with a tmpfs scratch directory for the netns bind mounts.
fn in_ns(name: &str, body: impl FnOnce(&Path)) {
    if std::env::var(INNER_ENV).as_deref() == Ok(name) {
        let dir = std::env::temp_dir().join(format!("tapnet-uring-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        nix::mount::mount(
            Some("tmpfs"),
            &dir,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some("size=1m"),
        )
        .expect("mount tmpfs");
        body(&dir);
        let _ = nix::mount::umount2(&dir, nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir(&dir);
        return;
    }
    let exe = std::env::current_exe().expect("current test executable");
    let out = Command::new("unshare")
        .args(["-Urnm", "--propagation", "private"])
        .arg(&exe)
        .args(["--exact", name, "--nocapture", "--test-threads", "1"])
        .env(INNER_ENV, name)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run unshare(1): {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "test {name} failed inside its namespace:\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );
    assert!(
        stdout.contains("1 passed"),
        "test {name}: the inner run did not execute the test:\n{stdout}\n{stderr}"
    );
}

fn cfg(last: u8) -> TapConfig {
    TapConfig {
        name: "eth0".into(),
        mac: [0x02, 0, 0, 0, 0, last],
        mtu: 1500,
        txqueuelen: 10000,
        ipv4: Some((Ipv4Addr::new(10, 0, 0, last), 24)),
        ..TapConfig::default()
    }
}

/// Two namespaces `a` (10.0.0.2) and `b` (10.0.0.3) under `dir`, each with a tap.
type Sandbox = (Netns, Arc<Tap>, PathBuf);

fn two_sandboxes(dir: &Path) -> (Sandbox, Sandbox) {
    let mut out = Vec::new();
    for (n, last) in [("a", 2u8), ("b", 3u8)] {
        let path = dir.join(n);
        let ns = Netns::create(&path).expect("create netns");
        let tap = Arc::new(Tap::create(&ns, &cfg(last)).expect("create tap"));
        out.push((ns, tap, path));
    }
    let b = out.pop().unwrap();
    let a = out.pop().unwrap();
    (a, b)
}

/// The byte at `i` of the test pattern of stream `seed`.
fn pat(seed: u32, i: usize) -> u8 {
    (i as u32)
        .wrapping_mul(2_654_435_761)
        .wrapping_add(seed)
        .rotate_left(7) as u8
}

/// `recv` on a blocking socket, retrying `EINTR` (io_uring task work interrupts the
/// thread that submitted the reads: here the test thread).
fn recv(sock: &UdpSocket, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match sock.recv(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

fn udp_in(ns: &Netns, addr: &str) -> UdpSocket {
    let addr = addr.to_string();
    ns.run(move || UdpSocket::bind(addr).expect("bind udp"))
        .expect("enter netns")
}

#[test]
fn uring_ports_carry_every_size_byte_exact_in_order() {
    in_ns("uring_ports_carry_every_size_byte_exact_in_order", |dir| {
        let ((na, ta, _), (nb, tb, _)) = two_sandboxes(dir);
        let dp = Datapath::start(1).expect("datapath");
        let net = dp.add_network(SwitchConfig::default()).expect("network");
        for tap in [&ta, &tb] {
            let (io, path) =
                uring::open_port(Arc::clone(tap), TapIo::Uring, 8).expect("uring port");
            assert_eq!(path, TapIoPath::Uring);
            net.add_port(io).expect("add port");
        }
        let cap = net.capture(CaptureScope::Network).expect("capture");

        // UDP, every size class: tiny, MTU-size, and IP-fragmented up to the 64 KiB
        // datagram limit, each numbered; in bursts the receiver's buffer holds.
        let rx = udp_in(&nb, "10.0.0.3:7000");
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let tx = udp_in(&na, "10.0.0.2:0");
        let sizes: Vec<usize> = [
            4, 5, 18, 64, 100, 512, 1000, 1471, 1472, 1473, 3000, 9000, 30000, 65507,
        ]
        .into_iter()
        .cycle()
        .take(140)
        .collect();
        let mut got = vec![0u8; 65536];
        // One datagram first, so that both sides' neighbours are resolved: while ARP is
        // pending the kernel queues a burst's packets in a small per-neighbour queue and
        // drops the oldest (seen: datagrams 1-9 of the first burst lost, 1 run in 20).
        tx.send_to(b"warm", "10.0.0.3:7000").expect("send udp");
        assert_eq!(recv(&rx, &mut got).expect("warm-up datagram"), 4);
        for (burst, chunk) in sizes.chunks(14).enumerate() {
            for (k, &size) in chunk.iter().enumerate() {
                let seq = (burst * 14 + k) as u32;
                let mut d: Vec<u8> = (0..size).map(|i| pat(seq, i)).collect();
                d[..4].copy_from_slice(&seq.to_be_bytes());
                tx.send_to(&d, "10.0.0.3:7000").expect("send udp");
            }
            for (k, &size) in chunk.iter().enumerate() {
                let seq = (burst * 14 + k) as u32;
                let n = recv(&rx, &mut got).unwrap_or_else(|e| panic!("datagram {seq}: {e}"));
                assert_eq!(
                    u32::from_be_bytes(got[..4].try_into().unwrap()),
                    seq,
                    "order"
                );
                assert_eq!(n, size, "datagram {seq} size");
                if let Some(i) = (4..n).find(|&i| got[i] != pat(seq, i)) {
                    panic!("datagram {seq} byte {i} differs");
                }
            }
        }

        // 1 MiB of TCP: TSO makes GSO super-frames of up to 64 KiB; checked byte by byte.
        const LEN: usize = 1 << 20;
        let listener = nb
            .run(|| TcpListener::bind("10.0.0.3:7001").expect("listen"))
            .unwrap();
        let sender = std::thread::spawn({
            let stream = na
                .run(|| TcpStream::connect("10.0.0.3:7001").expect("connect"))
                .unwrap();
            move || {
                let mut stream = stream;
                let data: Vec<u8> = (0..LEN).map(|i| pat(99, i)).collect();
                stream.write_all(&data).expect("tcp write");
            }
        });
        let (mut conn, _) = listener.accept().expect("accept");
        conn.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut data = Vec::with_capacity(LEN);
        conn.read_to_end(&mut data).expect("tcp read");
        sender.join().unwrap();
        assert_eq!(data.len(), LEN);
        if let Some(i) = (0..LEN).find(|&i| data[i] != pat(99, i)) {
            panic!("TCP byte {i} differs");
        }
        let mut largest = 0;
        while let Ok(f) = cap.recv_timeout(Duration::from_millis(200)) {
            largest = largest.max(f.data.len());
        }
        assert!(
            largest > 1514 * 4,
            "no GSO super-frame crossed (largest {largest})"
        );
        eprintln!("largest frame switched: {largest} bytes");
        net.remove().ok();
    });
}

/// An Ethernet + IPv4 + UDP frame (vnet header in front, no offloads) from 10.0.0.9 to
/// 10.0.0.3:`port` (MAC 02:..:03) carrying `payload`.
fn udp_frame(port: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; VNET_HDR_LEN];
    f.extend_from_slice(&[2, 0, 0, 0, 0, 3, 2, 0, 0, 0, 0, 9, 0x08, 0x00]);
    let total = (20 + 8 + payload.len()) as u16;
    let mut ip = vec![
        0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0, 10, 0, 0, 9, 10, 0, 0, 3,
    ];
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    let sum = ip
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum::<u32>();
    let sum = !(((sum & 0xffff) + (sum >> 16)) as u16);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&4000u16.to_be_bytes());
    f.extend_from_slice(&port.to_be_bytes());
    f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    f
}

#[test]
fn send_batch_reports_the_failed_frame_and_never_writes_a_frame_twice() {
    in_ns(
        "send_batch_reports_the_failed_frame_and_never_writes_a_frame_twice",
        |dir| {
            let (_, (nb, tb, _)) = two_sandboxes(dir);
            let rx = udp_in(&nb, "10.0.0.3:7100");
            rx.set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            let mut port = UringTap::new(Arc::clone(&tb), 4).expect("uring port");
            // A frame shorter than the vnet header is refused by the tap (EINVAL).
            let frames = [
                udp_frame(7100, b"first"),
                vec![0u8; 4],
                udp_frame(7100, b"third"),
            ];
            let mut batch = FrameBatch::new(8, 0, 4096);
            for f in &frames {
                batch.spare()[..f.len()].copy_from_slice(f);
                batch.commit(f.len());
            }
            let err = port
                .send_batch(Frames::all(&batch))
                .expect_err("bad frame refused");
            assert_eq!(err.sent, 1, "{err:?}");
            assert_eq!(err.error.raw_os_error(), Some(libc::EINVAL), "{err:?}");
            let mut got = [0u8; 64];
            let n = recv(&rx, &mut got).expect("first frame arrives");
            assert_eq!(&got[..n], b"first");
            // The port issued the third write with the others (writes are not linked);
            // the caller sends it again, as the contract lets it, and the port answers
            // from the result it kept instead of writing it twice.
            let n = recv(&rx, &mut got).expect("third frame arrives");
            assert_eq!(&got[..n], b"third");
            port.send_batch(Frames::all(&batch).after(2))
                .expect("third frame, answered from the kept result");
            let e = recv(&rx, &mut got).expect_err("no frame is written twice");
            assert!(
                matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ),
                "{e}"
            );
            // Sent once more, it is a new write.
            port.send_batch(Frames::all(&batch).after(2))
                .expect("third frame again");
            let n = recv(&rx, &mut got).expect("third frame arrives again");
            assert_eq!(&got[..n], b"third");
        },
    );
}

/// Make io_uring_setup fail with EPERM on this thread (and threads it spawns), as a
/// seccomp policy or `kernel.io_uring_disabled` would.
fn refuse_io_uring_on_this_thread() {
    use libc::{sock_filter, sock_fprog, BPF_ABS, BPF_JEQ, BPF_JMP, BPF_K, BPF_LD, BPF_RET, BPF_W};
    // SAFETY: BPF_STMT/BPF_JUMP only build structs.
    let filter = unsafe {
        [
            libc::BPF_STMT((BPF_LD | BPF_W | BPF_ABS) as u16, 0), // seccomp_data.nr
            libc::BPF_JUMP(
                (BPF_JMP | BPF_JEQ | BPF_K) as u16,
                libc::SYS_io_uring_setup as u32,
                0,
                1,
            ),
            libc::BPF_STMT(
                (BPF_RET | BPF_K) as u16,
                libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
            ),
            libc::BPF_STMT((BPF_RET | BPF_K) as u16, libc::SECCOMP_RET_ALLOW),
        ]
    };
    let prog = sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr() as *mut sock_filter,
    };
    // SAFETY: plain prctl calls; `prog` points at `filter`, both alive for the call.
    unsafe {
        assert_eq!(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
        assert_eq!(
            libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &prog as *const sock_fprog
            ),
            0,
            "seccomp: {}",
            io::Error::last_os_error()
        );
    }
}

#[test]
fn auto_falls_back_to_read_write_when_io_uring_is_refused() {
    in_ns(
        "auto_falls_back_to_read_write_when_io_uring_is_refused",
        |dir| {
            let ((_, ta, pa), (_, tb, _)) = two_sandboxes(dir);
            let dp = Datapath::start(1).expect("datapath");
            let net = dp.add_network(SwitchConfig::default()).expect("network");
            let (io, path) = uring::open_port(Arc::clone(&ta), TapIo::Auto, 8).expect("port a");
            assert_eq!(path, TapIoPath::Uring, "io_uring works before the filter");
            net.add_port(io).expect("add a");

            refuse_io_uring_on_this_thread();
            assert_eq!(
                uring::probe().unwrap_err().raw_os_error(),
                Some(libc::EPERM)
            );
            let before = uring::path_counts();
            let err = uring::open_port(Arc::clone(&tb), TapIo::Uring, 8)
                .err()
                .expect("--tap-io uring refuses");
            assert!(err.to_string().contains("io_uring"), "{err}");
            let (io, path) = uring::open_port(Arc::clone(&tb), TapIo::Auto, 8).expect("port b");
            assert_eq!(path, TapIoPath::Rw, "auto falls back");
            let after = uring::path_counts();
            assert_eq!(after.fallbacks, before.fallbacks + 1);
            assert_eq!(after.rw, before.rw + 1);
            net.add_port(io).expect("add b");

            // One port on each path: pings cross both ways.
            let out = Command::new("nsenter")
                .arg(format!("--net={}", pa.display()))
                .args(["ping", "-c", "3", "-i", "0.2", "-W", "2", "10.0.0.3"])
                .output()
                .expect("ping");
            assert!(
                out.status.success(),
                "ping over a uring and an rw port: {}",
                String::from_utf8_lossy(&out.stdout)
            );
            net.remove().ok();
        },
    );
}

/// Frames read from `port` until one satisfies `pred`, waiting on the port's fd (the
/// eventfd) with poll(2) between empty reads, as the worker's poll would.
fn recv_until(port: &mut UringTap, timeout: Duration, pred: impl Fn(&[u8]) -> bool) -> Vec<u8> {
    let deadline = Instant::now() + timeout;
    let mut batch = FrameBatch::new(64, RECV_BUF_LEN, RECV_BUF_LEN);
    while Instant::now() < deadline {
        batch.clear();
        match port.recv_batch(&mut batch) {
            Ok(_) => {
                if let Some(f) = batch.iter().find(|f| pred(f)) {
                    return f.to_vec();
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let mut pfd = libc::pollfd {
                    fd: port.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one live pollfd.
                unsafe { libc::poll(&mut pfd, 1, 100) };
            }
            Err(e) => panic!("recv_batch: {e}"),
        }
    }
    panic!("no matching frame within {timeout:?}");
}

#[test]
fn drop_with_reads_in_flight_then_reopened_tap_works() {
    in_ns("drop_with_reads_in_flight_then_reopened_tap_works", |dir| {
        let ((na, ta, _), _) = two_sandboxes(dir);
        // Broadcasts need no neighbour: a steady stream of frames into tap a.
        let tx = udp_in(&na, "10.0.0.2:0");
        tx.set_broadcast(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flood = std::thread::spawn({
            let stop = Arc::clone(&stop);
            move || {
                let mut sent = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    let _ = tx.send_to(&sent.to_be_bytes(), "10.0.0.255:7200");
                    sent += 1;
                    if sent.is_multiple_of(64) {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
            }
        });
        let is_flood = |f: &[u8]| {
            f.len() == VNET_HDR_LEN + 14 + 20 + 8 + 4
                && f[VNET_HDR_LEN + 36..VNET_HDR_LEN + 38] == 7200u16.to_be_bytes()
        };
        for depth in [1, 8, 64] {
            for _ in 0..5 {
                let mut port = UringTap::new(Arc::clone(&ta), depth).expect("uring port");
                assert!(!port.in_flight(), "no read before the first recv_batch");
                recv_until(&mut port, Duration::from_secs(5), is_flood);
                assert!(port.in_flight());
                drop(port); // reads in flight, frames arriving
            }
        }
        // Daemon restart: the fd is closed and the persistent tap reopened.
        drop(ta);
        let ta = Arc::new(Tap::reopen(&na, "eth0").expect("reopen"));
        let mut port = UringTap::new(Arc::clone(&ta), 16).expect("uring port on reopened tap");
        let f = recv_until(&mut port, Duration::from_secs(5), is_flood);
        assert_eq!(&f[VNET_HDR_LEN..VNET_HDR_LEN + 6], &[0xff; 6]);
        assert_eq!(&f[VNET_HDR_LEN + 6..VNET_HDR_LEN + 12], &[2, 0, 0, 0, 0, 2]);
        stop.store(true, Ordering::Relaxed);
        flood.join().unwrap();
    });
}

/// Open descriptors of this process.
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, Iterator::count)
}

/// The daemon's life cycle of a port: made on one thread, used on its worker, dropped on
/// the first thread after `remove_port` while its worker lives on and frames still
/// arrive. A deferred ring refuses that thread (single issuer) for the cancel and the
/// buffer ring's unregistration, so it is closed first: the drop must close the ring's
/// and the eventfd's descriptors (a leaked ring fails this) and leave the tap working
/// for the next port. Both kinds of ring.
#[test]
fn port_dropped_on_another_thread_than_its_worker_closes_its_ring() {
    in_ns(
        "port_dropped_on_another_thread_than_its_worker_closes_its_ring",
        |dir| {
            let ((na, ta, _), _) = two_sandboxes(dir);
            let tx = udp_in(&na, "10.0.0.2:0");
            tx.set_broadcast(true).unwrap();
            let stop = Arc::new(AtomicBool::new(false));
            let flood = std::thread::spawn({
                let stop = Arc::clone(&stop);
                move || {
                    let payload = [0xc3u8; 1400];
                    while !stop.load(Ordering::Relaxed) {
                        let _ = tx.send_to(&payload, "10.0.0.255:7201");
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
            });
            let is_flood = |f: &[u8]| {
                f.len() == VNET_HDR_LEN + 14 + 20 + 8 + 1400
                    && f[VNET_HDR_LEN + 36..VNET_HDR_LEN + 38] == 7201u16.to_be_bytes()
            };
            for deferred in [true, false] {
                uring::set_deferred_taskrun(deferred);
                let fds = open_fds();
                for _ in 0..5 {
                    let port = UringTap::new(Arc::clone(&ta), 32).expect("uring port");
                    assert_eq!(port.deferred(), deferred, "kind of ring");
                    // The worker lives on after handing the port back and keeps making
                    // system calls (where cooperative task work would run).
                    let (back_tx, back_rx) = std::sync::mpsc::channel();
                    let done = Arc::new(AtomicBool::new(false));
                    let worker = std::thread::spawn({
                        let done = Arc::clone(&done);
                        move || {
                            let mut port = port;
                            recv_until(&mut port, Duration::from_secs(5), is_flood);
                            back_tx.send(port).unwrap();
                            while !done.load(Ordering::Relaxed) {
                                std::thread::sleep(Duration::from_millis(1));
                            }
                        }
                    });
                    let port = back_rx.recv().unwrap();
                    assert!(port.in_flight());
                    drop(port); // not on its worker; frames arriving
                    std::thread::sleep(Duration::from_millis(50));
                    done.store(true, Ordering::Relaxed);
                    worker.join().unwrap();
                }
                assert_eq!(open_fds(), fds, "ring and eventfd descriptors closed");
                let mut port = UringTap::new(Arc::clone(&ta), 8).expect("uring port after drops");
                recv_until(&mut port, Duration::from_secs(5), is_flood);
            }
            uring::set_deferred_taskrun(true);
            stop.store(true, Ordering::Relaxed);
            flood.join().unwrap();
        },
    );
}
