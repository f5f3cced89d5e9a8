"""Replies reach their client whole and in order, however it reads: replies are sent by
the outbox one scheduler pass after their commands ran (dtm.netio.Outbox)."""

from __future__ import annotations

import socket

import trio

from dtm.session import RECV_SIZE
from helpers import RawClient, encode_command, serving, start_server


async def test_half_closed_client_still_gets_every_reply() -> None:
    async with serving() as server:
        incrs = b"".join(encode_command("INCR", "n") for _ in range(100))
        # Exactly one full read (RECV_SIZE): the server meets the end of input on
        # its very next read, without waiting in between.
        pad = encode_command("SET", "pad", "")
        filler = RECV_SIZE - len(incrs) - len(pad)
        pad = encode_command("SET", "pad", "x" * (filler - len(str(filler)) + 1))
        assert len(incrs + pad) == RECV_SIZE
        # A blocking socket, so that all of it is sent and the writing side shut (like
        # `printf ... | nc`) before the server gets to run and read.
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.sendall(incrs + pad)
        sock.shutdown(socket.SHUT_WR)
        sock.setblocking(False)
        client = RawClient(trio.SocketStream(trio.socket.from_stdlib_socket(sock)))
        assert [await client.reply() for _ in range(100)] == list(range(1, 101))
        assert await client.reply() == b"OK"
        assert await client.closed()


async def test_quit_reply_arrives_before_the_close() -> None:
    async with serving() as server:
        client = await RawClient.connect(server.port)
        await client.send_raw(encode_command("PING") + encode_command("QUIT") + encode_command("PING"))
        assert await client.reply() == b"PONG"
        assert await client.reply() == b"OK"
        assert await client.closed()


async def test_slow_reader_gets_every_reply_in_order_and_nobody_waits_for_it() -> None:
    value = bytes(range(256)) * 2048  # 512 KiB: 64 of them are far more than socket buffers hold
    gets = 64
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            server = await start_server(nursery)
            slow = await RawClient.connect(server.port)
            assert await slow.call("SET", "big", value) == b"OK"
            pipeline = b"".join(encode_command("GET", "big") for _ in range(gets))
            # The server stops reading once the replies back up, so this send only
            # completes once the client reads; it must not hold up the test.
            nursery.start_soon(slow.send_raw, pipeline + encode_command("ECHO", "end"))
            other = await RawClient.connect(server.port)
            for i in range(50):  # served while the slow reader's replies are stuck
                assert await other.call("SET", f"k{i}", i) == b"OK"
                assert await other.call("GET", f"k{i}") == str(i).encode()
            for _ in range(gets):
                assert await slow.reply() == value
            assert await slow.reply() == b"end"
            assert await slow.call("PING") == b"PONG"
            nursery.cancel_scope.cancel()
