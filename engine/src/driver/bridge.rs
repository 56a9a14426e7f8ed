//! The `bridge` driver: a userspace learning switch per network, a tap per endpoint.
//!
//! Contract: [`BridgeDriver::create_network`] adds a switch on one datapath worker;
//! [`BridgeDriver::join`] creates a persistent tap inside the sandbox under a
//! temporary name (`tap` + the endpoint id's first 12 characters), down and
//! unconfigured, attaches it to the switch as a port, and returns an
//! [`InterfaceSource::InSandbox`] description: prefix `eth`, the endpoint's MAC, the
//! network's MTU, txqueuelen [`TAP_TXQUEUELEN`], the endpoint's IPv4 and (on IPv6
//! networks) IPv6 address, the network's gateways. The sandbox layer
//! ([`crate::sandbox_layer`]) renames it `ethN` and configures it; an endpoint on a
//! network without IPv6 has no IPv6 address, so the layer turns IPv6 off on the tap,
//! as dockerd does (no RS/DAD/MLD multicast, which the switch would flood to every
//! port). [`BridgeDriver::leave`] detaches the port and destroys the tap so the
//! interface disappears from the sandbox. Every step that fails undoes the steps
//! before it. [`BridgeDriver::restore_endpoint`] (daemon restart) re-opens the
//! endpoint's persistent tap (`TUNSETIFF` on the existing device, recorded name) and
//! attaches it again; if the tap is gone it creates a bare one as join does and
//! returns the same description, which the sandbox layer applies under the recorded
//! name: a re-created tap is exactly what join + the sandbox layer make. The tap work
//! runs without the driver's lock, so endpoints can be restored in parallel.
//!
//! Each network also gets a userspace gateway (`tapnet_nat`), attached to the switch as a
//! port with [`PortRole::Gateway`] and run inline by the switch worker that serves the
//! network ([`tapnet_nat::InlineGateway`]: no thread of its own; for comparisons
//! `TAPNET_GATEWAY_LINK=queue` runs it on its own thread behind the in-process link,
//! `tapnet_nat::port`, and `TAPNET_GATEWAY_LINK=socketpair` behind a `DatagramPort`
//! socket pair), [`tapnet_nat::Gateway`] with MAC `02:42:<gateway IPv4>`, the network's gateway
//! addresses, MTU, `internal` flag and the daemon's upstream DNS servers. Every
//! gateway's isolation list is every other bridge network's subnets and gateway
//! addresses, kept current as networks come and go. Endpoint ports get a
//! [`PortPolicy`] (anti-spoofing on unless `com.tapnet.port_security=false`); the
//! switch's ICC follows `com.docker.network.bridge.enable_icc`.
//!
//! The switch, gateway and taps are shared with the `overlay` driver
//! ([`super::overlay`]): `BridgeDriver::create_switch_network` makes a network with a
//! given endpoint MTU (bridge: the network's `com.docker.network.driver.mtu`, default
//! 1500; overlay: underlay − 50) and an optional uplink port (overlay: the VXLAN port,
//! removed with the switch); every other call serves both drivers' networks alike.
//!
//! The tap is shared between the switch port ([`TapPort`]) and the driver through an
//! `Arc`: once the switch hands the port back, the driver holds the only reference
//! and can destroy the device.

use super::{
    Capabilities, Driver, FdbRow, InterfaceDescription, InterfaceSource, JoinDescription,
    JoinRequest, NetworkReport, NetworkRequest, PortReport, RestoreDescription, Restored,
};
use crate::error::{Error, Result};
use crate::model::{Endpoint, Network};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::sync::{Arc, Mutex, MutexGuard};
use tapnet_nat::{Gateway, GatewayHandle, NameRecord, Proto, PublishSpec};
use tapnet_sandbox::tap::Tap;
use tapnet_switch::core::{
    MacAddr, PortFdb, PortId, PortOptions, PortPolicy, PortRole, SwitchConfig,
};
use tapnet_switch::runtime::{
    CaptureScope, DatagramPort, Datapath, FrameIo, NetworkHandle, PortStats,
};

/// Socket buffer asked for on both ends of the switch↔gateway socketpair. A 64 KiB
/// GSO super-frame costs its full size in the sender's buffer; the default
/// (`net.core.wmem_default`, about 208 KiB) holds three of them.
pub const GATEWAY_SOCKET_BUFFER: usize = 8 << 20;

/// Environment variable choosing how the gateway meets its switch, for comparisons:
/// `queue` runs the gateway on a thread of its own behind the in-process link
/// ([`tapnet_nat::port`]), `socketpair` on its own thread behind a socket pair; anything
/// else (or unset) runs it inline on the switch worker ([`tapnet_nat::InlineGateway`]).
pub const GATEWAY_LINK_ENV: &str = "TAPNET_GATEWAY_LINK";

/// `txqueuelen` of endpoint taps: large enough that a TCP window never overflows.
pub const TAP_TXQUEUELEN: u32 = 10_000;

/// A tap device as a switch port, one `read`/`write` per frame (`--tap-io rw`, and the
/// fallback of `auto`).
pub use tapnet_sandbox::uring::RwTap as TapPort;
pub use tapnet_sandbox::uring::{TapIo, TapIoPath};

