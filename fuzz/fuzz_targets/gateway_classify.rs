//! `gateway_classify`: datagrams from the switch into the gateway's parsing, as the
//! gateway runtime does it: `vnet::ingest` (GSO segmentation, checksum completion) or,
//! with tap offloads, `vnet::prepare_offloaded`, then `Core::classify` on each frame;
//! and IP packets into `Core::frame_to` (neighbour resolution and its queue).
//!
//! Input: a config byte (bit 0: IPv6 on the network; bit 1: tap offloads; bit 2:
//! internal network; bit 3: 192.168.0.0/16 and 203.0.113.7 isolated), then records:
//! tag & 3 = 0: a datagram (vnet header + frame) through `ingest`; 1: through
//! `prepare_offloaded` when offloads are on (else `ingest`); 2: an IP packet to
//! `frame_to`; 3: the neighbour of the packet's source is forgotten.
//!
//! Asserted (besides "no panic"): every frame the gateway emits (replies, flushed
//! queues, solicitations, `frame_to`'s frames) is an Ethernet frame from the gateway's
//! MAC whose IPv4 header checksum, and ICMP/ICMPv6/UDP checksums, verify; a TCP
//! verdict's range is the frame's IP packet; work for the I/O layer always comes from
//! an address on the network that is not the gateway's; an internal network never
//! yields egress work, and nothing goes to an isolated address; the neighbour table
//! learns only addresses on the network.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    EthernetFrame, EthernetProtocol, Icmpv4Packet, Icmpv4Repr, Icmpv6Packet, Icmpv6Repr, IpAddress,
    IpProtocol, Ipv4Packet, Ipv4Repr, Ipv6Packet, Ipv6Repr, UdpPacket, UdpRepr,
};
use std::net::IpAddr;
use tapnet_fuzz::{Input, GW_MAC, GW_V4, GW_V6};
use tapnet_nat::core::{Core, Verdict};
use tapnet_nat::{vnet, Config};
use tapnet_switch::VNET_HDR_LEN;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let cfg = input.byte();
    let mut c = Config::new(GW_MAC, GW_V4, 24);
    if cfg & 1 != 0 {
        c.ipv6 = Some((GW_V6, 64));
    }
    c.tap_offloads = cfg & 2 != 0;
    c.internal = cfg & 4 != 0;
    if cfg & 8 != 0 {
        c.isolated_subnets = vec![
            "192.168.0.0/16".parse().expect("net"),
            "203.0.113.7/32".parse().expect("net"),
        ];
    }
    let offloads = c.tap_offloads;
    let mut core = Core::new(c);
    let mut frames = Vec::new();
    while let Some((tag, body)) = input.record() {
        match tag & 3 {
            0 | 1 => {
                let mut dg = body.to_vec();
                frames.clear();
                if offloads && tag & 3 == 1 {
                    match vnet::prepare_offloaded(&mut dg) {
                        Ok(true) => {
                            let eth = dg.get(VNET_HDR_LEN..).unwrap_or_default();
                            let v = core.classify(eth);
                            check_verdict(&core, eth, &v);
                            continue;
                        }
                        Ok(false) => {}
                        Err(_) => continue,
                    }
                }
                if vnet::ingest(&dg, &mut frames).is_err() {
                    continue;
                }
                // The switch forwards nothing shorter than an Ethernet header; from a
                // datagram that long, every frame `ingest` hands the core is that long too.
                let whole = dg.len() >= VNET_HDR_LEN + 14;
                for f in &frames {
                    if whole {
                        check_plain(f);
                    }
                    let v = core.classify(f);
                    check_verdict(&core, f, &v);
                }
            }
            2 => match core.frame_to(body.to_vec()) {
                Ok(f) => {
                    // The packet is the caller's: only the Ethernet header is ours.
                    let e = EthernetFrame::new_checked(&f[..]).expect("frame_to: frame");
                    assert_eq!(e.src_addr().0, GW_MAC);
                    assert_eq!(e.payload(), body);
                }
                Err(Some(solicit)) => check_emitted(&solicit),
                Err(None) => {}
            },
            _ => {
                if let Some(ip) = src_of(body) {
                    core.forget(ip);
                    assert!(core.neighbour(ip).is_none());
                }
            }
        }
    }
});

/// The source address of an IP packet.
fn src_of(p: &[u8]) -> Option<IpAddr> {
    match p.first()? >> 4 {
        4 => Some(IpAddr::V4(Ipv4Packet::new_checked(p).ok()?.src_addr())),
        6 => Some(IpAddr::V6(Ipv6Packet::new_checked(p).ok()?.src_addr())),
        _ => None,
    }
}

