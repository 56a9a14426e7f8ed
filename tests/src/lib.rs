//! Integration test harness for tapnet.
//!
//! Contract: every test body runs in a fresh **user + network + mount namespace**
//! (`unshare -Urnm --propagation private`), with a private tmpfs (mounted over a fresh
//! directory the outer process makes and removes) that holds the daemon's exec-root and
//! data-root, so nothing a test does reaches the host. The
//! harness starts the real `tapnetd` binary and drives it with the real `tapnet` CLI
//! (or raw HTTP through `curl --unix-socket`). A test that cannot get its namespace
//! fails with a message saying why; it never passes silently.
//!
//! Usage, in a `tests/*.rs` file:
//!
//! ```ignore
//! #[test]
//! fn my_test() {
//!     tapnet_tests::in_namespace("my_test", |env| { /* ... */ });
//! }
//! ```
//!
//! The outer call re-executes the test binary, filtered to exactly this test, inside
//! the namespaces; the inner call (marked by an environment variable) runs the body.
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const INNER_ENV: &str = "TAPNET_IT_INNER";
const ROOT_ENV: &str = "TAPNET_IT_ROOT";

/// Run `body` inside fresh user+net+mount namespaces with a started daemon.
pub fn in_namespace(name: &str, body: impl FnOnce(&mut Env)) {
    run_in_namespace(name, true, body)
}

/// Like [`in_namespace`] but without the user namespace: the body runs as the real
/// root in fresh net+mount namespaces (private propagation). For peers whose setup
/// needs ids beyond the one mapped root, such as podman's runc (devpts `gid=5`).
pub fn in_namespace_as_root(name: &str, body: impl FnOnce(&mut Env)) {
    run_in_namespace(name, false, body)
}

fn run_in_namespace(name: &str, user_ns: bool, body: impl FnOnce(&mut Env)) {
    if std::env::var(INNER_ENV).as_deref() == Ok(name) {
        let mut env = Env::start();
        body(&mut env);
        env.stop();
        return;
    }
    let mut args: Vec<&str> = if user_ns {
        vec!["--user", "--map-root-user"]
    } else {
        Vec::new()
    };
    args.extend(["--net", "--mount", "--propagation", "private"]);
    run_outer(name, &args);
}

/// The outer half of a namespace test: run this test's executable again, for `name`
/// only, under `unshare` with `unshare_args`; the inner run (marked by `INNER_ENV`)
/// does the work. Fails with the inner run's output if it failed or ran no test.
fn run_outer(name: &str, unshare_args: &[&str]) {
    let exe = std::env::current_exe().expect("current test executable");
    let root = std::env::temp_dir().join(format!("tapnet-it-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&root).expect("create the test's root directory");
    let out = Command::new("unshare")
        .args(unshare_args)
        .arg(&exe)
        // --include-ignored: the outer run already chose this test (`-- --ignored` too).
        .args([
            "--exact",
            name,
            "--nocapture",
            "--test-threads",
            "1",
            "--include-ignored",
        ])
        .env(INNER_ENV, name)
        .env(ROOT_ENV, &root)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run unshare(1) to get a test namespace: {e}"));
    // The tmpfs went away with the namespace; the empty mount point is ours to remove.
    let _ = std::fs::remove_dir_all(&root);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        if stderr.contains("unshare failed") || stderr.contains("unshare:") {
            panic!(
                "test {name}: could not create its namespaces (unshare {}; it needs root, and \
                 user namespaces enabled where --user is asked: sysctl \
                 kernel.unprivileged_userns_clone / user.max_user_namespaces):\n{stderr}",
                unshare_args.join(" ")
            );
        }
        panic!(
            "test {name} failed inside its namespace:\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
        );
    }
    // The inner run must really have run the test: libtest prints "1 passed".
    assert!(
        stdout.contains("1 passed"),
        "test {name}: the inner run did not execute the test:\n{stdout}\n{stderr}"
    );
}

/// Where the built binaries are: next to the test executable's `deps/` directory.
fn bin_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current test executable");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} not built; run `cargo build --workspace --bins` first (scripts/test.sh does)",
        p.display()
    );
    p
}

/// A running daemon in the test's namespaces, plus helpers to drive it.
pub struct Env {
    /// Root of this test's tmpfs.
    pub root: PathBuf,
    /// The API socket.
    pub socket: PathBuf,
    daemon: Option<Child>,
    log: PathBuf,
    /// The network namespace the daemon runs in (`None`: the test's own).
    netns: Option<PathBuf>,
}

impl Env {
    fn start() -> Env {
        Env::start_with(&[])
    }

    fn start_with(extra: &[&str]) -> Env {
        // A private tmpfs: the daemon's dirs and every file the test makes.
        let root = PathBuf::from(std::env::var_os(ROOT_ENV).expect("TAPNET_IT_ROOT set"));
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "tapnet-test"])
            .arg(&root)
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "cannot mount a tmpfs on {} in the test namespace",
            root.display()
        );
        // Loopback up in the test's own namespace (the "host" of this test).
        let _ = Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .status();
        let mut env = Env {
            socket: root.join("run/tapnet.sock"),
            log: root.join("tapnetd.log"),
            root,
            daemon: None,
            netns: None,
        };
        env.start_daemon_with(extra);
        env
    }

    /// Start `tapnetd` (state from the data root, if any) and wait until it answers
    /// `/_ping`.
    pub fn start_daemon(&mut self) {
        self.start_daemon_with(&[]);
    }

    /// Stop the daemon with SIGTERM and wait for it.
    pub fn stop_daemon(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            // SIGTERM by pid: only the daemon this harness started.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
            panic!("tapnetd did not stop within 10 s of SIGTERM");
        }
    }

    fn stop(mut self) {
        self.stop_daemon();
    }

    /// The daemon's log so far.
    pub fn daemon_log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Run the `tapnet` CLI against this daemon.
    pub fn tapnet(&self, args: &[&str]) -> Output {
        Command::new(bin_path("tapnet"))
            .arg("-H")
            .arg(format!("unix://{}", self.socket.display()))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run tapnet")
    }

    /// Run the CLI; panic with its stderr and the daemon log unless it succeeds. Returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.tapnet(args);
        assert!(
            out.status.success(),
            "tapnet {args:?} failed ({}):\nstdout: {}\nstderr: {}\n--- daemon log\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.daemon_log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Run the CLI; panic if it succeeds. Returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.tapnet(args);
        assert!(
            !out.status.success(),
            "tapnet {args:?} succeeded but should have failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// Raw HTTP request to the daemon's socket; returns (status, parsed JSON body or Null).
    pub fn api(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        let mut cmd = Command::new("curl");
        cmd.args(["-s", "-m", "30", "-X", method, "--unix-socket"])
            .arg(&self.socket)
            .args(["-w", "\n%{http_code}"]);
        if let Some(b) = body {
            cmd.args(["-H", "Content-Type: application/json", "--data-binary", b]);
        }
        cmd.arg(format!("http://tapnet{path}"));
        let out = cmd.output().expect("run curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", text.as_str()));
        let code: u16 = code.trim().parse().unwrap_or(0);
        let json = serde_json::from_str(body).unwrap_or(Value::Null);
        (code, json)
    }

    /// `GET path`, asserting 200; returns the JSON.
    pub fn get(&self, path: &str) -> Value {
        let (code, v) = self.api("GET", path, None);
        assert_eq!(code, 200, "GET {path} -> {code}: {v}");
        v
    }

    /// Create a sandbox; returns its id.
    pub fn sandbox(&self, name: &str) -> String {
        self.ok(&["sandbox", "create", name]).trim().to_string()
    }

    /// Create a bridge network with `subnet`; returns its id.
    pub fn network(&self, name: &str, subnet: &str) -> String {
        self.ok(&["network", "create", "--subnet", subnet, name])
            .trim()
            .to_string()
    }

    /// Connect `sandbox` to `network`; returns its IPv4 address (no prefix).
    pub fn connect(&self, network: &str, sandbox: &str) -> String {
        self.ok(&["network", "connect", network, sandbox]);
        self.ip_of(network, sandbox)
    }

    /// The IPv4 address of `sandbox` on `network`, from sandbox inspect.
    pub fn ip_of(&self, network: &str, sandbox: &str) -> String {
        let v = self.get(&format!("/sandboxes/{sandbox}"));
        let cidr = v["Endpoints"][network]["IPv4Address"]
            .as_str()
            .unwrap_or_else(|| panic!("{sandbox} has no address on {network}: {v}"));
        cidr.split('/').next().unwrap().to_string()
    }

    /// The namespace path of a sandbox.
    pub fn netns_path(&self, sandbox: &str) -> PathBuf {
        let v = self.get(&format!("/sandboxes/{sandbox}"));
        PathBuf::from(v["NetnsPath"].as_str().expect("NetnsPath"))
    }

    /// Run a command in a sandbox through `tapnet exec`.
    pub fn exec(&self, sandbox: &str, cmd: &[&str]) -> Output {
        let mut args = vec!["exec", sandbox, "--"];
        args.extend_from_slice(cmd);
        self.tapnet(&args)
    }

    /// `ping -c count` from a sandbox; true if every echo was answered.
    pub fn ping(&self, sandbox: &str, ip: &str, count: u32) -> bool {
        let c = count.to_string();
        let out = self.exec(
            sandbox,
            &["ping", "-n", "-q", "-c", &c, "-i", "0.2", "-W", "2", ip],
        );
        out.status.success()
    }

    /// The body of `GET /metrics` (OpenMetrics text).
    pub fn metrics_text(&self) -> String {
        let out = Command::new("curl")
            .args(["-s", "-m", "30", "--unix-socket"])
            .arg(&self.socket)
            .arg("http://tapnet/metrics")
            .output()
            .expect("run curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The stats entry of the port of `sandbox` on `network`.
    pub fn port_stats(&self, network: &str, sandbox: &str) -> Value {
        let v = self.get(&format!("/networks/{network}/stats"));
        v["Ports"]
            .as_array()
            .expect("Ports array")
            .iter()
            .find(|p| p["Sandbox"] == sandbox)
            .cloned()
            .unwrap_or_else(|| panic!("no port for {sandbox} in {v}"))
    }

    /// Run a Python 3 snippet inside a sandbox (raw sockets for capture and injection).
    pub fn python(&self, sandbox: &str, code: &str) -> Output {
        self.exec(sandbox, &[python3(), "-c", code])
    }
}

/// The Python 3 interpreter to use inside sandboxes.
pub fn python3() -> &'static str {
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- tapnetd log\n{}", self.daemon_log());
        }
    }
}

