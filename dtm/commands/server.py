"""Server commands: COMMAND, CONFIG, DBSIZE, FLUSHDB, FLUSHALL, TIME."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from dtm.commands.table import COMMANDS, Scope, Spec, command, container
from dtm.config import FIELDS, MUTABLE, REDIS_NAMES, redis_name, set_value
from dtm.errors import SYNTAX, ConfigError, err
from dtm.glob import glob_match

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
