//! `tapnet exec SANDBOX [--] CMD [ARGS...]`: run a command in a sandbox's namespace.
//!
//! The sandbox's namespace path and its resolv.conf/hosts come from the daemon; then
//! the tokio runtime is dropped so the process is single-threaded, the process gets a
//! private mount namespace with the sandbox's files bind-mounted over /etc/resolv.conf
//! and /etc/hosts, enters the network namespace
//! ([`tapnet_sandbox::netns::enter_for_exec_with_files`]) and replaces itself with
//! CMD, so the exit status is CMD's. Like docker: 127 if CMD is not found, 126 if it
//! cannot run.

use super::{runtime, Exit};
use crate::args::ExecArgs;
use crate::client::{seg, Client};
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use tapnet_sandbox::netns::FileMount;
use tapnet_types::api::SandboxResource;

/// Look up the sandbox, enter its namespace and exec the command. Returns only on failure.
pub fn run(client: &Client, args: ExecArgs) -> anyhow::Result<()> {
    let rt = runtime()?;
    let sb = rt.block_on(sandbox_object(client, &args.sandbox))?;
    let netns = netns_of(&sb, &args.sandbox)?;
    let files = file_mounts(&sb);
    // No runtime, no threads: unshare/setns then apply to the whole process.
    drop(rt);

    if let Err(e) = tapnet_sandbox::netns::enter_for_exec_with_files(&netns, &files) {
        let hint = match &e {
            tapnet_sandbox::Error::Os { source, .. }
                if source.kind() == io::ErrorKind::PermissionDenied =>
            {
                " (entering a network namespace needs CAP_SYS_ADMIN; run as root)"
            }
            _ => "",
        };
        anyhow::bail!(
            "cannot enter the network namespace of sandbox {} at {}: {e}{hint}",
            args.sandbox,
            netns.display()
        );
    }

    let (prog, rest) = args
        .cmd
        .split_first()
        .ok_or_else(|| anyhow::anyhow!("no command given"))?;
    let err = Command::new(prog).args(rest).exec();
    let (message, code) = exec_failure(prog, &err);
    eprintln!("{message}");
    Err(Exit(code).into())
}

/// `GET /sandboxes/{id}`.
async fn sandbox_object(client: &Client, sandbox: &str) -> anyhow::Result<SandboxResource> {
    Ok(client
        .get_as(&format!("/sandboxes/{}", seg(sandbox)))
        .await?)
}

/// A sandbox object's `NetnsPath`.
fn netns_of(sb: &SandboxResource, sandbox: &str) -> anyhow::Result<PathBuf> {
    match sb.netns_path.as_str() {
        "" => anyhow::bail!("the daemon gave no NetnsPath for sandbox {sandbox}"),
        p => Ok(PathBuf::from(p)),
    }
}

/// `GET /sandboxes/{id}` → its `NetnsPath`.
#[cfg(test)]
async fn netns_path(client: &Client, sandbox: &str) -> anyhow::Result<PathBuf> {
    netns_of(&sandbox_object(client, sandbox).await?, sandbox)
}

/// The sandbox's resolv.conf and hosts over /etc/resolv.conf and /etc/hosts; a file
/// the daemon does not name, or a host without that /etc file, is skipped.
pub fn file_mounts(sb: &SandboxResource) -> Vec<FileMount> {
    [
        (&sb.resolv_conf_path, "/etc/resolv.conf"),
        (&sb.hosts_path, "/etc/hosts"),
    ]
    .iter()
    .filter_map(|(src, target)| {
        let target = Path::new(target);
        let present = std::fs::symlink_metadata(target).is_ok();
        (!src.is_empty() && present && Path::new(src).exists()).then(|| FileMount {
            source: PathBuf::from(src),
            target: target.to_path_buf(),
        })
    })
    .collect()
}

/// The message and exit code for a failed exec of `prog`, docker style.
pub fn exec_failure(prog: &str, err: &io::Error) -> (String, u8) {
    match err.kind() {
        io::ErrorKind::NotFound if prog.contains('/') => (
            format!("tapnet: exec: \"{prog}\": stat {prog}: no such file or directory"),
            127,
        ),
        io::ErrorKind::NotFound => (
            format!("tapnet: exec: \"{prog}\": executable file not found in $PATH"),
            127,
        ),
        io::ErrorKind::PermissionDenied => {
            (format!("tapnet: exec: \"{prog}\": permission denied"), 126)
        }
        _ => (format!("tapnet: exec: \"{prog}\": {err}"), 126),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::client::tests::{fake_daemon, rt};

    #[test]
    fn exec_failures_map_to_docker_codes() {
        let nf = io::Error::from(io::ErrorKind::NotFound);
        let (m, c) = exec_failure("nosuchcmd", &nf);
        assert_eq!(c, 127);
        assert_eq!(
            m,
            "tapnet: exec: \"nosuchcmd\": executable file not found in $PATH"
        );
        let (m, c) = exec_failure("/x/y", &nf);
        assert_eq!(c, 127);
        assert!(m.contains("no such file or directory"), "{m}");
        let (_, c) = exec_failure(
            "/etc/passwd",
            &io::Error::from(io::ErrorKind::PermissionDenied),
        );
        assert_eq!(c, 126);
    }

    #[test]
    fn real_exec_error_of_missing_command_is_not_found() {
        // What `exec` would report, checked with spawn (which fails the same way).
        let err = Command::new("tapnet-no-such-command-xyz")
            .spawn()
            .unwrap_err();
        assert_eq!(exec_failure("tapnet-no-such-command-xyz", &err).1, 127);
    }

    #[test]
    fn netns_path_from_sandbox_object() {
        rt().block_on(async {
            let d = fake_daemon(vec![
                (
                    200,
                    r#"{"Id":"a","Name":"sb","NetnsPath":"/run/tapnet/netns/a"}"#,
                ),
                (200, r#"{"Id":"a","Name":"sb"}"#),
                (404, r#"{"message":"no such sandbox: zz"}"#),
            ]);
            assert_eq!(
                netns_path(&d.client, "sb").await.unwrap(),
                PathBuf::from("/run/tapnet/netns/a")
            );
            assert!(netns_path(&d.client, "sb").await.is_err());
            let e = netns_path(&d.client, "zz").await.unwrap_err();
            assert_eq!(
                e.to_string(),
                "Error response from daemon: no such sandbox: zz"
            );
            assert_eq!(d.seen.lock().unwrap()[0].path, "/sandboxes/sb");
        });
    }
}