/// Field of a JSON value as u64 (0 if missing).
pub fn n(v: &Value, field: &str) -> u64 {
    v[field].as_u64().unwrap_or(0)
}

/// The stock `docker` CLI on PATH. Panics with what to do when there is none: the
/// docker_cli tests must not pass silently without it.
pub fn docker_bin() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("docker"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "the docker CLI is not on PATH: these tests drive tapnetd with the stock docker \
                 client. Install it (`apt-get install docker.io`, as scripts/test.sh does, or any \
                 docker CLI binary) and run again"
            )
        })
}

impl Env {
    /// Run the stock docker CLI against this daemon (`-H unix://SOCKET`), with its
    /// config dir inside the test's tmpfs and `extra_env` set.
    pub fn docker_with(&self, extra_env: &[(&str, &str)], args: &[&str]) -> Output {
        let mut cmd = Command::new(docker_bin());
        cmd.arg("-H")
            .arg(format!("unix://{}", self.socket.display()))
            .args(args)
            .env("DOCKER_CONFIG", self.root.join("docker-config"))
            .env("DOCKER_CLI_HINTS", "false")
            .env_remove("DOCKER_HOST")
            .env_remove("DOCKER_CONTEXT")
            .env_remove("DOCKER_API_VERSION")
            .stdin(Stdio::null());
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        cmd.output().expect("run docker")
    }

