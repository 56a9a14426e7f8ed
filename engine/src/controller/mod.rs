//! The CNM `NetworkController`.
//!
//! Contract: [`Controller`] owns the drivers, the IPAM, the [`KvStore`] and the open
//! sandbox namespaces. Each operation lives in its own module and runs as a
//! [`Txn`]: a sequence of steps, each recording its compensation, ending in the store
//! commit (the last step, after the OS work); a failure anywhere unwinds every
//! completed step, so the model, IPAM, store and data plane are as they were.
//!
//! * **To the end.** Every public mutation runs on a task of its own: a client that
//!   goes away (the HTTP handler is dropped) never stops an operation half-way.
//! * **Reads never wait.** The model is an immutable [`Store`] published in an
//!   `ArcSwap` after each commit; [`Controller::snapshot`] and every read load it
//!   without taking a lock. Each publish is also broadcast, model before and after,
//!   to [`Controller::subscribe_changes`] receivers (`GET /events`), in order.
//! * **Locks per object.** A mutation takes the locks of the objects it changes, all
//!   at once in one global order (see [`Locks`]): `n/<id>` per network, `s/<id>` per
//!   sandbox, `networks` / `sandboxes` for creating and removing (name uniqueness).
//!   Connects on different networks and sandboxes run concurrently. An operation
//!   resolves names on a snapshot, locks, then resolves again on the fresh snapshot.
//! * **Blocking work** (namespaces, taps, driver calls, store transactions) runs on
//!   `spawn_blocking`, never on a tokio worker; work that input can stall (opening a
//!   `NetnsPath` the user named) is checked and done before any lock is taken.
//!
//! Networks: a driver with addresses gets an IPv4 pool from IPAM, its gateway and
//! auxiliary addresses reserved in it, and with `EnableIPv6` an IPv6 pool likewise;
//! `null`/`host` networks get none, and at most one network of each. The pre-defined
//! networks (`none`, `host`, `bridge`) are made by [`Controller::ensure_default_networks`]
//! through the ordinary create path, only if absent, and cannot be removed (403).
//! Endpoints: connect = allocate addresses → `create_endpoint` → `join` → publish
//! ports → commit. The IPAM state is a function of the records:
//! [`restore_network_ipam`] replays one network (the one replay used by
//! [`Controller::restore`]).

mod connect;
mod disconnect;
mod global;
mod handoff;
mod ipam_steps;
pub mod keys;
mod network_create;
mod network_remove;
mod prune;
mod restore;
#[cfg(test)]
mod rollback_tests;
mod sandbox_create;
mod sandbox_remove;
#[cfg(test)]
mod tests;

pub use global::{ClusterNode, GlobalEndpoint};
pub use handoff::Vanished;
pub use ipam_steps::{restore_network_ipam, IpamTxn, Taken};
pub use restore::RestoreReport;

use crate::driver::{Driver, DriverRegistry, FdbRow, NetworkReport};
use crate::error::{Error, Result};
use crate::ipam::Ipam;
use crate::model::{self, Network, Sandbox, Store};
use crate::ports::{self, NatProto as _, PortBinding};
use crate::sandbox_files;
use crate::store::etcd::EtcdStore;
use crate::store::{Change, Db, KvStore};
use crate::txn::{blocking, Txn};
use arc_swap::ArcSwap;
use ipnet::{Ipv4Net, Ipv6Net};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use tapnet_sandbox::netns::Netns;

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
    /// `Scope` asked for (`None`: the driver's). Only the driver's own scope
    /// (`local`, or `global` for a global-scope driver) is accepted.
    pub scope: Option<String>,
    /// A configuration network (`ConfigOnly`): record the IPAM settings, options
    /// and labels; driver `null`, no data plane, no pools taken, no endpoints.
    pub config_only: bool,
    /// Take the IPAM settings, options and labels from this configuration network
    /// (`ConfigFrom.Network`, by name); nothing of those may be given besides.
    pub config_from: Option<String>,
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
    /// The interface's name in the sandbox
    /// (`EndpointConfig.DriverOpts["com.docker.network.endpoint.ifname"]`; already a
    /// valid interface name). Default: the next free `<prefix>N`.
    pub ifname: Option<String>,
    /// Link-local addresses to add to the interface
    /// (`EndpointConfig.IPAMConfig.LinkLocalIPs`; already checked: 169.254.0.0/16 or
    /// fe80::/10, no duplicates).
    pub link_local_ips: Vec<IpAddr>,
}

