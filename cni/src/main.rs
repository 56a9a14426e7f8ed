//! tapnet-cni: a CNI plugin (spec 1.0 and 1.1) that attaches a runtime's network
//! namespace to a tapnet network by asking `tapnetd` over its API socket.
//!
//! Protocol (the CNI spec): the runtime sets `CNI_COMMAND` (ADD, DEL, CHECK,
//! VERSION, STATUS, GC), `CNI_CONTAINERID`, `CNI_NETNS`, `CNI_IFNAME`, `CNI_ARGS`,
//! `CNI_PATH` and writes the network configuration on stdin. On success the plugin
//! exits 0 and prints the result (ADD, VERSION) or nothing (DEL, CHECK, STATUS, GC)
//! on stdout; on failure it prints the spec's error structure
//! (`{"cniVersion", "code", "msg", "details"}`) on stdout, a line on stderr, and
//! exits 1.
//!
//! Modules: [`config`] (inputs), [`ops`] (the operations against tapnetd),
//! [`result`] (the result JSON), [`error`] (codes). The HTTP client is the `tapnet`
//! CLI's (`cli/src/client.rs`, compiled into this binary too).

#[allow(dead_code)]
#[path = "../../cli/src/client.rs"]
mod client;
mod config;
mod error;
mod ops;
mod result;

use config::{Command, Env, NetConf, SUPPORTED_VERSIONS};
use error::{CniError, IO_FAILURE, OTHER};
use serde_json::{json, Value};
use std::io::{Read, Write};

fn main() {
    let mut input = Vec::new();
    let read = std::io::stdin().read_to_end(&mut input);
    let out = match read {
        Ok(_) => run(&input),
        Err(e) => Err(CniError::new(
            IO_FAILURE,
            "cannot read the network configuration",
            format!("reading stdin: {e}"),
        )),
    };
    let mut stdout = std::io::stdout().lock();
    match out {
        Ok(Some(v)) => {
            let _ = writeln!(stdout, "{v}");
        }
        Ok(None) => {}
        Err(e) => {
            eprintln!("tapnet-cni: {e}");
            let _ = writeln!(stdout, "{}", e.to_json(&config::version_of(&input)));
            let _ = stdout.flush();
            std::process::exit(1);
        }
    }
}

/// One invocation: what to print on success.
fn run(input: &[u8]) -> error::Result<Option<Value>> {
    let env = Env::from_vars(|k| std::env::var(k).ok())?;
    if env.command == Command::Version {
        return Ok(Some(json!({
            "cniVersion": config::version_of(input),
            "supportedVersions": SUPPORTED_VERSIONS,
        })));
    }
    let conf = NetConf::parse(input)?;
    let client = client::Client::from_host(&conf.socket).map_err(|e| {
        CniError::new(
            error::INVALID_CONFIG,
            "invalid network configuration",
            format!("socket: {e}"),
        )
    })?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CniError::new(OTHER, "cannot start", e.to_string()))?;
    rt.block_on(async {
        match env.command {
            Command::Add => ops::add(&env, &conf, &client).await.map(Some),
            Command::Del => ops::del(&env, &conf, &client).await.map(|()| None),
            Command::Check => ops::check(&env, &conf, &client).await.map(|()| None),
            Command::Status => ops::status(&conf, &client).await.map(|()| None),
            Command::Gc => ops::gc(&conf, &client).await.map(|removed| {
                for r in removed {
                    eprintln!("tapnet-cni: GC removed sandbox {r}");
                }
                None
            }),
            Command::Version => Ok(None),
        }
    })
}
