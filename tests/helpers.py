"""Test helpers: an in-process server in a trio nursery, and a raw async RESP client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import hiredis
import redis
import trio

from dtm.config import Config
from dtm.resp import encode
from dtm.server import Server


async def start_server(nursery: trio.Nursery, **settings: Any) -> Server:
    mode = settings.pop("mode_object", None)
    server = Server(Config(port=0, **settings), mode)
    await nursery.start(server.serve)
    return server


@asynccontextmanager
async def serving(timeout: float = 10, **settings: Any) -> AsyncIterator[Server]:
    """An in-process server for the body of the block, stopped after it; start, body and
    all must finish within timeout seconds."""
    with trio.fail_after(timeout):
        async with trio.open_nursery() as nursery:
            yield await start_server(nursery, **settings)
            nursery.cancel_scope.cancel()


class RawClient:
    """Speaks RESP over a real socket; replies are parsed with hiredis."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.reader = hiredis.Reader()

    @classmethod
    async def connect(cls, port: int) -> RawClient:
        return cls(await trio.open_tcp_stream("127.0.0.1", port))

    async def send_raw(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def send(self, *args: bytes | str | int) -> None:
        await self.send_raw(encode_command(*args))

    async def reply(self) -> Any:
        while True:
            item = self.reader.gets()
            if item is not False:
                return item
            data = await self.stream.receive_some(65536)
            if not data:
                raise ConnectionError("connection closed")
            self.reader.feed(data)

    async def call(self, *args: bytes | str | int) -> Any:
        await self.send(*args)
        return await self.reply()

    async def closed(self) -> bool:
        """True once the server has closed the connection (after any pending replies)."""
        while True:
            try:
                data = await self.stream.receive_some(65536)
            except trio.BrokenResourceError:
                return True
            if not data:
                return True
            self.reader.feed(data)

    async def aclose(self) -> None:
        await self.stream.aclose()


def encode_command(*args: bytes | str | int) -> bytes:
    parts = [a if isinstance(a, bytes) else str(a).encode() for a in args]
    return encode(parts)


def normalize(reply: object) -> object:
    """Errors (also inside EXEC's array) as comparable values."""
    if isinstance(reply, Exception):
        return ("error", type(reply).__name__, str(reply))
    if isinstance(reply, list):
        return [normalize(item) for item in reply]
    return reply


def replies_of(client: redis.Redis, commands: list[list[Any]]) -> list[object]:
    """Every command's reply, errors as values, sent one after another on one connection
    (so SELECT and MULTI hold): what differential tests compare between servers."""
    conn = client.connection_pool.get_connection()
    replies: list[object] = []
    try:
        for command in commands:
            conn.send_command(*command)
            try:
                replies.append(normalize(conn.read_response()))
            except redis.RedisError as exc:  # AuthenticationError is not a ResponseError
                replies.append(normalize(exc))
    finally:
        client.connection_pool.release(conn)
    return replies
