//! The gateway's frame core: classification of plain Ethernet frames (after
//! [`crate::vnet::ingest`]), the ARP/NDP/ICMP-echo responder for the gateway address,
//! isolation and internal-network policy, the neighbour table, and frame builders.
//!
//! Contract:
//!
//! * [`Core::classify`] takes one Ethernet frame and returns a [`Verdict`]: a reply frame
//!   to send back, a piece of work for the I/O layer (TCP segment, UDP datagram, DNS
//!   query, echo request), something to ignore, or a drop with its [`DropReason`] reason. No
//!   I/O, no clock.
//! * All parsing goes through smoltcp's checked `wire` views (`new_checked`, `Repr::parse`,
//!   checksums verified); after those length checks nothing here panics on frame contents.
//! * Builders (`udp_packet`, `echo_reply_packet`, `frame_to`, ...) produce complete frames
//!   or IP packets with every checksum computed (frames leave with a zeroed vnet header).
//! * The neighbour table learns (IP → MAC) from the source of every frame whose source IP
//!   is in the network's subnet; [`Core::frame_to`] uses it to address IP packets, and
//!   queues those for a neighbour not known yet. The frame that resolves a neighbour
//!   hands back that queue *and* its own verdict ([`Verdict::FlushThen`]): nothing the
//!   neighbour sent is dropped because the gateway was waiting for its MAC.

use crate::stats::DropReason;
use crate::{Config, Mac};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use rustc_hash::FxHashMap;
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    EthernetRepr, Icmpv4Packet, Icmpv4Repr, Icmpv6Packet, Icmpv6Repr, IpAddress, IpProtocol,
    Ipv4Packet, Ipv4Repr, Ipv6Packet, Ipv6Repr, NdiscNeighborFlags, NdiscRepr, RawHardwareAddress,
    TcpControl, TcpPacket, TcpRepr, TcpSeqNumber, UdpPacket, UdpRepr,
};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// DNS port.
pub const DNS_PORT: u16 = 53;
/// Most IP packets queued per neighbour while its MAC is being resolved.
const PENDING_PER_NEIGHBOUR: usize = 32;
/// Most neighbours waiting to be resolved at once; past it an arbitrary waiting one is
/// given up (its queue dropped), so a neighbour that never answers cannot hold a place.
pub const MAX_PENDING_NEIGHBOURS: usize = 256;
/// Most addresses the neighbour table holds for one MAC (an IPv4 address, IPv6 global
/// and link-local ones, and a few more): a sender claiming more is not learned further.
pub const NEIGHBOURS_PER_MAC: usize = 16;
/// Most neighbours one gateway knows; past it an arbitrary one is forgotten (it is
/// learned again from its next frame, or solicited).
pub const MAX_NEIGHBOURS: usize = 16_384;
/// IPv4 broadcast.
const BROADCAST: Mac = [0xff; 6];

/// Ethernet header length: where an IP packet starts in a classified frame.
const ETH_HDR: usize = 14;

/// What to do with a frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Send this Ethernet frame back to the switch.
    Reply(Vec<u8>),
    /// A TCP segment for the TCP stack (an IP packet), egress or to the gateway's DNS.
    Tcp {
        /// Where the IP packet (header + segment) lies in the classified frame.
        at: std::ops::Range<usize>,
        /// Sandbox endpoint.
        src: SocketAddr,
        /// Destination endpoint.
        dst: SocketAddr,
        /// SYN without ACK: opens a flow.
        syn: bool,
    },
    /// A UDP datagram leaving the subnet (or a reply from a sandbox to a published port).
    Udp {
        /// Sandbox endpoint.
        src: SocketAddr,
        /// Destination endpoint.
        dst: SocketAddr,
        /// Payload.
        payload: Vec<u8>,
    },
    /// A DNS query over UDP to the gateway.
    Dns {
        /// The sandbox endpoint that asked.
        src: SocketAddr,
        /// The DNS message.
        query: Vec<u8>,
    },
    /// An ICMP/ICMPv6 echo request leaving the subnet.
    Echo {
        /// Sandbox address.
        src: IpAddr,
        /// Destination address.
        dst: IpAddr,
        /// Echo identifier.
        ident: u16,
        /// Echo sequence number.
        seq: u16,
        /// Echo data.
        data: Vec<u8>,
    },
    /// Queued IP packets whose neighbour this frame resolved, and nothing else to do:
    /// send these frames.
    Flush(Vec<Vec<u8>>),
    /// Queued IP packets whose neighbour this frame resolved, and the frame's own verdict
    /// (never `Ignore`, `Flush` or `FlushThen`): send `flush` first, then act on `then`.
    FlushThen {
        /// Frames to send, in order.
        flush: Vec<Vec<u8>>,
        /// What to do with the frame itself.
        then: Box<Verdict>,
    },
    /// Nothing to do (learned a neighbour, a broadcast for someone else...).
    Ignore,
    /// Dropped, counted under this reason.
    DropReason(DropReason),
}

