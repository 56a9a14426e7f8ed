//! The `macvlan` driver: a switch network whose uplink is a host interface.
//!
//! Contract: a macvlan network is the bridge driver's userspace switch with a tap per
//! endpoint (`BridgeDriver::create_switch_network`, the same seam the overlay driver's
//! VXLAN port uses) **without** the userspace gateway, plus one uplink port: an
//! AF_PACKET socket on the parent interface ([`tapnet_sandbox::packet::PacketSocket`]:
//! `PACKET_VNET_HDR`, TPACKET_V2 rx/tx rings, promiscuous, own outgoing frames
//! ignored). Endpoints keep their own MACs (`02:42:<IPv4>`) and talk to each other
//! through the switch and to hosts on the parent's segment directly, as the kernel's
//! macvlan in `bridge` mode does. The sandbox's default route is the network's
//! gateway, a router on that segment (`--gateway`, default the pool's first address):
//! tapnet runs nothing at that address, so there is no NAT, no published ports (a
//! sandbox with `-p` that is not yet published elsewhere is refused when it connects)
//! and no embedded DNS (capability `gateway_service` false), as with Docker's macvlan.
//!
//! The uplink's socket is promiscuous on the parent, but passes the switch only
//! broadcast/multicast frames and unicast frames to one of the network's endpoint MACs
//! (kept current by [`UplinkControl::SetMacs`] at every join, restore and leave): a
//! BPF filter drops other LAN unicast in the kernel, and what was already in the ring
//! is dropped and counted `rx_not_ours`, so sandboxes do not see their neighbours'
//! traffic. One macvlan network per parent (a second is a 409: both
//! uplinks would read the same frames and neither would see the other's sends).
//!
//! Options (anything else is refused with a 400 that names it):
//!
//! * [`PARENT_OPTION`] `parent`: the host interface, in the daemon's namespace. Needed
//!   unless the network is `--internal`; one that does not exist is a 400 (including
//!   `eth0.10`: Docker creates such an 802.1q sub-interface, tapnet does not: create it
//!   with `ip link add link eth0 name eth0.10 type vlan id 10`).
//! * [`MODE_OPTION`] `macvlan_mode`: only `bridge` (the default); `vepa`, `private`,
//!   `passthru` and anything else are refused by name.
//! * `com.docker.network.driver.mtu`: the endpoints' MTU (default: the parent's, at
//!   most a tap's largest, 65521).
//! * `com.tapnet.port_security`, as on bridge networks.
//!
//! `--internal`: no uplink at all (endpoints reach only each other; no default
//! route), the parent is ignored, as Docker's internal macvlan uses no parent.
//!
//! Scope `local`, connectivity scope `global` (Docker's macvlan: endpoints on hosts
//! sharing the segment reach each other). Daemon restart: the controller re-creates the
//! network (a new uplink socket on the parent) and restores the endpoints' taps.

use super::bridge::BridgeDriver;
use super::{
    Capabilities, Driver, FdbRow, JoinDescription, JoinRequest, NetworkReport, NetworkRequest,
    RestoreDescription, Scope,
};
use crate::error::{Error, Result};
use crate::model::{Network, MTU_OPTION, PORT_SECURITY_OPTION};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard};
use tapnet_sandbox::packet::{PacketSocket, PacketStatsSnapshot};
use tapnet_switch::runtime::{FrameIo, Frames, PortControl, PortReply, SendBatchError};
use tapnet_switch::VNET_HDR_LEN;

/// The parent interface (Docker's `-o parent=eth0`).
pub const PARENT_OPTION: &str = "parent";
/// Docker's `-o macvlan_mode=bridge`.
pub const MODE_OPTION: &str = "macvlan_mode";

/// A message for the uplink port.
#[derive(Debug)]
pub enum UplinkControl {
    /// The endpoint MACs unicast frames from the parent may be for.
    SetMacs(Vec<[u8; 6]>),
    /// Answer the port's counters ([`PacketStatsSnapshot`]).
    Stats,
}

/// The uplink as a switch port: the packet socket and the unicast filter.
struct UplinkPort {
    sock: PacketSocket,
    macs: HashSet<[u8; 6]>,
    not_ours: u64,
}

