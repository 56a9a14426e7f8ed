//! Operations for sandboxes whose runtime configures them (hand-off sandboxes, see
//! [`crate::model::Sandbox::handoff`]; dockerd through tapnet's Docker plugin).
//!
//! * [`Inner::rename_network`]: give a network the name its runtime knows it by
//!   (dockerd does not send the name with `CreateNetwork`): under the `networks` lock
//!   and the network's, the name checked and unique → commit → publish.
//! * [`Inner::rename_sandbox`]: the same for a sandbox (a container's name), under
//!   the `sandboxes` lock and the sandbox's; its networks' DNS names follow.
//! * [`Inner::publish_ports`]: publish a sandbox's ports after it joined (Docker's
//!   `ProgramExternalConnectivity` comes after `Join`), under the `sandboxes` lock,
//!   the sandbox's and the network's: the sandbox is on the network with an IPv4
//!   address, has no published ports yet, the network has a gateway service, no other
//!   sandbox asked for the same host ports → publish each at the gateway (undo:
//!   unpublish) → commit the sandbox's bindings and where they are bound → publish.
//!   [`Inner::unpublish_ports`] closes them again and commits the sandbox without
//!   them. The published ports then live as any sandbox's do: a disconnect closes
//!   them, a restart binds them again.
//! * [`Inner::vanished`]: the hand-off sandboxes whose namespace file no longer names
//!   the namespace tapnet holds (removed or unmounted: the runtime deleted the
//!   sandbox without telling tapnet), and the endpoints of hand-off sandboxes whose
//!   device is neither in the sandbox (by MAC) nor in the daemon's namespace (by the
//!   name it was handed off under): deleted from inside, or its namespace died.
//!   It changes nothing, except that a hand-off namespace that did not exist when
//!   it was adopted is opened (and held) once it does.

use super::{lock, net_key, not_found, publish_one, sb_key, Inner, NETWORKS_LOCK, SANDBOXES_LOCK};
use crate::error::{Error, Result};
use crate::ports::{self, NatProto as _, PortBinding};
use crate::store::Change;
use crate::txn::{blocking, Txn};
use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;
use tapnet_sandbox::netns::Netns;

/// What [`Inner::vanished`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Vanished {
    /// Ids of hand-off sandboxes whose namespace is gone.
    pub sandboxes: Vec<String>,
    /// `(network id, sandbox id, endpoint id)` of endpoints whose device is gone.
    pub endpoints: Vec<(String, String, String)>,
}

impl Inner {
    pub(super) async fn rename_network(&self, what: &str, name: &str) -> Result<()> {
        super::validate_name("network", name)?;
        let id = self.model().resolve_network(what)?;
        let _held = self
            .locks
            .acquire([NETWORKS_LOCK.to_string(), net_key(&id)])
            .await;
        let store = self.model();
        let mut network = store
            .networks
            .get(&id)
            .cloned()
            .ok_or_else(|| not_found("network", what))?;
        if network.name == name {
            return Ok(());
        }
        if crate::model::is_predefined(&network.name) || self.is_global(&id) {
            return Err(Error::Forbidden(format!(
                "network {} cannot be renamed",
                network.name
            )));
        }
        if store.networks.values().any(|n| n.name == name) {
            return Err(Error::Conflict(format!(
                "network with name {name} already exists"
            )));
        }
        let old = std::mem::replace(&mut network.name, name.to_string());
        let txn = Txn::new(format!("rename network {old} to {name}"));
        let r = self
            .commit(&txn, vec![Change::PutNetwork(Box::new(network.clone()))])
            .await;
        txn.finish(r).await?;
        tracing::info!(id = %id, from = %old, to = %name, "network renamed");
        self.publish(|s| {
            if let Some(n) = s.networks.get_mut(&id) {
                n.name = network.name;
            }
        });
        Ok(())
    }