struct BridgePort {
    port: PortId,
    stats: Arc<PortStats>,
    /// Queue 0 of the tap (the fd that owns the device: [`destroy_tap`] takes it).
    tap: Arc<Tap>,
    /// The tap's other queues (`--tap-queues`), dropped before the device is destroyed.
    queues: Vec<Arc<Tap>>,
}

impl BridgePort {
    /// Destroy the tap: the other queues' fds are closed first.
    fn destroy(self, what: &str) -> Result<()> {
        drop(self.queues);
        destroy_tap(self.tap, what)
    }
}

struct BridgeNetwork {
    handle: NetworkHandle,
    ports: HashMap<String, BridgePort>,
    /// The gateway; `None` only while a network is being torn down.
    gateway: Option<GatewayHandle>,
    /// The gateway's switch port (`None`: a network without a userspace gateway,
    /// macvlan).
    gateway_port: Option<PortId>,
    /// That port's counters (what the switch sent to and got from the gateway).
    gateway_port_stats: Option<Arc<PortStats>>,
    /// This network's subnets and gateway addresses (what other gateways isolate).
    own: Vec<IpNet>,
    /// Anti-spoofing on endpoint ports.
    port_security: bool,
    /// The MTU endpoints (and the gateway) get.
    mtu: u32,
    /// The switch port of the network's uplink (overlay: the VXLAN tunnel port;
    /// macvlan: the packet socket on the parent) and its counters.
    uplink: Option<(PortId, Arc<PortStats>)>,
}

impl BridgeNetwork {
    /// Attach an endpoint's tap (its queues, queue 0 first: one per shard of the
    /// network at most) to the switch with the endpoint's port policy and record the port.
    fn attach(
        &mut self,
        endpoint: &Endpoint,
        taps: Vec<Arc<Tap>>,
        tap_io: TapIo,
        tap_depth: usize,
    ) -> std::result::Result<(), tapnet_switch::runtime::Error> {
        let opts = endpoint_options(endpoint, self.port_security);
        let mut ios: Vec<Box<dyn FrameIo>> = Vec::with_capacity(taps.len());
        let mut path = None;
        for tap in &taps {
            let (io, p) = tapnet_sandbox::uring::open_port(Arc::clone(tap), tap_io, tap_depth)
                .map_err(|source| tapnet_switch::runtime::Error::Io {
                    op: "open tap port",
                    source,
                })?;
            ios.push(io);
            path = Some(p);
        }
        let mut taps = taps.into_iter();
        let tap = taps.next().ok_or(tapnet_switch::runtime::Error::Io {
            op: "open tap port",
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "no tap queues"),
        })?;
        tracing::info!(
            endpoint = %endpoint.id,
            tap = tap.name(),
            path = path.map_or("", |p| p.as_str()),
            queues = ios.len(),
            "tap port attached"
        );
        let (port, stats) = if ios.len() == 1 {
            let io = ios.pop().ok_or(tapnet_switch::runtime::Error::WorkerGone)?;
            self.handle.add_port_with(io, opts)?
        } else {
            self.handle.add_port_queues(ios, opts)?
        };
        self.ports.insert(
            endpoint.id.clone(),
            BridgePort {
                port,
                stats,
                tap,
                queues: taps.collect(),
            },
        );
        Ok(())
    }
}

/// The `bridge` driver (see the module doc).
pub struct BridgeDriver {
    datapath: Mutex<Option<Datapath>>,
    /// Upstream DNS servers of every gateway.
    upstream_dns: Vec<SocketAddr>,
    networks: Mutex<HashMap<String, BridgeNetwork>>,
    /// How endpoint taps move frames.
    tap_io: TapIo,
    /// io_uring reads in flight per tap port.
    tap_depth: usize,
    /// Queues per endpoint tap; networks are spread over this many workers.
    tap_queues: usize,
}

impl std::fmt::Debug for BridgeDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BridgeDriver").finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Destroy a tap once nothing else holds it; log if something still does.
fn destroy_tap(tap: Arc<Tap>, what: &str) -> Result<()> {
    match Arc::try_unwrap(tap) {
        Ok(tap) => {
            let name = tap.name().to_string();
            tap.destroy()
                .map_err(|e| Error::os(format!("destroy tap {name} of {what}"), e))
        }
        Err(tap) => {
            tracing::warn!(
                tap = tap.name(),
                "{what}: tap still referenced by the datapath; left in place"
            );
            Ok(())
        }
    }
}

/// Destroy a tap given as its queues (queue 0 first): the others are closed first.
fn destroy_queues(mut taps: Vec<Arc<Tap>>, what: &str) -> Result<()> {
    if taps.is_empty() {
        return Ok(());
    }
    let first = taps.remove(0);
    drop(taps);
    destroy_tap(first, what)
}

/// The name a new tap gets in the sandbox until the sandbox layer renames it:
/// `tap` + the endpoint id's first 12 characters (unique: ids are random).
fn tap_name(endpoint: &Endpoint) -> String {
    let id: String = endpoint.id.chars().take(12).collect();
    format!("tap{id}")
}

