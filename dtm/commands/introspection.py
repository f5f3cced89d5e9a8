"""SLOWLOG, LATENCY, MONITOR and the CLIENT subcommands that change how a connection is
served (PAUSE, UNPAUSE, REPLY, NO-EVICT), with Redis 7's replies and error texts. The
state they read and change belongs to dtm.observe and dtm.pause."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from dtm.commands.connection import CLIENT
from dtm.commands.table import c_text, command, container, help_reply, subcommand_error
from dtm.errors import SYNTAX, err
from dtm.observe import LatencySeries
from dtm.pause import PauseKind
from dtm.resp import Verbatim, parse_int

if TYPE_CHECKING:
    from dtm.session import Session

GROUP = "server"


# ------------------------------------------------------------------- SLOWLOG

SLOWLOG = container("slowlog", group=GROUP, summary="The slow log", since="2.2.12")


@command("get", -2, "admin loading stale", group=GROUP, summary="Slow log entries", parent=SLOWLOG, since="2.2.12")
def slowlog_get(s: Session, argv: list[bytes]) -> Any:
    if len(argv) > 3:
        raise subcommand_error(argv)
    entries = s.server.observe.slowlog
    count = 10
    if len(argv) == 3:
        value = parse_int(argv[2])
        if value is None or value < -1:
            raise err("count should be greater than or equal to -1")
        count = len(entries) if value == -1 else value
    return [entry.reply() for entry, _ in zip(entries, range(count))]


@command("len", 2, "admin loading stale", group=GROUP, summary="Slow log length", parent=SLOWLOG, since="2.2.12")
def slowlog_len(s: Session, argv: list[bytes]) -> Any:
    return len(s.server.observe.slowlog)


@command("reset", 2, "admin loading stale", group=GROUP, summary="Empty the slow log", parent=SLOWLOG, since="2.2.12")
def slowlog_reset(s: Session, argv: list[bytes]) -> Any:
    s.server.observe.slowlog.clear()
    return "OK"


@command("help", 2, "loading stale", group=GROUP, summary="SLOWLOG subcommands", parent=SLOWLOG, since="6.2.0")
def slowloghelp_reply(s: Session, argv: list[bytes]) -> Any:
    return help_reply("SLOWLOG", [
        "GET [<count>]",
        "    Return top <count> entries from the slowlog (default: 10, -1 mean all).",
        "    Entries are made of:",
        "    id, timestamp, time in microseconds, arguments array, client IP and port,",
        "    client name",
        "LEN",
        "    Return the length of the slowlog.",
        "RESET",
        "    Reset the slowlog.",
    ])


# ------------------------------------------------------------------- LATENCY

LATENCY = container("latency", group=GROUP, summary="The latency monitor", since="2.8.13")
GRAPH_COLUMNS = 80
SPARK_ROWS = 4
SPARK_FILL = "_o#"


@command("latest", 2, "admin noscript loading stale", group=GROUP, summary="Latest latency samples", parent=LATENCY, since="2.8.13")
def latency_latest(s: Session, argv: list[bytes]) -> Any:
    return [
        [event.encode(), series.samples[-1][0], series.samples[-1][1], series.max]
        for event, series in s.server.observe.latency.items()
    ]


@command("history", 3, "admin noscript loading stale", group=GROUP, summary="Samples of one event", parent=LATENCY, since="2.8.13")
def latency_history(s: Session, argv: list[bytes]) -> Any:
    series = s.server.observe.latency.get(argv[2].decode("utf-8", "replace"))
    return [] if series is None else [[at, latency] for at, latency in series.samples]


@command("reset", -2, "admin noscript loading stale", group=GROUP, summary="Forget latency samples", parent=LATENCY, since="2.8.13")
def latency_reset(s: Session, argv: list[bytes]) -> Any:
    events = s.server.observe.latency
    if len(argv) == 2:
        count = len(events)
        events.clear()
        return count
    names = {arg.decode("utf-8", "replace") for arg in argv[2:]}
    return sum(events.pop(name, None) is not None for name in names)


@command("graph", 3, "admin noscript loading stale", group=GROUP, summary="ASCII graph of one event", parent=LATENCY, since="2.8.13")
def latency_graph(s: Session, argv: list[bytes]) -> Any:
    event = c_text(argv[2])  # Redis looks the C string up: a NUL ends the name
    series = s.server.observe.latency.get(event)
    if series is None:
        raise err(f"No samples available for event '{event}'")
    return Verbatim(_graph(event, series).encode())


def _graph(event: str, series: LatencySeries) -> str:
    """latencyCommandGenSparkeline: a header, a rule, and a sparkline labelled with how
    long ago each sample was taken."""
    now = int(time.time())
    values = [latency for _, latency in series.samples]
    labels = [_ago(now - at) for at, _ in series.samples]
    text = (
        f"{event} - high {max(values)} ms, low {min(values)} ms "
        f"(all time high {series.max} ms)\n" + "-" * GRAPH_COLUMNS + "\n"
    )
    low, high = min(values), max(values)
    chunks = []
    for offset in range(0, len(values), GRAPH_COLUMNS):
        chunks.append(_sparkline(values[offset:offset + GRAPH_COLUMNS],
                                 labels[offset:offset + GRAPH_COLUMNS], low, high))
    return text + "\n".join(chunks)


def _ago(elapsed: int) -> str:
    if elapsed < 60:
        return f"{elapsed}s"
    if elapsed < 3600:
        return f"{elapsed // 60}m"
    if elapsed < 86400:
        return f"{elapsed // 3600}h"
    return f"{elapsed // 86400}d"


def _sparkline(values: list[int], labels: list[str], low: int, high: int) -> str:
    """sparkline.c's renderer with SPARKLINE_FILL: rows of bars, then one blank row and
    the labels written downwards."""
    steps = len(SPARK_FILL) * SPARK_ROWS
    span = (high - low) or 1
    lines = []
    for row in range(SPARK_ROWS):
        chars = []
        for value in values:
            step = min(max(int(int((value - low) * steps) / span), 0), steps - 1)
            index = step - (SPARK_ROWS - row - 1) * len(SPARK_FILL)
            chars.append(SPARK_FILL[index] if 0 <= index < len(SPARK_FILL)
                         else "|" if index >= len(SPARK_FILL) else " ")
        lines.append("".join(chars))
    lines.append(" " * len(values))
    for depth in range(max(len(label) for label in labels)):
        lines.append("".join(label[depth] if depth < len(label) else " " for label in labels))
    return "".join(line + "\n" for line in lines)


@command("doctor", 2, "admin noscript loading stale", group=GROUP, summary="Latency report", parent=LATENCY, since="2.8.13")
def latency_doctor(s: Session, argv: list[bytes]) -> Any:
    return Verbatim(_report(s).encode())


def _report(s: Session) -> str:
    """createLatencyReport, for the events dtm records (command, fast-command)."""
    events = s.server.observe.latency
    config = s.server.config
    threshold = config.latency_monitor_threshold
    if not events and not threshold:
        return (
            "I'm sorry, Dave, I can't do that. Latency monitoring is disabled in this Redis "
            'instance. You may use "CONFIG SET latency-monitor-threshold <milliseconds>." in '
            "order to enable it. If we weren't in a deep space mission I'd suggest to take a "
            "look at https://redis.io/topics/latency-monitor.\n"
        )
    if not events:
        return (
            "Dave, no latency spike was observed during the lifetime of this Redis instance, "
            "not in the slightest bit. I honestly think you ought to sit down calmly, take a "
            "stress pill, and think things over.\n"
        )
    report = ("Dave, I have observed latency spikes in this Redis instance. You don't mind "
              "talking about it, do you Dave?\n\n")
    now = int(time.time())
    advice: dict[str, str] = {}
    for number, (event, series) in enumerate(events.items(), 1):
        latencies = [latency for _, latency in series.samples]
        average = sum(latencies) // len(latencies)
        deviation = sum(abs(average - x) for x in latencies) // len(latencies)
        period = (now - min(at for at, _ in series.samples)) or 1
        report += (
            f"{number}. {event}: {len(latencies)} latency spikes (average {average}ms, mean "
            f"deviation {deviation}ms, period {period / len(latencies):.2f} sec). Worst all "
            f"time event {series.max}ms.\n"
        )
        if event == "command":
            if config.slowlog_log_slower_than < 0 or config.slowlog_max_len == 0:
                advice["enable"] = (
                    "- There are latency issues with potentially slow commands you are using. "
                    "Try to enable the Slow Log Redis feature using the command 'CONFIG SET "
                    f"slowlog-log-slower-than {threshold * 1000}'. If the Slow log is disabled "
                    "Redis is not able to log slow commands execution for you.\n"
                )
            elif config.slowlog_log_slower_than // 1000 > threshold:
                advice["tune"] = (
                    "- Your current Slow Log configuration only logs events that are slower "
                    "than your configured latency monitor threshold. Please use 'CONFIG SET "
                    f"slowlog-log-slower-than {threshold * 1000}'.\n"
                )
            advice["inspect"] = (
                "- Check your Slow Log to understand what are the commands you are running "
                "which are too slow to execute. Please check https://redis.io/commands/slowlog "
                "for more information.\n"
            )
            advice["objects"] = (
                "- Deleting, expiring or evicting (because of maxmemory policy) large objects "
                "is a blocking operation. If you have very large objects that are often "
                "deleted, expired, or evicted, try to fragment those objects into multiple "
                "smaller objects.\n"
            )
        elif event == "fast-command":
            advice["scheduler"] = (
                "- The system is slow to execute Redis code paths not containing system calls. "
                "This usually means the system does not provide Redis CPU time to run for long "
                "periods. You should try to:\n"
                "  1) Lower the system load.\n"
                "  2) Use a computer / VM just for Redis if you are running other software in "
                "the same system.\n"
                '  3) Check if you have a "noisy neighbour" problem.\n'
                "  4) Check with 'redis-cli --intrinsic-latency 100' what is the intrinsic "
                "latency in your system.\n"
                "  5) Check if the problem is allocator-related by recompiling Redis with "
                "MALLOC=libc, if you are using Jemalloc. However this may create fragmentation "
                "problems.\n"
            )
    if not advice:
        return report + (
            "\nWhile there are latency events logged, I'm not able to suggest any easy fix. "
            "Please use the Redis community to get some help, providing this report in your "
            "help request.\n"
        )
    order = ("enable", "tune", "inspect", "scheduler", "objects")  # Redis's order
    return report + "\nI have a few advices for you:\n\n" + "".join(
        advice[key] for key in order if key in advice
    )


@command("histogram", -2, "admin noscript loading stale", group=GROUP, summary="Per-command latency histograms", parent=LATENCY, since="7.0.0")
def latency_histogram(s: Session, argv: list[bytes]) -> Any:
    # dtm keeps no per-command histograms: Redis's reply with latency-tracking off.
    return {}


@command("help", 2, "loading stale", group=GROUP, summary="LATENCY subcommands", parent=LATENCY, since="2.8.13")
def latencyhelp_reply(s: Session, argv: list[bytes]) -> Any:
    return help_reply("LATENCY", [
        "DOCTOR",
        "    Return a human readable latency analysis report.",
        "GRAPH <event>",
        "    Return an ASCII latency graph for the <event> class.",
        "HISTORY <event>",
        "    Return time-latency samples for the <event> class.",
        "LATEST",
        "    Return the latest latency samples for all events.",
        "RESET [<event> ...]",
        "    Reset latency data of one or more <event> classes.",
        "    (default: reset all data for all event classes)",
        "HISTOGRAM [COMMAND ...]",
        "    Return a cumulative distribution of latencies in the format of a histogram for the specified command names.",
        "    If no commands are specified then all histograms are replied.",
    ])


# ------------------------------------------------------------------- MONITOR


@command("monitor", 1, "admin noscript loading stale", group=GROUP, summary="Stream every command the server runs", since="1.0.0")
def monitor(s: Session, argv: list[bytes]) -> Any:
    from dtm.session import NO_REPLY

    if s.in_exec:
        raise err("MONITOR isn't allowed for DENY BLOCKING client")
    if not s.server.observe.start_monitor(s):
        return NO_REPLY  # already monitoring: Redis ignores it, without a reply
    return "OK"


# -------------------------------------------------------- CLIENT subcommands


@command("pause", -3, "admin noscript loading stale", group=GROUP, summary="Hold clients' commands for a while", parent=CLIENT, since="3.0.0")
def client_pause(s: Session, argv: list[bytes]) -> Any:
    if len(argv) > 4:
        raise subcommand_error(argv)
    kind = PauseKind.ALL
    if len(argv) == 4:
        mode = argv[3].lower()
        if mode not in (b"write", b"all"):
            raise err("CLIENT PAUSE mode must be WRITE or ALL")
        kind = PauseKind(mode.decode())
    timeout = parse_int(argv[2])
    if timeout is None:
        raise err("timeout is not an integer or out of range")
    if timeout < 0:
        raise err("timeout is negative")
    s.server.pause.pause(timeout / 1000, kind)
    return "OK"


@command("unpause", 2, "admin noscript loading stale", group=GROUP, summary="End a client pause", parent=CLIENT, since="6.2.0")
def client_unpause(s: Session, argv: list[bytes]) -> Any:
    s.server.pause.unpause()
    return "OK"


@command("reply", 3, "noscript loading stale", group=GROUP, summary="Turn this connection's replies on or off", parent=CLIENT, since="3.2.0")
def client_reply(s: Session, argv: list[bytes]) -> Any:
    from dtm.session import NO_REPLY, SKIP_NEXT

    mode = argv[2].lower()
    if mode == b"on":
        s.reply_off = False
        s.skip = 0
        s.muted = False
        return "OK"
    if mode == b"off":
        s.reply_off = s.muted = True
        return NO_REPLY
    if mode == b"skip":
        if not s.reply_off:
            s.skip = SKIP_NEXT
            s.muted = True
        return NO_REPLY
    raise SYNTAX


@command("no-evict", 3, "admin noscript loading stale", group=GROUP, summary="Exempt this connection from client eviction", parent=CLIENT, since="7.0.0")
def client_no_evict(s: Session, argv: list[bytes]) -> Any:
    mode = argv[2].lower()
    if mode not in (b"on", b"off"):
        raise SYNTAX
    s.no_evict = mode == b"on"
    return "OK"
