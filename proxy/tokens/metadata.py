"""The issuer's metadata (RFC 8414, OpenID Connect Discovery): where its jwks_uri and
introspection_endpoint are, and a bounded JSON fetch (proxy/fetch.py) for such documents."""

from __future__ import annotations

import json
import logging
from typing import Any

import aiohttp

from proxy.fetch import FetchError, get_bounded

log = logging.getLogger("certbound.metadata")

METADATA_PATHS = ("/.well-known/openid-configuration", "/.well-known/oauth-authorization-server")
MAX_DOCUMENT_BYTES = 1 << 20


async def get_json(session: aiohttp.ClientSession, url: str, *, time_limit: float) -> Any:
    try:
        body = await get_bounded(session, url, limit=MAX_DOCUMENT_BYTES, time_limit=time_limit)
    except FetchError as exc:
        reason = f"HTTP {exc.status}" if exc.status is not None else str(exc)
        raise FetchError(f"GET {url}: {reason}") from None
    try:
        return json.loads(body)
    except ValueError:
        raise FetchError(f"GET {url}: not JSON") from None


async def discover(
    session: aiohttp.ClientSession, issuer: str, member: str, *, time_limit: float
) -> str | None:
    """The http(s) URL named `member` in the issuer's metadata, or None."""
    base = issuer.rstrip("/")
    for path in METADATA_PATHS:
        try:
            metadata = await get_json(session, base + path, time_limit=time_limit)
        except FetchError:
            continue
        # RFC 8414 §3.3: metadata must name the issuer we asked, or it is not ours.
        if isinstance(metadata, dict) and metadata.get("issuer") == issuer:
            url = metadata.get(member)
            if isinstance(url, str) and url.startswith(("https://", "http://")):
                log.info("discovered %s %s from %s", member, url, base + path)
                return url
    return None