/// The one endpoint driver option tapnet implements (Docker 27): the name of the
/// endpoint's interface in the sandbox.
pub const IFNAME_OPTION: &str = "com.docker.network.endpoint.ifname";

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

/// Lock a std mutex, surviving poisoning (a panicked holder left consistent data:
/// every critical section here is a plain map or IPAM call).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Per-object async locks (see the module doc). Keys are taken all at once, sorted,
/// so two operations never wait for each other in a cycle.
#[derive(Debug, Default)]
pub struct Locks {
    map: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Guards of [`Locks::acquire`]; released on drop.
#[derive(Debug)]
pub struct Held(#[allow(dead_code)] Vec<tokio::sync::OwnedMutexGuard<()>>);

impl Locks {
    /// Lock every key of `keys` (any order, duplicates allowed).
    pub async fn acquire(&self, keys: impl IntoIterator<Item = String>) -> Held {
        let mut keys: Vec<String> = keys.into_iter().collect();
        keys.sort();
        keys.dedup();
        let mutexes: Vec<Arc<tokio::sync::Mutex<()>>> = {
            let mut map = lock(&self.map);
            keys.iter()
                .map(|k| Arc::clone(map.entry(k.clone()).or_default()))
                .collect()
        };
        let mut held = Vec::with_capacity(mutexes.len());
        for m in mutexes {
            held.push(m.lock_owned().await);
        }
        Held(held)
    }

    /// Forget the lock of an object that is gone (its holder may still hold it).
    pub fn forget(&self, key: &str) {
        lock(&self.map).remove(key);
    }
}

/// The lock key of a network.
fn net_key(id: &str) -> String {
    format!("n/{id}")
}

/// The lock key of a global network's DNS names: held from reading the names to handing
/// them to the driver, so a whole set read before an event's delta never lands after it.
fn dns_key(id: &str) -> String {
    format!("d/{id}")
}

/// The lock key of a sandbox.
fn sb_key(id: &str) -> String {
    format!("s/{id}")
}

/// Lock key for creating and removing networks (name uniqueness).
const NETWORKS_LOCK: &str = "networks";
/// Lock key for creating sandboxes (name and host-port uniqueness).
const SANDBOXES_LOCK: &str = "sandboxes";

/// Everything the operations share; the [`Controller`] is a handle to it.
pub(crate) struct Inner {
    drivers: DriverRegistry,
    exec_root: PathBuf,
    /// The store; `None`: in memory only (unit tests).
    store: Option<Arc<dyn KvStore>>,
    /// The cluster store (`--cluster-store`) for global networks; `None`: local only.
    cluster: Option<ClusterNode>,
    /// The ids of the global networks (recorded in the cluster store, not locally).
    global: Mutex<HashSet<String>>,
    /// Endpoints restored from the local store whose (global) network is not known
    /// yet: restored by [`Controller::start_cluster_sync`] once the networks are loaded.
    pending_global: Mutex<Vec<model::Endpoint>>,
    /// What this daemon knows of the cluster store (endpoints of global networks,
    /// nodes), kept up to date from the watch.
    view: Mutex<global::ClusterView>,
    /// The host's nameservers: a sandbox's resolv.conf before it joins a bridge network.
    nameservers: Vec<IpAddr>,
    ipam: Arc<Mutex<Box<dyn Ipam>>>,
    /// Open namespaces by sandbox id.
    netns: Mutex<HashMap<String, Arc<Netns>>>,
    /// The published model.
    model: ArcSwap<Store>,
    /// Serialises publishing (each publish applies its change to the latest model).
    publishing: Mutex<()>,
    /// Every published change (model before and after), for `GET /events`.
    changes: tokio::sync::broadcast::Sender<ModelChange>,
    locks: Locks,
}

/// One published change of the model: the model before and after it (see
/// [`Controller::subscribe_changes`]).
#[derive(Debug, Clone)]
pub struct ModelChange {
    /// The model before the change.
    pub before: Arc<Store>,
    /// The model after it.
    pub after: Arc<Store>,
}

/// Changes a slow [`Controller::subscribe_changes`] receiver may lag behind by
/// before it misses some (it is then told how many it missed).
pub const CHANGES_BACKLOG: usize = 1024;

/// The network controller (see the module doc).
#[derive(Clone)]
pub struct Controller {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller")
            .field("drivers", &self.inner.drivers)
            .field("exec_root", &self.inner.exec_root)
            .finish_non_exhaustive()
    }
}

/// Run an operation on a task of its own, so that it ends (committed or rolled back)
/// even if the caller's future is dropped.
async fn to_the_end<T: Send + 'static>(
    op: &'static str,
    f: impl std::future::Future<Output = Result<T>> + Send + 'static,
) -> Result<T> {
    tokio::spawn(f).await.map_err(|e| Error::Task {
        op: op.to_string(),
        message: e.to_string(),
    })?
}

