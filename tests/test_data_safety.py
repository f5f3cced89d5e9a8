"""No operator loses data, and no loss is hidden: every case restarts the real server
(a subprocess) and counts keys. A directory written in one mode loads in any mode;
damage before the end of a log, or a missing file, refuses the start-up with one line;
a mode that cannot save refuses writes (MISCONF) and refuses to shut down; the log
holds what was applied, never a request judged differently later."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from conftest import ROOT, DtmProcess
from redis.backoff import NoBackoff
from redis.retry import Retry

from modes.check import check
from modes.datadir import MANIFEST
from modes.record import MAGIC, encode_record

KEYS = 300


# ------------------------------------------------------------------ helpers


_started: list[DtmProcess] = []


@pytest.fixture(autouse=True)
def _no_server_outlives_its_test() -> Iterator[None]:
    yield
    while _started:
        server = _started.pop()
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait()
        server.log.close()


def serve(tmp: Path, *args: str) -> DtmProcess:
    server = DtmProcess(*args, tmp=tmp)
    _started.append(server)
    return server


def kill9(server: DtmProcess) -> None:
    server.proc.kill()
    server.proc.wait()
    server.log.close()


def write_keys(client: redis.Redis, prefix: str = "k", count: int = KEYS) -> None:
    with client.pipeline(transaction=False) as pipe:
        for i in range(count):
            pipe.set(f"{prefix}{i}", f"v{i}")
        pipe.execute()


def count(server: DtmProcess, prefix: str = "k", written: int = KEYS) -> int:
    """How many of the keys write_keys(prefix, written) wrote are there."""
    return int(server.client().exists(*[f"{prefix}{i}" for i in range(written)]))


def refused(directory: Path, *args: str) -> str:
    """Start a server that must refuse to start; its one-line complaint."""
    result = subprocess.run([sys.executable, "-m", "dtm.cli", "serve", "--port", "0", "--dir", str(directory),
                             *args], capture_output=True, text=True, cwd=ROOT, timeout=30, check=False)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr and "ExceptionGroup" not in result.stderr, result.stderr
    (line,) = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert line.startswith("dtm: error: "), line
    return line


def info(client: redis.Redis) -> dict[str, object]:
    return client.info("persistence")


def wait_for(predicate: object, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MB tmpfs: a disk that really fills up (needs root to mount)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                          capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


# ------------------------------------------------------- one directory, any mode


@pytest.mark.parametrize("other", ["checkpoint", "none"])
def test_binlog_directory_loads_fully_in_another_mode_and_its_snapshot_keeps_everything(
        tmp_path: Path, other: str) -> None:
    server = serve(tmp_path, "--mode", "binlog")
    write_keys(server.client())
    kill9(server)  # nothing but the log holds the keys
    server = serve(tmp_path, "--mode", other, "--checkpoint-interval", "0.05")
    client = server.client()
    assert count(server) == KEYS
    client.set("later", "1")
    if other == "none":
        assert client.save()
    else:
        saves = int(info(client)["rdb_saves"])  # type: ignore[call-overload]
        # one save may have captured before the SET: wait for the one after it
        wait_for(lambda: int(info(client)["rdb_saves"]) > saves + 1)  # type: ignore[call-overload]
    kill9(server)  # the snapshot replaced the log: it must hold everything
    server = serve(tmp_path, "--mode", "binlog")
    assert count(server) == KEYS and server.client().get("later") == b"1"
    server.stop()


def test_checkpoint_directory_then_binlog_then_checkpoint_again(tmp_path: Path) -> None:
    server = serve(tmp_path, "--mode", "checkpoint")
    write_keys(server.client(), "a")
    server.stop()  # final checkpoint
    server = serve(tmp_path, "--mode", "binlog")
    assert count(server, "a") == KEYS
    write_keys(server.client(), "b")
    kill9(server)
    server = serve(tmp_path, "--mode", "checkpoint", "--checkpoint-interval", "3600")
    assert (count(server, "a"), count(server, "b")) == (KEYS, KEYS)
    server.stop()
    server = serve(tmp_path, "--mode", "none")
    assert (count(server, "a"), count(server, "b")) == (KEYS, KEYS)
    server.stop()


# ------------------------------------------------------- damage before the end


def _binlog_of_five(tmp_path: Path) -> tuple[Path, Path]:
    server = serve(tmp_path, "--mode", "binlog")
    client = server.client()
    for i in range(5):
        client.set(f"k{i}", f"v{i}")
    server.stop()
    (log,) = (server.dir / "binlog").glob("*.log")
    return server.dir, log


def test_a_damaged_length_in_the_middle_of_the_log_refuses_the_start(tmp_path: Path) -> None:
    directory, log = _binlog_of_five(tmp_path)
    data = bytearray(log.read_bytes())
    first = len(MAGIC) + int.from_bytes(data[len(MAGIC):len(MAGIC) + 4], "little") + 8
    data[first + 3] = 0x7F  # the second record now claims ~2 GB: past the end of the file
    log.write_bytes(bytes(data))
    assert "Bad file format reading the binlog" in refused(directory, "--mode", "binlog")
    assert log.stat().st_size == len(data)  # nothing was cut
    assert "Bad file format" in refused(directory, "--mode", "checkpoint")  # any mode
    report = check(str(directory))
    assert report.problems == 1 and "damaged length" in "\n".join(report.lines)
    assert check(str(directory), repair=True).repaired  # the operator's choice
    server = serve(tmp_path, "--mode", "binlog")
    assert count(server, written=5) == 1  # what preceded the damage
    server.stop()


def test_a_flipped_byte_in_the_last_record_refuses_the_start(tmp_path: Path) -> None:
    directory, log = _binlog_of_five(tmp_path)
    data = bytearray(log.read_bytes())
    data[-2] ^= 0x01  # the file is whole: this is damage, not a crash mid-write
    log.write_bytes(bytes(data))
    assert "checksum mismatch" in refused(directory, "--mode", "binlog")
    assert check(str(directory)).problems == 1


def test_a_torn_end_is_still_cut_on_its_own(tmp_path: Path) -> None:
    _, log = _binlog_of_five(tmp_path)
    log.write_bytes(log.read_bytes()[:-3])
    server = serve(tmp_path, "--mode", "binlog")
    assert count(server, written=5) == 4
    server.stop()


# ------------------------------------------------------- missing files


def _binlog_with_snapshot_and_log(tmp_path: Path) -> Path:
    server = serve(tmp_path, "--mode", "binlog")
    client = server.client()
    write_keys(client, "a")
    assert client.save()
    write_keys(client, "b")
    kill9(server)
    return server.dir


def test_a_missing_manifest_refuses_the_start(tmp_path: Path) -> None:
    directory = _binlog_with_snapshot_and_log(tmp_path)
    (directory / MANIFEST).unlink()
    for mode in ("binlog", "checkpoint", "none"):
        assert "manifest.json is missing" in refused(directory, "--mode", mode)
    assert check(str(directory)).problems >= 1


def test_a_missing_log_named_by_the_manifest_refuses_the_start(tmp_path: Path) -> None:
    directory = _binlog_with_snapshot_and_log(tmp_path)
    for log in (directory / "binlog").glob("*.log"):
        log.unlink()
    assert "named by the manifest is missing" in refused(directory, "--mode", "binlog")
    assert check(str(directory)).problems >= 1


def test_a_missing_bucket_file_refuses_the_start(tmp_path: Path) -> None:
    directory = _binlog_with_snapshot_and_log(tmp_path)
    next((directory / "snapshots").rglob("bucket-3.snap")).unlink()
    assert "named by the manifest is missing" in refused(directory, "--mode", "checkpoint")


# ------------------------------------------------------- saves that fail


def test_checkpoints_failing_on_a_full_disk_refuse_writes_until_one_succeeds(
        tmp_path: Path, small_disk: Path) -> None:
    directory = small_disk / "data"
    server = serve(tmp_path, "--mode", "checkpoint", "--checkpoint-interval", "0.1", "--dir", str(directory))
    client = server.client()
    write_keys(client, "a", 100)
    assert client.save()
    filler = small_disk / "filler"
    free = shutil.disk_usage(small_disk).free
    filler.write_bytes(b"\0" * max(0, free - 4096))  # the next checkpoint cannot be written
    acked = 0
    deadline = time.monotonic() + 10
    with pytest.raises(redis.ResponseError, match="^MISCONF"):
        while time.monotonic() < deadline:
            client.set(f"b{acked}", "x" * 100)
            acked += 1
            time.sleep(0.001)
    assert info(client)["rdb_last_bgsave_status"] == "err"
    assert client.get("a1") == b"v1"  # reads go on
    with pytest.raises(redis.ResponseError, match="^MISCONF"):
        client.incr("counter")
    assert len(list((directory / "snapshots").iterdir())) == 1  # failed ones left no folder
    filler.unlink()
    wait_for(lambda: info(client)["rdb_last_bgsave_status"] == "ok")
    client.set("after", "1")
    client.save()
    kill9(server)
    server = serve(tmp_path, "--mode", "checkpoint", "--dir", str(directory))
    assert count(server, "a", 100) == 100 and count(server, "b", acked + 1) == acked
    assert server.client().get("after") == b"1"
    server.stop()


def test_shutdown_save_that_fails_is_refused_and_the_server_keeps_serving(tmp_path: Path) -> None:
    directory = tmp_path / "nowhere"  # none mode: nothing is created before a save
    server = serve(tmp_path, "--dir", str(directory))
    client = server.client()
    write_keys(client)
    directory.write_text("a file where the directory should be")
    with pytest.raises(redis.ResponseError, match="Errors trying to SHUTDOWN. Check logs."):
        client.shutdown(save=True)
    assert client.ping() and count(server) == KEYS
    client.bgsave()
    wait_for(lambda: not info(client)["rdb_bgsave_in_progress"])
    assert info(client)["rdb_last_bgsave_status"] == "err"  # refused by the data dir: reported
    directory.unlink()
    no_retry = redis.Redis(port=server.port, retry=Retry(NoBackoff(), 0))
    no_retry.shutdown(save=True)  # returns once the connection closes: success
    assert server.proc.wait(10) == 0
    server.log.close()
    server = serve(tmp_path, "--dir", str(directory))
    assert count(server) == KEYS
    server.stop()


def test_sigterm_whose_final_checkpoint_fails_keeps_serving(tmp_path: Path) -> None:
    server = serve(tmp_path, "--mode", "checkpoint", "--checkpoint-interval", "3600")
    client = server.client()
    write_keys(client)
    moved = tmp_path / "moved"
    server.dir.rename(moved)
    server.dir.write_text("not a directory")
    server.proc.send_signal(signal.SIGTERM)
    with pytest.raises(subprocess.TimeoutExpired):
        server.proc.wait(1.5)
    assert client.ping() and count(server) == KEYS
    server.dir.unlink()
    moved.rename(server.dir)
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(10) == 0
    server.log.close()
    assert "SIGTERM received but errors trying to shut down" in (tmp_path / "server.log").read_text()
    server = serve(tmp_path, "--mode", "checkpoint")
    assert count(server) == KEYS
    server.stop()


def test_binlog_on_a_full_disk_refuses_writes_stops_on_sigterm_and_keeps_what_it_acked(
        tmp_path: Path, small_disk: Path) -> None:
    directory = small_disk / "data"
    server = serve(tmp_path, "--mode", "binlog", "--dir", str(directory))
    client = server.client()
    acked = 0
    with pytest.raises(redis.ResponseError, match="^MISCONF"):
        while acked < 5000:  # 5 MB: past the 1 MB disk
            client.set(f"k{acked}", "x" * 1000)
            acked += 1
    assert client.get("k0") == b"x" * 1000
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(10) == 0  # not wedged
    server.log.close()
    server = serve(tmp_path, "--mode", "binlog", "--dir", str(directory))
    assert count(server, written=acked + 1) == acked
    server.stop()


# ------------------------------------------------------- the log holds what ran


def test_a_command_refused_by_a_limit_does_not_reappear_after_a_restart(tmp_path: Path) -> None:
    server = serve(tmp_path, "--mode", "binlog", "--proto-max-bulk-len", "2048")
    client = server.client()
    client.set("k", "a" * 1500)
    with pytest.raises(redis.ResponseError, match="proto-max-bulk-len"):
        client.append("k", "b" * 1000)
    with client.pipeline(transaction=True) as pipe:  # inside EXEC: the rest still runs
        pipe.append("k", "c" * 1000)
        pipe.set("other", "1")
        with pytest.raises(redis.ResponseError):
            pipe.execute()
    assert client.get("other") == b"1"
    kill9(server)
    server = serve(tmp_path, "--mode", "binlog")  # the default limit is far larger
    assert server.client().strlen("k") == 1500 and server.client().get("other") == b"1"
    server.stop()


def test_a_lower_limit_after_a_restart_does_not_drop_what_was_applied(tmp_path: Path) -> None:
    server = serve(tmp_path, "--mode", "binlog")
    client = server.client()
    client.set("k", "a" * 1500)
    client.append("k", "b" * 500)
    kill9(server)
    server = serve(tmp_path, "--mode", "binlog", "--proto-max-bulk-len", "1024")
    assert server.client().strlen("k") == 2000
    server.stop()


def test_an_old_log_with_a_float_of_a_huge_exponent_replays_at_once_and_check_reports_it(
        tmp_path: Path) -> None:
    directory = tmp_path / "data"
    (directory / "binlog").mkdir(parents=True)
    (directory / "dtm.format").write_text('{"dtm_data_format": 1}')
    records = [
        encode_record(1, 1000, ((0, (b"INCRBYFLOAT", b"f", b"1e-999999999")),)),
        encode_record(2, 1001, ((0, (b"SET", b"after", b"1")),)),
    ]
    (directory / "binlog" / "000000000001.log").write_bytes(MAGIC + b"".join(records))
    started = time.monotonic()
    server = serve(tmp_path, "--mode", "binlog")
    assert time.monotonic() - started < 10
    assert server.client().get("after") == b"1"
    server.stop()
    report = check(str(directory))
    assert report.problems >= 1 and "INCRBYFLOAT" in "\n".join(report.lines)


# ------------------------------------------------------- the data directory


def test_foreign_files_in_the_data_dir_are_ignored_and_kept(tmp_path: Path) -> None:
    directory = tmp_path / "data"
    (directory / "lost+found").mkdir(parents=True)
    (directory / "lost+found" / "123.tmp").write_text("fsck's")
    (directory / "dump.rdb").write_bytes(b"REDIS0011")
    (directory / "appendonly.log").write_text("someone else's")
    (directory / "notes.tmp").write_text("mine")
    for mode in ("binlog", "checkpoint", "none"):
        server = serve(tmp_path, "--mode", mode)
        write_keys(server.client(), mode)
        server.client().save()
        server.stop()
    server = serve(tmp_path, "--mode", "binlog")
    assert all(count(server, mode) == KEYS for mode in ("binlog", "checkpoint", "none"))
    server.stop()
    assert (directory / "lost+found" / "123.tmp").read_text() == "fsck's"
    assert (directory / "dump.rdb").read_bytes() == b"REDIS0011"
    assert (directory / "notes.tmp").read_text() == "mine"
    assert (directory / "appendonly.log").exists()


@pytest.mark.parametrize("mode", ["none", "binlog", "checkpoint"])
def test_a_dir_that_is_a_regular_file_is_refused_at_start(tmp_path: Path, mode: str) -> None:
    target = tmp_path / "file"
    target.write_text("x")
    assert "not a directory" in refused(target, "--mode", mode)


def test_dtm_files_without_a_format_marker_are_refused(tmp_path: Path) -> None:
    directory = tmp_path / "data"
    (directory / "binlog").mkdir(parents=True)
    assert "no dtm.format" in refused(directory, "--mode", "checkpoint")


# ------------------------------------------------------- start-up errors


def test_start_up_errors_are_one_line(tmp_path: Path) -> None:
    server = serve(tmp_path)
    try:
        message = refused(tmp_path / "other", "--port", str(server.port))
        assert "cannot listen" in message and "in use" in message
    finally:
        server.stop()
    assert "cannot listen" in refused(tmp_path / "other", "--bind", "256.1.1.1")
    (tmp_path / "file").write_text("x")
    assert "not a directory" in refused(tmp_path / "file" / "sub", "--mode", "binlog")
