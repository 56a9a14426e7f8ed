//! The CNM records as plain data: what the engine stores and hands to its drivers.
//!
//! Contract: these are `serde` types with no live handles in them; the engine keeps
//! runtime handles (namespaces, switch ports) elsewhere, keyed by the ids here. Every
//! field of a stored record carries `#[serde(default)]` (except the required parts of
//! [`Ipv6Config`], as they always were), so records written by older versions stay
//! readable as fields are added; field names and representations never change (a
//! MAC is `[u8; 6]`, serialized as an array of six numbers). Driver options are
//! parsed as dockerd parses them; a bad value is an [`Error::Invalid`] naming the
//! option.

use crate::error::{Error, Result};
use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

/// The MAC tapnet gives an endpoint: `02:42:` + the IPv4 address bytes.
pub fn mac_for(ip: Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x02, 0x42, o[0], o[1], o[2], o[3]]
}

/// Format a MAC as `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    tapnet_wire::MacAddr(*mac).to_string()
}

/// Parse a MAC address `aa:bb:cc:dd:ee:ff` (or with `-` separators) and check that
/// it can be an endpoint's address: unicast and not all-zero. The error says why
/// not.
pub fn parse_endpoint_mac(s: &str) -> std::result::Result<[u8; 6], String> {
    let mac: tapnet_wire::MacAddr = s
        .parse()
        .map_err(|_| "give six hex bytes such as 02:42:ac:11:00:02".to_string())?;
    if mac.is_zero() {
        return Err("the all-zero address cannot be an endpoint's MAC".into());
    }
    if mac.is_multicast() {
        return Err(
            "it is a multicast/broadcast address (the low bit of the first byte is set); \
             use a unicast one such as 02:42:ac:11:00:02"
                .into(),
        );
    }
    Ok(mac.0)
}

/// The most aliases one endpoint may have (`EndpointConfig.Aliases`, `--alias`).
pub const MAX_ALIASES: usize = 64;

/// Check an endpoint's aliases and return them without duplicates, in request order
/// (the first spelling of each is kept). Each alias is one DNS label (RFC 1123):
/// 1 to 63 ASCII letters, digits and hyphens, not starting or ending with a hyphen;
/// `_` is also allowed, because Docker and podman container names (which runtimes
/// pass as aliases, e.g. podman through CNI) may contain it and Docker resolves them.
/// Aliases are compared case-insensitively (`WEB` and `web` are one name, as DNS
/// compares them). A dotted alias is refused: it would shadow an outside name (such
/// as `example.com`) for every sandbox of the network. At most [`MAX_ALIASES`]
/// entries. The error names the alias and the rule.
pub fn check_aliases(aliases: &[String]) -> std::result::Result<Vec<String>, String> {
    if aliases.len() > MAX_ALIASES {
        return Err(format!(
            "too many aliases ({}): an endpoint may have at most {MAX_ALIASES}",
            aliases.len()
        ));
    }
    let mut out: Vec<String> = Vec::with_capacity(aliases.len());
    for a in aliases {
        check_alias(a).map_err(|why| format!("invalid alias {a:?}: {why}"))?;
        if !out.iter().any(|o| o.eq_ignore_ascii_case(a)) {
            out.push(a.clone());
        }
    }
    Ok(out)
}

fn check_alias(a: &str) -> std::result::Result<(), &'static str> {
    if a.is_empty() {
        return Err("an alias cannot be empty");
    }
    if a.contains('.') {
        return Err(
            "an alias cannot contain a dot: a dotted name would shadow an outside name \
             (such as example.com) for every sandbox of the network; give a single DNS label",
        );
    }
    if !a
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(
            "give a DNS label (RFC 1123): letters, digits, hyphens (and `_`) only, \
             no spaces or control characters",
        );
    }
    if a.len() > 63 {
        return Err("a DNS label is at most 63 characters");
    }
    if a.starts_with('-') || a.ends_with('-') {
        return Err("a DNS label cannot start or end with a hyphen");
    }
    Ok(())
}

