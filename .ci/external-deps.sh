#!/usr/bin/env bash
# Installs what the #[ignore]d tests need (tests/it/external/, the cluster tests), so that
# `cargo test -- --include-ignored` can run them: curl, nginx, Chromium and redis-server from Debian, Python's SSE
# client libraries into a virtual environment under target/pyenv, and Node's eventsource package into
# tests/clients/node/node_modules. Meant for a fresh Debian 12 machine, as root; safe to run again.
set -euo pipefail

cd "$(dirname "$0")/.."

export DEBIAN_FRONTEND=noninteractive
# An apt-installed nginx must not try to start a system-wide service on port 80 here.
policy_rc_d_added=
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    policy_rc_d_added=1
fi
cleanup() {
    if [ -n "$policy_rc_d_added" ]; then
        rm -f /usr/sbin/policy-rc.d
    fi
}
trap cleanup EXIT

# redis-server: cluster mode's tests start their own (tests/it/cluster/, src/cluster/bridge.rs).
# libnss3-tools: certutil, which makes Chromium trust the TLS tests' CA (tests/it/tls/external.rs).
apt_packages=(ca-certificates curl nginx chromium redis-server libnss3-tools)
# The Python and Node clients need an interpreter; use the machine's own when it has one.
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    apt_packages+=(python3 python3-venv)
fi
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    apt_packages+=(nodejs npm)
fi
apt-get update
apt-get install -y --no-install-recommends "${apt_packages[@]}"

# Python: httpx + httpx-sse and sseclient-py, pymercure and PyJWT (the Mercure hub), every version pinned.
if [ ! -x target/pyenv/bin/python ]; then
    rm -rf target/pyenv
    python3 -m venv target/pyenv
fi
target/pyenv/bin/python -m pip install --quiet --disable-pip-version-check \
    -r tests/clients/python/requirements.txt

# Node: the eventsource package at the version in package-lock.json.
(cd tests/clients/node && npm ci --no-audit --no-fund)

echo "external test dependencies installed:" \
    "$(curl --version | head -n 1 | cut -d' ' -f1-2)," \
    "$(nginx -v 2>&1)," \
    "$(chromium --version 2>/dev/null)," \
    "certutil $(command -v certutil)," \
    "$(target/pyenv/bin/python --version)," \
    "node $(node --version)"
