"""DPoP server nonces (RFC 9449 §9, dpop.nonce) through a running proxy: a proof without our
nonce is answered `use_dpop_nonce` with a DPoP-Nonce header and never forwarded; the client's
retry with it passes; an aged nonce is still good for one period and is replaced on a 200."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import pytest

from proxy.settings import DPoPSettings
from proxy.tokens.dpop import Nonces
from tests.support.dpop_clients import BASE, Client, Holder
from tests.support.process import proxy_process
from tests.support.stack import (
    PKI,
    Issuer,
    Running,
    StartProxy,
    Upstream,
    make_settings,
    process_config,
)

pytestmark = pytest.mark.e2e

ROTATION = 600
KEY = b"a shared nonce key of the replicas, from a Secret"


@pytest.fixture
async def dpop(
    start_proxy: StartProxy, pki: PKI, issuer: Issuer, upstream: Upstream, tmp_path: Path
) -> Running:
    key_file = tmp_path / "nonce.key"
    key_file.write_bytes(KEY + b"\n")  # as `kubectl create secret --from-file` leaves it
    tls = replace(make_settings(pki, issuer, upstream).tls, client_cert="optional")
    dpop = DPoPSettings(
        nonce=True, nonce_rotation_seconds=ROTATION, nonce_secret_file=str(key_file)
    )
    return await start_proxy(tls=tls, dpop=dpop)


def nonce_of(period_offset: int) -> str:
    """What the proxy issues `period_offset` periods from now (what another replica with the
    same key issued, or what this one issued a period ago)."""
    return Nonces(KEY, ROTATION).current(time.time() + period_offset * ROTATION)


def rejected(reason: str) -> str:
    return f'certbound_requests_total{{issuer="0",outcome="rejected",reason="{reason}"}}'


async def test_a_proof_without_nonce_gets_one_and_the_retry_with_it_passes(dpop: Running) -> None:
    client = Client(dpop)
    status, headers, body = await client.send([client.proof()])
    assert status == 401, body
    assert body.startswith(b"401 dpop_nonce_missing:"), body
    challenge = headers["WWW-Authenticate"]
    assert challenge.startswith('DPoP error="use_dpop_nonce"'), challenge
    assert 'algs="ES256 PS256 EdDSA RS256"' in challenge
    nonce = headers["DPoP-Nonce"]
    assert nonce == nonce_of(0)
    assert dpop.upstream.seen == []
    assert await dpop.metric(rejected("dpop_nonce_missing")) >= 1

    status, headers, body = await client.send([client.proof(nonce=nonce)])
    assert status == 200, body
    assert "DPoP-Nonce" not in headers  # the client's nonce is current: nothing to renew
    assert len(dpop.upstream.seen) == 1


async def test_a_nonce_of_the_previous_period_passes_and_the_answer_carries_the_new_one(
    dpop: Running,
) -> None:
    client = Client(dpop)
    status, headers, body = await client.send([client.proof(nonce=nonce_of(-1))])
    assert status == 200, body
    assert headers["DPoP-Nonce"] == nonce_of(0)
    assert "dpop-nonce" not in dpop.upstream.seen[0].headers  # ours to send, not the client's


@pytest.mark.parametrize(
    "given",
    [-2, 1, "made-up-nonce", ""],
    ids=["two_periods_old", "next_period", "made_up", "empty"],
)
async def test_an_unknown_or_expired_nonce_is_refused_with_a_new_one(
    dpop: Running, given: int | str
) -> None:
    # Periods counted when the test runs, not at collection: the suite takes minutes.
    nonce = nonce_of(given) if isinstance(given, int) else given
    client = Client(dpop)
    status, headers, body = await client.send([client.proof(nonce=nonce)])
    assert status == 401, body
    assert body.startswith(b"401 dpop_nonce_invalid:"), body
    assert headers["WWW-Authenticate"].startswith('DPoP error="use_dpop_nonce"')
    assert headers["DPoP-Nonce"] == nonce_of(0)
    assert dpop.upstream.seen == []
    assert await dpop.metric(rejected("dpop_nonce_invalid")) >= 1


async def test_a_good_nonce_does_not_excuse_a_replayed_or_wrong_proof(dpop: Running) -> None:
    client = Client(dpop)
    proof = client.proof(nonce=nonce_of(0))
    assert (await client.send([proof]))[0] == 200
    status, headers, body = await client.send([proof])
    assert status == 401 and body.startswith(b"401 dpop_replayed:"), body
    assert "DPoP-Nonce" not in headers
    status, _, body = await client.send([client.proof("POST", nonce=nonce_of(0))])
    assert status == 401 and body.startswith(b"401 dpop_wrong_method:"), body
    assert len(dpop.upstream.seen) == 1


async def test_bearer_and_mtls_requests_need_no_nonce(dpop: Running) -> None:
    token = dpop.issuer.mint(dpop.pki.alice)
    status, headers, body = await dpop.request(token=token, who="alice")
    assert status == 200, body
    assert "DPoP-Nonce" not in headers


@pytest.mark.slow
async def test_workers_of_one_process_accept_each_others_nonces(
    pki: PKI, issuer: Issuer, upstream: Upstream, tmp_path: Path
) -> None:
    """No nonce_secret_file: the supervisor gives its workers one key, so a client whose next
    connection lands on another worker (SO_REUSEPORT picks) is not sent round again."""
    config = process_config(pki, issuer, upstream, tmp_path)
    config["tls"]["client_cert"] = "optional"
    config["listen"] = {"workers": 2}
    config["dpop"] = {"external_base_url": BASE, "nonce": True}
    with proxy_process(tmp_path, config) as proxy:
        holder = Holder(issuer, pki)
        assert await holder.get(proxy, holder.proof()) == 401
        assert holder.body.startswith(b"401 dpop_nonce_missing:")
        nonce = holder.headers["DPoP-Nonce"]
        # Each request on a new connection: about half of them reach the other worker.
        statuses = [await holder.get(proxy, holder.proof(nonce=nonce)) for _ in range(12)]
        assert statuses == [200] * 12, holder.body
