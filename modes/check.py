"""``dtm check DIR [--repair]``: verify a data directory without changing it (format,
manifest and every file it names, every snapshot file's checksum, every log record, and
a replay of the logs in memory), and with ``--repair`` cut a damaged log at its last
good record, as redis-check-aof --fix does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs

from dtm.config import Config
from dtm.keyspace import Keyspace
from modes.datadir import DATA_FORMAT, FORMAT_FILE, DataDir, DataDirError
from modes.record import LogRecord, Problem, scan
from modes.replay import ReplayError, ReplaySession, apply_record
from modes.snapshots import restore

MAX_SHOWN = 10  # failing commands listed one by one per log


@attrs.define
class CheckReport:
    lines: list[str] = attrs.Factory(list)
    problems: int = 0
    repaired: int = 0

    def ok(self, text: str) -> None:
        self.lines.append(f"ok      {text}")

    def bad(self, text: str) -> None:
        self.problems += 1
        self.lines.append(f"PROBLEM {text}")

    def fixed(self, text: str) -> None:
        self.repaired += 1
        self.lines.append(f"REPAIRED {text}")


def check(directory: str, repair: bool = False) -> CheckReport:
    report = CheckReport()
    datadir = DataDir(directory)
    marker = datadir.path / FORMAT_FILE
    if not marker.exists():
        report.bad(f"{marker} missing: not a dtm data directory")
        return report
    try:
        datadir.read_format()
    except DataDirError as exc:
        report.bad(str(exc))
        return report
    report.ok(f"data format {DATA_FORMAT}")
    try:
        manifest = datadir.current_manifest()
    except DataDirError as exc:
        report.bad(str(exc))
        manifest = datadir.load_manifest_quietly()
    if manifest is None:
        report.ok("no snapshot")
    else:
        report.ok(f"manifest: snapshot {manifest['seq']}, {manifest['keys']} keys in "
                  f"{len(manifest['files'])} bucket files, log {manifest['log']}")
        for entry in manifest["files"]:
            try:
                datadir.read_bucket(entry)
                report.ok(f"{entry['file']}: {entry['keys']} keys, checksum good")
            except DataDirError as exc:
                report.bad(str(exc))
    seqs = datadir.logs_after(manifest)
    logs: list[tuple[Path, list[LogRecord]]] = []
    for position, seq in enumerate(seqs):
        path = datadir.log_path(seq)
        name = path.relative_to(datadir.path)
        result, records = scan(path.read_bytes())
        logs.append((path, records))
        if result.problem is Problem.NONE:
            report.ok(f"{name}: {result.records} records")
            continue
        if result.problem is Problem.TORN and position == len(seqs) - 1:
            report.bad(f"{name}: {result.records} good records, then a torn tail ({result.detail}); "
                       "the server cuts it at start-up")
        else:
            report.bad(f"{name}: {result.records} good records, then {result.problem.value}: "
                       f"{result.detail}; the server refuses to start")
        if repair and result.problem is not Problem.BAD_HEADER:
            size = path.stat().st_size
            datadir.cut_file(path, result.good_end)
            report.fixed(f"{name} cut at byte {result.good_end} ({size - result.good_end} bytes dropped)")
            for later in seqs[position + 1 :]:
                datadir.log_path(later).unlink()
                report.fixed(f"{datadir.log_path(later).relative_to(datadir.path)} removed "
                             "(it followed the damage)")
        break
    if not report.problems and any(records for _, records in logs):
        _replay(datadir, manifest, logs, report)
    return report


def _replay(datadir: DataDir, manifest: dict[str, Any] | None,
            logs: list[tuple[Path, list[LogRecord]]], report: CheckReport) -> None:
    """Replay the logs on the snapshot as a start-up would (in memory only): a logged
    command that fails or raises then is reported. This dtm logs only what it applied,
    so such a command was logged by an older dtm, or the log is damaged."""
    config = Config(databases=max(16, manifest["databases"] if manifest is not None else 0))
    keyspace = Keyspace(config.buckets, config.databases)
    if manifest is not None:
        restore(datadir, keyspace, manifest)
    session = ReplaySession(keyspace, config)
    for path, records in logs:
        name = path.relative_to(datadir.path)
        failed = 0
        for record in records:
            try:
                for argv, error in apply_record(session, record):
                    failed += 1
                    if failed <= MAX_SHOWN:
                        command = b" ".join(arg[:40] for arg in argv[:4]).decode("utf-8", "replace")
                        report.bad(f"{name}: txid {record.txid}: `{command}` fails when replayed "
                                   f"({error}); it is skipped")
            except ReplayError as exc:
                report.bad(f"{name}: {exc}; the server refuses to start")
                return
        if failed > MAX_SHOWN:
            report.bad(f"{name}: {failed - MAX_SHOWN} more commands fail when replayed")
        if not failed:
            report.ok(f"{name}: replays cleanly")
