#!/usr/bin/env bash
# Install promtool and the Prometheus server (both shipped by the Debian "prometheus"
# package) for the observability artifact tests and tests/test_prometheus_alerts.py, which
# starts its own server on loopback. Idempotent; must run as root.
# The Prometheus server that the package ships must NOT be left running:
# a policy-rc.d that denies service starts is put in place for the install,
# and any server that still got started is stopped afterwards.
set -euo pipefail

if command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; then
    echo "install-promtool: already installed: $(prometheus --version 2>&1 | head -n1)"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "install-promtool: must run as root (apt-get install)" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive

# Deny service starts from maintainer scripts while installing (invoke-rc.d honours this).
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy"
    chmod 0755 "$policy"
    created_policy=1
fi
cleanup() {
    if [ "$created_policy" -eq 1 ]; then rm -f "$policy"; fi
}
trap cleanup EXIT

# apt-get update only when there are no package lists yet or the package is unknown.
if ! apt-cache show prometheus >/dev/null 2>&1; then
    apt-get update
fi
apt-get install -y --no-install-recommends prometheus

# Belt and braces: if a Prometheus server got started anyway, stop it.
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    systemctl stop prometheus.service >/dev/null 2>&1 || true
    systemctl disable prometheus.service >/dev/null 2>&1 || true
elif [ -x /etc/init.d/prometheus ]; then
    /etc/init.d/prometheus stop >/dev/null 2>&1 || true
fi

promtool --version
