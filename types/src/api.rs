//! The bodies of tapnetd's HTTP API (`docs/api.md`): Docker's shapes for Docker's
//! endpoints, tapnet's for `/sandboxes`, `/networks/{id}/stats` and
//! `/networks/{id}/fdb`.
//!
//! Contract:
//! * Field names are Docker's (`PascalCase`, with Docker's spellings such as
//!   `IPAM`, `EnableIPv6`, `EndpointID`); the daemon serializes answers exactly as
//!   these derives say, and the docker CLI reads them, so renames, field order and
//!   `skip_serializing_if` are part of the wire format.
//! * Request bodies are read leniently (every field may be missing: it takes its
//!   default); optional fields left `None` are not sent, so a client built from
//!   these types sends what the docker CLI sends. Validation of their values (CIDRs,
//!   addresses, aliases) is the daemon's, not done here.
//! * Answers are also readable (`Deserialize`, missing fields default, unknown ones
//!   ignored), for clients such as `tapnet`.

use crate::ports::{PortBindingsBody, PortsResource};
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::BTreeMap;

/// Read `null` as the default value (Go marshals a nil slice or map as `null`).
fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Option::unwrap_or_default)
}

// ---------------------------------------------------------------- request bodies

/// `POST /networks/create` body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct NetworkCreateBody {
    /// Network name.
    pub name: String,
    /// Driver (default `bridge`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    /// IPAM settings.
    #[serde(rename = "IPAM", skip_serializing_if = "Option::is_none")]
    pub ipam: Option<IpamBody>,
    /// Driver options.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub options: Option<BTreeMap<String, String>>,
    /// Labels.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    /// Internal network.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub internal: Option<bool>,
    /// Attachable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attachable: Option<bool>,
    /// IPv6.
    #[serde(rename = "EnableIPv6", skip_serializing_if = "Option::is_none")]
    pub enable_ipv6: Option<bool>,
    /// IPv4 (API 1.47; every tapnet network has IPv4: `false` is refused).
    #[serde(rename = "EnableIPv4", skip_serializing_if = "Option::is_none")]
    pub enable_ipv4: Option<bool>,
    /// Scope: `local`, or `global` for a global-scope driver; `swarm` is refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// Swarm's routing-mesh network: refused when true.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ingress: Option<bool>,
    /// A configuration network only (IPAM settings and options, no data plane).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config_only: Option<bool>,
    /// Take IPAM settings and options from this configuration network.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config_from: Option<ConfigReference>,
}

/// Docker's `ConfigFrom`: the configuration network a network takes its settings
/// from (empty name: none).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ConfigReference {
    /// The configuration network's name.
    pub network: String,
}

/// The `IPAM` object of a network create body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct IpamBody {
    /// IPAM driver.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    /// Pools.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config: Option<Vec<IpamConfigBody>>,
    /// IPAM options.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub options: Option<BTreeMap<String, String>>,
}

/// One `IPAM.Config` entry of a network create body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct IpamConfigBody {
    /// CIDR.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subnet: Option<String>,
    /// Gateway address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// Dynamic range CIDR.
    #[serde(rename = "IPRange", skip_serializing_if = "Option::is_none")]
    pub ip_range: Option<String>,
    /// Reserved addresses by name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auxiliary_addresses: Option<BTreeMap<String, String>>,
}

/// `POST /networks/{id}/connect` body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ConnectBody {
    /// Sandbox name or id.
    pub container: String,
    /// Endpoint settings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint_config: Option<EndpointConfigBody>,
}

/// `EndpointConfig` of a connect body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct EndpointConfigBody {
    /// Static addresses.
    #[serde(rename = "IPAMConfig", skip_serializing_if = "Option::is_none")]
    pub ipam_config: Option<EndpointIpamBody>,
    /// Network-scoped aliases.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aliases: Option<Vec<String>>,
    /// The endpoint's MAC (`""` = default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mac_address: Option<String>,
    /// Endpoint driver options: only `com.docker.network.endpoint.ifname` (the
    /// interface's name in the sandbox); any other key is refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub driver_opts: Option<BTreeMap<String, String>>,
    /// Legacy container links: refused when not empty.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub links: Option<Vec<String>>,
    /// Gateway priority (API 1.48): refused when not 0.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gw_priority: Option<i64>,
}

