//! Encrypted overlay networks (`-o encrypted`): two "hosts" (the test's namespace and
//! a second network namespace on a veth underlay 192.0.2.1/24 ↔ 192.0.2.2/24), a real
//! etcd, both daemons with `--cluster-key-rotation 2s`. Traffic crosses sealed both
//! ways; a raw capture (AF_PACKET, python3) on the underlay veth never shows a marker
//! the sandboxes send, while the same capture does show it on an unencrypted overlay;
//! the keys rotate under a TCP stream and a ping without loss; a forged VXLAN datagram
//! is not delivered on the encrypted network (and is on the plain one); a replayed
//! datagram is delivered once on the encrypted network (twice on the plain one); a
//! restarted daemon gets the keys back from the store.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use serde_json::Value;
use std::process::Command;
use std::time::{Duration, Instant};
use tapnet_engine::store::KvStore;
use tapnet_tests::{in_namespace, python3, Env};

const MARKER: &str = "TAPNET-SECRET-MARKER-";
/// The underlay veth on host A's side (see `Env::second_host`).
const UNDERLAY: &str = "u-hostb";

/// Wait (at most 20 s) until `f` holds.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What a capture on the underlay saw.
#[derive(Debug)]
struct Capture {
    frames: u64,
    marker_hits: u64,
    vxlan: u64,
    /// Key ids of the VXLAN datagrams (bytes 8..12 of the UDP payload).
    key_ids: Vec<u32>,
}

const CAPTURE: &str = r#"
import socket, struct, sys, time
iface, secs, marker = sys.argv[1], float(sys.argv[2]), sys.argv[3].encode()
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(0x0003))
s.bind((iface, 0))
s.settimeout(0.2)
print("ready", flush=True)
end = time.time() + secs
n = hits = vx = 0
ids = set()
while time.time() < end:
    try:
        f = s.recv(65535)
    except socket.timeout:
        continue
    n += 1
    if marker in f:
        hits += 1
    if len(f) > 34 and f[12:14] == b"\x08\x00" and f[23] == 17:
        u = 14 + (f[14] & 0xF) * 4
        dport = struct.unpack("!H", f[u + 2:u + 4])[0]
        if dport in (4789, 4790):
            vx += 1
            p = f[u + 8:]
            if len(p) >= 12:
                ids.add(struct.unpack("!I", p[8:12])[0])
print(n, hits, vx, " ".join(map(str, sorted(ids))))
"#;

/// Capture on the underlay for `secs` while `traffic` runs (started once the
/// capture socket is open).
fn capture_while<T>(secs: f64, traffic: impl FnOnce() -> T) -> (Capture, T) {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(python3())
        .args(["-c", CAPTURE, UNDERLAY, &secs.to_string(), MARKER])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 for the capture");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready", "capture did not start");
    let t = traffic();
    line.clear();
    out.read_line(&mut line).unwrap();
    assert!(child.wait().unwrap().success());
    let mut it = line.split_whitespace();
    let mut num = || it.next().unwrap_or("0").parse::<u64>().unwrap();
    let (frames, marker_hits, vxlan) = (num(), num(), num());
    let key_ids = line
        .split_whitespace()
        .skip(3)
        .map(|s| s.parse().unwrap())
        .collect();
    (
        Capture {
            frames,
            marker_hits,
            vxlan,
            key_ids,
        },
        t,
    )
}

/// The pattern both ends of the TCP stream know (it contains the marker).
const PATTERN: &str = r#"pat = (b"TAPNET-SECRET-MARKER-" + bytes(range(256))) * 200"#;

