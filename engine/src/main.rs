//! `tapnetd`: the tapnet daemon. Opens the store (`<data-root>/tapnet.db`), starts the
//! datapath, restores every network, sandbox and endpoint from the store (re-opening
//! the persistent taps, so forwarding resumes), then serves the HTTP API on a unix
//! socket. On SIGTERM/SIGINT it stops serving, closes its fds and exits, leaving
//! sandboxes and (persistent) taps in place (live restore).

use anyhow::{bail, Context};
use clap::Parser;
use std::path::PathBuf;
use std::sync::Arc;
use tapnet_engine::driver::bridge::BridgeDriver;
use tapnet_engine::driver::DriverRegistry;
use tapnet_engine::ipam::DefaultIpam;
use tapnet_engine::store::Db;
use tapnet_engine::{api, Controller};
use tokio::signal::unix::{signal, SignalKind};

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
    /// Log filter (`error`, `warn`, `info`, `debug`, `trace`, or a tracing filter).
    #[arg(long, default_value = "info")]
    log_level: String,
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log_level)
        .with_context(|| format!("--log-level {:?}", args.log_level))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    let socket = socket_path(&args.host)?;
    std::fs::create_dir_all(&args.data_root)
        .with_context(|| format!("create data root {}", args.data_root.display()))?;
    std::fs::create_dir_all(args.exec_root.join("netns"))
        .with_context(|| format!("create exec root {}", args.exec_root.display()))?;

    let workers = args.workers;
    let bridge = tokio::task::spawn_blocking(move || BridgeDriver::start(workers))
        .await
        .context("start datapath")?
        .context("start datapath")?;
    let mut drivers = DriverRegistry::new();
    drivers.register(Arc::new(bridge));
    let data_root = args.data_root.clone();
    let db = tokio::task::spawn_blocking(move || Db::open(&data_root))
        .await
        .context("open the store")?
        .context("open the store")?;
    let controller = Arc::new(Controller::with_db(
        drivers,
        Box::new(DefaultIpam::new()),
        &args.exec_root,
        db,
    ));

    tracing::info!(version = env!("CARGO_PKG_VERSION"), "tapnetd starting");
    controller
        .restore()
        .await
        .context("restore state from the store")?;
    let served = api::serve_unix(&socket, api::router(Arc::clone(&controller)), terminated()).await;
    if let Err(e) = std::fs::remove_file(&socket) {
        tracing::debug!(error = %e, "removing socket");
    }
    controller.shutdown().await;
    served.with_context(|| format!("serve API on {}", socket.display()))?;
    tracing::info!("tapnetd stopped");
    Ok(())
}
