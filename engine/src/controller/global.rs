//! Global networks through the cluster store (`--cluster-store`).
//!
//! Contract:
//! * An `overlay` network created without [`crate::driver::overlay::PEERS_OPTION`] on
//!   a daemon with a cluster store is global: its record lives in the cluster store
//!   (`networks/<id>`), never in the local store. Creating it claims `names/<name>`
//!   and `vnis/<vni>` with create-if-absent conditions (a step of the create
//!   transaction; compensation: delete them), so names and VNIs are unique across the
//!   cluster; without an explicit VNI option the derived VNI is tried, then the next
//!   ones, until one is free. The commit is `networks/<id>`.
//! * Every daemon with a cluster store watches the store ([`Controller::start_cluster_sync`]):
//!   a `networks/` record that appears (or exists at start) is created locally (IPAM
//!   pools, the driver's data plane, the model; scope `global`); one that disappears
//!   is removed locally (unless local endpoints are still on it: logged).
//! * Connect to a global network claims its IPv4 address, and its IPv6 address on a
//!   network with an IPv6 subnet, cluster-wide (each the same way): the lowest
//!   address of the subnet (or range) that is neither the gateway, an auxiliary
//!   address nor an `ipam/<network>/<ip>` key, claimed create-if-absent (a conflict
//!   retries with the next one); a static address is claimed the same way (a conflict
//!   is a 409). The endpoint is recorded as `endpoints/<id>` ([`GlobalEndpoint`]: MAC,
//!   IPs, this node's VTEP, the sandbox's name, its aliases) under this node's lease,
//!   so record and claims vanish with the node. Disconnect deletes them.
//! * The daemon keeps a view of the cluster store ([`ClusterView`]): every
//!   `endpoints/` record (all hosts', indexed by network) and the `nodes/` names,
//!   filled by one range of each prefix at start (and when the store comes back,
//!   below), then updated from each watch event, and counts each network's endpoints
//!   per VTEP. An endpoint event touches only the network(s) of the record before and
//!   after it, as a delta ([`ClusterView::delta`]): that network's tunnel is told
//!   ([`crate::driver::Driver::update_remote`]) the old record's removal (its MAC's
//!   VTEP, its IPs' MAC), a VTEP that stops being a peer (its last endpoint on the
//!   network went) or becomes one (its first came), and the new record's addition;
//!   its embedded DNS ([`crate::driver::Driver::update_names`]) takes the old record's
//!   names off and puts the new one's on. A changed record is the old one removed and
//!   the new one added. No event reads the store, walks other networks or rebuilds a
//!   network's tables: the work per change is that of one record (O(1); the tunnel's
//!   known-VTEP set is walked when a peer comes or goes). The whole set
//!   ([`crate::driver::Driver::set_remote`]: the VTEPs of the other hosts with
//!   endpoints on the network, each remote MAC's VTEP, each remote IP's MAC; and all its
//!   names) is sent when a network is adopted, after a re-sync (below), and in place of
//!   a delta to a driver that takes none. Events of this host's own endpoints change no
//!   tunnel (its local names are refreshed by connect and disconnect, as on any network).
//! * DNS: a global network's names are its local endpoints' (as any network's) plus,
//!   from the view, the sandbox name and aliases of every endpoint other hosts have
//!   on it; a record that goes (disconnect, expiry) takes its names with it.
//! * `Peers` ([`Controller::global_peers`], network inspect): the hosts with endpoints
//!   on the network in the view (this one included), by VTEP address, named by their
//!   `nodes/` record (the address when it has none).
//! * Prune never removes a global network (see `prune`).
//! * The store out of reach: the data plane keeps what it was told last (tunnels,
//!   DNS); every mutation of a global object (create, remove, connect, disconnect)
//!   fails within the store's timeout as 503 naming the store
//!   (`StoreError::Unavailable`); local networks are not affected. When the watch
//!   comes back ([`StoreEvent::Resumed`]) the daemon re-reads `networks/`,
//!   `endpoints/` and `nodes/` and applies the differences to the view (networks
//!   adopted or dropped, the tunnels and DNS of the networks whose endpoints changed),
//!   then writes its own endpoint records that are missing again.
//! * Own records lost: a `Delete` of one of this host's endpoint records while the
//!   endpoint is still connected (an expired lease, a hand deletion) writes it again
//!   (under the locks a disconnect holds, so a disconnect's own deletion is not
//!   undone); when the node registered again under a new lease (checked every second
//!   by the idle watch thread), or such a write failed, all its records are written
//!   again under the current lease. An address claim (`ipam/<network>/<ip>`, whose
//!   value is its endpoint's id once the endpoint is recorded) that is still this
//!   endpoint's is kept; one that is gone is claimed create-if-absent again; one taken
//!   by another endpoint meanwhile leaves the record unwritten (logged: the address is
//!   in use elsewhere).
//! * Removing a global network is refused (409) while any host has an endpoint on it
//!   (any `ipam/<network>/` claim left: one read of that network's claims, not of
//!   every endpoint of the cluster).
//! * Restart: a global network's record is not in the local store (it comes back from
//!   the cluster store), its endpoints on this host are. [`super::Controller::restore`]
//!   sets those aside (their network is unknown then); once the networks are loaded
//!   each is restored: its records are written again under the node's current lease
//!   (if `endpoints/<id>` expired meanwhile, its address is claimed create-if-absent
//!   again; taken: the endpoint is dropped), its addresses reserved, the data plane
//!   restored as any endpoint's. One that cannot be restored is dropped and logged.

use super::{net_key, sb_key, Controller, Inner, NETWORKS_LOCK};
use crate::driver::overlay::{parse_vni, vni_for_name, PEERS_OPTION, VXLANID_OPTION};
use crate::driver::{NetworkRequest, RemoteChange, RemoteEndpoints};
use crate::error::{Error, Result, StoreError};
use crate::model::{Endpoint, Network};
use crate::store::etcd::{EtcdStore, LeaseId, StoreEvent, NODES};
use crate::store::{Compare, KvOp, KvStore};
use crate::txn::{blocking, Txn};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use tapnet_nat::NameRecord;

/// Key prefixes in the cluster store.
const NETWORKS: &str = "networks/";
const ENDPOINTS: &str = "endpoints/";
const NAMES: &str = "names/";
const VNIS: &str = "vnis/";
const IPAM: &str = "ipam/";

/// How often the cluster thread, when idle, checks whether the node's lease changed.
const LEASE_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// How many VNIs (or addresses) are tried before giving up.
const ATTEMPTS: u32 = 64;

/// This daemon in the cluster: the store, its node lease, its VTEP.
#[derive(Debug, Clone)]
pub struct ClusterNode {
    /// The cluster store.
    pub store: Arc<EtcdStore>,
    /// The lease of `nodes/<advertise>` at start (records are written under the
    /// current one, [`ClusterNode::lease`]).
    pub lease: LeaseId,
    /// This node's VTEP: the advertise address and the data-path port.
    pub vtep: SocketAddr,
    /// How often encrypted networks' keys are rotated (`--cluster-key-rotation`).
    pub key_rotation: std::time::Duration,
}

impl ClusterNode {
    /// The node record's lease now (a new one after an expiry), else the first one.
    pub fn lease(&self) -> LeaseId {
        self.store.node_lease().unwrap_or(self.lease)
    }
}

/// An endpoint of a global network as the cluster store records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GlobalEndpoint {
    /// Endpoint id.
    pub id: String,
    /// Network id.
    pub network_id: String,
    /// The sandbox's name.
    pub sandbox: String,
    /// The endpoint's network-scoped aliases (names the embedded DNS answers too).
    #[serde(default)]
    pub aliases: Vec<String>,
    /// MAC.
    pub mac: Option<[u8; 6]>,
    /// IPv4 address.
    pub ipv4: Option<Ipv4Addr>,
    /// IPv6 address.
    pub ipv6: Option<std::net::Ipv6Addr>,
    /// The VTEP of its host.
    pub vtep: SocketAddr,
}

impl GlobalEndpoint {
    /// The record of `endpoint` of sandbox `sandbox`, on the host at `vtep`.
    fn of(endpoint: &Endpoint, sandbox: &str, vtep: SocketAddr) -> GlobalEndpoint {
        GlobalEndpoint {
            id: endpoint.id.clone(),
            network_id: endpoint.network_id.clone(),
            sandbox: sandbox.to_string(),
            aliases: endpoint.aliases.clone(),
            mac: endpoint.mac,
            ipv4: endpoint.ipv4,
            ipv6: endpoint.ipv6,
            vtep,
        }
    }
}

/// What this daemon knows of the cluster store (see the module doc): every endpoint
/// record of a global network by id, indexed by network, and the node records.
#[derive(Debug, Default)]
pub(crate) struct ClusterView {
    endpoints: HashMap<String, GlobalEndpoint>,
    by_network: HashMap<String, BTreeSet<String>>,
    /// Network → VTEP → how many of the network's endpoints are behind it (a VTEP is
    /// a peer of the network while its count is above zero).
    vteps: HashMap<String, HashMap<SocketAddr, usize>>,
    /// Node address (as recorded) → node name.
    nodes: HashMap<IpAddr, String>,
    /// The lease this node's own records were last written under.
    written_under: Option<LeaseId>,
}

