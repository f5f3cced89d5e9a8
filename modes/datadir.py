"""The data directory: its layout, its format version, and crash-safe file writes.

    DIR/dtm.format                    {"dtm_data_format": 1}: refused if different
    DIR/manifest.json                 names the current snapshot (atomically replaced)
    DIR/snapshots/<seq>/bucket-<i>.snap
    DIR/binlog/<seq>.log              the log started together with snapshot <seq>

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

    # ------------------------------------------------------------ the format

    def has_format(self) -> bool:
        return (self.path / FORMAT_FILE).exists()

    def prepare(self) -> None:
        """Create the directory (new) or check its format (existing); drop leftovers of
        writes that never completed."""
        self.path.mkdir(parents=True, exist_ok=True)
        marker = self.path / FORMAT_FILE
        if marker.exists():
            try:
                found = json.loads(marker.read_text()).get("dtm_data_format")
            except (ValueError, AttributeError):
                raise DataDirError(f"{marker} is damaged; is {self.path} a dtm data directory?") from None
            if found != DATA_FORMAT:
                raise DataDirError(
                    f"{self.path} was written in data format {found!r}; this dtm reads format "
                    f"{DATA_FORMAT}. Use the dtm version that wrote it, or another --dir."
                )
        else:
            if any(p.name not in (FORMAT_FILE,) for p in self.path.iterdir()):
                raise DataDirError(
                    f"{self.path} is not empty and has no {FORMAT_FILE}: not a dtm data directory"
                )
            self.write_file(marker, json.dumps({"dtm_data_format": DATA_FORMAT}).encode())
        self.snapshots.mkdir(exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        for leftover in self.path.rglob("*.tmp"):
            leftover.unlink()

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

    def load_manifest(self) -> dict[str, Any] | None:
        path = self.path / MANIFEST
        if not path.exists():
            return None
        try:
            return decode_manifest(path.read_bytes())
        except SnapshotError as exc:
            raise DataDirError(f"{path}: {exc}") from None

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

    def log_path(self, seq: int) -> Path:
        return self.logs / f"{seq:012d}.log"

    def log_seqs(self) -> list[int]:
        return sorted(int(p.stem) for p in self.logs.glob("*.log") if p.stem.isdigit())

    def snapshot_seqs(self) -> list[int]:
        return sorted(int(p.name) for p in self.snapshots.iterdir() if p.name.isdigit())

    def remove_older_than(self, seq: int) -> None:
        """Snapshots and logs that the current manifest no longer needs."""
        import shutil

        for old in self.snapshot_seqs():
            if old < seq:
                shutil.rmtree(self.snapshot_dir(old), ignore_errors=True)
        for old in self.log_seqs():
            if old < seq:
                self.log_path(old).unlink(missing_ok=True)


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
