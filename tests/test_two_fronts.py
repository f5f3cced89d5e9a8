"""Two dtm fronts (``dtm serve --engine redis --shards …``) over the same four
redis-server shards behave as one Redis: transactions, scripts, multi-key commands,
WATCH, locks, pipelines, pub/sub and blocking commands work across the fronts, and the
invariants that make a bank a bank hold while both fronts write."""

from __future__ import annotations

import random
import shutil
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.engine_procs import (
    TRANSFER_SCRIPT,
    Front,
    RedisShard,
    keys_on_distinct_shards,
    need_redis_server,
    shard_of,
    shards_and_fronts,
)
from tests.helpers import RawClient, encode_command

need_redis_server()

SHARDS = 4
ACCOUNTS = keys_on_distinct_shards("acct:", SHARDS, per_shard=2)
START = 1000


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[list[RedisShard], list[Front]]]:
    root = Path(tempfile.mkdtemp(prefix="dtm-fronts-"))
    try:
        with shards_and_fronts(root, SHARDS, 2, "--lease-ms", "2000") as made:
            yield made
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def fronts(cluster: tuple[list[RedisShard], list[Front]]) -> tuple[Front, Front]:
    shards, (a, b) = cluster
    for shard in shards:
        shard.client().flushdb()  # the user's database 0 only: db 16 keeps dtm's state
    return a, b


async def transfer_watch(client: RawClient, src: str, dst: str, amount: int) -> int:
    """One transfer by WATCH/MULTI/EXEC, retried until EXEC runs; the retries."""
    retries = 0
    while True:
        assert await client.call("WATCH", src, dst) == b"OK"
        have_src = int(await client.call("GET", src))
        have_dst = int(await client.call("GET", dst))
        await client.send_raw(
            encode_command("MULTI") + encode_command("SET", src, have_src - amount)
            + encode_command("SET", dst, have_dst + amount) + encode_command("EXEC"))
        replies = [await client.reply() for _ in range(4)]
        assert replies[:3] == [b"OK", b"QUEUED", b"QUEUED"], replies
        if replies[3] is not None:
            assert replies[3] == [b"OK", b"OK"]
            return retries
        retries += 1


def planned_transfers(seed: int, count: int) -> list[tuple[str, str, int]]:
    rng = random.Random(seed)
    plan = []
    for _ in range(count):
        src, dst = rng.sample(ACCOUNTS, 2)
        plan.append((src, dst, rng.randint(1, 20)))
    return plan


def expected_balances(plans: list[list[tuple[str, str, int]]]) -> dict[str, int]:
    """Every transfer runs exactly once, so the end state is known whatever the order."""
    balances = dict.fromkeys(ACCOUNTS, START)
    for plan in plans:
        for src, dst, amount in plan:
            balances[src] -= amount
            balances[dst] += amount
    return balances


async def test_bank_transfers_through_both_fronts_by_watch_multi_and_eval(
    fronts: tuple[Front, Front],
) -> None:
    a, b = fronts
    a.client().mset(dict.fromkeys(ACCOUNTS, START))
    total = START * len(ACCOUNTS)
    watch_plans = [planned_transfers(seed, 15) for seed in range(4)]
    eval_plans = [planned_transfers(100 + seed, 15) for seed in range(2)]
    snapshots = 0
    done = trio.Event()

    async def watch_worker(front: Front, plan: list[tuple[str, str, int]]) -> None:
        client = await RawClient.connect(front.port)
        for src, dst, amount in plan:
            await transfer_watch(client, src, dst, amount)
        await client.aclose()

    async def eval_worker(front: Front, plan: list[tuple[str, str, int]]) -> None:
        client = await RawClient.connect(front.port)
        for src, dst, amount in plan:
            reply = await client.call("EVAL", TRANSFER_SCRIPT, 2, src, dst, amount)
            assert isinstance(reply, int), reply
        await client.aclose()

    async def snapshot_checker(front: Front) -> None:
        nonlocal snapshots
        client = await RawClient.connect(front.port)
        while not done.is_set():
            values = await client.call("MGET", *ACCOUNTS)
            assert sum(int(v) for v in values) == total, values
            snapshots += 1
        await client.aclose()

    with trio.fail_after(60):
        async with trio.open_nursery() as checkers:
            checkers.start_soon(snapshot_checker, a)
            checkers.start_soon(snapshot_checker, b)
            async with trio.open_nursery() as workers:
                for i, plan in enumerate(watch_plans):
                    workers.start_soon(watch_worker, (a, b)[i % 2], plan)
                for i, plan in enumerate(eval_plans):
                    workers.start_soon(eval_worker, (a, b)[i % 2], plan)
            done.set()
    assert snapshots > 2
    final = dict(zip(ACCOUNTS, map(int, b.client().mget(ACCOUNTS))))
    # Exact balances, not only the sum: a transfer whose writes were dropped (or applied
    # twice) keeps the sum but not these.
    assert final == expected_balances(watch_plans + eval_plans)


