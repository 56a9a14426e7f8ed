//! Unit tests for [`crate::vnet`]: literal super-frames segmented and checksummed.

use crate::stats::DropReason;
use crate::vnet::ingest;
use smoltcp::wire::{IpAddress, Ipv4Packet, Ipv6Packet, TcpPacket, UdpPacket};

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

/// vnet header: flags, gso_type, hdr_len, gso_size, csum_start, csum_offset.
fn vnet(flags: u8, gso_type: u8, gso_size: u16, csum_start: u16, csum_offset: u16) -> Vec<u8> {
    let mut v = vec![flags, gso_type, 0, 0];
    v.extend_from_slice(&gso_size.to_le_bytes());
    v.extend_from_slice(&csum_start.to_le_bytes());
    v.extend_from_slice(&csum_offset.to_le_bytes());
    v
}

const ETH_V4: &str = "0242ac110001 020000000002 0800";
const ETH_V6: &str = "0242ac110001 020000000002 86dd";
/// IPv4 172.17.0.2 -> 93.184.216.34, TCP, id 0x1000, DF, total_len and checksum left 0.
const IPV4_TCP: &str = "4500 0000 1000 4000 4006 0000 ac110002 5db8d822";
/// IPv6 fd00::2 -> 2001:db8::1, TCP, payload_len 0.
const IPV6_TCP: &str =
    "60000000 0000 06 40 fd000000000000000000000000000002 20010db8000000000000000000000001";
/// TCP 40000 -> 80, seq 0x01020304, ack 0x0a0b0c0d, doff 5, CWR|PSH|ACK|FIN, win 0xffff.
const TCP_HDR: &str = "9c40 0050 01020304 0a0b0c0d 50 99 ffff 0000 0000";

