"""Introspection that tools expect from Redis: OBJECT, MEMORY, ROLE, DEBUG.

OBJECT ENCODING follows Redis's rules for strings (object.c tryObjectEncoding): a value
that reads as a 64-bit integer in at most 20 characters is ``int``, else up to 44 bytes
``embstr``, else ``raw``; a value edited in place (a bytearray: APPEND, SETRANGE, SETBIT)
is ``raw``, as Redis unshares it. dtm keeps no access clock or LFU counter per key, so
IDLETIME reports 0. MEMORY USAGE is an honest estimate of what dtm itself spends on the
key: the Python objects and their dict entries.
"""

from __future__ import annotations

import math
import re
import sys
from typing import TYPE_CHECKING, Any

import trio

from dtm.commands.args import integer
from dtm.commands.table import command, container, help_reply, subcommand_error
from dtm.errors import SYNTAX, err
from dtm.resp import parse_int

if TYPE_CHECKING:
    from dtm.session import Session

GROUP = "server"

OBJ_SHARED_INTEGERS = 10000  # Redis shares the objects of 0..9999
OBJ_SHARED_REFCOUNT = 2147483647
EMBSTR_LIMIT = 44
# A dict entry costs about three words plus the table's spare room (load factor).
_DICT_ENTRY = 3 * 8 * 3 // 2

# ------------------------------------------------------------------- OBJECT

OBJECT = container("object", group="generic", summary="Inspect a key's value", since="2.2.3")


def encoding(value: bytes | bytearray) -> bytes:
    if isinstance(value, bytearray):
        return b"raw"
    if len(value) <= 20 and parse_int(value) is not None:
        return b"int"
    return b"embstr" if len(value) <= EMBSTR_LIMIT else b"raw"


@command("encoding", 3, "readonly", keys=(2, 2, 1), group="generic", summary="The internal encoding of a value", parent=OBJECT, since="2.2.3")
def object_encoding(s: Session, argv: list[bytes]) -> Any:
    value = s.db.get(argv[2])
    return None if value is None else encoding(value)


@command("refcount", 3, "readonly", keys=(2, 2, 1), group="generic", summary="References to a value", parent=OBJECT, since="2.2.3")
def object_refcount(s: Session, argv: list[bytes]) -> Any:
    value = s.db.get(argv[2])
    if value is None:
        return None
    number = parse_int(value) if isinstance(value, bytes) and len(value) <= 20 else None
    if number is not None and 0 <= number < OBJ_SHARED_INTEGERS:
        return OBJ_SHARED_REFCOUNT  # Redis's shared integer objects
    return 1


@command("idletime", 3, "readonly", keys=(2, 2, 1), group="generic", summary="Seconds since a key was last used", parent=OBJECT, since="2.2.3")
def object_idletime(s: Session, argv: list[bytes]) -> Any:
    return None if s.db.get(argv[2]) is None else 0


@command("freq", 3, "readonly", keys=(2, 2, 1), group="generic", summary="A key's access frequency", parent=OBJECT, since="4.0.0")
def object_freq(s: Session, argv: list[bytes]) -> Any:
    if s.db.get(argv[2]) is None:
        return None
    # dtm evicts nothing (maxmemory-policy noeviction), as Redis without an LFU policy.
    raise err(
        "An LFU maxmemory policy is not selected, access frequency not tracked. Please note "
        "that when switching between policies at runtime LRU and LFU data will take some "
        "time to adjust."
    )


OBJECT_HELP = [
    "ENCODING <key>",
    "    Return the kind of internal representation used in order to store the value",
    "    associated with a <key>.",
    "FREQ <key>",
    "    Return the access frequency index of the <key>. The returned integer is",
    "    proportional to the logarithm of the recent access frequency of the key.",
    "IDLETIME <key>",
    "    Return the idle time of the <key>, that is the approximated number of",
    "    seconds elapsed since the last access to the key.",
    "REFCOUNT <key>",
    "    Return the number of references of the value associated with the specified",
    "    <key>.",
]


@command("help", 2, "loading stale", group="generic", summary="OBJECT subcommands", parent=OBJECT, since="6.2.0")
def object_help(s: Session, argv: list[bytes]) -> Any:
    return help_reply("OBJECT", OBJECT_HELP)


# ------------------------------------------------------------------- MEMORY

MEMORY = container("memory", group=GROUP, summary="Memory introspection", since="4.0.0")


def key_usage(key: bytes, value: bytes | bytearray, has_ttl: bool) -> int:
    size = sys.getsizeof(key) + sys.getsizeof(value) + _DICT_ENTRY
    if has_ttl:
        size += _DICT_ENTRY + sys.getsizeof(2**40)  # the deadline in the shard's expires
    return size


