//! Criterion benchmarks of the switch's forwarding decision.
//!
//! * `decide/<N>_macs`: parse, learn the source, look up the destination and choose the
//!   action, over a batch of 64 unicast frames between known MACs spread across an FDB
//!   of N learned MACs on 64 ports.
//! * `frame_path/<N>_macs`: the same plus the virtio-net header check, on frames as a
//!   port hands them to the worker (header + Ethernet frame).
//!
//! * `decide_spread/<N>_macs`: like `decide`, but every iteration takes the next of many
//!   batches that together touch every MAC in the table, so a large FDB does not stay in
//!   cache (the honest figure for 100,000 MACs).
//!
//! * `decide_policy/<N>_macs`: every one of N MACs on its own endpoint port with a checked
//!   policy (MAC + one IPv4 address), frames are IPv4 with the sender's own source: the
//!   anti-spoofing path (port-table lookup, MAC and IPv4 source checks) on top of `decide`.
//!
//! Throughput is `Elements(64)` per iteration, so criterion reports frames/s.
#![forbid(unsafe_code)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use std::net::Ipv4Addr;
use tapnet_switch::core::{
    check_vnet_hdr, Action, MacAddr, PortId, PortPolicy, PortRole, Switch, SwitchConfig,
};
use tapnet_switch::VNET_HDR_LEN;

const PORTS: u32 = 64;
const BATCH: usize = 64;

/// Locally administered unicast MAC number `i`.
fn mac(i: usize) -> [u8; 6] {
    let b = (i as u32).to_be_bytes();
    [0x02, 0x00, b[0], b[1], b[2], b[3]]
}

fn port_of(i: usize) -> PortId {
    i as PortId % PORTS
}

/// vnet header (zeroed) + Ethernet/IPv4 frame of 64 bytes.
fn frame(dst: [u8; 6], src: [u8; 6]) -> Vec<u8> {
    let mut f = vec![0u8; VNET_HDR_LEN];
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&[0x08, 0x00]);
    f.resize(VNET_HDR_LEN + 64, 0x45);
    f
}

/// IPv4 address number `i` (10.x.y.z).
fn ip(i: usize) -> Ipv4Addr {
    let b = (i as u32).to_be_bytes();
    Ipv4Addr::new(10, b[1], b[2], b[3])
}

/// vnet header (zeroed) + Ethernet/IPv4 frame of 64 bytes whose IPv4 source is `src_ip`.
fn ipv4_frame(dst: [u8; 6], src: [u8; 6], src_ip: Ipv4Addr) -> Vec<u8> {
    let mut f = frame(dst, src);
    let l3 = VNET_HDR_LEN + 14;
    f[l3..l3 + 20].fill(0);
    f[l3] = 0x45;
    f[l3 + 8] = 64;
    f[l3 + 9] = 17;
    f[l3 + 12..l3 + 16].copy_from_slice(&src_ip.octets());
    f
}

/// A switch with `macs` checked endpoint ports, port i owning MAC i and IPv4 i, all
/// learned, and a batch of 64 unicast IPv4 frames between them with honest sources.
fn setup_policy(macs: usize) -> (Switch, Vec<(Vec<u8>, PortId)>) {
    let mut sw = Switch::new(SwitchConfig {
        ageing_ms: u64::MAX / 2,
        fdb_limit: macs * 2,
        fdb_port_limit: macs * 2,
        ..SwitchConfig::default()
    });
    let bcast = [0xff; 6];
    for i in 0..macs {
        let policy = PortPolicy::new(MacAddr(mac(i)), vec![ip(i)], vec![]);
        sw.set_port(i as PortId, PortRole::Endpoint, Some(policy));
        let f = ipv4_frame(bcast, mac(i), ip(i));
        assert!(matches!(
            sw.decide(&f[VNET_HDR_LEN..], i as PortId, 0),
            Action::Flood { .. }
        ));
    }
    assert_eq!(sw.fdb_len(), macs);
    let stride = macs / BATCH;
    let batch = (0..BATCH)
        .map(|k| {
            let s = k * stride;
            let d = (s + stride / 2 + 1) % macs;
            (ipv4_frame(mac(d), mac(s), ip(s)), s as PortId)
        })
        .collect::<Vec<_>>();
    for (f, p) in &batch {
        assert!(matches!(sw.decide(&f[VNET_HDR_LEN..], *p, 1), Action::Unicast(q) if q != *p));
    }
    (sw, batch)
}

