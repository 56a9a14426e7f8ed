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
//! * Connect to a global network claims its IPv4 address cluster-wide: the lowest
//!   address of the subnet (or range) that is neither the gateway, an auxiliary
//!   address nor an `ipam/<network>/<ip>` key, claimed create-if-absent (a conflict
//!   retries with the next one); a static address is claimed the same way (a conflict
//!   is a 409). The endpoint is recorded as `endpoints/<id>` ([`GlobalEndpoint`]: MAC,
//!   IPs, this node's VTEP, the sandbox's name) under this node's lease, so both
//!   vanish with the node. Disconnect deletes both keys.
//! * On every change under `endpoints/` each global network's tunnel learns the remote
//!   endpoints ([`crate::driver::Driver::set_remote`]): the VTEPs of the other hosts
//!   with endpoints on it, each remote MAC's VTEP, each remote IP's MAC.
//! * Removing a global network is refused (409) while any host has an endpoint on it.
//! * Restart: a global network's record is not in the local store (it comes back from
//!   the cluster store), its endpoints on this host are. [`super::Controller::restore`]
//!   sets those aside (their network is unknown then); once the networks are loaded
//!   each is restored: its records are written again under the node's current lease
//!   (if `endpoints/<id>` expired meanwhile, its address is claimed create-if-absent
//!   again; taken: the endpoint is dropped), its addresses reserved, the data plane
//!   restored as any endpoint's. One that cannot be restored is dropped and logged.

use super::{net_key, Controller, Inner, NETWORKS_LOCK};
use crate::driver::overlay::{parse_vni, vni_for_name, PEERS_OPTION, VXLANID_OPTION};
use crate::driver::{NetworkRequest, RemoteEndpoints};
use crate::error::{Error, Result, StoreError};
use crate::model::{Endpoint, Network};
use crate::store::etcd::{EtcdStore, LeaseId};
use crate::store::{Compare, KvOp, KvStore, WatchEvent};
use crate::txn::{blocking, Txn};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

/// Key prefixes in the cluster store.
const NETWORKS: &str = "networks/";
const ENDPOINTS: &str = "endpoints/";
const NAMES: &str = "names/";
const VNIS: &str = "vnis/";
const IPAM: &str = "ipam/";

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
            mac: endpoint.mac,
            ipv4: endpoint.ipv4,
            ipv6: endpoint.ipv6,
            vtep,
        }
    }
}

