"""The values the embedded memory engine stores, and how they may be shared.

``dtm.bucket.Slot`` keeps a slot's values in a dict; this module owns what those values
are and the rules for editing them in place. (The seam between engines is drawn at the
bucket, not here: see docs/redis-engine.md.)

Values are ``bytes`` (the string type), or ``Edited`` once APPEND, SETRANGE or SETBIT
have edited them: a bytearray changed in place, so that a small edit of a large value
costs the edit, as with Redis's sds. Other Redis types will be other Python types behind
the same interface.

An in-place edit must not reach anything that holds the value beyond the moment: a
snapshot being written from a thread (it copied the slot dicts, not the values), the
other key of a COPY, a reply built before the edit. So an ``Edited`` remembers the
capture epoch it was made in; a capture starts a new epoch, and ``editable`` copies a
value made before (copy-on-write, as fork() gives Redis's BGSAVE). ``share`` marks a
value that a second holder now refers to, so that the next edit copies it too.
"""

from __future__ import annotations

from typing import Any

import attrs

Value = bytes


class Edited(bytearray):
    """A string value edited in place; ``epoch`` is the capture epoch it belongs to.

    While a write that may have to be undone runs (binlog: applied, then logged), its
    ``journal`` keeps the bytes each in-place overwrite replaced, so undoing costs the
    edit, not the value; growth is undone by cutting back to the length it had."""

    __slots__ = ("epoch", "journal")
    epoch: int
    journal: list[tuple[int, int, bytes]] | None

    def __setitem__(self, index: Any, data: Any) -> None:
        journal = self.journal
        if journal is not None:
            if isinstance(index, slice):
                start, stop, _ = index.indices(len(self))
                journal.append((start, len(data), bytes(self[start:stop])))
            else:
                at = index + len(self) if index < 0 else index
                journal.append((at, 1, bytes((self[at],))))
        super().__setitem__(index, data)


@attrs.define(slots=True)
class Undo:
    """How to put back one key's value after a write that was not made durable: the
    value object it held and, for an Edited one, its length and edit journal."""

    value: Any
    length: int = 0

    @classmethod
    def keep(cls, value: Any) -> Undo:
        if type(value) is Edited:
            value.journal = []
            return cls(value, len(value))
        return cls(value)

    def restore(self) -> Any:
        """The value as it was (its in-place edits reversed); ends the journal."""
        value = self.value
        if type(value) is Edited and value.journal is not None:
            for start, size, old in reversed(value.journal):
                bytearray.__setitem__(value, slice(start, start + size), old)
            del value[self.length :]
        self.forget()
        return value

    def forget(self) -> None:
        """The write stays: stop journalling."""
        if type(self.value) is Edited:
            self.value.journal = None


class _Epochs:
    current = 0


def captured() -> None:
    """Every value may now be held by a snapshot: the next edit of each copies it."""
    _Epochs.current += 1


def editable(value: bytes | bytearray | None) -> Edited:
    """The buffer an edit of value may change in place: value itself when nothing else
    can hold it, else a copy (the caller stores it)."""
    if type(value) is Edited and value.epoch == _Epochs.current:
        return value
    fresh = Edited(value or b"")
    fresh.epoch = _Epochs.current
    fresh.journal = None
    return fresh


def share(value: Value) -> Value:
    """value, now also held elsewhere (COPY's other key): never edited in place again."""
    if type(value) is Edited:
        value.epoch = -1
    return value


def settled(reply: object) -> object:
    """A reply that no later edit can change (EXEC gathers replies before sending them)."""
    if isinstance(reply, bytearray):
        return bytes(reply)
    if isinstance(reply, list) and any(isinstance(item, bytearray) for item in reply):
        return [bytes(item) if isinstance(item, bytearray) else item for item in reply]
    return reply

