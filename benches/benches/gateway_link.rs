//! Criterion benchmarks of the switch↔gateway link: one frame from the switch to the
//! gateway and one back, on the in-process link (`tapnet_nat::port`, the engine's default)
//! and on the socket pair it replaced (`UnixDatagram::pair`, 8 MiB buffers asked for as
//! the engine did), for a 64 KiB GSO super-frame and a 64-byte frame.
//!
//! * `to_gateway/<link>/<size>`: the switch's `send` plus the gateway taking the frame
//!   (link: `GatewayLink::recv`, buffer given back for reuse; socket: `recv`).
//! * `to_switch/<link>/<size>`: the gateway queuing a frame in a reused buffer plus the
//!   switch's `recv` into its own buffer (link: spent buffers taken back).
//!
//! Throughput is `Bytes(size)`, so criterion reports bytes/s.
#![forbid(unsafe_code)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::collections::VecDeque;
use std::hint::black_box;
use std::os::unix::net::UnixDatagram;
use tapnet_nat::port;
use tapnet_switch::runtime::FrameIo;

const SIZES: [usize; 2] = [64, 65536 + 12];

fn socket_pair() -> (UnixDatagram, UnixDatagram) {
    let (a, b) = UnixDatagram::pair().expect("pair");
    for s in [&a, &b] {
        let r = socket2::SockRef::from(s);
        let _ = r.set_send_buffer_size(8 << 20);
        let _ = r.set_recv_buffer_size(8 << 20);
        s.set_nonblocking(true).expect("nonblocking");
    }
    (a, b)
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("to_gateway");
    for size in SIZES {
        let frame = vec![0x5au8; size];
        g.throughput(Throughput::Bytes(size as u64));
        let (mut sw, gw) = port::link().expect("link");
        let mut q = VecDeque::new();
        g.bench_with_input(BenchmarkId::new("link", size), &frame, |b, f| {
            b.iter(|| {
                sw.send(black_box(f)).expect("send");
                gw.recv(&mut q, 1);
                if let Some(buf) = q.pop_front() {
                    gw.give(black_box(buf));
                }
            })
        });
        let (a, bsock) = socket_pair();
        let mut buf = vec![0u8; 70_000];
        g.bench_with_input(BenchmarkId::new("socketpair", size), &frame, |b, f| {
            b.iter(|| {
                a.send(black_box(f)).expect("send");
                black_box(bsock.recv(&mut buf).expect("recv"));
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("to_switch");
    for size in SIZES {
        g.throughput(Throughput::Bytes(size as u64));
        let (mut sw, gw) = port::link().expect("link");
        let mut spare = vec![vec![0x5au8; size]];
        let mut buf = vec![0u8; 70_000];
        g.bench_function(BenchmarkId::new("link", size), |b| {
            b.iter(|| {
                let f = spare.pop().unwrap_or_else(|| vec![0x5au8; size]);
                gw.send(f).map_err(|(_, k)| k).expect("send");
                black_box(sw.recv(&mut buf).expect("recv"));
                gw.take_spent(&mut spare);
            })
        });
        let (a, bsock) = socket_pair();
        let frame = vec![0x5au8; size];
        g.bench_function(BenchmarkId::new("socketpair", size), |b| {
            b.iter(|| {
                bsock.send(black_box(&frame)).expect("send");
                black_box(a.recv(&mut buf).expect("recv"));
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
