//! Unit tests of the pure core, plus an in-memory multi-port harness.
#![allow(clippy::unwrap_used)]

use super::*;
use std::collections::VecDeque;

const A: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
const B: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];
const C: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0c];
const BCAST: [u8; 6] = [0xff; 6];
const MCAST: [u8; 6] = [0x01, 0x00, 0x5e, 0, 0, 1];

/// An Ethernet frame carrying `payload_len` bytes of `ethertype` payload.
fn frame(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload_len: usize) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload_len);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.resize(14 + payload_len, 0x45);
    f
}

fn ip(dst: [u8; 6], src: [u8; 6]) -> Vec<u8> {
    frame(dst, src, 0x0800, 64)
}

fn sw() -> Switch {
    Switch::new(SwitchConfig::default())
}

fn entry_port(s: &Switch, mac: [u8; 6]) -> Option<PortId> {
    s.fdb()
        .iter()
        .find(|e| e.mac == MacAddr(mac))
        .map(|e| e.port)
}

#[test]
fn mac_pack_round_trip_and_display() {
    let m = MacAddr([0x02, 0x42, 0xac, 0x11, 0x00, 0x02]);
    assert_eq!(m.to_u64(), 0x0242_ac11_0002);
    assert_eq!(MacAddr::from_u64(m.to_u64()), m);
    assert_eq!(m.to_string(), "02:42:ac:11:00:02");
    assert_eq!(format!("{m:?}"), "02:42:ac:11:00:02");
    assert!(MacAddr::BROADCAST.is_multicast());
    assert!(MacAddr(MCAST).is_multicast());
    assert!(!m.is_multicast());
    assert!(MacAddr::default().is_zero());
}

#[test]
fn drop_reason_names_and_indexes() {
    for (i, r) in DropReason::ALL.iter().enumerate() {
        assert_eq!(*r as usize, i);
        assert!(!r.name().is_empty());
    }
    let names: Vec<&str> = DropReason::ALL.iter().map(|r| r.name()).collect();
    // Stable: the API and metrics use these.
    assert_eq!(
        names,
        [
            "truncated",
            "bad_source_mac",
            "bad_vnet_hdr",
            "same_segment",
            "tx_error",
            "spoofed_mac",
            "spoofed_ip",
            "spoofed_arp",
            "unsupported",
            "icc_denied",
        ]
    );
}

#[test]
fn learns_source_and_floods_unknown() {
    let mut s = sw();
    assert_eq!(s.decide(&ip(B, A), 1, 10), Action::Flood { except: 1 });
    assert_eq!(
        s.fdb(),
        vec![FdbEntry {
            mac: MacAddr(A),
            port: 1,
            last_seen_ms: 10
        }]
    );
}

#[test]
fn unicast_to_learned_port() {
    let mut s = sw();
    s.decide(&ip(B, A), 1, 0);
    assert_eq!(s.decide(&ip(A, B), 2, 1), Action::Unicast(1));
    assert_eq!(s.decide(&ip(B, A), 1, 2), Action::Unicast(2));
    assert_eq!(s.fdb_len(), 2);
}

#[test]
fn broadcast_and_multicast_flood_even_when_known() {
    let mut s = sw();
    s.decide(&ip(B, A), 1, 0);
    s.decide(&ip(A, B), 2, 0);
    assert_eq!(s.decide(&ip(BCAST, A), 1, 1), Action::Flood { except: 1 });
    assert_eq!(s.decide(&ip(MCAST, B), 2, 1), Action::Flood { except: 2 });
    assert_eq!(
        s.decide(&frame(BCAST, C, 0x0806, 28), 3, 1),
        Action::Flood { except: 3 }
    );
    assert_eq!(entry_port(&s, C), Some(3));
}

#[test]
fn same_segment_drop() {
    let mut s = sw();
    s.decide(&ip(BCAST, A), 1, 0);
    s.decide(&ip(BCAST, B), 1, 0);
    assert_eq!(
        s.decide(&ip(B, A), 1, 1),
        Action::Drop(DropReason::SameSegment)
    );
    // A frame addressed to its own sender is the same segment too.
    assert_eq!(
        s.decide(&ip(A, A), 1, 1),
        Action::Drop(DropReason::SameSegment)
    );
}

#[test]
fn ageing_on_lookup_and_expire() {
    let mut s = Switch::new(SwitchConfig {
        ageing_ms: 1000,
        fdb_limit: 16,
        ..SwitchConfig::default()
    });
    s.decide(&ip(BCAST, A), 1, 0);
    // Exactly at the ageing time the entry is still valid.
    assert_eq!(s.decide(&ip(A, B), 2, 1000), Action::Unicast(1));
    // One ms later it is stale: flood, and the entry is gone.
    assert_eq!(s.decide(&ip(A, B), 2, 1001), Action::Flood { except: 2 });
    assert_eq!(entry_port(&s, A), None);
    assert_eq!(entry_port(&s, B), Some(2));

    // expire() removes only stale entries.
    s.decide(&ip(BCAST, C), 3, 1500);
    s.expire(2001);
    assert_eq!(entry_port(&s, B), Some(2));
    s.expire(2002);
    assert_eq!(entry_port(&s, B), None);
    assert_eq!(entry_port(&s, C), Some(3));
    s.expire(10_000);
    assert!(s.fdb().is_empty());
}

