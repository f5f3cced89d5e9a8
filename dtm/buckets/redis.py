"""The redis engine: every bucket is a redis-server (a *shard*), shared by any number of
stateless dtm fronts (docs/redis-engine.md has the whole design).

What a front does with a command, by the keys it names (positions from the shards' own
COMMAND key specs, ``keyspecs.py``):

- **one shard**: the shard's ``guard`` script checks that none of the keys is locked by
  an unfinished transaction and runs the command there, in one atomic step; its reply is
  relayed byte for byte. A locked key waits (or, past the lock's lease, the transaction
  is resolved from its decision) and the command is retried: no client of any front sees
  half a transaction. Commands a script cannot run exactly (noscript ones such as EVAL,
  replies that Lua's doubles would round, very long commands) take the *exclusive* path
  instead: lock the keys, run the command as it is, unlock.
- **several shards**: the keys are locked on every shard in bucket order (so two
  transactions never deadlock), copied into the scratch database of one shard (``DUMP``
  and ``PEXPIRETIME`` at home, ``RESTORE … ABSTTL`` there), the command (or a whole
  MULTI/EXEC, or a script) runs there unchanged inside MULTI, and every key whose value
  or expiry changed is written back home as the transaction's intent: prepare records
  the intents, the decision is written at the primary (the first shard locked), and
  commit applies them and unlocks, each shard in one script. A front that dies leaves
  locks with a lease; whoever meets one after the lease resolves it from the decision.

Locks, intents and decisions live in the shards (``scripts.py``), so fronts share
nothing but the shards.
"""

from __future__ import annotations

import itertools
import os
import secrets
import signal
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Final, TypeVar

import attrs
import structlog
import trio

from dtm.buckets.address import Arg, ShardError, new_reader
from dtm.buckets.keyspecs import CommandTable
from dtm.buckets.scripts import (
    ABORT,
    COMMIT,
    LEASE_KEY,
    SCRATCH_DB,
    USER_DATABASES,
    WHOLE_SHARD,
    Decided,
    Locked,
    Outcome,
    Prepared,
    resolve,
)
from dtm.buckets.shard import RedisBucket, stopped_by_lock
from dtm.resp import Raw, parse_int
from dtm.slots import key_slot, slot_owners

log = structlog.get_logger("dtm.engine")

T = TypeVar("T")
DbKey = tuple[int, bytes]
# Integer replies that can pass 2^53, which Lua's doubles would round: these commands
# take the exclusive path, where the reply is the shard's own.
WIDE_INTEGER_REPLIES: Final = frozenset({
    "incr", "incrby", "decr", "decrby", "hincrby", "bitfield", "bitfield_ro",
    "pexpiretime", "expiretime", "pttl", "ttl", "object|freq", "object|idletime",
})
# Transactions that hold whole shards (whole-keyspace commands inside MULTI).
WHOLE_PREFIX: Final = "g."
WHOLE_LOCK: Final = "dtm:lock:all:"
_WAIT_FIRST: Final = 0.0005
_WAIT_MOST: Final = 0.02


class TransactionAborted(Exception):
    """A resolver rolled this transaction back (its lease ran out): nothing of it was
    applied, and it may be tried again."""


class YieldToWhole(Exception):
    """A prepare met a transaction holding a whole shard (at index)."""

    def __init__(self, index: int) -> None:
        super().__init__(index)
        self.index = index


def parse(frame: Raw) -> Any:
    """A relayed reply as a value (error replies as ShardError values)."""
    reader = new_reader()
    reader.feed(frame.data)
    return reader.gets()


def exec_item(frame: Raw) -> Raw:
    """The only element of a one-command EXEC's raw reply (``*1`` then the element);
    EXECABORT or a null EXEC as they are."""
    data = frame.data
    if not data.startswith(b"*1\r\n"):
        return frame
    return Raw(data[4:])


