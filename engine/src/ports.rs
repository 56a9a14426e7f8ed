//! Published ports: Docker's `PortBindings` parsed into [`PortBinding`]s, checked
//! (syntax, duplicates, host port free now), and shaped back as Docker's
//! `NetworkSettings.Ports`.
//!
//! Contract: [`parse_port_bindings`] is pure and names the bad spec in its 400 error;
//! [`check_free`] binds each host port for an instant (TCP listener or UDP socket) and
//! gives a 409 "port 8080/tcp is already in use on 0.0.0.0" for the first one taken.
//! The real bind happens at the network's gateway when the sandbox joins its first
//! non-internal bridge network (see [`crate::controller`]).

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket};

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

    /// The gateway's protocol type.
    pub fn nat(self) -> tapnet_nat::Proto {
        match self {
            PortProto::Tcp => tapnet_nat::Proto::Tcp,
            PortProto::Udp => tapnet_nat::Proto::Udp,
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
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct PortBindingBody {
    /// Host address (empty: all).
    pub host_ip: Option<String>,
    /// Host port (empty: any free one).
    pub host_port: Option<String>,
}

fn bad(spec: &str, why: &str) -> Error {
    Error::InvalidRequest(format!("invalid port binding {spec:?}: {why}"))
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
pub fn parse_port_bindings(
    map: &BTreeMap<String, Option<Vec<PortBindingBody>>>,
) -> Result<Vec<PortBinding>> {
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
                IpAddr::V4(Ipv4Addr::UNSPECIFIED)
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
                return Err(Error::InvalidRequest(format!(
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

/// The 409 for a host port that is taken.
pub fn in_use(b: &PortBinding) -> Error {
    Error::Conflict(format!(
        "port {}/{} is already in use on {}",
        b.host_port,
        b.proto.as_str(),
        b.host_ip
    ))
}

/// Check that every fixed host port can be bound right now (binds and closes).
pub fn check_free(bindings: &[PortBinding]) -> Result<()> {
    for b in bindings.iter().filter(|b| b.host_port != 0) {
        let addr = SocketAddr::new(b.host_ip, b.host_port);
        let r = match b.proto {
            PortProto::Tcp => TcpListener::bind(addr).map(drop),
            PortProto::Udp => UdpSocket::bind(addr).map(drop),
        };
        match r {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => return Err(in_use(b)),
            Err(e) => {
                return Err(Error::InvalidRequest(format!(
                    "cannot bind host port {}/{} on {}: {e}",
                    b.host_port,
                    b.proto.as_str(),
                    b.host_ip
                )))
            }
        }
    }
    Ok(())
}

/// One host binding in Docker's `NetworkSettings.Ports`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct PortResource {
    /// Host address.
    pub host_ip: String,
    /// Host port (as bound).
    pub host_port: String,
}

/// Docker's `NetworkSettings.Ports`: every requested container port, with its bound
/// host addresses, or `null` while not bound.
pub fn ports_resource(
    bindings: &[PortBinding],
    published: Option<&Published>,
) -> BTreeMap<String, Option<Vec<PortResource>>> {
    let mut out: BTreeMap<String, Option<Vec<PortResource>>> = BTreeMap::new();
    for b in bindings {
        let bound = published.and_then(|p| p.ports.iter().find(|x| x.binding == *b));
        let entry = out.entry(b.key()).or_insert(None);
        if let Some(x) = bound {
            entry.get_or_insert_with(Vec::new).push(PortResource {
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

    fn body(ip: &str, port: &str) -> PortBindingBody {
        PortBindingBody {
            host_ip: Some(ip.into()),
            host_port: Some(port.into()),
        }
    }

    fn map(
        entries: &[(&str, Option<Vec<PortBindingBody>>)],
    ) -> BTreeMap<String, Option<Vec<PortBindingBody>>> {
        entries
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    #[test]
    fn parses_docker_port_bindings() {
        let m = map(&[
            ("80/tcp", Some(vec![body("", "8080")])),
            ("53/udp", Some(vec![body("127.0.0.1", "")])),
            ("443", None),
            (
                "9000/tcp",
                Some(vec![body("::1", "9000"), body("", "9001")]),
            ),
        ]);
        let b = parse_port_bindings(&m).unwrap();
        assert_eq!(
            b[0],
            PortBinding {
                port: 443,
                proto: PortProto::Tcp,
                host_ip: "0.0.0.0".parse().unwrap(),
                host_port: 0
            }
        );
        assert_eq!(b[1].key(), "53/udp");
        assert_eq!(b[1].host_ip, "127.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(b[1].host_port, 0);
        assert_eq!((b[2].port, b[2].host_port), (80, 8080));
        assert_eq!(b[3].host_ip, "::1".parse::<IpAddr>().unwrap());
        assert_eq!(b[4].host_port, 9001);
    }

    #[test]
    fn bad_specs_name_the_key() {
        for (k, h, want) in [
            ("80/sctp", body("", "1"), "sctp"),
            ("80/xyz", body("", "1"), "tcp or udp"),
            ("0/tcp", body("", "1"), "1 to 65535"),
            ("70000", body("", "1"), "1 to 65535"),
            ("80-90/tcp", body("", "1"), "ranges"),
            ("80/tcp", body("nope", "1"), "not an IP"),
            ("80/tcp", body("", "99999"), "HostPort"),
            ("80/tcp", body("", "80-90"), "ranges"),
        ] {
            let e = parse_port_bindings(&map(&[(k, Some(vec![h]))])).unwrap_err();
            assert_eq!(e.status(), 400, "{k}");
            let msg = e.to_string();
            assert!(msg.contains(k) && msg.contains(want), "{k}: {msg}");
        }
        // The same host port twice.
        let e = parse_port_bindings(&map(&[
            ("80/tcp", Some(vec![body("", "8080")])),
            ("81/tcp", Some(vec![body("127.0.0.1", "8080")])),
        ]))
        .unwrap_err();
        assert_eq!(e.status(), 400);
        // Same port, other protocol: fine.
        parse_port_bindings(&map(&[
            ("80/tcp", Some(vec![body("", "8080")])),
            ("80/udp", Some(vec![body("", "8080")])),
        ]))
        .unwrap();
    }

    #[test]
    fn check_free_reports_taken_port() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let b = PortBinding {
            port: 80,
            proto: PortProto::Tcp,
            host_ip: "127.0.0.1".parse().unwrap(),
            host_port: port,
        };
        let e = check_free(&[b]).unwrap_err();
        assert_eq!(e.status(), 409);
        assert_eq!(
            e.to_string(),
            format!("port {port}/tcp is already in use on 127.0.0.1")
        );
        drop(l);
        check_free(&[b]).unwrap();
        // Random host ports are never checked.
        check_free(&[PortBinding { host_port: 0, ..b }]).unwrap();
    }

    #[test]
    fn ports_resource_shape() {
        let b = parse_port_bindings(&map(&[
            ("80/tcp", Some(vec![body("", "")])),
            ("53/udp", None),
        ]))
        .unwrap();
        let none = ports_resource(&b, None);
        assert_eq!(
            serde_json::to_value(&none).unwrap(),
            serde_json::json!({"80/tcp": null, "53/udp": null})
        );
        let tcp = b
            .iter()
            .find(|x| x.proto == PortProto::Tcp)
            .copied()
            .unwrap();
        let p = Published {
            network_id: "n".into(),
            sandbox_ip: "10.0.0.2".parse().unwrap(),
            ports: vec![BoundPort {
                binding: tcp,
                host: "0.0.0.0:32768".parse().unwrap(),
            }],
        };
        assert_eq!(
            serde_json::to_value(ports_resource(&b, Some(&p))).unwrap(),
            serde_json::json!({"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "32768"}], "53/udp": null})
        );
    }
}
