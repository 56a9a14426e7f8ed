//! `IpamDriver.*`: tapnet as dockerd's IPAM (`--ipam-driver tapnet`).
//!
//! Contract: pools and addresses dockerd asks for are allocated here and kept in a
//! JSON file (`<data-root>/docker-plugin-ipam.json`, written whole and renamed into
//! place after every change), so a restart of tapnetd or dockerd keeps them; dockerd
//! does not replay its requests (`RequiresRequestReplay` false). IPv4 only (an IPv6
//! pool is refused by name). A pool asked for by CIDR must not overlap another pool
//! or a tapnet network; without one, the first free subnet of tapnet's default pools
//! (172.17-31.0.0/16, then 192.168.0.0/16 as /20s) that overlaps neither is taken.
//! The gateway request (`RequestAddressType` = `com.docker.network.gateway`) gets the
//! first host address; others the first free one (in the sub-pool, `--ip-range`, if
//! given), or exactly the one asked for. Pool ids are `tapnet/<CIDR>`. The network
//! dockerd then creates with that pool goes through tapnet's own IPAM as any network
//! with a given subnet does: the addresses dockerd hands the driver are used as given.
//! `--ipam-opt` options are refused by name (none is implemented).

use super::{parse, Plugin, PluginError, PluginResult};
use crate::error::Error;
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use tapnet_types::plugin::{
    AddressSpacesResponse, Empty, IpamCapabilitiesResponse, ReleaseAddressRequest,
    ReleasePoolRequest, RequestAddressRequest, RequestAddressResponse, RequestPoolRequest,
    RequestPoolResponse, OPT_REQUEST_ADDRESS_TYPE, REQUEST_ADDRESS_GATEWAY,
};

/// The local address space's name.
pub const LOCAL_SPACE: &str = "tapnet-local";
/// The global address space's name (pools in it are refused: no swarm).
pub const GLOBAL_SPACE: &str = "tapnet-global";

/// One pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Pool {
    pool: Ipv4Net,
    #[serde(default)]
    sub_pool: Option<Ipv4Net>,
    #[serde(default)]
    addresses: BTreeSet<Ipv4Addr>,
}

/// The pools, by id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Pools {
    #[serde(default)]
    pools: BTreeMap<String, Pool>,
}

/// The plugin IPAM: its pools and the file that keeps them.
#[derive(Debug)]
pub struct PluginIpam {
    file: PathBuf,
    pools: Arc<Mutex<Pools>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn os(op: String, e: std::io::Error) -> Error {
    Error::os(
        op,
        tapnet_sandbox::Error::Os {
            op: "io".into(),
            source: e,
        },
    )
}

impl PluginIpam {
    /// The pools kept in `file` (none if it does not exist).
    pub fn load(file: PathBuf) -> crate::error::Result<PluginIpam> {
        let pools = match std::fs::read(&file) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                Error::InvalidRequest(format!(
                    "{}: not a pool file of tapnet's Docker plugin: {e}",
                    file.display()
                ))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Pools::default(),
            Err(e) => return Err(os(format!("read {}", file.display()), e)),
        };
        Ok(PluginIpam {
            file,
            pools: Arc::new(Mutex::new(pools)),
        })
    }

    /// Change the pools with `f` and write them out; nothing changes if either fails.
    async fn change<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Pools) -> PluginResult<T> + Send + 'static,
    ) -> PluginResult<T> {
        let (pools, file) = (Arc::clone(&self.pools), self.file.clone());
        let r = tokio::task::spawn_blocking(move || {
            let mut held = lock(&pools);
            let mut next = held.clone();
            let out = f(&mut next)?;
            if next != *held {
                write(&file, &next)?;
                *held = next;
            }
            Ok(out)
        })
        .await;
        r.unwrap_or_else(|e| {
            Err(PluginError::from(Error::Task {
                op: "plugin IPAM".into(),
                message: e.to_string(),
            }))
        })
    }
}

