"""CONFIG on a front of the redis engine: the front's settings and the shards'.

A name the front knows (port, maxclients, save, appendonly, … : what CONFIG GET lists on
the memory engine) is the front's, handled by its own CONFIG. Any other name is a
setting of the storage (list-max-listpack-size, hash-max-listpack-entries,
lua-time-limit, …), which only the shards have: CONFIG SET sets it on every shard, and
CONFIG GET reads it from the first. Shard settings dtm itself relies on (persistence,
notifications its blocking commands wait on, where files go) are not the client's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from dtm.buckets.address import ShardError
from dtm.buckets.redis import each, parse
from dtm.commands.server import _config_values
from dtm.config import MUTABLE, REDIS_NAMES
from dtm.errors import err
from dtm.resp import Raw

if TYPE_CHECKING:
    from dtm.relay import RelaySession

# Shard settings dtm sets and depends on (modes/shards.py, blocking.py, spawn.py).
MANAGED: Final = frozenset({
    "save", "appendonly", "appendfsync", "dir", "dbfilename", "appendfilename",
    "appenddirname", "notify-keyspace-events", "databases", "port", "bind", "unixsocket",
    "unixsocketperm", "requirepass", "masterauth", "masteruser", "replicaof", "slaveof",
    "aclfile", "logfile", "pidfile", "daemonize", "maxclients", "timeout",
    "protected-mode", "enable-protected-configs", "enable-debug-command",
    "enable-module-command",
})


async def config(session: RelaySession, argv: list[bytes]) -> Any:
    sub = argv[1].lower() if len(argv) > 1 else b""
    if sub == b"set" and len(argv) >= 4 and len(argv) % 2 == 0:
        return await _set(session, argv)
    if sub == b"get" and len(argv) >= 3:
        return await _get(session, argv)
    return await session.execute(argv)


async def _set(session: RelaySession, argv: list[bytes]) -> Any:
    values = _config_values(session)
    front: list[bytes] = []
    shards: list[bytes] = []
    for i in range(2, len(argv), 2):
        name, value = argv[i], argv[i + 1]
        text = name.decode("utf-8", "replace").lower()
        field = REDIS_NAMES.get(text)
        if field is not None and field in MUTABLE:
            front += (name, value)
        elif text in values or text in MANAGED:
            # What dtm decides (the mode, the front's address…): setting it to what it
            # already is changes nothing, as in Redis; anything else is refused.
            if values.get(text) != value.decode("utf-8", "replace"):
                raise err(f"CONFIG SET failed (possibly related to argument '{text}') - "
                          "can't set immutable config")
        else:
            shards += (name, value)
    if shards:
        engine = session.engine
        command: list[bytes] = [b"CONFIG", b"SET", *shards]
        replies = await each(lambda index: engine.raw(index, 0, [command]), range(len(engine.shards)))
        for (reply,) in replies:
            if reply.data.startswith(b"-"):
                return reply
    if front:
        return await session.execute([argv[0], argv[1], *front])
    return "OK"


async def _get(session: RelaySession, argv: list[bytes]) -> Any:
    command: list[bytes] = [b"CONFIG", b"GET", *argv[2:]]
    reply = parse((await session.engine.raw(0, 0, [command]))[0])
    if isinstance(reply, ShardError):
        return Raw(b"-" + str(reply).encode() + b"\r\n")
    found: dict[bytes, Any] = {}
    for name, value in zip(reply[::2], reply[1::2]):
        if name.decode("utf-8", "replace") not in MANAGED:
            found[name] = value
    local = await session.execute(argv)
    if isinstance(local, dict):
        found.update(local)
    return found
