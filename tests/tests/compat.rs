//! Docker compatibility options, end to end with the stock `docker` client and the
//! `tapnet` CLI: the endpoint driver option `com.docker.network.endpoint.ifname`,
//! `--link-local-ip`, `--config-only`/`--config-from`, and the refusal (400 naming
//! the option, nothing created) of what tapnet does not implement.
//!
//! These tests need a `docker` client on PATH (scripts/test.sh installs docker.io);
//! without one they fail with a message saying so, they never pass silently.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use serde_json::Value;
use tapnet_tests::{docker_bin, in_namespace, Env};

const IFNAME: &str = "com.docker.network.endpoint.ifname";

/// Names of the links in a sandbox (`ip -o link`).
fn links(env: &Env, sandbox: &str) -> Vec<String> {
    let out = env.exec_ok(sandbox, &["ip", "-o", "link", "show"]);
    out.lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(|n| n.trim().split('@').next().unwrap_or("").to_string())
        .collect()
}

/// The `(networks, sandboxes)` state, to assert that a refused request changed nothing.
fn state(env: &Env) -> (Value, Value) {
    (env.get("/networks"), env.get("/sandboxes"))
}

#[test]
fn endpoint_ifname_driver_opt() {
    docker_bin();
    in_namespace("endpoint_ifname_driver_opt", |env| {
        env.network("n1", "10.93.0.0/24");
        env.network("n2", "10.94.0.0/24");
        let a = env.sandbox("a");
        env.sandbox("b");
        // The stock docker client: the interface gets the name asked for.
        env.docker_ok(&[
            "network",
            "connect",
            "--driver-opt",
            &format!("{IFNAME}=web0"),
            "n1",
            "a",
        ]);
        let b_ip = env.connect("n1", "b");
        let a_ip = env.ip_of("n1", "a");
        let names = links(env, "a");
        assert!(names.contains(&"web0".to_string()), "{names:?}");
        assert!(!names.iter().any(|n| n.starts_with("eth")), "{names:?}");
        assert_eq!(links(env, "b").iter().filter(|n| *n == "eth0").count(), 1);
        let addr = env.exec_ok("a", &["ip", "-o", "-4", "addr", "show", "dev", "web0"]);
        assert!(addr.contains(&format!("{a_ip}/24")), "{addr}");
        // Shown in inspect: the sandbox's endpoint and the network's Containers entry.
        let sb = env.get("/sandboxes/a");
        assert_eq!(sb["Endpoints"]["n1"]["Interface"], "web0");
        assert_eq!(sb["Endpoints"]["n1"]["DriverOpts"][IFNAME], "web0");
        let v: Value = serde_json::from_str(&env.docker_ok(&["network", "inspect", "n1"])).unwrap();
        assert_eq!(v[0]["Containers"][&a]["DriverOpts"][IFNAME], "web0", "{v}");
        // Traffic flows both ways.
        assert!(env.ping("a", &b_ip, 2), "a cannot reach b");
        assert!(env.ping("b", &a_ip, 2), "b cannot reach a");

        // The name is taken in the sandbox: 409, nothing created.
        let before = state(env);
        let (code, v) = env.api(
            "POST",
            "/networks/n2/connect",
            Some(&format!(
                r#"{{"Container":"a","EndpointConfig":{{"DriverOpts":{{"{IFNAME}":"web0"}}}}}}"#
            )),
        );
        assert_eq!(code, 409, "{v}");
        let msg = v["message"].as_str().unwrap();
        assert!(msg.contains("already has an interface named web0"), "{msg}");
        // A device that is not an endpoint's (lo) counts too.
        let (code, v) = env.api(
            "POST",
            "/networks/n2/connect",
            Some(&format!(
                r#"{{"Container":"a","EndpointConfig":{{"DriverOpts":{{"{IFNAME}":"lo"}}}}}}"#
            )),
        );
        assert_eq!(code, 409, "{v}");
        assert!(v["message"].as_str().unwrap().contains("named lo"), "{v}");
        // Invalid names and other keys: 400 naming them.
        for bad in ["0123456789abcdef", "a/b", "a b", ".", "..", ""] {
            let body = serde_json::json!({
                "Container": "a",
                "EndpointConfig": {"DriverOpts": {IFNAME: bad}},
            })
            .to_string();
            let (code, v) = env.api("POST", "/networks/n2/connect", Some(&body));
            assert_eq!(code, 400, "{bad:?}: {v}");
            let msg = v["message"].as_str().unwrap();
            assert!(
                msg.contains(IFNAME) && msg.contains("interface name"),
                "{msg}"
            );
        }
        let err = env.docker_fails(&[
            "network",
            "connect",
            "--driver-opt",
            "com.example.foo=1",
            "n2",
            "a",
        ]);
        assert!(
            err.contains("endpoint driver option \\\"com.example.foo\\\" is not supported")
                || err.contains("endpoint driver option \"com.example.foo\" is not supported"),
            "{err}"
        );
        let err = env.fails(&[
            "network",
            "connect",
            "--driver-opt",
            "com.example.bar=1",
            "n2",
            "a",
        ]);
        assert!(err.contains("com.example.bar"), "{err}");
        assert_eq!(state(env), before, "a refused connect changed something");
        assert!(links(env, "a").iter().all(|n| n != "eth0"));

        // The tapnet CLI, on a second network; the default naming skips taken names.
        env.ok(&[
            "network",
            "connect",
            "--driver-opt",
            &format!("{IFNAME}=eth0"),
            "n2",
            "a",
        ]);
        assert!(links(env, "a").contains(&"eth0".to_string()));

        // A daemon restart keeps the names and the traffic.
        env.stop_daemon();
        env.start_daemon();
        let sb = env.get("/sandboxes/a");
        assert_eq!(sb["Endpoints"]["n1"]["Interface"], "web0");
        assert_eq!(sb["Endpoints"]["n1"]["DriverOpts"][IFNAME], "web0");
        assert_eq!(sb["Endpoints"]["n2"]["Interface"], "eth0");
        assert!(links(env, "a").contains(&"web0".to_string()));
        assert!(env.ping("b", &a_ip, 2), "b cannot reach a after a restart");

        // Disconnect removes the named interface.
        env.docker_ok(&["network", "disconnect", "n1", "a"]);
        let names = links(env, "a");
        assert!(!names.contains(&"web0".to_string()), "{names:?}");
        assert!(names.contains(&"eth0".to_string()), "{names:?}");
        assert!(!env.ping("b", &a_ip, 1));

        // `tapnet run` takes it for its first network.
        let out = env.ok(&[
            "run",
            "--network",
            "n1",
            "--driver-opt",
            &format!("{IFNAME}=up1"),
            "--",
            "ip",
            "-o",
            "link",
            "show",
            "up1",
        ]);
        assert!(out.contains("up1"), "{out}");
    });
}

