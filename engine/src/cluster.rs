//! `--cluster-store`, `--cluster-advertise`, `--cluster-ttl`: connect to the cluster
//! store at start and register this node (`nodes/<advertise>` under a lease of the
//! TTL, kept alive in the background). An unreachable store fails the start. This
//! node's VTEP in the cluster is the advertise address with `--data-path-port`.

use anyhow::{bail, Context};
use std::sync::Arc;
use std::time::Duration;
use tapnet_engine::controller::ClusterNode;
use tapnet_engine::store::etcd::{self, EtcdStore};

/// How long the first contact with the store may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// The cluster store of the flags (`None` without `--cluster-store`).
pub async fn connect(
    store: Option<&str>,
    advertise: Option<&str>,
    ttl: u64,
    data_path_port: u16,
) -> anyhow::Result<Option<ClusterNode>> {
    let Some(url) = store else {
        if advertise.is_some() {
            bail!("--cluster-advertise needs --cluster-store etcd://HOST:PORT");
        }
        return Ok(None);
    };
    let endpoints = etcd::parse_url(url).map_err(|e| anyhow::anyhow!("--cluster-store: {e}"))?;
    let Some(advertise) = advertise else {
        bail!("--cluster-store {url} needs --cluster-advertise ADDR (this node's address as the other hosts reach it)");
    };
    let ip = advertise.parse::<std::net::IpAddr>().ok().or_else(|| {
        advertise
            .parse::<std::net::SocketAddr>()
            .ok()
            .map(|a| a.ip())
    });
    let Some(ip) = ip else {
        bail!("--cluster-advertise {advertise:?}: give an IP address (or IP:PORT)");
    };
    let vtep = std::net::SocketAddr::new(ip, data_path_port);
    if ttl == 0 {
        bail!("--cluster-ttl: give at least 1 second");
    }
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    let advertise = advertise.to_string();
    let url = url.to_string();
    tokio::task::spawn_blocking(move || {
        let store = EtcdStore::connect(&endpoints, etcd::DEFAULT_PREFIX, CONNECT_TIMEOUT)
            .with_context(|| format!("--cluster-store {url}: cannot reach the cluster store"))?;
        let lease = store
            .register_node(&advertise, &hostname, Duration::from_secs(ttl))
            .with_context(|| format!("--cluster-store {url}: register node {advertise}"))?;
        tracing::info!(store = %url, %advertise, ttl, "registered in the cluster store");
        Ok(Some(ClusterNode {
            store: Arc::new(store),
            lease,
            vtep,
        }))
    })
    .await
    .context("connect to the cluster store")?
}
