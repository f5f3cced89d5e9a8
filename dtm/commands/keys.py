"""Generic key commands and expiry: DEL, EXISTS, RENAME, COPY, KEYS, SCAN, EXPIRE, TTL, …"""

from __future__ import annotations

import random
from itertools import islice
from typing import TYPE_CHECKING, Any

from dtm import clock
from dtm.commands.args import c_int, expire_when, integer
from dtm.commands.table import Scope, Shard_Key, c_text, command
from dtm.errors import DB_RANGE, NO_SUCH_KEY, SYNTAX, CommandError, err
from dtm.glob import glob_filter
from dtm.resp import parse_int
from dtm.store import share

if TYPE_CHECKING:
    from dtm.commands.context import DataContext

GROUP = "generic"


def _delete_keys(s: DataContext, argv: list[bytes]) -> Any:
    db = s.db
    removed = 0
    for key in argv[1:]:
        slot = db.slot(key)
        if slot.lookup(key) is not None:
            slot.delete(key)
            removed += 1
    return removed


command("del", -2, "write", keys=(1, -1, 1), group=GROUP, summary="Delete keys")(_delete_keys)
command("unlink", -2, "write fast", keys=(1, -1, 1), group=GROUP, summary="Delete keys", since="4.0.0")(_delete_keys)


def _count_existing(s: DataContext, argv: list[bytes]) -> Any:
    get = s.db.get
    return sum(1 for key in argv[1:] if get(key) is not None)


command("exists", -2, "readonly fast", keys=(1, -1, 1), group=GROUP, summary="Count existing keys")(_count_existing)
command("touch", -2, "readonly fast", keys=(1, -1, 1), group=GROUP, summary="Count existing keys, touching them", since="3.2.1")(_count_existing)


@command("type", 2, "readonly fast", keys=(1, 1, 1), group=GROUP, summary="The type of a key's value")
def type_(s: DataContext, argv: list[bytes]) -> Any:
    return "none" if s.db.get(argv[1]) is None else "string"


def _rename(s: DataContext, argv: list[bytes], nx: bool) -> Any:
    source, target = argv[1], argv[2]
    db = s.db
    source_slot = db.slot(source)
    value = source_slot.lookup(source)
    if value is None:
        raise NO_SUCH_KEY
    if source == target:
        return 0 if nx else "OK"
    deadline = source_slot.ttl_at(source)
    target_slot = db.slot(target)
    if target_slot.lookup(target) is not None and nx:
        return 0
    target_slot.store(target, value, deadline)
    source_slot.delete(source)
    return 1 if nx else "OK"


@command("rename", 3, "write", keys=(1, 2, 1), group=GROUP, summary="Rename a key")
def rename(s: DataContext, argv: list[bytes]) -> Any:
    return _rename(s, argv, nx=False)


@command("renamenx", 3, "write fast", keys=(1, 2, 1), group=GROUP, summary="Rename a key if the new name is free")
def renamenx(s: DataContext, argv: list[bytes]) -> Any:
    return _rename(s, argv, nx=True)


def _copy_options(s: DataContext, argv: list[bytes]) -> tuple[int, bool]:
    target_db, replace = s.db.index, False
    i = 3
    while i < len(argv):
        option = argv[i].lower()
        if option == b"replace":
            replace = True
        elif option == b"db" and i + 1 < len(argv):
            target_db = c_int(argv[i + 1])
            if not 0 <= target_db < s.keyspace.databases:
                raise DB_RANGE
            i += 1
        else:
            raise SYNTAX
        i += 1
    return target_db, replace


def _copy_targets(s: DataContext, argv: list[bytes]) -> list[Shard_Key]:
    try:
        target_db, _ = _copy_options(s, argv)
    except Exception:
        target_db = s.db.index  # the handler reports the bad option
    target = s.keyspace.view(target_db).slot(argv[2])
    return [(s.db.slot(argv[1]), argv[1]), (target, argv[2])]


@command("copy", -3, "write denyoom", keys=(1, 2, 1), group=GROUP, summary="Copy a key", since="6.2.0", targets=_copy_targets)
def copy(s: DataContext, argv: list[bytes]) -> Any:
    source, target = argv[1], argv[2]
    target_db, replace = _copy_options(s, argv)
    if source == target and target_db == s.db.index:
        raise err("source and destination objects are the same")
    source_slot = s.db.slot(source)
    value = source_slot.lookup(source)
    if value is None:
        return 0
    target_slot = s.keyspace.view(target_db).slot(target)
    if target_slot.lookup(target) is not None and not replace:
        return 0
    # Both keys now hold the one value object: an edit of either copies it first.
    target_slot.store(target, share(value), source_slot.ttl_at(source))
    return 1


