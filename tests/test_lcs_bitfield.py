"""LCS and BITFIELD/BITFIELD_RO: Redis 7's replies, checked against a straight port of
its LCS table and against a real redis-server."""

from __future__ import annotations

import random
import time
from typing import Any

import pytest
import redis
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dtm.commands.lcs import lcs, subsequence
from helpers import RawClient, replies_of, serving

Run = tuple[int, int, int, int]


def redis_lcs(a: bytes, b: bytes) -> tuple[int, list[Run], bytes]:
    """Redis 7.0's lcsCommand, line for line: the full table, then its walk from the far
    corner, emitting runs as it does (length, runs, subsequence)."""
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            if a[i - 1] == b[j - 1]:
                table[i][j] = table[i - 1][j - 1] + 1
            else:
                table[i][j] = max(table[i - 1][j], table[i][j - 1])
    idx = table[len(a)][len(b)]
    result = bytearray(idx)
    runs: list[Run] = []
    unset = len(a)
    a_start, a_end, b_start, b_end = unset, 0, 0, 0
    i, j = len(a), len(b)
    while i > 0 and j > 0:
        emit = False
        if a[i - 1] == b[j - 1]:
            result[idx - 1] = a[i - 1]
            if a_start == unset:
                a_start = a_end = i - 1
                b_start = b_end = j - 1
            elif a_start == i and b_start == j:
                a_start -= 1
                b_start -= 1
            else:
                emit = True
            if a_start == 0 or b_start == 0:
                emit = True
            idx -= 1
            i -= 1
            j -= 1
        else:
            if table[i - 1][j] > table[i][j - 1]:
                i -= 1
            else:
                j -= 1
            if a_start != unset:
                emit = True
        if emit:
            runs.append((a_start, a_end, b_start, b_end))
            a_start = unset
    return table[len(a)][len(b)], runs, bytes(result)


def texts(alphabet: bytes, size: int) -> st.SearchStrategy[bytes]:
    return st.lists(st.sampled_from(alphabet), max_size=size).map(bytes)


# ------------------------------------------------------------------------- LCS


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from([b"ab", b"abc", b"acgt", bytes(range(250, 256))]).flatmap(
        lambda alphabet: st.tuples(texts(alphabet, 12), texts(alphabet, 12))
    )
)
def test_bit_parallel_lcs_takes_redis_walk(pair: tuple[bytes, bytes]) -> None:
    a, b = pair
    length, runs, string = redis_lcs(a, b)
    ours, our_runs = lcs(a, b, want_runs=True)
    assert (ours, our_runs, subsequence(a, our_runs)) == (length, runs, string)
    assert lcs(bytearray(a), bytearray(b), want_runs=False)[0] == length


def test_bit_parallel_lcs_on_longer_strings_of_both_shapes() -> None:
    rng = random.Random(8)
    for sizes in ((300, 40), (40, 300), (200, 200), (1, 500), (500, 1)):
        a, b = (bytes(rng.choice(b"abc") for _ in range(n)) for n in sizes)
        length, runs, string = redis_lcs(a, b)
        ours, our_runs = lcs(a, b, want_runs=True)
        assert (ours, our_runs, subsequence(a, our_runs)) == (length, runs, string), sizes


def _lcs_variants() -> list[list[str]]:
    return [
        [], ["LEN"], ["IDX"], ["IDX", "WITHMATCHLEN"], ["IDX", "MINMATCHLEN", "2"],
        ["IDX", "MINMATCHLEN", "3", "WITHMATCHLEN"], ["WITHMATCHLEN"], ["MINMATCHLEN", "-1", "IDX"],
    ]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts(b"abc", 20), texts(b"abc", 20), st.sampled_from(_lcs_variants()))
def test_lcs_replies_match_redis(dtm_server, redis_server: int, a: bytes, b: bytes, options: list[str]) -> None:
    commands: list[list[Any]] = [["SET", "{l}a", a], ["SET", "{l}b", b], ["LCS", "{l}a", "{l}b", *options],
                ["LCS", "{l}b", "{l}a", *options], ["LCS", "{l}a", "{l}missing", *options]]
    for protocol in (2, 3):
        ours = dtm_server.client(protocol=protocol)
        theirs = redis.Redis(port=redis_server, protocol=protocol)
        assert replies_of(ours, commands) == replies_of(theirs, commands)
        ours.close()
        theirs.close()


