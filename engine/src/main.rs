//! `tapnetd`: the tapnet daemon. Opens the store (`<data-root>/tapnet.db`), starts the
//! datapath, restores every network, sandbox and endpoint from the store (re-opening
//! the persistent taps, so forwarding resumes), creates the pre-defined networks
//! (`none`, `host`, `bridge`) that are not in the store yet, then serves the HTTP API
//! on a unix socket. On SIGTERM/SIGINT it stops serving, closes its fds and exits, leaving
//! sandboxes and (persistent) taps in place (live restore).
#![forbid(unsafe_code)]

use anyhow::{bail, Context};
use clap::Parser;
use ipnet::Ipv4Net;
use std::path::PathBuf;
use std::sync::Arc;
use tapnet_engine::controller::DefaultBridge;
use tapnet_engine::driver::bridge::{BridgeDriver, TapIo, TapIoPath};
use tapnet_engine::driver::macvlan::MacvlanDriver;
use tapnet_engine::driver::overlay::OverlayDriver;
use tapnet_engine::driver::record::{HOST_DRIVER, NULL_DRIVER};
use tapnet_engine::driver::DriverRegistry;
use tapnet_engine::ipam::{default_pools, DefaultIpam, DefaultPool, DefaultPoolV6};
use tapnet_engine::remote::client::Timing;
use tapnet_engine::remote::ipam::WithPlugins;
use tapnet_engine::remote::{PluginConfig, Plugins};
use tapnet_engine::store::Db;
use tapnet_engine::{api, Controller};
use tokio::signal::unix::{signal, SignalKind};

mod cluster;

