//! The commands: dispatch, the shared `inspect`/`rm` loops, and exit-code plumbing.
//!
//! Commands write to an [`Out`] (stdout/stderr in the binary, buffers in tests).
//! Errors that were already printed (e.g. one of several `rm` targets failed) are
//! returned as [`Exit`] so that `main` only sets the exit code. Exit codes are
//! docker's: 0 success, 1 an error (the daemon's, or a template's), 125 a usage
//! error (clap's, see [`usage_exit`]) or `tapnet run`'s own failure, 126/127 a
//! command that cannot run / is not found, else the command's own code.

pub mod capture;
pub mod completion;
pub mod exec;
pub mod man;
pub mod network;
pub mod run;
pub mod sandbox;
pub mod system;

use crate::args::{Cli, Command};
use crate::client::{seg, Client, ClientError};
use crate::format::{inspect_template, render_one};
use crate::output::pretty_json;
use std::fmt;
use std::io::{self, Write};
use std::process::ExitCode;

/// Exit with this code; whatever went wrong has already been printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit(pub u8);

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "exit status {}", self.0)
    }
}

impl std::error::Error for Exit {}

/// Where a command prints: results to `out`, per-item errors and warnings to `err`.
pub struct Out<'a> {
    /// Standard output.
    pub out: &'a mut dyn Write,
    /// Standard error.
    pub err: &'a mut dyn Write,
}

/// A current-thread tokio runtime: the CLI never needs more, and `exec` relies on
/// there being no other threads once it is dropped.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// Run a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    if let Command::Completion(a) = &cli.command {
        let exe = std::env::current_exe()?;
        let mut stdout = io::stdout().lock();
        completion::write_script(a.shell, &exe.to_string_lossy(), &mut stdout)?;
        stdout.flush()?;
        return Ok(());
    }
    if let Command::Man(a) = &cli.command {
        let (mut stdout, mut stderr) = (io::stdout().lock(), io::stderr().lock());
        return man::run(
            &a.dir,
            &mut Out {
                out: &mut stdout,
                err: &mut stderr,
            },
        );
    }
    let client = Client::from_host(&cli.host)?;
    let command = match cli.command {
        Command::Exec(args) => return exec::run(&client, args),
        Command::Run(args) => return run::run(&client, &cli.host, args),
        Command::Capture(args) => return capture::run(&client, args),
        other => other,
    };
    let rt = runtime()?;
    let mut stdout = io::stdout().lock();
    let mut stderr = io::stderr().lock();
    let mut o = Out {
        out: &mut stdout,
        err: &mut stderr,
    };
    let res = rt.block_on(async {
        match command {
            Command::Network(cmd) => network::run(&client, cmd, &mut o).await,
            Command::Sandbox(cmd) => sandbox::run(&client, cmd, &mut o).await,
            Command::Port(a) => sandbox::port(&client, &a, &mut o).await,
            Command::Version(a) => system::version(&client, &a, &mut o).await,
            Command::Info(a) => system::info(&client, &a, &mut o).await,
            Command::Events(a) => system::events(&client, &a, &mut o).await,
            Command::Exec(_)
            | Command::Run(_)
            | Command::Completion(_)
            | Command::Man(_)
            | Command::Capture(_) => Ok(()),
        }
    });
    o.out.flush()?;
    res
}

/// Turn a command's result into the process exit code, printing the error if any.
pub fn report(result: anyhow::Result<()>) -> ExitCode {
    let Err(e) = result else {
        return ExitCode::SUCCESS;
    };
    if let Some(Exit(code)) = e.downcast_ref::<Exit>() {
        return ExitCode::from(*code);
    }
    // `tapnet network ls | head -1`: the reader went away, nothing to report.
    if e.downcast_ref::<io::Error>()
        .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
    {
        return ExitCode::SUCCESS;
    }
    eprintln!("{e:#}");
    ExitCode::FAILURE
}

/// The usage-error exit code (docker's, for a flag it cannot parse).
pub const USAGE_EXIT: u8 = 125;

/// The exit code for a command line clap refused: 0 for `--help`/`--version` and
/// for a bare `tapnet`/`tapnet network` (which print the help, as docker's do), else
/// [`USAGE_EXIT`].
pub fn usage_exit(e: &clap::Error) -> u8 {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => 0,
        _ => USAGE_EXIT,
    }
}

/// The help of the command a line names but does not finish (`tapnet -H X`,
/// `tapnet network`): docker prints it and exits 0. `None` if `args` do not parse
/// that far.
pub fn help_of_unfinished(args: impl IntoIterator<Item = std::ffi::OsString>) -> Option<String> {
    use clap::CommandFactory;
    fn relax(cmd: clap::Command) -> clap::Command {
        let names: Vec<String> = cmd
            .get_subcommands()
            .map(|s| s.get_name().to_string())
            .collect();
        let mut cmd = cmd.subcommand_required(false).arg_required_else_help(false);
        for n in names {
            cmd = cmd.mut_subcommand(n, relax);
        }
        cmd
    }
    let matches = relax(crate::args::Cli::command())
        .try_get_matches_from(args)
        .ok()?;
    let mut cmd = crate::args::Cli::command();
    cmd.build();
    let mut m = &matches;
    while let Some((name, sub)) = m.subcommand() {
        cmd = cmd.find_subcommand(name)?.clone();
        m = sub;
    }
    Some(cmd.render_help().to_string())
}

