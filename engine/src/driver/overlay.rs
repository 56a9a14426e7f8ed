//! The `overlay` driver: a bridge network whose switch has a VXLAN tunnel port.
//!
//! Contract: an overlay network is exactly a bridge network (a userspace switch, a tap
//! per endpoint, the userspace gateway `tapnet_nat` with NAT, DNS and published ports:
//! the bridge driver's code, `BridgeDriver::create_switch_network`) plus one more
//! switch port, a [`tapnet_vxlan::VxlanPort`] for the network's VNI made from the daemon's one
//! [`VxlanSocket`] (`--data-path-port`, demultiplexed by VNI, see
//! [`tapnet_vxlan::demux`]). Every other call is the bridge driver's, on the same
//! datapath and network table (the gateways isolate bridge and overlay networks from
//! each other alike).
//!
//! Without a cluster store the overlay is static: the network's options give its VNI
//! and the VTEPs of the other hosts; remote MACs are learned from the data plane
//! (unknown destinations are replicated to every peer).
//!
//! Options (anything else is refused with a 400 that names it):
//!
//! * [`VXLANID_OPTION`] `com.docker.network.driver.overlay.vxlanid_list`: the VNI,
//!   `1..=16777215` (one: tapnet overlay networks have one IPv4 subnet). Without it the
//!   VNI is derived from the network's name ([`vni_for_name`]), so hosts that give the
//!   network the same name agree on it.
//! * [`PEERS_OPTION`] `com.tapnet.overlay.peers`: `ADDR[:PORT],…`, the other hosts'
//!   VTEPs; the port defaults to the daemon's `--data-path-port`.
//! * [`MTU_OPTION`] `com.docker.network.driver.mtu`: the endpoints' MTU. Default: the
//!   underlay MTU minus the VXLAN overhead (50 over IPv4, 70 over IPv6), the underlay
//!   MTU being the path MTU the kernel has towards the first peer (`IP_MTU` of a UDP
//!   socket connected to it: the MTU of the route's interface), or 1500 without peers
//!   or for an IPv6 underlay.
//! * [`PORT_SECURITY_OPTION`] `com.tapnet.port_security`, as on bridge networks.
//! * [`ENCRYPTED_OPTION`] `encrypted` (Docker's `-o encrypted`; value empty or
//!   `true`): every tunnel datagram is sealed with AES-256-GCM
//!   ([`tapnet_vxlan::crypt`]). The port is given an empty key set before it joins
//!   the switch, so it never sends in clear: until the network's keys arrive
//!   ([`Driver::set_keys`], from the cluster store: `controller::keys`) nothing
//!   crosses the tunnel. Needs a cluster store (the controller refuses it otherwise).
//!   The default MTU is lowered by the encryption overhead
//!   ([`tapnet_vxlan::crypt::OVERHEAD`], 32): underlay − 50 − 32.
//!
//! Anycast gateway: every host runs the network's gateway with the same IP and MAC
//! (`02:42:<gateway IPv4>`, [`crate::model::mac_for`]), so a sandbox's way out is
//! always its own host (NAT, published ports, DNS). The VXLAN port is told that MAC
//! is local-only ([`VxlanControl::SetLocalOnly`]): a frame to or from it is never
//! tunnelled, nor taken from the tunnel, so each host's gateway answers only its own
//! sandboxes and no remote gateway ever shows up behind the tunnel port.
//!
//! The network's scope is `global` (Docker: overlay networks are global-scope). Without
//! a cluster store (or with [`PEERS_OPTION`]) each daemon keeps its own record: the
//! network must be created on every host with the same options. With one, the
//! controller records the network in the store and every host creates it
//! (`controller::global`); the tunnel then gets its peers, static MACs and neighbours
//! from the store through [`Driver::set_remote`] (the whole set, at adoption and
//! re-sync) and [`Driver::update_remote`] (one endpoint event's changes, one control
//! message each: `AddPeer`/`RemovePeer`, `AddRemote`/`RemoveRemote`).

