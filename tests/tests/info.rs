//! `GET /info`, `docker info` against tapnetd, `tapnet version` and `tapnet info`:
//! the values are the real ones of this machine and of the daemon's state.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use serde_json::Value;
use std::process::Command;
use tapnet_tests::{docker_bin, in_namespace, n};

fn uname(flag: &str) -> String {
    let out = Command::new("uname").arg(flag).output().expect("run uname");
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn nproc() -> u64 {
    let out = Command::new("nproc").output().expect("run nproc");
    String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn mem_total_kib() -> u64 {
    let m = std::fs::read_to_string("/proc/meminfo").unwrap();
    let line = m.lines().find(|l| l.starts_with("MemTotal:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn strs(v: &Value) -> Vec<&str> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| x.as_str().unwrap())
        .collect()
}

#[test]
fn info_reports_machine_and_state() {
    in_namespace("info_reports_machine_and_state", |env| {
        let i = env.get("/info");
        assert_eq!(i["KernelVersion"], uname("-r"), "{i}");
        assert_eq!(i["Architecture"], uname("-m"), "{i}");
        assert_eq!(i["Name"], uname("-n"), "{i}");
        assert_eq!(n(&i, "NCPU"), nproc(), "{i}");
        assert!(n(&i, "NCPU") >= 1);
        assert_eq!(n(&i, "MemTotal"), mem_total_kib() * 1024, "{i}");
        assert_eq!(i["OSType"], "linux");
        assert_eq!(i["Swarm"]["LocalNodeState"], "inactive");
        assert_eq!(
            i["DockerRootDir"],
            env.root.join("data").display().to_string()
        );
        assert_eq!(
            i["TapnetExecRoot"],
            env.root.join("run").display().to_string()
        );
        assert_eq!(i["TapnetClusterStore"], "");
        // The datapath as started (defaults: one worker per CPU, io_uring where the
        // kernel allows it, one queue).
        assert_eq!(n(&i, "TapnetDatapathWorkers"), nproc(), "{i}");
        assert_eq!(i["TapnetTapIo"], "auto", "{i}");
        let path = if tapnet_sandbox::uring::probe().is_ok() {
            "uring"
        } else {
            "rw"
        };
        assert_eq!(i["TapnetTapIoPath"], path, "{i}");
        assert_eq!(n(&i, "TapnetTapQueues"), 1, "{i}");
        // No --worker-nice: the workers run at the daemon's nice value (ours), `auto`,
        // which a user namespace's root cannot use (it may not set a nice value back).
        let ours = tapnet_sandbox::sched::thread_nice().unwrap();
        assert_eq!(i["TapnetWorkerNice"], ours, "{i}");
        assert_eq!(i["TapnetWorkerNiceAuto"], "unavailable", "{i}");
        assert_eq!(i["TapnetTapUdpMerge"], "on", "{i}");
        assert_eq!(i["TapnetGateway"], "inline", "{i}");
        let plugins = strs(&i["Plugins"]["Network"]);
        for d in ["bridge", "host", "macvlan", "null", "overlay"] {
            assert!(plugins.contains(&d), "{d} missing: {plugins:?}");
        }
        assert_eq!(i["ServerVersion"], env.get("/version")["Version"]);
        // The system time is RFC 3339 and now-ish (same date as the host's clock).
        let t = i["SystemTime"].as_str().unwrap();
        let today = Command::new("date")
            .args(["-u", "+%Y-%m-%d"])
            .output()
            .unwrap();
        let today = String::from_utf8(today.stdout).unwrap();
        assert!(t.ends_with('Z') && t.contains('T'), "{t}");
        assert!(
            t.starts_with(today.trim()) || t < today.trim(),
            "{t} vs {today}"
        );

        // Counts follow the state: the pre-defined networks, no sandboxes yet.
        let nets0 = env.get("/networks").as_array().unwrap().len() as u64;
        assert_eq!(n(&i, "TapnetNetworks"), nets0);
        assert_eq!(n(&i, "Containers"), 0);
        env.network("infonet", "10.93.0.0/24");
        env.sandbox("a");
        env.sandbox("b");
        let i = env.get("/info");
        assert_eq!(n(&i, "TapnetNetworks"), nets0 + 1, "{i}");
        assert_eq!(n(&i, "Containers"), 2, "{i}");
        assert_eq!(n(&i, "ContainersRunning"), 2, "{i}");
        assert_eq!(n(&i, "Images"), 0);
        // Versioned path and HEAD-less method checks like the other endpoints.
        assert_eq!(env.get("/v1.47/info")["Containers"], 2);
        let (code, _) = env.api("POST", "/info", None);
        assert_eq!(code, 405);
    });
}

#[test]
fn docker_info_works_against_tapnetd() {
    docker_bin();
    in_namespace("docker_info_works_against_tapnetd", |env| {
        env.sandbox("c1");
        let out = env.docker_ok(&["info", "--format", "{{json .}}"]);
        let i: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{out}: {e}"));
        assert_eq!(i["KernelVersion"], uname("-r"), "{i}");
        assert_eq!(n(&i, "NCPU"), nproc());
        assert_eq!(n(&i, "Containers"), 1);
        assert!(strs(&i["Plugins"]["Network"]).contains(&"bridge"));
        assert_eq!(i["ServerErrors"], Value::Null, "{i}");
        // The plain text form too (what people run).
        let text = env.docker_ok(&["info"]);
        assert!(
            text.contains(&format!("Kernel Version: {}", uname("-r"))),
            "{text}"
        );
        assert!(text.contains("Containers: 1"), "{text}");
        assert!(
            text.contains(" Network: bridge host macvlan null overlay"),
            "{text}"
        );
    });
}

#[test]
fn tapnet_version_and_info() {
    in_namespace("tapnet_version_and_info", |env| {
        let server = env.get("/version")["Version"].as_str().unwrap().to_string();
        let out = env.ok(&["version"]);
        assert!(out.starts_with("Client:\n"), "{out}");
        assert!(out.contains("\nServer: tapnet\n tapnetd:\n"), "{out}");
        assert!(
            out.contains(&format!("  Version:          {server}\n")),
            "{out}"
        );
        assert!(
            out.contains("API version:      1.47 (minimum version 1.24)"),
            "{out}"
        );
        let j: Value = serde_json::from_str(&env.ok(&["version", "--format", "json"])).unwrap();
        assert_eq!(j["Server"]["Version"], server.as_str());
        assert_eq!(j["Server"]["ApiVersion"], "1.47");
        assert_eq!(j["Client"]["Os"], "linux");

        env.network("infonet", "10.94.0.0/24");
        env.sandbox("s1");
        let nets = env.get("/networks").as_array().unwrap().len();
        let text = env.ok(&["info"]);
        assert!(
            text.contains(&format!(" Server Version: {server}\n")),
            "{text}"
        );
        assert!(text.contains(&format!(" Networks: {nets}\n")), "{text}");
        assert!(text.contains(" Sandboxes: 1\n"), "{text}");
        assert!(
            text.contains(&format!(" Kernel Version: {}\n", uname("-r"))),
            "{text}"
        );
        assert!(text.contains(" Cluster Store: none\n"), "{text}");
        let j: Value = serde_json::from_str(&env.ok(&["info", "--format", "json"])).unwrap();
        assert_eq!(n(&j, "Containers"), 1);
        assert_eq!(n(&j, "TapnetNetworks"), nets as u64);

        // Daemon gone: version still prints the client block, then fails.
        env.stop_daemon();
        let out = env.tapnet(&["version"]);
        assert!(!out.status.success());
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.starts_with("Client:\n") && !stdout.contains("Server"),
            "{stdout}"
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("Cannot connect to the tapnet daemon"),
            "{stderr}"
        );
        let err = env.fails(&["info"]);
        assert!(err.contains("Cannot connect to the tapnet daemon"), "{err}");
    });
}

/// Start `cmd` with its stdout piped; lines arrive on the returned channel.
fn spawn_lines(mut cmd: Command) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    use std::io::BufRead;
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

fn next_line(rx: &std::sync::mpsc::Receiver<String>, what: &str) -> String {
    rx.recv_timeout(std::time::Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("no {what} event: {e}"))
}

#[test]
fn events_stream_network_changes() {
    in_namespace("events_stream_network_changes", |env| {
        // `-i`: the answer's headers come first, and the daemon subscribes before it
        // answers, so once they are read every later change is in the stream.
        let mut curl = Command::new("curl");
        curl.args(["-siN", "--unix-socket"])
            .arg(&env.socket)
            .arg("http://tapnet/events?filters=%7B%22type%22%3A%5B%22network%22%5D%7D");
        let (mut child, rx) = spawn_lines(curl);
        let status = next_line(&rx, "status line");
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        loop {
            let h = next_line(&rx, "header");
            if h.trim().is_empty() {
                break;
            }
        }
        // The body's leading empty line (it pushes the headers out).
        assert_eq!(next_line(&rx, "leading newline").trim(), "");
        let name = "ev0".to_string();
        env.network(&name, "10.95.0.0/24");
        let line = next_line(&rx, "create");
        let ev: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(ev["Type"], "network");
        assert_eq!(ev["Action"], "create");
        assert_eq!(ev["Actor"]["Attributes"]["name"], name.as_str());
        assert_eq!(ev["Actor"]["Attributes"]["type"], "bridge");
        assert_eq!(ev["scope"], "local");
        let id = env.get(&format!("/networks/{name}"))["Id"].clone();
        assert_eq!(ev["Actor"]["ID"], id);
        assert_eq!(n(&ev, "time"), n(&ev, "timeNano") / 1_000_000_000);

        let sb = env.sandbox("s1");
        env.connect(&name, "s1");
        let ev: Value = serde_json::from_str(&next_line(&rx, "connect")).unwrap();
        assert_eq!(ev["Action"], "connect");
        assert_eq!(ev["Actor"]["ID"], id);
        assert_eq!(ev["Actor"]["Attributes"]["container"], sb.as_str());
        env.ok(&["network", "disconnect", &name, "s1"]);
        let ev: Value = serde_json::from_str(&next_line(&rx, "disconnect")).unwrap();
        assert_eq!(ev["Action"], "disconnect");
        env.ok(&["network", "rm", &name]);
        let ev: Value = serde_json::from_str(&next_line(&rx, "destroy")).unwrap();
        assert_eq!(ev["Action"], "destroy");
        assert_eq!(ev["Actor"]["Attributes"]["name"], name.as_str());
        child.kill().unwrap();
        child.wait().unwrap();

        // No history: since/until refused by name; unknown filters refused.
        let (code, v) = env.api("GET", "/events?since=1", None);
        assert_eq!(code, 400, "{v}");
        assert!(v["message"].as_str().unwrap().contains("since"), "{v}");
        let (code, v) = env.api("GET", "/events?until=1", None);
        assert_eq!(code, 400, "{v}");
        let (code, v) = env.api(
            "GET",
            "/events?filters=%7B%22image%22%3A%5B%22x%22%5D%7D",
            None,
        );
        assert_eq!(code, 400, "{v}");
        assert!(v["message"].as_str().unwrap().contains("image"), "{v}");
    });
}

#[test]
fn docker_events_receives_network_create() {
    docker_bin();
    in_namespace("docker_events_receives_network_create", |env| {
        let mut cmd = Command::new(docker_bin());
        cmd.arg("-H")
            .arg(format!("unix://{}", env.socket.display()))
            .args([
                "events",
                "--filter",
                "type=network",
                "--format",
                "{{json .}}",
            ])
            .env("DOCKER_CONFIG", env.root.join("docker-config"))
            .env_remove("DOCKER_HOST")
            .env_remove("DOCKER_CONTEXT");
        let (mut child, rx) = spawn_lines(cmd);
        // When docker has subscribed is not visible from here: create networks until
        // it prints an event, which must be the create of one of them.
        let mut created = Vec::new();
        let mut got = None;
        for i in 0..50 {
            let name = format!("dev{i}");
            env.network(&name, &format!("10.96.{i}.0/24"));
            created.push(name);
            if let Ok(l) = rx.recv_timeout(std::time::Duration::from_millis(200)) {
                got = Some(l);
                break;
            }
        }
        let line = got.expect("docker events printed nothing within 50 creates");
        let ev: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(ev["Type"], "network", "{ev}");
        assert_eq!(ev["Action"], "create", "{ev}");
        let name = ev["Actor"]["Attributes"]["name"].as_str().unwrap();
        assert!(created.iter().any(|c| c == name), "{ev} not in {created:?}");
        child.kill().unwrap();
        child.wait().unwrap();
    });
}

#[test]
fn tapnet_events_prints_network_events() {
    in_namespace("tapnet_events_prints_network_events", |env| {
        let bin = std::env::current_exe()
            .unwrap()
            .parent()
            .unwrap()
            .parent()
            .unwrap()
            .join("tapnet");
        let mut cmd = Command::new(bin);
        cmd.arg("-H")
            .arg(format!("unix://{}", env.socket.display()))
            .args(["events", "--filter", "event=create"]);
        let (mut child, rx) = spawn_lines(cmd);
        // As with docker: create networks until the subscribed CLI prints one.
        let mut created = Vec::new();
        let mut got = None;
        for i in 0..50 {
            let name = format!("tev{i}");
            env.network(&name, &format!("10.97.{i}.0/24"));
            created.push(name);
            if let Ok(l) = rx.recv_timeout(std::time::Duration::from_millis(200)) {
                got = Some(l);
                break;
            }
        }
        let line = got.expect("tapnet events printed nothing within 50 creates");
        let name = created
            .iter()
            .find(|c| line.contains(&format!("name={c}, type=bridge)")))
            .unwrap_or_else(|| panic!("{line} names none of {created:?}"));
        let id = env.get(&format!("/networks/{name}"))["Id"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(line.contains(&format!(" network create {id} (")), "{line}");
        // Only creates pass the filter: a connect prints nothing before the next create.
        env.sandbox("s1");
        env.connect(name, "s1");
        env.network("tev-last", "10.98.0.0/24");
        loop {
            let l = next_line(&rx, "create of tev-last");
            assert!(l.contains(" network create "), "{l}");
            if l.contains("name=tev-last,") {
                break;
            }
        }
        child.kill().unwrap();
        child.wait().unwrap();
        let err = env.fails(&["events", "--filter", "image=x"]);
        assert!(err.contains("invalid filter 'image'"), "{err}");
    });
}
