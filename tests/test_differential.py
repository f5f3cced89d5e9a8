"""Random command sequences against dtm and a real redis-server give identical replies."""

from __future__ import annotations

import random

import pytest
import redis

from helpers import replies_of

KEYS = ["a", "b", "c", "{t}x", "{t}y", "n", "f"]
VALUES = ["", "0", "1", "-5", "10", "abc", "3.5", "9223372036854775807", "hello world"]


def random_command(rng: random.Random) -> list[str]:
    k = lambda: rng.choice(KEYS)  # noqa: E731
    v = lambda: rng.choice(VALUES)  # noqa: E731
    n = lambda: str(rng.choice([-3, -1, 0, 1, 2, 5, 100, 2**40]))  # noqa: E731
    # TTLs either already past or far away: a short one would expire at different
    # moments in the two runs and make the comparison depend on timing.
    ttl = lambda: str(rng.choice([-3, -1, 0, 1000, 5000, 2**40]))  # noqa: E731
    choices = [
        lambda: ["GET", k()], lambda: ["SET", k(), v()],
        lambda: ["SET", k(), v(), rng.choice(["NX", "XX", "GET", "KEEPTTL", "NX GET"])],
        lambda: ["SET", k(), v(), "EX", ttl()], lambda: ["SETNX", k(), v()],
        lambda: ["GETSET", k(), v()], lambda: ["GETDEL", k()], lambda: ["GETEX", k(), "PERSIST"],
        lambda: ["GETEX", k(), "EX", ttl()], lambda: ["MGET", k(), k(), k()],
        lambda: ["MSET", k(), v(), k(), v()], lambda: ["MSETNX", k(), v(), k(), v()],
        lambda: ["APPEND", k(), v()], lambda: ["STRLEN", k()],
        lambda: ["GETRANGE", k(), n(), n()], lambda: ["SETRANGE", k(), rng.choice(["0", "3", "-1"]), v()],
        lambda: ["INCR", k()], lambda: ["DECR", k()], lambda: ["INCRBY", k(), n()],
        lambda: ["DECRBY", k(), n()], lambda: ["INCRBYFLOAT", k(), rng.choice(["0.1", "-2.5", "1e3", "abc"])],
        lambda: ["DEL", k(), k()], lambda: ["EXISTS", k(), k()], lambda: ["TYPE", k()],
        lambda: ["RENAME", k(), k()], lambda: ["RENAMENX", k(), k()], lambda: ["COPY", k(), k()],
        lambda: ["EXPIRE", k(), ttl(), *rng.choice([[], ["NX"], ["XX"], ["GT"], ["LT"]])],
        lambda: ["PEXPIRE", k(), ttl() + "000"], lambda: ["PERSIST", k()],
        lambda: ["DBSIZE"], lambda: ["TOUCH", k()],
        lambda: ["ECHO", v()], lambda: ["PING"], lambda: ["UNLINK", k()],
        lambda: ["SET", k()], lambda: ["NOSUCH", k()], lambda: ["SELECT", rng.choice(["0", "1", "99", "x"])],
        lambda: ["SETBIT", k(), str(rng.randrange(0, 90)), rng.choice(["0", "1"])],
        lambda: ["GETBIT", k(), str(rng.randrange(0, 90))], lambda: ["BITCOUNT", k()],
        lambda: ["BITCOUNT", k(), n(), n(), *rng.choice([[], ["BYTE"], ["BIT"]])],
        lambda: ["BITPOS", k(), rng.choice(["0", "1"]), *rng.choice([[], [n()], [n(), n()]])],
        lambda: ["BITPOS", k(), rng.choice(["0", "1"]), n(), n(), rng.choice(["BYTE", "BIT"])],
        lambda: ["BITOP", rng.choice(["AND", "OR", "XOR"]), k(), k(), k()],
        lambda: ["BITOP", "NOT", k(), k()],
        lambda: ["LCS", k(), k(), *rng.choice([[], ["LEN"], ["IDX"], ["IDX", "MINMATCHLEN", "2", "WITHMATCHLEN"]])],
        lambda: ["BITFIELD", k(), "OVERFLOW", rng.choice(["WRAP", "SAT", "FAIL"]), rng.choice(["SET", "INCRBY"]),
                 rng.choice(["u8", "i5", "i64", "u63"]), str(rng.randrange(0, 40)), n()],
        lambda: ["BITFIELD_RO", k(), "GET", rng.choice(["u8", "i16"]), rng.choice(["0", "#3", "33"])],
    ]
    command = rng.choice(choices)()
    return [part for item in command for part in (item.split(" ") if " " in item and item[0].isupper() else [item])]