/// `EndpointConfig.IPAMConfig` of a connect body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct EndpointIpamBody {
    /// Static IPv4 address.
    #[serde(rename = "IPv4Address", skip_serializing_if = "Option::is_none")]
    pub ipv4_address: Option<String>,
    /// Static IPv6 address.
    #[serde(rename = "IPv6Address", skip_serializing_if = "Option::is_none")]
    pub ipv6_address: Option<String>,
    /// Link-local addresses to add to the interface (169.254.0.0/16, fe80::/10).
    #[serde(rename = "LinkLocalIPs", skip_serializing_if = "Option::is_none")]
    pub link_local_ips: Option<Vec<String>>,
}

/// `POST /networks/{id}/disconnect` body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct DisconnectBody {
    /// Sandbox name or id.
    pub container: String,
    /// Remove the endpoint even if the data plane cannot be cleaned.
    pub force: bool,
}

/// `POST /sandboxes` body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct SandboxCreateBody {
    /// Sandbox name (default: the id's first 12 characters).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Adopt this namespace instead of creating one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub netns_path: Option<String>,
    /// Published ports, Docker's `HostConfig.PortBindings` shape:
    /// `{"80/tcp": [{"HostIp": "", "HostPort": "8080"}]}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port_bindings: Option<PortBindingsBody>,
}

// ---------------------------------------------------------------- answers

/// Every error answer: `{"message": ...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What is wrong.
    pub message: String,
}

/// `201` answer of `POST /networks/create`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct CreateNetworkResponse {
    /// New network's id.
    pub id: String,
    /// Always empty.
    pub warning: String,
}

/// `201` answer of `POST /sandboxes`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct CreateSandboxResponse {
    /// New sandbox's id.
    pub id: String,
}

/// Answer of `POST /networks/prune`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct NetworkPruneResponse {
    /// Names of the removed networks (`null` is read as none).
    #[serde(deserialize_with = "null_as_default")]
    pub networks_deleted: Vec<String>,
}

/// Answer of `GET /version` (fields in the order dockerd sends them: sorted).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct VersionResponse {
    /// The highest API version served.
    pub api_version: String,
    /// Docker's name of the architecture (`amd64`, `arm64`).
    pub arch: String,
    /// The daemon's components.
    pub components: Vec<VersionComponent>,
    /// The oldest API version served.
    #[serde(rename = "MinAPIVersion")]
    pub min_api_version: String,
    /// `linux`.
    pub os: String,
    /// The platform.
    pub platform: VersionPlatform,
    /// The daemon's version.
    pub version: String,
}

/// `Platform` of [`VersionResponse`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct VersionPlatform {
    /// `tapnet`.
    pub name: String,
}

/// One of [`VersionResponse::components`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct VersionComponent {
    /// Details.
    pub details: VersionDetails,
    /// Component name (`tapnetd`).
    pub name: String,
    /// Component version.
    pub version: String,
}

/// `Details` of a [`VersionComponent`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct VersionDetails {
    /// The highest API version served.
    pub api_version: String,
}

/// Docker's network object (`GET /networks`, `GET /networks/{id}`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct NetworkResource {
    /// Name.
    pub name: String,
    /// Id.
    pub id: String,
    /// Creation time.
    pub created: String,
    /// Scope.
    pub scope: String,
    /// Driver.
    pub driver: String,
    /// IPv4 (always: every tapnet network has an IPv4 subnet; API 1.47 field).
    #[serde(rename = "EnableIPv4")]
    pub enable_ipv4: bool,
    /// IPv6.
    #[serde(rename = "EnableIPv6")]
    pub enable_ipv6: bool,
    /// Internal.
    pub internal: bool,
    /// Attachable.
    pub attachable: bool,
    /// IPAM.
    #[serde(rename = "IPAM")]
    pub ipam: IpamResource,
    /// Swarm's ingress network (always false: refused on create).
    pub ingress: bool,
    /// The configuration network the settings came from (`{"Network": ""}`: none).
    pub config_from: ConfigReference,
    /// A configuration network (no data plane, no endpoints).
    pub config_only: bool,
    /// Endpoints by sandbox id.
    pub containers: BTreeMap<String, ContainerResource>,
    /// Driver options.
    pub options: BTreeMap<String, String>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// The hosts with endpoints on a global network (inspect only; omitted for
    /// local networks).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peers: Option<Vec<PeerResource>>,
}

