//! Remote IPAM: an IPAM plugin written by others (`IpamDriver.*`, libnetwork
//! `ipams/remote`), behind the same [`Ipam`] seam as the built-in driver.
//!
//! Contract: [`WithPlugins`] is the daemon's [`Ipam`]: the built-in driver for
//! networks of `--ipam-driver default` (its pool ids are unchanged), a plugin for
//! any other name. A plugin's pools are named `plugin:<name>:<PoolID>`, so every
//! later call (address requests, releases, the undo of a transaction) goes to the
//! plugin that made the pool, also after a daemon restart; the plugin keeps its own
//! state across tapnetd restarts, so its pools are not replayed. Per plugin, on
//! first use: `Plugin.Activate` (must implement `IpamDriver`), `GetCapabilities`
//! (`RequiresMACAddress`), `GetDefaultAddressSpaces` (the local one is asked for).
//!
//! `RequestPool` passes `--subnet` as `Pool` (empty: the plugin picks), `--ip-range`
//! as `SubPool`, `--ipam-opt` as `Options`; the answer's pool must be a CIDR of the
//! family asked for. `RequestAddress` passes a static address as `Address` and the
//! options (the gateway request's `RequestAddressType`, the MAC); the answer must be
//! an address inside the pool, else it is released again and the request fails.
//! `ReleaseAddress`, `ReleasePool` as asked. Plugin errors are [`IpamError::Plugin`].

use super::{PluginError, Plugins};
use crate::ipam::{Ipam, IpamError, Pool, PoolRequest, REQUEST_ADDRESS_TYPE};
use crate::remote::client::Client;
use ipnet::IpNet;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use tapnet_types::plugin as api;

/// The prefix of a plugin's pool ids.
const PREFIX: &str = "plugin:";

/// One activated IPAM plugin.
#[derive(Debug, Clone)]
struct RemoteIpam {
    client: Client,
    requires_mac: bool,
    address_space: String,
    /// The pools requested since the daemon started (for checking answers).
    pools: BTreeMap<String, IpNet>,
}

/// The daemon's IPAM: the built-in driver plus IPAM plugins (see the module doc).
pub struct WithPlugins {
    default: Box<dyn Ipam>,
    plugins: Arc<Plugins>,
    remote: BTreeMap<String, RemoteIpam>,
}

