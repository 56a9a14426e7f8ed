//! IP address management.
//!
//! Contract: [`Ipam`] hands out *pools* (one IPv4 subnet + gateway per network) and
//! *addresses* within a pool. [`DefaultIpam`] is the built-in `default` driver:
//!
//! * without a requested subnet it takes the first default pool (172.18.0.0/16 …
//!   172.31.0.0/16, then 192.168.0.0/20, 192.168.16.0/20, … 192.168.240.0/20) that
//!   overlaps no pool already handed out; a requested subnet must overlap none either;
//! * without a requested gateway the first host address is the gateway; the gateway
//!   is reserved in the pool;
//! * the network and broadcast addresses are never handed out; dynamic allocation
//!   takes the lowest free address (within the optional `IPRange`); a static request
//!   is honoured if it lies in the subnet and is free;
//! * every failure leaves the state unchanged.
//!
//! Pools are keyed by their subnet (subnets never overlap in one address space), so
//! the state can be rebuilt after a restart by replaying pools and static addresses.

use ipnet::Ipv4Net;
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

/// Why an IPAM request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    /// The requested subnet is unusable.
    #[error("invalid subnet: {0}")]
    InvalidSubnet(String),
    /// The requested gateway is unusable.
    #[error("invalid gateway: {0}")]
    InvalidGateway(String),
    /// A requested address is outside the pool's subnet.
    #[error("address {addr} is not in subnet {subnet}")]
    NotInSubnet {
        /// The address asked for.
        addr: Ipv4Addr,
        /// The pool's subnet.
        subnet: Ipv4Net,
    },
    /// A requested address is the subnet's network or broadcast address.
    #[error("address {addr} is the network or broadcast address of {subnet}")]
    Reserved {
        /// The address asked for.
        addr: Ipv4Addr,
        /// The pool's subnet.
        subnet: Ipv4Net,
    },
    /// A requested address is already allocated (or is the gateway).
    #[error("address {addr} is already in use")]
    InUse {
        /// The address asked for.
        addr: Ipv4Addr,
    },
    /// A requested subnet overlaps a pool already handed out.
    #[error("subnet {subnet} overlaps with subnet {other} of another network")]
    Overlap {
        /// The subnet asked for.
        subnet: Ipv4Net,
        /// The pool it overlaps.
        other: Ipv4Net,
    },
    /// Every default pool overlaps a pool in use.
    #[error("all predefined address pools have been fully subnetted; give an explicit subnet (IPAM Config Subnet) or remove unused networks")]
    PoolsExhausted,
    /// No free address is left in the pool.
    #[error("no available addresses in subnet {subnet}: all addresses are allocated")]
    Exhausted {
        /// The full pool.
        subnet: Ipv4Net,
    },
    /// The pool is not known (internal inconsistency).
    #[error("no address pool {0}")]
    UnknownPool(Ipv4Net),
}

/// What a network asks of IPAM.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolRequest {
    /// A specific subnet, or `None` for one from the default pools.
    pub subnet: Option<Ipv4Net>,
    /// A specific gateway, or `None` for the first host address.
    pub gateway: Option<Ipv4Addr>,
    /// Restrict dynamic allocation to this range (must lie in the subnet).
    pub ip_range: Option<Ipv4Net>,
}

/// A pool handed out to a network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool {
    /// The subnet (also the pool's key).
    pub subnet: Ipv4Net,
    /// The gateway address (reserved in the pool).
    pub gateway: Ipv4Addr,
    /// The dynamic allocation range, if restricted.
    pub ip_range: Option<Ipv4Net>,
}

/// An IPAM driver.
pub trait Ipam: Send {
    /// The driver name reported in `IPAM.Driver`.
    fn name(&self) -> &str;
    /// Reserve a pool for a new network.
    fn request_pool(&mut self, req: &PoolRequest) -> Result<Pool, IpamError>;
    /// Give a pool back (its addresses are forgotten).
    fn release_pool(&mut self, subnet: Ipv4Net) -> Result<(), IpamError>;
    /// Allocate `want`, or the lowest free address if `None`.
    fn request_address(
        &mut self,
        subnet: Ipv4Net,
        want: Option<Ipv4Addr>,
    ) -> Result<Ipv4Addr, IpamError>;
    /// Free an address.
    fn release_address(&mut self, subnet: Ipv4Net, addr: Ipv4Addr) -> Result<(), IpamError>;
}

/// The default pools, in the order they are tried.
pub fn default_pools() -> Vec<Ipv4Net> {
    let mut pools = Vec::with_capacity(30);
    for second in 18u8..=31 {
        if let Ok(net) = Ipv4Net::new(Ipv4Addr::new(172, second, 0, 0), 16) {
            pools.push(net);
        }
    }
    for third in (0u16..256).step_by(16) {
        let third = u8::try_from(third).unwrap_or(0);
        if let Ok(net) = Ipv4Net::new(Ipv4Addr::new(192, 168, third, 0), 20) {
            pools.push(net);
        }
    }
    pools
}

fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// Check a user-supplied subnet: it must be its own network address and leave room
/// for a gateway and at least one endpoint.
pub fn validate_subnet(subnet: Ipv4Net) -> Result<(), IpamError> {
    if subnet.trunc() != subnet {
        return Err(IpamError::InvalidSubnet(format!(
            "{subnet} has host bits set; it should be {}",
            subnet.trunc()
        )));
    }
    if subnet.prefix_len() > 30 {
        return Err(IpamError::InvalidSubnet(format!(
            "{subnet} is too small: the prefix length must be 30 or less"
        )));
    }
    Ok(())
}

/// Addresses of one pool.
#[derive(Debug, Clone)]
struct SubnetAllocator {
    pool: Pool,
    /// Allocated addresses (including the gateway), as `u32`.
    used: BTreeSet<u32>,
}

impl SubnetAllocator {
    fn new(pool: Pool) -> SubnetAllocator {
        let mut used = BTreeSet::new();
        used.insert(u32::from(pool.gateway));
        SubnetAllocator { pool, used }
    }

    fn first_host(&self) -> u32 {
        u32::from(self.pool.subnet.network()) + 1
    }

    fn last_host(&self) -> u32 {
        u32::from(self.pool.subnet.broadcast()).saturating_sub(1)
    }

    fn check(&self, addr: Ipv4Addr) -> Result<u32, IpamError> {
        let subnet = self.pool.subnet;
        if !subnet.contains(&addr) {
            return Err(IpamError::NotInSubnet { addr, subnet });
        }
        if addr == subnet.network() || addr == subnet.broadcast() {
            return Err(IpamError::Reserved { addr, subnet });
        }
        Ok(u32::from(addr))
    }

    fn allocate(&mut self, want: Option<Ipv4Addr>) -> Result<Ipv4Addr, IpamError> {
        if let Some(addr) = want {
            let a = self.check(addr)?;
            if !self.used.insert(a) {
                return Err(IpamError::InUse { addr });
            }
            return Ok(addr);
        }
        let (lo, hi) = match self.pool.ip_range {
            Some(range) => (
                u32::from(range.network()).max(self.first_host()),
                u32::from(range.broadcast()).min(self.last_host()),
            ),
            None => (self.first_host(), self.last_host()),
        };
        let mut candidate = lo;
        for &a in self.used.range(lo..=hi) {
            if a == candidate {
                candidate += 1;
            } else {
                break;
            }
        }
        if candidate > hi || lo > hi {
            return Err(IpamError::Exhausted {
                subnet: self.pool.subnet,
            });
        }
        self.used.insert(candidate);
        Ok(Ipv4Addr::from(candidate))
    }

    fn release(&mut self, addr: Ipv4Addr) {
        if addr != self.pool.gateway {
            self.used.remove(&u32::from(addr));
        }
    }
}

/// The built-in `default` IPAM driver (see the module doc).
#[derive(Debug, Clone)]
pub struct DefaultIpam {
    defaults: Vec<Ipv4Net>,
    pools: BTreeMap<Ipv4Net, SubnetAllocator>,
}

impl Default for DefaultIpam {
    fn default() -> Self {
        DefaultIpam::new()
    }
}

impl DefaultIpam {
    /// An IPAM with the standard default pools and nothing allocated.
    pub fn new() -> DefaultIpam {
        DefaultIpam::with_default_pools(default_pools())
    }

    /// An IPAM with custom default pools (tests, `--default-address-pool` later).
    pub fn with_default_pools(defaults: Vec<Ipv4Net>) -> DefaultIpam {
        DefaultIpam {
            defaults,
            pools: BTreeMap::new(),
        }
    }

    fn overlapping(&self, subnet: &Ipv4Net) -> Option<Ipv4Net> {
        self.pools.keys().find(|p| overlaps(p, subnet)).copied()
    }
}

impl Ipam for DefaultIpam {
    fn name(&self) -> &str {
        "default"
    }