impl Controller {
    /// A controller with these drivers and IPAM; namespaces it creates go under
    /// `<exec_root>/netns`. Nothing is persisted (see [`Controller::with_store`]).
    pub fn new(drivers: DriverRegistry, ipam: Box<dyn Ipam>, exec_root: &Path) -> Controller {
        Controller::build(drivers, ipam, exec_root, None)
    }

    fn build(
        drivers: DriverRegistry,
        ipam: Box<dyn Ipam>,
        exec_root: &Path,
        store: Option<Arc<dyn KvStore>>,
    ) -> Controller {
        Controller {
            inner: Arc::new(Inner {
                drivers,
                exec_root: exec_root.to_path_buf(),
                store,
                cluster: None,
                global: Mutex::new(HashSet::new()),
                pending_global: Mutex::new(Vec::new()),
                view: Mutex::default(),
                nameservers: Vec::new(),
                ipam: Arc::new(Mutex::new(ipam)),
                netns: Mutex::new(HashMap::new()),
                model: ArcSwap::from_pointee(Store::default()),
                publishing: Mutex::new(()),
                changes: tokio::sync::broadcast::channel(CHANGES_BACKLOG).0,
                locks: Locks::default(),
            }),
        }
    }

    /// Use `nameservers` in the resolv.conf of sandboxes not on a bridge network.
    /// Call while building (before the controller is shared).
    pub fn with_nameservers(mut self, nameservers: Vec<IpAddr>) -> Controller {
        match Arc::get_mut(&mut self.inner) {
            Some(inner) => inner.nameservers = nameservers,
            None => tracing::error!("with_nameservers on a shared controller: ignored"),
        }
        self
    }

    /// Hold `cluster` (`--cluster-store`) for global networks; local networks stay in
    /// the local store. Call while building (before the controller is shared).
    pub fn with_cluster_store(mut self, cluster: Option<ClusterNode>) -> Controller {
        match Arc::get_mut(&mut self.inner) {
            Some(inner) => inner.cluster = cluster,
            None => tracing::error!("with_cluster_store on a shared controller: ignored"),
        }
        self
    }

    /// The cluster store, if the daemon has one.
    pub fn cluster_store(&self) -> Option<&Arc<EtcdStore>> {
        self.inner.cluster.as_ref().map(|c| &c.store)
    }

