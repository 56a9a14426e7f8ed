//! The HTTP API (see `docs/api.md`, the contract).
//!
//! Contract: Docker-compatible network endpoints (and `/_ping`, `/version`, `/info`,
//! `/events`)
//! plus tapnet's `/sandboxes`,
//! `/networks/{id}/stats`, `/networks/{id}/fdb`, the pcap streams
//! `/networks/{id}/capture` and `/sandboxes/{id}/capture` ([`crate::capture`]) and
//! Prometheus `/metrics` ([`crate::metrics`], which also counts and times every request
//! by route), served over a unix socket.
//! Every path may carry a `/v{major}.{minor}` prefix; a version outside
//! [`MIN_API_VERSION`]..=[`API_VERSION`] is refused with 400 and Docker's message
//! before any handler runs. Every error answer is `{"message": ...}` with the status
//! from [`Error::status`]; request bodies are limited to [`BODY_LIMIT`] bytes (413
//! above). `filters` query parameters are decoded and validated by [`filters`]
//! before anything is done. Docker request fields tapnet does not implement (`Scope:
//! swarm`, `Ingress`, `EnableIPv4: false`, endpoint `Links`, `GwPriority`, driver
//! options other than `com.docker.network.endpoint.ifname`) are refused with a 400
//! naming them; output-only fields are ignored as dockerd does. Docker endpoints tapnet does not serve (`/containers`,
//! `/images`, ...) are 404 with a message saying what tapnet serves. A client that
//! stalls mid-request is cut off ([`HttpTimeouts`], see [`serve_unix`]). Handlers only
//! parse and shape JSON; the [`Controller`] does the work, so a rejected request
//! changes nothing. The request and answer bodies are [`tapnet_types::api`]'s
//! (re-exported here), shared with the CLI.

pub mod events;
pub mod filters;

use crate::controller::{ConnectOptions, Controller, Ipv6Request, NetworkCreate, IFNAME_OPTION};
use crate::driver::{FdbRow, NetworkReport};
use crate::error::Error;
use crate::model::{format_mac, Network, Sandbox, Store};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use ipnet::IpNet;
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
pub use tapnet_types::api::{
    ConfigReference, ConnectBody, ContainerResource, CreateNetworkResponse, CreateSandboxResponse,
    DisconnectBody, EndpointConfigBody, EndpointIpamBody, ErrorBody, FdbResource,
    FlowStatsResource, GatewayStatsResource, InfoPlugins, InfoResponse, InfoSwarm, IpamBody,
    IpamConfigBody, IpamConfigResource, IpamResource, NetworkCreateBody, NetworkPruneResponse,
    NetworkResource, PeerResource, PortStatsResource, SandboxCreateBody, SandboxEndpointResource,
    SandboxResource, StatsResource, VersionComponent, VersionDetails, VersionPlatform,
    VersionResponse,
};

/// The Docker Engine API version tapnet speaks (the highest it accepts; the docker
/// CLI negotiates down to it from `/_ping`'s `Api-Version` header).
pub const API_VERSION: &str = "1.47";
/// The oldest API version clients may ask for.
pub const MIN_API_VERSION: &str = "1.24";
/// Largest accepted request body.
pub const BODY_LIMIT: usize = 1 << 20;

/// An error answer: status + `{"message": ...}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// The message.
    pub message: String,
}

impl ApiError {
    fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> ApiError {
        let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            tracing::error!(error = %e, "request failed");
        }
        ApiError {
            status,
            message: e.to_string(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(ErrorBody {
                message: self.message,
            }),
        )
            .into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// A JSON body whose rejections are `{"message"}` answers (400, 413).
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(|rej| {
            let status = rej.status();
            let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
                format!("request body too large: the limit is {BODY_LIMIT} bytes")
            } else {
                format!("cannot read request body: {}", rej.body_text())
            };
            ApiError { status, message }
        })?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// Parse a request body; an empty body is read as `{}`.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> ApiResult<T> {
    let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        bytes
    };
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path.is_empty() || path == "." || inner.is_syntax() || inner.is_eof() {
            ApiError::bad_request(format!("invalid JSON in request body: {inner}"))
        } else {
            ApiError::bad_request(format!(
                "invalid JSON in request body: field {path}: {inner}"
            ))
        }
    })
}

// ---------------------------------------------------------------- request bodies
//
// The bodies are `tapnet_types::api`'s (re-exported above); this part validates them.

