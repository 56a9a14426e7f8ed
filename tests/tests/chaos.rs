//! Chaos: the daemon killed during a connect storm, a full data-root disk, a sandbox
//! whose namespace vanishes under it. Each scenario ends with
//! [`tapnet_tests::assert_consistent`]: the store, the daemon's memory (its API) and
//! the kernel agree — no orphan tap, no address handed out twice, IPAM's allocations
//! exactly the endpoints' addresses and the gateways.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tapnet_sandbox::netns::Netns;
use tapnet_tests::{assert_consistent, in_namespace, Env};

/// A small xorshift generator (reproducible from the seed printed by each test).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1
}

/// What became of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    /// An answer with this status.
    Status(u16),
    /// The client closed the socket after sending the request, without reading.
    Abandoned,
    /// No daemon listening (killed, or not serving yet).
    Refused,
    /// The connection broke before an answer (the daemon died under it).
    Cut,
}

/// One HTTP/1.1 request on the API socket; with `abandon`, close the socket that
/// long after sending it, without reading the answer.
fn request(
    socket: &Path,
    method: &str,
    path: &str,
    body: &str,
    abandon: Option<Duration>,
) -> Outcome {
    let Ok(mut s) = UnixStream::connect(socket) else {
        return Outcome::Refused;
    };
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: tapnet\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    if s.write_all(req.as_bytes()).is_err() {
        return Outcome::Cut;
    }
    if let Some(after) = abandon {
        std::thread::sleep(after);
        return Outcome::Abandoned;
    }
    let mut answer = Vec::new();
    if s.read_to_end(&mut answer).is_err() && answer.is_empty() {
        return Outcome::Cut;
    }
    let text = String::from_utf8_lossy(&answer);
    match text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
    {
        Some(code) => Outcome::Status(code),
        None => Outcome::Cut,
    }
}

/// Poll `f` until it gives the same answer twice 300 ms apart (at most 60 s).
fn settled<T: PartialEq>(mut f: impl FnMut() -> T) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = f();
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let now = f();
        if now == last || Instant::now() > deadline {
            return now;
        }
        last = now;
    }
}

/// Everything the API says about networks and sandboxes.
fn state(env: &Env) -> (Value, Value) {
    (env.get("/networks"), env.get("/sandboxes"))
}

/// Connect `sandbox` to `network` unless it is already; returns its IPv4 address.
fn ensure_connected(env: &Env, network: &str, sandbox: &str) -> String {
    let sb = env.get(&format!("/sandboxes/{sandbox}"));
    if sb["Endpoints"][network].is_null() {
        env.connect(network, sandbox)
    } else {
        env.ip_of(network, sandbox)
    }
}

