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

// ---- offload mode ------------------------------------------------------------------

use crate::vnet::{clamp_syn_mss, offload_hdr, prepare_offloaded, raise_syn_mss, BIG_MSS};

/// TCP 40000 -> 80 SYN, doff 8: MSS 1460, NOP, NOP, SACK-permitted... (12 option bytes).
const TCP_SYN_MSS: &str =
    "9c40 0050 01020304 00000000 80 02 ffff 0000 0000 020405b4 0101 0402 01030307";

fn ipv4_tcp(tcp: &[u8]) -> Vec<u8> {
    let mut ip = hex(IPV4_TCP);
    ip.extend_from_slice(tcp);
    let len = ip.len() as u16;
    let mut p = Ipv4Packet::new_unchecked(&mut ip[..]);
    p.set_total_len(len);
    p.fill_checksum();
    ip
}

#[test]
fn offload_gso_tcpv4_super_frame_stays_whole() {
    let data = payload(3000);
    let mut dg = vnet(1, 1, 1448, 34, 16);
    dg.extend_from_slice(&hex(&format!("{ETH_V4} {IPV4_TCP} {TCP_HDR}")));
    dg.extend_from_slice(&data);
    let n = dg.len();
    assert_eq!(prepare_offloaded(&mut dg), Ok(true));
    assert_eq!(dg.len(), n);
    let ip = Ipv4Packet::new_checked(&dg[10 + 14..]).expect("ipv4");
    assert!(ip.verify_checksum());
    assert_eq!(usize::from(ip.total_len()), n - 10 - 14);
    assert_eq!(&ip.payload()[20..], &data[..]);
}

#[test]
fn offload_gso_tcpv6_super_frame_stays_whole() {
    let data = payload(5000);
    let mut dg = vnet(1, 4, 1428, 54, 16);
    dg.extend_from_slice(&hex(&format!("{ETH_V6} {IPV6_TCP} {TCP_HDR}")));
    dg.extend_from_slice(&data);
    assert_eq!(prepare_offloaded(&mut dg), Ok(true));
    let ip = Ipv6Packet::new_checked(&dg[10 + 14..]).expect("ipv6");
    assert_eq!(usize::from(ip.payload_len()), 20 + data.len());
}

#[test]
fn offload_partial_udp_completed_tcp_left_and_udp_gso_deferred() {
    // UDP with NEEDS_CSUM is completed in place.
    let eth = format!(
        "{ETH_V4} 4500 0024 0000 4000 4011 0000 ac110002 5db8d822 9c40 0035 0010 0000 {}",
        "0102030405060708"
    );
    let mut f = hex(&eth);
    {
        let mut p = Ipv4Packet::new_unchecked(&mut f[14..]);
        p.fill_checksum();
    }
    // Pseudo-header sum in the checksum field, as a kernel leaves it.
    let pseudo: u32 = 0xac11 + 0x0002 + 0x5db8 + 0xd822 + 0x11 + 0x10;
    let pseudo = ((pseudo & 0xffff) + (pseudo >> 16)) as u16;
    f[40..42].copy_from_slice(&pseudo.to_be_bytes());
    let full = f.clone();
    let (s, d) = (
        IpAddress::from(Ipv4Packet::new_unchecked(&full[14..]).src_addr()),
        IpAddress::from(Ipv4Packet::new_unchecked(&full[14..]).dst_addr()),
    );
    let mut dg = vnet(1, 0, 0, 34, 6);
    dg.extend_from_slice(&f);
    assert_eq!(prepare_offloaded(&mut dg), Ok(true));
    assert!(UdpPacket::new_checked(&dg[10 + 34..])
        .expect("udp")
        .verify_checksum(&s, &d));
    // TCP with NEEDS_CSUM is left as it is.
    let mut dg = vnet(1, 0, 0, 34, 16);
    dg.extend_from_slice(&hex(ETH_V4));
    dg.extend_from_slice(&ipv4_tcp(&hex(TCP_HDR)));
    let before = dg.clone();
    assert_eq!(prepare_offloaded(&mut dg), Ok(true));
    assert_eq!(dg, before);
    // UDP GSO still goes through `ingest`.
    let mut dg = vnet(1, 5, 100, 34, 6);
    dg.extend_from_slice(&f);
    assert_eq!(prepare_offloaded(&mut dg), Ok(false));
    // Bad headers are refused.
    let mut dg = vnet(1, 1, 0, 34, 16);
    dg.extend_from_slice(&f);
    assert_eq!(prepare_offloaded(&mut dg), Err(DropReason::BadVnetHdr));
}

