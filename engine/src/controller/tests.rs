//! Unit tests of the controller's operations (fake drivers, the in-memory store).
#![allow(clippy::unwrap_used)]
use super::connect::default_mac;
use super::*;
use crate::driver::record::NULL_DRIVER;
use crate::driver::NetworkRequest;
use crate::driver::{
    EndpointDescription, EndpointRequest, InterfaceDescription, InterfaceSource, JoinDescription,
    JoinRequest,
};
use crate::ipam::DefaultIpam;
use crate::sandbox_layer::DryRun;
use crate::sandbox_layer::SandboxLayer;
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering};

/// A bridge-like driver that can be told to fail; counts live endpoints.
#[derive(Default)]
struct Flaky {
    fail_join: AtomicBool,
    fail_create: AtomicBool,
    endpoints: AtomicIsize,
    joined: AtomicIsize,
}

impl Driver for Flaky {
    fn name(&self) -> &str {
        "bridge"
    }
    fn create_network(&self, _: &NetworkRequest<'_>) -> Result<()> {
        if self.fail_create.load(Ordering::SeqCst) {
            return Err(Error::InvalidRequest("injected create failure".into()));
        }
        Ok(())
    }
    fn delete_network(&self, _: &str) -> Result<()> {
        Ok(())
    }
    fn create_endpoint(&self, _: &EndpointRequest<'_>) -> Result<EndpointDescription> {
        self.endpoints.fetch_add(1, Ordering::SeqCst);
        Ok(EndpointDescription::default())
    }
    fn join(&self, _: &JoinRequest<'_>) -> Result<JoinDescription> {
        if self.fail_join.load(Ordering::SeqCst) {
            return Err(Error::os(
                "create tap eth0",
                tapnet_sandbox::Error::Invalid("injected join failure".into()),
            ));
        }
        self.joined.fetch_add(1, Ordering::SeqCst);
        // An interface already named eth0 (the test sandbox layer touches nothing).
        Ok(JoinDescription {
            interface: Some(InterfaceDescription {
                source: InterfaceSource::InSandbox {
                    name: "eth0".into(),
                },
                dst_prefix: String::new(),
                mac: None,
                mtu: None,
                txqueuelen: None,
                addresses: Vec::new(),
            }),
            ..JoinDescription::default()
        })
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

fn controller() -> (Controller, Arc<Flaky>) {
    let flaky = Arc::new(Flaky::default());
    let mut reg = DriverRegistry::with_sandbox_layer(SandboxLayer::new(DryRun));
    reg.register(flaky.clone());
    reg.register(Arc::new(NULL_DRIVER));
    let ctl = Controller::new(
        reg,
        Box::new(DefaultIpam::new()),
        &std::env::temp_dir().join(format!("tapnet-ctl-test-{}", model::new_id())),
    );
    (ctl, flaky)
}

async fn dual_stack(ctl: &Controller) {
    ctl.create_network(NetworkCreate {
        name: "n".into(),
        subnet: Some("10.1.0.0/24".parse().unwrap()),
        enable_ipv6: true,
        ipv6: Some(Ipv6Request {
            subnet: "fd00:1::/64".parse().unwrap(),
            gateway: None,
            ip_range: None,
            aux_addresses: BTreeMap::new(),
        }),
        ..NetworkCreate::default()
    })
    .await
    .unwrap();
    ctl.create_sandbox(Some("sb".into()), Some("/proc/self/ns/net".into()))
        .await
        .unwrap();
}

#[tokio::test]
async fn failed_join_releases_addresses_and_records_nothing() {
    let (ctl, flaky) = controller();
    dual_stack(&ctl).await;
    let before = ctl.snapshot().await;
    flaky.fail_join.store(true, Ordering::SeqCst);
    let opts = ConnectOptions {
        ipv4: Some("10.1.0.7".parse().unwrap()),
        ipv6: Some("fd00:1::7".parse().unwrap()),
        ..ConnectOptions::default()
    };
    let err = ctl.connect("n", "sb", opts.clone()).await.unwrap_err();
    assert_eq!(err.status(), 500);
    assert!(err.to_string().contains("injected join failure"), "{err}");
    // Nothing recorded, the driver's endpoint deleted again.
    let after = ctl.snapshot().await;
    assert_eq!(after.networks, before.networks);
    assert_eq!(flaky.endpoints.load(Ordering::SeqCst), 0);
    assert_eq!(flaky.joined.load(Ordering::SeqCst), 0);
    // Both addresses were released: the same static request succeeds now.
    flaky.fail_join.store(false, Ordering::SeqCst);
    let ep = ctl.connect("n", "sb", opts).await.unwrap();
    assert_eq!(ep.ipv4, Some("10.1.0.7".parse().unwrap()));
    assert_eq!(ep.ipv6, Some("fd00:1::7".parse().unwrap()));
    assert_eq!(ep.mac, Some([0x02, 0x42, 10, 1, 0, 7]));
    assert_eq!(flaky.endpoints.load(Ordering::SeqCst), 1);
    // Disconnect releases them too.
    ctl.disconnect("n", "sb", false).await.unwrap();
    assert_eq!(flaky.endpoints.load(Ordering::SeqCst), 0);
    let ep = ctl
        .connect("n", "sb", ConnectOptions::default())
        .await
        .unwrap();
    assert_eq!(ep.ipv4, Some("10.1.0.2".parse().unwrap()));
    assert_eq!(ep.ipv6, Some("fd00:1::2".parse().unwrap()));
}

#[tokio::test]
async fn failed_ipv6_allocation_releases_ipv4() {
    let (ctl, _) = controller();
    dual_stack(&ctl).await;
    let bad = ConnectOptions {
        ipv4: Some("10.1.0.9".parse().unwrap()),
        ipv6: Some("fd00:2::9".parse().unwrap()),
        ..ConnectOptions::default()
    };
    let err = ctl.connect("n", "sb", bad).await.unwrap_err();
    assert_eq!(err.status(), 400, "{err}");
    let ok = ConnectOptions {
        ipv4: Some("10.1.0.9".parse().unwrap()),
        ..ConnectOptions::default()
    };
    ctl.connect("n", "sb", ok).await.unwrap();
}

#[tokio::test]
async fn connect_options_mac_and_aliases() {
    let (ctl, flaky) = controller();
    dual_stack(&ctl).await;
    ctl.create_sandbox(Some("sb2".into()), Some("/proc/self/ns/net".into()))
        .await
        .unwrap();
    let mac = [0x02, 0x42, 0xac, 0x11, 0, 0x99];
    let opts = ConnectOptions {
        ipv4: Some("10.1.0.7".parse().unwrap()),
        ipv6: Some("fd00:1::7".parse().unwrap()),
        mac: Some(mac),
        aliases: vec!["web".into(), "www".into()],
        ..ConnectOptions::default()
    };
    // The custom MAC overrides 02:42:<IPv4>; addresses and aliases are kept.
    let ep = ctl.connect("n", "sb", opts.clone()).await.unwrap();
    assert_eq!(ep.mac, Some(mac));
    assert_eq!(ep.ipv4, Some("10.1.0.7".parse().unwrap()));
    assert_eq!(ep.ipv6, Some("fd00:1::7".parse().unwrap()));
    assert_eq!(ep.aliases, ["web", "www"]);
    let rec = ctl.network("n").await.unwrap();
    assert_eq!(rec.endpoints[&ep.id], ep);
    // The same MAC on the same network: 409, nothing taken.
    let before = ctl.snapshot().await.networks.clone();
    ctl.create_sandbox(Some("sb4".into()), Some("/proc/self/ns/net".into()))
        .await
        .unwrap();
    let e = ctl
        .connect(
            "n",
            "sb4",
            ConnectOptions {
                mac: Some(mac),
                ..ConnectOptions::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(e.status(), 409, "{e}");
    assert!(e.to_string().contains("02:42:ac:11:00:99"), "{e}");
    assert_eq!(ctl.snapshot().await.networks, before);
    assert_eq!(flaky.endpoints.load(Ordering::SeqCst), 1);
    // Without a MAC: the default from the (first free) IPv4 address.
    let ep2 = ctl
        .connect("n", "sb2", ConnectOptions::default())
        .await
        .unwrap();
    assert_eq!(ep2.mac, Some([0x02, 0x42, 10, 1, 0, 2]));
    assert!(ep2.aliases.is_empty());
    // A MAC on a network without devices is refused.
    ctl.create_network(NetworkCreate {
        name: "nonet".into(),
        driver: "null".into(),
        ..NetworkCreate::default()
    })
    .await
    .unwrap();
    ctl.create_sandbox(Some("sb3".into()), Some("/proc/self/ns/net".into()))
        .await
        .unwrap();
    let e = ctl
        .connect(
            "nonet",
            "sb3",
            ConnectOptions {
                mac: Some(mac),
                ..ConnectOptions::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(e.status(), 400, "{e}");
}

#[test]
fn endpoint_mac_without_ipv4() {
    let net = Network {
        id: "n".into(),
        name: "n".into(),
        driver: "bridge".into(),
        created: String::new(),
        scope: "local".into(),
        internal: false,
        attachable: false,
        enable_ipv6: true,
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
    };
    let custom = [0x02, 0x42, 0xac, 0x11, 0, 0x99];
    // IPv6-only: the requested MAC, else a random 02:42: one; none without a device.
    assert_eq!(
        default_mac(&Flaky::default(), Some(custom), None, &net),
        Some(custom)
    );
    let random = default_mac(&Flaky::default(), None, None, &net).unwrap();
    assert_eq!(random[..2], [0x02, 0x42]);
    assert_eq!(default_mac(&NULL_DRIVER, Some(custom), None, &net), None);
    assert_eq!(
        default_mac(
            &Flaky::default(),
            Some(custom),
            Some("10.0.0.2".parse().unwrap()),
            &net
        ),
        Some(custom)
    );
}

#[tokio::test]
async fn failed_driver_create_releases_pools() {
    let (ctl, flaky) = controller();
    flaky.fail_create.store(true, Ordering::SeqCst);
    let req = NetworkCreate {
        name: "n".into(),
        subnet: Some("10.1.0.0/24".parse().unwrap()),
        aux_addresses: BTreeMap::from([("r".into(), "10.1.0.5".parse().unwrap())]),
        ..NetworkCreate::default()
    };
    assert!(ctl.create_network(req.clone()).await.is_err());
    assert!(ctl.snapshot().await.networks.is_empty());
    flaky.fail_create.store(false, Ordering::SeqCst);
    ctl.create_network(req).await.unwrap();
}

#[tokio::test]
async fn predefined_networks_once_and_not_removable() {
    let (ctl, _) = controller();
    ctl.ensure_default_networks(&DefaultBridge::default())
        .await
        .unwrap();
    // Idempotent; `host` is skipped (driver not registered here).
    ctl.ensure_default_networks(&DefaultBridge::default())
        .await
        .unwrap();
    let st = ctl.snapshot().await;
    let mut names: Vec<&str> = st.networks.values().map(|n| n.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["bridge", "none"]);
    let bridge = ctl.network("bridge").await.unwrap();
    assert_eq!(bridge.subnet, Some("172.17.0.0/16".parse().unwrap()));
    assert_eq!(
        bridge.options["com.docker.network.bridge.default_bridge"],
        "true"
    );
    let none = ctl.network("none").await.unwrap();
    assert_eq!(none.subnet, None);
    for n in ["bridge", "none"] {
        let e = ctl.delete_network(n).await.unwrap_err();
        assert_eq!(e.status(), 403);
        assert!(e.to_string().contains("pre-defined"), "{e}");
    }
    let e = ctl
        .create_network(NetworkCreate {
            name: "none2".into(),
            driver: "null".into(),
            ..NetworkCreate::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.status(), 403);
    // --bip / --fixed-cidr.
    let (ctl, _) = controller();
    let bridge = DefaultBridge::from_flags(
        Some("10.99.0.1/24".parse().unwrap()),
        Some("10.99.0.128/25".parse().unwrap()),
    );
    ctl.ensure_default_networks(&bridge).await.unwrap();
    let b = ctl.network("bridge").await.unwrap();
    assert_eq!(b.subnet, Some("10.99.0.0/24".parse().unwrap()));
    assert_eq!(b.gateway, Some("10.99.0.1".parse().unwrap()));
    assert_eq!(b.ip_range, Some("10.99.0.128/25".parse().unwrap()));
}

#[tokio::test]
async fn ipam_state_rebuilds_from_records() {
    let (ctl, _) = controller();
    dual_stack(&ctl).await;
    ctl.connect("n", "sb", ConnectOptions::default())
        .await
        .unwrap();
    let mut net = ctl.network("n").await.unwrap();
    let mut fresh = DefaultIpam::new();
    restore_network_ipam(&mut fresh, &mut net).unwrap();
    let pool4 = net.ipv4_pool.clone().unwrap();
    let pool6 = net.ipv6.as_ref().unwrap().pool.clone();
    let none = BTreeMap::new();
    // Gateway and the endpoint's addresses are taken; the next ones are free.
    for taken in ["10.1.0.1", "10.1.0.2"] {
        let a: IpAddr = taken.parse().unwrap();
        assert!(fresh.request_address(&pool4, Some(a), &none).is_err());
    }
    assert_eq!(
        fresh.request_address(&pool4, None, &none).unwrap(),
        "10.1.0.3".parse::<IpAddr>().unwrap()
    );
    assert_eq!(
        fresh.request_address(&pool6, None, &none).unwrap(),
        "fd00:1::3".parse::<IpAddr>().unwrap()
    );
    // Replaying twice fails (overlap) and leaves the first replay intact.
    let mut again = net.clone();
    assert!(restore_network_ipam(&mut fresh, &mut again).is_err());
    assert!(fresh.request_address(&pool4, None, &none).is_ok());
}

fn controller_with_db(dir: &Path) -> Controller {
    let mut reg = DriverRegistry::with_sandbox_layer(SandboxLayer::new(DryRun));
    reg.register(Arc::new(Flaky::default()));
    reg.register(Arc::new(NULL_DRIVER));
    Controller::with_db(
        reg,
        Box::new(DefaultIpam::new()),
        &dir.join("exec"),
        Db::open(dir).unwrap(),
    )
}

/// The daemon's start sequence twice over one database: restore, then the
/// pre-defined networks only if absent. The second start rebuilds the same model
/// and the IPAM state (aux addresses, range, IPv6, every endpoint's addresses).
#[tokio::test]
async fn restore_then_default_networks_rebuilds_everything() {
    let dir = std::env::temp_dir().join(format!("tapnet-restore-{}", model::new_id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mac = [0x02, 0x42, 0xaa, 0xbb, 0xcc, 0x01];
    let (networks, sandboxes) = {
        let ctl = controller_with_db(&dir);
        ctl.restore().await.unwrap();
        ctl.ensure_default_networks(&DefaultBridge::default())
            .await
            .unwrap();
        ctl.create_network(NetworkCreate {
            name: "n".into(),
            subnet: Some("10.1.0.0/24".parse().unwrap()),
            ip_range: Some("10.1.0.0/28".parse().unwrap()),
            aux_addresses: BTreeMap::from([("r".into(), "10.1.0.2".parse().unwrap())]),
            enable_ipv6: true,
            ipv6: Some(Ipv6Request {
                subnet: "fd00:1::/64".parse().unwrap(),
                gateway: None,
                ip_range: None,
                aux_addresses: BTreeMap::from([("x".into(), "fd00:1::2".parse().unwrap())]),
            }),
            ..NetworkCreate::default()
        })
        .await
        .unwrap();
        for sb in ["sb", "sb2", "sb3"] {
            ctl.create_sandbox(Some(sb.into()), Some("/proc/self/ns/net".into()))
                .await
                .unwrap();
        }
        let ep = ctl
            .connect(
                "n",
                "sb",
                ConnectOptions {
                    mac: Some(mac),
                    aliases: vec!["web".into()],
                    ..ConnectOptions::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(ep.ipv4, Some("10.1.0.3".parse().unwrap()));
        assert_eq!(ep.ipv6, Some("fd00:1::3".parse().unwrap()));
        ctl.connect("none", "sb3", ConnectOptions::default())
            .await
            .unwrap();
        let st = ctl.snapshot().await;
        (st.networks.clone(), st.sandboxes.clone())
    };
    let ctl = controller_with_db(&dir);
    let report = ctl.restore().await.unwrap();
    assert_eq!(report.endpoints, 2);
    assert_eq!(report.dropped_endpoints, 0);
    // Flags differ, but the bridge network exists: it is left as recorded.
    let flags = DefaultBridge::from_flags(Some("10.99.0.1/24".parse().unwrap()), None);
    ctl.ensure_default_networks(&flags).await.unwrap();
    let st = ctl.snapshot().await;
    assert_eq!(st.networks, networks);
    assert_eq!(st.sandboxes, sandboxes);
    // Aux, gateway and taken addresses are not handed out again.
    let ep = ctl
        .connect("n", "sb2", ConnectOptions::default())
        .await
        .unwrap();
    assert_eq!(ep.ipv4, Some("10.1.0.4".parse().unwrap()));
    assert_eq!(ep.ipv6, Some("fd00:1::4".parse().unwrap()));
    ctl.create_sandbox(Some("sb4".into()), Some("/proc/self/ns/net".into()))
        .await
        .unwrap();
    let e = ctl
        .connect(
            "n",
            "sb4",
            ConnectOptions {
                mac: Some(mac),
                ..ConnectOptions::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(e.status(), 409, "{e}");
    assert!(e.to_string().contains("02:42:aa:bb:cc:01"), "{e}");
    // Every request was committed: a third start sees the same model.
    let st = ctl.snapshot().await;
    drop(ctl);
    let ctl = controller_with_db(&dir);
    ctl.restore().await.unwrap();
    let again = ctl.snapshot().await;
    assert_eq!(again.networks, st.networks);
    assert_eq!(again.sandboxes, st.sandboxes);
    drop(ctl);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A configuration network: recorded only (no pool: a network may take its subnet
/// meanwhile, and removing it releases nothing), not a second `null` network, not
/// connectable; a `config_from` network takes its settings; both survive a restart,
/// where the configuration network is not replayed into IPAM; in use, it stays.
#[tokio::test]
async fn config_networks_record_settings_and_survive_restart() {
    let dir = std::env::temp_dir().join(format!("tapnet-cfgnet-{}", model::new_id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = NetworkCreate {
        name: "cfg".into(),
        driver: "bridge".into(),
        subnet: Some("10.5.0.0/24".parse().unwrap()),
        gateway: Some("10.5.0.9".parse().unwrap()),
        options: BTreeMap::from([(model::MTU_OPTION.into(), "1400".into())]),
        enable_ipv6: true,
        ipv6: Some(Ipv6Request {
            subnet: "fd00:5::/64".parse().unwrap(),
            gateway: None,
            ip_range: None,
            aux_addresses: BTreeMap::new(),
        }),
        config_only: true,
        ..NetworkCreate::default()
    };
    let from = |name: &str| NetworkCreate {
        name: name.into(),
        config_from: Some("cfg".into()),
        ..NetworkCreate::default()
    };
    let before = {
        let ctl = controller_with_db(&dir);
        ctl.restore().await.unwrap();
        ctl.create_network(cfg.clone()).await.unwrap();
        // Not a second null network: the pre-defined `none` is still made.
        ctl.ensure_default_networks(&DefaultBridge::default())
            .await
            .unwrap();
        let rec = ctl.network("cfg").await.unwrap();
        assert!(rec.config_only);
        assert_eq!((rec.driver.as_str(), rec.scope.as_str()), ("null", "local"));
        assert_eq!(rec.ipv4_pool, None);
        // No pool taken: a twin and an ordinary network with that subnet are fine.
        let twin = NetworkCreate {
            name: "twin".into(),
            ..cfg.clone()
        };
        ctl.create_network(twin).await.unwrap();
        let plain = NetworkCreate {
            name: "plain".into(),
            subnet: cfg.subnet,
            ..NetworkCreate::default()
        };
        ctl.create_network(plain).await.unwrap();
        ctl.delete_network("plain").await.unwrap();
        ctl.create_network(from("web")).await.unwrap();
        let web = ctl.network("web").await.unwrap();
        assert_eq!(web.config_from.as_deref(), Some("cfg"));
        assert_eq!(web.subnet, cfg.subnet);
        assert_eq!(web.gateway, cfg.gateway);
        assert_eq!(web.options, cfg.options);
        assert_eq!(
            web.ipv6.as_ref().map(|c| c.subnet),
            Some("fd00:5::/64".parse().unwrap())
        );
        assert!(web.ipv4_pool.is_some());
        // Removing the twin releases nothing of web's pool.
        ctl.delete_network("twin").await.unwrap();
        let e = ctl.create_network(NetworkCreate {
            name: "clash".into(),
            subnet: cfg.subnet,
            ..NetworkCreate::default()
        });
        let e = e.await.unwrap_err();
        assert_eq!(e.status(), 409, "{e}");
        assert!(e.to_string().contains("network web"), "{e}");
        ctl.create_sandbox(Some("sb".into()), Some("/proc/self/ns/net".into()))
            .await
            .unwrap();
        let e = ctl
            .connect("cfg", "sb", ConnectOptions::default())
            .await
            .unwrap_err();
        assert_eq!(e.status(), 403, "{e}");
        let ep = ctl
            .connect("web", "sb", ConnectOptions::default())
            .await
            .unwrap();
        assert_eq!(ep.ipv4, Some("10.5.0.1".parse().unwrap()));
        let e = ctl.delete_network("cfg").await.unwrap_err();
        assert_eq!(e.status(), 403, "{e}");
        assert!(
            e.to_string()
                .contains("configuration network \"cfg\" is in use (by network web)"),
            "{e}"
        );
        ctl.snapshot().await.networks.clone()
    };
    let ctl = controller_with_db(&dir);
    let report = ctl.restore().await.unwrap();
    assert_eq!(report.endpoints, 1);
    ctl.ensure_default_networks(&DefaultBridge::default())
        .await
        .unwrap();
    assert_eq!(ctl.snapshot().await.networks, before);
    assert_eq!(ctl.delete_network("cfg").await.unwrap_err().status(), 403);
    ctl.disconnect("web", "sb", false).await.unwrap();
    ctl.delete_network("web").await.unwrap();
    ctl.delete_network("cfg").await.unwrap();
    drop(ctl);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn caller_chosen_ids_and_rename() {
    let (ctl, _) = controller();
    let id = model::new_id();
    let req = NetworkCreate {
        name: "docker-x".into(),
        subnet: Some("10.7.0.0/24".parse().unwrap()),
        ..NetworkCreate::default()
    };
    // A bad id is refused; a good one is the network's.
    let err = ctl
        .create_network_as("nope".into(), req.clone())
        .await
        .unwrap_err();
    assert_eq!(err.status(), 400, "{err}");
    assert_eq!(
        ctl.create_network_as(id.clone(), req.clone())
            .await
            .unwrap(),
        id
    );
    let again = NetworkCreate {
        name: "other".into(),
        subnet: Some("10.8.0.0/24".parse().unwrap()),
        ..NetworkCreate::default()
    };
    let err = ctl.create_network_as(id.clone(), again).await.unwrap_err();
    assert_eq!(err.status(), 409, "{err}");
    // Rename: the new name resolves, a taken or invalid name is refused.
    ctl.rename_network(&id, "tn1").await.unwrap();
    assert_eq!(ctl.network("tn1").await.unwrap().id, id);
    assert!(ctl.network("docker-x").await.is_err());
    ctl.create_network(NetworkCreate {
        name: "tn2".into(),
        subnet: Some("10.9.0.0/24".parse().unwrap()),
        ..NetworkCreate::default()
    })
    .await
    .unwrap();
    assert_eq!(
        ctl.rename_network(&id, "tn2").await.unwrap_err().status(),
        409
    );
    assert_eq!(
        ctl.rename_network(&id, "-bad").await.unwrap_err().status(),
        400
    );
    // An endpoint with the caller's id; the same id again is a conflict.
    ctl.create_sandbox(Some("sb".into()), Some("/proc/self/ns/net".into()))
        .await
        .unwrap();
    ctl.create_sandbox(Some("sb2".into()), Some("/proc/self/ns/net".into()))
        .await
        .unwrap();
    let eid = model::new_id();
    let ep = ctl
        .connect_as("tn1", "sb", ConnectOptions::default(), eid.clone())
        .await
        .unwrap();
    assert_eq!(ep.id, eid);
    let err = ctl
        .connect_as("tn2", "sb2", ConnectOptions::default(), eid)
        .await
        .unwrap_err();
    assert_eq!(err.status(), 409, "{err}");
    // A sandbox takes its container's name; a taken name is refused.
    ctl.rename_sandbox("sb", "c1").await.unwrap();
    assert_eq!(ctl.sandbox("c1").await.unwrap().id, ep.sandbox_id);
    assert_eq!(
        ctl.rename_sandbox("sb2", "c1").await.unwrap_err().status(),
        409
    );
}

#[tokio::test]
async fn connect_refuses_gateway_and_taken_macs_and_bad_aliases() {
    let (ctl, flaky) = controller();
    dual_stack(&ctl).await;
    ctl.create_sandbox(Some("sb2".into()), Some("/proc/self/ns/net".into()))
        .await
        .unwrap();
    let with = |mac: Option<[u8; 6]>, aliases: &[&str]| ConnectOptions {
        mac,
        aliases: aliases.iter().map(|a| a.to_string()).collect(),
        ..ConnectOptions::default()
    };
    // sb asks for the MAC that 02:42:<IPv4> would give the next endpoint (10.1.0.3).
    let taken = [0x02, 0x42, 10, 1, 0, 3];
    let ep = ctl
        .connect("n", "sb", with(Some(taken), &["Web", "WEB", "api"]))
        .await
        .unwrap();
    assert_eq!(
        ep.aliases,
        ["Web", "api"],
        "deduplicated case-insensitively"
    );
    let before = ctl.snapshot().await.networks.clone();
    let cases: &[(ConnectOptions, u16, &str)] = &[
        (with(Some([0x02, 0x42, 10, 1, 0, 1]), &[]), 409, "gateway"),
        (with(Some(taken), &[]), 409, "by sandbox sb"),
        (with(None, &["google.com"]), 400, "shadow"),
        (with(None, &["a\u{1}"]), 400, "control"),
    ];
    for (opts, status, text) in cases {
        let e = ctl.connect("n", "sb2", opts.clone()).await.unwrap_err();
        assert_eq!(e.status(), *status, "{opts:?}: {e}");
        assert!(e.to_string().contains(text), "{opts:?}: {e}");
        assert_eq!(ctl.snapshot().await.networks, before);
    }
    assert_eq!(flaky.endpoints.load(Ordering::SeqCst), 1);
    // sb took 10.1.0.2; sb2 gets 10.1.0.3, whose 02:42: MAC sb asked for: a random
    // one instead.
    let e2 = ctl.connect("n", "sb2", with(None, &[])).await.unwrap();
    assert_eq!(e2.ipv4, Some("10.1.0.3".parse().unwrap()));
    let m2 = e2.mac.unwrap();
    assert!(m2 != taken && m2[..2] == [0x02, 0x42], "{m2:?}");
}

#[tokio::test]
async fn unusable_subnets_and_gateways_reserve_nothing() {
    let (ctl, _) = controller();
    let v6 = |s: &str| Ipv6Request {
        subnet: s.parse().unwrap(),
        gateway: None,
        ip_range: None,
        aux_addresses: BTreeMap::new(),
    };
    let cases = [
        (
            NetworkCreate {
                subnet: Some("224.1.0.0/24".parse().unwrap()),
                ..NetworkCreate::default()
            },
            "multicast",
        ),
        (
            NetworkCreate {
                gateway: Some("127.0.0.1".parse().unwrap()),
                ..NetworkCreate::default()
            },
            "loopback",
        ),
        // The IPv4 subnet is fine; the IPv6 one is not: the IPv4 pool stays free.
        (
            NetworkCreate {
                subnet: Some("10.1.0.0/24".parse().unwrap()),
                enable_ipv6: true,
                ipv6: Some(v6("::/64")),
                ..NetworkCreate::default()
            },
            "unspecified",
        ),
        (
            NetworkCreate {
                subnet: Some("10.1.0.0/24".parse().unwrap()),
                enable_ipv6: true,
                ipv6: Some(v6("fe80::/64")),
                ..NetworkCreate::default()
            },
            "link-local",
        ),
    ];
    let before = ctl.snapshot().await.networks.clone();
    for (mut req, class) in cases {
        req.name = "bad".into();
        let e = ctl.create_network(req).await.unwrap_err();
        assert_eq!(e.status(), 400, "{e}");
        assert!(e.to_string().contains(class), "{e}");
        assert_eq!(ctl.snapshot().await.networks, before);
    }
    dual_stack(&ctl).await;
}

#[tokio::test]
async fn an_unusable_pool_from_ipam_is_released() {
    let mut reg = DriverRegistry::with_sandbox_layer(SandboxLayer::new(DryRun));
    reg.register(Arc::new(Flaky::default()));
    let pools = ["224.1.0.0/16", "10.9.0.0/16"]
        .map(|p| crate::ipam::DefaultPool::unchecked(p.parse().unwrap(), 24));
    let ctl = Controller::new(
        reg,
        Box::new(DefaultIpam::with_default_pools(pools.to_vec())),
        &std::env::temp_dir().join(format!("tapnet-ctl-test-{}", model::new_id())),
    );
    let req = |name: &str| NetworkCreate {
        name: name.into(),
        ..NetworkCreate::default()
    };
    let e = ctl.create_network(req("a")).await.unwrap_err();
    assert_eq!(e.status(), 400, "{e}");
    assert!(
        e.to_string().contains("IPAM returned an unusable pool")
            && e.to_string().contains("224.1.0.0/24"),
        "{e}"
    );
    assert!(ctl.snapshot().await.networks.is_empty());
    // Released: the same default pool is offered (and refused) again, not skipped.
    let e = ctl.create_network(req("b")).await.unwrap_err();
    assert!(e.to_string().contains("224.1.0.0/24"), "{e}");
}
