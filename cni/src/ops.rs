//! The CNI operations, done by asking tapnetd over its API socket.
//!
//! Contract:
//! * One attachment `(CNI_CONTAINERID, CNI_IFNAME)` is one tapnet sandbox named
//!   [`sandbox_name`] (`cni-<id>-<ifname>`, or `cni-<hash>` when that is not a valid
//!   sandbox name) that adopts `CNI_NETNS` and has one endpoint, on the configured
//!   network, whose interface is `CNI_IFNAME` (endpoint driver option
//!   `com.docker.network.endpoint.ifname`). The `cni-` prefix marks sandboxes
//!   tapnet-cni made; GC removes only those.
//! * ADD checks the network exists (else code 7) and the namespace exists (else 3)
//!   before creating anything; when the connect or anything after it fails the
//!   sandbox is removed again, so a failed ADD leaves nothing in tapnet.
//! * DEL removes the sandbox (tapnetd disconnects it first); a sandbox that does not
//!   exist is success, so DEL is idempotent, also after the namespace is gone.
//! * CHECK compares tapnet's record, the namespace and `prevResult`; any difference
//!   is code 100 naming it.
//! * tapnetd unreachable is code 11 (try again later) for ADD, DEL, CHECK and GC
//!   and 51 for STATUS; its refusals map to CNI codes with its message kept
//!   ([`daemon_err`]).

use crate::client::{seg, Client, ClientError};
use crate::config::{Attachment, Env, NetConf};
use crate::error::{
    CniError, Result, ATTACHMENT_MISMATCH, INVALID_CONFIG, INVALID_ENV, NOT_AVAILABLE,
    NOT_AVAILABLE_DEGRADED, OTHER, TRY_AGAIN, UNKNOWN_CONTAINER,
};
use crate::result::{parse_resolv_conf, shape, Attached, CniResult, Dns};
use serde_json::Value;
use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use tapnet_sandbox::netlink::{format_mac, Handle, Link};
use tapnet_sandbox::netns::Netns;
use tapnet_types::api::{
    ConnectBody, CreateSandboxResponse, EndpointConfigBody, EndpointIpamBody, NetworkResource,
    SandboxCreateBody, SandboxEndpointResource, SandboxResource,
};
use tapnet_types::ports::{PortBindingBody, PortBindingsBody};

/// The endpoint driver option naming the interface in the sandbox.
pub const IFNAME_OPTION: &str = "com.docker.network.endpoint.ifname";

/// The prefix of every sandbox tapnet-cni creates.
pub const PREFIX: &str = "cni-";

/// The tapnet sandbox name of the attachment `(container_id, ifname)`.
pub fn sandbox_name(container_id: &str, ifname: &str) -> String {
    let plain = format!("{PREFIX}{container_id}-{ifname}");
    let valid = plain.len() <= 128
        && plain
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if valid {
        return plain;
    }
    let d = ring::digest::digest(
        &ring::digest::SHA256,
        format!("{container_id}\0{ifname}").as_bytes(),
    );
    let hex: String = d.as_ref()[..20]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{PREFIX}{hex}")
}

/// A tapnetd failure as a CNI error: unreachable → 11; 400/403/404 → 7 (the
/// configuration names something tapnet refuses or does not have); 503 → 11
/// (no free address, store down); anything else → 999. The daemon's message is the
/// details.
pub fn daemon_err(what: &str, e: ClientError) -> CniError {
    match &e {
        ClientError::Connect { .. } => CniError::new(
            TRY_AGAIN,
            "tapnetd is not reachable",
            format!("{what}: {e}"),
        ),
        ClientError::Daemon { status, message } => {
            let code = match status.as_u16() {
                400 | 403 | 404 => INVALID_CONFIG,
                503 => TRY_AGAIN,
                _ => OTHER,
            };
            CniError::new(code, format!("tapnetd refused to {what}"), message.clone())
        }
        ClientError::Protocol(_) => CniError::new(OTHER, format!("cannot {what}"), e.to_string()),
    }
}

fn is_not_found(e: &ClientError) -> bool {
    matches!(e, ClientError::Daemon { status, .. } if status.as_u16() == 404)
}

fn mismatch(details: String) -> CniError {
    CniError::new(
        ATTACHMENT_MISMATCH,
        "the attachment is not as recorded",
        details,
    )
}

