"""``checkpoint``: every bucket snapshotted together at one cut, every interval (and on
SAVE/BGSAVE and at shutdown). A crash loses the writes since the last complete
checkpoint and never leaves a transaction half present: the cut is taken in one
synchronous step between commits (see modes/snapshots.py), and a checkpoint counts only
once its manifest is renamed into place."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import structlog
import trio

from modes.base import SnapshottingMode
from modes.datadir import DataDirError

if TYPE_CHECKING:
    from dtm.server import Server

log = structlog.get_logger("dtm.checkpoint")


class CheckpointMode(SnapshottingMode):
    name = "checkpoint"
    waits_for_commit = False

    def __init__(self, directory: str, interval: float, ops: Any = None) -> None:
        super().__init__(directory, ops)
        self.interval = interval

    def recover(self, server: Server) -> None:
        self.load_snapshot(server)  # creates the directory on first start

    async def background(self, server: Server) -> None:
        while True:
            await trio.sleep(self.interval)
            try:
                # False when a SAVE/BGSAVE is running: that is this interval's checkpoint
                await self.take_snapshot(server)
            except (OSError, DataDirError) as exc:
                log.error("checkpoint failed; the previous one stays current", error=str(exc))

    async def shutdown(self, server: Server, *, save: bool | None) -> None:
        if save is not False:
            await self._final_snapshot(server)

    def info(self) -> dict[str, Any]:
        return {**super().info(), "checkpoint_interval": self.interval}
