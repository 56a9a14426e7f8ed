//! Interfaces in a sandbox: the OS half of the sandbox layer.
//!
//! Contract:
//! * [`apply`] takes a [`Spec`]: either a device in the caller's namespace to move
//!   into the sandbox ([`Source::MoveIn`], what a Docker remote driver names with
//!   `SrcName`), or a device a driver already created inside it
//!   ([`Source::InSandbox`], e.g. a tap). In this order it moves the device in
//!   (`RTM_SETLINK` with `IFLA_NET_NS_FD`), renames it ([`Naming`]; a device is
//!   renamed only while down, and a moved device always is), sets MAC, MTU and
//!   txqueuelen, brings `lo` up, turns IPv6 off on the device if asked (no router
//!   solicitation, DAD or MLD), adds the addresses (IPv6 ones with `nodad`: usable at
//!   once), sets the device up (with [`Spec::leave_down`] neither the device nor `lo`
//!   is set up: for a device another party moves and brings up), adds the default
//!   route via each gateway (only in a
//!   family that has no default route in the sandbox yet) and the static routes (all
//!   on this device). It returns an [`Applied`] record of what it changed.
//! * If any step fails, the steps before it are undone and the error is returned:
//!   nothing is left behind (a moved-in device is back in the caller's namespace under
//!   its old name). `lo` stays up: it belongs to the sandbox, not to the device.
//! * [`undo`] reverses an [`Applied`], last step first: static and default routes,
//!   up, addresses, the IPv6 setting, txqueuelen/MTU/MAC (back to the values they
//!   had), the name; a moved-in device then goes back to the namespace of the thread
//!   calling [`undo`]. Things already gone are not an error (a device that vanished
//!   leaves nothing to undo); every step is tried and the first failure is returned.
//!   A device created in the sandbox stays there: its creator removes it.
//! * [`configure`] is the same configuration on a link of the current thread's
//!   namespace through an open [`Handle`]; [`crate::tap::Tap::create`] uses it, so
//!   there is one implementation of "configure an interface".
//! * Interface names: [`validate_ifname`] checks a name as the kernel does (and
//!   refuses `%` templates, `all` and `default`);
//!   [`next_free_name`] gives the first free `prefixN`.

use crate::netlink::{Handle, Link, Route};
use crate::netns::Netns;
use crate::{Error, Result};
use std::collections::HashSet;
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd, BorrowedFd};

/// The current thread's network namespace file.
const THREAD_SELF_NET: &str = "/proc/thread-self/ns/net";

/// Where the device comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// A device in the caller's namespace, moved into the sandbox (Docker remote
    /// driver: `InterfaceName.SrcName`); [`undo`] moves it back.
    MoveIn {
        /// Its name in the caller's namespace.
        host_name: String,
    },
    /// A device already in the sandbox (a tap the driver created there).
    InSandbox {
        /// Its current name in the sandbox.
        name: String,
    },
}

/// The name the device gets in the sandbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Naming {
    /// Keep the name it has (after a move: its host name).
    Keep,
    /// Exactly this name (a restart re-creating a recorded interface).
    Exact(String),
    /// The first free `<prefix>N`, N = 0, 1, ... (Docker remote driver:
    /// `InterfaceName.DstPrefix`). A device already called `<prefix>N` with nobody
    /// else on a lower free N keeps its name.
    NextFree(String),
}

/// What to do with one device (see the module doc for the order of the steps).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spec {
    /// The device.
    pub source: Source,
    /// Its name in the sandbox.
    pub naming: Naming,
    /// MAC address to set.
    pub mac: Option<[u8; 6]>,
    /// MTU to set.
    pub mtu: Option<u32>,
    /// `txqueuelen` to set.
    pub txqueuelen: Option<u32>,
    /// Addresses with prefix length (IPv6 ones are added with `nodad`).
    pub addresses: Vec<(IpAddr, u8)>,
    /// Turn IPv6 off on the device (`net.ipv6.conf.<name>.disable_ipv6=1`) before it
    /// goes up. Failure is only logged (a kernel without IPv6 has nothing to turn off).
    pub disable_ipv6: bool,
    /// Default route via this gateway, on this device, unless the sandbox already has
    /// an IPv4 default route.
    pub gateway_v4: Option<Ipv4Addr>,
    /// Default route via this gateway, on this device, unless the sandbox already has
    /// an IPv6 default route.
    pub gateway_v6: Option<Ipv6Addr>,
    /// Static routes, added on this device (their `oif` is ignored). One that exists
    /// already is an error.
    pub routes: Vec<Route>,
    /// Leave the device (and `lo`) as they are, down or up: for a device that another
    /// party (dockerd) moves into its sandbox and brings up afterwards.
    pub leave_down: bool,
}

