//! Privileged tests of tapnet-sandbox.
//!
//! Each test re-executes this binary, filtered to exactly itself, inside fresh
//! `unshare -Urnm --propagation private` namespaces; the inner run (marked by
//! `TAPNET_SANDBOX_IN_NS`) mounts a tmpfs on a fresh directory for the netns bind
//! mounts. iproute2 is used only to *observe* what the crate did, and to make the
//! veth pairs the `iface` tests move into sandboxes (the crate has no veth creation).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::Value;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tapnet_sandbox::iface::{self, Naming, Source, Spec};
use tapnet_sandbox::netlink::{Handle, Route};
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

/// `ip -j ARGS...` in the test's own namespace (where moved-in devices come from).
fn ip_here(args: &[&str]) -> Value {
    let out = Command::new("ip")
        .arg("-j")
        .args(args)
        .output()
        .expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("ip -j output is JSON")
}

/// A veth pair in the test's own namespace (`ip` sets up the fixture; the crate has
/// no veth creation of its own): `name` with `mac` and MTU 1400, its peer up.
fn veth(name: &str, peer: &str, mac: &str) {
    for args in [
        vec![
            "link", "add", name, "address", mac, "mtu", "1400", "type", "veth", "peer", "name",
            peer,
        ],
        vec!["link", "set", peer, "up"],
    ] {
        let out = Command::new("ip").args(&args).output().expect("run ip");
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn sorted_links(ns: &Netns) -> Vec<String> {
    let mut names = link_names(ns).expect("links");
    names.sort();
    names
}

fn addrs_of(v: &Value) -> Vec<String> {
    v[0]["addr_info"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|x| x["scope"] != "link")
                .map(|x| format!("{}/{}", x["local"].as_str().unwrap_or(""), x["prefixlen"]))
                .collect()
        })
        .unwrap_or_default()
}

fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

