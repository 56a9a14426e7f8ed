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

// ---------------------------------------------------------------- multi-queue taps

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::AsRawFd;
use tapnet_sandbox::tap::{create_down_queues, destroy_queues, reopen_queues, MAX_QUEUES};
use tapnet_wire::checksum;
use tapnet_wire::vnet::VIRTIO_NET_HDR_GSO_UDP_L4;

/// The MAC the tests answer ARP with (the "gateway" 10.0.0.1 behind the tap).
const GW_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
/// The MAC `cfg(_, 2)` gives the tap.
const TAP_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];

/// Configure the bare tap `name` in `ns` as `cfg(name, 2)` says (10.0.0.2/24, up).
fn configure_bare(ns: &Netns, name: &str) {
    let spec = cfg(name, 2).spec();
    ns.run(|| -> tapnet_sandbox::Result<_> {
        let mut nl = Handle::new()?;
        let link = nl.link(name)?.expect("the tap exists");
        iface::configure(&mut nl, &link, &spec)
    })
    .expect("run")
    .expect("configure the bare tap");
}

/// Read every queue of `taps` in turn until `f(queue, frame)` says done; panics after
/// `timeout`.
fn read_queues(taps: &[Tap], timeout: Duration, mut f: impl FnMut(usize, &[u8]) -> bool) {
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; 65536 + VNET_HDR_LEN];
    loop {
        let mut idle = true;
        for (k, tap) in taps.iter().enumerate() {
            match tap.read(&mut buf) {
                Ok(n) => {
                    idle = false;
                    if f(k, &buf[..n]) {
                        return;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("read queue {k}: {e}"),
            }
        }
        assert!(Instant::now() < deadline, "not done within {timeout:?}");
        if idle {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// The ARP reply (vnet header + Ethernet) from `GW_MAC` to the ARP request `frame`.
fn arp_reply(frame: &[u8]) -> Vec<u8> {
    let eth = &frame[VNET_HDR_LEN..];
    let mut f = vec![0u8; VNET_HDR_LEN];
    f.extend_from_slice(&eth[6..12]);
    f.extend_from_slice(&GW_MAC);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 2]);
    f.extend_from_slice(&GW_MAC);
    f.extend_from_slice(&eth[38..42]); // the address asked for
    f.extend_from_slice(&eth[22..28]); // back to the asker
    f.extend_from_slice(&eth[28..32]);
    f
}

/// An IPv4 frame's protocol, source and destination ports, L4 payload length and vnet
/// `gso_type`; `None` for anything else.
fn l4_of(frame: &[u8]) -> Option<(u8, u16, u16, usize, u8)> {
    let eth = &frame[VNET_HDR_LEN..];
    if eth.len() < 34 || eth[12..14] != [0x08, 0x00] {
        return None;
    }
    let ip = &eth[14..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let l4 = &ip[ihl..];
    let sport = u16::from_be_bytes([l4[0], l4[1]]);
    let dport = u16::from_be_bytes([l4[2], l4[3]]);
    let l4_hdr = match ip[9] {
        17 => 8,
        6 => usize::from(l4[12] >> 4) * 4,
        _ => return None,
    };
    // A GSO super-frame's IP total length may be 0 or stale: count what was read.
    let payload = (ip.len() - ihl - l4_hdr).min(if total > 0 { total } else { usize::MAX });
    Some((ip[9], sport, dport, payload, frame[1]))
}

/// What `flows_from_ns` saw: per (protocol, source port), the queues the flow's frames
/// were read from, the L4 payload bytes and the `gso_type`s.
#[derive(Default, Debug)]
struct FlowSeen {
    queues: BTreeSet<usize>,
    bytes: usize,
    gso_types: BTreeSet<u8>,
}

/// Start `udp` UDP flows (one `UDP_SEGMENT` send of 4 × 1000 bytes each, so a
/// super-frame where the tap has USO) and `tcp` TCP connections (their SYNs) from
/// 10.0.0.2 in `ns` to 10.0.0.1, each from its own source port; answer ARP on queue 0;
/// read every queue of `taps` until every flow's data is in.
fn flows_from_ns(
    ns: &Netns,
    taps: &[Tap],
    udp: usize,
    tcp: usize,
) -> BTreeMap<(u8, u16), FlowSeen> {
    use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn};
    let (udp_socks, tcp_socks) = ns
        .run(|| {
            let udp_socks: Vec<std::net::UdpSocket> = (0..udp)
                .map(|_| {
                    let s = std::net::UdpSocket::bind("10.0.0.2:0").expect("bind udp");
                    socket::setsockopt(&s, sockopt::UdpGsoSegment, &1000).expect("UDP_SEGMENT");
                    s.send_to(&[0x5a; 4000], "10.0.0.1:9").expect("send udp");
                    s
                })
                .collect();
            let tcp_socks: Vec<std::os::fd::OwnedFd> = (0..tcp)
                .map(|i| {
                    let s = socket::socket(
                        AddressFamily::Inet,
                        SockType::Stream,
                        SockFlag::SOCK_NONBLOCK,
                        None,
                    )
                    .expect("tcp socket");
                    let to = SockaddrIn::new(10, 0, 0, 1, 5000 + i as u16);
                    match socket::connect(s.as_raw_fd(), &to) {
                        Err(nix::errno::Errno::EINPROGRESS) => {}
                        other => panic!("non-blocking connect: {other:?}"),
                    }
                    s
                })
                .collect();
            (udp_socks, tcp_socks)
        })
        .expect("run");
    let ports: BTreeSet<(u8, u16)> = udp_socks
        .iter()
        .map(|s| (17, s.local_addr().expect("local addr").port()))
        .chain(tcp_socks.iter().map(|s| {
            let a: SockaddrIn = socket::getsockname(s.as_raw_fd()).expect("getsockname");
            (6, a.port())
        }))
        .collect();
    assert_eq!(ports.len(), udp + tcp, "every flow has its own source port");
    let mut seen: BTreeMap<(u8, u16), FlowSeen> = BTreeMap::new();
    let gw = Ipv4Addr::new(10, 0, 0, 1);
    let done = |seen: &BTreeMap<(u8, u16), FlowSeen>| {
        ports.iter().all(|p| match (p.0, seen.get(p)) {
            (17, Some(f)) => f.bytes >= 4000,
            (6, Some(_)) => true,
            _ => false,
        })
    };
    read_queues(taps, Duration::from_secs(5), |k, frame| {
        if is_arp_request_for(frame, gw) {
            let reply = arp_reply(frame);
            assert_eq!(taps[0].write(&reply).expect("write ARP reply"), reply.len());
            return false;
        }
        if let Some((proto, sport, _, bytes, gso)) = l4_of(frame) {
            if ports.contains(&(proto, sport)) {
                let f = seen.entry((proto, sport)).or_default();
                f.queues.insert(k);
                f.bytes += bytes;
                f.gso_types.insert(gso);
            }
        }
        done(&seen)
    });
    drop((udp_socks, tcp_socks));
    seen
}

/// An Ethernet/IPv4/UDP frame (vnet header all zero, checksums right) from
/// 10.0.0.1:`sport` to 10.0.0.2:`dport` carrying `payload`, addressed to the tap.
fn udp_frame_to_ns(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let (src, dst) = (Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2));
    let udp_len = 8 + payload.len();
    let mut f = vec![0u8; VNET_HDR_LEN];
    f.extend_from_slice(&TAP_MAC);
    f.extend_from_slice(&GW_MAC);
    f.extend_from_slice(&[0x08, 0x00]);
    let ip_at = f.len();
    f.extend_from_slice(&[0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 17, 0, 0]);
    f[ip_at + 2..ip_at + 4].copy_from_slice(&((20 + udp_len) as u16).to_be_bytes());
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    checksum::fill_ipv4_header(&mut f[ip_at..]).expect("ipv4 header");
    let udp_at = f.len();
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&(udp_len as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    let c = checksum::pseudo_v4(src, dst, 17, udp_len as u32)
        .add_bytes(&f[udp_at..])
        .checksum();
    f[udp_at + 6..udp_at + 8].copy_from_slice(&(if c == 0 { 0xffff } else { c }).to_be_bytes());
    f
}

/// Write one UDP datagram into `ns` on every queue of `taps` (each to its own socket in
/// the namespace) and check each arrives byte for byte, from the right source.
fn deliver_on_every_queue(ns: &Netns, taps: &[Tap]) {
    let socks: Vec<std::net::UdpSocket> = ns
        .run(|| {
            (0..taps.len())
                .map(|k| {
                    let s = std::net::UdpSocket::bind(("10.0.0.2", 7000 + k as u16))
                        .expect("bind receiver");
                    s.set_read_timeout(Some(Duration::from_secs(3)))
                        .expect("read timeout");
                    s
                })
                .collect()
        })
        .expect("run");
    for (k, tap) in taps.iter().enumerate() {
        let payload: Vec<u8> = (0..1200).map(|i| (i * 7 + k * 13) as u8).collect();
        let frame = udp_frame_to_ns(6000 + k as u16, 7000 + k as u16, &payload);
        assert_eq!(tap.write(&frame).expect("write to queue"), frame.len());
        let mut buf = [0u8; 2048];
        let (n, from) = socks[k]
            .recv_from(&mut buf)
            .unwrap_or_else(|e| panic!("datagram written on queue {k} not delivered: {e}"));
        assert_eq!(&buf[..n], &payload[..], "queue {k}: payload differs");
        assert_eq!(
            from.to_string(),
            format!("10.0.0.1:{}", 6000 + k),
            "queue {k}"
        );
    }
}

#[test]
fn tap_multi_queue_spreads_flows_and_takes_writes_on_every_queue() {
    in_ns(
        "tap_multi_queue_spreads_flows_and_takes_writes_on_every_queue",
        |s| {
            let path = s.path("ns");
            let ns = Netns::create(&path).expect("create");
            let taps = create_down_queues(&ns, "eth0", 4).expect("4-queue tap");
            assert_eq!(taps.len(), 4);
            let base = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6;
            for t in &taps {
                assert_eq!(t.name(), "eth0");
                assert_eq!(t.ifindex(), taps[0].ifindex());
                assert_eq!(t.offloads(), taps[0].offloads());
                assert_eq!(t.offloads() & base, base);
            }
            let l = &ip_json(&path, &["-d", "link", "show", "eth0"])[0];
            let tun = &l["linkinfo"]["info_data"];
            assert_eq!(tun["type"], "tap", "{l}");
            assert_eq!(tun["multi_queue"], true, "{l}");
            assert_eq!(tun["vnet_hdr"], true, "{l}");
            assert_eq!(tun["persist"], true, "{l}");
            assert!(
                !l["flags"].to_string().contains("\"UP\""),
                "created down: {l}"
            );
            configure_bare(&ns, "eth0");

            // Frames from the namespace: every flow arrives whole, each on one queue,
            // and the flows use more than one queue.
            let seen = flows_from_ns(&ns, &taps, 16, 16);
            let uso = taps[0].offloads() & libc::TUN_F_USO4 != 0;
            let mut per_queue = [0usize; 4];
            for (flow, f) in &seen {
                assert_eq!(f.queues.len(), 1, "flow {flow:?} on several queues: {f:?}");
                per_queue[*f.queues.first().expect("a queue")] += 1;
                if flow.0 == 17 {
                    assert_eq!(f.bytes, 4000, "flow {flow:?}: {f:?}");
                    if uso {
                        // One UDP GSO super-frame, whatever queue it came from.
                        assert_eq!(
                            f.gso_types,
                            BTreeSet::from([VIRTIO_NET_HDR_GSO_UDP_L4]),
                            "flow {flow:?}"
                        );
                    }
                }
            }
            eprintln!("flows per queue: {per_queue:?} (USO: {uso})");
            assert!(
                per_queue.iter().filter(|&&n| n > 0).count() >= 2,
                "all 32 flows on one queue: {per_queue:?}"
            );

            // Frames into the namespace: a datagram written to any queue is delivered.
            deliver_on_every_queue(&ns, &taps);

            // Destroy on queue 0 alone clears persistence; the device goes with the last fd.
            let mut taps = taps.into_iter();
            taps.next()
                .expect("queue 0")
                .destroy()
                .expect("destroy queue 0");
            let tun = &ip_json(&path, &["-d", "link", "show", "eth0"])[0]["linkinfo"]["info_data"];
            assert_eq!(tun["persist"], false, "{tun}");
            drop(taps);
            assert_eq!(link_names(&ns).expect("links"), vec!["lo".to_string()]);
        },
    );
}

#[test]
fn tap_multi_queue_reopen_both_kinds() {
    in_ns("tap_multi_queue_reopen_both_kinds", |s| {
        // A multi-queue device: drop every fd, reopen with another queue count.
        let path = s.path("mq");
        let ns = Netns::create(&path).expect("create");
        let index = {
            let taps = create_down_queues(&ns, "eth0", 4).expect("4-queue tap");
            configure_bare(&ns, "eth0");
            taps[0].ifindex()
        };
        assert!(link_names(&ns)
            .expect("links")
            .contains(&"eth0".to_string()));
        // The single-queue call cannot attach to it (the flag must match).
        let err = Tap::reopen(&ns, "eth0").expect_err("Tap::reopen on a multi-queue tap");
        assert!(err.to_string().contains("Invalid argument"), "{err}");
        let taps = reopen_queues(&ns, "eth0", 2).expect("reopen 2 queues");
        assert_eq!(taps.len(), 2);
        for t in &taps {
            assert_eq!(t.ifindex(), index);
        }
        let seen = flows_from_ns(&ns, &taps, 8, 8);
        assert_eq!(seen.len(), 16, "{seen:?}");
        deliver_on_every_queue(&ns, &taps);
        // More queues can join the ones still attached.
        let more = reopen_queues(&ns, "eth0", 1).expect("one more queue");
        assert_eq!(more.len(), 1);
        let all: Vec<Tap> = taps.into_iter().chain(more).collect();
        deliver_on_every_queue(&ns, &all);
        destroy_queues(all).expect("destroy");
        assert_eq!(link_names(&ns).expect("links"), vec!["lo".to_string()]);

        // A single-queue device: one queue back, whatever was asked for.
        let path = s.path("sq");
        let ns = Netns::create(&path).expect("create");
        let index = Tap::create_down(&ns, "eth0").expect("single tap").ifindex();
        configure_bare(&ns, "eth0");
        let tun = &ip_json(&path, &["-d", "link", "show", "eth0"])[0]["linkinfo"]["info_data"];
        assert_eq!(tun["multi_queue"], false, "{tun}");
        let taps = reopen_queues(&ns, "eth0", 4).expect("reopen single-queue tap");
        assert_eq!(taps.len(), 1);
        assert_eq!(taps[0].ifindex(), index);
        // Attached elsewhere: refused, the device and its fd untouched.
        let err = reopen_queues(&ns, "eth0", 1).expect_err("second attach");
        assert!(err.to_string().contains("TUNSETIFF eth0"), "{err}");
        let seen = flows_from_ns(&ns, &taps, 4, 4);
        assert_eq!(seen.len(), 8, "{seen:?}");
        deliver_on_every_queue(&ns, &taps);
        destroy_queues(taps).expect("destroy");
        assert_eq!(link_names(&ns).expect("links"), vec!["lo".to_string()]);
        let err = reopen_queues(&ns, "eth0", 1).expect_err("reopen missing");
        assert!(err.to_string().contains("no interface eth0"), "{err}");
    });
}

/// `RLIMIT_NOFILE` soft limit (the hard one kept).
fn set_nofile(soft: libc::rlim_t) {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write a live `rlimit`.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut r), 0);
        r.rlim_cur = soft;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &r), 0);
    }
}

