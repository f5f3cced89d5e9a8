"""Which arguments of a command are keys, learnt from the shards' own ``COMMAND`` reply.

The redis engine forwards any command to redis-server shards, so the front must find a
command's keys (to hash them to buckets) for commands it has no handler for. Rather than
keep a table by hand, it asks a shard for ``COMMAND`` once and reads Redis 7's key specs:
each spec says where the search for keys begins (a fixed index, or after a keyword) and
how the keys are laid out from there (a range, or a count argument followed by keys).
``CommandInfo.keys`` evaluates them the way redis-server's ``getKeysUsingKeySpecs``
(db.c) does, so the answer is the one ``COMMAND GETKEYS`` gives, without a round trip.

Three answers:
- a list of argument indexes: what the specs locate (possibly empty: PING, SUBSCRIBE);
- ``[]`` also when this argv does not fit the specs (a numkeys that is not a number, is
  negative or zero, or runs past the end; a keyword with nothing after it). Redis's own
  search fails there and the command replies an error without touching a key, so there
  is nothing to route; it may go to any shard, which replies that error. (``COMMAND
  GETKEYS`` may still name keys for such an argv: it falls back to C helpers that parse
  numkeys with ``atoi``, so "1x" counts as 1; the command itself refuses "1x".)
- ``None`` when the specs cannot say: a spec of unknown kind (SORT's BY/GET/STORE, some
  module commands) or one flagged ``incomplete`` (MIGRATE's KEYS). ``CommandInfo.incomplete``
  tells the same thing per command; the caller then asks a shard ``COMMAND GETKEYS``.

The argv must have passed ``CommandInfo.arity_ok`` first (the caller must reply the
arity error anyway); for one that has not, the answer is safe (no exception) but means
nothing. Keys are compared case-insensitively up to a NUL byte, as C's ``strcasecmp``.

Sans-I/O: this module takes an already parsed reply and does no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import attrs

# Key spec flags (server.h CMD_KEY_*) that mean the command may change the key.
_WRITE_FLAGS = frozenset({"RW", "OW", "RM"})
_ACCESS_FLAGS = _WRITE_FLAGS | {"RO"}

KeyRef = tuple[int, bool]  # (argument index, the command may write that key)
_Finder = Callable[[Sequence[bytes]], list[int] | None]
_INT64_MAX = 2**63 - 1


class CommandInfoError(ValueError):
    """A ``COMMAND`` reply that is not shaped as Redis 7 sends it."""


@attrs.frozen(slots=True)
class KeySpec:
    """One of a command's key specs, as ``COMMAND`` describes it.

    ``begin`` is "index", "keyword" or "unknown"; ``find`` is "range", "keynum" or
    "unknown". Fields of the other kinds stay 0.
    """

    flags: frozenset[str]
    begin: str
    index: int = 0
    keyword: bytes = b""  # lower case, for the case-insensitive search
    startfrom: int = 0
    find: str = "unknown"
    lastkey: int = 0
    keystep: int = 1
    limit: int = 0
    keynumidx: int = 0
    firstkey: int = 0
    writes: bool = False

    @property
    def known(self) -> bool:
        """Whether the specs alone locate these keys (no GETKEYS needed)."""
        if "incomplete" in self.flags or self.keystep <= 0 or self.index < 0:
            return False
        if self.begin not in ("index", "keyword") or self.find not in ("range", "keynum"):
            return False
        # Redis asserts a limited range ends at -1; anything else is a spec we cannot read.
        return not (self.find == "range" and self.limit > 0 and self.lastkey != -1)


@attrs.frozen(slots=True, eq=False)
class CommandInfo:
    """One command (or subcommand, named like ``object|encoding``) of a shard."""

    name: str
    arity: int
    flags: frozenset[str]
    acl_categories: frozenset[str]
    tips: tuple[str, ...]
    key_specs: tuple[KeySpec, ...]
    # Subcommands by lower-case name, without the container's prefix (b"encoding").
    subcommands: Mapping[bytes, CommandInfo]
    # True when the specs cannot locate every key: keys() is then always None.
    incomplete: bool
    _keys: _Finder = attrs.field(repr=False)

    def arity_ok(self, argc: int) -> bool:
        """Redis's arity check: exactly ``arity`` arguments, or at least ``-arity``."""
        arity = self.arity
        return argc == arity if arity > 0 else argc >= -arity

    def keys(self, argv: Sequence[bytes]) -> list[int] | None:
        """Indexes of ``argv`` that are keys; see the module docstring for [] and None."""
        return self._keys(argv)

    def keys_with_flags(self, argv: Sequence[bytes]) -> list[KeyRef] | None:
        """Like ``keys``, each index paired with whether the command may write that key
        (a spec flagged RW, OW or RM). Where the flags vary with the arguments (SET ...
        GET, BITFIELD ... GET: ``variable_flags``) this is the spec's worst case, a write."""
        if self.incomplete:
            return None
        return _search(self.key_specs, argv)