fn non_empty(s: &Option<String>) -> Option<&str> {
    s.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

/// One parsed `IPAM.Config` entry of either family.
struct ParsedConfig {
    subnet: IpNet,
    gateway: Option<IpAddr>,
    ip_range: Option<IpNet>,
    aux: BTreeMap<String, IpAddr>,
}

fn parse_ipam_config(i: usize, cfg: &IpamConfigBody) -> ApiResult<Option<ParsedConfig>> {
    let at = |field: &str| format!("IPAM.Config[{i}].{field}");
    let Some(subnet) = non_empty(&cfg.subnet) else {
        let has_aux = cfg
            .auxiliary_addresses
            .as_ref()
            .is_some_and(|a| !a.is_empty());
        if non_empty(&cfg.gateway).is_some() || non_empty(&cfg.ip_range).is_some() || has_aux {
            return Err(ApiError::bad_request(format!(
                "{}: an IPAM config with a Gateway, IPRange or AuxiliaryAddresses needs a Subnet",
                at("Subnet")
            )));
        }
        return Ok(None);
    };
    let subnet: IpNet = subnet.parse().map_err(|_| {
        ApiError::bad_request(format!(
            "invalid subnet {subnet:?} ({}): give a CIDR such as 10.10.0.0/24 or fd00:1::/64",
            at("Subnet")
        ))
    })?;
    let family = if matches!(subnet, IpNet::V4(_)) {
        "IPv4"
    } else {
        "IPv6"
    };
    let same_family = |a: &IpAddr| a.is_ipv4() == matches!(subnet, IpNet::V4(_));
    let gateway = match non_empty(&cfg.gateway) {
        None => None,
        Some(g) => match g.parse::<IpAddr>() {
            Ok(a) if same_family(&a) => Some(a),
            _ => {
                return Err(ApiError::bad_request(format!(
                    "invalid gateway {g:?} ({}): give an {family} address in subnet {subnet}",
                    at("Gateway")
                )))
            }
        },
    };
    if let Some(gw) = gateway {
        if !subnet.contains(&gw) {
            return Err(ApiError::bad_request(format!(
                "invalid gateway {gw} ({}): it is not in subnet {subnet}",
                at("Gateway")
            )));
        }
    }
    let ip_range = match non_empty(&cfg.ip_range) {
        None => None,
        Some(r) => match r.parse::<IpNet>() {
            Ok(n) if n.addr().is_ipv4() == subnet.addr().is_ipv4() => Some(n),
            _ => {
                return Err(ApiError::bad_request(format!(
                    "invalid IPRange {r:?} ({}): give an {family} CIDR inside subnet {subnet}",
                    at("IPRange")
                )))
            }
        },
    };
    if let Some(range) = ip_range {
        if range.trunc() != range || !subnet.contains(&range) {
            return Err(ApiError::bad_request(format!(
                "invalid IPRange {range} ({}): it must be a subnet inside {subnet}",
                at("IPRange")
            )));
        }
    }
    let mut aux = BTreeMap::new();
    for (name, a) in cfg.auxiliary_addresses.iter().flatten() {
        let addr = match a.trim().parse::<IpAddr>() {
            Ok(addr) if same_family(&addr) => addr,
            _ => {
                return Err(ApiError::bad_request(format!(
                    "invalid auxiliary address {name}={a:?} ({}): give an {family} address in subnet {subnet}",
                    at("AuxiliaryAddresses")
                )))
            }
        };
        if !subnet.contains(&addr) {
            return Err(ApiError::bad_request(format!(
                "invalid auxiliary address {name}={addr} ({}): it is not in subnet {subnet}",
                at("AuxiliaryAddresses")
            )));
        }
        aux.insert(name.clone(), addr);
    }
    Ok(Some(ParsedConfig {
        subnet,
        gateway,
        ip_range,
        aux,
    }))
}

/// Validate a `POST /networks/create` body into a [`NetworkCreate`].
pub fn network_create_request(body: NetworkCreateBody) -> ApiResult<NetworkCreate> {
    if body.name.is_empty() {
        return Err(ApiError::bad_request("network name is required (\"Name\")"));
    }
    if body.ingress == Some(true) {
        return Err(ApiError::bad_request(
            "Ingress is not supported: tapnet has no swarm routing mesh (--ingress)",
        ));
    }
    if body.enable_ipv4 == Some(false) {
        return Err(ApiError::bad_request(
            "EnableIPv4=false is not supported: every tapnet network has an IPv4 subnet (--ipv4=false)",
        ));
    }
    let scope = non_empty(&body.scope).map(str::to_string);
    match scope.as_deref() {
        None | Some("local" | "global") => {}
        Some("swarm") => {
            return Err(ApiError::bad_request(
                "Scope \"swarm\" is not supported: tapnet is not a swarm manager (--scope swarm); \
                 use local, or global with the overlay driver",
            ))
        }
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "invalid Scope {other:?}: give local or global (--scope)"
            )))
        }
    }
    let config_from = body
        .config_from
        .as_ref()
        .map(|c| c.network.trim().to_string())
        .filter(|n| !n.is_empty());
    let mut req = NetworkCreate {
        name: body.name,
        driver: body.driver.unwrap_or_default(),
        options: body.options.unwrap_or_default(),
        labels: body.labels.unwrap_or_default(),
        internal: body.internal.unwrap_or(false),
        attachable: body.attachable.unwrap_or(false),
        enable_ipv6: body.enable_ipv6.unwrap_or(false),
        scope,
        config_only: body.config_only.unwrap_or(false),
        config_from,
        ..NetworkCreate::default()
    };
    if let Some(ipam) = body.ipam {
        req.ipam_driver = ipam.driver.unwrap_or_default();
        req.ipam_options = ipam.options.unwrap_or_default();
        let (mut seen_v4, mut seen_v6) = (false, false);
        for (i, cfg) in ipam.config.unwrap_or_default().iter().enumerate() {
            let Some(c) = parse_ipam_config(i, cfg)? else {
                continue;
            };
            match c.subnet {
                IpNet::V4(subnet) => {
                    if std::mem::replace(&mut seen_v4, true) {
                        return Err(ApiError::bad_request(
                            "only one IPv4 subnet per network is supported",
                        ));
                    }
                    req.subnet = Some(subnet);
                    req.gateway = c.gateway.and_then(|g| match g {
                        IpAddr::V4(a) => Some(a),
                        IpAddr::V6(_) => None,
                    });
                    req.ip_range = c.ip_range.and_then(|r| match r {
                        IpNet::V4(n) => Some(n),
                        IpNet::V6(_) => None,
                    });
                    req.aux_addresses = c
                        .aux
                        .into_iter()
                        .filter_map(|(k, v)| match v {
                            IpAddr::V4(a) => Some((k, a)),
                            IpAddr::V6(_) => None,
                        })
                        .collect();
                }
                IpNet::V6(subnet) => {
                    if std::mem::replace(&mut seen_v6, true) {
                        return Err(ApiError::bad_request(
                            "only one IPv6 subnet per network is supported",
                        ));
                    }
                    req.ipv6 = Some(Ipv6Request {
                        subnet,
                        gateway: c.gateway.and_then(|g| match g {
                            IpAddr::V6(a) => Some(a),
                            IpAddr::V4(_) => None,
                        }),
                        ip_range: c.ip_range.and_then(|r| match r {
                            IpNet::V6(n) => Some(n),
                            IpNet::V4(_) => None,
                        }),
                        aux_addresses: c
                            .aux
                            .into_iter()
                            .filter_map(|(k, v)| match v {
                                IpAddr::V6(a) => Some((k, a)),
                                IpAddr::V4(_) => None,
                            })
                            .collect(),
                    });
                }
            }
        }
    }
    Ok(req)
}

