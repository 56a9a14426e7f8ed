//! The CNM `NetworkController`.
//!
//! Contract: [`Controller`] owns the drivers, the IPAM, the [`Store`] and the open
//! sandbox namespaces. Every mutation holds one async mutex for its whole duration
//! (mutations are serialized; reads take a snapshot). Blocking OS work (namespaces,
//! taps, datapath calls, database commits) runs on `spawn_blocking`, never on a tokio
//! worker. Each operation either completes or fails leaving the model, IPAM and data
//! plane as they were (every step that fails undoes the steps before it).
//!
//! Networks: a driver with addresses gets an IPv4 pool from IPAM, its gateway and
//! auxiliary addresses reserved in it, and with `EnableIPv6` an IPv6 pool likewise;
//! `null`/`host` networks get none, and at most one network of each. The pre-defined
//! networks (`none`, `host`, `bridge`) are made by [`Controller::ensure_default_networks`]
//! through the ordinary create path (so they are persisted like any network), only
//! if absent, and cannot be removed (403).
//! Endpoints: connect = allocate addresses → `create_endpoint` → `join` → the sandbox
//! layer applies the driver's description ([`SandboxLayer::connect`]); a failure
//! at any step releases what the earlier steps took and records nothing. The IPAM
//! state is a function of the records: [`restore_network_ipam`] replays one network
//! (the one replay used by [`Controller::restore`]).
//!
//! Persistence: with a database ([`Controller::with_db`]) every mutation ends in
//! exactly one [`Db::commit`], made after the OS work succeeded; if the commit fails
//! the OS work is undone (where it can be: a destroyed namespace cannot come back, so
//! a failed commit of a sandbox removal leaves the record, and the next start cleans
//! it up as a sandbox whose namespace is gone). The in-memory model changes only
//! after the commit. [`Controller::restore`] rebuilds everything from the database
//! on start (see its doc).

use crate::driver::{Driver, DriverRegistry, FdbRow, NetworkReport, NetworkRequest, Restored};
use crate::error::{Error, Result};
use crate::ipam::{gateway_options, Ipam, IpamError, Pool, PoolRequest};
use crate::model::{self, Endpoint, Ipv6Config, Network, Sandbox, Store};
use crate::ports::{self, PortBinding};
use crate::sandbox_files;
use crate::sandbox_layer::SandboxLayer;
use crate::store::{Change, Db};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tapnet_sandbox::netns::Netns;
use tokio::sync::Mutex;

/// A validated request to create a network.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkCreate {
    /// Unique name.
    pub name: String,
    /// Driver name (`bridge` if empty).
    pub driver: String,
    /// IPAM driver name (`default` if empty).
    pub ipam_driver: String,
    /// IPAM driver options.
    pub ipam_options: BTreeMap<String, String>,
    /// Requested subnet.
    pub subnet: Option<Ipv4Net>,
    /// Requested gateway.
    pub gateway: Option<Ipv4Addr>,
    /// Requested dynamic range.
    pub ip_range: Option<Ipv4Net>,
    /// IPv4 auxiliary addresses (reserved, never handed out).
    pub aux_addresses: BTreeMap<String, Ipv4Addr>,
    /// The IPv6 pool, when `enable_ipv6`.
    pub ipv6: Option<Ipv6Request>,
    /// Driver options.
    pub options: BTreeMap<String, String>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// No outside connectivity.
    pub internal: bool,
    /// Attachable.
    pub attachable: bool,
    /// IPv6 requested.
    pub enable_ipv6: bool,
}

/// The IPv6 part of a [`NetworkCreate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ipv6Request {
    /// The IPv6 subnet.
    pub subnet: Ipv6Net,
    /// Requested gateway (default: the first address after the network address).
    pub gateway: Option<Ipv6Addr>,
    /// Requested dynamic range.
    pub ip_range: Option<Ipv6Net>,
    /// Auxiliary addresses.
    pub aux_addresses: BTreeMap<String, Ipv6Addr>,
}

/// What a connect request asks for beyond "join this sandbox to this network"
/// (Docker's `EndpointConfig`): static addresses, the MAC and aliases. The one
/// options type of [`Controller::connect`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectOptions {
    /// Static IPv4 address (`EndpointConfig.IPAMConfig.IPv4Address`).
    pub ipv4: Option<Ipv4Addr>,
    /// Static IPv6 address (`EndpointConfig.IPAMConfig.IPv6Address`).
    pub ipv6: Option<Ipv6Addr>,
    /// The tap's MAC (`EndpointConfig.MacAddress`; already checked: unicast, not
    /// zero). Default `02:42:<IPv4>`, or a random `02:42:…` without IPv4.
    pub mac: Option<[u8; 6]>,
    /// Network-scoped aliases (`EndpointConfig.Aliases`), in request order.
    pub aliases: Vec<String>,
}

/// The default `bridge` network's settings (dockerd's `--bip`, `--fixed-cidr`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DefaultBridge {
    /// Subnet (from `--bip`, else `--fixed-cidr`, else the first free default pool).
    pub subnet: Option<Ipv4Net>,
    /// Gateway (the address part of `--bip`).
    pub gateway: Option<Ipv4Addr>,
    /// Dynamic range (`--fixed-cidr`).
    pub ip_range: Option<Ipv4Net>,
}

impl DefaultBridge {
    /// From dockerd-style `--bip ADDR/LEN` and `--fixed-cidr CIDR`.
    pub fn from_flags(bip: Option<Ipv4Net>, fixed_cidr: Option<Ipv4Net>) -> DefaultBridge {
        let subnet = bip.map(|b| b.trunc()).or(fixed_cidr);
        DefaultBridge {
            subnet,
            gateway: bip.map(|b| b.addr()),
            ip_range: fixed_cidr,
        }
    }
}

/// One address family of a network's IPAM configuration, as requested or recorded.
struct FamilyRequest {
    subnet: Option<IpNet>,
    gateway: Option<IpAddr>,
    ip_range: Option<IpNet>,
    aux: Vec<(String, IpAddr)>,
    v6: bool,
}

/// Reserve a pool, its gateway and auxiliary addresses; on any failure release the
/// pool again (which forgets its addresses). Errors name the network and the field.
fn reserve_family(
    ipam: &mut dyn Ipam,
    network: &str,
    req: &FamilyRequest,
    options: &BTreeMap<String, String>,
) -> Result<(Pool, IpAddr)> {
    let pool = ipam
        .request_pool(&PoolRequest {
            subnet: req.subnet,
            ip_range: req.ip_range,
            v6: req.v6,
            options: options.clone(),
        })
        .map_err(|e| Error::ipam(format!("network {network}"), e))?;
    let reserved = (|| {
        let gateway = ipam
            .request_address(&pool.id, req.gateway, &gateway_options())
            .map_err(|e| match e {
                IpamError::NotInSubnet { .. } | IpamError::Reserved { .. } => {
                    Error::InvalidRequest(format!("network {network}: invalid gateway: {e}"))
                }
                e => Error::ipam(format!("network {network}: reserve gateway"), e),
            })?;
        for (name, addr) in &req.aux {
            ipam.request_address(&pool.id, Some(*addr), &BTreeMap::new())
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
        Ok(gateway)
    })();
    match reserved {
        Ok(gateway) => Ok((pool, gateway)),
        Err(e) => {
            if let Err(r) = ipam.release_pool(&pool.id) {
                tracing::warn!(error = %r, "releasing pool after a failed reservation");
            }
            Err(e)
        }
    }
}

fn v4_family(net: &Network) -> Option<FamilyRequest> {
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

fn v6_family(v6: &Ipv6Config) -> FamilyRequest {
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
    let mut taken: Vec<String> = Vec::new();
    let pools = (|| {
        if let Some(fam) = v4_family(net) {
            let (pool, _) = reserve_family(ipam, &net.name, &fam, &net.ipam_options)?;
            taken.push(pool.id.clone());
            net.ipv4_pool = Some(pool.id);
        }
        if let Some(v6) = net.ipv6.clone() {
            let (pool, _) = reserve_family(ipam, &net.name, &v6_family(&v6), &net.ipam_options)?;
            taken.push(pool.id.clone());
            if let Some(c) = net.ipv6.as_mut() {
                c.pool = pool.id;
            }
        }
        Ok(())
    })();
    if let Err(e) = pools {
        for id in taken {
            let _ = ipam.release_pool(&id);
        }
        return Err(e);
    }
    let mut dropped = Vec::new();
    let ids: Vec<String> = net.endpoints.keys().cloned().collect();
    for id in ids {
        let Some(ep) = net.endpoints.get(&id) else {
            continue;
        };
        if let Err(e) = reserve_endpoint_addresses(ipam, net, ep) {
            if let Some(ep) = net.endpoints.remove(&id) {
                dropped.push((ep, e));
            }
        }
    }
    Ok(dropped)
}

/// Reserve a recorded endpoint's IPv4 and IPv6 addresses (static requests); on
/// failure nothing of it stays reserved.
fn reserve_endpoint_addresses(ipam: &mut dyn Ipam, net: &Network, ep: &Endpoint) -> Result<()> {
    let none = BTreeMap::new();
    let mut done: Vec<(String, IpAddr)> = Vec::new();
    let addrs = [
        v4_pool(net).zip(ep.ipv4.map(IpAddr::V4)),
        v6_pool(net).zip(ep.ipv6.map(IpAddr::V6)),
    ];
    for (pool, addr) in addrs.into_iter().flatten() {
        if let Err(e) = ipam.request_address(&pool, Some(addr), &none) {
            for (p, a) in done {
                let _ = ipam.release_address(&p, a);
            }
            return Err(Error::ipam(
                format!("restore endpoint {} ({addr})", ep.id),
                e,
            ));
        }
        done.push((pool, addr));
    }
    Ok(())
}

/// The pool id of a network's IPv4 subnet (recorded, or the default driver's).
fn v4_pool(net: &Network) -> Option<String> {
    net.ipv4_pool.clone().or_else(|| {
        net.subnet
            .map(|s| crate::ipam::local_pool_id(&IpNet::V4(s)))
    })
}

/// The pool id of a network's IPv6 subnet.
fn v6_pool(net: &Network) -> Option<String> {
    net.ipv6.as_ref().map(|c| {
        if c.pool.is_empty() {
            crate::ipam::local_pool_id(&IpNet::V6(c.subnet))
        } else {
            c.pool.clone()
        }
    })
}

fn release_network_pools(ipam: &mut dyn Ipam, net: &Network) {
    for id in [v4_pool(net), v6_pool(net)].into_iter().flatten() {
        if let Err(e) = ipam.release_pool(&id) {
            tracing::warn!(network = %net.name, error = %e, "releasing pool");
        }
    }
}

/// The MAC of a new endpoint: none without a device (`null`, `host`); else the
/// requested one, else `02:42:<IPv4>`, else (IPv6-only) a random `02:42:…` address
/// not used on the network.
fn default_mac(
    driver: &dyn Driver,
    requested: Option<[u8; 6]>,
    ipv4: Option<Ipv4Addr>,
    net: &Network,
) -> Option<[u8; 6]> {
    if !driver.capabilities().needs_addresses {
        return None;
    }
    if let Some(mac) = requested.or_else(|| ipv4.map(model::mac_for)) {
        return Some(mac);
    }
    loop {
        let mut mac = [0x02, 0x42, 0, 0, 0, 0];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut mac[2..]);
        if !net.endpoints.values().any(|e| e.mac == Some(mac)) {
            return Some(mac);
        }
    }
}

/// Check an object name as Docker does: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`.
pub fn validate_name(kind: &str, name: &str) -> Result<()> {
    let mut chars = name.chars();
    let ok = match chars.next() {
        Some(c) if c.is_ascii_alphanumeric() => {
            chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        }
        _ => false,
    };
    if !ok || name.len() > 128 {
        return Err(Error::InvalidRequest(format!(
            "invalid {kind} name {name:?}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed (at most 128 characters)"
        )));
    }
    Ok(())
}

/// Run blocking work off the async runtime.
async fn blocking<T: Send + 'static>(
    op: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Task {
            op: op.to_string(),
            message: e.to_string(),
        })?
}

