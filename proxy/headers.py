"""Header hygiene: what the workload is told about the caller, and what it is never told by
the client. Pure; works on the raw (name, value) byte pairs the framing step collected."""

from __future__ import annotations

import base64
from urllib.parse import quote

from proxy.tokens.claims import TokenClaims
from proxy.trust.identity import ClientIdentity

# RFC 9110 §7.6.1 plus the old Keep-Alive/Proxy-Connection ones.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
# Whatever the client sends under these names is a forgery: only the proxy may set them.
SPOOFABLE = frozenset(
    {
        b"client-cert",
        b"client-cert-chain",
        b"forwarded",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"x-forwarded-client-cert",
        b"x-real-ip",
    }
)
IDENTITY_PREFIX = b"x-certbound-"
# Never copied from the client's head to the upstream's: the proxy writes its own framing
# (one Content-Length or chunked) and answers Expect: 100-continue itself.
REFRAMED = frozenset({b"content-length", b"expect"})
DROPPED_FROM_REQUEST = HOP_BY_HOP | SPOOFABLE | REFRAMED
DROPPED_FROM_RESPONSE = HOP_BY_HOP | {b"content-length"}


def connection_tokens(values: list[bytes]) -> frozenset[bytes]:
    """The header names a Connection header lists (RFC 9110 §7.6.1), in lower case."""
    named = {t.strip().lower() for value in values for t in value.split(b",")}
    named.discard(b"")
    return frozenset(named)


def dropped_request_headers(
    claim_header_names: frozenset[bytes], *, strip_authorization: bool
) -> frozenset[bytes]:
    """Every lower-case name never copied from the client to the workload: the fixed ones,
    the configured claim headers (only the proxy may set them, like X-Certbound-*), and
    Authorization (and its DPoP proof) with forwarding.authorization: strip."""
    extra = claim_header_names | ({b"authorization", b"dpop"} if strip_authorization else set())
    return DROPPED_FROM_REQUEST | extra


def kept_request_headers(
    headers: tuple[tuple[bytes, bytes], ...],
    lower_names: tuple[bytes, ...],
    named: frozenset[bytes],
    dropped: frozenset[bytes] = DROPPED_FROM_REQUEST,
) -> list[bytes]:
    """The client's header lines that go on to the workload, already rendered. `dropped`:
    dropped_request_headers() of the configuration, computed once."""
    out: list[bytes] = []
    for (name, value), lower in zip(headers, lower_names, strict=True):
        if lower in dropped or lower.startswith(IDENTITY_PREFIX) or (named and lower in named):
            continue
        out.append(name + b": " + value + b"\r\n")
    return out


def kept_response_headers(
    headers: list[tuple[bytes, bytes]],
) -> tuple[list[bytes], bytes | None, bool]:
    """The workload's header lines that go on to the client (all but hop-by-hop ones), its
    Content-Length (framing re-adds it), and whether it framed the body at all (a length or
    a transfer coding); without either, the body ends when the workload closes."""
    out: list[bytes] = []
    length = None
    is_framed = False
    named: frozenset[bytes] = frozenset()
    for name, value in headers:
        lower = name.lower()
        if lower in DROPPED_FROM_RESPONSE:
            if lower == b"content-length":
                length, is_framed = value, True
            elif lower == b"transfer-encoding":
                is_framed = True
            elif lower == b"connection":
                named = named | connection_tokens([value])
            continue
        out.append(name + b": " + value + b"\r\n")
    if named:
        out = [line for line in out if line.split(b":", 1)[0].lower() not in named]
    return out, length, is_framed


def header_value(value: str) -> str:
    # Claims are attacker-influenced text; never let CR/LF or non-ASCII reach a header line.
    if value.isascii() and value.isprintable() and "%" not in value:
        return value  # the common case, and what quote() would return anyway
    return quote(value, safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~")


def identity_headers(
    identity: ClientIdentity | None,
    claims: TokenClaims | None,
    *,
    binding: str,
    remote: str,
    host: bytes | None,
    client_cert_header: bool,
) -> bytes:
    """Header lines the proxy adds. Any client copy was dropped by kept_request_headers, and
    these are added after the Connection-named headers were removed, so
    `Connection: X-Certbound-Subject` cannot remove them."""
    lines = [f"X-Forwarded-For: {remote}\r\nX-Forwarded-Proto: https\r\n".encode("latin-1")]
    if host is not None:
        lines.append(b"X-Forwarded-Host: " + host + b"\r\n")
    if claims is not None:
        lines.append(
            (
                f"X-Certbound-Subject: {header_value(claims.subject)}\r\n"
                f"X-Certbound-Client-Id: {header_value(claims.client_id)}\r\n"
                f"X-Certbound-Scope: {header_value(claims.scope)}\r\n"
            ).encode("ascii")
            + claims.claim_headers  # forwarding.claim_headers, rendered when it was verified
        )
    # bound | unbound (allowed by the route) | report_only_failed | none (public route)
    if identity is not None:  # None: tls.client_cert optional and no certificate presented
        lines.append(f"X-Certbound-Thumbprint: {identity.thumbprint}\r\n".encode("ascii"))
    lines.append(f"X-Certbound-Binding: {binding}\r\n".encode("ascii"))
    if client_cert_header and identity is not None:
        # RFC 9440 §2.2: a structured-field byte sequence of the DER certificate.
        lines.append(b"Client-Cert: :" + base64.b64encode(identity.der) + b":\r\n")
    return b"".join(lines)