/// `docker network inspect NAME` as JSON (the one network).
fn docker_inspect(env: &Env, name: &str) -> Value {
    let v: Value = serde_json::from_str(&env.docker_ok(&["network", "inspect", name])).unwrap();
    v[0].clone()
}

/// A refused request: its status, its message contains `want`, nothing changed.
fn refused(env: &Env, method: &str, path: &str, body: &str, status: u16, want: &str) {
    let before = state(env);
    let (code, v) = env.api(method, path, Some(body));
    assert_eq!(code, status, "{method} {path} {body}: {v}");
    let msg = v["message"].as_str().unwrap_or_default();
    assert!(msg.contains(want), "{body}: {msg:?} lacks {want:?}");
    assert_eq!(state(env), before, "refused {body} changed something");
}

#[test]
fn config_only_and_config_from() {
    docker_bin();
    in_namespace("config_only_and_config_from", |env| {
        // A configuration network: settings only, driver null, scope local.
        env.docker_ok(&[
            "network",
            "create",
            "--config-only",
            "--subnet",
            "10.95.0.0/24",
            "--gateway",
            "10.95.0.254",
            "--ip-range",
            "10.95.0.128/25",
            "-o",
            "com.docker.network.driver.mtu=1400",
            "--label",
            "team=web",
            "cfg",
        ]);
        let cfg = docker_inspect(env, "cfg");
        assert_eq!(cfg["ConfigOnly"], true, "{cfg}");
        assert_eq!(cfg["Driver"], "null");
        assert_eq!(cfg["Scope"], "local");
        assert_eq!(cfg["IPAM"]["Config"][0]["Subnet"], "10.95.0.0/24");
        assert_eq!(cfg["IPAM"]["Config"][0]["Gateway"], "10.95.0.254");
        assert_eq!(cfg["ConfigFrom"]["Network"], "");
        // No pool was taken: an ordinary network may use the same subnet meanwhile,
        // and so may a second configuration network.
        env.network("plain", "10.95.0.0/24");
        env.ok(&["network", "rm", "plain"]);
        env.ok(&[
            "network",
            "create",
            "--config-only",
            "--subnet",
            "10.95.0.0/24",
            "cfg-twin",
        ]);
        env.network("ordinary", "10.99.0.0/24");
        env.sandbox("a");
        env.sandbox("b");

        // What dockerd refuses, with its status and words; nothing created.
        refused(
            env,
            "POST",
            "/networks/cfg/connect",
            r#"{"Container":"a"}"#,
            403,
            "cannot create endpoint on configuration-only network",
        );
        let err = env.docker_fails(&["network", "connect", "cfg", "a"]);
        assert!(err.contains("configuration-only network"), "{err}");
        for (body, status, want) in [
            (
                r#"{"Name":"x","ConfigFrom":{"Network":"cfg"},"IPAM":{"Config":[{"Subnet":"10.96.0.0/24"}]}}"#,
                403,
                "user specified configurations are not supported if the network depends on a configuration network (given: IPAM.Config)",
            ),
            (
                r#"{"Name":"x","ConfigFrom":{"Network":"cfg"},"EnableIPv6":true}"#,
                403,
                "(given: EnableIPv6)",
            ),
            (
                r#"{"Name":"x","ConfigFrom":{"Network":"cfg"},"Labels":{"a":"b"}}"#,
                403,
                "(given: Labels)",
            ),
            (
                r#"{"Name":"x","ConfigFrom":{"Network":"cfg"},"Options":{"com.docker.network.driver.mtu":"1300"}}"#,
                403,
                "network driver options are not supported if the network depends on a configuration network",
            ),
            (
                r#"{"Name":"x","ConfigFrom":{"Network":"nope"}}"#,
                404,
                "configuration network \"nope\" does not exist",
            ),
            (
                r#"{"Name":"x","ConfigFrom":{"Network":"ordinary"}}"#,
                404,
                "network ordinary is not a configuration network",
            ),
            (
                r#"{"Name":"x","ConfigOnly":true,"Internal":true}"#,
                403,
                "configuration network can only contain network specific fields",
            ),
            (
                r#"{"Name":"x","ConfigOnly":true,"Scope":"local"}"#,
                403,
                "[ ingress | internal | attachable | scope ]",
            ),
            (
                r#"{"Name":"x","ConfigOnly":true,"ConfigFrom":{"Network":"cfg"}}"#,
                403,
                "a configuration network cannot depend on another configuration network",
            ),
        ] {
            refused(env, "POST", "/networks/create", body, status, want);
        }
        let err = env.docker_fails(&[
            "network",
            "create",
            "--config-from",
            "cfg",
            "--subnet",
            "10.96.0.0/24",
            "x",
        ]);
        assert!(
            err.contains("user specified configurations are not supported"),
            "{err}"
        );
        let err = env.fails(&[
            "network",
            "create",
            "--config-from",
            "cfg",
            "-o",
            "k=v",
            "x",
        ]);
        assert!(
            err.contains("network driver options are not supported"),
            "{err}"
        );

        // A network from it: the settings are cfg's, shown with ConfigFrom.
        env.docker_ok(&["network", "create", "--config-from", "cfg", "web"]);
        let web = docker_inspect(env, "web");
        assert_eq!(web["ConfigFrom"]["Network"], "cfg", "{web}");
        assert_eq!(web["ConfigOnly"], false);
        assert_eq!(web["Driver"], "bridge");
        assert_eq!(web["IPAM"]["Config"][0]["Subnet"], "10.95.0.0/24");
        assert_eq!(web["IPAM"]["Config"][0]["Gateway"], "10.95.0.254");
        assert_eq!(web["IPAM"]["Config"][0]["IPRange"], "10.95.0.128/25");
        assert_eq!(web["Options"]["com.docker.network.driver.mtu"], "1400");
        assert_eq!(web["Labels"]["team"], "web");
        // ... and it is a real network with those settings.
        let a_ip = env.connect("web", "a");
        let b_ip = env.connect("web", "b");
        assert!(
            a_ip.starts_with("10.95.0.")
                && a_ip.rsplit('.').next().unwrap().parse::<u8>().unwrap() >= 128,
            "{a_ip}"
        );
        let mtu = env.exec_ok("a", &["cat", "/sys/class/net/eth0/mtu"]);
        assert_eq!(mtu.trim(), "1400");
        let route = env.exec_ok("a", &["ip", "-4", "route", "show", "default"]);
        assert!(route.contains("via 10.95.0.254"), "{route}");
        assert!(env.ping("a", &b_ip, 2), "a cannot reach b on web");

        // The tapnet CLI does the same.
        env.ok(&[
            "network",
            "create",
            "--config-only",
            "--subnet",
            "10.97.0.0/24",
            "--ipv6",
            "--subnet",
            "fd00:97::/64",
            "cfg6",
        ]);
        env.ok(&["network", "create", "--config-from", "cfg6", "db"]);
        let db = env.get("/networks/db");
        assert_eq!(db["ConfigFrom"]["Network"], "cfg6");
        assert_eq!(db["EnableIPv6"], true);
        assert_eq!(db["IPAM"]["Config"][1]["Subnet"], "fd00:97::/64");
        let cfg6 = env.get("/networks/cfg6");
        assert_eq!(cfg6["IPAM"]["Config"][1]["Gateway"], "", "{cfg6}");
        env.connect("db", "a");

        // In use: cannot be removed (dockerd's 403 and words).
        refused(
            env,
            "DELETE",
            "/networks/cfg",
            "",
            403,
            "configuration network \"cfg\" is in use",
        );
        let err = env.docker_fails(&["network", "rm", "cfg"]);
        assert!(err.contains("is in use"), "{err}");

        // A restart keeps all of it.
        let before = state(env);
        env.stop_daemon();
        env.start_daemon();
        assert_eq!(state(env), before, "state changed across a restart");
        assert_eq!(docker_inspect(env, "cfg")["ConfigOnly"], true);
        assert_eq!(docker_inspect(env, "web")["ConfigFrom"]["Network"], "cfg");
        assert!(env.ping("b", &a_ip, 2), "b cannot reach a after a restart");
        refused(env, "DELETE", "/networks/cfg", "", 403, "is in use");
        refused(
            env,
            "POST",
            "/networks/cfg/connect",
            r#"{"Container":"a"}"#,
            403,
            "configuration-only network",
        );
        // The twin took no pool: removing it frees nothing of web's.
        env.ok(&["network", "rm", "cfg-twin"]);
        env.sandbox("c");
        let c_ip = env.connect("web", "c");
        assert!(c_ip != a_ip && c_ip != b_ip, "{c_ip}");

        // Prune keeps configuration networks (as dockerd), used or not.
        env.ok(&["network", "create", "--config-only", "cfg-idle"]);
        let pruned = env.docker_ok(&["network", "prune", "-f"]);
        assert!(
            pruned.contains("ordinary") && !pruned.contains("cfg"),
            "{pruned}"
        );
        assert_eq!(env.get("/networks/cfg-idle")["ConfigOnly"], true);

        // Once web is gone, cfg can go.
        for s in ["a", "b", "c"] {
            env.ok(&["network", "disconnect", "web", s]);
        }
        env.docker_ok(&["network", "rm", "web"]);
        env.docker_ok(&["network", "rm", "cfg"]);
        let (code, _) = env.api("GET", "/networks/cfg", None);
        assert_eq!(code, 404);
    });
}

