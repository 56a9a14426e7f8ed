//! Unit tests for [`crate::core`]: literal ARP, NDP and echo frames; isolation; policy.

use crate::core::{Core, Verdict};
use crate::stats::DropReason;
use crate::Config;
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    EthernetFrame, Icmpv4Packet, Icmpv4Repr, Icmpv6Packet, Icmpv6Repr, Ipv4Packet, Ipv6Packet,
    NdiscNeighborFlags, NdiscRepr,
};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

const GW_MAC: [u8; 6] = [0x02, 0x42, 0xac, 0x11, 0x00, 0x01];

fn cfg() -> Config {
    let mut c = Config::new(GW_MAC, Ipv4Addr::new(172, 17, 0, 1), 16);
    c.ipv6 = Some(("fd00::1".parse().expect("v6"), 64));
    c.isolated_subnets = vec![
        "172.18.0.0/16".parse().expect("net"),
        "10.9.9.1/32".parse().expect("net"),
    ];
    c
}

#[test]
fn arp_request_for_gateway_is_answered() {
    let mut core = Core::new(cfg());
    let req = hex(
        "ffffffffffff 020000000002 0806 0001 0800 06 04 0001 020000000002 ac110002 000000000000 ac110001",
    );
    let Verdict::Reply(reply) = core.classify(&req) else {
        panic!("no reply");
    };
    let want = hex(
        "020000000002 0242ac110001 0806 0001 0800 06 04 0002 0242ac110001 ac110001 020000000002 ac110002",
    );
    assert_eq!(reply, want);
    assert_eq!(
        core.neighbour(IpAddr::V4(Ipv4Addr::new(172, 17, 0, 2))),
        Some([2, 0, 0, 0, 0, 2])
    );
    // ARP for someone else: ignored (but the sender is learned).
    let other = hex(
        "ffffffffffff 020000000003 0806 0001 0800 06 04 0001 020000000003 ac110003 000000000000 ac110002",
    );
    assert_eq!(core.classify(&other), Verdict::Ignore);
    assert_eq!(core.neighbours(), 2);
}

#[test]
fn icmp_echo_to_gateway_is_answered() {
    let mut core = Core::new(cfg());
    let req = hex("0242ac110001020000000002080045000020000740004001e2b0ac110002ac110001080021041234000161626364");
    let Verdict::Reply(reply) = core.classify(&req) else {
        panic!("no reply");
    };
    let eth = EthernetFrame::new_checked(&reply[..]).expect("eth");
    assert_eq!(eth.dst_addr().0, [2, 0, 0, 0, 0, 2]);
    assert_eq!(eth.src_addr().0, GW_MAC);
    let ip = Ipv4Packet::new_checked(eth.payload()).expect("ip");
    assert!(ip.verify_checksum());
    assert_eq!(ip.src_addr(), Ipv4Addr::new(172, 17, 0, 1));
    assert_eq!(ip.dst_addr(), Ipv4Addr::new(172, 17, 0, 2));
    let icmp = Icmpv4Packet::new_checked(ip.payload()).expect("icmp");
    let repr = Icmpv4Repr::parse(&icmp, &ChecksumCapabilities::default()).expect("csum");
    assert_eq!(
        repr,
        Icmpv4Repr::EchoReply {
            ident: 0x1234,
            seq_no: 1,
            data: b"abcd"
        }
    );
}

#[test]
fn neighbour_solicitation_to_solicited_node_multicast_is_answered() {
    let mut core = Core::new(cfg());
    let ns = hex("3333ff00000102000000000286dd6000000000203afffd000000000000000000000000000002ff0200000000000000000001ff00000187007d9700000000fd0000000000000000000000000000010101020000000002");
    let Verdict::Reply(reply) = core.classify(&ns) else {
        panic!("no reply");
    };
    let eth = EthernetFrame::new_checked(&reply[..]).expect("eth");
    assert_eq!(eth.dst_addr().0, [2, 0, 0, 0, 0, 2]);
    let ip = Ipv6Packet::new_checked(eth.payload()).expect("ip6");
    assert_eq!(ip.hop_limit(), 255);
    let (s, d) = (ip.src_addr(), ip.dst_addr());
    assert_eq!(s, "fd00::1".parse::<Ipv6Addr>().expect("v6"));
    assert_eq!(d, "fd00::2".parse::<Ipv6Addr>().expect("v6"));
    let icmp = Icmpv6Packet::new_checked(ip.payload()).expect("icmp6");
    let repr =
        Icmpv6Repr::parse(&s, &d, &icmp, &ChecksumCapabilities::default()).expect("checksum");
    let Icmpv6Repr::Ndisc(NdiscRepr::NeighborAdvert {
        flags,
        target_addr,
        lladdr,
    }) = repr
    else {
        panic!("not an NA: {repr:?}");
    };
    assert!(flags.contains(NdiscNeighborFlags::SOLICITED | NdiscNeighborFlags::OVERRIDE));
    assert_eq!(target_addr, s);
    assert_eq!(lladdr.map(|l| l.as_bytes().to_vec()), Some(GW_MAC.to_vec()));
}

