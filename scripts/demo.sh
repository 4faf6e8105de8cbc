#!/usr/bin/env bash
# Run certbound on an embedded default: throwaway PKI, token issuer, echo upstream, and the proxy.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
# Every time (quick when nothing changed): a venv from an older checkout may lack a dependency.
.venv/bin/python -m pip install --quiet -e .
exec .venv/bin/certbound demo "$@"
