//! The command line: `tapnet [-H HOST] network|sandbox|exec ...`, parsed with clap.
//!
//! Value parsers here do the purely local validation (`KEY=VALUE` pairs, IPv4
//! addresses) so that mistakes are reported by clap before anything is sent (and
//! exit 125, as docker's usage errors do). Arguments that name a network or a
//! sandbox complete to the daemon's names ([`crate::commands::completion`]).

use crate::commands::completion::{networks as net_names, sandboxes as sb_names};
use clap::{Args, Parser, Subcommand, ValueEnum};
use clap_complete::ArgValueCompleter;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
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
    /// Create a sandbox, connect it, and run a command in it (`docker run`).
    #[command(override_usage = "tapnet run [OPTIONS] [--] CMD [ARGS...]")]
    Run(RunArgs),
    /// List a sandbox's published ports (`80/tcp -> 0.0.0.0:8080`).
    Port(PortArgs),
    /// Print a shell completion script (`source <(tapnet completion bash)`).
    Completion(CompletionArgs),
    /// Write a man page for tapnet and for each of its commands into DIR.
    Man(ManArgs),
    /// Show the client's and the daemon's versions.
    Version(SystemArgs),
    /// Show what the daemon runs on and what it holds (`docker info`'s top part).
    Info(SystemArgs),
    /// Stream network events (create, destroy, connect, disconnect) until interrupted.
    Events(EventsArgs),
    /// Write a pcap capture of a network's or a sandbox's frames (for tcpdump -r, Wireshark).
    #[command(override_usage = "tapnet capture [OPTIONS] NET|SANDBOX")]
    Capture(crate::commands::capture::CaptureArgs),
}

/// `tapnet events`
#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Filter: type=network, event=ACTION, network=NAME|ID, container=SANDBOX (repeatable).
    #[arg(short = 'f', long = "filter", value_name = "KEY=VALUE", value_parser = parse_kv)]
    pub filters: Vec<(String, String)>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = SystemFormat::Text)]
    pub format: SystemFormat,
}

/// Output format of `tapnet version` and `tapnet info`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum SystemFormat {
    /// Indented `Key: value` lines, like docker's.
    #[default]
    Text,
    /// One JSON object.
    Json,
}

/// `tapnet version|info`
#[derive(Debug, Args)]
pub struct SystemArgs {
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = SystemFormat::Text)]
    pub format: SystemFormat,
}

/// Shells `tapnet completion` can write a script for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CompletionShell {
    /// GNU bash.
    Bash,
    /// Z shell.
    Zsh,
    /// fish.
    Fish,
}

/// `tapnet man DIR`
#[derive(Debug, Args)]
pub struct ManArgs {
    /// Directory to write the pages to (made if missing).
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
}

/// `tapnet completion SHELL`
#[derive(Debug, Args)]
pub struct CompletionArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: CompletionShell,
}

/// Output format of `network stats` and `network fdb`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum ListFormat {
    /// Aligned columns with a header.
    #[default]
    Table,
    /// One JSON object per line.
    Json,
}

