"""dtm/buckets/keyspecs.py: key positions read from a real redis-server's COMMAND reply
agree with that server's own COMMAND GETKEYSANDFLAGS."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hiredis
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.processes import free_port, stop, wait_listening
from dtm.buckets.keyspecs import CommandInfo, CommandTable
from tests.helpers import encode_command

if shutil.which("redis-server") is None and not os.environ.get("CI"):
    pytest.skip("redis-server not installed", allow_module_level=True)


class Shard:
    """A blocking RESP2 connection to one redis-server: replies exactly as hiredis parses
    them (bytes, nested lists; errors as ReplyError values), the shape ShardLink sees."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)

    def call(self, *args: bytes | str | int) -> Any:
        self.sock.sendall(encode_command(*args))
        reader = hiredis.Reader()
        while True:
            reply = reader.gets()
            if reply is not False:
                return reply
            data = self.sock.recv(1 << 20)
            assert data, "redis-server closed the connection"
            reader.feed(data)


@pytest.fixture(scope="module")
def shard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shard]:
    # Its own server: the random test below runs some commands, which must not disturb
    # the session's shared redis_server.
    port = free_port()
    workdir: Path = tmp_path_factory.mktemp("keyspecs")
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_listening("redis-server", port, proc, timeout=15)
        yield Shard(port)
    finally:
        stop(proc, timeout=10)


@pytest.fixture(scope="module")
def table(shard: Shard) -> CommandTable:
    return CommandTable.from_command_info(shard.call("COMMAND"))


def getkeys(shard: Shard, argv: list[bytes]) -> list[tuple[bytes, bool]] | str:
    """The server's answer: (key, may write) pairs, or its error text."""
    reply = shard.call("COMMAND", "GETKEYSANDFLAGS", *argv)
    if isinstance(reply, hiredis.ReplyError):
        return str(reply)
    return [(key, bool({b"RW", b"OW", b"RM"} & set(flags))) for key, flags in reply]


def ours(table: CommandTable, argv: list[bytes]) -> list[tuple[bytes, bool]] | None:
    refs = table.keys_with_flags(argv)
    return None if refs is None else [(argv[i], writes) for i, writes in refs]


def variable_flags(info: CommandInfo) -> bool:
    # SET and BITFIELD: the spec gives the worst case (RW); the server's answer depends on
    # the arguments (BITFIELD k GET ... only reads). Ours may say "writes" where it reads.
    return any("variable_flags" in spec.flags for spec in info.key_specs)


def assert_agrees(table: CommandTable, shard: Shard, argv: list[bytes]) -> None:
    """keys() never claims a key the server would not, and names exactly the server's
    keys whenever the specs can tell; its fast form agrees with keys_with_flags."""
    info = table.lookup(argv)
    assert info is not None
    mine = ours(table, argv)
    theirs = getkeys(shard, argv)
    fast = table.keys(argv)
    assert fast == (None if mine is None else [i for i, _ in table.keys_with_flags(argv) or []])
    if mine is None:
        assert info.incomplete
        return
    if isinstance(theirs, str):
        assert mine == [], (argv, theirs)
        return
    if mine == [] and theirs:
        # The specs failed for this argv; GETKEYS fell back to a C helper that parses
        # numkeys with atoi. The command itself must then refuse to run.
        assert isinstance(shard.call(*argv), hiredis.ReplyError), argv
        return
    assert [key for key, _ in mine] == [key for key, _ in theirs], argv
    if variable_flags(info):
        assert all(w or not w_theirs for (_, w), (_, w_theirs) in zip(mine, theirs))
    else:
        assert mine == theirs, argv


