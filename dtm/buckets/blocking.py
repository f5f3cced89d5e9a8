"""Blocking commands on the redis engine (BLPOP, BLMOVE, BZPOPMIN, BLMPOP, XREAD BLOCK, …).

A command cannot block inside a shard's script or MULTI (there it answers at once, as if
its timeout had passed), and a connection parked in a shard would hold keys without
their locks. So a front runs a blocking command as attempts: each attempt is the command
itself, run atomically like any other (guard on one shard, or across shards), which does
not block. While the answer is "nothing yet", the front waits for a change to one of
the keys (a keyspace notification from the key's shard: every front subscribes to the
same notifications, so a push through any front wakes a client waiting on any other) or
for the timeout, and tries again. ``XREAD``'s ``$`` is fixed to the stream's last ID at
the first attempt, so entries added between attempts are not skipped.
"""

from __future__ import annotations

import itertools
import math
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Final

import structlog
import trio

from dtm.buckets.address import READ_SIZE, ShardUnavailable, new_reader, pack
from dtm.buckets.frames import FramingError, ReplyFramer
from dtm.buckets.redis import exec_item, parse
from dtm.buckets.scripts import UNLOCKED_CHANNEL
from dtm.errors import CommandError
from dtm.resp import NO_REPLY, Raw

if TYPE_CHECKING:
    from dtm.buckets.keyspecs import CommandInfo
    from dtm.buckets.redis import RedisEngine
    from dtm.buckets.shard import RedisBucket
    from dtm.relay import RelaySession

log = structlog.get_logger("dtm.blocking")

# The keyspace events a waiting command needs: K (keyspace channel), g (generic: DEL,
# RENAME, RESTORE…), l (lists), z (sorted sets), t (streams).
NOTIFY_FLAGS: Final = "Kglzt"
UNLOCKED: Final = UNLOCKED_CHANNEL.encode()
# Attempts are repeated at least this often, should a notification be missed.
RETRY_EVERY: Final = 1.0
_NULL_BULK: Final = Raw(b"$-1\r\n")
_NULL_ARRAY: Final = Raw(b"*-1\r\n")
_NULL: Final = Raw(b"_\r\n")  # RESP3 has one null for both


def timeout_of(name: str, argv: list[bytes]) -> float | None:
    """The command's timeout in seconds (0: forever), or None if it cannot be read (the
    first attempt then gets the shard's own error)."""
    try:
        if name in ("blmpop", "bzmpop"):
            seconds = float(argv[1])
        elif name in ("xread", "xreadgroup"):
            for i in range(1, len(argv) - 1):
                if argv[i].lower() == b"block":
                    return float(int(argv[i + 1])) / 1000
                if argv[i].lower() == b"streams":
                    break
            return -1.0  # not blocking at all
        else:
            seconds = float(argv[-1])
    except ValueError:
        return None
    if math.isnan(seconds) or math.isinf(seconds):
        return None
    return seconds


def is_nothing(reply: Raw) -> bool:
    return reply.data in (b"$-1\r\n", b"*-1\r\n", b"_\r\n")


async def run(session: RelaySession, info: CommandInfo, argv: list[bytes], keys: list[bytes],
              homes: set[int]) -> Any:
    engine = session.engine
    name = info.name
    timeout = timeout_of(name, argv)
    if name == "xread" and timeout is not None and timeout >= 0:
        argv = await _fix_dollar_ids(session, argv)
    if name in ("xread", "xreadgroup"):
        # Each attempt must not block (a script refuses BLOCK outright): the front waits.
        argv = _without_block(argv)
    db = session.db.index
    deadline = math.inf if not timeout or timeout < 0 else trio.current_time() + timeout
    notifier: Notifier = engine.notifier
    blocked = False
    unblocked: list[bool] = []  # set by CLIENT UNBLOCK: [True] for ERROR
    scopes: list[trio.CancelScope] = []  # the wait going on

    def unblock(error: bool) -> bool:
        if unblocked:
            return False
        unblocked.append(error)
        for scope in scopes:
            scope.cancel()
        return True

    with notifier.watching(db, keys) as wait:
        await wait.ready()
        hung_up = HangUp(session.conn.sock)
        try:
            while True:
                if hung_up.seen:
                    # As Redis unblocks a client that disconnects: no attempt may take an
                    # element for a client that is gone.
                    session.close_after_reply = True
                    return NO_REPLY
                reply = await _attempt(session, info, argv, keys, homes)
                if blocked and reply.data.startswith(b"-WRONGTYPE") and not await _source_is_list(
                        session, name, keys):
                    pass  # as Redis: a waited key turned another type keeps its clients waiting
                elif timeout is None or timeout < 0 or not is_nothing(reply) or reply.data.startswith(b"-"):
                    return reply
                wait.done()
                left = deadline - trio.current_time()
                if unblocked:  # CLIENT UNBLOCK
                    if unblocked[0]:
                        return CommandError("UNBLOCKED client unblocked via CLIENT UNBLOCK")
                    left = 0
                if left <= 0:
                    if session.proto == 3:
                        return _NULL
                    return _NULL_BULK if name in ("blmove", "brpoplpush") else _NULL_ARRAY
                if not blocked:
                    blocked = True
                    notifier.blocked += 1
                    session.unblock = unblock
                with trio.move_on_after(min(left, RETRY_EVERY)) as waiting:
                    scopes[:] = [waiting]
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(hung_up.watch, waiting)
                        await wait.changed()
                        nursery.cancel_scope.cancel()
                await wait.turn()
        finally:
            if blocked:
                notifier.blocked -= 1
                session.unblock = None


