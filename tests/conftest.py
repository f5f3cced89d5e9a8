"""Fixtures: a real dtm server (subprocess, or in-process for trio tests), a real
redis-server for differential tests, and a small async RESP client."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from bench.processes import free_port, stop, wait_listening

ROOT = Path(__file__).resolve().parent.parent


class DtmProcess:
    def __init__(self, *args: str, tmp: Path) -> None:
        self.port = free_port()
        self.dir = tmp / "data"
        self.args = ["--port", str(self.port), "--dir", str(self.dir), *args]
        self.log = open(tmp / "server.log", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dtm.cli", "serve", *self.args],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT,
        )
        wait_listening("dtm", self.port, self.proc, timeout=15)

    def client(self, **kwargs: object) -> redis.Redis:
        return redis.Redis(port=self.port, **kwargs)  # type: ignore[arg-type]

    def stop(self) -> None:
        stop(self.proc, timeout=10)
        self.log.close()


@pytest.fixture(scope="session")
def dtm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DtmProcess]:
    server = DtmProcess("--buckets", "8", tmp=tmp_path_factory.mktemp("dtm"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def dtm_redis() -> Iterator[DtmProcess]:
    """A front on the redis engine spawning 8 shards. Its --dir is short and directly
    under /tmp: the shards listen on unix sockets there, whose paths must fit 107 bytes."""
    if shutil.which("redis-server") is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server must be installed in CI")
        pytest.skip("redis-server not installed")
    tmp = Path(tempfile.mkdtemp(prefix="dtm-re-"))
    try:
        server = DtmProcess("--engine", "redis", "--buckets", "8", tmp=tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    yield server
    server.stop()
    shutil.rmtree(tmp, ignore_errors=True)


def _flushed_client(server: DtmProcess, protocol: int) -> Iterator[redis.Redis]:
    client = server.client(protocol=protocol)
    client.flushall()
    yield client
    client.close()


@pytest.fixture
def r(dtm_server: DtmProcess) -> Iterator[redis.Redis]:
    """redis-py speaking RESP2 to a flushed dtm."""
    yield from _flushed_client(dtm_server, 2)


@pytest.fixture
def rr(dtm_redis: DtmProcess) -> Iterator[redis.Redis]:
    """redis-py speaking RESP2 to a flushed dtm on the redis engine."""
    yield from _flushed_client(dtm_redis, 2)


@pytest.fixture
def r3(dtm_server: DtmProcess) -> Iterator[redis.Redis]:
    """redis-py speaking RESP3 to a flushed dtm."""
    yield from _flushed_client(dtm_server, 3)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A real redis-server to compare against (skipped where it is not installed)."""
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server must be installed in CI")
        pytest.skip("redis-server not installed")
    port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--save", "", "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    wait_listening("redis-server", port, proc, timeout=15)
    yield port
    stop(proc, timeout=10)
