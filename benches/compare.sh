#!/usr/bin/env bash
# One comparison run: tapnet side by side with the kernel and the userspace peers, in one
# private namespace, every measurement repeated and the median reported.
#
#   bash benches/compare.sh [SECONDS]    (default 5 s per run; root, or user namespaces
#                                         and the packages already installed)
#
# Groups (TAPNET_COMPARE_ONLY=bridge,egress,overlay picks a subset; default all):
#   bridge   container <-> container on one host: the kernel bridge + veth; `rwfwd`, a
#            forwarder doing one read and one write per frame between two taps set up as
#            tapnet sets up its taps (vnet header, TSO: the limit of that I/O model, bin
#            benches/src/bin/rwfwd.rs); tapnet; VDE (`vde_switch` with tap ports) and Open
#            vSwitch userspace (netdev datapath, tap ports, userspace TSO on) where
#            installed. Metrics: iperf3 TCP single stream and 4 streams (-P 4), 64 B UDP
#            delivered packets/s, 64 B TCP request/response latency p50/p99 (sockperf
#            ping-pong; sockperf reports half the round trip).
#   egress   a sandbox reaching a server outside (a "wan" namespace behind a veth):
#            tapnet's NAT gateway (MTU 1500), slirp4netns at MTU 1500 and 65520, pasta
#            (its default MTU 65520), and the direct veth path; both directions (-R).
#            published: the wan reaching a server in a tapnet sandbox through a published
#            port vs the same server directly in the host namespace; both directions.
#   overlay  two hosts (namespaces) over a veth underlay: kernel vxlan + bridge + veth vs
#            the tapnet overlay (benches/lib/overlay_pair.sh); TCP single stream and 64 B
#            UDP.
# Ratios are against the kernel (bridge, overlay) or the direct path (egress, published);
# tapnet's rows also carry a second ratio: against rwfwd (bridge) and slirp4netns at MTU
# 65520 (egress). Beside every throughput figure: CPU seconds per Gbit or per million
# packets, machine-wide (see benches/lib/measure.sh for how and why).
#
# Environment:
#   TAPNET_COMPARE_ONLY      groups to run (comma-separated; default bridge,egress,overlay)
#   TAPNET_COMPARE_REPS      runs per measurement (default 3; the median is reported)
#   TAPNETD_ARGS             extra tapnetd flags (e.g. "--tap-io rw")
#   TAPNETD_ARGS_B           if set, a second tapnetd with these flags is measured beside
#                            the first in the bridge and egress groups (rows "tapnet-b",
#                            "tapnet-nat-b", "tapnet-pub-b", each also ÷ the first daemon's
#                            row), e.g. TAPNETD_ARGS="--tap-io uring" TAPNETD_ARGS_B="--tap-io rw";
#                            words of the form NAME=VALUE set the daemon's environment, e.g.
#                            TAPNETD_ARGS_B="TAPNET_GATEWAY_LINK=queue" (gateway thread)
#   TAPNET_COMPARE_DOCS      1: write the table into docs/benchmarks.md and the chart to
#                            docs/compare.svg; 0: don't. Default: only for a full run.
#   TAPNET_BENCH_WMEM_MAX    the host's net.core.wmem_max during an egress run (default
#                            32 MiB, restored after; 0: leave it): pasta's send buffer,
#                            below 16 MiB its TCP out stalls (benches/lib/wmem.sh)
#   TAPNET_COMPARE_NO_INSTALL=1  never call apt-get (missing optional peers are skipped)
#   TAPNET_COMPARE_REPORT=1  measure nothing: redraw the table and chart of the last run
# Results: target/compare/results.tsv (every run), meta (machine, date, commit, load),
# table.md, compare.svg.
#
# Packages (Debian): iperf3 sockperf slirp4netns passt vde2 openvswitch-switch, installed
# with apt-get when missing (as root, non-interactively; services are not started: the
# script runs its own vde_switch/ovsdb-server/ovs-vswitchd inside the namespace). All
# traffic stays inside namespaces the script creates; every process it starts is ended
# by pid on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-5}
case $SECS in '' | *[!0-9]* | 0) echo "SECONDS must be a positive integer, not '$SECS'" >&2; exit 2 ;; esac
REPS=${TAPNET_COMPARE_REPS:-3}
case $REPS in '' | *[!0-9]* | 0) echo "TAPNET_COMPARE_REPS must be a positive integer" >&2; exit 2 ;; esac
ALL=bridge,egress,overlay
ONLY=${TAPNET_COMPARE_ONLY:-$ALL}
for g in ${ONLY//,/ }; do
    case $g in bridge | egress | overlay) ;; *) echo "TAPNET_COMPARE_ONLY: unknown group '$g' (bridge, egress, overlay)" >&2; exit 2 ;; esac
