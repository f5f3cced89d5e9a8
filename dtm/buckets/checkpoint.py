"""A checkpoint of every shard at one cut: the synchronized BGSAVE dtm-redis proposed.

Single-shard commands are atomic on their shard, so any instant is a valid cut for them;
only a transaction that spans shards could be in one shard's file and not another's. So
the cut holds back exactly those: a **barrier** key on every shard makes ``decide``
refuse to record a commit (the front asks again), transactions already decided finish
their commits, then every shard is told the cut's id and forks its BGSAVE (Redis forks
at the command: the file is the data at that instant), and the barrier lifts. A
checkpoint counts once every shard reports its save done. Only one front coordinates at
a time: it holds a lease key on the first shard, so no front is special and a dead
coordinator's barrier and lease simply expire.

Every shard's file carries the cut's id (``CUT_KEY`` in dtm's database), so a front can
tell, when it starts, whether all shards came back from the same checkpoint.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import attrs
import structlog
import trio

from dtm.buckets.address import Arg, ShardError
from dtm.buckets.redis import RedisEngine, each, parse, primary_of
from dtm.buckets.scripts import BARRIER_KEY, COMMIT, CUT_KEY, LEASE_KEY

log = structlog.get_logger("dtm.checkpoint")

LEASE_MS: Final = 60_000
BARRIER_MS: Final = 10_000  # a dead coordinator's barrier lapses after this
POLL: Final = 0.002


class CheckpointBusy(Exception):
    """Another checkpoint (from any front) or a shard's own save is running."""


class CheckpointFailed(Exception):
    """A shard could not save; ``str()`` names it and why."""


@attrs.define
class CheckpointStats:
    last_cut: str = ""
    last_ok_time: int = 0  # unix seconds of the last complete checkpoint
    last_status_ok: bool = True
    last_pause_ms: float = 0.0  # how long commits across shards were held back
    count: int = 0
    in_progress: bool = False


async def _meta(engine: RedisEngine, index: int, *command: Arg) -> Any:
    return await engine.shards[index].control_meta(command)


async def checkpoint(engine: RedisEngine, stats: CheckpointStats,
                     on_started: Callable[[], None] | None = None) -> None:
    """Take a checkpoint: return once every shard's file is written (on_started is
    called as soon as every shard has forked its save: BGSAVE's reply)."""
    shards = range(len(engine.shards))
    cut = f"{int(time.time() * 1000)}-{engine.front}"
    if await _meta(engine, 0, "SET", LEASE_KEY, cut, "NX", "PX", LEASE_MS) is None:
        raise CheckpointBusy("Background save already in progress")
    stats.in_progress = True
    try:
        if any(await each(lambda i: _saving(engine, i), shards)):
            raise CheckpointBusy("Background save already in progress")
        began = time.perf_counter()
        await each(lambda i: _meta(engine, i, "SET", BARRIER_KEY, cut, "PX", BARRIER_MS), shards)
        try:
            await each(lambda i: _drain_commits(engine, i), shards)
            replies = await each(lambda i: _capture(engine, i, cut), shards)
        finally:
            with trio.CancelScope(shield=True):
                await each(lambda i: _meta(engine, i, "DEL", BARRIER_KEY), shards)
            stats.last_pause_ms = (time.perf_counter() - began) * 1000
        for index, reply in enumerate(replies):
            if isinstance(reply, ShardError):
                stats.last_status_ok = False
                raise CheckpointFailed(f"shard {index}: {reply}")
        stats.last_cut = cut
        if on_started is not None:
            on_started()
        await _wait_saved(engine, stats)
    finally:
        stats.in_progress = False
        with trio.CancelScope(shield=True):
            await _meta(engine, 0, "DEL", LEASE_KEY)