    /// Run docker; panic with its output and the daemon log unless it succeeds. Returns stdout.
    pub fn docker_ok(&self, args: &[&str]) -> String {
        let out = self.docker_with(&[], args);
        assert!(
            out.status.success(),
            "docker {args:?} failed ({}):\nstdout: {}\nstderr: {}\n--- daemon log\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.daemon_log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Run docker; panic if it succeeds. Returns stderr.
    pub fn docker_fails(&self, args: &[&str]) -> String {
        let out = self.docker_with(&[], args);
        assert!(
            !out.status.success(),
            "docker {args:?} succeeded but should have failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// Raw HTTP request whose body is the file `body`; returns (status, JSON or Null).
    pub fn api_file(&self, method: &str, path: &str, body: &Path) -> (u16, Value) {
        let out = Command::new("curl")
            .args(["-s", "-m", "30", "-X", method, "--unix-socket"])
            .arg(&self.socket)
            .args([
                "-w",
                "\n%{http_code}",
                "-H",
                "Content-Type: application/json",
            ])
            .arg("--data-binary")
            .arg(format!("@{}", body.display()))
            .arg(format!("http://tapnet{path}"))
            .output()
            .expect("run curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", text.as_str()));
        (
            code.trim().parse().unwrap_or(0),
            serde_json::from_str(body).unwrap_or(Value::Null),
        )
    }
}

/// Percent-encode a query value (e.g. Docker's JSON `filters`) for a URL.
pub fn query_escape(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

impl Env {
    /// Start `tapnetd` with extra command-line flags (e.g. `--bip`) and wait until it
    /// answers `/_ping`.
    pub fn start_daemon_with(&mut self, extra: &[&str]) {
        self.start_daemon_via(None, extra);
    }

    /// As [`Env::start_daemon_with`], with `tapnetd` started through `wrapper`, a helper
    /// binary of this crate (`src/bin/`) that execs its arguments (so the child's pid is
    /// still the daemon's), e.g. `deny_io_uring`.
    pub fn start_daemon_via(&mut self, wrapper: Option<&str>, extra: &[&str]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let program = bin_path(wrapper.unwrap_or("tapnetd"));
        let mut cmd = match &self.netns {
            None => Command::new(program),
            Some(ns) => {
                // nsenter execs tapnetd (no fork): the child's pid is the daemon's.
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={}", ns.display())).arg(program);
                c
            }
        };
        if wrapper.is_some() {
            cmd.arg(bin_path("tapnetd"));
        }
        let child = cmd
            .arg("-H")
            .arg(format!("unix://{}", self.socket.display()))
            .arg("--exec-root")
            .arg(self.root.join("run"))
            .arg("--data-root")
            .arg(self.root.join("data"))
            // The Docker plugin's default socket is the machine's /run/docker/plugins:
            // off unless the test asks for it.
            .args(
                (!extra.iter().any(|a| a.starts_with("--docker-plugin")))
                    .then_some("--docker-plugin=false"),
            )
            .args(extra)
            .env("RUST_LOG", "debug")
            // An unknown driver name is looked up as a plugin with dockerd's retries
            // (30 s): tests that want them give --plugin-retry-deadline.
            .env("TAPNET_PLUGIN_RETRY_DEADLINE", "1s")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn tapnetd");
        self.daemon = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if self.socket.exists() {
                let (code, _) = self.api("GET", "/_ping", None);
                if code == 200 {
                    return;
                }
            }
            if let Some(Ok(Some(st))) = self.daemon.as_mut().map(|c| c.try_wait()) {
                panic!("tapnetd exited early ({st}):\n{}", self.daemon_log());
            }
            assert!(
                Instant::now() < deadline,
                "tapnetd did not answer /_ping within 20 s:\n{}",
                self.daemon_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stop the daemon and forget its persistent state (the data root), so the next
    /// start begins from nothing (its flags decide the pre-defined networks again).
    pub fn restart_fresh(&mut self, extra: &[&str]) {
        self.stop_daemon();
        let data = self.root.join("data");
        if data.exists() {
            std::fs::remove_dir_all(&data).unwrap();
        }
        self.start_daemon_with(extra);
    }

    /// Raw API call that must answer 2xx; returns the JSON body.
    pub fn api_ok(&self, method: &str, path: &str, body: Option<&str>) -> Value {
        let (code, v) = self.api(method, path, body);
        assert!(
            (200..300).contains(&code),
            "{method} {path} {body:?} -> {code}: {v}\n--- daemon log\n{}",
            self.daemon_log()
        );
        v
    }

    /// Run a command in the test's own namespace (the daemon's "host"); panics on failure.
    pub fn host_cmd(&self, args: &[&str]) {
        let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Run a command in a sandbox; panic unless it succeeds. Returns stdout.
    pub fn exec_ok(&self, sandbox: &str, cmd: &[&str]) -> String {
        let out = self.exec(sandbox, cmd);
        assert!(
            out.status.success(),
            "{cmd:?} in {sandbox} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Env {
    /// The daemon's pid, if one is running.
    pub fn daemon_pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(Child::id)
    }

    /// Crash the daemon: SIGKILL by pid (only the daemon this harness started), then
    /// reap it.
    pub fn kill9_daemon(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            let _ = child.wait();
        }
    }

    /// Stop the daemon with SIGTERM; returns how long it took to exit.
    pub fn stop_daemon_timed(&mut self) -> Duration {
        let t0 = Instant::now();
        self.stop_daemon();
        t0.elapsed()
    }

    /// Run a command inside a namespace file with `nsenter --net=PATH` (works
    /// without the daemon).
    pub fn nsenter(&self, netns: &Path, cmd: &[&str]) -> Output {
        Command::new("nsenter")
            .arg(format!("--net={}", netns.display()))
            .args(cmd)
            .stdin(Stdio::null())
            .output()
            .expect("run nsenter")
    }
}

// ---------------------------------------------------------------------------------------
// The "wan": a network namespace standing for the outside world (issue 4's gateway tests).
// ---------------------------------------------------------------------------------------

/// The test namespace's (the daemon host's) address on the wan link.
pub const WAN_HOST_IP: &str = "198.18.0.1";
/// The wan namespace's own address (its servers listen here).
pub const WAN_IP: &str = "198.18.0.2";
/// An address on the wan link where nobody answers (a dead DNS upstream).
pub const WAN_DEAD_IP: &str = "198.18.0.3";
/// What the wan DNS server answers for [`WAN_DNS_NAME`].
pub const WAN_DNS_ANSWER: &str = "198.18.0.99";
/// The one name the wan DNS server knows.
pub const WAN_DNS_NAME: &str = "outside.example";

/// Every blocking socket a test makes gets this timeout: a broken datapath fails the
/// test instead of hanging it.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// The outside world of a gateway test: a network namespace at `/run/netns/wan` joined
/// to the test's namespace (the daemon's host) by a veth pair:
/// host `wan0` 198.18.0.1/24 ↔ wan `eth0` 198.18.0.2/24.
pub struct Wan {
    /// The wan namespace.
    pub ns: tapnet_sandbox::netns::Netns,
}

/// Peers a wan server has seen, in arrival order.
pub type Peers = std::sync::Arc<std::sync::Mutex<Vec<std::net::SocketAddr>>>;

/// A server running on its own thread in the wan (or any) namespace.
pub struct Server {
    /// The address it listens on.
    pub addr: std::net::SocketAddr,
    /// Every client address it has seen (TCP: accepted peers; UDP: datagram sources).
    pub peers: Peers,
    /// Queries answered (DNS server only).
    pub queries: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Server {
    /// The client addresses seen so far.
    pub fn seen(&self) -> Vec<std::net::SocketAddr> {
        self.peers.lock().unwrap().clone()
    }

    /// Number of DNS queries answered so far.
    pub fn query_count(&self) -> usize {
        self.queries.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Env {
    /// Give this test a private tmpfs over `/run` (inside its own mount namespace) with
    /// an empty `/run/netns`, once: `ip netns add` then touches nothing on the machine.
    /// Decided by [`PRIVATE_RUN_MARK`], not by whether `/run/netns` exists: the
    /// machine's own `/run/netns` (made by any `ip netns add` on it) is visible until
    /// the tmpfs covers it, and tests sharing it collide.
    fn private_run(&self) {
        if !Path::new(PRIVATE_RUN_MARK).exists() {
            self.host_cmd(&["mount", "-t", "tmpfs", "tapnet-test-run", "/run"]);
            std::fs::write(PRIVATE_RUN_MARK, b"").unwrap();
        }
        std::fs::create_dir_all("/run/netns").unwrap();
    }

    /// Build the wan namespace (idempotence is not needed: once per test). `/run` gets a
    /// private tmpfs first, inside the test's own mount namespace, so `ip netns add`
    /// touches nothing on the machine.
    pub fn wan(&self) -> Wan {
        self.private_run();
        self.host_cmd(&["ip", "netns", "add", "wan"]);
        self.host_cmd(&[
            "ip", "link", "add", "wan0", "type", "veth", "peer", "name", "eth0", "netns", "wan",
        ]);
        self.host_cmd(&["ip", "addr", "add", "198.18.0.1/24", "dev", "wan0"]);
        self.host_cmd(&["ip", "link", "set", "wan0", "up"]);
        self.host_cmd(&[
            "ip",
            "-n",
            "wan",
            "addr",
            "add",
            "198.18.0.2/24",
            "dev",
            "eth0",
        ]);
        self.host_cmd(&["ip", "-n", "wan", "link", "set", "eth0", "up"]);
        self.host_cmd(&["ip", "-n", "wan", "link", "set", "lo", "up"]);
        let ns = tapnet_sandbox::netns::Netns::open(Path::new("/run/netns/wan"))
            .expect("open /run/netns/wan");
        // The link is up when the wan answers a ping from the host.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let ok = Command::new("ping")
                .args(["-n", "-q", "-c", "1", "-W", "1", WAN_IP])
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false);
            if ok {
                break;
            }
            assert!(Instant::now() < deadline, "the wan link did not come up");
            std::thread::sleep(Duration::from_millis(100));
        }
        Wan { ns }
    }

    /// Open a sandbox's namespace (to make sockets in it with [`tapnet_sandbox::netns::Netns::run`]).
    pub fn sandbox_ns(&self, sandbox: &str) -> tapnet_sandbox::netns::Netns {
        tapnet_sandbox::netns::Netns::open(&self.netns_path(sandbox)).expect("open sandbox netns")
    }

    /// The gateway address of `network` (IPAM config of `network inspect`).
    pub fn gateway_of(&self, network: &str) -> String {
        let v = self.get(&format!("/networks/{network}"));
        v["IPAM"]["Config"]
            .as_array()
            .and_then(|c| {
                c.iter()
                    .filter_map(|e| e["Gateway"].as_str())
                    .find(|g| !g.contains(':'))
            })
            .unwrap_or_else(|| panic!("{network} has no IPv4 gateway: {v}"))
            .split('/')
            .next()
            .unwrap()
            .to_string()
    }

    /// The `Gateway` block of `GET /networks/{network}/stats`.
    pub fn gateway_stats(&self, network: &str) -> Value {
        self.get(&format!("/networks/{network}/stats"))["Gateway"].clone()
    }

    /// Send one DNS query from inside `sandbox` to `server` (a raw packet built by Python,
    /// no resolver library); returns (rcode, answers as text in answer order) or panics
    /// if no reply came within `timeout_s`.
    pub fn dns_query(
        &self,
        sandbox: &str,
        server: &str,
        name: &str,
        qtype: &str,
        timeout_s: u32,
    ) -> (u8, Vec<String>) {
        self.dns_query_over(sandbox, server, name, qtype, timeout_s, "udp")
    }

    /// [`Env::dns_query`] over `proto` (`udp` or `tcp`).
    pub fn dns_query_over(
        &self,
        sandbox: &str,
        server: &str,
        name: &str,
        qtype: &str,
        timeout_s: u32,
        proto: &str,
    ) -> (u8, Vec<String>) {
        let out = self.exec(
            sandbox,
            &[
                python3(),
                "-c",
                DNS_QUERY_PY,
                server,
                name,
                qtype,
                &timeout_s.to_string(),
                proto,
            ],
        );
        assert!(
            out.status.success(),
            "DNS query {name} {qtype} to {server} from {sandbox} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).expect("dns_query output is JSON");
        let rcode = v["rcode"].as_u64().unwrap() as u8;
        let answers = v["answers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_string())
            .collect();
        (rcode, answers)
    }
}

/// `python3 -c DNS_QUERY_PY SERVER NAME TYPE TIMEOUT [udp|tcp]`: one query, prints
/// `{"rcode": n, "answers": [...], "ms": elapsed}`; exit 2 on timeout.
pub const DNS_QUERY_PY: &str = r#"
import json, random, socket, struct, sys, time
server, name, qtype, timeout = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
types = {"A": 1, "PTR": 12, "AAAA": 28}
qid = random.randint(0, 65535)
q = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
for label in name.rstrip(".").split("."):
    q += bytes([len(label)]) + label.encode()
q += b"\x00" + struct.pack(">HH", types[qtype], 1)
proto = sys.argv[5] if len(sys.argv) > 5 else "udp"
t0 = time.time()
if proto == "tcp":
    # RFC 1035 4.2.2: a two-byte length in front of each message.
    s = socket.create_connection((server, 53), timeout=timeout)
    s.sendall(struct.pack(">H", len(q)) + q)
    def read_exact(k):
        b = b""
        while len(b) < k:
            try:
                chunk = s.recv(k - len(b))
            except socket.timeout:
                print("no reply within %s s" % timeout, file=sys.stderr)
                sys.exit(2)
            if not chunk:
                print("connection closed after %d bytes" % len(b), file=sys.stderr)
                sys.exit(3)
            b += chunk
        return b
    r = read_exact(struct.unpack(">H", read_exact(2))[0])
    if struct.unpack(">H", r[:2])[0] != qid:
        print("reply for another query id", file=sys.stderr)
        sys.exit(4)
else:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(timeout)
    s.sendto(q, (server, 53))
    while True:
        try:
            r, _ = s.recvfrom(4096)
        except socket.timeout:
            print("no reply within %s s" % timeout, file=sys.stderr)
            sys.exit(2)
        if struct.unpack(">H", r[:2])[0] == qid:
            break
def read_name(buf, off):
    labels, jumped, end = [], False, off
    while True:
        n = buf[off]
        if n & 0xC0 == 0xC0:
            if not jumped:
                end = off + 2
            off = ((n & 0x3F) << 8) | buf[off + 1]
            jumped = True
            continue
        off += 1
        if n == 0:
            break
        labels.append(buf[off:off + n].decode())
        off += n
    return ".".join(labels) + ".", (end if jumped else off)
flags, qd, an = struct.unpack(">HHH", r[2:8])
off = 12
for _ in range(qd):
    _, off = read_name(r, off)
    off += 4
answers = []
for _ in range(an):
    _, off = read_name(r, off)
    t, _, _, ln = struct.unpack(">HHIH", r[off:off + 10])
    off += 10
    data = r[off:off + ln]
    if t == 1:
        answers.append(socket.inet_ntop(socket.AF_INET, data))
    elif t == 28:
        answers.append(socket.inet_ntop(socket.AF_INET6, data))
    elif t == 12:
        answers.append(read_name(r, off)[0])
    off += ln
print(json.dumps({"rcode": flags & 0xF, "answers": answers, "ms": int((time.time() - t0) * 1000)}))
"#;

impl Wan {
    /// Run `f` on a thread inside the wan namespace (sockets made there stay there).
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        self.ns.run(f).expect("enter the wan namespace")
    }

    /// A TCP echo server on 198.18.0.2:`port` (each connection echoed until EOF).
    pub fn tcp_echo(&self, port: u16) -> Server {
        tcp_server(&self.ns, &format!("{WAN_IP}:{port}"), |mut s| {
            let mut buf = vec![0u8; 1 << 16];
            loop {
                match std::io::Read::read(&mut s, &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(k) => {
                        if std::io::Write::write_all(&mut s, &buf[..k]).is_err() {
                            break;
                        }
                    }
                }
            }
        })
    }

    /// A TCP half-close checker on 198.18.0.2:`port`: reads to EOF, then writes
    /// `got N bytes` and closes.
    pub fn tcp_half_close(&self, port: u16) -> Server {
        tcp_server(&self.ns, &format!("{WAN_IP}:{port}"), |mut s| {
            let mut total = 0usize;
            let mut buf = vec![0u8; 1 << 16];
            loop {
                match std::io::Read::read(&mut s, &mut buf) {
                    Ok(0) => break,
                    Ok(k) => total += k,
                    Err(_) => return,
                }
            }
            let _ = std::io::Write::write_all(&mut s, format!("got {total} bytes").as_bytes());
        })
    }

    /// A UDP echo server on 198.18.0.2:`port`.
    pub fn udp_echo(&self, port: u16) -> Server {
        udp_echo_in(&self.ns, &format!("{WAN_IP}:{port}"))
    }

    /// A small DNS server on 198.18.0.2:53 (UDP): `outside.example. A 198.18.0.99`,
    /// NXDOMAIN for anything else.
    pub fn dns(&self) -> Server {
        let sock = self
            .run(|| std::net::UdpSocket::bind(format!("{WAN_IP}:53")))
            .expect("bind the wan DNS server");
        let peers: Peers = Default::default();
        let queries = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let server = Server {
            addr: sock.local_addr().unwrap(),
            peers: peers.clone(),
            queries: queries.clone(),
        };
        std::thread::spawn(move || {
            use hickory_proto::op::{Message, OpCode, ResponseCode};
            use hickory_proto::rr::rdata::A;
            use hickory_proto::rr::{RData, Record, RecordType};
            let mut buf = [0u8; 4096];
            loop {
                let Ok((k, from)) = sock.recv_from(&mut buf) else {
                    return;
                };
                peers.lock().unwrap().push(from);
                let Ok(msg) = Message::from_vec(&buf[..k]) else {
                    continue;
                };
                let mut resp = Message::response(msg.metadata.id, OpCode::Query);
                resp.metadata.recursion_desired = msg.metadata.recursion_desired;
                resp.metadata.recursion_available = true;
                let mut found = false;
                for q in &msg.queries {
                    resp.add_query(q.clone());
                    let name = q.name().to_ascii().to_ascii_lowercase();
                    if name.trim_end_matches('.') == WAN_DNS_NAME {
                        found = true;
                        if q.query_type() == RecordType::A {
                            resp.add_answer(Record::from_rdata(
                                q.name().clone(),
                                60,
                                RData::A(A(WAN_DNS_ANSWER.parse().unwrap())),
                            ));
                        }
                    }
                }
                if !found {
                    resp.metadata.response_code = ResponseCode::NXDomain;
                }
                if let Ok(bytes) = resp.to_vec() {
                    let _ = sock.send_to(&bytes, from);
                }
                queries.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        });
        server
    }
}

/// Read `s` to its end, checking byte `i` of the stream against `pattern(i)`; the bytes
/// read so far go to `progress` after each read. Errors name the offset.
pub fn read_checked(
    s: &mut std::net::TcpStream,
    pattern: fn(usize) -> u8,
    progress: Option<&std::sync::atomic::AtomicUsize>,
) -> Result<usize, String> {
    use std::io::Read;
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let k = s
            .read(&mut buf)
            .map_err(|e| format!("read after {got} bytes: {e}"))?;
        if k == 0 {
            return Ok(got);
        }
        for &byte in &buf[..k] {
            if byte != pattern(got) {
                return Err(format!("corrupt or reordered byte at offset {got}"));
            }
            got += 1;
        }
        if let Some(p) = progress {
            p.store(got, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// Send `total` bytes of a position-dependent pattern over TCP from sandbox `from` to
/// `to_ip:port` in sandbox `to` through the network, and assert that every byte
/// arrives, in order (a reordered or corrupt byte names its offset).
pub fn tcp_bytes(env: &Env, from: &str, to: &str, to_ip: &str, port: u16, total: usize) {
    use std::io::Write;
    fn pattern(i: usize) -> u8 {
        (i % 251) as u8 ^ (i >> 12) as u8
    }
    let ns_from = env.sandbox_ns(from);
    let listener = env
        .sandbox_ns(to)
        .run(move || std::net::TcpListener::bind(("0.0.0.0", port)))
        .expect("enter the receiver's namespace")
        .unwrap_or_else(|e| panic!("{to}: listen on port {port}: {e}"));
    let receiver = std::thread::spawn(move || -> Result<usize, String> {
        let (mut s, _) = listener.accept().map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(|e| e.to_string())?;
        read_checked(&mut s, pattern, None)
    });
    let addr = format!("{to_ip}:{port}");
    let mut stream = ns_from
        .run(|| std::net::TcpStream::connect(&addr))
        .expect("enter the sender's namespace")
        .unwrap_or_else(|e| panic!("{from} cannot reach {addr}: {e}"));
    stream
        .set_write_timeout(Some(Duration::from_secs(30)))
        .expect("set a write timeout");
    let data: Vec<u8> = (0..total).map(pattern).collect();
    stream.write_all(&data).expect("send the pattern");
    drop(stream);
    let got = receiver
        .join()
        .expect("receiver thread")
        .unwrap_or_else(|e| panic!("{from} -> {to}: {e}"));
    assert_eq!(got, total, "{from} -> {to}: not every byte arrived");
}

/// A TCP server bound in `ns` at `addr`; every accepted connection (with [`IO_TIMEOUT`]
/// on reads and writes) is handled by `handle` on its own thread.
pub fn tcp_server(
    ns: &tapnet_sandbox::netns::Netns,
    addr: &str,
    handle: impl Fn(std::net::TcpStream) + Send + Sync + Copy + 'static,
) -> Server {
    let listener = ns
        .run(|| std::net::TcpListener::bind(addr))
        .expect("enter namespace")
        .unwrap_or_else(|e| panic!("bind {addr}: {e}"));
    let peers: Peers = Default::default();
    let server = Server {
        addr: listener.local_addr().unwrap(),
        peers: peers.clone(),
        queries: Default::default(),
    };
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(s) = conn else { return };
            if let Ok(p) = s.peer_addr() {
                peers.lock().unwrap().push(p);
            }
            let _ = s.set_read_timeout(Some(IO_TIMEOUT));
            let _ = s.set_write_timeout(Some(IO_TIMEOUT));
            std::thread::spawn(move || handle(s));
        }
    });
    server
}

/// A UDP echo server bound in `ns` at `addr`.
pub fn udp_echo_in(ns: &tapnet_sandbox::netns::Netns, addr: &str) -> Server {
    let sock = ns
        .run(|| std::net::UdpSocket::bind(addr))
        .expect("enter namespace")
        .unwrap_or_else(|e| panic!("bind {addr}: {e}"));
    // Bursts of thousands of flows (the flow-limit test) must not overflow the echo's
    // receive queue while its thread waits for a CPU: the largest buffer allowed
    // (`SO_RCVBUFFORCE` as real root, else `SO_RCVBUF` up to `net.core.rmem_max`).
    use nix::sys::socket::{setsockopt, sockopt};
    if setsockopt(&sock, sockopt::RcvBufForce, &(8 << 20)).is_err() {
        let _ = setsockopt(&sock, sockopt::RcvBuf, &(8 << 20));
    }
    let peers: Peers = Default::default();
    let server = Server {
        addr: sock.local_addr().unwrap(),
        peers: peers.clone(),
        queries: Default::default(),
    };
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        while let Ok((k, from)) = sock.recv_from(&mut buf) {
            peers.lock().unwrap().push(from);
            let _ = sock.send_to(&buf[..k], from);
        }
    });
    server
}

/// A TCP connection made from inside `ns`, with [`IO_TIMEOUT`] on reads and writes and
/// `connect_timeout` on the handshake.
pub fn connect_in(
    ns: &tapnet_sandbox::netns::Netns,
    addr: &str,
    connect_timeout: Duration,
) -> std::io::Result<std::net::TcpStream> {
    let sa: std::net::SocketAddr = addr.parse().expect("socket address");
    let s = ns
        .run(|| std::net::TcpStream::connect_timeout(&sa, connect_timeout))
        .expect("enter namespace")?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(s)
}

/// One UDP request/response from inside `ns` to `addr`, retried up to 5 times (1 s each).
/// Returns the reply and the address it came from.
pub fn udp_roundtrip_in(
    ns: &tapnet_sandbox::netns::Netns,
    addr: &str,
    payload: &[u8],
) -> Option<(Vec<u8>, std::net::SocketAddr)> {
    let sock = ns
        .run(|| std::net::UdpSocket::bind("0.0.0.0:0"))
        .expect("enter namespace")
        .expect("bind UDP client");
    sock.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut buf = vec![0u8; 65536];
    for _ in 0..5 {
        if sock.send_to(payload, addr).is_err() {
            std::thread::sleep(Duration::from_millis(200));
            continue;
        }
        if let Ok((k, from)) = sock.recv_from(&mut buf) {
            return Some((buf[..k].to_vec(), from));
        }
    }
    None
}

// ---------------------------------------------------------------------------------------
// A second host: another daemon in its own network namespace (overlay tests).
// ---------------------------------------------------------------------------------------

impl Env {
    /// Make a second "host": a network namespace at `/run/netns/NAME` joined to the
    /// test's namespace (this host) by a veth underlay, this host's end `u-NAME` with
    /// `local_cidr`, the other end `eth0` with `remote_cidr`, and a `tapnetd` running
    /// in it (`nsenter --net`) with its own socket, data root and exec root under
    /// `<root>/NAME/`, started with `extra` flags. `/run` gets a private tmpfs first
    /// (inside the test's mount namespace), as for [`Env::wan`]; call this once per
    /// test and not together with [`Env::wan`]. The returned [`Env`] drives the second
    /// daemon; dropping it kills that daemon.
    pub fn second_host(
        &self,
        name: &str,
        local_cidr: &str,
        remote_cidr: &str,
        extra: &[&str],
    ) -> Env {
        self.private_run();
        self.host_cmd(&["ip", "netns", "add", name]);
        let local = format!("u-{name}");
        self.host_cmd(&[
            "ip", "link", "add", &local, "type", "veth", "peer", "name", "eth0", "netns", name,
        ]);
        self.host_cmd(&["ip", "addr", "add", local_cidr, "dev", &local]);
        self.host_cmd(&["ip", "link", "set", &local, "up"]);
        self.host_cmd(&["ip", "-n", name, "addr", "add", remote_cidr, "dev", "eth0"]);
        self.host_cmd(&["ip", "-n", name, "link", "set", "eth0", "up"]);
        self.host_cmd(&["ip", "-n", name, "link", "set", "lo", "up"]);
        self.host_daemon(name, remote_cidr, extra)
    }
}

// ---------------------------------------------------------------------------------------
// A real etcd (Debian's etcd-server) for the cluster-store tests.
// ---------------------------------------------------------------------------------------

/// Where the test etcd's clients connect (inside the test's own namespace).
pub const ETCD_CLIENT: &str = "127.0.0.1:2379";

/// A real etcd in the test's namespace, its data and log under `root`; killed (by pid)
/// when dropped.
pub struct Etcd {
    child: Child,
    root: PathBuf,
    listen: String,
}

impl Etcd {
    /// Start etcd listening for clients on `listen` (e.g. `127.0.0.1:2379`, or
    /// `0.0.0.0:2379` to serve other namespaces too) and wait until it answers at
    /// [`ETCD_CLIENT`].
    pub fn start(root: &Path, listen: &str) -> Etcd {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(root.join("etcd.log"))
            .expect("open etcd.log");
        let child = Command::new("etcd")
            .arg("--data-dir")
            .arg(root.join("etcd"))
            .args([
                "--listen-client-urls",
                &format!("http://{listen}"),
                "--advertise-client-urls",
                &format!("http://{ETCD_CLIENT}"),
                "--listen-peer-urls",
                "http://127.0.0.1:2380",
                "--initial-advertise-peer-urls",
                "http://127.0.0.1:2380",
                "--initial-cluster",
                "default=http://127.0.0.1:2380",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log)
            .spawn()
            .expect("run etcd (Debian etcd-server; scripts/test.sh installs it)");
        let etcd = Etcd {
            child,
            root: root.to_path_buf(),
            listen: listen.to_string(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while etcd_client(Duration::from_secs(1)).is_none() {
            assert!(
                Instant::now() < deadline,
                "etcd did not answer within 20 s:\n{}",
                std::fs::read_to_string(root.join("etcd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        etcd
    }

    /// Stop it (SIGKILL, by pid) and leave it stopped; [`Etcd::restart`] starts it
    /// again on the same data directory.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stop (SIGKILL, by pid) and start again on the same data directory.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The old value's child is reaped: replacing it signals nothing.
        *self = Etcd::start(&self.root.clone(), &self.listen.clone());
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client of the test etcd, if it answers within `timeout`.
pub fn etcd_client(timeout: Duration) -> Option<tapnet_engine::store::etcd::EtcdStore> {
    tapnet_engine::store::etcd::EtcdStore::connect(
        &[ETCD_CLIENT.to_string()],
        tapnet_engine::store::etcd::DEFAULT_PREFIX,
        timeout,
    )
    .ok()
}

// ---------------------------------------------------------------------------------------
// A cluster: N "hosts" on one underlay, one etcd (the three-host overlay tests).
// ---------------------------------------------------------------------------------------

/// The underlay bridge of a [`Cluster`], in the test's own namespace.
pub const UNDERLAY_BRIDGE: &str = "ul0";
/// The test namespace's address on the underlay bridge, where etcd serves the hosts.
pub const UNDERLAY_ETCD: &str = "192.0.2.254";

/// N "hosts" joined by one underlay (see [`Env::cluster`]); host `i` (0-based) is the
/// network namespace `h{i+1}` with `eth0` 192.0.2.`i+1`/24, its own `tapnetd` (socket,
/// data root and exec root under `<root>/h{i+1}/`) with the cluster store.
pub struct Cluster {
    /// The hosts' daemons; `hosts[i]` is `h{i+1}`.
    pub hosts: Vec<Env>,
    /// The etcd every host uses (listening on the underlay and on loopback).
    pub etcd: Etcd,
    flags: Vec<Vec<String>>,
}

impl Env {
    /// Make a host on the underlay bridge `bridge` of this test's namespace: a network
    /// namespace `/run/netns/NAME`, a veth whose end `u-NAME` is a port of `bridge` and
    /// whose other end is `eth0` with `cidr` in NAME, and a `tapnetd` running there
    /// (`nsenter --net`) with its dirs under `<root>/NAME/`, started with `extra`. The
    /// bridge (and the private `/run` tmpfs) must exist: [`Env::cluster`] makes them.
    pub fn bridged_host(&self, name: &str, bridge: &str, cidr: &str, extra: &[&str]) -> Env {
        self.host_cmd(&["ip", "netns", "add", name]);
        let local = format!("u-{name}");
        self.host_cmd(&[
            "ip", "link", "add", &local, "type", "veth", "peer", "name", "eth0", "netns", name,
        ]);
        self.host_cmd(&["ip", "link", "set", &local, "master", bridge]);
        self.host_cmd(&["ip", "link", "set", &local, "up"]);
        self.host_cmd(&["ip", "-n", name, "addr", "add", cidr, "dev", "eth0"]);
        self.host_cmd(&["ip", "-n", name, "link", "set", "eth0", "up"]);
        self.host_cmd(&["ip", "-n", name, "link", "set", "lo", "up"]);
        self.host_daemon(name, cidr, extra)
    }

    /// The last steps of [`Env::second_host`] and [`Env::bridged_host`]: wait (at most
    /// 10 s) until host NAME answers a ping on the underlay address of `cidr`, then
    /// start its `tapnetd` (dirs under `<root>/NAME/`, flags `extra`) and return its Env.
    fn host_daemon(&self, name: &str, cidr: &str, extra: &[&str]) -> Env {
        let ip = cidr.split('/').next().unwrap().to_string();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !Command::new("ping")
            .args(["-n", "-q", "-c", "1", "-W", "1", &ip])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
        {
            assert!(
                Instant::now() < deadline,
                "the underlay to {name} did not come up"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let root = self.root.join(name);
        std::fs::create_dir_all(&root).unwrap();
        let mut env = Env {
            socket: root.join("run/tapnet.sock"),
            log: root.join("tapnetd.log"),
            root,
            daemon: None,
            netns: Some(PathBuf::from(format!("/run/netns/{name}"))),
        };
        env.start_daemon_with(extra);
        env
    }

    /// Make `n` hosts (`h1`..`hN`, see [`Cluster`]) on a kernel bridge
    /// [`UNDERLAY_BRIDGE`] (192.0.2.254/24 in the test's namespace; the underlay is
    /// not what these tests test), a real etcd listening on every address of the test's
    /// namespace, and one `tapnetd` per host with `--cluster-store
    /// etcd://192.0.2.254:2379 --cluster-advertise 192.0.2.K --data-path-addr
    /// 192.0.2.K` and `extra`. The test's own daemon is stopped (it is not a host of
    /// the cluster). Call once per test, not with [`Env::wan`] or [`Env::second_host`].
    pub fn cluster(&mut self, n: usize, extra: &[&str]) -> Cluster {
        assert!((1..=250).contains(&n), "1..=250 hosts");
        self.stop_daemon();
        self.private_run();
        self.host_cmd(&["ip", "link", "add", UNDERLAY_BRIDGE, "type", "bridge"]);
        self.host_cmd(&[
            "ip",
            "addr",
            "add",
            &format!("{UNDERLAY_ETCD}/24"),
            "dev",
            UNDERLAY_BRIDGE,
        ]);
        self.host_cmd(&["ip", "link", "set", UNDERLAY_BRIDGE, "up"]);
        let etcd = Etcd::start(&self.root, "0.0.0.0:2379");
        let mut hosts = Vec::new();
        let mut flags = Vec::new();
        for i in 1..=n {
            let ip = format!("192.0.2.{i}");
            let mut f: Vec<String> = [
                "--cluster-store",
                &format!("etcd://{UNDERLAY_ETCD}:2379"),
                "--cluster-advertise",
                &ip,
                "--data-path-addr",
                &ip,
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            f.extend(extra.iter().map(|s| s.to_string()));
            let args: Vec<&str> = f.iter().map(String::as_str).collect();
            hosts.push(self.bridged_host(
                &format!("h{i}"),
                UNDERLAY_BRIDGE,
                &format!("{ip}/24"),
                &args,
            ));
            flags.push(f);
        }
        Cluster { hosts, etcd, flags }
    }
}

impl Cluster {
    /// Host `i`'s underlay address (192.0.2.`i+1`).
    pub fn ip(&self, i: usize) -> String {
        format!("192.0.2.{}", i + 1)
    }

    /// Host `i`'s network namespace name (`h{i+1}`).
    pub fn name(&self, i: usize) -> String {
        format!("h{}", i + 1)
    }

    /// The flags host `i`'s daemon was started with.
    pub fn flags(&self, i: usize) -> Vec<String> {
        self.flags[i].clone()
    }

    /// Start host `i`'s daemon again (after a stop) with its flags: live restore.
    pub fn start(&mut self, i: usize) {
        let f = self.flags[i].clone();
        let args: Vec<&str> = f.iter().map(String::as_str).collect();
        self.hosts[i].start_daemon_with(&args);
    }

    /// Cut host `i` off the underlay (its bridge port `u-h{i+1}` down: `eth0` in the
    /// host loses carrier, nothing crosses), or restore it.
    pub fn set_link(&self, i: usize, up: bool) {
        let out = Command::new("ip")
            .args([
                "link",
                "set",
                &format!("u-{}", self.name(i)),
                if up { "up" } else { "down" },
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ip link set: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Crash host `i`: `kill -9` its daemon, then delete its network namespace (the
    /// underlay veth goes with it). Its sandboxes' namespaces stay mounted under its
    /// exec root, unconnected.
    pub fn kill_host(&mut self, i: usize) {
        self.hosts[i].kill9_daemon();
        let out = Command::new("ip")
            .args(["netns", "del", &self.name(i)])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ip netns del: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Run `cmd` in host `i`'s network namespace (not in a sandbox).
    pub fn in_host(&self, i: usize, cmd: &[&str]) -> Output {
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.name(i)))
            .args(cmd)
            .stdin(Stdio::null())
            .output()
            .expect("run nsenter")
    }
}

impl Env {
    /// Two hosts on one real etcd: etcd listens on 0.0.0.0:2379 in this (host A's)
    /// namespace; A's daemon is restarted with `--cluster-store etcd://127.0.0.1:2379
    /// --cluster-advertise 192.0.2.1` and `a_extra`; host B is [`Env::second_host`]
    /// `hostb` (192.0.2.2 on the underlay) with its VXLAN socket on 192.0.2.2:4790,
    /// `--cluster-store etcd://192.0.2.1:2379 --cluster-advertise 192.0.2.2` and
    /// `b_extra` (e.g. `--cluster-ttl`). Returns (etcd, B).
    pub fn etcd_two_hosts(&mut self, a_extra: &[&str], b_extra: &[&str]) -> (Etcd, Env) {
        let etcd = Etcd::start(&self.root, "0.0.0.0:2379");
        let mut a_flags = vec![
            "--cluster-store",
            "etcd://127.0.0.1:2379",
            "--cluster-advertise",
            "192.0.2.1",
        ];
        a_flags.extend_from_slice(a_extra);
        self.restart_fresh(&a_flags);
        let b = self.second_host(
            "hostb",
            "192.0.2.1/24",
            "192.0.2.2/24",
            &hostb_etcd_flags(b_extra),
        );
        (etcd, b)
    }
}

/// The daemon flags of host B in [`Env::etcd_two_hosts`], then `extra` (to start B's
/// daemon again the same way).
pub fn hostb_etcd_flags<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut flags = vec![
        "--data-path-port",
        "4790",
        "--data-path-addr",
        "192.0.2.2",
        "--cluster-store",
        "etcd://192.0.2.1:2379",
        "--cluster-advertise",
        "192.0.2.2",
    ];
    flags.extend_from_slice(extra);
    flags
}

/// The path of a built workspace binary (`tapnet-cni`, ...), next to `tapnetd`.
pub fn built_binary(name: &str) -> PathBuf {
    bin_path(name)
}

// ---------------------------------------------------------------------------------------
// A real dockerd (Debian's docker.io) for the Docker plugin tests.
// ---------------------------------------------------------------------------------------

/// Marks a /run that is the test's own tmpfs (see [`in_root_namespace`]).
const PRIVATE_RUN_MARK: &str = "/run/.tapnet-test-private";

/// Where [`in_root_namespace`] tests run dockerd (under the test's root).
pub fn dockerd_dir(root: &Path) -> PathBuf {
    root.join("docker")
}

/// Run `body` inside fresh net + mount + pid namespaces *without* a user namespace
/// (dockerd, containerd and runc need the real root), with a private tmpfs over
/// `/run` (so `/run/docker/plugins` and `/run/netns` are the test's own) and `tapnetd`
/// started with its Docker plugin on `/run/docker/plugins/tapnet.sock` and dockerd's
/// socket at `<root>/docker/d.sock` (see [`Dockerd`]). Every process the test starts
/// dies with its pid namespace. As [`in_namespace`] otherwise.
pub fn in_root_namespace(name: &str, body: impl FnOnce(&mut Env)) {
    if std::env::var(INNER_ENV).as_deref() == Ok(name) {
        let root = PathBuf::from(std::env::var_os(ROOT_ENV).expect("TAPNET_IT_ROOT set"));
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "tapnet-test-run", "/run"])
            .status()
            .expect("run mount");
        assert!(status.success(), "cannot mount a tmpfs on /run");
        std::fs::create_dir_all("/run/netns").unwrap();
        std::fs::create_dir_all("/run/docker/plugins").unwrap();
        std::fs::write(PRIVATE_RUN_MARK, b"").unwrap();
        let host = format!("unix://{}/d.sock", dockerd_dir(&root).display());
        let mut env = Env::start_with(&["--docker-plugin=true", "--docker-host", &host]);
        body(&mut env);
        env.stop();
        return;
    }
    run_outer(
        name,
        &[
            "--net",
            "--mount",
            "--pid",
            "--fork",
            "--mount-proc",
            "--propagation",
            "private",
        ],
    );
}

/// A real dockerd in the test's namespaces (`--iptables=false --ip6tables=false
/// --bridge=none --live-restore`), its data root, exec root, socket and log under
/// `<root>/docker/`; the stock docker client drives it. Dropping it removes every
/// container and stops dockerd.
pub struct Dockerd {
    child: Option<Child>,
    /// Its directory.
    pub dir: PathBuf,
    /// Its API socket.
    pub socket: PathBuf,
}

impl Dockerd {
    /// Start dockerd and wait until it answers; import the busybox image `bb`
    /// (a tar of /bin/busybox and its applet links).
    pub fn start(root: &Path) -> Dockerd {
        let dir = dockerd_dir(root);
        std::fs::create_dir_all(&dir).unwrap();
        let mut d = Dockerd {
            child: None,
            socket: dir.join("d.sock"),
            dir,
        };
        d.spawn();
        if !d.docker(&["image", "inspect", "bb"]).status.success() {
            d.import_busybox();
        }
        d
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("log"))
            .unwrap();
        let child = Command::new("dockerd")
            .args([
                "--iptables=false",
                "--ip6tables=false",
                "--bridge=none",
                "--live-restore",
            ])
            .arg("--data-root")
            .arg(self.dir.join("data"))
            .arg("--exec-root")
            .arg(self.dir.join("exec"))
            .arg("--pidfile")
            .arg(self.dir.join("d.pid"))
            .arg("-H")
            .arg(format!("unix://{}", self.socket.display()))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn dockerd (Debian's docker.io; scripts/test.sh installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.docker(&["version"]).status.success() {
            if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("dockerd exited early ({st}):\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "dockerd did not answer within 60 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn import_busybox(&self) {
        let img = self.dir.join("img");
        let bin = img.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::copy("/bin/busybox", bin.join("busybox"))
            .expect("copy /bin/busybox (busybox-static)");
        let list = Command::new("/bin/busybox").arg("--list").output().unwrap();
        for applet in String::from_utf8_lossy(&list.stdout).lines() {
            if applet != "busybox" && !applet.is_empty() {
                let _ = std::os::unix::fs::symlink("busybox", bin.join(applet));
            }
        }
        let tar = Command::new("tar")
            .arg("-C")
            .arg(&img)
            .args(["-cf", "-", "."])
            .output()
            .unwrap();
        assert!(tar.status.success());
        let mut child = Command::new(docker_bin())
            .arg("-H")
            .arg(format!("unix://{}", self.socket.display()))
            .args(["import", "-", "bb:latest"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().unwrap();
            stdin.write_all(&tar.stdout).unwrap();
        }
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "docker import: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// dockerd's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }

    /// Run the docker client against this dockerd.
    pub fn docker(&self, args: &[&str]) -> Output {
        Command::new(docker_bin())
            .arg("-H")
            .arg(format!("unix://{}", self.socket.display()))
            .args(args)
            .output()
            .expect("run docker")
    }

    /// Run the docker client; panic unless it succeeds. Returns stdout, trimmed.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert!(
            out.status.success(),
            "docker {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Run the docker client; panic if it succeeds. Returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert!(
            !out.status.success(),
            "docker {args:?} should have failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// Stop dockerd with SIGTERM (running containers stay: `--live-restore`).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
            panic!("dockerd did not stop within 30 s of SIGTERM");
        }
    }

    /// Start dockerd again (after [`Dockerd::stop`]).
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        if self.child.is_some() {
            let ids = self.docker(&["ps", "-aq"]);
            for id in String::from_utf8_lossy(&ids.stdout).split_whitespace() {
                let _ = self.docker(&["rm", "-f", id]);
            }
            if let Some(mut child) = self.child.take() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(child.id() as i32),
                    nix::sys::signal::Signal::SIGTERM,
                );
                let _ = child.wait();
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Consistency of the store, the daemon's memory and the kernel (tests/tests/chaos.rs).
// ---------------------------------------------------------------------------------------

/// One device in a network namespace, as `ip -d -j addr show` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelLink {
    /// Interface name.
    pub name: String,
    /// `linkinfo.info_kind` (`tun` for a tap, `veth`, ...; empty for none).
    pub kind: String,
    /// MAC address, lowercase.
    pub mac: String,
    /// Global (non-link-local) addresses, `addr/len`.
    pub addrs: Vec<String>,
}

/// The devices other than `lo` in the network namespace at `netns` (`None`: the
/// test's own namespace). `Err` with `ip`'s message if it cannot be entered.
pub fn kernel_links(netns: Option<&Path>) -> Result<Vec<KernelLink>, String> {
    let mut cmd = match netns {
        Some(p) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net={}", p.display())).arg("ip");
            c
        }
        None => Command::new("ip"),
    };
    let out = cmd
        .args(["-d", "-j", "addr", "show"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("run ip: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| format!("ip -j: {e}"))?;
    let mut links = Vec::new();
    for l in v.as_array().cloned().unwrap_or_default() {
        let name = l["ifname"].as_str().unwrap_or_default().to_string();
        if name == "lo" {
            continue;
        }
        let addrs = l["addr_info"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter(|a| a["scope"] != "link")
            .filter_map(|a| Some(format!("{}/{}", a["local"].as_str()?, a["prefixlen"])))
            .collect();
        links.push(KernelLink {
            name,
            kind: l["linkinfo"]["info_kind"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            mac: l["address"]
                .as_str()
                .unwrap_or_default()
                .to_ascii_lowercase(),
            addrs,
        });
    }
    Ok(links)
}

/// One endpoint as the API, or the store, records it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct EndpointView {
    network: String,
    id: String,
    sandbox: String,
    ipv4: String,
    ipv6: String,
    mac: String,
    interface: String,
}

/// Networks (id → name), sandboxes (id → (name, netns path)) and endpoints of the
/// local scope, as the API or the store has them.
#[derive(Debug, Default, PartialEq, Eq)]
struct StateView {
    networks: std::collections::BTreeMap<String, String>,
    sandboxes: std::collections::BTreeMap<String, (String, String)>,
    endpoints: std::collections::BTreeSet<EndpointView>,
}

fn cidr_or_empty<T: std::fmt::Display>(a: Option<T>, len: u8) -> String {
    a.map_or_else(String::new, |a| format!("{a}/{len}"))
}

impl Env {
    /// Where this daemon's data root is (`<root>/data`).
    pub fn data_root(&self) -> PathBuf {
        self.root.join("data")
    }

    /// Where this daemon's exec root is (`<root>/run`).
    pub fn exec_root(&self) -> PathBuf {
        self.root.join("run")
    }

    /// The local-scope state as the API answers it (`GET /networks`, `GET /sandboxes`).
    fn api_view(&self, problems: &mut Vec<String>) -> StateView {
        let nets = self.get("/networks");
        let sbs = self.get("/sandboxes");
        let mut view = StateView::default();
        let mut interfaces = std::collections::BTreeMap::new();
        for s in sbs.as_array().cloned().unwrap_or_default() {
            let sid = s["Id"].as_str().unwrap_or_default().to_string();
            view.sandboxes.insert(
                sid.clone(),
                (
                    s["Name"].as_str().unwrap_or_default().to_string(),
                    s["NetnsPath"].as_str().unwrap_or_default().to_string(),
                ),
            );
            for (_, e) in s["Endpoints"].as_object().cloned().unwrap_or_default() {
                interfaces.insert(
                    e["EndpointID"].as_str().unwrap_or_default().to_string(),
                    e["Interface"].as_str().unwrap_or_default().to_string(),
                );
            }
        }
        for n in nets.as_array().cloned().unwrap_or_default() {
            if n["Scope"] != "local" {
                continue;
            }
            let nid = n["Id"].as_str().unwrap_or_default().to_string();
            view.networks
                .insert(nid.clone(), n["Name"].as_str().unwrap_or_default().into());
            for (sid, c) in n["Containers"].as_object().cloned().unwrap_or_default() {
                let id = c["EndpointID"].as_str().unwrap_or_default().to_string();
                let Some(interface) = interfaces.remove(&id) else {
                    problems.push(format!(
                        "API: endpoint {id} of network {} (sandbox {sid}) is missing from its sandbox's Endpoints",
                        n["Name"]
                    ));
                    continue;
                };
                view.endpoints.insert(EndpointView {
                    network: nid.clone(),
                    id,
                    sandbox: sid,
                    ipv4: c["IPv4Address"].as_str().unwrap_or_default().to_string(),
                    ipv6: c["IPv6Address"].as_str().unwrap_or_default().to_string(),
                    mac: c["MacAddress"]
                        .as_str()
                        .unwrap_or_default()
                        .to_ascii_lowercase(),
                    interface,
                });
            }
        }
        for (id, _) in interfaces {
            problems.push(format!(
                "API: a sandbox lists endpoint {id}, which no local network has"
            ));
        }
        view
    }

    /// The local-scope state as the store has it: a copy of the database file
    /// (the daemon holds its lock) opened with the engine's own reader.
    fn store_view(&self, problems: &mut Vec<String>) -> Option<StateView> {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static COPIES: AtomicUsize = AtomicUsize::new(0);
        let dir = self.root.join(format!(
            "store-copy-{}",
            COPIES.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let db_file = tapnet_engine::store::DB_FILE;
        if let Err(e) = std::fs::copy(self.data_root().join(db_file), dir.join(db_file)) {
            problems.push(format!("store: cannot copy the database: {e}"));
            return None;
        }
        let loaded = tapnet_engine::store::Db::open(&dir).and_then(|db| db.load());
        let _ = std::fs::remove_dir_all(&dir);
        let loaded = match loaded {
            Ok(l) => l,
            Err(e) => {
                problems.push(format!("store: cannot read the database: {e}"));
                return None;
            }
        };
        if loaded.skipped > 0 {
            problems.push(format!("store: {} unreadable records", loaded.skipped));
        }
        for e in &loaded.orphan_endpoints {
            problems.push(format!(
                "store: endpoint {} of unknown network {}",
                e.id, e.network_id
            ));
        }
        let mut view = StateView::default();
        for (id, s) in &loaded.store.sandboxes {
            view.sandboxes.insert(
                id.clone(),
                (s.name.clone(), s.netns_path.display().to_string()),
            );
        }
        for (id, n) in &loaded.store.networks {
            if n.scope != "local" {
                continue;
            }
            view.networks.insert(id.clone(), n.name.clone());
            for e in n.endpoints.values() {
                view.endpoints.insert(EndpointView {
                    network: id.clone(),
                    id: e.id.clone(),
                    sandbox: e.sandbox_id.clone(),
                    ipv4: cidr_or_empty(e.ipv4, e.prefix_len),
                    ipv6: cidr_or_empty(e.ipv6, e.prefix_len_v6),
                    mac: e
                        .mac
                        .map(|m| tapnet_engine::model::format_mac(&m))
                        .unwrap_or_default(),
                    interface: e.interface.clone(),
                });
            }
        }
        Some(view)
    }

    /// Everything that disagrees between the store, the daemon's memory (its API
    /// answers) and the kernel; empty when they agree. See [`assert_consistent`].
    /// With `probe_ipam`, IPAM is probed through static-address connects (this
    /// writes: not while the data root is full).
    pub fn consistency_problems(&self, probe_ipam: bool) -> Vec<String> {
        let mut problems = Vec::new();
        let api = self.api_view(&mut problems);
        // The store equals memory.
        if let Some(store) = self.store_view(&mut problems) {
            for (what, a, s) in [
                (
                    "networks",
                    format!("{:?}", api.networks),
                    format!("{:?}", store.networks),
                ),
                (
                    "sandboxes",
                    format!("{:?}", api.sandboxes),
                    format!("{:?}", store.sandboxes),
                ),
            ] {
                if a != s {
                    problems.push(format!(
                        "store and API differ on {what}:\n  API:   {a}\n  store: {s}"
                    ));
                }
            }
            for e in api.endpoints.difference(&store.endpoints) {
                problems.push(format!("endpoint in the API but not in the store: {e:?}"));
            }
            for e in store.endpoints.difference(&api.endpoints) {
                problems.push(format!("endpoint in the store but not in the API: {e:?}"));
            }
        }
        // The kernel equals memory: every endpoint's device is in its sandbox with its
        // MAC and addresses; every tap or veth in a sandbox is an endpoint's.
        let mut kernel_addrs: Vec<(String, String)> = Vec::new();
        for (sid, (name, path)) in &api.sandboxes {
            let links = match kernel_links(Some(Path::new(path))) {
                Ok(l) => l,
                Err(e) => {
                    problems.push(format!(
                        "sandbox {name}: its namespace {path} cannot be entered: {e}"
                    ));
                    continue;
                }
            };
            let mine: Vec<&EndpointView> = api
                .endpoints
                .iter()
                .filter(|e| &e.sandbox == sid && !e.interface.is_empty())
                .collect();
            for e in &mine {
                match links.iter().find(|l| l.name == e.interface) {
                    None => problems.push(format!(
                        "sandbox {name}: endpoint {} has no device {} in the kernel",
                        e.id, e.interface
                    )),
                    Some(l) => {
                        if !e.mac.is_empty() && l.mac != e.mac {
                            problems.push(format!(
                                "sandbox {name}: {} has MAC {} in the kernel, {} in the API",
                                l.name, l.mac, e.mac
                            ));
                        }
                        for a in [&e.ipv4, &e.ipv6] {
                            if !a.is_empty() && !l.addrs.contains(a) {
                                problems.push(format!(
                                    "sandbox {name}: {} lacks its address {a} (kernel: {:?})",
                                    l.name, l.addrs
                                ));
                            }
                        }
                    }
                }
            }
            for l in &links {
                let owned = mine.iter().any(|e| e.interface == l.name);
                if !owned && matches!(l.kind.as_str(), "tun" | "veth") {
                    problems.push(format!(
                        "sandbox {name}: orphan {} device {} ({}, {:?}) that no endpoint names",
                        l.kind, l.name, l.mac, l.addrs
                    ));
                }
                for a in &l.addrs {
                    kernel_addrs.push((a.clone(), format!("{name}/{}", l.name)));
                }
            }
        }
        // The daemon's own namespace holds no tap or veth of an endpoint.
        match kernel_links(self.netns.as_deref()) {
            Ok(links) => {
                for l in links
                    .iter()
                    .filter(|l| matches!(l.kind.as_str(), "tun" | "veth"))
                {
                    problems.push(format!(
                        "daemon's namespace: orphan {} device {} ({})",
                        l.kind, l.name, l.mac
                    ));
                }
            }
            Err(e) => problems.push(format!("daemon's namespace: {e}")),
        }
        // No address twice: not in the API, not in the kernel.
        let mut seen = std::collections::BTreeMap::new();
        for e in &api.endpoints {
            for a in [&e.ipv4, &e.ipv6] {
                if a.is_empty() {
                    continue;
                }
                if let Some(other) = seen.insert(a.clone(), e.id.clone()) {
                    problems.push(format!(
                        "API: address {a} is held by endpoints {other} and {}",
                        e.id
                    ));
                }
            }
        }
        let mut in_kernel = std::collections::BTreeMap::new();
        for (a, at) in &kernel_addrs {
            if let Some(other) = in_kernel.insert(a.clone(), at.clone()) {
                problems.push(format!("kernel: address {a} is on {other} and on {at}"));
            }
        }
        // Namespace and sandbox-file directories of no sandbox.
        for (dir, what) in [("netns", "namespace file"), ("sandboxes", "sandbox files")] {
            let Ok(entries) = std::fs::read_dir(self.exec_root().join(dir)) else {
                continue;
            };
            for entry in entries.flatten() {
                let file = entry.file_name().to_string_lossy().into_owned();
                if !api.sandboxes.contains_key(&file) {
                    problems.push(format!(
                        "exec root: {what} {} of no sandbox",
                        entry.path().display()
                    ));
                }
            }
        }
        if probe_ipam && problems.is_empty() {
            self.probe_ipam(&api, &mut problems);
        }
        problems
    }

    /// IPAM's allocated set is exactly the endpoints' addresses, the gateways and the
    /// auxiliary addresses, seen from outside: on every bridge network a probe
    /// sandbox asks each of those as a static address (must be refused, 409), and
    /// each free address of the subnet (the first 8 above the network address on a
    /// larger one) (must be given, then disconnected).
    fn probe_ipam(&self, api: &StateView, problems: &mut Vec<String>) {
        let nets = self.get("/networks");
        let probe = "consistency-probe";
        let (code, v) = self.api(
            "POST",
            "/sandboxes",
            Some(&format!(r#"{{"Name":"{probe}"}}"#)),
        );
        if code != 201 && code != 200 {
            problems.push(format!(
                "IPAM probe: cannot create the probe sandbox: {code} {v}"
            ));
            return;
        }
        for n in nets.as_array().cloned().unwrap_or_default() {
            if n["Driver"] != "bridge" || n["Scope"] != "local" {
                continue;
            }
            let nid = n["Id"].as_str().unwrap_or_default();
            let name = n["Name"].as_str().unwrap_or_default();
            let Some(cfg) = n["IPAM"]["Config"].as_array().and_then(|c| {
                c.iter()
                    .find(|c| !c["Subnet"].as_str().unwrap_or("").contains(':'))
            }) else {
                continue;
            };
            let Some((base, len)) = cfg["Subnet"]
                .as_str()
                .and_then(|s| s.split_once('/'))
                .and_then(|(a, l)| {
                    Some((
                        a.parse::<std::net::Ipv4Addr>().ok()?,
                        l.parse::<u32>().ok()?,
                    ))
                })
            else {
                continue;
            };
            let mut taken: std::collections::BTreeSet<std::net::Ipv4Addr> = api
                .endpoints
                .iter()
                .filter(|e| e.network == nid)
                .filter_map(|e| e.ipv4.split('/').next()?.parse().ok())
                .collect();
            taken.extend(
                cfg["Gateway"]
                    .as_str()
                    .and_then(|g| g.parse::<std::net::Ipv4Addr>().ok()),
            );
            for (_, a) in cfg["AuxiliaryAddresses"]
                .as_object()
                .cloned()
                .unwrap_or_default()
            {
                taken.extend(
                    a.as_str()
                        .and_then(|a| a.parse::<std::net::Ipv4Addr>().ok()),
                );
            }
            let size = 1u64 << (32 - len);
            let hosts = (size.saturating_sub(2)).min(8) as u32;
            let first = u32::from(base) + 1;
            let candidates: Vec<std::net::Ipv4Addr> = taken
                .iter()
                .copied()
                .chain((first..first + hosts).map(std::net::Ipv4Addr::from))
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            for ip in candidates {
                let body = format!(
                    r#"{{"Container":"{probe}","EndpointConfig":{{"IPAMConfig":{{"IPv4Address":"{ip}"}}}}}}"#
                );
                let (code, v) = self.api("POST", &format!("/networks/{nid}/connect"), Some(&body));
                let held = taken.contains(&ip);
                match (held, code) {
                    (true, 409) => {}
                    (false, 200) => {}
                    (true, 200) => problems.push(format!(
                        "IPAM: {ip} on network {name} is held (endpoint, gateway or aux) but IPAM handed it out again"
                    )),
                    (false, 409) => problems.push(format!(
                        "IPAM: {ip} on network {name} is allocated but no endpoint holds it (leaked): {v}"
                    )),
                    (_, c) => problems.push(format!(
                        "IPAM probe: static connect of {ip} to {name}: {c} {v}"
                    )),
                }
                if code == 200 {
                    let (code, v) = self.api(
                        "POST",
                        &format!("/networks/{nid}/disconnect"),
                        Some(&format!(r#"{{"Container":"{probe}"}}"#)),
                    );
                    if code != 200 {
                        problems.push(format!("IPAM probe: disconnect: {code} {v}"));
                        break;
                    }
                }
            }
        }
        let (code, v) = self.api("DELETE", &format!("/sandboxes/{probe}"), None);
        if !(200..300).contains(&code) {
            problems.push(format!(
                "IPAM probe: cannot remove the probe sandbox: {code} {v}"
            ));
        }
    }
}

/// Assert that the store, the daemon's memory and the kernel agree (call when no
/// operation is in flight):
/// * the store (a copy of the database file, read with the engine's reader) holds
///   exactly the networks, sandboxes and endpoints the API answers (local scope);
/// * every endpoint's device is in its sandbox's namespace with its MAC and
///   addresses, and every tap or veth in a sandbox is an endpoint's; the daemon's
///   namespace holds no tap or veth (hand-off sandboxes are not covered);
/// * no address is held twice, in the API or in the kernel;
/// * every namespace file and sandbox-file directory under the exec root is a
///   sandbox's;
/// * IPAM's allocated set on each bridge network is exactly the endpoints'
///   addresses, the gateway and the auxiliary addresses (probed with static
///   connects of a `consistency-probe` sandbox, removed afterwards).
///
/// Panics with every disagreement found and the daemon's log.
pub fn assert_consistent(env: &Env) {
    let problems = env.consistency_problems(true);
    assert!(
        problems.is_empty(),
        "store, memory and kernel disagree:\n- {}\n--- daemon log\n{}",
        problems.join("\n- "),
        env.daemon_log()
    );
}