/// The deterministic core of one network's gateway.
pub struct Core {
    cfg: Config,
    v4net: Ipv4Net,
    v6net: Option<Ipv6Net>,
    neigh: FxHashMap<IpAddr, Mac>,
    /// How many addresses each MAC holds in `neigh`.
    per_mac: FxHashMap<Mac, usize>,
    /// Learns refused by [`NEIGHBOURS_PER_MAC`].
    neigh_refused: u64,
    /// IP packets waiting for their destination's MAC.
    pending: FxHashMap<IpAddr, Vec<Vec<u8>>>,
}

fn csum() -> ChecksumCapabilities {
    ChecksumCapabilities::default()
}

fn is_unicast_mac(m: &[u8]) -> bool {
    m.first().is_some_and(|b| b & 1 == 0) && m.iter().any(|&b| b != 0)
}

impl Core {
    /// A core for `cfg`.
    pub fn new(cfg: Config) -> Core {
        let v4net = Ipv4Net::new(cfg.ipv4, cfg.ipv4_prefix.min(32))
            .unwrap_or_else(|_| Ipv4Net::from(cfg.ipv4))
            .trunc();
        let v6net = cfg.ipv6.map(|(a, p)| {
            Ipv6Net::new(a, p.min(128))
                .unwrap_or(Ipv6Net::from(a))
                .trunc()
        });
        Core {
            cfg,
            v4net,
            v6net,
            neigh: FxHashMap::default(),
            per_mac: FxHashMap::default(),
            neigh_refused: 0,
            pending: FxHashMap::default(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// True if `ip` is on this network (either subnet).
    pub fn on_network(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(a) => self.v4net.contains(&a),
            IpAddr::V6(a) => self.v6net.is_some_and(|n| n.contains(&a)) || is_link_local(a),
        }
    }

    /// True if `ip` is one of the gateway's addresses.
    pub fn is_gateway(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(a) => a == self.cfg.ipv4,
            IpAddr::V6(a) => self.cfg.ipv6.is_some_and(|(g, _)| g == a),
        }
    }

    /// The gateway's address of the same family as `ip`.
    pub fn gateway_for(&self, ip: IpAddr) -> Option<IpAddr> {
        match ip {
            IpAddr::V4(_) => Some(IpAddr::V4(self.cfg.ipv4)),
            IpAddr::V6(_) => self.cfg.ipv6.map(|(a, _)| IpAddr::V6(a)),
        }
    }

    /// Replace the subnets (and addresses) routing to which is refused.
    pub fn set_isolated(&mut self, subnets: Vec<IpNet>) {
        self.cfg.isolated_subnets = subnets;
    }

    /// True if routing to `ip` is refused by isolation.
    pub fn is_isolated(&self, ip: IpAddr) -> bool {
        self.cfg.isolated_subnets.iter().any(|n| n.contains(&ip))
    }

    /// The MAC learned for `ip`.
    pub fn neighbour(&self, ip: IpAddr) -> Option<Mac> {
        self.neigh.get(&ip).copied()
    }

    /// Record `ip` at `mac` (the engine may also tell the core directly).
    /// At most [`NEIGHBOURS_PER_MAC`] addresses per MAC and [`MAX_NEIGHBOURS`] in all:
    /// a MAC at its limit is not learned at a new address (counted in
    /// [`Core::neighbours_refused`]; an address it moves to that MAC is forgotten, not
    /// kept stale); a full table forgets an arbitrary neighbour for the new one.
    pub fn learn(&mut self, ip: IpAddr, mac: Mac) {
        if !(self.on_network(ip) && !self.is_gateway(ip) && is_unicast_mac(&mac)) {
            return;
        }
        if self.neigh.get(&ip) == Some(&mac) {
            return;
        }
        if self.per_mac.get(&mac).copied().unwrap_or(0) >= NEIGHBOURS_PER_MAC {
            self.neigh_refused += 1;
            self.unlearn(ip);
            return;
        }
        if !self.neigh.contains_key(&ip) && self.neigh.len() >= MAX_NEIGHBOURS {
            if let Some(victim) = self.neigh.keys().next().copied() {
                self.unlearn(victim);
            }
        }
        self.unlearn(ip);
        self.neigh.insert(ip, mac);
        *self.per_mac.entry(mac).or_insert(0) += 1;
    }

    /// Drop `ip` from the neighbour table, keeping the per-MAC counts.
    fn unlearn(&mut self, ip: IpAddr) {
        if let Some(old) = self.neigh.remove(&ip) {
            if let Some(n) = self.per_mac.get_mut(&old) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.per_mac.remove(&old);
                }
            }
        }
    }

    /// Learns refused because the MAC held [`NEIGHBOURS_PER_MAC`] addresses already.
    pub fn neighbours_refused(&self) -> u64 {
        self.neigh_refused
    }

    /// Forget a neighbour (its endpoint left).
    pub fn forget(&mut self, ip: IpAddr) {
        self.unlearn(ip);
        self.pending.remove(&ip);
    }

    fn learn_and_flush(&mut self, ip: IpAddr, mac: Mac) -> Vec<Vec<u8>> {
        self.learn(ip, mac);
        match (self.neigh.get(&ip), self.pending.remove(&ip)) {
            (Some(&m), Some(queued)) => queued
                .iter()
                .map(|p| self.eth(m, ethertype_of(ip), p))
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Classify one plain Ethernet frame.
    pub fn classify(&mut self, eth: &[u8]) -> Verdict {
        let Ok(frame) = EthernetFrame::new_checked(eth) else {
            return Verdict::DropReason(DropReason::Truncated);
        };
        let dst_mac = frame.dst_addr().0;
        let src_mac = frame.src_addr().0;
        let to_us = dst_mac == self.cfg.mac;
        let group = dst_mac[0] & 1 == 1;
        if !to_us && !group {
            return Verdict::DropReason(DropReason::NotForUs);
        }
        if !is_unicast_mac(&src_mac) {
            return Verdict::DropReason(DropReason::Malformed);
        }
        let payload = frame.payload();
        match frame.ethertype() {
            EthernetProtocol::Arp => self.arp(payload),
            EthernetProtocol::Ipv4 => self.ipv4(src_mac, to_us, payload),
            EthernetProtocol::Ipv6 => self.ipv6(src_mac, to_us, payload),
            _ => Verdict::DropReason(DropReason::Unsupported),
        }
    }

    fn arp(&mut self, payload: &[u8]) -> Verdict {
        let Ok(pkt) = ArpPacket::new_checked(payload) else {
            return Verdict::DropReason(DropReason::Truncated);
        };
        let Ok(ArpRepr::EthernetIpv4 {
            operation,
            source_hardware_addr,
            source_protocol_addr,
            target_protocol_addr,
            ..
        }) = ArpRepr::parse(&pkt)
        else {
            return Verdict::DropReason(DropReason::Malformed);
        };
        let sender = IpAddr::V4(source_protocol_addr);
        let flushed = if self.v4net.contains(&source_protocol_addr)
            && source_protocol_addr != self.cfg.ipv4
        {
            self.learn_and_flush(sender, source_hardware_addr.0)
        } else {
            Vec::new()
        };
        let v = if operation == ArpOperation::Request && target_protocol_addr == self.cfg.ipv4 {
            let reply = ArpRepr::EthernetIpv4 {
                operation: ArpOperation::Reply,
                source_hardware_addr: EthernetAddress(self.cfg.mac),
                source_protocol_addr: self.cfg.ipv4,
                target_hardware_addr: source_hardware_addr,
                target_protocol_addr: source_protocol_addr,
            };
            let mut buf = vec![0u8; reply.buffer_len()];
            reply.emit(&mut ArpPacket::new_unchecked(&mut buf[..]));
            Verdict::Reply(self.eth(source_hardware_addr.0, EthernetProtocol::Arp, &buf))
        } else {
            Verdict::Ignore
        };
        after_flush(flushed, v)
    }

    fn ipv4(&mut self, src_mac: Mac, to_us: bool, payload: &[u8]) -> Verdict {
        let Ok(pkt) = Ipv4Packet::new_checked(payload) else {
            return Verdict::DropReason(DropReason::Truncated);
        };
        if pkt.more_frags() || pkt.frag_offset() != 0 {
            return Verdict::DropReason(DropReason::Unsupported);
        }
        let Ok(repr) = Ipv4Repr::parse(&pkt, &csum()) else {
            return Verdict::DropReason(DropReason::Malformed);
        };
        let src = IpAddr::V4(repr.src_addr);
        if !self.v4net.contains(&repr.src_addr) || src == IpAddr::V4(self.cfg.ipv4) {
            return Verdict::DropReason(DropReason::NotForUs);
        }
        // A neighbour that speaks before answering ARP: its queue goes out first, then
        // this frame is handled as any other.
        let flushed = self.learn_and_flush(src, src_mac);
        let v = self.ipv4_after_learning(src_mac, to_us, &repr, pkt.into_inner());
        after_flush(flushed, v)
    }

    /// An IPv4 packet from a neighbour on the subnet, after learning its MAC.
    fn ipv4_after_learning(
        &self,
        src_mac: Mac,
        to_us: bool,
        repr: &Ipv4Repr,
        ip_packet: &[u8],
    ) -> Verdict {
        let src = IpAddr::V4(repr.src_addr);
        let dst = IpAddr::V4(repr.dst_addr);
        if !to_us || repr.dst_addr.is_broadcast() || repr.dst_addr.is_multicast() {
            return Verdict::Ignore;
        }
        let total = usize::from(Ipv4Packet::new_unchecked(ip_packet).total_len());
        let ip_packet = ip_packet.get(..total).unwrap_or(ip_packet);
        let l4 = Ipv4Packet::new_unchecked(ip_packet).payload();
        match repr.next_header {
            IpProtocol::Icmp => {
                let Ok(ip) = Icmpv4Packet::new_checked(l4) else {
                    return Verdict::DropReason(DropReason::Truncated);
                };
                let Ok(icmp) = Icmpv4Repr::parse(&ip, &csum()) else {
                    return Verdict::DropReason(DropReason::Malformed);
                };
                let Icmpv4Repr::EchoRequest {
                    ident,
                    seq_no,
                    data,
                } = icmp
                else {
                    return Verdict::DropReason(DropReason::Unsupported);
                };
                self.echo_request(
                    src_mac,
                    EthernetProtocol::Ipv4,
                    src,
                    dst,
                    ident,
                    seq_no,
                    data,
                )
            }
            IpProtocol::Udp => self.udp(src, dst, l4),
            IpProtocol::Tcp => self.tcp(src, dst, ip_packet, l4),
            _ => Verdict::DropReason(DropReason::Unsupported),
        }
    }

    fn ipv6(&mut self, src_mac: Mac, to_us: bool, payload: &[u8]) -> Verdict {
        let Ok(pkt) = Ipv6Packet::new_checked(payload) else {
            return Verdict::DropReason(DropReason::Truncated);
        };
        let Ok(repr) = Ipv6Repr::parse(&pkt) else {
            return Verdict::DropReason(DropReason::Malformed);
        };
        let Some((gw6, _)) = self.cfg.ipv6 else {
            return Verdict::DropReason(DropReason::NotForUs);
        };
        let src = IpAddr::V6(repr.src_addr);
        let ip_packet = pkt.into_inner();
        let total = 40 + usize::from(Ipv6Packet::new_unchecked(ip_packet).payload_len());
        let ip_packet = ip_packet.get(..total).unwrap_or(ip_packet);
        let src_known = self.on_network(src);
        let mut flushed = Vec::new();
        if src_known && src != IpAddr::V6(gw6) {
            // As for IPv4: the queue goes out first, then this frame is handled.
            flushed = self.learn_and_flush(src, src_mac);
        }
        let v = self.ipv6_after_learning(src_mac, to_us, &repr, gw6, src_known, ip_packet);
        after_flush(flushed, v)
    }

    /// An IPv6 packet (trimmed to its length), after learning its source's MAC when on
    /// the network.
    fn ipv6_after_learning(
        &self,
        src_mac: Mac,
        to_us: bool,
        repr: &Ipv6Repr,
        gw6: Ipv6Addr,
        src_known: bool,
        ip_packet: &[u8],
    ) -> Verdict {
        let src = IpAddr::V6(repr.src_addr);
        let dst = IpAddr::V6(repr.dst_addr);
        let l4 = ip_packet.get(40..).unwrap_or_default();
        if repr.next_header == IpProtocol::Icmpv6 {
            let Ok(ip) = Icmpv6Packet::new_checked(l4) else {
                return Verdict::DropReason(DropReason::Truncated);
            };
            let Ok(icmp) = Icmpv6Repr::parse(&repr.src_addr, &repr.dst_addr, &ip, &csum()) else {
                return Verdict::DropReason(DropReason::Malformed);
            };
            match icmp {
                Icmpv6Repr::Ndisc(NdiscRepr::NeighborSolicit {
                    target_addr,
                    lladdr,
                }) => {
                    if repr.hop_limit != 255 || target_addr != gw6 {
                        return Verdict::Ignore;
                    }
                    if repr.src_addr.is_unspecified() {
                        // Duplicate address detection for our address: ignore.
                        return Verdict::Ignore;
                    }
                    let to_mac = lladdr
                        .map(|l| l.as_bytes().to_vec())
                        .and_then(|b| <[u8; 6]>::try_from(b.as_slice()).ok())
                        .unwrap_or(src_mac);
                    let na = Icmpv6Repr::Ndisc(NdiscRepr::NeighborAdvert {
                        flags: NdiscNeighborFlags::ROUTER
                            | NdiscNeighborFlags::SOLICITED
                            | NdiscNeighborFlags::OVERRIDE,
                        target_addr: gw6,
                        lladdr: Some(RawHardwareAddress::from(EthernetAddress(self.cfg.mac))),
                    });
                    let p = icmpv6_packet(gw6, repr.src_addr, 255, &na);
                    return Verdict::Reply(self.eth(to_mac, EthernetProtocol::Ipv6, &p));
                }
                Icmpv6Repr::Ndisc(_) => return Verdict::Ignore,
                _ => {}
            }
        }
        if !to_us || repr.dst_addr.is_multicast() {
            return Verdict::Ignore;
        }
        // The gateway's own address as a source is a spoof (as in `ipv4`): no work for it.
        if !src_known || repr.src_addr.is_unspecified() || repr.src_addr == gw6 {
            return Verdict::DropReason(DropReason::NotForUs);
        }
        match repr.next_header {
            IpProtocol::Icmpv6 => {
                let Ok(ip) = Icmpv6Packet::new_checked(l4) else {
                    return Verdict::DropReason(DropReason::Truncated);
                };
                let Ok(Icmpv6Repr::EchoRequest {
                    ident,
                    seq_no,
                    data,
                }) = Icmpv6Repr::parse(&repr.src_addr, &repr.dst_addr, &ip, &csum())
                else {
                    return Verdict::DropReason(DropReason::Unsupported);
                };
                self.echo_request(
                    src_mac,
                    EthernetProtocol::Ipv6,
                    src,
                    dst,
                    ident,
                    seq_no,
                    data,
                )
            }
            IpProtocol::Udp => self.udp(src, dst, l4),
            IpProtocol::Tcp => self.tcp(src, dst, ip_packet, l4),
            _ => Verdict::DropReason(DropReason::Unsupported),
        }
    }

    /// Policy for traffic leaving the subnet: isolation, internal networks, own subnet.
    /// An ICMP/ICMPv6 echo request: answered when it is for the gateway, else egress.
    #[allow(clippy::too_many_arguments)]
    fn echo_request(
        &self,
        src_mac: Mac,
        proto: EthernetProtocol,
        src: IpAddr,
        dst: IpAddr,
        ident: u16,
        seq: u16,
        data: &[u8],
    ) -> Verdict {
        if self.is_gateway(dst) {
            return match echo_reply_packet(dst, src, ident, seq, data) {
                Some(p) => Verdict::Reply(self.eth(src_mac, proto, &p)),
                None => Verdict::DropReason(DropReason::Malformed),
            };
        }
        self.egress(
            dst,
            Verdict::Echo {
                src,
                dst,
                ident,
                seq,
                data: data.to_vec(),
            },
        )
    }

    fn egress(&self, dst: IpAddr, v: Verdict) -> Verdict {
        if self.is_isolated(dst) {
            Verdict::DropReason(DropReason::Isolated)
        } else if self.on_network(dst) || dst.is_unspecified() {
            // Same-subnet traffic is the switch's; it should not reach the gateway's MAC.
            Verdict::DropReason(DropReason::NotForUs)
        } else if self.cfg.internal {
            Verdict::DropReason(DropReason::Internal)
        } else {
            v
        }
    }

    fn udp(&self, src: IpAddr, dst: IpAddr, l4: &[u8]) -> Verdict {
        let Ok(pkt) = UdpPacket::new_checked(l4) else {
            return Verdict::DropReason(DropReason::Truncated);
        };
        if UdpRepr::parse(&pkt, &IpAddress::from(src), &IpAddress::from(dst), &csum()).is_err() {
            return Verdict::DropReason(DropReason::Malformed);
        }
        let s = SocketAddr::new(src, pkt.src_port());
        let d = SocketAddr::new(dst, pkt.dst_port());
        let payload = pkt.payload().to_vec();
        if self.is_gateway(dst) {
            if d.port() == DNS_PORT {
                return Verdict::Dns {
                    src: s,
                    query: payload,
                };
            }
            // Possibly a reply to a published-port client presented from the gateway
            // address; the runtime drops it otherwise.
            return Verdict::Udp {
                src: s,
                dst: d,
                payload,
            };
        }
        if self.on_network(dst) {
            // A reply from a sandbox to a published-port client is never on-network.
            return Verdict::DropReason(DropReason::NotForUs);
        }
        // Replies to published UDP clients are told apart by the runtime; isolation and
        // internal policy still apply to them (a client is never in an isolated subnet,
        // and internal networks have no published ports).
        self.egress(
            dst,
            Verdict::Udp {
                src: s,
                dst: d,
                payload,
            },
        )
    }

    fn tcp(&self, src: IpAddr, dst: IpAddr, ip_packet: &[u8], l4: &[u8]) -> Verdict {
        let Ok(pkt) = TcpPacket::new_checked(l4) else {
            return Verdict::DropReason(DropReason::Truncated);
        };
        // With tap offloads the sender is the sandbox's kernel and the checksum is often
        // partial (NEEDS_CSUM): not verified.
        if !self.cfg.tap_offloads
            && !pkt.verify_checksum(&IpAddress::from(src), &IpAddress::from(dst))
        {
            return Verdict::DropReason(DropReason::Malformed);
        }
        let s = SocketAddr::new(src, pkt.src_port());
        let d = SocketAddr::new(dst, pkt.dst_port());
        let v = Verdict::Tcp {
            at: ETH_HDR..ETH_HDR + ip_packet.len(),
            src: s,
            dst: d,
            syn: pkt.syn() && !pkt.ack(),
        };
        if self.is_gateway(dst) {
            // DNS over TCP, or a published connection presented from the gateway address;
            // the TCP stack resets anything else (a closed port).
            return v;
        }
        if self.on_network(dst) {
            return Verdict::DropReason(DropReason::NotForUs);
        }
        // Replies of sandbox servers to published-port clients pass here too: the runtime
        // hands every TCP segment to the TCP stack; the policy applies only to new flows.
        if self.is_isolated(dst) {
            return Verdict::DropReason(DropReason::Isolated);
        }
        if self.cfg.internal {
            return Verdict::DropReason(DropReason::Internal);
        }
        v
    }

    /// An Ethernet frame from the gateway to `dst_mac`.
    pub fn eth(&self, dst_mac: Mac, ethertype: EthernetProtocol, payload: &[u8]) -> Vec<u8> {
        let repr = EthernetRepr {
            src_addr: EthernetAddress(self.cfg.mac),
            dst_addr: EthernetAddress(dst_mac),
            ethertype,
        };
        let mut buf = vec![0u8; repr.buffer_len() + payload.len()];
        let mut f = EthernetFrame::new_unchecked(&mut buf[..]);
        repr.emit(&mut f);
        f.payload_mut().copy_from_slice(payload);
        buf
    }

    /// Address an IP packet to its destination on the network. `Ok(frame)` when the MAC is
    /// known; otherwise the packet is queued and `Err(Some(solicitation))` is a frame to
    /// send (ARP request / neighbour solicitation), `Err(None)` if nothing can be done.
    pub fn frame_to(&mut self, ip_packet: Vec<u8>) -> Result<Vec<u8>, Option<Vec<u8>>> {
        let dst = match ip_packet.first().map(|b| b >> 4) {
            Some(4) => Ipv4Packet::new_checked(&ip_packet[..])
                .ok()
                .map(|p| IpAddr::V4(p.dst_addr())),
            Some(6) => Ipv6Packet::new_checked(&ip_packet[..])
                .ok()
                .map(|p| IpAddr::V6(p.dst_addr())),
            _ => None,
        };
        let Some(dst) = dst else {
            return Err(None);
        };
        if let Some(mac) = self.neigh.get(&dst) {
            return Ok(self.eth(*mac, ethertype_of(dst), &ip_packet));
        }
        if !self.on_network(dst) {
            return Err(None);
        }
        if !self.pending.contains_key(&dst) && self.pending.len() >= MAX_PENDING_NEIGHBOURS {
            if let Some(victim) = self.pending.keys().next().copied() {
                self.pending.remove(&victim);
            }
        }
        let q = self.pending.entry(dst).or_default();
        let first = q.is_empty();
        if q.len() < PENDING_PER_NEIGHBOUR {
            q.push(ip_packet);
        }
        if first {
            Err(self.solicit(dst))
        } else {
            Err(None)
        }
    }

    /// An ARP request or a neighbour solicitation for `ip`.
    pub fn solicit(&self, ip: IpAddr) -> Option<Vec<u8>> {
        match ip {
            IpAddr::V4(a) => {
                let req = ArpRepr::EthernetIpv4 {
                    operation: ArpOperation::Request,
                    source_hardware_addr: EthernetAddress(self.cfg.mac),
                    source_protocol_addr: self.cfg.ipv4,
                    target_hardware_addr: EthernetAddress([0; 6]),
                    target_protocol_addr: a,
                };
                let mut buf = vec![0u8; req.buffer_len()];
                req.emit(&mut ArpPacket::new_unchecked(&mut buf[..]));
                Some(self.eth(BROADCAST, EthernetProtocol::Arp, &buf))
            }
            IpAddr::V6(a) => {
                let (gw6, _) = self.cfg.ipv6?;
                if a.is_multicast() || a.is_unspecified() {
                    return None;
                }
                let o = a.octets();
                let snm = Ipv6Addr::from([
                    0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, o[13], o[14], o[15],
                ]);
                let ns = Icmpv6Repr::Ndisc(NdiscRepr::NeighborSolicit {
                    target_addr: a,
                    lladdr: Some(RawHardwareAddress::from(EthernetAddress(self.cfg.mac))),
                });
                let p = icmpv6_packet(gw6, snm, 255, &ns);
                let m = snm.octets();
                Some(self.eth(
                    [0x33, 0x33, m[12], m[13], m[14], m[15]],
                    EthernetProtocol::Ipv6,
                    &p,
                ))
            }
        }
    }

    /// Number of neighbours waiting to be resolved (for tests and introspection).
    pub fn pending_neighbours(&self) -> usize {
        self.pending.len()
    }

    /// Number of neighbours known (for tests and introspection).
    pub fn neighbours(&self) -> usize {
        self.neigh.len()
    }
}

/// The verdict of a frame that flushed `flushed` from the neighbour queue and whose own
/// verdict is `v`: both are kept.
fn after_flush(flushed: Vec<Vec<u8>>, v: Verdict) -> Verdict {
    if flushed.is_empty() {
        v
    } else if v == Verdict::Ignore {
        Verdict::Flush(flushed)
    } else {
        Verdict::FlushThen {
            flush: flushed,
            then: Box::new(v),
        }
    }
}

fn is_link_local(a: Ipv6Addr) -> bool {
    a.segments()[0] & 0xffc0 == 0xfe80
}

fn ethertype_of(ip: IpAddr) -> EthernetProtocol {
    match ip {
        IpAddr::V4(_) => EthernetProtocol::Ipv4,
        IpAddr::V6(_) => EthernetProtocol::Ipv6,
    }
}

fn ipv4_header(src: Ipv4Addr, dst: Ipv4Addr, proto: IpProtocol, payload_len: usize) -> Ipv4Repr {
    Ipv4Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: proto,
        payload_len,
        hop_limit: 64,
    }
}