def transaction(rng: random.Random) -> list[list[str]]:
    body = [random_command(rng) for _ in range(rng.randint(1, 5))]
    return [["WATCH", rng.choice(KEYS)], ["MULTI"], *body, ["EXEC"]]


@pytest.mark.parametrize("seed", range(12))
def test_random_sequences_match_redis(seed: int, dtm_server, redis_server: int) -> None:
    rng = random.Random(seed)
    commands: list[list[str]] = [["SELECT", "0"]]
    for _ in range(150):
        commands.extend(transaction(rng) if rng.random() < 0.15 else [random_command(rng)])
    ours = dtm_server.client()
    theirs = redis.Redis(port=redis_server)
    ours.flushall()
    theirs.flushall()
    dtm_replies = replies_of(ours, commands)
    redis_replies = replies_of(theirs, commands)
    for command, mine, reference in zip(commands, dtm_replies, redis_replies, strict=True):
        assert mine == reference, f"{command}: dtm {mine!r} != redis {reference!r}"
    ours.close()
    theirs.close()


@pytest.mark.parametrize(
    "command",
    [
        ["SET", "k", "v", "PX", "0"], ["SET", "k", "v", "EX", "9999999999999999"],
        ["SET", "k", "v", "KEEPTTL", "EX", "5"], ["GETEX", "k", "PX", "0"],
        ["EXPIRE", "k", "10", "NX", "XX"], ["EXPIRE", "k", "10", "GT", "LT"],
        ["EXPIRE", "k", "10", "FOO"], ["SETRANGE", "k", "-1", "a"], ["COPY", "k", "k"],
        ["COPY", "k", "m", "DB", "99"], ["SCAN", "abc"], ["GETRANGE", "k", "0", "abc"],
        ["PEXPIRE", "k", "9223372036854775807"], ["HELLO", "4"], ["HELLO", "x"],
        ["AUTH", "x"], ["FLUSHALL", "foo"], ["DBSIZE", "x"], ["PING", "a", "b"],
        ["INCRBYFLOAT", "k", "1e400"], ["CLIENT", "SETNAME", "a b"], ["CLIENT", "KILL", "1.2.3.4:5"],
        ["CONFIG", "SET", "foo", "1"], ["MULTI"], ["WATCH", "x"], ["MULTI"], ["DISCARD"],
        ["EXEC"], ["SELECT", "16"], ["MSET", "a"], ["MSET", "a", "1", "b"],
        ["INCRBYFLOAT", "k", "1e-999999999"], ["INCRBYFLOAT", "k", "-1"], ["INCRBYFLOAT", "k", "0x10"],
        ["INCRBYFLOAT", "k", "inf"], ["EXPIRE", "k", "-9223372036854776"],
        ["EXPIREAT", "k", "-9223372036854776"], ["SETBIT", "k", "-1", "1"],
        ["SETBIT", "k", "4294967296", "1"], ["SETBIT", "k", "1", "2"], ["GETBIT", "k", "x"],
        ["BITOP", "NOT", "d", "a", "b"], ["BITOP", "NAND", "d", "a"], ["BITPOS", "k", "2"],
        ["BITCOUNT", "k", "0"], ["BITCOUNT", "k", "0", "1", "FOO"], ["BITPOS", "k", "0", "1", "2", "3"],
        ["OBJECT", "FOO"], ["OBJECT", "ENCODING", "k"], ["OBJECT", "REFCOUNT", "k"], ["OBJECT", "FREQ", "k"],
        ["MEMORY", "USAGE", "k", "SAMPLES"], ["MEMORY", "USAGE", "nokey"], ["ROLE"],
        ["CONFIG", "GET", "maxmemory", "maxmemory-policy", "databases"],
    ],
)
def test_error_texts_match_redis(command: list[str], dtm_server, redis_server: int) -> None:
    ours, theirs = dtm_server.client(), redis.Redis(port=redis_server)
    ours.set("k", "1")
    theirs.set("k", "1")
    assert replies_of(ours, [command]) == replies_of(theirs, [command])
    ours.close()
    theirs.close()
