//! Operation: disconnect a sandbox from a network (CNM `Leave` + `Delete` endpoint),
//! and the leave steps that sandbox removal shares.
//!
//! Steps, under the locks of the network and the sandbox: close the host sockets of
//! ports published on this network (undo: bind them again at the same addresses) →
//! the driver's `leave` (undo: `join` again) → `delete_endpoint` (undo:
//! `create_endpoint`) → commit (the endpoint deleted, the sandbox's published ports
//! cleared). With `force`, a driver that fails to leave is logged and the endpoint
//! removed anyway. After the commit: release the addresses, publish the model,
//! refresh DNS names and the sandbox's files.

use super::ipam_steps::endpoint_addresses;
use super::{rebind_spec, unpublish_all, Inner};
use crate::error::{Error, Result};
use crate::model::{Endpoint, Sandbox, Store};
use crate::store::Change;
use crate::txn::{blocking, Txn};
use std::sync::Arc;

impl Inner {
    pub(super) async fn disconnect(&self, network: &str, sandbox: &str, force: bool) -> Result<()> {
        let (_held, nid, sid, store) = self.lock_pair(network, sandbox).await?;
        let sb_name = store
            .sandboxes
            .get(&sid)
            .map_or_else(|| sid.clone(), |s| s.name.clone());
        let mut txn = Txn::new(format!("disconnect {sb_name} from network {network}"));
        let r = async {
            let endpoint = self
                .leave_steps(&mut txn, &store, &nid, &sid, force)
                .await?;
            let mut changes = vec![Change::DeleteEndpoint(endpoint.id.clone())];
            let unpublished = unpublished(&store, &nid, &sid);
            if let Some(s) = &unpublished {
                changes.push(Change::PutSandbox(s.clone()));
            }
            self.commit(&txn, changes).await?;
            Ok((endpoint, unpublished))
        }
        .await;
        let (endpoint, unpublished) = txn.finish(r).await?;
        if let Some(net) = store.networks.get(&nid) {
            self.release(&endpoint_addresses(net, &endpoint));
        }
        self.publish(|s| {
            if let Some(n) = s.networks.get_mut(&nid) {
                n.endpoints.remove(&endpoint.id);
            }
            if let Some(after) = unpublished {
                s.sandboxes.insert(sid.clone(), after);
            }
        });
        tracing::info!(network = %network, sandbox = %sb_name, "disconnected");
        self.refresh_names(&nid).await;
        self.refresh_files(&sid).await;
        Ok(())
    }

    /// The data-plane side of taking sandbox `sid` off network `nid`, as steps of
    /// `txn` (see the module doc). Returns the endpoint; the model and IPAM are
    /// untouched.
    pub(super) async fn leave_steps(
        &self,
        txn: &mut Txn,
        store: &Store,
        nid: &str,
        sid: &str,
        force: bool,
    ) -> Result<Endpoint> {
        let net = super::ipam_steps::network_in(store, nid, nid)?;
        let sb = store.sandboxes.get(sid);
        let sb_name = sb.map_or_else(|| sid.to_string(), |s| s.name.clone());
        let endpoint = net.endpoint_of(sid).cloned().ok_or_else(|| {
            Error::NotFound(format!(
                "sandbox {sb_name} is not connected to network {}",
                net.name
            ))
        })?;
        let driver = self.drivers.get(&net.driver)?;
        let published = sb
            .and_then(|s| s.published.clone())
            .filter(|p| p.network_id == nid);
        if let Some(p) = published {
            let (d, p2) = (Arc::clone(&driver), p.clone());
            blocking("unpublish", move || {
                unpublish_all(d.as_ref(), &p2);
                Ok(())
            })
            .await?;
            let d = Arc::clone(&driver);
            txn.on_undo("publish the ports again", move || {
                for b in &p.ports {
                    d.publish(&p.network_id, rebind_spec(b, p.sandbox_ip))?;
                }
                Ok(())
            });
        }
        let (d, n, e) = (Arc::clone(&driver), nid.to_string(), endpoint.id.clone());
        match blocking("leave", move || d.leave(&n, &e)).await {
            Ok(()) => {
                let ns = self.netns_of(sid);
                let (d, n, ep, name) = (
                    Arc::clone(&driver),
                    net.clone(),
                    endpoint.clone(),
                    sb_name.clone(),
                );
                txn.on_undo(format!("join {} again", endpoint.interface), move || {
                    let ns = ns.ok_or_else(|| {
                        Error::InvalidRequest(format!("sandbox {name} has no open namespace"))
                    })?;
                    d.join(&n, &ep, &ns, &name).map(|_| ())
                });
            }
            Err(e) if force => {
                tracing::warn!(error = %e, "forced disconnect: leave failed, removing the endpoint anyway");
            }
            Err(e) => return Err(e),
        }
        let (d, n, e) = (Arc::clone(&driver), nid.to_string(), endpoint.id.clone());
        match blocking("delete endpoint", move || d.delete_endpoint(&n, &e)).await {
            Ok(()) => {
                let (d, n, ep) = (Arc::clone(&driver), net.clone(), endpoint.clone());
                txn.on_undo("create the driver's endpoint again", move || {
                    d.create_endpoint(&n, &ep)
                });
            }
            Err(e) if force => {
                tracing::warn!(error = %e, "forced disconnect: delete_endpoint failed, removing the endpoint anyway");
            }
            Err(e) => return Err(e),
        }
        Ok(endpoint)
    }
}

/// The sandbox record after its ports published on `nid` were closed, if it had any.
fn unpublished(store: &Store, nid: &str, sid: &str) -> Option<Sandbox> {
    store
        .sandboxes
        .get(sid)
        .filter(|s| s.published.as_ref().is_some_and(|p| p.network_id == nid))
        .map(|s| Sandbox {
            published: None,
            ..s.clone()
        })
}
