"""MULTI, EXEC, DISCARD, WATCH, UNWATCH, with Redis's rules and error texts; EXEC runs
through the transaction monitor, so a transaction may span any buckets."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dtm import clock, route
from dtm.commands.table import Shard_Key, Spec, command
from dtm.errors import CommandError, err
from dtm.store import settled

if TYPE_CHECKING:
    from dtm.session import Session

GROUP = "transactions"
EXECABORT = CommandError("EXECABORT Transaction discarded because of previous errors.")


@command("multi", 1, "noscript loading stale fast allow_busy", group=GROUP, summary="Start a transaction", since="1.2.0")
def multi(s: Session, argv: list[bytes]) -> Any:
    if s.in_multi:
        raise err("MULTI calls can not be nested")
    s.in_multi = True
    return "OK"


@command("discard", 1, "noscript loading stale fast allow_busy", group=GROUP, summary="Discard a transaction", since="2.0.0")
def discard(s: Session, argv: list[bytes]) -> Any:
    if not s.in_multi:
        raise err("DISCARD without MULTI")
    s.discard_multi()
    s.unwatch()
    return "OK"


def _no_locks(s: Session, argv: list[bytes]) -> list[Shard_Key]:
    # WATCH only notes the keys: taking (and sorting) a lock per key made WATCH of N keys
    # cost N log N through the monitor. A transaction committing meanwhile is noticed
    # all the same: its apply, or its undo, touches the watchers.
    return []


@command("watch", -2, "noscript loading stale fast allow_busy", keys=(1, -1, 1), group=GROUP, summary="Watch keys for EXEC", since="2.2.0", targets=_no_locks)
def watch(s: Session, argv: list[bytes]) -> Any:
    if s.in_multi:
        raise err("WATCH inside MULTI is not allowed")
    for key in argv[1:]:
        s.watch.watch(s.db.slot(key), key)
    return "OK"


@command("unwatch", 1, "noscript loading stale fast allow_busy", group=GROUP, summary="Forget all watched keys", since="2.2.0")
def unwatch(s: Session, argv: list[bytes]) -> Any:
    s.unwatch()
    return "OK"


@command("exec", 1, "noscript loading stale skip_slowlog", group=GROUP, summary="Run a transaction", since="1.2.0")
async def exec_(s: Session, argv: list[bytes]) -> Any:
    if not s.in_multi:
        raise err("EXEC without MULTI")
    queued, failed = s.queued, s.multi_error
    s.discard_multi()
    try:
        if failed:
            return EXECABORT
        watch = s.watch if (s.watch.entries or s.watch.dirty) else None
        return await route.run_transaction(s, queued, lambda: _apply(s, queued), watch)
    finally:
        s.unwatch()


def _apply(s: Session, queued: list[tuple[Spec, list[bytes]]]) -> list[Any]:
    """Run the queued commands back to back at one frozen instant (as Redis does)."""
    results: list[Any] = []
    with clock.frozen():
        for spec, argv in queued:
            # settled: a later command of the same EXEC may edit a value in place
            results.append(settled(s.call_queued(spec, argv)))  # counted, timed, MONITORed
    return results