fn os_err(what: &str, e: impl std::fmt::Display) -> CniError {
    CniError::new(OTHER, format!("cannot {what}"), e.to_string())
}

/// The network the configuration names; `None` if tapnet has none of that name.
async fn find_network(client: &Client, name: &str) -> Result<Option<NetworkResource>> {
    match client
        .get_as::<NetworkResource>(&format!("/networks/{}", seg(name)))
        .await
    {
        Ok(n) => Ok(Some(n)),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(daemon_err(&format!("look up network {name}"), e)),
    }
}

fn no_network(name: &str) -> CniError {
    CniError::new(
        INVALID_CONFIG,
        "invalid network configuration",
        format!(
            "tapnet network {name:?} not found: create it first (tapnet network create {name}) or name another with the \"network\" key"
        ),
    )
}

/// The sandbox of an attachment; `None` if there is none.
async fn find_sandbox(client: &Client, name: &str) -> Result<Option<SandboxResource>> {
    match client
        .get_as::<SandboxResource>(&format!("/sandboxes/{}", seg(name)))
        .await
    {
        Ok(s) => Ok(Some(s)),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(daemon_err(&format!("look up sandbox {name}"), e)),
    }
}

/// Remove a sandbox; one that does not exist is success.
async fn remove_sandbox(client: &Client, name: &str) -> Result<()> {
    match client.delete(&format!("/sandboxes/{}", seg(name))).await {
        Ok(_) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(daemon_err(&format!("remove sandbox {name}"), e)),
    }
}

/// Open `CNI_NETNS`: missing → 3, not a network namespace → 4.
fn open_netns(path: &str) -> Result<Netns> {
    if !Path::new(path).exists() {
        return Err(CniError::new(
            UNKNOWN_CONTAINER,
            "container unknown",
            format!("CNI_NETNS {path} does not exist"),
        ));
    }
    Netns::open(Path::new(path)).map_err(|e| {
        CniError::new(
            INVALID_ENV,
            "invalid environment variables",
            format!("CNI_NETNS={path:?}: {e}"),
        )
    })
}

/// A link and its IPv4 addresses.
type LinkState = (Link, Vec<(Ipv4Addr, u8)>);

/// The link `ifname` in `ns` and its IPv4 addresses.
fn read_link(ns: &Netns, ifname: &str) -> Result<Option<LinkState>> {
    let name = ifname.to_string();
    ns.run(move || -> std::result::Result<_, tapnet_sandbox::Error> {
        let mut h = Handle::new()?;
        match h.link(&name)? {
            None => Ok(None),
            Some(l) => {
                let a = h.addresses_v4(l.index)?;
                Ok(Some((l, a)))
            }
        }
    })
    .and_then(|r| r)
    .map_err(|e| os_err(&format!("read interface {ifname} in the namespace"), e))
}

/// The sandbox's resolv.conf as the result's `dns` (empty if it cannot be read).
fn read_dns(sb: &SandboxResource) -> Dns {
    match std::fs::read_to_string(&sb.resolv_conf_path) {
        Ok(t) => parse_resolv_conf(&t),
        Err(e) => {
            eprintln!(
                "tapnet-cni: cannot read {} for the result's dns: {e}",
                sb.resolv_conf_path
            );
            Dns::default()
        }
    }
}

