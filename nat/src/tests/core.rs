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

/// What the runtime does with a verdict, split in two: the frames it sends back to the
/// switch as they are, and the one piece of work left for the I/O layer, if any.
fn outcome(v: Verdict) -> (Vec<Vec<u8>>, Option<Verdict>) {
    match v {
        Verdict::Flush(frames) => (frames, None),
        Verdict::FlushThen { flush, then } => {
            let (mut frames, work) = outcome(*then);
            flush.into_iter().rev().for_each(|f| frames.insert(0, f));
            (frames, work)
        }
        Verdict::Reply(f) => (vec![f], None),
        Verdict::Ignore => (Vec::new(), None),
        other => (Vec::new(), Some(other)),
    }
}

const NINE_MAC: [u8; 6] = [2, 0, 0, 0, 0, 9];

/// An Ethernet frame from 02:00:00:00:00:09 to the gateway carrying `ip_packet`.
fn from_nine(ip_packet: &[u8]) -> Vec<u8> {
    let ethertype = if ip_packet[0] >> 4 == 4 {
        smoltcp::wire::EthernetProtocol::Ipv4
    } else {
        smoltcp::wire::EthernetProtocol::Ipv6
    };
    let mut f = Core::new(cfg()).eth(GW_MAC, ethertype, ip_packet);
    f[6..12].copy_from_slice(&NINE_MAC);
    f
}

/// Queue one reply from 8.8.8.8 (or 2001:db8::8) to `to`, whose MAC is unknown.
fn queue_reply_to(core: &mut Core, to: &str) {
    let from = if to.starts_with('[') {
        "[2001:db8::8]:53"
    } else {
        "8.8.8.8:53"
    };
    let p = crate::core::udp_packet(
        from.parse().expect("addr"),
        to.parse().expect("addr"),
        b"queued",
    )
    .expect("packet");
    assert!(
        matches!(core.frame_to(p), Err(Some(_))),
        "expected a solicitation"
    );
}

/// The UDP payloads of frames sent to 02:00:00:00:00:09.
fn payloads_to_nine(frames: &[Vec<u8>]) -> Vec<Vec<u8>> {
    frames
        .iter()
        .map(|f| {
            assert_eq!(&f[..6], &NINE_MAC, "frame not addressed to the neighbour");
            let l4 = if f[14] >> 4 == 4 {
                &f[14 + 20..]
            } else {
                &f[14 + 40..]
            };
            l4[8..].to_vec()
        })
        .collect()
}

#[test]
fn a_datagram_that_resolves_a_neighbour_is_delivered_with_the_queue() {
    let mut core = Core::new(cfg());
    queue_reply_to(&mut core, "172.17.0.9:5000");
    // 172.17.0.9 asks the gateway's DNS before it answers the ARP request: the queued
    // reply leaves, and the query is not lost.
    let query = crate::core::udp_packet(
        "172.17.0.9:5001".parse().expect("addr"),
        "172.17.0.1:53".parse().expect("addr"),
        b"query",
    )
    .expect("packet");
    let (sent, work) = outcome(core.classify(&from_nine(&query)));
    assert_eq!(payloads_to_nine(&sent), vec![b"queued".to_vec()]);
    assert_eq!(
        work,
        Some(Verdict::Dns {
            src: "172.17.0.9:5001".parse().expect("addr"),
            query: b"query".to_vec(),
        })
    );
    // Its ARP reply then finds nothing left to send.
    let reply = hex(
        "0242ac110001 020000000009 0806 0001 0800 06 04 0002 020000000009 ac110009 0242ac110001 ac110001",
    );
    assert_eq!(core.classify(&reply), Verdict::Ignore);

    // The same for a datagram leaving the subnet.
    queue_reply_to(&mut core, "172.17.0.10:5000");
    let mut egress = from_nine(
        &crate::core::udp_packet(
            "172.17.0.10:5002".parse().expect("addr"),
            "1.1.1.1:53".parse().expect("addr"),
            b"out",
        )
        .expect("packet"),
    );
    egress[11] = 10;
    let (sent, work) = outcome(core.classify(&egress));
    assert_eq!(sent.len(), 1);
    assert_eq!(&sent[0][..6], &[2, 0, 0, 0, 0, 10]);
    assert!(
        matches!(work, Some(Verdict::Udp { ref payload, .. }) if payload == b"out"),
        "{work:?}"
    );
}

#[test]
fn an_arp_request_that_resolves_a_neighbour_is_answered_and_flushes_the_queue() {
    let mut core = Core::new(cfg());
    queue_reply_to(&mut core, "172.17.0.9:5000");
    // 172.17.0.9 asks for the gateway's MAC instead of answering.
    let req = hex(
        "ffffffffffff 020000000009 0806 0001 0800 06 04 0001 020000000009 ac110009 000000000000 ac110001",
    );
    let (sent, work) = outcome(core.classify(&req));
    assert_eq!(work, None);
    let want = hex(
        "020000000009 0242ac110001 0806 0001 0800 06 04 0002 0242ac110001 ac110001 020000000009 ac110009",
    );
    assert!(sent.contains(&want), "no ARP reply in {sent:?}");
    let datagrams: Vec<Vec<u8>> = sent.into_iter().filter(|f| f != &want).collect();
    assert_eq!(payloads_to_nine(&datagrams), vec![b"queued".to_vec()]);
}