    fn request_pool(&mut self, req: &PoolRequest) -> Result<Pool, IpamError> {
        let subnet = match req.subnet {
            Some(subnet) => {
                validate_subnet(subnet)?;
                if let Some(other) = self.overlapping(&subnet) {
                    return Err(IpamError::Overlap { subnet, other });
                }
                subnet
            }
            None => {
                if req.gateway.is_some() || req.ip_range.is_some() {
                    return Err(IpamError::InvalidGateway(
                        "a gateway or IP range needs an explicit subnet".into(),
                    ));
                }
                self.defaults
                    .iter()
                    .find(|d| self.overlapping(d).is_none())
                    .copied()
                    .ok_or(IpamError::PoolsExhausted)?
            }
        };
        let gateway = match req.gateway {
            Some(gw) => {
                if !subnet.contains(&gw) {
                    return Err(IpamError::InvalidGateway(format!(
                        "gateway {gw} is not in subnet {subnet}"
                    )));
                }
                if gw == subnet.network() || gw == subnet.broadcast() {
                    return Err(IpamError::InvalidGateway(format!(
                        "gateway {gw} is the network or broadcast address of {subnet}"
                    )));
                }
                gw
            }
            None => Ipv4Addr::from(u32::from(subnet.network()) + 1),
        };
        if let Some(range) = req.ip_range {
            if range.trunc() != range || !subnet.contains(&range) {
                return Err(IpamError::InvalidSubnet(format!(
                    "IP range {range} must be a subnet inside {subnet}"
                )));
            }
        }
        let pool = Pool {
            subnet,
            gateway,
            ip_range: req.ip_range,
        };
        self.pools.insert(subnet, SubnetAllocator::new(pool));
        Ok(pool)
    }

    fn release_pool(&mut self, subnet: Ipv4Net) -> Result<(), IpamError> {
        self.pools
            .remove(&subnet)
            .map(|_| ())
            .ok_or(IpamError::UnknownPool(subnet))
    }

    fn request_address(
        &mut self,
        subnet: Ipv4Net,
        want: Option<Ipv4Addr>,
    ) -> Result<Ipv4Addr, IpamError> {
        self.pools
            .get_mut(&subnet)
            .ok_or(IpamError::UnknownPool(subnet))?
            .allocate(want)
    }

    fn release_address(&mut self, subnet: Ipv4Net, addr: Ipv4Addr) -> Result<(), IpamError> {
        self.pools
            .get_mut(&subnet)
            .ok_or(IpamError::UnknownPool(subnet))?
            .release(addr);
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }
    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn default_pools_order() {
        let p = default_pools();
        assert_eq!(p.len(), 30);
        assert_eq!(p[0], net("172.18.0.0/16"));
        assert_eq!(p[13], net("172.31.0.0/16"));
        assert_eq!(p[14], net("192.168.0.0/20"));
        assert_eq!(p[15], net("192.168.16.0/20"));
        assert_eq!(p[29], net("192.168.240.0/20"));
    }

    #[test]
    fn default_pool_and_gateway() {
        let mut ipam = DefaultIpam::new();
        let p = ipam.request_pool(&PoolRequest::default()).unwrap();
        assert_eq!(p.subnet, net("172.18.0.0/16"));
        assert_eq!(p.gateway, ip("172.18.0.1"));
        let p2 = ipam.request_pool(&PoolRequest::default()).unwrap();
        assert_eq!(p2.subnet, net("172.19.0.0/16"));
    }

    #[test]
    fn default_pools_skip_overlapping_user_subnets() {
        let mut ipam = DefaultIpam::new();
        let req = PoolRequest {
            subnet: Some(net("172.18.5.0/24")),
            ..Default::default()
        };
        ipam.request_pool(&req).unwrap();
        let p = ipam.request_pool(&PoolRequest::default()).unwrap();
        assert_eq!(p.subnet, net("172.19.0.0/16"));
        // And a user subnet overlapping a pool in use is refused.
        let req = PoolRequest {
            subnet: Some(net("172.19.0.0/24")),
            ..Default::default()
        };
        assert_eq!(
            ipam.request_pool(&req),
            Err(IpamError::Overlap {
                subnet: net("172.19.0.0/24"),
                other: net("172.19.0.0/16")
            })
        );
        // Releasing makes it available again.
        ipam.release_pool(net("172.18.5.0/24")).unwrap();
        let p = ipam.request_pool(&PoolRequest::default()).unwrap();
        assert_eq!(p.subnet, net("172.18.0.0/16"));
    }

    #[test]
    fn pools_exhausted() {
        let mut ipam = DefaultIpam::with_default_pools(vec![net("10.0.0.0/24")]);
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
        for _ in 0..14 {
            ipam.request_pool(&PoolRequest::default()).unwrap();
        }
        let p = ipam.request_pool(&PoolRequest::default()).unwrap();
        assert_eq!(p.subnet, net("192.168.0.0/20"));
    }

