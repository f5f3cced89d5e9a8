"""``binlog``: every committed write is one checksummed record in a log that is
fdatasync'ed before the write is acknowledged, with group commit.

A writer task waits one scheduling round (so every session with a ready request queues
its record), writes everything queued with one write and one fdatasync, then releases
every waiting transaction; meanwhile new commits queue up for the next round, so
throughput grows with concurrency. The sync runs in the event loop while the disk syncs
in under a millisecond on average, in a worker thread when it is slower. A transaction waits with its
key locks held and is applied only after its record is durable, so no client (reader or
writer) ever sees a write that a crash could lose. With ``--fsync everysec`` commits are
acknowledged once written and synced every second, as Redis's ``appendfsync everysec``.

Compaction: past ``--binlog-max-mb`` (and on SAVE/BGSAVE) new transactions are held at
a barrier, the ones in flight finish, the keyspace is captured and a new log started in
one step, writers resume, and the snapshot is written in the background; the manifest
names the snapshot and the log that follows it. Recovery = that snapshot + every log
from it on. A failed write or sync is never acknowledged: its clients get ``MISCONF``,
writes are refused, and the log is cut back to its last synced byte until the disk works
again.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

import structlog
import trio

from dtm.durability import CommitRecord
from dtm.errors import err
from modes.base import SnapshottingMode, misconf
from modes.datadir import DataDirError
from modes.record import MAGIC, RecordTooLarge, encode_record
from modes.snapshots import capture

if TYPE_CHECKING:
    from dtm.server import Server

log = structlog.get_logger("dtm.binlog")

RETRY_PERIOD = 1.0
# Syncs faster than this (on a running average) run in the event loop; slower ones move
# to a worker thread, and come back below half of it.
INLINE_SYNC_LIMIT = 0.001
# Weight of the newest sync in that average: one slow sync among fast ones (p99 of this
# disk is 1.7 ms against a 0.17 ms median) must not move syncs to the costlier thread.
SYNC_AVERAGE_WEIGHT = 0.2


class Batch:
    __slots__ = ("items", "waiters", "error")

    def __init__(self) -> None:
        self.items: list[bytes] = []
        self.waiters: list[trio.lowlevel.Task] = []
        self.error: str | None = None

    def finish(self, error: str | None) -> None:
        self.error = error
        for task in self.waiters:
            trio.lowlevel.reschedule(task)
        self.waiters = []


def _refuse_cancel(raise_cancel: object) -> trio.lowlevel.Abort:
    # A transaction whose record is queued must learn whether it was made durable: a
    # cancel (CLIENT KILL, shutdown) is delivered at its next checkpoint instead.
    return trio.lowlevel.Abort.FAILED


class BinlogMode(SnapshottingMode):
    name = "binlog"
    waits_for_commit = True

    def __init__(self, directory: str, *, fsync: str = "always", max_bytes: int = 64 << 20,
                 ops: Any = None) -> None:
        super().__init__(directory, ops)
        self.fsync_always = fsync == "always"
        self.fsync = fsync
        self.max_bytes = max_bytes
        self.fd: int | None = None
        self.log_seq = 0
        self.size = 0  # bytes in the current log
        self.synced_size = 0  # bytes of it known to be on disk
        self.error: str | None = None
        self.records = 0
        self.syncs = 0
        self.compactions = 0
        self.replayed = 0
        self.cut_bytes = 0
        self._batch = Batch()
        self._work = trio.Event()
        self._file_lock = trio.Lock()
        self._compact_wanted = trio.Event()
        self._inline = True
        self._sync_average = 0.0  # seconds

    # ------------------------------------------------------------ recovery

    def recover(self, server: Server) -> None:
        started = time.perf_counter()
        self.datadir.check_usable()
        manifest = self.load_snapshot(server)
        seqs = self.replay_logs(server, manifest)
        if seqs:
            self._open_log(seqs[-1])
        else:
            self._open_log(self.snapshotter.next_seq)
            self.snapshotter.next_seq += 1
        log.info("recovered", snapshot_keys=self.recovered_keys, records_replayed=self.replayed,
                 seconds=round(time.perf_counter() - started, 3))

    def _open_log(self, seq: int) -> None:
        """Make seq the log appended to (creating it with its header if new)."""
        ops = self.datadir.ops
        path = self.datadir.log_path(seq)
        fd = ops.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        size = os.fstat(fd).st_size
        if size == 0:
            try:
                ops.write(fd, MAGIC)
                ops.fsync(fd)
                ops.fsync_dir(path.parent)
            except OSError:
                # A headless log left between two good ones would read as damage at
                # the next start: it never held a record, so it goes.
                ops.close(fd)
                path.unlink(missing_ok=True)
                raise
            size = len(MAGIC)
        if self.fd is not None:
            ops.close(self.fd)
        self.fd, self.log_seq, self.size, self.synced_size = fd, seq, size, size

    # ------------------------------------------------------------ commits

    def check_writable(self) -> None:
        if self.error is not None:
            raise misconf(self.error)

    async def commit(self, record: CommitRecord) -> None:
        self.check_writable()
        try:
            encoded = encode_record(record.txid, record.time_ms, record.commands)
        except RecordTooLarge as exc:
            # Refused, so the monitor undoes it before anyone is told: a record the
            # log's length field cannot hold could never be replayed.
            raise err(f"transaction too large for the binlog: {exc}") from None
        batch = self._batch
        batch.items.append(encoded)
        self._work.set()
        if self.fsync_always:
            batch.waiters.append(trio.lowlevel.current_task())
            await trio.lowlevel.wait_task_rescheduled(_refuse_cancel)
            if batch.error is not None:
                raise misconf(batch.error)

    async def background(self, server: Server) -> None:
        assert self._background is not None
        self._background.start_soon(self._writer)
        self._background.start_soon(self._repairer, server)
        self._background.start_soon(self._compactor, server)
        if not self.fsync_always:
            self._background.start_soon(self._syncer)
        await trio.sleep_forever()

    async def _writer(self) -> None:
        try:
            while True:
                await self._work.wait()
                await trio.sleep(0)  # one scheduling round: let every ready session queue
                self._work = trio.Event()
                while self._batch.items:
                    async with self._file_lock:
                        await self._write_batch()
                    if self.size > self.max_bytes:
                        self._compact_wanted.set()
        finally:
            # Stopped (server exit, or a crash simulated by cancelling): what is queued
            # was not made durable, so its transactions fail rather than wait forever.
            self._batch.finish("the server is stopping")

    async def _write_batch(self) -> None:
        """Write (and, with fsync always, sync) the queued records; caller holds the lock."""
        batch, self._batch = self._batch, Batch()
        if not batch.items:
            return
        if self.error is None:
            data = b"".join(batch.items)
            try:
                await self._append_adaptively(data)
            except OSError as exc:
                self._fail(exc)
            else:
                self.size += len(data)
                self.records += len(batch.items)
                if self.fsync_always:
                    self.synced_size = self.size
                    self.syncs += 1
        batch.finish(self.error)

    async def _append_adaptively(self, data: bytes) -> None:
        """Write and sync in the event loop while the disk syncs fast (as Redis does: a
        thread handoff costs more than a fast fdatasync), in a worker thread once syncs
        get slow, so a slow disk never stalls the readers."""
        if self._inline:
            took = self._append(data)
        else:
            took = await trio.to_thread.run_sync(self._append, data)
        self._sync_average += SYNC_AVERAGE_WEIGHT * (took - self._sync_average)
        self._inline = self._sync_average < (INLINE_SYNC_LIMIT if self._inline else INLINE_SYNC_LIMIT / 2)

    def _append(self, data: bytes) -> float:
        """Write (and sync) data; the seconds it took, thread handoff not included."""
        assert self.fd is not None
        started = time.perf_counter()
        self.datadir.ops.write(self.fd, data)
        if self.fsync_always:
            self.datadir.ops.fdatasync(self.fd)
        return time.perf_counter() - started

    async def _syncer(self) -> None:
        """--fsync everysec: make what was written durable once a second."""
        while True:
            await trio.sleep(1)
            async with self._file_lock:
                if self.error is None and self.size > self.synced_size and self.fd is not None:
                    target = self.size
                    try:
                        await trio.to_thread.run_sync(self.datadir.ops.fdatasync, self.fd)
                    except OSError as exc:
                        self._fail(exc)
                    else:
                        self.synced_size = target
                        self.syncs += 1

    def _fail(self, exc: OSError) -> None:
        self.error = exc.strerror or str(exc)
        log.error("binlog write failed: refusing writes until the disk works", error=self.error)

    async def _repairer(self, server: Server) -> None:
        """After a failure: cut the log back to its last synced byte; once that works,
        accept writes again (and snapshot, so memory and disk agree once more)."""
        while True:
            await trio.sleep(RETRY_PERIOD)
            if self.error is None:
                continue
            async with self._file_lock:
                try:
                    await trio.to_thread.run_sync(self._cut_to_synced)
                except OSError:
                    continue
                self.size = self.synced_size
                self.error = None
            log.info("binlog writable again")
            if not self.fsync_always:
                self._compact_wanted.set()

    def _cut_to_synced(self) -> None:  # in a worker thread
        assert self.fd is not None
        self.datadir.ops.truncate(self.fd, self.synced_size)
        self.datadir.ops.fdatasync(self.fd)

    # ------------------------------------------------------------ compaction

    async def _compactor(self, server: Server) -> None:
        while True:
            await self._compact_wanted.wait()
            self._compact_wanted = trio.Event()
            if self.error is not None:
                continue
            try:
                await self.take_snapshot(server)
            except (OSError, DataDirError) as exc:
                log.error("compaction failed; the log goes on", error=str(exc))

    async def snapshot(self, server: Server) -> None:
        """Hold new transactions, let those in flight finish, capture the keyspace and
        start a new log at that one cut; then write the snapshot in the background."""
        monitor = server.monitor
        started = time.perf_counter()
        release = monitor.hold()
        try:
            await monitor.wait_idle()
            async with self._file_lock:
                await self._write_batch()  # everysec: what is written but queued
                if self.error is not None:
                    raise OSError(self.error)
                seq = self.snapshotter.next_seq
                captured = capture(server.keyspace, seq)
                if self.fd is not None and self.size > self.synced_size:
                    self.datadir.ops.fdatasync(self.fd)
                self._open_log(seq)
        finally:
            release()
        captured.pause_ms = (time.perf_counter() - started) * 1000
        await self.snapshotter.take(server.keyspace, log_seq=seq, captured=captured)
        self.compactions += 1

    async def shutdown(self, server: Server, *, save: bool | None) -> None:
        async with self._file_lock:
            await self._write_batch()
            if self.fd is not None and self.error is None and self.size > self.synced_size:
                try:
                    self.datadir.ops.fdatasync(self.fd)
                except OSError as exc:
                    # Logged; as Redis at exit, go on: with --fsync always nothing
                    # unsynced was acknowledged.
                    self._fail(exc)
                else:
                    self.synced_size = self.size
        if save:
            await self._final_snapshot(server)
        if self.fd is not None:
            self.datadir.ops.close(self.fd)
            self.fd = None

    def info(self) -> dict[str, Any]:
        return {
            **super().info(),
            "aof_enabled": 1,
            "binlog_fsync": self.fsync,
            "binlog_current_file": self.log_seq,
            "binlog_current_size": self.size,
            "binlog_synced_size": self.synced_size,
            "binlog_pending_records": len(self._batch.items),
            "binlog_records_written": self.records,
            "binlog_syncs": self.syncs,
            "binlog_compactions": self.compactions,
            "binlog_records_replayed": self.replayed,
            "binlog_tail_bytes_cut": self.cut_bytes,
            "binlog_last_error": self.error or "",
            "binlog_sync_in_thread": int(not self._inline),
        }
