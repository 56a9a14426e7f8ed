//! The local store: [`KvStore`] on an embedded ACID database (redb).
//!
//! Contract:
//! * The database lives at `<data-root>/tapnet.db` ([`DB_FILE`]). Tables `networks`,
//!   `sandboxes`, `endpoints` hold the records of the keys `networks/<id>` etc. (keyed
//!   by the id, the value a serde JSON record), `revisions` the revision that last
//!   wrote each key, and `meta` the `schema_version` and the store's current
//!   `revision`. A database written by a newer schema is refused with a clear error;
//!   one written before revisions existed reads as revision 0 for every key.
//! * [`KvStore::txn`] is **one** redb write transaction with immediate durability:
//!   the conditions are checked and the writes applied inside it, so either every
//!   write is on disk when it returns `Ok`, or none is. Watchers are told after the
//!   commit.
//! * Only one process can open the database at a time (redb locks the file); the
//!   lock dies with the process, so a `kill -9`'d daemon does not block its restart.
//! * An I/O error (a full disk: `ENOSPC`) fails that call with the OS error in the
//!   message and writes nothing. redb then refuses every later call
//!   (`PreviousIo`), so the next call closes the database and opens it again (redb
//!   repairs it from its last commit); until that succeeds (space is free again),
//!   each call fails with the reason. A full disk never needs a daemon restart.

use super::{
    Change, Compare, KeyValue, KvOp, KvStore, Loaded, Revision, StoreError, Watchers,
    ENDPOINTS as ENDPOINTS_PREFIX, NETWORKS as NETWORKS_PREFIX, SANDBOXES as SANDBOXES_PREFIX,
};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{RwLock, RwLockReadGuard};

/// File name of the database under the data root.
pub const DB_FILE: &str = "tapnet.db";
/// The schema version this code writes and reads.
pub const SCHEMA_VERSION: u64 = 1;

const NETWORKS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("networks");
const SANDBOXES: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("sandboxes");
const ENDPOINTS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("endpoints");
/// A record table: id → JSON.
type RecordTable = TableDefinition<'static, &'static str, &'static [u8]>;
/// Full key → the revision that last wrote it.
const REVISIONS: TableDefinition<'_, &str, u64> = TableDefinition::new("revisions");

const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");

/// The record table and id of a key.
fn table_of(key: &str) -> Option<(RecordTable, &str)> {
    [
        (NETWORKS_PREFIX, NETWORKS),
        (SANDBOXES_PREFIX, SANDBOXES),
        (ENDPOINTS_PREFIX, ENDPOINTS),
    ]
    .into_iter()
    .find_map(|(prefix, table)| key.strip_prefix(prefix).map(|id| (table, id)))
}

/// How to open the database (again).
type Opener = Box<dyn Fn() -> Result<Database, redb::DatabaseError> + Send + Sync>;

/// The redb database (see the module doc).
pub struct Db {
    /// `None` only between closing and re-opening after an I/O error.
    db: RwLock<Option<Database>>,
    /// Opens the database again after an I/O error; `None` in memory.
    reopen_with: Option<Opener>,
    path: String,
    /// An I/O error happened: redb refuses every call until re-opened.
    failed: AtomicBool,
    watchers: Watchers,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").field("path", &self.path).finish()
    }
}

impl Db {
    /// Open (or create) the database under `data_root`.
    pub fn open(data_root: &Path) -> Result<Db, StoreError> {
        let path: PathBuf = data_root.join(DB_FILE);
        let name = path.display().to_string();
        let opener: Opener = Box::new(move || Database::create(&path));
        Db::with_opener(name, opener)
    }

    /// A database opened (and, after an I/O error, re-opened) by `open`.
    fn with_opener(name: String, open: Opener) -> Result<Db, StoreError> {
        let db = open().map_err(|e| db_err(&name, e))?;
        Db::init(db, name, Some(open))
    }

    /// A database in memory (tests).
    pub fn in_memory() -> Result<Db, StoreError> {
        let db = Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(|e| db_err("memory", e))?;
        Db::init(db, "memory".to_string(), None)
    }