/// Validate a connect body: the sandbox and the [`ConnectOptions`] (static
/// addresses, MAC, aliases). A MAC must be well-formed, unicast and not all-zero;
/// aliases follow [`tapnet_types::model::check_aliases`] (DNS labels, at most
/// [`tapnet_types::model::MAX_ALIASES`], duplicates dropped case-insensitively).
pub fn connect_request(body: ConnectBody) -> ApiResult<(String, ConnectOptions)> {
    if body.container.is_empty() {
        return Err(ApiError::bad_request(
            "\"Container\" (a sandbox name or id) is required",
        ));
    }
    let mut opts = ConnectOptions::default();
    let Some(cfg) = body.endpoint_config else {
        return Ok((body.container, opts));
    };
    if let Some(ipam) = &cfg.ipam_config {
        if let Some(a) = non_empty(&ipam.ipv4_address) {
            match a.parse::<IpAddr>() {
                Ok(IpAddr::V4(v4)) => opts.ipv4 = Some(v4),
                _ => {
                    return Err(ApiError::bad_request(format!(
                        "invalid IPv4Address {a:?}: give an IPv4 address such as 10.10.0.5"
                    )))
                }
            }
        }
        if let Some(a) = non_empty(&ipam.ipv6_address) {
            match a.parse::<IpAddr>() {
                Ok(IpAddr::V6(v6)) => opts.ipv6 = Some(v6),
                _ => {
                    return Err(ApiError::bad_request(format!(
                        "invalid IPv6Address {a:?}: give an IPv6 address such as fd00:1::5"
                    )))
                }
            }
        }
    }
    if let Some(a) = cfg
        .ipam_config
        .as_ref()
        .and_then(|i| i.link_local_ips.as_ref())
    {
        for ip in a {
            let ip = parse_link_local(ip)?;
            if !opts.link_local_ips.contains(&ip) {
                opts.link_local_ips.push(ip);
            }
        }
    }
    if let Some(links) = cfg.links.as_ref().filter(|l| !l.is_empty()) {
        return Err(ApiError::bad_request(format!(
            "EndpointConfig.Links ({}) is not supported: tapnet has no legacy container links; \
             use Aliases (--alias) and the network's DNS names instead",
            links.join(", ")
        )));
    }
    if let Some(p) = cfg.gw_priority.filter(|p| *p != 0) {
        return Err(ApiError::bad_request(format!(
            "EndpointConfig.GwPriority ({p}) is not supported: the default route goes via the first network joined"
        )));
    }
    for (k, v) in cfg.driver_opts.iter().flatten() {
        if k != IFNAME_OPTION {
            return Err(ApiError::bad_request(format!(
                "endpoint driver option {k:?} is not supported: tapnet implements only {IFNAME_OPTION}"
            )));
        }
        tapnet_sandbox::iface::validate_ifname(v).map_err(|_| {
            ApiError::bad_request(format!(
                "invalid {IFNAME_OPTION} {v:?}: give a Linux interface name of 1 to 15 bytes \
                 without '/', ':', '%' or whitespace, not \".\", \"..\", \"all\" or \"default\""
            ))
        })?;
        opts.ifname = Some(v.clone());
    }
    opts.mac = non_empty(&cfg.mac_address)
        .map(|m| {
            crate::model::parse_endpoint_mac(m)
                .map_err(|why| ApiError::bad_request(format!("invalid MacAddress {m:?}: {why}")))
        })
        .transpose()?;
    if let Some(aliases) = &cfg.aliases {
        opts.aliases = tapnet_types::model::check_aliases(aliases)
            .map_err(|why| ApiError::bad_request(format!("{why} (in Aliases)")))?;
    }
    Ok((body.container, opts))
}

/// Published ports listen on a host address: a multicast or broadcast `HostIp` can
/// take no connection (Linux even lets a TCP socket bind one), so it is refused.
pub fn check_host_ips(bindings: &[tapnet_types::ports::PortBinding]) -> ApiResult<()> {
    for b in bindings {
        let why = match b.host_ip {
            IpAddr::V4(a) if a.is_broadcast() => "the broadcast address",
            a if a.is_multicast() => "a multicast address",
            _ => continue,
        };
        return Err(ApiError::bad_request(format!(
            "invalid port binding {:?}: HostIp {} is {why}: give a unicast address of this \
             host, or leave HostIp empty for all addresses",
            b.key(),
            b.host_ip
        )));
    }
    Ok(())
}

/// A `LinkLocalIPs` entry: an IPv4 address in 169.254.0.0/16 (not its network or
/// broadcast address) or an IPv6 address in fe80::/10.
fn parse_link_local(a: &str) -> ApiResult<IpAddr> {
    let bad = |why: &str| {
        ApiError::bad_request(format!(
            "invalid link-local IP address {a:?} in LinkLocalIPs: {why}"
        ))
    };
    match a.trim().parse::<IpAddr>() {
        Ok(IpAddr::V4(v4)) if v4.is_link_local() => {
            if v4.octets()[2..] == [0, 0] || v4.octets()[2..] == [255, 255] {
                Err(bad(
                    "169.254.0.0 and 169.254.255.255 are the network and broadcast addresses of 169.254.0.0/16",
                ))
            } else {
                Ok(IpAddr::V4(v4))
            }
        }
        Ok(IpAddr::V6(v6)) if v6.segments()[0] & 0xffc0 == 0xfe80 => Ok(IpAddr::V6(v6)),
        Ok(_) => Err(bad(
            "give an IPv4 address in 169.254.0.0/16 or an IPv6 address in fe80::/10",
        )),
        Err(_) => Err(bad("not an IP address")),
    }
}

