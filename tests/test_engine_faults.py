"""Faults on the redis engine with real processes: a front SIGKILLed at each step of a
cross-bucket transaction (DTM_FAULTS), shards and whole deployments SIGKILLed in binlog
and checkpoint modes, shards back from different checkpoints, and SAVE/BGSAVE in none
mode. The invariants: a transaction is all or nothing, the bank sum holds, nothing
acknowledged is lost in binlog mode, no key stays locked past the lease."""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from bench.processes import StartError, wait_listening
from tests.engine_procs import (
    META_DB,
    TRANSFER_SCRIPT,
    Front,
    RedisShard,
    keys_on_distinct_shards,
    kill_pid,
    locks_left,
    need_redis_server,
    shards_and_fronts,
    spawned_pid,
    spawned_pids,
)

need_redis_server()

SHARDS = 4
LEASE_MS = 300


@pytest.fixture
def root() -> Iterator[Path]:
    # Short: spawned shards listen on unix sockets whose path must fit in 107 bytes.
    path = Path(tempfile.mkdtemp(prefix="dtm-f-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


# ------------------------------------------------------- a front killed mid-transaction

@pytest.fixture(scope="module")
def shared_shards() -> Iterator[tuple[list[RedisShard], Front]]:
    """Four plain shards and a healthy front over them (short lease)."""
    path = Path(tempfile.mkdtemp(prefix="dtm-ff-", dir="/tmp"))
    try:
        with shards_and_fronts(path, SHARDS, 1, "--lease-ms", str(LEASE_MS)) as (shards, fronts):
            yield shards, fronts[0]
    finally:
        shutil.rmtree(path, ignore_errors=True)


ACCOUNTS = keys_on_distinct_shards("acct:", SHARDS)


@pytest.mark.parametrize("point, applied", [
    ("prepared", False), ("decided", True), ("committed-one", True)])
def test_front_killed_at_a_fault_point_leaves_all_or_nothing_and_no_lock_past_the_lease(
    shared_shards: tuple[list[RedisShard], Front], point: str, applied: bool,
) -> None:
    shards, healthy = shared_shards
    for shard in shards:
        shard.client().flushdb()
    client = healthy.client()
    client.mset(dict.fromkeys(ACCOUNTS, 100))
    src, dst = ACCOUNTS[0], ACCOUNTS[-1]
    doomed = Front(shards[0].dir.parent / f"doomed-{point}", "--shards",
                   ",".join(s.address for s in shards), "--lease-ms", str(LEASE_MS),
                   faults=point, name=f"doomed-{point}")
    try:
        pipe = doomed.client().pipeline(transaction=True)
        pipe.decrby(src, 30)
        pipe.incrby(dst, 30)
        with pytest.raises(redis.ConnectionError):
            pipe.execute()  # the front dies at the fault point: no reply
        assert doomed.wait_exit(10) == -9, doomed.output()
        assert f"point={point}" in doomed.output()
    finally:
        if doomed.proc.poll() is None:
            doomed.kill()
    died = time.monotonic()
    # The locks it left lapse after the lease; the first command to meet one resolves
    # it from the decision (roll forward if decided, back if not).
    assert client.get(src) == (b"70" if applied else b"100")
    assert client.get(dst) == (b"130" if applied else b"100")
    waited = time.monotonic() - died
    assert waited < LEASE_MS / 1000 + 1.5, waited
    balances = [int(v) for v in client.mget(ACCOUNTS)]
    assert sum(balances) == 100 * len(ACCOUNTS)
    assert locks_left(s.client(META_DB) for s in shards) == []
    # A front restarted in its place serves the same keys, without faults.
    again = Front(shards[0].dir.parent / f"again-{point}", "--shards",
                  ",".join(s.address for s in shards), "--lease-ms", str(LEASE_MS),
                  name=f"again-{point}")
    try:
        assert again.client().eval(TRANSFER_SCRIPT, 2, dst, src, 5) == (125 if applied else 95)
        assert sum(int(v) for v in client.mget(ACCOUNTS)) == 100 * len(ACCOUNTS)
    finally:
        again.stop()


def test_a_lock_left_by_a_dead_front_is_resolved_by_a_single_key_read_of_each_shard(
    shared_shards: tuple[list[RedisShard], Front],
) -> None:
    """Each shard resolves its own part: reading one key frees that shard only, and the
    other key is still decided the same way when it is read later."""
    shards, healthy = shared_shards
    for shard in shards:
        shard.client().flushdb()
    client = healthy.client()
    src, dst = ACCOUNTS[1], ACCOUNTS[2]
    client.mset({src: 50, dst: 50})
    doomed = Front(shards[0].dir.parent / "doomed-eval", "--shards",
                   ",".join(s.address for s in shards), "--lease-ms", str(LEASE_MS),
                   faults="committed-one", name="doomed-eval")
    try:
        with pytest.raises(redis.ConnectionError):
            doomed.client().eval(TRANSFER_SCRIPT, 2, src, dst, 20)
        assert doomed.wait_exit(10) == -9
    finally:
        if doomed.proc.poll() is None:
            doomed.kill()
    with _deadline(LEASE_MS / 1000 + 1.5):
        assert client.get(dst) == b"70"
        assert client.get(src) == b"30"
    assert locks_left(s.client(META_DB) for s in shards) == []


class _deadline:
    """A wall-clock bound for synchronous code (trio.fail_after needs a trio run)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __enter__(self) -> None:
        self.began = time.monotonic()

    def __exit__(self, *exc: object) -> None:
        took = time.monotonic() - self.began
        if exc[0] is None:
            assert took < self.seconds, f"took {took:.2f} s, bound {self.seconds} s"


# --------------------------------------------------------- fronts that spawn their shards

class Deployment:
    """One front that spawns its shards under root/data; kill_all is a power cut."""

    def __init__(self, root: Path, *args: str) -> None:
        self.root = root
        self.data = root / "data"
        self.args = ["--buckets", str(SHARDS), "--lease-ms", "500", *args]
        self.front: Front | None = None
        self.starts = 0

    def start(self, wait: bool = True) -> Front:
        self.starts += 1
        self.front = Front(self.data, *self.args, name=f"front-{self.starts}", wait=wait)
        return self.front

    def shard(self, index: int, db: int = 0) -> redis.Redis:
        return redis.Redis(unix_socket_path=str(self.data / f"shard-{index}" / "redis.sock"),
                           db=db, protocol=2, socket_timeout=10)

    def kill_all(self) -> None:
        assert self.front is not None
        pids = spawned_pids(self.data, SHARDS)
        self.front.kill()
        for pid in pids:
            kill_pid(pid)

    def stop(self) -> None:
        if self.front is not None and self.front.proc.poll() is None:
            self.front.stop()
        for i in range(SHARDS):  # anything left behind by a killed front
            try:
                kill_pid(spawned_pids(self.data, SHARDS)[i])
            except (OSError, ValueError):
                pass


@pytest.fixture
def deployment(root: Path) -> Iterator[Callable[..., Deployment]]:
    made: list[Deployment] = []

    def make(*args: str) -> Deployment:
        made.append(Deployment(root, *args))
        return made[-1]

    yield make
    for one in made:
        one.stop()


def write_until(client: redis.Redis, stop: threading.Event, acked: dict[str, int],
                pairs: dict[int, bool], prefix: str) -> None:
    """Single-key SETs and cross-bucket MSET pairs, recording only what was acknowledged;
    errors (a shard restarting) are retried with the next write."""
    i = 0
    while not stop.is_set():
        i += 1
        try:
            if i % 3:
                assert client.set(f"{prefix}k:{i}", i)
                acked[f"{prefix}k:{i}"] = i
            else:
                assert client.mset({f"{prefix}x:{i}": i, f"{prefix}y:{i}": i})
                pairs[i] = True
        except (redis.ResponseError, redis.ConnectionError, redis.TimeoutError):
            time.sleep(0.01)


def assert_acked_present(client: redis.Redis, acked: dict[str, int], pairs: dict[int, bool],
                         prefix: str) -> None:
    keys = list(acked)
    for start in range(0, len(keys), 500):
        chunk = keys[start:start + 500]
        values = client.mget(chunk)
        missing = [k for k, v in zip(chunk, values) if v is None or int(v) != acked[k]]
        assert not missing, f"{len(missing)} acknowledged writes lost, e.g. {missing[:5]}"
    for i in pairs:
        assert client.mget(f"{prefix}x:{i}", f"{prefix}y:{i}") == [str(i).encode()] * 2
    # Every MSET tried, acknowledged or not (its shard died under it): all or nothing.
    for i in range(3, max(pairs, default=0) + 30, 3):
        x, y = client.mget(f"{prefix}x:{i}", f"{prefix}y:{i}")
        assert x == y, (i, x, y)


def read_every_locked_key(client: redis.Redis, shards: list[redis.Redis], bound: float) -> None:
    """A lock left by a transaction cut short goes at the first command to meet it after
    the lease: GET each locked key (each within bound seconds), then none is left."""
    for name in locks_left(shards):
        if name.startswith(b"dtm:lock:"):
            db, _, key = name[len(b"dtm:lock:"):].partition(b":")
            with _deadline(bound):
                client.execute_command("SELECT", int(db))
                client.get(key)
                client.execute_command("SELECT", 0)
    assert locks_left(shards) == []


def test_binlog_loses_no_acknowledged_write_when_a_shard_or_everything_is_killed(
    deployment: Callable[..., Deployment],
) -> None:
    setup = deployment("--mode", "binlog")
    front = setup.start()
    client = front.client(socket_timeout=10)
    accounts = keys_on_distinct_shards("bank:", SHARDS)
    client.mset(dict.fromkeys(accounts, 100))
    acked: dict[str, int] = {}
    pairs: dict[int, bool] = {}
    stop = threading.Event()
    writer = threading.Thread(target=write_until, args=(front.client(socket_timeout=10), stop,
                                                        acked, pairs, "a:"), daemon=True)
    writer.start()
    try:
        deadline = time.monotonic() + 20
        while len(acked) < 50:
            assert time.monotonic() < deadline, "no writes acknowledged"
            time.sleep(0.01)
        victim = spawned_pids(setup.data, SHARDS)[1]
        kill_pid(victim)
        # The front starts the shard again on its AOF; writes flow again.
        before = len(acked)
        while spawned_pid(setup.data, 1) in (victim, None) or len(acked) < before + 50:
            assert time.monotonic() < deadline, f"no recovery\n{front.output()}"
            time.sleep(0.01)
    finally:
        stop.set()
        writer.join(15)
    assert not writer.is_alive()
    assert "shard exited" in front.output()
    assert_acked_present(client, acked, pairs, "a:")
    # Bank transfers across buckets, acknowledged, then a power cut.
    for n in range(20):
        client.eval(TRANSFER_SCRIPT, 2, accounts[n % SHARDS], accounts[(n + 1) % SHARDS], 3)
    client.close()
    setup.kill_all()
    front = setup.start()
    client = front.client(socket_timeout=10)
    assert_acked_present(client, acked, pairs, "a:")
    balances = [int(v) for v in client.mget(accounts)]
    assert sum(balances) == 100 * SHARDS
    # 20 transfers of 3 round a ring of four: each account gave and got 5 times.
    assert balances == [100] * SHARDS
    assert client.get(accounts[0]) == b"100"
    read_every_locked_key(client, [setup.shard(i, META_DB) for i in range(SHARDS)], 2.0)


def bank_load(client: redis.Redis, accounts: list[str], stop: threading.Event,
              done: list[int]) -> None:
    n = 0
    while not stop.is_set():
        n += 1
        src, dst = accounts[n % len(accounts)], accounts[(n * 3 + 1) % len(accounts)]
        if src == dst:
            continue
        try:
            if n % 2:
                client.eval(TRANSFER_SCRIPT, 2, src, dst, 1 + n % 7)
            else:
                pipe = client.pipeline(transaction=True)
                pipe.decrby(src, 1 + n % 5)
                pipe.incrby(dst, 1 + n % 5)
                pipe.execute()
            done[0] += 1
        except (redis.ConnectionError, redis.TimeoutError):
            return  # the front was killed


def info_field(client: redis.Redis, field: str) -> str:
    return str(client.info("persistence").get(field, ""))


def checkpoint_file(data: Path, shard: int) -> Path:
    """The RDB file of the last complete checkpoint of a spawned shard."""
    cut = json.loads((data / "checkpoint.json").read_text())["cut"]
    return data / f"shard-{shard}" / f"dump-{cut}.rdb"


def wait_saves(client: redis.Redis, at_least: int, deadline: float, front: Front) -> None:
    while int(info_field(client, "rdb_saves") or 0) < at_least:
        assert time.monotonic() < deadline, f"checkpoints stalled\n{front.output()}"
        time.sleep(0.005)


def test_checkpoint_kill_everything_under_load_comes_back_to_one_cut_with_the_sum(
    deployment: Callable[..., Deployment], root: Path,
) -> None:
    setup = deployment("--mode", "checkpoint", "--checkpoint-interval", "0.4")
    front = setup.start()
    client = front.client(socket_timeout=10)
    accounts = keys_on_distinct_shards("bank:", SHARDS, per_shard=2)
    total = 100 * len(accounts)
    client.mset(dict.fromkeys(accounts, 100))
    stop = threading.Event()
    done = [0]
    load = threading.Thread(target=bank_load, args=(front.client(socket_timeout=10), accounts,
                                                    stop, done), daemon=True)
    load.start()
    older = root / "older-dump.rdb"
    try:
        deadline = time.monotonic() + 30
        wait_saves(client, 1, deadline, front)
        # Kept for later: a shard file from another cut than the others will hold.
        shutil.copy(checkpoint_file(setup.data, 1), older)
        while done[0] < 20:
            assert time.monotonic() < deadline, f"no transfers\n{front.output()}"
            time.sleep(0.01)
        # Killed just after a checkpoint completed, with transfers in flight (a kill in
        # the middle of one is test_checkpoint_killed_mid_save_…).
        wait_saves(client, int(info_field(client, "rdb_saves")) + 1, deadline, front)
    finally:
        setup.kill_all()
        stop.set()
        load.join(15)
    front = setup.start()
    client = front.client(socket_timeout=10)
    cuts = {setup.shard(i, META_DB).get("dtm:cut") for i in range(SHARDS)}
    assert len(cuts) == 1 and None not in cuts, cuts
    # The checkpoint files hold the barrier that was up at their fork: it must not hold
    # back commits across buckets after the restart.
    began = time.monotonic()
    client.mset(dict.fromkeys(keys_on_distinct_shards("probe:", SHARDS, per_shard=1), 1))
    assert time.monotonic() - began < 2
    assert sum(int(v) for v in client.mget(accounts)) == total
    read_every_locked_key(client, [setup.shard(i, META_DB) for i in range(SHARDS)], 2.0)
    # A checkpoint of this front's own, so the last one is not the cut `older` holds.
    wait_saves(client, int(info_field(client, "rdb_saves")) + 1, time.monotonic() + 30, front)
    client.close()

    # A shard whose file is from another checkpoint: the front refuses to start.
    setup.kill_all()
    shutil.copy(older, checkpoint_file(setup.data, 1))
    refused = setup.start(wait=False)
    assert refused.wait_exit(30) == 1
    lines = [line for line in refused.output().splitlines() if line.startswith("dtm: error:")]
    assert len(lines) == 1, refused.output()
    assert lines[0].startswith("dtm: error: the shards hold different checkpoints (shard 0: "), lines[0]
    last = json.loads((setup.data / "checkpoint.json").read_text())["cut"]
    assert lines[0].count(last) == SHARDS - 1, lines[0]
    # It stopped the shards it had spawned.
    for i in range(SHARDS):
        pid = spawned_pid(setup.data, i)  # a shard stopped cleanly removes its pidfile
        assert pid is None or b"redis-server" not in Path(f"/proc/{pid}/cmdline").read_bytes()


def test_checkpoint_killed_mid_save_still_restarts_at_one_cut(
    deployment: Callable[..., Deployment],
) -> None:
    """Everything killed while one shard is still writing its file: the others hold the
    new cut, it the old one. The design says a restart of the shards dtm spawned returns
    to one cut (the last complete checkpoint)."""
    setup = deployment("--mode", "checkpoint", "--checkpoint-interval", "3600")
    front = setup.start()
    client = front.client(socket_timeout=10)
    keys = keys_on_distinct_shards("cp:", SHARDS, per_shard=2)
    client.mset(dict.fromkeys(keys, "old"))
    assert client.save() is True
    client.mset(dict.fromkeys(keys, "new"))
    slow = setup.shard(3)
    slow.config_set("rdb-key-save-delay", 5_000_000)  # microseconds per key: its save lags
    assert client.bgsave() is True
    deadline = time.monotonic() + 10
    while not all(setup.shard(i).info("persistence")["rdb_bgsave_in_progress"] == 0
                  for i in range(3)):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert slow.info("persistence")["rdb_bgsave_in_progress"] == 1
    client.close()
    setup.kill_all()
    front = setup.start(wait=False)
    try:
        wait_listening("front", front.port, front.proc, timeout=30)
    except StartError:
        raise AssertionError(front.output().splitlines()[-1]) from None
    values = set(front.client().mget(keys))
    assert values == {b"old"}  # the last complete checkpoint, in every shard


def test_none_mode_save_and_bgsave_write_every_shard_file_and_a_restart_loads_them(
    deployment: Callable[..., Deployment],
) -> None:
    setup = deployment("--mode", "none")
    front = setup.start()
    client = front.client(socket_timeout=10)
    keys = keys_on_distinct_shards("saved:", SHARDS, per_shard=3)
    client.mset({key: key.upper() for key in keys})
    assert not (setup.data / "checkpoint.json").exists()  # none mode saves nothing on its own
    assert not list(setup.data.glob("shard-*/dump*.rdb"))
    assert client.save() is True
    saved = {checkpoint_file(setup.data, i) for i in range(SHARDS)}
    assert all(f.exists() for f in saved)
    client.set(keys[0], "after-save")
    assert client.bgsave() is True
    deadline = time.monotonic() + 20
    while info_field(client, "rdb_bgsave_in_progress") != "0":
        assert time.monotonic() < deadline, "BGSAVE did not complete"
        time.sleep(0.02)
    files = {checkpoint_file(setup.data, i) for i in range(SHARDS)}
    assert files.isdisjoint(saved) and all(f.exists() for f in files)
    assert not any(f.exists() for f in saved)  # the older checkpoint's files are gone
    client.close()
    setup.kill_all()
    front = setup.start()
    client = front.client(socket_timeout=10)
    expected = [b"after-save"] + [key.upper().encode() for key in keys[1:]]
    assert client.mget(keys) == expected
    cuts = {setup.shard(i, META_DB).get("dtm:cut") for i in range(SHARDS)}
    assert len(cuts) == 1 and None not in cuts
