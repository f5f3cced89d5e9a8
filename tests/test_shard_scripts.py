"""dtm/buckets/scripts.py against real redis-server processes (``databases 33``): the
guard, prepare, decide, commit and abort scripts, resolve, and a two-shard transfer."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import cast

import pytest
import redis
import trio

from dtm.buckets.address import Arg, ShardAddress, ShardError
from dtm.buckets.link import open_link
from dtm.buckets.scripts import (
    ABORT,
    ALL_SCRIPTS,
    COMMIT,
    DATABASES_NEEDED,
    MAX_ARGS,
    Decided,
    Locked,
    Prepared,
    ShardMisconfigured,
    ShardScripts,
    TooManyArguments,
    resolve,
)

BINARY = shutil.which("redis-server")
if BINARY is None and not os.environ.get("CI"):
    pytest.skip("redis-server not installed", allow_module_level=True)

LEASE = 60_000  # ms: longer than any test, so only the tests that want a lapse see one


class Server:
    """A redis-server on a unix socket in its own short temporary folder."""

    def __init__(self, databases: int = DATABASES_NEEDED) -> None:
        assert BINARY is not None
        self.folder = Path(tempfile.mkdtemp(prefix="dtm-scr-"))
        self.path = str(self.folder / "redis.sock")
        self.proc = subprocess.Popen(
            [BINARY, "--port", "0", "--unixsocket", self.path, "--save", "", "--appendonly",
             "no", "--databases", str(databases), "--dir", str(self.folder)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                self.db(0).ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise
                time.sleep(0.01)

    @property
    def address(self) -> ShardAddress:
        return ShardAddress(path=self.path)

    def db(self, n: int) -> redis.Redis:
        return redis.Redis(unix_socket_path=self.path, db=n)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    started = [Server(), Server()]
    yield started
    for server in started:
        server.stop()


@pytest.fixture
def server(servers: list[Server]) -> Server:
    return servers[0]


@asynccontextmanager
async def scripts_on(*servers: Server) -> AsyncIterator[list[ShardScripts]]:
    async with open_link(servers[0].address) as first:
        if len(servers) == 1:
            yield [ShardScripts(first)]
            return
        async with open_link(servers[1].address) as second:
            yield [ShardScripts(first), ShardScripts(second)]


def keys(server: Server, db: int) -> list[bytes]:
    return sorted(cast(list[bytes], server.db(db).keys()))


def user_view(server: Server) -> list[list[bytes]]:
    """Every key of every user database (0-15), sorted."""
    return [keys(server, n) for n in range(16)]


async def test_guard_runs_commands_of_several_types_in_their_database(server: Server) -> None:
    with trio.fail_after(10):
        async with scripts_on(server) as [shard]:
            assert await shard.guard(3, ["s"], ["SET", "s", b"v\x00\xff"]) == b"OK"
            assert await shard.guard(3, ["s"], ["GET", "s"]) == b"v\x00\xff"
            assert await shard.guard(3, ["h"], ["HSET", "h", "f", "1", "g", "2"]) == 2
            assert await shard.guard(3, ["h"], ["HGETALL", "h"]) == [b"f", b"1", b"g", b"2"]
            assert await shard.guard(3, ["l"], ["LPUSH", "l", "x", "y"]) == 2
            assert await shard.guard(3, ["l"], ["LRANGE", "l", 0, -1]) == [b"y", b"x"]
            assert await shard.guard(3, ["n"], ["INCRBY", "n", 5]) == 5
            assert await shard.guard(3, ["s", "nope"], ["MGET", "s", "nope"]) == [b"v\x00\xff",
                                                                                None]
            assert await shard.guard(3, ["nope"], ["GET", "nope"]) is None
            assert await shard.guard(3, [], ["DBSIZE"]) == 4
    assert server.db(3).get("s") == b"v\x00\xff"
    assert server.db(3).lrange("l", 0, -1) == [b"y", b"x"]
    assert server.db(0).dbsize() == 0  # the script's SELECT stayed inside the script


async def test_guard_returns_redis_own_error_text(server: Server) -> None:
    server.db(0).set("s", "text")
    with pytest.raises(redis.ResponseError) as direct:
        server.db(0).lpush("s", "x")
    with trio.fail_after(10):
        async with scripts_on(server) as [shard]:
            with pytest.raises(ShardError) as wrong_type:
                await shard.guard(0, ["s"], ["LPUSH", "s", "x"])
            with pytest.raises(ShardError) as not_integer:
                await shard.guard(0, ["s"], ["INCR", "s"])
            with pytest.raises(ShardError) as unknown:
                await shard.guard(0, [], ["NOSUCHCOMMAND"])
            assert await shard.guard(0, ["s"], ["GET", "s"]) == b"text"  # still usable
    assert str(wrong_type.value) == str(direct.value)
    assert str(wrong_type.value).startswith("WRONGTYPE Operation against a key holding")
    assert str(not_integer.value) == "ERR value is not an integer or out of range"
    assert "Unknown Redis command" in str(unknown.value)
    assert server.db(0).get("s") == b"text"


async def test_guard_refuses_a_locked_key_and_changes_nothing(server: Server) -> None:
    server.db(0).set("k", "before")
    with trio.fail_after(10):
        async with scripts_on(server) as [shard]:
            prepared = await shard.prepare("tx1", LEASE, [(0, "k")], [(0, ["SET", "k", "mine"])])
            assert isinstance(prepared, Prepared)
            refused = await shard.guard(0, ["other", "k"], ["MSET", "other", "1", "k", "x"])
            assert isinstance(refused, Locked)
            assert refused.txid == "tx1" and refused.until_ms == prepared.until_ms
            assert not refused.expired
            assert refused.until_ms - LEASE <= refused.now_ms < refused.until_ms
            # Reads are refused too: the value may be about to change.
            assert isinstance(await shard.guard(0, ["k"], ["GET", "k"]), Locked)
            # The lock is on (database, key): the same name elsewhere is free.
            assert await shard.guard(1, ["k"], ["SET", "k", "db1"]) == b"OK"
            assert await shard.guard(0, ["other"], ["SET", "other", "free"]) == b"OK"
    assert server.db(0).get("k") == b"before"
    assert server.db(0).get("other") == b"free"
    assert server.db(1).get("k") == b"db1"


async def test_prepare_is_all_or_nothing(server: Server) -> None:
    with trio.fail_after(10):
        async with scripts_on(server) as [shard]:
            assert isinstance(await shard.prepare("holder", LEASE, [(0, "b")], []), Prepared)
            meta_before = keys(server, 16)
            refused = await shard.prepare("late", LEASE, [(0, "a"), (0, "b"), (0, "c")],
                                          [(0, ["SET", "a", "1"]), (0, ["SET", "c", "1"])])
            assert isinstance(refused, Locked) and refused.txid == "holder"
            assert keys(server, 16) == meta_before  # no lock, no intent for late
            assert await shard.guard(0, ["a"], ["SET", "a", "free"]) == b"OK"
            assert await shard.guard(0, ["c"], ["GET", "c"]) is None
            assert await shard.commit("late") is None  # nothing was stored for it
            # Once the holder is gone the same prepare succeeds.
            assert await shard.abort("holder")
            assert isinstance(await shard.prepare("late", LEASE, [(0, "a"), (0, "b")], []),
                              Prepared)


async def test_prepare_again_renews_the_lease_and_keeps_earlier_locks(server: Server) -> None:
    with trio.fail_after(10):
        async with scripts_on(server) as [shard]:
            first = await shard.prepare("tx", 1_000, [(0, "a")], [(0, ["SET", "a", "1"])])
            again = await shard.prepare("tx", LEASE, [(0, "b")], [(0, ["SET", "b", "2"])])
            assert isinstance(first, Prepared) and isinstance(again, Prepared)
            assert again.until_ms >= first.until_ms + LEASE - 1_000
            for key in ("a", "b"):
                locked = await shard.guard(0, [key], ["GET", key])
                assert isinstance(locked, Locked) and locked.until_ms == again.until_ms
            assert await shard.commit("tx") == [b"OK"]  # the commands were replaced
            assert await shard.guard(0, ["a"], ["GET", "a"]) is None
            assert await shard.guard(0, ["b"], ["GET", "b"]) == b"2"


async def test_commit_applies_the_intent_returns_replies_unlocks_publishes_and_is_idempotent(
    server: Server,
) -> None:
    server.db(0).set("s", "text")
    with trio.fail_after(10):
        async with scripts_on(server) as [shard], shard.link.dedicated() as listener:
            assert await listener.call("SUBSCRIBE", "dtm:unlocked") == [
                b"subscribe", b"dtm:unlocked", 1]
            intent: list[tuple[int, list[Arg]]] = [(0, ["SET", "a", b"\x00bin\r\n"]), (0, ["INCR", "s"]),
                      (2, ["RPUSH", "l", "x", "y"]), (0, ["GET", "a"])]
            await shard.prepare("tx1", LEASE, [(0, "a"), (0, "s"), (2, "l")], intent)
            assert server.db(0).get("a") is None  # nothing applied before commit
            replies = await shard.commit("tx1")
            assert replies is not None
            ok, error, pushed, got = replies
            # As in EXEC: a failing command is its own reply; the others still apply.
            assert (ok, pushed, got) == (b"OK", 2, b"\x00bin\r\n")
            assert isinstance(error, ShardError)
            assert str(error) == "ERR value is not an integer or out of range"
            assert await listener.reply() == [b"message", b"dtm:unlocked", b"tx1"]
            assert await shard.guard(0, ["a"], ["GET", "a"]) == b"\x00bin\r\n"  # unlocked
            assert await shard.commit("tx1") is None  # again: nothing to do
            assert await shard.link.call("PUBLISH", "dtm:unlocked", "marker") == 1
            # The second commit published nothing: the next message is the marker.
            assert await listener.reply() == [b"message", b"dtm:unlocked", b"marker"]
    assert server.db(2).lrange("l", 0, -1) == [b"x", b"y"]
    assert server.db(16).keys() == []


async def test_abort_releases_and_is_idempotent(server: Server) -> None:
    server.db(0).set("k", "before")
    with trio.fail_after(10):
        async with scripts_on(server) as [shard], shard.link.dedicated() as listener:
            await listener.call("SUBSCRIBE", "dtm:unlocked")
            await shard.prepare("tx1", LEASE, [(0, "k")], [(0, ["SET", "k", "after"])])
            assert await shard.abort("tx1") is True
            assert await listener.reply() == [b"message", b"dtm:unlocked", b"tx1"]
            assert await shard.guard(0, ["k"], ["GET", "k"]) == b"before"
            assert await shard.abort("tx1") is False
            assert await shard.commit("tx1") is None  # the intent is gone with the locks
            assert await shard.abort("never-prepared") is False
    assert server.db(0).get("k") == b"before"
    assert server.db(16).keys() == []


async def test_abort_of_one_txid_never_frees_another_txids_lock(server: Server) -> None:
    with trio.fail_after(10):
        async with scripts_on(server) as [shard]:
            await shard.prepare("first", LEASE, [(0, "k")], [])
            await shard.abort("first")
            await shard.prepare("second", LEASE, [(0, "k")], [])
            assert await shard.abort("first") is False
            locked = await shard.guard(0, ["k"], ["GET", "k"])
            assert isinstance(locked, Locked) and locked.txid == "second"


async def test_decide_is_first_writer_wins(server: Server) -> None:
    with trio.fail_after(10):
        async with scripts_on(server) as [shard]:
            assert await shard.decide("t1", COMMIT) == COMMIT
            assert await shard.decide("t1", ABORT) == COMMIT
            assert await shard.decide("t2", ABORT) == ABORT
            assert await shard.decide("t2", COMMIT) == ABORT
            # Racing deciders, one scheduler pass: exactly one outcome, the same for all.
            seen: list[str] = []

            async def racer(outcome: str) -> None:
                seen.append(await shard.decide("t3", COMMIT if outcome == COMMIT else ABORT))

            async with trio.open_nursery() as nursery:
                for i in range(20):
                    nursery.start_soon(racer, COMMIT if i % 2 else ABORT)
            assert len(set(seen)) == 1 and len(seen) == 20
    meta = server.db(16)
    assert meta.get("dtm:decision:t1") == b"commit"
    assert 86000 < meta.ttl("dtm:decision:t1") <= 86400
    assert server.db(0).dbsize() == 0


async def wait_for_lapse(shard: ShardScripts, key: str) -> Locked:
    """Ask the guard until the lock on key has run out by the shard's clock."""
    while True:
        locked = await shard.guard(0, [key], ["GET", key])
        assert isinstance(locked, Locked)
        if locked.expired:
            return locked
        await trio.lowlevel.checkpoint()


