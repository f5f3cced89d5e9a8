"""The durability interface: what the monitor and the server ask of a mode, and the
record of one committed write. The modes themselves (none, binlog, checkpoint) live in
``modes/``; everything in ``dtm/`` talks to them only through ``DurabilityMode``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import attrs
import trio

if TYPE_CHECKING:
    from dtm.server import Server


@attrs.frozen
class CommitRecord:
    """What a mode makes durable for one committed write."""

    txid: int
    # (database, argv) of every command the transaction runs, in order: replaying them
    # against the state before the transaction reproduces it exactly.
    commands: tuple[tuple[int, tuple[bytes, ...]], ...]
    time_ms: int



class DurabilityMode(Protocol):
    name: str
    waits_for_commit: bool

    def recover(self, server: Server) -> None:
        """Load what the data directory holds into the (empty) keyspace."""
        ...

    def check_writable(self) -> None:
        """Raise CommandError (MISCONF) when writes are refused (a disk that fails);
        called before a write is applied."""
        ...

    async def commit(self, record: CommitRecord) -> None:
        """Return once record is durable (awaited only when waits_for_commit); raise
        CommandError if it cannot be made durable: then nothing is applied. Once the
        record is accepted the wait must not be cancellable (the caller applies the
        change right after), so that memory and the durable log never disagree."""
        ...

    async def run(self, server: Server, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The mode's background tasks (group-commit writer, checkpoint coordinator)."""
        ...

    async def save(self, server: Server, *, background: bool, schedule: bool = False) -> bool:
        """SAVE (wait for it) or BGSAVE (start it); CommandError if one is running,
        unless schedule (BGSAVE SCHEDULE): then it runs after, and False is returned."""
        ...

    async def shutdown(self, server: Server, *, save: bool | None) -> None:
        """Last steps before exit; save: True (SHUTDOWN SAVE), False (NOSAVE), None."""
        ...

    def last_save(self) -> int: ...

    def info(self) -> dict[str, Any]:
        """Fields for INFO persistence."""
        ...


class FinalSaveFailed(Exception):
    """The save a shutdown needs failed: the server must keep serving (as Redis)."""
