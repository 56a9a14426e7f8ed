//! Operations run to their end: clients that go away mid-request leave memory, the
//! store and the kernel agreeing; a `NetnsPath` that would block is refused at once
//! and stalls nothing.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};
use tapnet_tests::{in_namespace, Env};

/// Sandbox name → IPv4 address (with prefix), from the network's Containers.
fn endpoints(env: &Env, network: &str) -> BTreeMap<String, String> {
    let v = env.get(&format!("/networks/{network}"));
    v["Containers"]
        .as_object()
        .unwrap()
        .values()
        .map(|c| {
            (
                c["Name"].as_str().unwrap().to_string(),
                c["IPv4Address"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The links inside a sandbox's namespace, other than `lo`.
fn links(env: &Env, sandbox: &str) -> Vec<String> {
    let out = env.nsenter(&env.netns_path(sandbox), &["ip", "-j", "link", "show"]);
    assert!(out.status.success(), "ip link in {sandbox}");
    let v: Value = serde_json::from_slice(&out.stdout).expect("ip -j output");
    v.as_array()
        .unwrap()
        .iter()
        .map(|l| l["ifname"].as_str().unwrap().to_string())
        .filter(|n| n != "lo")
        .collect()
}

/// Send a connect request and close the socket after `after` without reading the
/// answer (a client that gives up).
fn abandoned_connect(env: &Env, network: &str, sandbox: &str, after: Duration) {
    let body = format!("{{\"Container\": \"{sandbox}\"}}");
    let req = format!(
        "POST /networks/{network}/connect HTTP/1.1\r\nHost: tapnet\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut s = UnixStream::connect(&env.socket).expect("connect to the API socket");
    s.write_all(req.as_bytes()).expect("send the request");
    std::thread::sleep(after);
    drop(s);
}

/// Poll `f` until it gives the same answer twice 300 ms apart.
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

#[test]
fn abandoned_connects_leave_memory_store_and_kernel_agreeing() {
    in_namespace(
        "abandoned_connects_leave_memory_store_and_kernel_agreeing",
        |env| {
            env.network("n", "10.80.0.0/24");
            let names: Vec<String> = (0..30).map(|i| format!("s{i}")).collect();
            for s in &names {
                env.sandbox(s);
            }
            // 30 connects whose clients close the socket after 0-6 ms.
            std::thread::scope(|scope| {
                for (i, s) in names.iter().enumerate() {
                    let env = &*env;
                    scope.spawn(move || {
                        abandoned_connect(env, "n", s, Duration::from_millis((i % 7) as u64))
                    });
                }
            });
            // A connect of another sandbox queues behind every connect already
            // waiting for the network's lock (the lock is fair); then let it settle.
            env.sandbox("probe");
            env.ok(&["network", "connect", "n", "probe"]);
            env.ok(&["network", "disconnect", "n", "probe"]);
            let memory = settled(|| endpoints(env, "n"));
            // Memory and kernel agree: a sandbox has eth0 if and only if an endpoint
            // record names it.
            for s in &names {
                let want: Vec<String> = if memory.contains_key(s) {
                    vec!["eth0".into()]
                } else {
                    Vec::new()
                };
                assert_eq!(links(env, s), want, "links of {s} (endpoints: {memory:?})");
            }
            // Connects whose client waited a few ms got as far as the daemon (else this test proves nothing).
            assert!(!memory.is_empty(), "no connect reached the daemon");
            // No address is held twice.
            let addrs: BTreeSet<&String> = memory.values().collect();
            assert_eq!(addrs.len(), memory.len(), "{memory:?}");
            // Memory and the store agree: a restart reads back exactly the same.
            env.stop_daemon();
            env.start_daemon();
            assert_eq!(endpoints(env, "n"), memory, "the store differs from memory");
            // No address leaked: connecting the rest hands out exactly .2-.31.
            for s in &names {
                if !memory.contains_key(s) {
                    env.ok(&["network", "connect", "n", s]);
                }
            }
            let all: BTreeSet<String> = endpoints(env, "n").into_values().collect();
            let want: BTreeSet<String> = (2..32).map(|i| format!("10.80.0.{i}/24")).collect();
            assert_eq!(all, want);
            for s in &names {
                assert_eq!(links(env, s), vec!["eth0".to_string()], "links of {s}");
            }
        },
    );
}

#[test]
fn fifo_netns_path_is_refused_without_stalling_the_api() {
    in_namespace(
        "fifo_netns_path_is_refused_without_stalling_the_api",
        |env| {
            let fifo = env.root.join("fifo");
            let st = std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .expect("run mkfifo");
            assert!(st.success());
            let body = format!("{{\"Name\": \"f\", \"NetnsPath\": \"{}\"}}", fifo.display());
            let (code, v) = env.api("POST", "/sandboxes", Some(&body));
            assert_eq!(code, 400, "{v}");
            let msg = v["message"].as_str().unwrap();
            assert!(msg.contains("is a FIFO"), "{msg}");
            // Nothing was made and the API answers.
            assert_eq!(env.get("/sandboxes").as_array().unwrap().len(), 0);
            env.sandbox("ok");
        },
    );
}
