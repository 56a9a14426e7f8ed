//! The cluster store: [`KvStore`] on etcd v3 (the `etcd-client` gRPC crate).
//!
//! Contract:
//! * Every key lives under a prefix (`/tapnet/` by default, [`DEFAULT_PREFIX`]): the
//!   trait's keys are relative to it (`nodes/10.0.0.1` is etcd's
//!   `/tapnet/nodes/10.0.0.1`), and what [`KvStore::range`] and [`KvStore::watch`]
//!   return is relative again.
//! * Revisions are etcd's: a key's revision is its `mod_revision`, and
//!   [`KvStore::txn`] returns the revision of the response header. A condition
//!   `Some(r)` is `mod_revision == r`; `None` (absent) is `version == 0`. A failed
//!   condition is [`StoreError::Conflict`] naming the first key whose condition does
//!   not hold (the transaction reads the compared keys in its failure branch, so the
//!   revision found is that of the same atomic view) and writes nothing.
//! * Anything else that goes wrong (no answer within the timeout, connection
//!   refused, an error status) is [`StoreError::Unavailable`] naming the endpoints
//!   (`etcd://HOST:PORT,...`).
//! * The trait is synchronous; the store owns a private tokio runtime (one worker
//!   thread) and every call runs its request there and waits on a channel, so a call
//!   never needs, nor blocks, the caller's runtime beyond the wait itself (the
//!   controller calls stores from `spawn_blocking`).
//! * [`KvStore::watch`] reads the current revision, then streams etcd's watch events
//!   from the next one on a background task: a transaction's writes arrive in commit
//!   order with their revision. After an error the task reconnects and resumes after
//!   the last revision delivered (events compacted meanwhile are lost, and logged).
//!   The channel closes when the store is dropped. [`EtcdStore::watch_events`] also
//!   says when the watch is back after such an error or a compaction
//!   ([`StoreEvent::Resumed`]: its reader should re-read what it follows).
//! * Leases ([`EtcdStore::grant_lease`]): a lease is kept alive by a background task
//!   until [`EtcdStore::stop_keep_alive`] or [`EtcdStore::revoke_lease`]; keys put
//!   with [`EtcdStore::txn_leased`] disappear when it expires (its TTL after the last
//!   keep-alive, e.g. when the host died). [`KvOp`] has no lease: leased puts are an
//!   `EtcdStore`-only operation for now.
//! * [`EtcdStore::register_node`] writes `nodes/<address>` under a lease it keeps
//!   alive, and writes it again under a new lease should that one expire anyway
//!   ([`EtcdStore::node_lease`] is the current one). The keep-alive takes a lease as
//!   gone when etcd answers with a TTL of 0 or, on reconnecting, says it is not
//!   found (expired while the store was out of reach, or revoked).
//! * [`parse_url`] reads `--cluster-store etcd://HOST:PORT[,HOST:PORT...]`.

use super::{Compare, KeyValue, KvOp, KvStore, Revision, StoreError, WatchEvent};
use etcd_client as etcd;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// The default key prefix.
pub const DEFAULT_PREFIX: &str = "/tapnet/";

/// Key prefix of the node records (`nodes/<advertise address>`).
pub const NODES: &str = "nodes/";

/// An etcd lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LeaseId(pub i64);

