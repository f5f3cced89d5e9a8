"""MULTI, EXEC, DISCARD, WATCH, UNWATCH, with Redis's rules and error texts; EXEC runs
through the transaction monitor, so a transaction may span any buckets."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dtm import clock
from dtm.commands.table import Scope, Shard_Key, Spec, command
from dtm.errors import CommandError, err
from dtm.durability import CommitRecord
from dtm.resp import parse_int
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
        targets, whole_keyspace = _transaction_targets(s, queued)
        writes = any(spec.writes for spec, _ in queued)
        watch = s.watch if (s.watch.entries or s.watch.dirty) else None
        return await s.server.monitor.transact(
            targets,
            lambda: _apply(s, queued),
            record=commit_record(s, queued) if writes else None,
            watch=watch,
            whole_keyspace=whole_keyspace,
        )
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


def _transaction_targets(
    s: Session, queued: list[tuple[Spec, list[bytes]]]
) -> tuple[list[Shard_Key], bool]:
    """Every (slot, key) the transaction touches, following SELECTs inside it."""
    targets: list[Shard_Key] = []
    whole_keyspace = False
    original = s.db
    try:
        for spec, argv in queued:
            if spec.scope is Scope.ALL:
                whole_keyspace = True
            elif spec.scope is Scope.KEYS:
                targets.extend(spec.targets(s, argv))
            elif spec.name == "select":
                index = parse_int(argv[1])
                if index is not None and 0 <= index < s.server.keyspace.databases:
                    s.select(index)
    finally:
        s.db = original
    return targets, whole_keyspace


def commit_record(s: Session, queued: list[tuple[Spec, list[bytes]]]) -> Any:
    """A builder of the mode's CommitRecord (called with the txid once it is known):
    the commands with the database each runs in, following SELECTs inside."""

    entries = []
    db = s.db.index
    for spec, argv in queued:
        entries.append((db, tuple(argv)))
        if spec.name == "select":
            index = parse_int(argv[1])
            if index is not None and 0 <= index < s.server.keyspace.databases:
                db = index
    frozen = tuple(entries)
    return lambda txid: CommitRecord(txid, frozen, clock.now_ms())
