//! Smoke tests of the engine's gateway wiring (the full wan-namespace suite is
//! `gateway.rs`): the gateway answers, sandboxes see their resolv.conf/hosts through
//! `tapnet exec`, names resolve through the embedded DNS, `tapnet run` runs and cleans
//! up, published ports are bound, listed, refused when taken and released.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tapnet_tests::{in_namespace, python3};

/// The `tapnet` binary next to this test's `deps/` directory.
fn tapnet_bin() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent()
        .and_then(|d| d.parent())
        .unwrap()
        .join("tapnet")
}

#[test]
fn gateway_files_dns_and_run() {
    in_namespace("gateway_files_dns_and_run", |env| {
        env.network("net1", "10.70.0.0/24");
        env.sandbox("a");
        env.sandbox("b");
        let ip_a = env.connect("net1", "a");
        let ip_b = env.connect("net1", "b");
        // The gateway answers ARP and ICMP echo.
        assert!(
            env.ping("a", "10.70.0.1", 2),
            "gateway does not answer ping"
        );

        // resolv.conf and hosts, as a command in the sandbox sees them.
        let resolv = env.exec_ok("a", &["cat", "/etc/resolv.conf"]);
        assert!(resolv.contains("nameserver 10.70.0.1\n"), "{resolv}");
        assert!(resolv.contains("options ndots:0"), "{resolv}");
        let hosts = env.exec_ok("a", &["cat", "/etc/hosts"]);
        assert!(hosts.contains(&format!("{ip_a}\ta\n")), "{hosts}");
        assert!(hosts.contains("127.0.0.1\tlocalhost"), "{hosts}");
        let sb = env.get("/sandboxes/a");
        let path = sb["ResolvConfPath"].as_str().unwrap();
        assert!(path.ends_with("/resolv.conf"), "{sb}");
        assert_eq!(std::fs::read_to_string(path).unwrap(), resolv);

        // The embedded DNS answers the peer's name (libc resolver via resolv.conf).
        let out = env.python(
            "a",
            "import socket; print(socket.gethostbyname('b')); print(socket.gethostbyname('B.'))",
        );
        let got = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{out:?}");
        assert_eq!(got, format!("{ip_b}\n{ip_b}\n"));
        // Unknown names of the network: NXDOMAIN, not a hang.
        let out = env.python(
            "a",
            "import socket\ntry:\n  socket.gethostbyname('nosuchsandbox')\n  print('found')\nexcept socket.gaierror:\n  print('nx')",
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), "nx\n", "{out:?}");

        // Disconnect: b's name goes away, and so does its address in its hosts file.
        env.ok(&["network", "disconnect", "net1", "b"]);
        let out = env.python(
            "a",
            "import socket\ntry:\n  socket.gethostbyname('b')\n  print('found')\nexcept socket.gaierror:\n  print('nx')",
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), "nx\n", "{out:?}");
        let hosts_b = env.exec_ok("b", &["cat", "/etc/hosts"]);
        assert!(!hosts_b.contains("10.70.0."), "{hosts_b}");
        env.connect("net1", "b");

        // tapnet run: runs, streams, returns the exit code, cleans up.
        let out = env.tapnet(&[
            "run",
            "--rm",
            "--name",
            "r1",
            "--network",
            "net1",
            "--",
            "ping",
            "-c1",
            "-W2",
            &ip_a,
        ]);
        assert!(out.status.success(), "{out:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("1 received"),
            "{out:?}"
        );
        let out = env.tapnet(&[
            "run",
            "--rm",
            "--network",
            "net1",
            "--",
            "sh",
            "-c",
            "exit 7",
        ]);
        assert_eq!(out.status.code(), Some(7), "{out:?}");
        let out = env.tapnet(&[
            "run",
            "--rm",
            "--name",
            "r2",
            "--network",
            "net1",
            "--alias",
            "x",
            "--",
            python3(),
            "-c",
            "import socket; print(socket.gethostbyname('r2'), socket.gethostbyname('x'))",
        ]);
        assert!(out.status.success(), "{out:?}");
        let ls = env.ok(&["sandbox", "ls"]);
        assert!(!ls.contains("r1") && !ls.contains("r2"), "{ls}");
        assert_eq!(env.get("/sandboxes").as_array().unwrap().len(), 2);
        // A failing setup removes what was made.
        let out = env.tapnet(&[
            "run",
            "--name",
            "r3",
            "--network",
            "nosuchnet",
            "--",
            "true",
        ]);
        assert!(!out.status.success());
        assert!(!env.ok(&["sandbox", "ls"]).contains("r3"));
        // Without --rm it stays (as a docker container does).
        env.ok(&["run", "--name", "r4", "--network", "net1", "--", "true"]);
        assert!(env.ok(&["sandbox", "ls"]).contains("r4"));

        // Gateway counters.
        let stats = env.get("/networks/net1/stats");
        let gw = &stats["Gateway"];
        assert!(gw["FramesIn"].as_u64().unwrap() > 0, "{stats}");
        assert!(gw["DnsLocal"].as_u64().unwrap() >= 2, "{stats}");
        assert!(gw["Drops"].get("isolated").is_some(), "{stats}");
        let text = env.ok(&["network", "stats", "net1"]);
        assert!(text.contains("gateway: frames in"), "{text}");
    });
}