async def test_resolve_rolls_forward_when_the_primary_decided_commit(
    servers: list[Server],
) -> None:
    with trio.fail_after(10):
        async with scripts_on(*servers) as [primary, other]:
            await primary.prepare("tx", 1, [(0, "a")], [(0, ["SET", "a", "A"])], primary=True)
            await other.prepare("tx", 1, [(0, "b")], [(0, ["SET", "b", "B"])])
            assert await primary.decide("tx", COMMIT) == COMMIT
            await primary.commit("tx")
            # The front dies here: b stays locked until its lease runs out.
            lapsed = await wait_for_lapse(other, "b")
            assert lapsed.txid == "tx"
            assert await resolve(other, primary, "tx") == COMMIT
            assert await other.guard(0, ["b"], ["GET", "b"]) == b"B"
            assert await resolve(other, primary, "tx") == COMMIT  # idempotent
    assert servers[0].db(0).get("a") == b"A" and servers[1].db(0).get("b") == b"B"


async def test_resolve_rolls_back_without_a_decision_and_a_late_commit_loses(
    servers: list[Server],
) -> None:
    with trio.fail_after(10):
        async with scripts_on(*servers) as [primary, other]:
            await primary.prepare("tx", 1, [(0, "a")], [(0, ["SET", "a", "A"])], primary=True)
            await other.prepare("tx", 1, [(0, "b")], [(0, ["SET", "b", "B"])])
            # The front stalls before deciding; another front meets the lapsed lock.
            lapsed = await wait_for_lapse(other, "b")
            assert await resolve(other, primary, lapsed.txid) == ABORT
            assert await other.guard(0, ["b"], ["GET", "b"]) is None
            # The slow front wakes up: its commit decision loses, so it aborts.
            assert await primary.decide("tx", COMMIT) == ABORT
            assert await primary.abort("tx") is True
            # Nor can it lock anew on the primary for a transaction that is over.
            assert await primary.prepare("tx", LEASE, [(0, "a")], [], primary=True) == \
                Decided(ABORT)
            assert await primary.guard(0, ["a"], ["GET", "a"]) is None
    assert servers[0].db(16).keys() == [b"dtm:decision:tx"]
    assert servers[1].db(16).keys() == []


