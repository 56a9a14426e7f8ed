//! Docker's plugin protocol: the handshake, the remote network driver
//! (`NetworkDriver.*`) and the remote IPAM driver (`IpamDriver.*`) bodies.
//!
//! Shared by tapnet's plugin *server* (tapnetd answering dockerd on
//! `/run/docker/plugins/tapnet.sock`) and its plugin *client* (tapnetd driving
//! network and IPAM plugins written by others). Field names are Docker's exactly
//! (moby `libnetwork/drivers/remote/api`, `libnetwork/ipams/remote/api`,
//! `pkg/plugins`); serialization matches what dockerd sends and expects.
//!
//! Contracts:
//! * Every call is `POST /<Method>` (e.g. `/NetworkDriver.Join`) with a JSON body
//!   and the content type [`CONTENT_TYPE`]; every answer is JSON with that content
//!   type. A failed call answers [`ErrorResponse`] (`{"Err": "..."}`), with any HTTP
//!   status (dockerd reads `Err` whatever the status).
//! * Deserialization is lenient: missing fields take their defaults, and `null` maps
//!   and lists read as empty (dockerd omits
//!   empty ones), unknown fields are ignored. Serialization omits nothing a peer
//!   reads: dockerd decodes absent and empty alike.
//! * `Options` maps hold arbitrary JSON ([`serde_json::Value`]): dockerd puts
//!   strings, booleans, maps (`com.docker.network.generic`) and lists
//!   (`com.docker.network.portmap`) there. The well-known keys are constants here.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// Deserialize `null` as the default (dockerd sends `"Options":null`,
/// `"IPv6Data":null`, ...).
fn nullable<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Option::unwrap_or_default)
}

/// The content type of every plugin request and answer (dockerd sends and accepts
/// it; plugins commonly answer `application/vnd.docker.plugins.v1+json`, which
/// dockerd accepts too).
pub const CONTENT_TYPE: &str = "application/vnd.docker.plugins.v1.2+json";
/// The older content type plugins answer with; a client must accept both.
pub const CONTENT_TYPE_V1: &str = "application/vnd.docker.plugins.v1+json";
/// `Implements` entry of a network driver.
pub const NETWORK_DRIVER: &str = "NetworkDriver";
/// `Implements` entry of an IPAM driver.
pub const IPAM_DRIVER: &str = "IpamDriver";

/// `Options` key: the user's `-o` driver options (a JSON object of strings).
pub const OPT_GENERIC: &str = "com.docker.network.generic";
/// `Options` key: whether IPv6 is on (`--ipv6`).
pub const OPT_ENABLE_IPV6: &str = "com.docker.network.enable_ipv6";
/// `Options` key: whether the network is `--internal`.
pub const OPT_INTERNAL: &str = "com.docker.network.internal";
/// `ProgramExternalConnectivity` `Options` key: the published ports ([`PortMap`]).
pub const OPT_PORTMAP: &str = "com.docker.network.portmap";
/// `ProgramExternalConnectivity` `Options` key: the exposed ports ([`ExposedPort`]).
pub const OPT_EXPOSED_PORTS: &str = "com.docker.network.endpoint.exposedports";
/// `CreateEndpoint`/`RequestAddress` `Options` key: the endpoint's MAC address.
pub const OPT_MAC_ADDRESS: &str = "com.docker.network.endpoint.macaddress";
/// `RequestAddress` `Options` key whose value [`REQUEST_ADDRESS_GATEWAY`] marks the
/// network's gateway address request.
pub const OPT_REQUEST_ADDRESS_TYPE: &str = "RequestAddressType";
/// Value of [`OPT_REQUEST_ADDRESS_TYPE`] for the gateway.
pub const REQUEST_ADDRESS_GATEWAY: &str = "com.docker.network.gateway";

/// Free-form options (`Options`).
pub type Options = BTreeMap<String, Value>;

/// Answer of `/Plugin.Activate`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ActivateResponse {
    /// Subsystems served: [`NETWORK_DRIVER`], [`IPAM_DRIVER`], ….
    #[serde(deserialize_with = "nullable")]
    pub implements: Vec<String>,
}

/// The error answer of any call: `{"Err": "..."}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorResponse {
    /// What went wrong (empty: no error).
    #[serde(rename = "Err", default)]
    pub err: String,
}

/// An answer without fields (`{}`); also how a call reads success.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}

// ------------------------------------------------------------ NetworkDriver