def test_lcs_of_kilobyte_strings_matches_redis(dtm_server, redis_server: int) -> None:
    rng = random.Random(5)
    a = bytes(rng.choice(b"acgt") for _ in range(2500))
    b = bytes(rng.choice(b"acgt") for _ in range(1800))
    commands: list[list[Any]] = [["SET", "a", a], ["SET", "b", b], ["LCS", "a", "b", "IDX", "WITHMATCHLEN"],
                ["LCS", "b", "a"], ["LCS", "a", "b", "LEN"]]
    ours, theirs = dtm_server.client(), redis.Redis(port=redis_server)
    assert replies_of(ours, commands) == replies_of(theirs, commands)
    ours.close()
    theirs.close()


@pytest.mark.parametrize(
    "options",
    [["LEN", "IDX"], ["FOO"], ["MINMATCHLEN"], ["MINMATCHLEN", "x"], ["MINMATCHLEN", "x", "LEN", "IDX"],
     ["LEN", "IDX", "FOO"], ["idx", "len"]],
)
def test_lcs_errors_match_redis(options: list[str], dtm_server, redis_server: int) -> None:
    commands = [["SET", "a", "ohmytext"], ["SET", "b", "mynewtext"], ["LCS", "a", "b", *options], ["LCS", "a"]]
    ours, theirs = dtm_server.client(), redis.Redis(port=redis_server)
    assert replies_of(ours, commands) == replies_of(theirs, commands)
    ours.close()
    theirs.close()


def test_lcs_refuses_a_table_larger_than_proto_max_bulk_len(dtm_server, redis_server: int) -> None:
    # 1mb holds a table of (511+1)*(511+1) uint32 lengths exactly.
    commands = [["SET", "a", "x" * 511], ["SET", "b", "x" * 511], ["SET", "c", "x" * 512],
                ["LCS", "a", "b", "LEN"], ["LCS", "a", "c", "LEN"], ["LCS", "c", "a"], ["LCS", "c", "c", "IDX"]]
    ours, theirs = dtm_server.client(), redis.Redis(port=redis_server)
    try:
        for client in (ours, theirs):
            client.config_set("proto-max-bulk-len", "1mb")
        replies = replies_of(ours, commands)
        assert replies == replies_of(theirs, commands)
        assert replies[3] == 511
        assert replies[4] == ("error", "ResponseError",
                              "Insufficient memory, transient memory for LCS exceeds proto-max-bulk-len")
    finally:
        for client in (ours, theirs):
            client.config_set("proto-max-bulk-len", str(512 * 1024 * 1024))
        ours.close()
        theirs.close()


async def test_large_lcs_keeps_other_clients_answered() -> None:
    """Two 20 KB strings: a table Redis fills for seconds (1.6 GB of it, refused under
    the default proto-max-bulk-len), blocking everyone meanwhile. dtm's LCS runs whole
    as Redis's does, but in a fraction of that time: another client's PING waits less
    than the bound (a cell-by-cell table in Python would hold it for minutes), and the
    reply is a common subsequence of the reported length."""
    rng = random.Random(20)
    a = bytes(rng.choice(b"acgt") for _ in range(20_000))
    b = bytes(rng.choice(b"acgt") for _ in range(20_000))
    async with serving(timeout=60, proto_max_bulk_len=4 * 1024**3) as server:
        worker, pinger = await RawClient.connect(server.port), await RawClient.connect(server.port)
        await worker.call("SET", "a", a)
        await worker.call("SET", "b", b)
        slowest = 0.0
        result: dict[str, object] = {}

        async def compute() -> None:
            result["idx"] = await worker.call("LCS", "a", "b", "IDX")
            result["string"] = await worker.call("LCS", "a", "b")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(compute)
            while len(result) < 2:
                start = time.perf_counter()
                with trio.fail_after(5):
                    assert await pinger.call("PING") == b"PONG"
                slowest = max(slowest, time.perf_counter() - start)
        assert slowest < 3, slowest
        idx, string = result["idx"], result["string"]
        assert isinstance(idx, list) and isinstance(string, bytes)
        assert idx[0] == b"matches" and idx[2] == b"len" and idx[3] == len(string) > 12_000
        pieces = [a[start : end + 1] for (start, end), _ in reversed(idx[1])]
        assert b"".join(pieces) == string
        for (a_start, a_end), (b_start, b_end) in idx[1]:
            assert a[a_start : a_end + 1] == b[b_start : b_end + 1]
        assert await pinger.call("PING") == b"PONG"


