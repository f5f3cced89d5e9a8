"""The snapshot format, sans-I/O: one file per bucket, and the manifest naming them.

A bucket file::

    MAGIC | u32 bucket | entries | END | u64 count | u32 CRC-32 of everything before it
    entry = 0x01 | u16 db | u32 key length | key | u32 value length | value | i64 deadline (-1: none)

The checksum covers the whole file and is checked before a single key is handed out, so
a corrupt or truncated file is refused whole, never half loaded. The manifest is JSON
with its own checksum; it is the only thing that makes a snapshot current.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterable, Iterator
from typing import Any

MAGIC = b"DTMSNAP1"
_ENTRY = struct.Struct("<BHI")
_LEN = struct.Struct("<I")
_DEADLINE = struct.Struct("<q")
_BUCKET = struct.Struct("<I")
_END = struct.Struct("<BQ")
_CRC = struct.Struct("<I")
ENTRY_TAG = 0x01
END_TAG = 0xFF
FORMAT_VERSION = 1

Entry = tuple[int, bytes, bytes, int | None]  # db, key, value, deadline (Unix ms)


class SnapshotError(Exception):
    """A snapshot file or manifest is damaged or of another format."""


class SnapshotEncoder:
    """Streams a bucket file in chunks, keeping the running checksum."""

    def __init__(self, bucket: int) -> None:
        self.crc = 0
        self.count = 0
        self._head = MAGIC + _BUCKET.pack(bucket)

    def _out(self, chunk: bytes) -> bytes:
        self.crc = zlib.crc32(chunk, self.crc)
        return chunk

    def encode(self, entries: Iterable[Entry], chunk_size: int = 1 << 20) -> Iterator[bytes]:
        yield self._out(self._head)
        parts: list[bytes] = []
        size = 0
        for db, key, value, deadline in entries:
            piece = b"".join((
                _ENTRY.pack(ENTRY_TAG, db, len(key)), key, _LEN.pack(len(value)), value,
                _DEADLINE.pack(-1 if deadline is None else deadline),
            ))
            parts.append(piece)
            size += len(piece)
            self.count += 1
            if size >= chunk_size:
                yield self._out(b"".join(parts))
                parts, size = [], 0
        if parts:
            yield self._out(b"".join(parts))
        tail = self._out(_END.pack(END_TAG, self.count))
        yield tail + _CRC.pack(self.crc)


def decode_snapshot(data: bytes) -> tuple[int, list[Entry]]:
    """(bucket, entries) of a whole bucket file; SnapshotError if anything is off."""
    if len(data) < len(MAGIC) + _BUCKET.size + _END.size + _CRC.size:
        raise SnapshotError("file too short to be a snapshot")
    if data[: len(MAGIC)] != MAGIC:
        raise SnapshotError("not a dtm snapshot (bad magic or another format version)")
    (stored_crc,) = _CRC.unpack_from(data, len(data) - _CRC.size)
    if zlib.crc32(data[: -_CRC.size]) != stored_crc:
        raise SnapshotError("checksum mismatch")
    (bucket,) = _BUCKET.unpack_from(data, len(MAGIC))
    offset = len(MAGIC) + _BUCKET.size
    end_at = len(data) - _CRC.size - _END.size
    entries: list[Entry] = []
    try:
        while offset < end_at:
            tag, db, key_len = _ENTRY.unpack_from(data, offset)
            if tag != ENTRY_TAG:
                raise SnapshotError(f"unexpected tag {tag} at offset {offset}")
            offset += _ENTRY.size
            key = data[offset : offset + key_len]
            offset += key_len
            (value_len,) = _LEN.unpack_from(data, offset)
            offset += _LEN.size
            value = data[offset : offset + value_len]
            offset += value_len
            (deadline,) = _DEADLINE.unpack_from(data, offset)
            offset += _DEADLINE.size
            entries.append((db, key, value, None if deadline < 0 else deadline))
        tag, count = _END.unpack_from(data, end_at)
    except struct.error as exc:
        raise SnapshotError(f"truncated entry: {exc}") from None
    if offset != end_at or tag != END_TAG or count != len(entries):
        raise SnapshotError("entry count or end marker does not match")
    return bucket, entries


def encode_manifest(manifest: dict[str, Any]) -> bytes:
    body = json.dumps(manifest, sort_keys=True)
    checksum = zlib.crc32(body.encode())
    return json.dumps({"manifest": manifest, "crc32": checksum}, sort_keys=True, indent=1).encode()


def decode_manifest(data: bytes) -> dict[str, Any]:
    try:
        outer = json.loads(data)
        manifest = outer["manifest"]
        checksum = outer["crc32"]
    except (ValueError, KeyError, TypeError):
        raise SnapshotError("manifest is not valid JSON of the expected shape") from None
    if zlib.crc32(json.dumps(manifest, sort_keys=True).encode()) != checksum:
        raise SnapshotError("manifest checksum mismatch")
    if manifest.get("format") != FORMAT_VERSION:
        raise SnapshotError(f"manifest format {manifest.get('format')!r}, this dtm reads {FORMAT_VERSION}")
    return dict(manifest)
