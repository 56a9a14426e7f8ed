//! The `tapnet` CLI as a docker user meets it, against a real daemon in the test's
//! namespaces: `--format` (Go templates, `table`, `json`) byte for byte what the
//! stock docker client prints for the same networks, `-q`/`--no-trunc`/`--filter`,
//! `sandbox ls` with addresses, ports and age, `tapnet run` with docker run's flags
//! and exit codes (real traffic through a published port and between sandboxes),
//! `sandbox rm` refusing while processes run and `-f` ending them, exit codes of
//! usage and daemon errors, shell completion of network and sandbox names in real
//! bash, zsh and fish, and the man pages.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::Value;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use tapnet_tests::{docker_bin, in_namespace, python3, Env};

/// Exit code, stdout, stderr.
fn run(env: &Env, args: &[&str]) -> (i32, String, String) {
    parts(env.tapnet(args))
}

fn parts(out: Output) -> (i32, String, String) {
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn tapnet_bin() -> PathBuf {
    tapnet_tests::built_binary("tapnet")
}

fn host(env: &Env) -> String {
    format!("unix://{}", env.socket.display())
}

/// Sandbox names the daemon has, sorted.
fn sandbox_names(env: &Env) -> Vec<String> {
    let mut v: Vec<String> = env
        .get("/sandboxes")
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["Name"].as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

#[test]
fn formats_filters_and_exit_codes_match_docker() {
    docker_bin();
    in_namespace("formats_filters_and_exit_codes_match_docker", |env| {
        env.ok(&[
            "network",
            "create",
            "--subnet",
            "10.61.0.0/24",
            "--label",
            "team=a",
            "web",
        ]);
        env.ok(&[
            "network",
            "create",
            "--subnet",
            "10.62.0.0/24",
            "--internal",
            "--ipv6",
            "--subnet",
            "fd61::/64",
            "db",
        ]);
        // Whatever docker prints for these networks, tapnet prints, byte for byte.
        let formats: &[&[&str]] = &[
            &[],
            &["--format", "table"],
            &["--format", "json"],
            &["--format", "{{json .}}"],
            &["--format", "table {{.ID}}\\t{{.Name}}\\t{{.Labels}}"],
            &["--format", "table {{.Name}}\t{{upper .Driver}}\t{{.IPv6}}"],
            &[
                "--format",
                "{{.Name}} {{.IPv4}} {{.IPv6}} {{.Internal}} {{.CreatedAt}}",
            ],
            &[
                "--format",
                "{{join (split .Labels \"=\") \":\"}}|{{pad .Scope 1 1}}|{{truncate .Name 2}}",
            ],
            &["-q"],
            &["-q", "--no-trunc"],
            &["--no-trunc"],
            &["-q", "--format", "{{.Name}}"],
            &["-q", "--format", "table {{.Name}}"],
            &[
                "--filter",
                "driver=bridge",
                "--filter",
                "name=e",
                "--format",
                "{{.Name}}",
            ],
            &["--filter", "label=team=a", "-q"],
            &["--filter", "type=custom", "--format", "{{.Name}}"],
        ];
        for f in formats {
            let mut args = vec!["network", "ls"];
            args.extend_from_slice(f);
            let ours = env.ok(&args);
            let docker = env.docker_ok(&args);
            assert_eq!(ours, docker, "tapnet {args:?} differs from docker's");
        }
        // The same, exactly (so that a docker that changed cannot hide a regression).
        assert_eq!(
            env.ok(&["network", "ls", "--format", "{{.Name}}"]),
            "bridge\ndb\nhost\nnone\nweb\n"
        );
        let web_id = env.get("/networks/web")["Id"].as_str().unwrap().to_string();
        assert_eq!(
            env.ok(&[
                "network",
                "ls",
                "--filter",
                "label=team",
                "--format",
                "table {{.ID}}\t{{.Name}}\t{{.Labels}}"
            ]),
            format!(
                "NETWORK ID     NAME      LABELS\n{}   web       team=a\n",
                &web_id[..12]
            )
        );
        assert_eq!(
            env.ok(&["network", "ls", "-q", "--no-trunc", "-f", "name=web"]),
            format!("{web_id}\n")
        );
        let table = env.ok(&["network", "ls", "-f", "name=db"]);
        assert!(
            table.starts_with("NETWORK ID     NAME      DRIVER    SCOPE\n")
                && table.ends_with("   db        bridge    local\n"),
            "{table:?}"
        );

        // Inspect templates see docker's keys.
        let t = "{{.Name}} {{range .IPAM.Config}}{{.Subnet}} {{end}}{{.EnableIPv6}} {{.Internal}} {{len .Labels}} {{len .Containers}}";
        for net in ["web", "db"] {
            assert_eq!(
                env.ok(&["network", "inspect", "-f", t, net]),
                env.docker_ok(&["network", "inspect", "-f", t, net])
            );
        }
        assert_eq!(
            env.ok(&["network", "inspect", "--format", t, "web", "db"]),
            "web 10.61.0.0/24 false false 1 0\ndb 10.62.0.0/24 fd61::/64 true true 0 0\n"
        );
        let one: Value =
            serde_json::from_str(&env.ok(&["network", "inspect", "--format", "json", "web"]))
                .unwrap();
        assert_eq!(one[0]["Id"], web_id.as_str());
        assert_eq!(
            env.ok(&[
                "network",
                "inspect",
                "--format",
                "{{json .Labels}} {{index .Labels \"team\"}}",
                "web"
            ]),
            "{\"team\":\"a\"} a\n"
        );

        // Exit codes: usage 125, daemon and template errors 1, help 0, as docker's.
        for args in [
            &["network", "ls", "--bogus"][..],
            &["run", "--bogus", "true"],
        ] {
            let (code, _, err) = run(env, args);
            let docker_code = env.docker_with(&[], args).status.code().unwrap();
            assert_eq!((code, docker_code), (125, 125), "{args:?}: {err}");
        }
        // (docker exits 1 for a missing argument or an unknown command; tapnet's
        // usage errors are all 125.)
        for args in [
            &["network", "create"][..],
            &["nosuchcommand"],
            &["sandbox", "rm"],
            &["network", "connect", "--ip", "300.0.0.1", "web", "x"],
            &["network", "create", "--label", "novalue", "n"],
        ] {
            let (code, out, err) = run(env, args);
            assert_eq!((code, out.as_str()), (125, ""), "{args:?}: {err}");
            assert!(err.starts_with("error: "), "{args:?}: {err}");
        }
        assert_eq!(
            env.ok(&["network", "ls", "-q"]).lines().count(),
            5,
            "a usage error changed something"
        );
        let (code, _, err) = run(env, &["network", "inspect", "nope"]);
        assert_eq!(code, 1, "{err}");
        assert_eq!(err, "Error response from daemon: network nope not found\n");
        assert_eq!(
            env.docker_with(&[], &["network", "inspect", "nope"])
                .status
                .code(),
            Some(1)
        );
        let (code, out, err) = run(env, &["network", "ls", "--format", "{{.Nope}}"]);
        assert_eq!((code, out.as_str()), (1, ""), "{err}");
        assert_eq!(
            err,
            "template parsing error: template: map has no entry for key: Nope\n"
        );
        let (code, _, err) = run(env, &["network", "ls", "--format", "{{.Name"]);
        assert_eq!(code, 1);
        assert!(
            err.starts_with("template parsing error: template: "),
            "{err}"
        );
        for help in [
            &["--help"][..],
            &["network", "ls", "--help"],
            &["--version"],
            &[],
        ] {
            assert_eq!(run(env, help).0, 0, "{help:?}");
        }
        let (_, out, _) = run(env, &["network", "ls", "--help"]);
        for flag in ["--format", "--filter", "--quiet", "--no-trunc"] {
            assert!(out.contains(flag), "network ls --help lacks {flag}:\n{out}");
        }
    });
}

#[test]
fn sandbox_ls_shows_addresses_ports_and_age() {
    in_namespace("sandbox_ls_shows_addresses_ports_and_age", |env| {
        env.network("n1", "10.63.0.0/24");
        env.ok(&[
            "network",
            "create",
            "--ipv6",
            "--subnet",
            "10.64.0.0/24",
            "--subnet",
            "fd64::/64",
            "n2",
        ]);
        env.ok(&[
            "sandbox",
            "create",
            "-p",
            "127.0.0.1:18081:80",
            "-p",
            "127.0.0.1::53/udp",
            "alpha",
        ]);
        env.ok(&["network", "connect", "--ip", "10.63.0.10", "n1", "alpha"]);
        env.ok(&[
            "network",
            "connect",
            "--ip",
            "10.64.0.10",
            "--ip6",
            "fd64::10",
            "n2",
            "alpha",
        ]);
        env.sandbox("beta");
        env.ok(&["network", "connect", "--ip", "10.63.0.20", "n1", "beta"]);
        env.sandbox("gamma");

        // The 53/udp binding got a host port when alpha joined n1.
        let sb = env.get("/sandboxes/alpha");
        let udp = sb["Ports"]["53/udp"][0]["HostPort"]
            .as_str()
            .unwrap_or("")
            .to_string();
        assert!(udp.parse::<u16>().is_ok_and(|p| p > 0), "{sb}");
        let ports = format!("127.0.0.1:{udp}->53/udp, 127.0.0.1:18081->80/tcp");
        let f = "{{.Name}}|{{.Networks}}|{{.Addresses}}|{{.Ports}}|{{.Owned}}";
        let rows = env.ok(&["sandbox", "ls", "--format", f, "-f", "name=a"]);
        let mut rows: Vec<&str> = rows.lines().collect();
        rows.sort();
        assert_eq!(
            rows,
            [
                format!("alpha|n1,n2|10.63.0.10,10.64.0.10,fd64::10|{ports}|true").as_str(),
                "beta|n1|10.63.0.20||true",
                "gamma||||true",
            ]
        );

        // The default table: docker ps's columns, newest first, age in words.
        let table = env.ok(&["sandbox", "ls"]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[0].split_whitespace().collect::<Vec<_>>(),
            [
                "SANDBOX",
                "ID",
                "NAME",
                "CREATED",
                "NETWORKS",
                "ADDRESSES",
                "PORTS"
            ]
        );
        let alpha = lines.iter().find(|l| l.contains("alpha")).unwrap();
        let alpha_id = sb["Id"].as_str().unwrap();
        assert!(
            alpha.starts_with(&format!("{}   alpha", &alpha_id[..12])),
            "{alpha}"
        );
        assert!(
            alpha.contains(" ago ") || alpha.contains("Less than a second ago"),
            "{alpha}"
        );
        assert!(
            alpha.ends_with(&format!(
                "   n1,n2      10.63.0.10,10.64.0.10,fd64::10   {ports}"
            )),
            "{alpha}"
        );
        let ages = env.ok(&["sandbox", "ls", "--format", "{{.RunningFor}}"]);
        for age in ages.lines() {
            assert!(
                age == "Less than a second ago"
                    || (age.ends_with(" ago") && age.contains("second")),
                "{ages}"
            );
        }
        let created = env.ok(&[
            "sandbox",
            "ls",
            "-f",
            "name=beta",
            "--format",
            "{{.CreatedAt}}",
        ]);
        assert!(created.ends_with(" +0000 UTC\n"), "{created}");

        // Filters, -q, --no-trunc.
        let names = |args: &[&str]| {
            let mut a = vec!["sandbox", "ls", "--format", "{{.Name}}"];
            a.extend_from_slice(args);
            let mut v: Vec<String> = env.ok(&a).lines().map(str::to_string).collect();
            v.sort();
            v
        };
        assert_eq!(names(&["-f", "network=n1"]), ["alpha", "beta"]);
        assert_eq!(names(&["-f", "network=n2"]), ["alpha"]);
        let n2_id = env.get("/networks/n2")["Id"].as_str().unwrap().to_string();
        assert_eq!(
            names(&["-f", &format!("network={}", &n2_id[..10])]),
            ["alpha"]
        );
        assert_eq!(names(&["-f", "name=mm"]), ["gamma"]);
        assert_eq!(names(&["-f", &format!("id={}", &alpha_id[..8])]), ["alpha"]);
        assert_eq!(
            names(&["-f", "name=alpha", "-f", "name=beta"]),
            ["alpha", "beta"]
        );
        assert_eq!(
            names(&["-f", "name=alpha", "-f", "network=nope"]),
            Vec::<String>::new()
        );
        let (code, _, err) = run(env, &["sandbox", "ls", "-f", "label=x"]);
        assert_eq!((code, err.as_str()), (1, "invalid filter 'label'\n"));
        assert_eq!(
            env.ok(&["sandbox", "ls", "-q", "--no-trunc", "-f", "name=alpha"]),
            format!("{alpha_id}\n")
        );
        assert_eq!(
            env.ok(&["sandbox", "ls", "-q", "-f", "name=alpha"]),
            format!("{}\n", &alpha_id[..12])
        );
        let json: Value = serde_json::from_str(
            env.ok(&["sandbox", "ls", "--format", "json", "-f", "name=beta"])
                .trim(),
        )
        .unwrap();
        assert_eq!(json["Addresses"], "10.63.0.20");
        assert_eq!(json["Networks"], "n1");

        // Inspect templates.
        assert_eq!(
            env.ok(&["sandbox", "inspect", "-f", "{{.Name}} {{.Endpoints.n1.IPv4Address}} {{(index (index .Ports \"80/tcp\") 0).HostPort}}", "alpha"]),
            "alpha 10.63.0.10/24 18081\n"
        );
        assert_eq!(
            env.ok(&["sandbox", "inspect", "--format", "{{.NetnsPath}}", "beta"]),
            format!("{}\n", env.netns_path("beta").display())
        );
    });
}

/// The pid's network namespace is the one at `netns`.
fn in_netns(pid: u32, netns: &Path) -> bool {
    let a = std::fs::metadata(format!("/proc/{pid}/ns/net"));
    let b = std::fs::metadata(netns);
    matches!((a, b), (Ok(a), Ok(b)) if a.dev() == b.dev() && a.ino() == b.ino())
}

/// Wait until `pid` has entered the namespace at `netns`.
fn wait_in_netns(pid: u32, netns: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !in_netns(pid, netns) {
        assert!(
            Instant::now() < deadline,
            "pid {pid} never entered {}",
            netns.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sandbox_rm_refuses_while_processes_run_and_force_ends_them() {
    in_namespace(
        "sandbox_rm_refuses_while_processes_run_and_force_ends_them",
        |env| {
            env.network("n1", "10.65.0.0/24");
            env.sandbox("busy");
            env.connect("n1", "busy");
            let netns = env.netns_path("busy");
            // `tapnet exec` becomes the command (exec), so its pid is sleep's.
            let mut sleeper = Command::new(tapnet_bin())
                .args(["-H", &host(env), "exec", "busy", "--", "sleep", "1000"])
                .stdin(Stdio::null())
                .spawn()
                .unwrap();
            let pid = sleeper.id();
            wait_in_netns(pid, &netns);

            let (code, out, err) = run(env, &["sandbox", "rm", "busy"]);
            assert_eq!((code, out.as_str()), (1, ""), "{err}");
            assert_eq!(
            err,
            format!("Error response from daemon: cannot remove sandbox busy: processes run in it (pid {pid}); end them, or force the removal (tapnet sandbox rm -f)\n")
        );
            assert_eq!(sandbox_names(env), ["busy"], "a refused rm removed it");
            assert!(in_netns(pid, &netns), "a refused rm touched the process");
            // The API refuses what it does not know, by name, and changes nothing.
            let (code, v) = env.api("DELETE", "/sandboxes/busy?force=maybe", None);
            assert_eq!(code, 400, "{v}");
            let (code, v) = env.api("DELETE", "/sandboxes/busy?v=1", None);
            assert_eq!(code, 400, "{v}");
            assert!(v["message"].as_str().unwrap().contains("\"v\""), "{v}");
            let (code, v) = env.api("DELETE", "/sandboxes/busy", None);
            assert_eq!(code, 409, "{v}");
            assert_eq!(sandbox_names(env), ["busy"]);

            // -f: SIGTERM ends it; the sandbox and its namespace are gone.
            assert_eq!(env.ok(&["sandbox", "rm", "-f", "busy"]), "busy\n");
            let status = sleeper.wait().unwrap();
            assert_eq!(status.signal(), Some(libc::SIGTERM), "{status:?}");
            assert!(
                !Path::new(&format!("/proc/{pid}")).exists(),
                "pid {pid} still there"
            );
            assert!(sandbox_names(env).is_empty());
            assert!(
                !netns.exists(),
                "namespace file left at {}",
                netns.display()
            );
            assert!(env.get("/networks/n1")["Containers"]
                .as_object()
                .unwrap()
                .is_empty());

            // A process that ignores SIGTERM gets SIGKILL.
            env.sandbox("stubborn");
            let netns = env.netns_path("stubborn");
            let mut child = Command::new(tapnet_bin())
                .args([
                    "-H",
                    &host(env),
                    "exec",
                    "stubborn",
                    "--",
                    "sh",
                    "-c",
                    "trap '' TERM; echo ready; while :; do sleep 1; done",
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            let mut ready = [0u8; 6];
            std::io::Read::read_exact(child.stdout.as_mut().unwrap(), &mut ready).unwrap();
            assert_eq!(&ready, b"ready\n");
            let pid = child.id();
            assert!(in_netns(pid, &netns));
            assert_eq!(run(env, &["sandbox", "rm", "stubborn"]).0, 1);
            assert_eq!(
                env.ok(&["sandbox", "rm", "--force", "stubborn"]),
                "stubborn\n"
            );
            let status = child.wait().unwrap();
            assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
            assert!(sandbox_names(env).is_empty());

            // An adopted namespace's processes are not tapnet's: rm neither waits for
            // them nor signals them.
            let mut outside = Command::new("unshare")
                .args(["--net", "sleep", "1000"])
                .spawn()
                .unwrap();
            let ns = PathBuf::from(format!("/proc/{}/ns/net", outside.id()));
            let deadline = Instant::now() + Duration::from_secs(10);
            while std::fs::metadata(&ns).ok().map(|m| m.ino())
                == std::fs::metadata("/proc/self/ns/net").ok().map(|m| m.ino())
            {
                assert!(Instant::now() < deadline);
                std::thread::sleep(Duration::from_millis(20));
            }
            env.ok(&[
                "sandbox",
                "create",
                "--netns",
                ns.to_str().unwrap(),
                "adopted",
            ]);
            assert_eq!(env.ok(&["sandbox", "rm", "adopted"]), "adopted\n");
            assert_eq!(
                outside.try_wait().unwrap(),
                None,
                "rm ended a process it does not own"
            );
            let _ = outside.kill();
            let _ = outside.wait();
        },
    );
}

#[test]
fn run_like_docker_run() {
    in_namespace("run_like_docker_run", |env| {
        env.network("n1", "10.66.0.0/24");
        env.sandbox("peer");
        let peer = env.connect("n1", "peer");

        // --rm, traffic to a peer, the command's exit code, nothing left behind.
        let (code, out, err) = run(
            env,
            &[
                "run",
                "--rm",
                "--network",
                "n1",
                "--ip",
                "10.66.0.50",
                "--name",
                "r1",
                "--",
                "sh",
                "-c",
                &format!("ping -n -c 2 -W 2 {peer} >/dev/null && ip -4 -o addr show eth0; exit 7"),
            ],
        );
        assert_eq!(code, 7, "{out}{err}");
        assert!(out.contains("inet 10.66.0.50/24"), "{out}");
        assert_eq!(sandbox_names(env), ["peer"]);

        // Flags after the command are the command's; -e sets its environment; no
        // stdin without -i, stdin with it.
        let (code, out, _) = run(
            env,
            &[
                "run",
                "--rm",
                "--network",
                "n1",
                "-e",
                "GREETING=hi there",
                "sh",
                "-c",
                "echo \"$GREETING\" \"$@\"; cat",
                "arg0",
                "--rm",
                "-d",
                "--network",
                "x",
            ],
        );
        assert_eq!((code, out.as_str()), (0, "hi there --rm -d --network x\n"));
        let mut child = Command::new(tapnet_bin())
            .args([
                "-H",
                &host(env),
                "run",
                "--rm",
                "-i",
                "--network",
                "n1",
                "--",
                "tr",
                "a-z",
                "A-Z",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"piped in\n")
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "PIPED IN\n");
        assert_eq!(sandbox_names(env), ["peer"]);

        // 127 not found, 126 not executable, 125 tapnet's own failure; the sandbox
        // of a failed setup is removed again.
        let (code, _, err) = run(
            env,
            &["run", "--rm", "--network", "n1", "no-such-command-xyz"],
        );
        assert_eq!(code, 127, "{err}");
        assert!(err.contains("executable file not found in $PATH"), "{err}");
        let script = env.root.join("not-executable.sh");
        std::fs::write(&script, "#!/bin/sh\necho ran\n").unwrap();
        let (code, out, err) = run(
            env,
            &["run", "--rm", "--network", "n1", script.to_str().unwrap()],
        );
        assert_eq!((code, out.as_str()), (126, ""), "{err}");
        assert!(err.contains("permission denied"), "{err}");
        let (code, _, err) = run(env, &["run", "--rm", "--network", "nope", "true"]);
        assert_eq!(code, 125, "{err}");
        assert!(err.contains("network nope not found"), "{err}");
        let (code, _, err) = run(
            env,
            &[
                "run",
                "--network",
                "n1",
                "--ip",
                "10.99.0.5",
                "--name",
                "bad",
                "true",
            ],
        );
        assert_eq!(code, 125, "{err}");
        assert_eq!(sandbox_names(env), ["peer"]);

        // Without --rm the sandbox stays, connected, as a docker container does.
        let (code, _, err) = run(
            env,
            &[
                "run",
                "--name",
                "kept",
                "--network",
                "n1",
                "--network-alias",
                "k",
                "true",
            ],
        );
        assert_eq!(code, 0, "{err}");
        assert_eq!(sandbox_names(env), ["kept", "peer"]);
        assert_eq!(
            env.get("/sandboxes/kept")["Endpoints"]["n1"]["Aliases"][0],
            "k"
        );
        // A second run with the name is refused (125), the first one untouched.
        let (code, _, _) = run(env, &["run", "--name", "kept", "--network", "n1", "true"]);
        assert_eq!(code, 125);
        assert_eq!(sandbox_names(env), ["kept", "peer"]);

        // -d: the id at once, the command in the background; traffic through the
        // published port; `sandbox ls` shows the port; rm refuses, rm -f ends it.
        let server = format!("{} -m http.server --bind 0.0.0.0 8080", python3());
        let (code, out, err) = run(
            env,
            &[
                "run",
                "-d",
                "--name",
                "web",
                "--network",
                "n1",
                "-p",
                "127.0.0.1:18082:8080",
                "--",
                "sh",
                "-c",
                &server,
            ],
        );
        assert_eq!(code, 0, "{err}");
        let id = out.trim().to_string();
        assert_eq!(id, env.get("/sandboxes/web")["Id"].as_str().unwrap());
        let deadline = Instant::now() + Duration::from_secs(30);
        let body = loop {
            let o = Command::new("curl")
                .args(["-s", "-m", "5", "http://127.0.0.1:18082/"])
                .output()
                .unwrap();
            if o.status.success() && !o.stdout.is_empty() {
                break String::from_utf8_lossy(&o.stdout).into_owned();
            }
            assert!(
                Instant::now() < deadline,
                "no answer through the published port"
            );
            std::thread::sleep(Duration::from_millis(200));
        };
        assert!(body.contains("Directory listing"), "{body}");
        // And from the peer, by name, over the network.
        let o = env.exec("peer", &["curl", "-s", "-m", "5", "http://web:8080/"]);
        assert!(
            String::from_utf8_lossy(&o.stdout).contains("Directory listing"),
            "{o:?}"
        );
        assert_eq!(
            env.ok(&[
                "sandbox",
                "ls",
                "-f",
                "name=web",
                "--format",
                "{{.Ports}} {{.Addresses}}"
            ]),
            format!("127.0.0.1:18082->8080/tcp {}\n", env.ip_of("n1", "web"))
        );
        let (code, _, err) = run(env, &["sandbox", "rm", "web"]);
        assert_eq!(code, 1);
        assert!(err.contains("processes run in it (pid "), "{err}");
        assert_eq!(env.ok(&["sandbox", "rm", "-f", "web"]), "web\n");
        assert!(!sandbox_names(env).contains(&"web".to_string()));
        let o = Command::new("curl")
            .args(["-s", "-m", "2", "http://127.0.0.1:18082/"])
            .output()
            .unwrap();
        assert!(!o.status.success(), "the port still answers after rm -f");

        // -d --rm: the sandbox goes when the command ends by itself.
        let (code, _, err) = run(
            env,
            &[
                "run",
                "-d",
                "--rm",
                "--name",
                "brief",
                "--network",
                "n1",
                "sleep",
                "1",
            ],
        );
        assert_eq!(code, 0, "{err}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while sandbox_names(env).contains(&"brief".to_string()) {
            assert!(Instant::now() < deadline, "-d --rm left its sandbox");
            std::thread::sleep(Duration::from_millis(100));
        }
    });
}

/// Completions for `line` (the last word is the one completed) in real bash.
fn bash_complete(env: &Env, words: &[&str]) -> Vec<String> {
    let script = env.ok(&["completion", "bash"]);
    let path = env.root.join("tapnet.bash");
    std::fs::write(&path, script).unwrap();
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let cur = words.last().unwrap();
    let prog = format!(
        "source {}; COMP_WORDS=({}); COMP_CWORD={}; COMP_TYPE=9; \
         _clap_complete_tapnet tapnet '{cur}' '{}'; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        path.display(),
        quoted.join(" "),
        words.len() - 1,
        words[words.len().saturating_sub(2)],
    );
    let out = Command::new("bash").args(["-c", &prog]).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    lines(&out.stdout)
}

/// Completions in real zsh: the registration's function, with compsys's
/// `_describe` and `compdef` stood in by functions that print what they are given.
fn zsh_complete(env: &Env, words: &[&str]) -> Vec<String> {
    let script = env.ok(&["completion", "zsh"]);
    let path = env.root.join("_tapnet");
    std::fs::write(&path, script).unwrap();
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let prog = format!(
        "compdef() {{ : }}; _describe() {{ print -l -- \"${{(@P)3}}\" }}; source {}; \
         words=({}); CURRENT={}; _clap_dynamic_completer_tapnet",
        path.display(),
        quoted.join(" "),
        words.len(),
    );
    let out = Command::new("zsh")
        .args(["-f", "-c", &prog])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    // `value:description` (a subcommand's help) as zsh's _describe takes it.
    lines(&out.stdout)
        .into_iter()
        .map(|l| l.split(':').next().unwrap_or("").to_string())
        .collect()
}

/// Completions in real fish (`complete -C`), without descriptions.
fn fish_complete(env: &Env, words: &[&str]) -> Vec<String> {
    let script = env.ok(&["completion", "fish"]);
    let path = env.root.join("tapnet.fish");
    std::fs::write(&path, script).unwrap();
    // fish finds `tapnet` by name: put the built one first on PATH.
    let dir = tapnet_bin().parent().unwrap().to_path_buf();
    let path_var = format!(
        "{}:{}",
        dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let prog = format!(
        "source {}; complete -C '{}'",
        path.display(),
        words.join(" ")
    );
    let out = Command::new("fish")
        .args(["--no-config", "-c", &prog])
        .env("PATH", path_var)
        .env("HOME", &env.root)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    lines(&out.stdout)
        .into_iter()
        .map(|l| l.split('\t').next().unwrap_or("").to_string())
        .collect()
}

fn lines(b: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(b)
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

#[test]
fn completion_offers_names_in_bash_zsh_and_fish() {
    in_namespace("completion_offers_names_in_bash_zsh_and_fish", |env| {
        env.network("web-front", "10.67.0.0/24");
        env.network("web-back", "10.68.0.0/24");
        env.network("db", "10.69.0.0/24");
        env.sandbox("sb-one");
        env.sandbox("sb-two");
        env.sandbox("other");
        let h = host(env);
        let h = h.as_str();
        type Completer = fn(&Env, &[&str]) -> Vec<String>;
        let shells: [(&str, Completer); 3] = [
            ("bash", bash_complete),
            ("zsh", zsh_complete),
            ("fish", fish_complete),
        ];
        for (shell, complete) in shells {
            assert_eq!(
                complete(env, &["tapnet", "-H", h, "network", "inspect", "web"]),
                ["web-back", "web-front"],
                "{shell}"
            );
            assert_eq!(
                complete(env, &["tapnet", "-H", h, "network", "connect", "d"]),
                ["db"],
                "{shell}"
            );
            assert_eq!(
                complete(env, &["tapnet", "-H", h, "network", "connect", "db", "sb-"]),
                ["sb-one", "sb-two"],
                "{shell}"
            );
            assert_eq!(
                complete(env, &["tapnet", "-H", h, "sandbox", "rm", "-f", "o"]),
                ["other"],
                "{shell}"
            );
            assert_eq!(
                complete(env, &["tapnet", "-H", h, "run", "--network", "web-f"]),
                ["web-front"],
                "{shell}"
            );
            // Subcommands come from the clap definition.
            let subs = complete(env, &["tapnet", "-H", h, "sandbox", "i"]);
            assert_eq!(subs, ["inspect"], "{shell}");
        }
        // TAPNET_HOST is used when the line has no -H.
        let script = env.ok(&["completion", "bash"]);
        let path = env.root.join("t2.bash");
        std::fs::write(&path, script).unwrap();
        let prog = format!(
            "source {}; COMP_WORDS=(tapnet exec sb-t); COMP_CWORD=2; COMP_TYPE=9; \
             _clap_complete_tapnet tapnet sb-t exec; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            path.display()
        );
        let out = Command::new("bash")
            .args(["-c", &prog])
            .env("TAPNET_HOST", h)
            .output()
            .unwrap();
        assert_eq!(lines(&out.stdout), ["sb-two"]);
        // No daemon: no names, and no error.
        let prog = prog.replace("sb-t", "sb-");
        let out = Command::new("bash")
            .args(["-c", &prog])
            .env("TAPNET_HOST", "unix:///nonexistent.sock")
            .output()
            .unwrap();
        assert!(
            out.status.success() && lines(&out.stdout).is_empty(),
            "{out:?}"
        );

        // Man pages: one per command, from the same definition.
        let dir = env.root.join("man");
        let written = env.ok(&["man", dir.to_str().unwrap()]);
        let pages: Vec<&str> = written.lines().collect();
        assert!(pages.len() > 20, "{written}");
        for p in &pages {
            let text = std::fs::read_to_string(p).unwrap();
            assert!(text.contains(".SH SYNOPSIS"), "{p}");
        }
        let run_page = std::fs::read_to_string(dir.join("tapnet-run.1")).unwrap();
        for flag in [
            "\\-\\-rm",
            "\\-\\-network\\-alias",
            "\\-\\-ip6",
            "\\-\\-publish",
        ] {
            assert!(run_page.contains(flag), "tapnet-run.1 lacks {flag}");
        }
    });
}