/// The etcd cluster store (see the module doc).
pub struct EtcdStore {
    endpoints: Vec<String>,
    prefix: String,
    timeout: Duration,
    client: etcd::Client,
    /// `None` only while dropping.
    rt: Option<tokio::runtime::Runtime>,
    /// Keep-alive tasks by lease.
    keepers: Mutex<HashMap<i64, tokio::task::AbortHandle>>,
    /// The lease of this node's record ([`EtcdStore::register_node`]; 0: none yet).
    node_lease: std::sync::Arc<std::sync::atomic::AtomicI64>,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        // Ends every watch and keep-alive task without waiting (safe in any context).
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// Parse `etcd://HOST:PORT[,HOST:PORT...]` into its `HOST:PORT` endpoints.
pub fn parse_url(url: &str) -> Result<Vec<String>, String> {
    let Some(rest) = url.strip_prefix("etcd://") else {
        let scheme = url.split_once("://").map_or("", |(s, _)| s);
        return Err(if scheme.is_empty() {
            format!("cluster store {url:?}: give etcd://HOST:PORT[,HOST:PORT...]")
        } else {
            format!(
                "cluster store {url:?}: unsupported scheme {scheme:?}; only etcd://HOST:PORT[,HOST:PORT...] is supported"
            )
        });
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let mut out = Vec::new();
    for ep in rest.split(',') {
        let bad = |why: &str| {
            format!("cluster store {url:?}: bad address {ep:?} ({why}); give HOST:PORT")
        };
        if ep.parse::<std::net::SocketAddr>().is_ok() {
            out.push(ep.to_string());
            continue;
        }
        let Some((host, port)) = ep.rsplit_once(':') else {
            return Err(bad("no port"));
        };
        if port.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(bad("port is not 1-65535"));
        }
        let valid_name = !host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
        if !valid_name {
            return Err(bad("host is not a name or an address"));
        }
        out.push(ep.to_string());
    }
    Ok(out)
}

impl EtcdStore {
    /// Connect to `endpoints` (`HOST:PORT`) with keys under `prefix` (ends with
    /// `/`); every request, and this first one that proves the cluster answers,
    /// fails as [`StoreError::Unavailable`] after `timeout`.
    pub fn connect(
        endpoints: &[String],
        prefix: &str,
        timeout: Duration,
    ) -> Result<EtcdStore, StoreError> {
        let describe = describe(endpoints);
        let unavailable = |message: String| StoreError::Unavailable {
            store: describe.clone(),
            message,
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("tapnet-etcd")
            .enable_all()
            .build()
            .map_err(|e| unavailable(format!("start the client runtime: {e}")))?;
        let urls: Vec<String> = endpoints.iter().map(|e| format!("http://{e}")).collect();
        let options = etcd::ConnectOptions::new()
            .with_connect_timeout(timeout)
            .with_timeout(timeout);
        let client = run(&rt, timeout, async move {
            etcd::Client::connect(urls, Some(options)).await
        })
        .map_err(unavailable)?;
        let store = EtcdStore {
            endpoints: endpoints.to_vec(),
            prefix: prefix.to_string(),
            timeout,
            client,
            rt: Some(rt),
            keepers: Mutex::new(HashMap::new()),
            node_lease: std::sync::Arc::default(),
        };
        // The client connects lazily: ask once, so that a dead cluster fails now.
        store.current_revision()?;
        Ok(store)
    }

    fn rt(&self) -> &tokio::runtime::Runtime {
        #[allow(clippy::expect_used)]
        self.rt.as_ref().expect("runtime present until drop")
    }

    fn unavailable(&self, message: impl Into<String>) -> StoreError {
        StoreError::Unavailable {
            store: self.describe(),
            message: message.into(),
        }
    }

    /// Run `f` on the store's runtime and wait for it (at most the timeout).
    fn call<T: Send + 'static>(
        &self,
        f: impl std::future::Future<Output = Result<T, etcd::Error>> + Send + 'static,
    ) -> Result<T, StoreError> {
        run(self.rt(), self.timeout, f).map_err(|m| self.unavailable(m))
    }

    fn full(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// The cluster's current revision.
    pub fn current_revision(&self) -> Result<Revision, StoreError> {
        let mut kv = self.client.kv_client();
        let key = self.full("");
        let resp = self.call(async move {
            kv.get(
                key,
                Some(etcd::GetOptions::new().with_prefix().with_count_only()),
            )
            .await
        })?;
        Ok(resp.header().map_or(0, |h| h.revision()) as Revision)
    }

    /// Grant a lease of `ttl` (whole seconds, at least 1) and keep it alive from a
    /// background task until [`EtcdStore::stop_keep_alive`] or
    /// [`EtcdStore::revoke_lease`] (or the store is dropped).
    pub fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        let secs = ttl.as_secs().max(1) as i64;
        let mut lease = self.client.lease_client();
        let id = self
            .call(async move { lease.grant(secs, None).await })?
            .id();
        let client = self.client.clone();
        let store = self.describe();
        let task = self.rt().spawn(async move {
            keep_alive(&client, id, secs, &store).await;
            tracing::error!(%store, lease = id, "lease expired; its keys are gone");
        });
        lock(&self.keepers).insert(id, task.abort_handle());
        Ok(LeaseId(id))
    }

    /// Stop refreshing `lease`: its keys disappear within its TTL.
    pub fn stop_keep_alive(&self, lease: LeaseId) {
        if let Some(task) = lock(&self.keepers).remove(&lease.0) {
            task.abort();
        }
    }

    /// Stop refreshing `lease` and revoke it: its keys disappear now.
    pub fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.stop_keep_alive(lease);
        let mut client = self.client.lease_client();
        self.call(async move { client.revoke(lease.0).await })
            .map(|_| ())
    }

