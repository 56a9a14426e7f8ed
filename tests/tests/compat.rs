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
