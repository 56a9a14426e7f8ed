//! An in-memory [`KvStore`] that can be told to fail: the fake behind the rollback
//! tests.
//!
//! Contract: the same semantics as the redb store (atomic transactions with
//! compare-and-swap conditions, revisions, watches), without durability. Failure
//! injection: [`MemStore::fail_next`] makes the next *n* transactions fail with
//! [`StoreError::Unavailable`] before writing anything; [`MemStore::fail_after`]
//! lets *n* transactions succeed and fails every one after that. A failed
//! transaction changes nothing and notifies no watcher.

use super::{Compare, KeyValue, KvOp, KvStore, Revision, StoreError, WatchEvent, Watchers};
use std::collections::BTreeMap;
use std::sync::Mutex;

#[derive(Debug, Default)]
struct Inner {
    data: BTreeMap<String, (Vec<u8>, Revision)>,
    revision: Revision,
    /// Transactions that fail from now on (`fail_next`).
    fail_next: usize,
    /// Transactions that still succeed before every later one fails (`fail_after`).
    succeed_then_fail: Option<usize>,
    /// Transactions attempted (failed or not).
    attempts: usize,
}

/// The in-memory store (see the module doc).
#[derive(Debug, Default)]
pub struct MemStore {
    inner: Mutex<Inner>,
    watchers: Watchers,
}

impl MemStore {
    /// An empty store.
    pub fn new() -> MemStore {
        MemStore::default()
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Make the next `n` transactions fail.
    pub fn fail_next(&self, n: usize) {
        self.inner().fail_next = n;
    }

    /// Let `n` more transactions succeed, then fail every later one.
    pub fn fail_after(&self, n: usize) {
        self.inner().succeed_then_fail = Some(n);
    }

    /// Stop injecting failures.
    pub fn heal(&self) {
        let mut inner = self.inner();
        inner.fail_next = 0;
        inner.succeed_then_fail = None;
    }

    /// Transactions attempted so far.
    pub fn attempts(&self) -> usize {
        self.inner().attempts
    }

    /// Every key and value (for assertions).
    pub fn dump(&self) -> BTreeMap<String, Vec<u8>> {
        self.inner()
            .data
            .iter()
            .map(|(k, (v, _))| (k.clone(), v.clone()))
            .collect()
    }
}

impl KvStore for MemStore {
    fn describe(&self) -> String {
        "memory".into()
    }

    fn range(&self, prefix: &str) -> Result<Vec<KeyValue>, StoreError> {
        Ok(self
            .inner()
            .data
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, (v, r))| KeyValue {
                key: k.clone(),
                value: v.clone(),
                revision: *r,
            })
            .collect())
    }

    fn txn(&self, compares: &[Compare], ops: &[KvOp]) -> Result<Revision, StoreError> {
        let mut inner = self.inner();
        inner.attempts += 1;
        let injected = if inner.fail_next > 0 {
            inner.fail_next -= 1;
            true
        } else if let Some(n) = inner.succeed_then_fail.as_mut() {
            if *n == 0 {
                true
            } else {
                *n -= 1;
                false
            }
        } else {
            false
        };
        if injected {
            return Err(StoreError::Unavailable {
                store: "memory".into(),
                message: "injected failure".into(),
            });
        }
        for c in compares {
            let found = inner.data.get(&c.key).map(|(_, r)| *r);
            if found != c.revision {
                return Err(StoreError::Conflict {
                    store: "memory".into(),
                    key: c.key.clone(),
                    expected: c.revision,
                    found,
                });
            }
        }
        inner.revision += 1;
        let revision = inner.revision;
        for op in ops {
            match op {
                KvOp::Put(k, v) => {
                    inner.data.insert(k.clone(), (v.clone(), revision));
                }
                KvOp::Delete(k) => {
                    inner.data.remove(k);
                }
            }
        }
        drop(inner);
        self.watchers.notify(revision, ops);
        Ok(revision)
    }

    fn watch(&self, prefix: &str) -> crossbeam_channel::Receiver<WatchEvent> {
        self.watchers.subscribe(prefix)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn put(k: &str) -> KvOp {
        KvOp::Put(k.into(), b"v".to_vec())
    }

    #[test]
    fn injected_failures_change_nothing() {
        let m = MemStore::new();
        let w = m.watch("a/");
        m.txn(&[], &[put("a/1")]).unwrap();
        m.fail_next(1);
        assert!(matches!(
            m.txn(&[], &[put("a/2")]),
            Err(StoreError::Unavailable { .. })
        ));
        m.fail_after(1);
        m.txn(&[], &[put("a/3")]).unwrap();
        assert!(m.txn(&[], &[put("a/4")]).is_err());
        m.heal();
        m.txn(&[], &[KvOp::Delete("a/1".into())]).unwrap();
        let keys: Vec<String> = m
            .range("a/")
            .unwrap()
            .into_iter()
            .map(|kv| kv.key)
            .collect();
        assert_eq!(keys, vec!["a/3".to_string()]);
        assert_eq!(w.try_iter().count(), 3);
        assert_eq!(m.attempts(), 5);
    }

    #[test]
    fn compare_and_swap() {
        let m = MemStore::new();
        let r = m
            .txn(
                &[Compare {
                    key: "k".into(),
                    revision: None,
                }],
                &[put("k")],
            )
            .unwrap();
        let stale = Compare {
            key: "k".into(),
            revision: Some(r + 1),
        };
        assert!(matches!(
            m.txn(&[stale], &[KvOp::Delete("k".into())]),
            Err(StoreError::Conflict { found: Some(f), .. }) if f == r
        ));
        assert_eq!(m.range("").unwrap().len(), 1);
    }
}
