"""One front on the redis engine (8 spawned shards), used as a user would: every type,
scripts and functions, atomicity across buckets under concurrent clients, WATCH, MULTI/EXEC
errors, blocking commands, pub/sub, whole-keyspace commands, wide integers, redis-cli,
and the start-up errors."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
import trio
from conftest import ROOT, DtmProcess
from helpers import RawClient, replies_of
from test_conformance import NIL_ARRAY, NIL_BULK, Error, Status, Wire

from bench.processes import free_port
from dtm.slots import key_slot, slot_owners

BUCKETS = 8


def bucket_of(key: str) -> int:
    return slot_owners(BUCKETS)[key_slot(key.encode())]


def spread(prefix: str, count: int = BUCKETS) -> list[str]:
    """count keys named prefix<n>, each on a bucket none of the others is on."""
    keys: list[str] = []
    taken: set[int] = set()
    n = 0
    while len(keys) < count:
        key = f"{prefix}{n}"
        if bucket_of(key) not in taken:
            taken.add(bucket_of(key))
            keys.append(key)
        n += 1
    return keys


def same_bucket(key: str, prefix: str) -> str:
    """A key named prefix<n> on key's bucket (not key itself)."""
    n = 0
    while bucket_of(f"{prefix}{n}") != bucket_of(key) or f"{prefix}{n}" == key:
        n += 1
    return f"{prefix}{n}"


def concurrently(port: int, jobs: list[Callable[[redis.Redis], None]], timeout: float = 30) -> None:
    """Each job on its own thread with its own client; the first failure is raised."""
    errors: list[BaseException] = []

    def run(job: Callable[[redis.Redis], None]) -> None:
        client = redis.Redis(port=port, protocol=2)
        try:
            job(client)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            errors.append(exc)
        finally:
            client.close()

    threads = [threading.Thread(target=run, args=(job,), daemon=True) for job in jobs]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    assert not any(thread.is_alive() for thread in threads), "a client got stuck"
    if errors:
        raise errors[0]


def test_spread_keys_are_on_distinct_buckets() -> None:
    assert len({bucket_of(key) for key in spread("x")}) == BUCKETS


# --------------------------------------------------------------------------- types


def test_every_type_round_trips(rr: redis.Redis) -> None:
    rr.set("str", "v", ex=1000)
    assert rr.get("str") == b"v" and 0 < rr.ttl("str") <= 1000
    rr.hset("hash", mapping={"a": "1", "b": "2"})
    assert rr.hgetall("hash") == {b"a": b"1", b"b": b"2"} and rr.hincrby("hash", "a", 5) == 6
    rr.rpush("list", "x", "y", "z")
    assert rr.lrange("list", 0, -1) == [b"x", b"y", b"z"] and rr.lpop("list") == b"x"
    rr.sadd("set", "p", "q")
    assert rr.smembers("set") == {b"p", b"q"} and rr.sismember("set", "p")
    rr.zadd("zset", {"m": 1.5, "n": 3})
    assert rr.zrange("zset", 0, -1, withscores=True) == [(b"m", 1.5), (b"n", 3.0)]
    assert rr.xadd("stream", {"f": "v"}, id="1-1") == b"1-1"
    assert rr.xrange("stream") == [(b"1-1", {b"f": b"v"})]
    rr.setbit("bits", 7, 1)
    assert rr.get("bits") == b"\x01" and rr.bitcount("bits") == 1
    rr.pfadd("hll", "a", "b", "c")
    assert rr.pfcount("hll") == 3
    rr.geoadd("geo", (13.361389, 38.115556, "Palermo"))
    rr.geoadd("geo", (15.087269, 37.502669, "Catania"))
    assert round(rr.geodist("geo", "Palermo", "Catania", unit="km"), 3) == 166.274
    types = {key: rr.type(key) for key in
             ("str", "hash", "list", "set", "zset", "stream", "bits", "hll", "geo")}
    assert types == {"str": b"string", "hash": b"hash", "list": b"list", "set": b"set",
                     "zset": b"zset", "stream": b"stream", "bits": b"string",
                     "hll": b"string", "geo": b"zset"}
    assert rr.object("encoding", "hash") == b"listpack" and rr.object("encoding", "set") == b"hashtable"
    assert rr.dbsize() == 9


def test_dump_restore_between_buckets_keeps_value_and_ttl(rr: redis.Redis) -> None:
    source, target, copied, renamed = spread("dump", 4)
    rr.rpush(source, "a", "b")
    rr.pexpire(source, 100_000)
    payload = rr.dump(source)
    rr.restore(target, rr.pttl(source), payload)
    assert rr.lrange(target, 0, -1) == [b"a", b"b"] and 0 < rr.pttl(target) <= 100_000
    # COPY and RENAME across buckets carry the TTL too.
    assert rr.copy(target, copied)
    rr.rename(target, renamed)
    assert rr.exists(target) == 0
    for key in (copied, renamed):
        assert rr.lrange(key, 0, -1) == [b"a", b"b"] and 0 < rr.pttl(key) <= 100_000