/// Answer of `/NetworkDriver.GetCapabilities`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct CapabilitiesResponse {
    /// `local` or `global`.
    pub scope: String,
    /// `local` or `global`; empty: same as `Scope`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub connectivity_scope: String,
}

/// One pool of a network (`IPv4Data[]`/`IPv6Data[]` of `CreateNetwork`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct IpamData {
    /// The pool's address space.
    pub address_space: String,
    /// The pool, CIDR (`10.60.0.0/24`).
    pub pool: String,
    /// The gateway with the pool's prefix length (`10.60.0.1/24`); may be empty.
    pub gateway: String,
    /// Auxiliary addresses by name, each with prefix length.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    #[serde(deserialize_with = "nullable")]
    pub aux_addresses: BTreeMap<String, String>,
}

/// Body of `/NetworkDriver.CreateNetwork`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct CreateNetworkRequest {
    /// dockerd's id of the network.
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    /// Options: [`OPT_GENERIC`], [`OPT_ENABLE_IPV6`], [`OPT_INTERNAL`], ….
    #[serde(deserialize_with = "nullable")]
    pub options: Options,
    /// IPv4 pools.
    #[serde(rename = "IPv4Data")]
    #[serde(deserialize_with = "nullable")]
    pub ipv4_data: Vec<IpamData>,
    /// IPv6 pools.
    #[serde(rename = "IPv6Data")]
    #[serde(deserialize_with = "nullable")]
    pub ipv6_data: Vec<IpamData>,
}

/// Body of `/NetworkDriver.DeleteNetwork` (and `FreeNetwork`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NetworkRequest {
    /// dockerd's id of the network.
    #[serde(rename = "NetworkID")]
    pub network_id: String,
}

/// An endpoint's interface (`CreateEndpoint` request and answer): addresses with
/// prefix length, MAC `aa:bb:…`. Each may be empty.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct EndpointInterface {
    /// IPv4 address with prefix length (`10.60.0.2/24`).
    pub address: String,
    /// IPv6 address with prefix length.
    #[serde(rename = "AddressIPv6")]
    pub address_ipv6: String,
    /// MAC address.
    pub mac_address: String,
}

impl EndpointInterface {
    /// Whether every field is empty.
    pub fn is_empty(&self) -> bool {
        self.address.is_empty() && self.address_ipv6.is_empty() && self.mac_address.is_empty()
    }
}

/// Body of `/NetworkDriver.CreateEndpoint`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct CreateEndpointRequest {
    /// dockerd's id of the network.
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    /// dockerd's id of the endpoint.
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    /// What IPAM gave the endpoint (may be empty: the driver chooses).
    pub interface: Option<EndpointInterface>,
    /// Options ([`OPT_MAC_ADDRESS`], exposed ports, …).
    #[serde(deserialize_with = "nullable")]
    pub options: Options,
}

/// Answer of `/NetworkDriver.CreateEndpoint`: what the driver chose, only where the
/// request had nothing (else `Interface` must be absent or empty).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct CreateEndpointResponse {
    /// The chosen fields.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interface: Option<EndpointInterface>,
}

/// Body of `/NetworkDriver.EndpointOperInfo`, `DeleteEndpoint`, `Leave`,
/// `RevokeExternalConnectivity`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct EndpointRequest {
    /// dockerd's id of the network.
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    /// dockerd's id of the endpoint.
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
}

/// Answer of `/NetworkDriver.EndpointOperInfo`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct EndpointInfoResponse {
    /// Free-form operational data (dockerd keeps it as the endpoint's driver info).
    #[serde(deserialize_with = "nullable")]
    pub value: BTreeMap<String, Value>,
}

/// Body of `/NetworkDriver.Join`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct JoinRequest {
    /// dockerd's id of the network.
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    /// dockerd's id of the endpoint.
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    /// Path of the sandbox's network namespace.
    pub sandbox_key: String,
    /// Options.
    #[serde(deserialize_with = "nullable")]
    pub options: Options,
}

/// `InterfaceName` of a `Join` answer: the host-side device dockerd moves into the
/// sandbox and renames to the first free `<DstPrefix>N`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct InterfaceName {
    /// The device's name in the host namespace.
    pub src_name: String,
    /// Prefix of its name in the sandbox (`eth`).
    pub dst_prefix: String,
}

/// Route type of a [`StaticRoute`]: via `NextHop`.
pub const ROUTE_NEXT_HOP: u8 = 0;
/// Route type of a [`StaticRoute`]: connected (on-link), no `NextHop`.
pub const ROUTE_CONNECTED: u8 = 1;