/// tapnet daemon: container networks with a userspace datapath.
#[derive(Debug, Parser)]
#[command(name = "tapnetd", version)]
struct Args {
    /// API socket, `unix:///PATH`.
    #[arg(
        short = 'H',
        long = "host",
        default_value = "unix:///run/tapnet/tapnet.sock",
        env = "TAPNET_HOST"
    )]
    host: String,
    /// Directory for persistent state.
    #[arg(long, default_value = "/var/lib/tapnet")]
    data_root: PathBuf,
    /// Directory for runtime state (namespace bind mounts under `netns/`).
    #[arg(long, default_value = "/run/tapnet")]
    exec_root: PathBuf,
    /// Datapath worker threads (0 = one per core).
    #[arg(long, default_value_t = 0)]
    workers: usize,
    /// Nice value of the datapath worker threads only: `auto` (the default) or -20..19.
    /// `auto`: the workers run at the daemon's own nice value and step back to 10 above
    /// it while they are busy and their waits for a core are short (the containers'
    /// threads, which soon block on the network, then run first: on a 2-core machine
    /// 1.3-1.5x the small packets and the NAT upload), and return at once when their
    /// waits grow long (CPU-bound work beside them) or they go idle. It needs the right
    /// to lower a thread's nice again (root, or RLIMIT_NICE); without it the workers stay
    /// at the daemon's value. A number: that value, fixed. See docs/cli.md.
    #[arg(long = "worker-nice", value_name = "auto|N", default_value = "auto", allow_negative_numbers = true, value_parser = parse_worker_nice)]
    worker_nice: WorkerNice,
    /// How endpoint taps move frames: `auto` (the default: io_uring where the kernel
    /// allows it, else rw; logged once), `uring` (io_uring only: reads kept in flight,
    /// writes batched, ~1.2x the small-packet rate of rw) or `rw` (one read/write system
    /// call per frame). See docs/benchmarks.md.
    #[arg(long = "tap-io", value_name = "auto|uring|rw", default_value = TapIo::default().as_str(), value_parser = parse_tap_io)]
    tap_io: TapIo,
    /// Merge consecutive UDP datagrams of one flow into one super-frame per tap write
    /// (USO; the sandbox's kernel cuts it back into the datagrams): `on` (the default,
    /// where the kernel takes USO on taps, 6.2+) or `off`. See docs/benchmarks.md.
    #[arg(long = "tap-udp-merge", value_name = "on|off", default_value = "on", action = clap::ArgAction::Set, value_parser = parse_on_off)]
    tap_udp_merge: bool,
    /// io_uring reads kept in flight per tap port (1-4096; each owns a 66 KiB buffer).
    #[arg(long = "tap-io-depth", value_name = "N", default_value_t = tapnet_sandbox::uring::DEFAULT_DEPTH as u16,
          value_parser = clap::value_parser!(u16).range(1..=4096))]
    tap_io_depth: u16,
    /// Queues per endpoint tap (`IFF_MULTI_QUEUE`), one per datapath worker: a network is
    /// spread over this many workers so several flows use several cores (1 = one worker
    /// per network, the default; at most the number of workers). See docs/benchmarks.md.
    #[arg(long = "tap-queues", value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=256))]
    tap_queues: u16,
    /// Gateway address and prefix of the default `bridge` network, e.g. 10.99.0.1/24
    /// (dockerd's `--bip`).
    #[arg(long, value_name = "CIDR")]
    bip: Option<Ipv4Net>,
    /// Dynamic allocation range of the default `bridge` network (dockerd's
    /// `--fixed-cidr`); its subnet when `--bip` is not given.
    #[arg(long, value_name = "CIDR")]
    fixed_cidr: Option<Ipv4Net>,
    /// Default address pool `base=CIDR,size=N` (repeatable; replaces the built-in
    /// pools 172.17-31.0.0/16 and 192.168.0.0/16 as /20s).
    #[arg(long = "default-address-pool", value_name = "base=CIDR,size=N", value_parser = DefaultPool::parse)]
    default_address_pools: Vec<DefaultPool>,
    /// Default IPv6 pool `base=CIDR,size=N` (repeatable) that `--ipv6` networks without
    /// an IPv6 subnet take a subnet from; default: this host's unique local /48
    /// (fdXX:XXXX:XXXX::/48 from /etc/machine-id) as /64s.
    #[arg(long = "default-ipv6-pool", value_name = "base=CIDR,size=N", value_parser = DefaultPoolV6::parse)]
    default_ipv6_pools: Vec<DefaultPoolV6>,
    /// Upstream DNS server of the gateways' embedded DNS (repeatable; default: the
    /// nameservers of the host's /etc/resolv.conf, loopback ones skipped).
    #[arg(long = "dns", value_name = "IP")]
    dns: Vec<std::net::IpAddr>,
    /// Cluster store for global (multi-host) networks:
    /// `etcd://HOST:PORT[,HOST:PORT...]` (dockerd's `--cluster-store`).
    #[arg(long, value_name = "etcd://HOST:PORT[,...]")]
    cluster_store: Option<String>,
    /// This node's address as the other hosts reach it (required with
    /// `--cluster-store`; dockerd's `--cluster-advertise`).
    #[arg(long, value_name = "ADDR")]
    cluster_advertise: Option<String>,
    /// Seconds this node's records outlive it in the cluster store (their lease).
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    cluster_ttl: u64,
    /// How often the keys of encrypted overlay networks are rotated (`2s`, `30m`,
    /// `12h`, `1h30m`; at least 1s).
    #[arg(long, value_name = "DURATION", default_value = "12h", value_parser = cluster::parse_duration)]
    cluster_key_rotation: std::time::Duration,
    /// UDP port of the overlay's VXLAN socket (one per daemon, shared by every overlay
    /// network, demultiplexed by VNI, bound with the first overlay network); 0: an
    /// ephemeral port.
    #[arg(long, default_value_t = tapnet_vxlan::header::VXLAN_PORT, value_name = "PORT")]
    data_path_port: u16,
    /// Address the VXLAN socket binds.
    #[arg(long, default_value = "0.0.0.0", value_name = "ADDR")]
    data_path_addr: std::net::IpAddr,
    /// Directory searched for remote network and IPAM plugins (`NAME.sock`,
    /// `NAME/NAME.sock`, `NAME.spec`, `NAME.json`), in order; repeatable. Default:
    /// dockerd's /run/docker/plugins, /etc/docker/plugins, /usr/lib/docker/plugins.
    #[arg(long = "plugin-dir", value_name = "DIR")]
    plugin_dirs: Vec<PathBuf>,
    /// How long a plugin that is not found or refuses connections is retried
    /// (dockerd's backoff 1s, 2s, 4s, ...; dockerd: 30s).
    #[arg(long, value_name = "DURATION", default_value = "30s", env = "TAPNET_PLUGIN_RETRY_DEADLINE", value_parser = cluster::parse_duration)]
    plugin_retry_deadline: std::time::Duration,
    /// How long a client may take to send a request's head (line and headers) to the
    /// API and plugin sockets before its connection is closed (hidden: for tests).
    #[arg(long, value_name = "DURATION", default_value = "10s", env = "TAPNET_HTTP_HEADER_TIMEOUT", value_parser = cluster::parse_duration, hide = true)]
    http_header_timeout: std::time::Duration,
    /// How long a client may take to send a request's body, from its head (hidden: for
    /// tests).
    #[arg(long, value_name = "DURATION", default_value = "30s", env = "TAPNET_HTTP_BODY_TIMEOUT", value_parser = cluster::parse_duration, hide = true)]
    http_body_timeout: std::time::Duration,
    /// How long one plugin call may take before it fails.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = cluster::parse_duration)]
    plugin_timeout: std::time::Duration,
    /// Serve Docker's network and IPAM plugin protocol, so dockerd runs containers
    /// on tapnet networks (`docker network create -d tapnet`); `--docker-plugin=false`
    /// turns it off.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1,
          default_missing_value = "true", require_equals = true, value_name = "BOOL")]
    docker_plugin: bool,
    /// The plugin's socket (dockerd discovers plugins in /run/docker/plugins).
    #[arg(long, default_value = tapnet_engine::docker_plugin::DEFAULT_SOCKET, value_name = "PATH")]
    docker_plugin_socket: PathBuf,
    /// dockerd's API, where the plugin reads the names of its networks.
    #[arg(
        long,
        default_value = "unix:///run/docker.sock",
        value_name = "unix:///PATH"
    )]
    docker_host: String,
    /// Log filter (`error`, `warn`, `info`, `debug`, `trace`, or a tracing filter).
    #[arg(long, default_value = "info")]
    log_level: String,
    /// File descriptors kept for the daemon itself (store, taps, network sockets,
    /// plugins) out of its `RLIMIT_NOFILE`; default max(256, limit/8). The rest, less
    /// the API's share, is the budget of every network's flows (docs/security.md).
    #[arg(long, value_name = "N")]
    fd_reserve: Option<u64>,
    /// Most concurrent connections on the API socket (and on the Docker plugin
    /// socket); default limit/16 within 16..=1024.
    #[arg(long, value_name = "N")]
    max_api_connections: Option<u64>,
    /// Most DNS queries of one network waiting for the upstream servers at once; new
    /// ones get SERVFAIL.
    #[arg(long, value_name = "N", default_value_t = tapnet_nat::Limits::BUILTIN.dns_pending)]
    max_dns_pending: usize,
    /// Most concurrent connections (TCP) or clients (UDP) of one published port; new
    /// ones are closed at once.
    #[arg(long, value_name = "N", default_value_t = tapnet_nat::Limits::BUILTIN.published_conns)]
    max_published_connections: usize,
    /// Most concurrent flows (UDP, TCP, ICMP) per sandbox address on a network.
    #[arg(long, value_name = "N", default_value_t = tapnet_nat::Limits::BUILTIN.per_endpoint)]
    max_flows_per_endpoint: usize,
    /// Most concurrent flows on one network.
    #[arg(long, value_name = "N", default_value_t = tapnet_nat::Limits::BUILTIN.per_network)]
    max_flows_per_network: usize,
    /// Set RLIMIT_NOFILE (soft and hard) to N before sharing it out, instead of raising
    /// the soft limit to the hard one (hidden: for tests of the limits).
    #[arg(long, value_name = "N", hide = true)]
    rlimit_nofile: Option<u64>,
}