# (argv, the keys keys() must find; None: the specs cannot tell, ask GETKEYS)
CASES: list[tuple[str, str | None]] = [
    # strings
    ("GET k", "k"), ("SET k v", "k"), ("SET k v GET", "k"), ("SET k v EX 10 NX", "k"),
    ("INCRBY k 5", "k"), ("APPEND k v", "k"), ("GETEX k PERSIST", "k"),
    ("MSET a 1 b 2 c 3", "a b c"), ("MSETNX a 1 b 2", "a b"), ("MGET a b c", "a b c"),
    ("LCS a b", "a b"), ("SETRANGE k 0 v", "k"), ("GETDEL k", "k"),
    # keyspace
    ("DEL a b c", "a b c"), ("UNLINK a", "a"), ("EXISTS a b a", "a b a"),
    ("TOUCH a b", "a b"), ("RENAME a b", "a b"), ("RENAMENX a b", "a b"),
    ("COPY a b DB 1 REPLACE", "a b"), ("EXPIRE k 10 NX", "k"), ("TYPE k", "k"),
    ("DUMP k", "k"), ("RESTORE k 0 payload REPLACE", "k"), ("MOVE k 1", "k"),
    ("OBJECT ENCODING k", "k"), ("object freq k", "k"), ("MEMORY USAGE k SAMPLES 5", "k"),
    ("WATCH a b", "a b"),
    ("SORT k", None), ("SORT k BY w_* GET # STORE d", None), ("SORT_RO k BY w_*", None),
    ("MIGRATE h 6379 k 0 100", None), ('MIGRATE h 6379 "" 0 100 KEYS a b', None),
    # lists
    ("LPUSH l a b", "l"), ("LRANGE l 0 -1", "l"), ("RPOPLPUSH a b", "a b"),
    ("LMOVE src dst LEFT RIGHT", "src dst"), ("BLMOVE src dst LEFT RIGHT 0", "src dst"),
    ("BLPOP a b 0", "a b"), ("BRPOP a 0", "a"), ("BRPOPLPUSH a b 0", "a b"),
    ("LMPOP 2 a b LEFT COUNT 3", "a b"), ("BLMPOP 0.5 2 a b RIGHT", "a b"),
    ("LMPOP 0 a LEFT", ""), ("LMPOP 4 a b LEFT", ""),
    ("LMPOP 3 a b LEFT", "a b LEFT"),  # the specs count arguments, as Redis does
    # hashes, sets
    ("HSET h f v", "h"), ("HGETALL h", "h"), ("HRANDFIELD h 2 WITHVALUES", "h"),
    ("SADD s m", "s"), ("SMOVE a b m", "a b"), ("SINTER a b", "a b"),
    ("SUNIONSTORE d a b", "d a b"), ("SDIFFSTORE d a", "d a"),
    ("SINTERCARD 2 a b LIMIT 5", "a b"), ("SINTERCARD 1x a", ""),
    # sorted sets
    ("ZADD z 1 m", "z"), ("ZUNIONSTORE d 2 a b WEIGHTS 1 2", "d a b"),
    ("ZINTERSTORE d 1 a", "d a"), ("ZDIFFSTORE d 2 a b", "d a b"),
    ("ZUNION 2 a b WITHSCORES", "a b"), ("ZINTER 3 a b c", "a b c"), ("ZDIFF 1 a", "a"),
    ("ZINTERCARD 2 a b", "a b"), ("ZRANGESTORE d s 0 -1", "d s"),
    ("ZMPOP 2 a b MIN", "a b"), ("BZMPOP 0 1 a MAX COUNT 2", "a"),
    ("BZPOPMIN a b 0", "a b"), ("ZUNIONSTORE d 0 a", ""), ("ZUNIONSTORE d -1 a", ""),
    ("ZUNIONSTORE d 01 a", ""), ("ZUNIONSTORE d 3 a b", ""),
    # streams
    ("XADD s * f v", "s"), ("XRANGE s - +", "s"), ("XLEN s", "s"),
    ("XREAD STREAMS a b 0 0", "a b"), ("XREAD COUNT 2 BLOCK 0 STREAMS a 0", "a"),
    ("xread count 2 streams a b c 0 0 0", "a b c"), ("XREAD STREAMS a b c", "a"),
    ("XREADGROUP GROUP g c STREAMS a b > >", "a b"),
    ("XREADGROUP GROUP g c COUNT 1 NOACK STREAMS a >", "a"),
    ("XGROUP CREATE s g $ MKSTREAM", "s"), ("XINFO STREAM s FULL", "s"),
    ("XINFO GROUPS s", "s"), ("XAUTOCLAIM s g c 0 0", "s"),
    # geo
    ("GEOADD g 0 0 m", "g"), ("GEORADIUS g 0 0 1 m", "g"),
    ("GEORADIUS g 0 0 1 m STORE d", "g d"), ("GEORADIUS g 0 0 1 m STOREDIST d", "g d"),
    ("GEORADIUS g 0 0 1 m WITHDIST STORE d STOREDIST e", "g d e"),
    ("GEORADIUS g 0 0 1 m STORE", "g"),
    ("GEORADIUSBYMEMBER g m 1 km STORE d", "g d"), ("GEOSEARCH g FROMMEMBER m BYRADIUS 1 m", "g"),
    ("GEOSEARCHSTORE d g FROMLONLAT 0 0 BYBOX 1 1 km", "d g"),
    # scripts and functions
    ("EVAL s 2 a b x y", "a b"), ("EVAL s 0", ""), ("EVAL s 0 x", ""), ("EVAL s 5 a", ""),
    ("EVAL s 1x k", ""), ("EVAL s -1 k", ""), ("EVALSHA abc 1 k", "k"),
    ("EVAL_RO s 1 k v", "k"), ("EVALSHA_RO abc 2 a b", "a b"),
    ("FCALL f 2 a b x", "a b"), ("FCALL_RO f 1 a", "a"), ("FCALL f 0", ""),
    # bits, hyperloglog
    ("BITOP AND d a b", "d a b"), ("BITOP NOT d a", "d a"), ("BITCOUNT k 0 -1", "k"),
    ("BITFIELD k GET u8 0", "k"), ("BITFIELD k SET u8 0 1", "k"), ("BITFIELD_RO k GET u8 0", "k"),
    ("PFADD h a b", "h"), ("PFCOUNT a b", "a b"), ("PFMERGE d a b", "d a b"),
    # no keys
    ("SUBSCRIBE ch", ""), ("SSUBSCRIBE ch", ""), ("SPUBLISH ch m", ""), ("PUBLISH ch m", ""),
    ("PING", ""), ("PING x", ""), ("INFO keyspace", ""), ("DBSIZE", ""), ("ECHO x", ""),
    ("CONFIG GET maxmemory", ""), ("CLIENT ID", ""), ("FLUSHALL", ""),
]


