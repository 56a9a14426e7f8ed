//! The sandbox layer: applies to a sandbox what a driver describes, and undoes it.
//!
//! Contract:
//! * A driver's [`JoinDescription`] says what the endpoint needs in its sandbox: a
//!   device (moved in from the host namespace, or made in place), its name prefix,
//!   MAC, MTU, txqueuelen and addresses, the gateways and static routes. The layer
//!   turns it into an [`iface::Spec`] and has a [`SandboxOps`] carry it out (in the
//!   daemon: [`NetlinkOps`], i.e. [`tapnet_sandbox::iface`]); it keeps, per endpoint,
//!   the record of what was done, and undoes exactly that on leave. No driver
//!   configures an interface itself.
//! * Naming: the interface becomes the first free `<dst_prefix>N` in the sandbox (an
//!   empty prefix keeps its name), or the name the connect asked for
//!   (`com.docker.network.endpoint.ifname`, passed to [`SandboxLayer::apply`]); a
//!   restore uses the recorded name. The endpoint's link-local addresses are added to
//!   the description's ([`with_link_local`]) at connect and restore. An interface
//!   without an IPv6 address gets IPv6 turned off (as dockerd does). Default routes
//!   go via the gateways only where the sandbox has none of that family yet.
//! * The CNM sequence is the controller's: its connect runs `create_endpoint` →
//!   `join` → [`SandboxLayer::apply`] as transaction steps, each undone by the
//!   transaction (`delete_endpoint`, `leave`, [`SandboxLayer::undo`]); disconnect
//!   runs them backwards. [`SandboxLayer::restore`] is the daemon-start sequence:
//!   `restore_endpoint`, then apply under the recorded name when the device was
//!   re-created, or only record the description (assumed applied,
//!   [`iface::Applied::assumed`]) when the device survived.
//! * Hand-off sandboxes ([`crate::model::Sandbox::handoff`], dockerd through the
//!   Docker plugin): the driver made the device in the daemon's namespace;
//!   [`SandboxLayer::hand_off`] sets only its MAC, MTU and txqueuelen there, leaves it
//!   down and records the description; the runtime moves, renames and configures it,
//!   and undoes that itself, so undo only forgets the record. On restore
//!   ([`SandboxLayer::restore_handed_off`]) the device found in the sandbox is re-opened
//!   and recorded; one that had to be re-created is refused (the runtime would not
//!   configure it again).
//! * Records live in memory; after a daemon restart [`SandboxLayer::restore`] rebuilds
//!   them. An endpoint without a record (no device, or never restored) has nothing to
//!   undo.

use crate::driver::{
    Driver, InterfaceSource, JoinDescription, JoinRequest, RestoreDescription, Restored,
};
use crate::error::{Error, Result};
use crate::model::{Endpoint, Network};
use ipnet::IpNet;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use tapnet_sandbox::iface::{self, Applied, Naming, Source, Spec};
use tapnet_sandbox::netlink::Route;
use tapnet_sandbox::netns::Netns;

/// What carries out a [`Spec`] in a sandbox and undoes it.
pub trait SandboxOps: Send + Sync {
    /// Do what `spec` says in `sandbox`; on failure leave nothing behind.
    fn apply(&self, sandbox: &Netns, spec: &Spec) -> tapnet_sandbox::Result<Applied>;
    /// Reverse `applied`.
    fn undo(&self, sandbox: &Netns, applied: &Applied) -> tapnet_sandbox::Result<()>;
}

/// The real thing: [`iface::apply`] and [`iface::undo`] (netlink, sysctl).
#[derive(Debug, Clone, Copy, Default)]
pub struct NetlinkOps;

impl SandboxOps for NetlinkOps {
    fn apply(&self, sandbox: &Netns, spec: &Spec) -> tapnet_sandbox::Result<Applied> {
        iface::apply(sandbox, spec)
    }
    fn undo(&self, sandbox: &Netns, applied: &Applied) -> tapnet_sandbox::Result<()> {
        iface::undo(sandbox, applied)
    }
}

/// One endpoint's record: where, and what was done.
struct Record {
    sandbox: Arc<Netns>,
    applied: Applied,
    /// The description applied (so a rolled-back leave can apply it again).
    join: JoinDescription,
    /// The device was handed to the sandbox's runtime ([`SandboxLayer::hand_off`]):
    /// what is done in the sandbox is the runtime's to undo, so undo only forgets.
    handed_off: bool,
}

