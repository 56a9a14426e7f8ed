//! The remote network driver: a Docker network plugin written by others
//! (`NetworkDriver.*`, libnetwork `drivers/remote`).
//!
//! Contract: each [`Driver`] call is the plugin call of the same name, with Docker's
//! bodies ([`tapnet_types::plugin`]); a failed or nonsense answer is an error naming
//! the plugin (see [`crate::remote::PluginError`]) and the controller's transaction
//! undoes the steps before it. The plugin is activated (and asked
//! `GetCapabilities`: `Scope`, `ConnectivityScope`) on the first use of its name;
//! endpoints get addresses from IPAM (needs addresses, no gateway service of
//! tapnet's: the plugin provides connectivity).
//!
//! * `CreateNetwork` gets the network's pools (`IPv4Data`/`IPv6Data` with gateway
//!   and auxiliary addresses) and options (`com.docker.network.generic`: the `-o`
//!   options; IPv6 and internal flags). A restored network is not created again
//!   (the plugin keeps its networks across tapnetd restarts).
//! * `CreateEndpoint` gets the IPAM addresses and MAC; its `Interface` answer may
//!   only fill what was empty ([`EndpointDescription`]).
//! * `Join` must name an interface (`SrcName`) that exists in tapnetd's namespace;
//!   the sandbox layer moves it in, renames it to `<DstPrefix>N`, sets the MAC and
//!   addresses, the default route via `Gateway` and the `StaticRoutes` (RouteType 0
//!   via `NextHop`, 1 connected). The answer is kept under
//!   `<state_dir>/<plugin>/<endpoint>.json` so a restarted daemon can undo it later.
//! * `Leave` runs after the sandbox layer moved the interface back; `DeleteEndpoint`,
//!   `DeleteNetwork` as in the CNM lifecycle.
//! * `ProgramExternalConnectivity` gets the sandbox's published ports
//!   (`com.docker.network.portmap`) for each endpoint of a non-internal network whose
//!   `Join` did not set `DisableGatewayService` (dockerd: only the sandbox's gateway
//!   endpoint);
//!   `RevokeExternalConnectivity` before it leaves.

use super::{
    Capabilities, Driver, EndpointDescription, EndpointRequest, InterfaceDescription,
    InterfaceSource, JoinDescription, JoinRequest, NetworkRequest, RestoreDescription, Restored,
    Scope, StaticRoute,
};
use crate::error::{Error, Result};
use crate::model::{Endpoint, Network};
use crate::remote::client::Client;
use crate::remote::{PluginError, Plugins};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use tapnet_types::plugin as api;
use tapnet_types::ports::PortBinding;

/// A remote network driver (see the module doc).
pub struct RemoteDriver {
    name: String,
    plugins: Arc<Plugins>,
    active: Mutex<Option<(Client, Capabilities)>>,
}

impl std::fmt::Debug for RemoteDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteDriver")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn plugin_err(op: &str, e: PluginError) -> Error {
    Error::Plugin {
        op: op.to_string(),
        source: e,
    }
}

/// Parse a `GetCapabilities` scope (`local`/`global`; empty: `default`).
fn parse_scope(
    plugin: &str,
    what: &str,
    s: &str,
    default: Scope,
) -> std::result::Result<Scope, PluginError> {
    match s {
        "local" => Ok(Scope::Local),
        "global" => Ok(Scope::Global),
        "" => Ok(default),
        other => Err(PluginError::bad(
            plugin,
            "NetworkDriver.GetCapabilities",
            format!("invalid {what} {other:?}: expecting \"local\" or \"global\""),
        )),
    }
}

/// The capabilities of a remote driver from its `GetCapabilities` answer.
pub fn capabilities_of(
    plugin: &str,
    caps: &api::CapabilitiesResponse,
) -> std::result::Result<Capabilities, PluginError> {
    let scope = parse_scope(plugin, "Scope", &caps.scope, Scope::Local)?;
    let connectivity_scope =
        parse_scope(plugin, "ConnectivityScope", &caps.connectivity_scope, scope)?;
    Ok(Capabilities {
        scope,
        connectivity_scope,
        needs_addresses: true,
        single_instance: false,
        gateway_service: false,
    })
}