impl Spec {
    /// A spec that only names `source` (keeps its name) and changes nothing else.
    pub fn new(source: Source) -> Spec {
        Spec {
            source,
            naming: Naming::Keep,
            mac: None,
            mtu: None,
            txqueuelen: None,
            addresses: Vec::new(),
            disable_ipv6: false,
            gateway_v4: None,
            gateway_v6: None,
            routes: Vec::new(),
            leave_down: false,
        }
    }
}

/// What [`apply`] changed, step by step: exactly what [`undo`] reverses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// The device's name in the sandbox now.
    pub name: String,
    /// Moved in from the caller's namespace, where it was called this.
    pub moved_in: Option<String>,
    /// Renamed in the sandbox; its name before.
    pub renamed_from: Option<String>,
    /// MAC changed; the one it had.
    pub mac_was: Option<[u8; 6]>,
    /// MTU changed; the one it had.
    pub mtu_was: Option<u32>,
    /// txqueuelen changed; the one it had.
    pub txqueuelen_was: Option<u32>,
    /// IPv6 was turned off on the device.
    pub ipv6_disabled: bool,
    /// Addresses added.
    pub addresses: Vec<(IpAddr, u8)>,
    /// The device was set up (it was down).
    pub set_up: bool,
    /// Routes added (default and static, in order), all on this device (`oif` unset).
    pub routes: Vec<Route>,
}

impl Applied {
    /// The record [`apply`] of `spec` would have made for a device now called `name`,
    /// computed without touching anything: for a device that survived a daemon restart
    /// (its earlier record is gone), so that it can be undone later. Old MAC, MTU and
    /// txqueuelen are unknown and are not restored; default routes are assumed added
    /// (removing one that is not there is harmless).
    pub fn assumed(spec: &Spec, name: &str) -> Applied {
        let (moved_in, origin) = match &spec.source {
            Source::MoveIn { host_name } => (Some(host_name.clone()), host_name),
            Source::InSandbox { name } => (None, name),
        };
        let defaults = [
            spec.gateway_v4.map(IpAddr::V4),
            spec.gateway_v6.map(IpAddr::V6),
        ];
        let routes = defaults
            .into_iter()
            .flatten()
            .map(|g| Route::default_via(g, None))
            .chain(spec.routes.iter().map(|r| Route { oif: None, ..*r }))
            .collect();
        Applied {
            name: name.to_string(),
            moved_in,
            renamed_from: (origin != name).then(|| origin.clone()),
            mac_was: None,
            mtu_was: None,
            txqueuelen_was: None,
            ipv6_disabled: spec.disable_ipv6,
            addresses: spec.addresses.clone(),
            set_up: true,
            routes,
        }
    }
}

/// Check an interface name the way the kernel's `dev_valid_name` does, and refuse
/// the names it does not take literally: one with `%` is a template the kernel fills
/// in (`a%d` becomes `a0`), and `all` and `default` (the names of
/// `/proc/sys/net/*/conf/all` and `default`) are refused with EINVAL.
pub fn validate_ifname(name: &str) -> Result<()> {
    let bad = name.is_empty()
        || name.len() >= libc::IFNAMSIZ
        || name == "."
        || name == ".."
        || name == "all"
        || name == "default"
        || name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b == b'%' || b == 0 || b.is_ascii_whitespace());
    if bad {
        Err(Error::Invalid(format!("invalid interface name {name:?}")))
    } else {
        Ok(())
    }
}

/// The first `prefix<N>` (N = 0, 1, ...) not in `taken`.
pub(crate) fn first_free(prefix: &str, taken: &HashSet<String>) -> Result<String> {
    for n in 0u32.. {
        let candidate = format!("{prefix}{n}");
        validate_ifname(&candidate)?;
        if !taken.contains(&candidate) {
            return Ok(candidate);
        }
    }
    Err(Error::Invalid(format!(
        "no free interface name with prefix {prefix:?}"
    )))
}

