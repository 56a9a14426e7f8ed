//! Criterion benchmarks of the encrypted overlay's AEAD path ([`tapnet_vxlan::crypt`]).
//!
//! * `seal/<N>B`: seal one datagram (VXLAN header + N-byte inner frame) in place with a
//!   port's [`KeyRing`] (AES-256-GCM, next nonce), as the tunnel port does before each
//!   send; the frame is copied into the buffer first, as the port does.
//! * `open/<N>B`: open one sealed datagram in place and check its replay window, as
//!   the port does after each receive (a copy of the next of 4096 distinct sealed
//!   datagrams each iteration: opening is in place, and a replay is refused).
//! * `plain_copy/<N>B`: the copy alone, the baseline both include.
//!
//! Throughput is `Bytes(N)` per iteration (inner-frame bytes).
#![forbid(unsafe_code)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use tapnet_vxlan::crypt::{KeyRing, KEY_LEN, OVERHEAD};
use tapnet_vxlan::header::{emit_header, Vni, VXLAN_HDR_LEN};
use tapnet_vxlan::{KeyMaterial, KeySet};

fn keys() -> KeySet {
    KeySet {
        keys: vec![KeyMaterial {
            id: 1,
            key: [0x42; KEY_LEN],
        }],
        send: Some(1),
    }
}

fn bench(c: &mut Criterion) {
    let vni = Vni::new(4242).unwrap_or_else(|| unreachable!());
    for size in [64usize, 1400] {
        let frame: Vec<u8> = (0..size).map(|i| i as u8).collect();
        let mut buf = vec![0u8; VXLAN_HDR_LEN + size + OVERHEAD];
        let len = VXLAN_HDR_LEN + size;
        let mut tx = KeyRing::new(&keys());
        let mut rx = KeyRing::new(&keys());

        let mut g = c.benchmark_group("crypt");
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(BenchmarkId::new("plain_copy", format!("{size}B")), |b| {
            b.iter(|| {
                buf[VXLAN_HDR_LEN..len].copy_from_slice(black_box(&frame));
                black_box(&buf);
            })
        });
        g.bench_function(BenchmarkId::new("seal", format!("{size}B")), |b| {
            b.iter(|| {
                let _ = emit_header(vni, &mut buf);
                buf[VXLAN_HDR_LEN..len].copy_from_slice(black_box(&frame));
                black_box(tx.seal(&mut buf, len).ok())
            })
        });
        // Distinct datagrams (a replayed one is refused); the receive windows are
        // reset once per batch.
        const BATCH: usize = 4096;
        let sealed: Vec<Vec<u8>> = (0..BATCH)
            .map(|_| {
                let _ = emit_header(vni, &mut buf);
                buf[VXLAN_HDR_LEN..len].copy_from_slice(&frame);
                let n = tx.seal(&mut buf, len).unwrap_or(0);
                buf[..n].to_vec()
            })
            .collect();
        let sealed_len = sealed[0].len();
        let mut i = 0;
        g.bench_function(BenchmarkId::new("open", format!("{size}B")), |b| {
            b.iter(|| {
                if i == BATCH {
                    rx.update(&KeySet::default());
                    rx.update(&keys());
                    i = 0;
                }
                buf[..sealed_len].copy_from_slice(black_box(&sealed[i]));
                i += 1;
                black_box(rx.open(&mut buf, sealed_len).ok())
            })
        });
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
