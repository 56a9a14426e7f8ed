//! Rollback tests: every step of every operation fails in turn (a fake driver that
//! fails on demand, the in-memory store that fails commits on demand), and the
//! model, the store, IPAM and the driver must be exactly as before.
#![allow(clippy::unwrap_used)]

use super::*;
use crate::driver::record::NULL_DRIVER;
use crate::driver::{
    Capabilities, EndpointDescription, EndpointRequest, InterfaceDescription, InterfaceSource,
    JoinDescription, JoinRequest, NetworkRequest,
};
use crate::ipam::DefaultIpam;
use crate::model::Endpoint;
use crate::sandbox_layer::{SandboxLayer, SandboxOps};
use crate::store::mem::MemStore;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering};
use tapnet_sandbox::iface::{Applied, Naming, Spec};

/// What the fake driver can be told to fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Step {
    CreateNetwork,
    DeleteNetwork,
    CreateEndpoint,
    Join,
    Leave,
    DeleteEndpoint,
    /// The sandbox layer's apply.
    Apply,
    /// The sandbox layer's undo.
    Undo,
    /// Publishing a port (the second one: the first always succeeds).
    PublishSecond,
}

/// A bridge-like driver that fails the steps it is told to; counts what is live.
#[derive(Default)]
struct Fake {
    fail: Mutex<BTreeSet<Step>>,
    networks: AtomicIsize,
    endpoints: AtomicIsize,
    joined: AtomicIsize,
    /// Interfaces the sandbox layer configured.
    configured: AtomicIsize,
    /// Host ports published now.
    published: AtomicIsize,
    /// Publish calls so far.
    publishes: AtomicIsize,
    /// Block `join` until cleared (a slow OS call).
    stall_join: AtomicBool,
}

impl Fake {
    fn fail(&self, step: Step) {
        lock(&self.fail).insert(step);
    }
    fn heal(&self) {
        lock(&self.fail).clear();
    }
    fn check(&self, step: Step) -> Result<()> {
        if lock(&self.fail).contains(&step) {
            return Err(Error::InvalidRequest(format!("injected {step:?} failure")));
        }
        Ok(())
    }
    fn live(&self) -> (isize, isize, isize, isize) {
        (
            self.networks.load(Ordering::SeqCst),
            self.endpoints.load(Ordering::SeqCst),
            self.joined.load(Ordering::SeqCst),
            self.configured.load(Ordering::SeqCst),
        )
    }
}

