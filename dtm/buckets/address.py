"""Where a shard is and how to reach it; what every connection to a shard shares: the
error types, the request encoder and the reply parser's set-up."""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import hiredis
import trio

from dtm.buckets.frames import ReplyFramer

Arg = bytes | str | int | float
READ_SIZE = 65536
# hiredis's "no whole reply buffered yet" (False would be ambiguous under RESP3).
INCOMPLETE = object()


class ShardError(Exception):
    """An error reply from the shard; ``str()`` is Redis's text ("WRONGTYPE Operation…")."""


class ShardUnavailable(Exception):
    """The shard cannot be reached, or the connection was lost before the reply came."""


def new_reader() -> hiredis.Reader:
    return hiredis.Reader(replyError=ShardError, notEnoughData=INCOMPLETE)


def pack(args: Sequence[Arg]) -> bytes:
    # hiredis's stub types the argument as a 1-tuple; any tuple of arguments is taken.
    return hiredis.pack_command(tuple(args))  # type: ignore[arg-type]


def reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


@attrs.frozen
class ShardAddress:
    """Where a shard listens: ``host``:``port`` over TCP, or a unix socket ``path``."""

    host: str = ""
    port: int = 0
    path: str = ""

    @classmethod
    def parse(cls, text: str) -> ShardAddress:
        """``HOST:PORT``, ``[IPv6]:PORT``, ``unix:PATH`` or an absolute socket path."""
        if text.startswith("unix:"):
            return cls(path=text[5:])
        if text.startswith("/"):
            return cls(path=text)
        host, sep, port = text.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"not a shard address (HOST:PORT or a unix socket path): {text!r}")
        return cls(host=host.strip("[]"), port=int(port))

    def __str__(self) -> str:
        if self.path:
            return f"unix:{self.path}"
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    async def connect(self, timeout: float, *, resp3: bool = False) -> trio.SocketStream:
        """A new connection (switched to RESP3 with HELLO 3 if resp3)."""
        try:
            with trio.fail_after(timeout):
                if self.path:
                    stream = await trio.open_unix_socket(self.path)
                else:
                    stream = await trio.open_tcp_stream(self.host, self.port)
        except (OSError, trio.TooSlowError) as exc:
            raise ShardUnavailable(f"cannot connect to shard {self}: {reason(exc)}") from exc
        if resp3:
            try:
                await hello3(stream, str(self))
            except BaseException:
                stream.socket.close()
                raise
        return stream


async def hello3(stream: trio.SocketStream, shard: str) -> None:
    """Switch a fresh connection to RESP3, before anything else is sent on it."""
    await stream.send_all(pack(("HELLO", "3")))
    framer = ReplyFramer()
    while (frame := framer.next()) is None:
        data = await stream.receive_some(READ_SIZE)
        if not data:
            raise ShardUnavailable(f"shard {shard} closed the connection at HELLO 3")
        framer.feed(data)
    if frame.startswith(b"-"):
        raise ShardUnavailable(f"shard {shard} refused RESP3: {frame[1:-2].decode()}")
