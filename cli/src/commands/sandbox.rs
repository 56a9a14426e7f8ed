//! `tapnet sandbox ...`: create, ls, inspect, rm; `tapnet port`.
//!
//! The bodies sent and the answers read are the typed ones of
//! [`tapnet_types::api`]; `inspect` prints the daemon's objects as they came, or
//! runs `--format` on each. `ls` is `docker ps`'s counterpart: newest first, rows
//! with the keys `.ID .Name .Names .RunningFor .CreatedAt .Networks .Addresses
//! .Ports .NetnsPath .Owned` through [`crate::format`]; its filters (`name=`, `id=`,
//! `network=`) are applied here. `rm -f` asks the daemon to end the processes in
//! the sandbox (`DELETE /sandboxes/{id}?force=1`).

use super::{inspect_each, remove_each, Out};
use crate::args::{Publish, SandboxCmd, SandboxCreate, SandboxLsArgs};
use crate::client::Client;
use crate::format::{list_format, render_list};
use crate::output::{ago, go_time, short_id};
use jiff::Timestamp;
use serde_json::{json, Map, Value};
use tapnet_types::api::{CreateSandboxResponse, SandboxCreateBody, SandboxResource};
use tapnet_types::ports::{PortBindingBody, PortBindingsBody};

/// Run one `sandbox` subcommand.
pub async fn run(c: &Client, cmd: SandboxCmd, o: &mut Out<'_>) -> anyhow::Result<()> {
    match cmd {
        SandboxCmd::Create(a) => create(c, &a, o).await,
        SandboxCmd::Ls(a) => {
            let sbs: Vec<SandboxResource> = c.get_as("/sandboxes").await?;
            write!(o.out, "{}", ls_output(sbs, &a, Timestamp::now())?)?;
            Ok(())
        }
        SandboxCmd::Inspect(a) => {
            inspect_each(c, "/sandboxes", &a.targets, a.format.as_deref(), o).await
        }
        SandboxCmd::Rm(a) => {
            let query = if a.force { "?force=1" } else { "" };
            remove_each(c, "/sandboxes", &a.targets, query, o).await
        }
    }
}

/// The `POST /sandboxes` body. A relative `--netns` is made absolute here, since
/// the daemon does not share our working directory.
pub fn create_body(a: &SandboxCreate) -> anyhow::Result<SandboxCreateBody> {
    let mut body = SandboxCreateBody {
        name: Some(a.name.clone()),
        ..SandboxCreateBody::default()
    };
    if !a.publish.is_empty() {
        body.port_bindings = Some(port_bindings(&a.publish));
    }
    if let Some(p) = &a.netns {
        let abs = std::path::absolute(p)?;
        let Some(s) = abs.to_str() else {
            anyhow::bail!("--netns {}: path is not valid UTF-8", p.display());
        };
        body.netns_path = Some(s.to_string());
    }
    Ok(body)
}

/// Docker's `PortBindings` for `-p` specs: `{"80/tcp": [{"HostIp": "", "HostPort": "8080"}]}`.
pub fn port_bindings(specs: &[Publish]) -> PortBindingsBody {
    let mut map = PortBindingsBody::new();
    for p in specs {
        map.entry(format!("{}/{}", p.port, p.proto))
            .or_insert_with(|| Some(Vec::new()))
            .get_or_insert_with(Vec::new)
            .push(PortBindingBody {
                host_ip: Some(p.host_ip.map(|a| a.to_string()).unwrap_or_default()),
                host_port: Some(p.host_port.map(|h| h.to_string()).unwrap_or_default()),
            });
    }
    map
}