done
want() { case ",$ONLY," in *",$1,"*) return 0 ;; esac; return 1; }

if [ -z "${TAPNET_COMPARE_INNER:-}" ]; then
    OUT=$PWD/target/compare
    if [ -z "${TAPNET_COMPARE_REPORT:-}" ]; then
        T0=$(date +%s)
        # command -> Debian package; the first four are required, the rest optional.
        need=() required=(iperf3:iperf3 sockperf:sockperf slirp4netns:slirp4netns pasta:passt)
        optional=(vde_switch:vde2 ovs-vswitchd:openvswitch-switch)
        for cp in "${required[@]}" "${optional[@]}"; do
            PATH=$PATH:/usr/sbin:/sbin command -v "${cp%%:*}" >/dev/null || need+=("${cp##*:}")
        done
        if [ ${#need[@]} -gt 0 ] && [ -z "${TAPNET_COMPARE_NO_INSTALL:-}" ]; then
            echo "installing: ${need[*]}" >&2
            SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
            $SUDO apt-get update -qq
            # One at a time: an optional package that fails to install only skips its rows.
            for p in "${need[@]}"; do
                DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$p" >/dev/null ||
                    echo "could not install $p" >&2
            done
        fi
        for cp in "${required[@]}"; do
            command -v "${cp%%:*}" >/dev/null || { echo "${cp%%:*} is needed: apt-get install ${cp##*:}" >&2; exit 1; }
        done
        cargo build --release --bins >&2
        mkdir -p "$OUT"
        : >"$OUT/results.tsv"
        rm -f "$OUT/meta"
        # pasta's send buffer is capped by the host's net.core.wmem_max (benches/lib/wmem.sh)
        . benches/lib/wmem.sh
        if want egress; then
            wmem_raise
            trap wmem_restore EXIT
        fi
        . benches/lib/ns_args.sh   # as root: no user namespace (tapnetd keeps CAP_SYS_NICE)
        env TAPNET_COMPARE_INNER=1 TAPNET_COMPARE_OUT="$OUT" PATH="$PATH:/usr/sbin:/sbin" \
            unshare $(bench_ns_args) --propagation private bash "$0" "$@"
        wmem_restore
        commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
        git diff --quiet HEAD 2>/dev/null || commit="$commit (with uncommitted changes)"
        {
            printf 'M_SECS=%q\n' "$SECS"
            printf 'M_REPS=%q\n' "$REPS"
            printf 'M_ONLY=%q\n' "$ONLY"
            printf 'M_ARGS=%q\n' "${TAPNETD_ARGS:-}"
        printf 'M_ARGS_B=%q\n' "${TAPNETD_ARGS_B:-}"
            printf 'M_TOTAL=%q\n' "$(($(date +%s) - T0))"
            printf 'M_BG=%q\n' "$(cat "$OUT/background" 2>/dev/null || echo "?")"
            printf 'M_MACHINE=%q\n' "$(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), kernel $(uname -r)"
            printf 'M_COMMIT=%q\n' "$commit"
            printf 'M_WHEN=%q\n' "$(date -u '+%Y-%m-%d %H:%M UTC')"
            printf 'M_LOAD=%q\n' "$(cut -d' ' -f1-3 /proc/loadavg)"
        } >"$OUT/meta"
    fi
    # The report: from target/compare/results.tsv and meta (TAPNET_COMPARE_REPORT=1 redraws
    # it from the last run without measuring again).
    [ -s "$OUT/meta" ] || { echo "no finished run in $OUT" >&2; exit 1; }
    # shellcheck disable=SC1091
    . "$OUT/meta"
    [ -z "${TAPNET_COMPARE_REPORT:-}" ] || cargo build --release -p tapnet-benches --bin chart >&2
    target/release/chart "$OUT/results.tsv" --markdown "$OUT/table.md" --svg "$OUT/compare.svg" \
        --title "tapnet: benches/compare.sh, ratios (median of $M_REPS runs of ${M_SECS} s)"
    echo
    cat "$OUT/table.md"
    machine=$M_MACHINE commit=$M_COMMIT when=$M_WHEN load=$M_LOAD bg=$M_BG secs=$M_TOTAL
    SECS=$M_SECS REPS=$M_REPS ONLY=$M_ONLY TAPNETD_ARGS=$M_ARGS TAPNETD_ARGS_B=${M_ARGS_B:-}
    args="TAPNETD_ARGS='${TAPNETD_ARGS:-}'"
    [ -z "$TAPNETD_ARGS_B" ] || args="$args, tapnet-b: TAPNETD_ARGS_B='$TAPNETD_ARGS_B'"
    echo
    echo "machine: $machine; $when; commit $commit"
    echo "background load before the run: ${bg}% of the machine busy; load average after: $load"
    echo "total run time: ${secs} s (SECONDS=$SECS, $REPS runs each, groups $ONLY, $args)"
    docs=${TAPNET_COMPARE_DOCS:-}
    [ -n "$docs" ] || { [ "$ONLY" = "$ALL" ] && docs=1 || docs=0; }
    if [ "$docs" = 1 ]; then
        cp "$OUT/compare.svg" docs/compare.svg
        {
            echo "Run: \`bash benches/compare.sh $SECS\` on $when, commit $commit, $args."
            echo "Machine: $machine. Background load before the run: ${bg}% of the machine busy;"
            echo "load average after: $load. Total run time ${secs} s."
            echo "Each figure is the median of $REPS runs of $SECS s (all runs listed); CPU is machine-wide"
            echo "CPU seconds per Gbit received or per million packets delivered (median of the runs)."
            echo
            cat "$OUT/table.md"
            echo
            echo "![tapnet vs the kernel and the userspace peers, ratios per metric](compare.svg)"
        } >"$OUT/section.md"
        python3 - "$OUT/section.md" docs/benchmarks.md <<'PYEOF'
import sys
section, path = sys.argv[1], sys.argv[2]
body = open(section).read()
doc = open(path).read()
begin, end = "<!-- compare:begin -->", "<!-- compare:end -->"
block = begin + "\n" + body.rstrip("\n") + "\n" + end
if begin in doc and end in doc:
    head, rest = doc.split(begin, 1)
    tail = rest.split(end, 1)[1]
    doc = head + block + tail
else:
    doc = doc.rstrip("\n") + "\n\n## Comparison run (benches/compare.sh)\n\n" + block + "\n"
open(path, "w").write(doc)
PYEOF
        echo "wrote the table into docs/benchmarks.md and the chart to docs/compare.svg" >&2
    else
        echo "results in $OUT (docs not written: TAPNET_COMPARE_DOCS=1 writes them)" >&2
    fi
    exit 0
fi

# ---------------------------------------------------------------- inside the namespace
# /run, lo, PY, pids, json (benches/lib/inner.sh); rec/m_tcp/m_udp/m_rr/servers
# (benches/lib/measure.sh); overlay_pair_setup (benches/lib/overlay_pair.sh); wan_setup
# (benches/lib/wan.sh).
. benches/lib/inner.sh
RES=$TAPNET_COMPARE_OUT/results.tsv
. benches/lib/measure.sh
. benches/lib/overlay_pair.sh
. benches/lib/wan.sh

echo "measuring the background load (2 s)..." >&2
background_load >"$TAPNET_COMPARE_OUT/background"
echo "background: $(cat "$TAPNET_COMPARE_OUT/background")% of the machine busy" >&2

T="target/release/tapnet -H unix:///run/tapnet/tapnet.sock"
TB="target/release/tapnet -H unix:///run/tapnet-b/tapnet.sock"
# With TAPNETD_ARGS_B set, a second daemon ("tapnet-b": its own socket, roots and flags)
# runs beside the first, and the bridge and egress groups measure both in the same run.
B=""
[ -z "${TAPNETD_ARGS_B:-}" ] || B=1
declare -A tapnetd_started
# start_tapnetd [b]
start_tapnetd() {
    local v=${1:-} dir=/run/tapnet cli=$T args=${TAPNETD_ARGS:-}
    [ -z "$v" ] || dir=/run/tapnet-b cli=$TB args=${TAPNETD_ARGS_B:-}
    [ -n "${tapnetd_started[x$v]:-}" ] && return 0
    mkdir -p $dir
    # NAME=VALUE words set the daemon's environment, the others are flags.
    local envs=() flags=() a
    for a in $args; do
        case $a in
            [A-Z_]*=*) envs+=("$a") ;;
            *) flags+=("$a") ;;
        esac
    done
    env "${envs[@]}" target/release/tapnetd -H unix://$dir/tapnet.sock --exec-root $dir \
        --data-root $dir-data --dns 198.18.0.2 "${flags[@]}" >$dir.log 2>&1 &
    pids+=($!)
    for _ in $(seq 100); do $cli network ls >/dev/null 2>&1 && break; sleep 0.1; done
    $cli network ls >/dev/null 2>&1 || { echo "tapnetd did not start:" >&2; cat $dir.log >&2; exit 1; }
    tapnetd_started[x$v]=1
}