def _search(specs: tuple[KeySpec, ...], argv: Sequence[bytes]) -> list[KeyRef]:
    """getKeysUsingKeySpecs over known specs; [] when any spec fails for this argv."""
    argc = len(argv)
    found: list[KeyRef] = []
    for spec in specs:
        if spec.begin == "index":
            first = spec.index
        else:
            first = _keyword_position(spec, argv)
            if not first:
                continue  # keyword absent: this spec has no keys here
        if first >= argc:
            return []
        step = spec.keystep
        if spec.find == "range":
            if spec.lastkey >= 0:
                last = first + spec.lastkey
            elif spec.limit:
                last = first + (argc - first) // spec.limit + spec.lastkey
            else:
                last = argc + spec.lastkey
        else:
            at = first + spec.keynumidx
            if not 0 <= at < argc:
                return []
            numkeys = _string2ll(argv[at])
            if numkeys is None or numkeys < 0:
                return []
            first += spec.firstkey
            last = first + numkeys - 1
        if last >= argc or last < first or first >= argc:
            return []
        writes = spec.writes
        found.extend((i, writes) for i in range(first, last + 1, step))
    return found


def _keyword_position(spec: KeySpec, argv: Sequence[bytes]) -> int:
    """Index just after the keyword, or 0 when absent; searched as Redis does (the last
    argument is never examined going forward, nor argument 1 going backward)."""
    argc = len(argv)
    if spec.startfrom > 0:
        start, end = spec.startfrom, argc - 1
    else:
        start, end = argc + spec.startfrom, 1
    step = 1 if start <= end else -1
    keyword = spec.keyword
    i = start
    while i != end:
        if i >= argc or i < 1:
            break
        arg = argv[i]
        if arg.lower() == keyword or (b"\0" in arg and arg.split(b"\0", 1)[0].lower() == keyword):
            return i + 1
        i += step
    return 0


def _string2ll(arg: bytes) -> int | None:
    """Redis's string2ll (util.c): optional '-', digits, no leading zero, no '+' or
    spaces, within a signed 64-bit integer."""
    if not arg or len(arg) > 20:
        return None
    digits = arg[1:] if arg[:1] == b"-" else arg
    if not digits.isdigit():
        return None
    if digits[:1] == b"0" and arg != b"0":
        return None
    value = int(arg)
    if not -_INT64_MAX - 1 <= value <= _INT64_MAX:
        return None
    return value


# --- per-command fast forms: keys() runs for every command on the front's hot path ---

def _no_keys(argv: Sequence[bytes]) -> list[int]:
    return []


def _unknown(argv: Sequence[bytes]) -> None:
    return None


def _one_key(index: int) -> _Finder:
    def keys(argv: Sequence[bytes]) -> list[int]:
        return [index] if index < len(argv) else []
    return keys


def _keys_to_end(first: int, lastkey: int, step: int) -> _Finder:
    # range(first, argc + lastkey + 1) is empty exactly when Redis's bounds check fails.
    def keys(argv: Sequence[bytes]) -> list[int]:
        return list(range(first, len(argv) + lastkey + 1, step))
    return keys


