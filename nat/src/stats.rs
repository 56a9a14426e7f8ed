//! Gateway counters: atomics written by the gateway thread, read by anyone through
//! [`Stats::snapshot`].

use std::sync::atomic::{AtomicU64, Ordering};

/// Why the gateway dropped a frame, a datagram or a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(usize)]
pub enum DropReason {
    /// Shorter than its headers say.
    Truncated = 0,
    /// The virtio-net header is inconsistent.
    BadVnetHdr,
    /// A GSO type or layout the gateway does not segment (UFO, IPv6 extension headers).
    UnsupportedGso,
    /// A header fails to parse or a checksum is wrong.
    Malformed,
    /// Not for the gateway and not routable (wrong MAC, multicast, unknown ethertype...).
    NotForUs,
    /// Destination in an isolated subnet (another network, or its gateway).
    Isolated,
    /// Egress on an internal network.
    Internal,
    /// A per-endpoint or per-network flow limit was hit.
    FlowLimit,
    /// Unprivileged ping sockets (and raw sockets) are not permitted.
    PingNotPermitted,
    /// A host socket could not be opened or written.
    HostSocket,
    /// Writing a frame to the switch failed.
    TxError,
    /// A reply could not be delivered to the sandbox (unknown MAC, too big...).
    Undeliverable,
    /// Protocol not handled (IP fragments, other L4 protocols).
    Unsupported,
    /// The process-wide descriptor budget for flows is spent ([`crate::budget`]).
    FdBudget,
    /// Too many DNS queries of the network are waiting for an upstream answer.
    DnsLimit,
    /// A published port has as many connections as it may hold: a new one is closed.
    PublishedConnLimit,
}

impl DropReason {
    /// Number of reasons.
    pub const COUNT: usize = 16;
    /// Every reason, in index order.
    pub const ALL: [DropReason; DropReason::COUNT] = [
        DropReason::Truncated,
        DropReason::BadVnetHdr,
        DropReason::UnsupportedGso,
        DropReason::Malformed,
        DropReason::NotForUs,
        DropReason::Isolated,
        DropReason::Internal,
        DropReason::FlowLimit,
        DropReason::PingNotPermitted,
        DropReason::HostSocket,
        DropReason::TxError,
        DropReason::Undeliverable,
        DropReason::Unsupported,
        DropReason::FdBudget,
        DropReason::DnsLimit,
        DropReason::PublishedConnLimit,
    ];
    /// Stable snake-case name.
    pub fn name(self) -> &'static str {
        match self {
            DropReason::Truncated => "truncated",
            DropReason::BadVnetHdr => "bad_vnet_hdr",
            DropReason::UnsupportedGso => "unsupported_gso",
            DropReason::Malformed => "malformed",
            DropReason::NotForUs => "not_for_us",
            DropReason::Isolated => "isolated",
            DropReason::Internal => "internal",
            DropReason::FlowLimit => "flow_limit",
            DropReason::PingNotPermitted => "ping_not_permitted",
            DropReason::HostSocket => "host_socket",
            DropReason::TxError => "tx_error",
            DropReason::Undeliverable => "undeliverable",
            DropReason::Unsupported => "unsupported",
            DropReason::FdBudget => "fd_budget",
            DropReason::DnsLimit => "dns_limit",
            DropReason::PublishedConnLimit => "published_conn_limit",
        }
    }
}

/// Flow protocols counted separately.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(usize)]
pub enum FlowProto {
    /// TCP egress and published TCP connections.
    Tcp = 0,
    /// UDP egress flows and published UDP clients.
    Udp,
    /// ICMP echo egress flows.
    Icmp,
}

/// Live counters.
#[derive(Debug, Default)]
pub struct Stats {
    /// Datagrams read from the switch port.
    pub frames_in: AtomicU64,
    /// Frames written to the switch port.
    pub frames_out: AtomicU64,
    /// Drops by [`DropReason`] index.
    pub drops: [AtomicU64; DropReason::COUNT],
    /// Active flows by [`FlowProto`] index.
    pub flows_active: [AtomicU64; 3],
    /// Flows ever opened by [`FlowProto`] index.
    pub flows_total: [AtomicU64; 3],
    /// Times a flow limit refused a new flow.
    pub flow_limit_hits: AtomicU64,
    /// DNS queries answered locally.
    pub dns_local: AtomicU64,
    /// DNS queries forwarded upstream.
    pub dns_forwarded: AtomicU64,
    /// DNS queries answered SERVFAIL because no upstream answered.
    pub dns_servfail: AtomicU64,
}

/// Plain-value copy of [`Stats`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Datagrams read from the switch port.
    pub frames_in: u64,
    /// Frames written to the switch port.
    pub frames_out: u64,
    /// (reason, count) for every reason.
    pub drops: Vec<(DropReason, u64)>,
    /// Active flows: tcp, udp, icmp.
    pub flows_active: [u64; 3],
    /// Flows ever opened: tcp, udp, icmp.
    pub flows_total: [u64; 3],
    /// Times a flow limit refused a new flow.
    pub flow_limit_hits: u64,
    /// DNS queries answered locally.
    pub dns_local: u64,
    /// DNS queries forwarded upstream.
    pub dns_forwarded: u64,
    /// DNS queries answered SERVFAIL.
    pub dns_servfail: u64,
}

impl StatsSnapshot {
    /// Drops for one reason.
    pub fn drops(&self, reason: DropReason) -> u64 {
        self.drops
            .iter()
            .find(|(r, _)| *r == reason)
            .map_or(0, |(_, n)| *n)
    }
}

fn ld(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

impl Stats {
    /// Add one to a counter.
    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
    /// Count a drop.
    pub fn dropped(&self, reason: DropReason) {
        if let Some(c) = self.drops.get(reason as usize) {
            Stats::inc(c);
        }
    }
    /// Count a new flow.
    pub fn flow_opened(&self, p: FlowProto) {
        if let Some(c) = self.flows_active.get(p as usize) {
            Stats::inc(c);
        }
        if let Some(c) = self.flows_total.get(p as usize) {
            Stats::inc(c);
        }
    }
    /// Count a closed flow.
    pub fn flow_closed(&self, p: FlowProto) {
        if let Some(c) = self.flows_active.get(p as usize) {
            // Never below zero.
            let _ = c.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1));
        }
    }
    /// Copy the counters out.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            frames_in: ld(&self.frames_in),
            frames_out: ld(&self.frames_out),
            drops: DropReason::ALL
                .iter()
                .map(|&r| (r, ld(&self.drops[r as usize])))
                .collect(),
            flows_active: [
                ld(&self.flows_active[0]),
                ld(&self.flows_active[1]),
                ld(&self.flows_active[2]),
            ],
            flows_total: [
                ld(&self.flows_total[0]),
                ld(&self.flows_total[1]),
                ld(&self.flows_total[2]),
            ],
            flow_limit_hits: ld(&self.flow_limit_hits),
            dns_local: ld(&self.dns_local),
            dns_forwarded: ld(&self.dns_forwarded),
            dns_servfail: ld(&self.dns_servfail),
        }
    }
}
