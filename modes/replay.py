"""Replaying logged writes: each record's commands run again through the command table,
at the instant they first ran (the clock is frozen at the record's time), so relative
TTLs and lazy expiry give exactly the state they gave then.

Replay never consults today's run-time limits (proto-max-bulk-len): a command is
logged only once it was accepted under the limits of its day, so it must apply again
whatever the configuration is now (a lower limit must not drop it, and a command the
old limit refused was never logged to reappear under a higher one).
"""

from __future__ import annotations

import sys

import attrs

from dtm import clock
from dtm.commands.table import resolve
from dtm.config import Config
from dtm.errors import CommandError
from dtm.keyspace import DbView, Keyspace
from modes.record import LogRecord


class ReplaySession:
    """The context data command handlers see (dtm.commands.context.DataContext), without
    a connection: the server's keyspace, and its configuration with no size limit."""

    def __init__(self, keyspace: Keyspace, config: Config) -> None:
        self.keyspace = keyspace
        self.config = attrs.evolve(config, proto_max_bulk_len=sys.maxsize)
        self.db: DbView = keyspace.view(0)

    def select(self, index: int) -> None:
        self.db = self.keyspace.view(index)


class ReplayError(Exception):
    """A logged command raised something other than a command error when replayed."""


def apply_record(session: ReplaySession, record: LogRecord) -> list[tuple[tuple[bytes, ...], str]]:
    """Apply one record; returns the commands that answered an error (a log written by
    this dtm holds none: only what was applied is logged; an older one may)."""
    failed: list[tuple[tuple[bytes, ...], str]] = []
    with clock.frozen(record.time_ms):
        for db, argv in record.commands:
            session.select(db)
            try:
                spec = resolve(list(argv))
                if spec.writes and spec.handler is not None:
                    spec.handler(session, list(argv))  # type: ignore[arg-type]
            except CommandError as exc:
                failed.append((argv, str(exc)))  # it changed nothing when it ran either
            except Exception as exc:  # noqa: BLE001  (a damaged argument must not crash the start-up)
                name = argv[0][:64].decode("utf-8", "replace") if argv else "?"
                raise ReplayError(f"record txid {record.txid}: {name} raised {type(exc).__name__}: {exc}") from None
    return failed
