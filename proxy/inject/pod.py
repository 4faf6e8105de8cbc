"""One pod template: does it get the sidecar, is it skipped, or refused, and why. Pure.

kube-inject (manifests.py) and the webhook (webhook.py) both ask `decide`, so that a pod gets
the same answer from both. Services are not decided here (services.py)."""

from __future__ import annotations

import copy
import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from proxy.inject.spec import (
    CONFIG_ANNOTATION,
    INJECTED_PORT_NAMES,
    NAME,
    VOLUMES,
    Mode,
    Ports,
    SidecarOptions,
    pod_volumes,
    sidecar_container,
)

INJECT = "certbound.io/inject"  # "true" / "false", as an annotation or a label
UPSTREAM_PORT = "certbound.io/upstream-port"  # number or name of the workload's port
TLS_SECRET = "certbound.io/tls-secret"  # noqa: S105 - a name, not a password; Secret with tls.crt, tls.key (and ca.crt)
CONFIG_MAP = "certbound.io/config-map"  # ConfigMap with config.yaml instead of the annotation
MTLS_PORT = "certbound.io/mtls-port"  # this pod's number for certbound's mTLS port
ADMIN_PORT = "certbound.io/admin-port"  # this pod's number for certbound's admin port
AUDIENCE = "certbound.io/audience"  # this pod's expected token audience (tokens.audience)
# Kubernetes' own namespaces: nothing there is a workload certbound protects.
SYSTEM_NAMESPACES = ("kube-system", "kube-public", "kube-node-lease")
# Port names that say the traffic is not HTTP/1.1 (Istio's protocol-by-name convention).
_NOT_HTTP_NAME = re.compile(r"^(tcp|grpc|grpc-web|h2|h2c|http2|tls|mongo|mysql|redis)(-|$)")
# Unnamed ports whose number says the same (the guestbook's Redis declares a bare 6379).
_NOT_HTTP_PORTS = {
    2181: "ZooKeeper",
    3306: "MySQL",
    4222: "NATS",
    5432: "PostgreSQL",
    5672: "AMQP",
    6379: "Redis",
    9042: "Cassandra",
    9092: "Kafka",
    11211: "memcached",
    27017: "MongoDB",
}


class InjectError(Exception):
    """This pod template cannot get the sidecar; the message says why and what to set."""


class Outcome(enum.Enum):
    INJECTED = "injected"
    SKIPPED = "skipped"  # not injected, and the pod is created as it is
    REFUSED = "refused"  # the pod asked for certbound and cannot get it: not created
    NOT_ASKED = "not-asked"
    ALREADY_INJECTED = "already-injected"


@dataclass(frozen=True, slots=True)
class Injected:
    """A pod template with the sidecar, and the workload port Services must stop targeting."""

    template: dict[str, Any]
    upstream_port: int
    upstream_name: str | None
    ports: Ports


@dataclass(frozen=True, slots=True)
class Decision:
    outcome: Outcome
    reason: str = ""
    injected: Injected | None = None
    # Skipped although it declares a port certbound would have protected: worth a warning.
    exposed: bool = False
    warnings: tuple[str, ...] = field(default=())


def _flag(meta: Mapping[str, Any]) -> str | None:
    for source in ("annotations", "labels"):
        values = meta.get(source)
        if isinstance(values, Mapping) and INJECT in values:
            return str(values[INJECT]).lower()
    return None


def wants_injection(meta: Mapping[str, Any], *, inject_all: bool) -> bool:
    """`certbound.io/inject: "true"` opts in, `"false"` opts out, otherwise `inject_all`."""
    flag = _flag(meta)
    return flag == "true" if flag in ("true", "false") else inject_all


def is_injected(spec: Mapping[str, Any]) -> bool:
    return any(
        isinstance(c, Mapping) and c.get("name") == NAME
        for key in ("containers", "initContainers")
        for c in spec.get(key) or []
    )


def declared_ports(spec: Mapping[str, Any]) -> list[tuple[str, int, str | None]]:
    """(container, number, name) of every TCP port the app containers declare."""
    found = []
    for c in spec.get("containers") or []:
        if not isinstance(c, Mapping):
            continue
        for p in c.get("ports") or []:
            if not isinstance(p, Mapping):
                continue
            if p.get("protocol", "TCP") == "TCP" and isinstance(p.get("containerPort"), int):
                found.append((c.get("name", "?"), p["containerPort"], p.get("name")))
    return found


def _annotations(meta: Mapping[str, Any]) -> Mapping[str, Any]:
    values = meta.get("annotations")
    return values if isinstance(values, Mapping) else {}