impl AsRawFd for UplinkPort {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

impl FrameIo for UplinkPort {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let n = self.sock.recv(buf)?;
            let dst = buf
                .get(VNET_HDR_LEN..VNET_HDR_LEN + 6)
                .and_then(|d| <[u8; 6]>::try_from(d).ok());
            match dst {
                // Group addresses (broadcast, multicast) go to the switch, which floods.
                Some(d) if d[0] & 1 == 1 || self.macs.contains(&d) => return Ok(n),
                _ => self.not_ours += 1,
            }
        }
    }

    fn send(&mut self, frame: &[u8]) -> io::Result<usize> {
        let n = self.sock.queue(frame)?;
        self.sock.flush()?;
        Ok(n)
    }

    fn send_batch(&mut self, frames: Frames<'_>) -> std::result::Result<(), SendBatchError> {
        let mut result = Ok(());
        for (sent, frame) in frames.iter().enumerate() {
            if let Err(error) = self.sock.queue(frame) {
                result = Err(SendBatchError { sent, error });
                break;
            }
        }
        // Queued frames go out whatever stopped the batch.
        if let Err(error) = self.sock.flush() {
            tracing::debug!(%error, parent = self.sock.name(), "flush the uplink's tx ring");
        }
        result
    }

    fn control(&mut self, msg: PortControl) -> io::Result<PortReply> {
        let PortControl::Custom(any) = msg else {
            return Err(io::ErrorKind::Unsupported.into());
        };
        let Ok(msg) = any.downcast::<UplinkControl>() else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the uplink port takes UplinkControl messages",
            ));
        };
        match *msg {
            UplinkControl::SetMacs(macs) => {
                // The kernel's filter first (frames for a MAC not yet in it would be
                // dropped there), then ours, which catches what was already queued.
                self.sock
                    .set_macs(&macs)
                    .map_err(|e| io::Error::other(e.to_string()))?;
                self.macs = macs.into_iter().collect();
                Ok(PortReply::Done)
            }
            UplinkControl::Stats => {
                let mut s = self.sock.stats();
                s.counters.push(("rx_not_ours", self.not_ours));
                Ok(PortReply::Custom(Box::new(s)))
            }
        }
    }
}

/// What the driver keeps of a network.
#[derive(Debug, Clone)]
struct MacvlanNetwork {
    /// The parent interface (`None`: internal, no uplink).
    parent: Option<String>,
    /// No uplink and no default route.
    internal: bool,
    /// Endpoint id → MAC, of endpoints joined (the uplink's unicast filter).
    macs: BTreeMap<String, [u8; 6]>,
}

/// The `macvlan` driver (see the module doc).
pub struct MacvlanDriver {
    bridge: Arc<BridgeDriver>,
    networks: Mutex<HashMap<String, MacvlanNetwork>>,
}

impl std::fmt::Debug for MacvlanDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MacvlanDriver").finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Check a macvlan network's options (syntax; the parent's existence is checked when
/// the network is created). Returns the parent, if given.
pub fn check_options(options: &BTreeMap<String, String>) -> Result<Option<String>> {
    let mut parent = None;
    for (k, v) in options {
        match k.as_str() {
            PARENT_OPTION => {
                if v.is_empty() || v.len() > 15 || v.contains(['/', ' ', '\0']) {
                    return Err(Error::InvalidRequest(format!(
                        "macvlan driver: invalid {PARENT_OPTION} {v:?}: give an interface name"
                    )));
                }
                parent = Some(v.clone());
            }
            MODE_OPTION => match v.as_str() {
                "" | "bridge" => {}
                "vepa" | "private" | "passthru" | "source" => {
                    return Err(Error::InvalidRequest(format!(
                        "macvlan driver: {MODE_OPTION}={v} is not supported (only bridge)"
                    )))
                }
                other => {
                    return Err(Error::InvalidRequest(format!(
                        "macvlan driver: unknown {MODE_OPTION} {other:?} (only bridge is supported)"
                    )))
                }
            },
            MTU_OPTION => {
                crate::model::parse_mtu(v)?;
            }
            PORT_SECURITY_OPTION => {
                crate::model::parse_bool_option(k, v)?;
            }
            other => {
                return Err(Error::InvalidRequest(format!(
                    "macvlan driver: unknown option {other:?} (known: {PARENT_OPTION}, \
                     {MODE_OPTION}, {MTU_OPTION}, {PORT_SECURITY_OPTION})"
                )))
            }
        }
    }
    Ok(parent)
}

/// The parent's MTU, or a 400 saying it does not exist (in the daemon's namespace).
fn parent_mtu(parent: &str) -> Result<u32> {
    let mut h = tapnet_sandbox::netlink::Handle::new()
        .map_err(|e| Error::os("open netlink to look up the macvlan parent", e))?;
    let link = h
        .link(parent)
        .map_err(|e| Error::os(format!("look up macvlan parent {parent}"), e))?;
    let Some(link) = link else {
        let vlan = match parent.split_once('.') {
            Some((base, id)) if !base.is_empty() && id.parse::<u16>().is_ok() => format!(
                " (tapnet does not create 802.1q sub-interfaces: create it first with \
                 `ip link add link {base} name {parent} type vlan id {id}`)"
            ),
            _ => String::new(),
        };
        return Err(Error::InvalidRequest(format!(
            "macvlan driver: parent interface {parent} does not exist{vlan}"
        )));
    };
    if !link.up {
        tracing::warn!(
            parent,
            "macvlan parent is down: nothing crosses it until it is up"
        );
    }
    Ok(link.mtu.unwrap_or(1500))
}