/// `ingest` hands the core plain frames: at least an Ethernet header.
fn check_plain(f: &[u8]) {
    assert!(f.len() >= 14, "ingest produced a {}-byte frame", f.len());
}

fn check_verdict(core: &Core, frame: &[u8], v: &Verdict) {
    let cfg = core.config();
    let egress_ok = |dst: IpAddr| {
        assert!(!cfg.internal, "egress work on an internal network to {dst}");
        assert!(!core.is_isolated(dst), "egress work to isolated {dst}");
        assert!(!core.on_network(dst), "egress work to on-network {dst}");
    };
    let from_network = |src: IpAddr| {
        assert!(core.on_network(src), "work from off-network {src}");
        assert!(
            !core.is_gateway(src),
            "work from the gateway's own address {src}"
        );
        if let Some(m) = core.neighbour(src) {
            // Learned from this very frame.
            assert_eq!(&m[..], &frame[6..12]);
        }
    };
    match v {
        Verdict::Reply(f) => check_emitted(f),
        Verdict::Flush(fs) => fs.iter().for_each(|f| check_frame_to(f)),
        Verdict::FlushThen { flush, then } => {
            flush.iter().for_each(|f| check_frame_to(f));
            assert!(!matches!(
                **then,
                Verdict::Ignore | Verdict::Flush(_) | Verdict::FlushThen { .. }
            ));
            check_verdict(core, frame, then);
        }
        Verdict::Tcp { at, src, dst, .. } => {
            assert_eq!(at.start, 14);
            let ip = frame.get(at.clone()).expect("TCP range inside the frame");
            assert_eq!(src_of(ip), Some(src.ip()));
            from_network(src.ip());
            if !core.is_gateway(dst.ip()) {
                egress_ok(dst.ip());
            }
        }
        Verdict::Udp { src, dst, .. } => {
            from_network(src.ip());
            if !core.is_gateway(dst.ip()) {
                egress_ok(dst.ip());
            }
        }
        Verdict::Dns { src, .. } => from_network(src.ip()),
        Verdict::Echo { src, dst, .. } => {
            from_network(*src);
            egress_ok(*dst);
        }
        Verdict::Ignore | Verdict::DropReason(_) => {}
    }
}

/// A frame from `frame_to` (a queued packet, addressed): from the gateway's MAC.
fn check_frame_to(f: &[u8]) {
    let e = EthernetFrame::new_checked(f).expect("flushed frame");
    assert_eq!(e.src_addr().0, GW_MAC);
}

/// A frame the gateway built itself: every checksum complete.
fn check_emitted(f: &[u8]) {
    let csum = ChecksumCapabilities::default();
    let e = EthernetFrame::new_checked(f).expect("emitted frame parses");
    assert_eq!(e.src_addr().0, GW_MAC, "emitted frame not from the gateway");
    match e.ethertype() {
        EthernetProtocol::Arp => {}
        EthernetProtocol::Ipv4 => {
            let p = Ipv4Packet::new_checked(e.payload()).expect("emitted IPv4");
            let r = Ipv4Repr::parse(&p, &csum).expect("emitted IPv4 header checksum");
            let (s, d) = (IpAddress::Ipv4(r.src_addr), IpAddress::Ipv4(r.dst_addr));
            match r.next_header {
                IpProtocol::Icmp => {
                    let i = Icmpv4Packet::new_checked(p.payload()).expect("emitted ICMP");
                    Icmpv4Repr::parse(&i, &csum).expect("emitted ICMP checksum");
                }
                IpProtocol::Udp => {
                    let u = UdpPacket::new_checked(p.payload()).expect("emitted UDP");
                    UdpRepr::parse(&u, &s, &d, &csum).expect("emitted UDP checksum");
                }
                _ => {}
            }
        }
        EthernetProtocol::Ipv6 => {
            let p = Ipv6Packet::new_checked(e.payload()).expect("emitted IPv6");
            let r = Ipv6Repr::parse(&p).expect("emitted IPv6 header");
            let (s, d) = (IpAddress::Ipv6(r.src_addr), IpAddress::Ipv6(r.dst_addr));
            match r.next_header {
                IpProtocol::Icmpv6 => {
                    let i = Icmpv6Packet::new_checked(p.payload()).expect("emitted ICMPv6");
                    Icmpv6Repr::parse(&r.src_addr, &r.dst_addr, &i, &csum)
                        .expect("emitted ICMPv6 checksum");
                }
                IpProtocol::Udp => {
                    let u = UdpPacket::new_checked(p.payload()).expect("emitted UDP");
                    UdpRepr::parse(&u, &s, &d, &csum).expect("emitted UDP checksum");
                }
                _ => {}
            }
        }
        t => panic!("gateway emitted ethertype {t}"),
    }
}
