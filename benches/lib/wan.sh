# The "wan" of the gateway benchmarks (egress.sh, egress_ab.sh, compare.sh): a network
# namespace `wan` behind a veth pair, host end wan0 198.18.0.1/24, wan end eth0
# 198.18.0.2/24, its loopback up. Sourced inside the benchmark's private namespace, after
# benches/lib/inner.sh.
wan_setup() {
    ip netns add wan
    ip link add wan0 type veth peer name eth0 netns wan
    ip addr add 198.18.0.1/24 dev wan0
    ip link set wan0 up
    ip -n wan addr add 198.18.0.2/24 dev eth0
    ip -n wan link set eth0 up
    ip -n wan link set lo up
}
