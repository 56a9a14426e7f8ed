//! `NetworkDriver.*`: Docker's remote network driver calls, mapped onto the
//! [`crate::Controller`].
//!
//! | dockerd | tapnet |
//! |---|---|
//! | `CreateNetwork` | create a `bridge` network with id `NetworkID`, the pool and gateway of `IPv4Data` (`IPv6Data`: IPv6 on), `-o` options as driver options (only [`SUPPORTED_OPTIONS`]; others refused by name; values checked by the driver), `internal`; name `docker-<id>` until dockerd's name is read ([`super::dockerd`]) |
//! | `DeleteNetwork` | remove it |
//! | `CreateEndpoint` | remember the endpoint's address and MAC until `Join`; answer the MAC tapnet will give it when dockerd gave none |
//! | `Join` | adopt `SandboxKey` as a hand-off sandbox (once per namespace; named after the container once dockerd lists it), connect it with `EndpointID` and the remembered address/MAC; answer `InterfaceName` {the tap made in tapnetd's namespace, `eth`} and the network's gateways |
//! | `ProgramExternalConnectivity` | publish `com.docker.network.portmap` at the network's gateway |
//! | `RevokeExternalConnectivity` | unpublish |
//! | `Leave` | disconnect (the tap is destroyed); the sandbox goes with its last endpoint |
//! | `DeleteEndpoint` | forget it (and disconnect it if `Leave` never came) |
//! | `EndpointOperInfo` | the tapnet sandbox and interface |
//! | `DiscoverNew`/`DiscoverDelete` | nothing to do |

use super::{dockerd, parse, Plugin, PluginError, PluginResult};
use crate::controller::{ConnectOptions, Ipv6Request, NetworkCreate};
use crate::error::Error;
use crate::model::{self, Endpoint};
use crate::ports::{PortBinding, PortProto};
use ipnet::{Ipv4Net, Ipv6Net};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use tapnet_types::plugin::{
    self as proto, CapabilitiesResponse, CreateEndpointRequest, CreateEndpointResponse,
    CreateNetworkRequest, DiscoveryRequest, Empty, EndpointInfoResponse, EndpointInterface,
    EndpointRequest, ExternalConnectivityRequest, InterfaceName, JoinRequest, JoinResponse,
    NetworkRequest, PortMap,
};

/// The label marking networks the plugin created (value: `true`).
pub const PLUGIN_LABEL: &str = "com.tapnet.docker-plugin";

/// An endpoint between `CreateEndpoint` and `Join`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pending {
    network_id: String,
    ipv4: Option<Ipv4Net>,
    ipv6: Option<Ipv6Net>,
    mac: Option<[u8; 6]>,
}

/// The plugin's own network state: endpoints created and not joined yet, and a lock
/// that serializes the adoption of sandboxes.
#[derive(Debug, Default)]
pub struct State {
    pending: Mutex<HashMap<String, Pending>>,
    adopt: tokio::sync::Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `GetCapabilities`: local scope.
pub fn capabilities() -> CapabilitiesResponse {
    CapabilitiesResponse {
        scope: "local".into(),
        connectivity_scope: "local".into(),
    }
}

fn need_id(kind: &str, id: &str) -> PluginResult<()> {
    model::validate_id(kind, id).map_err(PluginError::from)
}

fn bool_option(options: &proto::Options, key: &str) -> PluginResult<bool> {
    match options.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::String(s)) => model::parse_bool_option(key, s).map_err(PluginError::from),
        Some(other) => Err(PluginError::bad(format!(
            "option {key} must be a boolean, not {other}"
        ))),
    }
}

/// The user's `-o` options (`com.docker.network.generic`): strings only.
fn generic_options(options: &proto::Options) -> PluginResult<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    match options.get(proto::OPT_GENERIC) {
        None | Some(Value::Null) => {}
        Some(Value::Object(map)) => {
            for (k, v) in map {
                match v {
                    Value::String(s) => {
                        out.insert(k.clone(), s.clone());
                    }
                    other => {
                        return Err(PluginError::bad(format!(
                            "driver option {k} must be a string, not {other}"
                        )))
                    }
                }
            }
        }
        Some(other) => {
            return Err(PluginError::bad(format!(
                "{} must be an object of driver options, not {other}",
                proto::OPT_GENERIC
            )))
        }
    }
    Ok(out)
}