def _move_db(s: DataContext, argv: list[bytes]) -> int:
    db = c_int(argv[2])
    if not 0 <= db < s.keyspace.databases:
        raise DB_RANGE
    return db


def _move_targets(s: DataContext, argv: list[bytes]) -> list[Shard_Key]:
    try:
        target_db = _move_db(s, argv)
    except CommandError:
        target_db = s.db.index  # the handler reports it
    target = s.keyspace.view(target_db).slot(argv[1])
    return [(s.db.slot(argv[1]), argv[1]), (target, argv[1])]


@command("move", 3, "write fast", keys=(1, 1, 1), group=GROUP, summary="Move a key to another database", targets=_move_targets)
def move(s: DataContext, argv: list[bytes]) -> Any:
    key = argv[1]
    target_db = _move_db(s, argv)
    if target_db == s.db.index:
        raise err("source and destination objects are the same")
    source = s.db.slot(key)
    value = source.lookup(key)
    if value is None:
        return 0
    target = s.keyspace.view(target_db).slot(key)
    if target.lookup(key) is not None:
        return 0
    # Both slots are in the command's targets: locked together, so the move is atomic.
    target.store(key, value, source.ttl_at(key))
    source.delete(key)
    return 1


def _db_index(raw: bytes, which: str) -> int:
    index = parse_int(raw)
    if index is None or not -(2**31) <= index < 2**31:  # Redis reads an int
        raise err(f"invalid {which} DB index")
    return index


@command("swapdb", 3, "write fast", group="server", summary="Swap two databases", since="4.0.0", scope=Scope.ALL)
def swapdb(s: DataContext, argv: list[bytes]) -> Any:
    first, second = _db_index(argv[1], "first"), _db_index(argv[2], "second")
    databases = s.keyspace.databases
    if not (0 <= first < databases and 0 <= second < databases):
        raise DB_RANGE
    s.keyspace.swap(first, second)
    return "OK"


@command("keys", 2, "readonly", group=GROUP, summary="Keys matching a pattern", scope=Scope.ALL)
def keys(s: DataContext, argv: list[bytes]) -> Any:
    pattern = argv[1]
    found: list[bytes] = []
    for slot in s.db.occupied_from(0):
        found.extend(slot.live_keys())
    if pattern == b"*":  # every key, the empty one included (Redis's allkeys)
        return found
    return glob_filter(pattern, found)


ULONG_MAX = 2**64 - 1


def scan_cursor(raw: bytes) -> int:
    """A cursor as Redis reads it (strtoul on the C string): "" and "-0" are 0, a leading
    sign is taken and a negative wraps around; spaces first, junk after, or overflow are
    refused."""
    text = raw.split(b"\0", 1)[0]
    digits = text[1:] if text[:1] in (b"+", b"-") else text
    significant = digits.lstrip(b"0")
    if len(significant) > 20 or (digits and not digits.isdigit()) or (text and not digits):
        raise err("invalid cursor")
    value = int(significant or b"0")
    if value > ULONG_MAX:
        raise err("invalid cursor")
    return (-value) % (ULONG_MAX + 1) if text[:1] == b"-" else value


@command("scan", -2, "readonly", group=GROUP, summary="Iterate over the keys", since="2.8.0", scope=Scope.ALL)
def scan(s: DataContext, argv: list[bytes]) -> Any:
    cursor = scan_cursor(argv[1])
    pattern: bytes | None = None
    count, type_filter = 10, None
    i = 2
    while i < len(argv):
        option = argv[i].lower()
        if i + 1 >= len(argv):
            raise SYNTAX
        if option == b"count":
            count = integer(argv[i + 1])
            if count < 1:
                raise SYNTAX
        elif option == b"match":
            pattern = argv[i + 1]
        elif option == b"type":
            type_filter = argv[i + 1].lower()
        else:
            raise SYNTAX
        i += 2
    found: list[bytes] = []
    next_cursor = 0
    # The cursor is the next slot to visit: every slot is read whole, so a key present
    # for the whole scan is returned exactly once. Empty slots are skipped unvisited, and
    # a call reads at most count * 10 slots (Redis's bound on the buckets one visits).
    budget = count * 10
    for slot in s.db.occupied_from(cursor):
        if len(found) >= count or budget == 0:
            next_cursor = slot.number
            break
        found.extend(slot.live_keys())
        budget -= 1
    if pattern is not None and pattern != b"*":
        found = glob_filter(pattern, found)
    if type_filter is not None and type_filter != b"string":
        found = []
    return [b"%d" % next_cursor, found]


