"""Durability: kill -9 under load, lost page cache, torn and corrupt files, failing disks,
crashes mid-checkpoint, and data directories that must be refused."""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import redis
import trio
from redis.backoff import NoBackoff
from redis.retry import Retry

from conftest import ROOT, DtmProcess
from dtm.config import Config
from dtm.server import Server
from helpers import RawClient, start_server
from modes import create_mode
from modes.check import check
from modes.datadir import MANIFEST, DataDirError, FileOps

ACCOUNTS = [f"acct:{i}" for i in range(10)]


# ------------------------------------------------------------------ helpers


class LossyOps(FileOps):
    """A file layer that remembers what was synced, and can forget everything else the
    way a power cut forgets the page cache."""

    def __init__(self) -> None:
        self.paths: dict[int, Path] = {}
        self.durable: dict[Path, int] = {}

    def open(self, path: Path, flags: int) -> int:
        fd = super().open(path, flags)
        self.paths[fd] = Path(path)
        self.durable.setdefault(Path(path), os.path.getsize(path) if not flags & os.O_TRUNC else 0)
        return fd

    def _synced(self, fd: int) -> None:
        self.durable[self.paths[fd]] = os.fstat(fd).st_size

    def fdatasync(self, fd: int) -> None:
        super().fdatasync(fd)
        self._synced(fd)

    def fsync(self, fd: int) -> None:
        super().fsync(fd)
        self._synced(fd)

    def replace(self, source: Path, target: Path) -> None:
        super().replace(source, target)
        self.durable[Path(target)] = self.durable.pop(Path(source), 0)

    def lose_unsynced(self) -> int:
        lost = 0
        for path, size in self.durable.items():
            if path.exists() and path.stat().st_size > size:
                lost += path.stat().st_size - size
                os.truncate(path, size)
        return lost


class FailingOps(FileOps):
    """Writes or syncs fail with the given error while it is set."""

    def __init__(self) -> None:
        self.write_error: OSError | None = None
        self.sync_error: OSError | None = None

    def write(self, fd: int, data: bytes | memoryview) -> None:
        if self.write_error is not None:
            raise self.write_error
        super().write(fd, data)

    def fdatasync(self, fd: int) -> None:
        if self.sync_error is not None:
            raise self.sync_error
        super().fdatasync(fd)


def config_for(directory: Path, mode: str, **settings: object) -> Config:
    return Config(port=0, mode=mode, dir=str(directory), **settings)  # type: ignore[arg-type]


@asynccontextmanager
async def failing_disk_server(directory: Path, mode: str,
                              **settings: Any) -> AsyncIterator[tuple[RawClient, FailingOps]]:
    """A server in mode on directory whose file layer fails on demand, and a client;
    the server is stopped (as by a crash) when the block ends, within 20 s."""
    ops = FailingOps()
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            mode_object = create_mode(config_for(directory, mode, **settings), ops)
            server = await start_server(nursery, mode=mode, dir=str(directory),
                                        mode_object=mode_object, **settings)
            yield await RawClient.connect(server.port), ops
            nursery.cancel_scope.cancel()


def recovered(directory: Path, mode: str = "binlog", **settings: object) -> Server:
    """A server that has loaded directory (without listening)."""
    server = Server(config_for(directory, mode, **settings))
    server.mode.recover(server)
    return server


def value(server: Server, key: str, db: int = 0) -> bytes | None:
    return server.keyspace.view(db).get(key.encode())


# ------------------------------------------------------- lost page cache


async def test_binlog_acknowledged_writes_survive_losing_the_page_cache(tmp_path: Path) -> None:
    ops = LossyOps()
    directory = tmp_path / "data"
    acked: dict[str, int] = {}
    with trio.fail_after(20):
        async with trio.open_nursery() as crash:
            mode = create_mode(config_for(directory, "binlog"), ops)
            server = await start_server(crash, mode="binlog", dir=str(directory), mode_object=mode)
            setup = await RawClient.connect(server.port)
            await setup.call("MSET", *[x for a in ACCOUNTS for x in (a, 100)])

            async def counter(name: str) -> None:
                client = await RawClient.connect(server.port)
                while True:
                    acked[name] = await client.call("INCR", name)

            async def transfers(seed: int) -> None:
                rng = random.Random(seed)
                client = await RawClient.connect(server.port)
                while True:
                    src, dst = rng.sample(ACCOUNTS, 2)
                    await client.call("MULTI")
                    await client.call("DECRBY", src, 1)
                    await client.call("INCRBY", dst, 1)
                    await client.call("EXEC")

            for i in range(6):
                crash.start_soon(counter, f"counter:{i}")
            for seed in range(3):
                crash.start_soon(transfers, seed)
            await trio.sleep(0.6)
            crash.cancel_scope.cancel()  # the crash: nothing gets to flush
    ops.lose_unsynced()
    after = recovered(directory)
    assert acked and all(v > 0 for v in acked.values())
    for name, last_ack in acked.items():
        restored = int(value(after, name) or 0)
        assert last_ack <= restored <= last_ack + 1, name
    assert sum(int(value(after, a) or 0) for a in ACCOUNTS) == 100 * len(ACCOUNTS)


