"""Every command's arguments, written as its usage line, parsed into COMMAND DOCS's tree.

The notation is Redis's own usage syntax with names where the docs tree needs them:
``name`` is a string argument, ``name:type`` a typed one (``key``, ``integer``,
``double``, ``pattern``, ``unix-time``); ``key`` alone is a key; an UPPERCASE word is a
pure token, or the token of the argument right after it (``EX seconds:integer``);
``[...]`` is optional, ``(...)`` a block, ``a | b`` one of them, ``...`` repeats the
element before it (``...+`` repeats its token too), ``name:`` opening a group names that
group, and an UPPERCASE word before a group or a named element is that element's token. Key arguments take
their ``key_spec_index`` in order of appearance (capped at the command's last spec).
This module is sans-I/O: no trio, no session.
"""

from __future__ import annotations

import re
from functools import cache
from typing import Any

Doc = dict[bytes, Any]

_TOKENS = re.compile(r"\[|\]|\(|\)|\||\.\.\.\+?|[^\s\[\]()|]+")
_TYPES = frozenset({"string", "integer", "double", "key", "pattern", "unix-time", "pure-token"})

USAGE: dict[str, str] = {
    # strings
    "get": "key",
    "set": (
        "key value [condition: NX | XX] [GET] [expiration: EX seconds:integer | "
        "PX milliseconds:integer | EXAT unix-time-seconds:unix-time | "
        "PXAT unix-time-milliseconds:unix-time | KEEPTTL]"
    ),
    "setnx": "key value",
    "setex": "key seconds:integer value",
    "psetex": "key milliseconds:integer value",
    "getset": "key value",
    "getdel": "key",
    "getex": (
        "key [expiration: EX seconds:integer | PX milliseconds:integer | "
        "EXAT unix-time-seconds:unix-time | PXAT unix-time-milliseconds:unix-time | PERSIST]"
    ),
    "mget": "key ...",
    "mset": "(key_value: key value) ...",
    "msetnx": "(key_value: key value) ...",
    "append": "key value",
    "strlen": "key",
    "getrange": "key start:integer end:integer",
    "substr": "key start:integer end:integer",
    "setrange": "key offset:integer value",
    "incr": "key",
    "decr": "key",
    "incrby": "key increment:integer",
    "decrby": "key decrement:integer",
    "incrbyfloat": "key increment:double",
    "lcs": "key1:key key2:key [LEN] [IDX] [MINMATCHLEN len:integer] [WITHMATCHLEN]",
    # bitmaps
    "setbit": "key offset:integer value:integer",
    "getbit": "key offset:integer",
    "bitcount": "key [index: start:integer end:integer [index_unit: BYTE | BIT]]",
    "bitpos": (
        "key bit:integer [index: start:integer [end_index: end:integer "
        "[index_unit: BYTE | BIT]]]"
    ),
    "bitop": "operation destkey:key key ...",
    "bitfield": (
        "key [operation: GET encoding_offset: (encoding offset:integer) | write: ("
        "[wrap_sat_fail: OVERFLOW (WRAP | SAT | FAIL)] write_operation: ("
        "SET encoding_offset_value: (encoding offset:integer value:integer) | "
        "INCRBY encoding_offset_increment: (encoding offset:integer increment:integer)))] ..."
    ),
    "bitfield_ro": "key [GET encoding_offset: (encoding offset:integer)] ...+",
    # keys
    "del": "key ...",
    "unlink": "key ...",
    "exists": "key ...",
    "touch": "key ...",
    "type": "key",
    "rename": "key newkey:key",
    "renamenx": "key newkey:key",
    "copy": "source:key destination:key [DB destination-db:integer] [REPLACE]",
    "move": "key db:integer",
    "swapdb": "index1:integer index2:integer",
    "keys": "pattern:pattern",
    "scan": "cursor:integer [MATCH pattern:pattern] [COUNT count:integer] [TYPE type]",
    "randomkey": "",
    "expire": "key seconds:integer [condition: NX | XX | GT | LT]",
    "pexpire": "key milliseconds:integer [condition: NX | XX | GT | LT]",
    "expireat": "key unix-time-seconds:unix-time [condition: NX | XX | GT | LT]",
    "pexpireat": "key unix-time-milliseconds:unix-time [condition: NX | XX | GT | LT]",
    "ttl": "key",
    "pttl": "key",
    "expiretime": "key",
    "pexpiretime": "key",
    "persist": "key",
    "object|encoding": "key",
    "object|freq": "key",
    "object|idletime": "key",
    "object|refcount": "key",
    # transactions
    "multi": "",
    "exec": "",
    "discard": "",
    "watch": "key ...",
    "unwatch": "",
    # connection
    "ping": "[message]",
    "echo": "message",
    "quit": "",
    "reset": "",
    "auth": "[username] password",
    "hello": "[arguments: protover:integer [AUTH username password] [SETNAME clientname]]",
    "select": "index:integer",
    "client|setname": "connection-name",
    "client|setinfo": "attr: (LIB-NAME libname | LIB-VER libver)",
    "client|list": "[TYPE client-type] [ID client-id:integer ...]",
    "client|unblock": "client-id:integer [unblock-type: (TIMEOUT | ERROR)]",
    "client|kill": (
        "filter: (ip:port | (new-format: [ID client-id:integer] [TYPE client-type] "
        "[USER username] [ADDR ip:port] [LADDR ip:port] [SKIPME yes/no]) ...)"
    ),
    # server
    "command|count": "",
    "command|list": "[FILTERBY filterby: (MODULE module-name | ACLCAT category | PATTERN pattern:pattern)]",
    "command|info": "[command-name ...]",
    "command|docs": "[command-name ...]",
    "command|getkeys": "command arg ...",
    "config|get": "(parameter: parameter) ...",
    "config|set": "(parameter_value: parameter value) ...",
    "dbsize": "",
    "flushdb": "[flush-type: ASYNC | SYNC]",
    "flushall": "[flush-type: ASYNC | SYNC]",
    "time": "",
    "info": "[section ...]",
    "memory|usage": "key [SAMPLES count:integer]",
    "role": "",
    "debug": "subcommand [argument ...]",
    "save": "",
    "bgsave": "[SCHEDULE]",
    "lastsave": "",
    "shutdown": "[nosave_save: NOSAVE | SAVE] [NOW] [FORCE] [ABORT]",
}

