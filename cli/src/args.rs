//! The command line: `tapnet [-H HOST] network|sandbox|exec ...`, parsed with clap.
//!
//! Value parsers here do the purely local validation (`KEY=VALUE` pairs, IPv4
//! addresses) so that mistakes are reported by clap before anything is sent.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::net::Ipv4Addr;
use std::path::PathBuf;

/// Where `tapnetd` listens unless `-H` or `TAPNET_HOST` says otherwise.
pub const DEFAULT_HOST: &str = "unix:///run/tapnet/tapnet.sock";

/// `tapnet`: manage tapnet networks and sandboxes.
#[derive(Debug, Parser)]
#[command(
    name = "tapnet",
    version,
    about = "Manage tapnet networks and sandboxes",
    propagate_version = true
)]
pub struct Cli {
    /// Daemon socket to connect to, e.g. unix:///run/tapnet/tapnet.sock.
    #[arg(
        short = 'H',
        long,
        env = "TAPNET_HOST",
        default_value = DEFAULT_HOST,
        global = true,
        value_name = "HOST"
    )]
    pub host: String,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Manage networks.
    #[command(subcommand)]
    Network(NetworkCmd),
    /// Manage sandboxes (network namespaces).
    #[command(subcommand)]
    Sandbox(SandboxCmd),
    /// Run a command inside a sandbox's network namespace.
    #[command(override_usage = "tapnet exec [OPTIONS] SANDBOX [--] CMD [ARGS...]")]
    Exec(ExecArgs),
}

/// Output format of list-like commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum ListFormat {
    /// Aligned columns with a header.
    #[default]
    Table,
    /// One JSON object per line.
    Json,
}

/// Output format of `inspect` (only JSON: the array of objects).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum InspectFormat {
    /// A pretty-printed JSON array.
    #[default]
    Json,
}

/// `tapnet network ...`
#[derive(Debug, Subcommand)]
pub enum NetworkCmd {
    /// Create a network; prints its id.
    Create(NetworkCreate),
    /// List networks.
    #[command(alias = "list")]
    Ls(ListArgs),
    /// Show one or more networks in detail (JSON).
    Inspect(InspectArgs),
    /// Remove one or more networks.
    #[command(alias = "remove")]
    Rm(RmArgs),
    /// Connect a sandbox to a network.
    Connect(ConnectArgs),
    /// Disconnect a sandbox from a network.
    Disconnect(DisconnectArgs),
    /// Show the switch's per-port counters of a network.
    Stats(SwitchArgs),
    /// Show the switch's forwarding database (learned MAC addresses).
    Fdb(SwitchArgs),
}

/// `tapnet network create`
#[derive(Debug, Args)]
pub struct NetworkCreate {
    /// Driver managing the network.
    #[arg(short = 'd', long, default_value = "bridge")]
    pub driver: String,
    /// Subnet in CIDR form, e.g. 10.10.0.0/24 (default: a free one from the pools).
    #[arg(long, value_name = "CIDR")]
    pub subnet: Option<String>,
    /// IPv4 gateway of the subnet (default: its first host address).
    #[arg(long, value_name = "IP", requires = "subnet")]
    pub gateway: Option<Ipv4Addr>,
    /// Set metadata on the network (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_kv)]
    pub labels: Vec<(String, String)>,
    /// Set driver-specific options (repeatable).
    #[arg(short = 'o', long = "opt", value_name = "KEY=VALUE", value_parser = parse_kv)]
    pub opts: Vec<(String, String)>,
    /// Name of the new network.
    pub name: String,
}

/// Flags shared by `network ls` and `sandbox ls`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only print ids.
    #[arg(short, long)]
    pub quiet: bool,
    /// Do not truncate ids.
    #[arg(long)]
    pub no_trunc: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    pub format: ListFormat,
}

/// Flags of `inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Output format.
    #[arg(short, long, value_enum, default_value_t)]
    pub format: InspectFormat,
    /// Names, ids or unique id prefixes.
    #[arg(required = true, value_name = "NAME|ID")]
    pub targets: Vec<String>,
}

