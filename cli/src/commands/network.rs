//! `tapnet network ...`: create, ls, inspect, rm, connect, disconnect, prune, stats, fdb.
//!
//! Request bodies and `filters` are built exactly as the docker CLI builds them
//! (`create_body` pairs each `--gateway`/`--ip-range`/`--aux-address` with the
//! `--subnet` that contains it and refuses one that fits none, as docker does). The
//! bodies sent and the answers read are the typed ones of [`tapnet_types::api`];
//! `inspect` prints the daemon's objects as they came, or runs `--format` on each.
//! `ls` prints rows with the keys of docker's network list (`.ID .Name .Driver
//! .Scope .IPv6 .Internal .Labels .CreatedAt`) through [`crate::format`]; filters
//! are the daemon's (`GET /networks?filters=`).

use super::{inspect_each, remove_each, Out};
use crate::args::{
    ConnectArgs, DisconnectArgs, ListArgs, ListFormat, NetworkCmd, NetworkCreate, NetworkLsArgs,
    PruneArgs, SwitchArgs,
};
use crate::client::{seg, Client};
use crate::format::{list_format, render_list};
use crate::output::{go_time, json_line, kv_list, short_id, table};
use anyhow::bail;
use ipnet::IpNet;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::io::BufRead;
use std::net::IpAddr;
use tapnet_types::api::{
    ConfigReference, ConnectBody, CreateNetworkResponse, DisconnectBody, EndpointConfigBody,
    EndpointIpamBody, FdbResource, GatewayStatsResource, IpamBody, IpamConfigBody,
    NetworkCreateBody, NetworkPruneResponse, NetworkResource, StatsResource,
};

/// Run one `network` subcommand.
pub async fn run(c: &Client, cmd: NetworkCmd, o: &mut Out<'_>) -> anyhow::Result<()> {
    match cmd {
        NetworkCmd::Create(a) => create(c, &a, o).await,
        NetworkCmd::Ls(a) => ls(c, &a, o).await,
        NetworkCmd::Inspect(a) => {
            inspect_each(c, "/networks", &a.targets, a.format.as_deref(), o).await
        }
        NetworkCmd::Rm(a) => remove_each(c, "/networks", &a.targets, "", o).await,
        NetworkCmd::Connect(a) => connect(c, &a).await,
        NetworkCmd::Disconnect(a) => disconnect(c, &a).await,
        NetworkCmd::Prune(a) => prune(c, &a, o, &mut std::io::stdin().lock()).await,
        NetworkCmd::Stats(a) => stats(c, &a, o).await,
        NetworkCmd::Fdb(a) => fdb(c, &a, o).await,
    }
}

/// `KEY=VALUE` pairs as a map (a repeated key keeps its last value).
fn map_of(pairs: &[(String, String)]) -> BTreeMap<String, String> {
    pairs.iter().cloned().collect()
}

/// One `--subnet` and what was paired with it.
struct Pool {
    subnet: IpNet,
    cfg: IpamConfigBody,
}

/// The `IPAM.Config` entries for the subnet flags, paired as docker pairs them.
fn ipam_config(a: &NetworkCreate) -> anyhow::Result<Vec<IpamConfigBody>> {
    let mut pools: Vec<Pool> = Vec::new();
    for s in &a.subnet {
        let subnet: IpNet = s
            .parse()
            .map_err(|_| anyhow::anyhow!("invalid subnet {s}: give a CIDR such as 10.10.0.0/24"))?;
        if pools
            .iter()
            .any(|p| p.subnet.contains(&subnet) || subnet.contains(&p.subnet))
        {
            bail!("multiple overlapping subnet configuration is not supported");
        }
        let cfg = IpamConfigBody {
            subnet: Some(s.clone()),
            ..IpamConfigBody::default()
        };
        pools.push(Pool { subnet, cfg });
    }
    let pool_of = |pools: &mut Vec<Pool>, ip: IpAddr| -> Option<usize> {
        pools.iter().position(|p| p.subnet.contains(&ip))
    };
    for r in &a.ip_range {
        let range: IpNet = r
            .parse()
            .map_err(|_| anyhow::anyhow!("invalid ip-range {r}: give a CIDR"))?;
        let Some(i) = pool_of(&mut pools, range.network()) else {
            bail!("no matching subnet for range {r}");
        };
        if let Some(old) = &pools[i].cfg.ip_range {
            bail!(
                "cannot configure multiple ranges ({old}, {r}) on the same subnet ({})",
                pools[i].subnet
            );
        }
        pools[i].cfg.ip_range = Some(r.clone());
    }
    for gw in &a.gateway {
        let Some(i) = pool_of(&mut pools, *gw) else {
            bail!("no matching subnet for gateway {gw}");
        };
        if let Some(old) = &pools[i].cfg.gateway {
            bail!(
                "cannot configure multiple gateways ({old}, {gw}) for the same subnet ({})",
                pools[i].subnet
            );
        }
        pools[i].cfg.gateway = Some(gw.to_string());
    }
    for (name, ip) in &a.aux_addresses {
        let Some(i) = pool_of(&mut pools, *ip) else {
            bail!("no matching subnet for aux-address {ip}");
        };
        pools[i]
            .cfg
            .auxiliary_addresses
            .get_or_insert_with(BTreeMap::new)
            .insert(name.clone(), ip.to_string());
    }
    Ok(pools.into_iter().map(|p| p.cfg).collect())
}