    pub(super) async fn rename_sandbox(&self, what: &str, name: &str) -> Result<()> {
        super::validate_name("sandbox", name)?;
        let sid = self.model().resolve_sandbox(what)?;
        let _held = self
            .locks
            .acquire([SANDBOXES_LOCK.to_string(), sb_key(&sid)])
            .await;
        let store = self.model();
        let mut sandbox = store
            .sandboxes
            .get(&sid)
            .cloned()
            .ok_or_else(|| not_found("sandbox", what))?;
        if sandbox.name == name {
            return Ok(());
        }
        if store.sandboxes.values().any(|s| s.name == name) {
            return Err(Error::Conflict(format!(
                "sandbox with name {name} already exists"
            )));
        }
        let old = std::mem::replace(&mut sandbox.name, name.to_string());
        let txn = Txn::new(format!("rename sandbox {old} to {name}"));
        let r = self
            .commit(&txn, vec![Change::PutSandbox(sandbox.clone())])
            .await;
        txn.finish(r).await?;
        tracing::info!(id = %sid, from = %old, to = %name, "sandbox renamed");
        self.publish(|s| {
            s.sandboxes.insert(sid.clone(), sandbox);
        });
        let networks: Vec<String> = self
            .model()
            .endpoints_of_sandbox(&sid)
            .into_iter()
            .map(|(n, _)| n.id.clone())
            .collect();
        for nid in networks {
            self.refresh_names(&nid).await;
        }
        self.refresh_files(&sid).await;
        Ok(())
    }

    pub(super) async fn publish_ports(
        &self,
        network: &str,
        sandbox: &str,
        bindings: Vec<PortBinding>,
    ) -> Result<Vec<ports::BoundPort>> {
        let (nid, sid) = {
            let store = self.model();
            (
                store.resolve_network(network)?,
                store.resolve_sandbox(sandbox)?,
            )
        };
        let _held = self
            .locks
            .acquire([SANDBOXES_LOCK.to_string(), net_key(&nid), sb_key(&sid)])
            .await;
        let store = self.model();
        let net = store
            .networks
            .get(&nid)
            .ok_or_else(|| not_found("network", network))?;
        let sb = store
            .sandboxes
            .get(&sid)
            .ok_or_else(|| not_found("sandbox", sandbox))?;
        let driver = self.drivers.get(&net.driver)?;
        let ip = net.endpoint_of(&sid).and_then(|e| e.ipv4).ok_or_else(|| {
            Error::InvalidRequest(format!(
                "sandbox {} has no IPv4 address on network {}",
                sb.name, net.name
            ))
        })?;
        if !driver.capabilities().gateway_service || net.internal {
            return Err(Error::InvalidRequest(format!(
                "network {} has no gateway to publish ports at",
                net.name
            )));
        }
        if let Some(p) = &sb.published {
            return Err(Error::Conflict(format!(
                "sandbox {} has published ports already ({} of them)",
                sb.name,
                p.ports.len()
            )));
        }
        for b in &bindings {
            if let Some(other) = store
                .sandboxes
                .values()
                .filter(|o| o.id != sid)
                .find(|o| o.port_bindings.iter().any(|x| ports::clashes(x, b)))
            {
                return Err(Error::Conflict(format!(
                    "{} (by sandbox {})",
                    ports::in_use(b),
                    other.name
                )));
            }
        }
        let mut txn = Txn::new(format!("publish the ports of sandbox {}", sb.name));
        let r = async {
            let sandbox_ip = IpAddr::V4(ip);
            let mut bound = Vec::new();
            for b in &bindings {
                let (d, n, b) = (Arc::clone(&driver), nid.clone(), *b);
                let port = blocking("publish", move || {
                    publish_one(d.as_ref(), &n, sandbox_ip, &b)
                })
                .await?;
                let (d, n) = (Arc::clone(&driver), nid.clone());
                txn.on_undo(format!("unpublish {}", port.host), move || {
                    d.unpublish(&n, port.binding.proto.nat(), port.host)
                });
                bound.push(port);
            }
            let after = crate::model::Sandbox {
                port_bindings: bindings.clone(),
                published: Some(ports::Published {
                    network_id: nid.clone(),
                    sandbox_ip,
                    ports: bound.clone(),
                }),
                ..sb.clone()
            };
            self.commit(&txn, vec![Change::PutSandbox(after.clone())])
                .await?;
            Ok((after, bound))
        }
        .await;
        let (after, bound) = txn.finish(r).await?;
        tracing::info!(sandbox = %sb.name, network = %net.name, ports = ?bound, "ports published");
        self.publish(|s| {
            s.sandboxes.insert(sid.clone(), after);
        });
        Ok(bound)
    }