#[test]
fn syn_mss_raised_and_clamped() {
    let mut ip = ipv4_tcp(&hex(TCP_SYN_MSS));
    assert_eq!(raise_syn_mss(&mut ip), Some(1460));
    assert_eq!(
        &ip[20 + 20..20 + 24],
        &[2, 4, (BIG_MSS >> 8) as u8, BIG_MSS as u8]
    );
    // The rest of the options untouched.
    assert_eq!(&ip[44..], &hex("0101 0402 01030307")[..]);
    // MTU 1500 fits MSS 1460, rounded down to the window unit (32 bytes): 1440.
    assert_eq!(crate::tcp::WINDOW_UNIT, 32);
    clamp_syn_mss(&mut ip, 1500);
    assert_eq!(&ip[40..44], &hex("020405a0")[..]);
    clamp_syn_mss(&mut ip, 9000);
    assert_eq!(&ip[40..44], &hex("020405a0")[..], "clamping never raises");
    clamp_syn_mss(&mut ip, 576);
    assert_eq!(&ip[40..44], &hex("02040200")[..], "536 rounds down to 512");
    // IPv6: MTU 1500 fits MSS 1440, already a whole number of units.
    let mut ip6 = hex(IPV6_TCP);
    ip6.extend_from_slice(&hex(TCP_SYN_MSS));
    assert_eq!(raise_syn_mss(&mut ip6), Some(1460));
    clamp_syn_mss(&mut ip6, 1500);
    assert_eq!(&ip6[60..64], &hex("020405a0")[..]);
    // Not a SYN: untouched.
    let mut ack = ipv4_tcp(&hex(TCP_HDR));
    let before = ack.clone();
    assert_eq!(raise_syn_mss(&mut ack), None);
    assert_eq!(ack, before);
    // Truncated options: no panic, nothing found.
    let mut bad = ipv4_tcp(&hex(
        "9c40 0050 01020304 00000000 60 02 ffff 0000 0000 0204",
    ));
    assert_eq!(raise_syn_mss(&mut bad), None);
}

#[test]
fn gso_frame_toward_the_sandbox() {
    let data = payload(4000);
    let mut tcp = hex(TCP_HDR);
    tcp.extend_from_slice(&data);
    let mut eth = hex(ETH_V4);
    eth.extend_from_slice(&ipv4_tcp(&tcp));
    let h = offload_hdr(&mut eth, 1500, Some(1448));
    // NEEDS_CSUM, GSO_TCPV4, hdr_len 54, gso_size 1448, csum_start 34, csum_offset 16.
    assert_eq!(h, [1, 1, 54, 0, 0xa8, 0x05, 34, 0, 16, 0]);
    // The checksum field holds the (uncomplemented) pseudo-header sum: completing it over
    // the TCP segment gives a valid checksum.
    let (s, d) = (
        IpAddress::from(Ipv4Packet::new_unchecked(&eth[14..]).src_addr()),
        IpAddress::from(Ipv4Packet::new_unchecked(&eth[14..]).dst_addr()),
    );
    let mut expect = eth.clone();
    TcpPacket::new_unchecked(&mut expect[34..]).fill_checksum(&s, &d);
    let mut completed = eth.clone();
    let mut dg = h.to_vec();
    dg.append(&mut completed);
    let mut out = Vec::new();
    // `ingest` segments it and completes every checksum: the segments are valid.
    ingest(&dg, &mut out).expect("a valid GSO frame");
    assert_eq!(out.len(), 3);
    for f in &out {
        let ip = Ipv4Packet::new_checked(&f[14..]).expect("ipv4");
        assert!(ip.total_len() as usize <= 1500);
        assert!(TcpPacket::new_checked(ip.payload())
            .expect("tcp")
            .verify_checksum(&s, &d));
    }
    // A non-GSO view of the same frame (NEEDS_CSUM only) completes to the full checksum.
    let mut one = h.to_vec();
    one[1] = 0;
    one.extend_from_slice(&eth);
    out.clear();
    ingest(&one, &mut out).expect("partial");
    assert_eq!(out[0], expect);
    // gso_size never exceeds what fits the MTU, whatever the MSS; IPv6 too.
    let mut eth6 = hex(ETH_V6);
    let mut ip6 = hex(IPV6_TCP);
    ip6.extend_from_slice(&tcp);
    let l = (ip6.len() - 40) as u16;
    Ipv6Packet::new_unchecked(&mut ip6[..]).set_payload_len(l);
    eth6.extend_from_slice(&ip6);
    let h6 = offload_hdr(&mut eth6, 1500, Some(9000));
    assert_eq!(h6, [1, 4, 74, 0, 0xa0, 0x05, 54, 0, 16, 0]);
    // Small TCP: NEEDS_CSUM only. Not TCP: zero header, frame untouched.
    let mut small = hex(ETH_V4);
    small.extend_from_slice(&ipv4_tcp(&hex(TCP_HDR)));
    assert_eq!(
        offload_hdr(&mut small, 1500, None),
        [1, 0, 0, 0, 0, 0, 34, 0, 16, 0]
    );
    let mut arp = hex("ffffffffffff 020000000002 0806 0001 0800 0604 0001");
    let before = arp.clone();
    assert_eq!(offload_hdr(&mut arp, 1500, None), [0; 10]);
    assert_eq!(arp, before);
}
