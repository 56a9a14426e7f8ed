#!/usr/bin/env bash
# Gateway throughput: tapnet's userspace NAT egress and published ports, against
# slirp4netns (the usual userspace alternative) and the direct kernel path, in one run.
#
#   bash benches/egress.sh [SECONDS]    (default 10; needs user namespaces, iperf3, slirp4netns)
#
# Everything runs inside a private net+mount namespace (+ user namespace unless root,
# benches/lib/ns_args.sh; its /run is a tmpfs): the
# "host" is that namespace, the outside world is a "wan" namespace behind a veth pair
# (host wan0 198.18.0.1/24 <-> wan eth0 198.18.0.2/24) running `iperf3 -s`.
# Single-stream TCP for SECONDS each:
#   (a) tapnet sandbox -> wan through tapnet's NAT (sandbox MTU 1500)
#   (b) slirp4netns namespace -> wan (`slirp4netns --configure --mtu 1500`, same MTU)
#   (b64) slirp4netns at its best setting, `--mtu 65520` (how rootless Docker/Podman run it)
#   (p) pasta (Debian `passt`) namespace -> wan (its default MTU 65520)
#   (c) the host namespace -> wan directly (veth, kernel only)
#   (d) wan -> tapnet sandbox through a published port (`-p 5201:5201`)
#   (pd) wan -> pasta namespace through its forwarded port (`-t 5202:5201`)
# plus the reverse directions of (a), (b), (b64) and (p) (`iperf3 -R`). Beside each figure:
# the forwarding process's CPU time (all threads, user + system) per Gbit moved.
# TAPNET_GATEWAY_LINK=queue runs tapnetd's gateways on their own thread behind the
# in-process link (`tapnet_nat::port`), =socketpair behind a socket pair (default: inline
# on the switch worker, `tapnet_nat::InlineGateway`). TAPNETD_ARGS adds flags to tapnetd
# (e.g. `--tap-io uring`).
# TAPNET_BENCH_WMEM_MAX: the host's net.core.wmem_max during the run (benches/lib/wmem.sh:
# pasta's send buffer; below 16 MiB pasta's egress stalls). Beside pasta's and tapnet's
# figures: the sender's TCP retransmissions (a stalling path shows them).
# TAPNET_PERF=1 also records tapnetd with `perf record -e cpu-clock -g` during (a) into
# /tmp/tapnet-egress.perf.data and during (a-R) into /tmp/tapnet-ingress.perf.data.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-10}

