//! IP address management.
//!
//! Contract: the [`Ipam`] trait is shaped after libnetwork's `ipamapi.Ipam`, so that a
//! remote IPAM plugin can implement it later: [`Ipam::request_pool`] reserves a
//! *pool* (one subnet, IPv4 or IPv6, optionally with a sub-range for dynamic
//! allocation) and names it by an opaque pool id; [`Ipam::request_address`] hands out
//! an address of a pool (a given one, or any free one); [`Ipam::release_address`] and
//! [`Ipam::release_pool`] give them back. Requests carry Docker's option maps. The
//! caller (the controller) reserves the gateway ([`REQUEST_ADDRESS_TYPE`] =
//! [`GATEWAY_ADDRESS_TYPE`]) and auxiliary addresses through `request_address` like
//! any other address, exactly as libnetwork does.
//!
//! [`DefaultIpam`] is the built-in `default` driver:
//!
//! * without a requested subnet an IPv4 pool is the first *default pool* (Docker's
//!   local defaults: 172.17.0.0/16 … 172.31.0.0/16, then 192.168.0.0/16 cut into
//!   /20s; or the `--default-address-pool base=CIDR,size=N` list instead) that
//!   overlaps neither a pool already handed out nor a route of the daemon's host
//!   ([`DefaultIpam::avoid`]); without a requested subnet an IPv6 pool is the first free
//!   /64 of the IPv6 default pool: a unique local /48 (RFC 4193, `fdXX:XXXX:XXXX::/48`)
//!   whose 40-bit global ID is derived from the host's machine id
//!   ([`DefaultPoolV6::for_host`]; the same host always gets the same /48, as dockerd
//!   27 does), or the `--default-ipv6-pool base=CIDR,size=N` list instead
//!   ([`DefaultIpam::with_v6_pools`]);
//! * a requested subnet must be its own network address, leave room for a gateway and
//!   an endpoint (IPv4 /30, IPv6 /126 at most), and overlap no pool handed out
//!   ([`IpamError::Overlap`] names the other subnet);
//! * the network address (and for IPv4 the broadcast address) is never handed out;
//!   a dynamic request takes the lowest free address within the pool's range (or the
//!   whole subnet when it has none); a dynamic *gateway* request takes the lowest free
//!   address of the whole subnet; a static request is honoured anywhere in the
//!   subnet if the address is free;
//! * every failure leaves the state unchanged; nothing is ever handed out twice.
//!
//! [`check_address_class`] says whether a subnet (or address) is one a network can
//! use at all: never multicast, loopback, unspecified, link-local or reserved
//! ([`refused_class`]); the controller asks it before reserving anything.
//!
//! The state is reconstructable: pool ids are derived from the subnet
//! (`LocalDefault/<subnet>`), so replaying `request_pool` with each known subnet and
//! range, then `request_address` with each recorded address (gateway, auxiliary,
//! endpoints), reproduces exactly the allocations made before a restart.

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Option key of [`Ipam::request_address`] saying what the address is for (libnetwork's
/// `ipamapi.RequestAddressType`).
pub const REQUEST_ADDRESS_TYPE: &str = "com.docker.network.ipam.request_address_type";
/// Value of [`REQUEST_ADDRESS_TYPE`] for a network's gateway (libnetwork's
/// `netlabel.Gateway`).
pub const GATEWAY_ADDRESS_TYPE: &str = "com.docker.network.gateway";

/// Why an IPAM request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    /// The requested subnet is unusable.
    #[error("invalid subnet: {0}")]
    InvalidSubnet(String),
    /// The requested IP range is unusable.
    #[error("invalid IP range: {0}")]
    InvalidRange(String),
    /// A requested address is outside the pool's subnet.
    #[error("address {addr} is not in subnet {subnet}")]
    NotInSubnet {
        /// The address asked for.
        addr: IpAddr,
        /// The pool's subnet.
        subnet: IpNet,
    },
    /// A requested address is the subnet's network or broadcast address.
    #[error("address {addr} is the network or broadcast address of {subnet}")]
    Reserved {
        /// The address asked for.
        addr: IpAddr,
        /// The pool's subnet.
        subnet: IpNet,
    },
    /// A requested address is already allocated (endpoint, gateway or auxiliary).
    #[error("address {addr} is already in use")]
    InUse {
        /// The address asked for.
        addr: IpAddr,
    },
    /// A requested subnet overlaps a pool already handed out.
    #[error("subnet {subnet} overlaps with subnet {other} (Pool overlaps with other one on this address space)")]
    Overlap {
        /// The subnet asked for.
        subnet: IpNet,
        /// The pool it overlaps.
        other: IpNet,
    },
    /// Every default pool overlaps a pool in use or a host route.
    #[error("all predefined address pools have been fully subnetted; give an explicit subnet (IPAM Config Subnet) or remove unused networks")]
    PoolsExhausted,
    /// No free address is left in the pool (or its range).
    #[error("no free address in {subnet}: use a larger --subnet (or --ip-range) or free addresses by disconnecting endpoints")]
    Exhausted {
        /// The full subnet or range.
        subnet: IpNet,
    },
    /// The pool is not known (internal inconsistency).
    #[error("no address pool {0}")]
    UnknownPool(String),
    /// No IPAM driver of that name (HTTP 404, as Docker's "plugin not found").
    #[error("plugin \"{0}\" not found")]
    UnknownDriver(String),
    /// An IPAM plugin failed (status by [`crate::remote::PluginError::status`]).
    #[error("{0}")]
    Plugin(crate::remote::PluginError),
}

/// What a network asks of IPAM (libnetwork's `RequestPool` arguments).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolRequest {
    /// A specific subnet, or `None` for one from the default pools.
    pub subnet: Option<IpNet>,
    /// Restrict dynamic allocation to this sub-range (must lie in the subnet).
    pub ip_range: Option<IpNet>,
    /// An IPv6 pool.
    pub v6: bool,
    /// IPAM driver options (`IPAM.Options`).
    pub options: BTreeMap<String, String>,
}