async def test_eval_across_buckets_applies_its_writes_for_the_other_front(
    fronts: tuple[Front, Front],
) -> None:
    a, b = fronts
    src, dst = ACCOUNTS[0], ACCOUNTS[2]
    assert shard_of(src, SHARDS) != shard_of(dst, SHARDS)
    a.client().mset({src: 100, dst: 100})
    assert a.client().eval(TRANSFER_SCRIPT, 2, src, dst, 30) == 70
    assert b.client().mget([src, dst]) == [b"70", b"130"]


async def test_smove_and_lmove_across_buckets_conserve_members(
    fronts: tuple[Front, Front],
) -> None:
    a, b = fronts
    sets = keys_on_distinct_shards("set:", SHARDS)
    lists = keys_on_distinct_shards("list:", SHARDS)
    members = [f"m{i}" for i in range(16)]
    a.client().sadd(sets[0], *members)
    a.client().rpush(lists[0], *members)
    done = trio.Event()
    checks = 0

    async def mover(front: Front, seed: int) -> None:
        rng = random.Random(seed)
        client = await RawClient.connect(front.port)
        for _ in range(40):
            src, dst = rng.sample(range(SHARDS), 2)
            moved = await client.call("SMOVE", sets[src], sets[dst], rng.choice(members))
            assert moved in (0, 1)
            await client.call("LMOVE", lists[src], lists[dst], "LEFT", "RIGHT")
        await client.aclose()

    async def checker(front: Front) -> None:
        nonlocal checks
        client = await RawClient.connect(front.port)
        while not done.is_set():
            # One MULTI over every bucket is one consistent snapshot.
            commands = [("SCARD", s) for s in sets] + [("LLEN", k) for k in lists]
            await client.send_raw(b"".join(encode_command(*c) for c in
                                           [("MULTI",), *commands, ("EXEC",)]))
            replies = [await client.reply() for _ in range(len(commands) + 2)]
            counts = replies[-1]
            assert sum(counts[:SHARDS]) == len(members), counts
            assert sum(counts[SHARDS:]) == len(members), counts
            checks += 1
        await client.aclose()

    with trio.fail_after(60):
        async with trio.open_nursery() as outer:
            outer.start_soon(checker, a)
            outer.start_soon(checker, b)
            async with trio.open_nursery() as workers:
                for seed, front in enumerate((a, b, a, b)):
                    workers.start_soon(mover, front, seed)
            done.set()
    assert checks > 2
    client = b.client()
    in_sets = Counter(m for s in sets for m in client.smembers(s))
    in_lists = Counter(m for k in lists for m in client.lrange(k, 0, -1))
    assert in_sets == Counter(m.encode() for m in members)
    assert in_lists == Counter(m.encode() for m in members)


