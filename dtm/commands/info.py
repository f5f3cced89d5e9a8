"""INFO: the server's sections, as Redis lays them out and selects them, plus dtm's own."""

from __future__ import annotations

import hashlib
import os
import platform
import resource
import sys
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from dtm import REDIS_COMPAT_VERSION, __version__
from dtm.commands.table import COMMANDS, Spec, command
from dtm.resp import Verbatim

if TYPE_CHECKING:
    from dtm.session import Session

GROUP = "server"

# Every section in Redis's order (dtm's own last); which of them each selector names.
SECTIONS = (
    "server", "clients", "memory", "persistence", "stats", "replication", "cpu", "modules",
    "commandstats", "errorstats", "latencystats", "cluster", "keyspace", "dtm",
)
DEFAULT = frozenset(SECTIONS) - {"commandstats", "latencystats"}
# `all` leaves out only sections that modules add, and dtm has no modules.
ALL = frozenset(SECTIONS)
TITLES = {"cpu": "CPU", "dtm": "DTM"}


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _human(size: int) -> str:
    for unit, factor in (("G", 1024**3), ("M", 1024**2), ("K", 1024)):
        if size >= factor:
            return f"{size / factor:.2f}{unit}"
    return f"{size}B"


def _cpu() -> dict[str, str]:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    thread = resource.getrusage(getattr(resource, "RUSAGE_THREAD", resource.RUSAGE_SELF))
    return {
        "used_cpu_sys": f"{own.ru_stime:.6f}",
        "used_cpu_user": f"{own.ru_utime:.6f}",
        "used_cpu_sys_children": f"{children.ru_stime:.6f}",
        "used_cpu_user_children": f"{children.ru_utime:.6f}",
        "used_cpu_sys_main_thread": f"{thread.ru_stime:.6f}",
        "used_cpu_user_main_thread": f"{thread.ru_utime:.6f}",
    }


def _replication(s: Session) -> dict[str, Any]:
    """A master without replicas, as Redis prints it."""
    return {
        "role": "master",
        "connected_slaves": 0,
        "master_failover_state": "no-failover",
        # Stable for the life of the process, like Redis's replid (not the run_id).
        "master_replid": hashlib.sha1(s.server.run_id.encode()).hexdigest(),
        "master_replid2": "0" * 40,
        "master_repl_offset": 0,
        "second_repl_offset": -1,
        "repl_backlog_active": 0,
        "repl_backlog_size": 1048576,
        "repl_backlog_first_byte_offset": 0,
        "repl_backlog_histlen": 0,
    }


def _specs() -> Iterator[Spec]:
    for spec in COMMANDS.values():
        yield spec
        yield from spec.subcommands.values()


def _commandstats(s: Session) -> dict[str, str]:
    fields = {}
    for spec in _specs():
        st = spec.stats
        if st.calls or st.rejected or st.failed:
            usec = st.ns // 1000
            per_call = st.ns / 1000 / st.calls if st.calls else 0.0
            fields[f"cmdstat_{spec.fullname}"] = (
                f"calls={st.calls},usec={usec},usec_per_call={per_call:.2f},"
                f"rejected_calls={st.rejected},failed_calls={st.failed}"
            )
    return fields


def _errorstats(s: Session) -> dict[str, str]:
    errors = s.server.observe.errors
    return {f"errorstat_{name}": f"count={errors[name]}" for name in sorted(errors)}


