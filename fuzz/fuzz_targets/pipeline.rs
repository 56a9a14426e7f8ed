//! `pipeline`: the whole datapath of one network, frame in → actions out, built from
//! the pure cores with no I/O: frames from sandbox ports go through the switch
//! (`check_vnet_hdr`, `Switch::decide`); what reaches the gateway's port goes through
//! the gateway's receive steps (`vnet::ingest` / `prepare_offloaded`, `Core::classify`)
//! and its verdict is carried out as the gateway runtime would: replies, flushed
//! neighbour queues and solicitations go back into the switch from the gateway's port;
//! DNS queries are answered by `dns::Names` (or forwarded: the `Forwarder` times out and
//! its SERVFAIL goes back); UDP and ICMP echo leaving the subnet count against the
//! flow `Limiter` and the outside "answers" (the datagram / an echo reply, built with
//! `udp_packet` / `echo_reply_packet`) come back through `Core::frame_to`; TCP goes
//! into the smoltcp `tcp::Stack` (a listener per admitted egress SYN, the DNS
//! listeners) and what the stack sends goes back through `frame_to` too.
//!
//! Input: a config byte (bit 0: ICC on; bit 1: anti-spoofing on; bit 2: tap offloads;
//! bit 3: internal network), then records: tag & 7 = 0..=5: a datagram (vnet header +
//! frame) from sandbox port 1 + (tag >> 3) % 4; 6: time passes (u16 LE × 10 ms from the
//! body): DNS forwards expire, the TCP stack runs its timers; 7: the switch's FDB
//! expires.
//!
//! Asserted (besides "no panic"): every frame the gateway puts on the switch passes the
//! switch's header and source checks (never dropped as truncated, bad source MAC or bad
//! vnet header) and comes from the gateway's MAC; the gateway's work stays bounded (at
//! most `OUT_BASE` + `OUT_PER_CLASSIFIED` per frame it classified: no feedback loop;
//! a GSO super-frame with a tiny `gso_size` is many frames); the flow
//! limiter never admits more than its limits; with ICC off no frame from one sandbox
//! port ever reaches another sandbox port.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::collections::{HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tapnet_fuzz::{ep_mac, ep_v4, ep_v6, Input, GW_MAC, GW_PORT, GW_V4, GW_V6, PORTS};
use tapnet_nat::core::{self as gw, Core, Verdict, DNS_PORT};
use tapnet_nat::dns::{Answer, Forward, Forwarder, Names};
use tapnet_nat::flows::Limiter;
use tapnet_nat::tcp::{Stack, TX_HEADROOM};
use tapnet_nat::{vnet, Config, NameRecord};
use tapnet_switch::core::{
    check_vnet_hdr, Action, DropReason, MacAddr, PortPolicy, PortRole, Switch, SwitchConfig,
};
use tapnet_switch::VNET_HDR_LEN;

/// Frames the gateway may put on the switch per input record: a few for the record
/// itself and, per frame it classified (a GSO super-frame is many: one per segment, and
/// a sandbox may pick a `gso_size` of 1), a reply, a flushed neighbour queue (32) and
/// what the TCP stack sends for one segment.
const OUT_BASE: usize = 64;
const OUT_PER_CLASSIFIED: usize = 40;
const PER_ENDPOINT: usize = 2;
const PER_NETWORK: usize = 4;

struct Net {
    sw: Switch,
    core: Core,
    names: Names,
    dns: Forwarder<SocketAddr>,
    stack: Stack,
    limiter: Limiter,
    tcp_flows: HashSet<(SocketAddr, SocketAddr)>,
    offloads: bool,
    mtu: usize,
    now_ms: u64,
    /// Frames waiting for the switch: (ingress port, datagram).
    queue: VecDeque<(u32, Vec<u8>)>,
    /// Frames the gateway put on the switch for the current input record.
    out: usize,
    /// Frames the gateway classified for the current input record.
    classified: usize,
    icc: bool,
}

fn smol(ms: u64) -> smoltcp::time::Instant {
    smoltcp::time::Instant::from_millis(i64::try_from(ms).unwrap_or(i64::MAX))
}

