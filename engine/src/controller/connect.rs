//! Operation: connect a sandbox to a network (CNM `CreateEndpoint` + `Join`).
//!
//! Steps, under the locks of the network and the sandbox: resolve and validate
//! (a configuration network: 403; already connected, `host`/`none` exclusivity,
//! static addresses, MAC, interface name and link-local addresses against the driver,
//! no IPv6 address on a network whose MTU is under 1280,
//! aliases by [`tapnet_types::model::check_aliases`]: 400; MAC and link-local
//! addresses unique on the network and the MAC not the gateway's `02:42:<gateway>`,
//! an asked-for interface name free in the sandbox, the sandbox's namespace still
//! the one its path names, i.e. not vanished: 409)
//! → allocate the IPv4 and IPv6 addresses
//! (undo: release; on a global network the IPv4 and IPv6 addresses are first
//! claimed in the cluster store, undo: free them) → the driver's `create_endpoint` (undo: `delete_endpoint`; what
//! the driver chose is merged into the endpoint) → `join`, which describes the
//! interface (undo: `leave`) → the sandbox layer applies the description, with the
//! endpoint's link-local addresses added, under the asked-for name
//! ([`super::IFNAME_OPTION`]) or the next free one: move or rename, MAC, MTU,
//! addresses, routes (undo: the layer's undo; for a hand-off sandbox the driver makes
//! the device in the daemon's namespace and the layer only sets its MAC/MTU there, see
//! [`crate::sandbox_layer::SandboxLayer::hand_off`]) → publish the
//! sandbox's ports if this is its first non-internal network with a gateway service
//! that the driver did not disable (undo: unpublish each) → record a global network's
//! endpoint in the cluster store (undo: delete it) → commit the endpoint and the
//! sandbox's published ports. After the commit: publish the model, refresh the
//! network's DNS names and the sandbox's files.

use super::ipam_steps::{v4_pool, v6_pool, IpamTxn};
use super::{not_found, publish_one, ConnectOptions, Inner};
use crate::driver::{Driver, DriverRegistry, EndpointRequest, JoinRequest};
use crate::error::{Error, Result};
use crate::model::{self, Endpoint, Network, Sandbox, Store};
use crate::ports::{self, NatProto as _};
use crate::store::Change;
use crate::txn::{blocking, Txn};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