#[test]
fn traffic_refreshes_entries() {
    let mut s = Switch::new(SwitchConfig {
        ageing_ms: 100,
        fdb_limit: 16,
        ..SwitchConfig::default()
    });
    for t in (0..1000).step_by(50) {
        s.decide(&ip(BCAST, A), 1, t);
    }
    assert_eq!(s.decide(&ip(A, B), 2, 1000), Action::Unicast(1));
    assert_eq!(s.fdb()[0].last_seen_ms, 950);
}

#[test]
fn clock_going_backwards_does_not_expire() {
    let mut s = Switch::new(SwitchConfig {
        ageing_ms: 100,
        fdb_limit: 16,
        ..SwitchConfig::default()
    });
    s.decide(&ip(BCAST, A), 1, 500);
    assert_eq!(s.decide(&ip(A, B), 2, 0), Action::Unicast(1));
    s.expire(0);
    assert_eq!(entry_port(&s, A), Some(1));
}

#[test]
fn moving_mac_follows_last_port() {
    let mut s = sw();
    s.decide(&ip(BCAST, A), 1, 0);
    s.decide(&ip(BCAST, B), 2, 0);
    assert_eq!(s.decide(&ip(A, B), 2, 1), Action::Unicast(1));
    s.decide(&ip(BCAST, A), 3, 2);
    assert_eq!(s.decide(&ip(A, B), 2, 3), Action::Unicast(3));
    assert_eq!(s.fdb_len(), 2);
    assert_eq!(
        s.fdb()[0],
        FdbEntry {
            mac: MacAddr(A),
            port: 3,
            last_seen_ms: 2
        }
    );
}

#[test]
fn fdb_limit_not_learned_counted_still_forwarded() {
    let mut s = Switch::new(SwitchConfig {
        ageing_ms: 1000,
        fdb_limit: 2,
        ..SwitchConfig::default()
    });
    s.decide(&ip(BCAST, A), 1, 0);
    s.decide(&ip(BCAST, B), 2, 0);
    assert_eq!(s.counters(), SwitchCounters::default());
    // New source, table full: still forwarded (to a known destination here).
    assert_eq!(s.decide(&ip(A, C), 3, 1), Action::Unicast(1));
    // ... and flooded when the destination is unknown.
    assert_eq!(s.decide(&ip(BCAST, C), 3, 1), Action::Flood { except: 3 });
    assert_eq!(s.counters().fdb_limit_hits, 2);
    assert_eq!(entry_port(&s, C), None);
    // Nobody learned C, so frames to it flood.
    assert_eq!(s.decide(&ip(C, A), 1, 2), Action::Flood { except: 1 });
    // Known MACs still refresh and move at the limit.
    s.decide(&ip(BCAST, A), 4, 3);
    assert_eq!(entry_port(&s, A), Some(4));
    assert_eq!(s.counters().fdb_limit_hits, 2);
    // After expiry there is room again.
    s.expire(1003);
    s.decide(&ip(BCAST, C), 3, 1003);
    assert_eq!(entry_port(&s, C), Some(3));
}

#[test]
fn fdb_limit_zero_never_learns() {
    let mut s = Switch::new(SwitchConfig {
        ageing_ms: 1000,
        fdb_limit: 0,
        ..SwitchConfig::default()
    });
    assert_eq!(s.decide(&ip(B, A), 1, 0), Action::Flood { except: 1 });
    assert_eq!(s.fdb_len(), 0);
    assert_eq!(s.counters().fdb_limit_hits, 1);
}

#[test]
fn forget_port_removes_only_that_port() {
    let mut s = sw();
    s.decide(&ip(BCAST, A), 1, 0);
    s.decide(&ip(BCAST, B), 2, 0);
    s.decide(&ip(BCAST, C), 1, 0);
    s.forget_port(1);
    assert_eq!(
        s.fdb(),
        vec![FdbEntry {
            mac: MacAddr(B),
            port: 2,
            last_seen_ms: 0
        }]
    );
    assert_eq!(s.decide(&ip(A, B), 2, 1), Action::Flood { except: 2 });
    s.forget_port(99);
    assert_eq!(s.fdb_len(), 1);
}

#[test]
fn truncated_ethernet() {
    let mut s = sw();
    let f = ip(B, A);
    for len in 0..14 {
        assert_eq!(
            s.decide(&f[..len], 1, 0),
            Action::Drop(DropReason::Truncated),
            "len {len}"
        );
    }
    assert_eq!(s.fdb_len(), 0, "malformed frames teach nothing");
}

#[test]
fn bad_source_mac() {
    let mut s = sw();
    for src in [BCAST, MCAST, [0; 6], [0x03, 0, 0, 0, 0, 1]] {
        assert_eq!(
            s.decide(&ip(B, src), 1, 0),
            Action::Drop(DropReason::BadSourceMac)
        );
    }
    assert_eq!(s.fdb_len(), 0);
}

#[test]
fn truncated_l3_headers() {
    let mut s = sw();
    for (et, min) in [(0x0800u16, 20usize), (0x86dd, 40), (0x0806, 28)] {
        for len in 0..min {
            assert_eq!(
                s.decide(&frame(B, A, et, len), 1, 0),
                Action::Drop(DropReason::Truncated),
                "ethertype {et:#06x} payload {len}"
            );
        }
        assert_eq!(
            s.decide(&frame(B, A, et, min), 1, 0),
            Action::Flood { except: 1 }
        );
    }
    // Other ethertypes have no minimum.
    assert_eq!(
        s.decide(&frame(B, A, 0x88cc, 0), 1, 0),
        Action::Flood { except: 1 }
    );
}