    /// A controller that records every mutation in `db`. Call
    /// [`Controller::restore`] before serving.
    pub fn with_db(
        drivers: DriverRegistry,
        ipam: Box<dyn Ipam>,
        exec_root: &Path,
        db: Db,
    ) -> Controller {
        Controller::with_store(drivers, ipam, exec_root, Arc::new(db))
    }

    /// A controller that records every mutation in `store`. Call
    /// [`Controller::restore`] before serving.
    pub fn with_store(
        drivers: DriverRegistry,
        ipam: Box<dyn Ipam>,
        exec_root: &Path,
        store: Arc<dyn KvStore>,
    ) -> Controller {
        Controller::build(drivers, ipam, exec_root, Some(store))
    }

    /// Every change published from now on (after its commit), in order.
    pub fn subscribe_changes(&self) -> tokio::sync::broadcast::Receiver<ModelChange> {
        self.inner.changes.subscribe()
    }

    /// The published model (never waits for a mutation).
    pub async fn snapshot(&self) -> Arc<Store> {
        self.inner.model()
    }

    /// Resolve a network and return a copy of it.
    pub async fn network(&self, what: &str) -> Result<Network> {
        let store = self.inner.model();
        let id = store.resolve_network(what)?;
        store
            .networks
            .get(&id)
            .cloned()
            .ok_or_else(|| not_found("network", what))
    }

    /// Resolve a sandbox and return a copy of it.
    pub async fn sandbox(&self, what: &str) -> Result<Sandbox> {
        let store = self.inner.model();
        let id = store.resolve_sandbox(what)?;
        store
            .sandboxes
            .get(&id)
            .cloned()
            .ok_or_else(|| not_found("sandbox", what))
    }

    /// Create a network (CNM `NewNetwork`). Returns its id.
    pub async fn create_network(&self, req: NetworkCreate) -> Result<String> {
        let inner = Arc::clone(&self.inner);
        to_the_end("create network", async move {
            inner.create_network(req, None).await
        })
        .await
    }

    /// [`Controller::create_network`] with the id chosen by the caller (Docker's
    /// `NetworkID`, through the plugin); 409 if a network has it already.
    pub async fn create_network_as(&self, id: String, req: NetworkCreate) -> Result<String> {
        let inner = Arc::clone(&self.inner);
        to_the_end("create network", async move {
            inner.create_network(req, Some(id)).await
        })
        .await
    }

    /// Create the pre-defined networks that do not exist yet (`none`, `host`,
    /// `bridge`), through the ordinary create path (so each is committed to the
    /// store like any network). Drivers that are not registered are skipped.
    /// Existing networks (e.g. restored from the store: call this after
    /// [`Controller::restore`]) are left as they are; `bridge` settings only apply
    /// to a `bridge` network created now.
    pub async fn ensure_default_networks(&self, bridge: &DefaultBridge) -> Result<()> {
        network_create::ensure_default_networks(self, bridge).await
    }

    /// Delete a network (CNM `Delete`); refused while endpoints are attached.
    pub async fn delete_network(&self, what: &str) -> Result<()> {
        let (inner, what) = (Arc::clone(&self.inner), what.to_string());
        to_the_end("remove network", async move {
            inner.delete_network(&what).await
        })
        .await
    }

    /// Remove each of the networks `ids` that is not pre-defined and has no endpoints
    /// (one transaction per network); returns the names of those removed.
    pub async fn prune(&self, ids: Vec<String>) -> Vec<String> {
        let inner = Arc::clone(&self.inner);
        to_the_end("prune networks", async move { Ok(inner.prune(ids).await) })
            .await
            .unwrap_or_default()
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
        let inner = Arc::clone(&self.inner);
        to_the_end("create sandbox", async move {
            inner
                .create_sandbox(name, netns_path, port_bindings, false)
                .await
        })
        .await
    }

