"""The root of the task tree: listeners, buckets' expiry tasks, the mode's tasks, clients,
and graceful shutdown.

    Server.serve
    ├── mode.run                   (group-commit writer / checkpoint coordinator)
    ├── expiry task per bucket     (active expiry every 100 ms)
    ├── idle-timeout sweeper       (when --timeout is set)
    ├── outbox                     (sends each scheduler pass's replies together)
    ├── accept loop                (one per listener)
    └── one task per client        (dtm.session.Session.serve)
"""

from __future__ import annotations

import secrets
import socket
import time
from pathlib import Path

import attrs
import structlog
import trio

import dtm.commands  # noqa: F401  (registers every command)
from dtm import netio
from dtm.buckets.protocol import LocalBucket
from dtm.buckets.redis import RedisEngine
from dtm.buckets.start import open_redis_engine, refuse_mixed_cuts, refuse_redis_engine_files
from dtm.config import Config
from dtm.durability import DurabilityMode, FinalSaveFailed
from dtm.fdlimit import fit_maxclients
from dtm.keyspace import Keyspace
from dtm.monitor import Monitor, MonitorStats
from dtm.observe import Observer
from dtm.pause import Pause
from dtm.relay import RelaySession
from dtm.session import Session
from modes import create_mode
from modes.base import ShutdownRefusal
from modes.shards import ShardMode

log = structlog.get_logger("dtm.server")

EXPIRY_PERIOD = 0.1
SHUTDOWN_GRACE = 5.0
MAXCLIENTS_REPLY = b"-ERR max number of clients reached\r\n"


@attrs.define
class ServerStats:
    connections: int = 0
    commands: int = 0
    rejected: int = 0


