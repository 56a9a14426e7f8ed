//! Criterion benchmarks of tap port I/O over a real tap pair: one `read`/`write` per
//! frame (`rw`, [`tapnet_sandbox::uring::RwTap`]) vs io_uring
//! ([`tapnet_sandbox::uring::UringTap`]).
//!
//! Setup (root only; skipped with a message otherwise, or without `/dev/net/tun`): the
//! bench process moves to a fresh network namespace and makes two taps, `ta` and `tb`,
//! enslaved to a kernel bridge. Each iteration writes a batch of 64 frames into `ta`
//! with the port's `send_batch` (the kernel bridges them to `tb`) and reads them back
//! from `tb` with `recv_batch`, so one iteration is one batch written and read by the
//! port type under test. Frames: 64 B (Ethernet, vnet header in front) and 64 KiB TSO4
//! GSO super-frames. Throughput is in frames, so criterion reports frames/s.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::io;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tapnet_sandbox::netns::Netns;
use tapnet_sandbox::tap::{Tap, TapConfig};
use tapnet_sandbox::uring::{RwTap, UringTap};
use tapnet_switch::runtime::{FrameBatch, FrameIo, Frames, BATCH_BUF_LEN, RECV_BUF_LEN};
use tapnet_wire::vnet::{GsoType, VnetHdrRepr, VNET_HDR_LEN};

const BATCH: usize = 64;
/// The endpoints' MACs (behind the taps; the taps' own MACs differ, or the bridge
/// would take frames for them as its own).
const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 0xa];
const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 0xb];

/// A 64-byte Ethernet frame from A to B (vnet header in front, no offloads).
fn small_frame(tag: u8) -> Vec<u8> {
    let mut f = vec![0u8; VNET_HDR_LEN];
    f.extend_from_slice(&MAC_B);
    f.extend_from_slice(&MAC_A);
    f.extend_from_slice(&[0x88, 0xb5]); // local experimental ethertype
    f.resize(VNET_HDR_LEN + 64, tag);
    f
}

/// A TSO4 super-frame from A to B with `payload` bytes of TCP payload.
fn super_frame(payload: usize) -> Vec<u8> {
    let mut f = VnetHdrRepr::partial_csum(34, 16)
        .with_gso(GsoType::TcpV4, 54, 1448)
        .to_bytes()
        .to_vec();
    f.extend_from_slice(&MAC_B);
    f.extend_from_slice(&MAC_A);
    f.extend_from_slice(&[0x08, 0x00]);
    let total = (20 + 20 + payload) as u16;
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&total.to_be_bytes());
    f.extend_from_slice(&[0, 1, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2]);
    let ip = VNET_HDR_LEN + 14;
    let sum = f[ip..ip + 20]
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum::<u32>();
    let sum = !(((sum & 0xffff) + (sum >> 16)) as u16);
    f[ip + 10..ip + 12].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&[0x30, 0x39, 0x00, 0x50, 0, 0, 0, 1, 0, 0, 0, 7, 0x50, 0x10]);
    f.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0]);
    f.extend((0..payload).map(|i| i as u8));
    f
}

fn ip(args: &[&str]) {
    let st = Command::new("ip").args(args).status().expect("run ip");
    assert!(st.success(), "ip {args:?}");
}