async def test_mget_across_buckets_is_never_torn_while_the_other_front_msets(
    fronts: tuple[Front, Front],
) -> None:
    a, b = fronts
    keys = keys_on_distinct_shards("torn:", SHARDS, per_shard=2)
    b.client().mset(dict.fromkeys(keys, 0))
    rounds = 60
    seen: set[bytes] = set()

    async def writer() -> None:
        client = await RawClient.connect(b.port)
        for i in range(1, rounds + 1):
            pairs = [part for key in keys for part in (key, i)]
            assert await client.call("MSET", *pairs) == b"OK"
        await client.aclose()

    async def reader(done: trio.Event) -> None:
        client = await RawClient.connect(a.port)
        while not done.is_set():
            values = await client.call("MGET", *keys)
            assert len(set(values)) == 1, values
            seen.add(values[0])
        await client.aclose()

    with trio.fail_after(60):
        done = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader, done)
            nursery.start_soon(reader, done)
            await writer()
            done.set()
    assert len(seen) > 2  # the readers saw the writes go by, not one state
    assert a.client().mget(keys) == [str(rounds).encode()] * len(keys)


async def test_watch_through_one_front_is_broken_by_a_write_through_the_other(
    fronts: tuple[Front, Front],
) -> None:
    a, b = fronts
    watched, other = ACCOUNTS[0], ACCOUNTS[2]
    with trio.fail_after(20):
        client = await RawClient.connect(a.port)
        for writer_command in (("SET", watched, "changed"), ("DEL", watched),
                               ("EXPIRE", watched, 100)):
            b.client().set(watched, "before")
            assert await client.call("WATCH", watched) == b"OK"
            b.client().execute_command(*writer_command)
            for reply, expected in [(("MULTI",), b"OK"), (("SET", other, "x"), b"QUEUED"),
                                    (("SET", watched, "mine"), b"QUEUED")]:
                assert await client.call(*reply) == expected
            assert await client.call("EXEC") is None, writer_command
            assert b.client().get(other) is None  # nothing of the transaction ran
        # Unbroken, the same transaction runs.
        b.client().set(watched, "before")
        assert await client.call("WATCH", watched) == b"OK"
        assert await client.call("MULTI") == b"OK"
        await client.call("SET", other, "x")
        await client.call("SET", watched, "mine")
        assert await client.call("EXEC") == [b"OK", b"OK"]
        assert b.client().mget([watched, other]) == [b"mine", b"x"]
        await client.aclose()


def run_threads(targets: list[Any], timeout: float) -> None:
    """Start the threads, join them within timeout, re-raise the first failure."""
    errors: list[BaseException] = []

    def wrap(target: Any) -> Any:
        def body() -> None:
            try:
                target()
            except BaseException as exc:  # noqa: BLE001 (re-raised by the test below)
                errors.append(exc)
        return body

    threads = [threading.Thread(target=wrap(t), daemon=True) for t in targets]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
        assert not thread.is_alive(), "a worker thread did not finish in time"
    if errors:
        raise errors[0]


def test_redis_py_lock_excludes_across_the_two_fronts(fronts: tuple[Front, Front]) -> None:
    a, b = fronts
    a.client().set("counter", 0)
    inside = b.client()
    rounds = 8

    def worker(front: Front, name: str) -> None:
        client = front.client()
        for _ in range(rounds):
            with client.lock("resource", timeout=10, blocking_timeout=20):
                # Only the holder may be here: a second one would find the flag set.
                assert client.set("holder", name, nx=True), client.get("holder")
                value = int(client.get("counter"))
                client.set("counter", value + 1)  # a lost update without the lock
                assert client.delete("holder") == 1
        client.close()

    run_threads([lambda f=f, n=n: worker(f, n)
                 for n, f in enumerate((a, b, a, b))], timeout=60)
    assert int(inside.get("counter")) == 4 * rounds
    assert inside.get("resource") is None  # every lock was released


def test_pipelines_through_both_fronts(fronts: tuple[Front, Front]) -> None:
    a, b = fronts
    counters = keys_on_distinct_shards("ctr:", SHARDS)

    def worker(front: Front, transaction: bool) -> None:
        client = front.client()
        for _ in range(10):
            pipe = client.pipeline(transaction=transaction)
            for key in counters:
                pipe.incr(key)
            pipe.mget(counters)
            replies = pipe.execute()
            assert all(isinstance(r, int) for r in replies[:-1])
            if transaction:  # MULTI/EXEC across buckets: one snapshot of its own writes
                assert [int(v) for v in replies[-1]] == replies[:-1]
        client.close()

    run_threads([lambda f=f, t=t: worker(f, t)
                 for f, t in ((a, False), (b, False), (a, True), (b, True))], timeout=60)
    assert [int(v) for v in a.client().mget(counters)] == [40] * len(counters)
    with b.client().pipeline(transaction=False) as pipe:
        for i in range(50):
            pipe.set(f"p:{i}", i)
        assert pipe.execute() == [True] * 50
    with a.client().pipeline(transaction=False) as pipe:
        for i in range(50):
            pipe.get(f"p:{i}")
        assert pipe.execute() == [str(i).encode() for i in range(50)]