def split(text: str) -> list[bytes]:
    return [b"" if word == '""' else word.encode() for word in text.split()]


@pytest.mark.parametrize("command, expected", CASES, ids=[c for c, _ in CASES])
def test_keys_of_each_command_family_match_the_servers_getkeys(
    table: CommandTable, shard: Shard, command: str, expected: str | None,
) -> None:
    argv = split(command)
    info = table.lookup(argv)
    assert info is not None and info.arity_ok(len(argv))
    keys = table.keys(argv)
    if expected is None:
        assert keys is None and info.incomplete
        assert table.keys_with_flags(argv) is None
    else:
        assert keys is not None
        assert [argv[i] for i in keys] == split(expected)
    if len(argv) > 1:  # COMMAND GETKEYS needs the command and an argument
        assert_agrees(table, shard, argv)


def test_an_invalid_numkeys_claims_no_key_although_getkeys_names_one(
    table: CommandTable, shard: Shard,
) -> None:
    # GETKEYS's fallback reads numkeys with atoi ("1x" is 1) and gives no key flags;
    # EVAL itself refuses it.
    argv = split("EVAL return 1x k")
    assert table.keys(argv) == []
    assert getkeys(shard, argv) == [(b"k", False)]
    assert str(shard.call(*argv)) == "ERR value is not an integer or out of range"
    # Too many keys: both refuse.
    argv = split("ZUNIONSTORE d 3 a b")
    assert table.keys(argv) == []
    assert getkeys(shard, argv) == "ERR Invalid arguments specified for command"


def test_writes_follow_the_key_spec_flags(table: CommandTable) -> None:
    assert table.keys_with_flags(split("LMOVE a b LEFT LEFT")) == [(1, True), (2, True)]
    assert table.keys_with_flags(split("SMOVE a b m")) == [(1, True), (2, True)]
    assert table.keys_with_flags(split("SUNIONSTORE d a b")) == [
        (1, True), (2, False), (3, False)]
    assert table.keys_with_flags(split("GEORADIUS g 0 0 1 m STORE d")) == [
        (1, False), (7, True)]
    assert table.keys_with_flags(split("XREAD STREAMS a b 0 0")) == [(2, False), (3, False)]
    assert table.keys_with_flags(split("MGET a b")) == [(1, False), (2, False)]
    assert table.keys_with_flags(split("EVAL s 1 k")) == [(3, True)]


def test_lookup_resolves_subcommands_and_reports_their_info(table: CommandTable) -> None:
    info = table.lookup(split("object ENCODING k"))
    assert info is not None
    assert info.name == "object|encoding" and info.arity == 3
    assert "readonly" in info.flags and "@keyspace" in info.acl_categories
    assert "nondeterministic_output" in info.tips
    container = table.lookup([b"OBJECT"])
    assert container is not None and container.name == "object"
    assert not container.arity_ok(1)
    assert table.lookup(split("OBJECT nosuch k")) is None
    assert table.command(b"OBJECT") is container
    assert table.lookup(split("nosuch a")) is None and table.keys(split("nosuch a")) is None
    assert table.lookup([]) is None
    assert table.keys([b"GET"]) == [] and table.keys(split("OBJECT ENCODING")) == []
    config_get = table.lookup(split("CONFIG GET x"))
    assert config_get is not None and config_get.name == "config|get"
    assert table.keys(split("CONFIG GET x")) == []