/// What the sandbox needs for `endpoint`'s tap, now called `name` (used by `join` and
/// by `restore_endpoint`, so a re-created tap ends up as a joined one), with the
/// network's MTU as the driver chose it.
fn describe(
    network: &Network,
    endpoint: &Endpoint,
    name: &str,
    mtu: u32,
) -> Result<JoinDescription> {
    if endpoint.mac.is_none() {
        return Err(Error::InvalidRequest(format!(
            "endpoint {} on network {} has no MAC address",
            endpoint.id, network.name
        )));
    }
    let mut interface = InterfaceDescription::for_endpoint(
        InterfaceSource::InSandbox {
            name: name.to_string(),
        },
        network,
        endpoint,
    )?;
    interface.dst_prefix = "eth".into();
    interface.txqueuelen = Some(TAP_TXQUEUELEN);
    interface.mtu = Some(mtu);
    Ok(JoinDescription {
        interface: Some(interface),
        gateway_v4: network.gateway,
        gateway_v6: network.ipv6.as_ref().map(|v6| v6.gateway),
        static_routes: Vec::new(),
        disable_gateway_service: false,
    })
}

impl BridgeDriver {
    /// Start the datapath with `workers` threads (0 = one per core) and wrap it.
    pub fn start(workers: usize) -> Result<BridgeDriver> {
        BridgeDriver::start_with_nice(workers, None, false)
    }

    /// [`BridgeDriver::start`] with every datapath worker thread at nice value `nice`
    /// (the daemon's other threads keep theirs): `tapnetd --worker-nice`. An error names
    /// the flag and the kernel's refusal (a value below the current one needs
    /// `CAP_SYS_NICE`). With `auto` each worker also runs the automatic nice of
    /// `tapnetd --worker-nice auto` ([`tapnet_sandbox::sched::AutoNice`]) around the value
    /// it starts at; the caller checks first that the workers may set it back
    /// ([`tapnet_sandbox::sched::can_restore_nice`]).
    pub fn start_with_nice(workers: usize, nice: Option<i32>, auto: bool) -> Result<BridgeDriver> {
        let init: Option<tapnet_switch::runtime::WorkerInit> = nice.map(|n| {
            let f = move || {
                tapnet_sandbox::sched::set_thread_nice(n).map_err(|e| {
                    let hint = if e.kind() == std::io::ErrorKind::PermissionDenied {
                        " (a value below the daemon's own needs CAP_SYS_NICE)"
                    } else {
                        ""
                    };
                    std::io::Error::new(e.kind(), format!("--worker-nice {n}: {e}{hint}"))
                })
            };
            std::sync::Arc::new(f) as tapnet_switch::runtime::WorkerInit
        });
        let tick: Option<tapnet_switch::runtime::WorkerTickMaker> = auto.then(|| {
            let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
            let params = tapnet_sandbox::sched::AutoNiceParams::from_env(cpus);
            let make = move || {
                let base = tapnet_sandbox::sched::thread_nice().ok()?;
                let tick = tapnet_sandbox::sched::auto_nice_tick(base, params);
                Some(Box::new(tick) as tapnet_switch::runtime::WorkerTick)
            };
            std::sync::Arc::new(make) as tapnet_switch::runtime::WorkerTickMaker
        });
        let datapath = Datapath::start_with_tick(workers, init, tick)
            .map_err(|e| Error::datapath("start datapath", e))?;
        Ok(BridgeDriver::with_datapath(datapath))
    }

    /// Wrap a running datapath.
    pub fn with_datapath(datapath: Datapath) -> BridgeDriver {
        BridgeDriver {
            datapath: Mutex::new(Some(datapath)),
            upstream_dns: Vec::new(),
            networks: Mutex::new(HashMap::new()),
            tap_io: TapIo::default(),
            tap_depth: tapnet_sandbox::uring::DEFAULT_DEPTH,
            tap_queues: 1,
        }
    }

    /// Give endpoint taps `queues` queues (`IFF_MULTI_QUEUE`) and spread networks
    /// created from now on over as many datapath workers, so several flows of one network
    /// use several cores. More queues than workers is an error naming both.
    pub fn with_tap_queues(mut self, queues: usize) -> Result<BridgeDriver> {
        let workers = lock(&self.datapath).as_ref().map_or(0, Datapath::workers);
        if queues == 0 || queues > workers {
            return Err(Error::InvalidRequest(format!(
                "--tap-queues {queues}: must be 1 to the number of datapath workers ({workers}; --workers)"
            )));
        }
        self.tap_queues = queues;
        Ok(self)
    }

    /// Queues per endpoint tap.
    pub fn tap_queues(&self) -> usize {
        self.tap_queues
    }

    /// How many queues a tap on `network_id` gets: one per shard of its switch.
    fn queues_of(&self, network_id: &str) -> Result<usize> {
        lock(&self.networks)
            .get(network_id)
            .map(|n| n.handle.shards())
            .ok_or_else(|| Self::unknown(network_id))
    }

    /// Move endpoint taps' frames this way (ports attached from now on), with `depth`
    /// io_uring reads in flight per port.
    pub fn with_tap_io(mut self, mode: TapIo, depth: usize) -> BridgeDriver {
        self.tap_io = mode;
        self.tap_depth = depth;
        self
    }

    /// The tap I/O mode asked for.
    pub fn tap_io(&self) -> TapIo {
        self.tap_io
    }

    /// Use these upstream DNS servers for the gateways of networks created from now on.
    pub fn with_upstream_dns(mut self, servers: Vec<SocketAddr>) -> BridgeDriver {
        self.upstream_dns = servers;
        self
    }