declare -A CLI IP SKIP
# skip_all GROUP SETUP REF1 REASON METRIC:UNIT:BETTER...: one skip row per metric.
skip_all() {
    local g=$1 s=$2 r1=$3 why=$4 m
    shift 4
    for m in "$@"; do
        IFS=: read -r name unit better <<<"$m"
        rec "$g" "$name" "$unit" "$better" "$s" "$r1" - skip "$why"
    done
}

# ------------------------------------------------------------------ bridge set-up
bridge_setup() {
    # kernel bridge + veth
    ip link add br0 type bridge
    ip link set br0 up
    for i in 1 2; do
        ip netns add k$i
        ip -n k$i link set lo up
        ip link add vk$i type veth peer name eth0 netns k$i
        ip link set vk$i master br0 up
        ip -n k$i addr add 10.210.0.$i/24 dev eth0
        ip -n k$i link set eth0 up
    done
    CLI[kernel]="ip netns exec k1" IP[kernel]=10.210.0.2
    servers "ip netns exec k2" 10.210.0.2

    # one read, one write per frame
    ip netns add f1
    ip netns add f2
    target/release/rwfwd /run/netns/f1 10.211.0.1/24 /run/netns/f2 10.211.0.2/24 \
        >/run/rwfwd.out 2>/run/rwfwd.log &
    pids+=($!)
    for _ in $(seq 50); do grep -q ready /run/rwfwd.out && break; sleep 0.1; done
    CLI[rwfwd]="ip netns exec f1" IP[rwfwd]=10.211.0.2
    servers "ip netns exec f2" 10.211.0.2

    # tapnet
    start_tapnetd
    $T network create --subnet 10.201.0.0/24 cmpbr >/dev/null
    for i in 1 2; do
        $T sandbox create bt$i >/dev/null
        $T network connect --ip 10.201.0.1$i cmpbr bt$i
    done
    CLI[tapnet]="$T exec bt1 --" IP[tapnet]=10.201.0.12
    servers "$T exec bt2 --" 10.201.0.12
    if [ -n "$B" ]; then
        start_tapnetd b
        $TB network create --subnet 10.204.0.0/24 cmpbrb >/dev/null
        for i in 1 2; do
            $TB sandbox create bb$i >/dev/null
            $TB network connect --ip 10.204.0.1$i cmpbrb bb$i
        done
        CLI[tapnet-b]="$TB exec bb1 --" IP[tapnet-b]=10.204.0.12
        servers "$TB exec bb2 --" 10.204.0.12
    fi

    # VDE: vde_switch with two tap ports, each moved into a container namespace
    if command -v vde_switch >/dev/null; then
        mkdir -p /run/vde
        ip netns add v1
        ip netns add v2
        vde_switch -d -s /run/vde/ctl -M /run/vde/mgmt -p /run/vde/pid -t vt1 -t vt2 \
            >/run/vde/log 2>&1
        for _ in $(seq 50); do [ -s /run/vde/pid ] && break; sleep 0.1; done
        pids+=("$(cat /run/vde/pid)")
        for i in 1 2; do
            ip link set vt$i netns v$i
            ip -n v$i link set lo up
            ip -n v$i addr add 10.212.0.$i/24 dev vt$i
            ip -n v$i link set vt$i up
        done
        CLI[vde]="ip netns exec v1" IP[vde]=10.212.0.2
        servers "ip netns exec v2" 10.212.0.2
    else
        SKIP[vde]="not installed (Debian vde2)"
    fi

    # Open vSwitch userspace: private db and run dirs, netdev datapath, tap ports
    if command -v ovs-vswitchd >/dev/null && command -v ovsdb-server >/dev/null; then
        local O=/run/ovs
        mkdir -p $O
        export OVS_RUNDIR=$O OVS_DBDIR=$O OVS_LOGDIR=$O OVS_SYSCONFDIR=$O
        ovsdb-tool create $O/conf.db /usr/share/openvswitch/vswitch.ovsschema
        ovsdb-server $O/conf.db --remote=punix:$O/db.sock --pidfile=$O/ovsdb.pid \
            --unixctl=$O/ovsdb.ctl --log-file=$O/ovsdb.log --no-chdir >/dev/null 2>&1 &
        pids+=($!)
        local V="ovs-vsctl --db=unix:$O/db.sock --timeout=10"
        for _ in $(seq 50); do [ -S $O/db.sock ] && break; sleep 0.1; done
        $V --no-wait init
        # Its best setting for taps: segmentation offload in userspace (experimental in 3.1).
        $V --no-wait set Open_vSwitch . other_config:userspace-tso-enable=true
        ovs-vswitchd unix:$O/db.sock --pidfile=$O/vswitchd.pid --unixctl=$O/vswitchd.ctl \
            --log-file=$O/vswitchd.log --no-chdir >/dev/null 2>&1 &
        pids+=($!)
        $V add-br obr0 -- set bridge obr0 datapath_type=netdev
        ip netns add o1
        ip netns add o2
        for i in 1 2; do
            $V add-port obr0 ot$i -- set Interface ot$i type=tap
            for _ in $(seq 50); do ip link show ot$i >/dev/null 2>&1 && break; sleep 0.1; done
            ip link set ot$i netns o$i
            ip -n o$i link set lo up
            ip -n o$i addr add 10.213.0.$i/24 dev ot$i
            ip -n o$i link set ot$i up
        done
        ip link set obr0 up
        CLI[ovs]="ip netns exec o1" IP[ovs]=10.213.0.2
        servers "ip netns exec o2" 10.213.0.2
    else
        SKIP[ovs]="not installed (Debian openvswitch-switch)"
    fi
    sleep 0.5
    local s
    for s in "${bridge_setups[@]}"; do
        [ -z "${SKIP[$s]:-}" ] || continue
        wait_ping "${CLI[$s]}" "${IP[$s]}" || SKIP[$s]="no connectivity (set-up failed)"
    done
}

