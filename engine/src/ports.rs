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
//!
//! Dual stack: a binding without a host address (`-p 8080:80`, `HostIp: ""`) has host
//! IP `::`, and means every address of both families, as with dockerd: [`publish_dual`]
//! binds two sockets on the same port, `0.0.0.0` (which picks the port when none is
//! given) and `[::]` (IPv6-only), and the binding is recorded as `[::]:PORT`;
//! [`unpublish_dual`] closes both. On a host without IPv6 the IPv4 socket alone is
//! bound (logged). [`check_free`] checks both families of such a binding. A binding
//! with an explicit `0.0.0.0` stays IPv4-only.

use crate::error::{Error, Result};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket};
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

/// Whether `ip` is the "both families" host address of a binding without one (`::`).
pub fn is_dual(ip: IpAddr) -> bool {
    ip == IpAddr::V6(Ipv6Addr::UNSPECIFIED)
}

/// The OS says this host has no IPv6 (the family or the address is unavailable).
fn no_ipv6(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EAFNOSUPPORT | libc::EADDRNOTAVAIL | libc::EPROTONOSUPPORT)
    )
}

/// Check that every fixed host port can be bound right now (binds and closes); a
/// binding without a host address on both families (IPv6 skipped on a host without it).
pub fn check_free(bindings: &[PortBinding]) -> Result<()> {
    for b in bindings.iter().filter(|b| b.host_port != 0) {
        let addrs = if is_dual(b.host_ip) {
            vec![IpAddr::V4(Ipv4Addr::UNSPECIFIED), b.host_ip]
        } else {
            vec![b.host_ip]
        };
        for ip in addrs {
            check_one(b, SocketAddr::new(ip, b.host_port))?;
        }
    }
    Ok(())
}