/// The connect body of an ADD.
fn connect_body(
    conf: &NetConf,
    env: &Env,
    net: &NetworkResource,
    sandbox: &str,
) -> Result<ConnectBody> {
    let mut ipam = EndpointIpamBody::default();
    for (ip, prefix) in conf.static_ips(env)? {
        let (slot, family) = match ip {
            IpAddr::V4(_) => (&mut ipam.ipv4_address, "IPv4"),
            IpAddr::V6(_) => (&mut ipam.ipv6_address, "IPv6"),
        };
        if slot.is_some() {
            return Err(CniError::new(
                INVALID_CONFIG,
                "invalid static address",
                format!("more than one {family} address requested: tapnet gives one per family"),
            ));
        }
        if let Some(p) = prefix {
            let subnet = net
                .ipam
                .config
                .iter()
                .map(|c| c.subnet.as_str())
                .find(|s| s.contains(':') == ip.is_ipv6());
            let len = subnet.and_then(|s| s.split_once('/')).map(|(_, l)| l);
            if len != Some(p.to_string().as_str()) {
                return Err(CniError::new(
                    INVALID_CONFIG,
                    "invalid static address",
                    format!(
                        "{ip}/{p}: the prefix does not match the subnet of tapnet network {} ({})",
                        net.name,
                        subnet.unwrap_or("none")
                    ),
                ));
            }
        }
        *slot = Some(ip.to_string());
    }
    let aliases = conf.aliases();
    Ok(ConnectBody {
        container: sandbox.to_string(),
        endpoint_config: Some(EndpointConfigBody {
            ipam_config: (ipam != EndpointIpamBody::default()).then_some(ipam),
            aliases: (!aliases.is_empty()).then_some(aliases),
            mac_address: conf.runtime.mac.clone().filter(|m| !m.is_empty()),
            driver_opts: Some(
                [(IFNAME_OPTION.to_string(), env.ifname.clone())]
                    .into_iter()
                    .collect(),
            ),
            ..EndpointConfigBody::default()
        }),
    })
}

/// `runtimeConfig.portMappings` as Docker's `PortBindings`.
fn port_bindings(conf: &NetConf) -> Result<Option<PortBindingsBody>> {
    let Some(maps) = conf
        .runtime
        .port_mappings
        .as_ref()
        .filter(|m| !m.is_empty())
    else {
        return Ok(None);
    };
    let mut out = PortBindingsBody::new();
    for m in maps {
        let proto = match m.protocol.to_ascii_lowercase().as_str() {
            "" | "tcp" => "tcp",
            "udp" => "udp",
            other => {
                return Err(CniError::new(
                    INVALID_CONFIG,
                    "invalid port mapping",
                    format!(
                        "portMappings: protocol {other:?} for container port {} is not supported (tcp or udp)",
                        m.container_port
                    ),
                ))
            }
        };
        if m.container_port == 0 {
            return Err(CniError::new(
                INVALID_CONFIG,
                "invalid port mapping",
                "portMappings: containerPort 0".to_string(),
            ));
        }
        out.entry(format!("{}/{proto}", m.container_port))
            .or_insert_with(|| Some(Vec::new()))
            .get_or_insert_with(Vec::new)
            .push(PortBindingBody {
                host_ip: Some(m.host_ip.clone()).filter(|h| !h.is_empty()),
                host_port: (m.host_port != 0).then(|| m.host_port.to_string()),
            });
    }
    Ok(Some(out))
}

/// ADD: the result JSON.
pub async fn add(env: &Env, conf: &NetConf, client: &Client) -> Result<Value> {
    let net = find_network(client, &conf.network)
        .await?
        .ok_or_else(|| no_network(&conf.network))?;
    let ns = open_netns(&env.netns)?;
    if read_link(&ns, &env.ifname)?.is_some() {
        return Err(CniError::new(
            OTHER,
            "interface exists",
            format!(
                "an interface named {} already exists in {}",
                env.ifname, env.netns
            ),
        ));
    }
    let prev = match &conf.prev_result {
        None => None,
        Some(v) => Some(parse_prev(v)?),
    };
    let name = sandbox_name(&env.container_id, &env.ifname);
    let connect = connect_body(conf, env, &net, &name)?;
    let create = SandboxCreateBody {
        name: Some(name.clone()),
        netns_path: Some(env.netns.clone()),
        port_bindings: port_bindings(conf)?,
    };
    if let Err(e) = client
        .post_as::<_, CreateSandboxResponse>("/sandboxes", &create)
        .await
    {
        if matches!(&e, ClientError::Daemon { status, .. } if status.as_u16() == 409)
            && find_sandbox(client, &name).await?.is_some()
        {
            return Err(CniError::new(
                OTHER,
                "attachment exists",
                format!(
                    "container {} already has an attachment {} (tapnet sandbox {name}): DEL it first",
                    env.container_id, env.ifname
                ),
            ));
        }
        return Err(daemon_err(&format!("create sandbox {name}"), e));
    }
    let attached = async {
        client
            .post(&format!("/networks/{}/connect", seg(&net.id)), &connect)
            .await
            .map_err(|e| daemon_err(&format!("connect {name} to network {}", net.name), e))?;
        let sb = find_sandbox(client, &name)
            .await?
            .ok_or_else(|| os_err("find the new sandbox", format!("sandbox {name} vanished")))?;
        let ep = sb.endpoints.get(&net.name).cloned().ok_or_else(|| {
            os_err(
                "find the new endpoint",
                format!("sandbox {name} has no endpoint on {}", net.name),
            )
        })?;
        if ep.interface != env.ifname {
            return Err(CniError::new(
                OTHER,
                "cannot name the interface",
                format!(
                    "tapnetd named the interface {:?}, not CNI_IFNAME {:?}: this tapnetd does not implement the endpoint option {IFNAME_OPTION}",
                    ep.interface, env.ifname
                ),
            ));
        }
        let (link, _) = read_link(&ns, &env.ifname)?.ok_or_else(|| {
            mismatch(format!(
                "tapnet reports interface {} but {} has none",
                env.ifname, env.netns
            ))
        })?;
        Ok(Attached {
            ifname: env.ifname.clone(),
            mac: link.mac.as_deref().map(format_mac).unwrap_or(ep.mac_address.clone()),
            mtu: link.mtu,
            netns: env.netns.clone(),
            ipv4: ep.ipv4_address.clone(),
            gateway: ep.gateway.clone(),
            ipv6: ep.ipv6_address.clone(),
            gateway6: ep.ipv6_gateway.clone(),
            dns: read_dns(&sb),
        })
    }
    .await;
    match attached {
        Ok(a) => Ok(shape(a.result(&conf.cni_version, prev), &conf.cni_version)),
        Err(e) => {
            if let Err(undo) = remove_sandbox(client, &name).await {
                eprintln!("tapnet-cni: undoing the failed ADD: {undo}");
            }
            Err(e)
        }
    }
}

