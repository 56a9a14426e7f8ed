//! Operation: create a network (CNM `NewNetwork`), and the pre-defined networks.
//!
//! Steps: validate (name unique under the `networks` lock; a `config_from` network
//! takes its configuration network's settings first, dockerd's rules and messages;
//! driver and IPAM driver known, `Scope` the driver's own, single-instance drivers
//! (configuration networks do not count), IPv6 and IPAM config consistent with the
//! driver, driver options, no MTU under 1280 with IPv6; subnets, ranges, gateways and
//! auxiliary addresses not multicast, loopback, unspecified, link-local or reserved: 400) → reserve the pools, gateways and auxiliary addresses (undo:
//! release) → a global network (see `global`) claims its name and VNI in the cluster
//! store (undo: free them) → the driver's data plane (undo: `delete_network`) → commit
//! the record (a global network's to the cluster store) → publish. A configuration
//! network (`config_only`) is only validated and committed: no pools, no driver.

use super::ipam_steps::{name_overlap, reserve_family, FamilyRequest, IpamTxn};
use super::{Controller, DefaultBridge, Inner, NetworkCreate, NETWORKS_LOCK};
use crate::driver::Driver;
use crate::driver::NetworkRequest;
use crate::error::{Error, Result};
use crate::model::{self, Ipv6Config, Network, Store};
use crate::store::Change;
use crate::txn::{blocking, Txn};
use ipnet::IpNet;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

impl Inner {
    pub(super) async fn create_network(
        &self,
        mut req: NetworkCreate,
        id: Option<String>,
    ) -> Result<String> {
        super::validate_name("network", &req.name)?;
        if let Some(id) = &id {
            model::validate_id("network", id)?;
        }
        check_config_network_fields(&req)?;
        check_address_classes(&req)?;
        let _held = self.locks.acquire([NETWORKS_LOCK.to_string()]).await;
        let store = self.model();
        if store.networks.values().any(|n| n.name == req.name) {
            return Err(Error::Conflict(format!(
                "network with name {} already exists",
                req.name
            )));
        }
        if let Some(id) = id.as_ref().filter(|id| store.networks.contains_key(*id)) {
            return Err(Error::Conflict(format!(
                "network with id {id} already exists"
            )));
        }
        if req.config_only {
            return self.create_config_network(req).await;
        }
        if let Some(from) = req.config_from.clone() {
            apply_config_network(&mut req, &store, &from)?;
        }
        let driver_name = if req.driver.is_empty() {
            "bridge"
        } else {
            req.driver.as_str()
        };
        let ipam_driver = if req.ipam_driver.is_empty() {
            "default"
        } else {
            req.ipam_driver.as_str()
        };
        let driver = self.drivers.get_active(driver_name)?;
        if let Some(scope) = &req.scope {
            let own = driver.capabilities().scope.as_str();
            if scope != own {
                return Err(Error::InvalidRequest(format!(
                    "Scope {scope:?} is not supported for driver {driver_name}: its networks are {own}-scope \
                     (give --scope {own} or leave it out)"
                )));
            }
        }
        self.ipam()
            .check_driver(ipam_driver)
            .map_err(|e| Error::ipam(format!("create network {}", req.name), e))?;
        if driver.capabilities().scope == crate::driver::Scope::Global && driver_name != "overlay" {
            return Err(Error::InvalidRequest(match self.cluster {
                None => format!(
                    "driver {driver_name} has global scope and needs a cluster store (--cluster-store)"
                ),
                Some(_) => format!(
                    "driver {driver_name} has global scope: global remote drivers are not supported (only overlay networks are global)"
                ),
            }));
        }
        if driver.capabilities().single_instance
            && store
                .networks
                .values()
                .any(|n| n.driver == driver_name && !n.config_only)
        {
            return Err(Error::Forbidden(format!(
                "only one instance of \"{driver_name}\" network is allowed"
            )));
        }
        if let Some(v6) = &req.ipv6 {
            if !req.enable_ipv6 {
                return Err(Error::InvalidRequest(format!(
                    "an IPv6 subnet ({}) was given but EnableIPv6 is false: set EnableIPv6 (--ipv6) to use it",
                    v6.subnet
                )));
            }
        }
        let has_ipam_config = req.subnet.is_some()
            || req.gateway.is_some()
            || req.ip_range.is_some()
            || !req.aux_addresses.is_empty()
            || req.ipv6.is_some();
        if !driver.capabilities().needs_addresses && (has_ipam_config || req.enable_ipv6) {
            return Err(Error::InvalidRequest(format!(
                "driver {driver_name} gives endpoints no addresses: drop the IPAM config and EnableIPv6"
            )));
        }
        driver.validate_options(&req.options)?;
        check_ipv6_mtu(&req)?;
        self.check_encryption(driver_name, &req.options)?;
        let network = Network {
            id: id.unwrap_or_else(model::new_id),
            name: req.name.clone(),
            driver: driver_name.to_string(),
            created: model::now_rfc3339(),
            scope: driver.capabilities().scope.as_str().to_string(),
            internal: req.internal,
            attachable: req.attachable,
            enable_ipv6: req.enable_ipv6,
            ipam_driver: ipam_driver.to_string(),
            ipam_options: req.ipam_options.clone(),
            subnet: None,
            gateway: None,
            ip_range: None,
            aux_addresses: BTreeMap::new(),
            ipv4_pool: None,
            ipv6: None,
            options: req.options.clone(),
            labels: req.labels.clone(),
            endpoints: BTreeMap::new(),
            config_only: false,
            config_from: req.config_from.clone(),
        };
        let mut txn = Txn::new(format!("create network {}", network.name));
        let r = self
            .create_network_steps(&mut txn, &req, network, driver, &store)
            .await;
        txn.finish(r).await
    }