impl ClusterView {
    /// Record `ep`; the record it replaces.
    fn insert(&mut self, ep: GlobalEndpoint) -> Option<GlobalEndpoint> {
        self.by_network
            .entry(ep.network_id.clone())
            .or_default()
            .insert(ep.id.clone());
        self.count(&ep.network_id, ep.vtep, true);
        let old = self.endpoints.insert(ep.id.clone(), ep);
        if let Some(o) = &old {
            self.count(&o.network_id, o.vtep, false);
            let moved = self.endpoints.get(&o.id).map(|n| &n.network_id) != Some(&o.network_id);
            if moved {
                self.unindex(&o.network_id, &o.id);
            }
        }
        old
    }

    /// Forget endpoint `id`; its record.
    fn remove(&mut self, id: &str) -> Option<GlobalEndpoint> {
        let old = self.endpoints.remove(id)?;
        self.unindex(&old.network_id, id);
        self.count(&old.network_id, old.vtep, false);
        Some(old)
    }

    /// One endpoint more (`up`) or less behind `vtep` on network `nid`.
    fn count(&mut self, nid: &str, vtep: SocketAddr, up: bool) {
        if up {
            *self
                .vteps
                .entry(nid.to_string())
                .or_default()
                .entry(vtep)
                .or_default() += 1;
            return;
        }
        let Some(m) = self.vteps.get_mut(nid) else {
            return;
        };
        if let Some(n) = m.get_mut(&vtep) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&vtep);
            }
        }
        if m.is_empty() {
            self.vteps.remove(nid);
        }
    }

    /// How many endpoints of network `nid` are behind `vtep`.
    fn vtep_count(&self, nid: &str, vtep: SocketAddr) -> usize {
        self.vteps
            .get(nid)
            .and_then(|m| m.get(&vtep))
            .copied()
            .unwrap_or(0)
    }

    /// What the change of one record from `old` to `new` (both `None`: nothing; the
    /// view already holds `new`) changes on each network's tunnel and DNS, for the
    /// host at `own`: the old endpoint removed, the VTEPs whose first endpoint came
    /// or last one went, the new endpoint added. Records of `own` change nothing
    /// (this host's endpoints are local to it). Work: that of the two records.
    fn delta(
        &self,
        old: Option<&GlobalEndpoint>,
        new: Option<&GlobalEndpoint>,
        own: SocketAddr,
    ) -> BTreeMap<String, NetworkDelta> {
        let mut out: BTreeMap<String, NetworkDelta> = BTreeMap::new();
        let (old, new) = (old.filter(|e| e.vtep != own), new.filter(|e| e.vtep != own));
        if let Some(o) = old {
            let d = out.entry(o.network_id.clone()).or_default();
            if let Some(mac) = o.mac {
                d.remote.push(RemoteChange::RemoveEndpoint {
                    mac,
                    vtep: o.vtep,
                    ips: addresses(o),
                });
            }
            d.names_removed = name_records(o);
        }
        let same = |a: &GlobalEndpoint, b: &GlobalEndpoint| {
            a.network_id == b.network_id && a.vtep == b.vtep
        };
        let mut pairs: Vec<&GlobalEndpoint> = old.into_iter().collect();
        if let Some(n) = new.filter(|n| !old.is_some_and(|o| same(o, n))) {
            pairs.push(n);
        }
        let (mut gone, mut came) = (Vec::new(), Vec::new());
        for e in pairs {
            let after = self.vtep_count(&e.network_id, e.vtep);
            let before = after + usize::from(old.is_some_and(|o| same(o, e)))
                - usize::from(new.is_some_and(|n| same(n, e)));
            if before > 0 && after == 0 {
                gone.push((e.network_id.clone(), RemoteChange::RemovePeer(e.vtep)));
            } else if before == 0 && after > 0 {
                came.push((e.network_id.clone(), RemoteChange::AddPeer(e.vtep)));
            }
        }
        for (nid, c) in gone.into_iter().chain(came) {
            out.entry(nid).or_default().remote.push(c);
        }
        if let Some(n) = new {
            let d = out.entry(n.network_id.clone()).or_default();
            if let Some(mac) = n.mac {
                d.remote.push(RemoteChange::AddEndpoint {
                    mac,
                    vtep: n.vtep,
                    ips: addresses(n),
                });
            }
            d.names_added = name_records(n);
        }
        out
    }

    fn unindex(&mut self, nid: &str, id: &str) {
        if let Some(set) = self.by_network.get_mut(nid) {
            set.remove(id);
            if set.is_empty() {
                self.by_network.remove(nid);
            }
        }
    }

    /// The records of the endpoints on network `nid` (every host's).
    fn on_network<'a>(&'a self, nid: &str) -> impl Iterator<Item = &'a GlobalEndpoint> + 'a {
        self.by_network
            .get(nid)
            .into_iter()
            .flatten()
            .filter_map(|id| self.endpoints.get(id))
    }

    /// What the tunnel of network `nid` must know: the endpoints not at `own`.
    fn remote(&self, nid: &str, own: SocketAddr) -> RemoteEndpoints {
        let mut remote = RemoteEndpoints::default();
        for e in self.on_network(nid).filter(|e| e.vtep != own) {
            if !remote.peers.contains(&e.vtep) {
                remote.peers.push(e.vtep);
            }
            if let Some(mac) = e.mac {
                remote.statics.push((mac, e.vtep));
                remote
                    .neighbours
                    .extend(e.ipv4.map(|ip| (IpAddr::V4(ip), mac)));
                remote
                    .neighbours
                    .extend(e.ipv6.map(|ip| (IpAddr::V6(ip), mac)));
            }
        }
        remote.peers.sort();
        remote
    }
}

/// What one endpoint event changes on one network (see [`ClusterView::delta`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct NetworkDelta {
    /// The tunnel's changes, in order.
    remote: Vec<RemoteChange>,
    /// DNS records whose addresses leave their names.
    names_removed: Vec<NameRecord>,
    /// DNS records whose addresses join their names.
    names_added: Vec<NameRecord>,
}

/// The addresses of endpoint record `e`.
fn addresses(e: &GlobalEndpoint) -> Vec<IpAddr> {
    e.ipv4
        .map(IpAddr::V4)
        .into_iter()
        .chain(e.ipv6.map(IpAddr::V6))
        .collect()
}

/// The DNS records of endpoint record `e`: its sandbox name and each alias (lower
/// case, no trailing dot, each once), with its addresses; none without an address.
fn name_records(e: &GlobalEndpoint) -> Vec<NameRecord> {
    if e.ipv4.is_none() && e.ipv6.is_none() {
        return Vec::new();
    }
    let names: BTreeSet<String> = e
        .aliases
        .iter()
        .chain(std::iter::once(&e.sandbox))
        .map(|n| n.trim_end_matches('.').to_ascii_lowercase())
        .filter(|n| !n.is_empty())
        .collect();
    names
        .into_iter()
        .map(|name| NameRecord {
            name,
            ipv4s: e.ipv4.into_iter().collect(),
            ipv6s: e.ipv6.into_iter().collect(),
        })
        .collect()
}

/// Hand `delta` of network `nid` to `driver` (blocking): the tunnel's changes, and the
/// DNS records when the driver has a gateway (`names`). Whether each was applied as a
/// delta (`false`: the driver does not take deltas, the whole set must be sent).
fn push_delta(
    driver: &dyn crate::driver::Driver,
    nid: &str,
    delta: NetworkDelta,
    names: bool,
) -> Result<(bool, bool)> {
    let remote = delta.remote.is_empty() || driver.update_remote(nid, &delta.remote)?;
    let names = !names
        || (delta.names_removed.is_empty() && delta.names_added.is_empty())
        || driver.update_names(nid, delta.names_removed, delta.names_added)?;
    Ok((remote, names))
}

/// The address of a node record's key (`nodes/<address>`, an IP or IP:port).
fn node_address(key: &str) -> Option<IpAddr> {
    let a = key.strip_prefix(NODES)?;
    a.parse::<IpAddr>()
        .ok()
        .or_else(|| a.parse::<SocketAddr>().ok().map(|s| s.ip()))
}

/// A node record's name (`{"name": ..., "address": ...}`).
fn node_name(value: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(value).ok()?;
    Some(v.get("name")?.as_str()?.to_string())
}

/// The keys of endpoint record `rec`: `endpoints/<id>`, then its address claims
/// (`ipam/<network>/<ip>`, IPv4 and IPv6).
fn record_keys(rec: &GlobalEndpoint) -> Vec<String> {
    let mut keys = vec![format!("{ENDPOINTS}{}", rec.id)];
    keys.extend(rec.ipv4.map(|ip| format!("{IPAM}{}/{ip}", rec.network_id)));
    keys.extend(rec.ipv6.map(|ip| format!("{IPAM}{}/{ip}", rec.network_id)));
    keys
}

