"""The durability modes on the redis engine, where each bucket is a redis-server:

- ``none``: shards keep nothing on their own (``save ""``); SAVE/BGSAVE are a checkpoint.
- ``binlog``: every shard runs ``appendonly yes`` / ``appendfsync always``: each shard's
  AOF is its log, written and fsynced before any reply of its event-loop iteration
  (Redis's own group commit). A transaction's decision is a write on its primary shard,
  so it is durable before the client hears of it.
- ``checkpoint``: every interval (and at SAVE/BGSAVE and shutdown) a checkpoint of every
  shard at one cut (``dtm.buckets.checkpoint``).

The front itself writes nothing: the shards hold everything."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import structlog
import trio

from dtm.buckets.checkpoint import CheckpointBusy, CheckpointFailed, CheckpointStats, checkpoint
from dtm.durability import CommitRecord, FinalSaveFailed
from dtm.errors import CommandError, err

if TYPE_CHECKING:
    from dtm.buckets.redis import RedisEngine
    from dtm.server import Server

log = structlog.get_logger("dtm.modes")

BUSY_WAIT = 60.0  # seconds a shutdown waits for another front's checkpoint to end


class ShardMode:
    waits_for_commit = False

    def __init__(self, name: str, interval: float) -> None:
        self.name = name
        self.interval = interval
        self.stats = CheckpointStats()
        self.engine: RedisEngine | None = None
        self._nursery: trio.Nursery | None = None

    def recover(self, server: Server) -> None:
        self.engine = server.engine

    def check_writable(self) -> None:
        return None

    async def commit(self, record: CommitRecord) -> None:
        return None

    async def run(self, server: Server, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery  # where BGSAVEs finish
            task_status.started()
            if self.name != "checkpoint":
                await trio.sleep_forever()
            while True:
                await trio.sleep(self.interval)
                try:
                    await self._checkpoint()
                except CheckpointBusy:
                    pass  # another front is taking it
                except CheckpointFailed as exc:
                    log.error("checkpoint failed", error=str(exc))

    async def _checkpoint(self, on_started: Callable[[], None] | None = None) -> None:
        assert self.engine is not None
        await checkpoint(self.engine, self.stats, on_started=on_started)

    async def save(self, server: Server, *, background: bool, schedule: bool = False) -> bool:
        """SAVE: a checkpoint, waited for. BGSAVE: the same, answered once every shard
        has forked its save; it completes (and becomes the one a restart returns to)
        in the background."""
        try:
            if not background:
                await self._checkpoint()
                return True
            forked = trio.Event()
            refused: list[Exception] = []

            async def in_background() -> None:
                try:
                    await self._checkpoint(on_started=forked.set)
                except (CheckpointBusy, CheckpointFailed) as exc:
                    if forked.is_set():
                        log.error("background checkpoint failed", error=str(exc))
                    refused.append(exc)
                    forked.set()

            assert self._nursery is not None
            self._nursery.start_soon(in_background)
            await forked.wait()
            if refused:
                raise refused[0]
            return True
        except CheckpointBusy as exc:
            raise err(str(exc)) from None
        except CheckpointFailed as exc:
            raise CommandError(f"ERR {exc}") from None

    async def shutdown(self, server: Server, *, save: bool | None) -> None:
        if save or (save is None and self.name == "checkpoint"):
            # Another front's checkpoint may be running: wait for it, then take ours.
            with trio.move_on_after(BUSY_WAIT):
                while True:
                    try:
                        await self._checkpoint()
                        return
                    except CheckpointBusy:
                        await trio.sleep(0.05)
                    except CheckpointFailed as exc:
                        raise FinalSaveFailed(str(exc)) from None
            raise FinalSaveFailed("another checkpoint kept running")

    def last_save(self) -> int:
        return self.stats.last_ok_time

    def info(self) -> dict[str, Any]:
        stats = self.stats
        return {
            "dtm_mode": self.name, "dtm_engine": "redis",
            "aof_enabled": int(self.name == "binlog"),
            "rdb_bgsave_in_progress": int(stats.in_progress),
            "rdb_last_save_time": stats.last_ok_time,
            "rdb_last_bgsave_status": "ok" if stats.last_status_ok else "err",
            "rdb_saves": stats.count,
            "checkpoint_last_cut": stats.last_cut,
            "checkpoint_last_pause_ms": f"{stats.last_pause_ms:.2f}",
        }
