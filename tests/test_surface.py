"""Redis's surface where tools meet it: numbers at their limits, bit commands, COMMAND,
OBJECT/MEMORY/ROLE/DEBUG and CONFIG GET, each with Redis's replies and error texts."""

from __future__ import annotations

import os

import pytest
import trio
from helpers import RawClient, encode_command, serving

from dtm.commands import syntax
from dtm.commands.args import format_long_double, long_double
from dtm.errors import NOT_FLOAT

NOT_FLOAT_TEXT = "ERR value is not a valid float"
NOT_INTEGER_TEXT = "ERR value is not an integer or out of range"


async def _ping_within(port: int, seconds: float) -> None:
    """A bystander's PING is answered within seconds."""
    client = await RawClient.connect(port)
    with trio.fail_after(seconds):
        assert await client.call("PING") == b"PONG"
    await client.aclose()


# ------------------------------------------------------------------- numbers


async def test_float_with_huge_exponent_is_refused_at_once_and_stalls_nobody() -> None:
    async with serving() as server:
        attacker = await RawClient.connect(server.port)
        for text in ("1e-999999999", "1e999999999", "-1e+999999999", "1e-" + "9" * 4000):
            with trio.fail_after(1):
                assert str(await attacker.call("INCRBYFLOAT", "k", text)) == NOT_FLOAT_TEXT
            await _ping_within(server.port, 1)
        await attacker.call("SET", "stored", "1e-999999999")
        with trio.fail_after(1):
            assert str(await attacker.call("INCRBYFLOAT", "stored", "1")) == NOT_FLOAT_TEXT
        assert await attacker.call("PING") == b"PONG"


def test_long_double_bounds_match_strtold() -> None:
    with pytest.raises(type(NOT_FLOAT)):
        long_double(b"1e-4952")  # underflows to zero: ERANGE
    assert long_double(b"1e-4950") > 0  # subnormal, still representable
    with pytest.raises(type(NOT_FLOAT)):
        long_double(b"1.2e4932")  # beyond the largest long double
    assert long_double(b"0e999999999") == 0
    assert long_double(b"0x1.8p1") == 3
    with pytest.raises(OverflowError):
        long_double(b"-inf")
    with pytest.raises(type(NOT_FLOAT)):
        long_double(b"1" * 5120)  # MAX_LONG_DOUBLE_CHARS
    for bad in (b"1_0", b" 1", b"1 ", b".", b"e5", b"1e", b"nan"):
        with pytest.raises(type(NOT_FLOAT)):
            long_double(bad)


def test_format_long_double_prints_4933_digit_values_and_never_minus_zero() -> None:
    assert len(format_long_double(long_double(b"1.1e4932"))) == 4933
    assert format_long_double(long_double(b"-1e-30")) == b"0"


async def test_incrbyfloat_never_returns_negative_zero() -> None:
    async with serving() as server:
        client = await RawClient.connect(server.port)
        assert await client.call("INCRBYFLOAT", "a", "-0.0") == b"0"
        assert await client.call("INCRBYFLOAT", "b", "-1e-30") == b"0"
        await client.call("SET", "c", "-0.0")
        assert await client.call("INCRBYFLOAT", "c", "0") == b"0"


async def test_numbers_of_thousands_of_digits_get_redis_errors() -> None:
    digits = "9" * 5000
    async with serving() as server:
        client = await RawClient.connect(server.port)
        await client.call("SET", "k", "v")
        for command in (
            ["INCRBY", "k", digits], ["SET", "k", "v", "EX", digits], ["EXPIRE", "k", digits],
            ["SETRANGE", "k", digits, "x"], ["GETRANGE", "k", "0", digits],
            ["BITCOUNT", "k", digits, "1"], ["BITPOS", "k", "1", digits],
        ):
            assert str(await client.call(*command)) == NOT_INTEGER_TEXT, command
        bit_offset = "ERR bit offset is not an integer or out of range"
        assert str(await client.call("SETBIT", "k", digits, "1")) == bit_offset
        assert str(await client.call("GETBIT", "k", digits)) == bit_offset
        assert str(await client.call("INCRBYFLOAT", "k", digits)) == NOT_FLOAT_TEXT
        await client.call("SET", "n", digits)
        assert str(await client.call("INCR", "n")) == NOT_INTEGER_TEXT
        assert str(await client.call("INCRBYFLOAT", "n", "1")) == NOT_FLOAT_TEXT


