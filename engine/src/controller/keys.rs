//! Keys of encrypted overlay networks (`-o encrypted`), through the cluster store.
//!
//! Contract:
//! * `-o encrypted` ([`ENCRYPTED_OPTION`]) is accepted only for a global overlay
//!   network: without a cluster store, or with a static peer list
//!   ([`PEERS_OPTION`]), the create is refused with a 400 that says why
//!   ([`Inner::check_encryption`]): keys are distributed through the store only.
//! * Each encrypted network has one record, `keys/<network-id>` ([`KeyRecord`]): up
//!   to three AES-256 keys (id = epoch, random from the OS via `ring`, creation time)
//!   and the id of the key that sends. It is written create-if-absent when the
//!   network is created (a step before its `networks/<id>` commit; undo: delete it)
//!   and deleted with the network.
//! * Every daemon installs the record into the network's tunnel port
//!   ([`crate::driver::Driver::set_keys`]): every key is accepted on receive, the send
//!   key seals. Installed on each `keys/` change of the watch, when a global network
//!   is created here, and at start.
//! * Rotation (`tapnetd --cluster-key-rotation`, default 12 h) in two steps, so that
//!   no datagram is sealed with a key a peer does not accept yet:
//!   1. **add**: when the send key is older than the rotation period, a new key is
//!      added (accepted on receive by everyone once the watch delivers it); keys
//!      older than the send key are dropped. The send key does not change.
//!   2. **promote**: once the new key is older than the grace period
//!      ([`grace`]: half the period, at most 5 s), it becomes the send key. The
//!      previous send key is still accepted until the next *add*, so datagrams in
//!      flight, or sealed by a host that has not seen the promotion yet, still open.
//!
//!   Any daemon may take a step: each checks every [`tick`] and writes the next
//!   record with a compare-and-swap on the record's revision, so exactly one
//!   daemon wins each step (an implicit election; the losers see a conflict and do
//!   nothing). Times are wall-clock milliseconds in the record: skewed clocks move
//!   when a step happens, not its safety, which rests on the grace period being
//!   longer than the watch takes to reach every daemon. A daemon cut off from the
//!   store for longer than the grace period may miss a new key until it re-syncs.
//! * The keys are stored in the cluster store in clear: the store must be trusted
//!   and reached over a trusted network (no TLS to etcd yet).
//! * Cost: each daemon reads the `keys/` prefix once per tick (one record per
//!   encrypted network), plus one write per step per network cluster-wide.

use super::{Controller, Inner};
use crate::driver::overlay::{parse_encrypted, ENCRYPTED_OPTION, PEERS_OPTION};
use crate::driver::Driver;
use crate::error::{Error, Result, StoreError};
use crate::model::Network;
use crate::store::{Compare, KvOp, KvStore};
use crate::txn::{blocking, Txn};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tapnet_vxlan::crypt::KEY_LEN;
use tapnet_vxlan::{KeyMaterial, KeySet};

/// Key prefix of the key records in the cluster store.
pub(super) const KEYS: &str = "keys/";
/// The default of `--cluster-key-rotation`.
pub const DEFAULT_ROTATION: Duration = Duration::from_secs(12 * 3600);
/// Keys a record keeps: the previous send key, the send key, a new one.
const MAX_KEYS: usize = 3;

/// One key of a [`KeyRecord`].
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredKey {
    /// Its id, the epoch (carried in every datagram it seals).
    pub id: u32,
    /// AES-256 key.
    pub key: [u8; KEY_LEN],
    /// When it was made, milliseconds since the Unix epoch.
    pub created_ms: u64,
}

impl std::fmt::Debug for StoredKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredKey")
            .field("id", &self.id)
            .field("created_ms", &self.created_ms)
            .finish_non_exhaustive()
    }
}

/// `keys/<network-id>`: a network's keys (see the module doc).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// Keys accepted on receive, oldest first.
    pub keys: Vec<StoredKey>,
    /// The id of the send key.
    pub send: u32,
}

/// A rotation step due on a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Add a new key (not sending yet).
    Add,
    /// Make the newest key the send key.
    Promote,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The grace period between adding a key and sending with it: half the rotation
/// period, at most 5 s.
pub fn grace(rotation: Duration) -> Duration {
    (rotation / 2).min(Duration::from_secs(5))
}