impl RemoteDriver {
    /// The driver of plugin `name`, not yet activated.
    pub fn new(name: &str, plugins: Arc<Plugins>) -> RemoteDriver {
        RemoteDriver {
            name: name.to_string(),
            plugins,
            active: Mutex::new(None),
        }
    }

    /// Activate the plugin (find it, `Plugin.Activate`, `GetCapabilities`) unless
    /// done already.
    pub fn ensure_active(&self) -> std::result::Result<Client, PluginError> {
        if let Some((c, _)) = lock(&self.active).as_ref() {
            return Ok(c.clone());
        }
        let client = self.plugins.activate(&self.name, api::NETWORK_DRIVER)?;
        let caps: api::CapabilitiesResponse =
            client.call("NetworkDriver.GetCapabilities", &api::Empty {})?;
        let caps = capabilities_of(&self.name, &caps)?;
        *lock(&self.active) = Some((client.clone(), caps));
        Ok(client)
    }

    fn call<Q: serde::Serialize, R: serde::de::DeserializeOwned>(
        &self,
        op: &str,
        method: &str,
        req: &Q,
    ) -> Result<R> {
        let client = self.ensure_active().map_err(|e| plugin_err(op, e))?;
        client.call(method, req).map_err(|e| plugin_err(op, e))
    }

    fn state_path(&self, endpoint_id: &str) -> PathBuf {
        self.plugins
            .config()
            .state_dir
            .join(&self.name)
            .join(format!("{endpoint_id}.json"))
    }

    fn bad(&self, method: &str, message: String) -> Error {
        plugin_err(method, PluginError::bad(&self.name, method, message))
    }

    /// The `Join` answer as the sandbox layer's description.
    fn describe(
        &self,
        network: &Network,
        endpoint: &Endpoint,
        resp: &api::JoinResponse,
    ) -> Result<JoinDescription> {
        const M: &str = "NetworkDriver.Join";
        let Some(iface) = resp
            .interface_name
            .as_ref()
            .filter(|i| !i.src_name.is_empty())
        else {
            return Err(self.bad(
                M,
                "no interface name (InterfaceName.SrcName) in the answer".into(),
            ));
        };
        let mut desc = InterfaceDescription::for_endpoint(
            InterfaceSource::MoveIn {
                host_name: iface.src_name.clone(),
            },
            network,
            endpoint,
        )?;
        desc.dst_prefix = iface.dst_prefix.clone();
        if !network
            .options
            .contains_key(tapnet_types::model::MTU_OPTION)
        {
            desc.mtu = None;
        }
        let gateway_v4 = match resp.gateway.as_str() {
            "" => None,
            g => Some(
                g.parse::<Ipv4Addr>()
                    .map_err(|_| self.bad(M, format!("Gateway {g:?} is not an IPv4 address")))?,
            ),
        };
        let gateway_v6 =
            match resp.gateway_ipv6.as_str() {
                "" => None,
                g => Some(g.parse::<Ipv6Addr>().map_err(|_| {
                    self.bad(M, format!("GatewayIPv6 {g:?} is not an IPv6 address"))
                })?),
            };
        let mut static_routes = Vec::new();
        for r in &resp.static_routes {
            let destination = r.destination.parse::<IpNet>().map_err(|_| {
                self.bad(
                    M,
                    format!(
                        "StaticRoutes: Destination {:?} is not a CIDR",
                        r.destination
                    ),
                )
            })?;
            let next_hop = match r.route_type {
                api::ROUTE_NEXT_HOP => Some(r.next_hop.parse::<IpAddr>().map_err(|_| {
                    self.bad(
                        M,
                        format!(
                            "StaticRoutes: route to {destination} (RouteType 0) has NextHop {:?}, not an address",
                            r.next_hop
                        ),
                    )
                })?),
                api::ROUTE_CONNECTED => None,
                t => {
                    return Err(self.bad(
                        M,
                        format!("StaticRoutes: route to {destination} has RouteType {t} (0: next hop, 1: connected)"),
                    ))
                }
            };
            static_routes.push(StaticRoute {
                destination,
                next_hop,
            });
        }
        Ok(JoinDescription {
            interface: Some(desc),
            gateway_v4,
            gateway_v6,
            static_routes,
            disable_gateway_service: resp.disable_gateway_service,
        })
    }