// ---------------------------------------------------------------- response bodies
//
// The bodies are `tapnet_types::api`'s (re-exported above); this part shapes them.

/// Shape gateway counters for the API.
pub fn gateway_stats_resource(g: &tapnet_nat::StatsSnapshot) -> GatewayStatsResource {
    let flows = ["tcp", "udp", "icmp"]
        .iter()
        .enumerate()
        .map(|(i, name)| {
            (
                name.to_string(),
                FlowStatsResource {
                    active: g.flows_active.get(i).copied().unwrap_or(0),
                    total: g.flows_total.get(i).copied().unwrap_or(0),
                },
            )
        })
        .collect();
    GatewayStatsResource {
        frames_in: g.frames_in,
        frames_out: g.frames_out,
        drops: tapnet_nat::DropReason::ALL
            .iter()
            .map(|r| (r.name().to_string(), g.drops(*r)))
            .collect(),
        flows,
        flow_limit_hits: g.flow_limit_hits,
        dns_local: g.dns_local,
        dns_forwarded: g.dns_forwarded,
        dns_servfail: g.dns_servfail,
        switch_port: None,
    }
}

/// Shape a network for the API.
pub fn network_resource(net: &Network, store: &Store) -> NetworkResource {
    let containers = net
        .endpoints
        .values()
        .map(|e| {
            let name = store
                .sandboxes
                .get(&e.sandbox_id)
                .map(|s| s.name.clone())
                .unwrap_or_default();
            (
                e.sandbox_id.clone(),
                ContainerResource {
                    name,
                    endpoint_id: e.id.clone(),
                    mac_address: e.mac.as_ref().map(format_mac).unwrap_or_default(),
                    ipv4_address: cidr(e.ipv4, e.prefix_len),
                    ipv6_address: cidr(e.ipv6, e.prefix_len_v6),
                    aliases: e.aliases.clone(),
                    driver_opts: e.driver_opts.clone(),
                    link_local_ips: e.link_local_ips.iter().map(IpAddr::to_string).collect(),
                },
            )
        })
        .collect();
    NetworkResource {
        name: net.name.clone(),
        id: net.id.clone(),
        created: net.created.clone(),
        scope: net.scope.clone(),
        driver: net.driver.clone(),
        enable_ipv4: true,
        enable_ipv6: net.enable_ipv6,
        internal: net.internal,
        attachable: net.attachable,
        ipam: IpamResource {
            driver: net.ipam_driver.clone(),
            options: net.ipam_options.clone(),
            config: ipam_config_resources(net),
        },
        ingress: false,
        config_from: ConfigReference {
            network: net.config_from.clone().unwrap_or_default(),
        },
        config_only: net.config_only,
        containers,
        options: net.options.clone(),
        labels: net.labels.clone(),
        peers: None,
    }
}

/// `addr/len`, or empty without an address.
fn cidr<A: std::fmt::Display>(addr: Option<A>, len: u8) -> String {
    addr.map(|a| format!("{a}/{len}")).unwrap_or_default()
}

fn to_string_or_empty<A: std::fmt::Display>(a: Option<A>) -> String {
    a.map(|a| a.to_string()).unwrap_or_default()
}

/// `IPAM.Config` of a network: the IPv4 entry and the IPv6 entry, where present
/// (`null`/`host` networks have none).
fn ipam_config_resources(net: &Network) -> Vec<IpamConfigResource> {
    let mut out = Vec::new();
    if let Some(subnet) = net.subnet {
        out.push(IpamConfigResource {
            subnet: subnet.to_string(),
            gateway: to_string_or_empty(net.gateway),
            ip_range: net.ip_range.map(|r| r.to_string()),
            auxiliary_addresses: net
                .aux_addresses
                .iter()
                .map(|(k, v)| (k.clone(), v.to_string()))
                .collect(),
        });
    }
    if let Some(v6) = &net.ipv6 {
        out.push(IpamConfigResource {
            subnet: v6.subnet.to_string(),
            // `::`: a configuration network's entry without a gateway.
            gateway: to_string_or_empty(Some(v6.gateway).filter(|g| !g.is_unspecified())),
            ip_range: v6.ip_range.map(|r| r.to_string()),
            auxiliary_addresses: v6
                .aux_addresses
                .iter()
                .map(|(k, v)| (k.clone(), v.to_string()))
                .collect(),
        });
    }
    out
}

/// Shape a sandbox for the API.
pub fn sandbox_resource(sb: &Sandbox, store: &Store) -> SandboxResource {
    let endpoints = store
        .endpoints_of_sandbox(&sb.id)
        .into_iter()
        .map(|(n, e)| {
            (
                n.name.clone(),
                SandboxEndpointResource {
                    network_id: n.id.clone(),
                    endpoint_id: e.id.clone(),
                    interface: e.interface.clone(),
                    mac_address: e.mac.as_ref().map(format_mac).unwrap_or_default(),
                    ipv4_address: cidr(e.ipv4, e.prefix_len),
                    gateway: to_string_or_empty(n.gateway),
                    ipv6_address: cidr(e.ipv6, e.prefix_len_v6),
                    ipv6_gateway: to_string_or_empty(
                        n.ipv6
                            .as_ref()
                            .filter(|_| e.ipv6.is_some())
                            .map(|c| c.gateway),
                    ),
                    aliases: e.aliases.clone(),
                    driver_opts: e.driver_opts.clone(),
                    ipam_config: (!e.link_local_ips.is_empty()).then(|| EndpointIpamBody {
                        link_local_ips: Some(
                            e.link_local_ips.iter().map(IpAddr::to_string).collect(),
                        ),
                        ..EndpointIpamBody::default()
                    }),
                    driver_info: BTreeMap::new(),
                },
            )
        })
        .collect();
    SandboxResource {
        id: sb.id.clone(),
        name: sb.name.clone(),
        netns_path: sb.netns_path.display().to_string(),
        owned: sb.owned,
        created: sb.created.clone(),
        endpoints,
        ports: crate::ports::ports_resource(&sb.port_bindings, sb.published.as_ref()),
        resolv_conf_path: sb.resolv_conf_path.display().to_string(),
        hosts_path: sb.hosts_path.display().to_string(),
    }
}