/// How often each daemon checks whether a step is due: an eighth of the rotation
/// period, between 100 ms and 5 s.
pub fn tick(rotation: Duration) -> Duration {
    (rotation / 8).clamp(Duration::from_millis(100), Duration::from_secs(5))
}

/// A new random key (from the OS).
fn random_key() -> Result<[u8; KEY_LEN]> {
    let mut k = [0u8; KEY_LEN];
    SystemRandom::new()
        .fill(&mut k)
        .map_err(|_| Error::Driver("no randomness from the OS for a network key".into()))?;
    Ok(k)
}

impl KeyRecord {
    /// A record with one new key, sending.
    pub fn first(now_ms: u64) -> Result<KeyRecord> {
        Ok(KeyRecord {
            keys: vec![StoredKey {
                id: 1,
                key: random_key()?,
                created_ms: now_ms,
            }],
            send: 1,
        })
    }

    /// What the tunnel port is given.
    pub fn key_set(&self) -> KeySet {
        KeySet {
            keys: self
                .keys
                .iter()
                .map(|k| KeyMaterial {
                    id: k.id,
                    key: k.key,
                })
                .collect(),
            send: Some(self.send),
        }
    }

    /// The step due at `now` (see the module doc), if any.
    pub fn due(&self, now: u64, rotation: Duration) -> Option<Step> {
        let newest = self.keys.iter().max_by_key(|k| k.id)?;
        if newest.id > self.send {
            let ready = now.saturating_sub(newest.created_ms) >= ms(grace(rotation));
            return ready.then_some(Step::Promote);
        }
        let send = self.keys.iter().find(|k| k.id == self.send)?;
        (now.saturating_sub(send.created_ms) >= ms(rotation)).then_some(Step::Add)
    }

    /// The record after `step` at `now`.
    pub fn apply(&self, step: Step, now: u64) -> Result<KeyRecord> {
        let mut next = self.clone();
        let newest = self.keys.iter().map(|k| k.id).max().unwrap_or(0);
        match step {
            Step::Promote => next.send = newest,
            Step::Add => {
                next.keys.retain(|k| k.id >= self.send);
                next.keys.push(StoredKey {
                    id: newest.wrapping_add(1).max(1),
                    key: random_key()?,
                    created_ms: now,
                });
                while next.keys.len() > MAX_KEYS {
                    next.keys.remove(0);
                }
            }
        }
        Ok(next)
    }
}

fn key_of(network_id: &str) -> String {
    format!("{KEYS}{network_id}")
}

fn store_err(op: &str, e: StoreError) -> Error {
    Error::store(op.to_string(), e)
}

impl Inner {
    /// Refuse `-o encrypted` where no keys can be distributed (see the module doc).
    pub(super) fn check_encryption(
        &self,
        driver: &str,
        options: &std::collections::BTreeMap<String, String>,
    ) -> Result<()> {
        if driver != "overlay" || !options.contains_key(ENCRYPTED_OPTION) {
            return Ok(());
        }
        if self.cluster.is_none() {
            return Err(Error::InvalidRequest(format!(
                "-o {ENCRYPTED_OPTION} needs a cluster store (tapnetd --cluster-store etcd://HOST:PORT): \
                 the network's keys are distributed and rotated through it"
            )));
        }
        if options.contains_key(PEERS_OPTION) {
            return Err(Error::InvalidRequest(format!(
                "-o {ENCRYPTED_OPTION} cannot be combined with {PEERS_OPTION}: a static overlay has no \
                 key distribution (create it without peers, through the cluster store)"
            )));
        }
        Ok(())
    }

