"""The wire and the session loop cannot be knocked over: huge headers, endless requests,
escaping exceptions, long batches, idle and dead peers, and the descriptor limit."""

from __future__ import annotations

import resource
import socket
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest
import trio

from bench.processes import free_port, stop, wait_listening
from dtm.commands.table import LOOKUP
from dtm.errors import ProtocolError
from dtm.resp import HiredisParser, PureParser, encode
from helpers import RawClient, serving, start_server

ROOT = Path(__file__).resolve().parent.parent
PARSERS = [PureParser, HiredisParser]
LAG = 0.5  # how long a bystander's PING may take while an attack runs


async def ping_answers_quickly(port: int, times: int = 3) -> None:
    """A second client is served within LAG each time. The server may share this event
    loop: a stall lands in whichever step is waiting, so every step is timed."""
    with trio.fail_after(LAG):
        bystander = await RawClient.connect(port)
    for _ in range(times):
        with trio.fail_after(LAG):
            assert await bystander.call("PING") == b"PONG"
    await bystander.aclose()


def peak_allocation(feed: object) -> int:
    tracemalloc.start()
    try:
        feed()  # type: ignore[operator]
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# --------------------------------------------------------------- huge headers


@pytest.mark.parametrize("parser_cls", PARSERS)
@pytest.mark.parametrize("header", [b"*2147483647", b"*1\r\n*2147483647", b"*1\r\n~2147483647"])
def test_header_announcing_billions_allocates_nothing_up_front(parser_cls: type, header: bytes) -> None:
    parser = parser_cls()

    def feed() -> None:
        parser.feed(header + b"\r\n")
        try:
            parser.next_command()
        except ProtocolError:
            pass  # a nested or RESP3 aggregate is refused, which is fine: nothing reserved

    assert peak_allocation(feed) < 1024 * 1024


@pytest.mark.parametrize("parser_cls", PARSERS)
@pytest.mark.parametrize("count", [b"3000000000", b"4294967295", b"2147483648"])
def test_multibulk_count_over_int_max_is_refused(parser_cls: type, count: bytes) -> None:
    parser = parser_cls()
    parser.feed(b"*" + count + b"\r\n")
    with pytest.raises(ProtocolError, match="invalid multibulk length"):
        parser.next_command()


@pytest.mark.parametrize("parser_cls", PARSERS)
def test_huge_legal_count_is_read_as_arguments_arrive(parser_cls: type) -> None:
    parser = parser_cls()
    parser.feed(b"*2147483647\r\n" + b"$3\r\nSET\r\n$1\r\nk\r\n")
    assert parser.next_command() is None
    assert parser.pending() < 1024  # two small arguments, not a reserved array


async def test_huge_multibulk_headers_stall_nobody() -> None:
    async with serving() as server:
        for header, refused in ((b"*2147483647", False), (b"*3000000000", True), (b"*4294967295", True)):
            attacker = await RawClient.connect(server.port)
            await attacker.send_raw(header + b"\r\n$4\r\nPING\r\n")
            await ping_answers_quickly(server.port)
            if refused:
                assert str(await attacker.reply()) == "ERR Protocol error: invalid multibulk length"
                assert await attacker.closed()
            await attacker.aclose()
        await ping_answers_quickly(server.port)


# ------------------------------------------------------ numbers of many digits

DIGITS = b"1" * 5000


@pytest.mark.parametrize("parser_cls", PARSERS)
@pytest.mark.parametrize(
    ("data", "message"),
    [(b"*" + DIGITS + b"\r\n", "invalid multibulk length"),
     (b"*1\r\n$" + DIGITS + b"\r\n", "invalid bulk length")],
)
def test_lengths_of_thousands_of_digits_are_protocol_errors(parser_cls: type, data: bytes, message: str) -> None:
    parser = parser_cls()
    parser.feed(data)
    with pytest.raises(ProtocolError) as caught:
        parser.next_command()
    assert caught.value.detail == message