/// Shape a network's counters for the API.
pub fn stats_resource(net: &Network, report: &NetworkReport, store: &Store) -> StatsResource {
    let ports = report
        .ports
        .iter()
        .map(|p| {
            let ep = net.endpoints.get(&p.endpoint_id);
            let sandbox = ep
                .and_then(|e| store.sandboxes.get(&e.sandbox_id))
                .map(|s| s.name.clone())
                .unwrap_or_default();
            let interface = ep.map(|e| e.interface.clone()).unwrap_or_default();
            port_stats_resource(p, &sandbox, &interface)
        })
        .collect();
    StatsResource {
        network: net.id.clone(),
        fdb_entries: report.fdb_entries,
        fdb_limit_hits: report.fdb_limit_hits,
        fdb_port_limit_hits: report.fdb_port_limit_hits,
        ports,
        gateway: report.gateway.as_ref().map(|g| GatewayStatsResource {
            switch_port: report
                .gateway_port
                .as_ref()
                .map(|p| port_stats_resource(p, "", "gateway")),
            ..gateway_stats_resource(g)
        }),
        tunnel: report
            .tunnel
            .as_ref()
            .map(|t| tapnet_types::api::TunnelStatsResource {
                vni: t.vni,
                port: t.port.iter().map(|(k, n)| (k.to_string(), *n)).collect(),
                socket: t.socket.iter().map(|(k, n)| (k.to_string(), *n)).collect(),
            }),
        uplink: report
            .uplink
            .iter()
            .map(|(k, n)| (k.to_string(), *n))
            .collect(),
    }
}

/// Shape one port's counters for the API.
fn port_stats_resource(
    p: &crate::driver::PortReport,
    sandbox: &str,
    interface: &str,
) -> PortStatsResource {
    PortStatsResource {
        endpoint_id: p.endpoint_id.clone(),
        sandbox: sandbox.to_string(),
        interface: interface.to_string(),
        port: p.port,
        rx_packets: p.stats.rx_packets,
        rx_bytes: p.stats.rx_bytes,
        tx_packets: p.stats.tx_packets,
        tx_bytes: p.stats.tx_bytes,
        fdb_entries: p.fdb_entries,
        fdb_limit_hits: p.fdb_limit_hits,
        drops: p
            .stats
            .drops
            .iter()
            .map(|(r, n)| (r.name().to_string(), *n))
            .collect(),
    }
}

fn fdb_resource(rows: &[FdbRow]) -> Vec<FdbResource> {
    rows.iter()
        .map(|r| FdbResource {
            mac_address: r.mac.to_string(),
            port: r.port,
            endpoint_id: r.endpoint_id.clone().unwrap_or_default(),
            age_seconds: r.age_seconds,
            vtep: r.vtep.map(|v| v.to_string()).unwrap_or_default(),
        })
        .collect()
}

// ---------------------------------------------------------------- handlers

type Ctl = State<Arc<Controller>>;

/// `GET|HEAD /_ping`: `OK` with Docker's headers (`Api-Version` and `Ostype` are
/// added to every answer by the middleware).
async fn ping() -> Response {
    let mut r = "OK".into_response();
    let h = r.headers_mut();
    h.insert(
        "Cache-Control",
        HeaderValue::from_static("no-cache, no-store, must-revalidate"),
    );
    h.insert("Pragma", HeaderValue::from_static("no-cache"));
    h.insert("Builder-Version", HeaderValue::from_static("1"));
    h.insert("Docker-Experimental", HeaderValue::from_static("false"));
    r
}

fn docker_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    }
}

/// The `GET /version` answer.
fn version_body() -> VersionResponse {
    let version = env!("CARGO_PKG_VERSION");
    VersionResponse {
        api_version: API_VERSION.into(),
        arch: docker_arch().into(),
        components: vec![VersionComponent {
            details: VersionDetails {
                api_version: API_VERSION.into(),
            },
            name: "tapnetd".into(),
            version: version.into(),
        }],
        min_api_version: MIN_API_VERSION.into(),
        os: "linux".into(),
        platform: VersionPlatform {
            name: "tapnet".into(),
        },
        version: version.into(),
    }
}

async fn version() -> Response {
    Json(version_body()).into_response()
}

/// What the daemon was started with that `GET /info` reports (set once by
/// `tapnetd` before serving; unset, e.g. in unit tests: empty strings).
#[derive(Debug, Clone, Default)]
pub struct DaemonInfo {
    /// `--data-root`.
    pub data_root: PathBuf,
    /// `--exec-root`.
    pub exec_root: PathBuf,
    /// `--cluster-store`, if given.
    pub cluster_store: Option<String>,
    /// `--cluster-advertise`, if given.
    pub cluster_advertise: Option<String>,
    /// Datapath worker threads.
    pub workers: usize,
    /// `--tap-io` as given.
    pub tap_io: String,
    /// The tap I/O path in effect (`rw` or `uring`).
    pub tap_io_path: String,
    /// `--tap-queues`.
    pub tap_queues: usize,
    /// The datapath workers' nice value (`--worker-nice`, else the daemon's own).
    pub worker_nice: i32,
    /// `--worker-nice auto` in effect: `on`, `off` (a fixed value) or `unavailable`.
    pub worker_nice_auto: String,
    /// `--tap-udp-merge`: runs of UDP datagrams are written to taps as super-frames.
    pub tap_udp_merge: bool,
    /// Where network gateways run (`TapnetGateway`).
    pub gateway: String,
}

static DAEMON_INFO: std::sync::OnceLock<DaemonInfo> = std::sync::OnceLock::new();

