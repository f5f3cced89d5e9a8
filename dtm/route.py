"""The one place that decides a command's path.

A command takes one of four paths:

- **fast**: a plain call inside the session's read loop, no await, no task switch. The
  loop takes it when the command's ``Spec.fast_arity`` is set (decided once at
  registration: a command that awaits, spans buckets or changes session state never
  has one), the arity matches, the session is plain (authenticated, not in MULTI, not
  muted, nobody MONITORs, no CLIENT PAUSE) and no key lock is held anywhere, and the
  command is not a write that the mode must record first (``durable``). The check is
  inlined in ``Session._run_batch`` for speed; its rule is the one written here.
- **direct**: a plain call off the fast loop (a command the loop could not take, with
  nothing to wait for).
- **monitor**: through the transaction monitor's key locks: the keys span buckets, a
  lock is held somewhere (so this command might meet a half-done transaction), or the
  mode records writes before they are acknowledged.
- **keyspace**: the whole keyspace exclusively (FLUSHALL, KEYS, SCAN, … while a lock is
  held, or a whole-keyspace write the mode must record).

EXEC always goes through the monitor with every key its queued commands touch (every
database a SELECT inside it reaches), and the keyspace exclusively if one of them is a
whole-keyspace command.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any

from dtm import clock
from dtm.commands.table import Scope, Shard_Key, Spec
from dtm.durability import CommitRecord
from dtm.resp import parse_int

if TYPE_CHECKING:
    from collections.abc import Callable

    from dtm.bucket import WatchState
    from dtm.session import Session

Queued = list[tuple[Spec, list[bytes]]]


class Path(enum.Enum):
    DIRECT = "direct"
    MONITOR = "monitor"
    KEYSPACE = "keyspace"


def choose(spec: Spec, *, busy: bool, durable: bool) -> Path:
    """The path of a resolved, synchronous command off the fast loop: busy means some
    key lock is held; durable means the mode records writes before replying."""
    recorded = spec.writes and durable
    if spec.scope is Scope.ALL:
        return Path.KEYSPACE if busy or recorded else Path.DIRECT
    if spec.scope is Scope.KEYS and (spec.multi_key or busy or recorded):
        return Path.MONITOR
    return Path.DIRECT


async def run(session: Session, spec: Spec, argv: list[bytes]) -> Any:
    """Run one command on its path."""
    server = session.server
    path = choose(spec, busy=server.monitor.busy, durable=server.durable)
    if path is Path.DIRECT:
        return session.call(spec, argv)
    return await server.monitor.transact(
        spec.targets(session, argv) if path is Path.MONITOR else [],
        lambda: session.call(spec, argv),
        record=commit_record(session, [(spec, argv)]) if spec.writes else None,
        whole_keyspace=path is Path.KEYSPACE,
    )


async def run_transaction(session: Session, queued: Queued, apply: Callable[[], Any],
                          watch: WatchState | None) -> Any:
    """EXEC: apply() runs the queued commands under the locks of every key they touch."""
    targets, whole_keyspace = transaction_targets(session, queued)
    writes = any(spec.writes for spec, _ in queued)
    return await session.server.monitor.transact(
        targets, apply,
        record=commit_record(session, queued) if writes else None,
        watch=watch,
        whole_keyspace=whole_keyspace,
    )


def transaction_targets(session: Session, queued: Queued) -> tuple[list[Shard_Key], bool]:
    """Every (slot, key) the queued commands touch, following SELECTs among them, and
    whether one of them needs the whole keyspace."""
    targets: list[Shard_Key] = []
    whole_keyspace = False
    original = session.db
    try:
        for spec, argv in queued:
            if spec.scope is Scope.ALL:
                whole_keyspace = True
            elif spec.scope is Scope.KEYS:
                targets.extend(spec.targets(session, argv))
            elif spec.name == "select":
                index = _selected(session, argv)
                if index is not None:
                    session.select(index)
    finally:
        session.db = original
    return targets, whole_keyspace


def commit_record(session: Session, queued: Queued) -> Callable[[int], CommitRecord]:
    """A builder of the mode's CommitRecord (called with the txid once it is known):
    the commands with the database each runs in, following SELECTs among them."""
    entries = []
    db = session.db.index
    for spec, argv in queued:
        entries.append((db, tuple(argv)))
        if spec.name == "select":
            index = _selected(session, argv)
            if index is not None:
                db = index
    frozen = tuple(entries)
    return lambda txid: CommitRecord(txid, frozen, clock.now_ms())


def _selected(session: Session, argv: list[bytes]) -> int | None:
    index = parse_int(argv[1])
    if index is not None and 0 <= index < session.server.keyspace.databases:
        return index
    return None