/// `tapnet network ...`
#[derive(Debug, Subcommand)]
pub enum NetworkCmd {
    /// Create a network; prints its id.
    Create(NetworkCreate),
    /// List networks.
    #[command(alias = "list")]
    Ls(NetworkLsArgs),
    /// Show one or more networks in detail (JSON, or --format TEMPLATE).
    Inspect(NetworkInspectArgs),
    /// Remove one or more networks.
    #[command(alias = "remove")]
    Rm(NetworkRmArgs),
    /// Connect a sandbox to a network.
    Connect(ConnectArgs),
    /// Disconnect a sandbox from a network.
    Disconnect(DisconnectArgs),
    /// Remove all custom networks without endpoints.
    Prune(PruneArgs),
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
    /// Subnet in CIDR form, e.g. 10.10.0.0/24 (repeatable: one IPv4 and, with
    /// --ipv6, one IPv6 subnet; default: a free one from the pools).
    #[arg(long, value_name = "CIDR")]
    pub subnet: Vec<String>,
    /// Gateway of the subnet that contains it (default: the first host address).
    #[arg(long, value_name = "IP", requires = "subnet")]
    pub gateway: Vec<IpAddr>,
    /// Allocate dynamic addresses from this sub-range of the subnet that contains it.
    #[arg(long, value_name = "CIDR", requires = "subnet")]
    pub ip_range: Vec<String>,
    /// Reserve an address for a device outside tapnet (repeatable).
    #[arg(long = "aux-address", value_name = "NAME=IP", value_parser = parse_aux, requires = "subnet")]
    pub aux_addresses: Vec<(String, IpAddr)>,
    /// Enable IPv6 (give an IPv6 --subnet, or one is picked).
    #[arg(long)]
    pub ipv6: bool,
    /// Restrict external access to the network.
    #[arg(long)]
    pub internal: bool,
    /// Allow manual attachment (recorded, as docker).
    #[arg(long)]
    pub attachable: bool,
    /// Set metadata on the network (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_kv)]
    pub labels: Vec<(String, String)>,
    /// Set driver-specific options (repeatable; `-o KEY` alone gives KEY an empty
    /// value, as Docker's `-o encrypted`).
    #[arg(short = 'o', long = "opt", value_name = "KEY[=VALUE]", value_parser = parse_opt)]
    pub opts: Vec<(String, String)>,
    /// Create a configuration-only network: it holds --subnet/--gateway/--ip-range/
    /// --aux-address/--ipv6/-o/--label for networks made with --config-from.
    #[arg(long)]
    pub config_only: bool,
    /// Take the IPAM settings, options and labels from this configuration-only network.
    #[arg(long, value_name = "NAME")]
    pub config_from: Option<String>,
    /// Scope: local, or global for a global-scope driver (overlay); swarm is refused.
    #[arg(long, value_name = "SCOPE")]
    pub scope: Option<String>,
    /// Create a swarm routing-mesh network (refused: tapnet has no swarm).
    #[arg(long)]
    pub ingress: bool,
    /// IP address management driver (`default`, or an IPAM plugin's name).
    #[arg(long, value_name = "NAME", default_value = "default")]
    pub ipam_driver: String,
    /// Options of the IPAM driver (repeatable).
    #[arg(long = "ipam-opt", value_name = "KEY=VALUE", value_parser = parse_kv)]
    pub ipam_opts: Vec<(String, String)>,
    /// Name of the new network.
    pub name: String,
}

/// Flags shared by `network ls` and `sandbox ls`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only print ids (with the default table format).
    #[arg(short, long)]
    pub quiet: bool,
    /// Do not truncate ids (12 characters otherwise).
    #[arg(long)]
    pub no_trunc: bool,
    /// Format output: `table`, `table TEMPLATE` (aligned, with a header), `json`
    /// (an object per line), or a Go TEMPLATE run for each row, e.g. '{{.Name}}'.
    #[arg(long, value_name = "FORMAT", default_value = "table")]
    pub format: String,
}

/// `tapnet network inspect`
#[derive(Debug, Args)]
pub struct NetworkInspectArgs {
    /// Format output: a Go TEMPLATE run on each network object (e.g.
    /// '{{range .IPAM.Config}}{{.Subnet}}{{end}}'), or `json` (the default: a JSON array).
    #[arg(short, long, value_name = "FORMAT")]
    pub format: Option<String>,
    /// Names, ids or unique id prefixes.
    #[arg(required = true, value_name = "NAME|ID", add = ArgValueCompleter::new(net_names))]
    pub targets: Vec<String>,
}

/// `tapnet sandbox inspect`
#[derive(Debug, Args)]
pub struct SandboxInspectArgs {
    /// Format output: a Go TEMPLATE run on each sandbox object (e.g.
    /// '{{.NetnsPath}}'), or `json` (the default: a JSON array).
    #[arg(short, long, value_name = "FORMAT")]
    pub format: Option<String>,
    /// Names, ids or unique id prefixes.
    #[arg(required = true, value_name = "NAME|ID", add = ArgValueCompleter::new(sb_names))]
    pub targets: Vec<String>,
}

/// `tapnet network rm`
#[derive(Debug, Args)]
pub struct NetworkRmArgs {
    /// Names, ids or unique id prefixes.
    #[arg(required = true, value_name = "NAME|ID", add = ArgValueCompleter::new(net_names))]
    pub targets: Vec<String>,
}