    /// `ProgramExternalConnectivity` for an endpoint with the sandbox's published
    /// ports.
    fn program_external(
        &self,
        network_id: &str,
        endpoint: &Endpoint,
        ports: &[PortBinding],
    ) -> Result<()> {
        let portmap: Vec<api::PortMap> = ports
            .iter()
            .map(|b| api::PortMap {
                proto: match b.proto {
                    tapnet_types::ports::PortProto::Tcp => api::PROTO_TCP,
                    tapnet_types::ports::PortProto::Udp => api::PROTO_UDP,
                },
                ip: endpoint.ipv4.map(|a| a.to_string()).unwrap_or_default(),
                port: b.port,
                host_ip: if b.host_ip.is_unspecified() {
                    String::new()
                } else {
                    b.host_ip.to_string()
                },
                host_port: b.host_port,
                host_port_end: b.host_port,
            })
            .collect();
        let exposed: Vec<api::ExposedPort> = portmap
            .iter()
            .map(|p| api::ExposedPort {
                proto: p.proto,
                port: p.port,
            })
            .collect();
        let mut options = api::Options::new();
        options.insert(
            api::OPT_PORTMAP.into(),
            serde_json::to_value(&portmap).unwrap_or(Value::Null),
        );
        options.insert(
            api::OPT_EXPOSED_PORTS.into(),
            serde_json::to_value(&exposed).unwrap_or(Value::Null),
        );
        let _: api::Empty = self.call(
            "program external connectivity",
            "NetworkDriver.ProgramExternalConnectivity",
            &api::ExternalConnectivityRequest {
                network_id: network_id.to_string(),
                endpoint_id: endpoint.id.clone(),
                options,
            },
        )?;
        Ok(())
    }

    /// `RevokeExternalConnectivity`.
    fn revoke_external(&self, network_id: &str, endpoint_id: &str) -> Result<()> {
        let _: api::Empty = self.call(
            "revoke external connectivity",
            "NetworkDriver.RevokeExternalConnectivity",
            &api::EndpointRequest {
                network_id: network_id.to_string(),
                endpoint_id: endpoint_id.to_string(),
            },
        )?;
        Ok(())
    }

    /// `EndpointOperInfo`: what the plugin says of an endpoint.
    fn oper_info(&self, network_id: &str, endpoint_id: &str) -> Result<BTreeMap<String, Value>> {
        let r: api::EndpointInfoResponse = self.call(
            "endpoint info",
            "NetworkDriver.EndpointOperInfo",
            &api::EndpointRequest {
                network_id: network_id.to_string(),
                endpoint_id: endpoint_id.to_string(),
            },
        )?;
        Ok(r.value)
    }
}

/// `addr/len` of a network's gateway, empty without one.
fn with_prefix(addr: Option<IpAddr>, len: u8) -> String {
    addr.map(|a| format!("{a}/{len}")).unwrap_or_default()
}

/// The `CreateNetwork` body of `network`.
pub fn create_network_request(network: &Network) -> api::CreateNetworkRequest {
    let mut options = api::Options::new();
    let generic: serde_json::Map<String, Value> = network
        .options
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    options.insert(api::OPT_GENERIC.into(), Value::Object(generic));
    options.insert(
        api::OPT_ENABLE_IPV6.into(),
        Value::Bool(network.enable_ipv6),
    );
    options.insert(api::OPT_INTERNAL.into(), Value::Bool(network.internal));
    let mut ipv4_data = Vec::new();
    if let Some(subnet) = network.subnet {
        ipv4_data.push(api::IpamData {
            address_space: "LocalDefault".into(),
            pool: subnet.to_string(),
            gateway: with_prefix(network.gateway.map(IpAddr::V4), subnet.prefix_len()),
            aux_addresses: network
                .aux_addresses
                .iter()
                .map(|(k, v)| (k.clone(), format!("{v}/{}", subnet.prefix_len())))
                .collect(),
        });
    }
    let mut ipv6_data = Vec::new();
    if let Some(v6) = &network.ipv6 {
        ipv6_data.push(api::IpamData {
            address_space: "LocalDefault".into(),
            pool: v6.subnet.to_string(),
            gateway: with_prefix(Some(IpAddr::V6(v6.gateway)), v6.subnet.prefix_len()),
            aux_addresses: v6
                .aux_addresses
                .iter()
                .map(|(k, v)| (k.clone(), format!("{v}/{}", v6.subnet.prefix_len())))
                .collect(),
        });
    }
    api::CreateNetworkRequest {
        network_id: network.id.clone(),
        options,
        ipv4_data,
        ipv6_data,
    }
}

