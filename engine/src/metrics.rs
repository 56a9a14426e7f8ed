//! `GET /metrics`: the daemon's counters in the Prometheus/OpenMetrics text exposition
//! format (written with the `prometheus-client` crate).
//!
//! Contract: [`render`] reads every network's counters at scrape time (the driver's
//! report, the same numbers as `GET /networks/{id}/stats`) and answers
//! `application/openmetrics-text; version=1.0.0` ending in `# EOF`. Families (counters
//! carry the `_total` suffix):
//!
//! * per switch port (`network`, `port` = switch port id, `sandbox`, `interface`; the
//!   gateway's port has `interface="gateway"` and no sandbox):
//!   `tapnet_port_rx_packets`, `tapnet_port_rx_bytes`, `tapnet_port_tx_packets`,
//!   `tapnet_port_tx_bytes`, `tapnet_port_drops` (`reason`: the switch's drop reasons),
//!   `tapnet_port_fdb_entries` (gauge);
//! * per network (`network`): `tapnet_fdb_entries` (gauge), `tapnet_fdb_limit_hits`
//!   (`scope`: `network`, `port`), `tapnet_capture_subscribers` (gauge),
//!   `tapnet_datapath_frames` (frames read by each datapath worker of the network,
//!   `key` = shard index, owner `0`; several with `--tap-queues`),
//!   `tapnet_datapath_relayed_frames` (frames a non-owner worker handed to the owner);
//! * per network with a userspace gateway: `tapnet_gateway_frames` (`direction`: `in`,
//!   `out`), `tapnet_gateway_drops` (`reason`), `tapnet_gateway_flows_active` (gauge,
//!   `proto`), `tapnet_gateway_flows` (flows opened, `proto`),
//!   `tapnet_gateway_flow_limit_hits` (flows refused by a limit), `tapnet_dns_queries`
//!   (queries answered or forwarded), `tapnet_dns_answers` (answered from the network's
//!   names), `tapnet_dns_forwards` (forwarded upstream), `tapnet_dns_servfail`;
//! * per datapath worker thread (`worker` = its name, `tapnet-dp0`, …), from the
//!   kernel's scheduler statistics of the thread (`/proc/self/task/*/schedstat`, `stat`):
//!   `tapnet_datapath_worker_cpu_seconds` (time on a CPU),
//!   `tapnet_datapath_worker_wait_seconds` (time ready to run but waiting for a CPU:
//!   how much the containers and everything else kept the worker waiting),
//!   `tapnet_datapath_worker_schedules` (times put on a CPU) and
//!   `tapnet_datapath_worker_nice` (gauge; `--worker-nice`, live under `auto`);
//!   process-wide `tapnet_datapath_worker_nice_steps` (`step`: `yield`, `back_waits`,
//!   `back_idle`; the automatic nice's changes, [`tapnet_sandbox::sched::AutoNice`]);
//! * tap ports, process-wide: `tapnet_tap_udp_superframes` (UDP super-frames written
//!   to taps, each a run of datagrams of one flow merged, `--tap-udp-merge`) and
//!   `tapnet_tap_udp_merged_datagrams` (the datagrams in them);
//! * daemon: `tapnet_networks`, `tapnet_sandboxes` (gauges),
//!   `tapnet_api_requests` (`method`, `route` = the matched route template, or
//!   `unmatched`; `status`) and the histogram `tapnet_api_request_duration_seconds`
//!   (`method`, `route`; time to the answer's head, so a stream counts until it starts),
//!   recorded by [`track`], the API router's middleware. Methods other than the standard
//!   ones are counted as `other`, so no client can make the label set grow without bound.
//!
//! A network whose counters cannot be read is left out of that scrape (logged).

use crate::controller::Controller;
use axum::extract::{MatchedPath, Request};
use axum::http::{header, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::OnceLock;
use std::time::Instant;

/// Content type of the answer.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LatencyLabels {
    method: String,
    route: String,
}

/// The API's own counters, kept for the daemon's life.
struct ApiMetrics {
    requests: Family<RequestLabels, Counter>,
    latency: Family<LatencyLabels, Histogram>,
}