class HangUp:
    """Notices a waiting client's hang-up (its connection at end of input) while it
    waits, so the wait ends; bytes it sends meanwhile (a pipeline) are left unread."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.seen = False
        self.sending = False  # the client sent more: readable from now on, not a hang-up

    async def watch(self, waiting: trio.CancelScope) -> None:
        if self.sending:
            await trio.sleep_forever()
        await trio.lowlevel.wait_readable(self.sock)
        try:
            peeked = self.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            peeked = b"-"
        except OSError:
            peeked = b""
        if peeked:
            self.sending = True
            await trio.sleep_forever()
        self.seen = True
        waiting.cancel()


async def _source_is_list(session: RelaySession, name: str, keys: list[bytes]) -> bool:
    """Whether a WRONGTYPE met while waiting is BLMOVE's or BRPOPLPUSH's destination's
    (its source is a list: Redis serves the client that error) rather than a waited key's."""
    if name not in ("blmove", "brpoplpush"):
        return False
    engine = session.engine
    source = keys[0]
    reply = await engine.guarded(engine.shard_of(source), session.db.index, [source], ["TYPE", source])
    return parse(reply) == b"list"


async def _attempt(session: RelaySession, info: CommandInfo, argv: list[bytes],
                   keys: list[bytes], homes: set[int]) -> Raw:
    engine = session.engine
    # On one shard: the guard, or (Redis 7.0 flags BLPOP and its kin noscript) the
    # exclusive path, which runs it inside MULTI, where it never blocks.
    if len(homes) == 1:
        return await session.on_one_shard(next(iter(homes)), info, argv, keys)
    db = session.db.index
    reply = await engine.across(db, [(db, key) for key in keys], [argv], writes=True,
                                proto=session.proto)
    assert reply is not None
    return exec_item(reply)


def _without_block(argv: list[bytes]) -> list[bytes]:
    """XREAD/XREADGROUP without its BLOCK option (options come before STREAMS)."""
    i = 1
    while i < len(argv) - 1:
        option = argv[i].lower()
        if option == b"streams":
            break
        if option == b"block":
            return argv[:i] + argv[i + 2:]
        # GROUP's two names could read "block"; COUNT takes one value, NOACK none.
        i += {b"group": 3, b"count": 2}.get(option, 1)
    return argv


async def _fix_dollar_ids(session: RelaySession, argv: list[bytes]) -> list[bytes]:
    """XREAD … STREAMS k… $…: each $ becomes that stream's last ID now."""
    lowered = [arg.lower() for arg in argv]
    if b"streams" not in lowered:
        return argv
    start = lowered.index(b"streams") + 1
    rest = len(argv) - start
    if rest % 2:
        return argv
    half = rest // 2
    fixed = list(argv)
    for i in range(half):
        if argv[start + half + i] == b"$":
            key = argv[start + i]
            engine = session.engine
            reply = parse(await engine.guarded(engine.shard_of(key), session.db.index, [key],
                                               ["XINFO", "STREAM", key]))
            last = b"0-0"
            if isinstance(reply, list):
                fields = dict(zip(reply[::2], reply[1::2]))
                last = fields.get(b"last-generated-id", b"0-0")
            fixed[start + half + i] = last
    return fixed