/// A TCP server in `sb` of `env` on `ip:port` that checks every byte against the
/// pattern; prints "<bytes> <mismatched chunks>".
fn stream_server(env: &Env, sb: &str, ip: &str, port: u16) -> String {
    let code = format!(
        r#"
import socket
{PATTERN}
L = len(pat)
l = socket.socket()
l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("{ip}", {port}))
l.listen(1)
l.settimeout(60)
c, _ = l.accept()
c.settimeout(60)
off = bad = 0
while True:
    d = c.recv(65536)
    if not d:
        break
    i = 0
    while i < len(d):
        p = off % L
        k = min(len(d) - i, L - p)
        if d[i:i + k] != pat[p:p + k]:
            bad += 1
        i += k
        off += k
print(off, bad)
"#
    );
    let out = env.python(sb, &code);
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A TCP client in `sb` sending the pattern to `ip:port` until `stop` exists (at
/// least `min_bytes`); prints the bytes sent.
fn stream_client(env: &Env, sb: &str, ip: &str, port: u16, stop: &str, min_bytes: u64) -> u64 {
    let code = format!(
        r#"
import os, socket, time
{PATTERN}
for _ in range(100):
    try:
        c = socket.create_connection(("{ip}", {port}), timeout=60)
        break
    except OSError:
        time.sleep(0.1)
n = 0
while n < {min_bytes} or not os.path.exists("{stop}"):
    c.sendall(pat)
    n += len(pat)
    time.sleep(0.02)
c.close()
print(n)
"#
    );
    let out = env.python(sb, &code);
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// The send key id of network `id` in the store.
fn send_key(id: &str) -> u64 {
    let kv = tapnet_tests::etcd_client(Duration::from_secs(2)).unwrap();
    let rec = kv.range(&format!("keys/{id}")).unwrap();
    let v: Value = serde_json::from_slice(&rec[0].value).unwrap();
    v["send"].as_u64().unwrap()
}

/// A plain VXLAN datagram (VNI `vni`) carrying a UDP packet to `ip:7777` behind
/// `mac`, sent from host A to B's data path port.
fn forge(vni: u64, mac: &str, ip: &str) {
    let code = format!(
        r#"
import socket, struct
mac = bytes.fromhex("{mac}".replace(":", ""))
payload = b"FORGED-DATAGRAM"
udp = struct.pack("!HHHH", 5555, 7777, 8 + len(payload), 0) + payload
src = socket.inet_aton("{src}")
dst = socket.inet_aton("{ip}")
hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0, src, dst)
s = 0
for i in range(0, 20, 2):
    s += (hdr[i] << 8) + hdr[i + 1]
while s >> 16:
    s = (s & 0xFFFF) + (s >> 16)
hdr = hdr[:10] + struct.pack("!H", ~s & 0xFFFF) + hdr[12:]
eth = mac + bytes.fromhex("020000000099") + b"\x08\x00"
vx = struct.pack("!BBBBI", 0x08, 0, 0, 0, {vni} << 8)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(5):
    u.sendto(vx + eth + hdr + udp, ("192.0.2.2", 4790))
"#,
        src = ip.rsplit_once('.').map(|(n, _)| format!("{n}.99")).unwrap(),
    );
    let out = Command::new(python3())
        .args(["-c", &code])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

/// Whether a UDP listener in `sb` on `ip:7777` gets the forged datagram within 3 s.
fn receives_forged(env: &Env, sb: &str, ip: &str, send: impl FnOnce()) -> bool {
    let code = format!(
        r#"
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("{ip}", 7777))
s.settimeout(3)
print("ready", flush=True)
try:
    d, _ = s.recvfrom(2048)
    print(d.decode(errors="replace"))
except socket.timeout:
    print("nothing")
"#
    );
    let out = std::thread::scope(|s| {
        let h = s.spawn(|| env.python(sb, &code));
        std::thread::sleep(Duration::from_millis(800));
        send();
        h.join().unwrap()
    });
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.contains("FORGED-DATAGRAM")
}

/// Capture the first VXLAN datagram to B (UDP port 4790) whose UDP payload is
/// `len` bytes, and send it again to B from host A.
const REPLAY: &str = r#"
import socket, struct, sys, time
iface, want = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(0x0003))
s.bind((iface, 0))
s.settimeout(0.2)
print("ready", flush=True)
end = time.time() + 10
while time.time() < end:
    try:
        f = s.recv(65535)
    except socket.timeout:
        continue
    if len(f) > 34 and f[12:14] == b"\x08\x00" and f[23] == 17:
        u = 14 + (f[14] & 0xF) * 4
        dport, ulen = struct.unpack("!HH", f[u + 2:u + 6])
        if dport == 4790 and ulen - 8 == want:
            out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            out.sendto(f[u + 8:u + ulen], ("192.0.2.2", 4790))
            print("replayed", flush=True)
            break