# ------------------------------------------------------------ kill -9


def _no_retry_client(port: int) -> redis.Redis:
    """Fails at the first connection error (redis-py 8 retries with backoff by default)."""
    return redis.Redis(port=port, socket_timeout=5, retry=Retry(NoBackoff(), 0))


def _load(port: int, stop: threading.Event, acked: dict[str, int], name: str) -> None:
    client = _no_retry_client(port)
    try:
        while not stop.is_set():
            acked[name] = client.incr(name)
    except (redis.ConnectionError, redis.TimeoutError):
        pass


def _transfer(port: int, stop: threading.Event, seed: int) -> None:
    rng = random.Random(seed)
    client = _no_retry_client(port)
    try:
        while not stop.is_set():
            src, dst = rng.sample(ACCOUNTS, 2)
            with client.pipeline(transaction=True) as pipe:
                pipe.decrby(src, 3).incrby(dst, 3).execute()
    except (redis.ConnectionError, redis.TimeoutError):
        pass


@pytest.mark.parametrize("mode", ["binlog", "checkpoint"])
def test_kill9_under_load_keeps_acknowledged_writes_and_whole_transactions(tmp_path: Path, mode: str) -> None:
    extra = ["--checkpoint-interval", "0.1"] if mode == "checkpoint" else []
    acked: dict[str, int] = {}
    for cycle in range(3):
        server = DtmProcess("--mode", mode, *extra, tmp=tmp_path)
        client = server.client()
        if cycle == 0:
            client.mset({a: 100 for a in ACCOUNTS})
            if mode == "checkpoint":
                client.save()
        else:
            assert sum(int(client.get(a)) for a in ACCOUNTS) == 100 * len(ACCOUNTS)
            for name, last_ack in acked.items():
                restored = int(client.get(name) or 0)
                if mode == "binlog":  # nothing acknowledged is lost
                    assert last_ack <= restored <= last_ack + 1, (cycle, name)
                else:  # back to the last complete checkpoint: never ahead of what was acked
                    assert restored <= last_ack + 1, (cycle, name)
                acked[name] = restored
        stop = threading.Event()
        threads = [threading.Thread(target=_load, args=(server.port, stop, acked, f"n:{i}")) for i in range(4)]
        threads += [threading.Thread(target=_transfer, args=(server.port, stop, i)) for i in range(3)]
        for thread in threads:
            thread.start()
        time.sleep(0.8)
        server.proc.kill()  # kill -9 while the load runs
        server.proc.wait()
        stop.set()
        for thread in threads:
            thread.join(10)
        server.log.close()


def test_sigterm_in_checkpoint_mode_takes_a_final_checkpoint(tmp_path: Path) -> None:
    server = DtmProcess("--mode", "checkpoint", "--checkpoint-interval", "3600", tmp=tmp_path)
    server.client().mset({"a": 1, "b": 2})
    server.stop()
    assert server.proc.returncode == 0
    assert value(recovered(server.dir, "checkpoint"), "b") == b"2"


def test_none_mode_save_and_shutdown_save(tmp_path: Path) -> None:
    server = DtmProcess(tmp=tmp_path)
    client = server.client()
    client.set("kept", "yes", ex=1000)
    assert client.save() is True
    client.set("later", "also")
    _no_retry_client(server.port).shutdown(save=True)  # the closed connection means success
    assert server.proc.wait(10) == 0
    restarted = recovered(server.dir, "none")
    assert value(restarted, "kept") == b"yes" and value(restarted, "later") == b"also"
    assert restarted.keyspace.view(0).slot(b"kept").ttl_at(b"kept") is not None


