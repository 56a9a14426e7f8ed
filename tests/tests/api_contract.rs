//! The API contract (issue 10 item 4): schemathesis, driven by `docs/openapi.yaml`,
//! against a live `tapnetd` in the test's namespaces finds no 5xx and no rejected
//! request (4xx) that changed the daemon's state.
//!
//! `tests/contract/setup.sh` makes (once) a virtualenv with schemathesis from PyPI
//! under `~/.cache/tapnet/` (no network needed once it is there); it runs in the
//! outer half of each test, before the test's network namespace exists.
//! `tests/contract/run_contract.py` forwards a loopback TCP port in the namespace to
//! the daemon's unix socket and runs schemathesis with the checks
//! `not_a_server_error`, `rejected_request_changes_nothing`
//! (`tests/contract/hooks.py`: `GET /networks` and `GET /sandboxes` before and after
//! every 4xx must be equal) and `accepted_network_takes_an_endpoint` (a created
//! network takes a connect without a 5xx). Any finding fails the test with schemathesis's report
//! (each with a `curl` line to reproduce it). `TAPNET_CONTRACT_EXAMPLES` and
//! `TAPNET_CONTRACT_SEED` change the run's size and seed (defaults: 100, 10).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use tapnet_tests::{in_namespace, python3, Env};

/// The repository's root (this crate is `tests/`).
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repository root")
        .to_path_buf()
}