/// One `StaticRoutes[]` entry of a `Join` answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct StaticRoute {
    /// Destination, CIDR.
    pub destination: String,
    /// [`ROUTE_NEXT_HOP`] or [`ROUTE_CONNECTED`].
    pub route_type: u8,
    /// Next hop address (route type 0).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub next_hop: String,
}

/// Answer of `/NetworkDriver.Join`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct JoinResponse {
    /// The device to move in (absent: the driver made none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interface_name: Option<InterfaceName>,
    /// IPv4 default gateway (no prefix length); empty: none.
    pub gateway: String,
    /// IPv6 default gateway; empty: none.
    #[serde(rename = "GatewayIPv6")]
    pub gateway_ipv6: String,
    /// Extra routes.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[serde(deserialize_with = "nullable")]
    pub static_routes: Vec<StaticRoute>,
    /// The network is not the container's way out (dockerd then adds no
    /// `docker_gwbridge`; tapnet: published ports do not use this network).
    pub disable_gateway_service: bool,
}

/// Body of `/NetworkDriver.DiscoverNew` and `DiscoverDelete`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct DiscoveryRequest {
    /// 1: node discovery; 2: datastore config; 3: datastore update.
    pub discovery_type: i64,
    /// Type-specific data.
    #[serde(deserialize_with = "nullable")]
    pub discovery_data: Value,
}

/// Body of `/NetworkDriver.ProgramExternalConnectivity`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ExternalConnectivityRequest {
    /// dockerd's id of the network.
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    /// dockerd's id of the endpoint.
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    /// Options: [`OPT_PORTMAP`], [`OPT_EXPOSED_PORTS`].
    #[serde(deserialize_with = "nullable")]
    pub options: Options,
}

/// IP protocol numbers dockerd uses in [`PortMap::proto`] and
/// [`ExposedPort::proto`].
pub const PROTO_TCP: u8 = 6;
/// UDP.
pub const PROTO_UDP: u8 = 17;
/// SCTP.
pub const PROTO_SCTP: u8 = 132;

/// One published port (`com.docker.network.portmap[]`, libnetwork
/// `types.PortBinding`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct PortMap {
    /// IP protocol number ([`PROTO_TCP`], [`PROTO_UDP`], [`PROTO_SCTP`]).
    pub proto: u8,
    /// Container address (may be empty).
    #[serde(rename = "IP")]
    pub ip: String,
    /// Container port.
    pub port: u16,
    /// Host address to bind (empty: any).
    #[serde(rename = "HostIP")]
    pub host_ip: String,
    /// First host port (0: any free one).
    pub host_port: u16,
    /// Last host port of a range (0 or equal to `HostPort`: one port).
    pub host_port_end: u16,
}

/// One exposed port (`com.docker.network.endpoint.exposedports[]`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ExposedPort {
    /// IP protocol number.
    pub proto: u8,
    /// Port.
    pub port: u16,
}

// ------------------------------------------------------------ IpamDriver

/// Answer of `/IpamDriver.GetCapabilities`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct IpamCapabilitiesResponse {
    /// dockerd passes the endpoint's MAC in `RequestAddress` options.
    #[serde(rename = "RequiresMACAddress")]
    pub requires_mac_address: bool,
    /// dockerd replays pool and address requests after a restart.
    pub requires_request_replay: bool,
}

/// Answer of `/IpamDriver.GetDefaultAddressSpaces`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct AddressSpacesResponse {
    /// The local default address space's name.
    pub local_default_address_space: String,
    /// The global one's.
    pub global_default_address_space: String,
}

/// Body of `/IpamDriver.RequestPool`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct RequestPoolRequest {
    /// Address space.
    pub address_space: String,
    /// Wanted pool, CIDR (empty: the driver picks one).
    pub pool: String,
    /// Wanted sub-pool for allocations (`--ip-range`), CIDR; may be empty.
    pub sub_pool: String,
    /// Options (`--ipam-opt`).
    #[serde(deserialize_with = "nullable")]
    pub options: BTreeMap<String, String>,
    /// An IPv6 pool.
    #[serde(rename = "V6")]
    pub v6: bool,
}

/// Answer of `/IpamDriver.RequestPool`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct RequestPoolResponse {
    /// The pool's id for later calls.
    #[serde(rename = "PoolID")]
    pub pool_id: String,
    /// The pool, CIDR.
    pub pool: String,
    /// Extra data (`com.docker.network.gateway`: the gateway with prefix length).
    #[serde(deserialize_with = "nullable")]
    pub data: BTreeMap<String, String>,
}