/// Write the records of this node's endpoint `rec` under `lease` (blocking): if
/// `endpoints/<id>` is still there they are just written again (moved to the
/// lease); if it is gone, each address claim is kept if it is still this
/// endpoint's (its value is the endpoint id) and claimed create-if-absent again if
/// it is gone; one taken meanwhile by another endpoint is a conflict (nothing
/// written).
fn write_own_records(
    store: &EtcdStore,
    rec: &GlobalEndpoint,
    lease: LeaseId,
    op: &str,
) -> Result<()> {
    let value = json("endpoint", rec)?;
    let keys = record_keys(rec);
    let read = |k: &str| -> Result<Option<crate::store::KeyValue>> {
        Ok(store
            .range(k)
            .map_err(|e| store_err(op, e))?
            .into_iter()
            .find(|kv| kv.key == k))
    };
    let ours = read(&keys[0])?.is_some();
    let mut compares = Vec::new();
    if !ours {
        for k in &keys[1..] {
            let revision = match read(k)? {
                None => None,
                Some(kv) if kv.value == rec.id.as_bytes() => Some(kv.revision),
                Some(_) => {
                    return Err(Error::Conflict(format!(
                        "its address was claimed by another endpoint meanwhile ({k})"
                    )))
                }
            };
            compares.push(Compare {
                key: k.clone(),
                revision,
            });
        }
    }
    let mut ops = vec![KvOp::Put(keys[0].clone(), value)];
    ops.extend(
        keys[1..]
            .iter()
            .map(|k| KvOp::Put(k.clone(), rec.id.clone().into_bytes())),
    );
    store
        .txn_leased(&compares, &ops, lease)
        .map(drop)
        .map_err(|e| match e {
            StoreError::Conflict { key, .. } => Error::Conflict(format!(
                "its address was claimed by another endpoint meanwhile ({key})"
            )),
            e => store_err(op, e),
        })
}

/// A cluster store error of operation `op`; out of reach it reads `<op>: cluster
/// store: etcd://HOST:PORT is unavailable: <why>` (503).
fn store_err(op: &str, e: StoreError) -> Error {
    match e {
        e @ StoreError::Unavailable { .. } => Error::store(format!("{op}: cluster"), e),
        e => Error::store(op.to_string(), e),
    }
}

fn json<T: Serialize>(what: &str, v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| {
        Error::store(
            what.to_string(),
            StoreError::Encode {
                what: what.to_string(),
                source: e,
            },
        )
    })
}

impl Inner {
    /// Whether a network being created with `driver` and `options` is global.
    pub(super) fn creates_global(
        &self,
        driver: &str,
        options: &std::collections::BTreeMap<String, String>,
    ) -> bool {
        self.cluster.is_some() && driver == "overlay" && !options.contains_key(PEERS_OPTION)
    }

    /// Whether network `id` is global (recorded in the cluster store).
    pub(super) fn is_global(&self, id: &str) -> bool {
        super::lock(&self.global).contains(id)
    }

    fn node(&self) -> Result<ClusterNode> {
        self.cluster
            .clone()
            .ok_or_else(|| Error::InvalidRequest("no cluster store (--cluster-store)".into()))
    }

    /// Step: claim `names/<name>` and a VNI (`vnis/<vni>`) for `network`, writing the
    /// VNI into its options (undo: delete both keys).
    pub(super) async fn claim_global_name_and_vni(
        &self,
        txn: &mut Txn,
        network: &mut Network,
    ) -> Result<()> {
        let node = self.node()?;
        let explicit = network.options.get(VXLANID_OPTION).cloned();
        let first = match &explicit {
            Some(v) => parse_vni(v)?.get(),
            None => vni_for_name(&network.name),
        };
        let attempts = if explicit.is_some() { 1 } else { ATTEMPTS };
        let (name, id, op) = (
            network.name.clone(),
            network.id.clone(),
            txn.op().to_string(),
        );
        let store = Arc::clone(&node.store);
        let vni = blocking("claim the network's name and VNI", move || {
            let mut vni = first;
            for _ in 0..attempts {
                let (nk, vk) = (format!("{NAMES}{name}"), format!("{VNIS}{vni}"));
                let r = store.txn(
                    &[
                        Compare {
                            key: nk.clone(),
                            revision: None,
                        },
                        Compare {
                            key: vk.clone(),
                            revision: None,
                        },
                    ],
                    &[
                        KvOp::Put(nk.clone(), id.clone().into_bytes()),
                        KvOp::Put(vk.clone(), id.clone().into_bytes()),
                    ],
                );
                match r {
                    Ok(_) => return Ok(vni),
                    Err(StoreError::Conflict { key, .. }) if key == nk => {
                        return Err(Error::Conflict(format!(
                            "network with name {name} already exists (in the cluster store)"
                        )))
                    }
                    Err(StoreError::Conflict { .. }) => {
                        vni = if vni >= tapnet_vxlan::Vni::MAX {
                            crate::driver::overlay::FIRST_DERIVED_VNI
                        } else {
                            vni + 1
                        };
                    }
                    Err(e) => return Err(store_err(&op, e)),
                }
            }
            Err(Error::Conflict(format!(
                "VNI {first} is used by another network in the cluster (set {VXLANID_OPTION})"
            )))
        })
        .await?;
        network
            .options
            .insert(VXLANID_OPTION.to_string(), vni.to_string());
        let name = network.name.clone();
        let store = Arc::clone(&node.store);
        txn.on_undo("free the name and VNI in the cluster store", move || {
            store
                .txn(
                    &[],
                    &[
                        KvOp::Delete(format!("{NAMES}{name}")),
                        KvOp::Delete(format!("{VNIS}{vni}")),
                    ],
                )
                .map(drop)
                .map_err(|e| store_err("free name and VNI", e))
        });
        Ok(())
    }

    /// The commit of a global network: `networks/<id>`.
    pub(super) async fn commit_global_network(&self, txn: &Txn, network: &Network) -> Result<()> {
        let node = self.node()?;
        let value = json("network", network)?;
        let key = format!("{NETWORKS}{}", network.id);
        let op = txn.op().to_string();
        blocking("commit to the cluster store", move || {
            node.store
                .txn(
                    &[Compare {
                        key: key.clone(),
                        revision: None,
                    }],
                    &[KvOp::Put(key, value)],
                )
                .map(drop)
                .map_err(|e| store_err(&op, e))
        })
        .await?;
        super::lock(&self.global).insert(network.id.clone());
        Ok(())
    }

    /// Refuse to remove global network `net` while any host has endpoints on it (or
    /// is connecting one): any address claim `ipam/<net>/` left (one read of that
    /// network's claims, described from the view).
    pub(super) async fn check_global_unused(&self, net: &Network) -> Result<()> {
        let node = self.node()?;
        let prefix = format!("{IPAM}{}/", net.id);
        let claims = blocking("read the network's address claims", move || {
            node.store
                .range(&prefix)
                .map_err(|e| store_err("read the network's address claims", e))
        })
        .await?;
        if claims.is_empty() {
            return Ok(());
        }
        let mut users: Vec<String> = {
            let view = super::lock(&self.view);
            claims
                .iter()
                .map(|kv| {
                    let ip = kv.key.rsplit('/').next().unwrap_or_default();
                    let id = String::from_utf8_lossy(&kv.value);
                    match view.endpoints.get(id.as_ref()) {
                        Some(e) => format!("{} on {}", e.sandbox, e.vtep.ip()),
                        None => format!("an endpoint being connected, {ip}"),
                    }
                })
                .collect()
        };
        users.sort();
        users.dedup();
        Err(Error::Conflict(format!(
            "network {} has active endpoints ({}); disconnect them first",
            net.name,
            users.join(", ")
        )))
    }

    /// The commit of a global network's removal: its keys go.
    pub(super) async fn commit_global_removal(&self, txn: &Txn, network: &Network) -> Result<()> {
        let node = self.node()?;
        let mut ops = vec![
            KvOp::Delete(format!("{NETWORKS}{}", network.id)),
            KvOp::Delete(format!("{NAMES}{}", network.name)),
        ];
        if let Some(v) = network.options.get(VXLANID_OPTION) {
            ops.push(KvOp::Delete(format!("{VNIS}{v}")));
        }
        ops.push(Inner::delete_network_keys(&network.id));
        let op = txn.op().to_string();
        blocking("commit to the cluster store", move || {
            node.store
                .txn(&[], &ops)
                .map(drop)
                .map_err(|e| store_err(&op, e))
        })
        .await?;
        super::lock(&self.global).remove(&network.id);
        Ok(())
    }

    /// Step: claim the IPv4 address of a new endpoint of global network `net`
    /// (`requested`, else the lowest free one) as `ipam/<nid>/<ip>` under this node's
    /// lease (undo: delete the key).
    pub(super) async fn claim_global_ipv4(
        &self,
        txn: &mut Txn,
        net: &Network,
        requested: Option<Ipv4Addr>,
    ) -> Result<Option<Ipv4Addr>> {
        let Some(subnet) = net.subnet else {
            return Ok(requested);
        };
        let range = net.ip_range.unwrap_or(subnet);
        let mut reserved: BTreeSet<Ipv4Addr> = net.aux_addresses.values().copied().collect();
        reserved.extend(net.gateway);
        reserved.insert(subnet.network());
        reserved.insert(subnet.broadcast());
        let pick = move |taken: &BTreeSet<IpAddr>| {
            range
                .hosts()
                .find(|a| {
                    subnet.contains(a) && !reserved.contains(a) && !taken.contains(&IpAddr::V4(*a))
                })
                .map(IpAddr::V4)
        };
        let ip = self
            .claim_global_address(txn, net, requested.map(IpAddr::V4), range.to_string(), pick)
            .await?;
        Ok(match ip {
            IpAddr::V4(a) => Some(a),
            IpAddr::V6(_) => None,
        })
    }

