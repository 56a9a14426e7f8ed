//! `switch_decide`: sequences of frames from several ports into `Switch::decide`, as
//! the switch runtime hands them (virtio-net header checked by `check_vnet_hdr`
//! first), interleaved with time passing, FDB expiry and control-plane changes.
//!
//! Input: a config byte (bit 0: ICC on; bit 1: anti-spoofing on ports 1 and 2; bit 2:
//! small FDB limits), then records (see `tapnet_fuzz`): tag & 7 = 0..=4: a datagram
//! (vnet header + Ethernet frame) from port (tag >> 3) % 5; 5: time passes (u16 ms
//! from the body, ×16); 6: `expire`; 7: the port is removed (`forget_port`) and added
//! back with its role and policy.
//!
//! Asserted after every step (besides "no panic"):
//! * the FDB never holds more than the network's limit, nor a port more than its own;
//!   the per-port counts equal what the FDB holds for each port, and their sum is the
//!   FDB's size; the per-port limit hits add up to the switch's counter;
//! * a frame dropped before learning (truncated, bad source, spoofed, unsupported)
//!   leaves the FDB exactly as it was; a frame that gets past those checks has its
//!   source learned on its ingress port, or one limit hit counted;
//! * a checked port's frames that are not dropped carry its own MAC as source;
//! * `Unicast` never goes back to the ingress port, `Flood` excepts the ingress;
//!   with ICC off an endpoint's frame never floods to endpoints and never reaches one
//!   by unicast; the decision never returns the runtime-only reasons (TX error, bad
//!   vnet header).
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::collections::HashMap;
use tapnet_fuzz::{ep_mac, ep_v4, ep_v6, Input, GW_PORT, PORTS};
use tapnet_switch::core::{
    check_vnet_hdr, Action, DropReason, MacAddr, PortPolicy, PortRole, Switch, SwitchConfig,
};
use tapnet_switch::VNET_HDR_LEN;

/// Port 4 stands for an uplink/tunnel with its own FDB limit.
const TUNNEL_PORT: u32 = 4;

struct Harness {
    sw: Switch,
    spoof: bool,
    /// Per-port limit hits of ports since removed (their `PortFdb` went with them).
    forgotten_hits: u64,
}

impl Harness {
    fn add_port(&mut self, p: u32) {
        if p == GW_PORT {
            self.sw.set_port(p, PortRole::Gateway, None);
            return;
        }
        let mut policy = PortPolicy::new(MacAddr(ep_mac(p)), vec![ep_v4(p)], vec![ep_v6(p)]);
        policy.spoof_check = self.spoof && (p == 1 || p == 2);
        self.sw.set_port(p, PortRole::Endpoint, Some(policy));
        if p == TUNNEL_PORT {
            let limit = self.sw.config().fdb_port_limit * 2;
            self.sw.set_port_fdb_limit(p, Some(limit));
        }
    }

    fn limit_of(&self, p: u32) -> usize {
        self.sw
            .port_fdb(p)
            .limit
            .unwrap_or(self.sw.config().fdb_port_limit)
    }

