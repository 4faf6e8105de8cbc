"""Bounded HTTP GETs for what certbound fetches off the request path (issuer metadata, key
sets, CRLs): a size limit and a time limit on every answer, no redirects, and one error type
whose text is safe to log."""

from __future__ import annotations

import aiohttp


class FetchError(Exception):
    """A document could not be fetched or used; the text is safe to log. `status`: the HTTP
    status of an answer other than 200, for callers that word it their own way."""

    def __init__(self, text: str, *, status: int | None = None) -> None:
        super().__init__(text)
        self.status = status


async def get_bounded(
    session: aiohttp.ClientSession, url: str, *, limit: int, time_limit: float
) -> bytes:
    """The body at `url`: status 200, at most `limit` bytes, within `time_limit` seconds."""
    try:
        async with session.get(
            url, timeout=aiohttp.ClientTimeout(total=time_limit), allow_redirects=False
        ) as response:
            if response.status != 200:
                raise FetchError(f"HTTP status {response.status}", status=response.status)
            if response.content_length is not None and response.content_length > limit:
                raise FetchError(f"Content-Length {response.content_length} over {limit} bytes")
            body = bytearray()
            async for piece in response.content.iter_chunked(64 * 1024):
                body += piece
                if len(body) > limit:
                    raise FetchError(f"larger than {limit} bytes")
            return bytes(body)
    except TimeoutError:
        raise FetchError(f"no complete answer within {time_limit:g} s") from None
    except (aiohttp.ClientError, OSError) as exc:
        raise FetchError(f"{type(exc).__name__}: {exc}") from None
