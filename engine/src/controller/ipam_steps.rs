//! IPAM steps of the controller's operations.
//!
//! Contract: [`IpamTxn`] is the IPAM side of a transaction: every pool and address
//! it takes is remembered and given back, newest first, unless the caller commits
//! (then it returns what it took, so the caller's [`crate::txn::Txn`] can record one
//! compensation that releases it). It holds `&mut dyn Ipam`, i.e. the IPAM lock, only
//! for synchronous work. The functions here reserve a network's pools (gateway,
//! auxiliary addresses) and an endpoint's addresses, and replay a recorded network
//! on restart ([`restore_network_ipam`]).

use super::not_found;
use crate::error::{Error, Result};
use crate::ipam::{gateway_options, Ipam, IpamError, Pool, PoolRequest};
use crate::model::{Endpoint, Ipv6Config, Network, Store};
use ipnet::IpNet;
use std::collections::BTreeMap;
use std::net::IpAddr;

/// Something an [`IpamTxn`] took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Taken {
    /// A pool (releasing it forgets its addresses).
    Pool(String),
    /// An address of a pool.
    Address(String, IpAddr),
}

/// Give back what an IPAM transaction took, newest first (failures logged).
pub fn release(ipam: &mut dyn Ipam, taken: &[Taken]) {
    for t in taken.iter().rev() {
        let r = match t {
            Taken::Pool(id) => ipam.release_pool(id),
            Taken::Address(pool, addr) => ipam.release_address(pool, *addr),
        };
        if let Err(e) = r {
            tracing::warn!(what = ?t, error = %e, "IPAM release");
        }
    }
}

/// The IPAM side of a transaction (see the module doc).
pub struct IpamTxn<'a> {
    ipam: &'a mut dyn Ipam,
    taken: Vec<Taken>,
    /// The IPAM driver pools are requested from (empty: the default).
    driver: String,
}

impl<'a> IpamTxn<'a> {
    /// Start on `ipam`.
    pub fn new(ipam: &'a mut dyn Ipam) -> IpamTxn<'a> {
        IpamTxn {
            ipam,
            taken: Vec::new(),
            driver: String::new(),
        }
    }

    /// Request pools from IPAM driver `driver` (a network's `IPAM.Driver`).
    pub fn with_driver(mut self, driver: &str) -> IpamTxn<'a> {
        self.driver = driver.to_string();
        self
    }

    /// Request a pool (from the transaction's driver); remembered.
    pub fn request_pool(&mut self, req: &PoolRequest) -> std::result::Result<Pool, IpamError> {
        let pool = self.ipam.request_pool_of(&self.driver, req)?;
        self.taken.push(Taken::Pool(pool.id.clone()));
        Ok(pool)
    }

    /// Request an address; remembered.
    pub fn request_address(
        &mut self,
        pool: &str,
        addr: Option<IpAddr>,
        options: &BTreeMap<String, String>,
    ) -> std::result::Result<IpAddr, IpamError> {
        let a = self.ipam.request_address(pool, addr, options)?;
        self.taken.push(Taken::Address(pool.to_string(), a));
        Ok(a)
    }

    /// Keep everything taken; returns it.
    pub fn commit(mut self) -> Vec<Taken> {
        std::mem::take(&mut self.taken)
    }
}

impl Drop for IpamTxn<'_> {
    fn drop(&mut self) {
        release(self.ipam, &self.taken);
    }
}

/// One address family of a network's IPAM configuration, as requested or recorded.
pub(super) struct FamilyRequest {
    pub subnet: Option<IpNet>,
    pub gateway: Option<IpAddr>,
    pub ip_range: Option<IpNet>,
    pub aux: Vec<(String, IpAddr)>,
    pub v6: bool,
}

