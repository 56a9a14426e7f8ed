//! Operation: prune networks (`POST /networks/prune`).
//!
//! The API picks the candidates on a snapshot (its filters); each candidate that is
//! still there, not pre-defined and without endpoints is removed by the ordinary
//! removal, one transaction per network, so a failure leaves the others removed and
//! that one intact.
//!
//! Global networks (recorded in the cluster store) are never pruned: a prune is a
//! clean-up of this host, and a global network is a cluster-wide object other hosts
//! may be about to use even when no host has endpoints on it now (as Docker leaves
//! swarm-scope networks to the manager); `network rm` removes one.

use super::Inner;
use crate::model;

impl Inner {
    pub(super) async fn prune(&self, ids: Vec<String>) -> Vec<String> {
        let mut removed = Vec::new();
        for id in ids {
            let Some(net) = self.model().networks.get(&id).cloned() else {
                continue;
            };
            if model::is_predefined(&net.name) || !net.endpoints.is_empty() {
                continue;
            }
            if self.is_global(&id) {
                tracing::debug!(network = %net.name, "prune: global network skipped");
                continue;
            }
            match self.delete_network(&id).await {
                Ok(()) => removed.push(net.name),
                Err(e) => tracing::warn!(network = %net.name, error = %e, "prune: not removed"),
            }
        }
        removed
    }
}