/// A network (CNM `Network`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    /// 64-hex id.
    #[serde(default)]
    pub id: String,
    /// Unique name.
    #[serde(default)]
    pub name: String,
    /// Driver name (`bridge`, `null`, `host`).
    #[serde(default)]
    pub driver: String,
    /// Creation time, RFC 3339.
    #[serde(default)]
    pub created: String,
    /// `local` or `global`.
    #[serde(default)]
    pub scope: String,
    /// No outside connectivity.
    #[serde(default)]
    pub internal: bool,
    /// Attachable (swarm compatibility; recorded only).
    #[serde(default)]
    pub attachable: bool,
    /// IPv6 enabled: endpoints get an address of [`Network::ipv6`] too.
    #[serde(default)]
    pub enable_ipv6: bool,
    /// IPAM driver name.
    #[serde(default)]
    pub ipam_driver: String,
    /// IPAM driver options.
    #[serde(default)]
    pub ipam_options: BTreeMap<String, String>,
    /// The IPv4 subnet; `None` for drivers without addresses (`null`, `host`).
    #[serde(default)]
    pub subnet: Option<Ipv4Net>,
    /// The IPv4 gateway address (reserved in IPAM).
    #[serde(default)]
    pub gateway: Option<Ipv4Addr>,
    /// The IPv4 dynamic allocation range, if any.
    #[serde(default)]
    pub ip_range: Option<Ipv4Net>,
    /// IPv4 auxiliary addresses by name: reserved, never handed out.
    #[serde(default)]
    pub aux_addresses: BTreeMap<String, Ipv4Addr>,
    /// The IPAM pool id of the IPv4 subnet (rebuilt on restart).
    #[serde(default)]
    pub ipv4_pool: Option<String>,
    /// The IPv6 configuration, when `enable_ipv6`.
    #[serde(default)]
    pub ipv6: Option<Ipv6Config>,
    /// Driver options.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    /// User labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Endpoints by endpoint id.
    #[serde(default)]
    pub endpoints: BTreeMap<String, Endpoint>,
    /// A configuration network (Docker's `ConfigOnly`): it holds IPAM settings and
    /// options for networks created `--config-from` it; no data plane, no endpoints.
    /// Its subnets are settings only (no pool is taken: `ipv4_pool` is `None` and
    /// IPAM never sees them); an IPv6 entry given without a gateway has `::`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub config_only: bool,
    /// The configuration network whose IPAM settings and options this one took
    /// (Docker's `ConfigFrom.Network`: its name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_from: Option<String>,
}

impl Network {
    /// The MTU for endpoints (`com.docker.network.driver.mtu`, default 1500).
    pub fn mtu(&self) -> Result<u32> {
        match self.options.get(MTU_OPTION) {
            None => Ok(1500),
            Some(v) => parse_mtu(v),
        }
    }

    /// Inter-container communication (`com.docker.network.bridge.enable_icc`, default true).
    pub fn icc(&self) -> Result<bool> {
        self.options
            .get(ICC_OPTION)
            .map_or(Ok(true), |v| parse_bool_option(ICC_OPTION, v))
    }

    /// Anti-spoofing on endpoint ports (`com.tapnet.port_security`, default true).
    pub fn port_security(&self) -> Result<bool> {
        self.options
            .get(PORT_SECURITY_OPTION)
            .map_or(Ok(true), |v| parse_bool_option(PORT_SECURITY_OPTION, v))
    }

    /// The endpoint joining `sandbox_id`, if any.
    pub fn endpoint_of(&self, sandbox_id: &str) -> Option<&Endpoint> {
        self.endpoints.values().find(|e| e.sandbox_id == sandbox_id)
    }
}