# --------------------------------------------------------------------------- scripts


def test_eval_across_buckets_is_one_step(rr: redis.Redis) -> None:
    a, b = spread("ev", 2)
    script = "redis.call('SET', KEYS[1], ARGV[1]); redis.call('SET', KEYS[2], ARGV[1]); " \
             "return {redis.call('GET', KEYS[1]), redis.call('EXISTS', KEYS[2])}"
    assert rr.eval(script, 2, a, b, "v") == [b"v", 1]
    assert rr.mget(a, b) == [b"v", b"v"]


def test_script_load_then_evalsha_on_every_shard(rr: redis.Redis) -> None:
    sha = rr.script_load("return redis.call('INCRBY', KEYS[1], ARGV[1])")
    keys = spread("sha")
    for key in keys:
        assert rr.evalsha(sha, 1, key, 5) == 5
    assert rr.script_exists(sha) == [True]
    # Two keys of different shards in one EVALSHA.
    two = rr.script_load("return redis.call('INCR', KEYS[1]) + redis.call('INCR', KEYS[2])")
    assert rr.evalsha(two, 2, keys[0], keys[1]) == 12


def test_function_load_then_fcall_on_any_key(rr: redis.Redis) -> None:
    library = ("#!lua name=t1lib\n"
               "redis.register_function('t1_set', function(keys, args) "
               "return redis.call('SET', keys[1], args[1]) end)\n"
               "redis.register_function('t1_move', function(keys, args) "
               "local v = redis.call('GET', keys[1]); redis.call('DEL', keys[1]); "
               "return redis.call('SET', keys[2], v) end)")
    assert rr.function_load(library, replace=True) == b"t1lib"
    keys = spread("fc")
    for key in keys:
        assert rr.fcall("t1_set", 1, key, key) == b"OK"
    assert rr.mget(keys) == [key.encode() for key in keys]
    assert rr.fcall("t1_move", 2, keys[0], keys[1]) == b"OK"
    assert rr.mget(keys[0], keys[1]) == [None, keys[0].encode()]


# --------------------------------------------------------------------------- atomicity


def test_mset_across_buckets_is_never_seen_half_applied(dtm_redis: DtmProcess, rr: redis.Redis) -> None:
    keys = spread("ms")
    rr.mset({key: "0" for key in keys})
    done = threading.Event()

    def writer(client: redis.Redis) -> None:
        try:
            for round_ in range(1, 100):
                client.mset({key: str(round_) for key in keys})
        finally:
            done.set()

    def reader(client: redis.Redis) -> None:
        reads = 0
        while not done.is_set() or reads < 10:
            values = client.mget(keys)
            assert len(set(values)) == 1, f"MGET saw a half-applied MSET: {values}"
            reads += 1

    concurrently(dtm_redis.port, [writer, reader, reader])
    assert rr.mget(keys) == [b"99"] * BUCKETS


def test_rename_across_buckets_keeps_exactly_one_key(dtm_redis: DtmProcess, rr: redis.Redis) -> None:
    a, b = spread("rn", 2)
    rr.set(a, "token")
    done = threading.Event()

    def mover(source: str, target: str) -> Callable[[redis.Redis], None]:
        def job(client: redis.Redis) -> None:
            for _ in range(80):
                try:
                    client.rename(source, target)
                except redis.ResponseError as exc:
                    assert "no such key" in str(exc)
        return job

    def checker(client: redis.Redis) -> None:
        while not done.is_set():
            # EXISTS of keys on two buckets is one atomic step: the token is in one place.
            assert client.exists(a, b) == 1

    def movers(client: redis.Redis) -> None:
        try:
            concurrently(dtm_redis.port, [mover(a, b), mover(b, a)])
        finally:
            done.set()

    concurrently(dtm_redis.port, [movers, checker])
    assert rr.exists(a, b) == 1 and rr.get(a if rr.exists(a) else b) == b"token"