impl std::fmt::Debug for WithPlugins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WithPlugins")
            .field("remote", &self.remote.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// The plugin and its pool id of a pool id of ours, `None` for the built-in driver's.
pub fn split_pool_id(id: &str) -> Option<(&str, &str)> {
    id.strip_prefix(PREFIX)?.split_once(':')
}

/// Whether `pool_id` is a plugin's.
pub fn is_plugin_pool(pool_id: &str) -> bool {
    split_pool_id(pool_id).is_some()
}

fn may_block<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

impl WithPlugins {
    /// `default` for its own name, `plugins` for every other.
    pub fn new(default: Box<dyn Ipam>, plugins: Arc<Plugins>) -> WithPlugins {
        WithPlugins {
            default,
            plugins,
            remote: BTreeMap::new(),
        }
    }

    /// The activated plugin `name` (activating it on first use).
    fn plugin(&mut self, name: &str) -> Result<&mut RemoteIpam, IpamError> {
        if !self.remote.contains_key(name) {
            let plugins = Arc::clone(&self.plugins);
            let r = may_block(|| -> Result<RemoteIpam, PluginError> {
                let client = plugins.activate(name, api::IPAM_DRIVER)?;
                let caps: api::IpamCapabilitiesResponse =
                    client.call("IpamDriver.GetCapabilities", &api::Empty {})?;
                let spaces: api::AddressSpacesResponse =
                    client.call("IpamDriver.GetDefaultAddressSpaces", &api::Empty {})?;
                Ok(RemoteIpam {
                    client,
                    requires_mac: caps.requires_mac_address,
                    address_space: spaces.local_default_address_space,
                    pools: BTreeMap::new(),
                })
            })
            .map_err(IpamError::Plugin)?;
            self.remote.insert(name.to_string(), r);
        }
        self.remote
            .get_mut(name)
            .ok_or_else(|| IpamError::UnknownDriver(name.to_string()))
    }

    fn is_default(&self, driver: &str) -> bool {
        driver.is_empty() || driver == self.default.name()
    }
}

impl Ipam for WithPlugins {
    fn name(&self) -> &str {
        self.default.name()
    }

    fn check_driver(&mut self, driver: &str) -> Result<(), IpamError> {
        if self.is_default(driver) {
            return Ok(());
        }
        self.plugin(driver).map(|_| ())
    }

    fn request_pool_of(&mut self, driver: &str, req: &PoolRequest) -> Result<Pool, IpamError> {
        if self.is_default(driver) {
            return self.default.request_pool(req);
        }
        let plugin = self.plugin(driver)?;
        let body = api::RequestPoolRequest {
            address_space: plugin.address_space.clone(),
            pool: req.subnet.map(|s| s.to_string()).unwrap_or_default(),
            sub_pool: req.ip_range.map(|s| s.to_string()).unwrap_or_default(),
            options: req.options.clone(),
            v6: req.v6,
        };
        let client = plugin.client.clone();
        let resp: api::RequestPoolResponse =
            may_block(|| client.call("IpamDriver.RequestPool", &body))
                .map_err(IpamError::Plugin)?;
        let release = |client: &Client| {
            let r: Result<api::Empty, _> = may_block(|| {
                client.call(
                    "IpamDriver.ReleasePool",
                    &api::ReleasePoolRequest {
                        pool_id: resp.pool_id.clone(),
                    },
                )
            });
            if let Err(e) = r {
                tracing::warn!(error = %e, "releasing a refused pool");
            }
        };
        let bad =
            |m: String| IpamError::Plugin(PluginError::bad(driver, "IpamDriver.RequestPool", m));
        let subnet = match resp.pool.parse::<IpNet>() {
            Ok(s) if matches!(s, IpNet::V6(_)) == req.v6 && s.trunc() == s => s,
            Ok(s) => {
                release(&client);
                return Err(bad(format!(
                    "Pool {s} is not an {} network address",
                    if req.v6 { "IPv6" } else { "IPv4" }
                )));
            }
            Err(_) => {
                release(&client);
                return Err(bad(format!("Pool {:?} is not a CIDR", resp.pool)));
            }
        };
        if resp.pool_id.is_empty() || req.subnet.is_some_and(|s| s != subnet) {
            release(&client);
            return Err(bad(format!(
                "answered pool {subnet} with PoolID {:?} for a request of {:?}",
                resp.pool_id, body.pool
            )));
        }
        let id = format!("{PREFIX}{driver}:{}", resp.pool_id);
        plugin.pools.insert(resp.pool_id.clone(), subnet);
        Ok(Pool {
            id,
            subnet,
            ip_range: req.ip_range,
        })
    }

    fn request_pool(&mut self, req: &PoolRequest) -> Result<Pool, IpamError> {
        self.default.request_pool(req)
    }

    fn release_pool(&mut self, pool_id: &str) -> Result<(), IpamError> {
        let Some((name, id)) = split_pool_id(pool_id) else {
            return self.default.release_pool(pool_id);
        };
        let (name, id) = (name.to_string(), id.to_string());
        let plugin = self.plugin(&name)?;
        plugin.pools.remove(&id);
        let client = plugin.client.clone();
        let _: api::Empty = may_block(|| {
            client.call(
                "IpamDriver.ReleasePool",
                &api::ReleasePoolRequest { pool_id: id },
            )
        })
        .map_err(IpamError::Plugin)?;
        Ok(())
    }

    fn request_address(
        &mut self,
        pool_id: &str,
        want: Option<IpAddr>,
        options: &BTreeMap<String, String>,
    ) -> Result<IpAddr, IpamError> {
        let Some((name, id)) = split_pool_id(pool_id) else {
            return self.default.request_address(pool_id, want, options);
        };
        let (name, id) = (name.to_string(), id.to_string());
        let plugin = self.plugin(&name)?;
        let mut opts = BTreeMap::new();
        for (k, v) in options {
            // Docker's key for the gateway request.
            let k = if k == REQUEST_ADDRESS_TYPE {
                api::OPT_REQUEST_ADDRESS_TYPE.to_string()
            } else {
                k.clone()
            };
            opts.insert(k, v.clone());
        }
        let body = api::RequestAddressRequest {
            pool_id: id.clone(),
            address: want.map(|a| a.to_string()).unwrap_or_default(),
            options: opts,
        };
        let client = plugin.client.clone();
        let subnet = plugin.pools.get(&id).copied();
        let resp: api::RequestAddressResponse =
            may_block(|| client.call("IpamDriver.RequestAddress", &body))
                .map_err(IpamError::Plugin)?;
        let release = |addr: IpAddr| {
            let r: Result<api::Empty, _> = may_block(|| {
                client.call(
                    "IpamDriver.ReleaseAddress",
                    &api::ReleaseAddressRequest {
                        pool_id: id.clone(),
                        address: addr.to_string(),
                    },
                )
            });
            if let Err(e) = r {
                tracing::warn!(error = %e, "releasing a refused address");
            }
        };
        let bad =
            |m: String| IpamError::Plugin(PluginError::bad(&name, "IpamDriver.RequestAddress", m));
        let addr = match resp.address.parse::<IpNet>() {
            Ok(n) => n.addr(),
            Err(_) => match resp.address.parse::<IpAddr>() {
                Ok(a) => a,
                Err(_) => {
                    return Err(bad(format!(
                        "Address {:?} is not an address with prefix length",
                        resp.address
                    )))
                }
            },
        };
        if let Some(w) = want {
            if w != addr {
                release(addr);
                return Err(bad(format!("asked for {w}, answered {addr}")));
            }
        }
        if let Some(s) = subnet {
            if !s.contains(&addr) || addr == s.network() {
                release(addr);
                return Err(bad(format!("address {addr} is not in the pool {s}")));
            }
        }
        Ok(addr)
    }

    fn release_address(&mut self, pool_id: &str, addr: IpAddr) -> Result<(), IpamError> {
        let Some((name, id)) = split_pool_id(pool_id) else {
            return self.default.release_address(pool_id, addr);
        };
        let (name, id) = (name.to_string(), id.to_string());
        let client = self.plugin(&name)?.client.clone();
        let _: api::Empty = may_block(|| {
            client.call(
                "IpamDriver.ReleaseAddress",
                &api::ReleaseAddressRequest {
                    pool_id: id,
                    address: addr.to_string(),
                },
            )
        })
        .map_err(IpamError::Plugin)?;
        Ok(())
    }

    fn requires_mac(&mut self, pool_id: &str) -> bool {
        match split_pool_id(pool_id) {
            Some((name, _)) => {
                let name = name.to_string();
                self.plugin(&name).is_ok_and(|p| p.requires_mac)
            }
            None => false,
        }
    }

    fn keeps_own_state(&self, driver: &str) -> bool {
        !self.is_default(driver)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_ids() {
        assert_eq!(split_pool_id("plugin:p:abc:1"), Some(("p", "abc:1")));
        assert_eq!(split_pool_id("LocalDefault/10.0.0.0/24"), None);
        assert!(is_plugin_pool("plugin:x:1"));
    }
}
