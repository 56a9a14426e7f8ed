//! Privileged tests of tapnet-sandbox.
//!
//! Each test re-executes this binary, filtered to exactly itself, inside fresh
//! `unshare -Urnm --propagation private` namespaces; the inner run (marked by
//! `TAPNET_SANDBOX_IN_NS`) mounts a tmpfs on a fresh directory for the netns bind
//! mounts. iproute2 is used only to *observe* what the crate did.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::Value;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tapnet_sandbox::netlink::Handle;
use tapnet_sandbox::netns::{Netns, NetnsGuard};
use tapnet_sandbox::tap::{link_names, next_free_name, Tap, TapConfig, VNET_HDR_LEN};
use tapnet_sandbox::Error;

const INNER_ENV: &str = "TAPNET_SANDBOX_IN_NS";

/// A tmpfs on a fresh directory, unmounted and removed on drop.
struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("tapnet-sandbox-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        nix::mount::mount(
            Some("tmpfs"),
            &dir,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some("size=16m"),
        )
        .expect("mount tmpfs on scratch dir");
        Scratch { dir }
    }
    fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.dir, nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Run `body` inside fresh user+net+mount namespaces (re-exec of this test binary).
fn in_ns(name: &str, body: impl FnOnce(&Scratch)) {
    if std::env::var(INNER_ENV).as_deref() == Ok(name) {
        let scratch = Scratch::new(name);
        body(&scratch);
        return;
    }
    let exe = std::env::current_exe().expect("current test executable");
    let out = Command::new("unshare")
        .args(["-Urnm", "--propagation", "private"])
        .arg(&exe)
        .args(["--exact", name, "--nocapture", "--test-threads", "1"])
        .env(INNER_ENV, name)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run unshare(1): {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "test {name} failed inside its namespace:\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );
    assert!(
        stdout.contains("1 passed"),
        "test {name}: the inner run did not execute the test:\n{stdout}\n{stderr}"
    );
}

/// `nsenter --net=PATH ARGS...`, asserting success; returns stdout.
fn nsenter(ns: &Path, args: &[&str]) -> String {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", ns.display()))
        .args(args)
        .output()
        .expect("run nsenter");
    assert!(
        out.status.success(),
        "nsenter {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ip_json(ns: &Path, args: &[&str]) -> Value {
    let mut full = vec!["ip", "-j"];
    full.extend_from_slice(args);
    serde_json::from_str(&nsenter(ns, &full)).expect("ip -j output is JSON")
}

fn ino(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).expect("stat").ino()
}

fn cfg(name: &str, last: u8) -> TapConfig {
    TapConfig {
        name: name.to_string(),
        mac: [0x02, 0, 0, 0, 0, last],
        mtu: 1500,
        txqueuelen: 10000,
        ipv4: Some((Ipv4Addr::new(10, 0, 0, last), 24)),
        gateway_v4: Some(Ipv4Addr::new(10, 0, 0, 1)),
        ..TapConfig::default()
    }
}

/// Read frames from `tap` until `pred` accepts one or `timeout` passes.
fn read_until(tap: &Tap, timeout: Duration, mut pred: impl FnMut(&[u8]) -> bool) -> Vec<u8> {
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; 65536 + VNET_HDR_LEN];
    while Instant::now() < deadline {
        match tap.read(&mut buf) {
            Ok(n) => {
                if pred(&buf[..n]) {
                    return buf[..n].to_vec();
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => panic!("tap read: {e}"),
        }
    }
    panic!("no matching frame within {timeout:?}");
}

/// Is `frame` (vnet header + Ethernet) an ARP request for `target`?
fn is_arp_request_for(frame: &[u8], target: Ipv4Addr) -> bool {
    let eth = &frame[VNET_HDR_LEN..];
    eth.len() >= 42
        && eth[12..14] == [0x08, 0x06]
        && eth[20..22] == [0, 1]
        && eth[38..42] == target.octets()
}

#[test]
fn netns_create_open_destroy() {
    in_ns("netns_create_open_destroy", |s| {
        let path = s.path("netns/deeper/a");
        let ns = Netns::create(&path).expect("create netns");
        assert_eq!(ns.path(), path);
        // A fresh namespace has only lo, and it is not ours.
        assert_eq!(link_names(&ns).expect("links"), vec!["lo".to_string()]);
        assert_ne!(ino(&path), ino(Path::new("/proc/self/ns/net")));
        // Re-opening by path gives the same namespace.
        let again = Netns::open(&path).expect("open bind mount");
        assert_eq!(ino(again.path()), ino(&path));
        // Creating over an existing path fails and leaves it alone.
        let err = Netns::create(&path).expect_err("create over existing path");
        assert!(err.to_string().contains("File exists"), "{err}");
        Netns::open(&path).expect("still a netns after failed create");
        drop((ns, again));
        Netns::destroy(&path).expect("destroy");
        assert!(!path.exists());
        Netns::destroy(&path).expect("destroy missing is Ok");
        // A plain file (not a mount) is just removed.
        let plain = s.path("plain");
        std::fs::write(&plain, b"").expect("write plain file");
        Netns::destroy(&plain).expect("destroy plain file");
        assert!(!plain.exists());
    });
}

#[test]
fn netns_open_proc_and_reject_others() {
    in_ns("netns_open_proc_and_reject_others", |s| {
        let tid = nix::unistd::gettid();
        let p = PathBuf::from(format!("/proc/self/task/{tid}/ns/net"));
        let ns = Netns::open(&p).expect("open /proc/self/task/TID/ns/net");
        assert_eq!(ns.path(), p);
        assert_eq!(link_names(&ns).expect("links"), vec!["lo".to_string()]);

        for bad in [PathBuf::from("/proc/self/ns/user"), s.path("regular")] {
            if !bad.exists() {
                std::fs::write(&bad, b"x").expect("write regular file");
            }
            let err = Netns::open(&bad).expect_err("not a netns");
            assert!(matches!(err, Error::Invalid(_)), "{err:?}");
            assert_eq!(
                err.to_string(),
                format!("not a network namespace: {}", bad.display())
            );
        }
        // A FIFO is refused at once (opening it would block until a writer came).
        let fifo = s.path("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
        let err = Netns::open(&fifo).expect_err("a FIFO");
        assert!(matches!(err, Error::Invalid(_)), "{err:?}");
        assert_eq!(
            err.to_string(),
            format!("not a network namespace: {} is a FIFO", fifo.display())
        );
        let err = Netns::open(&s.path("missing")).expect_err("missing path");
        assert!(matches!(err, Error::Os { .. }), "{err:?}");
    });
}

#[test]
fn run_and_guard_return_to_original_namespace() {
    in_ns("run_and_guard_return_to_original_namespace", |s| {
        let path = s.path("ns");
        let ns = Netns::create(&path).expect("create");
        let path_clone = path.clone();
        let me = Path::new("/proc/thread-self/ns/net");
        let before = ino(me);
        let inside = ns.run(|| ino(me)).expect("run");
        assert_eq!(inside, ino(&path));
        assert_ne!(inside, before);
        assert_eq!(ino(me), before, "run must not move the caller");
        {
            let _g = NetnsGuard::enter(&ns).expect("enter");
            assert_eq!(ino(me), ino(&path));
        }
        assert_eq!(ino(me), before, "guard must return on drop");
        // enter_for_exec moves the calling thread for good (here a throwaway thread).
        let moved = std::thread::spawn(move || {
            tapnet_sandbox::netns::enter_for_exec(&path_clone).expect("enter_for_exec");
            ino(Path::new("/proc/thread-self/ns/net"))
        })
        .join()
        .expect("join");
        assert_eq!(moved, ino(&path));
        assert_eq!(ino(me), before);
        // A panic inside run propagates.
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _ = ns.run(|| panic!("boom"));
        }));
        assert!(r.is_err());
        assert_eq!(ino(me), before);
        drop(ns);
        Netns::destroy(&path).expect("destroy");
    });
}