/// `tapnet sandbox rm`
#[derive(Debug, Args)]
pub struct SandboxRmArgs {
    /// Remove the sandbox even while processes run in it: they get SIGTERM, then
    /// SIGKILL after a grace period.
    #[arg(short, long)]
    pub force: bool,
    /// Names, ids or unique id prefixes.
    #[arg(required = true, value_name = "NAME|ID", add = ArgValueCompleter::new(sb_names))]
    pub targets: Vec<String>,
}

/// `tapnet sandbox ls`
#[derive(Debug, Args)]
pub struct SandboxLsArgs {
    /// Filter: name= (part of the name), id= (id prefix), network= (network name or
    /// id prefix) (repeatable; a key given twice matches either value).
    #[arg(short = 'f', long = "filter", value_name = "KEY=VALUE", value_parser = parse_kv)]
    pub filters: Vec<(String, String)>,
    /// -q, --no-trunc, --format.
    #[command(flatten)]
    pub list: ListArgs,
}

/// `tapnet network ls`
#[derive(Debug, Args)]
pub struct NetworkLsArgs {
    /// Filter: name=, id=, driver=, label=KEY or label=KEY=VALUE, scope=,
    /// type=custom|builtin, dangling=true|false (repeatable).
    #[arg(short = 'f', long = "filter", value_name = "KEY=VALUE", value_parser = parse_kv)]
    pub filters: Vec<(String, String)>,
    /// -q, --no-trunc, --format.
    #[command(flatten)]
    pub list: ListArgs,
}

/// `tapnet network prune`
#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Do not prompt for confirmation.
    #[arg(short, long)]
    pub force: bool,
    /// Filter: until=DURATION|TIME, label=..., label!=... (repeatable).
    #[arg(long = "filter", value_name = "KEY=VALUE", value_parser = parse_kv)]
    pub filters: Vec<(String, String)>,
}

/// `tapnet network connect`
#[derive(Debug, Args)]
pub struct ConnectArgs {
    /// Static IPv4 address for the sandbox (default: the next free one).
    #[arg(long)]
    pub ip: Option<Ipv4Addr>,
    /// Static IPv6 address (on a network with IPv6).
    #[arg(long)]
    pub ip6: Option<Ipv6Addr>,
    /// Network-scoped alias for the sandbox (repeatable).
    #[arg(long = "alias", value_name = "ALIAS")]
    pub aliases: Vec<String>,
    /// MAC address of the sandbox's interface, e.g. 02:42:ac:11:00:99.
    #[arg(long, value_name = "MAC")]
    pub mac_address: Option<String>,
    /// Endpoint driver option (repeatable): only
    /// com.docker.network.endpoint.ifname=NAME, the interface's name in the sandbox.
    #[arg(long = "driver-opt", value_name = "KEY=VALUE", value_parser = parse_kv)]
    pub driver_opts: Vec<(String, String)>,
    /// Link-local address for the interface (repeatable): 169.254.0.0/16 or fe80::/10.
    #[arg(long = "link-local-ip", value_name = "IP")]
    pub link_local_ips: Vec<String>,
    /// Add a link to another container (refused by the daemon: tapnet has no legacy
    /// links; use --alias).
    #[arg(long = "link", value_name = "CONTAINER[:ALIAS]")]
    pub links: Vec<String>,
    /// Network name or id.
    #[arg(add = ArgValueCompleter::new(net_names))]
    pub network: String,
    /// Sandbox name or id.
    #[arg(add = ArgValueCompleter::new(sb_names))]
    pub sandbox: String,
}

/// `tapnet network disconnect`
#[derive(Debug, Args)]
pub struct DisconnectArgs {
    /// Force the sandbox to disconnect.
    #[arg(short, long)]
    pub force: bool,
    /// Network name or id.
    #[arg(add = ArgValueCompleter::new(net_names))]
    pub network: String,
    /// Sandbox name or id.
    #[arg(add = ArgValueCompleter::new(sb_names))]
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
    #[arg(add = ArgValueCompleter::new(net_names))]
    pub network: String,
}

