"""The certbound sidecar, defined once: values -> container, volumes and environment.

The chart's Deployment renders the same container from the same values (tests/inject
renders the chart and compares); kube-inject and the webhook call `sidecar_container`.
No I/O here: values come in as mappings, Kubernetes objects go out as dicts."""

from __future__ import annotations

import copy
import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from proxy import __version__
from proxy.config import ConfigError

NAME = "certbound"
CONFIG_PATH = "/etc/certbound/config.yaml"
TLS_DIR = "/etc/certbound/tls"
CLIENT_CA_DIR = "/etc/certbound/client-ca"
DPOP_NONCE_DIR = "/etc/certbound/dpop-nonce"
# dpop.replay_cache from proxy.dpop.replayCache's Secret: the URL may hold a password.
REPLAY_CACHE_ENV = "CERTBOUND_DPOP__REPLAY_CACHE"
# Pod-level names are prefixed: legacy pods already have volumes called "config" or "tls".
VOLUMES = (
    "certbound-config",
    "certbound-tls",
    "certbound-client-ca",
    "certbound-dpop-nonce",
    "certbound-tmp",
)
# The chart's own pod names its ports mtls and admin. An injected sidecar shares the pod with
# containers nobody here wrote, whose ports are often named admin or numbered 8443/9090
# (Traefik, Kong, Prometheus, Kiali): its names are certbound's own (15 characters at most,
# the IANA_SVC_NAME limit) and its numbers sit outside the 8xxx/9xxx and Istio's 15xxx ranges.
PORT_NAMES = ("mtls", "admin")
MTLS_PORT_NAME = "certbound-mtls"
ADMIN_PORT_NAME = "certbound-admin"
INJECTED_PORT_NAMES = (MTLS_PORT_NAME, ADMIN_PORT_NAME)
CONFIG_ANNOTATION = "certbound.io/config"
LISTEN_CAPS = ("max_connections", "max_handshakes", "memory_budget_mib")

# The chart's values.yaml defaults for the keys that shape the sidecar (a test compares them).
DEFAULT_VALUES: dict[str, Any] = {
    "proxy": {
        "image": {
            "repository": "ghcr.io/certbound/certbound",
            "tag": "",
            "digest": "",
            "pullPolicy": "IfNotPresent",
        },
        "ports": {"mtls": 8443, "admin": 9090},
        "workers": 1,
        # The chart's proxy.listen: every listen.* key but host, port and workers (owned).
        # The caps (LISTEN_CAPS) are unset there too: certbound fits its own to the memory
        # limit. Values that give them are passed on.
        "listen": {
            "handshake_timeout_seconds": 10,
            "idle_timeout_seconds": 30,
            "send_timeout_seconds": 30,
            "body_timeout_seconds": 30,
            "request_buffer_bytes": 65536,
            "max_header_bytes": 65536,
            "event_loop": "auto",
        },
        "config": {},
        "extraConfig": {},
        "env": [],
        "dpop": {
            "replayCache": {"secretName": "", "key": "url"},
            "nonceKey": {"secretName": "", "key": "nonce.key"},
        },
        "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "runAsUser": 10001,
            "runAsGroup": 10001,
            "privileged": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": "admin"},
            "periodSeconds": 10,
            "timeoutSeconds": 2,
            "failureThreshold": 3,
        },
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": "admin"},
            "periodSeconds": 5,
            "timeoutSeconds": 2,
            "failureThreshold": 2,
        },
        "startupProbe": {
            "httpGet": {"path": "/healthz", "port": "admin"},
            "periodSeconds": 2,
            "failureThreshold": 30,
        },
        "extraVolumes": [],
        "extraVolumeMounts": [],
    },
    "tls": {"secretName": "", "defaultMode": 288, "clientCA": {"secretName": "", "key": "ca.crt"}},
    "inject": {"mode": "native", "configMap": "", "ports": {"mtls": 17443, "admin": 17090}},
}


class Mode(enum.Enum):
    """Where the sidecar goes in the pod."""

    # initContainers with restartPolicy: Always (Kubernetes >= 1.29): started before and
    # stopped after the workload; Jobs complete.
    NATIVE = "native"
    # A plain entry in containers, for clusters older than 1.29; Jobs never complete.
    CONTAINER = "container"