#[test]
fn icmpv6_echo_to_gateway_is_answered() {
    let mut core = Core::new(cfg());
    let req = hex("0242ac11000102000000000286dd60000000000c3a40fd000000000000000000000000000002fd0000000000000000000000000000018000a6690077000370696e67");
    let Verdict::Reply(reply) = core.classify(&req) else {
        panic!("no reply");
    };
    let eth = EthernetFrame::new_checked(&reply[..]).expect("eth");
    let ip = Ipv6Packet::new_checked(eth.payload()).expect("ip6");
    let icmp = Icmpv6Packet::new_checked(ip.payload()).expect("icmp6");
    let repr = Icmpv6Repr::parse(
        &ip.src_addr(),
        &ip.dst_addr(),
        &icmp,
        &ChecksumCapabilities::default(),
    )
    .expect("checksum");
    assert_eq!(
        repr,
        Icmpv6Repr::EchoReply {
            ident: 0x77,
            seq_no: 3,
            data: b"ping"
        }
    );
}

/// An IPv4 UDP frame from 172.17.0.2:5000 to `dst`:9, checksummed by the builder.
fn udp_to(dst: Ipv4Addr) -> Vec<u8> {
    let p = crate::core::udp_packet(
        "172.17.0.2:5000".parse().expect("addr"),
        (dst, 9).into(),
        b"x",
    )
    .expect("packet");
    let core = Core::new(cfg());
    let mut f = core.eth(GW_MAC, smoltcp::wire::EthernetProtocol::Ipv4, &p);
    f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
    f
}

#[test]
fn egress_udp_is_classified_and_isolated_subnets_dropped() {
    let mut core = Core::new(cfg());
    let v = core.classify(&udp_to(Ipv4Addr::new(8, 8, 8, 8)));
    assert!(
        matches!(v, Verdict::Udp { ref payload, .. } if payload == b"x"),
        "{v:?}"
    );
    assert_eq!(
        core.classify(&udp_to(Ipv4Addr::new(172, 18, 0, 5))),
        Verdict::DropReason(DropReason::Isolated)
    );
    assert_eq!(
        core.classify(&udp_to(Ipv4Addr::new(10, 9, 9, 1))),
        Verdict::DropReason(DropReason::Isolated)
    );
    let mut c = cfg();
    c.internal = true;
    let mut internal = Core::new(c);
    assert_eq!(
        internal.classify(&udp_to(Ipv4Addr::new(8, 8, 8, 8))),
        Verdict::DropReason(DropReason::Internal)
    );
    // The gateway's own services still answer on internal networks.
    let v = internal.classify(&udp_to(Ipv4Addr::new(172, 17, 0, 1)));
    assert!(matches!(v, Verdict::Udp { .. }), "{v:?}");
}

#[test]
fn corrupted_checksums_and_garbage_are_dropped() {
    let mut core = Core::new(cfg());
    let mut req = hex("0242ac110001020000000002080045000020000740004001e2b0ac110002ac110001080021041234000161626364");
    let last = req.len() - 1;
    req[last] ^= 0xff;
    assert_eq!(
        core.classify(&req),
        Verdict::DropReason(DropReason::Malformed)
    );
    // Every truncation and a byte-flipped copy at every position: no panic.
    let good = hex("3333ff00000102000000000286dd6000000000203afffd000000000000000000000000000002ff0200000000000000000001ff00000187007d9700000000fd0000000000000000000000000000010101020000000002");
    for cut in 0..good.len() {
        let _ = core.classify(&good[..cut]);
        let mut f = good.clone();
        f[cut] = f[cut].wrapping_add(0x5a);
        let _ = core.classify(&f);
    }
}

#[test]
fn frames_to_unknown_neighbours_are_queued_behind_an_arp_request() {
    let mut core = Core::new(cfg());
    let p = crate::core::udp_packet(
        "8.8.8.8:53".parse().expect("addr"),
        "172.17.0.9:5000".parse().expect("addr"),
        b"reply",
    )
    .expect("packet");
    let Err(Some(arp)) = core.frame_to(p) else {
        panic!("expected an ARP request");
    };
    assert_eq!(&arp[..6], &[0xff; 6]);
    assert_eq!(&arp[12..14], &[0x08, 0x06]);
    // The ARP reply flushes the queued packet.
    let reply = hex(
        "0242ac110001 020000000009 0806 0001 0800 06 04 0002 020000000009 ac110009 0242ac110001 ac110001",
    );
    let Verdict::Flush(frames) = core.classify(&reply) else {
        panic!("no flush");
    };
    assert_eq!(frames.len(), 1);
    assert_eq!(&frames[0][..6], &[2, 0, 0, 0, 0, 9]);
}
