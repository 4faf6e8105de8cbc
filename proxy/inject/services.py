"""Which Service ports kube-inject moves to certbound's port: all or nothing per Service. Pure.

A Service port is moved only when every pod template in the input that it selects is
injected on the port it targets; a partial move would drop the others from its endpoints,
a partial stay would leave the injected ones reachable around certbound. Pods the input does
not hold are not seen (the webhook sees no Service at all): the README says what to do."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from proxy.inject.pod import Injected, is_not_http, not_http_warning
from proxy.inject.spec import MTLS_PORT_NAME

DEFAULT_NAMESPACE = "default"  # where kubectl puts an object without metadata.namespace


@dataclass(frozen=True, slots=True)
class Workload:
    """A pod template of the input as it was, and its injection (None: left as it was)."""

    where: str
    namespace: str
    labels: Mapping[str, Any]
    spec: Mapping[str, Any]
    injected: Injected | None


def namespace_of(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata")
    namespace = meta.get("namespace") if isinstance(meta, Mapping) else None
    return namespace if isinstance(namespace, str) and namespace else DEFAULT_NAMESPACE


def target_port(spec: Mapping[str, Any], port: Mapping[str, Any]) -> int | None:
    """The container port a Service port reaches on a pod, as the endpoints controller finds it:
    a number as is; a name among the containers' and native sidecars' ports of its protocol."""
    aimed = port.get("targetPort", port.get("port"))
    if isinstance(aimed, int):
        return aimed
    protocol = port.get("protocol", "TCP")
    containers = [
        *(spec.get("containers") or []),
        *(c for c in spec.get("initContainers") or [] if c.get("restartPolicy") == "Always"),
    ]
    for container in containers:
        for p in container.get("ports") or []:
            if p.get("name") == aimed and p.get("protocol", "TCP") == protocol:
                number = p.get("containerPort")
                return number if isinstance(number, int) else None
    return None


def selects(service: Mapping[str, Any], workload: Workload) -> bool:
    selector = (service.get("spec") or {}).get("selector")
    if not isinstance(selector, Mapping) or not selector:
        return False
    if namespace_of(service) != workload.namespace:
        return False
    return all(workload.labels.get(k) == v for k, v in selector.items())


def move_service(
    service: dict[str, Any], where: str, workloads: list[Workload], *, move: bool
) -> tuple[dict[str, Any], list[str]]:
    """The Service with its ports moved where the rule allows, and one line per decision
    (warnings start with `warning:`)."""
    out = copy.deepcopy(service)
    ports = (out.get("spec") or {}).get("ports")
    selected = [w for w in workloads if selects(service, w)]
    if not isinstance(ports, list) or not selected:
        return out, []
    lines = []
    for port in ports:
        if not isinstance(port, dict) or port.get("protocol", "TCP") != "TCP":
            continue
        aimed = port.get("targetPort", port.get("port"))
        reached = [(w, target_port(w.spec, port)) for w in selected]
        endpoints = [(w, n) for w, n in reached if n is not None]
        protected = [w for w, n in endpoints if w.injected and n == w.injected.upstream_port]
        if not protected:
            continue
        label = f"{where}: port {port.get('port')}"
        left_out = [w.where for w, _ in endpoints if w not in protected]
        # Injected on another port and not reached today: moved, the port would reach it.
        strays = [w.where for w, n in reached if n is None and w.injected]
        if not move:
            lines.append(
                f"warning: {label} still targets the workload ({aimed}) and bypasses "
                "certbound (--no-services)"
            )
            continue
        if left_out:
            lines.append(
                f"warning: {label} left on {aimed}: {', '.join(left_out)} "
                f"{'is' if len(left_out) == 1 else 'are'} not injected on it and would lose "
                f"{'its' if len(left_out) == 1 else 'their'} endpoints, so "
                f"{', '.join(w.where for w in protected)} "
                f"{'stays' if len(protected) == 1 else 'stay'} reachable around certbound "
                "through it; inject every workload behind the Service, or give the injected "
                "ones a Service of their own"
            )
            continue
        if strays:
            lines.append(
                f"warning: {label} left on {aimed}: moved to {MTLS_PORT_NAME} it would also "
                f"reach {', '.join(strays)}, whose certbound protects another port"
            )
            continue
        port["targetPort"] = MTLS_PORT_NAME
        lines.append(f"{label} now targets {MTLS_PORT_NAME} instead of {aimed}")
        if is_not_http(port.get("name"), port.get("appProtocol")):
            what = f"{label} (name {port.get('name')!r}, appProtocol {port.get('appProtocol')!r})"
            lines.append("warning: " + not_http_warning(what))
    return out, lines