struct State {
    store: Store,
    ipam: Box<dyn Ipam>,
    /// Open namespaces by sandbox id.
    netns: HashMap<String, Arc<Netns>>,
}

/// The network controller (see the module doc).
pub struct Controller {
    drivers: DriverRegistry,
    exec_root: PathBuf,
    /// The database; `None`: in memory only (unit tests).
    db: Option<Arc<Db>>,
    /// The host's nameservers: a sandbox's resolv.conf before it joins a bridge network.
    nameservers: Vec<IpAddr>,
    state: Mutex<State>,
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller")
            .field("drivers", &self.drivers)
            .field("exec_root", &self.exec_root)
            .finish_non_exhaustive()
    }
}

impl Controller {
    /// A controller with these drivers and IPAM; namespaces it creates go under
    /// `<exec_root>/netns`.
    /// Nothing is persisted (see [`Controller::with_db`]).
    pub fn new(drivers: DriverRegistry, ipam: Box<dyn Ipam>, exec_root: &Path) -> Controller {
        Controller {
            drivers,
            exec_root: exec_root.to_path_buf(),
            db: None,
            nameservers: Vec::new(),
            state: Mutex::new(State {
                store: Store::default(),
                ipam,
                netns: HashMap::new(),
            }),
        }
    }

    /// Use `nameservers` in the resolv.conf of sandboxes not on a bridge network.
    pub fn with_nameservers(mut self, nameservers: Vec<IpAddr>) -> Controller {
        self.nameservers = nameservers;
        self
    }

    /// A controller that records every mutation in `db`. Call
    /// [`Controller::restore`] before serving.
    pub fn with_db(
        drivers: DriverRegistry,
        ipam: Box<dyn Ipam>,
        exec_root: &Path,
        db: Db,
    ) -> Controller {
        let mut c = Controller::new(drivers, ipam, exec_root);
        c.db = Some(Arc::new(db));
        c
    }

    /// Commit `changes` in one transaction (no-op without a database).
    async fn commit(&self, op: &str, changes: Vec<Change>) -> Result<()> {
        let Some(db) = self.db.clone() else {
            return Ok(());
        };
        let op = op.to_string();
        blocking("commit", move || {
            db.commit(&changes).map_err(|e| Error::store(op, e))
        })
        .await
    }

    /// A copy of the model (for reads).
    pub async fn snapshot(&self) -> Store {
        self.state.lock().await.store.clone()
    }

    /// Resolve a network and return a copy of it.
    pub async fn network(&self, what: &str) -> Result<Network> {
        let st = self.state.lock().await;
        let id = st.store.resolve_network(what)?;
        st.store
            .networks
            .get(&id)
            .cloned()
            .ok_or_else(|| not_found("network", what))
    }

    /// Resolve a sandbox and return a copy of it.
    pub async fn sandbox(&self, what: &str) -> Result<Sandbox> {
        let st = self.state.lock().await;
        let id = st.store.resolve_sandbox(what)?;
        st.store
            .sandboxes
            .get(&id)
            .cloned()
            .ok_or_else(|| not_found("sandbox", what))
    }