#[test]
fn tap_create_configures_everything() {
    in_ns("tap_create_configures_everything", |s| {
        let path = s.path("ns");
        let ns = Netns::create(&path).expect("create");
        let mut c = cfg("eth0", 2);
        c.mtu = 1400;
        let tap = Tap::create(&ns, &c).expect("create tap");
        assert_eq!(tap.name(), "eth0");
        let base = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6;
        assert_eq!(tap.offloads() & base, base);
        eprintln!("offloads: {:#x}", tap.offloads());

        let links = ip_json(&path, &["-d", "link", "show", "eth0"]);
        let l = &links[0];
        assert_eq!(l["ifindex"].as_u64(), Some(u64::from(tap.ifindex())));
        assert_eq!(l["address"], "02:00:00:00:00:02");
        assert_eq!(l["mtu"], 1400);
        assert_eq!(l["txqlen"], 10000);
        let flags: Vec<&str> = l["flags"]
            .as_array()
            .expect("flags")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert!(flags.contains(&"UP"), "{flags:?}");
        let tun = &l["linkinfo"]["info_data"];
        assert_eq!(tun["type"], "tap", "{l}");
        assert_eq!(tun["pi"], false, "{l}");
        assert_eq!(tun["vnet_hdr"], true, "{l}");
        assert_eq!(tun["persist"], true, "{l}");

        let addrs = ip_json(&path, &["-4", "addr", "show", "eth0"]);
        let a = &addrs[0]["addr_info"][0];
        assert_eq!(a["local"], "10.0.0.2");
        assert_eq!(a["prefixlen"], 24);
        assert_eq!(a["broadcast"], "10.0.0.255");

        let lo = ip_json(&path, &["link", "show", "lo"]);
        assert!(lo[0]["flags"].to_string().contains("\"UP\""), "{lo}");

        let routes = ip_json(&path, &["-4", "route", "show", "default"]);
        assert_eq!(routes[0]["gateway"], "10.0.0.1", "{routes}");
        assert_eq!(routes[0]["dev"], "eth0", "{routes}");

        // Our own netlink view agrees.
        let nl_view = ns
            .run(|| -> tapnet_sandbox::Result<_> {
                let mut h = Handle::new()?;
                Ok((
                    h.links()?,
                    h.addresses_v4(tap.ifindex())?,
                    h.has_default_route_v4()?,
                ))
            })
            .expect("run")
            .expect("netlink");
        let eth0 = nl_view.0.iter().find(|l| l.name == "eth0").expect("eth0");
        assert!(eth0.up);
        assert_eq!(eth0.mtu, Some(1400));
        assert_eq!(eth0.txqueuelen, Some(10000));
        assert_eq!(eth0.mac.as_deref(), Some(&[2u8, 0, 0, 0, 0, 2][..]));
        assert_eq!(nl_view.1, vec![(Ipv4Addr::new(10, 0, 0, 2), 24)]);
        assert!(nl_view.2);

        // IPv6 addresses can be added too.
        let v6: std::net::Ipv6Addr = "fd00::2".parse().expect("v6");
        ns.run(|| Handle::new()?.add_address_v6(tap.ifindex(), v6, 64))
            .expect("run")
            .expect("add v6");
        let addrs6 = ip_json(&path, &["-6", "addr", "show", "eth0"]);
        assert!(addrs6.to_string().contains("\"fd00::2\""), "{addrs6}");

        // A second tap with a gateway does not fail on the existing default route.
        let mut c1 = cfg("eth1", 2);
        c1.ipv4 = Some((Ipv4Addr::new(10, 1, 0, 2), 24));
        c1.gateway_v4 = Some(Ipv4Addr::new(10, 1, 0, 1));
        let tap1 = Tap::create(&ns, &c1).expect("second tap");
        let routes = ip_json(&path, &["-4", "route", "show", "default"]);
        assert_eq!(routes.as_array().map(Vec::len), Some(1), "{routes}");
        assert_eq!(next_free_name(&ns, "eth").expect("next"), "eth2");
        assert_eq!(next_free_name(&ns, "net").expect("next"), "net0");
        tap1.destroy().expect("destroy eth1");
        assert_eq!(next_free_name(&ns, "eth").expect("next"), "eth1");
    });
}

