"""Schemathesis hooks for tapnet's API contract run (tests/tests/api_contract.rs).

Loaded with SCHEMATHESIS_HOOKS=hooks (PYTHONPATH=tests/contract); TAPNET_SOCKET is
the daemon's unix socket, read directly (not through the TCP forwarder) for the
snapshots.

* Check `rejected_request_changes_nothing`: before every call the hook takes a
  snapshot of `GET /networks` and `GET /sandboxes`; after a 4xx answer the check
  takes them again and fails, with the difference, if anything changed. The run uses
  one worker, so nothing else changes the daemon between the two snapshots.
* Check `accepted_network_takes_an_endpoint`: after a 201 of `POST /networks/create`
  the probe sandbox is connected to the new network and disconnected again; a 5xx
  (but 503 `no free address`) is a finding: a network the API accepted must work.
* Fixtures: the network `contract-net` (bridge, 10.213.0.0/24 + fd00:213::/64) and
  the sandboxes `contract-sb` (the generated connects' target), `contract-peer` (on
  `contract-net` with PEER_MAC) and `contract-probe` exist before every call (re-made
  if a generated DELETE removed them), and the run's leftovers are bounded: beyond a few generated networks
  or sandboxes the oldest are removed, so default pools and the machine's 2 cores are
  not exhausted by the run itself (a 503 for an exhausted pool would be the run's
  doing, not a finding).
* Bias: about half of the generated path ids name an object that exists (the
  fixtures and the pre-defined networks) and half of the connect/disconnect bodies
  name the fixture sandbox, so generated bodies reach the controller's validation
  rather than stopping at 404; connects also try MACs the network already has, and
  network creates the kernel's and IPAM's boundaries (MTUs around 1280 and 65521
  with and without IPv6, one-address IP ranges at the network/broadcast address).
"""

import http.client
import json
import os
import socket

import schemathesis
from hypothesis import strategies as st

SOCKET = os.environ.get("TAPNET_SOCKET", "/run/tapnet/tapnet.sock")
FIXTURE_NET = "contract-net"
FIXTURE_SANDBOX = "contract-sb"
# Connected to FIXTURE_NET with PEER_MAC: connects that reuse a MAC meet it.
FIXTURE_PEER = "contract-peer"
PEER_MAC = "02:42:0a:d5:00:63"
# The gateway's MAC on FIXTURE_NET (02:42 + 10.213.0.1).
GATEWAY_MAC = "02:42:0a:d5:00:01"
# Connected by `accepted_network_takes_an_endpoint` only (never a generated target).
FIXTURE_PROBE = "contract-probe"
NETWORK_IDS = ["bridge", "none", "host", FIXTURE_NET]
SANDBOX_IDS = [FIXTURE_SANDBOX, FIXTURE_PEER]
FIXTURE_SANDBOXES = {FIXTURE_SANDBOX, FIXTURE_PEER, FIXTURE_PROBE}
PREDEFINED = {"bridge", "none", "host"}
# Generated objects kept at most (the oldest beyond this are removed between calls).
KEEP_NETWORKS = 6
KEEP_SANDBOXES = 6


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("tapnet", timeout=60)
        self._path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(60)
        s.connect(self._path)
        self.sock = s


def api(method, path, body=None):
    """One request to the daemon's socket: (status, parsed JSON or None)."""
    conn = _UnixConnection(SOCKET)
    try:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = None
        return resp.status, parsed
    finally:
        conn.close()


def _get(path):
    status, body = api("GET", path)
    if status != 200:
        raise AssertionError(f"GET {path} -> {status}: {body}")
    return body


def snapshot():
    """The daemon's visible state: every network and every sandbox."""
    return {"networks": _get("/networks"), "sandboxes": _get("/sandboxes")}