class ValuesError(ConfigError):
    """Every problem with the values at once, one `key.path: message` line each."""


@dataclass(frozen=True, slots=True)
class SidecarOptions:
    """The values that shape an injected sidecar, checked."""

    image: str
    pull_policy: str
    mtls_port: int
    admin_port: int
    workers: int
    config: dict[str, Any]
    env: list[dict[str, Any]]
    resources: dict[str, Any]
    security_context: dict[str, Any]
    probes: dict[str, dict[str, Any]]  # startupProbe, livenessProbe, readinessProbe
    extra_volumes: list[dict[str, Any]]
    extra_volume_mounts: list[dict[str, Any]]
    tls_secret: str
    tls_default_mode: int
    client_ca_secret: str
    client_ca_key: str
    replay_cache_secret: str  # proxy.dpop.replayCache: CERTBOUND_DPOP__REPLAY_CACHE from it
    replay_cache_key: str
    nonce_secret: str  # proxy.dpop.nonceKey: mounted at DPOP_NONCE_DIR
    nonce_key: str
    config_map: str
    mode: Mode
    inject_ports: Ports  # inject.ports: the sidecar's ports in an injected pod


@dataclass(frozen=True, slots=True)
class Ports:
    """certbound's two container port numbers in one pod."""

    mtls: int
    admin: int


def merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """Deep merge like Helm's: mappings merge, everything else is replaced."""
    out = copy.deepcopy(dict(base))
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _check_known(values: Mapping[str, Any], known: Mapping[str, Any], prefix: str) -> list[str]:
    problems = []
    for key, value in values.items():
        path = f"{prefix}{key}"
        if key not in known:
            problems.append(f"{path}: unknown key")
        elif isinstance(known[key], dict) and key not in ("config", "extraConfig"):
            if known[key] and not isinstance(value, Mapping):
                problems.append(f"{path}: expected a mapping")
            elif known[key] and isinstance(value, Mapping):
                problems.extend(_check_known(value, known[key], path + "."))
    return problems


def _port(value: object, path: str, problems: list[str]) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        problems.append(f"{path}: expected a port number 1-65535, got {value!r}")
        return 0
    return value


def _typed(value: object, kind: type, path: str, problems: list[str]) -> Any:
    if not isinstance(value, kind) or isinstance(value, bool) is not (kind is bool):
        problems.append(f"{path}: expected {kind.__name__}, got {type(value).__name__}")
        return kind()
    return value


_PROBES = ("startupProbe", "livenessProbe", "readinessProbe")
_OWNED_KEYS = (
    ("listen", ""),
    ("admin", ""),
    ("upstream", "url"),
    ("tls", "cert_file"),
    ("tls", "key_file"),
    ("tls", "client_ca_file"),
)