impl Inner {
    pub(super) async fn connect(
        &self,
        network: &str,
        sandbox: &str,
        opts: ConnectOptions,
        endpoint_id: Option<String>,
    ) -> Result<Endpoint> {
        let (_held, nid, sid, store) = self.lock_pair(network, sandbox).await?;
        let net = store
            .networks
            .get(&nid)
            .cloned()
            .ok_or_else(|| not_found("network", network))?;
        let sb = store
            .sandboxes
            .get(&sid)
            .cloned()
            .ok_or_else(|| not_found("sandbox", sandbox))?;
        if net.config_only {
            return Err(Error::Forbidden(format!(
                "network {} is a configuration network (--config-only): cannot create endpoint on configuration-only network; \
                 create a network with --config-from {} and connect to that",
                net.name, net.name
            )));
        }
        // Every entry point (API, CNI, Docker plugin) gets the same alias rules.
        let mut opts = opts;
        opts.aliases =
            tapnet_types::model::check_aliases(&opts.aliases).map_err(Error::InvalidRequest)?;
        if net.endpoint_of(&sid).is_some() {
            return Err(Error::Conflict(format!(
                "sandbox {} is already connected to network {}",
                sb.name, net.name
            )));
        }
        let driver = self.drivers.get(&net.driver)?;
        check_exclusive(&self.drivers, &store, &net, &sb, driver.as_ref())?;
        // macvlan has no gateway to publish through (Docker publishes nothing there):
        // ports not yet published on another network are refused, not dropped.
        if net.driver == "macvlan" && !sb.port_bindings.is_empty() && sb.published.is_none() {
            return Err(Error::InvalidRequest(format!(
                "sandbox {} publishes ports (-p) but network {} (driver macvlan) cannot                  publish them: connect the sandbox to a bridge network first, or create it                  without -p (macvlan endpoints are reached directly at their address)",
                sb.name, net.name
            )));
        }
        if !driver.capabilities().needs_addresses && (opts.ipv4.is_some() || opts.ipv6.is_some()) {
            return Err(Error::InvalidRequest(format!(
                "network {} (driver {}) gives endpoints no addresses: drop the static IPv4Address/IPv6Address",
                net.name, net.driver
            )));
        }
        if opts.ipv6.is_some() && net.ipv6.is_none() {
            return Err(Error::InvalidRequest(format!(
                "network {} has no IPv6 subnet (EnableIPv6 is off): cannot give IPv6Address",
                net.name
            )));
        }
        // A hand-off sandbox's namespace may not exist yet (dockerd joins before runc
        // made it): the driver works in the daemon's namespace anyway.
        let ns = match (self.netns_of(&sid), sb.handoff) {
            (Some(ns), _) => ns,
            (None, true) => blocking("open the daemon's namespace", host_netns).await?,
            (None, false) => {
                return Err(Error::InvalidRequest(format!(
                    "sandbox {} has no open namespace",
                    sb.name
                )))
            }
        };
        // A namespace that vanished under the sandbox (its processes ended, its file
        // unmounted or removed) lives on only through our descriptor: nothing could
        // use a device made there.
        if !sb.handoff {
            let held = Arc::clone(&ns);
            let gone = blocking("check the sandbox's namespace", move || {
                Ok(!super::handoff::same_namespace(&held))
            })
            .await?;
            if gone {
                return Err(Error::Conflict(format!(
                    "sandbox {} has lost its network namespace ({} no longer names it): \
                     remove the sandbox (tapnet sandbox rm {})",
                    sb.name,
                    sb.netns_path.display(),
                    sb.name
                )));
            }
        }
        if opts.mac.is_some() && !driver.capabilities().needs_addresses {
            return Err(Error::InvalidRequest(format!(
                "network {} (driver {}) gives endpoints no device: drop the MacAddress",
                net.name, net.driver
            )));
        }
        if !driver.capabilities().needs_addresses
            && (opts.ifname.is_some() || !opts.link_local_ips.is_empty())
        {
            return Err(Error::InvalidRequest(format!(
                "network {} (driver {}) gives endpoints no device: drop the {} driver option and the LinkLocalIPs",
                net.name,
                net.driver,
                super::IFNAME_OPTION
            )));
        }
        check_ipv6_mtu(&net, &opts.link_local_ips)?;
        for ip in &opts.link_local_ips {
            if let Some(e) = net
                .endpoints
                .values()
                .find(|e| e.link_local_ips.contains(ip))
            {
                let by = store
                    .sandboxes
                    .get(&e.sandbox_id)
                    .map_or(e.sandbox_id.as_str(), |s| s.name.as_str());
                return Err(Error::Conflict(format!(
                    "link-local address {ip} is already used on network {} (by sandbox {by})",
                    net.name
                )));
            }
        }
        if let Some(ifname) = &opts.ifname {
            check_ifname_free(&store, &sb, Arc::clone(&ns), ifname).await?;
        }
        if let Some(mac) = opts.mac {
            check_mac_free(&store, &net, mac)?;
        }
        if let Some(id) = &endpoint_id {
            model::validate_id("endpoint", id)?;
            if store
                .networks
                .values()
                .any(|n| n.endpoints.contains_key(id))
            {
                return Err(Error::Conflict(format!("endpoint {id} already exists")));
            }
        }
        let mut txn = Txn::new(format!("connect {} to network {}", sb.name, net.name));
        let r = self
            .connect_steps(&mut txn, &net, &sb, driver, ns, opts, endpoint_id)
            .await;
        let (endpoint, sb_after) = txn.finish(r).await?;
        tracing::info!(
            network = %net.name,
            sandbox = %sb.name,
            interface = %endpoint.interface,
            ip = ?endpoint.ipv4,
            ipv6 = ?endpoint.ipv6,
            "connected"
        );
        if let Some(p) = sb_after.as_ref().and_then(|s| s.published.as_ref()) {
            tracing::info!(sandbox = %sb.name, ports = ?p.ports, "ports published");
        }
        let ep = endpoint.clone();
        self.publish(|s| {
            if let Some(n) = s.networks.get_mut(&nid) {
                n.endpoints.insert(ep.id.clone(), ep);
            }
            if let Some(after) = sb_after {
                s.sandboxes.insert(sid.clone(), after);
            }
        });
        self.refresh_names(&nid).await;
        self.refresh_files(&sid).await;
        Ok(endpoint)
    }