# -------------------------------------------------------------------- BITFIELD


BITFIELD_CASES = [
    ["BITFIELD", "k", "GET", "u8", "0"], ["EXISTS", "k"],
    ["BITFIELD_RO", "k", "GET", "i8", "0", "GET", "u4", "#3"], ["EXISTS", "k"],
    ["BITFIELD", "k", "SET", "u8", "0", "-1"], ["GET", "k"],
    ["BITFIELD", "k", "OVERFLOW", "SAT", "SET", "u8", "0", "-1"],
    ["BITFIELD", "k", "OVERFLOW", "SAT", "SET", "i8", "0", "-9223372036854775808"],
    ["BITFIELD", "k", "OVERFLOW", "SAT", "SET", "i8", "0", "-200"],
    ["BITFIELD", "k", "OVERFLOW", "SAT", "SET", "i64", "0", "-9223372036854775808", "GET", "i64", "0"],
    ["BITFIELD", "k", "OVERFLOW", "WRAP", "INCRBY", "i64", "0", "-1"],
    ["BITFIELD", "k", "OVERFLOW", "SAT", "INCRBY", "i64", "0", "-1"],
    ["BITFIELD", "k", "OVERFLOW", "FAIL", "INCRBY", "i64", "0", "-1", "GET", "i64", "0"],
    ["BITFIELD", "k", "SET", "u63", "#1", "9223372036854775807", "GET", "u63", "#1", "INCRBY", "u63", "#1", "5"],
    ["BITFIELD", "k", "GET", "i64", "#288230376151711744"],  # #n * 64 wraps to 0 in int64
    ["BITFIELD", "k", "GET", "i2", "#9223372036854775807"],
    ["BITFIELD", "k", "GET", "u64", "0"], ["BITFIELD", "k", "GET", "i65", "0"], ["BITFIELD", "k", "GET", "i0", "0"],
    ["BITFIELD", "k", "GET", "x8", "0"], ["BITFIELD", "k", "GET", "", "0"], ["BITFIELD", "k", "GET", "u08", "0"],
    ["BITFIELD", "k", "GET", "u8\x00zz", "0"], ["BITFIELD", "k", "GET", "u8", "-1"],
    ["BITFIELD", "k", "GET", "u8", "4294967296"], ["BITFIELD", "k", "GET", "u8", "4294967295"],
    ["BITFIELD", "k", "GET", "u8", "#536870912"], ["BITFIELD", "k", "GET", "u8", "#x"],
    ["BITFIELD", "k", "OVERFLOW", "FOO", "GET", "u8", "0"], ["BITFIELD", "k", "OVERFLOW"],
    ["BITFIELD", "k", "GET", "u8"], ["BITFIELD", "k", "FOO"], ["BITFIELD", "k"], ["BITFIELD"],
    ["BITFIELD_RO", "k", "SET", "u8", "0", "1"], ["BITFIELD_RO", "k", "GET", "u8", "0", "INCRBY", "u8", "x", "1"],
    ["BITFIELD_RO", "k", "OVERFLOW", "SAT"], ["BITFIELD", "k", "SET", "u8", "0", "x"],
    ["BITFIELD", "new", "OVERFLOW", "FAIL", "INCRBY", "u8", "100", "300"], ["STRLEN", "new"],
    ["BITFIELD", "k", "get", "u8", "0", "set", "u8", "0", "1", "incrby", "u8", "0", "1",
     "overflow", "fail", "incrby", "u4", "0", "100"],
    ["BITFIELD", "k", "OVERFLOW", "WRAP", "INCRBY", "u3", "5", "9223372036854775807",
     "INCRBY", "i3", "5", "-9223372036854775808"],
    ["BITFIELD", "k", "OVERFLOW", "SAT", "INCRBY", "u3", "5", "9223372036854775807",
     "INCRBY", "i3", "5", "-9223372036854775808"],
    ["BITFIELD", "k", "OVERFLOW", "WRAP", "INCRBY", "i64", "0", "9223372036854775807",
     "INCRBY", "i64", "0", "9223372036854775807"],
    ["BITFIELD", "k", "OVERFLOW", "SAT", "INCRBY", "i64", "0", "9223372036854775807",
     "INCRBY", "i64", "0", "9223372036854775807"],
    ["BITFIELD", "k", "SET", "i5", "3", "-3", "GET", "u5", "3", "GET", "i5", "3", "GET", "u8", "0", "GET", "u16", "0"],
    ["GET", "k"], ["SET", "t", "abc", "EX", "100"], ["BITFIELD", "t", "SET", "u8", "#5", "65"], ["GET", "t"],
    ["TTL", "t"],
]


