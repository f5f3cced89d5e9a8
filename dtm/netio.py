"""Socket I/O for the server: non-blocking stdlib sockets driven by Trio's low-level
``wait_readable``/``wait_writable``.

Why not ``trio.SocketStream``: every ``receive_some``/``send_all`` there is two
checkpoints (a task switch) even when data is ready, which costs more than executing a
whole pipelined batch. Here a read that finds data returns at once; a session that never
has to wait yields explicitly every ``READS_BEFORE_YIELD`` reads, so one busy
client cannot starve the others. Cancellation still works: waits are checkpoints.

Replies go out through an ``Outbox``: every session that ran in one pass of Trio's
scheduler queues its replies, and one task sends them all back to back at the start of
the next pass. On loopback most of a ``send`` is waking the peer's process (an IPI on
another core); sends in a burst find it already awake. redis-benchmark -P 16 went from
~410k to ~470k/s with sends merely deferred by one pass (docs/benchmarks.md).
"""

from __future__ import annotations

import errno
import os
import socket
from typing import Any

import trio

# A connection that found data this many reads in a row yields once anyway.
READS_BEFORE_YIELD = 8


class Outbox:
    """Sends the replies queued during one scheduler pass, together, in the next pass.

    A send that the kernel cannot take whole leaves its connection stalled: a writer task
    finishes it when the socket drains, and the session waits for that before it queues
    more (backpressure, and replies stay in order).
    """

    def __init__(self) -> None:
        self._pending: list[Connection] = []
        self._task: trio.lowlevel.Task | None = None
        self._parked = False
        self._writers: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as writers:
            self._writers = writers
            self._task = trio.lowlevel.current_task()
            task_status.started()
            try:
                while True:
                    self._parked = True
                    await trio.lowlevel.wait_task_rescheduled(self._abort_park)
                    pending, self._pending = self._pending, []
                    for conn in pending:
                        conn._flush()
            finally:
                self._parked = False
                self._task = None

    def _abort_park(self, _: Any) -> trio.lowlevel.Abort:
        self._parked = False  # being woken with Cancelled: nobody else may wake it now
        return trio.lowlevel.Abort.SUCCEEDED

    @property
    def running(self) -> bool:
        return self._task is not None

    def _add(self, conn: Connection) -> None:
        self._pending.append(conn)
        if self._parked:
            self._parked = False
            trio.lowlevel.reschedule(self._task)  # type: ignore[arg-type]

    def _write_later(self, conn: Connection, rest: memoryview) -> None:
        assert self._writers is not None
        self._writers.start_soon(conn._write_backlog, rest)


class Connection:
    __slots__ = ("sock", "outbox", "_reads_without_wait", "_drained", "_queued", "_stalled")

    def __init__(self, sock: socket.socket, outbox: Outbox | None = None) -> None:
        sock.setblocking(False)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        self.outbox = outbox
        self._reads_without_wait = 0
        # The last read returned less than asked: the kernel buffer was empty then, and
        # a client that waits for its replies has sent nothing since, so a read now
        # would only fail with EAGAIN. Wait for readiness first instead.
        self._drained = False
        self._queued: list[bytes] = []  # replies waiting for the outbox
        self._stalled: trio.Event | None = None  # set when a writer task has sent the rest

    async def receive(self, max_bytes: int) -> bytes:
        """The next bytes from the peer; b"" once it has closed."""
        if self._drained:
            self._reads_without_wait = 0
            await trio.lowlevel.wait_readable(self.sock)
        while True:
            try:
                data = self.sock.recv(max_bytes)
            except (BlockingIOError, InterruptedError):
                self._reads_without_wait = 0
                await trio.lowlevel.wait_readable(self.sock)
                continue
            self._drained = len(data) < max_bytes
            self._reads_without_wait += 1
            if self._reads_without_wait >= READS_BEFORE_YIELD:
                self._reads_without_wait = 0
                await trio.lowlevel.checkpoint()
            return data

    async def send(self, data: bytes) -> None:
        """Queue data to go out with the other replies of this scheduler pass."""
        outbox = self.outbox
        if outbox is None or not outbox.running:
            await self.send_all(data)
            return
        if self._stalled is not None:
            await self._stalled.wait()
        if not self._queued:
            outbox._add(self)
        self._queued.append(data)

    async def send_all(self, data: bytes) -> None:
        """Send data (after anything queued) and return once the kernel has all of it."""
        if self._stalled is not None:
            await self._stalled.wait()
        if self._queued:
            data = b"".join([*self._queued, data])
            self._queued.clear()
        sent = self._send_some(data, 0)
        if sent == len(data):
            return
        view = memoryview(data)
        while sent < len(data):
            await trio.lowlevel.wait_writable(self.sock)
            sent = self._send_some(view, sent)

    async def flush(self) -> None:
        """Send what is queued now, not in the next pass (the peer has stopped sending:
        the connection is about to close)."""
        if self._queued or self._stalled is not None:
            await self.send_all(b"")

    def _send_some(self, data: Any, offset: int) -> int:
        try:
            return offset + self.sock.send(data[offset:] if offset else data)
        except (BlockingIOError, InterruptedError):
            return offset

    def _flush(self) -> None:
        queued = self._queued
        if not queued:
            return  # sent by send_all meanwhile
        data = queued[0] if len(queued) == 1 else b"".join(queued)
        queued.clear()
        try:
            sent = self._send_some(data, 0)
        except OSError:
            return  # the peer is gone; the session learns it from its next read
        if sent < len(data):
            self._stalled = trio.Event()
            assert self.outbox is not None
            self.outbox._write_later(self, memoryview(data)[sent:])

    async def _write_backlog(self, rest: memoryview) -> None:
        try:
            while rest and self.sock.fileno() >= 0:
                await trio.lowlevel.wait_writable(self.sock)
                rest = rest[self._send_some(rest, 0):]
        except (OSError, trio.ClosedResourceError):
            pass  # closed under us: nobody is left to read it
        finally:
            stalled, self._stalled = self._stalled, None
            if stalled is not None:
                stalled.set()

    def peer(self) -> Any:
        return self.sock.getpeername()

    def local(self) -> Any:
        return self.sock.getsockname()

    def close(self) -> None:
        self._queued.clear()
        if self.sock.fileno() >= 0:
            trio.lowlevel.notify_closing(self.sock)
            self.sock.close()


