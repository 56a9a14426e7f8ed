//! Unit tests of [`super`] on literal super-frames; smoltcp is the independent checksum
//! oracle.
#![allow(clippy::unwrap_used)]

use super::*;
use crate::vnet::VnetHdrRepr;
use smoltcp::wire::{IpAddress, Ipv4Packet, Ipv6Packet, TcpPacket, UdpPacket};

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// A port datagram: virtio-net header (flags, gso_type, gso_size, csum_start,
/// csum_offset) and the frame.
fn dg(flags: u8, gso_type: u8, gso_size: u16, csum: (u16, u16), frame: &[u8]) -> Vec<u8> {
    let mut v = VnetHdrRepr {
        flags,
        gso_type,
        hdr_len: 0,
        gso_size,
        csum_start: csum.0,
        csum_offset: csum.1,
    }
    .to_bytes()
    .to_vec();
    v.extend_from_slice(frame);
    v
}

const ETH_V4: &str = "0242ac110001 020000000002 0800";
const ETH_V6: &str = "0242ac110001 020000000002 86dd";
/// IPv4 172.17.0.2 -> 93.184.216.34, TCP, id 0x1000, DF, total_len and checksum left 0.
const IPV4_TCP: &str = "4500 0000 1000 4000 4006 0000 ac110002 5db8d822";
/// The same with UDP, id 0x2000.
const IPV4_UDP: &str = "4500 0000 2000 4000 4011 0000 ac110002 5db8d822";
/// IPv6 fd00::2 -> 2001:db8::1, TCP, payload_len 0.
const IPV6_TCP: &str =
    "60000000 0000 06 40 fd000000000000000000000000000002 20010db8000000000000000000000001";
const IPV6_UDP: &str =
    "60000000 0000 11 40 fd000000000000000000000000000002 20010db8000000000000000000000001";
/// TCP 40000 -> 80, seq 0x01020304, ack 0x0a0b0c0d, doff 5, CWR|PSH|ACK|FIN, win 0xffff,
/// checksum field 0x1234 (a stale value: segmentation recomputes it).
const TCP_HDR: &str = "9c40 0050 01020304 0a0b0c0d 50 99 ffff 1234 0000";
/// UDP 5000 -> 53, length and checksum stale.
const UDP_HDR: &str = "1388 0035 0000 abcd";