    async fn create_network_steps(
        &self,
        txn: &mut Txn,
        req: &NetworkCreate,
        mut network: Network,
        driver: Arc<dyn Driver>,
        store: &Store,
    ) -> Result<String> {
        if driver.capabilities().needs_addresses {
            let taken = {
                let mut ipam = self.ipam();
                let mut tx = IpamTxn::new(ipam.as_mut()).with_driver(&network.ipam_driver);
                reserve_network_pools(&mut tx, req, &mut network)
                    .map_err(|e| name_overlap(e, store))?;
                tx.commit()
            };
            self.undo_ipam(txn, taken);
        }
        let global = self.creates_global(&network.driver, &network.options);
        if global {
            self.claim_global_name_and_vni(txn, &mut network).await?;
        }
        let (d, n) = (Arc::clone(&driver), network.clone());
        blocking("create network", move || {
            d.create_network(&NetworkRequest { network: &n })
        })
        .await?;
        let (d, nid) = (Arc::clone(&driver), network.id.clone());
        txn.on_undo("remove the network's data plane", move || {
            d.delete_network(&nid)
        });
        if global {
            self.create_network_keys(txn, &network, &driver).await?;
            self.commit_global_network(txn, &network).await?;
        } else {
            self.commit(txn, vec![Change::PutNetwork(Box::new(network.clone()))])
                .await?;
        }
        let id = network.id.clone();
        tracing::info!(
            network = %network.name,
            id = %id,
            driver = %network.driver,
            subnet = ?network.subnet,
            subnet_v6 = ?network.ipv6.as_ref().map(|c| c.subnet),
            "network created"
        );
        self.publish(|s| {
            s.networks.insert(id.clone(), network);
        });
        Ok(id)
    }
}

