//! Shell completion: `tapnet completion bash|zsh|fish` prints a script that
//! registers `tapnet` itself as the completer (clap_complete's dynamic completion,
//! `CompleteEnv`): on TAB the shell runs `TAPNET_COMPLETE=<shell> tapnet -- <words>`, which
//! completes subcommands and flags from the clap definition and network and sandbox
//! names by asking the daemon (`GET /networks`, `GET /sandboxes`), at the socket
//! given by `-H` on the line being completed, else `TAPNET_HOST`, else the default.
//! A daemon that cannot be reached within a second gives no names (and no error).

use crate::args::{Cli, CompletionShell, DEFAULT_HOST};
use crate::client::Client;
use clap::CommandFactory;
use clap_complete::engine::CompletionCandidate;
use clap_complete::env::{Bash, EnvCompleter, Fish, Zsh};
use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::time::Duration;
use tapnet_types::api::{NetworkResource, SandboxResource};

/// The environment variable that makes `tapnet` answer a completion request.
pub const COMPLETE_VAR: &str = "TAPNET_COMPLETE";

/// Answer a completion request and exit, if this process is one (`TAPNET_COMPLETE` set).
pub fn complete_if_asked() {
    clap_complete::CompleteEnv::with_factory(Cli::command)
        .var(COMPLETE_VAR)
        .complete();
}

/// Write the registration script for `shell` to `out`: it calls `completer` (this
/// binary) for every completion.
pub fn write_script(
    shell: CompletionShell,
    completer: &str,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    let shell: &dyn EnvCompleter = match shell {
        CompletionShell::Bash => &Bash,
        CompletionShell::Zsh => &Zsh,
        CompletionShell::Fish => &Fish,
    };
    shell.write_registration(COMPLETE_VAR, "tapnet", "tapnet", completer, out)
}

/// The `-H`/`--host` value on the command line being completed (`args`: this
/// process's arguments, `tapnet -- tapnet -H X ...`).
pub fn host_from_args(args: &[OsString]) -> Option<String> {
    let words: Vec<&str> = args.iter().filter_map(|a| a.to_str()).collect();
    let start = words.iter().position(|w| *w == "--").map_or(0, |i| i + 1);
    let words = &words[start..];
    words.iter().enumerate().find_map(|(i, w)| {
        if let Some(v) = w.strip_prefix("--host=") {
            return Some(v.to_string());
        }
        if let Some(v) = w.strip_prefix("-H").filter(|v| !v.is_empty()) {
            return Some(v.trim_start_matches('=').to_string());
        }
        (*w == "-H" || *w == "--host")
            .then(|| words.get(i + 1).map(|v| v.to_string()))
            .flatten()
    })
}

fn host() -> String {
    let args: Vec<OsString> = std::env::args_os().collect();
    host_from_args(&args)
        .or_else(|| std::env::var("TAPNET_HOST").ok())
        .unwrap_or_else(|| DEFAULT_HOST.to_string())
}

/// Names (and, if `current` is not a name's start, id prefixes) that start with
/// `current`, each once.
pub fn candidates(current: &str, objects: &[(String, String)]) -> Vec<CompletionCandidate> {
    let mut out: Vec<String> = objects
        .iter()
        .filter(|(name, _)| name.starts_with(current))
        .map(|(name, _)| name.clone())
        .collect();
    if out.is_empty() && !current.is_empty() {
        out = objects
            .iter()
            .filter(|(_, id)| id.starts_with(current))
            .map(|(_, id)| id.clone())
            .collect();
    }
    out.sort();
    out.dedup();
    out.into_iter().map(CompletionCandidate::new).collect()
}

/// `(name, id)` of what `path` lists, or nothing if the daemon does not answer.
fn fetch<T: serde::de::DeserializeOwned>(
    path: &str,
    pick: fn(T) -> (String, String),
) -> Vec<(String, String)> {
    let Ok(client) = Client::from_host(&host()) else {
        return Vec::new();
    };
    let Ok(rt) = super::runtime() else {
        return Vec::new();
    };
    rt.block_on(async {
        match tokio::time::timeout(Duration::from_secs(1), client.get_as::<Vec<T>>(path)).await {
            Ok(Ok(list)) => list.into_iter().map(pick).collect(),
            _ => Vec::new(),
        }
    })
}

/// Completer of network arguments: the daemon's network names.
pub fn networks(current: &OsStr) -> Vec<CompletionCandidate> {
    let list = fetch("/networks", |n: NetworkResource| (n.name, n.id));
    candidates(&current.to_string_lossy(), &list)
}

/// Completer of sandbox arguments: the daemon's sandbox names.
pub fn sandboxes(current: &OsStr) -> Vec<CompletionCandidate> {
    let list = fetch("/sandboxes", |s: SandboxResource| (s.name, s.id));
    candidates(&current.to_string_lossy(), &list)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn script(shell: CompletionShell) -> String {
        let mut buf = Vec::new();
        write_script(shell, "/usr/bin/tapnet", &mut buf).unwrap();
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn scripts_register_tapnet_as_its_own_completer() {
        let s = script(CompletionShell::Bash);
        assert!(
            s.contains(
                "complete -o nospace -o bashdefault -o nosort -F _clap_complete_tapnet tapnet"
            ),
            "{s}"
        );
        assert!(
            s.contains("TAPNET_COMPLETE=\"bash\"") && s.contains("/usr/bin/tapnet"),
            "{s}"
        );
        let s = script(CompletionShell::Zsh);
        assert!(s.starts_with("#compdef tapnet"), "{s}");
        assert!(s.contains("TAPNET_COMPLETE=\"zsh\""), "{s}");
        let s = script(CompletionShell::Fish);
        assert!(
            s.contains("complete --keep-order --exclusive --command tapnet"),
            "{s}"
        );
        assert!(s.contains("TAPNET_COMPLETE=fish"), "{s}");
    }

    #[test]
    fn host_is_read_from_the_line() {
        let a = |v: &[&str]| host_from_args(&v.iter().map(OsString::from).collect::<Vec<_>>());
        assert_eq!(
            a(&[
                "tapnet",
                "--",
                "tapnet",
                "-H",
                "unix:///x",
                "network",
                "rm",
                ""
            ])
            .as_deref(),
            Some("unix:///x")
        );
        assert_eq!(
            a(&["tapnet", "--", "tapnet", "--host=unix:///y", "network"]).as_deref(),
            Some("unix:///y")
        );
        assert_eq!(
            a(&["tapnet", "--", "tapnet", "-Hunix:///z"]).as_deref(),
            Some("unix:///z")
        );
        assert_eq!(a(&["tapnet", "--", "tapnet", "network", "rm"]), None);
        // Before the `--` are this process's own arguments, not the line's.
        assert_eq!(a(&["tapnet", "-H", "a", "--", "tapnet"]), None);
    }

    #[test]
    fn candidates_by_name_then_id() {
        let objs = vec![
            ("web".to_string(), "abc123".to_string()),
            ("db".to_string(), "abd456".to_string()),
            ("web2".to_string(), "ff0000".to_string()),
        ];
        let names = |c: &str| {
            candidates(c, &objs)
                .iter()
                .map(|c| c.get_value().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(names("we"), ["web", "web2"]);
        assert_eq!(names(""), ["db", "web", "web2"]);
        assert_eq!(names("ab"), ["abc123", "abd456"]);
        assert!(names("zz").is_empty());
    }
}
