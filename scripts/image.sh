#!/usr/bin/env bash
# Build the certbound image with podman, no container registry needed.
#
#   scripts/image.sh build [TAG]   base image (if missing), then the Dockerfile; prints the
#                                  image's size, the build time and the SBOM's package count
#   scripts/image.sh base          only the base image: Debian bookworm's python3 (3.11), made
#                                  from Debian packages with mmdebstrap, cached in podman
#   scripts/image.sh sbom [TAG]    print the image's SBOM (CycloneDX JSON)
#
# TAG defaults to localhost/certbound:dev. PYTHON_IMAGE=... builds on another base instead
# (python:3.11-slim-bookworm where a registry is reachable); CONTEXT=DIR builds another
# checkout or copy of the repository instead of this one. Needs root, podman, runc and
# mmdebstrap (scripts/test.sh installs them). Settings: scripts/containers.conf.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$repo/scripts/containers.conf}"

# What the Dockerfile needs from a base: python + venv, useradd/groupadd, CA certificates.
# Docs, manuals and translations are left out; nothing in the image reads them.
BASE_PACKAGES="python3,python3-venv,python-is-python3,passwd,ca-certificates"
BASE_DPKG_EXCLUDES=(
    "path-exclude=/usr/share/doc/*" "path-include=/usr/share/doc/*/copyright"
    "path-exclude=/usr/share/man/*" "path-exclude=/usr/share/info/*"
    "path-exclude=/usr/share/locale/*"
)
# The tag names the recipe, so changing the recipe makes a new base instead of reusing a stale one.
recipe_id="$(printf '%s\n' bookworm minbase "$BASE_PACKAGES" "${BASE_DPKG_EXCLUDES[@]}" \
    | sha256sum | cut -c1-12)"
BASE_TAG="localhost/certbound-python:3.11-bookworm-$recipe_id"

log() { echo "image.sh: $*" >&2; }

make_base() {
    # One maker at a time: concurrent test runs on one machine share podman's storage.
    (
        flock 9
        if podman image exists "$BASE_TAG"; then
            log "base $BASE_TAG exists (podman rmi it to remake it)"
            exit 0
        fi
        work="$(mktemp -d)"
        trap 'rm -rf "$work"' EXIT
        dpkgopts=()
        for opt in "${BASE_DPKG_EXCLUDES[@]}"; do dpkgopts+=("--dpkgopt=$opt"); done
        log "making base $BASE_TAG from Debian packages"
        started=$SECONDS
        mmdebstrap --quiet --variant=minbase --include="$BASE_PACKAGES" "${dpkgopts[@]}" \
            bookworm "$work/rootfs.tar"
        podman import --quiet "$work/rootfs.tar" "$BASE_TAG" >/dev/null
        log "base made in $((SECONDS - started)) s"
    ) 9>"${TMPDIR:-/tmp}/certbound-image-base.lock"
}

image_size_mb() {
    podman image inspect --format '{{.Size}}' "$1" | awk '{printf "%.1f", $1 / 1000000}'
}

sbom() {
    podman run --rm --network none --no-healthcheck --entrypoint cat "$1" /opt/certbound/sbom.cdx.json
}

build() {
    local tag="${1:-localhost/certbound:dev}" base="${PYTHON_IMAGE:-}"
    if [ -z "$base" ]; then
        make_base
        base="$BASE_TAG"
    fi
    local context="${CONTEXT:-$repo}" version revision=unknown
    version="$(python3 -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' \
        "$context/pyproject.toml")"
    if [ "$(git -C "$context" rev-parse --show-toplevel 2>/dev/null)" = "$(cd "$context" && pwd -P)" ]; then
        revision="$(git -C "$context" rev-parse HEAD)"
        # An image built from uncommitted changes must not claim to be the commit.
        if [ -n "$(git -C "$context" status --porcelain --untracked-files=no)" ]; then
            revision="$revision-dirty"
        fi
    fi
    local args=()
    # The build's pip trusts what this host trusts (a TLS-inspecting egress proxy's CA, say);
    # mounted for the build only, never part of the image.
    if [ -d /etc/ssl/certs ]; then args+=(--volume /etc/ssl/certs:/etc/ssl/certs:ro); fi
    local started=$SECONDS
    # docker format: OCI image configs have no HEALTHCHECK, and the Dockerfile has one.
    podman build --format docker --isolation chroot --network host "${args[@]}" \
        --build-arg PYTHON_IMAGE="$base" --build-arg VERSION="$version" \
        --build-arg REVISION="$revision" --tag "$tag" "$context" >&2
    local took=$((SECONDS - started)) packages
    packages="$(sbom "$tag" | python3 -c 'import json, sys; print(len(json.load(sys.stdin)["components"]))')"
    echo "image $tag: $(image_size_mb "$tag") MB, built in $took s, version $version," \
        "revision $revision, SBOM: $packages packages"
}

case "${1:-}" in
    base) make_base ;;
    build) build "${2:-}" ;;
    sbom) sbom "${2:-localhost/certbound:dev}" ;;
    *)
        echo "usage: scripts/image.sh build [TAG] | base | sbom [TAG]" >&2
        exit 2
        ;;
esac
