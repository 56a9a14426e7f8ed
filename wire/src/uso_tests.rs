//! Unit tests of [`super`]: runs planned over literal datagrams, and every super-frame
//! cut back by [`crate::gso::Segmenter`] (the kernel's job) into the datagrams that went
//! in, checksums checked by smoltcp.
#![allow(clippy::unwrap_used)]

use super::*;
use crate::gso::segment_to_vecs;
use smoltcp::wire::{IpAddress, Ipv4Packet, Ipv6Packet, UdpPacket};
use std::net::{Ipv4Addr, Ipv6Addr};

const V4: Families = Families {
    v4: true,
    v6: false,
};
const BOTH: Families = Families { v4: true, v6: true };

/// How a test datagram's checksum is given.
#[derive(Clone, Copy, PartialEq)]
enum Csum {
    /// Complete and correct, virtio-net flags 0.
    Full,
    /// Complete but wrong.
    Bad,
    /// `NEEDS_CSUM`: the field holds the pseudo-header sum.
    Partial,
    /// Zero (no checksum), flags 0.
    Zero,
}

/// A port datagram: virtio-net header + Ethernet + IPv4/IPv6 + UDP `sport -> 53` with
/// `payload`, IPv4 id `id`.
fn udp(v6: bool, sport: u16, id: u16, payload: &[u8], csum: Csum) -> Vec<u8> {
    let mut f = vec![0u8; VNET_HDR_LEN];
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1]);
    let udp_len = UDP_HDR + payload.len();
    let addrs: Vec<u8> = if v6 {
        f.extend_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
        f.extend_from_slice(&[0x60, 0, 0, 0]);
        f.extend_from_slice(&(udp_len as u16).to_be_bytes());
        f.extend_from_slice(&[IPPROTO_UDP, 64]);
        let mut a = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2).octets().to_vec();
        a.extend_from_slice(&Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 3).octets());
        f.extend_from_slice(&a);
        a
    } else {
        f.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        let ip_at = f.len();
        f.extend_from_slice(&[0x45, 0]);
        f.extend_from_slice(&((IPV4_HDR + udp_len) as u16).to_be_bytes());
        f.extend_from_slice(&id.to_be_bytes());
        f.extend_from_slice(&[0x40, 0, 64, IPPROTO_UDP, 0, 0]);
        let mut a = Ipv4Addr::new(10, 0, 0, 2).octets().to_vec();
        a.extend_from_slice(&Ipv4Addr::new(10, 0, 0, 3).octets());
        f.extend_from_slice(&a);
        checksum::fill_ipv4_header(&mut f[ip_at..]).unwrap();
        a
    };
    let udp_at = f.len();
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&53u16.to_be_bytes());
    f.extend_from_slice(&(udp_len as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    let pseudo = checksum::pseudo_raw(&addrs, IPPROTO_UDP, udp_len as u32);
    let field = match csum {
        Csum::Full => match pseudo.add_bytes(&f[udp_at..]).checksum() {
            0 => 0xffff,
            c => c,
        },
        Csum::Bad => pseudo.add_bytes(&f[udp_at..]).checksum() ^ 0x5a5a,
        Csum::Partial => pseudo.fold(),
        Csum::Zero => 0,
    };
    f[udp_at + 6..udp_at + 8].copy_from_slice(&field.to_be_bytes());
    if csum == Csum::Partial {
        let hdr = VnetHdrRepr::partial_csum((udp_at - VNET_HDR_LEN) as u16, 6);
        f[..VNET_HDR_LEN].copy_from_slice(&hdr.to_bytes());
    }
    f
}

fn payload(n: usize, seed: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + seed * 31) as u8).collect()
}

fn planned(frames: &[Vec<u8>], families: Families) -> Vec<(usize, usize)> {
    let mut runs = Vec::new();
    plan(frames.iter().map(Vec::as_slice), families, &mut runs);
    runs.iter().map(|r| (r.start, r.len)).collect()
}

