//! tapnet-cni driven as a CNI runtime drives it (the `CNI_*` environment, the
//! configuration on stdin, the result or error on stdout) against a real tapnetd,
//! and end to end under podman (CNI backend).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use serde_json::{json, Value};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tapnet_sandbox::netns::Netns;
use tapnet_tests::{built_binary, connect_in, in_namespace, in_namespace_as_root, tcp_server, Env};

/// What one plugin run gave.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }

    /// Asserts success; returns the result JSON (or Null when nothing was printed).
    fn ok(&self) -> Value {
        assert_eq!(self.code, 0, "plugin failed: {self:?}");
        if self.stdout.trim().is_empty() {
            Value::Null
        } else {
            self.json()
        }
    }

    /// Asserts a CNI error with `code`; returns it.
    fn err(&self, code: u64) -> Value {
        assert_ne!(self.code, 0, "plugin succeeded but should fail: {self:?}");
        let v = self.json();
        assert_eq!(v["code"], code, "{self:?}");
        assert!(self.stderr.starts_with("tapnet-cni: "), "{self:?}");
        for k in ["cniVersion", "msg", "details"] {
            assert!(v[k].is_string(), "{k} missing: {self:?}");
        }
        v
    }
}

/// Run tapnet-cni with `vars` (nothing else of CNI's) and `stdin`.
fn plugin(vars: &[(&str, &str)], stdin: &str) -> Run {
    let mut cmd = Command::new(built_binary("tapnet-cni"));
    for k in [
        "CNI_COMMAND",
        "CNI_CONTAINERID",
        "CNI_NETNS",
        "CNI_IFNAME",
        "CNI_ARGS",
        "CNI_PATH",
    ] {
        cmd.env_remove(k);
    }
    cmd.envs(vars.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("run tapnet-cni");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A network configuration for tapnet network `name` on `env`'s daemon.
fn conf(env: &Env, version: &str, name: &str) -> Value {
    json!({"cniVersion": version, "name": name, "type": "tapnet-cni",
        "socket": env.socket.display().to_string()})
}

/// `cmd` for attachment (`id`, `ifname`) in `netns` with configuration `conf`.
fn attach(cmd: &str, id: &str, netns: &Path, ifname: &str, conf: &Value) -> Run {
    let ns = netns.display().to_string();
    plugin(
        &[
            ("CNI_COMMAND", cmd),
            ("CNI_CONTAINERID", id),
            ("CNI_NETNS", &ns),
            ("CNI_IFNAME", ifname),
            ("CNI_PATH", "/opt/cni/bin"),
        ],
        &conf.to_string(),
    )
}

/// `conf` with `prevResult`.
fn with_prev(conf: &Value, prev: &Value) -> Value {
    let mut c = conf.clone();
    c["prevResult"] = prev.clone();
    c
}

/// The IPv4 addresses (`a.b.c.d/len`) and MAC of `ifname` in `ns`, from `ip -j addr`.
fn iface(env: &Env, ns: &Path, ifname: &str) -> Option<(Vec<String>, String)> {
    let out = env.nsenter(ns, &["ip", "-j", "addr", "show", "dev", ifname]);
    if !out.status.success() {
        return None;
    }
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let l = &v[0];
    let addrs = l["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["family"] == "inet")
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
        .collect();
    Some((addrs, l["address"].as_str().unwrap().to_string()))
}

/// The first address of a result, without its prefix length.
fn first_ip(result: &Value) -> String {
    let a = result["ips"][0]["address"].as_str().expect("an address");
    a.split('/').next().unwrap().to_string()
}

fn sandbox_names(env: &Env) -> Vec<String> {
    let mut v: Vec<String> = env
        .get("/sandboxes")
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["Name"].as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

fn ping(env: &Env, ns: &Path, ip: &str) -> bool {
    env.nsenter(
        ns,
        &["ping", "-n", "-q", "-c", "2", "-i", "0.2", "-W", "2", ip],
    )
    .status
    .success()
}

/// A TCP exchange from `from` to `to` at `ip`: the server echoes what it reads
/// uppercased; the client must get exactly that back.
fn tcp_exchange(from: &Netns, to: &Netns, ip: &str, port: u16) {
    let server = tcp_server(to, &format!("{ip}:{port}"), |mut s| {
        let mut buf = [0u8; 64];
        if let Ok(n) = s.read(&mut buf) {
            let _ = s.write_all(&buf[..n].to_ascii_uppercase());
        }
    });
    let mut c = connect_in(from, &format!("{ip}:{port}"), Duration::from_secs(5)).unwrap();
    c.write_all(b"hello over tapnet").unwrap();
    let mut got = vec![0u8; 17];
    c.read_exact(&mut got).unwrap();
    assert_eq!(got, b"HELLO OVER TAPNET");
    assert_eq!(server.seen().len(), 1);
}

#[test]
fn cni_add_check_del_with_traffic() {
    in_namespace("cni_add_check_del_with_traffic", |env| {
        env.network("cninet", "10.70.0.0/24");
        let c = conf(env, "1.0.0", "cninet");
        let pa = env.root.join("netns/a");
        let pb = env.root.join("netns/b");
        let na = Netns::create(&pa).unwrap();
        let nb = Netns::create(&pb).unwrap();

        // ADD: the result names the interface in the namespace, its address, the
        // default route through the gateway and tapnet's DNS server.
        let ra = attach("ADD", "ctr-a", &pa, "eth0", &c).ok();
        let (addrs, mac) = iface(env, &pa, "eth0").expect("eth0 in namespace a");
        assert_eq!(ra["cniVersion"], "1.0.0");
        assert_eq!(
            ra["interfaces"],
            json!([{"name": "eth0", "mac": mac, "sandbox": pa.display().to_string()}])
        );
        let addr_a = ra["ips"][0]["address"].as_str().unwrap().to_string();
        assert!(
            addr_a.starts_with("10.70.0.") && addr_a.ends_with("/24"),
            "{ra}"
        );
        assert_eq!(addrs, vec![addr_a.clone()]);
        assert_eq!(ra["ips"][0]["gateway"], "10.70.0.1");
        assert_eq!(ra["ips"][0]["interface"], 0);
        assert!(ra["ips"][0].get("version").is_none(), "{ra}");
        assert_eq!(
            ra["routes"],
            json!([{"dst": "0.0.0.0/0", "gw": "10.70.0.1"}])
        );
        assert_eq!(ra["dns"]["nameservers"], json!(["10.70.0.1"]));
        // tapnet holds it: sandbox cni-<id>-<ifname> on the network, same address.
        assert_eq!(
            env.ip_of("cninet", "cni-ctr-a-eth0"),
            addr_a.split('/').next().unwrap()
        );

        // A 0.4.0 runtime gets the 0.4.0 shape (ips[].version); CNI_IFNAME names
        // the interface.
        let rb = attach("ADD", "ctr-b", &pb, "net1", &conf(env, "0.4.0", "cninet")).ok();
        assert_eq!(rb["cniVersion"], "0.4.0");
        assert_eq!(rb["ips"][0]["version"], "4");
        assert_eq!(rb["interfaces"][0]["name"], "net1");
        let (addrs_b, _) = iface(env, &pb, "net1").expect("net1 in namespace b");
        assert_eq!(json!(addrs_b), json!([rb["ips"][0]["address"]]));
        assert!(iface(env, &pb, "eth0").is_none());
        let ip_b = first_ip(&rb);
        let ip_a = addr_a.split('/').next().unwrap().to_string();
        assert_ne!(ip_a, ip_b);

        // Traffic between the two attachments through tapnet's switch.
        assert!(
            ping(env, &pa, &ip_b),
            "a cannot ping b\n{}",
            env.daemon_log()
        );
        assert!(ping(env, &pb, &ip_a), "b cannot ping a");
        tcp_exchange(&na, &nb, &ip_b, 7070);
        let stats = env.port_stats("cninet", "cni-ctr-b-net1");
        assert!(stats["RxPackets"].as_u64().unwrap() > 0, "{stats}");

        // ADD again without DEL: refused, the first attachment untouched.
        let e = attach("ADD", "ctr-a", &pa, "eth0", &c).err(999);
        assert!(
            e["details"]
                .as_str()
                .unwrap()
                .contains("eth0 already exists"),
            "{e}"
        );

        // CHECK passes as added; fails (100) once the interface is gone.
        assert_eq!(
            attach("CHECK", "ctr-a", &pa, "eth0", &with_prev(&c, &ra)).ok(),
            Value::Null
        );
        let e = attach("CHECK", "ctr-a", &pa, "eth0", &c).err(7);
        assert!(e["details"].as_str().unwrap().contains("prevResult"), "{e}");
        let mut wrong = ra.clone();
        wrong["ips"][0]["address"] = json!("10.70.0.250/24");
        let e = attach("CHECK", "ctr-a", &pa, "eth0", &with_prev(&c, &wrong)).err(100);
        assert!(
            e["details"].as_str().unwrap().contains("10.70.0.250/24"),
            "{e}"
        );
        let out = env.nsenter(&pa, &["ip", "link", "del", "eth0"]);
        assert!(out.status.success());
        let e = attach("CHECK", "ctr-a", &pa, "eth0", &with_prev(&c, &ra)).err(100);
        assert!(
            e["details"]
                .as_str()
                .unwrap()
                .contains("interface eth0 is missing"),
            "{e}"
        );

        // DEL twice: both succeed, the sandbox is gone and the address free again.
        assert_eq!(
            attach("DEL", "ctr-a", &pa, "eth0", &with_prev(&c, &ra)).ok(),
            Value::Null
        );
        assert_eq!(attach("DEL", "ctr-a", &pa, "eth0", &c).ok(), Value::Null);
        assert_eq!(env.api("GET", "/sandboxes/cni-ctr-a-eth0", None).0, 404);
        let nets = env.get("/networks/cninet");
        assert_eq!(nets["Containers"].as_object().unwrap().len(), 1, "{nets}");

        // DEL after the runtime removed the namespace (no CNI_NETNS): success.
        drop(nb);
        let out = Command::new("umount").arg("-l").arg(&pb).output().unwrap();
        assert!(out.status.success(), "{out:?}");
        std::fs::remove_file(&pb).unwrap();
        let r = plugin(
            &[
                ("CNI_COMMAND", "DEL"),
                ("CNI_CONTAINERID", "ctr-b"),
                ("CNI_IFNAME", "net1"),
            ],
            &conf(env, "0.4.0", "cninet").to_string(),
        );
        assert_eq!(r.ok(), Value::Null);
        assert!(sandbox_names(env).iter().all(|n| !n.starts_with("cni-")));
        let nets = env.get("/networks/cninet");
        assert_eq!(nets["Containers"], json!({}), "{nets}");

        // VERSION echoes the version asked for and lists what is supported.
        let v = plugin(&[("CNI_COMMAND", "VERSION")], r#"{"cniVersion":"1.1.0"}"#).ok();
        assert_eq!(
            v,
            json!({"cniVersion": "1.1.0",
                "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]})
        );
        drop(na);
    });
}

#[test]
fn cni_errors_status_gc() {
    in_namespace("cni_errors_status_gc", |env| {
        env.network("gcnet", "10.71.0.0/24");
        env.network("othernet", "10.72.0.0/24");
        let c = conf(env, "1.1.0", "gcnet");
        let p1 = env.root.join("netns/1");
        let _n1 = Netns::create(&p1).unwrap();
        let before = sandbox_names(env);

        // Bad stdin (6), missing environment (4, naming each), bad version (1),
        // unsupported key (2), unknown network (7), missing namespace (3): nothing made.
        let r = plugin(
            &[
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", "x"),
                ("CNI_NETNS", p1.to_str().unwrap()),
                ("CNI_IFNAME", "eth0"),
            ],
            "{not json",
        );
        r.err(6);
        let e = plugin(&[("CNI_COMMAND", "ADD")], &c.to_string()).err(4);
        let d = e["details"].as_str().unwrap();
        assert!(
            d.contains("CNI_CONTAINERID") && d.contains("CNI_NETNS") && d.contains("CNI_IFNAME"),
            "{e}"
        );
        plugin(&[], &c.to_string()).err(4);
        let mut old = c.clone();
        old["cniVersion"] = json!("0.2.0");
        attach("ADD", "x", &p1, "eth0", &old).err(1);
        let mut ipam = c.clone();
        ipam["ipam"] = json!({"type": "host-local", "subnet": "10.9.0.0/24"});
        let e = attach("ADD", "x", &p1, "eth0", &ipam).err(2);
        assert!(e["details"].as_str().unwrap().starts_with("ipam: {"), "{e}");
        let e = attach("ADD", "x", &p1, "eth0", &conf(env, "1.1.0", "nosuchnet")).err(7);
        assert!(e["details"].as_str().unwrap().contains("nosuchnet"), "{e}");
        attach("ADD", "x", &p1, "eth0", &c.clone()).ok();
        attach("DEL", "x", &p1, "eth0", &c).ok();
        attach("ADD", "x", &env.root.join("netns/none"), "eth0", &c).err(3);
        // A static address outside the subnet: tapnetd's 400, kept as details, rolled back.
        let mut stat = c.clone();
        stat["capabilities"] = json!({"ips": true});
        stat["runtimeConfig"] = json!({"ips": ["10.99.0.5/24"]});
        let e = attach("ADD", "x", &p1, "eth0", &stat).err(7);
        assert!(e["details"].as_str().unwrap().contains("10.99.0.5"), "{e}");
        assert_eq!(sandbox_names(env), before);
        assert!(iface(env, &p1, "eth0").is_none());
        // The static address inside it is given.
        stat["runtimeConfig"] = json!({"ips": ["10.71.0.77/24"]});
        let r = attach("ADD", "x", &p1, "eth0", &stat).ok();
        assert_eq!(r["ips"][0]["address"], "10.71.0.77/24");
        assert_eq!(r["interfaces"][0]["mtu"], 1500, "{r}");
        attach("DEL", "x", &p1, "eth0", &c).ok();

        // STATUS: ready; 50 for a network that does not exist.
        let status = |conf: &Value| plugin(&[("CNI_COMMAND", "STATUS")], &conf.to_string());
        assert_eq!(status(&c).ok(), Value::Null);
        status(&conf(env, "1.1.0", "nosuchnet")).err(50);

        // GC: three attachments on gcnet, one on othernet, one plain sandbox on
        // gcnet; only the CNI ones of gcnet not listed go.
        // The three ADDs run at once, as a runtime may for different containers.
        let mut keep = Vec::new();
        let paths: Vec<PathBuf> = (0..3)
            .map(|i| env.root.join(format!("netns/g{i}")))
            .collect();
        for p in &paths {
            keep.push(Netns::create(p).unwrap());
        }
        let results: Vec<Value> = std::thread::scope(|s| {
            let handles: Vec<_> = ["g1", "g2", "g3"]
                .iter()
                .zip(&paths)
                .map(|(id, p)| s.spawn(|| attach("ADD", id, p, "eth0", &c).ok()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut addrs: Vec<String> = results.iter().map(first_ip).collect();
        addrs.sort();
        addrs.dedup();
        assert_eq!(addrs.len(), 3, "{results:?}");
        let po = env.root.join("netns/o");
        keep.push(Netns::create(&po).unwrap());
        attach("ADD", "o1", &po, "eth0", &conf(env, "1.1.0", "othernet")).ok();
        env.sandbox("plain");
        env.connect("gcnet", "plain");
        let mut gc = c.clone();
        gc["cni.dev/valid-attachments"] = json!([{"containerID": "g2", "ifname": "eth0"},
            {"containerID": "gone", "ifname": "eth0"}]);
        assert_eq!(
            plugin(
                &[("CNI_COMMAND", "GC"), ("CNI_PATH", "/x")],
                &gc.to_string()
            )
            .ok(),
            Value::Null
        );
        assert_eq!(
            sandbox_names(env),
            vec!["cni-g2-eth0", "cni-o1-eth0", "plain"]
        );
        let e = plugin(&[("CNI_COMMAND", "GC")], &c.to_string()).err(7);
        assert!(
            e["details"].as_str().unwrap().contains("valid-attachments"),
            "{e}"
        );

        // tapnetd down: STATUS 51, ADD and DEL 11 (DEL cannot know it is done).
        env.stop_daemon();
        status(&c).err(51);
        let pg = env.root.join("netns/g1");
        attach("ADD", "g9", &pg, "eth1", &c).err(11);
        attach("DEL", "g2", &pg, "eth0", &c).err(11);
        env.start_daemon();
        assert_eq!(status(&c).ok(), Value::Null);
    });
}

// ---------------------------------------------------------------------------------------
// podman (Debian podman 4.3, CNI backend), end to end.
// ---------------------------------------------------------------------------------------

/// Podman confined to the test: its configuration, storage, runtime state, CNI
/// configuration and plugin directory all live under the test's tmpfs (plus
/// private tmpfs over /run and /var/lib in the test's mount namespace, where podman
/// and libcni keep netns files and caches).
struct Podman {
    dir: PathBuf,
}

impl Podman {
    fn setup(env: &Env) -> Podman {
        for m in ["/run", "/var/lib"] {
            let out = Command::new("mount")
                .args(["-t", "tmpfs", "tmpfs", m])
                .output()
                .unwrap();
            assert!(out.status.success(), "mount tmpfs on {m}: {out:?}");
        }
        // crun refuses a hybrid cgroup hierarchy (v1 controllers beside a cgroup2 with
        // controllers of its own): the containers run without cgroups
        // (`cgroups = "disabled"` below), over a plain cgroup2 in this mount namespace.
        let fs = Command::new("stat")
            .args(["-f", "-c", "%T", "/sys/fs/cgroup"])
            .output()
            .unwrap();
        if String::from_utf8_lossy(&fs.stdout).trim() != "cgroup2fs" {
            let out = Command::new("mount")
                .args(["-t", "cgroup2", "none", "/sys/fs/cgroup"])
                .output()
                .unwrap();
            assert!(out.status.success(), "mount cgroup2: {out:?}");
        }
        let dir = env.root.join("podman");
        let bin = dir.join("cni-bin");
        let netd = dir.join("net.d");
        for d in [&bin, &netd, &dir.join("img/bin"), &dir.join("img/tmp")] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::copy(built_binary("tapnet-cni"), bin.join("tapnet-cni")).unwrap();
        std::fs::write(
            dir.join("containers.conf"),
            format!(
                "[containers]\ndefault_ulimits = [\"nofile=1024:1024\", \"nproc=4096:4096\"]\n\
                 cgroups = \"disabled\"\n\
                 [network]\nnetwork_backend = \"cni\"\nnetwork_config_dir = \"{}\"\n\
                 cni_plugin_dirs = [\"{}\", \"/usr/lib/cni\"]\n",
                netd.display(),
                bin.display()
            ),
        )
        .unwrap();
        std::fs::write(
            dir.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"vfs\"\nrunroot = \"/run/containers/storage\"\ngraphroot = \"{}\"\n",
                dir.join("storage").display()
            ),
        )
        .unwrap();
        // The image: busybox and its applets.
        let img = dir.join("img/bin");
        std::fs::copy("/bin/busybox", img.join("busybox")).unwrap();
        for a in ["sh", "ping", "nc", "sleep", "ip", "cat", "echo"] {
            std::os::unix::fs::symlink("busybox", img.join(a)).unwrap();
        }
        let p = Podman { dir };
        let t0 = Instant::now();
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "tar -C {} -c . | podman import - localhost/bb:latest",
                p.dir.join("img").display()
            ))
            .envs(p.envs())
            .output()
            .unwrap();
        assert!(out.status.success(), "podman import: {out:?}");
        eprintln!("podman import: {:?}", t0.elapsed());
        p
    }

    fn envs(&self) -> Vec<(String, String)> {
        vec![
            (
                "CONTAINERS_CONF".into(),
                self.dir.join("containers.conf").display().to_string(),
            ),
            (
                "CONTAINERS_STORAGE_CONF".into(),
                self.dir.join("storage.conf").display().to_string(),
            ),
        ]
    }

    /// Run podman; returns stdout, panicking with the output unless it succeeds.
    fn ok(&self, env: &Env, args: &[&str]) -> String {
        let t0 = Instant::now();
        let out = Command::new("podman")
            .args(args)
            .envs(self.envs())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        eprintln!(
            "podman {}: {:?}",
            args[..2.min(args.len())].join(" "),
            t0.elapsed()
        );
        assert!(
            out.status.success(),
            "podman {args:?} failed: {}\n{}\n--- daemon log\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            env.daemon_log()
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for Podman {
    /// A failed test still stops its containers (only this test's: the storage is in
    /// its tmpfs, so `--all` sees no others).
    fn drop(&mut self) {
        let _ = Command::new("podman")
            .args(["rm", "-f", "--all", "-t", "0"])
            .envs(self.envs())
            .stdin(Stdio::null())
            .output();
    }
}

#[test]
fn cni_podman_two_containers_talk_through_tapnet() {
    in_namespace_as_root("cni_podman_two_containers_talk_through_tapnet", |env| {
        let t0 = Instant::now();
        let pm = Podman::setup(env);
        env.network("tapnet-example", "10.73.0.0/24");
        // The example conflist from the repository, pointed at this test's daemon.
        let example =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../cni/examples/tapnet-example.conflist");
        let mut list: Value =
            serde_json::from_str(&std::fs::read_to_string(&example).unwrap()).unwrap();
        assert_eq!(list["name"], "tapnet-example");
        list["plugins"][0]["socket"] = json!(env.socket.display().to_string());
        std::fs::write(
            pm.dir.join("net.d/tapnet-example.conflist"),
            serde_json::to_string_pretty(&list).unwrap(),
        )
        .unwrap();

        // Each container gets the network alias `web-NAME` (the aliases capability).
        let run = |name: &str, cmd: &str| {
            pm.ok(
                env,
                &[
                    "run",
                    "-d",
                    "--name",
                    name,
                    "--network",
                    "tapnet-example",
                    "--network-alias",
                    &format!("web-{name}"),
                    "--cap-add",
                    "NET_RAW",
                    "localhost/bb:latest",
                    "sh",
                    "-c",
                    cmd,
                ],
            )
        };
        // c2 serves one TCP exchange: it keeps the line it gets and answers its own.
        let id1 = run("c1", "sleep 300");
        let id2 = run(
            "c2",
            "nc -l -p 7000 -e sh -c 'read l; echo \"$l\" > /tmp/got; echo pong from c2'; sleep 300",
        );
        let net = env.get("/networks/tapnet-example");
        let containers = net["Containers"].as_object().unwrap();
        assert_eq!(containers.len(), 2, "{net}");
        let ip_of = |id: &str| {
            let sb = format!("cni-{id}-eth0");
            env.ip_of("tapnet-example", &sb)
        };
        let (ip1, ip2) = (ip_of(&id1), ip_of(&id2));
        assert!(
            ip1.starts_with("10.73.0.") && ip2.starts_with("10.73.0."),
            "{ip1} {ip2}"
        );
        // podman saw the addresses tapnet gave (the plugin's result).
        let seen = pm.ok(
            env,
            &[
                "inspect",
                "c2",
                "--format",
                "{{(index .NetworkSettings.Networks \"tapnet-example\").IPAddress}}",
            ],
        );
        assert_eq!(seen, ip2);
        // tapnet's CLI lists both.
        let inspect = env.ok(&["network", "inspect", "tapnet-example"]);
        assert!(
            inspect.contains(&ip1) && inspect.contains(&ip2),
            "{inspect}"
        );
        let in_c1 = pm.ok(env, &["exec", "c1", "ip", "-4", "addr", "show", "eth0"]);
        assert!(in_c1.contains(&format!("{ip1}/24")), "{in_c1}");

        // c1 → c2: ping by address, then by its alias through tapnet's embedded DNS
        // (the result's dns, which podman wrote into the container's resolv.conf),
        // then a TCP exchange with nc.
        pm.ok(env, &["exec", "c1", "ping", "-c", "2", "-W", "2", &ip2]);
        let resolv = pm.ok(env, &["exec", "c1", "cat", "/etc/resolv.conf"]);
        assert!(resolv.starts_with("nameserver 10.73.0.1"), "{resolv}");
        let by_name = pm.ok(env, &["exec", "c1", "ping", "-c", "1", "-W", "2", "web-c2"]);
        assert!(by_name.contains(&format!("({ip2})")), "{by_name}");
        let got = pm.ok(
            env,
            &[
                "exec",
                "c1",
                "sh",
                "-c",
                &format!("echo ping from c1 | nc -w 5 {ip2} 7000"),
            ],
        );
        assert_eq!(got, "pong from c2");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let got = pm.ok(env, &["exec", "c2", "cat", "/tmp/got"]);
            if got == "ping from c1" {
                break;
            }
            assert!(Instant::now() < deadline, "c2 got {got:?}");
            std::thread::sleep(Duration::from_millis(100));
        }

        // podman rm -f: DEL removes the tapnet sandboxes and frees the addresses.
        pm.ok(env, &["rm", "-f", "-t", "0", "c1", "c2"]);
        assert!(
            sandbox_names(env).iter().all(|n| !n.starts_with("cni-")),
            "{:?}",
            sandbox_names(env)
        );
        assert_eq!(env.get("/networks/tapnet-example")["Containers"], json!({}));
        eprintln!("podman test total: {:?}", t0.elapsed());
    });
}

#[test]
fn cni_capabilities_ports_ipv6_aliases_mac() {
    in_namespace("cni_capabilities_ports_ipv6_aliases_mac", |env| {
        env.ok(&[
            "network",
            "create",
            "--ipv6",
            "--subnet",
            "10.74.0.0/24",
            "--subnet",
            "fd00:74::/64",
            "capnet",
        ]);
        let pa = env.root.join("netns/a");
        let pb = env.root.join("netns/b");
        let na = Netns::create(&pa).unwrap();
        let _nb = Netns::create(&pb).unwrap();
        let mut c = conf(env, "1.1.0", "capnet");
        c["capabilities"] =
            json!({"portMappings": true, "aliases": true, "mac": true, "ips": true});

        // a: published port 18080 → 80, an alias, a chosen MAC.
        let mut ca = c.clone();
        ca["runtimeConfig"] = json!({
            "portMappings": [{"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}],
            "aliases": ["svc-a"], "mac": "02:00:00:00:74:0a"});
        let ra = attach("ADD", "pa", &pa, "eth0", &ca).ok();
        assert_eq!(ra["interfaces"][0]["mac"], "02:00:00:00:74:0a");
        assert_eq!(ra["ips"].as_array().unwrap().len(), 2, "dual stack: {ra}");
        let v6 = ra["ips"][1]["address"].as_str().unwrap();
        assert!(v6.starts_with("fd00:74::") && v6.ends_with("/64"), "{ra}");
        assert_eq!(ra["ips"][1]["gateway"], "fd00:74::1");
        assert_eq!(ra["routes"][1], json!({"dst": "::/0", "gw": "fd00:74::1"}));
        let ip_a = first_ip(&ra);
        let sb = env.get("/sandboxes/cni-pa-eth0");
        assert_eq!(
            sb["Endpoints"]["capnet"]["Aliases"],
            json!(["svc-a"]),
            "{sb}"
        );
        assert_eq!(sb["Ports"]["80/tcp"][0]["HostPort"], "18080", "{sb}");
        // CHECK passes with the IPv6 address listed too.
        attach("CHECK", "pa", &pa, "eth0", &with_prev(&c, &ra)).ok();

        // b: a static address from CNI_ARGS.
        let ns_b = pb.display().to_string();
        let rb = plugin(
            &[
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", "pb"),
                ("CNI_NETNS", &ns_b),
                ("CNI_IFNAME", "eth0"),
                (
                    "CNI_ARGS",
                    "IgnoreUnknown=1;IP=10.74.0.50;K8S_POD_NAME=x;OTHER=1",
                ),
            ],
            &c.to_string(),
        )
        .ok();
        assert_eq!(rb["ips"][0]["address"], "10.74.0.50/24");

        // b reaches a by its alias through the embedded DNS (the result's nameserver).
        assert_eq!(rb["dns"]["nameservers"], json!(["10.74.0.1"]));
        assert!(ping(env, &pb, &ip_a));
        let (rcode, answers) = env.dns_query("cni-pb-eth0", "10.74.0.1", "svc-a", "A", 5);
        assert_eq!((rcode, answers), (0, vec![ip_a.clone()]));

        // The published port: the host (this test's namespace) reaches a's port 80.
        let server = tcp_server(&na, "0.0.0.0:80", |mut s| {
            let _ = s.write_all(b"from a");
        });
        let host = Netns::open(Path::new("/proc/self/ns/net")).unwrap();
        let mut conn = connect_in(&host, "127.0.0.1:18080", Duration::from_secs(5)).unwrap();
        let mut got = Vec::new();
        conn.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"from a");
        assert_eq!(server.seen().len(), 1);

        // DEL releases the port.
        attach("DEL", "pa", &pa, "eth0", &c).ok();
        assert!(std::net::TcpListener::bind("0.0.0.0:18080").is_ok());
        attach("DEL", "pb", &pb, "eth0", &c).ok();
    });
}
