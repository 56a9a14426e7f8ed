//! Network drivers (CNM `Driver`) and their name-based registry.
//!
//! Contract: a [`Driver`] owns the data-plane side of its networks and *describes*
//! what an endpoint needs in its sandbox; it does not configure the sandbox. The
//! [`crate::controller::Controller`] keeps the model (names, ids, addresses) and calls
//! the driver, always from a blocking thread (never a tokio worker), with the CNM
//! lifecycle: [`Driver::create_network`] → [`Driver::create_endpoint`] →
//! [`Driver::join`] → the sandbox layer applies the [`JoinDescription`]
//! ([`crate::sandbox_layer`]) … the sandbox layer undoes it → [`Driver::leave`] →
//! [`Driver::delete_endpoint`] → [`Driver::delete_network`]. Calls for one network
//! are never concurrent (the controller serializes mutations), except
//! [`Driver::restore_endpoint`] during start, which may run for many endpoints at
//! once. A driver call that fails leaves nothing behind.
//!
//! The shapes follow Docker's remote network driver protocol (libnetwork
//! `docs/remote.md`) and the CNI result: requests carry the records the call needs;
//! [`EndpointDescription`] is the `CreateEndpoint` response's `Interface`;
//! [`JoinDescription`] is the `Join` response (`InterfaceName` {`SrcName`,
//! `DstPrefix`}, `Gateway`, `GatewayIPv6`, `StaticRoutes`, `DisableGatewayService`)
//! plus what the endpoint's interface gets (MAC, MTU, addresses), so one description
//! drives the sandbox layer whether the device is moved in (a plugin's veth) or was
//! created in place (a tap). [`Capabilities`] is `GetCapabilities` (`Scope`,
//! `ConnectivityScope`) plus what the controller needs to know. `docs/drivers.md`
//! says how overlay, remote, CNI and macvlan drivers fit.
//!
//! Drivers: `bridge` (a userspace switch, a tap per endpoint), `overlay` (a bridge
//! network whose switch also has a VXLAN tunnel port, see [`overlay`]), `macvlan` (a
//! switch without gateway whose uplink port is a packet socket on a host interface,
//! see [`macvlan`]), `null` (endpoints get
//! no device: the sandbox keeps only loopback) and `host` (endpoints share the daemon
//! host's namespace: no device, no address), and `remote` drivers: Docker network
//! plugins written by others, looked up by name when no driver of that name is
//! registered ([`remote`], [`crate::remote`]). A driver without addresses
//! ([`Capabilities::needs_addresses`] false) gets no IPAM pool and its endpoints no
//! address; a [`Capabilities::single_instance`] driver may back only one network
//! (Docker: "only one instance of "host" network is allowed"). A driver that has no
//! switch returns empty reports.

pub mod bridge;
pub mod macvlan;
pub mod overlay;
pub mod record;
pub mod remote;

use crate::error::{Error, Result};
use crate::model::{Endpoint, Network};
use crate::sandbox_layer::SandboxLayer;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use tapnet_nat::{NameRecord, Proto, PublishSpec};
use tapnet_sandbox::netns::Netns;
use tapnet_switch::core::{MacAddr, PortId};
use tapnet_switch::runtime::PortStatsSnapshot;

/// Where a driver's networks exist (Docker `GetCapabilities`: `"local"` or
/// `"global"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scope {
    /// On this host only.
    #[default]
    Local,
    /// Across the hosts of a cluster (overlay).
    Global,
}

impl Scope {
    /// `local` or `global`, as Docker writes a network's `Scope`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Local => "local",
            Scope::Global => "global",
        }
    }
}