async def _wait_saved(engine: RedisEngine, stats: CheckpointStats) -> None:
    while any(await each(lambda i: _saving(engine, i), range(len(engine.shards)))):
        await trio.sleep(POLL * 5)
    statuses = await each(lambda i: _persistence(engine, i), range(len(engine.shards)))
    failed = [i for i, fields in enumerate(statuses) if fields.get("rdb_last_bgsave_status") != "ok"]
    stats.last_status_ok = not failed
    if failed:
        raise CheckpointFailed(f"shard {failed[0]} could not write its file; see its log")
    spawned = engine.spawned
    if spawned is not None:
        root = spawned[0].dir.parent
        await trio.to_thread.run_sync(record_cut, root, len(engine.shards), stats.last_cut)
        spawned.dbfilename = cut_file(stats.last_cut)
    # Counted (INFO's rdb_saves, LASTSAVE) once it is the one a restart returns to.
    stats.last_ok_time = int(time.time())
    stats.count += 1
    log.info("checkpoint complete", cut=stats.last_cut, pause_ms=round(stats.last_pause_ms, 2))


async def _capture(engine: RedisEngine, index: int, cut: str) -> Any:
    try:
        # Shards dtm spawned write one file per cut, so the last complete checkpoint
        # survives a crash in the middle of the next one.
        filename = cut_file(cut) if engine.spawned is not None else None
        return await engine.shards[index].capture(cut, filename)
    except ShardError as exc:
        return exc


def cut_file(cut: str) -> str:
    return f"dump-{cut}.rdb"


MANIFEST: Final = "checkpoint.json"


def recorded_cut(directory: Path) -> str | None:
    """The cut of the last checkpoint every spawned shard completed, from DIR's manifest."""
    path = directory / MANIFEST
    try:
        found = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise CheckpointFailed(f"{path} cannot be read: {exc}") from None
    cut = found.get("cut") if isinstance(found, dict) else None
    if not isinstance(cut, str):
        raise CheckpointFailed(f"{path} names no checkpoint")
    return cut


def record_cut(directory: Path, count: int, cut: str) -> None:
    """Make cut the one spawned shards start from (manifest written whole, fsynced and
    renamed into place), then drop older checkpoint files: their content is older than
    what replaces them."""
    path = directory / MANIFEST
    temporary = path.with_suffix(".tmp")
    with open(temporary, "w") as handle:
        handle.write(json.dumps({"cut": cut, "shards": count}))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    folder = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)
    keep = cut_file(cut)
    for index in range(count):
        for old in (directory / f"shard-{index}").glob("dump-*.rdb"):
            if old.name != keep:
                old.unlink(missing_ok=True)


async def _persistence(engine: RedisEngine, index: int) -> dict[str, str]:
    return await engine.shards[index].info("persistence")


async def _saving(engine: RedisEngine, index: int) -> bool:
    return (await _persistence(engine, index)).get("rdb_bgsave_in_progress") == "1"


async def _drain_commits(engine: RedisEngine, index: int) -> None:
    """Until no transaction decided to commit still has its intent on this shard (those
    undecided are held at decide by the barrier). A lapsed one is finished here."""
    while True:
        pending = await engine.shards[index].transactions()
        decided = []
        for txid in pending:
            primary = primary_of(txid)
            if primary is None or primary >= len(engine.shards):
                continue
            if await _meta(engine, primary, "GET", f"dtm:decision:{txid}") == COMMIT.encode():
                decided.append(txid)
        if not decided:
            return
        await engine.resolve_lapsed(index, decided)
        await trio.sleep(POLL)


async def clear_interrupted_checkpoint(engine: RedisEngine) -> None:
    """Shards just started from checkpoint files (spawned ones, all together) hold that
    checkpoint's own barrier and lease, set before their BGSAVE: no checkpoint is running
    on them now, so both go (else commits across shards would wait for the barrier to
    lapse, and checkpoints for the lease)."""
    await each(lambda i: _meta(engine, i, "DEL", BARRIER_KEY), range(len(engine.shards)))
    await _meta(engine, 0, "DEL", LEASE_KEY)


async def cuts(engine: RedisEngine) -> list[bytes | None]:
    """Each shard's cut id (None: never checkpointed)."""
    return await each(lambda i: _meta(engine, i, "GET", CUT_KEY), range(len(engine.shards)))


__all__ = ["CheckpointBusy", "CheckpointFailed", "CheckpointStats", "checkpoint", "cuts", "parse"]
