//! Minimal synchronous rtnetlink client.
//!
//! Contract:
//! * A [`Handle`] talks to the network namespace of the thread that created it (a
//!   netlink socket binds to its creator's namespace for its whole life), so create it
//!   inside [`crate::netns::Netns::run`] to act on a sandbox.
//! * Every request is sent with `NLM_F_REQUEST|NLM_F_ACK` (plus `NLM_F_CREATE|NLM_F_EXCL`
//!   for additions) and the call blocks until the kernel's ack or error for that
//!   request's sequence number; dumps read until `NLMSG_DONE`. Messages for other
//!   sequence numbers are skipped.
//! * A refusal becomes [`Error::Netlink`] naming the operation, with the errno text and,
//!   when the kernel supplies one, its extended-ack message.
//!
//! * Removals ([`Handle::delete_address`], [`Handle::delete_route`]) treat "not there"
//!   as done, so undoing twice (or undoing on a link that vanished) is harmless.
//!
//! Only what tapnet needs is here: links (lookup, dump, up, MTU, MAC, txqueuelen,
//! rename, move to another namespace, delete), IPv4/IPv6 addresses (add, delete),
//! routes of the main table (add, delete; default routes), and a dump of the IPv4
//! routes of the main table.

use crate::{Error, Result};
use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_REQUEST,
};
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage, AddressScope,
};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::protocols::NETLINK_ROUTE;
use netlink_sys::{Socket, SocketAddr};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, BorrowedFd};
use tapnet_wire::MacAddr;

/// The longest a netlink request waits for the kernel's answer.
pub const NETLINK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// `NLMSGERR_ATTR_MSG` from `linux/netlink.h`: the extended-ack error string.
const NLMSGERR_ATTR_MSG: u16 = 1;
/// `NLM_F_CAPPED` from `linux/netlink.h`: the echoed request in an error is only its header.
const NLM_F_CAPPED: u16 = netlink_packet_core::NLM_F_CAPPED;
/// `NLM_F_ACK_TLVS` from `linux/netlink.h`: extended-ack TLVs follow the echoed request.
const NLM_F_ACK_TLVS: u16 = netlink_packet_core::NLM_F_ACK_TLVS;
/// Length of a `struct nlmsghdr`.
const NLMSG_HDRLEN: usize = 16;

/// One link as reported by an `RTM_GETLINK` dump.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    /// Interface index.
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// MTU, if reported.
    pub mtu: Option<u32>,
    /// Hardware address, if reported (6 bytes for Ethernet-like links).
    pub mac: Option<Vec<u8>>,
    /// `txqueuelen`, if reported.
    pub txqueuelen: Option<u32>,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
}

/// A synchronous rtnetlink connection bound to the creating thread's network namespace.
#[derive(Debug)]
pub struct Handle {
    socket: Socket,
    seq: u32,
}

fn os_err(op: impl Into<String>, source: std::io::Error) -> Error {
    Error::Os {
        op: op.into(),
        source,
    }
}

fn nl_err(op: &str, message: impl Into<String>) -> Error {
    Error::Netlink {
        op: op.to_string(),
        message: message.into(),
    }
}

/// Extract the extended-ack message (`NLMSGERR_ATTR_MSG`) from the bytes that follow
/// the errno in an `NLMSG_ERROR` payload. `flags` are the error message's own flags.
fn ext_ack_message(flags: u16, echoed: &[u8]) -> Option<String> {
    if flags & NLM_F_ACK_TLVS == 0 {
        return None;
    }
    let skip = if flags & NLM_F_CAPPED != 0 {
        NLMSG_HDRLEN
    } else {
        let len = echoed.get(0..4)?;
        let len = u32::from_ne_bytes([len[0], len[1], len[2], len[3]]) as usize;
        len.checked_add(3)? & !3
    };
    let mut tlvs = echoed.get(skip..)?;
    while tlvs.len() >= 4 {
        let len = u16::from_ne_bytes([tlvs[0], tlvs[1]]) as usize;
        let kind = u16::from_ne_bytes([tlvs[2], tlvs[3]]) & netlink_packet_core::NLA_TYPE_MASK;
        if len < 4 || len > tlvs.len() {
            return None;
        }
        if kind == NLMSGERR_ATTR_MSG {
            let value = &tlvs[4..len];
            let end = value.iter().position(|&b| b == 0).unwrap_or(value.len());
            return Some(String::from_utf8_lossy(&value[..end]).into_owned());
        }
        let advance = (len + 3) & !3;
        tlvs = tlvs.get(advance..)?;
    }
    None
}

