//! The persistent store: the CNM model in an embedded ACID database (redb).
//!
//! Contract:
//! * The database lives at `<data-root>/tapnet.db` ([`DB_FILE`]). It has the tables
//!   `networks`, `sandboxes`, `endpoints` (each keyed by the object's 64-hex id, the
//!   value a serde JSON record of [`Network`] / [`Sandbox`] / [`Endpoint`]) and `meta`
//!   (`schema_version`). A network record is stored without its endpoints; endpoints
//!   are their own records (so a connect writes one small record, whatever the size
//!   of the network) and are attached to their network by [`Db::load`].
//! * IPAM state is *not* stored: it is rebuilt from the networks (pools, gateways)
//!   and endpoints (addresses) on start.
//! * [`Db::commit`] applies a list of [`Change`]s in **one** write transaction with
//!   immediate durability: either all of them are on disk when it returns `Ok`, or
//!   none is. The controller calls it once per API mutation, after the OS work
//!   succeeded, and undoes the OS work if it fails.
//! * [`Db::load`] reads everything in one read transaction. A record that does not
//!   parse, or whose key does not match its id, is logged and skipped (never a
//!   panic); an endpoint whose network is not in the store is returned as an orphan.
//!   A database written by a newer schema is refused with a clear error.
//! * Only one process can open the database at a time (redb locks the file); the
//!   lock dies with the process, so a `kill -9`'d daemon does not block its restart.

pub use crate::error::StoreError;
use crate::model::{Endpoint, Network, Sandbox, Store};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// File name of the database under the data root.
pub const DB_FILE: &str = "tapnet.db";
/// The schema version this code writes and reads.
pub const SCHEMA_VERSION: u64 = 1;

const NETWORKS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("networks");
const SANDBOXES: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("sandboxes");
const ENDPOINTS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("endpoints");
/// A record table: id → JSON.
type RecordTable = TableDefinition<'static, &'static str, &'static [u8]>;

const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");

/// One change of a mutation (see [`Db::commit`]).
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

/// What [`Db::load`] found.
#[derive(Debug, Default)]
pub struct Loaded {
    /// The model: networks (with their endpoints) and sandboxes.
    pub store: Store,
    /// Endpoints whose network is not in the store (to be deleted).
    pub orphan_endpoints: Vec<Endpoint>,
    /// Records that could not be read (logged, skipped).
    pub skipped: usize,
}

/// The database handle (see the module doc).
pub struct Db {
    db: Database,
    path: String,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").field("path", &self.path).finish()
    }
}

impl Db {
    /// Open (or create) the database at `<data_root>/tapnet.db`.
    pub fn open(data_root: &Path) -> Result<Db, StoreError> {
        let path: PathBuf = data_root.join(DB_FILE);
        let name = path.display().to_string();
        let db = Database::create(&path).map_err(|e| db_err(&name, e))?;
        Db::init(db, name)
    }

    /// A database in memory (tests; a controller without a data root).
    pub fn in_memory() -> Result<Db, StoreError> {
        let db = Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(|e| db_err("memory", e))?;
        Db::init(db, "memory".to_string())
    }

