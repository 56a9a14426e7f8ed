#!/usr/bin/env bash
# Cluster scale on one machine, a rehearsal for many: N "hosts" (network namespaces on one
# kernel-bridge underlay, one tapnetd each, one etcd), SANDBOXES sandboxes per host on one
# global overlay network. Reports:
#   - time from a connect on one host until every other host reaches the new endpoint
#     (ping by IP, or by name with MODE=name) p50/p99 over SAMPLES connects;
#   - etcd requests (grpc_server_handled_total) and bytes (etcd_network_client_grpc_
#     received/sent_bytes_total) per connect, from etcd's /metrics before/after;
#   - each daemon's RSS and CPU while idle (from /proc, over IDLE seconds);
#   - time until every other host forgets a killed host (kill -9 + its namespace
#     deleted; "forgotten": the host's tunnel no longer answers ARP for the dead
#     endpoint's address, i.e. it dropped the endpoint; --cluster-ttl TTL).
#
#   bash benches/cluster.sh [N] [SANDBOXES]    (defaults 30 and 10)
#   env: MODE=ip|name (ip), SAMPLES (20), TTL (5), IDLE (10), BUILD=release|debug
#
# Needs root or user namespaces, nsenter, ip, etcd (Debian etcd-server), curl, python3.
# Runs inside a private user+net+mount namespace: nothing reaches the host.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-30}
PER=${2:-10}
MODE=${MODE:-ip}
SAMPLES=${SAMPLES:-20}
TTL=${TTL:-5}
IDLE=${IDLE:-10}
BUILD=${BUILD:-release}

if [ -z "${TAPNET_CLUSTER_INNER:-}" ]; then
    if [ "$BUILD" = release ]; then
        cargo build --release --bins -p tapnet-engine -p tapnet-cli >&2
    else
        cargo build --bins -p tapnet-engine -p tapnet-cli >&2
    fi
    TAPNET_CLUSTER_INNER=1 unshare -Urnm --propagation private bash "$0" "$@"
    echo "machine: $(nproc) cores, $(uname -r), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
    echo "etcd: $(etcd --version | head -1)"
    exit 0
fi

BIN=$PWD/target/$BUILD
# The system interpreter: a version manager's shim costs ~0.2 s a start.
PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3
W=/run/cluster
mount -t tmpfs cluster /run
mkdir -p /run/netns "$W"
ip link set lo up
ulimit -n 65536 2>/dev/null || true
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

now() { date +%s.%N; }
tn() { "$BIN/tapnet" -H "unix://$W/h$1/run/tapnet.sock" "${@:2}"; }
api() { curl -sf --unix-socket "$W/h$1/run/tapnet.sock" "http://tapnet$2"; }
ipof() { api "$1" "/sandboxes/$2" | $PY -c 'import json,sys; print(json.load(sys.stdin)["Endpoints"]["ov"]["IPv4Address"].split("/")[0])'; }

# The underlay and etcd.
ip link add ul0 type bridge
ip addr add 192.0.2.254/24 dev ul0
ip link set ul0 up
etcd --data-dir "$W/etcd" --listen-client-urls http://0.0.0.0:2379 \
    --advertise-client-urls http://192.0.2.254:2379 --listen-peer-urls http://127.0.0.1:2380 \
    --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster default=http://127.0.0.1:2380 >"$W/etcd.log" 2>&1 &
ETCD_PID=$!
PIDS+=("$ETCD_PID")
until curl -sf http://127.0.0.1:2379/health >/dev/null; do sleep 0.1; done

# The hosts.
declare -A DPID
for i in $(seq 1 "$N"); do
    ip netns add "h$i"
    ip link add "u-h$i" type veth peer name eth0 netns "h$i"
    ip link set "u-h$i" master ul0 up
    ip -n "h$i" addr add "192.0.2.$i/24" dev eth0
    ip -n "h$i" link set eth0 up
    ip -n "h$i" link set lo up
    mkdir -p "$W/h$i"
    nsenter --net="/run/netns/h$i" "$BIN/tapnetd" -H "unix://$W/h$i/run/tapnet.sock" \
        --exec-root "$W/h$i/run" --data-root "$W/h$i/data" \
        --cluster-store etcd://192.0.2.254:2379 --cluster-advertise "192.0.2.$i" \
        --data-path-addr "192.0.2.$i" --cluster-ttl "$TTL" --docker-plugin=false >"$W/h$i/log" 2>&1 &
    DPID[$i]=$!
    PIDS+=("${DPID[$i]}")
done
for i in $(seq 1 "$N"); do
    until tn "$i" network ls >/dev/null 2>&1; do sleep 0.1; done
done
echo "hosts: $N, sandboxes per host: $PER, mode: $MODE, cluster-ttl: $TTL s, build: $BUILD"

tn 1 network create -d overlay --subnet 10.96.0.0/16 ov >/dev/null
for i in $(seq 1 "$N"); do
    until tn "$i" network inspect ov >/dev/null 2>&1; do sleep 0.1; done
done