def options_from_values(values: Mapping[str, Any] | None = None) -> SidecarOptions:
    """Chart-style values (`proxy.*`, `tls.*`, `inject.*`) over the defaults; ValuesError."""
    values = values or {}
    known = merge(DEFAULT_VALUES, {"proxy": {"listen": dict.fromkeys(LISTEN_CAPS, 0)}})
    problems = _check_known(values, known, "")
    if problems:
        raise ValuesError(problems)
    v = merge(DEFAULT_VALUES, values)
    p, tls = v["proxy"], v["tls"]
    image = p["image"]
    for key in ("repository", "tag", "digest", "pullPolicy"):
        _typed(image[key], str, f"proxy.image.{key}", problems)
    if image["digest"]:
        ref = f"{image['repository']}@{image['digest']}"
    else:
        ref = f"{image['repository']}:{image['tag'] or __version__}"
    mtls = _port(p["ports"]["mtls"], "proxy.ports.mtls", problems)
    admin = _port(p["ports"]["admin"], "proxy.ports.admin", problems)
    if mtls and mtls == admin:
        problems.append("proxy.ports.admin: must differ from proxy.ports.mtls")
    ports = v["inject"]["ports"]
    injected = Ports(0, 0)
    if _typed(ports, dict, "inject.ports", problems):
        injected = Ports(
            _port(ports["mtls"], "inject.ports.mtls", problems),
            _port(ports["admin"], "inject.ports.admin", problems),
        )
        if injected.mtls and injected.mtls == injected.admin:
            problems.append("inject.ports.admin: must differ from inject.ports.mtls")
    workers = _typed(p["workers"], int, "proxy.workers", problems)
    for key in ("listen", "config", "extraConfig", "resources", "securityContext"):
        _typed(p[key], dict, f"proxy.{key}", problems)
    for key in ("env", "extraVolumes", "extraVolumeMounts"):
        _typed(p[key], list, f"proxy.{key}", problems)
    probes = {k: _typed(p[k], dict, f"proxy.{k}", problems) for k in _PROBES}
    config = p["config"] if isinstance(p["config"], dict) else {}
    for section, key in _OWNED_KEYS:
        section_values = config.get(section)
        present = isinstance(section_values, dict) and key in section_values
        if present if key else section in config:
            where = f"proxy.config.{section}" + (f".{key}" if key else "")
            problems.append(f"{where}: set by the injector from the pod, not in values")
    try:
        mode = Mode(v["inject"]["mode"])
    except ValueError:
        problems.append(f"inject.mode: expected native or container, got {v['inject']['mode']!r}")
        mode = Mode.NATIVE
    mode_bits = _typed(tls["defaultMode"], int, "tls.defaultMode", problems)
    for path, value in (
        ("tls.secretName", tls["secretName"]),
        ("tls.clientCA.secretName", tls["clientCA"]["secretName"]),
        ("tls.clientCA.key", tls["clientCA"]["key"]),
        ("inject.configMap", v["inject"]["configMap"]),
        *(
            (f"proxy.dpop.{ref}.{key}", p["dpop"][ref][key])
            for ref in ("replayCache", "nonceKey")
            for key in ("secretName", "key")
        ),
    ):
        _typed(value, str, path, problems)
    problems.extend(_dpop_problems(p))
    if problems:
        raise ValuesError(problems)
    return SidecarOptions(
        image=ref,
        pull_policy=image["pullPolicy"],
        mtls_port=mtls,
        admin_port=admin,
        workers=workers,
        # As the chart's certbound.config: proxy.listen into listen, extraConfig over all.
        config=merge(merge(p["config"], {"listen": p["listen"]}), p["extraConfig"]),
        env=p["env"],
        resources=p["resources"],
        security_context=p["securityContext"],
        probes=probes,
        extra_volumes=p["extraVolumes"],
        extra_volume_mounts=p["extraVolumeMounts"],
        tls_secret=tls["secretName"],
        tls_default_mode=mode_bits,
        client_ca_secret=tls["clientCA"]["secretName"],
        client_ca_key=tls["clientCA"]["key"],
        replay_cache_secret=p["dpop"]["replayCache"]["secretName"],
        replay_cache_key=p["dpop"]["replayCache"]["key"],
        nonce_secret=p["dpop"]["nonceKey"]["secretName"],
        nonce_key=p["dpop"]["nonceKey"]["key"],
        config_map=v["inject"]["configMap"],
        mode=mode,
        inject_ports=injected,
    )


_SECRET_KEY = re.compile(r"[-._a-zA-Z0-9]+")
# userinfo with a password (redis://:pw@host, redis://user:pw@host) or ?password=
_URL_PASSWORD = re.compile(r"^[a-zA-Z]+://[^/@]*:[^/@]*@|[?&]password=", re.IGNORECASE)


