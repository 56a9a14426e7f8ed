# Sourced by benches/egress.sh and benches/compare.sh before they enter their private
# namespace: the host's net.core.wmem_max for the duration of the run.
#
# Why: pasta asks for the largest socket send buffer it can get (SO_SNDBUF, capped at
# 2 x net.core.wmem_max, a host-wide setting no network namespace can change). It
# acknowledges the namespace's data as soon as it is in that buffer (the wan is a
# low-RTT destination), so the buffer is the only flow control toward the namespace; when
# it fills, pasta (Debian 12's 2023-03-09 build) drops the rest of what it read, sends a
# single duplicate ACK, and the namespace's TCP recovers only by retransmission timeout:
# stalls of 0.2-0.8 s. With this VM's 4 MiB cap that gave pasta "TCP out" 0.15 Gbit/s;
# from 16 MiB up, no stall (docs/benchmarks.md, "Round 4"). tapnet's egress sockets,
# iperf3 and slirp4netns set no send buffer (autotuned within tcp_wmem) and tapnet's
# socket-pair link uses SO_SNDBUFFORCE, so only pasta's figure depends on it.
#
# TAPNET_BENCH_WMEM_MAX (bytes, default 33554432): raise net.core.wmem_max to at least
# this for the run (root only; restored by wmem_restore). 0 leaves the host alone.

WMEM_OLD=""
wmem_raise() {
    local want=${TAPNET_BENCH_WMEM_MAX:-33554432} cur
    cur=$(cat /proc/sys/net/core/wmem_max 2>/dev/null || echo 0)
    [ "$want" != 0 ] || return 0
    if [ "$cur" -ge "$want" ]; then
        return 0
    fi
    if [ "$(id -u)" = 0 ] && echo "$want" >/proc/sys/net/core/wmem_max 2>/dev/null; then
        WMEM_OLD=$cur
        echo "net.core.wmem_max raised from $cur to $want for this run (pasta's send buffer)" >&2
    else
        echo "warning: net.core.wmem_max is $cur (< $want) and cannot be raised here:" \
            "pasta's TCP out figure will be stall-limited (see benches/lib/wmem.sh)" >&2
    fi
}
wmem_restore() {
    if [ -n "$WMEM_OLD" ]; then
        echo "$WMEM_OLD" >/proc/sys/net/core/wmem_max
        WMEM_OLD=""
    fi
}
