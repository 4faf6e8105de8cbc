"""Back-pressure between a client connection and the upstream connection paired with it, in
one place: uvicorn's FlowControl, for two sides instead of one.

The client's reading pauses for named reasons (a body held while the checks run, pipelined
requests waiting, the upstream's send buffer full, an upgrade in progress, a broken request)
and resumes when the last reason is gone. The upstream's reading pauses while the client
cannot take more writes, so a slow reader holds the workload back instead of our memory.
"""

from __future__ import annotations

import asyncio
from typing import Protocol


class Readable(Protocol):
    """A side whose reading can be held back while the other side cannot take more."""

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


class Flow:
    __slots__ = ("_paused_by", "_transport", "is_write_paused", "upstream")

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._paused_by: set[str] = set()
        self.is_write_paused = False  # the client's send buffer is full
        self.upstream: Readable | None = None  # the upstream connection paired now

    def attach(self, transport: asyncio.Transport) -> None:
        self._transport = transport

    def detach(self) -> None:
        """The client connection is closing: its transport is no longer paused or resumed."""
        self._transport = None

    @property
    def is_reading_paused(self) -> bool:
        return bool(self._paused_by)

    # -- the client's reading ------------------------------------------------------------

    def pause_reading(self, why: str) -> None:
        if not self._paused_by and self._transport is not None:
            self._transport.pause_reading()
        self._paused_by.add(why)

    def resume_reading(self, why: str) -> None:
        if why in self._paused_by:
            self._paused_by.discard(why)
            if not self._paused_by and self._transport is not None:
                self._transport.resume_reading()

    # -- the two send buffers ------------------------------------------------------------

    def pair(self, upstream: Readable | None) -> None:
        """The upstream connection now serving this client (None: none)."""
        self.upstream = upstream
        if upstream is not None and self.is_write_paused:
            upstream.pause_reading()

    def client_write_paused(self) -> None:
        self.is_write_paused = True
        if self.upstream is not None:
            self.upstream.pause_reading()

    def client_write_resumed(self) -> None:
        self.is_write_paused = False
        if self.upstream is not None:
            self.upstream.resume_reading()

    def upstream_write_paused(self) -> None:
        self.pause_reading("upstream")

    def upstream_write_resumed(self) -> None:
        self.resume_reading("upstream")