"#;

/// Send one 777-byte UDP datagram from `sa` (A) to `ip:7777` in `sb` (B) while a
/// capture on the underlay replays its VXLAN datagram (UDP payload `vxlan_len`
/// bytes); returns how many copies B's listener got.
fn copies_after_replay(a: &Env, b: &Env, ip: &str, vxlan_len: usize) -> u64 {
    use std::io::{BufRead, BufReader};
    let listener = format!(
        r#"
import socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("{ip}", 7777))
s.settimeout(0.5)
print("ready", flush=True)
n = 0
end = time.time() + 5
while time.time() < end:
    try:
        d, _ = s.recvfrom(4096)
        if d == b"R" * 777:
            n += 1
    except socket.timeout:
        pass
print(n)
"#
    );
    std::thread::scope(|s| {
        let h = s.spawn(|| b.python("sb", &listener));
        let mut cap = Command::new(python3())
            .args(["-c", REPLAY, UNDERLAY, &vxlan_len.to_string()])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(cap.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready");
        std::thread::sleep(Duration::from_millis(800));
        a.exec_ok(
            "sa",
            &[
                python3(),
                "-c",
                &format!(
                    "import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'R' * 777, ('{ip}', 7777))"
                ),
            ],
        );
        line.clear();
        out.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "replayed", "the datagram was not captured");
        assert!(cap.wait().unwrap().success());
        let got = h.join().unwrap();
        assert!(got.status.success(), "{got:?}");
        let text = String::from_utf8_lossy(&got.stdout).to_string();
        text.lines().last().unwrap().trim().parse().unwrap()
    })
}