def upstream_port(meta: Mapping[str, Any], spec: Mapping[str, Any]) -> tuple[int, str | None]:
    """The workload's port: the annotation, else the single declared port, else InjectError."""
    ports = declared_ports(spec)
    chosen = _annotations(meta).get(UPSTREAM_PORT)
    if chosen is not None:
        text = str(chosen).strip()
        if text.isdigit() and 1 <= int(text) <= 65535:
            number = int(text)
            return number, next((n for _, p, n in ports if p == number and n), None)
        named = [(p, n) for _, p, n in ports if n == text]
        if not named:
            raise InjectError(f"{UPSTREAM_PORT}: {text!r} is neither 1-65535 nor a declared port")
        return named[0]
    if len(ports) == 1:
        return ports[0][1], ports[0][2]
    listed = ", ".join(f"{c}:{p}" for c, p, _ in ports)
    why = f"declares {len(ports)} ports ({listed})" if ports else "declares no container port"
    raise InjectError(f"{why}; set the annotation {UPSTREAM_PORT} to the one certbound protects")


def _pod_ports(meta: Mapping[str, Any], opts: SidecarOptions) -> Ports:
    """inject.ports, or this pod's certbound.io/mtls-port and certbound.io/admin-port."""
    annotations = _annotations(meta)
    numbers = {"mtls": opts.inject_ports.mtls, "admin": opts.inject_ports.admin}
    for key, annotation in (("mtls", MTLS_PORT), ("admin", ADMIN_PORT)):
        if annotation in annotations:
            text = str(annotations[annotation]).strip()
            if not (text.isdigit() and 1 <= int(text) <= 65535):
                raise InjectError(f"{annotation}: {text!r} is not a port number 1-65535")
            numbers[key] = int(text)
    if numbers["mtls"] == numbers["admin"]:
        raise InjectError(f"{MTLS_PORT} and {ADMIN_PORT} are both {numbers['mtls']}")
    return Ports(**numbers)


def _check_collisions(spec: Mapping[str, Any], ports: Ports, upstream: int) -> None:
    mine = {ports.mtls: ("mtls", MTLS_PORT), ports.admin: ("admin", ADMIN_PORT)}
    for c in [*(spec.get("containers") or []), *(spec.get("initContainers") or [])]:
        for p in c.get("ports") or []:
            if not isinstance(p, Mapping):
                continue
            if p.get("name") in INJECTED_PORT_NAMES:
                raise InjectError(
                    f"container {c.get('name')!r} already uses the port name {p['name']!r}, "
                    "which is certbound's"
                )
            if p.get("containerPort") in mine:
                which, annotation = mine[p["containerPort"]]
                raise InjectError(
                    f"container {c.get('name')!r} declares port {p['containerPort']}, which is "
                    f"certbound's {which} port; set the annotation {annotation} to a free port "
                    "(or inject.ports for every pod)"
                )
    if upstream in mine:
        which, annotation = mine[upstream]
        raise InjectError(
            f"{UPSTREAM_PORT} {upstream} is certbound's own {which} port, so certbound would "
            f"forward to itself; name the workload's port, or move certbound's with {annotation}"
        )
    taken = {v.get("name") for v in spec.get("volumes") or []}
    clash = sorted(taken & set(VOLUMES))
    if clash:
        raise InjectError(f"the pod already has a volume named {clash[0]!r}")


def _check_shape(template: Any) -> None:
    if not isinstance(template, dict) or not isinstance(template.get("spec"), dict):
        raise InjectError("has no pod spec")
    spec = template["spec"]
    if not isinstance(spec.get("containers"), list) or not spec["containers"]:
        raise InjectError("the pod spec has no containers")
    for key in ("containers", "initContainers", "volumes"):
        entries = spec.get(key) or []
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise InjectError(f"spec.{key} is not a list of objects")
    meta = template.get("metadata") or {}
    if not isinstance(meta, dict):
        raise InjectError("metadata is not a mapping")
    for key in ("annotations", "labels"):
        if meta.get(key) is not None and not isinstance(meta[key], dict):
            raise InjectError(f"metadata.{key} is not a mapping")


