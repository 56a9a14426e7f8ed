#!/usr/bin/env bash
# Install what tapnet's tests need on a fresh Debian machine, then run every check:
# formatting, clippy, unit tests, and the namespace integration tests.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v ip >/dev/null || need+=(iproute2)
command -v ping >/dev/null || need+=(iputils-ping)
command -v curl >/dev/null || need+=(curl)
command -v unshare >/dev/null || need+=(util-linux)
command -v iperf3 >/dev/null || need+=(iperf3)
[ -x /usr/bin/python3 ] || command -v python3 >/dev/null || need+=(python3)
# tests/tests/docker_cli.rs drives tapnetd with the stock docker client;
# tests/tests/docker_plugin.rs runs the real dockerd (tapnet as its network plugin), in
# the test's own namespaces. Some machines have a docker client but no daemon, so look
# for dockerd itself: Debian's docker.io has both (and containerd, runc, iptables).
command -v dockerd >/dev/null || need+=(docker.io)
# The etcd client crate (engine/src/store/etcd.rs) compiles etcd's protobufs with
# protoc; the cluster-store tests (tests/tests/etcd.rs) run a real etcd.
command -v protoc >/dev/null || need+=(protobuf-compiler)
command -v etcd >/dev/null || need+=(etcd-server)
command -v etcdctl >/dev/null || need+=(etcd-client)
# tests/tests/cni.rs runs podman (CNI backend) with tapnet-cni: two busybox containers
# on a tapnet network (image: Debian's static busybox; podman's own CNI plugins); the
# dockerd tests' image is the same static busybox.
command -v podman >/dev/null || need+=(podman)
[ -d /usr/lib/cni ] || need+=(containernetworking-plugins)
dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q "ok installed" || need+=(busybox-static)
# tests/tests/cli.rs completes network and sandbox names in real bash, zsh and fish.
command -v zsh >/dev/null || need+=(zsh)
command -v fish >/dev/null || need+=(fish)

# tests/tests/capture.rs reads `tapnet capture` files with the real tcpdump;
# tests/tests/metrics.rs parses /metrics with the Prometheus client library's parser.
command -v tcpdump >/dev/null || need+=(tcpdump)
python3 -c 'import prometheus_client' 2>/dev/null || need+=(python3-prometheus-client)
if [ ${#need[@]} -gt 0 ]; then
    echo "installing: ${need[*]}"
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
rustup component add rustfmt clippy >/dev/null 2>&1 || true

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# The integration tests drive the real binaries.
cargo build --workspace --bins
cargo test --workspace
# The benchmarks compile and run one iteration each (figures: docs/benchmarks.md).
cargo bench -p tapnet-benches --bench switch_decide -- --test
# tests/tests/api_contract.rs (run by `cargo test` above) runs schemathesis from PyPI
# against a live tapnetd; tests/contract/setup.sh makes its virtualenv once under
# ~/.cache/tapnet (python3-venv from apt if missing; the test itself calls it first).
# Calling it here too keeps a machine that ran this script able to run the contract
# test offline later. Details: docs/testing.md, "API contract".
bash tests/contract/setup.sh >/dev/null


# The README's main job as a user runs it, twice (the second run must find nothing left
# of the first: a one-shot sandbox once stayed behind and the next run's `network create`
# failed), in a private mount and network namespace: its own /run and /var/lib on tmpfs,
# its own loopback, so the host's daemon state is not touched.
unshare -mn --propagation private bash -c 'mount -t tmpfs demo /run &&
    mount -t tmpfs demo /var/lib && ip link set lo up &&
    bash scripts/demo.sh && bash scripts/demo.sh'
# Every cargo-fuzz target for a short time over its committed corpus (nightly and
# cargo-fuzz are installed if missing; the 10-minute runs: docs/testing.md, "Fuzzing").
scripts/fuzz.sh 15