def _ensure_fixtures():
    nets = _get("/networks")
    sbs = _get("/sandboxes")
    names = {n["Name"] for n in nets}
    if FIXTURE_NET not in names:
        status, body = api(
            "POST",
            "/networks/create",
            {
                "Name": FIXTURE_NET,
                "EnableIPv6": True,
                "IPAM": {
                    "Config": [
                        {"Subnet": "10.213.0.0/24"},
                        {"Subnet": "fd00:213::/64"},
                    ]
                },
            },
        )
        if status != 201:
            raise AssertionError(f"cannot make fixture network: {status} {body}")
    sb_names = {s["Name"] for s in sbs}
    for name in sorted(FIXTURE_SANDBOXES - sb_names):
        status, body = api("POST", "/sandboxes", {"Name": name})
        if status != 201:
            raise AssertionError(f"cannot make fixture sandbox {name}: {status} {body}")
    peer = _get(f"/sandboxes/{FIXTURE_PEER}")
    if FIXTURE_NET not in peer.get("Endpoints", {}):
        for other in list(peer.get("Endpoints", {})):
            api("POST", f"/networks/{other}/disconnect", {"Container": FIXTURE_PEER, "Force": True})
        status, body = api(
            "POST",
            f"/networks/{FIXTURE_NET}/connect",
            {"Container": FIXTURE_PEER, "EndpointConfig": {"MacAddress": PEER_MAC, "Aliases": ["peer"]}},
        )
        if status != 200:
            raise AssertionError(f"cannot connect fixture {FIXTURE_PEER}: {status} {body}")
    # Bound what the run leaves: the oldest generated objects beyond the limits go
    # (sandboxes first: their endpoints keep networks in use).
    extra_sbs = [s for s in sbs if s["Name"] not in FIXTURE_SANDBOXES]
    for s in extra_sbs[: max(0, len(extra_sbs) - KEEP_SANDBOXES)]:
        api("DELETE", f"/sandboxes/{s['Id']}")
    extra_nets = [
        n for n in nets if n["Name"] not in PREDEFINED and n["Name"] != FIXTURE_NET
    ]
    for n in extra_nets[: max(0, len(extra_nets) - KEEP_NETWORKS)]:
        for sid in list(n.get("Containers", {})):
            api("POST", f"/networks/{n['Id']}/disconnect", {"Container": sid, "Force": True})
        api("DELETE", f"/networks/{n['Id']}")


def _remove_generated(path, name):
    if path == "/sandboxes":
        if name not in FIXTURE_SANDBOXES:
            for s in _get("/sandboxes"):
                if s["Name"] == name:
                    api("DELETE", f"/sandboxes/{s['Id']}")
        return
    if name in PREDEFINED or name == FIXTURE_NET:
        return
    for n in _get("/networks"):
        if n["Name"] == name:
            for sid in list(n.get("Containers", {})):
                api("POST", f"/networks/{n['Id']}/disconnect", {"Container": sid, "Force": True})
            api("DELETE", f"/networks/{n['Id']}")


_BEFORE = {"state": None, "request": None}


@schemathesis.hook
def before_call(context, case, kwargs):
    _ensure_fixtures()
    # A connect of the fixture sandbox would mostly meet "already connected" (409):
    # disconnect it first so each generated body reaches the full validation.
    if (
        case.method.upper() == "POST"
        and case.operation.path == "/networks/{id}/connect"
        and isinstance(case.body, dict)
        and case.body.get("Container") == FIXTURE_SANDBOX
        and isinstance((case.path_parameters or {}).get("id"), str)
    ):
        net = case.path_parameters["id"]
        # `none` and `host` exclude every other network: leave them too.
        for other in {net, "none", "host"}:
            api("POST", f"/networks/{other}/disconnect", {"Container": FIXTURE_SANDBOX, "Force": True})
    # A create whose name a generated network already has would only meet 409: that
    # network goes first (never a fixture or pre-defined one).
    if (
        case.method.upper() in ("POST",)
        and case.operation.path in ("/networks/create", "/sandboxes")
        and isinstance(case.body, dict)
        and isinstance(case.body.get("Name"), str)
    ):
        _remove_generated(case.operation.path, case.body["Name"])
    _BEFORE["state"] = snapshot()
    _BEFORE["request"] = f"{case.method} {case.formatted_path}"


