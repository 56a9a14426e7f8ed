//! Remote drivers: network and IPAM plugins written by others, spoken to with
//! Docker's plugin protocol ([`tapnet_types::plugin`]).
//!
//! Contract: [`Plugins`] finds a plugin by name ([`discovery`]), activates it
//! (`/Plugin.Activate`, which must list the subsystem asked for: `NetworkDriver` or
//! `IpamDriver`, else a 400 naming what it implements), and keeps one driver object
//! per name ([`crate::driver::remote::RemoteDriver`]; IPAM plugins: [`ipam::WithPlugins`]). A plugin
//! not found is searched again with dockerd's backoff until the retry deadline (so a
//! plugin starting with the daemon is found), then "plugin not found" (404). A
//! plugin's failure is a [`PluginError`] carrying the plugin's name, the method and
//! what went wrong; its HTTP status says whose fault it is (see
//! [`PluginError::status`]).
//!
//! Networks restored at daemon start get their driver without contacting the plugin
//! ([`Plugins::restored_driver`]): it is activated on its first call, or when a new
//! network is made with it ([`Plugins::active_network_driver`]: its capabilities must
//! be known then). Reads never activate a plugin.

pub mod client;
pub mod discovery;
pub mod ipam;

use crate::driver::remote::RemoteDriver;
use client::{backoff, give_up, Client, Timing};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Why a plugin call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PluginError {
    /// No socket or spec file for the name (after retrying until the deadline).
    #[error("plugin \"{plugin}\" not found (looked in {dirs} for {plugin}.sock, {plugin}.spec, {plugin}.json)")]
    NotFound {
        /// The name asked for.
        plugin: String,
        /// The directories searched.
        dirs: String,
    },
    /// The name or its spec file is unusable.
    #[error("plugin \"{plugin}\": {message}")]
    Spec {
        /// The plugin.
        plugin: String,
        /// What is wrong.
        message: String,
    },
    /// The plugin does not implement the subsystem asked for.
    #[error("plugin \"{plugin}\" does not implement {wanted} (it implements {implements:?})")]
    NotImplemented {
        /// The plugin.
        plugin: String,
        /// `NetworkDriver` or `IpamDriver`.
        wanted: String,
        /// What its `Plugin.Activate` listed.
        implements: Vec<String>,
    },
    /// No connection could be made until the retry deadline.
    #[error("plugin \"{plugin}\" cannot be reached at {addr}: {message}")]
    Unreachable {
        /// The plugin.
        plugin: String,
        /// Its address.
        addr: String,
        /// The last connection error.
        message: String,
    },
    /// One exchange took longer than the call timeout.
    #[error("plugin \"{plugin}\": {method} did not answer within {timeout:?}")]
    Timeout {
        /// The plugin.
        plugin: String,
        /// The method called.
        method: String,
        /// The call timeout.
        timeout: Duration,
    },
    /// The plugin answered an error (`{"Err": ...}` or a non-200 status).
    #[error("plugin \"{plugin}\": {method}: {message}")]
    Refused {
        /// The plugin.
        plugin: String,
        /// The method called.
        method: String,
        /// The HTTP status of the answer.
        status: u16,
        /// The plugin's `Err` (or its raw answer).
        message: String,
    },
    /// The answer is not what the protocol says (not JSON, wrong shape, an
    /// interface or address that does not fit).
    #[error("plugin \"{plugin}\": {method}: {message}")]
    BadAnswer {
        /// The plugin.
        plugin: String,
        /// The method called.
        method: String,
        /// What is wrong with it.
        message: String,
    },
}

impl PluginError {
    /// The HTTP status of the API answer: 404 not found, 400 a plugin that cannot
    /// serve the request (spec, subsystem), 503 unreachable, 504 too slow, 500 the
    /// plugin refused, 502 a nonsense answer.
    pub fn status(&self) -> u16 {
        match self {
            PluginError::NotFound { .. } => 404,
            PluginError::Spec { .. } | PluginError::NotImplemented { .. } => 400,
            PluginError::Unreachable { .. } => 503,
            PluginError::Timeout { .. } => 504,
            PluginError::Refused { .. } => 500,
            PluginError::BadAnswer { .. } => 502,
        }
    }

    /// A nonsense answer of `plugin` to `method`.
    pub fn bad(plugin: &str, method: &str, message: impl Into<String>) -> PluginError {
        PluginError::BadAnswer {
            plugin: plugin.to_string(),
            method: method.to_string(),
            message: message.into(),
        }
    }
}

/// Where plugins are found, how long calls may take, where driver state goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginConfig {
    /// Directories searched, in order (default [`discovery::DEFAULT_DIRS`]).
    pub dirs: Vec<PathBuf>,
    /// Retry deadline and call timeout.
    pub timing: Timing,
    /// Where remote network drivers keep what a restart needs (each endpoint's
    /// `Join` answer): `<exec-root>/plugins`, which lives as long as the interfaces.
    pub state_dir: PathBuf,
    /// This daemon's own Docker plugin socket (`--docker-plugin-socket`), if it serves
    /// one: a plugin found there is tapnetd itself, refused (a network driven by it
    /// would call back into the daemon that is creating it).
    pub own_socket: Option<PathBuf>,
}

