"""Bad input gets Redis's error and disturbs nobody else."""

from __future__ import annotations

import redis
import trio

from helpers import RawClient, serving


async def test_malformed_protocol_closes_only_that_connection() -> None:
    async with serving() as server:
        bystander = await RawClient.connect(server.port)
        await bystander.call("SET", "k", "v")
        bad = await RawClient.connect(server.port)
        await bad.send_raw(b"*1\r\n$4\r\nPING\r\n*1\r\n:5\r\n")
        assert await bad.reply() == b"PONG"
        error = await bad.reply()
        assert str(error) == "ERR Protocol error: expected '$', got ':'"
        assert await bad.closed()
        assert await bystander.call("GET", "k") == b"v"


async def test_oversized_bulk_is_refused_before_its_payload() -> None:
    async with serving(proto_max_bulk_len=4096) as server:
        client = await RawClient.connect(server.port)
        await client.send_raw(b"*2\r\n$3\r\nGET\r\n$999999\r\n")
        assert str(await client.reply()) == "ERR Protocol error: invalid bulk length"
        assert await client.closed()


async def test_requirepass_gates_every_command_but_auth_hello_quit() -> None:
    async with serving(requirepass="s3cret") as server:
        client = await RawClient.connect(server.port)
        assert str(await client.call("GET", "k")) == "NOAUTH Authentication required."
        assert str(await client.call("AUTH", "wrong")).startswith("WRONGPASS")
        await client.send_raw(b"*11\r\n")  # unauthenticated clients get tight limits
        assert "unauthenticated multibulk length" in str(await client.reply())
        client = await RawClient.connect(server.port)
        hello = await client.call("HELLO", "3", "AUTH", "default", "s3cret")
        assert hello[b"proto"] == 3
        assert await client.call("SET", "k", "v") == b"OK"


async def test_maxclients_refuses_extra_connections() -> None:
    async with serving(maxclients=2) as server:
        first = await RawClient.connect(server.port)
        second = await RawClient.connect(server.port)
        assert await first.call("PING") == b"PONG"
        assert await second.call("PING") == b"PONG"
        third = await RawClient.connect(server.port)
        assert str(await third.reply()) == "ERR max number of clients reached"
        assert await first.call("PING") == b"PONG"


async def test_client_gone_mid_command_leaves_no_trace() -> None:
    async with serving() as server:
        client = await RawClient.connect(server.port)
        await client.send_raw(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$10\r\nabc")
        await client.aclose()
        while server.clients:
            await trio.sleep(0.01)
        check = await RawClient.connect(server.port)
        assert await check.call("EXISTS", "k") == 0


def test_inline_and_wrong_type_arguments_over_redis_py(r: redis.Redis) -> None:
    r.set("k", "v")
    for bad in (("INCRBY", "k", "x"), ("EXPIRE", "k", "1.5"), ("GETRANGE", "k", "a", "1")):
        try:
            r.execute_command(*bad)
        except redis.ResponseError as exc:
            assert "not an integer" in str(exc)
        else:
            raise AssertionError(f"{bad} was accepted")
    assert r.get("k") == b"v"