    /// Create a network (CNM `NewNetwork`). Returns its id.
    pub async fn create_network(&self, req: NetworkCreate) -> Result<String> {
        validate_name("network", &req.name)?;
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
        let mut st = self.state.lock().await;
        if st.store.networks.values().any(|n| n.name == req.name) {
            return Err(Error::Conflict(format!(
                "network with name {} already exists",
                req.name
            )));
        }
        let driver = self.drivers.get(driver_name)?;
        if ipam_driver != st.ipam.name() {
            return Err(Error::NotFound(format!(
                "plugin \"{ipam_driver}\" not found"
            )));
        }
        if driver.capabilities().single_instance
            && st.store.networks.values().any(|n| n.driver == driver_name)
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
        let mut network = Network {
            id: model::new_id(),
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
        if driver.capabilities().needs_addresses {
            self.reserve_network_pools(&mut st, &req, &mut network)?;
        }
        let (d, n) = (Arc::clone(&driver), network.clone());
        if let Err(e) = blocking("create network", move || {
            d.create_network(&NetworkRequest { network: &n })
        })
        .await
        {
            release_network_pools(st.ipam.as_mut(), &network);
            return Err(e);
        }
        let op = format!("create network {}", network.name);
        if let Err(e) = self
            .commit(&op, vec![Change::PutNetwork(Box::new(network.clone()))])
            .await
        {
            let (d, nid) = (Arc::clone(&driver), network.id.clone());
            if let Err(undo) = blocking("undo create network", move || d.delete_network(&nid)).await
            {
                tracing::warn!(error = %undo, "undoing network creation after a failed commit");
            }
            release_network_pools(st.ipam.as_mut(), &network);
            return Err(e);
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
        st.store.networks.insert(id.clone(), network);
        Ok(id)
    }

    /// Reserve the IPv4 (and IPv6) pools of a new network and fill in its record.
    /// On failure nothing stays reserved.
    fn reserve_network_pools(
        &self,
        st: &mut State,
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
        let (pool4, gw4) = reserve_family(st.ipam.as_mut(), &req.name, &v4, &req.ipam_options)
            .map_err(|e| name_overlap(e, &st.store))?;
        let (IpNet::V4(subnet), IpAddr::V4(gw)) = (pool4.subnet, gw4) else {
            let _ = st.ipam.release_pool(&pool4.id);
            return Err(Error::InvalidRequest(format!(
                "network {}: IPAM returned a non-IPv4 pool for the IPv4 subnet",
                req.name
            )));
        };
        network.subnet = Some(subnet);
        network.gateway = Some(gw);
        network.ip_range = req.ip_range;
        network.aux_addresses = req.aux_addresses.clone();
        network.ipv4_pool = Some(pool4.id.clone());
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
            let reserved = reserve_family(st.ipam.as_mut(), &req.name, &fam, &req.ipam_options)
                .map_err(|e| name_overlap(e, &st.store));
            match reserved {
                Ok((pool6, IpAddr::V6(gw6))) => {
                    network.ipv6 = Some(Ipv6Config {
                        subnet: r6.subnet,
                        gateway: gw6,
                        ip_range: r6.ip_range,
                        aux_addresses: r6.aux_addresses.clone(),
                        pool: pool6.id,
                    });
                }
                other => {
                    let _ = st.ipam.release_pool(&pool4.id);
                    if let Ok((pool6, _)) = &other {
                        let _ = st.ipam.release_pool(&pool6.id);
                    }
                    return Err(other.err().unwrap_or_else(|| {
                        Error::InvalidRequest(format!(
                            "network {}: IPAM returned a non-IPv6 gateway",
                            req.name
                        ))
                    }));
                }
            }
        }
        Ok(())
    }

    /// Create the pre-defined networks that do not exist yet (`none`, `host`,
    /// `bridge`), through the ordinary create path (so each is committed to the
    /// store like any network). Drivers that are not registered are skipped.
    /// Existing networks (e.g. restored from the store: call this after
    /// [`Controller::restore`]) are left as they are; `bridge` settings only apply
    /// to a `bridge` network created now.
    pub async fn ensure_default_networks(&self, bridge: &DefaultBridge) -> Result<()> {
        for (name, driver) in model::PREDEFINED_NETWORKS {
            if self.drivers.get(driver).is_err() {
                tracing::warn!(
                    network = name,
                    driver,
                    "driver not registered; pre-defined network skipped"
                );
                continue;
            }
            let existing = {
                let st = self.state.lock().await;
                st.store.networks.values().find(|n| n.name == name).cloned()
            };
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
            self.create_network(req).await.map_err(|e| match e {
                Error::Ipam { op, source } => Error::Ipam {
                    op: format!("create pre-defined network {name}: {op}"),
                    source,
                },
                other => other,
            })?;
        }
        Ok(())
    }

    /// Delete a network (CNM `Delete`); refused while endpoints are attached.
    pub async fn delete_network(&self, what: &str) -> Result<()> {
        let mut st = self.state.lock().await;
        let id = st.store.resolve_network(what)?;
        let network = st
            .store
            .networks
            .get(&id)
            .cloned()
            .ok_or_else(|| not_found("network", what))?;
        if model::is_predefined(&network.name) {
            return Err(Error::Forbidden(format!(
                "{} is a pre-defined network and cannot be removed",
                network.name
            )));
        }
        if !network.endpoints.is_empty() {
            let mut names: Vec<String> = network
                .endpoints
                .values()
                .map(|e| {
                    st.store
                        .sandboxes
                        .get(&e.sandbox_id)
                        .map_or_else(|| e.sandbox_id.clone(), |s| s.name.clone())
                })
                .collect();
            names.sort();
            return Err(Error::Conflict(format!(
                "network {} has active endpoints ({}); disconnect them first",
                network.name,
                names.join(", ")
            )));
        }
        let driver = self.drivers.get(&network.driver)?;
        let (d, nid) = (Arc::clone(&driver), id.clone());
        blocking("delete network", move || d.delete_network(&nid)).await?;
        let op = format!("remove network {}", network.name);
        if let Err(e) = self
            .commit(&op, vec![Change::DeleteNetwork(id.clone())])
            .await
        {
            let n = network.clone();
            if let Err(undo) = blocking("undo remove network", move || {
                driver.create_network(&NetworkRequest { network: &n })
            })
            .await
            {
                tracing::warn!(error = %undo, "re-creating the switch after a failed commit");
            }
            return Err(e);
        }
        release_network_pools(st.ipam.as_mut(), &network);
        st.store.networks.remove(&id);
        tracing::info!(network = %network.name, "network removed");
        Ok(())
    }

    /// Create a sandbox: a new namespace at `<exec_root>/netns/<id>`, or adopt the
    /// one at `netns_path`. Returns its id.
    pub async fn create_sandbox(
        &self,
        name: Option<String>,
        netns_path: Option<PathBuf>,
    ) -> Result<String> {
        self.create_sandbox_with(name, netns_path, Vec::new()).await
    }

    /// [`Controller::create_sandbox`] with published ports: each fixed host port must
    /// be free now (409 otherwise, nothing made); they are bound when the sandbox
    /// joins its first non-internal bridge network. The sandbox's resolv.conf and
    /// hosts are written under `<exec_root>/sandboxes/<id>/`.
    pub async fn create_sandbox_with(
        &self,
        name: Option<String>,
        netns_path: Option<PathBuf>,
        port_bindings: Vec<PortBinding>,
    ) -> Result<String> {
        let id = model::new_id();
        let name = name
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| id[..12].to_string());
        validate_name("sandbox", &name)?;
        if let Some(p) = &netns_path {
            if !p.is_absolute() {
                return Err(Error::InvalidRequest(format!(
                    "NetnsPath {} must be an absolute path",
                    p.display()
                )));
            }
        }
        let mut st = self.state.lock().await;
        if st.store.sandboxes.values().any(|s| s.name == name) {
            return Err(Error::Conflict(format!(
                "sandbox with name {name} already exists"
            )));
        }
        for b in &port_bindings {
            if let Some(other) = st
                .store
                .sandboxes
                .values()
                .find(|o| o.port_bindings.iter().any(|x| ports::clashes(x, b)))
            {
                return Err(Error::Conflict(format!(
                    "{} (by sandbox {})",
                    ports::in_use(b),
                    other.name
                )));
            }
        }
        let check = port_bindings.clone();
        blocking("check host ports", move || ports::check_free(&check)).await?;
        let (ns, owned) = match netns_path {
            Some(path) => {
                let p = path.clone();
                let ns = blocking("adopt namespace", move || {
                    Netns::open(&p).map_err(|e| {
                        Error::InvalidRequest(format!(
                            "cannot adopt NetnsPath {}: {e}",
                            p.display()
                        ))
                    })
                })
                .await?;
                (ns, false)
            }
            None => {
                let path = self.exec_root.join("netns").join(&id);
                let ns = blocking("create namespace", move || {
                    Netns::create(&path).map_err(|e| {
                        Error::os(format!("create namespace at {}", path.display()), e)
                    })
                })
                .await?;
                (ns, true)
            }
        };
        let files = sandbox_files::dir(&self.exec_root, &id);
        let sandbox = Sandbox {
            id: id.clone(),
            name,
            netns_path: ns.path().to_path_buf(),
            owned,
            created: model::now_rfc3339(),
            resolv_conf_path: files.join("resolv.conf"),
            hosts_path: files.join("hosts"),
            port_bindings,
            published: None,
        };
        let op = format!("create sandbox {}", sandbox.name);
        let resolv = sandbox_files::render_resolv_conf(None, &self.nameservers);
        let made = match write_sandbox_files(&sandbox, resolv, &[]).await {
            Ok(()) => {
                self.commit(&op, vec![Change::PutSandbox(sandbox.clone())])
                    .await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = made {
            let dir = files.clone();
            let _ = blocking("remove sandbox files", move || {
                let _ = std::fs::remove_dir_all(&dir);
                Ok(())
            })
            .await;
            drop(ns);
            if owned {
                let path = sandbox.netns_path.clone();
                let undone = blocking("undo create sandbox", move || {
                    Netns::destroy(&path).map_err(|e| Error::os("remove namespace", e))
                })
                .await;
                if let Err(undo) = undone {
                    tracing::warn!(error = %undo, "removing the namespace after a failed commit");
                }
            }
            return Err(e);
        }
        tracing::info!(sandbox = %sandbox.name, path = %sandbox.netns_path.display(), owned, "sandbox created");
        st.netns.insert(id.clone(), Arc::new(ns));
        st.store.sandboxes.insert(id.clone(), sandbox);
        Ok(id)
    }

    /// Remove a sandbox: disconnect it from every network, then remove its namespace
    /// if tapnet created it. One transaction for all of it.
    pub async fn delete_sandbox(&self, what: &str) -> Result<()> {
        let mut st = self.state.lock().await;
        let sid = st.store.resolve_sandbox(what)?;
        let sandbox = st
            .store
            .sandboxes
            .get(&sid)
            .cloned()
            .ok_or_else(|| not_found("sandbox", what))?;
        let network_ids: Vec<String> = st
            .store
            .endpoints_of_sandbox(&sid)
            .into_iter()
            .map(|(n, _)| n.id.clone())
            .collect();
        let mut left: Vec<(String, Endpoint)> = Vec::new();
        for nid in network_ids {
            match self.leave_os(&st.store, &nid, &sid, true).await {
                Ok(ep) => left.push((nid, ep)),
                Err(e) => {
                    self.rejoin_all(&st.store, &st.netns, &left, &sandbox.name)
                        .await;
                    return Err(e);
                }
            }
        }
        // Close our fd on the namespace before unmounting it.
        let ns = st.netns.remove(&sid);
        if sandbox.owned {
            let path = sandbox.netns_path.clone();
            let destroyed = blocking("remove namespace", move || {
                Netns::destroy(&path)
                    .map_err(|e| Error::os(format!("remove namespace {}", path.display()), e))
            })
            .await;
            if let Err(e) = destroyed {
                if let Some(ns) = ns {
                    st.netns.insert(sid.clone(), ns);
                }
                self.rejoin_all(&st.store, &st.netns, &left, &sandbox.name)
                    .await;
                return Err(e);
            }
        }
        let mut changes: Vec<Change> = left
            .iter()
            .map(|(_, ep)| Change::DeleteEndpoint(ep.id.clone()))
            .collect();
        changes.push(Change::DeleteSandbox(sid.clone()));
        let op = format!("remove sandbox {}", sandbox.name);
        if let Err(e) = self.commit(&op, changes).await {
            if !sandbox.owned {
                if let Some(ns) = ns {
                    st.netns.insert(sid.clone(), ns);
                }
                self.rejoin_all(&st.store, &st.netns, &left, &sandbox.name)
                    .await;
            }
            return Err(e);
        }
        for (nid, ep) in &left {
            forget_endpoint(&mut st, nid, ep);
        }
        st.store.sandboxes.remove(&sid);
        for (nid, _) in &left {
            self.refresh_names(&st.store, nid).await;
        }
        let dir = sandbox_files::dir(&self.exec_root, &sid);
        let _ = blocking("remove sandbox files", move || {
            match std::fs::remove_dir_all(&dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    tracing::warn!(dir = %dir.display(), error = %e, "removing sandbox files")
                }
                _ => {}
            }
            Ok(())
        })
        .await;
        tracing::info!(sandbox = %sandbox.name, "sandbox removed");
        Ok(())
    }

    /// Connect a sandbox to a network (CNM `CreateEndpoint` + `Join`) with the
    /// static addresses, MAC and aliases of `opts`. A MAC already used by another
    /// endpoint of the network is a conflict (409).
    pub async fn connect(
        &self,
        network: &str,
        sandbox: &str,
        opts: ConnectOptions,
    ) -> Result<Endpoint> {
        let mut st = self.state.lock().await;
        let nid = st.store.resolve_network(network)?;
        let sid = st.store.resolve_sandbox(sandbox)?;
        let net = st
            .store
            .networks
            .get(&nid)
            .cloned()
            .ok_or_else(|| not_found("network", network))?;
        let sb = st
            .store
            .sandboxes
            .get(&sid)
            .cloned()
            .ok_or_else(|| not_found("sandbox", sandbox))?;
        if net.endpoint_of(&sid).is_some() {
            return Err(Error::Conflict(format!(
                "sandbox {} is already connected to network {}",
                sb.name, net.name
            )));
        }
        let driver = self.drivers.get(&net.driver)?;
        self.check_exclusive(&st.store, &net, &sb, driver.as_ref())?;
        if !driver.capabilities().needs_addresses && (opts.ipv4.is_some() || opts.ipv6.is_some()) {
            return Err(Error::InvalidRequest(format!(
                "network {} (driver {}) gives endpoints no addresses: drop the static IPv4Address/IPv6Address",
                net.name, net.driver
            )));
        }
        if opts.ipv6.is_some() && net.ipv6.is_none() {
            return Err(Error::InvalidRequest(format!(
                "network {} has no IPv6 subnet (EnableIPv6 is off): cannot give IPv6Address",
                net.name
            )));
        }
        let ns = st.netns.get(&sid).cloned().ok_or_else(|| {
            Error::InvalidRequest(format!("sandbox {} has no open namespace", sb.name))
        })?;
        if opts.mac.is_some() && !driver.capabilities().needs_addresses {
            return Err(Error::InvalidRequest(format!(
                "network {} (driver {}) gives endpoints no device: drop the MacAddress",
                net.name, net.driver
            )));
        }
        if let Some(mac) = opts.mac {
            if net.endpoints.values().any(|e| e.mac == Some(mac)) {
                return Err(Error::Conflict(format!(
                    "MAC address {} is already used on network {}",
                    model::format_mac(&mac),
                    net.name
                )));
            }
        }
        let op = || format!("connect {} to network {}", sb.name, net.name);
        // Addresses first; every later failure gives them back.
        let none = BTreeMap::new();
        let pool4 = v4_pool(&net);
        let ipv4 = match &pool4 {
            Some(pool) => match st
                .ipam
                .request_address(pool, opts.ipv4.map(IpAddr::V4), &none)
                .map_err(|e| Error::ipam(op(), e))?
            {
                IpAddr::V4(a) => Some(a),
                IpAddr::V6(a) => {
                    let _ = st.ipam.release_address(pool, IpAddr::V6(a));
                    return Err(Error::InvalidRequest(format!(
                        "{}: IPAM returned IPv6 address {a} from the IPv4 pool",
                        op()
                    )));
                }
            },
            None => None,
        };
        let release4 = |ipam: &mut dyn Ipam| {
            if let (Some(pool), Some(a)) = (&pool4, ipv4) {
                if let Err(e) = ipam.release_address(pool, IpAddr::V4(a)) {
                    tracing::warn!(error = %e, "releasing address after a failed connect");
                }
            }
        };
        let pool6 = v6_pool(&net);
        let ipv6 = match &pool6 {
            Some(pool) => match st
                .ipam
                .request_address(pool, opts.ipv6.map(IpAddr::V6), &none)
            {
                Ok(IpAddr::V6(a)) => Some(a),
                Ok(IpAddr::V4(a)) => {
                    let _ = st.ipam.release_address(pool, IpAddr::V4(a));
                    release4(st.ipam.as_mut());
                    return Err(Error::InvalidRequest(format!(
                        "{}: IPAM returned IPv4 address {a} from the IPv6 pool",
                        op()
                    )));
                }
                Err(e) => {
                    release4(st.ipam.as_mut());
                    return Err(Error::ipam(op(), e));
                }
            },
            None => None,
        };
        let release_all = |ipam: &mut dyn Ipam| {
            release4(ipam);
            if let (Some(pool), Some(a)) = (&pool6, ipv6) {
                if let Err(e) = ipam.release_address(pool, IpAddr::V6(a)) {
                    tracing::warn!(error = %e, "releasing address after a failed connect");
                }
            }
        };
        let mut endpoint = Endpoint {
            id: model::new_id(),
            network_id: nid.clone(),
            sandbox_id: sid.clone(),
            interface: String::new(),
            mac: default_mac(driver.as_ref(), opts.mac, ipv4, &net),
            ipv4,
            prefix_len: net.subnet.map_or(0, |s| s.prefix_len()),
            ipv6,
            prefix_len_v6: net.ipv6.as_ref().map_or(0, |c| c.subnet.prefix_len()),
            aliases: opts.aliases,
        };
        // Published ports go to the first non-internal bridge network joined.
        let publish = match (ipv4, &sb.published) {
            (Some(a), None)
                if driver.capabilities().gateway_service
                    && !net.internal
                    && !sb.port_bindings.is_empty() =>
            {
                Some((IpAddr::V4(a), sb.port_bindings.clone()))
            }
            _ => None,
        };
        let (d, n, ep, sb_name) = (
            Arc::clone(&driver),
            net.clone(),
            endpoint.clone(),
            sb.name.clone(),
        );
        let layer = self.drivers.sandbox_layer();
        let joined = blocking("connect", move || {
            // create_endpoint → join → the sandbox layer applies the description.
            let connected = layer.connect(d.as_ref(), &n, &ep, &ns, &sb_name)?;
            let publish = publish.filter(|_| !connected.join.disable_gateway_service);
            let Some((sandbox_ip, bindings)) = publish else {
                return Ok((connected.endpoint, None));
            };
            match publish_all(d.as_ref(), &n.id, sandbox_ip, &bindings) {
                Ok(bound) => Ok((
                    connected.endpoint,
                    Some(ports::Published {
                        network_id: n.id.clone(),
                        sandbox_ip,
                        ports: bound,
                    }),
                )),
                Err(e) => {
                    if let Err(cleanup) = layer.disconnect(d.as_ref(), &n.id, &ep.id) {
                        tracing::warn!(error = %cleanup, "cleanup after failed publish");
                    }
                    Err(e)
                }
            }
        })
        .await;
        let published = match joined {
            Ok((connected, published)) => {
                endpoint = connected;
                published
            }
            Err(e) => {
                release_all(st.ipam.as_mut());
                return Err(e);
            }
        };
        let mut changes = vec![Change::PutEndpoint(endpoint.clone())];
        let mut sb_after = sb.clone();
        if published.is_some() {
            sb_after.published = published.clone();
            changes.push(Change::PutSandbox(sb_after.clone()));
        }
        if let Err(e) = self.commit(&op(), changes).await {
            let (n, e_id) = (nid.clone(), endpoint.id.clone());
            let unpublish = published.clone();
            let layer = self.drivers.sandbox_layer();
            let undone = blocking("undo connect", move || {
                if let Some(p) = unpublish {
                    unpublish_all(driver.as_ref(), &p);
                }
                layer.disconnect(driver.as_ref(), &n, &e_id)
            })
            .await;
            if let Err(undo) = undone {
                tracing::warn!(error = %undo, "removing the endpoint after a failed commit");
            }
            release_all(st.ipam.as_mut());
            return Err(e);
        }
        tracing::info!(
            network = %net.name,
            sandbox = %sb.name,
            interface = %endpoint.interface,
            ip = ?ipv4,
            ipv6 = ?ipv6,
            "connected"
        );
        if let Some(n) = st.store.networks.get_mut(&nid) {
            n.endpoints.insert(endpoint.id.clone(), endpoint.clone());
        }
        if let Some(p) = &published {
            tracing::info!(sandbox = %sb.name, ports = ?p.ports, "ports published");
            st.store.sandboxes.insert(sid.clone(), sb_after);
        }
        self.refresh_names(&st.store, &nid).await;
        self.refresh_files(&st.store, &sid).await;
        Ok(endpoint)
    }

    /// Docker's rules for `host` and `none`: a sandbox on one of them is on no other
    /// network, and a sandbox on other networks cannot join one of them.
    fn check_exclusive(
        &self,
        store: &Store,
        net: &Network,
        sb: &Sandbox,
        driver: &dyn Driver,
    ) -> Result<()> {
        let others = store.endpoints_of_sandbox(&sb.id);
        if let Some((exclusive, _)) = others.iter().find(|(n, _)| {
            self.drivers
                .get(&n.driver)
                .is_ok_and(|d| d.capabilities().single_instance)
        }) {
            return Err(Error::InvalidRequest(format!(
                "sandbox {} is connected to network {} (driver {}), which excludes every other network: disconnect it first",
                sb.name, exclusive.name, exclusive.driver
            )));
        }
        if driver.capabilities().single_instance && !others.is_empty() {
            let mut names: Vec<&str> = others.iter().map(|(n, _)| n.name.as_str()).collect();
            names.sort_unstable();
            return Err(Error::InvalidRequest(format!(
                "sandbox {} cannot join network {} (driver {}) while connected to other networks ({}): disconnect them first",
                sb.name,
                net.name,
                net.driver,
                names.join(", ")
            )));
        }
        Ok(())
    }

    /// Disconnect a sandbox from a network (CNM `Leave` + `Delete` endpoint).
    pub async fn disconnect(&self, network: &str, sandbox: &str, force: bool) -> Result<()> {
        let mut st = self.state.lock().await;
        let nid = st.store.resolve_network(network)?;
        let sid = st.store.resolve_sandbox(sandbox)?;
        let endpoint = self.leave_os(&st.store, &nid, &sid, force).await?;
        let sb_name = st
            .store
            .sandboxes
            .get(&sid)
            .map_or_else(|| sid.clone(), |s| s.name.clone());
        let op = format!("disconnect {sb_name} from network {network}");
        let pair = vec![(nid.clone(), endpoint.clone())];
        let mut changes = vec![Change::DeleteEndpoint(endpoint.id.clone())];
        // leave_os closed the host sockets of ports published on this network.
        let unpublished = st
            .store
            .sandboxes
            .get(&sid)
            .filter(|s| s.published.as_ref().is_some_and(|p| p.network_id == nid))
            .map(|s| Sandbox {
                published: None,
                ..s.clone()
            });
        if let Some(s) = &unpublished {
            changes.push(Change::PutSandbox(s.clone()));
        }
        if let Err(e) = self.commit(&op, changes).await {
            self.rejoin_all(&st.store, &st.netns, &pair, &sb_name).await;
            return Err(e);
        }
        forget_endpoint(&mut st, &nid, &endpoint);
        if let Some(s) = unpublished {
            st.store.sandboxes.insert(sid.clone(), s);
        }
        tracing::info!(network = %network, sandbox = %sb_name, "disconnected");
        self.refresh_names(&st.store, &nid).await;
        self.refresh_files(&st.store, &sid).await;
        Ok(())
    }

    /// The OS side of a disconnect (driver `leave` + `delete_endpoint`); the model
    /// and IPAM are untouched. Returns the endpoint. With `force`, a failing driver
    /// is logged and the endpoint returned anyway.
    async fn leave_os(&self, store: &Store, nid: &str, sid: &str, force: bool) -> Result<Endpoint> {
        let net = store
            .networks
            .get(nid)
            .ok_or_else(|| not_found("network", nid))?;
        let sb_name = store
            .sandboxes
            .get(sid)
            .map_or_else(|| sid.to_string(), |s| s.name.clone());
        let endpoint = net.endpoint_of(sid).cloned().ok_or_else(|| {
            Error::NotFound(format!(
                "sandbox {sb_name} is not connected to network {}",
                net.name
            ))
        })?;
        let driver = self.drivers.get(&net.driver)?;
        let published = store
            .sandboxes
            .get(sid)
            .and_then(|s| s.published.clone())
            .filter(|p| p.network_id == nid);
        let (n, e) = (nid.to_string(), endpoint.id.clone());
        let layer = self.drivers.sandbox_layer();
        let left = blocking("disconnect", move || {
            if let Some(p) = published {
                unpublish_all(driver.as_ref(), &p);
            }
            // The sandbox layer's undo → leave → delete_endpoint.
            layer.disconnect(driver.as_ref(), &n, &e)
        })
        .await;
        if let Err(e) = left {
            if !force {
                return Err(e);
            }
            tracing::warn!(error = %e, "forced disconnect: leave failed, removing the endpoint anyway");
        }
        Ok(endpoint)
    }

    /// Best effort: join endpoints that [`Controller::leave_os`] took out again
    /// (a later step of the same mutation failed).
    async fn rejoin_all(
        &self,
        store: &Store,
        netns: &HashMap<String, Arc<Netns>>,
        left: &[(String, Endpoint)],
        sb_name: &str,
    ) {
        for (nid, ep) in left {
            let (Some(net), Some(ns)) = (store.networks.get(nid), netns.get(&ep.sandbox_id)) else {
                continue;
            };
            let Ok(driver) = self.drivers.get(&net.driver) else {
                continue;
            };
            let (n, e, ns, name) = (net.clone(), ep.clone(), Arc::clone(ns), sb_name.to_string());
            let layer = self.drivers.sandbox_layer();
            let rejoined = blocking("rejoin", move || {
                layer.connect(driver.as_ref(), &n, &e, &ns, &name).map(drop)
            })
            .await;
            if let Err(err) = rejoined {
                tracing::warn!(error = %err, sandbox = sb_name, "re-joining an endpoint after a failed mutation");
            }
        }
    }

    /// Push the names of network `nid` to its gateway's DNS (logged on failure: a
    /// stale name table must not fail the operation that changed it).
    async fn refresh_names(&self, store: &Store, nid: &str) {
        let Some(net) = store.networks.get(nid) else {
            return;
        };
        let Ok(driver) = self.drivers.get(&net.driver) else {
            return;
        };
        if !driver.capabilities().gateway_service {
            return;
        }
        let names = sandbox_files::names_for(net, &store.sandboxes);
        let id = nid.to_string();
        if let Err(e) = blocking("set DNS names", move || driver.set_names(&id, names)).await {
            tracing::warn!(network = %net.name, error = %e, "updating DNS names");
        }
    }

    /// Rewrite a sandbox's resolv.conf and hosts from the model (logged on failure).
    async fn refresh_files(&self, store: &Store, sid: &str) {
        let Some(sb) = store.sandboxes.get(sid) else {
            return;
        };
        let gateway = sandbox_files::first_gateway(store.networks.values(), sid, |n| {
            self.drivers
                .get(&n.driver)
                .is_ok_and(|d| d.capabilities().gateway_service)
        });
        let resolv = sandbox_files::render_resolv_conf(gateway, &self.nameservers);
        let addrs = sandbox_files::addresses(store.networks.values(), sid);
        if let Err(e) = write_sandbox_files(sb, resolv, &addrs).await {
            tracing::warn!(error = %e, "updating sandbox files");
        }
    }

    /// Daemon start, after the data plane is back: every gateway's names, every
    /// sandbox's files, and the published ports at the host addresses they had.
    /// A port that cannot be bound again is logged and left unbound.
    async fn restore_gateways(&self, st: &mut State) {
        let ids: Vec<String> = st.store.networks.keys().cloned().collect();
        for nid in &ids {
            self.refresh_names(&st.store, nid).await;
        }
        let sids: Vec<String> = st.store.sandboxes.keys().cloned().collect();
        let mut changes = Vec::new();
        for sid in &sids {
            self.refresh_files(&st.store, sid).await;
            let Some(sb) = st.store.sandboxes.get(sid).cloned() else {
                continue;
            };
            let Some(p) = sb.published.clone() else {
                continue;
            };
            let net = st.store.networks.get(&p.network_id);
            let on_net = net
                .and_then(|n| n.endpoint_of(sid))
                .is_some_and(|e| e.ipv4.map(IpAddr::V4) == Some(p.sandbox_ip));
            let driver = net.and_then(|n| self.drivers.get(&n.driver).ok());
            let (Some(driver), true) = (driver, on_net) else {
                tracing::warn!(sandbox = %sb.name, "published ports' network is gone; ports released");
                let after = Sandbox {
                    published: None,
                    ..sb
                };
                changes.push(Change::PutSandbox(after.clone()));
                st.store.sandboxes.insert(sid.clone(), after);
                continue;
            };
            let p2 = p.clone();
            let name = sb.name.clone();
            let kept = blocking("re-publish ports", move || {
                let mut kept = Vec::new();
                for b in &p2.ports {
                    let spec = tapnet_nat::PublishSpec {
                        host_ip: b.host.ip(),
                        host_port: b.host.port(),
                        proto: b.binding.proto.nat(),
                        sandbox_ip: p2.sandbox_ip,
                        sandbox_port: b.binding.port,
                    };
                    match driver.publish(&p2.network_id, spec) {
                        Ok(host) => kept.push(ports::BoundPort {
                            binding: b.binding,
                            host,
                        }),
                        Err(e) => tracing::warn!(
                            sandbox = %name,
                            port = %b.binding.key(),
                            host = %b.host,
                            error = %e,
                            "published port cannot be bound again; left unbound"
                        ),
                    }
                }
                Ok(kept)
            })
            .await
            .unwrap_or_default();
            if kept.len() != p.ports.len() {
                let after = Sandbox {
                    published: Some(ports::Published { ports: kept, ..p }),
                    ..sb
                };
                changes.push(Change::PutSandbox(after.clone()));
                st.store.sandboxes.insert(sid.clone(), after);
            }
        }
        if !changes.is_empty() {
            if let Err(e) = self.commit("record re-published ports", changes).await {
                tracing::warn!(error = %e, "recording re-published ports");
            }
        }
    }

    /// Counters of a network's switch.
    pub async fn network_report(&self, what: &str) -> Result<(Network, NetworkReport)> {
        let (net, driver) = self.network_and_driver(what).await?;
        let id = net.id.clone();
        let report = blocking("read network counters", move || driver.report(&id)).await?;
        Ok((net, report))
    }

    /// A network's forwarding table.
    pub async fn network_fdb(&self, what: &str) -> Result<Vec<FdbRow>> {
        let (net, driver) = self.network_and_driver(what).await?;
        blocking("read network FDB", move || driver.fdb(&net.id)).await
    }

    async fn network_and_driver(&self, what: &str) -> Result<(Network, Arc<dyn Driver>)> {
        let net = self.network(what).await?;
        let driver = self.drivers.get(&net.driver)?;
        Ok((net, driver))
    }

    /// Daemon start: rebuild the model, IPAM and data plane from the database.
    ///
    /// Reads everything in one read transaction; opens each sandbox's namespace by
    /// path. A sandbox whose namespace is gone (path missing or not a network
    /// namespace) is removed with its endpoints (their addresses are free again) and
    /// logged. IPAM is rebuilt with [`restore_network_ipam`] for every network (pools,
    /// gateways, auxiliary addresses, every endpoint's IPv4 and IPv6 address); pool
    /// ids that came out different are recorded again. Each network's switch is re-created, then every endpoint is restored
    /// ([`Driver::restore_endpoint`]) on a small pool of blocking threads; an endpoint
    /// that cannot be restored is dropped (its tap removed if possible) and logged.
    /// All removals are committed in one write transaction. Records that do not make
    /// sense (unreadable, an endpoint of an unknown network or sandbox, a pool that
    /// overlaps another) are logged and left out. Call once, before serving.
    pub async fn restore(&self) -> Result<RestoreReport> {
        let started = std::time::Instant::now();
        let Some(db) = self.db.clone() else {
            return Ok(RestoreReport::default());
        };
        let loaded = blocking("load store", move || {
            db.load().map_err(|e| Error::store("load the store", e))
        })
        .await?;
        let mut report = RestoreReport {
            skipped_records: loaded.skipped,
            ..RestoreReport::default()
        };
        let mut store = loaded.store;
        let mut changes: Vec<Change> = Vec::new();
        for e in loaded.orphan_endpoints {
            tracing::warn!(endpoint = %e.id, network = %e.network_id, "store: endpoint of an unknown network; removed");
            changes.push(Change::DeleteEndpoint(e.id));
        }

        // Open every sandbox's namespace.
        let sandboxes: Vec<Sandbox> = store.sandboxes.values().cloned().collect();
        let opened = blocking("open namespaces", move || {
            Ok(sandboxes
                .into_iter()
                .map(|sb| {
                    let r = Netns::open(&sb.netns_path);
                    (sb, r)
                })
                .collect::<Vec<_>>())
        })
        .await?;
        let mut netns: HashMap<String, Arc<Netns>> = HashMap::new();
        let mut stale: Vec<Sandbox> = Vec::new();
        for (sb, r) in opened {
            match r {
                Ok(ns) => {
                    netns.insert(sb.id.clone(), Arc::new(ns));
                }
                Err(e) if namespace_gone(&e) => {
                    tracing::warn!(
                        sandbox = %sb.name,
                        id = %sb.id,
                        path = %sb.netns_path.display(),
                        error = %e,
                        "sandbox {} removed: its network namespace vanished while the daemon was down",
                        sb.name
                    );
                    stale.push(sb);
                }
                Err(e) => {
                    tracing::error!(sandbox = %sb.name, error = %e, "cannot open the namespace of sandbox {}; its endpoints stay detached", sb.name);
                }
            }
        }
        for sb in &stale {
            store.sandboxes.remove(&sb.id);
            changes.push(Change::DeleteSandbox(sb.id.clone()));
            report.stale_sandboxes.push(sb.name.clone());
        }
        let owned_stale: Vec<PathBuf> = stale
            .iter()
            .filter(|s| s.owned)
            .map(|s| s.netns_path.clone())
            .collect();
        if !owned_stale.is_empty() {
            blocking("remove stale namespace files", move || {
                for p in owned_stale {
                    if let Err(e) = Netns::destroy(&p) {
                        tracing::warn!(path = %p.display(), error = %e, "removing a stale namespace file");
                    }
                }
                Ok(())
            })
            .await?;
        }
        // Endpoints whose sandbox is gone (or unknown).
        for net in store.networks.values_mut() {
            let dead: Vec<String> = net
                .endpoints
                .values()
                .filter(|e| !store.sandboxes.contains_key(&e.sandbox_id))
                .map(|e| e.id.clone())
                .collect();
            for id in dead {
                if let Some(e) = net.endpoints.remove(&id) {
                    tracing::info!(network = %net.name, ip = ?e.ipv4, ipv6 = ?e.ipv6, "endpoint of a removed sandbox dropped; its address is free");
                    changes.push(Change::DeleteEndpoint(id));
                }
            }
        }

        let mut st = self.state.lock().await;
        // IPAM replay: the one replay of a recorded network (pools, gateways,
        // auxiliary addresses, every endpoint's IPv4 and IPv6 address).
        let mut unusable: Vec<String> = Vec::new();
        for net in store.networks.values_mut() {
            let before = (net.ipv4_pool.clone(), net.ipv6.clone());
            match restore_network_ipam(st.ipam.as_mut(), net) {
                Ok(dropped) => {
                    for (ep, err) in dropped {
                        tracing::error!(network = %net.name, ip = ?ep.ipv4, ipv6 = ?ep.ipv6, error = %err, "store: endpoint address cannot be restored; endpoint left out");
                        changes.push(Change::DeleteEndpoint(ep.id));
                    }
                }
                Err(e) => {
                    tracing::error!(network = %net.name, error = %e, "store: network's pools cannot be restored; network left out");
                    unusable.push(net.id.clone());
                    continue;
                }
            }
            if (net.ipv4_pool.clone(), net.ipv6.clone()) != before {
                // The IPAM named the pools differently: record the new ids.
                changes.push(Change::PutNetwork(Box::new(net.clone())));
            }
        }
        for id in unusable {
            store.networks.remove(&id);
        }

        // Data plane: one switch per network, then the endpoints in parallel.
        let mut jobs: Vec<RestoreJob> = Vec::new();
        for net in store.networks.values() {
            let driver = match self.drivers.get(&net.driver) {
                Ok(d) => d,
                Err(e) => {
                    tracing::error!(network = %net.name, error = %e, "network's driver is missing; its endpoints stay detached");
                    continue;
                }
            };
            let (d, n) = (Arc::clone(&driver), net.clone());
            if let Err(e) = blocking("restore network", move || {
                d.create_network(&NetworkRequest { network: &n })
            })
            .await
            {
                tracing::error!(network = %net.name, error = %e, "cannot re-create the network's data plane; its endpoints stay detached");
                continue;
            }
            report.networks += 1;
            for ep in net.endpoints.values() {
                let (Some(ns), Some(sb)) = (
                    netns.get(&ep.sandbox_id),
                    store.sandboxes.get(&ep.sandbox_id),
                ) else {
                    continue;
                };
                jobs.push(RestoreJob {
                    driver: Arc::clone(&driver),
                    network: Arc::new(net.clone()),
                    endpoint: ep.clone(),
                    netns: Arc::clone(ns),
                    sandbox_name: sb.name.clone(),
                });
            }
        }
        let layer = self.drivers.sandbox_layer();
        let results = blocking("restore endpoints", move || {
            Ok(restore_parallel(jobs, &layer))
        })
        .await?;
        for (job, r) in results {
            match r {
                Ok(Restored::Reopened) => report.endpoints += 1,
                Ok(Restored::Recreated) => {
                    report.endpoints += 1;
                    report.recreated += 1;
                }
                Err(e) => {
                    tracing::warn!(
                        sandbox = %job.sandbox_name,
                        network = %job.network.name,
                        error = %e,
                        "endpoint of sandbox {} on network {} cannot be restored; removed",
                        job.sandbox_name,
                        job.network.name
                    );
                    if let Some(n) = store.networks.get_mut(&job.network.id) {
                        n.endpoints.remove(&job.endpoint.id);
                        release_endpoint_addresses(st.ipam.as_mut(), n, &job.endpoint);
                    }
                    changes.push(Change::DeleteEndpoint(job.endpoint.id.clone()));
                    report.dropped_endpoints += 1;
                }
            }
        }
        if !changes.is_empty() {
            self.commit("clean up the store at start", changes).await?;
        }
        st.store = store;
        st.netns = netns;
        self.restore_gateways(&mut st).await;
        report.elapsed = started.elapsed();
        tracing::info!(
            networks = report.networks,
            sandboxes = st.store.sandboxes.len(),
            recreated = report.recreated,
            dropped = report.dropped_endpoints,
            stale_sandboxes = report.stale_sandboxes.len(),
            "restored {} endpoints in {} ms",
            report.endpoints,
            report.elapsed.as_millis()
        );
        Ok(report)
    }

    /// Stop every driver's data plane, leaving sandboxes and taps in place.
    pub async fn shutdown(&self) {
        let drivers: Vec<Arc<dyn Driver>> = self.drivers.all().cloned().collect();
        let _ = blocking("shutdown", move || {
            for d in drivers {
                d.shutdown();
            }
            Ok(())
        })
        .await;
    }
}

/// Write a sandbox's resolv.conf (`resolv`) and hosts (its name at `addrs`), making
/// the directory if needed.
async fn write_sandbox_files(sb: &Sandbox, resolv: String, addrs: &[IpAddr]) -> Result<()> {
    if sb.resolv_conf_path.as_os_str().is_empty() {
        return Ok(());
    }
    let hosts = sandbox_files::render_hosts(&sb.name, addrs);
    let (resolv_path, hosts_path, name) = (
        sb.resolv_conf_path.clone(),
        sb.hosts_path.clone(),
        sb.name.clone(),
    );
    blocking("write sandbox files", move || {
        let dir = resolv_path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        std::fs::create_dir_all(&dir)
            .and_then(|()| sandbox_files::write_in_place(&resolv_path, &resolv))
            .and_then(|()| sandbox_files::write_in_place(&hosts_path, &hosts))
            .map_err(|e| {
                Error::os(
                    format!(
                        "write resolv.conf and hosts of sandbox {name} in {}",
                        dir.display()
                    ),
                    tapnet_sandbox::Error::Os {
                        op: "write".into(),
                        source: e,
                    },
                )
            })
    })
    .await
}

/// Publish every binding at network `nid`'s gateway for `sandbox_ip`; on a failure
/// unpublish the ones already bound and return the error (409 for a taken port).
fn publish_all(
    driver: &dyn Driver,
    nid: &str,
    sandbox_ip: IpAddr,
    bindings: &[PortBinding],
) -> Result<Vec<ports::BoundPort>> {
    let mut bound: Vec<ports::BoundPort> = Vec::new();
    for b in bindings {
        let spec = tapnet_nat::PublishSpec {
            host_ip: b.host_ip,
            host_port: b.host_port,
            proto: b.proto.nat(),
            sandbox_ip,
            sandbox_port: b.port,
        };
        match driver.publish(nid, spec) {
            Ok(host) => bound.push(ports::BoundPort { binding: *b, host }),
            Err(e) => {
                for x in &bound {
                    let _ = driver.unpublish(nid, x.binding.proto.nat(), x.host);
                }
                return Err(match e {
                    Error::Gateway {
                        source: tapnet_nat::Error::PortInUse { .. },
                        ..
                    } => ports::in_use(b),
                    other => other,
                });
            }
        }
    }
    Ok(bound)
}

/// Close every host socket of `published` (logged on failure).
fn unpublish_all(driver: &dyn Driver, published: &ports::Published) {
    for b in &published.ports {
        if let Err(e) = driver.unpublish(&published.network_id, b.binding.proto.nat(), b.host) {
            tracing::warn!(error = %e, "unpublishing a port");
        }
    }
}

/// Name the other network in a pool-overlap error (409).
fn name_overlap(e: Error, store: &Store) -> Error {
    let Error::Ipam {
        op,
        source: IpamError::Overlap { subnet, other },
    } = e
    else {
        return e;
    };
    let owner = store.networks.values().find(|n| {
        n.subnet.map(IpNet::V4) == Some(other)
            || n.ipv6.as_ref().map(|c| IpNet::V6(c.subnet)) == Some(other)
    });
    match owner {
        Some(n) => Error::Conflict(format!(
            "{op}: subnet {subnet} overlaps with subnet {other} of network {} (Pool overlaps with other one on this address space)",
            n.name
        )),
        None => Error::ipam(op, IpamError::Overlap { subnet, other }),
    }
}

/// What [`Controller::restore`] did.
#[derive(Debug, Clone, Default)]
pub struct RestoreReport {
    /// Networks whose data plane was re-created.
    pub networks: usize,
    /// Endpoints forwarding again.
    pub endpoints: usize,
    /// Of those, endpoints whose tap had to be re-created.
    pub recreated: usize,
    /// Endpoints that could not be restored and were removed.
    pub dropped_endpoints: usize,
    /// Names of sandboxes removed because their namespace was gone.
    pub stale_sandboxes: Vec<String>,
    /// Unreadable records skipped.
    pub skipped_records: usize,
    /// Wall time of the restore.
    pub elapsed: std::time::Duration,
}

/// One endpoint to restore.
struct RestoreJob {
    driver: Arc<dyn Driver>,
    network: Arc<Network>,
    endpoint: Endpoint,
    netns: Arc<Netns>,
    sandbox_name: String,
}

/// Threads that restore endpoints at start (namespace entry + `TUNSETIFF` is cheap,
/// but each endpoint costs a few syscalls and a thread hop into its namespace).
const RESTORE_THREADS: usize = 8;

/// Run every job on up to [`RESTORE_THREADS`] threads; results in job order.
fn restore_parallel(
    jobs: Vec<RestoreJob>,
    layer: &SandboxLayer,
) -> Vec<(RestoreJob, Result<Restored>)> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let next = AtomicUsize::new(0);
    let threads = RESTORE_THREADS.min(jobs.len());
    let mut results: Vec<Option<Result<Restored>>> = Vec::new();
    results.resize_with(jobs.len(), || None);
    let slots = std::sync::Mutex::new(&mut results);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(job) = jobs.get(i) else {
                    break;
                };
                // restore_endpoint → the sandbox layer applies or records.
                let r = layer.restore(
                    job.driver.as_ref(),
                    &job.network,
                    &job.endpoint,
                    &job.netns,
                    &job.sandbox_name,
                );
                let mut slots = slots.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(slot) = slots.get_mut(i) {
                    *slot = Some(r);
                }
            });
        }
    });
    jobs.into_iter()
        .zip(results)
        .map(|(job, r)| {
            let r = r.unwrap_or_else(|| {
                Err(Error::Task {
                    op: "restore endpoint".into(),
                    message: "restore thread did not finish".into(),
                })
            });
            (job, r)
        })
        .collect()
}

