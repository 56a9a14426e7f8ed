#!/usr/bin/env bash
# Gateway throughput: tapnet's userspace NAT egress and published ports, against
# slirp4netns (the usual userspace alternative) and the direct kernel path, in one run.
#
#   bash benches/egress.sh [SECONDS]    (default 10; needs user namespaces, iperf3, slirp4netns)
#
# Everything runs inside a private user+net+mount namespace (its /run is a tmpfs): the
# "host" is that namespace, the outside world is a "wan" namespace behind a veth pair
# (host wan0 198.18.0.1/24 <-> wan eth0 198.18.0.2/24) running `iperf3 -s`.
# Single-stream TCP for SECONDS each:
#   (a) tapnet sandbox -> wan through tapnet's NAT (sandbox MTU 1500)
#   (b) slirp4netns namespace -> wan (`slirp4netns --configure --mtu 1500`, same MTU)
#   (c) the host namespace -> wan directly (veth, kernel only)
#   (d) wan -> tapnet sandbox through a published port (`-p 5201:5201`)
# plus, for information, the reverse directions of (a) and (b) (`iperf3 -R`).
# TAPNET_PERF=1 also records tapnetd with `perf record -e cpu-clock -g` during (a) into
# /tmp/tapnet-egress.perf.data and during (a-R) into /tmp/tapnet-ingress.perf.data.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-10}

if [ -z "${TAPNET_EGRESS_INNER:-}" ]; then
    need=()
    command -v iperf3 >/dev/null || need+=(iperf3)
    command -v slirp4netns >/dev/null || need+=(slirp4netns)
    if [ ${#need[@]} -gt 0 ]; then
        echo "installing: ${need[*]}" >&2
        SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
    fi
    cargo build --release --bins >&2
    exec env TAPNET_EGRESS_INNER=1 unshare -Urnm --propagation private bash "$0" "$@"
fi

# Inside the namespace: /run, lo, PY, pids, json (see benches/lib/inner.sh).
. benches/lib/inner.sh

# iperf3 JSON on stdin -> received Gbit/s
gbps() { $PY -c 'import json,sys; d=json.load(sys.stdin); print("%.2f" % (d["end"]["sum_received"]["bits_per_second"]/1e9))'; }
ratio() { $PY -c "print('%.2f' % ($1/$2))"; }

# --- the wan
ip netns add wan
ip link add wan0 type veth peer name eth0 netns wan
ip addr add 198.18.0.1/24 dev wan0
ip link set wan0 up
ip -n wan addr add 198.18.0.2/24 dev eth0
ip -n wan link set eth0 up
ip -n wan link set lo up
ip netns exec wan iperf3 -s -p 5201 >/dev/null 2>&1 &
pids+=($!)
sleep 0.5

# --- (c) direct
direct=$(iperf3 -c 198.18.0.2 -p 5201 -t "$SECS" -J | gbps)
echo "direct host -> wan: $direct Gbit/s" >&2

# --- (b) slirp4netns
ip netns add s1
slirp4netns --configure --mtu 1500 --netns-type=path /run/netns/s1 tap0 >/run/slirp.log 2>&1 &
pids+=($!)
for _ in $(seq 100); do ip -n s1 route 2>/dev/null | grep -q default && break; sleep 0.1; done
slirp=$(ip netns exec s1 iperf3 -c 198.18.0.2 -p 5201 -t "$SECS" -J | gbps)
slirp_r=$(ip netns exec s1 iperf3 -R -c 198.18.0.2 -p 5201 -t "$SECS" -J | gbps)
echo "slirp4netns -> wan: $slirp Gbit/s (reverse $slirp_r)" >&2

# --- (a) tapnet NAT egress
mkdir -p /run/tapnet
target/release/tapnetd -H unix:///run/tapnet/tapnet.sock --exec-root /run/tapnet \
    --data-root /run/tapnet-data --dns 198.18.0.2 >/run/tapnetd.log 2>&1 &
tapnetd=$!
pids+=($tapnetd)
T="target/release/tapnet -H unix:///run/tapnet/tapnet.sock"
for _ in $(seq 100); do $T network ls >/dev/null 2>&1 && break; sleep 0.1; done
$T network ls >/dev/null 2>&1 || { echo "tapnetd did not start:" >&2; cat /run/tapnetd.log >&2; exit 1; }
$T network create --subnet 10.202.0.0/24 bench >/dev/null
$T sandbox create t1 >/dev/null
$T network connect bench t1
if [ -n "${TAPNET_PERF:-}" ]; then
    perf record -e cpu-clock -g -p "$tapnetd" -o /tmp/tapnet-egress.perf.data -- sleep "$SECS" \
        >/dev/null 2>&1 &
    pids+=($!)
fi
tapnet=$($T exec t1 -- iperf3 -c 198.18.0.2 -p 5201 -t "$SECS" -J | gbps)
if [ -n "${TAPNET_PERF:-}" ]; then
    perf record -e cpu-clock -g -p "$tapnetd" -o /tmp/tapnet-ingress.perf.data -- sleep "$SECS" \
        >/dev/null 2>&1 &
    pids+=($!)
fi
tapnet_r=$($T exec t1 -- iperf3 -R -c 198.18.0.2 -p 5201 -t "$SECS" -J | gbps)
echo "tapnet NAT -> wan: $tapnet Gbit/s (reverse $tapnet_r)" >&2

# --- (d) published port, wan -> sandbox
$T sandbox create -p 5201:5201 pub >/dev/null
$T network connect bench pub
$T exec pub -- iperf3 -s -p 5201 >/dev/null 2>&1 &
pids+=($!)
sleep 0.5
published=$(ip netns exec wan iperf3 -c 198.18.0.1 -p 5201 -t "$SECS" -J | gbps)
echo "wan -> published port -> sandbox: $published Gbit/s" >&2

printf '\n%-44s %10s %10s %10s\n' "single-stream TCP (Gbit/s)" "figure" "/slirp" "/direct"
printf '%-44s %10s %10s %10s\n' "(a) tapnet NAT egress, sandbox -> wan" "$tapnet" \
    "$(ratio "$tapnet" "$slirp")" "$(ratio "$tapnet" "$direct")"
printf '%-44s %10s\n' "(b) slirp4netns, namespace -> wan" "$slirp"
printf '%-44s %10s\n' "(c) direct, host namespace -> wan" "$direct"
printf '%-44s %10s %10s %10s\n' "(d) published port, wan -> sandbox" "$published" "" \
    "$(ratio "$published" "$direct")"
printf '%-44s %10s %10s\n' "(a-R) tapnet NAT, wan -> sandbox (-R)" "$tapnet_r" \
    "$(ratio "$tapnet_r" "$slirp_r")"
printf '%-44s %10s\n' "(b-R) slirp4netns, wan -> namespace (-R)" "$slirp_r"
echo "machine: $(nproc) cores, $(uname -r), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
