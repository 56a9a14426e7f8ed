#!/usr/bin/env bash
# End-to-end throughput: tapnet's userspace switch vs the Linux kernel bridge + veth,
# measured in one run on the same machine.
#
#   bash benches/e2e.sh [SECONDS]      (default 10; needs root or user namespaces, iperf3)
#
# TAPNET_TAP_IO=auto|uring|rw picks tapnetd's --tap-io (default auto);
# TAPNET_TAP_IO_DEPTH=N its --tap-io-depth; TAPNET_E2E_SKIP_KERNEL=1 skips the kernel
# bridge run (for A/B runs of tapnet alone); TAPNETD_ARGS adds tapnetd flags
# (e.g. "--worker-nice 10"); TAPNET_E2E_STRACE=1 counts tapnetd's system
# calls (strace -c -f) during tapnet's UDP run and prints them per frame sent (strace
# slows the run: its figures are for attribution only).
#
# Everything runs inside a private net+mount namespace (+ user namespace unless root,
# benches/lib/ns_args.sh): no host interface is
# touched and nothing is left behind. Prints each figure and the tapnet/kernel ratio.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-10}

if [ -z "${TAPNET_E2E_INNER:-}" ]; then
    command -v iperf3 >/dev/null || { echo "iperf3 is needed: apt-get install iperf3" >&2; exit 1; }
    cargo build --release --bins >&2
    . benches/lib/ns_args.sh   # as root: no user namespace (tapnetd keeps CAP_SYS_NICE)
    exec env TAPNET_E2E_INNER=1 unshare $(bench_ns_args) --propagation private bash "$0" "$@"
fi

# Inside the namespace: /run, lo, PY, pids, json (see benches/lib/inner.sh).
. benches/lib/inner.sh

# UdpRcvbufErrors (datagrams dropped because the receiving socket's buffer was full) in
# the namespace of PREFIX ("ip netns exec k2", "tapnet exec t2 --").
rcvbuf_errors() { $1 nstat -asz UdpRcvbufErrors 2>/dev/null | awk '/UdpRcvbufErrors/{print $2; exit}' | grep . || echo 0; }

# utime+stime of process PID, in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# run_pair NAME CLIENT_PREFIX SERVER_PREFIX SERVER_IP
run_pair() {
    local name=$1 cli=$2 srv=$3 ip=$4
    $srv iperf3 -s -p 5201 >/dev/null 2>&1 &
    pids+=($!)
    sleep 0.5
    tcp=$($cli iperf3 -c "$ip" -p 5201 -t "$SECS" -J | json 'd["end"]["sum_received"]["bits_per_second"]/1e9')
    local spid=
    if [ -n "${TAPNET_E2E_STRACE:-}" ] && [ -n "${tapnetd_pid:-}" ]; then
        strace -c -f -p "$tapnetd_pid" -o /run/strace.txt 2>/dev/null &
        spid=$!
        sleep 0.5
    fi
    local cpu0=0
    [ -n "${tapnetd_pid:-}" ] && cpu0=$(cpu_ticks "$tapnetd_pid")
    local drops0 drops1
    drops0=$(rcvbuf_errors "$srv")
    $cli iperf3 -c "$ip" -p 5201 -u -l 64 -b 0 -t "$SECS" -J >/run/udp.json
    drops1=$(rcvbuf_errors "$srv")
    udp=$(json '(d["end"]["sum"]["packets"]-d["end"]["sum"]["lost_packets"])/d["end"]["sum"]["seconds"]/1e6' </run/udp.json)
    # Where the lost packets went: the receiving socket's overflow (UdpRcvbufErrors in
    # the receiver's namespace) against everything lost on the way.
    $PY - "$name" "$drops0" "$drops1" /run/udp.json >&2 <<'PYEOF'
import json, sys
e = json.load(open(sys.argv[4]))["end"]["sum"]
s = e["seconds"]
drops = int(sys.argv[3]) - int(sys.argv[2])
print("%s: UDP 64 B sent %.3f Mpps, lost %.1f %%; dropped by the receiving socket "
      "(its buffer full) %.3f Mpps" % (sys.argv[1], e["packets"] / s / 1e6,
      100.0 * e["lost_packets"] / max(e["packets"], 1), drops / s / 1e6))
PYEOF
    if [ -n "${tapnetd_pid:-}" ]; then
        local ticks=$(( $(cpu_ticks "$tapnetd_pid") - cpu0 )) hz
        hz=$(getconf CLK_TCK)
        echo "$name: tapnetd CPU during the UDP run: $($PY -c "
t=$ticks/$hz; f=$udp*1e6*$SECS
print(f'{t:.2f} s, {t/(f/1e6):.2f} CPU-s per million frames delivered')")" >&2
    fi
    if [ -n "$spid" ]; then
        kill -INT "$spid"; wait "$spid" 2>/dev/null || true
        sent=$(json 'd["end"]["sum"]["packets"]' </run/udp.json)
        echo "$name: system calls of tapnetd during the UDP run ($sent frames sent):" >&2
        $PY - "$sent" /run/strace.txt >&2 <<'PYEOF'
import sys
sent = float(sys.argv[1])
for line in open(sys.argv[2]):
    f = line.split()
    if len(f) >= 5 and f[3].isdigit() and f[-1] not in ("total",):
        print(f"  {f[-1]:<16} {int(f[3]):>10} calls  {int(f[3]) / sent:8.3f} per frame")
    elif f and f[-1] == "total":
        print(f"  {'total':<16} {int(f[2]):>10} calls  {int(f[2]) / sent:8.3f} per frame")
PYEOF
    fi
    kill "${pids[-1]}" 2>/dev/null || true
    echo "$name: TCP $tcp Gbit/s, UDP 64 B $udp Mpps delivered" >&2
}

