"""What a redis-engine front keeps for itself: RESP3 replies as Redis sends them, dtm's
own databases out of the user's reach (FLUSHALL, MOVE/COPY/SWAPDB/SELECT), CONFIG split
between the front and the shards, and the shard topology every front must agree on."""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import redis
from conftest import ROOT, DtmProcess
from helpers import encode_command
from test_redis_engine import spread

from bench.processes import free_port
from dtm.buckets.frames import ReplyFramer
from dtm.buckets.scripts import META_DB


class Frames:
    """One connection whose replies are returned as the exact bytes of each frame."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.framer = ReplyFramer()

    def call(self, *command: str) -> bytes:
        self.sock.sendall(encode_command(*command))
        while (frame := self.framer.next()) is None:
            data = self.sock.recv(65536)
            assert data, "connection closed"
            self.framer.feed(data)
        return frame

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def frames(dtm_redis: DtmProcess) -> Iterator[Frames]:
    client = redis.Redis(port=dtm_redis.port, protocol=2)
    client.flushall()
    client.close()
    wire = Frames(dtm_redis.port)
    yield wire
    wire.close()


def shard(dtm_redis: DtmProcess, index: int, db: int = 0) -> redis.Redis:
    return redis.Redis(unix_socket_path=str(dtm_redis.dir / f"shard-{index}" / "redis.sock"),
                       db=db, protocol=2)


def test_resp3_clients_get_maps_sets_doubles_and_nulls_as_redis_sends_them(
    frames: Frames, redis_server: int,
) -> None:
    redis_wire = Frames(redis_server)
    try:
        redis_wire.call("FLUSHALL")
        script = [
            ["HELLO", "3"], ["HSET", "h", "a", "1"], ["HGETALL", "h"], ["ZADD", "z", "1.5", "m"],
            ["ZSCORE", "z", "m"], ["SADD", "s", "x"], ["SMEMBERS", "s"], ["GET", "nokey"],
            ["RPOP", "nokey", "2"], ["MULTI"], ["HGETALL", "h"], ["ZSCORE", "z", "m"], ["EXEC"],
            ["INCRBY", "n", "9007199254740993"],
        ]
        for command in script:
            theirs, ours = redis_wire.call(*command), frames.call(*command)
            if command[0] == "HELLO":
                assert ours[:2] == theirs[:2] == b"%7"  # a map: server, version, proto…
                continue
            assert ours == theirs, command
    finally:
        redis_wire.close()


def test_flushall_empties_the_users_databases_and_keeps_dtms(
    rr: redis.Redis, dtm_redis: DtmProcess,
) -> None:
    keys = spread("flush:")
    rr.mset(dict.fromkeys(keys, 1))
    rr.execute_command("SELECT", 3)
    assert rr.flushall() is True
    assert rr.dbsize() == 0
    for index in range(8):
        meta = shard(dtm_redis, index, META_DB)
        try:
            assert meta.get("dtm:bucket") == f"{index}/8".encode()  # dtm's own keys stay
        finally:
            meta.close()
    with pytest.raises(redis.ResponseError, match="syntax error"):
        rr.execute_command("FLUSHALL", "BOGUS")


@pytest.mark.parametrize("command", [
    ["MOVE", "k", "16"], ["MOVE", "k", "17"], ["SWAPDB", "0", "16"], ["COPY", "k", "k2", "DB", "17"],
    ["SELECT", "16"],
])
def test_dtms_databases_are_out_of_range_for_users(rr: redis.Redis, command: list[str]) -> None:
    rr.set("k", "v")
    with pytest.raises(redis.ResponseError, match="^DB index is out of range$"):
        rr.execute_command(*command)
    assert rr.get("k") == b"v"


def test_select_of_dtms_database_inside_multi_fails_at_exec_as_redis(
    rr: redis.Redis, frames: Frames,
) -> None:
    assert frames.call("MULTI") == b"+OK\r\n"
    assert frames.call("SELECT", "16") == b"+QUEUED\r\n"
    assert frames.call("SET", "x", "1") == b"+QUEUED\r\n"
    assert frames.call("EXEC") == b"*2\r\n-ERR DB index is out of range\r\n+OK\r\n"
    assert rr.get("x") == b"1"  # in database 0, where the client was


def test_config_keeps_front_settings_and_passes_the_others_to_every_shard(
    rr: redis.Redis, dtm_redis: DtmProcess,
) -> None:
    assert rr.config_get("port") == {"port": str(dtm_redis.port)}
    assert rr.config_get("databases") == {"databases": "16"}  # the user's, not the shard's 18
    before = rr.config_get("hash-max-listpack-entries")["hash-max-listpack-entries"]
    try:
        assert rr.config_set("hash-max-listpack-entries", "7") is True
        for index in range(8):
            client = shard(dtm_redis, index)
            try:
                assert client.config_get("hash-max-listpack-entries") == {
                    "hash-max-listpack-entries": "7"}
            finally:
                client.close()
        assert rr.config_get("hash-max-listpack-entries") == {"hash-max-listpack-entries": "7"}
    finally:
        rr.config_set("hash-max-listpack-entries", before)
    with pytest.raises(redis.ResponseError, match="noeviction"):
        rr.config_set("maxmemory-policy", "allkeys-lru")
    assert rr.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
    # Blocking commands need the shards' keyspace events: a user's setting keeps them.
    rr.config_set("notify-keyspace-events", "Ex")
    flags = set(rr.config_get("notify-keyspace-events")["notify-keyspace-events"])
    assert {"E", "x", "K", "l", "z"} <= flags


def test_a_rpop_with_a_count_of_a_missing_key_is_a_null_array(frames: Frames) -> None:
    assert frames.call("RPOP", "none", "2") == b"*-1\r\n"
    assert frames.call("HELLO", "3")[:2] == b"%7"
    assert frames.call("RPOP", "none", "2") == b"_\r\n"


def test_a_front_listing_the_shards_in_another_order_is_refused(dtm_redis: DtmProcess) -> None:
    sockets = [f"unix:{dtm_redis.dir / f'shard-{i}' / 'redis.sock'}" for i in range(8)]
    for order in (list(reversed(sockets)), sockets[:4]):
        result = subprocess.run(
            [sys.executable, "-m", "dtm.cli", "serve", "--engine", "redis", "--port",
             str(free_port()), "--shards", ",".join(order)],
            capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert result.returncode == 1
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "every front must name the same shards in the same order" in lines[0]


def test_the_memory_engine_refuses_a_directory_of_redis_engine_shards() -> None:
    directory = tempfile.mkdtemp(prefix="dtm-mixed-")
    try:
        (ROOT / directory).joinpath("shard-0").mkdir()
        result = subprocess.run(
            [sys.executable, "-m", "dtm.cli", "serve", "--port", str(free_port()), "--dir", directory],
            capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert result.returncode == 1
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "holds the redis engine's shards" in lines[0], lines
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@contextmanager
def pattern_subscriber(rr: redis.Redis, pattern: str) -> Iterator[Any]:
    """A subscriber to pattern, with every keyspace notification on meanwhile."""
    rr.config_set("notify-keyspace-events", "KEA")
    subscriber = rr.pubsub()
    try:
        subscriber.psubscribe(pattern)
        assert subscriber.get_message(timeout=5)["type"] == "psubscribe"
        yield subscriber
    finally:
        subscriber.close()
        rr.config_set("notify-keyspace-events", "")


def test_keyspace_notifications_of_every_shard_reach_a_subscriber(rr: redis.Redis) -> None:
    with pattern_subscriber(rr, "__keyspace@0__:note:*") as subscriber:
        keys = spread("note:")
        for key in keys:
            rr.set(key, 1)
        seen: set[bytes] = set()
        deadline = time.monotonic() + 10
        while len(seen) < len(keys) and time.monotonic() < deadline:
            message = subscriber.get_message(timeout=0.5)
            if message and message["type"] == "pmessage":
                assert message["data"] == b"set"
                seen.add(message["channel"])
        assert seen == {f"__keyspace@0__:{key}".encode() for key in keys}
        subscriber.punsubscribe()
        reply = subscriber.get_message(timeout=5)
        assert reply is not None and reply["type"] == "punsubscribe" and reply["data"] == 0
        rr.set(keys[-1], 2)  # unsubscribed on every shard: nothing more arrives
        assert subscriber.get_message(timeout=0.5) is None


def test_client_pause_write_holds_writes_through_the_front_and_lets_reads_by(
    rr: redis.Redis, dtm_redis: DtmProcess,
) -> None:
    rr.set("paused:k", "before")
    writer = redis.Redis(port=dtm_redis.port, protocol=2)
    try:
        assert rr.execute_command("CLIENT", "PAUSE", "300", "WRITE") == b"OK"
        began = time.monotonic()
        assert writer.get("paused:k") == b"before"  # a read is not held
        assert time.monotonic() - began < 0.25
        writer.set("paused:k", "after")  # held until the pause ends
        assert time.monotonic() - began >= 0.25
        assert writer.get("paused:k") == b"after"
    finally:
        rr.execute_command("CLIENT", "UNPAUSE")
        writer.close()


def test_transactions_and_copies_across_buckets_and_databases_land_every_key_at_home(
    rr: redis.Redis, dtm_redis: DtmProcess,
) -> None:
    first, second = spread("dbs:", 2)
    rr.set(first, "A")
    rr.set(second, "B")
    assert rr.copy(first, second, destination_db=3) is True  # across buckets, into db 3
    transaction = rr.pipeline(transaction=True)
    transaction.set(first, "x")
    transaction.execute_command("SELECT", 2)
    transaction.set(second, "y")
    transaction.execute_command("SELECT", 0)
    transaction.move(second, 5)
    assert transaction.execute() == [True, True, True, True, True]
    views = {db: redis.Redis(port=dtm_redis.port, db=db, protocol=2) for db in (0, 2, 3, 5)}
    try:
        assert views[0].mget(first, second) == [b"x", None]
        assert views[2].get(second) == b"y"
        assert views[3].get(second) == b"A"
        assert views[5].get(second) == b"B"
    finally:
        for view in views.values():
            view.close()
    # Each key is on its own bucket's shard only, and no scratch copy is left behind.
    for index in range(8):
        client = shard(dtm_redis, index)
        try:
            keyspace = client.info("keyspace")
        finally:
            client.close()
        for name in keyspace:
            assert int(name[2:]) < 17, f"shard {index} kept scratch keys in {name}"


def test_transactions_with_whole_keyspace_commands_hold_every_shard(
    rr: redis.Redis, dtm_redis: DtmProcess,
) -> None:
    """MULTI with DBSIZE/KEYS/FLUSHDB across buckets: while it runs nothing else does,
    so it sees a state between whole transfers, and transfers (through locks that must
    yield to it) neither deadlock nor tear."""
    accounts = spread("whole:")
    rr.mset(dict.fromkeys(accounts, 100))
    total = 100 * len(accounts)
    stop = threading.Event()
    failures: list[BaseException] = []

    def transfers(seed: int) -> None:
        client = redis.Redis(port=dtm_redis.port, protocol=2, socket_timeout=20)
        rng = random.Random(seed)
        try:
            while not stop.is_set():
                source, target = rng.sample(accounts, 2)
                transaction = client.pipeline(transaction=True)
                transaction.decrby(source, 1)
                transaction.incrby(target, 1)
                transaction.execute()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            failures.append(exc)
        finally:
            client.close()

    threads = [threading.Thread(target=transfers, args=(seed,), daemon=True) for seed in range(3)]
    for thread in threads:
        thread.start()
    try:
        for _ in range(15):
            snapshot = rr.pipeline(transaction=True)
            snapshot.mget(accounts)
            snapshot.dbsize()
            snapshot.keys("whole:*")
            values, size, names = snapshot.execute()
            assert sum(int(value) for value in values) == total
            assert size == len(accounts) and sorted(names) == sorted(a.encode() for a in accounts)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert not failures, failures[0]
    assert sum(int(value) for value in rr.mget(accounts)) == total
    reset = rr.pipeline(transaction=True)
    reset.flushdb()
    reset.set("after-flush", 1)
    reset.dbsize()
    assert reset.execute() == [True, True, 1]
    for index in range(8):  # every lock, intent and lease went with it
        meta = shard(dtm_redis, index, META_DB)
        try:
            assert sorted(meta.keys()) == [b"dtm:bucket"]
        finally:
            meta.close()


def test_psubscribe_star_hears_every_shard_and_nothing_of_dtms_own(rr: redis.Redis) -> None:
    with pattern_subscriber(rr, "*") as subscriber:
        keys = spread("star:")
        rr.mset(dict.fromkeys(keys, 1))  # across every bucket: locks, scratch copies, unlocks
        rr.publish("news", "hello")
        channels: set[bytes] = set()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            message = subscriber.get_message(timeout=0.5)
            if message is None:
                if b"news" in channels and len(channels) > len(keys):
                    break
                continue
            if message["type"] == "pmessage":
                channels.add(message["channel"])
        assert b"news" in channels
        assert {f"__keyspace@0__:{key}".encode() for key in keys} <= channels
        # Written home by the commit (docs/compatibility.md): the event is RESTORE's.
        assert b"__keyevent@0__:restore" in channels
        leaked = [c for c in channels if c.startswith(b"dtm:")
                  or any(c.startswith(b"__key%s@%d__" % (kind, db))
                         for kind in (b"space", b"event") for db in range(16, 33))]
        assert not leaked, leaked


def test_the_fronts_own_commands_run_at_their_place_inside_multi(
    frames: Frames, rr: redis.Redis,
) -> None:
    assert frames.call("MULTI") == b"+OK\r\n"
    for command in (("SET", "own:a", "1"), ("CONFIG", "SET", "timeout", "0"),
                    ("CLIENT", "SETNAME", "inside"), ("CLIENT", "GETNAME"), ("GET", "own:a")):
        assert frames.call(*command) == b"+QUEUED\r\n"
    assert frames.call("EXEC") == b"*5\r\n+OK\r\n+OK\r\n+OK\r\n$6\r\ninside\r\n$1\r\n1\r\n"
    # As Redis: SAVE cannot be queued, and the transaction is then refused whole.
    assert frames.call("MULTI") == b"+OK\r\n"
    assert frames.call("SAVE") == b"-ERR Command not allowed inside a transaction\r\n"
    assert frames.call("EXEC").startswith(b"-EXECABORT")


def test_a_blocked_client_that_hangs_up_takes_nothing_pushed_later(
    rr: redis.Redis, dtm_redis: DtmProcess,
) -> None:
    gone = Frames(dtm_redis.port)
    gone.sock.sendall(encode_command("BLPOP", "hangup:list", "0"))
    deadline = time.monotonic() + 5
    while rr.info("clients")["blocked_clients"] < 1:
        assert time.monotonic() < deadline, "the client never blocked"
        time.sleep(0.01)
    gone.close()  # as Redis: a disconnected client is no longer waiting
    while rr.info("clients")["blocked_clients"] > 0:
        assert time.monotonic() < deadline, "the hung-up client stayed blocked"
        time.sleep(0.01)
    rr.rpush("hangup:list", "kept")
    assert rr.lrange("hangup:list", 0, -1) == [b"kept"]


@pytest.mark.parametrize("how", ["TIMEOUT", "ERROR"])
def test_client_unblock_ends_a_blocked_command_as_redis(
    rr: redis.Redis, dtm_redis: DtmProcess, how: str,
) -> None:
    blocked = Frames(dtm_redis.port)
    try:
        client_id = int(blocked.call("CLIENT", "ID")[1:-2])
        assert rr.execute_command("CLIENT", "UNBLOCK", client_id) == 0  # not blocked yet
        blocked.sock.sendall(encode_command("BLPOP", "unblock:list", "0"))
        deadline = time.monotonic() + 5
        while rr.info("clients")["blocked_clients"] < 1:
            assert time.monotonic() < deadline, "the client never blocked"
            time.sleep(0.01)
        assert rr.execute_command("CLIENT", "UNBLOCK", client_id, how) == 1
        expected = (b"*-1\r\n" if how == "TIMEOUT"
                    else b"-UNBLOCKED client unblocked via CLIENT UNBLOCK\r\n")
        while (frame := blocked.framer.next()) is None:
            blocked.framer.feed(blocked.sock.recv(65536))
        assert frame == expected
        rr.rpush("unblock:list", "kept")  # nobody is waiting for it any more
        assert rr.lrange("unblock:list", 0, -1) == [b"kept"]
    finally:
        blocked.close()
    with pytest.raises(redis.ResponseError, match="reason should be TIMEOUT or ERROR"):
        rr.execute_command("CLIENT", "UNBLOCK", client_id, "LATER")