use super::bridge::BridgeDriver;
use super::{
    Capabilities, Driver, FdbRow, JoinDescription, JoinRequest, NetworkReport, NetworkRequest,
    RestoreDescription, Scope, TunnelReport,
};
use crate::error::{Error, Result};
use crate::model::{MTU_OPTION, PORT_SECURITY_OPTION};
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex};
use tapnet_nat::{NameRecord, Proto, PublishSpec};
use tapnet_switch::core::MacAddr;
use tapnet_switch::runtime::{FrameIo, PortControl, PortReply};
use tapnet_vxlan::header::{OVERHEAD_V4, OVERHEAD_V6};
use tapnet_vxlan::{
    DemuxStatsSnapshot, KeySet, TableConfig, Vni, VxlanControl, VxlanSocket, VxlanStatsSnapshot,
};

/// The network's VNI (Docker's option; one value).
pub const VXLANID_OPTION: &str = "com.docker.network.driver.overlay.vxlanid_list";
/// The other hosts' VTEPs, `ADDR[:PORT],…`.
pub const PEERS_OPTION: &str = "com.tapnet.overlay.peers";
/// Seal the tunnel's datagrams (Docker's `-o encrypted`).
pub const ENCRYPTED_OPTION: &str = "encrypted";
/// The underlay MTU assumed when it cannot be found.
pub const DEFAULT_UNDERLAY_MTU: u32 = 1500;
/// The first VNI [`vni_for_name`] gives (Docker's overlay allocates from 4096 up too).
pub const FIRST_DERIVED_VNI: u32 = 4096;

/// The VNI of a network named `name` that has no [`VXLANID_OPTION`]: FNV-1a (32 bit)
/// of the name, mapped into `4096..=16777215`. Deterministic, so every host derives
/// the same VNI for the same name; two names may collide (a second network on a taken
/// VNI is refused with a 409): give the option to choose.
pub fn vni_for_name(name: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in name.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    FIRST_DERIVED_VNI + h % (Vni::MAX - FIRST_DERIVED_VNI + 1)
}

/// Parse [`VXLANID_OPTION`]: one VNI in `1..=16777215`.
pub fn parse_vni(v: &str) -> Result<Vni> {
    let bad = |why: &str| {
        Error::InvalidRequest(format!(
            "invalid {VXLANID_OPTION} {v:?}: {why} (give one VNI, 1-16777215)"
        ))
    };
    let items: Vec<&str> = v
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    let [one] = items.as_slice() else {
        return Err(bad("a tapnet overlay network has exactly one VNI"));
    };
    let n: u32 = one.parse().map_err(|_| bad("not a number"))?;
    if n == 0 {
        return Err(bad("VNI 0 is reserved"));
    }
    Vni::new(n).ok_or_else(|| bad("out of range"))
}

/// Whether `options` ask for an encrypted network ([`ENCRYPTED_OPTION`]: empty or
/// `true`; anything else is refused).
pub fn parse_encrypted(options: &BTreeMap<String, String>) -> Result<bool> {
    match options.get(ENCRYPTED_OPTION).map(String::as_str) {
        None => Ok(false),
        Some("" | "true") => Ok(true),
        Some(v) => Err(Error::InvalidRequest(format!(
            "invalid option {ENCRYPTED_OPTION}={v:?}: give -o {ENCRYPTED_OPTION} (or {ENCRYPTED_OPTION}=true)"
        ))),
    }
}

/// Parse [`PEERS_OPTION`]: `ADDR[:PORT],…` (IPv6 with a port: `[ADDR]:PORT`); the port
/// defaults to `default_port`.
pub fn parse_peers(v: &str, default_port: u16) -> Result<Vec<SocketAddr>> {
    let mut peers = Vec::new();
    for item in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let addr = if let Ok(a) = item.parse::<SocketAddr>() {
            a
        } else if let Ok(ip) = item.parse::<IpAddr>() {
            SocketAddr::new(ip, default_port)
        } else {
            return Err(Error::InvalidRequest(format!(
                "invalid {PEERS_OPTION} entry {item:?}: give ADDR or ADDR:PORT ([ADDR]:PORT for IPv6)"
            )));
        };
        if addr.port() == 0 || addr.ip().is_unspecified() || addr.ip().is_multicast() {
            return Err(Error::InvalidRequest(format!(
                "invalid {PEERS_OPTION} entry {item:?}: not a unicast address and port"
            )));
        }
        if !peers.contains(&addr) {
            peers.push(addr);
        }
    }
    Ok(peers)
}

