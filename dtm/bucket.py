"""A bucket: one shard of the keyspace (a contiguous slot range) in every logical database.

For each database the bucket keeps a ``Shard``: expiry deadlines, the WATCHers of its
keys and the key locks that two-phase commit takes. The values themselves are held per
slot (``Slot``): routing a key lands directly on its slot's dict, and SCAN walks slots,
which gives it a stateless cursor that returns every key present throughout exactly once
(Redis Cluster keeps the same slot index).

Nothing here awaits: Trio is cooperative, so this state changes atomically between two
awaits of its caller.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import attrs

from dtm.clock import now_ms
from dtm.slots import key_slot
from dtm.store import Value

# A bucket's keys at one instant: (database, slot dicts, deadlines) per database used.
BucketCut = list[tuple[int, list[dict[bytes, Value]], dict[bytes, int]]]


@attrs.define(eq=False)
class WatchState:
    """The keys one session WATCHes. ``dirty`` is set by any change to one of them; a
    key that was live when watched and has expired since also breaks the watch (as in
    Redis 7), even if nobody has touched it yet."""

    dirty: bool = False
    # (database, key) -> (its slot, live when watched). A dict, so that watching N keys
    # is O(N); SWAPDB re-points the slots (the watch stays on the database index).
    entries: dict[tuple[int, bytes], tuple[Slot, bool]] = attrs.Factory(dict)

    def watch(self, slot: Slot, key: bytes) -> None:
        ident = (slot.shard.db, key)
        if ident in self.entries:
            return
        slot.watchers.setdefault(key, {})[self] = None
        self.entries[ident] = (slot, slot.lookup(key, expire=False) is not None)

    def broken(self) -> bool:
        if self.dirty:
            return True
        for (_, key), (slot, was_live) in self.entries.items():
            if was_live and slot.is_expired(key):
                return True
        return False

    def clear(self) -> None:
        for (_, key), (slot, _) in self.entries.items():
            watchers = slot.watchers.get(key)
            if watchers is not None:
                watchers.pop(self, None)
                if not watchers:
                    del slot.watchers[key]
        self.entries.clear()
        self.dirty = False


class Slot:
    """The keys of one slot in one database, and every operation on a single key.

    ``expires``, ``watchers`` and ``_locks`` are the owning shard's dicts (shared by all
    its slots): a reference here saves an attribute hop on every lookup. The locks are
    the bucket's own: the monitor takes and releases them through ``lock_of``, ``lock``
    and ``unlock``, and undoes a write through ``saved``/``restore``, never through the
    dicts.
    """

    __slots__ = ("shard", "number", "data", "expires", "watchers", "_locks")

    def __init__(self, shard: Shard, number: int) -> None:
        self.shard = shard
        self.number = number
        self.data: dict[bytes, Value] = {}
        self.expires = shard.expires
        self.watchers = shard.watchers
        self._locks = shard.locks

    @property
    def bucket(self) -> Bucket:
        return self.shard.bucket

    @property
    def db(self) -> int:
        return self.shard.db

    @property
    def bucket_index(self) -> int:
        return self.shard.bucket.index

    # ------------------------------------------------------------------ reads

    def lookup(self, key: bytes, *, expire: bool = True) -> Value | None:
        """The live value of key, deleting it first if it has expired (lazy expiry)."""
        value = self.data.get(key)
        if value is not None and self.expires:
            at = self.expires.get(key)
            if at is not None and at <= now_ms():
                if expire and key not in self._locks:
                    self.delete(key)
                    self.shard.bucket.expired_keys += 1
                return None
        return value

    def is_expired(self, key: bytes) -> bool:
        at = self.expires.get(key)
        return at is not None and at <= now_ms()

    def ttl_at(self, key: bytes) -> int | None:
        return self.expires.get(key)

    def live_keys(self) -> list[bytes]:
        if not self.expires:
            return list(self.data)
        now = now_ms()
        expires = self.expires
        return [k for k in self.data if (at := expires.get(k)) is None or at > now]

    # ------------------------------------------------ two-phase commit's locks

    def lock_of(self, key: bytes) -> Any:
        """The lock a transaction holds on key, or None."""
        return self._locks.get(key)

    def lock(self, key: bytes, lock: Any) -> None:
        self._locks[key] = lock

    def unlock(self, key: bytes) -> Any:
        return self._locks.pop(key)

    def saved(self, key: bytes) -> tuple[Value | None, int | None]:
        """key's stored value and deadline as they are (expired or not): what restore
        puts back if a write is not made durable."""
        return self.data.get(key), self.expires.get(key)

    def restore(self, key: bytes, value: Value | None, deadline: int | None) -> None:
        if value is None:
            self.delete(key)
        else:
            self.store(key, value, deadline)

    # ----------------------------------------------------------------- writes

    def store(self, key: bytes, value: Value, expire_at: int | None = None) -> None:
        """Set key to value; expire_at replaces any TTL (None: no TTL)."""
        if key not in self.data:
            self._adding()
        self.data[key] = value
        if expire_at is not None:
            self._deadline(key, expire_at)
        elif self.expires:
            self.expires.pop(key, None)
        if self.watchers:
            self.touch(key)

    def store_keep_ttl(self, key: bytes, value: Value) -> None:
        if key not in self.data:
            self._adding()
        self.data[key] = value
        if self.watchers:
            self.touch(key)

    def set_expire(self, key: bytes, at: int | None) -> None:
        """Give key a deadline (None: none); a change of TTL breaks its WATCHes, as
        every write does."""
        self._deadline(key, at)
        if self.watchers:
            self.touch(key)

    def _deadline(self, key: bytes, at: int | None) -> None:
        if at is None:
            self.expires.pop(key, None)
        else:
            self.expires[key] = at
            self.shard.note_deadline(at, key)

    def _adding(self) -> None:
        """A new key is about to be stored: keep the shard's counts (off the overwrite path)."""
        shard = self.shard
        shard.keys += 1
        if not self.data:
            shard.occupy(self.number)

    def delete(self, key: bytes) -> bool:
        if self.data.pop(key, None) is None:
            return False
        shard = self.shard
        shard.keys -= 1
        if not self.data:
            shard.vacate(self.number)
        if self.expires:
            self.expires.pop(key, None)
        if self.watchers:
            self.touch(key)
        return True

    def touch(self, key: bytes) -> None:
        """Break every WATCH on key: the key was modified, deleted or expired."""
        for state in self.watchers.get(key, ()):
            state.dirty = True