/// The sandbox layer (see the module doc).
pub struct SandboxLayer {
    ops: Box<dyn SandboxOps>,
    records: Mutex<HashMap<String, Record>>,
}

impl std::fmt::Debug for SandboxLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SandboxLayer").finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The [`iface::Spec`] of `join`, with the interface named `name` if given (restore),
/// else by its prefix. `None` without an interface.
pub fn spec_of(join: &JoinDescription, name: Option<&str>) -> Result<Option<Spec>> {
    let Some(desc) = &join.interface else {
        if join.gateway_v4.is_some() || join.gateway_v6.is_some() || !join.static_routes.is_empty()
        {
            return Err(Error::Driver(
                "the driver described gateways or routes but no interface".into(),
            ));
        }
        return Ok(None);
    };
    let mut spec = Spec::new(match &desc.source {
        InterfaceSource::MoveIn { host_name } => Source::MoveIn {
            host_name: host_name.clone(),
        },
        InterfaceSource::InSandbox { name } => Source::InSandbox { name: name.clone() },
    });
    spec.naming = match name {
        Some(n) => Naming::Exact(n.to_string()),
        None if desc.dst_prefix.is_empty() => Naming::Keep,
        None => Naming::NextFree(desc.dst_prefix.clone()),
    };
    spec.mac = desc.mac;
    spec.mtu = desc.mtu;
    spec.txqueuelen = desc.txqueuelen;
    spec.addresses = desc
        .addresses
        .iter()
        .map(|a| (a.addr(), a.prefix_len()))
        .collect();
    spec.disable_ipv6 = !desc.addresses.iter().any(|a| matches!(a, IpNet::V6(_)));
    spec.gateway_v4 = join.gateway_v4;
    spec.gateway_v6 = join.gateway_v6;
    spec.routes = join
        .static_routes
        .iter()
        .map(|r| Route {
            destination: r.destination.network(),
            prefix_len: r.destination.prefix_len(),
            gateway: r.next_hop,
            oif: None,
        })
        .collect();
    Ok(Some(spec))
}

/// `join` with the endpoint's link-local addresses (`LinkLocalIPs`) added to its
/// interface: IPv4 ones as /16, IPv6 ones as /64; an address already there is not
/// added twice. Without an interface, `join` as it is.
pub fn with_link_local(join: &JoinDescription, ips: &[std::net::IpAddr]) -> JoinDescription {
    let mut join = join.clone();
    if let Some(desc) = join.interface.as_mut() {
        for ip in ips {
            let len = if ip.is_ipv4() { 16 } else { 64 };
            if let Ok(net) = IpNet::new(*ip, len) {
                if !desc.addresses.iter().any(|a| a.addr() == *ip) {
                    desc.addresses.push(net);
                }
            }
        }
    }
    join
}

/// "configure eth0 in sandbox sb1", "move veth12 into sandbox sb1": for errors.
fn what(spec: &Spec, sandbox_name: &str) -> String {
    match &spec.source {
        Source::MoveIn { host_name } => {
            format!("move {host_name} into sandbox {sandbox_name} and configure it")
        }
        Source::InSandbox { name } => format!("configure {name} in sandbox {sandbox_name}"),
    }
}

impl SandboxLayer {
    /// A layer that carries descriptions out with `ops`.
    pub fn new(ops: impl SandboxOps + 'static) -> SandboxLayer {
        SandboxLayer {
            ops: Box::new(ops),
            records: Mutex::new(HashMap::new()),
        }
    }

    /// The daemon's layer: [`NetlinkOps`].
    pub fn netlink() -> SandboxLayer {
        SandboxLayer::new(NetlinkOps)
    }

    /// Apply `join` for endpoint `endpoint_id` in `sandbox` (interface named `name`,
    /// or the next free `<dst_prefix>N`) and record it. Returns the interface's name
    /// (empty without an interface). On failure nothing is applied or recorded.
    pub fn apply(
        &self,
        endpoint_id: &str,
        sandbox: &Arc<Netns>,
        sandbox_name: &str,
        join: &JoinDescription,
        name: Option<&str>,
    ) -> Result<String> {
        let Some(spec) = spec_of(join, name)? else {
            return Ok(String::new());
        };
        let applied = self
            .ops
            .apply(sandbox, &spec)
            .map_err(|e| Error::os(what(&spec, sandbox_name), e))?;
        let ifname = applied.name.clone();
        lock(&self.records).insert(
            endpoint_id.to_string(),
            Record {
                sandbox: Arc::clone(sandbox),
                applied,
                join: join.clone(),
                handed_off: false,
            },
        );
        Ok(ifname)
    }