/// A pool handed out to a network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    /// Opaque pool id, the handle for address requests.
    pub id: String,
    /// The subnet.
    pub subnet: IpNet,
    /// The dynamic allocation range, if restricted.
    pub ip_range: Option<IpNet>,
}

/// An IPAM driver (libnetwork's `ipamapi.Ipam`, see the module doc).
pub trait Ipam: Send {
    /// The driver name reported in `IPAM.Driver`.
    fn name(&self) -> &str;
    /// Reserve a pool for a new network.
    fn request_pool(&mut self, req: &PoolRequest) -> Result<Pool, IpamError>;
    /// Give a pool back (its addresses are forgotten).
    fn release_pool(&mut self, pool_id: &str) -> Result<(), IpamError>;
    /// Allocate `want`, or a free address if `None`. `options` may carry
    /// [`REQUEST_ADDRESS_TYPE`].
    fn request_address(
        &mut self,
        pool_id: &str,
        want: Option<IpAddr>,
        options: &BTreeMap<String, String>,
    ) -> Result<IpAddr, IpamError>;
    /// Free an address (freeing an unallocated address is not an error).
    fn release_address(&mut self, pool_id: &str, addr: IpAddr) -> Result<(), IpamError>;
    /// Check that IPAM driver `driver` (a network's `IPAM.Driver`; empty: the
    /// default) can be used. Default: only this driver's own name.
    fn check_driver(&mut self, driver: &str) -> Result<(), IpamError> {
        if driver.is_empty() || driver == self.name() {
            Ok(())
        } else {
            Err(IpamError::UnknownDriver(driver.to_string()))
        }
    }
    /// Reserve a pool from IPAM driver `driver` (empty or this driver's name:
    /// [`Ipam::request_pool`]; others: see [`crate::remote::ipam`]).
    fn request_pool_of(&mut self, driver: &str, req: &PoolRequest) -> Result<Pool, IpamError> {
        self.check_driver(driver)?;
        self.request_pool(req)
    }
    /// Whether address requests of `pool_id` must carry the endpoint's MAC (an IPAM
    /// plugin's `RequiresMACAddress`). Default: no.
    fn requires_mac(&mut self, pool_id: &str) -> bool {
        let _ = pool_id;
        false
    }
    /// Whether the pools of driver `driver` are kept by the driver itself across a
    /// daemon restart (an IPAM plugin), so they are not replayed. Default: no.
    fn keeps_own_state(&self, driver: &str) -> bool {
        let _ = driver;
        false
    }
}

/// Options that ask for a gateway address.
pub fn gateway_options() -> BTreeMap<String, String> {
    BTreeMap::from([(
        REQUEST_ADDRESS_TYPE.to_string(),
        GATEWAY_ADDRESS_TYPE.to_string(),
    )])
}

/// One `--default-address-pool`: `base` cut into subnets of prefix length `size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DefaultPool {
    /// The range the subnets are cut from.
    pub base: Ipv4Net,
    /// Prefix length of each subnet.
    pub size: u8,
}

impl DefaultPool {
    /// Parse `base=CIDR,size=N` (dockerd's `--default-address-pool` syntax).
    pub fn parse(s: &str) -> Result<DefaultPool, String> {
        let mut base = None;
        let mut size = None;
        for part in s.split(',') {
            let (k, v) = part.split_once('=').ok_or_else(|| {
                format!("invalid default address pool {s:?}: expected base=CIDR,size=N")
            })?;
            match k.trim() {
                "base" => {
                    base = Some(v.trim().parse::<Ipv4Net>().map_err(|_| {
                        format!(
                            "invalid default address pool {s:?}: base {v:?} is not an IPv4 CIDR"
                        )
                    })?)
                }
                "size" => {
                    size = Some(v.trim().parse::<u8>().map_err(|_| {
                        format!(
                            "invalid default address pool {s:?}: size {v:?} is not a prefix length"
                        )
                    })?)
                }
                other => {
                    return Err(format!(
                    "invalid default address pool {s:?}: unknown key {other:?} (use base and size)"
                ))
                }
            }
        }
        let (Some(base), Some(size)) = (base, size) else {
            return Err(format!(
                "invalid default address pool {s:?}: both base=CIDR and size=N are required"
            ));
        };
        if base.trunc() != base {
            return Err(format!(
                "invalid default address pool {s:?}: base has host bits set; use {}",
                base.trunc()
            ));
        }
        if size < base.prefix_len() || size > 30 {
            return Err(format!(
                "invalid default address pool {s:?}: size must be between {} and 30",
                base.prefix_len()
            ));
        }
        check_address_class("base", IpNet::V4(base))
            .map_err(|why| format!("invalid default address pool {s:?}: {why}"))?;
        Ok(DefaultPool { base, size })
    }

    /// A pool without [`DefaultPool::parse`]'s checks (tests of what the controller
    /// does with a pool no operator could configure, as a plugin might return).
    #[cfg(test)]
    pub(crate) fn unchecked(base: Ipv4Net, size: u8) -> DefaultPool {
        DefaultPool { base, size }
    }

    fn subnets(&self) -> impl Iterator<Item = Ipv4Net> {
        self.base.subnets(self.size).into_iter().flatten()
    }
}

/// One IPv6 default pool (`--default-ipv6-pool`): `base` cut into subnets of prefix
/// length `size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DefaultPoolV6 {
    /// The range the subnets are cut from.
    pub base: Ipv6Net,
    /// Prefix length of each subnet.
    pub size: u8,
}

/// Prefix length of the subnets the IPv6 default pool hands out.
pub const DEFAULT_V6_SUBNET_LEN: u8 = 64;