    fn unknown(network_id: &str) -> Error {
        Error::NotFound(format!("bridge driver has no network {network_id}"))
    }

    /// Send `msg` to the uplink port of `network_id` (overlay: its VXLAN port).
    pub(crate) fn control_uplink(
        &self,
        network_id: &str,
        msg: tapnet_switch::runtime::PortControl,
    ) -> Result<()> {
        self.control_uplink_reply(network_id, msg).map(drop)
    }

    /// Send `msg` to the uplink port of `network_id`; returns the port's reply.
    pub(crate) fn control_uplink_reply(
        &self,
        network_id: &str,
        msg: tapnet_switch::runtime::PortControl,
    ) -> Result<tapnet_switch::runtime::PortReply> {
        let nets = lock(&self.networks);
        let net = nets
            .get(network_id)
            .ok_or_else(|| Self::unknown(network_id))?;
        let (port, _) = net
            .uplink
            .as_ref()
            .map(|(p, s)| (*p, s))
            .ok_or_else(|| Error::Driver(format!("network {network_id} has no uplink port")))?;
        net.handle
            .control_port(port, msg)
            .map_err(|e| Error::datapath(format!("control the uplink of network {network_id}"), e))
    }

    /// The switch port of `network_id`'s uplink, if it has one.
    pub(crate) fn uplink_port(&self, network_id: &str) -> Option<PortId> {
        lock(&self.networks)
            .get(network_id)
            .and_then(|n| n.uplink.as_ref().map(|(p, _)| *p))
    }

    /// The switch's counters of `network_id`'s uplink port, if it has one (reported
    /// with endpoint id `uplink`).
    pub(crate) fn uplink_report(&self, network_id: &str) -> Option<PortReport> {
        lock(&self.networks).get(network_id).and_then(|n| {
            n.uplink.as_ref().map(|(port, stats)| {
                let fdb = port_fdb_of(&n.handle, *port);
                PortReport {
                    endpoint_id: "uplink".into(),
                    port: *port,
                    stats: stats.snapshot(),
                    fdb_entries: fdb.learned,
                    fdb_limit_hits: fdb.limit_hits,
                }
            })
        })
    }

    /// The MTU the driver gives endpoints of `network_id`.
    fn mtu_of(&self, network_id: &str) -> Result<u32> {
        lock(&self.networks)
            .get(network_id)
            .map(|n| n.mtu)
            .ok_or_else(|| Self::unknown(network_id))
    }

    /// The shared part of `create_network` of the switch-based drivers (`bridge`,
    /// `overlay`, `macvlan`): a switch, the userspace gateway on it (unless `gateway`
    /// is false: macvlan, whose gateway is a router on the parent's segment),
    /// endpoints of `mtu`, and `uplink` (overlay: the VXLAN port; macvlan: the packet
    /// socket) attached as a port without a policy. The network joins the gateways'
    /// isolation lists. On failure nothing is left.
    pub(crate) fn create_switch_network(
        &self,
        network: &Network,
        mtu: u32,
        uplink: Option<Box<dyn FrameIo>>,
        gateway: bool,
    ) -> Result<()> {
        let icc = network.icc()?;
        let port_security = network.port_security()?;
        let (gw4, subnet) = match (network.gateway, network.subnet) {
            (Some(g), Some(s)) => (g, s),
            _ => {
                return Err(Error::InvalidRequest(format!(
                    "{} network {} has no IPv4 subnet and gateway",
                    network.driver, network.name
                )))
            }
        };
        let gw_mtu = u16::try_from(mtu).unwrap_or(u16::MAX);
        let op = || format!("create switch for network {}", network.name);
        let handle = {
            let dp = lock(&self.datapath);
            let dp = dp.as_ref().ok_or(Error::datapath(
                op(),
                tapnet_switch::runtime::Error::WorkerGone,
            ))?;
            dp.add_network_spread(
                SwitchConfig {
                    icc,
                    ..SwitchConfig::default()
                },
                self.tap_queues,
            )
            .map_err(|e| Error::datapath(op(), e))?
        };
        let uplink = match uplink {
            None => None,
            // The uplink (macvlan parent, overlay tunnel) stands for every remote host:
            // only the network's limit bounds what it learns.
            Some(io) => match handle.add_port_with(
                io,
                PortOptions {
                    fdb_limit: Some(SwitchConfig::default().fdb_limit),
                    ..PortOptions::default()
                },
            ) {
                Ok((port, stats)) => Some((port, stats)),
                Err(e) => {
                    if let Err(r) = handle.remove() {
                        tracing::warn!(error = %r, "removing switch after a failed uplink");
                    }
                    return Err(Error::datapath(
                        format!("attach the uplink of network {}", network.name),
                        e,
                    ));
                }
            },
        };
        // A network without gateway (macvlan: a LAN segment) is not isolated from
        // the others' gateways: their sandboxes reach it as any outside address.
        let own = if gateway {
            own_nets(network)
        } else {
            Vec::new()
        };
        let mut nets = lock(&self.networks);
        if !gateway {
            nets.insert(
                network.id.clone(),
                BridgeNetwork {
                    handle,
                    ports: HashMap::new(),
                    gateway: None,
                    gateway_port: None,
                    gateway_port_stats: None,
                    own,
                    port_security,
                    mtu,
                    uplink,
                },
            );
            return Ok(());
        }
        let isolated: Vec<IpNet> = nets.values().flat_map(|n| n.own.clone()).collect();
        let mut cfg = tapnet_nat::Config::new(crate::model::mac_for(gw4), gw4, subnet.prefix_len());
        cfg.ipv6 = network
            .ipv6
            .as_ref()
            .map(|c| (c.gateway, c.subnet.prefix_len()));
        cfg.mtu = gw_mtu;
        cfg.internal = network.internal;
        cfg.upstream_dns = self.upstream_dns.clone();
        cfg.dns_suffixes = Vec::new();
        cfg.isolated_subnets = isolated;
        // The gateway faces the network's taps (IFF_VNET_HDR): GSO both ways.
        cfg.tap_offloads = true;
        let started = (|| {
            let (port, peer) = gateway_pair(&cfg).map_err(|e| {
                Error::os(
                    format!("create the gateway socket pair of network {}", network.name),
                    tapnet_sandbox::Error::Os {
                        op: "socketpair".into(),
                        source: e,
                    },
                )
            })?;
            let (gw_port, gw_stats) = handle
                .add_port_with(
                    port,
                    PortOptions {
                        role: PortRole::Gateway,
                        policy: None,
                        fdb_limit: None,
                    },
                )
                .map_err(|e| {
                    Error::datapath(format!("attach the gateway of network {}", network.name), e)
                })?;
            let spawned = match peer {
                GatewayEnd::Ready(gw) => Ok(gw),
                GatewayEnd::Spawn(link) => Gateway::spawn(cfg, link),
            };
            match spawned {
                Ok(gw) => Ok((gw_port, gw_stats, gw)),
                Err(e) => {
                    let _ = handle.remove_port(gw_port);
                    Err(Error::gateway(
                        format!("start the gateway of network {}", network.name),
                        e,
                    ))
                }
            }
        })();
        let (gateway_port, gateway_port_stats, gateway) = match started {
            Ok(x) => x,
            Err(e) => {
                drop(nets);
                if let Err(r) = handle.remove() {
                    tracing::warn!(error = %r, "removing switch after a failed gateway start");
                }
                return Err(e);
            }
        };
        nets.insert(
            network.id.clone(),
            BridgeNetwork {
                handle,
                ports: HashMap::new(),
                gateway: Some(gateway),
                gateway_port: Some(gateway_port),
                gateway_port_stats: Some(gateway_port_stats),
                own,
                port_security,
                mtu,
                uplink,
            },
        );
        refresh_isolation(&nets);
        Ok(())
    }
}