def test_smove_and_lmove_across_buckets_conserve_elements(dtm_redis: DtmProcess, rr: redis.Redis) -> None:
    sets, lists = spread("sm", 3), spread("lm", 3)
    rr.sadd(sets[0], *range(30))
    rr.rpush(lists[0], *range(30))
    done = threading.Event()

    def shuffler(seed: int) -> Callable[[redis.Redis], None]:
        def job(client: redis.Redis) -> None:
            for step in range(60):
                source, target = sets[(seed + step) % 3], sets[(seed + step + 1) % 3]
                client.smove(source, target, str((seed * 7 + step) % 30))
                source, target = lists[(seed + step) % 3], lists[(seed + step + 2) % 3]
                client.lmove(source, target, "LEFT", "RIGHT")
        return job

    def checker(client: redis.Redis) -> None:
        while not done.is_set():
            pipe = client.pipeline(transaction=True)  # MULTI/EXEC over three buckets
            for key in sets:
                pipe.scard(key)
            for key in lists:
                pipe.llen(key)
            counts = pipe.execute()
            assert sum(counts[:3]) == 30 and sum(counts[3:]) == 30, counts

    def shufflers(client: redis.Redis) -> None:
        try:
            concurrently(dtm_redis.port, [shuffler(0), shuffler(1), shuffler(2)])
        finally:
            done.set()

    concurrently(dtm_redis.port, [shufflers, checker])
    assert set().union(*(rr.smembers(key) for key in sets)) == {str(i).encode() for i in range(30)}
    assert sorted(int(v) for key in lists for v in rr.lrange(key, 0, -1)) == list(range(30))


ACCOUNTS = 4
BALANCE = 100


def bank_keys(rr: redis.Redis) -> list[str]:
    accounts = spread("acct", ACCOUNTS)
    rr.mset({key: BALANCE for key in accounts})
    return accounts


def audit(accounts: list[str], done: threading.Event) -> Callable[[redis.Redis], None]:
    def job(client: redis.Redis) -> None:
        while not done.is_set():
            assert sum(int(v) for v in client.mget(accounts)) == ACCOUNTS * BALANCE
    return job


def test_bank_transfers_with_watch_multi_exec_keep_the_sum(dtm_redis: DtmProcess, rr: redis.Redis) -> None:
    accounts = bank_keys(rr)
    done = threading.Event()
    committed = [0]

    def teller(seed: int) -> Callable[[redis.Redis], None]:
        def job(client: redis.Redis) -> None:
            for step in range(40):
                source = accounts[(seed + step) % ACCOUNTS]
                target = accounts[(seed + 2 * step + 1) % ACCOUNTS]
                if source == target:
                    continue

                def transfer(pipe: Any, source: str = source, target: str = target,
                             step: int = step) -> None:
                    balance = int(pipe.get(source))
                    amount = min(balance, 1 + (step % 7))
                    pipe.multi()
                    pipe.decrby(source, amount)
                    pipe.incrby(target, amount)

                client.transaction(transfer, source, target)
                committed[0] += 1
        return job

    tell_and_audit(dtm_redis.port, rr, accounts, teller, done)
    assert committed[0] > 0


def tell_and_audit(port: int, rr: redis.Redis, accounts: list[str],
                   teller: Callable[[int], Callable[[redis.Redis], None]],
                   done: threading.Event) -> None:
    """Three tellers at once while an auditor checks the sum; then the final balances
    keep the sum and none is negative."""
    def tellers(client: redis.Redis) -> None:
        try:
            concurrently(port, [teller(0), teller(1), teller(2)])
        finally:
            done.set()

    concurrently(port, [tellers, audit(accounts, done)])
    values = [int(v) for v in rr.mget(accounts)]
    assert sum(values) == ACCOUNTS * BALANCE and min(values) >= 0


def test_bank_transfers_with_eval_keep_the_sum(dtm_redis: DtmProcess, rr: redis.Redis) -> None:
    accounts = bank_keys(rr)
    script = """
    local balance = tonumber(redis.call('GET', KEYS[1]))
    local amount = math.min(balance, tonumber(ARGV[1]))
    redis.call('DECRBY', KEYS[1], amount)
    redis.call('INCRBY', KEYS[2], amount)
    return amount"""
    done = threading.Event()

    def teller(seed: int) -> Callable[[redis.Redis], None]:
        def job(client: redis.Redis) -> None:
            transfer = client.register_script(script)  # EVALSHA, EVAL when not loaded
            for step in range(40):
                source = accounts[(seed + step) % ACCOUNTS]
                target = accounts[(seed + step + 1 + seed % 2) % ACCOUNTS]
                transfer(keys=[source, target], args=[1 + step % 9])
        return job

    tell_and_audit(dtm_redis.port, rr, accounts, teller, done)


# --------------------------------------------------------------------------- WATCH


@pytest.mark.parametrize("where", ["same bucket", "other bucket"])
def test_watch_is_broken_by_another_clients_write(where: str, dtm_redis: DtmProcess,
                                                  rr: redis.Redis) -> None:
    first, other = spread("w", 2)
    written = same_bucket(first, "w") if where == "same bucket" else other
    rr.mset({first: "1", written: "1"})
    client = dtm_redis.client(protocol=2)
    with client.pipeline() as pipe:
        pipe.watch(first, written)
        rr.set(written, "2")  # another client
        pipe.multi()
        pipe.set(first, "mine")
        with pytest.raises(redis.WatchError):
            pipe.execute()
    assert rr.get(first) == b"1"
    client.close()


