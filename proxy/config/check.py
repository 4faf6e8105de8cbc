"""The whole check of a configuration file, as `check-config`, start-up and SIGHUP need it:
keys and values, then the TLS files and CRLs loaded once to prove they work. And which keys a
reload cannot change in a running process."""

from __future__ import annotations

from pathlib import Path

from proxy.config.load import ConfigError, load_settings
from proxy.settings import Settings

# Keys a running process cannot take from a reload: its sockets and processes are built from
# them. Changing one needs a restart (a rollout in Kubernetes).
RESTART_KEYS = (
    "listen.host",
    "listen.port",
    "listen.workers",
    "listen.event_loop",
    "admin.host",
    "admin.port",
)


def check_file(path: str | Path) -> Settings:
    """Settings from `path`, proven loadable. Raises ConfigError with every problem."""
    from proxy.trust.tls import TLSConfigError, build_server_context, crl_sources, load_revocation

    settings = load_settings(path)
    try:
        build_server_context(settings.tls)  # PEM that parses but does not load is an error too
        load_revocation(settings.tls)  # and a CRL its CA did not sign
        crl_sources(settings.tls)  # and fetch_crls with nowhere to fetch from
    except TLSConfigError as exc:
        raise ConfigError([str(exc)]) from None
    return settings


def restart_keys_changed(running: Settings, new: Settings) -> list[str]:
    """The RESTART_KEYS whose value differs between the running settings and new ones."""
    changed = []
    for key in RESTART_KEYS:
        section, name = key.split(".")
        if getattr(getattr(running, section), name) != getattr(getattr(new, section), name):
            changed.append(key)
    return changed