#[test]
fn unsupported_options_are_refused_by_name() {
    docker_bin();
    in_namespace("unsupported_options_are_refused_by_name", |env| {
        env.network("n1", "10.92.0.0/24");
        env.sandbox("a");
        env.sandbox("b");
        env.connect("n1", "a");
        let before = state(env);
        let docker_refusals: &[(&[&str], &str)] = &[
            (
                &["network", "create", "--scope", "swarm", "x"],
                "Scope \"swarm\" is not supported",
            ),
            (
                &["network", "create", "--scope", "global", "x"],
                "Scope \"global\" is not supported for driver bridge",
            ),
            (
                &["network", "create", "--ingress", "x"],
                "Ingress is not supported",
            ),
            (
                &["network", "connect", "--link", "a:db", "n1", "b"],
                "EndpointConfig.Links (a:db) is not supported",
            ),
            (
                &[
                    "network",
                    "connect",
                    "--link-local-ip",
                    "10.1.2.3",
                    "n1",
                    "b",
                ],
                "invalid link-local IP address \"10.1.2.3\"",
            ),
            (
                &[
                    "network",
                    "connect",
                    "--driver-opt",
                    "com.docker.network.endpoint.sysctls=x",
                    "n1",
                    "b",
                ],
                "endpoint driver option",
            ),
        ];
        for (args, want) in docker_refusals {
            let err = env.docker_fails(args);
            assert!(
                err.contains(want) || err.contains(&want.replace('"', "\\\"")),
                "docker {args:?}: {err}"
            );
            assert_eq!(state(env), before, "docker {args:?} changed something");
            // The tapnet CLI, same flags, same answer.
            let err = env.fails(args);
            assert!(
                err.contains(want) || err.contains(&want.replace('"', "\\\"")),
                "tapnet {args:?}: {err}"
            );
            assert_eq!(state(env), before, "tapnet {args:?} changed something");
        }
        // Flags of the docker CLI alone.
        for (args, want) in [
            (
                &["network", "create", "--ipv4=false", "x"][..],
                "EnableIPv4=false is not supported",
            ),
            (
                &["network", "connect", "--gw-priority", "5", "n1", "b"][..],
                "GwPriority",
            ),
        ] {
            let err = env.docker_fails(args);
            assert!(err.contains(want), "docker {args:?}: {err}");
            assert_eq!(state(env), before, "docker {args:?} changed something");
        }
        for (body, want) in [
            (
                r#"{"Name":"x","EnableIPv4":false}"#,
                "EnableIPv4=false is not supported",
            ),
            (
                r#"{"Name":"x","Scope":"planet"}"#,
                "invalid Scope \"planet\"",
            ),
            (
                r#"{"Name":"x","Driver":"null","Scope":"global"}"#,
                "Scope \"global\" is not supported for driver null",
            ),
        ] {
            refused(env, "POST", "/networks/create", body, 400, want);
        }
        for (cfg, want) in [
            (
                r#"{"GwPriority":1}"#,
                "EndpointConfig.GwPriority (1) is not supported",
            ),
            (
                r#"{"IPAMConfig":{"LinkLocalIPs":["169.254.0.0"]}}"#,
                "network and broadcast",
            ),
            (
                r#"{"IPAMConfig":{"LinkLocalIPs":["fd00::1"]}}"#,
                "fe80::/10",
            ),
            (
                r#"{"IPAMConfig":{"LinkLocalIPs":["nope"]}}"#,
                "not an IP address",
            ),
        ] {
            let body = format!(r#"{{"Container":"b","EndpointConfig":{cfg}}}"#);
            refused(env, "POST", "/networks/n1/connect", &body, 400, want);
        }
        // What is accepted: scope local, output-only connect fields (ignored as dockerd).
        env.docker_ok(&["network", "create", "--scope", "local", "loc"]);
        assert_eq!(docker_inspect(env, "loc")["Scope"], "local");
        let (code, v) = env.api(
            "POST",
            "/networks/n1/connect",
            Some(r#"{"Container":"b","EndpointConfig":{"NetworkID":"zz","EndpointID":"yy","IPAddress":"1.2.3.4","Gateway":"1.2.3.1","Links":[],"GwPriority":0}}"#),
        );
        assert_eq!(code, 200, "{v}");
        assert_ne!(env.ip_of("n1", "b"), "1.2.3.4");
    });
}

#[test]
fn link_local_ips() {
    docker_bin();
    in_namespace("link_local_ips", |env| {
        env.network("ll", "10.98.0.0/24");
        let a = env.sandbox("a");
        env.sandbox("b");
        env.sandbox("c");
        env.docker_ok(&[
            "network",
            "connect",
            "--link-local-ip",
            "169.254.10.1",
            "--link-local-ip",
            "fe80::a:1",
            "ll",
            "a",
        ]);
        env.ok(&[
            "network",
            "connect",
            "--link-local-ip",
            "169.254.10.2",
            "--link-local-ip",
            "fe80::a:2",
            "ll",
            "b",
        ]);
        // c has none: it does not answer for them.
        env.connect("ll", "c");
        let addrs = env.exec_ok("a", &["ip", "-o", "addr", "show", "dev", "eth0"]);
        assert!(addrs.contains("169.254.10.1/16"), "{addrs}");
        assert!(addrs.contains("fe80::a:1/64"), "{addrs}");
        // Shown in inspect (sandbox: Docker's IPAMConfig; network: the entry).
        let sb = env.get("/sandboxes/a");
        assert_eq!(
            sb["Endpoints"]["ll"]["IPAMConfig"]["LinkLocalIPs"],
            serde_json::json!(["169.254.10.1", "fe80::a:1"])
        );
        let net = docker_inspect(env, "ll");
        assert_eq!(
            net["Containers"][&a]["LinkLocalIPs"],
            serde_json::json!(["169.254.10.1", "fe80::a:1"])
        );
        // Reachable through the switch by link-local address, both families.
        assert!(env.ping("a", "169.254.10.2", 2), "IPv4 link-local a -> b");
        assert!(env.ping("b", "169.254.10.1", 2), "IPv4 link-local b -> a");
        assert!(env.ping("a", "fe80::a:2%eth0", 2), "IPv6 link-local a -> b");
        assert!(
            !env.ping("c", "169.254.10.1", 1),
            "c has no link-local route"
        );
        // A restart keeps them.
        env.stop_daemon();
        env.start_daemon();
        let addrs = env.exec_ok("a", &["ip", "-o", "addr", "show", "dev", "eth0"]);
        assert!(addrs.contains("169.254.10.1/16"), "{addrs}");
        assert!(env.ping("b", "169.254.10.1", 2), "after restart b -> a");
        assert!(
            env.ping("b", "fe80::a:1%eth0", 2),
            "after restart b -> a (IPv6)"
        );
        // A tap lost while the daemon was down is re-created from the record: the
        // asked-for name and the link-local addresses come back.
        env.sandbox("d");
        env.ok(&[
            "network",
            "connect",
            "--driver-opt",
            &format!("{IFNAME}=ll7"),
            "--link-local-ip",
            "169.254.10.7",
            "ll",
            "d",
        ]);
        let path_d = env.netns_path("d");
        env.stop_daemon();
        let out = env.nsenter(&path_d, &["ip", "link", "del", "ll7"]);
        assert!(out.status.success(), "{out:?}");
        env.start_daemon();
        assert!(
            env.daemon_log()
                .contains("re-creating it from the stored record"),
            "{}",
            env.daemon_log()
        );
        let addrs = env.exec_ok("d", &["ip", "-o", "addr", "show", "dev", "ll7"]);
        assert!(addrs.contains("169.254.10.7/16"), "{addrs}");
        assert!(
            env.ping("b", "169.254.10.7", 2),
            "re-created d by link-local"
        );

        // The same link-local address twice on a network: 409, nothing made.
        env.sandbox("e");
        refused(
            env,
            "POST",
            "/networks/ll/connect",
            r#"{"Container":"e","EndpointConfig":{"IPAMConfig":{"LinkLocalIPs":["169.254.10.2"]}}}"#,
            409,
            "link-local address 169.254.10.2 is already used on network ll",
        );
        // A network whose endpoints have no device takes no link-local address.
        refused(
            env,
            "POST",
            "/networks/none/connect",
            r#"{"Container":"e","EndpointConfig":{"IPAMConfig":{"LinkLocalIPs":["169.254.10.9"]}}}"#,
            400,
            "gives endpoints no device",
        );

        // Removed with the endpoint.
        env.docker_ok(&["network", "disconnect", "ll", "a"]);
        let addrs = env.exec_ok("a", &["ip", "-o", "addr", "show"]);
        assert!(!addrs.contains("169.254.10.1"), "{addrs}");
        assert!(
            !env.ping("b", "169.254.10.1", 1),
            "a's link-local address still answers"
        );
    });
}