bridge_setups=(kernel rwfwd tapnet ${B:+tapnet-b} vde ovs)
bridge_metrics=("TCP 1 stream:Gbit/s:higher" "TCP 4 streams:Gbit/s:higher"
    "UDP 64 B delivered:Mpps:higher" "RR 64 B p50:us:lower" "RR 64 B p99:us:lower")
bridge_run() {
    local s r1 r2
    for s in "${bridge_setups[@]}"; do
        r1=kernel r2=-
        [ $s = kernel ] && r1=-
        [ $s = tapnet ] && r2=rwfwd
        [ $s = tapnet-b ] && r2=tapnet
        if [ -n "${SKIP[$s]:-}" ]; then
            [ "$1" = 1 ] && skip_all bridge $s $r1 "${SKIP[$s]}" "${bridge_metrics[@]}"
            continue
        fi
        m_tcp bridge "TCP 1 stream" $s $r1 $r2 1 "${CLI[$s]}" "${IP[$s]}" 5201
        m_tcp bridge "TCP 4 streams" $s $r1 $r2 4 "${CLI[$s]}" "${IP[$s]}" 5201
        m_udp bridge "UDP 64 B delivered" $s $r1 $r2 "${CLI[$s]}" "${IP[$s]}" 5201
        m_rr bridge $s $r1 $r2 "${CLI[$s]}" "${IP[$s]}" 11111
    done
}

