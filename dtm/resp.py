"""RESP2/RESP3 codec, sans-I/O: requests in, replies out. Imports no trio.

Requests are parsed exactly as Redis's networking.c does (multibulk and inline), with the
same limits and error texts, checked on the headers before any payload is buffered.
``make_parser()`` returns the hiredis-accelerated parser when hiredis is installed; it
defers to the pure-Python parser for anything unusual, so both give the same commands and
the same errors.

Replies are plain Python values (see ``encode``), so a command handler never needs to know
which protocol its client speaks.
"""

from __future__ import annotations

import math
import re
import sys
from typing import Any, Protocol

import attrs

from dtm.errors import CommandError, ProtocolError

try:  # the C parser is optional: the pure one below is the reference
    import hiredis
except ImportError:  # pragma: no cover - hiredis is a declared dependency
    hiredis = None  # type: ignore[assignment]

INLINE_MAX = 64 * 1024  # Redis's PROTO_INLINE_MAX_SIZE
DEFAULT_MAX_BULK = 512 * 1024 * 1024  # proto-max-bulk-len
MAX_MULTIBULK = 2**31 - 1  # INT_MAX, as Redis
UNAUTH_MAX_MULTIBULK = 10
UNAUTH_MAX_BULK = 16384
# string2ll refuses longer strings (LONG_STR_SIZE - 1): "-9223372036854775808" is 20.
MAX_INT_CHARS = 20
# What an argument costs besides its payload: the bytes object and its list slot.
ARG_OVERHEAD = sys.getsizeof(b"") + 8
# A bulk this big is copied out of the buffer through a view, not a slice (one copy).
BIG_ARG = 32 * 1024

Command = list[bytes]


def parse_int(raw: bytes) -> int | None:
    """Redis's string2ll: optional '-', no '+', no spaces, no leading zeros, fits int64."""
    if len(raw) > MAX_INT_CHARS:  # also keeps int() clear of its digit limit
        return None
    digits = raw[1:] if raw[:1] == b"-" else raw
    if not digits.isdigit() or (digits[0] == 48 and (len(digits) > 1 or digits is not raw)):
        return None
    value = int(raw)
    if -(2**63) <= value < 2**63:
        return value
    return None


@attrs.define
class Limits:
    max_bulk: int = DEFAULT_MAX_BULK
    authenticated: bool = True  # False: the tighter unauthenticated limits apply


class RequestParser(Protocol):
    limits: Limits

    def feed(self, data: bytes) -> None: ...

    def take(self, limit: int = 0) -> list[Command]: ...

    def next_command(self) -> Command | None: ...

    def pending(self) -> int: ...


