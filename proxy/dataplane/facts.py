"""What the checks know of the client on one connection, shared by its exchanges."""

from __future__ import annotations

import asyncio

from proxy.checks.pipeline import TokenMemo
from proxy.errors import AuthError
from proxy.tokens.jwt import TokenClaims
from proxy.trust.identity import ClientIdentity

# The last identity header lines rendered on a connection, and what they depend on.
AddedHeaders = tuple[TokenClaims | None, ClientIdentity | None, str, bytes | None, bytes]


class ConnectionFacts:
    __slots__ = ("added_headers", "identity", "memo", "ocsp")

    def __init__(self) -> None:
        self.identity: ClientIdentity | None = None  # read once, when the handshake completes
        self.memo = TokenMemo()  # the checks' own memory of this connection's token
        # tls.ocsp: None (nothing to wait for), a refusal, or the question still out.
        self.ocsp: AuthError | asyncio.Task[AuthError | None] | None = None
        self.added_headers: AddedHeaders | None = None