/// Body of `/IpamDriver.ReleasePool`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ReleasePoolRequest {
    /// The pool's id.
    #[serde(rename = "PoolID")]
    pub pool_id: String,
}

/// Body of `/IpamDriver.RequestAddress`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct RequestAddressRequest {
    /// The pool's id.
    #[serde(rename = "PoolID")]
    pub pool_id: String,
    /// Wanted address without prefix length (empty: any free one).
    pub address: String,
    /// Options ([`OPT_REQUEST_ADDRESS_TYPE`], [`OPT_MAC_ADDRESS`]).
    #[serde(deserialize_with = "nullable")]
    pub options: BTreeMap<String, String>,
}

/// Answer of `/IpamDriver.RequestAddress`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct RequestAddressResponse {
    /// The address with the pool's prefix length (`10.60.0.2/24`).
    pub address: String,
    /// Extra data.
    #[serde(deserialize_with = "nullable")]
    pub data: BTreeMap<String, String>,
}

/// Body of `/IpamDriver.ReleaseAddress`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ReleaseAddressRequest {
    /// The pool's id.
    #[serde(rename = "PoolID")]
    pub pool_id: String,
    /// The address, without prefix length.
    pub address: String,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn dockerd_bodies_parse() {
        let create: CreateNetworkRequest = serde_json::from_str(
            r#"{"NetworkID":"abc","Options":{"com.docker.network.enable_ipv6":false,
               "com.docker.network.generic":{"mtu":"1400"}},
               "IPv4Data":[{"AddressSpace":"LocalDefault","Pool":"10.60.0.0/24",
               "Gateway":"10.60.0.1/24"}],"IPv6Data":[]}"#,
        )
        .unwrap();
        assert_eq!(create.network_id, "abc");
        assert_eq!(create.ipv4_data[0].gateway, "10.60.0.1/24");
        assert_eq!(create.options[OPT_GENERIC]["mtu"], "1400");

        let ep: CreateEndpointRequest = serde_json::from_str(
            r#"{"NetworkID":"n","EndpointID":"e","Interface":{"Address":"10.60.0.2/24",
               "AddressIPv6":"","MacAddress":""},"Options":{}}"#,
        )
        .unwrap();
        assert_eq!(ep.interface.unwrap().address, "10.60.0.2/24");

        let ports: Vec<PortMap> = serde_json::from_str(
            r#"[{"Proto":6,"IP":"","Port":80,"HostIP":"","HostPort":8080,"HostPortEnd":8080}]"#,
        )
        .unwrap();
        assert_eq!(ports[0].host_port, 8080);
        assert_eq!(ports[0].proto, PROTO_TCP);
    }

    #[test]
    fn nulls_read_as_empty() {
        let r: RequestAddressRequest =
            serde_json::from_str(r#"{"PoolID":"p","Address":"","Options":null}"#).unwrap();
        assert!(r.options.is_empty());
        let c: CreateNetworkRequest = serde_json::from_str(
            r#"{"NetworkID":"n","Options":null,"IPv4Data":null,"IPv6Data":null}"#,
        )
        .unwrap();
        assert!(c.ipv4_data.is_empty() && c.options.is_empty());
    }

    #[test]
    fn answers_use_dockers_names() {
        let join = JoinResponse {
            interface_name: Some(InterfaceName {
                src_name: "tn0".into(),
                dst_prefix: "eth".into(),
            }),
            gateway: "10.60.0.1".into(),
            ..JoinResponse::default()
        };
        let v = serde_json::to_value(&join).unwrap();
        assert_eq!(v["InterfaceName"]["SrcName"], "tn0");
        assert_eq!(v["Gateway"], "10.60.0.1");
        assert_eq!(v["GatewayIPv6"], "");
        assert_eq!(v["DisableGatewayService"], false);
        let err = serde_json::to_value(ErrorResponse { err: "no".into() }).unwrap();
        assert_eq!(err, serde_json::json!({"Err": "no"}));
        let pool = serde_json::to_value(RequestPoolResponse {
            pool_id: "p".into(),
            pool: "10.0.0.0/24".into(),
            data: BTreeMap::new(),
        })
        .unwrap();
        assert_eq!(pool["PoolID"], "p");
        let caps = serde_json::to_value(IpamCapabilitiesResponse::default()).unwrap();
        assert_eq!(caps["RequiresMACAddress"], false);
    }
}