/// What a driver is, in one struct (Docker `GetCapabilities` plus what the controller
/// asks of a driver).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// Docker `Scope`: where the driver's networks (their records) exist.
    pub scope: Scope,
    /// Docker `ConnectivityScope`: how far its endpoints reach each other (a local
    /// driver can connect hosts, e.g. macvlan on a shared segment).
    pub connectivity_scope: Scope,
    /// Whether networks get an IPAM pool and endpoints addresses and a MAC (false:
    /// `null`, `host`: no pool, no address, no device).
    pub needs_addresses: bool,
    /// Whether at most one network may use the driver, and a sandbox on it may be on
    /// no other network (`null`, `host`).
    pub single_instance: bool,
    /// Whether the driver's networks have a gateway that serves DNS names and
    /// published ports ([`Driver::set_names`], [`Driver::publish`]); the first such
    /// network of a sandbox is its resolver.
    pub gateway_service: bool,
}

impl Default for Capabilities {
    /// Local, needs addresses, any number of networks, no gateway service.
    fn default() -> Capabilities {
        Capabilities {
            scope: Scope::Local,
            connectivity_scope: Scope::Local,
            needs_addresses: true,
            single_instance: false,
            gateway_service: false,
        }
    }
}

/// [`Driver::create_network`]'s request (Docker `CreateNetwork`: `NetworkID`,
/// `Options`, `IPv4Data`, `IPv6Data` are all in the record).
#[derive(Debug, Clone, Copy)]
pub struct NetworkRequest<'a> {
    /// The network: id, driver options, subnets, gateways, auxiliary addresses.
    pub network: &'a Network,
}

/// [`Driver::create_endpoint`]'s request (Docker `CreateEndpoint`: `NetworkID`,
/// `EndpointID`, `Interface` {`Address`, `AddressIPv6`, `MacAddress`}).
#[derive(Debug, Clone, Copy)]
pub struct EndpointRequest<'a> {
    /// The endpoint's network.
    pub network: &'a Network,
    /// The endpoint: id, the addresses IPAM gave it, its MAC (each may be unset).
    pub endpoint: &'a Endpoint,
}

/// [`Driver::join`]'s and [`Driver::restore_endpoint`]'s request (Docker `Join`:
/// `NetworkID`, `EndpointID`, `SandboxKey`).
#[derive(Debug, Clone, Copy)]
pub struct JoinRequest<'a> {
    /// The endpoint's network.
    pub network: &'a Network,
    /// The endpoint (on restore: as recorded, with its interface name).
    pub endpoint: &'a Endpoint,
    /// The sandbox's open namespace (a driver that creates its device in place, like
    /// a tap, does it here). For a hand-off sandbox
    /// ([`crate::model::Sandbox::handoff`]) it is the daemon's own namespace: the
    /// device is made there, for the sandbox's runtime to move in.
    pub sandbox: &'a Netns,
    /// The sandbox's name, for messages.
    pub sandbox_name: &'a str,
}

impl JoinRequest<'_> {
    /// Docker's `SandboxKey`: the path of the sandbox's namespace.
    pub fn sandbox_key(&self) -> &Path {
        self.sandbox.path()
    }
}

/// What [`Driver::create_endpoint`] chose for the endpoint (Docker `CreateEndpoint`
/// response `Interface`). Empty (the default) when the driver takes the endpoint as
/// requested. A field may only be given where the request had none (Docker: "If the
/// remote process was supplied a non-empty value in `Interface`, it must respond with
/// an empty `Interface` value"); the controller records what it adopts, and IPAM
/// reserves nothing for a driver-chosen address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointDescription {
    /// `Interface.MacAddress`.
    pub mac: Option<[u8; 6]>,
    /// `Interface.Address`: IPv4 address with prefix length.
    pub ipv4: Option<Ipv4Net>,
    /// `Interface.AddressIPv6`: IPv6 address with prefix length.
    pub ipv6: Option<Ipv6Net>,
}

