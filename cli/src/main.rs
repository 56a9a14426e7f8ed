//! `tapnet`: the command-line client of `tapnetd`.
//!
//! It speaks the daemon's Docker-style HTTP API (see `docs/api.md`) over a unix
//! socket and follows `docker network` habits for flags and output (see
//! `docs/cli.md`). Modules:
//!
//! * [`args`]: the command line (clap derive).
//! * [`client`]: a tiny HTTP/1.1 client over a unix socket.
//! * [`commands`]: one module per command group; they print to the given writers.
//! * [`output`]: tables, id truncation and JSON printing.
#![forbid(unsafe_code)]

mod args;
mod client;
mod commands;
mod output;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = args::Cli::parse();
    commands::report(commands::run(cli))
}
