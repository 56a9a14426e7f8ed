//! The persistent store: a key-value seam ([`KvStore`]) and the CNM records on top.
//!
//! Contract:
//! * [`KvStore`] is what a store must offer, local or distributed: keys under a
//!   prefix ([`KvStore::range`]), an atomic transaction of puts and deletes guarded by
//!   compare-and-swap conditions on each key's revision ([`KvStore::txn`]: all or
//!   nothing; a failed condition changes nothing and says which key), and a watch of a
//!   prefix ([`KvStore::watch`]) that delivers every committed change after the commit,
//!   in commit order. Revisions grow with every committed transaction (etcd's
//!   `mod_revision` semantics), so an etcd-backed global store fits the same trait.
//! * Implementations: [`redb::Db`] (the local store: an embedded ACID database under
//!   `--data-root`, durable on return) and [`mem::MemStore`] (in memory, with failure
//!   injection: any transaction can be made to fail, for the rollback tests) and
//!   [`etcd::EtcdStore`] (the cluster store of `--cluster-store etcd://...`: keys
//!   under a prefix, etcd's revisions and watches, leases for records that must
//!   vanish with their host).
//! * Records: networks, sandboxes and endpoints are serde JSON values under
//!   `networks/<id>`, `sandboxes/<id>`, `endpoints/<id>` ([`key`]). A network record
//!   is stored without its endpoints; each endpoint is its own record, so a connect
//!   writes one small record whatever the size of the network. IPAM state is not
//!   stored: it is rebuilt from the records on start.
//! * [`load`] reads every record; one that does not parse, or whose key does not
//!   match its id, is logged and skipped (never a panic); an endpoint whose network
//!   is unknown is returned as an orphan. [`commit`] encodes a list of [`Change`]s
//!   first (nothing is written if one cannot be encoded) and applies them in one
//!   [`KvStore::txn`].

pub mod etcd;
pub mod mem;
pub mod redb;

pub use self::redb::{Db, DB_FILE, SCHEMA_VERSION};

use crate::model::{Endpoint, Network, Sandbox, Store};
use std::collections::BTreeMap;
use std::sync::Mutex;

/// A store revision: grows with every committed transaction.
pub type Revision = u64;

pub use crate::error::StoreError;

/// One key's value and the revision that last changed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: String,
    /// The value.
    pub value: Vec<u8>,
    /// The revision of the transaction that last wrote it.
    pub revision: Revision,
}

/// A condition of a transaction: `key`'s last revision is `revision` (`None`: the
/// key must not exist).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compare {
    /// The key.
    pub key: String,
    /// The expected revision; `None`: absent.
    pub revision: Option<Revision>,
}

/// One write of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvOp {
    /// Insert or replace.
    Put(String, Vec<u8>),
    /// Remove (absent keys are no error).
    Delete(String),
}

impl KvOp {
    /// The key written.
    pub fn key(&self) -> &str {
        match self {
            KvOp::Put(k, _) | KvOp::Delete(k) => k,
        }
    }
}

/// A committed change, as a watch delivers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    /// The revision of the transaction.
    pub revision: Revision,
    /// The write (a `Put` carries the new value).
    pub op: KvOp,
}

/// A key-value store with revisions, compare-and-swap and watch (see the module doc).
pub trait KvStore: Send + Sync + std::fmt::Debug {
    /// Where the store lives, for messages: a file path, `memory`, a URL.
    fn describe(&self) -> String;
    /// Every key under `prefix`, in key order.
    fn range(&self, prefix: &str) -> Result<Vec<KeyValue>, StoreError>;
    /// Apply `ops` atomically if every condition of `compares` holds; durable when it
    /// returns. Returns the new revision. A failed condition is
    /// [`StoreError::Conflict`] and writes nothing; so does any other error.
    fn txn(&self, compares: &[Compare], ops: &[KvOp]) -> Result<Revision, StoreError>;
    /// Changes under `prefix` committed from now on, in commit order. The channel
    /// closes when the store is dropped.
    fn watch(&self, prefix: &str) -> crossbeam_channel::Receiver<WatchEvent>;
}

/// The watchers of a store: each gets the committed writes under its prefix.
#[derive(Debug, Default)]
pub struct Watchers {
    subs: Mutex<Vec<(String, crossbeam_channel::Sender<WatchEvent>)>>,
}

impl Watchers {
    /// A new subscription to `prefix`.
    pub fn subscribe(&self, prefix: &str) -> crossbeam_channel::Receiver<WatchEvent> {
        let (tx, rx) = crossbeam_channel::unbounded();
        lock(&self.subs).push((prefix.to_string(), tx));
        rx
    }