impl EndpointDescription {
    /// Fill the endpoint's unset fields from this description. A field the endpoint
    /// already has with another value is the driver breaking the contract: an error.
    pub fn apply_to(&self, endpoint: &mut Endpoint) -> Result<()> {
        let conflict = |what: &str| {
            Err(Error::Driver(format!(
                "the driver chose a {what} for endpoint {} that already had one",
                endpoint.id
            )))
        };
        if let Some(mac) = self.mac {
            match endpoint.mac {
                Some(m) if m != mac => return conflict("MAC address"),
                _ => {}
            }
        }
        if let Some(a) = self.ipv4 {
            match endpoint.ipv4 {
                Some(e) if e != a.addr() || endpoint.prefix_len != a.prefix_len() => {
                    return conflict("IPv4 address")
                }
                _ => {}
            }
        }
        if let Some(a) = self.ipv6 {
            match endpoint.ipv6 {
                Some(e) if e != a.addr() || endpoint.prefix_len_v6 != a.prefix_len() => {
                    return conflict("IPv6 address")
                }
                _ => {}
            }
        }
        if let Some(mac) = self.mac {
            endpoint.mac = Some(mac);
        }
        if let Some(a) = self.ipv4 {
            endpoint.ipv4 = Some(a.addr());
            endpoint.prefix_len = a.prefix_len();
        }
        if let Some(a) = self.ipv6 {
            endpoint.ipv6 = Some(a.addr());
            endpoint.prefix_len_v6 = a.prefix_len();
        }
        Ok(())
    }
}

/// Where the endpoint's device is when the driver's join returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InterfaceSource {
    /// A device the driver made in the daemon's (host) namespace, to be moved into
    /// the sandbox (Docker `InterfaceName.SrcName`: a plugin's veth end, a macvlan).
    /// On leave it is moved back under this name before [`Driver::leave`], which
    /// deletes it.
    MoveIn {
        /// Its name in the host namespace.
        host_name: String,
    },
    /// A device the driver created inside the sandbox itself (a tap, whose fd the
    /// driver keeps for its switch). It stays the driver's: [`Driver::leave`] removes
    /// it.
    InSandbox {
        /// Its current name in the sandbox.
        name: String,
    },
}

/// The endpoint's interface as the sandbox layer must set it up (CNI: one entry of
/// the result's `interfaces`, with its `ips`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceDescription {
    /// Where the device is (Docker `InterfaceName.SrcName`, or created in place).
    pub source: InterfaceSource,
    /// Docker `InterfaceName.DstPrefix`: the device is renamed to the first free
    /// `<dst_prefix>N` in the sandbox (`eth` → `eth0`, `eth1`, …). Empty: it keeps its
    /// name. On restore the recorded name is used instead.
    pub dst_prefix: String,
    /// MAC address to set (Docker: the endpoint's `Interface.MacAddress`; CNI
    /// `interfaces[].mac`). `None`: keep the device's.
    pub mac: Option<[u8; 6]>,
    /// MTU to set (Docker takes it from the network's
    /// `com.docker.network.driver.mtu`; not in the remote protocol). `None`: keep.
    pub mtu: Option<u32>,
    /// `txqueuelen` to set (tapnet: 10000 on taps, so a TCP window never overflows
    /// the ring; not in the remote protocol). `None`: keep.
    pub txqueuelen: Option<u32>,
    /// Addresses with prefix length (Docker: the endpoint's `Interface.Address` and
    /// `AddressIPv6`; CNI `ips[].address`). IPv6 ones are added with `nodad`. An
    /// interface with no IPv6 address gets IPv6 turned off (`disable_ipv6=1`, as
    /// dockerd does), so it sends no router solicitations, DAD or MLD.
    pub addresses: Vec<IpNet>,
}