def _dpop_problems(p: Mapping[str, Any]) -> list[str]:
    """The chart's checks of proxy.dpop against proxy.config.dpop (certbound.validate), as far
    as values show them: the config may also come from a ConfigMap the injector never reads.
    A replay_cache URL is never echoed: it may hold a password."""
    problems = []
    given: dict[str, Any] = {}
    for source in (p["config"], p["extraConfig"]):
        dpop = source.get("dpop") if isinstance(source, Mapping) else None
        if isinstance(dpop, Mapping):
            given |= {k: dpop[k] for k in ("replay_cache", "nonce_secret_file") if dpop.get(k)}
    url = given.get("replay_cache")
    secrets = p["dpop"]
    for ref in ("replayCache", "nonceKey"):
        key = secrets[ref]["key"]
        if isinstance(key, str) and not _SECRET_KEY.fullmatch(key):
            problems.append(f"proxy.dpop.{ref}.key: not a Secret key ([-._a-zA-Z0-9]+)")
    if url and secrets["replayCache"]["secretName"]:
        problems.append(
            "proxy.config.dpop.replay_cache: set, and so is proxy.dpop.replayCache.secretName, "
            "whose URL would silently win; leave proxy.config.dpop.replay_cache empty"
        )
    elif isinstance(url, str) and _URL_PASSWORD.search(url):
        problems.append(
            "proxy.config.dpop.replay_cache: holds a password, which would be written into the "
            "pod or a ConfigMap (the value is not shown here): put the URL in a Secret and name "
            "it in proxy.dpop.replayCache.secretName"
        )
    if given.get("nonce_secret_file") and secrets["nonceKey"]["secretName"]:
        problems.append(
            "proxy.config.dpop.nonce_secret_file: set by the injector from "
            "proxy.dpop.nonceKey, not in values"
        )
    return problems


def client_ca_file(opts: SidecarOptions) -> str:
    if opts.client_ca_secret:
        return f"{CLIENT_CA_DIR}/{opts.client_ca_key}"
    return f"{TLS_DIR}/ca.crt"


def owned_env(
    opts: SidecarOptions, upstream_port: int, ports: Ports, audience: str = ""
) -> list[dict[str, Any]]:
    """The config keys the injector owns, as CERTBOUND_* overrides: the config file (a
    ConfigMap or the pod's annotation) belongs to the team, these follow from the pod."""
    pairs: dict[str, object] = {
        "LISTEN__PORT": ports.mtls,
        "LISTEN__WORKERS": opts.workers,
        "ADMIN__PORT": ports.admin,
        "TLS__CERT_FILE": f"{TLS_DIR}/tls.crt",
        "TLS__KEY_FILE": f"{TLS_DIR}/tls.key",
        "TLS__CLIENT_CA_FILE": client_ca_file(opts),
        "UPSTREAM__URL": f"http://127.0.0.1:{upstream_port}",
    }
    if opts.nonce_secret:
        pairs["DPOP__NONCE_SECRET_FILE"] = nonce_secret_file(opts)
    if audience:  # the pod's certbound.io/audience: one config, an audience per workload
        pairs["TOKENS__AUDIENCE"] = audience
    return [{"name": f"CERTBOUND_{k}", "value": str(v)} for k, v in pairs.items()]


def nonce_secret_file(opts: SidecarOptions) -> str:
    return f"{DPOP_NONCE_DIR}/{opts.nonce_key}"


def secret_env(opts: SidecarOptions) -> list[dict[str, Any]]:
    """Environment taken from Secrets, in the chart's container as in an injected one."""
    if not opts.replay_cache_secret:
        return []
    ref = {"name": opts.replay_cache_secret, "key": opts.replay_cache_key}
    return [{"name": REPLAY_CACHE_ENV, "valueFrom": {"secretKeyRef": ref}}]


