//! Network drivers (CNM `Driver`) and their name-based registry.
//!
//! Contract: a [`Driver`] owns the data-plane side of its networks. The
//! [`crate::controller::Controller`] keeps the model (names, ids, addresses) and
//! calls the driver, always from a blocking thread (never a tokio worker), with the
//! CNM lifecycle: [`Driver::create_network`] → [`Driver::create_endpoint`] →
//! [`Driver::join`] → [`Driver::leave`] → [`Driver::delete_endpoint`] →
//! [`Driver::delete_network`]. Calls for one network are never concurrent (the
//! controller serializes mutations), except [`Driver::restore_endpoint`] during start,
//! which may run for many endpoints at once. A driver call that fails leaves nothing
//! behind.
//!
//! Drivers: `bridge` (a userspace switch, a tap per endpoint), `null` (endpoints get
//! no device: the sandbox keeps only loopback) and `host` (endpoints share the daemon
//! host's namespace: no device, no address). A driver without addresses
//! ([`Driver::has_addresses`] false) gets no IPAM pool and its endpoints no address; a
//! [`Driver::single_instance`] driver may back only one network (Docker: "only one
//! instance of "host" network is allowed"). `overlay`, `macvlan` and `remote` fit the
//! same trait (a driver that has no switch returns empty reports).

pub mod bridge;
pub mod record;

use crate::error::{Error, Result};
use crate::model::{Endpoint, Network};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use tapnet_nat::{NameRecord, Proto, PublishSpec};
use tapnet_sandbox::netns::Netns;
use tapnet_switch::core::{MacAddr, PortId};
use tapnet_switch::runtime::PortStatsSnapshot;

/// Counters of one port, as a driver reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortReport {
    /// The endpoint behind the port.
    pub endpoint_id: String,
    /// The switch port id.
    pub port: PortId,
    /// Its counters.
    pub stats: PortStatsSnapshot,
}

/// Counters of one network.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkReport {
    /// Learned MACs.
    pub fdb_entries: usize,
    /// MACs not learned because the FDB was full.
    pub fdb_limit_hits: u64,
    /// Per-port counters.
    pub ports: Vec<PortReport>,
    /// The gateway's counters (networks with a userspace gateway).
    pub gateway: Option<tapnet_nat::StatsSnapshot>,
    /// The switch's counters of the gateway's port (bridge networks).
    pub gateway_port: Option<PortReport>,
}

/// One FDB entry with its endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct FdbRow {
    /// Learned MAC.
    pub mac: MacAddr,
    /// Port it was learned on.
    pub port: PortId,
    /// The endpoint behind that port, if it is an endpoint's port.
    pub endpoint_id: Option<String>,
    /// Seconds since the MAC was last seen.
    pub age_seconds: f64,
}

/// How [`Driver::restore_endpoint`] brought an endpoint back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restored {
    /// The endpoint's interface was still there and was re-attached.
    Reopened,
    /// The interface was gone and was re-created from the stored record.
    Recreated,
}