fn write(file: &std::path::Path, pools: &Pools) -> PluginResult<()> {
    let bytes = serde_json::to_vec_pretty(pools).map_err(|e| PluginError {
        status: axum::http::StatusCode::INTERNAL_SERVER_ERROR,
        message: format!("encode the pools: {e}"),
    })?;
    let tmp = file.with_extension("json.tmp");
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, file))
        .map_err(|e| PluginError::from(os(format!("write {}", file.display()), e)))
}

/// `GetCapabilities`.
pub fn capabilities() -> IpamCapabilitiesResponse {
    IpamCapabilitiesResponse {
        requires_mac_address: false,
        requires_request_replay: false,
    }
}

/// `GetDefaultAddressSpaces`.
pub fn address_spaces() -> AddressSpacesResponse {
    AddressSpacesResponse {
        local_default_address_space: LOCAL_SPACE.into(),
        global_default_address_space: GLOBAL_SPACE.into(),
    }
}

fn pool_id(pool: &Ipv4Net) -> String {
    format!("tapnet/{pool}")
}

fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// `RequestPool`.
pub async fn request_pool(p: &Plugin, body: &[u8]) -> PluginResult<RequestPoolResponse> {
    let req: RequestPoolRequest = parse("IpamDriver.RequestPool", body)?;
    if req.v6 {
        return Err(PluginError::bad(
            "tapnet's IPAM gives IPv4 pools only: use dockerd's default IPAM for IPv6 networks",
        ));
    }
    if req.address_space != LOCAL_SPACE && !req.address_space.is_empty() {
        return Err(PluginError::bad(format!(
            "address space {:?}: tapnet's IPAM has only {LOCAL_SPACE}",
            req.address_space
        )));
    }
    if let Some(k) = req.options.keys().next() {
        return Err(PluginError::bad(format!(
            "IPAM option {k} is not supported by tapnet's IPAM"
        )));
    }
    let parse_net = |what: &str, s: &str| -> PluginResult<Option<Ipv4Net>> {
        match s {
            "" => Ok(None),
            s => {
                let n: Ipv4Net = s
                    .parse()
                    .map_err(|e| PluginError::bad(format!("{what} {s:?}: {e}")))?;
                Ok(Some(n.trunc()))
            }
        }
    };
    let wanted = parse_net("Pool", &req.pool)?;
    let sub_pool = parse_net("SubPool", &req.sub_pool)?;
    if let (Some(s), None) = (sub_pool, wanted) {
        return Err(PluginError::bad(format!(
            "SubPool {s} without a Pool: give --subnet with --ip-range"
        )));
    }
    if let (Some(s), Some(w)) = (sub_pool, wanted) {
        if !w.contains(&s) {
            return Err(PluginError::bad(format!(
                "SubPool {s} is not inside Pool {w}"
            )));
        }
    }
    // The subnets tapnet's networks use (a plugin pool's network has its pool's).
    let taken: Vec<Ipv4Net> = p
        .ctl
        .snapshot()
        .await
        .networks
        .values()
        .filter_map(|n| n.subnet)
        .collect();
    p.ipam
        .change(move |pools| {
            let used: Vec<Ipv4Net> = pools
                .pools
                .values()
                .map(|x| x.pool)
                .chain(taken.iter().copied())
                .collect();
            let pool = match wanted {
                Some(w) => {
                    if let Some(o) = used.iter().find(|u| overlaps(u, &w)) {
                        return Err(PluginError::from(Error::Conflict(format!(
                            "Pool {w} overlaps {o}, which is in use"
                        ))));
                    }
                    w
                }
                None => crate::ipam::default_pools()
                    .iter()
                    .flat_map(|d| d.base.subnets(d.size).into_iter().flatten())
                    .find(|c| !used.iter().any(|u| overlaps(u, c)))
                    .ok_or_else(|| {
                        PluginError::from(Error::Conflict(
                            "tapnet's default pools are used up: give --subnet".into(),
                        ))
                    })?,
            };
            let id = pool_id(&pool);
            pools.pools.insert(
                id.clone(),
                Pool {
                    pool,
                    sub_pool,
                    addresses: BTreeSet::new(),
                },
            );
            tracing::info!(pool = %pool, "plugin IPAM: pool allocated");
            Ok(RequestPoolResponse {
                pool_id: id,
                pool: pool.to_string(),
                data: BTreeMap::new(),
            })
        })
        .await
}

