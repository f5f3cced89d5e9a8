"""Keyspace commands cost what they cost in Redis: no pattern, count, value size or number
of watched keys lets one client stop the others; MOVE and SWAPDB as Redis's."""

from __future__ import annotations

import random
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import redis
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dtm.bucket import Bucket
from dtm.glob import glob_filter, glob_match
from dtm.keyspace import Keyspace
from dtm.slots import key_slot
from helpers import RawClient, encode_command, replies_of, serving
from modes.snapshots import capture

# --------------------------------------------------------------- the oracle


def stringmatchlen(pattern: bytes, string: bytes, nocase: bool = False) -> bool:
    """Redis 7's util.c stringmatchlen, transcribed step by step (C strings end in NUL,
    chars are signed, tolower() folds ASCII only); slow, for checking only."""
    lower = lambda c: c + 32 if 65 <= c <= 90 else c  # noqa: E731
    signed = lambda c: c - 256 if c > 127 else c  # noqa: E731
    p_, s_ = pattern + b"\0", string + b"\0"
    skip = [False]

    def impl(p: int, plen: int, s: int, slen: int, nesting: int) -> bool:
        if nesting > 1000:
            return False
        while plen and slen:
            c = p_[p]
            if c == ord("*"):
                while plen and p_[p + 1] == ord("*"):
                    p, plen = p + 1, plen - 1
                if plen == 1:
                    return True
                while slen:
                    if impl(p + 1, plen - 1, s, slen, nesting + 1):
                        return True
                    if skip[0]:
                        return False
                    s, slen = s + 1, slen - 1
                skip[0] = True
                return False
            if c == ord("?"):
                s, slen = s + 1, slen - 1
            elif c == ord("["):
                p, plen = p + 1, plen - 1
                negate = p_[p] == ord("^")
                if negate:
                    p, plen = p + 1, plen - 1
                match = False
                while True:
                    if p_[p] == ord("\\") and plen >= 2:
                        p, plen = p + 1, plen - 1
                        match = match or p_[p] == s_[s]
                    elif p_[p] == ord("]"):
                        break
                    elif plen == 0:
                        p, plen = p - 1, plen + 1
                        break
                    elif plen >= 3 and p_[p + 1] == ord("-"):
                        start, end, ch = signed(p_[p]), signed(p_[p + 2]), signed(s_[s])
                        if start > end:
                            start, end = end, start
                        if nocase:
                            start, end, ch = lower(start), lower(end), lower(ch)
                        p, plen = p + 2, plen - 2
                        match = match or start <= ch <= end
                    elif nocase:
                        match = match or lower(p_[p]) == lower(s_[s])
                    else:
                        match = match or p_[p] == s_[s]
                    p, plen = p + 1, plen - 1
                if match == negate:
                    return False
                s, slen = s + 1, slen - 1
            else:
                if c == ord("\\") and plen >= 2:
                    p, plen = p + 1, plen - 1
                a, b = (lower(p_[p]), lower(s_[s])) if nocase else (p_[p], s_[s])
                if a != b:
                    return False
                s, slen = s + 1, slen - 1
            p, plen = p + 1, plen - 1
            if slen == 0:
                while p_[p] == ord("*"):
                    p, plen = p + 1, plen - 1
                break
        return plen == 0 and slen == 0

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 5000))  # one level per '*' run, up to 1001
    try:
        return impl(0, len(pattern), 0, len(string), 0)
    finally:
        sys.setrecursionlimit(limit)


PATTERN_BYTES = [b"a", b"b", b"A", b"*", b"?", b"[", b"]", b"^", b"-", b"\\", b"\xff", b"\x80", b"z", b"\x00"]
patterns = st.lists(st.sampled_from(PATTERN_BYTES), max_size=10).map(b"".join)
keys = st.lists(st.sampled_from([b"a", b"b", b"A", b"Z", b"z", b"-", b"]", b"\\", b"*", b"\xff", b"\x80"]), max_size=7).map(b"".join)


# ------------------------------------------------------------------- globs