impl Driver for BridgeDriver {
    fn name(&self) -> &str {
        "bridge"
    }

    fn validate_options(&self, options: &std::collections::BTreeMap<String, String>) -> Result<()> {
        if let Some(v) = options.get(crate::model::MTU_OPTION) {
            crate::model::parse_mtu(v)?;
        }
        Ok(())
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            gateway_service: true,
            ..Capabilities::default()
        }
    }

    fn create_network(&self, req: &NetworkRequest<'_>) -> Result<()> {
        self.create_switch_network(req.network, req.network.mtu()?, None, true)
    }

    fn delete_network(&self, network_id: &str) -> Result<()> {
        let mut nets = lock(&self.networks);
        let mut net = nets
            .remove(network_id)
            .ok_or_else(|| Self::unknown(network_id))?;
        refresh_isolation(&nets);
        drop(nets);
        if let Some(gw) = net.gateway.take() {
            gw.shutdown();
        }
        if let Some(gw_port) = net.gateway_port {
            let _ = net.handle.remove_port(gw_port);
        }
        if let Some((uplink, _)) = net.uplink {
            let _ = net.handle.remove_port(uplink);
        }
        for (ep, port) in net.ports {
            // Not expected (the controller leaves first), but never leak a tap.
            let _ = net.handle.remove_port(port.port);
            port.destroy(&format!("endpoint {ep}"))?;
        }
        net.handle
            .remove()
            .map_err(|e| Error::datapath(format!("remove switch of network {network_id}"), e))
    }

    fn set_names(&self, network_id: &str, names: Vec<NameRecord>) -> Result<()> {
        let nets = lock(&self.networks);
        let net = nets
            .get(network_id)
            .ok_or_else(|| Self::unknown(network_id))?;
        match &net.gateway {
            Some(gw) => gw
                .set_names(names)
                .map_err(|e| Error::gateway(format!("set DNS names of network {network_id}"), e)),
            None => Ok(()),
        }
    }

    fn update_names(
        &self,
        network_id: &str,
        removed: Vec<NameRecord>,
        added: Vec<NameRecord>,
    ) -> Result<bool> {
        let nets = lock(&self.networks);
        let net = nets
            .get(network_id)
            .ok_or_else(|| Self::unknown(network_id))?;
        if let Some(gw) = &net.gateway {
            gw.update_names(removed, added).map_err(|e| {
                Error::gateway(format!("update DNS names of network {network_id}"), e)
            })?;
        }
        Ok(true)
    }

    fn publish(&self, network_id: &str, spec: PublishSpec) -> Result<SocketAddr> {
        let nets = lock(&self.networks);
        let net = nets
            .get(network_id)
            .ok_or_else(|| Self::unknown(network_id))?;
        let gw = net
            .gateway
            .as_ref()
            .ok_or_else(|| Self::unknown(network_id))?;
        crate::ports::publish_dual(spec, |s| gw.publish(s), |p, a| gw.unpublish(p, a)).map_err(
            |e| {
                Error::gateway(
                    format!(
                        "publish {}/{} of {}",
                        spec.sandbox_port,
                        proto_name(spec.proto),
                        spec.sandbox_ip
                    ),
                    e,
                )
            },
        )
    }

    fn unpublish(&self, network_id: &str, proto: Proto, addr: SocketAddr) -> Result<()> {
        let nets = lock(&self.networks);
        let net = nets
            .get(network_id)
            .ok_or_else(|| Self::unknown(network_id))?;
        match &net.gateway {
            Some(gw) => crate::ports::unpublish_dual(proto, addr, |p, a| gw.unpublish(p, a))
                .map_err(|e| Error::gateway(format!("unpublish {addr}/{}", proto_name(proto)), e)),
            None => Ok(()),
        }
    }

    fn join(&self, req: &JoinRequest<'_>) -> Result<JoinDescription> {
        let (network, endpoint, sandbox_name) = (req.network, req.endpoint, req.sandbox_name);
        let name = tap_name(endpoint);
        let description = describe(network, endpoint, &name, self.mtu_of(&network.id)?)?;
        // The tap is made without the driver's lock: joins on other networks (and
        // reads of counters) do not wait for namespace and tap work.
        let queues = self.queues_of(&network.id)?;
        let taps: Vec<Arc<Tap>> =
            tapnet_sandbox::tap::create_down_queues(req.sandbox, &name, queues)
                .map_err(|e| Error::os(format!("create tap {name} in sandbox {sandbox_name}"), e))?
                .into_iter()
                .map(Arc::new)
                .collect();
        let what = format!("{name} of sandbox {sandbox_name}");
        let attached = match lock(&self.networks).get_mut(&network.id) {
            Some(net) => net
                .attach(endpoint, taps.clone(), self.tap_io, self.tap_depth)
                .map_err(|e| {
                    Error::datapath(format!("attach {what} to network {}", network.name), e)
                }),
            None => Err(Self::unknown(&network.id)),
        };
        if let Err(e) = attached {
            if let Err(cleanup) = destroy_queues(taps, &what) {
                tracing::warn!(error = %cleanup, "cleanup after failed attach");
            }
            return Err(e);
        }
        Ok(description)
    }

    fn restore_endpoint(&self, req: &JoinRequest<'_>) -> Result<RestoreDescription> {
        let (network, endpoint, sandbox_name) = (req.network, req.endpoint, req.sandbox_name);
        let mtu = self.mtu_of(&network.id)?;
        let name = endpoint.interface.as_str();
        let queues = self.queues_of(&network.id)?;
        let (taps, how, join) = match tapnet_sandbox::tap::reopen_queues(req.sandbox, name, queues)
        {
            Ok(taps) => (
                taps,
                Restored::Reopened,
                describe(network, endpoint, name, mtu)?,
            ),
            Err(reopen) => {
                tracing::warn!(
                    sandbox = sandbox_name,
                    interface = name,
                    error = %reopen,
                    "tap of endpoint is gone; re-creating it from the stored record"
                );
                let temp = tap_name(endpoint);
                let join = describe(network, endpoint, &temp, mtu)?;
                let taps = tapnet_sandbox::tap::create_down_queues(req.sandbox, &temp, queues)
                    .map_err(|e| {
                        Error::os(format!("re-create tap {name} in sandbox {sandbox_name}"), e)
                    })?;
                (taps, Restored::Recreated, join)
            }
        };
        let taps: Vec<Arc<Tap>> = taps.into_iter().map(Arc::new).collect();
        let mut nets = lock(&self.networks);
        let net = nets
            .get_mut(&network.id)
            .ok_or_else(|| Self::unknown(&network.id))?;
        match net.attach(endpoint, taps.clone(), self.tap_io, self.tap_depth) {
            Ok(()) => Ok(RestoreDescription { how, join }),
            Err(e) => {
                drop(nets);
                // Leave a re-opened tap as it was (closing the fd keeps the device);
                // remove one we just made.
                if how == Restored::Recreated {
                    let what = format!("{name} of sandbox {sandbox_name}");
                    if let Err(cleanup) = destroy_queues(taps, &what) {
                        tracing::warn!(error = %cleanup, "cleanup after failed attach");
                    }
                }
                Err(Error::datapath(
                    format!(
                        "re-attach {name} of sandbox {sandbox_name} to network {}",
                        network.name
                    ),
                    e,
                ))
            }
        }
    }

    fn leave(&self, network_id: &str, endpoint_id: &str) -> Result<()> {
        let port = {
            let mut nets = lock(&self.networks);
            let net = nets
                .get_mut(network_id)
                .ok_or_else(|| Self::unknown(network_id))?;
            let Some(port) = net.ports.remove(endpoint_id) else {
                return Ok(());
            };
            match net.handle.remove_port(port.port) {
                Ok(io) => drop(io),
                Err(e) => {
                    tracing::warn!(endpoint = endpoint_id, error = %e, "detaching port failed");
                }
            }
            port
        };
        // The tap is destroyed without the driver's lock.
        port.destroy(&format!("endpoint {endpoint_id}"))
    }

    fn report(&self, network_id: &str) -> Result<NetworkReport> {
        let nets = lock(&self.networks);
        let net = nets
            .get(network_id)
            .ok_or_else(|| Self::unknown(network_id))?;
        let op = || format!("read counters of network {network_id}");
        let fdb = net.handle.fdb().map_err(|e| Error::datapath(op(), e))?;
        let counters = net
            .handle
            .counters()
            .map_err(|e| Error::datapath(op(), e))?;
        let port_fdb: HashMap<PortId, PortFdb> = net
            .handle
            .port_fdb()
            .map_err(|e| Error::datapath(op(), e))?
            .into_iter()
            .collect();
        let fdb_of = |port: PortId| port_fdb.get(&port).copied().unwrap_or_default();
        let mut ports: Vec<PortReport> = net
            .ports
            .iter()
            .map(|(ep, p)| PortReport {
                endpoint_id: ep.clone(),
                port: p.port,
                stats: p.stats.snapshot(),
                fdb_entries: fdb_of(p.port).learned,
                fdb_limit_hits: fdb_of(p.port).limit_hits,
            })
            .collect();
        ports.sort_by_key(|p| p.port);
        Ok(NetworkReport {
            fdb_entries: fdb.len(),
            fdb_limit_hits: counters.fdb_limit_hits,
            fdb_port_limit_hits: counters.fdb_port_limit_hits,
            ports,
            gateway: net.gateway.as_ref().map(GatewayHandle::stats),
            gateway_port: net.gateway_port.zip(net.gateway_port_stats.as_ref()).map(
                |(port, stats)| PortReport {
                    endpoint_id: String::new(),
                    port,
                    stats: stats.snapshot(),
                    fdb_entries: fdb_of(port).learned,
                    fdb_limit_hits: fdb_of(port).limit_hits,
                },
            ),
            tunnel: None,
            uplink: Vec::new(),
            capture_subscribers: net.handle.capture_subscribers(),
            shard_frames: net.handle.shard_frames(),
            relayed: net.handle.relayed(),
        })
    }

    fn capture(
        &self,
        network_id: &str,
        endpoint_id: Option<&str>,
    ) -> Result<tapnet_switch::runtime::Capture> {
        let nets = lock(&self.networks);
        let net = nets
            .get(network_id)
            .ok_or_else(|| Self::unknown(network_id))?;
        let scope = match endpoint_id {
            None => CaptureScope::Network,
            Some(ep) => CaptureScope::Port(
                net.ports
                    .get(ep)
                    .ok_or_else(|| {
                        Error::NotFound(format!(
                            "endpoint {ep} has no switch port on network {network_id}"
                        ))
                    })?
                    .port,
            ),
        };
        net.handle
            .capture(scope)
            .map_err(|e| Error::datapath(format!("capture on network {network_id}"), e))
    }

    fn fdb(&self, network_id: &str) -> Result<Vec<FdbRow>> {
        let nets = lock(&self.networks);
        let net = nets
            .get(network_id)
            .ok_or_else(|| Self::unknown(network_id))?;
        let (now_ms, fdb) = net
            .handle
            .fdb_at()
            .map_err(|e| Error::datapath(format!("read FDB of network {network_id}"), e))?;
        let mut rows: Vec<FdbRow> = fdb
            .into_iter()
            .map(|e| FdbRow {
                mac: e.mac,
                port: e.port,
                endpoint_id: net
                    .ports
                    .iter()
                    .find(|(_, p)| p.port == e.port)
                    .map(|(ep, _)| ep.clone()),
                age_seconds: now_ms.saturating_sub(e.last_seen_ms) as f64 / 1000.0,
                vtep: None,
            })
            .collect();
        rows.sort_by_key(|r| (r.port, r.mac));
        Ok(rows)
    }

    fn shutdown(&self) {
        if let Some(dp) = lock(&self.datapath).take() {
            // Ports are dropped, not destroyed: the persistent taps stay in their sandboxes.
            // Gateways stop (their host sockets close) when their handles drop.
            let nets: Vec<BridgeNetwork> = lock(&self.networks).drain().map(|(_, n)| n).collect();
            drop(nets);
            dp.shutdown();
        }
    }
}

