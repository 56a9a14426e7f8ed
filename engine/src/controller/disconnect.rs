//! Operation: disconnect a sandbox from a network (CNM `Leave` + `Delete` endpoint),
//! and the leave steps that sandbox removal shares.
//!
//! Steps, under the locks of the network and the sandbox: close the host sockets of
//! ports published on this network (undo: bind them again at the same addresses) →
//! the sandbox layer undoes the interface setup (undo: apply the description again)
//! → the driver's `leave` (undo: `join` again, whose description the previous
//! compensation then applies) → `delete_endpoint` (undo: `create_endpoint`) → commit (the endpoint deleted, the sandbox's published ports
//! cleared). With `force`, a driver that fails to leave is logged and the endpoint
//! removed anyway. After the commit: release the addresses, publish the model,
//! refresh DNS names and the sandbox's files.

use super::ipam_steps::endpoint_addresses;
use super::{lock, rebind_spec, unpublish_all, Inner};
use crate::driver::{EndpointRequest, JoinDescription, JoinRequest};
use crate::error::{Error, Result};
use crate::model::{Endpoint, Sandbox, Store};
use crate::store::Change;
use crate::txn::{blocking, Txn};
use std::sync::Arc;
use std::sync::Mutex;
use tapnet_sandbox::netns::Netns;

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
            if self.is_global(&nid) {
                self.forget_global_endpoint(&mut txn, &endpoint, &sb_name)
                    .await?;
            }
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
        // Docker `RevokeExternalConnectivity` (remote drivers; a no-op for others).
        let (d, n, e) = (Arc::clone(&driver), nid.to_string(), endpoint.id.clone());
        match blocking("revoke external connectivity", move || {
            d.revoke_external_connectivity(&n, &e)
        })
        .await
        {
            Ok(()) => {
                let (d, n, ep) = (Arc::clone(&driver), nid.to_string(), endpoint.clone());
                let ports = sb.map(|s| s.port_bindings.clone()).unwrap_or_default();
                txn.on_undo("program external connectivity again", move || {
                    d.program_external_connectivity(&n, &ep, &ports)
                });
            }
            Err(e) if force => {
                tracing::warn!(error = %e, "forced disconnect: revoking external connectivity failed");
            }
            Err(e) => return Err(e),
        }
        // The sandbox layer's setup first (a moved-in device goes back to the host
        // before the driver removes it). Its compensation applies the description again:
        // the one a rolled-back `leave` re-joined with, else the one it had.
        let layer = self.drivers.sandbox_layer();
        let rejoined: Arc<Mutex<Option<JoinDescription>>> = Arc::default();
        if let Some(before) = layer.description(&endpoint.id) {
            let (l, e) = (Arc::clone(&layer), endpoint.id.clone());
            match blocking("undo the interface setup", move || l.undo(&e)).await {
                Ok(()) => {
                    let (l, e, slot) =
                        (Arc::clone(&layer), endpoint.clone(), Arc::clone(&rejoined));
                    let (ns, name) = (self.netns_of(sid), sb_name.clone());
                    txn.on_undo(format!("set up {} again", endpoint.interface), move || {
                        let ns = no_namespace(ns, &name)?;
                        let desc = crate::sandbox_layer::with_link_local(
                            &lock(&slot).take().unwrap_or(before),
                            &e.link_local_ips,
                        );
                        let ifname = Some(e.interface.as_str()).filter(|n| !n.is_empty());
                        l.apply(&e.id, &ns, &name, &desc, ifname).map(drop)
                    });
                }
                Err(e) if force => {
                    tracing::warn!(error = %e, "forced disconnect: undoing the interface setup failed");
                }
                Err(e) => return Err(e),
            }
        }
        let (d, n, e) = (Arc::clone(&driver), nid.to_string(), endpoint.id.clone());
        match blocking("leave", move || d.leave(&n, &e)).await {
            Ok(()) => {
                let (d, n, ep, slot) = (
                    Arc::clone(&driver),
                    net.clone(),
                    endpoint.clone(),
                    Arc::clone(&rejoined),
                );
                let (ns, name) = (self.netns_of(sid), sb_name.clone());
                txn.on_undo("join again", move || {
                    let ns = no_namespace(ns, &name)?;
                    let desc = d.join(&JoinRequest {
                        network: &n,
                        endpoint: &ep,
                        sandbox: &ns,
                        sandbox_name: &name,
                    })?;
                    *lock(&slot) = Some(desc);
                    Ok(())
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
                    d.create_endpoint(&EndpointRequest {
                        network: &n,
                        endpoint: &ep,
                    })
                    .map(drop)
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

/// The namespace a compensation needs, or why it is missing.
fn no_namespace(ns: Option<Arc<Netns>>, sandbox: &str) -> Result<Arc<Netns>> {
    ns.ok_or_else(|| Error::InvalidRequest(format!("sandbox {sandbox} has no open namespace")))
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
