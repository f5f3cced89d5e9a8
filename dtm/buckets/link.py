"""The connection to one shard (a redis-server) that many tasks share, pipelined.

``ShardLink`` is shared by many tasks. Every ``call``/``pipeline`` queues its encoded
request and parks; a writer task, woken by the first request of a scheduler pass, runs in
the next pass and sends everything queued by then in one write (the pattern of dtm's
Outbox and binlog writer), so N tasks waiting on replies cost one send per round, not N.
A reader task parses replies with hiredis and hands them out first in, first out: Redis
answers a connection's requests in order.

Cancellation never puts the stream out of step: a call cancelled before its request was
written is dropped and never sent; one cancelled after that stays in the FIFO, so its
reply is read and thrown away and later replies still reach their callers (such a call
may or may not have run, as with any client).

A lost connection fails every call written to it with ``ShardUnavailable``; calls not yet
written go out on a new connection, made at once. Otherwise the link connects again when
the next call arrives, so a shard that was restarted is picked up by later calls.

Commands that keep per-connection state (WATCH/MULTI, blocking commands, SUBSCRIBE) take
a connection of their own from the link's pool (``pool.py``): ``async with
link.dedicated() as conn``.
"""

from __future__ import annotations

import collections
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from functools import partial
from typing import Any

import attrs
import hiredis
import outcome
import structlog
import trio

from dtm.buckets.address import (
    READ_SIZE,
    Arg,
    ShardAddress,
    ShardError,
    ShardUnavailable,
    new_reader,
    pack,
    reason,
)
from dtm.buckets.frames import FramingError, ReplyFramer
from dtm.buckets.pool import DedicatedConnection, ShardPool
from dtm.resp import Raw

log = structlog.get_logger("dtm.shard")


@attrs.define(eq=False, slots=True)
class _Call:
    request: bytes
    expected: int  # replies it waits for: 1 for call(), the command count for pipeline()
    task: trio.lowlevel.Task | None  # None once nobody waits (cancelled, or answered)
    raw: bool = False  # replies as the shard's bytes (a Raw), not parsed
    single: bool = False  # call(): the reply itself, not a list of one
    replies: list[Any] = attrs.field(factory=list)

    def abort(self, _: Any) -> trio.lowlevel.Abort:
        self.task = None  # unsent: skipped by the writer; sent: its reply is dropped
        return trio.lowlevel.Abort.SUCCEEDED


def _fail(calls: Iterable[_Call], message: str) -> None:
    for call in calls:
        if call.task is not None:
            trio.lowlevel.reschedule(call.task, outcome.Error(ShardUnavailable(message)))
            call.task = None