/// Describe an `NLMSG_ERROR` code (negative errno) plus optional extended ack.
fn describe_errno(code: i32, ext: Option<String>) -> String {
    let io = std::io::Error::from_raw_os_error(code.abs());
    match ext {
        Some(m) if !m.is_empty() => format!("{io} ({m})"),
        _ => io.to_string(),
    }
}

/// What a request expects back.
enum Expect {
    /// Just the ack.
    Ack,
    /// A dump: every inner message until `NLMSG_DONE`.
    Dump,
    /// A single answer (a `GET` without `NLM_F_DUMP`), then the ack.
    One,
}

/// The errno of a failed request, kept apart so callers can react to a specific one.
struct Refused {
    errno: i32,
    message: String,
}

impl Handle {
    /// Open a `NETLINK_ROUTE` socket in the current thread's network namespace.
    pub fn new() -> Result<Handle> {
        let mut socket =
            Socket::new(NETLINK_ROUTE).map_err(|e| os_err("open NETLINK_ROUTE socket", e))?;
        socket
            .bind_auto()
            .map_err(|e| os_err("bind NETLINK_ROUTE socket", e))?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(|e| os_err("connect NETLINK_ROUTE socket", e))?;
        // Best effort: richer error text and short acks. Older kernels may refuse.
        let _ = socket.set_ext_ack(true);
        let _ = socket.set_cap_ack(true);
        // Bound every wait for the kernel's answer: a request never blocks its
        // caller (and the operation holding locks above it) for longer than this.
        let fd = socket.as_raw_fd();
        // SAFETY: `fd` is the socket just opened above, alive for this call.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        nix::sys::socket::setsockopt(
            &borrowed,
            nix::sys::socket::sockopt::ReceiveTimeout,
            &nix::sys::time::TimeVal::new(NETLINK_TIMEOUT.as_secs() as _, 0),
        )
        .map_err(|e| {
            os_err(
                "set a receive timeout on the NETLINK_ROUTE socket",
                e.into(),
            )
        })?;
        Ok(Handle { socket, seq: 0 })
    }

    /// Send `msg` and collect the answer. `Err(Ok(refused))` is a kernel refusal.
    fn request(
        &mut self,
        op: &str,
        msg: RouteNetlinkMessage,
        flags: u16,
        expect: Expect,
    ) -> Result<std::result::Result<Vec<RouteNetlinkMessage>, Refused>> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        packet.finalize();
        let mut buf = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.socket
            .send(&buf, 0)
            .map_err(|e| os_err(format!("netlink send ({op})"), e))?;

        let mut answers = Vec::new();
        loop {
            let (data, _) = self
                .socket
                .recv_from_full()
                .map_err(|e| os_err(format!("netlink receive ({op})"), e))?;
            let mut offset = 0usize;
            while offset + NLMSG_HDRLEN <= data.len() {
                let rest = &data[offset..];
                let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
                if len < NLMSG_HDRLEN || len > rest.len() {
                    return Err(nl_err(op, format!("malformed reply (length {len})")));
                }
                let raw = &rest[..len];
                offset += (len + 3) & !3;
                let msg_seq = u32::from_ne_bytes([raw[8], raw[9], raw[10], raw[11]]);
                if msg_seq != seq {
                    continue;
                }
                let parsed = NetlinkMessage::<RouteNetlinkMessage>::deserialize(raw)
                    .map_err(|e| nl_err(op, format!("unparseable reply: {e}")))?;
                let msg_flags = parsed.header.flags;
                match parsed.payload {
                    NetlinkPayload::Error(e) => {
                        return Ok(match e.code {
                            None => Ok(answers),
                            Some(code) => Err(Refused {
                                errno: code.get().abs(),
                                message: describe_errno(
                                    code.get(),
                                    ext_ack_message(msg_flags, &e.header),
                                ),
                            }),
                        });
                    }
                    NetlinkPayload::Done(_) => {
                        if matches!(expect, Expect::Dump) {
                            return Ok(Ok(answers));
                        }
                    }
                    NetlinkPayload::InnerMessage(inner) => {
                        answers.push(inner);
                        if matches!(expect, Expect::One) && flags & NLM_F_ACK == 0 {
                            return Ok(Ok(answers));
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// A request that must be acked; a refusal becomes [`Error::Netlink`].
    fn ack(&mut self, op: &str, msg: RouteNetlinkMessage, extra_flags: u16) -> Result<()> {
        match self.request(
            op,
            msg,
            NLM_F_REQUEST | NLM_F_ACK | extra_flags,
            Expect::Ack,
        )? {
            Ok(_) => Ok(()),
            Err(r) => Err(nl_err(op, r.message)),
        }
    }

    /// A removal that must be acked, where "not there" (`ENOENT`, `ESRCH`, `ENODEV`,
    /// `EADDRNOTAVAIL`) counts as done.
    fn ack_unless_gone(&mut self, op: &str, msg: RouteNetlinkMessage) -> Result<()> {
        match self.request(op, msg, NLM_F_REQUEST | NLM_F_ACK, Expect::Ack)? {
            Ok(_) => Ok(()),
            Err(r)
                if matches!(
                    r.errno,
                    libc::ENOENT | libc::ESRCH | libc::ENODEV | libc::EADDRNOTAVAIL
                ) =>
            {
                Ok(())
            }
            Err(r) => Err(nl_err(op, r.message)),
        }
    }

    /// A dump request.
    fn dump(&mut self, op: &str, msg: RouteNetlinkMessage) -> Result<Vec<RouteNetlinkMessage>> {
        match self.request(op, msg, NLM_F_REQUEST | NLM_F_DUMP, Expect::Dump)? {
            Ok(v) => Ok(v),
            Err(r) => Err(nl_err(op, r.message)),
        }
    }

    /// The interface index of `name`, or `None` if there is no such link.
    pub fn link_index(&mut self, name: &str) -> Result<Option<u32>> {
        Ok(self.link(name)?.map(|l| l.index))
    }

    /// Link `name` with its attributes, or `None` if there is no such link.
    pub fn link(&mut self, name: &str) -> Result<Option<Link>> {
        let op = format!("get link {name}");
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        match self.request(
            &op,
            RouteNetlinkMessage::GetLink(msg),
            NLM_F_REQUEST,
            Expect::One,
        )? {
            Ok(answers) => {
                for a in answers {
                    if let RouteNetlinkMessage::NewLink(l) = a {
                        return Ok(Some(to_link(l)));
                    }
                }
                Err(nl_err(&op, "no link in reply"))
            }
            Err(r) if r.errno == libc::ENODEV => Ok(None),
            Err(r) => Err(nl_err(&op, r.message)),
        }
    }

    /// All links in the namespace.
    pub fn links(&mut self) -> Result<Vec<Link>> {
        let answers = self.dump(
            "list links",
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
        )?;
        Ok(answers
            .into_iter()
            .filter_map(|a| match a {
                RouteNetlinkMessage::NewLink(l) => Some(to_link(l)),
                _ => None,
            })
            .collect())
    }

    fn set_link(&mut self, op: &str, index: u32, f: impl FnOnce(&mut LinkMessage)) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        f(&mut msg);
        self.ack(op, RouteNetlinkMessage::SetLink(msg), 0)
    }

    /// Bring link `index` administratively up.
    pub fn set_up(&mut self, index: u32) -> Result<()> {
        self.set_link(&format!("set link {index} up"), index, |m| {
            m.header.flags = LinkFlags::Up;
            m.header.change_mask = LinkFlags::Up;
        })
    }

    /// Bring link `index` administratively down.
    pub fn set_down(&mut self, index: u32) -> Result<()> {
        self.set_link(&format!("set link {index} down"), index, |m| {
            m.header.flags = LinkFlags::empty();
            m.header.change_mask = LinkFlags::Up;
        })
    }

    /// Set the MTU of link `index`.
    pub fn set_mtu(&mut self, index: u32, mtu: u32) -> Result<()> {
        self.set_link(&format!("set mtu {mtu} on link {index}"), index, |m| {
            m.attributes.push(LinkAttribute::Mtu(mtu));
        })
    }

    /// Set the hardware address of link `index`.
    pub fn set_mac(&mut self, index: u32, mac: [u8; 6]) -> Result<()> {
        let op = format!("set address {} on link {index}", MacAddr(mac));
        self.set_link(&op, index, |m| {
            m.attributes.push(LinkAttribute::Address(mac.to_vec()));
        })
    }

    /// Set the `txqueuelen` of link `index`.
    pub fn set_txqueuelen(&mut self, index: u32, qlen: u32) -> Result<()> {
        self.set_link(
            &format!("set txqueuelen {qlen} on link {index}"),
            index,
            |m| {
                m.attributes.push(LinkAttribute::TxQueueLen(qlen));
            },
        )
    }

    /// Rename link `index` to `name` (the kernel refuses while the link is up).
    pub fn set_name(&mut self, index: u32, name: &str) -> Result<()> {
        self.set_link(&format!("rename link {index} to {name}"), index, |m| {
            m.attributes.push(LinkAttribute::IfName(name.to_string()));
        })
    }

    /// Move link `index` into the network namespace open at `netns` (an nsfs fd). The
    /// link keeps its name and index where it can, and arrives down with no addresses
    /// and no routes. The kernel refuses (`EEXIST`) if the name is taken there.
    pub fn set_netns(&mut self, index: u32, netns: BorrowedFd<'_>) -> Result<()> {
        let fd = netns.as_raw_fd();
        self.set_link(
            &format!("move link {index} to another namespace"),
            index,
            |m| {
                m.attributes.push(LinkAttribute::NetNsFd(fd));
            },
        )
    }

    /// Delete link `index`.
    pub fn delete_link(&mut self, index: u32) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        self.ack(
            &format!("delete link {index}"),
            RouteNetlinkMessage::DelLink(msg),
            0,
        )
    }

    /// Add `addr/prefix_len` to link `index` (with the broadcast address for IPv4).
    pub fn add_address_v4(&mut self, index: u32, addr: Ipv4Addr, prefix_len: u8) -> Result<()> {
        let op = format!("add address {addr}/{prefix_len} to link {index}");
        if prefix_len > 32 {
            return Err(Error::Invalid(format!("{op}: prefix length out of range")));
        }
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.prefix_len = prefix_len;
        msg.header.scope = AddressScope::Universe;
        msg.header.index = index;
        msg.attributes
            .push(AddressAttribute::Local(IpAddr::V4(addr)));
        msg.attributes
            .push(AddressAttribute::Address(IpAddr::V4(addr)));
        if prefix_len < 31 {
            let host_mask = u32::MAX >> prefix_len;
            let brd = Ipv4Addr::from(u32::from(addr) | host_mask);
            msg.attributes.push(AddressAttribute::Broadcast(brd));
        }
        self.ack(
            &op,
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// Add `addr/prefix_len` to link `index` (IPv6), with `IFA_F_NODAD` so the address
    /// is usable at once.
    pub fn add_address_v6(&mut self, index: u32, addr: Ipv6Addr, prefix_len: u8) -> Result<()> {
        let op = format!("add address {addr}/{prefix_len} to link {index}");
        if prefix_len > 128 {
            return Err(Error::Invalid(format!("{op}: prefix length out of range")));
        }
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet6;
        msg.header.prefix_len = prefix_len;
        msg.header.scope = AddressScope::Universe;
        msg.header.index = index;
        // No duplicate address detection: IPAM guarantees uniqueness, and a tentative
        // address could not be used (nor a route via it added) for about a second.
        msg.header.flags = AddressHeaderFlags::Nodad;
        msg.attributes
            .push(AddressAttribute::Address(IpAddr::V6(addr)));
        msg.attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
        self.ack(
            &op,
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// Add `addr/prefix_len` to link `index`: [`Handle::add_address_v4`] or
    /// [`Handle::add_address_v6`] by family.
    pub fn add_address(&mut self, index: u32, addr: IpAddr, prefix_len: u8) -> Result<()> {
        match addr {
            IpAddr::V4(a) => self.add_address_v4(index, a, prefix_len),
            IpAddr::V6(a) => self.add_address_v6(index, a, prefix_len),
        }
    }

    /// Remove `addr/prefix_len` from link `index`. An address that is not there (or a
    /// link that is gone) is not an error.
    pub fn delete_address(&mut self, index: u32, addr: IpAddr, prefix_len: u8) -> Result<()> {
        let op = format!("delete address {addr}/{prefix_len} from link {index}");
        let mut msg = AddressMessage::default();
        msg.header.family = match addr {
            IpAddr::V4(_) => AddressFamily::Inet,
            IpAddr::V6(_) => AddressFamily::Inet6,
        };
        msg.header.prefix_len = prefix_len;
        msg.header.index = index;
        if addr.is_ipv4() {
            msg.attributes.push(AddressAttribute::Local(addr));
        }
        msg.attributes.push(AddressAttribute::Address(addr));
        self.ack_unless_gone(&op, RouteNetlinkMessage::DelAddress(msg))
    }

    /// IPv4 addresses (with prefix length) of link `index`.
    pub fn addresses_v4(&mut self, index: u32) -> Result<Vec<(Ipv4Addr, u8)>> {
        let mut req = AddressMessage::default();
        req.header.family = AddressFamily::Inet;
        let answers = self.dump("list addresses", RouteNetlinkMessage::GetAddress(req))?;
        let mut out = Vec::new();
        for a in answers {
            let RouteNetlinkMessage::NewAddress(m) = a else {
                continue;
            };
            if m.header.index != index || m.header.family != AddressFamily::Inet {
                continue;
            }
            let local = m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(IpAddr::V4(ip)) => Some(*ip),
                _ => None,
            });
            let addr = local.or_else(|| {
                m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(IpAddr::V4(ip)) => Some(*ip),
                    _ => None,
                })
            });
            if let Some(ip) = addr {
                out.push((ip, m.header.prefix_len));
            }
        }
        Ok(out)
    }

    /// Add `default via gateway` (table main, proto boot, scope universe), optionally
    /// pinned to link `oif`.
    pub fn add_default_route_v4(&mut self, gateway: Ipv4Addr, oif: Option<u32>) -> Result<()> {
        self.add_route(&Route::default_via(IpAddr::V4(gateway), oif))
    }

    /// Add `default via gateway` for IPv6 (table main, proto boot), optionally pinned
    /// to link `oif` (needed when the gateway is link-local).
    pub fn add_default_route_v6(&mut self, gateway: Ipv6Addr, oif: Option<u32>) -> Result<()> {
        self.add_route(&Route::default_via(IpAddr::V6(gateway), oif))
    }

    /// Add `route` to the main table (proto boot; scope link for an IPv4 route without
    /// a gateway, else universe). An existing route to the same destination is an
    /// error (`EEXIST`).
    pub fn add_route(&mut self, route: &Route) -> Result<()> {
        let op = format!("add route {route}");
        let msg = route.message(&op, false)?;
        self.ack(
            &op,
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// Delete `route` from the main table (matched on destination, gateway and link,
    /// any protocol and scope). A route that is not there is not an error.
    pub fn delete_route(&mut self, route: &Route) -> Result<()> {
        let op = format!("delete route {route}");
        let msg = route.message(&op, true)?;
        self.ack_unless_gone(&op, RouteNetlinkMessage::DelRoute(msg))
    }

    /// Unicast routes of the main table for `family`, as raw messages.
    fn main_routes(&mut self, family: AddressFamily) -> Result<Vec<RouteMessage>> {
        let mut req = RouteMessage::default();
        req.header.address_family = family;
        let answers = self.dump("list routes", RouteNetlinkMessage::GetRoute(req))?;
        Ok(answers
            .into_iter()
            .filter_map(|a| match a {
                RouteNetlinkMessage::NewRoute(r) => Some(r),
                _ => None,
            })
            .filter(|r| {
                let table = r
                    .attributes
                    .iter()
                    .find_map(|a| match a {
                        RouteAttribute::Table(t) => Some(*t),
                        _ => None,
                    })
                    .unwrap_or(u32::from(r.header.table));
                r.header.address_family == family
                    && table == u32::from(RouteHeader::RT_TABLE_MAIN)
                    && r.header.kind == RouteType::Unicast
            })
            .collect())
    }

    /// Whether the main table has an IPv4 default route.
    pub fn has_default_route_v4(&mut self) -> Result<bool> {
        Ok(self
            .main_routes(AddressFamily::Inet)?
            .iter()
            .any(|r| r.header.destination_prefix_length == 0))
    }

    /// Whether the main table has an IPv6 default route.
    pub fn has_default_route_v6(&mut self) -> Result<bool> {
        Ok(self
            .main_routes(AddressFamily::Inet6)?
            .iter()
            .any(|r| r.header.destination_prefix_length == 0))
    }

    /// Destinations (network address, prefix length) of the IPv4 unicast routes of the
    /// main table, default route excluded: what a new subnet must not overlap.
    pub fn routes_v4(&mut self) -> Result<Vec<(Ipv4Addr, u8)>> {
        Ok(self
            .main_routes(AddressFamily::Inet)?
            .iter()
            .filter(|r| r.header.destination_prefix_length > 0)
            .filter_map(|r| {
                r.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Destination(RouteAddress::Inet(d)) => {
                        Some((*d, r.header.destination_prefix_length))
                    }
                    _ => None,
                })
            })
            .collect())
    }
}

/// The [`Link`] a `RTM_NEWLINK` answer describes.
fn to_link(l: LinkMessage) -> Link {
    let mut link = Link {
        index: l.header.index,
        name: String::new(),
        mtu: None,
        mac: None,
        txqueuelen: None,
        up: l.header.flags.contains(LinkFlags::Up),
    };
    for attr in l.attributes {
        match attr {
            LinkAttribute::IfName(n) => link.name = n,
            LinkAttribute::Mtu(m) => link.mtu = Some(m),
            LinkAttribute::Address(a) => link.mac = Some(a),
            LinkAttribute::TxQueueLen(q) => link.txqueuelen = Some(q),
            _ => {}
        }
    }
    link
}

/// A unicast route of the main table: `destination/prefix_len [via gateway] [dev oif]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    /// The destination's network address (host bits must be zero; `0.0.0.0` or `::`
    /// with prefix length 0 is the default route).
    pub destination: IpAddr,
    /// The destination's prefix length.
    pub prefix_len: u8,
    /// The next hop; `None` for a connected (on-link) route.
    pub gateway: Option<IpAddr>,
    /// The output link; `None` lets the kernel pick it from the gateway.
    pub oif: Option<u32>,
}

impl Route {
    /// `default via gateway [dev oif]`.
    pub fn default_via(gateway: IpAddr, oif: Option<u32>) -> Route {
        let destination = match gateway {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        Route {
            destination,
            prefix_len: 0,
            gateway: Some(gateway),
            oif,
        }
    }

    /// Whether this is a default route.
    pub fn is_default(&self) -> bool {
        self.prefix_len == 0
    }

    /// The request for adding (`delete` false) or deleting it.
    fn message(&self, op: &str, delete: bool) -> Result<RouteMessage> {
        let v4 = self.destination.is_ipv4();
        let max = if v4 { 32 } else { 128 };
        if self.prefix_len > max {
            return Err(Error::Invalid(format!("{op}: prefix length out of range")));
        }
        if self.gateway.is_some_and(|g| g.is_ipv4() != v4) {
            return Err(Error::Invalid(format!(
                "{op}: gateway and destination are of different families"
            )));
        }
        let mut msg = RouteMessage::default();
        msg.header = default_v4_header();
        msg.header.address_family = if v4 {
            AddressFamily::Inet
        } else {
            AddressFamily::Inet6
        };
        msg.header.destination_prefix_length = self.prefix_len;
        if delete {
            // Match any protocol, scope and type (as `ip route del` does).
            msg.header.protocol = RouteProtocol::Unspec;
            msg.header.scope = RouteScope::NoWhere;
            msg.header.kind = RouteType::Unspec;
        } else if v4 && self.gateway.is_none() {
            msg.header.scope = RouteScope::Link;
        }
        if self.prefix_len > 0 {
            msg.attributes
                .push(RouteAttribute::Destination(route_address(self.destination)));
        }
        if let Some(g) = self.gateway {
            msg.attributes
                .push(RouteAttribute::Gateway(route_address(g)));
        }
        if let Some(oif) = self.oif {
            msg.attributes.push(RouteAttribute::Oif(oif));
        }
        Ok(msg)
    }
}

impl std::fmt::Display for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_default() {
            write!(f, "default")?;
        } else {
            write!(f, "{}/{}", self.destination, self.prefix_len)?;
        }
        if let Some(g) = self.gateway {
            write!(f, " via {g}")?;
        }
        if let Some(oif) = self.oif {
            write!(f, " dev link {oif}")?;
        }
        Ok(())
    }
}

