//! The `bridge` driver: a userspace learning switch per network, a tap per endpoint.
//!
//! Contract: [`BridgeDriver::create_network`] adds a switch on one datapath worker;
//! [`BridgeDriver::join`] creates a persistent tap `ethN` inside the sandbox (MAC,
//! MTU, txqueuelen 10000, IPv4 and (on IPv6 networks) IPv6 address, default routes
//! via the gateways) and attaches it to
//! the switch as a port; [`BridgeDriver::leave`] detaches the port and destroys the
//! tap so the interface disappears from the sandbox. Every step that fails undoes
//! the steps before it. On a network without IPv6 ([`Network::ipv6`] is `None`) the
//! tap gets `disable_ipv6=1`, as dockerd does (no RS/DAD/MLD multicast, which the
//! switch would flood to every port); on IPv6 networks IPv6 stays on.
//! [`BridgeDriver::restore_endpoint`] (daemon restart) re-opens the endpoint's
//! persistent tap (`TUNSETIFF` on the existing device) and attaches it again; if the
//! tap is gone it re-creates it from the stored record (name, MAC, MTU, addresses,
//! routes). The tap work runs without the driver's lock, so endpoints can be
//! restored in parallel.
//!
//! The tap is shared between the switch port ([`TapPort`]) and the driver through an
//! `Arc`: once the switch hands the port back, the driver holds the only reference
//! and can destroy the device.

use super::{Driver, FdbRow, NetworkReport, PortReport, Restored};
use crate::error::{Error, Result};
use crate::model::{Endpoint, Network};
use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;
use tapnet_sandbox::netns::Netns;
use tapnet_sandbox::tap::{self, Tap, TapConfig};
use tapnet_switch::core::{PortId, SwitchConfig};
use tapnet_switch::runtime::{Datapath, FrameIo, NetworkHandle, PortStats};

/// `txqueuelen` of endpoint taps: large enough that a TCP window never overflows.
pub const TAP_TXQUEUELEN: u32 = 10_000;

/// A tap device as a switch port.
#[derive(Debug, Clone)]
pub struct TapPort(pub Arc<Tap>);

impl AsRawFd for TapPort {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl FrameIo for TapPort {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
    fn send(&mut self, frame: &[u8]) -> io::Result<usize> {
        self.0.write(frame)
    }
}

struct BridgePort {
    port: PortId,
    stats: Arc<PortStats>,
    tap: Arc<Tap>,
}

struct BridgeNetwork {
    handle: NetworkHandle,
    ports: HashMap<String, BridgePort>,
}

/// The `bridge` driver (see the module doc).
pub struct BridgeDriver {
    datapath: Mutex<Option<Datapath>>,
    /// When the datapath was started: workers measure FDB times from (about) here.
    started: Instant,
    networks: Mutex<HashMap<String, BridgeNetwork>>,
}

impl std::fmt::Debug for BridgeDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BridgeDriver").finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Destroy a tap once nothing else holds it; log if something still does.
fn destroy_tap(tap: Arc<Tap>, what: &str) -> Result<()> {
    match Arc::try_unwrap(tap) {
        Ok(tap) => {
            let name = tap.name().to_string();
            tap.destroy()
                .map_err(|e| Error::os(format!("destroy tap {name} of {what}"), e))
        }
        Err(tap) => {
            tracing::warn!(
                tap = tap.name(),
                "{what}: tap still referenced by the datapath; left in place"
            );
            Ok(())
        }
    }
}

/// As dockerd does for an endpoint without an IPv6 address: turn IPv6 off on the
/// interface, so it sends no router solicitations, DAD or MLD reports. Each of those is
/// multicast, flooded to every port of the network: with hundreds of endpoints, every
/// new or re-attached tap would cost a flood to all of them. Failure is only logged
/// (a kernel without IPv6 has nothing to turn off).
fn disable_ipv6(sandbox: &Netns, name: &str) {
    let path = format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6");
    match sandbox.run(|| std::fs::write(&path, b"1")) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(interface = name, error = %e, "disabling IPv6"),
        Err(e) => tracing::debug!(interface = name, error = %e, "disabling IPv6"),
    }
}

/// The tap of `endpoint` on `network`, named `name` (used by `join` and to re-create
/// a vanished tap on restore, so both build the same device).
fn tap_config(network: &Network, endpoint: &Endpoint, name: &str, mtu: u32) -> Result<TapConfig> {
    let mac = endpoint.mac.ok_or_else(|| {
        Error::InvalidRequest(format!(
            "endpoint {} on network {} has no MAC address",
            endpoint.id, network.name
        ))
    })?;
    Ok(TapConfig {
        name: name.to_string(),
        mac,
        mtu,
        txqueuelen: TAP_TXQUEUELEN,
        ipv4: endpoint.ipv4.map(|a| (a, endpoint.prefix_len)),
        gateway_v4: network.gateway,
        ipv6: endpoint.ipv6.map(|a| (a, endpoint.prefix_len_v6)),
        gateway_v6: network.ipv6.as_ref().map(|v6| v6.gateway),
    })
}