@attrs.define(eq=False)
class Transaction:
    """Locks held for one atomic step across shards."""

    txid: str
    primary: int
    locked: list[int] = attrs.field(factory=list)  # shards, in the order locked


@attrs.define(eq=False)
class RedisEngine:
    shards: list[RedisBucket]
    table: CommandTable
    lease_ms: int = 5000
    front: str = attrs.field(factory=lambda: secrets.token_hex(6))
    owners: list[int] = attrs.field(init=False)
    _serial: Iterable[int] = attrs.field(factory=itertools.count, init=False)
    notifier: Any = attrs.field(default=None, init=False)  # blocking.Notifier, once started
    nursery: trio.Nursery | None = attrs.field(default=None, init=False)  # for later()
    spawned: Any = attrs.field(default=None, init=False)  # the ShardSet dtm started, if any
    resolved: int = attrs.field(default=0, init=False)  # locks past their lease we finished
    waits: int = attrs.field(default=0, init=False)  # times a command met a lock

    def __attrs_post_init__(self) -> None:
        self.owners = slot_owners(len(self.shards))

    def shard_of(self, key: bytes) -> int:
        return self.owners[key_slot(key)]

    # ------------------------------------------------------------ one shard

    async def guarded(self, index: int, db: int, keys: Sequence[bytes],
                      argv: Sequence[Arg], proto: int = 2) -> Raw:
        """argv on bucket index, in db, once none of keys is locked: its reply as the
        shard wrote it."""
        bucket = self.shards[index]
        pause = _WAIT_FIRST
        while True:
            reply = await bucket.run(db, keys, argv, proto)
            if isinstance(reply, Raw):
                return reply
            pause = await self._wait_for(index, reply, pause)

    async def guarded_batch(self, index: int, db: int,
                            commands: Sequence[tuple[Sequence[bytes], Sequence[Arg]]],
                            proto: int = 2) -> list[Raw]:
        """Several guarded commands of one client for one bucket in one round trip; from
        the first that met a lock on, they run again one by one, in order, once the lock
        is gone."""
        token = f"{self.front}.b{next(self._serial)}"  # type: ignore[call-overload]
        replies = await self.shards[index].run_batch(token, db, commands, proto)
        for position, reply in enumerate(replies):
            if stopped_by_lock(reply):
                break
        else:
            return replies
        done = replies[:position]
        for keys, argv in commands[position:]:
            done.append(await self.guarded(index, db, keys, argv, proto))
        return done

    async def raw(self, index: int, db: int, commands: Sequence[Sequence[Arg]],
                  proto: int = 2) -> list[Raw]:
        """commands as they are on bucket index, in db (no lock check)."""
        return await self.shards[index].raw(db, commands, proto)

    async def _wait_for(self, index: int, locked: Locked, pause: float) -> float:
        """Wait for a lock to go (or finish its transaction if its lease is over); the
        next pause."""
        self.waits += 1
        if locked.expired:
            primary = primary_of(locked.txid)
            if primary is None or primary >= len(self.shards):
                log.error("a lock of an unknown transaction past its lease", txid=locked.txid)
                await trio.sleep(_WAIT_MOST)
                return pause
            outcome = await self.resolve(index, locked.txid)
            self.resolved += 1
            log.info("resolved a transaction past its lease", txid=locked.txid, outcome=outcome)
            return _WAIT_FIRST
        left = (locked.until_ms - locked.now_ms) / 1000
        if self.notifier is not None:
            # Woken by the unlock's message; the pause bounds a wait whose message went
            # out before this front asked for it.
            await self.notifier.unlocked(index, locked.txid, min(pause, left))
        else:
            await trio.sleep(min(pause, left))
        return min(pause * 2, _WAIT_MOST)

    async def resolve(self, index: int, txid: str) -> Outcome:
        """Finish txid on bucket index after its lease ran out, from the decision at its
        primary: commit rolls forward; with none yet, abort is written first (SET NX),
        so the original front can no longer commit, and the locks are released."""
        primary = primary_of(txid)
        assert primary is not None
        return await resolve(self.shards[index], self.shards[primary], txid)

    async def resolve_lapsed(self, index: int, txids: Iterable[str]) -> None:
        """Resolve those of txids whose lease on bucket index has run out."""
        bucket = self.shards[index]
        now = await bucket.now_ms()
        for txid in txids:
            until = await bucket.meta(("HGET", f"dtm:intent:{txid}", "until"))
            if until is not None and now >= int(until):
                await self.resolve(index, txid)

    # ------------------------------------------------------------- locking

    def new_transaction(self, shards: Iterable[int]) -> Transaction:
        primary = min(shards)
        return Transaction(f"{self.front}.{next(self._serial)}.{primary}", primary)  # type: ignore[call-overload]

    async def lock(self, locks: dict[int, list[DbKey]]) -> Transaction:
        """Lock every (db, key), shard by shard in bucket order. Meeting a transaction
        that holds a whole shard, this lets go of everything and starts again once it is
        gone: that transaction waits for the ones holding locks to finish."""
        while True:
            txn = self.new_transaction(locks)
            try:
                if len(locks) > 1 and await self._lock_at_once(txn, locks):
                    return txn
                for index in sorted(locks):
                    # Counted before the reply: a prepare whose reply is lost is released too.
                    txn.locked.append(index)
                    await self._prepare(txn, index, locks[index], [])
            except YieldToWhole as whole:
                with trio.CancelScope(shield=True):
                    await self.release(txn)
                await self._wait_for_whole(whole.index)
                continue
            except BaseException:
                with trio.CancelScope(shield=True):
                    await self.release(txn)
                raise
            return txn

    async def _lock_at_once(self, txn: Transaction, locks: dict[int, list[DbKey]]) -> bool:
        """Try every shard's prepare at once (one round trip): True if all locked. If any
        key was locked, every lock taken is let go (nothing waited while holding, so no
        cycle) and txn is left holding nothing, to lock in order instead."""
        order = sorted(locks)
        txn.locked = list(order)
        results = await each(lambda i: self.shards[i].prepare(
            txn.txid, self.lease_ms, locks[i], [], primary=i == txn.primary), order)
        if all(isinstance(result, Prepared) for result in results):
            return True
        if any(isinstance(result, Decided) for result in results):
            raise TransactionAborted(txn.txid)
        with trio.CancelScope(shield=True):
            await self.release(txn)
        txn.locked = []
        return False

    async def lock_everything(self) -> Transaction:
        """Hold every shard (a transaction with whole-keyspace commands): no command with
        keys runs and no transaction starts anywhere until release; returns once the
        transactions that held locks before have finished."""
        txn = Transaction(f"{WHOLE_PREFIX}{self.front}.{next(self._serial)}.0", 0)  # type: ignore[call-overload]
        # No checkpoint may cut through it (its writes are applied directly, one shard
        # after another): it holds the checkpoint lease meanwhile.
        pause = _WAIT_FIRST
        while await self.shards[0].control_meta(
                ("SET", LEASE_KEY, txn.txid, "NX", "PX", self.lease_ms)) is None:
            await trio.sleep(pause)
            pause = min(pause * 2, _WAIT_MOST)
        try:
            for index in range(len(self.shards)):
                txn.locked.append(index)
                await self._prepare(txn, index, [WHOLE_SHARD], [])  # type: ignore[list-item]
            for index in range(len(self.shards)):
                await self._drain(index, txn.txid)
        except BaseException:
            with trio.CancelScope(shield=True):
                await self.release_everything(txn)
            raise
        return txn

    async def release_everything(self, txn: Transaction) -> None:
        await self.release(txn)
        if await self.shards[0].control_meta(("GET", LEASE_KEY)) == txn.txid.encode():
            await self.shards[0].control_meta(("DEL", LEASE_KEY))

    async def _drain(self, index: int, own: str) -> None:
        """Until no other transaction holds locks on bucket index (finishing those past
        their lease)."""
        bucket = self.shards[index]
        pause = _WAIT_FIRST
        while True:
            others = [txid for txid in await bucket.transactions() if txid != own]
            if not others:
                return
            await self.resolve_lapsed(index, others)
            await trio.sleep(pause)
            pause = min(pause * 2, _WAIT_MOST)

    async def _wait_for_whole(self, index: int) -> None:
        bucket = self.shards[index]
        pause = _WAIT_FIRST
        while True:
            holder = await bucket.meta(("HMGET", WHOLE_LOCK, "tx", "until"))
            if holder[0] is None:
                return
            now = await bucket.now_ms()
            locked = Locked(holder[0].decode(), int(holder[1]), now)
            pause = await self._wait_for(index, locked, pause)

    async def _prepare(self, txn: Transaction, index: int, locks: Sequence[DbKey],
                       intent: Sequence[tuple[int, Sequence[Arg]]]) -> None:
        bucket = self.shards[index]
        pause = _WAIT_FIRST
        while True:
            result = await bucket.prepare(txn.txid, self.lease_ms, locks, intent,
                                          primary=index == txn.primary)
            if isinstance(result, Prepared):
                return
            if isinstance(result, Decided):
                raise TransactionAborted(txn.txid)
            if (locks and result.txid.startswith(WHOLE_PREFIX) and not result.expired
                    and not txn.txid.startswith(WHOLE_PREFIX)):
                raise YieldToWhole(index)
            pause = await self._wait_for(index, result, pause)

    async def release(self, txn: Transaction) -> None:
        """Drop txn's locks (nothing of it applied through intents)."""
        await each(lambda i: self.shards[i].abort(txn.txid), txn.locked)

    async def exclusive(self, index: int, db: int, locks: Sequence[DbKey],
                        argv: Sequence[Arg], proto: int = 2) -> Raw:
        """argv as it is on one shard (in MULTI), with its keys locked meanwhile."""
        while True:
            try:
                txn = await self.lock({index: list(locks)})
            except TransactionAborted:
                continue
            try:
                # Inside MULTI: a blocking command answers at once instead of holding the
                # link shared with every other client of this front.
                replies = await self.raw(index, db, [("MULTI",), argv, ("EXEC",)], proto)
                return exec_item(replies[2])
            finally:
                with trio.CancelScope(shield=True):
                    await self.release(txn)

    # ------------------------------------------------------------ across shards

    async def across(self, db: int, pairs: Sequence[DbKey], commands: Sequence[Sequence[Arg]],
                     *, writes: bool, proto: int = 2,
                     before_run: Callable[[], Awaitable[bool]] | None = None) -> Raw | None:
        """Run commands (as one MULTI/EXEC, starting in database db) atomically over the
        (database, key) pairs they touch on several shards: EXEC's raw reply, or None
        when before_run (called under the locks) says not to run."""
        homes: dict[int, list[DbKey]] = {}
        for pair in dict.fromkeys(pairs):
            homes.setdefault(self.shard_of(pair[1]), []).append(pair)
        while True:
            txn = await self.lock(homes)
            try:
                if before_run is not None and not await before_run():
                    return None
                return await self._run_locked(txn, db, homes, commands, writes, proto)
            except TransactionAborted:
                continue
            finally:
                with trio.CancelScope(shield=True):
                    await self.release(txn)

    async def _run_locked(self, txn: Transaction, db: int, homes: dict[int, list[DbKey]],
                          commands: Sequence[Sequence[Arg]], writes: bool, proto: int) -> Raw:
        reply, intents = await self._in_scratch(txn.primary, db, homes, commands, writes, proto)
        if not intents:
            return reply
        # 3. What changed goes home as each shard's intent; decide; commit.
        await each(lambda i: self._prepare(txn, i, [], intents[i]), intents)
        fault("prepared")
        primary = self.shards[txn.primary]
        outcome = await primary.decide(txn.txid, COMMIT)
        if outcome == ABORT:
            raise TransactionAborted(txn.txid)
        fault("decided")
        # From here on the transaction stands: commit even if this client goes away, and
        # never release (abort) it, not even when a shard's commit fails (it died): that
        # shard keeps its intent and a resolver rolls it forward after the lease.
        locked, txn.locked = txn.locked, []
        with trio.CancelScope(shield=True):
            first = locked[0]

            async def commit(index: int) -> None:
                await self.shards[index].commit(txn.txid)
                if index == first:
                    fault("committed-one")

            await each(commit, locked)
        # Every shard applied it, so no resolver will ask for the decision again.
        self.later(primary.forget, txn.txid)
        return reply

    def later(self, function: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """function(*args) in the background (housekeeping no reply waits for)."""
        if self.nursery is None:
            raise RuntimeError("the engine has no nursery yet")
        self.nursery.start_soon(function, *args)

    async def while_holding_everything(self, db: int, pairs: Sequence[DbKey],
                                       commands: Sequence[Sequence[Arg]], proto: int) -> Raw:
        """commands over keys of several shards while this front holds every shard
        (lock_everything): run in scratch, and what changed written home at once."""
        homes: dict[int, list[DbKey]] = {}
        for pair in dict.fromkeys(pairs):
            homes.setdefault(self.shard_of(pair[1]), []).append(pair)
        reply, writes = await self._in_scratch(min(homes), db, homes, commands, True, proto)
        await each(lambda i: self.raw(i, 0, [command for write_db, write in writes[i]
                                              for command in (("SELECT", write_db), write)]),
                   writes)
        return reply

    async def _in_scratch(self, primary: int, db: int, homes: dict[int, list[DbKey]],
                          commands: Sequence[Sequence[Arg]], writes: bool,
                          proto: int) -> tuple[Raw, dict[int, list[tuple[int, Sequence[Arg]]]]]:
        """Run commands in the scratch databases of shard primary over copies of their
        keys: EXEC's reply, and for each home shard the writes (RESTORE or DEL, with
        their database) that bring what changed home."""
        # 1. Every key's value and expiry, from its home.
        async def fetch(index: int) -> list[Any]:
            asked: list[Sequence[Arg]] = []
            for key_db, key in homes[index]:
                asked += (("SELECT", key_db), ("DUMP", key), ("PEXPIRETIME", key))
            replies = await self.raw(index, 0, [*asked, ("SELECT", 0)])
            return [parse(r) for i, r in enumerate(replies[:-1]) if i % 3]

        order = sorted(homes)
        fetched = await each(lambda i: fetch(i), order)
        before: dict[DbKey, tuple[bytes | None, int]] = {}
        for index, values in zip(order, fetched):
            for position, pair in enumerate(homes[index]):
                payload, expires = values[2 * position], values[2 * position + 1]
                before[pair] = (payload, expires if isinstance(expires, int) and expires > 0 else 0)
        # 2. Run there, in the scratch databases of the primary (one per user database,
        #    so the commands' SELECT, MOVE and COPY … DB keep their meaning).
        pairs = list(before)
        script: list[Sequence[Arg]] = []
        for (key_db, key), (payload, expires) in before.items():
            script.append(("SELECT", scratch(key_db)))
            script.append(("RESTORE", key, expires, payload, "REPLACE", "ABSTTL")
                          if payload is not None else ("DEL", key))
        script += (("SELECT", scratch(db)), ("MULTI",))
        script += [in_scratch(command) for command in commands]
        script.append(("EXEC",))
        ran = len(script) - 1
        dumped = []  # where each pair's DUMP reply is
        for key_db, key in pairs:
            script.append(("SELECT", scratch(key_db)))
            if writes:
                dumped.append(len(script))
                script += (("DUMP", key), ("PEXPIRETIME", key))
            script.append(("DEL", key))
        script.append(("SELECT", 0))
        replies = await self.shards[primary].raw(0, script, proto)
        reply = replies[ran]
        intents: dict[int, list[tuple[int, Sequence[Arg]]]] = {}
        for (key_db, key), at in zip(pairs, dumped):
            payload, expires = parse(replies[at]), parse(replies[at + 1])
            expires = expires if isinstance(expires, int) and expires > 0 else 0
            if (payload, expires) == before[(key_db, key)] or isinstance(payload, ShardError):
                continue
            write: Sequence[Arg] = (("RESTORE", key, expires, payload, "REPLACE", "ABSTTL")
                                    if payload is not None else ("DEL", key))
            intents.setdefault(self.shard_of(key), []).append((key_db, write))
        return reply, intents

    # ------------------------------------------------------------ everywhere

    async def everywhere(self, db: int, argv: Sequence[Arg], proto: int = 2) -> list[Raw]:
        """argv on every shard (whole-keyspace commands), replies in shard order."""
        return await each(lambda i: self._first(i, db, argv, proto), range(len(self.shards)))

    async def _first(self, index: int, db: int, argv: Sequence[Arg], proto: int) -> Raw:
        return (await self.raw(index, db, [argv], proto))[0]


# Fault points tests can arm (DTM_FAULTS=prepared,decided,…): the process kills itself
# there with SIGKILL, as a crash at that step would.
_FAULTS: Final = frozenset(filter(None, os.environ.get("DTM_FAULTS", "").split(",")))


def fault(point: str) -> None:
    if point in _FAULTS:
        log.warning("fault point reached: killing this front", point=point)
        os.kill(os.getpid(), signal.SIGKILL)


def scratch(db: int) -> int:
    """The scratch database that stands for user database db during a transaction."""
    return SCRATCH_DB + db


def database_positions(command: Sequence[Arg]) -> list[int]:
    """Where a command names a database: SELECT n, MOVE key n, SWAPDB a b, COPY … DB n."""
    head = command[0]
    name = head.lower() if isinstance(head, bytes) else str(head).lower().encode()
    if name == b"copy":
        return [i + 1 for i, arg in enumerate(command[:-1])
                if i >= 3 and isinstance(arg, bytes) and arg.lower() == b"db"]
    return [i for i in _DATABASE_ARGUMENTS.get(name, ()) if i < len(command)]


_DATABASE_ARGUMENTS: Final = {b"select": (1,), b"move": (2,), b"swapdb": (1, 2)}


def in_scratch(command: Sequence[Arg]) -> Sequence[Arg]:
    """command with the user databases it names (SELECT n, MOVE key n, COPY … DB n) as
    their scratch databases; an index no user database has stays as it is (the shard
    answers it is out of range)."""
    positions = database_positions(command)
    if not positions:
        return command
    rewritten = list(command)
    for i in positions:
        value = command[i]
        index = parse_int(value) if isinstance(value, bytes) else None
        if index is not None and 0 <= index < USER_DATABASES:
            rewritten[i] = scratch(index)
    return rewritten


def primary_of(txid: str) -> int | None:
    _, _, tail = txid.rpartition(".")
    return int(tail) if tail.isdigit() else None


async def each(function: Callable[[int], Awaitable[T]], indexes: Iterable[int]) -> list[T]:
    """function(i) for every index, concurrently; the results in order (one runs inline)."""
    jobs = list(indexes)
    if len(jobs) == 1:
        return [await function(jobs[0])]
    results: list[Any] = [None] * len(jobs)

    async def one(position: int) -> None:
        results[position] = await function(jobs[position])

    try:
        async with trio.open_nursery() as nursery:
            for position in range(len(jobs)):
                nursery.start_soon(one, position)
    except BaseExceptionGroup as group:
        raise group.exceptions[0] from None
    return results