impl Driver for Fake {
    fn name(&self) -> &str {
        "bridge"
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            gateway_service: true,
            ..Capabilities::default()
        }
    }
    fn publish(&self, _: &str, spec: tapnet_nat::PublishSpec) -> Result<std::net::SocketAddr> {
        let n = self.publishes.fetch_add(1, Ordering::SeqCst);
        if n % 2 == 1 {
            self.check(Step::PublishSecond)?;
        }
        self.published.fetch_add(1, Ordering::SeqCst);
        Ok(std::net::SocketAddr::new(spec.host_ip, 40000 + n as u16))
    }
    fn unpublish(&self, _: &str, _: tapnet_nat::Proto, _: std::net::SocketAddr) -> Result<()> {
        self.published.fetch_sub(1, Ordering::SeqCst);
        Ok(())
    }
    fn create_network(&self, _: &NetworkRequest<'_>) -> Result<()> {
        self.check(Step::CreateNetwork)?;
        self.networks.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn delete_network(&self, _: &str) -> Result<()> {
        self.check(Step::DeleteNetwork)?;
        self.networks.fetch_sub(1, Ordering::SeqCst);
        Ok(())
    }
    fn create_endpoint(&self, _: &EndpointRequest<'_>) -> Result<EndpointDescription> {
        self.check(Step::CreateEndpoint)?;
        self.endpoints.fetch_add(1, Ordering::SeqCst);
        Ok(EndpointDescription::default())
    }
    fn join(&self, req: &JoinRequest<'_>) -> Result<JoinDescription> {
        while self.stall_join.load(Ordering::SeqCst) {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        self.check(Step::Join)?;
        self.joined.fetch_add(1, Ordering::SeqCst);
        Ok(JoinDescription {
            interface: Some(InterfaceDescription::for_endpoint(
                InterfaceSource::InSandbox {
                    name: "tap0".into(),
                },
                req.network,
                req.endpoint,
            )?),
            gateway_v4: req.network.gateway,
            ..JoinDescription::default()
        })
    }
    fn leave(&self, _: &str, _: &str) -> Result<()> {
        self.check(Step::Leave)?;
        self.joined.fetch_sub(1, Ordering::SeqCst);
        Ok(())
    }
    fn delete_endpoint(&self, _: &str, _: &str) -> Result<()> {
        self.check(Step::DeleteEndpoint)?;
        self.endpoints.fetch_sub(1, Ordering::SeqCst);
        Ok(())
    }
}

/// The model's networks and sandboxes.
type Model = (BTreeMap<String, Network>, BTreeMap<String, Sandbox>);

/// The sandbox layer's OS side for the tests: touches nothing, fails on demand.
struct Ops(Arc<Fake>);

impl SandboxOps for Ops {
    fn apply(&self, _: &Netns, spec: &Spec) -> tapnet_sandbox::Result<Applied> {
        if self.0.check(Step::Apply).is_err() {
            return Err(tapnet_sandbox::Error::Invalid(
                "injected Apply failure".into(),
            ));
        }
        self.0.configured.fetch_add(1, Ordering::SeqCst);
        // The name asked for, else eth0.
        let name = match &spec.naming {
            Naming::Exact(n) => n.as_str(),
            _ => "eth0",
        };
        Ok(Applied::assumed(spec, name))
    }
    fn undo(&self, _: &Netns, _: &Applied) -> tapnet_sandbox::Result<()> {
        if self.0.check(Step::Undo).is_err() {
            return Err(tapnet_sandbox::Error::Invalid(
                "injected Undo failure".into(),
            ));
        }
        self.0.configured.fetch_sub(1, Ordering::SeqCst);
        Ok(())
    }
}

struct Rig {
    ctl: Controller,
    fake: Arc<Fake>,
    store: Arc<MemStore>,
}

impl Rig {
    fn new() -> Rig {
        let fake = Arc::new(Fake::default());
        let store = Arc::new(MemStore::new());
        let mut reg = DriverRegistry::with_sandbox_layer(SandboxLayer::new(Ops(Arc::clone(&fake))));
        reg.register(fake.clone());
        reg.register(Arc::new(NULL_DRIVER));
        let exec = std::env::temp_dir().join(format!("tapnet-rollback-{}", model::new_id()));
        let ctl = Controller::with_store(
            reg,
            Box::new(DefaultIpam::new()),
            &exec,
            Arc::clone(&store) as Arc<dyn KvStore>,
        );
        Rig { ctl, fake, store }
    }

    /// Everything observable: the model, the store's records, the driver's counts.
    async fn state(
        &self,
    ) -> (
        Model,
        BTreeMap<String, Vec<u8>>,
        (isize, isize, isize, isize),
    ) {
        let snap = self.ctl.snapshot().await;
        (
            (snap.networks.clone(), snap.sandboxes.clone()),
            self.store.dump(),
            self.fake.live(),
        )
    }

    async fn network(&self) {
        self.ctl
            .create_network(NetworkCreate {
                name: "n".into(),
                subnet: Some("10.9.0.0/24".parse().unwrap()),
                enable_ipv6: true,
                ipv6: Some(Ipv6Request {
                    subnet: "fd00:9::/64".parse().unwrap(),
                    gateway: None,
                    ip_range: None,
                    aux_addresses: BTreeMap::new(),
                }),
                ..NetworkCreate::default()
            })
            .await
            .unwrap();
    }

    async fn sandbox(&self, name: &str) {
        self.ctl
            .create_sandbox(Some(name.into()), Some("/proc/self/ns/net".into()))
            .await
            .unwrap();
    }

    fn connect_opts() -> ConnectOptions {
        ConnectOptions {
            ipv4: Some("10.9.0.7".parse().unwrap()),
            ipv6: Some("fd00:9::7".parse().unwrap()),
            ..ConnectOptions::default()
        }
    }

    /// Whether the static addresses of [`Rig::connect_opts`] are free in IPAM.
    fn addresses_free(&self) -> bool {
        let mut ipam = self.ctl.ipam();
        let none = BTreeMap::new();
        let mut free = true;
        for (pool, a) in [
            ("LocalDefault/10.9.0.0/24", "10.9.0.7"),
            ("LocalDefault/fd00:9::/64", "fd00:9::7"),
        ] {
            let a: IpAddr = a.parse().unwrap();
            match ipam.request_address(pool, Some(a), &none) {
                Ok(_) => {
                    ipam.release_address(pool, a).unwrap();
                }
                Err(_) => free = false,
            }
        }
        free
    }
}

#[tokio::test]
async fn create_network_rolls_back_every_step() {
    let rig = Rig::new();
    let before = rig.state().await;
    // The driver fails: the pools are released.
    rig.fake.fail(Step::CreateNetwork);
    assert!(rig
        .ctl
        .create_network(NetworkCreate {
            name: "n".into(),
            subnet: Some("10.9.0.0/24".parse().unwrap()),
            ..NetworkCreate::default()
        })
        .await
        .is_err());
    assert_eq!(rig.state().await, before);
    rig.fake.heal();
    // The commit fails: the data plane is removed and the pools are released.
    rig.store.fail_next(1);
    let e = rig
        .ctl
        .create_network(NetworkCreate {
            name: "n".into(),
            subnet: Some("10.9.0.0/24".parse().unwrap()),
            ..NetworkCreate::default()
        })
        .await
        .unwrap_err();
    assert!(e.to_string().contains("injected failure"), "{e}");
    assert_eq!(rig.state().await, before);
    // Nothing is left reserved: the same subnet is taken by the next try.
    rig.network().await;
    assert_eq!(rig.fake.live().0, 1);
}

#[tokio::test]
async fn delete_network_rolls_back_a_failed_commit() {
    let rig = Rig::new();
    rig.network().await;
    let before = rig.state().await;
    rig.store.fail_next(1);
    assert!(rig.ctl.delete_network("n").await.is_err());
    // The data plane was re-created; model and store still have the network.
    assert_eq!(rig.state().await, before);
    // And its pool is still reserved.
    let e = rig
        .ctl
        .create_network(NetworkCreate {
            name: "other".into(),
            subnet: Some("10.9.0.0/24".parse().unwrap()),
            ..NetworkCreate::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.status(), 409, "{e}");
    rig.fake.fail(Step::DeleteNetwork);
    assert!(rig.ctl.delete_network("n").await.is_err());
    assert_eq!(rig.state().await, before);
    rig.fake.heal();
    rig.ctl.delete_network("n").await.unwrap();
    assert_eq!(rig.fake.live().0, 0);
}

#[tokio::test]
async fn create_sandbox_rolls_back_a_failed_commit() {
    let rig = Rig::new();
    let before = rig.state().await;
    rig.store.fail_next(1);
    assert!(rig
        .ctl
        .create_sandbox(Some("s".into()), Some("/proc/self/ns/net".into()))
        .await
        .is_err());
    assert_eq!(rig.state().await, before);
    // No files left behind, and the name is free.
    let dirs = std::fs::read_dir(rig.ctl.inner.exec_root.join("sandboxes"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(dirs, 0);
    rig.sandbox("s").await;
}

#[tokio::test]
async fn connect_rolls_back_every_step() {
    let rig = Rig::new();
    rig.network().await;
    rig.sandbox("s").await;
    let before = rig.state().await;
    for step in [Step::CreateEndpoint, Step::Join, Step::Apply] {
        rig.fake.fail(step);
        let e = rig
            .ctl
            .connect("n", "s", Rig::connect_opts())
            .await
            .unwrap_err();
        assert!(e.to_string().contains("injected"), "{step:?}: {e}");
        assert_eq!(rig.state().await, before, "{step:?}");
        assert!(rig.addresses_free(), "{step:?}");
        rig.fake.heal();
    }
    // The commit fails: left, deleted, released.
    rig.store.fail_next(1);
    assert!(rig
        .ctl
        .connect("n", "s", Rig::connect_opts())
        .await
        .is_err());
    assert_eq!(rig.state().await, before);
    assert!(rig.addresses_free());
    let ep = rig
        .ctl
        .connect("n", "s", Rig::connect_opts())
        .await
        .unwrap();
    assert_eq!(ep.ipv4, Some("10.9.0.7".parse().unwrap()));
    assert_eq!(rig.fake.live(), (1, 1, 1, 1));
}

#[tokio::test]
async fn disconnect_rolls_back_every_step() {
    let rig = Rig::new();
    rig.network().await;
    rig.sandbox("s").await;
    rig.ctl
        .connect("n", "s", Rig::connect_opts())
        .await
        .unwrap();
    let before = rig.state().await;
    for step in [Step::Undo, Step::Leave, Step::DeleteEndpoint] {
        rig.fake.fail(step);
        assert!(
            rig.ctl.disconnect("n", "s", false).await.is_err(),
            "{step:?}"
        );
        assert_eq!(rig.state().await, before, "{step:?}");
        assert!(!rig.addresses_free(), "{step:?}");
        rig.fake.heal();
    }
    rig.store.fail_next(1);
    assert!(rig.ctl.disconnect("n", "s", false).await.is_err());
    // Joined again, the record and the addresses kept.
    assert_eq!(rig.state().await, before);
    assert!(!rig.addresses_free());
    // Forced: a failing leave is logged and the endpoint removed anyway.
    rig.fake.fail(Step::Leave);
    rig.ctl.disconnect("n", "s", true).await.unwrap();
    rig.fake.heal();
    assert!(rig.addresses_free());
    assert!(rig
        .ctl
        .snapshot()
        .await
        .networks
        .values()
        .all(|n| n.endpoints.is_empty()));
}

#[tokio::test]
async fn delete_sandbox_rolls_back_a_failed_commit() {
    let rig = Rig::new();
    rig.network().await;
    rig.sandbox("s").await;
    rig.ctl
        .connect("n", "s", Rig::connect_opts())
        .await
        .unwrap();
    let before = rig.state().await;
    rig.store.fail_next(1);
    assert!(rig.ctl.delete_sandbox("s").await.is_err());
    assert_eq!(rig.state().await, before);
    assert!(!rig.addresses_free());
    rig.ctl.delete_sandbox("s").await.unwrap();
    assert_eq!(rig.fake.live(), (1, 0, 0, 0));
    assert!(rig.addresses_free());
    assert!(rig.ctl.snapshot().await.sandboxes.is_empty());
}

#[tokio::test]
async fn prune_keeps_a_network_whose_commit_fails() {
    let rig = Rig::new();
    rig.network().await;
    let id = rig.ctl.network("n").await.unwrap().id;
    let before = rig.state().await;
    rig.store.fail_next(1);
    assert!(rig.ctl.prune(vec![id.clone()]).await.is_empty());
    assert_eq!(rig.state().await, before);
    assert_eq!(rig.ctl.prune(vec![id]).await, vec!["n".to_string()]);
    assert_eq!(rig.fake.live().0, 0);
}

#[tokio::test]
async fn restore_fails_cleanly_when_its_cleanup_cannot_commit() {
    let rig = Rig::new();
    // An endpoint record of an unknown network: restore removes it in one commit.
    let orphan = Endpoint {
        id: model::new_id(),
        network_id: model::new_id(),
        sandbox_id: model::new_id(),
        interface: "eth0".into(),
        mac: None,
        ipv4: None,
        prefix_len: 0,
        ipv6: None,
        prefix_len_v6: 0,
        aliases: Vec::new(),
        ..Default::default()
    };
    crate::store::commit(rig.store.as_ref(), &[Change::PutEndpoint(orphan)]).unwrap();
    let records = rig.store.dump();
    rig.store.fail_next(1);
    assert!(rig.ctl.restore().await.is_err());
    assert_eq!(rig.store.dump(), records);
    rig.ctl.restore().await.unwrap();
    assert!(rig.store.dump().is_empty());
}

/// An operation whose caller goes away (the HTTP client closed the socket) still
/// runs to its end: here the join is slow, the caller's future is dropped, and the
/// endpoint is committed and published all the same: model and store agree.
#[tokio::test]
async fn an_abandoned_connect_runs_to_its_end() {
    let rig = Rig::new();
    rig.network().await;
    rig.sandbox("s").await;
    rig.fake.stall_join.store(true, Ordering::SeqCst);
    let abandoned = tokio::time::timeout(
        std::time::Duration::from_millis(20),
        rig.ctl.connect("n", "s", Rig::connect_opts()),
    )
    .await;
    assert!(abandoned.is_err(), "the connect should still be running");
    rig.fake.stall_join.store(false, Ordering::SeqCst);
    // Another connect to the network queues behind the abandoned one on the network's
    // lock (tokio's mutex is fair), so once it has answered, the abandoned connect has
    // committed and published. (It fails: the sandbox is connected already.)
    let e = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        rig.ctl.connect("n", "s", ConnectOptions::default()),
    )
    .await
    .unwrap()
    .unwrap_err();
    assert_eq!(e.status(), 409, "{e}");
    let (model, records, live) = rig.state().await;
    assert_eq!(live, (1, 1, 1, 1));
    let eps: Vec<&Endpoint> = model
        .0
        .values()
        .flat_map(|n| n.endpoints.values())
        .collect();
    assert_eq!(eps.len(), 1);
    assert!(records.contains_key(&crate::store::key(crate::store::ENDPOINTS, &eps[0].id)));
    assert!(!rig.addresses_free());
}

/// Reads are served from the published snapshot while a mutation holds its locks.
#[tokio::test]
async fn reads_do_not_wait_for_a_stalled_mutation() {
    let rig = Rig::new();
    rig.network().await;
    rig.sandbox("s").await;
    rig.fake.stall_join.store(true, Ordering::SeqCst);
    let ctl = rig.ctl.clone();
    let pending = tokio::spawn(async move { ctl.connect("n", "s", Rig::connect_opts()).await });
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    // The connect holds the network's lock; reads answer at once.
    let snap = tokio::time::timeout(std::time::Duration::from_secs(1), rig.ctl.snapshot())
        .await
        .unwrap();
    assert_eq!(snap.networks.len(), 1);
    rig.ctl.network("n").await.unwrap();
    // A mutation of another network is not held up either.
    tokio::time::timeout(
        std::time::Duration::from_secs(5),
        rig.ctl.create_network(NetworkCreate {
            name: "other".into(),
            ..NetworkCreate::default()
        }),
    )
    .await
    .unwrap()
    .unwrap();
    rig.fake.stall_join.store(false, Ordering::SeqCst);
    pending.await.unwrap().unwrap();
}

/// Published ports are steps too: a failing second port unpublishes the first; a failed
/// commit of a connect or a disconnect leaves the ports as they were.
#[tokio::test]
async fn published_ports_roll_back() {
    let rig = Rig::new();
    rig.network().await;
    let bindings = ["80/tcp", "53/udp"]
        .iter()
        .map(|spec| {
            let (port, proto) = crate::ports::parse_container_port(spec).unwrap();
            PortBinding {
                port,
                proto,
                host_ip: "127.0.0.1".parse().unwrap(),
                host_port: 0,
            }
        })
        .collect();
    rig.ctl
        .create_sandbox_with(Some("p".into()), Some("/proc/self/ns/net".into()), bindings)
        .await
        .unwrap();
    let published = || rig.fake.published.load(Ordering::SeqCst);
    let before = rig.state().await;
    rig.fake.fail(Step::PublishSecond);
    assert!(rig
        .ctl
        .connect("n", "p", Rig::connect_opts())
        .await
        .is_err());
    assert_eq!(published(), 0, "the first port is unpublished again");
    assert_eq!(rig.state().await, before);
    rig.fake.heal();
    rig.store.fail_next(1);
    assert!(rig
        .ctl
        .connect("n", "p", Rig::connect_opts())
        .await
        .is_err());
    assert_eq!(published(), 0);
    assert_eq!(rig.state().await, before);
    rig.ctl
        .connect("n", "p", Rig::connect_opts())
        .await
        .unwrap();
    assert_eq!(published(), 2);
    let sb = rig.ctl.sandbox("p").await.unwrap();
    assert_eq!(sb.published.as_ref().map(|p| p.ports.len()), Some(2));
    // A disconnect whose commit fails binds the ports again (and re-joins).
    let connected = rig.state().await;
    rig.store.fail_next(1);
    assert!(rig.ctl.disconnect("n", "p", false).await.is_err());
    assert_eq!(published(), 2);
    assert_eq!(rig.state().await, connected);
    rig.ctl.disconnect("n", "p", false).await.unwrap();
    assert_eq!(published(), 0);
    assert_eq!(rig.ctl.sandbox("p").await.unwrap().published, None);
}

/// Configuration networks: a failed commit of their create or removal changes
/// nothing; neither touches the driver or IPAM (a `config_from` network's own create
/// rolls back as any other, and leaves the configuration network as it was).
#[tokio::test]
async fn config_networks_roll_back_a_failed_commit() {
    let rig = Rig::new();
    let cfg = NetworkCreate {
        name: "cfg".into(),
        subnet: Some("10.9.0.0/24".parse().unwrap()),
        config_only: true,
        ..NetworkCreate::default()
    };
    let before = rig.state().await;
    rig.store.fail_next(1);
    let e = rig.ctl.create_network(cfg.clone()).await.unwrap_err();
    assert!(e.to_string().contains("injected failure"), "{e}");
    assert_eq!(rig.state().await, before);
    rig.ctl.create_network(cfg).await.unwrap();
    assert_eq!(
        rig.fake.live().0,
        0,
        "a configuration network has no data plane"
    );
    let with_cfg = rig.state().await;
    let from = NetworkCreate {
        name: "web".into(),
        config_from: Some("cfg".into()),
        ..NetworkCreate::default()
    };
    rig.store.fail_next(1);
    assert!(rig.ctl.create_network(from.clone()).await.is_err());
    assert_eq!(rig.state().await, with_cfg);
    // Nothing of cfg's subnet stayed reserved by the failed try.
    rig.ctl.create_network(from).await.unwrap();
    rig.ctl.delete_network("web").await.unwrap();
    rig.store.fail_next(1);
    assert!(rig.ctl.delete_network("cfg").await.is_err());
    assert_eq!(rig.state().await, with_cfg);
    rig.ctl.delete_network("cfg").await.unwrap();
    assert_eq!(rig.state().await, before);
}

/// A connect asking for an interface name and link-local addresses rolls back
/// like any other at every step, and the name is free again afterwards.
#[tokio::test]
async fn connect_with_ifname_and_link_local_rolls_back() {
    let rig = Rig::new();
    rig.network().await;
    rig.sandbox("s").await;
    let before = rig.state().await;
    let opts = ConnectOptions {
        ifname: Some("tnx9".into()),
        link_local_ips: vec!["169.254.9.9".parse().unwrap()],
        ..Rig::connect_opts()
    };
    for step in [Step::CreateEndpoint, Step::Join, Step::Apply] {
        rig.fake.fail(step);
        let e = rig.ctl.connect("n", "s", opts.clone()).await.unwrap_err();
        assert!(e.to_string().contains("injected"), "{step:?}: {e}");
        assert_eq!(rig.state().await, before, "{step:?}");
        rig.fake.heal();
    }
    rig.store.fail_next(1);
    assert!(rig.ctl.connect("n", "s", opts.clone()).await.is_err());
    assert_eq!(rig.state().await, before);
    let ep = rig.ctl.connect("n", "s", opts).await.unwrap();
    assert_eq!(ep.interface, "tnx9");
    assert_eq!(
        ep.link_local_ips,
        ["169.254.9.9".parse::<IpAddr>().unwrap()]
    );
    assert_eq!(
        ep.driver_opts.get(IFNAME_OPTION).map(String::as_str),
        Some("tnx9")
    );
}
