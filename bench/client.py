"""A small async Redis client on Trio for the load generator: RESP out, hiredis in,
pipelining by sending several commands before reading their replies."""

from __future__ import annotations

from typing import Any

import hiredis
import trio

from dtm.resp import encode


class ServerError(Exception):
    """The server answered an error reply."""


class BenchClient:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.reader = hiredis.Reader(replyError=ServerError)

    @classmethod
    async def connect(cls, host: str, port: int) -> BenchClient:
        stream = await trio.open_tcp_stream(host, port)
        return cls(stream)

    async def send(self, *commands: list[bytes]) -> None:
        await self.stream.send_all(b"".join(encode(c) for c in commands))

    async def replies(self, n: int) -> list[Any]:
        out: list[Any] = []
        while len(out) < n:
            reply = self.reader.gets()
            if reply is False:
                data = await self.stream.receive_some(65536)
                if not data:
                    raise ConnectionError("server closed the connection")
                self.reader.feed(data)
                continue
            out.append(reply)
        return out

    async def call(self, *args: bytes | str | int) -> Any:
        command = [a if isinstance(a, bytes) else str(a).encode() for a in args]
        await self.send(command)
        (reply,) = await self.replies(1)
        if isinstance(reply, ServerError):
            raise reply
        return reply

    async def aclose(self) -> None:
        await self.stream.aclose()
