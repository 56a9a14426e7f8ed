//! Operation: restore (daemon start).
//!
//! Rebuild the model, IPAM and data plane from the store, before serving. Reads
//! every record; opens each sandbox's namespace by path. A sandbox whose namespace is
//! gone (path missing or not a network namespace) is removed with its endpoints
//! (their addresses are free again) and logged; namespace files under
//! `<exec-root>/netns` that no record names (a removal whose unmount failed) are
//! removed, and so are what operations cut short by a crash leave: sandbox-file
//! directories of no sandbox, and taps in a sandbox's namespace that no endpoint
//! record names (made or renamed before their commit; in an adopted namespace only
//! taps under the bridge driver's temporary name `tap<12 hex>`, the rest is the
//! runtime's; hand-off sandboxes are the runtime's entirely). IPAM is rebuilt with [`restore_network_ipam`] for every network but the
//! configuration networks (`config_only`: they took no pools) (pools,
//! gateways, auxiliary addresses, every endpoint's IPv4 and IPv6 address); pool ids
//! that came out different are recorded again. Each network's switch is re-created,
//! then every endpoint is restored ([`Driver::restore_endpoint`]) on a small pool of
//! blocking threads; an endpoint that cannot be restored is dropped and logged. All
//! removals are committed in one store transaction, then the model is published and
//! the gateways get their names and published ports back. A hand-off sandbox's
//! devices were renamed by its runtime: each endpoint's device is found by its MAC
//! and its new name recorded (an endpoint whose device is gone is dropped), then
//! re-opened and recorded as handed off, never re-created. The taps of hand-off
//! endpoints dropped at start that are back in the daemon's namespace (dockerd moves a
//! device out before its `Leave`, which failed while tapnetd was down) are deleted. Records that do not make
//! sense (unreadable, an endpoint of an unknown network or sandbox, a pool that
//! overlaps another) are logged and left out; with a cluster store an endpoint of an
//! unknown network is set aside instead (perhaps of a global network, see `global`).

use super::ipam_steps::{endpoint_addresses, restore_network_ipam};
use super::{lock, rebind_spec, Inner};
use crate::driver::NetworkRequest;
use crate::driver::{Driver, Restored};
use crate::error::{Error, Result};
use crate::model::{Endpoint, Network, Sandbox};
use crate::ports;
use crate::sandbox_layer::SandboxLayer;
use crate::store::Change;
use crate::txn::{blocking, Txn};
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tapnet_sandbox::netns::Netns;

