"""Replay correlation inside one process: has this token just come from a second foreign
certificate? Feeds certbound_foreign_certificate_switches_total, a counter with no token or
thumbprint label. Pure apart from the clock value given.

Per token (issuer name and token id) the last foreign certificate that presented it and when.
A thumbprint mismatch from a different certificate than that one, within the window, is a
switch: the token is in the hands of at least two holders that are not its owner. The map is
an LRU of at most `size` tokens, so a flood of distinct tokens costs bounded memory (and may
evict a token before its second certificate shows up: the count is a lower bound). Each
worker process and each pod keeps its own map; `certbound audit report` over the pods' audit
lines gives the whole picture.
"""

from __future__ import annotations

from collections import OrderedDict

REPLAY_WINDOW_SECONDS = 600.0
DEFAULT_SIZE = 10000


class ForeignCertificates:
    def __init__(self, size: int = DEFAULT_SIZE, window: float = REPLAY_WINDOW_SECONDS) -> None:
        self._size = size
        self._window = window
        self._last: OrderedDict[tuple[str, str], tuple[str, float]] = OrderedDict()

    def is_switch(self, token: tuple[str, str], thumbprint: str, now: float) -> bool:
        """Record a mismatch of `token` presented with `thumbprint`; True when the last
        foreign certificate seen for it within the window was another one."""
        previous = self._last.pop(token, None)
        self._last[token] = (thumbprint, now)
        while len(self._last) > self._size:
            self._last.popitem(last=False)
        return (
            previous is not None and previous[0] != thumbprint and now - previous[1] <= self._window
        )

    def __len__(self) -> int:
        return len(self._last)