    /// [`KvStore::txn`] whose puts are attached to `lease`: they disappear when the
    /// lease expires or is revoked.
    pub fn txn_leased(
        &self,
        compares: &[Compare],
        ops: &[KvOp],
        lease: LeaseId,
    ) -> Result<Revision, StoreError> {
        self.txn_with(compares, ops, Some(lease))
    }

    /// Record this node: `nodes/<advertise>` = `{"name": hostname, "address":
    /// advertise}` under a new lease of `ttl`, kept alive in the background.
    pub fn register_node(
        &self,
        advertise: &str,
        hostname: &str,
        ttl: Duration,
    ) -> Result<LeaseId, StoreError> {
        let secs = ttl.as_secs().max(1) as i64;
        let value = serde_json::to_vec(&serde_json::json!({
            "name": hostname,
            "address": advertise,
        }))
        .map_err(|source| StoreError::Encode {
            what: format!("node {advertise}"),
            source,
        })?;
        let key = self.full(&format!("{NODES}{advertise}"));
        let client = self.client.clone();
        let (k, v) = (key.clone(), value.clone());
        let first = self.call(async move { put_leased(&client, secs, k, v).await })?;
        let current = std::sync::Arc::clone(&self.node_lease);
        current.store(first, std::sync::atomic::Ordering::SeqCst);
        // Kept alive; should the lease expire anyway (the store was out of reach for
        // longer than the TTL), the record is written again under a new lease.
        let client = self.client.clone();
        let store = self.describe();
        let task = self.rt().spawn(async move {
            let mut id = first;
            loop {
                keep_alive(&client, id, secs, &store).await;
                tracing::warn!(%store, key, "node record's lease expired; registering again");
                loop {
                    match put_leased(&client, secs, key.clone(), value.clone()).await {
                        Ok(new) => {
                            id = new;
                            current.store(new, std::sync::atomic::Ordering::SeqCst);
                            tracing::info!(%store, key, "node registered again");
                            break;
                        }
                        Err(e) => {
                            tracing::debug!(%store, error = %e, "register node: store unreachable");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    }
                }
            }
        });
        lock(&self.keepers).insert(first, task.abort_handle());
        Ok(LeaseId(first))
    }

    /// The lease this node's record lives under now (it changes when the record is
    /// written again after an expiry); `None` before [`EtcdStore::register_node`].
    pub fn node_lease(&self) -> Option<LeaseId> {
        match self.node_lease.load(std::sync::atomic::Ordering::SeqCst) {
            0 => None,
            id => Some(LeaseId(id)),
        }
    }

    fn txn_with(
        &self,
        compares: &[Compare],
        ops: &[KvOp],
        lease: Option<LeaseId>,
    ) -> Result<Revision, StoreError> {
        let when: Vec<etcd::Compare> = compares
            .iter()
            .map(|c| match c.revision {
                Some(r) => {
                    etcd::Compare::mod_revision(self.full(&c.key), etcd::CompareOp::Equal, r as i64)
                }
                None => etcd::Compare::version(self.full(&c.key), etcd::CompareOp::Equal, 0),
            })
            .collect();
        let then: Vec<etcd::TxnOp> = ops
            .iter()
            .map(|op| match op {
                KvOp::Put(k, v) => {
                    let opts = lease.map(|l| etcd::PutOptions::new().with_lease(l.0));
                    etcd::TxnOp::put(self.full(k), v.clone(), opts)
                }
                KvOp::Delete(k) => etcd::TxnOp::delete(self.full(k), None),
            })
            .collect();
        let reads: Vec<etcd::TxnOp> = compares
            .iter()
            .map(|c| etcd::TxnOp::get(self.full(&c.key), None))
            .collect();
        let txn = etcd::Txn::new().when(when).and_then(then).or_else(reads);
        let mut kv = self.client.kv_client();
        let resp = self.call(async move { kv.txn(txn).await })?;
        let revision = resp.header().map_or(0, |h| h.revision()) as Revision;
        if resp.succeeded() {
            return Ok(revision);
        }
        let found: Vec<Option<Revision>> = resp
            .op_responses()
            .into_iter()
            .map(|r| match r {
                etcd::TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.mod_revision() as u64),
                _ => None,
            })
            .collect();
        let failed = compares
            .iter()
            .zip(found.iter().chain(std::iter::repeat(&None)))
            .find(|(c, f)| c.revision != **f)
            .or_else(|| compares.first().map(|c| (c, &None)));
        let (key, expected, found) = match failed {
            Some((c, f)) => (c.key.clone(), c.revision, *f),
            None => (String::new(), None, None),
        };
        Err(StoreError::Conflict {
            store: self.describe(),
            key,
            expected,
            found,
        })
    }
}