/// The endpoints' MTU by default: the underlay's path MTU towards `peer` (the MTU of
/// the interface routing to it), or [`DEFAULT_UNDERLAY_MTU`], minus the overhead.
pub fn default_mtu(peer: Option<SocketAddr>) -> u32 {
    let underlay = peer.and_then(|p| match p {
        SocketAddr::V4(_) => {
            let s = UdpSocket::bind(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0)).ok()?;
            s.connect(p).ok()?;
            let mtu = nix::sys::socket::getsockopt(&s, nix::sys::socket::sockopt::IpMtu).ok()?;
            u32::try_from(mtu).ok()
        }
        SocketAddr::V6(_) => None,
    });
    let overhead = match peer {
        Some(SocketAddr::V6(_)) => OVERHEAD_V6,
        _ => OVERHEAD_V4,
    };
    let overhead = u32::try_from(overhead).unwrap_or(50);
    underlay
        .unwrap_or(DEFAULT_UNDERLAY_MTU)
        .saturating_sub(overhead)
        .max(68)
}

/// The `overlay` driver (see the module doc).
pub struct OverlayDriver {
    bridge: Arc<BridgeDriver>,
    /// Where the VXLAN socket binds (`--data-path-addr`, `--data-path-port`).
    bind: SocketAddr,
    /// The daemon's VXLAN socket, bound by the first overlay network.
    socket: Mutex<Option<Arc<VxlanSocket>>>,
    /// Each network's VNI (for its report).
    vnis: Mutex<HashMap<String, u32>>,
}

impl std::fmt::Debug for OverlayDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OverlayDriver")
            .field("bind", &self.bind)
            .finish_non_exhaustive()
    }
}

impl OverlayDriver {
    /// An overlay driver whose networks live on `bridge`'s datapath and tunnel over one
    /// UDP socket bound at `bind` (port 0: ephemeral) when the first overlay network is
    /// created or restored, so a daemon without overlay networks never takes the port.
    pub fn new(bridge: Arc<BridgeDriver>, bind: SocketAddr) -> Self {
        OverlayDriver {
            bridge,
            bind,
            socket: Mutex::new(None),
            vnis: Mutex::new(HashMap::new()),
        }
    }

    /// The daemon's VXLAN socket, bound now if it is not yet (a failure is a 500 naming
    /// the address and the flags).
    pub fn socket(&self) -> Result<Arc<VxlanSocket>> {
        let mut guard = self.socket.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = guard.as_ref() {
            return Ok(Arc::clone(s));
        }
        let s = VxlanSocket::bind(self.bind).map_err(|e| {
            Error::Driver(format!(
                "bind the VXLAN socket {} (tapnetd --data-path-addr/--data-path-port): {e}",
                self.bind
            ))
        })?;
        let s = Arc::new(s);
        if let Ok(a) = s.local_addr() {
            tracing::info!(bound = %a, "VXLAN socket (overlay data path)");
        }
        *guard = Some(Arc::clone(&s));
        Ok(s)
    }
}