/// The `-o` options a plugin network takes: the ones tapnet's bridge driver
/// implements. Any other is refused by name (dockerd's bridge options such as
/// `com.docker.network.bridge.name` mean nothing to a userspace switch).
pub const SUPPORTED_OPTIONS: [&str; 3] = [
    model::MTU_OPTION,
    model::ICC_OPTION,
    model::PORT_SECURITY_OPTION,
];

/// Refuse the options tapnet does not implement, naming them.
fn check_options(options: &BTreeMap<String, String>) -> PluginResult<()> {
    let unknown: Vec<&str> = options
        .keys()
        .map(String::as_str)
        .filter(|k| !SUPPORTED_OPTIONS.contains(k))
        .collect();
    match unknown.as_slice() {
        [] => Ok(()),
        names => Err(PluginError::bad(format!(
            "driver option{} {} not supported by tapnet (it takes {})",
            if names.len() > 1 { "s" } else { "" },
            names.join(", "),
            SUPPORTED_OPTIONS.join(", ")
        ))),
    }
}

/// The request a `CreateNetwork` body makes (pure: no state read).
pub fn network_request(req: &CreateNetworkRequest) -> PluginResult<NetworkCreate> {
    let v4 = match req.ipv4_data.as_slice() {
        [one] => one,
        [] => {
            return Err(PluginError::bad(
                "CreateNetwork without an IPv4 pool (IPv4Data): tapnet networks need one",
            ))
        }
        more => {
            return Err(PluginError::bad(format!(
                "CreateNetwork with {} IPv4 pools: a tapnet network has one IPv4 subnet",
                more.len()
            )))
        }
    };
    let subnet: Ipv4Net = v4
        .pool
        .parse()
        .map_err(|e| PluginError::bad(format!("IPv4Data.Pool {:?}: {e}", v4.pool)))?;
    let gateway = match v4.gateway.as_str() {
        "" => None,
        g => Some(
            g.parse::<Ipv4Net>()
                .map(|n| n.addr())
                .or_else(|_| g.parse::<Ipv4Addr>())
                .map_err(|e| PluginError::bad(format!("IPv4Data.Gateway {g:?}: {e}")))?,
        ),
    };
    let mut aux_addresses = BTreeMap::new();
    for (name, a) in &v4.aux_addresses {
        let ip = a
            .parse::<Ipv4Net>()
            .map(|n| n.addr())
            .or_else(|_| a.parse::<Ipv4Addr>())
            .map_err(|e| PluginError::bad(format!("IPv4Data.AuxAddresses[{name}] {a:?}: {e}")))?;
        aux_addresses.insert(name.clone(), ip);
    }
    let ipv6 = match req.ipv6_data.as_slice() {
        [] => None,
        [one] => {
            let subnet: Ipv6Net = one
                .pool
                .parse()
                .map_err(|e| PluginError::bad(format!("IPv6Data.Pool {:?}: {e}", one.pool)))?;
            let gateway = match one.gateway.as_str() {
                "" => None,
                g => Some(
                    g.parse::<Ipv6Net>()
                        .map(|n| n.addr())
                        .or_else(|_| g.parse())
                        .map_err(|e| PluginError::bad(format!("IPv6Data.Gateway {g:?}: {e}")))?,
                ),
            };
            Some(Ipv6Request {
                subnet,
                gateway,
                ip_range: None,
                aux_addresses: BTreeMap::new(),
            })
        }
        more => {
            return Err(PluginError::bad(format!(
                "CreateNetwork with {} IPv6 pools: a tapnet network has at most one",
                more.len()
            )))
        }
    };
    let mut labels = BTreeMap::new();
    labels.insert(PLUGIN_LABEL.to_string(), "true".to_string());
    Ok(NetworkCreate {
        name: dockerd::placeholder_name(&req.network_id),
        driver: "bridge".into(),
        subnet: Some(subnet),
        gateway,
        aux_addresses,
        enable_ipv6: ipv6.is_some(),
        ipv6,
        options: {
            let o = generic_options(&req.options)?;
            check_options(&o)?;
            o
        },
        labels,
        internal: bool_option(&req.options, proto::OPT_INTERNAL)?,
        ..NetworkCreate::default()
    })
}

