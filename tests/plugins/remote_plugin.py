#!/usr/bin/env python3
"""A Docker network + IPAM plugin for tapnet's remote-driver tests (stdlib only).

It does the real thing: CreateNetwork makes a kernel bridge in the daemon's network
namespace (this process's) holding the network's gateway address; Join makes a veth
pair, enslaves one end to the bridge and names the other in SrcName; Leave deletes
it; DeleteNetwork deletes the bridge. Its IPAM hands out addresses from its pools
(a pool it picks itself is 10.77.N.0/24).

It records every call and what it holds: GET /debug/state answers
{"calls": [...], "networks": {...}, "endpoints": {...}, "joined": {...},
 "pools": {...}, "external": {...}}.

Fault injection (POST /debug/mode {"method": M, "mode": X}; mode "" clears):
  err      answer {"Err": "injected failure in M"} with status 500, change nothing
  err200   the same with status 200
  garbage  answer 200 "this is not json"
  shape    answer 200 JSON of the wrong shape
  slow     sleep --slow seconds, then answer an error, change nothing
  close    close the connection without an answer
  srcname  (Join) name an interface that does not exist (the veth is still made)
  outside  (RequestAddress) answer an address outside the pool (still allocated)
  mac      (CreateEndpoint) create the endpoint but answer a MAC of its own choosing

Usage: remote_plugin.py --socket PATH [--scope local|global] [--requires-mac]
                        [--implements NetworkDriver,IpamDriver] [--delay-start S]
"""

import argparse
import ipaddress
import json
import os
import socketserver
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler

CT = "application/vnd.docker.plugins.v1.2+json"
LOCK = threading.Lock()
STATE = {
    "calls": [],
    "networks": {},
    "endpoints": {},
    "joined": {},
    "pools": {},
    "external": {},
}
MODES = {}
ARGS = None
POOL_SEQ = [0]