def info_sections(s: Session) -> dict[str, dict[str, Any]]:
    """Every section and its fields, in Redis's order."""
    server = s.server
    config = server.config
    uptime = int(time.time() - server.started)
    rss = _rss_bytes()
    stats = server.stats
    observe = server.observe
    monitor = server.monitor.stats
    total_tx = monitor.committed + monitor.aborted
    keyspace: dict[str, Any] = {}
    for view in server.keyspace.views():
        count = view.size()
        if count:
            keyspace[f"db{view.index}"] = f"keys={count},expires={view.expiring()},avg_ttl=0"
    dtm_section: dict[str, Any] = {
        "dtm_version": __version__,
        "buckets": len(server.keyspace.buckets),
        "mode": server.mode.name,
    }
    for bucket in server.keyspace.buckets:
        dtm_section[f"bucket{bucket.index}"] = (
            f"slots={bucket.slots.start}-{bucket.slots.stop - 1},keys={bucket.key_count()}"
        )
    dtm_section.update(
        transactions_committed=monitor.committed,
        transactions_aborted=monitor.aborted,
        transactions_cross_bucket=monitor.cross_bucket,
        cross_bucket_share=f"{monitor.cross_bucket / monitor.committed:.4f}" if monitor.committed else "0.0000",
        lock_waits=monitor.lock_waits,
        transactions_total=total_tx,
    )
    return {
        "server": {
            "redis_version": REDIS_COMPAT_VERSION,
            "redis_mode": "standalone",
            "dtm_version": __version__,
            "os": f"{platform.system()} {platform.release()} {platform.machine()}",
            "arch_bits": 64 if sys.maxsize > 2**32 else 32,
            "multiplexing_api": "trio",
            "python_version": platform.python_version(),
            "process_id": os.getpid(),
            "run_id": server.run_id,
            "tcp_port": server.port,
            "uptime_in_seconds": uptime,
            "uptime_in_days": uptime // 86400,
            "executable": sys.argv[0],
        },
        "clients": {
            "connected_clients": len(server.clients),
            "maxclients": config.maxclients,
            "blocked_clients": 0,
        },
        "memory": {
            "used_memory": rss,
            "used_memory_human": _human(rss),
            "used_memory_rss": rss,
            "used_memory_rss_human": _human(rss),
            "maxmemory": 0,
        },
        "persistence": {"loading": 0, **server.mode.info()},
        "stats": {
            "total_connections_received": stats.connections,
            "total_commands_processed": stats.commands,
            "instantaneous_ops_per_sec": observe.ops_rate.value(),
            "total_net_input_bytes": observe.net_input,
            "total_net_output_bytes": observe.net_output,
            "instantaneous_input_kbps": f"{observe.input_rate.value() / 1024:.2f}",
            "instantaneous_output_kbps": f"{observe.output_rate.value() / 1024:.2f}",
            "rejected_connections": stats.rejected,
            "expired_keys": sum(b.expired_keys for b in server.keyspace.buckets),
            "evicted_keys": 0,
            "evicted_clients": 0,
            "pubsub_channels": 0,
            "pubsub_patterns": 0,
            "total_error_replies": observe.total_errors,
        },
        "replication": _replication(s),
        "cpu": _cpu(),
        "modules": {},
        "commandstats": _commandstats(s),
        "errorstats": _errorstats(s),
        "latencystats": {},  # no per-command histograms: Redis with latency-tracking no
        "cluster": {"cluster_enabled": 0},
        "keyspace": keyspace,
        "dtm": dtm_section,
    }


def selected(args: list[bytes]) -> set[str]:
    """The sections INFO's arguments name, as Redis 7's genInfoSectionDict: none means
    default; `all` and `everything` all of them; unknown names select nothing."""
    if not args:
        return set(DEFAULT)
    wanted: set[str] = set()
    for arg in args:
        name = arg.decode("utf-8", "replace").lower()
        if name == "default":
            wanted |= DEFAULT
        elif name in ("all", "everything"):
            wanted |= ALL
        elif name == "module_list":
            wanted.add("modules")
        else:
            wanted.add(name)
    return wanted


@command("info", -1, "loading stale", group=GROUP, summary="Server information and statistics")
def info(s: Session, argv: list[bytes]) -> Any:
    wanted = selected(argv[1:])
    parts = []
    for name, fields in info_sections(s).items():
        if name in wanted:
            lines = [f"# {TITLES.get(name, name.capitalize())}"]
            lines += [f"{key}:{value}" for key, value in fields.items()]
            parts.append("\r\n".join(lines) + "\r\n")
    return Verbatim("\r\n".join(parts).encode())