#[test]
fn iface_move_in_configure_and_undo() {
    in_ns("iface_move_in_configure_and_undo", |s| {
        let path = s.path("ns");
        let ns = Netns::create(&path).expect("create");
        // Already in the sandbox: eth0 (a tap) with the IPv4 default route.
        let _eth0 = Tap::create(&ns, &cfg("eth0", 2)).expect("tap eth0");
        veth("vh0", "vp0", "02:00:00:00:aa:01");
        let host_index = ip_here(&["link", "show", "vh0"])[0]["ifindex"].clone();

        let v6 = |s: &str| IpAddr::V6(s.parse().expect("v6"));
        let mut spec = Spec::new(Source::MoveIn {
            host_name: "vh0".into(),
        });
        spec.naming = Naming::NextFree("eth".into());
        spec.mac = Some([0x02, 0x42, 10, 1, 0, 2]);
        spec.mtu = Some(1450);
        spec.txqueuelen = Some(10000);
        spec.addresses = vec![(v4(10, 1, 0, 2), 24), (v6("fd00:1::2"), 64)];
        spec.gateway_v4 = Some(Ipv4Addr::new(10, 1, 0, 1));
        spec.gateway_v6 = Some("fd00:1::1".parse().expect("v6"));
        spec.routes = vec![
            Route {
                destination: v4(192, 168, 50, 0),
                prefix_len: 24,
                gateway: Some(v4(10, 1, 0, 254)),
                oif: None,
            },
            Route {
                destination: v4(198, 51, 100, 0),
                prefix_len: 24,
                gateway: None,
                oif: None,
            },
            Route {
                destination: v6("fd00:99::"),
                prefix_len: 64,
                gateway: Some(v6("fd00:1::fe")),
                oif: None,
            },
        ];
        let applied = iface::apply(&ns, &spec).expect("apply");

        // Moved, renamed to the next free ethN, configured.
        assert_eq!(applied.name, "eth1");
        assert_eq!(applied.moved_in.as_deref(), Some("vh0"));
        assert_eq!(applied.renamed_from.as_deref(), Some("vh0"));
        assert_eq!(applied.mac_was, Some([2, 0, 0, 0, 0xaa, 1]));
        assert_eq!(applied.mtu_was, Some(1400));
        assert!(applied.set_up);
        assert!(ip_here(&["link", "show"])
            .as_array()
            .expect("links")
            .iter()
            .all(|l| l["ifname"] != "vh0"));
        assert_eq!(sorted_links(&ns), ["eth0", "eth1", "lo"]);
        let l = &ip_json(&path, &["link", "show", "eth1"])[0];
        assert_eq!(l["address"], "02:42:0a:01:00:02", "{l}");
        assert_eq!(l["mtu"], 1450, "{l}");
        assert_eq!(l["txqlen"], 10000, "{l}");
        assert!(l["flags"].to_string().contains("\"UP\""), "{l}");
        assert_eq!(
            addrs_of(&ip_json(&path, &["addr", "show", "eth1"])),
            ["10.1.0.2/24", "fd00:1::2/64"]
        );
        let a6 = ip_json(&path, &["-6", "addr", "show", "eth1"]);
        assert!(a6.to_string().contains("\"nodad\":true"), "{a6}");
        // The IPv4 default stays eth0's; IPv6 had none: eth1 gets it.
        let d4 = ip_json(&path, &["-4", "route", "show", "default"]);
        assert_eq!(d4.as_array().map(Vec::len), Some(1), "{d4}");
        assert_eq!(d4[0]["dev"], "eth0", "{d4}");
        let d6 = ip_json(&path, &["-6", "route", "show", "default"]);
        assert_eq!(d6[0]["gateway"], "fd00:1::1", "{d6}");
        assert_eq!(d6[0]["dev"], "eth1", "{d6}");
        let r = ip_json(&path, &["-4", "route", "show", "192.168.50.0/24"]);
        assert_eq!(r[0]["gateway"], "10.1.0.254", "{r}");
        assert_eq!(r[0]["dev"], "eth1", "{r}");
        let r = ip_json(&path, &["-4", "route", "show", "198.51.100.0/24"]);
        assert_eq!(r[0]["dev"], "eth1", "{r}");
        assert_eq!(r[0]["scope"], "link", "{r}");
        let r = ip_json(&path, &["-6", "route", "show", "fd00:99::/64"]);
        assert_eq!(r[0]["gateway"], "fd00:1::fe", "{r}");
        assert_eq!(applied.routes.len(), 4, "{applied:?}");

        // Undo: routes and addresses gone, the device back in this namespace under its
        // old name with its old MAC and MTU; eth0 and its route untouched.
        iface::undo(&ns, &applied).expect("undo");
        assert_eq!(sorted_links(&ns), ["eth0", "lo"]);
        let back = &ip_here(&["link", "show", "vh0"])[0];
        assert_eq!(back["address"], "02:00:00:00:aa:01", "{back}");
        assert_eq!(back["mtu"], 1400, "{back}");
        assert_eq!(back["ifindex"], host_index, "{back}");
        assert!(addrs_of(&ip_here(&["addr", "show", "vh0"])).is_empty());
        let d6 = ip_json(&path, &["-6", "route", "show", "default"]);
        assert_eq!(d6.as_array().map(Vec::len), Some(0), "{d6}");
        let all4 = ip_json(&path, &["-4", "route", "show"]);
        assert!(!all4.to_string().contains("eth1"), "{all4}");
        let d4 = ip_json(&path, &["-4", "route", "show", "default"]);
        assert_eq!(d4[0]["dev"], "eth0", "{d4}");
        // Undoing again finds nothing to undo.
        iface::undo(&ns, &applied).expect("second undo");

        // A device made in place (a bare tap) is renamed and configured the same way;
        // IPv6 is turned off when asked. Undo leaves it in the sandbox, as it was.
        let tap = Tap::create_down(&ns, "tmp0").expect("bare tap");
        let mut spec = Spec::new(Source::InSandbox {
            name: "tmp0".into(),
        });
        spec.naming = Naming::NextFree("eth".into());
        spec.addresses = vec![(v4(10, 3, 0, 2), 24)];
        spec.disable_ipv6 = true;
        let applied = iface::apply(&ns, &spec).expect("apply in place");
        assert_eq!(applied.name, "eth1");
        assert!(applied.ipv6_disabled);
        let sysctl = nsenter(&path, &["cat", "/proc/sys/net/ipv6/conf/eth1/disable_ipv6"]);
        assert_eq!(sysctl.trim(), "1");
        iface::undo(&ns, &applied).expect("undo in place");
        assert_eq!(sorted_links(&ns), ["eth0", "lo", "tmp0"]);
        let sysctl = nsenter(&path, &["cat", "/proc/sys/net/ipv6/conf/tmp0/disable_ipv6"]);
        assert_eq!(sysctl.trim(), "0");
        let l = &ip_json(&path, &["addr", "show", "tmp0"])[0];
        assert!(!l["flags"].to_string().contains("\"UP\""), "{l}");
        assert!(addrs_of(&ip_json(&path, &["addr", "show", "tmp0"])).is_empty());
        tap.destroy().expect("destroy");
    });
}

