//! The stock `docker` CLI pointed at tapnetd's socket: `docker network
//! ls|create|inspect|rm|connect|disconnect|prune` work, with real traffic.
//!
//! These tests need a `docker` client on PATH (scripts/test.sh installs docker.io);
//! without one they fail with a message saying so, they never pass silently.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use serde_json::Value;
use tapnet_tests::{docker_bin, in_namespace, Env};

fn state(env: &Env) -> (Value, Value) {
    (env.get("/networks"), env.get("/sandboxes"))
}

fn json_lines(out: &str) -> Vec<Value> {
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

#[test]
fn docker_cli_create_ls_inspect_rm() {
    docker_bin();
    in_namespace("docker_cli_create_ls_inspect_rm", |env| {
        // The CLI negotiates our API version.
        let v = env.docker_ok(&["version", "--format", "{{.Server.APIVersion}}"]);
        assert_eq!(v.trim(), "1.47");

        let id = env.docker_ok(&[
            "network",
            "create",
            "--subnet",
            "10.91.0.0/24",
            "--gateway",
            "10.91.0.1",
            "--ip-range",
            "10.91.0.128/25",
            "--label",
            "team=web",
            "--opt",
            "com.docker.network.driver.mtu=1400",
            "--internal",
            "--attachable",
            "web",
        ]);
        let id = id.trim().to_string();
        assert_eq!(id.len(), 64, "{id}");
        env.docker_ok(&["network", "create", "--label", "team=db", "db"]);

        // ls: table, -q, --no-trunc, --format json, filters.
        let ls = env.docker_ok(&["network", "ls"]);
        let mut lines = ls.lines();
        assert!(lines.next().unwrap().starts_with("NETWORK ID"), "{ls}");
        assert!(
            ls.contains(&id[..12]) && ls.contains("web") && ls.contains("db"),
            "{ls}"
        );
        let q = env.docker_ok(&["network", "ls", "-q", "--filter", "name=we"]);
        assert_eq!(q.trim(), &id[..12]);
        let q = env.docker_ok(&[
            "network",
            "ls",
            "-q",
            "--no-trunc",
            "--filter",
            "label=team=web",
        ]);
        assert_eq!(q.trim(), id);
        let q = env.docker_ok(&["network", "ls", "-q", "--filter", "label=team"]);
        assert_eq!(q.lines().count(), 2, "{q}");
        let q = env.docker_ok(&[
            "network",
            "ls",
            "-q",
            "--filter",
            &format!("id={}", &id[..6]),
        ]);
        assert_eq!(q.trim(), &id[..12]);
        // The pre-defined networks are the builtin ones.
        let q = env.docker_ok(&[
            "network",
            "ls",
            "--format",
            "{{.Name}} {{.Driver}}",
            "--filter",
            "type=builtin",
        ]);
        let mut builtin: Vec<&str> = q.lines().collect();
        builtin.sort_unstable();
        assert_eq!(builtin, ["bridge bridge", "host host", "none null"], "{q}");
        let q = env.docker_ok(&[
            "network",
            "ls",
            "-q",
            "--filter",
            "type=custom",
            "--filter",
            "driver=bridge",
        ]);
        assert_eq!(q.lines().count(), 2, "{q}");
        let rows = json_lines(
            &env.docker_ok(&["network", "ls", "--format", "json", "--filter", "name=web"]),
        );
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0]["Name"], "web");
        assert_eq!(rows[0]["Internal"], "true");
        assert_eq!(rows[0]["Labels"], "team=web");
        let names = env.docker_ok(&["network", "ls", "--format", "{{.Name}}"]);
        let mut names: Vec<&str> = names.lines().collect();
        names.sort_unstable();
        assert_eq!(names, ["bridge", "db", "host", "none", "web"]);

        // inspect: by name, by id prefix, verbose.
        let out = env.docker_ok(&["network", "inspect", "web"]);
        let v: Value = serde_json::from_str(&out).unwrap();
        let n = &v[0];
        assert_eq!(n["Id"], id.as_str());
        assert_eq!(n["Internal"], true);
        assert_eq!(n["Attachable"], true);
        assert_eq!(n["IPAM"]["Config"][0]["Subnet"], "10.91.0.0/24");
        assert_eq!(n["IPAM"]["Config"][0]["Gateway"], "10.91.0.1");
        assert_eq!(n["IPAM"]["Config"][0]["IPRange"], "10.91.0.128/25");
        assert_eq!(n["Labels"]["team"], "web");
        assert_eq!(n["Options"]["com.docker.network.driver.mtu"], "1400");
        let out = env.docker_ok(&["network", "inspect", "-v", &id[..10]]);
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v[0]["Name"], "web");
        let f = env.docker_ok(&[
            "network",
            "inspect",
            "--format",
            "{{.Driver}} {{.Scope}}",
            "db",
        ]);
        assert_eq!(f.trim(), "bridge local");

        // Refusals carry the daemon's message and change nothing.
        let before = state(env);
        let err = env.docker_fails(&["network", "create", "web"]);
        assert!(
            err.contains("network with name web already exists"),
            "{err}"
        );
        let err = env.docker_fails(&["network", "create", "--subnet", "10.91.0.0/25", "overlap"]);
        assert!(err.contains("overlaps"), "{err}");
        let err = env.docker_fails(&["network", "create", "-d", "nosuchdriver", "x"]);
        assert!(err.contains("nosuchdriver"), "{err}");
        let err = env.docker_fails(&["network", "inspect", "nosuch"]);
        assert!(err.contains("nosuch"), "{err}");
        let err = env.docker_fails(&["network", "ls", "--filter", "bogus=1"]);
        assert!(err.contains("invalid filter 'bogus'"), "{err}");
        let err = env.docker_fails(&["network", "connect", "web", "nosuchsandbox"]);
        assert!(err.contains("sandbox nosuchsandbox not found"), "{err}");
        let out = env.docker_with(&[("DOCKER_API_VERSION", "1.99")], &["network", "ls"]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("client version 1.99 is too new. Maximum supported API version is 1.47"),
            "{err}"
        );
        let out = env.docker_with(&[("DOCKER_API_VERSION", "1.99")], &["network", "rm", "web"]);
        assert!(!out.status.success());
        // A docker verb tapnet does not serve says what it serves.
        let err = env.docker_fails(&["ps"]);
        assert!(
            err.contains("serves only Docker's network endpoints"),
            "{err}"
        );
        assert_eq!(
            state(env),
            before,
            "a refused docker command changed the state"
        );

        // rm: several at once, one failing.
        let out = env.docker_with(&[], &["network", "rm", "web", "nosuch", "db"]);
        assert!(!out.status.success());
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            stdout.lines().collect::<Vec<_>>(),
            ["web", "db"],
            "{stdout}"
        );
        assert!(String::from_utf8_lossy(&out.stderr).contains("nosuch"));
        assert_eq!(
            env.docker_ok(&["network", "ls", "-q", "--filter", "type=custom"]),
            ""
        );
    });
}

