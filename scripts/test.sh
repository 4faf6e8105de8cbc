#!/usr/bin/env bash
# The whole test suite from a fresh clone: tools, virtual environment, lint, types, tests.
# Installing tools (curl, openssl, promtool, helm) needs root; as another user, sudo is used.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# Runtime dependencies exactly as the image gets them (requirements/runtime.txt, hash-locked by
# scripts/lock.sh); the test tools on top may not move any of those pins.
.venv/bin/python -m pip install --quiet --require-hashes --only-binary=:all: -r requirements/runtime.txt
.venv/bin/python -m pip install --quiet -e '.[test]' \
    -c <(grep -E '^[A-Za-z]' requirements/runtime.txt | sed 's/ *\\$//')
# The image tests build and run the Dockerfile with podman (runc; catatonit for pods), on a base
# image made from Debian packages by mmdebstrap.
if ! command -v podman >/dev/null || ! command -v runc >/dev/null \
    || ! command -v catatonit >/dev/null || ! command -v mmdebstrap >/dev/null; then
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        podman runc catatonit mmdebstrap
fi

# Tools the tests drive for real; a missing tool fails its test, it is never skipped.
# redis-server: the shared DPoP replay cache's tests start their own on loopback.
if ! command -v curl >/dev/null || ! command -v openssl >/dev/null \
    || ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        curl openssl ca-certificates redis-server redis-tools
fi
# The DPoP tests' authorization server (oidc-provider) and client (oauth4webapi) run on Node.js
# (18 or later), installed exactly as tests/oidc/package-lock.json pins them.
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm
fi
npm ci --prefix tests/oidc --no-audit --no-fund --loglevel=error >/dev/null
as_root bash .ci/install-promtool.sh
as_root env VENV="$PWD/.venv" bash .ci/install-deploy-tools.sh

echo "== ruff"
.venv/bin/ruff check proxy tests bench
.venv/bin/ruff format --check proxy tests bench
echo "== mypy --strict proxy"
.venv/bin/mypy
echo "== mkdocs build --strict"
.venv/bin/mkdocs build --strict --quiet --site-dir "$(mktemp -d)"
echo "== pytest"
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
