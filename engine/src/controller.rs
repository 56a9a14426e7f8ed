//! The CNM `NetworkController`.
//!
//! Contract: [`Controller`] owns the drivers, the IPAM, the [`Store`] and the open
//! sandbox namespaces. Every mutation holds one async mutex for its whole duration
//! (mutations are serialized; reads take a snapshot). Blocking OS work (namespaces,
//! taps, datapath calls) runs on `spawn_blocking`, never on a tokio worker. Each
//! operation either completes or fails leaving the model, IPAM and data plane as
//! they were (every step that fails undoes the steps before it).

use crate::driver::{Driver, DriverRegistry, FdbRow, NetworkReport};
use crate::error::{Error, Result};
use crate::ipam::{Ipam, PoolRequest};
use crate::model::{self, Endpoint, Network, Sandbox, Store};
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

/// Endpoint settings of a connect request beyond the addresses (Docker's
/// `EndpointConfig.MacAddress` and `Aliases`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointOptions {
    /// The tap's MAC (already checked: unicast, not zero); default `02:42:<IPv4>`.
    pub mac: Option<[u8; 6]>,
    /// Network-scoped aliases.
    pub aliases: Vec<String>,
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
    pub fn new(drivers: DriverRegistry, ipam: Box<dyn Ipam>, exec_root: &Path) -> Controller {
        Controller {
            drivers,
            exec_root: exec_root.to_path_buf(),
            state: Mutex::new(State {
                store: Store::default(),
                ipam,
                netns: HashMap::new(),
            }),
        }
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
        let nid = id.clone();
        blocking("delete network", move || driver.delete_network(&nid)).await?;
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
        tracing::info!(sandbox = %sandbox.name, path = %sandbox.netns_path.display(), owned, "sandbox created");
        st.netns.insert(id.clone(), Arc::new(ns));
        st.store.sandboxes.insert(id.clone(), sandbox);
        Ok(id)
    }

    /// Remove a sandbox: disconnect it from every network, then remove its namespace
    /// if tapnet created it.
    pub async fn delete_sandbox(&self, what: &str) -> Result<()> {
        let mut st = self.state.lock().await;
        let sid = st.store.resolve_sandbox(what)?;
        let network_ids: Vec<String> = st
            .store
            .endpoints_of_sandbox(&sid)
            .into_iter()
            .map(|(n, _)| n.id.clone())
            .collect();
        for nid in network_ids {
            self.disconnect_locked(&mut st, &nid, &sid, true).await?;
        }
        let sandbox = st
            .store
            .sandboxes
            .get(&sid)
            .cloned()
            .ok_or_else(|| not_found("sandbox", what))?;
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
                    st.netns.insert(sid, ns);
                }
                return Err(e);
            }
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
        self.connect_with(network, sandbox, ipv4, EndpointOptions::default())
            .await
    }

    /// [`Controller::connect`] with a chosen MAC and aliases. A MAC already used by
    /// another endpoint of the network is a conflict (409).
    pub async fn connect_with(
        &self,
        network: &str,
        sandbox: &str,
        ipv4: Option<Ipv4Addr>,
        opts: EndpointOptions,
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
        if let Some(mac) = opts.mac {
            if net.endpoints.values().any(|e| e.mac == mac) {
                return Err(Error::Conflict(format!(
                    "MAC address {} is already used on network {}",
                    model::format_mac(&mac),
                    net.name
                )));
            }
        }
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
            mac: opts.mac.unwrap_or_else(|| model::mac_for(ip)),
            ipv4: ip,
            prefix_len: net.subnet.prefix_len(),
            aliases: opts.aliases,
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
        self.disconnect_locked(&mut st, &nid, &sid, force).await
    }

    async fn disconnect_locked(
        &self,
        st: &mut State,
        nid: &str,
        sid: &str,
        force: bool,
    ) -> Result<()> {
        let net = st
            .store
            .networks
            .get(nid)
            .cloned()
            .ok_or_else(|| not_found("network", nid))?;
        let sb_name = st
            .store
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
        if let Err(e) = st.ipam.release_address(net.subnet, endpoint.ipv4) {
            tracing::warn!(error = %e, "releasing address of removed endpoint");
        }
        if let Some(n) = st.store.networks.get_mut(nid) {
            n.endpoints.remove(&endpoint.id);
        }
        tracing::info!(network = %net.name, sandbox = %sb_name, "disconnected");
        Ok(())
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

fn not_found(kind: &str, what: &str) -> Error {
    Error::NotFound(format!("{kind} {what} not found"))
}
