//! The CNM model: the records (from [`tapnet_types::model`], re-exported here) and
//! the [`Store`] that holds them.
//!
//! Contract: the records are what the engine persists (they are `serde` types with
//! no live handles in them; their shape is `tapnet-types`' contract); runtime
//! handles (open namespaces, switch ports) live in the [`crate::controller`] and
//! drivers, keyed by the ids here. The [`Store`] is the in-memory view of the
//! persistent store (`crate::store`). Lookups accept a full id, a name, or a unique
//! id prefix, in that order, as Docker does. Option parsing is `tapnet-types`';
//! the wrappers here return the engine's [`Error`] (400).

use crate::error::{Error, Result};
use ipnet::Ipv4Net;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};
pub use tapnet_types::model::{
    format_mac, is_builtin_network, is_predefined, mac_for, parse_endpoint_mac, Endpoint,
    Ipv6Config, Network, Sandbox, ICC_OPTION, MTU_OPTION, PORT_SECURITY_OPTION,
    PREDEFINED_NETWORKS,
};

/// A new random id: 64 lowercase hex characters.
pub fn new_id() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Check an id a caller chose (Docker's `NetworkID`, `EndpointID`): 64 lowercase
/// hex digits, as tapnet's own.
pub fn validate_id(kind: &str, id: &str) -> Result<()> {
    if is_full_id(id) {
        return Ok(());
    }
    Err(Error::InvalidRequest(format!(
        "invalid {kind} id {id:?}: give 64 lowercase hex digits"
    )))
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

/// Format seconds since the epoch as RFC 3339 UTC (jiff); past jiff's range (year
/// 9999) the latest time it has.
pub fn rfc3339(secs: u64) -> String {
    let t = i64::try_from(secs)
        .ok()
        .and_then(|s| jiff::Timestamp::from_second(s).ok())
        .unwrap_or(jiff::Timestamp::MAX);
    t.to_string()
}

/// Parse a boolean driver option as Go's `strconv.ParseBool` (what dockerd uses).
pub fn parse_bool_option(name: &str, v: &str) -> Result<bool> {
    Ok(tapnet_types::model::parse_bool_option(name, v)?)
}

/// Parse and check an MTU option value.
pub fn parse_mtu(v: &str) -> Result<u32> {
    Ok(tapnet_types::model::parse_mtu(v)?)
}

/// The model: every network and sandbox (the in-memory view of the persistent store).
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
        assert!(
            rfc3339(u64::MAX).starts_with("9999-"),
            "{}",
            rfc3339(u64::MAX)
        );
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