    /// Step: claim the IPv6 address of a new endpoint of global network `net` (with
    /// an IPv6 subnet) as [`Inner::claim_global_ipv4`] does the IPv4 one.
    pub(super) async fn claim_global_ipv6(
        &self,
        txn: &mut Txn,
        net: &Network,
        requested: Option<Ipv6Addr>,
    ) -> Result<Option<Ipv6Addr>> {
        let Some(v6) = net.ipv6.clone() else {
            return Ok(requested);
        };
        let (subnet, range) = (v6.subnet, v6.ip_range.unwrap_or(v6.subnet));
        let mut reserved: BTreeSet<Ipv6Addr> = v6.aux_addresses.values().copied().collect();
        reserved.insert(v6.gateway);
        reserved.insert(subnet.network());
        let pick = move |taken: &BTreeSet<IpAddr>| {
            range
                .hosts()
                .find(|a| {
                    subnet.contains(a) && !reserved.contains(a) && !taken.contains(&IpAddr::V6(*a))
                })
                .map(IpAddr::V6)
        };
        let ip = self
            .claim_global_address(txn, net, requested.map(IpAddr::V6), range.to_string(), pick)
            .await?;
        Ok(match ip {
            IpAddr::V6(a) => Some(a),
            IpAddr::V4(_) => None,
        })
    }

    /// Claim `requested` (taken: 409), else the address `pick` chooses among those
    /// not taken yet, as `ipam/<nid>/<ip>` create-if-absent under this node's lease;
    /// a lost race picks again (at most [`ATTEMPTS`] times). Undo: delete the key.
    async fn claim_global_address(
        &self,
        txn: &mut Txn,
        net: &Network,
        requested: Option<IpAddr>,
        range: String,
        pick: impl Fn(&BTreeSet<IpAddr>) -> Option<IpAddr> + Send + 'static,
    ) -> Result<IpAddr> {
        let node = self.node()?;
        let (nid, store, lease) = (net.id.clone(), Arc::clone(&node.store), node.lease());
        let op = txn.op().to_string();
        let ip = blocking("claim an address in the cluster store", move || {
            let prefix = format!("{IPAM}{nid}/");
            for _ in 0..ATTEMPTS {
                let ip = match requested {
                    Some(ip) => ip,
                    None => {
                        let taken: BTreeSet<IpAddr> = store
                            .range(&prefix)
                            .map_err(|e| store_err(&op, e))?
                            .iter()
                            .filter_map(|kv| kv.key.strip_prefix(&prefix)?.parse().ok())
                            .collect();
                        pick(&taken).ok_or_else(|| {
                            Error::Conflict(format!("no free address left in {range}"))
                        })?
                    }
                };
                let key = format!("{prefix}{ip}");
                match store.txn_leased(
                    &[Compare {
                        key: key.clone(),
                        revision: None,
                    }],
                    &[KvOp::Put(key, Vec::new())],
                    lease,
                ) {
                    Ok(_) => return Ok(ip),
                    Err(StoreError::Conflict { .. }) if requested.is_some() => {
                        return Err(Error::Conflict(format!(
                            "address {ip} is already in use in the cluster"
                        )))
                    }
                    Err(StoreError::Conflict { .. }) => continue,
                    Err(e) => return Err(store_err(&op, e)),
                }
            }
            Err(Error::Conflict(format!(
                "no address claimed in {range} after {ATTEMPTS} attempts"
            )))
        })
        .await?;
        let (nid, store) = (net.id.clone(), Arc::clone(&node.store));
        txn.on_undo(format!("free {ip} in the cluster store"), move || {
            store
                .txn(&[], &[KvOp::Delete(format!("{IPAM}{nid}/{ip}"))])
                .map(drop)
                .map_err(|e| store_err("free address", e))
        });
        Ok(ip)
    }

    /// Step (the commit of a connect to a global network): record the endpoint under
    /// this node's lease (undo: delete it).
    pub(super) async fn record_global_endpoint(
        &self,
        txn: &mut Txn,
        endpoint: &Endpoint,
        sandbox: &str,
    ) -> Result<()> {
        let node = self.node()?;
        let rec = GlobalEndpoint::of(endpoint, sandbox, node.vtep);
        let value = json("endpoint", &rec)?;
        let keys = record_keys(&rec);
        let key = keys[0].clone();
        // The address claims now name their endpoint (see `write_own_records`).
        let mut ops = vec![KvOp::Put(key.clone(), value)];
        ops.extend(
            keys[1..]
                .iter()
                .map(|k| KvOp::Put(k.clone(), endpoint.id.clone().into_bytes())),
        );
        let (store, op, lease) = (Arc::clone(&node.store), txn.op().to_string(), node.lease());
        blocking("record the endpoint in the cluster store", move || {
            store
                .txn_leased(&[], &ops, lease)
                .map(drop)
                .map_err(|e| store_err(&op, e))
        })
        .await?;
        let store = Arc::clone(&node.store);
        txn.on_undo(
            "delete the endpoint's record in the cluster store",
            move || {
                store
                    .txn(&[], &[KvOp::Delete(key)])
                    .map(drop)
                    .map_err(|e| store_err("delete endpoint record", e))
            },
        );
        Ok(())
    }

    /// Step (disconnect from a global network): delete the endpoint's record and its
    /// address claim (undo: write them again under this node's lease).
    pub(super) async fn forget_global_endpoint(
        &self,
        txn: &mut Txn,
        endpoint: &Endpoint,
        sandbox: &str,
    ) -> Result<()> {
        let node = self.node()?;
        let rec = GlobalEndpoint::of(endpoint, sandbox, node.vtep);
        let value = json("endpoint", &rec)?;
        let keys = record_keys(&rec);
        let ops: Vec<KvOp> = keys.iter().cloned().map(KvOp::Delete).collect();
        let (store, op) = (Arc::clone(&node.store), txn.op().to_string());
        blocking("delete the endpoint from the cluster store", move || {
            store
                .txn(&[], &ops)
                .map(drop)
                .map_err(|e| store_err(&op, e))
        })
        .await?;
        let store = Arc::clone(&node.store);
        txn.on_undo(
            "record the endpoint in the cluster store again",
            move || {
                let mut ops = vec![KvOp::Put(keys[0].clone(), value)];
                ops.extend(
                    keys[1..]
                        .iter()
                        .map(|k| KvOp::Put(k.clone(), rec.id.clone().into_bytes())),
                );
                store
                    .txn_leased(&[], &ops, node.lease())
                    .map(drop)
                    .map_err(|e| store_err("record endpoint again", e))
            },
        );
        Ok(())
    }

    /// Restore the endpoints [`super::Controller::restore`] set aside (see the module
    /// doc). Runs before the API serves and before the watch thread starts.
    async fn restore_global_endpoints(&self) {
        let pending = std::mem::take(&mut *super::lock(&self.pending_global));
        let Ok(node) = self.node() else { return };
        let mut changes = Vec::new();
        for ep in pending {
            let store = self.model();
            let found = (
                store
                    .networks
                    .get(&ep.network_id)
                    .filter(|n| self.is_global(&n.id))
                    .cloned(),
                store.sandboxes.get(&ep.sandbox_id).cloned(),
                self.netns_of(&ep.sandbox_id),
            );
            let (Some(net), Some(sb), Some(ns)) = found else {
                tracing::warn!(endpoint = %ep.id, network = %ep.network_id,
                    "store: endpoint of an unknown network or sandbox; removed");
                changes.push(crate::store::Change::DeleteEndpoint(ep.id));
                continue;
            };
            match self
                .restore_global_endpoint(&node, &net, &sb, ns, &ep)
                .await
            {
                Ok(()) => {
                    let e = ep.clone();
                    self.publish(|s| {
                        if let Some(n) = s.networks.get_mut(&e.network_id) {
                            n.endpoints.insert(e.id.clone(), e);
                        }
                    });
                    tracing::info!(network = %net.name, sandbox = %sb.name, ip = ?ep.ipv4,
                        "endpoint on a global network restored");
                    self.refresh_names(&net.id).await;
                    self.refresh_files(&sb.id).await;
                }
                Err(e) => {
                    tracing::warn!(network = %net.name, sandbox = %sb.name, error = %e,
                        "endpoint on a global network cannot be restored; removed");
                    changes.push(crate::store::Change::DeleteEndpoint(ep.id));
                }
            }
        }
        if !changes.is_empty() {
            let txn = Txn::new("clean up the store at start");
            if let Err(e) = self.commit(&txn, changes).await {
                tracing::warn!(error = %e, "cleaning up endpoint records");
            }
            txn.commit();
        }
    }

