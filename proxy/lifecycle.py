"""A serving process's life: start, then signals. SIGTERM (and SIGINT) drains and stops;
SIGHUP reloads the configuration file, as nginx does: the file is checked first, a new proxy
is built from it and takes over the listening sockets once its keys are loaded, and the old
one drains its connections. Anything wrong keeps the running proxy, and says why."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from proxy import metrics, server
from proxy.config import ConfigError
from proxy.config.check import check_file, restart_keys_changed
from proxy.settings import Settings
from proxy.workers import notify_ready

log = logging.getLogger("certbound.reload")

# How long a reloaded proxy may take to load its issuers' keys before the reload is given up
# (the running proxy stays): a new issuer that does not answer must not take traffic down.
KEYS_TIMEOUT = 10.0


async def serve(
    settings: Settings, config_path: str, grace_seconds: float = 30.0, shared_ports: bool = False
) -> None:
    """Run until SIGTERM or SIGINT, then drain; reload on SIGHUP. `shared_ports`: one of
    several workers (the supervisor checked a reloaded file before passing SIGHUP on)."""
    proxy = await server.start(settings, shared_ports=shared_ports)
    notify_ready()
    if not shared_ports:
        metrics.WORKERS_SERVING.set(1)  # with workers, the supervisor counts them
    server.tune_gc()
    signals: asyncio.Queue[signal.Signals] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(sig, signals.put_nowait, sig)
    draining: set[asyncio.Task[None]] = set()
    while (received := await signals.get()) == signal.SIGHUP:
        proxy = await reload(proxy, config_path, grace_seconds, draining)
    log.info("signal received: draining for up to %.0fs", grace_seconds)
    await server.stop(proxy, grace_seconds)
    if draining:  # proxies replaced by reloads, still finishing their requests
        await asyncio.wait(draining, timeout=grace_seconds)
    log.info("stopped (%s)", received.name)


async def reload(
    proxy: server.Proxy,
    config_path: str,
    grace_seconds: float,
    draining: set[asyncio.Task[None]],
) -> server.Proxy:
    """The proxy that serves after a SIGHUP: a new one built from the file, or `proxy`."""
    log.info("SIGHUP: reloading %s", config_path)
    try:
        settings = await asyncio.to_thread(check_file, config_path)
    except ConfigError as exc:
        return _refused(proxy, exc.problems)
    except Exception as exc:  # a reload never takes the serving process down
        log.exception("reload: the check of %s failed", config_path)
        return _refused(proxy, [f"the file could not be checked: {type(exc).__name__}"])
    refused = restart_keys_changed(proxy.settings, settings)
    if refused:
        return _refused(proxy, [f"{key}: changes only with a restart" for key in refused])
    try:
        new = await server.start(settings, takeover=proxy)
    except Exception as exc:  # whatever it is, the running proxy stays
        log.exception("reload failed while building the new proxy")
        return _refused(proxy, [f"the new configuration did not start: {exc}"])
    if not new.has_keys:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(new.keys.wait_loaded(), KEYS_TIMEOUT)
    if not new.has_keys:
        await server.stop(new, 0, keep_admin=True)
        waiting = ", ".join(new.keys.not_loaded)
        return _refused(proxy, [f"signing keys not loaded in {KEYS_TIMEOUT:g}s: issuer {waiting}"])
    await server.take_over(new, proxy)
    task = asyncio.create_task(server.stop(proxy, grace_seconds, keep_admin=True))
    draining.add(task)
    task.add_done_callback(draining.discard)
    metrics.CONFIG_RELOADS.labels(result="success").inc()
    log.info("configuration reloaded; the previous one drains its connections")
    return new


def _refused(proxy: server.Proxy, problems: list[str]) -> server.Proxy:
    for problem in problems:
        log.error("reload refused: %s", problem)
    log.error("reload refused: the running configuration stays")
    metrics.CONFIG_RELOADS.labels(result="failure").inc()
    return proxy
