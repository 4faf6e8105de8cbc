"""The worker's total of request body bytes held before an upstream connection takes them
(buffered up to listen.request_buffer_bytes, or waiting for a connection). Counts and answers
whether there is room; the exchange decides what to do when there is none.

Each connection may buffer listen.request_buffer_bytes, so without a total a flood of admitted
uploads would hold connections x buffer bytes: the total is the share of the memory budget
proxy/capacity.py plans for bodies.
"""

from __future__ import annotations


class BodyBudget:
    __slots__ = ("held", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit  # 0: no total (no memory budget known)
        self.held = 0

    def hold(self, size: int) -> None:
        """Bytes now held (already read: they cannot be refused, only stop more coming)."""
        self.held += size

    def release(self, size: int) -> None:
        """Bytes sent upstream or dropped."""
        self.held -= size

    @property
    def is_full(self) -> bool:
        return self.limit > 0 and self.held >= self.limit