impl InterfaceDescription {
    /// The interface of `endpoint` on `network` from `source`: the endpoint's MAC and
    /// addresses, the network's MTU; txqueuelen kept, no prefix.
    pub fn for_endpoint(
        source: InterfaceSource,
        network: &Network,
        endpoint: &Endpoint,
    ) -> Result<InterfaceDescription> {
        let mut addresses = Vec::new();
        if let Some(a) = endpoint.ipv4 {
            let net = Ipv4Net::new(a, endpoint.prefix_len).map_err(|e| {
                Error::InvalidRequest(format!("endpoint {}: {a}: {e}", endpoint.id))
            })?;
            addresses.push(IpNet::V4(net));
        }
        if let Some(a) = endpoint.ipv6 {
            let net = Ipv6Net::new(a, endpoint.prefix_len_v6).map_err(|e| {
                Error::InvalidRequest(format!("endpoint {}: {a}: {e}", endpoint.id))
            })?;
            addresses.push(IpNet::V6(net));
        }
        Ok(InterfaceDescription {
            source,
            dst_prefix: String::new(),
            mac: endpoint.mac,
            mtu: Some(network.mtu()?),
            txqueuelen: None,
            addresses,
        })
    }
}

/// A route the sandbox gets on the endpoint's interface (Docker `StaticRoutes[]`;
/// CNI `routes[]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StaticRoute {
    /// `Destination` (CNI `dst`); host bits are ignored.
    pub destination: IpNet,
    /// `NextHop` with `RouteType` 0 (CNI `gw`); `None` is `RouteType` 1, a connected
    /// (on-link) route.
    pub next_hop: Option<IpAddr>,
}

/// What [`Driver::join`] returns: everything the sandbox layer needs (Docker `Join`
/// response; CNI result).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JoinDescription {
    /// The endpoint's device; `None` for drivers without devices (`null`, `host`),
    /// which then give no gateways or routes either.
    pub interface: Option<InterfaceDescription>,
    /// Docker `Gateway` (CNI `ips[].gateway`): the sandbox's IPv4 default route via
    /// this address on the interface, unless the sandbox has one already (the first
    /// network joined gives the default route).
    pub gateway_v4: Option<Ipv4Addr>,
    /// Docker `GatewayIPv6`: the same for IPv6.
    pub gateway_v6: Option<Ipv6Addr>,
    /// Docker `StaticRoutes`: added on the interface; one that exists already fails
    /// the join.
    pub static_routes: Vec<StaticRoute>,
    /// Docker `DisableGatewayService`: the endpoint's network is not the sandbox's
    /// way out (Docker then attaches no `docker_gwbridge`). tapnet: the sandbox's
    /// published ports do not go through this network's gateway.
    pub disable_gateway_service: bool,
}

/// How [`Driver::restore_endpoint`] brought an endpoint back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restored {
    /// The endpoint's interface was still there and was re-attached.
    Reopened,
    /// The interface was gone and was re-created from the stored record.
    Recreated,
}

/// What [`Driver::restore_endpoint`] returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreDescription {
    /// Re-attached or re-created.
    pub how: Restored,
    /// The description [`Driver::join`] would give for the endpoint as recorded: on
    /// [`Restored::Recreated`] the sandbox layer applies it (under the recorded
    /// interface name), on [`Restored::Reopened`] it only records it, so a later
    /// leave can undo it.
    pub join: JoinDescription,
}

/// Counters of one port, as a driver reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortReport {
    /// The endpoint behind the port.
    pub endpoint_id: String,
    /// The switch port id.
    pub port: PortId,
    /// Its counters.
    pub stats: PortStatsSnapshot,
    /// MACs learned on it now.
    pub fdb_entries: usize,
    /// MACs from it not learned because it held its limit of learned MACs.
    pub fdb_limit_hits: u64,
}

