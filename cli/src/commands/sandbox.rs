//! `tapnet sandbox ...`: create, ls, inspect, rm.

use super::network::array;
use super::{inspect_each, remove_each, Out};
use crate::args::{ListArgs, ListFormat, SandboxCmd, SandboxCreate};
use crate::client::Client;
use crate::output::{short_id, str_of, table};
use serde_json::{json, Value};

/// Run one `sandbox` subcommand.
pub async fn run(c: &Client, cmd: SandboxCmd, o: &mut Out<'_>) -> anyhow::Result<()> {
    match cmd {
        SandboxCmd::Create(a) => create(c, &a, o).await,
        SandboxCmd::Ls(a) => {
            let (_, v) = c.get("/sandboxes").await?;
            write!(o.out, "{}", ls_output(array(v, "sandboxes")?, &a))?;
            Ok(())
        }
        SandboxCmd::Inspect(a) => inspect_each(c, "/sandboxes", &a.targets, o).await,
        SandboxCmd::Rm(a) => remove_each(c, "/sandboxes", &a.targets, o).await,
    }
}

/// The `POST /sandboxes` body. A relative `--netns` is made absolute here, since
/// the daemon does not share our working directory.
pub fn create_body(a: &SandboxCreate) -> anyhow::Result<Value> {
    let mut body = json!({"Name": a.name});
    if let Some(p) = &a.netns {
        let abs = std::path::absolute(p)?;
        let Some(s) = abs.to_str() else {
            anyhow::bail!("--netns {}: path is not valid UTF-8", p.display());
        };
        body["NetnsPath"] = Value::String(s.to_string());
    }
    Ok(body)
}

async fn create(c: &Client, a: &SandboxCreate, o: &mut Out<'_>) -> anyhow::Result<()> {
    let (_, v) = c.post("/sandboxes", &create_body(a)?).await?;
    writeln!(o.out, "{}", str_of(&v, "Id"))?;
    Ok(())
}

/// Names of the networks a sandbox is on, sorted, comma-separated.
fn networks(sb: &Value) -> String {
    let mut names: Vec<&str> = sb
        .get("Endpoints")
        .and_then(Value::as_object)
        .map(|m| m.keys().map(String::as_str).collect())
        .unwrap_or_default();
    names.sort_unstable();
    names.join(",")
}

/// What `sandbox ls` prints for these sandboxes (as listed by `GET /sandboxes`).
pub fn ls_output(mut sbs: Vec<Value>, a: &ListArgs) -> String {
    sbs.sort_by(|x, y| str_of(x, "Name").cmp(str_of(y, "Name")));
    let id = |s: &Value| short_id(str_of(s, "Id"), a.no_trunc).to_string();
    if a.quiet {
        return sbs.iter().map(|s| id(s) + "\n").collect();
    }
    match a.format {
        ListFormat::Table => {
            let rows: Vec<Vec<String>> = sbs
                .iter()
                .map(|s| vec![id(s), str_of(s, "Name").to_string(), networks(s)])
                .collect();
            table(&["SANDBOX ID", "NAME", "NETWORKS"], &rows)
        }
        ListFormat::Json => sbs
            .iter()
            .map(|s| {
                json!({
                    "CreatedAt": str_of(s, "Created"),
                    "ID": id(s),
                    "Name": str_of(s, "Name"),
                    "NetnsPath": str_of(s, "NetnsPath"),
                    "Networks": networks(s),
                    "Owned": s.get("Owned").and_then(Value::as_bool).unwrap_or(false).to_string(),
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

    const ID1: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

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