async def test_expire_overflow_is_an_invalid_expire_time() -> None:
    async with serving() as server:
        client = await RawClient.connect(server.port)
        await client.call("SET", "k", "v")
        for command, value in (
            ("EXPIRE", "-9223372036854776"), ("EXPIRE", "9223372036854775"),
            ("EXPIREAT", "-9223372036854776"), ("PEXPIRE", "9223372036854775807"),
        ):
            reply = await client.call(command, "k", value)
            assert str(reply) == f"ERR invalid expire time in '{command.lower()}' command"
        assert await client.call("TTL", "k") == -1
        # The lowest seconds value C's truncating division allows is accepted (and
        # deletes the key, being in the past).
        assert await client.call("EXPIRE", "k", "-9223372036854775") == 1
        assert await client.call("EXISTS", "k") == 0


# ---------------------------------------------------------------------- bits


async def test_setbit_getbit_and_the_offset_limit() -> None:
    async with serving(proto_max_bulk_len=4096) as server:
        client = await RawClient.connect(server.port)
        assert await client.call("SETBIT", "b", "7", "1") == 0
        assert await client.call("SETBIT", "b", "7", "1") == 1
        assert await client.call("SETBIT", "b", "100", "1") == 0
        assert await client.call("GET", "b") == b"\x01" + b"\x00" * 11 + b"\x08"
        assert await client.call("GETBIT", "b", "100") == 1
        assert await client.call("GETBIT", "b", "9999") == 0
        assert await client.call("GETBIT", "missing", "3") == 0
        # the limit is proto-max-bulk-len bytes, as in Redis
        assert await client.call("SETBIT", "b", str(4096 * 8 - 1), "1") == 0
        error = "ERR bit offset is not an integer or out of range"
        assert str(await client.call("SETBIT", "b", str(4096 * 8), "1")) == error
        assert str(await client.call("SETBIT", "b", "-1", "1")) == error
        assert str(await client.call("SETBIT", "b", "1", "2")) == "ERR bit is not an integer or out of range"
        assert await client.call("OBJECT", "ENCODING", "b") == b"raw"


async def test_setbit_edits_a_large_value_in_place() -> None:
    """Each SETBIT on a large value is O(1), as in Redis: a copy per edit would move
    gigabytes for this pipeline and stall every client."""
    size = 16 * 1024 * 1024
    async with serving(timeout=30) as server:
        client = await RawClient.connect(server.port)
        await client.call("SET", "big", b"\x00" * size)
        await client.call("SETBIT", "big", "0", "1")  # the first edit may copy once
        pipeline = b"".join(encode_command("SETBIT", "big", i * 8191, 1) for i in range(1, 600))
        with trio.fail_after(3):
            await client.send_raw(pipeline)
            for _ in range(1, 600):
                assert await client.reply() == 0
        await _ping_within(server.port, 1)
        assert await client.call("BITCOUNT", "big") == 600
        assert await client.call("STRLEN", "big") == size


async def test_bitcount_and_bitpos_in_bytes_and_bits() -> None:
    async with serving() as server:
        client = await RawClient.connect(server.port)
        await client.call("SET", "s", "foobar")
        assert await client.call("BITCOUNT", "s") == 26
        assert await client.call("BITCOUNT", "s", "1", "1") == 6
        assert await client.call("BITCOUNT", "s", "5", "30", "BIT") == 17
        assert await client.call("BITCOUNT", "s", "-1", "-2", "FOO") == 0  # empty range first
        assert str(await client.call("BITCOUNT", "s", "0")) == "ERR syntax error"
        assert await client.call("BITCOUNT", "missing", "0") == 0
        await client.call("SET", "p", b"\x00\xff\xf0")
        assert await client.call("BITPOS", "p", "1", "0") == 8
        assert await client.call("BITPOS", "p", "1", "7", "15", "BIT") == 8
        assert await client.call("BITPOS", "p", "0", "1", "1") == -1  # explicit end: no padding
        await client.call("SET", "ff", b"\xff\xff")
        assert await client.call("BITPOS", "ff", "0") == 16  # no end: padded with zeros
        assert await client.call("BITPOS", "missing", "1") == -1
        assert await client.call("BITPOS", "missing", "0") == 0
        assert str(await client.call("BITPOS", "p", "2")) == "ERR The bit argument must be 1 or 0."


