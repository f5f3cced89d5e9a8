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

import attrs
import structlog
import trio

import dtm.commands  # noqa: F401  (registers every command)
from dtm import netio
from dtm.config import Config
from dtm.keyspace import Keyspace
from dtm.monitor import Monitor, MonitorStats
from dtm.session import Session
from modes import DurabilityMode, create_mode

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
        self._listeners: list[socket.socket] = []
        self.outbox = netio.Outbox()

    async def serve(self, *, task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED) -> None:
        """Recover, listen and serve until shutdown is requested; task_status gets the
        server once it accepts connections (tests ``await nursery.start(server.serve)``)."""
        self.mode.recover(self)
        try:
            self._listeners = netio.open_listeners(self.config.bind, self.config.port)
        except OSError as exc:
            log.error("cannot listen", bind=self.config.bind, port=self.config.port, error=exc.strerror)
            raise
        self.port = self._listeners[0].getsockname()[1]
        async with trio.open_nursery() as nursery:
            await nursery.start(self.mode.run, self)
            await nursery.start(self.outbox.run)
            for bucket in self.keyspace.buckets:
                nursery.start_soon(self._expire_loop, bucket)
            nursery.start_soon(self._idle_sweeper)
            async with trio.open_nursery() as clients:
                for listener in self._listeners:
                    clients.start_soon(self._accept_loop, listener, clients)
                log.info(
                    "ready to accept connections",
                    bind=self.config.bind, port=self.port, buckets=len(self.keyspace.buckets),
                    mode=self.mode.name,
                )
                task_status.started(self)
                await self._shutdown.wait()
                await self._drain(clients)
            nursery.cancel_scope.cancel()
        log.info("server stopped")

    async def request_shutdown(self, save: bool | None = None) -> None:
        """Stop gracefully; save: SHUTDOWN SAVE (True), NOSAVE (False), or the mode's default."""
        if not self._shutdown.is_set():
            self._shutdown_save = save
        self._shutdown.set()

    @property
    def stopping(self) -> bool:
        return self._shutdown.is_set()

    async def _drain(self, clients: trio.Nursery) -> None:
        """Stop accepting, let transactions holding locks finish, close clients, and let
        the mode sync its log or take its final checkpoint."""
        for listener in self._listeners:
            trio.lowlevel.notify_closing(listener)
            listener.close()
        with trio.move_on_after(SHUTDOWN_GRACE):
            await self.monitor.wait_idle()
        for session in list(self.clients.values()):
            session.kill()
        await self.mode.shutdown(self, save=self._shutdown_save)
        clients.cancel_scope.cancel()

    async def _accept_loop(self, listener: socket.socket, clients: trio.Nursery) -> None:
        while True:
            try:
                sock = await netio.accept(listener)
            except trio.ClosedResourceError:
                return
            except OSError as exc:
                if listener.fileno() < 0:
                    return  # closed by shutdown
                if exc.errno in netio.TRANSIENT_ACCEPT_ERRORS:
                    log.warning("accept failed, backing off", error=exc.strerror)
                    await trio.sleep(0.1)
                    continue
                raise
            self.stats.connections += 1
            conn = netio.Connection(sock, self.outbox)
            if len(self.clients) >= self.config.maxclients:
                self.stats.rejected += 1
                clients.start_soon(_refuse, conn)
                continue
            session = Session(self, conn, self._next_client_id)
            self._next_client_id += 1
            self.clients[session.id] = session
            clients.start_soon(session.serve)

    def forget(self, session: Session) -> None:
        self.clients.pop(session.id, None)

    async def _expire_loop(self, bucket: object) -> None:
        from dtm.bucket import Bucket

        assert isinstance(bucket, Bucket)
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
                    if session.last_active < cutoff and not session.in_multi:
                        session.log.info("closing idle client")
                        session.kill()

    def config_changed(self) -> None:
        for session in self.clients.values():
            session.limits.max_bulk = self.config.proto_max_bulk_len

    def reset_stats(self) -> None:
        self.stats = ServerStats()
        self.monitor.stats = MonitorStats()


async def _refuse(conn: netio.Connection) -> None:
    with trio.move_on_after(1):
        try:
            await conn.send_all(MAXCLIENTS_REPLY)
        except OSError:
            pass
    conn.close()