def sidecar_container(
    opts: SidecarOptions,
    upstream_port: int | None = None,
    ports: Ports | None = None,
    audience: str = "",
) -> dict[str, Any]:
    """The certbound container. `upstream_port` None: the chart's own pod, whose config file
    names every key. Otherwise an injected sidecar: certbound's own port names, `ports` (default
    inject.ports), and the keys the injector owns passed as environment overrides."""
    injected = upstream_port is not None
    numbers = (ports or opts.inject_ports) if injected else Ports(opts.mtls_port, opts.admin_port)
    names = INJECTED_PORT_NAMES if injected else PORT_NAMES
    container: dict[str, Any] = {
        "name": NAME,
        "image": opts.image,
        "imagePullPolicy": opts.pull_policy,
        "args": ["run", "--config", CONFIG_PATH],
        "ports": [
            {"name": names[0], "containerPort": numbers.mtls, "protocol": "TCP"},
            {"name": names[1], "containerPort": numbers.admin, "protocol": "TCP"},
        ],
    }
    env = [
        *(owned_env(opts, upstream_port, numbers, audience) if upstream_port else []),
        *secret_env(opts),
        *opts.env,
    ]
    if env:
        container["env"] = copy.deepcopy(env)
    for probe in _PROBES:
        if opts.probes[probe]:
            container[probe] = copy.deepcopy(opts.probes[probe])
            if injected:
                _rename_probe_port(container[probe], opts, numbers)
    container["resources"] = copy.deepcopy(opts.resources)
    container["securityContext"] = copy.deepcopy(opts.security_context)
    mounts: list[dict[str, Any]] = [
        {"name": "certbound-config", "mountPath": CONFIG_PATH, "subPath": "config.yaml"},
        # Whole directory, no subPath: kubelet's atomic swap on Secret update must reach
        # certbound's TLS hot reload.
        {"name": "certbound-tls", "mountPath": TLS_DIR},
    ]
    if opts.client_ca_secret:
        mounts.append({"name": "certbound-client-ca", "mountPath": CLIENT_CA_DIR})
    if opts.nonce_secret:
        mounts.append({"name": "certbound-dpop-nonce", "mountPath": DPOP_NONCE_DIR})
    for mount in mounts:
        mount["readOnly"] = True
    mounts.append({"name": "certbound-tmp", "mountPath": "/tmp"})  # noqa: S108 - an emptyDir
    container["volumeMounts"] = [*mounts, *copy.deepcopy(opts.extra_volume_mounts)]
    if opts.mode is Mode.NATIVE and upstream_port:
        container["restartPolicy"] = "Always"
    return container


def _rename_probe_port(probe: dict[str, Any], opts: SidecarOptions, ports: Ports) -> None:
    """The values' probes name the chart's ports (admin, or its number): point them at the
    injected sidecar's own."""
    renamed: dict[object, object] = {
        "mtls": MTLS_PORT_NAME,
        "admin": ADMIN_PORT_NAME,
        opts.mtls_port: ports.mtls,
        opts.admin_port: ports.admin,
    }
    for kind in ("httpGet", "tcpSocket", "grpc"):
        action = probe.get(kind)
        if isinstance(action, dict) and action.get("port") in renamed:
            action["port"] = renamed[action["port"]]


def pod_volumes(
    opts: SidecarOptions, *, tls_secret: str, config_map: str, default_mode: int
) -> list[dict[str, Any]]:
    """The volumes the sidecar mounts. Without a ConfigMap the config file is the pod's
    `certbound.io/config` annotation, projected through the downward API."""
    if config_map:
        config: dict[str, Any] = {"configMap": {"name": config_map}}
    else:
        field = f"metadata.annotations['{CONFIG_ANNOTATION}']"
        item = {"path": "config.yaml", "fieldRef": {"fieldPath": field}}
        config = {"projected": {"sources": [{"downwardAPI": {"items": [item]}}]}}
    items = [{"key": "tls.crt", "path": "tls.crt"}, {"key": "tls.key", "path": "tls.key"}]
    if not opts.client_ca_secret:
        items.append({"key": "ca.crt", "path": "ca.crt"})
    volumes = [
        {"name": "certbound-config", **config},
        {
            "name": "certbound-tls",
            "secret": {"secretName": tls_secret, "defaultMode": default_mode, "items": items},
        },
    ]
    for name, secret, key in (
        ("certbound-client-ca", opts.client_ca_secret, opts.client_ca_key),
        ("certbound-dpop-nonce", opts.nonce_secret, opts.nonce_key),
    ):
        if secret:  # one key of the Secret, as a file of its own name
            items = [{"key": key, "path": key}]
            volumes.append(
                {
                    "name": name,
                    "secret": {"secretName": secret, "defaultMode": default_mode, "items": items},
                }
            )
    volumes.append({"name": "certbound-tmp", "emptyDir": {"sizeLimit": "64Mi"}})
    return [*volumes, *copy.deepcopy(opts.extra_volumes)]