    /// Adopt the namespace at `netns_path` as a hand-off sandbox (see
    /// [`model::Sandbox::handoff`]): on connect, each endpoint's device is made in the
    /// daemon's own namespace and handed to the caller, who moves it in and configures
    /// it (Docker `Join`). Returns its id.
    pub async fn adopt_handoff_sandbox(&self, name: String, netns_path: PathBuf) -> Result<String> {
        let inner = Arc::clone(&self.inner);
        to_the_end("create sandbox", async move {
            inner
                .create_sandbox(Some(name), Some(netns_path), Vec::new(), true)
                .await
        })
        .await
    }

    /// Remove a sandbox: disconnect it from every network, then remove its namespace
    /// if tapnet created it. One transaction for all of it.
    pub async fn delete_sandbox(&self, what: &str) -> Result<()> {
        let (inner, what) = (Arc::clone(&self.inner), what.to_string());
        to_the_end("remove sandbox", async move {
            inner.delete_sandbox(&what).await
        })
        .await
    }

    /// Remove a sandbox as `DELETE /sandboxes/{id}` does: one whose namespace tapnet
    /// made is refused (409, naming the pids) while processes run in it, unless
    /// `force`, which ends them first (SIGTERM, then SIGKILL); then as
    /// [`Controller::delete_sandbox`].
    pub async fn remove_sandbox(&self, what: &str, force: bool) -> Result<()> {
        let (inner, what) = (Arc::clone(&self.inner), what.to_string());
        to_the_end("remove sandbox", async move {
            inner.check_sandbox_processes(&what, force).await?;
            inner.delete_sandbox(&what).await
        })
        .await
    }

    /// Connect a sandbox to a network (CNM `CreateEndpoint` + `Join`) with the
    /// static addresses, MAC and aliases of `opts`. A MAC already used by another
    /// endpoint of the network is a conflict (409).
    pub async fn connect(
        &self,
        network: &str,
        sandbox: &str,
        opts: ConnectOptions,
    ) -> Result<model::Endpoint> {
        let (inner, n, s) = (
            Arc::clone(&self.inner),
            network.to_string(),
            sandbox.to_string(),
        );
        to_the_end(
            "connect",
            async move { inner.connect(&n, &s, opts, None).await },
        )
        .await
    }

    /// [`Controller::connect`] with the endpoint's id chosen by the caller (Docker's
    /// `EndpointID`, through the plugin); 409 if an endpoint has it already.
    pub async fn connect_as(
        &self,
        network: &str,
        sandbox: &str,
        opts: ConnectOptions,
        endpoint_id: String,
    ) -> Result<model::Endpoint> {
        let (inner, n, s) = (
            Arc::clone(&self.inner),
            network.to_string(),
            sandbox.to_string(),
        );
        to_the_end("connect", async move {
            inner.connect(&n, &s, opts, Some(endpoint_id)).await
        })
        .await
    }

    /// Disconnect a sandbox from a network (CNM `Leave` + `Delete` endpoint).
    pub async fn disconnect(&self, network: &str, sandbox: &str, force: bool) -> Result<()> {
        let (inner, n, s) = (
            Arc::clone(&self.inner),
            network.to_string(),
            sandbox.to_string(),
        );
        to_the_end("disconnect", async move {
            inner.disconnect(&n, &s, force).await
        })
        .await
    }

    /// Rename a network (the name its runtime knows it by; see `handoff`).
    pub async fn rename_network(&self, what: &str, name: &str) -> Result<()> {
        let (inner, what, name) = (Arc::clone(&self.inner), what.to_string(), name.to_string());
        to_the_end("rename network", async move {
            inner.rename_network(&what, &name).await
        })
        .await
    }

    /// Rename a sandbox (the name its runtime knows it by; see `handoff`).
    pub async fn rename_sandbox(&self, what: &str, name: &str) -> Result<()> {
        let (inner, what, name) = (Arc::clone(&self.inner), what.to_string(), name.to_string());
        to_the_end("rename sandbox", async move {
            inner.rename_sandbox(&what, &name).await
        })
        .await
    }

