"""A key rotation under load costs no request: a real `certbound run` process, a JWKS endpoint
that takes 500 ms to answer, tokens switched to a newly published kid at 100 requests/s while
another client floods forged kids. Every valid token is forwarded, every forged one refused,
and the issuer sees a bounded number of fetches."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import math
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from proxy.tokens.refetch import REFETCH_BURST
from tests.support.clients import client_ssl
from tests.support.process import ProxyProcess, proxy_process
from tests.support.stack import AUDIENCE, PKI, Issuer, Upstream, serve_app

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

JWKS_DELAY = 0.5
RATE = 100  # valid requests per second
MIN_REFETCH = 1  # tokens.jwks_min_refetch_seconds in this test


class SlowJwks:
    """The issuer's key set, served by a real endpoint that takes JWKS_DELAY to answer."""

    def __init__(self, issuer: Issuer) -> None:
        self.issuer = issuer
        self.fetches = 0
        self.url = ""

    def app(self) -> web.Application:
        async def jwks(_: web.Request) -> web.Response:
            self.fetches += 1
            document = self.issuer.jwks()  # what is published when the fetch arrives
            await asyncio.sleep(JWKS_DELAY)
            return web.json_response(document)

        app = web.Application()
        app.router.add_get("/jwks.json", jwks)
        return app


@pytest.fixture
async def slow_jwks(issuer: Issuer) -> AsyncIterator[SlowJwks]:
    served = SlowJwks(issuer)
    runner, port = await serve_app(served.app())
    served.url = f"http://127.0.0.1:{port}/jwks.json"
    yield served
    await runner.cleanup()


@pytest.fixture
async def proc(
    pki: PKI, issuer: Issuer, upstream: Upstream, slow_jwks: SlowJwks, tmp_path: Path
) -> AsyncIterator[ProxyProcess]:
    cert, key = pki.files("server")
    config = {
        "tls": {"cert_file": cert, "key_file": key, "client_ca_file": pki.ca_file},
        "upstream": {"url": upstream.url},
        "tokens": {
            "issuer": issuer.url,
            "audience": AUDIENCE,
            "jwks_uri": slow_jwks.url,
            "jwks_min_refetch_seconds": MIN_REFETCH,
        },
    }
    with contextlib.ExitStack() as stack:
        # From a thread: readiness needs the JWKS endpoint this test's loop serves.
        yield await asyncio.to_thread(stack.enter_context, proxy_process(tmp_path, config))
        await asyncio.to_thread(stack.close)


async def send(session: aiohttp.ClientSession, url: str, token: str) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {token}"}
    async with session.get(url, headers=headers) as resp:
        return resp.status, (await resp.text()).split(":")[0]


async def at_rate(
    session: aiohttp.ClientSession, url: str, tokens: list[str]
) -> list[tuple[int, str]]:
    """Each token in its own request, RATE per second, not waiting for earlier answers."""
    started = time.monotonic()
    sent = []
    for i, token in enumerate(tokens):
        await asyncio.sleep(max(0.0, started + i / RATE - time.monotonic()))
        sent.append(asyncio.create_task(send(session, url, token)))
    return list(await asyncio.gather(*sent))


async def flood(
    session: aiohttp.ClientSession, url: str, forged: str, stop: asyncio.Event
) -> list[tuple[int, str]]:
    """Forged kids, a new one each time, from 8 connections, until told to stop."""
    answers: list[tuple[int, str]] = []

    async def one_connection() -> None:
        rest = forged.partition(".")[2]
        while not stop.is_set():
            # A valid token of the new key with its header's kid swapped for a random one.
            kid = f"forged-{uuid.uuid4().hex}"
            header = json.dumps({"alg": "ES256", "typ": "at+jwt", "kid": kid}).encode()
            header = base64.urlsafe_b64encode(header).rstrip(b"=").decode()
            answers.append(await send(session, url, f"{header}.{rest}"))

    await asyncio.gather(*(one_connection() for _ in range(8)))
    return answers


async def test_rotation_under_load_and_forged_kids_refuses_no_valid_token(
    pki: PKI, issuer: Issuer, upstream: Upstream, slow_jwks: SlowJwks, proc: ProxyProcess
) -> None:
    url = proc.url + "/orders"
    connector = aiohttp.TCPConnector(ssl=client_ssl(pki), limit=0)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        old = [issuer.mint(pki.alice, kid="k1", jti=f"old-{i}") for i in range(RATE)]
        assert set(await at_rate(session, url, old)) == {(200, '{"ok"')}
        before, began = slow_jwks.fetches, time.monotonic()
        issuer.add_key("k2")  # published; the proxy has not fetched it
        new = [issuer.mint(pki.alice, kid="k2", jti=f"new-{i}") for i in range(3 * RATE)]
        stop = asyncio.Event()
        forged = asyncio.create_task(flood(session, url, new[0], stop))
        await asyncio.sleep(0.3)  # the flood has the refetch budget spent before the switch
        answers = await at_rate(session, url, new)
        stop.set()
        refused = await forged
        elapsed = time.monotonic() - began
    assert answers == [(200, '{"ok"')] * len(new)
    assert refused and set(refused) == {(401, "401 unknown_key")}
    assert len(upstream.seen) == len(old) + len(new)
    # The bound: the burst, then one per interval for the rest of the test, plus one in flight.
    fetches = slow_jwks.fetches - before
    assert 1 <= fetches <= REFETCH_BURST + math.ceil(elapsed / MIN_REFETCH) + 1, (
        fetches,
        elapsed,
    )
