"""Generic key commands and expiry: DEL, EXISTS, RENAME, COPY, KEYS, SCAN, EXPIRE, TTL, …"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

from dtm import clock
from dtm.commands.args import LLONG_MAX, LLONG_MIN, integer
from dtm.commands.table import Scope, Shard_Key, command
from dtm.errors import DB_RANGE, NO_SUCH_KEY, SYNTAX, err
from dtm.glob import compile_glob
from dtm.resp import parse_int
from dtm.slots import SLOTS

if TYPE_CHECKING:
    from dtm.session import Session

GROUP = "generic"


def _delete_keys(s: Session, argv: list[bytes]) -> Any:
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


def _count_existing(s: Session, argv: list[bytes]) -> Any:
    get = s.db.get
    return sum(1 for key in argv[1:] if get(key) is not None)


command("exists", -2, "readonly fast", keys=(1, -1, 1), group=GROUP, summary="Count existing keys")(_count_existing)
command("touch", -2, "readonly fast", keys=(1, -1, 1), group=GROUP, summary="Count existing keys, touching them", since="3.2.1")(_count_existing)


@command("type", 2, "readonly fast", keys=(1, 1, 1), group=GROUP, summary="The type of a key's value")
def type_(s: Session, argv: list[bytes]) -> Any:
    return "none" if s.db.get(argv[1]) is None else "string"


def _rename(s: Session, argv: list[bytes], nx: bool) -> Any:
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
def rename(s: Session, argv: list[bytes]) -> Any:
    return _rename(s, argv, nx=False)


@command("renamenx", 3, "write fast", keys=(1, 2, 1), group=GROUP, summary="Rename a key if the new name is free")
def renamenx(s: Session, argv: list[bytes]) -> Any:
    return _rename(s, argv, nx=True)


def _copy_options(s: Session, argv: list[bytes]) -> tuple[int, bool]:
    target_db, replace = s.db.index, False
    i = 3
    while i < len(argv):
        option = argv[i].lower()
        if option == b"replace":
            replace = True
        elif option == b"db" and i + 1 < len(argv):
            target_db = integer(argv[i + 1])
            if not 0 <= target_db < s.server.keyspace.databases:
                raise DB_RANGE
            i += 1
        else:
            raise SYNTAX
        i += 1
    return target_db, replace


def _copy_targets(s: Session, argv: list[bytes]) -> list[Shard_Key]:
    try:
        target_db, _ = _copy_options(s, argv)
    except Exception:
        target_db = s.db.index  # the handler reports the bad option
    target = s.server.keyspace.view(target_db).slot(argv[2])
    return [(s.db.slot(argv[1]), argv[1]), (target, argv[2])]


@command("copy", -3, "write denyoom", keys=(1, 2, 1), group=GROUP, summary="Copy a key", since="6.2.0", targets=_copy_targets)
def copy(s: Session, argv: list[bytes]) -> Any:
    source, target = argv[1], argv[2]
    target_db, replace = _copy_options(s, argv)
    if source == target and target_db == s.db.index:
        raise err("source and destination objects are the same")
    source_slot = s.db.slot(source)
    value = source_slot.lookup(source)
    if value is None:
        return 0
    target_slot = s.server.keyspace.view(target_db).slot(target)
    if target_slot.lookup(target) is not None and not replace:
        return 0
    target_slot.store(target, value, source_slot.ttl_at(source))
    return 1


@command("keys", 2, "readonly", group=GROUP, summary="Keys matching a pattern", scope=Scope.ALL)
def keys(s: Session, argv: list[bytes]) -> Any:
    pattern = argv[1]
    found: list[bytes] = []
    for slot in s.db.table:
        if slot.data:
            found.extend(slot.live_keys())
    if pattern == b"*":
        return found
    match = compile_glob(pattern).fullmatch
    return [key for key in found if match(key)]


@command("scan", -2, "readonly", group=GROUP, summary="Iterate over the keys", since="2.8.0", scope=Scope.ALL)
def scan(s: Session, argv: list[bytes]) -> Any:
    cursor = parse_int(argv[1]) if argv[1][:1] != b"-" else None
    if cursor is None:
        raise err("invalid cursor")
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
    table = s.db.table
    found: list[bytes] = []
    slot_number = cursor
    # The cursor is the next slot to visit: every slot is read whole, so a key present
    # for the whole scan is returned exactly once.
    while slot_number < SLOTS and len(found) < count:
        slot = table[slot_number]
        if slot.data:
            found.extend(slot.live_keys())
        slot_number += 1
    next_cursor = slot_number if slot_number < SLOTS else 0
    if pattern is not None and pattern != b"*":
        match = compile_glob(pattern).fullmatch
        found = [key for key in found if match(key)]
    if type_filter is not None and type_filter != b"string":
        found = []
    return [b"%d" % next_cursor, found]


@command("randomkey", 1, "readonly", group=GROUP, summary="A random key", scope=Scope.ALL)
def randomkey(s: Session, argv: list[bytes]) -> Any:
    table = s.db.table
    for _ in range(64):  # sparse keyspaces fall through to the exact pick below
        slot = table[random.randrange(SLOTS)]
        if slot.data:
            live = slot.live_keys()
            if live:
                return random.choice(live)
    candidates = [slot for slot in table if slot.data]
    random.shuffle(candidates)
    for slot in candidates:
        live = slot.live_keys()
        if live:
            return random.choice(live)
    return None


# ------------------------------------------------------------------------ expiry


def _expire(s: Session, argv: list[bytes], unit: int, absolute: bool, name: str) -> Any:
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
            raise err(f"Unsupported option {raw.decode('utf-8', 'replace')}")
    if nx and (xx or gt or lt):
        raise err("NX and XX, GT or LT options at the same time are not compatible")
    if gt and lt:
        raise err("GT and LT options at the same time are not compatible")
    when = integer(argv[2])
    invalid = err(f"invalid expire time in '{name}' command")
    if when > LLONG_MAX // unit or when < LLONG_MIN // unit:
        raise invalid
    when *= unit
    if not absolute:
        when += clock.now_ms()
        if not LLONG_MIN <= when <= LLONG_MAX:
            raise invalid
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
        slot.touch(key)
    return 1


@command("expire", -3, "write fast", keys=(1, 1, 1), group=GROUP, summary="Set a TTL in seconds")
def expire(s: Session, argv: list[bytes]) -> Any:
    return _expire(s, argv, 1000, False, "expire")


@command("pexpire", -3, "write fast", keys=(1, 1, 1), group=GROUP, summary="Set a TTL in ms", since="2.6.0")
def pexpire(s: Session, argv: list[bytes]) -> Any:
    return _expire(s, argv, 1, False, "pexpire")


@command("expireat", -3, "write fast", keys=(1, 1, 1), group=GROUP, summary="Set a deadline in Unix seconds", since="1.2.0")
def expireat(s: Session, argv: list[bytes]) -> Any:
    return _expire(s, argv, 1000, True, "expireat")


@command("pexpireat", -3, "write fast", keys=(1, 1, 1), group=GROUP, summary="Set a deadline in Unix ms", since="2.6.0")
def pexpireat(s: Session, argv: list[bytes]) -> Any:
    return _expire(s, argv, 1, True, "pexpireat")


def _ttl(s: Session, key: bytes, in_ms: bool, absolute: bool) -> int:
    slot = s.db.slot(key)
    if slot.lookup(key) is None:
        return -2
    deadline = slot.ttl_at(key)
    if deadline is None:
        return -1
    remaining = deadline if absolute else max(deadline - clock.now_ms(), 0)
    return remaining if in_ms else (remaining + 500) // 1000


@command("ttl", 2, "readonly fast", keys=(1, 1, 1), group=GROUP, summary="Seconds to live")
def ttl(s: Session, argv: list[bytes]) -> Any:
    return _ttl(s, argv[1], False, False)


@command("pttl", 2, "readonly fast", keys=(1, 1, 1), group=GROUP, summary="Milliseconds to live", since="2.6.0")
def pttl(s: Session, argv: list[bytes]) -> Any:
    return _ttl(s, argv[1], True, False)


@command("expiretime", 2, "readonly fast", keys=(1, 1, 1), group=GROUP, summary="Deadline in Unix seconds", since="7.0.0")
def expiretime(s: Session, argv: list[bytes]) -> Any:
    return _ttl(s, argv[1], False, True)


@command("pexpiretime", 2, "readonly fast", keys=(1, 1, 1), group=GROUP, summary="Deadline in Unix ms", since="7.0.0")
def pexpiretime(s: Session, argv: list[bytes]) -> Any:
    return _ttl(s, argv[1], True, True)


@command("persist", 2, "write fast", keys=(1, 1, 1), group=GROUP, summary="Remove a key's TTL", since="2.2.0")
def persist(s: Session, argv: list[bytes]) -> Any:
    slot = s.db.slot(argv[1])
    if slot.lookup(argv[1]) is None or slot.ttl_at(argv[1]) is None:
        return 0
    slot.set_expire(argv[1], None)
    slot.touch(argv[1])
    return 1