def test_exec_after_a_broken_watch_replies_a_null_array(dtm_redis: DtmProcess, rr: redis.Redis) -> None:
    a, b = spread("wn", 2)
    wire = Wire(dtm_redis.port)
    try:
        assert wire.call(["WATCH", a]) is not None
        rr.set(a, "other")
        for command in (["MULTI"], ["SET", a, "mine"], ["SET", b, "mine"]):
            wire.call(command)
        assert wire.call(["EXEC"]) == NIL_ARRAY
    finally:
        wire.close()
    assert rr.mget(a, b) == [b"other", None]


def test_watch_is_broken_by_expiry(dtm_redis: DtmProcess, rr: redis.Redis) -> None:
    key, other = spread("we", 2)
    rr.set(key, "v", px=50)
    client = dtm_redis.client(protocol=2)
    with client.pipeline() as pipe:
        pipe.watch(key)
        deadline = time.monotonic() + 5
        while rr.exists(key) and time.monotonic() < deadline:
            pass  # until the shard has expired it
        assert not rr.exists(key)
        pipe.multi()
        pipe.set(other, "x")
        with pytest.raises(redis.WatchError):
            pipe.execute()
    assert rr.get(other) is None
    client.close()


def test_own_queued_writes_do_not_break_watch(dtm_redis: DtmProcess, rr: redis.Redis) -> None:
    a, b = spread("wo", 2)
    client = dtm_redis.client(protocol=2)
    with client.pipeline() as pipe:
        pipe.watch(a, b)
        pipe.multi()
        pipe.set(a, "1")
        pipe.incr(b)
        pipe.set(a, "2")
        assert pipe.execute() == [True, 1, True]
    assert rr.mget(a, b) == [b"2", b"1"]
    client.close()


@pytest.mark.parametrize("forget", ["UNWATCH", "DISCARD"])
def test_unwatch_and_discard_forget_the_watch(forget: str, dtm_redis: DtmProcess,
                                              rr: redis.Redis) -> None:
    a, b = spread("wu", 2)
    rr.set(a, "1")
    prelude = [["WATCH", a], ["UNWATCH"]] if forget == "UNWATCH" else [["WATCH", a], ["MULTI"], ["DISCARD"]]
    wire = Wire(dtm_redis.port)
    try:
        for command in prelude:
            wire.call(command)
        rr.set(a, "2")
        for command in (["MULTI"], ["SET", a, "3"], ["SET", b, "3"]):
            wire.call(command)
        assert wire.call(["EXEC"]) == [Status(b"OK"), Status(b"OK")]
    finally:
        wire.close()
    assert rr.mget(a, b) == [b"3", b"3"]


# --------------------------------------------------------------------------- MULTI/EXEC errors

a_key, b_key, c_key = spread("tx", 3)
TRANSACTIONS = {
    "unknown command aborts": [["MULTI"], ["SET", a_key, "1"], ["NOSUCH", a_key], ["SET", b_key, "1"],
                               ["EXEC"], ["MGET", a_key, b_key]],
    "wrong arity aborts": [["MULTI"], ["SET", a_key, "1"], ["SET", b_key], ["EXEC"], ["EXISTS", a_key]],
    "runtime errors per command": [
        ["SET", a_key, "x"], ["MULTI"], ["INCR", a_key], ["LPUSH", a_key, "1"], ["SET", b_key, "2"],
        ["INCRBY", c_key, "5"], ["HSET", b_key, "f"], ["EXEC"], ["MGET", a_key, b_key, c_key]],
    "nesting and strays": [["EXEC"], ["DISCARD"], ["MULTI"], ["MULTI"], ["WATCH", a_key],
                           ["SET", a_key, "1"], ["EXEC"], ["GET", a_key]],
    "exec with arguments": [["MULTI"], ["SET", a_key, "1"], ["EXEC", "now"], ["GET", a_key]],
    "empty transaction": [["MULTI"], ["EXEC"]],
    "across buckets": [["MULTI"], ["SET", a_key, "1"], ["RPUSH", b_key, "x"], ["LPOP", a_key],
                       ["MSET", a_key, "2", c_key, "3"], ["EXEC"], ["MGET", a_key, b_key, c_key]],
}


@pytest.mark.parametrize("name", list(TRANSACTIONS))
def test_multi_exec_errors_as_redis(name: str, rr: redis.Redis, redis_server: int) -> None:
    commands = TRANSACTIONS[name]
    reference = redis.Redis(port=redis_server, protocol=2)
    reference.flushall()
    assert replies_of(rr, commands) == replies_of(reference, commands)
    reference.close()


# --------------------------------------------------------------------------- blocking