impl PluginConfig {
    /// dockerd's directories and timing; state under `exec_root`.
    pub fn new(exec_root: &std::path::Path) -> PluginConfig {
        PluginConfig {
            dirs: discovery::DEFAULT_DIRS.iter().map(PathBuf::from).collect(),
            timing: Timing::default(),
            state_dir: exec_root.join("plugins"),
            own_socket: None,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The plugins in use (see the module doc).
#[derive(Debug)]
pub struct Plugins {
    config: PluginConfig,
    drivers: Mutex<BTreeMap<String, Arc<RemoteDriver>>>,
}

impl Plugins {
    /// No plugin in use yet.
    pub fn new(config: PluginConfig) -> Plugins {
        Plugins {
            config,
            drivers: Mutex::new(BTreeMap::new()),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &PluginConfig {
        &self.config
    }

    /// Find plugin `name` (retrying until the deadline) and activate it as
    /// `subsystem` (`NetworkDriver`, `IpamDriver`): its client.
    pub fn activate(&self, name: &str, subsystem: &str) -> Result<Client, PluginError> {
        let started = Instant::now();
        let deadline = self.config.timing.retry_deadline;
        let mut retries = 0;
        let found = loop {
            if let Some(found) = discovery::find(name, &self.config.dirs)? {
                break found;
            }
            let wait = backoff(retries, deadline);
            if give_up(started, wait, deadline) {
                return Err(PluginError::NotFound {
                    plugin: name.to_string(),
                    dirs: self
                        .config
                        .dirs
                        .iter()
                        .map(|d| d.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
            retries += 1;
            tracing::debug!(plugin = name, "plugin not found; looking again in {wait:?}");
            std::thread::sleep(wait);
        };
        if let (discovery::Addr::Unix(p), Some(own)) = (&found.addr, &self.config.own_socket) {
            if p == own {
                return Err(PluginError::Spec {
                    plugin: name.to_string(),
                    message: format!(
                        "{} is this tapnetd's own Docker plugin socket (for dockerd): create the network with -d bridge",
                        p.display()
                    ),
                });
            }
        }
        // The rest of the deadline is the connection's.
        let timing = Timing {
            retry_deadline: deadline
                .saturating_sub(started.elapsed())
                .max(Duration::from_millis(1)),
            ..self.config.timing
        };
        let client = Client::new(name, found.addr.clone(), timing);
        let activated = client.activate()?;
        if !activated.implements.iter().any(|i| i == subsystem) {
            return Err(PluginError::NotImplemented {
                plugin: name.to_string(),
                wanted: subsystem.to_string(),
                implements: activated.implements,
            });
        }
        tracing::info!(plugin = name, addr = %found.addr, source = %found.source.display(), implements = ?activated.implements, "plugin activated");
        Ok(Client::new(name, found.addr, self.config.timing))
    }

    /// The network driver of plugin `name`: the one in use (activated or not: a
    /// restored one is activated by its first call), else the plugin found,
    /// activated and asked for its capabilities now.
    pub fn network_driver(self: &Arc<Self>, name: &str) -> Result<Arc<RemoteDriver>, PluginError> {
        if let Some(d) = lock(&self.drivers).get(name) {
            return Ok(Arc::clone(d));
        }
        let d = Arc::new(RemoteDriver::new(name, Arc::clone(self)));
        d.ensure_active()?;
        let mut drivers = lock(&self.drivers);
        Ok(Arc::clone(drivers.entry(name.to_string()).or_insert(d)))
    }

    /// [`Plugins::network_driver`], activated (its capabilities known) before it is
    /// returned: for a new network.
    pub fn active_network_driver(
        self: &Arc<Self>,
        name: &str,
    ) -> Result<Arc<RemoteDriver>, PluginError> {
        let d = self.network_driver(name)?;
        d.ensure_active()?;
        Ok(d)
    }

    /// The network driver of plugin `name` for networks restored from the store: not
    /// activated until its first call.
    pub fn restored_driver(self: &Arc<Self>, name: &str) -> Result<Arc<RemoteDriver>, PluginError> {
        discovery::validate_name(name)?;
        let mut drivers = lock(&self.drivers);
        Ok(Arc::clone(drivers.entry(name.to_string()).or_insert_with(
            || Arc::new(RemoteDriver::new(name, Arc::clone(self))),
        )))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_daemons_own_plugin_socket_is_refused() {
        let dir = std::env::temp_dir().join(format!("tapnet-own-socket-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("tapnet.sock");
        let _ = std::fs::remove_file(&sock);
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let mut config = PluginConfig::new(&dir);
        config.dirs = vec![dir.clone()];
        config.own_socket = Some(sock.clone());
        let err = Plugins::new(config)
            .activate("tapnet", tapnet_types::plugin::NETWORK_DRIVER)
            .unwrap_err();
        assert_eq!(err.status(), 400);
        assert!(
            err.to_string().contains("own Docker plugin socket"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
