"""Is the load generator itself the bottleneck? Each worker process measures the CPU time
it used against the wall time it ran; a process busy nearly all the time could not have
sent requests any faster, so the throughput it reports is a lower bound for the server."""

from __future__ import annotations

import time

import attrs

BUSY_THRESHOLD = 0.9


@attrs.define
class CpuMeter:
    """CPU time (user + system) of this process against wall time, from start()."""

    cpu: float = 0.0
    wall: float = 0.0

    def start(self) -> None:
        self.cpu, self.wall = time.process_time(), time.monotonic()

    def busy(self) -> float:
        wall = time.monotonic() - self.wall
        return (time.process_time() - self.cpu) / wall if wall > 0 else 0.0


def warnings(busy: list[float], threshold: float = BUSY_THRESHOLD) -> list[str]:
    """One line when any worker process was saturated, saying what that means."""
    saturated = [b for b in busy if b >= threshold]
    if not saturated:
        return []
    return [
        f"load generator CPU-bound: {len(saturated)} of {len(busy)} worker processes were "
        f"busy {min(saturated):.0%}-{max(saturated):.0%} of the run (threshold {threshold:.0%}); "
        "requests/sec is a lower bound for the server (more --procs if cores are idle, "
        "or run dtm-bench on another machine)"
    ]
