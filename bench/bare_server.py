"""The ceiling for a Redis-protocol server on Trio: hiredis parses, every command gets a
constant reply, nothing else happens. Run it beside dtm and redis-server under
redis-benchmark to see how much of the gap to Redis is Python + Trio itself.

    python -m bench.bare_server PORT [--streams]

By default it uses the same socket layer as dtm (dtm.netio, with its outbox); ``--streams`` uses
trio.serve_tcp and SocketStream instead.
"""

from __future__ import annotations

import argparse

import hiredis
import trio

from dtm import netio

REPLIES = {b"GET": b"$-1\r\n", b"get": b"$-1\r\n"}
OK = b"+OK\r\n"


def _replies(reader: hiredis.Reader) -> bytes:
    out = []
    while (command := reader.gets()) is not False:
        out.append(REPLIES.get(command[0], OK) if isinstance(command, list) and command else OK)
    return b"".join(out)


async def _serve_raw(port: int) -> None:
    (listener,) = netio.open_listeners("127.0.0.1", port)
    outbox = netio.Outbox()

    async def client(conn: netio.Connection) -> None:
        reader = hiredis.Reader()
        try:
            while data := await conn.receive(65536):
                reader.feed(data)
                if out := _replies(reader):
                    await conn.send(out)
            await conn.flush()
        except OSError:
            pass
        finally:
            conn.close()

    async with trio.open_nursery() as nursery:
        await nursery.start(outbox.run)
        while True:
            nursery.start_soon(client, netio.Connection(await netio.accept(listener), outbox))


async def _serve_streams(port: int) -> None:
    async def client(stream: trio.SocketStream) -> None:
        reader = hiredis.Reader()
        try:
            async for data in stream:
                reader.feed(bytes(data))
                if out := _replies(reader):
                    await stream.send_all(out)
        except trio.BrokenResourceError:
            pass

    await trio.serve_tcp(client, port, host="127.0.0.1")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("--streams", action="store_true")
    args = parser.parse_args()
    trio.run(_serve_streams if args.streams else _serve_raw, args.port)


if __name__ == "__main__":
    main()
