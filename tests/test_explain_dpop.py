"""`certbound explain --dpop PROOF --url URL`: the proof walked check by check, in the order the
proxy checks it, with the reason, status and error code the proxy would answer. Real parts:
the test issuer's keys in a JWKS file, tokens minted with cnf.jkt, proofs made with PyJWT as a
client makes them, and the CLI run as a process."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from proxy.config import load_settings
from proxy.settings import Settings
from proxy.tokens.dpop import Nonces, verify_proof
from proxy.tools.explain import Request, explain, request_target
from tests.support.dpop_proofs import ath_of, make_proof, public_jwk
from tests.support.dpop_proofs import thumbprint as jwk_thumbprint
from tests.support.stack import AUDIENCE, PKI, Issuer, thumbprint

URL = "https://orders.example/orders"
CHECKS = (
    "length", "JWS form", "typ", "alg", "jwk", "thumbprint", "key", "signature", "jti", "iat",
    "htm", "htu", "iat age", "ath", "cnf.jkt",
)  # fmt: skip


class Client:
    """A DPoP client: a P-256 key pair, and proofs made with PyJWT."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.jwk = public_jwk(self.key)
        self.jkt = jwk_thumbprint(self.jwk)

    def proof(
        self,
        token: str,
        htm: str = "GET",
        htu: str = URL,
        *,
        alg: str = "ES256",
        signer: Any = None,
        header: dict[str, Any] | None = None,
        **claims: Any,
    ) -> str:
        return make_proof(
            self.key,
            self.jwk,
            htm=htm,
            htu=htu,
            token=token,
            alg=alg,
            signer=signer,
            header=header,
            **claims,
        )


@pytest.fixture
def dpop_issuer() -> Issuer:
    issuer = Issuer(url="https://issuer.invalid")
    issuer.add_key("k1")
    return issuer


def write_config(
    tmp_path: Path,
    pki: PKI,
    issuer: Issuer,
    *,
    client_cert: str = "optional",
    dpop: dict[str, object] | None = None,
    policy: dict[str, object] | None = None,
) -> Path:
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(issuer.jwks()))
    cert, key = pki.files("server")
    config: dict[str, object] = {
        "tls": {
            "cert_file": cert,
            "key_file": key,
            "client_ca_file": pki.ca_file,
            "client_cert": client_cert,
        },
        # The issuer URL points nowhere reachable by design: explain must not need it.
        "tokens": {"issuer": issuer.url, "audience": AUDIENCE, "jwks_file": str(jwks)},
    }
    if dpop:
        config["dpop"] = dpop
    if policy:
        config["policy"] = policy
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


async def walk(
    settings: Settings,
    token: str,
    proof: str,
    *,
    method: str = "GET",
    url: str = URL,
    target: str | None = None,
    certificate: x509.Certificate | None = None,
) -> tuple[int, str]:
    lines: list[str] = []
    request = Request(
        certificate=certificate,
        token=token,
        method=method,
        target=target if target is not None else "/orders",
        proof=proof,
        url=url,
    )
    code = await explain(settings, request, lines.append)
    out = "\n".join(lines)
    assert "note:" not in out, out  # the walk and verify_proof never disagree
    return code, out


def cli(config: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", "explain", "--config", str(config), *args],
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )


