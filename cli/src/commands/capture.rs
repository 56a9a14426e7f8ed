//! `tapnet capture NET|SANDBOX [-w FILE] [-c COUNT] [--network NET]`: write a pcap
//! stream of a network's switch (every frame it handles) or of one sandbox's port
//! (what the sandbox sends and is sent) to a file or stdout, for `tcpdump -r` or
//! Wireshark.
//!
//! The target is a network or a sandbox of that exact name or id (a name that is both
//! is refused: give the id), else the one whose id starts with it. The daemon's stream (`GET /networks/{id}/capture` or
//! `GET /sandboxes/{id}/capture?network=`) is copied record by record: only whole pcap
//! records are written, so a capture stopped by a signal leaves a file that reads to its
//! last frame. `-c COUNT` stops after COUNT frames.

use crate::client::{seg, Client, ClientError};
use anyhow::Context;
use clap::Args;
use http_body_util::BodyExt;
use pcap_file::pcap::PcapParser;
use pcap_file::PcapError;
use std::io::{self, Write};
use std::path::PathBuf;

/// `tapnet capture`
#[derive(Debug, Args)]
pub struct CaptureArgs {
    /// The network (every frame its switch handles) or the sandbox (its port's frames).
    #[arg(value_name = "NET|SANDBOX")]
    pub target: String,
    /// Write the pcap stream to FILE (`-`: standard output, the default).
    #[arg(short = 'w', long = "write", value_name = "FILE")]
    pub write: Option<PathBuf>,
    /// Stop after COUNT frames.
    #[arg(short = 'c', long = "count", value_name = "COUNT")]
    pub count: Option<u64>,
    /// For a sandbox on several networks: the network whose port to capture.
    #[arg(long, value_name = "NET")]
    pub network: Option<String>,
}

/// How `GET base/target` matched: by full name or id, by id prefix only, or not at all
/// (404, or a prefix matching several: the daemon's message is kept for the error).
enum Match {
    Exact,
    Prefix,
    No(Option<String>),
}

async fn lookup(c: &Client, base: &str, target: &str) -> anyhow::Result<Match> {
    match c.get(&format!("{base}/{}", seg(target))).await {
        Ok((_, v)) => {
            let is = |k: &str| v[k].as_str() == Some(target);
            Ok(if is("Name") || is("Id") {
                Match::Exact
            } else {
                Match::Prefix
            })
        }
        Err(ClientError::Daemon { status, message }) if matches!(status.as_u16(), 400 | 404) => {
            Ok(Match::No((status.as_u16() == 400).then_some(message)))
        }
        Err(e) => Err(e.into()),
    }
}

/// The capture path for `a`: a network or sandbox of that exact name or id (both:
/// refused), else the one an id prefix names.
async fn capture_path(c: &Client, a: &CaptureArgs) -> anyhow::Result<String> {
    let t = seg(&a.target);
    let net = lookup(c, "/networks", &a.target).await?;
    let sb = lookup(c, "/sandboxes", &a.target).await?;
    let is_net = match (&net, &sb) {
        (Match::Exact, Match::Exact) | (Match::Prefix, Match::Prefix) => anyhow::bail!(
            "{} names both a network and a sandbox: give the full id of the one to capture",
            a.target
        ),
        (Match::Exact, _) | (Match::Prefix, Match::No(_)) => true,
        (_, Match::Exact) | (Match::No(_), Match::Prefix) => false,
        (Match::No(n), Match::No(s)) => match n.as_ref().or(s.as_ref()) {
            Some(msg) => anyhow::bail!("Error response from daemon: {msg}"),
            None => anyhow::bail!(
                "Error response from daemon: no network or sandbox named {}",
                a.target
            ),
        },
    };
    if is_net {
        if a.network.is_some() {
            anyhow::bail!(
                "--network is for a sandbox target; {} is a network",
                a.target
            );
        }
        return Ok(format!("/networks/{t}/capture"));
    }
    Ok(match &a.network {
        Some(n) => format!("/sandboxes/{t}/capture?network={}", seg(n)),
        None => format!("/sandboxes/{t}/capture"),
    })
}