#[test]
fn iface_failures_leave_nothing() {
    in_ns("iface_failures_leave_nothing", |s| {
        let path = s.path("ns");
        let ns = Netns::create(&path).expect("create");
        let _eth0 = Tap::create(&ns, &cfg("eth0", 2)).expect("tap eth0");

        // A name clash on the move: the kernel refuses, nothing moves.
        veth("eth0", "vp0", "02:00:00:00:bb:01");
        let err = iface::apply(
            &ns,
            &Spec::new(Source::MoveIn {
                host_name: "eth0".into(),
            }),
        )
        .expect_err("name taken in the sandbox");
        eprintln!("expected error: {err}");
        assert!(matches!(err, Error::Netlink { .. }), "{err:?}");
        assert_eq!(
            ip_here(&["link", "show", "eth0"])[0]["address"],
            "02:00:00:00:bb:01"
        );
        assert_eq!(sorted_links(&ns), ["eth0", "lo"]);

        // A step the kernel refuses last (a route via an unreachable next hop): the
        // rename, MAC, MTU, addresses, up and default route before it are undone and
        // the device is back here as it was.
        veth("vh1", "vp1", "02:00:00:00:bb:02");
        let mut spec = Spec::new(Source::MoveIn {
            host_name: "vh1".into(),
        });
        spec.naming = Naming::NextFree("eth".into());
        spec.mac = Some([0x02, 0x42, 10, 2, 0, 2]);
        spec.mtu = Some(1300);
        spec.addresses = vec![(v4(10, 2, 0, 2), 24)];
        spec.routes = vec![Route {
            destination: v4(192, 168, 60, 0),
            prefix_len: 24,
            gateway: Some(v4(172, 31, 0, 1)),
            oif: None,
        }];
        let err = iface::apply(&ns, &spec).expect_err("unreachable next hop");
        eprintln!("expected error: {err}");
        assert!(
            err.to_string().contains("add route 192.168.60.0/24"),
            "{err}"
        );
        assert_eq!(sorted_links(&ns), ["eth0", "lo"]);
        let back = &ip_here(&["link", "show", "vh1"])[0];
        assert_eq!(back["address"], "02:00:00:00:bb:02", "{back}");
        assert_eq!(back["mtu"], 1400, "{back}");
        assert!(addrs_of(&ip_here(&["addr", "show", "vh1"])).is_empty());
        let all4 = ip_json(&path, &["-4", "route", "show"]);
        assert!(!all4.to_string().contains("10.2.0"), "{all4}");

        // The same with a default route added before the failure (the sandbox has
        // none): it goes again.
        let ns2 = Netns::create(&s.path("ns2")).expect("create ns2");
        spec.gateway_v4 = Some(Ipv4Addr::new(10, 2, 0, 1));
        let err = iface::apply(&ns2, &spec).expect_err("unreachable next hop");
        assert!(err.to_string().contains("add route"), "{err}");
        assert_eq!(sorted_links(&ns2), ["lo"]);
        let d4 = ip_json(&s.path("ns2"), &["-4", "route", "show"]);
        assert_eq!(d4.as_array().map(Vec::len), Some(0), "{d4}");
        assert_eq!(ip_here(&["link", "show", "vh1"])[0]["mtu"], 1400);

        // An address the kernel refuses (IPv6 on a device with IPv6 turned off): the
        // in-place device keeps its name, comes back down without addresses.
        let tap = Tap::create_down(&ns, "tmp1").expect("bare tap");
        let mut spec = Spec::new(Source::InSandbox {
            name: "tmp1".into(),
        });
        spec.naming = Naming::NextFree("eth".into());
        spec.disable_ipv6 = true;
        spec.addresses = vec![
            (v4(10, 4, 0, 2), 24),
            (IpAddr::V6("fd00:4::2".parse().expect("v6")), 64),
        ];
        let err = iface::apply(&ns, &spec).expect_err("IPv6 address with IPv6 off");
        eprintln!("expected error: {err}");
        assert!(
            err.to_string().contains("add address fd00:4::2/64"),
            "{err}"
        );
        assert_eq!(sorted_links(&ns), ["eth0", "lo", "tmp1"]);
        assert!(addrs_of(&ip_json(&path, &["addr", "show", "tmp1"])).is_empty());
        let sysctl = nsenter(&path, &["cat", "/proc/sys/net/ipv6/conf/tmp1/disable_ipv6"]);
        assert_eq!(sysctl.trim(), "0");

        // A rename onto a taken name: refused before anything else changes.
        spec.naming = Naming::Exact("eth0".into());
        spec.addresses.clear();
        let err = iface::apply(&ns, &spec).expect_err("taken name");
        eprintln!("expected error: {err}");
        assert!(err.to_string().contains("rename"), "{err}");
        assert_eq!(sorted_links(&ns), ["eth0", "lo", "tmp1"]);
        tap.destroy().expect("destroy");
    });
}
