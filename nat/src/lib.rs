//! tapnet-nat: the userspace gateway of a bridge network.
//!
//! The gateway is a switch port. The engine makes an in-process [`port::link`] (or, for
//! comparison, a `DatagramPort::pair()`), attaches the port end to the network's switch
//! and hands the other end to [`Gateway::spawn`], which runs the gateway on its own
//! thread with its own `mio::Poll`. Every frame on that link is a
//! [`tapnet_switch::VNET_HDR_LEN`]-byte virtio-net header and an Ethernet frame; frames
//! the gateway emits carry a zeroed header (the gateway computes every checksum itself),
//! frames it receives may be GSO super-frames ([`vnet`] segments them).
//!
//! Shape (boringtun/quinn style):
//!
//! * deterministic cores, no I/O, time passed in: [`vnet`] (segmentation, checksums),
//!   [`core`] (frame classification, ARP/NDP/ICMP responder, isolation, frame builders),
//!   [`flows`] (flow tables with idle timeouts and limits), [`dns`] (embedded DNS answers,
//!   the upstream forwarder's retries and timeouts);
//! * [`tcp`]: the smoltcp any-IP stack that terminates TCP, over in-memory queues;
//! * [`runtime`]: the thread, `mio`, the host sockets, the control handle;
//! * [`port`]: the in-process switch↔gateway link (shared frame queues, `eventfd` wake-ups);
//! * [`budget`]: the process-wide descriptor budget every gateway's flows draw on;
//!   [`mem`]: the allocator settings that give flow memory back to the system.
#![deny(unsafe_code)]

pub mod budget;
pub mod core;
pub mod dns;
pub mod flows;
pub mod mem;

mod hostsock;
pub mod port;
pub mod runtime;
pub mod stats;
pub mod tcp;
pub mod vnet;

pub use runtime::{Gateway, GatewayHandle, InlineGateway, Link};
pub use stats::{DropReason, FlowProto, Stats, StatsSnapshot};

use ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

/// A MAC address.
pub type Mac = [u8; 6];

/// Configuration of one network's gateway.
#[derive(Clone, Debug)]
pub struct Config {
    /// The gateway's MAC address.
    pub mac: Mac,
    /// The gateway's IPv4 address.
    pub ipv4: Ipv4Addr,
    /// Prefix length of the IPv4 subnet.
    pub ipv4_prefix: u8,
    /// The gateway's IPv6 address and prefix length, if the network has IPv6.
    pub ipv6: Option<(Ipv6Addr, u8)>,
    /// Network MTU (IP packet size).
    pub mtu: u16,
    /// Internal network: no egress, no published ports.
    pub internal: bool,
    /// Upstream DNS servers, tried in order.
    pub upstream_dns: Vec<SocketAddr>,
    /// Time to wait for each upstream DNS server.
    pub dns_timeout: Duration,
    /// Suffixes (without leading or trailing dot) whose unknown names get NXDOMAIN.
    pub dns_suffixes: Vec<String>,
    /// Flow limits.
    pub limits: Limits,
    /// Subnets (and addresses, as /32 or /128) the gateway must not route to.
    pub isolated_subnets: Vec<IpNet>,
    /// Published-port clients on loopback are presented to the sandbox from the gateway
    /// address (a kernel in the sandbox drops 127.0.0.0/8 sources as martians).
    pub rewrite_loopback_clients: bool,
    /// The gateway faces taps (virtio-net headers honoured by a kernel): TCP GSO
    /// super-frames go through the TCP stack whole, TCP checksums are left to the taps
    /// (`NEEDS_CSUM`, not verified on receipt), and the stack's segments toward a sandbox
    /// go out as GSO super-frames. Off: plain frames with every checksum complete.
    pub tap_offloads: bool,
}