    fn init(db: Database, path: String, reopen_with: Option<Opener>) -> Result<Db, StoreError> {
        let this = Db {
            db: RwLock::new(None),
            reopen_with,
            path,
            failed: AtomicBool::new(false),
            watchers: Watchers::default(),
        };
        let tx = db.begin_write().map_err(|e| this.err(e))?;
        {
            for t in [NETWORKS, SANDBOXES, ENDPOINTS] {
                tx.open_table(t).map_err(|e| this.err(e))?;
            }
            tx.open_table(REVISIONS).map_err(|e| this.err(e))?;
            let mut meta = tx.open_table(META).map_err(|e| this.err(e))?;
            let found = meta
                .get("schema_version")
                .map_err(|e| this.err(e))?
                .map(|v| v.value());
            match found {
                Some(v) if v > SCHEMA_VERSION => {
                    return Err(StoreError::Schema {
                        path: this.path.clone(),
                        found: v,
                        supported: SCHEMA_VERSION,
                    })
                }
                Some(_) => {}
                None => {
                    meta.insert("schema_version", SCHEMA_VERSION)
                        .map_err(|e| this.err(e))?;
                }
            }
        }
        tx.commit().map_err(|e| this.err(e))?;
        *this.db.write().unwrap_or_else(|p| p.into_inner()) = Some(db);
        Ok(this)
    }

    fn err(&self, e: impl Into<redb::Error>) -> StoreError {
        let e = e.into();
        if matches!(e, redb::Error::Io(_) | redb::Error::PreviousIo) {
            self.failed.store(true, Ordering::Release);
        }
        db_err(&self.path, e)
    }

    /// The open database; after an I/O error, closed and opened again first (see
    /// the module doc).
    fn database(&self) -> Result<RwLockReadGuard<'_, Option<Database>>, StoreError> {
        if self.failed.load(Ordering::Acquire) {
            self.reopen()?;
        }
        let guard = self.db.read().unwrap_or_else(|p| p.into_inner());
        match guard.as_ref() {
            Some(_) => Ok(guard),
            None => Err(StoreError::Unavailable {
                store: self.path.clone(),
                message: "the database is being re-opened after an I/O error".into(),
            }),
        }
    }

    fn reopen(&self) -> Result<(), StoreError> {
        let mut db = self.db.write().unwrap_or_else(|p| p.into_inner());
        if !self.failed.load(Ordering::Acquire) {
            return Ok(()); // Another call re-opened it meanwhile.
        }
        let Some(open) = &self.reopen_with else {
            self.failed.store(false, Ordering::Release);
            return Ok(());
        };
        // Close first: redb locks the file.
        drop(db.take());
        let opened = open().map_err(|e| self.err(e))?;
        *db = Some(opened);
        self.failed.store(false, Ordering::Release);
        tracing::warn!(database = %self.path, "database re-opened after an I/O error");
        Ok(())
    }

    /// The database file.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Read everything (see [`super::load`]).
    pub fn load(&self) -> Result<Loaded, StoreError> {
        super::load(self)
    }

    /// Apply `changes` in one transaction (see [`super::commit`]).
    pub fn commit(&self, changes: &[Change]) -> Result<(), StoreError> {
        super::commit(self, changes)
    }
}

impl KvStore for Db {
    fn describe(&self) -> String {
        self.path.clone()
    }