async def test_metadata_is_invisible_to_user_databases(server: Server) -> None:
    server.db(0).set("user", "1")
    server.db(15).set("other", "2")
    before = user_view(server)
    with trio.fail_after(10):
        async with scripts_on(server) as [shard]:
            await shard.prepare("tx", LEASE, [(0, "user"), (15, "other"), (0, "absent")],
                                [(0, ["GET", "user"])], primary=True)
            await shard.decide("tx", COMMIT)
            assert user_view(server) == before
            assert await shard.guard(0, [], ["DBSIZE"]) == 1
            assert await shard.guard(0, [], ["KEYS", "*"]) == [b"user"]
            assert await shard.commit("tx") == [b"1"]
    assert user_view(server) == before
    assert server.db(16).keys() == [b"dtm:decision:tx"]


async def test_binary_and_colon_keys_lock_exactly_themselves(server: Server) -> None:
    key = b"a:\x00\xff\r\nb"
    with trio.fail_after(10):
        async with scripts_on(server) as [shard]:
            await shard.prepare("tx", LEASE, [(1, key)], [(1, ["SET", key, b"\xff"])])
            assert isinstance(await shard.guard(1, [key], ["GET", key]), Locked)
            # "dtm:lock:1:a:..." must not be mistaken for db 1 key "a" or db "1:a".
            assert await shard.guard(1, [b"a"], ["GET", b"a"]) is None
            assert await shard.guard(1, [b"a:"], ["GET", b"a:"]) is None
            assert await shard.commit("tx") == [b"OK"]
    assert server.db(1).get(key) == b"\xff"