@settings(max_examples=400, deadline=None)
@given(patterns, st.lists(keys, max_size=6), st.booleans())
def test_glob_matches_stringmatchlen(pattern: bytes, strings: list[bytes], nocase: bool) -> None:
    for string in strings:
        assert glob_match(pattern, string, nocase) == stringmatchlen(pattern, string, nocase), (pattern, string)
    assert glob_filter(pattern, strings) == [k for k in strings if stringmatchlen(pattern, k)]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(patterns.filter(lambda p: p != b"*"), st.sets(keys, min_size=1, max_size=8))
def test_keys_matches_real_redis(redis_server: int, pattern: bytes, names: set[bytes]) -> None:
    theirs = redis.Redis(port=redis_server, db=9)
    theirs.flushdb()
    theirs.mset({name: b"1" for name in names})
    assert sorted(glob_filter(pattern, sorted(names))) == sorted(theirs.keys(pattern))
    theirs.close()


@pytest.mark.parametrize("runs", [999, 1000, 1001, 1002])
def test_more_than_1000_star_runs_match_as_redis(runs: int) -> None:
    key = b"a" * 1005 + b"b"
    for pattern in (b"a*" * runs + b"b", b"a*" * runs, b"*a" * runs + b"*", b"[a]*" * runs + b"?"):
        assert glob_match(pattern, key) == stringmatchlen(pattern, key)
    assert glob_match(b"a*" * runs, key) == (runs <= 1001)  # what redis-server 7 answers


def test_repeated_sets_and_long_patterns_match() -> None:
    for pattern in (b"[ab][ab][ab]*[ab][ab]", b"*[ab][ab]x[ab][ab][ab]*", b"*" + b"[ab]?" * 1500 + b"c"):
        for key in (b"abab", b"aaxbbbz", b"ab", b"b" * 3000 + b"c", b"b" * 2999 + b"c"):
            assert glob_match(pattern, key) == stringmatchlen(pattern, key)


# -------------------------------------------------- one client, the others

@asynccontextmanager
async def bystander(port: int) -> AsyncIterator[Callable[[], Awaitable[None]]]:
    """A client that checks PING answers within a second; call the yielded function
    once the attack is over."""
    client = await RawClient.connect(port)
    done = trio.Event()
    pings = 0

    async def keep_pinging() -> None:
        nonlocal pings
        while not done.is_set():
            with trio.fail_after(1):
                assert await client.call("PING") == b"PONG"
            pings += 1
            await trio.sleep(0.01)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(keep_pinging)

        async def finish() -> None:
            done.set()

        yield finish
    assert pings > 0
    with trio.fail_after(1):
        assert await client.call("PING") == b"PONG"  # still up


async def pipeline(client: RawClient, commands: list[list[Any]]) -> list[Any]:
    await client.send_raw(b"".join(encode_command(*command) for command in commands))
    return [await client.reply() for _ in commands]


async def test_backtracking_pattern_does_not_stop_other_clients() -> None:
    async with serving(timeout=30) as server:
        attacker = await RawClient.connect(server.port)
        await attacker.call("SET", b"a" * 30_000, "1")
        await attacker.call("SET", b"a" * 20_000 + b"c", "1")
        async with bystander(server.port) as finished:
            with trio.fail_after(5):
                assert await attacker.call("KEYS", b"a*" * 60 + b"b") == []
                assert await attacker.call("SCAN", "0", "MATCH", b"*a" * 60 + b"*b", "COUNT", "100") == [b"0", []]
                assert await attacker.call("KEYS", b"a*" * 60 + b"c") == [b"a" * 20_000 + b"c"]
            await finished()


async def test_whole_keyspace_reads_on_a_sparse_db_do_not_stop_other_clients() -> None:
    async with serving(timeout=30, buckets=4) as server:
        attacker = await RawClient.connect(server.port)
        await attacker.call("SET", "lonely", "1")
        # 16384 of each: a walk over every slot per command took minutes
        commands = [["DBSIZE"], ["RANDOMKEY"], ["SCAN", "0", "COUNT", "1000"], ["FLUSHDB"]]
        async with bystander(server.port) as finished:
            with trio.fail_after(10):
                for command in commands[:3]:
                    replies = await pipeline(attacker, [command] * 16384)
                    assert len(replies) == 16384
                    assert replies[-1] in (1, b"lonely", [b"0", [b"lonely"]])
                replies = await pipeline(attacker, [["SELECT", "5"], *[["FLUSHDB"]] * 16384])
            await finished()