def _diff(before, after):
    lines = []
    for kind in ("networks", "sandboxes"):
        b = {o.get("Id"): o for o in before[kind]}
        a = {o.get("Id"): o for o in after[kind]}
        for i in sorted(set(b) - set(a)):
            lines.append(f"{kind}: {b[i].get('Name')} ({i}) removed")
        for i in sorted(set(a) - set(b)):
            lines.append(f"{kind}: {a[i].get('Name')} ({i}) added")
        for i in sorted(set(a) & set(b)):
            if a[i] != b[i]:
                lines.append(
                    f"{kind}: {a[i].get('Name')} changed:\n  before {json.dumps(b[i], sort_keys=True)}"
                    f"\n  after  {json.dumps(a[i], sort_keys=True)}"
                )
    return "\n".join(lines)


CALL_LOG = os.environ.get("TAPNET_CONTRACT_CALLS")


# Self-test only (run_contract.py --self-test): make every rejection change the state,
# to show that `rejected_request_changes_nothing` fails when it should.
SABOTAGE = os.environ.get("TAPNET_CONTRACT_SABOTAGE") == "1"
_SABOTAGED = [0]


@schemathesis.hook
def after_call(context, case, response):
    """Record `METHOD PATH-TEMPLATE STATUS` per call (the Rust test checks coverage)."""
    if SABOTAGE and 400 <= response.status_code < 500:
        _SABOTAGED[0] += 1
        api("POST", "/sandboxes", {"Name": f"sabotage-{_SABOTAGED[0]}"})
    if CALL_LOG:
        with open(CALL_LOG, "a", encoding="utf-8") as f:
            message = ""
            if response.status_code >= 400:
                try:
                    message = str(response.json().get("message", ""))[:160]
                except Exception:  # noqa: BLE001 - not JSON: record nothing
                    message = "(not JSON)"
            f.write(f"{case.method.upper()} {case.operation.path} {response.status_code} {message}\n")


@schemathesis.check
def rejected_request_changes_nothing(ctx, response, case):
    """A 4xx answer leaves GET /networks and GET /sandboxes as they were."""
    if not 400 <= response.status_code < 500:
        return None
    before = _BEFORE["state"]
    if before is None:
        raise AssertionError("no snapshot was taken before the call (before_call hook)")
    after = snapshot()
    if after != before:
        raise AssertionError(
            f"{case.method} {case.formatted_path} was refused with {response.status_code} "
            f"({response.text[:300]}) but changed the daemon's state:\n{_diff(before, after)}"
        )
    return None


@schemathesis.check
def accepted_network_takes_an_endpoint(ctx, response, case):
    """A network the API created (201) can take an endpoint: connecting the probe
    sandbox answers 200 (then it is disconnected) or a 4xx, never a 5xx; the one
    server-side answer allowed is 503 `no free address` (a range that holds only the
    gateway, as dockerd)."""
    if case.operation.path != "/networks/create" or response.status_code != 201:
        return None
    try:
        nid = response.json()["Id"]
    except Exception as e:  # noqa: BLE001 - a 201 without an id is a finding too
        raise AssertionError(f"201 without an Id: {response.text[:200]}") from e
    for other in ("none", "host"):
        api("POST", f"/networks/{other}/disconnect", {"Container": FIXTURE_PROBE, "Force": True})
    status, body = api("POST", f"/networks/{nid}/connect", {"Container": FIXTURE_PROBE})
    if status == 200:
        api("POST", f"/networks/{nid}/disconnect", {"Container": FIXTURE_PROBE, "Force": True})
    message = (body or {}).get("message", "") if isinstance(body, dict) else ""
    if status >= 500 and not (status == 503 and "no free address" in message):
        raise AssertionError(
            f"network {nid} was created ({case.body!r}) but connecting a sandbox to it "
            f"answered {status}: {message}"
        )
    return None