#[test]
fn docker_cli_connect_alias_mac_and_traffic() {
    docker_bin();
    in_namespace("docker_cli_connect_alias_mac_and_traffic", |env| {
        env.docker_ok(&["network", "create", "--subnet", "10.92.0.0/24", "front"]);
        env.docker_ok(&["network", "create", "--subnet", "10.93.0.0/24", "back"]);
        let sb1 = env.sandbox("sb1");
        env.sandbox("sb2");
        // A docker "container" is a sandbox, by name or id.
        env.docker_ok(&[
            "network",
            "connect",
            "--ip",
            "10.92.0.50",
            "--alias",
            "web",
            "--alias",
            "www",
            "front",
            "sb1",
        ]);
        env.docker_ok(&[
            "network",
            "connect",
            "front",
            &env.get("/sandboxes/sb2")["Id"].as_str().unwrap()[..12],
        ]);
        assert!(
            env.ping("sb2", "10.92.0.50", 3),
            "sb2 cannot ping sb1 on front"
        );
        let sb2_front = env.ip_of("front", "sb2");
        assert!(
            env.ping("sb1", &sb2_front, 2),
            "sb1 cannot ping sb2 on front"
        );

        let v: Value =
            serde_json::from_str(&env.docker_ok(&["network", "inspect", "front"])).unwrap();
        let c = &v[0]["Containers"][&sb1];
        assert_eq!(c["Name"], "sb1");
        assert_eq!(c["IPv4Address"], "10.92.0.50/24");
        assert_eq!(c["Aliases"], serde_json::json!(["web", "www"]));

        // A custom MAC (docker's CLI has no flag for it; tapnet's has, and the API
        // field is docker's EndpointConfig.MacAddress).
        env.ok(&[
            "network",
            "connect",
            "--mac-address",
            "02:aa:bb:00:00:01",
            "--alias",
            "api",
            "back",
            "sb1",
        ]);
        env.ok(&["network", "connect", "back", "sb2"]);
        let v: Value =
            serde_json::from_str(&env.docker_ok(&["network", "inspect", "back"])).unwrap();
        assert_eq!(v[0]["Containers"][&sb1]["MacAddress"], "02:aa:bb:00:00:01");
        assert_eq!(
            v[0]["Containers"][&sb1]["Aliases"],
            serde_json::json!(["api"])
        );
        let iface = env.get("/sandboxes/sb1")["Endpoints"]["back"]["Interface"]
            .as_str()
            .unwrap()
            .to_string();
        let out = env.exec("sb1", &["ip", "-o", "link", "show", &iface]);
        let link = String::from_utf8_lossy(&out.stdout);
        assert!(link.contains("02:aa:bb:00:00:01"), "{link}");
        let sb1_back = env.ip_of("back", "sb1");
        assert!(
            env.ping("sb2", &sb1_back, 3),
            "no traffic to the custom MAC"
        );
        let fdb = env.get("/networks/back/fdb");
        assert!(
            fdb.as_array()
                .unwrap()
                .iter()
                .any(|r| r["MacAddress"] == "02:aa:bb:00:00:01"),
            "the switch did not learn the custom MAC: {fdb}"
        );
        // A bad MAC is refused and changes nothing.
        let before = state(env);
        let err = env.fails(&[
            "network",
            "connect",
            "--mac-address",
            "01:00:5e:00:00:01",
            "back",
            "sb1",
        ]);
        assert!(err.contains("multicast"), "{err}");
        assert_eq!(state(env), before);

        // disconnect, plain and forced; the tap is gone and traffic stops.
        env.docker_ok(&["network", "disconnect", "front", "sb2"]);
        env.docker_ok(&["network", "disconnect", "-f", "back", "sb1"]);
        let err = env.docker_fails(&["network", "disconnect", "front", "sb2"]);
        assert!(err.contains("not connected"), "{err}");
        assert!(
            !env.ping("sb2", "10.92.0.50", 1),
            "sb2 still reaches front after disconnect"
        );
        let out = env.exec("sb1", &["ip", "-o", "link", "show", &iface]);
        assert!(!out.status.success(), "{iface} still exists in sb1");
        let err = env.docker_fails(&["network", "rm", "front"]);
        assert!(err.contains("active endpoints"), "{err}");
    });
}

