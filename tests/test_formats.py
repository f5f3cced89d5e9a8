"""Record and snapshot formats: round trips, torn tails cut, corruption refused."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modes.record import MAGIC, Problem, RecordTooLarge, encode_record, scan
from modes.snapshot import (
    SnapshotEncoder,
    SnapshotError,
    decode_manifest,
    decode_snapshot,
    encode_manifest,
)

commands = st.lists(
    st.tuples(st.integers(0, 15), st.lists(st.binary(max_size=20), min_size=1, max_size=4).map(tuple)),
    min_size=1, max_size=4,
).map(tuple)


@settings(max_examples=100, deadline=None)
@given(records=st.lists(st.tuples(st.integers(1, 2**40), st.integers(0, 2**45), commands), max_size=6))
def test_log_round_trip(records) -> None:
    data = MAGIC + b"".join(encode_record(*r) for r in records)
    result, decoded = scan(data)
    assert result.problem is Problem.NONE
    assert [(r.txid, r.time_ms, r.commands) for r in decoded] == records


def _log(n: int) -> tuple[bytes, int]:
    records = [encode_record(i, 1000 + i, ((0, (b"SET", b"k%d" % i, b"v")),)) for i in range(n)]
    data = MAGIC + b"".join(records)
    return data, len(data) - len(records[-1])


def test_truncation_at_every_offset_of_the_last_record_is_a_torn_tail() -> None:
    data, last_start = _log(5)
    for cut in range(last_start, len(data)):
        result, records = scan(data[:cut])
        assert len(records) == 4
        assert result.good_end == last_start
        assert result.problem is (Problem.NONE if cut == last_start else Problem.TORN)


def test_a_flipped_byte_anywhere_is_corrupt_even_in_the_last_record() -> None:
    """A crash cuts a file short; it does not change bytes. Only a short end is torn."""
    data, _ = _log(5)
    for position in (len(data) - 3, len(MAGIC) + 12):
        flipped = bytearray(data)
        flipped[position] ^= 0xFF
        result, _ = scan(bytes(flipped))
        assert result.problem is Problem.CORRUPT, position


def test_a_damaged_length_in_the_middle_is_corrupt_not_a_torn_tail() -> None:
    """A length that runs past the end of the file while the record's contents end
    before it is damage, not a crash mid-write: cutting there would drop every later
    record."""
    data, _ = _log(5)
    second = len(MAGIC) + len(encode_record(0, 1000, ((0, (b"SET", b"k0", b"v")),)))
    for byte in range(4):  # every byte of the second record's length field
        damaged = bytearray(data)
        damaged[second + byte] = 0xFF
        result, records = scan(bytes(damaged))
        assert (result.problem, len(records), result.good_end) == (Problem.CORRUPT, 1, second), byte


def test_records_bigger_than_the_length_field_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    import modes.record

    monkeypatch.setattr(modes.record, "MAX_RECORD", 100)
    encode_record(1, 1, ((0, (b"SET", b"k", b"v" * 10)),))
    with pytest.raises(RecordTooLarge):
        encode_record(1, 1, ((0, (b"SET", b"k", b"v" * 100)),))


def test_foreign_file_is_refused() -> None:
    result, _ = scan(b"REDIS0011" + b"\x00" * 20)
    assert result.problem is Problem.BAD_HEADER


def _snapshot(entries) -> bytes:
    return b"".join(SnapshotEncoder(3).encode(entries, chunk_size=64))


def test_snapshot_round_trip() -> None:
    entries = [(0, b"k%d" % i, b"v" * i, None if i % 2 else 10**12 + i) for i in range(100)]
    bucket, decoded = decode_snapshot(_snapshot(entries))
    assert bucket == 3 and decoded == entries


def test_snapshot_damage_anywhere_is_refused_whole() -> None:
    data = _snapshot([(1, b"key", b"value", None), (2, b"other", b"x", 5)])
    for position in range(len(data)):
        damaged = bytearray(data)
        damaged[position] ^= 0x01
        with pytest.raises(SnapshotError):
            decode_snapshot(bytes(damaged))
    for cut in range(len(data)):
        with pytest.raises(SnapshotError):
            decode_snapshot(data[:cut])


def test_manifest_checksum() -> None:
    manifest = {"format": 1, "seq": 2, "files": [], "keys": 0}
    assert decode_manifest(encode_manifest(manifest)) == manifest
    tampered = encode_manifest(manifest).replace(b'"seq": 2', b'"seq": 3')
    with pytest.raises(SnapshotError, match="checksum"):
        decode_manifest(tampered)
