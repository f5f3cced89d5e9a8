"""Key → slot → bucket, exactly as Redis Cluster: CRC16-XMODEM of the key (or of its
``{hash tag}``) modulo 16384; buckets own contiguous slot ranges."""

from __future__ import annotations

from binascii import crc_hqx  # CRC-CCITT; with initial value 0 it is CRC16-XMODEM

SLOTS = 16384
# "{" as an int: `int in bytes` is a memchr, while `bytes in bytes` first tries the
# argument as an int and builds (then drops) a TypeError, ~8x slower on the hot path.
HASH_TAG_OPEN = ord("{")


def hash_tag(key: bytes) -> bytes:
    """The part of the key that is hashed: the first non-empty ``{...}``, else the key."""
    start = key.find(b"{")
    if start >= 0:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            return key[start + 1 : end]
    return key


def key_slot(key: bytes) -> int:
    if HASH_TAG_OPEN in key:
        key = hash_tag(key)
    return crc_hqx(key, 0) & (SLOTS - 1)


def slot_owners(buckets: int) -> list[int]:
    """For each slot, the index of the bucket that owns it (even contiguous ranges)."""
    if not 1 <= buckets <= SLOTS:
        raise ValueError(f"bucket count must be between 1 and {SLOTS}")
    return [slot * buckets // SLOTS for slot in range(SLOTS)]


def bucket_slot_range(bucket: int, buckets: int) -> range:
    owners = slot_owners(buckets)
    slots = [s for s, owner in enumerate(owners) if owner == bucket]
    return range(slots[0], slots[-1] + 1)
