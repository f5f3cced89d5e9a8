"""CPU time the servers under test spend, read from /proc (Linux): a run's figure per
request does not depend on what else loads the machine, so it says how throughput
would grow with cores where a 2-core machine's throughput cannot."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Self

TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def process_seconds(pid: int) -> float:
    """User + system CPU of pid and of its children it has waited for (a shard's BGSAVE
    forks); 0.0 when it is gone or /proc is not there."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    # the command name (field 2) may hold spaces: count fields after its ")"
    fields = text[text.rindex(")") + 2:].split()
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    return (utime + stime + cutime + cstime) / TICKS


def children(pid: int) -> list[int]:
    """pid's child processes (a front's spawned shards)."""
    found: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return found
    for task in tasks:
        try:
            found += [int(x) for x in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


class CpuSample:
    """CPU seconds of some processes (the fronts) and of their children (the shards),
    from construction to ``stop()``."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.kids = sorted({kid for pid in pids for kid in children(pid)})
        self._start = self._read()
        self.own = 0.0
        self.kids_seconds = 0.0

    def _read(self) -> tuple[float, float]:
        return (sum(process_seconds(p) for p in self.pids),
                sum(process_seconds(k) for k in self.kids))

    def stop(self) -> None:
        own, kids = self._read()
        self.own, self.kids_seconds = own - self._start[0], kids - self._start[1]


class CpuWindow:
    """While open, a thread samples the processes' CPU over [delay, delay + length] seconds
    from opening (inside a run's measured window: warm-up and stragglers left out);
    ``busy`` and ``kids_busy`` are cores kept busy on average then (None: not sampled)."""

    def __init__(self, pids: list[int], delay: float, length: float) -> None:
        self.pids, self.delay, self.length = pids, delay, length
        self.busy: float | None = None
        self.kids_busy: float | None = None
        self._cancel = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._cancel.set()
        self._thread.join()

    def _sample(self) -> None:
        if self.length <= 0 or self._cancel.wait(self.delay):
            return
        sample = CpuSample(self.pids)
        began = time.monotonic()
        if self._cancel.wait(self.length):
            return
        sample.stop()
        wall = time.monotonic() - began
        self.busy, self.kids_busy = sample.own / wall, sample.kids_seconds / wall
