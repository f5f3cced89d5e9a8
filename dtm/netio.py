"""Socket I/O for the server: non-blocking stdlib sockets driven by Trio's low-level
``wait_readable``/``wait_writable``.

Why not ``trio.SocketStream``: every ``receive_some``/``send_all`` there is two
checkpoints (a task switch) even when data is ready, which costs more than executing a
whole pipelined batch. Here a read that finds data returns at once; a session that never
has to wait yields explicitly every few batches (``Connection.fair_share``) so one busy
client cannot starve the others. Cancellation still works: waits are checkpoints.
"""

from __future__ import annotations

import errno
import socket
from typing import Any

import trio

# A connection that found data this many reads in a row yields once anyway.
READS_BEFORE_YIELD = 8


class Connection:
    __slots__ = ("sock", "_reads_without_wait", "_drained")

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        self._reads_without_wait = 0
        # The last read returned less than asked: the kernel buffer was empty then, and
        # a client that waits for its replies has sent nothing since, so a read now
        # would only fail with EAGAIN. Wait for readiness first instead.
        self._drained = False

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

    async def send_all(self, data: bytes) -> None:
        sent = self._send_some(data, 0)
        if sent == len(data):
            return
        view = memoryview(data)
        while sent < len(data):
            await trio.lowlevel.wait_writable(self.sock)
            sent = self._send_some(view, sent)

    def _send_some(self, data: Any, offset: int) -> int:
        try:
            return offset + self.sock.send(data[offset:] if offset else data)
        except (BlockingIOError, InterruptedError):
            return offset

    def peer(self) -> Any:
        return self.sock.getpeername()

    def local(self) -> Any:
        return self.sock.getsockname()

    def close(self) -> None:
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


async def accept(listener: socket.socket) -> socket.socket:
    while True:
        try:
            sock, _ = listener.accept()
            return sock
        except (BlockingIOError, InterruptedError):
            await trio.lowlevel.wait_readable(listener)
        except ConnectionAbortedError:
            continue