fn payload(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

fn frame(parts: &[&str], data: &[u8]) -> Vec<u8> {
    let mut f = hex(&parts.join(" "));
    f.extend_from_slice(data);
    f
}

fn all(datagram: &[u8]) -> Result<Vec<Vec<u8>>, Error> {
    let mut out = Vec::new();
    segment_to_vecs(datagram, &mut out)?;
    Ok(out)
}

fn v4_addrs(ip: &Ipv4Packet<&[u8]>) -> (IpAddress, IpAddress) {
    (
        IpAddress::from(ip.src_addr()),
        IpAddress::from(ip.dst_addr()),
    )
}

#[test]
fn tso4_three_segments() {
    let data = payload(2500);
    let f = frame(&[ETH_V4, IPV4_TCP, TCP_HDR], &data);
    let d = dg(1, 1, 1000, (34, 16), &f);
    let s = Segmenter::new(&d).unwrap();
    assert_eq!((s.len(), s.remaining(), s.max_frame_len()), (3, 3, 1054));
    let out = all(&d).unwrap();
    assert_eq!(out.len(), 3);
    let mut joined = Vec::new();
    for (i, seg) in out.iter().enumerate() {
        let last = i == 2;
        assert_eq!(seg.len(), 54 + if last { 500 } else { 1000 });
        assert_eq!(seg[..14], f[..14], "Ethernet header copied");
        let ip = Ipv4Packet::new_checked(&seg[14..]).unwrap();
        assert!(ip.verify_checksum(), "ip checksum of segment {i}");
        assert!(checksum::verify(&seg[14..34]));
        assert_eq!(usize::from(ip.total_len()), seg.len() - 14);
        assert_eq!(ip.ident(), 0x1000 + i as u16);
        assert!(ip.dont_frag());
        let (s, d) = v4_addrs(&ip);
        let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
        assert!(tcp.verify_checksum(&s, &d), "tcp checksum of segment {i}");
        assert_eq!(tcp.seq_number().0 as u32, 0x0102_0304 + 1000 * i as u32);
        assert_eq!(tcp.ack_number().0 as u32, 0x0a0b_0c0d);
        assert_eq!((tcp.src_port(), tcp.dst_port()), (40000, 80));
        assert_eq!(tcp.fin(), last, "FIN only on the last");
        assert_eq!(tcp.psh(), last, "PSH only on the last");
        assert_eq!(tcp.cwr(), i == 0, "CWR only on the first");
        assert!(tcp.ack());
        joined.extend_from_slice(tcp.payload());
    }
    assert_eq!(joined, data);
}

#[test]
fn tso4_with_ip_options_and_exact_multiple() {
    // IHL 6: one option word (NOPs). 3000 bytes = exactly 3 × 1000.
    let ip = "4600 0000 0100 4000 4006 0000 ac110002 5db8d822 01010101";
    let data = payload(3000);
    let f = frame(&[ETH_V4, ip, TCP_HDR], &data);
    let out = all(&dg(1, 0x81, 1000, (38, 16), &f)).unwrap();
    assert_eq!(out.len(), 3);
    for (i, seg) in out.iter().enumerate() {
        let ip = Ipv4Packet::new_checked(&seg[14..]).unwrap();
        assert_eq!(ip.header_len(), 24);
        assert!(ip.verify_checksum());
        assert_eq!(usize::from(ip.total_len()), 24 + 20 + 1000);
        let (s, d) = v4_addrs(&ip);
        let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
        assert!(tcp.verify_checksum(&s, &d));
        assert_eq!(tcp.fin(), i == 2);
    }
}

#[test]
fn tso6_segments() {
    let data = payload(3000);
    let f = frame(&[ETH_V6, IPV6_TCP, TCP_HDR], &data);
    let out = all(&dg(1, 4, 1440, (54, 16), &f)).unwrap();
    assert_eq!(out.len(), 3);
    let mut joined = Vec::new();
    for (i, seg) in out.iter().enumerate() {
        let ip = Ipv6Packet::new_checked(&seg[14..]).unwrap();
        assert_eq!(usize::from(ip.payload_len()), seg.len() - 14 - 40);
        let (s, d) = (
            IpAddress::from(ip.src_addr()),
            IpAddress::from(ip.dst_addr()),
        );
        let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
        assert!(tcp.verify_checksum(&s, &d), "tcp checksum of segment {i}");
        assert_eq!(tcp.seq_number().0 as u32, 0x0102_0304 + 1440 * i as u32);
        assert_eq!(tcp.fin() || tcp.psh(), i == 2);
        joined.extend_from_slice(tcp.payload());
    }
    assert_eq!(joined, data);
}

#[test]
fn tso_without_payload_is_one_segment() {
    let f = frame(&[ETH_V4, IPV4_TCP, TCP_HDR], &[]);
    let out = all(&dg(1, 1, 1000, (34, 16), &f)).unwrap();
    assert_eq!(out.len(), 1);
    let ip = Ipv4Packet::new_checked(&out[0][14..]).unwrap();
    assert_eq!(ip.total_len(), 40);
    let (s, d) = v4_addrs(&ip);
    let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
    assert!(tcp.verify_checksum(&s, &d) && tcp.fin() && tcp.psh() && tcp.cwr());
}

#[test]
fn uso4_datagrams() {
    let data = payload(2000);
    let f = frame(&[ETH_V4, IPV4_UDP, UDP_HDR], &data);
    let out = all(&dg(1, 5, 800, (34, 6), &f)).unwrap();
    assert_eq!(out.len(), 3);
    let mut joined = Vec::new();
    for (i, seg) in out.iter().enumerate() {
        let ip = Ipv4Packet::new_checked(&seg[14..]).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!(ip.ident(), 0x2000 + i as u16);
        assert_eq!(usize::from(ip.total_len()), seg.len() - 14);
        let (s, d) = v4_addrs(&ip);
        let u = UdpPacket::new_checked(ip.payload()).unwrap();
        assert_eq!(usize::from(u.len()), ip.payload().len());
        assert_eq!(u.payload().len(), if i == 2 { 400 } else { 800 });
        assert_eq!((u.src_port(), u.dst_port()), (5000, 53));
        assert!(u.verify_checksum(&s, &d));
        assert_ne!(u.checksum(), 0);
        joined.extend_from_slice(u.payload());
    }
    assert_eq!(joined, data);
}

#[test]
fn uso6_datagrams() {
    let data = payload(1000);
    let f = frame(&[ETH_V6, IPV6_UDP, UDP_HDR], &data);
    let out = all(&dg(1, 5, 400, (54, 6), &f)).unwrap();
    assert_eq!(out.len(), 3);
    for seg in &out {
        let ip = Ipv6Packet::new_checked(&seg[14..]).unwrap();
        assert_eq!(usize::from(ip.payload_len()), seg.len() - 54);
        let (s, d) = (
            IpAddress::from(ip.src_addr()),
            IpAddress::from(ip.dst_addr()),
        );
        let u = UdpPacket::new_checked(ip.payload()).unwrap();
        assert_eq!(usize::from(u.len()), ip.payload().len());
        assert!(u.verify_checksum(&s, &d));
    }
}

#[test]
fn ufo4_fragments() {
    let data = payload(2000);
    let f = frame(&[ETH_V4, IPV4_UDP, UDP_HDR], &data);
    // gso_size 1001 rounds down to 1000 bytes of IP payload per fragment.
    let out = all(&dg(1, 3, 1001, (34, 6), &f)).unwrap();
    assert_eq!(out.len(), 3, "2008 datagram bytes in 1000-byte fragments");
    let mut datagram = Vec::new();
    for (i, seg) in out.iter().enumerate() {
        let ip = Ipv4Packet::new_checked(&seg[14..]).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!(ip.ident(), 0x2000, "fragments share the id");
        assert_eq!(usize::from(ip.frag_offset()), 1000 * i);
        assert_eq!(ip.more_frags(), i < 2);
        assert!(!ip.dont_frag());
        assert_eq!(usize::from(ip.total_len()), seg.len() - 14);
        datagram.extend_from_slice(ip.payload());
    }
    assert_eq!(datagram.len(), 2008);
    let u = UdpPacket::new_checked(&datagram[..]).unwrap();
    assert_eq!(u.len(), 2008);
    assert_eq!(u.payload(), &data[..]);
    let ip = Ipv4Packet::new_checked(&out[0][14..]).unwrap();
    let (s, d) = v4_addrs(&ip);
    assert!(u.verify_checksum(&s, &d));
}

#[test]
fn ufo6_fragments() {
    let data = payload(1500);
    let f = frame(&[ETH_V6, IPV6_UDP, UDP_HDR], &data);
    let datagram6 = dg(0, 3, 1000, (0, 0), &f);
    let mut s = Segmenter::new(&datagram6).unwrap();
    s.set_frag_id(0xdead_beef);
    let mut out = Vec::new();
    s.drain_to_vecs(&mut out).unwrap();
    assert_eq!(out.len(), 2);
    let mut datagram = Vec::new();
    for (i, seg) in out.iter().enumerate() {
        let ip = Ipv6Packet::new_checked(&seg[14..]).unwrap();
        assert_eq!(u8::from(ip.next_header()), 44);
        assert_eq!(usize::from(ip.payload_len()), seg.len() - 54);
        let fh = &seg[54..62];
        assert_eq!(fh[0], 17);
        let off = u16::from_be_bytes([fh[2], fh[3]]);
        assert_eq!(usize::from(off & !7), 1000 * i);
        assert_eq!(off & 1 == 1, i == 0, "M set on all but the last");
        assert_eq!(fh[4..8], [0xde, 0xad, 0xbe, 0xef]);
        datagram.extend_from_slice(&seg[62..]);
    }
    let ip = Ipv6Packet::new_checked(&out[0][14..]).unwrap();
    let (s, d) = (
        IpAddress::from(ip.src_addr()),
        IpAddress::from(ip.dst_addr()),
    );
    let u = UdpPacket::new_checked(&datagram[..]).unwrap();
    assert_eq!(usize::from(u.len()), 8 + data.len());
    assert!(u.verify_checksum(&s, &d));
    assert_eq!(u.payload(), &data[..]);
    // Without an explicit id one is derived, and it is not zero.
    let out = all(&datagram6).unwrap();
    assert_ne!(out[0][58..62], [0, 0, 0, 0]);
}

#[test]
fn plain_frame_partial_checksum_completed() {
    // UDP 172.17.0.2:5000 -> 172.17.0.1:53 "hello"; field holds the pseudo-header sum.
    let ip = "4500 0021 0001 0000 4011 0000 ac110002 ac110001";
    let mut f = frame(&[ETH_V4, ip, "1388 0035 000d 0000 68656c6c6f"], &[]);
    checksum::fill_ipv4_header(&mut f[14..]).unwrap();
    let pseudo = checksum::pseudo_raw(&f[26..34], 17, 13).fold();
    f[40..42].copy_from_slice(&pseudo.to_be_bytes());
    let out = all(&dg(1, 0, 0, (34, 6), &f)).unwrap();
    assert_eq!(out.len(), 1);
    let ip = Ipv4Packet::new_checked(&out[0][14..]).unwrap();
    let (s, d) = v4_addrs(&ip);
    assert!(UdpPacket::new_checked(ip.payload())
        .unwrap()
        .verify_checksum(&s, &d));
    // Without NEEDS_CSUM the frame is copied untouched.
    assert_eq!(all(&dg(0, 0, 0, (34, 6), &f)).unwrap(), vec![f.clone()]);
}

#[test]
fn one_buffer_for_every_segment() {
    let data = payload(5000);
    let f = frame(&[ETH_V4, IPV4_TCP, TCP_HDR], &data);
    let d = dg(1, 1, 1448, (34, 16), &f);
    let mut s = Segmenter::new(&d).unwrap();
    let mut buf = [0u8; 1502];
    let mut lens = Vec::new();
    assert_eq!(s.for_each(&mut buf, |seg| lens.push(seg.len())), Ok(4));
    assert_eq!(lens, [1502, 1502, 1502, 54 + 656]);
    assert_eq!(s.remaining(), 0);
    assert_eq!(s.next_into(&mut buf), Ok(None));
    // A buffer too small is refused and nothing is consumed.
    let mut s = Segmenter::new(&d).unwrap();
    assert_eq!(
        s.next_into(&mut [0u8; 1501]),
        Err(Error::BufferTooSmall(1502))
    );
    assert_eq!((s.remaining(), s.next_len()), (4, Some(1502)));
    assert_eq!(s.next_into(&mut buf), Ok(Some(1502)));
}

#[test]
fn refusals() {
    let tcp = frame(&[ETH_V4, IPV4_TCP, TCP_HDR], &payload(100));
    let err = |d: Vec<u8>| Segmenter::new(&d).err();
    assert_eq!(err(vec![0; 9]), Some(Error::Truncated));
    assert_eq!(
        err(dg(0, 9, 100, (0, 0), &tcp)),
        Some(Error::BadVnetHdr(vnet::Error::UnknownGsoType(9)))
    );
    assert_eq!(
        err(dg(0, 1, 0, (0, 0), &tcp)),
        Some(Error::BadVnetHdr(vnet::Error::ZeroGsoSize))
    );
    assert_eq!(
        err(dg(1, 1, 100, (34, 200), &tcp)),
        Some(Error::BadVnetHdr(vnet::Error::CsumOutOfBounds))
    );
    assert_eq!(
        err(dg(
            0,
            3,
            7,
            (0, 0),
            &frame(&[ETH_V4, IPV4_UDP, UDP_HDR], &[1; 20])
        )),
        Some(Error::BadVnetHdr(vnet::Error::ZeroGsoSize)),
        "UFO fragments smaller than 8 bytes"
    );
    assert_eq!(
        err(dg(0, 1, 100, (0, 0), &tcp[..10])),
        Some(Error::Truncated)
    );
    // TCP GSO on a UDP frame, a fragment, ARP, IPv6 with an extension header.
    let udp = frame(&[ETH_V4, IPV4_UDP, UDP_HDR], &[]);
    assert_eq!(err(dg(0, 1, 100, (0, 0), &udp)), Some(Error::Unsupported));
    let mut frag = tcp.clone();
    frag[20] = 0x20;
    assert_eq!(err(dg(0, 1, 100, (0, 0), &frag)), Some(Error::Unsupported));
    let arp = hex("ffffffffffff 020000000002 0806 0001 0800 0604 0001");
    assert_eq!(err(dg(0, 1, 100, (0, 0), &arp)), Some(Error::Unsupported));
    let mut ext = frame(&[ETH_V6, IPV6_TCP, TCP_HDR], &[]);
    ext[20] = 0;
    assert_eq!(err(dg(0, 4, 100, (0, 0), &ext)), Some(Error::Unsupported));
    // Bad IP version, IHL, TCP data offset; headers cut short.
    let mut bad = tcp.clone();
    bad[14] = 0x65;
    assert_eq!(err(dg(0, 1, 100, (0, 0), &bad)), Some(Error::Malformed));
    bad[14] = 0x44;
    assert_eq!(err(dg(0, 1, 100, (0, 0), &bad)), Some(Error::Malformed));
    let mut doff = tcp.clone();
    doff[46] = 0x40;
    assert_eq!(err(dg(0, 1, 100, (0, 0), &doff)), Some(Error::Malformed));
    doff[46] = 0xf0;
    assert_eq!(
        err(dg(0, 1, 100, (0, 0), &doff[..80])),
        Some(Error::Malformed)
    );
    assert_eq!(
        err(dg(0, 1, 100, (0, 0), &tcp[..30])),
        Some(Error::Malformed)
    );
    // A segment whose IP length would not fit 16 bits.
    let huge = frame(&[ETH_V4, IPV4_TCP, TCP_HDR], &payload(65_530));
    assert_eq!(err(dg(0, 1, 65_530, (0, 0), &huge)), Some(Error::Malformed));
    assert!(Segmenter::new(&dg(0, 1, 65_000, (0, 0), &huge)).is_ok());
}

#[test]
fn headers_parse_and_set_ip_len() {
    let mut f = frame(&[ETH_V4, IPV4_TCP, TCP_HDR], &payload(10));
    let h = Headers::parse(&f, L4::Tcp).unwrap();
    assert_eq!(
        (
            h.ipv6,
            h.ip_off,
            h.l4_off,
            h.payload_off,
            h.ip_hdr_len(),
            h.l4_hdr_len()
        ),
        (false, 14, 34, 54, 20, 20)
    );
    h.set_ip_len(&mut f).unwrap();
    let ip = Ipv4Packet::new_checked(&f[14..]).unwrap();
    assert_eq!(usize::from(ip.total_len()), f.len() - 14);
    assert!(ip.verify_checksum());
    let mut f6 = frame(&[ETH_V6, IPV6_UDP, UDP_HDR], &payload(10));
    let h6 = Headers::parse(&f6, L4::Udp).unwrap();
    assert_eq!((h6.ipv6, h6.l4_off, h6.payload_off), (true, 54, 62));
    h6.set_ip_len(&mut f6).unwrap();
    assert_eq!(
        Ipv6Packet::new_checked(&f6[14..]).unwrap().payload_len(),
        18
    );
}

#[test]
fn garbage_and_truncations_never_panic() {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut buf = vec![0u8; 70_000];
    let good = [
        frame(&[ETH_V4, IPV4_TCP, TCP_HDR], &payload(300)),
        frame(&[ETH_V6, IPV6_TCP, TCP_HDR], &payload(300)),
        frame(&[ETH_V4, IPV4_UDP, UDP_HDR], &payload(300)),
        frame(&[ETH_V6, IPV6_UDP, UDP_HDR], &payload(300)),
    ];
    for f in &good {
        for cut in 0..f.len() {
            for t in [0u8, 1, 3, 4, 5, 0x81] {
                let d = dg(1, t, 40, (34, 6), &f[..cut]);
                if let Ok(mut s) = Segmenter::new(&d) {
                    let n = s.len();
                    assert_eq!(s.for_each(&mut buf, |_| {}), Ok(n));
                }
            }
        }
    }
    for i in 0..20_000 {
        let len = (next() % 120) as usize;
        let mut f: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if len >= 14 {
            f[12..14].copy_from_slice(&[[0x08, 0x00], [0x86, 0xdd]][i % 2]);
        }
        if len >= 15 {
            f[14] = [0x45, 0x60, 0x4f, 0x46][i % 4];
        }
        let t = [0u8, 1, 3, 4, 5, 0x81, 0x84][i % 7];
        let d = dg(
            (next() % 2) as u8,
            t,
            (next() % 64) as u16,
            ((next() % 80) as u16, (next() % 20) as u16),
            &f,
        );
        if let Ok(mut s) = Segmenter::new(&d) {
            let n = s.len();
            assert_eq!(s.for_each(&mut buf, |_| {}), Ok(n));
        }
    }
}
