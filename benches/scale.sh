#!/usr/bin/env bash
# Control-plane scale: connect latency (p50/p99) for N endpoints on one /16 network,
# daemon RSS at 100 idle endpoints, and the time until all N endpoints forward again
# after `kill -9` + restart.
#
#   bash benches/scale.sh [N] [RSS_AT]     (defaults 1000 and 100; needs root or
#                                           user namespaces, nsenter, ping)
#
# Runs inside a private user+net+mount namespace (nothing reaches the host). The exec
# root (namespace bind mounts, socket) is a tmpfs; the data root (tapnet.db) is a
# directory on the real disk under target/, so commits pay real fsyncs.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000}
RSS_AT=${2:-100}

if [ -z "${TAPNET_SCALE_INNER:-}" ]; then
    cargo build --release --bins -p tapnet-engine -p tapnet-benches >&2
    DATA=$(mktemp -d "$PWD/target/scale-data.XXXXXX")
    trap 'rm -rf "$DATA"' EXIT
    TAPNET_SCALE_INNER=1 TAPNET_SCALE_DATA=$DATA unshare -Urnm --propagation private bash "$0" "$@"
    echo "machine: $(nproc) cores, $(uname -r), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
    echo "data root filesystem: $(df -T "$DATA" | awk 'NR==2 {print $2}')"
    exit 0
fi

mount -t tmpfs scale /run
mkdir -p /run/tapnet
ip link set lo up
# Each endpoint is a tap plus a namespace: make sure the limits allow N of them.
ulimit -n 65536 2>/dev/null || true
target/release/scale target/release/tapnetd /run/tapnet "$TAPNET_SCALE_DATA" "$N" "$RSS_AT"
