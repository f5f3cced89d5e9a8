"""The binlog's record format, sans-I/O (no trio, no files).

A log file is ``MAGIC`` followed by records; each record is one committed write (a
single command or a whole transaction, whatever buckets it spans)::

    u32 payload length | u32 CRC-32 of payload | payload
    payload = u64 txid | i64 time_ms | u32 commands | commands × (u16 db | u32 argc | argc × (u32 len | bytes))

``scan`` reads a log image and says where the good records end and why it stopped. Only
a *torn* end may be cut: the last record runs past the end of the file and what is
there of it is an unfinished record (a crash mid-write). Anything else is *corrupt* and
refused, as Redis refuses an AOF with "Bad file format": a checksum mismatch even in
the last record (a crash cuts a file short, it does not change bytes), and a length
that runs past the end while the record's own contents end before it (a damaged length
field in the middle of the log must not pass for a torn tail and cut what follows).

A record is at most ``MAX_RECORD`` bytes: ``encode_record`` refuses a bigger one (the
binlog then refuses the transaction before applying or acknowledging it).
"""

from __future__ import annotations

import enum
import struct
import zlib
from collections.abc import Iterator

import attrs

MAGIC = b"DTMLOG01"
_HEAD = struct.Struct("<II")
_TX = struct.Struct("<QqI")
_CMD = struct.Struct("<HI")
_LEN = struct.Struct("<I")
MAX_RECORD = 1 << 31


class RecordTooLarge(ValueError):
    """A write whose record would not fit the format's u32 length."""


@attrs.frozen
class LogRecord:
    txid: int
    time_ms: int
    commands: tuple[tuple[int, tuple[bytes, ...]], ...]


def encode_record(txid: int, time_ms: int, commands: tuple[tuple[int, tuple[bytes, ...]], ...]) -> bytes:
    parts = [_TX.pack(txid, time_ms, len(commands))]
    for db, argv in commands:
        parts.append(_CMD.pack(db, len(argv)))
        for arg in argv:
            parts.append(_LEN.pack(len(arg)))
            parts.append(arg)
    payload = b"".join(parts)
    if len(payload) > MAX_RECORD:
        raise RecordTooLarge(f"{len(payload)} bytes, the record limit is {MAX_RECORD}")
    return _HEAD.pack(len(payload), zlib.crc32(payload)) + payload


def _ends_within(partial: bytes) -> bool:
    """True when partial (the bytes after a record header, up to the end of the file)
    already holds a whole payload: then the record is not unfinished, its length is
    damaged."""
    if len(partial) < _TX.size:
        return False
    _, _, count = _TX.unpack_from(partial, 0)
    offset = _TX.size
    for _ in range(count):
        if offset + _CMD.size > len(partial):
            return False
        _, argc = _CMD.unpack_from(partial, offset)
        offset += _CMD.size
        for _ in range(argc):
            if offset + _LEN.size > len(partial):
                return False
            (size,) = _LEN.unpack_from(partial, offset)
            offset += _LEN.size + size
            if offset > len(partial):
                return False
    return True


def decode_payload(payload: bytes) -> LogRecord:
    txid, time_ms, count = _TX.unpack_from(payload, 0)
    offset = _TX.size
    commands = []
    for _ in range(count):
        db, argc = _CMD.unpack_from(payload, offset)
        offset += _CMD.size
        argv = []
        for _ in range(argc):
            (size,) = _LEN.unpack_from(payload, offset)
            offset += _LEN.size
            if offset + size > len(payload):
                raise ValueError("argument runs past its record")
            argv.append(payload[offset : offset + size])
            offset += size
        commands.append((db, tuple(argv)))
    if offset != len(payload):
        raise ValueError("trailing bytes in record")
    return LogRecord(txid, time_ms, tuple(commands))


class Problem(enum.Enum):
    NONE = "none"
    TORN = "torn"  # the last record is incomplete: cut it
    CORRUPT = "corrupt"  # a bad record with data after it: refuse
    BAD_HEADER = "bad-header"  # not a dtm log (or another format version)


@attrs.frozen
class ScanResult:
    records: int
    good_end: int  # offset just past the last good record
    problem: Problem
    detail: str = ""


def scan(data: bytes) -> tuple[ScanResult, list[LogRecord]]:
    """Every good record of a log image, and where and why reading stopped."""
    if data[: len(MAGIC)] != MAGIC:
        if len(data) < len(MAGIC) and MAGIC.startswith(data):
            return ScanResult(0, 0, Problem.TORN, "log header incomplete"), []
        return ScanResult(0, 0, Problem.BAD_HEADER, "not a dtm binlog (bad magic)"), []
    records: list[LogRecord] = []
    offset = len(MAGIC)
    for record, end, problem, detail in _iterate(data, offset):
        if problem is not Problem.NONE:
            return ScanResult(len(records), offset, problem, detail), records
        assert record is not None
        records.append(record)
        offset = end
    return ScanResult(len(records), offset, Problem.NONE), records


def _iterate(data: bytes, offset: int) -> Iterator[tuple[LogRecord | None, int, Problem, str]]:
    total = len(data)
    while offset < total:
        if offset + _HEAD.size > total:
            yield None, offset, Problem.TORN, f"record header cut short at offset {offset}"
            return
        size, checksum = _HEAD.unpack_from(data, offset)
        end = offset + _HEAD.size + size
        if size > MAX_RECORD:
            yield None, offset, Problem.CORRUPT, f"impossible record length at offset {offset}"
            return
        if end > total:
            if _ends_within(data[offset + _HEAD.size :]):
                yield None, offset, Problem.CORRUPT, (
                    f"record at offset {offset} claims {size} bytes, past the end of the file, "
                    f"but its contents end before: damaged length"
                )
            else:
                yield None, offset, Problem.TORN, f"record at offset {offset} runs past the end of the file"
            return
        payload = data[offset + _HEAD.size : end]
        if zlib.crc32(payload) != checksum:
            yield None, offset, Problem.CORRUPT, f"checksum mismatch in record at offset {offset}"
            return
        try:
            record = decode_payload(payload)
        except (ValueError, struct.error) as exc:
            yield None, offset, Problem.CORRUPT, f"record at offset {offset}: {exc}"
            return
        yield record, end, Problem.NONE, ""
        offset = end
