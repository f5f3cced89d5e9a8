"""String commands: GET/SET and friends, counters, ranges, multi-key MGET/MSET/MSETNX."""

from __future__ import annotations

from binascii import crc_hqx
from fractions import Fraction
from typing import TYPE_CHECKING, Any

from dtm import clock
from dtm.commands.args import (
    LLONG_MAX,
    LLONG_MIN,
    add_long_doubles,
    expire_deadline,
    format_long_double,
    integer,
    long_double,
)
from dtm.commands.table import command
from dtm.errors import NOT_INTEGER, OVERFLOW, SYNTAX, err, wrong_arity
from dtm.resp import parse_int
from dtm.slots import HASH_TAG_OPEN
from dtm.store import editable

if TYPE_CHECKING:
    from dtm.commands.context import DataContext

GROUP = "string"

_EXPIRE_UNITS = {b"ex": (1000, False), b"px": (1, False), b"exat": (1000, True), b"pxat": (1, True)}


def _check_length(s: DataContext, length: int) -> None:
    if length > s.config.proto_max_bulk_len:
        raise err("string exceeds maximum allowed size (proto-max-bulk-len)")


@command("get", 2, "readonly fast", keys=(1, 1, 1), group=GROUP, summary="Get the value of a key")
def get(s: DataContext, argv: list[bytes]) -> Any:
    key = argv[1]
    if HASH_TAG_OPEN in key:
        return s.db.get(key)
    # the hottest path there is: DbView.get and Slot.lookup, inlined
    slot = s.db.table[crc_hqx(key, 0) & 16383]
    value = slot.data.get(key)
    if value is not None and slot.expires:
        return slot.lookup(key)
    return value


def _same_unit(expiry: tuple[bytes, bytes] | None, option: bytes) -> bool:
    """Whether an expiry option may follow what was given: Redis lets one unit repeat
    (its last value wins) and refuses a second unit."""
    return expiry is None or expiry[0] == option


@command("set", -3, "write denyoom", keys=(1, 1, 1), group=GROUP, summary="Set the string value of a key")
def set_(s: DataContext, argv: list[bytes]) -> Any:
    key, value = argv[1], argv[2]
    if len(argv) == 3:  # the common case, kept short
        slot = s.db.table[crc_hqx(key, 0) & 16383] if HASH_TAG_OPEN not in key else s.db.slot(key)
        slot.store(key, value)
        return "OK"
    nx = xx = want_get = keep_ttl = False
    expiry: tuple[bytes, bytes] | None = None
    i = 3
    while i < len(argv):
        option = argv[i].lower()
        has_next = i + 1 < len(argv)
        if option == b"nx" and not xx:
            nx = True
        elif option == b"xx" and not nx:
            xx = True
        elif option == b"get":
            want_get = True
        elif option == b"keepttl" and expiry is None:
            keep_ttl = True
        elif option in _EXPIRE_UNITS and not keep_ttl and _same_unit(expiry, option) and has_next:
            expiry = (option, argv[i + 1])
            i += 1
        else:
            raise SYNTAX
        i += 1
    deadline, absolute = None, False
    if expiry is not None:
        unit, absolute = _EXPIRE_UNITS[expiry[0]]
        deadline = expire_deadline(expiry[1], unit, absolute, "set")
    slot = s.db.slot(key)
    old = slot.lookup(key)
    if (nx and old is not None) or (xx and old is None):
        return old if want_get else None
    if keep_ttl:
        slot.store_keep_ttl(key, value)
    else:
        slot.store(key, value, deadline)
    if absolute and deadline is not None and deadline <= clock.now_ms():
        slot.delete(key)  # EXAT/PXAT in the past: set, then expired at once (a TTL is > 0)
    return old if want_get else "OK"


@command("setnx", 3, "write denyoom fast", keys=(1, 1, 1), group=GROUP, summary="Set a key only if it does not exist")
def setnx(s: DataContext, argv: list[bytes]) -> Any:
    slot = s.db.slot(argv[1])
    if slot.lookup(argv[1]) is not None:
        return 0
    slot.store(argv[1], argv[2])
    return 1


def _set_with_ttl(s: DataContext, argv: list[bytes], unit: int, name: str) -> Any:
    deadline = expire_deadline(argv[2], unit, False, name)
    s.db.slot(argv[1]).store(argv[1], argv[3], deadline)
    return "OK"