/// Flow limits and timeouts.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Most concurrent flows (all protocols) per sandbox source IP.
    pub per_endpoint: usize,
    /// Most concurrent flows on the network.
    pub per_network: usize,
    /// UDP flow idle timeout.
    pub udp_idle: Duration,
    /// ICMP echo flow idle timeout.
    pub icmp_idle: Duration,
    /// Most DNS queries of the network waiting for an upstream answer at once.
    pub dns_pending: usize,
    /// Most concurrent connections (TCP) or clients (UDP) per published port.
    pub published_conns: usize,
}

impl Limits {
    /// The built-in defaults (see `docs/security.md`).
    pub const BUILTIN: Limits = Limits {
        per_endpoint: 4096,
        per_network: 65536,
        udp_idle: Duration::from_secs(60),
        icmp_idle: Duration::from_secs(30),
        dns_pending: 1024,
        published_conns: 4096,
    };

    /// Make `self` the limits [`Limits::default`] (and so [`Config::new`]) gives from now
    /// on, process-wide: the daemon sets them from its flags at start.
    pub fn set_process_default(self) {
        if let Ok(mut d) = DEFAULT_LIMITS.write() {
            *d = self;
        }
    }
}

static DEFAULT_LIMITS: std::sync::RwLock<Limits> = std::sync::RwLock::new(Limits::BUILTIN);

impl Default for Limits {
    /// [`Limits::BUILTIN`], or what [`Limits::set_process_default`] set.
    fn default() -> Self {
        DEFAULT_LIMITS.read().map(|d| *d).unwrap_or(Limits::BUILTIN)
    }
}

impl Config {
    /// A config with defaults for everything but the addresses.
    pub fn new(mac: Mac, ipv4: Ipv4Addr, ipv4_prefix: u8) -> Config {
        Config {
            mac,
            ipv4,
            ipv4_prefix,
            ipv6: None,
            mtu: 1500,
            internal: false,
            upstream_dns: Vec::new(),
            dns_timeout: Duration::from_secs(2),
            dns_suffixes: Vec::new(),
            limits: Limits::default(),
            isolated_subnets: Vec::new(),
            rewrite_loopback_clients: true,
            tap_offloads: false,
        }
    }
}

/// A name the embedded DNS answers (a sandbox name, an endpoint name or an alias).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NameRecord {
    /// The name, with or without a trailing dot; matched case-insensitively.
    pub name: String,
    /// Its IPv4 addresses.
    pub ipv4s: Vec<Ipv4Addr>,
    /// Its IPv6 addresses.
    pub ipv6s: Vec<Ipv6Addr>,
}

/// Transport protocol of a published port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

/// A published port: connections to `host_ip:host_port` are delivered to
/// `sandbox_ip:sandbox_port` from the client's own address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PublishSpec {
    /// Host address to bind (`0.0.0.0` / `::` for all).
    pub host_ip: IpAddr,
    /// Host port to bind (0: pick one; the bound port is returned by `publish`).
    pub host_port: u16,
    /// TCP or UDP.
    pub proto: Proto,
    /// The sandbox's address on this network.
    pub sandbox_ip: IpAddr,
    /// The port in the sandbox.
    pub sandbox_port: u16,
}

/// Errors of the gateway.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An OS call failed.
    #[error("{op}: {source}")]
    Io {
        /// The operation.
        op: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The host port is already taken.
    #[error("publish {proto:?} {addr}: address already in use")]
    PortInUse {
        /// Protocol.
        proto: Proto,
        /// The host address and port.
        addr: SocketAddr,
    },
    /// Published ports are refused on internal networks.
    #[error("network is internal: published ports are not allowed")]
    Internal,
    /// The published port's sandbox address is not on this network.
    #[error("sandbox address {0} is not on this network")]
    NotOnNetwork(IpAddr),
    /// No such published port.
    #[error("no published {proto:?} port on {addr}")]
    NotPublished {
        /// Protocol.
        proto: Proto,
        /// The host address and port.
        addr: SocketAddr,
    },
    /// The gateway thread has stopped.
    #[error("gateway thread is gone")]
    Gone,
}