/// Counters of one network.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkReport {
    /// Learned MACs.
    pub fdb_entries: usize,
    /// MACs not learned because the FDB was full.
    pub fdb_limit_hits: u64,
    /// MACs not learned because their port held its limit of learned MACs.
    pub fdb_port_limit_hits: u64,
    /// Per-port counters.
    pub ports: Vec<PortReport>,
    /// The gateway's counters (networks with a userspace gateway).
    pub gateway: Option<tapnet_nat::StatsSnapshot>,
    /// The switch's counters of the gateway's port (bridge networks).
    pub gateway_port: Option<PortReport>,
    /// The tunnel's counters (overlay networks).
    pub tunnel: Option<TunnelReport>,
    /// The uplink socket's counters, by name (macvlan networks:
    /// `tapnet_sandbox::packet::PacketStatsSnapshot`; empty for other drivers).
    pub uplink: Vec<(&'static str, u64)>,
    /// Capture subscribers of the network's switch now ([`Driver::capture`]).
    pub capture_subscribers: usize,
    /// Frames each datapath worker of the network read, owner first (one entry unless
    /// `--tap-queues` spread the network over several workers).
    pub shard_frames: Vec<u64>,
    /// Frames a non-owner worker switched to a port it holds no queue of and handed to
    /// the owner.
    pub relayed: u64,
}

/// Counters of an overlay network's tunnel: its VXLAN port and the daemon's VXLAN
/// socket (shared by every overlay network: what it drops has no network yet).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TunnelReport {
    /// The network's VNI.
    pub vni: u32,
    /// The VXLAN port's counters, by name (`tapnet_vxlan::VxlanStatsSnapshot`'s fields).
    pub port: Vec<(&'static str, u64)>,
    /// The socket dispatcher's counters, by name (`tapnet_vxlan::DemuxStatsSnapshot`'s
    /// fields).
    pub socket: Vec<(&'static str, u64)>,
}

/// One FDB entry with its endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct FdbRow {
    /// Learned MAC.
    pub mac: MacAddr,
    /// Port it was learned on.
    pub port: PortId,
    /// The endpoint behind that port, if it is an endpoint's port.
    pub endpoint_id: Option<String>,
    /// Seconds since the MAC was last seen.
    pub age_seconds: f64,
    /// For a MAC behind a tunnel port: the VTEP (remote host) it is sent to.
    pub vtep: Option<std::net::SocketAddr>,
}