#[test]
fn published_port_bound_listed_and_released() {
    in_namespace("published_port_bound_listed_and_released", |env| {
        env.network("net1", "10.71.0.0/24");
        env.ok(&[
            "sandbox",
            "create",
            "-p",
            "127.0.0.1:18080:8080",
            "-p",
            "9000/udp",
            "srv",
        ]);
        // Not bound before the sandbox joins a network.
        let sb = env.get("/sandboxes/srv");
        assert!(sb["Ports"]["8080/tcp"].is_null(), "{sb}");
        // The same host port again: 409, nothing made.
        let e = env.fails(&["sandbox", "create", "-p", "127.0.0.1:18080:80", "other"]);
        assert!(
            e.contains("port 18080/tcp is already in use on 127.0.0.1"),
            "{e}"
        );
        assert!(!env.ok(&["sandbox", "ls"]).contains("other"));
        let e = env.fails(&["sandbox", "create", "-p", "80/sctp", "other"]);
        assert!(e.contains("invalid publish spec"), "{e}");

        env.connect("net1", "srv");
        let ports = env.ok(&["port", "srv"]);
        assert!(ports.contains("8080/tcp -> 127.0.0.1:18080\n"), "{ports}");
        assert!(ports.contains("9000/udp -> 0.0.0.0:"), "{ports}");
        // Taken now for real.
        assert!(TcpListener::bind("127.0.0.1:18080").is_err());

        // A server in the sandbox; a client on the daemon's host.
        let mut server = Command::new(tapnet_bin())
            .args(["-H", &format!("unix://{}", env.socket.display()), "exec", "srv", "--"])
            .args([
                python3(),
                "-c",
                "import socket\ns=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
                 s.bind(('0.0.0.0', 8080)); s.listen(1)\nc, a = s.accept()\nc.recv(1)\nc.sendall(('hello from ' + a[0]).encode()); c.close()",
            ])
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let reply = loop {
            let mut buf = String::new();
            let got = TcpStream::connect("127.0.0.1:18080").and_then(|mut s| {
                s.set_read_timeout(Some(Duration::from_secs(3)))?;
                s.write_all(b"x")?;
                s.read_to_string(&mut buf)?;
                Ok(buf)
            });
            match got {
                Ok(b) if !b.is_empty() => break b,
                _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(200)),
                other => panic!("no answer through the published port: {other:?}"),
            }
        };
        // A loopback client is presented from the gateway address.
        assert_eq!(reply, "hello from 10.71.0.1");
        let _ = server.wait();

        // Released on rm.
        env.ok(&["sandbox", "rm", "srv"]);
        TcpListener::bind("127.0.0.1:18080").expect("port still taken after sandbox rm");
    });
}
