"""The keyspace: the buckets, and the routing of (database, key) to the slot that owns it.

Each logical database has a routing table of 16384 entries (one per slot, built the
first time the database is used) pointing at the owning bucket's slot store, so routing
a key is one CRC and one list index.
"""

from __future__ import annotations

import random
from binascii import crc_hqx
from collections.abc import Iterator

from dtm.bucket import Bucket, Shard, Slot
from dtm.slots import HASH_TAG_OPEN, SLOTS, bucket_slot_range, key_slot, slot_owners
from dtm.store import Value

DATABASES = 16


class Keyspace:
    def __init__(self, buckets: int, databases: int = DATABASES) -> None:
        self.owners = slot_owners(buckets)
        self.buckets = [Bucket(i, bucket_slot_range(i, buckets), databases) for i in range(buckets)]
        self.databases = databases
        self._views: list[DbView | None] = [None] * databases

    def view(self, db: int) -> DbView:
        view = self._views[db]
        if view is None:
            view = self._views[db] = DbView(self, db)
        return view

    def views(self) -> Iterator[DbView]:
        """The databases that have been used (the others are empty)."""
        return (view for view in self._views if view is not None)

    def bucket_of(self, key: bytes) -> Bucket:
        return self.buckets[self.owners[key_slot(key)]]

    def swap(self, a: int, b: int) -> None:
        """SWAPDB a b: clients of either database see the other's keys at once. O(buckets
        + keys watched in the two databases), as Redis's."""
        if a == b:
            return
        first, second = self.view(a), self.view(b)
        for bucket in self.buckets:
            bucket.swap_shards(a, b)
        first.table, second.table = second.table, first.table
        first.shards, second.shards = second.shards, first.shards


class DbView:
    """One logical database as command handlers see it: keys routed to their slots."""

    __slots__ = ("keyspace", "index", "table", "shards")

    def __init__(self, keyspace: Keyspace, index: int) -> None:
        self.keyspace = keyspace
        self.index = index
        self.shards: list[Shard] = [bucket.shard(index) for bucket in keyspace.buckets]
        self.table: list[Slot] = [
            self.shards[keyspace.owners[n]].slots[n] for n in range(SLOTS)
        ]

    def slot(self, key: bytes) -> Slot:
        if HASH_TAG_OPEN in key:
            return self.table[key_slot(key)]
        return self.table[crc_hqx(key, 0) & 16383]

    def get(self, key: bytes) -> Value | None:
        if HASH_TAG_OPEN in key:
            return self.table[key_slot(key)].lookup(key)
        return self.table[crc_hqx(key, 0) & 16383].lookup(key)

    def size(self) -> int:
        return sum(shard.keys for shard in self.shards)

    def occupied_from(self, number: int) -> Iterator[Slot]:
        """The slots holding keys, from slot number on, in slot order (buckets own
        contiguous ascending ranges), found without visiting the empty ones."""
        for shard in self.shards:
            if shard.keys:
                yield from shard.occupied_slots(number)

    def random_slot(self) -> Slot | None:
        """A slot holding keys, each such slot as likely as another: O(buckets)."""
        total = sum(len(shard.occupied) for shard in self.shards)
        if not total:
            return None
        pick = random.randrange(total)
        for shard in self.shards:
            if pick < len(shard.occupied):
                return shard.slots[shard.occupied[pick]]
            pick -= len(shard.occupied)
        raise AssertionError("unreachable")

    def expiring(self) -> int:
        return sum(len(shard.expires) for shard in self.shards)

    def flush(self) -> int:
        return sum(shard.flush() for shard in self.shards)
