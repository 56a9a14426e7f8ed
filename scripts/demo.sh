#!/usr/bin/env bash
# tapnet's main job on a fresh machine: build, start tapnetd on its defaults
# (socket /run/tapnet/tapnet.sock, data /var/lib/tapnet, exec root /run/tapnet), and
# show two sandboxes talking through tapnet's userspace switch. Everything it makes
# lives in network namespaces it creates; it removes them and stops the daemon at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v ping >/dev/null || { apt-get update -qq && apt-get install -y -qq iputils-ping iproute2 >/dev/null; }
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
"$TAPNET" sandbox create demo-beta
"$TAPNET" network connect demo demo-alpha
"$TAPNET" network connect demo demo-beta
"$TAPNET" network ls
"$TAPNET" exec demo-alpha -- ip -brief addr show eth0
"$TAPNET" exec demo-alpha -- ping -c 3 10.123.0.3
"$TAPNET" exec demo-beta -- ping -c 3 10.123.0.2
"$TAPNET" network stats demo
"$TAPNET" network fdb demo
set +x
echo "demo OK: two sandboxes talked through tapnet's userspace switch"
