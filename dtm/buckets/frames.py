"""Cutting a shard's reply stream into whole replies, byte for byte (sans-I/O).

A front relays a shard's replies to its client as the shard wrote them: a parser would
lose what RESP2 readers cannot tell apart (``+OK`` from ``$2 OK``, ``*-1`` from ``$-1``),
and re-encoding costs as much as framing. The framer only finds where each reply ends.
It keeps its place between feeds (the element counts still owed by open aggregates), so
a reply of a million elements arriving in many reads is scanned once, not once per read.
"""

from __future__ import annotations

from typing import Final

_CRLF: Final = b"\r\n"
# RESP2 and RESP3 type bytes.
_LINE_TYPES: Final = frozenset(b"+-:_,#(")  # one line
_BLOB_TYPES: Final = frozenset(b"$!=")  # a length line, then that many bytes
_ARRAY_TYPES: Final = frozenset(b"*~>")  # n elements
_PAIR_TYPES: Final = frozenset(b"%|")  # n pairs (an attribute "|" then precedes a reply)
MAX_LINE: Final = 64 * 1024


class FramingError(Exception):
    """The stream is not RESP: the connection must be dropped."""


class ReplyFramer:
    def __init__(self) -> None:
        self._buffer = bytearray()
        self._start = 0  # where the reply being framed begins
        self._scan = 0  # where framing resumes
        self._owed: list[int] = []  # elements still owed by each open aggregate

    def feed(self, data: bytes) -> None:
        if self._start and self._start == len(self._buffer):
            self._buffer.clear()
            self._scan -= self._start
            self._start = 0
        self._buffer += data

    def next(self) -> bytes | None:
        """The next whole reply's bytes, or None until more data arrives."""
        buffer = self._buffer
        owed = self._owed
        scan = self._scan
        size = len(buffer)
        while True:
            if scan >= size:
                self._scan = scan
                return None
            kind = buffer[scan]
            eol = buffer.find(_CRLF, scan + 1)
            if eol < 0:
                if size - scan > MAX_LINE:
                    raise FramingError("Protocol error: a reply line without an end")
                self._scan = scan
                return None
            if kind in _LINE_TYPES:
                scan = eol + 2
                done = True
            elif kind in _BLOB_TYPES:
                length = _number(buffer, scan + 1, eol)
                if length < 0:
                    scan = eol + 2
                else:
                    end = eol + 2 + length + 2
                    if end > size:
                        self._scan = scan
                        return None
                    scan = end
                done = True
            elif kind in _ARRAY_TYPES or kind in _PAIR_TYPES:
                count = _number(buffer, scan + 1, eol)
                if kind in _PAIR_TYPES:
                    count *= 2
                if kind == 0x7C:  # "|": an attribute is followed by the reply it annotates
                    count += 1
                scan = eol + 2
                if count > 0:
                    owed.append(count)
                    continue
                done = True
            else:
                raise FramingError(f"Protocol error: unknown reply type byte {kind!r}")
            # One element is complete: close every aggregate it completes.
            while done and owed:
                owed[-1] -= 1
                if owed[-1]:
                    done = False
                else:
                    owed.pop()
            if done:
                reply = bytes(buffer[self._start:scan])
                if scan == size:
                    buffer.clear()
                    scan = 0
                elif scan > 65536 and scan * 2 > size:
                    del buffer[:scan]
                    scan = 0
                self._start = self._scan = scan
                return reply


def _number(buffer: bytearray, start: int, end: int) -> int:
    try:
        return int(buffer[start:end])
    except ValueError:
        raise FramingError("Protocol error: a reply length that is not a number") from None