class Server:
    def __init__(self, config: Config, mode: DurabilityMode | None = None) -> None:
        self.config = config
        self.keyspace = Keyspace(config.buckets, config.databases)
        self.engine: RedisEngine | None = None  # the redis engine's, once serve() opens it
        self.session_class: type[Session] = Session
        if mode is None and config.engine == "redis":
            mode = ShardMode(config.mode, config.checkpoint_interval)
        self.mode = mode if mode is not None else create_mode(config)
        self.monitor = Monitor(self.mode)
        # True when writes must wait for the mode before replying (binlog).
        self.durable = self.mode.waits_for_commit
        self.clients: dict[int, Session] = {}
        self.stats = ServerStats()
        self.started = time.time()
        self.run_id = secrets.token_hex(20)
        self.port = config.port
        self._next_client_id = 1
        self._shutdown = trio.Event()
        self._shutdown_save: bool | None = None
        self._refusal = ShutdownRefusal()  # how a requested shutdown was refused
        self._listeners: list[socket.socket] = []
        self.outbox = netio.Outbox()
        self.observe = Observer(config)  # commandstats, slow log, MONITOR …
        self.pause = Pause()  # CLIENT PAUSE

    async def serve(self, *, task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED) -> None:
        """Recover, listen and serve until shutdown is requested; task_status gets the
        server once it accepts connections (tests ``await nursery.start(server.serve)``)."""
        if self.config.engine == "redis":
            async with open_redis_engine(self.config) as engine:
                self.engine = engine
                self.session_class = RelaySession
                if self.config.mode != "binlog":
                    await refuse_mixed_cuts(engine)
                await self._serve(task_status)
        else:
            refuse_redis_engine_files(Path(self.config.dir))
            await self._serve(task_status)

    async def _serve(self, task_status: trio.TaskStatus[Server]) -> None:
        self._fit_maxclients()
        self.mode.recover(self)
        # A failure to listen propagates: `dtm serve` reports it in one line.
        self._listeners = netio.open_listeners(self.config.bind, self.config.port)
        self.port = self._listeners[0].getsockname()[1]
        async with trio.open_nursery() as nursery:
            await nursery.start(self.mode.run, self)
            await nursery.start(self.outbox.run)
            await nursery.start(self.observe.run, lambda: self.stats.commands)
            if self.engine is None:
                for bucket in self.keyspace.buckets:
                    nursery.start_soon(self._expire_loop, bucket)
            nursery.start_soon(self._idle_sweeper)
            async with trio.open_nursery() as clients:
                self.client_nursery = clients
                for listener in self._listeners:
                    clients.start_soon(self._accept_loop, listener, clients)
                log.info(
                    "ready to accept connections",
                    bind=self.config.bind, port=self.port, buckets=len(self.keyspace.buckets),
                    mode=self.mode.name, engine=self.config.engine,
                )
                task_status.started(self)
                await self._shutdown.wait()
                await self._drain(clients)
            nursery.cancel_scope.cancel()
        log.info("server stopped")

    async def request_shutdown(self, save: bool | None = None) -> str | None:
        """Stop gracefully; save: SHUTDOWN SAVE (True), NOSAVE (False), or the mode's
        default. Returns only if the shutdown was refused (its save failed: the server
        goes on serving, as Redis), with the reason; otherwise the caller is cancelled
        as the server stops."""
        if not self._shutdown.is_set():
            self._shutdown_save = save
            self._refusal = ShutdownRefusal()
        refusal = self._refusal
        self._shutdown.set()
        await refusal.event.wait()
        return refusal.reason

    @property
    def stopping(self) -> bool:
        return self._shutdown.is_set()

    async def _drain(self, clients: trio.Nursery) -> None:
        """Hold new writes, let transactions holding locks finish, let the mode sync its
        log or take its final checkpoint; then stop accepting and close clients. If the
        save fails, writes resume and the server goes on serving (Redis refuses such a
        shutdown) until the next request."""
        while True:
            release = self.monitor.hold()
            self.durable = True  # every write now passes the monitor's door, held there
            try:
                with trio.move_on_after(SHUTDOWN_GRACE):
                    await self.monitor.wait_idle()
                await self.mode.shutdown(self, save=self._shutdown_save)
            except FinalSaveFailed as exc:
                self.durable = self.mode.waits_for_commit
                release()
                log.error("errors trying to shut down: the save failed; still serving", error=str(exc))
                self._shutdown = trio.Event()
                self._refusal.refuse(str(exc))
                await self._shutdown.wait()  # the next request tries again
            else:
                break
        for listener in self._listeners:
            trio.lowlevel.notify_closing(listener)
            listener.close()
        for session in list(self.clients.values()):
            session.kill()  # writes held at the door are cancelled there, never applied
        release()
        clients.cancel_scope.cancel()

    def _fit_maxclients(self) -> None:
        """Make room for maxclients in the descriptor limit, or lower maxclients to fit
        (Redis's adjustOpenFilesLimit), keeping descriptors for files in reserve."""
        config = self.config
        fit = fit_maxclients(config.maxclients)
        if fit.maxclients < config.maxclients:
            log.warning(
                "maxclients reduced to fit the open files limit; increase 'ulimit -n' for more",
                requested=config.maxclients, maxclients=fit.maxclients, open_files_limit=fit.limit,
                error=fit.error,
            )
            config.maxclients = fit.maxclients
        elif fit.raised_from is not None:
            log.info("increased the open files limit", limit=fit.limit, was=fit.raised_from)

    async def _accept_loop(self, listener: socket.socket, clients: trio.Nursery) -> None:
        reserve = netio.FdReserve()
        try:
            while True:
                try:
                    sock = await netio.accept(listener)
                except trio.ClosedResourceError:
                    return
                except OSError as exc:
                    if listener.fileno() < 0:
                        return  # closed by shutdown
                    await self._accept_failed(exc, listener, reserve)
                    continue
                self._admit(sock, clients)
        finally:
            reserve.close()

    async def _accept_failed(self, exc: OSError, listener: socket.socket, reserve: netio.FdReserve) -> None:
        """A failed accept never ends the server (Redis logs it and goes on)."""
        if exc.errno in netio.OUT_OF_FDS and reserve.refuse_one(listener, MAXCLIENTS_REPLY):
            self.stats.rejected += 1
            log.warning("out of file descriptors: refused a client", error=exc.strerror)
            return
        log.warning("accepting client connection failed", error=exc.strerror)
        if exc.errno in netio.TRANSIENT_ACCEPT_ERRORS:
            await trio.sleep(0.1)  # no memory, or no descriptor to spare: wait for some
        else:
            await trio.lowlevel.checkpoint()

    def _admit(self, sock: socket.socket, clients: trio.Nursery) -> None:
        self.stats.connections += 1
        if len(self.clients) >= self.config.maxclients:
            self.stats.rejected += 1
            netio.refuse(sock, MAXCLIENTS_REPLY)
            return
        try:
            netio.set_keepalive(sock, self.config.tcp_keepalive)
            conn = netio.Connection(sock, self.outbox)
            session = self.session_class(self, conn, self._next_client_id)
        except OSError as exc:  # reset before we got to it
            log.debug("client gone before it was served", error=exc.strerror)
            sock.close()
            return
        self._next_client_id += 1
        self.clients[session.id] = session
        clients.start_soon(session.serve)

    def forget(self, session: Session) -> None:
        self.clients.pop(session.id, None)

    async def _expire_loop(self, bucket: LocalBucket) -> None:
        while True:
            await trio.sleep(EXPIRY_PERIOD)
            # Keep going while a cycle used its whole budget: many keys are due.
            while bucket.expire_cycle() >= 1000:
                await trio.sleep(0)

    async def _idle_sweeper(self) -> None:
        while True:
            await trio.sleep(1)
            timeout = self.config.timeout
            if timeout:
                cutoff = time.time() - timeout
                for session in list(self.clients.values()):
                    if session.last_active < cutoff:  # inside MULTI too, as Redis
                        session.log.info("closing idle client")
                        session.kill()

    def config_changed(self) -> None:
        self.observe.configure()
        for session in self.clients.values():
            session.limits.max_bulk = self.config.proto_max_bulk_len

    def reset_stats(self) -> None:
        self.stats = ServerStats()
        self.monitor.stats = MonitorStats()
        self.observe.reset(dtm.commands.COMMANDS.values())

