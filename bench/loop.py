"""The load generator's event loop: coroutines over one epoll set and a timer heap.

The generator must cost far less per request than the server it measures. Under Trio a
request cost the generator about twice the CPU the server spends on it (a task switch, a
cancel scope and an epoll re-arm per wait), so a 2-core machine measured the generator,
not the server. Here a coroutine waits by yielding what it waits for; a socket stays
registered (level-triggered) while it is used, so a request costs its send and recv and a
share of one ``epoll_wait``. Only what the workloads need: wait for a socket to be
readable or writable, sleep until a time, start more coroutines.
"""

from __future__ import annotations

import heapq
import select
import time
import types
from collections.abc import Coroutine, Generator
from typing import Any

READ, WRITE, SLEEP, FORGET = 0, 1, 2, 3
_MASKS = {READ: select.EPOLLIN, WRITE: select.EPOLLOUT}

Task = Coroutine[Any, Any, Any]


@types.coroutine
def wait_readable(fd: int) -> Generator[tuple[int, Any], None, None]:
    yield (READ, fd)


@types.coroutine
def wait_writable(fd: int) -> Generator[tuple[int, Any], None, None]:
    yield (WRITE, fd)


@types.coroutine
def sleep_until(when: float) -> Generator[tuple[int, Any], None, None]:
    """Sleep until time.monotonic() reaches when."""
    yield (SLEEP, when)


@types.coroutine
def forget(fd: int) -> Generator[tuple[int, Any], None, None]:
    """Drop fd from the epoll set; call before closing its socket (a reused fd number
    would otherwise be taken for a registered one)."""
    yield (FORGET, fd)


class EventLoop:
    """Runs coroutines until all have finished; the first exception ends the run."""

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._registered: dict[int, int] = {}  # fd -> epoll mask
        self._waiting: dict[int, Task] = {}  # fd -> the coroutine waiting on it
        self._timers: list[tuple[float, int, Task]] = []
        self._ready: list[Task] = []
        self._tasks = 0
        self._sequence = 0
        self._give_up_at: float | None = None

    def spawn(self, coro: Task) -> None:
        self._tasks += 1
        self._ready.append(coro)

    def run(self, main: Task, give_up_at: float | None = None) -> Any:
        """Run main and everything spawned until all finish; return main's result. From
        give_up_at (time.monotonic()) on, a wait on a socket raises TimeoutError instead,
        so a server that stops answering cannot hang the generator."""
        self._give_up_at = give_up_at
        result: list[Any] = []

        async def wrapper() -> None:
            result.append(await main)

        self.spawn(wrapper())
        try:
            while self._tasks:
                ready, self._ready = self._ready, []
                for coro in ready:
                    self._step(coro)
                if self._tasks and not self._ready:
                    self._wait()
        finally:
            self._epoll.close()
        return result[0]

    def _step(self, coro: Task, exc: BaseException | None = None) -> None:
        # a coroutine runs on until it waits for something not yet there
        try:
            kind, arg = coro.send(None) if exc is None else coro.throw(exc)
        except StopIteration:
            self._tasks -= 1
            return
        except BaseException:
            self._tasks -= 1
            raise
        if kind == READ or kind == WRITE:
            mask = _MASKS[kind]
            current = self._registered.get(arg)
            if current is None:
                self._epoll.register(arg, mask)
                self._registered[arg] = mask
            elif current != mask:
                self._epoll.modify(arg, mask)
                self._registered[arg] = mask
            self._waiting[arg] = coro
        elif kind == SLEEP:
            self._sequence += 1
            heapq.heappush(self._timers, (arg, self._sequence, coro))
        elif kind == FORGET:
            if self._registered.pop(arg, None) is not None:
                self._epoll.unregister(arg)
            self._waiting.pop(arg, None)
            self._ready.append(coro)
        else:
            raise RuntimeError(f"unknown wait {kind!r}")

    def _wait(self) -> None:
        timeout = -1.0
        if self._timers:
            timeout = max(0.0, self._timers[0][0] - time.monotonic())
        if self._give_up_at is not None and self._waiting:
            until = max(0.0, self._give_up_at - time.monotonic())
            timeout = until if timeout < 0 else min(timeout, until)
        if self._waiting or timeout >= 0:
            events = self._epoll.poll(timeout) if self._waiting else ()
            if not self._waiting:
                time.sleep(timeout)
            for fd, _ in events:
                coro = self._waiting.pop(fd, None)
                if coro is None:
                    # ready but nobody waits (a closing peer): stop hearing about it
                    self._epoll.unregister(fd)
                    del self._registered[fd]
                else:
                    self._ready.append(coro)
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            self._ready.append(heapq.heappop(self._timers)[2])
        if self._give_up_at is not None and now >= self._give_up_at and self._waiting:
            waiting, self._waiting = self._waiting, {}
            for coro in waiting.values():
                self._step(coro, TimeoutError("no reply from the server"))
        if not self._ready and not self._waiting and not self._timers:
            raise RuntimeError("every coroutine is waiting on nothing")