/// One entry of a global network's `Peers`: a host with endpoints on it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct PeerResource {
    /// The node's name (its hostname).
    pub name: String,
    /// Its VTEP address (`--cluster-advertise`).
    #[serde(rename = "IP")]
    pub ip: String,
}

/// `IPAM` of a network object.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct IpamResource {
    /// Driver.
    pub driver: String,
    /// Options.
    pub options: BTreeMap<String, String>,
    /// Pools.
    pub config: Vec<IpamConfigResource>,
}

/// One pool of a network object.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct IpamConfigResource {
    /// CIDR.
    pub subnet: String,
    /// Gateway.
    pub gateway: String,
    /// Dynamic range, when set.
    #[serde(rename = "IPRange", skip_serializing_if = "Option::is_none")]
    pub ip_range: Option<String>,
    /// Reserved addresses by name, when any.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub auxiliary_addresses: BTreeMap<String, String>,
}

/// One entry of a network's `Containers`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ContainerResource {
    /// Sandbox name.
    #[serde(rename = "Name")]
    pub name: String,
    /// Endpoint id.
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    /// MAC.
    #[serde(rename = "MacAddress")]
    pub mac_address: String,
    /// `a.b.c.d/len`.
    #[serde(rename = "IPv4Address")]
    pub ipv4_address: String,
    /// `addr/len` on IPv6 networks, else empty.
    #[serde(rename = "IPv6Address")]
    pub ipv6_address: String,
    /// Network-scoped aliases (omitted when there are none).
    #[serde(rename = "Aliases", skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// Endpoint driver options given on connect (omitted when none).
    #[serde(rename = "DriverOpts", skip_serializing_if = "BTreeMap::is_empty")]
    pub driver_opts: BTreeMap<String, String>,
    /// Link-local addresses given on connect (omitted when none).
    #[serde(rename = "LinkLocalIPs", skip_serializing_if = "Vec::is_empty")]
    pub link_local_ips: Vec<String>,
}

/// tapnet's sandbox object (`GET /sandboxes`, `GET /sandboxes/{id}`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct SandboxResource {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Namespace path.
    pub netns_path: String,
    /// Created by tapnet.
    pub owned: bool,
    /// Creation time.
    pub created: String,
    /// Endpoints by network name.
    pub endpoints: BTreeMap<String, SandboxEndpointResource>,
    /// Published ports (Docker's `NetworkSettings.Ports`; `null` entries are not bound).
    pub ports: PortsResource,
    /// The sandbox's resolv.conf.
    pub resolv_conf_path: String,
    /// The sandbox's hosts file.
    pub hosts_path: String,
}

/// One entry of a sandbox's `Endpoints`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SandboxEndpointResource {
    /// Network id.
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    /// Endpoint id.
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    /// Interface name in the sandbox.
    #[serde(rename = "Interface")]
    pub interface: String,
    /// MAC.
    #[serde(rename = "MacAddress")]
    pub mac_address: String,
    /// `a.b.c.d/len`.
    #[serde(rename = "IPv4Address")]
    pub ipv4_address: String,
    /// Gateway.
    #[serde(rename = "Gateway")]
    pub gateway: String,
    /// `addr/len` on IPv6 networks.
    #[serde(rename = "IPv6Address", skip_serializing_if = "String::is_empty")]
    pub ipv6_address: String,
    /// IPv6 gateway on IPv6 networks.
    #[serde(rename = "IPv6Gateway", skip_serializing_if = "String::is_empty")]
    pub ipv6_gateway: String,
    /// Network-scoped aliases (omitted when there are none).
    #[serde(rename = "Aliases", skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// Endpoint driver options given on connect (Docker's `DriverOpts`; omitted
    /// when none).
    #[serde(rename = "DriverOpts", skip_serializing_if = "BTreeMap::is_empty")]
    pub driver_opts: BTreeMap<String, String>,
    /// What was asked on connect that Docker shows as `IPAMConfig`: the
    /// `LinkLocalIPs` (omitted when none).
    #[serde(rename = "IPAMConfig", skip_serializing_if = "Option::is_none")]
    pub ipam_config: Option<EndpointIpamBody>,
    /// What the network's driver says of the endpoint (a remote driver's
    /// `EndpointOperInfo` `Value`; omitted when empty).
    #[serde(rename = "DriverInfo", skip_serializing_if = "BTreeMap::is_empty")]
    pub driver_info: BTreeMap<String, serde_json::Value>,
}

