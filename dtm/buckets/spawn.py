"""Local redis-server processes, one per bucket, under dtm's data directory.

``async with spawn_shards(dir, count, appendonly=…) as shards`` writes
``dir/shard-<i>/redis.conf`` (dtm owns that file and rewrites it at every start), starts
``redis-server`` on it, waits until each answers PING, and yields a ``ShardSet`` whose
``addresses`` the redis engine connects to. Each shard listens on a unix socket in its
folder (no TCP port to collide with; ``port 0``) or, with ``tcp=True``, on a free port
of 127.0.0.1. ``save ""`` everywhere: dtm decides when shards save, not a timer.

While the block runs, a shard that exits is logged and reported (its ``exited`` event,
and ``on_exit``); restarting it is the caller's decision (``shards.restart(i)``). At the
end every shard is stopped: ``SHUTDOWN NOSAVE`` (or ``SAVE`` with ``save_on_stop``; the
AOF is flushed and synced either way), then SIGTERM, then SIGKILL, each after a grace
period. A redis-server left running on a shard's folder (say, by a dtm killed with -9)
is found through its pidfile and refused: two servers on one AOF would corrupt it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import structlog
import trio

from dtm.buckets.address import ShardAddress, ShardError, ShardUnavailable
from dtm.buckets.pool import DedicatedConnection
from dtm.buckets.scripts import DATABASES_NEEDED

log = structlog.get_logger("dtm.spawn")

SUN_PATH_MAX = 107  # sockaddr_un.sun_path holds 108 bytes, the last one a NUL
READY_POLL = 0.02  # seconds between PINGs while a shard starts


class SpawnError(Exception):
    """A shard could not be started; ``str()`` is one line for the CLI (after "dtm: error: ")."""


class RedisServerMissing(SpawnError):
    def __init__(self) -> None:
        super().__init__("--engine redis needs redis-server (Debian: apt-get install redis-server)")


@attrs.define(eq=False)
class Shard:
    index: int
    dir: Path
    address: ShardAddress
    process: trio.Process | None = None
    exited: trio.Event = attrs.Factory(trio.Event)  # set when it exits on its own
    returncode: int | None = None

    @property
    def log_file(self) -> Path:
        return self.dir / "redis.log"

    @property
    def pid_file(self) -> Path:
        return self.dir / "redis.pid"


@attrs.define(eq=False)
class ShardSet:
    """The running shards, and how to start, restart and stop them."""

    binary: str
    shards: list[Shard]
    appendonly: bool = False
    appendfsync: str = "everysec"
    save_on_stop: bool = False
    start_timeout: float = 30.0
    stop_grace: float = 5.0
    on_exit: Callable[[Shard], None] | None = None
    # The RDB file every shard loads at start and a checkpoint writes (one name per cut).
    dbfilename: str = "dump.rdb"
    _nursery: trio.Nursery | None = None
    _stopping: bool = False

    @property
    def addresses(self) -> list[ShardAddress]:
        return [shard.address for shard in self.shards]

    def __len__(self) -> int:
        return len(self.shards)

    def __getitem__(self, index: int) -> Shard:
        return self.shards[index]

    def __iter__(self) -> Iterator[Shard]:
        return iter(self.shards)

    async def restart(self, index: int) -> None:
        shard = self.shards[index]
        if shard.process is not None and shard.process.poll() is None:
            raise SpawnError(f"shard {index} is still running (pid {shard.process.pid})")
        await self._start(shard)

    async def restart_all(self) -> None:
        """Stop every shard and start them all again on their files (a shard without
        persistence that died must not rejoin the others at another cut)."""
        self._stopping = True  # their supervisors see these exits as planned
        try:
            async with trio.open_nursery() as nursery:
                for shard in self.shards:
                    nursery.start_soon(self._stop, shard)
        finally:
            self._stopping = False
        for shard in self.shards:
            await self._start(shard)

    def config(self, shard: Shard) -> str:
        lines = [
            "# Written by dtm at every start of this shard: edits here are lost.",
            "daemonize no",
            "protected-mode yes",
            f"dir {_quote(shard.dir)}",
            f"logfile {_quote(shard.log_file)}",
            f"pidfile {_quote(shard.pid_file)}",
            'save ""',
            # 0-15 the user's, 16 dtm's locks/intents/decisions, 17 scratch (docs/redis-engine.md)
            f"databases {DATABASES_NEEDED}",
            f"appendonly {'yes' if self.appendonly else 'no'}",
            f"appendfsync {self.appendfsync}",
            f"dbfilename {_quote(self.dbfilename)}",
            # A checkpoint names each cut's file (CONFIG SET dbfilename, protected in 7.0).
            "enable-protected-configs local",
        ]
        if shard.address.path:
            lines += ["port 0", f"unixsocket {_quote(shard.address.path)}", "unixsocketperm 700"]
        else:
            lines += [f"bind {shard.address.host}", f"port {shard.address.port}"]
        return "\n".join(lines) + "\n"

    async def _start(self, shard: Shard) -> None:
        assert self._nursery is not None
        shard.dir.mkdir(parents=True, exist_ok=True)
        _refuse_if_running(shard)
        conf = shard.dir / "redis.conf"
        conf.write_text(self.config(shard))
        # Before it reads its config redis-server reports to stderr (a config error, say):
        # that goes to the same log file.
        with open(shard.log_file, "ab") as output:  # noqa: ASYNC230 (local, once per start)
            process = await trio.lowlevel.open_process(
                [self.binary, str(conf)], stdin=subprocess.DEVNULL, stdout=output,
                stderr=output, cwd=shard.dir)
        shard.process, shard.exited, shard.returncode = process, trio.Event(), None
        try:
            await self._wait_ready(shard, process)
        except BaseException:
            with trio.CancelScope(shield=True):
                process.kill()
                await process.wait()
            raise
        log.info("shard started", shard=shard.index, pid=process.pid, address=str(shard.address))
        self._nursery.start_soon(self._supervise, shard, process)

    async def _wait_ready(self, shard: Shard, process: trio.Process) -> None:
        with trio.move_on_after(self.start_timeout):
            while True:
                if process.poll() is not None:
                    raise SpawnError(f"shard {shard.index}: redis-server exited at start (status "
                                     f"{process.returncode}){_last_line(shard.log_file)}; "
                                     f"see {shard.log_file}")
                if await _answers_ping(shard.address):
                    return
                await trio.sleep(READY_POLL)
        raise SpawnError(f"shard {shard.index}: redis-server did not answer PING within "
                         f"{self.start_timeout:g} s; see {shard.log_file}")

    async def _supervise(self, shard: Shard, process: trio.Process) -> None:
        code = await process.wait()
        if self._stopping or shard.process is not process:
            return
        shard.returncode = code
        log.error("shard exited", shard=shard.index, pid=process.pid, status=code,
                  log=str(shard.log_file))
        shard.exited.set()
        if self.on_exit is not None:
            self.on_exit(shard)

    async def _stop_all(self) -> None:
        self._stopping = True
        async with trio.open_nursery() as nursery:
            for shard in self.shards:
                nursery.start_soon(self._stop, shard)

    async def _stop(self, shard: Shard) -> None:
        process = shard.process
        if process is None or process.poll() is not None:
            return
        with trio.move_on_after(self.stop_grace):
            await self._shutdown_command(shard)
            await process.wait()
        for signal_it in (process.terminate, process.kill):
            if process.poll() is not None:
                break
            log.warning("shard did not stop; signalling it", shard=shard.index, pid=process.pid,
                        signal=signal_it.__name__)
            signal_it()
            with trio.move_on_after(self.stop_grace):
                await process.wait()
        shard.returncode = await process.wait()

    async def _shutdown_command(self, shard: Shard) -> None:
        try:
            conn = DedicatedConnection(shard.address, await shard.address.connect(1.0))
        except ShardUnavailable:
            return
        try:
            await conn.send("SHUTDOWN", "SAVE" if self.save_on_stop else "NOSAVE")
            reply = await conn.reply()  # none on success: the server closes the connection
            if isinstance(reply, ShardError):
                log.error("shard refused to shut down", shard=shard.index, error=str(reply))
        except ShardUnavailable:
            pass
        finally:
            conn.close()


@asynccontextmanager
async def spawn_shards(
    directory: str | os.PathLike[str], count: int, *, appendonly: bool = False,
    dbfilename: str = "dump.rdb",
    appendfsync: str = "everysec", save_on_stop: bool = False, tcp: bool = False,
    binary: str | None = None, start_timeout: float = 30.0, stop_grace: float = 5.0,
    on_exit: Callable[[Shard], None] | None = None,
) -> AsyncIterator[ShardSet]:
    """Start ``count`` redis-servers under ``directory``, supervise them for the body of
    the block, stop them after it."""
    if count < 1:
        raise ValueError("spawn_shards needs at least one shard")
    binary = binary or shutil.which("redis-server")
    if binary is None:
        raise RedisServerMissing()
    root = Path(directory).resolve()
    folders = [root / f"shard-{i}" for i in range(count)]
    shards = [Shard(i, folder, _address(folder, tcp)) for i, folder in enumerate(folders)]
    shard_set = ShardSet(binary, shards, appendonly, appendfsync, save_on_stop, start_timeout,
                         stop_grace, on_exit, dbfilename)
    try:
        async with trio.open_nursery() as nursery:
            shard_set._nursery = nursery
            try:
                for shard in shards:
                    await shard_set._start(shard)
                yield shard_set
            finally:
                with trio.CancelScope(shield=True):
                    await shard_set._stop_all()
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # The supervisors never raise, so a group holds what the body or a start raised:
        # pass that on as it is.
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise


def _address(folder: Path, tcp: bool) -> ShardAddress:
    if tcp:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return ShardAddress(host="127.0.0.1", port=int(sock.getsockname()[1]))
    path = str(folder / "redis.sock")
    if len(os.fsencode(path)) > SUN_PATH_MAX:
        raise SpawnError(f"the socket path {path} is longer than {SUN_PATH_MAX} bytes; "
                         "use a shorter --dir")
    return ShardAddress(path=path)


async def _answers_ping(address: ShardAddress) -> bool:
    """True once the shard answers PONG (while it loads its data it answers LOADING)."""
    try:
        conn = DedicatedConnection(address, await address.connect(1.0))
    except ShardUnavailable:
        return False
    try:
        with trio.move_on_after(1.0):
            return bool(await conn.call("PING") == b"PONG")
        return False
    except (ShardError, ShardUnavailable):
        return False
    finally:
        conn.close()


def _refuse_if_running(shard: Shard) -> None:
    try:
        pid = int(shard.pid_file.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return  # no pidfile, or its process is gone
    if b"redis-server" in cmdline:
        raise SpawnError(f"shard {shard.index}: a redis-server (pid {pid}) is still running on "
                         f"{shard.dir} (left by a front that died?); serve the running shards "
                         f"with --shards unix:{shard.address.path or shard.address}…, or stop "
                         "them first")


def _quote(value: object) -> str:
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def _last_line(log_file: Path) -> str:
    try:
        lines = [line for line in log_file.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return f": {lines[-1].strip()}" if lines else ""