fn icmpv6_packet(src: Ipv6Addr, dst: Ipv6Addr, hop_limit: u8, icmp: &Icmpv6Repr<'_>) -> Vec<u8> {
    let ip = Ipv6Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: IpProtocol::Icmpv6,
        payload_len: icmp.buffer_len(),
        hop_limit,
    };
    let mut buf = vec![0u8; ip.buffer_len() + icmp.buffer_len()];
    let mut p = Ipv6Packet::new_unchecked(&mut buf[..]);
    ip.emit(&mut p);
    icmp.emit(
        &src,
        &dst,
        &mut Icmpv6Packet::new_unchecked(p.payload_mut()),
        &csum(),
    );
    buf
}

/// An IP packet carrying an ICMP/ICMPv6 echo reply from `src` to `dst`. `None` if the
/// families differ or the data is too long for one packet.
pub fn echo_reply_packet(
    src: IpAddr,
    dst: IpAddr,
    ident: u16,
    seq_no: u16,
    data: &[u8],
) -> Option<Vec<u8>> {
    if data.len() > 65000 {
        return None;
    }
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let icmp = Icmpv4Repr::EchoReply {
                ident,
                seq_no,
                data,
            };
            let ip = ipv4_header(s, d, IpProtocol::Icmp, icmp.buffer_len());
            let mut buf = vec![0u8; ip.buffer_len() + icmp.buffer_len()];
            let mut p = Ipv4Packet::new_unchecked(&mut buf[..]);
            ip.emit(&mut p, &csum());
            icmp.emit(&mut Icmpv4Packet::new_unchecked(p.payload_mut()), &csum());
            Some(buf)
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let icmp = Icmpv6Repr::EchoReply {
                ident,
                seq_no,
                data,
            };
            Some(icmpv6_packet(s, d, 64, &icmp))
        }
        _ => None,
    }
}

