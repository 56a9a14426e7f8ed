#!/usr/bin/env bash
# Multi-queue taps: the one-read-one-write ceiling (experiment).
#
#   bash benches/mq_rwfwd.sh [SECONDS]   (default 5 s per run)
#
# benches/src/bin/rwfwd.rs between two containers (network namespaces), once per queue
# count in RWFWD_QUEUES (default "1 2"): `rwfwd ... 1500 --queues N` makes both taps
# N-queue (IFF_MULTI_QUEUE for N > 1) and forwards queue k of one to queue k of the
# other with two threads per queue pair (one per direction). All set-ups exist at once
# (an idle forwarder sleeps in read(2)); the runs alternate between them at the finest
# level: for each repetition, for each test, every queue count in turn (A B A B ...).
# Tests (iperf3 client in the first namespace, server in the second):
#   tcp1   TCP, 1 stream             tcp4   TCP, 4 streams (-P 4)
#   udp1   64-byte UDP, 1 stream     udp4   64-byte UDP, 4 streams   (-b 0: full speed)
# Each run records the figure (Gbit/s received, or Mpps delivered = sent - lost), the
# machine-wide CPU seconds per Gbit or per million packets (benches/lib/measure.sh's
# `busy`), the CPU the forwarder's threads used (cores), how many of its threads used
# more than 5 % of a core (a flow hash puts all flows on one queue pair now and then:
# with 4 flows on 2 queues, 1 run in 8) and the 1-minute load average from `uptime`
# just before the run.
#
# With TAPNET_MQ_PERF=1 (real root and perf(1) needed: the script then runs in
# `unshare -nm` instead of `unshare -Urnm`, so kernel symbols resolve) every client run
# is under `perf record -e cpu-clock -a`, and one more column gives the CPU the kernel
# spent on the flow hash a multi-queue tap needs per packet (`siphash`, the flow
# dissector, `__skb_get_hash_symmetric*`), in the same unit as the CPU column.
#
# Environment: RWFWD_QUEUES (queue counts, default "1 2"); TAPNET_MQ_REPS (runs per test
# and queue count, default 3); TAPNET_MQ_TESTS (default "tcp1 tcp4 udp1 udp4");
# TAPNET_MQ_OUT (results directory, default target/mq_rwfwd); TAPNET_MQ_PERF=1 (above).
#
# Everything runs in a private (user+)network+mount namespace; nothing is left behind;
# every process started is ended by pid on exit. Results: target/mq_rwfwd/{results.tsv,
# table.md}.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-5}
QUEUES=${RWFWD_QUEUES:-1 2}
REPS=${TAPNET_MQ_REPS:-3}
TESTS=${TAPNET_MQ_TESTS:-tcp1 tcp4 udp1 udp4}
OUT=${TAPNET_MQ_OUT:-$PWD/target/mq_rwfwd}

if [ -z "${TAPNET_MQ_INNER:-}" ]; then
    command -v iperf3 >/dev/null || { echo "iperf3 is needed: apt-get install iperf3" >&2; exit 1; }
    cargo build --release -p tapnet-benches --bin rwfwd >&2
    mkdir -p "$OUT"
    : >"$OUT/results.tsv"
    {
        echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
        echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo -)"
        echo "machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), kernel $(uname -r), $(iperf3 --version | head -1)"
        echo "secs: $SECS, runs per test and queue count: $REPS, queue counts: $QUEUES"
        echo "uptime before: $(uptime)"
    } >"$OUT/meta"
    if [ "${TAPNET_MQ_PERF:-0}" = 1 ]; then
        [ "$(id -u)" = 0 ] && command -v perf >/dev/null ||
            { echo "TAPNET_MQ_PERF=1 needs root and perf(1)" >&2; exit 1; }
        echo "perf: cpu-clock -a during every client run" >>"$OUT/meta"
        exec env TAPNET_MQ_INNER=1 unshare -nm --propagation private bash "$0" "$@"
    fi
    exec env TAPNET_MQ_INNER=1 unshare -Urnm --propagation private bash "$0" "$@"
fi

# ------------------------------------------------------------- inside the namespace
. benches/lib/inner.sh   # /run, lo, PY, pids
RES=$OUT/unused.tsv
. benches/lib/measure.sh # busy, HZ, background_load
echo "background: $(background_load)% of the machine busy" | tee -a "$OUT/meta" >&2

declare -A FPID SIP
i=0
for q in $QUEUES; do
    i=$((i + 1))
    o=$((230 + i))
    ip netns add a$q
    ip netns add b$q
    ip -n a$q link set lo up
    ip -n b$q link set lo up
    target/release/rwfwd /run/netns/a$q 10.$o.0.1/24 /run/netns/b$q 10.$o.0.2/24 1500 --queues "$q" \
        >/run/rwfwd$q.out 2>/run/rwfwd$q.log &
    pids+=($!)
    FPID[$q]=$!
    for _ in $(seq 50); do grep -qs ready /run/rwfwd$q.out && break; sleep 0.1; done
    grep -q ready /run/rwfwd$q.out || { echo "rwfwd --queues $q did not start:" >&2; cat /run/rwfwd$q.log >&2; exit 1; }
    ip netns exec b$q iperf3 -s -p 5201 >/dev/null 2>&1 &
    pids+=($!)
    SIP[$q]=10.$o.0.2
done
sleep 1

# thread_ticks PID: "tid ticks" (utime + stime) of every thread.
thread_ticks() {
    for t in /proc/"$1"/task/*; do
        awk -v t="${t##*/}" '{ sub(/^.*\) /, ""); print t, $12 + $13 }' "$t/stat" 2>/dev/null || true
    done
}

