//! Operation: create a sandbox (a new namespace, or adopt one by path; an adopted
//! one may be a hand-off sandbox, whose runtime configures its interfaces, see
//! [`crate::model::Sandbox::handoff`]).
//!
//! Steps: validate the name and `NetnsPath` → adopt the namespace at `NetnsPath`
//! *before any lock is taken* (the path is the user's: [`Netns::open`] checks its type
//! without blocking and opens it non-blocking, so a FIFO or a device is refused at
//! once and can stall nothing) → under the `sandboxes` lock: name and host ports
//! unique → create the namespace (undo: destroy it) → write resolv.conf and hosts
//! (undo: remove them) → commit → publish and keep the namespace open.

use super::{lock, write_sandbox_files, Inner, SANDBOXES_LOCK};
use crate::error::{Error, Result};
use crate::model::{self, Sandbox};
use crate::ports::{self, PortBinding};
use crate::sandbox_files;
use crate::store::Change;
use crate::txn::{blocking, Txn};
use std::path::PathBuf;
use std::sync::Arc;
use tapnet_sandbox::netns::Netns;

impl Inner {
    pub(super) async fn create_sandbox(
        &self,
        name: Option<String>,
        netns_path: Option<PathBuf>,
        port_bindings: Vec<PortBinding>,
        handoff: bool,
    ) -> Result<String> {
        let id = model::new_id();
        let name = name
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| id[..12].to_string());
        super::validate_name("sandbox", &name)?;
        let adopted = match &netns_path {
            Some(p) => {
                if !p.is_absolute() {
                    return Err(Error::InvalidRequest(format!(
                        "NetnsPath {} must be an absolute path",
                        p.display()
                    )));
                }
                let p = p.clone();
                Some(
                    blocking("adopt namespace", move || match Netns::open(&p) {
                        Ok(ns) => Ok(Some(ns)),
                        // dockerd joins before runc made the namespace: opened later.
                        Err(e) if handoff && super::restore::namespace_gone(&e) => Ok(None),
                        Err(e) => Err(Error::InvalidRequest(format!(
                            "cannot adopt NetnsPath {}: {e}",
                            p.display()
                        ))),
                    })
                    .await?,
                )
            }
            None => None,
        };
        let _held = self.locks.acquire([SANDBOXES_LOCK.to_string()]).await;
        let store = self.model();
        if store.sandboxes.values().any(|s| s.name == name) {
            return Err(Error::Conflict(format!(
                "sandbox with name {name} already exists"
            )));
        }
        for b in &port_bindings {
            if let Some(other) = store
                .sandboxes
                .values()
                .find(|o| o.port_bindings.iter().any(|x| ports::clashes(x, b)))
            {
                return Err(Error::Conflict(format!(
                    "{} (by sandbox {})",
                    ports::in_use(b),
                    other.name
                )));
            }
        }
        let check = port_bindings.clone();
        blocking("check host ports", move || ports::check_free(&check)).await?;
        let mut txn = Txn::new(format!("create sandbox {name}"));
        let r = async {
            let (ns, owned) = match adopted {
                Some(ns) => (ns, false),
                None if handoff => (None, false),
                None => {
                    let path = self.exec_root.join("netns").join(&id);
                    let p = path.clone();
                    let ns = blocking("create namespace", move || {
                        Netns::create(&p).map_err(|e| {
                            Error::os(format!("create namespace at {}", p.display()), e)
                        })
                    })
                    .await?;
                    txn.on_undo(format!("remove namespace {}", path.display()), move || {
                        Netns::destroy(&path).map_err(|e| Error::os("remove namespace", e))
                    });
                    (Some(ns), true)
                }
            };
            let files = sandbox_files::dir(&self.exec_root, &id);
            // A hand-off sandbox's runtime writes its resolv.conf and hosts (empty
            // paths: tapnet writes none).
            let file = |f: &str| match handoff {
                true => PathBuf::new(),
                false => files.join(f),
            };
            let sandbox = Sandbox {
                id: id.clone(),
                name: name.clone(),
                netns_path: ns.as_ref().map_or_else(
                    || netns_path.clone().unwrap_or_default(),
                    |n| n.path().to_path_buf(),
                ),
                owned,
                created: model::now_rfc3339(),
                resolv_conf_path: file("resolv.conf"),
                hosts_path: file("hosts"),
                port_bindings,
                published: None,
                handoff,
            };
            let resolv = sandbox_files::render_resolv_conf(None, &self.nameservers);
            txn.on_undo("remove sandbox files", move || {
                let _ = std::fs::remove_dir_all(&files);
                Ok(())
            });
            write_sandbox_files(&sandbox, resolv, &[]).await?;
            self.commit(&txn, vec![Change::PutSandbox(sandbox.clone())])
                .await?;
            Ok((ns, sandbox))
        }
        .await;
        // The namespace fd (if any) must be closed before the rollback unmounts it.
        let (ns, sandbox) = match r {
            Ok(v) => v,
            Err(e) => return txn.finish(Err(e)).await,
        };
        txn.commit();
        tracing::info!(sandbox = %sandbox.name, path = %sandbox.netns_path.display(), owned = sandbox.owned, "sandbox created");
        if let Some(ns) = ns {
            lock(&self.netns).insert(id.clone(), Arc::new(ns));
        }
        self.publish(|s| {
            s.sandboxes.insert(id.clone(), sandbox);
        });
        Ok(id)
    }
}
