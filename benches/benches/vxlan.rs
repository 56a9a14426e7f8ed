//! Criterion benchmarks of the VXLAN datapath's per-packet work (no I/O).
//!
//! * `encap/1450` and `decap/1450`: one 1,450-byte inner frame (header written and the
//!   frame copied; header checked and the inner frame sliced).
//! * `segment_encap/64k`: what [`tapnet_vxlan::VxlanPort`] does to a 64 KiB TSO4
//!   super-frame before its UDP GSO send: cut into 1,398-byte segments (headers and
//!   checksums per segment) and each encapsulated in place, a fixed stride apart.
//! * `decap_coalesce/64k`: the receive side: the 47 datagrams of that super-frame,
//!   decapsulated and merged back into one GSO super-frame.
//!
//! Throughput is in bytes of inner frame, so criterion reports GiB/s.
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, missing_docs)]

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;
use tapnet_vxlan::coalesce::Coalescer;
use tapnet_vxlan::header::{decap, emit_header, encap, Vni, VXLAN_HDR_LEN};
use tapnet_wire::gso::{segment_to_vecs, Segmenter};
use tapnet_wire::vnet::{GsoType, VnetHdrRepr, VNET_HDR_LEN};

const MSS: u16 = 1398;

/// A TSO4 super-frame (vnet header + frame) with `payload` bytes, TCP timestamps on.
fn super_frame(payload: usize) -> Vec<u8> {
    let mut f = VnetHdrRepr::partial_csum(34, 16)
        .with_gso(GsoType::TcpV4, 66, MSS)
        .to_bytes()
        .to_vec();
    f.extend_from_slice(&[2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00]);
    let total = (20 + 32 + payload) as u16;
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&total.to_be_bytes());
    f.extend_from_slice(&[0, 1, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2]);
    f.extend_from_slice(&[0x30, 0x39, 0x00, 0x50, 0, 0, 0, 1, 0, 0, 0, 7, 0x80, 0x10]);
    f.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0]);
    f.extend_from_slice(&[1, 1, 8, 10, 0, 0, 0, 5, 0, 0, 0, 6]);
    f.extend((0..payload).map(|i| i as u8));
    f
}

fn bench(c: &mut Criterion) {
    let vni = Vni::new(4242).unwrap();
    let frame = vec![0x5au8; 1450];
    let mut out = vec![0u8; 2048];
    let mut g = c.benchmark_group("vxlan");
    g.throughput(Throughput::Bytes(frame.len() as u64));
    g.bench_function("encap/1450", |b| {
        b.iter(|| encap(vni, black_box(&frame), &mut out).unwrap())
    });
    let n = encap(vni, &frame, &mut out).unwrap();
    let datagram = out[..n].to_vec();
    g.bench_function("decap/1450", |b| {
        b.iter(|| decap(black_box(&datagram)).unwrap().1.len())
    });

    let payload = 65_536 - 66;
    let sf = super_frame(payload);
    g.throughput(Throughput::Bytes((sf.len() - VNET_HDR_LEN) as u64));
    let mut tx = vec![0u8; 128 * 1024];
    g.bench_function("segment_encap/64k", |b| {
        b.iter(|| {
            let mut seg = Segmenter::new(black_box(&sf)).unwrap();
            let stride = VXLAN_HDR_LEN + seg.max_frame_len();
            let mut at = 0;
            loop {
                let out = &mut tx[at..at + stride];
                emit_header(vni, out).unwrap();
                match seg.next_into(&mut out[VXLAN_HDR_LEN..]).unwrap() {
                    Some(len) => at += VXLAN_HDR_LEN + len,
                    None => break,
                }
            }
            at
        })
    });

    // The receive side: the same super-frame's datagrams, stride apart, as GRO gives them.
    let mut segs = Vec::new();
    segment_to_vecs(&sf, &mut segs).unwrap();
    let stride = VXLAN_HDR_LEN + segs[0].len();
    let mut rx = Vec::new();
    for s in &segs {
        let start = rx.len();
        rx.resize(start + VXLAN_HDR_LEN + s.len(), 0);
        encap(vni, s, &mut rx[start..]).unwrap();
    }
    let mut buf = vec![0u8; 70_000];
    g.bench_function("decap_coalesce/64k", |b| {
        b.iter(|| {
            let mut chunks = black_box(&rx).chunks(stride);
            let (_, first) = decap(chunks.next().unwrap()).unwrap();
            buf[VNET_HDR_LEN..VNET_HDR_LEN + first.len()].copy_from_slice(first);
            let mut c = Coalescer::start(&buf, first.len()).unwrap();
            for d in chunks {
                let (_, inner) = decap(d).unwrap();
                assert!(c.append(&mut buf, inner));
            }
            assert_eq!(c.segments(), segs.len());
            c.finish(&mut buf)
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