if [ -z "${TAPNET_EGRESS_INNER:-}" ]; then
    need=()
    command -v iperf3 >/dev/null || need+=(iperf3)
    command -v slirp4netns >/dev/null || need+=(slirp4netns)
    command -v pasta >/dev/null || need+=(passt)
    if [ ${#need[@]} -gt 0 ]; then
        echo "installing: ${need[*]}" >&2
        SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
    fi
    cargo build --release --bins >&2
    . benches/lib/wmem.sh
    wmem_raise
    trap wmem_restore EXIT
    . benches/lib/ns_args.sh   # as root: no user namespace (tapnetd keeps CAP_SYS_NICE)
    env TAPNET_EGRESS_INNER=1 unshare $(bench_ns_args) --propagation private bash "$0" "$@"
    exit
fi

# Inside the namespace: /run, lo, PY, pids, json (see benches/lib/inner.sh).
. benches/lib/inner.sh

# iperf3 JSON on stdin -> received Gbit/s
gbps() { $PY -c 'import json,sys; d=json.load(sys.stdin); print("%.2f" % (d["end"]["sum_received"]["bits_per_second"]/1e9))'; }
ratio() { $PY -c "print('%.2f' % ($1/$2))"; }
# CPU time of the forwarding process (all its threads, user + system)
TCK=$(getconf CLK_TCK)
ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
# run NAME PID CMD...: iperf3 JSON from CMD -> Gbit/s into $NAME, the CPU the forwarder
# PID spent per Gbit moved (ms/Gbit) into ${NAME}_cpu, the sender's retransmissions into
# ${NAME}_rtx
run() {
    local name=$1 pid=$2 t0 t1 g out
    shift 2
    t0=$(ticks "$pid")
    out=$("$@")
    t1=$(ticks "$pid")
    g=$(printf '%s' "$out" | gbps)
    printf -v "$name" '%s' "$g"
    printf -v "${name}_rtx" '%s' \
        "$(printf '%s' "$out" | json 'd["end"]["sum_sent"].get("retransmits", "-")')"
    printf -v "${name}_cpu" '%s' \
        "$($PY -c "print('%.0f' % (($t1-$t0)*1000/$TCK/max($g*$SECS,1e-9)))")"
}

# --- the wan
. benches/lib/wan.sh
wan_setup
ip netns exec wan iperf3 -s -p 5201 >/dev/null 2>&1 &
pids+=($!)
sleep 0.5

# --- (c) direct
direct=$(iperf3 -c 198.18.0.2 -p 5201 -t "$SECS" -J | gbps)
echo "direct host -> wan: $direct Gbit/s" >&2

# --- (b) slirp4netns
ip netns add s1
slirp4netns --configure --mtu 1500 --netns-type=path /run/netns/s1 tap0 >/run/slirp.log 2>&1 &
pid=$!
pids+=($pid)
for _ in $(seq 100); do ip -n s1 route 2>/dev/null | grep -q default && break; sleep 0.1; done
run slirp $pid ip netns exec s1 iperf3 -c 198.18.0.2 -p 5201 -t "$SECS" -J
run slirp_r $pid ip netns exec s1 iperf3 -R -c 198.18.0.2 -p 5201 -t "$SECS" -J
echo "slirp4netns -> wan: $slirp Gbit/s (reverse $slirp_r)" >&2

# --- (b64) slirp4netns at MTU 65520
ip netns add s2
slirp4netns --configure --mtu 65520 --netns-type=path /run/netns/s2 tap0 >/run/slirp64.log 2>&1 &
pid=$!
pids+=($pid)
for _ in $(seq 100); do ip -n s2 route 2>/dev/null | grep -q default && break; sleep 0.1; done
run slirp64 $pid ip netns exec s2 iperf3 -c 198.18.0.2 -p 5201 -t "$SECS" -J
run slirp64_r $pid ip netns exec s2 iperf3 -R -c 198.18.0.2 -p 5201 -t "$SECS" -J
echo "slirp4netns --mtu 65520 -> wan: $slirp64 Gbit/s (reverse $slirp64_r)" >&2

# --- (p) pasta: its namespace gets its own address and gateway (explicit, so they do not
# copy wan0's), its outbound interface is wan0; host port 5202 forwards to its 5201.
ip netns add p1
pasta --config-net -a 10.203.0.2 -n 24 -g 10.203.0.1 --no-map-gw -i wan0 \
    -t 5202:5201 -u none -T none -U none --runas 0 -f -q \
    --netns /run/netns/p1 >/run/pasta.log 2>&1 &
pid=$!
pids+=($pid)
for _ in $(seq 100); do ip -n p1 route 2>/dev/null | grep -q default && break; sleep 0.1; done
run pasta_e $pid ip netns exec p1 iperf3 -c 198.18.0.2 -p 5201 -t "$SECS" -J
run pasta_r $pid ip netns exec p1 iperf3 -R -c 198.18.0.2 -p 5201 -t "$SECS" -J
ip netns exec p1 iperf3 -s -p 5201 >/dev/null 2>&1 &
pids+=($!)
sleep 0.5
run pasta_pub $pid ip netns exec wan iperf3 -c 198.18.0.1 -p 5202 -t "$SECS" -J
echo "pasta -> wan: $pasta_e Gbit/s, $pasta_e_rtx retransmissions (reverse $pasta_r," \
    "forwarded port $pasta_pub)" >&2

# --- (a) tapnet NAT egress
mkdir -p /run/tapnet
target/release/tapnetd -H unix:///run/tapnet/tapnet.sock --exec-root /run/tapnet \
    --data-root /run/tapnet-data --dns 198.18.0.2 ${TAPNETD_ARGS:-} >/run/tapnetd.log 2>&1 &
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
run tapnet $tapnetd $T exec t1 -- iperf3 -c 198.18.0.2 -p 5201 -t "$SECS" -J
if [ -n "${TAPNET_PERF:-}" ]; then
    perf record -e cpu-clock -g -p "$tapnetd" -o /tmp/tapnet-ingress.perf.data -- sleep "$SECS" \
        >/dev/null 2>&1 &
    pids+=($!)
fi
run tapnet_r $tapnetd $T exec t1 -- iperf3 -R -c 198.18.0.2 -p 5201 -t "$SECS" -J
echo "tapnet NAT -> wan: $tapnet Gbit/s, $tapnet_rtx retransmissions (reverse $tapnet_r," \
    "$tapnet_r_rtx)" >&2

# --- (d) published port, wan -> sandbox
$T sandbox create -p 5201:5201 pub >/dev/null
$T network connect bench pub
$T exec pub -- iperf3 -s -p 5201 >/dev/null 2>&1 &
pids+=($!)
sleep 0.5
run published $tapnetd ip netns exec wan iperf3 -c 198.18.0.1 -p 5201 -t "$SECS" -J
echo "wan -> published port -> sandbox: $published Gbit/s" >&2

best=$($PY -c "print(max($slirp64, $pasta_e))")
best_r=$($PY -c "print(max($slirp64_r, $pasta_r))")
row() { printf '%-46s %8s %8s %11s %10s %8s\n' "$@"; }
echo
echo "gateway: ${TAPNET_GATEWAY_LINK:-inline on the switch worker (default)}; CPU = the forwarding process's CPU ms per Gbit moved"
row "single-stream TCP (Gbit/s)" "figure" "CPU" "/slirp65520" "/best peer" "/direct"
row "(a) tapnet NAT egress, sandbox -> wan" "$tapnet" "$tapnet_cpu" \
    "$(ratio "$tapnet" "$slirp64")" "$(ratio "$tapnet" "$best")" "$(ratio "$tapnet" "$direct")"
row "(b) slirp4netns --mtu 1500, namespace -> wan" "$slirp" "$slirp_cpu"
row "(b64) slirp4netns --mtu 65520, namespace -> wan" "$slirp64" "$slirp64_cpu"
row "(p) pasta, namespace -> wan" "$pasta_e" "$pasta_e_cpu"
row "(c) direct, host namespace -> wan" "$direct"
row "(d) published port, wan -> sandbox" "$published" "$published_cpu" "" \
    "$(ratio "$published" "$pasta_pub")" "$(ratio "$published" "$direct")"
row "(pd) pasta forwarded port, wan -> namespace" "$pasta_pub" "$pasta_pub_cpu"
row "(a-R) tapnet NAT, wan -> sandbox (-R)" "$tapnet_r" "$tapnet_r_cpu" \
    "$(ratio "$tapnet_r" "$slirp64_r")" "$(ratio "$tapnet_r" "$best_r")" "$(ratio "$tapnet_r" "$direct")"
row "(b-R) slirp4netns --mtu 1500 (-R)" "$slirp_r" "$slirp_r_cpu"
row "(b64-R) slirp4netns --mtu 65520 (-R)" "$slirp64_r" "$slirp64_r_cpu"
row "(p-R) pasta (-R)" "$pasta_r" "$pasta_r_cpu"
echo "machine: $(nproc) cores, $(uname -r), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