# Commands with more than one key spec: (flags, begin index, lastkey, keystep) each.
KEY_SPECS: dict[str, tuple[tuple[tuple[str, ...], int, int, int], ...]] = {
    "bitop": ((("OW", "update"), 2, 0, 1), (("RO", "access"), 3, -1, 1)),
    "bitfield": ((("RW", "access", "update", "variable_flags"), 1, 0, 1),),
    "copy": ((("RO", "access"), 1, 0, 1), (("OW", "update"), 2, 0, 1)),
    "rename": ((("RW", "access", "delete"), 1, 0, 1), (("OW", "insert"), 2, 0, 1)),
    "renamenx": ((("RW", "access", "delete"), 1, 0, 1), (("OW", "insert"), 2, 0, 1)),
    "del": ((("RM", "delete"), 1, -1, 1),),
    "unlink": ((("RM", "delete"), 1, -1, 1),),
}


class SyntaxSpecError(ValueError):
    """A usage line in this table is malformed (a bug in the table, found at import)."""


@cache
def arguments(fullname: str) -> tuple[Doc, ...] | None:
    """COMMAND DOCS's ``arguments`` for a command, or None when none is declared."""
    usage = USAGE.get(fullname)
    if usage is None:
        return None
    specs = KEY_SPECS.get(fullname)
    parser = _Parser(usage, last_spec=len(specs) - 1 if specs else 0)
    return tuple(_ordered(doc) for doc in parser.parse())


_ORDER = (b"name", b"type", b"key_spec_index", b"token", b"flags", b"arguments")


def _ordered(doc: Doc) -> Doc:
    """Fields in the order Redis prints them."""
    out = {field: doc[field] for field in _ORDER if field in doc}
    if b"arguments" in out:
        out[b"arguments"] = [_ordered(item) for item in out[b"arguments"]]
    return out