def test_pubsub_subscribe_on_one_front_publish_on_the_other(fronts: tuple[Front, Front]) -> None:
    a, b = fronts
    pubsub = a.client().pubsub()
    pubsub.subscribe("news")
    pubsub.psubscribe("ne*")
    for _ in range(2):
        message = pubsub.get_message(timeout=5)
        assert message is not None and message["type"] in ("subscribe", "psubscribe")
    # Both subscriptions of the one client count, as in Redis.
    assert b.client().publish("news", "hello") == 2
    got = [pubsub.get_message(timeout=5) for _ in range(2)]
    assert {(m["type"], m["data"]) for m in got if m} == {
        ("message", b"hello"), ("pmessage", b"hello")}
    pubsub.close()


async def blpop_woken(waiting: Front, pushing: Front, keys: list[str]) -> float:
    """Seconds from an RPUSH through pushing to the BLPOP (timeout 10 s) through
    waiting returning the element."""
    with trio.fail_after(20):
        blocked = await RawClient.connect(waiting.port)
        pusher = await RawClient.connect(pushing.port)
        await blocked.send("BLPOP", *keys, 10)
        # The BLPOP must be waiting before the push: CLIENT LIST of its front says so.
        while b"cmd=blpop" not in await client_list(waiting):
            await trio.sleep(0.01)
        await trio.sleep(0.1)
        began = trio.current_time()
        assert await pusher.call("RPUSH", keys[-1], "job") == 1
        assert await blocked.reply() == [keys[-1].encode(), b"job"]
        took = trio.current_time() - began
        await blocked.aclose()
        await pusher.aclose()
        return took


async def client_list(front: Front) -> bytes:
    client = await RawClient.connect(front.port)
    try:
        return bytes(await client.call("CLIENT", "LIST"))
    finally:
        await client.aclose()


@pytest.mark.parametrize("spread", ["one bucket", "two buckets"])
async def test_blpop_on_one_front_is_woken_by_rpush_on_the_other(
    fronts: tuple[Front, Front], spread: str,
) -> None:
    a, b = fronts
    queue = keys_on_distinct_shards("queue:", SHARDS, per_shard=2)
    keys = [queue[0], queue[1]] if spread == "one bucket" else [queue[0], queue[2]]
    assert len({shard_of(k, SHARDS) for k in keys}) == (1 if spread == "one bucket" else 2)
    assert await blpop_woken(a, b, keys) < 1.0  # its timeout is 10 s


async def test_a_waiting_blpop_stalls_no_other_client_of_its_front(
    fronts: tuple[Front, Front],
) -> None:
    a, _ = fronts
    queue, neighbour = keys_on_distinct_shards("stall:", SHARDS, per_shard=2)[:2]
    assert shard_of(queue, SHARDS) == shard_of(neighbour, SHARDS)
    with trio.fail_after(20):
        other = await RawClient.connect(a.port)
        assert await other.call("SET", neighbour, "v") == b"OK"
        # Woken by a push through its own front, on the shard it waits on.
        assert await blpop_woken(a, a, [queue]) < 1.0
        blocked = await RawClient.connect(a.port)
        await blocked.send("BLPOP", queue, 3)
        while b"cmd=blpop" not in await client_list(a):
            await trio.sleep(0.01)
        await trio.sleep(0.1)
        for _ in range(5):
            with trio.fail_after(0.5):  # not the BLPOP's 3 s
                assert await other.call("GET", neighbour) == b"v"
        with trio.fail_after(6):
            assert await blocked.reply() is None  # its own timeout still holds
        await blocked.aclose()
        await other.aclose()