/// `GET /networks/{id}/stats` answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct StatsResource {
    /// Network id.
    pub network: String,
    /// Learned MACs.
    pub fdb_entries: usize,
    /// MACs not learned because the FDB was full.
    pub fdb_limit_hits: u64,
    /// MACs not learned because their port already held its limit of learned MACs
    /// (1024 per port; a network's uplink or tunnel port has the network's limit).
    pub fdb_port_limit_hits: u64,
    /// Per-port counters.
    pub ports: Vec<PortStatsResource>,
    /// The gateway's counters (bridge networks).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway: Option<GatewayStatsResource>,
    /// The tunnel's counters (overlay networks).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tunnel: Option<TunnelStatsResource>,
    /// The uplink packet socket's counters (macvlan networks): `rx_frames`,
    /// `tx_frames`, `rx_ring_drops`, drops by reason (`rx_truncated`, `rx_vlan`,
    /// `rx_malformed`, `tx_malformed`, `tx_ring_full`, ...), `rx_not_ours`. The
    /// switch's counters of its port are in `Ports` (endpoint id `uplink`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub uplink: BTreeMap<String, u64>,
}

/// The tunnel part of [`StatsResource`] (overlay networks).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct TunnelStatsResource {
    /// The network's VNI.
    pub vni: u32,
    /// The network's VXLAN port: frames and datagrams sent and received, drops by
    /// reason (`rx_malformed`, `rx_wrong_vni`, `rx_too_long`, `tx_invalid`, ...).
    pub port: std::collections::BTreeMap<String, u64>,
    /// The daemon's VXLAN socket (shared by every overlay network): datagrams handed
    /// to a port, dropped as `malformed`, for an `unknown_vni`, on a full queue.
    pub socket: std::collections::BTreeMap<String, u64>,
}

/// The gateway part of [`StatsResource`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct GatewayStatsResource {
    /// Datagrams read from the gateway's switch port.
    pub frames_in: u64,
    /// Frames written to the switch.
    pub frames_out: u64,
    /// Drops by reason name.
    pub drops: BTreeMap<String, u64>,
    /// Flows by protocol (`tcp`, `udp`, `icmp`).
    pub flows: BTreeMap<String, FlowStatsResource>,
    /// New flows refused by a flow limit.
    pub flow_limit_hits: u64,
    /// DNS queries answered from the network's names.
    pub dns_local: u64,
    /// DNS queries forwarded upstream.
    pub dns_forwarded: u64,
    /// DNS queries answered SERVFAIL.
    pub dns_servfail: u64,
    /// The switch's counters of the gateway's port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub switch_port: Option<PortStatsResource>,
}

/// Flow counters of one protocol.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct FlowStatsResource {
    /// Open now.
    pub active: u64,
    /// Ever opened.
    pub total: u64,
}

/// One port in [`StatsResource`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct PortStatsResource {
    /// Endpoint id.
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    /// Sandbox name.
    pub sandbox: String,
    /// Interface name.
    pub interface: String,
    /// Switch port id.
    pub port: u32,
    /// Frames received from the port.
    pub rx_packets: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Frames sent to the port.
    pub tx_packets: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// MACs learned on the port now.
    pub fdb_entries: usize,
    /// Frames from the port whose new source MAC was not learned because the port
    /// already held its limit of learned MACs (counted in the network's
    /// `FdbPortLimitHits` too).
    pub fdb_limit_hits: u64,
    /// Drops by reason name.
    pub drops: BTreeMap<String, u64>,
}

/// One row of `GET /networks/{id}/fdb`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct FdbResource {
    /// MAC.
    pub mac_address: String,
    /// Port.
    pub port: u32,
    /// Endpoint id (empty for a port that is not an endpoint).
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    /// Seconds since last seen.
    pub age_seconds: f64,
    /// The VTEP (`IP:port` of the remote host) a MAC behind an overlay's tunnel is sent
    /// to; omitted for local MACs.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub vtep: String,
}

