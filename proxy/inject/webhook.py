"""`certbound injector`: the mutating admission webhook, over TLS (aiohttp).

Answers AdmissionReview v1 for Pods with the JSONPatch that turns the pod into what
kube-inject would write. The decision (`review`) is pure; the server around it is I/O."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from proxy.config import ConfigError
from proxy.inject.manifests import describe
from proxy.inject.patch import make_patch
from proxy.inject.pod import Decision, Outcome, decide
from proxy.inject.spec import SidecarOptions, ValuesError, options_from_values

log = logging.getLogger("certbound.injector")

API_VERSION = "admission.k8s.io/v1"
# The API server sends at most ~3 MiB; a larger body is refused before it is parsed.
MAX_BODY = 4 * 1024 * 1024
_POD = {"group": "", "version": "v1", "kind": "Pod"}


class InjectorConfigError(ConfigError):
    """Every problem with the injector's config file at once."""


@dataclass(frozen=True, slots=True)
class InjectorSettings:
    host: str
    port: int
    cert_file: str
    key_file: str
    options: SidecarOptions


def load_injector_settings(path: str) -> InjectorSettings:
    """listen.{host,port}, tls.{cert_file,key_file}, values (kube-inject's --values format)."""
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise InjectorConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
    except yaml.YAMLError as exc:
        raise InjectorConfigError([f"{path}: not valid YAML: {exc}"]) from None
    if not isinstance(raw, dict):
        raise InjectorConfigError([f"{path}: the top level must be a mapping"])
    problems = [f"{k}: unknown key" for k in raw if k not in ("listen", "tls", "values")]
    listen, tls = raw.get("listen") or {}, raw.get("tls") or {}
    values = raw.get("values") or {}
    for name, section, keys in (("listen", listen, ("host", "port")), ("tls", tls, _TLS_KEYS)):
        if not isinstance(section, dict):
            problems.append(f"{name}: expected a mapping")
            continue
        problems += [f"{name}.{k}: unknown key" for k in section if k not in keys]
    listen = listen if isinstance(listen, dict) else {}
    tls = tls if isinstance(tls, dict) else {}
    host, port = listen.get("host", "0.0.0.0"), listen.get("port", 9443)  # noqa: S104
    if not isinstance(host, str):
        problems.append("listen.host: expected a string")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        problems.append(f"listen.port: expected a port number, got {port!r}")
    for key in _TLS_KEYS:
        if not isinstance(tls.get(key), str) or not tls[key]:
            problems.append(f"tls.{key}: required")
    options = None
    if not isinstance(values, dict):
        problems.append("values: expected a mapping")
    else:
        try:
            options = options_from_values(values)
        except ValuesError as exc:
            problems += [f"values.{p}" for p in exc.problems]
        if options and not options.config_map and not _has_tokens(options.config):
            # Without them every namespace-wide pod would be skipped: say so once, at start.
            problems.append(
                "values.proxy.config.tokens: issuer and audience (or issuers) required, "
                "unless values.inject.configMap names a ConfigMap with config.yaml"
            )
    if problems or options is None:
        raise InjectorConfigError(problems)
    return InjectorSettings(host, port, tls["cert_file"], tls["key_file"], options)


_TLS_KEYS = ("cert_file", "key_file")


def _has_tokens(config: Mapping[str, Any]) -> bool:
    tokens = config.get("tokens")
    return isinstance(tokens, Mapping) and bool(tokens.get("issuer") or tokens.get("issuers"))


def answer(uid: str, allowed: bool, **response: Any) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "AdmissionReview",
        "response": {"uid": uid, "allowed": allowed, **response},
    }


def refusal(uid: str, code: int, message: str) -> dict[str, Any]:
    return answer(uid, False, status={"code": code, "message": message})


def review(
    body: Any, opts: SidecarOptions, *, inject_all: bool
) -> tuple[int, dict[str, Any], Decision | None, str]:
    """(HTTP status, AdmissionReview answer, the pod's decision if one was made, the pod as
    `namespace/name`) for one parsed request body."""
    request = body.get("request") if isinstance(body, dict) else None
    uid = request.get("uid") if isinstance(request, dict) else None
    if not isinstance(body, dict) or not isinstance(request, dict) or not isinstance(uid, str):
        return 400, refusal("", 400, "not an AdmissionReview: request.uid is missing"), None, ""
    if body.get("apiVersion") != API_VERSION or body.get("kind") != "AdmissionReview":
        message = f"expected kind AdmissionReview, apiVersion {API_VERSION}"
        return 400, refusal(uid, 400, message), None, ""
    if request.get("kind") != _POD or request.get("subResource"):
        return 200, answer(uid, True), None, ""  # not a pod: none of our business
    if request.get("operation") != "CREATE":
        return 200, answer(uid, True), None, ""
    pod = request.get("object")
    if not isinstance(pod, dict):
        return 200, refusal(uid, 400, "request.object is missing or not an object"), None, ""
    meta: dict[str, Any] = pod["metadata"] if isinstance(pod.get("metadata"), dict) else {}
    namespace = meta.get("namespace") or request.get("namespace")
    namespace = namespace if isinstance(namespace, str) else ""
    where = describe({"kind": "Pod", "metadata": {**meta, "namespace": namespace}}, 1)
    decision = decide(pod, opts, inject_all=inject_all, namespace=namespace)
    if decision.outcome is Outcome.REFUSED:
        # The pod asked for certbound: starting it without would expose the workload.
        message = f"certbound cannot be added to {where}: {decision.reason}"
        return 200, refusal(uid, 400, message), decision, where
    if decision.outcome in (Outcome.SKIPPED, Outcome.ALREADY_INJECTED):
        warning = f"certbound not added: {decision.reason}"
        return 200, answer(uid, True, warnings=[warning]), decision, where
    if decision.injected is None:
        return 200, answer(uid, True), decision, where
    ops = make_patch(pod, decision.injected.template)
    patch = base64.b64encode(json.dumps(ops).encode()).decode()
    warnings = [f"certbound: {w}" for w in decision.warnings]
    extra = {"warnings": warnings} if warnings else {}
    return 200, answer(uid, True, patchType="JSONPatch", patch=patch, **extra), decision, where


