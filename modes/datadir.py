"""The data directory: its layout, its format version, and crash-safe file writes.

    DIR/dtm.format                    {"dtm_data_format": 1, "snapshots": true}: refused
                                      if another format; "snapshots" once a manifest was
                                      ever committed, so a lost manifest is noticed
    DIR/manifest.json                 names the current snapshot (atomically replaced)
    DIR/snapshots/<seq>/bucket-<i>.snap
    DIR/binlog/<seq>.log              the log started together with snapshot <seq>

dtm owns these names and nothing else: any other file in DIR (``lost+found/``, a
``dump.rdb``) is left alone, as Redis leaves foreign files in its ``dir``.

Every file is written new, fsynced, renamed into place, and its directory fsynced.
All file-system calls go through ``FileOps`` so tests can inject failures (disk full,
failing fsync) and simulate a lost page cache.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from modes.snapshot import (
    FORMAT_VERSION,
    Entry,
    SnapshotEncoder,
    SnapshotError,
    decode_manifest,
    decode_snapshot,
    encode_manifest,
)

FORMAT_FILE = "dtm.format"
MANIFEST = "manifest.json"
DATA_FORMAT = 1


class DataDirError(Exception):
    """The directory cannot be used as it is: another format, or damaged files."""


class FileOps:
    """The file-system calls whose failure or loss durability depends on."""

    def open(self, path: Path, flags: int) -> int:
        return os.open(path, flags, 0o644)

    def write(self, fd: int, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]

    def fdatasync(self, fd: int) -> None:
        os.fdatasync(fd)

    def fsync(self, fd: int) -> None:
        os.fsync(fd)

    def truncate(self, fd: int, size: int) -> None:
        os.ftruncate(fd, size)

    def close(self, fd: int) -> None:
        os.close(fd)

    def replace(self, source: Path, target: Path) -> None:
        os.replace(source, target)

    def fsync_dir(self, path: Path) -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class DataDir:
    def __init__(self, path: str | Path, ops: FileOps | None = None) -> None:
        self.path = Path(path)
        self.ops = ops or FileOps()
        self.snapshots = self.path / "snapshots"
        self.logs = self.path / "binlog"
        self._format: dict[str, Any] = {}

    # ------------------------------------------------------------ the format

    def has_format(self) -> bool:
        return (self.path / FORMAT_FILE).exists()

    def is_untouched(self) -> bool:
        """True when dtm never wrote here (no file of dtm's name)."""
        return not self.path.is_dir() or not any(
            (self.path / name).exists() for name in (FORMAT_FILE, MANIFEST, "snapshots", "binlog")
        )

    def check_usable(self) -> None:
        """Refuse at start-up what could only fail later: a --dir that is not a
        directory (a regular file, a dangling path component)."""
        if self.path.exists() and not self.path.is_dir():
            raise DataDirError(f"--dir {self.path} exists and is not a directory")
        parent = self.path.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if parent.exists() and not parent.is_dir():
            raise DataDirError(f"--dir {self.path}: {parent} is not a directory")

    def read_format(self) -> dict[str, Any]:
        marker = self.path / FORMAT_FILE
        try:
            found = json.loads(marker.read_text())
            version = found.get("dtm_data_format")
        except (ValueError, AttributeError, UnicodeDecodeError):
            raise DataDirError(f"{marker} is damaged; is {self.path} a dtm data directory?") from None
        except OSError as exc:
            raise DataDirError(f"{marker} cannot be read: {exc.strerror}") from None
        if version != DATA_FORMAT:
            raise DataDirError(
                f"{self.path} was written in data format {version!r}; this dtm reads format "
                f"{DATA_FORMAT}. Use the dtm version that wrote it, or another --dir."
            )
        self._format = dict(found)
        return self._format

    def prepare(self) -> None:
        """Create the directory (new) or check its format (existing); drop leftovers of
        writes that never completed. Files dtm does not own are never touched."""
        self.check_usable()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DataDirError(f"--dir {self.path} cannot be created: {exc.strerror}") from None
        marker = self.path / FORMAT_FILE
        if marker.exists():
            self.read_format()
        else:
            owned = [name for name in (MANIFEST, "snapshots", "binlog") if (self.path / name).exists()]
            if owned:
                raise DataDirError(
                    f"{self.path} holds {', '.join(owned)} but no {FORMAT_FILE}: a damaged dtm data "
                    f"directory or another program's; refusing to guess"
                )
            self._format = {"dtm_data_format": DATA_FORMAT}
            self.write_file(marker, json.dumps(self._format).encode())
        self.snapshots.mkdir(exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        for leftover in [self.path / (FORMAT_FILE + ".tmp"), self.path / (MANIFEST + ".tmp"),
                         *self.logs.glob("*.tmp"), *self.snapshots.glob("*/*.tmp")]:
            leftover.unlink(missing_ok=True)
        if (self.path / MANIFEST).exists() and not self._format.get("snapshots"):
            self._record_snapshots()  # a directory written before the field existed

    def _record_snapshots(self) -> None:
        """Note in the format file that a manifest exists from now on: without it a
        manifest that goes missing would look like a directory never snapshotted."""
        self._format = {**self._format, "snapshots": True}
        self.write_file(self.path / FORMAT_FILE, json.dumps(self._format).encode())

    def had_snapshots(self) -> bool:
        return bool(self._format.get("snapshots"))

    # ------------------------------------------------------------ atomic files

    def write_file(self, target: Path, data: bytes) -> None:
        self.write_chunks(target, [data])

    def write_chunks(self, target: Path, chunks: Iterable[bytes]) -> int:
        """New file, fsync, rename into place, fsync the directory; returns its size."""
        temporary = target.with_name(target.name + ".tmp")
        fd = self.ops.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        size = 0
        try:
            for chunk in chunks:
                self.ops.write(fd, chunk)
                size += len(chunk)
            self.ops.fsync(fd)
        finally:
            self.ops.close(fd)
        self.ops.replace(temporary, target)
        self.ops.fsync_dir(target.parent)
        return size

    # ------------------------------------------------------------ snapshots

    def snapshot_dir(self, seq: int) -> Path:
        return self.snapshots / f"{seq:012d}"

    def write_bucket(self, seq: int, bucket: int, entries: Iterable[Entry]) -> dict[str, Any]:
        directory = self.snapshot_dir(seq)
        directory.mkdir(parents=True, exist_ok=True)
        encoder = SnapshotEncoder(bucket)
        target = directory / f"bucket-{bucket}.snap"
        size = self.write_chunks(target, encoder.encode(entries))
        return {"file": str(target.relative_to(self.path)), "bucket": bucket, "keys": encoder.count,
                "bytes": size}

    def commit_manifest(self, manifest: dict[str, Any]) -> None:
        """Make a snapshot current: the one atomic step of a checkpoint."""
        self.ops.fsync_dir(self.snapshot_dir(manifest["seq"]))
        self.write_file(self.path / MANIFEST, encode_manifest(manifest))
        if not self._format.get("snapshots"):
            self._record_snapshots()

    def discard_snapshot(self, seq: int) -> None:
        """Remove the folder of a snapshot that failed before its manifest was committed
        (it would otherwise hold the disk that is already full)."""
        import shutil

        current = self.load_manifest_quietly()
        if current is not None and current.get("seq") == seq:
            return  # committed after all: it is the current snapshot
        shutil.rmtree(self.snapshot_dir(seq), ignore_errors=True)

    def load_manifest_quietly(self) -> dict[str, Any] | None:
        try:
            return self.load_manifest()
        except DataDirError:
            return None

    def load_manifest(self) -> dict[str, Any] | None:
        path = self.path / MANIFEST
        if not path.exists():
            return None
        try:
            return decode_manifest(path.read_bytes())
        except SnapshotError as exc:
            raise DataDirError(f"{path}: {exc}") from None
        except OSError as exc:
            raise DataDirError(f"{path} cannot be read: {exc.strerror}") from None

    def current_manifest(self) -> dict[str, Any] | None:
        """The manifest recovery starts from, after checking that everything it names is
        there: a missing manifest (once there was one), a missing bucket file or a
        missing log refuses the start-up rather than starting with less."""
        manifest = self.load_manifest()
        if manifest is None:
            if self.had_snapshots():
                raise DataDirError(
                    f"{self.path / MANIFEST} is missing, but this directory has had snapshots: "
                    f"starting would lose them; restore the manifest or use another --dir"
                )
            return None
        for entry in manifest["files"]:
            if not (self.path / entry["file"]).is_file():
                raise DataDirError(f"snapshot file {self.path / entry['file']} named by the manifest is missing")
        if manifest.get("log") is not None and not self.log_path(manifest["log"]).is_file():
            raise DataDirError(f"binlog {self.log_path(manifest['log'])} named by the manifest is missing")
        return manifest

    def logs_after(self, manifest: dict[str, Any] | None) -> list[int]:
        """The logs recovery replays on top of the manifest's snapshot, in order: the one
        started with it and every later one (older ones hold only what it holds)."""
        if manifest is None:
            first = 0
        else:
            first = manifest["log"] if manifest.get("log") is not None else manifest["seq"] + 1
        return [seq for seq in self.log_seqs() if seq >= first]

    def read_bucket(self, entry: dict[str, Any]) -> list[Entry]:
        path = self.path / entry["file"]
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise DataDirError(f"snapshot file {path} cannot be read: {exc.strerror}") from None
        try:
            _, entries = decode_snapshot(data)
        except SnapshotError as exc:
            raise DataDirError(f"snapshot file {path} is damaged: {exc}") from None
        if len(entries) != entry["keys"]:
            raise DataDirError(f"snapshot file {path} holds {len(entries)} keys, manifest says {entry['keys']}")
        return entries

    # ------------------------------------------------------------ logs

    def cut_file(self, path: Path, size: int) -> None:
        """Cut a file back to size, durably (a torn or damaged log's tail)."""
        fd = self.ops.open(path, os.O_WRONLY)
        try:
            self.ops.truncate(fd, size)
            self.ops.fsync(fd)
        finally:
            self.ops.close(fd)

    def log_path(self, seq: int) -> Path:
        return self.logs / f"{seq:012d}.log"

    def log_seqs(self) -> list[int]:
        if not self.logs.is_dir():
            return []
        return sorted(int(p.stem) for p in self.logs.glob("*.log") if p.stem.isdigit())

    def snapshot_seqs(self) -> list[int]:
        if not self.snapshots.is_dir():
            return []
        return sorted(int(p.name) for p in self.snapshots.iterdir() if p.name.isdigit())

    def remove_older_than(self, seq: int) -> None:
        """Snapshots and logs that the current manifest no longer needs: the snapshot
        seq holds everything they hold (it was captured after they were replayed or
        written), so removing them loses nothing."""
        import shutil

        for old in self.snapshot_seqs():
            if old < seq:
                shutil.rmtree(self.snapshot_dir(old), ignore_errors=True)
        for old in self.log_seqs():
            if old < seq:
                self.log_path(old).unlink(missing_ok=True)

    def remove_unfinished_snapshots(self, manifest: dict[str, Any] | None) -> None:
        """At start-up: snapshot folders newer than the current one were never committed
        (a crash or a failure mid-checkpoint); they only hold the disk."""
        import shutil

        current = manifest["seq"] if manifest is not None else 0
        for seq in self.snapshot_seqs():
            if seq > current:
                shutil.rmtree(self.snapshot_dir(seq), ignore_errors=True)


def new_manifest(seq: int, buckets: int, databases: int, created_ms: int,
                 files: list[dict[str, Any]], log: int | None) -> dict[str, Any]:
    return {
        "format": FORMAT_VERSION,
        "seq": seq,
        "buckets": buckets,
        "databases": databases,
        "created_ms": created_ms,
        "files": files,
        "log": log,
        "keys": sum(f["keys"] for f in files),
    }
