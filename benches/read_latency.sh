#!/usr/bin/env bash
# Reads never wait for writes: the latency of `GET /networks` while 20 connects run
# concurrently (each on its own sandbox), against the same GET on an idle daemon.
#
#   bash benches/read_latency.sh [CONNECTS] [ROUNDS]   (defaults 20 and 5)
#
# Runs inside a private user+net+mount namespace (nothing reaches the host); the exec
# root is a tmpfs, the data root a directory on the real disk under target/, so
# commits pay real fsyncs. Prints the GET latency percentiles and the maximum for the
# idle daemon and under the connect storm, and how long a storm takes with and without
# the reader (on 2 cores the reader competes with the connects for CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
CONNECTS=${1:-20}
ROUNDS=${2:-5}

if [ -z "${TAPNET_RL_INNER:-}" ]; then
    cargo build --release --bins -p tapnet-engine -p tapnet-cli >&2
    DATA=$(mktemp -d "$PWD/target/read-latency.XXXXXX")
    trap 'rm -rf "$DATA"' EXIT
    TAPNET_RL_INNER=1 TAPNET_RL_DATA=$DATA unshare -Urnm --propagation private bash "$0" "$@"
    echo "machine: $(nproc) cores, $(uname -r), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
    exit 0
fi

mount -t tmpfs rl /run
mkdir -p /run/tapnet
ip link set lo up
SOCK=/run/tapnet/tapnet.sock
target/release/tapnetd -H "unix://$SOCK" --data-root "$TAPNET_RL_DATA" --exec-root /run/tapnet \
    >/run/tapnetd.log 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null; wait $PID 2>/dev/null || true' EXIT
for _ in $(seq 100); do [ -S "$SOCK" ] && break; sleep 0.1; done

python3 - "$SOCK" "$CONNECTS" "$ROUNDS" <<'PY'
import http.client, json, socket, sys, threading, time

sock, connects, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

class Conn(http.client.HTTPConnection):
    def __init__(self):
        super().__init__("tapnet", timeout=60)
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(sock)

def call(method, path, body=None):
    c = Conn()
    c.request(method, path, body=json.dumps(body) if body is not None else None,
              headers={"Content-Type": "application/json"})
    r = c.getresponse()
    data = r.read()
    c.close()
    if r.status >= 300:
        raise SystemExit(f"{method} {path}: {r.status} {data!r}")
    return data

def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))]

def reads_while(busy):
    """GET /networks back to back while busy() is true; latencies in ms."""
    out = []
    while busy():
        t = time.perf_counter()
        call("GET", "/networks")
        out.append((time.perf_counter() - t) * 1000)
    return out

call("POST", "/networks/create", {"Name": "rl", "IPAM": {"Config": [{"Subnet": "10.99.0.0/16"}]}})
idle_end = time.perf_counter() + 2
idle = reads_while(lambda: time.perf_counter() < idle_end)

storm, storm_secs = [], []
for r in range(rounds):
    names = [f"r{r}s{i}" for i in range(connects)]
    for n in names:
        call("POST", "/sandboxes", {"Name": n})
    done = []
    def connect(n):
        call("POST", "/networks/rl/connect", {"Container": n})
        done.append(n)
    threads = [threading.Thread(target=connect, args=(n,)) for n in names]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    storm += reads_while(lambda: len(done) < len(names))
    for t in threads:
        t.join()
    storm_secs.append(time.perf_counter() - t0)

# The same storms with no reader, for the connect time alone.
quiet_secs = []
for r in range(rounds):
    names = [f"q{r}s{i}" for i in range(connects)]
    for n in names:
        call("POST", "/sandboxes", {"Name": n})
    threads = [threading.Thread(target=call, args=("POST", "/networks/rl/connect", {"Container": n})) for n in names]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    quiet_secs.append(time.perf_counter() - t0)

def row(name, xs):
    print(f"{name:<28} n={len(xs):5d}  p50={pct(xs,0.5):7.2f} ms  p99={pct(xs,0.99):7.2f} ms  max={max(xs):7.2f} ms")

print(f"GET /networks latency ({connects} concurrent connects x {rounds} rounds)")
row("idle daemon", idle)
row(f"during {connects} connects", storm)
med = lambda xs: sorted(xs)[len(xs) // 2] * 1000
print(f"{connects} concurrent connects: median {med(storm_secs):.0f} ms with the reader running, {med(quiet_secs):.0f} ms without")
PY
