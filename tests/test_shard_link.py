"""dtm/buckets/link.py, pool.py and address.py against real redis-server processes: the
shared pipelined link (batching, reply matching, errors, cancellation, lost and regained
shards) and the pool of dedicated connections."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
import redis
import trio
import trio.testing

from bench.processes import free_port
from dtm.buckets.address import ShardAddress, ShardError, ShardUnavailable
from dtm.buckets.link import ShardLink, open_link

BINARY = shutil.which("redis-server")
if BINARY is None and not os.environ.get("CI"):
    pytest.skip("redis-server not installed", allow_module_level=True)


class RedisProcess:
    """A redis-server on a unix socket (or a TCP port) in a short temporary folder."""

    def __init__(self, folder: Path, tcp: bool = False) -> None:
        self.folder = folder
        self.port = free_port() if tcp else 0
        self.path = str(folder / "redis.sock")
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def address(self) -> ShardAddress:
        if self.port:
            return ShardAddress(host="127.0.0.1", port=self.port)
        return ShardAddress(path=self.path)

    def start(self) -> None:
        assert BINARY is not None
        args = [BINARY, "--port", str(self.port), "--save", "", "--appendonly", "no",
                "--dir", str(self.folder)]
        if not self.port:
            args += ["--unixsocket", self.path]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = (redis.Redis(port=self.port) if self.port
                  else redis.Redis(unix_socket_path=self.path))
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise
                time.sleep(0.01)
        client.close()

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.fixture
def folder() -> Iterator[Path]:
    # Short: a unix socket path must fit in 107 bytes, and pytest's tmp_path may not.
    path = Path(tempfile.mkdtemp(prefix="dtm-link-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def shard(folder: Path) -> Iterator[RedisProcess]:
    server = RedisProcess(folder)
    yield server
    server.stop()


async def test_concurrent_calls_get_their_own_replies_in_few_writes(shard: RedisProcess) -> None:
    replies: dict[bytes, object] = {}

    async def client(task: int) -> None:
        for i in range(20):
            token = f"{task}:{i}".encode()
            replies[token] = await link.call("ECHO", token)

    with trio.fail_after(10):
        async with open_link(shard.address) as link, trio.open_nursery() as nursery:
            for task in range(50):
                nursery.start_soon(client, task)
    assert len(replies) == 1000
    assert all(reply == token for token, reply in replies.items())
    # 50 tasks each waiting on its reply: one write per round, not one per call.
    assert link.writes <= 100, link.writes


async def test_calls_made_in_one_scheduler_pass_go_out_in_one_write(shard: RedisProcess) -> None:
    replies: list[object] = []

    async def one_call(i: int) -> None:
        replies.append((i, await link.call("INCRBY", "n", i)))

    with trio.fail_after(10):
        async with open_link(shard.address) as link:
            writes_before = link.writes
            async with trio.open_nursery() as nursery:
                for i in range(1000):
                    nursery.start_soon(one_call, i)
            assert link.writes - writes_before == 1
            assert await link.call("GET", "n") == str(sum(range(1000))).encode()
    assert len(replies) == 1000


async def test_pipeline_replies_come_in_order_with_errors_as_values(shard: RedisProcess) -> None:
    with trio.fail_after(10):
        async with open_link(shard.address) as link:
            replies = await link.pipeline([
                ("SET", "a", 1), ("INCR", "a"), ("LPUSH", "a", "x"), ("GET", "a"),
                ("GET", "missing"), ("RPUSH", "l", "p", "q"), ("LRANGE", "l", 0, -1),
            ])
            assert await link.pipeline([]) == []
    assert replies[:2] == [b"OK", 2]
    assert isinstance(replies[2], ShardError)
    assert str(replies[2]).startswith("WRONGTYPE Operation against a key holding the wrong kind")
    assert replies[3:] == [b"2", None, 2, [b"p", b"q"]]


async def test_error_reply_raises_shard_error_with_redis_text(shard: RedisProcess) -> None:
    with trio.fail_after(10):
        async with open_link(shard.address) as link:
            await link.call("SET", "s", "text")
            with pytest.raises(ShardError) as raised:
                await link.call("INCR", "s")
            assert await link.call("GET", "s") == b"text"  # the link goes on
    assert str(raised.value) == "ERR value is not an integer or out of range"


async def test_call_cancelled_after_its_request_was_written_leaves_later_replies_matched(
    shard: RedisProcess,
) -> None:
    with trio.fail_after(10):
        async with open_link(shard.address) as link:
            async with trio.open_nursery() as nursery:
                blocked = trio.CancelScope()

                async def blpop() -> None:
                    with blocked:
                        await link.call("BLPOP", "q", 0)

                nursery.start_soon(blpop)
                await trio.testing.wait_all_tasks_blocked()  # BLPOP written, reader waiting
                assert link.writes == 1
                blocked.cancel()
                echoed: list[object] = []

                async def echo() -> None:
                    echoed.append(await link.call("ECHO", "after"))

                nursery.start_soon(echo)
                await trio.testing.wait_all_tasks_blocked()
                async with link.dedicated() as conn:
                    assert await conn.call("RPUSH", "q", "x") == 1
            # The BLPOP ran and its reply was dropped; the ECHO got its own reply.
            assert echoed == [b"after"]
            assert await link.call("LLEN", "q") == 0


async def test_call_cancelled_before_its_request_was_written_is_never_sent(
    shard: RedisProcess,
) -> None:
    with trio.fail_after(10):
        async with open_link(shard.address) as link:
            with trio.CancelScope() as scope:
                scope.cancel()
                await link.call("INCR", "n")
            assert await link.call("INCR", "n") == 1


async def test_killed_shard_fails_pending_calls_and_a_restarted_one_is_reconnected(
    shard: RedisProcess,
) -> None:
    with trio.fail_after(10):
        async with open_link(shard.address) as link:
            failures: list[BaseException] = []

            async def pending(*args: str) -> None:
                try:
                    await link.call(*args)
                except ShardUnavailable as exc:
                    failures.append(exc)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(pending, "BLPOP", "q", "0")
                nursery.start_soon(pending, "BLPOP", "r", "0")
                await trio.testing.wait_all_tasks_blocked()
                shard.kill()
            assert len(failures) == 2
            assert "lost the connection to shard unix:" in str(failures[0])
            with pytest.raises(ShardUnavailable, match="cannot connect to shard"):
                await link.call("PING")
            shard.start()
            assert await link.call("PING") == b"PONG"
            assert link.connects == 2


async def test_link_refuses_to_start_when_the_shard_is_unreachable(folder: Path) -> None:
    link = ShardLink(ShardAddress(path=str(folder / "nobody.sock")))
    unreachable = pytest.raises(ShardUnavailable, match="cannot connect to shard unix:")
    with trio.fail_after(10), unreachable:
        await link.run()
    with pytest.raises(ShardUnavailable, match="not running"):
        await link.call("PING")


async def test_link_works_over_tcp(folder: Path) -> None:
    server = RedisProcess(folder, tcp=True)
    try:
        with trio.fail_after(10):
            async with open_link(f"127.0.0.1:{server.port}") as link:
                assert await link.call("SET", "k", b"\x00\xff") == b"OK"
                assert await link.call("GET", "k") == b"\x00\xff"
    finally:
        server.stop()


def test_shard_addresses_parse_and_print() -> None:
    assert ShardAddress.parse("10.0.0.7:6379") == ShardAddress(host="10.0.0.7", port=6379)
    assert ShardAddress.parse("[::1]:7000") == ShardAddress(host="::1", port=7000)
    assert str(ShardAddress.parse("[::1]:7000")) == "[::1]:7000"
    assert ShardAddress.parse("/d/shard-0/redis.sock") == ShardAddress(path="/d/shard-0/redis.sock")
    assert ShardAddress.parse("unix:/x.sock") == ShardAddress(path="/x.sock")
    for bad in ("localhost", "host:", ":6379", "host:99999", "host:port"):
        with pytest.raises(ValueError):
            ShardAddress.parse(bad)


async def test_pool_resets_a_returned_connection_so_its_watch_does_not_leak(
    shard: RedisProcess,
) -> None:
    with trio.fail_after(10):
        async with open_link(shard.address) as link:
            async with link.dedicated() as conn:
                assert await conn.call("WATCH", "k") == b"OK"
            await link.call("SET", "k", "changed")  # would break that WATCH
            async with link.dedicated() as again:
                assert again is conn  # the same connection, reused
                await again.call("MULTI")
                await again.call("SET", "k", "mine")
                assert await again.call("EXEC") == [b"OK"]
            assert link.pool.opened == 1
            assert await link.call("GET", "k") == b"mine"


async def test_pool_resets_database_and_subscriptions_on_return(shard: RedisProcess) -> None:
    with trio.fail_after(10):
        async with open_link(shard.address) as link:
            async with link.dedicated() as conn:
                await conn.call("SELECT", 3)
                await conn.send("SUBSCRIBE", "a", "b")  # two confirmations, left unread
            async with link.dedicated() as again:
                assert again is conn
                assert await again.call("PING") == b"PONG"  # not ["pong", ""]: unsubscribed
                await again.call("SET", "where", "db0")
            assert await link.call("GET", "where") == b"db0"


async def test_exec_errors_are_values_on_a_dedicated_connection(shard: RedisProcess) -> None:
    with trio.fail_after(10):
        async with open_link(shard.address) as link, link.dedicated() as conn:
            replies = await conn.pipeline([("MULTI",), ("SET", "s", "x"), ("INCR", "s"),
                                           ("EXEC",)])
    assert replies[:3] == [b"OK", b"QUEUED", b"QUEUED"]
    ok, error = replies[3]
    assert ok == b"OK" and isinstance(error, ShardError)
    assert str(error) == "ERR value is not an integer or out of range"


async def test_pool_closes_a_connection_whose_request_was_interrupted(shard: RedisProcess) -> None:
    with trio.fail_after(10):
        async with open_link(shard.address) as link:
            async with link.dedicated() as conn:
                with trio.move_on_after(0.05):
                    await conn.call("BLPOP", "q", 0)
                assert conn.broken
            assert link.pool.idle == 0
            async with link.dedicated() as fresh:
                assert fresh is not conn
                assert await fresh.call("PING") == b"PONG"
            assert link.pool.opened == 2


async def test_a_shard_speaking_garbage_fails_pending_calls_without_crashing_the_link() -> None:
    async def garbage(stream: trio.SocketStream) -> None:
        await stream.receive_some(1024)
        await stream.send_all(b"!not resp\r\n")
        await trio.sleep_forever()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(partial(trio.serve_tcp, garbage, 0, host="127.0.0.1"))
            port = listeners[0].socket.getsockname()[1]
            async with open_link(f"127.0.0.1:{port}") as link:
                with pytest.raises(ShardUnavailable, match="lost the connection to shard "
                                                           f"127.0.0.1:{port}: Protocol error"):
                    await link.call("PING")
                assert not link.connected
            nursery.cancel_scope.cancel()