    /// A hand-off sandbox's join (see [`crate::model::Sandbox::handoff`]): the
    /// driver made the device in `host` (the daemon's namespace, which it was given as
    /// the sandbox); set its MAC, MTU and txqueuelen there and leave it down, under its
    /// name, with no address or route: the runtime moves it into the sandbox, renames
    /// and configures it. Records the description (undo only forgets it). Returns the
    /// device's name in `host`.
    pub fn hand_off(
        &self,
        endpoint_id: &str,
        host: &Arc<Netns>,
        join: &JoinDescription,
    ) -> Result<String> {
        let Some(mut spec) = spec_of(join, None)? else {
            return Ok(String::new());
        };
        spec.naming = Naming::Keep;
        spec.addresses.clear();
        spec.disable_ipv6 = false;
        spec.gateway_v4 = None;
        spec.gateway_v6 = None;
        spec.routes.clear();
        spec.leave_down = true;
        let applied = self.ops.apply(host, &spec).map_err(|e| {
            Error::os(
                format!("prepare the device to hand off ({})", what(&spec, "host")),
                e,
            )
        })?;
        let ifname = applied.name.clone();
        lock(&self.records).insert(
            endpoint_id.to_string(),
            Record {
                sandbox: Arc::clone(host),
                applied,
                join: join.clone(),
                handed_off: true,
            },
        );
        Ok(ifname)
    }

    /// Record a handed-off device that survived a daemon restart (undo only forgets).
    pub fn adopt_handed_off(
        &self,
        endpoint_id: &str,
        sandbox: &Arc<Netns>,
        join: &JoinDescription,
        name: &str,
    ) -> Result<()> {
        self.adopt(endpoint_id, sandbox, join, name)?;
        if let Some(r) = lock(&self.records).get_mut(endpoint_id) {
            r.handed_off = true;
        }
        Ok(())
    }

    /// Whether `endpoint_id`'s device was handed off to its sandbox's runtime.
    pub fn is_handed_off(&self, endpoint_id: &str) -> bool {
        lock(&self.records)
            .get(endpoint_id)
            .is_some_and(|r| r.handed_off)
    }

    /// Record `join` as applied, under `name`, without touching the sandbox (an
    /// interface that survived a daemon restart), so a later undo reverses it.
    pub fn adopt(
        &self,
        endpoint_id: &str,
        sandbox: &Arc<Netns>,
        join: &JoinDescription,
        name: &str,
    ) -> Result<()> {
        let Some(spec) = spec_of(join, Some(name))? else {
            return Ok(());
        };
        lock(&self.records).insert(
            endpoint_id.to_string(),
            Record {
                sandbox: Arc::clone(sandbox),
                applied: Applied::assumed(&spec, name),
                join: join.clone(),
                handed_off: false,
            },
        );
        Ok(())
    }

    /// The description applied for `endpoint_id`, if any.
    pub fn description(&self, endpoint_id: &str) -> Option<JoinDescription> {
        lock(&self.records).get(endpoint_id).map(|r| r.join.clone())
    }

    /// Undo what was applied for `endpoint_id` and forget it (nothing recorded:
    /// nothing to do).
    pub fn undo(&self, endpoint_id: &str) -> Result<()> {
        let Some(rec) = lock(&self.records).remove(endpoint_id) else {
            return Ok(());
        };
        if rec.handed_off {
            return Ok(());
        }
        self.ops.undo(&rec.sandbox, &rec.applied).map_err(|e| {
            Error::os(
                format!(
                    "undo the setup of {} in {}",
                    rec.applied.name,
                    rec.sandbox.path().display()
                ),
                e,
            )
        })
    }