/// Record the daemon's settings for `GET /info` (the first call wins).
pub fn set_daemon_info(info: DaemonInfo) {
    if DAEMON_INFO.set(info).is_err() {
        tracing::warn!("set_daemon_info called twice: the first settings are kept");
    }
}

/// The network drivers built into tapnetd, in `docker info`'s order.
const BUILTIN_NETWORK_DRIVERS: [&str; 5] = ["bridge", "host", "macvlan", "null", "overlay"];

/// A file's content, trimmed; empty when it cannot be read.
fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// `MemTotal` of `/proc/meminfo` in bytes (0 when absent or malformed).
pub fn parse_meminfo_total(meminfo: &str) -> u64 {
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|rest| {
            let mut f = rest.split_whitespace();
            let n = f.next()?.parse::<u64>().ok()?;
            match f.next() {
                Some("kB") => n.checked_mul(1024),
                None => Some(n),
                Some(_) => None,
            }
        })
        .unwrap_or(0)
}

/// `PRETTY_NAME` of an os-release file (unquoted), else `Linux`.
pub fn parse_os_release(text: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim().trim_matches('"').trim_matches('\'').to_string())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "Linux".into())
}

/// The `GET /info` answer for this model and these settings.
pub fn info_body(store: &Store, daemon: &DaemonInfo) -> InfoResponse {
    let mut network: Vec<String> = BUILTIN_NETWORK_DRIVERS
        .iter()
        .map(|d| d.to_string())
        .collect();
    for n in store.networks.values() {
        if !network.contains(&n.driver) {
            network.push(n.driver.clone());
        }
    }
    let sandboxes = store.sandboxes.len() as u64;
    let os_release = std::fs::read_to_string("/etc/os-release")
        .or_else(|_| std::fs::read_to_string("/usr/lib/os-release"))
        .unwrap_or_default();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let system_time = crate::model::rfc3339(now.as_secs()).replacen(
        'Z',
        &format!(".{:09}Z", now.subsec_nanos()),
        1,
    );
    InfoResponse {
        id: read_trimmed("/etc/machine-id"),
        containers: sandboxes,
        containers_running: sandboxes,
        containers_paused: 0,
        containers_stopped: 0,
        images: 0,
        driver: "none".into(),
        driver_status: Vec::new(),
        plugins: InfoPlugins {
            volume: Vec::new(),
            network,
            authorization: None,
            log: Vec::new(),
        },
        system_time,
        logging_driver: "none".into(),
        cgroup_driver: "none".into(),
        kernel_version: read_trimmed("/proc/sys/kernel/osrelease"),
        operating_system: parse_os_release(&os_release),
        os_type: "linux".into(),
        architecture: std::env::consts::ARCH.into(),
        ncpu: std::thread::available_parallelism()
            .map(|n| n.get() as u64)
            .unwrap_or(1),
        mem_total: parse_meminfo_total(
            &std::fs::read_to_string("/proc/meminfo").unwrap_or_default(),
        ),
        docker_root_dir: daemon.data_root.display().to_string(),
        name: read_trimmed("/proc/sys/kernel/hostname"),
        labels: Vec::new(),
        server_version: env!("CARGO_PKG_VERSION").into(),
        swarm: InfoSwarm {
            local_node_state: "inactive".into(),
            ..InfoSwarm::default()
        },
        warnings: Vec::new(),
        tapnet_networks: store.networks.len() as u64,
        tapnet_cluster_store: daemon.cluster_store.clone().unwrap_or_default(),
        tapnet_cluster_advertise: daemon.cluster_advertise.clone().unwrap_or_default(),
        tapnet_exec_root: daemon.exec_root.display().to_string(),
        tapnet_datapath_workers: daemon.workers as u64,
        tapnet_tap_io: daemon.tap_io.clone(),
        tapnet_tap_io_path: daemon.tap_io_path.clone(),
        tapnet_tap_queues: daemon.tap_queues as u64,
        tapnet_worker_nice: i64::from(daemon.worker_nice),
        tapnet_worker_nice_auto: daemon.worker_nice_auto.clone(),
        tapnet_tap_udp_merge: if daemon.tap_udp_merge { "on" } else { "off" }.into(),
        tapnet_gateway: daemon.gateway.clone(),
    }
}

/// `GET /events`: see [`events`].
async fn events_stream(State(ctl): Ctl, uri: Uri) -> ApiResult<Response> {
    let f = events::parse_query(&uri)?;
    Ok(events::stream(&ctl, f))
}

/// `GET /info`: Docker's `SystemInfo` shape (see [`info_body`]).
async fn info(State(ctl): Ctl) -> Json<InfoResponse> {
    let store = ctl.snapshot().await;
    let daemon = DAEMON_INFO.get().cloned().unwrap_or_default();
    Json(info_body(&store, &daemon))
}

async fn network_create(
    State(ctl): Ctl,
    JsonBody(body): JsonBody<NetworkCreateBody>,
) -> ApiResult<Response> {
    let req = network_create_request(body)?;
    let id = ctl.create_network(req).await?;
    Ok((
        StatusCode::CREATED,
        Json(CreateNetworkResponse {
            id,
            warning: String::new(),
        }),
    )
        .into_response())
}

/// Query parameters as a map (400 `{"message"}` when they cannot be decoded).
fn query_map(uri: &Uri) -> ApiResult<BTreeMap<String, String>> {
    Query::<BTreeMap<String, String>>::try_from_uri(uri)
        .map(|Query(q)| q)
        .map_err(|e| ApiError::bad_request(format!("invalid query string: {}", e.body_text())))
}

async fn network_list(State(ctl): Ctl, uri: Uri) -> ApiResult<Json<Vec<NetworkResource>>> {
    let q = query_map(&uri)?;
    let f = filters::Filters::parse(q.get("filters").map(String::as_str))?;
    filters::validate_list(&f)?;
    let store = ctl.snapshot().await;
    let mut nets: Vec<&Network> = store
        .networks
        .values()
        .filter(|n| filters::network_matches(&f, n))
        .collect();
    nets.sort_by(|a, b| a.created.cmp(&b.created).then(a.name.cmp(&b.name)));
    Ok(Json(
        nets.into_iter()
            .map(|n| network_resource(n, &store))
            .collect(),
    ))
}

