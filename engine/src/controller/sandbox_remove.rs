//! Operation: remove a sandbox.
//!
//! Steps, under the locks of the sandbox and of every network it is on (taken at
//! once; if its networks changed while waiting, taken again): leave every network
//! (the leave steps of a forced disconnect, each with its compensation) → commit the
//! deletion of its endpoints and its record in one store transaction. After the
//! commit: release the addresses, publish the model, close and (if tapnet created it)
//! destroy the namespace, remove its files, refresh the DNS names of its networks.
//! The namespace is destroyed only after the commit because that cannot be undone; if
//! destroying fails it is logged, and the next start removes namespace files that no
//! record names.

use super::ipam_steps::endpoint_addresses;
use super::{lock, net_key, not_found, sb_key, Inner};
use crate::error::{Error, Result};
use crate::model::Endpoint;
use crate::sandbox_files;
use crate::store::Change;
use crate::txn::{blocking, Txn};
use tapnet_sandbox::netns::Netns;

impl Inner {
    pub(super) async fn delete_sandbox(&self, what: &str) -> Result<()> {
        let sid = self.model().resolve_sandbox(what)?;
        // Lock the sandbox and its networks; retry if they changed meanwhile.
        let (_held, store, network_ids) = loop {
            let nets = |s: &crate::model::Store| -> Vec<String> {
                s.endpoints_of_sandbox(&sid)
                    .into_iter()
                    .map(|(n, _)| n.id.clone())
                    .collect()
            };
            let want = nets(&self.model());
            let held = self
                .locks
                .acquire(want.iter().map(|n| net_key(n)).chain([sb_key(&sid)]))
                .await;
            let store = self.model();
            if nets(&store) == want {
                break (held, store, want);
            }
        };
        let sandbox = store
            .sandboxes
            .get(&sid)
            .cloned()
            .ok_or_else(|| not_found("sandbox", what))?;
        let mut txn = Txn::new(format!("remove sandbox {}", sandbox.name));
        let r = async {
            let mut left: Vec<(String, Endpoint)> = Vec::new();
            for nid in &network_ids {
                let ep = self.leave_steps(&mut txn, &store, nid, &sid, true).await?;
                if self.is_global(nid) {
                    self.forget_global_endpoint(&mut txn, &ep, &sandbox.name)
                        .await?;
                }
                left.push((nid.clone(), ep));
            }
            let mut changes: Vec<Change> = left
                .iter()
                .map(|(_, ep)| Change::DeleteEndpoint(ep.id.clone()))
                .collect();
            changes.push(Change::DeleteSandbox(sid.clone()));
            self.commit(&txn, changes).await?;
            Ok(left)
        }
        .await;
        let left = txn.finish(r).await?;
        for (nid, ep) in &left {
            if let Some(net) = store.networks.get(nid) {
                self.release(&endpoint_addresses(net, ep));
            }
        }
        self.publish(|s| {
            for (nid, ep) in &left {
                if let Some(n) = s.networks.get_mut(nid) {
                    n.endpoints.remove(&ep.id);
                }
            }
            s.sandboxes.remove(&sid);
        });
        // Close our fd on the namespace before unmounting it.
        drop(lock(&self.netns).remove(&sid));
        let (owned, path) = (sandbox.owned, sandbox.netns_path.clone());
        let dir = sandbox_files::dir(&self.exec_root, &sid);
        let cleaned = blocking("remove namespace", move || {
            match std::fs::remove_dir_all(&dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    tracing::warn!(dir = %dir.display(), error = %e, "removing sandbox files")
                }
                _ => {}
            }
            if owned {
                Netns::destroy(&path)
                    .map_err(|e| Error::os(format!("remove namespace {}", path.display()), e))?;
            }
            Ok(())
        })
        .await;
        if let Err(e) = cleaned {
            tracing::warn!(sandbox = %sandbox.name, error = %e, "sandbox removed, but its namespace could not be; the next start removes it");
        }
        for (nid, _) in &left {
            self.refresh_names(nid).await;
        }
        self.locks.forget(&sb_key(&sid));
        tracing::info!(sandbox = %sandbox.name, "sandbox removed");
        Ok(())
    }
}
