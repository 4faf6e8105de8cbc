"""kube-inject as a pure transformation: Kubernetes objects in, objects with the sidecar out.

Reading and writing YAML, and printing, are the caller's job (cli.py, webhook.py)."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from proxy.inject.spec import (
    CONFIG_ANNOTATION,
    NAME,
    PORT_NAMES,
    VOLUMES,
    Mode,
    SidecarOptions,
    pod_volumes,
    sidecar_container,
)

INJECT = "certbound.io/inject"  # "true" / "false", as an annotation or a label
UPSTREAM_PORT = "certbound.io/upstream-port"  # number or name of the workload's port
TLS_SECRET = "certbound.io/tls-secret"  # noqa: S105 - a name, not a password; Secret with tls.crt, tls.key (and ca.crt)
CONFIG_MAP = "certbound.io/config-map"  # ConfigMap with config.yaml instead of the annotation

# Where each kind keeps its pod template (metadata + spec).
TEMPLATE_PATHS: dict[str, tuple[str, ...]] = {
    "Pod": (),
    "Deployment": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "ReplicaSet": ("spec", "template"),
    "ReplicationController": ("spec", "template"),
    "Job": ("spec", "template"),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
}
_RUN_TO_COMPLETION = {"Job", "CronJob"}


class InjectError(Exception):
    """This pod template cannot get the sidecar; the message says why and what to set."""


@dataclass(frozen=True, slots=True)
class Injected:
    """A pod template with the sidecar, and the workload port Services must stop targeting."""

    template: dict[str, Any]
    upstream_port: int
    upstream_name: str | None


@dataclass
class Result:
    """The outcome of one kube-inject run: objects to write, or errors and nothing else."""

    objects: list[Any] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def describe(obj: Mapping[str, Any], index: int) -> str:
    """`Deployment shop/orders`, or `document 3` for something without a name."""
    meta = obj.get("metadata") if isinstance(obj.get("metadata"), Mapping) else {}
    assert isinstance(meta, Mapping)
    name = meta.get("name") or (f"{meta['generateName']}*" if meta.get("generateName") else "")
    kind = obj.get("kind") or "object"
    if not name:
        return f"{kind} (document {index})"
    return f"{kind} {meta['namespace']}/{name}" if meta.get("namespace") else f"{kind} {name}"


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


def _declared_ports(spec: Mapping[str, Any]) -> list[tuple[str, int, str | None]]:
    """(container, number, name) of every TCP port the app containers declare."""
    found = []
    for c in spec.get("containers") or []:
        for p in c.get("ports") or []:
            if p.get("protocol", "TCP") == "TCP" and isinstance(p.get("containerPort"), int):
                found.append((c.get("name", "?"), p["containerPort"], p.get("name")))
    return found


def upstream_port(meta: Mapping[str, Any], spec: Mapping[str, Any]) -> tuple[int, str | None]:
    """The workload's port: the annotation, else the single declared port, else InjectError."""
    ports = _declared_ports(spec)
    chosen = (meta.get("annotations") or {}).get(UPSTREAM_PORT)
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