/// An 802.1Q-tagged frame: outer 0x8100, TCI, inner ethertype, payload.
fn tagged(inner: u16, payload_len: usize) -> Vec<u8> {
    let mut f = frame(B, A, 0x8100, 0);
    f.extend_from_slice(&[0x00, 0x05]); // TCI: VLAN 5
    f.extend_from_slice(&inner.to_be_bytes());
    f.resize(18 + payload_len, 0);
    f
}

#[test]
fn vlan_tagged_frames() {
    let mut s = sw();
    // Tag cut short.
    let t = tagged(0x0800, 20);
    for len in 14..18 {
        assert_eq!(
            s.decide(&t[..len], 1, 0),
            Action::Drop(DropReason::Truncated)
        );
    }
    // Inner L3 length is checked after the tag.
    assert_eq!(
        s.decide(&tagged(0x0800, 19), 1, 0),
        Action::Drop(DropReason::Truncated)
    );
    assert_eq!(
        s.decide(&tagged(0x86dd, 39), 1, 0),
        Action::Drop(DropReason::Truncated)
    );
    assert_eq!(
        s.decide(&tagged(0x0806, 27), 1, 0),
        Action::Drop(DropReason::Truncated)
    );
    assert_eq!(
        s.decide(&tagged(0x0800, 20), 1, 0),
        Action::Flood { except: 1 }
    );
    assert_eq!(
        s.decide(&tagged(0x9000, 0), 1, 0),
        Action::Flood { except: 1 }
    );
}

#[test]
fn never_panics_on_arbitrary_bytes() {
    // A small deterministic xorshift over lengths and contents.
    let mut s = Switch::new(SwitchConfig {
        ageing_ms: 5,
        fdb_limit: 64,
        ..SwitchConfig::default()
    });
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for i in 0..20_000u64 {
        let len = (next() % 80) as usize;
        let mut f: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if len >= 14 && i % 3 == 0 {
            f[12..14].copy_from_slice(
                &[[0x08, 0x00], [0x86, 0xdd], [0x08, 0x06], [0x81, 0x00]][i as usize % 4],
            );
        }
        let _ = s.decide(&f, (next() % 8) as PortId, i);
        let _ = check_vnet_hdr(&f, (next() % 100) as usize);
        if i % 1000 == 0 {
            s.expire(i);
        }
    }
    assert!(s.fdb_len() <= 64);
}

#[test]
fn never_panics_with_policy_and_icc_off() {
    let mut s = Switch::new(SwitchConfig {
        icc: false,
        ..SwitchConfig::default()
    });
    s.set_port(0, PortRole::Gateway, None);
    for p in 1..8 {
        s.set_port(p, PortRole::Endpoint, Some(policy(A)));
    }
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for i in 0..20_000u64 {
        let len = (next() % 90) as usize;
        let mut f: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if len >= 14 && i % 2 == 0 {
            f[6..12].copy_from_slice(&A);
            f[12..14].copy_from_slice(
                &[[0x08, 0x00], [0x86, 0xdd], [0x08, 0x06], [0x81, 0x00]][i as usize % 4],
            );
        }
        let _ = s.decide(&f, (next() % 8) as PortId, i);
    }
}

/// A virtio-net header from its fields.
fn vnet(flags: u8, gso_type: u8, gso_size: u16, csum_start: u16, csum_offset: u16) -> [u8; 10] {
    let mut h = [0u8; 10];
    h[0] = flags;
    h[1] = gso_type;
    h[2..4].copy_from_slice(&54u16.to_le_bytes());
    h[4..6].copy_from_slice(&gso_size.to_le_bytes());
    h[6..8].copy_from_slice(&csum_start.to_le_bytes());
    h[8..10].copy_from_slice(&csum_offset.to_le_bytes());
    h
}

#[test]
fn vnet_hdr_plain_and_gso_types() {
    assert_eq!(check_vnet_hdr(&[0; 10], 60), Ok(()));
    assert_eq!(check_vnet_hdr(&[0; 10], 0), Ok(()));
    for t in [1u8, 3, 4, 5] {
        assert_eq!(
            check_vnet_hdr(&vnet(0, t, 1448, 0, 0), 65_000),
            Ok(()),
            "gso {t}"
        );
        assert_eq!(
            check_vnet_hdr(&vnet(0, t | 0x80, 1448, 0, 0), 65_000),
            Ok(()),
            "gso {t}|ecn"
        );
    }
    assert_eq!(check_vnet_hdr(&vnet(0, 0x80, 0, 0, 0), 60), Ok(()));
    // Longer slices: only the first 10 bytes count.
    let mut long = vnet(0, 1, 1448, 0, 0).to_vec();
    long.extend_from_slice(&[0xff; 20]);
    assert_eq!(check_vnet_hdr(&long, 100), Ok(()));
}

#[test]
fn vnet_hdr_bad_gso() {
    for t in [2u8, 6, 7, 0x40, 0x7f, 0xff, 0x82] {
        assert_eq!(
            check_vnet_hdr(&vnet(0, t, 1448, 0, 0), 1500),
            Err(DropReason::BadVnetHdr),
            "gso {t:#x}"
        );
    }
    // GSO without a segment size.
    assert_eq!(
        check_vnet_hdr(&vnet(0, 1, 0, 0, 0), 1500),
        Err(DropReason::BadVnetHdr)
    );
}

