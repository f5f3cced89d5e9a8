"""The server's notion of "now" in Unix milliseconds.

Redis evaluates expiry against one time snapshot for a whole command or transaction;
``frozen()`` gives the same: inside it, every lookup sees one instant. The freeze spans
synchronous code only (no await inside), so concurrent servers in one process never
observe each other's snapshot.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

_frozen: int | None = None


def now_ms() -> int:
    return _frozen if _frozen is not None else int(time.time() * 1000)


@contextmanager
def frozen(at: int | None = None) -> Iterator[int]:
    """Freeze now (at the current time, or at ``at`` when replaying a logged write)."""
    global _frozen
    outer = _frozen
    if at is not None:
        _frozen = at
    elif outer is None:
        _frozen = int(time.time() * 1000)
    try:
        yield _frozen  # type: ignore[misc]
    finally:
        _frozen = outer