@command("usage", -3, "readonly", keys=(2, 2, 1), group=GROUP, summary="Bytes a key and its value use", parent=MEMORY, since="4.0.0")
def memory_usage(s: Session, argv: list[bytes]) -> Any:
    i = 3
    while i < len(argv):
        if argv[i].lower() == b"samples" and i + 1 < len(argv):
            # Strings have nothing to sample; the count is still checked as Redis does.
            if integer(argv[i + 1]) < 0:
                raise SYNTAX
            i += 2
        else:
            raise SYNTAX
    key = argv[2]
    slot = s.db.slot(key)
    value = slot.lookup(key)
    if value is None:
        return None
    return key_usage(key, value, slot.ttl_at(key) is not None)


def _dataset(s: Session) -> tuple[int, int]:
    """(keys, bytes) over every database: O(keys), as MEMORY STATS is in Redis."""
    keys = size = 0
    for view in s.server.keyspace.views():
        for shard in view.shards:
            for key, value, deadline in shard.items():
                keys += 1
                size += key_usage(key, value, deadline is not None)
    return keys, size


@command("stats", 2, "readonly", group=GROUP, summary="Memory usage details", parent=MEMORY, since="4.0.0")
def memory_stats(s: Session, argv: list[bytes]) -> Any:
    from dtm.commands.info import _rss_bytes

    rss = _rss_bytes()
    keys, dataset = _dataset(s)
    return {
        b"peak.allocated": rss,
        b"total.allocated": rss,
        b"startup.allocated": 0,
        b"clients.normal": 0,
        b"keys.count": keys,
        b"keys.bytes-per-key": dataset // keys if keys else 0,
        b"dataset.bytes": dataset,
        b"dataset.percentage": str(100.0 * dataset / rss if rss else 0.0).encode(),
        b"peak.percentage": b"100",
        b"fragmentation": b"1",
    }


@command("doctor", 2, "loading stale", group=GROUP, summary="Memory problems", parent=MEMORY, since="4.0.0")
def memory_doctor(s: Session, argv: list[bytes]) -> Any:
    if not any(view.size() for view in s.server.keyspace.views()):
        return (
            b"Hi Sam, this instance is empty or is using very little memory, my issues "
            b"detector can't be used in these conditions. Please, leave for your mission on "
            b"Earth and fill it with some data. The new Sam and I will be back to our "
            b"programming as soon as I finished rebooting."
        )
    return (
        b"Hi Sam, I can't find any memory issue in your instance. I can only account for "
        b"what occurs on this base."
    )


@command("malloc-stats", 2, "loading stale", group=GROUP, summary="Allocator statistics", parent=MEMORY, since="4.0.0")
def memory_malloc_stats(s: Session, argv: list[bytes]) -> Any:
    return b"Stats not supported for the current allocator"


@command("purge", 2, "loading stale", group=GROUP, summary="Return free memory to the system", parent=MEMORY, since="4.0.0")
def memory_purge(s: Session, argv: list[bytes]) -> Any:
    return "OK"


MEMORY_HELP = [
    "DOCTOR",
    "    Return memory problems reports.",
    "MALLOC-STATS",
    "    Return internal statistics report from the memory allocator.",
    "PURGE",
    "    Attempt to purge dirty pages for reclamation by the allocator.",
    "STATS",
    "    Return information about the memory usage of the server.",
    "USAGE <key> [SAMPLES <count>]",
    "    Return memory in bytes used by <key> and its value. Nested values are",
    "    sampled up to <count> times (default: 5, 0 means sample all).",
]


@command("help", 2, "loading stale", group=GROUP, summary="MEMORY subcommands", parent=MEMORY, since="4.0.0")
def memory_help(s: Session, argv: list[bytes]) -> Any:
    return help_reply("MEMORY", MEMORY_HELP)


# --------------------------------------------------------------------- ROLE


@command("role", 1, "noscript loading stale fast", group="server", summary="This server's replication role", since="2.8.12")
def role(s: Session, argv: list[bytes]) -> Any:
    return [b"master", 0, []]


# -------------------------------------------------------------------- DEBUG

_LEADING_FLOAT = re.compile(rb"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
DEBUG_HELP = [
    "SLEEP <seconds>",
    "    Stop the server for <seconds>. Decimals allowed.",
    "    (dtm: only the calling client waits; every other client is served.)",
]


def _seconds(raw: bytes) -> float:
    """strtod's reading of the argument: its longest numeric prefix, else 0."""
    match = _LEADING_FLOAT.match(raw[:64])
    if match is None:
        return 0.0
    value = float(match.group(0))
    return value if math.isfinite(value) and value > 0 else 0.0


# no_multi: a coroutine cannot run inside EXEC's synchronous apply step.
@command("debug", -2, "admin noscript loading stale no_multi", group=GROUP, summary="A container for debugging commands")
async def debug(s: Session, argv: list[bytes]) -> Any:
    sub = argv[1].lower()
    if sub == b"help" and len(argv) == 2:
        return help_reply("DEBUG", DEBUG_HELP)
    if sub == b"sleep" and len(argv) == 3:
        # Redis stops the whole server; here only this client waits (the event loop is
        # shared, so a blocking sleep would stall everyone).
        await trio.sleep(_seconds(argv[2]))
        return "OK"
    raise subcommand_error(argv)
