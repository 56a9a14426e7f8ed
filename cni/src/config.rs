//! The plugin's inputs: the `CNI_*` environment and the network configuration on
//! stdin, parsed and validated before anything is asked of tapnetd.
//!
//! Contract:
//! * [`Env::from_vars`] checks the variables the command needs (ADD/CHECK:
//!   `CNI_CONTAINERID`, `CNI_NETNS`, `CNI_IFNAME`; DEL: `CNI_CONTAINERID`,
//!   `CNI_IFNAME`) and their syntax (the spec's container id, the kernel's interface
//!   name rules, an absolute netns path); every bad one is named in one code-4 error.
//! * [`NetConf::parse`] reads the configuration: undecodable JSON or a field of the
//!   wrong type is code 6 naming the field; a `cniVersion` outside
//!   [`SUPPORTED_VERSIONS`] is code 1; a key that would change what the plugin does
//!   but that it does not implement (`ipam`, `dns`, `ipMasq`, any unknown key, a
//!   capability other than `portMappings`, `ips`, `aliases`, `mac`) is code 2 naming
//!   the key and its value. The keys every plugin receives (`cniVersion`,
//!   `cniVersions`, `name`, `type`, `args`, `runtimeConfig`, `prevResult`,
//!   `capabilities`, `disableCheck`, `disableGC`, `cni.dev/*`) are accepted;
//!   `runtimeConfig` entries of capabilities not declared are ignored.
//! * Static addresses come from `runtimeConfig.ips`, else `args.cni.ips`, else the
//!   `IP=` of `CNI_ARGS` (the conventions' precedence); `CNI_ARGS` keys other than
//!   `IP` and `IgnoreUnknown` (and Kubernetes' `K8S_POD_*`) are code 4 unless
//!   `IgnoreUnknown=1|true`.

use crate::error::{
    CniError, Result, DECODE, INCOMPATIBLE_VERSION, INVALID_ENV, UNSUPPORTED_FIELD,
};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::net::IpAddr;

/// The spec versions this plugin speaks (`VERSION`'s `supportedVersions`).
pub const SUPPORTED_VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// tapnetd's default API socket.
pub const DEFAULT_SOCKET: &str = "/run/tapnet/tapnet.sock";

/// The operation (`CNI_COMMAND`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Attach the container.
    Add,
    /// Detach it (idempotent).
    Del,
    /// Verify the attachment.
    Check,
    /// Report the supported versions.
    Version,
    /// Report readiness (1.1).
    Status,
    /// Remove stale attachments (1.1).
    Gc,
}

impl Command {
    fn parse(s: &str) -> Option<Command> {
        Some(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            _ => return None,
        })
    }
}

/// The `CNI_*` environment, validated for the command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Env {
    /// `CNI_COMMAND`.
    pub command: Command,
    /// `CNI_CONTAINERID` (empty for VERSION, STATUS, GC).
    pub container_id: String,
    /// `CNI_NETNS` (empty when not given).
    pub netns: String,
    /// `CNI_IFNAME` (empty for VERSION, STATUS, GC).
    pub ifname: String,
    /// `CNI_ARGS`, parsed.
    pub args: CniArgs,
}

/// What tapnet-cni takes from `CNI_ARGS`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniArgs {
    /// `IP=` addresses (comma-separated allowed).
    pub ips: Vec<String>,
}

