"""The transaction monitor: two-phase commit across buckets.

A transaction (EXEC, or one multi-key command whose keys span buckets) goes through:

1. **prepare** — take the key locks of every key it reads or writes, in one global order
   (slot, database, key), waiting where another transaction holds one; then validate
   the WATCHes. Ordered acquisition means two transactions never deadlock.
2. **commit** — apply every command on its bucket in one synchronous step (no await, so
   nobody can observe half of it).
3. **decide** — a mode that promises durability records what was applied (awaited)
   while the locks are still held, so nobody sees it before it is durable; if the mode
   refuses it, the keys are put back. Then the locks are released and waiters woken.

Any failure before the apply (a broken WATCH, a client gone while waiting for a lock)
releases everything and applies nothing anywhere. Commands that only need one bucket
skip the locks when nothing has to be awaited: between their check and their apply no
other task can run.

Commands outside transactions that meet a locked key wait for it (``wait_unlocked``), so
no reader or writer ever sees a transaction half done. Whole-keyspace commands (FLUSHALL,
KEYS, …) inside a transaction take the keyspace exclusively.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import attrs
import structlog
import trio

from dtm.bucket import WatchState
from dtm.errors import CommandError
from dtm.resp import NULL_ARRAY
from dtm.store import Undo

if TYPE_CHECKING:
    from dtm.buckets.protocol import LocalKeys
    from dtm.durability import CommitRecord, DurabilityMode

log = structlog.get_logger("dtm.monitor")

# A key and the slot of the memory bucket that holds it: the monitor sees buckets only
# through the bucket protocol's LocalKeys (dtm/buckets/protocol.py).
Target = tuple["LocalKeys", bytes]


@attrs.define
class MonitorStats:
    committed: int = 0
    aborted: int = 0
    cross_bucket: int = 0
    lock_waits: int = 0


class KeyLock:
    """A key's lock. Its event exists only once somebody waits for it (most locks are
    released before anyone does)."""

    __slots__ = ("_released", "txid")

    def __init__(self, txid: int) -> None:
        self.txid = txid
        self._released: trio.Event | None = None

    async def wait(self) -> None:
        if self._released is None:
            self._released = trio.Event()
        await self._released.wait()

    def release(self) -> None:
        if self._released is not None:
            self._released.set()


class Monitor:
    def __init__(self, mode: DurabilityMode) -> None:
        self.mode = mode
        self.stats = MonitorStats()
        self.locked = 0  # key locks held right now
        self.exclusive: KeyLock | None = None
        self._next_txid = 1
        self._idle = trio.Event()
        self._idle.set()
        self._holds = 0
        self._hold_released: trio.Event | None = None

    @property
    def busy(self) -> bool:
        """True while any lock is held: only then must a plain command check its keys."""
        return self.locked > 0 or self.exclusive is not None

    # ------------------------------------------------------------- waiting

    async def wait_unlocked(self, targets: Iterable[Target]) -> None:
        """Return once none of targets is locked (and nobody holds the keyspace)."""
        while True:
            if self.exclusive is not None:
                self.stats.lock_waits += 1
                await self.exclusive.wait()
                continue
            for shard, key in targets:
                lock = shard.lock_of(key)
                if lock is not None:
                    self.stats.lock_waits += 1
                    await lock.wait()
                    break
            else:
                return

    async def wait_idle(self) -> None:
        """Return once no lock at all is held (for whole-keyspace commands)."""
        while self.busy:
            self.stats.lock_waits += 1
            if self.exclusive is not None:
                await self.exclusive.wait()
            else:
                await self._idle.wait()

    def hold(self) -> Callable[[], None]:
        """Hold new transactions at the door (a checkpoint's barrier) until the returned
        function is called; those already past it go on and can be awaited with
        wait_idle."""
        if self._holds == 0:
            self._hold_released = trio.Event()
        self._holds += 1
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            self._holds -= 1
            if self._holds == 0 and self._hold_released is not None:
                self._hold_released.set()
                self._hold_released = None

        return release

    # --------------------------------------------------------- transactions

    async def transact(
        self,
        targets: Sequence[Target],
        apply: Callable[[], Any],
        *,
        record: Callable[[int], CommitRecord] | None = None,
        watch: WatchState | None = None,
        whole_keyspace: bool = False,
    ) -> Any:
        """Run apply() atomically over targets; NULL_ARRAY if a WATCH broke.

        record builds the mode's commit record for a txid; None means the transaction
        writes nothing and needs no durable decision.
        """
        while self._hold_released is not None:
            await self._hold_released.wait()
        cross = whole_keyspace or (
            len(targets) > 1 and len({slot.bucket_index for slot, _ in targets}) > 1
        )
        needs_decision = record is not None and self.mode.waits_for_commit
        if not cross and not needs_decision:
            if self.busy:
                await self.wait_unlocked(targets)
            return self._finish(apply, watch, cross=False)

        txid = self._next_txid
        self._next_txid += 1
        held: list[Target] = []
        exclusive = False
        try:
            if whole_keyspace:
                await self._acquire_exclusive(txid)
                exclusive = True
            else:
                for shard, key in _lock_order(targets):
                    if self.exclusive is None and shard.lock_of(key) is None:
                        self._lock(shard, key, txid)  # free: no coroutine needed
                    else:
                        await self._acquire(shard, key, txid)
                    held.append((shard, key))
            if watch is not None and watch.broken():
                return self._abort(txid)
            if needs_decision:
                assert record is not None
                return await self._apply_then_log(apply, watch, record(txid), held, exclusive, cross)
            return self._finish(apply, watch, cross=cross)
        finally:
            self._release(held, exclusive)

    async def _apply_then_log(self, apply: Callable[[], Any], watch: WatchState | None,
                              logged: CommitRecord, held: list[Target], exclusive: bool,
                              cross: bool) -> Any:
        """Apply under the locks, then make durable only what was applied: a command
        that failed (a limit of the day, a wrong type) is never logged, so replay, which
        consults no run-time limit, reproduces exactly what ran. Nobody sees the change
        before it is durable (its keys stay locked), and if the mode refuses it (a
        failed log write) the keys get back their old values: never acknowledged."""
        self.mode.check_writable()
        if exclusive:
            # Undoing would mean copying the whole keyspace: a whole-keyspace
            # transaction is logged whole before it runs (docs/guarantees.md).
            await self.mode.commit(logged)
            return self._finish(apply, watch, cross=cross)
        saved = []
        for slot, key in held:
            value, deadline = slot.saved(key)
            saved.append((slot, key, Undo.keep(value), deadline))
        try:
            result = self._finish(apply, watch, cross=cross)
            applied = _applied(logged, result)
            if applied is not None:
                # Not cancellable once the mode has taken the record (its contract): the
                # transaction is then durable, or fails as a whole.
                await self.mode.commit(applied)
        except BaseException:
            for slot, key, undo, deadline in saved:
                slot.restore(key, undo.restore(), deadline)
            raise
        for _, _, undo, _ in saved:
            undo.forget()
        return result

    def _finish(self, apply: Callable[[], Any], watch: WatchState | None, *, cross: bool) -> Any:
        if watch is not None and watch.broken():
            return self._abort(None)
        result = apply()
        self.stats.committed += 1
        if cross:
            self.stats.cross_bucket += 1
        return result

    def _abort(self, txid: int | None) -> Any:
        self.stats.aborted += 1
        log.debug("transaction aborted", txid=txid, reason="watched key changed")
        return NULL_ARRAY

    async def _acquire(self, shard: LocalKeys, key: bytes, txid: int) -> None:
        while True:
            if self.exclusive is not None:
                self.stats.lock_waits += 1
                await self.exclusive.wait()
                continue
            lock = shard.lock_of(key)
            if lock is None:
                break
            self.stats.lock_waits += 1
            await lock.wait()
        self._lock(shard, key, txid)

    def _lock(self, shard: LocalKeys, key: bytes, txid: int) -> None:
        shard.lock(key, KeyLock(txid))
        if self.locked == 0:
            self._idle = trio.Event()
        self.locked += 1

    async def _acquire_exclusive(self, txid: int) -> None:
        await self.wait_idle()
        self.exclusive = KeyLock(txid)

    def _release(self, held: list[Target], exclusive: bool) -> None:
        for shard, key in held:
            shard.unlock(key).release()
        if held:
            self.locked -= len(held)
            if self.locked == 0:
                self._idle.set()
        if exclusive and self.exclusive is not None:
            lock = self.exclusive
            self.exclusive = None
            lock.release()


def _applied(logged: CommitRecord, result: Any) -> CommitRecord | None:
    """logged without the commands that failed (they changed nothing); None when
    nothing is left to log."""
    if result is NULL_ARRAY or isinstance(result, CommandError):
        return None
    if (isinstance(result, list) and len(result) == len(logged.commands)  # EXEC's replies
            and any(isinstance(reply, CommandError) for reply in result)):
        kept = tuple(cmd for cmd, reply in zip(logged.commands, result, strict=True)
                     if not isinstance(reply, CommandError))
        return attrs.evolve(logged, commands=kept) if kept else None
    return logged


def _lock_order(targets: Sequence[Target]) -> Sequence[Target]:
    if len(targets) == 1:
        return targets
    unique = set(targets)
    return sorted(unique, key=lambda t: (t[0].number, t[0].db, t[1]))