/// The virtualenv with schemathesis (made by `tests/contract/setup.sh` if missing).
fn schemathesis_venv() -> PathBuf {
    let out = Command::new("bash")
        .arg(repo().join("tests/contract/setup.sh"))
        .stdin(Stdio::null())
        .output()
        .expect("run tests/contract/setup.sh");
    assert!(
        out.status.success(),
        "cannot install schemathesis (tests/contract/setup.sh needs PyPI the first time, \
         and python3 with venv: apt-get install python3-venv):\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let path = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .to_string();
    let venv = PathBuf::from(path);
    assert!(
        venv.join("bin/schemathesis").exists(),
        "setup.sh printed {venv:?}, which has no bin/schemathesis"
    );
    venv
}

/// Run `run_contract.py` with `args`; kills it (by pid) after `limit`.
fn run_contract(env: &Env, venv: &Path, calls: &Path, args: &[&str], limit: Duration) -> Output {
    let report = env.root.join("schemathesis-report");
    let mut child = Command::new(python3())
        .arg(repo().join("tests/contract/run_contract.py"))
        .arg("--socket")
        .arg(&env.socket)
        .arg("--spec")
        .arg(repo().join("docs/openapi.yaml"))
        .arg("--venv")
        .arg(venv)
        .arg("--report")
        .arg(&report)
        .args(args)
        .env("TAPNET_CONTRACT_CALLS", calls)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run tests/contract/run_contract.py");
    let deadline = Instant::now() + limit;
    loop {
        if child
            .try_wait()
            .expect("wait for run_contract.py")
            .is_some()
        {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "run_contract.py did not finish within {limit:?}:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    child.wait_with_output().unwrap()
}

/// `METHOD path-template` → status → count, from hooks.py's call log.
type Calls = BTreeMap<String, BTreeMap<u16, usize>>;

/// Read hooks.py's call log.
fn calls_by_operation(calls: &Path) -> Calls {
    let text = String::from_utf8_lossy(&std::fs::read(calls).unwrap_or_default()).into_owned();
    let mut by_op = Calls::new();
    for line in text.lines() {
        let mut f = line.splitn(4, ' ');
        let (Some(m), Some(p), Some(s)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        if let Ok(status) = s.parse::<u16>() {
            *by_op
                .entry(format!("{m} {p}"))
                .or_default()
                .entry(status)
                .or_default() += 1;
        }
    }
    by_op
}

#[test]
fn schemathesis_finds_no_server_error_and_no_state_changing_rejection() {
    let venv = schemathesis_venv();
    in_namespace(
        "schemathesis_finds_no_server_error_and_no_state_changing_rejection",
        |env| {
            let examples =
                std::env::var("TAPNET_CONTRACT_EXAMPLES").unwrap_or_else(|_| "100".into());
            let seed = std::env::var("TAPNET_CONTRACT_SEED").unwrap_or_else(|_| "10".into());
            let calls = env.root.join("contract-calls.txt");
            let out = run_contract(
                env,
                &venv,
                &calls,
                &["--examples", &examples, "--seed", &seed],
                Duration::from_secs(900),
            );
            let stdout = String::from_utf8_lossy(&out.stdout);
            let log = env.daemon_log();
            let panics: Vec<&str> = log.lines().filter(|l| l.contains("panicked")).collect();
            assert!(
                out.status.success() && panics.is_empty(),
                "schemathesis found problems ({}):\n{stdout}\n{}\n--- daemon panics\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr),
                panics.join("\n")
            );
            print!("{stdout}");

            // The run reached every operation, and the mutations both ways: a run that
            // only met 404s would prove nothing.
            let by_op = calls_by_operation(&calls);
            let got = |m: &str, p: &str, class: std::ops::Range<u16>| {
                by_op
                    .get(&format!("{m} {p}"))
                    .is_some_and(|s| s.keys().any(|c| class.contains(c)))
            };
            let ok = |m: &str, p: &str| got(m, p, 200..300);
            let refused = |m: &str, p: &str| got(m, p, 400..500);
            // Only what the spec declares (not schemathesis's probes of other methods).
            let summary: Calls = by_op
                .iter()
                .filter(|(_, s)| !s.keys().all(|c| *c == 405))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            for (m, p) in [
                ("GET", "/_ping"),
                ("GET", "/version"),
                ("GET", "/info"),
                ("GET", "/networks"),
                ("POST", "/networks/create"),
                ("POST", "/networks/prune"),
                ("GET", "/networks/{id}"),
                ("DELETE", "/networks/{id}"),
                ("POST", "/networks/{id}/connect"),
                ("POST", "/networks/{id}/disconnect"),
                ("GET", "/networks/{id}/stats"),
                ("GET", "/networks/{id}/fdb"),
                ("GET", "/sandboxes"),
                ("POST", "/sandboxes"),
                ("GET", "/sandboxes/{id}"),
                ("DELETE", "/sandboxes/{id}"),
            ] {
                assert!(ok(m, p), "no 2xx for {m} {p} in the run: {summary:#?}");
            }
            for (m, p) in [
                ("POST", "/networks/create"),
                ("POST", "/networks/prune"),
                ("DELETE", "/networks/{id}"),
                ("POST", "/networks/{id}/connect"),
                ("POST", "/networks/{id}/disconnect"),
                ("POST", "/sandboxes"),
                ("DELETE", "/sandboxes/{id}"),
            ] {
                assert!(refused(m, p), "no 4xx for {m} {p} in the run: {summary:#?}");
            }
            let total: usize = by_op.values().flat_map(BTreeMap::values).sum();
            println!("api_contract: {total} requests checked: {summary:#?}");
        },
    );
}

/// The state check can fail: with hooks.py's sabotage (every 4xx is followed by a
/// sandbox create) schemathesis must report `rejected_request_changes_nothing`.
#[test]
fn state_check_catches_a_rejection_that_changes_state() {
    let venv = schemathesis_venv();
    in_namespace(
        "state_check_catches_a_rejection_that_changes_state",
        |env| {
            let calls = env.root.join("contract-calls.txt");
            let out = run_contract(
                env,
                &venv,
                &calls,
                &["--self-test"],
                Duration::from_secs(300),
            );
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "the sabotaged run was not caught:\n{stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                stdout.contains("rejected_request_changes_nothing")
                    && stdout.contains("sabotage-1"),
                "{stdout}"
            );
            // The sabotage really changed the state the check compares.
            let sbs = env.get("/sandboxes");
            assert!(
                sbs.as_array()
                    .unwrap()
                    .iter()
                    .any(|s| s["Name"].as_str().unwrap_or("").starts_with("sabotage-")),
                "{sbs}"
            );
        },
    );
}

/// Every path `api::router()` routes is in `docs/openapi.yaml`, and every path there is
/// routed: a route added without its contract fails here (document it in openapi.yaml
/// and docs/api.md). A source scan: it needs no daemon.
#[test]
fn openapi_documents_every_routed_path() {
    let src = std::fs::read_to_string(repo().join("engine/src/api.rs")).unwrap();
    let mut routed: Vec<String> = Vec::new();
    for (at, _) in src.match_indices(".route(") {
        let rest = &src[at + ".route(".len()..];
        let start = rest.find('"').expect("a quoted path after .route(");
        let end = rest[start + 1..]
            .find('"')
            .expect("the path's closing quote");
        routed.push(rest[start + 1..start + 1 + end].to_string());
    }
    assert!(
        routed.len() >= 10,
        "found only {routed:?} in engine/src/api.rs"
    );
    let spec = std::fs::read_to_string(repo().join("docs/openapi.yaml")).unwrap();
    let mut in_paths = false;
    let mut documented: Vec<String> = Vec::new();
    for line in spec.lines() {
        if line == "paths:" {
            in_paths = true;
            continue;
        }
        if in_paths && !line.starts_with(' ') && !line.is_empty() {
            break;
        }
        if let Some(p) = line.strip_prefix("  /").and_then(|p| p.strip_suffix(':')) {
            documented.push(format!("/{p}"));
        }
    }
    routed.sort();
    documented.sort();
    assert_eq!(
        routed, documented,
        "engine/src/api.rs router() and docs/openapi.yaml `paths` differ: document each \
         route (request, answers, errors) in docs/openapi.yaml and docs/api.md"
    );
}