    /// Publish `bindings` of a sandbox already on `network` at its gateway (Docker's
    /// `ProgramExternalConnectivity`); returns where they are bound.
    pub async fn publish_ports(
        &self,
        network: &str,
        sandbox: &str,
        bindings: Vec<PortBinding>,
    ) -> Result<Vec<ports::BoundPort>> {
        let (inner, n, s) = (
            Arc::clone(&self.inner),
            network.to_string(),
            sandbox.to_string(),
        );
        to_the_end("publish ports", async move {
            inner.publish_ports(&n, &s, bindings).await
        })
        .await
    }

    /// Close a sandbox's published ports and forget its bindings (Docker's
    /// `RevokeExternalConnectivity`); nothing published: nothing to do.
    pub async fn unpublish_ports(&self, sandbox: &str) -> Result<()> {
        let (inner, s) = (Arc::clone(&self.inner), sandbox.to_string());
        to_the_end(
            "unpublish ports",
            async move { inner.unpublish_ports(&s).await },
        )
        .await
    }

    /// The hand-off sandboxes and endpoints whose namespace or device is gone (see
    /// `handoff`); changes nothing.
    pub async fn vanished(&self) -> Result<Vanished> {
        self.inner.vanished().await
    }

    /// Counters of a network's switch.
    pub async fn network_report(&self, what: &str) -> Result<(Network, NetworkReport)> {
        let (net, driver) = self.network_and_driver(what).await?;
        let id = net.id.clone();
        let report = blocking("read network counters", move || driver.report(&id)).await?;
        Ok((net, report))
    }

    /// Subscribe to a copy of network `network`'s frames ([`Driver::capture`]); with
    /// `sandbox`, only those of the sandbox's port on that network (`network` may then
    /// be omitted when the sandbox is on exactly one network). Returns the network and
    /// the sandbox's endpoint id, if any, with the subscription.
    pub async fn capture(
        &self,
        network: Option<&str>,
        sandbox: Option<&str>,
    ) -> Result<(Network, Option<String>, tapnet_switch::runtime::Capture)> {
        let (net, endpoint) = {
            let store = self.inner.model();
            let nid = network.map(|n| store.resolve_network(n)).transpose()?;
            match sandbox {
                None => {
                    let nid = nid.ok_or_else(|| {
                        Error::InvalidRequest("capture: give a network or a sandbox".into())
                    })?;
                    let net = store
                        .networks
                        .get(&nid)
                        .cloned()
                        .ok_or_else(|| Error::NotFound(format!("network {nid} not found")))?;
                    (net, None)
                }
                Some(sb) => {
                    let sid = store.resolve_sandbox(sb)?;
                    let on: Vec<_> = store
                        .endpoints_of_sandbox(&sid)
                        .into_iter()
                        .filter(|(n, _)| nid.as_ref().is_none_or(|id| &n.id == id))
                        .collect();
                    match on.as_slice() {
                        [(n, e)] => ((*n).clone(), Some(e.id.clone())),
                        [] => {
                            return Err(Error::NotFound(match network {
                                Some(n) => format!("sandbox {sb} is not connected to network {n}"),
                                None => format!("sandbox {sb} is not connected to any network"),
                            }))
                        }
                        more => {
                            let names: Vec<&str> =
                                more.iter().map(|(n, _)| n.name.as_str()).collect();
                            return Err(Error::InvalidRequest(format!(
                                "sandbox {sb} is on {} networks ({}): say which one (network=NAME)",
                                names.len(),
                                names.join(", ")
                            )));
                        }
                    }
                }
            }
        };
        let driver = self.inner.drivers.get(&net.driver)?;
        let (nid, ep) = (net.id.clone(), endpoint.clone());
        let cap = blocking("start a capture", move || {
            driver.capture(&nid, ep.as_deref())
        })
        .await?;
        Ok((net, endpoint, cap))
    }

    /// A network's forwarding table.
    pub async fn network_fdb(&self, what: &str) -> Result<Vec<FdbRow>> {
        let (net, driver) = self.network_and_driver(what).await?;
        blocking("read network FDB", move || driver.fdb(&net.id)).await
    }