/// The IPv6 side of a network's IPAM configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ipv6Config {
    /// The subnet.
    pub subnet: Ipv6Net,
    /// The gateway (reserved in IPAM).
    pub gateway: Ipv6Addr,
    /// The dynamic allocation range, if any.
    #[serde(default)]
    pub ip_range: Option<Ipv6Net>,
    /// Auxiliary addresses by name: reserved, never handed out.
    #[serde(default)]
    pub aux_addresses: BTreeMap<String, Ipv6Addr>,
    /// The IPAM pool id (rebuilt on restart).
    #[serde(default)]
    pub pool: String,
}

/// The networks that exist in every daemon, as in dockerd: `none` (driver `null`),
/// `host` (driver `host`) and `bridge` (driver `bridge`). They cannot be removed.
pub const PREDEFINED_NETWORKS: [(&str, &str); 3] =
    [("none", "null"), ("host", "host"), ("bridge", "bridge")];

/// Whether `name` is one of [`PREDEFINED_NETWORKS`].
pub fn is_predefined(name: &str) -> bool {
    PREDEFINED_NETWORKS.iter().any(|(n, _)| *n == name)
}

/// Whether `name` is one of Docker's predefined networks (`type=builtin` in
/// filters; never pruned, never removed): the same set as [`PREDEFINED_NETWORKS`].
pub fn is_builtin_network(name: &str) -> bool {
    is_predefined(name)
}

/// The driver option that sets the endpoints' MTU.
pub const MTU_OPTION: &str = "com.docker.network.driver.mtu";

/// The driver option that turns inter-container communication off (Docker's).
pub const ICC_OPTION: &str = "com.docker.network.bridge.enable_icc";

/// The driver option that turns anti-spoofing on endpoint ports off.
pub const PORT_SECURITY_OPTION: &str = "com.tapnet.port_security";

/// Parse a boolean driver option as Go's `strconv.ParseBool` (what dockerd uses).
pub fn parse_bool_option(name: &str, v: &str) -> Result<bool> {
    match v.trim() {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err(Error::Invalid(format!(
            "invalid {name} {v:?}: give true or false"
        ))),
    }
}

/// The largest MTU an endpoint's tap takes: the kernel's 65535 less the 14-byte
/// Ethernet header (`tun`'s `max_mtu`); a larger one fails every connect with EINVAL.
pub const MAX_MTU: u32 = 65_521;

/// Parse and check an MTU option value (68 to [`MAX_MTU`]).
pub fn parse_mtu(v: &str) -> Result<u32> {
    match v.trim().parse::<u32>() {
        Ok(m) if (68..=MAX_MTU).contains(&m) => Ok(m),
        _ => Err(Error::Invalid(format!(
            "invalid {MTU_OPTION} {v:?}: give a number between 68 and {MAX_MTU} \
             (the largest MTU of a tap device)"
        ))),
    }
}

/// An endpoint (CNM `Endpoint`): one switch port, joined to one sandbox.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// 64-hex id.
    #[serde(default)]
    pub id: String,
    /// The network's id.
    #[serde(default)]
    pub network_id: String,
    /// The sandbox's id.
    #[serde(default)]
    pub sandbox_id: String,
    /// Interface name inside the sandbox (`eth0`); empty when the driver gives the
    /// endpoint no device (`null`, `host`).
    #[serde(default)]
    pub interface: String,
    /// MAC address (`02:42:` + the IPv4 address); `None` without a device.
    #[serde(default)]
    pub mac: Option<[u8; 6]>,
    /// IPv4 address; `None` on networks without addresses.
    #[serde(default)]
    pub ipv4: Option<Ipv4Addr>,
    /// Prefix length of the IPv4 address.
    #[serde(default)]
    pub prefix_len: u8,
    /// IPv6 address, on IPv6 networks.
    #[serde(default)]
    pub ipv6: Option<Ipv6Addr>,
    /// Prefix length of the IPv6 address.
    #[serde(default)]
    pub prefix_len_v6: u8,
    /// Network-scoped aliases (Docker's `EndpointConfig.Aliases`), in request order.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Endpoint driver options (Docker's `EndpointConfig.DriverOpts`), as accepted:
    /// only `com.docker.network.endpoint.ifname`, whose value is [`Endpoint::interface`].
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub driver_opts: BTreeMap<String, String>,
    /// Link-local addresses on the interface besides the network's
    /// (`EndpointConfig.IPAMConfig.LinkLocalIPs`): IPv4 in 169.254.0.0/16 (added
    /// as /16), IPv6 in fe80::/10 (added as /64).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub link_local_ips: Vec<std::net::IpAddr>,
}

