//! `tapnet`: the command-line client of `tapnetd`.
//!
//! It speaks the daemon's Docker-style HTTP API (see `docs/api.md`) over a unix
//! socket and follows `docker network` habits for flags and output (see
//! `docs/cli.md`). Modules:
//!
//! * [`args`]: the command line (clap derive).
//! * [`client`]: a tiny HTTP/1.1 client over a unix socket.
//! * [`commands`]: one module per command group; they print to the given writers.
//! * [`format`]: `--format` (Go templates, `table`, `json`).
//! * [`output`]: tables, id truncation and JSON printing.
//!
//! A usage error exits 125, as docker's do; see [`commands`] for the other codes.
#![forbid(unsafe_code)]

mod args;
mod client;
mod commands;
mod format;
mod output;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    // `TAPNET_COMPLETE=bash tapnet -- ...` is a shell asking for completions.
    commands::completion::complete_if_asked();
    let cli = match args::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(
                e.kind(),
                ErrorKind::MissingSubcommand | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                if let Some(help) = commands::help_of_unfinished(std::env::args_os()) {
                    print!("{help}");
                    return ExitCode::SUCCESS;
                }
            }
            let _ = e.print();
            return ExitCode::from(commands::usage_exit(&e));
        }
    };
    commands::report(commands::run(cli))
}