/// `ReleasePool`.
pub async fn release_pool(p: &Plugin, body: &[u8]) -> PluginResult<Empty> {
    let req: ReleasePoolRequest = parse("IpamDriver.ReleasePool", body)?;
    p.ipam
        .change(move |pools| match pools.pools.remove(&req.pool_id) {
            Some(pool) => {
                tracing::info!(pool = %pool.pool, "plugin IPAM: pool released");
                Ok(Empty {})
            }
            None => Err(PluginError::from(Error::NotFound(format!(
                "pool {} not found",
                req.pool_id
            )))),
        })
        .await
}

fn host_range(net: &Ipv4Net) -> impl Iterator<Item = Ipv4Addr> {
    let (net4, bcast) = (net.network(), net.broadcast());
    net.hosts().filter(move |a| *a != net4 && *a != bcast)
}

/// `RequestAddress`.
pub async fn request_address(p: &Plugin, body: &[u8]) -> PluginResult<RequestAddressResponse> {
    let req: RequestAddressRequest = parse("IpamDriver.RequestAddress", body)?;
    let wanted = match req.address.as_str() {
        "" => None,
        a => Some(
            a.parse::<Ipv4Addr>()
                .map_err(|e| PluginError::bad(format!("Address {a:?}: {e}")))?,
        ),
    };
    let gateway = req
        .options
        .get(OPT_REQUEST_ADDRESS_TYPE)
        .is_some_and(|t| t == REQUEST_ADDRESS_GATEWAY);
    p.ipam
        .change(move |pools| {
            let pool = pools.pools.get_mut(&req.pool_id).ok_or_else(|| {
                PluginError::from(Error::NotFound(format!("pool {} not found", req.pool_id)))
            })?;
            let net = pool.pool;
            let addr = match wanted {
                Some(a) => {
                    if !host_range(&net).any(|h| h == a) {
                        return Err(PluginError::bad(format!(
                            "address {a} is not a host address of pool {net}"
                        )));
                    }
                    if pool.addresses.contains(&a) {
                        return Err(PluginError::from(Error::Conflict(format!(
                            "address {a} is in use"
                        ))));
                    }
                    a
                }
                None => {
                    let range = match (gateway, pool.sub_pool) {
                        (false, Some(s)) => s,
                        _ => net,
                    };
                    host_range(&range)
                        .find(|a| net.contains(a) && !pool.addresses.contains(a))
                        .ok_or_else(|| {
                            PluginError::from(Error::Conflict(format!(
                                "no free address left in pool {range}"
                            )))
                        })?
                }
            };
            pool.addresses.insert(addr);
            Ok(RequestAddressResponse {
                address: format!("{addr}/{}", net.prefix_len()),
                data: BTreeMap::new(),
            })
        })
        .await
}