    /// What network `nid`'s driver says of endpoint `eid` (Docker `EndpointOperInfo`;
    /// empty for drivers without, and when the driver cannot answer: logged).
    pub async fn endpoint_info(&self, nid: &str, eid: &str) -> BTreeMap<String, serde_json::Value> {
        let Some(net) = self.inner.model().networks.get(nid).cloned() else {
            return BTreeMap::new();
        };
        let Ok(driver) = self.inner.drivers.get(&net.driver) else {
            return BTreeMap::new();
        };
        let (n, e) = (nid.to_string(), eid.to_string());
        match blocking("endpoint info", move || driver.endpoint_info(&n, &e)).await {
            Ok(info) => info,
            Err(e) => {
                tracing::warn!(network = %net.name, error = %e, "endpoint info");
                BTreeMap::new()
            }
        }
    }

    async fn network_and_driver(&self, what: &str) -> Result<(Network, Arc<dyn Driver>)> {
        let net = self.network(what).await?;
        let driver = self.inner.drivers.get(&net.driver)?;
        Ok((net, driver))
    }

    /// Daemon start: rebuild the model, IPAM and data plane from the store (see
    /// [`restore`](restore) for the details). Call once, before serving.
    pub async fn restore(&self) -> Result<RestoreReport> {
        let inner = Arc::clone(&self.inner);
        to_the_end("restore", async move { inner.restore().await }).await
    }

    /// Stop every driver's data plane, leaving sandboxes and taps in place.
    pub async fn shutdown(&self) {
        let drivers: Vec<Arc<dyn Driver>> = self.inner.drivers.all().cloned().collect();
        let _ = blocking("shutdown", move || {
            for d in drivers {
                d.shutdown();
            }
            Ok(())
        })
        .await;
    }

    /// The IPAM (tests).
    #[cfg(test)]
    fn ipam(&self) -> MutexGuard<'_, Box<dyn Ipam>> {
        lock(&self.inner.ipam)
    }
}

impl Inner {
    /// The published model.
    fn model(&self) -> Arc<Store> {
        self.model.load_full()
    }

    /// Apply `f` to the latest model and publish the result (after a commit).
    fn publish(&self, f: impl FnOnce(&mut Store)) {
        let _one_at_a_time = lock(&self.publishing);
        let before = self.model.load_full();
        let mut next = Store::clone(&before);
        f(&mut next);
        let after = Arc::new(next);
        self.model.store(Arc::clone(&after));
        if self.changes.receiver_count() > 0 {
            // No receiver left in between: nothing to tell.
            let _ = self.changes.send(ModelChange { before, after });
        }
    }

    /// Resolve a network and a sandbox, lock both, and return their ids with the
    /// model as it is once the locks are held.
    async fn lock_pair(
        &self,
        network: &str,
        sandbox: &str,
    ) -> Result<(Held, String, String, Arc<Store>)> {
        let (nid, sid) = {
            let store = self.model();
            (
                store.resolve_network(network)?,
                store.resolve_sandbox(sandbox)?,
            )
        };
        let held = self.locks.acquire([net_key(&nid), sb_key(&sid)]).await;
        Ok((held, nid, sid, self.model()))
    }