def _op(context):
    op = context.operation
    if op is None:
        return "", ""
    return op.method.upper(), op.path


_SPARE = [0]


def _existing(kind, i, fixed):
    """The i-th of the objects that exist now (generated ones first) and the fixed names."""
    try:
        names = [o["Name"] for o in _get(f"/{kind}")]
    except AssertionError:
        names = []
    generated = [
        n
        for n in reversed(names)
        if n not in fixed and n not in PREDEFINED and n not in FIXTURE_SANDBOXES
    ]
    if not generated and kind == "networks":
        # Prune (tested before) leaves none: make one, so a DELETE can succeed.
        _SPARE[0] += 1
        name = f"contract-spare-{_SPARE[0]}"
        if api("POST", "/networks/create", {"Name": name})[0] == 201:
            generated = [name]
    choices = list(dict.fromkeys(generated + fixed))
    return {"id": choices[i % len(choices)]}


@schemathesis.hook
def before_generate_path_parameters(context, strategy):
    _, path = _op(context)
    if path.startswith("/networks/{id}"):
        kind, fixed = "networks", NETWORK_IDS
    elif path.startswith("/sandboxes/{id}"):
        kind, fixed = "sandboxes", SANDBOX_IDS
    else:
        return strategy
    # Drawn when the case is generated, just before its call: names that exist then
    # (generated objects too, so a DELETE can succeed).
    existing = st.integers(min_value=0, max_value=31).map(lambda i: _existing(kind, i, fixed))
    return st.one_of(strategy, existing)


@schemathesis.hook
def flatmap_body(context, body):
    method, path = _op(context)
    if method == "POST" and path.endswith(("/connect", "/disconnect")) and isinstance(body, dict):
        ours = {**body, "Container": FIXTURE_SANDBOX}
        choices = [body, ours]
        cfg = body.get("EndpointConfig")
        if path.endswith("/connect") and isinstance(cfg, dict):
            # MACs the network already has: the peer's and the gateway's (409 each).
            for mac in (PEER_MAC, GATEWAY_MAC, PEER_MAC.upper()):
                choices.append({**ours, "EndpointConfig": {**cfg, "MacAddress": mac}})
        return st.sampled_from(choices)
    if method == "POST" and path == "/networks/create" and isinstance(body, dict):
        # The kernel's and IPAM's boundaries, which random strings seldom reach: MTUs
        # around IPv6's 1280 and a tap's 65521, and one-address IP ranges at the
        # subnet's network and broadcast addresses.
        choices = [body]
        opts = body.get("Options") if isinstance(body.get("Options"), dict) else {}
        for mtu in ("68", "1279", "1280", "65521", "65522"):
            for v6 in (False, True):
                b = {**body, "Options": {**opts, "com.docker.network.driver.mtu": mtu}}
                if v6:
                    b["EnableIPv6"] = True
                    b["IPAM"] = {"Config": [{"Subnet": "10.241.0.0/24"}, {"Subnet": "fd00:241::/64"}]}
                choices.append(b)
        for subnet, ip_range in (
            ("10.242.0.0/24", "10.242.0.0/32"),
            ("10.242.0.0/24", "10.242.0.255/32"),
            ("10.242.0.0/30", "10.242.0.2/31"),
            ("10.242.0.0/24", "10.242.0.77/32"),
        ):
            choices.append({**body, "IPAM": {"Config": [{"Subnet": subnet, "IPRange": ip_range}]}})
        # Half the creates stay as generated.
        return st.sampled_from([body] * (len(choices) - 1) + choices)
    return st.just(body)