@attrs.define(eq=False)
class ShardLink:
    """One shared connection to a shard; run it with ``await nursery.start(link.run)``."""

    address: ShardAddress
    connect_timeout: float = 5.0
    max_idle: int = 64  # dedicated connections kept for reuse (WATCHing clients take one each)
    resp3: bool = False  # speak RESP3 (HELLO 3 on every connection): replies as RESP3 clients get them
    writes: int = attrs.field(default=0, init=False)  # socket writes: one per round
    connects: int = attrs.field(default=0, init=False)
    pool: ShardPool = attrs.field(init=False)
    _unsent: list[_Call] = attrs.field(factory=list, init=False)
    _sent: collections.deque[_Call] = attrs.field(factory=collections.deque, init=False)
    _stream: trio.SocketStream | None = attrs.field(default=None, init=False)
    _work: trio.Event = attrs.field(factory=trio.Event, init=False)  # wakes the writer
    _demand: trio.Event = attrs.field(factory=trio.Event, init=False)  # wakes a reconnect
    _running: bool = attrs.field(default=False, init=False)

    def __attrs_post_init__(self) -> None:
        self.pool = ShardPool(self.address, self.connect_timeout, self.max_idle, resp3=self.resp3)

    @property
    def connected(self) -> bool:
        return self._stream is not None

    async def call(self, *args: Arg) -> Any:
        """One command's reply; an error reply raises ShardError (errors nested in an
        array, as in EXEC's, stay values)."""
        call = self._submit(pack(args), 1, single=True)
        return await trio.lowlevel.wait_task_rescheduled(call.abort)

    async def pipeline(self, commands: Iterable[Sequence[Arg]]) -> list[Any]:
        """The replies of several commands sent together, in order; error replies are
        ShardError values in the list."""
        packed = [pack(command) for command in commands]
        if not packed:
            await trio.lowlevel.checkpoint()
            return []
        call = self._submit(b"".join(packed), len(packed))
        return await trio.lowlevel.wait_task_rescheduled(call.abort)

    async def call_raw(self, *args: Arg) -> Raw:
        """One command's reply as the bytes the shard wrote (errors included)."""
        call = self._submit(pack(args), 1, raw=True, single=True)
        return await trio.lowlevel.wait_task_rescheduled(call.abort)

    async def pipeline_raw(self, commands: Iterable[Sequence[Arg]]) -> list[Raw]:
        """Several commands sent together; their replies as the shard's bytes."""
        packed = [pack(command) for command in commands]
        call = self._submit(b"".join(packed), len(packed), raw=True)
        return await trio.lowlevel.wait_task_rescheduled(call.abort)

    def dedicated(self) -> AbstractAsyncContextManager[DedicatedConnection]:
        """``async with link.dedicated() as conn``: a connection for this task alone."""
        return self.pool.connection()

    def _submit(self, request: bytes, expected: int, raw: bool = False,
                single: bool = False) -> _Call:
        if not self._running:
            raise ShardUnavailable(f"the link to shard {self.address} is not running")
        call = _Call(request, expected, trio.lowlevel.current_task(), raw, single)
        self._unsent.append(call)
        (self._work if self._stream is not None else self._demand).set()
        return call

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect (raising ShardUnavailable at once if the shard cannot be reached), then
        keep the link until cancelled."""
        if self._running:
            raise RuntimeError(f"the link to shard {self.address} is already running")
        await self._connect()
        self._running = True
        task_status.started()
        try:
            while True:
                if self._stream is None:
                    if not self._unsent:
                        await self._demand.wait()
                    self._demand = trio.Event()
                    try:
                        await self._connect()
                    except ShardUnavailable as exc:
                        unsent, self._unsent = self._unsent, []
                        _fail(unsent, str(exc))
                        continue
                assert self._stream is not None
                await self._serve(self._stream)
        finally:
            self._running = False
            message = f"the link to shard {self.address} is closed"
            self._drop_connection(message)
            unsent, self._unsent = self._unsent, []
            _fail(unsent, message)
            self.pool.close_idle()

    async def _connect(self) -> None:
        self._stream = await self.address.connect(self.connect_timeout, resp3=self.resp3)
        self.connects += 1
        self._work = trio.Event()  # a stale wake-up would send a round early, split in two
        if self._unsent:
            self._work.set()  # what was queued while connecting goes out now

    async def _serve(self, stream: trio.SocketStream) -> None:
        """Run the reader and the writer until the connection is lost."""
        lost: list[str] = []

        async def guard(job: Any, cancel_scope: trio.CancelScope) -> None:
            try:
                lost.append(await job())
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError,
                    hiredis.ProtocolError, FramingError) as exc:
                lost.append(reason(exc))
            cancel_scope.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(guard, partial(self._read, stream), nursery.cancel_scope)
            nursery.start_soon(guard, partial(self._write, stream), nursery.cancel_scope)
        why = lost[0] if lost else "closed"
        log.warning("shard connection lost", shard=str(self.address), reason=why,
                    failed_calls=sum(1 for c in self._sent if c.task is not None))
        self._drop_connection(f"lost the connection to shard {self.address}: {why}")

    def _drop_connection(self, message: str) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.socket.close()
        sent, self._sent = self._sent, collections.deque()
        _fail(sent, message)

    async def _write(self, stream: trio.SocketStream) -> str:
        while True:
            await self._work.wait()  # woken in one pass, runs in the next: a whole round
            self._work = trio.Event()
            batch, self._unsent = self._unsent, []
            live = [call for call in batch if call.task is not None]
            if not live:
                continue
            self._sent.extend(live)
            self.writes += 1
            await stream.send_all(live[0].request if len(live) == 1
                                  else b"".join([call.request for call in live]))

    async def _read(self, stream: trio.SocketStream) -> str:
        framer = ReplyFramer()
        parser = new_reader()
        sent = self._sent
        reschedule = trio.lowlevel.reschedule
        while True:
            data = await stream.receive_some(READ_SIZE)
            if not data:
                return "the shard closed the connection"
            framer.feed(data)
            while (frame := framer.next()) is not None:
                if not sent:
                    return "a reply nobody asked for"
                call = sent[0]
                if call.raw:
                    reply: Any = Raw(frame)
                else:
                    parser.feed(frame)
                    reply = parser.gets()
                if call.single:
                    sent.popleft()
                    if call.task is not None:
                        result = (outcome.Error(reply) if isinstance(reply, ShardError)
                                  else outcome.Value(reply))
                        reschedule(call.task, result)
                        call.task = None
                    continue
                call.replies.append(reply)
                if len(call.replies) == call.expected:
                    sent.popleft()
                    if call.task is not None:
                        reschedule(call.task, outcome.Value(call.replies))
                        call.task = None


@asynccontextmanager
async def open_link(address: ShardAddress | str, **options: Any) -> AsyncIterator[ShardLink]:
    """A running ShardLink for the body of the block."""
    if isinstance(address, str):
        address = ShardAddress.parse(address)
    link = ShardLink(address, **options)
    async with trio.open_nursery() as nursery:
        await nursery.start(link.run)
        try:
            yield link
        finally:
            nursery.cancel_scope.cancel()
