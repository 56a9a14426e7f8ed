//! Operation: remove a network (CNM `Delete`).
//!
//! Steps, under the `networks` lock and the network's: refuse pre-defined networks
//! (403), a configuration network that a `ConfigFrom` network uses (403, dockerd's
//! "configuration network %q is in use") and networks with endpoints (409; a global network: endpoints on any host,
//! from the cluster store) → remove the driver's data plane (undo:
//! create it again) → commit the deletion. After the commit: give the pools back to
//! IPAM (a configuration network took none) and publish.

use super::ipam_steps::network_pools;
use super::{net_key, not_found, Inner, NETWORKS_LOCK};
use crate::driver::NetworkRequest;
use crate::error::{Error, Result};
use crate::model;
use crate::store::Change;
use crate::txn::{blocking, Txn};
use std::sync::Arc;

impl Inner {
    pub(super) async fn delete_network(&self, what: &str) -> Result<()> {
        let id = self.model().resolve_network(what)?;
        let _held = self
            .locks
            .acquire([NETWORKS_LOCK.to_string(), net_key(&id)])
            .await;
        let store = self.model();
        let network = store
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
        if network.config_only {
            let mut users: Vec<&str> = store
                .networks
                .values()
                .filter(|n| n.config_from.as_deref() == Some(network.name.as_str()))
                .map(|n| n.name.as_str())
                .collect();
            if !users.is_empty() {
                users.sort_unstable();
                return Err(Error::Forbidden(format!(
                    "configuration network {:?} is in use (by network {}): remove {} first",
                    network.name,
                    users.join(", "),
                    if users.len() == 1 { "it" } else { "them" }
                )));
            }
        }
        if !network.endpoints.is_empty() {
            let mut names: Vec<String> = network
                .endpoints
                .values()
                .map(|e| {
                    store
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
        let global = self.is_global(&id);
        if global {
            self.check_global_unused(&network).await?;
        }
        let driver = self.drivers.get(&network.driver)?;
        let mut txn = Txn::new(format!("remove network {}", network.name));
        let r = async {
            let (d, nid) = (Arc::clone(&driver), id.clone());
            blocking("delete network", move || d.delete_network(&nid)).await?;
            let (d, n) = (Arc::clone(&driver), network.clone());
            txn.on_undo("re-create the network's data plane", move || {
                d.create_network(&NetworkRequest { network: &n })
            });
            if global {
                self.commit_global_removal(&txn, &network).await
            } else {
                self.commit(&txn, vec![Change::DeleteNetwork(id.clone())])
                    .await
            }
        }
        .await;
        txn.finish(r).await?;
        if !network.config_only {
            // A configuration network took no pools (its subnet may be another's).
            self.release(&network_pools(&network));
        }
        self.publish(|s| {
            s.networks.remove(&id);
        });
        self.locks.forget(&net_key(&id));
        tracing::info!(network = %network.name, "network removed");
        Ok(())
    }
}