impl Env {
    /// Read and check the variables, `get` giving each one's value.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Env> {
        let raw = |k: &str| get(k).unwrap_or_default();
        let cmd_s = raw("CNI_COMMAND");
        let command = Command::parse(&cmd_s).ok_or_else(|| {
            CniError::new(
                INVALID_ENV,
                "invalid CNI_COMMAND",
                format!("CNI_COMMAND={cmd_s:?}: give one of ADD, DEL, CHECK, VERSION, STATUS, GC"),
            )
        })?;
        let env = Env {
            command,
            container_id: raw("CNI_CONTAINERID"),
            netns: raw("CNI_NETNS"),
            ifname: raw("CNI_IFNAME"),
            args: CniArgs::default(),
        };
        let mut bad: Vec<String> = Vec::new();
        let attach = matches!(command, Command::Add | Command::Del | Command::Check);
        if attach {
            if env.container_id.is_empty() {
                bad.push("CNI_CONTAINERID is missing".into());
            } else if !valid_container_id(&env.container_id) {
                bad.push(format!(
                    "CNI_CONTAINERID={:?} is invalid: it must start with a letter or digit followed by letters, digits, '_', '.' or '-'",
                    env.container_id
                ));
            }
            if env.ifname.is_empty() {
                bad.push("CNI_IFNAME is missing".into());
            } else if tapnet_sandbox::iface::validate_ifname(&env.ifname).is_err() {
                bad.push(format!(
                    "CNI_IFNAME={:?} is not a valid interface name (1-15 bytes, no '/', ':' or whitespace, not '.' or '..')",
                    env.ifname
                ));
            }
            let needs_netns = command != Command::Del;
            if env.netns.is_empty() {
                if needs_netns {
                    bad.push("CNI_NETNS is missing".into());
                }
            } else if !env.netns.starts_with('/') {
                bad.push(format!(
                    "CNI_NETNS={:?} must be an absolute path to a network namespace",
                    env.netns
                ));
            }
        }
        let args = match parse_cni_args(&raw("CNI_ARGS")) {
            Ok(a) => a,
            Err(why) => {
                bad.push(why);
                CniArgs::default()
            }
        };
        if !bad.is_empty() {
            return Err(CniError::new(
                INVALID_ENV,
                "invalid environment variables",
                bad.join("; "),
            ));
        }
        Ok(Env { args, ..env })
    }
}

/// The spec's container id: `[A-Za-z0-9][A-Za-z0-9_.-]*`.
fn valid_container_id(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(f) if f.is_ascii_alphanumeric())
        && c.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// `FOO=BAR;ABC=123`; keys tapnet-cni does not know are refused unless
/// `IgnoreUnknown` is `1`/`true`.
fn parse_cni_args(s: &str) -> std::result::Result<CniArgs, String> {
    let mut out = CniArgs::default();
    let mut unknown = Vec::new();
    let mut ignore_unknown = false;
    for pair in s.split(';').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').ok_or_else(|| {
            format!("CNI_ARGS: {pair:?} is not KEY=VALUE (pairs are separated by ';')")
        })?;
        match k {
            "IP" => out
                .ips
                .extend(v.split(',').filter(|x| !x.is_empty()).map(str::to_string)),
            "IgnoreUnknown" => {
                ignore_unknown = matches!(v.to_ascii_lowercase().as_str(), "1" | "true")
            }
            k if k.starts_with("K8S_POD_") => {}
            _ => unknown.push(k.to_string()),
        }
    }
    if !unknown.is_empty() && !ignore_unknown {
        return Err(format!(
            "CNI_ARGS: unknown key(s) {} (tapnet-cni reads IP; add IgnoreUnknown=1 to pass others)",
            unknown.join(", ")
        ));
    }
    Ok(out)
}

/// One `cni.dev/valid-attachments` entry (GC).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    /// `CNI_CONTAINERID` of the ADD.
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// `CNI_IFNAME` of the ADD.
    pub ifname: String,
}

/// One `runtimeConfig.portMappings` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    /// Host port (0: any free one).
    #[serde(default)]
    pub host_port: u16,
    /// Container port.
    pub container_port: u16,
    /// `tcp` (default) or `udp`.
    #[serde(default)]
    pub protocol: String,
    /// Host address (empty: all).
    #[serde(default, rename = "hostIP")]
    pub host_ip: String,
}

/// `runtimeConfig.aliases`: a list, or podman's map from network name to list.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Aliases {
    /// `["a", "b"]`.
    List(Vec<String>),
    /// `{"net": ["a", "b"]}`.
    ByNetwork(BTreeMap<String, Vec<String>>),
}