@command("setex", 4, "write denyoom", keys=(1, 1, 1), group=GROUP, summary="Set a key with a TTL in seconds")
def setex(s: DataContext, argv: list[bytes]) -> Any:
    return _set_with_ttl(s, argv, 1000, "setex")


@command("psetex", 4, "write denyoom", keys=(1, 1, 1), group=GROUP, summary="Set a key with a TTL in ms")
def psetex(s: DataContext, argv: list[bytes]) -> Any:
    return _set_with_ttl(s, argv, 1, "psetex")


@command("getset", 3, "write denyoom fast", keys=(1, 1, 1), group=GROUP, summary="Set a key and return its old value")
def getset(s: DataContext, argv: list[bytes]) -> Any:
    slot = s.db.slot(argv[1])
    old = slot.lookup(argv[1])
    slot.store(argv[1], argv[2])
    return old


@command("getdel", 2, "write fast", keys=(1, 1, 1), group=GROUP, summary="Get a key's value and delete it", since="6.2.0")
def getdel(s: DataContext, argv: list[bytes]) -> Any:
    slot = s.db.slot(argv[1])
    old = slot.lookup(argv[1])
    if old is not None:
        slot.delete(argv[1])
    return old


@command("getex", -2, "write fast", keys=(1, 1, 1), group=GROUP, summary="Get a key's value and set its TTL", since="6.2.0")
def getex(s: DataContext, argv: list[bytes]) -> Any:
    key = argv[1]
    persist = False
    expiry: tuple[bytes, bytes] | None = None
    i = 2
    while i < len(argv):
        option = argv[i].lower()
        if option in _EXPIRE_UNITS and _same_unit(expiry, option) and not persist and i + 1 < len(argv):
            expiry = (option, argv[i + 1])
            i += 1
        elif option == b"persist" and expiry is None:
            persist = True
        else:
            raise SYNTAX
        i += 1
    slot = s.db.slot(key)
    value = slot.lookup(key)
    if value is None:  # Redis looks the key up before it validates the expiry
        return None
    deadline, absolute = None, False
    if expiry is not None:
        unit, absolute = _EXPIRE_UNITS[expiry[0]]
        deadline = expire_deadline(expiry[1], unit, absolute, "getex")
    if deadline is not None:
        if absolute and deadline <= clock.now_ms():  # a relative TTL is > 0
            slot.delete(key)
        else:
            slot.set_expire(key, deadline)
    elif persist and slot.ttl_at(key) is not None:
        slot.set_expire(key, None)
    return value


@command("mget", -2, "readonly fast", keys=(1, -1, 1), group=GROUP, summary="Get the values of several keys")
def mget(s: DataContext, argv: list[bytes]) -> Any:
    get_ = s.db.get
    return [get_(key) for key in argv[1:]]


@command("mset", -3, "write denyoom", keys=(1, -1, 2), group=GROUP, summary="Set several keys")
def mset(s: DataContext, argv: list[bytes]) -> Any:
    if len(argv) % 2 == 0:
        raise wrong_arity("mset")
    route = s.db.slot
    for i in range(1, len(argv), 2):
        route(argv[i]).store(argv[i], argv[i + 1])
    return "OK"


@command("msetnx", -3, "write denyoom", keys=(1, -1, 2), group=GROUP, summary="Set several keys if none exists")
def msetnx(s: DataContext, argv: list[bytes]) -> Any:
    if len(argv) % 2 == 0:
        raise wrong_arity("msetnx")
    if any(s.db.get(argv[i]) is not None for i in range(1, len(argv), 2)):
        return 0
    mset(s, argv)
    return 1


@command("append", 3, "write denyoom fast", keys=(1, 1, 1), group=GROUP, summary="Append to a key's value")
def append(s: DataContext, argv: list[bytes]) -> Any:
    key = argv[1]
    slot = s.db.slot(key)
    old = slot.lookup(key)
    if old is None:
        slot.store(key, argv[2])
        return len(argv[2])
    _check_length(s, len(old) + len(argv[2]))
    value = editable(old)  # grown in place: amortized O(len(argument)), as Redis's sds
    value.extend(argv[2])
    slot.store_keep_ttl(key, value)  # type: ignore[arg-type]  # an Edited value
    return len(value)