    /// Restore one endpoint of global network `net` (see the module doc); on failure
    /// nothing of it is left (its cluster records are deleted).
    async fn restore_global_endpoint(
        &self,
        node: &ClusterNode,
        net: &Network,
        sb: &crate::model::Sandbox,
        ns: Arc<tapnet_sandbox::netns::Netns>,
        ep: &Endpoint,
    ) -> Result<()> {
        let mut txn = Txn::new(format!("restore {} on network {}", sb.name, net.name));
        let r = async {
            let rec = GlobalEndpoint::of(ep, &sb.name, node.vtep);
            let (store, lease, op) = (Arc::clone(&node.store), node.lease(), txn.op().to_string());
            let keys = record_keys(&rec);
            blocking("claim the endpoint again", move || {
                write_own_records(&store, &rec, lease, &op)
            })
            .await?;
            let store = Arc::clone(&node.store);
            txn.on_undo("delete the endpoint's cluster records", move || {
                let ops: Vec<KvOp> = keys.into_iter().map(KvOp::Delete).collect();
                store
                    .txn(&[], &ops)
                    .map(drop)
                    .map_err(|e| store_err("delete endpoint records", e))
            });
            let taken = {
                let mut ipam = self.ipam();
                let mut tx = super::IpamTxn::new(ipam.as_mut());
                super::ipam_steps::reserve_endpoint_addresses(&mut tx, net, ep)?;
                tx.commit()
            };
            self.undo_ipam(&mut txn, taken);
            let driver = self.drivers.get(&net.driver)?;
            let layer = self.drivers.sandbox_layer();
            let (n, e, name) = (net.clone(), ep.clone(), sb.name.clone());
            blocking("restore endpoint", move || {
                layer.restore(driver.as_ref(), &n, &e, &ns, &name).map(drop)
            })
            .await
        }
        .await;
        txn.finish(r).await
    }