/// The `runtimeConfig` entries tapnet-cni declares.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeConfig {
    /// Published ports.
    #[serde(default)]
    pub port_mappings: Option<Vec<PortMapping>>,
    /// Static addresses, `ip[/prefix]`.
    #[serde(default)]
    pub ips: Option<Vec<String>>,
    /// Network-scoped DNS names.
    #[serde(default)]
    pub aliases: Option<Aliases>,
    /// The interface's MAC.
    #[serde(default)]
    pub mac: Option<String>,
}

/// The parts of the configuration tapnet-cni reads.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    #[serde(default)]
    cni_version: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    socket: Option<String>,
    #[serde(default)]
    network: Option<String>,
    #[serde(default)]
    capabilities: BTreeMap<String, bool>,
    #[serde(default)]
    runtime_config: Option<Map<String, Value>>,
    #[serde(default)]
    args: Option<Value>,
    #[serde(default)]
    prev_result: Option<Value>,
    #[serde(default, rename = "cni.dev/valid-attachments")]
    valid_attachments: Option<Vec<Attachment>>,
}

/// The keys every plugin may receive; ignored unless read above.
const STANDARD_KEYS: [&str; 10] = [
    "cniVersion",
    "cniVersions",
    "name",
    "type",
    "args",
    "runtimeConfig",
    "prevResult",
    "capabilities",
    "disableCheck",
    "disableGC",
];

/// tapnet-cni's own keys.
const OWN_KEYS: [&str; 2] = ["socket", "network"];

/// The capabilities tapnet-cni implements.
pub const CAPABILITIES: [&str; 4] = ["portMappings", "ips", "aliases", "mac"];

/// The network configuration, parsed and checked.
#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    /// The protocol version in use.
    pub cni_version: String,
    /// The network configuration's name.
    pub name: String,
    /// tapnetd's socket.
    pub socket: String,
    /// The tapnet network (conf key `network`, default `name`).
    pub network: String,
    /// Declared capabilities' runtime values.
    pub runtime: RuntimeConfig,
    /// Static addresses from `args.cni.ips` (runtimeConfig's take precedence).
    pub args_ips: Vec<String>,
    /// The previous result (CHECK, DEL, chained ADD).
    pub prev_result: Option<Value>,
    /// `cni.dev/valid-attachments` (GC).
    pub valid_attachments: Option<Vec<Attachment>>,
}