/// The `POST /networks/create` body for `network create` (docker's shape).
pub fn create_body(a: &NetworkCreate) -> anyhow::Result<NetworkCreateBody> {
    Ok(NetworkCreateBody {
        name: a.name.clone(),
        driver: Some(a.driver.clone()),
        ipam: Some(IpamBody {
            driver: Some(a.ipam_driver.clone()),
            config: Some(ipam_config(a)?),
            options: (!a.ipam_opts.is_empty()).then(|| map_of(&a.ipam_opts)),
        }),
        options: Some(map_of(&a.opts)),
        labels: Some(map_of(&a.labels)),
        internal: Some(a.internal),
        attachable: Some(a.attachable),
        enable_ipv6: Some(a.ipv6),
        scope: a.scope.clone(),
        ingress: a.ingress.then_some(true),
        config_only: a.config_only.then_some(true),
        config_from: a
            .config_from
            .clone()
            .map(|network| ConfigReference { network }),
        ..NetworkCreateBody::default()
    })
}

async fn create(c: &Client, a: &NetworkCreate, o: &mut Out<'_>) -> anyhow::Result<()> {
    let r: CreateNetworkResponse = c.post_as("/networks/create", &create_body(a)?).await?;
    if !r.warning.is_empty() {
        writeln!(o.err, "WARNING: {}", r.warning)?;
    }
    writeln!(o.out, "{}", r.id)?;
    Ok(())
}

/// `network ls`'s default table (docker's).
pub const LS_TABLE: &str = "table {{.ID}}\t{{.Name}}\t{{.Driver}}\t{{.Scope}}";

/// Column titles of `network ls` (docker's).
pub const LS_HEADER: &[(&str, &str)] = &[
    ("ID", "NETWORK ID"),
    ("Name", "NAME"),
    ("Driver", "DRIVER"),
    ("Scope", "SCOPE"),
    ("IPv4", "IPV4"),
    ("IPv6", "IPV6"),
    ("Internal", "INTERNAL"),
    ("Labels", "LABELS"),
    ("CreatedAt", "CREATED AT"),
];