/// A sandbox (CNM `Sandbox`): a network namespace, its resolv.conf/hosts and its
/// published ports.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sandbox {
    /// 64-hex id.
    #[serde(default)]
    pub id: String,
    /// Unique name.
    #[serde(default)]
    pub name: String,
    /// Path of the namespace file.
    #[serde(default)]
    pub netns_path: PathBuf,
    /// tapnet created the namespace (and removes it with the sandbox).
    #[serde(default)]
    pub owned: bool,
    /// Creation time, RFC 3339.
    #[serde(default)]
    pub created: String,
    /// The sandbox's `resolv.conf` (under `<exec-root>/sandboxes/<id>/`).
    #[serde(default)]
    pub resolv_conf_path: PathBuf,
    /// The sandbox's `hosts` file.
    #[serde(default)]
    pub hosts_path: PathBuf,
    /// Requested published ports.
    #[serde(default)]
    pub port_bindings: Vec<crate::ports::PortBinding>,
    /// Where the ports are bound (`None` until the sandbox joins a non-internal
    /// bridge network).
    #[serde(default)]
    pub published: Option<crate::ports::Published>,
    /// The sandbox's runtime (dockerd, through tapnet's Docker plugin) moves each
    /// endpoint's device into the namespace and configures it: tapnet makes the device
    /// in its own namespace and hands it over (Docker `Join`'s `SrcName`), and applies
    /// nothing inside the sandbox.
    #[serde(default)]
    pub handoff: bool,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn mac_from_ip() {
        let mac = mac_for(Ipv4Addr::new(10, 10, 0, 2));
        assert_eq!(format_mac(&mac), "02:42:0a:0a:00:02");
    }

    #[test]
    fn endpoint_mac_parsing() {
        assert_eq!(
            parse_endpoint_mac("02:42:0A:00:00:09").unwrap(),
            [0x02, 0x42, 0x0a, 0, 0, 9]
        );
        assert_eq!(
            parse_endpoint_mac("02-42-0a-00-00-09").unwrap(),
            [0x02, 0x42, 0x0a, 0, 0, 9]
        );
        for bad in [
            "",
            "02:42:0a:00:00",
            "02:42:0a:00:00:09:01",
            "0g:42:0a:00:00:09",
            "2:42:0a:00:00:091",
        ] {
            assert!(
                parse_endpoint_mac(bad)
                    .unwrap_err()
                    .contains("six hex bytes"),
                "{bad}"
            );
        }
        assert!(parse_endpoint_mac("00:00:00:00:00:00")
            .unwrap_err()
            .contains("all-zero"));
        assert!(parse_endpoint_mac("01:00:5e:00:00:01")
            .unwrap_err()
            .contains("multicast"));
        assert!(parse_endpoint_mac("ff:ff:ff:ff:ff:ff")
            .unwrap_err()
            .contains("multicast"));
    }

    #[test]
    fn options() {
        assert_eq!(parse_mtu(" 1450 ").unwrap(), 1450);
        assert_eq!(
            parse_mtu("10").unwrap_err().to_string(),
            "invalid com.docker.network.driver.mtu \"10\": give a number between 68 and 65521 \
             (the largest MTU of a tap device)"
        );
        assert_eq!(parse_mtu("65521").unwrap(), 65521);
        assert!(parse_mtu("65522").is_err());
        assert!(parse_bool_option("x", "T").unwrap());
        assert!(!parse_bool_option("x", "0").unwrap());
        assert_eq!(
            parse_bool_option("x", "yes").unwrap_err(),
            Error::Invalid("invalid x \"yes\": give true or false".into())
        );
        assert!(is_builtin_network("none") && !is_builtin_network("net1"));
    }

    fn network(options: &[(&str, &str)]) -> Network {
        serde_json::from_value(serde_json::json!({
            "id": "n",
            "options": options.iter().map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
        }))
        .unwrap()
    }

    #[test]
    fn network_options_with_defaults() {
        let n = network(&[]);
        assert_eq!((n.mtu().unwrap(), n.icc().unwrap()), (1500, true));
        assert!(n.port_security().unwrap());
        let n = network(&[(MTU_OPTION, "9000"), (ICC_OPTION, "false")]);
        assert_eq!((n.mtu().unwrap(), n.icc().unwrap()), (9000, false));
        assert!(network(&[(PORT_SECURITY_OPTION, "maybe")])
            .port_security()
            .is_err());
    }

    /// The stored representation: field names and the MAC as six numbers.
    #[test]
    fn stored_records_keep_their_shape() {
        let e = Endpoint {
            id: "e".into(),
            network_id: "n".into(),
            sandbox_id: "s".into(),
            interface: "eth0".into(),
            mac: Some([2, 0x42, 10, 0, 0, 2]),
            ipv4: Some(Ipv4Addr::new(10, 0, 0, 2)),
            prefix_len: 24,
            ipv6: None,
            prefix_len_v6: 0,
            aliases: vec!["web".into()],
            ..Endpoint::default()
        };
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"id": "e", "network_id": "n", "sandbox_id": "s",
                "interface": "eth0", "mac": [2, 66, 10, 0, 0, 2], "ipv4": "10.0.0.2",
                "prefix_len": 24, "ipv6": null, "prefix_len_v6": 0, "aliases": ["web"]})
        );
        // Old records without the newer fields still load.
        let old: Endpoint = serde_json::from_value(serde_json::json!({"id": "e"})).unwrap();
        assert_eq!((old.mac, old.aliases.len()), (None, 0));
        let sb: Sandbox = serde_json::from_value(serde_json::json!({"id": "s"})).unwrap();
        assert_eq!(
            sb,
            Sandbox {
                id: "s".into(),
                ..Sandbox::default()
            }
        );
    }

    #[test]
    fn aliases_are_dns_labels_deduped_case_insensitively() {
        let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            check_aliases(&v(&["web", "WEB", "api-1", "Web", "x", "my_db"])).unwrap(),
            v(&["web", "api-1", "x", "my_db"])
        );
        let long = "a".repeat(63);
        assert_eq!(check_aliases(&v(&[&long])).unwrap(), v(&[&long]));
        for (bad, why) in [
            ("", "empty"),
            ("a b", "letters, digits, hyphens"),
            ("a\u{7}b", "control characters"),
            ("-web", "hyphen"),
            ("web-", "hyphen"),
            ("web+1", "letters, digits, hyphens"),
            ("google.com", "shadow an outside name"),
            ("web.", "dot"),
            ("é", "letters, digits"),
        ] {
            let e = check_aliases(&v(&["ok", bad])).unwrap_err();
            assert!(
                e.contains(&format!("{bad:?}")) && e.contains(why),
                "{bad:?}: {e}"
            );
        }
        let e = check_aliases(&v(&[&"a".repeat(64)])).unwrap_err();
        assert!(e.contains("63"), "{e}");
        let many: Vec<String> = (0..=MAX_ALIASES).map(|i| format!("a{i}")).collect();
        let e = check_aliases(&many).unwrap_err();
        assert!(e.contains("at most 64") && e.contains("65"), "{e}");
        assert_eq!(
            check_aliases(&many[..MAX_ALIASES]).unwrap().len(),
            MAX_ALIASES
        );
    }
}