def assert_no_credentials(out: str, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in out
        assert secret.rsplit(".", 1)[1] not in out  # nor the signature alone


# --- through the command line, as a process ----------------------------------------------


def test_good_proof_without_a_certificate_is_forwarded_with_every_check_ok(
    tmp_path: Path, pki: PKI, dpop_issuer: Issuer
) -> None:
    client = Client()
    token = dpop_issuer.mint(cnf={"jkt": client.jkt})
    proof = client.proof(token, nonce="n-1")
    config = write_config(tmp_path, pki, dpop_issuer)
    result = cli(config, "--token", token, "--dpop", proof, "--url", URL)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for check in CHECKS:
        assert f"   {check:<12}ok: " in out, check
    assert f"thumbprint  ok: {client.jkt} (RFC 7638" in out
    assert "request  https://orders.example/orders  (https:// + Host header orders.example" in out
    assert "replay      not checked: the proxy remembers each jti for 330 s in each proxy" in out
    assert 'nonce       "n-1": not checked (dpop.nonce is false)' in out
    assert "1. client certificate: none given" in out
    assert out.rstrip().endswith("outcome: FORWARD")
    assert_no_credentials(out, token, proof)


def test_proof_from_stdin_and_token_from_a_file(
    tmp_path: Path, pki: PKI, dpop_issuer: Issuer
) -> None:
    client = Client()
    token = dpop_issuer.mint(cnf={"jkt": client.jkt})
    (tmp_path / "token").write_text("DPoP " + token + "\n")
    config = write_config(tmp_path, pki, dpop_issuer)
    result = cli(
        config,
        *("--token", f"@{tmp_path / 'token'}", "--dpop", "-", "--method", "post"),
        *("--url", "https://orders.example/orders?page=2"),
        stdin="DPoP: " + client.proof(token, "POST") + "\n",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "htm         ok: POST" in result.stdout
    assert "htu         ok: https://orders.example/orders" in result.stdout


def test_wrong_url_fails_from_the_command_line_with_the_answer_and_the_fix(
    tmp_path: Path, pki: PKI, dpop_issuer: Issuer
) -> None:
    client = Client()
    token = dpop_issuer.mint(cnf={"jkt": client.jkt})
    proof = client.proof(token, htu="https://other.example/orders")
    config = write_config(tmp_path, pki, dpop_issuer)
    result = cli(config, "--token", token, "--dpop", proof, "--url", URL)
    assert result.returncode == 1, result.stdout + result.stderr
    out = result.stdout
    assert "htu         FAIL dpop_wrong_url: DPoP proof htu is not the request URL" in out
    assert "proof    https://other.example/orders" in out
    assert "request  https://orders.example/orders" in out
    assert "fix: htu must be https://orders.example/orders (https://<Host header><path>" in out
    assert 'the client used "https://other.example/orders"' in out
    assert 'WWW-Authenticate: DPoP error="invalid_dpop_proof"' in out
    assert 'algs="ES256 PS256 EdDSA RS256"' in out
    assert out.rstrip().endswith(
        'outcome: REFUSE 401 error="invalid_dpop_proof" (reason dpop_wrong_url)'
    )
    assert "iat age" not in out  # the proxy stops at the first failure, and so does the walk
    assert_no_credentials(out, token, proof)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "give --cert (the client's certificate), --dpop (its DPoP proof), or both"),
        (("--dpop", "x.y.z"), "--dpop needs --url"),
        (("--dpop", "-", "--token", "-", "--url", URL), "cannot both read stdin"),
        (("--dpop", "x.y.z", "--url", "/orders"), "--url must be absolute"),
        (("--dpop", "@/nonexistent/proof", "--url", URL), "cannot read /nonexistent/proof"),
    ],
)
def test_usage_errors_exit_2(
    tmp_path: Path, pki: PKI, dpop_issuer: Issuer, args: tuple[str, ...], message: str
) -> None:
    config = write_config(tmp_path, pki, dpop_issuer)
    result = cli(config, "--token", "abc", *args) if not args else cli(config, *args)
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_dpop_bound_token_without_a_proof_asks_for_one(
    tmp_path: Path, pki: PKI, dpop_issuer: Issuer
) -> None:
    client = Client()
    token = dpop_issuer.mint(cnf={"jkt": client.jkt})
    config = write_config(tmp_path, pki, dpop_issuer)
    result = cli(config, "--cert", pki.files("alice")[0], stdin=token)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "give that proof (--dpop PROOF --url URL)" in result.stdout
    assert "Sent as Bearer it is refused" in result.stdout
    assert 'REFUSE 401 error="invalid_token" (reason dpop_token_as_bearer)' in result.stdout


# --- each check failing, called directly -------------------------------------------------


@pytest.fixture
def settings(tmp_path: Path, pki: PKI, dpop_issuer: Issuer) -> Settings:
    return load_settings(str(write_config(tmp_path, pki, dpop_issuer)))


