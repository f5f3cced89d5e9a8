"""CLIENT PAUSE: while a pause lasts, clients' commands wait (all of them, or only those
that write) and then run, as Redis's postponed clients do.

Commands rejected before running (unknown, wrong arity, NOAUTH) are answered at once;
MONITOR clients, like Redis's replicas, are never paused.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from dtm.commands.table import Spec
    from dtm.session import Session


class PauseKind(enum.Enum):
    WRITE = "write"
    ALL = "all"


class Pause:
    def __init__(self) -> None:
        # Read by every session once per batch: while True, the fast path is off and
        # each command asks holds(). Cleared lazily once the deadline has passed.
        self.active = False
        self.kind = PauseKind.ALL
        self.deadline = 0.0  # trio clock
        self._ended = trio.Event()

    def pause(self, seconds: float, kind: PauseKind) -> None:
        """Pause for seconds from now; a longer pause already running keeps its end, and
        the latest kind applies (Redis's pauseClients)."""
        deadline = trio.current_time() + seconds
        self.deadline = max(self.deadline, deadline) if self.active else deadline
        self.kind = kind
        self.active = True

    def unpause(self) -> None:
        self.active = False
        self.deadline = 0.0
        self._ended.set()
        self._ended = trio.Event()

    def holds(self, spec: Spec, session: Session) -> bool:
        """Whether this command must wait for the pause to end."""
        # EXEC waits under a write pause when its transaction writes (Redis 7).
        return self.holds_writes(spec.writes or (
            spec.name == "exec" and any(queued.writes for queued, _ in session.queued)))

    def holds_writes(self, writes: bool) -> bool:
        """Whether a command that writes (or not) must wait for the pause to end."""
        if not self.active:
            return False
        if trio.current_time() >= self.deadline:
            self.unpause()
            return False
        return self.kind is PauseKind.ALL or writes

    async def wait(self, spec: Spec, session: Session) -> None:
        while self.holds(spec, session):
            await self._wait_end()

    async def wait_writes(self, writes: bool) -> None:
        while self.holds_writes(writes):
            await self._wait_end()

    async def _wait_end(self) -> None:
        with trio.move_on_at(self.deadline):
            await self._ended.wait()