@pytest.mark.parametrize("mode", ["none", "binlog"])  # binlog: an edit must be undoable too
async def test_edits_of_a_large_value_cost_the_edit(mode: str, tmp_path: Path) -> None:
    size = 64 * 1024 * 1024
    async with serving(timeout=60, mode=mode, dir=str(tmp_path / "data")) as server:
        attacker = await RawClient.connect(server.port)
        assert await attacker.call("SETRANGE", "big", size - 1, "x") == size
        assert await attacker.call("APPEND", "log", b"x" * size) == size
        async with bystander(server.port) as finished:
            with trio.fail_after(10):  # each edit copied 64 MB before: minutes
                edits = [["SETRANGE", "big", i * 4096, "y"] for i in range(300)]
                assert await pipeline(attacker, edits) == [size] * 300
                appends = [["APPEND", "log", "z"] for _ in range(300)]
                assert await pipeline(attacker, appends) == list(range(size + 1, size + 301))
            await finished()
        assert await attacker.call("GETRANGE", "big", 0, 0) == b"y"
        assert await attacker.call("GETRANGE", "big", 4095, 4097) == b"\x00y\x00"
        assert await attacker.call("GETRANGE", "log", -3, -1) == b"zzz"


async def test_watching_many_keys_and_flushing_cost_keys_plus_watchers() -> None:
    async with serving(timeout=60) as server:
        watcher = await RawClient.connect(server.port)
        names = [b"w:%d" % i for i in range(30_000)]
        await watcher.call("MSET", *[part for name in names[:1000] for part in (name, b"1")])
        async with bystander(server.port) as finished:
            with trio.fail_after(10):  # O(N^2) before: minutes
                assert await watcher.call("WATCH", *names) == b"OK"
                other = await RawClient.connect(server.port)
                # each of 16384 slots checked every watched key before: minutes
                assert await other.call("FLUSHALL") == b"OK"
            await finished()
        assert await watcher.call("MULTI") == b"OK"
        assert await watcher.call("PING") == b"QUEUED"
        assert await watcher.call("EXEC") is None  # the flush broke the watch
        assert not any(shard.watchers for bucket in server.keyspace.buckets for shard in bucket.shards())


# ------------------------------------------------------------- key counts


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["set", "del", "flush", "swap"]), st.integers(0, 40), st.integers(0, 2)), max_size=80))
def test_counts_and_occupied_slots_follow_every_write(ops: list[tuple[str, int, int]]) -> None:
    space = Keyspace(3, databases=3)
    for op, n, db in ops:
        view = space.view(db)
        key = b"k%d" % n
        if op == "set":
            view.slot(key).store(key, b"v")
        elif op == "del":
            view.slot(key).delete(key)
        elif op == "flush":
            view.flush()
        else:
            space.swap(db, (db + 1) % 3)
    for view in space.views():
        stored = {key for slot in view.table for key in slot.data}
        assert view.size() == len(stored)
        assert sorted(space.view(view.index).occupied_from(0), key=lambda s: s.number) == [
            slot for slot in view.table if slot.data
        ]
        for shard in view.shards:
            assert sorted(shard.occupied) == [slot.number for slot in shard.occupied_slots()]
            assert shard.db == view.index


def test_randomkey_picks_live_keys_of_a_sparse_db() -> None:
    space = Keyspace(2)
    view = space.view(0)
    view.slot(b"dead").store(b"dead", b"1", 1)  # expired long ago
    view.slot(b"alive").store(b"alive", b"1")

    class S:
        db = view

    from dtm.commands.keys import randomkey

    assert {randomkey(S(), [b"RANDOMKEY"]) for _ in range(20)} == {b"alive"}  # type: ignore[arg-type]
    assert view.size() == 1  # the expired key was deleted on the way, as Redis does
    view.slot(b"alive").delete(b"alive")
    assert randomkey(S(), [b"RANDOMKEY"]) is None  # type: ignore[arg-type]


