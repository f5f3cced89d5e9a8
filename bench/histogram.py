"""An HDR-style latency histogram, sans-I/O: log-linear buckets with ~1.6% relative
precision from 1 µs to hours, constant memory, mergeable across clients and processes."""

from __future__ import annotations

from typing import Any

SUB_BUCKET_BITS = 6  # 64 sub-buckets per power of two: values within 1/64 are merged


def _index(value: int) -> int:
    if value < (1 << SUB_BUCKET_BITS):
        return value
    shift = value.bit_length() - SUB_BUCKET_BITS - 1
    return ((shift + 1) << SUB_BUCKET_BITS) + ((value >> shift) - (1 << SUB_BUCKET_BITS))


def _lowest(index: int) -> int:
    if index < (1 << SUB_BUCKET_BITS):
        return index
    shift = (index >> SUB_BUCKET_BITS) - 1
    return ((index & ((1 << SUB_BUCKET_BITS) - 1)) + (1 << SUB_BUCKET_BITS)) << shift


class Histogram:
    """Latencies in microseconds."""

    __slots__ = ("counts", "count", "total", "max")

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.count = 0
        self.total = 0
        self.max = 0

    def record(self, micros: int, times: int = 1) -> None:
        index = _index(micros)
        self.counts[index] = self.counts.get(index, 0) + times
        self.count += times
        self.total += micros * times
        if micros > self.max:
            self.max = micros

    def merge(self, other: Histogram) -> None:
        for index, n in other.counts.items():
            self.counts[index] = self.counts.get(index, 0) + n
        self.count += other.count
        self.total += other.total
        self.max = max(self.max, other.max)

    def percentile(self, fraction: float) -> int:
        """The smallest recorded value v with at least fraction of all values <= v."""
        if not self.count:
            return 0
        wanted = max(1, int(fraction * self.count + 0.999999))
        seen = 0
        for index in sorted(self.counts):
            seen += self.counts[index]
            if seen >= wanted:
                return min(_lowest(index + 1) - 1, self.max)
        return self.max

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0

    def to_state(self) -> dict[str, Any]:
        return {"counts": self.counts, "count": self.count, "total": self.total, "max": self.max}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Histogram:
        histogram = cls()
        histogram.counts = {int(k): v for k, v in state["counts"].items()}
        histogram.count, histogram.total, histogram.max = state["count"], state["total"], state["max"]
        return histogram