/// The first free `prefix<N>` interface name in `ns` (`eth0`, `eth1`, ...).
pub fn next_free_name(ns: &Netns, prefix: &str) -> Result<String> {
    let taken: HashSet<String> = link_names(ns)?.into_iter().collect();
    first_free(prefix, &taken)
}

/// Names of all links in `ns` (for inspection and tests).
pub fn link_names(ns: &Netns) -> Result<Vec<String>> {
    ns.run(|| -> Result<Vec<String>> {
        let mut nl = Handle::new()?;
        Ok(nl.links()?.into_iter().map(|l| l.name).collect())
    })?
}

/// Say which interface "link N" in an error is.
pub(crate) fn name_link(e: Error, index: u32, name: &str) -> Error {
    let link = format!("link {index}");
    let named = format!("{name} (link {index})");
    match e {
        Error::Netlink { op, message } => Error::Netlink {
            op: op.replace(&link, &named),
            message,
        },
        Error::Invalid(m) => Error::Invalid(m.replace(&link, &named)),
        other => other,
    }
}

fn os_err(op: impl Into<String>, source: std::io::Error) -> Error {
    Error::Os {
        op: op.into(),
        source,
    }
}

/// Open the calling thread's network namespace (where a moved-in device returns).
fn this_namespace() -> Result<File> {
    File::open(THREAD_SELF_NET).map_err(|e| os_err(format!("open {THREAD_SELF_NET}"), e))
}

/// Move a device into `ns` (if [`Source::MoveIn`]) and configure it as `spec` says.
/// On failure nothing is left behind. See the module doc.
pub fn apply(ns: &Netns, spec: &Spec) -> Result<Applied> {
    match &spec.source {
        Source::InSandbox { name } => {
            validate_ifname(name)?;
            ns.run(|| -> Result<Applied> {
                let mut nl = Handle::new()?;
                let link = nl.link(name)?.ok_or_else(|| {
                    Error::Invalid(format!("no interface {name} in {}", ns.path().display()))
                })?;
                configure(&mut nl, &link, spec)
            })?
        }
        Source::MoveIn { host_name } => {
            validate_ifname(host_name)?;
            let home = this_namespace()?;
            let mut nl = Handle::new()?;
            let link = nl.link(host_name)?.ok_or_else(|| {
                Error::Invalid(format!(
                    "no interface {host_name} to move into {}",
                    ns.path().display()
                ))
            })?;
            nl.set_netns(link.index, ns.file().as_fd())
                .map_err(|e| name_link(e, link.index, host_name))?;
            let configured = ns.run(|| -> Result<Applied> {
                let mut nl = Handle::new()?;
                let mut applied = Applied {
                    name: host_name.clone(),
                    moved_in: Some(host_name.clone()),
                    ..Applied::default()
                };
                let link = nl.link(host_name)?.ok_or_else(|| {
                    Error::Invalid(format!(
                        "interface {host_name} not found in {} right after moving it there",
                        ns.path().display()
                    ))
                })?;
                match configure_into(&mut nl, &link, spec, &mut applied) {
                    Ok(()) => Ok(applied),
                    Err(e) => {
                        if let Err(u) = undo_here(&mut nl, &applied, Some(home.as_fd())) {
                            tracing::warn!(interface = %host_name, error = %u, "undoing a failed interface setup");
                        }
                        Err(e)
                    }
                }
            });
            match configured {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(interface = %host_name, error = %e, "cannot enter the sandbox the interface was moved to; it stays there");
                    Err(e)
                }
            }
        }
    }
}

/// Undo what [`apply`] did (see the module doc): a moved-in device goes back to the
/// calling thread's namespace.
pub fn undo(ns: &Netns, applied: &Applied) -> Result<()> {
    let home = match applied.moved_in {
        Some(_) => Some(this_namespace()?),
        None => None,
    };
    ns.run(|| -> Result<()> {
        let mut nl = Handle::new()?;
        undo_here(&mut nl, applied, home.as_ref().map(AsFd::as_fd))
    })?
}