/// `CreateNetwork`.
pub async fn create_network(p: &Plugin, body: &[u8]) -> PluginResult<Empty> {
    let req: CreateNetworkRequest = parse("NetworkDriver.CreateNetwork", body)?;
    need_id("network", &req.network_id)?;
    let create = network_request(&req)?;
    if let Ok(existing) = p.ctl.network(&req.network_id).await {
        // A replay (dockerd restarting): the same network is fine.
        if existing.subnet == create.subnet && existing.labels.contains_key(PLUGIN_LABEL) {
            return Ok(Empty {});
        }
        return Err(PluginError::from(Error::Conflict(format!(
            "network {} exists with another configuration",
            req.network_id
        ))));
    }
    let id = p
        .ctl
        .create_network_as(req.network_id.clone(), create)
        .await?;
    if let Some(docker) = &p.docker {
        tokio::spawn(dockerd::name_later(p.ctl.clone(), docker.clone(), id));
    }
    Ok(Empty {})
}

/// `DeleteNetwork`: a network that is gone already is fine.
pub async fn delete_network(p: &Plugin, body: &[u8]) -> PluginResult<Empty> {
    let req: NetworkRequest = parse("NetworkDriver.DeleteNetwork", body)?;
    need_id("network", &req.network_id)?;
    let net = match p.ctl.network(&req.network_id).await {
        Ok(n) if n.id == req.network_id => n,
        _ => return Ok(Empty {}),
    };
    if !net.labels.contains_key(PLUGIN_LABEL) {
        return Err(PluginError::from(Error::Forbidden(format!(
            "network {} was not made by tapnet's Docker plugin",
            net.name
        ))));
    }
    p.ctl.delete_network(&net.id).await?;
    Ok(Empty {})
}

fn parse_interface(i: &EndpointInterface) -> PluginResult<Pending> {
    let ipv4 = match i.address.as_str() {
        "" => None,
        a => Some(
            a.parse::<Ipv4Net>()
                .map_err(|e| PluginError::bad(format!("Interface.Address {a:?}: {e}")))?,
        ),
    };
    let ipv6 = match i.address_ipv6.as_str() {
        "" => None,
        a => Some(
            a.parse::<Ipv6Net>()
                .map_err(|e| PluginError::bad(format!("Interface.AddressIPv6 {a:?}: {e}")))?,
        ),
    };
    let mac = match i.mac_address.as_str() {
        "" => None,
        m => Some(
            model::parse_endpoint_mac(m)
                .map_err(|why| PluginError::bad(format!("Interface.MacAddress {m:?}: {why}")))?,
        ),
    };
    Ok(Pending {
        network_id: String::new(),
        ipv4,
        ipv6,
        mac,
    })
}

/// `CreateEndpoint`: checked and remembered until `Join`.
pub async fn create_endpoint(p: &Plugin, body: &[u8]) -> PluginResult<CreateEndpointResponse> {
    let req: CreateEndpointRequest = parse("NetworkDriver.CreateEndpoint", body)?;
    need_id("network", &req.network_id)?;
    need_id("endpoint", &req.endpoint_id)?;
    let net = p.ctl.network(&req.network_id).await?;
    let mut pending = match &req.interface {
        Some(i) => parse_interface(i)?,
        None => parse_interface(&EndpointInterface::default())?,
    };
    pending.network_id = net.id.clone();
    if let (Some(a), Some(subnet)) = (pending.ipv4, net.subnet) {
        if !subnet.contains(&a.addr()) || a.prefix_len() != subnet.prefix_len() {
            return Err(PluginError::bad(format!(
                "Interface.Address {a} is not in network {}'s subnet {subnet}",
                net.name
            )));
        }
    }
    if pending.ipv4.is_none() {
        return Err(PluginError::bad(
            "CreateEndpoint without an IPv4 address: tapnet's endpoints get theirs from IPAM (dockerd's or tapnet's)",
        ));
    }
    if let Some(mac) = pending.mac {
        if net.endpoints.values().any(|e| e.mac == Some(mac)) {
            return Err(PluginError::from(Error::Conflict(format!(
                "MAC address {} is already used on network {}",
                model::format_mac(&mac),
                net.name
            ))));
        }
    }
    // dockerd takes a MAC from the driver only where it gave none.
    let chosen = match pending.mac {
        Some(_) => None,
        None => pending.ipv4.map(|a| model::mac_for(a.addr())),
    };
    if chosen.is_some() {
        pending.mac = chosen;
    }
    lock(&p.net.pending).insert(req.endpoint_id.clone(), pending);
    Ok(CreateEndpointResponse {
        interface: chosen.map(|m| EndpointInterface {
            mac_address: model::format_mac(&m),
            ..EndpointInterface::default()
        }),
    })
}