impl Inner {
    /// Create a configuration network (`ConfigOnly`): its record only, under the
    /// `networks` lock the caller holds. Driver `null`, scope `local`; the IPAM
    /// settings are recorded as given (an IPv6 entry without a gateway has `::`),
    /// no pool is taken and no driver is called.
    async fn create_config_network(&self, req: NetworkCreate) -> Result<String> {
        if let Some(v6) = &req.ipv6 {
            if !req.enable_ipv6 {
                return Err(Error::InvalidRequest(format!(
                    "an IPv6 subnet ({}) was given but EnableIPv6 is false: set EnableIPv6 (--ipv6) to use it",
                    v6.subnet
                )));
            }
        }
        if req.enable_ipv6 && req.ipv6.is_none() {
            return Err(Error::InvalidRequest(
                "EnableIPv6 needs an IPv6 subnet: add an IPAM.Config entry with an IPv6 Subnet (--subnet fd00::/64)".into(),
            ));
        }
        let ipam_driver = if req.ipam_driver.is_empty() {
            "default"
        } else {
            req.ipam_driver.as_str()
        };
        if ipam_driver != self.ipam().name() {
            return Err(Error::NotFound(format!(
                "plugin \"{ipam_driver}\" not found"
            )));
        }
        let network = Network {
            id: model::new_id(),
            name: req.name.clone(),
            driver: "null".into(),
            created: model::now_rfc3339(),
            scope: "local".into(),
            enable_ipv6: req.enable_ipv6,
            ipam_driver: ipam_driver.to_string(),
            ipam_options: req.ipam_options.clone(),
            subnet: req.subnet,
            gateway: req.gateway,
            ip_range: req.ip_range,
            aux_addresses: req.aux_addresses.clone(),
            ipv6: req.ipv6.as_ref().map(|r| Ipv6Config {
                subnet: r.subnet,
                gateway: r.gateway.unwrap_or(std::net::Ipv6Addr::UNSPECIFIED),
                ip_range: r.ip_range,
                aux_addresses: r.aux_addresses.clone(),
                pool: String::new(),
            }),
            options: req.options.clone(),
            labels: req.labels.clone(),
            config_only: true,
            ..Network::default()
        };
        let txn = Txn::new(format!("create configuration network {}", network.name));
        let r = self
            .commit(&txn, vec![Change::PutNetwork(Box::new(network.clone()))])
            .await;
        txn.finish(r).await?;
        let id = network.id.clone();
        tracing::info!(network = %network.name, id = %id, "configuration network created");
        self.publish(|s| {
            s.networks.insert(id.clone(), network);
        });
        Ok(id)
    }
}

/// dockerd's rules for `ConfigOnly` and `ConfigFrom` (403, its messages): a
/// configuration network has no operator fields (`Internal`, `Attachable`, `Scope`)
/// and depends on no other one.
fn check_config_network_fields(req: &NetworkCreate) -> Result<()> {
    if req.config_only {
        if req.internal || req.attachable || req.scope.is_some() {
            return Err(Error::Forbidden(
                "configuration network can only contain network specific fields. Network operator \
                 fields like [ ingress | internal | attachable | scope ] are not supported."
                    .into(),
            ));
        }
        if req.config_from.is_some() {
            return Err(Error::Forbidden(
                "a configuration network cannot depend on another configuration network".into(),
            ));
        }
    }
    Ok(())
}

/// Fill `req` from configuration network `from` (dockerd's `applyConfigurationTo`):
/// IPAM driver, options and pools, IPv6, driver options and labels. `from` must be a
/// configuration network (404 as dockerd otherwise), and `req` must set none of
/// those itself (403, dockerd's messages, naming what was given).
fn apply_config_network(req: &mut NetworkCreate, store: &Store, from: &str) -> Result<()> {
    let Some(cfg) = store
        .networks
        .values()
        .find(|n| n.name == from && n.config_only)
    else {
        let why = if store.networks.values().any(|n| n.name == from) {
            format!(
                " (network {from} is not a configuration network: create one with --config-only)"
            )
        } else {
            String::new()
        };
        return Err(Error::NotFound(format!(
            "configuration network {from:?} does not exist{why}"
        )));
    };
    let mut given = Vec::new();
    if !(req.ipam_driver.is_empty() || req.ipam_driver == "default") {
        given.push("IPAM.Driver");
    }
    if req.subnet.is_some() || req.ipv6.is_some() {
        given.push("IPAM.Config");
    }
    if !req.ipam_options.is_empty() {
        given.push("IPAM.Options");
    }
    if req.enable_ipv6 {
        given.push("EnableIPv6");
    }
    if !req.labels.is_empty() {
        given.push("Labels");
    }
    if !given.is_empty() {
        return Err(Error::Forbidden(format!(
            "user specified configurations are not supported if the network depends on a configuration network (given: {})",
            given.join(", ")
        )));
    }
    if !req.options.is_empty() {
        let mut keys: Vec<&str> = req.options.keys().map(String::as_str).collect();
        keys.sort_unstable();
        return Err(Error::Forbidden(format!(
            "network driver options are not supported if the network depends on a configuration network (given: {})",
            keys.join(", ")
        )));
    }
    req.ipam_driver = cfg.ipam_driver.clone();
    req.ipam_options = cfg.ipam_options.clone();
    req.subnet = cfg.subnet;
    req.gateway = cfg.gateway;
    req.ip_range = cfg.ip_range;
    req.aux_addresses = cfg.aux_addresses.clone();
    req.enable_ipv6 = cfg.enable_ipv6;
    req.ipv6 = cfg.ipv6.as_ref().map(|c| super::Ipv6Request {
        subnet: c.subnet,
        gateway: Some(c.gateway).filter(|g| !g.is_unspecified()),
        ip_range: c.ip_range,
        aux_addresses: c.aux_addresses.clone(),
    });
    req.options = cfg.options.clone();
    req.labels = cfg.labels.clone();
    Ok(())
}

