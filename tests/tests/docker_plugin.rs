//! tapnet as a Docker network and IPAM plugin, driven by the real dockerd (Debian's
//! docker.io 20.10) in the test's own namespaces (see `in_root_namespace` and
//! `Dockerd` in the harness): `docker network create -d tapnet`, containers that talk
//! by name through tapnet's switch, published ports keeping the client's address,
//! egress through the gateway's NAT, `docker network inspect` and `tapnet network
//! inspect` agreeing, `docker rm -f` releasing endpoint and address, a device that
//! vanished without `Leave`, dockerd and tapnetd restarting in either order, the
//! `--ipam-driver tapnet` variant, and garbage on the plugin socket.
//!
//! Every wait polls for a state with a deadline; no test depends on a timing figure.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use serde_json::Value;
use std::io::Read;
use std::process::Command;
use std::time::{Duration, Instant};
use tapnet_tests::{connect_in, dockerd_dir, in_root_namespace, Dockerd, Env, WAN_HOST_IP, WAN_IP};

const PLUGIN_SOCKET: &str = "/run/docker/plugins/tapnet.sock";

/// Restart tapnetd with its plugin on (what `in_root_namespace` starts).
fn restart_tapnetd(env: &mut Env) {
    env.stop_daemon();
    let host = format!("unix://{}/d.sock", dockerd_dir(&env.root).display());
    env.start_daemon_with(&["--docker-plugin=true", "--docker-host", &host]);
}

/// Poll `f` until it is true (30 s at most).
fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

/// `docker inspect` of a container's endpoint on `net`: (endpoint id, IPv4, MAC, sandbox key).
fn docker_endpoint(d: &Dockerd, container: &str, net: &str) -> (String, String, String, String) {
    let v = json(&d.ok(&["inspect", container]));
    let ep = &v[0]["NetworkSettings"]["Networks"][net];
    (
        ep["EndpointID"].as_str().unwrap().to_string(),
        ep["IPAddress"].as_str().unwrap().to_string(),
        ep["MacAddress"].as_str().unwrap().to_string(),
        v[0]["NetworkSettings"]["SandboxKey"]
            .as_str()
            .unwrap()
            .to_string(),
    )
}

/// The switch port counters of endpoint `ep` on `net`, if tapnet has it.
fn port_of(env: &Env, net: &str, ep: &str) -> Option<Value> {
    let v = env.get(&format!("/networks/{net}/stats"));
    v["Ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["EndpointID"] == ep)
        .cloned()
}

/// A TCP exchange from `from` to `to`:7000, where `to` runs `nc -ll -p 7000 -e echo
/// pong-<to>` (retried until the server listens: a container is "running" before its
/// process has bound its port).
fn exchange(d: &Dockerd, from: &str, to: &str) {
    let mut last = String::new();
    wait_for(&format!("a TCP exchange {from} -> {to}"), || {
        let out = d.docker(&["exec", from, "nc", "-w", "5", to, "7000"]);
        last = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        last.trim() == format!("pong-{to}")
    });
}

/// POST garbage (and other bad calls) to the plugin socket: each answers `{"Err"}`.
fn plugin_call(method: &str, body: &str) -> (u16, Value) {
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            "--unix-socket",
            PLUGIN_SOCKET,
        ])
        .args(["-X", "POST", "-d", body])
        .arg(format!("http://plugin/{method}"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.trim().parse().unwrap(), json(body))
}