# ------------------------------------------------------------------ egress set-up
egress_setup() {
    wan_setup
    # pasta copies the address and default route of the host's outbound interface.
    ip route add default via 198.18.0.2
    servers "ip netns exec wan" 198.18.0.2
    CLI[direct]="" # the host namespace itself

    for m in 1500 65520; do
        ip netns add sl$m
        slirp4netns --configure --mtu $m --disable-host-loopback --netns-type=path \
            /run/netns/sl$m tap0 >/run/slirp$m.log 2>&1 &
        pids+=($!)
        CLI[slirp$m]="ip netns exec sl$m"
    done
    ip netns add pa
    pasta --config-net --no-map-gw -q -f -t none -u none -T none -U none --runas 0 \
        --netns /run/netns/pa >/run/pasta.log 2>&1 &
    pids+=($!)
    CLI[pasta]="ip netns exec pa"

    start_tapnetd
    $T network create --subnet 10.202.0.0/24 cmpeg >/dev/null
    $T sandbox create eg1 >/dev/null
    $T network connect cmpeg eg1
    CLI[tapnet-nat]="$T exec eg1 --"
    if [ -n "$B" ]; then
        start_tapnetd b
        $TB network create --subnet 10.205.0.0/24 cmpegb >/dev/null
        $TB sandbox create egb1 >/dev/null
        $TB network connect cmpegb egb1
        CLI[tapnet-nat-b]="$TB exec egb1 --"
        $TB sandbox create -p 5302:5201 pubb >/dev/null
        $TB network connect cmpegb pubb
        $TB exec pubb -- iperf3 -s -p 5201 >/dev/null 2>&1 &
        pids+=($!)
    fi

    # published port: wan -> host:5301 -> sandbox pub:5201, vs wan -> host:5202 directly
    $T sandbox create -p 5301:5201 pub >/dev/null
    $T network connect cmpeg pub
    $T exec pub -- iperf3 -s -p 5201 >/dev/null 2>&1 &
    pids+=($!)
    iperf3 -s -p 5202 >/dev/null 2>&1 &
    pids+=($!)
    sleep 0.5
    # A TCP connect, not a ping: pasta answers pings only where ping sockets are allowed.
    for s in "${egress_setups[@]}"; do
        wait_tcp "${CLI[$s]}" 198.18.0.2 11111 || SKIP[$s]="no connectivity (set-up failed)"
    done
}

