#!/usr/bin/env bash
# tapnet's main job on a fresh machine: build, start tapnetd on its defaults
# (socket /run/tapnet/tapnet.sock, data /var/lib/tapnet, exec root /run/tapnet), and
# show two sandboxes talking through tapnet's userspace switch. Everything it makes
# lives in network namespaces it creates; it removes them and stops the daemon at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

# protoc: the etcd client (the cluster store) compiles etcd's protobufs at build time.
command -v ping >/dev/null && command -v curl >/dev/null && command -v python3 >/dev/null &&
    command -v protoc >/dev/null ||
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        iputils-ping iproute2 curl python3 protobuf-compiler >/dev/null; }
cargo build --release --bins
BIN=target/release
TAPNET="$BIN/tapnet"

started=""
if ! "$TAPNET" network ls >/dev/null 2>&1; then
    "$BIN/tapnetd" &
    started=$!
    for _ in $(seq 100); do "$TAPNET" network ls >/dev/null 2>&1 && break; sleep 0.1; done
fi
cleanup() {
    "$TAPNET" sandbox rm demo-alpha demo-beta >/dev/null 2>&1 || true
    "$TAPNET" network rm demo >/dev/null 2>&1 || true
    if [ -n "$started" ]; then kill -TERM "$started" 2>/dev/null || true; wait "$started" 2>/dev/null || true; fi
}
trap cleanup EXIT

set -x
"$TAPNET" network create --subnet 10.123.0.0/24 demo
"$TAPNET" sandbox create demo-alpha
"$TAPNET" sandbox create -p 127.0.0.1:18080:8000 demo-beta
"$TAPNET" network connect demo demo-alpha
"$TAPNET" network connect --alias web demo demo-beta
"$TAPNET" network ls
"$TAPNET" exec demo-alpha -- ip -brief addr show eth0
# By name, through the embedded DNS on the gateway:
"$TAPNET" exec demo-alpha -- ping -c 3 demo-beta
"$TAPNET" exec demo-beta -- ping -c 3 demo-alpha
# A published port: a web server inside demo-beta, reached from the host's loopback.
"$TAPNET" exec demo-beta -- python3 -m http.server 8000 --bind 0.0.0.0 >/dev/null 2>&1 &
web=$!
for _ in $(seq 50); do curl -fsS -o /dev/null http://127.0.0.1:18080/ 2>/dev/null && break; sleep 0.1; done
curl -sS -o /dev/null -w 'GET http://127.0.0.1:18080/ -> %{http_code}\n' http://127.0.0.1:18080/
kill "$web"; wait "$web" 2>/dev/null || true
"$TAPNET" port demo-beta
# A one-shot sandbox, removed afterwards:
"$TAPNET" run --rm --network demo -- ping -c 1 web
"$TAPNET" network stats demo
"$TAPNET" network fdb demo
set +x
if command -v docker >/dev/null; then
    echo "+ docker -H unix:///run/tapnet/tapnet.sock network ls"
    docker -H unix:///run/tapnet/tapnet.sock network ls
fi
echo "demo OK: sandboxes talked through tapnet's userspace switch, by name, and through a published port"