impl KvStore for EtcdStore {
    fn describe(&self) -> String {
        describe(&self.endpoints)
    }

    fn range(&self, prefix: &str) -> Result<Vec<KeyValue>, StoreError> {
        let mut kv = self.client.kv_client();
        let key = self.full(prefix);
        let resp = self.call(async move {
            kv.get(key, Some(etcd::GetOptions::new().with_prefix()))
                .await
        })?;
        let mut out: Vec<KeyValue> = resp
            .kvs()
            .iter()
            .filter_map(|kv| {
                let key = std::str::from_utf8(kv.key()).ok()?;
                Some(KeyValue {
                    key: key.strip_prefix(&self.prefix)?.to_string(),
                    value: kv.value().to_vec(),
                    revision: kv.mod_revision() as Revision,
                })
            })
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn txn(&self, compares: &[Compare], ops: &[KvOp]) -> Result<Revision, StoreError> {
        self.txn_with(compares, ops, None)
    }

    fn watch(&self, prefix: &str) -> crossbeam_channel::Receiver<WatchEvent> {
        let (tx, rx) = crossbeam_channel::unbounded();
        self.spawn_watch(prefix, move |ev| match ev {
            StoreEvent::Change(w) => tx.send(w).is_ok(),
            StoreEvent::Resumed => true,
        });
        rx
    }
}

/// What [`EtcdStore::watch_events`] delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreEvent {
    /// A committed write.
    Change(WatchEvent),
    /// The watch is back after the store was out of reach (or after events were
    /// compacted away): what happened meanwhile may be incomplete, re-read.
    Resumed,
}

impl EtcdStore {
    /// [`KvStore::watch`], plus [`StoreEvent::Resumed`] each time the watch comes
    /// back after an error (the store was unreachable) or a compaction.
    pub fn watch_events(&self, prefix: &str) -> crossbeam_channel::Receiver<StoreEvent> {
        let (tx, rx) = crossbeam_channel::unbounded();
        self.spawn_watch(prefix, move |ev| tx.send(ev).is_ok());
        rx
    }

