"""Bringing up a front's redis engine: the shards (spawned under ``--dir`` or given with
``--shards``), a link to each, the scripts loaded, the command table from the shards'
own COMMAND, keyspace notifications for blocking commands, and the mode's settings
checked on every shard."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import structlog
import trio

from dtm.buckets.address import ShardAddress, ShardError, ShardUnavailable
from dtm.buckets.blocking import NOTIFY_FLAGS, Notifier
from dtm.buckets.checkpoint import clear_interrupted_checkpoint, cut_file, cuts, recorded_cut
from dtm.buckets.keyspecs import CommandTable
from dtm.buckets.link import ShardLink
from dtm.buckets.redis import RedisEngine
from dtm.buckets.scripts import TOPOLOGY_KEY, ShardMisconfigured, ShardScripts
from dtm.buckets.shard import RedisBucket
from dtm.buckets.spawn import ShardSet, SpawnError, spawn_shards
from dtm.config import Config

log = structlog.get_logger("dtm.engine")


class EngineError(Exception):
    """The redis engine cannot start; ``str()`` is one line for the operator."""


def shard_addresses(config: Config) -> list[ShardAddress]:
    try:
        return [ShardAddress.parse(part.strip()) for part in config.shards.split(",") if part.strip()]
    except ValueError as exc:
        raise EngineError(f"--shards: {exc}") from None


def refuse_memory_engine_files(directory: Path) -> None:
    """A data directory the memory engine wrote holds data this engine would not see."""
    from modes.datadir import FORMAT_FILE, MANIFEST

    for name in (FORMAT_FILE, MANIFEST, "binlog", "snapshots"):
        if (directory / name).exists():
            raise EngineError(
                f"{directory} holds the memory engine's data ({name}); the redis engine would "
                "not see it. Serve it with --engine memory, or use another --dir")


def refuse_redis_engine_files(directory: Path) -> None:
    """The memory engine would start empty on a directory of redis-engine shards."""
    from modes.datadir import DataDirError

    for name in ("shard-0", "checkpoint.json"):
        if (directory / name).exists():
            raise DataDirError(f"{directory} holds the redis engine's shards ({name}); the memory "
                               "engine would not see them. Serve it with --engine redis, or use "
                               "another --dir")


def refuse_other_mode_files(directory: Path, count: int, mode: str) -> None:
    """Spawned shards: an append-only file is binlog mode's log; any other mode would
    start the shard from an older dump.rdb (or nothing), losing what the log holds."""
    if mode == "binlog":
        return
    for index in range(count):
        folder = directory / f"shard-{index}" / "appendonlydir"
        if folder.exists() and any(folder.iterdir()):
            raise EngineError(
                f"{folder} is binlog mode's log; --mode {mode} would start that shard without "
                "it. Start with --mode binlog (its data is kept), or use another --dir")


@asynccontextmanager
async def open_redis_engine(config: Config) -> AsyncIterator[RedisEngine]:
    directory = Path(config.dir).resolve()
    if directory.exists() and not directory.is_dir():
        raise EngineError(f"--dir {directory} is not a directory")
    async with trio.open_nursery() as nursery:
        if config.shards:
            addresses = shard_addresses(config)
            engine = await _connect(nursery, addresses, config)
            try:
                yield engine
            finally:
                nursery.cancel_scope.cancel()
            return
        refuse_memory_engine_files(directory)
        refuse_other_mode_files(directory, config.buckets, config.mode)
        binlog = config.mode == "binlog"
        dbfilename = checkpoint_file(directory, config.buckets)
        restarting = trio.Lock()
        started: list[RedisEngine] = []
        try:
            async with spawn_shards(
                directory, config.buckets, appendonly=binlog, appendfsync="always",
                dbfilename=dbfilename,
                on_exit=lambda shard: nursery.start_soon(
                    _restart, shard_set, shard.index, binlog, restarting, started),
            ) as shard_set:
                engine = await _connect(nursery, shard_set.addresses, config)
                engine.spawned = shard_set
                await clear_interrupted_checkpoint(engine)
                started.append(engine)
                try:
                    yield engine
                finally:
                    nursery.cancel_scope.cancel()
        except SpawnError as exc:
            raise EngineError(str(exc)) from None


async def _restart(shard_set: ShardSet, index: int, binlog: bool, restarting: trio.Lock,
                   started: list[RedisEngine]) -> None:
    """A spawned shard died. In binlog mode it starts again on its AOF, which holds
    everything it acknowledged. In the other modes its data is its last checkpoint, so
    every shard goes back to that checkpoint with it: a state that existed (at the cut),
    never one shard at the cut and the others after it."""
    async with restarting:
        try:
            if binlog:
                await shard_set.restart(index)
            elif shard_set[index].process is not None and shard_set[index].process.poll() is not None:  # type: ignore[union-attr]
                log.warning("a shard died: every shard returns to the last checkpoint",
                            shard=index, checkpoint=shard_set.dbfilename)
                await shard_set.restart_all()
                if started:
                    await clear_interrupted_checkpoint(started[0])
        except (SpawnError, ShardUnavailable) as exc:
            log.error("could not restart the shards", shard=index, error=str(exc))


def checkpoint_file(directory: Path, count: int) -> str:
    """The RDB file of the last complete checkpoint, which every spawned shard loads
    (dump.rdb before any); refused if a shard lacks it."""
    cut = recorded_cut(directory)
    if cut is None:
        return "dump.rdb"
    name = cut_file(cut)
    for index in range(count):
        path = directory / f"shard-{index}" / name
        if not path.exists():
            raise EngineError(f"{path} is missing: the last checkpoint ({cut}) is incomplete "
                              "without it; restore it, or use another --dir")
    return name


async def _connect(nursery: trio.Nursery, addresses: list[ShardAddress], config: Config) -> RedisEngine:
    if not addresses:
        raise EngineError("--shards names no shard")
    shards = []
    for index, address in enumerate(addresses):
        link = ShardLink(address)
        try:
            await nursery.start(link.run)
        except ShardUnavailable as exc:
            raise EngineError(str(exc)) from None
        scripts = ShardScripts(link)
        try:
            await scripts.load()
            await _configure(link, config)
        except (ShardMisconfigured, ShardError) as exc:
            raise EngineError(str(exc)) from None
        link3 = ShardLink(address, resp3=True)
        try:
            await nursery.start(link3.run)
        except ShardUnavailable as exc:
            raise EngineError(str(exc)) from None
        bucket = RedisBucket(index, link, scripts, link3)
        await _claim_place(bucket, len(addresses), address)
        shards.append(bucket)
    config.buckets = len(shards)
    table = CommandTable.from_command_info(await shards[0].link.call("COMMAND"))
    engine = RedisEngine(shards, table, lease_ms=config.lease_ms)
    engine.nursery = nursery
    engine.notifier = Notifier(engine)
    await nursery.start(engine.notifier.run)
    log.info("redis engine ready", shards=[str(a) for a in addresses], front=engine.front)
    return engine


async def _claim_place(bucket: RedisBucket, count: int, address: ShardAddress) -> None:
    """Every front must map keys to shards alike: a shard remembers which bucket of how
    many it is (in dtm's database), and a front that lists it elsewhere is refused."""
    place = f"{bucket.index}/{count}"
    before = await bucket.meta(("SET", TOPOLOGY_KEY, place, "NX", "GET"))
    if before is not None and before.decode() != place:
        held, of = before.decode().split("/")
        raise EngineError(
            f"shard {address} is bucket {held} of {of}, but is listed as bucket {bucket.index} "
            f"of {count}: every front must name the same shards in the same order")


async def _configure(link: ShardLink, config: Config) -> None:
    """Keyspace notifications for waiting commands; the mode's settings checked."""
    current = (await link.call("CONFIG", "GET", "notify-keyspace-events"))[1].decode()
    wanted = "".join(sorted(set(current) | set(NOTIFY_FLAGS)))
    if set(wanted) != set(current):
        await link.call("CONFIG", "SET", "notify-keyspace-events", wanted)
    policy = (await link.call("CONFIG", "GET", "maxmemory-policy"))[1]
    if policy != b"noeviction":
        raise EngineError(f"shard {link.address} has maxmemory-policy {policy.decode()}: dtm "
                          "needs noeviction (an evicted lock, intent or decision would break "
                          "atomicity)")
    if config.mode == "binlog":
        reply = await link.call("CONFIG", "GET", "appendonly")
        fsync = await link.call("CONFIG", "GET", "appendfsync")
        if reply[1] != b"yes" or fsync[1] != b"always":
            raise EngineError(
                f"shard {link.address} is not configured for binlog mode: it needs "
                "'appendonly yes' and 'appendfsync always' in its config")


async def refuse_mixed_cuts(engine: RedisEngine) -> None:
    """Shards that came back from different checkpoints hold a state that never was:
    refuse them (docs/guarantees.md says how to bring them back to one cut)."""
    found = await cuts(engine)
    if len(set(found)) > 1:
        shown = ", ".join(f"shard {i}: {(c or b'none').decode()}" for i, c in enumerate(found))
        raise EngineError(f"the shards hold different checkpoints ({shown}); restore every "
                          "shard from the same checkpoint before serving them")