#[test]
fn vnet_hdr_csum_bounds() {
    // TCP over IPv4: csum_start 34, csum_offset 16 → field at 50..52.
    assert_eq!(check_vnet_hdr(&vnet(1, 0, 0, 34, 16), 52), Ok(()));
    assert_eq!(
        check_vnet_hdr(&vnet(1, 0, 0, 34, 16), 51),
        Err(DropReason::BadVnetHdr)
    );
    assert_eq!(
        check_vnet_hdr(&vnet(1, 0, 0, 0xffff, 0xffff), 65_536),
        Err(DropReason::BadVnetHdr)
    );
    // Without NEEDS_CSUM the offsets are not looked at.
    assert_eq!(check_vnet_hdr(&vnet(2, 0, 0, 0xffff, 0xffff), 60), Ok(()));
}

#[test]
fn vnet_hdr_short() {
    for len in 0..10 {
        assert_eq!(
            check_vnet_hdr(&[0; 10][..len], 60),
            Err(DropReason::Truncated)
        );
    }
}

/// In-memory harness: ports are queues, a "wire" step moves every queued frame
/// through the switch to the egress queues.
struct Harness {
    sw: Switch,
    now: u64,
    /// Per port: frames the host sent into the switch.
    ingress: Vec<VecDeque<Vec<u8>>>,
    /// Per port: frames the switch delivered.
    egress: Vec<Vec<Vec<u8>>>,
    drops: Vec<(PortId, DropReason)>,
}

impl Harness {
    fn new(ports: usize) -> Harness {
        Harness {
            sw: sw(),
            now: 0,
            ingress: vec![VecDeque::new(); ports],
            egress: vec![Vec::new(); ports],
            drops: Vec::new(),
        }
    }

    fn send(&mut self, port: usize, f: Vec<u8>) {
        self.ingress[port].push_back(f);
    }

    fn run(&mut self) {
        for p in 0..self.ingress.len() {
            while let Some(f) = self.ingress[p].pop_front() {
                match self.sw.decide(&f, p as PortId, self.now) {
                    Action::Drop(r) => self.drops.push((p as PortId, r)),
                    Action::Unicast(q) => self.egress[q as usize].push(f),
                    Action::Flood { except } => {
                        for q in 0..self.egress.len() {
                            if q as PortId != except {
                                self.egress[q].push(f.clone());
                            }
                        }
                    }
                    Action::ToGateways => {
                        for q in 0..self.egress.len() {
                            if self.sw.port_role(q as PortId) == PortRole::Gateway {
                                self.egress[q].push(f.clone());
                            }
                        }
                    }
                }
            }
        }
        self.now += 1;
    }

    fn take(&mut self, port: usize) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.egress[port])
    }
}

#[test]
fn harness_arp_then_unicast_conversation() {
    let mut h = Harness::new(3);
    // A on port 0 ARPs for B.
    let req = frame(BCAST, A, 0x0806, 28);
    h.send(0, req.clone());
    h.run();
    assert!(h.take(0).is_empty());
    assert_eq!(h.take(1), vec![req.clone()]);
    assert_eq!(h.take(2), vec![req]);
    // B on port 1 answers with unicast: only port 0 gets it.
    let rep = frame(A, B, 0x0806, 28);
    h.send(1, rep.clone());
    h.run();
    assert_eq!(h.take(0), vec![rep]);
    assert!(h.take(1).is_empty());
    assert!(h.take(2).is_empty());
    // Now IP both ways is unicast; C on port 2 sees nothing.
    for _ in 0..10 {
        h.send(0, ip(B, A));
        h.send(1, ip(A, B));
    }
    h.run();
    assert_eq!(h.take(0).len(), 10);
    assert_eq!(h.take(1).len(), 10);
    assert!(h.take(2).is_empty());
    // Garbage from C is dropped and does not disturb the others.
    h.send(2, vec![0; 5]);
    h.send(2, ip(A, BCAST));
    h.send(0, ip(B, A));
    h.run();
    assert_eq!(
        h.drops,
        vec![(2, DropReason::Truncated), (2, DropReason::BadSourceMac)]
    );
    assert_eq!(h.take(1).len(), 1);
    assert!(h.take(2).is_empty());
}

#[test]
fn harness_port_removal_reverts_to_flooding() {
    let mut h = Harness::new(3);
    h.send(0, ip(BCAST, A));
    h.send(1, ip(BCAST, B));
    h.run();
    h.take(0);
    h.take(1);
    h.take(2);
    h.sw.forget_port(1);
    h.send(0, ip(B, A));
    h.run();
    assert_eq!(h.take(1).len(), 1);
    assert_eq!(h.take(2).len(), 1, "B unknown again: flooded");
}

// ---- Port policy: anti-spoofing ----

const A_IP: [u8; 4] = [10, 0, 0, 10];
const B_IP: [u8; 4] = [10, 0, 0, 11];
const A_IP6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x0a];

/// A's checked policy: MAC A, 10.0.0.10, fd00::a.
fn policy(mac: [u8; 6]) -> PortPolicy {
    PortPolicy::new(
        MacAddr(mac),
        vec![Ipv4Addr::from(A_IP)],
        vec![Ipv6Addr::from(A_IP6)],
    )
}

/// Switch with port 1 = endpoint checked as A, port 2 = plain endpoint, port 3 = gateway.
fn policed() -> Switch {
    let mut s = sw();
    s.set_port(1, PortRole::Endpoint, Some(policy(A)));
    s.set_port(3, PortRole::Gateway, None);
    s
}

