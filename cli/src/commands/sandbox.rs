//! `tapnet sandbox ...`: create, ls, inspect, rm; `tapnet port`.
//!
//! The bodies sent and the answers read are the typed ones of
//! [`tapnet_types::api`]; `inspect` prints the daemon's objects as they came.

use super::{inspect_each, remove_each, Out};
use crate::args::{ListArgs, ListFormat, Publish, SandboxCmd, SandboxCreate};
use crate::client::Client;
use crate::output::{short_id, table};
use serde_json::json;
use tapnet_types::api::{CreateSandboxResponse, SandboxCreateBody, SandboxResource};
use tapnet_types::ports::{PortBindingBody, PortBindingsBody};

/// Run one `sandbox` subcommand.
pub async fn run(c: &Client, cmd: SandboxCmd, o: &mut Out<'_>) -> anyhow::Result<()> {
    match cmd {
        SandboxCmd::Create(a) => create(c, &a, o).await,
        SandboxCmd::Ls(a) => {
            let sbs: Vec<SandboxResource> = c.get_as("/sandboxes").await?;
            write!(o.out, "{}", ls_output(sbs, &a))?;
            Ok(())
        }
        SandboxCmd::Inspect(a) => inspect_each(c, "/sandboxes", &a.targets, o).await,
        SandboxCmd::Rm(a) => remove_each(c, "/sandboxes", &a.targets, o).await,
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
    let mut names: Vec<&str> = sb.endpoints.keys().map(String::as_str).collect();
    names.sort_unstable();
    names.join(",")
}

/// What `sandbox ls` prints for these sandboxes (as listed by `GET /sandboxes`).
pub fn ls_output(mut sbs: Vec<SandboxResource>, a: &ListArgs) -> String {
    sbs.sort_by(|x, y| x.name.cmp(&y.name));
    let id = |s: &SandboxResource| short_id(&s.id, a.no_trunc).to_string();
    if a.quiet {
        return sbs.iter().map(|s| id(s) + "\n").collect();
    }
    match a.format {
        ListFormat::Table => {
            let rows: Vec<Vec<String>> = sbs
                .iter()
                .map(|s| vec![id(s), s.name.clone(), networks(s)])
                .collect();
            table(&["SANDBOX ID", "NAME", "NETWORKS"], &rows)
        }
        ListFormat::Json => sbs
            .iter()
            .map(|s| {
                json!({
                    "CreatedAt": s.created,
                    "ID": id(s),
                    "Name": s.name,
                    "NetnsPath": s.netns_path,
                    "Networks": networks(s),
                    "Owned": s.owned.to_string(),
                })
                .to_string()
                    + "\n"
            })
            .collect(),
    }
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

    fn ls_output(sbs: Vec<Value>, a: &ListArgs) -> String {
        super::ls_output(sbs.iter().map(from_json).collect(), a)
    }

    fn cmd(args: &[&str]) -> SandboxCmd {
        let argv = ["tapnet", "sandbox"].iter().chain(args).copied();
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Sandbox(s) => s,
            other => panic!("{other:?}"),
        }
    }

    fn list_args(args: &[&str]) -> ListArgs {
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
                   "Endpoints": {"net2": {}, "net1": {}}}),
            json!({"Id": "bbbb", "Name": "sb1", "NetnsPath": "/proc/1/ns/net", "Owned": false,
                   "Endpoints": {}}),
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
    fn ls_table() {
        assert_eq!(
            ls_output(sbs(), &list_args(&[])),
            "SANDBOX ID     NAME   NETWORKS\n\
             bbbb           sb1\n\
             aaaaaaaaaaaa   sb2    net1,net2\n"
        );
        assert_eq!(
            ls_output(sbs(), &list_args(&["-q", "--no-trunc"])),
            format!("bbbb\n{ID1}\n")
        );
    }

    #[test]
    fn ls_json() {
        let out = ls_output(sbs(), &list_args(&["--format", "json"]));
        let first: Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
        assert_eq!(
            first,
            json!({"CreatedAt": "", "ID": "bbbb", "Name": "sb1", "NetnsPath": "/proc/1/ns/net",
                   "Networks": "", "Owned": "false"})
        );
    }

    #[test]
    fn create_and_rm_against_fake_daemon() {
        rt().block_on(async {
            let d = fake_daemon(vec![
                (201, r#"{"Id":"abc"}"#),
                (204, ""),
                (404, r#"{"message":"no such sandbox: y"}"#),
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
            let seen = d.seen.lock().unwrap();
            assert_eq!(
                (seen[0].method.as_str(), seen[0].path.as_str()),
                ("POST", "/sandboxes")
            );
            assert_eq!(
                (seen[1].method.as_str(), seen[1].path.as_str()),
                ("DELETE", "/sandboxes/sb1")
            );
        });
    }
}