class _Parser:
    def __init__(self, text: str, last_spec: int) -> None:
        self.tokens = _TOKENS.findall(text)
        self.pos = 0
        self.keys = 0
        self.last_spec = last_spec

    def parse(self) -> list[Doc]:
        items = self._sequence(None)
        if self.pos != len(self.tokens):
            raise SyntaxSpecError(f"unexpected {self.tokens[self.pos]!r}")
        return items

    def _peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def _sequence(self, close: str | None) -> list[Doc]:
        """Elements up to close; alternatives split by | become one oneof."""
        alternatives: list[list[Doc]] = [[]]
        while (token := self._peek()) is not None and token != close:
            if token == "|":
                self.pos += 1
                alternatives.append([])
                continue
            alternatives[-1].append(self._element())
        if close is not None:
            if token != close:
                raise SyntaxSpecError(f"missing {close!r}")
            self.pos += 1
        if len(alternatives) == 1:
            return alternatives[0]
        choices = [alt[0] if len(alt) == 1 else _block("block", alt) for alt in alternatives]
        return [{b"name": b"choice", b"type": b"oneof", b"arguments": choices}]

    def _element(self) -> Doc:
        token = self.tokens[self.pos]
        self.pos += 1
        if token in ("[", "("):
            doc = self._group("]" if token == "[" else ")")
            if token == "[":
                doc.setdefault(b"flags", []).insert(0, "optional")
        elif token.endswith(":") and len(token) > 1:
            doc = self._named(token[:-1])
        elif _is_token(token):
            following = self._peek()
            if following is not None and _is_argument(following):
                self.pos += 1
                doc = self._argument(following)
                doc = {**_head(doc), b"token": token.encode(), **_tail(doc)}
            elif following == "(" or (following is not None and following.endswith(":")):
                doc = self._element()  # a block or oneof led by this token
                doc[b"token"] = token.encode()
            else:
                doc = {b"name": token.lower().encode(), b"type": b"pure-token", b"token": token.encode()}
        elif _is_argument(token):
            doc = self._argument(token)
        else:
            raise SyntaxSpecError(f"unexpected {token!r}")
        if self._peek() in ("...", "...+"):
            flags = doc.setdefault(b"flags", [])
            flags.append("multiple")
            if self.tokens[self.pos] == "...+":
                flags.append("multiple_token")
            self.pos += 1
        return doc

    def _group(self, close: str) -> Doc:
        name = None
        token = self._peek()
        if token is not None and token.endswith(":") and len(token) > 1:
            name = token[:-1]
            self.pos += 1
        items = self._sequence(close)
        if len(items) == 1:
            item = items[0]
            if name is not None:
                item[b"name"] = name.encode()
            return item
        return _block(name or "block", items)

    def _named(self, name: str) -> Doc:
        """``name: element``: the next element (a group or a oneof) takes the name."""
        if self._peek() == "(":
            self.pos += 1
            doc = self._group(")")
        else:
            items = self._sequence_until_space()
            doc = items[0] if len(items) == 1 else _block(name, items)
        doc[b"name"] = name.encode()
        return doc

    def _sequence_until_space(self) -> list[Doc]:
        return [self._element()]

    def _argument(self, token: str) -> Doc:
        name, _, kind = token.partition(":")
        if not kind:
            kind = "key" if name == "key" else "string"
        if kind not in _TYPES:  # e.g. ip:port is a name, not a type
            name, kind = token, "string"
        doc: Doc = {b"name": name.encode(), b"type": kind.encode()}
        if kind == "key":
            doc[b"key_spec_index"] = min(self.keys, self.last_spec)
            self.keys += 1
        return doc


def _is_token(word: str) -> bool:
    return word[0].isalpha() and word.upper() == word and word.lower() != word


def _is_argument(word: str) -> bool:
    return word[0].isalpha() and word != word.upper() and not word.endswith(":")


def _block(name: str, items: list[Doc]) -> Doc:
    return {b"name": name.encode(), b"type": b"block", b"arguments": items}


_HEAD = (b"name", b"type", b"key_spec_index")


def _head(doc: Doc) -> Doc:
    return {k: v for k, v in doc.items() if k in _HEAD}


def _tail(doc: Doc) -> Doc:
    return {k: v for k, v in doc.items() if k not in _HEAD}


def key_specs(name: str, first: int, last: int, step: int, writes: bool) -> list[Doc]:
    """COMMAND INFO's key specifications: declared ones, else one range from the
    legacy (first, last, step) triple."""
    declared = KEY_SPECS.get(name)
    if declared is None:
        if not first:
            return []
        flags = ("RW", "access", "update") if writes else ("RO", "access")
        declared = ((flags, first, last - first if last >= 0 else last, step),)
    return [
        {
            b"flags": list(flags),
            b"begin_search": {b"type": b"index", b"spec": {b"index": begin}},
            b"find_keys": {
                b"type": b"range",
                b"spec": {b"lastkey": lastkey, b"keystep": keystep, b"limit": 0},
            },
        }
        for flags, begin, lastkey, keystep in declared
    ]


def check_table() -> None:
    """Parse every usage line (run by the tests: a malformed line fails loudly)."""
    for name in USAGE:
        arguments(name)