class Notifier:
    """Keyspace notifications of every shard, for the commands waiting in this front."""

    def __init__(self, engine: RedisEngine) -> None:
        self.engine = engine
        self.blocked = 0  # clients of this front waiting now: INFO's blocked_clients
        # Woken waiters whose next attempt is due, by ticket (arrival order): each waits
        # for the older ones' attempts, so as in Redis the client that blocked first is
        # served first (within this front).
        self._tickets = itertools.count()
        self._turns: dict[int, trio.Event] = {}
        self._waiters: dict[tuple[int, bytes], set[Waiter]] = {}  # by (shard, channel)
        self._wanted: list[set[bytes]] = [set() for _ in engine.shards]
        self._kick = [trio.Event() for _ in engine.shards]
        self._confirmed: list[set[bytes]] = [set() for _ in engine.shards]
        self._confirm = trio.Event()
        # Commands waiting for a transaction's locks to go, by (shard, txid): the commit
        # and abort scripts publish the txid on UNLOCKED_CHANNEL, which every shard's
        # subscriber follows.
        self._unlocks: dict[tuple[int, bytes], trio.Event] = {}
        for wanted in self._wanted:
            wanted.add(UNLOCKED_CHANNEL.encode())

    async def unlocked(self, index: int, txid: str, timeout: float) -> None:
        """Until txid releases its locks on shard index, or timeout seconds."""
        key = (index, txid.encode())
        event = self._unlocks.get(key)
        if event is None:
            event = self._unlocks[key] = trio.Event()
        try:
            with trio.move_on_after(timeout):
                await event.wait()
        finally:
            if self._unlocks.get(key) is event and not event.is_set():
                del self._unlocks[key]

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            for shard in self.engine.shards:
                nursery.start_soon(self._follow, shard)
            task_status.started()

    @contextmanager
    def watching(self, db: int, keys: list[bytes]) -> Iterator[Waiter]:
        """Follow the keys (subscribing on their shards) for the body of the block."""
        waiter = Waiter(self, [(self.engine.shard_of(key), b"__keyspace@%d__:%s" % (db, key))
                               for key in keys])
        for index, channel in waiter.entries:
            self._waiters.setdefault((index, channel), set()).add(waiter)
            if channel not in self._wanted[index]:
                self._wanted[index].add(channel)
                self._kick[index].set()
        try:
            yield waiter
        finally:
            waiter.done()
            for entry in waiter.entries:
                waiters = self._waiters.get(entry)
                if waiters is not None:
                    waiters.discard(waiter)
                    if not waiters:
                        del self._waiters[entry]
                        self._wanted[entry[0]].discard(entry[1])
                        self._kick[entry[0]].set()

    async def _follow(self, shard: RedisBucket) -> None:
        """Keep this shard's subscriptions equal to what waiters want; wake them."""
        index = shard.index
        while True:
            try:
                stream = await shard.open_stream()
                try:
                    await self._subscriber(index, stream)
                finally:
                    stream.socket.close()
            # except*: _subscriber's nursery wraps what its reader raises in a group, and a
            # group let through here would take the whole front down with one shard.
            except* (ShardUnavailable, OSError, trio.BrokenResourceError, FramingError) as group:
                log.warning("keyspace notifications lost; reconnecting", shard=index,
                            error=str(group.exceptions[0]))
            self._confirmed[index].clear()
            for waiters in list(self._waiters.values()):
                for waiter in waiters:
                    waiter.wake()  # they retry at once
            await trio.sleep(0.5)

    async def _subscriber(self, index: int, stream: trio.SocketStream) -> None:
        """One connection in subscribe mode: a task sends (UN)SUBSCRIBEs as waiters come
        and go, this one reads confirmations and notifications."""
        subscribed: set[bytes] = set()
        framer = ReplyFramer()
        reader = new_reader()
        async with trio.open_nursery() as nursery:
            async def sync() -> None:
                while True:
                    await self._kick[index].wait()
                    self._kick[index] = trio.Event()
                    wanted = set(self._wanted[index])
                    new, old = wanted - subscribed, subscribed - wanted
                    request = b""
                    if new:
                        request += pack(("SUBSCRIBE", *new))
                    if old:
                        request += pack(("UNSUBSCRIBE", *old))
                    if request:
                        await stream.send_all(request)
                    subscribed.clear()
                    subscribed.update(wanted)

            self._kick[index].set()
            nursery.start_soon(sync)
            while True:
                data = await stream.receive_some(READ_SIZE)
                if not data:
                    raise ShardUnavailable("the shard closed the connection")
                framer.feed(data)
                while (frame := framer.next()) is not None:
                    reader.feed(frame)
                    message = reader.gets()
                    if not isinstance(message, list) or len(message) != 3:
                        continue
                    kind, channel, data = message
                    if kind == b"message":
                        if channel == UNLOCKED:
                            event = self._unlocks.pop((index, data), None)
                            if event is not None:
                                event.set()
                            continue
                        for waiter in list(self._waiters.get((index, channel), ())):
                            waiter.wake()
                    elif kind == b"subscribe":
                        self._confirmed[index].add(channel)
                        self._confirm.set()
                        self._confirm = trio.Event()
                    elif kind == b"unsubscribe":
                        self._confirmed[index].discard(channel)


class Waiter:
    """One waiting command: the channels of its keys, woken by a change to any of them."""

    def __init__(self, notifier: Notifier, entries: list[tuple[int, bytes]]) -> None:
        self.notifier = notifier
        self.entries = entries
        self._event = trio.Event()
        self.ticket = next(notifier._tickets)

    def wake(self) -> None:
        self._event.set()
        self.notifier._turns.setdefault(self.ticket, trio.Event())

    async def turn(self) -> None:
        """Until the waiters woken before this one that blocked earlier have tried."""
        for ticket, tried in sorted(self.notifier._turns.items()):
            if ticket >= self.ticket:
                break
            await tried.wait()

    def done(self) -> None:
        tried = self.notifier._turns.pop(self.ticket, None)
        if tried is not None:
            tried.set()

    async def ready(self) -> None:
        """Until every channel is subscribed, so no change after this is missed."""
        confirmed = self.notifier._confirmed
        while not all(channel in confirmed[index] for index, channel in self.entries):
            await self.notifier._confirm.wait()

    async def changed(self) -> None:
        await self._event.wait()
        self._event = trio.Event()