async def test_bitop_spans_buckets_and_replaces_the_target() -> None:
    async with serving(buckets=8) as server:
        client = await RawClient.connect(server.port)
        keys = [b"k%d" % i for i in range(40)]
        assert len({server.keyspace.bucket_of(key).index for key in keys[:4]}) > 1
        await client.call("SET", keys[0], "foobar")
        await client.call("SET", keys[1], "abcdef")
        await client.call("SET", keys[2], "ab")
        await client.call("SET", keys[3], "old", "EX", "100")
        assert await client.call("BITOP", "AND", keys[3], keys[0], keys[1]) == 6
        assert await client.call("GET", keys[3]) == b"`bc`ab"
        assert await client.call("TTL", keys[3]) == -1
        assert await client.call("BITOP", "OR", keys[3], keys[0], keys[1], keys[2]) == 6
        assert await client.call("GET", keys[3]) == b"goofev"
        assert await client.call("BITOP", "XOR", keys[3], keys[0], keys[2]) == 6
        assert await client.call("GET", keys[3]) == b"\x07\x0dobar"
        assert await client.call("BITOP", "NOT", keys[3], keys[2]) == 2
        assert await client.call("GET", keys[3]) == b"\x9e\x9d"
        assert await client.call("BITOP", "AND", keys[3], b"none1", b"none2") == 0
        assert await client.call("EXISTS", keys[3]) == 0
        reply = await client.call("BITOP", "NOT", keys[3], keys[0], keys[1])
        assert str(reply) == "ERR BITOP NOT must be called with a single source key."
        assert str(await client.call("BITOP", "NAND", keys[3], keys[0])) == "ERR syntax error"


# ------------------------------------------------------------------- COMMAND


def test_every_usage_line_parses() -> None:
    syntax.check_table()


async def test_command_with_no_argument_lists_the_whole_table() -> None:
    async with serving() as server:
        client = await RawClient.connect(server.port)
        everything = await client.call("COMMAND")
        assert len(everything) == await client.call("COMMAND", "COUNT")
        names = {entry[0] for entry in everything}
        assert {b"get", b"set", b"bitop", b"command", b"config"} <= names
        assert all(len(entry) == 10 for entry in everything)
        get = next(entry for entry in everything if entry[0] == b"get")
        assert get[6] == [b"@read", b"@string", b"@fast"]


async def test_command_docs_has_arguments_as_redis_7() -> None:
    async with serving() as server:
        client = await RawClient.connect(server.port)
        docs = await client.call("COMMAND", "DOCS", "set")
        fields = dict(zip(docs[1][::2], docs[1][1::2]))
        arguments = fields[b"arguments"]
        assert arguments[0] == [b"name", b"key", b"type", b"key", b"key_spec_index", 0]
        assert arguments[1] == [b"name", b"value", b"type", b"string"]
        condition = dict(zip(arguments[2][::2], arguments[2][1::2]))
        assert condition[b"type"] == b"oneof" and condition[b"flags"] == [b"optional"]
        assert condition[b"arguments"][0] == [b"name", b"nx", b"type", b"pure-token", b"token", b"NX"]
        expiration = dict(zip(arguments[4][::2], arguments[4][1::2]))
        assert expiration[b"arguments"][0] == [b"name", b"seconds", b"type", b"integer", b"token", b"EX"]


async def test_command_info_key_specs_for_a_multi_key_command() -> None:
    async with serving() as server:
        client = await RawClient.connect(server.port)
        [bitop] = await client.call("COMMAND", "INFO", "bitop")
        specs = bitop[8]
        assert [spec[1] for spec in specs] == [[b"OW", b"update"], [b"RO", b"access"]]
        assert specs[1][3] == [b"type", b"index", b"spec", [b"index", 3]]
        assert specs[1][5] == [b"type", b"range", b"spec", [b"lastkey", -1, b"keystep", 1, b"limit", 0]]


