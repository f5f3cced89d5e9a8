"""The dtm command line: version, flags, config file, and errors with exit status 2."""

from __future__ import annotations

import os
import pty
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from conftest import ROOT, DtmProcess

DTM = [sys.executable, "-m", "dtm.cli"]


def run_dtm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*DTM, *args], capture_output=True, text=True, cwd=ROOT, timeout=30)


def test_version() -> None:
    result = run_dtm("--version")
    assert result.returncode == 0 and result.stdout.startswith("dtm ")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["serve", "--port", "notaport"], "invalid int value"),
        (["serve", "--mode", "fast"], "invalid choice"),
        (["serve", "--buckets", "0"], "buckets must be an integer between 1 and 16384"),
        (["serve", "--nope"], "unrecognized arguments"),
    ],
)
def test_bad_flags_exit_2_with_a_message(args: list[str], message: str) -> None:
    result = run_dtm(*args)
    assert result.returncode == 2
    assert message in result.stderr


def test_bad_config_file_value_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "dtm.toml"
    config.write_text('maxclients = "many"\n')
    result = run_dtm("serve", "--config", str(config))
    assert result.returncode == 2
    assert "maxclients must be an integer" in result.stderr


def test_config_file_settings_and_flags_win(tmp_path: Path) -> None:
    config = tmp_path / "dtm.toml"
    config.write_text('buckets = 3\nrequirepass = "pw"\nmaxclients = 7\n')
    server = DtmProcess("--config", str(config), "--maxclients", "9", tmp=tmp_path)
    try:
        client = redis.Redis(port=server.port, password="pw")
        assert client.info("dtm")["buckets"] == 3
        assert client.config_get("maxclients") == {"maxclients": "9"}
        client.close()
    finally:
        server.stop()
    assert server.proc.returncode == 0  # SIGTERM is a graceful stop


needs_redis_cli = pytest.mark.skipif(shutil.which("redis-cli") is None, reason="redis-cli not installed")


@needs_redis_cli
def test_redis_cli_scripted(dtm_server: DtmProcess) -> None:
    script = "SET greeting hello\nGET greeting\nMSET a 1 b 2\nMGET a b\nMULTI\nINCR a\nEXEC\n"
    result = subprocess.run(
        ["redis-cli", "-p", str(dtm_server.port)], input=script, capture_output=True, text=True, timeout=30
    )
    assert result.stdout.split() == ["OK", "hello", "OK", "1", "2", "OK", "QUEUED", "2"]


@needs_redis_cli
def test_redis_cli_interactive_start_up(dtm_server: DtmProcess) -> None:
    """redis-cli asks COMMAND DOCS at start-up for its hints; it must then work."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        ["redis-cli", "-p", str(dtm_server.port)],
        stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
    )
    os.close(slave)
    output = b""
    try:
        pending = [b"SET interactive yes\r", b"GET interactive\r"]
        answered = 0
        deadline = time.monotonic() + 15
        while b'"yes"' not in output and time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    output += os.read(master, 4096)
                except OSError:
                    break
            # linenoise asks the terminal where the cursor is; answer as a terminal would
            while output.count(b"\x1b[6n") > answered:
                os.write(master, b"\x1b[1;1R")
                answered += 1
            if pending and (b"> " in output.rsplit(b"\n", 1)[-1] or not ready):
                os.write(master, pending.pop(0))
        assert b"OK" in output
        assert b'"yes"' in output
    finally:
        os.write(master, b"quit\r\n")
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        os.close(master)
