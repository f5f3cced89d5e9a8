"""Persistence and shutdown: SAVE, BGSAVE, LASTSAVE, SHUTDOWN (the mode does the work)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dtm.commands.table import command
from dtm.errors import SYNTAX, err
from dtm.resp import NO_REPLY

if TYPE_CHECKING:
    from dtm.session import Session

GROUP = "server"

@command("shutdown", -1, "admin noscript loading stale no_multi", group=GROUP, summary="Stop the server")
async def shutdown(s: Session, argv: list[bytes]) -> Any:
    options = {arg.lower() for arg in argv[1:]}
    if not options <= {b"nosave", b"save", b"now", b"force", b"abort"} or {b"save", b"nosave"} <= options:
        raise SYNTAX
    if b"abort" in options:
        if len(options) > 1:
            raise SYNTAX
        raise err("No shutdown in progress.")
    s.log.info("shutdown requested by client")
    refused = await s.server.request_shutdown(True if b"save" in options else False if b"nosave" in options else None)
    if refused is not None:  # the save failed: Redis goes on serving, and says so
        raise err("Errors trying to SHUTDOWN. Check logs.")
    s.close_after_reply = True
    return NO_REPLY


@command("save", 1, "admin noscript no_multi", group=GROUP, summary="Write a snapshot and wait for it")
async def save(s: Session, argv: list[bytes]) -> Any:
    await s.server.mode.save(s.server, background=False)
    return "OK"


@command("bgsave", -1, "admin noscript no_multi", group=GROUP, summary="Write a snapshot in the background")
async def bgsave(s: Session, argv: list[bytes]) -> Any:
    if len(argv) > 2 or (len(argv) == 2 and argv[1].lower() != b"schedule"):
        raise SYNTAX
    started = await s.server.mode.save(s.server, background=True, schedule=len(argv) == 2)
    return "Background saving started" if started else "Background saving scheduled"


@command("lastsave", 1, "loading stale fast", group=GROUP, summary="Time of the last successful snapshot", since="1.0.0")
def lastsave(s: Session, argv: list[bytes]) -> Any:
    return s.server.mode.last_save()