#[test]
fn ipv6_frames_that_resolve_a_neighbour_are_delivered_with_the_queue() {
    let mut core = Core::new(cfg());
    queue_reply_to(&mut core, "[fd00::9]:5000");
    let query = crate::core::udp_packet(
        "[fd00::9]:5001".parse().expect("addr"),
        "[fd00::1]:53".parse().expect("addr"),
        b"query6",
    )
    .expect("packet");
    let (sent, work) = outcome(core.classify(&from_nine(&query)));
    assert_eq!(payloads_to_nine(&sent), vec![b"queued".to_vec()]);
    assert_eq!(
        work,
        Some(Verdict::Dns {
            src: "[fd00::9]:5001".parse().expect("addr"),
            query: b"query6".to_vec(),
        })
    );

    // A neighbour solicitation for the gateway from fd00::9 with a reply queued for it:
    // answered, and the queue flushed.
    core.forget("fd00::9".parse().expect("v6"));
    queue_reply_to(&mut core, "[fd00::9]:5000");
    let ns = hex("3333ff00000102000000000986dd6000000000203afffd000000000000000000000000000009ff0200000000000000000001ff00000187007d8900000000fd0000000000000000000000000000010101020000000009");
    let (sent, work) = outcome(core.classify(&ns));
    assert_eq!(work, None);
    let (adverts, datagrams): (Vec<_>, Vec<_>) = sent.into_iter().partition(|f| {
        let ip = Ipv6Packet::new_checked(&f[14..]).expect("ip6");
        ip.next_header() == smoltcp::wire::IpProtocol::Icmpv6
    });
    assert_eq!(adverts.len(), 1, "no neighbour advertisement");
    assert_eq!(payloads_to_nine(&datagrams), vec![b"queued".to_vec()]);
}

/// Found by the `gateway_classify` fuzz target: an IPv6 packet whose source is the
/// gateway's own address was handed to the I/O layer as a sandbox's (a DNS query here;
/// UDP, TCP and echo alike), where IPv4 refused it. Both families drop it now.
#[test]
fn packets_from_the_gateways_own_address_are_not_for_us() {
    let mut core = Core::new(cfg());
    for (src, dst) in [
        ("[fd00::1]:5001", "[fd00::1]:53"),
        ("[fd00::1]:5001", "[2001:db8::1]:53"),
        ("172.17.0.1:5001", "172.17.0.1:53"),
        ("172.17.0.1:5001", "8.8.8.8:53"),
    ] {
        let p =
            crate::core::udp_packet(src.parse().expect("addr"), dst.parse().expect("addr"), b"q")
                .expect("packet");
        assert_eq!(
            core.classify(&from_nine(&p)),
            Verdict::DropReason(DropReason::NotForUs),
            "{src} -> {dst}"
        );
    }
}

#[test]
fn neighbour_table_is_bounded_per_mac_and_in_all() {
    use crate::core::{MAX_NEIGHBOURS, MAX_PENDING_NEIGHBOURS, NEIGHBOURS_PER_MAC};
    let mut core = Core::new(cfg());
    let attacker = [2, 0, 0, 0, 0, 0x66];
    // One MAC claiming 100 link-local addresses (anti-spoofing lets fe80::/10 through).
    for i in 0..100u16 {
        let ip = IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, i + 1));
        core.learn(ip, attacker);
    }
    assert_eq!(core.neighbours(), NEIGHBOURS_PER_MAC);
    assert_eq!(core.neighbours_refused(), 100 - NEIGHBOURS_PER_MAC as u64);
    // Another sender is still learned.
    let honest = IpAddr::V4(Ipv4Addr::new(172, 17, 0, 9));
    core.learn(honest, [2, 0, 0, 0, 0, 9]);
    assert_eq!(core.neighbour(honest), Some([2, 0, 0, 0, 0, 9]));
    // An address moved to a MAC at its limit is forgotten, not kept stale.
    core.learn(honest, attacker);
    assert_eq!(core.neighbour(honest), None);
    // Forgetting gives the MAC its place back.
    core.forget(IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1)));
    core.learn(honest, attacker);
    assert_eq!(core.neighbour(honest), Some(attacker));

    // The whole table: distinct MACs past MAX_NEIGHBOURS keep it at its size, and the
    // newest is learned.
    let mut core = Core::new(cfg());
    let n = u32::try_from(MAX_NEIGHBOURS).expect("fits") + 100;
    for i in 0..n {
        let [_, a, b, c] = (i + 2).to_be_bytes();
        let ip = IpAddr::V4(Ipv4Addr::new(172, 17, b, c));
        core.learn(ip, [2, 1, 0, a, b, c]);
    }
    assert_eq!(core.neighbours(), MAX_NEIGHBOURS);
    let [_, _, b, c] = (n + 1).to_be_bytes();
    assert!(core
        .neighbour(IpAddr::V4(Ipv4Addr::new(172, 17, b, c)))
        .is_some());

    // Packets to on-network addresses that never answer: a bounded number wait.
    let mut core = Core::new(cfg());
    for i in 0..1000u16 {
        let [hi, lo] = (i + 2).to_be_bytes();
        let mut p = vec![0x45, 0, 0, 20, 0, 0, 0, 0, 64, 17, 0, 0, 172, 17, 0, 1];
        p.extend_from_slice(&[172, 17, hi, lo]);
        assert!(core.frame_to(p).is_err(), "no MAC known yet");
    }
    assert_eq!(core.pending_neighbours(), MAX_PENDING_NEIGHBOURS);
}