    /// Create the tables and check/set the schema version.
    fn init(db: Database, path: String) -> Result<Db, StoreError> {
        let this = Db { db, path };
        let tx = this.db.begin_write().map_err(|e| this.err(e))?;
        {
            for t in [NETWORKS, SANDBOXES, ENDPOINTS] {
                tx.open_table(t).map_err(|e| this.err(e))?;
            }
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
        Ok(this)
    }

    fn err(&self, e: impl Into<redb::Error>) -> StoreError {
        db_err(&self.path, e)
    }

    /// The database file's path (or `memory`).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Read the whole model in one read transaction (see the module doc).
    pub fn load(&self) -> Result<Loaded, StoreError> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let mut loaded = Loaded::default();
        let networks: Vec<Network> = read_table(
            &tx.open_table(NETWORKS).map_err(|e| self.err(e))?,
            "network",
            |n: &Network| n.id.as_str(),
            &mut loaded.skipped,
        )
        .map_err(|e| self.err(e))?;
        let sandboxes: Vec<Sandbox> = read_table(
            &tx.open_table(SANDBOXES).map_err(|e| self.err(e))?,
            "sandbox",
            |s: &Sandbox| s.id.as_str(),
            &mut loaded.skipped,
        )
        .map_err(|e| self.err(e))?;
        let endpoints: Vec<Endpoint> = read_table(
            &tx.open_table(ENDPOINTS).map_err(|e| self.err(e))?,
            "endpoint",
            |e: &Endpoint| e.id.as_str(),
            &mut loaded.skipped,
        )
        .map_err(|e| self.err(e))?;
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

    /// Apply `changes` in one write transaction (all or nothing, durable on `Ok`).
    pub fn commit(&self, changes: &[Change]) -> Result<(), StoreError> {
        if changes.is_empty() {
            return Ok(());
        }
        // Encode first: nothing is written if a record cannot be encoded.
        let mut ops: Vec<(RecordTable, &str, Option<Vec<u8>>)> = Vec::with_capacity(changes.len());
        for c in changes {
            ops.push(match c {
                Change::PutNetwork(n) => {
                    let bare = Network {
                        endpoints: BTreeMap::new(),
                        ..(**n).clone()
                    };
                    (
                        NETWORKS,
                        n.id.as_str(),
                        Some(encode("network", &n.id, &bare)?),
                    )
                }
                Change::DeleteNetwork(id) => (NETWORKS, id.as_str(), None),
                Change::PutSandbox(s) => {
                    (SANDBOXES, s.id.as_str(), Some(encode("sandbox", &s.id, s)?))
                }
                Change::DeleteSandbox(id) => (SANDBOXES, id.as_str(), None),
                Change::PutEndpoint(e) => (
                    ENDPOINTS,
                    e.id.as_str(),
                    Some(encode("endpoint", &e.id, e)?),
                ),
                Change::DeleteEndpoint(id) => (ENDPOINTS, id.as_str(), None),
            });
        }
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        for (table, key, value) in ops {
            let mut t = tx.open_table(table).map_err(|e| self.err(e))?;
            match value {
                Some(v) => {
                    t.insert(key, v.as_slice()).map_err(|e| self.err(e))?;
                }
                None => {
                    t.remove(key).map_err(|e| self.err(e))?;
                }
            }
        }
        // Dropping an uncommitted transaction aborts it: an error above writes nothing.
        tx.commit().map_err(|e| self.err(e))
    }
}

fn db_err(path: &str, e: impl Into<redb::Error>) -> StoreError {
    StoreError::Db {
        path: path.to_string(),
        source: Box::new(e.into()),
    }
}

fn encode<T: serde::Serialize>(kind: &str, id: &str, v: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(v).map_err(|source| StoreError::Encode {
        what: format!("{kind} {id}"),
        source,
    })
}

/// Decode every record of a table; log and skip the ones that do not parse or whose
/// key is not their id.
fn read_table<T: serde::de::DeserializeOwned>(
    table: &redb::ReadOnlyTable<&'static str, &'static [u8]>,
    kind: &str,
    id_of: impl Fn(&T) -> &str,
    skipped: &mut usize,
) -> Result<Vec<T>, redb::StorageError> {
    let mut out = Vec::new();
    for row in table.iter()? {
        let (k, v) = row?;
        let key = k.value();
        match serde_json::from_slice::<T>(v.value()) {
            Ok(rec) if id_of(&rec) == key => out.push(rec),
            Ok(rec) => {
                *skipped += 1;
                tracing::warn!(
                    key,
                    id = id_of(&rec),
                    "store: {kind} record's id does not match its key; skipped"
                );
            }
            Err(e) => {
                *skipped += 1;
                tracing::warn!(key, error = %e, "store: unreadable {kind} record; skipped");
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::model;
    use std::net::Ipv4Addr;

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
            let tx = db.db.begin_write().unwrap();
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

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempdir("schema");
        {
            let db = Db::open(&dir).unwrap();
            let tx = db.db.begin_write().unwrap();
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
