//! The CNM model as plain data, and the [`Store`] that holds it.
//!
//! Contract: these types are what the engine persists (they are `serde` types with
//! no live handles in them); runtime handles (open namespaces, switch ports) live in
//! the [`crate::controller`] and drivers, keyed by the ids here. The [`Store`] is the
//! seam for persistence: today it is in memory, later each mutation becomes one
//! transaction. Lookups accept a full id, a name, or a unique id prefix, in that
//! order, as Docker does.

use crate::error::{Error, Result};
use ipnet::{Ipv4Net, Ipv6Net};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

/// A new random id: 64 lowercase hex characters.
pub fn new_id() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `s` looks like a full id.
pub fn is_full_id(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The current time as RFC 3339 UTC (`2026-11-23T14:00:00Z`).
pub fn now_rfc3339() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    rfc3339(secs)
}

/// Format seconds since the epoch as RFC 3339 UTC.
pub fn rfc3339(secs: u64) -> String {
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// The MAC tapnet gives an endpoint: `02:42:` + the IPv4 address bytes.
pub fn mac_for(ip: Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x02, 0x42, o[0], o[1], o[2], o[3]]
}

/// Format a MAC as `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A network (CNM `Network`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    /// 64-hex id.
    pub id: String,
    /// Unique name.
    pub name: String,
    /// Driver name (`bridge`, `null`, `host`).
    pub driver: String,
    /// Creation time, RFC 3339.
    pub created: String,
    /// `local` or `global`.
    pub scope: String,
    /// No outside connectivity.
    pub internal: bool,
    /// Attachable (swarm compatibility; recorded only).
    pub attachable: bool,
    /// IPv6 enabled: endpoints get an address of [`Network::ipv6`] too.
    pub enable_ipv6: bool,
    /// IPAM driver name.
    pub ipam_driver: String,
    /// IPAM driver options.
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
    pub options: BTreeMap<String, String>,
    /// User labels.
    pub labels: BTreeMap<String, String>,
    /// Endpoints by endpoint id.
    pub endpoints: BTreeMap<String, Endpoint>,
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
        _ => Err(Error::InvalidRequest(format!(
            "invalid {name} {v:?}: give true or false"
        ))),
    }
}

/// Parse and check an MTU option value.
pub fn parse_mtu(v: &str) -> Result<u32> {
    match v.trim().parse::<u32>() {
        Ok(m) if (68..=65_535).contains(&m) => Ok(m),
        _ => Err(Error::InvalidRequest(format!(
            "invalid {MTU_OPTION} {v:?}: give a number between 68 and 65535"
        ))),
    }
}

/// An endpoint (CNM `Endpoint`): one switch port, joined to one sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// 64-hex id.
    pub id: String,
    /// The network's id.
    pub network_id: String,
    /// The sandbox's id.
    pub sandbox_id: String,
    /// Interface name inside the sandbox (`eth0`); empty when the driver gives the
    /// endpoint no device (`null`, `host`).
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
}

/// Whether `name` is one of Docker's predefined networks (`type=builtin` in
/// filters; never pruned, never removed): the same set as [`PREDEFINED_NETWORKS`].
pub fn is_builtin_network(name: &str) -> bool {
    is_predefined(name)
}

/// Parse a MAC address `aa:bb:cc:dd:ee:ff` (or with `-` separators) and check that
/// it can be an endpoint's address: unicast and not all-zero. The error says why.
pub fn parse_endpoint_mac(s: &str) -> std::result::Result<[u8; 6], String> {
    let sep = if s.contains('-') { '-' } else { ':' };
    let parts: Vec<&str> = s.split(sep).collect();
    let mut mac = [0u8; 6];
    let well_formed = parts.len() == 6
        && parts
            .iter()
            .zip(mac.iter_mut())
            .all(|(p, b)| p.len() == 2 && u8::from_str_radix(p, 16).map(|v| *b = v).is_ok());
    if !well_formed {
        return Err("give six hex bytes such as 02:42:ac:11:00:02".into());
    }
    if mac == [0; 6] {
        return Err("the all-zero address cannot be an endpoint's MAC".into());
    }
    if mac[0] & 1 == 1 {
        return Err(
            "it is a multicast/broadcast address (the low bit of the first byte is set); \
             use a unicast one such as 02:42:ac:11:00:02"
                .into(),
        );
    }
    Ok(mac)
}