/// The endpoint `id` and the id of its sandbox, if tapnet has it.
async fn joined(p: &Plugin, id: &str) -> Option<(String, Endpoint)> {
    let store = p.ctl.snapshot().await;
    store
        .networks
        .values()
        .find_map(|n| n.endpoints.get(id))
        .map(|e| (e.sandbox_id.clone(), e.clone()))
}

/// `EndpointOperInfo`.
pub async fn endpoint_info(p: &Plugin, body: &[u8]) -> PluginResult<EndpointInfoResponse> {
    let req: EndpointRequest = parse("NetworkDriver.EndpointOperInfo", body)?;
    need_id("endpoint", &req.endpoint_id)?;
    let mut value = BTreeMap::new();
    if let Some((sid, ep)) = joined(p, &req.endpoint_id).await {
        value.insert("com.tapnet.sandbox".to_string(), Value::String(sid));
        value.insert(
            "com.tapnet.interface".to_string(),
            Value::String(ep.interface),
        );
    } else if !lock(&p.net.pending).contains_key(&req.endpoint_id) {
        return Err(PluginError::from(Error::NotFound(format!(
            "endpoint {} not found",
            req.endpoint_id
        ))));
    }
    Ok(EndpointInfoResponse { value })
}

/// Take endpoint `id` off tapnet (disconnect; its sandbox goes with its last
/// endpoint). Nothing there: nothing to do.
pub(super) async fn release(p: &Plugin, id: &str, why: &str) -> PluginResult<()> {
    // (a join must not find the sandbox this removes)
    let _one = p.net.adopt.lock().await;
    let Some((sid, ep)) = joined(p, id).await else {
        return Ok(());
    };
    match p.ctl.disconnect(&ep.network_id, &sid, true).await {
        Ok(()) | Err(Error::NotFound(_)) => {}
        Err(e) => return Err(e.into()),
    }
    tracing::info!(endpoint = %id, ip = ?ep.ipv4, "{why}: endpoint released");
    let store = p.ctl.snapshot().await;
    if store.sandboxes.contains_key(&sid) && store.endpoints_of_sandbox(&sid).is_empty() {
        match p.ctl.delete_sandbox(&sid).await {
            Ok(()) | Err(Error::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// `DeleteEndpoint`: forgotten (and released if `Leave` never came).
pub async fn delete_endpoint(p: &Plugin, body: &[u8]) -> PluginResult<Empty> {
    let req: EndpointRequest = parse("NetworkDriver.DeleteEndpoint", body)?;
    need_id("endpoint", &req.endpoint_id)?;
    release(p, &req.endpoint_id, "DeleteEndpoint without Leave").await?;
    lock(&p.net.pending).remove(&req.endpoint_id);
    Ok(Empty {})
}

/// A sandbox name for the namespace at `key`: `docker-` + its file name.
fn sandbox_name(key: &std::path::Path, endpoint_id: &str) -> String {
    let base: String = key
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        .take(64)
        .collect();
    match base.is_empty() {
        true => format!("docker-{}", &endpoint_id[..12]),
        false => format!("docker-{base}"),
    }
}

/// `Join`.
pub async fn join(p: &Plugin, body: &[u8]) -> PluginResult<JoinResponse> {
    let req: JoinRequest = parse("NetworkDriver.Join", body)?;
    need_id("network", &req.network_id)?;
    need_id("endpoint", &req.endpoint_id)?;
    let key = PathBuf::from(&req.sandbox_key);
    if !key.is_absolute() {
        return Err(PluginError::bad(format!(
            "SandboxKey {:?} must be an absolute path",
            req.sandbox_key
        )));
    }
    let pending = lock(&p.net.pending)
        .get(&req.endpoint_id)
        .cloned()
        .ok_or_else(|| {
            PluginError::from(Error::NotFound(format!(
                "endpoint {} was not created (CreateEndpoint) or was deleted",
                req.endpoint_id
            )))
        })?;
    if pending.network_id != req.network_id {
        return Err(PluginError::bad(format!(
            "endpoint {} belongs to network {}, not {}",
            req.endpoint_id, pending.network_id, req.network_id
        )));
    }
    let net = p.ctl.network(&req.network_id).await?;
    let _one = p.net.adopt.lock().await;
    let store = p.ctl.snapshot().await;
    let existing = store
        .sandboxes
        .values()
        .find(|s| s.handoff && s.netns_path == key)
        .map(|s| s.id.clone());
    let (sid, adopted) = match existing {
        Some(sid) => (sid, false),
        None => {
            let name = sandbox_name(&key, &req.endpoint_id);
            (p.ctl.adopt_handoff_sandbox(name, key.clone()).await?, true)
        }
    };
    let opts = ConnectOptions {
        ipv4: pending.ipv4.map(|a| a.addr()),
        ipv6: pending.ipv6.map(|a| a.addr()),
        mac: pending.mac,
        aliases: Vec::new(),
        ifname: None,
        link_local_ips: Vec::new(),
    };
    let ep = match p
        .ctl
        .connect_as(&net.id, &sid, opts, req.endpoint_id.clone())
        .await
    {
        Ok(ep) => ep,
        Err(e) => {
            if adopted {
                if let Err(cleanup) = p.ctl.delete_sandbox(&sid).await {
                    tracing::warn!(error = %cleanup, "removing the sandbox of a failed join");
                }
            }
            return Err(e.into());
        }
    };
    if let (true, Some(docker)) = (adopted, &p.docker) {
        tokio::spawn(dockerd::sandbox_name_later(
            p.ctl.clone(),
            docker.clone(),
            net.id.clone(),
            ep.id.clone(),
        ));
    }
    Ok(JoinResponse {
        interface_name: Some(InterfaceName {
            src_name: ep.interface,
            dst_prefix: "eth".into(),
        }),
        gateway: net.gateway.map(|g| g.to_string()).unwrap_or_default(),
        gateway_ipv6: match (&net.ipv6, ep.ipv6) {
            (Some(c), Some(_)) => c.gateway.to_string(),
            _ => String::new(),
        },
        static_routes: Vec::new(),
        disable_gateway_service: false,
    })
}

/// `Leave`: the endpoint is released (a left endpoint can join again until
/// `DeleteEndpoint`).
pub async fn leave(p: &Plugin, body: &[u8]) -> PluginResult<Empty> {
    let req: EndpointRequest = parse("NetworkDriver.Leave", body)?;
    need_id("endpoint", &req.endpoint_id)?;
    release(p, &req.endpoint_id, "Leave").await?;
    Ok(Empty {})
}

/// `DiscoverNew` / `DiscoverDelete`: nothing to do for local networks.
pub fn discover(method: &str, body: &[u8]) -> PluginResult<Empty> {
    let _: DiscoveryRequest = parse(method, body)?;
    Ok(Empty {})
}

/// The bindings of `com.docker.network.portmap`.
pub fn port_bindings(options: &proto::Options) -> PluginResult<Vec<PortBinding>> {
    let maps: Vec<PortMap> = match options.get(proto::OPT_PORTMAP) {
        None | Some(Value::Null) => Vec::new(),
        Some(v) => serde_json::from_value(v.clone()).map_err(|e| {
            PluginError::bad(format!(
                "{} is not a list of port maps: {e}",
                proto::OPT_PORTMAP
            ))
        })?,
    };
    let mut out: Vec<PortBinding> = Vec::new();
    for m in maps {
        let proto = match m.proto {
            proto::PROTO_TCP => PortProto::Tcp,
            proto::PROTO_UDP => PortProto::Udp,
            proto::PROTO_SCTP => {
                return Err(PluginError::bad(format!(
                    "port {}/sctp: tapnet's gateway publishes TCP and UDP ports only",
                    m.port
                )))
            }
            other => {
                return Err(PluginError::bad(format!(
                    "port {}: unknown protocol number {other}",
                    m.port
                )))
            }
        };
        if m.port == 0 {
            return Err(PluginError::bad("a published port needs a container port"));
        }
        if m.host_port_end != 0 && m.host_port_end != m.host_port {
            return Err(PluginError::bad(format!(
                "host port range {}-{}: tapnet publishes one host port per container port",
                m.host_port, m.host_port_end
            )));
        }
        let host_ip: IpAddr = match m.host_ip.as_str() {
            "" => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            h => h
                .parse()
                .map_err(|e| PluginError::bad(format!("HostIP {h:?}: {e}")))?,
        };
        let b = PortBinding {
            port: m.port,
            proto,
            host_ip,
            host_port: m.host_port,
        };
        if !out.contains(&b) {
            out.push(b);
        }
    }
    Ok(out)
}

/// `ProgramExternalConnectivity`: publish the ports at the network's gateway.
pub async fn program_external(p: &Plugin, body: &[u8]) -> PluginResult<Empty> {
    let req: ExternalConnectivityRequest =
        parse("NetworkDriver.ProgramExternalConnectivity", body)?;
    need_id("endpoint", &req.endpoint_id)?;
    let bindings = port_bindings(&req.options)?;
    let (sid, ep) = joined(p, &req.endpoint_id).await.ok_or_else(|| {
        PluginError::from(Error::NotFound(format!(
            "endpoint {} has not joined",
            req.endpoint_id
        )))
    })?;
    if bindings.is_empty() {
        return Ok(Empty {});
    }
    p.ctl.publish_ports(&ep.network_id, &sid, bindings).await?;
    Ok(Empty {})
}

/// `RevokeExternalConnectivity`: unpublish (nothing joined: nothing to do).
pub async fn revoke_external(p: &Plugin, body: &[u8]) -> PluginResult<Empty> {
    let req: EndpointRequest = parse("NetworkDriver.RevokeExternalConnectivity", body)?;
    need_id("endpoint", &req.endpoint_id)?;
    if let Some((sid, _)) = joined(p, &req.endpoint_id).await {
        match p.ctl.unpublish_ports(&sid).await {
            Ok(()) | Err(Error::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Empty {})
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn create_network_maps_pools_and_options() {
        let req: CreateNetworkRequest = serde_json::from_str(
            r#"{"NetworkID":"ab","Options":{"com.docker.network.enable_ipv6":false,
               "com.docker.network.generic":{"com.docker.network.driver.mtu":"1400"}},
               "IPv4Data":[{"AddressSpace":"LocalDefault","Pool":"10.60.0.0/24",
               "Gateway":"10.60.0.1/24","AuxAddresses":{"r":"10.60.0.9/24"}}],"IPv6Data":[]}"#,
        )
        .unwrap();
        let c = network_request(&req).unwrap();
        assert_eq!(c.subnet, Some("10.60.0.0/24".parse().unwrap()));
        assert_eq!(c.gateway, Some(Ipv4Addr::new(10, 60, 0, 1)));
        assert_eq!(c.aux_addresses["r"], Ipv4Addr::new(10, 60, 0, 9));
        assert_eq!(c.options["com.docker.network.driver.mtu"], "1400");
        assert_eq!(c.driver, "bridge");
        assert!(!c.enable_ipv6);
        // No pool, two pools, a bad pool, a non-string option: refused by name.
        let mut r = req.clone();
        r.ipv4_data.clear();
        assert!(network_request(&r)
            .unwrap_err()
            .message
            .contains("IPv4Data"));
        let mut r = req.clone();
        r.ipv4_data.push(r.ipv4_data[0].clone());
        assert!(network_request(&r).is_err());
        let mut r = req.clone();
        r.ipv4_data[0].pool = "10.60.0.0/99".into();
        assert!(network_request(&r).unwrap_err().message.contains("Pool"));
        let mut r = req;
        r.options
            .insert(proto::OPT_GENERIC.into(), serde_json::json!({"mtu": 1400}));
        assert!(network_request(&r).unwrap_err().message.contains("mtu"));
        r.options.insert(
            proto::OPT_GENERIC.into(),
            serde_json::json!({"com.docker.network.bridge.name": "br9", "foo": "1"}),
        );
        let e = network_request(&r).unwrap_err().message;
        assert!(e.contains("com.docker.network.bridge.name, foo"), "{e}");
    }

    #[test]
    fn portmap_to_bindings() {
        let mut o = proto::Options::new();
        o.insert(
            proto::OPT_PORTMAP.into(),
            serde_json::json!([
                {"Proto":6,"IP":"","Port":80,"HostIP":"","HostPort":8080,"HostPortEnd":8080},
                {"Proto":17,"IP":"","Port":53,"HostIP":"127.0.0.1","HostPort":0,"HostPortEnd":0}
            ]),
        );
        let b = port_bindings(&o).unwrap();
        assert_eq!(b.len(), 2);
        assert_eq!(
            (b[0].port, b[0].host_port, b[0].proto),
            (80, 8080, PortProto::Tcp)
        );
        assert_eq!(b[1].host_ip, IpAddr::V4(Ipv4Addr::LOCALHOST));
        o.insert(
            proto::OPT_PORTMAP.into(),
            serde_json::json!([{"Proto":132,"Port":80}]),
        );
        assert!(port_bindings(&o).unwrap_err().message.contains("sctp"));
        o.insert(
            proto::OPT_PORTMAP.into(),
            serde_json::json!([{"Proto":6,"Port":80,"HostPort":8000,"HostPortEnd":8010}]),
        );
        assert!(port_bindings(&o).unwrap_err().message.contains("range"));
    }
}
