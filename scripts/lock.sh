#!/usr/bin/env bash
# Refresh the hash-locked requirements: requirements/runtime.txt (what the image and the test
# venv install, from pyproject.toml's ranges) and requirements/image-tools.txt (the builder
# stage's build backend and SBOM generator). Run it, review the diff, commit both files.
#
#   scripts/lock.sh                  keep every pin that still satisfies the ranges
#   scripts/lock.sh --upgrade        move every pin to the newest release allowed
#   scripts/lock.sh --upgrade-package aiohttp
#
# uv (pinned below) resolves for Python 3.11 on any platform (--universal), so the result does
# not depend on the machine that runs this; every release file's SHA-256 is recorded so that
# pip --require-hashes refuses anything else.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

UV_VERSION=0.13.8
tools="${XDG_CACHE_HOME:-$HOME/.cache}/certbound/uv-$UV_VERSION"
if [ ! -x "$tools/bin/uv" ]; then
    python3 -m venv "$tools"
    "$tools/bin/python" -m pip install --quiet "uv==$UV_VERSION"
fi

compile() {
    "$tools/bin/uv" pip compile --quiet --universal --python-version 3.11 --generate-hashes \
        --custom-compile-command "scripts/lock.sh" "$@"
}
compile pyproject.toml -o requirements/runtime.txt "$@"
compile requirements/image-tools.in -o requirements/image-tools.txt "$@"
echo "lock: $(grep -c '^[a-z]' requirements/runtime.txt) runtime and" \
    "$(grep -c '^[a-z]' requirements/image-tools.txt) image-tool pins written"