    /// Daemon restart: the driver's `restore_endpoint`, then apply its description
    /// under the recorded interface name if the device was re-created (on failure the
    /// driver leaves again), or record it as applied if the device survived.
    pub fn restore(
        &self,
        driver: &dyn Driver,
        network: &Network,
        endpoint: &Endpoint,
        sandbox: &Arc<Netns>,
        sandbox_name: &str,
    ) -> Result<Restored> {
        let restored = driver.restore_endpoint(&JoinRequest {
            network,
            endpoint,
            sandbox,
            sandbox_name,
        })?;
        let name = Some(endpoint.interface.as_str()).filter(|n| !n.is_empty());
        let restored = RestoreDescription {
            how: restored.how,
            join: with_link_local(&restored.join, &endpoint.link_local_ips),
        };
        let done = match (restored.how, name) {
            (Restored::Reopened, Some(name)) => {
                self.adopt(&endpoint.id, sandbox, &restored.join, name)
            }
            (Restored::Reopened, None) => Ok(()),
            (Restored::Recreated, name) => self
                .apply(&endpoint.id, sandbox, sandbox_name, &restored.join, name)
                .map(drop),
        };
        if let Err(e) = done {
            if let Err(cleanup) = driver.leave(&network.id, &endpoint.id) {
                tracing::warn!(error = %cleanup, "cleanup after a failed restore");
            }
            return Err(e);
        }
        Ok(restored.how)
    }
}

impl SandboxLayer {
    /// Daemon restart of an endpoint of a hand-off sandbox: its device was found in
    /// the sandbox as `endpoint.interface` (the runtime renamed it); the driver
    /// re-opens it and the description is recorded as handed off. A device the driver
    /// had to re-create is not handed over again (the runtime configured the first
    /// one): the driver leaves and the endpoint fails to restore.
    pub fn restore_handed_off(
        &self,
        driver: &dyn Driver,
        network: &Network,
        endpoint: &Endpoint,
        sandbox: &Arc<Netns>,
        sandbox_name: &str,
    ) -> Result<Restored> {
        let restored = driver.restore_endpoint(&JoinRequest {
            network,
            endpoint,
            sandbox,
            sandbox_name,
        })?;
        let done = match restored.how {
            Restored::Reopened => {
                self.adopt_handed_off(&endpoint.id, sandbox, &restored.join, &endpoint.interface)
            }
            Restored::Recreated => Err(Error::Driver(format!(
                "the device of endpoint {} is gone from sandbox {sandbox_name}, whose runtime configured it",
                endpoint.id
            ))),
        };
        if let Err(e) = done {
            if let Err(cleanup) = driver.leave(&network.id, &endpoint.id) {
                tracing::warn!(error = %cleanup, "cleanup after a failed restore");
            }
            return Err(e);
        }
        Ok(restored.how)
    }
}

/// Test ops: apply records what [`iface::apply`] would have done, with no OS call
/// (the prefix names the interface `<prefix>0`); undo does nothing.
#[cfg(test)]
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct DryRun;

#[cfg(test)]
impl SandboxOps for DryRun {
    fn apply(&self, _: &Netns, spec: &Spec) -> tapnet_sandbox::Result<Applied> {
        let name = match (&spec.naming, &spec.source) {
            (Naming::Exact(n), _) => n.clone(),
            (Naming::NextFree(prefix), _) => format!("{prefix}0"),
            (Naming::Keep, Source::InSandbox { name }) => name.clone(),
            (Naming::Keep, Source::MoveIn { host_name }) => host_name.clone(),
        };
        Ok(Applied::assumed(spec, &name))
    }
    fn undo(&self, _: &Netns, _: &Applied) -> tapnet_sandbox::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::driver::{InterfaceDescription, StaticRoute};
    use std::net::{IpAddr, Ipv4Addr};

    pub(super) fn description() -> JoinDescription {
        JoinDescription {
            interface: Some(InterfaceDescription {
                source: InterfaceSource::MoveIn {
                    host_name: "veth1".into(),
                },
                dst_prefix: "eth".into(),
                mac: Some([2, 0x42, 10, 0, 0, 2]),
                mtu: Some(1450),
                txqueuelen: None,
                addresses: vec!["10.0.0.2/24".parse().unwrap()],
            }),
            gateway_v4: Some(Ipv4Addr::new(10, 0, 0, 1)),
            gateway_v6: None,
            static_routes: vec![StaticRoute {
                destination: "192.168.7.9/24".parse().unwrap(),
                next_hop: None,
            }],
            disable_gateway_service: false,
        }
    }

