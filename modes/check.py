"""``dtm check DIR [--repair]``: verify a data directory without changing it (format,
manifest, every snapshot file's checksum, every log record), and with ``--repair`` cut
a damaged log at its last good record, as redis-check-aof --fix does."""

from __future__ import annotations

import json
import os

import attrs

from modes.datadir import DATA_FORMAT, FORMAT_FILE, DataDir, DataDirError
from modes.record import Problem, scan


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
        found = json.loads(marker.read_text()).get("dtm_data_format")
    except (ValueError, AttributeError):
        found = None
    if found != DATA_FORMAT:
        report.bad(f"data format {found!r}, this dtm reads {DATA_FORMAT}")
        return report
    report.ok(f"data format {DATA_FORMAT}")
    first_log = 0
    try:
        manifest = datadir.load_manifest()
    except DataDirError as exc:
        report.bad(str(exc))
        manifest = None
    if manifest is None:
        report.ok("no snapshot yet")
    else:
        report.ok(f"manifest: snapshot {manifest['seq']}, {manifest['keys']} keys in "
                  f"{len(manifest['files'])} bucket files, log {manifest['log']}")
        first_log = manifest["log"] or manifest["seq"]
        for entry in manifest["files"]:
            try:
                datadir.read_bucket(entry)
                report.ok(f"{entry['file']}: {entry['keys']} keys, checksum good")
            except DataDirError as exc:
                report.bad(str(exc))
    seqs = [seq for seq in datadir.log_seqs() if seq >= first_log] if datadir.logs.exists() else []
    for position, seq in enumerate(seqs):
        path = datadir.log_path(seq)
        result, _ = scan(path.read_bytes())
        if result.problem is Problem.NONE:
            report.ok(f"{path.relative_to(datadir.path)}: {result.records} records")
            continue
        report.bad(f"{path.relative_to(datadir.path)}: {result.records} good records, then "
                   f"{result.problem.value}: {result.detail}")
        if repair and result.problem is not Problem.BAD_HEADER:
            size = path.stat().st_size
            fd = os.open(path, os.O_WRONLY)
            try:
                os.ftruncate(fd, result.good_end)
                os.fsync(fd)
            finally:
                os.close(fd)
            report.fixed(f"{path.relative_to(datadir.path)} cut at byte {result.good_end} "
                         f"({size - result.good_end} bytes dropped)")
            for later in seqs[position + 1 :]:
                datadir.log_path(later).unlink()
                report.fixed(f"{datadir.log_path(later).relative_to(datadir.path)} removed "
                             "(it followed the damage)")
            break
    return report
