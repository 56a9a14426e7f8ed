# Measurement helpers of benches/compare.sh, sourced inside its private namespace after
# benches/lib/inner.sh (which gives PY and `pids`). Needs SECS (seconds per run) and RES
# (the results file: one tab-separated line per run, the input of the `chart` bin:
# group metric unit better setup ref1 ref2 value cpu).
#
# CPU is measured for the whole machine: busy jiffies (user+nice+system+irq+softirq of
# the first line of /proc/stat) between the start and the end of the client, turned into
# CPU seconds per Gbit received (TCP) or per million packets delivered (UDP). Kernel
# forwarding work runs in softirq context, charged to whichever task happens to run
# (or to ksoftirqd), so only a machine-wide count compares a kernel path with a
# userspace one fairly; it also counts anything else running on the machine, which is
# why the script reports the background load it measured before starting.

HZ=$(getconf CLK_TCK)
busy() { awk '/^cpu /{print $2+$3+$4+$7+$8; exit}' /proc/stat; }

# rec GROUP METRIC UNIT BETTER SETUP REF1 REF2 VALUE CPU: one result line.
rec() {
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >>"$RES"
    if [ "$8" = skip ]; then
        printf '  %-10s %-22s %-12s skipped: %s\n' "$1" "$2" "$5" "$9" >&2
    else
        printf '  %-10s %-22s %-12s %10s %-6s cpu %s\n' "$1" "$2" "$5" "$8" "$3" "$9" >&2
    fi
}

# background_load: percent of the machine busy over 2 s with nothing of ours running.
background_load() {
    local b0 b1
    b0=$(busy)
    sleep 2
    b1=$(busy)
    $PY -c "print('%.0f' % (100.0*($b1-$b0)/$HZ/2/$(nproc)))"
}

# m_tcp GROUP METRIC SETUP REF1 REF2 STREAMS "CLIENT_PREFIX" SERVER_IP PORT [iperf3 args]
m_tcp() {
    local g=$1 m=$2 s=$3 r1=$4 r2=$5 p=$6 cli=$7 ip=$8 port=$9 b0 b1 out fig
    shift 9
    b0=$(busy)
    if ! out=$($cli iperf3 -c "$ip" -p "$port" -P "$p" -t "$SECS" -J "$@" 2>/dev/null); then
        rec "$g" "$m" Gbit/s higher "$s" "$r1" "$r2" skip "iperf3 failed"
        return 0
    fi
    b1=$(busy)
    fig=$(printf '%s' "$out" | $PY -c "
import json, sys
e = json.load(sys.stdin)['end']['sum_received']
gbit = e['bytes'] * 8 / 1e9
cpu = ($b1 - $b0) / $HZ
print('%.3f\t%s' % (e['bits_per_second'] / 1e9, '%.4f' % (cpu / gbit) if gbit > 0 else '-'))")
    rec "$g" "$m" Gbit/s higher "$s" "$r1" "$r2" "${fig%%$'\t'*}" "${fig##*$'\t'}"
}

# m_udp GROUP METRIC SETUP REF1 REF2 "CLIENT_PREFIX" SERVER_IP PORT: 64-byte UDP at full
# speed; the figure is packets delivered (sent - lost) per second at the receiver.
m_udp() {
    local g=$1 m=$2 s=$3 r1=$4 r2=$5 cli=$6 ip=$7 port=$8 b0 b1 out fig
    b0=$(busy)
    if ! out=$($cli iperf3 -c "$ip" -p "$port" -u -l 64 -b 0 -t "$SECS" -J 2>/dev/null); then
        rec "$g" "$m" Mpps higher "$s" "$r1" "$r2" skip "iperf3 failed"
        return 0
    fi
    b1=$(busy)
    fig=$(printf '%s' "$out" | $PY -c "
import json, sys
end = json.load(sys.stdin)['end']
e = end.get('sum_received') or end['sum']
pk = e['packets'] - e['lost_packets']
cpu = ($b1 - $b0) / $HZ
print('%.4f\t%s' % (pk / e['seconds'] / 1e6, '%.4f' % (cpu / (pk / 1e6)) if pk > 0 else '-'))")
    rec "$g" "$m" Mpps higher "$s" "$r1" "$r2" "${fig%%$'\t'*}" "${fig##*$'\t'}"
}

# m_rr GROUP SETUP REF1 REF2 "CLIENT_PREFIX" SERVER_IP PORT: 64-byte TCP ping-pong with
# sockperf; records its p50 and p99 (sockperf reports half the round trip, in µs).
m_rr() {
    local g=$1 s=$2 r1=$3 r2=$4 cli=$5 ip=$6 port=$7 out p50 p99
    if ! out=$($cli sockperf ping-pong --tcp -i "$ip" -p "$port" -m 64 -t "$SECS" 2>&1); then
        rec "$g" "RR 64 B p50" us lower "$s" "$r1" "$r2" skip "sockperf failed"
        rec "$g" "RR 64 B p99" us lower "$s" "$r1" "$r2" skip "sockperf failed"
        return 0
    fi
    p50=$(printf '%s\n' "$out" | awk '/percentile 50\.000 =/{print $NF}')
    p99=$(printf '%s\n' "$out" | awk '/percentile 99\.000 =/{print $NF}')
    if [ -z "$p50" ] || [ -z "$p99" ]; then
        rec "$g" "RR 64 B p50" us lower "$s" "$r1" "$r2" skip "no percentiles in sockperf's output"
        rec "$g" "RR 64 B p99" us lower "$s" "$r1" "$r2" skip "no percentiles in sockperf's output"
        return 0
    fi
    rec "$g" "RR 64 B p50" us lower "$s" "$r1" "$r2" "$p50" -
    rec "$g" "RR 64 B p99" us lower "$s" "$r1" "$r2" "$p99" -
}

# servers "SERVER_PREFIX" IP: iperf3 on 5201 and a sockperf server on 11111, kept for
# the whole run (ended on exit with everything else in `pids`).
servers() {
    local srv=$1 ip=$2
    $srv iperf3 -s -p 5201 >/dev/null 2>&1 &
    pids+=($!)
    $srv sockperf server --tcp -i "$ip" -p 11111 >/dev/null 2>&1 &
    pids+=($!)
}

# wait_ping "CLIENT_PREFIX" IP: true once IP answers (up to ~5 s).
wait_ping() {
    local cli=$1 ip=$2
    for _ in $(seq 10); do
        $cli ping -n -q -c 1 -W 1 "$ip" >/dev/null 2>&1 && return 0
        sleep 0.3
    done
    return 1
}

# wait_tcp "CLIENT_PREFIX" IP PORT: true once a TCP connection to IP:PORT succeeds (up to
# ~5 s). Aim it at a sockperf server (`servers`), which takes a bare connect in its stride.
wait_tcp() {
    local cli=$1 ip=$2 port=$3
    for _ in $(seq 10); do
        $cli timeout 2 bash -c "exec 3<>/dev/tcp/$ip/$port" 2>/dev/null && return 0
        sleep 0.5
    done
    return 1
}