/// The UDP payloads, source ports and checksum validity of a super-frame cut back into
/// datagrams by the segmenter.
fn cut(super_frame: &[u8]) -> Vec<(u16, Vec<u8>)> {
    let mut out = Vec::new();
    segment_to_vecs(super_frame, &mut out).unwrap();
    out.iter()
        .map(|f| {
            let eth = f.as_slice();
            let (l4, src, dst): (&[u8], IpAddress, IpAddress) = if eth[12..14] == [0x86, 0xdd] {
                let ip = Ipv6Packet::new_checked(&eth[ETH_HDR_LEN..]).unwrap();
                let (s, d) = (ip.src_addr(), ip.dst_addr());
                (&eth[ETH_HDR_LEN + IPV6_HDR..], s.into(), d.into())
            } else {
                let ip = Ipv4Packet::new_checked(&eth[ETH_HDR_LEN..]).unwrap();
                assert!(ip.verify_checksum(), "IPv4 header checksum of a segment");
                let (s, d) = (ip.src_addr(), ip.dst_addr());
                (&eth[ETH_HDR_LEN + IPV4_HDR..], s.into(), d.into())
            };
            let u = UdpPacket::new_checked(l4).unwrap();
            assert!(u.verify_checksum(&src, &dst), "UDP checksum of a segment");
            (u.src_port(), u.payload().to_vec())
        })
        .collect()
}

#[test]
fn a_flood_of_one_flow_becomes_one_super_frame_and_cuts_back_into_it() {
    for v6 in [false, true] {
        let frames: Vec<Vec<u8>> = (0..10)
            .map(|i| udp(v6, 5000, 100 + i as u16, &payload(64, i), Csum::Full))
            .collect();
        assert_eq!(planned(&frames, BOTH), vec![(0, 10)], "v6 {v6}");
        let mut out = vec![0xee; 3];
        let r = build(frames.iter().map(Vec::as_slice), &mut out).unwrap();
        assert_eq!(r.start, 3, "appended after what the buffer held");
        let sf = &out[r];
        let hdr = VnetHdrRepr::parse(&crate::vnet::VnetHdr::new_checked(sf).unwrap());
        assert_eq!(hdr.gso(), Some(GsoType::UdpL4));
        assert_eq!(hdr.gso_size, 64);
        assert!(hdr.needs_csum());
        let l4 = if v6 { 54 } else { 34 };
        assert_eq!(
            (hdr.csum_start, hdr.csum_offset, hdr.hdr_len),
            (l4, 6, l4 + 8)
        );
        let back = cut(sf);
        assert_eq!(back.len(), 10);
        for (i, (sport, p)) in back.iter().enumerate() {
            assert_eq!(*sport, 5000);
            assert_eq!(p, &payload(64, i), "datagram {i}, v6 {v6}");
        }
    }
}

#[test]
fn a_shorter_datagram_ends_the_run_and_a_longer_one_starts_the_next() {
    let frames = vec![
        udp(false, 5000, 1, &payload(100, 0), Csum::Full),
        udp(false, 5000, 2, &payload(100, 1), Csum::Full),
        udp(false, 5000, 3, &payload(40, 2), Csum::Full),
        udp(false, 5000, 4, &payload(100, 3), Csum::Full),
        udp(false, 5000, 5, &payload(200, 4), Csum::Full),
        udp(false, 5000, 6, &payload(200, 5), Csum::Full),
    ];
    assert_eq!(planned(&frames, V4), vec![(0, 3), (3, 1), (4, 2)]);
    let mut out = Vec::new();
    let r = build(frames[..3].iter().map(Vec::as_slice), &mut out).unwrap();
    let back = cut(&out[r]);
    let lens: Vec<usize> = back.iter().map(|(_, p)| p.len()).collect();
    assert_eq!(lens, vec![100, 100, 40]);
    assert_eq!(back[2].1, payload(40, 2));
}

#[test]
fn flows_families_and_headers_that_differ_are_not_merged() {
    let p = payload(64, 0);
    let v4 = |sport, id| udp(false, sport, id, &p, Csum::Full);
    // Another source port between two of one flow: three runs.
    let frames = vec![v4(5000, 1), v4(5001, 2), v4(5000, 3), v4(5000, 4)];
    assert_eq!(planned(&frames, V4), vec![(0, 1), (1, 1), (2, 2)]);
    // A family the tap cannot take is never merged.
    let six = vec![
        udp(true, 5000, 0, &p, Csum::Full),
        udp(true, 5000, 0, &p, Csum::Full),
    ];
    assert_eq!(planned(&six, V4), vec![(0, 1), (1, 1)]);
    assert_eq!(planned(&frames, Families::NONE).len(), 4);
    // A different TTL, TOS or DF, a different destination MAC: not the same flow.
    for (at, what) in [
        (IP + 8, "ttl"),
        (IP + 1, "tos"),
        (IP + 6, "df"),
        (VNET_HDR_LEN, "mac"),
    ] {
        let mut other = v4(5000, 2);
        other[at] ^= 0x40;
        if at >= IP {
            checksum::fill_ipv4_header(&mut other[IP..]).unwrap();
        }
        let frames = vec![v4(5000, 1), other];
        assert_eq!(planned(&frames, V4), vec![(0, 1), (1, 1)], "{what}");
    }
}