fn check_one(b: &PortBinding, addr: SocketAddr) -> Result<()> {
    {
        let r = match b.proto {
            PortProto::Tcp => TcpListener::bind(addr).map(drop),
            PortProto::Udp => UdpSocket::bind(addr).map(drop),
        };
        match r {
            Ok(()) => {}
            Err(e) if addr.is_ipv6() && is_dual(b.host_ip) && no_ipv6(&e) => {}
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

/// Publish `spec` through `publish` (one host socket each call), both families for a
/// host address of `::` (see the module doc): `0.0.0.0` first, then `[::]` on the port
/// it got; if the IPv6 socket fails for another reason than a host without IPv6, the
/// IPv4 one is closed again (`unpublish`) and the error returned. Returns the address
/// to record (`[::]:PORT` for both families).
pub fn publish_dual(
    spec: tapnet_nat::PublishSpec,
    publish: impl Fn(tapnet_nat::PublishSpec) -> std::result::Result<SocketAddr, tapnet_nat::Error>,
    unpublish: impl Fn(tapnet_nat::Proto, SocketAddr) -> std::result::Result<(), tapnet_nat::Error>,
) -> std::result::Result<SocketAddr, tapnet_nat::Error> {
    if !is_dual(spec.host_ip) {
        return publish(spec);
    }
    let v4 = publish(tapnet_nat::PublishSpec {
        host_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        ..spec
    })?;
    let v6 = tapnet_nat::PublishSpec {
        host_port: v4.port(),
        ..spec
    };
    match publish(v6) {
        Ok(addr) => Ok(addr),
        Err(tapnet_nat::Error::Io { source, .. }) if no_ipv6(&source) => {
            tracing::warn!(port = v4.port(), error = %source, "no IPv6 on this host: port published on IPv4 only");
            Ok(SocketAddr::new(spec.host_ip, v4.port()))
        }
        Err(e) => {
            if let Err(u) = unpublish(spec.proto, v4) {
                tracing::warn!(error = %u, "closing the IPv4 socket of a port again");
            }
            Err(e)
        }
    }
}

/// Close what [`publish_dual`] opened at `addr`: both sockets for `[::]:PORT` (the
/// IPv6 one may be absent on a host without IPv6).
pub fn unpublish_dual(
    proto: tapnet_nat::Proto,
    addr: SocketAddr,
    unpublish: impl Fn(tapnet_nat::Proto, SocketAddr) -> std::result::Result<(), tapnet_nat::Error>,
) -> std::result::Result<(), tapnet_nat::Error> {
    if !is_dual(addr.ip()) {
        return unpublish(proto, addr);
    }
    let v4 = unpublish(
        proto,
        SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), addr.port()),
    );
    match unpublish(proto, addr) {
        Ok(()) | Err(tapnet_nat::Error::NotPublished { .. }) => v4,
        Err(e) => v4.and(Err(e)),
    }
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
                host_ip: "::".parse().unwrap(),
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

    #[test]
    fn dual_publish_binds_both_families_on_one_port() {
        use std::cell::RefCell;
        use tapnet_nat::{Error as NatError, Proto, PublishSpec};
        let spec = PublishSpec {
            host_ip: "::".parse().unwrap(),
            host_port: 0,
            proto: Proto::Tcp,
            sandbox_ip: "10.0.0.2".parse().unwrap(),
            sandbox_port: 80,
        };
        let io = |errno: i32| NatError::Io {
            op: "bind".into(),
            source: std::io::Error::from_raw_os_error(errno),
        };
        // `v6`: what binding the IPv6 socket does.
        let run = |v6: Option<i32>| {
            let opened = RefCell::new(Vec::<SocketAddr>::new());
            let closed = RefCell::new(Vec::<SocketAddr>::new());
            let r = publish_dual(
                spec,
                |s| {
                    let port = if s.host_port == 0 { 40000 } else { s.host_port };
                    match (s.host_ip.is_ipv6(), v6) {
                        (true, Some(errno)) => Err(io(errno)),
                        _ => {
                            let a = SocketAddr::new(s.host_ip, port);
                            opened.borrow_mut().push(a);
                            Ok(a)
                        }
                    }
                },
                |_, a| {
                    closed.borrow_mut().push(a);
                    Ok(())
                },
            );
            (r, opened.into_inner(), closed.into_inner())
        };
        let (r, opened, closed) = run(None);
        assert_eq!(r.unwrap(), "[::]:40000".parse().unwrap());
        assert_eq!(
            opened,
            vec![
                "0.0.0.0:40000".parse().unwrap(),
                "[::]:40000".parse().unwrap()
            ]
        );
        assert!(closed.is_empty());
        // No IPv6 on the host: IPv4 alone.
        let (r, opened, closed) = run(Some(libc::EAFNOSUPPORT));
        assert_eq!(r.unwrap(), "[::]:40000".parse().unwrap());
        assert_eq!(opened, vec!["0.0.0.0:40000".parse().unwrap()]);
        assert!(closed.is_empty());
        // Another failure: the IPv4 socket is closed again.
        let (r, _, closed) = run(Some(libc::EACCES));
        assert!(r.is_err());
        assert_eq!(closed, vec!["0.0.0.0:40000".parse::<SocketAddr>().unwrap()]);
        // Unpublishing closes both; an absent IPv6 socket is no error.
        let closed = RefCell::new(Vec::new());
        unpublish_dual(Proto::Tcp, "[::]:40000".parse().unwrap(), |p, a| {
            closed.borrow_mut().push(a);
            if a.is_ipv6() {
                Err(NatError::NotPublished { proto: p, addr: a })
            } else {
                Ok(())
            }
        })
        .unwrap();
        assert_eq!(closed.into_inner().len(), 2);
        // A single-family address is one socket.
        let n = RefCell::new(0);
        unpublish_dual(Proto::Udp, "127.0.0.1:53".parse().unwrap(), |_, _| {
            *n.borrow_mut() += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(n.into_inner(), 1);
    }
}