class PureParser:
    """The reference request parser: Redis's processMultibulkBuffer/processInlineBuffer."""

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self._buf = bytearray()
        self._pos = 0
        self._error: ProtocolError | None = None
        # state of a multibulk request being read across feeds
        self._args: list[bytes] | None = None
        self._args_bytes = 0  # memory held by _args: buffered input too
        self._remaining = 0
        self._bulk_len = -1

    def feed(self, data: bytes) -> None:
        # Drop what was consumed before buffering more, so that a request that never
        # ends on a read boundary cannot keep the whole stream. Deleting a bytearray's
        # head only moves its start; the block shrinks once less than half is live.
        if self._pos:
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    def pending(self) -> int:
        """Bytes of input held: unparsed bytes and the arguments of a request not yet
        complete (what client-query-buffer-limit bounds)."""
        return len(self._buf) - self._pos + self._args_bytes

    def take(self, limit: int = 0) -> list[Command]:
        """The complete commands buffered (at most limit, if given); a protocol error
        after some commands is raised by the following call, so the commands before it
        still run."""
        return _take(self, limit)

    def idle(self) -> bool:
        """True when no request is partly read: nothing buffered, no bulks outstanding."""
        return self._args is None and self._pos >= len(self._buf)

    def next_command(self) -> Command | None:
        """The next complete command, or None until more bytes arrive."""
        while True:
            if self._args is None:
                if self._pos >= len(self._buf):
                    self._compact()
                    return None
                if self._buf[self._pos] == 42:  # '*'
                    started = self._start_multibulk()
                    if started is None:
                        return None
                    if not started:
                        continue  # '*0' or negative count: an empty request, skipped
                else:
                    inline = self._inline()
                    if inline is None:
                        return None
                    if inline:
                        return inline
                    continue
            command = self._read_bulks()
            if command is not None or self._args is not None:
                return command

    def _compact(self) -> None:
        if self._pos:
            del self._buf[: self._pos]
            self._pos = 0

    def _line_end(self, what: str) -> int | None:
        """Index of the '\\r' ending the current header line, or None if it is not all here."""
        end = self._buf.find(b"\r", self._pos)
        if end < 0:
            if len(self._buf) - self._pos > INLINE_MAX:
                raise ProtocolError(f"too big {what} count string")
            return None
        if end + 1 >= len(self._buf):
            return None
        return end

    def _start_multibulk(self) -> bool | None:
        end = self._line_end("mbulk")
        if end is None:
            return None
        count = parse_int(bytes(self._buf[self._pos + 1 : end]))
        if count is None or count > MAX_MULTIBULK:
            raise ProtocolError("invalid multibulk length")
        if count > UNAUTH_MAX_MULTIBULK and not self.limits.authenticated:
            raise ProtocolError("unauthenticated multibulk length")
        self._pos = end + 2
        if count <= 0:
            return False
        self._args = []  # grows with the arguments that arrive, never from the count
        self._args_bytes = 0
        self._remaining = count
        self._bulk_len = -1
        return True

    def _read_bulks(self) -> Command | None:
        buf = self._buf
        args = self._args
        assert args is not None
        while self._remaining:
            if self._bulk_len < 0:
                end = self._line_end("bulk")
                if end is None:
                    return None
                if buf[self._pos] != 36:  # '$'
                    raise ProtocolError(f"expected '$', got '{chr(buf[self._pos])}'")
                size = parse_int(bytes(buf[self._pos + 1 : end]))
                if size is None or size < 0 or size > self.limits.max_bulk:
                    raise ProtocolError("invalid bulk length")
                if size > UNAUTH_MAX_BULK and not self.limits.authenticated:
                    raise ProtocolError("unauthenticated bulk length")
                self._pos = end + 2
                self._bulk_len = size
            size = self._bulk_len
            if len(buf) - self._pos < size + 2:
                return None
            if size < BIG_ARG:
                args.append(bytes(buf[self._pos : self._pos + size]))
            else:
                with memoryview(buf) as view:  # released before the buffer next resizes
                    args.append(bytes(view[self._pos : self._pos + size]))
            # Like Redis, the two bytes after the payload are skipped, not checked.
            self._pos += size + 2
            self._args_bytes += size + ARG_OVERHEAD
            self._bulk_len = -1
            self._remaining -= 1
        self._args = None
        self._args_bytes = 0
        return args

    def _inline(self) -> Command | None:
        newline = self._buf.find(b"\n", self._pos)
        if newline < 0:
            if len(self._buf) - self._pos > INLINE_MAX:
                raise ProtocolError("too big inline request")
            return None
        line = bytes(self._buf[self._pos : newline])
        self._pos = newline + 1
        if line.endswith(b"\r"):
            line = line[:-1]
        args = split_args(line)
        if args is None:
            raise ProtocolError("unbalanced quotes in request")
        return args


_ESCAPES = {ord("n"): 10, ord("r"): 13, ord("t"): 9, ord("b"): 8, ord("a"): 7}
_HEX = b"0123456789abcdefABCDEF"


def split_args(line: bytes) -> list[bytes] | None:
    """Redis's sdssplitargs: split an inline request, honouring quotes; None if unbalanced."""
    args: list[bytes] = []
    i, n = 0, len(line)
    while True:
        while i < n and line[i] in b" \n\r\t\v\f":
            i += 1
        if i >= n:
            return args
        current = bytearray()
        in_double = in_single = False
        while True:
            if i >= n:
                if in_double or in_single:
                    return None
                break
            ch = line[i]
            if in_double:
                if ch == 92 and i + 3 < n and line[i + 1] == 120 and _is_hex_pair(line, i + 2):
                    current.append(int(line[i + 2 : i + 4], 16))
                    i += 3
                elif ch == 92 and i + 1 < n:
                    i += 1
                    current.append(_ESCAPES.get(line[i], line[i]))
                elif ch == 34:
                    if i + 1 < n and line[i + 1] not in b" \n\r\t\v\f":
                        return None  # a closing quote must be followed by a space
                    in_double = False
                    i += 1
                    break
                else:
                    current.append(ch)
            elif in_single:
                if ch == 92 and i + 1 < n and line[i + 1] == 39:
                    i += 1
                    current.append(39)
                elif ch == 39:
                    if i + 1 < n and line[i + 1] not in b" \n\r\t\v\f":
                        return None
                    in_single = False
                    i += 1
                    break
                else:
                    current.append(ch)
            elif ch in b" \n\r\t\v\f":
                break
            elif ch == 34:
                in_double = True
            elif ch == 39:
                in_single = True
            else:
                current.append(ch)
            i += 1
        args.append(bytes(current))