    pub(super) async fn unpublish_ports(&self, sandbox: &str) -> Result<()> {
        let sid = self.model().resolve_sandbox(sandbox)?;
        let nid = self
            .model()
            .sandboxes
            .get(&sid)
            .and_then(|s| s.published.as_ref())
            .map(|p| p.network_id.clone());
        let keys = nid.iter().map(|n| net_key(n)).chain([sb_key(&sid)]);
        let _held = self.locks.acquire(keys).await;
        let store = self.model();
        let sb = store
            .sandboxes
            .get(&sid)
            .ok_or_else(|| not_found("sandbox", sandbox))?;
        let Some(published) = sb.published.clone() else {
            return Ok(());
        };
        if Some(&published.network_id) != nid.as_ref() {
            return Err(Error::Conflict(format!(
                "the published ports of sandbox {} changed meanwhile; try again",
                sb.name
            )));
        }
        let after = crate::model::Sandbox {
            port_bindings: Vec::new(),
            published: None,
            ..sb.clone()
        };
        let txn = Txn::new(format!("unpublish the ports of sandbox {}", sb.name));
        let r = self
            .commit(&txn, vec![Change::PutSandbox(after.clone())])
            .await;
        txn.finish(r).await?;
        let driver = store
            .networks
            .get(&published.network_id)
            .and_then(|n| self.drivers.get(&n.driver).ok());
        if let Some(d) = driver {
            blocking("unpublish", move || {
                super::unpublish_all(d.as_ref(), &published);
                Ok(())
            })
            .await?;
        }
        tracing::info!(sandbox = %sb.name, "ports unpublished");
        self.publish(|s| {
            s.sandboxes.insert(sid.clone(), after);
        });
        Ok(())
    }

    pub(super) async fn vanished(&self) -> Result<Vanished> {
        let store = self.model();
        let mut checks = Vec::new();
        for sb in store.sandboxes.values().filter(|s| s.handoff) {
            let ns = match self.netns_of(&sb.id) {
                Some(ns) => ns,
                None => {
                    // Not made yet when it was adopted (dockerd joins before runc makes
                    // the namespace): open it once it is there.
                    let path = sb.netns_path.clone();
                    let Ok(Ok(ns)) =
                        blocking("open a hand-off namespace", move || Ok(Netns::open(&path))).await
                    else {
                        continue;
                    };
                    let ns = Arc::new(ns);
                    lock(&self.netns)
                        .entry(sb.id.clone())
                        .or_insert_with(|| Arc::clone(&ns));
                    tracing::info!(sandbox = %sb.name, path = %sb.netns_path.display(), "hand-off sandbox's namespace opened");
                    ns
                }
            };
            let endpoints: Vec<(String, String, Option<[u8; 6]>, String)> = store
                .endpoints_of_sandbox(&sb.id)
                .into_iter()
                .map(|(n, e)| (n.id.clone(), e.id.clone(), e.mac, e.interface.clone()))
                .collect();
            checks.push((sb.id.clone(), ns, endpoints));
        }
        if checks.is_empty() {
            return Ok(Vanished::default());
        }
        blocking("look for vanished sandboxes", move || {
            let host: HashSet<String> = links(None)?.into_iter().map(|(n, _)| n).collect();
            let mut out = Vanished::default();
            for (sid, ns, endpoints) in checks {
                if !same_namespace(&ns) {
                    out.sandboxes.push(sid);
                    continue;
                }
                let inside: HashSet<[u8; 6]> = match links(Some(&ns)) {
                    Ok(l) => l.into_iter().filter_map(|(_, m)| m).collect(),
                    Err(e) => {
                        tracing::debug!(error = %e, "listing the links of a hand-off sandbox");
                        continue;
                    }
                };
                for (nid, eid, mac, name) in endpoints {
                    let here = mac.is_some_and(|m| inside.contains(&m)) || host.contains(&name);
                    if !here {
                        out.endpoints.push((nid, sid.clone(), eid));
                    }
                }
            }
            Ok(out)
        })
        .await
    }
}

/// The links (name, MAC) of `ns`, or of the daemon's namespace.
pub(super) fn links(ns: Option<&Netns>) -> Result<Vec<(String, Option<[u8; 6]>)>> {
    let list = || -> tapnet_sandbox::Result<Vec<(String, Option<[u8; 6]>)>> {
        let mut nl = tapnet_sandbox::netlink::Handle::new()?;
        Ok(nl
            .links()?
            .into_iter()
            .map(|l| {
                let mac = l.mac.as_deref().and_then(|m| <[u8; 6]>::try_from(m).ok());
                (l.name, mac)
            })
            .collect())
    };
    let r = match ns {
        Some(ns) => ns.run(list).and_then(|r| r),
        None => list(),
    };
    r.map_err(|e| Error::os("list network interfaces", e))
}

/// Whether `ns`'s path still names the namespace `ns` holds open.
pub(super) fn same_namespace(ns: &Netns) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(held) = ns.file().metadata() else {
        return true;
    };
    match std::fs::metadata(ns.path()) {
        Ok(now) => now.dev() == held.dev() && now.ino() == held.ino(),
        Err(_) => false,
    }
}