impl BridgeDriver {
    /// Start the datapath with `workers` threads (0 = one per core) and wrap it.
    pub fn start(workers: usize) -> Result<BridgeDriver> {
        let started = Instant::now();
        let datapath =
            Datapath::start(workers).map_err(|e| Error::datapath("start datapath", e))?;
        Ok(BridgeDriver::with_datapath(datapath, started))
    }

    /// Wrap a running datapath started at `started`.
    pub fn with_datapath(datapath: Datapath, started: Instant) -> BridgeDriver {
        BridgeDriver {
            datapath: Mutex::new(Some(datapath)),
            started,
            networks: Mutex::new(HashMap::new()),
        }
    }

    fn unknown(network_id: &str) -> Error {
        Error::NotFound(format!("bridge driver has no network {network_id}"))
    }
}

impl Driver for BridgeDriver {
    fn name(&self) -> &str {
        "bridge"
    }

    fn validate_options(&self, options: &std::collections::BTreeMap<String, String>) -> Result<()> {
        if let Some(v) = options.get(crate::model::MTU_OPTION) {
            crate::model::parse_mtu(v)?;
        }
        Ok(())
    }

    fn create_network(&self, network: &Network) -> Result<()> {
        let handle = {
            let dp = lock(&self.datapath);
            let dp = dp.as_ref().ok_or(Error::datapath(
                format!("create switch for network {}", network.name),
                tapnet_switch::runtime::Error::WorkerGone,
            ))?;
            dp.add_network(SwitchConfig::default()).map_err(|e| {
                Error::datapath(format!("create switch for network {}", network.name), e)
            })?
        };
        lock(&self.networks).insert(
            network.id.clone(),
            BridgeNetwork {
                handle,
                ports: HashMap::new(),
            },
        );
        Ok(())
    }

    fn delete_network(&self, network_id: &str) -> Result<()> {
        let net = lock(&self.networks)
            .remove(network_id)
            .ok_or_else(|| Self::unknown(network_id))?;
        for (ep, port) in net.ports {
            // Not expected (the controller leaves first), but never leak a tap.
            let _ = net.handle.remove_port(port.port);
            destroy_tap(port.tap, &format!("endpoint {ep}"))?;
        }
        net.handle
            .remove()
            .map_err(|e| Error::datapath(format!("remove switch of network {network_id}"), e))
    }

    fn join(
        &self,
        network: &Network,
        endpoint: &Endpoint,
        sandbox: &Netns,
        sandbox_name: &str,
    ) -> Result<String> {
        let mtu = network.mtu()?;
        let mut nets = lock(&self.networks);
        let net = nets
            .get_mut(&network.id)
            .ok_or_else(|| Self::unknown(&network.id))?;
        let name = tap::next_free_name(sandbox, "eth").map_err(|e| {
            Error::os(
                format!("pick an interface name in sandbox {sandbox_name}"),
                e,
            )
        })?;
        let cfg = tap_config(network, endpoint, &name, mtu)?;
        let tap = Tap::create(sandbox, &cfg)
            .map_err(|e| Error::os(format!("create tap {name} in sandbox {sandbox_name}"), e))?;
        if network.ipv6.is_none() {
            disable_ipv6(sandbox, &name);
        }
        let tap = Arc::new(tap);
        match net.handle.add_port(Box::new(TapPort(Arc::clone(&tap)))) {
            Ok((port, stats)) => {
                net.ports
                    .insert(endpoint.id.clone(), BridgePort { port, stats, tap });
                Ok(name)
            }
            Err(e) => {
                let what = format!("{name} of sandbox {sandbox_name}");
                if let Err(cleanup) = destroy_tap(tap, &what) {
                    tracing::warn!(error = %cleanup, "cleanup after failed attach");
                }
                Err(Error::datapath(
                    format!("attach {what} to network {}", network.name),
                    e,
                ))
            }
        }
    }