@command("strlen", 2, "readonly fast", keys=(1, 1, 1), group=GROUP, summary="Length of a key's value", since="2.2.0")
def strlen(s: DataContext, argv: list[bytes]) -> Any:
    value = s.db.get(argv[1])
    return 0 if value is None else len(value)


def _getrange(s: DataContext, argv: list[bytes]) -> Any:
    start, end = integer(argv[2]), integer(argv[3])
    value = s.db.get(argv[1]) or b""
    size = len(value)
    if start < 0 and end < 0 and start > end:
        return b""
    if start < 0:
        start = max(size + start, 0)
    if end < 0:
        end = max(size + end, 0)
    end = min(end, size - 1)
    if start > end or size == 0:
        return b""
    return value[start : end + 1]


command("getrange", 4, "readonly", keys=(1, 1, 1), group=GROUP, summary="A substring of a key's value", since="2.4.0")(_getrange)
command("substr", 4, "readonly", keys=(1, 1, 1), group=GROUP, summary="A substring of a key's value")(_getrange)


@command("setrange", 4, "write denyoom", keys=(1, 1, 1), group=GROUP, summary="Overwrite part of a key's value", since="2.2.0")
def setrange(s: DataContext, argv: list[bytes]) -> Any:
    key, patch = argv[1], argv[3]
    offset = integer(argv[2])
    if offset < 0:
        raise err("offset is out of range")
    slot = s.db.slot(key)
    old = slot.lookup(key)
    if not patch:
        return 0 if old is None else len(old)
    _check_length(s, offset + len(patch))
    value = editable(old)  # patched in place: O(len(patch)) once the value is editable
    if len(value) < offset:
        value.extend(bytes(offset - len(value)))
    value[offset : offset + len(patch)] = patch
    if old is None:
        slot.store(key, value)  # type: ignore[arg-type]  # an Edited value
    else:
        slot.store_keep_ttl(key, value)  # type: ignore[arg-type]
    return len(value)


def _increment(s: DataContext, key: bytes, delta: int) -> int:
    slot = s.db.slot(key)
    old = slot.lookup(key)
    current = 0
    if old is not None:
        parsed = parse_int(old) if len(old) <= 20 else None
        if parsed is None:
            raise NOT_INTEGER
        current = parsed
    result = current + delta
    if not LLONG_MIN <= result <= LLONG_MAX:
        raise OVERFLOW
    if old is None:
        slot.store(key, b"%d" % result)
    else:
        slot.store_keep_ttl(key, b"%d" % result)
    return result


@command("incr", 2, "write denyoom fast", keys=(1, 1, 1), group=GROUP, summary="Increment a counter by one")
def incr(s: DataContext, argv: list[bytes]) -> Any:
    return _increment(s, argv[1], 1)


@command("decr", 2, "write denyoom fast", keys=(1, 1, 1), group=GROUP, summary="Decrement a counter by one")
def decr(s: DataContext, argv: list[bytes]) -> Any:
    return _increment(s, argv[1], -1)


@command("incrby", 3, "write denyoom fast", keys=(1, 1, 1), group=GROUP, summary="Increment a counter")
def incrby(s: DataContext, argv: list[bytes]) -> Any:
    return _increment(s, argv[1], integer(argv[2]))


@command("decrby", 3, "write denyoom fast", keys=(1, 1, 1), group=GROUP, summary="Decrement a counter")
def decrby(s: DataContext, argv: list[bytes]) -> Any:
    delta = integer(argv[2])
    if delta == LLONG_MIN:
        raise err("decrement would overflow")
    return _increment(s, argv[1], -delta)


@command("incrbyfloat", 3, "write denyoom fast", keys=(1, 1, 1), group=GROUP, summary="Increment a float", since="2.6.0")
def incrbyfloat(s: DataContext, argv: list[bytes]) -> Any:
    key = argv[1]
    slot = s.db.slot(key)
    old = slot.lookup(key)
    nan_or_inf = err("increment would produce NaN or Infinity")
    try:
        current = long_double(old) if old is not None else Fraction(0)
        delta = long_double(argv[2])
        result = add_long_doubles(current, delta)
    except OverflowError:
        raise nan_or_inf from None
    text = format_long_double(result)
    if old is None:
        slot.store(key, text)
    else:
        slot.store_keep_ttl(key, text)
    return text