/// `tapnet sandbox ...`
#[derive(Debug, Subcommand)]
pub enum SandboxCmd {
    /// Create a sandbox (a new network namespace, or adopt one); prints its id.
    Create(SandboxCreate),
    /// List sandboxes: addresses, published ports, age (`docker ps`).
    #[command(alias = "list", alias = "ps")]
    Ls(SandboxLsArgs),
    /// Show one or more sandboxes in detail (JSON, or --format TEMPLATE).
    Inspect(SandboxInspectArgs),
    /// Remove one or more sandboxes (disconnecting them from every network); refused
    /// while processes run in a sandbox tapnet created, unless -f.
    #[command(alias = "remove")]
    Rm(SandboxRmArgs),
}

/// `tapnet sandbox create`
#[derive(Debug, Args)]
pub struct SandboxCreate {
    /// Adopt an existing network namespace, e.g. /proc/1234/ns/net.
    #[arg(long, value_name = "PATH")]
    pub netns: Option<PathBuf>,
    /// Publish a port: [HOSTIP:][HOSTPORT:]PORT[/tcp|udp] (repeatable). Bound when
    /// the sandbox joins its first non-internal bridge network.
    #[arg(short = 'p', long = "publish", value_name = "SPEC", value_parser = parse_publish)]
    pub publish: Vec<Publish>,
    /// Name of the new sandbox.
    pub name: String,
}

/// `tapnet exec SANDBOX [--] CMD [ARGS...]`
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Sandbox name or id.
    #[arg(add = ArgValueCompleter::new(sb_names))]
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