impl DefaultPoolV6 {
    /// Parse `base=CIDR,size=N` with an IPv6 base (`size`: the base's length to 120).
    pub fn parse(s: &str) -> Result<DefaultPoolV6, String> {
        let bad = |why: String| format!("invalid default IPv6 pool {s:?}: {why}");
        let (mut base, mut size) = (None, None);
        for part in s.split(',') {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| bad("expected base=CIDR,size=N".into()))?;
            match k.trim() {
                "base" => {
                    base = Some(
                        v.trim()
                            .parse::<Ipv6Net>()
                            .map_err(|_| bad(format!("base {v:?} is not an IPv6 CIDR")))?,
                    )
                }
                "size" => {
                    size = Some(
                        v.trim()
                            .parse::<u8>()
                            .map_err(|_| bad(format!("size {v:?} is not a prefix length")))?,
                    )
                }
                other => return Err(bad(format!("unknown key {other:?} (use base and size)"))),
            }
        }
        let (Some(base), Some(size)) = (base, size) else {
            return Err(bad("both base=CIDR and size=N are required".into()));
        };
        if base.trunc() != base {
            return Err(bad(format!("base has host bits set; use {}", base.trunc())));
        }
        if size < base.prefix_len() || size > 120 {
            return Err(bad(format!(
                "size must be between {} and 120",
                base.prefix_len()
            )));
        }
        check_address_class("base", IpNet::V6(base)).map_err(bad)?;
        Ok(DefaultPoolV6 { base, size })
    }

    /// The unique local /48 of a host with this machine id (RFC 4193: `fd` + a 40-bit
    /// global ID, here the first 40 bits of the SHA-256 of the id), cut into /64s.
    pub fn for_machine_id(machine_id: &str) -> DefaultPoolV6 {
        let d = ring::digest::digest(&ring::digest::SHA256, machine_id.trim().as_bytes());
        let g = d.as_ref();
        let byte = |i: usize| u16::from(g.get(i).copied().unwrap_or(0));
        let addr = Ipv6Addr::new(
            0xfd00 | byte(0),
            (byte(1) << 8) | byte(2),
            (byte(3) << 8) | byte(4),
            0,
            0,
            0,
            0,
            0,
        );
        let base = Ipv6Net::new(addr, 48).unwrap_or_default();
        DefaultPoolV6 {
            base,
            size: DEFAULT_V6_SUBNET_LEN,
        }
    }

    /// [`DefaultPoolV6::for_machine_id`] of this host's `/etc/machine-id` (or, without
    /// one, its hostname).
    pub fn for_host() -> DefaultPoolV6 {
        let id = std::fs::read_to_string("/etc/machine-id")
            .ok()
            .filter(|s| !s.trim().is_empty())
            .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
            .unwrap_or_default();
        DefaultPoolV6::for_machine_id(&id)
    }

    fn subnets(&self) -> impl Iterator<Item = Ipv6Net> {
        self.base.subnets(self.size).into_iter().flatten()
    }
}

/// Docker's local default pools: 172.17.0.0/12 as /16s, then 192.168.0.0/16 as /20s.
pub fn default_pools() -> Vec<DefaultPool> {
    let mut pools = Vec::with_capacity(16);
    // 172.17.0.0 … 172.31.0.0: fifteen /16s (172.16.0.0/16 is not a Docker default).
    for second in 17u8..=31 {
        if let Ok(base) = Ipv4Net::new(Ipv4Addr::new(172, second, 0, 0), 16) {
            pools.push(DefaultPool { base, size: 16 });
        }
    }
    if let Ok(base) = Ipv4Net::new(Ipv4Addr::new(192, 168, 0, 0), 16) {
        pools.push(DefaultPool { base, size: 20 });
    }
    pools
}

fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

