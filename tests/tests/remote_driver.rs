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
        let socket = dir.join(format!("{PLUGIN}.sock"));
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
    #[allow(dead_code)]
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
        assert!(plugin.state()["calls"].as_array().unwrap().len() >= calls_before);
        assert_eq!(endpoint_id(env, "rnet", "a"), ea);
        assert!(env.ping("a", &b, 2));
        tcp_exchange(env, "b", &b, "a", &a);

        // Disconnect after the restart: revoke, the interface leaves the sandbox, Leave,
        // DeleteEndpoint; the plugin holds only a.
        env.ok(&["network", "disconnect", "rnet", "b"]);
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