@pytest.mark.parametrize(
    ("make", "label", "reason"),
    [
        (lambda c, t: c.proof(t, "POST"), "htm", "dpop_wrong_method"),
        (lambda c, t: c.proof(t, htu="https://other.example/orders"), "htu", "dpop_wrong_url"),
        (lambda c, t: c.proof(t, htu=URL + "?page=2"), "htu", "dpop_wrong_url"),
        (lambda c, t: c.proof(t, htu="http://orders.example/orders"), "htu", "dpop_wrong_url"),
        (lambda c, t: c.proof(t, iat=int(time.time()) - 400), "iat age", "dpop_proof_expired"),
        (
            lambda c, t: c.proof(t, iat=int(time.time()) + 120),
            "iat age",
            "dpop_proof_not_yet_valid",
        ),
        (lambda c, t: c.proof(t, ath=ath_of("another-token")), "ath", "dpop_wrong_ath"),
        (lambda c, t: c.proof(t, header={"typ": "JWT"}), "typ", "invalid_dpop_proof"),
        (lambda c, t: c.proof(t, jti=""), "jti", "invalid_dpop_proof"),
        (
            lambda c, t: c.proof(t, signer=ec.generate_private_key(ec.SECP256R1())),
            "signature",
            "dpop_invalid_signature",
        ),
        (
            lambda c, t: c.proof(t, alg="HS256", signer=b"k" * 32),
            "alg",
            "dpop_disallowed_algorithm",
        ),
    ],
)
async def test_each_failing_check_is_named_with_the_proxys_reason(
    settings: Settings, dpop_issuer: Issuer, make: Any, label: str, reason: str
) -> None:
    client = Client()
    token = dpop_issuer.mint(cnf={"jkt": client.jkt})
    proof = make(client, token)
    code, out = await walk(settings, token, proof)
    assert code == 1, out
    assert f"   {label:<12}FAIL {reason}: " in out, out
    assert out.endswith(f'outcome: REFUSE 401 error="invalid_dpop_proof" (reason {reason})')
    with pytest.raises(Exception) as raised:  # the proxy's own function agrees
        verify_proof(
            proof,
            method="GET",
            url=URL,
            access_token=token,
            algorithms=frozenset(settings.dpop.algorithms),
            max_age=300,
            leeway=30,
        )
    assert reason in str(raised.value)
    assert "cnf.jkt     ok" not in out


async def test_alg_none_is_refused_as_not_asymmetric(
    settings: Settings, dpop_issuer: Issuer
) -> None:
    client = Client()
    token = dpop_issuer.mint(cnf={"jkt": client.jkt})
    proof = jwt.encode(
        {"jti": "j", "htm": "GET", "htu": URL, "iat": int(time.time()), "ath": ath_of(token)},
        None,
        algorithm="none",
        headers={"typ": "dpop+jwt", "jwk": client.jwk},
    )
    code, out = await walk(settings, token, proof)
    assert code == 1
    assert "alg         FAIL dpop_disallowed_algorithm: DPoP proof alg is not allowed" in out
    assert '"none" is not an asymmetric algorithm' in out


async def test_stale_proof_prints_its_age(settings: Settings, dpop_issuer: Issuer) -> None:
    client = Client()
    token = dpop_issuer.mint(cnf={"jkt": client.jkt})
    # The proxy's own clock: the age is 1000 s and the second or two this test took.
    code, out = await walk(settings, token, client.proof(token, iat=int(time.time()) - 1000))
    assert code == 1
    assert re.search(r"\b100\d s old, at most 300 s \+ 30 s leeway", out), out
    assert "(reason dpop_proof_expired)" in out


async def test_wrong_ath_prints_both_hashes(settings: Settings, dpop_issuer: Issuer) -> None:
    client = Client()
    token = dpop_issuer.mint(cnf={"jkt": client.jkt})
    other = dpop_issuer.mint(cnf={"jkt": client.jkt})
    code, out = await walk(settings, token, client.proof(other))
    assert code == 1
    assert f'proof ath     "{ath_of(other)}"' in out
    assert f"token's hash  {ath_of(token)}" in out
    assert "it was made for another token" in out


