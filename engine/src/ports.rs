//! Published ports: the records and Docker's shapes come from
//! [`tapnet_types::ports`] (re-exported here); this module adds what needs the OS or
//! the gateway: [`check_free`], the 409 of a taken port, and the gateway's protocol
//! type ([`NatProto`]).
//!
//! Contract: [`parse_port_bindings`] is pure and names the bad spec in its 400 error;
//! [`check_free`] binds each host port for an instant (TCP listener or UDP socket) and
//! gives a 409 "port 8080/tcp is already in use on 0.0.0.0" for the first one taken.
//! The real bind happens at the network's gateway when the sandbox joins its first
//! non-internal bridge network (see [`crate::controller`]).

use crate::error::{Error, Result};
use std::net::{SocketAddr, TcpListener, UdpSocket};
pub use tapnet_types::ports::{
    clashes, ports_resource, BoundPort, PortBinding, PortBindingBody, PortBindingsBody, PortProto,
    PortResource, PortsResource, Published,
};

/// The gateway's protocol type of a [`PortProto`].
pub trait NatProto {
    /// The gateway's protocol type.
    fn nat(self) -> tapnet_nat::Proto;
}

impl NatProto for PortProto {
    fn nat(self) -> tapnet_nat::Proto {
        match self {
            PortProto::Tcp => tapnet_nat::Proto::Tcp,
            PortProto::Udp => tapnet_nat::Proto::Udp,
        }
    }
}

/// Parse `80`, `80/tcp`, `53/udp` (no ranges).
pub fn parse_container_port(spec: &str) -> Result<(u16, PortProto)> {
    Ok(tapnet_types::ports::parse_container_port(spec)?)
}

/// Parse Docker's `PortBindings` map into bindings (in key order), checking each
/// spec and that no host address, port and protocol is asked for twice.
pub fn parse_port_bindings(map: &PortBindingsBody) -> Result<Vec<PortBinding>> {
    Ok(tapnet_types::ports::parse_port_bindings(map)?)
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::net::IpAddr;

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
