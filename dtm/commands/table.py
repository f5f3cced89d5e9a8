"""The command table: name → arity, flags, key positions, handler.

Handlers are plain functions ``handler(session, argv) -> reply``; they raise
``CommandError`` for error replies. ``asynchronous`` handlers are coroutines (EXEC,
SHUTDOWN, …). Key positions follow Redis's (first, last, step) convention and tell the
session and the monitor which keys a command touches, hence which buckets and locks.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import attrs

from dtm.errors import CommandError, err
from dtm.observe import CommandStats

if TYPE_CHECKING:
    from dtm.bucket import Slot
    from dtm.session import Session

Handler = Callable[["Session", list[bytes]], Any]
# A handler as written: it may take a narrower context than the Session (DataContext).
H = TypeVar("H", bound=Callable[..., Any])


class Scope(enum.Enum):
    """What part of the keyspace a command touches."""

    NONE = "none"  # no keys (PING, CLIENT …)
    KEYS = "keys"  # the keys at its key positions
    ALL = "all"  # the whole keyspace of a database or more (FLUSHALL, KEYS, SCAN …)


@attrs.frozen(eq=False)
class Spec:
    name: str
    arity: int
    flags: tuple[str, ...]
    handler: Handler | None
    group: str
    summary: str
    since: str = "1.0.0"
    first_key: int = 0
    last_key: int = 0
    step: int = 0
    scope: Scope = Scope.NONE
    asynchronous: bool = False
    parent: str | None = None
    # For commands whose keys live in more than one database (COPY … DB n).
    targets_fn: Callable[[Session, list[bytes]], list[Shard_Key]] | None = None
    subcommands: dict[bytes, Spec] = attrs.field(factory=dict)
    # The arity when the command may run as a plain call in the session's read loop
    # (see Session._run_batch), else None: one attribute read on the hot path.
    fast_arity: int | None = None
    # INFO commandstats counters, updated in place (the spec itself is immutable).
    stats: CommandStats = attrs.field(factory=CommandStats, eq=False, repr=False)
    # Derived from the fields above once (read for every command on the full path).
    writes: bool = attrs.field(init=False)
    multi_key: bool = attrs.field(init=False)

    @writes.default
    def _writes(self) -> bool:
        return "write" in self.flags

    @multi_key.default
    def _multi_key(self) -> bool:
        return self.scope is Scope.KEYS and (self.last_key != self.first_key)

    @property
    def fullname(self) -> str:
        return f"{self.parent}|{self.name}" if self.parent else self.name

    def keys(self, argv: list[bytes]) -> list[bytes]:
        if self.scope is not Scope.KEYS:
            return []
        last = self.last_key if self.last_key >= 0 else len(argv) + self.last_key
        return argv[self.first_key : last + 1 : self.step]

    def targets(self, session: Session, argv: list[bytes]) -> list[Shard_Key]:
        """The (shard, key) pairs the command touches in the session's database."""
        if self.targets_fn is not None:
            return self.targets_fn(session, argv)
        route = session.db.slot
        return [(route(key), key) for key in self.keys(argv)]

    def check_arity(self, argc: int) -> bool:
        return argc == self.arity if self.arity >= 0 else argc >= -self.arity


Shard_Key = tuple["Slot", bytes]

# Commands that change what the session's fast path depends on (auth, MULTI state,
# protocol, closing): they always take the full path.
SESSION_STATE = frozenset({"auth", "hello", "multi", "exec", "discard", "reset", "quit"})

COMMANDS: dict[bytes, Spec] = {}  # lower-case name -> spec
# The session's first lookup: lower- and upper-case names (what clients send).
LOOKUP: dict[bytes, Spec] = {}


