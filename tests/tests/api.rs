//! The daemon's API and CLI: shapes, and bad input that must change nothing.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use serde_json::Value;
use tapnet_tests::{in_namespace, query_escape, Env};

fn state(env: &Env) -> (Value, Value) {
    (env.get("/networks"), env.get("/sandboxes"))
}

/// Assert a request fails with `code` and a message containing `needle`, and that
/// the daemon's state is unchanged afterwards.
fn rejects(env: &Env, method: &str, path: &str, body: Option<&str>, code: u16, needle: &str) {
    let before = state(env);
    let (got, v) = env.api(method, path, body);
    assert_eq!(got, code, "{method} {path} {body:?} -> {got} {v}");
    let msg = v["message"]
        .as_str()
        .unwrap_or_else(|| panic!("no message in {v}"));
    assert!(
        msg.to_lowercase().contains(&needle.to_lowercase()),
        "{method} {path}: message {msg:?} does not mention {needle:?}"
    );
    assert_eq!(
        state(env),
        before,
        "state changed after rejected {method} {path} {body:?}"
    );
}

#[test]
fn network_inspect_has_docker_shape() {
    in_namespace("network_inspect_has_docker_shape", |env| {
        let id = env.network("net1", "10.70.0.0/24");
        assert_eq!(id.len(), 64, "{id}");
        env.sandbox("a");
        env.connect("net1", "a");
        let out = env.ok(&["network", "inspect", "net1"]);
        let v: Value = serde_json::from_str(&out).unwrap();
        let net = &v[0];
        assert_eq!(net["Name"], "net1");
        assert_eq!(net["Id"], id.as_str());
        assert_eq!(net["Driver"], "bridge");
        assert_eq!(net["IPAM"]["Config"][0]["Subnet"], "10.70.0.0/24");
        assert_eq!(net["IPAM"]["Config"][0]["Gateway"], "10.70.0.1");
        assert!(
            net["Options"].is_object() && net["Labels"].is_object(),
            "{net}"
        );
        let containers = net["Containers"].as_object().unwrap();
        assert_eq!(containers.len(), 1);
        let c = containers.values().next().unwrap();
        assert_eq!(c["Name"], "a");
        assert_eq!(c["IPv4Address"], "10.70.0.2/24");
        assert_eq!(c["MacAddress"], "02:42:0a:46:00:02");
        assert_eq!(c["EndpointID"].as_str().unwrap().len(), 64);
        // By id prefix and with a version prefix, as docker clients call it.
        let by_prefix = env.get(&format!("/v1.41/networks/{}", &id[..12]));
        assert_eq!(by_prefix["Name"], "net1");
        // A default subnet comes from the pool when none is given.
        env.ok(&["network", "create", "auto"]);
        let auto = env.get("/networks/auto");
        let subnet = auto["IPAM"]["Config"][0]["Subnet"].as_str().unwrap();
        assert!(
            subnet.starts_with("172.") || subnet.starts_with("192.168."),
            "{subnet}"
        );
        // ls shows both; -q prints ids only.
        let ls = env.ok(&["network", "ls"]);
        assert!(
            ls.contains("net1") && ls.contains("auto") && ls.contains("bridge"),
            "{ls}"
        );
        let q = env.ok(&["network", "ls", "-q"]);
        // net1, auto and the pre-defined none, host and bridge.
        assert_eq!(q.lines().count(), 5, "{q}");
        // ping and version answer.
        let (code, _) = env.api("GET", "/_ping", None);
        assert_eq!(code, 200);
        let ver = env.get("/version");
        assert!(ver["ApiVersion"].is_string(), "{ver}");
        // Sandbox inspect and rm.
        let sb = env.ok(&["sandbox", "inspect", "a"]);
        let sb: Value = serde_json::from_str(&sb).unwrap();
        assert_eq!(sb[0]["Endpoints"]["net1"]["Interface"], "eth0");
        env.ok(&["sandbox", "rm", "a"]);
        let net = env.get("/networks/net1");
        assert!(net["Containers"].as_object().unwrap().is_empty(), "{net}");
        env.ok(&["network", "rm", "net1"]);
        let (code, _) = env.api("GET", "/networks/net1", None);
        assert_eq!(code, 404);
    });
}