async fn network_inspect(
    State(ctl): Ctl,
    Path(id): Path<String>,
) -> ApiResult<Json<NetworkResource>> {
    let store = ctl.snapshot().await;
    let nid = store.resolve_network(&id)?;
    let net = store
        .networks
        .get(&nid)
        .ok_or_else(|| Error::NotFound(format!("network {id} not found")))?;
    let mut r = network_resource(net, &store);
    r.peers = ctl.global_peers(&nid).map(|peers| {
        peers
            .into_iter()
            .map(|(name, ip)| PeerResource {
                name,
                ip: ip.to_string(),
            })
            .collect()
    });
    Ok(Json(r))
}

async fn network_delete(State(ctl): Ctl, Path(id): Path<String>) -> ApiResult<StatusCode> {
    ctl.delete_network(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn network_connect(
    State(ctl): Ctl,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<ConnectBody>,
) -> ApiResult<StatusCode> {
    let (sandbox, opts) = connect_request(body)?;
    ctl.connect(&id, &sandbox, opts).await?;
    Ok(StatusCode::OK)
}

async fn network_disconnect(
    State(ctl): Ctl,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<DisconnectBody>,
) -> ApiResult<StatusCode> {
    if body.container.is_empty() {
        return Err(ApiError::bad_request(
            "\"Container\" (a sandbox name or id) is required",
        ));
    }
    ctl.disconnect(&id, &body.container, body.force).await?;
    Ok(StatusCode::OK)
}

/// `POST /networks/prune`: removes custom networks without endpoints that pass the
/// `until`/`label`/`label!` filters, except configuration networks (as dockerd); one
/// that cannot be removed is logged and kept.
async fn network_prune(State(ctl): Ctl, uri: Uri) -> ApiResult<Json<NetworkPruneResponse>> {
    let q = query_map(&uri)?;
    let f = filters::Filters::parse(q.get("filters").map(String::as_str))?;
    let pf = filters::PruneFilters::new(f, filters::now_secs())?;
    let store = ctl.snapshot().await;
    let candidates = store
        .networks
        .values()
        .filter(|n| !n.config_only && pf.prunable(n))
        .map(|n| n.id.clone())
        .collect();
    let deleted = ctl.prune(candidates).await;
    Ok(Json(NetworkPruneResponse {
        networks_deleted: deleted,
    }))
}

async fn network_stats(State(ctl): Ctl, Path(id): Path<String>) -> ApiResult<Json<StatsResource>> {
    let (net, report) = ctl.network_report(&id).await?;
    let store = ctl.snapshot().await;
    Ok(Json(stats_resource(&net, &report, &store)))
}

async fn network_fdb(State(ctl): Ctl, Path(id): Path<String>) -> ApiResult<Json<Vec<FdbResource>>> {
    let rows = ctl.network_fdb(&id).await?;
    Ok(Json(fdb_resource(&rows)))
}

async fn sandbox_create(
    State(ctl): Ctl,
    JsonBody(body): JsonBody<SandboxCreateBody>,
) -> ApiResult<Response> {
    let path = non_empty(&body.netns_path).map(PathBuf::from);
    let bindings = match &body.port_bindings {
        Some(m) => crate::ports::parse_port_bindings(m)?,
        None => Vec::new(),
    };
    check_host_ips(&bindings)?;
    let id = ctl.create_sandbox_with(body.name, path, bindings).await?;
    Ok((StatusCode::CREATED, Json(CreateSandboxResponse { id })).into_response())
}

async fn sandbox_list(State(ctl): Ctl) -> Json<Vec<SandboxResource>> {
    let store = ctl.snapshot().await;
    let mut sbs: Vec<&Sandbox> = store.sandboxes.values().collect();
    sbs.sort_by(|a, b| a.created.cmp(&b.created).then(a.name.cmp(&b.name)));
    Json(
        sbs.into_iter()
            .map(|s| sandbox_resource(s, &store))
            .collect(),
    )
}

async fn sandbox_inspect(
    State(ctl): Ctl,
    Path(id): Path<String>,
) -> ApiResult<Json<SandboxResource>> {
    let store = ctl.snapshot().await;
    let sid = store.resolve_sandbox(&id)?;
    let sb = store
        .sandboxes
        .get(&sid)
        .ok_or_else(|| Error::NotFound(format!("sandbox {id} not found")))?;
    let mut res = sandbox_resource(sb, &store);
    for e in res.endpoints.values_mut() {
        e.driver_info = ctl.endpoint_info(&e.network_id, &e.endpoint_id).await;
    }
    Ok(Json(res))
}

/// `GET /networks/{id}/capture`: see [`crate::capture`].
async fn network_capture(State(ctl): Ctl, Path(id): Path<String>, uri: Uri) -> ApiResult<Response> {
    let q = query_map(&uri)?;
    if let Some(k) = q.keys().next() {
        return Err(ApiError::bad_request(format!(
            "query parameter {k:?} is not supported by a network capture"
        )));
    }
    crate::capture::stream(&ctl, Some(&id), None).await
}

/// `GET /sandboxes/{id}/capture[?network=NET]`: see [`crate::capture`].
async fn sandbox_capture(State(ctl): Ctl, Path(id): Path<String>, uri: Uri) -> ApiResult<Response> {
    let q = query_map(&uri)?;
    if let Some(k) = q.keys().find(|k| *k != "network") {
        return Err(ApiError::bad_request(format!(
            "query parameter {k:?} is not supported by a sandbox capture (only network)"
        )));
    }
    let network = q
        .get("network")
        .map(String::as_str)
        .filter(|n| !n.is_empty());
    crate::capture::stream(&ctl, network, Some(&id)).await
}

/// `GET /metrics`: see [`crate::metrics`].
async fn metrics(State(ctl): Ctl) -> Response {
    crate::metrics::render(&ctl).await
}

/// `DELETE /sandboxes/{id}[?force=1]` (docker's `DELETE /containers/{id}?force=1`):
/// 409 naming the pids while processes run in a sandbox tapnet made, unless forced.
async fn sandbox_delete(
    State(ctl): Ctl,
    Path(id): Path<String>,
    uri: Uri,
) -> ApiResult<StatusCode> {
    let q = query_map(&uri)?;
    let mut force = false;
    for (k, v) in &q {
        match k.as_str() {
            "force" => {
                force = match v.to_ascii_lowercase().as_str() {
                    "1" | "true" | "yes" => true,
                    "" | "0" | "false" | "no" => false,
                    _ => {
                        return Err(ApiError::bad_request(format!(
                            "invalid value for force: {v:?} (1, true, 0 or false)"
                        )))
                    }
                }
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "query parameter {other:?} is not supported on DELETE /sandboxes/{{id}} (only force)"
                )))
            }
        }
    }
    ctl.remove_sandbox(&id, force).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn not_found_fallback(uri: Uri) -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        message: format!(
            "page not found: {}: tapnetd serves only Docker's network endpoints (/networks/...), \
             /_ping, /version, /info, /events, /metrics and tapnet's /sandboxes; a docker container is a tapnet sandbox",
            uri.path()
        ),
    }
}

