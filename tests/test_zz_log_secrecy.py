"""No token, key or certificate in any log line: a real process's stdout under hostile traffic
here; the log output of the whole test run is scanned by the session fixture in conftest."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from tests.support.process import proxy_process
from tests.support.secrecy import leaks
from tests.support.stack import LOG, MINTED, PKI, Issuer, Upstream, process_config

pytestmark = pytest.mark.e2e


def test_the_leak_scanner_finds_tokens_signatures_and_keys(issuer: Issuer) -> None:
    token = issuer.mint(None)
    assert leaks(f"x {token} y", {token})
    assert leaks("sig " + token.rsplit(".", 1)[-1], {token})
    assert leaks("-----BEGIN PRIVATE KEY-----", set())
    assert leaks("jti=abc sub=alice", {token}) == []


def test_the_run_log_is_being_collected() -> None:
    assert LOG.lines, "the session collector is attached to the root logger"
    assert MINTED


@pytest.mark.slow
async def test_process_stdout_holds_no_token_under_hostile_traffic(
    pki: PKI, issuer: Issuer, upstream: Upstream, tmp_path: Path
) -> None:
    config = process_config(pki, issuer, upstream, tmp_path)
    config["log"] = {"level": "debug", "audit_accepted": True}
    tokens = {
        issuer.mint(pki.alice),
        issuer.mint(pki.alice, exp=1),
        issuer.mint(pki.alice, aud="other"),
        issuer.mint(pki.alice, sub="x\nInjected"),
        issuer.mint(None),
    }
    with proxy_process(tmp_path, config) as proc:
        import ssl

        ctx = ssl.create_default_context(cafile=pki.ca_file)
        for who in ("alice", "bob"):
            ctx.load_cert_chain(*pki.files(who))
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as s:
                for token in tokens:
                    for headers, path, data in (
                        ({"Authorization": f"Bearer {token}"}, "/a", None),
                        ({"Authorization": f"bearer {token}"}, "/b", None),
                        ({"Authorization": f"Bearer {token} {token}"}, "/c", None),
                        ({"Authorization": f"Basic {token}"}, "/d", None),
                        ({}, f"/e?access_token={token}", None),
                        ({"Authorization": f"Bearer {token}"}, "/f", {"access_token": token}),
                        ({"Authorization": f"Bearer {token[:-3]}"}, "/g", None),
                    ):
                        async with s.post(proc.url + path, headers=headers, data=data) as r:
                            await r.read()
        output = proc.output()
    assert '"log":"audit"' in output
    assert leaks(output, tokens) == []