#[test]
fn tap_multi_queue_refusals_leave_nothing() {
    in_ns("tap_multi_queue_refusals_leave_nothing", |s| {
        let path = s.path("ns");
        let ns = Netns::create(&path).expect("create");
        let lo_only = vec!["lo".to_string()];
        for bad in [0, MAX_QUEUES + 1, usize::MAX] {
            let err = create_down_queues(&ns, "eth0", bad).expect_err("bad queue count");
            assert!(matches!(err, Error::Invalid(_)), "{err:?}");
            assert!(err.to_string().contains(&format!("{bad} queues")), "{err}");
            assert_eq!(link_names(&ns).expect("links"), lo_only);
            let err = reopen_queues(&ns, "eth0", bad).expect_err("bad queue count");
            assert!(matches!(err, Error::Invalid(_)), "{err:?}");
        }
        let err = create_down_queues(&ns, "lo", 2).expect_err("taken name");
        assert!(err.to_string().contains("already exists"), "{err}");
        // Not a tap: refused both ways (single- and multi-queue), lo untouched.
        let lo_before = ip_json(&path, &["-d", "link", "show", "lo"]);
        let err = reopen_queues(&ns, "lo", 2).expect_err("reopen a non-tap");
        assert!(err.to_string().contains("single- and multi-queue"), "{err}");
        assert_eq!(ip_json(&path, &["-d", "link", "show", "lo"]), lo_before);
        let err = create_down_queues(&ns, "this-name-is-too-long", 2).expect_err("long");
        assert!(matches!(err, Error::Invalid(_)), "{err:?}");
        assert_eq!(link_names(&ns).expect("links"), lo_only);

        // Failures half-way (out of fds while attaching queue k): nothing is left.
        let probe = std::fs::File::open("/dev/null").expect("open /dev/null");
        let lowest = probe.as_raw_fd() as libc::rlim_t;
        drop(probe);
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes a live `rlimit`.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) }, 0);
        let (mut midway, mut made) = (0, 0);
        for extra in 0..16 {
            set_nofile(lowest + extra);
            let res = create_down_queues(&ns, "eth0", 8);
            set_nofile(r.rlim_cur);
            match res {
                Ok(taps) => {
                    assert_eq!(taps.len(), 8);
                    made += 1;
                    destroy_queues(taps).expect("destroy");
                }
                Err(e) => {
                    eprintln!("limit {}: {e}", lowest + extra);
                    if e.to_string().contains("(queue ") {
                        midway += 1;
                    }
                }
            }
            assert_eq!(link_names(&ns).expect("links"), lo_only, "limit +{extra}");
        }
        assert!(midway > 0, "no failure while attaching a queue");
        assert!(made > 0, "never succeeded");
    });
}