impl Net {
    fn new(cfg: u8) -> Net {
        let icc = cfg & 1 != 0;
        let mut sw = Switch::new(SwitchConfig {
            icc,
            ..SwitchConfig::default()
        });
        sw.set_port(GW_PORT, PortRole::Gateway, None);
        for p in 1..PORTS {
            let mut policy = PortPolicy::new(MacAddr(ep_mac(p)), vec![ep_v4(p)], vec![ep_v6(p)]);
            policy.spoof_check = cfg & 2 != 0;
            sw.set_port(p, PortRole::Endpoint, Some(policy));
        }
        let mut c = Config::new(GW_MAC, GW_V4, 24);
        c.ipv6 = Some((GW_V6, 64));
        c.tap_offloads = cfg & 4 != 0;
        c.internal = cfg & 8 != 0;
        c.upstream_dns = vec!["192.0.2.53:53".parse().expect("addr")];
        c.dns_timeout = Duration::from_millis(500);
        c.dns_suffixes = vec!["tapnet.internal".into()];
        let mut names = Names::new(
            &c.dns_suffixes,
            vec![
                "10.0.0.0/24".parse().expect("net"),
                "fd00::/64".parse().expect("net"),
            ],
        );
        names.set(
            (1..PORTS)
                .map(|p| NameRecord {
                    name: format!("ep{p}"),
                    ipv4s: vec![ep_v4(p)],
                    ipv6s: vec![ep_v6(p)],
                })
                .collect(),
        );
        let mut stack = Stack::new(&c, smol(0));
        for gw in [IpAddr::V4(GW_V4), IpAddr::V6(GW_V6)] {
            stack.listen(SocketAddr::new(gw, DNS_PORT));
        }
        let dns = Forwarder::new(c.upstream_dns.clone(), c.dns_timeout);
        Net {
            sw,
            offloads: c.tap_offloads,
            mtu: usize::from(c.mtu),
            core: Core::new(c),
            names,
            dns,
            stack,
            limiter: Limiter::new(PER_ENDPOINT, PER_NETWORK),
            tcp_flows: HashSet::new(),
            now_ms: 0,
            queue: VecDeque::new(),
            out: 0,
            classified: 0,
            icc,
        }
    }

    /// Run the switch on everything queued.
    fn run(&mut self) {
        while let Some((ingress, dg)) = self.queue.pop_front() {
            self.switch_in(ingress, dg);
        }
    }

    fn switch_in(&mut self, ingress: u32, dg: Vec<u8>) {
        let from_gw = ingress == GW_PORT;
        let action = match dg.split_at_checked(VNET_HDR_LEN) {
            None => Action::Drop(DropReason::Truncated),
            Some((hdr, eth)) => match check_vnet_hdr(hdr, eth.len()) {
                Err(r) => Action::Drop(r),
                Ok(()) => self.sw.decide(eth, ingress, self.now_ms),
            },
        };
        if from_gw {
            assert_eq!(
                dg.get(VNET_HDR_LEN + 6..VNET_HDR_LEN + 12),
                Some(&GW_MAC[..])
            );
            assert!(
                !matches!(
                    action,
                    Action::Drop(
                        DropReason::Truncated | DropReason::BadSourceMac | DropReason::BadVnetHdr
                    )
                ),
                "the switch refused the gateway's frame: {action:?}"
            );
        }
        let to_gw = match action {
            Action::Drop(_) => false,
            Action::Unicast(p) => {
                if !self.icc && !from_gw {
                    assert_eq!(p, GW_PORT, "ICC off: sandbox reached sandbox port {p}");
                }
                p == GW_PORT
            }
            Action::Flood { except } => {
                assert!(self.icc || from_gw, "ICC off: sandbox frame flooded");
                except != GW_PORT
            }
            Action::ToGateways => true,
        };
        if to_gw {
            self.gateway_in(dg);
        }
    }

    /// The gateway's receive steps for one switch datagram.
    fn gateway_in(&mut self, mut dg: Vec<u8>) {
        let mut frames = Vec::new();
        if self.offloads {
            match vnet::prepare_offloaded(&mut dg) {
                Ok(true) => {
                    let eth = dg.get(VNET_HDR_LEN..).unwrap_or_default().to_vec();
                    self.classified += 1;
                    let v = self.core.classify(&eth);
                    self.verdict(v, &eth);
                    return;
                }
                Ok(false) => {}
                Err(_) => return,
            }
        }
        if vnet::ingest(&dg, &mut frames).is_err() {
            return;
        }
        for f in frames {
            self.classified += 1;
            let v = self.core.classify(&f);
            self.verdict(v, &f);
        }
    }