fn to_u128(a: IpAddr) -> u128 {
    match a {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn from_u128(v6: bool, n: u128) -> IpAddr {
    if v6 {
        IpAddr::V6(n.into())
    } else {
        IpAddr::V4(Ipv4Addr::from(u32::try_from(n).unwrap_or(u32::MAX)))
    }
}

/// Address ranges no network's subnet, IP range, gateway or auxiliary address may
/// overlap, with what they are: they cannot be a network's own unicast addresses.
const REFUSED_RANGES: &[(&str, &str)] = &[
    ("0.0.0.0/8", "\"this network\" (unspecified)"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("224.0.0.0/4", "multicast"),
    (
        "240.0.0.0/4",
        "reserved (class E, with the broadcast address 255.255.255.255)",
    ),
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("fe80::/10", "link-local"),
    ("ff00::/8", "multicast"),
];

/// The first refused range (multicast, loopback, unspecified, link-local, reserved)
/// that `net` overlaps, with its class; `None` for an ordinary unicast subnet. A
/// subnet containing `::` (`::/64`, `::/0`) overlaps the unspecified address.
pub fn refused_class(net: IpNet) -> Option<(IpNet, &'static str)> {
    REFUSED_RANGES.iter().find_map(|(range, class)| {
        let range: IpNet = range.parse().ok()?;
        let same_family = matches!(
            (range, net),
            (IpNet::V4(_), IpNet::V4(_)) | (IpNet::V6(_), IpNet::V6(_))
        );
        (same_family && overlaps(&range, &net)).then_some((range, *class))
    })
}

/// Check that `net` (named `what`: "subnet", "IP range", "gateway", …) is in no
/// refused range ([`refused_class`]); the error names it, the class and the range.
pub fn check_address_class(what: &str, net: IpNet) -> Result<(), String> {
    match refused_class(net) {
        None => Ok(()),
        Some((range, class)) => Err(format!(
            "{what} {net} overlaps {range}, the {class} range: a network needs ordinary \
             unicast addresses, such as 10.1.0.0/24 or fd00:1::/64"
        )),
    }
}

/// Check a user-supplied subnet: its own network address, room for a gateway and at
/// least one endpoint.
pub fn validate_subnet(subnet: IpNet) -> Result<(), IpamError> {
    if subnet.trunc() != subnet {
        return Err(IpamError::InvalidSubnet(format!(
            "{subnet} has host bits set; it should be {}",
            subnet.trunc()
        )));
    }
    let max = match subnet {
        IpNet::V4(_) => 30,
        IpNet::V6(_) => 126,
    };
    if subnet.prefix_len() > max {
        return Err(IpamError::InvalidSubnet(format!(
            "{subnet} is too small: the prefix length must be {max} or less"
        )));
    }
    Ok(())
}

/// Addresses of one pool.
#[derive(Debug, Clone)]
struct SubnetAllocator {
    pool: Pool,
    /// Allocated addresses (gateway, auxiliary, endpoints).
    used: BTreeSet<u128>,
}

impl SubnetAllocator {
    fn v6(&self) -> bool {
        matches!(self.pool.subnet, IpNet::V6(_))
    }

    /// The lowest and highest address that may be handed out in `net`.
    fn host_bounds(&self, net: &IpNet) -> (u128, u128) {
        let subnet = &self.pool.subnet;
        let first = to_u128(subnet.network()) + 1;
        let last = if self.v6() {
            to_u128(subnet.broadcast())
        } else {
            to_u128(subnet.broadcast()).saturating_sub(1)
        };
        (
            to_u128(net.network()).max(first),
            to_u128(net.broadcast()).min(last),
        )
    }

    fn check(&self, addr: IpAddr) -> Result<u128, IpamError> {
        let subnet = self.pool.subnet;
        if !subnet.contains(&addr) {
            return Err(IpamError::NotInSubnet { addr, subnet });
        }
        if addr == subnet.network() || (!self.v6() && addr == subnet.broadcast()) {
            return Err(IpamError::Reserved { addr, subnet });
        }
        Ok(to_u128(addr))
    }

    fn allocate(&mut self, want: Option<IpAddr>, gateway: bool) -> Result<IpAddr, IpamError> {
        if let Some(addr) = want {
            let a = self.check(addr)?;
            if !self.used.insert(a) {
                return Err(IpamError::InUse { addr });
            }
            return Ok(addr);
        }
        let within = match self.pool.ip_range {
            Some(range) if !gateway => range,
            _ => self.pool.subnet,
        };
        let (lo, hi) = self.host_bounds(&within);
        if lo > hi {
            // A range of only the subnet's network or broadcast address (refused on
            // create; a pool recorded before that was refused has nothing to give).
            return Err(IpamError::Exhausted { subnet: within });
        }
        let mut candidate = lo;
        for &a in self.used.range(lo..=hi) {
            if a == candidate {
                candidate += 1;
            } else {
                break;
            }
        }
        if candidate > hi || lo > hi {
            return Err(IpamError::Exhausted { subnet: within });
        }
        self.used.insert(candidate);
        Ok(from_u128(self.v6(), candidate))
    }

    fn release(&mut self, addr: IpAddr) {
        self.used.remove(&to_u128(addr));
    }
}

/// The built-in `default` IPAM driver (see the module doc).
#[derive(Debug, Clone)]
pub struct DefaultIpam {
    defaults: Vec<DefaultPool>,
    defaults_v6: Vec<DefaultPoolV6>,
    avoid: Vec<Ipv4Net>,
    pools: BTreeMap<String, SubnetAllocator>,
}

impl Default for DefaultIpam {
    fn default() -> Self {
        DefaultIpam::new()
    }
}

/// The pool id the default driver gives `subnet` (stable across restarts).
pub fn local_pool_id(subnet: &IpNet) -> String {
    format!("LocalDefault/{subnet}")
}

impl DefaultIpam {
    /// An IPAM with Docker's default pools and nothing allocated.
    pub fn new() -> DefaultIpam {
        DefaultIpam::with_default_pools(default_pools())
    }

    /// An IPAM with these default pools instead (`--default-address-pool`).
    pub fn with_default_pools(defaults: Vec<DefaultPool>) -> DefaultIpam {
        DefaultIpam {
            defaults,
            defaults_v6: vec![DefaultPoolV6::for_host()],
            avoid: Vec::new(),
            pools: BTreeMap::new(),
        }
    }

    /// Never pick a default pool overlapping one of `routes` (the daemon host's
    /// routes). Explicitly requested subnets are not checked against them.
    pub fn avoid(mut self, routes: Vec<Ipv4Net>) -> DefaultIpam {
        self.avoid = routes;
        self
    }

    /// These IPv6 default pools instead of the host's unique local /48
    /// (`--default-ipv6-pool`; empty: none, an IPv6 network then needs a subnet).
    pub fn with_v6_pools(mut self, pools: Vec<DefaultPoolV6>) -> DefaultIpam {
        self.defaults_v6 = pools;
        self
    }

    fn pick_default_v6(&self) -> Result<IpNet, IpamError> {
        if self.defaults_v6.is_empty() {
            return Err(IpamError::InvalidSubnet(
                "an IPv6 network needs an explicit IPv6 subnet (IPAM Config Subnet): \
                 the daemon has no default IPv6 pool"
                    .into(),
            ));
        }
        for dp in &self.defaults_v6 {
            for candidate in dp.subnets() {
                let c = IpNet::V6(candidate);
                if self.overlapping(&c).is_none() {
                    return Ok(c);
                }
            }
        }
        Err(IpamError::PoolsExhausted)
    }

    fn overlapping(&self, subnet: &IpNet) -> Option<IpNet> {
        self.pools
            .values()
            .map(|p| p.pool.subnet)
            .find(|p| overlaps(p, subnet))
    }

    fn pick_default(&self) -> Result<IpNet, IpamError> {
        for dp in &self.defaults {
            for candidate in dp.subnets() {
                let c = IpNet::V4(candidate);
                let on_host = self.avoid.iter().any(|r| overlaps(&IpNet::V4(*r), &c));
                if !on_host && self.overlapping(&c).is_none() {
                    return Ok(c);
                }
            }
        }
        Err(IpamError::PoolsExhausted)
    }
}

impl Ipam for DefaultIpam {
    fn name(&self) -> &str {
        "default"
    }

    fn request_pool(&mut self, req: &PoolRequest) -> Result<Pool, IpamError> {
        let subnet = match req.subnet {
            Some(subnet) => {
                if req.v6 != matches!(subnet, IpNet::V6(_)) {
                    return Err(IpamError::InvalidSubnet(format!(
                        "{subnet} is not an {} subnet",
                        if req.v6 { "IPv6" } else { "IPv4" }
                    )));
                }
                validate_subnet(subnet)?;
                if let Some(other) = self.overlapping(&subnet) {
                    return Err(IpamError::Overlap { subnet, other });
                }
                subnet
            }
            None if req.ip_range.is_some() => {
                return Err(IpamError::InvalidRange(
                    "an IP range needs an explicit subnet".into(),
                ))
            }
            None if req.v6 => self.pick_default_v6()?,
            None => self.pick_default()?,
        };
        if let Some(range) = req.ip_range {
            if range.trunc() != range || !subnet.contains(&range) {
                return Err(IpamError::InvalidRange(format!(
                    "{range} must be a subnet inside {subnet}"
                )));
            }
            // Only the subnet's network address, or (IPv4) its broadcast address: no
            // address in it can be handed out.
            let first = to_u128(subnet.network()) + 1;
            let last = match subnet {
                IpNet::V4(_) => to_u128(subnet.broadcast()).saturating_sub(1),
                IpNet::V6(_) => to_u128(subnet.broadcast()),
            };
            let only_reserved =
                to_u128(range.network()).max(first) > to_u128(range.broadcast()).min(last);
            if only_reserved {
                return Err(IpamError::InvalidRange(format!(
                    "{range} holds only the network or broadcast address of {subnet}: no \
                     address in it can be handed out; give a larger range"
                )));
            }
        }
        let pool = Pool {
            id: local_pool_id(&subnet),
            subnet,
            ip_range: req.ip_range,
        };
        self.pools.insert(
            pool.id.clone(),
            SubnetAllocator {
                pool: pool.clone(),
                used: BTreeSet::new(),
            },
        );
        Ok(pool)
    }

    fn release_pool(&mut self, pool_id: &str) -> Result<(), IpamError> {
        self.pools
            .remove(pool_id)
            .map(|_| ())
            .ok_or_else(|| IpamError::UnknownPool(pool_id.to_string()))
    }

    fn request_address(
        &mut self,
        pool_id: &str,
        want: Option<IpAddr>,
        options: &BTreeMap<String, String>,
    ) -> Result<IpAddr, IpamError> {
        let gateway =
            options.get(REQUEST_ADDRESS_TYPE).map(String::as_str) == Some(GATEWAY_ADDRESS_TYPE);
        self.pools
            .get_mut(pool_id)
            .ok_or_else(|| IpamError::UnknownPool(pool_id.to_string()))?
            .allocate(want, gateway)
    }

    fn release_address(&mut self, pool_id: &str, addr: IpAddr) -> Result<(), IpamError> {
        self.pools
            .get_mut(pool_id)
            .ok_or_else(|| IpamError::UnknownPool(pool_id.to_string()))?
            .release(addr);
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }
    fn none() -> BTreeMap<String, String> {
        BTreeMap::new()
    }
    fn v4(subnet: &str) -> PoolRequest {
        PoolRequest {
            subnet: Some(net(subnet)),
            ..Default::default()
        }
    }
    /// A pool with its gateway reserved, as the controller does it.
    fn pool_with_gw(ipam: &mut DefaultIpam, req: &PoolRequest) -> Pool {
        let p = ipam.request_pool(req).unwrap();
        ipam.request_address(&p.id, None, &gateway_options())
            .unwrap();
        p
    }

    #[test]
    fn default_pools_order() {
        let subnets: Vec<Ipv4Net> = default_pools()
            .iter()
            .flat_map(DefaultPool::subnets)
            .collect();
        assert_eq!(subnets.len(), 31);
        assert_eq!(subnets[0].to_string(), "172.17.0.0/16");
        assert_eq!(subnets[14].to_string(), "172.31.0.0/16");
        assert_eq!(subnets[15].to_string(), "192.168.0.0/20");
        assert_eq!(subnets[16].to_string(), "192.168.16.0/20");
        assert_eq!(subnets[30].to_string(), "192.168.240.0/20");
    }

    #[test]
    fn default_pool_and_gateway() {
        let mut ipam = DefaultIpam::new();
        let p = ipam.request_pool(&PoolRequest::default()).unwrap();
        assert_eq!(p.subnet, net("172.17.0.0/16"));
        assert_eq!(p.id, "LocalDefault/172.17.0.0/16");
        let gw = ipam
            .request_address(&p.id, None, &gateway_options())
            .unwrap();
        assert_eq!(gw, ip("172.17.0.1"));
        let p2 = ipam.request_pool(&PoolRequest::default()).unwrap();
        assert_eq!(p2.subnet, net("172.18.0.0/16"));
    }

    #[test]
    fn default_pools_skip_host_routes() {
        let mut ipam = DefaultIpam::new().avoid(vec!["172.17.5.0/24".parse().unwrap()]);
        let p = ipam.request_pool(&PoolRequest::default()).unwrap();
        assert_eq!(p.subnet, net("172.18.0.0/16"));
        // An explicit subnet is the user's choice.
        ipam.request_pool(&v4("172.17.0.0/16")).unwrap();
    }

    #[test]
    fn custom_default_address_pools() {
        let dp = DefaultPool::parse("base=10.200.0.0/16,size=24").unwrap();
        assert_eq!(dp.size, 24);
        let mut ipam = DefaultIpam::with_default_pools(vec![dp]);
        assert_eq!(
            ipam.request_pool(&PoolRequest::default()).unwrap().subnet,
            net("10.200.0.0/24")
        );
        assert_eq!(
            ipam.request_pool(&PoolRequest::default()).unwrap().subnet,
            net("10.200.1.0/24")
        );
        for bad in [
            "base=10.0.0.0/16",
            "size=24",
            "base=10.0.0.1/16,size=24",
            "base=10.0.0.0/16,size=8",
            "base=10.0.0.0/16,size=31",
            "base=nope,size=24",
            "base=10.0.0.0/16,size=24,x=1",
        ] {
            let e = DefaultPool::parse(bad).unwrap_err();
            assert!(e.contains("default address pool"), "{bad}: {e}");
        }
    }

    #[test]
    fn default_pools_skip_overlapping_user_subnets() {
        let mut ipam = DefaultIpam::new();
        let user = ipam.request_pool(&v4("172.17.5.0/24")).unwrap();
        let p = ipam.request_pool(&PoolRequest::default()).unwrap();
        assert_eq!(p.subnet, net("172.18.0.0/16"));
        // A user subnet overlapping a pool in use is refused.
        assert_eq!(
            ipam.request_pool(&v4("172.18.0.0/24")),
            Err(IpamError::Overlap {
                subnet: net("172.18.0.0/24"),
                other: net("172.18.0.0/16")
            })
        );
        // Releasing makes it available again.
        ipam.release_pool(&user.id).unwrap();
        let p = ipam.request_pool(&PoolRequest::default()).unwrap();
        assert_eq!(p.subnet, net("172.17.0.0/16"));
    }

    #[test]
    fn pools_exhausted() {
        let mut ipam =
            DefaultIpam::with_default_pools(vec![
                DefaultPool::parse("base=10.0.0.0/24,size=24").unwrap()
            ]);
        ipam.request_pool(&PoolRequest::default()).unwrap();
        assert_eq!(
            ipam.request_pool(&PoolRequest::default()),
            Err(IpamError::PoolsExhausted)
        );
        assert!(IpamError::PoolsExhausted
            .to_string()
            .contains("explicit subnet"));
    }

    #[test]
    fn after_172_comes_192_168() {
        let mut ipam = DefaultIpam::new();
        for _ in 0..15 {
            ipam.request_pool(&PoolRequest::default()).unwrap();
        }
        let p = ipam.request_pool(&PoolRequest::default()).unwrap();
        assert_eq!(p.subnet, net("192.168.0.0/20"));
    }

    #[test]
    fn subnet_and_range_validation() {
        let mut ipam = DefaultIpam::new();
        for (req, want) in [
            (v4("10.0.0.5/24"), "host bits"),
            (v4("10.0.0.0/31"), "too small"),
            (
                PoolRequest {
                    subnet: Some(net("fd00::/64")),
                    ..Default::default()
                },
                "not an IPv4",
            ),
            (
                PoolRequest {
                    subnet: Some(net("10.0.0.0/24")),
                    ip_range: Some(net("10.0.1.0/25")),
                    ..Default::default()
                },
                "inside 10.0.0.0/24",
            ),
            (
                PoolRequest {
                    ip_range: Some(net("10.0.1.0/25")),
                    ..Default::default()
                },
                "explicit subnet",
            ),
        ] {
            let e = ipam.request_pool(&req).unwrap_err();
            assert!(e.to_string().contains(want), "{req:?}: {e}");
        }
        // Nothing was reserved by the failures.
        assert!(ipam.pools.is_empty());
        ipam.request_pool(&v4("10.0.0.0/24")).unwrap();
    }

    #[test]
    fn lowest_free_static_and_release() {
        let mut ipam = DefaultIpam::new();
        let p = pool_with_gw(&mut ipam, &v4("10.10.0.0/24"));
        let id = p.id.as_str();
        let req = |ipam: &mut DefaultIpam, want: Option<&str>| {
            ipam.request_address(id, want.map(ip), &none())
        };
        assert_eq!(req(&mut ipam, None).unwrap(), ip("10.10.0.2"));
        assert_eq!(req(&mut ipam, Some("10.10.0.5")).unwrap(), ip("10.10.0.5"));
        assert_eq!(req(&mut ipam, None).unwrap(), ip("10.10.0.3"));
        assert_eq!(req(&mut ipam, None).unwrap(), ip("10.10.0.4"));
        assert_eq!(req(&mut ipam, None).unwrap(), ip("10.10.0.6"));
        assert_eq!(
            req(&mut ipam, Some("10.10.0.5")),
            Err(IpamError::InUse {
                addr: ip("10.10.0.5")
            })
        );
        assert_eq!(
            req(&mut ipam, Some("10.10.0.1")),
            Err(IpamError::InUse {
                addr: ip("10.10.0.1")
            })
        );
        assert_eq!(
            req(&mut ipam, Some("10.10.1.5")),
            Err(IpamError::NotInSubnet {
                addr: ip("10.10.1.5"),
                subnet: p.subnet
            })
        );
        assert_eq!(
            req(&mut ipam, Some("10.10.0.255")),
            Err(IpamError::Reserved {
                addr: ip("10.10.0.255"),
                subnet: p.subnet
            })
        );
        ipam.release_address(id, ip("10.10.0.3")).unwrap();
        assert_eq!(req(&mut ipam, None).unwrap(), ip("10.10.0.3"));
    }

    #[test]
    fn exhaustion_says_what_to_do() {
        let mut ipam = DefaultIpam::new();
        let p = pool_with_gw(&mut ipam, &v4("10.0.0.0/30"));
        assert_eq!(
            ipam.request_address(&p.id, None, &none()).unwrap(),
            ip("10.0.0.2")
        );
        let err = ipam.request_address(&p.id, None, &none()).unwrap_err();
        assert_eq!(err, IpamError::Exhausted { subnet: p.subnet });
        let text = err.to_string();
        assert!(
            text.contains("no free address in 10.0.0.0/30") && text.contains("larger --subnet"),
            "{text}"
        );
        ipam.release_address(&p.id, ip("10.0.0.2")).unwrap();
        assert_eq!(
            ipam.request_address(&p.id, None, &none()).unwrap(),
            ip("10.0.0.2")
        );
    }

    #[test]
    fn ip_range_limits_dynamic_only() {
        let mut ipam = DefaultIpam::new();
        let p = pool_with_gw(
            &mut ipam,
            &PoolRequest {
                subnet: Some(net("10.0.0.0/24")),
                ip_range: Some(net("10.0.0.128/30")),
                ..Default::default()
            },
        );
        // The gateway came from the whole subnet.
        assert!(ipam
            .request_address(&p.id, Some(ip("10.0.0.1")), &none())
            .is_err());
        let dynamic = |ipam: &mut DefaultIpam| ipam.request_address(&p.id, None, &none());
        assert_eq!(dynamic(&mut ipam).unwrap(), ip("10.0.0.128"));
        assert_eq!(dynamic(&mut ipam).unwrap(), ip("10.0.0.129"));
        // Static: anywhere in the subnet.
        assert_eq!(
            ipam.request_address(&p.id, Some(ip("10.0.0.9")), &none())
                .unwrap(),
            ip("10.0.0.9")
        );
        assert_eq!(dynamic(&mut ipam).unwrap(), ip("10.0.0.130"));
        assert_eq!(dynamic(&mut ipam).unwrap(), ip("10.0.0.131"));
        assert_eq!(
            dynamic(&mut ipam),
            Err(IpamError::Exhausted {
                subnet: net("10.0.0.128/30")
            })
        );
    }

    #[test]
    fn aux_addresses_are_skipped() {
        let mut ipam = DefaultIpam::new();
        let p = pool_with_gw(&mut ipam, &v4("10.0.0.0/24"));
        for aux in ["10.0.0.2", "10.0.0.3"] {
            ipam.request_address(&p.id, Some(ip(aux)), &none()).unwrap();
        }
        assert_eq!(
            ipam.request_address(&p.id, None, &none()).unwrap(),
            ip("10.0.0.4")
        );
    }

    #[test]
    fn v6_pools_and_addresses() {
        let mut ipam = DefaultIpam::new();
        let req = PoolRequest {
            subnet: Some(net("fd00:1::/64")),
            v6: true,
            ..Default::default()
        };
        let p = pool_with_gw(&mut ipam, &req);
        assert_eq!(p.subnet, net("fd00:1::/64"));
        assert_eq!(
            ipam.request_address(&p.id, None, &none()).unwrap(),
            ip("fd00:1::2")
        );
        assert_eq!(
            ipam.request_address(&p.id, Some(ip("fd00:1::ffff")), &none())
                .unwrap(),
            ip("fd00:1::ffff")
        );
        assert_eq!(
            ipam.request_address(&p.id, Some(ip("fd00:1::")), &none()),
            Err(IpamError::Reserved {
                addr: ip("fd00:1::"),
                subnet: p.subnet
            })
        );
        assert!(matches!(
            ipam.request_address(&p.id, Some(ip("fd00:2::1")), &none()),
            Err(IpamError::NotInSubnet { .. })
        ));
        assert!(matches!(
            ipam.request_address(&p.id, Some(ip("10.0.0.1")), &none()),
            Err(IpamError::NotInSubnet { .. })
        ));
        // v4 and v6 pools never overlap each other; v6 pools do.
        ipam.request_pool(&v4("10.0.0.0/24")).unwrap();
        let overlap = PoolRequest {
            subnet: Some(net("fd00:1::/112")),
            v6: true,
            ..Default::default()
        };
        assert!(matches!(
            ipam.request_pool(&overlap),
            Err(IpamError::Overlap { .. })
        ));
        // The last address of a v6 subnet is usable (no broadcast in IPv6).
        let small = PoolRequest {
            subnet: Some(net("fd00:9::/126")),
            v6: true,
            ..Default::default()
        };
        let s = pool_with_gw(&mut ipam, &small);
        assert_eq!(
            ipam.request_address(&s.id, None, &none()).unwrap(),
            ip("fd00:9::2")
        );
        assert_eq!(
            ipam.request_address(&s.id, None, &none()).unwrap(),
            ip("fd00:9::3")
        );
        assert!(matches!(
            ipam.request_address(&s.id, None, &none()),
            Err(IpamError::Exhausted { .. })
        ));
    }

    #[test]
    fn state_is_reconstructable_from_records() {
        // Before a "restart": a pool, its gateway, an aux address, some endpoints.
        let mut before = DefaultIpam::new();
        let req = PoolRequest {
            subnet: Some(net("10.5.0.0/24")),
            ip_range: Some(net("10.5.0.0/28")),
            ..Default::default()
        };
        let p = pool_with_gw(&mut before, &req);
        before
            .request_address(&p.id, Some(ip("10.5.0.2")), &none())
            .unwrap();
        let mut endpoints = Vec::new();
        for _ in 0..4 {
            endpoints.push(before.request_address(&p.id, None, &none()).unwrap());
        }
        before.release_address(&p.id, endpoints[1]).unwrap();
        let recorded: Vec<IpAddr> = [ip("10.5.0.1"), ip("10.5.0.2")]
            .into_iter()
            .chain(endpoints.iter().copied().filter(|a| *a != endpoints[1]))
            .collect();
        // After: replay the pool and every recorded address as static requests.
        let mut after = DefaultIpam::new();
        let q = after.request_pool(&req).unwrap();
        assert_eq!(q, p);
        for a in &recorded {
            after.request_address(&q.id, Some(*a), &none()).unwrap();
        }
        // Both hand out the same next addresses, never a recorded one.
        for _ in 0..3 {
            let x = before.request_address(&p.id, None, &none()).unwrap();
            let y = after.request_address(&q.id, None, &none()).unwrap();
            assert_eq!(x, y);
            assert!(!recorded.contains(&y));
        }
        // Default pool picks also agree.
        assert_eq!(
            before.request_pool(&PoolRequest::default()).unwrap(),
            after.request_pool(&PoolRequest::default()).unwrap()
        );
    }

    #[test]
    fn v6_default_pool_is_the_hosts_ula_48_as_64s() {
        let dp = DefaultPoolV6::for_machine_id("0123456789abcdef0123456789abcdef");
        assert_eq!(
            dp,
            DefaultPoolV6::for_machine_id("0123456789abcdef0123456789abcdef\n")
        );
        assert_ne!(dp, DefaultPoolV6::for_machine_id("another machine"));
        assert_eq!((dp.base.prefix_len(), dp.size), (48, 64));
        assert_eq!(dp.base.addr().segments()[0] & 0xff00, 0xfd00, "{dp:?}");
        let mut ipam = DefaultIpam::new().with_v6_pools(vec![dp]);
        let v6 = PoolRequest {
            v6: true,
            ..PoolRequest::default()
        };
        let a = pool_with_gw(&mut ipam, &v6);
        let b = pool_with_gw(&mut ipam, &v6);
        let base = IpNet::V6(dp.base);
        assert!(base.contains(&a.subnet) && base.contains(&b.subnet));
        assert_eq!((a.subnet.prefix_len(), b.subnet.prefix_len()), (64, 64));
        assert_ne!(a.subnet, b.subnet);
        // A user's /64 inside the pool is skipped; a released one is handed out again.
        let IpNet::V6(a6) = a.subnet else { panic!() };
        let third =
            Ipv6Net::new(Ipv6Addr::from(u128::from(a6.network()) + (2u128 << 64)), 64).unwrap();
        ipam.request_pool(&PoolRequest {
            subnet: Some(IpNet::V6(third)),
            v6: true,
            ..PoolRequest::default()
        })
        .unwrap();
        let IpNet::V6(c6) = ipam.request_pool(&v6).unwrap().subnet else {
            panic!()
        };
        assert_eq!(
            u128::from(c6.network()),
            u128::from(a6.network()) + (3u128 << 64)
        );
        ipam.release_pool(&a.id).unwrap();
        assert_eq!(ipam.request_pool(&v6).unwrap().subnet, a.subnet);
        // No pool: an explicit subnet is needed.
        let mut none = DefaultIpam::new().with_v6_pools(Vec::new());
        let e = none.request_pool(&v6).unwrap_err();
        assert!(e.to_string().contains("explicit IPv6 subnet"), "{e}");
        // A small pool runs out.
        let small = DefaultPoolV6::parse("base=fd00:1::/63,size=64").unwrap();
        let mut ipam = DefaultIpam::new().with_v6_pools(vec![small]);
        ipam.request_pool(&v6).unwrap();
        ipam.request_pool(&v6).unwrap();
        assert_eq!(ipam.request_pool(&v6), Err(IpamError::PoolsExhausted));
        for bad in [
            "base=10.0.0.0/8,size=24",
            "base=fd00::1/48,size=64",
            "base=fd00::/48,size=40",
            "base=fd00::/48,size=121",
            "base=ff00::/48,size=64",
            "size=64",
        ] {
            let e = DefaultPoolV6::parse(bad).unwrap_err();
            assert!(e.contains("default IPv6 pool"), "{bad}: {e}");
        }
    }

    #[test]
    fn unknown_pool() {
        let mut ipam = DefaultIpam::new();
        assert_eq!(
            ipam.request_address("LocalDefault/10.0.0.0/24", None, &none()),
            Err(IpamError::UnknownPool("LocalDefault/10.0.0.0/24".into()))
        );
        assert!(ipam.release_pool("x").is_err());
    }

    #[test]
    fn default_pools_in_refused_classes_are_refused() {
        for bad in ["base=224.0.0.0/8,size=24", "base=127.0.0.0/8,size=24"] {
            let e = DefaultPool::parse(bad).unwrap_err();
            assert!(e.contains(bad) && e.contains("range"), "{e}");
        }
    }

    #[test]
    fn refused_address_classes() {
        for (bad, class) in [
            ("224.1.0.0/24", "multicast"),
            ("239.255.255.0/30", "multicast"),
            ("127.0.0.0/24", "loopback"),
            ("0.0.0.0/8", "unspecified"),
            ("0.0.0.0/0", "unspecified"),
            ("169.254.0.0/24", "link-local"),
            ("255.255.255.255/32", "broadcast"),
            ("240.0.0.0/24", "reserved"),
            ("ff02::/64", "multicast"),
            ("::/64", "unspecified"),
            ("::/0", "unspecified"),
            ("::1/128", "loopback"),
            ("fe80::/64", "link-local"),
            ("fe80::/9", "link-local"),
        ] {
            let e = check_address_class("subnet", net(bad)).unwrap_err();
            assert!(e.contains(bad) && e.contains(class), "{bad}: {e}");
        }
        for ok in [
            "10.0.0.0/8",
            "172.17.0.0/16",
            "192.168.1.0/24",
            "1.0.0.0/24",
            "223.255.255.0/24",
            "fd00:1::/64",
            "2001:db8::/64",
            "::ffff:0:0/96",
            "fec0::/10",
        ] {
            assert_eq!(check_address_class("subnet", net(ok)), Ok(()), "{ok}");
        }
    }
}