    /// Create global network `net` (a `networks/` record) locally if it is not here.
    async fn adopt_global_network(&self, mut net: Network) {
        let _held = self.locks.acquire([NETWORKS_LOCK.to_string()]).await;
        let store = self.model();
        if store.networks.contains_key(&net.id) {
            super::lock(&self.global).insert(net.id.clone());
            return;
        }
        if let Some(other) = store.networks.values().find(|n| n.name == net.name) {
            tracing::error!(network = %net.name, local = %other.id, global = %net.id,
                "a global network has the name of a local network here: not created on this host");
            return;
        }
        let driver = match self.drivers.get(&net.driver) {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(network = %net.name, error = %e, "global network not created here");
                return;
            }
        };
        net.endpoints.clear();
        if let Err(e) = super::restore_network_ipam(self.ipam().as_mut(), &mut net) {
            tracing::error!(network = %net.name, error = %e,
                "global network not created here: its pools cannot be reserved");
            return;
        }
        let (d, n) = (Arc::clone(&driver), net.clone());
        let made = blocking("create network", move || {
            d.create_network(&NetworkRequest { network: &n })
        })
        .await;
        if let Err(e) = made {
            tracing::error!(network = %net.name, error = %e, "global network not created here");
            self.release(&super::ipam_steps::network_pools(&net));
            return;
        }
        tracing::info!(network = %net.name, id = %net.id, "global network created from the cluster store");
        super::lock(&self.global).insert(net.id.clone());
        let id = net.id.clone();
        self.publish(|s| {
            s.networks.insert(id, net);
        });
    }

    /// Remove global network `id` locally (its record left the cluster store).
    async fn drop_global_network(&self, id: &str) {
        if !self.is_global(id) {
            return;
        }
        let _held = self
            .locks
            .acquire([NETWORKS_LOCK.to_string(), net_key(id)])
            .await;
        let Some(net) = self.model().networks.get(id).cloned() else {
            super::lock(&self.global).remove(id);
            self.locks.forget(&super::dns_key(id));
            return;
        };
        if !net.endpoints.is_empty() {
            tracing::error!(network = %net.name,
                "global network removed from the cluster store while local endpoints are on it: kept here");
            return;
        }
        let driver = match self.drivers.get(&net.driver) {
            Ok(d) => d,
            Err(_) => return,
        };
        let nid = id.to_string();
        if let Err(e) = blocking("delete network", move || driver.delete_network(&nid)).await {
            tracing::warn!(network = %net.name, error = %e, "removing a global network's data plane");
        }
        self.release(&super::ipam_steps::network_pools(&net));
        super::lock(&self.global).remove(id);
        self.publish(|s| {
            s.networks.remove(id);
        });
        self.locks.forget(&net_key(id));
        self.locks.forget(&super::dns_key(id));
        tracing::info!(network = %net.name, "global network removed (gone from the cluster store)");
    }

    /// Tell network `nid`'s tunnel where all its remote endpoints are, and its DNS all
    /// their names (work proportional to that network's endpoints: adoption, re-sync,
    /// and drivers without deltas; an endpoint event is applied by
    /// [`Inner::apply_delta`]).
    async fn refresh_network(&self, nid: &str) {
        let Ok(node) = self.node() else { return };
        let Some(net) = self.model().networks.get(nid).cloned() else {
            return;
        };
        if !self.is_global(nid) {
            return;
        }
        let remote = super::lock(&self.view).remote(nid, node.vtep);
        if let Ok(driver) = self.drivers.get(&net.driver) {
            let id = nid.to_string();
            tracing::debug!(network = %net.name, ?remote, "remote endpoints: whole set");
            if let Err(e) = blocking("set remote endpoints", move || {
                driver.set_remote(&id, &remote)
            })
            .await
            {
                tracing::warn!(network = %net.name, error = %e, "updating the tunnel's remote endpoints");
            }
        }
        self.refresh_names(nid).await;
    }

    /// Apply one endpoint event's `delta` to global network `nid`'s tunnel and DNS
    /// (work proportional to the event, not to the network); a driver that does not
    /// take deltas gets the whole set ([`Inner::refresh_network`]). Under the network's
    /// DNS lock, as a whole set of names ([`Inner::refresh_names`]) is: one read before
    /// this event's view change is handed over before this delta.
    async fn apply_delta(&self, nid: &str, delta: NetworkDelta) {
        let Some(net) = self.model().networks.get(nid).cloned() else {
            return;
        };
        if !self.is_global(nid) {
            return;
        }
        let Ok(driver) = self.drivers.get(&net.driver) else {
            return;
        };
        let names = driver.capabilities().gateway_service;
        tracing::debug!(network = %net.name, ?delta, "remote endpoints: delta");
        let id = nid.to_string();
        let dns = self.locks.acquire([super::dns_key(nid)]).await;
        let r = blocking("update remote endpoints", move || {
            push_delta(driver.as_ref(), &id, delta, names)
        })
        .await;
        drop(dns);
        match r {
            Ok((true, true)) => {}
            Ok(_) => self.refresh_network(nid).await,
            Err(e) => {
                // Part of the delta may be applied: the whole set puts the tunnel and
                // the DNS back in step with the view (itself logged if it fails too).
                tracing::warn!(network = %net.name, error = %e,
                    "updating the tunnel's remote endpoints and DNS names; sending the whole set");
                self.refresh_network(nid).await;
            }
        }
    }

    /// Add the names and aliases of the endpoints other hosts have on global network
    /// `nid` to `names` (the local ones).
    pub(super) fn add_remote_names(&self, nid: &str, names: &mut Vec<NameRecord>) {
        let Some(own) = self.cluster.as_ref().map(|c| c.vtep) else {
            return;
        };
        let view = super::lock(&self.view);
        let mut by_name: BTreeMap<String, NameRecord> =
            names.drain(..).map(|r| (r.name.clone(), r)).collect();
        for e in view.on_network(nid).filter(|e| e.vtep != own) {
            for n in e.aliases.iter().chain(std::iter::once(&e.sandbox)) {
                let n = n.trim_end_matches('.').to_ascii_lowercase();
                if n.is_empty() {
                    continue;
                }
                let r = by_name.entry(n.clone()).or_insert_with(|| NameRecord {
                    name: n,
                    ipv4s: Vec::new(),
                    ipv6s: Vec::new(),
                });
                if let Some(a) = e.ipv4.filter(|a| !r.ipv4s.contains(a)) {
                    r.ipv4s.push(a);
                }
                if let Some(a) = e.ipv6.filter(|a| !r.ipv6s.contains(a)) {
                    r.ipv6s.push(a);
                }
            }
        }
        *names = by_name.into_values().collect();
    }

    /// The hosts with endpoints on global network `nid` (node name, VTEP address),
    /// by address; `None` for a network that is not global.
    pub(super) fn global_peers(&self, nid: &str) -> Option<Vec<(String, IpAddr)>> {
        if !self.is_global(nid) {
            return None;
        }
        let view = super::lock(&self.view);
        let ips: BTreeSet<IpAddr> = view.on_network(nid).map(|e| e.vtep.ip()).collect();
        Some(
            ips.into_iter()
                .map(|ip| {
                    let name = view
                        .nodes
                        .get(&ip)
                        .cloned()
                        .unwrap_or_else(|| ip.to_string());
                    (name, ip)
                })
                .collect(),
        )
    }

    /// Apply an endpoint record that appeared or changed.
    async fn on_endpoint_put(&self, key: &str, value: &[u8]) {
        let rec = match serde_json::from_slice::<GlobalEndpoint>(value) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(key, error = %e, "bad endpoint record; ignored");
                return;
            }
        };
        let Ok(node) = self.node() else { return };
        let deltas = {
            let mut view = super::lock(&self.view);
            let old = view.insert(rec.clone());
            if old.as_ref() == Some(&rec) {
                return;
            }
            view.delta(old.as_ref(), Some(&rec), node.vtep)
        };
        for (nid, d) in deltas {
            self.apply_delta(&nid, d).await;
        }
    }

    /// Apply an endpoint record that disappeared: another host's leaves the tunnel;
    /// one of this host's that is still connected (it expired with a lease, or was
    /// deleted by hand) is written again.
    async fn on_endpoint_delete(&self, key: &str) {
        let id = &key[ENDPOINTS.len()..];
        let Ok(node) = self.node() else { return };
        let (old, deltas) = {
            let mut view = super::lock(&self.view);
            let Some(old) = view.remove(id) else {
                return;
            };
            let d = view.delta(Some(&old), None, node.vtep);
            (old, d)
        };
        if old.vtep != node.vtep {
            for (nid, d) in deltas {
                self.apply_delta(&nid, d).await;
            }
            return;
        }
        self.keep_own_record(&node, &old.network_id, id).await;
    }

    /// Write own endpoint `id` of network `nid` again if it is still connected here
    /// (under the locks of a disconnect, which deletes it on purpose).
    async fn keep_own_record(&self, node: &ClusterNode, nid: &str, id: &str) {
        let sid = match self
            .model()
            .networks
            .get(nid)
            .and_then(|n| n.endpoints.get(id))
        {
            Some(e) => e.sandbox_id.clone(),
            None => return,
        };
        let _held = self.locks.acquire([net_key(nid), sb_key(&sid)]).await;
        let store = self.model();
        let (Some(ep), Some(sb)) = (
            store.networks.get(nid).and_then(|n| n.endpoints.get(id)),
            store.sandboxes.get(&sid),
        ) else {
            return;
        };
        let rec = GlobalEndpoint::of(ep, &sb.name, node.vtep);
        let (st, lease) = (Arc::clone(&node.store), node.lease());
        let r = blocking("write the endpoint's record again", move || {
            write_own_records(&st, &rec, lease, "write the endpoint's record again")
        })
        .await;
        match r {
            Ok(()) => tracing::info!(sandbox = %sb.name, endpoint = %id,
                "endpoint record was gone from the cluster store; written again"),
            Err(e) => {
                tracing::warn!(sandbox = %sb.name, endpoint = %id, error = %e,
                    "endpoint record gone from the cluster store; cannot write it again now (retried)");
                // The next idle check writes all this host's records again.
                super::lock(&self.view).written_under = None;
            }
        }
    }

    /// This node's endpoints on global networks: (record, sandbox name).
    fn own_records(&self, node: &ClusterNode) -> Vec<GlobalEndpoint> {
        let store = self.model();
        store
            .networks
            .values()
            .filter(|n| self.is_global(&n.id))
            .flat_map(|n| n.endpoints.values())
            .filter_map(|e| {
                let sb = store.sandboxes.get(&e.sandbox_id)?;
                Some(GlobalEndpoint::of(e, &sb.name, node.vtep))
            })
            .collect()
    }

    /// Write this node's endpoint records again under the node's current lease if it
    /// changed (the node registered again after an expiry), or those of `missing`
    /// (ids gone from the store). Failures are retried at the next call.
    async fn rewrite_own_records(&self, missing: Option<&BTreeSet<String>>) {
        let Ok(node) = self.node() else { return };
        let lease = node.lease();
        let changed = super::lock(&self.view).written_under != Some(lease);
        if !changed && missing.is_none_or(BTreeSet::is_empty) {
            return;
        }
        let recs: Vec<GlobalEndpoint> = self
            .own_records(&node)
            .into_iter()
            .filter(|r| changed || missing.is_some_and(|m| m.contains(&r.id)))
            .collect();
        if recs.is_empty() {
            super::lock(&self.view).written_under = Some(lease);
            return;
        }
        let store = Arc::clone(&node.store);
        let r = blocking("write endpoint records again", move || {
            let mut first_err = None;
            for rec in &recs {
                match write_own_records(&store, rec, lease, "write endpoint records again") {
                    Ok(()) => tracing::info!(endpoint = %rec.id, sandbox = %rec.sandbox,
                        "endpoint record written again under the node's lease"),
                    Err(e @ Error::Conflict(_)) => tracing::error!(endpoint = %rec.id,
                        sandbox = %rec.sandbox, error = %e, "endpoint record cannot be written again"),
                    Err(e) => {
                        first_err.get_or_insert(e);
                    }
                }
            }
            first_err.map_or(Ok(()), Err)
        })
        .await;
        match r {
            Ok(()) => super::lock(&self.view).written_under = Some(lease),
            Err(e) => tracing::warn!(error = %e, "writing endpoint records again; retried later"),
        }
    }

    /// Read the cluster store again and apply the differences (at start, and when
    /// the watch comes back after the store was out of reach): networks created and
    /// removed, endpoint records (the tunnels and DNS of the networks whose endpoints
    /// changed), node names; then this node's records that are missing are written
    /// again.
    async fn resync(&self, first: bool) -> Result<()> {
        let node = self.node()?;
        let store = Arc::clone(&node.store);
        let (nets, eps, nodes) = blocking("read the cluster store", move || {
            let r = |p: &str| {
                store
                    .range(p)
                    .map_err(|e| store_err("read the cluster store", e))
            };
            Ok((r(NETWORKS)?, r(ENDPOINTS)?, r(NODES)?))
        })
        .await?;
        let mut seen = BTreeSet::new();
        for kv in nets {
            match serde_json::from_slice::<Network>(&kv.value) {
                Ok(net) => {
                    seen.insert(net.id.clone());
                    self.adopt_global_network(net).await;
                }
                Err(e) => tracing::warn!(key = %kv.key, error = %e, "bad network record"),
            }
        }
        let gone: Vec<String> = super::lock(&self.global)
            .iter()
            .filter(|id| !seen.contains(*id))
            .cloned()
            .collect();
        for id in gone {
            self.drop_global_network(&id).await;
        }
        self.install_all_keys().await;
        if first {
            self.restore_global_endpoints().await;
        }
        let mut fresh: HashMap<String, GlobalEndpoint> = HashMap::new();
        for kv in eps {
            match serde_json::from_slice::<GlobalEndpoint>(&kv.value) {
                Ok(e) => {
                    fresh.insert(e.id.clone(), e);
                }
                Err(e) => tracing::warn!(key = %kv.key, error = %e, "bad endpoint record"),
            }
        }
        let mut affected = BTreeSet::new();
        {
            let mut view = super::lock(&self.view);
            let old_ids: Vec<String> = view.endpoints.keys().cloned().collect();
            for id in old_ids {
                if !fresh.contains_key(&id) {
                    if let Some(o) = view.remove(&id) {
                        affected.insert(o.network_id);
                    }
                }
            }
            for (_, e) in fresh.iter() {
                if view.endpoints.get(&e.id) != Some(e) {
                    affected.insert(e.network_id.clone());
                    if let Some(o) = view.insert(e.clone()) {
                        affected.insert(o.network_id);
                    }
                }
            }
            view.nodes = nodes
                .iter()
                .filter_map(|kv| Some((node_address(&kv.key)?, node_name(&kv.value)?)))
                .collect();
        }
        if first {
            affected.extend(super::lock(&self.global).iter().cloned());
        }
        for nid in affected {
            self.refresh_network(&nid).await;
        }
        let missing: BTreeSet<String> = self
            .own_records(&node)
            .into_iter()
            .map(|r| r.id)
            .filter(|id| !fresh.contains_key(id))
            .collect();
        self.rewrite_own_records(Some(&missing)).await;
        Ok(())
    }

    /// Apply one change of the cluster store.
    async fn on_cluster_event(&self, ev: StoreEvent) {
        let ev = match ev {
            StoreEvent::Change(ev) => ev,
            StoreEvent::Resumed => {
                tracing::info!("cluster store reachable again: re-reading it");
                if let Err(e) = self.resync(false).await {
                    tracing::warn!(error = %e, "re-reading the cluster store");
                }
                return;
            }
        };
        match &ev.op {
            KvOp::Put(k, v) if k.starts_with(NETWORKS) => {
                match serde_json::from_slice::<Network>(v) {
                    Ok(net) => {
                        let nid = net.id.clone();
                        self.adopt_global_network(net).await;
                        self.install_keys(&nid).await;
                        self.refresh_network(&nid).await;
                    }
                    Err(e) => tracing::warn!(key = %k, error = %e, "bad network record"),
                }
            }
            KvOp::Delete(k) if k.starts_with(NETWORKS) => {
                self.drop_global_network(&k[NETWORKS.len()..]).await;
            }
            KvOp::Put(k, v) if k.starts_with(ENDPOINTS) => self.on_endpoint_put(k, v).await,
            KvOp::Delete(k) if k.starts_with(ENDPOINTS) => self.on_endpoint_delete(k).await,
            KvOp::Put(k, v) if k.starts_with(NODES) => {
                if let (Some(ip), Some(name)) = (node_address(k), node_name(v)) {
                    super::lock(&self.view).nodes.insert(ip, name);
                }
            }
            KvOp::Delete(k) if k.starts_with(NODES) => {
                if let Some(ip) = node_address(k) {
                    super::lock(&self.view).nodes.remove(&ip);
                }
            }
            op if op.key().starts_with(super::keys::KEYS) => self.on_keys_event(op).await,
            _ => {}
        }
    }
}