#[test]
fn docker_plugin_end_to_end() {
    in_root_namespace("docker_plugin_end_to_end", |env| {
        let wan = env.wan();
        let echo = wan.tcp_echo(7777);
        let mut d = Dockerd::start(&env.root);

        // The handshake dockerd does, by hand.
        let (code, v) = plugin_call("Plugin.Activate", "");
        assert_eq!(code, 200);
        assert_eq!(
            v,
            serde_json::json!({"Implements": ["NetworkDriver", "IpamDriver"]})
        );

        // A network: tapnet's, with dockerd's id, name, subnet, gateway and MTU.
        let id = d.ok(&[
            "network",
            "create",
            "-d",
            "tapnet",
            "--subnet",
            "10.60.0.0/24",
            // (dockerd's inspect lists a gateway only when it was given)
            "--gateway",
            "10.60.0.1",
            "-o",
            "com.docker.network.driver.mtu=1400",
            "tn1",
        ]);
        wait_for("tapnet to learn the network's name", || {
            env.tapnet(&["network", "inspect", "tn1"]).status.success()
        });
        let t = env.get("/networks/tn1");
        assert_eq!(t["Id"], id.as_str());
        assert_eq!(t["Driver"], "bridge");
        // An unknown option is refused by name and nothing is made.
        let err = d.fails(&[
            "network",
            "create",
            "-d",
            "tapnet",
            "--subnet",
            "10.61.0.0/24",
            "-o",
            "com.docker.network.driver.mtu=9",
            "tnbad",
        ]);
        assert!(err.contains("mtu"), "{err}");
        assert!(!d.docker(&["network", "inspect", "tnbad"]).status.success());
        let err = d.fails(&[
            "network",
            "create",
            "-d",
            "tapnet",
            "--subnet",
            "10.61.0.0/24",
            "-o",
            "com.docker.network.bridge.name=br9",
            "tnbad",
        ]);
        assert!(err.contains("com.docker.network.bridge.name"), "{err}");
        assert!(!d.docker(&["network", "inspect", "tnbad"]).status.success());

        // Two containers reach each other by name and by address, through tapnet's switch.
        d.ok(&[
            "run",
            "-d",
            "--network",
            "tn1",
            "--name",
            "c1",
            "bb",
            "nc",
            "-ll",
            "-p",
            "7000",
            "-e",
            "echo",
            "pong-c1",
        ]);
        d.ok(&[
            "run",
            "-d",
            "--network",
            "tn1",
            "--name",
            "c2",
            "bb",
            "nc",
            "-ll",
            "-p",
            "7000",
            "-e",
            "echo",
            "pong-c2",
        ]);
        let (ep1, ip1, mac1, key1) = docker_endpoint(&d, "c1", "tn1");
        let (ep2, ip2, _, _) = docker_endpoint(&d, "c2", "tn1");
        let before = port_of(env, "tn1", &ep1).expect("c1's port on tapnet's switch");
        exchange(&d, "c2", "c1");
        exchange(&d, "c1", "c2");
        d.ok(&["exec", "c2", "ping", "-c", "1", "-W", "5", &ip1]);
        let after = port_of(env, "tn1", &ep1).unwrap();
        for k in ["RxPackets", "TxPackets"] {
            assert!(
                after[k].as_u64() > before[k].as_u64(),
                "{k}: {before} -> {after}"
            );
        }
        let fdb = env.get("/networks/tn1/fdb");
        assert!(fdb.to_string().contains(&mac1), "c1's MAC learned: {fdb}");
        // The device is the tap tapnet holds, moved in by dockerd, with the MTU set.
        let link = d.ok(&["exec", "c1", "ip", "-o", "link", "show", "eth0"]);
        assert!(link.contains("mtu 1400"), "{link}");
        // The gateway's DNS is dockerd's embedded one (127.0.0.11), names included.
        let resolv = d.ok(&["exec", "c1", "cat", "/etc/resolv.conf"]);
        assert!(resolv.contains("127.0.0.11"), "{resolv}");

        // `docker network inspect` and `tapnet network inspect` agree (tapnet names a
        // container's sandbox after the container once dockerd lists it).
        wait_for(
            "tapnet to name the sandboxes after their containers",
            || {
                let mut names: Vec<String> = env.get("/networks/tn1")["Containers"]
                    .as_object()
                    .unwrap()
                    .values()
                    .map(|c| c["Name"].as_str().unwrap().to_string())
                    .collect();
                names.sort();
                names == ["c1", "c2"]
            },
        );
        let dv = json(&d.ok(&["network", "inspect", "tn1"]));
        let tv = json(&String::from_utf8_lossy(
            &env.tapnet(&["network", "inspect", "tn1"]).stdout,
        ));
        let (dv, tv) = (&dv[0], &tv[0]);
        assert_eq!(dv["Id"], tv["Id"]);
        assert_eq!(dv["Name"], tv["Name"]);
        assert_eq!(
            dv["IPAM"]["Config"][0]["Subnet"],
            tv["IPAM"]["Config"][0]["Subnet"]
        );
        assert_eq!(
            dv["IPAM"]["Config"][0]["Gateway"],
            tv["IPAM"]["Config"][0]["Gateway"]
        );
        let addrs = |v: &Value| {
            let mut a: Vec<(String, String, String)> = v["Containers"]
                .as_object()
                .unwrap()
                .values()
                .map(|c| {
                    (
                        c["EndpointID"].as_str().unwrap().into(),
                        c["IPv4Address"].as_str().unwrap().into(),
                        c["Name"].as_str().unwrap().into(),
                    )
                })
                .collect();
            a.sort();
            a
        };
        assert_eq!(addrs(dv), addrs(tv));
        assert_eq!(addrs(tv).len(), 2);

        // Egress through the gateway's NAT to the wan.
        let out = d.ok(&[
            "exec",
            "c1",
            "sh",
            "-c",
            &format!("echo out-and-back | nc -w 5 {WAN_IP} 7777"),
        ]);
        assert_eq!(out, "out-and-back");
        assert!(
            echo.seen()
                .iter()
                .any(|p| p.ip().to_string() == WAN_HOST_IP),
            "{:?}",
            echo.seen()
        );

        // A published port: the server sees the wan client's own address.
        d.ok(&[
            "run",
            "-d",
            "--network",
            "tn1",
            "--name",
            "web",
            "-p",
            "8080:80",
            "bb",
            "nc",
            "-ll",
            "-p",
            "80",
            "-e",
            "netstat",
            "-tn",
        ]);
        // (until the server inside listens, the gateway's connection is refused and the
        // client reads nothing)
        let mut last = String::new();
        wait_for("the published server to answer", || {
            let Ok(mut s) = connect_in(
                &wan.ns,
                &format!("{WAN_HOST_IP}:8080"),
                Duration::from_secs(5),
            ) else {
                return false;
            };
            let client = s.local_addr().unwrap();
            last.clear();
            let _ = s.read_to_string(&mut last);
            if last.contains("ESTABLISHED") {
                assert!(
                    last.contains(&client.to_string()),
                    "the server saw {last:?}, not {client}"
                );
                return true;
            }
            false
        });
        d.ok(&["rm", "-f", "web"]);
        wait_for("the published port to close", || {
            connect_in(
                &wan.ns,
                &format!("{WAN_HOST_IP}:8080"),
                Duration::from_secs(2),
            )
            .is_err()
        });

        // Garbage on the plugin socket: {"Err"}, nothing changed.
        let nets_before = env.get("/networks");
        for (method, body) in [
            ("NetworkDriver.CreateNetwork", "garbage"),
            ("NetworkDriver.CreateNetwork", r#"{"NetworkID": 7}"#),
            (
                "NetworkDriver.Join",
                r#"{"NetworkID":"x","EndpointID":"y","SandboxKey":"/x"}"#,
            ),
            ("NetworkDriver.AllocateNetwork", "{}"),
            ("IpamDriver.RequestPool", r#"{"Pool":"10.0.0.0/99"}"#),
            ("Nonsense.Call", "{}"),
        ] {
            let (code, v) = plugin_call(method, body);
            assert!(code >= 400, "{method} {body}: {code} {v}");
            assert!(
                v["Err"].as_str().is_some_and(|e| !e.is_empty()),
                "{method}: {v}"
            );
        }
        assert_eq!(env.get("/networks"), nets_before);

        // `docker rm -f` releases the endpoint and its address (reused next).
        d.ok(&["rm", "-f", "c2"]);
        assert!(port_of(env, "tn1", &ep2).is_none());
        assert_eq!(addrs(&env.get("/networks/tn1")).len(), 1);
        d.ok(&[
            "run",
            "-d",
            "--network",
            "tn1",
            "--name",
            "c3",
            "bb",
            "nc",
            "-ll",
            "-p",
            "7000",
            "-e",
            "echo",
            "pong-c3",
        ]);
        let (ep3, ip3, _, key3) = docker_endpoint(&d, "c3", "tn1");
        assert_eq!(ip3, ip2, "the released address is given again");
        exchange(&d, "c1", "c3");

        // Restarts: dockerd (live-restore), then tapnetd; tapnetd, then dockerd. A TCP
        // connection from c3 to c1 streams through all of them (c1 echoes a line every
        // 0.2 s back), and a new exchange works after each.
        d.ok(&["exec", "-d", "c1", "nc", "-l", "-p", "7001", "-e", "cat"]);
        let lines = |d: &Dockerd| -> usize {
            let out = d.docker(&["exec", "c3", "cat", "/got"]);
            String::from_utf8_lossy(&out.stdout).lines().count()
        };
        // (connects again until the server listens; once lines flow, a broken
        // connection ends it for good)
        d.ok(&[
            "exec",
            "-d",
            "c3",
            "sh",
            "-c",
            "while ! [ -s /got ]; do (while true; do echo x; sleep 0.2; done | nc c1 7001 > /got); sleep 0.2; done",
        ]);
        wait_for("c3's stream to c1 to start", || lines(&d) > 2);
        d.restart();
        exchange(&d, "c1", "c3");
        // (before a restart tapnet knows the tap by the name it handed off)
        let handed = port_of(env, "tn1", &ep1).unwrap()["Interface"].clone();
        assert!(
            handed.as_str().is_some_and(|n| n.starts_with("tap")),
            "{handed}"
        );
        restart_tapnetd(env);
        exchange(&d, "c3", "c1");
        // The restore found c1's tap by MAC under dockerd's name and recorded it.
        assert_eq!(port_of(env, "tn1", &ep1).unwrap()["Interface"], "eth0");
        assert!(port_of(env, "tn1", &ep1).is_some() && port_of(env, "tn1", &ep3).is_some());
        restart_tapnetd(env);
        d.restart();
        exchange(&d, "c1", "c3");
        let before = lines(&d);
        wait_for("the stream that crossed every restart to go on", || {
            lines(&d) > before + 5
        });
        // After the restarts, rm still releases.
        d.ok(&[
            "run",
            "-d",
            "--network",
            "tn1",
            "--name",
            "c4",
            "bb",
            "sleep",
            "1000",
        ]);
        let (ep4, _, _, key4) = docker_endpoint(&d, "c4", "tn1");
        d.ok(&["rm", "-f", "c4"]);
        assert!(port_of(env, "tn1", &ep4).is_none());
        assert_ne!(key4, key1);

        // A namespace that vanished without Leave (dockerd's file unmounted and
        // removed): the sandbox goes with its endpoint and address.
        d.ok(&[
            "run",
            "-d",
            "--network",
            "tn1",
            "--name",
            "c5",
            "bb",
            "sleep",
            "1000",
        ]);
        let (ep5, _, _, key5) = docker_endpoint(&d, "c5", "tn1");
        wait_for("tapnet to hold c5's namespace", || {
            env.daemon_log()
                .lines()
                .any(|l| l.contains("namespace opened") && l.contains(&key5))
        });
        assert!(port_of(env, "tn1", &ep5).is_some());
        env.host_cmd(&["umount", "-l", &key5]);
        std::fs::remove_file(&key5).unwrap();
        wait_for("tapnet to release c5's vanished namespace", || {
            port_of(env, "tn1", &ep5).is_none()
        });
        assert!(env
            .daemon_log()
            .contains("namespace of a Docker container vanished"));
        let _ = d.docker(&["rm", "-f", "c5"]);

        // A container removed while tapnetd is down: dockerd moves its tap back to
        // tapnetd's namespace and its Leave fails; the next start drops the endpoint,
        // frees the address and deletes the tap.
        d.ok(&[
            "run",
            "-d",
            "--network",
            "tn1",
            "--name",
            "c6",
            "bb",
            "sleep",
            "1000",
        ]);
        let (ep6, _, _, _) = docker_endpoint(&d, "c6", "tn1");
        env.stop_daemon();
        let _ = d.docker(&["rm", "-f", "c6"]);
        restart_tapnetd(env);
        assert!(port_of(env, "tn1", &ep6).is_none());
        let links = Command::new("ip").args(["-o", "link"]).output().unwrap();
        let links = String::from_utf8_lossy(&links.stdout).into_owned();
        assert!(
            !links.contains(": tap"),
            "the handed-back tap is deleted: {links}"
        );

        // A device deleted without Leave: tapnet notices and releases the endpoint.
        let out = env.nsenter(std::path::Path::new(&key3), &["ip", "link", "del", "eth0"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        wait_for("tapnet to release c3's vanished endpoint", || {
            port_of(env, "tn1", &ep3).is_none()
        });
        assert!(env.daemon_log().contains("vanished without Leave"));
        // dockerd's own removal afterwards is answered too.
        d.ok(&["rm", "-f", "c3"]);
        d.ok(&["rm", "-f", "c1"]);
        assert!(addrs(&env.get("/networks/tn1")).is_empty());
        let left = String::from_utf8_lossy(
            &Command::new("ip")
                .args(["-o", "link"])
                .output()
                .unwrap()
                .stdout,
        )
        .into_owned();
        assert!(
            !left.contains(": tap"),
            "no tap left in tapnetd's namespace: {left}"
        );
        d.ok(&["network", "rm", "tn1"]);
        assert!(!env.tapnet(&["network", "inspect", "tn1"]).status.success());
        drop(d);
    });
}

#[test]
fn docker_plugin_ipam() {
    in_root_namespace("docker_plugin_ipam", |env| {
        let mut d = Dockerd::start(&env.root);
        d.ok(&[
            "network",
            "create",
            "-d",
            "tapnet",
            "--ipam-driver",
            "tapnet",
            "tn2",
        ]);
        wait_for("tapnet to learn the network's name", || {
            env.tapnet(&["network", "inspect", "tn2"]).status.success()
        });
        let t = env.get("/networks/tn2");
        let subnet = t["IPAM"]["Config"][0]["Subnet"]
            .as_str()
            .unwrap()
            .to_string();
        let dv = json(&d.ok(&["network", "inspect", "tn2"]));
        assert_eq!(dv[0]["IPAM"]["Driver"], "tapnet");
        assert_eq!(dv[0]["IPAM"]["Config"][0]["Subnet"], subnet.as_str());
        // Not the pre-defined bridge network's pool.
        let bridge = env.get("/networks/bridge");
        assert_ne!(bridge["IPAM"]["Config"][0]["Subnet"], subnet.as_str());
        let file = env.root.join("data/docker-plugin-ipam.json");
        assert!(std::fs::read_to_string(&file).unwrap().contains(&subnet));

        d.ok(&[
            "run",
            "-d",
            "--network",
            "tn2",
            "--name",
            "ca",
            "bb",
            "nc",
            "-ll",
            "-p",
            "7000",
            "-e",
            "echo",
            "pong-ca",
        ]);
        d.ok(&[
            "run",
            "-d",
            "--network",
            "tn2",
            "--name",
            "cb",
            "bb",
            "nc",
            "-ll",
            "-p",
            "7000",
            "-e",
            "echo",
            "pong-cb",
        ]);
        exchange(&d, "ca", "cb");
        let (_, ipa, _, _) = docker_endpoint(&d, "ca", "tn2");
        let (_, ipb, _, _) = docker_endpoint(&d, "cb", "tn2");
        assert_ne!(ipa, ipb);

        // A restart keeps the allocations: the next container gets a third address.
        restart_tapnetd(env);
        exchange(&d, "cb", "ca");
        d.ok(&[
            "run",
            "-d",
            "--network",
            "tn2",
            "--name",
            "cc",
            "bb",
            "sleep",
            "1000",
        ]);
        let (_, ipc, _, _) = docker_endpoint(&d, "cc", "tn2");
        assert!(ipc != ipa && ipc != ipb, "{ipc} given twice");
        // A pool that overlaps a tapnet network is refused.
        let err = d.fails(&[
            "network",
            "create",
            "-d",
            "tapnet",
            "--ipam-driver",
            "tapnet",
            "--subnet",
            &subnet,
            "tn3",
        ]);
        assert!(err.contains("overlaps"), "{err}");

        for c in ["ca", "cb", "cc"] {
            d.ok(&["rm", "-f", c]);
        }
        d.ok(&["network", "rm", "tn2"]);
        let pools = std::fs::read_to_string(&file).unwrap();
        assert!(!pools.contains(&subnet), "pool released: {pools}");
        d.stop();
    });
}