/// What [`super::Controller::restore`] did.
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
    /// Of a hand-off sandbox (its device found by MAC, see [`find_handed_off`]).
    handoff: bool,
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
                let restore = match job.handoff {
                    true => SandboxLayer::restore_handed_off,
                    false => SandboxLayer::restore,
                };
                let r = restore(
                    layer,
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
pub(super) fn namespace_gone(e: &tapnet_sandbox::Error) -> bool {
    match e {
        tapnet_sandbox::Error::Os { source, .. } => source.kind() == std::io::ErrorKind::NotFound,
        tapnet_sandbox::Error::Invalid(_) => true,
        tapnet_sandbox::Error::Netlink { .. } => false,
    }
}

impl Inner {
    pub(super) async fn restore(&self) -> Result<RestoreReport> {
        let started = std::time::Instant::now();
        let Some(kv) = self.store.clone() else {
            return Ok(RestoreReport::default());
        };
        let loaded = blocking("load store", move || {
            crate::store::load(kv.as_ref()).map_err(|e| Error::store("load the store", e))
        })
        .await?;
        let mut report = RestoreReport {
            skipped_records: loaded.skipped,
            ..RestoreReport::default()
        };
        let mut store = loaded.store;
        let mut changes: Vec<Change> = Vec::new();
        for e in loaded.orphan_endpoints {
            if self.cluster.is_some() {
                // Perhaps an endpoint of a global network: restored once the cluster
                // store's networks are loaded (`global`).
                lock(&self.pending_global).push(e);
                continue;
            }
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
        // Devices of hand-off sandboxes that are gone: dockerd moves a device back to
        // this namespace before its `Leave`; with tapnetd down, the tap stays here.
        let mut handed_back: HashSet<[u8; 6]> = store
            .networks
            .values()
            .flat_map(|n| n.endpoints.values())
            .filter(|e| stale.iter().any(|s| s.handoff && s.id == e.sandbox_id))
            .filter_map(|e| e.mac)
            .collect();
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
        // Namespace files no record names (a removal whose unmount failed).
        let named: HashSet<PathBuf> = store
            .sandboxes
            .values()
            .map(|s| s.netns_path.clone())
            .collect();
        let dir = self.exec_root.join("netns");
        blocking("remove unnamed namespace files", move || {
            remove_unnamed_namespaces(&dir, &named);
            Ok(())
        })
        .await?;
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

        // Taps left in sandboxes by operations a crash cut short (made or renamed
        // before their commit, or given back by a disconnect's undo before its commit):
        // no record names them. Before the data plane, so a tap a disconnect renamed
        // back to its temporary name does not stop its endpoint's re-creation.
        let sweep: Vec<(Arc<Netns>, String, bool, HashSet<String>)> = store
            .sandboxes
            .values()
            .filter(|s| !s.handoff)
            .filter_map(|s| {
                let ns = netns.get(&s.id)?;
                let named = store
                    .networks
                    .values()
                    .flat_map(|n| n.endpoints.values())
                    .filter(|e| e.sandbox_id == s.id)
                    .map(|e| e.interface.clone())
                    .collect();
                Some((Arc::clone(ns), s.name.clone(), s.owned, named))
            })
            .collect();
        let dir = self.exec_root.join("sandboxes");
        let sandbox_ids: HashSet<String> = store.sandboxes.keys().cloned().collect();
        blocking("remove orphan taps and files", move || {
            for (ns, name, owned, named) in sweep {
                remove_orphan_taps(&ns, &name, owned, &named);
            }
            remove_unnamed_sandbox_files(&dir, &sandbox_ids);
            Ok(())
        })
        .await?;

        // IPAM replay: the one replay of a recorded network (pools, gateways,
        // auxiliary addresses, every endpoint's IPv4 and IPv6 address).
        let mut unusable: Vec<String> = Vec::new();
        {
            let mut ipam = self.ipam();
            for net in store.networks.values_mut() {
                if net.config_only {
                    // Settings only: no pools were taken.
                    continue;
                }
                let before = (net.ipv4_pool.clone(), net.ipv6.clone());
                match restore_network_ipam(ipam.as_mut(), net) {
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
        }
        for id in unusable {
            store.networks.remove(&id);
        }

        // Hand-off sandboxes: their runtime renamed each device; find it by MAC.
        let handoff: Vec<(String, Arc<Netns>)> = store
            .sandboxes
            .values()
            .filter(|s| s.handoff)
            .filter_map(|s| netns.get(&s.id).map(|ns| (s.id.clone(), Arc::clone(ns))))
            .collect();
        let found = blocking("find handed-off devices", move || {
            Ok(find_handed_off(handoff))
        })
        .await?;
        for net in store.networks.values_mut() {
            let mut gone = Vec::new();
            for ep in net.endpoints.values_mut() {
                let Some(names) = found.get(&ep.sandbox_id) else {
                    continue;
                };
                match ep.mac.and_then(|m| names.get(&m)) {
                    Some(name) if *name != ep.interface => {
                        tracing::info!(endpoint = %ep.id, from = %ep.interface, to = %name, "handed-off device found under its new name");
                        ep.interface = name.clone();
                        changes.push(Change::PutEndpoint(ep.clone()));
                    }
                    Some(_) => {}
                    None => gone.push(ep.id.clone()),
                }
            }
            for id in gone {
                if let Some(e) = net.endpoints.remove(&id) {
                    handed_back.extend(e.mac);
                    self.release(&endpoint_addresses(net, &e));
                    tracing::warn!(network = %net.name, endpoint = %id, ip = ?e.ipv4, "the handed-off device of an endpoint is gone from its sandbox; endpoint dropped, its address is free");
                    changes.push(Change::DeleteEndpoint(id));
                }
            }
        }

        if !handed_back.is_empty() {
            blocking("remove handed-back taps", move || {
                remove_handed_back(&handed_back);
                Ok(())
            })
            .await?;
        }

        // Data plane: one switch per network, then the endpoints in parallel.
        let mut jobs: Vec<RestoreJob> = Vec::new();
        for net in store.networks.values() {
            let driver = match self.drivers.get_restored(&net.driver) {
                Ok(d) => d,
                Err(e) => {
                    tracing::error!(network = %net.name, error = %e, "network's driver is missing; its endpoints stay detached");
                    continue;
                }
            };
            let (d, n) = (Arc::clone(&driver), net.clone());
            if let Err(e) = blocking("restore network", move || {
                d.restore_network(&NetworkRequest { network: &n })
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
                    handoff: sb.handoff,
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
                        self.release(&endpoint_addresses(n, &job.endpoint));
                    }
                    changes.push(Change::DeleteEndpoint(job.endpoint.id.clone()));
                    report.dropped_endpoints += 1;
                }
            }
        }
        if !changes.is_empty() {
            let txn = Txn::new("clean up the store at start");
            self.commit(&txn, changes).await?;
            txn.commit();
        }
        let sandboxes = store.sandboxes.len();
        *lock(&self.netns) = netns;
        self.publish(|s| *s = store);
        self.restore_gateways().await;
        report.elapsed = started.elapsed();
        tracing::info!(
            networks = report.networks,
            sandboxes,
            recreated = report.recreated,
            dropped = report.dropped_endpoints,
            stale_sandboxes = report.stale_sandboxes.len(),
            "restored {} endpoints in {} ms",
            report.endpoints,
            report.elapsed.as_millis()
        );
        Ok(report)
    }

    /// Daemon start, after the data plane is back: every gateway's names, every
    /// sandbox's files, and the published ports at the host addresses they had.
    /// A port that cannot be bound again is logged and left unbound.
    async fn restore_gateways(&self) {
        let store = self.model();
        for nid in store.networks.keys() {
            self.refresh_names(nid).await;
        }
        let mut changes = Vec::new();
        let mut updated: Vec<Sandbox> = Vec::new();
        for (sid, sb) in &store.sandboxes {
            self.refresh_files(sid).await;
            let sb = sb.clone();
            let Some(p) = sb.published.clone() else {
                continue;
            };
            let net = store.networks.get(&p.network_id);
            let on_net = net
                .and_then(|n| n.endpoint_of(sid))
                .is_some_and(|e| e.ipv4.map(IpAddr::V4) == Some(p.sandbox_ip));
            let driver = net.and_then(|n| self.drivers.get_restored(&n.driver).ok());
            let (Some(driver), true) = (driver, on_net) else {
                tracing::warn!(sandbox = %sb.name, "published ports' network is gone; ports released");
                let after = Sandbox {
                    published: None,
                    ..sb
                };
                changes.push(Change::PutSandbox(after.clone()));
                updated.push(after);
                continue;
            };
            let p2 = p.clone();
            let name = sb.name.clone();
            let kept = blocking("re-publish ports", move || {
                let mut kept = Vec::new();
                for b in &p2.ports {
                    match driver.publish(&p2.network_id, rebind_spec(b, p2.sandbox_ip)) {
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
                updated.push(after);
            }
        }
        if !changes.is_empty() {
            let txn = Txn::new("record re-published ports");
            if let Err(e) = self.commit(&txn, changes).await {
                tracing::warn!(error = %e, "recording re-published ports");
            }
            txn.commit();
        }
        self.publish(|s| {
            for sb in updated {
                s.sandboxes.insert(sb.id.clone(), sb);
            }
        });
    }
}

/// The devices (MAC → name) in each hand-off sandbox's namespace; a sandbox whose
/// links cannot be listed is left out (its endpoints are then restored by name).
fn find_handed_off(
    sandboxes: Vec<(String, Arc<Netns>)>,
) -> HashMap<String, HashMap<[u8; 6], String>> {
    let mut out = HashMap::new();
    for (sid, ns) in sandboxes {
        match super::handoff::links(Some(&ns)) {
            Ok(links) => {
                let by_mac = links
                    .into_iter()
                    .filter_map(|(name, mac)| mac.map(|m| (m, name)))
                    .collect();
                out.insert(sid, by_mac);
            }
            Err(e) => {
                tracing::warn!(sandbox = %sid, error = %e, "cannot list the devices of a hand-off sandbox")
            }
        }
    }
    out
}

/// Delete the taps in the daemon's namespace that carry one of `macs` (endpoints of
/// hand-off sandboxes dropped at start; named `tap…` by the bridge driver), logged.
fn remove_handed_back(macs: &HashSet<[u8; 6]>) {
    let found = match super::handoff::links(None) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list this namespace's devices to remove handed-back taps");
            return;
        }
    };
    for (name, mac) in found {
        if !name.starts_with("tap") || !mac.is_some_and(|m| macs.contains(&m)) {
            continue;
        }
        let removed = tapnet_sandbox::netlink::Handle::new().and_then(|mut nl| {
            match nl.link_index(&name)? {
                Some(i) => nl.delete_link(i),
                None => Ok(()),
            }
        });
        match removed {
            Ok(()) => {
                tracing::warn!(tap = %name, "tap of a removed Docker container, handed back while tapnetd was down, deleted")
            }
            Err(e) => tracing::warn!(tap = %name, error = %e, "deleting a handed-back tap"),
        }
    }
}

/// Remove the namespace files under `dir` that are not in `named` (best effort).
fn remove_unnamed_namespaces(dir: &std::path::Path, named: &HashSet<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        if named.contains(&path) {
            continue;
        }
        match Netns::destroy(&path) {
            Ok(()) => {
                tracing::warn!(path = %path.display(), "namespace file of no sandbox removed")
            }
            Err(err) => {
                tracing::warn!(path = %path.display(), error = %err, "removing a namespace file of no sandbox")
            }
        }
    }
}

/// Whether `name` is the bridge driver's temporary tap name (`tap` + 12 hex digits).
fn is_temporary_tap_name(name: &str) -> bool {
    name.strip_prefix("tap")
        .is_some_and(|h| h.len() == 12 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Delete the taps in sandbox `name`'s namespace that no endpoint record names (see
/// [`Inner::restore`]): every such tap in a namespace tapnet created (`owned`); in an
/// adopted one only taps under the temporary name (the runtime's own devices are left
/// alone; a renamed leftover there is logged). A device that is not a tap, or that a
/// process holds, cannot be re-opened and is left.
fn remove_orphan_taps(ns: &Netns, name: &str, owned: bool, named: &HashSet<String>) {
    let links = match super::handoff::links(Some(ns)) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(sandbox = %name, error = %e, "cannot list the devices of a sandbox to remove orphan taps");
            return;
        }
    };
    for (dev, _) in links {
        if dev == "lo" || named.contains(&dev) {
            continue;
        }
        // Either kind of tap (`--tap-queues`): one queue is enough to clear persistence.
        let Ok(tap) = tapnet_sandbox::tap::reopen_queues(ns, &dev, 1) else {
            continue;
        };
        if !owned && !is_temporary_tap_name(&dev) {
            tracing::warn!(sandbox = %name, tap = %dev, "a tap no endpoint names in an adopted namespace; left alone");
            continue;
        }
        match tapnet_sandbox::tap::destroy_queues(tap) {
            Ok(()) => {
                tracing::warn!(sandbox = %name, tap = %dev, "orphan tap (an operation cut short by a crash) removed")
            }
            Err(e) => {
                tracing::warn!(sandbox = %name, tap = %dev, error = %e, "removing an orphan tap")
            }
        }
    }
}

/// Remove the sandbox-file directories under `dir` of no sandbox in `ids` (a create
/// cut short before its commit, a removal after it).
fn remove_unnamed_sandbox_files(dir: &std::path::Path, ids: &HashSet<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let id = e.file_name().to_string_lossy().into_owned();
        if ids.contains(&id) {
            continue;
        }
        match std::fs::remove_dir_all(e.path()) {
            Ok(()) => tracing::warn!(dir = %e.path().display(), "files of no sandbox removed"),
            Err(err) => {
                tracing::warn!(dir = %e.path().display(), error = %err, "removing files of no sandbox")
            }
        }
    }
}