/// The version string for an error result when the configuration could not be
/// read: what the input says if it says something, else the newest.
pub fn version_of(input: &[u8]) -> String {
    serde_json::from_slice::<Value>(input)
        .ok()
        .and_then(|v| {
            v.get("cniVersion")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "1.1.0".to_string())
}

impl NetConf {
    /// Parse and check the configuration `input` (stdin).
    pub fn parse(input: &[u8]) -> Result<NetConf> {
        let value: Value = serde_json::from_slice(input).map_err(|e| {
            CniError::new(
                DECODE,
                "failed to decode the network configuration",
                format!("stdin is not a JSON network configuration: {e}"),
            )
        })?;
        let Value::Object(map) = &value else {
            return Err(CniError::new(
                DECODE,
                "failed to decode the network configuration",
                "stdin must be a JSON object".to_string(),
            ));
        };
        let raw: Raw = serde_path_to_error::deserialize(&value).map_err(|e| {
            CniError::new(
                DECODE,
                "failed to decode the network configuration",
                format!("field {}: {}", e.path(), e.inner()),
            )
        })?;
        if !SUPPORTED_VERSIONS.contains(&raw.cni_version.as_str()) {
            return Err(CniError::new(
                INCOMPATIBLE_VERSION,
                "incompatible CNI version",
                format!(
                    "cniVersion {:?} is not supported: tapnet-cni speaks {}",
                    raw.cni_version,
                    SUPPORTED_VERSIONS.join(", ")
                ),
            ));
        }
        for (k, v) in map {
            if STANDARD_KEYS.contains(&k.as_str())
                || OWN_KEYS.contains(&k.as_str())
                || k.starts_with("cni.dev/")
            {
                continue;
            }
            let why = match k.as_str() {
                "ipam" => "tapnet's IPAM assigns the addresses: give the subnet when creating the tapnet network (tapnet network create --subnet ...), a static address through the ips capability or CNI_ARGS IP=",
                "dns" => "the DNS server is tapnet's embedded one (the result's dns lists it)",
                "ipMasq" => "masquerading is the tapnet network's (bridge networks masquerade unless internal)",
                _ => "tapnet-cni reads only socket and network besides the standard keys",
            };
            return Err(unsupported(k, v, why));
        }
        for (cap, on) in &raw.capabilities {
            if *on && !CAPABILITIES.contains(&cap.as_str()) {
                return Err(unsupported(
                    &format!("capabilities.{cap}"),
                    &Value::Bool(true),
                    &format!("tapnet-cni implements {}", CAPABILITIES.join(", ")),
                ));
            }
        }
        let runtime = match raw.runtime_config {
            None => RuntimeConfig::default(),
            Some(mut rc) => {
                // Only the capabilities tapnet-cni implements are read; others the
                // runtime may add are not ours.
                rc.retain(|k, _| CAPABILITIES.contains(&k.as_str()));
                serde_path_to_error::deserialize(Value::Object(rc)).map_err(|e| {
                    CniError::new(
                        DECODE,
                        "failed to decode the network configuration",
                        format!("field runtimeConfig.{}: {}", e.path(), e.inner()),
                    )
                })?
            }
        };
        let args_ips = match raw
            .args
            .as_ref()
            .and_then(|a| a.get("cni"))
            .and_then(|c| c.get("ips"))
        {
            None | Some(Value::Null) => Vec::new(),
            Some(v) => serde_json::from_value::<Vec<String>>(v.clone()).map_err(|e| {
                CniError::new(
                    DECODE,
                    "failed to decode the network configuration",
                    format!("field args.cni.ips: {e}"),
                )
            })?,
        };
        let network = raw
            .network
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| raw.name.clone());
        if network.is_empty() {
            return Err(CniError::new(
                crate::error::INVALID_CONFIG,
                "invalid network configuration",
                "no tapnet network: the configuration has neither \"network\" nor \"name\"",
            ));
        }
        Ok(NetConf {
            cni_version: raw.cni_version,
            name: raw.name,
            socket: raw
                .socket
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| DEFAULT_SOCKET.to_string()),
            network,
            runtime,
            args_ips,
            prev_result: raw.prev_result,
            valid_attachments: raw.valid_attachments,
        })
    }

    /// The static addresses requested for the attachment, by precedence.
    pub fn static_ips(&self, env: &Env) -> Result<Vec<(IpAddr, Option<u8>)>> {
        let list = match &self.runtime.ips {
            Some(v) if !v.is_empty() => v,
            _ if !self.args_ips.is_empty() => &self.args_ips,
            _ => &env.args.ips,
        };
        list.iter().map(|s| parse_ip(s)).collect()
    }

    /// The aliases requested for the attachment.
    pub fn aliases(&self) -> Vec<String> {
        match &self.runtime.aliases {
            None => Vec::new(),
            Some(Aliases::List(l)) => l.clone(),
            Some(Aliases::ByNetwork(m)) => m.get(&self.name).cloned().unwrap_or_default(),
        }
    }
}

/// `ip[/prefix]`.
fn parse_ip(s: &str) -> Result<(IpAddr, Option<u8>)> {
    let bad = || {
        CniError::new(
            crate::error::INVALID_CONFIG,
            "invalid static address",
            format!("{s:?} is not an IP address with an optional /prefix"),
        )
    };
    let (ip, prefix) = match s.split_once('/') {
        Some((ip, p)) => (ip, Some(p.parse::<u8>().map_err(|_| bad())?)),
        None => (s, None),
    };
    let ip: IpAddr = ip.parse().map_err(|_| bad())?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    if prefix.is_some_and(|p| p > max) {
        return Err(bad());
    }
    Ok((ip, prefix))
}

