//! The one-read-one-write forwarder: the baseline of `benches/compare.sh`.
//!
//! `rwfwd NETNS_A IPV4_A/LEN NETNS_B IPV4_B/LEN [MTU]` creates a tap named `eth0` in each
//! of the two network namespaces (paths such as `/run/netns/f1`), exactly as tapnet
//! creates a sandbox's tap (`tapnet_sandbox::tap::Tap::create`: `IFF_VNET_HDR`, offloads
//! CSUM|TSO4|TSO6 and USO where the kernel has them, txqueuelen 10000), gives each the
//! address, brings it up, prints `ready` on stdout and then forwards frames between the
//! two taps, one thread per direction: one blocking `read` and one `write` per frame,
//! the 10-byte virtio-net header and any GSO super-frame passed through untouched.
//! Nothing else (no switching, no parsing, no batching): what it reaches is the limit of
//! the one-syscall-per-frame I/O model that tapnet's datapath started from.
//!
//! `--extra-copies N` (after the MTU, which must then be given) is a probe for
//! `benches/tcp_bound.sh`: each frame is also copied N times in user space (into a
//! scratch buffer, `memcpy`-sized like the kernel's own copies) before it is written, to
//! price one copy of every byte in the forwarder's thread. Without it (or with 0) the
//! forwarder is exactly the baseline above.
//!
//! `--queues N` (default 1, also after the MTU; the flags go in any order) makes both
//! taps multi-queue (`tapnet_sandbox::tap::create_down_queues`, then configured as
//! above) and forwards queue `k` of tap A to queue `k` of tap B and back, two threads per
//! queue pair (one per direction, the same one-read-one-write loop): 2N threads. The
//! kernel reads a flow out of the queue its flow hash picks; once its frames have been
//! written to queue `k` of the other tap, that tap reads the flow's replies out of queue
//! `k` too (tun's flow table), so each flow stays on one queue pair. `--queues 1` is the
//! single-queue device (no `IFF_MULTI_QUEUE`), configured by the same code as without
//! the flag.
//!
//! It runs until killed. The taps are persistent devices inside the two namespaces: they
//! go with the namespaces (the bench script's private namespaces are discarded on exit).
#![allow(missing_docs)]

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use tapnet_sandbox::iface;
use tapnet_sandbox::netlink::Handle;
use tapnet_sandbox::netns::Netns;
use tapnet_sandbox::tap::{create_down_queues, Tap, TapConfig, MAX_QUEUES};

/// Largest frame a tap hands out with TSO on: vnet header + 64 KiB super-frame.
const BUF: usize = 10 + 65_536 + 14 + 64;

fn parse_cidr(s: &str) -> Result<(Ipv4Addr, u8), String> {
    let (ip, len) = s
        .split_once('/')
        .ok_or_else(|| format!("{s}: expected IPV4/LEN"))?;
    let ip: Ipv4Addr = ip.parse().map_err(|e| format!("{s}: {e}"))?;
    let len: u8 = len.parse().map_err(|e| format!("{s}: {e}"))?;
    if len > 32 {
        return Err(format!("{s}: prefix length above 32"));
    }
    Ok((ip, len))
}

/// The flags after the MTU.
#[derive(Debug, PartialEq, Eq)]
struct Flags {
    /// `--extra-copies N` (default 0).
    extra_copies: u32,
    /// `--queues N` (default 1).
    queues: usize,
}

/// The flags after the MTU: `--extra-copies N`, `--queues N`, each at most once, in any
/// order; anything else is refused.
fn parse_flags(flags: &[String]) -> Result<Flags, String> {
    let mut out = Flags {
        extra_copies: 0,
        queues: 1,
    };
    let (mut copies_seen, mut queues_seen) = (false, false);
    let mut rest = flags;
    while !rest.is_empty() {
        match rest {
            [f, n, tail @ ..] if f == "--extra-copies" && !copies_seen => {
                out.extra_copies = n.parse().map_err(|e| format!("--extra-copies {n}: {e}"))?;
                copies_seen = true;
                rest = tail;
            }
            [f, n, tail @ ..] if f == "--queues" && !queues_seen => {
                out.queues = n.parse().map_err(|e| format!("--queues {n}: {e}"))?;
                if !(1..=MAX_QUEUES).contains(&out.queues) {
                    return Err(format!("--queues {n}: 1 to {MAX_QUEUES}"));
                }
                queues_seen = true;
                rest = tail;
            }
            [f, ..] => {
                return Err(format!(
                "{f}: unknown, repeated or incomplete flag (known: --extra-copies N, --queues N)"
            ))
            }
            [] => break,
        }
    }
    Ok(out)
}