fn route_address(a: IpAddr) -> RouteAddress {
    match a {
        IpAddr::V4(a) => RouteAddress::Inet(a),
        IpAddr::V6(a) => RouteAddress::Inet6(a),
    }
}

fn default_v4_header() -> RouteHeader {
    RouteHeader {
        address_family: AddressFamily::Inet,
        destination_prefix_length: 0,
        table: RouteHeader::RT_TABLE_MAIN,
        protocol: RouteProtocol::Boot,
        scope: RouteScope::Universe,
        kind: RouteType::Unicast,
        ..RouteHeader::default()
    }
}

/// `aa:bb:cc:dd:ee:ff`: a MAC as [`MacAddr`] prints it; a link-layer address of another
/// length the same way, octet by octet.
pub fn format_mac(mac: &[u8]) -> String {
    match <[u8; 6]>::try_from(mac) {
        Ok(m) => MacAddr(m).to_string(),
        Err(_) => mac
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_formatting() {
        assert_eq!(
            format_mac(&[0x02, 0, 0xab, 1, 2, 0xff]),
            "02:00:ab:01:02:ff"
        );
    }

    #[test]
    fn ext_ack_capped() {
        // errno already stripped: echoed nlmsghdr (16 bytes), then a MSG TLV.
        let mut echoed = vec![0u8; 16];
        let text = b"Invalid prefix\0";
        let len = (4 + text.len()) as u16;
        echoed.extend_from_slice(&len.to_ne_bytes());
        echoed.extend_from_slice(&NLMSGERR_ATTR_MSG.to_ne_bytes());
        echoed.extend_from_slice(text);
        let m = ext_ack_message(NLM_F_CAPPED | NLM_F_ACK_TLVS, &echoed);
        assert_eq!(m.as_deref(), Some("Invalid prefix"));
        assert_eq!(ext_ack_message(NLM_F_CAPPED, &echoed), None);
    }

    #[test]
    fn ext_ack_uncapped_and_truncated() {
        // echoed request of 20 bytes (length field says 20), then TLV.
        let mut echoed = 20u32.to_ne_bytes().to_vec();
        echoed.resize(20, 0);
        echoed.extend_from_slice(&8u16.to_ne_bytes());
        echoed.extend_from_slice(&NLMSGERR_ATTR_MSG.to_ne_bytes());
        echoed.extend_from_slice(b"bad\0");
        assert_eq!(
            ext_ack_message(NLM_F_ACK_TLVS, &echoed).as_deref(),
            Some("bad")
        );
        // Garbage never panics.
        assert_eq!(ext_ack_message(NLM_F_ACK_TLVS, &[0xff; 3]), None);
        assert_eq!(ext_ack_message(NLM_F_ACK_TLVS, &[0xff; 40]), None);
    }

    #[test]
    fn errno_text() {
        let s = describe_errno(-libc::EEXIST, Some("already there".into()));
        assert!(
            s.contains("File exists") && s.contains("already there"),
            "{s}"
        );
    }

    #[test]
    fn default_route_header() {
        let h = default_v4_header();
        assert_eq!(h.table, 254);
        assert_eq!(h.protocol, RouteProtocol::Boot);
    }
}