/// Ethernet + minimal IPv4 header (UDP, no options) from `src_ip`, 28 bytes of payload.
fn ipv4(dst: [u8; 6], src: [u8; 6], src_ip: [u8; 4]) -> Vec<u8> {
    let mut f = frame(dst, src, 0x0800, 0);
    let mut h = [0u8; 20];
    h[0] = 0x45;
    h[2..4].copy_from_slice(&48u16.to_be_bytes());
    h[8] = 64;
    h[9] = 17;
    h[12..16].copy_from_slice(&src_ip);
    h[16..20].copy_from_slice(&B_IP);
    f.extend_from_slice(&h);
    f.resize(14 + 48, 0);
    f
}

/// Ethernet + IPv6 header (UDP) from `src_ip`, 8 bytes of payload.
fn ipv6(dst: [u8; 6], src: [u8; 6], src_ip: Ipv6Addr) -> Vec<u8> {
    let mut f = frame(dst, src, 0x86dd, 0);
    let mut h = [0u8; 40];
    h[0] = 0x60;
    h[4..6].copy_from_slice(&8u16.to_be_bytes());
    h[6] = 17;
    h[7] = 64;
    h[8..24].copy_from_slice(&src_ip.octets());
    h[24..40].copy_from_slice(&[0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    f.extend_from_slice(&h);
    f.resize(14 + 48, 0);
    f
}

/// Ethernet/IPv4 ARP request (broadcast) with the given sender fields.
fn arp(src: [u8; 6], sha: [u8; 6], spa: [u8; 4]) -> Vec<u8> {
    let mut f = frame(BCAST, src, 0x0806, 0);
    f.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    f.extend_from_slice(&sha);
    f.extend_from_slice(&spa);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&B_IP);
    f
}

#[test]
fn policy_accessors_and_defaults() {
    let s = policed();
    assert_eq!(s.port_role(1), PortRole::Endpoint);
    assert_eq!(s.port_role(3), PortRole::Gateway);
    assert_eq!(
        s.port_role(99),
        PortRole::Endpoint,
        "unknown port: endpoint"
    );
    assert_eq!(s.port_policy(1), Some(&policy(A)));
    assert_eq!(s.port_policy(2), None);
    assert!(policy(A).spoof_check, "PortPolicy::new checks");
    assert_eq!(PortOptions::default().role, PortRole::Endpoint);
    assert!(SwitchConfig::default().icc);
}

#[test]
fn own_addresses_are_forwarded() {
    let mut s = policed();
    assert_eq!(
        s.decide(&ipv4(B, A, A_IP), 1, 0),
        Action::Flood { except: 1 }
    );
    assert_eq!(
        s.decide(&ipv6(B, A, Ipv6Addr::from(A_IP6)), 1, 0),
        Action::Flood { except: 1 }
    );
    assert_eq!(
        s.decide(&arp(A, A, A_IP), 1, 0),
        Action::Flood { except: 1 }
    );
    assert_eq!(entry_port(&s, A), Some(1));
}

#[test]
fn spoofed_source_mac_is_dropped_and_not_learned() {
    let mut s = policed();
    for f in [ipv4(B, C, A_IP), arp(C, A, A_IP), frame(B, C, 0x88cc, 10)] {
        assert_eq!(s.decide(&f, 1, 0), Action::Drop(DropReason::SpoofedMac));
    }
    assert_eq!(s.fdb_len(), 0, "spoofed frames teach nothing");
    // The same frames from an unchecked port are fine.
    assert_eq!(
        s.decide(&ipv4(B, C, A_IP), 2, 0),
        Action::Flood { except: 2 }
    );
}

#[test]
fn spoofed_ipv4_source_is_dropped() {
    let mut s = policed();
    for ip in [B_IP, [0, 0, 0, 0], [255, 255, 255, 255], [127, 0, 0, 1]] {
        assert_eq!(
            s.decide(&ipv4(B, A, ip), 1, 0),
            Action::Drop(DropReason::SpoofedIp),
            "{ip:?}"
        );
    }
    assert_eq!(s.fdb_len(), 0);
}

#[test]
fn ipv6_source_list_unspecified_and_link_local() {
    let mut s = policed();
    let ok = [
        Ipv6Addr::from(A_IP6),
        Ipv6Addr::UNSPECIFIED,
        "fe80::a".parse().unwrap(),
        "fe80::1234:5678".parse().unwrap(),
        "febf::1".parse().unwrap(),
    ];
    for ip in ok {
        assert_eq!(
            s.decide(&ipv6(B, A, ip), 1, 0),
            Action::Flood { except: 1 },
            "{ip}"
        );
    }
    let bad: [Ipv6Addr; 4] = [
        "fd00::b".parse().unwrap(),
        "fec0::a".parse().unwrap(),
        "2001:db8::a".parse().unwrap(),
        "::1".parse().unwrap(),
    ];
    for ip in bad {
        assert_eq!(
            s.decide(&ipv6(B, A, ip), 1, 0),
            Action::Drop(DropReason::SpoofedIp),
            "{ip}"
        );
    }
}

#[test]
fn spoofed_arp_sender_mac_and_ip() {
    let mut s = policed();
    // Ethernet source right, ARP sender hardware address someone else's.
    assert_eq!(
        s.decide(&arp(A, C, A_IP), 1, 0),
        Action::Drop(DropReason::SpoofedArp)
    );
    // Sender IP someone else's (ARP poisoning).
    assert_eq!(
        s.decide(&arp(A, A, B_IP), 1, 0),
        Action::Drop(DropReason::SpoofedArp)
    );
    // A reply, unicast, poisoning too.
    let mut rep = arp(A, A, B_IP);
    rep[..6].copy_from_slice(&B);
    rep[21] = 2;
    assert_eq!(s.decide(&rep, 1, 0), Action::Drop(DropReason::SpoofedArp));
    assert_eq!(s.fdb_len(), 0);
}

#[test]
fn arp_probe_from_zero_is_allowed() {
    let mut s = policed();
    // RFC 5227 probe: sender IP 0.0.0.0.
    assert_eq!(
        s.decide(&arp(A, A, [0; 4]), 1, 0),
        Action::Flood { except: 1 }
    );
}

#[test]
fn arp_of_other_formats_is_dropped() {
    let mut s = policed();
    for (i, v) in [(1usize, 6u8), (3, 0x06), (4, 8), (5, 16)] {
        let mut f = arp(A, A, A_IP);
        f[14 + i] = v;
        assert_eq!(
            s.decide(&f, 1, 0),
            Action::Drop(DropReason::SpoofedArp),
            "byte {i}"
        );
    }
}

#[test]
fn vlan_tagged_from_checked_port_is_unsupported() {
    let mut s = policed();
    // `tagged` sends from A.
    assert_eq!(
        s.decide(&tagged(0x0800, 20), 1, 0),
        Action::Drop(DropReason::Unsupported)
    );
    assert_eq!(
        s.decide(&tagged(0x0800, 20), 2, 0),
        Action::Flood { except: 2 },
        "unchecked ports keep the old behaviour"
    );
}

#[test]
fn truncated_l3_from_checked_port() {
    let mut s = policed();
    for (et, min) in [(0x0800u16, 20usize), (0x86dd, 40), (0x0806, 28)] {
        assert_eq!(
            s.decide(&frame(B, A, et, min - 1), 1, 0),
            Action::Drop(DropReason::Truncated)
        );
    }
}

#[test]
fn other_ethertypes_pass_the_mac_check_only() {
    let mut s = policed();
    assert_eq!(
        s.decide(&frame(B, A, 0x88cc, 0), 1, 0),
        Action::Flood { except: 1 }
    );
}

#[test]
fn policy_off_forwards_everything() {
    let mut s = sw();
    let mut p = policy(A);
    p.spoof_check = false;
    s.set_port(1, PortRole::Endpoint, Some(p));
    let spoofed = [
        ipv4(B, C, B_IP),
        ipv4(B, A, B_IP),
        arp(A, C, B_IP),
        ipv6(B, A, "2001:db8::1".parse().unwrap()),
        tagged(0x0800, 20),
    ];
    for f in &spoofed {
        assert_eq!(s.decide(f, 1, 0), Action::Flood { except: 1 });
    }
    // Policy removed altogether: the same.
    let mut s = policed();
    s.set_port(1, PortRole::Endpoint, None);
    for f in &spoofed {
        assert_eq!(s.decide(f, 1, 0), Action::Flood { except: 1 });
    }
}

#[test]
fn gateway_port_is_exempt() {
    let mut s = sw();
    // Even with a checked policy, a gateway speaks for many addresses.
    s.set_port(3, PortRole::Gateway, Some(policy(A)));
    assert_eq!(
        s.decide(&ipv4(B, C, [93, 184, 216, 34]), 3, 0),
        Action::Flood { except: 3 }
    );
    assert_eq!(
        s.decide(&arp(C, C, B_IP), 3, 0),
        Action::Flood { except: 3 }
    );
}

#[test]
fn policy_change_takes_effect_and_forgets_old_mac() {
    let mut s = policed();
    assert_eq!(
        s.decide(&ipv4(BCAST, A, A_IP), 1, 0),
        Action::Flood { except: 1 }
    );
    s.decide(&ipv4(BCAST, B, B_IP), 2, 0);
    // Port 1 now owns C and B_IP.
    s.set_port(
        1,
        PortRole::Endpoint,
        Some(PortPolicy::new(
            MacAddr(C),
            vec![Ipv4Addr::from(B_IP)],
            vec![],
        )),
    );
    assert_eq!(entry_port(&s, A), None, "old MAC of the port forgotten");
    assert_eq!(entry_port(&s, B), Some(2), "other ports untouched");
    assert_eq!(
        s.decide(&ipv4(B, A, A_IP), 1, 1),
        Action::Drop(DropReason::SpoofedMac)
    );
    assert_eq!(
        s.decide(&ipv4(B, C, A_IP), 1, 1),
        Action::Drop(DropReason::SpoofedIp)
    );
    assert_eq!(s.decide(&ipv4(B, C, B_IP), 1, 1), Action::Unicast(2));
    // Removing the port forgets its policy too.
    s.forget_port(1);
    assert_eq!(s.port_policy(1), None);
    assert_eq!(
        s.decide(&ipv4(B, A, A_IP), 1, 2),
        Action::Unicast(2),
        "a new port with the same id starts clean"
    );
}

// ---- ICC off ----

/// ICC off; port 0 = gateway, ports 1 and 2 = endpoints (1 explicitly, 2 by default).
fn no_icc() -> Switch {
    let mut s = Switch::new(SwitchConfig {
        icc: false,
        ..SwitchConfig::default()
    });
    s.set_port(0, PortRole::Gateway, None);
    s.set_port(1, PortRole::Endpoint, None);
    s
}

const GW: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

#[test]
fn icc_off_endpoint_unicast_denied() {
    let mut s = no_icc();
    s.decide(&ip(BCAST, A), 1, 0);
    s.decide(&ip(BCAST, B), 2, 0);
    s.decide(&ip(BCAST, GW), 0, 0);
    assert_eq!(
        s.decide(&ip(B, A), 1, 1),
        Action::Drop(DropReason::IccDenied)
    );
    assert_eq!(
        s.decide(&ip(A, B), 2, 1),
        Action::Drop(DropReason::IccDenied)
    );
    // To the gateway: fine.
    assert_eq!(s.decide(&ip(GW, A), 1, 1), Action::Unicast(0));
    assert_eq!(s.decide(&ip(GW, B), 2, 1), Action::Unicast(0));
    // Same segment still wins over ICC.
    assert_eq!(
        s.decide(&ip(A, A), 1, 1),
        Action::Drop(DropReason::SameSegment)
    );
}

#[test]
fn icc_off_flooding_reaches_gateways_only() {
    let mut s = no_icc();
    assert_eq!(s.decide(&ip(BCAST, A), 1, 0), Action::ToGateways);
    assert_eq!(s.decide(&ip(MCAST, A), 1, 0), Action::ToGateways);
    assert_eq!(s.decide(&ip(C, A), 1, 0), Action::ToGateways, "unknown");
    // Learning still happens.
    assert_eq!(entry_port(&s, A), Some(1));
}

#[test]
fn icc_off_aged_destination_goes_to_gateways() {
    let mut s = Switch::new(SwitchConfig {
        icc: false,
        ageing_ms: 10,
        ..SwitchConfig::default()
    });
    s.set_port(0, PortRole::Gateway, None);
    s.decide(&ip(BCAST, B), 2, 0);
    assert_eq!(s.decide(&ip(B, A), 1, 100), Action::ToGateways);
}

#[test]
fn icc_off_gateway_reaches_everyone() {
    let mut s = no_icc();
    s.decide(&ip(BCAST, A), 1, 0);
    s.decide(&ip(BCAST, B), 2, 0);
    assert_eq!(s.decide(&ip(BCAST, GW), 0, 1), Action::Flood { except: 0 });
    assert_eq!(s.decide(&ip(A, GW), 0, 1), Action::Unicast(1));
    assert_eq!(s.decide(&ip(B, GW), 0, 1), Action::Unicast(2));
    assert_eq!(s.decide(&ip(C, GW), 0, 1), Action::Flood { except: 0 });
}

#[test]
fn icc_on_ignores_roles() {
    let mut s = sw();
    s.set_port(0, PortRole::Gateway, None);
    s.decide(&ip(BCAST, A), 1, 0);
    assert_eq!(s.decide(&ip(BCAST, B), 2, 0), Action::Flood { except: 2 });
    assert_eq!(s.decide(&ip(A, B), 2, 0), Action::Unicast(1));
}

#[test]
fn icc_off_with_spoof_checks() {
    let mut s = no_icc();
    s.set_port(1, PortRole::Endpoint, Some(policy(A)));
    assert_eq!(
        s.decide(&ipv4(BCAST, C, A_IP), 1, 0),
        Action::Drop(DropReason::SpoofedMac),
        "spoofing is judged before ICC"
    );
    assert_eq!(s.decide(&ipv4(BCAST, A, A_IP), 1, 0), Action::ToGateways);
    // Clearing the policy keeps ICC in force.
    s.set_port(1, PortRole::Endpoint, None);
    assert_eq!(s.decide(&ipv4(BCAST, C, A_IP), 1, 0), Action::ToGateways);
}

#[test]
fn harness_icc_off_conversation() {
    let mut h = Harness::new(3);
    h.sw = no_icc();
    // A (port 1) ARPs for the gateway: only the gateway hears it.
    let req = frame(BCAST, A, 0x0806, 28);
    h.send(1, req.clone());
    h.run();
    assert_eq!(h.take(0), vec![req]);
    assert!(h.take(2).is_empty());
    // Gateway answers A; B's broadcast reaches the gateway only.
    h.send(0, frame(A, GW, 0x0806, 28));
    h.send(2, ip(BCAST, B));
    h.run();
    assert_eq!(h.take(1).len(), 1);
    assert_eq!(h.take(0).len(), 1);
    // A to B (known): denied.
    h.send(1, ip(B, A));
    h.run();
    assert!(h.take(2).is_empty());
    assert_eq!(h.drops, vec![(1, DropReason::IccDenied)]);
    // The gateway's broadcast reaches both endpoints.
    h.send(0, ip(BCAST, GW));
    h.run();
    assert_eq!(h.take(1).len(), 1);
    assert_eq!(h.take(2).len(), 1);
}

#[test]
fn a_checked_port_takes_its_mac_over_from_another_port() {
    let mut s = sw();
    // A was learned behind port 2 (a remote endpoint behind the tunnel)...
    assert_eq!(s.decide(&ip(BCAST, A), 2, 0), Action::Flood { except: 2 });
    assert_eq!(entry_port(&s, A), Some(2));
    // ...then a local endpoint with MAC A joins on port 1: frames to A are no longer
    // sent to (or, from port 2, dropped for) port 2; they flood until A speaks.
    s.set_port(1, PortRole::Endpoint, Some(policy(A)));
    assert_eq!(entry_port(&s, A), None);
    assert_eq!(s.decide(&ip(A, B), 2, 0), Action::Flood { except: 2 });
}

/// A locally administered unicast MAC numbered `n`.
fn nth_mac(n: u32) -> [u8; 6] {
    let b = n.to_be_bytes();
    [0x06, 0xee, b[0], b[1], b[2], b[3]]
}

#[test]
fn one_port_cannot_fill_the_fdb() {
    let mut s = sw();
    let limit = SwitchConfig::default().fdb_port_limit;
    assert!(limit < SwitchConfig::default().fdb_limit);
    // Port 1 sends from 10,000 MACs: it keeps only its limit.
    for n in 0..10_000 {
        assert_eq!(
            s.decide(&ip(BCAST, nth_mac(n)), 1, 0),
            Action::Flood { except: 1 }
        );
    }
    assert_eq!(s.fdb_len(), limit);
    assert_eq!(s.port_fdb(1).learned, limit);
    assert_eq!(s.port_fdb(1).limit_hits, 10_000 - limit as u64);
    assert_eq!(s.counters().fdb_port_limit_hits, 10_000 - limit as u64);
    assert_eq!(s.counters().fdb_limit_hits, 0);
    // A later joiner is still learned, and unicast to it is not flooded to port 1.
    s.decide(&ip(BCAST, B), 2, 1);
    assert_eq!(entry_port(&s, B), Some(2));
    assert_eq!(s.decide(&ip(B, C), 3, 2), Action::Unicast(2));
    assert_eq!(s.decide(&ip(C, B), 2, 3), Action::Unicast(3));
    assert_eq!(s.port_fdb(2).learned, 1);
    assert_eq!(s.port_fdb(2).limit_hits, 0);
    // The MACs port 1 kept still refresh (no more hits).
    s.decide(&ip(BCAST, nth_mac(0)), 1, 4);
    assert_eq!(s.port_fdb(1).limit_hits, 10_000 - limit as u64);
}

#[test]
fn port_fdb_counts_exact_on_move_ageing_and_removal() {
    let mut s = Switch::new(SwitchConfig {
        ageing_ms: 1000,
        fdb_limit: 16,
        fdb_port_limit: 2,
        ..SwitchConfig::default()
    });
    s.decide(&ip(BCAST, A), 1, 0);
    s.decide(&ip(BCAST, B), 1, 0);
    s.decide(&ip(BCAST, C), 1, 0);
    assert_eq!(entry_port(&s, C), None);
    assert_eq!(s.port_fdb(1).learned, 2);
    assert_eq!(s.port_fdb(1).limit_hits, 1);
    // A moves to port 2: port 1 has room again, and learns C.
    s.decide(&ip(BCAST, A), 2, 1);
    assert_eq!(entry_port(&s, A), Some(2));
    assert_eq!((s.port_fdb(1).learned, s.port_fdb(2).learned), (1, 1));
    s.decide(&ip(BCAST, C), 1, 1);
    assert_eq!(entry_port(&s, C), Some(1));
    assert_eq!(s.port_fdb(1).learned, 2);
    // A MAC moving to a port at its own limit is forgotten, not left on the old port.
    s.set_port_fdb_limit(2, Some(1));
    assert_eq!(s.port_fdb(2).limit, Some(1));
    s.decide(&ip(BCAST, B), 2, 2);
    assert_eq!(entry_port(&s, B), None);
    assert_eq!((s.port_fdb(1).learned, s.port_fdb(2).learned), (1, 1));
    assert_eq!(s.port_fdb(2).limit_hits, 1);
    assert_eq!(s.counters().fdb_port_limit_hits, 2);
    assert_eq!(s.decide(&ip(B, A), 2, 2), Action::Flood { except: 2 });
    // Ageing on lookup: the stale destination entry leaves its port's count.
    s.decide(&ip(BCAST, B), 3, 500);
    assert_eq!(s.decide(&ip(C, B), 3, 1500), Action::Flood { except: 3 });
    assert_eq!(entry_port(&s, C), None);
    assert_eq!(s.port_fdb(1).learned, 0);
    // expire(): A (seen at 2 on port 2) goes, B (seen at 1500 on port 3) stays.
    s.expire(1200);
    assert_eq!((s.port_fdb(2).learned, s.port_fdb(3).learned), (0, 1));
    assert_eq!(s.fdb_len(), 1);
    // Port 1 has room for two again.
    s.decide(&ip(BCAST, A), 1, 1500);
    s.decide(&ip(BCAST, C), 1, 1500);
    assert_eq!(s.port_fdb(1).learned, 2);
    // Removal forgets the port's entries and counts.
    s.forget_port(1);
    assert_eq!(s.port_fdb(1), PortFdb::default());
    assert_eq!(s.fdb_len(), 1);
    // A checked policy forgets the port's other MACs; the count follows.
    s.decide(&ip(BCAST, C), 4, 1500);
    s.decide(&ip(BCAST, A), 4, 1500);
    assert_eq!(s.port_fdb(4).learned, 2);
    s.set_port(
        4,
        PortRole::Endpoint,
        Some(PortPolicy::new(MacAddr(A), vec![], vec![])),
    );
    assert_eq!(s.port_fdb(4).learned, 1);
    // The sum of the per-port counts is the FDB's size.
    let sum: usize = (1..=4).map(|p| s.port_fdb(p).learned).sum();
    assert_eq!(sum, s.fdb_len());
}