#[test]
fn docker_cli_prune_with_filters() {
    docker_bin();
    in_namespace("docker_cli_prune_with_filters", |env| {
        env.docker_ok(&["network", "create", "--label", "tmp=1", "tmp1"]);
        env.docker_ok(&["network", "create", "--label", "tmp=2", "tmp2"]);
        env.docker_ok(&["network", "create", "--label", "keep", "kept"]);
        env.docker_ok(&["network", "create", "used"]);
        env.sandbox("sb");
        env.docker_ok(&["network", "connect", "used", "sb"]);

        // Without -f docker asks; stdin is empty, so nothing is removed.
        let out = env.docker_with(&[], &["network", "prune"]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("Are you sure you want to continue?"),
            "{text}"
        );
        let custom = || {
            env.docker_ok(&["network", "ls", "-q", "--filter", "type=custom"])
                .lines()
                .count()
        };
        assert_eq!(custom(), 4);

        let before = state(env);
        let err = env.docker_fails(&["network", "prune", "-f", "--filter", "name=x"]);
        assert!(err.contains("invalid filter 'name'"), "{err}");
        let err = env.docker_fails(&["network", "prune", "-f", "--filter", "until=someday"]);
        assert!(err.contains("until"), "{err}");
        assert_eq!(state(env), before);

        let out = env.docker_ok(&["network", "prune", "-f", "--filter", "label=tmp=1"]);
        assert_eq!(out.trim(), "Deleted Networks:\ntmp1");
        // Everything was created less than an hour ago.
        let out = env.docker_ok(&["network", "prune", "-f", "--filter", "until=1h"]);
        assert_eq!(out.trim(), "");
        let out = env.docker_ok(&["network", "prune", "-f", "--filter", "label!=keep"]);
        assert_eq!(out.trim(), "Deleted Networks:\ntmp2");
        // tapnet's own CLI does the same.
        let out = env.ok(&["network", "prune", "-f"]);
        assert_eq!(out.trim(), "Deleted Networks:\nkept");
        // The pre-defined networks are never pruned.
        let left = env.docker_ok(&["network", "ls", "--format", "{{.Name}}"]);
        let mut left: Vec<&str> = left.lines().collect();
        left.sort_unstable();
        assert_eq!(left, ["bridge", "host", "none", "used"]);
        assert_eq!(custom(), 1);
    });
}