/// Arguments of `rm`.
#[derive(Debug, Args)]
pub struct RmArgs {
    /// Names, ids or unique id prefixes.
    #[arg(required = true, value_name = "NAME|ID")]
    pub targets: Vec<String>,
}

/// `tapnet network connect`
#[derive(Debug, Args)]
pub struct ConnectArgs {
    /// Static IPv4 address for the sandbox (default: the next free one).
    #[arg(long)]
    pub ip: Option<Ipv4Addr>,
    /// Network name or id.
    pub network: String,
    /// Sandbox name or id.
    pub sandbox: String,
}

/// `tapnet network disconnect`
#[derive(Debug, Args)]
pub struct DisconnectArgs {
    /// Force the sandbox to disconnect.
    #[arg(short, long)]
    pub force: bool,
    /// Network name or id.
    pub network: String,
    /// Sandbox name or id.
    pub sandbox: String,
}

/// `tapnet network stats` and `tapnet network fdb`
#[derive(Debug, Args)]
pub struct SwitchArgs {
    /// Do not truncate endpoint ids.
    #[arg(long)]
    pub no_trunc: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    pub format: ListFormat,
    /// Network name or id.
    pub network: String,
}

/// `tapnet sandbox ...`
#[derive(Debug, Subcommand)]
pub enum SandboxCmd {
    /// Create a sandbox (a new network namespace, or adopt one); prints its id.
    Create(SandboxCreate),
    /// List sandboxes.
    #[command(alias = "list")]
    Ls(ListArgs),
    /// Show one or more sandboxes in detail (JSON).
    Inspect(InspectArgs),
    /// Remove one or more sandboxes (disconnecting them from every network).
    #[command(alias = "remove")]
    Rm(RmArgs),
}

/// `tapnet sandbox create`
#[derive(Debug, Args)]
pub struct SandboxCreate {
    /// Adopt an existing network namespace, e.g. /proc/1234/ns/net.
    #[arg(long, value_name = "PATH")]
    pub netns: Option<PathBuf>,
    /// Name of the new sandbox.
    pub name: String,
}

/// `tapnet exec SANDBOX [--] CMD [ARGS...]`
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Sandbox name or id.
    pub sandbox: String,
    /// The command and its arguments.
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD"
    )]
    pub cmd: Vec<String>,
}

