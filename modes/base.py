"""The interface every durability mode implements, and what the modes share.

The monitor hands a mode each committed write as a ``CommitRecord`` (a single command or
a whole transaction, whatever buckets it spans) *after* it has prepared (locked) the keys
and *before* it applies the change. A mode whose ``waits_for_commit`` is true is awaited
there: the transaction's locks stay held and no reply leaves until the mode says the
decision is durable (binlog's group commit). A mode that makes nothing durable per commit
(``none``, ``checkpoint``) is never awaited, so it costs the fast path nothing.

Every mode can take snapshots (SAVE, BGSAVE) and loads the current one at start-up.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Protocol

import structlog
import trio

from dtm.errors import CommandError, err
from dtm.monitor import CommitRecord
from modes.datadir import DataDir, DataDirError
from modes.snapshots import Snapshotter, restore

if TYPE_CHECKING:
    from dtm.server import Server

log = structlog.get_logger("dtm.mode")

SAVE_IN_PROGRESS = err("Background save already in progress")


class DurabilityMode(Protocol):
    name: str
    waits_for_commit: bool

    def recover(self, server: Server) -> None:
        """Load what the data directory holds into the (empty) keyspace."""
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


class SnapshottingMode:
    """What all modes share: the data directory, start-up loading, SAVE and BGSAVE."""

    name = "base"
    waits_for_commit = False

    def __init__(self, directory: str, ops: Any = None) -> None:
        self.datadir = DataDir(directory, ops)
        self.snapshotter = Snapshotter(self.datadir)
        self.recovered_keys = 0
        self.saving = False  # one snapshot at a time, whoever asks (SAVE, timer, log size)
        self._background: trio.Nursery | None = None

    def recover(self, server: Server) -> None:
        if not self.datadir.has_format():
            return  # never written by dtm: nothing to load (SAVE creates it)
        self.load_snapshot(server)

    def load_snapshot(self, server: Server) -> dict[str, Any] | None:
        """Prepare the directory and load its current snapshot (if any) into the
        keyspace; returns the manifest, which says which log follows it."""
        started = time.perf_counter()
        self.datadir.prepare()
        manifest = self.datadir.load_manifest()
        seqs = self.datadir.snapshot_seqs() + self.datadir.log_seqs()
        self.snapshotter.next_seq = max(seqs, default=0) + 1
        if manifest is not None:
            self.recovered_keys = restore(self.datadir, server.keyspace, manifest)
            log.info("snapshot loaded", seq=manifest["seq"], keys=self.recovered_keys,
                     seconds=round(time.perf_counter() - started, 3))
        return manifest

    async def commit(self, record: CommitRecord) -> None:
        return None

    async def run(self, server: Server, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._background = nursery
            task_status.started()
            await self.background(server)

    async def background(self, server: Server) -> None:
        await trio.sleep_forever()

    async def snapshot(self, server: Server) -> None:
        """Take a snapshot now (the mode decides how writes are held meanwhile)."""
        self.datadir.prepare()
        await self.snapshotter.take(server.keyspace)

    async def take_snapshot(self, server: Server) -> bool:
        """Take a snapshot unless one is being taken; False if one was. Raises OSError
        (or DataDirError) if it could not be written: the previous one stays current."""
        if self.saving:
            return False
        self.saving = True
        try:
            await self.snapshot(server)
        finally:
            self.saving = False
        return True

    async def save(self, server: Server, *, background: bool, schedule: bool = False) -> bool:
        """SAVE, or BGSAVE [SCHEDULE]; False when a BGSAVE SCHEDULE was deferred until
        the running save ends."""
        if self.saving:
            if background and schedule:
                assert self._background is not None
                self._background.start_soon(self._save_when_free, server)
                return False
            raise SAVE_IN_PROGRESS
        if background:
            assert self._background is not None
            self.saving = True  # claimed now, so a second BGSAVE is refused at once
            self._background.start_soon(self._background_save, server)
            return True
        try:
            await self.take_snapshot(server)
        except (OSError, DataDirError) as exc:
            raise err(f"snapshot failed: {exc}") from None
        return True

    async def _save_when_free(self, server: Server) -> None:
        while self.saving:
            await trio.sleep(0.05)
        self.saving = True
        await self._background_save(server)

    async def _background_save(self, server: Server) -> None:
        try:
            await self.snapshot(server)
        except (OSError, DataDirError):
            pass  # logged, and shown in INFO persistence (rdb_last_bgsave_status:err)
        finally:
            self.saving = False

    async def shutdown(self, server: Server, *, save: bool | None) -> None:
        if save:
            await self._final_snapshot(server)

    async def _final_snapshot(self, server: Server) -> None:
        while self.saving:  # let a running save finish, then take the final one
            await trio.sleep(0.01)
        try:
            await self.take_snapshot(server)
        except (OSError, DataDirError) as exc:
            log.error("final snapshot failed", error=str(exc))

    def last_save(self) -> int:
        return self.snapshotter.stats.last_save_time

    def info(self) -> dict[str, Any]:
        return {"dtm_mode": self.name, "aof_enabled": 0, **self.snapshotter.info(),
                "recovered_keys": self.recovered_keys}


def misconf(reason: str) -> CommandError:
    return CommandError(f"MISCONF Errors writing to the binlog: {reason}. Writes are refused "
                        "until the disk works again; reads are served.")