fn unsupported(key: &str, value: &Value, why: &str) -> CniError {
    CniError::new(
        UNSUPPORTED_FIELD,
        "unsupported field in network configuration",
        format!("{key}: {value}: not supported by tapnet-cni: {why}"),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> Result<Env> {
        let m: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Env::from_vars(|k| m.get(k).cloned())
    }

    const ADD: [(&str, &str); 4] = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "abc123"),
        ("CNI_NETNS", "/run/netns/x"),
        ("CNI_IFNAME", "eth0"),
    ];

    #[test]
    fn add_env_is_read() {
        let e = env(&ADD).unwrap();
        assert_eq!(e.command, Command::Add);
        assert_eq!(
            (e.container_id.as_str(), e.ifname.as_str()),
            ("abc123", "eth0")
        );
        assert_eq!(e.netns, "/run/netns/x");
    }

    #[test]
    fn missing_and_bad_env_are_named() {
        let e = env(&[("CNI_COMMAND", "ADD")]).unwrap_err();
        assert_eq!(e.code, INVALID_ENV);
        for v in ["CNI_CONTAINERID", "CNI_IFNAME", "CNI_NETNS"] {
            assert!(e.details.contains(v), "{e}");
        }
        let e = env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "-bad"),
            ("CNI_NETNS", "relative"),
            ("CNI_IFNAME", "a/b"),
        ])
        .unwrap_err();
        assert!(e.details.contains("CNI_CONTAINERID=\"-bad\""), "{e}");
        assert!(e.details.contains("CNI_NETNS=\"relative\""), "{e}");
        assert!(e.details.contains("CNI_IFNAME=\"a/b\""), "{e}");
        let e = env(&[("CNI_COMMAND", "FROB")]).unwrap_err();
        assert_eq!(e.code, INVALID_ENV);
        assert!(e.details.contains("CNI_COMMAND=\"FROB\""));
        let e = env(&[]).unwrap_err();
        assert!(e.details.contains("CNI_COMMAND"));
    }

    #[test]
    fn del_needs_no_netns_and_version_needs_nothing() {
        let e = env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_IFNAME", "eth0"),
        ])
        .unwrap();
        assert_eq!(e.netns, "");
        assert_eq!(
            env(&[("CNI_COMMAND", "VERSION")]).unwrap().command,
            Command::Version
        );
        assert_eq!(env(&[("CNI_COMMAND", "GC")]).unwrap().command, Command::Gc);
        assert_eq!(
            env(&[("CNI_COMMAND", "STATUS")]).unwrap().command,
            Command::Status
        );
    }

    #[test]
    fn cni_args() {
        let mut v = ADD.to_vec();
        v.push(("CNI_ARGS", "IP=10.1.0.9/24;K8S_POD_NAME=x"));
        assert_eq!(env(&v).unwrap().args.ips, vec!["10.1.0.9/24"]);
        v.pop();
        v.push(("CNI_ARGS", "FOO=1;IP=10.1.0.9"));
        let e = env(&v).unwrap_err();
        assert!(e.details.contains("unknown key(s) FOO"), "{e}");
        v.pop();
        v.push(("CNI_ARGS", "IgnoreUnknown=1;FOO=1"));
        assert!(env(&v).unwrap().args.ips.is_empty());
        v.pop();
        v.push(("CNI_ARGS", "junk"));
        assert!(env(&v).unwrap_err().details.contains("not KEY=VALUE"));
    }

    #[test]
    fn conf_defaults_and_keys() {
        let c =
            NetConf::parse(br#"{"cniVersion":"1.0.0","name":"tn","type":"tapnet-cni"}"#).unwrap();
        assert_eq!(
            (c.network.as_str(), c.socket.as_str()),
            ("tn", DEFAULT_SOCKET)
        );
        let c = NetConf::parse(
            br#"{"cniVersion":"1.1.0","name":"tn","type":"tapnet-cni","network":"other",
                "socket":"/x.sock","disableCheck":false,"cni.dev/whatever":1,
                "args":{"cni":{"ips":["10.0.0.5"],"labels":[]}},
                "runtimeConfig":{"bandwidth":{"x":1},"mac":"02:00:00:00:00:01",
                    "aliases":{"tn":["web"]},"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp"}]}}"#,
        )
        .unwrap();
        assert_eq!(
            (c.network.as_str(), c.socket.as_str()),
            ("other", "/x.sock")
        );
        assert_eq!(c.runtime.mac.as_deref(), Some("02:00:00:00:00:01"));
        assert_eq!(c.aliases(), vec!["web"]);
        assert_eq!(
            c.runtime.port_mappings.as_ref().unwrap()[0].container_port,
            80
        );
        assert_eq!(c.args_ips, vec!["10.0.0.5"]);
    }

    #[test]
    fn conf_errors_have_the_spec_codes() {
        assert_eq!(NetConf::parse(b"{not json").unwrap_err().code, DECODE);
        assert_eq!(NetConf::parse(b"[]").unwrap_err().code, DECODE);
        let e = NetConf::parse(br#"{"cniVersion":"1.0.0","name":5}"#).unwrap_err();
        assert_eq!(e.code, DECODE);
        assert!(e.details.contains("field name"), "{e}");
        let e = NetConf::parse(br#"{"cniVersion":"0.2.0","name":"n"}"#).unwrap_err();
        assert_eq!(e.code, INCOMPATIBLE_VERSION);
        let e = NetConf::parse(br#"{"name":"n"}"#).unwrap_err();
        assert_eq!(e.code, INCOMPATIBLE_VERSION);
        let e =
            NetConf::parse(br#"{"cniVersion":"1.0.0","name":"n","ipam":{"type":"host-local"}}"#)
                .unwrap_err();
        assert_eq!(e.code, UNSUPPORTED_FIELD);
        assert!(
            e.details.starts_with("ipam: {\"type\":\"host-local\"}"),
            "{e}"
        );
        let e = NetConf::parse(br#"{"cniVersion":"1.0.0","name":"n","bridge":"br0"}"#).unwrap_err();
        assert!(e.details.starts_with("bridge: \"br0\""), "{e}");
        let e = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"n","capabilities":{"bandwidth":true,"ips":true}}"#,
        )
        .unwrap_err();
        assert!(e.details.starts_with("capabilities.bandwidth: true"), "{e}");
        let e = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"n","runtimeConfig":{"portMappings":[{"hostPort":"x"}]}}"#,
        )
        .unwrap_err();
        assert_eq!(e.code, DECODE);
        assert!(e.details.contains("runtimeConfig.portMappings[0]"), "{e}");
        let e = NetConf::parse(br#"{"cniVersion":"1.0.0"}"#).unwrap_err();
        assert_eq!(e.code, crate::error::INVALID_CONFIG);
    }

    #[test]
    fn static_ip_precedence_and_parsing() {
        let e = env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "a"),
            ("CNI_NETNS", "/n"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", "IP=10.0.0.7"),
        ])
        .unwrap();
        let c = NetConf::parse(br#"{"cniVersion":"1.0.0","name":"n"}"#).unwrap();
        assert_eq!(
            c.static_ips(&e).unwrap(),
            vec![("10.0.0.7".parse().unwrap(), None)]
        );
        let c = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"n","args":{"cni":{"ips":["10.0.0.8/24"]}}}"#,
        )
        .unwrap();
        assert_eq!(
            c.static_ips(&e).unwrap(),
            vec![("10.0.0.8".parse().unwrap(), Some(24))]
        );
        let c = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"n","args":{"cni":{"ips":["10.0.0.8/24"]}},"runtimeConfig":{"ips":["fd00::9/64"]}}"#,
        )
        .unwrap();
        assert_eq!(
            c.static_ips(&e).unwrap(),
            vec![("fd00::9".parse().unwrap(), Some(64))]
        );
        for bad in ["10.0.0.1/33", "nope", "10.0.0.1/x"] {
            assert!(parse_ip(bad).is_err(), "{bad}");
        }
    }
}
