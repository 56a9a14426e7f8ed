//! Published ports: the stored bindings, Docker's `PortBindings` request shape and
//! its parsing, and Docker's `NetworkSettings.Ports` answer shape.
//!
//! Contract: [`parse_port_bindings`] is pure and names the bad spec in its error
//! ([`Error::Invalid`]); it refuses two bindings that ask for the same host port
//! ([`clashes`]). Whether a host port is free is not decided here (that needs the
//! OS: the engine checks it). [`ports_resource`] lists every requested container
//! port, with its bound host addresses or `null` while not bound. A binding without a
//! host address (`HostIp` empty or absent) has host IP `::`: every address of both
//! families, as dockerd's `-p 8080:80` (the engine binds `0.0.0.0` and `[::]`, and
//! [`ports_resource`] lists both); an explicit `0.0.0.0` means IPv4 only. [`PortBinding`],
//! [`BoundPort`] and [`Published`] are stored records: their serde shape does not
//! change.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Transport protocol of a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PortProto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl PortProto {
    /// `tcp` or `udp`.
    pub fn as_str(self) -> &'static str {
        match self {
            PortProto::Tcp => "tcp",
            PortProto::Udp => "udp",
        }
    }
}

/// One requested published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PortBinding {
    /// The port inside the sandbox.
    pub port: u16,
    /// TCP or UDP.
    pub proto: PortProto,
    /// Host address to bind (`0.0.0.0` for all).
    pub host_ip: IpAddr,
    /// Host port (0: any free one, picked when bound).
    pub host_port: u16,
}

impl PortBinding {
    /// `80/tcp`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.port, self.proto.as_str())
    }
}

/// A binding as bound at a gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BoundPort {
    /// What was asked for.
    pub binding: PortBinding,
    /// The bound host address (its port is the one picked for host port 0).
    pub host: SocketAddr,
}

/// Where a sandbox's ports are bound.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    /// The network whose gateway holds the host sockets.
    pub network_id: String,
    /// The sandbox address the ports lead to.
    pub sandbox_ip: IpAddr,
    /// Every bound port.
    pub ports: Vec<BoundPort>,
}

/// One host binding of Docker's `PortBindings` (`{"HostIp": "", "HostPort": "8080"}`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct PortBindingBody {
    /// Host address (empty: all).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<String>,
    /// Host port (empty: any free one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_port: Option<String>,
}

/// Docker's `PortBindings`: container port (`80/tcp`) → host bindings (`null` or an
/// empty list: one binding on all addresses, any free port).
pub type PortBindingsBody = BTreeMap<String, Option<Vec<PortBindingBody>>>;

fn bad(spec: &str, why: &str) -> Error {
    Error::Invalid(format!("invalid port binding {spec:?}: {why}"))
}

