//! `tapnet run [OPTIONS] [--] CMD [ARGS...]`: docker run's networking half. Create a
//! sandbox (`--name`, its published ports `-p`), connect it to each `--network`
//! (default `bridge`; `--ip`, `--ip6`, `--network-alias`, `--mac-address`,
//! `--driver-opt`, `--link-local-ip` apply to the first), run CMD inside it. The
//! sandbox stays afterwards, as a docker container does, unless `--rm`, which
//! removes it (ending anything CMD left running in it: `?force=1`).
//!
//! Flags are read up to CMD; everything from CMD on is CMD's (`--` is optional).
//! CMD runs as a child process: this binary again, as `tapnet exec SANDBOX -- CMD`,
//! so it gets exactly what `exec` gives (private mount namespace with the sandbox's
//! resolv.conf and hosts, the network namespace) while this process stays outside
//! to clean up. CMD gets this process's environment plus `-e`; its stdin only with
//! `-i` (else it reads nothing, as in docker); stdout and stderr are inherited
//! (`-t` is accepted: CMD is on this terminal already). SIGINT and SIGTERM
//! received here are forwarded to it.
//!
//! `-d` runs the same thing in the background (`tapnet run --in-sandbox ID ...`, in
//! its own process group, standard streams on /dev/null) and prints the sandbox id.
//!
//! Exit codes are docker run's: CMD's own (128+N if signal N killed it), 126/127 if
//! CMD cannot run / is not found, 125 if tapnet itself failed (a setup step the
//! daemon refused: the sandbox is removed again).

use super::{runtime, sandbox::port_bindings, Exit, USAGE_EXIT};
use crate::args::RunArgs;
use crate::client::{seg, Client};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, ExitStatus, Stdio};
use tapnet_types::api::{
    ConnectBody, CreateSandboxResponse, EndpointConfigBody, EndpointIpamBody, SandboxCreateBody,
};
use tokio::signal::unix::{signal, SignalKind};

/// The `POST /sandboxes` body of a run.
pub fn create_body(a: &RunArgs) -> SandboxCreateBody {
    SandboxCreateBody {
        name: Some(a.name.clone().unwrap_or_default()),
        port_bindings: (!a.publish.is_empty()).then(|| port_bindings(&a.publish)),
        ..SandboxCreateBody::default()
    }
}

/// The networks to join, each with its `POST /networks/{id}/connect` body.
pub fn connect_bodies(a: &RunArgs, sandbox: &str) -> Vec<(String, ConnectBody)> {
    let nets = if a.networks.is_empty() {
        vec!["bridge".to_string()]
    } else {
        a.networks.clone()
    };
    nets.into_iter()
        .enumerate()
        .map(|(i, n)| {
            let mut cfg = EndpointConfigBody::default();
            if i == 0 {
                let ipam = EndpointIpamBody {
                    ipv4_address: a.ip.map(|ip| ip.to_string()),
                    ipv6_address: a.ip6.map(|ip| ip.to_string()),
                    link_local_ips: (!a.link_local_ips.is_empty())
                        .then(|| a.link_local_ips.clone()),
                };
                cfg.ipam_config = (ipam != EndpointIpamBody::default()).then_some(ipam);
                cfg.aliases = (!a.aliases.is_empty()).then(|| a.aliases.clone());
                cfg.mac_address = a.mac_address.clone();
                cfg.driver_opts =
                    (!a.driver_opts.is_empty()).then(|| a.driver_opts.iter().cloned().collect());
            }
            let body = ConnectBody {
                container: sandbox.to_string(),
                endpoint_config: Some(cfg),
            };
            (n, body)
        })
        .collect()
}

/// The `-e` variables as `KEY=VALUE` pairs: `KEY` alone takes `lookup(KEY)`, and is
/// left out if that is unset (docker's rule).
pub fn env_pairs(a: &RunArgs, lookup: impl Fn(&str) -> Option<String>) -> Vec<(String, String)> {
    a.env
        .iter()
        .filter_map(|(k, v)| match v {
            Some(v) => Some((k.clone(), v.clone())),
            None => lookup(k).map(|v| (k.clone(), v)),
        })
        .collect()
}

/// The exit code for a child's status: its code, or 128+signal.
pub fn exit_code(status: ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(c), _) => u8::try_from(c & 0xff).unwrap_or(1),
        (None, Some(s)) => u8::try_from((128 + s) & 0xff).unwrap_or(1),
        _ => 1,
    }
}

async fn setup(c: &Client, a: &RunArgs) -> anyhow::Result<String> {
    let r: CreateSandboxResponse = c.post_as("/sandboxes", &create_body(a)).await?;
    let id = r.id;
    if id.is_empty() {
        anyhow::bail!("the daemon gave no sandbox id");
    }
    for (net, body) in connect_bodies(a, &id) {
        if let Err(e) = c
            .post(&format!("/networks/{}/connect", seg(&net)), &body)
            .await
        {
            remove(c, &id).await;
            return Err(anyhow::Error::from(e).context(format!("connect to network {net}")));
        }
    }
    Ok(id)
}