/// Configure `link` (in the namespace `nl` talks to; `spec.source` is not looked at)
/// as `spec` says: rename, MAC, MTU, txqueuelen, `lo` up, IPv6 setting, addresses, up,
/// default routes, static routes. On failure the steps done are undone.
pub fn configure(nl: &mut Handle, link: &Link, spec: &Spec) -> Result<Applied> {
    let mut applied = Applied {
        name: link.name.clone(),
        ..Applied::default()
    };
    match configure_into(nl, link, spec, &mut applied) {
        Ok(()) => Ok(applied),
        Err(e) => {
            if let Err(u) = undo_here(nl, &applied, None) {
                tracing::warn!(interface = %applied.name, error = %u, "undoing a failed interface setup");
            }
            Err(e)
        }
    }
}

/// The steps of [`configure`], each recorded in `applied` once done.
fn configure_into(nl: &mut Handle, link: &Link, spec: &Spec, applied: &mut Applied) -> Result<()> {
    let index = link.index;
    let current = link.name.as_str();
    let target = match &spec.naming {
        Naming::Keep => current.to_string(),
        Naming::Exact(name) => name.clone(),
        Naming::NextFree(prefix) => {
            let taken: HashSet<String> = nl
                .links()?
                .into_iter()
                .filter(|l| l.index != index)
                .map(|l| l.name)
                .collect();
            first_free(prefix, &taken)?
        }
    };
    if target != current {
        validate_ifname(&target)?;
        nl.set_name(index, &target)
            .map_err(|e| name_link(e, index, current))?;
        applied.renamed_from = Some(current.to_string());
        applied.name = target;
    }
    let name = applied.name.clone();
    let on_link = |e: Error| name_link(e, index, &name);
    if let Some(mac) = spec.mac {
        if link.mac.as_deref() != Some(&mac[..]) {
            nl.set_mac(index, mac).map_err(on_link)?;
            applied.mac_was = link
                .mac
                .as_deref()
                .and_then(|m| <[u8; 6]>::try_from(m).ok());
        }
    }
    if let Some(mtu) = spec.mtu {
        if link.mtu != Some(mtu) {
            nl.set_mtu(index, mtu).map_err(on_link)?;
            applied.mtu_was = link.mtu;
        }
    }
    if let Some(qlen) = spec.txqueuelen {
        if link.txqueuelen != Some(qlen) {
            nl.set_txqueuelen(index, qlen).map_err(on_link)?;
            applied.txqueuelen_was = link.txqueuelen;
        }
    }
    if let Some(lo) = nl.link(LOOPBACK)?.filter(|_| !spec.leave_down) {
        if !lo.up {
            nl.set_up(lo.index)
                .map_err(|e| name_link(e, lo.index, LOOPBACK))?;
        }
    }
    if spec.disable_ipv6 {
        match set_ipv6_disabled(&name, true) {
            Ok(()) => applied.ipv6_disabled = true,
            Err(e) => tracing::debug!(interface = %name, error = %e, "disabling IPv6"),
        }
    }
    for &(addr, len) in &spec.addresses {
        nl.add_address(index, addr, len).map_err(on_link)?;
        applied.addresses.push((addr, len));
    }
    if !link.up && !spec.leave_down {
        nl.set_up(index).map_err(on_link)?;
        applied.set_up = true;
    }
    if let Some(gw) = spec.gateway_v4 {
        if !nl.has_default_route_v4()? {
            add_route(nl, applied, Route::default_via(IpAddr::V4(gw), None), index)?;
        }
    }
    if let Some(gw) = spec.gateway_v6 {
        if !nl.has_default_route_v6()? {
            add_route(nl, applied, Route::default_via(IpAddr::V6(gw), None), index)?;
        }
    }
    for r in &spec.routes {
        add_route(nl, applied, Route { oif: None, ..*r }, index)?;
    }
    Ok(())
}

const LOOPBACK: &str = "lo";

/// Add `route` on link `index` and record it.
fn add_route(nl: &mut Handle, applied: &mut Applied, route: Route, index: u32) -> Result<()> {
    nl.add_route(&Route {
        oif: Some(index),
        ..route
    })
    .map_err(|e| name_link(e, index, &applied.name))?;
    applied.routes.push(route);
    Ok(())
}

/// `net.ipv6.conf.<name>.disable_ipv6` of the current thread's namespace.
fn set_ipv6_disabled(name: &str, disabled: bool) -> std::io::Result<()> {
    let path = format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6");
    std::fs::write(path, if disabled { b"1" } else { b"0" })
}