def _is_hex_pair(line: bytes, at: int) -> bool:
    return line[at] in _HEX and line[at + 1] in _HEX


class HiredisParser:
    """hiredis does the parsing; what it returns is accepted only where it is exactly
    what Redis would read, and the pure parser takes over from the first byte where it
    might not be: inline commands, RESP types other than arrays of bulk strings, a
    request still incomplete at the end of a read (so an oversized or malformed header is
    refused before its payload is buffered, exactly as in pure mode), and clients not yet
    authenticated (tighter limits).

    ``_buf`` mirrors the bytes hiredis holds unconsumed, so that the pure parser can be
    handed the input from the first request hiredis's reading cannot vouch for.
    """

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self._reader = hiredis.Reader()
        self._buf = bytearray()
        self._ready: list[Command] = []
        self._taken = 0  # commands of _ready already handed out
        self._pure: PureParser | None = None
        self._error: ProtocolError | None = None

    def feed(self, data: bytes) -> None:
        if not data:
            return
        if self._pure is not None:
            self._pure.feed(data)
            return
        self._buf += data
        self._reader.feed(data)
        self._drain()

    def pending(self) -> int:
        return self._pure.pending() if self._pure is not None else len(self._buf)

    def take(self, limit: int = 0) -> list[Command]:
        if self._pure is None and self._error is None:
            ready, taken = self._ready, self._taken
            if limit and len(ready) - taken > limit:
                self._taken = taken + limit
                return ready[taken : taken + limit]
            self._ready = []
            self._taken = 0
            return ready[taken:] if taken else ready
        return _take(self, limit)

    def next_command(self) -> Command | None:
        ready = self._ready
        if ready:
            first = ready[self._taken]
            self._taken += 1
            if self._taken == len(ready):
                self._ready = []
                self._taken = 0
            return first
        pure = self._pure
        if pure is None:
            return None
        command = pure.next_command()
        if command is None and pure.idle():
            self._pure = None  # the odd input is through: back to the fast path
        return command

    def _drain(self) -> None:
        buf = self._buf
        if buf[0] != 42 or not self.limits.authenticated or _announces_big_aggregate(buf):
            self._fall_back(0)  # not '*' (inline), or a header hiredis would allocate for
            return
        reader = self._reader
        commands: list[Any] = []
        broken = False
        join = b"".join
        try:
            while (command := reader.gets()) is not False:
                if command.__class__ is not list or not command:  # '*0' is skipped: pure says how
                    broken = True
                    break
                join(command)  # TypeError unless every argument is bytes
                commands.append(command)
        except (hiredis.ProtocolError, TypeError):
            broken = True
        if not broken and commands and _plainly_whole(reader, buf, self.limits.max_bulk):
            self._ready += commands
            buf.clear()
            return
        count, end = _canonical_prefix(buf, commands, self.limits.max_bulk)
        self._ready += commands[:count]
        if end == len(buf) and not broken and not reader.has_data():
            buf.clear()  # whole after all; hiredis read nothing it was not asked to
            self._reader = hiredis.Reader()  # its state after the probe is unknown
            return
        self._fall_back(end)

    def _fall_back(self, start: int) -> None:
        pure = PureParser(self.limits)
        pure.feed(bytes(self._buf[start:]))
        self._buf.clear()
        self._pure = pure
        # Whatever hiredis holds (its copy of the input, a request half built) goes now.
        self._reader = hiredis.Reader()


