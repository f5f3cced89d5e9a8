"""Commands through redis-py (RESP2 and RESP3) against a real dtm server."""

from __future__ import annotations

import time

import pytest
import redis


def raw(r: redis.Redis, *args: object) -> object:
    """Send a command without redis-py's reply callbacks."""
    conn = r.connection_pool.get_connection()
    try:
        conn.send_command(*args)
        return conn.read_response()
    finally:
        r.connection_pool.release(conn)


def test_ping_echo_and_resp3_handshake(r3: redis.Redis) -> None:
    assert r3.ping() is True
    assert r3.echo("hi") == b"hi"
    assert r3.execute_command("HELLO", 3)[b"proto"] == 3


def test_set_options(r: redis.Redis) -> None:
    assert r.set("k", "v", nx=True) is True
    assert r.set("k", "w", nx=True) is None
    assert r.set("k", "w", xx=True, get=True) == b"v"
    assert r.set("missing", "x", xx=True) is None
    r.set("t", "1", ex=100)
    assert 99 <= r.ttl("t") <= 100
    r.set("t", "2", keepttl=True)
    assert r.ttl("t") > 0
    r.set("t", "3")
    assert r.ttl("t") == -1
    with pytest.raises(redis.ResponseError, match="invalid expire time in 'set' command"):
        r.set("t", "1", ex=0)
    with pytest.raises(redis.ResponseError, match="syntax error"):
        r.execute_command("SET", "t", "1", "NX", "XX")


def test_counters_and_errors(r: redis.Redis) -> None:
    assert r.incr("n") == 1
    assert r.incrby("n", 10) == 11
    assert r.decrby("n", 20) == -9
    assert r.incrbyfloat("f", "0.1") == 0.1
    assert r.incrbyfloat("f", "0.2") == pytest.approx(0.3)
    assert r.get("f") == b"0.3"  # long double arithmetic, as Redis
    r.set("s", "abc")
    with pytest.raises(redis.ResponseError, match="value is not an integer or out of range"):
        r.incr("s")
    r.set("big", str(2**63 - 1))
    with pytest.raises(redis.ResponseError, match="increment or decrement would overflow"):
        r.incr("big")


def test_string_ranges(r: redis.Redis) -> None:
    r.set("s", "Hello World")
    assert r.getrange("s", -5, -1) == b"World"
    assert r.setrange("s", 6, "Redis") == 11
    assert r.get("s") == b"Hello Redis"
    assert r.setrange("z", 3, "x") == 4
    assert r.get("z") == b"\x00\x00\x00x"
    assert r.append("s", "!") == 12
    assert r.strlen("s") == 12
    assert r.execute_command("SUBSTR", "s", 0, 4) == b"Hello"


def test_getex_getdel_getset(r: redis.Redis) -> None:
    r.set("k", "v")
    assert r.getex("k", px=50000) == b"v"
    assert 0 < r.pttl("k") <= 50000
    assert r.getex("k", persist=True) == b"v"
    assert r.ttl("k") == -1
    assert r.getset("k", "w") == b"v"
    assert r.getdel("k") == b"w"
    assert r.exists("k") == 0


def test_multi_key_commands_across_buckets(r: redis.Redis) -> None:
    keys = [f"key:{i}" for i in range(40)]  # spread over all buckets
    assert r.mset({k: k.upper() for k in keys}) is True
    assert r.mget(keys) == [k.upper().encode() for k in keys]
    assert r.exists(*keys, "nope") == 40
    assert r.msetnx({"key:0": "x", "fresh": "y"}) is False
    assert r.get("fresh") is None
    assert r.delete(*keys[:10]) == 10
    assert r.dbsize() == 30


def test_rename_copy_and_ttl_carried(r: redis.Redis) -> None:
    r.set("a", "1", ex=100)
    r.rename("a", "b")
    assert r.get("b") == b"1" and r.ttl("b") > 0 and r.exists("a") == 0
    with pytest.raises(redis.ResponseError, match="no such key"):
        r.rename("a", "c")
    r.set("c", "x")
    assert r.renamenx("b", "c") is False
    assert r.copy("b", "d") is True
    assert r.copy("b", "d") is False
    assert r.copy("b", "d", replace=True) is True
    assert r.copy("b", "d", destination_db=3) is True
    r.execute_command("SELECT", 3)
    assert r.get("d") == b"1"


def test_expire_family(r: redis.Redis) -> None:
    r.set("k", "v")
    assert r.expire("k", 100, xx=True) is False  # XX needs an existing TTL
    assert r.expire("k", 100, nx=True) is True
    assert r.expire("k", 50, gt=True) is False
    assert r.expire("k", 200, gt=True) is True
    assert r.expire("k", 10, nx=True) is False
    assert r.persist("k") is True
    assert r.ttl("k") == -1
    assert r.expiretime("k") == -1
    assert r.ttl("nope") == -2
    r.pexpireat("k", int(time.time() * 1000) + 100000)
    assert r.expiretime("k") > time.time()
    assert r.expire("k", -1) is True
    assert r.exists("k") == 0