/// The `Interface` of an endpoint (what IPAM gave it).
fn interface_of(endpoint: &Endpoint) -> api::EndpointInterface {
    api::EndpointInterface {
        address: with_prefix(endpoint.ipv4.map(IpAddr::V4), endpoint.prefix_len),
        address_ipv6: with_prefix(endpoint.ipv6.map(IpAddr::V6), endpoint.prefix_len_v6),
        mac_address: endpoint
            .mac
            .map(|m| crate::model::format_mac(&m))
            .unwrap_or_default(),
    }
}

/// The plugin's `CreateEndpoint` answer as an [`EndpointDescription`].
pub fn endpoint_description(
    plugin: &str,
    resp: &api::CreateEndpointResponse,
) -> std::result::Result<EndpointDescription, PluginError> {
    const M: &str = "NetworkDriver.CreateEndpoint";
    let Some(i) = resp.interface.as_ref() else {
        return Ok(EndpointDescription::default());
    };
    let mac = match i.mac_address.as_str() {
        "" => None,
        m => Some(
            tapnet_types::model::parse_endpoint_mac(m)
                .map_err(|e| PluginError::bad(plugin, M, format!("Interface.MacAddress: {e}")))?,
        ),
    };
    let ipv4 = match i.address.as_str() {
        "" => None,
        a => Some(a.parse::<Ipv4Net>().map_err(|_| {
            PluginError::bad(
                plugin,
                M,
                format!("Interface.Address {a:?} is not an IPv4 address with prefix length"),
            )
        })?),
    };
    let ipv6 = match i.address_ipv6.as_str() {
        "" => None,
        a => Some(a.parse::<Ipv6Net>().map_err(|_| {
            PluginError::bad(
                plugin,
                M,
                format!("Interface.AddressIPv6 {a:?} is not an IPv6 address with prefix length"),
            )
        })?),
    };
    Ok(EndpointDescription { mac, ipv4, ipv6 })
}

impl Driver for RemoteDriver {
    fn name(&self) -> &str {
        &self.name
    }

    fn capabilities(&self) -> Capabilities {
        lock(&self.active)
            .as_ref()
            .map(|(_, c)| *c)
            .unwrap_or(Capabilities {
                gateway_service: false,
                ..Capabilities::default()
            })
    }

    fn create_network(&self, req: &NetworkRequest<'_>) -> Result<()> {
        let _: api::Empty = self.call(
            &format!("create network {}", req.network.name),
            "NetworkDriver.CreateNetwork",
            &create_network_request(req.network),
        )?;
        Ok(())
    }

    fn restore_network(&self, _req: &NetworkRequest<'_>) -> Result<()> {
        // The plugin keeps its networks; it is activated on first use.
        Ok(())
    }

    fn delete_network(&self, network_id: &str) -> Result<()> {
        let _: api::Empty = self.call(
            "delete network",
            "NetworkDriver.DeleteNetwork",
            &api::NetworkRequest {
                network_id: network_id.to_string(),
            },
        )?;
        Ok(())
    }

