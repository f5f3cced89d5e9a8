"""The interface every durability mode implements.

The monitor hands a mode each committed write as a ``CommitRecord`` (a single command or
a whole transaction, whatever buckets it spans) *after* it has prepared (locked) the keys
and *before* it applies the change. A mode whose ``waits_for_commit`` is true is awaited
there: the transaction's locks stay held and no reply leaves until the mode says the
decision is durable (binlog's group commit). A mode that makes nothing durable per
commit (``none``, ``checkpoint``) is not awaited at all, so it costs the fast path
nothing.
"""

from __future__ import annotations

from typing import Protocol

import attrs
import trio


@attrs.frozen
class CommitRecord:
    txid: int
    # (database, argv) of every command the transaction runs, in order: replaying them
    # against the state before the transaction reproduces it exactly.
    commands: tuple[tuple[int, tuple[bytes, ...]], ...]
    time_ms: int


class DurabilityMode(Protocol):
    name: str
    waits_for_commit: bool

    async def commit(self, record: CommitRecord) -> None:
        """Return once record is durable (only called when waits_for_commit)."""
        ...

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The mode's background tasks (group-commit writer, checkpoint coordinator)."""
        ...

    def info(self) -> dict[str, str | int]:
        """Fields for INFO persistence."""
        ...
