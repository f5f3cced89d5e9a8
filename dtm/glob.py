"""Redis's glob-style patterns (stringmatchlen) for KEYS and SCAN MATCH, compiled to
regular expressions once and cached."""

from __future__ import annotations

import re
from functools import lru_cache


@lru_cache(maxsize=256)
def compile_glob(pattern: bytes) -> re.Pattern[bytes]:
    out = bytearray()
    i, n = 0, len(pattern)
    while i < n:
        ch = pattern[i : i + 1]
        if ch == b"*":
            while i + 1 < n and pattern[i + 1 : i + 2] == b"*":
                i += 1
            out += b".*"
        elif ch == b"?":
            out += b"."
        elif ch == b"[":
            i, cls = _bracket(pattern, i + 1)
            out += cls
            continue
        elif ch == b"\\" and i + 1 < n:
            i += 1
            out += re.escape(pattern[i : i + 1])
        else:
            out += re.escape(ch)
        i += 1
    return re.compile(bytes(out), re.DOTALL)


def _bracket(pattern: bytes, i: int) -> tuple[int, bytes]:
    """Translate a [...] set starting after its '['; returns the index after it."""
    n = len(pattern)
    negate = i < n and pattern[i : i + 1] == b"^"
    if negate:
        i += 1
    items: list[bytes] = []
    while i < n and pattern[i : i + 1] != b"]":
        ch = pattern[i : i + 1]
        if ch == b"\\" and i + 1 < n:
            items.append(re.escape(pattern[i + 1 : i + 2]))
            i += 2
        elif i + 2 < n and pattern[i + 1 : i + 2] == b"-":
            lo, hi = pattern[i], pattern[i + 2]
            if lo > hi:
                lo, hi = hi, lo
            items.append(re.escape(bytes([lo])) + b"-" + re.escape(bytes([hi])))
            i += 3
        else:
            items.append(re.escape(ch))
            i += 1
    i += 1  # past ']' (an unterminated set runs to the end of the pattern, as in Redis)
    if not items:
        return i, b"[^\\s\\S]" if not negate else b"[\\s\\S]"
    return i, b"[" + (b"^" if negate else b"") + b"".join(items) + b"]"


def glob_match(pattern: bytes, value: bytes) -> bool:
    if pattern == b"*":
        return True
    return compile_glob(pattern).fullmatch(value) is not None