def _counted(numkeys_at: int, first: int, step: int) -> _Finder:
    # EVAL, FCALL, ZUNION, LMPOP...: a count, then that many keys. A count of zero
    # fails Redis's search too (last < first), so a positive count is needed.
    def keys(argv: Sequence[bytes]) -> list[int]:
        argc = len(argv)
        if numkeys_at >= argc:
            return []
        numkeys = _string2ll(argv[numkeys_at])
        if numkeys is None or numkeys <= 0 or first + numkeys > argc:
            return []
        return list(range(first, first + numkeys, step))
    return keys


def _general(specs: tuple[KeySpec, ...]) -> _Finder:
    def keys(argv: Sequence[bytes]) -> list[int]:
        return [i for i, _ in _search(specs, argv)]
    return keys


def _finder(specs: tuple[KeySpec, ...], incomplete: bool) -> _Finder:
    if incomplete:
        return _unknown
    if not specs:
        return _no_keys
    if len(specs) == 1:
        spec = specs[0]
        if spec.begin == "index" and spec.find == "range" and not spec.limit:
            if spec.lastkey == 0:
                return _one_key(spec.index)
            if spec.lastkey < 0:
                return _keys_to_end(spec.index, spec.lastkey, spec.keystep)
        if (spec.begin == "index" and spec.find == "keynum" and spec.keynumidx >= 0
                and spec.firstkey >= 1):
            return _counted(spec.index + spec.keynumidx, spec.index + spec.firstkey,
                            spec.keystep)
    return _general(specs)


# --- building from the COMMAND reply ---

def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, str):
        return value
    raise CommandInfoError(f"expected a string in COMMAND's reply, got {value!r}")


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise CommandInfoError(f"expected an integer in COMMAND's reply, got {value!r}")
    return value


def _fields(value: Any) -> dict[str, Any]:
    """A flat [name, value, ...] list (RESP2) or a map (RESP3) as a dict."""
    if isinstance(value, Mapping):
        return {_text(k): v for k, v in value.items()}
    if not isinstance(value, (list, tuple)) or len(value) % 2:
        raise CommandInfoError(f"expected name/value pairs in COMMAND's reply, got {value!r}")
    return {_text(value[i]): value[i + 1] for i in range(0, len(value), 2)}


def _key_spec(raw: Any, command_writes: bool) -> KeySpec:
    spec = _fields(raw)
    flags = frozenset(_text(f) for f in spec.get("flags", ()))
    # A spec without an access flag (a module's legacy range) is as the command is.
    writes = bool(flags & _WRITE_FLAGS) if flags & _ACCESS_FLAGS else command_writes
    begin = _fields(spec.get("begin_search", ()))
    find = _fields(spec.get("find_keys", ()))
    begin_type = _text(begin.get("type", "unknown"))
    find_type = _text(find.get("type", "unknown"))
    begin_args = _fields(begin.get("spec") or ())
    find_args = _fields(find.get("spec") or ())
    try:
        return KeySpec(
            flags=flags,
            begin=begin_type,
            index=_int(begin_args.get("index", 0)),
            keyword=_text(begin_args.get("keyword", "")).lower().encode(),
            startfrom=_int(begin_args.get("startfrom", 0)),
            find=find_type,
            lastkey=_int(find_args.get("lastkey", 0)),
            keystep=_int(find_args.get("keystep", 1)),
            limit=_int(find_args.get("limit", 0)),
            keynumidx=_int(find_args.get("keynumidx", 0)),
            firstkey=_int(find_args.get("firstkey", 0)),
            writes=writes,
        )
    except CommandInfoError:
        # A spec with arguments we cannot read is one we cannot evaluate.
        return KeySpec(flags=flags, begin="unknown", writes=writes)


