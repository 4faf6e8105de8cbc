"""Which configured issuer a token names: its unverified `iss` picks one entry before any key
is fetched, and only that entry's keys and rules ever judge it. An `iss` nobody configured is
refused without network traffic. Also the key sets of all issuers, loaded and kept fresh
together (readiness waits for every one)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aiohttp

from proxy.errors import AuthError, Reason
from proxy.settings import IssuerSettings, TokenSettings
from proxy.tokens import unverified
from proxy.tokens.jwks import KeySet


def read_issuer(token: str) -> str:
    """The `iss` of a token whose signature is not checked yet. Only a dictionary key: nothing
    the token says is trusted until its issuer's key agrees."""
    try:
        payload = unverified.read(token)[1]
    except unverified.Unreadable:
        raise AuthError(Reason.INVALID_TOKEN, "token is not a well-formed JWT") from None
    return issuer_in(payload)


def issuer_in(payload: dict[str, Any]) -> str:
    iss = payload.get("iss")
    if iss is None:
        raise AuthError(Reason.MISSING_CLAIM, "token has no iss claim")
    if not isinstance(iss, str):
        raise AuthError(Reason.INVALID_TOKEN, "token iss is not a string")
    return iss


class Issuers:
    """Every trusted issuer with its key set, found by `iss`."""

    def __init__(
        self,
        entries: tuple[IssuerSettings, ...],
        settings: TokenSettings,
        session: aiohttp.ClientSession,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.key_sets = tuple(KeySet(e, settings, session, on_change) for e in entries)
        self._by_iss = {ks.issuer.issuer: ks for ks in self.key_sets}

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(ks.issuer.name for ks in self.key_sets)

    def select(self, iss: str) -> KeySet:
        key_set = self._by_iss.get(iss)
        if key_set is None:
            raise AuthError(Reason.UNKNOWN_ISSUER, "token issuer is not trusted")
        return key_set

    @property
    def is_loaded(self) -> bool:
        return all(ks.is_loaded for ks in self.key_sets)

    @property
    def not_loaded(self) -> list[str]:
        return [ks.issuer.name for ks in self.key_sets if not ks.is_loaded]

    async def wait_loaded(self) -> None:
        await asyncio.gather(*(ks.wait_loaded() for ks in self.key_sets))

    async def refresh(self) -> None:
        """Refresh every key set now; raises the first KeySetError after trying them all."""
        results = await asyncio.gather(
            *(ks.refresh() for ks in self.key_sets), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def run(self, stop: asyncio.Event) -> None:
        await asyncio.gather(*(ks.run(stop) for ks in self.key_sets))
