//! Operation: create a network (CNM `NewNetwork`), and the pre-defined networks.
//!
//! Steps: validate (name unique under the `networks` lock, driver and IPAM driver
//! known, single-instance drivers, IPv6 and IPAM config consistent with the driver,
//! driver options) → reserve the pools, gateways and auxiliary addresses (undo:
//! release) → a global network (see `global`) claims its name and VNI in the cluster
//! store (undo: free them) → the driver's data plane (undo: `delete_network`) → commit
//! the record (a global network's to the cluster store) → publish.

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
        req: NetworkCreate,
        id: Option<String>,
    ) -> Result<String> {
        super::validate_name("network", &req.name)?;
        if let Some(id) = &id {
            model::validate_id("network", id)?;
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
        let driver = self.drivers.get(driver_name)?;
        if ipam_driver != self.ipam().name() {
            return Err(Error::NotFound(format!(
                "plugin \"{ipam_driver}\" not found"
            )));
        }
        if driver.capabilities().single_instance
            && store.networks.values().any(|n| n.driver == driver_name)
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
        if driver.capabilities().needs_addresses && req.enable_ipv6 && req.ipv6.is_none() {
            return Err(Error::InvalidRequest(
                "EnableIPv6 needs an IPv6 subnet: add an IPAM.Config entry with an IPv6 Subnet (--subnet fd00::/64)".into(),
            ));
        }
        driver.validate_options(&req.options)?;
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
                let mut tx = IpamTxn::new(ipam.as_mut());
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
