"""The bucket protocol: what the layers above a bucket may ask of it, whichever engine
holds it.

Theory. Keys hash to 16384 slots (CRC16, as Redis Cluster) and every bucket owns a
contiguous range of slots, so (bucket, slot, db, key) is one global order. A bucket is
the unit of atomicity of its engine: one operation on one bucket is atomic by itself.
Everything that spans buckets is built from seven operations on single buckets:

- **run** a command whose keys all live in the bucket. Atomic on the bucket, and it
  never sees a key that an unfinished transaction has locked: such a command waits.
- **prepare** a transaction on the bucket: lock the keys it reads or writes (all or
  nothing on the bucket), check its WATCHes, and record its intent where the engine
  needs one to finish it after a crash. Prepares are taken in bucket order, so two
  transactions never wait for each other in a cycle.
- **decide**: the transaction's outcome, written once, at one place (the first bucket it
  locked, its primary); whoever finishes the transaction reads it there.
- **commit** applies the transaction on the bucket and releases its locks: atomic per
  bucket, and since every key it touches stayed locked from prepare to commit, nobody
  sees it half applied.
- **abort** releases the locks and applies nothing.
- **capture** the bucket at a cut: every bucket's capture at one instant at which no
  transaction is between its first and its last commit (the checkpoint's barrier).
- **scan** the bucket's keys, resumably (SCAN, KEYS, DBSIZE, RANDOMKEY fan out).
- **recover**: at start, the bucket's state is the last one it made durable.

Locks, watches and versions belong to the bucket, never to its caller: a write that
changes a key notifies that key's watchers wherever it comes from.

Two engines provide the protocol. Their buckets differ in one way that shapes each
coordinator: a memory bucket lives in this process, so its operations are plain calls
(atomic because Trio is cooperative: no await, no other task), while a redis bucket is a
remote redis-server, so every operation is a round trip (atomic because each is one Lua
script or one MULTI on that server). Hence two protocol classes below, one synchronous
and one asynchronous, for the same seven operations:

| operation | memory (``dtm.bucket``, coordinated by ``dtm.monitor``) | redis (``dtm.buckets.shard``, coordinated by ``dtm.buckets.redis``) |
|---|---|---|
| run | a command handler on the bucket's slots, no await (the fast path) | the ``guard`` script: checks the locks, runs the command |
| prepare | ``lock`` each key (waiting on ``lock_of``); WATCH: versions in ``WatchState`` | the ``prepare`` script: locks and intent, all or nothing; WATCH: Redis's own |
| decide | the mode's record (binlog) while the locks are held | ``SET NX`` of the decision on the primary shard |
| commit | the handlers run under the locks in one step, then ``unlock`` | the ``commit`` script applies the intent and unlocks |
| abort | ``restore`` what ``saved`` kept, then ``unlock`` | the ``abort`` script |
| capture | ``capture()``: copy-on-write copies of the slot dicts | ``BGSAVE`` (Redis forks at the command) after the cut id is written |
| scan | ``occupied_slots``: only non-empty slots | ``SCAN`` on the shard |
| recover | the mode loads snapshot and log into the buckets | the shard loads its RDB/AOF; the front checks every shard holds one cut |

The coordinators see buckets only through these classes (their types say so, and mypy
checks it), so neither reaches into an engine's storage.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from dtm.buckets.scripts import Decided, Locked, Outcome, Prepared
    from dtm.resp import Raw
    from dtm.store import Value

DbKey = tuple[int, bytes]
Intent = Sequence[tuple[int, Sequence[Any]]]  # (db, command) to apply at commit


class LocalKeys(Protocol):
    """The keys of one slot of a memory bucket in one database, as the monitor sees
    them: its locks, and the value it may have to put back."""

    number: int  # the slot

    @property
    def db(self) -> int: ...

    @property
    def bucket_index(self) -> int: ...

    def lock_of(self, key: bytes) -> Any: ...

    def lock(self, key: bytes, lock: Any) -> None: ...

    def unlock(self, key: bytes) -> Any: ...

    def saved(self, key: bytes) -> tuple[Value | None, int | None]: ...

    def restore(self, key: bytes, value: Value | None, deadline: int | None) -> None: ...


class LocalBucket(Protocol):
    """A memory bucket: capture, scan and expiry as plain calls."""

    index: int

    def capture(self) -> Any: ...

    def key_count(self) -> int: ...

    def expire_cycle(self, budget: int = 1000) -> int: ...


class RemoteBucket(Protocol):
    """A redis bucket: every operation one round trip, atomic on its server."""

    index: int

    async def run(self, db: int, keys: Sequence[bytes], argv: Sequence[Any],
                  proto: int = 2) -> Raw | Locked:
        """One attempt: the reply as the shard wrote it (in the client's protocol), or
        the lock that stopped it."""
        ...

    async def run_batch(self, token: str, db: int,
                        commands: Sequence[tuple[Sequence[bytes], Sequence[Any]]],
                        proto: int = 2) -> list[Raw]:
        """Several of one client's commands in one round trip; the first that meets a
        lock halts the rest (their replies say so), so none runs out of order."""
        ...

    async def raw(self, db: int, commands: Sequence[Sequence[Any]], proto: int = 2) -> list[Raw]:
        """Commands as they are, no lock check: for keys the caller has locked."""
        ...

    async def prepare(self, txid: str, lease_ms: int, locks: Sequence[DbKey], intent: Intent,
                      primary: bool) -> Prepared | Locked | Decided: ...

    async def decide(self, txid: str, outcome: Outcome) -> Outcome: ...

    async def commit(self, txid: str) -> Any: ...

    async def abort(self, txid: str) -> bool: ...

    async def forget(self, txid: str) -> None:
        """Drop a decision every bucket has applied."""
        ...

    async def capture(self, cut: str, filename: str | None = None) -> Any:
        """Record the cut's id and start this bucket's save at this instant."""
        ...

    async def scan(self, db: int, cursor: int, options: Sequence[bytes]) -> tuple[int, list[bytes]]: ...
