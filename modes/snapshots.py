"""Taking and loading snapshots of the whole keyspace, shared by every mode.

Taking one has two steps. ``capture`` copies every slot's dict (references to the
immutable values, not the values) in one synchronous step: no other task runs during it,
and every commit is applied in one synchronous step too, so the copy is one consistent
cut across all buckets. That copy is the only pause writers see; ``write`` then encodes
and writes the bucket files from a worker thread while the server goes on, and commits
the manifest last.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import attrs
import structlog
import trio

from dtm import clock, store
from modes.datadir import DataDir, DataDirError, new_manifest
from modes.snapshot import Entry

if TYPE_CHECKING:
    from dtm.bucket import BucketCut
    from dtm.keyspace import Keyspace

log = structlog.get_logger("dtm.snapshot")

PROGRESS_KEYS = 1_000_000  # a start-up progress line every this many keys

# db -> (the slot dicts that hold keys, the shard's deadlines)


@attrs.define
class Captured:
    seq: int
    time_ms: int
    buckets: list[BucketCut]
    databases: int
    pause_ms: float


@attrs.define
class SaveStats:
    saves: int = 0
    last_save_time: int = attrs.Factory(lambda: int(time.time()))
    last_duration_ms: float = 0.0
    last_pause_ms: float = 0.0
    max_pause_ms: float = 0.0
    last_status: str = "ok"
    last_keys: int = 0
    in_progress: bool = False


def capture(keyspace: Keyspace, seq: int) -> Captured:
    started = time.perf_counter()
    store.captured()  # values edited in place from now on are copied first (dtm/store.py)
    buckets = [bucket.capture() for bucket in keyspace.buckets]
    pause = (time.perf_counter() - started) * 1000
    return Captured(seq, clock.now_ms(), buckets, keyspace.databases, pause)


def _entries(cut: BucketCut, now: int) -> Iterator[Entry]:
    for db, slots, expires in cut:
        for data in slots:
            for key, value in data.items():
                deadline = expires.get(key) if expires else None
                if deadline is not None and deadline <= now:
                    continue  # already expired at the cut
                yield db, key, value, deadline


def write_captured(datadir: DataDir, captured: Captured, log_seq: int | None) -> dict[str, Any]:
    """Write every bucket file, then the manifest (runs in a worker thread)."""
    files = [
        datadir.write_bucket(captured.seq, index, _entries(cut, captured.time_ms))
        for index, cut in enumerate(captured.buckets)
    ]
    manifest = new_manifest(captured.seq, len(captured.buckets), captured.databases,
                            captured.time_ms, files, log_seq)
    datadir.commit_manifest(manifest)
    return manifest


class Snapshotter:
    """Takes snapshots one at a time and keeps the figures INFO persistence shows."""

    def __init__(self, datadir: DataDir) -> None:
        self.datadir = datadir
        self.stats = SaveStats()
        self.next_seq = 1
        self._lock = trio.Lock()

    async def take(self, keyspace: Keyspace, *, log_seq: int | None = None,
                   captured: Captured | None = None) -> dict[str, Any]:
        """Capture (unless given a capture) and write a snapshot; raises OSError or
        DataDirError if it cannot be written (the previous snapshot stays current)."""
        async with self._lock:
            self.stats.in_progress = True
            started = time.perf_counter()
            try:
                if captured is None:
                    captured = capture(keyspace, self.next_seq)
                self.next_seq = captured.seq + 1
                self.stats.last_pause_ms = captured.pause_ms
                self.stats.max_pause_ms = max(self.stats.max_pause_ms, captured.pause_ms)
                manifest = await trio.to_thread.run_sync(write_captured, self.datadir, captured, log_seq)
            except (OSError, DataDirError):
                self.stats.last_status = "err"  # the caller logs it
                if captured is not None:
                    # its partial folder would keep a full disk full
                    await trio.to_thread.run_sync(self.datadir.discard_snapshot, captured.seq)
                raise
            finally:
                self.stats.in_progress = False
            self.stats.saves += 1
            self.stats.last_status = "ok"
            self.stats.last_save_time = int(time.time())
            self.stats.last_duration_ms = (time.perf_counter() - started) * 1000
            self.stats.last_keys = manifest["keys"]
            log.info("snapshot written", seq=manifest["seq"], keys=manifest["keys"],
                     pause_ms=round(captured.pause_ms, 2),
                     duration_ms=round(self.stats.last_duration_ms, 1))
            try:
                await trio.to_thread.run_sync(self.datadir.remove_older_than, manifest["seq"])
            except OSError as exc:  # the new snapshot is current all the same
                log.warning("old snapshots or logs could not be removed", error=str(exc))
            return manifest

    def info(self) -> dict[str, Any]:
        stats = self.stats
        return {
            "rdb_bgsave_in_progress": int(stats.in_progress),
            "rdb_last_save_time": stats.last_save_time,
            "rdb_last_bgsave_status": stats.last_status,
            "rdb_last_bgsave_time_sec": round(stats.last_duration_ms / 1000, 3),
            "rdb_saves": stats.saves,
            "snapshot_last_pause_ms": round(stats.last_pause_ms, 3),
            "snapshot_max_pause_ms": round(stats.max_pause_ms, 3),
            "snapshot_last_keys": stats.last_keys,
        }


def restore(datadir: DataDir, keyspace: Keyspace, manifest: dict[str, Any]) -> int:
    """Load the manifest's snapshot into an empty keyspace; returns keys loaded. Keys are
    routed by slot, so a snapshot taken with another bucket count loads re-bucketed."""
    if manifest["buckets"] != len(keyspace.buckets):
        log.info("re-bucketing snapshot", snapshot_buckets=manifest["buckets"],
                 buckets=len(keyspace.buckets))
    loaded = 0
    now = clock.now_ms()
    for index, entry in enumerate(manifest["files"]):
        entries = datadir.read_bucket(entry)
        for db, key, value, deadline in entries:
            if db >= keyspace.databases:
                raise DataDirError(
                    f"snapshot holds database {db}, but this server has {keyspace.databases}; "
                    f"start with --databases {db + 1} or more"
                )
            if deadline is not None and deadline <= now:
                continue
            keyspace.view(db).slot(key).store(key, value, deadline)
            loaded += 1
            if loaded % PROGRESS_KEYS == 0:
                log.info("loading snapshot", keys=loaded, files_done=index, files=len(manifest["files"]))
    return loaded