# hiredis allocates an aggregate's whole list when it reads the header, before any
# element arrives (PyList_New(count): *3000000000 reserves 24 GB, and freeing it walks
# every slot for seconds). Redis reads such a request lazily, reserving at most 1024
# slots. A read that could announce 10000 or more elements goes to the pure parser,
# which grows its list with the arguments that arrive; below that, hiredis reserves at
# most 80 KB per header (nesting stops at 7 levels), and _fall_back frees it at once.
_BIG_ARRAY = re.compile(rb"\*[0-9]{5}").search
_BIG_OTHER = re.compile(rb"[~>%|][0-9]{5}").search  # RESP3 sets, pushes, maps, attributes


def _announces_big_aggregate(buf: bytearray) -> bool:
    if _BIG_ARRAY(buf) is not None:
        return True
    # A charset scan costs ten times a one-byte one: run it only when one of them is here.
    return (126 in buf or 62 in buf or 37 in buf or 124 in buf) and _BIG_OTHER(buf) is not None


# A complete empty bulk string: fed to hiredis after a read it consumed entirely, it
# comes back on its own only if hiredis was between requests, not inside an array or
# after a type byte whose header has not arrived.
_PROBE = b"$0\r\n\r\n"
# Type bytes that hiredis reads into bytes or lists like a request's, though Redis
# refuses them there: simple strings, big numbers, verbatim strings, sets, attributes.
_LOOKALIKE_TYPES = tuple(b"+(=~|")


def _plainly_whole(reader: Any, buf: bytearray, max_bulk: int) -> bool:
    """The cheap proof, for a whole read whose commands are all lists of bytes, that they
    are exactly what Redis would read from buf: hiredis stopped between two requests; no
    byte that could start a lookalike type appears anywhere (so every header is '*' or
    '$'); no argument can exceed proto-max-bulk-len."""
    if reader.has_data() or len(buf) > max_bulk:
        return False
    reader.feed(_PROBE)
    try:
        if reader.gets() != b"":
            return False
    except hiredis.ProtocolError:  # a type byte was read, its header was not
        return False
    for lookalike in _LOOKALIKE_TYPES:
        if lookalike in buf:  # an int needle: a memchr
            return False
    return True


_ARRAY_HEAD = [len(b"*%d\r\n" % n) for n in range(1024)]
_BULK_FRAME = [len(b"$%d\r\n\r\n" % n) for n in range(1024)]


def _canonical_prefix(buf: bytearray, commands: list[Any], max_bulk: int) -> tuple[int, int]:
    """How many of commands, read by hiredis from the start of buf, are each an array of
    bulk strings within the limits (checked at the type byte of every header, whose
    positions follow from the lengths), and the offset where they end."""
    offset = 0
    for count, command in enumerate(commands):
        end = _command_end(buf, offset, command, max_bulk)
        if end < 0:
            return count, offset
        offset = end
    return len(commands), offset


def _command_end(buf: bytearray, offset: int, command: list[Any], max_bulk: int) -> int:
    if not command or offset >= len(buf) or buf[offset] != 42:  # '*0': the pure parser skips it
        return -1
    count = len(command)
    offset += _ARRAY_HEAD[count] if count < 1024 else len(b"*%d\r\n" % count)
    for arg in command:
        if offset >= len(buf) or buf[offset] != 36 or arg.__class__ is not bytes:  # '$'
            return -1
        size = len(arg)
        if size > max_bulk:
            return -1
        offset += size + (_BULK_FRAME[size] if size < 1024 else len(b"$%d\r\n\r\n" % size))
    return offset


def _take(parser: PureParser | HiredisParser, limit: int = 0) -> list[Command]:
    error = parser._error
    if error is not None:
        parser._error = None
        raise error
    commands: list[Command] = []
    try:
        while (command := parser.next_command()) is not None:
            commands.append(command)
            if len(commands) == limit:
                break
    except ProtocolError as exc:
        if not commands:
            raise
        parser._error = exc
    return commands


def make_parser(limits: Limits | None = None, *, accelerated: bool = True) -> RequestParser:
    if accelerated and hiredis is not None:
        return HiredisParser(limits)
    return PureParser(limits)


# ---------------------------------------------------------------------------- replies


class NullArray:
    """The null array: ``*-1`` in RESP2 (EXEC after a failed WATCH), ``_`` in RESP3."""

    __slots__ = ()


NULL_ARRAY = NullArray()


class NoReply:
    """Nothing at all goes out (SHUTDOWN closes the connection without a reply)."""

    __slots__ = ()


NO_REPLY = NoReply()


