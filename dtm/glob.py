"""Redis's glob-style patterns (util.c ``stringmatchlen``) for KEYS, SCAN MATCH,
CONFIG GET and COMMAND LIST, matched without backtracking.

A pattern is cut at its ``*`` runs into segments in which every element (a byte, ``?``,
a ``[...]`` set, an escape) matches exactly one byte. With fixed-width segments, taking
each middle segment at its leftmost place is always right: placing it later only leaves
less room for the rest. So a short pattern becomes one regular expression whose middle
segments are atomic groups (``(?>.*?seg)``): the engine never goes back into one, which
makes ``a*a*a*…b`` against a long key linear instead of exponential (Redis fixed the
same blow-up, CVE-2022-36021, with its ``skipLongerMatches``). A long pattern is matched
segment by segment instead (``bytes.find`` for literal ones), because compiling a regular
expression costs microseconds per element.

The quirks of Redis's matcher are kept, because they decide what a pattern means:

- a ``[`` never closed takes the rest of the pattern as its set; ``]`` right after
  ``[`` closes an empty set; in ``[a-]`` the ``]`` is the end of the range, not the close;
- range ends compare as C ``char``s, which are signed: bytes from 0x80 sort below 0x00;
- with ``nocase`` (CONFIG GET, COMMAND LIST) only ASCII letters fold, and an escaped byte
  inside a set still compares exactly;
- an empty string matches only the empty pattern (KEYS and SCAN treat ``*`` as "every key"
  before they match anything);
- more than 1000 ``*`` runs: Redis gives up at its 1001st nested call, so such a pattern
  matches only when its 1001st run is the last thing in it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from functools import lru_cache

import attrs

Matcher = Callable[[bytes], bool]

# Redis's "Protection against abusive patterns": nesting > 1000 returns no match.
MAX_STAR_RUNS = 1000
# Patterns up to this many elements become one regular expression (fastest per key).
_ONE_REGEX_UP_TO = 2048
_CACHED_UP_TO = 1024  # longer patterns are compiled for one call and not kept

_ALL = frozenset(range(256))
_UPPER = range(ord("A"), ord("Z") + 1)

# Tokens outside sets; runs of plain bytes, of escapes and of '?' are taken whole.
_TOKEN = re.compile(rb"(\*+)|(\?+)|([^*?\[\\]+)|((?:\\.)+)|(\\)|(\[)", re.DOTALL)
# The items of a set, in Redis's order of precedence: an escape (when a byte follows),
# the closing ']', a range (when two bytes follow), a single byte.
_SET_BODY = re.compile(rb"(?:\\.|[^\]\\]-.|[^\]])*", re.DOTALL)
_SET_ITEM = re.compile(rb"\\(.)|([^\]\\])-(.)|(.)", re.DOTALL)


def _lower(c: int) -> int:
    return c + 32 if c in _UPPER else c  # C tolower() in the "C" locale


def _signed(c: int) -> int:
    return c - 256 if c > 127 else c  # a C char, as Redis compares range ends


class _TooLong(Exception):
    """The pattern needs more bytes than the longest string it will be matched against."""


@attrs.define
class _Segment:
    """Elements between two ``*`` runs: each matches exactly one byte."""

    regex: list[bytes] = attrs.Factory(list)
    width: int = 0
    literal: bytearray | None = attrs.Factory(bytearray)  # its bytes, while every element is one exact byte

    def add_literal(self, raw: bytes, nocase: bool) -> None:
        if nocase and any(_lower(c) != c or _lower(c - 32) == c for c in set(raw)):
            self.regex.append(b"(?i:" + re.escape(raw) + b")")  # ASCII folding only
            self.literal = None
        else:
            self.regex.append(re.escape(raw))
            if self.literal is not None:
                self.literal += raw
        self.width += len(raw)

    def add_set(self, members: frozenset[int]) -> None:
        if len(members) == 1:
            self.add_literal(bytes(members), False)
            return
        piece = _regex_set(members)
        if self.regex and self.regex[-1] == piece:
            self.regex[-1] = b"(?:" + piece + b"){2}"  # cheap to compile, unlike a copy
        elif self.regex and self.regex[-1].startswith(b"(?:" + piece + b"){"):
            count = int(self.regex[-1][len(piece) + 5 : -1])
            self.regex[-1] = b"(?:%s){%d}" % (piece, count + 1)
        else:
            self.regex.append(piece)
        self.literal = None
        self.width += 1

    def add_any(self, count: int) -> None:
        self.regex.append(b"." if count == 1 else b".{%d}" % count)
        self.literal = None
        self.width += count


def _parse(pattern: bytes, nocase: bool, longest: int | None) -> tuple[list[_Segment], bool, bool, int]:
    """The segments between ``*`` runs, whether the pattern starts / ends with a run, and
    how many runs it has. Raises _TooLong once the elements outnumber ``longest``."""
    segments = [_Segment()]
    lead = trail = False
    runs = total = 0
    i, n = 0, len(pattern)
    while i < n:
        token = _TOKEN.match(pattern, i)
        assert token is not None  # every byte starts some token
        stars, anys, plain, escapes, backslash, _ = token.groups()
        segment = segments[-1]
        before = segment.width
        trail = False
        if stars is not None:
            runs += 1
            lead = lead or i == 0
            trail = True
            if segment.width:
                segments.append(_Segment())
        elif anys is not None:
            segment.add_any(len(anys))
        elif plain is not None:
            segment.add_literal(plain, nocase)
        elif escapes is not None:
            segment.add_literal(escapes[1::2], nocase)
        elif backslash is not None:
            segment.add_literal(b"\\", nocase)  # a last '\\' with nothing to escape is itself
        else:
            i = _add_set(segment, pattern, i + 1, nocase)
            token = None
        if token is not None:
            i = token.end()
        total += segment.width - before
        if longest is not None and total > longest:
            raise _TooLong
    if not segments[-1].width and len(segments) > 1:
        segments.pop()
    return segments, lead, trail, runs


def _add_set(segment: _Segment, pattern: bytes, i: int, nocase: bool) -> int:
    """Add the set starting after its '['; returns the index after it."""
    negate = pattern[i : i + 1] == b"^"
    if negate:
        i += 1
    body = _SET_BODY.match(pattern, i)
    assert body is not None
    end = body.end()
    exact: set[int] = set()  # escaped bytes: compared without folding even with nocase
    plain: set[int] = set()
    ranges: set[tuple[int, int]] = set()
    for escaped, start, stop, single in set(_SET_ITEM.findall(body.group())):
        if escaped:
            exact.add(escaped[0])
        elif start:
            low, high = _signed(start[0]), _signed(stop[0])
            ranges.add((low, high) if low <= high else (high, low))
        else:
            plain.add(single[0])
    members = exact | plain
    if nocase:
        folded = {_lower(c) for c in plain}
        members |= {c for c in range(256) if _lower(c) in folded}
    if ranges:
        # The values (signed, indexed by their byte) inside any range, then the bytes whose
        # value (folded with nocase: Redis folds after the swap) is one of them.
        inside = bytearray(256)
        for low, high in ranges:
            if nocase:
                low, high = _lower(low), _lower(high)
            for lo, hi in ((low, min(high, -1)), (max(low, 0), high)):
                if lo <= hi:
                    inside[lo & 0xFF : (hi & 0xFF) + 1] = b"\x01" * (hi - lo + 1)
        if nocase:
            members.update(c for c in range(256) if inside[_lower(c)])
        else:
            members.update(c for c in range(256) if inside[c])
    element = frozenset(members)
    segment.add_set((_ALL - element) if negate else element)
    return end + 1  # past ']', or past the end of an unterminated set


def _regex_set(members: frozenset[int]) -> bytes:
    if members == _ALL:
        return b"."
    if not members:
        return b"(?!)"
    parts = []
    ordered = sorted(members)
    start = prev = ordered[0]
    for b in [*ordered[1:], -1]:
        if b == prev + 1:
            prev = b
            continue
        parts.append(b"\\x%02x" % start if start == prev else b"\\x%02x-\\x%02x" % (start, prev))
        start = prev = b
    return b"[" + b"".join(parts) + b"]"


@attrs.frozen
class Glob:
    """A compiled pattern: ``match`` one string, or ``filter`` many (KEYS runs it per key,
    so the common shapes get a loop without the regex engine)."""

    match: Matcher
    filter: Callable[[Iterable[bytes]], list[bytes]]


def _from_match(match: Matcher) -> Glob:
    return Glob(match, lambda keys: [k for k in keys if match(k)])


_NEVER = Glob(lambda s: False, lambda keys: [])


def compile_glob(pattern: bytes, nocase: bool = False, longest: int | None = None) -> Glob:
    """Pattern compiled to match exactly as stringmatchlen does. With ``longest`` (the
    length of the longest string it will see), compiling a long pattern stops as soon as
    it needs more bytes than that: nothing can match then."""
    if len(pattern) <= _CACHED_UP_TO:
        return _compile_cached(pattern, nocase)
    try:
        return _compile(pattern, nocase, longest)
    except _TooLong:
        return _NEVER


@lru_cache(maxsize=256)
def _compile_cached(pattern: bytes, nocase: bool) -> Glob:
    return _compile(pattern, nocase, None)


def _compile(pattern: bytes, nocase: bool, longest: int | None) -> Glob:
    segments, lead, trail, runs = _parse(pattern, nocase, longest)
    if runs > MAX_STAR_RUNS and not (runs == MAX_STAR_RUNS + 1 and trail):
        return _NEVER
    if not pattern:
        return Glob(lambda s: not s, lambda keys: [k for k in keys if not k])
    if not segments[0].width:  # only stars: any non-empty string
        return Glob(bool, lambda keys: [k for k in keys if k])
    if len(segments) == 1 and segments[0].literal is not None:
        literal = bytes(segments[0].literal)
        # the common shapes, without the regex engine
        if not lead and not trail:
            return Glob(lambda s: s == literal, lambda keys: [k for k in keys if k == literal])
        if not lead:
            return Glob(lambda s: s.startswith(literal), lambda keys: [k for k in keys if k.startswith(literal)])
        if not trail:
            return Glob(lambda s: s.endswith(literal), lambda keys: [k for k in keys if k.endswith(literal)])
        return Glob(lambda s: literal in s, lambda keys: [k for k in keys if literal in k])
    if sum(len(segment.regex) for segment in segments) <= _ONE_REGEX_UP_TO:
        match = re.compile(_one_regex(segments, lead, trail), re.DOTALL).match
        return Glob(lambda s: s != b"" and match(s) is not None,
                    lambda keys: [k for k in keys if k and match(k)])
    return _from_match(_segment_matcher(segments, lead, trail))


def _one_regex(segments: list[_Segment], lead: bool, trail: bool) -> bytes:
    parts: list[bytes] = []
    middle = [b"".join(segment.regex) for segment in segments]
    if not lead:
        parts.append(middle.pop(0))  # anchored: re.match
    last: bytes | None = None
    if not trail and middle:
        last = middle.pop()
    for segment in middle:
        # atomic: the leftmost place of a fixed-width segment is final (see the top)
        parts.append(b"(?>.*?" + segment + b")")
    if last is not None:
        parts.append(b".*" + last + b"\\Z")
    elif not trail:
        parts.append(b"\\Z")
    return b"".join(parts)


# Where a segment occurs in s from a position: (start, end) of its leftmost place, or None.
_Finder = Callable[[bytes, int], "tuple[int, int] | None"]


def _finder(segment: _Segment) -> tuple[_Finder, Callable[[bytes, int], bool]]:
    """Search for a segment from a position, and test it at exactly a position."""
    width = segment.width
    if segment.literal is not None:
        literal = bytes(segment.literal)

        def find(s: bytes, at: int) -> tuple[int, int] | None:
            found = s.find(literal, at)
            return None if found < 0 else (found, found + width)
        return find, lambda s, at: s.startswith(literal, at)
    regex = re.compile(b"".join(segment.regex), re.DOTALL)

    def search(s: bytes, at: int) -> tuple[int, int] | None:
        found = regex.search(s, at)
        return None if found is None else found.span()
    return search, lambda s, at: regex.match(s, at) is not None


def _segment_matcher(segments: list[_Segment], lead: bool, trail: bool) -> Matcher:
    """Leftmost placement, one segment at a time (for patterns too long for one regex)."""
    first = None if lead else (_finder(segments[0])[1], segments[0].width)
    rest = segments if lead else segments[1:]
    last = None
    if not trail and rest:
        last = (_finder(rest[-1])[1], rest[-1].width)
        rest = rest[:-1]
    middle = [_finder(segment)[0] for segment in rest]

    def match(s: bytes) -> bool:
        if not s:
            return False
        at = 0
        if first is not None:
            test, width = first
            if not test(s, 0):
                return False
            at = width
        for find in middle:
            span = find(s, at)
            if span is None:
                return False
            at = span[1]
        if last is not None:
            test, width = last
            return len(s) - width >= at and test(s, len(s) - width)
        return trail or at == len(s)

    return match


def glob_match(pattern: bytes, value: bytes, nocase: bool = False) -> bool:
    return compile_glob(pattern, nocase, len(value)).match(value)


def glob_filter(pattern: bytes, keys: list[bytes]) -> list[bytes]:
    """The keys pattern matches (case-sensitive, as KEYS and SCAN MATCH)."""
    if not keys:
        return []
    return compile_glob(pattern, False, max(map(len, keys))).filter(keys)