#[test]
fn checksums_are_trusted_only_when_they_can_be() {
    let p = payload(64, 3);
    let f = |c| udp(false, 5000, 7, &p, c);
    // Partial (the sender's kernel completes it later), zero over IPv4, correct: merged.
    let frames = vec![
        f(Csum::Partial),
        f(Csum::Zero),
        f(Csum::Full),
        f(Csum::Partial),
    ];
    assert_eq!(planned(&frames, V4), vec![(0, 4)]);
    let mut out = Vec::new();
    let r = build(frames.iter().map(Vec::as_slice), &mut out).unwrap();
    assert_eq!(cut(&out[r]).len(), 4);
    // A wrong checksum is passed on alone, and so is a run it would have joined.
    let frames = vec![f(Csum::Full), f(Csum::Bad), f(Csum::Full), f(Csum::Full)];
    assert_eq!(planned(&frames, V4), vec![(0, 1), (1, 1), (2, 2)]);
    // No checksum over IPv6 is not valid: never merged.
    let frames = vec![
        udp(true, 5000, 0, &p, Csum::Zero),
        udp(true, 5000, 0, &p, Csum::Zero),
    ];
    assert_eq!(planned(&frames, BOTH), vec![(0, 1), (1, 1)]);
    // A partial checksum that points elsewhere than the UDP checksum field.
    let mut odd = f(Csum::Partial);
    odd[8] = 4;
    assert_eq!(planned(&[odd.clone(), odd], V4), vec![(0, 1), (1, 1)]);
}

#[test]
fn runs_stop_at_the_segment_limit_and_at_the_ip_length_limit() {
    let small: Vec<Vec<u8>> = (0..150)
        .map(|i| udp(false, 5000, i as u16, &payload(32, i), Csum::Full))
        .collect();
    assert_eq!(
        planned(&small, V4),
        vec![(0, MAX_SEGMENTS), (MAX_SEGMENTS, MAX_SEGMENTS), (128, 22)]
    );
    // 1,400-byte payloads: 46 fit in 65,535 bytes of IPv4 (20 + 8 + 46 × 1,400 = 64,428).
    let big: Vec<Vec<u8>> = (0..50)
        .map(|i| udp(false, 5000, i as u16, &payload(1400, i), Csum::Full))
        .collect();
    assert_eq!(planned(&big, V4), vec![(0, 46), (46, 4)]);
    let mut out = Vec::new();
    let r = build(big[..46].iter().map(Vec::as_slice), &mut out).unwrap();
    assert_eq!(r.len(), VNET_HDR_LEN + ETH_HDR_LEN + 20 + 8 + 46 * 1400);
    assert_eq!(cut(&out[r]).len(), 46);
}

#[test]
fn what_is_not_a_plain_udp_datagram_is_left_alone() {
    let p = payload(64, 0);
    let good = udp(false, 5000, 1, &p, Csum::Full);
    let mut options = good.clone();
    options[IP] = 0x46;
    let mut fragment = good.clone();
    fragment[IP + 6] = 0x20; // MF
    checksum::fill_ipv4_header(&mut fragment[IP..]).unwrap();
    let mut tcp = good.clone();
    tcp[IP + 9] = 6;
    checksum::fill_ipv4_header(&mut tcp[IP..]).unwrap();
    let mut gso = good.clone();
    gso[1] = 5;
    let mut bad_ip = good.clone();
    bad_ip[IP + 10] ^= 1;
    let mut trailing = good.clone();
    trailing.push(0);
    let mut empty = udp(false, 5000, 1, &[], Csum::Full);
    empty.truncate(empty.len());
    for (what, f) in [
        ("options", options),
        ("fragment", fragment),
        ("tcp", tcp),
        ("gso", gso),
        ("bad ip checksum", bad_ip),
        ("trailing bytes", trailing),
        ("no payload", empty),
        ("truncated", good[..30].to_vec()),
    ] {
        let frames = vec![f.clone(), f];
        assert_eq!(planned(&frames, BOTH), vec![(0, 1), (1, 1)], "{what}");
        let mut out = vec![1, 2];
        assert_eq!(
            build(frames.iter().map(Vec::as_slice), &mut out),
            None,
            "{what}"
        );
        assert_eq!(out, vec![1, 2], "{what}: the buffer is left as it was");
    }
    // build refuses a single frame and more than MAX_SEGMENTS.
    let mut out = Vec::new();
    assert_eq!(build([good.as_slice()], &mut out), None);
    let many = vec![good.as_slice(); MAX_SEGMENTS + 1];
    assert_eq!(build(many, &mut out), None);
    assert!(out.is_empty());
}
