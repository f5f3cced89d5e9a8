"""A client of a front on the redis engine: where each of its commands goes.

The connection's own commands (PING, SELECT, AUTH, HELLO, CLIENT, CONFIG, INFO, QUIT,
RESET, MONITOR, SLOWLOG, …) run in the front with the same handlers as the memory
engine. MULTI/EXEC/WATCH are kept here and run on the shards (``exec_transaction``).
Whole-keyspace commands (KEYS, SCAN, DBSIZE, RANDOMKEY, FLUSHALL, …) fan out to every
shard and their replies are combined. Publish/subscribe runs on the first shard, which
every front shares. Every other command goes by its keys (``RedisEngine``): one shard
through its guard, several atomically through the scratch database; the shard's reply is
relayed as it wrote it.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

import trio

from dtm.buckets import blocking
from dtm.buckets.address import ShardError, ShardUnavailable
from dtm.buckets.blocking import NOTIFY_FLAGS
from dtm.buckets.pool import DedicatedConnection
from dtm.buckets.pubsub import PubSubRelay
from dtm.buckets.redis import (
    WIDE_INTEGER_REPLIES,
    TransactionAborted,
    database_positions,
    each,
    exec_item,
    parse,
)
from dtm.buckets.scripts import MAX_ARGS, USER_DATABASES
from dtm.commands.table import resolve, unknown_command
from dtm.config import REDIS_NAMES
from dtm.errors import DB_RANGE, NOAUTH, CommandError, err
from dtm.resp import Raw, Verbatim, encode, parse_int
from dtm.session import AUTH_FREE, BATCH_BUDGET, Session

if TYPE_CHECKING:
    from dtm.buckets.keyspecs import CommandInfo
    from dtm.buckets.redis import RedisEngine

# Run by the front with dtm's own handlers.
LOCAL: Final = frozenset({
    "ping", "echo", "auth", "hello", "quit", "reset", "client", "select", "config", "info",
    "monitor", "slowlog", "latency", "shutdown", "debug", "save", "bgsave", "lastsave",
})
# Whole keyspace: every shard.
FANOUT: Final = frozenset({
    "dbsize", "keys", "scan", "randomkey", "flushall", "flushdb", "swapdb", "bgrewriteaof",
    "script", "function",
})
PUBSUB: Final = frozenset({
    "subscribe", "psubscribe", "ssubscribe", "unsubscribe", "punsubscribe", "sunsubscribe",
    "publish", "spublish", "pubsub",
})
TRANSACTION: Final = frozenset({"multi", "exec", "discard", "watch", "unwatch"})
# CONFIG settings the front keeps (the rest are the shards').
FRONT_SETTINGS: Final = frozenset([*REDIS_NAMES, "port", "dir", "save", "appendonly",
                                   "appendfsync"])
EVICTION_REFUSED: Final = ("CONFIG SET failed (possibly related to argument "
                           "'maxmemory-policy') - dtm's shards keep noeviction: an evicted "
                           "lock, intent or decision would break atomicity")
NO_SUCH_DATABASE: Final = b"2147483647"
# Never in a pipelined run of guarded commands: the front handles them itself.
NOT_BATCHED: Final = LOCAL | FANOUT | PUBSUB | TRANSACTION | {"move", "copy"}
# Queued inside MULTI and run by the shard with the rest (no front state involved).
QUEUEABLE_LOCAL: Final = frozenset({"ping", "echo", "select"})
# Inside MULTI, these make EXEC hold every shard and run the commands one by one.
HELD_IN_MULTI: Final = FANOUT | (LOCAL - QUEUEABLE_LOCAL)
# Replies holding a null array, which the guard's Lua turns into a null bulk string: the
# front puts the array back (null_arrays_restored).
NULL_ARRAY_REPLIES: Final = frozenset({"lpop", "rpop", "lmpop", "zmpop", "xread", "xreadgroup",
                                       "xrange", "xrevrange", "zrank", "zrevrank", "geopos",
                                       "xpending"})


# Whether a command (by full name) may go through the guard in a pipelined run.
_GUARDED: dict[str, bool] = {}


def key_pairs(name: str, argv: list[bytes], keys: list[bytes], db: int) -> list[tuple[int, bytes]]:
    """The (database, key) pairs a command touches: its keys in db, but MOVE's key also
    in its target database and COPY … DB's destination in that database."""
    pairs = [(db, key) for key in keys]
    if name not in ("move", "copy") or not keys or (name == "copy" and len(keys) != 2):
        return pairs
    for i in database_positions(argv):
        target = parse_int(argv[i])
        if target is not None and 0 <= target < USER_DATABASES:
            if name == "move":
                pairs.append((target, keys[0]))
            else:
                pairs[1] = (target, keys[1])
    return pairs