def test_bgsave_while_one_runs_is_refused(dtm_server: DtmProcess) -> None:
    client = dtm_server.client()
    client.mset({f"k{i}": "v" for i in range(20000)})
    replies = []
    for _ in range(2):
        try:
            replies.append(client.bgsave())
        except redis.ResponseError as exc:
            replies.append(str(exc))
    assert replies[0] is True
    assert "Background save already in progress" in replies or replies == [True, True]
    conn = client.connection_pool.get_connection()
    conn.send_command("BGSAVE", "SCHEDULE")
    scheduled = conn.read_response()
    client.connection_pool.release(conn)
    assert scheduled in (b"Background saving started", b"Background saving scheduled")
    deadline = time.monotonic() + 10
    while client.info("persistence")["rdb_bgsave_in_progress"] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert client.lastsave()


# --------------------------------------------------------- torn and corrupt


def _binlog_with_five_writes(directory: Path) -> Path:
    async def write() -> None:
        async with trio.open_nursery() as nursery:
            server = await start_server(nursery, mode="binlog", dir=str(directory))
            client = await RawClient.connect(server.port)
            for i in range(5):
                assert await client.call("SET", f"k{i}", f"v{i}") == b"OK"
            nursery.cancel_scope.cancel()

    trio.run(write)
    (log,) = (directory / "binlog").glob("*.log")
    return log


def test_truncating_the_last_record_anywhere_recovers_the_rest(tmp_path: Path) -> None:
    log = _binlog_with_five_writes(tmp_path / "base")
    data = log.read_bytes()
    from modes.record import scan

    assert scan(data)[0].good_end == len(data)
    # the last record starts where a scan of everything but its last byte stops
    last_start = scan(data[:-1])[0].good_end
    for cut in range(last_start, len(data)):
        copy = tmp_path / f"cut{cut}"
        shutil.copytree(tmp_path / "base", copy)
        (copy / "binlog" / log.name).write_bytes(data[:cut])
        server = recovered(copy)
        assert [value(server, f"k{i}") for i in range(5)] == [b"v0", b"v1", b"v2", b"v3", None]
        assert (copy / "binlog" / log.name).stat().st_size == last_start  # the torn tail is cut


def test_corruption_before_the_tail_is_refused_and_check_repair_cuts_it(tmp_path: Path) -> None:
    directory = tmp_path / "data"
    log = _binlog_with_five_writes(directory)
    data = bytearray(log.read_bytes())
    data[20] ^= 0xFF  # inside the first record
    log.write_bytes(bytes(data))
    with pytest.raises(DataDirError, match="corrupt"):
        recovered(directory)
    report = check(str(directory))
    assert report.problems == 1 and not report.repaired
    report = check(str(directory), repair=True)
    assert report.repaired
    assert check(str(directory)).problems == 0
    assert value(recovered(directory), "k0") is None  # cut at the damage, nothing invented