def test_scan_returns_every_key_present_throughout_exactly_once(r: redis.Redis) -> None:
    stable = {f"stable:{i}".encode() for i in range(300)}
    r.mset({name: 1 for name in stable})
    seen: list[Any] = []
    cursor, step = 0, 0
    rng = random.Random(7)
    while True:
        cursor, batch = r.scan(cursor, count=rng.choice([1, 5, 20]))
        seen.extend(batch)
        r.set(f"churn:{step}", 1)  # keys come and go while the scan runs
        r.delete(f"churn:{step - 3}")
        step += 1
        if cursor == 0:
            break
    assert len([k for k in seen if k.startswith(b"stable:")]) == len(stable)  # no repeats
    assert {k for k in seen if k.startswith(b"stable:")} == stable


def test_scan_skips_empty_slots_in_one_call(r: redis.Redis) -> None:
    r.set("only", 1)  # Redis's table would be 4 buckets: one call finds it
    assert r.scan(0) == (0, [b"only"])


# ------------------------------------------------- edited values stay put


async def test_a_capture_keeps_the_value_it_saw() -> None:
    async with serving() as server:
        client = await RawClient.connect(server.port)
        await client.call("APPEND", "k", "hello")
        await client.call("APPEND", "k", " world")  # now an in-place value
        captured = capture(server.keyspace, 1)
        await client.call("SETRANGE", "k", 0, "J")
        await client.call("APPEND", "k", "!")
        values = [v for cut in captured.buckets for _, slots, _ in cut for data in slots for v in data.values()]
        assert values == [b"hello world"]
        assert await client.call("GET", "k") == b"Jello world!"


def test_copy_never_shares_an_edited_value(r: redis.Redis) -> None:
    r.append("k", "abc")
    r.append("k", "def")
    assert r.copy("k", "c") is True
    r.append("k", "1")
    r.setrange("c", 0, "X")
    assert r.get("k") == b"abcdef1"
    assert r.get("c") == b"Xbcdef"


def test_exec_replies_are_not_changed_by_later_edits(r: redis.Redis) -> None:
    r.append("k", "a")
    r.append("k", "b")
    pipe = r.pipeline(transaction=True)
    pipe.get("k")
    pipe.append("k", "c")
    pipe.mget("k", "k")
    pipe.setrange("k", 0, "Z")
    pipe.get("k")
    assert pipe.execute() == [b"ab", 3, [b"abc", b"abc"], 3, b"Zbc"]


def test_edited_values_work_everywhere_a_string_does(r: redis.Redis) -> None:
    r.append("n", "1")
    r.append("n", "2")
    assert r.incr("n") == 13
    r.append("f", "1.")
    r.append("f", "5")
    assert r.incrbyfloat("f", 1) == 2.5
    r.setrange("s", 2, "xy")
    assert r.get("s") == b"\x00\x00xy"
    assert r.getrange("s", 1, 2) == b"\x00x"
    assert r.strlen("s") == 4
    assert r.rename("s", "t") is True
    assert r.get("t") == b"\x00\x00xy"


# ------------------------------------------------------------ MOVE, SWAPDB


def _db_commands(seed: int) -> list[list[str]]:
    rng = random.Random(seed)
    names = ["a", "b", "{t}c", "d"]
    commands: list[list[str]] = [["FLUSHALL"]]
    for _ in range(120):
        key = rng.choice(names)
        db = str(rng.choice([0, 1, 2, 3]))
        commands.append(rng.choice([
            ["SET", key, str(rng.randint(0, 9))], ["SET", key, "v", "EX", "1000"], ["GET", key],
            ["MOVE", key, db], ["SWAPDB", db, str(rng.choice([0, 1, 2]))], ["SELECT", db],
            ["DBSIZE"], ["TTL", key], ["APPEND", key, "x"], ["DEL", key], ["EXISTS", key],
        ]))
    return commands


@pytest.mark.parametrize("seed", range(4))
def test_move_and_swapdb_match_redis(seed: int, dtm_server, redis_server: int) -> None:
    commands = _db_commands(seed)
    ours, theirs = dtm_server.client(), redis.Redis(port=redis_server)
    assert replies_of(ours, commands) == replies_of(theirs, commands)
    ours.close()
    theirs.close()