    #[test]
    fn description_to_spec() {
        let spec = spec_of(&description(), None).unwrap().unwrap();
        assert_eq!(
            spec.source,
            Source::MoveIn {
                host_name: "veth1".into()
            }
        );
        assert_eq!(spec.naming, Naming::NextFree("eth".into()));
        assert_eq!(spec.mtu, Some(1450));
        assert_eq!(
            spec.addresses,
            vec![(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)), 24)]
        );
        // No IPv6 address: IPv6 off on the interface.
        assert!(spec.disable_ipv6);
        // Host bits of a route's destination are dropped.
        assert_eq!(
            spec.routes[0].destination,
            IpAddr::V4(Ipv4Addr::new(192, 168, 7, 0))
        );
        assert_eq!(spec.routes[0].gateway, None);
        // Restore: the recorded name.
        let spec = spec_of(&description(), Some("eth3")).unwrap().unwrap();
        assert_eq!(spec.naming, Naming::Exact("eth3".into()));
        // An empty prefix keeps the name; an IPv6 address keeps IPv6 on.
        let mut d = description();
        if let Some(i) = d.interface.as_mut() {
            i.dst_prefix.clear();
            i.addresses.push("fd00::2/64".parse().unwrap());
        }
        let spec = spec_of(&d, None).unwrap().unwrap();
        assert_eq!(spec.naming, Naming::Keep);
        assert!(!spec.disable_ipv6);
        // No interface: nothing to do, unless routes or gateways are described.
        assert_eq!(spec_of(&JoinDescription::default(), None).unwrap(), None);
        let mut d = description();
        d.interface = None;
        assert!(matches!(spec_of(&d, None), Err(Error::Driver(_))));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod lifecycle_tests {
    use super::tests::description;
    use super::*;
    use crate::driver::{
        EndpointDescription, EndpointRequest, InterfaceDescription, NetworkRequest,
        RestoreDescription,
    };
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering};

    /// Ops that refuse every apply.
    struct Refuse;
    impl SandboxOps for Refuse {
        fn apply(&self, _: &Netns, _: &Spec) -> tapnet_sandbox::Result<Applied> {
            Err(tapnet_sandbox::Error::Invalid(
                "injected apply failure".into(),
            ))
        }
        fn undo(&self, _: &Netns, _: &Applied) -> tapnet_sandbox::Result<()> {
            Ok(())
        }
    }

    /// A driver that counts live endpoints and joins, describes a moved-in veth
    /// and may choose a MAC.
    #[derive(Default)]
    struct Counting {
        endpoints: AtomicIsize,
        joined: AtomicIsize,
        choose_mac: AtomicBool,
        recreate: AtomicBool,
    }

    impl Driver for Counting {
        fn name(&self) -> &str {
            "counting"
        }
        fn create_network(&self, _: &NetworkRequest<'_>) -> Result<()> {
            Ok(())
        }
        fn delete_network(&self, _: &str) -> Result<()> {
            Ok(())
        }
        fn create_endpoint(&self, _: &EndpointRequest<'_>) -> Result<EndpointDescription> {
            self.endpoints.fetch_add(1, Ordering::SeqCst);
            Ok(EndpointDescription {
                mac: self
                    .choose_mac
                    .load(Ordering::SeqCst)
                    .then_some([2, 0, 0, 0, 0, 9]),
                ..EndpointDescription::default()
            })
        }
        fn join(&self, req: &JoinRequest<'_>) -> Result<JoinDescription> {
            self.joined.fetch_add(1, Ordering::SeqCst);
            Ok(JoinDescription {
                interface: Some(InterfaceDescription {
                    source: InterfaceSource::MoveIn {
                        host_name: "veth9".into(),
                    },
                    dst_prefix: "eth".into(),
                    mac: req.endpoint.mac,
                    mtu: None,
                    txqueuelen: None,
                    addresses: Vec::new(),
                }),
                ..JoinDescription::default()
            })
        }
        fn restore_endpoint(&self, req: &JoinRequest<'_>) -> Result<RestoreDescription> {
            let join = self.join(req)?;
            let how = if self.recreate.load(Ordering::SeqCst) {
                Restored::Recreated
            } else {
                Restored::Reopened
            };
            Ok(RestoreDescription { how, join })
        }
        fn leave(&self, _: &str, _: &str) -> Result<()> {
            self.joined.fetch_sub(1, Ordering::SeqCst);
            Ok(())
        }
        fn delete_endpoint(&self, _: &str, _: &str) -> Result<()> {
            self.endpoints.fetch_sub(1, Ordering::SeqCst);
            Ok(())
        }
    }

    fn network() -> Network {
        Network {
            id: "n".into(),
            name: "n".into(),
            driver: "counting".into(),
            created: String::new(),
            scope: "local".into(),
            internal: false,
            attachable: false,
            enable_ipv6: false,
            ipam_driver: "default".into(),
            ipam_options: BTreeMap::new(),
            subnet: None,
            gateway: None,
            ip_range: None,
            aux_addresses: BTreeMap::new(),
            ipv4_pool: None,
            ipv6: None,
            options: BTreeMap::new(),
            labels: BTreeMap::new(),
            endpoints: BTreeMap::new(),
            ..Default::default()
        }
    }

    fn endpoint() -> Endpoint {
        Endpoint {
            id: "e".into(),
            network_id: "n".into(),
            sandbox_id: "s".into(),
            interface: String::new(),
            mac: None,
            ipv4: None,
            prefix_len: 0,
            ipv6: None,
            prefix_len_v6: 0,
            aliases: Vec::new(),
            ..Default::default()
        }
    }

    fn own_netns() -> Arc<Netns> {
        Arc::new(Netns::open(std::path::Path::new("/proc/self/ns/net")).unwrap())
    }

    #[test]
    fn apply_names_records_and_undo_forgets() {
        let (layer, ns) = (SandboxLayer::new(DryRun), own_netns());
        // The prefix names the interface; the record keeps the description.
        let name = layer.apply("e", &ns, "sb", &description(), None).unwrap();
        assert_eq!(name, "eth0");
        assert_eq!(layer.description("e"), Some(description()));
        layer.undo("e").unwrap();
        assert!(lock(&layer.records).is_empty());
        assert_eq!(layer.description("e"), None);
        // No interface: nothing applied, nothing recorded.
        let none = JoinDescription::default();
        assert_eq!(layer.apply("f", &ns, "sb", &none, None).unwrap(), "");
        assert!(lock(&layer.records).is_empty());
    }

    #[test]
    fn link_local_addresses_join_the_description_once() {
        let ips: Vec<std::net::IpAddr> =
            vec!["169.254.3.4".parse().unwrap(), "fe80::7".parse().unwrap()];
        let joined = with_link_local(&description(), &ips);
        let addrs = joined.interface.as_ref().map(|i| i.addresses.clone());
        let want: Vec<IpNet> = vec![
            "10.0.0.2/24".parse().unwrap(),
            "169.254.3.4/16".parse().unwrap(),
            "fe80::7/64".parse().unwrap(),
        ];
        assert_eq!(addrs, Some(want));
        // Idempotent (a rolled-back leave applies a recorded description again).
        assert_eq!(with_link_local(&joined, &ips), joined);
        // An IPv6 link-local address keeps IPv6 on.
        assert!(!spec_of(&joined, None).unwrap().unwrap().disable_ipv6);
        // No interface: nothing to add to.
        let none = JoinDescription::default();
        assert_eq!(with_link_local(&none, &ips), none);
        // Restore adds them too, under the recorded (asked-for) name.
        let (layer, ns, d) = (SandboxLayer::new(DryRun), own_netns(), Counting::default());
        d.recreate.store(true, Ordering::SeqCst);
        let mut ep = endpoint();
        ep.interface = "lan0".into();
        ep.link_local_ips = ips;
        layer.restore(&d, &network(), &ep, &ns, "sb").unwrap();
        let rec = lock(&layer.records)
            .get("e")
            .map(|r| r.applied.clone())
            .unwrap();
        assert_eq!(rec.name, "lan0");
        let joined = layer.description("e").unwrap();
        let n = joined.interface.map(|i| i.addresses.len());
        assert_eq!(n, Some(2));
    }

    #[test]
    fn hand_off_keeps_the_device_down_in_place_and_undo_only_forgets() {
        // Refuse: undo of a handed-off record must not reach the ops.
        struct Recording(Arc<Mutex<Vec<Spec>>>);
        impl SandboxOps for Recording {
            fn apply(&self, _: &Netns, spec: &Spec) -> tapnet_sandbox::Result<Applied> {
                lock(&self.0).push(spec.clone());
                Ok(Applied::assumed(spec, "tap1"))
            }
            fn undo(&self, _: &Netns, _: &Applied) -> tapnet_sandbox::Result<()> {
                Err(tapnet_sandbox::Error::Invalid("undo must not run".into()))
            }
        }
        let specs = Arc::new(Mutex::new(Vec::new()));
        let layer = SandboxLayer::new(Recording(Arc::clone(&specs)));
        let ns = own_netns();
        let mut join = description();
        if let Some(i) = join.interface.as_mut() {
            i.source = InterfaceSource::InSandbox {
                name: "tap1".into(),
            };
        }
        assert_eq!(layer.hand_off("e", &ns, &join).unwrap(), "tap1");
        assert!(layer.is_handed_off("e"));
        // In place, named as it is, MAC and MTU set, left down, nothing else.
        let spec = lock(&specs)[0].clone();
        assert_eq!(spec.naming, Naming::Keep);
        assert_eq!(
            (spec.mac, spec.mtu),
            (Some([2, 0x42, 10, 0, 0, 2]), Some(1450))
        );
        assert!(spec.leave_down && spec.addresses.is_empty() && spec.routes.is_empty());
        assert_eq!((spec.gateway_v4, spec.disable_ipv6), (None, false));
        assert_eq!(layer.description("e"), Some(join));
        layer.undo("e").unwrap();
        assert!(!layer.is_handed_off("e"));
        assert_eq!(layer.description("e"), None);
    }

    #[test]
    fn failed_sandbox_setup_records_nothing() {
        let (layer, ns) = (SandboxLayer::new(Refuse), own_netns());
        let mut join = description();
        if let Some(i) = join.interface.as_mut() {
            i.source = InterfaceSource::MoveIn {
                host_name: "veth9".into(),
            };
        }
        let err = layer.apply("e", &ns, "sb", &join, None).unwrap_err();
        assert!(err.to_string().contains("injected apply failure"), "{err}");
        assert!(
            err.to_string().contains("move veth9 into sandbox sb"),
            "{err}"
        );
        assert!(lock(&layer.records).is_empty());
    }

    #[test]
    fn driver_choice_conflicting_with_the_request_is_refused() {
        let chosen = EndpointDescription {
            mac: Some([2, 0, 0, 0, 0, 9]),
            ..EndpointDescription::default()
        };
        let mut ep = endpoint();
        ep.mac = Some([2, 0x42, 0, 0, 0, 1]);
        let err = chosen.apply_to(&mut ep).unwrap_err();
        assert!(matches!(err, Error::Driver(_)), "{err:?}");
        // The same value is no conflict; an empty field takes the driver's choice.
        ep.mac = Some([2, 0, 0, 0, 0, 9]);
        chosen.apply_to(&mut ep).unwrap();
        let mut ep = endpoint();
        chosen.apply_to(&mut ep).unwrap();
        assert_eq!(ep.mac, Some([2, 0, 0, 0, 0, 9]));
    }

    #[test]
    fn restore_records_or_applies_under_the_recorded_name() {
        let ns = own_netns();
        let mut ep = endpoint();
        ep.interface = "eth4".into();
        // Reopened: recorded as applied, nothing done.
        let (layer, d) = (SandboxLayer::new(Refuse), Counting::default());
        assert_eq!(
            layer.restore(&d, &network(), &ep, &ns, "sb").unwrap(),
            Restored::Reopened
        );
        let rec = lock(&layer.records).get("e").map(|r| r.applied.clone());
        let rec = rec.unwrap();
        assert_eq!(rec.name, "eth4");
        assert_eq!(rec.moved_in.as_deref(), Some("veth9"));
        // Recreated: applied under the recorded name; a failure makes the driver leave.
        d.recreate.store(true, Ordering::SeqCst);
        assert!(layer.restore(&d, &network(), &ep, &ns, "sb").is_err());
        assert_eq!(d.joined.load(Ordering::SeqCst), 1, "one restore left again");
        let layer = SandboxLayer::new(DryRun);
        assert_eq!(
            layer.restore(&d, &network(), &ep, &ns, "sb").unwrap(),
            Restored::Recreated
        );
        let rec = lock(&layer.records)
            .get("e")
            .map(|r| r.applied.name.clone());
        assert_eq!(rec.as_deref(), Some("eth4"));
    }
}
