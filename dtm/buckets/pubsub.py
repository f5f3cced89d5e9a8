"""Publish/subscribe on the redis engine: every front relays its subscribers through the
first shard, so a message published through any front reaches subscribers of all.

A subscribing client gets its own connection to that shard; its subscribe-family
commands and PINGs go there as they are, and a forwarder task relays everything the
shard sends (confirmations and messages) to the client byte for byte. The front counts
the subscriptions from the confirmations, so it knows when the client has left the
subscribed state: only then do its other commands run again.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Final

import structlog
import trio

from dtm.buckets.address import ShardUnavailable, new_reader, pack
from dtm.buckets.pool import DedicatedConnection
from dtm.buckets.scripts import UNLOCKED_CHANNEL, USER_DATABASES
from dtm.errors import err
from dtm.resp import NO_REPLY

if TYPE_CHECKING:
    from dtm.buckets.shard import RedisBucket
    from dtm.session import Session

log = structlog.get_logger("dtm.pubsub")

ALLOWED: Final = frozenset({"subscribe", "psubscribe", "ssubscribe", "unsubscribe",
                            "punsubscribe", "sunsubscribe", "ping", "quit", "reset"})
_KIND_OF: Final = {"unsubscribe": b"channel", "punsubscribe": b"pattern",
                   "sunsubscribe": b"shard"}
_MESSAGES: Final = frozenset({b"message", b"pmessage", b"smessage"})
UNLOCKED: Final = UNLOCKED_CHANNEL.encode()
_ADDS: Final = {b"subscribe": b"channel", b"psubscribe": b"pattern", b"ssubscribe": b"shard"}
_REMOVES: Final = {b"unsubscribe": b"channel", b"punsubscribe": b"pattern",
                   b"sunsubscribe": b"shard"}


_NOTIFICATION_PREFIXES: Final = (b"__keyspace@", b"__keyevent@")


def _notification(channel: bytes, pattern: bool) -> bool:
    """Whether a channel (or a pattern) may name keyspace notifications, which every
    shard publishes for its own keys."""
    if not pattern:
        return channel.startswith(_NOTIFICATION_PREFIXES)
    literal = re.split(rb"[*?\[\\]", channel, maxsplit=1)[0]  # what every match starts with
    return any(prefix.startswith(literal) or literal.startswith(prefix)
               for prefix in _NOTIFICATION_PREFIXES)


def _internal(message: list[Any]) -> bool:
    """A message no client hears: on dtm's own channel (a transaction's unlock), or a
    keyspace notification of dtm's own databases (16 and up: locks, scratch copies)."""
    channel = message[2] if message[0] == b"pmessage" else message[1]
    if channel == UNLOCKED:
        return True
    if channel.startswith(_NOTIFICATION_PREFIXES):
        db = channel[11:channel.find(b"__", 11)]
        return db.isdigit() and int(db) >= USER_DATABASES
    return False


class PubSubRelay:
    def __init__(self, shards: list[RedisBucket]) -> None:
        self.shard = shards[0]
        self.others = shards[1:]
        self.conn: DedicatedConnection | None = None
        # Connections to the other shards, for keyspace notifications only: their
        # messages are relayed, their confirmations are not (the first shard's are).
        self.followers: list[DedicatedConnection] = []
        self.active = False
        self.subscribed: dict[bytes, set[bytes]] = {b"channel": set(), b"pattern": set(),
                                                    b"shard": set()}
        self._relayed = 0  # replies (not messages) relayed so far
        self._progress = trio.Event()
        self._scopes: list[trio.CancelScope] = []  # the relaying tasks', cancelled by close

    async def command(self, session: Session, name: str, argv: list[bytes]) -> Any:
        if name not in ALLOWED:
            raise err(f"Can't execute '{name}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / "
                      "PING / QUIT / RESET are allowed in this context")
        if name == "quit" or name == "reset":
            self.close()
            return await session.execute(argv)
        if self.conn is None:
            self.conn = await self.shard.connection(session.proto)
            session.server.client_nursery.start_soon(self._forward, session)
        if name in _KIND_OF:
            expected = len(argv) - 1 or max(1, len(self.subscribed[_KIND_OF[name]]))
        elif name == "ping":
            expected = 1
        else:
            expected = len(argv) - 1
        self.active = True
        target = self._relayed + expected
        # The forwarder task is inside reply_raw() meanwhile, which marks the connection
        # busy: the request goes to the stream itself (one sender, one receiver).
        try:
            await self.conn.stream.send_all(pack(argv))
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise ShardUnavailable(f"lost the connection to shard {self.conn.address}") from exc
        await self._follow(session, name, argv)
        while self._relayed < target and self.conn is not None:
            await self._progress.wait()
        return NO_REPLY

    async def _follow(self, session: Session, name: str, argv: list[bytes]) -> None:
        """The notification channels of a (P)SUBSCRIBE or (P)UNSUBSCRIBE on every other
        shard too."""
        if name not in ("subscribe", "psubscribe", "unsubscribe", "punsubscribe") or not self.others:
            return
        channels = [arg for arg in argv[1:] if _notification(arg, name.startswith("p"))]
        if not channels and not (name.endswith("unsubscribe") and len(argv) == 1):
            return
        if not self.followers:
            if name.endswith("unsubscribe"):
                return
            for shard in self.others:
                follower = await shard.connection(session.proto)
                self.followers.append(follower)
                session.server.client_nursery.start_soon(self._relay_messages, session, follower)
        request = pack([argv[0], *channels])
        for follower in self.followers:
            try:
                await follower.stream.send_all(request)
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise ShardUnavailable(f"lost the connection to shard {follower.address}") from exc

    async def _relay_messages(self, session: Session, follower: DedicatedConnection) -> None:
        reader = new_reader()
        with self._scope():
            try:
                while True:
                    frame = await follower.reply_raw()
                    reader.feed(frame.data)
                    reply = reader.gets()
                    if (isinstance(reply, list) and reply and reply[0] in _MESSAGES
                            and not _internal(reply)):
                        await session.conn.send(frame.data)
            except (ShardUnavailable, OSError, trio.ClosedResourceError) as exc:
                log.info("subscriber's shard connection ended", reason=str(exc))
                session.kill()

    async def _forward(self, session: Session) -> None:
        reader = new_reader()
        conn = self.conn
        assert conn is not None
        with self._scope():
            try:
                while True:
                    frame = await conn.reply_raw()
                    reader.feed(frame.data)
                    reply = reader.gets()
                    if isinstance(reply, list) and reply and reply[0] in _MESSAGES:
                        if not _internal(reply):
                            await session.conn.send(frame.data)
                        continue
                    await session.conn.send(frame.data)
                    if isinstance(reply, list) and len(reply) == 3:
                        kind, channel, count = reply
                        if kind in _ADDS:
                            self.subscribed[_ADDS[kind]].add(channel)
                        elif kind in _REMOVES:
                            self.subscribed[_REMOVES[kind]].discard(channel)
                        if count == 0 and kind in _REMOVES:
                            self.active = False
                    self._relayed += 1
                    self._progress.set()
                    self._progress = trio.Event()
            except (ShardUnavailable, OSError, trio.ClosedResourceError) as exc:
                log.info("subscriber's shard connection ended", reason=str(exc))
                session.kill()
            finally:
                self._progress.set()

    def _scope(self) -> trio.CancelScope:
        scope = trio.CancelScope()
        self._scopes.append(scope)
        return scope

    def close(self) -> None:
        self.active = False
        for scope in self._scopes:
            scope.cancel()
        self._scopes = []
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        for follower in self.followers:
            follower.close()
        self.followers = []