def _uid_of(body: Any) -> str:
    """The review's uid when it has one, for answers to reviews that could not be read."""
    request = body.get("request") if isinstance(body, dict) else None
    uid = request.get("uid") if isinstance(request, dict) else None
    return uid if isinstance(uid, str) else ""


def _log_decision(uid: str, where: str, decision: Decision | None, document: Any) -> None:
    """One line per review: uid, pod, what was decided and why (never the pod's content)."""
    if decision is None:
        status = document["response"].get("status")
        outcome = "refused" if status else "allowed"
        reason = status["message"] if status else "not a pod creation"
        log.info("review uid=%s outcome=%s reason=%s", uid or "-", outcome, json.dumps(reason))
        return
    level = logging.WARNING if decision.exposed or decision.warnings else logging.INFO
    reason = decision.reason or "; ".join(decision.warnings)
    log.log(
        level,
        "review uid=%s pod=%s outcome=%s reason=%s",
        uid or "-",
        where.removeprefix("Pod "),
        decision.outcome.value,
        json.dumps(reason),
    )


def _json(status: int, document: Mapping[str, Any]) -> web.Response:
    return web.json_response(document, status=status)


def build_app(opts: SidecarOptions) -> web.Application:
    async def handle(request: web.Request, *, inject_all: bool) -> web.Response:
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            log.warning("review refused: larger than %d bytes", MAX_BODY)
            return _json(413, refusal("", 413, f"AdmissionReview larger than {MAX_BODY} bytes"))
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError):
            log.warning("review refused: the body is not JSON")
            return _json(400, refusal("", 400, "the body is not JSON"))
        uid = _uid_of(body)
        try:
            status, document, decision, where = review(body, opts, inject_all=inject_all)
        except Exception:  # a bug must still get an AdmissionReview answer, not a 500
            log.exception("review uid=%s failed", uid or "-")
            status, document = 400, refusal(uid, 400, "certbound could not read this review")
            decision, where = None, ""
        _log_decision(uid, where, decision, document)
        return _json(status, document)

    async def inject(request: web.Request) -> web.Response:
        return await handle(request, inject_all=False)

    async def inject_namespace(request: web.Request) -> web.Response:
        return await handle(request, inject_all=True)

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    app = web.Application(client_max_size=MAX_BODY)
    app.router.add_post("/inject", inject)  # pods that opt in
    app.router.add_post("/inject/namespace", inject_namespace)  # every pod unless opted out
    app.router.add_get("/healthz", healthz)
    return app


def server_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert_file, key_file)
    return ctx


# How often the serving certificate's files are checked: two stat calls.
RELOAD_INTERVAL_SECONDS = 2.0


async def _reload(ctx: ssl.SSLContext, cert_file: str, key_file: str) -> None:
    """cert-manager renews the serving certificate in place (kubelet swaps the Secret's files);
    new handshakes get the new one. The API server trusts the CA that signs both (the chart's
    CA Issuer), so handshakes before and after the swap succeed."""
    seen = _stamp(cert_file, key_file)
    while True:
        await asyncio.sleep(RELOAD_INTERVAL_SECONDS)
        stamp = _stamp(cert_file, key_file)
        if stamp != seen:
            try:
                ctx.load_cert_chain(cert_file, key_file)
                seen = stamp
                log.info("serving certificate reloaded from %s", cert_file)
            except (OSError, ssl.SSLError) as exc:
                log.warning("new serving certificate not loaded, keeping the old one: %s", exc)


def _stamp(*paths: str) -> tuple[int, ...]:
    try:
        return tuple(x for p in paths for x in (os.stat(p).st_mtime_ns, os.stat(p).st_ino))
    except OSError:
        return ()


async def serve(settings: InjectorSettings, stop: asyncio.Event) -> None:
    ctx = server_context(settings.cert_file, settings.key_file)
    runner = web.AppRunner(build_app(settings.options), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port, ssl_context=ctx)
    await site.start()
    log.info(
        "injector listening on %s:%d (mode %s, serving certificate %s)",
        settings.host,
        settings.port,
        settings.options.mode.value,
        settings.cert_file,
    )
    reload = asyncio.create_task(_reload(ctx, settings.cert_file, settings.key_file))
    try:
        await stop.wait()
    finally:
        reload.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reload
        await runner.cleanup()