    /// Step of creating an encrypted global network: write its first key record
    /// (create-if-absent; undo: delete it) and install it here.
    pub(super) async fn create_network_keys(
        &self,
        txn: &mut Txn,
        network: &Network,
        driver: &Arc<dyn Driver>,
    ) -> Result<()> {
        if !parse_encrypted(&network.options)? {
            return Ok(());
        }
        let Some(node) = self.cluster.clone() else {
            return Err(Error::InvalidRequest(format!(
                "-o {ENCRYPTED_OPTION} needs a cluster store"
            )));
        };
        let record = KeyRecord::first(now_ms())?;
        let value = serde_json::to_vec(&record).map_err(|e| {
            store_err(
                "encode keys",
                StoreError::Encode {
                    what: "keys".into(),
                    source: e,
                },
            )
        })?;
        let key = key_of(&network.id);
        let (store, k, op) = (Arc::clone(&node.store), key.clone(), txn.op().to_string());
        blocking("write the network's keys", move || {
            store
                .txn(
                    &[Compare {
                        key: k.clone(),
                        revision: None,
                    }],
                    &[KvOp::Put(k, value)],
                )
                .map(drop)
                .map_err(|e| store_err(&op, e))
        })
        .await?;
        let store = Arc::clone(&node.store);
        txn.on_undo("delete the network's keys", move || {
            store
                .txn(&[], &[KvOp::Delete(key)])
                .map(drop)
                .map_err(|e| store_err("delete keys", e))
        });
        let (d, nid, set) = (Arc::clone(driver), network.id.clone(), record.key_set());
        blocking("install the network's keys", move || d.set_keys(&nid, &set)).await
    }

    /// The delete of `keys/<id>`, for the removal of a global network.
    pub(super) fn delete_network_keys(network_id: &str) -> KvOp {
        KvOp::Delete(key_of(network_id))
    }

    /// Install `record` into global network `nid` here, if it is here and encrypted.
    async fn install(&self, nid: &str, record: &KeyRecord) {
        let Some(net) = self.model().networks.get(nid).cloned() else {
            return;
        };
        if !self.is_global(nid) || !parse_encrypted(&net.options).unwrap_or(false) {
            return;
        }
        let Ok(driver) = self.drivers.get(&net.driver) else {
            return;
        };
        let (id, set) = (nid.to_string(), record.key_set());
        let ids: Vec<u32> = record.keys.iter().map(|k| k.id).collect();
        match blocking("install keys", move || driver.set_keys(&id, &set)).await {
            Ok(()) => tracing::info!(network = %net.name, keys = ?ids, send = record.send,
                "network keys installed"),
            Err(e) => tracing::warn!(network = %net.name, error = %e, "installing network keys"),
        }
    }

    /// Read `keys/<nid>` and install it (see [`Inner::install`]).
    pub(super) async fn install_keys(&self, nid: &str) {
        let Some(node) = self.cluster.clone() else {
            return;
        };
        let key = key_of(nid);
        let k = key.clone();
        let kvs = blocking("read keys", move || {
            node.store.range(&k).map_err(|e| store_err("read keys", e))
        })
        .await;
        match kvs {
            Ok(kvs) => {
                for kv in kvs.iter().filter(|kv| kv.key == key) {
                    match serde_json::from_slice::<KeyRecord>(&kv.value) {
                        Ok(r) => self.install(nid, &r).await,
                        Err(e) => tracing::warn!(key = %kv.key, error = %e, "bad key record"),
                    }
                }
            }
            Err(e) => tracing::warn!(network = nid, error = %e, "reading network keys"),
        }
    }

    /// Install the keys of every global network here.
    pub(super) async fn install_all_keys(&self) {
        let ids: Vec<String> = self
            .model()
            .networks
            .keys()
            .filter(|id| self.is_global(id))
            .cloned()
            .collect();
        for id in ids {
            self.install_keys(&id).await;
        }
    }

    /// A change under `keys/` (from the watch).
    pub(super) async fn on_keys_event(&self, op: &KvOp) {
        if let KvOp::Put(k, v) = op {
            let Some(nid) = k.strip_prefix(KEYS) else {
                return;
            };
            match serde_json::from_slice::<KeyRecord>(v) {
                Ok(r) => self.install(nid, &r).await,
                Err(e) => tracing::warn!(key = %k, error = %e, "bad key record"),
            }
        }
    }
}

impl Controller {
    /// Start the rotation thread (see the module doc); no-op without a cluster store.
    pub(super) fn start_key_rotation(&self) -> Result<()> {
        let Some(node) = self.inner.cluster.clone() else {
            return Ok(());
        };
        let rotation = node.key_rotation;
        let inner = Arc::clone(&self.inner);
        std::thread::Builder::new()
            .name("tapnet-keys".into())
            .spawn(move || loop {
                std::thread::sleep(tick(rotation));
                // Nothing to read while this host knows no encrypted network (every
                // daemon sees every global network, so one of them always does when
                // the cluster has one): an idle cluster sends etcd no polling reads.
                let encrypted = inner.model().networks.iter().any(|(nid, net)| {
                    inner.is_global(nid) && parse_encrypted(&net.options).unwrap_or(false)
                });
                if encrypted {
                    rotate_due(node.store.as_ref(), rotation);
                }
            })
            .map_err(|e| Error::Task {
                op: "start the key rotation".into(),
                message: e.to_string(),
            })?;
        Ok(())
    }
}