fn payload(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

#[test]
fn gso_tcpv4_segments_with_checksums() {
    let data = payload(2500);
    let mut eth = hex(&format!("{ETH_V4} {IPV4_TCP} {TCP_HDR}"));
    eth.extend_from_slice(&data);
    // NEEDS_CSUM, GSO_TCPV4, gso_size 1000, csum at 34 + 16.
    let mut dg = vnet(1, 1, 1000, 34, 16);
    dg.extend_from_slice(&eth);
    let mut out = Vec::new();
    ingest(&dg, &mut out).expect("segmented");
    assert_eq!(out.len(), 3);
    let mut joined = Vec::new();
    for (i, f) in out.iter().enumerate() {
        let ip = Ipv4Packet::new_checked(&f[14..]).expect("ipv4");
        assert!(ip.verify_checksum(), "ip checksum of segment {i}");
        assert_eq!(usize::from(ip.total_len()), f.len() - 14);
        assert_eq!(ip.ident(), 0x1000 + i as u16);
        let (s, d) = (
            IpAddress::from(ip.src_addr()),
            IpAddress::from(ip.dst_addr()),
        );
        let tcp = TcpPacket::new_checked(ip.payload()).expect("tcp");
        assert!(tcp.verify_checksum(&s, &d), "tcp checksum of segment {i}");
        assert_eq!(tcp.seq_number().0 as u32, 0x0102_0304 + 1000 * i as u32);
        assert_eq!(tcp.ack_number().0 as u32, 0x0a0b_0c0d);
        let last = i == 2;
        assert_eq!(tcp.fin(), last);
        assert_eq!(tcp.psh(), last);
        assert_eq!(tcp.cwr(), i == 0);
        assert!(tcp.ack());
        assert_eq!(tcp.payload().len(), if last { 500 } else { 1000 });
        joined.extend_from_slice(tcp.payload());
    }
    assert_eq!(joined, data);
}

#[test]
fn gso_tcpv6_segments_with_checksums() {
    let data = payload(3000);
    let mut eth = hex(&format!("{ETH_V6} {IPV6_TCP} {TCP_HDR}"));
    eth.extend_from_slice(&data);
    let mut dg = vnet(1, 4, 1440, 54, 16);
    dg.extend_from_slice(&eth);
    let mut out = Vec::new();
    ingest(&dg, &mut out).expect("segmented");
    assert_eq!(out.len(), 3);
    let mut joined = Vec::new();
    for (i, f) in out.iter().enumerate() {
        let ip = Ipv6Packet::new_checked(&f[14..]).expect("ipv6");
        assert_eq!(usize::from(ip.payload_len()), f.len() - 14 - 40);
        let (s, d) = (
            IpAddress::from(ip.src_addr()),
            IpAddress::from(ip.dst_addr()),
        );
        let tcp = TcpPacket::new_checked(ip.payload()).expect("tcp");
        assert!(tcp.verify_checksum(&s, &d), "tcp checksum of segment {i}");
        assert_eq!(tcp.seq_number().0 as u32, 0x0102_0304 + 1440 * i as u32);
        joined.extend_from_slice(tcp.payload());
    }
    assert_eq!(joined, data);
}

#[test]
fn partial_checksum_is_completed() {
    // UDP 172.17.0.2:5000 -> 172.17.0.1:53, payload "hello"; checksum field holds the
    // pseudo-header sum as the kernel leaves it for CHECKSUM_PARTIAL.
    let ip = "4500 0021 0001 0000 4011 0000 ac110002 ac110001";
    let udp = "1388 0035 000d 0000 68656c6c6f";
    let mut eth = hex(&format!("{ETH_V4} {ip} {udp}"));
    {
        let mut p = Ipv4Packet::new_unchecked(&mut eth[14..]);
        p.fill_checksum();
    }
    // Pseudo-header sum: src + dst + proto + udp length.
    let words: [u32; 6] = [0xac11, 0x0002, 0xac11, 0x0001, 17, 13];
    let mut sum: u32 = words.iter().sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    eth[14 + 20 + 6..14 + 20 + 8].copy_from_slice(&(sum as u16).to_be_bytes());
    let mut dg = vnet(1, 0, 0, 34, 6);
    dg.extend_from_slice(&eth);
    let mut out = Vec::new();
    ingest(&dg, &mut out).expect("ok");
    assert_eq!(out.len(), 1);
    let ip = Ipv4Packet::new_checked(&out[0][14..]).expect("ip");
    let u = UdpPacket::new_checked(ip.payload()).expect("udp");
    assert!(u.verify_checksum(
        &IpAddress::from(ip.src_addr()),
        &IpAddress::from(ip.dst_addr())
    ));
    assert_ne!(u.checksum(), 0);
}

#[test]
fn gso_udp_l4_segments() {
    let data = payload(2000);
    let ip = "4500 0000 2000 4000 4011 0000 ac110002 5db8d822";
    let udp = "1388 0035 0000 0000";
    let mut eth = hex(&format!("{ETH_V4} {ip} {udp}"));
    eth.extend_from_slice(&data);
    let mut dg = vnet(1, 5, 800, 34, 6);
    dg.extend_from_slice(&eth);
    let mut out = Vec::new();
    ingest(&dg, &mut out).expect("ok");
    assert_eq!(out.len(), 3);
    for f in &out {
        let ip = Ipv4Packet::new_checked(&f[14..]).expect("ip");
        assert!(ip.verify_checksum());
        let u = UdpPacket::new_checked(ip.payload()).expect("udp");
        assert_eq!(usize::from(u.len()), ip.payload().len());
        assert!(u.verify_checksum(
            &IpAddress::from(ip.src_addr()),
            &IpAddress::from(ip.dst_addr())
        ));
    }
}

#[test]
fn malformed_vnet_and_gso_frames_are_dropped_not_panicking() {
    let mut out = Vec::new();
    assert_eq!(ingest(&[1, 2, 3], &mut out), Err(DropReason::Truncated));
    // Unknown gso type.
    let mut dg = vnet(0, 9, 100, 0, 0);
    dg.extend_from_slice(&hex(ETH_V4));
    assert_eq!(ingest(&dg, &mut out), Err(DropReason::BadVnetHdr));
    // UFO is refused.
    let mut dg = vnet(0, 3, 100, 0, 0);
    dg.extend_from_slice(&hex(&format!("{ETH_V4} {IPV4_TCP}")));
    assert_eq!(ingest(&dg, &mut out), Err(DropReason::UnsupportedGso));
    // GSO TCP with a truncated TCP header, and every truncation of a good super-frame.
    let mut eth = hex(&format!("{ETH_V4} {IPV4_TCP} {TCP_HDR}"));
    eth.extend_from_slice(&payload(100));
    for cut in 0..eth.len() {
        let mut dg = vnet(1, 1, 40, 0, 0);
        dg.extend_from_slice(&eth[..cut]);
        let _ = ingest(&dg, &mut out);
    }
    // Garbage bytes of every length with every GSO type.
    for t in [0u8, 1, 4, 5, 0x81] {
        for n in 0..80 {
            let mut dg = vnet(1, t, 7, 3, 1);
            dg.extend((0..n).map(|i| (i * 37 % 256) as u8));
            let _ = ingest(&dg, &mut out);
        }
    }
}
