"""HTTP/1.1 framing for the data plane: the request head built from the C parser's callbacks,
the framing refusals (smuggling, oversize, upgrades), and the heads written both ways.

llhttp (through httptools) already refuses the classic smuggling shapes: Content-Length
with Transfer-Encoding, duplicate or signed Content-Length, a Transfer-Encoding that does not
end in chunked, bare CR, NUL, obs-fold. The rules below are the ones it leaves to us, each
named, so a refusal can be traced to one line. Pure: no I/O.
"""

from __future__ import annotations

from typing import NamedTuple

from proxy.checks.request import Request
from proxy.errors import AuthError, Reason, error_parts
from proxy.headers import connection_tokens

# Envoy's default (max_headers_count). Counted with the bytes against listen.max_header_bytes.
MAX_HEADER_COUNT = 100
CRLF = b"\r\n"
_FRAMING_NAMES = frozenset(
    {b"content-length", b"transfer-encoding", b"connection", b"host", b"expect", b"upgrade"}
)


class RequestHead(NamedTuple):
    """A parsed request head and the framing facts derived from it once (immutable; a
    tuple because one is built for every request)."""

    request: Request
    version: str  # "1.1" or "1.0"
    content_length: int | None
    is_chunked: bool
    keep_alive: bool
    expects_continue: bool
    upgrade: bytes | None  # the Upgrade header value of an allowed upgrade request
    host: bytes | None
    connection_named: frozenset[bytes]

    @property
    def has_body(self) -> bool:
        return self.is_chunked or bool(self.content_length)


def too_large(limit: int) -> AuthError:
    return AuthError(
        Reason.HEADERS_TOO_LARGE,
        f"the request line and headers exceed {limit} bytes or {MAX_HEADER_COUNT} fields "
        "(listen.max_header_bytes)",
    )


def read_head(
    method: bytes,
    url: bytes,
    version: str,
    headers: list[tuple[bytes, bytes]],
    remote: str,
    upgrade_protocols: frozenset[str],
) -> RequestHead:
    """Derive framing from a complete head; raises AuthError for heads we refuse to relay."""
    lower_names = tuple([name.lower() for name, _ in headers])
    content_length: bytes | None = None
    transfer_encoding: list[bytes] = []
    connection: list[bytes] = []
    hosts: list[bytes] = []
    expect: bytes | None = None
    upgrade: bytes | None = None
    for index, lower in enumerate(lower_names):
        if lower not in _FRAMING_NAMES:
            continue
        value = headers[index][1]
        if lower == b"content-length":
            content_length = value  # llhttp refused duplicates
        elif lower == b"transfer-encoding":
            transfer_encoding.append(value)
        elif lower == b"connection":
            connection.append(value)
        elif lower == b"host":
            hosts.append(value)
        elif lower == b"expect":
            expect = value
        elif lower == b"upgrade":
            upgrade = value
    named = connection_tokens(connection) if connection else frozenset()
    is_chunked = bool(transfer_encoding)
    if is_chunked:
        _refuse_codings_other_than_chunked(transfer_encoding, version)
    if len(hosts) > 1:
        # RFC 9112 §3.2: two Host values are two answers to "which site"; refuse both.
        raise AuthError.malformed("more than one Host header")
    if not hosts and version == "1.1":
        raise AuthError.malformed("an HTTP/1.1 request needs a Host header (RFC 9112 §3.2)")
    length = int(content_length) if content_length is not None else None
    if upgrade is not None and b"upgrade" in named:
        _refuse_upgrade_unless_allowed(upgrade, upgrade_protocols, is_chunked or bool(length))
    else:
        upgrade = None  # Upgrade without `Connection: upgrade` is only a hop-by-hop header
    if version == "1.1":
        keep_alive = b"close" not in named
    else:
        keep_alive = b"keep-alive" in named
    return RequestHead(
        request=Request(
            method=method.decode("ascii"),
            target=url.decode("latin-1"),
            headers=tuple(headers),
            lower_names=lower_names,
            remote=remote,
        ),
        version=version,
        content_length=length,
        is_chunked=is_chunked,
        keep_alive=keep_alive and upgrade is None,
        expects_continue=expect is not None and expect.lower() == b"100-continue",
        upgrade=upgrade,
        host=hosts[0] if hosts else None,
        connection_named=named,
    )


def _refuse_codings_other_than_chunked(values: list[bytes], version: str) -> None:
    # RFC 9112 §6.1: HTTP/1.0 has no chunked framing; such a message's framing is faulty.
    if version != "1.1":
        raise AuthError.malformed("Transfer-Encoding in an HTTP/1.0 request")
    # We re-frame bodies ourselves; a coding we would drop (gzip, chunked) must not pass as
    # if it were identity.
    if len(values) != 1 or values[0].strip().lower() != b"chunked":
        raise AuthError.malformed("only Transfer-Encoding: chunked is accepted")


def _refuse_upgrade_unless_allowed(value: bytes, allowed: frozenset[str], has_body: bool) -> None:
    protocol = value.split(b",")[0].split(b"/")[0].strip().lower().decode("latin-1")
    if protocol not in allowed:
        raise AuthError(
            Reason.UPGRADE_NOT_ALLOWED,
            f"upgrade to {protocol[:32]!r} is not allowed (forwarding.upgrade_protocols)",
        )
    if has_body:
        raise AuthError.malformed("an upgrade request must not have a body")


def upstream_head(
    head: RequestHead, target: str, kept: list[bytes], added: bytes, authority: bytes
) -> bytes:
    """The rebuilt request head for the workload: always HTTP/1.1, our own framing."""
    parts = [head.request.method.encode("ascii"), b" ", target.encode("latin-1"), b" HTTP/1.1\r\n"]
    if head.host is None:
        parts.append(b"Host: " + authority + CRLF)  # HTTP/1.0 clients may send none
    parts.extend(kept)
    if head.is_chunked:
        parts.append(b"Transfer-Encoding: chunked\r\n")
    elif head.content_length is not None:
        parts.append(b"Content-Length: %d\r\n" % head.content_length)
    if head.upgrade is not None:
        parts.append(b"Connection: upgrade\r\nUpgrade: " + head.upgrade + CRLF)
    parts.append(added)
    parts.append(CRLF)
    return b"".join(parts)


def response_head(status: int, reason: bytes, kept: list[bytes], extra: bytes) -> bytes:
    """A response head for the client: the workload's status and kept headers, our framing."""
    return b"".join((b"HTTP/1.1 %d " % status, reason, CRLF, *kept, extra, CRLF))


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def error_response(error: AuthError, *, close: bool) -> bytes:
    """The whole answer to a refusal. Carries no Server header: no version to fingerprint."""
    status, headers, body = error_parts(error)
    lines = [b"HTTP/1.1 %d %b\r\n" % (status, _REASONS.get(status, b"Error"))]
    lines.extend(f"{name}: {value}\r\n".encode("latin-1") for name, value in headers)
    lines.append(b"Content-Length: %d\r\n" % len(body))
    if close:
        lines.append(b"Connection: close\r\n")
    lines.append(CRLF)
    lines.append(body)
    return b"".join(lines)


_REASONS = {
    400: b"Bad Request",
    401: b"Unauthorized",
    403: b"Forbidden",
    408: b"Request Timeout",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
}