/// How an endpoint's port joins the switch: role endpoint, its MAC and addresses
/// (with its link-local ones) as policy, anti-spoofing as configured.
fn endpoint_options(endpoint: &Endpoint, port_security: bool) -> PortOptions {
    let policy = endpoint.mac.map(|mac| {
        // The endpoint's link-local addresses (`LinkLocalIPs`) are its own too.
        let (mut v4, mut v6): (Vec<_>, Vec<_>) = (
            endpoint.ipv4.into_iter().collect(),
            endpoint.ipv6.into_iter().collect(),
        );
        for ip in &endpoint.link_local_ips {
            match ip {
                std::net::IpAddr::V4(a) => v4.push(*a),
                std::net::IpAddr::V6(a) => v6.push(*a),
            }
        }
        let mut p = PortPolicy::new(MacAddr(mac), v4, v6);
        p.spoof_check = port_security;
        p
    });
    PortOptions {
        role: PortRole::Endpoint,
        policy,
        fdb_limit: None,
    }
}

/// The switch's FDB view of `port` (zeros when the worker cannot say).
fn port_fdb_of(handle: &NetworkHandle, port: PortId) -> PortFdb {
    handle
        .port_fdb()
        .ok()
        .and_then(|v| v.into_iter().find(|(p, _)| *p == port))
        .map_or_else(PortFdb::default, |(_, f)| f)
}

