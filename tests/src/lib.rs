//! Integration test harness for tapnet.
//!
//! Contract: every test body runs in a fresh **user + network + mount namespace**
//! (`unshare -Urnm --propagation private`), with a tmpfs over `/tmp` that holds the
//! daemon's exec-root and data-root, so nothing a test does reaches the host. The
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

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const INNER_ENV: &str = "TAPNET_IT_INNER";

/// Run `body` inside fresh user+net+mount namespaces with a started daemon.
pub fn in_namespace(name: &str, body: impl FnOnce(&mut Env)) {
    if std::env::var(INNER_ENV).as_deref() == Ok(name) {
        let mut env = Env::start();
        body(&mut env);
        env.stop();
        return;
    }
    let exe = std::env::current_exe().expect("current test executable");
    let out = Command::new("unshare")
        .args([
            "--user",
            "--map-root-user",
            "--net",
            "--mount",
            "--propagation",
            "private",
        ])
        .arg(&exe)
        .args(["--exact", name, "--nocapture", "--test-threads", "1"])
        .env(INNER_ENV, name)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run unshare(1) to get a test namespace: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        if stderr.contains("unshare failed") || stderr.contains("unshare:") {
            panic!(
                "test {name}: could not create user+net+mount namespaces (are user namespaces \
                 enabled? sysctl kernel.unprivileged_userns_clone / user.max_user_namespaces):\n{stderr}"
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
}

impl Env {
    fn start() -> Env {
        // A private tmpfs over /tmp: the daemon's dirs and every file the test makes.
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "tapnet-test", "/tmp"])
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "cannot mount a tmpfs over /tmp in the test namespace"
        );
        let root = PathBuf::from("/tmp/tapnet");
        std::fs::create_dir_all(&root).unwrap();
        // Loopback up in the test's own namespace (the "host" of this test).
        let _ = Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .status();
        let mut env = Env {
            socket: root.join("run/tapnet.sock"),
            log: root.join("tapnetd.log"),
            root,
            daemon: None,
        };
        env.start_daemon();
        env
    }

    /// Start `tapnetd` and wait until it answers `/_ping`.
    pub fn start_daemon(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(bin_path("tapnetd"))
            .arg("-H")
            .arg(format!("unix://{}", self.socket.display()))
            .arg("--exec-root")
            .arg(self.root.join("run"))
            .arg("--data-root")
            .arg(self.root.join("data"))
            .env("RUST_LOG", "debug")
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