@attrs.frozen
class Verbatim:
    """A verbatim string (RESP3 ``=``), a bulk string in RESP2: INFO, CLIENT INFO."""

    text: bytes
    format: bytes = b"txt"


class Raw:
    """A reply already encoded (relayed as a shard wrote it)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __repr__(self) -> str:
        return f"Raw({self.data[:60]!r})"


@attrs.frozen
class Push:
    """An out-of-band RESP3 push (``>``); a plain array in RESP2."""

    items: list[Any]


_SMALL_INTS = [b":%d\r\n" % i for i in range(-1, 1025)]
_simple_cache: dict[str, bytes] = {}


def encode(reply: Any, proto: int = 2) -> bytes:
    """Serialize a reply value: bytes→bulk, str→simple string, int→integer, None→null,
    list→array, dict→map, float→double, bool→boolean, CommandError→error."""
    cls = reply.__class__
    if cls is bytes:
        return b"$%d\r\n%b\r\n" % (len(reply), reply)
    if cls is str:
        cached = _simple_cache.get(reply)
        if cached is None:
            cached = b"+" + reply.encode() + b"\r\n"
            if len(_simple_cache) < 256:
                _simple_cache[reply] = cached
        return cached
    if cls is int:
        if -1 <= reply <= 1023:
            return _SMALL_INTS[reply + 1]
        return b":%d\r\n" % reply
    if reply is None:
        return b"_\r\n" if proto == 3 else b"$-1\r\n"
    if cls is list or cls is tuple:
        return b"*%d\r\n" % len(reply) + b"".join([encode(item, proto) for item in reply])
    return _encode_rare(reply, proto)


def _encode_rare(reply: Any, proto: int) -> bytes:
    if reply.__class__ is Raw:
        return reply.data
    if isinstance(reply, (bytearray, memoryview)):  # a value edited in place (APPEND, SETRANGE)
        return b"$%d\r\n%b\r\n" % (len(reply), reply)  # type: ignore[str-format]
    if isinstance(reply, CommandError):
        # As Redis's addReplyErrorFormat: line breaks at the end go, others become spaces.
        text = reply.text.rstrip("\r\n").replace("\r", " ").replace("\n", " ")
        return b"-" + text.encode() + b"\r\n"
    if reply is NULL_ARRAY:
        return b"_\r\n" if proto == 3 else b"*-1\r\n"
    if reply is NO_REPLY:
        return b""
    if isinstance(reply, bool):
        if proto == 3:
            return b"#t\r\n" if reply else b"#f\r\n"
        return b":1\r\n" if reply else b":0\r\n"
    if isinstance(reply, float):
        digits = format_double(reply).encode()
        return b",%b\r\n" % digits if proto == 3 else b"$%d\r\n%b\r\n" % (len(digits), digits)
    if isinstance(reply, dict):
        parts = [encode(k, proto) + encode(v, proto) for k, v in reply.items()]
        head = b"%%%d\r\n" % len(reply) if proto == 3 else b"*%d\r\n" % (2 * len(reply))
        return head + b"".join(parts)
    if isinstance(reply, (set, frozenset)):
        head = b"~%d\r\n" if proto == 3 else b"*%d\r\n"
        return head % len(reply) + b"".join([encode(item, proto) for item in reply])
    if isinstance(reply, Verbatim):
        if proto == 3:
            body = reply.format + b":" + reply.text
            return b"=%d\r\n%b\r\n" % (len(body), body)
        return encode(reply.text, proto)
    if isinstance(reply, Push):
        head = b">%d\r\n" if proto == 3 else b"*%d\r\n"
        return head % len(reply.items) + b"".join([encode(i, proto) for i in reply.items])
    if isinstance(reply, int):  # int subclasses such as IntEnum
        return b":%d\r\n" % int(reply)
    raise TypeError(f"cannot encode reply of type {type(reply).__name__}")


def format_double(value: float) -> str:
    """Doubles as Redis prints them in RESP3 and INCRBYFLOAT: shortest exact, no exponent
    for ordinary magnitudes, 'inf'/'-inf'."""
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if math.isnan(value):
        return "nan"
    if value == int(value) and abs(value) < 1e17:
        return str(int(value))
    text = repr(value)
    if "e" in text:
        text = f"{value:.17f}".rstrip("0").rstrip(".")
    return text