PERF=${TAPNET_MQ_PERF:-0}
# hash_ticks FILE: perf samples (at 999 Hz) in the flow-hash functions, and in all.
hash_ticks() {
    perf report -i "$1" --no-children --sort sym --stdio -F sample,sym --percent-limit 0 \
        -t $'\t' 2>/dev/null | awk -F'\t' '
        $1 ~ /^ *[0-9]+ *$/ { n = $1 + 0; all += n
            if ($2 ~ /siphash|skb_get_hash|flow_dissect|flow_hash/) h += n }
        END { print h + 0 }'
}

# one Q TEST REP: one run, one line in results.tsv.
one() {
    local q=$1 t=$2 rep=$3 args load b0 b1 t0 t1 out fig pf=() pdata hash=-
    case $t in
        tcp1) args=(-P 1) ;;
        tcp4) args=(-P 4) ;;
        udp1) args=(-u -l 64 -b 0 -P 1) ;;
        udp4) args=(-u -l 64 -b 0 -P 4) ;;
        *) echo "unknown test $t" >&2; exit 1 ;;
    esac
    load=$(awk '{print $1}' /proc/loadavg)
    t0=$(thread_ticks "${FPID[$q]}")
    b0=$(busy)
    if [ "$PERF" = 1 ]; then
        pdata=$OUT/perf.$t.q$q.r$rep.data
        pf=(perf record -q -e cpu-clock -F 999 -a -o "$pdata" --)
    fi
    if ! out=$("${pf[@]}" ip netns exec a$q iperf3 -c "${SIP[$q]}" -p 5201 -t "$SECS" -J "${args[@]}" 2>/dev/null); then
        printf '%s\t%s\tfail\n' "$t" "$q" >>"$OUT/results.tsv"
        echo "  $t q$q: iperf3 failed" >&2
        return 0
    fi
    b1=$(busy)
    t1=$(thread_ticks "${FPID[$q]}")
    [ "$PERF" != 1 ] || hash=$(hash_ticks "$pdata")
    fig=$(printf '%s' "$out" | T0="$t0" T1="$t1" HASH="$hash" $PY -c "
import json, os, sys
end = json.load(sys.stdin)['end']
cpu = ($b1 - $b0) / $HZ
def ticks(s):
    return dict((a, int(b)) for a, b in (l.split() for l in s.splitlines() if l.strip()))
t0, t1 = ticks(os.environ['T0']), ticks(os.environ['T1'])
secs = float(end.get('sum_received', end.get('sum', {})).get('seconds', $SECS) or $SECS)
used = [(t1[k] - t0.get(k, 0)) / $HZ / secs for k in t1]
fwd = sum(used)
busy = sum(1 for u in used if u > 0.05)
h = os.environ['HASH']
hcpu = None if h == '-' else int(h) / 999.0
if '$t'.startswith('tcp'):
    e = end['sum_received']
    gbit = e['bytes'] * 8 / 1e9
    per = lambda c: '%.4f' % (c / gbit) if gbit and c is not None else '-'
    print('%.3f\tGbit/s\t%s\t%.2f\t%d\t%s' % (e['bits_per_second'] / 1e9, per(cpu), fwd, busy, per(hcpu)))
else:
    e = end.get('sum_received') or end['sum']
    pk = e['packets'] - e['lost_packets']
    per = lambda c: '%.3f' % (c / (pk / 1e6)) if pk and c is not None else '-'
    print('%.4f\tMpps\t%s\t%.2f\t%d\t%s' % (pk / e['seconds'] / 1e6, per(cpu), fwd, busy, per(hcpu)))
")
    printf '%s\t%s\t%s\t%s\n' "$t" "$q" "$fig" "$load" >>"$OUT/results.tsv"
    echo "  $t q$q: $fig load $load" >&2
}

for rep in $(seq "$REPS"); do
    echo "repetition $rep of $REPS ($(uptime))" >&2
    for t in $TESTS; do
        for q in $QUEUES; do
            one "$q" "$t" "$rep"
        done
    done
done

# ---- the table: per test and queue count, the median and every run.
$PY - "$OUT/results.tsv" "$QUEUES" >"$OUT/table.md" <<'EOF'
import statistics, sys
rows = [l.rstrip('\n').split('\t') for l in open(sys.argv[1]) if l.strip()]
queues = sys.argv[2].split()
tests = []
for r in rows:
    if r[0] not in tests:
        tests.append(r[0])
print('| test | queues | median | runs | CPU s per unit (median) | forwarder cores (median) | busy fwd threads per run | load (1 min) per run | × 1 queue | flow hash CPU s per unit (median) |')
print('|---|---:|---:|---|---:|---:|---|---|---:|---:|')
for t in tests:
    base = None
    for q in queues:
        ok = [r for r in rows if r[0] == t and r[1] == q and r[2] != 'fail']
        if not ok:
            print('| %s | %s | failed | | | | | | | |' % (t, q)); continue
        v = [float(r[2]) for r in ok]
        m = statistics.median(v)
        if base is None:
            base = m
        cpu = [float(r[4]) for r in ok if r[4] != '-']
        hc = [float(r[7]) for r in ok if r[7] != '-']
        print('| %s | %s | %.3f %s | %s | %s | %.2f | %s | %s | %.2f | %s |' % (
            t, q, m, ok[0][3], ' '.join('%.3f' % x for x in v),
            '%.3f' % statistics.median(cpu) if cpu else '-',
            statistics.median(float(r[5]) for r in ok), ' '.join(r[6] for r in ok),
            ' '.join(r[8] for r in ok), m / base if base else 0,
            '%.3f' % statistics.median(hc) if hc else '-'))
EOF
echo >&2
cat "$OUT/meta" >&2
cat "$OUT/table.md"