def _command(entry: Any) -> CommandInfo:
    if not isinstance(entry, (list, tuple)) or len(entry) < 6:
        raise CommandInfoError(f"not a COMMAND entry: {entry!r}")
    name = _text(entry[0]).lower()
    arity = _int(entry[1])
    flags = frozenset(_text(f) for f in entry[2])
    first, last, step = _int(entry[3]), _int(entry[4]), _int(entry[5])
    acl = frozenset(_text(c) for c in entry[6]) if len(entry) > 6 else frozenset()
    tips = tuple(_text(t) for t in entry[7]) if len(entry) > 7 else ()
    writes = "write" in flags
    specs = tuple(_key_spec(s, writes) for s in entry[8]) if len(entry) > 8 else ()
    if not specs and first > 0 and step > 0 and "movablekeys" not in flags:
        # No key specs (Redis before 7, or a module): the legacy first/last/step.
        specs = (KeySpec(flags=frozenset(), begin="index", index=first, find="range",
                         lastkey=last - first if last >= 0 else last, keystep=step,
                         writes=writes),)
    # Specs flagged not_key name channels (SPUBLISH, SSUBSCRIBE), not keys.
    specs = tuple(s for s in specs if "not_key" not in s.flags)
    incomplete = (not all(s.known for s in specs)
                  or (not specs and "movablekeys" in flags))
    subcommands: dict[bytes, CommandInfo] = {}
    for raw in entry[9] if len(entry) > 9 else ():
        sub = _command(raw)
        subcommands[sub.name.rpartition("|")[2].encode()] = sub
    return CommandInfo(name, arity, flags, acl, tips, specs, subcommands, incomplete,
                       _finder(specs, incomplete))


@attrs.frozen(slots=True, eq=False)
class CommandTable:
    """A shard's commands by lower-case name, with their key positions."""

    commands: Mapping[bytes, CommandInfo]
    # Also by upper-case name: clients mostly send GET, not get, and lower() costs.
    _by_name: Mapping[bytes, CommandInfo] = attrs.field(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        by_name = {name.upper(): info for name, info in self.commands.items()}
        by_name.update(self.commands)
        object.__setattr__(self, "_by_name", by_name)

    @classmethod
    def from_command_info(cls, reply: Iterable[Any]) -> CommandTable:
        """Build from the parsed reply of ``COMMAND`` or ``COMMAND INFO name...``
        (RESP2 nested lists, as hiredis gives them; RESP3 maps are read too). Names
        ``COMMAND INFO`` did not know come back as nil and are skipped."""
        commands: dict[bytes, CommandInfo] = {}
        for entry in reply:
            if entry is None:
                continue
            info = _command(entry)
            commands[info.name.encode()] = info
        return cls(commands)

    def command(self, name: bytes) -> CommandInfo | None:
        """The top-level command ``name`` (any case), not resolving subcommands."""
        by_name = self._by_name
        return by_name.get(name) or by_name.get(name.lower())

    def lookup(self, argv: Sequence[bytes]) -> CommandInfo | None:
        """The command ``argv`` runs, as redis-server's lookupCommand finds it: for a
        container (OBJECT, CONFIG, XINFO...) with two or more arguments, its subcommand
        named by argv[1], or None when it has no such subcommand (Redis replies "unknown
        subcommand"; ``command(argv[0])`` tells that apart from an unknown command)."""
        if not argv:
            return None
        info = self.command(argv[0])
        if info is None or not info.subcommands or len(argv) == 1:
            return info
        return info.subcommands.get(argv[1].lower())

    def keys(self, argv: Sequence[bytes]) -> list[int] | None:
        """Key indexes of ``argv`` (see ``CommandInfo.keys``); None too for an unknown
        command or subcommand."""
        info = self.lookup(argv)
        return None if info is None else info.keys(argv)

    def keys_with_flags(self, argv: Sequence[bytes]) -> list[KeyRef] | None:
        info = self.lookup(argv)
        return None if info is None else info.keys_with_flags(argv)

    def __len__(self) -> int:
        return len(self.commands)

    def __iter__(self) -> Iterator[CommandInfo]:
        """Every command and subcommand."""
        for info in self.commands.values():
            yield info
            yield from info.subcommands.values()
