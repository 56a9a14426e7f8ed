//! The CNM `NetworkController`.
//!
//! Contract: [`Controller`] owns the drivers, the IPAM, the [`Store`] and the open
//! sandbox namespaces. Every mutation holds one async mutex for its whole duration
//! (mutations are serialized; reads take a snapshot). Blocking OS work (namespaces,
//! taps, datapath calls, database commits) runs on `spawn_blocking`, never on a tokio
//! worker. Each operation either completes or fails leaving the model, IPAM and data
//! plane as they were (every step that fails undoes the steps before it).
//!
//! Persistence: with a database ([`Controller::with_db`]) every mutation ends in
//! exactly one [`Db::commit`], made after the OS work succeeded; if the commit fails
//! the OS work is undone (where it can be: a destroyed namespace cannot come back, so
//! a failed commit of a sandbox removal leaves the record, and the next start cleans
//! it up as a sandbox whose namespace is gone). The in-memory model changes only
//! after the commit. [`Controller::restore`] rebuilds everything from the database
//! on start (see its doc).

use crate::driver::{Driver, DriverRegistry, FdbRow, NetworkReport, Restored};
use crate::error::{Error, Result};
use crate::ipam::{Ipam, PoolRequest};
use crate::model::{self, Endpoint, Network, Sandbox, Store};
use crate::store::{Change, Db};
use ipnet::Ipv4Net;
use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
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
            state: Mutex::new(State {
                store: Store::default(),
                ipam,
                netns: HashMap::new(),
            }),
        }
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
        if req.enable_ipv6 {
            return Err(Error::InvalidRequest(
                "IPv6 networks are not supported yet; drop EnableIPv6".into(),
            ));
        }
        driver.validate_options(&req.options)?;
        let pool = st
            .ipam
            .request_pool(&PoolRequest {
                subnet: req.subnet,
                gateway: req.gateway,
                ip_range: req.ip_range,
            })
            .map_err(|e| Error::ipam(format!("create network {}", req.name), e))?;
        let network = Network {
            id: model::new_id(),
            name: req.name,
            driver: driver_name.to_string(),
            created: model::now_rfc3339(),
            scope: driver.scope().to_string(),
            internal: req.internal,
            attachable: req.attachable,
            enable_ipv6: req.enable_ipv6,
            ipam_driver: ipam_driver.to_string(),
            ipam_options: req.ipam_options,
            subnet: pool.subnet,
            gateway: pool.gateway,
            ip_range: pool.ip_range,
            options: req.options,
            labels: req.labels,
            endpoints: BTreeMap::new(),
        };
        let (d, n) = (Arc::clone(&driver), network.clone());
        if let Err(e) = blocking("create network", move || d.create_network(&n)).await {
            let _ = st.ipam.release_pool(pool.subnet);
            return Err(e);
        }
        let op = format!("create network {}", network.name);
        if let Err(e) = self
            .commit(&op, vec![Change::PutNetwork(network.clone())])
            .await
        {
            let (d, nid) = (Arc::clone(&driver), network.id.clone());
            if let Err(undo) = blocking("undo create network", move || d.delete_network(&nid)).await
            {
                tracing::warn!(error = %undo, "undoing network creation after a failed commit");
            }
            let _ = st.ipam.release_pool(pool.subnet);
            return Err(e);
        }
        let id = network.id.clone();
        tracing::info!(network = %network.name, id = %id, subnet = %network.subnet, "network created");
        st.store.networks.insert(id.clone(), network);
        Ok(id)
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
            if let Err(undo) =
                blocking("undo remove network", move || driver.create_network(&n)).await
            {
                tracing::warn!(error = %undo, "re-creating the switch after a failed commit");
            }
            return Err(e);
        }
        if let Err(e) = st.ipam.release_pool(network.subnet) {
            tracing::warn!(error = %e, "releasing pool of deleted network");
        }
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
        let sandbox = Sandbox {
            id: id.clone(),
            name,
            netns_path: ns.path().to_path_buf(),
            owned,
            created: model::now_rfc3339(),
        };
        let op = format!("create sandbox {}", sandbox.name);
        if let Err(e) = self
            .commit(&op, vec![Change::PutSandbox(sandbox.clone())])
            .await
        {
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
        tracing::info!(sandbox = %sandbox.name, "sandbox removed");
        Ok(())
    }

    /// Connect a sandbox to a network (CNM `CreateEndpoint` + `Join`).
    pub async fn connect(
        &self,
        network: &str,
        sandbox: &str,
        ipv4: Option<Ipv4Addr>,
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
        let ns = st.netns.get(&sid).cloned().ok_or_else(|| {
            Error::InvalidRequest(format!("sandbox {} has no open namespace", sb.name))
        })?;
        let driver = self.drivers.get(&net.driver)?;
        let ip = st
            .ipam
            .request_address(net.subnet, ipv4)
            .map_err(|e| Error::ipam(format!("connect {} to network {}", sb.name, net.name), e))?;
        let mut endpoint = Endpoint {
            id: model::new_id(),
            network_id: nid.clone(),
            sandbox_id: sid.clone(),
            interface: String::new(),
            mac: model::mac_for(ip),
            ipv4: ip,
            prefix_len: net.subnet.prefix_len(),
        };
        let (d, n, ep, sb_name) = (
            Arc::clone(&driver),
            net.clone(),
            endpoint.clone(),
            sb.name.clone(),
        );
        let joined = blocking("connect", move || {
            d.create_endpoint(&n, &ep)?;
            match d.join(&n, &ep, &ns, &sb_name) {
                Ok(ifname) => Ok(ifname),
                Err(e) => {
                    if let Err(cleanup) = d.delete_endpoint(&n.id, &ep.id) {
                        tracing::warn!(error = %cleanup, "cleanup after failed join");
                    }
                    Err(e)
                }
            }
        })
        .await;
        match joined {
            Ok(ifname) => endpoint.interface = ifname,
            Err(e) => {
                let _ = st.ipam.release_address(net.subnet, ip);
                return Err(e);
            }
        }
        let op = format!("connect {} to network {}", sb.name, net.name);
        if let Err(e) = self
            .commit(&op, vec![Change::PutEndpoint(endpoint.clone())])
            .await
        {
            let (n, e_id) = (nid.clone(), endpoint.id.clone());
            let undone = blocking("undo connect", move || {
                driver.leave(&n, &e_id)?;
                driver.delete_endpoint(&n, &e_id)
            })
            .await;
            if let Err(undo) = undone {
                tracing::warn!(error = %undo, "removing the endpoint after a failed commit");
            }
            let _ = st.ipam.release_address(net.subnet, ip);
            return Err(e);
        }
        tracing::info!(network = %net.name, sandbox = %sb.name, interface = %endpoint.interface, ip = %ip, "connected");
        if let Some(n) = st.store.networks.get_mut(&nid) {
            n.endpoints.insert(endpoint.id.clone(), endpoint.clone());
        }
        Ok(endpoint)
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
        if let Err(e) = self
            .commit(&op, vec![Change::DeleteEndpoint(endpoint.id.clone())])
            .await
        {
            self.rejoin_all(&st.store, &st.netns, &pair, &sb_name).await;
            return Err(e);
        }
        forget_endpoint(&mut st, &nid, &endpoint);
        tracing::info!(network = %network, sandbox = %sb_name, "disconnected");
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
        let (n, e) = (nid.to_string(), endpoint.id.clone());
        let left = blocking("disconnect", move || {
            driver.leave(&n, &e)?;
            driver.delete_endpoint(&n, &e)
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
            let rejoined = blocking("rejoin", move || {
                driver.create_endpoint(&n, &e)?;
                driver.join(&n, &e, &ns, &name)
            })
            .await;
            if let Err(err) = rejoined {
                tracing::warn!(error = %err, sandbox = sb_name, "re-joining an endpoint after a failed mutation");
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
    /// logged. IPAM is rebuilt by replaying every network's pool and every endpoint's
    /// address. Each network's switch is re-created, then every endpoint is restored
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
                    tracing::info!(network = %net.name, ip = %e.ipv4, "endpoint of a removed sandbox dropped; its address is free");
                    changes.push(Change::DeleteEndpoint(id));
                }
            }
        }

        let mut st = self.state.lock().await;
        // IPAM replay: pools, then addresses.
        let mut unusable: Vec<String> = Vec::new();
        for net in store.networks.values_mut() {
            let req = PoolRequest {
                subnet: Some(net.subnet),
                gateway: Some(net.gateway),
                ip_range: net.ip_range,
            };
            if let Err(e) = st.ipam.request_pool(&req) {
                tracing::error!(network = %net.name, error = %e, "store: network's pool cannot be restored; network left out");
                unusable.push(net.id.clone());
                continue;
            }
            let mut bad: Vec<String> = Vec::new();
            for e in net.endpoints.values() {
                if let Err(err) = st.ipam.request_address(net.subnet, Some(e.ipv4)) {
                    tracing::error!(network = %net.name, ip = %e.ipv4, error = %err, "store: endpoint address cannot be restored; endpoint left out");
                    bad.push(e.id.clone());
                }
            }
            for id in bad {
                net.endpoints.remove(&id);
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
            if let Err(e) = blocking("restore network", move || d.create_network(&n)).await {
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
        let results = blocking("restore endpoints", move || Ok(restore_parallel(jobs))).await?;
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
                        let _ = st.ipam.release_address(n.subnet, job.endpoint.ipv4);
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
fn restore_parallel(jobs: Vec<RestoreJob>) -> Vec<(RestoreJob, Result<Restored>)> {
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
                let r = job.driver.restore_endpoint(
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
    let subnet = net.subnet;
    if let Err(e) = st.ipam.release_address(subnet, endpoint.ipv4) {
        tracing::warn!(error = %e, "releasing address of removed endpoint");
    }
}

fn not_found(kind: &str, what: &str) -> Error {
    Error::NotFound(format!("{kind} {what} not found"))
}
