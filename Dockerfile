# certbound container image: the sidecar proxy only (the chart in helm/certbound
# runs it next to your workload). Multi-stage: the builder installs the package
# into a venv; the final image gets the venv and nothing that compiles code.
#
# Build:  docker build -t certbound:dev .
# Run:    docker run --read-only --tmpfs /tmp -v $PWD/certs:/etc/certbound/tls:ro \
#           -v $PWD/config.yaml:/etc/certbound/config.yaml:ro -p 8443:8443 -p 9090:9090 certbound:dev
#
# tests/deploy/test_dockerfile.py runs the builder stage's RUN lines in a fresh
# venv, so keep them plain shell with the venv path spelled /opt/certbound.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
RUN python -m venv /opt/certbound
COPY pyproject.toml README.md ./
COPY proxy ./proxy
# Wheels only: a dependency that would need a compiler fails the build here
# rather than pulling build tools into the image.
RUN /opt/certbound/bin/pip install --no-cache-dir --only-binary=:all: . \
    && /opt/certbound/bin/certbound --help > /dev/null \
    && /opt/certbound/bin/pip uninstall --yes pip setuptools

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="certbound" \
      org.opencontainers.image.description="Sidecar reverse proxy for OAuth 2.0 certificate-bound access tokens (RFC 8705)" \
      org.opencontainers.image.licenses="Apache-2.0"
# Read-only root filesystem: no .pyc writes at run time (the builder compiled
# them), unbuffered logs, and anything temporary goes to /tmp (mount an emptyDir).
ENV PATH=/opt/certbound/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONFAULTHANDLER=1 \
    HOME=/tmp \
    TMPDIR=/tmp
RUN groupadd --system --gid 10001 certbound \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin certbound \
    && mkdir -p /etc/certbound/tls
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
