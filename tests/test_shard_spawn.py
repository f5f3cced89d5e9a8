"""dtm/buckets/spawn.py: real redis-server shards started under a data directory,
supervised, and stopped."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog.testing
import trio

from dtm.buckets.link import open_link
from dtm.buckets.scripts import DATABASES_NEEDED
from dtm.buckets.spawn import RedisServerMissing, Shard, SpawnError, spawn_shards

if shutil.which("redis-server") is None and not os.environ.get("CI"):
    pytest.skip("redis-server not installed", allow_module_level=True)


@pytest.fixture
def data_dir() -> Iterator[Path]:
    # Short: each shard's unix socket path must fit in 107 bytes.
    path = Path(tempfile.mkdtemp(prefix="dtm-spawn-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def test_three_shards_start_answer_and_stop_with_their_files_under_the_dir(
    data_dir: Path,
) -> None:
    with trio.fail_after(20):
        async with spawn_shards(data_dir, 3) as shards:
            assert len(shards) == 3
            for i, address in enumerate(shards.addresses):
                assert address.path == str(data_dir / f"shard-{i}" / "redis.sock")
                async with open_link(address) as link:
                    assert await link.call("SET", "who", i) == b"OK"
                    assert await link.call("CONFIG", "GET", "dir") == [
                        b"dir", str(data_dir / f"shard-{i}").encode()]
                    assert await link.call("CONFIG", "GET", "save") == [b"save", b""]
                    assert await link.call("CONFIG", "GET", "port") == [b"port", b"0"]
                    assert await link.call("CONFIG", "GET", "databases") == [b"databases", str(DATABASES_NEEDED).encode()]
            processes = [shard.process for shard in shards]
            for i in range(3):
                names = {path.name for path in (data_dir / f"shard-{i}").iterdir()}
                assert {"redis.conf", "redis.log", "redis.sock", "redis.pid"} <= names
    for i, process in enumerate(processes):
        assert process is not None and process.returncode == 0  # SHUTDOWN, not a signal
        folder = data_dir / f"shard-{i}"
        assert not (folder / "redis.sock").exists() and not (folder / "redis.pid").exists()
        assert not (folder / "dump.rdb").exists()  # SHUTDOWN NOSAVE


async def test_appendonly_shards_keep_their_data_across_a_restart(data_dir: Path) -> None:
    with trio.fail_after(20):
        async with spawn_shards(data_dir, 2, appendonly=True, appendfsync="always") as shards:
            for i, address in enumerate(shards.addresses):
                async with open_link(address) as link:
                    await link.call("SET", "kept", f"shard {i}")
        assert (data_dir / "shard-1" / "appendonlydir").is_dir()
        async with spawn_shards(data_dir, 2, appendonly=True) as shards:
            for i, address in enumerate(shards.addresses):
                async with open_link(address) as link:
                    assert await link.call("GET", "kept") == f"shard {i}".encode()


async def test_save_on_stop_writes_each_shards_snapshot(data_dir: Path) -> None:
    with trio.fail_after(20):
        async with spawn_shards(data_dir, 2, save_on_stop=True, tcp=True) as shards:
            for address in shards.addresses:
                assert address.host == "127.0.0.1" and address.port > 0
                async with open_link(address) as link:
                    await link.call("SET", "k", "v")
    assert (data_dir / "shard-0" / "dump.rdb").is_file()
    assert (data_dir / "shard-1" / "dump.rdb").is_file()


async def test_a_shard_killed_during_supervision_is_reported_and_can_be_restarted(
    data_dir: Path,
) -> None:
    reported: list[Shard] = []
    with trio.fail_after(20), structlog.testing.capture_logs() as logs:
        async with spawn_shards(data_dir, 3, on_exit=reported.append) as shards:
            victim = shards[1].process
            assert victim is not None
            victim.send_signal(signal.SIGKILL)
            await shards[1].exited.wait()
            assert reported == [shards[1]]
            assert shards[1].returncode == -signal.SIGKILL
            assert not shards[0].exited.is_set() and not shards[2].exited.is_set()
            await shards.restart(1)
            async with open_link(shards[1].address) as link:
                assert await link.call("PING") == b"PONG"
    exits = [entry for entry in logs if entry["event"] == "shard exited"]
    assert len(exits) == 1  # the stop at the end is not reported as a crash
    assert exits[0]["shard"] == 1 and exits[0]["status"] == -signal.SIGKILL
    assert exits[0]["log"] == str(data_dir / "shard-1" / "redis.log")


async def test_missing_redis_server_is_one_clear_line(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PATH", str(data_dir))
    with pytest.raises(RedisServerMissing) as raised:
        async with spawn_shards(data_dir, 2):
            pass  # pragma: no cover
    assert f"dtm: error: {raised.value}" == (
        "dtm: error: --engine redis needs redis-server (Debian: apt-get install redis-server)")
    assert not (data_dir / "shard-0").exists()


async def test_a_shard_that_cannot_start_names_its_log_file(data_dir: Path) -> None:
    fake = data_dir / "fake-redis-server"
    fake.write_text("#!/bin/sh\necho 'FATAL CONFIG FILE ERROR' >&2\nexit 1\n")
    fake.chmod(0o755)
    with trio.fail_after(20), pytest.raises(SpawnError) as raised:
        async with spawn_shards(data_dir, 2, binary=str(fake)):
            pass  # pragma: no cover
    message = str(raised.value)
    assert "\n" not in message
    assert message == (f"shard 0: redis-server exited at start (status 1): FATAL CONFIG FILE "
                       f"ERROR; see {data_dir / 'shard-0' / 'redis.log'}")


async def test_a_shard_that_never_answers_is_given_up_after_the_start_timeout(
    data_dir: Path,
) -> None:
    fake = data_dir / "silent-redis-server"
    fake.write_text("#!/bin/sh\nexec sleep 30\n")
    fake.chmod(0o755)
    with trio.fail_after(10), pytest.raises(SpawnError) as raised:
        async with spawn_shards(data_dir, 1, binary=str(fake), start_timeout=0.3):
            pass  # pragma: no cover
    assert str(raised.value) == (f"shard 0: redis-server did not answer PING within 0.3 s; "
                                 f"see {data_dir / 'shard-0' / 'redis.log'}")


async def test_a_redis_server_still_running_on_a_shard_folder_is_refused(data_dir: Path) -> None:
    with trio.fail_after(20):
        async with spawn_shards(data_dir, 1) as shards:
            process = shards[0].process
            assert process is not None
            with pytest.raises(SpawnError, match=rf"shard 0: a redis-server \(pid {process.pid}\) "
                                                 "is still running on"):
                async with spawn_shards(data_dir, 1):
                    pass  # pragma: no cover
            async with open_link(shards[0].address) as link:  # the first one is untouched
                assert await link.call("PING") == b"PONG"


async def test_a_shard_that_ignores_shutdown_is_terminated_then_killed(data_dir: Path) -> None:
    with trio.fail_after(20), structlog.testing.capture_logs() as logs:
        async with spawn_shards(data_dir, 1, stop_grace=0.2) as shards:
            process = shards[0].process
            assert process is not None
            process.send_signal(signal.SIGSTOP)  # answers nothing; SIGTERM stays pending
    assert process.returncode == -signal.SIGKILL
    signals = [entry["signal"] for entry in logs if entry["event"].startswith("shard did not stop")]
    assert signals == ["terminate", "kill"]
    assert not [entry for entry in logs if entry["event"] == "shard exited"]


async def test_an_error_in_the_body_comes_out_as_itself_and_the_shards_still_stop(
    data_dir: Path,
) -> None:
    with trio.fail_after(20), pytest.raises(KeyError, match="boom"):
        async with spawn_shards(data_dir, 2) as shards:
            processes = [shard.process for shard in shards]
            raise KeyError("boom")
    assert all(process is not None and process.returncode == 0 for process in processes)
