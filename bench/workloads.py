"""The workloads: what one client connection does in a loop until its deadline.

- ``get_set``: alternating GET and SET over ``keys`` keys (9,999) with 9 values, as the
  original dtm-bench;
- ``trans``: WATCH k, GET k, MULTI, SET k v, EXEC (five round trips); a null EXEC is an
  abort, not a request;
- ``mset``: atomic MSETs of 10 keys spread over the buckets, with MGET readers that
  check every MGET sees one MSET whole (a torn read is counted as an error);
- ``bank``: WATCH/MULTI transfers between accounts in different buckets; the total is
  checked at the end (``verify``).
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import attrs

from bench.client import BenchClient, ServerError
from bench.histogram import Histogram

WORKLOADS = ("get_set", "trans", "mset", "bank")
BANK_ACCOUNTS = 100
BANK_START = 1000
MSET_KEYS = 10


@attrs.define
class Settings:
    pipeline: int = 1
    keys: int = 9999
    value_size: int = 3
    seed: int = 0


@attrs.define
class ClientStats:
    histogram: Histogram = attrs.Factory(Histogram)
    requests: int = 0
    aborts: int = 0
    errors: int = 0
    error_samples: list[str] = attrs.Factory(list)

    def error(self, text: str) -> None:
        self.errors += 1
        if len(self.error_samples) < 5:
            self.error_samples.append(text)


class Recorder:
    """Counts only after the warm-up ends; ``live`` is read by the progress line."""

    def __init__(self, stats: ClientStats, measure_from: float) -> None:
        self.stats = stats
        self.measure_from = measure_from

    def done(self, started: float, n: int = 1) -> None:
        now = time.monotonic()
        if started >= self.measure_from:
            self.stats.histogram.record(int((now - started) * 1e6), n)
            self.stats.requests += n

    def abort(self, started: float) -> None:
        if started >= self.measure_from:
            self.stats.aborts += 1


Loop = Callable[[BenchClient, Recorder, Settings, float, random.Random], Awaitable[None]]


def _values(settings: Settings) -> list[bytes]:
    return [bytes([ord("a") + i]) * settings.value_size for i in range(9)]


async def get_set(client: BenchClient, rec: Recorder, s: Settings, deadline: float, rng: random.Random) -> None:
    # commands are formatted here, not through command(): this loop is the generator's
    # per-request cost when the server is fast
    values = [b"$%d\r\n%b\r\n" % (len(v), v) for v in _values(s)]
    randrange, choice, keys, monotonic = rng.randrange, rng.choice, s.keys, time.monotonic
    set_next = True
    while True:
        batch = []
        for _ in range(s.pipeline):
            key = b"key:%d" % randrange(keys)
            if set_next:
                batch.append(b"*3\r\n$3\r\nSET\r\n$%d\r\n%b\r\n%b" % (len(key), key, choice(values)))
            else:
                batch.append(b"*2\r\n$3\r\nGET\r\n$%d\r\n%b\r\n" % (len(key), key))
            set_next = not set_next
        started = monotonic()
        if started >= deadline:
            return
        await client.send_raw(b"".join(batch))
        replies = await client.replies(len(batch))
        failed = 0
        for reply in replies:
            if isinstance(reply, ServerError):
                rec.stats.error(str(reply))
                failed += 1
        rec.done(started, len(batch) - failed)


async def trans(client: BenchClient, rec: Recorder, s: Settings, deadline: float, rng: random.Random) -> None:
    values = _values(s)
    while time.monotonic() < deadline:
        key = b"key:%d" % rng.randrange(s.keys)
        started = time.monotonic()
        await client.call(b"WATCH", key)
        await client.call(b"GET", key)
        await client.call(b"MULTI")
        await client.call(b"SET", key, rng.choice(values))
        result = await client.call(b"EXEC")
        if result is None:
            rec.abort(started)
        else:
            rec.done(started)


def _mset_keys(group: int) -> list[bytes]:
    # distinct names hash to different slots, hence (with several buckets) different buckets
    return [b"mset:%d:%d" % (group, i) for i in range(MSET_KEYS)]


async def mset(client: BenchClient, rec: Recorder, s: Settings, deadline: float, rng: random.Random) -> None:
    writer = rng.random() < 0.5
    groups = max(1, s.keys // MSET_KEYS)
    while time.monotonic() < deadline:
        keys = _mset_keys(rng.randrange(groups))
        started = time.monotonic()
        if writer:
            tag = b"%d" % rng.getrandbits(40)
            await client.call(b"MSET", *[x for k in keys for x in (k, tag)])
        else:
            values = await client.call(b"MGET", *keys)
            present = {v for v in values if v is not None}
            if len(present) > 1 or (present and None in values):
                rec.stats.error(f"torn MSET seen by MGET: {sorted(present)[:3]}")
                continue
        rec.done(started)


def bank_accounts() -> list[bytes]:
    return [b"bank:%d" % i for i in range(BANK_ACCOUNTS)]


async def bank_setup(client: BenchClient) -> None:
    accounts = bank_accounts()
    await client.call(b"MSET", *[x for a in accounts for x in (a, BANK_START)])


async def bank(client: BenchClient, rec: Recorder, s: Settings, deadline: float, rng: random.Random) -> None:
    accounts = bank_accounts()
    while time.monotonic() < deadline:
        source, target = rng.sample(accounts, 2)
        started = time.monotonic()
        await client.call(b"WATCH", source, target)
        balance = int(await client.call(b"GET", source))
        amount = min(balance, rng.randint(1, 10))
        await client.call(b"MULTI")
        await client.call(b"DECRBY", source, amount)
        await client.call(b"INCRBY", target, amount)
        if await client.call(b"EXEC") is None:
            rec.abort(started)
        else:
            rec.done(started)


async def bank_total(client: BenchClient) -> int:
    values = await client.call(b"MGET", *bank_accounts())
    return sum(int(v) for v in values if v is not None)


LOOPS: dict[str, Loop] = {"get_set": get_set, "trans": trans, "mset": mset, "bank": bank}


async def run_client(loop: Loop, host: str, port: int, rec: Recorder, settings: Settings,
                     deadline: float, rng: random.Random) -> None:
    """One connection running loop until deadline; failures are counted, never hidden."""
    try:
        client = await BenchClient.connect(host, port)
    except OSError as exc:
        rec.stats.error(f"cannot connect to {host}:{port}: {exc.strerror or exc}")
        return
    try:
        await loop(client, rec, settings, deadline, rng)
    except ServerError as exc:
        rec.stats.error(f"{host}:{port}: {exc}")
    except TimeoutError:
        rec.stats.error(f"{host}:{port}: no reply (the run ended and waiting for it timed out)")
    except (OSError, ConnectionError) as exc:
        rec.stats.error(f"{host}:{port}: connection lost: {exc}")
    finally:
        await client.aclose()


def summarize(stats: ClientStats, elapsed: float) -> dict[str, Any]:
    h = stats.histogram
    return {
        "total_requests": stats.requests,
        "total_latency_us": h.total,
        "average_latency_us": round(h.mean, 1),
        "max_latency_us": h.max,
        "elapsed_s": round(elapsed, 3),
        "requests_per_sec": round(stats.requests / elapsed, 1) if elapsed else 0.0,
        "p50_us": h.percentile(0.50),
        "p90_us": h.percentile(0.90),
        "p99_us": h.percentile(0.99),
        "p999_us": h.percentile(0.999),
        "aborts": stats.aborts,
        "errors": stats.errors,
        "error_samples": stats.error_samples,
    }