async fn method_not_allowed() -> ApiError {
    ApiError {
        status: StatusCode::METHOD_NOT_ALLOWED,
        message: "method not allowed".into(),
    }
}

/// Strip a `/v{major}.{minor}` prefix from a path, if there is one.
pub fn strip_version(path: &str) -> Option<&str> {
    split_version(path).map(|(_, tail)| tail)
}

/// Split `/v{major}.{minor}/rest` into (`major.minor`, `/rest`).
pub fn split_version(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix("/v")?;
    let end = rest.find('/').unwrap_or(rest.len());
    let (ver, tail) = rest.split_at(end);
    let mut parts = ver.split('.');
    let valid = match (parts.next(), parts.next(), parts.next()) {
        (Some(a), Some(b), None) => {
            !a.is_empty() && !b.is_empty() && a.bytes().chain(b.bytes()).all(|c| c.is_ascii_digit())
        }
        _ => false,
    };
    if !valid {
        return None;
    }
    Some((ver, if tail.is_empty() { "/" } else { tail }))
}

fn version_tuple(v: &str) -> (u64, u64) {
    let mut p = v.split('.').map(|x| x.parse::<u64>().unwrap_or(u64::MAX));
    (p.next().unwrap_or(0), p.next().unwrap_or(0))
}

/// Check a requested API version against [`MIN_API_VERSION`]..=[`API_VERSION`];
/// the error is Docker's wording.
pub fn check_version(ver: &str) -> ApiResult<()> {
    let v = version_tuple(ver);
    if v < version_tuple(MIN_API_VERSION) {
        return Err(ApiError::bad_request(format!(
            "client version {ver} is too old. Minimum supported API version is {MIN_API_VERSION}, \
             please upgrade your client to a newer version"
        )));
    }
    if v > version_tuple(API_VERSION) {
        return Err(ApiError::bad_request(format!(
            "client version {ver} is too new. Maximum supported API version is {API_VERSION}"
        )));
    }
    Ok(())
}

fn tag(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert("Api-Version", HeaderValue::from_static(API_VERSION));
    h.insert("Ostype", HeaderValue::from_static("linux"));
    h.insert("Server", HeaderValue::from_static("tapnetd"));
    resp
}

async fn rewrite_and_tag(mut req: Request, next: axum::middleware::Next) -> Response {
    if let Some((ver, stripped)) = split_version(req.uri().path()) {
        if let Err(e) = check_version(ver) {
            return tag(e.into_response());
        }
        let pq = match req.uri().query() {
            Some(q) => format!("{stripped}?{q}"),
            None => stripped.to_string(),
        };
        let mut parts = req.uri().clone().into_parts();
        if let Ok(p) = pq.parse() {
            parts.path_and_query = Some(p);
            if let Ok(uri) = Uri::from_parts(parts) {
                *req.uri_mut() = uri;
            }
        }
    }
    tag(next.run(req).await)
}

/// The API router over a controller.
pub fn router(ctl: Arc<Controller>) -> Router {
    let api = Router::new()
        .route("/_ping", get(ping))
        .route("/version", get(version))
        .route("/info", get(info))
        .route("/events", get(events_stream))
        .route("/networks", get(network_list))
        .route("/networks/create", post(network_create))
        .route("/networks/prune", post(network_prune))
        .route(
            "/networks/{id}",
            get(network_inspect).delete(network_delete),
        )
        .route("/networks/{id}/connect", post(network_connect))
        .route("/networks/{id}/disconnect", post(network_disconnect))
        .route("/networks/{id}/stats", get(network_stats))
        .route("/networks/{id}/fdb", get(network_fdb))
        .route("/networks/{id}/capture", get(network_capture))
        .route("/sandboxes/{id}/capture", get(sandbox_capture))
        .route("/metrics", get(metrics))
        .route("/sandboxes", get(sandbox_list).post(sandbox_create))
        .route(
            "/sandboxes/{id}",
            get(sandbox_inspect).delete(sandbox_delete),
        )
        .fallback(not_found_fallback)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::from_fn(crate::metrics::track))
        .with_state(ctl);
    // The outer router rewrites the URI before the inner one routes it.
    Router::new()
        .fallback_service(api)
        .layer(axum::middleware::from_fn(rewrite_and_tag))
}

mod server;
pub use server::{
    closed_on_error, connection_counts, serve_unix, ConnectionCounts, HttpTimeouts,
    BODY_READ_TIMEOUT, HEADER_READ_TIMEOUT, MAX_CONNECTIONS,
};

#[cfg(test)]
mod tests;
