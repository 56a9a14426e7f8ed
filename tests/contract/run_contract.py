#!/usr/bin/env python3
"""Run schemathesis against a live tapnetd (called by tests/tests/api_contract.rs).

usage: run_contract.py --socket SOCK --spec docs/openapi.yaml --venv DIR --report DIR
                       [--examples N] [--seed N]

tapnetd serves only a unix socket and schemathesis speaks TCP, so this forwards a
loopback TCP port (127.0.0.1, ephemeral, inside the test's network namespace) to the
socket, then runs schemathesis twice: once on the versioned paths (`/v1.47`, what the
docker CLI sends) with every phase but stateful, once on the unversioned paths with
fewer examples. Checks: `not_a_server_error` and hooks.py's
`rejected_request_changes_nothing` and `accepted_network_takes_an_endpoint`. `GET /events` (a stream that never ends by itself)
and `HEAD /_ping` are left out. Exit status: 0 when both runs found nothing.
"""

import argparse
import os
import socket
import subprocess
import sys
import threading

HERE = os.path.dirname(os.path.abspath(__file__))
# Besides no 5xx and the two state checks of hooks.py, every answer must match the
# document: status codes it lists, content types, and the response schemas.
CHECKS = ",".join(
    [
        "not_a_server_error",
        "rejected_request_changes_nothing",
        "accepted_network_takes_an_endpoint",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
    ]
)


def _pump(src, dst):
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s, how in ((dst, socket.SHUT_WR), (src, socket.SHUT_RD)):
            try:
                s.shutdown(how)
            except OSError:
                pass


def _serve(listener, unix_path):
    while True:
        try:
            client, _ = listener.accept()
        except OSError:
            return
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            upstream.connect(unix_path)
        except OSError:
            client.close()
            upstream.close()
            continue

        def pair(c=client, u=upstream):
            t = threading.Thread(target=_pump, args=(u, c), daemon=True)
            t.start()
            _pump(c, u)
            t.join()
            c.close()
            u.close()

        threading.Thread(target=pair, daemon=True).start()


def forward(unix_path):
    """Listen on 127.0.0.1:0 and forward each connection to unix_path; returns the port."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    threading.Thread(target=_serve, args=(listener, unix_path), daemon=True).start()
    return listener.getsockname()[1]


def schemathesis(args, base_url, examples, phases, report_name, extra=(), env_extra=None):
    exe = os.path.join(args.venv, "bin", "schemathesis")
    cmd = [
        exe,
        "run",
        args.spec,
        "--url",
        base_url,
        "--checks",
        CHECKS,
        "--workers",
        "1",
        "--max-examples",
        str(examples),
        "--phases",
        phases,
        "--seed",
        str(args.seed),
        "--request-timeout",
        "60",
        "--generation-database",
        "none",
        "--exclude-path",
        "/events",
        "--exclude-path-regex",
        "/capture$",
        "--exclude-method",
        "HEAD",
        "--suppress-health-check",
        "all",
        "--no-color",
        "--report",
        "junit",
        "--report-junit-path",
        os.path.join(args.report, report_name),
        *extra,
    ]
    env = dict(os.environ)
    env.update(env_extra or {})
    env["SCHEMATHESIS_HOOKS"] = "hooks"
    env["PYTHONPATH"] = HERE + os.pathsep + env.get("PYTHONPATH", "")
    env["TAPNET_SOCKET"] = args.socket
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    print("+ " + " ".join(cmd), flush=True)
    out = subprocess.run(
        cmd,
        env=env,
        # schemathesis keeps a `.schemathesis/` cache in its working directory.
        cwd=args.report,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    text = out.stdout.decode("utf-8", "replace")
    print(text, flush=True)
    return out.returncode, text


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--socket", required=True)
    p.add_argument("--spec", required=True)
    p.add_argument("--venv", required=True)
    p.add_argument("--report", required=True)
    p.add_argument("--examples", type=int, default=40)
    p.add_argument("--seed", type=int, default=10)
    p.add_argument(
        "--self-test",
        action="store_true",
        help="make every 4xx change the state (hooks.py SABOTAGE) and succeed only if "
        "rejected_request_changes_nothing reports it",
    )
    args = p.parse_args()
    args.spec = os.path.abspath(args.spec)
    args.report = os.path.abspath(args.report)
    os.makedirs(args.report, exist_ok=True)
    port = forward(args.socket)
    base = f"http://127.0.0.1:{port}"
    if args.self_test:
        rc, text = schemathesis(
            args,
            base,
            10,
            "examples,coverage,fuzzing",
            "self-test.xml",
            extra=["--include-operation-id", "networkList"],
            env_extra={"TAPNET_CONTRACT_SABOTAGE": "1"},
        )
        caught = rc != 0 and "changed the daemon's state" in text
        print(f"self-test: schemathesis exit code {rc}; the check caught the sabotage: {caught}")
        sys.exit(0 if caught else 1)
    rc, _ = schemathesis(
        args, base + "/v1.47", args.examples, "examples,coverage,fuzzing", "versioned.xml"
    )
    rc2, _ = schemathesis(
        args, base, max(1, args.examples // 4), "examples,fuzzing", "unversioned.xml"
    )
    print(f"schemathesis exit codes: versioned {rc}, unversioned {rc2}", flush=True)
    sys.exit(0 if rc == 0 and rc2 == 0 else 1)


if __name__ == "__main__":
    main()
