# Two "hosts" joined by an underlay, each with a kernel VXLAN path and a tapnet overlay
# path to one container: the set-up of benches/overlay.sh, as a function for
# benches/compare.sh (sourced inside its private namespace, after benches/lib/inner.sh).
#
# overlay_pair_setup: hosts ovh1/ovh2 (network namespaces) joined by a veth underlay
# 192.0.2.1/24 <-> 192.0.2.2/24, MTU 1500. On each host:
#   kernel: `vxlan` VNI 100 (UDP 8472, remote = the other host) on a Linux bridge and a
#           veth into container namespace ovk1/ovk2 (MTU 1450, 10.100.0.1/2);
#   tapnet: one tapnetd ($TAPNETD, default target/release/tapnetd; with $TAPNETD_ARGS) in the host's namespace, a static overlay
#           network (VNI 4242, UDP 4789, peers = the other host) and sandbox ovt1/ovt2
#           (10.101.0.11/12).
# Sets OV_K_CLI/OV_K_SRV and OV_T_CLI/OV_T_SRV (command prefixes for host 1's and host
# 2's container); the servers' addresses are 10.100.0.2 and 10.101.0.12. Fails (non-zero)
# if either path does not carry a ping.
overlay_pair_setup() {
    local i h other d
    for h in ovh1 ovh2; do ip netns add $h; ip -n $h link set lo up; done
    ip link add ou1 netns ovh1 type veth peer name ou2 netns ovh2
    ip -n ovh1 addr add 192.0.2.1/24 dev ou1
    ip -n ovh2 addr add 192.0.2.2/24 dev ou2
    ip -n ovh1 link set ou1 up mtu 1500
    ip -n ovh2 link set ou2 up mtu 1500
    for i in 1 2; do
        h=ovh$i other=192.0.2.$((3 - i))
        ip -n $h link add vx0 type vxlan id 100 remote "$other" dstport 8472 dev ou$i
        ip -n $h link add br0 type bridge
        ip -n $h link set vx0 master br0 up
        ip -n $h link set br0 up
        ip netns add ovk$i
        ip -n ovk$i link set lo up
        ip -n $h link add vk type veth peer name eth0 netns ovk$i
        ip -n $h link set vk master br0 up mtu 1450
        ip -n ovk$i link set eth0 mtu 1450
        ip -n ovk$i addr add 10.100.0.$i/24 dev eth0
        ip -n ovk$i link set eth0 up
    done
    for i in 1 2; do
        d=/run/tapnet-ovh$i
        mkdir -p $d
        # shellcheck disable=SC2086 # TAPNETD_ARGS is a list of flags
        nsenter --net=/run/netns/ovh$i "${TAPNETD:-target/release/tapnetd}" -H unix://$d/tapnet.sock \
            --exec-root $d/run --data-root $d/data ${TAPNETD_ARGS:-} >$d/tapnetd.log 2>&1 &
        pids+=($!)
    done
    local T1="target/release/tapnet -H unix:///run/tapnet-ovh1/tapnet.sock"
    local T2="target/release/tapnet -H unix:///run/tapnet-ovh2/tapnet.sock"
    for i in 1 2; do
        local T=$T1
        [ $i = 2 ] && T=$T2
        for _ in $(seq 100); do $T network ls >/dev/null 2>&1 && break; sleep 0.1; done
        $T network create -d overlay --subnet 10.101.0.0/24 \
            -o com.docker.network.driver.overlay.vxlanid_list=4242 \
            -o com.tapnet.overlay.peers=192.0.2.$((3 - i)) ov >/dev/null
        $T sandbox create ovt$i >/dev/null
        $T network connect --ip 10.101.0.1$i ov ovt$i
    done
    OV_K_CLI="ip netns exec ovk1" OV_K_SRV="ip netns exec ovk2"
    OV_T_CLI="$T1 exec ovt1 --" OV_T_SRV="$T2 exec ovt2 --"
    wait_ping "$OV_K_CLI" 10.100.0.2 && wait_ping "$OV_T_CLI" 10.101.0.12
}