/// Reserve a pool, its gateway and auxiliary addresses in `tx`. Errors name the
/// network and the field.
pub(super) fn reserve_family(
    tx: &mut IpamTxn<'_>,
    network: &str,
    req: &FamilyRequest,
    options: &BTreeMap<String, String>,
) -> Result<(Pool, IpAddr)> {
    let pool = tx
        .request_pool(&PoolRequest {
            subnet: req.subnet,
            ip_range: req.ip_range,
            v6: req.v6,
            options: options.clone(),
        })
        .map_err(|e| Error::ipam(format!("network {network}"), e))?;
    let gateway = tx
        .request_address(&pool.id, req.gateway, &gateway_options())
        .and_then(|gw| match pool.subnet.contains(&gw) {
            true => Ok(gw),
            false => Err(IpamError::NotInSubnet {
                addr: gw,
                subnet: pool.subnet,
            }),
        })
        .map_err(|e| match e {
            IpamError::NotInSubnet { .. } | IpamError::Reserved { .. } => {
                Error::InvalidRequest(format!("network {network}: invalid gateway: {e}"))
            }
            e => Error::ipam(format!("network {network}: reserve gateway"), e),
        })?;
    for (name, addr) in &req.aux {
        tx.request_address(&pool.id, Some(*addr), &BTreeMap::new())
            .map_err(|e| match e {
                IpamError::NotInSubnet { .. } | IpamError::Reserved { .. } => {
                    Error::InvalidRequest(format!(
                        "network {network}: invalid auxiliary address {name}={addr}: {e}"
                    ))
                }
                e => Error::ipam(
                    format!("network {network}: reserve auxiliary address {name}={addr}"),
                    e,
                ),
            })?;
    }
    Ok((pool, gateway))
}

pub(super) fn v4_family(net: &Network) -> Option<FamilyRequest> {
    net.subnet.map(|subnet| FamilyRequest {
        subnet: Some(IpNet::V4(subnet)),
        gateway: net.gateway.map(IpAddr::V4),
        ip_range: net.ip_range.map(IpNet::V4),
        aux: net
            .aux_addresses
            .iter()
            .map(|(k, v)| (k.clone(), IpAddr::V4(*v)))
            .collect(),
        v6: false,
    })
}

pub(super) fn v6_family(v6: &Ipv6Config) -> FamilyRequest {
    FamilyRequest {
        subnet: Some(IpNet::V6(v6.subnet)),
        gateway: Some(IpAddr::V6(v6.gateway)),
        ip_range: v6.ip_range.map(IpNet::V6),
        aux: v6
            .aux_addresses
            .iter()
            .map(|(k, v)| (k.clone(), IpAddr::V6(*v)))
            .collect(),
        v6: true,
    }
}

/// Replay one recorded network into `ipam` (daemon restart): its pools, gateways,
/// auxiliary addresses and every endpoint's addresses, as static requests. Updates the
/// record's pool ids. If a pool, gateway or auxiliary address cannot be reserved,
/// the error is returned and nothing of this network stays reserved. An endpoint
/// whose addresses cannot be reserved (e.g. an address now outside the subnet) is
/// taken out of `net.endpoints`, with nothing of it reserved, and returned with the
/// reason; the rest of the network is restored.
pub fn restore_network_ipam(
    ipam: &mut dyn Ipam,
    net: &mut Network,
) -> Result<Vec<(Endpoint, Error)>> {
    if ipam.keeps_own_state(&net.ipam_driver) {
        // An IPAM plugin: it kept its pools and addresses.
        return Ok(Vec::new());
    }
    {
        let mut tx = IpamTxn::new(ipam);
        let mut v4_pool = None;
        let mut v6_pool = None;
        if let Some(fam) = v4_family(net) {
            v4_pool = Some(
                reserve_family(&mut tx, &net.name, &fam, &net.ipam_options)?
                    .0
                    .id,
            );
        }
        if let Some(v6) = &net.ipv6 {
            v6_pool = Some(
                reserve_family(&mut tx, &net.name, &v6_family(v6), &net.ipam_options)?
                    .0
                    .id,
            );
        }
        tx.commit();
        if v4_pool.is_some() {
            net.ipv4_pool = v4_pool;
        }
        if let (Some(c), Some(id)) = (net.ipv6.as_mut(), v6_pool) {
            c.pool = id;
        }
    }
    let mut dropped = Vec::new();
    let ids: Vec<String> = net.endpoints.keys().cloned().collect();
    for id in ids {
        let Some(ep) = net.endpoints.get(&id) else {
            continue;
        };
        let mut tx = IpamTxn::new(ipam);
        match reserve_endpoint_addresses(&mut tx, net, ep) {
            Ok(()) => {
                tx.commit();
            }
            Err(e) => {
                drop(tx);
                if let Some(ep) = net.endpoints.remove(&id) {
                    dropped.push((ep, e));
                }
            }
        }
    }
    Ok(dropped)
}