/// A zeroed buffer holding an emitted IPv4 or IPv6 header from `src` to `dst` for a
/// `proto` payload of `l4_len` bytes, and the payload's offset. `None` if the families
/// differ.
fn ip_packet(
    src: IpAddr,
    dst: IpAddr,
    proto: IpProtocol,
    l4_len: usize,
) -> Option<(Vec<u8>, usize)> {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let ip = ipv4_header(s, d, proto, l4_len);
            let mut buf = vec![0u8; ip.buffer_len() + l4_len];
            ip.emit(&mut Ipv4Packet::new_unchecked(&mut buf[..]), &csum());
            Some((buf, ip.buffer_len()))
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let ip = Ipv6Repr {
                src_addr: s,
                dst_addr: d,
                next_header: proto,
                payload_len: l4_len,
                hop_limit: 64,
            };
            let mut buf = vec![0u8; ip.buffer_len() + l4_len];
            ip.emit(&mut Ipv6Packet::new_unchecked(&mut buf[..]));
            Some((buf, ip.buffer_len()))
        }
        _ => None,
    }
}

/// An IP packet carrying a UDP datagram from `src` to `dst`, checksummed. `None` if the
/// families differ or the payload cannot fit one IP packet.
pub fn udp_packet(src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Option<Vec<u8>> {
    if payload.len() > 65000 {
        return None;
    }
    let udp = UdpRepr {
        src_port: src.port(),
        dst_port: dst.port(),
    };
    let l4_len = udp.header_len() + payload.len();
    let (mut buf, off) = ip_packet(src.ip(), dst.ip(), IpProtocol::Udp, l4_len)?;
    let l4 = buf.get_mut(off..)?;
    udp.emit(
        &mut UdpPacket::new_unchecked(l4),
        &IpAddress::from(src.ip()),
        &IpAddress::from(dst.ip()),
        payload.len(),
        |b| b.copy_from_slice(payload),
        &csum(),
    );
    Some(buf)
}

/// An IP packet carrying the RST|ACK that refuses a SYN from `src` to `dst` whose
/// sequence number is `syn_seq` (RFC 9293 3.10.7.1: SEQ=0, ACK=SEG.SEQ+1).
pub fn tcp_refuse_packet(src: SocketAddr, dst: SocketAddr, syn_seq: u32) -> Option<Vec<u8>> {
    let tcp = TcpRepr {
        src_port: dst.port(),
        dst_port: src.port(),
        control: TcpControl::Rst,
        seq_number: TcpSeqNumber(0),
        ack_number: Some(TcpSeqNumber(syn_seq.wrapping_add(1) as i32)),
        window_len: 0,
        window_scale: None,
        max_seg_size: None,
        sack_permitted: false,
        sack_ranges: [None, None, None],
        timestamp: None,
        payload: &[],
    };
    let l4_len = tcp.buffer_len();
    let (from, to) = (IpAddress::from(dst.ip()), IpAddress::from(src.ip()));
    let (mut buf, off) = ip_packet(dst.ip(), src.ip(), IpProtocol::Tcp, l4_len)?;
    let l4 = buf.get_mut(off..)?;
    tcp.emit(&mut TcpPacket::new_unchecked(l4), &from, &to, &csum());
    Some(buf)
}

/// The sequence number of the TCP segment in an IP packet, if it parses.
pub fn tcp_seq(ip_packet: &[u8]) -> Option<u32> {
    let l4 = match ip_packet.first().map(|b| b >> 4) {
        Some(4) => {
            let p = Ipv4Packet::new_checked(ip_packet).ok()?;
            ip_packet.get(usize::from(p.header_len())..)?
        }
        Some(6) => ip_packet.get(40..)?,
        _ => return None,
    };
    let t = TcpPacket::new_checked(l4).ok()?;
    Some(t.seq_number().0 as u32)
}

/// True if `net` is any of the (sub)nets in `list` containing `ip`.
pub fn in_any(list: &[IpNet], ip: IpAddr) -> bool {
    list.iter().any(|n| n.contains(&ip))
}

#[cfg(test)]
#[path = "tests/core.rs"]
mod tests;