/// A network driver. See the module doc for the calling contract.
pub trait Driver: Send + Sync {
    /// The driver's name (`bridge`).
    fn name(&self) -> &str;
    /// What the driver is (Docker `GetCapabilities`).
    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }
    /// Check driver options of a network about to be created. No side effects.
    fn validate_options(&self, options: &BTreeMap<String, String>) -> Result<()> {
        let _ = options;
        Ok(())
    }
    /// Create the data-plane side of a network (Docker `CreateNetwork`).
    fn create_network(&self, req: &NetworkRequest<'_>) -> Result<()>;
    /// Daemon start: bring back the data-plane side of a recorded network. Default:
    /// [`Driver::create_network`] (a remote driver does nothing: the plugin kept it).
    fn restore_network(&self, req: &NetworkRequest<'_>) -> Result<()> {
        self.create_network(req)
    }
    /// Remove the data-plane side of a network (it has no endpoints left; Docker
    /// `DeleteNetwork`).
    fn delete_network(&self, network_id: &str) -> Result<()>;
    /// Prepare an endpoint before it joins a sandbox (Docker `CreateEndpoint`);
    /// returns what the driver chose for it (default: nothing, nothing chosen).
    fn create_endpoint(&self, req: &EndpointRequest<'_>) -> Result<EndpointDescription> {
        let _ = req;
        Ok(EndpointDescription::default())
    }
    /// Attach the endpoint to the network's data plane and describe what the sandbox
    /// needs (Docker `Join`): the device (made in place in the sandbox, or in the host
    /// namespace to be moved in), its MAC/MTU/addresses, gateways, routes. The sandbox
    /// layer does the configuring; on its failure the controller calls
    /// [`Driver::leave`] and [`Driver::delete_endpoint`].
    fn join(&self, req: &JoinRequest<'_>) -> Result<JoinDescription>;
    /// Daemon restart: re-attach a stored endpoint that joined the sandbox before the
    /// restart (its interface normally still exists, under the recorded name), or
    /// re-create its device from the record if it is gone. Returns how, and the
    /// description [`Driver::join`] would give. Called after
    /// [`Driver::create_network`] for its network, possibly concurrently for different
    /// endpoints. On failure nothing of the endpoint is attached (the caller drops
    /// the endpoint). Default: nothing to re-attach, nothing to describe.
    fn restore_endpoint(&self, req: &JoinRequest<'_>) -> Result<RestoreDescription> {
        let _ = req;
        Ok(RestoreDescription {
            how: Restored::Reopened,
            join: JoinDescription::default(),
        })
    }
    /// Detach the endpoint from the data plane and remove its device (Docker
    /// `Leave`). The sandbox layer has already undone its configuration (and moved a
    /// [`InterfaceSource::MoveIn`] device back to the host namespace).
    fn leave(&self, network_id: &str, endpoint_id: &str) -> Result<()>;
    /// Forget an endpoint that has left (Docker `DeleteEndpoint`; default: nothing to
    /// do).
    fn delete_endpoint(&self, network_id: &str, endpoint_id: &str) -> Result<()> {
        let _ = (network_id, endpoint_id);
        Ok(())
    }
    /// Docker `ProgramExternalConnectivity`: the endpoint may be its sandbox's way out
    /// (not internal, gateway service not disabled); `ports` are the sandbox's
    /// published ports. Default: nothing to do (tapnet's own drivers publish through
    /// [`Driver::publish`]).
    fn program_external_connectivity(
        &self,
        network_id: &str,
        endpoint: &Endpoint,
        ports: &[tapnet_types::ports::PortBinding],
    ) -> Result<()> {
        let _ = (network_id, endpoint, ports);
        Ok(())
    }
    /// Docker `RevokeExternalConnectivity`: undo
    /// [`Driver::program_external_connectivity`]. Default: nothing to do.
    fn revoke_external_connectivity(&self, network_id: &str, endpoint_id: &str) -> Result<()> {
        let _ = (network_id, endpoint_id);
        Ok(())
    }
    /// Docker `EndpointOperInfo`: driver-specific facts about an endpoint, for
    /// inspect. Default: none.
    fn endpoint_info(
        &self,
        network_id: &str,
        endpoint_id: &str,
    ) -> Result<BTreeMap<String, serde_json::Value>> {
        let _ = (network_id, endpoint_id);
        Ok(BTreeMap::new())
    }
    /// Replace the names the network's embedded DNS answers (default: no DNS).
    fn set_names(&self, network_id: &str, names: Vec<NameRecord>) -> Result<()> {
        let _ = (network_id, names);
        Ok(())
    }
    /// Publish a host port into the network; returns the bound host address.
    fn publish(&self, network_id: &str, spec: PublishSpec) -> Result<SocketAddr> {
        let _ = (network_id, spec);
        Err(Error::InvalidRequest(format!(
            "driver {} cannot publish ports",
            self.name()
        )))
    }
    /// Stop publishing the host port bound at `addr`.
    fn unpublish(&self, network_id: &str, proto: Proto, addr: SocketAddr) -> Result<()> {
        let _ = (network_id, proto, addr);
        Ok(())
    }
    /// Counters of a network.
    fn report(&self, network_id: &str) -> Result<NetworkReport> {
        let _ = network_id;
        Ok(NetworkReport::default())
    }
    /// Subscribe to a copy of the frames of the network's switch: all of them, or
    /// (`endpoint_id`) those the endpoint's port sends and is sent (see
    /// `tapnet_switch::runtime::NetworkHandle::capture`). Drivers without a switch
    /// refuse (400).
    fn capture(
        &self,
        network_id: &str,
        endpoint_id: Option<&str>,
    ) -> Result<tapnet_switch::runtime::Capture> {
        let _ = (network_id, endpoint_id);
        Err(Error::InvalidRequest(format!(
            "driver {} has no switch to capture on",
            self.name()
        )))
    }
    /// The network's forwarding table.
    fn fdb(&self, network_id: &str) -> Result<Vec<FdbRow>> {
        let _ = network_id;
        Ok(Vec::new())
    }
    /// Tell a global network where the remote endpoints are (the cluster store's
    /// view): the other hosts' VTEPs, each remote MAC's VTEP and each remote IP's
    /// MAC. Drivers without a tunnel ignore it.
    fn set_remote(&self, network_id: &str, remote: &RemoteEndpoints) -> Result<()> {
        let _ = (network_id, remote);
        Ok(())
    }
    /// Change a global network's remote side by the effect of one cluster event
    /// (`changes`, in order; see [`RemoteChange`]) instead of replacing it with
    /// [`Driver::set_remote`]. `Ok(false)`: not supported, the caller sends the whole
    /// set instead (the default, so drivers without a tunnel need nothing).
    fn update_remote(&self, network_id: &str, changes: &[RemoteChange]) -> Result<bool> {
        let _ = (network_id, changes);
        Ok(false)
    }
    /// Change the names the network's embedded DNS answers by one endpoint's records:
    /// the addresses of `removed` leave their names, those of `added` join theirs; other
    /// names and addresses stay. `Ok(false)`: not supported, the caller sends the whole
    /// set with [`Driver::set_names`] (the default).
    fn update_names(
        &self,
        network_id: &str,
        removed: Vec<NameRecord>,
        added: Vec<NameRecord>,
    ) -> Result<bool> {
        let _ = (network_id, removed, added);
        Ok(false)
    }
    /// Install the keys of an encrypted global network (see
    /// [`tapnet_vxlan::crypt`]). Drivers without a tunnel ignore it.
    fn set_keys(&self, network_id: &str, keys: &tapnet_vxlan::KeySet) -> Result<()> {
        let _ = (network_id, keys);
        Ok(())
    }
    /// Stop the driver's data plane, leaving interfaces in place (daemon exit).
    fn shutdown(&self) {}
}

/// The remote side of a global network (see [`Driver::set_remote`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RemoteEndpoints {
    /// The VTEPs of the other hosts with endpoints on the network.
    pub peers: Vec<SocketAddr>,
    /// Remote endpoint MAC → its host's VTEP.
    pub statics: Vec<([u8; 6], SocketAddr)>,
    /// Remote endpoint IP → its MAC (ARP/ND suppression).
    pub neighbours: Vec<(IpAddr, [u8; 6])>,
}