def exchange(port: int, data: bytes, replies: int) -> list[bytes]:
    """Send raw bytes, read that many reply lines (then anything up to the close)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        received = b""
        while received.count(b"\r\n") < replies:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
    return received.split(b"\r\n")[:replies]


LONG_NUMBER_CASES = [
    (b"*" + DIGITS + b"\r\n", [b"-ERR Protocol error: invalid multibulk length"]),
    (b"*1\r\n$" + DIGITS + b"\r\n", [b"-ERR Protocol error: invalid bulk length"]),
    (encode([b"INCRBY", b"n", DIGITS]), [b"-ERR value is not an integer or out of range"]),
    (encode([b"SET", b"n", b"1", b"EX", DIGITS]), [b"-ERR value is not an integer or out of range"]),
    (encode([b"GETRANGE", b"n", b"0", DIGITS]), [b"-ERR value is not an integer or out of range"]),
]


@pytest.mark.parametrize(("data", "expected"), LONG_NUMBER_CASES)
def test_numbers_of_thousands_of_digits_get_redis_errors(
    dtm_server: object, redis_server: int, data: bytes, expected: list[bytes]
) -> None:
    port = dtm_server.port  # type: ignore[attr-defined]
    assert exchange(redis_server, data, len(expected)) == expected
    assert exchange(port, data, len(expected)) == expected
    assert exchange(port, b"PING\r\n", 1) == [b"+PONG"]


async def test_long_length_before_auth_closes_only_that_client() -> None:
    async with serving(requirepass="s3cret") as server:
        attacker = await RawClient.connect(server.port)
        await attacker.send_raw(b"*" + DIGITS + b"\r\n")
        assert str(await attacker.reply()) == "ERR Protocol error: invalid multibulk length"
        assert await attacker.closed()
        client = await RawClient.connect(server.port)
        assert await client.call("AUTH", "s3cret") == b"OK"
        assert str(await client.call("CONFIG", "SET", "maxclients", DIGITS)).startswith(
            "ERR CONFIG SET failed (possibly related to argument 'maxclients')"
        )


# ---------------------------------------------------------------- query buffer


@pytest.mark.parametrize("parser_cls", PARSERS)
def test_stream_never_ending_on_a_boundary_is_not_kept(parser_cls: type) -> None:
    """Each read ends inside a command: the consumed part must still be dropped."""
    command = encode([b"SET", b"key", b"x" * 100])
    stream = command * 40000  # 5 MB
    parser = parser_cls()

    def feed() -> None:
        # Every read but the first starts one byte into a command.
        cuts = [0, *range(1, len(stream), 8 * len(command)), len(stream)]
        for start, end in zip(cuts, cuts[1:]):
            parser.feed(stream[start:end])
            while parser.next_command() is not None:
                pass

    assert peak_allocation(feed) < 256 * 1024


@pytest.mark.parametrize("parser_cls", PARSERS)
def test_arguments_of_an_unfinished_command_count_as_buffered(parser_cls: type) -> None:
    parser = parser_cls()
    parser.feed(b"*1000000\r\n")
    for _ in range(100):
        parser.feed(b"$1\r\na\r\n" * 100)
        assert parser.next_command() is None
    assert parser.pending() >= 10000 * 8  # every argument is held, with its object


async def assert_closed_over_limit(port: int, head: bytes, piece: bytes, pieces: int) -> None:
    client = await RawClient.connect(port)
    await client.send_raw(head)
    try:
        for _ in range(pieces):
            await client.send_raw(piece)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # closed while sending: the limit fired
    with trio.fail_after(5):
        assert await client.closed()


async def test_endless_arguments_hit_the_query_buffer_limit() -> None:
    async with serving(client_query_buffer_limit=1024 * 1024) as server:
        await assert_closed_over_limit(server.port, b"*2147483647\r\n", b"$1\r\na\r\n" * 1000, 100)
        await ping_answers_quickly(server.port)


async def test_big_bulk_sent_in_small_pieces_hits_the_query_buffer_limit() -> None:
    async with serving(client_query_buffer_limit=1024 * 1024, proto_max_bulk_len=64 * 1024 * 1024) as server:
        head = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$50000000\r\n"
        await assert_closed_over_limit(server.port, head, b"x" * 4096, 1000)
        await ping_answers_quickly(server.port)


async def test_multi_queue_counts_toward_the_query_buffer_limit() -> None:
    async with serving(client_query_buffer_limit=1024 * 1024) as server:
        client = await RawClient.connect(server.port)
        assert await client.call("MULTI") == b"OK"
        with trio.fail_after(5):
            for _ in range(30):
                try:
                    await client.send("SET", "k", b"v" * 65536)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    break
            assert await client.closed()


# ---------------------------------------------------- exceptions stay local


async def test_exception_escaping_the_parser_closes_only_that_client() -> None:
    async with serving() as server:
        victim = await RawClient.connect(server.port)
        assert await victim.call("PING") == b"PONG"
        (session,) = server.clients.values()

        def buggy_take(limit: int = 0) -> list[list[bytes]]:
            raise RuntimeError("parser bug")

        session.parser.take = buggy_take  # type: ignore[method-assign]
        await victim.send("PING")
        assert str(await victim.reply()) == "ERR internal error: RuntimeError"
        assert await victim.closed()
        await ping_answers_quickly(server.port)


async def test_exception_escaping_the_batch_closes_only_that_client(monkeypatch: pytest.MonkeyPatch) -> None:
    import dtm.session

    async with serving() as server:
        victim = await RawClient.connect(server.port)
        assert await victim.call("PING") == b"PONG"

        def broken_encode(reply: object, proto: int = 2) -> bytes:
            raise TypeError("cannot encode")

        monkeypatch.setattr(dtm.session, "encode", broken_encode)
        await victim.send("PING")
        assert str(await victim.reply()) == "ERR internal error: TypeError"
        assert await victim.closed()
        monkeypatch.undo()
        await ping_answers_quickly(server.port)


# ------------------------------------------------------- long batches yield


SLOW_COMMAND = 0.002  # seconds of work per command in the pipeline below


def slow_echo(session: object, argv: list[bytes]) -> bytes:
    """ECHO that works for SLOW_COMMAND seconds first, as a slow-ish command does."""
    until = time.perf_counter() + SLOW_COMMAND
    while time.perf_counter() < until:
        pass
    return argv[1]


async def test_long_pipeline_lets_other_clients_in(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (b"ECHO", b"echo"):
        monkeypatch.setitem(LOOKUP, name, attrs.evolve(LOOKUP[name], handler=slow_echo))
    async with serving(timeout=60) as server:
        request = encode([b"ECHO", b"x"])
        count = 1500  # three seconds of work, in one 20 KB read
        attacker = await RawClient.connect(server.port)
        await attacker.send_raw(request * count)
        await ping_answers_quickly(server.port, times=5)
        with trio.fail_after(30):
            for _ in range(count):
                assert await attacker.reply() == b"x"


# -------------------------------------------------- keepalive and idle timeout


async def test_accepted_sockets_have_tcp_keepalive() -> None:
    async with serving() as server:
        client = await RawClient.connect(server.port)
        assert await client.call("CONFIG", "GET", "tcp-keepalive") == [b"tcp-keepalive", b"300"]
        (session,) = server.clients.values()
        sock = session.conn.sock
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 300
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 100
        assert await client.call("CONFIG", "SET", "tcp-keepalive", "60") == b"OK"
        other = await RawClient.connect(server.port)
        assert await other.call("PING") == b"PONG"
        newest = max(server.clients.values(), key=lambda s: s.id)
        assert newest.conn.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 60


async def test_idle_timeout_closes_clients_inside_multi() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            server = await start_server(nursery, timeout=1)
            client = await RawClient.connect(server.port)
            assert await client.call("MULTI") == b"OK"
            assert await client.call("SET", "k", "v") == b"QUEUED"
            with trio.fail_after(4):
                assert await client.closed()
            nursery.cancel_scope.cancel()


# ------------------------------------------------------ the descriptor limit


def lowered_fd_limit(limit: int) -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))


@pytest.fixture
def small_fd_server(tmp_path: Path) -> Iterator[int]:
    """A dtm process whose descriptor limit is 64, asked for more clients than fit
    (more than even root may raise the limit to)."""
    port = free_port()
    log = open(tmp_path / "server.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "dtm.cli", "serve", "--port", str(port), "--dir", str(tmp_path / "data"),
         "--maxclients", "2000000"],
        stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, preexec_fn=lambda: lowered_fd_limit(64),
    )
    try:
        wait_listening("dtm", port, proc, timeout=15)
        yield port
    finally:
        stop(proc, timeout=10)
        log.close()


def test_maxclients_is_lowered_to_fit_the_descriptor_limit(small_fd_server: int) -> None:
    port = small_fd_server
    assert exchange(port, encode([b"CONFIG", b"GET", b"maxclients"]), 5)[4] == b"32"
    clients = []
    try:
        for _ in range(32):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(b"PING\r\n")
            assert sock.recv(100) == b"+PONG\r\n"
            clients.append(sock)
        for _ in range(5):  # refused at once, with Redis's error, holding nothing
            with socket.create_connection(("127.0.0.1", port), timeout=5) as extra:
                assert extra.recv(100) == b"-ERR max number of clients reached\r\n"
        first = clients[0]
        first.sendall(encode([b"SET", b"k", b"v"]) + encode([b"SAVE"]))
        assert first.recv(100) == b"+OK\r\n+OK\r\n"  # the reserve leaves room for files
        first.sendall(encode([b"CONFIG", b"SET", b"maxclients", b"2000000"]))
        assert first.recv(300) == (
            b"-ERR CONFIG SET failed (possibly related to argument 'maxclients') - The operating "
            b"system is not able to handle the specified number of clients, try with 32\r\n"
        )
    finally:
        for sock in clients:
            sock.close()


EMFILE_SERVER = """
import os, sys, trio
from dtm.config import Config
from dtm.log import configure
from dtm.server import Server

