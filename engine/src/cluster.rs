//! `--cluster-store`, `--cluster-advertise`, `--cluster-ttl`,
//! `--cluster-key-rotation` ([`parse_duration`]): connect to the cluster
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
    key_rotation: Duration,
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
            key_rotation,
        }))
    })
    .await
    .context("connect to the cluster store")?
}

/// A duration like humantime's: numbers with units, `ms`, `s`, `m`, `h`, `d`, summed
/// (`2s`, `12h`, `1h30m`, `500ms`); a bare number is seconds. At least 1 s.
pub fn parse_duration(v: &str) -> Result<Duration, String> {
    let bad = |why: &str| format!("invalid duration {v:?}: {why} (e.g. 2s, 30m, 12h, 1h30m)");
    let t = v.trim();
    if t.is_empty() {
        return Err(bad("empty"));
    }
    if let Ok(secs) = t.parse::<u64>() {
        return at_least_a_second(Duration::from_secs(secs)).ok_or_else(|| bad("less than 1s"));
    }
    let mut total = Duration::ZERO;
    let mut rest = t;
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits == 0 {
            return Err(bad("expected a number"));
        }
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| bad("number too large"))?;
        rest = &rest[digits..];
        let unit_len = rest.len()
            - rest
                .trim_start_matches(|c: char| c.is_ascii_alphabetic())
                .len();
        let unit = &rest[..unit_len];
        rest = rest[unit_len..].trim_start();
        let per: u64 = match unit {
            "ms" => 1,
            "s" | "sec" => 1000,
            "m" | "min" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "" => return Err(bad("a unit is missing")),
            _ => return Err(bad(&format!("unknown unit {unit:?}"))),
        };
        let add = n.checked_mul(per).ok_or_else(|| bad("too large"))?;
        total = total
            .checked_add(Duration::from_millis(add))
            .ok_or_else(|| bad("too large"))?;
    }
    at_least_a_second(total).ok_or_else(|| bad("less than 1s"))
}

fn at_least_a_second(d: Duration) -> Option<Duration> {
    (d >= Duration::from_secs(1)).then_some(d)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_like_humantime() {
        let s = Duration::from_secs;
        assert_eq!(parse_duration("2s").unwrap(), s(2));
        assert_eq!(parse_duration("12h").unwrap(), s(12 * 3600));
        assert_eq!(parse_duration("1h30m").unwrap(), s(5400));
        assert_eq!(
            parse_duration("1500ms").unwrap(),
            Duration::from_millis(1500)
        );
        assert_eq!(parse_duration("90").unwrap(), s(90));
        assert_eq!(parse_duration("1d").unwrap(), s(86_400));
        for bad in [
            "",
            "0",
            "0s",
            "500ms",
            "2x",
            "h",
            "s2",
            "-1s",
            "99999999999999999999h",
        ] {
            let e = parse_duration(bad).unwrap_err();
            assert!(e.contains("invalid duration"), "{bad}: {e}");
        }
    }
}