async def test_scripts_are_reloaded_after_the_shard_forgets_them(server: Server) -> None:
    with trio.fail_after(10):
        async with scripts_on(server) as [shard]:
            assert await shard.guard(0, ["k"], ["SET", "k", "1"]) == b"OK"
            assert shard.loads == 1  # NOSCRIPT on first use, loaded once
            assert await shard.guard(0, ["k"], ["GET", "k"]) == b"1"
            assert shard.loads == 1
            await shard.link.call("SCRIPT", "FLUSH")
            assert await shard.guard(0, ["k"], ["GET", "k"]) == b"1"
            assert shard.loads == 2
            await shard.load()
            assert shard.loads == 2 + len(ALL_SCRIPTS)  # every script, up front


async def test_load_refuses_a_shard_without_the_metadata_databases() -> None:
    small = Server(databases=16)
    try:
        with trio.fail_after(10):
            async with open_link(small.address) as link:
                with pytest.raises(ShardMisconfigured, match="has 16 databases; dtm needs 33"):
                    await ShardScripts(link).load()
    finally:
        small.stop()


async def test_commands_too_long_for_a_script_are_refused_before_sending(server: Server) -> None:
    with trio.fail_after(10):
        async with scripts_on(server) as [shard]:
            members = [str(i) for i in range(MAX_ARGS - 2)]
            assert await shard.guard(0, ["s"], ["SADD", "s", *members]) == MAX_ARGS - 2
            with pytest.raises(TooManyArguments):
                await shard.guard(0, ["s"], ["SADD", "s", *members, "x", "y"])
            with pytest.raises(TooManyArguments):
                await shard.prepare("tx", LEASE, [(0, "s")], [(0, ["SADD", "s", *members,
                                                                   "x", "y"])])
            with pytest.raises(ValueError, match="user databases"):
                await shard.guard(16, ["k"], ["GET", "k"])
            with pytest.raises(ValueError, match="txid"):
                await shard.decide("has space", COMMIT)
    assert server.db(16).keys() == []