use tapnet_sandbox::udp_merge;
use tapnet_sandbox::uring::{open_port, TapIo};
use tapnet_switch::runtime::{FrameBatch, Frames};

/// A batch holding `frames`.
fn batch_of(frames: &[Vec<u8>]) -> FrameBatch {
    let mut b = FrameBatch::new(frames.len(), 2048, frames.len() * 2048);
    for f in frames {
        b.spare()[..f.len()].copy_from_slice(f);
        b.commit(f.len());
    }
    b
}

#[test]
fn tap_ports_merge_udp_runs_into_super_frames_the_kernel_delivers_whole() {
    in_ns(
        "tap_ports_merge_udp_runs_into_super_frames_the_kernel_delivers_whole",
        |s| {
            let path = s.path("ns");
            let ns = Netns::create(&path).expect("create");
            let tap = std::sync::Arc::new(Tap::create(&ns, &cfg("eth0", 2)).expect("tap"));
            let uso = tap.offloads() & libc::TUN_F_USO4 != 0;
            let rx = ns
                .run(|| std::net::UdpSocket::bind("10.0.0.2:7100"))
                .expect("run")
                .expect("bind receiver");
            rx.set_read_timeout(Some(Duration::from_secs(3)))
                .expect("timeout");
            let payload =
                |k: usize| -> Vec<u8> { (0..100).map(|i| (i * 3 + k * 11) as u8).collect() };
            for mode in [TapIo::Uring, TapIo::Rw] {
                let (mut port, _) = open_port(std::sync::Arc::clone(&tap), mode, 4).expect("port");
                // 20 datagrams of one flow, then one whose checksum is wrong, then 10 more.
                let mut frames: Vec<Vec<u8>> = (0..20)
                    .map(|k| udp_frame_to_ns(6100, 7100, &payload(k)))
                    .collect();
                let mut bad = udp_frame_to_ns(6100, 7100, &payload(20));
                let n = bad.len();
                bad[n - 1] ^= 0xff;
                frames.push(bad);
                frames.extend((21..31).map(|k| udp_frame_to_ns(6100, 7100, &payload(k))));
                let before = udp_merge::counts();
                port.send_batch(Frames::all(&batch_of(&frames)))
                    .unwrap_or_else(|e| panic!("{mode:?}: send_batch: {}", e.error));
                let after = udp_merge::counts();
                if uso {
                    // Two super-frames (20 and 10); the corrupt datagram went alone.
                    assert_eq!(after.superframes - before.superframes, 2, "{mode:?}");
                    assert_eq!(after.datagrams - before.datagrams, 30, "{mode:?}");
                } else {
                    eprintln!("this kernel has no USO for taps: nothing merged");
                    assert_eq!(after, before, "{mode:?}");
                }
                // Every good datagram arrives, whole and in order; the corrupt one is
                // dropped by the kernel, as it would have been unmerged.
                let mut buf = [0u8; 2048];
                for k in (0..31).filter(|&k| k != 20) {
                    let (got, from) = rx
                        .recv_from(&mut buf)
                        .unwrap_or_else(|e| panic!("{mode:?}: datagram {k} not delivered: {e}"));
                    assert_eq!(&buf[..got], &payload(k)[..], "{mode:?}: datagram {k}");
                    assert_eq!(from.to_string(), "10.0.0.1:6100", "{mode:?}");
                }
                rx.set_nonblocking(true).expect("nonblocking");
                assert!(
                    rx.recv_from(&mut buf).is_err(),
                    "{mode:?}: a datagram too many"
                );
                rx.set_nonblocking(false).expect("blocking");
                // With merging off, ports opened afterwards write the datagrams one by one.
                udp_merge::set_enabled(false);
                let (mut plain, _) = open_port(std::sync::Arc::clone(&tap), mode, 4).expect("port");
                udp_merge::set_enabled(true);
                let before = udp_merge::counts();
                plain
                    .send_batch(Frames::all(&batch_of(&frames[..5])))
                    .unwrap_or_else(|e| panic!("{mode:?}: send_batch: {}", e.error));
                assert_eq!(udp_merge::counts(), before, "{mode:?}: merged while off");
                for k in 0..5 {
                    let (got, _) = rx.recv_from(&mut buf).expect("unmerged datagram");
                    assert_eq!(&buf[..got], &payload(k)[..], "{mode:?}: datagram {k}");
                }
            }
        },
    );
}
