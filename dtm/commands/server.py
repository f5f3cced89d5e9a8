"""Server commands: COMMAND, CONFIG, DBSIZE, FLUSHDB, FLUSHALL, TIME."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from dtm.commands import syntax
from dtm.commands.table import COMMANDS, Scope, Spec, command, container
from dtm.config import FIELDS, MUTABLE, REDIS_NAMES, redis_name, set_value
from dtm.errors import SYNTAX, ConfigError, err
from dtm.glob import glob_match

if TYPE_CHECKING:
    from dtm.commands.context import DataContext
    from dtm.session import Session

GROUP = "server"

# ------------------------------------------------------------------ COMMAND


# Redis's ACL categories of each command family (the group COMMAND DOCS shows).
_GROUP_CATEGORY = {
    "generic": "keyspace", "string": "string", "bitmap": "bitmap",
    "connection": "connection", "transactions": "transaction",
}


# Redis prints a command's categories in the order of its category table (acl.c).
_CATEGORY_ORDER = (
    "keyspace", "read", "write", "set", "sortedset", "list", "hash", "string", "bitmap",
    "hyperloglog", "geo", "stream", "pubsub", "admin", "fast", "slow", "blocking",
    "dangerous", "connection", "transaction", "scripting",
)


def acl_categories(spec: Spec) -> list[str]:
    """Derived as Redis derives its implicit ones (setImplicitACLCategories), plus the
    family's category."""
    if spec.subcommands and spec.handler is None:
        return ["@slow"]
    flags = spec.flags
    categories = {"fast" if "fast" in flags else "slow"}
    if "write" in flags:
        categories.add("write")
    if "readonly" in flags and spec.group not in ("connection", "server"):
        categories.add("read")
    family = _GROUP_CATEGORY.get(spec.group)
    if family:
        categories.add(family)
    if "admin" in flags:
        categories |= {"admin", "dangerous"}
    return ["@" + name for name in _CATEGORY_ORDER if name in categories]  # status replies


def _info_entry(spec: Spec) -> list[Any]:
    return [
        spec.fullname.encode(),
        spec.arity,
        [flag for flag in spec.flags if flag != "no_multi"],  # status replies, as Redis
        spec.first_key,
        spec.last_key,
        spec.step,
        acl_categories(spec),
        [],
        syntax.key_specs(spec.fullname, spec.first_key, spec.last_key, spec.step, spec.writes),
        [_info_entry(sub) for sub in spec.subcommands.values()],
    ]


def _doc_entry(spec: Spec) -> dict[bytes, Any]:
    doc: dict[bytes, Any] = {
        b"summary": spec.summary.encode(),
        b"since": spec.since.encode(),
        b"group": spec.group.encode(),
    }
    arguments = syntax.arguments(spec.fullname)
    if arguments:
        doc[b"arguments"] = list(arguments)
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


def command_all(s: Session, argv: list[bytes]) -> Any:
    """COMMAND with no argument: COMMAND INFO of every command."""
    return [_info_entry(spec) for spec in COMMANDS.values()]


COMMAND = container(
    "command", group=GROUP, summary="Details about commands", since="2.8.13", arity=-1,
    handler=command_all,
)


@command("count", 2, "loading stale", group=GROUP, summary="Number of commands", parent=COMMAND, since="2.8.13")
def command_count(s: Session, argv: list[bytes]) -> Any:
    return len(COMMANDS)


@command("list", -2, "loading stale", group=GROUP, summary="Command names", parent=COMMAND, since="7.0.0")
def command_list(s: Session, argv: list[bytes]) -> Any:
    names = [name for name in COMMANDS]
    if len(argv) == 5 and argv[2].lower() == b"filterby":
        kind, value = argv[3].lower(), argv[4]
        if kind == b"pattern":
            names = [n for n in names if glob_match(value, n, nocase=True)]
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


# ------------------------------------------------------------------- CONFIG