# ---------------------------------------------------- OBJECT, MEMORY, ROLE, DEBUG


async def test_object_encoding_follows_redis_rules_for_strings() -> None:
    async with serving() as server:
        client = await RawClient.connect(server.port)
        for value, encoding in ((b"100", b"int"), (b"-5", b"int"), (b"01", b"embstr"),
                                (b"a" * 44, b"embstr"), (b"a" * 45, b"raw")):
            await client.call("SET", "k", value)
            assert await client.call("OBJECT", "ENCODING", "k") == encoding, value
        await client.call("SET", "k", "100")
        assert await client.call("OBJECT", "REFCOUNT", "k") == 2147483647  # shared integer
        await client.call("SET", "k", "10000")
        assert await client.call("OBJECT", "REFCOUNT", "k") == 1
        assert await client.call("OBJECT", "IDLETIME", "k") == 0
        assert "An LFU maxmemory policy is not selected" in str(await client.call("OBJECT", "FREQ", "k"))
        assert await client.call("OBJECT", "ENCODING", "missing") is None
        assert str(await client.call("OBJECT", "FOO")) == "ERR unknown subcommand 'FOO'. Try OBJECT HELP."
        assert (await client.call("OBJECT", "HELP"))[0].startswith(b"OBJECT <subcommand>")


async def test_memory_usage_role_and_memory_help() -> None:
    async with serving() as server:
        client = await RawClient.connect(server.port)
        await client.call("SET", "k", "x" * 1000)
        assert 1000 < await client.call("MEMORY", "USAGE", "k") < 1300
        assert await client.call("MEMORY", "USAGE", "missing") is None
        assert str(await client.call("MEMORY", "USAGE", "k", "SAMPLES")) == "ERR syntax error"
        assert await client.call("ROLE") == [b"master", 0, []]
        assert (await client.call("MEMORY", "HELP"))[0].startswith(b"MEMORY <subcommand>")
        stats = await client.call("MEMORY", "STATS")
        assert dict(zip(stats[::2], stats[1::2]))[b"keys.count"] == 1


async def test_debug_sleep_makes_only_its_client_wait() -> None:
    async with serving() as server:
        sleeper = await RawClient.connect(server.port)
        async with trio.open_nursery() as nursery:
            done = trio.Event()

            async def sleep() -> None:
                assert await sleeper.call("DEBUG", "SLEEP", "0.8") == b"OK"
                done.set()

            nursery.start_soon(sleep)
            await trio.sleep(0.1)  # let the DEBUG SLEEP reach the server
            await _ping_within(server.port, 0.5)
            assert not done.is_set()
        assert await sleeper.call("DEBUG", "SLEEP", "0") == b"OK"
        reply = await sleeper.call("DEBUG", "NOSUCH")
        assert str(reply) == "ERR unknown subcommand or wrong number of arguments for 'NOSUCH'. Try DEBUG HELP."


# -------------------------------------------------------------------- CONFIG


async def test_config_get_answers_what_tools_read() -> None:
    async with serving(dir="relative-dtm-data") as server:
        client = await RawClient.connect(server.port)
        reply = await client.call("CONFIG", "GET", "maxmemory", "maxmemory-policy", "dir", "databases")
        values = dict(zip(reply[::2], reply[1::2]))
        assert values[b"maxmemory"] == b"0"
        assert values[b"maxmemory-policy"] == b"noeviction"
        assert values[b"dir"] == os.path.abspath("relative-dtm-data").encode()
        assert values[b"databases"] == b"16"
        assert (await client.call("CONFIG", "GET", "appendonly")) == [b"appendonly", b"no"]


async def test_config_appendonly_agrees_with_info_aof_enabled(tmp_path) -> None:
    async with serving(mode="binlog", dir=str(tmp_path)) as server:
        client = await RawClient.connect(server.port)
        assert await client.call("CONFIG", "GET", "appendonly") == [b"appendonly", b"yes"]
        info = (await client.call("INFO", "persistence")).decode()
        assert "aof_enabled:1" in info