fn parse_prev(v: &Value) -> Result<CniResult> {
    serde_json::from_value(v.clone()).map_err(|e| {
        CniError::new(
            crate::error::DECODE,
            "failed to decode the network configuration",
            format!("field prevResult: {e}"),
        )
    })
}

/// DEL: remove the attachment's sandbox; success if there is none.
pub async fn del(env: &Env, _conf: &NetConf, client: &Client) -> Result<()> {
    remove_sandbox(client, &sandbox_name(&env.container_id, &env.ifname)).await
}

/// CHECK: the attachment exists as recorded and as `prevResult` says.
pub async fn check(env: &Env, conf: &NetConf, client: &Client) -> Result<()> {
    let prev = conf.prev_result.as_ref().ok_or_else(|| {
        CniError::new(
            INVALID_CONFIG,
            "invalid network configuration",
            "CHECK needs prevResult (the result of the ADD)",
        )
    })?;
    let prev = parse_prev(prev)?;
    let ns = open_netns(&env.netns)?;
    let net = find_network(client, &conf.network)
        .await?
        .ok_or_else(|| mismatch(format!("tapnet network {} does not exist", conf.network)))?;
    let name = sandbox_name(&env.container_id, &env.ifname);
    let sb = find_sandbox(client, &name)
        .await?
        .ok_or_else(|| mismatch(format!("tapnet has no sandbox {name} for this attachment")))?;
    if sb.netns_path != env.netns {
        return Err(mismatch(format!(
            "sandbox {name} holds namespace {}, not CNI_NETNS {}",
            sb.netns_path, env.netns
        )));
    }
    let ep: SandboxEndpointResource = sb.endpoints.get(&net.name).cloned().ok_or_else(|| {
        mismatch(format!(
            "sandbox {name} is not connected to network {}",
            net.name
        ))
    })?;
    if ep.interface != env.ifname {
        return Err(mismatch(format!(
            "the endpoint's interface is {}, not {}",
            ep.interface, env.ifname
        )));
    }
    let (link, v4) = read_link(&ns, &env.ifname)?.ok_or_else(|| {
        mismatch(format!(
            "interface {} is missing from {}",
            env.ifname, env.netns
        ))
    })?;
    let mac = link.mac.as_deref().map(format_mac).unwrap_or_default();
    if !mac.eq_ignore_ascii_case(&ep.mac_address) {
        return Err(mismatch(format!(
            "interface {} has MAC {mac}, tapnet recorded {}",
            env.ifname, ep.mac_address
        )));
    }
    if !ep.ipv4_address.is_empty() {
        let want = ep.ipv4_address.as_str();
        if !v4.iter().any(|(a, l)| format!("{a}/{l}") == want) {
            return Err(mismatch(format!(
                "interface {} does not hold its address {want}",
                env.ifname
            )));
        }
    }
    // prevResult: our interface, its MAC and its addresses as tapnet holds them.
    let index = prev
        .interfaces
        .iter()
        .position(|i| i.name == env.ifname && i.sandbox.as_deref() == Some(env.netns.as_str()))
        .ok_or_else(|| {
            mismatch(format!(
                "prevResult lists no interface {} in {}",
                env.ifname, env.netns
            ))
        })?;
    if let Some(m) = &prev.interfaces[index].mac {
        if !m.eq_ignore_ascii_case(&mac) {
            return Err(mismatch(format!(
                "prevResult says MAC {m}, interface {} has {mac}",
                env.ifname
            )));
        }
    }
    let recorded: HashSet<&str> = [ep.ipv4_address.as_str(), ep.ipv6_address.as_str()]
        .into_iter()
        .filter(|a| !a.is_empty())
        .collect();
    let listed: HashSet<&str> = prev
        .ips
        .iter()
        .filter(|i| i.interface == Some(index))
        .map(|i| i.address.as_str())
        .collect();
    if recorded != listed {
        return Err(mismatch(format!(
            "prevResult lists addresses {listed:?} for {}, tapnet holds {recorded:?}",
            env.ifname
        )));
    }
    Ok(())
}

