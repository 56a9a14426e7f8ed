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
//!
//! Processes: a sandbox whose namespace tapnet created is not removed while processes
//! run in it (those whose `/proc/PID/ns/net` is that namespace) unless forced
//! (`DELETE /sandboxes/{id}?force=1`, `tapnet sandbox rm -f`), which ends them first:
//! SIGTERM, then SIGKILL to those still there after [`GRACE`], each by pid, only
//! while that pid is still in the namespace. An adopted namespace's processes are
//! not tapnet's: they never block the removal and are never signalled. The check
//! runs before the removal's locks: a process that enters the namespace after it
//! keeps the (unmounted) namespace alive, as it would have before this check.

use super::ipam_steps::endpoint_addresses;
use super::{lock, net_key, not_found, sb_key, Inner};
use crate::error::{Error, Result};
use crate::model::Endpoint;
use crate::sandbox_files;
use crate::store::Change;
use crate::txn::{blocking, Txn};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};
use tapnet_sandbox::netns::Netns;

/// How long ended processes get between SIGTERM and SIGKILL.
pub const GRACE: Duration = Duration::from_secs(3);

/// `(device, inode)` of a namespace file (following `/proc/PID/ns/net` links).
fn ns_id(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// The pids of the processes in the network namespace at `netns`, this process
/// excepted, sorted. Processes this one may not look at are not counted.
pub fn processes_in(netns: &Path) -> Vec<i32> {
    let Some(want) = ns_id(netns) else {
        return Vec::new();
    };
    let me = std::process::id();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<i32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| ns_id(&Path::new("/proc").join(pid.to_string()).join("ns/net")) == Some(want))
        .filter_map(|pid| i32::try_from(pid).ok())
        .collect();
    pids.sort_unstable();
    pids
}

/// End the processes in the namespace at `netns`: SIGTERM to each, SIGKILL to those
/// still in it after `grace`; returns the pids still there after that (none unless
/// a process cannot be killed).
pub fn end_processes(netns: &Path, grace: Duration) -> Vec<i32> {
    let signal_all = |sig: Signal| {
        // Looked up again right before signalling: a pid is only signalled while
        // it is in this namespace.
        for pid in processes_in(netns) {
            tracing::info!(pid, signal = %sig, netns = %netns.display(), "ending a process in a removed sandbox");
            let _ = kill(Pid::from_raw(pid), sig);
        }
    };
    let wait = |limit: Duration| {
        let deadline = Instant::now() + limit;
        loop {
            let left = processes_in(netns);
            if left.is_empty() || Instant::now() >= deadline {
                return left;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    signal_all(Signal::SIGTERM);
    if wait(grace).is_empty() {
        return Vec::new();
    }
    signal_all(Signal::SIGKILL);
    wait(grace)
}

impl Inner {
    /// Refuse (409, naming the pids) to remove a sandbox whose namespace tapnet made
    /// while processes run in it, unless `force`, which ends them first.
    pub(super) async fn check_sandbox_processes(&self, what: &str, force: bool) -> Result<()> {
        let store = self.model();
        let sid = store.resolve_sandbox(what)?;
        let Some(sb) = store.sandboxes.get(&sid).filter(|s| s.owned) else {
            return Ok(());
        };
        let (name, path) = (sb.name.clone(), sb.netns_path.clone());
        let p = path.clone();
        let pids = blocking("list sandbox processes", move || Ok(processes_in(&p))).await?;
        if pids.is_empty() {
            return Ok(());
        }
        let list = pids
            .iter()
            .map(i32::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        if !force {
            return Err(Error::Conflict(format!(
                "cannot remove sandbox {name}: processes run in it (pid {list}); end them, or force the removal (tapnet sandbox rm -f)"
            )));
        }
        let left = blocking("end sandbox processes", move || {
            Ok(end_processes(&path, GRACE))
        })
        .await?;
        if !left.is_empty() {
            tracing::warn!(sandbox = %name, pids = ?left, "processes still in the sandbox after SIGKILL; removing it anyway");
        }
        Ok(())
    }

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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn processes_are_found_by_their_namespace() {
        // A child shares this process's namespace; this process itself is never listed.
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pids = processes_in(Path::new("/proc/self/ns/net"));
        let _ = child.kill();
        let _ = child.wait();
        let me = i32::try_from(std::process::id()).unwrap();
        assert!(
            pids.contains(&i32::try_from(child.id()).unwrap()),
            "{pids:?}"
        );
        assert!(!pids.contains(&me));
        assert!(processes_in(Path::new("/nonexistent/ns")).is_empty());
    }
}