    /// The IPAM, for a short synchronous step. An IPAM plugin's calls run under
    /// this lock: a caller that has to wait for it tells a multi-threaded runtime
    /// first (`block_in_place`), so waiters never stall the runtime's workers.
    fn ipam(&self) -> MutexGuard<'_, Box<dyn Ipam>> {
        match self.ipam.try_lock() {
            Ok(g) => g,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => match tokio::runtime::Handle::try_current()
            {
                Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                    tokio::task::block_in_place(|| lock(&self.ipam))
                }
                _ => lock(&self.ipam),
            },
        }
    }

    /// A compensation that gives `taken` back to IPAM.
    fn undo_ipam(&self, txn: &mut Txn, taken: Vec<Taken>) {
        if taken.is_empty() {
            return;
        }
        let ipam = Arc::clone(&self.ipam);
        txn.on_undo(format!("release {taken:?}"), move || {
            ipam_steps::release(lock(&ipam).as_mut(), &taken);
            Ok(())
        });
    }

    /// Give `taken` back to IPAM now (after a commit that freed it).
    fn release(&self, taken: &[Taken]) {
        ipam_steps::release(self.ipam().as_mut(), taken);
    }

    /// An open namespace by sandbox id.
    fn netns_of(&self, sid: &str) -> Option<Arc<Netns>> {
        lock(&self.netns).get(sid).cloned()
    }

    /// The last step of a transaction: commit `changes` in one store transaction
    /// (no-op without a store).
    async fn commit(&self, txn: &Txn, changes: Vec<Change>) -> Result<()> {
        let Some(kv) = self.store.clone() else {
            return Ok(());
        };
        let op = txn.op().to_string();
        blocking("commit", move || {
            crate::store::commit(kv.as_ref(), &changes).map_err(|e| Error::store(op, e))
        })
        .await
    }

    /// Push the names of network `nid` to its gateway's DNS (logged on failure: a
    /// stale name table must not fail the operation that changed it).
    async fn refresh_names(&self, nid: &str) {
        let _dns = match self.is_global(nid) {
            true => Some(self.locks.acquire([dns_key(nid)]).await),
            false => None,
        };
        let store = self.model();
        let Some(net) = store.networks.get(nid) else {
            return;
        };
        let Ok(driver) = self.drivers.get(&net.driver) else {
            return;
        };
        if !driver.capabilities().gateway_service {
            return;
        }
        let mut names = sandbox_files::names_for(net, &store.sandboxes);
        if self.is_global(nid) {
            self.add_remote_names(nid, &mut names);
        }
        let id = nid.to_string();
        if let Err(e) = blocking("set DNS names", move || driver.set_names(&id, names)).await {
            tracing::warn!(network = %net.name, error = %e, "updating DNS names");
        }
    }

    /// Rewrite a sandbox's resolv.conf and hosts from the model (logged on failure).
    async fn refresh_files(&self, sid: &str) {
        let store = self.model();
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

/// Publish `binding` at network `nid`'s gateway for `sandbox_ip` (409 for a taken
/// host port).
fn publish_one(
    driver: &dyn Driver,
    nid: &str,
    sandbox_ip: IpAddr,
    b: &PortBinding,
) -> Result<ports::BoundPort> {
    let spec = tapnet_nat::PublishSpec {
        host_ip: b.host_ip,
        host_port: b.host_port,
        proto: b.proto.nat(),
        sandbox_ip,
        sandbox_port: b.port,
    };
    match driver.publish(nid, spec) {
        Ok(host) => Ok(ports::BoundPort { binding: *b, host }),
        Err(Error::Gateway {
            source: tapnet_nat::Error::PortInUse { .. },
            ..
        }) => Err(ports::in_use(b)),
        Err(e) => Err(e),
    }
}

/// Publish a port again at the host address it was bound to before.
fn rebind_spec(b: &ports::BoundPort, sandbox_ip: IpAddr) -> tapnet_nat::PublishSpec {
    tapnet_nat::PublishSpec {
        host_ip: b.host.ip(),
        host_port: b.host.port(),
        proto: b.binding.proto.nat(),
        sandbox_ip,
        sandbox_port: b.binding.port,
    }
}

/// Close every host socket of `published` (logged on failure).
fn unpublish_all(driver: &dyn Driver, published: &ports::Published) {
    for b in &published.ports {
        if let Err(e) = driver.unpublish(&published.network_id, b.binding.proto.nat(), b.host) {
            tracing::warn!(error = %e, "unpublishing a port");
        }
    }
}

fn not_found(kind: &str, what: &str) -> Error {
    Error::NotFound(format!("{kind} {what} not found"))
}