/// Raise the soft `RLIMIT_NOFILE` to the hard limit and share the descriptors out
/// (`tapnet_nat::budget::split`): the flows' budget and the API's connection cap.
fn fd_budget(args: &Args) -> tapnet_nat::budget::FdSplit {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Some(n) = args.rlimit_nofile {
        if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, n, n) {
            tracing::warn!(error = %e, n, "cannot set RLIMIT_NOFILE");
        }
    }
    let (soft, hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read RLIMIT_NOFILE; assuming 1024");
            (1024, 1024)
        }
    };
    let raised = if soft < hard {
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(e) => {
                tracing::warn!(error = %e, soft, hard, "cannot raise RLIMIT_NOFILE");
                soft
            }
        }
    } else {
        soft
    };
    let split = tapnet_nat::budget::split(raised, args.fd_reserve, args.max_api_connections);
    tapnet_nat::budget::global().set_limit(usize::try_from(split.flows).unwrap_or(usize::MAX));
    tracing::info!(
        soft_was = soft,
        hard,
        nofile = raised,
        reserve = split.reserve,
        api_connections_per_socket = split.api_connections,
        flows = split.flows,
        "file descriptors: RLIMIT_NOFILE raised and shared"
    );
    split
}

fn socket_path(host: &str) -> anyhow::Result<PathBuf> {
    if let Some(p) = host.strip_prefix("unix://") {
        if p.is_empty() {
            bail!("--host {host:?}: give a socket path, e.g. unix:///run/tapnet/tapnet.sock");
        }
        return Ok(PathBuf::from(p));
    }
    if host.starts_with('/') {
        return Ok(PathBuf::from(host));
    }
    bail!("--host {host:?}: only unix:///PATH sockets are supported")
}

