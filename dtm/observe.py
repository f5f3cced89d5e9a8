"""What the server observes about the commands it runs: per-command and per-error
counters, the slow log, latency events, network totals and instantaneous rates, and the
MONITOR feed. One ``Observer`` per server (``server.observe``); the session's dispatch
reports to it, INFO, SLOWLOG, LATENCY and MONITOR read it.

Per-command counters live on the command's Spec (``spec.stats``) so the fast path pays
one attribute update per command, and nothing else unless the command fails or is slow.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import attrs
import trio

if TYPE_CHECKING:
    from dtm.commands.table import Spec
    from dtm.config import Config
    from dtm.session import Session

# Redis's limits on what one slow log entry keeps (slowlog.c).
SLOWLOG_MAX_ARGC = 32
SLOWLOG_MAX_STRING = 128
# Distinct error prefixes tracked (Redis's ERROR_STATS_NUMBER); error texts come from
# the server, but a bound keeps the table small whatever happens.
ERROR_PREFIXES_MAX = 128
# Latency samples kept per event (latency.c LATENCY_TS_LEN).
LATENCY_SAMPLES = 160
# Instantaneous metrics: one sample every 100 ms, averaged over the last 16 (server.c).
SAMPLE_PERIOD = 0.1
RATE_SAMPLES = 16
# A MONITOR client that cannot keep up is disconnected rather than buffered forever.
MONITOR_BACKLOG_LIMIT = 64 * 1024 * 1024
REDACTED = b"(redacted)"


@attrs.define(slots=True)
class CommandStats:
    """One command's counters, as INFO commandstats shows them."""

    calls: int = 0
    ns: int = 0
    rejected: int = 0
    failed: int = 0

    def reset(self) -> None:
        self.calls = self.ns = self.rejected = self.failed = 0


@attrs.frozen
class SlowEntry:
    id: int
    timestamp: int
    usec: int
    argv: tuple[bytes, ...]
    addr: str
    name: bytes

    def reply(self) -> list[Any]:
        return [self.id, self.timestamp, self.usec, list(self.argv), self.addr.encode(), self.name]


def slowlog_argv(argv: list[bytes]) -> tuple[bytes, ...]:
    """argv as a slow log entry keeps it: at most 32 arguments of at most 128 bytes."""
    argc = len(argv)
    kept = min(argc, SLOWLOG_MAX_ARGC)
    out = []
    for i in range(kept):
        if kept != argc and i == kept - 1:
            out.append(b"... (%d more arguments)" % (argc - kept + 1))
            break
        arg = argv[i]
        if len(arg) > SLOWLOG_MAX_STRING:
            arg = arg[:SLOWLOG_MAX_STRING] + b"... (%d more bytes)" % (len(arg) - SLOWLOG_MAX_STRING)
        out.append(bytes(arg))
    return tuple(out)


def redacted(name: str, argv: list[bytes]) -> list[bytes]:
    """argv with secrets hidden, as Redis shows AUTH and HELLO … AUTH in MONITOR and the
    slow log."""
    if name == "auth":
        return [argv[0], *[REDACTED] * (len(argv) - 1)]
    if name == "hello":
        shown = list(argv)
        for i in range(2, len(argv)):
            if argv[i].lower() == b"auth" and i + 2 < len(argv):
                shown[i + 1] = shown[i + 2] = REDACTED
        return shown
    return argv


# sdscatrepr: printable ASCII as is, the usual escapes, everything else as \xHH.
_REPR = {i: b"\\x%02x" % i for i in range(256)}
_REPR.update({i: bytes([i]) for i in range(32, 127)})
_REPR.update({ord("\\"): b"\\\\", ord('"'): b'\\"', ord("\n"): b"\\n", ord("\r"): b"\\r",
              ord("\t"): b"\\t", 7: b"\\a", 8: b"\\b"})
_PLAIN = bytes(i for i in range(32, 127) if i not in (ord("\\"), ord('"')))


def quoted(arg: bytes) -> bytes:
    if not arg.translate(None, _PLAIN):
        return b'"' + arg + b'"'
    return b'"' + b"".join([_REPR[c] for c in arg]) + b'"'


@attrs.define
class LatencySeries:
    """One latency event's samples: one per second at most (the worst), newest last."""

    samples: collections.deque[tuple[int, int]] = attrs.field(
        factory=lambda: collections.deque(maxlen=LATENCY_SAMPLES)
    )
    max: int = 0

    def add(self, now: int, latency_ms: int) -> None:
        self.max = max(self.max, latency_ms)
        if self.samples and self.samples[-1][0] == now:
            if latency_ms > self.samples[-1][1]:
                self.samples[-1] = (now, latency_ms)
            return
        self.samples.append((now, latency_ms))


@attrs.define
class Rate:
    """An instantaneous per-second rate, sampled as Redis's trackInstantaneousMetric."""

    samples: list[int] = attrs.field(factory=lambda: [0] * RATE_SAMPLES)
    index: int = 0
    last_time: float = 0.0
    last_count: int = 0

    def sample(self, now: float, count: int) -> None:
        elapsed = now - self.last_time
        delta = max(0, count - self.last_count)  # counters restart at CONFIG RESETSTAT
        per_second = int(delta / elapsed) if elapsed > 0 and self.last_time else 0
        self.samples[self.index] = per_second
        self.index = (self.index + 1) % RATE_SAMPLES
        self.last_time, self.last_count = now, count

    def value(self) -> int:
        return sum(self.samples) // RATE_SAMPLES