/// Whether opening a stored namespace path failed because the namespace is gone
/// (the path is missing, or no longer a network namespace, e.g. after `umount`).
fn namespace_gone(e: &tapnet_sandbox::Error) -> bool {
    match e {
        tapnet_sandbox::Error::Os { source, .. } => source.kind() == std::io::ErrorKind::NotFound,
        tapnet_sandbox::Error::Invalid(_) => true,
        tapnet_sandbox::Error::Netlink { .. } => false,
    }
}

/// Drop a removed endpoint from IPAM and the model (after its commit).
fn forget_endpoint(st: &mut State, nid: &str, endpoint: &Endpoint) {
    let Some(net) = st.store.networks.get_mut(nid) else {
        return;
    };
    net.endpoints.remove(&endpoint.id);
    release_endpoint_addresses(st.ipam.as_mut(), net, endpoint);
}

/// Give an endpoint's IPv4 and IPv6 addresses back to IPAM.
fn release_endpoint_addresses(ipam: &mut dyn Ipam, net: &Network, endpoint: &Endpoint) {
    let addrs = [
        v4_pool(net).zip(endpoint.ipv4.map(IpAddr::V4)),
        v6_pool(net).zip(endpoint.ipv6.map(IpAddr::V6)),
    ];
    for (pool, addr) in addrs.into_iter().flatten() {
        if let Err(e) = ipam.release_address(&pool, addr) {
            tracing::warn!(error = %e, "releasing address of removed endpoint");
        }
    }
}

