"""Micro-benchmark of the server's hot path without sockets: parse a pipelined batch of
GET/SET, dispatch it and encode the replies, as Session._run_batch does per read.

    python -m bench.hotpath [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time

import trio

from dtm.config import Config
from dtm.resp import encode
from dtm.server import Server
from dtm.session import Session


class _NullConnection:
    def peer(self) -> tuple[str, int]:
        return ("127.0.0.1", 1)

    local = peer

    async def send(self, data: bytes) -> None:  # a batch past its time budget flushes
        pass


def _batch(commands: int) -> bytes:
    parts = []
    for i in range(commands // 2):
        key = b"key:%012d" % (i % 1000)
        parts.append(encode([b"SET", key, b"xxx"]))
        parts.append(encode([b"GET", key]))
    return b"".join(parts)


async def _run(rounds: int, per_batch: int, profile: bool) -> None:
    server = Server(Config(port=0))
    session = Session(server, _NullConnection(), 1)  # type: ignore[arg-type]
    data = _batch(per_batch)
    profiler = cProfile.Profile() if profile else None
    start = time.perf_counter()
    if profiler:
        profiler.enable()
    for _ in range(rounds):
        session.parser.feed(data)
        await session._run_batch()
    if profiler:
        profiler.disable()
    elapsed = time.perf_counter() - start
    total = rounds * per_batch
    print(f"{total} commands in {elapsed:.3f}s: {total / elapsed:,.0f}/s, {elapsed / total * 1e6:.2f} us each")
    if profiler:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(12)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--rounds", type=int, default=20000)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    trio.run(_run, args.rounds, args.batch, args.profile)


if __name__ == "__main__":
    main()
