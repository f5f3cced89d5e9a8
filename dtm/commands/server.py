"""Server commands: COMMAND, INFO, CONFIG, DBSIZE, FLUSHDB, FLUSHALL, TIME, SHUTDOWN."""

from __future__ import annotations

import os
import platform
import sys
import time
from typing import TYPE_CHECKING, Any

from dtm import REDIS_COMPAT_VERSION, __version__
from dtm.commands.table import COMMANDS, Scope, Spec, command, container
from dtm.config import FIELDS, MUTABLE, REDIS_NAMES, redis_name, set_value
from dtm.errors import SYNTAX, ConfigError, err
from dtm.glob import glob_match
from dtm.resp import NO_REPLY, Verbatim

if TYPE_CHECKING:
    from dtm.session import Session

GROUP = "server"

# ------------------------------------------------------------------ COMMAND


def _info_entry(spec: Spec) -> list[Any]:
    return [
        spec.fullname.encode(),
        spec.arity,
        [flag.encode() for flag in spec.flags if flag != "no_multi"],
        spec.first_key,
        spec.last_key,
        spec.step,
        [b"@" + spec.group.encode()],
        [],
        [],
        [_info_entry(sub) for sub in spec.subcommands.values()],
    ]


def _doc_entry(spec: Spec) -> dict[bytes, Any]:
    doc: dict[bytes, Any] = {
        b"summary": spec.summary.encode(),
        b"since": spec.since.encode(),
        b"group": spec.group.encode(),
    }
    if spec.subcommands:
        doc[b"subcommands"] = {
            sub.fullname.encode(): _doc_entry(sub) for sub in spec.subcommands.values()
        }
    return doc


def _lookup(name: bytes) -> Spec | None:
    parent, _, child = name.lower().partition(b"|")
    spec = COMMANDS.get(parent)
    if spec is not None and child:
        return spec.subcommands.get(child)
    return spec


COMMAND = container("command", group=GROUP, summary="Details about commands", since="2.8.13")


@command("count", 2, "loading stale", group=GROUP, summary="Number of commands", parent=COMMAND, since="2.8.13")
def command_count(s: Session, argv: list[bytes]) -> Any:
    return len(COMMANDS)


@command("list", -2, "loading stale", group=GROUP, summary="Command names", parent=COMMAND, since="7.0.0")
def command_list(s: Session, argv: list[bytes]) -> Any:
    names = [name for name in COMMANDS]
    if len(argv) == 5 and argv[2].lower() == b"filterby":
        kind, value = argv[3].lower(), argv[4]
        if kind == b"pattern":
            names = [n for n in names if glob_match(value.lower(), n)]
        elif kind == b"aclcat":
            names = [n for n in names if COMMANDS[n].group.encode() == value.lower()]
        elif kind == b"module":
            names = []
        else:
            raise SYNTAX
    elif len(argv) != 2:
        raise SYNTAX
    return names


@command("info", -2, "loading stale", group=GROUP, summary="Details of commands", parent=COMMAND, since="2.8.13")
def command_info(s: Session, argv: list[bytes]) -> Any:
    if len(argv) == 2:
        return [_info_entry(spec) for spec in COMMANDS.values()]
    return [_info_entry(spec) if (spec := _lookup(name)) else None for name in argv[2:]]


@command("docs", -2, "loading stale", group=GROUP, summary="Documentation of commands", parent=COMMAND, since="7.0.0")
def command_docs(s: Session, argv: list[bytes]) -> Any:
    if len(argv) == 2:
        return {name: _doc_entry(spec) for name, spec in COMMANDS.items()}
    docs = {}
    for name in argv[2:]:
        spec = _lookup(name)
        if spec is not None:
            docs[spec.fullname.encode()] = _doc_entry(spec)
    return docs


@command("getkeys", -3, "loading stale", group=GROUP, summary="Keys of a command", parent=COMMAND, since="2.8.13")
def command_getkeys(s: Session, argv: list[bytes]) -> Any:
    spec = _lookup(argv[2])
    if spec is None:
        raise err("Invalid command specified")
    if not spec.check_arity(len(argv) - 2):
        raise err("Invalid number of arguments specified for command")
    keys = spec.keys(argv[2:])
    if not keys:
        raise err("The command has no key arguments")
    return keys


@command("help", 2, "loading stale", group=GROUP, summary="COMMAND subcommands", parent=COMMAND, since="5.0.0")
def command_help(s: Session, argv: list[bytes]) -> Any:
    return [b"COMMAND <subcommand> [<arg> [value] [opt] ...]. Subcommands are:"] + [
        name.upper() for name in sorted(COMMAND.subcommands)
    ]


# --------------------------------------------------------------------- INFO

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


# ------------------------------------------------------------------- CONFIG

CONFIG = container("config", group=GROUP, summary="Server configuration", since="2.0.0")
# Read-only values that clients (redis-benchmark, redis-cli) ask for.
EXTRA_CONFIG = {"save": "", "appendonly": "no", "io-threads": "1", "cluster-enabled": "no"}


