"""A small Redis client for the load generator, on its own loop (bench/loop.py): RESP out,
hiredis in, pipelining by sending several commands before reading their replies."""

from __future__ import annotations

import errno
import os
import socket
from typing import Any

import hiredis

from bench.loop import forget, wait_readable, wait_writable


class ServerError(Exception):
    """The server answered an error reply."""


def command(*args: bytes) -> bytes:
    """One command in RESP, ready to send."""
    return b"*%d\r\n" % len(args) + b"".join([b"$%d\r\n%b\r\n" % (len(a), a) for a in args])


class BenchClient:
    __slots__ = ("sock", "fd", "reader")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.reader = hiredis.Reader(replyError=ServerError)

    @classmethod
    async def connect(cls, host: str, port: int) -> BenchClient:
        error: OSError = OSError(errno.EADDRNOTAVAIL, f"no address for {host}")
        for family, kind, proto, _, address in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
            sock = socket.socket(family, kind, proto)
            sock.setblocking(False)
            code = sock.connect_ex(address)
            if code == errno.EINPROGRESS:
                await wait_writable(sock.fileno())
                code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                await forget(sock.fileno())
            if code == 0:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                return cls(sock)
            sock.close()
            error = OSError(code, os.strerror(code))
        raise error

    async def send_raw(self, data: bytes) -> None:
        try:
            sent = self.sock.send(data)
        except BlockingIOError:
            sent = 0
        if sent < len(data):  # a full socket buffer: rare, so the common case stays one call
            view = memoryview(data)
            while sent < len(data):
                await wait_writable(self.fd)
                try:
                    sent += self.sock.send(view[sent:])
                except BlockingIOError:
                    pass

    async def send(self, *commands: list[bytes]) -> None:
        await self.send_raw(b"".join([command(*c) for c in commands]))

    async def replies(self, n: int) -> list[Any]:
        out: list[Any] = []
        reader = self.reader
        while len(out) < n:
            reply = reader.gets()
            if reply is False:
                await wait_readable(self.fd)
                try:
                    data = self.sock.recv(65536)
                except BlockingIOError:
                    continue
                if not data:
                    raise ConnectionError("server closed the connection")
                reader.feed(data)
                continue
            out.append(reply)
        return out

    async def call(self, *args: bytes | str | int) -> Any:
        await self.send_raw(command(*[a if isinstance(a, bytes) else str(a).encode() for a in args]))
        (reply,) = await self.replies(1)
        if isinstance(reply, ServerError):
            raise reply
        return reply

    async def aclose(self) -> None:
        await forget(self.fd)
        self.sock.close()