/// Remove the sandbox, ending what still runs in it.
async fn remove(c: &Client, id: &str) {
    if let Err(e) = c.delete(&format!("/sandboxes/{}?force=1", seg(id))).await {
        eprintln!("tapnet: removing sandbox {id}: {e}");
    }
}

/// The `tapnet exec` child that runs CMD in sandbox `id`.
fn exec_command(host: &str, id: &str, a: &RunArgs) -> anyhow::Result<Command> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg("-H")
        .arg(host)
        .arg("exec")
        .arg(id)
        .arg("--")
        .args(&a.cmd)
        .envs(env_pairs(a, |k| std::env::var(k).ok()))
        .stdin(if a.interactive {
            Stdio::inherit()
        } else {
            Stdio::null()
        });
    Ok(cmd)
}

/// Run CMD in sandbox `id` as a child `tapnet exec`, forwarding signals.
async fn run_child(host: &str, id: &str, a: &RunArgs) -> anyhow::Result<ExitStatus> {
    let (mut int, mut term) = (
        signal(SignalKind::interrupt())?,
        signal(SignalKind::terminate())?,
    );
    let mut child = exec_command(host, id, a)?.spawn()?;
    let pid = Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
    let mut wait = tokio::task::spawn_blocking(move || child.wait());
    loop {
        tokio::select! {
            r = &mut wait => return Ok(r??),
            _ = int.recv() => { let _ = kill(pid, Signal::SIGINT); }
            _ = term.recv() => { let _ = kill(pid, Signal::SIGTERM); }
        }
    }
}

/// The arguments of the background `tapnet run` that `-d` starts for sandbox `id`.
pub fn detached_args(host: &str, id: &str, a: &RunArgs) -> Vec<String> {
    let mut v: Vec<String> = vec!["-H".into(), host.into(), "run".into()];
    if a.rm {
        v.push("--rm".into());
    }
    v.extend(["--in-sandbox".to_string(), id.to_string()]);
    for (k, val) in env_pairs(a, |k| std::env::var(k).ok()) {
        v.extend(["-e".to_string(), format!("{k}={val}")]);
    }
    v.push("--".into());
    v.extend(a.cmd.iter().cloned());
    v
}

/// Start the background run of `-d`: its own process group (the terminal's signals
/// do not reach it), standard streams on /dev/null.
fn spawn_detached(host: &str, id: &str, a: &RunArgs) -> anyhow::Result<()> {
    Command::new(std::env::current_exe()?)
        .args(detached_args(host, id, a))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()?;
    Ok(())
}

/// tapnet's own failure in a run: printed, exit 125.
fn failed(e: anyhow::Error) -> anyhow::Error {
    eprintln!("tapnet: {e:#}");
    Exit(USAGE_EXIT).into()
}