@command("get", -3, "admin noscript loading stale", group=GROUP, summary="Read settings", parent=CONFIG)
def config_get(s: Session, argv: list[bytes]) -> Any:
    config = s.server.config
    values = {**EXTRA_CONFIG}
    for name, field in REDIS_NAMES.items():
        values[name] = str(getattr(config, field))
    values["port"] = str(s.server.port)
    found: dict[bytes, bytes] = {}
    for pattern in argv[2:]:
        for name, value in values.items():
            if glob_match(pattern.lower(), name.encode()):
                found[name.encode()] = value.encode()
    return found


@command("set", -4, "admin noscript loading stale", group=GROUP, summary="Change settings", parent=CONFIG)
def config_set(s: Session, argv: list[bytes]) -> Any:
    if len(argv) % 2 != 0:
        raise err(
            f"Unknown option or number of arguments for CONFIG SET - '{argv[-1].decode('utf-8', 'replace')}'"
        )
    changes: dict[str, str] = {}
    for i in range(2, len(argv), 2):
        name = argv[i].decode("utf-8", "replace").lower()
        field = REDIS_NAMES.get(name)
        if field is None:
            raise err(f"Unknown option or number of arguments for CONFIG SET - '{name}'")
        if field in changes:
            raise err(f"CONFIG SET failed (possibly related to argument '{name}') - duplicate parameter")
        if field not in MUTABLE:
            raise err(f"CONFIG SET failed (possibly related to argument '{name}') - can't set immutable config")
        changes[field] = argv[i + 1].decode("utf-8", "replace")
    config = s.server.config
    before = {field: getattr(config, field) for field in changes}
    for field, raw in changes.items():
        try:
            set_value(config, field, raw)
        except ConfigError as exc:
            for restore, value in before.items():
                setattr(config, restore, value)
            raise err(
                f"CONFIG SET failed (possibly related to argument '{redis_name(field)}') - {exc}"
            ) from None
    s.server.config_changed()
    return "OK"


@command("resetstat", 2, "admin noscript loading stale", group=GROUP, summary="Reset statistics", parent=CONFIG, since="2.0.0")
def config_resetstat(s: Session, argv: list[bytes]) -> Any:
    s.server.reset_stats()
    return "OK"


@command("help", 2, "loading stale", group=GROUP, summary="CONFIG subcommands", parent=CONFIG, since="5.0.0")
def config_help(s: Session, argv: list[bytes]) -> Any:
    return [b"CONFIG <subcommand> [<arg> [value] [opt] ...]. Subcommands are:"] + [
        name.upper() for name in sorted(CONFIG.subcommands)
    ]


assert set(FIELDS) >= MUTABLE

# ------------------------------------------------------------ the keyspace


@command("dbsize", 1, "readonly fast", group=GROUP, summary="Number of keys", scope=Scope.ALL)
def dbsize(s: Session, argv: list[bytes]) -> Any:
    return s.db.size()


def _flush_mode(argv: list[bytes]) -> None:
    if len(argv) > 2 or (len(argv) == 2 and argv[1].lower() not in (b"async", b"sync")):
        raise SYNTAX


@command("flushdb", -1, "write", group=GROUP, summary="Remove every key of the database", scope=Scope.ALL)
def flushdb(s: Session, argv: list[bytes]) -> Any:
    _flush_mode(argv)
    s.db.flush()
    return "OK"


@command("flushall", -1, "write", group=GROUP, summary="Remove every key", scope=Scope.ALL)
def flushall(s: Session, argv: list[bytes]) -> Any:
    _flush_mode(argv)
    for view in s.server.keyspace.views():
        view.flush()
    return "OK"


@command("time", 1, "loading stale fast", group=GROUP, summary="The server's time", since="2.6.0")
def time_(s: Session, argv: list[bytes]) -> Any:
    now = time.time_ns() // 1000
    return [b"%d" % (now // 1_000_000), b"%d" % (now % 1_000_000)]


@command("shutdown", -1, "admin noscript loading stale no_multi", group=GROUP, summary="Stop the server")
async def shutdown(s: Session, argv: list[bytes]) -> Any:
    options = {arg.lower() for arg in argv[1:]}
    if not options <= {b"nosave", b"save", b"now", b"force", b"abort"} or {b"save", b"nosave"} <= options:
        raise SYNTAX
    if b"abort" in options:
        if len(options) > 1:
            raise SYNTAX
        raise err("No shutdown in progress.")
    s.log.info("shutdown requested by client")
    await s.server.request_shutdown(True if b"save" in options else False if b"nosave" in options else None)
    s.close_after_reply = True
    return NO_REPLY


# -------------------------------------------------------------- persistence


@command("save", 1, "admin noscript no_multi", group=GROUP, summary="Write a snapshot and wait for it")
async def save(s: Session, argv: list[bytes]) -> Any:
    await s.server.mode.save(s.server, background=False)
    return "OK"


@command("bgsave", -1, "admin noscript no_multi", group=GROUP, summary="Write a snapshot in the background")
async def bgsave(s: Session, argv: list[bytes]) -> Any:
    if len(argv) > 2 or (len(argv) == 2 and argv[1].lower() != b"schedule"):
        raise SYNTAX
    started = await s.server.mode.save(s.server, background=True, schedule=len(argv) == 2)
    return "Background saving started" if started else "Background saving scheduled"


@command("lastsave", 1, "loading stale fast", group=GROUP, summary="Time of the last successful snapshot", since="1.0.0")
def lastsave(s: Session, argv: list[bytes]) -> Any:
    return s.server.mode.last_save()
