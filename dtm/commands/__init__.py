"""The command table and its families; importing this package registers every command."""

from dtm.commands import (  # noqa: F401
    bits,
    connection,
    info,
    introspection,
    keys,
    lcs,
    objects,
    persistence,
    server,
    strings,
    transactions,
)
from dtm.commands.table import COMMANDS, LOOKUP, Scope, Spec, resolve

__all__ = ["COMMANDS", "LOOKUP", "Scope", "Spec", "resolve"]
