//! `tapnet version` and `tapnet info`: the daemon's `GET /version` and `GET /info`
//! (see `docs/api.md`), printed as docker prints them or as JSON.
//!
//! `version` always prints the client block; if the daemon cannot be reached it
//! then fails with the connection error (as `docker version` does).

use super::Out;
use crate::args::{EventsArgs, SystemArgs, SystemFormat};
use crate::client::Client;
use crate::output::pretty_json;
use serde::Serialize;
use tapnet_types::api::{EventMessage, InfoResponse, VersionResponse};

/// The client half of `tapnet version`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct ClientVersion {
    version: &'static str,
    os: &'static str,
    arch: &'static str,
}

/// `tapnet version --format json`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct Versions<'a> {
    client: ClientVersion,
    server: Option<&'a VersionResponse>,
}

fn client_version() -> ClientVersion {
    ClientVersion {
        version: env!("CARGO_PKG_VERSION"),
        os: std::env::consts::OS,
        arch: match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            other => other,
        },
    }
}

/// `tapnet version`
pub async fn version(c: &Client, a: &SystemArgs, o: &mut Out<'_>) -> anyhow::Result<()> {
    let client = client_version();
    let server = c.get_as::<VersionResponse>("/version").await;
    match a.format {
        SystemFormat::Json => {
            let v = Versions {
                client,
                server: server.as_ref().ok(),
            };
            writeln!(o.out, "{}", pretty_json(&v))?;
        }
        SystemFormat::Text => {
            writeln!(o.out, "Client:")?;
            writeln!(o.out, " Version:           {}", client.version)?;
            writeln!(o.out, " OS/Arch:           {}/{}", client.os, client.arch)?;
            if let Ok(s) = &server {
                writeln!(o.out)?;
                writeln!(o.out, "Server: {}", s.platform.name)?;
                for comp in &s.components {
                    writeln!(o.out, " {}:", comp.name)?;
                    writeln!(o.out, "  Version:          {}", comp.version)?;
                    writeln!(
                        o.out,
                        "  API version:      {} (minimum version {})",
                        comp.details.api_version, s.min_api_version
                    )?;
                    writeln!(o.out, "  OS/Arch:          {}/{}", s.os, s.arch)?;
                }
            }
        }
    }
    server?;
    Ok(())
}

/// `tapnet info`
pub async fn info(c: &Client, a: &SystemArgs, o: &mut Out<'_>) -> anyhow::Result<()> {
    let i: InfoResponse = c.get_as("/info").await?;
    match a.format {
        SystemFormat::Json => writeln!(o.out, "{}", pretty_json(&i))?,
        SystemFormat::Text => o.out.write_all(info_text(&i).as_bytes())?,
    }
    Ok(())
}

/// `tapnet events`: one line per event until the daemon or the user ends it.
pub async fn events(c: &Client, a: &EventsArgs, o: &mut Out<'_>) -> anyhow::Result<()> {
    let path = super::network::with_filters("/events", &a.filters);
    let format = a.format;
    let out = &mut *o.out;
    c.get_lines(&path, |line| {
        if line.iter().all(u8::is_ascii_whitespace) {
            return Ok(());
        }
        match format {
            SystemFormat::Json => out.write_all(line)?,
            SystemFormat::Text => match serde_json::from_slice::<EventMessage>(line) {
                Ok(ev) => out.write_all(event_text(&ev).as_bytes())?,
                Err(_) => out.write_all(line)?,
            },
        }
        out.write_all(b"\n")?;
        out.flush()
    })
    .await
}

/// An event as `docker events` prints it:
/// `2026-11-30T20:11:07.123456789Z network create ID (name=web, type=bridge)`.
pub fn event_text(ev: &EventMessage) -> String {
    let attrs: Vec<String> = ev
        .actor
        .attributes
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    format!(
        "{} {} {} {} ({})",
        rfc3339_nanos(ev.time_nano),
        ev.kind,
        ev.action,
        ev.actor.id,
        attrs.join(", ")
    )
}

/// Nanoseconds since the epoch as RFC 3339 UTC with nanoseconds (docker's event
/// time); out of jiff's range (beyond year 9999) prints the raw number.
pub fn rfc3339_nanos(nanos: i64) -> String {
    match jiff::Timestamp::from_nanosecond(i128::from(nanos)) {
        Ok(t) => format!("{t:.9}"),
        Err(_) => nanos.to_string(),
    }
}

