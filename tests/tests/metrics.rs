//! `GET /metrics` (issue 10 item 6): after real traffic, the Prometheus exposition
//! carries counters that match it, and the Prometheus client library's strict
//! OpenMetrics parser reads it.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use tapnet_tests::{in_namespace, n, python3, Env};

/// The raw `/metrics` answer: (content type, body).
fn scrape(env: &Env) -> (String, String) {
    let out = Command::new("curl")
        .args(["-s", "-m", "30", "-D", "/dev/stderr", "--unix-socket"])
        .arg(&env.socket)
        .arg("http://tapnet/metrics")
        .output()
        .expect("run curl");
    let headers = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(headers.starts_with("http/1.1 200"), "{headers}");
    let ctype = headers
        .lines()
        .find_map(|l| l.strip_prefix("content-type:"))
        .unwrap_or_default()
        .trim()
        .to_string();
    (ctype, String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Parse the exposition with `prometheus_client`'s OpenMetrics parser (it refuses
/// anything malformed); returns every sample as `name{k="v",...}` (labels sorted) →
/// value.
fn parse(text: &str) -> BTreeMap<String, f64> {
    const PY: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = {}
for fam in text_string_to_metric_families(sys.stdin.read()):
    for s in fam.samples:
        labels = ",".join('%s="%s"' % (k, v) for k, v in sorted(s.labels.items()))
        out["%s{%s}" % (s.name, labels)] = s.value
print(json.dumps(out))
"#;
    let mut child = Command::new(python3())
        .args(["-c", PY])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python3");
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the OpenMetrics parser refused /metrics: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The sample `name` whose labels include every one of `labels`.
fn sample(m: &BTreeMap<String, f64>, name: &str, labels: &[(&str, &str)]) -> f64 {
    let hits: Vec<(&String, &f64)> = m
        .iter()
        .filter(|(k, _)| {
            k.starts_with(&format!("{name}{{"))
                && labels
                    .iter()
                    .all(|(l, v)| k.contains(&format!("{l}=\"{v}\"")))
        })
        .collect();
    assert_eq!(
        hits.len(),
        1,
        "{name} {labels:?}: want one sample, got {hits:?}"
    );
    *hits[0].1
}

#[test]
fn metrics_count_real_traffic_and_parse() {
    in_namespace("metrics_count_real_traffic_and_parse", |env| {
        env.network("mon", "10.95.0.0/24");
        env.sandbox("a");
        env.sandbox("b");
        env.connect("mon", "a");
        let ip_b = env.connect("mon", "b");
        let gw = env.gateway_of("mon");
        const N: u32 = 7;
        assert!(env.ping("a", &ip_b, N));
        // Two names the network's resolver answers itself.
        for _ in 0..2 {
            let (rcode, answers) = env.dns_query("a", &gw, "b", "A", 5);
            assert_eq!((rcode, answers), (0, vec![ip_b.clone()]));
        }
        // A spoofed frame from a: dropped by the switch and counted by reason.
        let spoof = r#"
import socket
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("eth0", 0))
mac = s.getsockname()[4]
ip = bytes([0x45, 0, 0, 20, 0, 0, 0, 0, 64, 17, 0, 0, 10, 95, 0, 200, 10, 95, 0, 1])
s.send(b"\xff" * 6 + mac + b"\x08\x00" + ip + b"\x00" * 26)
"#;
        assert!(env.python("a", spoof).status.success());
        // Two stats requests: the API metrics count them by route.
        env.get("/networks/mon/stats");
        env.get("/networks/mon/stats");
        let a_before = n(&env.port_stats("mon", "a"), "RxPackets");
        let networks = env.get("/networks").as_array().unwrap().len();

        let (ctype, text) = scrape(env);
        let a_after = n(&env.port_stats("mon", "a"), "RxPackets");
        assert!(ctype.starts_with("application/openmetrics-text"), "{ctype}");
        let m = parse(&text);
        fn port(sb: &str) -> [(&'static str, &str); 2] {
            [("network", "mon"), ("sandbox", sb)]
        }
        let a_rx = sample(&m, "tapnet_port_rx_packets_total", &port("a"));
        let b_tx = sample(&m, "tapnet_port_tx_packets_total", &port("b"));
        let b_rx = sample(&m, "tapnet_port_rx_packets_total", &port("b"));
        assert!(
            a_rx >= f64::from(N) + 3.0,
            "a sent {N} echo requests, 2 queries, 1 spoof: {a_rx}"
        );
        assert!(b_tx >= f64::from(N), "b got {N} echo requests: {b_tx}");
        assert!(b_rx >= f64::from(N), "b sent {N} echo replies: {b_rx}");
        // The same counter as the stats API's, read just before and just after.
        assert!(
            (a_before as f64..=a_after as f64).contains(&a_rx),
            "{a_before} <= {a_rx} <= {a_after}"
        );
        let spoofed = sample(
            &m,
            "tapnet_port_drops_total",
            &[
                ("network", "mon"),
                ("sandbox", "a"),
                ("reason", "spoofed_ip"),
            ],
        );
        assert_eq!(spoofed, 1.0);
        assert_eq!(
            sample(
                &m,
                "tapnet_port_drops_total",
                &[
                    ("network", "mon"),
                    ("sandbox", "b"),
                    ("reason", "spoofed_ip")
                ]
            ),
            0.0
        );
        let bytes = sample(&m, "tapnet_port_rx_bytes_total", &port("a"));
        assert!(bytes >= a_rx * 42.0, "{bytes} bytes for {a_rx} frames");
        // The gateway's port and its resolver.
        assert!(
            sample(
                &m,
                "tapnet_port_rx_packets_total",
                &[("network", "mon"), ("interface", "gateway")]
            ) >= 2.0
        );
        assert!(sample(&m, "tapnet_dns_answers_total", &[("network", "mon")]) >= 2.0);
        assert!(sample(&m, "tapnet_dns_queries_total", &[("network", "mon")]) >= 2.0);
        assert_eq!(
            sample(&m, "tapnet_dns_forwards_total", &[("network", "mon")]),
            0.0
        );
        assert!(sample(&m, "tapnet_fdb_entries", &[("network", "mon")]) >= 3.0);
        assert_eq!(
            sample(&m, "tapnet_capture_subscribers", &[("network", "mon")]),
            0.0
        );
        for proto in ["tcp", "udp", "icmp"] {
            sample(
                &m,
                "tapnet_gateway_flows_active",
                &[("network", "mon"), ("key", proto)],
            );
        }
        sample(
            &m,
            "tapnet_gateway_flow_limit_hits_total",
            &[("network", "mon")],
        );
        assert_eq!(sample(&m, "tapnet_networks", &[]), networks as f64);
        assert_eq!(sample(&m, "tapnet_sandboxes", &[]), 2.0);
        // The process-wide descriptor budget (docs/security.md) and the API connection cap.
        let limit = sample(&m, "tapnet_fd_budget_limit", &[]);
        assert!(limit > 0.0, "a budget sized from RLIMIT_NOFILE: {limit}");
        assert!(sample(&m, "tapnet_fd_budget_used", &[]) <= limit);
        assert_eq!(sample(&m, "tapnet_fd_budget_refused_total", &[]), 0.0);
        assert_eq!(sample(&m, "tapnet_api_connections_refused_total", &[]), 0.0);
        assert_eq!(sample(&m, "tapnet_api_connections_shed_total", &[]), 0.0);
        // The API: 3 answered stats requests (at least: the helpers made more), timed.
        let route = [
            ("method", "GET"),
            ("route", "/networks/{id}/stats"),
            ("status", "200"),
        ];
        let reqs = sample(&m, "tapnet_api_requests_total", &route);
        assert!(reqs >= 3.0, "{reqs}");
        let timed = sample(
            &m,
            "tapnet_api_request_duration_seconds_count",
            &[("method", "GET"), ("route", "/networks/{id}/stats")],
        );
        assert_eq!(timed, reqs);
        // A 404 is counted under its status, its path not being a label value.
        let (code, _) = env.api("GET", "/no/such/thing", None);
        assert_eq!(code, 404);
        let m = parse(&scrape(env).1);
        assert!(
            sample(
                &m,
                "tapnet_api_requests_total",
                &[("route", "unmatched"), ("status", "404")]
            ) >= 1.0
        );
        assert!(!m.keys().any(|k| k.contains("/no/such/thing")));
    });
}