/// `ReleaseAddress`.
pub async fn release_address(p: &Plugin, body: &[u8]) -> PluginResult<Empty> {
    let req: ReleaseAddressRequest = parse("IpamDriver.ReleaseAddress", body)?;
    let addr: Ipv4Addr = req
        .address
        .parse()
        .map_err(|e| PluginError::bad(format!("Address {:?}: {e}", req.address)))?;
    p.ipam
        .change(move |pools| {
            let pool = pools.pools.get_mut(&req.pool_id).ok_or_else(|| {
                PluginError::from(Error::NotFound(format!("pool {} not found", req.pool_id)))
            })?;
            if !pool.addresses.remove(&addr) {
                return Err(PluginError::from(Error::NotFound(format!(
                    "address {addr} is not allocated in pool {}",
                    pool.pool
                ))));
            }
            Ok(Empty {})
        })
        .await
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::driver::DriverRegistry;
    use crate::ipam::DefaultIpam;
    use crate::Controller;

    fn plugin(file: &std::path::Path) -> Arc<Plugin> {
        let ctl = Controller::new(
            DriverRegistry::new(),
            Box::new(DefaultIpam::new()),
            &std::env::temp_dir(),
        );
        Plugin::new(ctl, None, file.to_path_buf()).unwrap()
    }

    async fn addr(p: &Plugin, body: &str) -> PluginResult<String> {
        request_address(p, body.as_bytes()).await.map(|r| r.address)
    }

    #[tokio::test]
    async fn pools_and_addresses_survive_a_restart() {
        let dir = std::env::temp_dir().join(format!("tapnet-ipam-{}", crate::model::new_id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("pools.json");
        let p = plugin(&file);
        // Default pools: the first free one, then the next.
        let a = request_pool(&p, b"{}").await.unwrap();
        assert_eq!(
            (a.pool_id.as_str(), a.pool.as_str()),
            ("tapnet/172.17.0.0/16", "172.17.0.0/16")
        );
        let b = request_pool(&p, br#"{"AddressSpace":"tapnet-local"}"#)
            .await
            .unwrap();
        assert_eq!(b.pool, "172.18.0.0/16");
        // Overlaps, IPv6, options and bad input are refused by name.
        let e = request_pool(&p, br#"{"Pool":"172.17.5.0/24"}"#)
            .await
            .unwrap_err();
        assert!(e.message.contains("overlaps"), "{}", e.message);
        assert!(request_pool(&p, br#"{"V6":true}"#)
            .await
            .unwrap_err()
            .message
            .contains("IPv4"));
        let e = request_pool(&p, br#"{"Pool":"10.1.0.0/24","Options":{"x":"1"}}"#)
            .await
            .unwrap_err();
        assert!(e.message.contains("option x"), "{}", e.message);
        assert_eq!(request_pool(&p, b"nonsense").await.unwrap_err().status, 400);
        // Gateway first, then the next free; a given address; a taken one.
        let gw = r#"{"PoolID":"tapnet/172.17.0.0/16","Options":{"RequestAddressType":"com.docker.network.gateway"}}"#;
        assert_eq!(addr(&p, gw).await.unwrap(), "172.17.0.1/16");
        let any = r#"{"PoolID":"tapnet/172.17.0.0/16"}"#;
        assert_eq!(addr(&p, any).await.unwrap(), "172.17.0.2/16");
        let fixed = r#"{"PoolID":"tapnet/172.17.0.0/16","Address":"172.17.0.9"}"#;
        assert_eq!(addr(&p, fixed).await.unwrap(), "172.17.0.9/16");
        assert_eq!(addr(&p, fixed).await.unwrap_err().status, 409);
        // A restart (a new plugin on the same file) keeps them.
        drop(p);
        let p = plugin(&file);
        assert_eq!(addr(&p, any).await.unwrap(), "172.17.0.3/16");
        release_address(
            &p,
            br#"{"PoolID":"tapnet/172.17.0.0/16","Address":"172.17.0.2"}"#,
        )
        .await
        .unwrap();
        assert_eq!(addr(&p, any).await.unwrap(), "172.17.0.2/16");
        release_pool(&p, br#"{"PoolID":"tapnet/172.18.0.0/16"}"#)
            .await
            .unwrap();
        assert_eq!(
            release_pool(&p, br#"{"PoolID":"tapnet/172.18.0.0/16"}"#)
                .await
                .unwrap_err()
                .status,
            404
        );
        // A sub-pool bounds the allocations.
        let s = request_pool(&p, br#"{"Pool":"10.50.0.0/24","SubPool":"10.50.0.128/25"}"#)
            .await
            .unwrap();
        let body = format!(r#"{{"PoolID":"{}"}}"#, s.pool_id);
        assert_eq!(addr(&p, &body).await.unwrap(), "10.50.0.129/24");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
