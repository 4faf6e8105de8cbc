"""kube-inject as a pure transformation: Kubernetes objects in, objects with the sidecar out.

Each pod template is decided by pod.decide, each Service by services.move_service. Reading and
writing YAML, and printing, are the caller's job (cli.py, commands.py)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from proxy.inject.pod import InjectError, Outcome, decide, wants_injection
from proxy.inject.services import Workload, move_service, namespace_of
from proxy.inject.spec import MTLS_PORT_NAME, NAME, SidecarOptions

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


@dataclass
class Result:
    """The outcome of one kube-inject run: objects to write, or errors and nothing else.
    `notes` are in input order; a warning's line starts with `warning:`."""

    objects: list[Any] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def warnings(self) -> list[str]:
        return [n for n in self.notes if n.startswith("warning:")]


def describe(obj: Mapping[str, Any], index: int) -> str:
    """`Deployment shop/orders`, or `document 3` for something without a name."""
    meta = obj.get("metadata") if isinstance(obj.get("metadata"), Mapping) else {}
    assert isinstance(meta, Mapping)
    name = meta.get("name") or (f"{meta['generateName']}*" if meta.get("generateName") else "")
    kind = obj.get("kind") or "object"
    if not name:
        return f"{kind} (document {index})"
    return f"{kind} {meta['namespace']}/{name}" if meta.get("namespace") else f"{kind} {name}"


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


def inject_objects(
    objects: Iterable[Any], opts: SidecarOptions, *, inject_all: bool, move_services: bool
) -> Result:
    """Add the sidecar to every pod template that asks for it and move matching Services."""
    result = Result()
    workloads: list[Workload] = []
    for index, obj in enumerate(objects, 1):
        result.objects.append(_inject_one(obj, index, opts, inject_all, workloads, result))
    if any(w.injected for w in workloads):
        result.objects = [
            _services_moved(obj, index, workloads, move_services, result)
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
    workloads: list[Workload],
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
            _inject_one(item, index, opts, inject_all, workloads, result) for item in obj["items"]
        ]
        return copied
    if kind not in TEMPLATE_PATHS:
        if _has_pod_template(obj):
            meta = obj["spec"]["template"].get("metadata")
            meta = meta if isinstance(meta, Mapping) else {}
            why = "unknown kind with a pod template; supported: " + ", ".join(
                sorted(TEMPLATE_PATHS)
            )
            if wants_injection(meta, inject_all=False):
                result.errors.append(f"{where}: {why}")
            elif wants_injection(meta, inject_all=inject_all):
                result.notes.append(f"warning: {where}: skipped, {why}")
        return obj
    try:
        template, path = _template_of(obj)
    except InjectError as exc:
        result.errors.append(f"{where}: {exc}")
        return obj
    decision = decide(
        template,
        opts,
        inject_all=inject_all,
        namespace=namespace_of(obj),
        kind=kind,
    )
    meta = template.get("metadata") if isinstance(template, dict) else None
    labels = meta.get("labels") if isinstance(meta, dict) else None
    spec = template.get("spec") if isinstance(template, dict) else None
    workload = Workload(
        where,
        namespace_of(obj),
        labels if isinstance(labels, dict) else {},
        spec if isinstance(spec, dict) else {},
        decision.injected,
    )
    workloads.append(workload)
    outcome = decision.outcome
    if outcome is Outcome.REFUSED:
        result.errors.append(f"{where}: {decision.reason}")
    elif outcome is Outcome.SKIPPED:
        level = "warning: " if decision.exposed else ""
        result.notes.append(f"{level}{where}: skipped, {decision.reason}")
    elif outcome is Outcome.ALREADY_INJECTED:
        result.notes.append(f"{where}: {decision.reason}, left alone")
    if decision.injected is None:
        return obj
    injected = decision.injected
    result.notes.append(
        f"{where}: {NAME} added ({opts.mode.value} sidecar) on {MTLS_PORT_NAME} "
        f"{injected.ports.mtls}, forwarding to 127.0.0.1:{injected.upstream_port}"
    )
    result.notes.extend(f"warning: {where}: {w}" for w in decision.warnings)
    return _replace_at(obj, path, injected.template)


def _replace_at(obj: dict[str, Any], path: list[str], value: dict[str, Any]) -> dict[str, Any]:
    if not path:
        return value
    out = dict(obj)
    out[path[0]] = _replace_at(obj[path[0]], path[1:], value)
    return out


def _services_moved(
    obj: Any, index: int, workloads: list[Workload], move: bool, result: Result
) -> Any:
    if not isinstance(obj, dict):
        return obj
    if obj.get("kind") == "Service":
        moved, lines = move_service(obj, describe(obj, index), workloads, move=move)
        result.notes.extend(lines)
        return moved
    if isinstance(obj.get("kind"), str) and obj["kind"].endswith("List"):
        items = obj.get("items")
        if isinstance(items, list):
            return {
                **obj,
                "items": [_services_moved(i, index, workloads, move, result) for i in items],
            }
    return obj
