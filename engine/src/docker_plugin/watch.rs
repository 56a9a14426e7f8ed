//! The watch on dockerd's containers: namespaces and devices that vanished without a
//! `Leave`.
//!
//! Contract: every [`INTERVAL`], [`crate::Controller::vanished`] lists the hand-off
//! sandboxes whose namespace file no longer names the namespace tapnet holds (dockerd
//! removed it, or it was unmounted) and the endpoints whose device is in neither the
//! sandbox nor tapnetd's namespace (deleted, or its namespace died). A sandbox whose
//! namespace is gone is removed with its endpoints at once (tapnet's fd was the last
//! thing keeping the namespace alive; closing it lets the kernel delete the taps). An
//! endpoint whose device is missing twice in a row (a device moving between
//! namespaces at the instant of a look is not gone) is disconnected, and its sandbox
//! removed with its last endpoint. Every removal is logged at `warn`; the addresses
//! are free again.

use super::Plugin;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

/// How often the watch looks.
pub const INTERVAL: Duration = Duration::from_secs(1);

/// Run the watch until the plugin is dropped by everyone else.
pub async fn run(plugin: std::sync::Weak<Plugin>) {
    let mut suspects: HashSet<String> = HashSet::new();
    loop {
        tokio::time::sleep(INTERVAL).await;
        let Some(p) = plugin.upgrade() else { return };
        once(&p, &mut suspects).await;
    }
}

/// One look (see the module doc); `suspects` are the endpoints missing last time.
pub async fn once(p: &Arc<Plugin>, suspects: &mut HashSet<String>) {
    let found = match p.ctl.vanished().await {
        Ok(f) => f,
        Err(e) => {
            tracing::debug!(error = %e, "looking for vanished sandboxes");
            return;
        }
    };
    for sid in &found.sandboxes {
        let name = p
            .ctl
            .snapshot()
            .await
            .sandboxes
            .get(sid)
            .map(|s| s.name.clone())
            .unwrap_or_default();
        tracing::warn!(sandbox = %name, "the namespace of a Docker container vanished without Leave; its endpoints and addresses are released");
        if let Err(e) = p.ctl.delete_sandbox(sid).await {
            tracing::warn!(sandbox = %name, error = %e, "removing a vanished sandbox");
        }
    }
    let mut now = HashSet::new();
    for (_nid, sid, eid) in &found.endpoints {
        if found.sandboxes.contains(sid) {
            continue;
        }
        if !suspects.contains(eid) {
            now.insert(eid.clone());
            continue;
        }
        tracing::warn!(endpoint = %eid, "the device of a Docker container's endpoint vanished without Leave; endpoint released");
        if let Err(e) = super::network::release(p, eid, "device vanished").await {
            tracing::warn!(endpoint = %eid, error = %e.message, "releasing a vanished endpoint");
        }
    }
    *suspects = now;
}