def open_listeners(host: str, port: int, backlog: int = 511) -> list[socket.socket]:
    """Bound, listening, non-blocking sockets for every address host resolves to."""
    listeners: list[socket.socket] = []
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    seen = set()
    for family, kind, proto, _, address in infos:
        if (family, address) in seen:
            continue
        seen.add((family, address))
        if port:
            address = (address[0], port, *address[2:])
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(backlog)
            sock.setblocking(False)
        except OSError:
            sock.close()
            for other in listeners:
                other.close()
            raise
        listeners.append(sock)
        if port == 0:
            port = sock.getsockname()[1]  # the other families listen on the same port
    return listeners


TRANSIENT_ACCEPT_ERRORS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
OUT_OF_FDS = {errno.EMFILE, errno.ENFILE}


def set_keepalive(sock: socket.socket, interval: int) -> None:
    """TCP keepalive as Redis's anetKeepAlive: first probe after interval seconds of
    silence, then every interval/3, and the peer is dead after 3 unanswered probes."""
    if interval <= 0 or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    if hasattr(socket, "TCP_KEEPIDLE"):  # Linux; elsewhere the system's timers apply
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, interval)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, max(interval // 3, 1))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)


def refuse(sock: socket.socket, line: bytes) -> None:
    """Tell a client it cannot be served and close it at once, as Redis does: a crowd of
    refused clients must not hold descriptors while they read."""
    try:
        sock.setblocking(False)
        sock.send(line)
    except OSError:
        pass  # full or gone: it learns from the close
    finally:
        sock.close()


class FdReserve:
    """One descriptor held back for the moment there are none left: then accept() fails
    with EMFILE and the client would wait in the backlog, unanswered, for as long as the
    shortage lasts. Releasing the spare lets it be accepted and told why it is refused."""

    def __init__(self) -> None:
        self._fd = self._open()

    @staticmethod
    def _open() -> int:
        try:
            return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return -1

    def refuse_one(self, listener: socket.socket, line: bytes) -> bool:
        """Accept one waiting client with the spare descriptor and refuse it; False if
        there was no spare or nobody to accept."""
        if self._fd < 0:
            self._fd = self._open()
            return False
        os.close(self._fd)
        self._fd = -1
        try:
            sock, _ = listener.accept()
        except OSError:
            return False
        else:
            refuse(sock, line)
            return True
        finally:
            self._fd = self._open()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


async def accept(listener: socket.socket) -> socket.socket:
    while True:
        try:
            sock, _ = listener.accept()
            return sock
        except (BlockingIOError, InterruptedError):
            await trio.lowlevel.wait_readable(listener)
        except ConnectionAbortedError:
            continue