async def main():
    configure("warning")  # logs to stderr: stdout carries the port
    server = Server(Config(port=0, maxclients=20, dir=sys.argv[1]))
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        print(server.port, flush=True)
        await trio.to_thread.run_sync(sys.stdin.readline)
        eaten = []
        try:
            while True:
                eaten.append(os.open(os.devnull, os.O_RDONLY))
        except OSError:
            pass
        print(len(eaten), flush=True)
        await trio.sleep_forever()

trio.run(main)
"""


def test_client_arriving_with_no_descriptor_left_is_refused_not_left_hanging(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", EMFILE_SERVER, str(tmp_path / "data")], cwd=ROOT,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        preexec_fn=lambda: lowered_fd_limit(64),
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        port = int(proc.stdout.readline())
        early = socket.create_connection(("127.0.0.1", port), timeout=5)
        early.sendall(b"PING\r\n")
        assert early.recv(100) == b"+PONG\r\n"
        proc.stdin.write(b"eat\n")
        proc.stdin.flush()
        assert int(proc.stdout.readline()) > 0  # every descriptor is taken now
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as late:
                assert late.recv(100) == b"-ERR max number of clients reached\r\n"
        early.sendall(b"PING\r\n")
        assert early.recv(100) == b"+PONG\r\n"
        early.close()
    finally:
        stop(proc, timeout=10)