/// What `tapnet port` prints for a sandbox object: `80/tcp -> 0.0.0.0:8080` per bound
/// host address, by port number; only `filter` (`80` or `80/tcp`) if given.
pub fn port_output(sb: &SandboxResource, filter: Option<&str>) -> String {
    let mut rows: Vec<(u32, String, String)> = Vec::new();
    let filter = filter.map(|f| {
        if f.contains('/') {
            f.to_ascii_lowercase()
        } else {
            format!("{f}/tcp")
        }
    });
    for (key, hosts) in &sb.ports {
        if filter.as_deref().is_some_and(|f| f != key) {
            continue;
        }
        let num: u32 = key
            .split('/')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(u32::MAX);
        for h in hosts.iter().flatten() {
            let (ip, port) = (&h.host_ip, &h.host_port);
            let host = if ip.contains(':') {
                format!("[{ip}]:{port}")
            } else {
                format!("{ip}:{port}")
            };
            rows.push((num, key.clone(), host));
        }
    }
    rows.sort();
    rows.into_iter()
        .map(|(_, k, h)| format!("{k} -> {h}\n"))
        .collect()
}

/// `tapnet port SANDBOX [PORT]`.
pub async fn port(c: &Client, a: &crate::args::PortArgs, o: &mut Out<'_>) -> anyhow::Result<()> {
    let sb: SandboxResource = c
        .get_as(&format!("/sandboxes/{}", crate::client::seg(&a.sandbox)))
        .await?;
    let text = port_output(&sb, a.port.as_deref());
    if text.is_empty() {
        if let Some(p) = &a.port {
            anyhow::bail!("no public port '{p}' published for {}", a.sandbox);
        }
    }
    write!(o.out, "{text}")?;
    Ok(())
}

async fn create(c: &Client, a: &SandboxCreate, o: &mut Out<'_>) -> anyhow::Result<()> {
    let r: CreateSandboxResponse = c.post_as("/sandboxes", &create_body(a)?).await?;
    writeln!(o.out, "{}", r.id)?;
    Ok(())
}

/// Names of the networks a sandbox is on, sorted, comma-separated.
fn networks(sb: &SandboxResource) -> String {
    let names: Vec<&str> = sb.endpoints.keys().map(String::as_str).collect();
    names.join(",")
}

/// The sandbox's addresses (without prefix length), network by network (by name),
/// IPv4 before IPv6, comma-separated.
fn addresses(sb: &SandboxResource) -> String {
    let mut out = Vec::new();
    for ep in sb.endpoints.values() {
        for a in [&ep.ipv4_address, &ep.ipv6_address] {
            if let Some(ip) = a.split('/').next().filter(|ip| !ip.is_empty()) {
                out.push(ip.to_string());
            }
        }
    }
    out.join(",")
}

/// Published ports as `docker ps` shows them: `0.0.0.0:8080->80/tcp,
/// [::]:8080->80/tcp`; a port not bound (yet) as `80/tcp`.
fn ports(sb: &SandboxResource) -> String {
    let mut rows: Vec<(u32, String, String)> = Vec::new();
    for (key, hosts) in &sb.ports {
        let num: u32 = key
            .split('/')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(u32::MAX);
        match hosts {
            Some(hs) if !hs.is_empty() => {
                for h in hs {
                    let host = if h.host_ip.contains(':') {
                        format!("[{}]:{}", h.host_ip, h.host_port)
                    } else {
                        format!("{}:{}", h.host_ip, h.host_port)
                    };
                    rows.push((num, key.clone(), format!("{host}->{key}")));
                }
            }
            _ => rows.push((num, key.clone(), key.clone())),
        }
    }
    rows.sort();
    rows.into_iter()
        .map(|(_, _, s)| s)
        .collect::<Vec<_>>()
        .join(", ")
}

/// `sandbox ls`'s default table.
pub const LS_TABLE: &str =
    "table {{.ID}}\t{{.Name}}\t{{.RunningFor}}\t{{.Networks}}\t{{.Addresses}}\t{{.Ports}}";

/// Column titles of `sandbox ls`.
pub const LS_HEADER: &[(&str, &str)] = &[
    ("ID", "SANDBOX ID"),
    ("Name", "NAME"),
    ("Names", "NAMES"),
    ("RunningFor", "CREATED"),
    ("CreatedAt", "CREATED AT"),
    ("Networks", "NETWORKS"),
    ("Addresses", "ADDRESSES"),
    ("Ports", "PORTS"),
    ("NetnsPath", "NETNS PATH"),
    ("Owned", "OWNED"),
];