/// `GET {base}/{target}` for each target; print the found objects as a pretty JSON
/// array (no `format`), a one-line JSON array (`json`, as docker's), or `format` run
/// on each (a Go template), and each failure to stderr. Fails with [`Exit`]`(1)` if any target failed.
pub async fn inspect_each(
    c: &Client,
    base: &str,
    targets: &[String],
    format: Option<&str>,
    o: &mut Out<'_>,
) -> anyhow::Result<()> {
    let template = match format {
        None | Some("") | Some("json") => None,
        Some(f) => Some(inspect_template(f)?),
    };
    let compact = format == Some("json");
    let mut found = Vec::with_capacity(targets.len());
    let mut failed = false;
    for t in targets {
        match c.get(&format!("{base}/{}", seg(t))).await {
            Ok((_, v)) => found.push(v),
            Err(e @ ClientError::Daemon { .. }) => {
                writeln!(o.err, "{e}")?;
                failed = true;
            }
            Err(e) => return Err(e.into()),
        }
    }
    match &template {
        None if compact => writeln!(o.out, "{}", serde_json::Value::Array(found))?,
        None => writeln!(o.out, "{}", pretty_json(&found))?,
        Some(t) => {
            for v in &found {
                o.out.write_all(render_one(t, v)?.as_bytes())?;
            }
        }
    }
    if failed {
        return Err(Exit(1).into());
    }
    Ok(())
}

/// `DELETE {base}/{target}{query}` for each target, printing each removed target as
/// given and each failure to stderr. Fails with [`Exit`]`(1)` if any target failed.
pub async fn remove_each(
    c: &Client,
    base: &str,
    targets: &[String],
    query: &str,
    o: &mut Out<'_>,
) -> anyhow::Result<()> {
    let mut failed = false;
    for t in targets {
        match c.delete(&format!("{base}/{}{query}", seg(t))).await {
            Ok(_) => writeln!(o.out, "{t}")?,
            Err(e @ ClientError::Daemon { .. }) => {
                writeln!(o.err, "{e}")?;
                failed = true;
            }
            Err(e) => return Err(e.into()),
        }
    }
    if failed {
        return Err(Exit(1).into());
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Captured output of one command run.
    #[derive(Default)]
    pub struct Captured {
        pub out: Vec<u8>,
        pub err: Vec<u8>,
    }

    impl Captured {
        pub fn out(&self) -> String {
            String::from_utf8(self.out.clone()).unwrap()
        }
        pub fn err(&self) -> String {
            String::from_utf8(self.err.clone()).unwrap()
        }
        pub fn term(&mut self) -> Out<'_> {
            Out {
                out: &mut self.out,
                err: &mut self.err,
            }
        }
    }

    /// The exit code `main` would use for this result.
    pub fn exit_code(r: &anyhow::Result<()>) -> Option<u8> {
        match r {
            Ok(()) => Some(0),
            Err(e) => e.downcast_ref::<Exit>().map(|x| x.0),
        }
    }

    #[test]
    fn usage_errors_exit_125_help_exits_0() {
        use crate::args::Cli;
        use clap::Parser;
        let code = |a: &[&str]| {
            usage_exit(
                &Cli::try_parse_from(std::iter::once("tapnet").chain(a.iter().copied()))
                    .unwrap_err(),
            )
        };
        assert_eq!(code(&["network", "ls", "--bogus"]), 125);
        assert_eq!(code(&["nope"]), 125);
        assert_eq!(code(&["network", "create"]), 125);
        assert_eq!(code(&["--help"]), 0);
        assert_eq!(code(&["network", "ls", "--help"]), 0);
        assert_eq!(code(&["--version"]), 0);
        assert_eq!(code(&[]), 0);
    }

    #[test]
    fn unfinished_lines_get_their_commands_help() {
        let help = |a: &[&str]| {
            help_of_unfinished(
                std::iter::once("tapnet")
                    .chain(a.iter().copied())
                    .map(std::ffi::OsString::from),
            )
        };
        let h = help(&["-H", "unix:///x"]).unwrap();
        assert!(h.contains("Usage: tapnet [OPTIONS] <COMMAND>"), "{h}");
        let h = help(&["-H", "unix:///x", "network"]).unwrap();
        assert!(
            h.contains("Usage: tapnet network [OPTIONS] <COMMAND>"),
            "{h}"
        );
        assert!(h.contains("connect"), "{h}");
        assert!(help(&["network", "--bogus"]).is_none());
    }

    #[test]
    fn report_maps_results_to_exit_codes() {
        assert_eq!(report(Ok(())), ExitCode::SUCCESS);
        assert_eq!(report(Err(Exit(127).into())), ExitCode::from(127));
        assert_eq!(report(Err(anyhow::anyhow!("x"))), ExitCode::FAILURE);
        let pipe = io::Error::from(io::ErrorKind::BrokenPipe);
        assert_eq!(report(Err(pipe.into())), ExitCode::SUCCESS);
    }
}