async def still_waiting(client: RawClient, seconds: float = 0.2) -> bool:
    """True if no reply came within seconds (the command is parked)."""
    with trio.move_on_after(seconds):
        await client.reply()
        return False
    return True


async def two_clients(port: int) -> tuple[RawClient, RawClient]:
    return await RawClient.connect(port), await RawClient.connect(port)


def test_blpop_is_woken_by_rpush_from_another_client(dtm_redis: DtmProcess, rr: redis.Redis) -> None:
    async def main() -> None:
        waiter, pusher = await two_clients(dtm_redis.port)
        with trio.fail_after(10):
            await waiter.send("BLPOP", "bq", "0")
            assert await still_waiting(waiter)
            assert await pusher.call("RPUSH", "bq", "job") == 1
            assert await waiter.reply() == [b"bq", b"job"]
        await waiter.aclose()
        await pusher.aclose()

    trio.run(main)
    assert rr.exists("bq") == 0


def test_blpop_over_keys_of_several_buckets(dtm_redis: DtmProcess, rr: redis.Redis) -> None:
    keys = spread("bl", 3)

    async def main() -> None:
        waiter, pusher = await two_clients(dtm_redis.port)
        with trio.fail_after(10):
            await waiter.send("BLPOP", *keys, "0")
            assert await still_waiting(waiter)
            await pusher.call("RPUSH", keys[2], "late")
            assert await waiter.reply() == [keys[2].encode(), b"late"]
            # Data already there: the first non-empty key in argument order.
            await pusher.call("RPUSH", keys[1], "one")
            await pusher.call("RPUSH", keys[2], "two")
            assert await waiter.call("BLPOP", *keys, "0") == [keys[1].encode(), b"one"]
        await waiter.aclose()
        await pusher.aclose()

    trio.run(main)


def test_blmove_across_buckets(dtm_redis: DtmProcess, rr: redis.Redis) -> None:
    source, target = spread("bm", 2)
    rr.rpush(target, "old")

    async def main() -> None:
        waiter, pusher = await two_clients(dtm_redis.port)
        with trio.fail_after(10):
            await waiter.send("BLMOVE", source, target, "LEFT", "RIGHT", "0")
            assert await still_waiting(waiter)
            await pusher.call("RPUSH", source, "item")
            assert await waiter.reply() == b"item"
        await waiter.aclose()
        await pusher.aclose()

    trio.run(main)
    assert rr.lrange(target, 0, -1) == [b"old", b"item"] and rr.exists(source) == 0


def test_bzpopmin_is_woken_by_zadd(dtm_redis: DtmProcess, rr: redis.Redis) -> None:
    async def main() -> None:
        waiter, pusher = await two_clients(dtm_redis.port)
        with trio.fail_after(10):
            await waiter.send("BZPOPMIN", "bz1", "bz2", "0")
            assert await still_waiting(waiter)
            await pusher.call("ZADD", "bz2", "2", "b", "1", "a")
            assert await waiter.reply() == [b"bz2", b"a", b"1"]
        await waiter.aclose()
        await pusher.aclose()

    trio.run(main)
    assert rr.zrange("bz2", 0, -1) == [b"b"]


def test_xread_block_with_dollar_gets_only_new_entries(dtm_redis: DtmProcess, rr: redis.Redis) -> None:
    rr.xadd("xs", {"f": "before"}, id="1-1")

    async def main() -> None:
        waiter, pusher = await two_clients(dtm_redis.port)
        with trio.fail_after(10):
            await waiter.send("XREAD", "BLOCK", "0", "STREAMS", "xs", "$")
            assert await still_waiting(waiter)
            await pusher.call("XADD", "xs", "2-1", "f", "after")
            assert await waiter.reply() == [[b"xs", [[b"2-1", [b"f", b"after"]]]]]
        await waiter.aclose()
        await pusher.aclose()

    trio.run(main)


@pytest.mark.parametrize("command, nothing", [
    (["BLPOP", "tq1", "tq2", "0.1"], NIL_ARRAY),
    (["BRPOP", "tq1", "0.1"], NIL_ARRAY),
    (["BLMOVE", "tq1", "tq2", "LEFT", "LEFT", "0.1"], NIL_BULK),
    (["BZPOPMIN", "tq1", "0.1"], NIL_ARRAY),
    (["BLMPOP", "0.1", "2", "tq1", "tq2", "LEFT"], NIL_ARRAY),
    (["XREAD", "BLOCK", "100", "STREAMS", "tq1", "$"], NIL_ARRAY),
])
def test_blocking_timeouts_reply_nil_as_redis(command: list[str], nothing: str,
                                              dtm_redis: DtmProcess, rr: redis.Redis) -> None:
    wire = Wire(dtm_redis.port)
    try:
        began = time.monotonic()
        assert wire.call(command) == nothing
        assert time.monotonic() - began < 3
    finally:
        wire.close()


