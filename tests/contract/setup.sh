#!/usr/bin/env bash
# Make (once) the virtualenv with schemathesis that tests/tests/api_contract.rs runs.
# usage: setup.sh [VENV_DIR]   (default ~/.cache/tapnet/schemathesis-VERSION)
# Idempotent: when the venv already has this version nothing is fetched, so it works
# offline after the first run; otherwise it needs PyPI.
set -euo pipefail
VERSION=4.32.5
venv=${1:-${HOME:-/root}/.cache/tapnet/schemathesis-$VERSION}
if [ -x "$venv/bin/schemathesis" ] && "$venv/bin/schemathesis" --version 2>/dev/null | grep -qF "$VERSION"; then
    echo "$venv"
    exit 0
fi
py=/usr/bin/python3
[ -x "$py" ] || py=$(command -v python3)
rm -rf "$venv"
mkdir -p "$(dirname "$venv")"
if ! "$py" -c 'import ensurepip, venv' 2>/dev/null; then
    # Debian splits venv/ensurepip into python3-venv.
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
    $SUDO apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-venv >&2
fi
"$py" -m venv "$venv" >&2
"$venv/bin/pip" install -q --disable-pip-version-check "schemathesis==$VERSION" >&2
"$venv/bin/schemathesis" --version >&2
echo "$venv"