/// `kill -9` of tapnetd five times during a storm of connects and disconnects from
/// several client threads, some of which close their connection mid-request, while
/// another thread creates, connects and removes sandboxes and one more networks. After the last restart
/// the store, memory and kernel agree, and the network forwards.
#[test]
fn kill9_storm_during_connects_leaves_store_memory_and_kernel_agreeing() {
    in_namespace(
        "kill9_storm_during_connects_leaves_store_memory_and_kernel_agreeing",
        |env| {
            let seed = seed();
            eprintln!("seed {seed}");
            env.network("n1", "10.90.0.0/27");
            env.network("n2", "10.91.0.0/27");
            let names: Vec<String> = (0..10).map(|i| format!("s{i}")).collect();
            for s in &names {
                env.sandbox(s);
            }
            env.sandbox("ws");
            let stop = AtomicBool::new(false);
            let outcomes: Mutex<BTreeMap<(String, Outcome), u64>> = Mutex::default();
            let churned = AtomicU64::new(0);
            let socket = env.socket.clone();
            let record = |op: &str, o: Outcome| {
                *outcomes
                    .lock()
                    .unwrap()
                    .entry((op.to_string(), o))
                    .or_default() += 1;
            };
            std::thread::scope(|scope| {
                // Connect/disconnect clients: a third of them give up mid-request.
                for t in 0..4u64 {
                    let (stop, socket, names, record) = (&stop, &socket, &names, &record);
                    scope.spawn(move || {
                        let mut rng = Rng(seed.wrapping_add(t * 0x9e37_79b9));
                        while !stop.load(Ordering::Relaxed) {
                            let sb = &names[rng.below(names.len() as u64) as usize];
                            let net = ["n1", "n2"][rng.below(2) as usize];
                            let op = ["connect", "disconnect"][rng.below(2) as usize];
                            let abandon =
                                (rng.below(3) == 0).then(|| Duration::from_millis(rng.below(6)));
                            let o = request(
                                socket,
                                "POST",
                                &format!("/networks/{net}/{op}"),
                                &format!(r#"{{"Container":"{sb}"}}"#),
                                abandon,
                            );
                            record(op, o);
                            if matches!(o, Outcome::Refused | Outcome::Cut) {
                                std::thread::sleep(Duration::from_millis(20));
                            }
                        }
                    });
                }
                // Sandbox churn: create, connect, remove.
                {
                    let (stop, socket, record, churned) = (&stop, &socket, &record, &churned);
                    scope.spawn(move || {
                        let mut rng = Rng(seed ^ 0x5555);
                        let mut k = 0;
                        while !stop.load(Ordering::Relaxed) {
                            k += 1;
                            let name = format!("c{k}");
                            let abandon = |rng: &mut Rng| {
                                (rng.below(4) == 0).then(|| Duration::from_millis(rng.below(6)))
                            };
                            let a = abandon(&mut rng);
                            let o = request(
                                socket,
                                "POST",
                                "/sandboxes",
                                &format!(r#"{{"Name":"{name}"}}"#),
                                a,
                            );
                            record("sandbox create", o);
                            let a = abandon(&mut rng);
                            let o = request(
                                socket,
                                "POST",
                                "/networks/n1/connect",
                                &format!(r#"{{"Container":"{name}"}}"#),
                                a,
                            );
                            record("connect", o);
                            let a = abandon(&mut rng);
                            let o = request(socket, "DELETE", &format!("/sandboxes/{name}"), "", a);
                            record("sandbox rm", o);
                            churned.fetch_add(1, Ordering::Relaxed);
                            if matches!(o, Outcome::Refused | Outcome::Cut) {
                                std::thread::sleep(Duration::from_millis(20));
                            }
                        }
                    });
                }
                // Network churn: create, connect, disconnect, remove.
                {
                    let (stop, socket, record) = (&stop, &socket, &record);
                    scope.spawn(move || {
                        let mut rng = Rng(seed ^ 0xaaaa);
                        let mut k = 0u64;
                        while !stop.load(Ordering::Relaxed) {
                            k += 1;
                            // Three names, reused: a name freed by a removal that
                            // a kill cut short (or not) is taken again.
                            let net = format!("w{}", k % 3);
                            let steps = [
                                (
                                    "network create",
                                    "POST",
                                    "/networks/create".to_string(),
                                    format!(
                                        r#"{{"Name":"{net}","IPAM":{{"Config":[{{"Subnet":"10.98.{}.0/28"}}]}}}}"#,
                                        k % 3
                                    ),
                                ),
                                (
                                    "connect",
                                    "POST",
                                    format!("/networks/{net}/connect"),
                                    r#"{"Container":"ws"}"#.to_string(),
                                ),
                                (
                                    "disconnect",
                                    "POST",
                                    format!("/networks/{net}/disconnect"),
                                    r#"{"Container":"ws"}"#.to_string(),
                                ),
                                ("network rm", "DELETE", format!("/networks/{net}"), String::new()),
                            ];
                            for (op, method, path, body) in steps {
                                let abandon = (rng.below(4) == 0)
                                    .then(|| Duration::from_millis(rng.below(6)));
                                let o = request(socket, method, &path, &body, abandon);
                                record(op, o);
                                if matches!(o, Outcome::Refused | Outcome::Cut) {
                                    std::thread::sleep(Duration::from_millis(20));
                                }
                            }
                        }
                    });
                }
                // The kill storm: five kills at varying points.
                for wait in [400u64, 150, 700, 250, 500] {
                    std::thread::sleep(Duration::from_millis(wait));
                    env.kill9_daemon();
                    std::thread::sleep(Duration::from_millis(wait / 5));
                    env.start_daemon();
                }
                std::thread::sleep(Duration::from_millis(300));
                stop.store(true, Ordering::Relaxed);
            });
            let outcomes = outcomes.into_inner().unwrap();
            eprintln!("outcomes: {outcomes:?}");
            eprintln!("sandboxes churned: {}", churned.load(Ordering::Relaxed));
            let count = |f: &dyn Fn(&str, Outcome) -> bool| -> u64 {
                outcomes
                    .iter()
                    .filter(|((op, o), _)| f(op, *o))
                    .map(|(_, n)| n)
                    .sum()
            };
            // The storm did what it says (else this test proves nothing): connects
            // succeeded, clients gave up mid-request, the kills cut requests off.
            assert!(
                count(&|op, o| op == "connect" && o == Outcome::Status(200)) >= 10,
                "{outcomes:?}"
            );
            assert!(count(&|_, o| o == Outcome::Abandoned) >= 10, "{outcomes:?}");
            assert!(
                count(&|_, o| matches!(o, Outcome::Cut | Outcome::Refused)) >= 1,
                "{outcomes:?}"
            );
            // Abandoned operations run to their end in the daemon; then it is still.
            settled(|| state(env));
            let t0 = Instant::now();
            assert_consistent(env);
            eprintln!(
                "{} networks; consistency check took {:?}",
                env.get("/networks").as_array().unwrap().len(),
                t0.elapsed()
            );

            // The networks the storm left can be removed (their endpoints first).
            for n in env.get("/networks").as_array().unwrap() {
                let name = n["Name"].as_str().unwrap();
                if name.starts_with('w') {
                    for c in n["Containers"].as_object().unwrap().values() {
                        env.ok(&["network", "disconnect", name, c["Name"].as_str().unwrap()]);
                    }
                    env.ok(&["network", "rm", name]);
                }
            }

            // The network still forwards.
            let ip1 = ensure_connected(env, "n1", "s1");
            ensure_connected(env, "n1", "s0");
            assert!(env.ping("s0", &ip1, 2), "s0 cannot ping s1 ({ip1})");
            tapnet_tests::tcp_bytes(env, "s0", "s1", &ip1, 5001, 1 << 20);

            // The store is what memory says: a last kill -9 changes nothing.
            let before = state(env);
            env.kill9_daemon();
            env.start_daemon();
            assert_eq!(state(env), before, "state changed across kill -9");
            assert_consistent(env);
        },
    );
}

/// Run a shell command line in the test's namespace; panic unless it succeeds.
fn sh(cmd: &str) -> String {
    let out = std::process::Command::new("sh")
        .args(["-c", cmd])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{cmd}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Put the daemon's data root on a tmpfs of `size` (the daemon is restarted; the
/// database moves over).
fn small_data_root(env: &mut Env, size: &str) {
    env.stop_daemon();
    let data = env.data_root();
    let d = data.display();
    sh(&format!(
        "mv {d} {d}.old && mkdir {d} && mount -t tmpfs -o size={size} tapnet-data {d} && \
         cp -a {d}.old/. {d}/ && rm -rf {d}.old"
    ));
    env.start_daemon();
}

/// Fill the file system of the data root: one more filler file written until
/// ENOSPC (redb gives space back when it trims its file on re-opening).
fn fill_data_root(env: &Env) {
    use std::sync::atomic::AtomicUsize;
    static N: AtomicUsize = AtomicUsize::new(0);
    let filler = env
        .data_root()
        .join(format!("filler{}", N.fetch_add(1, Ordering::Relaxed)));
    let out = std::process::Command::new("dd")
        .arg("if=/dev/zero")
        .arg(format!("of={}", filler.display()))
        .args(["bs=4k"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("No space left on device"), "{err}");
}

/// Remove every filler file.
fn free_data_root(env: &Env) {
    for e in std::fs::read_dir(env.data_root()).unwrap().flatten() {
        if e.file_name().to_string_lossy().starts_with("filler") {
            std::fs::remove_file(e.path()).unwrap();
        }
    }
}

/// A full data-root disk: every mutation fails cleanly with 507 naming the disk and
/// what failed, nothing half-made stays in the kernel, reads keep working; once space
/// is free again mutations work without a restart, and a restart finds exactly the
/// state the API showed.
///
/// redb writes a commit into pages it freed before as long as it can, and gives
/// space back when it re-opens its file after an error, so a mutation on a full disk
/// may still succeed (then it is recorded, durably): each kind of mutation is tried
/// on fresh objects, the disk filled again before each try, until one fails.
#[test]
fn full_data_root_fails_mutations_cleanly() {
    in_namespace("full_data_root_fails_mutations_cleanly", |env| {
        small_data_root(env, "4m");
        env.network("n1", "10.93.0.0/24");
        env.sandbox("a");
        env.sandbox("b");
        env.connect("n1", "a");
        let ip_b = env.connect("n1", "b");
        const TRIES: usize = 12;
        for k in 0..TRIES {
            env.sandbox(&format!("q{k}"));
            env.sandbox(&format!("d{k}"));
            env.connect("n1", &format!("d{k}"));
        }
        // Try `attempt` on a full disk until it fails (at most `tries` times); a
        // failure must be a clean 507. Returns whether it failed.
        let failed_once = |what: &str,
                           tries: usize,
                           attempt: &dyn Fn(usize) -> (String, String, Option<String>),
                           expect: &dyn Fn(usize) -> String| {
            for k in 0..tries {
                fill_data_root(env);
                let before = state(env);
                let (method, path, body) = attempt(k);
                let (code, v) = env.api(&method, &path, body.as_deref());
                if (200..300).contains(&code) {
                    eprintln!("{what} #{k} on a full disk fit in the database's free pages");
                    continue;
                }
                let msg = v["message"].as_str().unwrap_or_default().to_string();
                eprintln!("{what} #{k} on a full disk: {code} {msg}");
                assert_eq!(code, 507, "{what}: {v}");
                let lower = msg.to_ascii_lowercase();
                assert!(lower.contains("no space left on device"), "{what}: {msg}");
                assert!(
                    msg.contains(&env.data_root().display().to_string()),
                    "{msg}"
                );
                assert!(msg.contains(&expect(k)), "{what}: {msg}");
                // Reads keep working, and nothing changed: not in the API, not in the
                // kernel.
                assert_eq!(
                    state(env),
                    before,
                    "a failed {what} changed the API's state"
                );
                let problems = env.consistency_problems(false);
                assert!(problems.is_empty(), "after a failed {what}: {problems:#?}");
                return true;
            }
            false
        };
        let failed = failed_once(
            "sandbox create",
            TRIES,
            &|k| {
                (
                    "POST".into(),
                    "/sandboxes".into(),
                    Some(format!(r#"{{"Name":"c{k}"}}"#)),
                )
            },
            &|k| format!("create sandbox c{k}"),
        );
        assert!(
            failed,
            "sandbox create never failed on a full disk in {TRIES} tries"
        );
        let failed = failed_once(
            "connect",
            TRIES,
            &|k| {
                (
                    "POST".into(),
                    "/networks/n1/connect".into(),
                    Some(format!(r#"{{"Container":"q{k}"}}"#)),
                )
            },
            &|k| format!("connect q{k} to network n1"),
        );
        assert!(
            failed,
            "connect never failed on a full disk in {TRIES} tries"
        );
        // Removals shrink the database: they may well fit in its free pages.
        failed_once(
            "disconnect",
            3,
            &|k| {
                (
                    "POST".into(),
                    "/networks/n1/disconnect".into(),
                    Some(format!(r#"{{"Container":"d{k}"}}"#)),
                )
            },
            &|k| format!("disconnect d{k} from network n1"),
        );
        failed_once(
            "sandbox rm",
            3,
            &|k| {
                (
                    "DELETE".into(),
                    format!("/sandboxes/q{}", TRIES - 1 - k),
                    None,
                )
            },
            &|k| format!("remove sandbox q{}", TRIES - 1 - k),
        );
        let failed = failed_once(
            "network create",
            TRIES,
            &|k| {
                (
                    "POST".into(),
                    "/networks/create".into(),
                    // With a 16 KiB label: a record that needs pages of its own.
                    Some(format!(
                        r#"{{"Name":"m{k}","IPAM":{{"Config":[{{"Subnet":"10.94.{k}.0/24"}}]}},"Labels":{{"pad":"{}"}}}}"#,
                        "x".repeat(16 * 1024)
                    )),
                )
            },
            &|k| format!("create network m{k}"),
        );
        assert!(
            failed,
            "network create never failed on a full disk in {TRIES} tries"
        );
        // The network still forwards.
        assert!(env.ping("a", &ip_b, 2), "a cannot reach b");
        // A daemon (re)started on the full disk starts, restores and answers reads.
        let before = state(env);
        fill_data_root(env);
        env.kill9_daemon();
        env.start_daemon();
        assert_eq!(
            state(env),
            before,
            "state changed across a start on a full disk"
        );
        assert!(
            env.ping("a", &ip_b, 2),
            "a cannot reach b after a start on a full disk"
        );

        // Space again: mutations work without a restart.
        free_data_root(env);
        env.sandbox("c");
        let ip_c = env.connect("n1", "c");
        assert!(env.ping("a", &ip_c, 2), "a cannot reach c");
        env.ok(&["sandbox", "rm", "c"]);
        // The store holds exactly what the API shows, after a restart too.
        let before = state(env);
        env.kill9_daemon();
        env.start_daemon();
        assert_eq!(state(env), before, "the store differs from memory");
        assert_consistent(env);
    });
}

/// The devices other than `lo` in a namespace the test holds open.
fn links_in(ns: &Netns) -> Vec<String> {
    ns.run(|| {
        let out = std::process::Command::new("ip")
            .args(["-j", "link", "show"])
            .output()
            .unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|l| l["ifname"].as_str().unwrap().to_string())
            .filter(|n| n != "lo")
            .collect::<Vec<_>>()
    })
    .unwrap()
}

/// Make sandbox `name`'s namespace vanish under the daemon: its processes killed,
/// its file unmounted and deleted. Returns the namespace, held open by the test
/// (only to look inside).
fn vanish(env: &Env, name: &str) -> Netns {
    let path = env.netns_path(name);
    let held = Netns::open(&path).unwrap();
    let mut proc = std::process::Command::new(tapnet_tests::built_binary("tapnet"))
        .arg("-H")
        .arg(format!("unix://{}", env.socket.display()))
        .args(["exec", name, "--", "sleep", "300"])
        .stdin(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    nix::mount::umount2(&path, nix::mount::MntFlags::MNT_DETACH).unwrap();
    std::fs::remove_file(&path).unwrap();
    proc.kill().unwrap();
    proc.wait().unwrap();
    held
}

/// Sandboxes whose namespace vanishes while connected (processes killed, file
/// unmounted and deleted, the daemon running): disconnect and removal succeed, the
/// taps go, the addresses are free again and handed out once, and a restart finds
/// nothing of them.
#[test]
fn sandbox_whose_namespace_vanishes_is_released() {
    in_namespace("sandbox_whose_namespace_vanishes_is_released", |env| {
        env.network("n1", "10.95.0.0/24");
        env.network("n2", "10.96.0.0/24");
        for s in ["a", "b", "d"] {
            env.sandbox(s);
        }
        env.connect("n1", "a");
        let ip_b = env.connect("n1", "b");
        let ip_d = env.connect("n1", "d");
        let ip_d2 = env.connect("n2", "d");
        let ns_b = vanish(env, "b");
        let ns_d = vanish(env, "d");
        assert_eq!(links_in(&ns_b), ["eth0"]);
        assert_eq!(links_in(&ns_d), ["eth0", "eth1"]);
        // The daemon notices on the next connect: nothing could use a device there.
        let before = state(env);
        let (code, v) = env.api("POST", "/networks/n2/connect", Some(r#"{"Container":"b"}"#));
        assert_eq!(code, 409, "{v}");
        let msg = v["message"].as_str().unwrap();
        assert!(msg.contains("has lost its network namespace"), "{msg}");
        assert_eq!(state(env), before);
        assert_eq!(links_in(&ns_b), ["eth0"]);

        // b: disconnect, then remove.
        env.ok(&["network", "disconnect", "n1", "b"]);
        assert!(
            links_in(&ns_b).is_empty(),
            "b's tap stayed: {:?}",
            links_in(&ns_b)
        );
        env.ok(&["sandbox", "rm", "b"]);
        // d: removed while still connected to two networks.
        env.ok(&["sandbox", "rm", "d"]);
        assert!(
            links_in(&ns_d).is_empty(),
            "d's taps stayed: {:?}",
            links_in(&ns_d)
        );
        assert_eq!(env.get("/sandboxes").as_array().unwrap().len(), 1);
        assert_consistent(env);

        // Their addresses are free again, each handed out once.
        env.sandbox("c");
        env.sandbox("e");
        assert_eq!(env.connect("n1", "c"), ip_b);
        assert_eq!(env.connect("n1", "e"), ip_d);
        assert_eq!(env.connect("n2", "c"), ip_d2);
        assert!(
            env.ping("a", &ip_b, 2),
            "a cannot reach c at b's old address"
        );
        assert_consistent(env);
        env.kill9_daemon();
        env.start_daemon();
        assert_consistent(env);
    });
}

/// What a connect cut short by a crash leaves (regression: they stayed, the
/// address of one was handed out again): taps no endpoint names, one configured
/// with an address, one under the bridge driver's temporary name, and the files of
/// a sandbox create cut short. The next start removes them; in an adopted
/// namespace it removes only taps under the temporary name.
#[test]
fn leftovers_of_operations_cut_short_are_removed_at_start() {
    in_namespace(
        "leftovers_of_operations_cut_short_are_removed_at_start",
        |env| {
            env.network("n1", "10.97.0.0/24");
            env.sandbox("a");
            env.connect("n1", "a");
            let adopted = env.root.join("adopted-ns");
            std::fs::write(&adopted, b"").unwrap();
            sh(&format!("unshare --net={} true", adopted.display()));
            env.api_ok(
                "POST",
                "/sandboxes",
                Some(&format!(
                    r#"{{"Name":"b","NetnsPath":"{}"}}"#,
                    adopted.display()
                )),
            );
            env.connect("n1", "b");
            let path_a = env.netns_path("a");
            env.kill9_daemon();
            let in_ns = |path: &Path, cmd: &str| {
                sh(&format!("nsenter --net={} sh -c '{cmd}'", path.display()));
            };
            in_ns(
                &path_a,
                "ip tuntap add dev eth1 mode tap vnet_hdr && ip addr add 10.97.0.4/24 dev eth1 && \
             ip link set eth1 up && ip tuntap add dev tap0123456789ab mode tap vnet_hdr && \
             ip tuntap add dev tapfedcba987654 mode tap vnet_hdr multi_queue",
            );
            in_ns(
            &adopted,
            "ip tuntap add dev tap0123456789ab mode tap vnet_hdr && ip tuntap add dev mine mode tap",
        );
            let files = env.exec_root().join("sandboxes").join("f".repeat(64));
            std::fs::create_dir_all(&files).unwrap();
            std::fs::write(files.join("hosts"), b"").unwrap();
            env.start_daemon();

            let links = |path: &Path| {
                let mut l: Vec<String> = tapnet_tests::kernel_links(Some(path))
                    .unwrap()
                    .into_iter()
                    .map(|l| l.name)
                    .collect();
                l.sort();
                l
            };
            assert_eq!(links(&path_a), ["eth0"]);
            assert_eq!(
                links(&adopted),
                ["eth0", "mine"],
                "an adopted namespace's own tap is kept"
            );
            assert!(!files.exists(), "files of no sandbox stayed");
            let log = env.daemon_log();
            assert!(
                log.contains("orphan tap (an operation cut short by a crash) removed"),
                "{log}"
            );
            in_ns(&adopted, "ip link del mine");
            // The leftover's address is handed out once, and works.
            env.sandbox("c");
            assert_eq!(env.connect("n1", "c"), "10.97.0.4");
            assert!(env.ping("a", "10.97.0.4", 2));
            assert_consistent(env);
        },
    );
}