    fn range(&self, prefix: &str) -> Result<Vec<KeyValue>, StoreError> {
        let db = self.database()?;
        let db = db
            .as_ref()
            .ok_or_else(|| self.err(redb::Error::DatabaseClosed))?;
        let tx = db.begin_read().map_err(|e| self.err(e))?;
        let revs = tx.open_table(REVISIONS).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for (p, table) in [
            (NETWORKS_PREFIX, NETWORKS),
            (SANDBOXES_PREFIX, SANDBOXES),
            (ENDPOINTS_PREFIX, ENDPOINTS),
        ] {
            // The table holds keys under `p`; the wanted prefix may be shorter or longer.
            let id_prefix = if let Some(rest) = prefix.strip_prefix(p) {
                rest
            } else if p.starts_with(prefix) {
                ""
            } else {
                continue;
            };
            let t = tx.open_table(table).map_err(|e| self.err(e))?;
            for row in t.iter().map_err(|e| self.err(e))? {
                let (k, v) = row.map_err(|e| self.err(e))?;
                if !k.value().starts_with(id_prefix) {
                    continue;
                }
                let key = format!("{p}{}", k.value());
                let revision = revs
                    .get(key.as_str())
                    .map_err(|e| self.err(e))?
                    .map_or(0, |r| r.value());
                out.push(KeyValue {
                    key,
                    value: v.value().to_vec(),
                    revision,
                });
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn txn(&self, compares: &[Compare], ops: &[KvOp]) -> Result<Revision, StoreError> {
        let mut targets = Vec::with_capacity(ops.len());
        for op in ops {
            let (table, id) = table_of(op.key()).ok_or_else(|| StoreError::Unavailable {
                store: self.path.clone(),
                message: format!("no table for key {}", op.key()),
            })?;
            targets.push((table, id, op));
        }
        let db = self.database()?;
        let db = db
            .as_ref()
            .ok_or_else(|| self.err(redb::Error::DatabaseClosed))?;
        let tx = db.begin_write().map_err(|e| self.err(e))?;
        let revision = {
            let mut revs = tx.open_table(REVISIONS).map_err(|e| self.err(e))?;
            for c in compares {
                let exists = match table_of(&c.key) {
                    Some((table, id)) => tx
                        .open_table(table)
                        .map_err(|e| self.err(e))?
                        .get(id)
                        .map_err(|e| self.err(e))?
                        .is_some(),
                    None => false,
                };
                let found = if exists {
                    Some(
                        revs.get(c.key.as_str())
                            .map_err(|e| self.err(e))?
                            .map_or(0, |r| r.value()),
                    )
                } else {
                    None
                };
                if found != c.revision {
                    // Dropping the transaction aborts it.
                    return Err(StoreError::Conflict {
                        store: self.path.clone(),
                        key: c.key.clone(),
                        expected: c.revision,
                        found,
                    });
                }
            }
            let mut meta = tx.open_table(META).map_err(|e| self.err(e))?;
            let revision = meta
                .get("revision")
                .map_err(|e| self.err(e))?
                .map_or(0, |r| r.value())
                + 1;
            meta.insert("revision", revision).map_err(|e| self.err(e))?;
            for (table, id, op) in &targets {
                let mut t = tx.open_table(*table).map_err(|e| self.err(e))?;
                match op {
                    KvOp::Put(key, value) => {
                        t.insert(*id, value.as_slice()).map_err(|e| self.err(e))?;
                        revs.insert(key.as_str(), revision)
                            .map_err(|e| self.err(e))?;
                    }
                    KvOp::Delete(key) => {
                        t.remove(*id).map_err(|e| self.err(e))?;
                        revs.remove(key.as_str()).map_err(|e| self.err(e))?;
                    }
                }
            }
            revision
        };
        // Dropping an uncommitted transaction aborts it: an error above writes nothing.
        tx.commit().map_err(|e| self.err(e))?;
        self.watchers.notify(revision, ops);
        Ok(revision)
    }

    fn watch(&self, prefix: &str) -> crossbeam_channel::Receiver<WatchEvent> {
        self.watchers.subscribe(prefix)
    }
}

use super::WatchEvent;

fn db_err(path: &str, e: impl Into<redb::Error>) -> StoreError {
    StoreError::Db {
        path: path.to_string(),
        source: Box::new(e.into()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::model::{self, Endpoint, Network, Sandbox};
    use std::collections::BTreeMap;
    use std::net::Ipv4Addr;

    #[test]
    fn compare_and_swap_and_watch() {
        let db = Db::in_memory().unwrap();
        let watch = db.watch(SANDBOXES_PREFIX);
        let s = sandbox("cas");
        let k = super::super::key(SANDBOXES_PREFIX, &s.id);
        let v = serde_json::to_vec(&s).unwrap();
        // Create only if absent.
        let absent = Compare {
            key: k.clone(),
            revision: None,
        };
        let r1 = db
            .txn(
                std::slice::from_ref(&absent),
                &[KvOp::Put(k.clone(), v.clone())],
            )
            .unwrap();
        // A second create-if-absent conflicts and writes nothing.
        let e = db.txn(&[absent], &[KvOp::Delete(k.clone())]).unwrap_err();
        assert!(
            matches!(e, StoreError::Conflict { found: Some(r), .. } if r == r1),
            "{e}"
        );
        let rows = db.range(SANDBOXES_PREFIX).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].revision, r1);
        // Swap at the right revision.
        let at = Compare {
            key: k.clone(),
            revision: Some(r1),
        };
        let r2 = db
            .txn(std::slice::from_ref(&at), &[KvOp::Delete(k.clone())])
            .unwrap();
        assert!(r2 > r1);
        // The stale revision no longer matches.
        assert!(db.txn(&[at], &[KvOp::Put(k.clone(), v.clone())]).is_err());
        assert!(db.range(SANDBOXES_PREFIX).unwrap().is_empty());
        // The watch saw both committed writes, in order, and nothing of the failures.
        let seen: Vec<WatchEvent> = watch.try_iter().collect();
        assert_eq!(
            seen,
            vec![
                WatchEvent {
                    revision: r1,
                    op: KvOp::Put(k.clone(), v)
                },
                WatchEvent {
                    revision: r2,
                    op: KvOp::Delete(k)
                },
            ]
        );
    }

    fn network(name: &str) -> Network {
        Network {
            id: model::new_id(),
            name: name.into(),
            driver: "bridge".into(),
            created: model::now_rfc3339(),
            scope: "local".into(),
            internal: false,
            attachable: false,
            enable_ipv6: true,
            ipam_driver: "default".into(),
            ipam_options: BTreeMap::new(),
            subnet: Some("10.1.0.0/24".parse().unwrap()),
            gateway: Some(Ipv4Addr::new(10, 1, 0, 1)),
            ip_range: Some("10.1.0.128/25".parse().unwrap()),
            aux_addresses: BTreeMap::from([("router".to_string(), Ipv4Addr::new(10, 1, 0, 5))]),
            ipv4_pool: Some("LocalDefault/10.1.0.0/24".into()),
            ipv6: Some(model::Ipv6Config {
                subnet: "fd00:1::/64".parse().unwrap(),
                gateway: "fd00:1::1".parse().unwrap(),
                ip_range: None,
                aux_addresses: BTreeMap::from([("r6".to_string(), "fd00:1::5".parse().unwrap())]),
                pool: "LocalDefault/fd00:1::/64".into(),
            }),
            options: BTreeMap::from([("a".to_string(), "b".to_string())]),
            labels: BTreeMap::new(),
            endpoints: BTreeMap::new(),
            ..Default::default()
        }
    }

    fn sandbox(name: &str) -> Sandbox {
        Sandbox {
            id: model::new_id(),
            name: name.into(),
            netns_path: PathBuf::from(format!("/run/tapnet/netns/{name}")),
            owned: true,
            created: model::now_rfc3339(),
            ..Sandbox::default()
        }
    }

    fn endpoint(n: &Network, s: &Sandbox, last: u8) -> Endpoint {
        let ip = Ipv4Addr::new(10, 1, 0, last);
        Endpoint {
            id: model::new_id(),
            network_id: n.id.clone(),
            sandbox_id: s.id.clone(),
            interface: "eth0".into(),
            mac: Some(model::mac_for(ip)),
            ipv4: Some(ip),
            prefix_len: 24,
            ipv6: Some(format!("fd00:1::{last}").parse().unwrap()),
            prefix_len_v6: 64,
            aliases: vec!["web".into()],
            ..Default::default()
        }
    }

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tapnet-store-{tag}-{}", model::new_id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn round_trip() {
        let db = Db::in_memory().unwrap();
        let n = network("n1");
        let s = sandbox("s1");
        let e = endpoint(&n, &s, 2);
        db.commit(&[
            Change::PutNetwork(Box::new(n.clone())),
            Change::PutSandbox(s.clone()),
            Change::PutEndpoint(e.clone()),
        ])
        .unwrap();
        let loaded = db.load().unwrap();
        let mut want = n.clone();
        want.endpoints.insert(e.id.clone(), e.clone());
        assert_eq!(loaded.store.networks.get(&n.id), Some(&want));
        assert_eq!(loaded.store.sandboxes.get(&s.id), Some(&s));
        assert_eq!(loaded.skipped, 0);
        assert!(loaded.orphan_endpoints.is_empty());
        db.commit(&[Change::DeleteEndpoint(e.id.clone())]).unwrap();
        let loaded = db.load().unwrap();
        assert!(loaded.store.networks[&n.id].endpoints.is_empty());
    }

    #[test]
    fn failed_mutation_leaves_db_unchanged() {
        let db = Db::in_memory().unwrap();
        let n = network("n1");
        db.commit(&[Change::PutNetwork(Box::new(n.clone()))])
            .unwrap();
        let before = db.load().unwrap().store;
        // A transaction that fails half-way (a record that cannot be encoded: a map
        // key that is not a string) writes nothing, not even the changes before it.
        let s = sandbox("s1");
        let mut bad = sandbox("bad");
        bad.netns_path = PathBuf::from(std::ffi::OsString::from_vec(vec![0xff, 0xfe]));
        let err = db
            .commit(&[
                Change::PutSandbox(s),
                Change::DeleteNetwork(n.id.clone()),
                Change::PutSandbox(bad),
            ])
            .unwrap_err();
        assert!(err.to_string().contains("encode sandbox"), "{err}");
        let after = db.load().unwrap().store;
        assert_eq!(after.networks, before.networks);
        assert_eq!(after.sandboxes, before.sandboxes);
    }

    use std::os::unix::ffi::OsStringExt;

    #[test]
    fn reopen_after_drop_and_skip_corrupt_records() {
        let dir = tempdir("reopen");
        let n = network("n1");
        let s = sandbox("s1");
        let e = endpoint(&n, &s, 3);
        let orphan = endpoint(&network("gone"), &s, 4);
        {
            let db = Db::open(&dir).unwrap();
            db.commit(&[
                Change::PutNetwork(Box::new(n.clone())),
                Change::PutSandbox(s.clone()),
                Change::PutEndpoint(e.clone()),
                Change::PutEndpoint(orphan.clone()),
            ])
            .unwrap();
            // A corrupt record and one under the wrong key, written behind the API.
            let guard = db.db.read().unwrap();
            let tx = guard.as_ref().unwrap().begin_write().unwrap();
            {
                let mut t = tx.open_table(SANDBOXES).unwrap();
                t.insert("deadbeef", b"{not json".as_slice()).unwrap();
                let other = serde_json::to_vec(&sandbox("s2")).unwrap();
                t.insert("cafe", other.as_slice()).unwrap();
            }
            tx.commit().unwrap();
        }
        let db = Db::open(&dir).unwrap();
        let loaded = db.load().unwrap();
        assert_eq!(loaded.store.sandboxes.len(), 1);
        assert_eq!(loaded.store.sandboxes.get(&s.id), Some(&s));
        assert_eq!(loaded.skipped, 2);
        assert_eq!(loaded.store.networks[&n.id].endpoints.get(&e.id), Some(&e));
        assert_eq!(loaded.orphan_endpoints, vec![orphan]);
        drop(db);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A backend whose writes fail with `ENOSPC` while `full` is set (a full disk).
    #[derive(Debug)]
    struct FillableBackend {
        mem: std::sync::Arc<redb::backends::InMemoryBackend>,
        full: std::sync::Arc<AtomicBool>,
    }

    impl redb::StorageBackend for FillableBackend {
        fn len(&self) -> std::io::Result<u64> {
            self.mem.len()
        }
        fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
            self.mem.read(offset, out)
        }
        fn set_len(&self, len: u64) -> std::io::Result<()> {
            self.mem.set_len(len)
        }
        fn sync_data(&self) -> std::io::Result<()> {
            self.mem.sync_data()
        }
        fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
            if self.full.load(Ordering::Relaxed) {
                return Err(std::io::Error::from_raw_os_error(libc::ENOSPC));
            }
            self.mem.write(offset, data)
        }
    }

    #[test]
    fn full_disk_fails_cleanly_and_the_database_comes_back() {
        let mem = std::sync::Arc::new(redb::backends::InMemoryBackend::new());
        let full = std::sync::Arc::new(AtomicBool::new(false));
        let (m, f) = (std::sync::Arc::clone(&mem), std::sync::Arc::clone(&full));
        let db = Db::with_opener(
            "fillable".into(),
            Box::new(move || {
                Database::builder().create_with_backend(FillableBackend {
                    mem: std::sync::Arc::clone(&m),
                    full: std::sync::Arc::clone(&f),
                })
            }),
        )
        .unwrap();
        let (a, b, c, d) = (sandbox("a"), sandbox("b"), sandbox("c"), sandbox("d"));
        db.commit(&[Change::PutSandbox(a.clone())]).unwrap();
        full.store(true, Ordering::Relaxed);
        // An error, not a panic; the disk named as the reason (HTTP 507).
        let err = db.commit(&[Change::PutSandbox(b)]).unwrap_err();
        assert!(err.is_no_space(), "{err}");
        assert!(err.to_string().contains("No space left on device"), "{err}");
        // Still full: the next call re-opens and fails for the same reason.
        let err = db.commit(&[Change::PutSandbox(c)]).unwrap_err();
        assert!(err.is_no_space(), "{err}");
        // Space again: the next call works (redb refused everything until re-opened).
        full.store(false, Ordering::Relaxed);
        db.commit(&[Change::PutSandbox(d.clone())]).unwrap();
        let names: Vec<String> = db
            .load()
            .unwrap()
            .store
            .sandboxes
            .values()
            .map(|s| s.name.clone())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        assert_eq!(names, ["a", "d"], "a failed commit left something behind");
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempdir("schema");
        {
            let db = Db::open(&dir).unwrap();
            let guard = db.db.read().unwrap();
            let tx = guard.as_ref().unwrap().begin_write().unwrap();
            tx.open_table(META)
                .unwrap()
                .insert("schema_version", SCHEMA_VERSION + 1)
                .unwrap();
            tx.commit().unwrap();
        }
        let err = Db::open(&dir).unwrap_err();
        assert!(err.to_string().contains("schema version 2"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