/// One `sandbox ls` row (every value a string).
pub fn ls_row(s: &SandboxResource, no_trunc: bool, now: Timestamp) -> Map<String, Value> {
    let row = json!({
        "ID": short_id(&s.id, no_trunc),
        "Name": s.name,
        "Names": s.name,
        "RunningFor": ago(&s.created, now),
        "CreatedAt": go_time(&s.created),
        "Networks": networks(s),
        "Addresses": addresses(s),
        "Ports": ports(s),
        "NetnsPath": s.netns_path,
        "Owned": s.owned.to_string(),
    });
    match row {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// Whether `s` passes `sandbox ls`'s filters: each key given must match one of its
/// values (`name=`: part of the name; `id=`: id prefix; `network=`: a network the
/// sandbox is on, by name or id prefix).
pub fn matches(s: &SandboxResource, filters: &[(String, String)]) -> anyhow::Result<bool> {
    for (k, _) in filters {
        if !["name", "id", "network"].contains(&k.as_str()) {
            anyhow::bail!("invalid filter '{k}'");
        }
    }
    let any = |key: &str, f: &dyn Fn(&str) -> bool| {
        let mut vals = filters.iter().filter(|(k, _)| k == key).peekable();
        vals.peek().is_none() || vals.any(|(_, v)| f(v))
    };
    Ok(any("name", &|v| s.name.contains(v))
        && any("id", &|v| s.id.starts_with(v))
        && any("network", &|v| {
            s.endpoints
                .iter()
                .any(|(name, ep)| name == v || (!v.is_empty() && ep.network_id.starts_with(v)))
        }))
}

/// What `sandbox ls` prints for these sandboxes (as listed by `GET /sandboxes`) at
/// `now`: newest first, as `docker ps`.
pub fn ls_output(
    sbs: Vec<SandboxResource>,
    a: &SandboxLsArgs,
    now: Timestamp,
) -> anyhow::Result<String> {
    let mut kept = Vec::with_capacity(sbs.len());
    for s in sbs {
        if matches(&s, &a.filters)? {
            kept.push(s);
        }
    }
    let stamp = |s: &SandboxResource| s.created.parse::<Timestamp>().ok();
    kept.sort_by(|x, y| stamp(y).cmp(&stamp(x)).then_with(|| x.name.cmp(&y.name)));
    let rows: Vec<Map<String, Value>> = kept
        .iter()
        .map(|s| ls_row(s, a.list.no_trunc, now))
        .collect();
    render_list(
        &list_format(&a.list.format, a.list.quiet, LS_TABLE),
        LS_HEADER,
        &rows,
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;
    use crate::args::{Cli, Command};
    use crate::client::tests::{fake_daemon, rt};
    use crate::commands::tests::{exit_code, Captured};
    use clap::Parser;
    use serde_json::Value;

    const ID1: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

    // The tests speak JSON, as the wire does: these adapters serialize the typed
    // request bodies and read the JSON fixtures into the typed answers.
    fn to_json<T: serde::Serialize>(t: T) -> Value {
        serde_json::to_value(t).unwrap()
    }

    fn from_json<T: serde::de::DeserializeOwned>(v: &Value) -> T {
        serde_json::from_value(v.clone()).unwrap()
    }

    fn create_body(a: &SandboxCreate) -> anyhow::Result<Value> {
        super::create_body(a).map(to_json)
    }

    fn port_output(sb: &Value, filter: Option<&str>) -> String {
        super::port_output(&from_json(sb), filter)
    }

    fn now() -> Timestamp {
        "2026-11-30T12:00:00Z".parse().unwrap()
    }

    fn ls_output(sbs: Vec<Value>, a: &SandboxLsArgs) -> String {
        super::ls_output(sbs.iter().map(from_json).collect(), a, now()).unwrap()
    }

    fn cmd(args: &[&str]) -> SandboxCmd {
        let argv = ["tapnet", "sandbox"].iter().chain(args).copied();
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Sandbox(s) => s,
            other => panic!("{other:?}"),
        }
    }

    fn list_args(args: &[&str]) -> SandboxLsArgs {
        match cmd(&[&["ls"], args].concat()) {
            SandboxCmd::Ls(a) => a,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn create_body_with_ports() {
        let SandboxCmd::Create(a) = cmd(&[
            "create",
            "-p",
            "8080:80",
            "-p",
            "127.0.0.1::80",
            "-p",
            "53/udp",
            "sb",
        ]) else {
            panic!()
        };
        let b = create_body(&a).unwrap();
        assert_eq!(
            b["PortBindings"],
            json!({
                "80/tcp": [{"HostIp": "", "HostPort": "8080"}, {"HostIp": "127.0.0.1", "HostPort": ""}],
                "53/udp": [{"HostIp": "", "HostPort": ""}],
            })
        );
        let SandboxCmd::Create(a) = cmd(&["create", "sb"]) else {
            panic!()
        };
        assert!(create_body(&a).unwrap().get("PortBindings").is_none());
    }

    #[test]
    fn port_lines() {
        let sb = json!({"Ports": {
            "8080/tcp": [{"HostIp": "0.0.0.0", "HostPort": "1"}],
            "80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}, {"HostIp": "::", "HostPort": "8081"}],
            "53/udp": [{"HostIp": "127.0.0.1", "HostPort": "5353"}],
            "9/tcp": null,
        }});
        assert_eq!(
            port_output(&sb, None),
            "53/udp -> 127.0.0.1:5353\n80/tcp -> 0.0.0.0:8080\n80/tcp -> [::]:8081\n8080/tcp -> 0.0.0.0:1\n"
        );
        assert_eq!(
            port_output(&sb, Some("53/udp")),
            "53/udp -> 127.0.0.1:5353\n"
        );
        assert_eq!(port_output(&sb, Some("8080")), "8080/tcp -> 0.0.0.0:1\n");
        assert_eq!(port_output(&json!({}), None), "");
    }

    fn sbs() -> Vec<Value> {
        vec![
            json!({"Id": ID1, "Name": "sb2", "NetnsPath": "/run/tapnet/netns/a", "Owned": true,
                   "Created": "2026-11-30T11:58:00Z",
                   "Endpoints": {
                       "net2": {"NetworkID": "2222", "IPv4Address": "10.2.0.5/24",
                                "IPv6Address": "fd00::5/64"},
                       "net1": {"NetworkID": "1111", "IPv4Address": "10.1.0.5/24"}},
                   "Ports": {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"},
                                        {"HostIp": "::", "HostPort": "8080"}],
                             "53/udp": null}}),
            json!({"Id": "bbbb", "Name": "sb1", "NetnsPath": "/proc/1/ns/net", "Owned": false,
                   "Created": "2026-11-30T09:00:00Z", "Endpoints": {}}),
        ]
    }

    #[test]
    fn create_body_absolute_netns() {
        let SandboxCmd::Create(a) = cmd(&["create", "sb1"]) else {
            panic!()
        };
        assert_eq!(create_body(&a).unwrap(), json!({"Name": "sb1"}));
        let SandboxCmd::Create(a) = cmd(&["create", "--netns", "/proc/1/ns/net", "sb1"]) else {
            panic!()
        };
        assert_eq!(
            create_body(&a).unwrap(),
            json!({"Name": "sb1", "NetnsPath": "/proc/1/ns/net"})
        );
        let SandboxCmd::Create(a) = cmd(&["create", "--netns", "ns/x", "sb1"]) else {
            panic!()
        };
        let p = create_body(&a).unwrap()["NetnsPath"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(p.starts_with('/') && p.ends_with("/ns/x"), "{p}");
    }

    #[test]
    fn ls_table_like_docker_ps() {
        assert_eq!(
            ls_output(sbs(), &list_args(&[])),
            format!(
                "SANDBOX ID     NAME      CREATED         NETWORKS    ADDRESSES                   PORTS\n\
                 aaaaaaaaaaaa   sb2       2 minutes ago   net1,net2   10.1.0.5,10.2.0.5,fd00::5   53/udp, 0.0.0.0:8080->80/tcp, [::]:8080->80/tcp\n\
                 bbbb           sb1       3 hours ago{}\n",
                // Empty cells before the last are padded, as Go's tabwriter pads them.
                " ".repeat(5 + 12 + 28)
            )
        );
        assert_eq!(
            ls_output(sbs(), &list_args(&["-q", "--no-trunc"])),
            format!("{ID1}\nbbbb\n")
        );
        assert_eq!(
            ls_output(
                sbs(),
                &list_args(&["--format", "{{.Names}} {{.Owned}} {{.CreatedAt}}"])
            ),
            "sb2 true 2026-11-30 11:58:00 +0000 UTC\nsb1 false 2026-11-30 09:00:00 +0000 UTC\n"
        );
        assert_eq!(
            ls_output(sbs(), &list_args(&["--format", "table {{.Name}}\\t{{.Ports}}", "-q"])),
            "NAME      PORTS\nsb2       53/udp, 0.0.0.0:8080->80/tcp, [::]:8080->80/tcp\nsb1       \n"
        );
    }

    #[test]
    fn ls_filters() {
        let names = |args: &[&str]| {
            let mut a = vec!["--format", "{{.Name}}"];
            a.extend_from_slice(args);
            ls_output(sbs(), &list_args(&a))
        };
        assert_eq!(names(&["--filter", "name=b2"]), "sb2\n");
        assert_eq!(names(&["--filter", "name=sb"]), "sb2\nsb1\n");
        assert_eq!(names(&["-f", "id=bb"]), "sb1\n");
        assert_eq!(names(&["-f", "network=net1"]), "sb2\n");
        assert_eq!(names(&["-f", "network=2222"]), "sb2\n");
        assert_eq!(names(&["-f", "network=net"]), "");
        // Two values of a key: either; two keys: both.
        assert_eq!(names(&["-f", "name=sb1", "-f", "name=sb2"]), "sb2\nsb1\n");
        assert_eq!(names(&["-f", "name=sb1", "-f", "network=net1"]), "");
        let e = super::ls_output(
            sbs().iter().map(from_json).collect(),
            &list_args(&["-f", "label=x"]),
            now(),
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "invalid filter 'label'");
    }

    #[test]
    fn ls_json() {
        let out = ls_output(sbs(), &list_args(&["--format", "json"]));
        let last: Value = serde_json::from_str(out.lines().nth(1).unwrap()).unwrap();
        assert_eq!(
            last,
            json!({"Addresses": "", "CreatedAt": "2026-11-30 09:00:00 +0000 UTC", "ID": "bbbb",
                   "Name": "sb1", "Names": "sb1", "NetnsPath": "/proc/1/ns/net", "Networks": "",
                   "Owned": "false", "Ports": "", "RunningFor": "3 hours ago"})
        );
    }

    #[test]
    fn create_and_rm_against_fake_daemon() {
        rt().block_on(async {
            let d = fake_daemon(vec![
                (201, r#"{"Id":"abc"}"#),
                (204, ""),
                (404, r#"{"message":"no such sandbox: y"}"#),
                (204, ""),
            ]);
            let mut cap = Captured::default();
            run(&d.client, cmd(&["create", "sb1"]), &mut cap.term())
                .await
                .unwrap();
            let r = run(&d.client, cmd(&["rm", "sb1", "y"]), &mut cap.term()).await;
            assert_eq!(exit_code(&r), Some(1));
            assert_eq!(cap.out(), "abc\nsb1\n");
            assert_eq!(
                cap.err(),
                "Error response from daemon: no such sandbox: y\n"
            );
            {
                let seen = d.seen.lock().unwrap();
                assert_eq!(
                    (seen[0].method.as_str(), seen[0].path.as_str()),
                    ("POST", "/sandboxes")
                );
                assert_eq!(
                    (seen[1].method.as_str(), seen[1].path.as_str()),
                    ("DELETE", "/sandboxes/sb1")
                );
            }
            run(&d.client, cmd(&["rm", "-f", "sb 2"]), &mut cap.term())
                .await
                .unwrap();
            assert_eq!(d.seen.lock().unwrap()[3].path, "/sandboxes/sb%202?force=1");
        });
    }
}