egress_setups=(direct tapnet-nat ${B:+tapnet-nat-b} slirp1500 slirp65520 pasta)
egress_metrics=("TCP out:Gbit/s:higher" "TCP in (-R):Gbit/s:higher")
egress_run() {
    local s r1 r2
    for s in "${egress_setups[@]}"; do
        r1=direct r2=-
        [ $s = direct ] && r1=-
        [ $s = tapnet-nat ] && r2=slirp65520
        [ $s = tapnet-nat-b ] && r2=tapnet-nat
        if [ -n "${SKIP[$s]:-}" ]; then
            [ "$1" = 1 ] && skip_all egress $s $r1 "${SKIP[$s]}" "${egress_metrics[@]}"
            continue
        fi
        m_tcp egress "TCP out" $s $r1 $r2 1 "${CLI[$s]}" 198.18.0.2 5201
        m_tcp egress "TCP in (-R)" $s $r1 $r2 1 "${CLI[$s]}" 198.18.0.2 5201 -R
    done
    local W="ip netns exec wan"
    m_tcp published "TCP wan→server" direct - - 1 "$W" 198.18.0.1 5202
    m_tcp published "TCP wan→server" tapnet-pub direct - 1 "$W" 198.18.0.1 5301
    [ -z "$B" ] || m_tcp published "TCP wan→server" tapnet-pub-b direct tapnet-pub 1 "$W" 198.18.0.1 5302
    m_tcp published "TCP server→wan (-R)" direct - - 1 "$W" 198.18.0.1 5202 -R
    m_tcp published "TCP server→wan (-R)" tapnet-pub direct - 1 "$W" 198.18.0.1 5301 -R
    [ -z "$B" ] || m_tcp published "TCP server→wan (-R)" tapnet-pub-b direct tapnet-pub 1 "$W" 198.18.0.1 5302 -R
}