def command(
    name: str,
    arity: int,
    flags: str,
    *,
    group: str,
    summary: str,
    keys: tuple[int, int, int] = (0, 0, 0),
    scope: Scope | None = None,
    since: str = "1.0.0",
    parent: Spec | None = None,
    targets: Callable[[Session, list[bytes]], list[Shard_Key]] | None = None,
) -> Callable[[H], H]:
    """Register the decorated function as a command (or as parent's subcommand)."""

    def register(handler: H) -> H:
        import inspect

        first, last, step = keys
        scope_ = scope or (Scope.KEYS if first else Scope.NONE)
        is_async = inspect.iscoroutinefunction(handler)
        # Never on the fast path: what awaits, spans buckets, or changes session state.
        guarded = is_async or (scope_ is Scope.KEYS and last != first) or targets is not None
        fast = parent is None and not guarded and name not in SESSION_STATE
        spec = Spec(
            name=name,
            arity=arity,
            flags=tuple(flags.split()),
            handler=handler,
            group=group,
            summary=summary,
            since=since,
            first_key=first,
            last_key=last,
            step=step,
            scope=scope_,
            asynchronous=is_async,
            fast_arity=arity if fast else None,
            parent=parent.name if parent else None,
            targets_fn=targets,
        )
        if parent is not None:
            parent.subcommands[name.encode()] = spec
        else:
            _register(spec)
        return handler

    return register


def container(
    name: str, *, group: str, summary: str, since: str = "1.0.0", arity: int = -2,
    handler: Handler | None = None,
) -> Spec:
    """A command with subcommands (CLIENT, CONFIG, COMMAND); handler answers the bare
    command when arity allows it (COMMAND with no argument)."""
    spec = Spec(
        name=name, arity=arity, flags=(), handler=handler, group=group, summary=summary,
        since=since,
    )
    _register(spec)
    return spec


def _register(spec: Spec) -> None:
    name = spec.name.encode()
    COMMANDS[name] = spec
    LOOKUP[name] = LOOKUP[name.upper()] = spec


def resolve(argv: list[bytes]) -> Spec:
    """Look up argv's command (and subcommand), checking arity: Redis's error texts."""
    name = argv[0]
    spec = COMMANDS.get(name) or COMMANDS.get(name.lower())
    if spec is None:
        raise unknown_command(argv)
    if spec.subcommands and (len(argv) >= 2 or spec.handler is None):
        if len(argv) < 2:
            raise err(f"wrong number of arguments for '{spec.name}' command")
        sub = spec.subcommands.get(argv[1].lower())
        if sub is None:
            raise err(
                f"unknown subcommand '{_shown(argv[1])}'. Try {spec.name.upper()} HELP."
            )
        spec = sub
    if not spec.check_arity(len(argv)):
        raise err(f"wrong number of arguments for '{spec.fullname}' command")
    return spec


def unknown_command(argv: list[bytes]) -> CommandError:
    # As Redis: the arguments are quoted until 128 bytes are shown, the last one cut to fit.
    shown = b""
    for arg in argv[1:]:
        if len(shown) >= 128:
            break
        shown += b"'" + _c_string(arg[: 128 - len(shown)]) + b"' "
    return err(
        f"unknown command '{_shown(argv[0])}', with args beginning with: "
        + shown.decode("utf-8", "replace")
    )


def help_reply(name: str, lines: list[str]) -> list[bytes]:
    """Redis's addReplyHelp: a header, the subcommands' lines, then HELP's own entry."""
    return [f"{name} <subcommand> [<arg> [value] [opt] ...]. Subcommands are:".encode()] + [
        line.encode() for line in [*lines, "HELP", "    Prints this help."]
    ]


def subcommand_error(argv: list[bytes]) -> CommandError:
    """Redis's addReplySubcommandSyntaxError: the subcommand as the client typed it (as
    C's %.128s prints it), and the container to ask for HELP."""
    return err(
        f"unknown subcommand or wrong number of arguments for '{_shown(argv[1])}'. "
        f"Try {_shown(argv[0]).upper()} HELP."
    )


def c_text(arg: bytes) -> str:
    """An argument as Redis's "%s" puts it in an error text: up to its first NUL byte."""
    return _c_string(arg).decode("utf-8", "replace")


def _c_string(arg: bytes) -> bytes:
    """What C's %s prints of an argument: up to its first NUL byte."""
    return arg.split(b"\0", 1)[0] if b"\0" in arg else arg


def _shown(arg: bytes, limit: int = 128) -> str:
    return _c_string(arg[:limit]).decode("utf-8", "replace")