/// STATUS: tapnetd answers and the network exists.
pub async fn status(conf: &NetConf, client: &Client) -> Result<()> {
    match find_network(client, &conf.network).await {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(CniError::new(
            NOT_AVAILABLE,
            "plugin not available",
            no_network(&conf.network).details,
        )),
        Err(e) if e.code == TRY_AGAIN && e.msg == "tapnetd is not reachable" => Err(CniError::new(
            NOT_AVAILABLE_DEGRADED,
            "plugin not available: tapnetd is down",
            format!(
                "{}; tapnet's datapath runs in tapnetd, so existing attachments have no connectivity until it is back",
                e.details
            ),
        )),
        Err(e) => Err(CniError::new(NOT_AVAILABLE, "plugin not available", e.details)),
    }
}

/// GC: remove the CNI sandboxes on the network whose attachment is not listed.
/// Returns the names removed.
pub async fn gc(conf: &NetConf, client: &Client) -> Result<Vec<String>> {
    let valid: &[Attachment] = conf.valid_attachments.as_deref().ok_or_else(|| {
        CniError::new(
            INVALID_CONFIG,
            "invalid network configuration",
            "GC needs cni.dev/valid-attachments (the attachments to keep)",
        )
    })?;
    let Some(net) = find_network(client, &conf.network).await? else {
        return Ok(Vec::new());
    };
    let keep: HashSet<String> = valid
        .iter()
        .map(|a| sandbox_name(&a.container_id, &a.ifname))
        .collect();
    let sandboxes: Vec<SandboxResource> = client
        .get_as("/sandboxes")
        .await
        .map_err(|e| daemon_err("list sandboxes", e))?;
    let mut removed = Vec::new();
    let mut errors = Vec::new();
    for sb in sandboxes {
        if !sb.name.starts_with(PREFIX)
            || !sb.endpoints.contains_key(&net.name)
            || keep.contains(&sb.name)
        {
            continue;
        }
        match remove_sandbox(client, &sb.name).await {
            Ok(()) => removed.push(sb.name),
            Err(e) => errors.push(e),
        }
    }
    match errors.len() {
        0 => Ok(removed),
        _ => {
            let code = errors[0].code;
            Err(CniError::new(
                code,
                "GC could not remove every stale attachment",
                errors
                    .iter()
                    .map(|e| format!("{}: {}", e.msg, e.details))
                    .collect::<Vec<_>>()
                    .join("; "),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use hyper::StatusCode;
    use serde_json::json;

    #[test]
    fn names() {
        assert_eq!(sandbox_name("abc", "eth0"), "cni-abc-eth0");
        let long = "a".repeat(200);
        let h = sandbox_name(&long, "eth0");
        assert!(h.starts_with("cni-") && h.len() == 44, "{h}");
        assert_eq!(h, sandbox_name(&long, "eth0"));
        assert_ne!(h, sandbox_name(&long, "eth1"));
        let odd = sandbox_name("abc", "e+0");
        assert!(odd.starts_with("cni-") && !odd.contains('+'), "{odd}");
    }

    #[test]
    fn daemon_errors_map_to_codes() {
        let d = |s: u16| ClientError::Daemon {
            status: StatusCode::from_u16(s).unwrap(),
            message: "m".into(),
        };
        assert_eq!(daemon_err("x", d(404)).code, INVALID_CONFIG);
        assert_eq!(daemon_err("x", d(400)).code, INVALID_CONFIG);
        assert_eq!(daemon_err("x", d(503)).code, TRY_AGAIN);
        assert_eq!(daemon_err("x", d(409)).code, OTHER);
        assert_eq!(daemon_err("x", d(500)).details, "m");
        let c = ClientError::Connect {
            socket: "/nope".into(),
            cause: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        assert_eq!(daemon_err("x", c).code, TRY_AGAIN);
    }

    fn conf(extra: &str) -> NetConf {
        NetConf::parse(
            format!(r#"{{"cniVersion":"1.0.0","name":"tn","type":"tapnet-cni"{extra}}}"#)
                .as_bytes(),
        )
        .unwrap()
    }

    fn env() -> Env {
        Env::from_vars(|k| {
            Some(
                match k {
                    "CNI_COMMAND" => "ADD",
                    "CNI_CONTAINERID" => "c1",
                    "CNI_NETNS" => "/n",
                    "CNI_IFNAME" => "net1",
                    _ => return None,
                }
                .to_string(),
            )
        })
        .unwrap()
    }

    fn net() -> NetworkResource {
        serde_json::from_value(json!({"Name": "tn", "Id": "abc",
            "IPAM": {"Config": [{"Subnet": "10.60.0.0/24", "Gateway": "10.60.0.1"}]}}))
        .unwrap()
    }

    #[test]
    fn connect_body_carries_ifname_ips_aliases_mac() {
        let c = conf(
            r#","runtimeConfig":{"ips":["10.60.0.9/24"],"aliases":["web"],"mac":"02:00:00:00:00:09"}"#,
        );
        let b = connect_body(&c, &env(), &net(), "cni-c1-net1").unwrap();
        assert_eq!(
            serde_json::to_value(b).unwrap(),
            json!({"Container": "cni-c1-net1", "EndpointConfig": {
                "IPAMConfig": {"IPv4Address": "10.60.0.9"}, "Aliases": ["web"],
                "MacAddress": "02:00:00:00:00:09",
                "DriverOpts": {"com.docker.network.endpoint.ifname": "net1"}}})
        );
        let c = conf(r#","runtimeConfig":{"ips":["10.60.0.9/16"]}"#);
        let e = connect_body(&c, &env(), &net(), "x").unwrap_err();
        assert_eq!(e.code, INVALID_CONFIG);
        assert!(e.details.contains("10.60.0.0/24"), "{e}");
        let c = conf(r#","runtimeConfig":{"ips":["10.60.0.9","10.60.0.10"]}"#);
        assert!(connect_body(&c, &env(), &net(), "x").is_err());
        let c = conf(r#","runtimeConfig":{"ips":["fd00::9/64"]}"#);
        assert!(connect_body(&c, &env(), &net(), "x")
            .unwrap_err()
            .details
            .contains("(none)"));
    }

    #[test]
    fn port_mappings_become_port_bindings() {
        let c = conf(
            r#","runtimeConfig":{"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp"},
                {"hostPort":0,"containerPort":53,"protocol":"UDP","hostIP":"127.0.0.1"},
                {"hostPort":8081,"containerPort":80}]}"#,
        );
        let b = port_bindings(&c).unwrap().unwrap();
        assert_eq!(
            serde_json::to_value(&b).unwrap(),
            json!({"53/udp": [{"HostIp": "127.0.0.1"}],
                "80/tcp": [{"HostPort": "8080"}, {"HostPort": "8081"}]})
        );
        let c = conf(
            r#","runtimeConfig":{"portMappings":[{"hostPort":1,"containerPort":2,"protocol":"sctp"}]}"#,
        );
        assert!(port_bindings(&c).unwrap_err().details.contains("sctp"));
        assert_eq!(port_bindings(&conf("")).unwrap(), None);
    }
}
