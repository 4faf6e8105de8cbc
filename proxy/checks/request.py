"""What the checks see of one request: method, target, headers as received, the peer.

A plain value built by the data plane's framing step; the checks never learn which server
parsed it, and tests can build one by hand.
"""

from __future__ import annotations

from typing import NamedTuple


class Request(NamedTuple):  # immutable; a tuple because one is built for every request
    method: str
    target: str  # the request-target exactly as sent (origin-form for anything we forward)
    headers: tuple[tuple[bytes, bytes], ...]  # (name as sent, value), in order
    lower_names: tuple[bytes, ...]  # headers' names in lower case, same order
    remote: str  # the peer's IP address

    def values(self, name: bytes) -> list[str]:
        """Every value of the header `name` (given in lower case), decoded as Latin-1."""
        return [
            self.headers[i][1].decode("latin-1")
            for i, lower in enumerate(self.lower_names)
            if lower == name
        ]

    def values_of_both(self, first: bytes, second: bytes) -> tuple[list[str], list[str]]:
        """values(first) and values(second) in one pass over the headers."""
        firsts: list[str] = []
        seconds: list[str] = []
        for lower, (_, value) in zip(self.lower_names, self.headers, strict=False):
            if lower == first:
                firsts.append(value.decode("latin-1"))
            elif lower == second:
                seconds.append(value.decode("latin-1"))
        return firsts, seconds

    @property
    def query(self) -> str:
        return self.target.partition("?")[2]

    @property
    def path(self) -> str:
        return self.target.partition("?")[0]
