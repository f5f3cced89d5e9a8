"""Replaying logged writes: each record's commands run again through the command table,
at the instant they first ran (the clock is frozen at the record's time), so relative
TTLs and lazy expiry give exactly the state they gave then."""

from __future__ import annotations

from typing import Any

from dtm import clock
from dtm.commands.table import resolve
from dtm.errors import CommandError
from dtm.keyspace import DbView
from modes.record import LogRecord


class ReplaySession:
    """What a command handler needs of a session, without a connection."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.db: DbView = server.keyspace.view(0)

    def select(self, index: int) -> None:
        self.db = self.server.keyspace.view(index)


def apply_record(session: ReplaySession, record: LogRecord) -> None:
    with clock.frozen(record.time_ms):
        for db, argv in record.commands:
            session.select(db)
            try:
                spec = resolve(list(argv))
                if spec.writes and spec.handler is not None:
                    spec.handler(session, list(argv))  # type: ignore[arg-type]
            except CommandError:
                pass  # it answered an error when it ran, and changed nothing then either