async fn terminated() {
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
}

/// The IPv4 routes of the daemon's own namespace (main table, no default route):
/// default pools overlapping them are skipped. Unreadable routes are logged, not fatal.
async fn host_routes() -> Vec<Ipv4Net> {
    let read = tokio::task::spawn_blocking(|| {
        tapnet_sandbox::netlink::Handle::new().and_then(|mut h| h.routes_v4())
    })
    .await;
    match read {
        Ok(Ok(routes)) => routes
            .into_iter()
            .filter_map(|(addr, len)| Ipv4Net::new(addr, len).ok().map(|n| n.trunc()))
            .collect(),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "cannot read host routes; default pools are not checked against them");
            Vec::new()
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read host routes");
            Vec::new()
        }
    }
}

/// The `overlay` driver on the bridge driver's datapath; its VXLAN socket binds
/// `--data-path-addr`:`--data-path-port` with the first overlay network.
fn overlay_driver(args: &Args, bridge: Arc<BridgeDriver>) -> OverlayDriver {
    let addr = std::net::SocketAddr::new(args.data_path_addr, args.data_path_port);
    OverlayDriver::new(bridge, addr)
}

/// The HTTP servers' timeouts and connection cap the flags ask for.
fn http_timeouts(args: &Args) -> api::HttpTimeouts {
    let max = API_CONNECTIONS.load(std::sync::atomic::Ordering::Relaxed);
    api::HttpTimeouts {
        header: args.http_header_timeout,
        body: args.http_body_timeout,
        max_connections: if max == 0 { api::MAX_CONNECTIONS } else { max },
    }
}