/// `tapnet run [OPTIONS] [--] CMD [ARGS...]`: docker run's networking flags.
/// Flags go before CMD; everything from CMD on is the command's.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Remove the sandbox when the command exits (ending what still runs in it);
    /// without it the sandbox stays, as a docker container does.
    #[arg(long)]
    pub rm: bool,
    /// Run the command in the background and print the sandbox id.
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Name of the sandbox (default: the id's first 12 characters).
    #[arg(long)]
    pub name: Option<String>,
    /// Connect to a network (repeatable; default: bridge). --ip, --ip6,
    /// --network-alias and --mac-address apply to the first.
    #[arg(long = "network", alias = "net", value_name = "NET", add = ArgValueCompleter::new(net_names))]
    pub networks: Vec<String>,
    /// IPv4 address on the first network.
    #[arg(long)]
    pub ip: Option<Ipv4Addr>,
    /// IPv6 address on the first network.
    #[arg(long)]
    pub ip6: Option<Ipv6Addr>,
    /// Network-scoped alias on the first network (repeatable).
    #[arg(long = "network-alias", alias = "alias", value_name = "ALIAS")]
    pub aliases: Vec<String>,
    /// MAC address on the first network, e.g. 02:42:ac:11:00:99.
    #[arg(long, value_name = "MAC")]
    pub mac_address: Option<String>,
    /// Endpoint driver option on the first network (repeatable): only
    /// com.docker.network.endpoint.ifname=NAME.
    #[arg(long = "driver-opt", value_name = "KEY=VALUE", value_parser = parse_kv)]
    pub driver_opts: Vec<(String, String)>,
    /// Link-local address on the first network's interface (repeatable).
    #[arg(long = "link-local-ip", value_name = "IP")]
    pub link_local_ips: Vec<String>,
    /// Publish a port: [HOSTIP:][HOSTPORT:]PORT[/tcp|udp] (repeatable).
    #[arg(short = 'p', long = "publish", value_name = "SPEC", value_parser = parse_publish)]
    pub publish: Vec<Publish>,
    /// Set an environment variable for the command (repeatable); KEY alone passes
    /// this shell's KEY, if set.
    #[arg(short = 'e', long = "env", value_name = "KEY[=VALUE]", value_parser = parse_env)]
    pub env: Vec<(String, Option<String>)>,
    /// Keep standard input open for the command (otherwise it reads nothing).
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Accepted for docker compatibility: the command runs on this terminal (tapnet
    /// allocates no pseudo-terminal of its own).
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Run in this existing sandbox instead of making one (what `-d` runs in the
    /// background).
    #[arg(long, hide = true, value_name = "SANDBOX")]
    pub in_sandbox: Option<String>,
    /// The command and its arguments (after `--` if the command starts with `-`).
    #[arg(required = true, trailing_var_arg = true, value_name = "CMD")]
    pub cmd: Vec<String>,
}

/// Parse `-e KEY[=VALUE]`.
pub fn parse_env(s: &str) -> Result<(String, Option<String>), String> {
    match s.split_once('=') {
        Some(("", _)) => Err(format!("invalid environment variable: {s}")),
        Some((k, v)) => Ok((k.to_string(), Some(v.to_string()))),
        None if s.is_empty() => Err("invalid environment variable: empty".to_string()),
        None => Ok((s.to_string(), None)),
    }
}

/// `tapnet port SANDBOX [PORT[/PROTO]]`
#[derive(Debug, Args)]
pub struct PortArgs {
    /// Sandbox name or id.
    #[arg(add = ArgValueCompleter::new(sb_names))]
    pub sandbox: String,
    /// Only this container port (`80` or `80/tcp`).
    pub port: Option<String>,
}

/// One `-p` spec: `[HOSTIP:][HOSTPORT:]PORT[/tcp|udp]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// Host address (`None`: all).
    pub host_ip: Option<IpAddr>,
    /// Host port (`None`: a free one).
    pub host_port: Option<u16>,
    /// Port in the sandbox.
    pub port: u16,
    /// `tcp` or `udp`.
    pub proto: String,
}

/// Parse a `-p` spec as docker does: `80`, `8080:80`, `127.0.0.1:8080:80`,
/// `127.0.0.1::80`, `[::1]:8080:80`, each optionally with `/tcp` or `/udp`.
pub fn parse_publish(spec: &str) -> Result<Publish, String> {
    let bad = |why: &str| format!("invalid publish spec {spec:?}: {why}");
    let (rest, proto) = match spec.rsplit_once('/') {
        Some((r, p)) => (r, p.to_ascii_lowercase()),
        None => (spec, "tcp".to_string()),
    };
    if proto != "tcp" && proto != "udp" {
        return Err(bad("the protocol must be tcp or udp"));
    }
    let (ip, ports): (Option<&str>, &str) = if let Some(r) = rest.strip_prefix('[') {
        let (ip, after) = r
            .split_once(']')
            .ok_or_else(|| bad("missing ] after the IPv6 address"))?;
        let after = after
            .strip_prefix(':')
            .ok_or_else(|| bad("expected :HOSTPORT:PORT after the address"))?;
        (Some(ip), after)
    } else {
        match rest.matches(':').count() {
            0 | 1 => (None, rest),
            2 => {
                let (ip, after) = rest.split_once(':').unwrap_or(("", rest));
                (Some(ip), after)
            }
            _ => return Err(bad("put an IPv6 host address in brackets: [::1]:8080:80")),
        }
    };
    let (host_port, port) = match ports.split_once(':') {
        Some((h, p)) => (Some(h), p),
        None if ip.is_some() => return Err(bad("expected HOSTIP:HOSTPORT:PORT")),
        None => (None, ports),
    };
    if port.contains('-') || host_port.is_some_and(|h| h.contains('-')) {
        return Err(bad("port ranges are not supported"));
    }
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| bad("the port must be a number from 1 to 65535"))?;
    let host_port = match host_port {
        None | Some("") => None,
        Some(h) => Some(
            h.parse::<u16>()
                .map_err(|_| bad("the host port must be a number from 0 to 65535"))?,
        ),
    };
    let host_ip = match ip {
        None | Some("") => None,
        Some(a) => Some(
            a.parse::<IpAddr>()
                .map_err(|_| bad(&format!("{a:?} is not an IP address")))?,
        ),
    };
    Ok(Publish {
        host_ip,
        host_port,
        port,
        proto,
    })
}

/// Parse `NAME=IP` for `--aux-address`.
pub fn parse_aux(s: &str) -> Result<(String, IpAddr), String> {
    let (k, v) = parse_kv(s)?;
    let ip = v
        .parse()
        .map_err(|_| format!("invalid aux-address '{s}': {v:?} is not an IP address"))?;
    Ok((k, ip))
}

/// Parse `KEY=VALUE` (the value may be empty and may contain `=`; the key may not).
pub fn parse_kv(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        Some(_) => Err(format!("invalid key/value pair '{s}': empty key")),
        None => Err(format!("invalid key/value pair '{s}': expected KEY=VALUE")),
    }
}