# --- kernel bridge + veth
k_tcp=nan k_udp=nan
if [ -z "${TAPNET_E2E_SKIP_KERNEL:-}" ]; then
ip link add br0 type bridge
ip link set br0 up
for i in 1 2; do
    ip netns add k$i
    ip link add vk$i type veth peer name eth0 netns k$i
    ip link set vk$i master br0 up
    ip -n k$i addr add 10.200.0.$i/24 dev eth0
    ip -n k$i link set eth0 up
    ip -n k$i link set lo up
done
run_pair kernel "ip netns exec k1" "ip netns exec k2" 10.200.0.2
k_tcp=$tcp k_udp=$udp
fi

# --- tapnet
mkdir -p /run/tapnet
target/release/tapnetd -H unix:///run/tapnet/tapnet.sock --exec-root /run/tapnet \
    --data-root /run/tapnet-data --tap-io "${TAPNET_TAP_IO:-auto}" \
    ${TAPNET_TAP_IO_DEPTH:+--tap-io-depth "$TAPNET_TAP_IO_DEPTH"} ${TAPNETD_ARGS:-} >/run/tapnetd.log 2>&1 &
tapnetd_pid=$!
pids+=($!)
T="target/release/tapnet -H unix:///run/tapnet/tapnet.sock"
for _ in $(seq 100); do $T network ls >/dev/null 2>&1 && break; sleep 0.1; done
$T network create --subnet 10.201.0.0/24 bench >/dev/null
for s in t1 t2; do $T sandbox create $s >/dev/null; $T network connect bench $s; done
run_pair "tapnet (--tap-io ${TAPNET_TAP_IO:-auto})" "$T exec t1 --" "$T exec t2 --" 10.201.0.3
t_tcp=$tcp t_udp=$udp

printf '\n%-34s %12s %12s %8s\n' "metric" "tapnet" "kernel" "ratio"
printf '%-34s %12.2f %12.2f %8.2f\n' "TCP single stream (Gbit/s)" "$t_tcp" "$k_tcp" \
    "$($PY -c "print(float('$t_tcp')/float('$k_tcp'))")"
printf '%-34s %12.3f %12.3f %8.2f\n' "UDP 64 B delivered (Mpps)" "$t_udp" "$k_udp" \
    "$($PY -c "print(float('$t_udp')/float('$k_udp'))")"
echo "machine: $(nproc) cores, $(uname -r), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
