"""The issuer's metadata (RFC 8414, OpenID Connect Discovery): where its jwks_uri and
introspection_endpoint are, and a bounded JSON fetch for such documents."""

from __future__ import annotations

import json
import logging
from typing import Any

import aiohttp

log = logging.getLogger("certbound.metadata")

METADATA_PATHS = ("/.well-known/openid-configuration", "/.well-known/oauth-authorization-server")
MAX_DOCUMENT_BYTES = 1 << 20


class FetchError(Exception):
    """A document could not be fetched or is not JSON; the text is safe to log."""


async def get_json(session: aiohttp.ClientSession, url: str, *, time_limit: float) -> Any:
    try:
        async with session.get(
            url, timeout=aiohttp.ClientTimeout(total=time_limit), allow_redirects=False
        ) as resp:
            if resp.status != 200:
                raise FetchError(f"GET {url}: HTTP {resp.status}")
            body = await resp.content.read(MAX_DOCUMENT_BYTES + 1)
            if len(body) > MAX_DOCUMENT_BYTES:
                raise FetchError(f"GET {url}: document larger than {MAX_DOCUMENT_BYTES} bytes")
            return json.loads(body)
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise FetchError(f"GET {url}: {type(exc).__name__}") from None
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
