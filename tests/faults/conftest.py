"""Fixtures of the fault tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.support.workload import Workload


@pytest.fixture
async def workload() -> AsyncIterator[Workload]:
    """A workload that misbehaves on command (tests/support/workload.py), on loopback."""
    w = Workload()
    await w.start()
    yield w
    await w.stop()