def test_lazy_and_active_expiry(r: redis.Redis) -> None:
    r.set("lazy", "v", px=1)
    for i in range(50):
        r.set(f"active:{i}", "v", px=1)
    time.sleep(0.01)  # let the deadline pass (lazy path reads it)
    assert r.get("lazy") is None
    deadline = time.monotonic() + 5
    while r.dbsize() and time.monotonic() < deadline:
        time.sleep(0.05)  # the background cycle runs every 100 ms
    assert r.dbsize() == 0
    assert r.info("stats")["expired_keys"] >= 50


def test_keys_scan_randomkey_type(r: redis.Redis) -> None:
    names = {f"user:{i}".encode() for i in range(300)} | {b"other"}
    r.mset({n: b"1" for n in names})
    assert set(r.keys("user:*")) == names - {b"other"}
    assert set(r.keys("user:1?")) == {f"user:{i}".encode() for i in range(10, 20)}
    seen: list[bytes] = []
    cursor = 0
    while True:
        cursor, batch = r.scan(cursor, count=25)
        seen.extend(batch)
        if cursor == 0:
            break
    assert sorted(seen) == sorted(names)  # every key exactly once
    assert set(r.scan_iter(match="user:2*")) == {n for n in names if n.startswith(b"user:2")}
    assert list(r.scan_iter(_type="hash")) == []
    assert r.randomkey() in names
    assert r.type("other") == b"string" and r.type("nope") == b"none"


def test_select_and_flush(r: redis.Redis) -> None:
    r.set("k", "0")
    r.execute_command("SELECT", 1)
    assert r.get("k") is None
    r.set("k", "1")
    r.flushdb()
    r.execute_command("SELECT", 0)
    assert r.get("k") == b"0"
    with pytest.raises(redis.ResponseError, match="DB index is out of range"):
        r.execute_command("SELECT", 16)


def test_client_commands(r: redis.Redis, r3: redis.Redis) -> None:
    r.client_setname("alpha")
    assert r.client_getname() == "alpha"
    my_id = r.client_id()
    listed = r.client_list()
    assert any(c["id"] == str(my_id) and c["name"] == "alpha" for c in listed)
    assert r.client_info()["name"] == "alpha"
    with pytest.raises(redis.ResponseError, match="cannot contain spaces"):
        r.client_setname("a b")
    other = r3.client_id()
    assert r.client_kill_filter(_id=other) == 1
    assert r3.client_id() != other  # redis-py reconnected: the old connection was killed


def test_info_config_time_command(r: redis.Redis) -> None:
    info = r.info()
    assert info["redis_version"] == "7.0.15"
    assert info["buckets"] == 8
    r.mset({"a": 1, "b": 2, "c": 3, "d": 4})
    info = r.info("dtm")
    assert info["transactions_committed"] >= 1
    assert r.info("keyspace")["db0"]["keys"] == 4
    assert r.config_get("maxclients") == {"maxclients": "10000"}
    assert r.config_set("timeout", 0) is True
    with pytest.raises(redis.ResponseError, match="can't set immutable config"):
        r.config_set("port", 1)
    # A setting dtm fixes, given the value it has (Redis's test suite sets `save ""`).
    assert r.config_set("save", "") is True
    assert r.config_set("port", r.config_get("port")["port"]) is True
    seconds, micros = r.time()
    assert abs(seconds - time.time()) < 5
    assert r.command_count() > 60
    docs = raw(r, "COMMAND", "DOCS", "get")
    assert docs[0] == b"get" and b"summary" in docs[1]


def test_unknown_command_and_arity_errors(r: redis.Redis) -> None:
    with pytest.raises(redis.ResponseError, match="unknown command 'FOO', with args beginning with: 'a' 'b' "):
        r.execute_command("FOO", "a", "b")
    with pytest.raises(redis.ResponseError, match="wrong number of arguments for 'get' command"):
        r.execute_command("GET")
    with pytest.raises(redis.ResponseError, match="unknown subcommand 'NOPE'. Try CLIENT HELP."):
        r.execute_command("CLIENT", "NOPE")


def test_pipeline_replies_in_order(r: redis.Redis) -> None:
    pipe = r.pipeline(transaction=False)
    for i in range(200):
        pipe.set(f"p{i}", i)
        pipe.incr(f"p{i}")
    results = pipe.execute()
    assert results == [x for i in range(200) for x in (True, i + 1)]