    #[allow(clippy::too_many_arguments)]
    async fn connect_steps(
        &self,
        txn: &mut Txn,
        net: &Network,
        sb: &Sandbox,
        driver: Arc<dyn Driver>,
        ns: Arc<tapnet_sandbox::netns::Netns>,
        mut opts: ConnectOptions,
        endpoint_id: Option<String>,
    ) -> Result<(Endpoint, Option<Sandbox>)> {
        let global = self.is_global(&net.id);
        if global {
            opts.ipv4 = self.claim_global_ipv4(txn, net, opts.ipv4).await?;
            opts.ipv6 = self.claim_global_ipv6(txn, net, opts.ipv6).await?;
        }
        // Addresses.
        let (ipv4, ipv6, taken) = {
            let mut ipam = self.ipam();
            // An IPAM plugin that requires the MAC gets it with the request.
            let mut options = BTreeMap::new();
            if v4_pool(net).is_some_and(|p| ipam.requires_mac(&p))
                || v6_pool(net).is_some_and(|p| ipam.requires_mac(&p))
            {
                let mac = default_mac(driver.as_ref(), opts.mac, None, net);
                opts.mac = mac;
                if let Some(m) = mac {
                    options.insert(
                        tapnet_types::plugin::OPT_MAC_ADDRESS.to_string(),
                        model::format_mac(&m),
                    );
                }
            }
            let none = options;
            let mut tx = IpamTxn::new(ipam.as_mut());
            let ipv4 = match v4_pool(net) {
                Some(pool) => match tx
                    .request_address(&pool, opts.ipv4.map(IpAddr::V4), &none)
                    .map_err(|e| Error::ipam(txn.op(), e))?
                {
                    IpAddr::V4(a) if net.subnet.is_some_and(|s| !s.contains(&a)) => {
                        return Err(Error::Driver(format!(
                            "{}: IPAM ({}) returned {a}, outside the network's subnet",
                            txn.op(),
                            net.ipam_driver
                        )))
                    }
                    IpAddr::V4(a) => Some(a),
                    IpAddr::V6(a) => {
                        return Err(Error::InvalidRequest(format!(
                            "{}: IPAM returned IPv6 address {a} from the IPv4 pool",
                            txn.op()
                        )))
                    }
                },
                None => None,
            };
            let ipv6 = match v6_pool(net) {
                Some(pool) => match tx
                    .request_address(&pool, opts.ipv6.map(IpAddr::V6), &none)
                    .map_err(|e| Error::ipam(txn.op(), e))?
                {
                    IpAddr::V6(a) if net.ipv6.as_ref().is_some_and(|c| !c.subnet.contains(&a)) => {
                        return Err(Error::Driver(format!(
                            "{}: IPAM ({}) returned {a}, outside the network's IPv6 subnet",
                            txn.op(),
                            net.ipam_driver
                        )))
                    }
                    IpAddr::V6(a) => Some(a),
                    IpAddr::V4(a) => {
                        return Err(Error::InvalidRequest(format!(
                            "{}: IPAM returned IPv4 address {a} from the IPv6 pool",
                            txn.op()
                        )))
                    }
                },
                None => None,
            };
            (ipv4, ipv6, tx.commit())
        };
        self.undo_ipam(txn, taken);
        let mut endpoint = Endpoint {
            id: endpoint_id.unwrap_or_else(model::new_id),
            network_id: net.id.clone(),
            sandbox_id: sb.id.clone(),
            interface: String::new(),
            mac: default_mac(driver.as_ref(), opts.mac, ipv4, net),
            ipv4,
            prefix_len: net.subnet.map_or(0, |s| s.prefix_len()),
            ipv6,
            prefix_len_v6: net.ipv6.as_ref().map_or(0, |c| c.subnet.prefix_len()),
            aliases: opts.aliases,
            driver_opts: opts
                .ifname
                .iter()
                .map(|n| (super::IFNAME_OPTION.to_string(), n.clone()))
                .collect(),
            link_local_ips: opts.link_local_ips,
        };
        // The driver's endpoint (it may choose the MAC and addresses).
        let (d, n, ep) = (Arc::clone(&driver), net.clone(), endpoint.clone());
        let chosen = blocking("create endpoint", move || {
            d.create_endpoint(&EndpointRequest {
                network: &n,
                endpoint: &ep,
            })
        })
        .await?;
        let (d, n, e) = (Arc::clone(&driver), net.id.clone(), endpoint.id.clone());
        txn.on_undo("delete the driver's endpoint", move || {
            d.delete_endpoint(&n, &e)
        });
        chosen.apply_to(&mut endpoint)?;
        // Join: the driver describes the interface. A hand-off sandbox's device is
        // made in the daemon's own namespace (the driver is given that one as the
        // sandbox), for the runtime to move in.
        let host = match sb.handoff {
            true => Some(blocking("open the daemon's namespace", host_netns).await?),
            false => None,
        };
        let (d, n, ep, name, sandbox) = (
            Arc::clone(&driver),
            net.clone(),
            endpoint.clone(),
            sb.name.clone(),
            Arc::clone(host.as_ref().unwrap_or(&ns)),
        );
        let join = blocking("join", move || {
            d.join(&JoinRequest {
                network: &n,
                endpoint: &ep,
                sandbox: &sandbox,
                sandbox_name: &name,
            })
        })
        .await?;
        let (d, n, e) = (Arc::clone(&driver), net.id.clone(), endpoint.id.clone());
        txn.on_undo("leave", move || d.leave(&n, &e));
        // The sandbox layer applies the description.
        let layer = self.drivers.sandbox_layer();
        let (l, e, name, desc, ifname) = (
            Arc::clone(&layer),
            endpoint.id.clone(),
            sb.name.clone(),
            crate::sandbox_layer::with_link_local(&join, &endpoint.link_local_ips),
            opts.ifname.clone(),
        );
        endpoint.interface = blocking("configure the interface", move || match host {
            Some(host) => l.hand_off(&e, &host, &desc),
            None => l.apply(&e, &ns, &name, &desc, ifname.as_deref()),
        })
        .await?;
        let e = endpoint.id.clone();
        txn.on_undo(
            format!("undo the setup of {}", endpoint.interface),
            move || layer.undo(&e),
        );
        // Docker `ProgramExternalConnectivity` (remote drivers; a no-op for others).
        if !join.disable_gateway_service && !net.internal {
            let (d, n, ep, ports) = (
                Arc::clone(&driver),
                net.id.clone(),
                endpoint.clone(),
                sb.port_bindings.clone(),
            );
            blocking("program external connectivity", move || {
                d.program_external_connectivity(&n, &ep, &ports)
            })
            .await?;
            let (d, n, e) = (Arc::clone(&driver), net.id.clone(), endpoint.id.clone());
            txn.on_undo("revoke external connectivity", move || {
                d.revoke_external_connectivity(&n, &e)
            });
        }
        // Published ports go to the first non-internal bridge network joined.
        let mut sb_after = None;
        if let (Some(a), None) = (ipv4, &sb.published) {
            if driver.capabilities().gateway_service
                && !join.disable_gateway_service
                && !net.internal
                && !sb.port_bindings.is_empty()
            {
                let sandbox_ip = IpAddr::V4(a);
                let mut bound = Vec::new();
                for b in &sb.port_bindings {
                    let (d, n, b) = (Arc::clone(&driver), net.id.clone(), *b);
                    let port = blocking("publish", move || {
                        publish_one(d.as_ref(), &n, sandbox_ip, &b)
                    })
                    .await?;
                    let (d, n) = (Arc::clone(&driver), net.id.clone());
                    txn.on_undo(format!("unpublish {}", port.host), move || {
                        d.unpublish(&n, port.binding.proto.nat(), port.host)
                    });
                    bound.push(port);
                }
                sb_after = Some(Sandbox {
                    published: Some(ports::Published {
                        network_id: net.id.clone(),
                        sandbox_ip,
                        ports: bound,
                    }),
                    ..sb.clone()
                });
            }
        }
        if global {
            // For the other hosts; the local record below is for this host's restart.
            self.record_global_endpoint(txn, &endpoint, &sb.name)
                .await?;
        }
        let mut changes = vec![Change::PutEndpoint(endpoint.clone())];
        if let Some(s) = &sb_after {
            changes.push(Change::PutSandbox(s.clone()));
        }
        self.commit(txn, changes).await?;
        Ok((endpoint, sb_after))
    }
}