class RelaySession(Session):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        assert self.server.engine is not None
        self.engine: RedisEngine = self.server.engine
        # WATCH: a dedicated connection per shard, holding Redis's own WATCH there.
        self.watching: dict[int, DedicatedConnection] = {}
        self.watched: dict[int, list[tuple[int, bytes]]] = {}
        self.pubsub: PubSubRelay | None = None
        # While blocked in a blocking command: ends the wait (CLIENT UNBLOCK; True for ERROR).
        self.unblock: Callable[[bool], bool] | None = None

    # ---------------------------------------------------------------- batch

    async def _run_batch(self) -> bytes:
        """Every complete command buffered; a run of plain commands for one shard goes
        out in one round trip (guarded_batch keeps them in order)."""
        server = self.server
        replies: list[bytes] = []
        append = replies.append
        began = trio.current_time()
        while not self.close_after_reply:
            batch = self._take_batch(append)
            if not batch:
                break
            server.stats.commands += len(batch)
            position = 0
            while position < len(batch):
                run = self._plain_run(batch, position)
                if run:
                    for reply in await self._guarded_run(run):
                        if not self.muted or self._unmuted(reply):
                            append(encode(reply, self.proto))
                    position += len(run)
                    continue
                reply = await self.relay(batch[position])
                position += 1
                if not self.muted or self._unmuted(reply):
                    append(encode(reply, self.proto))
                if self.close_after_reply:
                    break
            if trio.current_time() - began > BATCH_BUDGET:
                if replies:
                    await self.conn.send(b"".join(replies))
                    replies.clear()
                await trio.lowlevel.checkpoint()
                began = trio.current_time()
        return b"".join(replies)

    def _writes(self, name: str, argv: list[bytes]) -> bool:
        """Whether a command may write (CLIENT PAUSE WRITE holds it): EXEC if one of its
        queued commands may."""
        if name == "exec":
            return any(self._writes(queued[0].lower().decode("latin-1"), queued)
                       for _, queued in self.queued)
        if name in FANOUT:
            return name in ("flushall", "flushdb", "swapdb", "function", "script")
        if name in ("eval", "evalsha", "fcall"):
            return True  # as Redis, a script may write unless it is a *_RO one
        info = self.engine.table.lookup(argv)
        return info is not None and bool({"write", "may_replicate"} & info.flags)

    async def _guarded_run(self, run: list[tuple[int, list[bytes], list[bytes]]]) -> list[Any]:
        index = run[0][0]
        engine = self.engine
        try:
            if len(run) == 1:
                _, keys, argv = run[0]
                return [await engine.guarded(index, self.db.index, keys, argv, self.proto)]
            return await engine.guarded_batch(
                index, self.db.index, [(keys, argv) for _, keys, argv in run], self.proto)
        except ShardUnavailable as exc:
            return [err(f"dtm: {exc}")] * len(run)

    def _plain_run(self, batch: list[list[bytes]], start: int) -> list[tuple[int, list[bytes], list[bytes]]]:
        """The commands from batch[start] on that go through the guard of one shard (no
        front state involved, keys known); empty if batch[start] is not one of them."""
        if (self.in_multi or not self.authenticated or self.muted or self.server.pause.active
                or (self.pubsub is not None and self.pubsub.active)):
            return []
        engine = self.engine
        table = engine.table
        run: list[tuple[int, list[bytes], list[bytes]]] = []
        for argv in batch[start:]:
            info = table.lookup(argv)
            if info is None or not info.arity_ok(len(argv)) or len(argv) > MAX_ARGS:
                break
            plain = _GUARDED.get(info.name)
            if plain is None:
                plain = _GUARDED[info.name] = not (
                    info.name in NOT_BATCHED or "noscript" in info.flags
                    or "blocking" in info.flags or info.name in WIDE_INTEGER_REPLIES
                    or info.name in NULL_ARRAY_REPLIES)
            if not plain:
                break
            positions = info.keys(argv)
            if not positions:
                break
            keys = [argv[i] for i in positions]
            index = engine.shard_of(keys[0])
            if run and index != run[0][0]:
                break
            if any(engine.shard_of(key) != index for key in keys[1:]):
                break
            run.append((index, keys, argv))
        return run

    async def relay(self, argv: list[bytes]) -> Any:
        argv = self._user_databases_only(argv)
        name = argv[0].lower().decode("latin-1")
        self.last_command = name
        try:
            if not self.authenticated and name not in AUTH_FREE:
                raise NOAUTH
            if (self.pubsub is not None and self.pubsub.active
                    and (self.proto == 2 or name in PUBSUB or name in ("quit", "reset"))):
                return await self.pubsub.command(self, name, argv)
            if self.server.pause.active and name not in LOCAL:
                await self.server.pause.wait_writes(self._writes(name, argv))
            if name in TRANSACTION:
                return await self._transaction_command(name, argv)
            if self.in_multi:
                return self._queue_relayed(name, argv)
            if name in LOCAL:
                if name == "info":
                    return await self._info(argv)
                if name == "config" and len(argv) > 2 and argv[1].lower() in (b"get", b"set"):
                    return await self._config(argv)
                return await self.execute(argv)
            if name in FANOUT:
                return await self._fanout(name, argv)
            if name in PUBSUB:
                return await self._pubsub(name, argv)
            return await self.forward(argv)
        except CommandError as exc:
            # MULTI and WATCH refused inside MULTI are not queued, so they leave the
            # transaction alone (Redis executes them rather than rejecting them).
            if self.in_multi and name not in TRANSACTION:
                self.multi_error = True
            self.server.observe.error(exc.text)
            return exc
        except (ShardUnavailable, ShardError) as exc:
            return err(f"dtm: {exc}")

    # -------------------------------------------------------- keyed commands

    async def forward(self, argv: list[bytes]) -> Any:
        engine = self.engine
        info = engine.table.lookup(argv)
        if info is None or not info.arity_ok(len(argv)):
            # Unknown command or wrong arity: the shard says so in Redis's own words.
            return (await engine.raw(0, self.db.index, [argv], self.proto))[0]
        keys = await self._keys(info, argv)
        db = self.db.index
        if not keys:
            return (await engine.raw(0, db, [argv], self.proto))[0]
        homes = {engine.shard_of(key) for key in keys}
        if "blocking" in info.flags:
            return await blocking.run(self, info, argv, keys, homes)
        pairs = key_pairs(info.name, argv, keys, db)
        if len(homes) == 1:
            index = homes.pop()
            if any(pair_db != db for pair_db, _ in pairs):
                # MOVE, COPY … DB: the key in the other database is locked too.
                return await engine.exclusive(index, db, pairs, argv, self.proto)
            return await self.on_one_shard(index, info, argv, keys)
        # EVAL, EVALSHA and FCALL carry no "write" flag, yet write: only a readonly
        # command may skip the write-back.
        reply = await engine.across(db, pairs, [argv], writes="readonly" not in info.flags,
                                    proto=self.proto)
        assert reply is not None
        return exec_item(reply)

    def _user_databases_only(self, argv: list[bytes]) -> list[bytes]:
        """argv with any database index beyond the user's (MOVE, COPY … DB, SWAPDB,
        SELECT inside MULTI) made one no shard has: databases 16 to 32 of a shard are
        dtm's, and the shard then answers Redis's own "DB index is out of range"."""
        limit = self.server.config.databases
        fixed = argv
        for i in database_positions(argv):
            index = parse_int(argv[i])
            if index is not None and index >= limit:
                fixed = fixed if fixed is not argv else list(argv)
                fixed[i] = NO_SUCH_DATABASE
        return fixed

    async def on_one_shard(self, index: int, info: CommandInfo, argv: list[bytes],
                           keys: list[bytes]) -> Raw:
        engine = self.engine
        db = self.db.index
        if ("noscript" in info.flags or info.name in WIDE_INTEGER_REPLIES
                or len(argv) > MAX_ARGS or len(keys) > MAX_ARGS):
            return await engine.exclusive(index, db, [(db, key) for key in keys], argv, self.proto)
        reply = await engine.guarded(index, db, keys, argv, self.proto)
        if info.name in NULL_ARRAY_REPLIES and self.proto == 2:
            return null_arrays_restored(info.name, argv, reply)
        return reply

    async def _keys(self, info: CommandInfo, argv: list[bytes]) -> list[bytes]:
        positions = info.keys(argv)
        if positions is not None:
            return [argv[i] for i in positions]
        reply = await self.engine.raw(0, self.db.index, [("COMMAND", "GETKEYS", *argv)])
        value = parse(reply[0])
        return [] if isinstance(value, ShardError) else list(value)

    # ---------------------------------------------------------- whole keyspace

    async def _fanout(self, name: str, argv: list[bytes], db: int | None = None) -> Any:
        engine = self.engine
        db = self.db.index if db is None else db
        if name == "scan":
            return await self._scan(argv, db)
        if name == "randomkey":
            if len(argv) != 1:
                return (await engine.raw(0, db, [argv], self.proto))[0]
            order = list(range(len(engine.shards)))
            random.shuffle(order)
            for index in order:
                key = parse((await engine.raw(index, db, [argv]))[0])
                if key is not None:
                    return key
            return None
        if name == "flushall":
            return await self._flushall(argv)
        replies = await engine.everywhere(db, argv, self.proto)
        values = [parse(reply) for reply in replies]
        for reply, value in zip(replies, values):
            if isinstance(value, ShardError):
                return reply
        if name == "dbsize":
            return sum(values)
        if name == "keys":
            return [key for keys in values for key in keys]
        if name == "script" and argv[1].lower() == b"exists":
            return [int(all(found)) for found in zip(*values)]
        return replies[0]

    async def _config(self, argv: list[bytes]) -> Any:
        """CONFIG GET/SET: the front's own settings (port, dir, maxclients, timeouts, …)
        here, every other one (maxmemory-policy, notify-keyspace-events, encodings, …)
        on the shards: read from the first, set on all."""
        if argv[1].lower() == b"get":
            local = await self.execute(argv)
            if isinstance(local, CommandError):
                return local
            value = parse((await self.engine.raw(0, 0, [argv]))[0])
            if isinstance(value, ShardError):
                return local
            merged = {name: found for name, found in zip(value[::2], value[1::2])
                      if name.decode("latin-1").lower() not in FRONT_SETTINGS}
            merged.update((name, found) for name, found in local.items()
                          if name.decode("latin-1").lower() in FRONT_SETTINGS)
            return merged
        if len(argv) % 2:
            return await self.execute(argv)  # Redis's error for a missing value
        pairs = [(argv[i], argv[i + 1]) for i in range(2, len(argv), 2)]
        front = [pair for pair in pairs if pair[0].decode("latin-1").lower() in FRONT_SETTINGS]
        shards = [pair for pair in pairs if pair not in front]
        if front:
            reply = await self.execute([argv[0], argv[1], *(x for pair in front for x in pair)])
            if isinstance(reply, CommandError) or not shards:
                return reply
        command: list[bytes] = [argv[0], argv[1]]
        for name, value in shards:
            if name.lower() == b"maxmemory-policy" and value.lower() != b"noeviction":
                raise err(EVICTION_REFUSED)
            if name.lower() == b"notify-keyspace-events":
                # Blocking commands wait on these events: the shards keep them on.
                value = bytes(sorted(set(value) | set(NOTIFY_FLAGS.encode())))
            command += (name, value)
        for reply in await self.engine.everywhere(0, command, self.proto):
            if reply.data.startswith(b"-"):
                return reply
        return "OK"

    async def _flushall(self, argv: list[bytes]) -> Any:
        """FLUSHALL of the user's databases only: a shard's FLUSHALL would also empty
        dtm's own (locks, intents, decisions of transactions in flight). Each shard's
        databases go in one MULTI."""
        check = await self.engine.raw(0, 15, [("FLUSHDB", *argv[1:])], self.proto)
        if check[0].data.startswith(b"-"):
            return check[0]  # a bad option: Redis's error, nothing flushed elsewhere
        commands: list[list[Any]] = [["MULTI"]]
        for index in range(self.server.config.databases):
            commands += (["SELECT", index], ["FLUSHDB", *argv[1:]])
        commands += (["EXEC"], ["SELECT", 0])
        for index in range(len(self.engine.shards)):
            await self.engine.raw(index, 0, commands)
        return "OK"

    async def _scan(self, argv: list[bytes], db: int) -> Any:
        """One cursor over every shard: the shard's own cursor times the shard count,
        plus the shard's index."""
        engine = self.engine
        count = len(engine.shards)
        cursor = parse_int(argv[1]) if argv[1].isdigit() else None
        if cursor is None or cursor >= 1 << 64:
            raise err("invalid cursor")
        index, inner = cursor % count, cursor // count
        reply = parse((await engine.raw(index, db, [[argv[0], str(inner).encode(), *argv[2:]]]))[0])
        if isinstance(reply, ShardError):
            raise CommandError(str(reply))
        following, keys = int(reply[0]), reply[1]
        if following:
            combined = following * count + index
        else:
            combined = index + 1 if index + 1 < count else 0
        return [str(combined).encode(), keys]

    async def _info(self, argv: list[bytes]) -> Any:
        """The front's INFO, with the shards' keyspace summed."""
        local = await self.execute(argv)
        blocked = self.engine.notifier.blocked
        if isinstance(local, Verbatim) and blocked:
            local = Verbatim(local.text.replace(b"\r\nblocked_clients:0\r\n",
                                                b"\r\nblocked_clients:%d\r\n" % blocked))
        if not isinstance(local, Verbatim) or b"# Keyspace" not in local.text:
            return local
        counts: dict[str, tuple[int, int]] = {}
        for reply in await self.engine.everywhere(0, ["INFO", "keyspace"]):
            for line in parse(reply).decode().splitlines():
                if line.startswith("db") and ":" in line:
                    db, fields = line.split(":", 1)
                    values = dict(item.split("=") for item in fields.split(","))
                    keys, expires = counts.get(db, (0, 0))
                    counts[db] = (keys + int(values["keys"]), expires + int(values["expires"]))
        head, _, tail = local.text.partition(b"# Keyspace\r\n")
        rest = tail.split(b"\r\n\r\n", 1)
        lines = b"".join(b"%s:keys=%d,expires=%d,avg_ttl=0\r\n" % (db.encode(), *counts[db])
                         for db in sorted(counts, key=lambda d: int(d[2:])))
        after = b"\r\n" + rest[1] if len(rest) > 1 else b""
        return Verbatim(head + b"# Keyspace\r\n" + lines + after)

    # --------------------------------------------------------------- pub/sub

    async def _pubsub(self, name: str, argv: list[bytes]) -> Any:
        if name in ("publish", "spublish", "pubsub"):
            return (await self.engine.raw(0, 0, [argv], self.proto))[0]
        if self.pubsub is None:
            self.pubsub = PubSubRelay(self.engine.shards)
        return await self.pubsub.command(self, name, argv)

    # ----------------------------------------------------------- transactions

    async def _transaction_command(self, name: str, argv: list[bytes]) -> Any:
        if name == "multi":
            if len(argv) != 1:
                raise err("wrong number of arguments for 'multi' command")
            if self.in_multi:
                raise err("MULTI calls can not be nested")
            self.in_multi = True
            return "OK"
        if name == "discard":
            if len(argv) != 1:
                raise err("wrong number of arguments for 'discard' command")
            if not self.in_multi:
                raise err("DISCARD without MULTI")
            self.discard_multi()
            await self._release_watches()
            return "OK"
        if name == "unwatch":
            if len(argv) != 1:
                raise err("wrong number of arguments for 'unwatch' command")
            if not self.in_multi:
                await self._release_watches()
            return "OK"
        if name == "watch":
            if len(argv) < 2:
                raise err("wrong number of arguments for 'watch' command")
            if self.in_multi:
                raise err("WATCH inside MULTI is not allowed")
            await self._watch(argv[1:])
            return "OK"
        if len(argv) != 1:
            self.discard_multi()
            self.unwatch()
            return CommandError("EXECABORT Transaction discarded because of: wrong number of "
                                "arguments for 'exec' command")
        if not self.in_multi:
            raise err("EXEC without MULTI")
        if self.multi_error:
            self.discard_multi()
            self.unwatch()
            return CommandError("EXECABORT Transaction discarded because of previous errors.")
        queued = [argv for _, argv in self.queued]
        db = self.db.index
        self.discard_multi()
        try:
            return await self.exec_transaction(db, queued)
        finally:
            with trio.CancelScope(shield=True):
                await self._release_watches()

    def _queue_relayed(self, name: str, argv: list[bytes]) -> Any:
        engine = self.engine
        if name in QUEUEABLE_LOCAL:
            pass
        elif name in FANOUT:
            pass  # EXEC then holds every shard (exec_holding_everything)
        elif name in LOCAL:
            # Run by the front at its place in EXEC (which then holds every shard).
            spec = resolve(argv)  # Redis's error for an unknown subcommand or arity
            if "no_multi" in spec.flags:
                self.multi_error = True
                return err("Command not allowed inside a transaction")
        elif name in PUBSUB:
            self.multi_error = True
            if name in ("subscribe", "psubscribe", "ssubscribe"):
                return err("Command not allowed inside a transaction")
            return err(f"dtm: '{name}' is not available inside MULTI on the redis engine")
        else:
            info = engine.table.lookup(argv)
            if info is None:
                self.multi_error = True
                return unknown_command(argv)
            if not info.arity_ok(len(argv)):
                self.multi_error = True
                return err(f"wrong number of arguments for '{info.name}' command")
            if "no_multi" in info.flags:
                self.multi_error = True
                return err("Command not allowed inside a transaction")
        self.queued.append((None, argv))  # type: ignore[arg-type]
        self.queued_bytes += sum(map(len, argv))
        return "QUEUED"

    async def exec_transaction(self, db: int, queued: list[list[bytes]]) -> Any:
        engine = self.engine
        if any(argv[0].lower().decode("latin-1") in HELD_IN_MULTI for argv in queued):
            return await self.exec_holding_everything(db, queued)
        locks: dict[int, list[tuple[int, bytes]]] = {}
        current = db
        touched: list[tuple[int, bytes]] = []
        writes = False
        for argv in queued:
            name = argv[0].lower()
            if name == b"select":
                index = parse_int(argv[1])
                if index is not None and 0 <= index < self.server.config.databases:
                    current = index
                continue
            if name in (b"ping", b"echo"):
                continue
            info = engine.table.lookup(argv)
            assert info is not None
            writes = writes or "readonly" not in info.flags
            for pair in key_pairs(info.name, argv, await self._keys(info, argv), current):
                locks.setdefault(engine.shard_of(pair[1]), []).append(pair)
                touched.append(pair)
        for index, pairs in self.watched.items():
            locks.setdefault(index, []).extend(pairs)
            touched += pairs
        homes = set(locks)
        if len(homes) <= 1:
            index = homes.pop() if homes else 0
            return await self._exec_on_one_shard(index, db, locks.get(index, []), queued)
        reply = await engine.across(db, touched, queued, writes=writes, proto=self.proto,
                                    before_run=self._watches_hold)
        return Raw(b"*-1\r\n") if reply is None else reply

    async def exec_holding_everything(self, db: int, queued: list[list[bytes]]) -> Any:
        """A transaction with whole-keyspace commands (FLUSHDB, KEYS, DBSIZE, …): this
        front holds every shard (no command with keys runs anywhere meanwhile, and the
        transactions holding locks have finished) and runs the commands one by one."""
        engine = self.engine
        txn = await engine.lock_everything()
        try:
            if self.watching and not await self._watches_hold():
                return Raw(b"*-1\r\n")
            parts = []
            current = db
            for argv in queued:
                name = argv[0].lower().decode("latin-1")
                if name == "select":
                    index = parse_int(argv[1])
                    if index is not None and 0 <= index < self.server.config.databases:
                        current = index
                        parts.append(b"+OK\r\n")
                    else:
                        parts.append(encode(DB_RANGE, self.proto))
                    continue
                try:
                    reply = await self._run_held(name, argv, current)
                except CommandError as exc:
                    reply = exc
                parts.append(encode(reply, self.proto))
            return Raw(b"*%d\r\n" % len(parts) + b"".join(parts))
        finally:
            with trio.CancelScope(shield=True):
                await engine.release_everything(txn)

    async def _run_held(self, name: str, argv: list[bytes], db: int) -> Any:
        """One command of exec_holding_everything, while every shard is held."""
        engine = self.engine
        if name in FANOUT:
            return await self._fanout(name, argv, db)
        if name in LOCAL and name not in QUEUEABLE_LOCAL:
            return await self.execute(argv)
        info = engine.table.lookup(argv)
        keys = [] if info is None or name in ("ping", "echo") else await self._keys(info, argv)
        if not keys:
            return (await engine.raw(0, db, [argv], self.proto))[0]
        assert info is not None
        pairs = key_pairs(info.name, argv, keys, db)
        homes = {engine.shard_of(key) for key in keys}
        if len(homes) == 1:
            replies = await engine.raw(homes.pop(), db, [("MULTI",), argv, ("EXEC",)], self.proto)
            return exec_item(replies[2])
        return exec_item(await engine.while_holding_everything(db, pairs, [argv], self.proto))

    async def _exec_on_one_shard(self, index: int, db: int, locks: list[tuple[int, bytes]],
                                 queued: list[list[bytes]]) -> Any:
        engine = self.engine
        while True:
            try:
                txn = await engine.lock({index: locks}) if locks else None
            except TransactionAborted:
                continue
            try:
                others = [i for i in self.watching if i != index]
                if others and not await self._watches_hold(others):
                    return Raw(b"*-1\r\n")
                # The shared link goes back to database 0 after a SELECT among them.
                commands = [("SELECT", db), ("MULTI",), *queued, ("EXEC",), ("SELECT", 0)]
                conn = self.watching.get(index)
                if conn is not None:
                    return (await conn.pipeline_raw(commands))[-2]
                return (await engine.shards[index].raw(0, commands, self.proto))[-2]
            finally:
                if txn is not None:
                    with trio.CancelScope(shield=True):
                        await engine.release(txn)

    async def _watches_hold(self, shards: list[int] | None = None) -> bool:
        """Whether no watched key changed: an empty MULTI on each watching connection."""
        async def holds(index: int) -> bool:
            replies = await self.watching[index].pipeline_raw([("MULTI",), ("EXEC",)])
            return replies[-1].data != b"*-1\r\n"

        return all(await each(holds, list(self.watching) if shards is None else shards))

    async def _watch(self, keys: list[bytes]) -> None:
        engine = self.engine
        db = self.db.index
        by_shard: dict[int, list[bytes]] = {}
        for key in keys:
            by_shard.setdefault(engine.shard_of(key), []).append(key)
        async def watch(index: int) -> None:
            conn = self.watching.get(index)
            if conn is None:
                conn = await engine.shards[index].connection(self.proto)
                self.watching[index] = conn
            replies = await conn.pipeline_raw([("SELECT", db), ("WATCH", *by_shard[index])])
            if not replies[-1].data.startswith(b"+OK"):
                raise CommandError(replies[-1].data[1:-2].decode())
            self.watched.setdefault(index, []).extend((db, key) for key in by_shard[index])

        await each(watch, list(by_shard))

    async def _release_watches(self) -> None:
        """Unwatch everything, keeping the connections for the next WATCH (the pool
        RESETs them)."""
        watching = list(self.watching.items())
        self.watching.clear()
        self.watched.clear()
        for index, conn in watching:  # the reply need not wait for their RESET
            self.engine.later(self.engine.shards[index].give_back, conn, self.proto)
        super().unwatch()

    def unwatch(self) -> None:
        for conn in self.watching.values():
            conn.close()  # its WATCH goes with it
        self.watching.clear()
        self.watched.clear()
        super().unwatch()

    def close(self) -> None:
        if self.pubsub is not None:
            self.pubsub.close()
        super().close()


def null_arrays_restored(name: str, argv: list[bytes], reply: Raw) -> Raw:
    """The guard's reply with the null arrays Lua made null bulk strings put back (where
    Redis 7 replies a null array: t_list.c, t_zset.c, t_stream.c, geo.c)."""
    data = reply.data
    if name == "geopos":
        # Its elements are [longitude, latitude] or a null array; the numbers hold no "$".
        return Raw(data.replace(b"$-1\r\n", b"*-1\r\n"))
    if name == "xpending":
        # The summary's last element (the consumers) is a null array when none is pending.
        if len(argv) == 3 and data.startswith(b"*4\r\n") and data.endswith(b"$-1\r\n"):
            return Raw(data[:-5] + b"*-1\r\n")
        return reply
    # LPOP/RPOP and ZRANK/ZREVRANK reply a null bulk string, but a null array with COUNT
    # or WITHSCORE; the others never reply a null bulk string.
    if data == b"$-1\r\n" and (len(argv) > (3 if name in ("zrank", "zrevrank") else 2)
                                or name not in ("lpop", "rpop", "zrank", "zrevrank")):
        return Raw(b"*-1\r\n")
    return reply