/// The API's connection cap from [`fd_budget`] (0: not computed).
static API_CONNECTIONS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Start tapnet's Docker plugin: its socket (served until `stop` turns true), the
/// watch on vanished containers, and the names of plugin networks still unnamed.
async fn start_docker_plugin(
    args: &Args,
    controller: &Arc<Controller>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<std::io::Result<()>>> {
    use tapnet_engine::docker_plugin::{self, dockerd, network::PLUGIN_LABEL};
    let docker = dockerd::DockerApi::from_host(&args.docker_host).map_err(anyhow::Error::msg)?;
    let ipam_file = args.data_root.join("docker-plugin-ipam.json");
    let ctl = Controller::clone(controller);
    let plugin = docker_plugin::Plugin::new(ctl.clone(), Some(docker.clone()), ipam_file)
        .context("start the Docker plugin")?;
    for net in ctl.snapshot().await.networks.values() {
        if net.labels.contains_key(PLUGIN_LABEL) && net.name == dockerd::placeholder_name(&net.id) {
            tokio::spawn(dockerd::name_later(
                ctl.clone(),
                docker.clone(),
                net.id.clone(),
            ));
        }
    }
    tokio::spawn(docker_plugin::watch::run(Arc::downgrade(&plugin)));
    let path = args.docker_plugin_socket.clone();
    let timeouts = http_timeouts(args);
    Ok(tokio::spawn(async move {
        let shutdown = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        let r = docker_plugin::serve(&path, plugin, timeouts, shutdown).await;
        if let Err(e) = &r {
            tracing::error!(socket = %path.display(), error = %e, "cannot serve the Docker plugin; tapnetd goes on without it");
        }
        r
    }))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Refused before anything is set up: one queue per datapath worker at most.
    let dp_workers = match args.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    if usize::from(args.tap_queues) > dp_workers {
        bail!(
            "--tap-queues {}: at most one queue per datapath worker ({dp_workers}; raise --workers)",
            args.tap_queues
        );
    }
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log_level)
        .with_context(|| format!("--log-level {:?}", args.log_level))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // Before any thread allocates: flow memory goes back to the system (tapnet_nat::mem).
    if !tapnet_nat::mem::tune() {
        tracing::debug!("allocator mmap threshold not set (not glibc)");
    }
    let split = fd_budget(&args);
    API_CONNECTIONS.store(
        usize::try_from(split.api_connections).unwrap_or(usize::MAX),
        std::sync::atomic::Ordering::Relaxed,
    );
    tapnet_nat::Limits {
        per_endpoint: args.max_flows_per_endpoint,
        per_network: args.max_flows_per_network,
        dns_pending: args.max_dns_pending,
        published_conns: args.max_published_connections,
        ..tapnet_nat::Limits::BUILTIN
    }
    .set_process_default();

    let socket = socket_path(&args.host)?;
    let cluster = cluster::connect(
        args.cluster_store.as_deref(),
        args.cluster_advertise.as_deref(),
        args.cluster_ttl,
        args.data_path_port,
        args.cluster_key_rotation,
    )
    .await?;
    std::fs::create_dir_all(&args.data_root)
        .with_context(|| format!("create data root {}", args.data_root.display()))?;
    std::fs::create_dir_all(args.exec_root.join("netns"))
        .with_context(|| format!("create exec root {}", args.exec_root.display()))?;

    let dns = if args.dns.is_empty() {
        let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        let found = tapnet_engine::sandbox_files::parse_nameservers(&host);
        if found.is_empty() {
            tracing::warn!(
                "no usable nameserver in /etc/resolv.conf (loopback ones are skipped); \
                 names outside the networks will get SERVFAIL: give --dns IP"
            );
        }
        found
    } else {
        args.dns.clone()
    };
    tracing::info!(?dns, "upstream DNS servers");
    let upstream: Vec<std::net::SocketAddr> = dns
        .iter()
        .map(|ip| std::net::SocketAddr::new(*ip, 53))
        .collect();
    let workers = args.workers;
    let tap_io = args.tap_io;
    let tap_io_path = match (tap_io, tapnet_sandbox::uring::probe()) {
        (TapIo::Rw, _) => {
            tracing::info!("tap I/O: one read/write per frame (--tap-io rw)");
            TapIoPath::Rw
        }
        (_, Ok(())) => {
            tracing::info!(
                depth = args.tap_io_depth,
                "tap I/O: io_uring (--tap-io {})",
                tap_io.as_str()
            );
            TapIoPath::Uring
        }
        (TapIo::Uring, Err(e)) => {
            bail!("--tap-io uring: io_uring is not available here: {e}")
        }
        (TapIo::Auto, Err(e)) => {
            tracing::warn!(
                error = %e,
                "tap I/O: io_uring unavailable, one read/write per frame (--tap-io auto)"
            );
            TapIoPath::Rw
        }
    };
    tapnet_sandbox::udp_merge::set_enabled(args.tap_udp_merge);
    if !args.tap_udp_merge {
        tracing::info!("UDP datagrams are written to taps one by one (--tap-udp-merge off)");
    }
    let worker_nice = match args.worker_nice {
        WorkerNice::Fixed(n) => Some(n),
        WorkerNice::Auto => None,
    };
    if let Some(n) = worker_nice {
        tracing::info!(nice = n, "datapath workers' nice value (--worker-nice)");
    }
    // What `/info` reports: the flag's value, else the daemon's own (the workers inherit it).
    let worker_nice_in_effect = match worker_nice {
        Some(n) => n,
        None => tapnet_sandbox::sched::thread_nice().unwrap_or(0),
    };
    let auto_nice = match args.worker_nice {
        WorkerNice::Fixed(_) => "off",
        WorkerNice::Auto if tapnet_sandbox::sched::can_restore_nice(worker_nice_in_effect) => {
            tracing::info!(
                base = worker_nice_in_effect,
                "datapath workers' nice value: automatic (--worker-nice auto)"
            );
            "on"
        }
        WorkerNice::Auto => {
            tracing::info!(
                base = worker_nice_in_effect,
                "datapath workers' nice value: automatic is unavailable (no CAP_SYS_NICE and \
                 RLIMIT_NICE too low to set it back); the workers keep the daemon's"
            );
            "unavailable"
        }
    };
    let bridge = tokio::task::spawn_blocking(move || {
        BridgeDriver::start_with_nice(workers, worker_nice, auto_nice == "on")
    })
    .await
    .context("start datapath")?
    .context("start datapath")?
    .with_upstream_dns(upstream)
    .with_tap_io(tap_io, usize::from(args.tap_io_depth))
    .with_tap_queues(usize::from(args.tap_queues))
    .context("--tap-queues")?;
    tracing::info!(queues = bridge.tap_queues(), "endpoint tap queues");
    let gateway = tapnet_engine::driver::bridge::Placement::current();
    tracing::info!(placement = gateway.describe(), "network gateways");
    let bridge = Arc::new(bridge);
    let overlay = overlay_driver(&args, Arc::clone(&bridge));
    let mut plugin_config = PluginConfig::new(&args.exec_root);
    if !args.plugin_dirs.is_empty() {
        plugin_config.dirs = args.plugin_dirs.clone();
    }
    plugin_config.timing = Timing {
        retry_deadline: args.plugin_retry_deadline,
        call_timeout: args.plugin_timeout,
    };
    if args.docker_plugin {
        plugin_config.own_socket = Some(args.docker_plugin_socket.clone());
    }
    let plugins = Arc::new(Plugins::new(plugin_config));
    let macvlan = MacvlanDriver::new(Arc::clone(&bridge));
    let mut drivers = DriverRegistry::new().with_plugins(Arc::clone(&plugins));
    drivers.register(bridge);
    drivers.register(Arc::new(overlay));
    drivers.register(Arc::new(macvlan));
    drivers.register(Arc::new(NULL_DRIVER));
    drivers.register(Arc::new(HOST_DRIVER));
    let pools = if args.default_address_pools.is_empty() {
        default_pools()
    } else {
        args.default_address_pools.clone()
    };
    let routes = host_routes().await;
    tracing::debug!(?routes, "host routes avoided by default pools");
    let ipam = WithPlugins::new(
        Box::new({
            let ipam = DefaultIpam::with_default_pools(pools).avoid(routes);
            if args.default_ipv6_pools.is_empty() {
                ipam
            } else {
                ipam.with_v6_pools(args.default_ipv6_pools.clone())
            }
        }),
        plugins,
    );
    let data_root = args.data_root.clone();
    let db = tokio::task::spawn_blocking(move || Db::open(&data_root))
        .await
        .context("open the store")?
        .context("open the store")?;
    let controller = Arc::new(
        Controller::with_db(drivers, Box::new(ipam), &args.exec_root, db)
            .with_nameservers(dns)
            .with_cluster_store(cluster),
    );

    tracing::info!(version = env!("CARGO_PKG_VERSION"), "tapnetd starting");
    // Restore first: the pre-defined networks may already be in the store, and
    // their pools must be known before anything new is allocated.
    if let Err(e) = controller.restore().await {
        controller.shutdown().await;
        bail!("restore state from the store: {e}");
    }
    // Then create (and persist) the pre-defined networks that are absent;
    // `--bip`/`--fixed-cidr` only apply to a `bridge` network created now.
    let bridge_cfg = DefaultBridge::from_flags(args.bip, args.fixed_cidr);
    if let Err(e) = controller.ensure_default_networks(&bridge_cfg).await {
        controller.shutdown().await;
        bail!("create the pre-defined networks: {e}");
    }
    // With a cluster store: the global networks recorded there, then its changes.
    if let Err(e) = controller.start_cluster_sync().await {
        controller.shutdown().await;
        bail!("load the global networks from the cluster store: {e}");
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let plugin = match args.docker_plugin {
        true => Some(start_docker_plugin(&args, &controller, stop_rx).await?),
        false => None,
    };
    let stop = async move {
        terminated().await;
        let _ = stop_tx.send(true);
    };
    api::set_daemon_info(api::DaemonInfo {
        data_root: args.data_root.clone(),
        exec_root: args.exec_root.clone(),
        cluster_store: args.cluster_store.clone(),
        cluster_advertise: args.cluster_advertise.clone(),
        workers: dp_workers,
        tap_io: args.tap_io.as_str().to_string(),
        tap_io_path: tap_io_path.as_str().to_string(),
        tap_queues: usize::from(args.tap_queues),
        worker_nice: worker_nice_in_effect,
        worker_nice_auto: auto_nice.into(),
        tap_udp_merge: args.tap_udp_merge,
        gateway: gateway.as_str().into(),
    });
    let served = api::serve_unix(
        &socket,
        api::router(Arc::clone(&controller)),
        http_timeouts(&args),
        stop,
    )
    .await;
    if let Some(task) = plugin {
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => {}
            Err(e) => tracing::error!(error = %e, "the Docker plugin's task failed"),
        }
    }
    if let Err(e) = std::fs::remove_file(&socket) {
        tracing::debug!(error = %e, "removing socket");
    }
    controller.shutdown().await;
    served.with_context(|| format!("serve API on {}", socket.display()))?;
    tracing::info!("tapnetd stopped");
    Ok(())
}

/// `--tap-io`'s value.
fn parse_tap_io(s: &str) -> Result<TapIo, String> {
    s.parse()
}

/// `--worker-nice`: automatic, or a fixed value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WorkerNice {
    Auto,
    Fixed(i32),
}

fn parse_worker_nice(s: &str) -> Result<WorkerNice, String> {
    if s == "auto" {
        return Ok(WorkerNice::Auto);
    }
    match s.parse::<i32>() {
        Ok(n) if tapnet_sandbox::sched::NICE_RANGE.contains(&n) => Ok(WorkerNice::Fixed(n)),
        Ok(n) => Err(format!("{n} is not in -20..=19")),
        Err(_) => Err(format!("{s:?}: expected auto or a number in -20..=19")),
    }
}

fn parse_on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(format!("{s:?}: expected on or off")),
    }
}