/// Reverse `applied` in the namespace `nl` talks to; a moved-in device goes to `home`.
fn undo_here(nl: &mut Handle, applied: &Applied, home: Option<BorrowedFd<'_>>) -> Result<()> {
    let Some(link) = nl.link(&applied.name)? else {
        // The device is gone (deleted, or its namespace died): nothing left to undo.
        return Ok(());
    };
    let index = link.index;
    let name = applied.name.as_str();
    let mut first: Option<Error> = None;
    let mut note = |r: Result<()>| {
        if let Err(e) = r {
            let e = name_link(e, index, name);
            tracing::debug!(interface = %name, error = %e, "undo step failed");
            first.get_or_insert(e);
        }
    };
    for r in applied.routes.iter().rev() {
        note(nl.delete_route(&Route {
            oif: Some(index),
            ..*r
        }));
    }
    if applied.set_up {
        note(nl.set_down(index));
    }
    for &(addr, len) in applied.addresses.iter().rev() {
        note(nl.delete_address(index, addr, len));
    }
    if applied.ipv6_disabled {
        note(
            set_ipv6_disabled(name, false).map_err(|e| os_err(format!("enable IPv6 on {name}"), e)),
        );
    }
    if let Some(q) = applied.txqueuelen_was {
        note(nl.set_txqueuelen(index, q));
    }
    if let Some(mtu) = applied.mtu_was {
        note(nl.set_mtu(index, mtu));
    }
    if let Some(mac) = applied.mac_was {
        note(nl.set_mac(index, mac));
    }
    if let Some(old) = &applied.renamed_from {
        note(nl.set_name(index, old));
    }
    if let (Some(_), Some(home)) = (&applied.moved_in, home) {
        note(nl.set_netns(index, home));
    }
    match first {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifname_validation() {
        assert!(validate_ifname("eth0").is_ok());
        assert!(validate_ifname("a23456789012345").is_ok());
        assert!(validate_ifname("a234567890123456").is_err());
        assert!(validate_ifname("").is_err());
        assert!(validate_ifname("a/b").is_err());
        assert!(validate_ifname("a b").is_err());
        assert!(validate_ifname("..").is_err());
        assert!(validate_ifname("a:1").is_err());
        // Not taken literally by the kernel.
        assert!(validate_ifname("a%d").is_err());
        assert!(validate_ifname("all").is_err());
        assert!(validate_ifname("default").is_err());
        assert!(validate_ifname("all0").is_ok());
    }

    #[test]
    fn first_free_name() {
        let taken: HashSet<String> = ["lo", "eth0", "eth2"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(first_free("eth", &taken).ok().as_deref(), Some("eth1"));
        assert_eq!(first_free("net", &taken).ok().as_deref(), Some("net0"));
        assert!(first_free("abcdefghijklmnopq", &taken).is_err());
    }

    #[test]
    fn assumed_record() {
        let mut spec = Spec::new(Source::MoveIn {
            host_name: "veth1".into(),
        });
        spec.naming = Naming::NextFree("eth".into());
        spec.addresses = vec![(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)), 24)];
        spec.gateway_v4 = Some(Ipv4Addr::new(10, 0, 0, 1));
        spec.disable_ipv6 = true;
        spec.routes = vec![Route {
            destination: IpAddr::V4(Ipv4Addr::new(192, 168, 0, 0)),
            prefix_len: 16,
            gateway: None,
            oif: Some(7),
        }];
        let a = Applied::assumed(&spec, "eth3");
        assert_eq!(a.name, "eth3");
        assert_eq!(a.moved_in.as_deref(), Some("veth1"));
        assert_eq!(a.renamed_from.as_deref(), Some("veth1"));
        assert!(a.ipv6_disabled && a.set_up);
        assert_eq!(a.routes.len(), 2);
        assert!(a.routes[0].is_default());
        assert_eq!(a.routes[1].oif, None);
        assert_eq!(a.mac_was, None);
        let kept = Applied::assumed(
            &Spec::new(Source::InSandbox {
                name: "eth0".into(),
            }),
            "eth0",
        );
        assert_eq!(kept.renamed_from, None);
        assert_eq!(kept.moved_in, None);
    }
}