#[test]
fn bad_input_gets_4xx_and_changes_nothing() {
    in_namespace("bad_input_gets_4xx_and_changes_nothing", |env| {
        env.network("net1", "10.80.0.0/24");
        env.sandbox("a");
        env.sandbox("b");
        env.connect("net1", "a");
        let create = "/networks/create";
        rejects(env, "POST", create, Some("{not json"), 400, "json");
        rejects(env, "POST", create, Some(r#"{"Name": 5}"#), 400, "name");
        rejects(
            env,
            "POST",
            create,
            Some(r#"{"Name":"n2","IPAM":{"Config":[{"Subnet":"10.1.2.0/33"}]}}"#),
            400,
            "10.1.2.0/33",
        );
        rejects(
            env,
            "POST",
            create,
            Some(
                r#"{"Name":"n2","IPAM":{"Config":[{"Subnet":"10.81.0.0/24","Gateway":"10.99.0.1"}]}}"#,
            ),
            400,
            "gateway",
        );
        rejects(env, "POST", create, Some(r#"{"Name":"net1"}"#), 409, "net1");
        rejects(
            env,
            "POST",
            create,
            Some(r#"{"Name":"n3","Driver":"nosuch"}"#),
            404,
            "nosuch",
        );
        rejects(env, "POST", "/sandboxes", Some(r#"{"Name":"a"}"#), 409, "a");
        rejects(env, "GET", "/networks/nosuchnet", None, 404, "nosuchnet");
        rejects(env, "GET", "/sandboxes/nosuchsb", None, 404, "nosuchsb");
        rejects(
            env,
            "POST",
            "/networks/nosuchnet/connect",
            Some(r#"{"Container":"b"}"#),
            404,
            "nosuchnet",
        );
        rejects(
            env,
            "POST",
            "/networks/net1/connect",
            Some(r#"{"Container":"nosuchsb"}"#),
            404,
            "nosuchsb",
        );
        let ip = |addr: &str| {
            format!(
                r#"{{"Container":"b","EndpointConfig":{{"IPAMConfig":{{"IPv4Address":"{addr}"}}}}}}"#
            )
        };
        rejects(
            env,
            "POST",
            "/networks/net1/connect",
            Some(&ip("10.99.0.5")),
            400,
            "10.99.0.5",
        );
        rejects(
            env,
            "POST",
            "/networks/net1/connect",
            Some(&ip("10.80.0.2")),
            409,
            "10.80.0.2",
        );
        rejects(
            env,
            "POST",
            "/networks/net1/connect",
            Some(&ip("10.80.0.1")),
            409,
            "10.80.0.1",
        );
        rejects(
            env,
            "POST",
            "/networks/net1/connect",
            Some(&ip("not-an-ip")),
            400,
            "not-an-ip",
        );
        rejects(
            env,
            "POST",
            "/networks/net1/connect",
            Some(r#"{"Container":"a"}"#),
            409,
            "a",
        );
        rejects(env, "DELETE", "/networks/net1", None, 409, "net1");
        rejects(
            env,
            "POST",
            "/networks/net1/disconnect",
            Some(r#"{"Container":"b"}"#),
            404,
            "b",
        );
        // b has no tap after the failed connects.
        let out = env.exec("b", &["ip", "-o", "link"]);
        assert!(!String::from_utf8_lossy(&out.stdout).contains("eth0"));
        // The CLI shows the daemon's message on stderr and exits non-zero.
        let err = env.fails(&["network", "create", "--subnet", "300.1.1.0/24", "x"]);
        assert!(err.contains("300.1.1.0/24"), "{err}");
        let err = env.fails(&["network", "rm", "net1"]);
        assert!(err.contains("net1"), "{err}");
        let err = env.fails(&["network", "connect", "--ip", "10.80.0.2", "net1", "b"]);
        assert!(err.contains("10.80.0.2"), "{err}");
        // A static address that is free works.
        env.ok(&["network", "connect", "--ip", "10.80.0.77", "net1", "b"]);
        assert_eq!(env.ip_of("net1", "b"), "10.80.0.77");
    });
}

fn filtered(path: &str, filters: &str) -> String {
    format!("{path}?filters={}", query_escape(filters))
}

fn names(v: &Value) -> Vec<String> {
    let mut n: Vec<String> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["Name"].as_str().unwrap().to_string())
        .collect();
    n.sort();
    n
}

#[test]
fn filters_prune_versions_and_limits() {
    in_namespace("filters_prune_versions_and_limits", |env| {
        env.ok(&[
            "network",
            "create",
            "--label",
            "team=web",
            "--subnet",
            "10.60.0.0/24",
            "web",
        ]);
        env.ok(&["network", "create", "--label", "team=db", "db"]);
        env.ok(&["network", "create", "idle"]);
        env.sandbox("a");
        env.connect("db", "a");

        // Docker's JSON filters, both encodings.
        let v = env.get(&filtered("/v1.47/networks", r#"{"label":{"team":true}}"#));
        assert_eq!(names(&v), ["db", "web"]);
        let v = env.get(&filtered("/networks", r#"{"name":["we"]}"#));
        assert_eq!(names(&v), ["web"]);
        let v = env.get(&filtered("/networks", r#"{"dangling":{"true":true}}"#));
        assert_eq!(names(&v), ["idle", "web"]);
        // tapnet's CLI sends the same filters.
        let out = env.ok(&[
            "network",
            "ls",
            "--filter",
            "label=team=db",
            "--format",
            "json",
        ]);
        assert_eq!(out.lines().count(), 1, "{out}");
        assert!(out.contains(r#""Name":"db""#), "{out}");
        let out = env.ok(&["network", "ls", "-q", "--no-trunc", "-f", "name=idle"]);
        assert_eq!(out.trim().len(), 64, "{out}");

        // Bad filters, unknown versions, oversized bodies: 4xx, nothing changes.
        rejects(
            env,
            "GET",
            &filtered("/networks", r#"{"x":{"1":true}}"#),
            None,
            400,
            "invalid filter 'x'",
        );
        rejects(
            env,
            "GET",
            &filtered("/networks", r#"{"name":"web"}"#),
            None,
            400,
            "invalid filters",
        );
        rejects(
            env,
            "POST",
            &filtered("/networks/prune", r#"{"driver":["bridge"]}"#),
            None,
            400,
            "invalid filter 'driver'",
        );
        rejects(
            env,
            "POST",
            &filtered("/networks/prune", r#"{"until":["tomorrowish"]}"#),
            None,
            400,
            "until",
        );
        rejects(
            env,
            "POST",
            "/v1.99/networks/create",
            Some(r#"{"Name":"n9"}"#),
            400,
            "client version 1.99 is too new. Maximum supported API version is 1.47",
        );
        rejects(env, "POST", "/v1.99/networks/prune", None, 400, "too new");
        rejects(
            env,
            "GET",
            "/v1.12/networks",
            None,
            400,
            "client version 1.12 is too old",
        );
        rejects(
            env,
            "POST",
            "/networks/create",
            Some(r#"{"Name":"n9","Internal":"yes"}"#),
            400,
            "Internal",
        );
        rejects(
            env,
            "POST",
            "/networks/web/connect",
            Some(r#"{"Container":"a","EndpointConfig":{"Aliases":[1]}}"#),
            400,
            "Aliases",
        );
        rejects(
            env,
            "POST",
            "/networks/web/connect",
            Some(r#"{"Container":"a","EndpointConfig":{"MacAddress":"ff:ff:ff:ff:ff:ff"}}"#),
            400,
            "MacAddress",
        );
        rejects(
            env,
            "GET",
            "/containers/json",
            None,
            404,
            "network endpoints",
        );
        let big = env.root.join("big.json");
        let body = format!(
            r#"{{"Name":"huge","Labels":{{"a":"{}"}}}}"#,
            "x".repeat(2 << 20)
        );
        std::fs::write(&big, body).unwrap();
        let before = state(env);
        let (code, v) = env.api_file("POST", "/networks/create", &big);
        assert_eq!(code, 413, "{v}");
        assert!(v["message"].as_str().unwrap().contains("too large"), "{v}");
        assert_eq!(state(env), before);

        // Prune keeps used networks and honours label filters.
        let (code, v) = env.api(
            "POST",
            &filtered("/networks/prune", r#"{"label":["team=web"]}"#),
            None,
        );
        assert_eq!(code, 200, "{v}");
        assert_eq!(v["NetworksDeleted"], serde_json::json!(["web"]));
        let out = env.ok(&["network", "prune", "--force"]);
        assert_eq!(out.trim(), "Deleted Networks:\nidle");
        // The pre-defined networks are never pruned.
        assert_eq!(
            names(&env.get("/networks")),
            ["bridge", "db", "host", "none"]
        );
        let v = env.get(&filtered("/networks", r#"{"type":{"custom":true}}"#));
        assert_eq!(names(&v), ["db"]);
        let v = env.get(&filtered("/networks", r#"{"type":{"builtin":true}}"#));
        assert_eq!(names(&v), ["bridge", "host", "none"]);

        // /_ping answers HEAD with Docker's headers.
        let out = std::process::Command::new("curl")
            .args(["-s", "-I", "--unix-socket"])
            .arg(&env.socket)
            .arg("http://tapnet/_ping")
            .output()
            .unwrap();
        let head = String::from_utf8_lossy(&out.stdout).to_lowercase();
        for h in [
            "api-version: 1.47",
            "ostype: linux",
            "docker-experimental: false",
            "pragma: no-cache",
            "builder-version:",
        ] {
            assert!(head.contains(h), "missing {h} in {head}");
        }
    });
}

#[test]
fn completion_scripts_come_from_the_cli_definition() {
    in_namespace("completion_scripts_come_from_the_cli_definition", |env| {
        // The script makes tapnet complete itself (clap_complete's dynamic
        // completion): what it offers is the CLI definition's. (Names from the daemon:
        // tests/tests/cli.rs.)
        let bash = env.ok(&["completion", "bash"]);
        assert!(
            bash.contains(
                "complete -o nospace -o bashdefault -o nosort -F _clap_complete_tapnet tapnet"
            ),
            "{bash}"
        );
        let zsh = env.ok(&["completion", "zsh"]);
        assert!(zsh.starts_with("#compdef tapnet"), "{zsh}");
        let script = env.root.join("tapnet.bash");
        std::fs::write(&script, &bash).unwrap();
        let complete = |words: &str, cword: usize, cur: &str| {
            let out = std::process::Command::new("bash")
                .arg("-c")
                .arg(format!(
                    "source {} && COMP_WORDS=({words}); COMP_CWORD={cword}; COMP_TYPE=9; \
                     _clap_complete_tapnet tapnet '{cur}' x; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
                    script.display()
                ))
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        assert_eq!(complete("tapnet network pr", 2, "pr"), "prune\n");
        assert_eq!(
            complete("tapnet network create --aux", 3, "--aux"),
            "--aux-address\n"
        );
        assert_eq!(
            complete("tapnet network connect --mac", 3, "--mac"),
            "--mac-address\n"
        );
    });
}
