//! Input rules (issue 10 item 2): MACs unique per network and never the gateway's
//! (409); aliases are DNS labels, deduplicated case-insensitively, at most 64, never
//! dotted (400); subnets that are multicast, loopback, unspecified or link-local are
//! refused (400). Each refusal changes nothing; a fine request still works with
//! real traffic.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use serde_json::Value;
use tapnet_tests::{in_namespace, Env};

fn state(env: &Env) -> (Value, Value) {
    (env.get("/networks"), env.get("/sandboxes"))
}

/// Assert `POST path body` fails with `code` and a message containing each of
/// `needles`, and that the daemon's networks and sandboxes are unchanged.
fn rejects(env: &Env, path: &str, body: &str, code: u16, needles: &[&str]) {
    let before = state(env);
    let (got, v) = env.api("POST", path, Some(body));
    assert_eq!(got, code, "POST {path} {body} -> {got} {v}");
    let msg = v["message"]
        .as_str()
        .unwrap_or_else(|| panic!("no message in {v}"));
    for needle in needles {
        assert!(
            msg.to_lowercase().contains(&needle.to_lowercase()),
            "POST {path} {body}: message {msg:?} does not mention {needle:?}"
        );
    }
    assert_eq!(state(env), before, "state changed after rejected {body}");
}

