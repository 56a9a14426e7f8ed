//! Criterion benchmarks of the NAT gateway's per-packet flow lookup.
//!
//! The gateway (`tapnet_nat::runtime`) finds a packet's flow by its (inside, outside)
//! socket-address pair: UDP in a [`FlowTable`] (`touch`, which also marks the flow used),
//! TCP in a map from that pair to a flow id and then the flow by id. With N flows in the
//! table (1,000 and 65,536):
//!
//! * `udp_touch/<N>_flows`: `FlowTable::touch` of 64 keys of live flows, spread over the
//!   whole table (every iteration takes the next batch, so a large table does not stay
//!   in cache);
//! * `tcp_two_level/<N>_flows`: the TCP path's two lookups for the same kind of batch;
//! * `udp_miss/<N>_flows`: `touch` of 64 keys with no flow (the first packet of a new
//!   flow, or a stray one).
//!
//! Throughput is `Elements(64)` per iteration, so criterion reports lookups/s.
#![forbid(unsafe_code)]
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rustc_hash::FxHashMap;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use tapnet_nat::flows::FlowTable;

const BATCH: usize = 64;
type Key = (SocketAddr, SocketAddr);

/// Flow `i`: one of 250 sandboxes, a source port, one of 1,024 outside servers on 443.
fn key(i: usize) -> Key {
    let inside = SocketAddr::new(
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, (i % 250) as u8 + 2)),
        32_768 + (i / 250) as u16,
    );
    let j = (i.wrapping_mul(2_654_435_761) >> 4) % 1_024;
    let outside = SocketAddr::new(
        IpAddr::V4(Ipv4Addr::new(198, 51, (j / 256) as u8, (j % 256) as u8)),
        443,
    );
    (inside, outside)
}

/// Batches of keys of live flows, in a scattered order that touches every flow.
fn batches(n: usize) -> Vec<Vec<Key>> {
    let stride = 7_919; // a prime: coprime with both table sizes
    let order: Vec<usize> = (0..n).map(|i| (i * stride) % n).collect();
    order
        .chunks(BATCH)
        .filter(|c| c.len() == BATCH)
        .map(|c| c.iter().map(|&i| key(i)).collect())
        .collect()
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("nat_flows");
    g.throughput(Throughput::Elements(BATCH as u64));
    for n in [1_000usize, 65_536] {
        let mut udp: FlowTable<Key, u64> = FlowTable::new(60_000);
        let mut by_key: FxHashMap<Key, u64> = FxHashMap::default();
        let mut tcp: FxHashMap<u64, [u64; 8]> = FxHashMap::default();
        for i in 0..n {
            udp.insert(key(i), i as u64, 0);
            by_key.insert(key(i), i as u64);
            tcp.insert(i as u64, [i as u64; 8]);
        }
        let hits = batches(n);
        let misses: Vec<Key> = (n..n + BATCH).map(key).collect();

        let mut next = 0usize;
        let mut now = 1u64;
        g.bench_function(BenchmarkId::new("udp_touch", format!("{n}_flows")), |b| {
            b.iter(|| {
                next = (next + 1) % hits.len();
                now += 1;
                let mut sum = 0u64;
                for k in &hits[next] {
                    if let Some(v) = udp.touch(black_box(k), now) {
                        sum = sum.wrapping_add(*v);
                    }
                }
                black_box(sum)
            })
        });
        g.bench_function(
            BenchmarkId::new("tcp_two_level", format!("{n}_flows")),
            |b| {
                b.iter(|| {
                    next = (next + 1) % hits.len();
                    let mut sum = 0u64;
                    for k in &hits[next] {
                        if let Some(f) = by_key.get(black_box(k)).and_then(|id| tcp.get(id)) {
                            sum = sum.wrapping_add(f[0]);
                        }
                    }
                    black_box(sum)
                })
            },
        );
        g.bench_function(BenchmarkId::new("udp_miss", format!("{n}_flows")), |b| {
            b.iter(|| {
                now += 1;
                let mut found = 0u32;
                for k in &misses {
                    found += u32::from(udp.touch(black_box(k), now).is_some());
                }
                black_box(found)
            })
        });
        // Every key was live (hit) or absent (miss) as the bench says.
        assert!(hits.iter().flatten().all(|k| udp.get(k).is_some()));
        assert!(misses.iter().all(|k| udp.get(k).is_none()));
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