def _check_collisions(spec: Mapping[str, Any], opts: SidecarOptions) -> None:
    mine = {opts.mtls_port: "mtls", opts.admin_port: "admin"}
    for c in [*(spec.get("containers") or []), *(spec.get("initContainers") or [])]:
        for p in c.get("ports") or []:
            if p.get("name") in PORT_NAMES:
                raise InjectError(
                    f"container {c.get('name')!r} already uses the port name {p['name']!r}; "
                    "certbound's ports are named mtls and admin"
                )
            if p.get("containerPort") in mine:
                raise InjectError(
                    f"container {c.get('name')!r} declares port {p['containerPort']}, which is "
                    f"certbound's {mine[p['containerPort']]} port (set proxy.ports)"
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
    _check_collisions(spec, opts)
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
    container = sidecar_container(opts, upstream_port=number)
    key = "initContainers" if opts.mode is Mode.NATIVE else "containers"
    out_spec[key] = [*(out_spec.get(key) or []), container]
    volumes = pod_volumes(opts, tls_secret=tls_secret, config_map=config_map, default_mode=mode)
    out_spec["volumes"] = [*(out_spec.get("volumes") or []), *volumes]
    return Injected(out, number, name)


def _template_of(obj: dict[str, Any]) -> tuple[Any, list[str]]:
    path = TEMPLATE_PATHS[obj["kind"]]
    node: Any = obj
    for i, key in enumerate(path):
        if not isinstance(node, dict) or key not in node:
            raise InjectError(f"has no {'.'.join(path[: i + 1])}")
        node = node[key]
    return node, list(path)


def _has_pod_template(obj: Mapping[str, Any]) -> bool:
    template = (
        (obj.get("spec") or {}).get("template") if isinstance(obj.get("spec"), dict) else None
    )
    return (
        isinstance(template, dict)
        and isinstance(template.get("spec"), dict)
        and ("containers" in template["spec"])
    )


@dataclass
class _Target:
    obj: dict[str, Any]
    index: int
    injected: Injected


def inject_objects(
    objects: Iterable[Any], opts: SidecarOptions, *, inject_all: bool, move_services: bool
) -> Result:
    """Add the sidecar to every pod template that asks for it and move matching Services."""
    result = Result()
    targets: list[_Target] = []
    for index, obj in enumerate(objects, 1):
        result.objects.append(_inject_one(obj, index, opts, inject_all, targets, result))
    result.objects = [
        _services_moved(obj, index, targets, move_services, result)
        for index, obj in enumerate(result.objects, 1)
    ]
    if result.errors:
        result.objects = []
    return result


def _inject_one(
    obj: Any,
    index: int,
    opts: SidecarOptions,
    inject_all: bool,
    targets: list[_Target],
    result: Result,
) -> Any:
    if obj is None:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("kind"), str):
        result.errors.append(f"document {index}: not a Kubernetes object (no kind)")
        return obj
    where = describe(obj, index)
    kind = obj["kind"]
    if kind.endswith("List") and isinstance(obj.get("items"), list):
        copied = dict(obj)
        copied["items"] = [
            _inject_one(item, index, opts, inject_all, targets, result) for item in obj["items"]
        ]
        return copied
    if kind not in TEMPLATE_PATHS:
        if _has_pod_template(obj) and wants_injection(
            obj["spec"]["template"].get("metadata") or {}, inject_all=inject_all
        ):
            result.errors.append(
                f"{where}: unknown kind with a pod template; supported: "
                + ", ".join(sorted(TEMPLATE_PATHS))
            )
        return obj
    try:
        template, path = _template_of(obj)
        meta = template.get("metadata") if isinstance(template, dict) else None
        if not wants_injection(meta if isinstance(meta, dict) else {}, inject_all=inject_all):
            return obj
        if isinstance(template, dict) and isinstance(template.get("spec"), dict):
            if is_injected(template["spec"]):
                result.notes.append(f"{where}: already has a {NAME} container, left alone")
                return obj
        if kind in _RUN_TO_COMPLETION and opts.mode is Mode.CONTAINER:
            raise InjectError(
                "a Job's pod never completes with a plain sidecar container; "
                "use inject.mode native (Kubernetes >= 1.29)"
            )
        injected = inject_template(template, opts)
    except InjectError as exc:
        result.errors.append(f"{where}: {exc}")
        return obj
    out = _replace_at(obj, path, injected.template)
    targets.append(_Target(out, index, injected))
    result.notes.append(
        f"{where}: {NAME} added ({opts.mode.value} sidecar), forwarding to "
        f"127.0.0.1:{injected.upstream_port}"
    )
    return out


def _replace_at(obj: dict[str, Any], path: list[str], value: dict[str, Any]) -> dict[str, Any]:
    if not path:
        return value
    out = dict(obj)
    out[path[0]] = _replace_at(obj[path[0]], path[1:], value)
    return out


def _selects(service: Mapping[str, Any], target: _Target) -> bool:
    selector = (service.get("spec") or {}).get("selector")
    if not isinstance(selector, dict) or not selector:
        return False
    svc_ns = (service.get("metadata") or {}).get("namespace")
    obj_ns = (target.obj.get("metadata") or {}).get("namespace")
    if svc_ns != obj_ns:
        return False
    labels = (target.injected.template.get("metadata") or {}).get("labels") or {}
    return all(labels.get(k) == v for k, v in selector.items())


def _services_moved(
    obj: Any, index: int, targets: list[_Target], move: bool, result: Result
) -> Any:
    if not isinstance(obj, dict) or not targets:
        return obj
    if obj.get("kind") == "Service":
        moved = copy.deepcopy(obj)
        _move_service(moved, index, targets, move, result)
        return moved
    if isinstance(obj.get("kind"), str) and obj["kind"].endswith("List"):
        items = obj.get("items")
        if isinstance(items, list):
            return {
                **obj,
                "items": [_services_moved(i, index, targets, move, result) for i in items],
            }
    return obj


def _move_service(
    svc: dict[str, Any], index: int, targets: list[_Target], move: bool, result: Result
) -> None:
    ports = (svc.get("spec") or {}).get("ports")
    if not isinstance(ports, list):
        return
    for target in targets:
        if not _selects(svc, target):
            continue
        number, name = target.injected.upstream_port, target.injected.upstream_name
        for port in ports:
            if not isinstance(port, dict):
                continue
            aimed = port.get("targetPort", port.get("port"))
            if aimed == number or (name is not None and aimed == name):
                where = describe(svc, index)
                if not move:
                    result.notes.append(
                        f"warning: {where}: port {port.get('port')} still targets the workload "
                        f"({aimed}) and bypasses certbound (--no-services)"
                    )
                    continue
                port["targetPort"] = "mtls"
                result.notes.append(
                    f"{where}: port {port.get('port')} now targets certbound's mtls port "
                    f"instead of {aimed}"
                )
