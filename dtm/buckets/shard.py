"""One redis bucket: the bucket protocol's operations (``protocol.RemoteBucket``) on one
redis-server, each a single round trip over the shard's shared link (``link.py``), each
atomic on the server (one Lua script from ``scripts.py``, or one pipelined sequence no
other client's command can enter between).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

import attrs
import trio

from dtm.buckets.address import Arg, ShardError, ShardUnavailable
from dtm.buckets.link import ShardLink
from dtm.buckets.pool import DedicatedConnection
from dtm.buckets.scripts import (
    CUT_KEY,
    GUARD,
    GUARD3,
    GUARD_BATCH,
    GUARD_BATCH3,
    META_DB,
    Decided,
    Locked,
    Outcome,
    Prepared,
    ShardScripts,
    locked_from,
)
from dtm.resp import Raw

# The guard's "this key is locked" error, and a halted batch's, as the shard writes them.
LOCKED_REPLY: Final = b"-DTMLOCKED "
HALTED_REPLY: Final = b"-DTMHALTED"
_NOSCRIPT: Final = b"-NOSCRIPT"


def stopped_by_lock(reply: Raw) -> bool:
    head = reply.data[:11]
    return head == LOCKED_REPLY or head.startswith(HALTED_REPLY)


@attrs.define(eq=False)
class RedisBucket:
    index: int
    link: ShardLink
    scripts: ShardScripts
    link3: ShardLink | None = None  # the same shard in RESP3, for RESP3 clients' commands
    # A connection of its own for the checkpoint's steps, so they do not queue behind
    # the clients' commands on the shared link.
    _control: DedicatedConnection | None = attrs.field(default=None, init=False)
    _control_lock: trio.Lock = attrs.field(factory=trio.Lock, init=False)

    def _link(self, proto: int) -> ShardLink:
        if proto == 3:
            assert self.link3 is not None
            return self.link3
        return self.link

    async def run(self, db: int, keys: Sequence[bytes], argv: Sequence[Arg],
                  proto: int = 2) -> Raw | Locked:
        call = self._link(proto).call_raw
        sha = GUARD3.sha if proto == 3 else GUARD.sha
        reply = await call("EVALSHA", sha, len(keys), *keys, db, *argv)
        if reply.data.startswith(_NOSCRIPT):
            await self.scripts.load()
            reply = await call("EVALSHA", sha, len(keys), *keys, db, *argv)
        if reply.data[:11] == LOCKED_REPLY:
            locked = locked_from(ShardError(reply.data[1:-2].decode()))
            assert locked is not None
            return locked
        return reply

    async def run_batch(self, token: str, db: int,
                        commands: Sequence[tuple[Sequence[bytes], Sequence[Arg]]],
                        proto: int = 2) -> list[Raw]:
        sha = GUARD_BATCH3.sha if proto == 3 else GUARD_BATCH.sha
        requests = [("EVALSHA", sha, len(keys), *keys, token, db, *argv)
                    for keys, argv in commands]
        link = self._link(proto)
        replies = await link.pipeline_raw(requests)
        if replies[0].data.startswith(_NOSCRIPT):
            await self.scripts.load()
            replies = await link.pipeline_raw(requests)
        if any(stopped_by_lock(reply) for reply in replies):
            await self.meta(("DEL", f"dtm:halt:{token}"))
        return replies

    async def raw(self, db: int, commands: Sequence[Sequence[Arg]], proto: int = 2) -> list[Raw]:
        link = self._link(proto)
        if db == 0:
            return await link.pipeline_raw(commands)
        replies = await link.pipeline_raw([("SELECT", db), *commands, ("SELECT", 0)])
        return replies[1:-1]

    async def prepare(self, txid: str, lease_ms: int, locks: Sequence[tuple[int, bytes]],
                      intent: Sequence[tuple[int, Sequence[Arg]]],
                      primary: bool) -> Prepared | Locked | Decided:
        return await self.scripts.prepare(txid, lease_ms, locks, intent, primary=primary)

    async def decide(self, txid: str, outcome: Outcome) -> Outcome:
        return await self.scripts.decide(txid, outcome)

    async def commit(self, txid: str) -> Any:
        return await self.scripts.commit(txid)

    async def abort(self, txid: str) -> bool:
        return await self.scripts.abort(txid)

    async def forget(self, txid: str) -> None:
        await self.scripts.forget(txid)

    async def capture(self, cut: str, filename: str | None = None) -> Any:
        """The cut's id into this shard's data, then BGSAVE (into filename, if given):
        the shard forks at the command, so its file holds exactly the data with this
        cut id."""
        commands: list[Sequence[Arg]] = [("SELECT", META_DB), ("SET", CUT_KEY, cut),
                                         ("SELECT", 0), ("BGSAVE",)]
        if filename is not None:
            commands.insert(0, ("CONFIG", "SET", "dbfilename", filename))
        replies = await self.control(commands)
        if isinstance(replies[-1], ShardError):
            raise replies[-1]
        return replies[-1]

    async def scan(self, db: int, cursor: int, options: Sequence[bytes]) -> tuple[int, list[bytes]]:
        replies = await self.link.pipeline([("SELECT", db), ("SCAN", cursor, *options),
                                            ("SELECT", 0)])
        reply = replies[1]
        if isinstance(reply, ShardError):
            raise reply
        return int(reply[0]), list(reply[1])

    async def connection(self, proto: int = 2) -> DedicatedConnection:
        """A connection of its own (WATCH, a subscriber): close it when done."""
        return await self._link(proto).pool.acquire()

    async def give_back(self, conn: DedicatedConnection, proto: int = 2) -> None:
        """A connection from connection() that its user is done with: RESET and kept
        for the next one (or closed)."""
        await self._link(proto).pool.release(conn)

    async def open_stream(self) -> trio.SocketStream:
        return await self.link.address.connect(self.link.connect_timeout)

    async def info(self, section: str) -> dict[str, str]:
        (text,) = await self.control([("INFO", section)])
        return dict(line.split(":", 1) for line in text.decode().splitlines() if ":" in line)

    async def now_ms(self) -> int:
        seconds, micros = await self.link.call("TIME")
        return int(seconds) * 1000 + int(micros) // 1000

    async def transactions(self) -> list[str]:
        """The txids holding locks here (each has an intent)."""
        found: list[str] = []
        cursor: Any = 0
        while True:
            cursor, names = await self.control_meta(("SCAN", cursor, "MATCH", "dtm:intent:*",
                                                     "COUNT", 1000))
            found += [name[len(b"dtm:intent:"):].decode() for name in names]
            if int(cursor) == 0:
                return found

    async def control(self, commands: Sequence[Sequence[Arg]]) -> list[Any]:
        """commands on the control connection, their replies parsed (errors as values)."""
        async with self._control_lock:
            if self._control is None or self._control.broken:
                self._control = await self.link.pool.acquire()
            try:
                return await self._control.pipeline(commands)
            except ShardUnavailable:
                self._control.close()
                self._control = None
                raise

    async def control_meta(self, command: Sequence[Arg]) -> Any:
        """meta() on the control connection."""
        return (await self.control([("SELECT", META_DB), command, ("SELECT", 0)]))[1]

    async def meta(self, command: Sequence[Arg]) -> Any:
        """One command in dtm's own database (locks, decisions, the cut)."""
        replies = await self.link.pipeline([("SELECT", META_DB), command, ("SELECT", 0)])
        return replies[1]


if TYPE_CHECKING:
    from dtm.buckets.protocol import RemoteBucket

    def _provides_the_bucket_protocol(bucket: RedisBucket) -> RemoteBucket:
        return bucket  # mypy checks that a redis bucket conforms


__all__ = ["RedisBucket", "ShardUnavailable", "stopped_by_lock"]
