"""Storage engines: what a slot of a bucket stores its keys through.

The embedded default is in memory: ``dtm.bucket.Slot`` keeps a slot's values in a dict
and its shard keeps the expiry deadlines, and command handlers call ``Slot``'s small
API (``lookup``, ``store``, ``store_keep_ttl``, ``delete``, ``set_expire``, ``ttl_at``,
``touch``). ``SlotEngine`` below is that API written down; another engine (a
redis-server behind each bucket) provides the same operations, with the monitor's key
locks held across its round trips.

Values are ``bytes`` (the string type); other Redis types will be other Python types
behind the same interface.
"""

from __future__ import annotations

from typing import Protocol

Value = bytes


class SlotEngine(Protocol):
    def lookup(self, key: bytes, *, expire: bool = True) -> Value | None: ...

    def store(self, key: bytes, value: Value, expire_at: int | None = None) -> None: ...

    def store_keep_ttl(self, key: bytes, value: Value) -> None: ...

    def delete(self, key: bytes) -> bool: ...

    def set_expire(self, key: bytes, at: int | None) -> None: ...

    def ttl_at(self, key: bytes) -> int | None: ...

    def touch(self, key: bytes) -> None: ...
