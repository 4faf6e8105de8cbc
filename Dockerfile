# certbound container image: the sidecar proxy only (the chart in helm/certbound
# runs it next to your workload). Multi-stage: the builder installs the hash-locked
# dependencies and the package into a venv and writes its SBOM; the final image
# gets the venv and nothing that compiles or installs code.
#
# Build:  docker build --build-arg VERSION=0.1.0 --build-arg REVISION="$(git rev-parse HEAD)" \
#           -t certbound:dev .
#         (with podman and no registry: scripts/image.sh build)
# Run:    docker run --read-only --tmpfs /tmp -v $PWD/certs:/etc/certbound/tls:ro \
#           -v $PWD/config.yaml:/etc/certbound/config.yaml:ro -p 8443:8443 -p 9090:9090 certbound:dev
# SBOM:   docker run --rm --entrypoint cat certbound:dev /opt/certbound/sbom.cdx.json
#
# tests/deploy/test_image.py builds and runs this image with podman.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
COPY requirements/runtime.txt requirements/image-tools.txt ./requirements/
# Only hash-pinned wheels: a release file that changed since scripts/lock.sh, or a
# dependency that would need a compiler, fails the build here. The tools venv (build
# backend, SBOM generator) stays in this stage.
RUN python -m venv /opt/certbound \
    && /opt/certbound/bin/pip install --no-cache-dir --require-hashes --only-binary=:all: \
       -r requirements/runtime.txt \
    && python -m venv /opt/image-tools \
    && /opt/image-tools/bin/pip install --no-cache-dir --require-hashes --only-binary=:all: \
       -r requirements/image-tools.txt
COPY pyproject.toml README.md ./
COPY proxy ./proxy
# certbound itself adds no dependency beyond the lock (--no-deps, then pip check).
RUN /opt/image-tools/bin/pip wheel --no-cache-dir --no-deps --no-build-isolation \
       --wheel-dir /tmp/wheels . \
    && /opt/certbound/bin/pip install --no-cache-dir --no-deps --no-index /tmp/wheels/certbound-*.whl \
    && /opt/certbound/bin/pip check \
    && /opt/certbound/bin/certbound --help > /dev/null \
    && /opt/certbound/bin/pip uninstall --yes pip setuptools \
    && /opt/image-tools/bin/cyclonedx-py environment --pyproject pyproject.toml \
       --mc-type application --output-reproducible --output-format JSON \
       --output-file /opt/certbound/sbom.cdx.json /opt/certbound/bin/python

FROM ${PYTHON_IMAGE}
# Set by scripts/image.sh from pyproject.toml and git; a plain build says "unknown".
ARG VERSION=unknown
ARG REVISION=unknown
LABEL org.opencontainers.image.title="certbound" \
      org.opencontainers.image.description="Sidecar reverse proxy for OAuth 2.0 certificate-bound access tokens (RFC 8705)" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
# Read-only root filesystem: no .pyc writes at run time (the builder compiled
# them), unbuffered logs, and anything temporary goes to /tmp (mount an emptyDir).
ENV PATH=/opt/certbound/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONFAULTHANDLER=1 \
    HOME=/tmp \
    TMPDIR=/tmp
# The base ships an installer for its own Python (python:*-slim in /usr/local, Debian's
# python3-venv as wheels); a proxy never installs anything, so none is left to abuse.
RUN groupadd --system --gid 10001 certbound \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin certbound \
    && mkdir -p /etc/certbound/tls \
    && rm -rf /usr/local/bin/pip* /usr/local/lib/python3*/site-packages/pip \
       /usr/local/lib/python3*/site-packages/pip-*.dist-info /usr/share/python-wheels
COPY --from=builder /opt/certbound /opt/certbound
# Numeric user so that Kubernetes runAsNonRoot can verify it without /etc/passwd.
USER 10001:10001
WORKDIR /tmp
# 8443: mTLS data plane; 9090: admin (/healthz /readyz /metrics).
EXPOSE 8443 9090
# Config at /etc/certbound/config.yaml; tls.crt, tls.key and ca.crt mounted at /etc/certbound/tls/.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9090/healthz', timeout=2)"]
ENTRYPOINT ["certbound"]
CMD ["run", "--config", "/etc/certbound/config.yaml"]
