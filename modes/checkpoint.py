"""``checkpoint``: every bucket snapshotted together at one cut, every interval (and on
SAVE/BGSAVE and at shutdown). A crash loses the writes since the last complete
checkpoint and never leaves a transaction half present: the cut is taken in one
synchronous step between commits (see modes/snapshots.py), and a checkpoint counts only
once its manifest is renamed into place.

While checkpoints fail (disk full, EMFILE, a read-only directory) writes are refused with
``MISCONF``, as Redis does after a failed BGSAVE with stop-writes-on-bgsave-error: the
writes a crash would lose stop growing. The next checkpoint is tried every
``SAVE_RETRY`` seconds (or the interval, if shorter), and one that succeeds lets writes
in again."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import structlog
import trio

from modes.base import SnapshottingMode
from modes.datadir import DataDirError

if TYPE_CHECKING:
    from dtm.server import Server

log = structlog.get_logger("dtm.checkpoint")

SAVE_RETRY = 5.0  # Redis retries a failed BGSAVE after CONFIG_BGSAVE_RETRY_DELAY (5 s)


class CheckpointMode(SnapshottingMode):
    name = "checkpoint"
    waits_for_commit = False
    stops_writes_on_save_error = True

    def __init__(self, directory: str, interval: float, ops: Any = None) -> None:
        super().__init__(directory, ops)
        self.interval = interval

    async def background(self, server: Server) -> None:
        while True:
            failing = self.save_error is not None
            await trio.sleep(min(self.interval, SAVE_RETRY) if failing else self.interval)
            try:
                # False when a SAVE/BGSAVE is running: that is this interval's checkpoint
                await self.take_snapshot(server)
            except (OSError, DataDirError):
                pass  # logged by the save; writes are refused until one succeeds

    async def shutdown(self, server: Server, *, save: bool | None) -> None:
        if save is not False:
            await self._final_snapshot(server)

    def info(self) -> dict[str, Any]:
        return {**super().info(), "checkpoint_interval": self.interval}