def test_a_waiting_client_does_not_stall_others(dtm_redis: DtmProcess, rr: redis.Redis) -> None:
    async def main() -> None:
        waiter, other = await two_clients(dtm_redis.port)
        await waiter.send("BLPOP", "stall", "0")
        for _ in range(20):
            with trio.fail_after(1):
                assert await other.call("PING") == b"PONG"
        await other.call("RPUSH", "stall", "x")
        with trio.fail_after(5):
            assert await waiter.reply() == [b"stall", b"x"]
        await waiter.aclose()
        await other.aclose()

    trio.run(main)


# --------------------------------------------------------------------------- pub/sub


def test_subscribe_psubscribe_publish(dtm_redis: DtmProcess, rr: redis.Redis) -> None:
    client = dtm_redis.client(protocol=2)
    pubsub = client.pubsub()
    pubsub.subscribe("t1:news")
    pubsub.psubscribe("t1:*")
    deadline = time.monotonic() + 5

    def messages(count: int) -> list[tuple[str, bytes, object]]:
        got: list[tuple[str, bytes, object]] = []
        while len(got) < count and time.monotonic() < deadline:
            message = pubsub.get_message(timeout=0.5)
            if message is not None:
                got.append((message["type"], message["channel"], message["data"]))
        return got

    # Both confirmed before anything is published.
    assert messages(2) == [("subscribe", b"t1:news", 1), ("psubscribe", b"t1:*", 2)]
    assert rr.publish("t1:news", "hello") == 2
    assert rr.publish("t1:other", "hi") == 1
    assert sorted(messages(3)) == [("message", b"t1:news", b"hello"),
                                   ("pmessage", b"t1:news", b"hello"),
                                   ("pmessage", b"t1:other", b"hi")]
    pubsub.close()
    client.close()


def test_unsubscribe_returns_to_normal_mode(dtm_redis: DtmProcess, rr: redis.Redis) -> None:
    wire = Wire(dtm_redis.port)
    try:
        assert wire.call(["SUBSCRIBE", "c1", "c2"]) == [b"subscribe", b"c1", 1]
        assert wire._read() == [b"subscribe", b"c2", 2]
        assert wire.call(["GET", "k"]) == Error(
            b"ERR Can't execute 'get': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET "
            b"are allowed in this context")
        assert wire.call(["UNSUBSCRIBE"]) in ([b"unsubscribe", b"c1", 1], [b"unsubscribe", b"c2", 1])
        assert wire._read()[2] == 0
        assert wire.call(["SET", "k", "v"]) == Status(b"OK")
        assert wire.call(["GET", "k"]) == b"v"
    finally:
        wire.close()


# --------------------------------------------------------------------------- whole keyspace


def test_keys_dbsize_randomkey_over_every_bucket(rr: redis.Redis) -> None:
    assert rr.randomkey() is None and rr.dbsize() == 0 and rr.keys("*") == []
    keys = [f"fan{i}" for i in range(100)]
    rr.mset({key: "v" for key in keys})
    assert len({bucket_of(key) for key in keys}) == BUCKETS
    assert sorted(rr.keys("*")) == sorted(key.encode() for key in keys)
    assert sorted(rr.keys("fan1?")) == sorted(f"fan1{i}".encode() for i in range(10))
    assert rr.dbsize() == 100
    assert rr.randomkey().decode() in keys


def test_scan_returns_every_key_exactly_once(rr: redis.Redis) -> None:
    keys = [f"sc{i}" for i in range(300)]
    rr.mset({key: "v" for key in keys})
    rr.rpush("sclist", "x")
    for key in ("sclist", "other"):
        rr.sadd(f"{key}set", "m")

    def scan(**options: Any) -> list[bytes]:
        cursor, seen = 0, []
        while True:
            cursor, batch = rr.scan(cursor, **options)
            seen += batch
            if cursor == 0:
                return seen

    everything = scan(count=7)
    assert len(everything) == len(set(everything)) == 303
    matched = scan(match="sc1*", count=50)
    assert sorted(matched) == sorted(k.encode() for k in keys + ["sclist", "sclistset"] if k.startswith("sc1"))
    assert sorted(scan(_type="set")) == [b"otherset", b"sclistset"]
    assert scan(_type="list", match="sc*") == [b"sclist"]


def test_flushdb_and_flushall_and_info_keyspace(dtm_redis: DtmProcess, rr: redis.Redis) -> None:
    keys = spread("fl")
    rr.mset({key: "v" for key in keys})
    rr.expire(keys[0], 1000)
    other = dtm_redis.client(db=3, protocol=2)
    other.mset({key: "v" for key in keys[:3]})
    keyspace = rr.info("keyspace")
    assert keyspace["db0"]["keys"] == BUCKETS and keyspace["db0"]["expires"] == 1
    assert keyspace["db3"]["keys"] == 3
    assert other.flushdb() is True
    assert other.dbsize() == 0 and rr.dbsize() == BUCKETS
    other.set("again", "v")
    assert rr.flushall() is True
    assert rr.dbsize() == 0 and other.dbsize() == 0
    assert "db0" not in rr.info("keyspace")
    other.close()