impl MacvlanDriver {
    /// A macvlan driver whose networks live on `bridge`'s datapath.
    pub fn new(bridge: Arc<BridgeDriver>) -> MacvlanDriver {
        MacvlanDriver {
            bridge,
            networks: Mutex::new(HashMap::new()),
        }
    }

    /// Give the uplink of `network_id` its endpoints' MACs.
    fn push_macs(&self, network_id: &str) -> Result<()> {
        let macs = match lock(&self.networks).get(network_id) {
            Some(n) if n.parent.is_some() => n.macs.values().copied().collect(),
            _ => return Ok(()),
        };
        self.bridge.control_uplink(
            network_id,
            PortControl::Custom(Box::new(UplinkControl::SetMacs(macs))),
        )
    }

    /// Record `endpoint`'s MAC on its network and update the uplink's filter.
    fn add_mac(&self, req: &JoinRequest<'_>) -> Result<()> {
        if let Some(mac) = req.endpoint.mac {
            if let Some(n) = lock(&self.networks).get_mut(&req.network.id) {
                n.macs.insert(req.endpoint.id.clone(), mac);
            }
        }
        self.push_macs(&req.network.id)
    }

    /// What a joined endpoint gets: the bridge driver's description, no gateway
    /// service, and no default route on an internal network.
    fn adjust(&self, network: &Network, mut d: JoinDescription) -> JoinDescription {
        d.disable_gateway_service = true;
        if network.internal {
            d.gateway_v4 = None;
            d.gateway_v6 = None;
        }
        d
    }
}