    #[test]
    fn subnet_and_gateway_validation() {
        let mut ipam = DefaultIpam::new();
        let bad = PoolRequest {
            subnet: Some(net("10.0.0.5/24")),
            ..Default::default()
        };
        assert!(matches!(
            ipam.request_pool(&bad),
            Err(IpamError::InvalidSubnet(_))
        ));
        let small = PoolRequest {
            subnet: Some(net("10.0.0.0/31")),
            ..Default::default()
        };
        assert!(matches!(
            ipam.request_pool(&small),
            Err(IpamError::InvalidSubnet(_))
        ));
        let gw_out = PoolRequest {
            subnet: Some(net("10.0.0.0/24")),
            gateway: Some(ip("10.0.1.1")),
            ..Default::default()
        };
        assert!(matches!(
            ipam.request_pool(&gw_out),
            Err(IpamError::InvalidGateway(_))
        ));
        let gw_bcast = PoolRequest {
            subnet: Some(net("10.0.0.0/24")),
            gateway: Some(ip("10.0.0.255")),
            ..Default::default()
        };
        assert!(matches!(
            ipam.request_pool(&gw_bcast),
            Err(IpamError::InvalidGateway(_))
        ));
        // Nothing was reserved by the failures.
        let ok = PoolRequest {
            subnet: Some(net("10.0.0.0/24")),
            gateway: Some(ip("10.0.0.254")),
            ..Default::default()
        };
        assert_eq!(ipam.request_pool(&ok).unwrap().gateway, ip("10.0.0.254"));
    }

    #[test]
    fn lowest_free_static_and_release() {
        let mut ipam = DefaultIpam::new();
        let s = net("10.10.0.0/24");
        ipam.request_pool(&PoolRequest {
            subnet: Some(s),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(ipam.request_address(s, None).unwrap(), ip("10.10.0.2"));
        assert_eq!(
            ipam.request_address(s, Some(ip("10.10.0.5"))).unwrap(),
            ip("10.10.0.5")
        );
        assert_eq!(ipam.request_address(s, None).unwrap(), ip("10.10.0.3"));
        assert_eq!(ipam.request_address(s, None).unwrap(), ip("10.10.0.4"));
        assert_eq!(ipam.request_address(s, None).unwrap(), ip("10.10.0.6"));
        assert_eq!(
            ipam.request_address(s, Some(ip("10.10.0.5"))),
            Err(IpamError::InUse {
                addr: ip("10.10.0.5")
            })
        );
        assert_eq!(
            ipam.request_address(s, Some(ip("10.10.0.1"))),
            Err(IpamError::InUse {
                addr: ip("10.10.0.1")
            })
        );
        assert_eq!(
            ipam.request_address(s, Some(ip("10.10.1.5"))),
            Err(IpamError::NotInSubnet {
                addr: ip("10.10.1.5"),
                subnet: s
            })
        );
        assert_eq!(
            ipam.request_address(s, Some(ip("10.10.0.255"))),
            Err(IpamError::Reserved {
                addr: ip("10.10.0.255"),
                subnet: s
            })
        );
        ipam.release_address(s, ip("10.10.0.3")).unwrap();
        assert_eq!(ipam.request_address(s, None).unwrap(), ip("10.10.0.3"));
        // The gateway is never released.
        ipam.release_address(s, ip("10.10.0.1")).unwrap();
        assert_eq!(ipam.request_address(s, None).unwrap(), ip("10.10.0.7"));
    }

    #[test]
    fn exhaustion_says_so() {
        let mut ipam = DefaultIpam::new();
        let s = net("10.0.0.0/30");
        ipam.request_pool(&PoolRequest {
            subnet: Some(s),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(ipam.request_address(s, None).unwrap(), ip("10.0.0.2"));
        let err = ipam.request_address(s, None).unwrap_err();
        assert_eq!(err, IpamError::Exhausted { subnet: s });
        assert!(err.to_string().contains("no available addresses"));
        ipam.release_address(s, ip("10.0.0.2")).unwrap();
        assert_eq!(ipam.request_address(s, None).unwrap(), ip("10.0.0.2"));
    }

    #[test]
    fn ip_range_limits_dynamic_only() {
        let mut ipam = DefaultIpam::new();
        let s = net("10.0.0.0/24");
        let req = PoolRequest {
            subnet: Some(s),
            ip_range: Some(net("10.0.0.128/25")),
            ..Default::default()
        };
        ipam.request_pool(&req).unwrap();
        assert_eq!(ipam.request_address(s, None).unwrap(), ip("10.0.0.128"));
        assert_eq!(
            ipam.request_address(s, Some(ip("10.0.0.9"))).unwrap(),
            ip("10.0.0.9")
        );
    }

    #[test]
    fn unknown_pool() {
        let mut ipam = DefaultIpam::new();
        let s = net("10.0.0.0/24");
        assert_eq!(
            ipam.request_address(s, None),
            Err(IpamError::UnknownPool(s))
        );
        assert_eq!(ipam.release_pool(s), Err(IpamError::UnknownPool(s)));
    }
}