    fn restore_endpoint(
        &self,
        network: &Network,
        endpoint: &Endpoint,
        sandbox: &Netns,
        sandbox_name: &str,
    ) -> Result<Restored> {
        if !lock(&self.networks).contains_key(&network.id) {
            return Err(Self::unknown(&network.id));
        }
        let name = endpoint.interface.as_str();
        let (tap, how) = match Tap::reopen(sandbox, name) {
            Ok(tap) => (tap, Restored::Reopened),
            Err(reopen) => {
                tracing::warn!(
                    sandbox = sandbox_name,
                    interface = name,
                    error = %reopen,
                    "tap of endpoint is gone; re-creating it from the stored record"
                );
                let cfg = tap_config(network, endpoint, name, network.mtu()?)?;
                let tap = Tap::create(sandbox, &cfg).map_err(|e| {
                    Error::os(format!("re-create tap {name} in sandbox {sandbox_name}"), e)
                })?;
                if network.ipv6.is_none() {
                    disable_ipv6(sandbox, name);
                }
                (tap, Restored::Recreated)
            }
        };
        let tap = Arc::new(tap);
        let mut nets = lock(&self.networks);
        let net = nets
            .get_mut(&network.id)
            .ok_or_else(|| Self::unknown(&network.id))?;
        match net.handle.add_port(Box::new(TapPort(Arc::clone(&tap)))) {
            Ok((port, stats)) => {
                net.ports
                    .insert(endpoint.id.clone(), BridgePort { port, stats, tap });
                Ok(how)
            }
            Err(e) => {
                drop(nets);
                // Leave a re-opened tap as it was (closing the fd keeps the device);
                // remove one we just made.
                if how == Restored::Recreated {
                    let what = format!("{name} of sandbox {sandbox_name}");
                    if let Err(cleanup) = destroy_tap(tap, &what) {
                        tracing::warn!(error = %cleanup, "cleanup after failed attach");
                    }
                }
                Err(Error::datapath(
                    format!(
                        "re-attach {name} of sandbox {sandbox_name} to network {}",
                        network.name
                    ),
                    e,
                ))
            }
        }
    }

    fn leave(&self, network_id: &str, endpoint_id: &str) -> Result<()> {
        let mut nets = lock(&self.networks);
        let net = nets
            .get_mut(network_id)
            .ok_or_else(|| Self::unknown(network_id))?;
        let Some(port) = net.ports.remove(endpoint_id) else {
            return Ok(());
        };
        match net.handle.remove_port(port.port) {
            Ok(io) => drop(io),
            Err(e) => {
                tracing::warn!(endpoint = endpoint_id, error = %e, "detaching port failed");
            }
        }
        drop(port.stats);
        destroy_tap(port.tap, &format!("endpoint {endpoint_id}"))
    }

    fn report(&self, network_id: &str) -> Result<NetworkReport> {
        let nets = lock(&self.networks);
        let net = nets
            .get(network_id)
            .ok_or_else(|| Self::unknown(network_id))?;
        let op = || format!("read counters of network {network_id}");
        let fdb = net.handle.fdb().map_err(|e| Error::datapath(op(), e))?;
        let counters = net
            .handle
            .counters()
            .map_err(|e| Error::datapath(op(), e))?;
        let mut ports: Vec<PortReport> = net
            .ports
            .iter()
            .map(|(ep, p)| PortReport {
                endpoint_id: ep.clone(),
                port: p.port,
                stats: p.stats.snapshot(),
            })
            .collect();
        ports.sort_by_key(|p| p.port);
        Ok(NetworkReport {
            fdb_entries: fdb.len(),
            fdb_limit_hits: counters.fdb_limit_hits,
            ports,
        })
    }

    fn fdb(&self, network_id: &str) -> Result<Vec<FdbRow>> {
        let nets = lock(&self.networks);
        let net = nets
            .get(network_id)
            .ok_or_else(|| Self::unknown(network_id))?;
        let fdb = net
            .handle
            .fdb()
            .map_err(|e| Error::datapath(format!("read FDB of network {network_id}"), e))?;
        let now_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let mut rows: Vec<FdbRow> = fdb
            .into_iter()
            .map(|e| FdbRow {
                mac: e.mac,
                port: e.port,
                endpoint_id: net
                    .ports
                    .iter()
                    .find(|(_, p)| p.port == e.port)
                    .map(|(ep, _)| ep.clone()),
                // Approximate: the worker's clock starts just after `started`.
                age_seconds: now_ms.saturating_sub(e.last_seen_ms) as f64 / 1000.0,
            })
            .collect();
        rows.sort_by_key(|r| (r.port, r.mac));
        Ok(rows)
    }

    fn shutdown(&self) {
        if let Some(dp) = lock(&self.datapath).take() {
            // Ports are dropped, not destroyed: the persistent taps stay in their sandboxes.
            lock(&self.networks).clear();
            dp.shutdown();
        }
    }
}