/// Take every rotation step due now, each a compare-and-swap (losing one is normal).
fn rotate_due(store: &dyn KvStore, rotation: Duration) {
    let kvs = match store.range(KEYS) {
        Ok(k) => k,
        Err(e) => {
            tracing::debug!(error = %e, "key rotation: reading keys");
            return;
        }
    };
    for kv in kvs {
        let Ok(record) = serde_json::from_slice::<KeyRecord>(&kv.value) else {
            continue;
        };
        let now = now_ms();
        let Some(step) = record.due(now, rotation) else {
            continue;
        };
        let Ok(next) = record.apply(step, now) else {
            continue;
        };
        let Ok(value) = serde_json::to_vec(&next) else {
            continue;
        };
        match store.txn(
            &[Compare {
                key: kv.key.clone(),
                revision: Some(kv.revision),
            }],
            &[KvOp::Put(kv.key.clone(), value)],
        ) {
            Ok(_) => tracing::info!(key = %kv.key, ?step, send = next.send,
                keys = ?next.keys.iter().map(|k| k.id).collect::<Vec<_>>(), "network key rotation"),
            Err(StoreError::Conflict { .. }) => {
                tracing::debug!(key = %kv.key, "key rotation: another daemon took the step")
            }
            Err(e) => tracing::debug!(key = %kv.key, error = %e, "key rotation"),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn rotation_adds_then_promotes_and_keeps_the_old_key_until_the_next_add() {
        let period = Duration::from_secs(10);
        let g = ms(grace(period));
        assert_eq!(g, 5000);
        let r = KeyRecord::first(1000).unwrap();
        assert_eq!((r.send, r.keys.len()), (1, 1));
        assert_eq!(r.due(1000 + 9_999, period), None);
        assert_eq!(r.due(1000 + 10_000, period), Some(Step::Add));
        let r = r.apply(Step::Add, 11_000).unwrap();
        assert_eq!(r.send, 1, "a new key does not send yet");
        assert_eq!(r.keys.iter().map(|k| k.id).collect::<Vec<_>>(), [1, 2]);
        assert_ne!(r.keys[0].key, r.keys[1].key);
        assert_eq!(r.due(11_000 + g - 1, period), None);
        assert_eq!(r.due(11_000 + g, period), Some(Step::Promote));
        let r = r.apply(Step::Promote, 11_000 + g).unwrap();
        assert_eq!(r.send, 2);
        assert_eq!(r.keys.len(), 2, "the old key is still accepted");
        let set = r.key_set();
        assert_eq!(set.send, Some(2));
        assert_eq!(set.keys.len(), 2);
        // The period counts from the send key's creation.
        assert_eq!(r.due(11_000 + 9_999, period), None);
        assert_eq!(r.due(21_000, period), Some(Step::Add));
        let r = r.apply(Step::Add, 21_000).unwrap();
        assert_eq!(r.keys.iter().map(|k| k.id).collect::<Vec<_>>(), [2, 3]);
        // Survives JSON.
        let back: KeyRecord = serde_json::from_slice(&serde_json::to_vec(&r).unwrap()).unwrap();
        assert_eq!(back, r);
        // Debug does not show key bytes.
        assert!(!format!("{r:?}").contains(&format!("{:?}", r.keys[0].key)));
    }

    #[test]
    fn grace_and_tick_bounds() {
        assert_eq!(grace(Duration::from_secs(2)), Duration::from_secs(1));
        assert_eq!(grace(DEFAULT_ROTATION), Duration::from_secs(5));
        assert_eq!(tick(Duration::from_secs(2)), Duration::from_millis(250));
        assert_eq!(tick(DEFAULT_ROTATION), Duration::from_secs(5));
        assert_eq!(tick(Duration::from_millis(1)), Duration::from_millis(100));
    }
}
