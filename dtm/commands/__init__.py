"""The command table and its families; importing this package registers every command."""

from dtm.commands import connection, keys, server, strings, transactions  # noqa: F401
from dtm.commands.table import COMMANDS, LOOKUP, Scope, Spec, resolve

__all__ = ["COMMANDS", "LOOKUP", "Scope", "Spec", "resolve"]
