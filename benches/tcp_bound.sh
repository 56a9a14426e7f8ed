#!/usr/bin/env bash
# Single-stream TCP between two containers: what bounds a tap forwarder (experiment).
#
#   bash benches/tcp_bound.sh [SECONDS]   (default 5 s per run; root for the perf columns)
#
# Controlled variants of one iperf3 TCP stream, each run TAPNET_TCPBOUND_REPS times
# (default 3) with the variants alternating (v1 v2 ... v1 v2 ...), median reported:
#   kernel      the kernel bridge + veth (no forwarder thread, no copy in the path)
#   rwfwd       benches/src/bin/rwfwd.rs: one read + one write per frame between two
#               vnet-header/TSO taps, one thread per direction (the I/O model's limit)
#   tapnet      target/release/tapnetd, two sandboxes on a bridge network
# and, on top of those:
#   placement   `taskset`: C=client, S=server, F=forwarder; "F0 CS1" = forwarder alone on
#               CPU 0, client and server on CPU 1; "C0 FS1" = forwarder shares with the
#               server; "FC0 S1" = with the client; "all0" = all three on CPU 0
#   +1 copy     rwfwd --extra-copies 1: one more copy of every byte in the forwarder
#   1500 B      TSO and GSO off on the client's interface: MTU-sized frames instead of
#               64 KiB super-frames (per-frame vs per-byte cost)
#   rx GRO off  GRO off on the receiver's interface
# Columns: Gbit/s (median, and every run); machine-wide CPU seconds per Gbit (busy
# jiffies of /proc/stat over the client's run; counts other load too); context switches
# (voluntary + involuntary) of the forwarder's threads and both iperf3s per GB received,
# and the involuntary part; the client's mean frame size (tx bytes / tx packets of its
# eth0). With perf (real root: the script then runs in `unshare -nm` instead of
# `unshare -Urnm`, so kernel symbols resolve) one extra run per variant under
# `perf record -e cpu-clock -a`, counted over the benchmark's own threads (iperf3, the
# forwarder, ksoftirqd, softirq work in the idle task): the share of samples in copy
# functions, and how much of a core the forwarder's threads used and what share of
# that was copying.
#
# Environment: TAPNET_TCPBOUND_ONLY (comma-separated variant names to run, default all);
# TAPNETD_ARGS (extra tapnetd flags); TAPNET_TCPBOUND_REPS (runs per variant, default 3); TAPNET_TCPBOUND_OUT
# (results directory, default target/tcp_bound); TAPNET_TCPBOUND_REPORT=1 measures
# nothing and redraws the table of the results directory's last run.
#
# Everything runs in a private network+mount namespace; nothing is left behind; every
# process started is ended by pid on exit. Results: target/tcp_bound/{results.tsv,table.md}.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-5}
REPS=${TAPNET_TCPBOUND_REPS:-3}
OUT=${TAPNET_TCPBOUND_OUT:-$PWD/target/tcp_bound}

