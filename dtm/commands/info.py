"""INFO: the server's sections, as Redis lays them out, plus dtm's own."""

from __future__ import annotations

import os
import platform
import sys
import time
from typing import TYPE_CHECKING, Any

from dtm import REDIS_COMPAT_VERSION, __version__
from dtm.commands.table import command
from dtm.resp import Verbatim

if TYPE_CHECKING:
    from dtm.session import Session

GROUP = "server"

SECTIONS = ("server", "clients", "memory", "persistence", "stats", "keyspace", "dtm")


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


def info_sections(s: Session) -> dict[str, dict[str, Any]]:
    server = s.server
    config = server.config
    uptime = int(time.time() - server.started)
    rss = _rss_bytes()
    stats = server.stats
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
            "rejected_connections": stats.rejected,
            "expired_keys": sum(b.expired_keys for b in server.keyspace.buckets),
        },
        "keyspace": keyspace,
        "dtm": dtm_section,
    }


@command("info", -1, "loading stale", group=GROUP, summary="Server information and statistics")
def info(s: Session, argv: list[bytes]) -> Any:
    wanted = {arg.decode("utf-8", "replace").lower() for arg in argv[1:]}
    everything = not wanted or wanted & {"all", "everything", "default"}
    parts = []
    for name, fields in info_sections(s).items():
        if everything or name in wanted:
            lines = [f"# {name.capitalize() if name != 'dtm' else 'DTM'}"]
            lines += [f"{key}:{value}" for key, value in fields.items()]
            parts.append("\r\n".join(lines) + "\r\n")
    return Verbatim("\r\n".join(parts).encode())