/// A network's subnets and gateway addresses, as other gateways isolate them.
fn own_nets(network: &Network) -> Vec<IpNet> {
    let mut own = Vec::new();
    if let Some(s) = network.subnet {
        own.push(IpNet::V4(s.trunc()));
    }
    if let Some(g) = network.gateway {
        own.push(IpNet::V4(Ipv4Net::from(g)));
    }
    if let Some(c) = &network.ipv6 {
        own.push(IpNet::V6(c.subnet.trunc()));
        own.push(IpNet::V6(Ipv6Net::from(c.gateway)));
    }
    own
}

/// Give every gateway the subnets of all the other networks.
fn refresh_isolation(nets: &HashMap<String, BridgeNetwork>) {
    for (id, net) in nets {
        let Some(gw) = &net.gateway else { continue };
        let others: Vec<IpNet> = nets
            .iter()
            .filter(|(other, _)| *other != id)
            .flat_map(|(_, n)| n.own.iter().copied())
            .collect();
        if let Err(e) = gw.set_isolated(others) {
            tracing::warn!(network = %id, error = %e, "updating the gateway's isolation list");
        }
    }
}

/// Where network gateways run, as [`GATEWAY_LINK_ENV`] chooses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// On the switch worker that serves the network (the default).
    Inline,
    /// On a thread of their own, behind the in-process link.
    Queue,
    /// On a thread of their own, behind a socket pair.
    SocketPair,
}