    fn create_endpoint(&self, req: &EndpointRequest<'_>) -> Result<EndpointDescription> {
        let mut options = api::Options::new();
        if let Some(m) = req.endpoint.mac {
            options.insert(
                api::OPT_MAC_ADDRESS.into(),
                Value::String(crate::model::format_mac(&m)),
            );
        }
        let resp: api::CreateEndpointResponse = self.call(
            "create endpoint",
            "NetworkDriver.CreateEndpoint",
            &api::CreateEndpointRequest {
                network_id: req.network.id.clone(),
                endpoint_id: req.endpoint.id.clone(),
                interface: Some(interface_of(req.endpoint)),
                options,
            },
        )?;
        // A bad answer (including one breaking Docker's fill-only rule, checked here so
        // the error names the plugin): the plugin's endpoint is ours to take back, as
        // the controller undoes only completed steps.
        let checked = endpoint_description(&self.name, &resp).and_then(|desc| {
            match desc.apply_to(&mut req.endpoint.clone()) {
                Ok(()) => Ok(desc),
                Err(e) => Err(PluginError::bad(
                    &self.name,
                    "NetworkDriver.CreateEndpoint",
                    format!("{e} (a plugin may only fill what the request left empty)"),
                )),
            }
        });
        checked.map_err(|e| {
            if let Err(de) = self.delete_endpoint(&req.network.id, &req.endpoint.id) {
                tracing::warn!(plugin = %self.name, error = %de, "delete endpoint after a bad answer");
            }
            plugin_err("create endpoint", e)
        })
    }