/// A switch that has learned `macs` MACs round-robin over 64 ports, and a batch of 64
/// unicast frames (with their ingress ports) between known MACs spread over the table.
fn setup(macs: usize) -> (Switch, Vec<(Vec<u8>, PortId)>) {
    let mut sw = Switch::new(SwitchConfig {
        ageing_ms: u64::MAX / 2,
        fdb_limit: macs * 2,
        fdb_port_limit: macs * 2,
        ..SwitchConfig::default()
    });
    let bcast = [0xff; 6];
    for i in 0..macs {
        let f = frame(bcast, mac(i));
        sw.decide(&f[VNET_HDR_LEN..], port_of(i), 0);
    }
    assert_eq!(sw.fdb_len(), macs);
    let stride = macs / BATCH;
    let batch = (0..BATCH)
        .map(|k| {
            let s = k * stride;
            let d = (s + stride / 2 + 1) % macs; // another MAC, on another port
            (frame(mac(d), mac(s)), port_of(s))
        })
        .collect::<Vec<_>>();
    for (f, p) in &batch {
        assert!(matches!(sw.decide(&f[VNET_HDR_LEN..], *p, 1), Action::Unicast(q) if q != *p));
    }
    (sw, batch)
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("decide");
    g.throughput(Throughput::Elements(BATCH as u64));
    for macs in [1_000usize, 100_000] {
        let (mut sw, batch) = setup(macs);
        let eth: Vec<(&[u8], PortId)> = batch
            .iter()
            .map(|(f, p)| (&f[VNET_HDR_LEN..], *p))
            .collect();
        g.bench_with_input(
            BenchmarkId::from_parameter(format!("{macs}_macs")),
            &eth,
            |b, eth| {
                b.iter(|| {
                    for &(f, p) in eth {
                        black_box(sw.decide(black_box(f), p, 2));
                    }
                })
            },
        );
    }
    g.finish();

    let mut g = c.benchmark_group("decide_spread");
    g.throughput(Throughput::Elements(BATCH as u64));
    for macs in [1_000usize, 100_000] {
        let (mut sw, _) = setup(macs);
        // Batches that walk the whole table: frame k of batch j goes from MAC
        // (j * 64 + k) to a MAC half the table away, on another port.
        let batches: Vec<Vec<(Vec<u8>, PortId)>> = (0..macs.div_ceil(BATCH))
            .map(|j| {
                (0..BATCH)
                    .map(|k| {
                        let s = (j * BATCH + k) % macs;
                        let d = (s + macs / 2 + 1) % macs;
                        (frame(mac(d), mac(s)), port_of(s))
                    })
                    .collect()
            })
            .collect();
        let mut next = 0usize;
        g.bench_function(BenchmarkId::from_parameter(format!("{macs}_macs")), |b| {
            b.iter(|| {
                let batch = &batches[next];
                next = (next + 1) % batches.len();
                for (f, p) in batch {
                    black_box(sw.decide(black_box(&f[VNET_HDR_LEN..]), *p, 2));
                }
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("decide_policy");
    g.throughput(Throughput::Elements(BATCH as u64));
    // 1,000 only: one checked port per MAC.
    let macs = 1_000usize;
    let (mut sw, batch) = setup_policy(macs);
    let eth: Vec<(&[u8], PortId)> = batch
        .iter()
        .map(|(f, p)| (&f[VNET_HDR_LEN..], *p))
        .collect();
    g.bench_with_input(
        BenchmarkId::from_parameter(format!("{macs}_macs")),
        &eth,
        |b, eth| {
            b.iter(|| {
                for &(f, p) in eth {
                    black_box(sw.decide(black_box(f), p, 2));
                }
            })
        },
    );
    g.finish();

    let mut g = c.benchmark_group("frame_path");
    g.throughput(Throughput::Elements(BATCH as u64));
    for macs in [1_000usize, 100_000] {
        let (mut sw, batch) = setup(macs);
        g.bench_with_input(
            BenchmarkId::from_parameter(format!("{macs}_macs")),
            &batch,
            |b, batch| {
                b.iter(|| {
                    for (f, p) in batch {
                        let f = black_box(f.as_slice());
                        let action = match f.split_at_checked(VNET_HDR_LEN) {
                            None => None,
                            Some((hdr, eth)) => match check_vnet_hdr(hdr, eth.len()) {
                                Err(_) => None,
                                Ok(()) => Some(sw.decide(eth, *p, 2)),
                            },
                        };
                        black_box(action);
                    }
                })
            },
        );
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