# ------------------------------------------------------------------ overlay
overlay_ok=""
overlay_setup() {
    if overlay_pair_setup; then
        overlay_ok=1
        servers "$OV_K_SRV" 10.100.0.2
        servers "$OV_T_SRV" 10.101.0.12
        sleep 0.5
    fi
}
overlay_run() {
    if [ -z "$overlay_ok" ]; then
        [ "$1" = 1 ] && skip_all overlay tapnet kernel "no connectivity (set-up failed)" \
            "TCP 1 stream:Gbit/s:higher" "UDP 64 B delivered:Mpps:higher"
        return 0
    fi
    m_tcp overlay "TCP 1 stream" kernel - - 1 "$OV_K_CLI" 10.100.0.2 5201
    m_tcp overlay "TCP 1 stream" tapnet kernel - 1 "$OV_T_CLI" 10.101.0.12 5201
    m_udp overlay "UDP 64 B delivered" kernel - - "$OV_K_CLI" 10.100.0.2 5201
    m_udp overlay "UDP 64 B delivered" tapnet kernel - "$OV_T_CLI" 10.101.0.12 5201
}

# ------------------------------------------------------------------ run
groups=()
want bridge && groups+=(bridge)
want egress && groups+=(egress)
want overlay && groups+=(overlay)
for g in "${groups[@]}"; do
    echo "setting up $g..." >&2
    "${g}_setup"
done
# Repetitions outermost: the setups alternate (A B C A B C), so a burst of load from
# elsewhere on the machine spreads over all of them instead of hitting one.
for rep in $(seq "$REPS"); do
    echo "run $rep of $REPS" >&2
    for g in "${groups[@]}"; do
        "${g}_run" "$rep"
    done
done