/// The MAC of a network's gateway as tapnet gives it (`02:42:<gateway IPv4>`: the
/// bridge and overlay drivers' in-process gateway). Reserved on every network with
/// an IPv4 gateway, so that no endpoint can take a gateway over.
fn gateway_mac(net: &Network) -> Option<[u8; 6]> {
    net.gateway.map(model::mac_for)
}

/// A requested MAC must be neither the network's gateway's (it would take the
/// gateway over for every sandbox of the network) nor another endpoint's (409).
fn check_mac_free(store: &Store, net: &Network, mac: [u8; 6]) -> Result<()> {
    if gateway_mac(net) == Some(mac) {
        return Err(Error::Conflict(format!(
            "MAC address {} is the gateway's MAC on network {}: choose another",
            model::format_mac(&mac),
            net.name
        )));
    }
    if let Some(e) = net.endpoints.values().find(|e| e.mac == Some(mac)) {
        let by = store
            .sandboxes
            .get(&e.sandbox_id)
            .map_or(e.sandbox_id.as_str(), |s| s.name.as_str());
        return Err(Error::Conflict(format!(
            "MAC address {} is already used on network {} (by sandbox {by}): choose another",
            model::format_mac(&mac),
            net.name
        )));
    }
    Ok(())
}

/// An interface name asked for (`com.docker.network.endpoint.ifname`) must not be
/// taken in the sandbox: by another endpoint's interface or by any device there (409).
async fn check_ifname_free(
    store: &Store,
    sb: &Sandbox,
    ns: Arc<tapnet_sandbox::netns::Netns>,
    ifname: &str,
) -> Result<()> {
    let taken = |by: String| {
        Error::Conflict(format!(
            "sandbox {} already has an interface named {ifname} ({by}): choose another {}",
            sb.name,
            super::IFNAME_OPTION
        ))
    };
    if let Some((n, _)) = store
        .endpoints_of_sandbox(&sb.id)
        .into_iter()
        .find(|(_, e)| e.interface == ifname)
    {
        return Err(taken(format!("its endpoint on network {}", n.name)));
    }
    let names = blocking("list the sandbox's interfaces", move || {
        tapnet_sandbox::iface::link_names(&ns)
            .map_err(|e| Error::os("list the sandbox's interfaces", e))
    })
    .await?;
    if names.iter().any(|n| n == ifname) {
        return Err(taken("a device in its namespace".into()));
    }
    Ok(())
}