/// `tapnet run`.
pub fn run(c: &Client, host: &str, a: RunArgs) -> anyhow::Result<()> {
    let rt = runtime()?;
    rt.block_on(async {
        let id = match &a.in_sandbox {
            Some(id) => id.clone(),
            None => setup(c, &a).await.map_err(failed)?,
        };
        if a.detach && a.in_sandbox.is_none() {
            if let Err(e) = spawn_detached(host, &id, &a) {
                remove(c, &id).await;
                return Err(failed(e));
            }
            println!("{id}");
            return Ok(());
        }
        let status = run_child(host, &id, &a).await;
        if a.rm {
            remove(c, &id).await;
        }
        let code = exit_code(status.map_err(failed)?);
        if code == 0 {
            Ok(())
        } else {
            Err(Exit(code).into())
        }
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;
    use crate::args::{Cli, Command as Cmd};
    use clap::Parser;
    use serde_json::{json, Value};

    // The tests speak JSON, as the wire does: these adapters serialize the typed
    // request bodies.
    fn create_body(a: &RunArgs) -> Value {
        serde_json::to_value(super::create_body(a)).unwrap()
    }

    fn connect_bodies(a: &RunArgs, sandbox: &str) -> Vec<(String, Value)> {
        super::connect_bodies(a, sandbox)
            .into_iter()
            .map(|(n, b)| (n, serde_json::to_value(b).unwrap()))
            .collect()
    }

    fn args(a: &[&str]) -> RunArgs {
        let argv = ["tapnet", "run"].iter().chain(a).copied();
        match Cli::try_parse_from(argv).unwrap().command {
            Cmd::Run(r) => r,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bodies() {
        let a = args(&["--name", "r", "-p", "8080:80", "--", "true"]);
        assert_eq!(
            create_body(&a),
            json!({"Name": "r", "PortBindings": {"80/tcp": [{"HostIp": "", "HostPort": "8080"}]}})
        );
        assert_eq!(
            connect_bodies(&a, "ID"),
            vec![(
                "bridge".to_string(),
                json!({"Container": "ID", "EndpointConfig": {}})
            )]
        );
        let a = args(&[
            "--network",
            "n1",
            "--network",
            "n2",
            "--ip",
            "10.0.0.9",
            "--alias",
            "web",
            "sh",
        ]);
        assert_eq!(create_body(&a), json!({"Name": ""}));
        let b = connect_bodies(&a, "ID");
        assert_eq!(b.len(), 2);
        assert_eq!(
            b[0].1["EndpointConfig"],
            json!({"IPAMConfig": {"IPv4Address": "10.0.0.9"}, "Aliases": ["web"]})
        );
        assert_eq!(
            b[1],
            (
                "n2".to_string(),
                json!({"Container": "ID", "EndpointConfig": {}})
            )
        );
    }

    #[test]
    fn endpoint_options_go_to_the_first_network() {
        let a = args(&[
            "--network",
            "n1",
            "--network",
            "n2",
            "--driver-opt",
            "com.docker.network.endpoint.ifname=up0",
            "--link-local-ip",
            "169.254.3.3",
            "sh",
        ]);
        let b = connect_bodies(&a, "ID");
        assert_eq!(
            b[0].1["EndpointConfig"],
            json!({"IPAMConfig": {"LinkLocalIPs": ["169.254.3.3"]},
                   "DriverOpts": {"com.docker.network.endpoint.ifname": "up0"}})
        );
        assert_eq!(b[1].1["EndpointConfig"], json!({}));
    }

    #[test]
    fn docker_run_flags_before_the_command_only() {
        let a = args(&[
            "--rm",
            "-d",
            "-i",
            "-t",
            "--name",
            "w",
            "--network",
            "n1",
            "--net",
            "n2",
            "--ip6",
            "fd00::9",
            "--network-alias",
            "web",
            "--mac-address",
            "02:42:ac:11:00:99",
            "-e",
            "A=1",
            "--env",
            "B",
            "-p",
            "8080:80",
            "ping",
            "-c1",
            "--rm",
            "-e",
            "x",
        ]);
        assert!(a.rm && a.detach && a.interactive && a.tty);
        assert_eq!(a.networks, ["n1", "n2"]);
        // Everything from the command on is the command's, tapnet's flags included.
        assert_eq!(a.cmd, ["ping", "-c1", "--rm", "-e", "x"]);
        assert_eq!(
            a.env,
            [
                ("A".to_string(), Some("1".to_string())),
                ("B".to_string(), None)
            ]
        );
        let b = connect_bodies(&a, "ID");
        assert_eq!(
            b[0].1["EndpointConfig"],
            json!({"IPAMConfig": {"IPv6Address": "fd00::9"}, "Aliases": ["web"],
                   "MacAddress": "02:42:ac:11:00:99"})
        );
        assert_eq!(b[1].1["EndpointConfig"], json!({}));
        let a = args(&["--", "--weird-cmd", "-x"]);
        assert_eq!(a.cmd, ["--weird-cmd", "-x"]);
        assert!(!a.rm && !a.detach && !a.interactive);
        // Flags tapnet does not know are usage errors, before the command.
        let argv = |v: &[&str]| Cli::try_parse_from(["tapnet", "run"].iter().chain(v).copied());
        assert!(argv(&["--bogus", "true"]).is_err());
        assert!(argv(&["--rm"]).is_err(), "a command is required");
        assert!(argv(&["-e", "=x", "true"]).is_err());
        assert!(argv(&["--ip", "300.1.1.1", "true"]).is_err());
    }

    #[test]
    fn env_and_detached_arguments() {
        let a = args(&[
            "--rm",
            "-e",
            "A=1",
            "-e",
            "HOME",
            "-e",
            "NOPE_UNSET",
            "sh",
            "-c",
            "x",
        ]);
        let look = |k: &str| (k == "HOME").then(|| "/root".to_string());
        assert_eq!(
            env_pairs(&a, look),
            [
                ("A".to_string(), "1".to_string()),
                ("HOME".to_string(), "/root".to_string())
            ]
        );
        let d = detached_args(
            "unix:///s",
            "ID",
            &args(&["--rm", "-e", "A=1", "-d", "sleep", "9"]),
        );
        assert_eq!(
            d,
            [
                "-H",
                "unix:///s",
                "run",
                "--rm",
                "--in-sandbox",
                "ID",
                "-e",
                "A=1",
                "--",
                "sleep",
                "9"
            ]
        );
        // What -d starts parses back to the same run.
        let back = Cli::try_parse_from(std::iter::once("tapnet".to_string()).chain(d)).unwrap();
        let Cmd::Run(r) = back.command else { panic!() };
        assert_eq!(r.in_sandbox.as_deref(), Some("ID"));
        assert!(r.rm && !r.detach);
        assert_eq!(r.cmd, ["sleep", "9"]);
    }

    #[test]
    fn exit_codes() {
        assert_eq!(exit_code(ExitStatus::from_raw(0)), 0);
        assert_eq!(exit_code(ExitStatus::from_raw(3 << 8)), 3);
        // Killed by SIGINT (2).
        assert_eq!(exit_code(ExitStatus::from_raw(2)), 130);
    }
}
