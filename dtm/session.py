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

from dtm.bucket import WatchState
from dtm.commands.table import LOOKUP, Scope, Spec, resolve
from dtm.commands.transactions import commit_record
from dtm.errors import NOAUTH, CommandError, ProtocolError, err
from dtm.keyspace import DbView
from dtm.netio import Connection
from dtm.resp import Limits, encode, make_parser

if TYPE_CHECKING:
    from dtm.server import Server

log = structlog.get_logger("dtm.session")

RECV_SIZE = 64 * 1024
# Commands an unauthenticated client may run.
AUTH_FREE = frozenset({"auth", "hello", "quit", "reset"})
# Commands that run at once inside MULTI instead of being queued.
MULTI_IMMEDIATE = frozenset({"exec", "discard", "multi", "watch", "quit", "reset"})


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
        self.watch = WatchState()
        self.last_command = "NULL"
        self.close_after_reply = False
        self.cancel_scope = trio.CancelScope()
        self.limits = Limits(server.config.proto_max_bulk_len, self.authenticated)
        self.parser = make_parser(self.limits)
        self.addr, self.laddr = _addresses(conn)
        self.log = log.bind(client=client_id, addr=self.addr)

    # ------------------------------------------------------------------ loop

    async def serve(self) -> None:
        conn = self.conn
        parser = self.parser
        config = self.server.config
        with self.cancel_scope:
            try:
                while not self.close_after_reply:
                    data = await conn.receive(RECV_SIZE)
                    if not data:
                        await conn.flush()  # a client that half-closed still reads
                        break
                    self.last_active = time.time()
                    parser.feed(data)
                    out = await self._run_batch()
                    if parser.pending() > config.client_query_buffer_limit:
                        self.log.warning("closing client over the query buffer limit")
                        self.close_after_reply = True
                    if out:
                        if self.close_after_reply:
                            await conn.send_all(out)  # before the close, not in the next pass
                        else:
                            await conn.send(out)
            except OSError as exc:  # reset by peer, broken pipe
                self.log.debug("connection error", error=str(exc))
            finally:
                self.close()
                conn.close()

    async def _run_batch(self) -> bytes:
        """Execute every complete command buffered; return all their replies."""
        server = self.server
        monitor = server.monitor
        durable = server.durable
        lookup = LOOKUP.get
        replies: list[bytes] = []
        append = replies.append
        while not self.close_after_reply:
            try:
                batch = self.parser.take()
            except ProtocolError as exc:
                append(encode(CommandError(exc.reply_text), self.proto))
                self.log.info("protocol error", error=exc.detail)
                self.close_after_reply = True
                break
            if not batch:
                break
            server.stats.commands += len(batch)
            proto = self.proto
            # What the fast path depends on changes only on the full path.
            plain = self.authenticated and not self.in_multi and not monitor.busy
            spec = None
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
                    except Exception as exc:  # a bug must not take the server down
                        reply = self._internal_error(exc, argv)
                    append(encode(reply, proto))
                    continue
                reply = await self.execute(argv)
                append(encode(reply, self.proto))
                if self.close_after_reply:
                    break  # QUIT, a protocol-level close: the rest of the batch is dropped
                proto = self.proto
                plain = self.authenticated and not self.in_multi and not monitor.busy
            if spec is not None:
                self.last_command = spec.fullname
        return b"".join(replies)

    async def execute(self, argv: list[bytes]) -> Any:
        """Run one command outside the fast path; errors become error replies."""
        try:
            spec = resolve(argv)
            self.last_command = spec.fullname
            if not self.authenticated and spec.name not in AUTH_FREE:
                raise NOAUTH
            if self.in_multi and spec.name not in MULTI_IMMEDIATE:
                return self._queue(spec, argv)
            return await self.run(spec, argv)
        except CommandError as exc:
            if self.in_multi:
                self.multi_error = True
            return exc
        except Exception as exc:
            return self._internal_error(exc, argv)

    async def run(self, spec: Spec, argv: list[bytes]) -> Any:
        """Run a resolved command, through the monitor when it spans buckets or must
        wait for locks or for durability."""
        if spec.asynchronous:
            try:
                return await spec.handler(self, argv)  # type: ignore[misc]
            except CommandError as exc:
                return exc
        monitor = self.server.monitor
        writes = spec.writes and self.server.durable
        if spec.scope is Scope.ALL:
            if monitor.busy or writes:
                return await monitor.transact(
                    [], self._applier(spec, argv), whole_keyspace=True,
                    record=commit_record(self, [(spec, argv)]) if spec.writes else None,
                )
            return self._call(spec, argv)
        if spec.scope is Scope.KEYS and (spec.multi_key or monitor.busy or writes):
            targets = spec.targets(self, argv)
            return await monitor.transact(
                targets, self._applier(spec, argv),
                record=commit_record(self, [(spec, argv)]) if spec.writes else None,
            )
        return self._call(spec, argv)

    def _call(self, spec: Spec, argv: list[bytes]) -> Any:
        try:
            return spec.handler(self, argv)  # type: ignore[misc]
        except CommandError as exc:
            return exc

    def _applier(self, spec: Spec, argv: list[bytes]) -> Any:
        return lambda: self._call(spec, argv)

    def _internal_error(self, exc: Exception, argv: list[bytes]) -> CommandError:
        self.log.exception("command failed", command=argv[0][:64].decode("utf-8", "replace"))
        return err(f"internal error: {type(exc).__name__}")

    # ---------------------------------------------------------- transactions

    def _queue(self, spec: Spec, argv: list[bytes]) -> Any:
        if "no_multi" in spec.flags:
            self.multi_error = True
            return err("Command not allowed inside a transaction")
        self.queued.append((spec, argv))
        return "QUEUED"

    def discard_multi(self) -> None:
        self.in_multi = False
        self.multi_error = False
        self.queued = []

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
        self.server.forget(self)

    def describe(self) -> str:
        """This client as a CLIENT LIST line."""
        now = time.time()
        flags = "x" if self.in_multi else "N"
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