/// The smallest MTU IPv6 runs on (RFC 8200 section 5); the kernel refuses IPv6
/// addresses on a smaller link.
pub(super) const IPV6_MIN_MTU: u32 = 1280;

/// An IPv6 network (`EnableIPv6`) with `com.docker.network.driver.mtu` below
/// [`IPV6_MIN_MTU`] could connect nothing (400).
fn check_ipv6_mtu(req: &NetworkCreate) -> Result<()> {
    let Some(v) = req
        .options
        .get(model::MTU_OPTION)
        .filter(|_| req.enable_ipv6)
    else {
        return Ok(());
    };
    let mtu = model::parse_mtu(v)?;
    if mtu < IPV6_MIN_MTU {
        return Err(Error::InvalidRequest(format!(
            "{} {mtu} is too small for IPv6 (EnableIPv6): IPv6 needs an MTU of at least \
             {IPV6_MIN_MTU}; raise the MTU or leave IPv6 off",
            model::MTU_OPTION
        )));
    }
    Ok(())
}

/// The requested subnets, IP ranges, gateways and auxiliary addresses must be
/// ordinary unicast addresses ([`crate::ipam::check_address_class`]): 400 naming the
/// subnet and its class, before anything is reserved.
fn check_address_classes(req: &NetworkCreate) -> Result<()> {
    let mut all: Vec<(&str, IpNet)> = Vec::new();
    all.extend(req.subnet.map(|n| ("subnet", IpNet::V4(n))));
    all.extend(req.ip_range.map(|n| ("IP range", IpNet::V4(n))));
    all.extend(req.gateway.map(|a| ("gateway", IpNet::from(IpAddr::V4(a)))));
    all.extend(
        req.aux_addresses
            .values()
            .map(|a| ("auxiliary address", IpNet::from(IpAddr::V4(*a)))),
    );
    if let Some(r6) = &req.ipv6 {
        all.push(("subnet", IpNet::V6(r6.subnet)));
        all.extend(r6.ip_range.map(|n| ("IP range", IpNet::V6(n))));
        all.extend(r6.gateway.map(|a| ("gateway", IpNet::from(IpAddr::V6(a)))));
        all.extend(
            r6.aux_addresses
                .values()
                .map(|a| ("auxiliary address", IpNet::from(IpAddr::V6(*a)))),
        );
    }
    for (what, net) in all {
        crate::ipam::check_address_class(what, net)
            .map_err(|why| Error::InvalidRequest(format!("network {}: {why}", req.name)))?;
    }
    Ok(())
}

