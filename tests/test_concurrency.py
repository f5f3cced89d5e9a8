"""Invariants under concurrency over many buckets: transfers keep the total, MSET is
never seen half applied, INCRs lose nothing, and commands wait on locked keys."""

from __future__ import annotations

import random

import trio

from helpers import RawClient, serving
from dtm.durability import CommitRecord
from modes.base import SnapshottingMode

ACCOUNTS = [f"acct:{i}" for i in range(16)]  # spread over all 8 buckets
START = 100


async def test_bank_transfers_keep_the_total_and_mget_never_sees_a_torn_sum() -> None:
    async with serving(timeout=30, buckets=8) as server:
        setup = await RawClient.connect(server.port)
        await setup.call("MSET", *[x for a in ACCOUNTS for x in (a, START)])
        committed = 0
        sums: list[int] = []

        async def transfer(seed: int) -> None:
            nonlocal committed
            rng = random.Random(seed)
            client = await RawClient.connect(server.port)
            for _ in range(60):
                src, dst = rng.sample(ACCOUNTS, 2)
                await client.call("WATCH", src, dst)
                await client.call("GET", src)
                amount = rng.randint(1, 10)
                await client.call("MULTI")
                await client.call("DECRBY", src, amount)
                await client.call("INCRBY", dst, amount)
                result = await client.call("EXEC")
                if result is not None:
                    committed += 1
            await client.aclose()

        async def audit() -> None:
            client = await RawClient.connect(server.port)
            for _ in range(100):
                values = await client.call("MGET", *ACCOUNTS)
                sums.append(sum(int(v) for v in values))
            await client.aclose()

        async with trio.open_nursery() as workers:
            for seed in range(10):
                workers.start_soon(transfer, seed)
            for _ in range(2):
                workers.start_soon(audit)
        final = await setup.call("MGET", *ACCOUNTS)
        assert sum(int(v) for v in final) == START * len(ACCOUNTS)
        assert set(sums) == {START * len(ACCOUNTS)}
        assert committed > 0
        assert server.monitor.stats.cross_bucket > 0


async def test_concurrent_msets_are_never_seen_half_applied() -> None:
    keys = [f"m:{i}" for i in range(12)]
    async with serving(timeout=30, buckets=8) as server:
        seen: list[set[bytes]] = []

        async def writer(tag: int) -> None:
            client = await RawClient.connect(server.port)
            for round_ in range(80):
                value = f"{tag}-{round_}"
                await client.call("MSET", *[x for k in keys for x in (k, value)])

        async def reader() -> None:
            client = await RawClient.connect(server.port)
            for _ in range(200):
                values = await client.call("MGET", *keys)
                seen.append(set(values))

        async with trio.open_nursery() as workers:
            for tag in range(4):
                workers.start_soon(writer, tag)
            for _ in range(2):
                workers.start_soon(reader)
        assert all(len(values) == 1 for values in seen)


async def test_concurrent_incrs_lose_nothing() -> None:
    async with serving(timeout=30, buckets=4) as server:

        async def incr(n: int) -> None:
            client = await RawClient.connect(server.port)
            # pipelined: 50 INCRs per write
            await client.send_raw(b"".join(
                b"*2\r\n$4\r\nINCR\r\n$7\r\ncounter\r\n" for _ in range(50)))
            for _ in range(50):
                await client.reply()
            await client.aclose()

        async with trio.open_nursery() as workers:
            for n in range(20):
                workers.start_soon(incr, n)
        check = await RawClient.connect(server.port)
        assert await check.call("GET", "counter") == b"1000"


class GatedMode(SnapshottingMode):
    """A durability mode whose commit waits for the test to open a gate: it holds a
    transaction between decide and commit, with its key locks taken."""

    name = "gated"
    waits_for_commit = True

    def __init__(self, directory: str) -> None:
        super().__init__(directory)
        self.gate = trio.Event()
        self.arrived = trio.Event()
        self.records: list[CommitRecord] = []

    async def commit(self, record: CommitRecord) -> None:
        self.records.append(record)
        self.arrived.set()
        with trio.CancelScope(shield=True):  # the mode contract: uncancellable once taken
            await self.gate.wait()


async def test_a_command_meeting_a_locked_key_waits_for_the_commit(tmp_path) -> None:
    mode = GatedMode(str(tmp_path))
    async with serving(buckets=8, mode_object=mode) as server:
        writer = await RawClient.connect(server.port)
        reader = await RawClient.connect(server.port)
        await writer.send("MSET", "x:1", "new", "x:2", "new", "x:3", "new")
        await mode.arrived.wait()
        assert server.monitor.locked == 3
        await reader.send("MGET", "x:1", "x:2", "x:3")
        with trio.move_on_after(0.2) as waited:
            await reader.reply()
        assert waited.cancelled_caught  # the reader is held at the lock
        mode.gate.set()
        assert await writer.reply() == b"OK"
        assert await reader.reply() == [b"new", b"new", b"new"]
        assert server.monitor.locked == 0


async def test_client_killed_while_waiting_for_locks_applies_nothing_and_releases_them(tmp_path) -> None:
    mode = GatedMode(str(tmp_path))
    async with serving(buckets=8, mode_object=mode) as server:
        holder = await RawClient.connect(server.port)
        await holder.send("MSET", "y:1", "held", "y:2", "held")
        await mode.arrived.wait()
        # A second transaction queues behind the first, holding what it could lock…
        quitter = await RawClient.connect(server.port)
        quitter_id = await quitter.call("CLIENT", "ID")
        for command in (("MULTI",), ("SET", "y:9", "lost"), ("SET", "y:1", "lost")):
            await quitter.call(*command)
        await quitter.send("EXEC")
        while server.monitor.stats.lock_waits == 0:
            await trio.sleep(0.01)
        # …and is killed while it waits.
        killer = await RawClient.connect(server.port)
        assert await killer.call("CLIENT", "KILL", "ID", quitter_id) == 1
        assert await quitter.closed()
        assert server.monitor.locked == 2  # only the holder's locks remain
        mode.gate.set()
        assert await holder.reply() == b"OK"
        assert await killer.call("MGET", "y:1", "y:2", "y:9") == [b"held", b"held", None]
        assert server.monitor.locked == 0


async def test_disconnect_inside_multi_applies_nothing_and_drops_watches() -> None:
    async with serving(buckets=8) as server:
        quitter = await RawClient.connect(server.port)
        for command in (("WATCH", "z:1", "z:2"), ("MULTI",), ("SET", "z:1", "lost")):
            await quitter.call(*command)
        await quitter.aclose()
        while server.clients:
            await trio.sleep(0.01)
        check = await RawClient.connect(server.port)
        assert await check.call("EXISTS", "z:1") == 0
        assert all(not slot.watchers for view in server.keyspace.views() for slot in view.table)


async def test_client_killed_while_its_decision_is_recorded_still_commits(tmp_path) -> None:
    """The record reached the mode, so the change must be applied too: memory and the
    durable record never disagree."""
    mode = GatedMode(str(tmp_path))
    async with serving(buckets=8, mode_object=mode) as server:
        victim = await RawClient.connect(server.port)
        victim_id = await victim.call("CLIENT", "ID")
        await victim.send("MSET", "d:1", "decided", "d:2", "decided")
        await mode.arrived.wait()
        killer = await RawClient.connect(server.port)
        assert await killer.call("CLIENT", "KILL", "ID", victim_id) == 1
        mode.gate.set()
        assert await victim.closed()
        assert len(mode.records) == 1
        assert await killer.call("MGET", "d:1", "d:2") == [b"decided", b"decided"]
        assert server.monitor.locked == 0