impl Placement {
    /// The placement this daemon's environment chooses.
    pub fn current() -> Placement {
        match std::env::var(GATEWAY_LINK_ENV).unwrap_or_default().as_str() {
            "queue" => Placement::Queue,
            "socketpair" => Placement::SocketPair,
            _ => Placement::Inline,
        }
    }

    /// Its name in `GET /info` (`TapnetGateway`): `inline`, `queue` or `socketpair`.
    pub fn as_str(self) -> &'static str {
        match self {
            Placement::Inline => "inline",
            Placement::Queue => "queue",
            Placement::SocketPair => "socketpair",
        }
    }

    /// In words (logged at start).
    pub fn describe(self) -> &'static str {
        match self {
            Placement::Queue => "own thread, in-process link (TAPNET_GATEWAY_LINK=queue)",
            Placement::SocketPair => "own thread, socket pair (TAPNET_GATEWAY_LINK=socketpair)",
            Placement::Inline => "inline on the switch worker",
        }
    }
}

/// The gateway's port (for the switch) and the gateway's end. By default the gateway
/// itself, run inline by the switch worker; with `TAPNET_GATEWAY_LINK=queue` in the
/// daemon's environment an in-process link (`tapnet_nat::port`: shared frame queues, one
/// user-space copy per frame) to a gateway thread; with `TAPNET_GATEWAY_LINK=socketpair`
/// a socket pair to a gateway thread (for comparison), both ends with raised socket buffers so bursts of GSO
/// super-frames fit (past `net.core.{w,r}mem_max` only a privileged process can:
/// `SO_*BUFFORCE`).
fn gateway_pair(cfg: &tapnet_nat::Config) -> io::Result<(Box<dyn FrameIo>, GatewayEnd)> {
    use nix::sys::socket::{setsockopt, sockopt};
    match Placement::current() {
        Placement::Queue => {
            let (port, gw) = tapnet_nat::port::link()?;
            return Ok((Box::new(port), GatewayEnd::Spawn(gw.into())));
        }
        Placement::SocketPair => {}
        Placement::Inline => {
            let (gw, port) = Gateway::inline(cfg.clone()).map_err(io::Error::other)?;
            return Ok((Box::new(port), GatewayEnd::Ready(gw)));
        }
    }
    let (a, b) = UnixDatagram::pair()?;
    for s in [&a, &b] {
        let snd = setsockopt(s, sockopt::SndBufForce, &GATEWAY_SOCKET_BUFFER)
            .or_else(|_| setsockopt(s, sockopt::SndBuf, &GATEWAY_SOCKET_BUFFER));
        let rcv = setsockopt(s, sockopt::RcvBufForce, &GATEWAY_SOCKET_BUFFER)
            .or_else(|_| setsockopt(s, sockopt::RcvBuf, &GATEWAY_SOCKET_BUFFER));
        if let Err(e) = snd.and(rcv) {
            tracing::debug!(error = %e, "could not raise the gateway socket buffers");
        }
    }
    Ok((Box::new(DatagramPort::new(a)?), GatewayEnd::Spawn(b.into())))
}

/// The gateway's side of [`gateway_pair`]: a link for a gateway thread still to start,
/// or a gateway already made (inline: the port end is the gateway).
enum GatewayEnd {
    Spawn(tapnet_nat::Link),
    Ready(tapnet_nat::GatewayHandle),
}

/// `tcp` or `udp`.
pub fn proto_name(p: Proto) -> &'static str {
    match p {
        Proto::Tcp => "tcp",
        Proto::Udp => "udp",
    }
}
