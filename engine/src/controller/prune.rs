//! Operation: prune networks (`POST /networks/prune`).
//!
//! The API picks the candidates on a snapshot (its filters); each candidate that is
//! still there, not pre-defined and without endpoints is removed by the ordinary
//! removal, one transaction per network, so a failure leaves the others removed and
//! that one intact.

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
            match self.delete_network(&id).await {
                Ok(()) => removed.push(net.name),
                Err(e) => tracing::warn!(network = %net.name, error = %e, "prune: not removed"),
            }
        }
        removed
    }
}