/// Answer of `GET /info`: the fields of Docker's `SystemInfo` that describe a
/// network daemon (what `docker info` prints), plus tapnet's own under `Tapnet*` keys.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct InfoResponse {
    /// A stable id of this host (`/etc/machine-id`; empty when unreadable).
    #[serde(rename = "ID")]
    pub id: String,
    /// Number of sandboxes (a docker container is a tapnet sandbox).
    pub containers: u64,
    /// Sandboxes are always "running" (a namespace exists while the sandbox does).
    pub containers_running: u64,
    /// Always 0.
    pub containers_paused: u64,
    /// Always 0.
    pub containers_stopped: u64,
    /// Always 0: tapnet has no images.
    pub images: u64,
    /// The storage driver: `none` (tapnet stores no images).
    pub driver: String,
    /// `[]`.
    pub driver_status: Vec<Vec<String>>,
    /// The network drivers served and those in use.
    pub plugins: InfoPlugins,
    /// The daemon's time (RFC 3339, nanoseconds).
    pub system_time: String,
    /// `none`: tapnet runs no containers.
    pub logging_driver: String,
    /// `none`.
    pub cgroup_driver: String,
    /// The kernel release (`uname -r`).
    pub kernel_version: String,
    /// The distribution's `PRETTY_NAME` (`/etc/os-release`).
    pub operating_system: String,
    /// `linux`.
    #[serde(rename = "OSType")]
    pub os_type: String,
    /// The machine (`uname -m`).
    pub architecture: String,
    /// CPUs usable by the daemon.
    #[serde(rename = "NCPU")]
    pub ncpu: u64,
    /// Physical memory in bytes (`/proc/meminfo` `MemTotal`).
    pub mem_total: u64,
    /// The data root (`--data-root`).
    pub docker_root_dir: String,
    /// The host name.
    pub name: String,
    /// Labels (none).
    pub labels: Vec<String>,
    /// The daemon's version.
    pub server_version: String,
    /// Swarm: always inactive.
    pub swarm: InfoSwarm,
    /// Warnings for the client to print.
    pub warnings: Vec<String>,
    /// tapnet: number of networks.
    pub tapnet_networks: u64,
    /// tapnet: the cluster store (`--cluster-store`), empty without one.
    pub tapnet_cluster_store: String,
    /// tapnet: this node's advertise address and data-path port, empty without a
    /// cluster store.
    pub tapnet_cluster_advertise: String,
    /// tapnet: the runtime directory (`--exec-root`).
    pub tapnet_exec_root: String,
    /// tapnet: datapath worker threads (`--workers`, resolved).
    pub tapnet_datapath_workers: u64,
    /// tapnet: how endpoint taps move frames as asked (`--tap-io`: `rw`, `uring`, `auto`).
    pub tapnet_tap_io: String,
    /// tapnet: the path taps get (`rw` or `uring`: `auto` resolved by probing io_uring).
    pub tapnet_tap_io_path: String,
    /// tapnet: queues per endpoint tap (`--tap-queues`; the workers a network spans).
    pub tapnet_tap_queues: u64,
    /// tapnet: the datapath workers' nice value (`--worker-nice`, else the daemon's own).
    pub tapnet_worker_nice: i64,
    /// tapnet: `on` if the workers step back to 10 above that value while busy with
    /// short waits for a core (`--worker-nice auto`, the default), `off` (a fixed
    /// `--worker-nice`) or `unavailable` (auto asked, but the daemon may not set a
    /// thread's nice back: no `CAP_SYS_NICE`, `RLIMIT_NICE` too low).
    #[serde(default)]
    pub tapnet_worker_nice_auto: String,
    /// tapnet: `on` if runs of UDP datagrams of one flow are written to taps as one
    /// super-frame each (`--tap-udp-merge`; where the kernel takes USO on taps), `off`.
    pub tapnet_tap_udp_merge: String,
    /// tapnet: where network gateways run: `inline` (on the switch worker serving the
    /// network, the default), `queue` or `socketpair` (a thread of their own, for
    /// comparisons: `TAPNET_GATEWAY_LINK`).
    pub tapnet_gateway: String,
}

/// `Plugins` of [`InfoResponse`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct InfoPlugins {
    /// Volume drivers (none).
    pub volume: Vec<String>,
    /// Network drivers: the built-in ones, then remote ones used by a network.
    pub network: Vec<String>,
    /// Authorization plugins (none).
    pub authorization: Option<Vec<String>>,
    /// Log drivers (none).
    pub log: Vec<String>,
}

/// `Swarm` of [`InfoResponse`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct InfoSwarm {
    /// Empty.
    #[serde(rename = "NodeID")]
    pub node_id: String,
    /// Empty.
    pub node_addr: String,
    /// `inactive`.
    pub local_node_state: String,
    /// `false`.
    pub control_available: bool,
    /// Empty.
    pub error: String,
}

