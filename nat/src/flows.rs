//! Flow bookkeeping: idle-timeout tables and flow limits. Pure: time is passed in as
//! milliseconds from an arbitrary origin; nothing here does I/O.
//!
//! Contract:
//!
//! * [`FlowTable`] maps a flow key to a value with a last-used time; [`FlowTable::expire`]
//!   hands back every entry idle for at least the table's timeout.
//! * [`Limiter`] counts active flows per sandbox source IP and per network; a flow is
//!   admitted by [`Limiter::acquire`] and must be given back by [`Limiter::release`].
//!   A refusal names the limit; the first refusal after a period of admission is marked
//!   `first` so the caller logs one line, not one per packet.

use rustc_hash::FxHashMap;
use std::hash::Hash;
use std::net::IpAddr;

struct Entry<V> {
    value: V,
    last_ms: u64,
}

/// A table of flows with an idle timeout.
pub struct FlowTable<K, V> {
    map: FxHashMap<K, Entry<V>>,
    idle_ms: u64,
}

impl<K: Hash + Eq + Clone, V> FlowTable<K, V> {
    /// An empty table whose entries expire after `idle_ms` without use.
    pub fn new(idle_ms: u64) -> Self {
        FlowTable {
            map: FxHashMap::default(),
            idle_ms,
        }
    }

    /// The flow for `k`, marked used at `now_ms`.
    pub fn touch(&mut self, k: &K, now_ms: u64) -> Option<&mut V> {
        let e = self.map.get_mut(k)?;
        e.last_ms = e.last_ms.max(now_ms);
        Some(&mut e.value)
    }

    /// The flow for `k`, not marking it used.
    pub fn get(&self, k: &K) -> Option<&V> {
        self.map.get(k).map(|e| &e.value)
    }

    /// Insert a flow used at `now_ms`; returns the value it replaced.
    pub fn insert(&mut self, k: K, v: V, now_ms: u64) -> Option<V> {
        self.map
            .insert(
                k,
                Entry {
                    value: v,
                    last_ms: now_ms,
                },
            )
            .map(|e| e.value)
    }

    /// Remove a flow.
    pub fn remove(&mut self, k: &K) -> Option<V> {
        self.map.remove(k).map(|e| e.value)
    }

    /// Remove and return every flow idle for at least the timeout at `now_ms`.
    pub fn expire(&mut self, now_ms: u64) -> Vec<(K, V)> {
        let idle = self.idle_ms;
        let dead: Vec<K> = self
            .map
            .iter()
            .filter(|(_, e)| now_ms.saturating_sub(e.last_ms) >= idle)
            .map(|(k, _)| k.clone())
            .collect();
        dead.into_iter()
            .filter_map(|k| self.map.remove(&k).map(|e| (k, e.value)))
            .collect()
    }

    /// Number of flows.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True if empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// All flows.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.map.iter().map(|(k, e)| (k, &e.value))
    }

    /// All flows, mutably (not marking them used).
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&K, &mut V)> {
        self.map.iter_mut().map(|(k, e)| (k, &mut e.value))
    }
}

/// Which limit refused a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitKind {
    /// Per sandbox source IP.
    Endpoint,
    /// Per network.
    Network,
}

/// A refused flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LimitHit {
    /// The limit.
    pub kind: LimitKind,
    /// Its value.
    pub limit: usize,
    /// First refusal since this limit last admitted a flow: log it.
    pub first: bool,
}

/// Active-flow counts with per-endpoint and per-network limits.
pub struct Limiter {
    per_endpoint: usize,
    per_network: usize,
    counts: FxHashMap<IpAddr, usize>,
    total: usize,
    /// Sources (and `None` for the network) currently refused and already logged.
    logged: FxHashMap<Option<IpAddr>, ()>,
}

impl Limiter {
    /// Limits: at most `per_endpoint` flows per source IP, `per_network` in all.
    pub fn new(per_endpoint: usize, per_network: usize) -> Limiter {
        Limiter {
            per_endpoint,
            per_network,
            counts: FxHashMap::default(),
            total: 0,
            logged: FxHashMap::default(),
        }
    }

    /// Admit one more flow from `src`, or say which limit refuses it.
    pub fn acquire(&mut self, src: IpAddr) -> Result<(), LimitHit> {
        if self.total >= self.per_network {
            let first = self.logged.insert(None, ()).is_none();
            return Err(LimitHit {
                kind: LimitKind::Network,
                limit: self.per_network,
                first,
            });
        }
        let n = self.counts.get(&src).copied().unwrap_or(0);
        if n >= self.per_endpoint {
            let first = self.logged.insert(Some(src), ()).is_none();
            return Err(LimitHit {
                kind: LimitKind::Endpoint,
                limit: self.per_endpoint,
                first,
            });
        }
        self.counts.insert(src, n + 1);
        self.total += 1;
        Ok(())
    }

    /// Give back a flow of `src`.
    pub fn release(&mut self, src: IpAddr) {
        if let Some(n) = self.counts.get_mut(&src) {
            *n = n.saturating_sub(1);
            self.total = self.total.saturating_sub(1);
            if *n == 0 {
                self.counts.remove(&src);
            }
            self.logged.remove(&Some(src));
            self.logged.remove(&None);
        }
    }

    /// Active flows of `src`.
    pub fn active(&self, src: IpAddr) -> usize {
        self.counts.get(&src).copied().unwrap_or(0)
    }

    /// Active flows on the network.
    pub fn total(&self) -> usize {
        self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flow_table_expires_idle_flows_only() {
        let mut t: FlowTable<u32, &str> = FlowTable::new(60_000);
        t.insert(1, "a", 0);
        t.insert(2, "b", 0);
        assert!(t.touch(&2, 30_000).is_some());
        assert!(t.expire(59_999).is_empty());
        let dead = t.expire(60_000);
        assert_eq!(dead, vec![(1, "a")]);
        assert_eq!(t.len(), 1);
        assert!(t.expire(89_999).is_empty());
        assert_eq!(t.expire(90_000), vec![(2, "b")]);
        assert!(t.is_empty());
        // Time going backwards never un-ages or panics.
        t.insert(3, "c", 100);
        assert!(t.touch(&3, 50).is_some());
        assert!(t.expire(0).is_empty());
    }

    #[test]
    fn limiter_enforces_per_endpoint_and_per_network_limits() {
        let a: IpAddr = "172.17.0.2".parse().expect("ip");
        let b: IpAddr = "172.17.0.3".parse().expect("ip");
        let c: IpAddr = "172.17.0.4".parse().expect("ip");
        let mut l = Limiter::new(2, 3);
        assert!(l.acquire(a).is_ok());
        assert!(l.acquire(a).is_ok());
        let hit = l.acquire(a).expect_err("endpoint limit");
        assert_eq!(hit.kind, LimitKind::Endpoint);
        assert!(hit.first);
        assert!(!l.acquire(a).expect_err("still limited").first);
        assert!(l.acquire(b).is_ok());
        let hit = l.acquire(c).expect_err("network limit");
        assert_eq!(
            (hit.kind, hit.limit, hit.first),
            (LimitKind::Network, 3, true)
        );
        l.release(a);
        assert_eq!(l.active(a), 1);
        assert!(l.acquire(c).is_ok());
        assert_eq!(l.total(), 3);
        // Releasing an unknown source changes nothing.
        l.release("10.0.0.1".parse().expect("ip"));
        assert_eq!(l.total(), 3);
    }
}