/// The daemon's own network namespace (where a hand-off sandbox's devices are made).
pub(super) fn host_netns() -> Result<Arc<tapnet_sandbox::netns::Netns>> {
    let path = std::path::Path::new("/proc/self/ns/net");
    tapnet_sandbox::netns::Netns::open(path)
        .map(Arc::new)
        .map_err(|e| Error::os("open the daemon's network namespace", e))
}

/// Docker's rules for `host` and `none`: a sandbox on one of them is on no other
/// network, and a sandbox on other networks cannot join one of them.
fn check_exclusive(
    drivers: &DriverRegistry,
    store: &Store,
    net: &Network,
    sb: &Sandbox,
    driver: &dyn Driver,
) -> Result<()> {
    let others = store.endpoints_of_sandbox(&sb.id);
    if let Some((exclusive, _)) = others.iter().find(|(n, _)| {
        drivers
            .get(&n.driver)
            .is_ok_and(|d| d.capabilities().single_instance)
    }) {
        return Err(Error::InvalidRequest(format!(
            "sandbox {} is connected to network {} (driver {}), which excludes every other network: disconnect it first",
            sb.name, exclusive.name, exclusive.driver
        )));
    }
    if driver.capabilities().single_instance && !others.is_empty() {
        let mut names: Vec<&str> = others.iter().map(|(n, _)| n.name.as_str()).collect();
        names.sort_unstable();
        return Err(Error::InvalidRequest(format!(
            "sandbox {} cannot join network {} (driver {}) while connected to other networks ({}): disconnect them first",
            sb.name,
            net.name,
            net.driver,
            names.join(", ")
        )));
    }
    Ok(())
}

