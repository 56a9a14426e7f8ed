//! Global overlay networks through the cluster store: two "hosts" (the test's
//! namespace and a second network namespace joined by a veth underlay 192.0.2.1/24 ↔
//! 192.0.2.2/24), a real etcd in the first one (Debian's `etcd-server`, ended by pid),
//! both daemons with `--cluster-store` and `--cluster-advertise`. The overlay is
//! created on host A only; host B gets it from the store; addresses are claimed
//! cluster-wide; the tunnels learn the remote endpoints from the store.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use serde_json::Value;
use std::time::{Duration, Instant};
use tapnet_engine::store::etcd::EtcdStore;
use tapnet_engine::store::KvStore;
use tapnet_tests::{in_namespace, Etcd};

/// The tests of this file run one at a time: each runs an etcd and two daemons, and
/// under load a 2 s lease could lapse (a flake, not a finding).
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// [`in_namespace`], holding [`ONE_AT_A_TIME`].
fn serial(name: &str, body: impl FnOnce(&mut tapnet_tests::Env)) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    in_namespace(name, body);
}

fn connect() -> Option<EtcdStore> {
    tapnet_tests::etcd_client(Duration::from_secs(1))
}

/// Wait (at most 10 s) until `f` holds.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn global_overlay_through_the_cluster_store() {
    serial("global_overlay_through_the_cluster_store", |a| {
        let (etcd, mut b) = a.etcd_two_hosts(&[], &["--cluster-ttl", "2"]);

        // Created on A only: recorded in the store, with its name and VNI claimed.
        a.ok(&[
            "network",
            "create",
            "-d",
            "overlay",
            "--subnet",
            "10.90.0.0/24",
            "ov",
        ]);
        let kv = connect().unwrap();
        let keys: Vec<String> = kv.range("").unwrap().into_iter().map(|k| k.key).collect();
        assert!(keys.iter().any(|k| k.starts_with("networks/")), "{keys:?}");
        assert!(keys.contains(&"names/ov".to_string()), "{keys:?}");
        assert!(keys.iter().any(|k| k.starts_with("vnis/")), "{keys:?}");
        // The same name again, from either host: 409.
        let msg = b.fails(&["network", "create", "-d", "overlay", "ov"]);
        assert!(msg.contains("already exists"), "{msg}");

        // Host B lists and inspects it (same id, scope global).
        eventually("B has the network", || {
            b.api("GET", "/networks/ov", None).0 == 200
        });
        let va: Value = a.get("/networks/ov");
        let vb: Value = b.get("/networks/ov");
        assert_eq!(va["Id"], vb["Id"]);
        assert_eq!(vb["Scope"], "global", "{vb}");
        assert_eq!(vb["Driver"], "overlay", "{vb}");
        assert!(b.ok(&["network", "ls"]).contains("ov"));

        // Connect one sandbox on each host, at the same time, without addresses.
        a.sandbox("sa");
        b.sandbox("sb");
        std::thread::scope(|s| {
            let ta = s.spawn(|| a.ok(&["network", "connect", "ov", "sa"]));
            let tb = s.spawn(|| b.ok(&["network", "connect", "ov", "sb"]));
            ta.join().unwrap();
            tb.join().unwrap();
        });
        let (ipa, ipb) = (a.ip_of("ov", "sa"), b.ip_of("ov", "sb"));
        assert_ne!(ipa, ipb, "the same address on both hosts");
        for ip in [&ipa, &ipb] {
            assert!(ip.starts_with("10.90.0."), "{ip}");
            assert_ne!(ip, "10.90.0.1");
        }
        let keys: Vec<String> = kv.range("").unwrap().into_iter().map(|k| k.key).collect();
        assert_eq!(
            keys.iter().filter(|k| k.starts_with("endpoints/")).count(),
            2,
            "{keys:?}"
        );

        // Across the tunnel, both ways (peers, MACs and neighbours from the store).
        eventually("a reaches b", || a.ping("sa", &ipb, 1));
        eventually("b reaches a", || b.ping("sb", &ipa, 1));

        // A static address taken on the other host: 409, and nothing left behind.
        a.sandbox("sc");
        let (code, v) = a.api(
            "POST",
            "/networks/ov/connect",
            Some(&format!(
                r#"{{"Container":"sc","EndpointConfig":{{"IPAMConfig":{{"IPv4Address":"{ipb}"}}}}}}"#
            )),
        );
        assert_eq!(code, 409, "{v}");
        assert!(v["message"].as_str().unwrap().contains(&ipb), "{v}");

        // Rollbacks free what the steps claimed in the store. An address outside the
        // subnet: claimed, then refused by the local IPAM, so the claim is deleted.
        let ipam_keys = |kv: &EtcdStore| {
            let mut k: Vec<String> = kv
                .range("ipam/")
                .unwrap()
                .into_iter()
                .map(|k| k.key)
                .collect();
            k.sort();
            k
        };
        let before = ipam_keys(&kv);
        assert_eq!(before.len(), 2, "{before:?}");
        let (code, v) = a.api(
            "POST",
            "/networks/ov/connect",
            Some(
                r#"{"Container":"sc","EndpointConfig":{"IPAMConfig":{"IPv4Address":"10.99.0.5"}}}"#,
            ),
        );
        assert!((400..500).contains(&code), "{code} {v}");
        assert_eq!(ipam_keys(&kv), before);
        // A VNI the store does not know but a static overlay of A uses: claimed, then
        // refused by the driver (409), so the name and VNI claims are deleted.
        a.ok(&[
            "network",
            "create",
            "-d",
            "overlay",
            "--subnet",
            "10.92.0.0/24",
            "-o",
            "com.docker.network.driver.overlay.vxlanid_list=5000",
            "-o",
            "com.tapnet.overlay.peers=192.0.2.2:4790",
            "static5000",
        ]);
        let (code, v) = a.api(
            "POST",
            "/networks/create",
            Some(r#"{"Name":"g5000","Driver":"overlay","IPAM":{"Config":[{"Subnet":"10.93.0.0/24"}]},"Options":{"com.docker.network.driver.overlay.vxlanid_list":"5000"}}"#),
        );
        assert_eq!(code, 409, "{v}");
        let keys: Vec<String> = kv.range("").unwrap().into_iter().map(|k| k.key).collect();
        assert!(
            !keys.iter().any(|k| k == "names/g5000" || k == "vnis/5000"),
            "{keys:?}"
        );
        // The static overlay stays local: not in the store, not on B.
        assert!(!keys.contains(&"names/static5000".to_string()), "{keys:?}");
        assert_eq!(b.api("GET", "/networks/static5000", None).0, 404);
        a.ok(&["network", "rm", "static5000"]);

        // Removing it anywhere while any host has endpoints: 409.
        let (code, v) = b.api("DELETE", "/networks/ov", None);
        assert_eq!(code, 409, "{v}");
        a.ok(&["network", "disconnect", "ov", "sa"]);
        // From A (no local endpoint left): B's endpoint, named with its host.
        let (code, v) = a.api("DELETE", "/networks/ov", None);
        assert_eq!(code, 409, "{v}");
        assert!(
            v["message"].as_str().unwrap().contains("sb on 192.0.2.2"),
            "{v}"
        );
        let (code, v) = b.api("DELETE", "/networks/ov", None);
        assert_eq!(code, 409, "{v}");
        b.ok(&["network", "disconnect", "ov", "sb"]);
        let keys: Vec<String> = kv.range("").unwrap().into_iter().map(|k| k.key).collect();
        assert!(
            !keys
                .iter()
                .any(|k| k.starts_with("endpoints/") || k.starts_with("ipam/")),
            "{keys:?}"
        );

        // Removed on B: gone from the store and from A.
        b.ok(&["network", "rm", "ov"]);
        eventually("A dropped the network", || {
            a.api("GET", "/networks/ov", None).0 == 404
        });
        let keys: Vec<String> = kv.range("").unwrap().into_iter().map(|k| k.key).collect();
        assert!(keys.iter().all(|k| k.starts_with("nodes/")), "{keys:?}");

        // A restarted daemon loads the global networks from the store and restores its
        // endpoints on them; a host that dies loses its endpoints with its lease (TTL
        // 2 s), so the network can go.
        a.ok(&[
            "network",
            "create",
            "-d",
            "overlay",
            "--subnet",
            "10.94.0.0/24",
            "ov2",
        ]);
        eventually("B has ov2", || b.api("GET", "/networks/ov2", None).0 == 200);
        b.ok(&["network", "connect", "ov2", "sb"]);
        let ipb2 = b.ip_of("ov2", "sb");
        b.stop_daemon();
        b.start_daemon_with(&tapnet_tests::hostb_etcd_flags(&["--cluster-ttl", "2"]));
        // The network from the store, B's endpoint from B's local store, re-recorded in
        // the cluster store under B's new lease.
        assert_eq!(b.get("/networks/ov2")["Scope"], "global");
        assert_eq!(b.ip_of("ov2", "sb"), ipb2);
        a.ok(&["network", "connect", "ov2", "sa"]);
        let ipa2 = a.ip_of("ov2", "sa");
        assert_ne!(ipa2, ipb2);
        eventually("a reaches b on ov2", || a.ping("sa", &ipb2, 1));
        eventually("b reaches a on ov2", || b.ping("sb", &ipa2, 1));
        // Past the TTL of B's first lease, its endpoint record lives on (new lease).
        std::thread::sleep(Duration::from_secs(3));
        assert_eq!(kv.range("endpoints/").unwrap().len(), 2);
        assert!(a.ping("sa", &ipb2, 1));
        a.ok(&["network", "disconnect", "ov2", "sa"]);
        let (code, v) = a.api("DELETE", "/networks/ov2", None);
        assert_eq!(code, 409, "{v}");
        b.kill9_daemon();
        eventually("B's endpoint expired", || {
            a.api("DELETE", "/networks/ov2", None).0 == 204
        });
        drop(b);
        drop(etcd);
    });
}

