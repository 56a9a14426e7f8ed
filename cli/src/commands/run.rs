//! `tapnet run [--name N] [--network NET]... [--ip IP] [--alias A]... [-p SPEC]...
//! [--keep] -- CMD [ARGS...]`: create a sandbox (with its published ports), connect
//! it to each network (default `bridge`; `--ip`/`--alias` apply to the first), run
//! CMD inside it, and remove the sandbox afterwards unless `--keep`.
//!
//! CMD runs as a child process: this binary again, as `tapnet exec SANDBOX -- CMD`,
//! so it gets exactly what `exec` gives (private mount namespace with the sandbox's
//! resolv.conf and hosts, the network namespace) while this process stays outside
//! to clean up. The child inherits stdin/stdout/stderr; SIGINT and SIGTERM received
//! here are forwarded to it; the exit code is CMD's (128+N if a signal N killed it).
//! If any setup step fails, the sandbox is removed again (which disconnects it).

use super::{runtime, sandbox::port_bindings, Exit};
use crate::args::RunArgs;
use crate::client::{seg, Client};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitStatus};
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
                    link_local_ips: (!a.link_local_ips.is_empty())
                        .then(|| a.link_local_ips.clone()),
                    ..EndpointIpamBody::default()
                };
                cfg.ipam_config = (ipam != EndpointIpamBody::default()).then_some(ipam);
                cfg.aliases = (!a.aliases.is_empty()).then(|| a.aliases.clone());
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

async fn remove(c: &Client, id: &str) {
    if let Err(e) = c.delete(&format!("/sandboxes/{}", seg(id))).await {
        eprintln!("tapnet: removing sandbox {id}: {e}");
    }
}

/// Run the command in sandbox `id` as a child `tapnet exec`, forwarding signals.
async fn run_child(host: &str, id: &str, cmd: &[String]) -> anyhow::Result<ExitStatus> {
    let (mut int, mut term) = (
        signal(SignalKind::interrupt())?,
        signal(SignalKind::terminate())?,
    );
    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe)
        .arg("-H")
        .arg(host)
        .arg("exec")
        .arg(id)
        .arg("--")
        .args(cmd)
        .spawn()?;
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

/// `tapnet run`.
pub fn run(c: &Client, host: &str, a: RunArgs) -> anyhow::Result<()> {
    let rt = runtime()?;
    rt.block_on(async {
        let id = setup(c, &a).await?;
        let status = run_child(host, &id, &a.cmd).await;
        if !a.keep {
            remove(c, &id).await;
        }
        let code = exit_code(status?);
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
    fn exit_codes() {
        assert_eq!(exit_code(ExitStatus::from_raw(0)), 0);
        assert_eq!(exit_code(ExitStatus::from_raw(3 << 8)), 3);
        // Killed by SIGINT (2).
        assert_eq!(exit_code(ExitStatus::from_raw(2)), 130);
    }
}
