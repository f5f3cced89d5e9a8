"""What every durability mode shares (the interface itself is `dtm.durability`).

The monitor hands a mode each committed write as a ``CommitRecord`` (a single command or
a whole transaction, whatever buckets it spans) *after* it has locked the keys and
applied the change, holding only the commands that succeeded. A mode whose
``waits_for_commit`` is true is awaited there: the transaction's locks stay held and no
reply leaves until the mode says it is durable (binlog's group commit); if the mode
refuses it the monitor puts the keys back. A mode that makes nothing durable per commit
(``none``, ``checkpoint``) is never awaited, so it costs the fast path nothing; while
checkpoint mode cannot save, it switches ``waits_for_commit`` on to refuse writes.

Every mode can take snapshots (SAVE, BGSAVE) and, at start-up, loads the current one and
replays every log after it, whichever mode wrote them: a directory written in one mode
loads fully in any other, and a log is removed only by a snapshot that holds it.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import structlog
import trio

from dtm.durability import CommitRecord, FinalSaveFailed
from dtm.errors import CommandError, err
from modes.datadir import DataDir, DataDirError
from modes.record import Problem, scan
from modes.replay import ReplayError, ReplaySession, apply_record
from modes.snapshots import Snapshotter, restore

if TYPE_CHECKING:
    from dtm.server import Server

log = structlog.get_logger("dtm.mode")

SAVE_IN_PROGRESS = err("Background save already in progress")
PROGRESS_RECORDS = 500_000  # a start-up progress line every this many records
# Redis's stop-writes-on-bgsave-error reply, its names adapted.
SAVE_MISCONF = CommandError(
    "MISCONF dtm is configured to save checkpoints, but it's currently unable to persist to disk. "
    "Commands that may modify the data set are disabled, because this instance is configured to "
    "report errors during writes if checkpointing fails. Please check the dtm logs for details "
    "about the checkpoint error."
)


class ShutdownRefusal:
    """What the requester of a shutdown waits on: set only if it was refused."""

    def __init__(self) -> None:
        self.event = trio.Event()
        self.reason: str | None = None

    def refuse(self, reason: str) -> None:
        self.reason = reason
        self.event.set()


class SnapshottingMode:
    """What all modes share: the data directory, start-up loading (the current snapshot
    and every log after it, whichever mode wrote them), SAVE and BGSAVE."""

    name = "base"
    waits_for_commit = False
    # A mode that promises periodic saves refuses writes while it cannot save (Redis's
    # stop-writes-on-bgsave-error with save points set); ``none`` does not (save "").
    stops_writes_on_save_error = False
    # A mode that writes nothing on its own does not create --dir at start-up.
    creates_dir = True

    def __init__(self, directory: str, ops: Any = None) -> None:
        self.datadir = DataDir(directory, ops)
        self.snapshotter = Snapshotter(self.datadir)
        self.recovered_keys = 0
        self.replayed = 0  # log records replayed at start-up
        self.cut_bytes = 0  # bytes of a torn log tail cut at start-up
        self.replay_failed = 0  # logged commands that answered an error when replayed
        self.saving = False  # one snapshot at a time, whoever asks (SAVE, timer, log size)
        self.save_error: str | None = None  # the last save failed (and writes are refused)
        self._scheduled = False  # a BGSAVE SCHEDULE waits for the running save
        self._save_done = trio.Event()
        self._background: trio.Nursery | None = None

    # ------------------------------------------------------------ recovery

    def recover(self, server: Server) -> None:
        self.datadir.check_usable()
        if not self.creates_dir and self.datadir.is_untouched():
            return  # nothing dtm wrote: nothing to load (SAVE creates it)
        manifest = self.load_snapshot(server)
        self.replay_logs(server, manifest)

    def load_snapshot(self, server: Server) -> dict[str, Any] | None:
        """Prepare the directory and load its current snapshot (if any) into the
        keyspace; returns the manifest, which says which log follows it."""
        started = time.perf_counter()
        self.datadir.prepare()
        manifest = self.datadir.current_manifest()
        self.datadir.remove_unfinished_snapshots(manifest)
        seqs = self.datadir.snapshot_seqs() + self.datadir.log_seqs()
        self.snapshotter.next_seq = max(seqs, default=0) + 1
        if manifest is not None:
            self.recovered_keys = restore(self.datadir, server.keyspace, manifest)
            log.info("snapshot loaded", seq=manifest["seq"], keys=self.recovered_keys,
                     seconds=round(time.perf_counter() - started, 3))
        return manifest

    def replay_logs(self, server: Server, manifest: dict[str, Any] | None) -> list[int]:
        """Replay every log that follows the snapshot, whichever mode runs now: what a
        binlog holds is loaded by every mode, and stays on disk until a snapshot taken
        after this replay (so holding it all) retires it. Only a torn end of the last
        log is cut; damage before the end refuses the start-up."""
        seqs = self.datadir.logs_after(manifest)
        session = ReplaySession(server.keyspace, server.config)
        for position, seq in enumerate(seqs):
            path = self.datadir.log_path(seq)
            result, records = scan(path.read_bytes())
            last = position == len(seqs) - 1
            if result.problem is not Problem.NONE:
                if not (last and result.problem is Problem.TORN):
                    raise DataDirError(
                        f"Bad file format reading the binlog {path}: {result.detail} "
                        f"({result.problem.value}); `dtm check {self.datadir.path}` reports it and "
                        f"`dtm check {self.datadir.path} --repair` cuts the log there, losing what follows"
                    )
                self.cut_bytes = path.stat().st_size - result.good_end
                log.warning("binlog tail torn by a crash: cut", file=str(path),
                            at=result.good_end, bytes_cut=self.cut_bytes, detail=result.detail)
                self.datadir.cut_file(path, result.good_end)
            for record in records:
                try:
                    self.replay_failed += len(apply_record(session, record))
                except ReplayError as exc:
                    raise DataDirError(f"binlog {path}: {exc}; `dtm check {self.datadir.path}` "
                                       "reports it") from None
                self.replayed += 1
                if self.replayed % PROGRESS_RECORDS == 0:
                    log.info("replaying binlog", file=str(path), records=self.replayed)
        if seqs:
            log.info("binlog replayed", files=len(seqs), records=self.replayed, mode=self.name,
                     commands_failed=self.replay_failed)
        return seqs

    # ------------------------------------------------------------ commits

    def check_writable(self) -> None:
        if self.stops_writes_on_save_error and self.save_error is not None:
            raise SAVE_MISCONF

    async def commit(self, record: CommitRecord) -> None:
        # Awaited only while writes are refused (waits_for_commit is switched on then).
        self.check_writable()

    async def run(self, server: Server, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._background = nursery
            task_status.started()
            await self.background(server)

    async def background(self, server: Server) -> None:
        await trio.sleep_forever()

    # ------------------------------------------------------------ saving

    async def snapshot(self, server: Server) -> None:
        """Take a snapshot now (the mode decides how writes are held meanwhile)."""
        self.datadir.prepare()
        await self.snapshotter.take(server.keyspace)

    async def take_snapshot(self, server: Server) -> bool:
        """Take a snapshot unless one is being taken; False if one was. Raises OSError
        (or DataDirError) if it could not be written: the previous one stays current."""
        if self.saving:
            return False
        self.saving = True
        await self._saving(server)
        return True

    async def _saving(self, server: Server) -> None:
        """The save itself, self.saving already claimed; its outcome is recorded (INFO,
        the log, whether writes are refused) whoever asked for it."""
        try:
            await self.snapshot(server)
        except (OSError, DataDirError) as exc:
            self._save_failed(server, exc)
            raise
        else:
            self._save_succeeded(server)
        finally:
            self.saving = False
            self._save_done.set()
            self._save_done = trio.Event()

    def _save_failed(self, server: Server, exc: Exception) -> None:
        self.snapshotter.stats.last_status = "err"
        reason = (exc.strerror if isinstance(exc, OSError) and exc.strerror else None) or str(exc)
        self.save_error = reason
        if self.stops_writes_on_save_error:
            log.error("snapshot failed: refusing writes until a save succeeds", error=str(exc))
            self._refuse_writes(server, True)
        else:
            log.error("snapshot failed; the previous one stays current", error=str(exc))

    def _save_succeeded(self, server: Server) -> None:
        if self.save_error is not None:
            self.save_error = None
            if self.stops_writes_on_save_error:
                log.info("snapshot written again: accepting writes")
                self._refuse_writes(server, False)

    def _refuse_writes(self, server: Server, refuse: bool) -> None:
        # Switching waits_for_commit on sends every write through the monitor to
        # commit(), which refuses it: the fast path pays nothing for this.
        self.waits_for_commit = refuse
        server.durable = refuse

    async def save(self, server: Server, *, background: bool, schedule: bool = False) -> bool:
        """SAVE, or BGSAVE [SCHEDULE]; False when a BGSAVE SCHEDULE was deferred until
        the running save ends (at most one is pending, as in Redis)."""
        if self.saving:
            if background and schedule:
                if not self._scheduled:
                    assert self._background is not None
                    self._scheduled = True
                    self._background.start_soon(self._save_when_free, server)
                return False
            raise SAVE_IN_PROGRESS
        if background:
            assert self._background is not None
            self.saving = True  # claimed now, so a second BGSAVE is refused at once
            self._background.start_soon(self._background_save, server)
            return True
        try:
            await self.take_snapshot(server)
        except (OSError, DataDirError) as exc:
            raise err(f"snapshot failed: {exc}") from None
        return True

    async def _save_when_free(self, server: Server) -> None:
        while self.saving:
            await self._save_done.wait()
        self._scheduled = False
        self.saving = True
        await self._background_save(server)

    async def _background_save(self, server: Server) -> None:
        try:
            await self._saving(server)
        except (OSError, DataDirError):
            pass  # logged, and shown in INFO persistence (rdb_last_bgsave_status:err)

    async def shutdown(self, server: Server, *, save: bool | None) -> None:
        """Raises FinalSaveFailed when a save it needs fails: the caller keeps serving."""
        if save:
            await self._final_snapshot(server)

    async def _final_snapshot(self, server: Server) -> None:
        try:
            while not await self.take_snapshot(server):  # a running save: wait, then ours
                await self._save_done.wait()
        except (OSError, DataDirError) as exc:
            raise FinalSaveFailed(str(exc)) from None

    def last_save(self) -> int:
        return self.snapshotter.stats.last_save_time

    def info(self) -> dict[str, Any]:
        return {"dtm_mode": self.name, "aof_enabled": 0, **self.snapshotter.info(),
                "recovered_keys": self.recovered_keys, "snapshot_last_error": self.save_error or "",
                "writes_refused": int(self.stops_writes_on_save_error and self.save_error is not None)}


def misconf(reason: str) -> CommandError:
    return CommandError(f"MISCONF Errors writing to the binlog: {reason}. Writes are refused "
                        "until the disk works again; reads are served.")
