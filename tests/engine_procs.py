"""Real processes for the redis engine's multi-front and fault tests: plain redis-server
shards (started and killed by the test) and dtm fronts (``dtm serve --engine redis``)
as subprocesses, plus the bank helpers those tests share.

Every wait here is bounded: a process that does not start, answer or exit within its
timeout fails the test with its log's tail."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis

from bench.processes import StartError, free_port, stop, wait_listening
from dtm.buckets.scripts import DATABASES_NEEDED
from dtm.slots import key_slot, slot_owners

ROOT = Path(__file__).resolve().parent.parent
META_DB = 16  # dtm's locks, intents, decisions and cut (dtm/buckets/scripts.py)


def need_redis_server() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server must be installed in CI")
        pytest.skip("redis-server not installed", allow_module_level=True)
    return binary


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class RedisShard:
    """A redis-server on a TCP port of 127.0.0.1, configured as a dtm shard (18
    databases; for binlog mode ``appendonly yes`` / ``appendfsync always``)."""

    def __init__(self, directory: Path, *, appendonly: bool = False) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.appendonly = appendonly
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        args = [need_redis_server(), "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.dir), "--databases", str(DATABASES_NEEDED), "--save", "",
                "--logfile", str(self.dir / "redis.log"),
                "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "always"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_listening("redis-server", self.port, self.proc, timeout=15)
        deadline = time.monotonic() + 15
        while True:  # listening is not loaded: it answers LOADING while it reads its files
            try:
                if self.client().ping():
                    return
            except redis.BusyLoadingError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"shard on {self.port} never answered PING")
            time.sleep(0.02)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client(self, db: int = 0) -> redis.Redis:
        return redis.Redis(port=self.port, db=db, protocol=2, socket_timeout=10)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc, timeout=10)


class Front:
    """``dtm serve --engine redis`` as a subprocess; ``faults`` arms DTM_FAULTS."""

    def __init__(self, directory: Path, *args: str, faults: str = "", name: str = "front",
                 wait: bool = True) -> None:
        self.dir = directory
        self.port = free_port()
        self.log_path = directory.parent / f"{name}-{self.port}.log"
        env = dict(os.environ)
        env.pop("DTM_FAULTS", None)
        if faults:
            env["DTM_FAULTS"] = faults
        self.log = open(self.log_path, "wb")  # noqa: SIM115 (closed by kill/stop)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dtm.cli", "serve", "--engine", "redis", "--port",
             str(self.port), "--dir", str(directory), *args],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
        if wait:
            try:
                wait_listening("dtm front", self.port, self.proc, timeout=30)
            except StartError as exc:
                raise AssertionError(f"{exc}\n{tail(self.log_path)}") from None

    def client(self, **kwargs: Any) -> redis.Redis:
        # protocol=2: the redis engine refuses RESP3 for now (HELLO 3 -> NOPROTO).
        kwargs.setdefault("socket_timeout", 15)
        return redis.Redis(port=self.port, protocol=2, **kwargs)

    def output(self) -> str:
        self.log.flush()
        return tail(self.log_path)

    def wait_exit(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"front did not exit within {timeout} s\n{self.output()}") from None

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        self.log.close()

    def stop(self) -> None:
        stop(self.proc, timeout=15)
        self.log.close()


@contextmanager
def shards_and_fronts(root: Path, shards: int, fronts: int, *front_args: str,
                      appendonly: bool = False) -> Iterator[tuple[list[RedisShard], list[Front]]]:
    """shards plain redis-servers and fronts over all of them, stopped afterwards."""
    started: list[RedisShard] = []
    running: list[Front] = []
    try:
        for i in range(shards):
            started.append(RedisShard(root / f"shard-{i}", appendonly=appendonly))
        listing = ",".join(s.address for s in started)
        for i in range(fronts):
            running.append(Front(root / f"front-{i}", "--shards", listing, *front_args,
                                 name=f"front{i}"))
        yield started, running
    finally:
        for front in running:
            if front.proc.poll() is None:
                front.stop()
        for shard in started:
            shard.stop()


def spawned_pids(directory: Path, count: int) -> list[int]:
    """The pids of the redis-servers a front spawned under directory (their pidfiles)."""
    return [int((directory / f"shard-{i}" / "redis.pid").read_text().strip())
            for i in range(count)]


def spawned_pid(directory: Path, index: int) -> int | None:
    """One spawned shard's pid; None while it has no pidfile (it is starting)."""
    try:
        return int((directory / f"shard-{index}" / "redis.pid").read_text().strip())
    except (OSError, ValueError):
        return None


def kill_pid(pid: int, timeout: float = 10) -> None:
    """SIGKILL pid and wait until it is gone (it is not our child: poll /proc)."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}").exists():
        status = Path(f"/proc/{pid}/status")
        try:
            if "State:\tZ" in status.read_text():
                return  # a zombie holds no files and no socket
        except OSError:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"pid {pid} survived SIGKILL")
        time.sleep(0.01)


def keys_on_distinct_shards(prefix: str, shards: int, per_shard: int = 1) -> list[str]:
    """Key names spread over every shard: per_shard keys on each, in shard order."""
    owners = slot_owners(shards)
    found: dict[int, list[str]] = {i: [] for i in range(shards)}
    n = 0
    while any(len(v) < per_shard for v in found.values()):
        key = f"{prefix}{n}"
        bucket = owners[key_slot(key.encode())]
        if len(found[bucket]) < per_shard:
            found[bucket].append(key)
        n += 1
    return [key for i in range(shards) for key in found[i]]


def shard_of(key: str, shards: int) -> int:
    return slot_owners(shards)[key_slot(key.encode())]


def locks_left(clients: Iterable[redis.Redis]) -> list[bytes]:
    """dtm lock and intent keys still present in the shards (clients on META_DB)."""
    left: list[bytes] = []
    for client in clients:
        left += client.keys("dtm:lock:*") + client.keys("dtm:intent:*")
    return left


TRANSFER_SCRIPT = """
local from = tonumber(redis.call('GET', KEYS[1]))
local amount = tonumber(ARGV[1])
redis.call('SET', KEYS[1], from - amount)
redis.call('INCRBY', KEYS[2], amount)
return from - amount
"""