/// Parse a driver option `KEY[=VALUE]`: as [`parse_kv`], and a bare `KEY` has an
/// empty value (Docker: `-o encrypted`).
pub fn parse_opt(s: &str) -> Result<(String, String), String> {
    if s.is_empty() {
        return Err("invalid option '': empty key".into());
    }
    if s.contains('=') {
        parse_kv(s)
    } else {
        Ok((s.to_string(), String::new()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]

    #[test]
    fn driver_option_without_value() {
        assert_eq!(
            parse_opt("encrypted"),
            Ok(("encrypted".into(), String::new()))
        );
        assert_eq!(parse_opt("a=b"), Ok(("a".into(), "b".into())));
        assert!(parse_opt("").is_err() && parse_opt("=x").is_err());
    }
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

    /// docs/cli.md has a section for every command, and it names each of the
    /// command's flags: the help and the documentation describe the same CLI.
    #[test]
    fn docs_cover_every_command_and_flag() {
        const DOC: &str = include_str!("../../docs/cli.md");
        fn section(path: &str) -> Option<&'static str> {
            let token = format!("`{path}`");
            let start = DOC.match_indices(&token).map(|(i, _)| i).find(|&i| {
                DOC[..i]
                    .rsplit('\n')
                    .next()
                    .is_some_and(|l| l.starts_with('#'))
            })?;
            let body = &DOC[start..];
            let end = body.find("\n#").unwrap_or(body.len());
            Some(&body[..end])
        }
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            let subs: Vec<&clap::Command> = cmd
                .get_subcommands()
                .filter(|s| !s.is_hide_set() && s.get_name() != "help")
                .collect();
            if subs.is_empty() {
                let Some(text) = section(path) else {
                    missing.push(format!("no section for `{path}`"));
                    return;
                };
                for a in cmd.get_arguments() {
                    let Some(long) = a.get_long() else { continue };
                    if a.is_hide_set() || a.is_global_set() || ["help", "version"].contains(&long) {
                        continue;
                    }
                    if !text.contains(&format!("--{long}")) {
                        missing.push(format!("`{path}` section lacks --{long}"));
                    }
                }
            }
            for s in subs {
                let p = if path.is_empty() {
                    s.get_name().to_string()
                } else {
                    format!("{path} {}", s.get_name())
                };
                walk(s, &p, missing);
            }
        }
        // Sections end at the next heading: a flag of one command does not count for
        // another.
        let rm = section("sandbox rm").unwrap_or_default();
        assert!(rm.contains("--force") && !rm.contains("--format"), "{rm}");
        assert!(!section("network prune")
            .unwrap_or_default()
            .contains("--mac-address"));
        assert!(section("nosuch").is_none());
        let mut cmd = Cli::command();
        cmd.build();
        let mut missing = Vec::new();
        walk(&cmd, "", &mut missing);
        assert!(
            missing.is_empty(),
            "docs/cli.md is behind the CLI:\n{}",
            missing.join("\n")
        );
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
        assert_eq!(c.subnet, ["10.10.0.0/24"]);
        assert_eq!(c.gateway, [IpAddr::V4(Ipv4Addr::new(10, 10, 0, 1))]);
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
        assert!(c.subnet.is_empty() && c.gateway.is_empty());
        assert!(!c.ipv6 && !c.internal && !c.attachable);
        assert!(c.labels.is_empty() && c.opts.is_empty());

        assert!(parse(&["network", "create"]).is_err(), "name is required");
        assert!(parse(&["network", "create", "--label", "novalue", "n"]).is_err());
        assert!(parse(&["network", "create", "--label", "=v", "n"]).is_err());
        assert!(parse(&["network", "create", "-o", "=x", "n"]).is_err());
        // A bare option key has an empty value (Docker's `-o encrypted`).
        let NetworkCmd::Create(c) = network(&["create", "-o", "encrypted", "n"]) else {
            panic!("not a create")
        };
        assert_eq!(c.opts, [("encrypted".to_string(), String::new())]);
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
    fn network_parity_flags() {
        let NetworkCmd::Create(c) = network(&[
            "create",
            "--subnet",
            "10.1.0.0/16",
            "--ip-range",
            "10.1.2.0/24",
            "--gateway",
            "10.1.0.254",
            "--aux-address",
            "router=10.1.0.2",
            "--aux-address",
            "v6=fd00::9",
            "--ipv6",
            "--subnet",
            "fd00::/64",
            "--internal",
            "--attachable",
            "n",
        ]) else {
            panic!()
        };
        assert_eq!(c.subnet, ["10.1.0.0/16", "fd00::/64"]);
        assert_eq!(c.ip_range, ["10.1.2.0/24"]);
        assert_eq!(c.aux_addresses.len(), 2);
        assert_eq!(
            c.aux_addresses[0],
            ("router".into(), "10.1.0.2".parse().unwrap())
        );
        assert!(c.ipv6 && c.internal && c.attachable);
        assert!(parse(&[
            "network",
            "create",
            "--aux-address",
            "x=nope",
            "--subnet",
            "10.0.0.0/8",
            "n"
        ])
        .is_err());
        assert!(parse(&["network", "create", "--ip-range", "10.0.0.0/24", "n"]).is_err());

        let NetworkCmd::Connect(c) = network(&[
            "connect",
            "--ip6",
            "fd00::5",
            "--alias",
            "web",
            "--alias",
            "www",
            "--mac-address",
            "02:42:ac:11:00:99",
            "net",
            "sb",
        ]) else {
            panic!()
        };
        assert_eq!(c.ip6, Some("fd00::5".parse().unwrap()));
        assert_eq!(c.aliases, ["web", "www"]);
        assert_eq!(c.mac_address.as_deref(), Some("02:42:ac:11:00:99"));

        let NetworkCmd::Ls(l) = network(&["ls", "--filter", "name=a", "-f", "label=x=y", "-q"])
        else {
            panic!()
        };
        assert_eq!(
            l.filters,
            [("name".into(), "a".into()), ("label".into(), "x=y".into())]
        );
        assert!(l.list.quiet);
        assert!(parse(&["network", "ls", "--filter", "nokey"]).is_err());

        let NetworkCmd::Prune(p) = network(&["prune", "-f", "--filter", "until=24h"]) else {
            panic!()
        };
        assert!(p.force);
        assert_eq!(p.filters, [("until".into(), "24h".into())]);
        let NetworkCmd::Prune(p) = network(&["prune"]) else {
            panic!()
        };
        assert!(!p.force && p.filters.is_empty());
    }

    #[test]
    fn completion_shells() {
        let Command::Completion(c) = parse(&["completion", "bash"]).unwrap().command else {
            panic!()
        };
        assert_eq!(c.shell, CompletionShell::Bash);
        let Command::Completion(c) = parse(&["completion", "zsh"]).unwrap().command else {
            panic!()
        };
        assert_eq!(c.shell, CompletionShell::Zsh);
        let Command::Completion(c) = parse(&["completion", "fish"]).unwrap().command else {
            panic!()
        };
        assert_eq!(c.shell, CompletionShell::Fish);
        assert!(parse(&["completion", "tcsh"]).is_err());
        let Command::Man(m) = parse(&["man", "/tmp/m"]).unwrap().command else {
            panic!()
        };
        assert_eq!(m.dir, PathBuf::from("/tmp/m"));
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
        let NetworkCmd::Ls(NetworkLsArgs { list: l, filters }) = network(&["ls"]) else {
            panic!()
        };
        assert!(filters.is_empty());
        assert!(!l.quiet && !l.no_trunc);
        assert_eq!(l.format, "table");
        let NetworkCmd::Ls(NetworkLsArgs { list: l, .. }) =
            network(&["list", "-q", "--no-trunc", "--format", "json"])
        else {
            panic!()
        };
        assert!(l.quiet && l.no_trunc);
        assert_eq!(l.format, "json");
        let NetworkCmd::Ls(NetworkLsArgs { list: l, .. }) =
            network(&["ls", "--format", "{{.Name}}"])
        else {
            panic!()
        };
        assert_eq!(l.format, "{{.Name}}");
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
        assert_eq!(i.format.as_deref(), Some("json"));
        let NetworkCmd::Inspect(i) = network(&["inspect", "-f", "{{.Id}}", "a"]) else {
            panic!()
        };
        assert_eq!(i.format.as_deref(), Some("{{.Id}}"));
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
        assert!(l.list.quiet && l.list.no_trunc && l.list.format == "json");
        let SandboxCmd::Ls(l) = sandbox(&["ps", "-f", "name=a", "--filter", "network=n"]) else {
            panic!()
        };
        assert_eq!(
            l.filters,
            [("name".into(), "a".into()), ("network".into(), "n".into())]
        );
        let SandboxCmd::Inspect(i) = sandbox(&["inspect", "a", "b"]) else {
            panic!()
        };
        assert_eq!(i.targets, ["a", "b"]);
        let SandboxCmd::Rm(r) = sandbox(&["rm", "a"]) else {
            panic!()
        };
        assert_eq!(r.targets, ["a"]);
        assert!(!r.force);
        let SandboxCmd::Rm(r) = sandbox(&["rm", "-f", "a", "b"]) else {
            panic!()
        };
        assert!(r.force && r.targets == ["a", "b"]);
        assert!(parse(&["sandbox", "create"]).is_err());
        assert!(parse(&["sandbox", "rm"]).is_err());
    }

    #[test]
    fn publish_specs() {
        let p = |s: &str| parse_publish(s).unwrap();
        assert_eq!(
            p("80"),
            Publish {
                host_ip: None,
                host_port: None,
                port: 80,
                proto: "tcp".into()
            }
        );
        assert_eq!(p("8080:80").host_port, Some(8080));
        assert_eq!(p("53:53/udp").proto, "udp");
        let full = p("127.0.0.1:8080:80/tcp");
        assert_eq!(full.host_ip, Some("127.0.0.1".parse().unwrap()));
        assert_eq!((full.host_port, full.port), (Some(8080), 80));
        let any = p("127.0.0.1::80");
        assert_eq!((any.host_ip.is_some(), any.host_port), (true, None));
        let v6 = p("[::1]:9000:90/udp");
        assert_eq!(v6.host_ip, Some("::1".parse().unwrap()));
        assert_eq!(
            (v6.host_port, v6.port, v6.proto.as_str()),
            (Some(9000), 90, "udp")
        );
        for bad in [
            "", "x", "0", "80/sctp", "1:2:3:4", "a:80", "70000:80", "bad::80", "80-81", "[::1:80",
            "[::1]80",
        ] {
            let e = parse_publish(bad).unwrap_err();
            assert!(e.contains("invalid publish spec"), "{bad}: {e}");
        }
        let SandboxCmd::Create(c) =
            sandbox(&["create", "-p", "8080:80", "--publish", "53/udp", "sb"])
        else {
            panic!()
        };
        assert_eq!(c.publish.len(), 2);
        assert!(parse(&["sandbox", "create", "-p", "nope", "sb"]).is_err());
    }

    #[test]
    fn run_and_port_args() {
        let cli = parse(&[
            "run",
            "--name",
            "r",
            "--network",
            "a",
            "--network",
            "b",
            "--ip",
            "10.0.0.5",
            "--alias",
            "x",
            "-p",
            "80",
            "--rm",
            "--",
            "ping",
            "-c1",
            "h",
        ])
        .unwrap();
        let Command::Run(r) = cli.command else {
            panic!()
        };
        assert_eq!(r.name.as_deref(), Some("r"));
        assert_eq!(r.networks, ["a", "b"]);
        assert_eq!(r.ip, Some("10.0.0.5".parse().unwrap()));
        assert_eq!(r.aliases, ["x"]);
        assert!(r.rm);
        assert_eq!(r.cmd, ["ping", "-c1", "h"]);
        let Command::Run(r) = parse(&["run", "true"]).unwrap().command else {
            panic!()
        };
        assert!(r.networks.is_empty() && !r.rm && r.cmd == ["true"]);
        assert!(
            parse(&["run", "--keep", "true"]).is_err(),
            "gone: keeping is the default"
        );
        assert!(parse(&["run"]).is_err());
        let Command::Port(p) = parse(&["port", "sb", "80/tcp"]).unwrap().command else {
            panic!()
        };
        assert_eq!(
            (p.sandbox.as_str(), p.port.as_deref()),
            ("sb", Some("80/tcp"))
        );
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
