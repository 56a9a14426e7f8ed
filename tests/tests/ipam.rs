//! Drivers, pre-defined networks and IPAM: real daemon, real sandboxes, real traffic.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use serde_json::Value;
use tapnet_tests::{in_namespace, Env};

fn state(env: &Env) -> (Value, Value) {
    (env.get("/networks"), env.get("/sandboxes"))
}

/// Assert a request fails with `code` and a message containing every `needle`, and
/// that the daemon's state is unchanged afterwards.
fn rejects(env: &Env, method: &str, path: &str, body: &str, code: u16, needles: &[&str]) {
    let before = state(env);
    let (got, v) = env.api(method, path, Some(body));
    assert_eq!(got, code, "{method} {path} {body} -> {got} {v}");
    let msg = v["message"]
        .as_str()
        .unwrap_or_else(|| panic!("no message in {v}"));
    for needle in needles {
        assert!(
            msg.contains(needle),
            "{method} {path} {body}: message {msg:?} does not mention {needle:?}"
        );
    }
    assert_eq!(state(env), before, "state changed after rejected {body}");
}

fn create(env: &Env, body: &str) -> String {
    let v = env.api_ok("POST", "/networks/create", Some(body));
    v["Id"].as_str().unwrap().to_string()
}

fn connect(env: &Env, net: &str, sandbox: &str, ipam_config: &str) {
    let body =
        format!(r#"{{"Container":"{sandbox}","EndpointConfig":{{"IPAMConfig":{ipam_config}}}}}"#);
    env.api_ok("POST", &format!("/networks/{net}/connect"), Some(&body));
}

fn subnet_of(env: &Env, net: &str) -> String {
    let v = env.get(&format!("/networks/{net}"));
    v["IPAM"]["Config"][0]["Subnet"]
        .as_str()
        .unwrap_or_else(|| panic!("no subnet in {v}"))
        .to_string()
}

#[test]
fn predefined_networks_exist_and_stay() {
    in_namespace("predefined_networks_exist_and_stay", |env| {
        let nets = env.get("/networks");
        let mut names: Vec<(&str, &str)> = nets
            .as_array()
            .unwrap()
            .iter()
            .map(|n| (n["Name"].as_str().unwrap(), n["Driver"].as_str().unwrap()))
            .collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [("bridge", "bridge"), ("host", "host"), ("none", "null")]
        );
        let bridge = env.get("/networks/bridge");
        assert_eq!(bridge["IPAM"]["Config"][0]["Subnet"], "172.17.0.0/16");
        assert_eq!(bridge["IPAM"]["Config"][0]["Gateway"], "172.17.0.1");
        for n in ["none", "host"] {
            let v = env.get(&format!("/networks/{n}"));
            assert_eq!(v["IPAM"]["Config"], serde_json::json!([]), "{v}");
        }
        for n in ["bridge", "host", "none"] {
            let before = state(env);
            let (code, v) = env.api("DELETE", &format!("/networks/{n}"), None);
            assert_eq!(code, 403, "{v}");
            assert!(
                v["message"]
                    .as_str()
                    .unwrap()
                    .contains("pre-defined network"),
                "{v}"
            );
            assert_eq!(state(env), before);
        }
        rejects(
            env,
            "POST",
            "/networks/create",
            r#"{"Name":"host2","Driver":"host"}"#,
            403,
            &["only one instance of \"host\" network"],
        );
        rejects(
            env,
            "POST",
            "/networks/create",
            r#"{"Name":"none2","Driver":"null"}"#,
            403,
            &["only one instance of \"null\" network"],
        );
        // Prune leaves them alone; a user network takes the next default pool.
        env.api_ok("POST", "/networks/prune", None);
        assert_eq!(env.get("/networks").as_array().unwrap().len(), 3);
        create(env, r#"{"Name":"user1"}"#);
        assert_eq!(subnet_of(env, "user1"), "172.18.0.0/16");
        // A restart keeps exactly one of each.
        env.stop_daemon();
        env.start_daemon();
        let nets = env.get("/networks");
        for n in ["bridge", "host", "none"] {
            let count = nets
                .as_array()
                .unwrap()
                .iter()
                .filter(|x| x["Name"] == n)
                .count();
            assert_eq!(count, 1, "{n} after restart: {nets}");
        }
        assert_eq!(subnet_of(env, "bridge"), "172.17.0.0/16");
        // The user network was restored from the store with its pool.
        assert_eq!(subnet_of(env, "user1"), "172.18.0.0/16");
        create(env, r#"{"Name":"user2"}"#);
        assert_eq!(subnet_of(env, "user2"), "172.19.0.0/16");
        // Traffic on the default bridge.
        env.sandbox("a");
        env.sandbox("b");
        let ip_a = env.connect("bridge", "a");
        let ip_b = env.connect("bridge", "b");
        assert!(ip_a.starts_with("172.17.0."), "{ip_a}");
        assert!(env.ping("a", &ip_b, 2), "a cannot ping b on bridge");
    });
}

#[test]
fn default_bridge_skips_host_route() {
    in_namespace("default_bridge_skips_host_route", |env| {
        env.stop_daemon();
        // A device with 172.17.5.1/24 on the daemon's host: a dummy where the kernel
        // has the module, else a tap (both give a connected route in the main table).
        let dummy = std::process::Command::new("ip")
            .args(["link", "add", "hostif0", "type", "dummy"])
            .status()
            .unwrap();
        if !dummy.success() {
            env.host_cmd(&["ip", "tuntap", "add", "dev", "hostif0", "mode", "tap"]);
        }
        env.host_cmd(&["ip", "addr", "add", "172.17.5.1/24", "dev", "hostif0"]);
        env.host_cmd(&["ip", "link", "set", "hostif0", "up"]);
        let routes = std::process::Command::new("ip")
            .args(["-4", "route", "show"])
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&routes.stdout).contains("172.17.5.0/24"),
            "{routes:?}"
        );
        env.restart_fresh(&[]);
        assert_eq!(subnet_of(env, "bridge"), "172.18.0.0/16");
        create(env, r#"{"Name":"user1"}"#);
        assert_eq!(subnet_of(env, "user1"), "172.19.0.0/16");
        // An explicit subnet is the user's choice, even on a host route.
        create(
            env,
            r#"{"Name":"explicit","IPAM":{"Config":[{"Subnet":"172.17.0.0/16"}]}}"#,
        );
    });
}

#[test]
fn daemon_flags_bip_fixed_cidr_default_pools() {
    in_namespace("daemon_flags_bip_fixed_cidr_default_pools", |env| {
        env.restart_fresh(&[
            "--bip",
            "10.99.0.1/24",
            "--fixed-cidr",
            "10.99.0.128/25",
            "--default-address-pool",
            "base=10.200.0.0/16,size=24",
            "--default-address-pool",
            "base=10.201.0.0/16,size=26",
        ]);
        let bridge = env.get("/networks/bridge");
        let cfg = &bridge["IPAM"]["Config"][0];
        assert_eq!(cfg["Subnet"], "10.99.0.0/24", "{bridge}");
        assert_eq!(cfg["Gateway"], "10.99.0.1", "{bridge}");
        assert_eq!(cfg["IPRange"], "10.99.0.128/25", "{bridge}");
        env.sandbox("a");
        env.sandbox("b");
        assert_eq!(env.connect("bridge", "a"), "10.99.0.128");
        assert_eq!(env.connect("bridge", "b"), "10.99.0.129");
        assert!(env.ping("a", "10.99.0.129", 2));
        create(env, r#"{"Name":"p1"}"#);
        create(env, r#"{"Name":"p2"}"#);
        assert_eq!(subnet_of(env, "p1"), "10.200.0.0/24");
        assert_eq!(subnet_of(env, "p2"), "10.200.1.0/24");
        // --fixed-cidr alone is the bridge's subnet; a bad flag stops the daemon.
        env.stop_daemon();
        let out = std::process::Command::new(
            std::env::current_exe()
                .unwrap()
                .parent()
                .unwrap()
                .parent()
                .unwrap()
                .join("tapnetd"),
        )
        .args(["--default-address-pool", "base=10.0.0.0/16"])
        .output()
        .unwrap();
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("size=N are required"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        env.restart_fresh(&["--fixed-cidr", "10.98.0.0/24"]);
        let cfg = &env.get("/networks/bridge")["IPAM"]["Config"][0];
        assert_eq!(cfg["Subnet"], "10.98.0.0/24");
        assert_eq!(cfg["Gateway"], "10.98.0.1");
    });
}

#[test]
fn none_network_sandbox_has_only_loopback() {
    in_namespace("none_network_sandbox_has_only_loopback", |env| {
        env.sandbox("a");
        env.api_ok(
            "POST",
            "/networks/none/connect",
            Some(r#"{"Container":"a"}"#),
        );
        let links = env.exec_ok("a", &["ip", "-o", "link", "show"]);
        let names: Vec<&str> = links.lines().filter_map(|l| l.split(": ").nth(1)).collect();
        assert_eq!(names, ["lo"], "{links}");
        let none = env.get("/networks/none");
        let c = none["Containers"].as_object().unwrap();
        assert_eq!(c.len(), 1, "{none}");
        let c = c.values().next().unwrap();
        assert_eq!(c["Name"], "a");
        assert_eq!(c["IPv4Address"], "");
        assert_eq!(c["MacAddress"], "");
        // none excludes every other network (Docker's rule), both ways.
        rejects(
            env,
            "POST",
            "/networks/bridge/connect",
            r#"{"Container":"a"}"#,
            400,
            &["none", "disconnect it first"],
        );
        // Static addresses make no sense there.
        env.sandbox("b");
        rejects(
            env,
            "POST",
            "/networks/none/connect",
            r#"{"Container":"b","EndpointConfig":{"IPAMConfig":{"IPv4Address":"10.0.0.5"}}}"#,
            400,
            &["no addresses"],
        );
        env.connect("bridge", "b");
        rejects(
            env,
            "POST",
            "/networks/host/connect",
            r#"{"Container":"b"}"#,
            400,
            &["bridge", "disconnect them first"],
        );
        env.api_ok(
            "POST",
            "/networks/none/disconnect",
            Some(r#"{"Container":"a"}"#),
        );
        assert_eq!(
            env.get("/networks/none")["Containers"],
            serde_json::json!({})
        );
        // The host network: a record, no device.
        env.api_ok(
            "POST",
            "/networks/host/connect",
            Some(r#"{"Container":"a"}"#),
        );
        let links = env.exec_ok("a", &["ip", "-o", "link", "show"]);
        assert_eq!(links.lines().count(), 1, "{links}");
    });
}

#[test]
fn ip_range_and_aux_addresses() {
    in_namespace("ip_range_and_aux_addresses", |env| {
        create(
            env,
            r#"{"Name":"r","IPAM":{"Config":[{"Subnet":"10.40.0.0/24","IPRange":"10.40.0.16/28",
                "Gateway":"10.40.0.254","AuxiliaryAddresses":{"router":"10.40.0.16","printer":"10.40.0.17"}}]}}"#,
        );
        let v = env.get("/networks/r");
        let cfg = &v["IPAM"]["Config"][0];
        assert_eq!(cfg["IPRange"], "10.40.0.16/28", "{v}");
        assert_eq!(cfg["Gateway"], "10.40.0.254", "{v}");
        assert_eq!(
            cfg["AuxiliaryAddresses"],
            serde_json::json!({"printer": "10.40.0.17", "router": "10.40.0.16"})
        );
        for s in ["a", "b", "c"] {
            env.sandbox(s);
        }
        // Dynamic: from the range, aux addresses skipped.
        assert_eq!(env.connect("r", "a"), "10.40.0.18");
        // Static: anywhere in the subnet.
        connect(env, "r", "b", r#"{"IPv4Address":"10.40.0.5"}"#);
        assert_eq!(env.ip_of("r", "b"), "10.40.0.5");
        assert!(env.ping("a", "10.40.0.5", 2));
        assert!(env.ping("b", "10.40.0.18", 2));
        // Taken, auxiliary, gateway, outside: refused, nothing changes.
        for (addr, code, needle) in [
            ("10.40.0.5", 409, "already in use"),
            ("10.40.0.16", 409, "already in use"),
            ("10.40.0.254", 409, "already in use"),
            ("10.41.0.5", 400, "not in subnet"),
            ("10.40.0.255", 400, "broadcast"),
        ] {
            let body = format!(
                r#"{{"Container":"c","EndpointConfig":{{"IPAMConfig":{{"IPv4Address":"{addr}"}}}}}}"#
            );
            rejects(env, "POST", "/networks/r/connect", &body, code, &[needle]);
        }
        assert_eq!(env.connect("r", "c"), "10.40.0.19");
    });
}

#[test]
fn ipv6_dual_stack_traffic() {
    in_namespace("ipv6_dual_stack_traffic", |env| {
        create(
            env,
            r#"{"Name":"v6","EnableIPv6":true,"IPAM":{"Config":[{"Subnet":"10.50.0.0/24"},
                {"Subnet":"fd00:50::/64","Gateway":"fd00:50::1","AuxiliaryAddresses":{"x":"fd00:50::2"}}]}}"#,
        );
        let v = env.get("/networks/v6");
        assert_eq!(v["EnableIPv6"], true);
        assert_eq!(v["IPAM"]["Config"][1]["Subnet"], "fd00:50::/64", "{v}");
        assert_eq!(v["IPAM"]["Config"][1]["Gateway"], "fd00:50::1", "{v}");
        env.sandbox("a");
        env.sandbox("b");
        env.connect("v6", "a");
        connect(env, "v6", "b", r#"{"IPv6Address":"fd00:50::99"}"#);
        let v = env.get("/networks/v6");
        let by_name = |n: &str| {
            v["Containers"]
                .as_object()
                .unwrap()
                .values()
                .find(|c| c["Name"] == n)
                .cloned()
                .unwrap()
        };
        let (ca, cb) = (by_name("a"), by_name("b"));
        assert_eq!(ca["IPv6Address"], "fd00:50::3/64", "aux skipped: {v}");
        assert_eq!(cb["IPv6Address"], "fd00:50::99/64", "static --ip6: {v}");
        assert_eq!(ca["IPv4Address"], "10.50.0.2/24");
        assert_eq!(ca["MacAddress"], "02:42:0a:32:00:02");
        let sb = env.get("/sandboxes/a");
        assert_eq!(sb["Endpoints"]["v6"]["IPv6Address"], "fd00:50::3/64");
        assert_eq!(sb["Endpoints"]["v6"]["IPv6Gateway"], "fd00:50::1");
        // Both families on the tap, default routes for both.
        let addrs = env.exec_ok("a", &["ip", "-o", "addr", "show", "eth0"]);
        assert!(
            addrs.contains("10.50.0.2/24") && addrs.contains("fd00:50::3/64"),
            "{addrs}"
        );
        let ours = addrs.lines().find(|l| l.contains("fd00:50::3")).unwrap();
        assert!(
            ours.contains("nodad") && !ours.contains("tentative"),
            "{addrs}"
        );
        let r6 = env.exec_ok("a", &["ip", "-6", "route", "show", "default"]);
        assert!(r6.contains("via fd00:50::1 dev eth0"), "{r6}");
        let r4 = env.exec_ok("a", &["ip", "-4", "route", "show", "default"]);
        assert!(r4.contains("via 10.50.0.1 dev eth0"), "{r4}");
        // Real traffic, both families, both ways.
        for (from, to) in [("a", "fd00:50::99"), ("b", "fd00:50::3")] {
            let out = env.exec(
                from,
                &[
                    "ping", "-6", "-n", "-q", "-c", "3", "-i", "0.2", "-W", "2", to,
                ],
            );
            assert!(
                out.status.success(),
                "{from} cannot ping -6 {to}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert!(env.ping("a", "10.50.0.3", 2));
        assert!(env.ping("b", "10.50.0.2", 2));
        // Static IPv6 taken or outside: refused; disconnect frees it.
        env.sandbox("c");
        for (addr, code, needle) in [
            ("fd00:50::99", 409, "already in use"),
            ("fd00:51::1", 400, "not in subnet"),
            ("10.50.0.9", 400, "invalid IPv6Address"),
        ] {
            let body = format!(
                r#"{{"Container":"c","EndpointConfig":{{"IPAMConfig":{{"IPv6Address":"{addr}"}}}}}}"#
            );
            rejects(env, "POST", "/networks/v6/connect", &body, code, &[needle]);
        }
        env.api_ok(
            "POST",
            "/networks/v6/disconnect",
            Some(r#"{"Container":"b"}"#),
        );
        connect(env, "v6", "c", r#"{"IPv6Address":"fd00:50::99"}"#);
        // An IPv6 address on an IPv4-only network is refused.
        create(
            env,
            r#"{"Name":"v4only","IPAM":{"Config":[{"Subnet":"10.51.0.0/24"}]}}"#,
        );
        rejects(
            env,
            "POST",
            "/networks/v4only/connect",
            r#"{"Container":"a","EndpointConfig":{"IPAMConfig":{"IPv6Address":"fd00::5"}}}"#,
            400,
            &["EnableIPv6"],
        );
    });
}

#[test]
fn bad_ipam_config_is_refused_and_changes_nothing() {
    in_namespace("bad_ipam_config_is_refused_and_changes_nothing", |env| {
        create(
            env,
            r#"{"Name":"net1","IPAM":{"Config":[{"Subnet":"10.60.0.0/24"}]}}"#,
        );
        let cases: &[(&str, u16, &[&str])] = &[
            (
                r#"{"Name":"x","IPAM":{"Config":[{"Subnet":"10.60.0.128/25"}]}}"#,
                409,
                &["overlaps", "network net1", "10.60.0.0/24"],
            ),
            (
                r#"{"Name":"x","IPAM":{"Config":[{"Subnet":"10.0.0.0/8"}]}}"#,
                409,
                &["overlaps", "network net1"],
            ),
            (
                r#"{"Name":"x","IPAM":{"Config":[{"Subnet":"10.61.0.0/33"}]}}"#,
                400,
                &["invalid subnet"],
            ),
            (
                r#"{"Name":"x","IPAM":{"Config":[{"Subnet":"10.61.0.0/24","Gateway":"10.62.0.1"}]}}"#,
                400,
                &["gateway", "not in subnet"],
            ),
            (
                r#"{"Name":"x","IPAM":{"Config":[{"Subnet":"10.61.0.0/24","IPRange":"10.62.0.0/25"}]}}"#,
                400,
                &["IPRange", "10.61.0.0/24"],
            ),
            (
                r#"{"Name":"x","IPAM":{"Config":[{"Subnet":"10.61.0.0/24","AuxiliaryAddresses":{"r":"10.62.0.1"}}]}}"#,
                400,
                &["auxiliary address r=10.62.0.1", "not in subnet"],
            ),
            (
                r#"{"Name":"x","IPAM":{"Config":[{"Subnet":"10.61.0.0/24","AuxiliaryAddresses":{"r":"10.61.0.1"}}]}}"#,
                409,
                &["auxiliary address r=10.61.0.1", "in use"],
            ),
            (
                r#"{"Name":"x","IPAM":{"Config":[{"Subnet":"10.61.0.0/24"},{"Subnet":"fd00:61::/64"}]}}"#,
                400,
                &["EnableIPv6"],
            ),
            (
                r#"{"Name":"x","EnableIPv6":true,"IPAM":{"Config":[{"Subnet":"fd00:61::/64","Gateway":"10.61.0.1"}]}}"#,
                400,
                &["invalid gateway"],
            ),
            (
                r#"{"Name":"x","Driver":"nosuch"}"#,
                404,
                &["plugin \"nosuch\" not found"],
            ),
        ];
        for (body, code, needles) in cases {
            rejects(env, "POST", "/networks/create", body, *code, needles);
        }
        // The failed IPv6 attempt released its IPv4 pool: the same subnets work now.
        create(
            env,
            r#"{"Name":"x","EnableIPv6":true,"IPAM":{"Config":[{"Subnet":"10.61.0.0/24"},{"Subnet":"fd00:61::/64"}]}}"#,
        );
        rejects(
            env,
            "POST",
            "/networks/create",
            r#"{"Name":"y","EnableIPv6":true,"IPAM":{"Config":[{"Subnet":"10.63.0.0/24"},{"Subnet":"fd00:61::/80"}]}}"#,
            409,
            &["overlaps", "network x"],
        );
    });
}

#[test]
fn exhaustion_says_what_to_do_and_disconnect_frees() {
    in_namespace("exhaustion_says_what_to_do_and_disconnect_frees", |env| {
        create(
            env,
            r#"{"Name":"tiny","IPAM":{"Config":[{"Subnet":"10.70.0.0/30"}]}}"#,
        );
        env.sandbox("a");
        env.sandbox("b");
        assert_eq!(env.connect("tiny", "a"), "10.70.0.2");
        rejects(
            env,
            "POST",
            "/networks/tiny/connect",
            r#"{"Container":"b"}"#,
            503,
            &[
                "network tiny",
                "no free address in 10.70.0.0/30",
                "larger --subnet",
                "disconnecting",
            ],
        );
        env.api_ok(
            "POST",
            "/networks/tiny/disconnect",
            Some(r#"{"Container":"a"}"#),
        );
        assert_eq!(env.connect("tiny", "b"), "10.70.0.2");
        // No tap was leaked in a by the failed and the undone attempts.
        let links = env.exec_ok("a", &["ip", "-o", "link", "show"]);
        assert_eq!(links.lines().count(), 1, "{links}");
    });
}