#[test]
fn encrypted_overlay_hides_traffic_and_rotates_keys_without_loss() {
    in_namespace(
        "encrypted_overlay_hides_traffic_and_rotates_keys_without_loss",
        |a| {
            let (etcd, mut b) = a.etcd_two_hosts(
                &["--cluster-key-rotation", "2s"],
                &["--cluster-key-rotation", "2s"],
            );

            // Bad values: 400s naming the option; encrypted + static peers: 400.
            for (opts, want) in [
                (r#"{"encrypted":"false"}"#, "encrypted"),
                (
                    r#"{"encrypted":"","com.tapnet.overlay.peers":"192.0.2.2"}"#,
                    "com.tapnet.overlay.peers",
                ),
            ] {
                let (code, v) = a.api(
                    "POST",
                    "/networks/create",
                    Some(&format!(
                        r#"{{"Name":"bad","Driver":"overlay","IPAM":{{"Config":[{{"Subnet":"10.97.0.0/24"}}]}},"Options":{opts}}}"#
                    )),
                );
                assert_eq!(code, 400, "{opts}: {v}");
                assert!(v["message"].as_str().unwrap().contains(want), "{v}");
            }

            // One encrypted and one plain overlay, created on A.
            a.ok(&[
                "network",
                "create",
                "-d",
                "overlay",
                "-o",
                "encrypted",
                "--subnet",
                "10.91.0.0/24",
                "sec",
            ]);
            a.ok(&[
                "network",
                "create",
                "-d",
                "overlay",
                "--subnet",
                "10.92.0.0/24",
                "plain",
            ]);
            let sec_id = a.get("/networks/sec")["Id"].as_str().unwrap().to_string();
            assert!(send_key(&sec_id) >= 1, "keys/<id> written with the network");
            eventually("B has both networks", || {
                b.api("GET", "/networks/sec", None).0 == 200
                    && b.api("GET", "/networks/plain", None).0 == 200
            });
            a.sandbox("sa");
            b.sandbox("sb");
            for net in ["sec", "plain"] {
                a.ok(&["network", "connect", net, "sa"]);
                b.ok(&["network", "connect", net, "sb"]);
            }
            // Inner MTU: underlay 1500 − 50 − 32 (encryption) on sec, − 50 on plain.
            let (ipa, ipb) = (a.ip_of("sec", "sa"), b.ip_of("sec", "sb"));
            let (pa, pb) = (a.ip_of("plain", "sa"), b.ip_of("plain", "sb"));
            let dev_mtu = |env: &Env, sb: &str, ip: &str| -> u32 {
                let dev = env.exec_ok(sb, &["ip", "-o", "-4", "addr", "show", "to", ip]);
                let dev = dev.split_whitespace().nth(1).unwrap().to_string();
                env.exec_ok(sb, &["cat", &format!("/sys/class/net/{dev}/mtu")])
                    .trim()
                    .parse()
                    .unwrap()
            };
            assert_eq!(dev_mtu(a, "sa", &ipa), 1418);
            assert_eq!(dev_mtu(&b, "sb", &ipb), 1418);
            assert_eq!(dev_mtu(a, "sa", &pa), 1450);

            // Ping both ways on both networks.
            eventually("a reaches b (sec)", || a.ping("sa", &ipb, 1));
            eventually("b reaches a (sec)", || b.ping("sb", &ipa, 1));
            eventually("a reaches b (plain)", || a.ping("sa", &pb, 1));

            // The control: on the plain network the capture sees the marker, so the
            // check below can fail.
            let stop = a.root.join("stop-plain");
            std::fs::write(&stop, b"").unwrap();
            let (cap, got) = capture_while(4.0, || {
                std::thread::scope(|s| {
                    let server = s.spawn(|| stream_server(&b, "sb", &pb, 5001));
                    std::thread::sleep(Duration::from_millis(500));
                    let sent = stream_client(a, "sa", &pb, 5001, stop.to_str().unwrap(), 1 << 20);
                    (sent, server.join().unwrap())
                })
            });
            assert_eq!(got.1, format!("{} 0", got.0), "plain stream");
            assert!(
                cap.marker_hits > 0,
                "control capture saw no marker: {cap:?}"
            );

            // The encrypted network: a TCP stream from A to B (every byte checked) and a
            // ping from B to A run while the keys rotate several times; the capture on
            // the underlay sees sealed datagrams under more than one key id, never the
            // marker.
            let first = send_key(&sec_id);
            let stop = a.root.join("stop-sec");
            let (cap, (sent, got, ping)) = capture_while(6.0, || {
                std::thread::scope(|s| {
                    let server = s.spawn(|| stream_server(&b, "sb", &ipb, 5002));
                    let ping = s.spawn(|| {
                        b.exec(
                            "sb",
                            &["ping", "-n", "-q", "-c", "50", "-i", "0.2", "-W", "2", &ipa],
                        )
                    });
                    let stopper = s.spawn(|| {
                        eventually("three key rotations", || send_key(&sec_id) >= first + 3);
                        std::fs::write(&stop, b"").unwrap();
                    });
                    std::thread::sleep(Duration::from_millis(500));
                    let sent = stream_client(a, "sa", &ipb, 5002, stop.to_str().unwrap(), 1 << 20);
                    stopper.join().unwrap();
                    (sent, server.join().unwrap(), ping.join().unwrap())
                })
            });
            assert_eq!(
                got,
                format!("{sent} 0"),
                "every byte, in order, across rotations"
            );
            let ping_out = String::from_utf8_lossy(&ping.stdout).to_string();
            assert!(ping_out.contains(" 0% packet loss"), "{ping_out}");
            assert!(send_key(&sec_id) >= first + 3);
            assert!(cap.vxlan > 100, "{cap:?}");
            assert_eq!(cap.marker_hits, 0, "plaintext on the underlay: {cap:?}");
            assert!(
                cap.key_ids.len() >= 2,
                "no rotation seen on the wire: {cap:?}"
            );
            assert!(cap.frames >= cap.vxlan);

            // Both ways, after the rotations.
            assert!(a.ping("sa", &ipb, 2));
            assert!(b.ping("sb", &ipa, 2));

            // A forged (unsealed) datagram with the network's VNI is not delivered on
            // the encrypted network; the same forgery is on the plain one.
            let vni = |net: &str| -> u64 {
                a.get(&format!("/networks/{net}"))["Options"]
                    ["com.docker.network.driver.overlay.vxlanid_list"]
                    .as_str()
                    .unwrap()
                    .parse()
                    .unwrap()
            };
            let (vsec, vplain) = (vni("sec"), vni("plain"));
            let mac_of = |ip: &str| -> String {
                let dev = b.exec_ok("sb", &["ip", "-o", "-4", "addr", "show", "to", ip]);
                let dev = dev.split_whitespace().nth(1).unwrap().to_string();
                b.exec_ok("sb", &["cat", &format!("/sys/class/net/{dev}/address")])
                    .trim()
                    .to_string()
            };
            let (msec, mplain) = (mac_of(&ipb), mac_of(&pb));
            assert!(
                receives_forged(&b, "sb", &pb, || forge(vplain, &mplain, &pb)),
                "the forgery must work on a plain network (else the check proves nothing)"
            );
            assert!(
                !receives_forged(&b, "sb", &ipb, || forge(vsec, &msec, &ipb)),
                "a forged datagram was delivered on the encrypted network"
            );
            // The network still works.
            assert!(a.ping("sa", &ipb, 1));

            // A captured datagram replayed to B: delivered twice on the plain network
            // (the control), once on the encrypted one (the replay window).
            // VXLAN 8 + Ethernet 14 + IPv4 20 + UDP 8 + 777, plus 32 when sealed.
            assert_eq!(copies_after_replay(a, &b, &pb, 827), 2);
            assert_eq!(copies_after_replay(a, &b, &ipb, 827 + 32), 1);

            // A restarted daemon gets the current keys from the store (its port starts
            // with none and a new nonce salt) and traffic flows both ways again.
            b.stop_daemon();
            b.start_daemon_with(&tapnet_tests::hostb_etcd_flags(&[
                "--cluster-key-rotation",
                "2s",
            ]));
            eventually("a reaches b after B's restart", || a.ping("sa", &ipb, 1));
            eventually("b reaches a after B's restart", || b.ping("sb", &ipa, 1));

            // Removing the network removes its keys.
            for (env, sb) in [(&*a, "sa"), (&b, "sb")] {
                env.ok(&["network", "disconnect", "sec", sb]);
            }
            a.ok(&["network", "rm", "sec"]);
            let kv = tapnet_tests::etcd_client(Duration::from_secs(2)).unwrap();
            assert!(kv.range("keys/").unwrap().is_empty());
            drop(b);
            drop(etcd);
        },
    );
}

#[test]
fn encrypted_overlay_needs_a_cluster_store() {
    in_namespace("encrypted_overlay_needs_a_cluster_store", |a| {
        let (code, v) = a.api(
            "POST",
            "/networks/create",
            Some(r#"{"Name":"sec","Driver":"overlay","IPAM":{"Config":[{"Subnet":"10.91.0.0/24"}]},"Options":{"encrypted":""}}"#),
        );
        assert_eq!(code, 400, "{v}");
        let msg = v["message"].as_str().unwrap();
        assert!(
            msg.contains("cluster store") && msg.contains("encrypted"),
            "{msg}"
        );
        // Nothing was made: the name and the subnet are free.
        assert_eq!(a.api("GET", "/networks/sec", None).0, 404);
        a.ok(&[
            "network",
            "create",
            "-d",
            "overlay",
            "--subnet",
            "10.91.0.0/24",
            "sec",
        ]);
        // The CLI's `-o encrypted` reaches the daemon as the option with no value.
        let msg = a.fails(&[
            "network",
            "create",
            "-d",
            "overlay",
            "-o",
            "encrypted",
            "--subnet",
            "10.95.0.0/24",
            "sec2",
        ]);
        assert!(msg.contains("cluster store"), "{msg}");
    });
}