    /// The whole-table invariants.
    fn check(&self) {
        let cfg = self.sw.config();
        let fdb = self.sw.fdb();
        assert_eq!(fdb.len(), self.sw.fdb_len());
        assert!(fdb.len() <= cfg.fdb_limit, "FDB above its limit");
        let mut per_port: HashMap<u32, usize> = HashMap::new();
        for e in &fdb {
            *per_port.entry(e.port).or_default() += 1;
            assert!(
                !e.mac.is_multicast() && !e.mac.is_zero(),
                "learned {}",
                e.mac
            );
        }
        let mut sum = 0;
        let mut hits = self.forgotten_hits;
        for (p, f) in self.sw.ports_fdb() {
            assert_eq!(
                f.learned,
                per_port.get(&p).copied().unwrap_or(0),
                "port {p} count"
            );
            assert!(f.learned <= self.limit_of(p), "port {p} above its limit");
            sum += f.learned;
            hits += f.limit_hits;
        }
        assert_eq!(sum, fdb.len(), "per-port counts do not add up");
        assert_eq!(hits, self.sw.counters().fdb_port_limit_hits);
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let cfg = input.byte();
    let small = cfg & 4 != 0;
    let config = SwitchConfig {
        ageing_ms: 10_000,
        fdb_limit: if small { 12 } else { 8192 },
        fdb_port_limit: if small { 4 } else { 1024 },
        icc: cfg & 1 != 0,
    };
    let mut h = Harness {
        sw: Switch::new(config),
        spoof: cfg & 2 != 0,
        forgotten_hits: 0,
    };
    for p in 0..PORTS {
        h.add_port(p);
    }
    let mut now: u64 = 0;
    while let Some((tag, body)) = input.record() {
        let port = u32::from(tag >> 3) % PORTS;
        match tag & 7 {
            0..=4 => {
                now += 1;
                frame(&mut h, body, port, now);
            }
            5 => {
                let ms = u16::from_le_bytes([
                    body.first().copied().unwrap_or(0),
                    body.get(1).copied().unwrap_or(0),
                ]);
                now += u64::from(ms) * 16;
            }
            6 => h.sw.expire(now),
            _ => {
                h.forgotten_hits += h.sw.port_fdb(port).limit_hits;
                h.sw.forget_port(port);
                assert_eq!(h.sw.port_fdb(port).learned, 0);
                assert!(h.sw.fdb().iter().all(|e| e.port != port));
                h.add_port(port);
            }
        }
        h.check();
    }
});

/// One datagram through the runtime's steps; the per-frame invariants.
fn frame(h: &mut Harness, datagram: &[u8], ingress: u32, now: u64) {
    let Some((hdr, eth)) = datagram.split_at_checked(VNET_HDR_LEN) else {
        return;
    };
    if let Err(r) = check_vnet_hdr(hdr, eth.len()) {
        assert!(matches!(r, DropReason::Truncated | DropReason::BadVnetHdr));
        return;
    }
    let before = h.sw.fdb();
    let counters = h.sw.counters();
    let action = h.sw.decide(eth, ingress, now);
    let after = h.sw.fdb();
    let src = eth.get(6..12).map(|s| {
        let mut m = [0u8; 6];
        m.copy_from_slice(s);
        MacAddr(m)
    });
    let gateway = ingress == GW_PORT;
    let checked = h.spoof && (ingress == 1 || ingress == 2);
    let icc_restricted = !h.sw.config().icc && !gateway;
    let learned_phase = match action {
        Action::Drop(r) => match r {
            DropReason::TxError | DropReason::BadVnetHdr => {
                panic!("decide returned a runtime-only reason {r:?}")
            }
            DropReason::Truncated
            | DropReason::BadSourceMac
            | DropReason::SpoofedMac
            | DropReason::SpoofedIp
            | DropReason::SpoofedArp
            | DropReason::Unsupported => {
                assert_eq!(before, after, "{r:?} drop changed the FDB");
                assert_eq!(counters, h.sw.counters());
                if r != DropReason::Truncated && r != DropReason::BadSourceMac {
                    assert!(checked, "{r:?} from an unchecked port");
                }
                false
            }
            DropReason::SameSegment => true,
            DropReason::IccDenied => {
                assert!(icc_restricted, "ICC drop with ICC on");
                true
            }
        },
        Action::Unicast(p) => {
            assert_ne!(p, ingress, "unicast back to the ingress port");
            if icc_restricted {
                assert_eq!(p, GW_PORT, "ICC off: endpoint reached endpoint {p}");
            }
            true
        }
        Action::Flood { except } => {
            assert_eq!(except, ingress);
            assert!(!icc_restricted, "ICC off: endpoint flooded");
            true
        }
        Action::ToGateways => {
            assert!(icc_restricted, "ToGateways with ICC on or from the gateway");
            true
        }
    };
    if !learned_phase {
        return;
    }
    let src = src.expect("a frame past the checks has a source MAC");
    if checked {
        assert_eq!(
            src,
            MacAddr(ep_mac(ingress)),
            "checked port let a spoofed MAC through"
        );
    }
    let on_ingress = after
        .iter()
        .any(|e| e.mac == src && e.port == ingress && e.last_seen_ms == now);
    let c = h.sw.counters();
    let hits = (c.fdb_limit_hits - counters.fdb_limit_hits)
        + (c.fdb_port_limit_hits - counters.fdb_port_limit_hits);
    assert!(
        on_ingress || hits == 1,
        "source {src} neither learned on port {ingress} nor counted as refused"
    );
}
