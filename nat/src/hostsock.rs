//! Host sockets of published ports.
//!
//! Contract: [`bind_tcp`] and [`bind_udp`] bind non-blocking mio sockets as
//! `mio::net::TcpListener::bind` / `UdpSocket::bind` do (TCP: `SO_REUSEADDR`, backlog
//! 1024), except that an IPv6 socket is IPv6-only (`IPV6_V6ONLY`, whatever
//! `net.ipv6.bindv6only` says): an IPv4 and an IPv6 socket can then hold the same port,
//! which is how a port published without a host address listens on both families
//! (dockerd's `0.0.0.0:8080` + `[::]:8080`), and an IPv6 socket never sees IPv4 clients
//! as mapped addresses.

use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::net::SocketAddr;

fn socket(addr: SocketAddr, ty: Type, proto: Protocol) -> io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), ty, Some(proto))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_nonblocking(true)?;
    Ok(s)
}

/// A listening TCP socket on `addr`.
pub(crate) fn bind_tcp(addr: SocketAddr) -> io::Result<mio::net::TcpListener> {
    let s = socket(addr, Type::STREAM, Protocol::TCP)?;
    s.set_reuse_address(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    Ok(mio::net::TcpListener::from_std(s.into()))
}

/// A UDP socket bound to `addr`.
pub(crate) fn bind_udp(addr: SocketAddr) -> io::Result<mio::net::UdpSocket> {
    let s = socket(addr, Type::DGRAM, Protocol::UDP)?;
    s.bind(&addr.into())?;
    Ok(mio::net::UdpSocket::from_std(s.into()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn v4_and_v6_share_a_port() {
        let v4 = bind_tcp("127.0.0.1:0".parse().unwrap()).unwrap();
        let port = v4.local_addr().unwrap().port();
        let Ok(v6) = bind_tcp(SocketAddr::new("::".parse().unwrap(), port)) else {
            return; // no IPv6 on this machine
        };
        assert_eq!(v6.local_addr().unwrap().port(), port);
        let u4 = bind_udp("0.0.0.0:0".parse().unwrap()).unwrap();
        let port = u4.local_addr().unwrap().port();
        bind_udp(SocketAddr::new("::".parse().unwrap(), port)).unwrap();
        // The same family twice is still refused.
        assert_eq!(
            bind_udp(SocketAddr::new("0.0.0.0".parse().unwrap(), port))
                .unwrap_err()
                .kind(),
            io::ErrorKind::AddrInUse
        );
    }
}