/// Make the tap `eth0` in `ns` with `queues` queues (one is the single-queue device)
/// and configure it as `Tap::create` would; every queue's fd is made blocking.
fn make_taps(
    ns: &str,
    cidr: (Ipv4Addr, u8),
    mac_last: u8,
    mtu: u32,
    queues: usize,
) -> Result<Vec<Tap>, String> {
    let netns = Netns::open(Path::new(ns)).map_err(|e| e.to_string())?;
    let cfg = TapConfig {
        name: "eth0".into(),
        mac: [0x02, 0x52, 0x57, 0x46, 0x57, mac_last],
        mtu,
        txqueuelen: 10_000,
        ipv4: Some(cidr),
        ..TapConfig::default()
    };
    let taps =
        create_down_queues(&netns, &cfg.name, queues).map_err(|e| format!("tap in {ns}: {e}"))?;
    let spec = cfg.spec();
    netns
        .run(|| -> tapnet_sandbox::Result<_> {
            let mut nl = Handle::new()?;
            let link = nl
                .link(&cfg.name)?
                .ok_or_else(|| tapnet_sandbox::Error::Invalid(format!("{} vanished", cfg.name)))?;
            iface::configure(&mut nl, &link, &spec)
        })
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("configure tap in {ns}: {e}"))?;
    for tap in &taps {
        // Blocking reads: the thread sleeps in read(2) until a frame is there.
        let fd = tap.as_raw_fd();
        // SAFETY: F_GETFL/F_SETFL take and return plain integers; `fd` is the tap's open
        // fd, which `tap` keeps open for the whole call.
        let rc = unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFL);
            if flags < 0 {
                flags
            } else {
                libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK)
            }
        };
        if rc < 0 {
            return Err(format!(
                "fcntl on tap in {ns}: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(taps)
}

/// Forward every frame read from `from` to `to`, forever (until an I/O error), copying
/// each one `extra_copies` more times in user space first (0: the plain baseline).
fn pump(from: &Tap, to: &Tap, extra_copies: u32) -> std::io::Error {
    let mut buf = vec![0u8; BUF];
    let mut scratch = vec![0u8; if extra_copies > 0 { BUF } else { 0 }];
    loop {
        let n = match from.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return e,
        };
        // A full queue on the other side drops the frame, as a switch would.
        if let Some(frame) = buf.get(..n) {
            for _ in 0..extra_copies {
                if let Some(dst) = scratch.get_mut(..n) {
                    dst.copy_from_slice(frame);
                }
                // Keep the copy: nothing reads `scratch`, so the optimiser could drop it.
                std::hint::black_box(&mut scratch);
            }
            let _ = to.write(frame);
        }
    }
}

fn run(args: &[String]) -> Result<(), String> {
    let [ns_a, ip_a, ns_b, ip_b, rest @ ..] = args else {
        return Err(
            "usage: rwfwd NETNS_A IPV4_A/LEN NETNS_B IPV4_B/LEN [MTU [--extra-copies N] [--queues N]]"
                .into(),
        );
    };
    let mtu = match rest.first() {
        Some(m) => m.parse().map_err(|e| format!("MTU {m}: {e}"))?,
        None => 1500,
    };
    let flags = parse_flags(rest.get(1..).unwrap_or_default())?;
    let a = make_taps(ns_a, parse_cidr(ip_a)?, 1, mtu, flags.queues)?;
    let b = make_taps(ns_b, parse_cidr(ip_b)?, 2, mtu, flags.queues)?;
    println!("ready");
    let copies = flags.extra_copies;
    let pairs: Vec<(Arc<Tap>, Arc<Tap>)> = a
        .into_iter()
        .zip(b)
        .map(|(a, b)| (Arc::new(a), Arc::new(b)))
        .collect();
    let mut threads = Vec::new();
    for (a, b) in &pairs {
        for (from, to) in [(a, b), (b, a)] {
            let (from, to) = (Arc::clone(from), Arc::clone(to));
            threads.push(std::thread::spawn(move || pump(&from, &to, copies)));
        }
    }
    // The first thread to fail ends the forwarder (the others stay blocked in read).
    let err = threads
        .into_iter()
        .next()
        .map(|t| t.join())
        .and_then(Result::ok)
        .map_or_else(
            || "a forwarding thread panicked".to_string(),
            |e| e.to_string(),
        );
    Err(format!("tap read: {err}"))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rwfwd: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_parses_and_refuses_bad_input() {
        assert_eq!(
            parse_cidr("10.0.0.1/24"),
            Ok((Ipv4Addr::new(10, 0, 0, 1), 24))
        );
        assert!(parse_cidr("10.0.0.1").is_err());
        assert!(parse_cidr("10.0.0.1/33").is_err());
        assert!(parse_cidr("x/24").is_err());
    }

    #[test]
    fn flags_parse_and_refuse_bad_input() {
        let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let f = |extra_copies, queues| {
            Ok(Flags {
                extra_copies,
                queues,
            })
        };
        assert_eq!(parse_flags(&v(&[])), f(0, 1));
        assert_eq!(parse_flags(&v(&["--extra-copies", "2"])), f(2, 1));
        assert_eq!(parse_flags(&v(&["--queues", "4"])), f(0, 4));
        assert_eq!(
            parse_flags(&v(&["--queues", "2", "--extra-copies", "1"])),
            f(1, 2)
        );
        assert!(parse_flags(&v(&["--queues", "0"])).is_err());
        assert!(parse_flags(&v(&["--queues", "257"])).is_err());
        assert!(parse_flags(&v(&["--queues", "2", "--queues", "2"])).is_err());
        assert!(parse_flags(&v(&["--queues"])).is_err());
        assert!(parse_flags(&v(&["--extra-copies"])).is_err());
        assert!(parse_flags(&v(&["--extra-copies", "x"])).is_err());
        assert!(parse_flags(&v(&["--copies", "1"])).is_err());
        assert!(parse_flags(&v(&["--extra-copies", "1", "junk"])).is_err());
    }
}