class MonitorFeed:
    """One MONITOR client's pending lines, written by its own task so that a slow
    monitor never delays the commands it watches."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.pending: list[bytes] = []
        self.pending_bytes = 0
        self.wakeup = trio.Event()
        self.cancel_scope = trio.CancelScope()

    def push(self, line: bytes) -> None:
        self.pending.append(line)
        self.pending_bytes += len(line)
        if self.pending_bytes > MONITOR_BACKLOG_LIMIT:
            self.session.log.warning("closing MONITOR client that cannot keep up")
            self.pending.clear()
            self.session.kill()
            return
        self.wakeup.set()

    async def run(self) -> None:
        conn = self.session.conn
        with self.cancel_scope:
            try:
                while True:
                    await self.wakeup.wait()
                    self.wakeup = trio.Event()
                    data = b"".join(self.pending)
                    self.pending.clear()
                    self.pending_bytes = 0
                    await conn.send(data)
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the session sees the broken connection on its own


class Observer:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.errors: dict[str, int] = {}
        self.total_errors = 0
        self.slowlog: collections.deque[SlowEntry] = collections.deque()
        self.slowlog_next_id = 0
        self.latency: dict[str, LatencySeries] = {}
        self.net_input = 0
        self.net_output = 0
        self.ops_rate = Rate()
        self.input_rate = Rate()
        self.output_rate = Rate()
        # Sessions in MONITOR mode; the session's fast path is off while this is non-empty.
        self.monitors: dict[int, MonitorFeed] = {}
        self._nursery: trio.Nursery | None = None
        self.countdown = 1  # fast-path runs to the next one timed (the first is)
        self.slow_ns = 0
        self.configure()

    # ------------------------------------------------------------ counting

    def error(self, text: str) -> None:
        """An error reply went out: count it under its first word (Redis's errorstats)."""
        self.total_errors += 1
        space = text.find(" ", 0, 31)
        prefix = text[:space] if space > 0 else "ERR"
        errors = self.errors
        if prefix in errors:
            errors[prefix] += 1
        elif len(errors) < ERROR_PREFIXES_MAX:
            errors[prefix] = 1

    def configure(self) -> None:
        """Read the thresholds again (at start and after CONFIG SET)."""
        config = self.config
        limit = 1 << 62
        if config.slowlog_log_slower_than >= 0 and config.slowlog_max_len > 0:
            limit = config.slowlog_log_slower_than * 1000
        if config.latency_monitor_threshold:
            limit = min(limit, config.latency_monitor_threshold * 1_000_000)
        # Commands that take at least this many ns are offered to slow().
        self.slow_ns = limit

    def slow(self, session: Session, spec: Spec, argv: list[bytes], ns: int) -> None:
        """A command took ns: add it to the slow log and latency events if it qualifies."""
        usec = ns // 1000
        name = spec.name
        config = self.config
        threshold = config.slowlog_log_slower_than
        if 0 <= threshold <= usec and config.slowlog_max_len > 0 and "skip_slowlog" not in spec.flags:
            self.slowlog.appendleft(SlowEntry(
                self.slowlog_next_id, int(time.time()), usec,
                slowlog_argv(redacted(name, argv)), session.addr, session.name,
            ))
            self.slowlog_next_id += 1
            while len(self.slowlog) > config.slowlog_max_len:
                self.slowlog.pop()
        latency_threshold = config.latency_monitor_threshold
        if latency_threshold and usec // 1000 >= latency_threshold:
            self.add_latency("fast-command" if "fast" in spec.flags else "command", usec // 1000)

    def add_latency(self, event: str, latency_ms: int) -> None:
        series = self.latency.get(event)
        if series is None:
            series = self.latency[event] = LatencySeries()
        series.add(int(time.time()), latency_ms)

    def reset(self, specs: Iterable[Any]) -> None:
        """CONFIG RESETSTAT: command and error statistics start again."""
        for spec in specs:
            spec.stats.reset()
            for sub in spec.subcommands.values():
                sub.stats.reset()
        self.errors.clear()
        self.total_errors = 0
        self.net_input = self.net_output = 0

    # ------------------------------------------------------------- MONITOR

    def feed(self, session: Session, argv: list[bytes], name: str) -> None:
        """Show a command that ran to every MONITOR client (Redis's replicationFeedMonitors:
        after the command, with the database it left the client in)."""
        now = time.time()
        line = b"+%.6f [%d %s] %s\r\n" % (
            now, session.db.index, session.addr.encode(),
            b" ".join([quoted(arg) for arg in redacted(name, argv)]),
        )
        for feed in self.monitors.values():
            if feed.session is not session:
                feed.push(line)

    def start_monitor(self, session: Session) -> bool:
        """Put session in MONITOR mode; False if it already is."""
        if session.id in self.monitors:
            return False
        feed = MonitorFeed(session)
        self.monitors[session.id] = feed
        if self._nursery is not None:
            self._nursery.start_soon(feed.run)
        return True

    def stop_monitor(self, session: Session) -> None:
        feed = self.monitors.pop(session.id, None)
        if feed is not None:
            feed.cancel_scope.cancel()

    def is_monitor(self, session: Session) -> bool:
        return session.id in self.monitors

    # -------------------------------------------------------------- sampling

    async def run(
        self, commands: Any, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Sample the instantaneous rates every 100 ms, and host the MONITOR writers.
        commands() gives the server's running command count."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for feed in self.monitors.values():
                nursery.start_soon(feed.run)
            task_status.started()
            try:
                while True:
                    now = trio.current_time()
                    self.ops_rate.sample(now, commands())
                    self.input_rate.sample(now, self.net_input)
                    self.output_rate.sample(now, self.net_output)
                    await trio.sleep(SAMPLE_PERIOD)
            finally:
                self._nursery = None