/// Reserve the IPv4 (and IPv6) pools of a new network in `tx` and fill in its record.
fn reserve_network_pools(
    tx: &mut IpamTxn<'_>,
    req: &NetworkCreate,
    network: &mut Network,
) -> Result<()> {
    let v4 = FamilyRequest {
        subnet: req.subnet.map(IpNet::V4),
        gateway: req.gateway.map(IpAddr::V4),
        ip_range: req.ip_range.map(IpNet::V4),
        aux: req
            .aux_addresses
            .iter()
            .map(|(k, v)| (k.clone(), IpAddr::V4(*v)))
            .collect(),
        v6: false,
    };
    let (pool4, gw4) = reserve_family(tx, &req.name, &v4, &req.ipam_options)?;
    // A pool IPAM chose (a default pool, a plugin's) obeys the same rules.
    crate::ipam::check_address_class("subnet", pool4.subnet).map_err(|why| {
        Error::InvalidRequest(format!(
            "network {}: IPAM returned an unusable pool: {why}",
            req.name
        ))
    })?;
    let (IpNet::V4(subnet), IpAddr::V4(gw)) = (pool4.subnet, gw4) else {
        return Err(Error::InvalidRequest(format!(
            "network {}: IPAM returned a non-IPv4 pool for the IPv4 subnet",
            req.name
        )));
    };
    network.subnet = Some(subnet);
    network.gateway = Some(gw);
    network.ip_range = req.ip_range;
    network.aux_addresses = req.aux_addresses.clone();
    network.ipv4_pool = Some(pool4.id);
    if let (None, true) = (&req.ipv6, req.enable_ipv6) {
        // EnableIPv6 without a subnet: a /64 of the IPAM's default IPv6 pool.
        let fam = FamilyRequest {
            subnet: None,
            gateway: None,
            ip_range: None,
            aux: Vec::new(),
            v6: true,
        };
        let (pool6, gw6) = reserve_family(tx, &req.name, &fam, &req.ipam_options)?;
        crate::ipam::check_address_class("IPv6 subnet", pool6.subnet).map_err(|why| {
            Error::InvalidRequest(format!(
                "network {}: IPAM returned an unusable IPv6 pool: {why}",
                req.name
            ))
        })?;
        let (IpNet::V6(subnet), IpAddr::V6(gateway)) = (pool6.subnet, gw6) else {
            return Err(Error::InvalidRequest(format!(
                "network {}: IPAM returned a non-IPv6 pool for the IPv6 subnet",
                req.name
            )));
        };
        network.ipv6 = Some(Ipv6Config {
            subnet,
            gateway,
            ip_range: None,
            aux_addresses: BTreeMap::new(),
            pool: pool6.id,
        });
    }
    if let Some(r6) = &req.ipv6 {
        let fam = FamilyRequest {
            subnet: Some(IpNet::V6(r6.subnet)),
            gateway: r6.gateway.map(IpAddr::V6),
            ip_range: r6.ip_range.map(IpNet::V6),
            aux: r6
                .aux_addresses
                .iter()
                .map(|(k, v)| (k.clone(), IpAddr::V6(*v)))
                .collect(),
            v6: true,
        };
        let (pool6, gw6) = reserve_family(tx, &req.name, &fam, &req.ipam_options)?;
        let IpAddr::V6(gw6) = gw6 else {
            return Err(Error::InvalidRequest(format!(
                "network {}: IPAM returned a non-IPv6 gateway",
                req.name
            )));
        };
        network.ipv6 = Some(Ipv6Config {
            subnet: r6.subnet,
            gateway: gw6,
            ip_range: r6.ip_range,
            aux_addresses: r6.aux_addresses.clone(),
            pool: pool6.id,
        });
    }
    Ok(())
}

/// See [`Controller::ensure_default_networks`].
pub(super) async fn ensure_default_networks(
    ctl: &Controller,
    bridge: &DefaultBridge,
) -> Result<()> {
    for (name, driver) in model::PREDEFINED_NETWORKS {
        if ctl.inner.drivers.get(driver).is_err() {
            tracing::warn!(
                network = name,
                driver,
                "driver not registered; pre-defined network skipped"
            );
            continue;
        }
        let existing = ctl
            .inner
            .model()
            .networks
            .values()
            .find(|n| n.name == name)
            .cloned();
        if let Some(n) = existing {
            let differs = (bridge.subnet.is_some() && bridge.subnet != n.subnet)
                || (bridge.gateway.is_some() && bridge.gateway != n.gateway)
                || (bridge.ip_range.is_some() && bridge.ip_range != n.ip_range);
            if driver == "bridge" && differs {
                tracing::warn!(
                    network = name,
                    subnet = ?n.subnet,
                    gateway = ?n.gateway,
                    ip_range = ?n.ip_range,
                    "the pre-defined bridge network exists already; --bip/--fixed-cidr only apply when it is created"
                );
            }
            continue;
        }
        let mut req = NetworkCreate {
            name: name.to_string(),
            driver: driver.to_string(),
            ..NetworkCreate::default()
        };
        if driver == "bridge" {
            req.subnet = bridge.subnet;
            req.gateway = bridge.gateway;
            req.ip_range = bridge.ip_range;
            req.options.insert(
                "com.docker.network.bridge.default_bridge".into(),
                "true".into(),
            );
        }
        ctl.create_network(req).await.map_err(|e| match e {
            Error::Ipam { op, source } => Error::Ipam {
                op: format!("create pre-defined network {name}: {op}"),
                source,
            },
            other => other,
        })?;
    }
    Ok(())
}