/// One `network ls` row: docker's keys, every value a string.
pub fn ls_row(n: &NetworkResource, no_trunc: bool) -> Map<String, Value> {
    let row = json!({
        "ID": short_id(&n.id, no_trunc),
        "Name": n.name,
        "Driver": n.driver,
        "Scope": n.scope,
        "IPv4": n.enable_ipv4.to_string(),
        "IPv6": n.enable_ipv6.to_string(),
        "Internal": n.internal.to_string(),
        "Labels": kv_list(&n.labels),
        "CreatedAt": go_time(&n.created),
    });
    match row {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// What `network ls` prints for these networks (as listed by `GET /networks`),
/// sorted by name as docker sorts them.
pub fn ls_output(mut nets: Vec<NetworkResource>, a: &ListArgs) -> anyhow::Result<String> {
    nets.sort_by(|x, y| x.name.cmp(&y.name));
    let rows: Vec<Map<String, Value>> = nets.iter().map(|n| ls_row(n, a.no_trunc)).collect();
    render_list(&list_format(&a.format, a.quiet, LS_TABLE), LS_HEADER, &rows)
}

/// Docker's `filters` JSON for `KEY=VALUE` pairs: `{"key":{"value":true}}`.
pub fn filters_json(pairs: &[(String, String)]) -> Value {
    let mut m = Map::new();
    for (k, v) in pairs {
        let e = m
            .entry(k.clone())
            .or_insert_with(|| Value::Object(Map::new()));
        e[v.as_str()] = Value::Bool(true);
    }
    Value::Object(m)
}

/// `path` with `?filters=...` when there are filters.
pub fn with_filters(path: &str, pairs: &[(String, String)]) -> String {
    if pairs.is_empty() {
        return path.to_string();
    }
    format!("{path}?filters={}", seg(&filters_json(pairs).to_string()))
}

async fn ls(c: &Client, a: &NetworkLsArgs, o: &mut Out<'_>) -> anyhow::Result<()> {
    let nets: Vec<NetworkResource> = c.get_as(&with_filters("/networks", &a.filters)).await?;
    write!(o.out, "{}", ls_output(nets, &a.list)?)?;
    Ok(())
}

/// The prompt `network prune` shows without `-f` (docker's words).
pub const PRUNE_WARNING: &str = "WARNING! This will remove all custom networks not used by at least one container.\nAre you sure you want to continue? [y/N] ";

/// `network prune`: asks on `input` unless `-f`; prints the removed networks.
pub async fn prune(
    c: &Client,
    a: &PruneArgs,
    o: &mut Out<'_>,
    input: &mut dyn BufRead,
) -> anyhow::Result<()> {
    if !a.force {
        write!(o.out, "{PRUNE_WARNING}")?;
        o.out.flush()?;
        let mut line = String::new();
        input.read_line(&mut line)?;
        let answer = line.trim().to_ascii_lowercase();
        if answer != "y" && answer != "yes" {
            return Ok(());
        }
    }
    // The request has no body of its own; `{}` is sent as before.
    let r: NetworkPruneResponse = c
        .post_as(&with_filters("/networks/prune", &a.filters), &Map::new())
        .await?;
    if !r.networks_deleted.is_empty() {
        writeln!(o.out, "Deleted Networks:")?;
        for n in &r.networks_deleted {
            writeln!(o.out, "{n}")?;
        }
    }
    Ok(())
}

/// The `POST /networks/{id}/connect` body for `network connect`.
pub fn connect_body(a: &ConnectArgs) -> ConnectBody {
    let ipam = EndpointIpamBody {
        ipv4_address: a.ip.map(|ip| ip.to_string()),
        ipv6_address: a.ip6.map(|ip| ip.to_string()),
        link_local_ips: (!a.link_local_ips.is_empty()).then(|| a.link_local_ips.clone()),
    };
    ConnectBody {
        container: a.sandbox.clone(),
        endpoint_config: Some(EndpointConfigBody {
            ipam_config: (ipam != EndpointIpamBody::default()).then_some(ipam),
            aliases: (!a.aliases.is_empty()).then(|| a.aliases.clone()),
            mac_address: a.mac_address.clone(),
            driver_opts: (!a.driver_opts.is_empty()).then(|| map_of(&a.driver_opts)),
            links: (!a.links.is_empty()).then(|| a.links.clone()),
            gw_priority: None,
        }),
    }
}

async fn connect(c: &Client, a: &ConnectArgs) -> anyhow::Result<()> {
    let body = connect_body(a);
    c.post(&format!("/networks/{}/connect", seg(&a.network)), &body)
        .await?;
    Ok(())
}

async fn disconnect(c: &Client, a: &DisconnectArgs) -> anyhow::Result<()> {
    let body = DisconnectBody {
        container: a.sandbox.clone(),
        force: a.force,
    };
    c.post(&format!("/networks/{}/disconnect", seg(&a.network)), &body)
        .await?;
    Ok(())
}

/// Sum of drop counters (`Drops`: reason → count).
fn drops(d: &BTreeMap<String, u64>) -> u64 {
    d.values().sum()
}

/// What `network stats` prints for a `GET /networks/{id}/stats` answer.
pub fn stats_output(stats: &StatsResource, a: &SwitchArgs) -> String {
    if a.format == ListFormat::Json {
        return json_line(stats);
    }
    let rows: Vec<Vec<String>> = stats
        .ports
        .iter()
        .map(|p| {
            vec![
                short_id(&p.endpoint_id, a.no_trunc).to_string(),
                p.sandbox.clone(),
                p.interface.clone(),
                p.rx_packets.to_string(),
                p.rx_bytes.to_string(),
                p.tx_packets.to_string(),
                p.tx_bytes.to_string(),
                drops(&p.drops).to_string(),
            ]
        })
        .collect();
    let mut text = table(
        &[
            "ENDPOINT", "SANDBOX", "IFACE", "RX-PKTS", "RX-BYTES", "TX-PKTS", "TX-BYTES", "DROPS",
        ],
        &rows,
    );
    if let Some(g) = &stats.gateway {
        text.push_str(&gateway_line(g));
    }
    text
}

/// The `gateway:` line of `network stats`: frames, flows (active/total), DNS, drops
/// (total, then the non-zero reasons).
pub fn gateway_line(g: &GatewayStatsResource) -> String {
    let flow = |p: &str| {
        let (active, total) = g.flows.get(p).map_or((0, 0), |f| (f.active, f.total));
        format!("{p} {active}/{total}")
    };
    let mut reasons: Vec<String> = g
        .drops
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(k, n)| format!("{k}={n}"))
        .collect();
    reasons.sort();
    let total = drops(&g.drops);
    let detail = if reasons.is_empty() {
        String::new()
    } else {
        format!(" ({})", reasons.join(" "))
    };
    format!(
        "gateway: frames in {} out {}; flows {} {} {} (active/total), limit hits {}; dns local {} forwarded {} servfail {}; drops {total}{detail}\n",
        g.frames_in,
        g.frames_out,
        flow("tcp"),
        flow("udp"),
        flow("icmp"),
        g.flow_limit_hits,
        g.dns_local,
        g.dns_forwarded,
        g.dns_servfail,
    )
}

async fn stats(c: &Client, a: &SwitchArgs, o: &mut Out<'_>) -> anyhow::Result<()> {
    let s: StatsResource = c
        .get_as(&format!("/networks/{}/stats", seg(&a.network)))
        .await?;
    write!(o.out, "{}", stats_output(&s, a))?;
    Ok(())
}

/// What `network fdb` prints for a `GET /networks/{id}/fdb` answer.
pub fn fdb_output(mut entries: Vec<FdbResource>, a: &SwitchArgs) -> String {
    entries.sort_by(|x, y| {
        x.port
            .cmp(&y.port)
            .then_with(|| x.mac_address.cmp(&y.mac_address))
    });
    if a.format == ListFormat::Json {
        return entries.iter().map(json_line).collect();
    }
    // A VTEP column only where some MAC is behind a tunnel (overlay networks).
    let tunnel = entries.iter().any(|e| !e.vtep.is_empty());
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            let mut row = vec![
                e.mac_address.clone(),
                e.port.to_string(),
                short_id(&e.endpoint_id, a.no_trunc).to_string(),
                format!("{:.1}s", e.age_seconds),
            ];
            if tunnel {
                row.push(e.vtep.clone());
            }
            row
        })
        .collect();
    if tunnel {
        table(&["MAC", "PORT", "ENDPOINT", "AGE", "VTEP"], &rows)
    } else {
        table(&["MAC", "PORT", "ENDPOINT", "AGE"], &rows)
    }
}