@command("randomkey", 1, "readonly", group=GROUP, summary="A random key", scope=Scope.ALL)
def randomkey(s: DataContext, argv: list[bytes]) -> Any:
    # A random slot among those holding keys, then a random key of it (Redis: a random
    # bucket, then a random entry of its chain). An expired key is deleted and another
    # drawn, as Redis does; one that cannot be deleted now (locked) counts as a miss.
    view = s.db
    misses = 0
    while misses < 100:
        slot = view.random_slot()
        if slot is None:
            return None
        data = slot.data
        key = next(islice(data, random.randrange(len(data)), None))
        if slot.lookup(key) is not None:
            return key
        if key in data:
            misses += 1
    return None


# ------------------------------------------------------------------------ expiry


def _expire(s: DataContext, argv: list[bytes], unit: int, absolute: bool, name: str) -> Any:
    nx = xx = gt = lt = False
    for raw in argv[3:]:
        option = raw.lower()
        if option == b"nx":
            nx = True
        elif option == b"xx":
            xx = True
        elif option == b"gt":
            gt = True
        elif option == b"lt":
            lt = True
        else:
            raise err(f"Unsupported option {c_text(raw)}")
    if nx and (xx or gt or lt):
        raise err("NX and XX, GT or LT options at the same time are not compatible")
    if gt and lt:
        raise err("GT and LT options at the same time are not compatible")
    when = expire_when(argv[2], unit, absolute, name)
    key = argv[1]
    slot = s.db.slot(key)
    if slot.lookup(key) is None:
        return 0
    current = slot.ttl_at(key)
    if (nx and current is not None) or (xx and current is None):
        return 0
    if gt and (current is None or when <= current):
        return 0
    if lt and current is not None and when >= current:
        return 0
    if when <= clock.now_ms():
        slot.delete(key)
    else:
        slot.set_expire(key, when)
    return 1


@command("expire", -3, "write fast", keys=(1, 1, 1), group=GROUP, summary="Set a TTL in seconds")
def expire(s: DataContext, argv: list[bytes]) -> Any:
    return _expire(s, argv, 1000, False, "expire")


@command("pexpire", -3, "write fast", keys=(1, 1, 1), group=GROUP, summary="Set a TTL in ms", since="2.6.0")
def pexpire(s: DataContext, argv: list[bytes]) -> Any:
    return _expire(s, argv, 1, False, "pexpire")


@command("expireat", -3, "write fast", keys=(1, 1, 1), group=GROUP, summary="Set a deadline in Unix seconds", since="1.2.0")
def expireat(s: DataContext, argv: list[bytes]) -> Any:
    return _expire(s, argv, 1000, True, "expireat")


@command("pexpireat", -3, "write fast", keys=(1, 1, 1), group=GROUP, summary="Set a deadline in Unix ms", since="2.6.0")
def pexpireat(s: DataContext, argv: list[bytes]) -> Any:
    return _expire(s, argv, 1, True, "pexpireat")


def _ttl(s: DataContext, key: bytes, in_ms: bool, absolute: bool) -> int:
    slot = s.db.slot(key)
    if slot.lookup(key) is None:
        return -2
    deadline = slot.ttl_at(key)
    if deadline is None:
        return -1
    remaining = deadline if absolute else max(deadline - clock.now_ms(), 0)
    return remaining if in_ms else (remaining + 500) // 1000


@command("ttl", 2, "readonly fast", keys=(1, 1, 1), group=GROUP, summary="Seconds to live")
def ttl(s: DataContext, argv: list[bytes]) -> Any:
    return _ttl(s, argv[1], False, False)


@command("pttl", 2, "readonly fast", keys=(1, 1, 1), group=GROUP, summary="Milliseconds to live", since="2.6.0")
def pttl(s: DataContext, argv: list[bytes]) -> Any:
    return _ttl(s, argv[1], True, False)


@command("expiretime", 2, "readonly fast", keys=(1, 1, 1), group=GROUP, summary="Deadline in Unix seconds", since="7.0.0")
def expiretime(s: DataContext, argv: list[bytes]) -> Any:
    return _ttl(s, argv[1], False, True)


@command("pexpiretime", 2, "readonly fast", keys=(1, 1, 1), group=GROUP, summary="Deadline in Unix ms", since="7.0.0")
def pexpiretime(s: DataContext, argv: list[bytes]) -> Any:
    return _ttl(s, argv[1], True, True)


@command("persist", 2, "write fast", keys=(1, 1, 1), group=GROUP, summary="Remove a key's TTL", since="2.2.0")
def persist(s: DataContext, argv: list[bytes]) -> Any:
    slot = s.db.slot(argv[1])
    if slot.lookup(argv[1]) is None or slot.ttl_at(argv[1]) is None:
        return 0
    slot.set_expire(argv[1], None)
    return 1