/// A network driver. See the module doc for the calling contract.
pub trait Driver: Send + Sync {
    /// The driver's name (`bridge`).
    fn name(&self) -> &str;
    /// `local` or `global`.
    fn scope(&self) -> &'static str {
        "local"
    }
    /// Whether the driver's endpoints get IP addresses (and its networks an IPAM pool).
    fn has_addresses(&self) -> bool {
        true
    }
    /// Whether at most one network may use this driver.
    fn single_instance(&self) -> bool {
        false
    }
    /// Check driver options of a network about to be created. No side effects.
    fn validate_options(&self, options: &BTreeMap<String, String>) -> Result<()> {
        let _ = options;
        Ok(())
    }
    /// Create the data-plane side of `network`.
    fn create_network(&self, network: &Network) -> Result<()>;
    /// Remove the data-plane side of a network (it has no endpoints left).
    fn delete_network(&self, network_id: &str) -> Result<()>;
    /// Prepare an endpoint before it joins a sandbox (default: nothing to do).
    fn create_endpoint(&self, network: &Network, endpoint: &Endpoint) -> Result<()> {
        let _ = (network, endpoint);
        Ok(())
    }
    /// Give the endpoint an interface inside the sandbox and attach it to the
    /// network's data plane. Returns the interface name (empty: no device).
    fn join(
        &self,
        network: &Network,
        endpoint: &Endpoint,
        sandbox: &Netns,
        sandbox_name: &str,
    ) -> Result<String>;
    /// Daemon restart: re-attach a stored endpoint that joined `sandbox` before the
    /// restart (its interface normally still exists), or re-create its interface from
    /// the record if it is gone. Called after [`Driver::create_network`] for its
    /// network, possibly concurrently for different endpoints. On failure nothing of
    /// the endpoint is attached (the caller drops the endpoint).
    fn restore_endpoint(
        &self,
        network: &Network,
        endpoint: &Endpoint,
        sandbox: &Netns,
        sandbox_name: &str,
    ) -> Result<Restored> {
        let _ = (network, endpoint, sandbox, sandbox_name);
        Ok(Restored::Reopened)
    }
    /// Detach the endpoint and remove its interface from the sandbox.
    fn leave(&self, network_id: &str, endpoint_id: &str) -> Result<()>;
    /// Forget an endpoint that has left (default: nothing to do).
    fn delete_endpoint(&self, network_id: &str, endpoint_id: &str) -> Result<()> {
        let _ = (network_id, endpoint_id);
        Ok(())
    }
    /// Whether the driver's networks have a gateway that serves DNS names and
    /// published ports ([`Driver::set_names`], [`Driver::publish`]).
    fn has_gateway(&self) -> bool {
        false
    }
    /// Replace the names the network's embedded DNS answers (default: no DNS).
    fn set_names(&self, network_id: &str, names: Vec<NameRecord>) -> Result<()> {
        let _ = (network_id, names);
        Ok(())
    }
    /// Publish a host port into the network; returns the bound host address.
    fn publish(&self, network_id: &str, spec: PublishSpec) -> Result<SocketAddr> {
        let _ = (network_id, spec);
        Err(Error::InvalidRequest(format!(
            "driver {} cannot publish ports",
            self.name()
        )))
    }
    /// Stop publishing the host port bound at `addr`.
    fn unpublish(&self, network_id: &str, proto: Proto, addr: SocketAddr) -> Result<()> {
        let _ = (network_id, proto, addr);
        Ok(())
    }
    /// Counters of a network.
    fn report(&self, network_id: &str) -> Result<NetworkReport> {
        let _ = network_id;
        Ok(NetworkReport::default())
    }
    /// The network's forwarding table.
    fn fdb(&self, network_id: &str) -> Result<Vec<FdbRow>> {
        let _ = network_id;
        Ok(Vec::new())
    }
    /// Stop the driver's data plane, leaving interfaces in place (daemon exit).
    fn shutdown(&self) {}
}

/// Drivers by name.
#[derive(Clone, Default)]
pub struct DriverRegistry {
    drivers: BTreeMap<String, Arc<dyn Driver>>,
}

impl DriverRegistry {
    /// An empty registry.
    pub fn new() -> DriverRegistry {
        DriverRegistry::default()
    }
    /// Register `driver` under its name (replacing any driver of that name).
    pub fn register(&mut self, driver: Arc<dyn Driver>) {
        self.drivers.insert(driver.name().to_string(), driver);
    }
    /// The driver called `name`, or a 404 "plugin not found" error as Docker gives.
    pub fn get(&self, name: &str) -> Result<Arc<dyn Driver>> {
        self.drivers
            .get(name)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("plugin \"{name}\" not found")))
    }
    /// Every registered driver.
    pub fn all(&self) -> impl Iterator<Item = &Arc<dyn Driver>> {
        self.drivers.values()
    }
}

impl std::fmt::Debug for DriverRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.drivers.keys()).finish()
    }
}