def ip(*args):
    r = subprocess.run(["ip", *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError("ip %s: %s" % (" ".join(args), r.stderr.strip()))


def bridge_name(nid):
    return "rtb" + nid[:8]


def veth_names(eid):
    return "rth" + eid[:8], "rtc" + eid[:8]


class Failure(Exception):
    pass


# ---------------------------------------------------------------- NetworkDriver


def net_caps(_):
    return {"Scope": ARGS.scope, "ConnectivityScope": ARGS.scope}


def create_network(req):
    nid = req["NetworkID"]
    br = bridge_name(nid)
    ip("link", "add", br, "type", "bridge")
    ip("link", "set", br, "up")
    for d in (req.get("IPv4Data") or []) + (req.get("IPv6Data") or []):
        if d.get("Gateway"):
            ip("addr", "add", d["Gateway"], "dev", br, *(["nodad"] if ":" in d["Gateway"] else []))
    STATE["networks"][nid] = {
        "bridge": br,
        "ipv4": req.get("IPv4Data") or [],
        "ipv6": req.get("IPv6Data") or [],
        "options": req.get("Options") or {},
    }
    return {}


def delete_network(req):
    nid = req["NetworkID"]
    net = STATE["networks"].pop(nid, None)
    if net is None:
        raise Failure("no network %s" % nid)
    ip("link", "del", net["bridge"])
    return {}


def create_endpoint(req):
    eid = req["EndpointID"]
    if req["NetworkID"] not in STATE["networks"]:
        raise Failure("no network %s" % req["NetworkID"])
    STATE["endpoints"][eid] = {
        "network": req["NetworkID"],
        "interface": req.get("Interface") or {},
    }
    return {}


def delete_endpoint(req):
    if STATE["endpoints"].pop(req["EndpointID"], None) is None:
        raise Failure("no endpoint %s" % req["EndpointID"])
    return {}


def join(req, mode=""):
    eid = req["EndpointID"]
    ep = STATE["endpoints"].get(eid)
    if ep is None:
        raise Failure("no endpoint %s" % eid)
    net = STATE["networks"][ep["network"]]
    host, cont = veth_names(eid)
    ip("link", "add", host, "type", "veth", "peer", "name", cont)
    ip("link", "set", host, "master", net["bridge"], "up")
    STATE["joined"][eid] = {"host": host, "container": cont, "sandbox": req.get("SandboxKey")}
    gw = ""
    for d in net["ipv4"]:
        if d.get("Gateway"):
            gw = d["Gateway"].split("/")[0]
    gw6 = ""
    for d in net.get("ipv6") or []:
        if d.get("Gateway"):
            gw6 = d["Gateway"].split("/")[0]
    resp = {
        "InterfaceName": {"SrcName": "nosuchdev0" if mode == "srcname" else cont, "DstPrefix": "eth"},
        "Gateway": gw,
        "GatewayIPv6": gw6,
        "StaticRoutes": [],
        "DisableGatewayService": False,
    }
    if gw:
        resp["StaticRoutes"] = [
            {"Destination": "10.99.0.0/24", "RouteType": 0, "NextHop": gw},
            {"Destination": "10.98.0.0/24", "RouteType": 1},
        ]
    return resp


def leave(req):
    j = STATE["joined"].pop(req["EndpointID"], None)
    if j is None:
        raise Failure("endpoint %s has not joined" % req["EndpointID"])
    ip("link", "del", j["host"])
    return {}


def program_external(req):
    STATE["external"][req["EndpointID"]] = (req.get("Options") or {}).get(
        "com.docker.network.portmap"
    ) or []
    return {}


def revoke_external(req):
    STATE["external"].pop(req["EndpointID"], None)
    return {}


def oper_info(req):
    j = STATE["joined"].get(req["EndpointID"], {})
    return {"Value": {"host_veth": j.get("host", "")}}


# ---------------------------------------------------------------- IpamDriver


def ipam_caps(_):
    return {"RequiresMACAddress": ARGS.requires_mac}


def address_spaces(_):
    return {"LocalDefaultAddressSpace": "rlocal", "GlobalDefaultAddressSpace": "rglobal"}


def request_pool(req):
    if req.get("V6"):
        raise Failure("this plugin has no IPv6 pools")
    if req.get("Pool"):
        pool = ipaddress.ip_network(req["Pool"])
    else:
        while True:
            POOL_SEQ[0] += 1
            pool = ipaddress.ip_network("10.77.%d.0/24" % POOL_SEQ[0])
            if all(p["pool"] != str(pool) for p in STATE["pools"].values()):
                break
    for p in STATE["pools"].values():
        if ipaddress.ip_network(p["pool"]).overlaps(pool):
            raise Failure("pool %s overlaps %s" % (pool, p["pool"]))
    pid = "pool-%s" % str(pool).replace("/", "_")
    STATE["pools"][pid] = {
        "pool": str(pool),
        "sub": req.get("SubPool") or "",
        "options": req.get("Options") or {},
        "space": req.get("AddressSpace"),
        "addresses": {},
    }
    return {"PoolID": pid, "Pool": str(pool), "Data": {}}


def release_pool(req):
    if STATE["pools"].pop(req["PoolID"], None) is None:
        raise Failure("no pool %s" % req["PoolID"])
    return {}


def request_address(req, mode=""):
    p = STATE["pools"].get(req["PoolID"])
    if p is None:
        raise Failure("no pool %s" % req["PoolID"])
    net = ipaddress.ip_network(p["pool"])
    opts = req.get("Options") or {}
    gateway = opts.get("RequestAddressType") == "com.docker.network.gateway"
    if mode == "outside":
        addr = ipaddress.ip_address("192.0.2.77")
    elif req.get("Address"):
        addr = ipaddress.ip_address(req["Address"])
        if addr not in net:
            raise Failure("%s is not in %s" % (addr, net))
        if str(addr) in p["addresses"]:
            raise Failure("%s is in use" % addr)
    else:
        rng = ipaddress.ip_network(p["sub"]) if p["sub"] and not gateway else net
        addr = None
        for h in rng.hosts():
            if str(h) not in p["addresses"]:
                addr = h
                break
        if addr is None:
            raise Failure("pool %s is full" % net)
    p["addresses"][str(addr)] = {
        "gateway": gateway,
        "mac": opts.get("com.docker.network.endpoint.macaddress", ""),
    }
    return {"Address": "%s/%d" % (addr, net.prefixlen), "Data": {}}


def release_address(req):
    p = STATE["pools"].get(req["PoolID"])
    if p is None or p["addresses"].pop(req["Address"], None) is None:
        raise Failure("%s is not allocated in %s" % (req["Address"], req["PoolID"]))
    return {}


METHODS = {
    "NetworkDriver.GetCapabilities": net_caps,
    "NetworkDriver.CreateNetwork": create_network,
    "NetworkDriver.DeleteNetwork": delete_network,
    "NetworkDriver.CreateEndpoint": create_endpoint,
    "NetworkDriver.DeleteEndpoint": delete_endpoint,
    "NetworkDriver.Join": join,
    "NetworkDriver.Leave": leave,
    "NetworkDriver.ProgramExternalConnectivity": program_external,
    "NetworkDriver.RevokeExternalConnectivity": revoke_external,
    "NetworkDriver.EndpointOperInfo": oper_info,
    "NetworkDriver.DiscoverNew": lambda _: {},
    "NetworkDriver.DiscoverDelete": lambda _: {},
    "IpamDriver.GetCapabilities": ipam_caps,
    "IpamDriver.GetDefaultAddressSpaces": address_spaces,
    "IpamDriver.RequestPool": request_pool,
    "IpamDriver.ReleasePool": release_pool,
    "IpamDriver.RequestAddress": request_address,
    "IpamDriver.ReleaseAddress": release_address,
}


class Handler(BaseHTTPRequestHandler):
    def log_message(self, fmt, *args):
        sys.stderr.write("plugin: " + (fmt % args) + "\n")

    def answer(self, status, body, raw=None):
        data = raw if raw is not None else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", CT)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/debug/state":
            with LOCK:
                self.answer(200, STATE)
        else:
            self.answer(404, {"Err": "no such path"})

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            req = json.loads(raw or b"{}")
        except ValueError:
            return self.answer(400, {"Err": "request body is not JSON"})
        method = self.path.lstrip("/")
        if method == "debug/mode":
            with LOCK:
                if req.get("mode"):
                    MODES[req["method"]] = req["mode"]
                else:
                    MODES.pop(req.get("method", ""), None)
            return self.answer(200, {})
        if method == "Plugin.Activate":
            with LOCK:
                STATE["calls"].append({"method": method, "body": req, "mode": ""})
            return self.answer(200, {"Implements": ARGS.implements.split(",")})
        fn = METHODS.get(method)
        if fn is None:
            return self.answer(404, {"Err": "unknown method %s" % method})
        with LOCK:
            mode = MODES.get(method, "")
            STATE["calls"].append({"method": method, "body": req, "mode": mode})
        if mode == "slow":
            time.sleep(ARGS.slow)
            return self.answer(500, {"Err": "too late"})
        if mode == "close":
            self.close_connection = True
            self.wfile.flush()
            self.connection.shutdown(2)
            return
        if mode == "err":
            return self.answer(500, {"Err": "injected failure in %s" % method})
        if mode == "err200":
            return self.answer(200, {"Err": "injected failure in %s" % method})
        if mode == "garbage":
            return self.answer(200, None, raw=b"this is not json")
        if mode == "shape":
            return self.answer(200, {"Interface": 5, "InterfaceName": "oops", "Address": 7, "PoolID": [1], "Pool": {}})
        with LOCK:
            try:
                if method in ("NetworkDriver.Join", "IpamDriver.RequestAddress"):
                    resp = fn(req, mode)
                elif mode == "mac" and method == "NetworkDriver.CreateEndpoint":
                    fn(req)
                    resp = {"Interface": {"MacAddress": "02:00:00:00:00:99"}}
                else:
                    resp = fn(req)
            except (Failure, RuntimeError, KeyError, ValueError) as e:
                return self.answer(500, {"Err": str(e)})
        self.answer(200, resp)


class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def main():
    global ARGS
    ap = argparse.ArgumentParser()
    ap.add_argument("--socket", required=True)
    ap.add_argument("--scope", default="local")
    ap.add_argument("--requires-mac", action="store_true")
    ap.add_argument("--implements", default="NetworkDriver,IpamDriver")
    ap.add_argument("--slow", type=float, default=5.0)
    ap.add_argument("--delay-start", type=float, default=0.0)
    ARGS = ap.parse_args()
    if ARGS.delay_start:
        time.sleep(ARGS.delay_start)
    os.makedirs(os.path.dirname(ARGS.socket) or ".", exist_ok=True)
    if os.path.exists(ARGS.socket):
        os.unlink(ARGS.socket)
    # Bind under a temporary name, then rename: the socket appears ready to accept.
    tmp = ARGS.socket + ".tmp"
    if os.path.exists(tmp):
        os.unlink(tmp)
    srv = Server(tmp, Handler)
    os.rename(tmp, ARGS.socket)
    srv.serve_forever()


if __name__ == "__main__":
    main()