# --------------------------------------------------------------------------- numbers


def test_integer_replies_beyond_2_pow_53_are_exact(rr: redis.Redis) -> None:
    big = 2**53
    rr.set("big", big)
    assert rr.incrby("big", 1) == 9007199254740993
    assert rr.incr("big") == 9007199254740994
    assert rr.hincrby("bigh", "f", 9007199254740993) == 9007199254740993
    # Inside a transaction across buckets too (the shard's own EXEC reply).
    a, b = spread("bg", 2)
    rr.set(a, big)
    pipe = rr.pipeline(transaction=True)
    pipe.incrby(a, 1).incrby(b, 9007199254740995)
    assert pipe.execute() == [9007199254740993, 9007199254740995]


# --------------------------------------------------------------------------- clients, start-up


def test_redis_cli_works(dtm_redis: DtmProcess, rr: redis.Redis) -> None:
    cli = shutil.which("redis-cli")
    if cli is None:
        pytest.skip("redis-cli not installed")

    def run(*args: str) -> str:
        done = subprocess.run([cli, "-p", str(dtm_redis.port), *args], capture_output=True,
                              text=True, timeout=10, check=True)
        return done.stdout.strip()

    assert run("set", "cli", "b") == "OK"
    assert run("get", "cli") == "b"
    assert run("rpush", "clil", "x", "y") == "2"
    assert run("lrange", "clil", "0", "-1") == "x\ny"
    assert run("dbsize") == "2"