/// etcd in A's namespace, A's daemon on it, host B (TTL 5 s): (etcd, B).
fn two_hosts(a: &mut tapnet_tests::Env) -> (Etcd, tapnet_tests::Env) {
    a.etcd_two_hosts(&[], &["--cluster-ttl", "5"])
}

/// The addresses `name` resolves to in `sandbox` (`getent ahostsv4`), empty if none.
fn resolve(env: &tapnet_tests::Env, sandbox: &str, name: &str) -> Vec<String> {
    let out = env.exec(sandbox, &["getent", "ahostsv4", name]);
    let mut ips: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect();
    ips.sort();
    ips.dedup();
    ips
}

/// `POST /networks/prune` on `env`, asserting 200.
fn prune(env: &tapnet_tests::Env) -> Value {
    let (code, v) = env.api("POST", "/networks/prune", None);
    assert_eq!(code, 200, "{v}");
    v
}

/// The `Peers` of network `net` as `env` inspects it: sorted VTEP addresses.
fn peer_ips(env: &tapnet_tests::Env, net: &str) -> Vec<String> {
    let v: Value = env.get(&format!("/networks/{net}"));
    let mut ips: Vec<String> = v["Peers"]
        .as_array()
        .unwrap_or_else(|| panic!("no Peers: {v}"))
        .iter()
        .map(|p| {
            assert!(p["Name"].as_str().is_some_and(|n| !n.is_empty()), "{p}");
            p["IP"].as_str().unwrap().to_string()
        })
        .collect();
    ips.sort();
    ips
}

