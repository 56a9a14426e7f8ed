//! The process-wide budget of file descriptors for per-flow work.
//!
//! Contract:
//!
//! * One [`FdBudget`] per process ([`global`]): every per-flow resource that costs a file
//!   descriptor — a gateway's UDP, TCP and ICMP egress flows, its forwarded DNS queries,
//!   its published-port TCP connections, on every network — takes a [`FdPermit`] from it
//!   before the descriptor is made, and gives it back when the permit drops (with the
//!   flow). The per-endpoint and per-network limits ([`crate::Limits`]) still apply;
//!   the budget caps their sum, so that flows can never take the descriptors the daemon
//!   needs for its API, store, taps and network sockets.
//! * Its size is set once at start by the daemon ([`FdBudget::set_limit`], from
//!   [`split`] of the raised `RLIMIT_NOFILE`); until then it admits everything (library
//!   users and unit tests).
//! * A refusal is counted ([`FdBudget::refused`]) and marked `first` once per episode: the
//!   first refusal after the budget last fell below three quarters of its size, so the
//!   caller logs one line per flood, not one per packet.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

/// How the daemon's descriptors are shared (see `docs/security.md`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FdSplit {
    /// The descriptor limit (`RLIMIT_NOFILE` soft limit, after raising it).
    pub nofile: u64,
    /// Kept for the daemon itself: store, taps, switch and gateway sockets, pollers,
    /// plugin and cluster-store clients, the API listener.
    pub reserve: u64,
    /// Concurrent HTTP connections on each of the two HTTP sockets (the API and the
    /// Docker plugin).
    pub api_connections: u64,
    /// Per-flow descriptors, all networks together ([`global`]).
    pub flows: u64,
}

/// Split `nofile` descriptors: a reserve of `max(256, nofile/8)` (or `reserve` if
/// given), `clamp(nofile/16, 16, 1024)` connections (or `api` if given) for each of the
/// two HTTP sockets, the rest for flows (at least 0).
pub fn split(nofile: u64, reserve: Option<u64>, api: Option<u64>) -> FdSplit {
    let reserve = reserve.unwrap_or_else(|| (nofile / 8).max(256));
    let api = api.unwrap_or_else(|| (nofile / 16).clamp(16, 1024));
    FdSplit {
        nofile,
        reserve,
        api_connections: api,
        flows: nofile
            .saturating_sub(reserve)
            .saturating_sub(api.saturating_mul(2)),
    }
}

/// A shared count of descriptors held for flows, with a limit.
#[derive(Debug)]
pub struct FdBudget {
    limit: AtomicUsize,
    used: AtomicUsize,
    refused: AtomicU64,
    logged: AtomicBool,
}

static GLOBAL: FdBudget = FdBudget::new(usize::MAX);

/// The process's budget.
pub fn global() -> &'static FdBudget {
    &GLOBAL
}

/// One descriptor of the budget; given back when dropped.
#[derive(Debug)]
pub struct FdPermit {
    budget: &'static FdBudget,
}

impl Drop for FdPermit {
    fn drop(&mut self) {
        self.budget.release();
    }
}

/// The budget refused a descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exhausted {
    /// The budget's size.
    pub limit: usize,
    /// First refusal of this episode: log it.
    pub first: bool,
}

impl FdBudget {
    /// A budget of `limit` descriptors.
    pub const fn new(limit: usize) -> FdBudget {
        FdBudget {
            limit: AtomicUsize::new(limit),
            used: AtomicUsize::new(0),
            refused: AtomicU64::new(0),
            logged: AtomicBool::new(false),
        }
    }

    /// Set the size (descriptors held beyond it stay held until their flows end).
    pub fn set_limit(&self, limit: usize) {
        self.limit.store(limit, Ordering::Relaxed);
    }

    /// The size.
    pub fn limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }

    /// Descriptors held now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Refusals since start.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Take one descriptor, or say the budget is spent.
    pub fn acquire(&'static self) -> Result<FdPermit, Exhausted> {
        let limit = self.limit();
        let took = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                (u < limit).then_some(u + 1)
            });
        match took {
            Ok(_) => Ok(FdPermit { budget: self }),
            Err(_) => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                let first = !self.logged.swap(true, Ordering::Relaxed);
                Err(Exhausted { limit, first })
            }
        }
    }

    fn release(&self) {
        let before = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| u.checked_sub(1))
            .unwrap_or(0);
        if before.saturating_sub(1) < self.limit() / 4 * 3 {
            self.logged.store(false, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_admits_up_to_its_limit_and_logs_once_per_episode() {
        static B: FdBudget = FdBudget::new(4);
        let mut held: Vec<FdPermit> = (0..4).map(|_| B.acquire().expect("room")).collect();
        assert_eq!(B.used(), 4);
        let e = B.acquire().expect_err("full");
        assert_eq!((e.limit, e.first), (4, true));
        assert!(!B.acquire().expect_err("still full").first);
        assert_eq!(B.refused(), 2);
        // One back: admitted again, but the episode goes on (3 of 4 held).
        held.pop();
        held.push(B.acquire().expect("room again"));
        assert!(!B.acquire().expect_err("full").first);
        // Below three quarters: the next refusal is logged again.
        held.truncate(2);
        assert_eq!(B.used(), 2);
        held.push(B.acquire().expect("room"));
        held.push(B.acquire().expect("room"));
        assert!(B.acquire().expect_err("full").first);
        drop(held);
        assert_eq!(B.used(), 0);
    }

    #[test]
    fn split_keeps_a_reserve_and_never_underflows() {
        let s = split(1024, None, None);
        assert_eq!((s.reserve, s.api_connections, s.flows), (256, 64, 640));
        let s = split(1 << 20, None, None);
        assert_eq!(s.reserve, 131072);
        assert_eq!(s.api_connections, 1024);
        assert_eq!(s.flows, (1 << 20) - 131072 - 2048);
        assert_eq!(split(100, None, None).flows, 0);
        assert_eq!(split(1000, Some(100), Some(50)).flows, 800);
    }
}
