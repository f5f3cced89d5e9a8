"""``none``: nothing is written per commit; a restart starts empty."""

from __future__ import annotations

import trio

from modes.base import CommitRecord


class NoneMode:
    name = "none"
    waits_for_commit = False

    async def commit(self, record: CommitRecord) -> None:  # never awaited: nothing to wait for
        return None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()

    def info(self) -> dict[str, str | int]:
        return {"dtm_mode": self.name, "aof_enabled": 0, "rdb_changes_since_last_save": 0}