fn latency_histogram() -> Histogram {
    // 100 µs to ~1.6 s, doubling.
    Histogram::new(exponential_buckets(0.0001, 2.0, 15))
}

fn api_metrics() -> &'static ApiMetrics {
    static API: OnceLock<ApiMetrics> = OnceLock::new();
    API.get_or_init(|| ApiMetrics {
        requests: Family::default(),
        latency: Family::new_with_constructor(latency_histogram),
    })
}

/// The method as a label value: a standard method's name, else `other`.
fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}

/// Middleware of the API router: count the request and time its answer by method,
/// matched route and status.
pub async fn track(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let method = method_label(req.method()).to_string();
    let start = Instant::now();
    let resp = next.run(req).await;
    let m = api_metrics();
    m.latency
        .get_or_create(&LatencyLabels {
            method: method.clone(),
            route: route.clone(),
        })
        .observe(start.elapsed().as_secs_f64());
    m.requests
        .get_or_create(&RequestLabels {
            method,
            route,
            status: resp.status().as_u16().to_string(),
        })
        .inc();
    resp
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PortLabels {
    network: String,
    port: String,
    sandbox: String,
    interface: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PortReasonLabels {
    network: String,
    port: String,
    sandbox: String,
    interface: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NetLabels {
    network: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NetKeyLabels {
    network: String,
    key: String,
}

/// Families filled at scrape time.
/// Labels of the per-worker families: the worker thread's name (`tapnet-dp0`, …).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkerLabels {
    worker: String,
}

/// Labels of `tapnet_datapath_worker_nice_steps`: `yield` (stepped back), `back_waits`
/// (returned: long waits for a core), `back_idle` (returned: idle).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StepLabels {
    step: &'static str,
}

/// What the kernel keeps of one thread's scheduling (`/proc/PID/task/TID/schedstat`:
/// time on a CPU and time runnable waiting for one, in ns, and times scheduled) and its
/// nice value (`stat`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ThreadSched {
    run_ns: u64,
    wait_ns: u64,
    schedules: u64,
    nice: i64,
}

/// `schedstat`: three numbers ([`tapnet_sandbox::sched::SchedStat::parse`], which the
/// workers' automatic nice reads too).
fn parse_schedstat(text: &str) -> Option<(u64, u64, u64)> {
    let s = tapnet_sandbox::sched::SchedStat::parse(text)?;
    Some((s.ran_ns, s.waited_ns, s.schedules))
}

/// The nice value in `stat`: the 19th field, counted after the name in parentheses (which
/// may hold spaces and parentheses itself).
fn parse_nice(stat: &str) -> Option<i64> {
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    rest.split_whitespace().nth(16)?.parse().ok()
}

/// Every datapath worker thread of this process (named `tapnet-dp*`), by name.
fn worker_threads() -> Vec<(String, ThreadSched)> {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    let mut out: Vec<(String, ThreadSched)> = dir
        .filter_map(|t| {
            let path = t.ok()?.path();
            let name = std::fs::read_to_string(path.join("comm")).ok()?;
            let name = name.trim();
            if !name.starts_with("tapnet-dp") {
                return None;
            }
            let (run_ns, wait_ns, schedules) =
                parse_schedstat(&std::fs::read_to_string(path.join("schedstat")).ok()?)?;
            let nice = parse_nice(&std::fs::read_to_string(path.join("stat")).ok()?)?;
            Some((
                name.to_string(),
                ThreadSched {
                    run_ns,
                    wait_ns,
                    schedules,
                    nice,
                },
            ))
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[derive(Default)]
struct Scrape {
    rx_packets: Family<PortLabels, Counter>,
    rx_bytes: Family<PortLabels, Counter>,
    tx_packets: Family<PortLabels, Counter>,
    tx_bytes: Family<PortLabels, Counter>,
    port_drops: Family<PortReasonLabels, Counter>,
    port_fdb: Family<PortLabels, Gauge>,
    fdb_entries: Family<NetLabels, Gauge>,
    fdb_limit_hits: Family<NetKeyLabels, Counter>,
    captures: Family<NetLabels, Gauge>,
    shard_frames: Family<NetKeyLabels, Counter>,
    relayed: Family<NetLabels, Counter>,
    gw_frames: Family<NetKeyLabels, Counter>,
    gw_drops: Family<NetKeyLabels, Counter>,
    flows_active: Family<NetKeyLabels, Gauge>,
    flows_total: Family<NetKeyLabels, Counter>,
    flow_limit_hits: Family<NetLabels, Counter>,
    dns_queries: Family<NetLabels, Counter>,
    dns_answers: Family<NetLabels, Counter>,
    dns_forwards: Family<NetLabels, Counter>,
    dns_servfail: Family<NetLabels, Counter>,
    networks: Gauge,
    sandboxes: Gauge,
    fd_budget_limit: Gauge,
    fd_budget_used: Gauge,
    fd_budget_refused: Counter,
    api_conns_shed: Counter,
    api_conns_refused: Counter,
    worker_cpu: Family<WorkerLabels, Counter<f64, std::sync::atomic::AtomicU64>>,
    worker_wait: Family<WorkerLabels, Counter<f64, std::sync::atomic::AtomicU64>>,
    worker_schedules: Family<WorkerLabels, Counter>,
    worker_nice: Family<WorkerLabels, Gauge>,
    nice_steps: Family<StepLabels, Counter>,
    udp_superframes: Counter,
    udp_merged: Counter,
}

fn gauge_of(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Scrape {
    fn worker(&self, name: &str, t: &ThreadSched) {
        let l = WorkerLabels {
            worker: name.to_string(),
        };
        self.worker_cpu
            .get_or_create(&l)
            .inc_by(t.run_ns as f64 / 1e9);
        self.worker_wait
            .get_or_create(&l)
            .inc_by(t.wait_ns as f64 / 1e9);
        self.worker_schedules.get_or_create(&l).inc_by(t.schedules);
        self.worker_nice.get_or_create(&l).set(t.nice);
    }

    fn port(&self, net: &str, p: &tapnet_types::api::PortStatsResource) {
        let l = PortLabels {
            network: net.to_string(),
            port: p.port.to_string(),
            sandbox: p.sandbox.clone(),
            interface: p.interface.clone(),
        };
        self.rx_packets.get_or_create(&l).inc_by(p.rx_packets);
        self.rx_bytes.get_or_create(&l).inc_by(p.rx_bytes);
        self.tx_packets.get_or_create(&l).inc_by(p.tx_packets);
        self.tx_bytes.get_or_create(&l).inc_by(p.tx_bytes);
        self.port_fdb
            .get_or_create(&l)
            .set(gauge_of(p.fdb_entries as u64));
        for (reason, n) in &p.drops {
            self.port_drops
                .get_or_create(&PortReasonLabels {
                    network: l.network.clone(),
                    port: l.port.clone(),
                    sandbox: l.sandbox.clone(),
                    interface: l.interface.clone(),
                    reason: reason.clone(),
                })
                .inc_by(*n);
        }
    }

    /// A network's datapath workers: frames each read, frames relayed to the owner.
    fn shards(&self, name: &str, frames: &[u64], relayed: u64) {
        for (k, n) in frames.iter().enumerate() {
            self.shard_frames
                .get_or_create(&NetKeyLabels {
                    network: name.to_string(),
                    key: k.to_string(),
                })
                .inc_by(*n);
        }
        self.relayed
            .get_or_create(&NetLabels {
                network: name.to_string(),
            })
            .inc_by(relayed);
    }

    fn network(&self, name: &str, s: &tapnet_types::api::StatsResource, captures: usize) {
        let net = NetLabels {
            network: name.to_string(),
        };
        let key = |k: &str| NetKeyLabels {
            network: name.to_string(),
            key: k.to_string(),
        };
        self.fdb_entries
            .get_or_create(&net)
            .set(gauge_of(s.fdb_entries as u64));
        self.fdb_limit_hits
            .get_or_create(&key("network"))
            .inc_by(s.fdb_limit_hits);
        self.fdb_limit_hits
            .get_or_create(&key("port"))
            .inc_by(s.fdb_port_limit_hits);
        self.captures
            .get_or_create(&net)
            .set(gauge_of(captures as u64));
        for p in &s.ports {
            self.port(name, p);
        }
        let Some(g) = &s.gateway else {
            return;
        };
        if let Some(p) = &g.switch_port {
            self.port(name, p);
        }
        self.gw_frames.get_or_create(&key("in")).inc_by(g.frames_in);
        self.gw_frames
            .get_or_create(&key("out"))
            .inc_by(g.frames_out);
        for (reason, n) in &g.drops {
            self.gw_drops.get_or_create(&key(reason)).inc_by(*n);
        }
        for (proto, f) in &g.flows {
            self.flows_active
                .get_or_create(&key(proto))
                .set(gauge_of(f.active));
            self.flows_total.get_or_create(&key(proto)).inc_by(f.total);
        }
        self.flow_limit_hits
            .get_or_create(&net)
            .inc_by(g.flow_limit_hits);
        self.dns_queries
            .get_or_create(&net)
            .inc_by(g.dns_local.saturating_add(g.dns_forwarded));
        self.dns_answers.get_or_create(&net).inc_by(g.dns_local);
        self.dns_forwards
            .get_or_create(&net)
            .inc_by(g.dns_forwarded);
        self.dns_servfail.get_or_create(&net).inc_by(g.dns_servfail);
    }

    /// A registry holding these families and the API's.
    fn registry(self) -> Registry {
        let mut r = Registry::default();
        let port = "Per switch port";
        r.register(
            "tapnet_port_rx_packets",
            format!("{port}: frames read from the port"),
            self.rx_packets,
        );
        r.register(
            "tapnet_port_rx_bytes",
            format!("{port}: Ethernet bytes read from the port"),
            self.rx_bytes,
        );
        r.register(
            "tapnet_port_tx_packets",
            format!("{port}: frames written to the port"),
            self.tx_packets,
        );
        r.register(
            "tapnet_port_tx_bytes",
            format!("{port}: Ethernet bytes written to the port"),
            self.tx_bytes,
        );
        r.register(
            "tapnet_port_drops",
            format!("{port}: frames dropped, by reason"),
            self.port_drops,
        );
        r.register(
            "tapnet_port_fdb_entries",
            format!("{port}: MAC addresses learned on the port"),
            self.port_fdb,
        );
        r.register(
            "tapnet_fdb_entries",
            "MAC addresses in the network's forwarding table",
            self.fdb_entries,
        );
        r.register(
            "tapnet_fdb_limit_hits",
            "MACs not learned because the network's (key=network) or their port's (key=port) table was full",
            self.fdb_limit_hits,
        );
        r.register(
            "tapnet_capture_subscribers",
            "Packet captures running on the network's switch",
            self.captures,
        );
        r.register(
            "tapnet_datapath_frames",
            "Frames each datapath worker (key = shard, 0 = owner) of the network read",
            self.shard_frames,
        );
        r.register(
            "tapnet_datapath_relayed_frames",
            "Frames a non-owner worker switched to a port it holds no queue of, handed to the owner",
            self.relayed,
        );
        r.register(
            "tapnet_gateway_frames",
            "Frames the gateway read from (key=in) and wrote to (key=out) the switch",
            self.gw_frames,
        );
        r.register(
            "tapnet_gateway_drops",
            "Frames the gateway dropped, by reason (key)",
            self.gw_drops,
        );
        r.register(
            "tapnet_gateway_flows_active",
            "Flows the gateway holds open now, by protocol (key)",
            self.flows_active,
        );
        r.register(
            "tapnet_gateway_flows",
            "Flows the gateway opened, by protocol (key)",
            self.flows_total,
        );
        r.register(
            "tapnet_gateway_flow_limit_hits",
            "New flows the gateway refused because a flow limit was reached",
            self.flow_limit_hits,
        );
        r.register(
            "tapnet_dns_queries",
            "DNS queries the network's resolver answered or forwarded",
            self.dns_queries,
        );
        r.register(
            "tapnet_dns_answers",
            "DNS queries answered from the network's own names",
            self.dns_answers,
        );
        r.register(
            "tapnet_dns_forwards",
            "DNS queries forwarded to an upstream server",
            self.dns_forwards,
        );
        r.register(
            "tapnet_dns_servfail",
            "DNS queries answered SERVFAIL (no upstream answered)",
            self.dns_servfail,
        );
        r.register(
            "tapnet_tap_udp_superframes",
            "UDP super-frames written to taps: runs of datagrams of one flow merged (--tap-udp-merge)",
            self.udp_superframes,
        );
        r.register(
            "tapnet_tap_udp_merged_datagrams",
            "UDP datagrams written to taps inside super-frames",
            self.udp_merged,
        );
        r.register("tapnet_networks", "Networks", self.networks);
        r.register("tapnet_sandboxes", "Sandboxes", self.sandboxes);
        r.register(
            "tapnet_fd_budget_limit",
            "Descriptors the process-wide flow budget may hand out (docs/security.md)",
            self.fd_budget_limit,
        );
        r.register(
            "tapnet_fd_budget_used",
            "Descriptors of the flow budget held now",
            self.fd_budget_used,
        );
        r.register(
            "tapnet_fd_budget_refused",
            "Flows, DNS forwards and published-port connections refused by the budget",
            self.fd_budget_refused,
        );
        r.register(
            "tapnet_api_connections_shed",
            "Idle API connections closed to make room for a new one",
            self.api_conns_shed,
        );
        r.register(
            "tapnet_api_connections_refused",
            "New API connections closed at once because every open one was busy",
            self.api_conns_refused,
        );
        r.register(
            "tapnet_datapath_worker_cpu_seconds",
            "Time each datapath worker thread ran on a CPU",
            self.worker_cpu,
        );
        r.register(
            "tapnet_datapath_worker_wait_seconds",
            "Time each datapath worker thread was ready to run but waited for a CPU",
            self.worker_wait,
        );
        r.register(
            "tapnet_datapath_worker_schedules",
            "Times each datapath worker thread was put on a CPU",
            self.worker_schedules,
        );
        r.register(
            "tapnet_datapath_worker_nice",
            "Nice value of each datapath worker thread (--worker-nice)",
            self.worker_nice,
        );
        r.register(
            "tapnet_datapath_worker_nice_steps",
            "Steps of the workers' automatic nice (--worker-nice auto), all workers: yield, back_waits, back_idle",
            self.nice_steps,
        );
        let api = api_metrics();
        r.register(
            "tapnet_api_requests",
            "API requests answered, by method, route and status",
            api.requests.clone(),
        );
        r.register(
            "tapnet_api_request_duration_seconds",
            "Time to answer an API request (to the answer's head), by method and route",
            api.latency.clone(),
        );
        r
    }
}

/// The `GET /metrics` answer (see the module doc).
pub async fn render(ctl: &Controller) -> Response {
    let store = ctl.snapshot().await;
    let scrape = Scrape::default();
    scrape.networks.set(gauge_of(store.networks.len() as u64));
    scrape.sandboxes.set(gauge_of(store.sandboxes.len() as u64));
    let budget = tapnet_nat::budget::global();
    scrape.fd_budget_limit.set(gauge_of(budget.limit() as u64));
    scrape.fd_budget_used.set(gauge_of(budget.used() as u64));
    scrape.fd_budget_refused.inc_by(budget.refused());
    let conns = crate::api::connection_counts();
    scrape.api_conns_shed.inc_by(conns.shed);
    scrape.api_conns_refused.inc_by(conns.refused);
    let merged = tapnet_sandbox::udp_merge::counts();
    scrape.udp_superframes.inc_by(merged.superframes);
    scrape.udp_merged.inc_by(merged.datagrams);
    for (name, t) in worker_threads() {
        scrape.worker(&name, &t);
    }
    let (yields, back_waits, back_idle) = tapnet_sandbox::sched::auto_nice_counts();
    for (step, n) in [
        ("yield", yields),
        ("back_waits", back_waits),
        ("back_idle", back_idle),
    ] {
        scrape
            .nice_steps
            .get_or_create(&StepLabels { step })
            .inc_by(n);
    }
    let mut nets: Vec<_> = store.networks.values().collect();
    nets.sort_by(|a, b| a.name.cmp(&b.name));
    for n in nets.into_iter().filter(|n| !n.config_only) {
        match ctl.network_report(&n.id).await {
            Ok((net, report)) => {
                let s = crate::api::stats_resource(&net, &report, &store);
                scrape.network(&net.name, &s, report.capture_subscribers);
                scrape.shards(&net.name, &report.shard_frames, report.relayed);
            }
            Err(e) => tracing::warn!(network = %n.name, error = %e, "metrics: counters"),
        }
    }
    let registry = scrape.registry();
    let mut body = String::new();
    if let Err(e) = encode(&mut body, &registry) {
        tracing::error!(error = %e, "metrics: encoding");
    }
    let mut resp = body.into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    resp
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn scheduler_files_are_parsed_and_bad_ones_refused() {
        assert_eq!(parse_schedstat("12345 678 9\n"), Some((12345, 678, 9)));
        assert_eq!(parse_schedstat("12345 678"), None);
        assert_eq!(parse_schedstat("a b c"), None);
        // The name may hold spaces and parentheses; the nice value is field 19.
        let stat = "42 (tapnet (dp) 0) S 1 42 42 0 -1 4194560 0 0 0 0 5 6 0 0 20 7 1 0";
        assert_eq!(parse_nice(stat), Some(7));
        assert_eq!(parse_nice("42 (x) S 1"), None);
        assert_eq!(parse_nice("no parenthesis"), None);
    }

    #[test]
    fn worker_threads_are_found_by_name_with_their_scheduling() {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::Builder::new()
            .name("tapnet-dp-test".into())
            .spawn(move || {
                // Burn a little CPU so the thread has run time, then wait to be told.
                let mut x = 0u64;
                for i in 0..2_000_000u64 {
                    x = x.wrapping_mul(31).wrapping_add(i);
                }
                std::hint::black_box(x);
                let _ = rx.recv();
            })
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let found = worker_threads();
        let (_, sched) = found
            .iter()
            .find(|(n, _)| n == "tapnet-dp-test")
            .expect("the worker thread is listed");
        assert!(sched.run_ns > 0 && sched.schedules > 0, "{sched:?}");
        let s = Scrape::default();
        s.worker("tapnet-dp-test", sched);
        let mut out = String::new();
        encode(&mut out, &s.registry()).unwrap();
        assert!(
            out.contains("tapnet_datapath_worker_schedules_total{worker=\"tapnet-dp-test\"}"),
            "{out}"
        );
        assert!(
            out.contains("tapnet_datapath_worker_nice{worker=\"tapnet-dp-test\"}"),
            "{out}"
        );
        tx.send(()).unwrap();
        t.join().unwrap();
    }
    use tapnet_types::api::{PortStatsResource, StatsResource};

    #[test]
    fn exposition_names_ports_and_drops() {
        let s = Scrape::default();
        let stats = StatsResource {
            network: "id".into(),
            fdb_entries: 2,
            ports: vec![PortStatsResource {
                sandbox: "a".into(),
                interface: "eth0".into(),
                port: 3,
                rx_packets: 7,
                rx_bytes: 700,
                drops: [("spoofed_ip".to_string(), 4)].into_iter().collect(),
                ..PortStatsResource::default()
            }],
            ..StatsResource::default()
        };
        s.network("n1", &stats, 1);
        let mut out = String::new();
        encode(&mut out, &s.registry()).unwrap();
        for line in [
            r#"tapnet_port_rx_packets_total{network="n1",port="3",sandbox="a",interface="eth0"} 7"#,
            r#"tapnet_port_rx_bytes_total{network="n1",port="3",sandbox="a",interface="eth0"} 700"#,
            r#"tapnet_port_drops_total{network="n1",port="3",sandbox="a",interface="eth0",reason="spoofed_ip"} 4"#,
            r#"tapnet_fdb_entries{network="n1"} 2"#,
            r#"tapnet_capture_subscribers{network="n1"} 1"#,
        ] {
            assert!(out.lines().any(|l| l == line), "{line} missing in\n{out}");
        }
        assert!(out.ends_with("# EOF\n"));
    }

    #[test]
    fn odd_methods_share_one_label() {
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(
            method_label(&Method::from_bytes(b"FROBNICATE").unwrap()),
            "other"
        );
    }
}