class Shard:
    """One bucket's part of one logical database."""

    def __init__(self, bucket: Bucket, db: int) -> None:
        self.bucket = bucket
        self.db = db
        self.expires: dict[bytes, int] = {}
        # key -> the sessions watching it (a dict as an ordered set: O(1) unwatch)
        self.watchers: dict[bytes, dict[WatchState, None]] = {}
        self.locks: dict[bytes, Any] = {}  # key -> the monitor's lock record
        self.slots = {n: Slot(self, n) for n in bucket.slots}
        self._deadlines: list[tuple[int, bytes]] = []
        # Kept by every write, so that DBSIZE, RANDOMKEY, SCAN and FLUSHDB cost what
        # they cost in Redis instead of a walk over every slot:
        self.keys = 0  # stored keys, expired or not (Redis's DBSIZE counts those too)
        self.first = bucket.slots.start
        self.filled = bytearray(len(bucket.slots))  # 1 at (slot - first) when it holds keys
        self.occupied: list[int] = []  # the slots holding keys, in no order: a random pick
        self._place: dict[int, int] = {}  # slot -> its index in occupied

    def slot_of(self, key: bytes) -> Slot:
        return self.slots[key_slot(key)]

    def __len__(self) -> int:
        return self.keys

    def occupy(self, number: int) -> None:
        self.filled[number - self.first] = 1
        self._place[number] = len(self.occupied)
        self.occupied.append(number)

    def vacate(self, number: int) -> None:
        self.filled[number - self.first] = 0
        index = self._place.pop(number)
        last = self.occupied.pop()
        if last != number:
            self.occupied[index] = last
            self._place[last] = index

    def occupied_slots(self, start: int = 0) -> Iterator[Slot]:
        """The slots holding keys, from slot number start on, in slot order (found with
        a C-speed scan of the fill map, never by visiting the empty ones)."""
        slots, filled, first = self.slots, self.filled, self.first
        at = filled.find(1, max(start - first, 0))
        while at >= 0:
            yield slots[at + first]
            at = filled.find(1, at + 1)

    def items(self) -> Iterator[tuple[bytes, Value, int | None]]:
        """Every stored (key, value, deadline), expired or not: what a snapshot holds."""
        expires = self.expires
        for slot in self.occupied_slots():
            for key, value in slot.data.items():
                yield key, value, expires.get(key)

    def note_deadline(self, at: int, key: bytes) -> None:
        heapq.heappush(self._deadlines, (at, key))
        if len(self._deadlines) > 2 * len(self.expires) + 1024:
            # Stale entries (TTL changed or removed) pile up; rebuild from the truth.
            self._deadlines = [(t, k) for k, t in self.expires.items()]
            heapq.heapify(self._deadlines)

    def flush(self) -> int:
        """Remove every key; watchers of keys that existed see their watch broken.
        O(keys + watched keys), as Redis's."""
        self.touch_existing()
        removed = self.keys
        for number in self.occupied:
            self.slots[number].data.clear()
        self.filled[:] = bytes(len(self.filled))
        self.occupied.clear()
        self._place.clear()
        self.keys = 0
        self.expires.clear()
        self._deadlines.clear()
        return removed

    def touch_existing(self, other: Shard | None = None) -> None:
        """Break the watches on keys stored here (or in other): what FLUSHDB and SWAPDB
        change (Redis's touchAllWatchedKeysInDb)."""
        for key, states in self.watchers.items():
            if key in self.slot_of(key).data or (other is not None and key in other.slot_of(key).data):
                for state in states:
                    state.dirty = True

    def expire_due(self, now: int, budget: int) -> int:
        """Active expiry: delete up to budget keys whose deadline has passed, skipping
        keys locked by a committing transaction (they are retried on a later cycle)."""
        deadlines = self._deadlines
        expired = 0
        postponed = []
        while deadlines and deadlines[0][0] <= now and expired < budget:
            at, key = heapq.heappop(deadlines)
            if self.expires.get(key) != at:
                continue  # stale: the TTL was changed or removed since
            if key in self.locks:
                postponed.append((at, key))
                continue
            self.slot_of(key).delete(key)
            expired += 1
        for entry in postponed:
            heapq.heappush(deadlines, entry)
        return expired