/// The human-readable `tapnet info`.
pub fn info_text(i: &InfoResponse) -> String {
    let or_none = |s: &str| {
        if s.is_empty() {
            "none".to_string()
        } else {
            s.to_string()
        }
    };
    let mut t = String::new();
    let mut line = |k: &str, v: String| t.push_str(&format!(" {k}: {v}\n"));
    line("Server Version", i.server_version.clone());
    line("Networks", i.tapnet_networks.to_string());
    line("Sandboxes", i.containers.to_string());
    line("Network Plugins", i.plugins.network.join(" "));
    line("Cluster Store", or_none(&i.tapnet_cluster_store));
    line("Cluster Advertise", or_none(&i.tapnet_cluster_advertise));
    line("Data Root", i.docker_root_dir.clone());
    line("Exec Root", i.tapnet_exec_root.clone());
    line(
        "Datapath",
        format!(
            "{} workers at nice {}{}, tap I/O {} ({}), {} queue(s) per tap, UDP merging {}, gateways {}",
            i.tapnet_datapath_workers,
            i.tapnet_worker_nice,
            match i.tapnet_worker_nice_auto.as_str() {
                "on" => " (auto)",
                "unavailable" => " (auto unavailable)",
                _ => "",
            },
            i.tapnet_tap_io_path,
            i.tapnet_tap_io,
            i.tapnet_tap_queues,
            i.tapnet_tap_udp_merge,
            i.tapnet_gateway
        ),
    );
    line("Kernel Version", i.kernel_version.clone());
    line("Operating System", i.operating_system.clone());
    line("OSType", i.os_type.clone());
    line("Architecture", i.architecture.clone());
    line("CPUs", i.ncpu.to_string());
    line("Total Memory", human_bytes(i.mem_total));
    line("Name", i.name.clone());
    line("ID", i.id.clone());
    format!("Server:\n{t}")
}

/// Bytes in binary units with two decimals (`7.763GiB`, as docker prints).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n}B")
    } else {
        format!("{v:.3}{}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn rfc3339_from_nanos() {
        assert_eq!(rfc3339_nanos(0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(
            rfc3339_nanos(951_782_400_000_000_001),
            "2000-02-29T00:00:00.000000001Z"
        );
        assert_eq!(
            rfc3339_nanos(1_796_069_467_123_456_789),
            "2026-11-30T20:11:07.123456789Z"
        );
    }

    #[test]
    fn event_text_like_docker() {
        let ev: EventMessage = serde_json::from_str(
            r#"{"Type":"network","Action":"create","Actor":{"ID":"abc","Attributes":{"name":"web","type":"bridge"}},"scope":"local","time":0,"timeNano":5}"#,
        )
        .unwrap();
        assert_eq!(
            event_text(&ev),
            "1970-01-01T00:00:00.000000005Z network create abc (name=web, type=bridge)"
        );
    }

    #[test]
    fn human_bytes_in_binary_units() {
        assert_eq!(human_bytes(0), "0B");
        assert_eq!(human_bytes(1023), "1023B");
        assert_eq!(human_bytes(1024), "1.000KiB");
        assert_eq!(
            human_bytes(8 * 1024 * 1024 * 1024 + 512 * 1024 * 1024),
            "8.500GiB"
        );
    }

    #[test]
    fn info_text_shows_counts_and_none_for_unset_cluster() {
        let i = InfoResponse {
            server_version: "9.9.9".into(),
            tapnet_networks: 4,
            containers: 2,
            tapnet_datapath_workers: 2,
            tapnet_tap_io: "rw".into(),
            tapnet_tap_io_path: "rw".into(),
            tapnet_tap_queues: 1,
            tapnet_tap_udp_merge: "on".into(),
            tapnet_gateway: "inline".into(),
            ..InfoResponse::default()
        };
        let t = info_text(&i);
        assert!(t.starts_with("Server:\n"), "{t}");
        assert!(t.contains(" Server Version: 9.9.9\n"), "{t}");
        assert!(t.contains(" Networks: 4\n"), "{t}");
        assert!(t.contains(" Sandboxes: 2\n"), "{t}");
        assert!(t.contains(" Cluster Store: none\n"), "{t}");
        assert!(
            t.contains(
                " Datapath: 2 workers at nice 0, tap I/O rw (rw), 1 queue(s) per tap, UDP merging on, gateways inline\n"
            ),
            "{t}"
        );
    }
}