/// Two taps on a kernel bridge in a fresh namespace, or why not.
fn setup() -> Result<(Arc<Tap>, Arc<Tap>), String> {
    // SAFETY: geteuid takes no arguments.
    if unsafe { libc::geteuid() } != 0 {
        return Err("not root".into());
    }
    if !Path::new("/dev/net/tun").exists() {
        return Err("no /dev/net/tun".into());
    }
    // SAFETY: unshare takes flags only; this thread (and what it spawns) moves to a new
    // network namespace, nothing else in the process depends on the old one.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(format!(
            "unshare(CLONE_NEWNET): {}",
            io::Error::last_os_error()
        ));
    }
    let ns = Netns::open(Path::new("/proc/thread-self/ns/net")).map_err(|e| e.to_string())?;
    let tap = |name: &str, mac| {
        let cfg = TapConfig {
            name: name.into(),
            mac,
            mtu: 1500,
            txqueuelen: 10_000,
            ..TapConfig::default()
        };
        Tap::create(&ns, &cfg)
            .map(Arc::new)
            .map_err(|e| e.to_string())
    };
    let (a, b) = (
        tap("ta", [2, 0, 0, 0, 1, 0xa])?,
        tap("tb", [2, 0, 0, 0, 1, 0xb])?,
    );
    ip(&["link", "add", "br0", "type", "bridge"]);
    for t in ["ta", "tb"] {
        ip(&["link", "set", t, "master", "br0"]);
    }
    ip(&["link", "set", "br0", "up"]);
    // Let the bridge learn B's MAC on tb, so A→B frames go to tb only.
    let mut learn = small_frame(0);
    learn[VNET_HDR_LEN..VNET_HDR_LEN + 6].copy_from_slice(&[0xff; 6]);
    learn[VNET_HDR_LEN + 6..VNET_HDR_LEN + 12].copy_from_slice(&MAC_B);
    b.write(&learn).map_err(|e| format!("write tb: {e}"))?;
    Ok((a, b))
}

/// Write `frames` into `tx`, then read as many from `rx`, waiting on its fd.
fn round(tx: &mut dyn FrameIo, rx: &mut dyn FrameIo, frames: &FrameBatch, got: &mut FrameBatch) {
    tx.send_batch(Frames::all(frames)).expect("send_batch");
    let mut n = 0;
    // Frames the kernel sends out of tb on its own (none expected: no addresses, and
    // only A→B frames) would count too; the bridge floods nothing else here.
    let deadline = Instant::now() + Duration::from_secs(5);
    while n < frames.len() {
        got.clear();
        match rx.recv_batch(got) {
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                assert!(
                    Instant::now() < deadline,
                    "frames lost: {n} of {}",
                    frames.len()
                );
                let mut pfd = libc::pollfd {
                    fd: rx.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one live pollfd.
                unsafe { libc::poll(&mut pfd, 1, 100) };
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => panic!("recv_batch: {e}"),
        }
    }
}

fn bench(c: &mut Criterion) {
    let (a, b) = match setup() {
        Ok(t) => t,
        Err(why) => {
            eprintln!("tap_io: skipped ({why}): needs root and /dev/net/tun");
            return;
        }
    };
    let mut group = c.benchmark_group("tap_io");
    group.throughput(Throughput::Elements(BATCH as u64));
    for (size, frame) in [("64B", small_frame(1)), ("64KiB_gso", super_frame(65000))] {
        let mut frames = FrameBatch::new(BATCH, 0, BATCH * frame.len());
        for _ in 0..BATCH {
            frames.spare()[..frame.len()].copy_from_slice(&frame);
            frames.commit(frame.len());
        }
        let mut got = FrameBatch::new(BATCH, RECV_BUF_LEN, BATCH_BUF_LEN.max(BATCH * 2048));
        for mode in ["rw", "uring"] {
            let (mut tx, mut rx): (Box<dyn FrameIo>, Box<dyn FrameIo>) = match mode {
                "rw" => (
                    Box::new(RwTap::new(Arc::clone(&a))),
                    Box::new(RwTap::new(Arc::clone(&b))),
                ),
                _ => (
                    Box::new(UringTap::new(Arc::clone(&a), 64).expect("uring a")),
                    Box::new(UringTap::new(Arc::clone(&b), 64).expect("uring b")),
                ),
            };
            group.bench_function(format!("{mode}/{size}"), |bch| {
                bch.iter(|| round(tx.as_mut(), rx.as_mut(), &frames, &mut got))
            });
        }
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
