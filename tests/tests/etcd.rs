//! The cluster store on a real etcd (Debian's `etcd-server`), started in each test's
//! own network namespace (so every test has its own 127.0.0.1:2379) and ended by pid:
//! the controller's records round-trip through `EtcdStore`, compare-and-swap
//! conflicts write nothing, watches see writes in commit order, a create-if-absent
//! race has exactly one winner, leased keys vanish after their TTL once nobody keeps
//! the lease alive, and `tapnetd --cluster-store` registers its node (and refuses an
//! unreachable or malformed store URL at start).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};
use tapnet_engine::store::etcd::EtcdStore;
use tapnet_engine::store::{self, Change, Compare, KvOp, KvStore, StoreError, WatchEvent};
use tapnet_engine::Error;
use tapnet_tests::{in_namespace, Env, Etcd, ETCD_CLIENT as CLIENT};

fn connect() -> EtcdStore {
    tapnet_tests::etcd_client(Duration::from_secs(3)).expect("connect to the test etcd")
}

fn record<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).unwrap()
}

#[test]
fn etcd_store_round_trip_cas_and_watch() {
    in_namespace("etcd_store_round_trip_cas_and_watch", |env| {
        let _etcd = Etcd::start(&env.root, CLIENT);
        let kv = connect();
        assert_eq!(kv.describe(), format!("etcd://{CLIENT}"));

        // The controller's records, through store::commit and store::load.
        let n: tapnet_engine::model::Network = record(json!({
            "id": "n1", "name": "net1", "driver": "overlay", "scope": "global",
            "subnet": "10.1.0.0/24", "gateway": "10.1.0.1",
        }));
        let s: tapnet_engine::model::Sandbox = record(json!({"id": "s1", "name": "sb1"}));
        let e: tapnet_engine::model::Endpoint = record(json!({
            "id": "e1", "network_id": "n1", "sandbox_id": "s1", "interface": "eth0",
            "mac": [2, 66, 10, 1, 0, 2], "ipv4": "10.1.0.2", "prefix_len": 24,
            "aliases": ["web", "db"],
        }));
        store::commit(
            &kv,
            &[
                Change::PutNetwork(Box::new(n.clone())),
                Change::PutSandbox(s.clone()),
                Change::PutEndpoint(e.clone()),
            ],
        )
        .unwrap();
        let loaded = store::load(&kv).unwrap();
        let mut want = n.clone();
        want.endpoints.insert(e.id.clone(), e.clone());
        assert_eq!(loaded.store.networks.get("n1"), Some(&want));
        assert_eq!(loaded.store.sandboxes.get("s1"), Some(&s));
        assert_eq!(loaded.skipped, 0);
        store::commit(&kv, &[Change::DeleteEndpoint("e1".into())]).unwrap();
        assert!(store::load(&kv).unwrap().store.networks["n1"]
            .endpoints
            .is_empty());
        // Everything lives under the prefix, as etcdctl sees it.
        let out = Command::new("etcdctl")
            .args([
                "--endpoints",
                CLIENT,
                "get",
                "--prefix",
                "--keys-only",
                "/tapnet/",
            ])
            .output()
            .unwrap();
        let keys = String::from_utf8_lossy(&out.stdout);
        assert!(keys.contains("/tapnet/networks/n1"), "{keys}");
        assert!(keys.contains("/tapnet/sandboxes/s1"), "{keys}");

        // Compare-and-swap: create-if-absent, stale revision, conflict writes nothing.
        let w = kv.watch("cas/");
        let absent = Compare {
            key: "cas/k".into(),
            revision: None,
        };
        let put = |v: &str| KvOp::Put("cas/k".into(), v.as_bytes().to_vec());
        let r1 = kv
            .txn(std::slice::from_ref(&absent), &[put("one")])
            .unwrap();
        let err = kv
            .txn(
                &[absent],
                &[put("two"), KvOp::Put("cas/other".into(), b"x".to_vec())],
            )
            .unwrap_err();
        match &err {
            StoreError::Conflict {
                key,
                expected,
                found,
                ..
            } => {
                assert_eq!(key, "cas/k");
                assert_eq!(*expected, None);
                assert_eq!(*found, Some(r1));
            }
            other => panic!("expected a conflict, got {other}"),
        }
        let rows = kv.range("cas/").unwrap();
        assert_eq!(rows.len(), 1, "the failed transaction wrote something");
        assert_eq!(rows[0].value, b"one");
        assert_eq!(rows[0].revision, r1);
        let at = Compare {
            key: "cas/k".into(),
            revision: Some(r1),
        };
        let r2 = kv
            .txn(
                std::slice::from_ref(&at),
                &[put("three"), KvOp::Put("cas/z".into(), b"z".to_vec())],
            )
            .unwrap();
        assert!(r2 > r1);
        assert!(matches!(
            kv.txn(&[at], &[KvOp::Delete("cas/k".into())]),
            Err(StoreError::Conflict { found: Some(f), .. }) if f == r2
        ));
        let r3 = kv.txn(&[], &[KvOp::Delete("cas/k".into())]).unwrap();
        // The watch saw exactly the committed writes, in commit order.
        let mut seen = Vec::new();
        while seen.len() < 4 {
            seen.push(w.recv_timeout(Duration::from_secs(5)).expect("watch event"));
        }
        assert_eq!(
            seen,
            vec![
                WatchEvent {
                    revision: r1,
                    op: put("one")
                },
                WatchEvent {
                    revision: r2,
                    op: put("three")
                },
                WatchEvent {
                    revision: r2,
                    op: KvOp::Put("cas/z".into(), b"z".to_vec())
                },
                WatchEvent {
                    revision: r3,
                    op: KvOp::Delete("cas/k".into())
                },
            ]
        );
        assert!(w.recv_timeout(Duration::from_millis(300)).is_err());
    });
}