def start_error(*args: str, directory: Path) -> str:
    """What `dtm serve --engine redis` prints when it refuses to start."""
    done = subprocess.run(
        [sys.executable, "-m", "dtm.cli", "serve", "--engine", "redis", "--port", str(free_port()),
         "--dir", str(directory), *args],
        check=False, capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert done.returncode != 0
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return lines[0]


def test_start_refuses_a_memory_engine_directory() -> None:
    directory = Path(tempfile.mkdtemp(prefix="dtm-re-"))
    try:
        (directory / "dtm.format").write_text("1\n")
        line = start_error(directory=directory)
        assert "memory engine" in line and str(directory) in line
        assert not any(directory.glob("shard-*")), "no shard was started"
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_start_refuses_an_unreachable_shard() -> None:
    directory = Path(tempfile.mkdtemp(prefix="dtm-re-"))
    port = free_port()  # nothing listens there
    try:
        line = start_error("--shards", f"127.0.0.1:{port}", directory=directory)
        assert f"127.0.0.1:{port}" in line and "connect" in line
    finally:
        shutil.rmtree(directory, ignore_errors=True)


# ------------------------------------------- found by Redis's own TCL suite (external mode)


def test_info_counts_clients_waiting_in_blocking_commands(dtm_redis: DtmProcess, rr: redis.Redis) -> None:
    """INFO's blocked_clients counts the clients parked in BLPOP & co. (the TCL suite's
    wait_for_blocked_client polls it), and drops back once they are served."""
    def blocked() -> int:
        return int(rr.info("clients")["blocked_clients"])

    async def main() -> None:
        waiter, pusher = await two_clients(dtm_redis.port)
        with trio.fail_after(10):
            await waiter.send("BRPOP", "tclb", "0")
            while blocked() != 1:
                await trio.sleep(0.01)
            await pusher.call("RPUSH", "tclb", "x")
            assert await waiter.reply() == [b"tclb", b"x"]
            assert blocked() == 0
        await waiter.aclose()
        await pusher.aclose()

    assert blocked() == 0
    trio.run(main)


def test_config_set_of_a_front_setting_to_its_own_value_is_ok(rr: redis.Redis) -> None:
    """`CONFIG SET save ""` (every TCL unit's start_server override) changes nothing in
    mode none, so it answers OK as Redis does; another value is still refused."""
    assert rr.config_get("save") == {"save": ""}
    assert rr.config_set("save", "") is True
    assert rr.execute_command("CONFIG", "SET", "save", "", "list-max-listpack-size", "4") == b"OK"
    assert rr.config_get("list-max-listpack-size") == {"list-max-listpack-size": "4"}
    with pytest.raises(redis.ResponseError):
        rr.config_set("save", "900 1")


def test_a_waited_key_turned_another_type_keeps_the_client_waiting(dtm_redis: DtmProcess,
                                                                   rr: redis.Redis) -> None:
    """As Redis: a blocked BLPOP is not served WRONGTYPE when its key briefly becomes a
    list and then a string (MULTI LPUSH, DEL, SET); it waits for a real list. A blocked
    BLMOVE whose destination is of the wrong type does get WRONGTYPE once its source has
    an element."""
    async def main() -> None:
        waiter, other = await two_clients(dtm_redis.port)
        with trio.fail_after(10):
            await waiter.send("BLPOP", "tcll", "0")
            while int(rr.info("clients")["blocked_clients"]) != 1:
                await trio.sleep(0.01)
            for command in (["MULTI"], ["LPUSH", "tcll", "a"], ["DEL", "tcll"], ["SET", "tcll", "foo"]):
                await other.call(*command)
            assert await other.call("EXEC") == [1, 1, b"OK"]
            assert await still_waiting(waiter, 0.3)
            await other.call("DEL", "tcll")
            await other.call("LPUSH", "tcll", "b")
            assert await waiter.reply() == [b"tcll", b"b"]

            source, target = "tclsrc", same_bucket("tclsrc", "tcldst")
            await other.call("SET", target, "nolist")
            await waiter.send("BLMOVE", source, target, "RIGHT", "LEFT", "0")
            assert await still_waiting(waiter)
            await other.call("RPUSH", source, "foo")
            reply = await waiter.reply()
            assert isinstance(reply, Exception) and str(reply).startswith("WRONGTYPE")
            assert await other.call("LRANGE", source, "0", "-1") == [b"foo"]
        await waiter.aclose()
        await other.aclose()

    trio.run(main)


def test_blocked_clients_are_served_in_the_order_they_blocked(dtm_redis: DtmProcess,
                                                              rr: redis.Redis) -> None:
    """As Redis: of the clients waiting on a list (of one front), the one that blocked
    first gets the first element; and a BRPOPLPUSH served first with a destination of
    the wrong type gets WRONGTYPE and leaves the element to the next client."""
    async def main() -> None:
        with trio.fail_after(20):
            waiters = [await RawClient.connect(dtm_redis.port) for _ in range(5)]
            pusher = await RawClient.connect(dtm_redis.port)
            for count, waiter in enumerate(waiters, 1):
                await waiter.send("BLPOP", "tclfifo", "0")
                while int(rr.info("clients")["blocked_clients"]) != count:
                    await trio.sleep(0.01)
            await pusher.call("RPUSH", "tclfifo", "a", "b", "c", "d", "e")
            assert [await waiter.reply() for waiter in waiters] == [
                [b"tclfifo", item] for item in (b"a", b"b", b"c", b"d", b"e")]

            first, second = waiters[:2]
            target1, target2 = same_bucket("tclfifo", "tclt"), same_bucket("tclfifo", "tclu")
            await pusher.call("SET", target1, "nolist")
            await first.send("BRPOPLPUSH", "tclfifo", target1, "0")
            while int(rr.info("clients")["blocked_clients"]) != 1:
                await trio.sleep(0.01)
            await second.send("BRPOPLPUSH", "tclfifo", target2, "0")
            while int(rr.info("clients")["blocked_clients"]) != 2:
                await trio.sleep(0.01)
            await pusher.call("LPUSH", "tclfifo", "foo")
            reply = await first.reply()
            assert isinstance(reply, Exception) and str(reply).startswith("WRONGTYPE")
            assert await second.reply() == b"foo"
            assert await pusher.call("LRANGE", target2, "0", "-1") == [b"foo"]
            for client in (*waiters, pusher):
                await client.aclose()

    trio.run(main)


@pytest.mark.parametrize("command", [
    ["BZPOPMIN", "tq3", "0.05"],
    ["BLMOVE", "tq3", "tq4", "LEFT", "LEFT", "0.05"],
    ["BLPOP", "tq3", "0.05"],
    ["XREAD", "BLOCK", "50", "STREAMS", "tq3", "$"],
])
def test_blocking_timeouts_reply_resp3_null(command: list[str], dtm_redis: DtmProcess,
                                            rr: redis.Redis) -> None:
    """A RESP3 client's blocking command that times out gets RESP3's null `_` (Redis 7:
    addReplyNullArray / addReplyNull), not RESP2's `*-1` (TCL: BZPOPMIN readraw in RESP3)."""
    async def main() -> None:
        client = await RawClient.connect(dtm_redis.port)
        with trio.fail_after(10):
            await client.call("HELLO", "3")
            await client.stream.send_all(
                b"".join(b"$%d\r\n%s\r\n" % (len(part), part.encode()) for part in command).join(
                    [b"*%d\r\n" % len(command), b""]))
            data = b""
            while not data.endswith(b"\r\n"):
                data += await client.stream.receive_some(100)
            assert data == b"_\r\n"
        await client.aclose()

    trio.run(main)