metrics() {
    curl -s http://127.0.0.1:2379/metrics | awk '
        /^grpc_server_handled_total/ {r += $NF}
        /^etcd_network_client_grpc_received_bytes_total/ {rx += $NF}
        /^etcd_network_client_grpc_sent_bytes_total/ {tx += $NF}
        END {printf "%d %d %d\n", r, rx, tx}'
}

# gRPC requests handled by etcd, per method: sorted "METHOD COUNT" lines.
by_method() {
    curl -s http://127.0.0.1:2379/metrics | awk '
        /^grpc_server_handled_total/ {
            if (match($0, /grpc_method="[^"]*"/)) c[substr($0, RSTART + 13, RLENGTH - 14)] += $NF
        }
        END { for (m in c) printf "%s %d\n", m, c[m] }' | LC_ALL=C sort
}

# SANDBOXES per host, hosts in parallel (each host's connects in sequence).
read -r R0 RX0 TX0 < <(metrics)
T0=$(now)
JOBS=()
for i in $(seq 1 "$N"); do
    (
        for k in $(seq 0 $((PER - 1))); do
            tn "$i" sandbox create "s$i-$k" >/dev/null
            tn "$i" network connect ov "s$i-$k" >/dev/null
        done
    ) &
    JOBS+=($!)
done
wait "${JOBS[@]}"
T1=$(now)
got=0
for i in $(seq 1 "$N"); do
    c=$(api "$i" /networks/ov | $PY -c 'import json,sys; print(len(json.load(sys.stdin)["Containers"]))')
    got=$((got + c))
done
[ "$got" = $((N * PER)) ] || { echo "only $got of $((N * PER)) endpoints connected" >&2; exit 1; }
sleep 2
read -r R1 RX1 TX1 < <(metrics)
TOTAL=$((N * PER))
$PY - "$TOTAL" "$T0" "$T1" "$R0" "$R1" "$RX0" "$RX1" "$TX0" "$TX1" <<'EOF'
import sys
n, t0, t1 = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
r0, r1, rx0, rx1, tx0, tx1 = map(int, sys.argv[4:])
print(f"{n} connects (all hosts at once) in {t1 - t0:.1f} s")
print(f"etcd per connect: {(r1 - r0) / n:.1f} gRPC requests handled, "
      f"{(rx1 - rx0) / n / 1024:.1f} KiB received, {(tx1 - tx0) / n / 1024:.1f} KiB sent "
      f"(sent: watch events to every daemon)")
EOF

# Every host's probe sandbox (its first one) and where its namespace is.
probe_ns() { api "$1" "/sandboxes/s$1-0" | $PY -c 'import json,sys; print(json.load(sys.stdin)["NetnsPath"])'; }
declare -A PNS
for i in $(seq 1 "$N"); do PNS[$i]=$(probe_ns "$i"); done

# Propagation: a new endpoint on host k; every other host pings it until it answers.
LAT=()
CONN=()
EACH=()
read -r R0 RX0 TX0 < <(metrics)
by_method >"$W/methods.0"
[ "$SAMPLES" -le 250 ] || { echo "SAMPLES at most 250" >&2; exit 1; }
for s in $(seq 1 "$SAMPLES"); do
    k=$(( (s - 1) % N + 1 ))
    tn "$k" sandbox create "p$s" >/dev/null
    # A static address (10.96.200.s): nothing to look up between the connect and the probes.
    ip=10.96.200.$s
    t0=$(now)
    tn "$k" network connect --ip "$ip" ov "p$s" >/dev/null
    t1=$(now)
    if [ "$MODE" = name ]; then target="p$s"; else target=$ip; fi
    JOBS=()
    for i in $(seq 1 "$N"); do
        [ "$i" = "$k" ] && continue
        # One ping process per host: a request every 50 ms until the first reply (no spawn storm).
        if [ "$MODE" = name ]; then
            # Through `tapnet exec`: the sandbox's own resolv.conf (its embedded DNS).
            timeout 60 "$BIN/tapnet" -H "unix://$W/h$i/run/tapnet.sock" exec "s$i-0" -- sh -c "until ping -n -q -c 1 -i 0.05 -w 30 $target >/dev/null 2>&1; do sleep 0.05; done; date +%s.%N" >"$W/reach.$i" &
        else
            timeout 60 nsenter --net="${PNS[$i]}" sh -c "until ping -n -q -c 1 -i 0.05 -w 30 $target >/dev/null 2>&1; do sleep 0.05; done; date +%s.%N" >"$W/reach.$i" &
        fi
        JOBS+=($!)
    done
    wait "${JOBS[@]}"
    CONN+=("$($PY -c "print(($t1 - $t0) * 1000)")")
    last=$(cat "$W"/reach.* | sort -n | tail -1)
    for f in "$W"/reach.*; do EACH+=("$($PY -c "print(($(cat "$f") - $t0) * 1000)")"); done
    rm -f "$W"/reach.*
    LAT+=("$($PY -c "print(($last - $t0) * 1000)")")
done
read -r R1 RX1 TX1 < <(metrics)
by_method >"$W/methods.1"
$PY - "$N" "$MODE" "${#LAT[@]}" "${LAT[@]}" "${#CONN[@]}" "${CONN[@]}" "${EACH[@]}" <<'EOF'
import sys
a = sys.argv[1:]
n, mode = int(a[0]), a[1]
k = int(a[2]); lat_in_order = list(map(float, a[3:3 + k])); lat = sorted(lat_in_order); a = a[3 + k:]
k = int(a[0]); conn = sorted(map(float, a[1:1 + k])); each = sorted(map(float, a[1 + k:]))
def p(v, q):
    return v[min(len(v) - 1, int(q * len(v)))]
def line(v):
    return f"p50 {p(v, 0.5):.0f} ms, p99 {p(v, 0.99):.0f} ms, max {v[-1]:.0f} ms"
print(f"one connect at a time, {len(lat)} samples (times from the start of the connect call):")
print(f"  the connect call itself: {line(conn)}")
print(f"  reachable (by {mode}) from each other host: {line(each)}")
print(f"  reachable from all {n - 1} other hosts: {line(lat)}")
print("  per sample, in order (ms): " + " ".join(f"{x:.0f}" for x in lat_in_order))
EOF
$PY - "$SAMPLES" "$R0" "$R1" "$RX0" "$RX1" "$TX0" "$TX1" <<'EOF'
import sys
n = int(sys.argv[1]); r0, r1, rx0, rx1, tx0, tx1 = map(int, sys.argv[2:])
print(f"  etcd per connect (one at a time): {(r1 - r0) / n:.1f} gRPC requests handled, "
      f"{(rx1 - rx0) / n / 1024:.1f} KiB received, {(tx1 - tx0) / n / 1024:.1f} KiB sent")
EOF

echo "  etcd requests per connect (one at a time), by gRPC method:"
LC_ALL=C join -a 2 -e 0 -o 0,1.2,2.2 "$W/methods.0" "$W/methods.1" |
    awk -v s="$SAMPLES" '$3 > $2 { printf "    %-28s %.1f\n", $1, ($3 - $2) / s }'

# Idle: RSS and CPU of every daemon over IDLE seconds.
sleep 2
declare -A CPU0
for i in $(seq 1 "$N"); do CPU0[$i]=$(awk '{print $14 + $15}' "/proc/${DPID[$i]}/stat"); done
sleep "$IDLE"
STATS=()
for i in $(seq 1 "$N"); do
    c1=$(awk '{print $14 + $15}' "/proc/${DPID[$i]}/stat")
    rss=$(awk '/^VmRSS/ {print $2}' "/proc/${DPID[$i]}/status")
    STATS+=("$rss:$((c1 - ${CPU0[$i]}))")
done
$PY - "$IDLE" "$(getconf CLK_TCK)" "${STATS[@]}" <<'EOF'
import sys, statistics
idle, hz = float(sys.argv[1]), int(sys.argv[2])
rss = sorted(int(x.split(":")[0]) / 1024 for x in sys.argv[3:])
cpu = sorted(int(x.split(":")[1]) / hz / idle * 100 for x in sys.argv[3:])
print(f"idle daemons: RSS min/median/max {rss[0]:.1f}/{statistics.median(rss):.1f}/{rss[-1]:.1f} MiB; "
      f"CPU min/median/max {cpu[0]:.2f}/{statistics.median(cpu):.2f}/{cpu[-1]:.2f} % of a core")
EOF

# A host dies: how long until every other host forgets its endpoints.
cat >"$W/arp.py" <<'EOF'
import socket, struct, sys, time, fcntl
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806))
s.bind(("eth0", 0))
mac = s.getsockname()[4]
ip = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", b"eth0"))[20:24]
tip = socket.inet_aton(sys.argv[1])
arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, mac, ip, b"\0" * 6, tip)
s.settimeout(0.05)
while True:
    s.send(b"\xff" * 6 + mac + b"\x08\x06" + arp)
    end, answered = time.time() + 0.3, False
    while time.time() < end and not answered:
        try:
            f = s.recv(2048)
        except socket.timeout:
            continue
        answered = len(f) >= 42 and f[12:14] == b"\x08\x06" and f[20:22] == b"\x00\x02" and f[28:32] == tip
    if not answered:
        print("%.6f" % time.time())
        sys.exit(0)
EOF
dead=$N
dead_ip=$(ipof "$dead" "s$dead-0")
{ kill -9 "${DPID[$dead]}"; wait "${DPID[$dead]}"; } 2>/dev/null || true
t0=$(now)
ip netns del "h$dead"
JOBS=()
for i in $(seq 1 $((N - 1))); do
    timeout 120 nsenter --net="${PNS[$i]}" $PY "$W/arp.py" "$dead_ip" >"$W/gone.$i" &
    JOBS+=($!)
done
wait "${JOBS[@]}"
last=$(cat "$W"/gone.* | sort -n | tail -1)
first=$(cat "$W"/gone.* | sort -n | head -1)
$PY -c "print(f'kill -9 of h$dead -> forgotten by all {$N - 1} other hosts: first {($first - $t0):.2f} s, last {($last - $t0):.2f} s (cluster-ttl $TTL s)')"