    /// Deliver the writes of the transaction committed at `revision`; subscribers
    /// that went away are dropped.
    pub fn notify(&self, revision: Revision, ops: &[KvOp]) {
        let mut subs = lock(&self.subs);
        subs.retain(|(prefix, tx)| {
            ops.iter()
                .filter(|op| op.key().starts_with(prefix.as_str()))
                .all(|op| {
                    tx.send(WatchEvent {
                        revision,
                        op: op.clone(),
                    })
                    .is_ok()
                })
        });
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl StoreError {
    /// The store's file system is full (`ENOSPC`): the mutation was not recorded;
    /// it can succeed once space is free (HTTP 507).
    pub fn is_no_space(&self) -> bool {
        match self {
            StoreError::Db { source, .. } => {
                matches!(&**source, ::redb::Error::Io(e) if e.kind() == std::io::ErrorKind::StorageFull)
            }
            _ => false,
        }
    }
}

/// Key prefix of network records.
pub const NETWORKS: &str = "networks/";
/// Key prefix of sandbox records.
pub const SANDBOXES: &str = "sandboxes/";
/// Key prefix of endpoint records.
pub const ENDPOINTS: &str = "endpoints/";

/// The key of a record: `prefix` + `id`.
pub fn key(prefix: &str, id: &str) -> String {
    format!("{prefix}{id}")
}

/// One change of a mutation (see [`commit`]).
#[derive(Debug, Clone)]
pub enum Change {
    /// Insert or replace a network record (its endpoints are not written).
    PutNetwork(Box<Network>),
    /// Remove a network record.
    DeleteNetwork(String),
    /// Insert or replace a sandbox record.
    PutSandbox(Sandbox),
    /// Remove a sandbox record.
    DeleteSandbox(String),
    /// Insert or replace an endpoint record.
    PutEndpoint(Endpoint),
    /// Remove an endpoint record.
    DeleteEndpoint(String),
}

/// What [`load`] found.
#[derive(Debug, Default)]
pub struct Loaded {
    /// The model (networks with their endpoints, sandboxes).
    pub store: Store,
    /// Endpoints whose network is not in the store.
    pub orphan_endpoints: Vec<Endpoint>,
    /// Records skipped because they were unreadable or mislabelled.
    pub skipped: usize,
}

/// Encode `changes` as writes (nothing is returned if one cannot be encoded).
pub fn ops_for(changes: &[Change]) -> Result<Vec<KvOp>, StoreError> {
    changes
        .iter()
        .map(|c| {
            Ok(match c {
                Change::PutNetwork(n) => {
                    let bare = Network {
                        endpoints: BTreeMap::new(),
                        ..(**n).clone()
                    };
                    KvOp::Put(key(NETWORKS, &n.id), encode("network", &n.id, &bare)?)
                }
                Change::DeleteNetwork(id) => KvOp::Delete(key(NETWORKS, id)),
                Change::PutSandbox(s) => {
                    KvOp::Put(key(SANDBOXES, &s.id), encode("sandbox", &s.id, s)?)
                }
                Change::DeleteSandbox(id) => KvOp::Delete(key(SANDBOXES, id)),
                Change::PutEndpoint(e) => {
                    KvOp::Put(key(ENDPOINTS, &e.id), encode("endpoint", &e.id, e)?)
                }
                Change::DeleteEndpoint(id) => KvOp::Delete(key(ENDPOINTS, id)),
            })
        })
        .collect()
}

/// Apply `changes` in one transaction (no conditions). An empty list writes nothing.
pub fn commit(kv: &dyn KvStore, changes: &[Change]) -> Result<(), StoreError> {
    if changes.is_empty() {
        return Ok(());
    }
    let ops = ops_for(changes)?;
    kv.txn(&[], &ops).map(|_| ())
}

/// Read every record (see the module doc).
pub fn load(kv: &dyn KvStore) -> Result<Loaded, StoreError> {
    let mut loaded = Loaded::default();
    let networks: Vec<Network> = decode_all(
        kv.range(NETWORKS)?,
        NETWORKS,
        "network",
        |n: &Network| &n.id,
        &mut loaded.skipped,
    );
    let sandboxes: Vec<Sandbox> = decode_all(
        kv.range(SANDBOXES)?,
        SANDBOXES,
        "sandbox",
        |s: &Sandbox| &s.id,
        &mut loaded.skipped,
    );
    let endpoints: Vec<Endpoint> = decode_all(
        kv.range(ENDPOINTS)?,
        ENDPOINTS,
        "endpoint",
        |e: &Endpoint| &e.id,
        &mut loaded.skipped,
    );
    for mut n in networks {
        n.endpoints = BTreeMap::new();
        loaded.store.networks.insert(n.id.clone(), n);
    }
    for s in sandboxes {
        loaded.store.sandboxes.insert(s.id.clone(), s);
    }
    for e in endpoints {
        match loaded.store.networks.get_mut(&e.network_id) {
            Some(n) => {
                n.endpoints.insert(e.id.clone(), e);
            }
            None => loaded.orphan_endpoints.push(e),
        }
    }
    Ok(loaded)
}

fn encode<T: serde::Serialize>(kind: &str, id: &str, v: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(v).map_err(|source| StoreError::Encode {
        what: format!("{kind} {id}"),
        source,
    })
}

fn decode_all<T: serde::de::DeserializeOwned>(
    rows: Vec<KeyValue>,
    prefix: &str,
    kind: &str,
    id_of: impl Fn(&T) -> &String,
    skipped: &mut usize,
) -> Vec<T> {
    let mut out = Vec::new();
    for row in rows {
        let key = row.key.strip_prefix(prefix).unwrap_or(&row.key);
        match serde_json::from_slice::<T>(&row.value) {
            Ok(rec) if id_of(&rec) == key => out.push(rec),
            Ok(rec) => {
                *skipped += 1;
                tracing::warn!(
                    key,
                    id = %id_of(&rec),
                    "store: {kind} record's id does not match its key; skipped"
                );
            }
            Err(e) => {
                *skipped += 1;
                tracing::warn!(key, error = %e, "store: unreadable {kind} record; skipped");
            }
        }
    }
    out
}
