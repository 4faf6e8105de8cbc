"""The issuer's JWKS endpoint fails: at start (not ready, retried with backoff, ready once it
answers) and during operation (the cached key set keeps working)."""

from __future__ import annotations

import asyncio
import time

import pytest

from proxy.tokens.jwks import KeySetError
from tests.support.faults import admin_get, proxy_with
from tests.support.stack import PKI, Issuer, Upstream

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


async def test_jwks_down_at_start_not_ready_then_ready_when_it_answers(
    pki: PKI, issuer: Issuer, upstream: Upstream
) -> None:
    issuer.available = False  # the endpoint answers 503
    async with proxy_with(pki, issuer, upstream, wait_keys=False) as r:
        failures_before = await r.metric(
            'certbound_jwks_refresh_total{issuer="0",result="failure"}'
        )
        token = issuer.mint(pki.alice)
        assert await admin_get(r.admin, "/healthz") == 200
        assert await admin_get(r.admin, "/readyz") == 503
        status, headers, body = await r.request(token=token)
        assert status == 503 and body.startswith(b"503 keys_unavailable:"), body
        assert "WWW-Authenticate" not in headers  # our fault, not the client's
        # Retried with backoff (1 s, then 2 s, ...): two fetches in 1.6 s, not a hammering.
        await asyncio.sleep(1.6)
        assert issuer.jwks_hits == 2, issuer.jwks_hits
        assert await admin_get(r.admin, "/readyz") == 503
        assert await r.metric('certbound_jwks_refresh_total{issuer="0",result="failure"}') >= (
            failures_before + 2
        )
        issuer.available = True
        deadline = time.monotonic() + 8
        while await admin_get(r.admin, "/readyz") != 200:
            assert time.monotonic() < deadline, "never became ready after the JWKS came back"
            await asyncio.sleep(0.1)
        assert (await r.request(token=token))[0] == 200
        assert upstream.seen and len(upstream.seen) == 1


async def test_jwks_down_during_operation_cached_keys_keep_working(
    pki: PKI, issuer: Issuer, upstream: Upstream
) -> None:
    async with proxy_with(pki, issuer, upstream) as r:
        assert (await r.request(token=issuer.mint(pki.alice)))[0] == 200
        issuer.available = False
        with pytest.raises(KeySetError):
            await r.proxy.keys.refresh()  # the timer's refresh fails
        # A token never seen before (not in the verified-token cache) still verifies.
        status, _, body = await r.request(token=issuer.mint(pki.alice))
        assert status == 200, body
        assert await admin_get(r.admin, "/readyz") == 200
        # An unknown kid tries a refetch, which fails: 401 unknown_key, nothing breaks.
        issuer.add_key("k2", publish=False)
        status, _, body = await r.request(token=issuer.mint(pki.alice, kid="k2"))
        assert status == 401 and body.startswith(b"401 unknown_key:"), body
        assert (await r.request(token=issuer.mint(pki.alice, kid="k1")))[0] == 200
        assert len(upstream.seen) == 3