#[test]
fn tap_receives_arp_for_gateway() {
    in_ns("tap_receives_arp_for_gateway", |s| {
        let path = s.path("ns");
        let ns = Netns::create(&path).expect("create");
        let tap = Tap::create(&ns, &cfg("eth0", 2)).expect("create tap");
        let mut ping = Command::new("nsenter")
            .arg(format!("--net={}", path.display()))
            .args(["ping", "-c1", "-W1", "10.0.0.1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn ping");
        // Read on this thread (not in the namespace): the fd works anywhere.
        let gw = Ipv4Addr::new(10, 0, 0, 1);
        let frame = read_until(&tap, Duration::from_secs(3), |f| is_arp_request_for(f, gw));
        let eth = &frame[VNET_HDR_LEN..];
        assert_eq!(eth[0..6], [0xff; 6]);
        assert_eq!(eth[6..12], [2, 0, 0, 0, 0, 2]);
        assert_eq!(eth[28..32], [10, 0, 0, 2]);
        let _ = ping.wait();
    });
}

#[test]
fn two_taps_relay_a_ping() {
    in_ns("two_taps_relay_a_ping", |s| {
        let (pa, pb) = (s.path("a"), s.path("b"));
        let (na, nb) = (
            Netns::create(&pa).expect("a"),
            Netns::create(&pb).expect("b"),
        );
        let ta = Tap::create(&na, &cfg("eth0", 2)).expect("tap a");
        let tb = Tap::create(&nb, &cfg("eth0", 3)).expect("tap b");
        let mut ping = Command::new("nsenter")
            .arg(format!("--net={}", pa.display()))
            .args(["ping", "-c1", "-W3", "10.0.0.3"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ping");
        // A two-port "switch": relay every frame (vnet header included) both ways.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut buf = vec![0u8; 65536 + VNET_HDR_LEN];
        let mut relayed = 0usize;
        let status = loop {
            let mut idle = true;
            for (from, to) in [(&ta, &tb), (&tb, &ta)] {
                match from.read(&mut buf) {
                    Ok(n) => {
                        idle = false;
                        assert_eq!(to.write(&buf[..n]).expect("tap write"), n);
                        relayed += 1;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => panic!("tap read: {e}"),
                }
            }
            if let Some(st) = ping.try_wait().expect("wait ping") {
                break st;
            }
            assert!(Instant::now() < deadline, "ping did not finish");
            if idle {
                std::thread::sleep(Duration::from_millis(2));
            }
        };
        let out = ping.wait_with_output().expect("ping output");
        assert!(
            status.success(),
            "ping through the relay failed after {relayed} frames: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        // ARP request, ARP reply, echo request, echo reply at least.
        assert!(relayed >= 4, "{relayed}");
    });
}

#[test]
fn tap_destroy_and_reopen() {
    in_ns("tap_destroy_and_reopen", |s| {
        let path = s.path("ns");
        let ns = Netns::create(&path).expect("create");
        let tap = Tap::create(&ns, &cfg("eth0", 2)).expect("create tap");
        let index = tap.ifindex();

        // Reattaching while the first fd is attached is refused (single queue).
        let err = Tap::reopen(&ns, "eth0").expect_err("reopen while attached");
        eprintln!("expected error: {err}");
        assert!(err.to_string().contains("TUNSETIFF eth0"), "{err}");

        // Dropping the fd keeps the (persistent) device; reopen attaches again.
        drop(tap);
        assert!(link_names(&ns)
            .expect("links")
            .contains(&"eth0".to_string()));
        let tap = Tap::reopen(&ns, "eth0").expect("reopen");
        assert_eq!(tap.ifindex(), index);
        assert_eq!(tap.name(), "eth0");
        let tun = &ip_json(&path, &["-d", "link", "show", "eth0"])[0]["linkinfo"]["info_data"];
        assert_eq!(tun["vnet_hdr"], true, "{tun}");
        // The reopened fd carries traffic.
        let mut ping = Command::new("nsenter")
            .arg(format!("--net={}", path.display()))
            .args(["ping", "-c1", "-W1", "10.0.0.1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn ping");
        read_until(&tap, Duration::from_secs(3), |f| {
            is_arp_request_for(f, Ipv4Addr::new(10, 0, 0, 1))
        });
        let _ = ping.wait();

        // Destroy removes the device.
        tap.destroy().expect("destroy");
        assert_eq!(link_names(&ns).expect("links"), vec!["lo".to_string()]);

        // Reopening something that does not exist is a clear error.
        let err = Tap::reopen(&ns, "eth0").expect_err("reopen missing");
        assert!(err.to_string().contains("no interface eth0"), "{err}");
    });
}

#[test]
fn tap_create_failures_leave_nothing() {
    in_ns("tap_create_failures_leave_nothing", |s| {
        let path = s.path("ns");
        let ns = Netns::create(&path).expect("create");
        let tap = Tap::create(&ns, &cfg("eth0", 2)).expect("create tap");

        // A taken name (a tap, or a non-tun device) is refused; the owner is untouched.
        for name in ["eth0", "lo"] {
            let err = Tap::create(&ns, &cfg(name, 9)).expect_err("taken name");
            eprintln!("expected error: {err}");
            assert!(err.to_string().contains("already exists"), "{err}");
        }
        let links = ip_json(&path, &["link", "show", "eth0"]);
        assert_eq!(links[0]["address"], "02:00:00:00:00:02");
        assert_eq!(links[0]["ifindex"].as_u64(), Some(u64::from(tap.ifindex())));

        // A failure after TUNSETIFF (an MTU the kernel refuses) removes the new device.
        let mut bad = cfg("eth1", 3);
        bad.mtu = 1 << 20;
        let err = Tap::create(&ns, &bad).expect_err("bad mtu");
        eprintln!("expected error: {err}");
        assert!(matches!(err, Error::Netlink { .. }), "{err:?}");
        assert!(err.to_string().contains("set mtu 1048576 on eth1"), "{err}");
        let mut names = link_names(&ns).expect("links");
        names.sort();
        assert_eq!(names, vec!["eth0".to_string(), "lo".to_string()]);

        // So does a refused address (here a prefix length out of range).
        let mut bad = cfg("eth1", 3);
        bad.ipv4 = Some((Ipv4Addr::new(10, 0, 0, 3), 33));
        let err = Tap::create(&ns, &bad).expect_err("bad prefix");
        assert!(err.to_string().contains("add address"), "{err}");
        let mut names = link_names(&ns).expect("links");
        names.sort();
        assert_eq!(names, vec!["eth0".to_string(), "lo".to_string()]);

        // Invalid names never reach the kernel.
        let err = Tap::create(&ns, &cfg("this-name-is-too-long", 5)).expect_err("long name");
        assert!(matches!(err, Error::Invalid(_)), "{err:?}");
    });
}

#[test]
fn tap_dual_stack_and_host_routes() {
    in_ns("tap_dual_stack_and_host_routes", |s| {
        let path = s.path("ns");
        let ns = Netns::create(&path).expect("create");
        let mut c = cfg("eth0", 2);
        c.ipv6 = Some(("fd00:1::2".parse().expect("v6"), 64));
        c.gateway_v6 = Some("fd00:1::1".parse().expect("v6"));
        let _tap = Tap::create(&ns, &c).expect("create tap");
        let addrs6 = ip_json(&path, &["-6", "addr", "show", "eth0"]);
        let ours = addrs6[0]["addr_info"]
            .as_array()
            .expect("addr_info")
            .iter()
            .find(|a| a["local"] == "fd00:1::2")
            .unwrap_or_else(|| panic!("no fd00:1::2 in {addrs6}"));
        // nodad: the address is usable at once, never tentative.
        assert_eq!(ours["nodad"], true, "{addrs6}");
        assert!(ours.get("tentative").is_none(), "{addrs6}");
        let routes = ip_json(&path, &["-6", "route", "show", "default"]);
        assert_eq!(routes[0]["gateway"], "fd00:1::1", "{routes}");
        assert_eq!(routes[0]["dev"], "eth0", "{routes}");
        // The main table's IPv4 routes: the connected /24, no default route.
        let routes = ns
            .run(|| Handle::new()?.routes_v4())
            .expect("run")
            .expect("routes");
        assert_eq!(routes, vec![(Ipv4Addr::new(10, 0, 0, 0), 24)]);
    });
}