/// Parse `80`, `80/tcp`, `53/udp` (no ranges).
pub fn parse_container_port(spec: &str) -> Result<(u16, PortProto)> {
    let (port, proto) = match spec.split_once('/') {
        Some((p, proto)) => (p, proto),
        None => (spec, "tcp"),
    };
    let proto = match proto.to_ascii_lowercase().as_str() {
        "tcp" => PortProto::Tcp,
        "udp" => PortProto::Udp,
        "sctp" => return Err(bad(spec, "sctp is not supported (tcp or udp)")),
        _ => return Err(bad(spec, "the protocol must be tcp or udp")),
    };
    if port.contains('-') {
        return Err(bad(spec, "port ranges are not supported"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok((p, proto)),
        _ => Err(bad(spec, "the port must be a number from 1 to 65535")),
    }
}

/// Parse Docker's `PortBindings` map into bindings (in key order), checking each
/// spec and that no host address, port and protocol is asked for twice.
pub fn parse_port_bindings(map: &PortBindingsBody) -> Result<Vec<PortBinding>> {
    let mut out: Vec<PortBinding> = Vec::new();
    for (key, hosts) in map {
        let (port, proto) = parse_container_port(key.trim())?;
        let hosts = match hosts {
            Some(h) if !h.is_empty() => h.clone(),
            _ => vec![PortBindingBody::default()],
        };
        for h in hosts {
            let ip_s = h.host_ip.as_deref().map(str::trim).unwrap_or("");
            let host_ip = if ip_s.is_empty() {
                // Both families (see the module doc).
                IpAddr::V6(Ipv6Addr::UNSPECIFIED)
            } else {
                ip_s.trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<IpAddr>()
                    .map_err(|_| bad(key, &format!("HostIp {ip_s:?} is not an IP address")))?
            };
            let port_s = h.host_port.as_deref().map(str::trim).unwrap_or("");
            let host_port = if port_s.is_empty() {
                0
            } else if port_s.contains('-') {
                return Err(bad(key, "host port ranges are not supported"));
            } else {
                port_s.parse::<u16>().map_err(|_| {
                    bad(
                        key,
                        &format!("HostPort {port_s:?} must be a number from 0 to 65535"),
                    )
                })?
            };
            let b = PortBinding {
                port,
                proto,
                host_ip,
                host_port,
            };
            if let Some(o) = out.iter().find(|o| clashes(o, &b)) {
                return Err(Error::Invalid(format!(
                    "port bindings {} and {} both ask for host port {} on {}",
                    o.key(),
                    b.key(),
                    b.host_port,
                    b.host_ip
                )));
            }
            out.push(b);
        }
    }
    Ok(out)
}

/// Whether two bindings want the same host port (same protocol, overlapping address).
pub fn clashes(a: &PortBinding, b: &PortBinding) -> bool {
    a.host_port != 0
        && a.host_port == b.host_port
        && a.proto == b.proto
        && (a.host_ip == b.host_ip || a.host_ip.is_unspecified() || b.host_ip.is_unspecified())
}

/// One host binding in Docker's `NetworkSettings.Ports`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct PortResource {
    /// Host address.
    pub host_ip: String,
    /// Host port (as bound).
    pub host_port: String,
}

/// Docker's `NetworkSettings.Ports`: container port → bound host addresses, `null`
/// while not bound.
pub type PortsResource = BTreeMap<String, Option<Vec<PortResource>>>;

/// Docker's `NetworkSettings.Ports`: every requested container port, with its bound
/// host addresses, or `null` while not bound.
pub fn ports_resource(bindings: &[PortBinding], published: Option<&Published>) -> PortsResource {
    let mut out = PortsResource::new();
    for b in bindings {
        let bound = published.and_then(|p| p.ports.iter().find(|x| x.binding == *b));
        let entry = out.entry(b.key()).or_insert(None);
        if let Some(x) = bound {
            let list = entry.get_or_insert_with(Vec::new);
            if x.host.ip() == IpAddr::V6(Ipv6Addr::UNSPECIFIED) {
                // Both families: dockerd lists the IPv4 socket, then the IPv6 one.
                list.push(PortResource {
                    host_ip: Ipv4Addr::UNSPECIFIED.to_string(),
                    host_port: x.host.port().to_string(),
                });
            }
            list.push(PortResource {
                host_ip: x.host.ip().to_string(),
                host_port: x.host.port().to_string(),
            });
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(ip: &str, port: &str) -> PortBindingBody {
        PortBindingBody {
            host_ip: Some(ip.into()),
            host_port: Some(port.into()),
        }
    }

    #[test]
    fn parses_and_names_bad_specs() {
        let m: PortBindingsBody = [
            ("80/tcp".to_string(), Some(vec![body("", "8080")])),
            ("53/udp".to_string(), None),
        ]
        .into_iter()
        .collect();
        let b = parse_port_bindings(&m).unwrap();
        assert_eq!((b[0].key(), b[0].host_port), ("53/udp".to_string(), 0));
        assert_eq!((b[1].key(), b[1].host_port), ("80/tcp".to_string(), 8080));
        let e = parse_container_port("80/sctp").unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid port binding \"80/sctp\": sctp is not supported (tcp or udp)"
        );
        let clash: PortBindingsBody = [
            ("80/tcp".to_string(), Some(vec![body("", "8080")])),
            ("81/tcp".to_string(), Some(vec![body("127.0.0.1", "8080")])),
        ]
        .into_iter()
        .collect();
        assert!(matches!(
            parse_port_bindings(&clash),
            Err(Error::Invalid(_))
        ));
    }

    #[test]
    fn body_shapes() {
        // What the CLI sends and what the daemon reads.
        let m: PortBindingsBody = [("80/tcp".to_string(), Some(vec![body("", "8080")]))]
            .into_iter()
            .collect();
        assert_eq!(
            serde_json::to_value(&m).unwrap(),
            json!({"80/tcp": [{"HostIp": "", "HostPort": "8080"}]})
        );
        let back: PortBindingsBody =
            serde_json::from_value(json!({"80/tcp": [{"HostPort": "1"}], "53/udp": null})).unwrap();
        assert_eq!(back["80/tcp"].as_ref().unwrap()[0].host_ip, None);
        assert_eq!(back["53/udp"], None);
    }

    #[test]
    fn stored_shape() {
        let b = PortBinding {
            port: 80,
            proto: PortProto::Tcp,
            host_ip: "0.0.0.0".parse().unwrap(),
            host_port: 8080,
        };
        assert_eq!(
            serde_json::to_value(b).unwrap(),
            json!({"port": 80, "proto": "tcp", "host_ip": "0.0.0.0", "host_port": 8080})
        );
        let p = Published {
            network_id: "n".into(),
            sandbox_ip: "10.0.0.2".parse().unwrap(),
            ports: vec![BoundPort {
                binding: b,
                host: "0.0.0.0:8080".parse().unwrap(),
            }],
        };
        assert_eq!(
            serde_json::to_value(ports_resource(&[b], Some(&p))).unwrap(),
            json!({"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}]})
        );
        assert_eq!(
            serde_json::to_value(ports_resource(&[b], None)).unwrap(),
            json!({"80/tcp": null})
        );
    }

    #[test]
    fn no_host_ip_is_both_families() {
        let m: PortBindingsBody = [
            ("80/tcp".to_string(), Some(vec![body("", "8080")])),
            ("81/tcp".to_string(), Some(vec![body("0.0.0.0", "8081")])),
        ]
        .into_iter()
        .collect();
        let b = parse_port_bindings(&m).unwrap();
        assert_eq!(b[0].host_ip, "::".parse::<IpAddr>().unwrap());
        assert_eq!(b[1].host_ip, "0.0.0.0".parse::<IpAddr>().unwrap());
        // A both-families binding clashes with any address on its port.
        let v4 = PortBinding {
            host_ip: "127.0.0.1".parse().unwrap(),
            ..b[0]
        };
        assert!(clashes(&b[0], &v4));
        let p = Published {
            network_id: "n".into(),
            sandbox_ip: "10.0.0.2".parse().unwrap(),
            ports: vec![BoundPort {
                binding: b[0],
                host: "[::]:8080".parse().unwrap(),
            }],
        };
        assert_eq!(
            serde_json::to_value(ports_resource(&b[..1], Some(&p))).unwrap(),
            json!({"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}, {"HostIp": "::", "HostPort": "8080"}]})
        );
    }
}