    fn verdict(&mut self, v: Verdict, frame: &[u8]) {
        match v {
            Verdict::Reply(f) => self.emit(&f),
            Verdict::Flush(fs) => fs.iter().for_each(|f| self.emit(f)),
            Verdict::FlushThen { flush, then } => {
                flush.iter().for_each(|f| self.emit(f));
                self.verdict(*then, frame);
            }
            Verdict::Ignore | Verdict::DropReason(_) => {}
            Verdict::Dns { src, query } => match self.names.answer(&query) {
                Answer::Reply(r) => self.udp_to(SocketAddr::new(src.ip(), src.port()), &r),
                Answer::Forward => {
                    let id = (self.now_ms as u16).wrapping_mul(31);
                    match self.dns.start(src, query, id, self.now_ms) {
                        Forward::Send { .. } => {}
                        Forward::Fail { client, reply, .. } => {
                            if let Some(r) = reply {
                                self.udp_to(client, &r);
                            }
                        }
                    }
                }
                Answer::Ignore => {}
            },
            Verdict::Udp { src, dst, payload } => {
                if self.core.is_gateway(dst.ip()) {
                    return; // no published port in this network
                }
                if self.admit(src.ip()) {
                    // The outside answers with the same payload.
                    if let Some(p) = gw::udp_packet(dst, src, &payload) {
                        self.send_ip(p);
                    }
                }
            }
            Verdict::Echo {
                src,
                dst,
                ident,
                seq,
                data,
            } => {
                if self.admit(src) {
                    if let Some(p) = gw::echo_reply_packet(dst, src, ident, seq, &data) {
                        self.send_ip(p);
                    }
                }
            }
            Verdict::Tcp { at, src, dst, syn } => {
                let Some(seg) = frame.get(at.clone()) else {
                    return;
                };
                let mut seg = seg.to_vec();
                if self.offloads {
                    vnet::raise_syn_mss(&mut seg);
                }
                let key = (src, dst);
                if syn && !self.core.is_gateway(dst.ip()) && !self.tcp_flows.contains(&key) {
                    if !self.admit(src.ip()) {
                        return;
                    }
                    if self.stack.listen(dst).is_none() {
                        self.limiter.release(src.ip());
                        return;
                    }
                    self.tcp_flows.insert(key);
                }
                self.stack.push(seg);
                self.service_tcp();
            }
        }
    }

    /// One more flow from `src`, if the limits allow; checks the limiter's counts.
    fn admit(&mut self, src: IpAddr) -> bool {
        let ok = self.limiter.acquire(src).is_ok();
        assert!(self.limiter.active(src) <= PER_ENDPOINT);
        assert!(self.limiter.total() <= PER_NETWORK);
        ok
    }

    fn service_tcp(&mut self) {
        self.stack.poll(smol(self.now_ms));
        for mut p in self.stack.take_tx() {
            p.drain(..TX_HEADROOM.min(p.len()));
            if self.offloads {
                vnet::clamp_syn_mss(&mut p, self.mtu);
            }
            self.send_ip(p);
        }
    }

    /// A UDP datagram from the gateway's DNS port to `client`.
    fn udp_to(&mut self, client: SocketAddr, payload: &[u8]) {
        let Some(gw) = self.core.gateway_for(client.ip()) else {
            return;
        };
        if let Some(p) = gw::udp_packet(SocketAddr::new(gw, DNS_PORT), client, payload) {
            self.send_ip(p);
        }
    }

    fn send_ip(&mut self, packet: Vec<u8>) {
        if packet.len() > self.mtu && !(self.offloads && vnet::tcp_endpoints(&packet).is_some()) {
            return;
        }
        match self.core.frame_to(packet) {
            Ok(f) => self.emit(&f),
            Err(Some(s)) => self.emit(&s),
            Err(None) => {}
        }
    }

    /// The gateway puts a frame on the switch.
    fn emit(&mut self, eth: &[u8]) {
        self.out += 1;
        assert!(
            self.out <= OUT_BASE + OUT_PER_CLASSIFIED * self.classified,
            "gateway output unbounded: {} frames out for {} classified",
            self.out,
            self.classified
        );
        let mut dg = vnet::with_zero_hdr(eth);
        if self.offloads {
            let (hdr, frame) = dg.split_at_mut(VNET_HDR_LEN);
            hdr.copy_from_slice(&vnet::offload_hdr(frame, self.mtu, None));
        }
        self.queue.push_back((GW_PORT, dg));
    }

    fn tick(&mut self, ms: u64) {
        self.now_ms += ms;
        for step in self.dns.expire(self.now_ms) {
            if let Forward::Fail {
                client,
                reply: Some(r),
                ..
            } = step
            {
                self.udp_to(client, &r);
            }
        }
        self.service_tcp();
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let mut net = Net::new(input.byte());
    while let Some((tag, body)) = input.record() {
        net.out = 0;
        net.classified = 0;
        match tag & 7 {
            0..=5 => {
                net.now_ms += 1;
                let port = 1 + u32::from(tag >> 3) % (PORTS - 1);
                net.queue.push_back((port, body.to_vec()));
            }
            6 => {
                let ms = u16::from_le_bytes([
                    body.first().copied().unwrap_or(0),
                    body.get(1).copied().unwrap_or(0),
                ]);
                net.tick(u64::from(ms) * 10);
            }
            _ => net.sw.expire(net.now_ms),
        }
        net.run();
    }
});