fn not_found(kind: &str, what: &str) -> Error {
    Error::NotFound(format!("{kind} {what} not found"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::driver::record::NULL_DRIVER;
    use crate::driver::{
        EndpointDescription, EndpointRequest, InterfaceDescription, InterfaceSource,
        JoinDescription, JoinRequest,
    };
    use crate::ipam::DefaultIpam;
    use crate::sandbox_layer::DryRun;
    use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering};

    /// A bridge-like driver that can be told to fail; counts live endpoints.
    #[derive(Default)]
    struct Flaky {
        fail_join: AtomicBool,
        fail_create: AtomicBool,
        endpoints: AtomicIsize,
        joined: AtomicIsize,
    }

    impl Driver for Flaky {
        fn name(&self) -> &str {
            "bridge"
        }
        fn create_network(&self, _: &NetworkRequest<'_>) -> Result<()> {
            if self.fail_create.load(Ordering::SeqCst) {
                return Err(Error::InvalidRequest("injected create failure".into()));
            }
            Ok(())
        }
        fn delete_network(&self, _: &str) -> Result<()> {
            Ok(())
        }
        fn create_endpoint(&self, _: &EndpointRequest<'_>) -> Result<EndpointDescription> {
            self.endpoints.fetch_add(1, Ordering::SeqCst);
            Ok(EndpointDescription::default())
        }
        fn join(&self, _: &JoinRequest<'_>) -> Result<JoinDescription> {
            if self.fail_join.load(Ordering::SeqCst) {
                return Err(Error::os(
                    "create tap eth0",
                    tapnet_sandbox::Error::Invalid("injected join failure".into()),
                ));
            }
            self.joined.fetch_add(1, Ordering::SeqCst);
            // An interface already named eth0 (the test sandbox layer touches nothing).
            Ok(JoinDescription {
                interface: Some(InterfaceDescription {
                    source: InterfaceSource::InSandbox {
                        name: "eth0".into(),
                    },
                    dst_prefix: String::new(),
                    mac: None,
                    mtu: None,
                    txqueuelen: None,
                    addresses: Vec::new(),
                }),
                ..JoinDescription::default()
            })
        }
        fn leave(&self, _: &str, _: &str) -> Result<()> {
            self.joined.fetch_sub(1, Ordering::SeqCst);
            Ok(())
        }
        fn delete_endpoint(&self, _: &str, _: &str) -> Result<()> {
            self.endpoints.fetch_sub(1, Ordering::SeqCst);
            Ok(())
        }
    }

    fn controller() -> (Controller, Arc<Flaky>) {
        let flaky = Arc::new(Flaky::default());
        let mut reg = DriverRegistry::with_sandbox_layer(SandboxLayer::new(DryRun));
        reg.register(flaky.clone());
        reg.register(Arc::new(NULL_DRIVER));
        let ctl = Controller::new(
            reg,
            Box::new(DefaultIpam::new()),
            &std::env::temp_dir().join(format!("tapnet-ctl-test-{}", model::new_id())),
        );
        (ctl, flaky)
    }

    async fn dual_stack(ctl: &Controller) {
        ctl.create_network(NetworkCreate {
            name: "n".into(),
            subnet: Some("10.1.0.0/24".parse().unwrap()),
            enable_ipv6: true,
            ipv6: Some(Ipv6Request {
                subnet: "fd00:1::/64".parse().unwrap(),
                gateway: None,
                ip_range: None,
                aux_addresses: BTreeMap::new(),
            }),
            ..NetworkCreate::default()
        })
        .await
        .unwrap();
        ctl.create_sandbox(Some("sb".into()), Some("/proc/self/ns/net".into()))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn failed_join_releases_addresses_and_records_nothing() {
        let (ctl, flaky) = controller();
        dual_stack(&ctl).await;
        let before = ctl.snapshot().await;
        flaky.fail_join.store(true, Ordering::SeqCst);
        let opts = ConnectOptions {
            ipv4: Some("10.1.0.7".parse().unwrap()),
            ipv6: Some("fd00:1::7".parse().unwrap()),
            ..ConnectOptions::default()
        };
        let err = ctl.connect("n", "sb", opts.clone()).await.unwrap_err();
        assert_eq!(err.status(), 500);
        assert!(err.to_string().contains("injected join failure"), "{err}");
        // Nothing recorded, the driver's endpoint deleted again.
        let after = ctl.snapshot().await;
        assert_eq!(after.networks, before.networks);
        assert_eq!(flaky.endpoints.load(Ordering::SeqCst), 0);
        assert_eq!(flaky.joined.load(Ordering::SeqCst), 0);
        // Both addresses were released: the same static request succeeds now.
        flaky.fail_join.store(false, Ordering::SeqCst);
        let ep = ctl.connect("n", "sb", opts).await.unwrap();
        assert_eq!(ep.ipv4, Some("10.1.0.7".parse().unwrap()));
        assert_eq!(ep.ipv6, Some("fd00:1::7".parse().unwrap()));
        assert_eq!(ep.mac, Some([0x02, 0x42, 10, 1, 0, 7]));
        assert_eq!(flaky.endpoints.load(Ordering::SeqCst), 1);
        // Disconnect releases them too.
        ctl.disconnect("n", "sb", false).await.unwrap();
        assert_eq!(flaky.endpoints.load(Ordering::SeqCst), 0);
        let ep = ctl
            .connect("n", "sb", ConnectOptions::default())
            .await
            .unwrap();
        assert_eq!(ep.ipv4, Some("10.1.0.2".parse().unwrap()));
        assert_eq!(ep.ipv6, Some("fd00:1::2".parse().unwrap()));
    }

    #[tokio::test]
    async fn failed_ipv6_allocation_releases_ipv4() {
        let (ctl, _) = controller();
        dual_stack(&ctl).await;
        let bad = ConnectOptions {
            ipv4: Some("10.1.0.9".parse().unwrap()),
            ipv6: Some("fd00:2::9".parse().unwrap()),
            ..ConnectOptions::default()
        };
        let err = ctl.connect("n", "sb", bad).await.unwrap_err();
        assert_eq!(err.status(), 400, "{err}");
        let ok = ConnectOptions {
            ipv4: Some("10.1.0.9".parse().unwrap()),
            ..ConnectOptions::default()
        };
        ctl.connect("n", "sb", ok).await.unwrap();
    }

    #[tokio::test]
    async fn connect_options_mac_and_aliases() {
        let (ctl, flaky) = controller();
        dual_stack(&ctl).await;
        ctl.create_sandbox(Some("sb2".into()), Some("/proc/self/ns/net".into()))
            .await
            .unwrap();
        let mac = [0x02, 0x42, 0xac, 0x11, 0, 0x99];
        let opts = ConnectOptions {
            ipv4: Some("10.1.0.7".parse().unwrap()),
            ipv6: Some("fd00:1::7".parse().unwrap()),
            mac: Some(mac),
            aliases: vec!["web".into(), "www".into()],
        };
        // The custom MAC overrides 02:42:<IPv4>; addresses and aliases are kept.
        let ep = ctl.connect("n", "sb", opts.clone()).await.unwrap();
        assert_eq!(ep.mac, Some(mac));
        assert_eq!(ep.ipv4, Some("10.1.0.7".parse().unwrap()));
        assert_eq!(ep.ipv6, Some("fd00:1::7".parse().unwrap()));
        assert_eq!(ep.aliases, ["web", "www"]);
        let rec = ctl.network("n").await.unwrap();
        assert_eq!(rec.endpoints[&ep.id], ep);
        // The same MAC on the same network: 409, nothing taken.
        let before = ctl.snapshot().await.networks;
        ctl.create_sandbox(Some("sb4".into()), Some("/proc/self/ns/net".into()))
            .await
            .unwrap();
        let e = ctl
            .connect(
                "n",
                "sb4",
                ConnectOptions {
                    mac: Some(mac),
                    ..ConnectOptions::default()
                },
            )
            .await
            .unwrap_err();
        assert_eq!(e.status(), 409, "{e}");
        assert!(e.to_string().contains("02:42:ac:11:00:99"), "{e}");
        assert_eq!(ctl.snapshot().await.networks, before);
        assert_eq!(flaky.endpoints.load(Ordering::SeqCst), 1);
        // Without a MAC: the default from the (first free) IPv4 address.
        let ep2 = ctl
            .connect("n", "sb2", ConnectOptions::default())
            .await
            .unwrap();
        assert_eq!(ep2.mac, Some([0x02, 0x42, 10, 1, 0, 2]));
        assert!(ep2.aliases.is_empty());
        // A MAC on a network without devices is refused.
        ctl.create_network(NetworkCreate {
            name: "nonet".into(),
            driver: "null".into(),
            ..NetworkCreate::default()
        })
        .await
        .unwrap();
        ctl.create_sandbox(Some("sb3".into()), Some("/proc/self/ns/net".into()))
            .await
            .unwrap();
        let e = ctl
            .connect(
                "nonet",
                "sb3",
                ConnectOptions {
                    mac: Some(mac),
                    ..ConnectOptions::default()
                },
            )
            .await
            .unwrap_err();
        assert_eq!(e.status(), 400, "{e}");
    }

    #[test]
    fn endpoint_mac_without_ipv4() {
        let net = Network {
            id: "n".into(),
            name: "n".into(),
            driver: "bridge".into(),
            created: String::new(),
            scope: "local".into(),
            internal: false,
            attachable: false,
            enable_ipv6: true,
            ipam_driver: "default".into(),
            ipam_options: BTreeMap::new(),
            subnet: None,
            gateway: None,
            ip_range: None,
            aux_addresses: BTreeMap::new(),
            ipv4_pool: None,
            ipv6: None,
            options: BTreeMap::new(),
            labels: BTreeMap::new(),
            endpoints: BTreeMap::new(),
        };
        let custom = [0x02, 0x42, 0xac, 0x11, 0, 0x99];
        // IPv6-only: the requested MAC, else a random 02:42: one; none without a device.
        assert_eq!(
            default_mac(&Flaky::default(), Some(custom), None, &net),
            Some(custom)
        );
        let random = default_mac(&Flaky::default(), None, None, &net).unwrap();
        assert_eq!(random[..2], [0x02, 0x42]);
        assert_eq!(default_mac(&NULL_DRIVER, Some(custom), None, &net), None);
        assert_eq!(
            default_mac(
                &Flaky::default(),
                Some(custom),
                Some("10.0.0.2".parse().unwrap()),
                &net
            ),
            Some(custom)
        );
    }

    #[tokio::test]
    async fn failed_driver_create_releases_pools() {
        let (ctl, flaky) = controller();
        flaky.fail_create.store(true, Ordering::SeqCst);
        let req = NetworkCreate {
            name: "n".into(),
            subnet: Some("10.1.0.0/24".parse().unwrap()),
            aux_addresses: BTreeMap::from([("r".into(), "10.1.0.5".parse().unwrap())]),
            ..NetworkCreate::default()
        };
        assert!(ctl.create_network(req.clone()).await.is_err());
        assert!(ctl.snapshot().await.networks.is_empty());
        flaky.fail_create.store(false, Ordering::SeqCst);
        ctl.create_network(req).await.unwrap();
    }

    #[tokio::test]
    async fn predefined_networks_once_and_not_removable() {
        let (ctl, _) = controller();
        ctl.ensure_default_networks(&DefaultBridge::default())
            .await
            .unwrap();
        // Idempotent; `host` is skipped (driver not registered here).
        ctl.ensure_default_networks(&DefaultBridge::default())
            .await
            .unwrap();
        let st = ctl.snapshot().await;
        let mut names: Vec<&str> = st.networks.values().map(|n| n.name.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["bridge", "none"]);
        let bridge = ctl.network("bridge").await.unwrap();
        assert_eq!(bridge.subnet, Some("172.17.0.0/16".parse().unwrap()));
        assert_eq!(
            bridge.options["com.docker.network.bridge.default_bridge"],
            "true"
        );
        let none = ctl.network("none").await.unwrap();
        assert_eq!(none.subnet, None);
        for n in ["bridge", "none"] {
            let e = ctl.delete_network(n).await.unwrap_err();
            assert_eq!(e.status(), 403);
            assert!(e.to_string().contains("pre-defined"), "{e}");
        }
        let e = ctl
            .create_network(NetworkCreate {
                name: "none2".into(),
                driver: "null".into(),
                ..NetworkCreate::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.status(), 403);
        // --bip / --fixed-cidr.
        let (ctl, _) = controller();
        let bridge = DefaultBridge::from_flags(
            Some("10.99.0.1/24".parse().unwrap()),
            Some("10.99.0.128/25".parse().unwrap()),
        );
        ctl.ensure_default_networks(&bridge).await.unwrap();
        let b = ctl.network("bridge").await.unwrap();
        assert_eq!(b.subnet, Some("10.99.0.0/24".parse().unwrap()));
        assert_eq!(b.gateway, Some("10.99.0.1".parse().unwrap()));
        assert_eq!(b.ip_range, Some("10.99.0.128/25".parse().unwrap()));
    }

    #[tokio::test]
    async fn ipam_state_rebuilds_from_records() {
        let (ctl, _) = controller();
        dual_stack(&ctl).await;
        ctl.connect("n", "sb", ConnectOptions::default())
            .await
            .unwrap();
        let mut net = ctl.network("n").await.unwrap();
        let mut fresh = DefaultIpam::new();
        restore_network_ipam(&mut fresh, &mut net).unwrap();
        let pool4 = net.ipv4_pool.clone().unwrap();
        let pool6 = net.ipv6.as_ref().unwrap().pool.clone();
        let none = BTreeMap::new();
        // Gateway and the endpoint's addresses are taken; the next ones are free.
        for taken in ["10.1.0.1", "10.1.0.2"] {
            let a: IpAddr = taken.parse().unwrap();
            assert!(fresh.request_address(&pool4, Some(a), &none).is_err());
        }
        assert_eq!(
            fresh.request_address(&pool4, None, &none).unwrap(),
            "10.1.0.3".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            fresh.request_address(&pool6, None, &none).unwrap(),
            "fd00:1::3".parse::<IpAddr>().unwrap()
        );
        // Replaying twice fails (overlap) and leaves the first replay intact.
        let mut again = net.clone();
        assert!(restore_network_ipam(&mut fresh, &mut again).is_err());
        assert!(fresh.request_address(&pool4, None, &none).is_ok());
    }

    fn controller_with_db(dir: &Path) -> Controller {
        let mut reg = DriverRegistry::with_sandbox_layer(SandboxLayer::new(DryRun));
        reg.register(Arc::new(Flaky::default()));
        reg.register(Arc::new(NULL_DRIVER));
        Controller::with_db(
            reg,
            Box::new(DefaultIpam::new()),
            &dir.join("exec"),
            Db::open(dir).unwrap(),
        )
    }

    /// The daemon's start sequence twice over one database: restore, then the
    /// pre-defined networks only if absent. The second start rebuilds the same model
    /// and the IPAM state (aux addresses, range, IPv6, every endpoint's addresses).
    #[tokio::test]
    async fn restore_then_default_networks_rebuilds_everything() {
        let dir = std::env::temp_dir().join(format!("tapnet-restore-{}", model::new_id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mac = [0x02, 0x42, 0xaa, 0xbb, 0xcc, 0x01];
        let (networks, sandboxes) = {
            let ctl = controller_with_db(&dir);
            ctl.restore().await.unwrap();
            ctl.ensure_default_networks(&DefaultBridge::default())
                .await
                .unwrap();
            ctl.create_network(NetworkCreate {
                name: "n".into(),
                subnet: Some("10.1.0.0/24".parse().unwrap()),
                ip_range: Some("10.1.0.0/28".parse().unwrap()),
                aux_addresses: BTreeMap::from([("r".into(), "10.1.0.2".parse().unwrap())]),
                enable_ipv6: true,
                ipv6: Some(Ipv6Request {
                    subnet: "fd00:1::/64".parse().unwrap(),
                    gateway: None,
                    ip_range: None,
                    aux_addresses: BTreeMap::from([("x".into(), "fd00:1::2".parse().unwrap())]),
                }),
                ..NetworkCreate::default()
            })
            .await
            .unwrap();
            for sb in ["sb", "sb2", "sb3"] {
                ctl.create_sandbox(Some(sb.into()), Some("/proc/self/ns/net".into()))
                    .await
                    .unwrap();
            }
            let ep = ctl
                .connect(
                    "n",
                    "sb",
                    ConnectOptions {
                        mac: Some(mac),
                        aliases: vec!["web".into()],
                        ..ConnectOptions::default()
                    },
                )
                .await
                .unwrap();
            assert_eq!(ep.ipv4, Some("10.1.0.3".parse().unwrap()));
            assert_eq!(ep.ipv6, Some("fd00:1::3".parse().unwrap()));
            ctl.connect("none", "sb3", ConnectOptions::default())
                .await
                .unwrap();
            let st = ctl.snapshot().await;
            (st.networks, st.sandboxes)
        };
        let ctl = controller_with_db(&dir);
        let report = ctl.restore().await.unwrap();
        assert_eq!(report.endpoints, 2);
        assert_eq!(report.dropped_endpoints, 0);
        // Flags differ, but the bridge network exists: it is left as recorded.
        let flags = DefaultBridge::from_flags(Some("10.99.0.1/24".parse().unwrap()), None);
        ctl.ensure_default_networks(&flags).await.unwrap();
        let st = ctl.snapshot().await;
        assert_eq!(st.networks, networks);
        assert_eq!(st.sandboxes, sandboxes);
        // Aux, gateway and taken addresses are not handed out again.
        let ep = ctl
            .connect("n", "sb2", ConnectOptions::default())
            .await
            .unwrap();
        assert_eq!(ep.ipv4, Some("10.1.0.4".parse().unwrap()));
        assert_eq!(ep.ipv6, Some("fd00:1::4".parse().unwrap()));
        ctl.create_sandbox(Some("sb4".into()), Some("/proc/self/ns/net".into()))
            .await
            .unwrap();
        let e = ctl
            .connect(
                "n",
                "sb4",
                ConnectOptions {
                    mac: Some(mac),
                    ..ConnectOptions::default()
                },
            )
            .await
            .unwrap_err();
        assert_eq!(e.status(), 409, "{e}");
        assert!(e.to_string().contains("02:42:aa:bb:cc:01"), "{e}");
        // Every request was committed: a third start sees the same model.
        let st = ctl.snapshot().await;
        drop(ctl);
        let ctl = controller_with_db(&dir);
        ctl.restore().await.unwrap();
        let again = ctl.snapshot().await;
        assert_eq!(again.networks, st.networks);
        assert_eq!(again.sandboxes, st.sandboxes);
        drop(ctl);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