#[test]
fn global_overlay_names_peers_and_prune() {
    serial("global_overlay_names_peers_and_prune", |a| {
        let (etcd, b) = two_hosts(a);
        a.ok(&[
            "network",
            "create",
            "-d",
            "overlay",
            "--subnet",
            "10.95.0.0/24",
            "ov",
        ]);
        eventually("B has the network", || {
            b.api("GET", "/networks/ov", None).0 == 200
        });
        // No endpoints yet: no peers (a local network has no Peers at all).
        assert_eq!(peer_ips(a, "ov"), Vec::<String>::new());
        a.network("localnet", "10.96.0.0/24");
        assert!(a.get("/networks/localnet").get("Peers").is_none());

        a.sandbox("sa");
        b.sandbox("sb");
        a.ok(&["network", "connect", "--alias", "alpha", "ov", "sa"]);
        b.ok(&["network", "connect", "--alias", "beta", "ov", "sb"]);
        let (ipa, ipb) = (a.ip_of("ov", "sa"), b.ip_of("ov", "sb"));

        // The embedded DNS of each host answers the other host's names and aliases.
        eventually("A resolves sb", || {
            resolve(a, "sa", "sb") == std::slice::from_ref(&ipb)
        });
        assert_eq!(resolve(a, "sa", "beta"), std::slice::from_ref(&ipb));
        eventually("B resolves sa", || {
            resolve(&b, "sb", "sa") == std::slice::from_ref(&ipa)
        });
        assert_eq!(resolve(&b, "sb", "alpha"), std::slice::from_ref(&ipa));
        assert!(a.ping("sa", "sb", 2), "ping sb by name");
        assert!(a.ping("sa", "beta", 2), "ping beta by alias");
        assert!(b.ping("sb", "alpha", 2), "ping alpha by alias");

        // Peers: both hosts, on both hosts; the CLI prints them.
        let both = vec!["192.0.2.1".to_string(), "192.0.2.2".to_string()];
        eventually("A lists both peers", || peer_ips(a, "ov") == both);
        eventually("B lists both peers", || peer_ips(&b, "ov") == both);
        let cli: Value = serde_json::from_str(&a.ok(&["network", "inspect", "ov"])).unwrap();
        let mut cli_ips: Vec<&str> = cli[0]["Peers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["IP"].as_str().unwrap())
            .collect();
        cli_ips.sort();
        assert_eq!(cli_ips, both, "{cli}");

        // B disconnects: its name and alias stop resolving on A, B leaves the peers.
        b.ok(&["network", "disconnect", "ov", "sb"]);
        eventually("A forgot sb", || resolve(a, "sa", "sb").is_empty());
        assert!(resolve(a, "sa", "beta").is_empty());
        assert_eq!(resolve(a, "sa", "alpha"), std::slice::from_ref(&ipa));
        eventually("A lists itself only", || peer_ips(a, "ov") == ["192.0.2.1"]);
        eventually("B lists A only", || peer_ips(&b, "ov") == ["192.0.2.1"]);

        // Prune on either host keeps the global network (used or not), removes an
        // unused local one.
        let pruned = prune(&b);
        assert!(
            !pruned["NetworksDeleted"].to_string().contains("\"ov\""),
            "{pruned}"
        );
        a.ok(&["network", "disconnect", "ov", "sa"]);
        let pruned = prune(a);
        let deleted = pruned["NetworksDeleted"].to_string();
        assert!(!deleted.contains("\"ov\""), "{pruned}");
        assert!(deleted.contains("\"localnet\""), "{pruned}");
        let pruned = prune(&b);
        assert!(
            !pruned["NetworksDeleted"].to_string().contains("\"ov\""),
            "{pruned}"
        );
        assert_eq!(a.api("GET", "/networks/ov", None).0, 200);
        assert_eq!(b.api("GET", "/networks/ov", None).0, 200);
        let kv = connect().unwrap();
        assert_eq!(kv.range("networks/").unwrap().len(), 1);
        // `network rm` removes it.
        a.ok(&["network", "rm", "ov"]);
        eventually("B dropped ov", || {
            b.api("GET", "/networks/ov", None).0 == 404
        });
        drop(b);
        drop(etcd);
    });
}

/// Revoke the lease of node `addr`'s record with `etcdctl` (as if it expired).
fn revoke_node_lease(addr: &str) {
    let out = std::process::Command::new("etcdctl")
        .args([
            "--endpoints",
            tapnet_tests::ETCD_CLIENT,
            "get",
            &format!("/tapnet/nodes/{addr}"),
            "-w",
            "json",
        ])
        .output()
        .expect("run etcdctl (Debian etcd-client)");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let lease = v["kvs"][0]["lease"]
        .as_i64()
        .expect("node record with a lease");
    let out = std::process::Command::new("etcdctl")
        .args([
            "--endpoints",
            tapnet_tests::ETCD_CLIENT,
            "lease",
            "revoke",
            &format!("{lease:x}"),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn global_overlay_survives_the_store_going_away() {
    serial("global_overlay_survives_the_store_going_away", |a| {
        let (mut etcd, b) = two_hosts(a);
        a.ok(&[
            "network",
            "create",
            "-d",
            "overlay",
            "--subnet",
            "10.97.0.0/24",
            "ov",
        ]);
        eventually("B has the network", || {
            b.api("GET", "/networks/ov", None).0 == 200
        });
        a.sandbox("sa");
        b.sandbox("sb");
        b.sandbox("sc");
        let ipa = a.connect("ov", "sa");
        let ipb = b.connect("ov", "sb");
        eventually("a reaches b", || a.ping("sa", &ipb, 1));
        eventually("A resolves sb", || {
            resolve(a, "sa", "sb") == std::slice::from_ref(&ipb)
        });

        etcd.stop();
        // The data path keeps the last known state, by address and by name.
        assert!(a.ping("sa", &ipb, 3), "A to B with the store down");
        assert!(b.ping("sb", &ipa, 3), "B to A with the store down");
        assert!(a.ping("sa", "sb", 1), "A resolves sb with the store down");
        // Mutations of global objects: 503 naming the store, nothing changed.
        let (code, v) = a.api(
            "POST",
            "/networks/create",
            Some(r#"{"Name":"ov2","Driver":"overlay","IPAM":{"Config":[{"Subnet":"10.98.0.0/24"}]}}"#),
        );
        assert_eq!(code, 503, "{v}");
        assert!(
            v["message"]
                .as_str()
                .unwrap()
                .contains("etcd://127.0.0.1:2379"),
            "{v}"
        );
        assert_eq!(a.api("GET", "/networks/ov2", None).0, 404);
        let (code, v) = b.api(
            "POST",
            "/networks/ov/connect",
            Some(r#"{"Container":"sc"}"#),
        );
        assert_eq!(code, 503, "{v}");
        assert!(
            v["message"]
                .as_str()
                .unwrap()
                .contains("etcd://192.0.2.1:2379"),
            "{v}"
        );
        let (code, v) = a.api(
            "POST",
            "/networks/ov/disconnect",
            Some(r#"{"Container":"sa"}"#),
        );
        assert_eq!(code, 503, "{v}");
        assert!(b.get("/sandboxes/sc")["Endpoints"].get("ov").is_none());
        assert_eq!(a.ip_of("ov", "sa"), ipa);
        // Local networks still work.
        a.network("lb", "10.99.0.0/24");
        a.sandbox("sl");
        let ipl = a.connect("lb", "sl");
        a.connect("lb", "sa");
        assert!(a.ping("sa", &ipl, 1));
        assert!(a.ping("sa", &ipb, 1), "still A to B");

        etcd.restart();
        // Back: a connect on B is reachable from A, by address and by name.
        eventually("B connects sc", || {
            b.api(
                "POST",
                "/networks/ov/connect",
                Some(r#"{"Container":"sc"}"#),
            )
            .0 == 200
        });
        let ipc = b.ip_of("ov", "sc");
        assert_ne!(ipc, ipa);
        assert_ne!(ipc, ipb);
        eventually("a reaches c", || a.ping("sa", &ipc, 1));
        eventually("a resolves sc", || resolve(a, "sa", "sc") == [ipc.clone()]);

        // A's records lost with its lease (revoked as if expired) are written again
        // (node, endpoint, address claim) under a new lease, and B reaches A again.
        let kv = connect().unwrap();
        let keys = |kv: &EtcdStore| -> Vec<String> {
            kv.range("").unwrap().into_iter().map(|k| k.key).collect()
        };
        let a_keys = |ks: &[String]| {
            ks.iter()
                .filter(|k| k.ends_with(&format!("/{ipa}")) || *k == "nodes/192.0.2.1")
                .count()
        };
        assert_eq!(a_keys(&keys(&kv)), 2);
        revoke_node_lease("192.0.2.1");
        eventually("A's records are back", || {
            let ks = keys(&kv);
            a_keys(&ks) == 2 && ks.iter().filter(|k| k.starts_with("endpoints/")).count() == 3
        });
        eventually("b reaches a", || b.ping("sb", &ipa, 1));
        eventually("b resolves sa", || resolve(&b, "sb", "sa") == [ipa.clone()]);
        // An endpoint record deleted by hand while its host runs comes back too.
        let ek: Vec<String> = keys(&kv)
            .into_iter()
            .filter(|k| k.starts_with("endpoints/"))
            .collect();
        kv.txn(
            &[],
            &ek.iter()
                .map(|k| tapnet_engine::store::KvOp::Delete(k.clone()))
                .collect::<Vec<_>>(),
        )
        .unwrap();
        eventually("the endpoint records are back", || {
            keys(&kv)
                .iter()
                .filter(|k| k.starts_with("endpoints/"))
                .count()
                == 3
        });
        eventually("a reaches b again", || a.ping("sa", &ipb, 1));
        drop(b);
        drop(etcd);
    });
}

/// The IPv6 address (no prefix) of `sandbox` on `network`, from network inspect.
fn ip6_of(env: &tapnet_tests::Env, network: &str, sandbox: &str) -> String {
    let v: Value = env.get(&format!("/networks/{network}"));
    let c = v["Containers"]
        .as_object()
        .unwrap()
        .values()
        .find(|c| c["Name"] == sandbox)
        .unwrap_or_else(|| panic!("{sandbox} not on {network}: {v}"));
    let cidr = c["IPv6Address"].as_str().unwrap();
    cidr.split('/').next().unwrap().to_string()
}

#[test]
fn global_overlay_ipv6_claimed_cluster_wide() {
    serial("global_overlay_ipv6_claimed_cluster_wide", |a| {
        let (etcd, b) = two_hosts(a);
        a.ok(&[
            "network",
            "create",
            "-d",
            "overlay",
            "--ipv6",
            "--subnet",
            "10.91.0.0/24",
            "--subnet",
            "fd00:91::/64",
            "ov6",
        ]);
        eventually("B has the network", || {
            b.api("GET", "/networks/ov6", None).0 == 200
        });
        // Concurrent connects, two per host: four distinct IPv6 (and IPv4) addresses.
        for s in ["a1", "a2"] {
            a.sandbox(s);
        }
        for s in ["b1", "b2"] {
            b.sandbox(s);
        }
        std::thread::scope(|sc| {
            let ta = sc.spawn(|| {
                a.ok(&["network", "connect", "ov6", "a1"]);
                a.ok(&["network", "connect", "ov6", "a2"]);
            });
            let tb = sc.spawn(|| {
                b.ok(&["network", "connect", "ov6", "b1"]);
                b.ok(&["network", "connect", "ov6", "b2"]);
            });
            ta.join().unwrap();
            tb.join().unwrap();
        });
        let mut v6 = vec![
            ip6_of(a, "ov6", "a1"),
            ip6_of(a, "ov6", "a2"),
            ip6_of(&b, "ov6", "b1"),
            ip6_of(&b, "ov6", "b2"),
        ];
        for ip in &v6 {
            assert!(ip.starts_with("fd00:91::"), "{ip}");
            assert_ne!(ip, "fd00:91::1", "the gateway");
        }
        let (a1, b1) = (v6[0].clone(), v6[2].clone());
        v6.sort();
        v6.dedup();
        assert_eq!(v6.len(), 4, "{v6:?}");
        // Claimed in the store: 4 IPv4 and 4 IPv6 keys, each naming its endpoint.
        let kv = connect().unwrap();
        let claims = kv.range("ipam/").unwrap();
        assert_eq!(claims.len(), 8, "{:?}", claims);
        assert!(claims.iter().all(|c| !c.value.is_empty()));
        for ip in &v6 {
            assert!(
                claims.iter().any(|c| c.key.ends_with(&format!("/{ip}"))),
                "{ip}"
            );
        }
        // A static IPv6 address taken on the other host: 409.
        b.sandbox("b3");
        let (code, v) = b.api(
            "POST",
            "/networks/ov6/connect",
            Some(&format!(
                r#"{{"Container":"b3","EndpointConfig":{{"IPAMConfig":{{"IPv6Address":"{a1}"}}}}}}"#
            )),
        );
        assert_eq!(code, 409, "{v}");
        assert_eq!(kv.range("ipam/").unwrap().len(), 8);
        // ping6 across hosts, by address and by name (AAAA from the other host).
        let ping6 = |env: &tapnet_tests::Env, from: &str, to: &str| {
            env.exec(from, &["ping", "-6", "-n", "-q", "-c", "1", "-W", "2", to])
                .status
                .success()
        };
        eventually("a1 reaches b1 over IPv6", || ping6(a, "a1", &b1));
        eventually("b1 reaches a1 over IPv6", || ping6(&b, "b1", &a1));
        eventually("a1 reaches b1 by name over IPv6", || ping6(a, "a1", "b1"));
        // Disconnect frees both claims.
        b.ok(&["network", "disconnect", "ov6", "b2"]);
        assert_eq!(kv.range("ipam/").unwrap().len(), 6);
        drop(b);
        drop(etcd);
    });
}

/// etcd's count of `method` requests answered (its `/metrics`, gRPC server counters).
fn etcd_requests(method: &str) -> u64 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(tapnet_tests::ETCD_CLIENT).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.0\r\nHost: {}\r\n\r\n",
        tapnet_tests::ETCD_CLIENT
    )
    .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    let want = format!("grpc_method=\"{method}\"");
    body.lines()
        .filter(|l| l.starts_with("grpc_server_handled_total{") && l.contains(&want))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Watch events apply as deltas: while B connects sandboxes, host A, which learns each
/// endpoint (it reaches them), sends etcd no request at all and applies each as one
/// delta to its tunnel and DNS (never the whole set); B reads once (its address claim)
/// and writes twice (the claim, the record) per connect.
#[test]
fn global_overlay_events_read_nothing() {
    serial("global_overlay_events_read_nothing", |a| {
        // As `two_hosts`, with A logging how each event reached its tunnel and DNS.
        let (etcd, b) = a.etcd_two_hosts(
            &[
                "--log-level",
                "info,tapnet_engine::controller::global=debug",
            ],
            &["--cluster-ttl", "5"],
        );
        a.ok(&[
            "network",
            "create",
            "-d",
            "overlay",
            "--subnet",
            "10.89.0.0/24",
            "ov",
        ]);
        eventually("B has the network", || {
            b.api("GET", "/networks/ov", None).0 == 200
        });
        a.sandbox("sa");
        a.connect("ov", "sa");
        let names = ["b1", "b2", "b3", "b4", "b5"];
        for s in names {
            b.sandbox(s);
        }
        let (before, txns) = (etcd_requests("Range"), etcd_requests("Txn"));
        // How often A's daemon sent its tunnel and DNS the whole set, or a delta.
        let applied = |what: &str| {
            a.daemon_log()
                .lines()
                .filter(|l| l.contains(&format!("remote endpoints: {what}")))
                .count()
        };
        let (whole, deltas) = (applied("whole set"), applied("delta"));
        let mut ips = Vec::new();
        for s in names {
            ips.push(b.connect("ov", s));
        }
        for ip in &ips {
            eventually("A reaches B's sandbox", || a.ping("sa", ip, 1));
        }
        // Each of B's connects reached A as one delta, none as the whole set.
        assert_eq!(
            applied("delta") - deltas,
            names.len(),
            "deltas applied on A"
        );
        assert_eq!(applied("whole set") - whole, 0, "whole sets sent on A");
        let ranges = etcd_requests("Range") - before;
        assert_eq!(ranges, names.len() as u64, "reads while B connected");
        // And two writes per connect: the address claim, then the record.
        let txns = etcd_requests("Txn") - txns;
        assert_eq!(
            txns,
            2 * names.len() as u64,
            "transactions while B connected"
        );
        drop(b);
        drop(etcd);
    });
}

/// Re-sync: host B cannot reach etcd (restarted to listen on loopback only) while A
/// connects and disconnects sandboxes and creates and removes networks, and the
/// history is compacted, so B's watch cannot replay it; when B reaches etcd again it
/// re-reads the store and applies the differences.
#[test]
fn global_overlay_resyncs_after_missing_compacted_changes() {
    serial(
        "global_overlay_resyncs_after_missing_compacted_changes",
        |a| {
            // A TTL longer than B's time out of reach: this is about missed events.
            let (mut etcd, b) = a.etcd_two_hosts(&[], &["--cluster-ttl", "30"]);
            for (net, subnet) in [("ov", "10.88.0.0/24"), ("ovx", "10.87.0.0/24")] {
                a.ok(&[
                    "network", "create", "-d", "overlay", "--subnet", subnet, net,
                ]);
            }
            eventually("B has both networks", || {
                b.api("GET", "/networks/ovx", None).0 == 200
                    && b.api("GET", "/networks/ov", None).0 == 200
            });
            for s in ["sa", "sa2"] {
                a.sandbox(s);
            }
            b.sandbox("sb");
            let ipa = a.connect("ov", "sa");
            b.connect("ov", "sb");
            eventually("B resolves sa", || {
                resolve(&b, "sb", "sa") == std::slice::from_ref(&ipa)
            });

            // etcd on loopback only: A reaches it, B does not.
            etcd.stop();
            let local = Etcd::start(&a.root, "127.0.0.1:2379");
            eventually("A can write again", || {
                a.api(
                    "POST",
                    "/networks/ov/disconnect",
                    Some(r#"{"Container":"sa"}"#),
                )
                .0 == 200
            });
            let ipa2 = a.connect("ov", "sa2");
            a.ok(&["network", "rm", "ovx"]);
            a.ok(&[
                "network",
                "create",
                "-d",
                "overlay",
                "--subnet",
                "10.86.0.0/24",
                "ov3",
            ]);
            let kv = connect().unwrap();
            let rev = kv.current_revision().unwrap();
            let out = std::process::Command::new("etcdctl")
                .args([
                    "--endpoints",
                    tapnet_tests::ETCD_CLIENT,
                    "compact",
                    &rev.to_string(),
                ])
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
            drop(kv);
            // B still has the old state.
            assert_eq!(b.api("GET", "/networks/ovx", None).0, 200);
            assert_eq!(b.api("GET", "/networks/ov3", None).0, 404);
            drop(local);
            let _etcd = Etcd::start(&a.root, "0.0.0.0:2379");

            eventually("B dropped ovx", || {
                b.api("GET", "/networks/ovx", None).0 == 404
            });
            eventually("B has ov3", || b.api("GET", "/networks/ov3", None).0 == 200);
            eventually("B resolves sa2", || {
                resolve(&b, "sb", "sa2") == std::slice::from_ref(&ipa2)
            });
            eventually("B forgot sa", || resolve(&b, "sb", "sa").is_empty());
            assert!(b.ping("sb", &ipa2, 1), "B reaches sa2");
            assert!(b.ping("sb", "sa2", 1), "B reaches sa2 by name");
            drop(b);
        },
    );
}