/// Reserve a recorded endpoint's IPv4 and IPv6 addresses (static requests) in `tx`.
pub(super) fn reserve_endpoint_addresses(
    tx: &mut IpamTxn<'_>,
    net: &Network,
    ep: &Endpoint,
) -> Result<()> {
    let none = BTreeMap::new();
    let addrs = [
        v4_pool(net).zip(ep.ipv4.map(IpAddr::V4)),
        v6_pool(net).zip(ep.ipv6.map(IpAddr::V6)),
    ];
    for (pool, addr) in addrs.into_iter().flatten() {
        tx.request_address(&pool, Some(addr), &none)
            .map_err(|e| Error::ipam(format!("restore endpoint {} ({addr})", ep.id), e))?;
    }
    Ok(())
}

/// The pool id of a network's IPv4 subnet (recorded, or the default driver's).
pub(super) fn v4_pool(net: &Network) -> Option<String> {
    net.ipv4_pool.clone().or_else(|| {
        net.subnet
            .map(|s| crate::ipam::local_pool_id(&IpNet::V4(s)))
    })
}

/// The pool id of a network's IPv6 subnet.
pub(super) fn v6_pool(net: &Network) -> Option<String> {
    net.ipv6.as_ref().map(|c| {
        if c.pool.is_empty() {
            crate::ipam::local_pool_id(&IpNet::V6(c.subnet))
        } else {
            c.pool.clone()
        }
    })
}

/// What a network's records hold in IPAM: its pools (and, in a plugin's pools,
/// which forget nothing by themselves, the gateway and auxiliary addresses, released
/// before their pool).
pub(super) fn network_pools(net: &Network) -> Vec<Taken> {
    let mut taken = Vec::new();
    if let Some(pool) = v4_pool(net) {
        taken.push(Taken::Pool(pool.clone()));
        if crate::remote::ipam::is_plugin_pool(&pool) {
            let addrs = net
                .gateway
                .into_iter()
                .chain(net.aux_addresses.values().copied());
            taken.extend(addrs.map(|a| Taken::Address(pool.clone(), IpAddr::V4(a))));
        }
    }
    if let (Some(pool), Some(c)) = (v6_pool(net), &net.ipv6) {
        taken.push(Taken::Pool(pool.clone()));
        if crate::remote::ipam::is_plugin_pool(&pool) {
            let addrs = std::iter::once(c.gateway).chain(c.aux_addresses.values().copied());
            taken.extend(addrs.map(|a| Taken::Address(pool.clone(), IpAddr::V6(a))));
        }
    }
    taken
}

/// What an endpoint holds in IPAM: its addresses.
pub(super) fn endpoint_addresses(net: &Network, ep: &Endpoint) -> Vec<Taken> {
    [
        v4_pool(net).zip(ep.ipv4.map(IpAddr::V4)),
        v6_pool(net).zip(ep.ipv6.map(IpAddr::V6)),
    ]
    .into_iter()
    .flatten()
    .map(|(p, a)| Taken::Address(p, a))
    .collect()
}

/// Name the other network in a pool-overlap error (409).
pub(super) fn name_overlap(e: Error, store: &Store) -> Error {
    let Error::Ipam {
        op,
        source: IpamError::Overlap { subnet, other },
    } = e
    else {
        return e;
    };
    let owner = store.networks.values().find(|n| {
        // A configuration network took no pool.
        !n.config_only
            && (n.subnet.map(IpNet::V4) == Some(other)
                || n.ipv6.as_ref().map(|c| IpNet::V6(c.subnet)) == Some(other))
    });
    match owner {
        Some(n) => Error::Conflict(format!(
            "{op}: subnet {subnet} overlaps with subnet {other} of network {} (Pool overlaps with other one on this address space)",
            n.name
        )),
        None => Error::ipam(op, IpamError::Overlap { subnet, other }),
    }
}

/// A network by id from a snapshot.
pub(super) fn network_in<'a>(store: &'a Store, id: &str, what: &str) -> Result<&'a Network> {
    store
        .networks
        .get(id)
        .ok_or_else(|| not_found("network", what))
}