/// A sandbox (CNM `Sandbox`): a network namespace, its resolv.conf/hosts and its
/// published ports.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sandbox {
    /// 64-hex id.
    pub id: String,
    /// Unique name.
    pub name: String,
    /// Path of the namespace file.
    pub netns_path: PathBuf,
    /// tapnet created the namespace (and removes it with the sandbox).
    pub owned: bool,
    /// Creation time, RFC 3339.
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
}

/// The model: every network and sandbox. In memory for now; the persistence seam.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Store {
    /// Networks by id.
    pub networks: BTreeMap<String, Network>,
    /// Sandboxes by id.
    pub sandboxes: BTreeMap<String, Sandbox>,
}

/// Resolve `what` (full id, name, or unique id prefix) among `(id, name)` pairs.
pub fn resolve<'a>(
    kind: &'static str,
    items: impl Iterator<Item = (&'a str, &'a str)> + Clone,
    what: &str,
) -> Result<String> {
    let not_found = || Error::NotFound(format!("{kind} {what} not found"));
    if what.is_empty() {
        return Err(not_found());
    }
    if let Some((id, _)) = items.clone().find(|(id, _)| *id == what) {
        return Ok(id.to_string());
    }
    if let Some((id, _)) = items.clone().find(|(_, name)| *name == what) {
        return Ok(id.to_string());
    }
    let matches: Vec<&str> = items
        .filter(|(id, _)| id.starts_with(what))
        .map(|(id, _)| id)
        .collect();
    match matches.as_slice() {
        [] => Err(not_found()),
        [one] => Ok(one.to_string()),
        many => Err(Error::Ambiguous {
            kind,
            what: what.to_string(),
            count: many.len(),
        }),
    }
}

impl Store {
    /// Resolve a network by id, name or unique id prefix.
    pub fn resolve_network(&self, what: &str) -> Result<String> {
        resolve(
            "network",
            self.networks
                .values()
                .map(|n| (n.id.as_str(), n.name.as_str())),
            what,
        )
    }

    /// Resolve a sandbox by id, name or unique id prefix.
    pub fn resolve_sandbox(&self, what: &str) -> Result<String> {
        resolve(
            "sandbox",
            self.sandboxes
                .values()
                .map(|s| (s.id.as_str(), s.name.as_str())),
            what,
        )
    }

    /// All endpoints joined to `sandbox_id`, with their networks.
    pub fn endpoints_of_sandbox(&self, sandbox_id: &str) -> Vec<(&Network, &Endpoint)> {
        self.networks
            .values()
            .filter_map(|n| n.endpoint_of(sandbox_id).map(|e| (n, e)))
            .collect()
    }

    /// IPv4 subnets of all networks (for IPAM overlap checks and replay).
    pub fn subnets(&self) -> Vec<Ipv4Net> {
        self.networks.values().filter_map(|n| n.subnet).collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_64_hex() {
        let a = new_id();
        let b = new_id();
        assert!(is_full_id(&a), "{a}");
        assert_ne!(a, b);
        assert!(!is_full_id("ABC"));
    }

    #[test]
    fn resolve_by_id_name_prefix() {
        let items = [
            ("abc123".to_string(), "net1".to_string()),
            ("abd456".to_string(), "net2".to_string()),
            ("ff0000".to_string(), "abc".to_string()),
        ];
        let it = || items.iter().map(|(i, n)| (i.as_str(), n.as_str()));
        assert_eq!(resolve("network", it(), "abc123").unwrap(), "abc123");
        assert_eq!(resolve("network", it(), "net2").unwrap(), "abd456");
        // A name wins over an id prefix.
        assert_eq!(resolve("network", it(), "abc").unwrap(), "ff0000");
        assert_eq!(resolve("network", it(), "abd").unwrap(), "abd456");
        let err = resolve("network", it(), "ab").unwrap_err();
        assert_eq!(err.status(), 400);
        assert!(err.to_string().contains("network ab is ambiguous"), "{err}");
        let err = resolve("network", it(), "zzz").unwrap_err();
        assert_eq!(err.status(), 404);
        assert_eq!(err.to_string(), "network zzz not found");
        assert_eq!(resolve("network", it(), "").unwrap_err().status(), 404);
    }

    #[test]
    fn time_format() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_442_400), "2026-11-23T14:00:00Z");
    }

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
    fn builtin_names() {
        assert!(is_builtin_network("bridge") && is_builtin_network("none"));
        assert!(!is_builtin_network("net1"));
    }

    #[test]
    fn mtu_option() {
        assert_eq!(parse_mtu("1450").unwrap(), 1450);
        assert_eq!(parse_mtu("abc").unwrap_err().status(), 400);
        assert_eq!(parse_mtu("10").unwrap_err().status(), 400);
    }
}