CONFIG = container("config", group=GROUP, summary="Server configuration", since="2.0.0")
# Read-only values that tools (redis-benchmark, redis-cli, monitoring, client test
# fixtures) read: what dtm does, in Redis's vocabulary.
EXTRA_CONFIG = {
    "io-threads": "1", "cluster-enabled": "no", "maxmemory": "0",
    "maxmemory-policy": "noeviction", "maxmemory-samples": "5", "maxmemory-clients": "0",
    "maxmemory-eviction-tenacity": "10", "tcp-keepalive": "300",
    "tcp-backlog": "511", "hz": "10", "notify-keyspace-events": "", "protected-mode": "no",
    "replica-read-only": "yes", "slave-read-only": "yes", "lua-time-limit": "5000",
    "busy-reply-threshold": "5000", "stop-writes-on-bgsave-error": "yes", "daemonize": "no",
    "supervised": "no", "logfile": "", "unixsocket": "", "lazyfree-lazy-user-flush": "no",
    "enable-debug-command": "yes", "latency-monitor-threshold": "0",
    "client-output-buffer-limit": "normal 0 0 0 slave 268435456 67108864 60 pubsub 33554432 8388608 60",
}


def _config_values(s: Session) -> dict[str, str]:
    server = s.server
    config = server.config
    values = {**EXTRA_CONFIG}
    for name, field in REDIS_NAMES.items():
        values[name] = str(getattr(config, field))
    values["port"] = str(server.port)
    values["dir"] = os.path.abspath(config.dir)  # Redis answers the absolute path
    # Agrees with INFO persistence's aof_enabled: the binlog is dtm's append-only file.
    aof = bool(server.mode.info().get("aof_enabled"))
    values["appendonly"] = "yes" if aof else "no"
    values["appendfsync"] = config.fsync if aof else "everysec"
    checkpoints = config.mode == "checkpoint"
    values["save"] = f"{max(int(config.checkpoint_interval), 1)} 1" if checkpoints else ""
    return values


@command("get", -3, "admin noscript loading stale", group=GROUP, summary="Read settings", parent=CONFIG)
def config_get(s: Session, argv: list[bytes]) -> Any:
    values = _config_values(s)
    found: dict[bytes, bytes] = {}
    for raw in argv[2:]:
        pattern = raw.lower()
        if b"*" not in pattern and b"?" not in pattern and b"[" not in pattern:
            value = values.get(pattern.decode("utf-8", "replace"))
            if value is not None:
                found[raw] = value.encode()  # an exact name is answered as it was asked
            continue
        for name, value in values.items():
            if glob_match(raw, name.encode(), nocase=True):  # as Redis: stringmatch(..., 1)
                found[name.encode()] = value.encode()
    return found


@command("set", -4, "admin noscript loading stale", group=GROUP, summary="Change settings", parent=CONFIG)
def config_set(s: Session, argv: list[bytes]) -> Any:
    if len(argv) % 2 != 0:
        raise err(
            f"Unknown option or number of arguments for CONFIG SET - '{argv[-1].decode('utf-8', 'replace')}'"
        )
    changes: dict[str, str] = {}
    current = _config_values(s)
    for i in range(2, len(argv), 2):
        name = argv[i].decode("utf-8", "replace").lower()
        field = REDIS_NAMES.get(name)
        if (field is None or field not in MUTABLE) and current.get(name) == argv[i + 1].decode(
                "utf-8", "replace"):
            continue  # a setting dtm fixes, given the value it has (`save ""`): nothing to do
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
def dbsize(s: DataContext, argv: list[bytes]) -> Any:
    return s.db.size()


def _flush_mode(argv: list[bytes]) -> None:
    if len(argv) > 2 or (len(argv) == 2 and argv[1].lower() not in (b"async", b"sync")):
        raise SYNTAX


@command("flushdb", -1, "write", group=GROUP, summary="Remove every key of the database", scope=Scope.ALL)
def flushdb(s: DataContext, argv: list[bytes]) -> Any:
    _flush_mode(argv)
    s.db.flush()
    return "OK"


@command("flushall", -1, "write", group=GROUP, summary="Remove every key", scope=Scope.ALL)
def flushall(s: DataContext, argv: list[bytes]) -> Any:
    _flush_mode(argv)
    for view in s.keyspace.views():
        view.flush()
    return "OK"


@command("time", 1, "loading stale fast", group=GROUP, summary="The server's time", since="2.6.0")
def time_(s: Session, argv: list[bytes]) -> Any:
    now = time.time_ns() // 1000
    return [b"%d" % (now // 1_000_000), b"%d" % (now % 1_000_000)]