impl Controller {
    /// With a cluster store: create the global networks recorded there, then follow
    /// the store's changes on a thread of its own (see the module doc). Call after
    /// [`Controller::restore`]; no-op without a cluster store. A first load that fails
    /// (the store slow or gone since the node registered) does not fail this call: the
    /// cluster thread retries it every second until it succeeds.
    pub async fn start_cluster_sync(&self) -> Result<()> {
        let Ok(node) = self.inner.node() else {
            return Ok(());
        };
        // Watch first, so that nothing committed after the load is missed (what both
        // see is applied twice, harmlessly).
        let rx = node.store.watch_events("");
        // The node registered, so the store was there a moment ago: a load that fails
        // now (a slow or briefly unreachable store) is retried every LEASE_CHECK by the
        // cluster thread instead of ending the daemon; local networks serve meanwhile.
        let mut synced = match self.inner.resync(true).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "loading the cluster store at start; retrying");
                false
            }
        };
        self.start_key_rotation()?;
        let inner = Arc::clone(&self.inner);
        let rt = tokio::runtime::Handle::current();
        let mut last_try = std::time::Instant::now();
        std::thread::Builder::new()
            .name("tapnet-cluster".into())
            .spawn(move || loop {
                if !synced && last_try.elapsed() >= LEASE_CHECK {
                    last_try = std::time::Instant::now();
                    match rt.block_on(inner.resync(true)) {
                        Ok(()) => {
                            tracing::info!("cluster store loaded");
                            synced = true;
                        }
                        Err(e) => tracing::debug!(error = %e, "loading the cluster store"),
                    }
                }
                match rx.recv_timeout(LEASE_CHECK) {
                    Ok(ev) => rt.block_on(inner.on_cluster_event(ev)),
                    // The node's lease may have changed (registered again after an
                    // expiry): its records follow.
                    Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                        rt.block_on(inner.rewrite_own_records(None));
                    }
                    Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                        tracing::warn!("cluster store watch ended");
                        return;
                    }
                }
            })
            .map_err(|e| Error::Task {
                op: "start the cluster store watch".into(),
                message: e.to_string(),
            })?;
        Ok(())
    }

    /// The hosts with endpoints on global network `nid` (node name, VTEP address);
    /// `None` for a network that is not global.
    pub fn global_peers(&self, nid: &str) -> Option<Vec<(String, IpAddr)>> {
        self.inner.global_peers(nid)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn rec(id: &str, nid: &str, host: u8, mac: u8) -> GlobalEndpoint {
        GlobalEndpoint {
            id: id.into(),
            network_id: nid.into(),
            sandbox: format!("s{id}"),
            aliases: Vec::new(),
            mac: Some([2, 0, 0, 0, 0, mac]),
            ipv4: Some(Ipv4Addr::new(10, 0, 0, mac)),
            ipv6: None,
            vtep: SocketAddr::from(([192, 0, 2, host], 4789)),
        }
    }

    #[test]
    fn view_applies_deltas_per_network() {
        let own = SocketAddr::from(([192, 0, 2, 1], 4789));
        let mut v = ClusterView::default();
        assert!(v.insert(rec("a", "n1", 1, 1)).is_none());
        assert!(v.insert(rec("b", "n1", 2, 2)).is_none());
        assert!(v.insert(rec("c", "n2", 3, 3)).is_none());
        let r = v.remote("n1", own);
        assert_eq!(r.peers, vec![SocketAddr::from(([192, 0, 2, 2], 4789))]);
        assert_eq!(r.statics.len(), 1);
        assert_eq!(
            r.neighbours,
            vec![(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)), [2, 0, 0, 0, 0, 2])]
        );
        // A record that moves to another network leaves the first one's index.
        let old = v.insert(rec("b", "n2", 2, 2)).unwrap();
        assert_eq!(old.network_id, "n1");
        assert_eq!(v.remote("n1", own), RemoteEndpoints::default());
        assert_eq!(v.remote("n2", own).peers.len(), 2);
        assert_eq!(v.remove("c").unwrap().id, "c");
        assert!(v.remove("c").is_none());
        v.remove("b");
        assert!(!v.by_network.contains_key("n2"));
        assert_eq!(v.on_network("n1").count(), 1);
    }

    fn vtep(host: u8) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, host], 4789))
    }

    #[test]
    fn view_counts_endpoints_per_network_and_vtep() {
        let mut v = ClusterView::default();
        v.insert(rec("a", "n1", 2, 1));
        v.insert(rec("b", "n1", 2, 2));
        v.insert(rec("c", "n1", 3, 3));
        v.insert(rec("d", "n2", 2, 4));
        assert_eq!(v.vtep_count("n1", vtep(2)), 2);
        assert_eq!(v.vtep_count("n1", vtep(3)), 1);
        assert_eq!(v.vtep_count("n2", vtep(2)), 1);
        assert_eq!(v.vtep_count("n2", vtep(3)), 0);
        // Same record again, then one that moves host, then one that moves network.
        v.insert(rec("a", "n1", 2, 1));
        assert_eq!(v.vtep_count("n1", vtep(2)), 2);
        v.insert(rec("a", "n1", 3, 1));
        assert_eq!(
            (v.vtep_count("n1", vtep(2)), v.vtep_count("n1", vtep(3))),
            (1, 2)
        );
        v.insert(rec("b", "n2", 2, 2));
        assert_eq!(
            (v.vtep_count("n1", vtep(2)), v.vtep_count("n2", vtep(2))),
            (0, 2)
        );
        for id in ["a", "b", "c", "d"] {
            v.remove(id);
        }
        v.remove("a");
        assert!(v.vteps.is_empty(), "{:?}", v.vteps);
    }

    /// Put `e` into `v`; the delta for the host at `own`.
    fn put(
        v: &mut ClusterView,
        e: GlobalEndpoint,
        own: SocketAddr,
    ) -> BTreeMap<String, NetworkDelta> {
        let old = v.insert(e.clone());
        v.delta(old.as_ref(), Some(&e), own)
    }

    fn del(v: &mut ClusterView, id: &str, own: SocketAddr) -> BTreeMap<String, NetworkDelta> {
        let old = v.remove(id);
        v.delta(old.as_ref(), None, own)
    }

    fn ip(n: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, n))
    }

    fn add(mac: u8, host: u8) -> RemoteChange {
        RemoteChange::AddEndpoint {
            mac: [2, 0, 0, 0, 0, mac],
            vtep: vtep(host),
            ips: vec![ip(mac)],
        }
    }

    fn rm(mac: u8, host: u8) -> RemoteChange {
        RemoteChange::RemoveEndpoint {
            mac: [2, 0, 0, 0, 0, mac],
            vtep: vtep(host),
            ips: vec![ip(mac)],
        }
    }

    fn only(d: &BTreeMap<String, NetworkDelta>, nid: &str) -> Vec<RemoteChange> {
        assert_eq!(d.keys().collect::<Vec<_>>(), vec![nid], "{d:?}");
        d[nid].remote.clone()
    }

    #[test]
    fn an_event_is_a_delta_with_peers_only_at_a_vteps_first_and_last_endpoint() {
        let own = vtep(1);
        let mut v = ClusterView::default();
        let d = put(&mut v, rec("a", "n1", 2, 1), own);
        assert_eq!(
            only(&d, "n1"),
            vec![RemoteChange::AddPeer(vtep(2)), add(1, 2)]
        );
        assert_eq!(
            d["n1"].names_added,
            vec![NameRecord {
                name: "sa".into(),
                ipv4s: vec![Ipv4Addr::new(10, 0, 0, 1)],
                ipv6s: vec![]
            }]
        );
        assert!(d["n1"].names_removed.is_empty());
        assert_eq!(
            only(&put(&mut v, rec("b", "n1", 2, 2), own), "n1"),
            vec![add(2, 2)]
        );
        // This host's own endpoints change no tunnel and no remote name.
        assert!(put(&mut v, rec("o", "n1", 1, 9), own).is_empty());
        assert!(del(&mut v, "o", own).is_empty());

        // A changed record (new address, same host): the old out, the new in, no peer.
        let mut b2 = rec("b", "n1", 2, 2);
        b2.ipv4 = Some(Ipv4Addr::new(10, 0, 0, 7));
        b2.aliases = vec!["Db.".into(), "sb".into()];
        let d = put(&mut v, b2, own);
        let mut new_add = add(2, 2);
        if let RemoteChange::AddEndpoint { ips, .. } = &mut new_add {
            *ips = vec![ip(7)];
        }
        assert_eq!(only(&d, "n1"), vec![rm(2, 2), new_add]);
        let names: Vec<&str> = d["n1"]
            .names_added
            .iter()
            .map(|r| r.name.as_str())
            .collect();
        assert_eq!(
            names,
            vec!["db", "sb"],
            "aliases lower-cased, each name once"
        );
        assert_eq!(d["n1"].names_removed.len(), 1);

        // Moved to another host: its old VTEP still has "a", the new one is a new peer.
        let d = put(&mut v, rec("b", "n1", 3, 2), own);
        let mut old = rm(2, 2);
        if let RemoteChange::RemoveEndpoint { ips, .. } = &mut old {
            *ips = vec![ip(7)];
        }
        assert_eq!(
            only(&d, "n1"),
            vec![old, RemoteChange::AddPeer(vtep(3)), add(2, 3)]
        );
        // The last endpoint behind VTEP 2 goes: so does the peer.
        assert_eq!(
            only(&del(&mut v, "a", own), "n1"),
            vec![rm(1, 2), RemoteChange::RemovePeer(vtep(2))]
        );
        // Moved to another network: out of n1 (and its peer), into n2.
        let d = put(&mut v, rec("b", "n2", 3, 2), own);
        assert_eq!(
            d["n1"].remote,
            vec![rm(2, 3), RemoteChange::RemovePeer(vtep(3))]
        );
        assert_eq!(
            d["n2"].remote,
            vec![RemoteChange::AddPeer(vtep(3)), add(2, 3)]
        );
        assert!(del(&mut v, "nobody", own).is_empty());
    }

    /// A driver that keeps what it is told: the whole set or deltas, counted.
    #[derive(Default)]
    struct Recorder {
        state: std::sync::Mutex<Recorded>,
    }

    #[derive(Default)]
    struct Recorded {
        full: usize,
        deltas: usize,
        peers: BTreeSet<SocketAddr>,
        statics: BTreeMap<[u8; 6], SocketAddr>,
        neighbours: BTreeMap<IpAddr, [u8; 6]>,
        full_names: usize,
        name_deltas: usize,
        names: BTreeSet<(String, IpAddr)>,
    }

    impl crate::driver::Driver for Recorder {
        fn name(&self) -> &str {
            "recorder"
        }
        fn capabilities(&self) -> crate::driver::Capabilities {
            crate::driver::Capabilities::default()
        }
        fn create_network(&self, _: &NetworkRequest<'_>) -> Result<()> {
            Ok(())
        }
        fn delete_network(&self, _: &str) -> Result<()> {
            Ok(())
        }
        fn join(
            &self,
            _: &crate::driver::JoinRequest<'_>,
        ) -> Result<crate::driver::JoinDescription> {
            Ok(crate::driver::JoinDescription::default())
        }
        fn leave(&self, _: &str, _: &str) -> Result<()> {
            Ok(())
        }
        fn set_remote(&self, _: &str, r: &RemoteEndpoints) -> Result<()> {
            let mut s = self.state.lock().unwrap();
            s.full += 1;
            s.peers = r.peers.iter().copied().collect();
            s.statics = r.statics.iter().copied().collect();
            s.neighbours = r.neighbours.iter().copied().collect();
            Ok(())
        }
        fn update_remote(&self, _: &str, changes: &[RemoteChange]) -> Result<bool> {
            let mut s = self.state.lock().unwrap();
            s.deltas += 1;
            for c in changes {
                match c.clone() {
                    RemoteChange::AddPeer(p) => assert!(s.peers.insert(p), "{p} twice"),
                    RemoteChange::RemovePeer(p) => assert!(s.peers.remove(&p), "{p} unknown"),
                    RemoteChange::AddEndpoint { mac, vtep, ips } => {
                        s.statics.insert(mac, vtep);
                        s.neighbours.extend(ips.into_iter().map(|i| (i, mac)));
                    }
                    RemoteChange::RemoveEndpoint { mac, vtep, ips } => {
                        assert_eq!(s.statics.remove(&mac), Some(vtep));
                        for i in ips {
                            assert_eq!(s.neighbours.remove(&i), Some(mac));
                        }
                    }
                }
            }
            Ok(true)
        }
        fn set_names(&self, _: &str, names: Vec<NameRecord>) -> Result<()> {
            let mut s = self.state.lock().unwrap();
            s.full_names += 1;
            s.names = pairs(&names).collect();
            Ok(())
        }
        fn update_names(
            &self,
            _: &str,
            removed: Vec<NameRecord>,
            added: Vec<NameRecord>,
        ) -> Result<bool> {
            let mut s = self.state.lock().unwrap();
            s.name_deltas += 1;
            for p in pairs(&removed) {
                assert!(s.names.remove(&p), "{p:?} unknown");
            }
            s.names.extend(pairs(&added));
            Ok(true)
        }
    }

    fn pairs(names: &[NameRecord]) -> impl Iterator<Item = (String, IpAddr)> + '_ {
        names.iter().flat_map(|r| {
            r.ipv4s
                .iter()
                .map(|a| IpAddr::V4(*a))
                .chain(r.ipv6s.iter().map(|a| IpAddr::V6(*a)))
                .map(|a| (r.name.clone(), a))
        })
    }

    #[test]
    fn after_adoption_each_event_is_one_delta_and_no_full_refresh() {
        let own = vtep(1);
        let mut v = ClusterView::default();
        for i in 0..4u8 {
            v.insert(rec(&format!("x{i}"), "n1", 2 + i % 2, 100 + i));
        }
        let drv = Recorder::default();
        // Adoption: the whole set once.
        use crate::driver::Driver;
        drv.set_remote("n1", &v.remote("n1", own)).unwrap();
        let all: Vec<NameRecord> = v
            .on_network("n1")
            .filter(|e| e.vtep != own)
            .flat_map(name_records)
            .collect();
        drv.set_names("n1", all).unwrap();

        // N remote connects over 5 hosts (and one of this host's, which is nothing),
        // a change, a move and some disconnects: one delta per event.
        let mut events = 0;
        let apply = |d: BTreeMap<String, NetworkDelta>, events: &mut usize| {
            for (nid, d) in d {
                *events += 1;
                assert_eq!(push_delta(&drv, &nid, d, true).unwrap(), (true, true));
            }
        };
        const N: u8 = 40;
        for i in 0..N {
            apply(
                put(&mut v, rec(&format!("e{i}"), "n1", 2 + i % 5, i), own),
                &mut events,
            );
        }
        apply(put(&mut v, rec("mine", "n1", 1, 200), own), &mut events);
        let mut e3 = rec("e3", "n1", 4, 3);
        e3.aliases = vec!["api".into()];
        apply(put(&mut v, e3, own), &mut events);
        apply(put(&mut v, rec("e4", "n1", 9, 4), own), &mut events);
        for i in (0..N).step_by(3) {
            apply(del(&mut v, &format!("e{i}"), own), &mut events);
        }
        for i in 0..4u8 {
            apply(del(&mut v, &format!("x{i}"), own), &mut events);
        }
        let s = drv.state.lock().unwrap();
        assert_eq!(events, usize::from(N) + 2 + 14 + 4);
        assert_eq!(
            (s.full, s.deltas),
            (1, events),
            "one full set (adoption), then deltas"
        );
        assert_eq!((s.full_names, s.name_deltas), (1, events));

        // And the deltas add up to what a full refresh would have sent.
        let full = v.remote("n1", own);
        assert_eq!(s.peers, full.peers.iter().copied().collect());
        assert_eq!(s.statics, full.statics.iter().copied().collect());
        assert_eq!(s.neighbours, full.neighbours.iter().copied().collect());
        let names: Vec<NameRecord> = v
            .on_network("n1")
            .filter(|e| e.vtep != own)
            .flat_map(name_records)
            .collect();
        assert_eq!(s.names, pairs(&names).collect());
        assert!(s.peers.contains(&vtep(9)) && !s.peers.contains(&own));
    }

    #[test]
    fn a_driver_without_deltas_asks_for_the_whole_set() {
        let mut v = ClusterView::default();
        let d = put(&mut v, rec("a", "n1", 2, 1), vtep(1))
            .remove("n1")
            .unwrap();
        let null = crate::driver::record::NULL_DRIVER;
        assert_eq!(
            push_delta(&null, "n1", d.clone(), true).unwrap(),
            (false, false)
        );
        assert_eq!(
            push_delta(&null, "n1", d, false).unwrap(),
            (false, true),
            "no DNS"
        );
        let empty = NetworkDelta::default();
        assert_eq!(push_delta(&null, "n1", empty, true).unwrap(), (true, true));
    }

    #[test]
    fn node_records() {
        assert_eq!(
            node_address("nodes/192.0.2.1"),
            Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)))
        );
        assert_eq!(
            node_address("nodes/192.0.2.1:7946"),
            Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)))
        );
        assert_eq!(node_address("nodes/x"), None);
        assert_eq!(
            node_name(br#"{"name":"h1","address":"192.0.2.1"}"#).as_deref(),
            Some("h1")
        );
        assert_eq!(node_name(b"{"), None);
    }
}
