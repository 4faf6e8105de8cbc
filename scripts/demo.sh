#!/usr/bin/env bash
# Run certbound on an embedded default: throwaway PKI, token issuer, echo upstream, and the proxy.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ ! -x .venv/bin/certbound ]; then
    python3 -m venv .venv
    .venv/bin/python -m pip install --quiet -e .
fi
exec .venv/bin/certbound demo "$@"
