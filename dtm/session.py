"""One client connection: read, parse, dispatch, MULTI queue, WATCH set, reply batching.

Every complete command in a read is executed before one ``send_all`` carries all their
replies (pipelining). The fast path — a command whose keys are not locked, with a mode
that needs no await — is a plain function call in this task: no channel hop, no task
switch. Only what really waits (locked keys, a transaction across buckets, a durable
commit) takes the async path.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import structlog
import trio

from dtm import route
from dtm.bucket import WatchState
from dtm.commands.table import COMMANDS, LOOKUP, Spec, resolve
from dtm.errors import NOAUTH, CommandError, ProtocolError, err
from dtm.keyspace import DbView
from dtm.netio import Connection
from dtm.resp import Limits, encode, make_parser

if TYPE_CHECKING:
    from collections.abc import Callable

    from dtm.config import Config
    from dtm.keyspace import Keyspace
    from dtm.server import Server

log = structlog.get_logger("dtm.session")

RECV_SIZE = 64 * 1024
# A read's batch looks at the clock after every BATCH_SLICE commands; once it has run
# BATCH_BUDGET seconds it sends the replies so far and lets the other clients run.
BATCH_SLICE = 16
BATCH_BUDGET = 0.005
LAST_WORDS_TIMEOUT = 1.0
# Commands an unauthenticated client may run.
AUTH_FREE = frozenset({"auth", "hello", "quit", "reset"})
# Commands that run at once inside MULTI instead of being queued.
MULTI_IMMEDIATE = frozenset({"exec", "discard", "multi", "watch", "quit", "reset"})
# What a handler returns when the command sends no reply (CLIENT REPLY OFF|SKIP).
NO_REPLY = object()
SKIP_NEXT, SKIP_THIS = 2, 1  # CLIENT REPLY SKIP: the next command's reply is dropped
SAMPLE_EVERY = 16  # fast-path runs: one in this many is timed (commandstats usec)
clock = time.perf_counter_ns


class Session:
    def __init__(self, server: Server, conn: Connection, client_id: int) -> None:
        self.server = server
        self.conn = conn
        self.id = client_id
        self.created = time.time()
        self.last_active = self.created
        self.name = b""
        self.lib_name = b""
        self.lib_ver = b""
        self.proto = 2
        self.authenticated = not server.config.requirepass
        self.db: DbView = server.keyspace.view(0)
        self.in_multi = False
        self.multi_error = False
        self.queued: list[tuple[Spec, list[bytes]]] = []
        self.queued_bytes = 0  # arguments held in the MULTI queue (query buffer limit)
        self.watch = WatchState()
        self.last_command = "NULL"
        self.close_after_reply = False
        # CLIENT REPLY OFF / SKIP: while muted the fast path is off and replies are dropped.
        self.reply_off = False
        self.skip = 0
        self.muted = False
        self.no_evict = False  # CLIENT NO-EVICT (dtm never evicts; shown in CLIENT LIST)
        self.in_exec = False  # running the commands of EXEC (MONITOR refuses there)
        self.cancel_scope = trio.CancelScope()
        self.limits = Limits(server.config.proto_max_bulk_len, self.authenticated)
        self.parser = make_parser(self.limits)
        self.addr, self.laddr = _addresses(conn)
        self.log = log.bind(client=client_id, addr=self.addr)

    # The narrow context data command handlers see (dtm.commands.context.DataContext).
    @property
    def keyspace(self) -> Keyspace:
        return self.server.keyspace

    @property
    def config(self) -> Config:
        return self.server.config

    # ------------------------------------------------------------------ loop

    async def serve(self) -> None:
        conn = self.conn
        parser = self.parser
        config = self.server.config
        observe = self.server.observe
        with self.cancel_scope:
            try:
                while not self.close_after_reply:
                    data = await conn.receive(RECV_SIZE)
                    if not data:
                        await conn.flush()  # a client that half-closed still reads
                        break
                    self.last_active = time.time()
                    observe.net_input += len(data)
                    parser.feed(data)
                    out = await self._run_batch()
                    # Redis counts the query buffer and the arguments queued in MULTI.
                    held = parser.pending() + self.queued_bytes
                    if held > config.client_query_buffer_limit:
                        self.log.warning("closing client that reached max query buffer length", held=held)
                        self.close_after_reply = True
                    if out:
                        observe.net_output += len(out)
                        if self.close_after_reply:
                            await conn.send_all(out)  # before the close, not in the next pass
                        else:
                            await conn.send(out)
            except OSError as exc:  # reset by peer, broken pipe
                self.log.debug("connection error", error=str(exc))
            except Exception as exc:  # a bug: this client goes, never the server
                self.log.exception("closing client after an internal error")
                await self._last_words(f"-ERR internal error: {type(exc).__name__}\r\n".encode())
            finally:
                try:
                    self.close()
                except Exception:
                    self.log.exception("error while closing client")
                conn.close()

    async def _last_words(self, line: bytes) -> None:
        """Send line to a client about to be closed, if it takes it promptly."""
        with trio.move_on_after(LAST_WORDS_TIMEOUT):
            try:
                await self.conn.send_all(line)
            except (OSError, trio.ClosedResourceError):
                pass

    async def _run_batch(self) -> bytes:
        """Execute every complete command buffered; return all their replies."""
        server = self.server
        monitor = server.monitor
        durable = server.durable
        observe = server.observe
        pause = server.pause
        lookup = LOOKUP.get
        replies: list[bytes] = []
        append = replies.append
        began = time.perf_counter()
        while not self.close_after_reply:
            batch = self._take_batch(append)
            if not batch:
                break
            server.stats.commands += len(batch)
            proto = self.proto
            # What the fast path depends on changes only on the full path.
            plain = self.authenticated and not self.in_multi and not monitor.busy and not (
                observe.monitors or pause.active or self.muted
            )
            spec = None
            # Fast-path commands are counted one by one but timed per run of them (a
            # segment): a clock read costs as much as a GET.
            segment = 0
            start = clock()
            for argv in batch:
                spec = lookup(argv[0])
                # fast_arity is set only on specs allowed on the fast path
                arity = spec.fast_arity if spec is not None else None
                if (
                    plain
                    and arity is not None
                    and (len(argv) == arity if arity >= 0 else len(argv) >= -arity)
                    and not (durable and spec.writes)  # type: ignore[union-attr]
                ):
                    try:
                        reply = spec.handler(self, argv)  # type: ignore[union-attr,misc]
                    except CommandError as exc:
                        reply = exc
                        spec.stats.failed += 1  # type: ignore[union-attr]
                        observe.error(exc.text)
                    except Exception as exc:  # a bug must not take the server down
                        reply = self._internal_error(exc, argv)
                        spec.stats.failed += 1  # type: ignore[union-attr]
                    append(encode(reply, proto))
                    spec.stats.calls += 1  # type: ignore[union-attr]
                    continue
                index = segment
                while batch[index] is not argv:  # this command ends the fast segment
                    index += 1
                if index > segment:
                    elapsed = clock() - start
                    observe.countdown -= 1
                    if observe.countdown <= 0 or elapsed >= observe.slow_ns:
                        self._account(batch, segment, index, elapsed)
                reply = await self.execute(argv)
                if not self.muted or self._unmuted(reply):
                    append(encode(reply, self.proto))
                if self.close_after_reply:
                    break  # QUIT, a protocol-level close: the rest of the batch is dropped
                proto = self.proto
                durable = server.durable  # it awaited: a shutdown may now hold writes
                plain = self.authenticated and not self.in_multi and not monitor.busy and not (
                    observe.monitors or pause.active or self.muted
                )
                segment = index + 1
                start = clock()
            else:
                if segment < len(batch):
                    elapsed = clock() - start
                    observe.countdown -= 1
                    if observe.countdown <= 0 or elapsed >= observe.slow_ns:
                        self._account(batch, segment, len(batch), elapsed)
            if spec is not None:
                self.last_command = spec.fullname
            if len(batch) == BATCH_SLICE and time.perf_counter() - began > BATCH_BUDGET:
                # The loop is shared: replies so far go out, and other clients run.
                if replies:
                    await self.conn.send(b"".join(replies))
                    replies.clear()
                await trio.lowlevel.checkpoint()
                began = time.perf_counter()
                durable = server.durable  # a shutdown may have begun holding writes
        return b"".join(replies)

    def _take_batch(self, append: Callable[[bytes], None]) -> list[list[bytes]]:
        """The read's next BATCH_SLICE complete commands; none after a protocol error,
        whose reply is appended and whose client is to be closed."""
        try:
            return self.parser.take(BATCH_SLICE)
        except ProtocolError as exc:
            append(encode(CommandError(exc.reply_text), self.proto))
            self.server.observe.error(exc.reply_text)
            self.log.info("protocol error", error=exc.detail)
            self.close_after_reply = True
            return []

    def _account(self, batch: list[list[bytes]], low: int, high: int, elapsed: int) -> None:
        """Credit elapsed (ns) to batch[low:high], a run of commands on the fast path.
        Reading the clock costs as much as a GET, so runs are timed in samples: every
        SAMPLE_EVERY-th run is shared evenly between its commands and weighted
        SAMPLE_EVERY times (commandstats usec is an estimate there, calls are exact).
        A run at least as long as the slow log threshold is logged against its
        commands that Redis does not flag fast (all of them if none)."""
        count = high - low
        commands = LOOKUP
        observe = self.server.observe
        if observe.countdown <= 0:
            observe.countdown = SAMPLE_EVERY
            share = elapsed * SAMPLE_EVERY // count
            for i in range(low, high):
                commands[batch[i][0]].stats.ns += share
        if elapsed >= observe.slow_ns:
            ran = [(commands[batch[i][0]], batch[i]) for i in range(low, high)]
            slow = [(spec, argv) for spec, argv in ran if "fast" not in spec.flags] or ran
            for spec, argv in slow:
                observe.slow(self, spec, argv, elapsed // len(slow))

    async def execute(self, argv: list[bytes]) -> Any:
        """Run one command outside the fast path; errors become error replies."""
        try:
            spec = resolve(argv)
            self.last_command = spec.fullname
            if not self.authenticated and spec.name not in AUTH_FREE:
                raise NOAUTH
            server = self.server
            monitoring = server.observe.monitors and self.id in server.observe.monitors
            if monitoring and (spec.writes or "readonly" in spec.flags):
                raise err("Replica can't interact with the keyspace")
            if server.pause.active and not monitoring:  # Redis never pauses its replicas
                await server.pause.wait(spec, self)
            if self.in_multi and spec.name not in MULTI_IMMEDIATE:
                return self._queue(spec, argv)
            return await self.run(spec, argv)
        except CommandError as exc:
            if self.in_multi:
                self.multi_error = True
            self._rejected(argv, exc)
            if argv[0].lower() == b"exec" and not exc.text.startswith("EXECABORT"):
                return self._exec_aborted(exc)
            return exc
        except Exception as exc:
            return self._internal_error(exc, argv)

    def _exec_aborted(self, exc: CommandError) -> CommandError:
        """EXEC refused before it ran (arity, NOAUTH, …): as Redis's execCommandAbort,
        the transaction is discarded, its watches dropped, and the reason given."""
        self.discard_multi()
        self.unwatch()
        reason = exc.text[4:] if exc.text.startswith("ERR ") else exc.text
        return CommandError(f"EXECABORT Transaction discarded because of: {reason}")

    async def run(self, spec: Spec, argv: list[bytes]) -> Any:
        """Run a resolved command on the path dtm.route chooses for it."""
        if spec.asynchronous:
            start = clock()
            try:
                reply = await spec.handler(self, argv)  # type: ignore[misc]
            except CommandError as exc:
                reply = exc
            self.ran(spec, argv, reply, clock() - start)
            return reply
        return await route.run(self, spec, argv)

    def call(self, spec: Spec, argv: list[bytes]) -> Any:
        """Run a command's handler now (also each command EXEC runs), accounting for it."""
        start = clock()
        try:
            reply = spec.handler(self, argv)  # type: ignore[misc]
        except CommandError as exc:
            reply = exc
        self.ran(spec, argv, reply, clock() - start)
        return reply

    def call_queued(self, spec: Spec, argv: list[bytes]) -> Any:
        """Run one of the commands EXEC runs."""
        self.in_exec = True
        try:
            reply = self.call(spec, argv)
        finally:
            self.in_exec = False
        return "OK" if reply is NO_REPLY else reply  # a reply is owed inside EXEC's array

    def ran(self, spec: Spec, argv: list[bytes], reply: Any, ns: int) -> None:
        """What Redis's call() does after a command off the fast path: counters, slow
        log, latency events, and the MONITOR feed."""
        stats = spec.stats
        stats.calls += 1
        stats.ns += ns
        observe = self.server.observe
        if isinstance(reply, CommandError):
            stats.failed += 1
            observe.error(reply.text)
        if ns >= observe.slow_ns:
            observe.slow(self, spec, argv, ns)
        if observe.monitors and "admin" not in spec.flags:
            observe.feed(self, argv, spec.name)

    def _rejected(self, argv: list[bytes], exc: CommandError) -> None:
        """An error before the command ran (arity, NOAUTH, …): Redis counts it against
        the command, or only in errorstats when the name (or subcommand) is unknown."""
        self.server.observe.error(exc.text)
        spec = COMMANDS.get(argv[0].lower())
        if spec is not None and spec.subcommands and len(argv) >= 2:
            spec = spec.subcommands.get(argv[1].lower())
        if spec is not None:
            spec.stats.rejected += 1

    def _unmuted(self, reply: Any) -> bool:
        """Whether reply goes out under CLIENT REPLY OFF|SKIP; steps SKIP along as
        Redis's resetClient does after each command."""
        send = not self.reply_off and self.skip != SKIP_THIS and reply is not NO_REPLY
        if self.skip == SKIP_THIS:
            self.skip = 0
        elif self.skip == SKIP_NEXT:
            self.skip = SKIP_THIS
        self.muted = self.reply_off or self.skip != 0
        return send

    def leave_modes(self) -> None:
        """RESET: out of MONITOR, CLIENT REPLY back ON, NO-EVICT off."""
        self.server.observe.stop_monitor(self)
        self.reply_off = self.muted = False
        self.skip = 0
        self.no_evict = False

    def _internal_error(self, exc: Exception, argv: list[bytes]) -> CommandError:
        self.log.exception("command failed", command=argv[0][:64].decode("utf-8", "replace"))
        reply = err(f"internal error: {type(exc).__name__}")
        self.server.observe.error(reply.text)
        return reply

    # ---------------------------------------------------------- transactions

    def _queue(self, spec: Spec, argv: list[bytes]) -> Any:
        if "no_multi" in spec.flags:
            self.multi_error = True
            reply = err("Command not allowed inside a transaction")
            spec.stats.rejected += 1
            self.server.observe.error(reply.text)
            return reply
        self.queued.append((spec, argv))
        self.queued_bytes += sum(map(len, argv))
        return "QUEUED"

    def discard_multi(self) -> None:
        self.in_multi = False
        self.multi_error = False
        self.queued = []
        self.queued_bytes = 0

    def unwatch(self) -> None:
        if self.watch.entries or self.watch.dirty:
            self.watch.clear()

    def select(self, index: int) -> None:
        self.db = self.server.keyspace.view(index)

    def authenticate(self) -> None:
        self.authenticated = True
        self.limits.authenticated = True

    # -------------------------------------------------------------- lifecycle

    def kill(self) -> None:
        """Close this connection from another task (CLIENT KILL, SHUTDOWN)."""
        self.close_after_reply = True
        self.cancel_scope.cancel()

    def close(self) -> None:
        self.discard_multi()
        self.unwatch()
        self.server.observe.stop_monitor(self)
        self.server.forget(self)

    def describe(self) -> str:
        """This client as a CLIENT LIST line."""
        now = time.time()
        flags = "".join((
            "O" if self.id in self.server.observe.monitors else "",
            "x" if self.in_multi else "", "e" if self.no_evict else "",
        )) or "N"
        fields = [
            f"id={self.id}", f"addr={self.addr}", f"laddr={self.laddr}", "fd=-1",
            f"name={self.name.decode('utf-8', 'replace')}",
            f"age={int(now - self.created)}", f"idle={int(now - self.last_active)}",
            f"flags={flags}", f"db={self.db.index}", "sub=0", "psub=0", "ssub=0",
            f"multi={len(self.queued) if self.in_multi else -1}",
            f"qbuf={self.parser.pending()}", "qbuf-free=0", "argv-mem=0", "multi-mem=0",
            "rbs=0", "rbp=0", "obl=0", "oll=0", "omem=0", "tot-mem=0", "events=r",
            f"cmd={self.last_command}", "user=default", "redir=-1", f"resp={self.proto}",
            f"lib-name={self.lib_name.decode('utf-8', 'replace')}",
            f"lib-ver={self.lib_ver.decode('utf-8', 'replace')}",
        ]
        return " ".join(fields)


def _addresses(conn: Connection) -> tuple[str, str]:
    def show(address: Any) -> str:
        if isinstance(address, tuple) and len(address) >= 2:
            host = address[0]
            return f"[{host}]:{address[1]}" if ":" in host else f"{host}:{address[1]}"
        return str(address)

    try:
        return show(conn.peer()), show(conn.local())
    except (OSError, AttributeError):  # already closed, or not a socket
        return "?", "?"