# ---- variants: NAME|SETUP|PLACEMENT C:S:F (CPU lists, "" = unpinned)|TWEAK
VARIANTS=(
    "kernel|kernel|::|"
    "kernel C0 S1|kernel|0:1:|"
    "kernel all0|kernel|0:0:|"
    "kernel 1500 B|kernel|::|mtu-frames"
    "rwfwd|rwfwd|::|"
    "rwfwd F0 CS1|rwfwd|1:1:0|"
    "rwfwd C0 FS1|rwfwd|0:1:1|"
    "rwfwd FC0 S1|rwfwd|0:1:0|"
    "rwfwd all0|rwfwd|0:0:0|"
    "rwfwd +1 copy|rwfwd_copy|::|"
    "rwfwd 1500 B|rwfwd|::|mtu-frames"
    "rwfwd rx GRO off|rwfwd|::|rx-gro-off"
    "tapnet|tapnet|::|"
    "tapnet F0 CS1|tapnet|1:1:0|"
)
if [ -n "${TAPNET_TCPBOUND_ONLY:-}" ]; then
    picked=()
    for v in "${VARIANTS[@]}"; do
        case ",$TAPNET_TCPBOUND_ONLY," in *",${v%%|*},"*) picked+=("$v") ;; esac
    done
    [ ${#picked[@]} -gt 0 ] || { echo "TAPNET_TCPBOUND_ONLY matches no variant" >&2; exit 2; }
    VARIANTS=("${picked[@]}")
fi
parse_variant() { # sets VN VS VC VSV VF VT
    local pl
    IFS='|' read -r VN VS pl VT <<<"$1"
    IFS=: read -r VC VSV VF <<<"$pl"
}


PERF_HZ=999
# ---- perf: copy share over the benchmark's own samples (client, server, forwarder)
perf_cols() { # FILE GBIT -> "copy% copy_s_per_GB fwdcores fwdcopy%"
    local f=$1 gbit=${2:-0}
    [ -s "$f" ] || { echo "- - - -"; return; }
    perf report -i "$f" --no-children --sort comm,sym --stdio -F sample,comm,sym \
        --percent-limit 0 -t $'\t' 2>/dev/null | $PY -c "
import re, sys
fwd = re.compile(r'^(rwfwd|tapnet-dp\d*)$')
copy = re.compile(r'copy_to_iter|copy_from_iter|copy_user|rep_movs|memcpy|memmove|copy_page_(to|from)_iter|csum_partial_copy')
tot = cp = fw = fwcp = 0
for line in sys.stdin:
    if line.startswith('#') or not line.strip():
        continue
    parts = [p.strip() for p in line.rstrip('\n').split('\t')]
    if len(parts) < 3 or not parts[0].isdigit():
        continue
    n, comm, sym = int(parts[0]), parts[1], parts[2]
    c = bool(copy.search(sym))
    tot += n
    cp += n if c else 0
    if fwd.match(comm):
        fw += n
        fwcp += n if c else 0
secs = $SECS - 2
gbyte = float('$gbit') * secs / 8
if tot == 0:
    print('- - - -')
else:
    print('%.0f %s %.2f %s' % (100 * cp / tot, '%.3f' % (cp / $PERF_HZ / gbyte) if gbyte > 0 else '-',
        fw / ($PERF_HZ * secs), '%.0f' % (100 * fwcp / fw) if fw else '-'))
"
}

# ---- the table (from results.tsv and the perf files)
report() {
{
    echo "| variant | Gbit/s (median) | runs | × kernel | CPU s/Gbit | ctx sw/GB (invol.) | frame B | copy % | copy s/GB | fwd cores (copy %) |"
    echo "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"
    i=0
    kmed=""
    for v in "${VARIANTS[@]}"; do
        i=$((i + 1))
        parse_variant "$v"
        pc="- - - -"
        pg=$(awk -F'\t' -v n="$VN" -v p="p$i" '$1==n && $3==p && $4!="fail"{print $4}' "$OUT/results.tsv")
        [ ! -s "$OUT/perf.p$i.data" ] || pc=$(perf_cols "$OUT/perf.p$i.data" "$pg")
        awk -F'\t' -v n="$VN" '$1==n && $3=="run" && $4!="fail"' "$OUT/results.tsv" | $PY -c "
import statistics, sys
rows = [l.split('\t') for l in sys.stdin.read().splitlines()]
name = '''$VN'''
copy, copys, fcores, fcopy = '''$pc'''.split()
if not rows:
    print('| %s | failed | | | | | | | | |' % name); sys.exit(0)
col = lambda i: [float(r[i]) for r in rows]
g = statistics.median(col(3))
k = '''$kmed'''
ratio = '%.2f' % (g / float(k)) if k else ''
print('| %s | %.2f | %s | %s | %.3f | %.0f (%.0f) | %.0f | %s | %s | %s |' % (
    name, g, ' '.join('%.2f' % x for x in col(3)), ratio, statistics.median(col(4)),
    statistics.median(col(5)), statistics.median(col(6)), statistics.median(col(7)),
    copy, copys, '-' if fcores == '-' else '%s (%s)' % (fcores, fcopy)))
"
        if [ "$VN" = kernel ]; then
            kmed=$(awk -F'\t' '$1=="kernel" && $3=="run" && $4!="fail"{print $4}' "$OUT/results.tsv" |
                sort -g | awk '{a[NR]=$1} END{if (NR) print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}')
        fi
    done
} >"$OUT/table.md"
}

show() {
    echo >&2
    cat "$OUT/meta" >&2
    cat "$OUT/table.md"
}

# Redraw the table of the last run, measuring nothing.
if [ -n "${TAPNET_TCPBOUND_REPORT:-}" ]; then
    SECS=$(awk '/^secs:/{print $2+0}' "$OUT/meta")
    PY=python3
    [ -x /usr/bin/python3 ] && PY=/usr/bin/python3
    report
    show
    exit 0
fi

if [ -z "${TAPNET_TCPBOUND_INNER:-}" ]; then
    command -v iperf3 >/dev/null || { echo "iperf3 is needed: apt-get install iperf3" >&2; exit 1; }
    if ! command -v ethtool >/dev/null; then
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q ethtool >&2
        else
            echo "ethtool is needed: apt-get install ethtool" >&2
            exit 1
        fi
    fi
    cargo build --release --bins >&2
    mkdir -p "$OUT"
    : >"$OUT/results.tsv"
    {
        echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
        echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo -)"
        echo "machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), kernel $(uname -r)"
        echo "secs: $SECS, runs per variant: $REPS"
        echo "uptime before: $(uptime)"
    } >"$OUT/meta"
    PERF=0
    if [ "$(id -u)" = 0 ] && command -v perf >/dev/null; then
        PERF=1
        # Real root: a private net+mount namespace is enough, and perf sees kernel symbols.
        exec env TAPNET_TCPBOUND_INNER=1 TAPNET_TCPBOUND_PERF=$PERF \
            unshare -nm --propagation private bash "$0" "$@"
    fi
    exec env TAPNET_TCPBOUND_INNER=1 TAPNET_TCPBOUND_PERF=$PERF \
        unshare -Urnm --propagation private bash "$0" "$@"
fi

# ------------------------------------------------------------- inside the namespace
. benches/lib/inner.sh
RES=$OUT/unused.tsv
. benches/lib/measure.sh # busy, HZ, background_load
PERF=${TAPNET_TCPBOUND_PERF:-0}
NCPU=$(nproc)
ALL=0-$((NCPU - 1))
echo "background: $(background_load)% of the machine busy" | tee -a "$OUT/meta" >&2

# ctx PID...: voluntary and involuntary context switches, summed over every thread.
ctx() {
    local p v=0 n=0 a b
    for p in "$@"; do
        [ -n "$p" ] || continue
        read -r a b < <(cat /proc/"$p"/task/*/status 2>/dev/null |
            awk '/^voluntary_ctxt/{v+=$2} /^nonvoluntary_ctxt/{n+=$2} END{print v+0, n+0}')
        v=$((v + a)) n=$((n + b))
    done
    echo "$v $n"
}

# pin CPUS PID: every thread of PID on CPUS ("" = all CPUs).
pin() { if [ -n "$2" ]; then taskset -apc "${1:-$ALL}" "$2" >/dev/null; fi; }

# txstat "CLIENT_PREFIX": tx bytes and packets of the client's eth0.
txstat() {
    $1 cat /sys/class/net/eth0/statistics/tx_bytes /sys/class/net/eth0/statistics/tx_packets |
        xargs
}

# ---- set-ups: client prefix, server address, server pid, forwarder pid, per set-up
declare -A CLI SIP SPID FPID DEV
start_server() { # SETUP "SERVER_PREFIX" IP
    $2 iperf3 -s -p 5201 >/dev/null 2>&1 &
    pids+=($!)
    SPID[$1]=$!
    SIP[$1]=$3
}

# kernel bridge + veth
ip link add br0 type bridge
ip link set br0 up
for i in 1 2; do
    ip netns add k$i
    ip -n k$i link set lo up
    ip link add vk$i type veth peer name eth0 netns k$i
    ip link set vk$i master br0 up
    ip -n k$i addr add 10.220.0.$i/24 dev eth0
    ip -n k$i link set eth0 up
done
CLI[kernel]="ip netns exec k1" DEV[kernel]=k
start_server kernel "ip netns exec k2" 10.220.0.2

# rwfwd, and rwfwd with one extra copy of every byte
rwfwd_setup() { # SETUP NS_PREFIX SUBNET_OCTET [rwfwd flags]
    local s=$1 n=$2 o=$3
    shift 3
    ip netns add ${n}1
    ip netns add ${n}2
    ip -n ${n}1 link set lo up
    ip -n ${n}2 link set lo up
    target/release/rwfwd /run/netns/${n}1 10.$o.0.1/24 /run/netns/${n}2 10.$o.0.2/24 1500 "$@" \
        >/run/$s.out 2>/run/$s.log &
    pids+=($!)
    FPID[$s]=$!
    for _ in $(seq 50); do grep -qs ready /run/$s.out && break; sleep 0.1; done
    grep -q ready /run/$s.out || { echo "rwfwd did not start:" >&2; cat /run/$s.log >&2; exit 1; }
    CLI[$s]="ip netns exec ${n}1" DEV[$s]=$n
    start_server "$s" "ip netns exec ${n}2" 10.$o.0.2
}
rwfwd_setup rwfwd f 221
rwfwd_setup rwfwd_copy e 222 --extra-copies 1

# tapnet
mkdir -p /run/tapnet
# shellcheck disable=SC2086 # TAPNETD_ARGS is a word list
target/release/tapnetd -H unix:///run/tapnet/tapnet.sock --exec-root /run/tapnet \
    --data-root /run/tapnet-data ${TAPNETD_ARGS:-} >/run/tapnetd.log 2>&1 &
pids+=($!)
FPID[tapnet]=$!
T="target/release/tapnet -H unix:///run/tapnet/tapnet.sock"
for _ in $(seq 100); do $T network ls >/dev/null 2>&1 && break; sleep 0.1; done
$T network ls >/dev/null 2>&1 || { echo "tapnetd did not start:" >&2; cat /run/tapnetd.log >&2; exit 1; }
$T network create --subnet 10.223.0.0/24 tb >/dev/null
for i in 1 2; do
    $T sandbox create tb$i >/dev/null
    $T network connect --ip 10.223.0.1$i tb tb$i
done
CLI[tapnet]="$T exec tb1 --"
start_server tapnet "$T exec tb2 --" 10.223.0.12

tweak() { # on|off SETUP TWEAK
    local on=$1 s=$2 t=$3 d=${DEV[$2]:-}
    case $t in
        mtu-frames)
            if [ "$on" = on ]; then
                ip netns exec ${d}1 ethtool -K eth0 tso off gso off >/dev/null
            else
                ip netns exec ${d}1 ethtool -K eth0 tso on gso on >/dev/null
            fi
            ;;
        rx-gro-off)
            if [ "$on" = on ]; then
                ip netns exec ${d}2 ethtool -K eth0 gro off >/dev/null
            else
                ip netns exec ${d}2 ethtool -K eth0 gro on >/dev/null
            fi
            ;;
        "") ;;
        *) echo "unknown tweak $t" >&2; exit 1 ;;
    esac
}

# The client: iperf3 under python, which reports its JSON's figures and the client's own
# context switches (getrusage of the waited-for child).
# It writes the client's pid to the file given first (for perf).
CLIENT_PY='
import json, resource, subprocess, sys
p = subprocess.Popen(sys.argv[2:], stdout=subprocess.PIPE)
open(sys.argv[1], "w").write("%d\n" % p.pid)
out, _ = p.communicate()
r = resource.getrusage(resource.RUSAGE_CHILDREN)
if p.returncode != 0:
    print("fail"); sys.exit(0)
e = json.loads(out)["end"]["sum_received"]
print(e["bits_per_second"] / 1e9, e["bytes"], r.ru_nvcsw, r.ru_nivcsw)
'

# run_variant VARIANT REP [perf]: one client run; appends a line to results.tsv.
run_variant() {
    parse_variant "$1"
    local rep=$2 withperf=${3:-} s=$VS cli f s_pid c0 c1 b0 b1 t0 t1 out pp=""
    f=${FPID[$VS]:-}
    s_pid=${SPID[$VS]}
    cli=${CLI[$VS]}
    pin "$VSV" "$s_pid"
    pin "$VF" "$f"
    tweak on "$s" "$VT"
    local tcpu=""
    [ -z "$VC" ] || tcpu="taskset -c $VC"
    sleep 0.3
    t0=$(txstat "$cli")
    c0=$(ctx "$s_pid" "$f")
    b0=$(busy)
    if [ -n "$withperf" ]; then
        # Record the middle of the run only (not the connection set-up), and only the
        # benchmark's own processes: the machine may be running other work.
        rm -f /run/client.pid
        (sleep 1 && perf record -q -e cpu-clock -F $PERF_HZ -o "$OUT/perf.$withperf.data" \
            -p "$(cat /run/client.pid),$s_pid${f:+,$f}" -- sleep $((SECS - 2)) >/dev/null 2>>"$OUT/perf.log") &
        pp=$!
    fi
    # shellcheck disable=SC2086 # prefixes are word lists
    out=$($PY -c "$CLIENT_PY" /run/client.pid $tcpu $cli iperf3 -c "${SIP[$VS]}" -p 5201 -t "$SECS" -J)
    b1=$(busy)
    c1=$(ctx "$s_pid" "$f")
    t1=$(txstat "$cli")
    [ -z "$pp" ] || wait "$pp" || true
    tweak off "$s" "$VT"
    pin "" "$s_pid"
    pin "" "$f"
    if [ "$out" = fail ]; then
        printf '%s\t%s\t%s\tfail\n' "$VN" "$rep" "$withperf" >>"$OUT/results.tsv"
        echo "  $VN: iperf3 failed" >&2
        return 0
    fi
    local line
    line=$($PY -c "
gbit, nbytes, cv, cn = '$out'.split()
gbit = float(gbit); nbytes = int(nbytes)
v0, n0 = map(int, '$c0'.split()); v1, n1 = map(int, '$c1'.split())
tb0, tp0 = map(int, '$t0'.split()); tb1, tp1 = map(int, '$t1'.split())
vol = v1 - v0 + int(cv); inv = n1 - n0 + int(cn)
cpu = ($b1 - $b0) / $HZ
gb = nbytes / 1e9
frame = (tb1 - tb0) / max(tp1 - tp0, 1)
print('%.3f\t%.4f\t%.0f\t%.0f\t%.0f' % (gbit, cpu / (nbytes * 8 / 1e9), (vol + inv) / gb, inv / gb, frame))")
    printf '%s\t%s\t%s\t%s\n' "$VN" "$rep" "${withperf:-run}" "$line" >>"$OUT/results.tsv"
    echo "  $VN (${withperf:-run $rep}): $(cut -f1 <<<"$line") Gbit/s, $(cut -f2 <<<"$line") s/Gbit, $(cut -f3 <<<"$line") cs/GB, frame $(cut -f5 <<<"$line") B" >&2
}

# Every server answers before the first run.
for s in kernel rwfwd rwfwd_copy tapnet; do
    ok=""
    for _ in $(seq 20); do
        ${CLI[$s]} ping -n -q -c 1 -W 1 "${SIP[$s]}" >/dev/null 2>&1 && { ok=1; break; }
        sleep 0.3
    done
    [ -n "$ok" ] || { echo "$s: ${SIP[$s]} does not answer" >&2; exit 1; }
done
sleep 0.5

for rep in $(seq "$REPS"); do
    echo "round $rep of $REPS" >&2
    for v in "${VARIANTS[@]}"; do run_variant "$v" "$rep"; done
done
if [ "$PERF" = 1 ]; then
    echo "perf round (not counted in the medians)" >&2
    i=0
    for v in "${VARIANTS[@]}"; do
        i=$((i + 1))
        run_variant "$v" perf "p$i"
    done
fi
echo "uptime after: $(uptime)" >>"$OUT/meta"

report
echo "command: bash benches/tcp_bound.sh $SECS (TAPNET_TCPBOUND_REPS=$REPS)" >>"$OUT/meta"
show