async def test_proof_by_another_key_than_cnf_jkt(settings: Settings, dpop_issuer: Issuer) -> None:
    holder, thief = Client(), Client()
    token = dpop_issuer.mint(cnf={"jkt": holder.jkt})
    code, out = await walk(settings, token, thief.proof(token))
    assert code == 1
    assert "ath         ok" in out  # a genuine proof, by the wrong key
    assert "cnf.jkt     FAIL dpop_key_mismatch: token is bound to a different DPoP key" in out
    assert f"token names {holder.jkt}" in out and f"proof key   {thief.jkt}" in out
    assert out.endswith('outcome: REFUSE 401 error="invalid_token" (reason dpop_key_mismatch)')
    assert 'WWW-Authenticate: DPoP error="invalid_token"' in out


async def test_private_key_in_the_jwk_is_refused_and_never_printed(
    settings: Settings, dpop_issuer: Issuer
) -> None:
    client = Client()
    leaked: dict[str, Any] = jwt.algorithms.ECAlgorithm.to_jwk(client.key, as_dict=True)
    token = dpop_issuer.mint(cnf={"jkt": client.jkt})
    code, out = await walk(settings, token, client.proof(token, header={"jwk": leaked}))
    assert code == 1
    assert "jwk         FAIL dpop_private_key: DPoP proof jwk holds private key material" in out
    assert "private members present: d (values not shown)" in out
    assert leaked["d"] not in out
    assert "(reason dpop_private_key)" in out


async def test_bearer_token_with_a_proof_is_refused_as_the_proxy_does(
    settings: Settings, pki: PKI, dpop_issuer: Issuer
) -> None:
    client = Client()
    token = dpop_issuer.mint(pki.alice)  # cnf.x5t#S256 only
    code, out = await walk(settings, token, client.proof(token), certificate=pki.alice.cert)
    assert code == 1
    assert "no jkt, so not DPoP-bound" in out
    assert "send it as Authorization: Bearer, without a DPoP header" in out
    assert out.endswith('outcome: REFUSE 401 error="invalid_token" (reason bearer_token_as_dpop)')


async def test_token_bound_to_both_needs_the_certificate_too(
    settings: Settings, pki: PKI, dpop_issuer: Issuer
) -> None:
    client = Client()
    token = dpop_issuer.mint(pki.alice, cnf={"jkt": client.jkt, "x5t#S256": thumbprint(pki.alice)})
    code, out = await walk(settings, token, client.proof(token))
    assert code == 1
    assert "cnf.jkt     ok" in out
    assert "give it to" in out and "explain with --cert CLIENT.pem" in out
    assert out.endswith('outcome: REFUSE 401 error="invalid_token" (reason no_client_cert)')
    with_cert = await walk(settings, token, client.proof(token), certificate=pki.alice.cert)
    assert with_cert[0] == 0, with_cert[1]
    assert "bound to this certificate" in with_cert[1]


async def test_proof_alone_is_walked_without_ath_and_jkt(
    settings: Settings, dpop_issuer: Issuer
) -> None:
    client = Client()
    code, out = await walk(settings, "", client.proof("whatever-token"))
    assert code == 0, out
    assert "ath         not checked: no token given" in out
    assert "cnf.jkt     not checked: no token given" in out
    assert "give --token to check ath" in out


async def test_external_base_url_is_what_htu_is_compared_with(
    tmp_path: Path, pki: PKI, dpop_issuer: Issuer
) -> None:
    config = write_config(
        tmp_path,
        pki,
        dpop_issuer,
        dpop={"external_base_url": "https://api.example/orders-svc", "replay_cache_size": 10},
    )
    settings = load_settings(str(config))
    client = Client()
    token = dpop_issuer.mint(cnf={"jkt": client.jkt})
    used = "https://api.example/orders-svc/orders"
    target = request_target(settings, used, None)
    assert target == "/orders"  # the ingress strips the prefix
    code, out = await walk(settings, token, client.proof(token, htu=used), url=used, target=target)
    assert code == 0, out
    assert "(dpop.external_base_url + path /orders; the Host header is not used)" in out
    # A client that names the service's own host is refused: the proxy does not use Host.
    code, out = await walk(settings, token, client.proof(token), target="/orders")
    assert code == 1
    assert "fix: htu must be https://api.example/orders-svc/orders" in out


