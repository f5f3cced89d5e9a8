"""The checkpoint's pause: how long a checkpoint holds back commits.

Two measurements:

- ``PausePoller``: during a ``dtm-bench compare`` run, polls each front's INFO persistence
  and keeps the largest pause reported by a checkpoint taken during the run (the memory
  engine reports ``snapshot_last_pause_ms``, the redis engine ``checkpoint_last_pause_ms``).
- ``python -m bench.pause``: a redis-engine front in checkpoint mode over 8 spawned shards,
  filled with ``--keys`` keys written straight into their shards (pipelined MSETs of keys
  that hash to each shard: a million keys load in seconds, where through the front they
  would take minutes), then ``--checkpoints`` BGSAVEs through the front, each pause read
  from INFO. ``--load`` adds a GET/SET load during the checkpoints.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import hiredis

from bench.client import command
from bench.processes import StartError, free_port, stop, wait_listening
from bench.runner import BenchError, Plan, run
from dtm.slots import key_slot, slot_owners

POLL_SECONDS = 0.1


class InfoClient:
    """A blocking connection that asks INFO (outside the load generator's loop)."""

    def __init__(self, address: tuple[str, int] | str, timeout: float = 5.0) -> None:
        if isinstance(address, str):
            self.sock = socket.socket(socket.AF_UNIX)
            self.sock.settimeout(timeout)
            self.sock.connect(address)
        else:
            self.sock = socket.create_connection(address, timeout=timeout)
        self.reader = hiredis.Reader()

    def call(self, *args: bytes) -> Any:
        return self.pipeline([args])[0]

    def pipeline(self, commands: list[tuple[bytes, ...]] | list[list[bytes]]) -> list[Any]:
        self.sock.sendall(b"".join(command(*c) for c in commands))
        replies: list[Any] = []
        while len(replies) < len(commands):
            reply = self.reader.gets()
            if reply is False:
                data = self.sock.recv(1 << 20)
                if not data:
                    raise ConnectionError("server closed the connection")
                self.reader.feed(data)
                continue
            if isinstance(reply, hiredis.ReplyError):
                raise BenchError(f"server error: {reply}")
            replies.append(reply)
        return replies

    def info(self, section: bytes = b"persistence") -> dict[str, str]:
        text = self.call(b"INFO", section).decode()
        return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)

    def close(self) -> None:
        self.sock.close()


class PausePoller:
    """While open, polls the fronts' INFO field in a thread; ``max_ms`` is the largest
    pause of the checkpoints that completed meanwhile (a value seen before the first poll
    belongs to an earlier run and is left out), ``seen`` how many changes were seen."""

    def __init__(self, ports: list[int], field: str) -> None:
        self.ports = ports
        self.field = field
        self.max_ms = 0.0
        self.seen = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 trace: TracebackType | None) -> None:
        self._done.set()
        self._thread.join()

    def _poll(self) -> None:
        clients = [InfoClient(("127.0.0.1", port)) for port in self.ports]
        try:
            last: list[str | None] = [c.info().get(self.field) for c in clients]
            while not self._done.wait(POLL_SECONDS):
                for i, client in enumerate(clients):
                    value = client.info().get(self.field)
                    if value is not None and value != last[i]:
                        self.seen += 1
                        self.max_ms = max(self.max_ms, float(value))
                    last[i] = value
        finally:
            for client in clients:
                client.close()


def fill_shards(home: Path, buckets: int, keys: int, batch: int = 1000) -> None:
    """keys keys (``key:N``, value ``xxx``) written into the shard that owns each."""
    owners = slot_owners(buckets)
    shards = [InfoClient(str(home / f"shard-{i}" / "redis.sock"), timeout=120) for i in range(buckets)]
    pending: list[list[bytes]] = [[] for _ in range(buckets)]
    try:
        for n in range(keys):
            key = b"key:%d" % n
            shard = owners[key_slot(key)]
            pending[shard] += (key, b"xxx")
            if len(pending[shard]) >= 2 * batch:
                shards[shard].call(b"MSET", *pending[shard])
                pending[shard] = []
        for shard, args in enumerate(pending):
            if args:
                shards[shard].call(b"MSET", *args)
    finally:
        for client in shards:
            client.close()


def measure(keys: int, checkpoints: int, buckets: int, load: bool) -> dict[str, Any]:
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="dtm-pause-") as tmp:
        home = Path(tmp)
        # a long interval: only the checkpoints asked for below run
        proc = subprocess.Popen(
            [sys.executable, "-m", "dtm.cli", "serve", "--log-level", "warning", "--engine", "redis",
             "--buckets", str(buckets), "--dir", str(home), "--port", str(port), "--mode",
             "checkpoint", "--checkpoint-interval", "3600"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_listening("dtm", port, proc, timeout=30)
            began = time.monotonic()
            fill_shards(home, buckets, keys)
            filled = time.monotonic() - began
            front = InfoClient(("127.0.0.1", port), timeout=120)
            dbsize = front.call(b"DBSIZE")
            pauses, saves = [], []
            background: threading.Thread | None = None
            if load:
                background = threading.Thread(target=run, args=(Plan(
                    [("127.0.0.1", port)], clients=50, seconds=checkpoints * 1.5 + 2,
                    workload="get_set", procs=1),), kwargs={"progress": False}, daemon=True)
                background.start()
                time.sleep(1)
            for _ in range(checkpoints):
                started = time.monotonic()
                front.call(b"SAVE")  # a checkpoint; returns once every shard's file is written
                saves.append((time.monotonic() - started) * 1000)
                pauses.append(float(front.info()["checkpoint_last_pause_ms"]))
            if background is not None:
                background.join()
            front.close()
        except StartError as exc:
            raise BenchError(str(exc)) from None
        finally:
            stop(proc, timeout=30)
    return {"keys": keys, "dbsize": dbsize, "buckets": buckets, "fill_seconds": round(filled, 2),
            "under_load": load, "pauses_ms": pauses, "max_pause_ms": max(pauses),
            "save_ms": [round(s, 1) for s in saves]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pause", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--buckets", type=int, default=8)
    parser.add_argument("--checkpoints", type=int, default=5)
    parser.add_argument("--load", action="store_true", help="GET/SET at 50 clients meanwhile")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    try:
        result = measure(args.keys, max(1, args.checkpoints), args.buckets, args.load)
    except BenchError as exc:
        print(f"bench.pause: error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(f"{result['dbsize']:,} keys over {result['buckets']} shards (filled in "
              f"{result['fill_seconds']} s){' under GET/SET load' if args.load else ''}")
        print("checkpoint pauses (ms): " + ", ".join(f"{p:.1f}" for p in result["pauses_ms"])
              + f"; max {result['max_pause_ms']:.1f}")
        print("SAVE (pause + every shard's file written, ms): "
              + ", ".join(f"{s:.0f}" for s in result["save_ms"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