impl Driver for MacvlanDriver {
    fn name(&self) -> &str {
        "macvlan"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            scope: Scope::Local,
            connectivity_scope: Scope::Global,
            gateway_service: false,
            ..Capabilities::default()
        }
    }

    fn validate_options(&self, options: &BTreeMap<String, String>) -> Result<()> {
        check_options(options).map(drop)
    }

    fn create_network(&self, req: &NetworkRequest<'_>) -> Result<()> {
        let network = req.network;
        let parent = check_options(&network.options)?;
        let parent = match (parent, network.internal) {
            (_, true) => None,
            (Some(p), false) => Some(p),
            (None, false) => {
                return Err(Error::InvalidRequest(format!(
                    "macvlan driver: network {} needs -o {PARENT_OPTION}=IFACE (the host \
                     interface its endpoints share), or --internal",
                    network.name
                )))
            }
        };
        if let Some(p) = &parent {
            let nets = lock(&self.networks);
            if nets.values().any(|n| n.parent.as_deref() == Some(p)) {
                return Err(Error::Conflict(format!(
                    "macvlan driver: parent {p} already has a macvlan network (one per parent)"
                )));
            }
        }
        let parent_mtu = match &parent {
            Some(p) => Some(parent_mtu(p)?),
            None => None,
        };
        let mtu = match network.options.get(MTU_OPTION) {
            Some(v) => crate::model::parse_mtu(v)?,
            // A tap takes at most MAX_MTU (a loopback parent has 65536).
            None => parent_mtu.unwrap_or(1500).min(tapnet_types::model::MAX_MTU),
        };
        let uplink: Option<Box<dyn FrameIo>> = match &parent {
            Some(p) => {
                let sock = PacketSocket::open(p)
                    .map_err(|e| Error::os(format!("open the uplink on macvlan parent {p}"), e))?;
                Some(Box::new(UplinkPort {
                    sock,
                    macs: HashSet::new(),
                    not_ours: 0,
                }))
            }
            None => None,
        };
        self.bridge
            .create_switch_network(network, mtu, uplink, false)?;
        tracing::info!(network = %network.name, ?parent, mtu, "macvlan network");
        lock(&self.networks).insert(
            network.id.clone(),
            MacvlanNetwork {
                parent,
                internal: network.internal,
                macs: BTreeMap::new(),
            },
        );
        Ok(())
    }

    fn delete_network(&self, network_id: &str) -> Result<()> {
        // Removing the switch drops the uplink port, which closes the packet socket.
        self.bridge.delete_network(network_id)?;
        lock(&self.networks).remove(network_id);
        Ok(())
    }

    fn join(&self, req: &JoinRequest<'_>) -> Result<JoinDescription> {
        let d = self.bridge.join(req)?;
        if let Err(e) = self.add_mac(req) {
            if let Err(cleanup) = self.leave(&req.network.id, &req.endpoint.id) {
                tracing::warn!(error = %cleanup, "cleanup after a failed join");
            }
            return Err(e);
        }
        Ok(self.adjust(req.network, d))
    }

    fn restore_endpoint(&self, req: &JoinRequest<'_>) -> Result<RestoreDescription> {
        let mut r = self.bridge.restore_endpoint(req)?;
        if let Err(e) = self.add_mac(req) {
            if let Err(cleanup) = self.bridge.leave(&req.network.id, &req.endpoint.id) {
                tracing::warn!(error = %cleanup, "cleanup after a failed restore");
            }
            return Err(e);
        }
        r.join = self.adjust(req.network, r.join);
        Ok(r)
    }

    fn leave(&self, network_id: &str, endpoint_id: &str) -> Result<()> {
        if let Some(n) = lock(&self.networks).get_mut(network_id) {
            n.macs.remove(endpoint_id);
        }
        if let Err(e) = self.push_macs(network_id) {
            tracing::warn!(error = %e, "updating the uplink's MACs");
        }
        self.bridge.leave(network_id, endpoint_id)
    }

    /// The switch's counters, the uplink's switch port listed among the ports with
    /// endpoint id `uplink`, and the packet socket's counters as the network's tunnel
    /// report (VNI 0, `port`: the socket's counters).
    fn report(&self, network_id: &str) -> Result<NetworkReport> {
        let mut report = self.bridge.report(network_id)?;
        if let Some(p) = self.bridge.uplink_report(network_id) {
            report.ports.push(p);
        }
        let has_uplink = lock(&self.networks)
            .get(network_id)
            .is_some_and(|n| n.parent.is_some() && !n.internal);
        if has_uplink {
            let reply = self.bridge.control_uplink_reply(
                network_id,
                PortControl::Custom(Box::new(UplinkControl::Stats)),
            )?;
            if let PortReply::Custom(any) = reply {
                if let Ok(s) = any.downcast::<PacketStatsSnapshot>() {
                    report.uplink = s.counters;
                }
            }
        }
        Ok(report)
    }

    fn capture(
        &self,
        network_id: &str,
        endpoint_id: Option<&str>,
    ) -> Result<tapnet_switch::runtime::Capture> {
        self.bridge.capture(network_id, endpoint_id)
    }

    /// The switch's FDB; MACs learned on the uplink have endpoint id `uplink`.
    fn fdb(&self, network_id: &str) -> Result<Vec<FdbRow>> {
        let mut rows = self.bridge.fdb(network_id)?;
        if let Some(port) = self.bridge.uplink_port(network_id) {
            for r in rows.iter_mut().filter(|r| r.port == port) {
                r.endpoint_id = Some("uplink".into());
            }
        }
        Ok(rows)
    }

    fn shutdown(&self) {
        self.bridge.shutdown();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn opts(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parent_and_bridge_mode_are_accepted() {
        assert_eq!(
            check_options(&opts(&[("parent", "eth0"), ("macvlan_mode", "bridge")])).unwrap(),
            Some("eth0".to_string())
        );
        assert_eq!(check_options(&opts(&[])).unwrap(), None);
        assert!(check_options(&opts(&[
            ("parent", "lan0"),
            (MTU_OPTION, "1400"),
            (PORT_SECURITY_OPTION, "false")
        ]))
        .is_ok());
    }

    #[test]
    fn other_modes_are_refused_by_name() {
        for mode in ["vepa", "private", "passthru", "weird"] {
            let e = check_options(&opts(&[("parent", "eth0"), ("macvlan_mode", mode)]))
                .unwrap_err()
                .to_string();
            assert!(e.contains(mode) && e.contains("bridge"), "{mode}: {e}");
        }
    }

    #[test]
    fn unknown_options_are_refused_by_name() {
        let e = check_options(&opts(&[("parent", "eth0"), ("ipvlan_mode", "l2")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("ipvlan_mode"), "{e}");
        let e = check_options(&opts(&[(MTU_OPTION, "x")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("x"), "{e}");
    }

    #[test]
    fn bad_parent_names_are_refused() {
        for bad in ["", "a/b", "much-too-long-interface-name"] {
            let e = check_options(&opts(&[("parent", bad)]))
                .unwrap_err()
                .to_string();
            assert!(e.contains("parent"), "{bad}: {e}");
        }
    }

    #[test]
    fn missing_parent_is_a_400_naming_it() {
        let e = parent_mtu("nosuchif0").unwrap_err();
        assert!(matches!(e, Error::InvalidRequest(_)), "{e}");
        assert!(e.to_string().contains("nosuchif0"), "{e}");
        let e = parent_mtu("nosuchif0.10").unwrap_err().to_string();
        assert!(e.contains("802.1q") && e.contains("vlan id 10"), "{e}");
    }
}