@pytest.mark.parametrize(
    "command",
    [
        ["MOVE", "k", "0"], ["MOVE", "k", "x"], ["MOVE", "k", "16"], ["MOVE", "k", "-1"],
        ["MOVE", "k", "99999999999999999999"], ["MOVE", "k"], ["MOVE", "nokey", "1"],
        ["SWAPDB", "0", "1", "2"], ["SWAPDB", "a", "1"], ["SWAPDB", "1", "x"], ["SWAPDB", "0", "16"],
        ["SWAPDB", "-1", "0"], ["SWAPDB", "3000000000", "0"], ["SWAPDB", "0", "0"],
    ],
)
def test_move_and_swapdb_errors_match_redis(command: list[str], dtm_server, redis_server: int) -> None:
    ours, theirs = dtm_server.client(), redis.Redis(port=redis_server)
    for client in (ours, theirs):
        client.flushall()
        client.set("k", "1")
    assert replies_of(ours, [command]) == replies_of(theirs, [command])
    ours.close()
    theirs.close()


@pytest.mark.parametrize("where", ["neither", "watched db", "other db", "both"])
def test_swapdb_breaks_watches_as_redis(where: str, dtm_server, redis_server: int) -> None:
    outcomes: list[Any] = []
    for port in (dtm_server.port, redis_server):
        setter = redis.Redis(port=port)
        setter.flushall()
        if where in ("watched db", "both"):
            setter.set("x", "0")
        if where in ("other db", "both"):
            redis.Redis(port=port, db=1).set("x", "1")
        pipe = redis.Redis(port=port).pipeline()
        pipe.watch("x")
        setter.swapdb(0, 1)
        pipe.multi()
        pipe.get("x")
        try:
            outcomes.append(pipe.execute())
        except redis.WatchError:
            outcomes.append("broken")
        assert redis.Redis(port=port).dbsize() == (1 if where in ("other db", "both") else 0)
    assert outcomes[0] == outcomes[1]
    assert outcomes[0] == ([None] if where == "neither" else "broken")


def test_move_and_swapdb_inside_multi(r: redis.Redis) -> None:
    r.set("k", "v", ex=100)
    pipe = r.pipeline(transaction=True)
    pipe.move("k", 3)
    pipe.swapdb(3, 4)
    pipe.execute_command("SELECT", 4)
    pipe.get("k")
    assert pipe.execute()[:2] == [True, True]
    four = redis.Redis(port=r.connection_pool.connection_kwargs["port"], db=4)
    assert four.get("k") == b"v"
    assert 0 < four.ttl("k") <= 100
    assert redis.Redis(port=four.connection_pool.connection_kwargs["port"]).dbsize() == 0


def test_move_and_swapdb_survive_a_binlog_replay(tmp_path) -> None:
    from conftest import DtmProcess

    server = DtmProcess("--mode", "binlog", "--buckets", "4", tmp=tmp_path)
    client = server.client()
    client.set("a", "1")
    client.set("b", "2")
    client.move("a", 2)
    client.swapdb(0, 2)  # db0: a, db2: b
    client.append("a", "x")
    server.proc.kill()  # no final save: the log is all there is
    server.proc.wait()
    server.log.close()
    again = DtmProcess("--mode", "binlog", "--buckets", "4", tmp=tmp_path)
    try:
        client = again.client()
        assert client.get("a") == b"1x"
        assert redis.Redis(port=again.port, db=2).get("b") == b"2"
        assert client.dbsize() == 1
    finally:
        again.stop()


def test_swapdb_moves_whole_shards(r: redis.Redis) -> None:
    r.mset({f"k{i}": i for i in range(50)})
    r.swapdb(0, 7)
    assert r.dbsize() == 0
    seven = redis.Redis(port=r.connection_pool.connection_kwargs["port"], db=7)
    assert seven.dbsize() == 50
    assert sorted(seven.keys("k1*")) == sorted([b"k1", *[b"k1%d" % i for i in range(10)]])
    r.swapdb(7, 0)
    assert r.dbsize() == 50


def test_bucket_swap_keeps_slot_routing() -> None:
    bucket = Bucket(0, range(0, 16384), 4)
    bucket.shard(0).slot_of(b"x").store(b"x", b"1")
    bucket.swap_shards(0, 1)
    assert bucket.shard(1).slot_of(b"x").lookup(b"x") == b"1"
    assert bucket.shard(0).keys == 0
    assert bucket.shard(1).slot_of(b"x").number == key_slot(b"x")