def test_corrupt_snapshot_is_never_loaded(tmp_path: Path) -> None:
    server = DtmProcess(tmp=tmp_path)
    server.client().mset({f"k{i}": "v" for i in range(100)})
    server.client().save()
    server.stop()
    bucket_file = next((server.dir / "snapshots").rglob("bucket-0.snap"))
    data = bytearray(bucket_file.read_bytes())
    data[len(data) // 2] ^= 0x01
    bucket_file.write_bytes(bytes(data))
    result = subprocess.run([sys.executable, "-m", "dtm.cli", "serve", "--port", "0", "--dir", str(server.dir)],
                            capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert result.returncode == 1
    assert "damaged" in result.stderr and "checksum" in result.stderr
    assert check(str(server.dir)).problems == 1


def test_data_dir_of_another_format_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "data"
    directory.mkdir()
    (directory / "dtm.format").write_text(json.dumps({"dtm_data_format": 99}))
    result = subprocess.run([sys.executable, "-m", "dtm.cli", "serve", "--mode", "binlog", "--port", "0",
                             "--dir", str(directory)], capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert result.returncode == 1
    assert "data format 99" in result.stderr


def test_snapshot_taken_with_another_bucket_count_loads_rebucketed(tmp_path: Path) -> None:
    server = DtmProcess("--buckets", "4", tmp=tmp_path)
    server.client().mset({f"k{i}": f"v{i}" for i in range(200)})
    server.client().save()
    server.stop()
    again = recovered(server.dir, "none", buckets=16)
    assert all(value(again, f"k{i}") == f"v{i}".encode() for i in range(200))


# ------------------------------------------------------------ failing disks


async def test_failing_write_is_never_acknowledged_and_writes_resume(tmp_path: Path) -> None:
    await _failing_disk(tmp_path, OSError(errno.ENOSPC, "No space left on device"), on="write")


async def test_failing_sync_is_never_acknowledged_and_writes_resume(tmp_path: Path) -> None:
    await _failing_disk(tmp_path, OSError(errno.EIO, "Input/output error"), on="sync")


async def _failing_disk(tmp_path: Path, error: OSError, on: str) -> None:
    directory = tmp_path / "data"
    async with failing_disk_server(directory, "binlog") as (client, ops):
        assert await client.call("SET", "k", "before") == b"OK"
        if on == "write":
            ops.write_error = error
        else:
            ops.sync_error = error
        reply = await client.call("SET", "k", "during")
        assert str(reply).startswith("MISCONF") and error.strerror in str(reply)
        assert await client.call("GET", "k") == b"before"  # not applied; reads work
        assert str(await client.call("INCR", "other")).startswith("MISCONF")
        ops.write_error = ops.sync_error = None
        while True:  # writes resume once the log is cut back and synced
            reply = await client.call("SET", "k", "after")
            if reply == b"OK":
                break
            await trio.sleep(0.1)
    restarted = recovered(directory)
    assert value(restarted, "k") == b"after" and value(restarted, "other") is None


async def test_crash_in_the_middle_of_a_checkpoint_leaves_the_previous_one_current(tmp_path: Path) -> None:
    directory = tmp_path / "data"

    class CrashBeforeManifest(FileOps):
        armed = False

        def replace(self, source: Path, target: Path) -> None:
            if self.armed and Path(target).name == MANIFEST:
                raise OSError(errno.EIO, "simulated crash before the manifest rename")
            super().replace(source, target)

    ops = CrashBeforeManifest()
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            mode = create_mode(config_for(directory, "checkpoint", checkpoint_interval=3600), ops)
            server = await start_server(nursery, mode="checkpoint", dir=str(directory),
                                        checkpoint_interval=3600, mode_object=mode)
            client = await RawClient.connect(server.port)
            await client.call("MSET", "a", "1", "b", "1")
            assert await client.call("SAVE") == b"OK"
            await client.call("MSET", "a", "2", "b", "2")
            ops.armed = True
            reply = await client.call("SAVE")
            assert "simulated crash" in str(reply)
            nursery.cancel_scope.cancel()
    restarted = recovered(directory, "checkpoint")
    assert (value(restarted, "a"), value(restarted, "b")) == (b"1", b"1")
    assert check(str(directory)).problems == 0


# ------------------------------------------------------------ compaction, everysec


async def _info(client: RawClient, field: str) -> str:
    text = (await client.call("INFO", "persistence")).decode()
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)[field]


async def test_binlog_compaction_keeps_every_write_across_the_log_switch(tmp_path: Path) -> None:
    directory = tmp_path / "data"
    big = "x" * 20_000
    with trio.fail_after(30):
        async with trio.open_nursery() as crash:
            server = await start_server(crash, mode="binlog", dir=str(directory), binlog_max_mb=1)
            clients = [await RawClient.connect(server.port) for _ in range(4)]

            async def writer(client: RawClient, n: int) -> None:
                for i in range(40):
                    assert await client.call("SET", f"w{n}:{i}", big) == b"OK"
                    assert await client.call("INCR", f"count:{n}") == i + 1

            async with trio.open_nursery() as writers:  # ~3 MB: compacts at least twice
                for n, client in enumerate(clients):
                    writers.start_soon(writer, client, n)
            while int(await _info(clients[0], "binlog_compactions")) < 2:
                await trio.sleep(0.05)
            assert await clients[0].call("SET", "after", "compaction") == b"OK"
            crash.cancel_scope.cancel()
    assert len(list((directory / "binlog").glob("*.log"))) <= 2  # old logs are removed
    restored = recovered(directory)
    for n in range(4):
        assert value(restored, f"count:{n}") == b"40"
        assert all(value(restored, f"w{n}:{i}") == big.encode() for i in range(40))
    assert value(restored, "after") == b"compaction"


async def test_fsync_everysec_syncs_within_a_second(tmp_path: Path) -> None:
    ops = LossyOps()
    directory = tmp_path / "data"
    with trio.fail_after(10):
        async with trio.open_nursery() as crash:
            mode = create_mode(config_for(directory, "binlog", fsync="everysec"), ops)
            server = await start_server(crash, mode="binlog", dir=str(directory), fsync="everysec",
                                        mode_object=mode)
            client = await RawClient.connect(server.port)
            for i in range(100):
                assert await client.call("SET", f"k{i}", "v") == b"OK"
            while await _info(client, "binlog_synced_size") != await _info(client, "binlog_current_size"):
                await trio.sleep(0.05)
            crash.cancel_scope.cancel()
    ops.lose_unsynced()
    restored = recovered(directory)
    assert all(value(restored, f"k{i}") == b"v" for i in range(100))


async def test_client_killed_during_its_sync_is_applied_in_memory_and_on_disk(tmp_path: Path) -> None:
    class SlowSyncOps(FileOps):
        delay = 0.0

        def fdatasync(self, fd: int) -> None:
            time.sleep(self.delay)
            super().fdatasync(fd)

    ops = SlowSyncOps()
    directory = tmp_path / "data"
    with trio.fail_after(20):
        async with trio.open_nursery() as crash:
            mode = create_mode(config_for(directory, "binlog"), ops)
            server = await start_server(crash, mode="binlog", dir=str(directory), mode_object=mode)
            victim = await RawClient.connect(server.port)
            killer = await RawClient.connect(server.port)
            victim_id = await victim.call("CLIENT", "ID")
            ops.delay = 0.3
            assert await victim.call("SET", "warm", "up") == b"OK"  # slow: syncs move to a thread
            assert await _info(killer, "binlog_sync_in_thread") == "1"
            await victim.send("SET", "k", "decided")
            while server.monitor.locked == 0:
                await trio.sleep(0.01)
            assert await killer.call("CLIENT", "KILL", "ID", victim_id) == 1
            assert await victim.closed()
            assert await killer.call("GET", "k") == b"decided"
            crash.cancel_scope.cancel()
    assert value(recovered(directory), "k") == b"decided"


# ------------------------------------------------------------ apply, then log


async def test_a_transaction_whose_log_write_fails_is_undone_in_every_bucket(tmp_path: Path) -> None:
    """Writes are applied under their locks before they are logged (so only what ran is
    logged); a log write that fails must put every key back."""
    directory = tmp_path / "data"
    async with failing_disk_server(directory, "binlog") as (client, ops):
        keys = [f"key:{i}" for i in range(8)]  # several buckets
        assert await client.call("MSET", *[x for k in keys for x in (k, "old")]) == b"OK"
        assert await client.call("DEL", "absent") == 0
        ops.write_error = OSError(errno.ENOSPC, "No space left on device")
        reply = await client.call("MSET", "absent", "new", *[x for k in keys for x in (k, "new")])
        assert str(reply).startswith("MISCONF")
        assert await client.call("MGET", "absent", *keys) == [None] + [b"old"] * len(keys)
    restarted = recovered(directory)
    assert [value(restarted, k) for k in keys] == [b"old"] * len(keys)


async def test_in_place_edits_whose_log_write_fails_are_undone_byte_for_byte(tmp_path: Path) -> None:
    """APPEND, SETRANGE, SETBIT and BITFIELD edit a value in place; undoing them after a
    failed log write reverses the edits (the journal), without copying the value first."""
    directory = tmp_path / "data"
    async with failing_disk_server(directory, "binlog") as (client, ops):
        assert await client.call("SET", "v", "abcdef") == b"OK"
        assert await client.call("APPEND", "v", "gh") == 8  # now a value edited in place
        before = await client.call("GET", "v")
        ops.write_error = OSError(errno.ENOSPC, "No space left on device")
        for command in (("APPEND", "v", "XYZ"), ("SETRANGE", "v", "2", "0123456789"),
                        ("SETBIT", "v", "3", "1"), ("BITFIELD", "v", "SET", "u8", "100", "255")):
            assert str(await client.call(*command)).startswith("MISCONF"), command
            assert await client.call("GET", "v") == before, command
        await client.call("MULTI")
        await client.call("SETRANGE", "v", "0", "zz")
        await client.call("APPEND", "v", "tail")
        assert str(await client.call("EXEC")).startswith("MISCONF")
        assert await client.call("GET", "v") == before
    assert value(recovered(directory), "v") == before


async def test_a_record_too_large_for_the_log_is_refused_and_undone_before_any_reply(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import modes.record

    monkeypatch.setattr(modes.record, "MAX_RECORD", 10_000)
    directory = tmp_path / "data"
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            server = await start_server(nursery, mode="binlog", dir=str(directory))
            client = await RawClient.connect(server.port)
            assert await client.call("SET", "small", "1") == b"OK"
            reply = await client.call("SET", "big", "x" * 20_000)
            assert "too large for the binlog" in str(reply)
            await client.call("MULTI")
            await client.call("SET", "in-tx", "1")
            await client.call("SET", "big", "x" * 20_000)
            assert "too large for the binlog" in str(await client.call("EXEC"))
            assert await client.call("MGET", "big", "in-tx") == [None, None]
            assert await client.call("SET", "after", "1") == b"OK"
            nursery.cancel_scope.cancel()
    restarted = recovered(directory)
    assert [value(restarted, k) for k in ("small", "big", "in-tx", "after")] == [b"1", None, None, b"1"]


async def test_bgsave_schedule_keeps_at_most_one_save_pending(tmp_path: Path) -> None:
    class SlowSnapshotOps(FileOps):
        def fsync(self, fd: int) -> None:
            time.sleep(0.05)  # in the snapshot's worker thread: the save takes a while
            super().fsync(fd)

    directory = tmp_path / "data"
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            mode = create_mode(config_for(directory, "none"), SlowSnapshotOps())
            server = await start_server(nursery, dir=str(directory), mode_object=mode)
            client = await RawClient.connect(server.port)
            assert await client.call("BGSAVE") == b"Background saving started"
            for _ in range(5):
                assert await client.call("BGSAVE", "SCHEDULE") == b"Background saving scheduled"
            while int(await _info(client, "rdb_saves")) < 2 or await _info(client, "rdb_bgsave_in_progress") != "0":
                await trio.sleep(0.02)
            await trio.sleep(0.3)  # room for a third save, were one pending
            assert await _info(client, "rdb_saves") == "2"
            nursery.cancel_scope.cancel()


async def test_a_new_log_whose_header_cannot_be_written_leaves_nothing_behind(tmp_path: Path) -> None:
    """A compaction whose new log fails at its header must not leave a headless log
    between two good ones: the next start would take it for damage and refuse."""
    class NoNewLogs(FileOps):
        armed = False

        def write(self, fd: int, data: bytes | memoryview) -> None:
            if self.armed and bytes(data[:8]) == b"DTMLOG01":
                raise OSError(errno.ENOSPC, "No space left on device")
            super().write(fd, data)

    directory = tmp_path / "data"
    ops = NoNewLogs()
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            mode = create_mode(config_for(directory, "binlog"), ops)
            server = await start_server(nursery, mode="binlog", dir=str(directory), mode_object=mode)
            client = await RawClient.connect(server.port)
            assert await client.call("SET", "a", "1") == b"OK"
            ops.armed = True
            assert "snapshot failed" in str(await client.call("SAVE"))
            assert await client.call("SET", "b", "2") == b"OK"  # the old log goes on
            nursery.cancel_scope.cancel()
    assert len(list((directory / "binlog").glob("*.log"))) == 1
    restarted = recovered(directory)
    assert (value(restarted, "a"), value(restarted, "b")) == (b"1", b"2")


async def test_checkpoint_mode_refuses_writes_while_checkpoints_fail(tmp_path: Path) -> None:
    """The same as the full-disk test in test_data_safety, without needing root."""
    directory = tmp_path / "data"
    async with failing_disk_server(directory, "checkpoint", checkpoint_interval=0.05) as (client, ops):
        assert await client.call("SET", "before", "1") == b"OK"
        ops.write_error = OSError(errno.EMFILE, "Too many open files")
        while (reply := await client.call("SET", "during", "1")) == b"OK":
            await trio.sleep(0.01)
        assert str(reply).startswith("MISCONF dtm is configured to save checkpoints")
        assert await _info(client, "rdb_last_bgsave_status") == "err"
        assert await client.call("GET", "before") == b"1"
        assert str(await client.call("MSET", "x", "1", "y", "2")).startswith("MISCONF")
        ops.write_error = None
        while await client.call("SET", "after", "1") != b"OK":
            await trio.sleep(0.01)
        assert await client.call("SAVE") == b"OK"
    restarted = recovered(directory, "checkpoint")
    assert (value(restarted, "before"), value(restarted, "after"), value(restarted, "x")) == (b"1", b"1", None)
