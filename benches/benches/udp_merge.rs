//! Criterion benchmarks of UDP merging toward taps ([`tapnet_wire::uso`], no I/O): what a
//! tap port does to a batch before it writes it.
//!
//! * `plan/64x64B`: 64 datagrams of 64 bytes of one flow, checksums complete (each is
//!   verified) — one run.
//! * `plan_build/64x64B`: the same, and the super-frame built (headers of the whole,
//!   the 64 payloads copied).
//! * `plan/64_tcp`: a batch the planner passes over without merging anything (64 TCP
//!   frames): the cost merging adds to a batch it does not help.
//!
//! Throughput is in datagrams (elements).
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, missing_docs)]

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;
use tapnet_wire::checksum;
use tapnet_wire::uso::{build, plan, Families, Run};
use tapnet_wire::vnet::VNET_HDR_LEN;

/// A port datagram: IPv4 UDP 10.0.0.2:5000 → 10.0.0.3:53 (or TCP with `proto` 6), its
/// checksums complete, `len` bytes of payload.
fn datagram(proto: u8, seq: usize, len: usize) -> Vec<u8> {
    let mut f = vec![0u8; VNET_HDR_LEN];
    f.extend_from_slice(&[2, 0, 0, 0, 0, 3, 2, 0, 0, 0, 0, 2, 0x08, 0x00]);
    let l4_len = if proto == 17 { 8 } else { 20 } + len;
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&((20 + l4_len) as u16).to_be_bytes());
    f.extend_from_slice(&(seq as u16).to_be_bytes());
    f.extend_from_slice(&[0x40, 0, 64, proto, 0, 0, 10, 0, 0, 2, 10, 0, 0, 3]);
    checksum::fill_ipv4_header(&mut f[VNET_HDR_LEN + 14..]).unwrap();
    let l4 = f.len();
    f.extend_from_slice(&[0x13, 0x88, 0, 53]);
    if proto == 17 {
        f.extend_from_slice(&(l4_len as u16).to_be_bytes());
        f.extend_from_slice(&[0, 0]);
    } else {
        f.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1, 0x50, 0x10, 0xff, 0xff, 0, 0, 0, 0]);
    }
    f.extend((0..len).map(|i| (i + seq) as u8));
    let sum = checksum::pseudo_raw(&[10, 0, 0, 2, 10, 0, 0, 3], proto, l4_len as u32)
        .add_bytes(&f[l4..])
        .checksum();
    let at = l4 + if proto == 17 { 6 } else { 16 };
    f[at..at + 2].copy_from_slice(&sum.to_be_bytes());
    f
}

fn bench(c: &mut Criterion) {
    let v4 = Families {
        v4: true,
        v6: false,
    };
    let udp: Vec<Vec<u8>> = (0..64).map(|i| datagram(17, i, 64)).collect();
    let tcp: Vec<Vec<u8>> = (0..64).map(|i| datagram(6, i, 64)).collect();
    let mut runs: Vec<Run> = Vec::with_capacity(64);
    let mut out = Vec::with_capacity(64 * 1024);
    let mut g = c.benchmark_group("udp_merge");
    g.throughput(Throughput::Elements(64));
    g.bench_function("plan/64x64B", |b| {
        b.iter(|| {
            plan(black_box(&udp).iter().map(Vec::as_slice), v4, &mut runs);
            runs.len()
        })
    });
    g.bench_function("plan_build/64x64B", |b| {
        b.iter(|| {
            plan(black_box(&udp).iter().map(Vec::as_slice), v4, &mut runs);
            out.clear();
            build(udp.iter().map(Vec::as_slice), &mut out)
                .unwrap()
                .len()
        })
    });
    g.bench_function("plan/64_tcp", |b| {
        b.iter(|| {
            plan(black_box(&tcp).iter().map(Vec::as_slice), v4, &mut runs);
            runs.len()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