/// One line of `GET /events`: Docker's `events.Message` for a network event.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventMessage {
    /// `network`.
    #[serde(rename = "Type")]
    pub kind: String,
    /// `create`, `destroy`, `connect` or `disconnect`.
    #[serde(rename = "Action")]
    pub action: String,
    /// The network and what the event is about.
    #[serde(rename = "Actor")]
    pub actor: EventActor,
    /// `local` (or `swarm` for global networks, as dockerd says).
    pub scope: String,
    /// Seconds since the epoch.
    pub time: i64,
    /// Nanoseconds since the epoch.
    #[serde(rename = "timeNano")]
    pub time_nano: i64,
}

/// `Actor` of an [`EventMessage`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct EventActor {
    /// The network's id.
    #[serde(rename = "ID")]
    pub id: String,
    /// `name` and `type` (the network's driver); `container` (the sandbox id) for
    /// connect and disconnect.
    pub attributes: BTreeMap<String, String>,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn requests_send_only_what_is_set() {
        let b = ConnectBody {
            container: "sb".into(),
            endpoint_config: Some(EndpointConfigBody {
                ipam_config: Some(EndpointIpamBody {
                    ipv4_address: Some("10.0.0.5".into()),
                    ..EndpointIpamBody::default()
                }),
                ..EndpointConfigBody::default()
            }),
        };
        assert_eq!(
            serde_json::to_string(&b).unwrap(),
            r#"{"Container":"sb","EndpointConfig":{"IPAMConfig":{"IPv4Address":"10.0.0.5"}}}"#
        );
        assert_eq!(
            serde_json::to_string(&NetworkCreateBody::default()).unwrap(),
            r#"{"Name":""}"#
        );
        // Everything may be missing when read.
        let c: NetworkCreateBody = serde_json::from_str(
            r#"{"Name":"n","IPAM":{"Config":[{"Subnet":"10.0.0.0/24","IPRange":"10.0.0.0/25"}]}}"#,
        )
        .unwrap();
        let cfg = &c.ipam.unwrap().config.unwrap()[0];
        assert_eq!(cfg.ip_range.as_deref(), Some("10.0.0.0/25"));
    }

    #[test]
    fn answers_serialize_in_dockers_shape() {
        let n = NetworkResource {
            name: "n".into(),
            enable_ipv4: true,
            ipam: IpamResource {
                driver: "default".into(),
                config: vec![IpamConfigResource {
                    subnet: "10.0.0.0/24".into(),
                    gateway: "10.0.0.1".into(),
                    ..IpamConfigResource::default()
                }],
                ..IpamResource::default()
            },
            ..NetworkResource::default()
        };
        assert_eq!(
            serde_json::to_string(&n).unwrap(),
            r#"{"Name":"n","Id":"","Created":"","Scope":"","Driver":"","EnableIPv4":true,"EnableIPv6":false,"Internal":false,"Attachable":false,"IPAM":{"Driver":"default","Options":{},"Config":[{"Subnet":"10.0.0.0/24","Gateway":"10.0.0.1"}]},"Ingress":false,"ConfigFrom":{"Network":""},"ConfigOnly":false,"Containers":{},"Options":{},"Labels":{}}"#
        );
        let back: NetworkResource =
            serde_json::from_value(serde_json::to_value(&n).unwrap()).unwrap();
        assert_eq!(back, n);
        let v = VersionResponse {
            api_version: "1.47".into(),
            min_api_version: "1.24".into(),
            ..VersionResponse::default()
        };
        let keys: Vec<String> = serde_json::to_value(&v)
            .unwrap()
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        let text = serde_json::to_string(&v).unwrap();
        let mut at = 0;
        for k in keys {
            let i = text.find(&format!("\"{k}\"")).unwrap();
            assert!(i >= at, "{k} out of sorted order in {text}");
            at = i;
        }
    }

    #[test]
    fn lenient_reads() {
        let p: NetworkPruneResponse =
            serde_json::from_value(json!({"NetworksDeleted": null})).unwrap();
        assert!(p.networks_deleted.is_empty());
        let s: SandboxResource =
            serde_json::from_value(json!({"Id": "a", "Ports": {"80/tcp": null}, "X": 1})).unwrap();
        assert_eq!((s.id.as_str(), s.ports["80/tcp"].clone()), ("a", None));
        let e: ErrorBody = serde_json::from_str(r#"{"message":"no"}"#).unwrap();
        assert_eq!(e.message, "no");
    }
}