def test_bitfield_replies_and_errors_match_redis(dtm_server, redis_server: int) -> None:
    ours, theirs = dtm_server.client(), redis.Redis(port=redis_server)
    ours.flushall()
    theirs.flushall()
    mine_all, theirs_all = replies_of(ours, BITFIELD_CASES), replies_of(theirs, BITFIELD_CASES)
    for command, mine, reference in zip(BITFIELD_CASES, mine_all, theirs_all, strict=True):
        assert mine == reference, f"{command}: dtm {mine!r} != redis {reference!r}"
    ours.close()
    theirs.close()


_TYPES = ["u1", "u3", "u8", "u16", "u63", "i1", "i4", "i8", "i13", "i64", "u64", "i0"]
_NUMBERS = ["0", "1", "-1", "5", "127", "128", "255", "-129", "300", "65535", "-9223372036854775808",
            "9223372036854775807", "x"]


@st.composite
def bitfield_commands(draw: st.DrawFn) -> list[str]:
    command = [draw(st.sampled_from(["BITFIELD", "BITFIELD", "BITFIELD", "BITFIELD_RO"])), "k"]
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["GET", "SET", "INCRBY", "OVERFLOW"]))
        if kind == "OVERFLOW":
            command += [kind, draw(st.sampled_from(["WRAP", "SAT", "FAIL"]))]
            continue
        offset = draw(st.one_of(st.integers(0, 40).map(str), st.integers(0, 5).map(lambda n: f"#{n}")))
        command += [kind, draw(st.sampled_from(_TYPES)), offset]
        if kind != "GET":
            command.append(draw(st.sampled_from(_NUMBERS)))
    return command


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(
    bitfield_commands(),
    st.sampled_from([["GET", "k"], ["APPEND", "k", "xy"], ["SETRANGE", "k", "2", "\x7f"], ["SETBIT", "k", "9", "1"],
                     ["DEL", "k"], ["SET", "k", "hello"]]),
), min_size=1, max_size=8))
def test_bitfield_sequences_match_redis(dtm_server, redis_server: int, commands: list[list[str]]) -> None:
    ours, theirs = dtm_server.client(), redis.Redis(port=redis_server)
    commands = [["DEL", "k"], *commands, ["GET", "k"]]
    assert replies_of(ours, commands) == replies_of(theirs, commands)
    ours.close()
    theirs.close()


def test_bitfield_write_trips_watch_and_a_get_does_not(dtm_server, redis_server: int) -> None:
    for port in (dtm_server.port, redis_server):
        watcher, other = redis.Redis(port=port), redis.Redis(port=port)
        watcher.set("w", "a")
        outcomes: list[object] = []
        for command in (["BITFIELD", "w", "GET", "u8", "0"], ["BITFIELD", "w", "SET", "u8", "0", "97"],
                        ["BITFIELD", "w", "SET", "u8", "0", "98"]):
            with watcher.pipeline() as pipe:
                pipe.watch("w")
                other.execute_command(*command)
                pipe.multi()
                pipe.get("w")
                try:
                    outcomes.append(pipe.execute())
                except redis.WatchError:
                    outcomes.append("aborted")
        # A GET, and a SET of the value already there, leave the key unmodified.
        assert outcomes == [[b"a"], [b"a"], "aborted"], port
        watcher.close()
        other.close()
