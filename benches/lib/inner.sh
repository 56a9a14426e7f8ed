# Sourced by the end-to-end bench scripts once they run inside their private
# user+net+mount namespace: /run becomes a tmpfs (for `ip netns`), loopback comes up, and
# the script gets PY (the system python3), `pids` (processes ended on exit) and
# `json EXPR` (a Python expression over the JSON document `d` on stdin).
mount -t tmpfs bench /run
mkdir -p /run/netns
ip link set lo up
PY=python3; [ -x /usr/bin/python3 ] && PY=/usr/bin/python3
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
json() { $PY -c "import json,sys; d=json.load(sys.stdin); print($1)"; }