/// One change of a global network's remote side (see [`Driver::update_remote`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoteChange {
    /// A host's VTEP now has an endpoint on the network (its first): flood to it and
    /// accept its datagrams.
    AddPeer(SocketAddr),
    /// A host's VTEP has no endpoint left on the network.
    RemovePeer(SocketAddr),
    /// A remote endpoint: its MAC is behind `vtep` and answers for `ips`.
    AddEndpoint {
        /// The endpoint's MAC.
        mac: [u8; 6],
        /// Its host's VTEP.
        vtep: SocketAddr,
        /// Its addresses.
        ips: Vec<IpAddr>,
    },
    /// A remote endpoint that went (or whose record changed: the old one).
    RemoveEndpoint {
        /// The endpoint's MAC.
        mac: [u8; 6],
        /// Its host's VTEP.
        vtep: SocketAddr,
        /// Its addresses.
        ips: Vec<IpAddr>,
    },
}

/// Drivers by name, and the sandbox layer that applies what they describe. A name
/// that is not registered is looked up as a remote driver (a network plugin, see
/// [`crate::remote`]) when the registry has [`DriverRegistry::with_plugins`].
#[derive(Clone)]
pub struct DriverRegistry {
    drivers: BTreeMap<String, Arc<dyn Driver>>,
    sandbox: Arc<SandboxLayer>,
    plugins: Option<Arc<crate::remote::Plugins>>,
}

/// Run `f`, which may block (plugin discovery and activation), telling a
/// multi-threaded tokio runtime first if called on one of its workers.
fn may_block<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