    /// Start the watch task of [`KvStore::watch`]; `sink` returns false when nobody
    /// listens any more.
    fn spawn_watch(&self, prefix: &str, sink: impl Fn(StoreEvent) -> bool + Send + 'static) {
        // From the next revision: what is committed after this call returns is seen.
        let mut next = match self.current_revision() {
            Ok(r) => r as i64 + 1,
            Err(e) => {
                tracing::warn!(error = %e, "watch: cannot read the current revision; watching from when the store answers");
                0
            }
        };
        let client = self.client.clone();
        let root = self.prefix.clone();
        let key = self.full(prefix);
        let store = self.describe();
        self.rt().spawn(async move {
            let mut watcher = client.watch_client();
            // Whether the watch failed since the last event delivered.
            let mut lost = false;
            loop {
                let mut opts = etcd::WatchOptions::new().with_prefix();
                if next > 0 {
                    opts = opts.with_start_revision(next);
                }
                match watcher.watch(key.clone(), Some(opts)).await {
                    Ok(mut stream) => loop {
                        match stream.message().await {
                            Ok(Some(resp)) => {
                                if resp.compact_revision() > 0 {
                                    tracing::warn!(%store, from = next, to = resp.compact_revision(), "watch: events compacted away; resuming after them");
                                    next = resp.compact_revision();
                                    lost = true;
                                }
                                if lost && (resp.created() || !resp.events().is_empty()) {
                                    lost = false;
                                    tracing::info!(%store, "watch: the store answers again");
                                    if !sink(StoreEvent::Resumed) {
                                        return;
                                    }
                                }
                                for ev in resp.events() {
                                    let Some(kv) = ev.kv() else { continue };
                                    let Some(k) = std::str::from_utf8(kv.key())
                                        .ok()
                                        .and_then(|k| k.strip_prefix(root.as_str()))
                                    else {
                                        continue;
                                    };
                                    let op = match ev.event_type() {
                                        etcd::EventType::Put => {
                                            KvOp::Put(k.to_string(), kv.value().to_vec())
                                        }
                                        etcd::EventType::Delete => KvOp::Delete(k.to_string()),
                                    };
                                    let revision = kv.mod_revision();
                                    next = next.max(revision + 1);
                                    if !sink(StoreEvent::Change(WatchEvent {
                                        revision: revision as Revision,
                                        op,
                                    })) {
                                        return; // nobody listens any more
                                    }
                                }
                                if resp.canceled() {
                                    tracing::warn!(%store, reason = resp.cancel_reason(), "watch cancelled by the store; re-watching");
                                    lost = true;
                                    break;
                                }
                            }
                            Ok(None) => {
                                lost = true;
                                break;
                            }
                            Err(e) => {
                                tracing::warn!(%store, error = %e, "watch failed; re-watching");
                                lost = true;
                                break;
                            }
                        }
                    },
                    Err(e) => {
                        lost = true;
                        tracing::debug!(%store, error = %e, "watch: cannot reach the store");
                    }
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
    }
}

/// Grant a lease of `secs` and put `key` = `value` under it; the lease id.
async fn put_leased(
    client: &etcd::Client,
    secs: i64,
    key: String,
    value: Vec<u8>,
) -> Result<i64, etcd::Error> {
    let id = client.lease_client().grant(secs, None).await?.id();
    client
        .kv_client()
        .put(key, value, Some(etcd::PutOptions::new().with_lease(id)))
        .await?;
    Ok(id)
}

/// Keep lease `id` (of `secs`) alive, reconnecting after errors; returns when the
/// store says the lease is gone (expired or revoked).
async fn keep_alive(client: &etcd::Client, id: i64, secs: i64, store: &str) {
    let period = Duration::from_millis((secs as u64 * 1000 / 3).max(300));
    // A keep-alive unanswered this long counts as a broken stream.
    let patience = Duration::from_secs(secs.max(2) as u64);
    let mut lease = client.lease_client();
    loop {
        match lease.keep_alive(id).await {
            Ok((mut keeper, mut stream)) => loop {
                if let Err(e) = keeper.keep_alive().await {
                    tracing::warn!(%store, lease = id, error = %e, "lease keep-alive failed");
                    break;
                }
                match tokio::time::timeout(patience, stream.message()).await {
                    Ok(Ok(Some(r))) if r.ttl() <= 0 => return,
                    Ok(Ok(Some(_))) => {}
                    Ok(Ok(None)) => break,
                    Ok(Err(e)) => {
                        tracing::warn!(%store, lease = id, error = %e, "lease keep-alive failed");
                        break;
                    }
                    Err(_) => {
                        tracing::warn!(%store, lease = id, "lease keep-alive unanswered");
                        break;
                    }
                }
                tokio::time::sleep(period).await;
            },
            // The client's own check of the first answer: the lease is gone.
            Err(etcd::Error::LeaseKeepAliveError(m)) if m.contains("not found") => return,
            Err(e) => tracing::warn!(%store, lease = id, error = %e, "lease keep-alive failed"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn describe(endpoints: &[String]) -> String {
    format!("etcd://{}", endpoints.join(","))
}

/// Run `f` on `rt` and wait for its result for at most `timeout`.
fn run<T: Send + 'static>(
    rt: &tokio::runtime::Runtime,
    timeout: Duration,
    f: impl std::future::Future<Output = Result<T, etcd::Error>> + Send + 'static,
) -> Result<T, String> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    let task = rt.spawn(async move {
        let out = tokio::time::timeout(timeout, f).await;
        let _ = tx.send(out);
    });
    match rx.recv_timeout(timeout + Duration::from_millis(500)) {
        Ok(Ok(Ok(v))) => Ok(v),
        Ok(Ok(Err(e))) => Err(e.to_string()),
        Ok(Err(_)) | Err(_) => {
            task.abort();
            Err(format!("no answer within {timeout:?}"))
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("etcd://127.0.0.1:2379").unwrap(),
            vec!["127.0.0.1:2379"]
        );
        assert_eq!(
            parse_url("etcd://a.example:1,[::1]:2379").unwrap(),
            vec!["a.example:1", "[::1]:2379"]
        );
        for bad in [
            "consul://h:1",
            "http://127.0.0.1:2379",
            "127.0.0.1:2379",
            "etcd://",
            "etcd://host",
            "etcd://host:0",
            "etcd://host:99999",
            "etcd://h:1,,h:2",
            "etcd://bad host:1",
        ] {
            let e = parse_url(bad).unwrap_err();
            assert!(e.contains(bad), "{bad}: {e}");
        }
        assert!(parse_url("consul://h:1")
            .unwrap_err()
            .contains("\"consul\""));
    }

    #[test]
    fn unreachable_is_unavailable_naming_the_endpoints() {
        // A port nothing listens on (bound then released).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let ep = format!("127.0.0.1:{port}");
        let t = std::time::Instant::now();
        let e = EtcdStore::connect(
            std::slice::from_ref(&ep),
            DEFAULT_PREFIX,
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(5));
        assert!(matches!(e, StoreError::Unavailable { .. }), "{e}");
        assert!(e.to_string().contains(&format!("etcd://{ep}")), "{e}");
    }
}