fn store_err(op: &str, e: StoreError) -> Error {
    Error::store(op.to_string(), e)
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

    /// The endpoints any host has on global network `nid`.
    async fn global_endpoints(&self) -> Result<Vec<GlobalEndpoint>> {
        let node = self.node()?;
        let kvs = blocking("read endpoints", move || {
            node.store
                .range(ENDPOINTS)
                .map_err(|e| store_err("read endpoints", e))
        })
        .await?;
        Ok(kvs
            .iter()
            .filter_map(|kv| serde_json::from_slice::<GlobalEndpoint>(&kv.value).ok())
            .collect())
    }

    /// Refuse to remove global network `net` while any host has endpoints on it.
    pub(super) async fn check_global_unused(&self, net: &Network) -> Result<()> {
        let mut users: Vec<String> = self
            .global_endpoints()
            .await?
            .into_iter()
            .filter(|e| e.network_id == net.id)
            .map(|e| format!("{} on {}", e.sandbox, e.vtep.ip()))
            .collect();
        if users.is_empty() {
            return Ok(());
        }
        users.sort();
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
        let node = self.node()?;
        let range = net.ip_range.unwrap_or(subnet);
        let mut reserved: BTreeSet<Ipv4Addr> = net.aux_addresses.values().copied().collect();
        reserved.extend(net.gateway);
        reserved.insert(subnet.network());
        reserved.insert(subnet.broadcast());
        let (nid, store, lease) = (net.id.clone(), Arc::clone(&node.store), node.lease());
        let op = txn.op().to_string();
        let ip = blocking("claim an address in the cluster store", move || {
            let prefix = format!("{IPAM}{nid}/");
            for _ in 0..ATTEMPTS {
                let ip = match requested {
                    Some(ip) => ip,
                    None => {
                        let taken: BTreeSet<Ipv4Addr> = store
                            .range(&prefix)
                            .map_err(|e| store_err(&op, e))?
                            .iter()
                            .filter_map(|kv| kv.key.strip_prefix(&prefix)?.parse().ok())
                            .collect();
                        range
                            .hosts()
                            .find(|a| {
                                subnet.contains(a) && !reserved.contains(a) && !taken.contains(a)
                            })
                            .ok_or_else(|| {
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
        Ok(Some(ip))
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
        let key = format!("{ENDPOINTS}{}", endpoint.id);
        let (store, k, op, lease) = (
            Arc::clone(&node.store),
            key.clone(),
            txn.op().to_string(),
            node.lease(),
        );
        blocking("record the endpoint in the cluster store", move || {
            store
                .txn_leased(&[], &[KvOp::Put(k, value)], lease)
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
        let ek = format!("{ENDPOINTS}{}", endpoint.id);
        let ik = endpoint
            .ipv4
            .map(|ip| format!("{IPAM}{}/{ip}", endpoint.network_id));
        let mut ops = vec![KvOp::Delete(ek.clone())];
        ops.extend(ik.clone().map(KvOp::Delete));
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
                let mut ops = vec![KvOp::Put(ek, value)];
                ops.extend(ik.map(|k| KvOp::Put(k, Vec::new())));
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
            let value = json("endpoint", &rec)?;
            let ek = format!("{ENDPOINTS}{}", ep.id);
            let ik = ep.ipv4.map(|ip| format!("{IPAM}{}/{ip}", ep.network_id));
            let (store, lease, op) = (Arc::clone(&node.store), node.lease(), txn.op().to_string());
            let (ek2, ik2) = (ek.clone(), ik.clone());
            blocking("claim the endpoint again", move || {
                let ours = store
                    .range(&ek2)
                    .map_err(|e| store_err(&op, e))?
                    .iter()
                    .any(|kv| kv.key == ek2);
                // Ours still (restarted within the TTL): just move it to the new lease.
                let compares: Vec<Compare> = match (&ik2, ours) {
                    (Some(k), false) => vec![Compare {
                        key: k.clone(),
                        revision: None,
                    }],
                    _ => Vec::new(),
                };
                let mut ops = vec![KvOp::Put(ek2, value)];
                ops.extend(ik2.map(|k| KvOp::Put(k, Vec::new())));
                store
                    .txn_leased(&compares, &ops, lease)
                    .map(drop)
                    .map_err(|e| match e {
                        StoreError::Conflict { key, .. } => Error::Conflict(format!(
                            "its address was claimed by another host meanwhile ({key})"
                        )),
                        e => store_err(&op, e),
                    })
            })
            .await?;
            let store = Arc::clone(&node.store);
            txn.on_undo("delete the endpoint's cluster records", move || {
                let mut ops = vec![KvOp::Delete(ek)];
                ops.extend(ik.map(KvOp::Delete));
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
        tracing::info!(network = %net.name, "global network removed (gone from the cluster store)");
    }

    /// Tell every global network's tunnel where the remote endpoints are.
    async fn refresh_remote(&self) {
        let Ok(node) = self.node() else { return };
        let eps = match self.global_endpoints().await {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "reading endpoints from the cluster store");
                return;
            }
        };
        let store = self.model();
        for (nid, net) in &store.networks {
            if !self.is_global(nid) {
                continue;
            }
            let mut remote = RemoteEndpoints::default();
            for e in eps
                .iter()
                .filter(|e| &e.network_id == nid && e.vtep != node.vtep)
            {
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
            let Ok(driver) = self.drivers.get(&net.driver) else {
                continue;
            };
            let (id, name) = (nid.clone(), net.name.clone());
            tracing::debug!(network = %name, ?remote, "remote endpoints");
            if let Err(e) = blocking("set remote endpoints", move || {
                driver.set_remote(&id, &remote)
            })
            .await
            {
                tracing::warn!(network = %name, error = %e, "updating the tunnel's remote endpoints");
            }
        }
    }

    /// Apply one change of the cluster store.
    async fn on_cluster_event(&self, ev: WatchEvent) {
        match &ev.op {
            KvOp::Put(k, v) if k.starts_with(NETWORKS) => {
                match serde_json::from_slice::<Network>(v) {
                    Ok(net) => {
                        let id = net.id.clone();
                        self.adopt_global_network(net).await;
                        self.install_keys(&id).await;
                        self.refresh_remote().await;
                    }
                    Err(e) => tracing::warn!(key = %k, error = %e, "bad network record"),
                }
            }
            KvOp::Delete(k) if k.starts_with(NETWORKS) => {
                self.drop_global_network(&k[NETWORKS.len()..]).await;
            }
            op if op.key().starts_with(ENDPOINTS) => self.refresh_remote().await,
            op if op.key().starts_with(super::keys::KEYS) => self.on_keys_event(op).await,
            _ => {}
        }
    }
}

impl Controller {
    /// With a cluster store: create the global networks recorded there, then follow
    /// the store's changes on a thread of its own (see the module doc). Call after
    /// [`Controller::restore`]; no-op without a cluster store.
    pub async fn start_cluster_sync(&self) -> Result<()> {
        let Ok(node) = self.inner.node() else {
            return Ok(());
        };
        // Watch first, so that nothing committed after the load is missed (what both
        // see is applied twice, harmlessly).
        let rx = node.store.watch("");
        let store = Arc::clone(&node.store);
        let nets = blocking("read networks", move || {
            store
                .range(NETWORKS)
                .map_err(|e| store_err("read global networks", e))
        })
        .await?;
        for kv in nets {
            match serde_json::from_slice::<Network>(&kv.value) {
                Ok(net) => self.inner.adopt_global_network(net).await,
                Err(e) => tracing::warn!(key = %kv.key, error = %e, "bad network record"),
            }
        }
        self.inner.install_all_keys().await;
        self.start_key_rotation()?;
        self.inner.restore_global_endpoints().await;
        self.inner.refresh_remote().await;
        let inner = Arc::clone(&self.inner);
        let rt = tokio::runtime::Handle::current();
        std::thread::Builder::new()
            .name("tapnet-cluster".into())
            .spawn(move || {
                for ev in rx {
                    rt.block_on(inner.on_cluster_event(ev));
                }
                tracing::warn!("cluster store watch ended");
            })
            .map_err(|e| Error::Task {
                op: "start the cluster store watch".into(),
                message: e.to_string(),
            })?;
        Ok(())
    }
}