/// The MAC of a new endpoint: none without a device (`null`, `host`); else the
/// requested one, else `02:42:<IPv4>` when no other endpoint (nor the gateway) has
/// it, else a random `02:42:…` address not used on the network.
pub(super) fn default_mac(
    driver: &dyn Driver,
    requested: Option<[u8; 6]>,
    ipv4: Option<Ipv4Addr>,
    net: &Network,
) -> Option<[u8; 6]> {
    if !driver.capabilities().needs_addresses {
        return None;
    }
    if let Some(mac) = requested {
        return Some(mac);
    }
    let used = |mac: [u8; 6]| {
        net.endpoints.values().any(|e| e.mac == Some(mac)) || gateway_mac(net) == Some(mac)
    };
    // `02:42:<IPv4>` unless another endpoint asked for that MAC before.
    if let Some(mac) = ipv4.map(model::mac_for).filter(|m| !used(*m)) {
        return Some(mac);
    }
    loop {
        let mut mac = [0x02, 0x42, 0, 0, 0, 0];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut mac[2..]);
        if !used(mac) {
            return Some(mac);
        }
    }
}

/// IPv6 addresses (the network's, or IPv6 `LinkLocalIPs`) need an MTU of at least
/// 1280: the kernel refuses them on a smaller link, so such a connect is a 400 (a
/// network stored before its create refused the pair keeps answering so).
fn check_ipv6_mtu(net: &Network, link_local_ips: &[IpAddr]) -> Result<()> {
    let Some(v) = net.options.get(model::MTU_OPTION) else {
        return Ok(());
    };
    let mtu = model::parse_mtu(v)?;
    if mtu >= super::network_create::IPV6_MIN_MTU {
        return Ok(());
    }
    let what = if net.ipv6.is_some() {
        "the network has IPv6".to_string()
    } else if let Some(ip) = link_local_ips.iter().find(|ip| ip.is_ipv6()) {
        format!("LinkLocalIPs has the IPv6 address {ip}")
    } else {
        return Ok(());
    };
    Err(Error::InvalidRequest(format!(
        "network {} has {} {mtu}, too small for IPv6 (at least {}), and {what}: \
         give IPv4 link-local addresses only, or use a network with a larger MTU",
        net.name,
        model::MTU_OPTION,
        super::network_create::IPV6_MIN_MTU
    )))
}
