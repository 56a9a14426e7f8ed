//! Remote drivers: tapnet driving a network + IPAM plugin written by others (here the
//! Python plugin `tests/plugins/remote_plugin.py`, which makes a real kernel bridge
//! and veth pairs), through the real CLI and API, with real traffic. Every test asks
//! the plugin what it holds afterwards (`GET /debug/state`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tapnet_tests::{connect_in, in_namespace, python3, tcp_server, Env};

const PLUGIN: &str = "remote-test";

/// The test plugin, started in the test's namespace (tapnetd's).
struct Plugin {
    child: Option<Child>,
    socket: PathBuf,
    log: PathBuf,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("plugins/remote_plugin.py")
}

impl Plugin {
    /// Start the plugin listening on `<dir>/<PLUGIN>.sock`; wait for the socket unless
    /// `wait` is false.
    fn start(env: &Env, dir: &Path, extra: &[&str], wait: bool) -> Plugin {
        Plugin::start_named(env, dir, PLUGIN, extra, wait)
    }

    /// [`Plugin::start`] under another name.
    fn start_named(env: &Env, dir: &Path, name: &str, extra: &[&str], wait: bool) -> Plugin {
        let socket = dir.join(format!("{name}.sock"));
        let log = env.root.join("plugin.log");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = Command::new(python3())
            .arg(script())
            .arg("--socket")
            .arg(&socket)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .expect("start the test plugin");
        let p = Plugin {
            child: Some(child),
            socket,
            log,
        };
        if wait {
            let deadline = Instant::now() + Duration::from_secs(10);
            while !p.socket.exists() {
                assert!(
                    Instant::now() < deadline,
                    "plugin did not start: {}",
                    p.log()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        p
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn curl(&self, args: &[&str]) -> String {
        let out = Command::new("curl")
            .args(["-s", "-m", "10", "--unix-socket"])
            .arg(&self.socket)
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "curl {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// What the plugin holds and every call it got.
    fn state(&self) -> Value {
        serde_json::from_str(&self.curl(&["http://plugin/debug/state"])).unwrap()
    }

    /// Inject `mode` into `method` ("" clears).
    fn mode(&self, method: &str, mode: &str) {
        let body = serde_json::json!({"method": method, "mode": mode}).to_string();
        self.curl(&["-X", "POST", "-d", &body, "http://plugin/debug/mode"]);
    }

    /// The bodies of the calls of `method`, in order.
    fn calls(&self, method: &str) -> Vec<Value> {
        self.state()["calls"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["method"] == method)
            .map(|c| c["body"].clone())
            .collect()
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // By pid: only the plugin this test started.
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The plugin directory of a test, and the daemon restarted to search it.
fn plugin_env(env: &mut Env, extra: &[&str]) -> PathBuf {
    let dir = env.root.join("plugins");
    std::fs::create_dir_all(&dir).unwrap();
    env.stop_daemon();
    env.start_daemon_with(&flags_ref(&daemon_flags(&dir, extra)));
    dir
}

fn daemon_flags(dir: &Path, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = vec![
        "--plugin-dir".into(),
        dir.display().to_string(),
        "--plugin-retry-deadline".into(),
        "2s".into(),
        "--plugin-timeout".into(),
        "2s".into(),
    ];
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn flags_ref(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn links(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn link_exists(name: &str) -> bool {
    Command::new("ip")
        .args(["link", "show", name])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
}

fn endpoint_id(env: &Env, network: &str, sandbox: &str) -> String {
    let v = env.get(&format!("/sandboxes/{sandbox}"));
    v["Endpoints"][network]["EndpointID"]
        .as_str()
        .unwrap_or_else(|| panic!("{sandbox} not on {network}: {v}"))
        .to_string()
}

/// A TCP exchange from `from` to `to_ip`:7000 in `to`: the bytes arrive and come back,
/// and the server saw `from`'s address.
fn tcp_exchange(env: &Env, from: &str, from_ip: &str, to: &str, to_ip: &str) {
    let ns_to = env.sandbox_ns(to);
    let server = tcp_server(&ns_to, &format!("{to_ip}:7000"), |mut s| {
        let mut buf = [0u8; 64];
        if let Ok(k) = std::io::Read::read(&mut s, &mut buf) {
            let _ = std::io::Write::write_all(&mut s, &buf[..k]);
        }
    });
    let ns_from = env.sandbox_ns(from);
    let mut c = connect_in(&ns_from, &format!("{to_ip}:7000"), Duration::from_secs(5))
        .expect("TCP connect through the plugin's bridge");
    std::io::Write::write_all(&mut c, b"through the plugin").unwrap();
    let mut buf = [0u8; 64];
    let k = std::io::Read::read(&mut c, &mut buf).unwrap();
    assert_eq!(&buf[..k], b"through the plugin");
    assert!(
        server.seen().iter().any(|p| p.ip().to_string() == from_ip),
        "server saw {:?}, expected {from_ip}",
        server.seen()
    );
}

#[test]
fn remote_network_driver_end_to_end() {
    in_namespace("remote_network_driver_end_to_end", |env| {
        let dir = plugin_env(env, &[]);
        let plugin = Plugin::start(env, &dir, &[], true);
        let nid = env
            .ok(&[
                "network",
                "create",
                "-d",
                PLUGIN,
                "--subnet",
                "10.61.0.0/24",
                "-o",
                "color=blue",
                "rnet",
            ])
            .trim()
            .to_string();
        // The plugin made its bridge with the gateway address, and got Docker's body.
        let st = plugin.state();
        let net = &st["networks"][&nid];
        let bridge = net["bridge"].as_str().unwrap().to_string();
        assert!(link_exists(&bridge));
        assert_eq!(net["ipv4"][0]["Pool"], "10.61.0.0/24");
        assert_eq!(net["ipv4"][0]["Gateway"], "10.61.0.1/24");
        assert_eq!(
            net["options"]["com.docker.network.generic"]["color"],
            "blue"
        );
        let inspect = env.get("/networks/rnet");
        assert_eq!(inspect["Driver"], PLUGIN);
        assert_eq!(inspect["Scope"], "local");

        env.sandbox("a");
        env.sandbox("b");
        let a = env.connect("rnet", "a");
        let b = env.connect("rnet", "b");
        assert_eq!((a.as_str(), b.as_str()), ("10.61.0.2", "10.61.0.3"));
        // The plugin's interface, moved in, named eth0, with the address, gateway and
        // static routes; its host end is on the plugin's bridge.
        let addr = env.exec_ok("a", &["ip", "-o", "-4", "addr", "show", "eth0"]);
        assert!(addr.contains("10.61.0.2/24"), "{addr}");
        let routes = env.exec_ok("a", &["ip", "-4", "route"]);
        assert!(
            routes.contains("default via 10.61.0.1 dev eth0"),
            "{routes}"
        );
        assert!(
            routes.contains("10.99.0.0/24 via 10.61.0.1 dev eth0"),
            "{routes}"
        );
        assert!(
            routes.contains("10.98.0.0/24 dev eth0 scope link"),
            "{routes}"
        );
        let ea = endpoint_id(env, "rnet", "a");
        let eb = endpoint_id(env, "rnet", "b");
        let st = plugin.state();
        let cont_a = st["joined"][&ea]["container"].as_str().unwrap().to_string();
        assert!(
            !link_exists(&cont_a),
            "{cont_a} should have moved into the sandbox"
        );
        // Inspect shows the plugin's EndpointOperInfo.
        let sb = env.get("/sandboxes/a");
        assert_eq!(
            sb["Endpoints"]["rnet"]["DriverInfo"]["host_veth"], st["joined"][&ea]["host"],
            "{sb}"
        );
        let on_bridge = links(&["-o", "link", "show", "master", &bridge]);
        assert_eq!(on_bridge.lines().count(), 2, "{on_bridge}");
        // Docker's bodies: CreateEndpoint got the address and MAC, Join the sandbox key.
        let ce = plugin.calls("NetworkDriver.CreateEndpoint");
        assert_eq!(ce[0]["Interface"]["Address"], "10.61.0.2/24");
        assert_eq!(ce[0]["Interface"]["MacAddress"], "02:42:0a:3d:00:02");
        let link = env.exec_ok("a", &["ip", "-o", "link", "show", "eth0"]);
        assert!(link.contains("02:42:0a:3d:00:02"), "{link}");
        let joins = plugin.calls("NetworkDriver.Join");
        assert_eq!(
            joins[0]["SandboxKey"].as_str().unwrap(),
            env.netns_path("a").display().to_string()
        );
        assert_eq!(
            plugin
                .calls("NetworkDriver.ProgramExternalConnectivity")
                .len(),
            2
        );
        // A sandbox with published ports: the plugin gets them as Docker's portmap.
        env.ok(&["sandbox", "create", "-p", "8080:80", "web"]);
        env.ok(&["network", "connect", "rnet", "web"]);
        let ew = endpoint_id(env, "rnet", "web");
        let pm = &plugin.state()["external"][&ew][0];
        assert_eq!(pm["Proto"], 6, "{pm}");
        assert_eq!(pm["Port"], 80, "{pm}");
        assert_eq!(pm["HostPort"], 8080, "{pm}");
        assert_eq!(pm["IP"], "10.61.0.4", "{pm}");
        env.ok(&["sandbox", "rm", "web"]);
        let st = plugin.state();
        assert!(
            st["external"].get(&ew).is_none(),
            "revoked on sandbox rm: {st}"
        );
        assert!(st["endpoints"].get(&ew).is_none(), "{st}");

        // Real traffic through the plugin's kernel bridge.
        assert!(env.ping("a", &b, 3), "a cannot ping b through the plugin");
        assert!(
            env.ping("b", "10.61.0.1", 2),
            "b cannot ping the plugin's gateway"
        );
        tcp_exchange(env, "a", &a, "b", &b);

        // Daemon restart: the plugin keeps its network, the sandboxes stay connected
        // and tapnet can still undo what it did (the interface goes back and Leave).
        let ns_a = env.netns_path("a");
        env.stop_daemon();
        let out = env.nsenter(
            &ns_a,
            &["ping", "-n", "-q", "-c", "2", "-i", "0.2", "-W", "2", &b],
        );
        assert!(
            out.status.success(),
            "traffic stops while tapnetd is down: {out:?}"
        );
        let calls_before = plugin.state()["calls"].as_array().unwrap().len();
        env.start_daemon_with(&flags_ref(&daemon_flags(&dir, &[])));
        assert_eq!(
            plugin.calls("NetworkDriver.CreateNetwork").len(),
            1,
            "a restored network is not created again"
        );
        assert_eq!(
            plugin.state()["calls"].as_array().unwrap().len(),
            calls_before,
            "restore does not call the plugin (it is activated on first use)"
        );
        assert_eq!(endpoint_id(env, "rnet", "a"), ea);
        assert!(env.ping("a", &b, 2));
        tcp_exchange(env, "b", &b, "a", &a);

        // Disconnect after the restart: revoke, the interface leaves the sandbox, Leave,
        // DeleteEndpoint; the plugin holds only a.
        env.ok(&["network", "disconnect", "rnet", "b"]);
        assert_eq!(
            plugin.calls("Plugin.Activate").len(),
            2,
            "activated again by the first call after the restart"
        );
        let st = plugin.state();
        assert!(st["joined"].get(&eb).is_none(), "{st}");
        assert!(st["endpoints"].get(&eb).is_none(), "{st}");
        assert!(st["endpoints"].get(&ea).is_some());
        let revoked = plugin.calls("NetworkDriver.RevokeExternalConnectivity");
        assert_eq!(revoked.last().unwrap()["EndpointID"], eb.as_str());
        let out = env.exec("b", &["ip", "link", "show", "eth0"]);
        assert!(!out.status.success(), "eth0 is still in b");
        assert_eq!(
            links(&["-o", "link", "show", "master", &bridge])
                .lines()
                .count(),
            1
        );
        // Connect again after the restart (the plugin is activated lazily).
        let b2 = env.connect("rnet", "b");
        assert!(env.ping("b", &a, 2));
        env.ok(&["network", "disconnect", "rnet", "b"]);
        env.ok(&["network", "disconnect", "rnet", "a"]);
        assert!(!env
            .exec("a", &["ip", "link", "show", "eth0"])
            .status
            .success());
        let _ = b2;

        // Remove: DeleteNetwork, the bridge goes; the plugin holds nothing.
        env.ok(&["network", "rm", "rnet"]);
        let st = plugin.state();
        assert_eq!(st["networks"], serde_json::json!({}));
        assert_eq!(st["endpoints"], serde_json::json!({}));
        assert_eq!(st["joined"], serde_json::json!({}));
        assert!(!link_exists(&bridge));
        assert_eq!(
            plugin.calls("NetworkDriver.DeleteNetwork")[0]["NetworkID"],
            nid.as_str()
        );
    });
}

/// `tapnet` failing: its stderr (the daemon's message).
fn fails(env: &Env, args: &[&str]) -> String {
    env.fails(args)
}

/// The addresses a plugin pool holds.
fn pool_addresses(st: &Value) -> Vec<String> {
    let mut v: Vec<String> = st["pools"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|p| p["addresses"].as_object().unwrap().keys().cloned())
        .collect();
    v.sort();
    v
}

#[test]
fn remote_ipam_end_to_end() {
    in_namespace("remote_ipam_end_to_end", |env| {
        let dir = plugin_env(env, &[]);
        let plugin = Plugin::start(env, &dir, &["--requires-mac"], true);
        // tapnet's own bridge driver with the plugin's addresses.
        env.ok(&[
            "network",
            "create",
            "--ipam-driver",
            PLUGIN,
            "--subnet",
            "10.62.0.0/24",
            "--ip-range",
            "10.62.0.128/25",
            "--ipam-opt",
            "zone=z1",
            "inet",
        ]);
        let st = plugin.state();
        let pools = st["pools"].as_object().unwrap();
        assert_eq!(pools.len(), 1, "{st}");
        let pool = pools.values().next().unwrap();
        assert_eq!(pool["pool"], "10.62.0.0/24");
        assert_eq!(pool["sub"], "10.62.0.128/25");
        assert_eq!(pool["options"]["zone"], "z1");
        assert_eq!(
            pool["space"], "rlocal",
            "GetDefaultAddressSpaces' local space"
        );
        assert_eq!(pool["addresses"]["10.62.0.1"]["gateway"], true);
        let inspect = env.get("/networks/inet");
        assert_eq!(inspect["IPAM"]["Driver"], PLUGIN);
        assert_eq!(inspect["IPAM"]["Options"]["zone"], "z1");
        assert_eq!(inspect["IPAM"]["Config"][0]["Gateway"], "10.62.0.1");

        env.sandbox("a");
        env.sandbox("b");
        env.ok(&["network", "connect", "--ip", "10.62.0.200", "inet", "a"]);
        let b = env.connect("inet", "b");
        assert_eq!(env.ip_of("inet", "a"), "10.62.0.200");
        assert_eq!(b, "10.62.0.129", "the plugin's first address of the range");
        let st = plugin.state();
        let asked = plugin.calls("IpamDriver.RequestAddress");
        assert!(
            asked.iter().any(|c| c["Address"] == "10.62.0.200"),
            "{asked:?}"
        );
        // RequiresMACAddress: the endpoint's MAC came with the request and is the one
        // the sandbox's interface has.
        let mac = st["pools"].as_object().unwrap().values().next().unwrap()["addresses"]
            ["10.62.0.200"]["mac"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(!mac.is_empty(), "{st}");
        let link = env.exec_ok("a", &["ip", "-o", "link", "show", "eth0"]);
        assert!(link.contains(&mac), "{link} lacks {mac}");
        assert!(env.ping("a", &b, 3));
        assert!(env.ping("b", "10.62.0.200", 2));
        assert!(
            env.ping("a", "10.62.0.1", 2),
            "tapnet's gateway at the plugin's gateway address"
        );

        // A remote driver with the plugin's IPAM and no subnet: the plugin picks one.
        env.ok(&[
            "network",
            "create",
            "-d",
            PLUGIN,
            "--ipam-driver",
            PLUGIN,
            "both",
        ]);
        let inspect = env.get("/networks/both");
        assert_eq!(inspect["IPAM"]["Config"][0]["Subnet"], "10.77.1.0/24");
        assert_eq!(inspect["IPAM"]["Config"][0]["Gateway"], "10.77.1.1");
        let a2 = env.connect("both", "a");
        assert_eq!(a2, "10.77.1.2");
        let b2 = env.connect("both", "b");
        assert!(env.ping("a", &b2, 2));
        assert!(
            env.ping("b", "10.77.1.1", 2),
            "the plugin bridge's gateway address"
        );

        // Restart: the plugin keeps its pools (no replay); releases still reach it.
        let pools_asked = plugin.calls("IpamDriver.RequestPool").len();
        env.stop_daemon();
        env.start_daemon_with(&flags_ref(&daemon_flags(&dir, &[])));
        assert_eq!(plugin.calls("IpamDriver.RequestPool").len(), pools_asked);
        assert!(env.ping("a", &b, 2));
        env.ok(&["network", "disconnect", "inet", "b"]);
        let released = plugin.calls("IpamDriver.ReleaseAddress");
        assert_eq!(released.last().unwrap()["Address"], "10.62.0.129");
        // Connect after the restart: the plugin hands out the freed address again.
        assert_eq!(env.connect("inet", "b"), "10.62.0.129");

        // The stock docker CLI against tapnetd does the same.
        env.docker_ok(&[
            "network",
            "create",
            "-d",
            PLUGIN,
            "--ipam-driver",
            PLUGIN,
            "--ipam-opt",
            "k=v",
            "dnet",
        ]);
        let d: Value =
            serde_json::from_str(&env.docker_ok(&["network", "inspect", "dnet"])).unwrap();
        assert_eq!(d[0]["Driver"], PLUGIN);
        assert_eq!(d[0]["IPAM"]["Driver"], PLUGIN);
        assert_eq!(d[0]["IPAM"]["Config"][0]["Subnet"], "10.77.2.0/24");
        env.docker_ok(&["network", "rm", "dnet"]);
        assert_eq!(
            plugin.state()["pools"].as_object().unwrap().len(),
            2,
            "{}\n{}",
            plugin.state(),
            env.daemon_log()
                .lines()
                .filter(|l| l.contains("WARN"))
                .collect::<Vec<_>>()
                .join("\n")
        );

        for (n, s) in [("inet", "a"), ("inet", "b"), ("both", "a"), ("both", "b")] {
            env.ok(&["network", "disconnect", n, s]);
        }
        env.ok(&["network", "rm", "inet", "both"]);
        let st = plugin.state();
        assert_eq!(
            st["pools"],
            serde_json::json!({}),
            "ReleaseAddress(gateway) + ReleasePool"
        );
        assert_eq!(st["networks"], serde_json::json!({}));
        assert_eq!(plugin.calls("IpamDriver.ReleasePool").len(), 3);
    });
}

/// What tapnet and the plugin hold: the sandbox has no endpoint on `network` and
/// no interface besides lo; the plugin holds no endpoint, join or endpoint address.
fn assert_nothing_half_made(env: &Env, plugin: &Plugin, sandbox: &str, network: &str) {
    let sb = env.get(&format!("/sandboxes/{sandbox}"));
    assert!(
        sb["Endpoints"].get(network).is_none(),
        "{sandbox} has an endpoint on {network}: {sb}"
    );
    let links = env.exec_ok(sandbox, &["ip", "-o", "link", "show"]);
    assert_eq!(links.lines().count(), 1, "only lo in {sandbox}: {links}");
    let net = env.get(&format!("/networks/{network}"));
    assert_eq!(net["Containers"], serde_json::json!({}), "{net}");
    let st = plugin.state();
    assert_eq!(st["endpoints"], serde_json::json!({}), "{st}");
    assert_eq!(st["joined"], serde_json::json!({}), "{st}");
    // Only gateways stay allocated.
    for p in st["pools"].as_object().unwrap().values() {
        for (a, v) in p["addresses"].as_object().unwrap() {
            assert_eq!(v["gateway"], true, "{a} still allocated: {st}");
        }
    }
    // No veth of the plugin is left in tapnetd's namespace.
    let host = links_of_host();
    assert!(!host.contains("rtc"), "a plugin interface is left: {host}");
}

fn links_of_host() -> String {
    links(&["-o", "link", "show"])
}

#[test]
fn remote_failures_leave_nothing() {
    in_namespace("remote_failures_leave_nothing", |env| {
        let dir = plugin_env(env, &[]);
        env.sandbox("a");

        // Not found (nothing in the plugin dir): 404 after the retry deadline.
        let e = fails(
            env,
            &[
                "network",
                "create",
                "-d",
                PLUGIN,
                "--subnet",
                "10.63.0.0/24",
                "x",
            ],
        );
        assert!(e.contains("plugin \"remote-test\" not found"), "{e}");
        let e = fails(env, &["network", "create", "--ipam-driver", "nosuch", "x"]);
        assert!(e.contains("plugin \"nosuch\" not found"), "{e}");
        let ls = env.ok(&["network", "ls", "-q", "--no-trunc"]);
        assert_eq!(ls.lines().count(), 3, "only the pre-defined networks: {ls}");

        // Found through a .json spec file pointing elsewhere; a spec asking for TLS is
        // refused by name.
        let elsewhere = env.root.join("elsewhere");
        std::fs::create_dir_all(&elsewhere).unwrap();
        let mut by_spec = Plugin::start_named(env, &elsewhere, "specp", &[], true);
        std::fs::write(
            dir.join("specp.json"),
            format!(
                r#"{{"Name":"specp","Addr":"unix://{}","TLSConfig":null}}"#,
                by_spec.socket.display()
            ),
        )
        .unwrap();
        env.ok(&[
            "network",
            "create",
            "-d",
            "specp",
            "--subnet",
            "10.67.0.0/24",
            "viaspec",
        ]);
        assert_eq!(by_spec.calls("NetworkDriver.CreateNetwork").len(), 1);
        env.ok(&["network", "rm", "viaspec"]);
        by_spec.stop();
        std::fs::write(dir.join("tlsp.spec"), "https://127.0.0.1:9443\n").unwrap();
        let e = fails(env, &["network", "create", "-d", "tlsp", "x"]);
        assert!(
            e.contains("TLS is not supported") && e.contains("tlsp.spec"),
            "{e}"
        );

        // A plugin that is not a network driver; a global one without a cluster store.
        let mut ipam_only =
            Plugin::start_named(env, &dir, "ipamonly", &["--implements", "IpamDriver"], true);
        let e = fails(env, &["network", "create", "-d", "ipamonly", "x"]);
        assert!(e.contains("does not implement NetworkDriver"), "{e}");
        ipam_only.stop();
        let mut global = Plugin::start_named(env, &dir, "globalp", &["--scope", "global"], true);
        let e = fails(env, &["network", "create", "-d", "globalp", "x"]);
        assert!(e.contains("global scope and needs a cluster store"), "{e}");
        assert!(global.state()["networks"].as_object().unwrap().is_empty());
        global.stop();

        let plugin = Plugin::start(env, &dir, &["--slow", "3"], true);
        // CreateNetwork failing in each way: no network in tapnet, none in the plugin,
        // the IPAM pool given back (the same subnet works afterwards).
        for (mode, want) in [
            ("err", "injected failure in NetworkDriver.CreateNetwork"),
            ("err200", "injected failure in NetworkDriver.CreateNetwork"),
            ("garbage", "not JSON"),
            ("slow", "did not answer within"),
            ("close", "NetworkDriver.CreateNetwork"),
        ] {
            plugin.mode("NetworkDriver.CreateNetwork", mode);
            let e = fails(
                env,
                &[
                    "network",
                    "create",
                    "-d",
                    PLUGIN,
                    "--subnet",
                    "10.63.0.0/24",
                    "rnet",
                ],
            );
            assert!(
                e.contains("plugin \"remote-test\"") && e.contains(want),
                "{mode}: {e}"
            );
            let (code, _) = env.api("GET", "/networks/rnet", None);
            assert_eq!(code, 404, "{mode}: a half-made network");
            assert!(plugin.state()["networks"].as_object().unwrap().is_empty());
        }
        plugin.mode("NetworkDriver.CreateNetwork", "");
        env.ok(&[
            "network",
            "create",
            "-d",
            PLUGIN,
            "--subnet",
            "10.63.0.0/24",
            "rnet",
        ]);

        // Each failing step of connect unwinds the ones before it.
        for (method, mode, want) in [
            ("NetworkDriver.CreateEndpoint", "err", "injected failure"),
            (
                "NetworkDriver.CreateEndpoint",
                "slow",
                "did not answer within",
            ),
            (
                "NetworkDriver.CreateEndpoint",
                "shape",
                "unexpected answer at Interface",
            ),
            ("NetworkDriver.Join", "err", "injected failure"),
            ("NetworkDriver.Join", "garbage", "not JSON"),
            ("NetworkDriver.Join", "shape", "InterfaceName"),
            (
                "NetworkDriver.Join",
                "srcname",
                "\"nosuchdev0\") does not exist",
            ),
            (
                "NetworkDriver.ProgramExternalConnectivity",
                "err",
                "injected failure",
            ),
            // A MAC the endpoint already had: Docker's fill-only rule.
            ("NetworkDriver.CreateEndpoint", "mac", "chose a MAC address"),
        ] {
            plugin.mode(method, mode);
            let e = fails(env, &["network", "connect", "rnet", "a"]);
            assert!(
                e.contains("plugin \"remote-test\"") && e.contains(want),
                "{method} {mode}: {e}"
            );
            plugin.mode(method, "");
            assert_nothing_half_made(env, &plugin, "a", "rnet");
        }
        // After all that, the first address is still free: every one was given back.
        assert_eq!(env.connect("rnet", "a"), "10.63.0.2");
        // A failing Leave keeps the endpoint (nothing half-removed), as the rollback
        // joins it again.
        plugin.mode("NetworkDriver.Leave", "err");
        let e = fails(env, &["network", "disconnect", "rnet", "a"]);
        assert!(e.contains("injected failure in NetworkDriver.Leave"), "{e}");
        plugin.mode("NetworkDriver.Leave", "");
        assert_eq!(env.ip_of("rnet", "a"), "10.63.0.2");
        env.ok(&["network", "disconnect", "rnet", "a"]);
        assert_nothing_half_made(env, &plugin, "a", "rnet");

        // IPAM: an address outside the pool is released again; a driver failing after
        // RequestAddress releases the address; a failing pool request leaves no pool.
        env.ok(&[
            "network",
            "create",
            "-d",
            PLUGIN,
            "--ipam-driver",
            PLUGIN,
            "--subnet",
            "10.64.0.0/24",
            "both",
        ]);
        plugin.mode("IpamDriver.RequestAddress", "outside");
        let e = fails(env, &["network", "connect", "both", "a"]);
        assert!(
            e.contains("192.0.2.77") && e.contains("not in the pool"),
            "{e}"
        );
        plugin.mode("IpamDriver.RequestAddress", "");
        assert_eq!(pool_addresses(&plugin.state()), ["10.64.0.1"]);
        // The same after a daemon restart (tapnet no longer knows the pool from
        // RequestPool: the network's subnet decides).
        env.stop_daemon();
        env.start_daemon_with(&flags_ref(&daemon_flags(&dir, &[])));
        plugin.mode("IpamDriver.RequestAddress", "outside");
        let e = fails(env, &["network", "connect", "both", "a"]);
        assert!(
            e.contains("192.0.2.77") && e.contains("outside the network's subnet"),
            "{e}"
        );
        plugin.mode("IpamDriver.RequestAddress", "");
        assert_eq!(pool_addresses(&plugin.state()), ["10.64.0.1"]);
        plugin.mode("NetworkDriver.CreateEndpoint", "err");
        fails(env, &["network", "connect", "both", "a"]);
        plugin.mode("NetworkDriver.CreateEndpoint", "");
        let released = plugin.calls("IpamDriver.ReleaseAddress");
        assert_eq!(released.last().unwrap()["Address"], "10.64.0.2");
        assert_nothing_half_made(env, &plugin, "a", "both");
        assert_eq!(pool_addresses(&plugin.state()), ["10.64.0.1"]);
        for (method, mode) in [
            ("IpamDriver.RequestPool", "err"),
            ("IpamDriver.RequestPool", "shape"),
            ("IpamDriver.RequestAddress", "err"),
            ("IpamDriver.RequestAddress", "slow"),
            ("NetworkDriver.CreateNetwork", "err"),
        ] {
            plugin.mode(method, mode);
            let e = fails(
                env,
                &[
                    "network",
                    "create",
                    "-d",
                    PLUGIN,
                    "--ipam-driver",
                    PLUGIN,
                    "--subnet",
                    "10.65.0.0/24",
                    "half",
                ],
            );
            assert!(e.contains("plugin \"remote-test\""), "{method} {mode}: {e}");
            plugin.mode(method, "");
            let (code, _) = env.api("GET", "/networks/half", None);
            assert_eq!(code, 404);
            let st = plugin.state();
            let pools: Vec<&String> = st["pools"].as_object().unwrap().keys().collect();
            assert_eq!(
                pools.len(),
                1,
                "{method} {mode}: only both's pool is left: {st}"
            );
        }

        // The plugin down after it was activated: 503 naming it, nothing changed.
        let mut plugin = plugin;
        plugin.stop();
        let e = fails(env, &["network", "connect", "rnet", "a"]);
        assert!(
            e.contains("plugin \"remote-test\" cannot be reached"),
            "{e}"
        );
        let sb = env.get("/sandboxes/a");
        assert_eq!(sb["Endpoints"], serde_json::json!({}), "{sb}");
        let (code, _) = env.api(
            "POST",
            "/networks/rnet/connect",
            Some(r#"{"Container":"a"}"#),
        );
        assert_eq!(code, 503);
    });
}

#[test]
fn remote_plugin_found_with_backoff() {
    in_namespace("remote_plugin_found_with_backoff", |env| {
        let dir = plugin_env(env, &[]);
        env.stop_daemon();
        let dir_s = dir.display().to_string();
        env.start_daemon_with(&[
            "--plugin-dir",
            &dir_s,
            "--plugin-retry-deadline",
            "10s",
            "--plugin-timeout",
            "2s",
        ]);
        // The plugin's socket appears about 1.5 s after the call starts: discovery
        // looks again after 1 s and 2 s (dockerd's backoff) and finds it.
        let socket = dir.join(format!("{PLUGIN}.sock"));
        let plugin = Plugin::start(env, &dir, &["--delay-start", "1.5"], false);
        assert!(!socket.exists());
        env.ok(&[
            "network",
            "create",
            "-d",
            PLUGIN,
            "--subnet",
            "10.66.0.0/24",
            "late",
        ]);
        assert_eq!(plugin.calls("NetworkDriver.CreateNetwork").len(), 1);
        assert!(env.daemon_log().contains("plugin activated"));
        // A socket nobody listens on (the plugin restarting): connections are refused
        // and retried until the new plugin listens.
        drop(plugin);
        let stale = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        drop(stale);
        assert!(socket.exists());
        let plugin = Plugin::start(env, &dir, &["--delay-start", "1.5"], false);
        env.sandbox("a");
        // The new plugin process knows no network: its refusal proves the call reached it.
        let e = fails(env, &["network", "connect", "late", "a"]);
        assert!(e.contains("no network"), "{e}");
        assert!(env
            .daemon_log()
            .contains("unable to connect to plugin; retrying"));
        assert_eq!(plugin.calls("NetworkDriver.CreateEndpoint").len(), 1);
        assert_nothing_half_made(env, &plugin, "a", "late");
    });
}

#[test]
fn remote_network_driver_dual_stack() {
    in_namespace("remote_network_driver_dual_stack", |env| {
        let dir = plugin_env(env, &[]);
        let plugin = Plugin::start(env, &dir, &[], true);
        env.ok(&[
            "network",
            "create",
            "-d",
            PLUGIN,
            "--ipv6",
            "--subnet",
            "10.68.0.0/24",
            "--subnet",
            "fd00:68::/64",
            "r6",
        ]);
        let st = plugin.state();
        let net = st["networks"].as_object().unwrap().values().next().unwrap();
        assert_eq!(net["ipv6"][0]["Pool"], "fd00:68::/64");
        assert_eq!(net["ipv6"][0]["Gateway"], "fd00:68::1/64");
        assert_eq!(net["options"]["com.docker.network.enable_ipv6"], true);
        env.sandbox("a");
        env.sandbox("b");
        env.connect("r6", "a");
        env.connect("r6", "b");
        let sb = env.get("/sandboxes/b");
        let b6 = sb["Endpoints"]["r6"]["IPv6Address"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(b6, "fd00:68::3/64");
        let ce = plugin.calls("NetworkDriver.CreateEndpoint");
        assert_eq!(ce[0]["Interface"]["AddressIPv6"], "fd00:68::2/64");
        let addrs = env.exec_ok("a", &["ip", "-o", "-6", "addr", "show", "eth0"]);
        assert!(addrs.contains("fd00:68::2/64"), "{addrs}");
        let routes = env.exec_ok("a", &["ip", "-6", "route"]);
        assert!(
            routes.contains("default via fd00:68::1 dev eth0"),
            "{routes}"
        );
        // IPv6 through the plugin's bridge: to b and to the bridge's gateway address.
        for dst in ["fd00:68::3", "fd00:68::1"] {
            let out = env.exec(
                "a",
                &["ping", "-n", "-q", "-c", "2", "-i", "0.2", "-W", "2", dst],
            );
            assert!(out.status.success(), "ping {dst}: {out:?}");
        }
        for s in ["a", "b"] {
            env.ok(&["network", "disconnect", "r6", s]);
        }
        env.ok(&["network", "rm", "r6"]);
        assert_eq!(plugin.state()["networks"], serde_json::json!({}));
    });
}
