"""Bit commands on strings (Redis's bitops.c): SETBIT, GETBIT, BITCOUNT, BITPOS, BITOP,
BITFIELD and BITFIELD_RO.

Bit 0 is the most significant bit of the first byte. A value is bytes, or a bytearray
that SETBIT (like APPEND and SETRANGE) edits in place so that setting one bit of a large
value costs what it costs in Redis. Scans run in C (``re`` and ``int.bit_count`` over
bounded chunks) and are O(n) in the range, as Redis's are.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, cast

import attrs

from dtm.commands.args import integer
from dtm.commands.table import command
from dtm.errors import SYNTAX, err
from dtm.resp import parse_int
from dtm.store import editable

if TYPE_CHECKING:
    from dtm.commands.context import DataContext

GROUP = "bitmap"

BIT_OFFSET = err("bit offset is not an integer or out of range")
BIT_VALUE = err("bit is not an integer or out of range")
# A byte holding none of the bits looked for, per bit value (BITPOS).
_INTERESTING = {1: re.compile(rb"[^\x00]"), 0: re.compile(rb"[^\xff]")}
_NOT = bytes(255 - i for i in range(256))
# BITPOS compares this much at a time with a run of boring bytes (memcmp speed) and
# searches byte by byte only the chunk that differs: a regex over a long run of zeros is
# far slower than Redis's scan, and the event loop waits for it.
_SCAN = 1 << 16
_BORING = {1: bytes(_SCAN), 0: b"\xff" * _SCAN}
_CHUNK = 1 << 20  # popcount this many bytes at a time: no copy of a whole large value


def bit_offset(s: DataContext, raw: bytes) -> int:
    """A bit offset within proto-max-bulk-len bytes (Redis's getBitOffsetFromArgument)."""
    offset = parse_int(raw) if len(raw) <= 20 else None
    if offset is None or offset < 0 or offset >= s.config.proto_max_bulk_len * 8:
        raise BIT_OFFSET
    return offset


@command("setbit", 4, "write denyoom", keys=(1, 1, 1), group=GROUP, summary="Set or clear the bit at offset", since="2.2.0")
def setbit(s: DataContext, argv: list[bytes]) -> Any:
    key = argv[1]
    offset = bit_offset(s, argv[2])
    on = parse_int(argv[3]) if len(argv[3]) <= 20 else None
    if on is None or on not in (0, 1):
        raise BIT_VALUE
    slot = s.db.slot(key)
    old = slot.lookup(key)
    index, mask = offset >> 3, 0x80 >> (offset & 7)
    value = editable(old)  # edited in place (copy-on-write, dtm/store.py): O(1) per bit
    if len(value) <= index:
        value.extend(bytes(index + 1 - len(value)))
    previous = 1 if value[index] & mask else 0
    if on:
        value[index] |= mask
    else:
        value[index] &= ~mask
    # A bytearray value, as APPEND and SETRANGE leave (replies encode it as bytes).
    stored = cast(bytes, value)
    if old is None:
        slot.store(key, stored)
    else:
        slot.store_keep_ttl(key, stored)
    return previous


@command("getbit", 3, "readonly fast", keys=(1, 1, 1), group=GROUP, summary="The bit at offset", since="2.2.0")
def getbit(s: DataContext, argv: list[bytes]) -> Any:
    offset = bit_offset(s, argv[2])
    value = s.db.get(argv[1])
    index = offset >> 3
    if value is None or index >= len(value):
        return 0
    return 1 if value[index] & (0x80 >> (offset & 7)) else 0


def _bit_range(size: int, start: int, end: int, in_bits: bool) -> tuple[int, int]:
    """An inclusive range of bit indexes, from a byte or bit range with Redis's
    negative-index rules; empty when the first exceeds the second."""
    total = size * 8 if in_bits else size
    if start < 0:
        start = max(total + start, 0)
    if end < 0:
        end = max(total + end, 0)
    end = min(end, total - 1)
    if in_bits:
        return start, end
    return start * 8, end * 8 + 7


def _unit(raw: bytes) -> bool:
    """BYTE or BIT: True for bits."""
    unit = raw.lower()
    if unit == b"bit":
        return True
    if unit == b"byte":
        return False
    raise SYNTAX


def _popcount(value: bytes | bytearray, first: int, last: int) -> int:
    """Set bits in bytes first..last inclusive."""
    view = memoryview(value)
    count = 0
    for at in range(first, last + 1, _CHUNK):
        count += int.from_bytes(view[at : min(at + _CHUNK, last + 1)], "big").bit_count()
    return count


@command("bitcount", -2, "readonly", keys=(1, 1, 1), group=GROUP, summary="Count set bits", since="2.6.0")
def bitcount(s: DataContext, argv: list[bytes]) -> Any:
    value = s.db.get(argv[1])
    if value is None:
        return 0  # Redis answers before it reads the range
    if len(argv) == 2:
        return _popcount(value, 0, len(value) - 1)
    if len(argv) not in (4, 5):
        raise SYNTAX
    start, end = integer(argv[2]), integer(argv[3])
    if start < 0 and end < 0 and start > end:
        return 0
    in_bits = _unit(argv[4]) if len(argv) == 5 else False
    first, last = _bit_range(len(value), start, end, in_bits)
    if first > last:
        return 0
    lo, hi = first >> 3, last >> 3
    count = _popcount(value, lo, hi)
    # Bits of the edge bytes outside the range.
    count -= (value[lo] >> (8 - (first & 7))).bit_count()
    count -= (value[hi] & ((1 << (7 - (last & 7))) - 1)).bit_count()
    return count


def _first_in_byte(byte: int, bit: int, first: int, last: int) -> int | None:
    """The first position (0 = most significant) in first..last holding bit."""
    for pos in range(first, last + 1):
        if ((byte >> (7 - pos)) & 1) == bit:
            return pos
    return None


def _first_interesting(value: bytes | bytearray, bit: int, lo: int, hi: int) -> int | None:
    """The index of the first byte in lo..hi-1 holding bit, if any."""
    boring = _BORING[bit]
    for at in range(lo, hi, _SCAN):
        end = min(at + _SCAN, hi)
        if value[at:end] != boring[: end - at]:
            match = _INTERESTING[bit].search(value, at, end)
            return match.start() if match is not None else None
    return None


def _find_bit(value: bytes | bytearray, bit: int, first: int, last: int) -> int | None:
    """The index of the first bit equal to bit within bit indexes first..last."""
    lo, hi = first >> 3, last >> 3
    found = _first_in_byte(value[lo], bit, first & 7, 7 if hi > lo else last & 7)
    if found is not None:
        return lo * 8 + found
    if hi == lo:
        return None
    if hi - lo > 1:
        at = _first_interesting(value, bit, lo + 1, hi)
        if at is not None:
            return at * 8 + (_first_in_byte(value[at], bit, 0, 7) or 0)
    found = _first_in_byte(value[hi], bit, 0, last & 7)
    return None if found is None else hi * 8 + found


@command("bitpos", -3, "readonly", keys=(1, 1, 1), group=GROUP, summary="The first set or clear bit", since="2.8.7")
def bitpos(s: DataContext, argv: list[bytes]) -> Any:
    bit = integer(argv[2])
    if bit not in (0, 1):
        raise err("The bit argument must be 1 or 0.")
    value = s.db.get(argv[1])
    if value is None:
        return -1 if bit else 0  # a missing key is an endless run of zeros
    if len(argv) > 6:
        raise SYNTAX
    end_given = len(argv) >= 5
    if len(argv) == 3:
        first, last = 0, len(value) * 8 - 1
    else:
        start = integer(argv[3])
        in_bits = _unit(argv[5]) if len(argv) == 6 else False
        end = integer(argv[4]) if end_given else (len(value) * 8 + 7 if in_bits else len(value) - 1)
        first, last = _bit_range(len(value), start, end, in_bits)
    if first > last:
        return -1
    found = _find_bit(value, bit, first, last)
    if found is not None:
        return found
    if bit == 0 and not end_given:
        # Without an explicit end the string is taken as padded with zeros on the right.
        return (last | 7) + 1
    return -1


@command("bitop", -4, "write denyoom", keys=(2, -1, 1), group=GROUP, summary="Bitwise operations between strings", since="2.6.0")
def bitop(s: DataContext, argv: list[bytes]) -> Any:
    operation = argv[1].lower()
    if operation not in (b"and", b"or", b"xor", b"not"):
        raise SYNTAX
    if operation == b"not" and len(argv) != 4:
        raise err("BITOP NOT must be called with a single source key.")
    get = s.db.get
    sources = [get(key) or b"" for key in argv[3:]]
    size = max(len(value) for value in sources)
    target = argv[2]
    slot = s.db.slot(target)
    if size == 0:
        slot.delete(target)
        return 0
    if operation == b"not":
        result = bytes(sources[0]).translate(_NOT)
    else:
        # Shorter strings are padded with zero bytes on the right, as Redis does.
        numbers = [int.from_bytes(value, "big") << (8 * (size - len(value))) for value in sources]
        acc = numbers[0]
        if operation == b"and":
            for number in numbers[1:]:
                acc &= number
        elif operation == b"or":
            for number in numbers[1:]:
                acc |= number
        else:
            for number in numbers[1:]:
                acc ^= number
        result = acc.to_bytes(size, "big")
    slot.store(target, result)
    return size



# ------------------------------------------------------------------ BITFIELD

BITFIELD_TYPE = err(
    "Invalid bitfield type. Use something like i16 u8. Note that u64 is not supported but i64 is."
)
_WRAP, _SAT, _FAIL = b"wrap", b"sat", b"fail"
_GET, _SET, _INCRBY = b"get", b"set", b"incrby"
_U64 = 1 << 64


def _int64(value: int) -> int:
    """value as C's int64_t arithmetic leaves it (two's complement wrap-around)."""
    return ((value + (1 << 63)) % _U64) - (1 << 63)


def _bitfield_type(raw: bytes) -> tuple[bool, int]:
    """``i1``..``i64`` or ``u1``..``u63``: (signed, bits) (getBitfieldTypeFromArgument)."""
    sign = raw[:1]
    if sign not in (b"i", b"u"):
        raise BITFIELD_TYPE
    digits = raw[1:].split(b"\0", 1)[0]  # Redis measures the width with strlen
    bits = parse_int(digits) if len(digits) <= 20 else None
    if bits is None or not 1 <= bits <= (64 if sign == b"i" else 63):
        raise BITFIELD_TYPE
    return sign == b"i", bits


def _bitfield_offset(s: DataContext, raw: bytes, bits: int) -> int:
    """A bit offset, or ``#n`` meaning n fields of this width (getBitOffsetFromArgument)."""
    by_field = raw[:1] == b"#"
    digits = raw[1:] if by_field else raw
    offset = parse_int(digits) if len(digits) <= 20 else None
    if offset is None:
        raise BIT_OFFSET
    if by_field:
        offset = _int64(offset * bits)  # Redis multiplies in int64 and then range-checks
    if offset < 0 or offset >> 3 >= s.config.proto_max_bulk_len:
        raise BIT_OFFSET
    return offset


def _read_field(value: bytes | bytearray, offset: int, bits: int) -> int:
    """The unsigned field at offset; bytes past the end read as zeros."""
    first, last = offset >> 3, (offset + bits - 1) >> 3
    size = last - first + 1
    chunk = value[first : last + 1]
    number = int.from_bytes(chunk, "big") << (8 * (size - len(chunk)))
    return (number >> (size * 8 - (offset & 7) - bits)) & ((1 << bits) - 1)


def _write_field(value: bytearray, offset: int, bits: int, field: int) -> None:
    """Store the low bits of field at offset (value is long enough)."""
    first, last = offset >> 3, (offset + bits - 1) >> 3
    size = last - first + 1
    shift = size * 8 - (offset & 7) - bits
    mask = ((1 << bits) - 1) << shift
    number = int.from_bytes(value[first : last + 1], "big")
    number = (number & ~mask) | ((field << shift) & mask)
    value[first : last + 1] = number.to_bytes(size, "big")


def _signed(field: int, bits: int) -> int:
    return field - (1 << bits) if field >> (bits - 1) else field


def _signed_result(value: int, incr: int, bits: int, overflow: bytes) -> tuple[bool, int]:
    """(overflowed, result) of value+incr in a signed field, as Redis's
    checkSignedBitfieldOverflow decides it, int64 wrap-arounds included."""
    top = (1 << 63) - 1 if bits == 64 else (1 << (bits - 1)) - 1
    bottom = -top - 1
    max_incr, min_incr = _int64(top - value), _int64(bottom - value)
    if value > top or (bits != 64 and incr > max_incr) or (value >= 0 and 0 < incr and incr > max_incr):
        limit = top
    elif value < bottom or (bits != 64 and incr < min_incr) or (value < 0 and incr < 0 and incr < min_incr):
        limit = bottom
    else:
        return False, value + incr
    if overflow == _WRAP:
        total = (value + incr) % _U64
        limit = _signed(total % (1 << bits), bits) if bits < 64 else _int64(total)
    return True, limit


def _unsigned_result(value: int, incr: int, bits: int, overflow: bytes) -> tuple[bool, int]:
    """(overflowed, result) of value+incr in an unsigned field (value is a uint64), as
    Redis's checkUnsignedBitfieldOverflow decides it."""
    top = (1 << bits) - 1
    if value > top or (incr > 0 and incr > _int64(top - value)):
        limit = top
    elif incr < 0 and incr < _int64(-value):
        limit = 0
    else:
        return False, value + incr
    if overflow == _WRAP:
        limit = (value + incr) % _U64 & top
    return True, limit


@attrs.frozen
class _FieldOp:
    op: bytes  # _GET, _SET or _INCRBY
    signed: bool
    bits: int
    offset: int
    argument: int  # SET's value or INCRBY's increment
    overflow: bytes


def _bitfield_ops(s: DataContext, argv: list[bytes]) -> list[_FieldOp]:
    """Every operation, parsed and checked before any runs (errors in any one refuse
    the whole command, as Redis)."""
    ops: list[_FieldOp] = []
    overflow = _WRAP
    j = 2
    while j < len(argv):
        remaining = len(argv) - j - 1
        name = argv[j].lower()
        if name == b"overflow" and remaining >= 1:
            overflow = argv[j + 1].lower()
            if overflow not in (_WRAP, _SAT, _FAIL):
                raise err("Invalid OVERFLOW type specified")
            j += 2
            continue
        if not ((name == _GET and remaining >= 2) or (name in (_SET, _INCRBY) and remaining >= 3)):
            raise SYNTAX
        signed, bits = _bitfield_type(argv[j + 1])
        offset = _bitfield_offset(s, argv[j + 2], bits)
        argument = 0 if name == _GET else integer(argv[j + 3])
        ops.append(_FieldOp(name, signed, bits, offset, argument, overflow))
        j += 3 if name == _GET else 4
    return ops


def _bitfield(s: DataContext, argv: list[bytes], read_only: bool) -> Any:
    ops = _bitfield_ops(s, argv)
    writes = [op for op in ops if op.op != _GET]
    key = argv[1]
    if not writes:
        current = s.db.get(key) or b""  # a missing key reads as zeros and is not created
        return [
            _signed(_read_field(current, op.offset, op.bits), op.bits) if op.signed
            else _read_field(current, op.offset, op.bits)
            for op in ops
        ]
    if read_only:
        raise err("BITFIELD_RO only supports the GET subcommand")
    slot = s.db.slot(key)
    old = slot.lookup(key)
    # Like SETBIT: a bytearray value is edited in place; the key grows (or is created)
    # to hold the farthest bit any write reaches, even if every write then fails.
    buffer = editable(old)
    size = max(op.offset + op.bits - 1 for op in writes) // 8 + 1
    changed = old is None or len(buffer) < size
    if len(buffer) < size:
        buffer.extend(bytes(size - len(buffer)))
    replies: list[Any] = []
    for op in ops:
        field = _read_field(buffer, op.offset, op.bits)
        if op.op == _GET:
            replies.append(_signed(field, op.bits) if op.signed else field)
            continue
        previous = _signed(field, op.bits) if op.signed else field
        if op.op == _INCRBY:
            start, incr = previous, op.argument
        elif op.signed:
            start, incr = op.argument, 0
        else:
            start, incr = op.argument % _U64, 0  # Redis takes the value as a uint64
        check = _signed_result if op.signed else _unsigned_result
        overflowed, result = check(start, incr, op.bits, op.overflow)
        if overflowed and op.overflow == _FAIL:
            replies.append(None)
            continue
        replies.append(result if op.op == _INCRBY else previous)
        _write_field(buffer, op.offset, op.bits, result % (1 << op.bits))
        changed = changed or result != previous
    if changed:
        stored = cast(bytes, buffer)  # a bytearray value (replies encode it as bytes)
        if old is None:
            slot.store(key, stored)
        else:
            slot.store_keep_ttl(key, stored)
    return replies


@command("bitfield", -2, "write denyoom", keys=(1, 1, 1), group=GROUP, summary="Perform arbitrary bitfield integer operations on strings", since="3.2.0")
def bitfield(s: DataContext, argv: list[bytes]) -> Any:
    return _bitfield(s, argv, read_only=False)


@command("bitfield_ro", -2, "readonly fast", keys=(1, 1, 1), group=GROUP, summary="Perform arbitrary bitfield integer operations on strings. Read-only variant of BITFIELD", since="6.0.0")
def bitfield_ro(s: DataContext, argv: list[bytes]) -> Any:
    return _bitfield(s, argv, read_only=True)