async fn fdb(c: &Client, a: &SwitchArgs, o: &mut Out<'_>) -> anyhow::Result<()> {
    let entries: Vec<FdbResource> = c
        .get_as(&format!("/networks/{}/fdb", seg(&a.network)))
        .await?;
    write!(o.out, "{}", fdb_output(entries, a))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;
    use crate::args::{Cli, Command};
    use crate::client::tests::{fake_daemon, rt};
    use crate::commands::tests::{exit_code, Captured};
    use clap::Parser;

    const ID1: &str = "1111111111111111111111111111111111111111111111111111111111111111";
    const ID2: &str = "2222222222222222222222222222222222222222222222222222222222222222";

    // The tests speak JSON, as the wire does: these adapters serialize the typed
    // request bodies and read the JSON fixtures into the typed answers.
    fn to_json<T: serde::Serialize>(t: T) -> Value {
        serde_json::to_value(t).unwrap()
    }

    fn from_json<T: serde::de::DeserializeOwned>(v: &Value) -> T {
        serde_json::from_value(v.clone()).unwrap()
    }

    fn create_body(a: &NetworkCreate) -> anyhow::Result<Value> {
        super::create_body(a).map(to_json)
    }

    fn connect_body(a: &ConnectArgs) -> Value {
        to_json(super::connect_body(a))
    }

    fn ls_output(nets: Vec<Value>, a: &ListArgs) -> String {
        super::ls_output(nets.iter().map(from_json).collect(), a).unwrap()
    }

    fn stats_output(s: &Value, a: &SwitchArgs) -> String {
        super::stats_output(&from_json(s), a)
    }

    fn fdb_output(entries: Vec<Value>, a: &SwitchArgs) -> String {
        super::fdb_output(entries.iter().map(from_json).collect(), a)
    }

    fn cmd(args: &[&str]) -> NetworkCmd {
        let argv = ["tapnet", "network"].iter().chain(args).copied();
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Network(n) => n,
            other => panic!("{other:?}"),
        }
    }

    fn list_args(args: &[&str]) -> ListArgs {
        match cmd(&[&["ls"], args].concat()) {
            NetworkCmd::Ls(a) => a.list,
            other => panic!("{other:?}"),
        }
    }

    fn switch_args(args: &[&str]) -> SwitchArgs {
        match cmd(&[&["stats"], args, &["net"]].concat()) {
            NetworkCmd::Stats(a) => a,
            other => panic!("{other:?}"),
        }
    }

    fn nets() -> Vec<Value> {
        vec![
            json!({"Name": "zeta", "Id": ID2, "Driver": "bridge", "Scope": "local",
                   "Created": "2026-11-23T14:00:00Z", "EnableIPv6": false, "Internal": false,
                   "Labels": {"team": "a"}}),
            json!({"Name": "alpha", "Id": ID1, "Driver": "bridge", "Scope": "local",
                   "Created": "2026-11-23T13:00:00Z", "Labels": {}}),
        ]
    }

    #[test]
    fn create_body_matches_the_api() {
        let NetworkCmd::Create(a) = cmd(&[
            "create",
            "--subnet",
            "10.10.0.0/24",
            "--gateway",
            "10.10.0.1",
            "--label",
            "a=b",
            "-o",
            "mtu=9000",
            "net1",
        ]) else {
            panic!()
        };
        assert_eq!(
            create_body(&a).unwrap(),
            json!({"Name": "net1", "Driver": "bridge", "EnableIPv6": false, "Internal": false,
                   "Attachable": false,
                   "IPAM": {"Driver": "default",
                            "Config": [{"Subnet": "10.10.0.0/24", "Gateway": "10.10.0.1"}]},
                   "Options": {"mtu": "9000"}, "Labels": {"a": "b"}})
        );
        let NetworkCmd::Create(a) = cmd(&["create", "n"]) else {
            panic!()
        };
        let b = create_body(&a).unwrap();
        assert_eq!(b["IPAM"]["Config"], json!([]));
        assert_eq!(b["Options"], json!({}));
        let NetworkCmd::Create(a) = cmd(&["create", "--subnet", "10.0.0.0/8", "n"]) else {
            panic!()
        };
        assert_eq!(
            create_body(&a).unwrap()["IPAM"]["Config"],
            json!([{"Subnet": "10.0.0.0/8"}])
        );
    }

    fn body_of(args: &[&str]) -> anyhow::Result<Value> {
        match cmd(&[&["create"], args, &["n"]].concat()) {
            NetworkCmd::Create(a) => create_body(&a),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn create_pairs_flags_with_subnets_like_docker() {
        let b = body_of(&[
            "--subnet",
            "10.1.0.0/16",
            "--ipv6",
            "--subnet",
            "fd00::/64",
            "--gateway",
            "fd00::1",
            "--gateway",
            "10.1.0.254",
            "--ip-range",
            "10.1.2.0/24",
            "--aux-address",
            "r=10.1.0.2",
            "--aux-address",
            "s=10.1.0.3",
            "--aux-address",
            "r6=fd00::2",
            "--internal",
            "--attachable",
            "--label",
            "a=b",
            "-o",
            "x=y",
        ])
        .unwrap();
        assert_eq!(b["EnableIPv6"], true);
        assert_eq!(b["Internal"], true);
        assert_eq!(b["Attachable"], true);
        assert_eq!(
            b["IPAM"]["Config"],
            json!([
                {"Subnet": "10.1.0.0/16", "Gateway": "10.1.0.254", "IPRange": "10.1.2.0/24",
                 "AuxiliaryAddresses": {"r": "10.1.0.2", "s": "10.1.0.3"}},
                {"Subnet": "fd00::/64", "Gateway": "fd00::1",
                 "AuxiliaryAddresses": {"r6": "fd00::2"}}
            ])
        );
        let err = |args: &[&str]| body_of(args).unwrap_err().to_string();
        assert_eq!(
            err(&["--subnet", "10.1.0.0/16", "--gateway", "10.2.0.1"]),
            "no matching subnet for gateway 10.2.0.1"
        );
        assert_eq!(
            err(&["--subnet", "10.1.0.0/16", "--gateway", "10.1.0.1", "--gateway", "10.1.0.2"]),
            "cannot configure multiple gateways (10.1.0.1, 10.1.0.2) for the same subnet (10.1.0.0/16)"
        );
        assert_eq!(
            err(&["--subnet", "10.1.0.0/16", "--subnet", "10.1.2.0/24"]),
            "multiple overlapping subnet configuration is not supported"
        );
        assert_eq!(
            err(&["--subnet", "10.1.0.0/16", "--ip-range", "10.9.0.0/24"]),
            "no matching subnet for range 10.9.0.0/24"
        );
        assert_eq!(
            err(&["--subnet", "10.1.0.0/16", "--aux-address", "x=10.9.0.1"]),
            "no matching subnet for aux-address 10.9.0.1"
        );
        assert!(err(&["--subnet", "banana"]).contains("invalid subnet banana"));
    }

    #[test]
    fn filters_are_docker_json_and_escaped() {
        let pairs = vec![
            ("name".to_string(), "a".to_string()),
            ("label".to_string(), "x=y".to_string()),
            ("name".to_string(), "b".to_string()),
        ];
        assert_eq!(
            filters_json(&pairs),
            json!({"name": {"a": true, "b": true}, "label": {"x=y": true}})
        );
        assert_eq!(with_filters("/networks", &[]), "/networks");
        let p = with_filters("/networks", &pairs[..1]);
        assert_eq!(
            p,
            "/networks?filters=%7B%22name%22%3A%7B%22a%22%3Atrue%7D%7D"
        );
    }

    #[test]
    fn ls_sends_filters() {
        rt().block_on(async {
            let d = fake_daemon(vec![(200, "[]")]);
            let mut cap = Captured::default();
            run(
                &d.client,
                cmd(&["ls", "--filter", "type=custom", "-q"]),
                &mut cap.term(),
            )
            .await
            .unwrap();
            assert_eq!(cap.out(), "");
            let seen = d.seen.lock().unwrap();
            assert_eq!(
                seen[0].path,
                "/networks?filters=%7B%22type%22%3A%7B%22custom%22%3Atrue%7D%7D"
            );
        });
    }

    fn prune_args(args: &[&str]) -> PruneArgs {
        match cmd(&[&["prune"], args].concat()) {
            NetworkCmd::Prune(a) => a,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn prune_asks_unless_forced() {
        rt().block_on(async {
            let d = fake_daemon(vec![
                (200, r#"{"NetworksDeleted":["a","b"]}"#),
                (200, r#"{"NetworksDeleted":null}"#),
            ]);
            // Declined: nothing is sent.
            let mut cap = Captured::default();
            let mut no = std::io::Cursor::new(
                b"n
"
                .to_vec(),
            );
            prune(&d.client, &prune_args(&[]), &mut cap.term(), &mut no)
                .await
                .unwrap();
            assert_eq!(cap.out(), PRUNE_WARNING);
            assert!(d.seen.lock().unwrap().is_empty());
            // Accepted.
            let mut cap = Captured::default();
            let mut yes = std::io::Cursor::new(
                b"y
"
                .to_vec(),
            );
            prune(
                &d.client,
                &prune_args(&["--filter", "until=24h"]),
                &mut cap.term(),
                &mut yes,
            )
            .await
            .unwrap();
            assert_eq!(
                cap.out(),
                format!(
                    "{PRUNE_WARNING}Deleted Networks:
a
b
"
                )
            );
            // Forced: no question; nothing deleted prints nothing.
            let mut cap = Captured::default();
            let mut empty = std::io::Cursor::new(Vec::new());
            prune(&d.client, &prune_args(&["-f"]), &mut cap.term(), &mut empty)
                .await
                .unwrap();
            assert_eq!(cap.out(), "");
            let seen = d.seen.lock().unwrap();
            assert_eq!(seen.len(), 2);
            assert_eq!(seen[0].method, "POST");
            assert_eq!(
                seen[0].path,
                "/networks/prune?filters=%7B%22until%22%3A%7B%2224h%22%3Atrue%7D%7D"
            );
            assert_eq!(seen[1].path, "/networks/prune");
        });
    }

    #[test]
    fn ls_table_sorted_and_truncated() {
        assert_eq!(
            ls_output(nets(), &list_args(&[])),
            "NETWORK ID     NAME      DRIVER    SCOPE\n\
             111111111111   alpha     bridge    local\n\
             222222222222   zeta      bridge    local\n"
        );
        assert_eq!(
            ls_output(nets(), &list_args(&["-q"])),
            "111111111111\n222222222222\n"
        );
        assert_eq!(
            ls_output(nets(), &list_args(&["-q", "--no-trunc"])),
            format!("{ID1}\n{ID2}\n")
        );
        assert_eq!(
            ls_output(vec![], &list_args(&[])),
            "NETWORK ID   NAME      DRIVER    SCOPE\n"
        );
        assert_eq!(
            ls_output(
                nets(),
                &list_args(&["--no-trunc", "--format", "table {{.ID}}\\t{{.Labels}}"])
            ),
            format!(
                "NETWORK ID{}LABELS\n{ID1}   \n{ID2}   team=a\n",
                " ".repeat(57)
            )
        );
        assert_eq!(
            ls_output(
                nets(),
                &list_args(&["--format", "{{.Name}} {{.CreatedAt}} {{.IPv6}}"])
            ),
            "alpha 2026-11-23 13:00:00 +0000 UTC false\nzeta 2026-11-23 14:00:00 +0000 UTC false\n"
        );
    }

    #[test]
    fn ls_json_one_object_per_line() {
        let out = ls_output(nets(), &list_args(&["--format", "json"]));
        let lines: Vec<Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(
            lines[1],
            json!({"CreatedAt": "2026-11-23 14:00:00 +0000 UTC", "Driver": "bridge", "ID": "222222222222",
                   "IPv4": "false", "IPv6": "false", "Internal": "false", "Labels": "team=a", "Name": "zeta",
                   "Scope": "local"})
        );
    }

    #[test]
    fn stats_table_and_json() {
        let s = json!({"Network": ID1, "FdbEntries": 2, "FdbLimitHits": 0, "FdbPortLimitHits": 5, "Ports": [
            {"EndpointID": ID1, "Sandbox": "sb1", "Interface": "eth0", "Port": 0,
             "RxPackets": 10, "RxBytes": 980, "TxPackets": 9, "TxBytes": 882,
             "FdbEntries": 1, "FdbLimitHits": 5,
             "Drops": {"truncated": 1, "bad_source_mac": 2, "bad_vnet_hdr": 0, "same_segment": 0, "tx_error": 0}}]});
        assert_eq!(
            stats_output(&s, &switch_args(&[])),
            "ENDPOINT       SANDBOX   IFACE   RX-PKTS   RX-BYTES   TX-PKTS   TX-BYTES   DROPS\n\
             111111111111   sb1       eth0    10        980        9         882        3\n"
        );
        let out = stats_output(&s, &switch_args(&["--format", "json"]));
        assert_eq!(out.lines().count(), 1);
        assert_eq!(serde_json::from_str::<Value>(&out).unwrap(), s);
    }

    #[test]
    fn fdb_table() {
        let entries = vec![
            json!({"MacAddress": "02:42:0a:0a:00:03", "Port": 1, "EndpointID": ID2, "AgeSeconds": 12.34}),
            json!({"MacAddress": "02:42:0a:0a:00:02", "Port": 0, "EndpointID": ID1, "AgeSeconds": 1.5}),
        ];
        assert_eq!(
            fdb_output(entries, &switch_args(&[])),
            "MAC                 PORT   ENDPOINT       AGE\n\
             02:42:0a:0a:00:02   0      111111111111   1.5s\n\
             02:42:0a:0a:00:03   1      222222222222   12.3s\n"
        );
        // An overlay: MACs behind the tunnel show their VTEP.
        let entries = vec![
            json!({"MacAddress": "02:42:0a:5a:00:14", "Port": 2, "EndpointID": "", "AgeSeconds": 0.5, "Vtep": "192.0.2.2:4789"}),
            json!({"MacAddress": "02:42:0a:5a:00:0a", "Port": 0, "EndpointID": ID1, "AgeSeconds": 1.5}),
        ];
        assert_eq!(
            fdb_output(entries, &switch_args(&[])),
            "MAC                 PORT   ENDPOINT       AGE    VTEP\n\
             02:42:0a:5a:00:0a   0      111111111111   1.5s\n\
             02:42:0a:5a:00:14   2                     0.5s   192.0.2.2:4789\n"
        );
    }

    #[test]
    fn create_prints_id_and_warning() {
        rt().block_on(async {
            let d = fake_daemon(vec![(201, r#"{"Id":"abc","Warning":"careful"}"#)]);
            let mut cap = Captured::default();
            run(&d.client, cmd(&["create", "n"]), &mut cap.term())
                .await
                .unwrap();
            assert_eq!(cap.out(), "abc\n");
            assert_eq!(cap.err(), "WARNING: careful\n");
            let seen = d.seen.lock().unwrap();
            assert_eq!(seen[0].path, "/networks/create");
            assert_eq!(seen[0].body["Name"], "n");
        });
    }

    #[test]
    fn connect_and_disconnect_bodies() {
        rt().block_on(async {
            let d = fake_daemon(vec![(200, ""), (200, ""), (200, "")]);
            let mut cap = Captured::default();
            run(&d.client, cmd(&["connect", "--ip", "10.0.0.5", "net 1", "sb"]), &mut cap.term())
                .await
                .unwrap();
            run(&d.client, cmd(&["connect", "net", "sb"]), &mut cap.term()).await.unwrap();
            run(&d.client, cmd(&["disconnect", "-f", "net", "sb"]), &mut cap.term())
                .await
                .unwrap();
            assert_eq!(cap.out(), "");
            let seen = d.seen.lock().unwrap();
            assert_eq!(seen[0].path, "/networks/net%201/connect");
            assert_eq!(
                seen[0].body,
                json!({"Container": "sb", "EndpointConfig": {"IPAMConfig": {"IPv4Address": "10.0.0.5"}}})
            );
            drop(seen);
            let NetworkCmd::Connect(a) = cmd(&[
                "connect", "--ip6", "fd00::5", "--alias", "web", "--mac-address",
                "02:42:ac:11:00:99", "net", "sb",
            ]) else {
                panic!()
            };
            assert_eq!(
                connect_body(&a),
                json!({"Container": "sb", "EndpointConfig": {
                    "IPAMConfig": {"IPv6Address": "fd00::5"}, "Aliases": ["web"],
                    "MacAddress": "02:42:ac:11:00:99"}})
            );
            let seen = d.seen.lock().unwrap();
            assert_eq!(seen[1].body, json!({"Container": "sb", "EndpointConfig": {}}));
            assert_eq!(seen[2].path, "/networks/net/disconnect");
            assert_eq!(seen[2].body, json!({"Container": "sb", "Force": true}));
        });
    }

    #[test]
    fn rm_reports_each_failure_and_exits_1() {
        rt().block_on(async {
            let d = fake_daemon(vec![
                (204, ""),
                (409, r#"{"message":"network b has active endpoints"}"#),
                (204, ""),
            ]);
            let mut cap = Captured::default();
            let r = run(&d.client, cmd(&["rm", "a", "b", "c"]), &mut cap.term()).await;
            assert_eq!(exit_code(&r), Some(1));
            assert_eq!(cap.out(), "a\nc\n");
            assert_eq!(
                cap.err(),
                "Error response from daemon: network b has active endpoints\n"
            );
            assert_eq!(d.seen.lock().unwrap()[1].method, "DELETE");
        });
    }

    #[test]
    fn inspect_prints_array_and_errors() {
        rt().block_on(async {
            let d = fake_daemon(vec![
                (200, r#"{"Name":"a","Id":"1"}"#),
                (404, r#"{"message":"network x not found"}"#),
            ]);
            let mut cap = Captured::default();
            let r = run(&d.client, cmd(&["inspect", "a", "x"]), &mut cap.term()).await;
            assert_eq!(exit_code(&r), Some(1));
            assert_eq!(
                cap.out(),
                "[\n    {\n        \"Id\": \"1\",\n        \"Name\": \"a\"\n    }\n]\n"
            );
            assert_eq!(
                cap.err(),
                "Error response from daemon: network x not found\n"
            );
        });
    }

    #[test]
    fn inspect_json_and_templates() {
        rt().block_on(async {
            let obj = r#"{"Name":"a","Id":"1","IPAM":{"Config":[{"Subnet":"10.0.0.0/24"}]}}"#;
            let d = fake_daemon(vec![(200, obj), (200, obj), (200, r#"{"Name":"b"}"#)]);
            let mut cap = Captured::default();
            run(&d.client, cmd(&["inspect", "--format", "json", "a"]), &mut cap.term())
                .await
                .unwrap();
            assert_eq!(
                cap.out(),
                "[{\"IPAM\":{\"Config\":[{\"Subnet\":\"10.0.0.0/24\"}]},\"Id\":\"1\",\"Name\":\"a\"}]\n"
            );
            let mut cap = Captured::default();
            let f = "{{.Name}}: {{range .IPAM.Config}}{{.Subnet}}{{end}}";
            run(&d.client, cmd(&["inspect", "-f", f, "a", "b"]), &mut cap.term())
                .await
                .unwrap();
            assert_eq!(cap.out(), "a: 10.0.0.0/24\nb: \n");
            // A template that does not parse: nothing asked, docker's message.
            let e = run(&d.client, cmd(&["inspect", "-f", "{{.Name", "a"]), &mut cap.term())
                .await
                .unwrap_err();
            assert!(e.to_string().starts_with("template parsing error: "), "{e}");
            assert_eq!(d.seen.lock().unwrap().len(), 3);
        });
    }

    #[test]
    fn daemon_error_on_single_target_command_is_an_error() {
        rt().block_on(async {
            let d = fake_daemon(vec![(404, r#"{"message":"network nope not found"}"#)]);
            let mut cap = Captured::default();
            let e = run(&d.client, cmd(&["stats", "nope"]), &mut cap.term())
                .await
                .unwrap_err();
            assert_eq!(
                e.to_string(),
                "Error response from daemon: network nope not found"
            );
        });
    }

    #[test]
    fn compat_flags_reach_the_bodies() {
        let NetworkCmd::Create(a) = cmd(&[
            "create",
            "--config-only",
            "--subnet",
            "10.5.0.0/24",
            "-o",
            "k=v",
            "cfg",
        ]) else {
            panic!()
        };
        let b = create_body(&a).unwrap();
        assert_eq!(b["ConfigOnly"], true);
        assert!(
            b.get("ConfigFrom").is_none() && b.get("Scope").is_none(),
            "{b}"
        );
        assert!(b.get("Ingress").is_none(), "{b}");
        let NetworkCmd::Create(a) = cmd(&[
            "create",
            "--config-from",
            "cfg",
            "--scope",
            "swarm",
            "--ingress",
            "n",
        ]) else {
            panic!()
        };
        let b = create_body(&a).unwrap();
        assert_eq!(b["ConfigFrom"], serde_json::json!({"Network": "cfg"}));
        assert_eq!(
            (&b["Scope"], &b["Ingress"]),
            (&serde_json::json!("swarm"), &serde_json::json!(true))
        );
        assert!(b.get("ConfigOnly").is_none(), "{b}");
        let NetworkCmd::Connect(a) = cmd(&[
            "connect",
            "--driver-opt",
            "com.docker.network.endpoint.ifname=lan0",
            "--link-local-ip",
            "169.254.1.1",
            "--link-local-ip",
            "fe80::1",
            "--link",
            "db:d",
            "net",
            "sb",
        ]) else {
            panic!()
        };
        assert_eq!(
            connect_body(&a),
            serde_json::json!({"Container": "sb", "EndpointConfig": {
                "IPAMConfig": {"LinkLocalIPs": ["169.254.1.1", "fe80::1"]},
                "DriverOpts": {"com.docker.network.endpoint.ifname": "lan0"},
                "Links": ["db:d"]}})
        );
        // A driver option must be KEY=VALUE, as docker's.
        let argv = [
            "tapnet",
            "network",
            "connect",
            "--driver-opt",
            "novalue",
            "n",
            "s",
        ];
        assert!(Cli::try_parse_from(argv).is_err());
    }
}