class Bucket:
    """A shard of the keyspace across all logical databases (created lazily per db)."""

    def __init__(self, index: int, slots: range, databases: int) -> None:
        self.index = index
        self.slots = slots
        self._shards: list[Shard | None] = [None] * databases
        self.expired_keys = 0

    def shard(self, db: int) -> Shard:
        shard = self._shards[db]
        if shard is None:
            shard = self._shards[db] = Shard(self, db)
        return shard

    def shards(self) -> Iterator[Shard]:
        return (shard for shard in self._shards if shard is not None)

    def swap_shards(self, a: int, b: int) -> None:
        """Exchange databases a and b (SWAPDB): each shard, with its slots, values and
        deadlines, moves to the other index; the WATCHers stay with their index (Redis
        keeps watched_keys per database), so the two watcher tables trade contents.
        The shards are locked by nobody: SWAPDB holds the whole keyspace."""
        first, second = self.shard(a), self.shard(b)
        first.touch_existing(second)
        second.touch_existing(first)
        self._shards[a], self._shards[b] = second, first
        first.db, second.db = b, a
        moved = dict(first.watchers)
        first.watchers.clear()
        first.watchers.update(second.watchers)
        second.watchers.clear()
        second.watchers.update(moved)
        for shard in (first, second):
            for key, states in shard.watchers.items():
                slot = shard.slot_of(key)
                for state in states:
                    _, was_live = state.entries[(shard.db, key)]
                    state.entries[(shard.db, key)] = (slot, was_live)

    def capture(self) -> BucketCut:
        """This bucket's keys at this instant, per database: shallow copies of the slot
        dicts and the deadlines (values are bytes, or Edited values that the first edit
        after store.captured() copies), cheap to take and safe to write from a thread."""
        cut: BucketCut = []
        for shard in self.shards():
            slots = [slot.data.copy() for slot in shard.occupied_slots()]
            if slots:
                cut.append((shard.db, slots, shard.expires.copy()))
        return cut

    def key_count(self) -> int:
        return sum(len(shard) for shard in self.shards())

    def expire_cycle(self, budget: int = 1000) -> int:
        now = now_ms()
        expired = sum(shard.expire_due(now, budget) for shard in self.shards() if shard.expires)
        self.expired_keys += expired
        return expired


if TYPE_CHECKING:
    from dtm.buckets.protocol import LocalBucket, LocalKeys

    def _provides_the_bucket_protocol(bucket: Bucket, slot: Slot) -> tuple[LocalBucket, LocalKeys]:
        return bucket, slot  # mypy checks that the memory engine's classes conform