fn connect_body(sandbox: &str, cfg: &str) -> String {
    format!(r#"{{"Container":"{sandbox}","EndpointConfig":{cfg}}}"#)
}

#[test]
fn macs_and_aliases_are_checked_and_a_fine_connect_works() {
    in_namespace(
        "macs_and_aliases_are_checked_and_a_fine_connect_works",
        |env| {
            env.network("net1", "10.97.0.0/24");
            for s in ["a", "b", "c"] {
                env.sandbox(s);
            }
            let path = "/networks/net1/connect";
            // A fine MAC and aliases; WEB and web are one alias (the first spelling kept).
            let (code, v) = env.api(
                "POST",
                path,
                Some(&connect_body(
                    "a",
                    r#"{"MacAddress":"02:aa:00:00:00:0a","Aliases":["web","WEB","api","Web"]}"#,
                )),
            );
            assert_eq!(code, 200, "{v}");
            let sb = env.get("/sandboxes/a");
            let ep = &sb["Endpoints"]["net1"];
            assert_eq!(ep["Aliases"], serde_json::json!(["web", "api"]), "{sb}");
            assert_eq!(ep["MacAddress"], "02:aa:00:00:00:0a", "{sb}");

            // The gateway's MAC (02:42:<gateway IPv4>) and a's MAC: 409, which one.
            let gw_mac = r#"{"MacAddress":"02:42:0a:61:00:01"}"#;
            rejects(
                env,
                path,
                &connect_body("b", gw_mac),
                409,
                &["02:42:0a:61:00:01", "gateway"],
            );
            rejects(
                env,
                path,
                &connect_body("b", r#"{"MacAddress":"02:AA:00:00:00:0A"}"#),
                409,
                &["02:aa:00:00:00:0a", "already used", "sandbox a"],
            );
            // Group (multicast/broadcast) and all-zero MACs: 400.
            for (mac, why) in [
                ("01:00:5e:00:00:01", "multicast"),
                ("03:00:00:00:00:01", "multicast"),
                ("ff:ff:ff:ff:ff:ff", "multicast"),
                ("00:00:00:00:00:00", "all-zero"),
            ] {
                let cfg = format!(r#"{{"MacAddress":"{mac}"}}"#);
                rejects(env, path, &connect_body("b", &cfg), 400, &[mac, why]);
            }
            // The CLI gets the same answer and nothing is connected.
            let before = state(env);
            let err = env.fails(&[
                "network",
                "connect",
                "--mac-address",
                "02:42:0a:61:00:01",
                "net1",
                "b",
            ]);
            assert!(err.contains("gateway"), "{err}");
            assert_eq!(state(env), before);

            // Aliases: DNS labels only, named in the message.
            for (alias, why) in [
                ("bad alias", "letters, digits, hyphens"),
                ("ctl\\u0001x", "control characters"),
                ("-web", "hyphen"),
                ("google.com", "shadow an outside name"),
                ("web.", "dot"),
            ] {
                let cfg = format!(r#"{{"Aliases":["ok","{alias}"]}}"#);
                let shown = serde_json::from_str::<String>(&format!("\"{alias}\"")).unwrap();
                rejects(
                    env,
                    path,
                    &connect_body("b", &cfg),
                    400,
                    &[&format!("{shown:?}"), why],
                );
            }
            let long = "x".repeat(64);
            rejects(
                env,
                path,
                &connect_body("b", &format!(r#"{{"Aliases":["{long}"]}}"#)),
                400,
                &[&long, "63"],
            );
            let many: Vec<String> = (0..65).map(|i| format!("\"a{i}\"")).collect();
            rejects(
                env,
                path,
                &connect_body("b", &format!(r#"{{"Aliases":[{}]}}"#, many.join(","))),
                400,
                &["too many aliases (65)", "at most 64"],
            );
            let before = state(env);
            let err = env.fails(&["network", "connect", "--alias", "google.com", "net1", "b"]);
            assert!(err.contains("google.com"), "{err}");
            assert_eq!(state(env), before);
            // tapnet run: refused, and it leaves no sandbox behind.
            let err = env.fails(&[
                "run",
                "--name",
                "r1",
                "--network",
                "net1",
                "--alias",
                "google.com",
                "--",
                "true",
            ]);
            assert!(err.contains("google.com"), "{err}");
            assert_eq!(state(env), before);

            // 64 aliases are fine; b and c connect normally and reach a by its alias.
            let max: Vec<String> = (0..64).map(|i| format!("\"b{i}\"")).collect();
            let (code, v) = env.api(
                "POST",
                path,
                Some(&connect_body(
                    "b",
                    &format!(r#"{{"Aliases":[{}]}}"#, max.join(",")),
                )),
            );
            assert_eq!(code, 200, "{v}");
            env.ok(&["network", "connect", "--alias", "db", "net1", "c"]);
            let c = env.get("/sandboxes/c");
            // c's 02:42:<IPv4> MAC is unique and not the gateway's.
            let c_mac = c["Endpoints"]["net1"]["MacAddress"].as_str().unwrap();
            assert!(c_mac != "02:42:0a:61:00:01" && c_mac != "02:aa:00:00:00:0a");
            assert!(env.ping("b", "web", 2), "b pings a by alias web");
            assert!(env.ping("c", "api", 2), "c pings a by alias api");
            assert!(env.ping("c", "WEB", 2), "names compare case-insensitively");
            assert!(env.ping("a", "db", 2), "a pings c by alias db");
            assert!(env.ping("a", "b63", 2), "a pings b by its 64th alias");
            let gw = env.gateway_of("net1");
            assert!(env.ping("c", &gw, 2), "the gateway still answers");
        },
    );
}

#[test]
fn unusable_subnets_are_refused_before_anything_is_reserved() {
    in_namespace(
        "unusable_subnets_are_refused_before_anything_is_reserved",
        |env| {
            let create = "/networks/create";
            let v4 =
                |s: &str| format!(r#"{{"Name":"bad","IPAM":{{"Config":[{{"Subnet":"{s}"}}]}}}}"#);
            let v6 = |s: &str| {
                format!(
                    r#"{{"Name":"bad","EnableIPv6":true,"IPAM":{{"Config":[{{"Subnet":"10.96.0.0/24"}},{{"Subnet":"{s}"}}]}}}}"#
                )
            };
            for (subnet, class) in [
                ("224.1.0.0/24", "multicast"),
                ("239.0.0.0/8", "multicast"),
                ("127.0.0.0/24", "loopback"),
                ("0.0.0.0/8", "unspecified"),
                ("0.0.0.0/0", "unspecified"),
                ("169.254.0.0/24", "link-local"),
                ("240.0.0.0/24", "reserved"),
            ] {
                rejects(env, create, &v4(subnet), 400, &[subnet, class]);
            }
            for (subnet, class) in [
                ("ff02::/64", "multicast"),
                ("::/64", "unspecified"),
                ("::/0", "unspecified"),
                ("fe80::/64", "link-local"),
            ] {
                rejects(env, create, &v6(subnet), 400, &[subnet, class]);
            }
            // The CLI says the same; nothing was created, nothing reserved: the good
            // subnet used above is still free.
            let before = state(env);
            let err = env.fails(&["network", "create", "--subnet", "224.1.0.0/24", "m"]);
            assert!(
                err.contains("224.1.0.0/24") && err.contains("multicast"),
                "{err}"
            );
            let err = env.fails(&[
                "network",
                "create",
                "--ipv6",
                "--subnet",
                "10.96.0.0/24",
                "--subnet",
                "ff02::/64",
                "m6",
            ]);
            assert!(
                err.contains("ff02::/64") && err.contains("multicast"),
                "{err}"
            );
            assert_eq!(state(env), before);
            let ls = env.ok(&["network", "ls"]);
            assert!(!ls.contains("bad") && !ls.contains(" m "), "{ls}");
            assert!(
                !env.daemon_log().contains("panicked"),
                "a request reached a panic"
            );
            env.ok(&[
                "network",
                "create",
                "--ipv6",
                "--subnet",
                "10.96.0.0/24",
                "--subnet",
                "fd00:96::/64",
                "good",
            ]);
            env.sandbox("a");
            env.sandbox("b");
            env.connect("good", "a");
            let ip_b = env.connect("good", "b");
            assert!(env.ping("a", &ip_b, 2), "a reaches b on the fine network");
        },
    );
}