    fn join(&self, req: &JoinRequest<'_>) -> Result<JoinDescription> {
        let op = format!("join {}", req.sandbox_name);
        let resp: api::JoinResponse = self.call(
            &op,
            "NetworkDriver.Join",
            &api::JoinRequest {
                network_id: req.network.id.clone(),
                endpoint_id: req.endpoint.id.clone(),
                sandbox_key: req.sandbox_key().display().to_string(),
                options: api::Options::new(),
            },
        )?;
        let desc = self
            .describe(req.network, req.endpoint, &resp)
            .and_then(|desc| {
                let Some(InterfaceDescription {
                    source: InterfaceSource::MoveIn { host_name },
                    ..
                }) = &desc.interface
                else {
                    return Ok(desc);
                };
                // The device must be in tapnetd's namespace (this thread's).
                if nix::net::if_::if_nametoindex(host_name.as_str()).is_err() {
                    return Err(self.bad(
                        "NetworkDriver.Join",
                        format!("the interface it named (SrcName {host_name:?}) does not exist in tapnetd's namespace"),
                    ));
                }
                Ok(desc)
            })
            .map_err(|e| match e {
                Error::Plugin { source, .. } => plugin_err(&op, source),
                e => e,
            });
        let desc = match desc {
            Ok(d) => d,
            Err(e) => {
                // The controller undoes only completed steps: the plugin's join is
                // ours to take back.
                if let Err(le) = self.leave(&req.network.id, &req.endpoint.id) {
                    tracing::warn!(plugin = %self.name, error = %le, "leave after a bad join answer");
                }
                return Err(e);
            }
        };
        let path = self.state_path(&req.endpoint.id);
        let saved = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::write(&path, serde_json::to_vec(&resp).unwrap_or_default()));
        if let Err(e) = saved {
            tracing::warn!(plugin = %self.name, path = %path.display(), error = %e, "cannot record the join answer; a restarted daemon cannot undo this endpoint's setup");
        }
        Ok(desc)
    }

    fn restore_endpoint(&self, req: &JoinRequest<'_>) -> Result<RestoreDescription> {
        let path = self.state_path(&req.endpoint.id);
        let raw = std::fs::read(&path).map_err(|e| {
            Error::Driver(format!(
                "plugin \"{}\": no record of endpoint {}'s join ({}: {e})",
                self.name,
                req.endpoint.id,
                path.display()
            ))
        })?;
        let resp: api::JoinResponse = serde_json::from_slice(&raw).map_err(|e| {
            Error::Driver(format!("plugin \"{}\": {}: {e}", self.name, path.display()))
        })?;
        let join = self.describe(req.network, req.endpoint, &resp)?;
        Ok(RestoreDescription {
            how: Restored::Reopened,
            join,
        })
    }

    fn leave(&self, network_id: &str, endpoint_id: &str) -> Result<()> {
        let _: api::Empty = self.call(
            "leave",
            "NetworkDriver.Leave",
            &api::EndpointRequest {
                network_id: network_id.to_string(),
                endpoint_id: endpoint_id.to_string(),
            },
        )?;
        let _ = std::fs::remove_file(self.state_path(endpoint_id));
        Ok(())
    }

    fn delete_endpoint(&self, network_id: &str, endpoint_id: &str) -> Result<()> {
        let _: api::Empty = self.call(
            "delete endpoint",
            "NetworkDriver.DeleteEndpoint",
            &api::EndpointRequest {
                network_id: network_id.to_string(),
                endpoint_id: endpoint_id.to_string(),
            },
        )?;
        Ok(())
    }

    fn program_external_connectivity(
        &self,
        network_id: &str,
        endpoint: &Endpoint,
        ports: &[PortBinding],
    ) -> Result<()> {
        self.program_external(network_id, endpoint, ports)
    }

    fn revoke_external_connectivity(&self, network_id: &str, endpoint_id: &str) -> Result<()> {
        self.revoke_external(network_id, endpoint_id)
    }

    fn endpoint_info(
        &self,
        network_id: &str,
        endpoint_id: &str,
    ) -> Result<BTreeMap<String, Value>> {
        self.oper_info(network_id, endpoint_id)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::remote::PluginConfig;

    fn network() -> Network {
        Network {
            id: "n1".into(),
            name: "rnet".into(),
            driver: "p".into(),
            created: String::new(),
            scope: "local".into(),
            internal: false,
            attachable: false,
            enable_ipv6: false,
            ipam_driver: "default".into(),
            ipam_options: BTreeMap::new(),
            subnet: Some("10.61.0.0/24".parse().unwrap()),
            gateway: Some(Ipv4Addr::new(10, 61, 0, 1)),
            ip_range: None,
            aux_addresses: BTreeMap::from([("printer".into(), Ipv4Addr::new(10, 61, 0, 9))]),
            ipv4_pool: None,
            ipv6: None,
            options: BTreeMap::from([("color".into(), "blue".into())]),
            labels: BTreeMap::new(),
            endpoints: BTreeMap::new(),
            ..Network::default()
        }
    }

    fn endpoint() -> Endpoint {
        Endpoint {
            id: "e1".into(),
            network_id: "n1".into(),
            sandbox_id: "s".into(),
            interface: String::new(),
            mac: Some([2, 0x42, 10, 61, 0, 2]),
            ipv4: Some(Ipv4Addr::new(10, 61, 0, 2)),
            prefix_len: 24,
            ipv6: None,
            prefix_len_v6: 0,
            aliases: Vec::new(),
            ..Endpoint::default()
        }
    }

    fn driver() -> RemoteDriver {
        let cfg = PluginConfig::new(std::path::Path::new("/nonexistent"));
        RemoteDriver::new("p", Arc::new(Plugins::new(cfg)))
    }

    #[test]
    fn create_network_body_is_dockers() {
        let v = serde_json::to_value(create_network_request(&network())).unwrap();
        assert_eq!(v["NetworkID"], "n1");
        assert_eq!(v["IPv4Data"][0]["Pool"], "10.61.0.0/24");
        assert_eq!(v["IPv4Data"][0]["Gateway"], "10.61.0.1/24");
        assert_eq!(v["IPv4Data"][0]["AuxAddresses"]["printer"], "10.61.0.9/24");
        assert_eq!(v["IPv6Data"], serde_json::json!([]));
        assert_eq!(v["Options"][api::OPT_GENERIC]["color"], "blue");
        assert_eq!(v["Options"][api::OPT_ENABLE_IPV6], false);
        let i = serde_json::to_value(interface_of(&endpoint())).unwrap();
        assert_eq!(
            i,
            serde_json::json!({"Address": "10.61.0.2/24", "AddressIPv6": "", "MacAddress": "02:42:0a:3d:00:02"})
        );
    }

    #[test]
    fn capabilities_answer() {
        let caps = |s: &str, c: &str| {
            capabilities_of(
                "p",
                &api::CapabilitiesResponse {
                    scope: s.into(),
                    connectivity_scope: c.into(),
                },
            )
        };
        let l = caps("local", "").unwrap();
        assert_eq!(
            (l.scope, l.connectivity_scope),
            (Scope::Local, Scope::Local)
        );
        assert!(l.needs_addresses && !l.gateway_service && !l.single_instance);
        let g = caps("global", "").unwrap();
        assert_eq!(g.connectivity_scope, Scope::Global);
        assert_eq!(
            caps("local", "global").unwrap().connectivity_scope,
            Scope::Global
        );
        let e = caps("swarm", "").unwrap_err();
        assert_eq!(e.status(), 502);
        assert!(e.to_string().contains("invalid Scope \"swarm\""), "{e}");
    }

    #[test]
    fn endpoint_answer() {
        let empty = api::CreateEndpointResponse::default();
        assert_eq!(
            endpoint_description("p", &empty).unwrap(),
            EndpointDescription::default()
        );
        let chosen = api::CreateEndpointResponse {
            interface: Some(api::EndpointInterface {
                address: "10.61.0.7/24".into(),
                address_ipv6: String::new(),
                mac_address: "02:00:00:00:00:07".into(),
            }),
        };
        let d = endpoint_description("p", &chosen).unwrap();
        assert_eq!(d.ipv4, Some("10.61.0.7/24".parse().unwrap()));
        assert_eq!(d.mac, Some([2, 0, 0, 0, 0, 7]));
        // Adopted where the endpoint had nothing.
        let mut ep = Endpoint {
            ipv4: None,
            mac: None,
            ..endpoint()
        };
        d.apply_to(&mut ep).unwrap();
        assert_eq!(ep.ipv4, Some(Ipv4Addr::new(10, 61, 0, 7)));
        // Nonsense is refused by field.
        for (field, bad) in [("Address", "10.61.0.7"), ("MacAddress", "zz")] {
            let mut i = api::EndpointInterface::default();
            match field {
                "Address" => i.address = bad.into(),
                _ => i.mac_address = bad.into(),
            }
            let e = endpoint_description("p", &api::CreateEndpointResponse { interface: Some(i) })
                .unwrap_err();
            assert!(e.to_string().contains(field), "{e}");
        }
    }

    #[test]
    fn join_answer() {
        let d = driver();
        let resp = api::JoinResponse {
            interface_name: Some(api::InterfaceName {
                src_name: "veth1".into(),
                dst_prefix: "eth".into(),
            }),
            gateway: "10.61.0.1".into(),
            gateway_ipv6: String::new(),
            static_routes: vec![
                api::StaticRoute {
                    destination: "10.99.0.0/24".into(),
                    route_type: api::ROUTE_NEXT_HOP,
                    next_hop: "10.61.0.1".into(),
                },
                api::StaticRoute {
                    destination: "10.98.0.0/24".into(),
                    route_type: api::ROUTE_CONNECTED,
                    next_hop: String::new(),
                },
            ],
            disable_gateway_service: true,
        };
        let j = d.describe(&network(), &endpoint(), &resp).unwrap();
        let i = j.interface.as_ref().unwrap();
        assert_eq!(
            i.source,
            InterfaceSource::MoveIn {
                host_name: "veth1".into()
            }
        );
        assert_eq!(i.dst_prefix, "eth");
        assert_eq!(i.addresses, vec!["10.61.0.2/24".parse::<IpNet>().unwrap()]);
        assert_eq!(
            i.mtu, None,
            "no MTU option: the plugin's device keeps its own"
        );
        assert_eq!(j.gateway_v4, Some(Ipv4Addr::new(10, 61, 0, 1)));
        assert_eq!(
            j.static_routes[0].next_hop,
            Some(IpAddr::V4(Ipv4Addr::new(10, 61, 0, 1)))
        );
        assert_eq!(j.static_routes[1].next_hop, None);
        assert!(j.disable_gateway_service);
        // Nonsense: no interface, a bad gateway, a bad route type, a next hop missing.
        let mut bad = resp.clone();
        bad.interface_name = None;
        assert!(d
            .describe(&network(), &endpoint(), &bad)
            .unwrap_err()
            .to_string()
            .contains("SrcName"));
        let mut bad = resp.clone();
        bad.gateway = "nope".into();
        assert!(d
            .describe(&network(), &endpoint(), &bad)
            .unwrap_err()
            .to_string()
            .contains("Gateway"));
        let mut bad = resp.clone();
        bad.static_routes[1].route_type = 7;
        assert!(d
            .describe(&network(), &endpoint(), &bad)
            .unwrap_err()
            .to_string()
            .contains("RouteType 7"));
        let mut bad = resp;
        bad.static_routes[0].next_hop = String::new();
        let e = d.describe(&network(), &endpoint(), &bad).unwrap_err();
        assert_eq!(e.status(), 502);
        assert!(e.to_string().contains("NextHop"), "{e}");
    }
}