def test_command_flags_and_arity_as_the_server_reports_them(table: CommandTable) -> None:
    def info(name: bytes) -> CommandInfo:
        found = table.command(name)
        assert found is not None
        return found

    assert {"write", "denyoom"} <= info(b"set").flags and info(b"SET").arity == -3
    assert "readonly" in info(b"get").flags and info(b"get").arity_ok(2)
    assert not info(b"get").arity_ok(3) and not info(b"get").arity_ok(1)
    assert info(b"mset").arity_ok(5) and not info(b"mset").arity_ok(2)
    assert {"blocking", "movablekeys"} <= info(b"xread").flags
    assert "noscript" in info(b"eval").flags and "no_mandatory_keys" in info(b"eval").flags
    assert "pubsub" in info(b"subscribe").flags
    assert {"fast", "allow_busy"} <= info(b"watch").flags
    assert "admin" in info(b"shutdown").flags
    assert {i.name for i in table if i.incomplete} == {"sort", "sort_ro", "migrate"}
    assert len(table) == len({i.name for i in table if "|" not in i.name})


def test_command_info_replies_and_resp3_maps_build_the_same_table(shard: Shard) -> None:
    reply = shard.call("COMMAND", "INFO", "get", "nosuchcommand", "xread", "object")
    assert reply[1] is None
    table = CommandTable.from_command_info(reply)
    assert len(table) == 3
    assert table.keys(split("XREAD STREAMS a b 0 0")) == [2, 3]
    assert table.keys(split("OBJECT ENCODING k")) == [2]
    shard.call("HELLO", "3")
    try:
        resp3 = CommandTable.from_command_info(shard.call("COMMAND", "INFO", "xread", "eval"))
    finally:
        shard.call("HELLO", "2")
    assert resp3.keys(split("XREAD STREAMS a b 0 0")) == [2, 3]
    assert resp3.keys(split("EVAL s 2 a b c")) == [3, 4]


def test_legacy_first_last_step_is_used_when_there_are_no_key_specs() -> None:
    # As Redis 6 (and older modules) reply: no key specs, only first/last/step.
    table = CommandTable.from_command_info([
        [b"mset", -3, [b"write"], 1, -1, 2],
        [b"get", 2, [b"readonly"], 1, 1, 1],
        [b"eval", -3, [b"noscript", b"movablekeys"], 0, 0, 0],
    ])
    assert table.keys(split("MSET a 1 b 2")) == [1, 3]
    assert table.keys_with_flags(split("GET k")) == [(1, False)]
    assert table.keys_with_flags(split("MSET a 1")) == [(1, True)]
    assert table.keys(split("EVAL s 1 k")) is None


WORDS = [b"a", b"b", b"k", b"STREAMS", b"streams", b"STORE", b"STOREDIST", b"KEYS",
         b"GET", b"BY", b"LIMIT", b"COUNT", b"LEFT", b"0", b"1", b"2", b"3", b"4", b"-1",
         b"1x", b"01", b"", b">", b"$"]


@settings(max_examples=400, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_random_argvs_agree_with_getkeys(
    table: CommandTable, shard: Shard, data: st.DataObject,
) -> None:
    with_keys = sorted(i.name for i in table if i.key_specs and not i.incomplete)
    name = data.draw(st.sampled_from(with_keys))
    info = table.lookup(name.encode().split(b"|"))
    assert info is not None
    prefix = name.encode().split(b"|")
    # Mostly argument counts the arity check lets through, sometimes any count.
    least = max(abs(info.arity) - len(prefix), 1)
    most = least if info.arity > 0 else least + 6
    count = data.draw(st.one_of(st.integers(least, most), st.integers(0, 8)))
    argv = [*prefix, *data.draw(st.lists(st.sampled_from(WORDS), min_size=count,
                                         max_size=count))]
    # Safe for any argv, even one the arity check would refuse.
    assert all(0 < i < len(argv) for i in table.keys(argv) or [])
    if not info.arity_ok(len(argv)) or len(argv) < 2:
        return
    assert_agrees(table, shard, argv)