impl Default for DriverRegistry {
    /// No drivers; the sandbox layer configures real namespaces (netlink).
    fn default() -> DriverRegistry {
        DriverRegistry::with_sandbox_layer(SandboxLayer::netlink())
    }
}

impl DriverRegistry {
    /// An empty registry with the netlink sandbox layer.
    pub fn new() -> DriverRegistry {
        DriverRegistry::default()
    }
    /// An empty registry whose descriptions `layer` applies (tests use one that
    /// touches no namespace).
    pub fn with_sandbox_layer(layer: SandboxLayer) -> DriverRegistry {
        DriverRegistry {
            drivers: BTreeMap::new(),
            sandbox: Arc::new(layer),
            plugins: None,
        }
    }
    /// Look names that are not registered up as remote network drivers in `plugins`.
    pub fn with_plugins(mut self, plugins: Arc<crate::remote::Plugins>) -> DriverRegistry {
        self.plugins = Some(plugins);
        self
    }
    /// The plugins, if remote drivers are on.
    pub fn plugins(&self) -> Option<&Arc<crate::remote::Plugins>> {
        self.plugins.as_ref()
    }
    /// The driver for a new network: like [`DriverRegistry::get`], but a remote
    /// driver is activated (its plugin asked for its capabilities) if it was not yet.
    pub fn get_active(&self, name: &str) -> Result<Arc<dyn Driver>> {
        if let Some(d) = self.drivers.get(name) {
            return Ok(Arc::clone(d));
        }
        let Some(plugins) = &self.plugins else {
            return self.get(name);
        };
        match may_block(|| plugins.active_network_driver(name)) {
            Ok(d) => Ok(d),
            Err(e) => Err(Error::Plugin {
                op: format!("driver {name}"),
                source: e,
            }),
        }
    }
    /// The driver of a recorded network (daemon start): like [`DriverRegistry::get`],
    /// but a remote driver is not contacted until its first call.
    pub fn get_restored(&self, name: &str) -> Result<Arc<dyn Driver>> {
        if let Some(d) = self.drivers.get(name) {
            return Ok(Arc::clone(d));
        }
        match &self.plugins {
            Some(p) => match p.restored_driver(name) {
                Ok(d) => Ok(d),
                Err(e) => Err(Error::Plugin {
                    op: format!("driver {name}"),
                    source: e,
                }),
            },
            None => self.get(name),
        }
    }
    /// Register `driver` under its name (replacing any driver of that name).
    pub fn register(&mut self, driver: Arc<dyn Driver>) {
        self.drivers.insert(driver.name().to_string(), driver);
    }
    /// The driver called `name`, or a 404 "plugin not found" error as Docker gives.
    /// A name that is not registered is a remote driver when plugins are on: found,
    /// activated and asked for its capabilities on first use (this may wait up to
    /// the plugins' retry deadline); a remote driver already in use is returned as it
    /// is (a restored one activates on its first call).
    pub fn get(&self, name: &str) -> Result<Arc<dyn Driver>> {
        if let Some(d) = self.drivers.get(name) {
            return Ok(Arc::clone(d));
        }
        let Some(plugins) = &self.plugins else {
            return Err(Error::NotFound(format!("plugin \"{name}\" not found")));
        };
        match may_block(|| plugins.network_driver(name)) {
            Ok(d) => Ok(d),
            Err(e) => Err(Error::Plugin {
                op: format!("driver {name}"),
                source: e,
            }),
        }
    }
    /// Every registered driver.
    pub fn all(&self) -> impl Iterator<Item = &Arc<dyn Driver>> {
        self.drivers.values()
    }
    /// The sandbox layer.
    pub fn sandbox_layer(&self) -> Arc<SandboxLayer> {
        Arc::clone(&self.sandbox)
    }
}

impl std::fmt::Debug for DriverRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.drivers.keys()).finish()
    }
}