#[test]
fn etcd_watch_resumes_after_a_store_restart() {
    in_namespace("etcd_watch_resumes_after_a_store_restart", |env| {
        let mut etcd = Etcd::start(&env.root, CLIENT);
        let kv = connect();
        let w = kv.watch("w/");
        let r1 = kv
            .txn(&[], &[KvOp::Put("w/1".into(), b"1".to_vec())])
            .unwrap();
        let ev = w.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(ev.revision, r1);
        etcd.restart();
        // While the watch reconnects, writes go on; none is lost, none repeated.
        let mut want = Vec::new();
        for i in 2..6 {
            let key = format!("w/{i}");
            let deadline = Instant::now() + Duration::from_secs(10);
            let r = loop {
                match kv.txn(&[], &[KvOp::Put(key.clone(), b"x".to_vec())]) {
                    Ok(r) => break r,
                    Err(e) => {
                        assert!(Instant::now() < deadline, "{e}");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            };
            want.push(WatchEvent {
                revision: r,
                op: KvOp::Put(key, b"x".to_vec()),
            });
        }
        let mut seen = Vec::new();
        while seen.len() < want.len() {
            seen.push(
                w.recv_timeout(Duration::from_secs(10))
                    .expect("watch event after the restart"),
            );
        }
        assert_eq!(seen, want);
        assert!(w.recv_timeout(Duration::from_millis(300)).is_err());
    });
}

#[test]
fn etcd_create_if_absent_race_has_one_winner() {
    in_namespace("etcd_create_if_absent_race_has_one_winner", |env| {
        let _etcd = Etcd::start(&env.root, CLIENT);
        // Two "hosts", each with its own client, race for the same addresses.
        let a = Arc::new(connect());
        let b = Arc::new(connect());
        for round in 0..20 {
            let key = format!("ipam/n1/10.1.0.{round}");
            let barrier = Arc::new(Barrier::new(2));
            let racers: Vec<_> = [(Arc::clone(&a), "a"), (Arc::clone(&b), "b")]
                .into_iter()
                .map(|(kv, who)| {
                    let key = key.clone();
                    let barrier = Arc::clone(&barrier);
                    std::thread::spawn(move || {
                        barrier.wait();
                        kv.txn(
                            &[Compare {
                                key: key.clone(),
                                revision: None,
                            }],
                            &[KvOp::Put(key, who.as_bytes().to_vec())],
                        )
                    })
                })
                .collect();
            let results: Vec<_> = racers.into_iter().map(|t| t.join().unwrap()).collect();
            let won = results.iter().filter(|r| r.is_ok()).count();
            assert_eq!(won, 1, "round {round}: {results:?}");
            assert!(results
                .iter()
                .any(|r| matches!(r, Err(StoreError::Conflict { key: k, .. }) if *k == key)));
            assert_eq!(a.range(&key).unwrap().len(), 1);
        }
    });
}

#[test]
fn etcd_leased_key_vanishes_after_ttl() {
    in_namespace("etcd_leased_key_vanishes_after_ttl", |env| {
        let _etcd = Etcd::start(&env.root, CLIENT);
        let kv = connect();
        let ttl = Duration::from_secs(2);
        let lease = kv.grant_lease(ttl).unwrap();
        kv.txn_leased(&[], &[KvOp::Put("nodes/x".into(), b"{}".to_vec())], lease)
            .unwrap();
        // Kept alive: still there well past the TTL.
        std::thread::sleep(ttl * 2);
        assert_eq!(
            kv.range("nodes/").unwrap().len(),
            1,
            "expired while kept alive"
        );
        // Keep-alive stops (the host died): gone within the TTL (plus etcd's lease
        // check period).
        kv.stop_keep_alive(lease);
        let stopped = Instant::now();
        while !kv.range("nodes/").unwrap().is_empty() {
            assert!(
                stopped.elapsed() < ttl + Duration::from_secs(3),
                "leased key still there {:?} after keep-alive stopped",
                stopped.elapsed()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        // Revoking removes a lease's keys at once.
        let lease = kv.grant_lease(Duration::from_secs(30)).unwrap();
        kv.txn_leased(&[], &[KvOp::Put("nodes/y".into(), b"{}".to_vec())], lease)
            .unwrap();
        kv.revoke_lease(lease).unwrap();
        assert!(kv.range("nodes/").unwrap().is_empty());
    });
}

fn tapnetd() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().join("tapnetd")
}

/// Run tapnetd with `args` and expect it to fail within a few seconds; its stderr.
fn start_fails(env: &Env, args: &[&str]) -> String {
    let t = Instant::now();
    let out = Command::new(tapnetd())
        .arg("-H")
        .arg(format!("unix://{}", env.root.join("other.sock").display()))
        .arg("--exec-root")
        .arg(env.root.join("other-run"))
        .arg("--data-root")
        .arg(env.root.join("other-data"))
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "tapnetd {args:?} started:\n{err}");
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "tapnetd {args:?} took {:?} to fail",
        t.elapsed()
    );
    err
}

#[test]
fn tapnetd_registers_in_the_cluster_store() {
    in_namespace("tapnetd_registers_in_the_cluster_store", |env| {
        let _etcd = Etcd::start(&env.root, CLIENT);
        let url = format!("etcd://{CLIENT}");
        env.stop_daemon();
        env.start_daemon_with(&[
            "--cluster-store",
            &url,
            "--cluster-advertise",
            "127.0.0.1",
            "--cluster-ttl",
            "2",
        ]);
        let kv = connect();
        let nodes = kv.range("nodes/").unwrap();
        assert_eq!(nodes.len(), 1, "{nodes:?}\n{}", env.daemon_log());
        assert_eq!(nodes[0].key, "nodes/127.0.0.1");
        let v: Value = serde_json::from_slice(&nodes[0].value).unwrap();
        assert_eq!(v["address"], "127.0.0.1");
        assert!(v["name"].is_string(), "{v}");
        // Local networks still work (and stay local).
        env.network("n1", "10.80.0.0/24");
        assert!(kv.range("networks/").unwrap().is_empty());
        // Should the lease go anyway (a store outage longer than the TTL), the daemon
        // registers again under a new lease.
        let revoked = nodes[0].revision;
        let out = Command::new("etcdctl")
            .args(["--endpoints", CLIENT, "lease", "list"])
            .output()
            .unwrap();
        let list = String::from_utf8_lossy(&out.stdout).to_string();
        let id = list.lines().last().unwrap().trim().to_string();
        let out = Command::new("etcdctl")
            .args(["--endpoints", CLIENT, "lease", "revoke", &id])
            .output()
            .unwrap();
        assert!(out.status.success(), "{list}: {out:?}");
        let t = Instant::now();
        loop {
            let nodes = kv.range("nodes/").unwrap();
            if nodes.first().is_some_and(|n| n.revision > revoked) {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "node not registered again after its lease was revoked:\n{}",
                env.daemon_log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        // Alive past its TTL; gone within it after the host dies.
        std::thread::sleep(Duration::from_secs(4));
        assert_eq!(kv.range("nodes/").unwrap().len(), 1);
        env.kill9_daemon();
        let died = Instant::now();
        while !kv.range("nodes/").unwrap().is_empty() {
            assert!(
                died.elapsed() < Duration::from_secs(6),
                "node record outlived its host"
            );
            std::thread::sleep(Duration::from_millis(100));
        }

        // An unreachable store fails the start quickly, naming the URL.
        let err = start_fails(
            env,
            &[
                "--cluster-store",
                "etcd://127.0.0.1:1",
                "--cluster-advertise",
                "127.0.0.1",
            ],
        );
        assert!(err.contains("etcd://127.0.0.1:1"), "{err}");
        // Bad scheme, bad address, missing advertise address: clear errors.
        let err = start_fails(
            env,
            &[
                "--cluster-store",
                "consul://127.0.0.1:8500",
                "--cluster-advertise",
                "127.0.0.1",
            ],
        );
        assert!(err.contains("unsupported scheme \"consul\""), "{err}");
        let err = start_fails(
            env,
            &[
                "--cluster-store",
                "etcd://127.0.0.1",
                "--cluster-advertise",
                "127.0.0.1",
            ],
        );
        assert!(err.contains("bad address"), "{err}");
        let err = start_fails(env, &["--cluster-store", &url]);
        assert!(err.contains("--cluster-advertise"), "{err}");
        env.start_daemon();
    });
}

/// A store that is down maps to HTTP 503 with a message naming it.
#[test]
fn unreachable_store_is_503() {
    let e = Error::store(
        "create network g1",
        StoreError::Unavailable {
            store: "etcd://127.0.0.1:1".into(),
            message: "connection refused".into(),
        },
    );
    assert_eq!(e.status(), 503);
    assert!(e.to_string().contains("etcd://127.0.0.1:1"));
}

/// `EtcdStore::watch_events`: the writes in order, then, after etcd was killed and
/// started again, `Resumed` before the writes made since; a registered node whose
/// lease was revoked (as if it expired) is registered again under a new lease.
#[test]
fn etcd_watch_resumes_after_an_outage_and_node_registers_again() {
    use tapnet_engine::store::etcd::StoreEvent;
    in_namespace(
        "etcd_watch_resumes_after_an_outage_and_node_registers_again",
        |env| {
            let mut etcd = Etcd::start(&env.root, CLIENT);
            let kv = connect();
            let rx = kv.watch_events("w/");
            let put = |k: &str| {
                kv.txn(&[], &[KvOp::Put(k.into(), b"v".to_vec())]).unwrap();
            };
            let next = || rx.recv_timeout(Duration::from_secs(10)).unwrap();
            let first = kv
                .register_node("192.0.2.9", "h9", Duration::from_secs(2))
                .unwrap();
            assert_eq!(kv.node_lease(), Some(first));
            put("w/1");
            assert!(
                matches!(next(), StoreEvent::Change(WatchEvent { op: KvOp::Put(k, _), .. }) if k == "w/1")
            );
            etcd.stop();
            // Out of reach: a write fails as unavailable, naming the store.
            let e = kv
                .txn(&[], &[KvOp::Put("w/x".into(), Vec::new())])
                .unwrap_err();
            assert!(matches!(e, StoreError::Unavailable { .. }), "{e}");
            assert!(e.to_string().contains(CLIENT), "{e}");
            etcd.restart();
            assert_eq!(next(), StoreEvent::Resumed);
            put("w/2");
            assert!(
                matches!(next(), StoreEvent::Change(WatchEvent { op: KvOp::Put(k, _), .. }) if k == "w/2")
            );

            // The node's lease revoked behind the store's back right after the outage
            // (its own revoke_lease would stop the keeper on purpose), typically
            // while its keep-alive is still reconnecting: registered again.
            let out = Command::new("etcdctl")
                .args([
                    "--endpoints",
                    CLIENT,
                    "lease",
                    "revoke",
                    &format!("{:x}", first.0),
                ])
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
            let deadline = Instant::now() + Duration::from_secs(10);
            while kv.node_lease() == Some(first)
                || !kv
                    .range("nodes/")
                    .unwrap()
                    .iter()
                    .any(|k| k.key == "nodes/192.0.2.9")
            {
                assert!(Instant::now() < deadline, "node not registered again");
                std::thread::sleep(Duration::from_millis(100));
            }
        },
    );
}