impl Driver for OverlayDriver {
    fn name(&self) -> &str {
        "overlay"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            scope: Scope::Global,
            connectivity_scope: Scope::Global,
            gateway_service: true,
            ..Capabilities::default()
        }
    }

    fn validate_options(&self, options: &BTreeMap<String, String>) -> Result<()> {
        for (k, v) in options {
            match k.as_str() {
                VXLANID_OPTION => {
                    parse_vni(v)?;
                }
                PEERS_OPTION => {
                    // Syntax only: the default port is known once the socket is bound.
                    parse_peers(v, self.bind.port().max(1))?;
                }
                MTU_OPTION => {
                    crate::model::parse_mtu(v)?;
                }
                PORT_SECURITY_OPTION => {
                    crate::model::parse_bool_option(k, v)?;
                }
                ENCRYPTED_OPTION => {
                    parse_encrypted(options)?;
                }
                other => {
                    return Err(Error::InvalidRequest(format!(
                        "overlay driver: unknown option {other:?} (known: {VXLANID_OPTION}, \
                         {PEERS_OPTION}, {MTU_OPTION}, {PORT_SECURITY_OPTION}, {ENCRYPTED_OPTION})"
                    )))
                }
            }
        }
        Ok(())
    }

    fn create_network(&self, req: &NetworkRequest<'_>) -> Result<()> {
        let network = req.network;
        let vni = match network.options.get(VXLANID_OPTION) {
            Some(v) => parse_vni(v)?,
            None => parse_vni(&vni_for_name(&network.name).to_string())?,
        };
        let socket = self.socket()?;
        // Peers given without a port are on the port this daemon uses.
        let default_port = match socket.local_addr() {
            Ok(a) => a.port(),
            Err(_) => self.bind.port(),
        };
        let peers = match network.options.get(PEERS_OPTION) {
            Some(v) => parse_peers(v, default_port)?,
            None => Vec::new(),
        };
        let encrypted = parse_encrypted(&network.options)?;
        let mtu = match network.options.get(MTU_OPTION) {
            Some(v) => crate::model::parse_mtu(v)?,
            None if encrypted => default_mtu(peers.first().copied())
                .saturating_sub(u32::try_from(tapnet_vxlan::crypt::OVERHEAD).unwrap_or(32))
                .max(68),
            None => default_mtu(peers.first().copied()),
        };
        let Some(gw4) = network.gateway else {
            return Err(Error::InvalidRequest(format!(
                "overlay network {} has no IPv4 subnet and gateway",
                network.name
            )));
        };
        let mut port = socket
            .port(vni, TableConfig::default())
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::AddrInUse => Error::Conflict(format!(
                    "VNI {vni} is used by another overlay network (set {VXLANID_OPTION})"
                )),
                _ => Error::Driver(format!("VXLAN port of network {}: {e}", network.name)),
            })?;
        // The anycast gateway's MAC stays off the tunnel.
        let gateway_mac = MacAddr(crate::model::mac_for(gw4));
        let mut msgs = vec![
            VxlanControl::SetPeers(peers.clone()),
            VxlanControl::SetLocalOnly(vec![gateway_mac]),
        ];
        if encrypted {
            // No key yet: nothing is sent (never in clear) until set_keys.
            msgs.push(VxlanControl::SetKeys(KeySet::default()));
        }
        for msg in msgs {
            port.control(PortControl::Custom(Box::new(msg)))
                .map_err(|e| Error::Driver(format!("configure the VXLAN port: {e}")))?;
        }
        tracing::info!(
            network = %network.name,
            %vni,
            ?peers,
            mtu,
            encrypted,
            "overlay network: VXLAN port on the daemon's socket"
        );
        self.bridge
            .create_switch_network(network, mtu, Some(Box::new(port)), true)?;
        self.vnis
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(network.id.clone(), vni.get());
        Ok(())
    }

    fn delete_network(&self, network_id: &str) -> Result<()> {
        // Removing the switch drops the VXLAN port, which unregisters its VNI.
        self.bridge.delete_network(network_id)?;
        self.vnis
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(network_id);
        Ok(())
    }

    fn join(&self, req: &JoinRequest<'_>) -> Result<JoinDescription> {
        self.bridge.join(req)
    }

    fn restore_endpoint(&self, req: &JoinRequest<'_>) -> Result<RestoreDescription> {
        self.bridge.restore_endpoint(req)
    }

    fn leave(&self, network_id: &str, endpoint_id: &str) -> Result<()> {
        self.bridge.leave(network_id, endpoint_id)
    }

    fn set_names(&self, network_id: &str, names: Vec<NameRecord>) -> Result<()> {
        self.bridge.set_names(network_id, names)
    }

    fn update_names(
        &self,
        network_id: &str,
        removed: Vec<NameRecord>,
        added: Vec<NameRecord>,
    ) -> Result<bool> {
        self.bridge.update_names(network_id, removed, added)
    }

    fn publish(&self, network_id: &str, spec: PublishSpec) -> Result<SocketAddr> {
        self.bridge.publish(network_id, spec)
    }

    fn unpublish(&self, network_id: &str, proto: Proto, addr: SocketAddr) -> Result<()> {
        self.bridge.unpublish(network_id, proto, addr)
    }

    fn report(&self, network_id: &str) -> Result<NetworkReport> {
        let mut report = self.bridge.report(network_id)?;
        let reply = self.bridge.control_uplink_reply(
            network_id,
            PortControl::Custom(Box::new(VxlanControl::Stats)),
        )?;
        let PortReply::Custom(any) = reply else {
            return Err(Error::Driver(format!(
                "the VXLAN port of network {network_id} did not answer its counters"
            )));
        };
        let Ok(p) = any.downcast::<VxlanStatsSnapshot>() else {
            return Err(Error::Driver(format!(
                "the VXLAN port of network {network_id} answered something else than counters"
            )));
        };
        let s = match self
            .socket
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            Some(sock) => sock.stats(),
            None => DemuxStatsSnapshot::default(),
        };
        let vni = self
            .vnis
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(network_id)
            .copied()
            .unwrap_or_default();
        report.tunnel = Some(TunnelReport {
            vni,
            port: vec![
                ("tx_frames", p.tx_frames),
                ("tx_datagrams", p.tx_datagrams),
                ("tx_flooded", p.tx_flooded),
                ("tx_errors", p.tx_errors),
                ("tx_invalid", p.tx_invalid),
                ("suppressed", p.suppressed),
                ("rx_datagrams", p.rx_datagrams),
                ("rx_malformed", p.rx_malformed),
                ("rx_wrong_vni", p.rx_wrong_vni),
                ("rx_too_long", p.rx_too_long),
                ("rx_errors", p.rx_errors),
                ("learned", p.learned),
                ("learn_refused", p.learn_refused),
                ("local_only", p.local_only),
                ("auth_failed", p.auth_failed),
                ("tx_no_key", p.tx_no_key),
                ("tx_bytes", p.tx_bytes),
                ("rx_bytes", p.rx_bytes),
                ("unknown_vtep", p.unknown_vtep),
                ("rx_merged", p.rx_merged),
                ("gso_refused", p.gso_refused),
                ("tx_gathered", p.tx_gathered),
            ],
            socket: vec![
                ("datagrams", s.datagrams),
                ("read_by_port", s.read_by_port),
                ("malformed", s.malformed),
                ("unknown_vni", s.unknown_vni),
                ("rx_queue_full", s.rx_queue_full),
            ],
        });
        Ok(report)
    }

    fn capture(
        &self,
        network_id: &str,
        endpoint_id: Option<&str>,
    ) -> Result<tapnet_switch::runtime::Capture> {
        self.bridge.capture(network_id, endpoint_id)
    }

    /// The switch's FDB, each MAC behind the tunnel with the VTEP the tunnel sends it
    /// to (its static or learned entry); a remote endpoint the store announced that has
    /// not sent anything yet is listed too (on the tunnel's port, age 0).
    fn fdb(&self, network_id: &str) -> Result<Vec<FdbRow>> {
        let mut rows = self.bridge.fdb(network_id)?;
        let reply = self.bridge.control_uplink_reply(
            network_id,
            PortControl::Custom(Box::new(VxlanControl::Entries)),
        )?;
        let PortReply::Custom(any) = reply else {
            return Ok(rows);
        };
        let Ok(entries) = any.downcast::<Vec<(MacAddr, SocketAddr)>>() else {
            return Ok(rows);
        };
        let tunnel_port = self.bridge.uplink_port(network_id);
        for (mac, vtep) in entries.iter() {
            match rows.iter_mut().find(|r| r.mac.0 == mac.0) {
                Some(r) => {
                    if Some(r.port) == tunnel_port {
                        r.vtep = Some(*vtep);
                    }
                }
                None => {
                    if let Some(port) = tunnel_port {
                        rows.push(FdbRow {
                            mac: *mac,
                            port,
                            endpoint_id: None,
                            age_seconds: 0.0,
                            vtep: Some(*vtep),
                        });
                    }
                }
            }
        }
        rows.sort_by_key(|r| (r.port, r.mac));
        Ok(rows)
    }

    fn set_remote(&self, network_id: &str, remote: &super::RemoteEndpoints) -> Result<()> {
        let statics = remote
            .statics
            .iter()
            .map(|(m, v)| (MacAddr(*m), *v))
            .collect();
        let neighbours = remote
            .neighbours
            .iter()
            .map(|(ip, m)| (*ip, MacAddr(*m)))
            .collect();
        for msg in [
            VxlanControl::SetPeers(remote.peers.clone()),
            VxlanControl::SetStatics(statics),
            VxlanControl::SetNeighbours(neighbours),
        ] {
            self.bridge
                .control_uplink(network_id, PortControl::Custom(Box::new(msg)))?;
        }
        Ok(())
    }

    fn update_remote(&self, network_id: &str, changes: &[super::RemoteChange]) -> Result<bool> {
        use super::RemoteChange as C;
        for c in changes {
            let msg = match c {
                C::AddPeer(p) => VxlanControl::AddPeer(*p),
                C::RemovePeer(p) => VxlanControl::RemovePeer(*p),
                C::AddEndpoint { mac, vtep, ips } => VxlanControl::AddRemote {
                    mac: MacAddr(*mac),
                    vtep: *vtep,
                    ips: ips.clone(),
                },
                C::RemoveEndpoint { mac, vtep, ips } => VxlanControl::RemoveRemote {
                    mac: MacAddr(*mac),
                    vtep: *vtep,
                    ips: ips.clone(),
                },
            };
            self.bridge
                .control_uplink(network_id, PortControl::Custom(Box::new(msg)))?;
        }
        Ok(true)
    }

    fn set_keys(&self, network_id: &str, keys: &KeySet) -> Result<()> {
        self.bridge.control_uplink(
            network_id,
            PortControl::Custom(Box::new(VxlanControl::SetKeys(keys.clone()))),
        )?;
        Ok(())
    }

    fn shutdown(&self) {
        // The datapath is the bridge driver's (it stops it once, whichever is first).
        self.bridge.shutdown();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn vni_option_is_checked() {
        assert_eq!(parse_vni("4242").unwrap().get(), 4242);
        assert_eq!(parse_vni("16777215").unwrap().get(), 16_777_215);
        for bad in ["0", "16777216", "x", "", "1,2", "-1"] {
            let e = parse_vni(bad).unwrap_err().to_string();
            assert!(e.contains(VXLANID_OPTION), "{bad}: {e}");
        }
    }

    #[test]
    fn derived_vni_is_stable_and_in_range() {
        let a = vni_for_name("ov1");
        assert_eq!(a, vni_for_name("ov1"));
        assert_ne!(a, vni_for_name("ov2"));
        for n in ["", "a", "a-very-long-network-name-indeed"] {
            let v = vni_for_name(n);
            assert!((FIRST_DERIVED_VNI..=Vni::MAX).contains(&v), "{n}: {v}");
        }
    }

    #[test]
    fn peers_parse_with_default_port() {
        let p = parse_peers(
            "192.0.2.2, 192.0.2.3:5000,[2001:db8::1]:4790,2001:db8::2",
            4789,
        )
        .unwrap();
        let want: Vec<SocketAddr> = [
            "192.0.2.2:4789",
            "192.0.2.3:5000",
            "[2001:db8::1]:4790",
            "[2001:db8::2]:4789",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        assert_eq!(p, want);
        for bad in ["host.example", "0.0.0.0", "224.0.0.1", "192.0.2.1:0"] {
            assert!(parse_peers(bad, 4789).is_err(), "{bad}");
        }
    }

    #[test]
    fn encrypted_option_is_checked() {
        let o = |v: &str| BTreeMap::from([(ENCRYPTED_OPTION.to_string(), v.to_string())]);
        assert!(parse_encrypted(&o("")).unwrap());
        assert!(parse_encrypted(&o("true")).unwrap());
        assert!(!parse_encrypted(&BTreeMap::new()).unwrap());
        for bad in ["false", "yes", "1"] {
            let e = parse_encrypted(&o(bad)).unwrap_err().to_string();
            assert!(e.contains(ENCRYPTED_OPTION), "{bad}: {e}");
        }
    }

    #[test]
    fn default_mtu_without_peers_is_1450() {
        assert_eq!(default_mtu(None), 1450);
    }
}
