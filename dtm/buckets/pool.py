"""Dedicated connections to a shard, for commands that keep per-connection state
(WATCH/MULTI, blocking commands, SUBSCRIBE), and the pool that hands them out.

A connection is used by one task at a time. One whose request was interrupted (a
cancelled blocking command, say) may be out of step with its replies, so it is marked
broken and closed rather than reused. Every other one is RESET on return (Redis drops
MULTI, WATCHes, subscriptions, SELECT, CLIENT REPLY state) and kept for the next user.
"""

from __future__ import annotations

import select
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager, suppress
from typing import Any

import attrs
import hiredis
import trio

from dtm.buckets.address import (
    INCOMPLETE,
    READ_SIZE,
    Arg,
    ShardAddress,
    ShardError,
    ShardUnavailable,
    new_reader,
    pack,
    reason,
)
from dtm.buckets.frames import ReplyFramer
from dtm.resp import Raw


@attrs.define(eq=False)
class DedicatedConnection:
    """A connection used by one task at a time, so state it sets (WATCH, MULTI, SELECT,
    subscriptions, a blocked command) stays its own. Replies are read in order with
    ``reply()``, which also reads pub/sub messages."""

    address: ShardAddress
    stream: trio.SocketStream
    unread: int = 0  # requests sent whose replies were not read yet
    broken: bool = False  # an operation was interrupted: the stream may be out of step
    _reader: hiredis.Reader = attrs.field(factory=new_reader, init=False)
    _framer: ReplyFramer = attrs.field(factory=ReplyFramer, init=False)

    async def send(self, *args: Arg) -> None:
        await self._send(pack(args), 1)

    async def send_many(self, commands: Iterable[Sequence[Arg]]) -> None:
        packed = [pack(command) for command in commands]
        await self._send(b"".join(packed), len(packed))

    async def reply(self) -> Any:
        """The next reply or message; an error reply is returned as a ShardError value."""
        reader = self._reader
        return await self._next(reader.gets, reader.feed, INCOMPLETE)

    async def reply_raw(self) -> Raw:
        """The next reply or message as the shard wrote it. A connection is read raw or
        parsed, never both (each keeps its own buffer)."""
        framer = self._framer
        return Raw(await self._next(framer.next, framer.feed, None))

    async def _next(self, take: Callable[[], Any], feed: Callable[[bytes], Any],
                    incomplete: Any) -> Any:
        self._begin()
        while (item := take()) is incomplete:
            try:
                data = await self.stream.receive_some(READ_SIZE)
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise self._lost(reason(exc)) from exc
            if not data:
                raise self._lost("the shard closed the connection")
            feed(data)
        self.unread = max(0, self.unread - 1)
        self.broken = False
        return item

    async def pipeline_raw(self, commands: Iterable[Sequence[Arg]]) -> list[Raw]:
        """Send several commands at once; their replies as the shard wrote them."""
        packed = [pack(command) for command in commands]
        await self._send(b"".join(packed), len(packed))
        return [await self.reply_raw() for _ in packed]

    async def call(self, *args: Arg) -> Any:
        """Send one command and return its reply; an error reply raises ShardError."""
        await self.send(*args)
        reply = await self.reply()
        if isinstance(reply, ShardError):
            raise reply
        return reply

    async def pipeline(self, commands: Iterable[Sequence[Arg]]) -> list[Any]:
        """Send several commands at once; their replies in order, errors as values."""
        packed = [pack(command) for command in commands]
        await self._send(b"".join(packed), len(packed))
        return [await self.reply() for _ in packed]

    async def reset(self) -> bool:
        """RESET the connection's state; skips unread replies and messages up to RESET's."""
        await self.send("RESET")
        while True:
            reply = await self.reply()
            if self.unread == 0 and reply == b"RESET":
                return True
            if isinstance(reply, ShardError) and self.unread == 0:
                return False

    def close(self) -> None:
        self.broken = True
        self.stream.socket.close()

    def looks_closed(self) -> bool:
        """An idle connection with something to read has been closed by the shard (or is
        out of step): either way it cannot be handed out."""
        readable, _, _ = select.select([self.stream.socket.fileno()], [], [], 0)
        return bool(readable)

    def _begin(self) -> None:
        if self.broken:
            raise ShardUnavailable(f"this connection to shard {self.address} is broken")
        self.broken = True  # cleared when the operation completes; an interruption leaves it

    def _lost(self, reason: str) -> ShardUnavailable:
        self.stream.socket.close()
        return ShardUnavailable(f"lost the connection to shard {self.address}: {reason}")

    async def _send(self, data: bytes, count: int) -> None:
        self._begin()
        try:
            await self.stream.send_all(data)
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise self._lost(reason(exc)) from exc
        self.unread += count
        self.broken = False


@attrs.define(eq=False)
class ShardPool:
    """Hands out dedicated connections and takes them back, RESET, for reuse."""

    address: ShardAddress
    connect_timeout: float = 5.0
    max_idle: int = 4
    reset_timeout: float = 2.0
    resp3: bool = False  # connections handed out speak RESP3
    opened: int = attrs.field(default=0, init=False)
    _idle: list[DedicatedConnection] = attrs.field(factory=list, init=False)

    @property
    def idle(self) -> int:
        return len(self._idle)

    async def acquire(self) -> DedicatedConnection:
        while self._idle:
            conn = self._idle.pop()
            if not conn.looks_closed():
                await trio.lowlevel.checkpoint()
                return conn
            conn.close()
        stream = await self.address.connect(self.connect_timeout, resp3=self.resp3)
        self.opened += 1
        return DedicatedConnection(self.address, stream)

    async def release(self, conn: DedicatedConnection) -> None:
        """RESET and keep the connection, or close it if it is broken, its RESET fails or
        the pool is full. Runs even when the caller is being cancelled."""
        if conn.broken or len(self._idle) >= self.max_idle or self.resp3:
            conn.close()  # (RESET would turn a RESP3 connection back to RESP2)
            return
        reset = False
        with trio.move_on_after(self.reset_timeout, shield=True):
            with suppress(ShardUnavailable):
                reset = await conn.reset()
        if reset:
            self._idle.append(conn)
        else:
            conn.close()

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[DedicatedConnection]:
        conn = await self.acquire()
        try:
            yield conn
        finally:
            await self.release(conn)

    def close_idle(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