/// Parse `KEY=VALUE` (the value may be empty and may contain `=`; the key may not).
pub fn parse_kv(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        Some(_) => Err(format!("invalid key/value pair '{s}': empty key")),
        None => Err(format!("invalid key/value pair '{s}': expected KEY=VALUE")),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("tapnet").chain(args.iter().copied()))
    }

    fn network(args: &[&str]) -> NetworkCmd {
        let mut v = vec!["network"];
        v.extend_from_slice(args);
        match parse(&v).unwrap().command {
            Command::Network(n) => n,
            other => panic!("not a network command: {other:?}"),
        }
    }

    fn sandbox(args: &[&str]) -> SandboxCmd {
        let mut v = vec!["sandbox"];
        v.extend_from_slice(args);
        match parse(&v).unwrap().command {
            Command::Sandbox(s) => s,
            other => panic!("not a sandbox command: {other:?}"),
        }
    }

    #[test]
    fn clap_definition_is_valid() {
        Cli::command().debug_assert();
    }

    #[test]
    fn host_default_and_flag() {
        // The env var may be set by whoever runs the tests; only check the flag forms.
        let cli = parse(&["-H", "unix:///tmp/x.sock", "network", "ls"]).unwrap();
        assert_eq!(cli.host, "unix:///tmp/x.sock");
        let cli = parse(&["network", "ls", "--host", "unix:///tmp/y.sock"]).unwrap();
        assert_eq!(cli.host, "unix:///tmp/y.sock");
    }

    #[test]
    fn network_create_full() {
        let NetworkCmd::Create(c) = network(&[
            "create",
            "-d",
            "bridge",
            "--subnet",
            "10.10.0.0/24",
            "--gateway",
            "10.10.0.1",
            "--label",
            "a=b",
            "--label",
            "c=",
            "-o",
            "mtu=1500",
            "--opt",
            "x=y=z",
            "net1",
        ]) else {
            panic!("not create")
        };
        assert_eq!(c.driver, "bridge");
        assert_eq!(c.subnet.as_deref(), Some("10.10.0.0/24"));
        assert_eq!(c.gateway, Some(Ipv4Addr::new(10, 10, 0, 1)));
        assert_eq!(
            c.labels,
            vec![("a".into(), "b".into()), ("c".into(), String::new())]
        );
        assert_eq!(
            c.opts,
            vec![("mtu".into(), "1500".into()), ("x".into(), "y=z".into())]
        );
        assert_eq!(c.name, "net1");
    }

    #[test]
    fn network_create_defaults_and_errors() {
        let NetworkCmd::Create(c) = network(&["create", "n"]) else {
            panic!("not create")
        };
        assert_eq!(c.driver, "bridge");
        assert!(c.subnet.is_none() && c.gateway.is_none());
        assert!(c.labels.is_empty() && c.opts.is_empty());

        assert!(parse(&["network", "create"]).is_err(), "name is required");
        assert!(parse(&["network", "create", "--label", "novalue", "n"]).is_err());
        assert!(parse(&["network", "create", "--label", "=v", "n"]).is_err());
        assert!(parse(&["network", "create", "-o", "x", "n"]).is_err());
        assert!(
            parse(&["network", "create", "--gateway", "10.0.0.1", "n"]).is_err(),
            "gateway needs subnet"
        );
        assert!(parse(&[
            "network",
            "create",
            "--subnet",
            "10.0.0.0/24",
            "--gateway",
            "nope",
            "n"
        ])
        .is_err());
    }

    #[test]
    fn kv_parsing() {
        assert_eq!(parse_kv("a=b"), Ok(("a".into(), "b".into())));
        assert_eq!(parse_kv("a="), Ok(("a".into(), String::new())));
        assert_eq!(parse_kv("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert!(parse_kv("a").unwrap_err().contains("expected KEY=VALUE"));
        assert!(parse_kv("=b").unwrap_err().contains("empty key"));
        assert!(parse_kv("").is_err());
    }

    #[test]
    fn network_ls() {
        let NetworkCmd::Ls(l) = network(&["ls"]) else {
            panic!()
        };
        assert!(!l.quiet && !l.no_trunc);
        assert_eq!(l.format, ListFormat::Table);
        let NetworkCmd::Ls(l) = network(&["list", "-q", "--no-trunc", "--format", "json"]) else {
            panic!()
        };
        assert!(l.quiet && l.no_trunc);
        assert_eq!(l.format, ListFormat::Json);
        assert!(parse(&["network", "ls", "--format", "{{.Name}}"]).is_err());
    }

    #[test]
    fn network_inspect_rm() {
        let NetworkCmd::Inspect(i) = network(&["inspect", "a", "b"]) else {
            panic!()
        };
        assert_eq!(i.targets, ["a", "b"]);
        let NetworkCmd::Inspect(i) = network(&["inspect", "--format", "json", "a"]) else {
            panic!()
        };
        assert_eq!(i.format, InspectFormat::Json);
        assert!(parse(&["network", "inspect"]).is_err());
        let NetworkCmd::Rm(r) = network(&["rm", "a", "b"]) else {
            panic!()
        };
        assert_eq!(r.targets, ["a", "b"]);
        let NetworkCmd::Rm(r) = network(&["remove", "a"]) else {
            panic!()
        };
        assert_eq!(r.targets, ["a"]);
        assert!(parse(&["network", "rm"]).is_err());
    }

    #[test]
    fn network_connect_disconnect() {
        let NetworkCmd::Connect(c) = network(&["connect", "--ip", "10.0.0.5", "net", "sb"]) else {
            panic!()
        };
        assert_eq!(
            (c.ip, c.network.as_str(), c.sandbox.as_str()),
            (Some(Ipv4Addr::new(10, 0, 0, 5)), "net", "sb")
        );
        let NetworkCmd::Connect(c) = network(&["connect", "net", "sb"]) else {
            panic!()
        };
        assert_eq!(c.ip, None);
        assert!(parse(&["network", "connect", "--ip", "10.0.0.300", "net", "sb"]).is_err());
        assert!(parse(&["network", "connect", "net"]).is_err());

        let NetworkCmd::Disconnect(d) = network(&["disconnect", "-f", "net", "sb"]) else {
            panic!()
        };
        assert!(d.force);
        assert_eq!((d.network.as_str(), d.sandbox.as_str()), ("net", "sb"));
        let NetworkCmd::Disconnect(d) = network(&["disconnect", "net", "sb"]) else {
            panic!()
        };
        assert!(!d.force);
    }

    #[test]
    fn network_stats_fdb() {
        let NetworkCmd::Stats(s) = network(&["stats", "net"]) else {
            panic!()
        };
        assert_eq!((s.network.as_str(), s.format), ("net", ListFormat::Table));
        let NetworkCmd::Stats(s) = network(&["stats", "net", "--format", "json"]) else {
            panic!()
        };
        assert_eq!(s.format, ListFormat::Json);
        let NetworkCmd::Fdb(f) = network(&["fdb", "--no-trunc", "net"]) else {
            panic!()
        };
        assert!(f.no_trunc);
        assert!(parse(&["network", "fdb"]).is_err());
    }

    #[test]
    fn sandbox_commands() {
        let SandboxCmd::Create(c) = sandbox(&["create", "sb1"]) else {
            panic!()
        };
        assert_eq!((c.name.as_str(), c.netns), ("sb1", None));
        let SandboxCmd::Create(c) = sandbox(&["create", "--netns", "/proc/1/ns/net", "sb1"]) else {
            panic!()
        };
        assert_eq!(c.netns, Some(PathBuf::from("/proc/1/ns/net")));
        let SandboxCmd::Ls(l) = sandbox(&["ls", "-q", "--no-trunc", "--format", "json"]) else {
            panic!()
        };
        assert!(l.quiet && l.no_trunc && l.format == ListFormat::Json);
        let SandboxCmd::Inspect(i) = sandbox(&["inspect", "a", "b"]) else {
            panic!()
        };
        assert_eq!(i.targets, ["a", "b"]);
        let SandboxCmd::Rm(r) = sandbox(&["rm", "a"]) else {
            panic!()
        };
        assert_eq!(r.targets, ["a"]);
        assert!(parse(&["sandbox", "create"]).is_err());
        assert!(parse(&["sandbox", "rm"]).is_err());
    }

    #[test]
    fn exec_with_and_without_double_dash() {
        let exec = |args: &[&str]| match parse(args).unwrap().command {
            Command::Exec(e) => e,
            other => panic!("not exec: {other:?}"),
        };
        let e = exec(&["exec", "sb", "--", "sh", "-c", "exit 7"]);
        assert_eq!(e.sandbox, "sb");
        assert_eq!(e.cmd, ["sh", "-c", "exit 7"]);
        let e = exec(&["exec", "sb", "ip", "-br", "addr"]);
        assert_eq!(e.cmd, ["ip", "-br", "addr"]);
        // Flags after the command belong to the command, even ones tapnet knows.
        let e = exec(&["-H", "unix:///x", "exec", "sb", "--", "ls", "-H", "--help"]);
        assert_eq!(e.cmd, ["ls", "-H", "--help"]);
        assert!(parse(&["exec", "sb"]).is_err(), "a command is required");
        assert!(
            parse(&["exec", "sb", "--"]).is_err(),
            "a command is required"
        );
    }
}