async def test_two_shard_transfers_keep_the_sum_and_guard_reads_never_see_half(
    servers: list[Server],
) -> None:
    """Transfers between account a (shard 0) and b (shard 1) run concurrently through
    prepare/decide/commit. Readers read shard 0 (a and its version v0), then b, then shard
    0 again, each through the guard: when both shard-0 reads agree, nothing committed on
    shard 0 in between, and a transfer half committed at that time would hold a lock one
    of the reads met. So every accepted read sums to the total."""
    total, transfers, workers = 1000, 25, 3
    servers[0].db(0).mset({"a": total, "v0": 0})
    servers[1].db(0).mset({"b": 0, "v1": 0})
    committed = 0
    accepted: list[int] = []
    refused = 0
    done = trio.Event()
    rng = random.Random(9)

    async def transfer(worker: int) -> None:
        nonlocal committed
        for n in range(transfers):
            amount = rng.randint(-10, 10)
            for attempt in range(10_000):
                txid = f"w{worker}.{n}.{attempt}"
                first = await shard0.prepare(
                    txid, LEASE, [(0, "a"), (0, "v0")],
                    [(0, ["INCRBY", "a", -amount]), (0, ["INCR", "v0"])], primary=True)
                if isinstance(first, Locked):
                    await trio.lowlevel.checkpoint()
                    continue
                second = await shard1.prepare(
                    txid, LEASE, [(0, "b"), (0, "v1")],
                    [(0, ["INCRBY", "b", amount]), (0, ["INCR", "v1"])])
                if isinstance(second, Locked):
                    await shard0.abort(txid)
                    continue
                assert await shard0.decide(txid, COMMIT) == COMMIT
                assert await shard0.commit(txid) is not None
                assert await shard1.commit(txid) is not None
                committed += 1
                break

    async def read() -> tuple[int, int, int] | None:
        first = await shard0.guard(0, ["a", "v0"], ["MGET", "a", "v0"])
        if isinstance(first, Locked):
            return None
        b = await shard1.guard(0, ["b"], ["GET", "b"])
        if isinstance(b, Locked):
            return None
        again = await shard0.guard(0, ["a", "v0"], ["MGET", "a", "v0"])
        if isinstance(again, Locked) or again[1] != first[1]:
            return None
        return int(first[0]), int(b), int(first[1])

    async def reader() -> None:
        nonlocal refused
        while True:
            finished = done.is_set()
            seen = await read()
            if seen is None:
                refused += 1
            else:
                a, b, _ = seen
                accepted.append(a + b)
                if finished:
                    return
            await trio.lowlevel.checkpoint()

    with trio.fail_after(30):
        async with scripts_on(*servers) as [shard0, shard1], trio.open_nursery() as readers:
            for _ in range(2):
                readers.start_soon(reader)
            async with trio.open_nursery() as writers:
                for worker in range(workers):
                    writers.start_soon(transfer, worker)
            done.set()
    assert committed == transfers * workers
    assert accepted and all(seen == total for seen in accepted), accepted
    assert refused > 0, refused  # the readers did meet transfers in flight
    a, v0 = servers[0].db(0).mget("a", "v0")
    b, v1 = servers[1].db(0).mget("b", "v1")
    assert int(a) + int(b) == total  # type: ignore[arg-type]
    assert int(v0) == int(v1) == committed  # type: ignore[arg-type]
    assert all(key.startswith(b"dtm:decision:") for key in keys(servers[0], 16))
    assert servers[1].db(16).keys() == []