def inject_template(template: Any, opts: SidecarOptions) -> Injected:
    """The pod template (`metadata` + `spec`) with the sidecar; the input is not changed."""
    _check_shape(template)
    meta = template.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    spec = template["spec"]
    number, name = upstream_port(meta, spec)
    ports = _pod_ports(meta, opts)
    _check_collisions(spec, ports, number)
    tls_secret = str(annotations.get(TLS_SECRET) or opts.tls_secret)
    if not tls_secret:
        raise InjectError(f"no TLS Secret: set the annotation {TLS_SECRET} or tls.secretName")
    config_map = str(annotations.get(CONFIG_MAP) or opts.config_map)
    tokens = opts.config.get("tokens")
    if not config_map and not (
        isinstance(tokens, dict) and (tokens.get("issuer") or tokens.get("issuers"))
    ):
        raise InjectError(
            "no certbound config: set proxy.config.tokens (issuer, audience) in the values, "
            f"or name a ConfigMap holding config.yaml with the annotation {CONFIG_MAP}"
        )
    audience = str(annotations.get(AUDIENCE) or "").strip()
    # 0440 needs the pod's fsGroup to let uid 10001 read the key; a legacy pod may have none,
    # and the Secret is mounted into certbound's container only, so 0444 exposes it to no one.
    has_fs_group = "fsGroup" in (spec.get("securityContext") or {})
    mode = opts.tls_default_mode if has_fs_group else 0o444

    out = copy.deepcopy(template)
    out_meta = out.setdefault("metadata", None) or {}
    out["metadata"] = out_meta
    if not config_map:
        rendered = yaml.safe_dump(opts.config, sort_keys=True)
        out_meta["annotations"] = {
            **(out_meta.get("annotations") or {}),
            CONFIG_ANNOTATION: rendered,
        }
    out_spec = out["spec"]
    container = sidecar_container(opts, upstream_port=number, ports=ports, audience=audience)
    key = "initContainers" if opts.mode is Mode.NATIVE else "containers"
    out_spec[key] = [*(out_spec.get(key) or []), container]
    volumes = pod_volumes(opts, tls_secret=tls_secret, config_map=config_map, default_mode=mode)
    out_spec["volumes"] = [*(out_spec.get("volumes") or []), *volumes]
    return Injected(out, number, name, ports)


def runs_to_completion(kind: str, meta: Mapping[str, Any]) -> bool:
    """A Job's or CronJob's pod: by the object's kind (kube-inject) or, for a pod the API server
    sends, by its owner (a Job)."""
    owners = meta.get("ownerReferences")
    owned_by_job = isinstance(owners, list) and any(
        isinstance(o, Mapping) and o.get("kind") == "Job" for o in owners
    )
    return kind in ("Job", "CronJob") or owned_by_job


def decide(
    template: Any,
    opts: SidecarOptions,
    *,
    inject_all: bool,
    namespace: str,
    kind: str = "Pod",
) -> Decision:
    """What happens to one pod template. A pod that opted in (`certbound.io/inject: "true"`)
    and cannot get certbound is refused: starting it would expose what it asked to protect.
    Any other pod (a namespace-wide or --all injection) that cannot get it is skipped, so that
    turning injection on never stops a pod from being created."""
    meta = template.get("metadata") if isinstance(template, dict) else None
    meta = meta if isinstance(meta, dict) else {}
    if not wants_injection(meta, inject_all=inject_all):
        return Decision(Outcome.NOT_ASKED)
    spec = template.get("spec") if isinstance(template, dict) else None
    if isinstance(spec, dict) and is_injected(spec):
        return Decision(Outcome.ALREADY_INJECTED, f"already has a {NAME} container")
    explicit = _flag(meta) == "true"
    not_here = Outcome.REFUSED if explicit else Outcome.SKIPPED
    if namespace in SYSTEM_NAMESPACES:
        return Decision(not_here, f"namespace {namespace} belongs to Kubernetes itself")
    if isinstance(spec, dict):
        if spec.get("hostNetwork") is True:
            return Decision(
                not_here, "uses hostNetwork: certbound's ports would be bound on the node"
            )
        if not explicit and not declared_ports(spec) and UPSTREAM_PORT not in _annotations(meta):
            return Decision(
                Outcome.SKIPPED,
                f"declares no container port and has no {UPSTREAM_PORT}: nothing to protect",
            )
    if runs_to_completion(kind, meta) and opts.mode is Mode.CONTAINER:
        return Decision(
            not_here,
            "a Job's pod never completes with a plain sidecar container; "
            "use inject.mode native (Kubernetes >= 1.29)",
        )
    try:
        injected = inject_template(template, opts)
    except InjectError as exc:
        return Decision(not_here, str(exc), exposed=True)
    warnings: tuple[str, ...] = ()
    name, number = injected.upstream_name, injected.upstream_port
    if name and _NOT_HTTP_NAME.match(name):
        warnings = (not_http_warning(f"port {name!r}"),)
    elif not (name and name.startswith("http")) and number in _NOT_HTTP_PORTS:
        warnings = (not_http_warning(f"port {number} ({_NOT_HTTP_PORTS[number]}'s)"),)
    return Decision(Outcome.INJECTED, injected=injected, warnings=warnings)


def not_http_warning(what: str) -> str:
    return (
        f"{what} looks like raw TCP or gRPC, and certbound proxies HTTP/1.1 only "
        "(no h2): its clients will fail through certbound"
    )


def is_not_http(name: object, app_protocol: object) -> bool:
    """A Service port that says it is not HTTP/1.1, by appProtocol or by name."""
    if isinstance(app_protocol, str) and app_protocol:
        return app_protocol.lower() not in ("http", "kubernetes.io/http", "https")
    return isinstance(name, str) and bool(_NOT_HTTP_NAME.match(name))