async def test_route_binding_kind_is_checked_as_the_proxy_does(
    tmp_path: Path, pki: PKI, dpop_issuer: Issuer
) -> None:
    policy = {
        "routes": [
            {"path": "/orders/**", "scopes": ["orders:read"], "binding": "dpop"},
            {"path": "/admin/**", "scopes": ["orders:read"], "binding": "mtls"},
        ]
    }
    settings = load_settings(str(write_config(tmp_path, pki, dpop_issuer, policy=policy)))
    client = Client()
    token = dpop_issuer.mint(cnf={"jkt": client.jkt})
    url = "https://orders.example/orders/7"
    code, out = await walk(
        settings, token, client.proof(token, htu=url), url=url, target="/orders/7"
    )
    assert code == 0, out
    assert "binding=dpop" in out
    url = "https://orders.example/admin/x"
    code, out = await walk(
        settings, token, client.proof(token, htu=url), url=url, target="/admin/x"
    )
    assert code == 1
    assert "(reason wrong_binding_kind)" in out


async def test_required_client_cert_refuses_a_dpop_client_without_one(
    tmp_path: Path, pki: PKI, dpop_issuer: Issuer
) -> None:
    settings = load_settings(str(write_config(tmp_path, pki, dpop_issuer, client_cert="required")))
    client = Client()
    token = dpop_issuer.mint(cnf={"jkt": client.jkt})
    code, out = await walk(settings, token, client.proof(token))
    assert code == 1
    assert "set tls.client_cert:" in out
    assert out.endswith("outcome: REFUSE: the TLS handshake fails (reason no_certificate)")


async def test_replay_cache_in_redis_is_named_and_a_per_pod_nonce_key_not_guessed(
    tmp_path: Path, pki: PKI, dpop_issuer: Issuer
) -> None:
    dpop = {"replay_cache": "redis://:hunter2@redis.invalid:6379/0", "nonce": True}
    settings = load_settings(str(write_config(tmp_path, pki, dpop_issuer, dpop=dpop)))
    client = Client()
    token = dpop_issuer.mint(cnf={"jkt": client.jkt})
    code, out = await walk(settings, token, client.proof(token))
    assert code == 0, out
    assert "in Redis (dpop.replay_cache), shared by the replicas" in out
    assert "hunter2" not in out  # the Redis URL may hold a password
    assert "nonce       none: not checked: dpop.nonce is true with a random key per pod" in out


async def test_nonces_are_checked_with_the_shared_key(
    tmp_path: Path, pki: PKI, dpop_issuer: Issuer
) -> None:
    key = tmp_path / "nonce.key"
    key.write_text("a key shared by the replicas, from one Secret\n")
    dpop = {"nonce": True, "nonce_secret_file": str(key), "nonce_rotation_seconds": 60}
    settings = load_settings(str(write_config(tmp_path, pki, dpop_issuer, dpop=dpop)))
    nonces = Nonces(key.read_bytes().strip(), 60)
    client = Client()
    token = dpop_issuer.mint(cnf={"jkt": client.jkt})

    code, out = await walk(settings, token, client.proof(token, nonce=nonces.current()))
    assert code == 0, out
    assert "nonce       ok: the current nonce" in out

    code, out = await walk(settings, token, client.proof(token))
    assert code == 1
    assert "nonce       FAIL dpop_nonce_missing:" in out
    assert out.endswith('outcome: REFUSE 401 error="use_dpop_nonce" (reason dpop_nonce_missing)')

    stale = nonces.current(time.time() - 120)
    code, out = await walk(settings, token, client.proof(token, nonce=stale))
    assert code == 1
    assert out.endswith('outcome: REFUSE 401 error="use_dpop_nonce" (reason dpop_nonce_invalid)')


async def test_mtls_bound_token_without_a_certificate_says_to_give_it(
    settings: Settings, pki: PKI, dpop_issuer: Issuer
) -> None:
    # What the API allows and the CLI refuses as usage: no --cert, no --dpop.
    code, out = await walk(settings, dpop_issuer.mint(pki.alice), "")
    assert code == 1
    assert f"token cnf.x5t#S256    {thumbprint(pki.alice)}" in out
    assert "explain with --cert CLIENT.pem" in out
    assert out.endswith('outcome: REFUSE 401 error="invalid_token" (reason no_client_cert)')