/// Copies whole pcap records from the stream to `out`, counting them.
struct Copier {
    pending: Vec<u8>,
    parser: Option<PcapParser>,
    frames: u64,
    limit: Option<u64>,
}

impl Copier {
    /// Take `chunk`; write every complete part to `out`. False once the limit is reached.
    fn feed(&mut self, chunk: &[u8], out: &mut dyn Write) -> anyhow::Result<bool> {
        self.pending.extend_from_slice(chunk);
        let mut used = 0;
        loop {
            let rest = self.pending.get(used..).unwrap_or_default();
            let Some(parser) = &self.parser else {
                match PcapParser::new(rest) {
                    Ok((after, p)) => {
                        used += rest.len() - after.len();
                        self.parser = Some(p);
                        continue;
                    }
                    Err(PcapError::IncompleteBuffer) => break,
                    Err(e) => anyhow::bail!("the daemon sent no pcap stream: {e}"),
                }
            };
            if self.limit.is_some_and(|l| self.frames >= l) {
                break;
            }
            match parser.next_raw_packet(rest) {
                Ok((after, _)) => {
                    used += rest.len() - after.len();
                    self.frames += 1;
                }
                Err(PcapError::IncompleteBuffer) => break,
                Err(e) => anyhow::bail!("malformed pcap record from the daemon: {e}"),
            }
        }
        out.write_all(self.pending.get(..used).unwrap_or_default())?;
        out.flush()?;
        self.pending.drain(..used);
        Ok(self.limit.is_none_or(|l| self.frames < l))
    }
}

/// Run `tapnet capture`.
pub fn run(c: &Client, a: CaptureArgs) -> anyhow::Result<()> {
    let rt = super::runtime()?;
    rt.block_on(async {
        let path = capture_path(c, &a).await?;
        let mut body = c.get_stream(&path).await?;
        // The file is made only once the daemon has accepted the capture.
        let mut out: Box<dyn Write> = match &a.write {
            Some(p) if p.as_os_str() != "-" => Box::new(io::BufWriter::new(
                std::fs::File::create(p)
                    .with_context(|| format!("cannot write {}", p.display()))?,
            )),
            _ => Box::new(io::stdout().lock()),
        };
        let mut copier = Copier {
            pending: Vec::new(),
            parser: None,
            frames: 0,
            limit: a.count,
        };
        while let Some(frame) = body.frame().await {
            let frame =
                frame.map_err(|e| ClientError::Protocol(format!("reading the capture: {e}")))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if !copier.feed(&data, &mut *out)? {
                break;
            }
        }
        out.flush()?;
        Ok(())
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A pcap header (little-endian, microseconds) and `n` records of 3 bytes each.
    fn stream(n: usize) -> Vec<u8> {
        let mut v = Vec::new();
        for x in [0xa1b2_c3d4u32, 0x0004_0002, 0, 0, 262_144, 1] {
            v.extend_from_slice(&x.to_le_bytes());
        }
        for i in 0..n {
            for x in [1_700_000_000u32, i as u32, 3, 3] {
                v.extend_from_slice(&x.to_le_bytes());
            }
            v.extend_from_slice(&[i as u8; 3]);
        }
        v
    }

    #[test]
    fn writes_whole_records_and_stops_at_count() {
        let s = stream(5);
        // Byte by byte: only whole records come out.
        let mut out = Vec::new();
        let mut c = Copier {
            pending: Vec::new(),
            parser: None,
            frames: 0,
            limit: Some(3),
        };
        let mut more = true;
        for b in &s {
            more = c.feed(std::slice::from_ref(b), &mut out).unwrap();
            assert!(out.is_empty() || (out.len() - 24) % 19 == 0);
            if !more {
                break;
            }
        }
        assert!(!more);
        assert_eq!(c.frames, 3);
        assert_eq!(out, s[..24 + 3 * 19]);
    }

    #[test]
    fn refuses_what_is_not_pcap() {
        let mut c = Copier {
            pending: Vec::new(),
            parser: None,
            frames: 0,
            limit: None,
        };
        let e = c.feed(&[b'{'; 40], &mut Vec::new()).unwrap_err();
        assert!(e.to_string().contains("no pcap stream"), "{e}");
    }
}
