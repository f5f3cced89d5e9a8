"""The error hierarchy: what closes a connection and what becomes an error reply."""

from __future__ import annotations


class DtmError(Exception):
    """Base of every error dtm raises on purpose."""


class ProtocolError(DtmError):
    """The client broke RESP framing: reply with the error, then close the connection."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    @property
    def reply_text(self) -> str:
        return f"ERR Protocol error: {self.detail}"


class CommandError(DtmError):
    """A command failed; the text (with its Redis prefix, e.g. ``ERR`` or ``WRONGTYPE``)
    becomes the error reply. Inside EXEC it is a value in the result array."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


def err(message: str) -> CommandError:
    return CommandError("ERR " + message)


SYNTAX = err("syntax error")
NOT_INTEGER = err("value is not an integer or out of range")
NOT_FLOAT = err("value is not a valid float")
NO_SUCH_KEY = err("no such key")
OVERFLOW = err("increment or decrement would overflow")
DB_RANGE = err("DB index is out of range")
NOAUTH = CommandError("NOAUTH Authentication required.")
WRONGTYPE = CommandError("WRONGTYPE Operation against a key holding the wrong kind of value")


def wrong_arity(fullname: str) -> CommandError:
    return err(f"wrong number of arguments for '{fullname}' command")


class ConfigError(DtmError):
    """A setting (flag, config file or CONFIG SET) has a bad value."""
