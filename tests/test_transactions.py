"""MULTI/EXEC/WATCH with Redis's rules, across buckets."""

from __future__ import annotations

import pytest
import redis

from helpers import replies_of


def test_transaction_true_pipeline_across_buckets(r: redis.Redis) -> None:
    pipe = r.pipeline(transaction=True)
    pipe.set("acct:a", 10).set("acct:b", 20).incrby("acct:a", 5).mget("acct:a", "acct:b")
    assert pipe.execute() == [True, True, 15, [b"15", b"20"]]


def test_queue_time_error_aborts_everything(r: redis.Redis) -> None:
    conn = r.connection_pool.get_connection()
    try:
        for command in (("MULTI",), ("SET", "x", "1"), ("GET",)):
            conn.send_command(*command)
        assert conn.read_response() == b"OK"
        assert conn.read_response() == b"QUEUED"
        with pytest.raises(redis.ResponseError, match="wrong number of arguments"):
            conn.read_response()
        conn.send_command("EXEC")
        # redis-py maps the EXECABORT prefix to its own exception class
        with pytest.raises(redis.exceptions.ExecAbortError, match="Transaction discarded because of previous errors."):
            conn.read_response()
    finally:
        r.connection_pool.release(conn)
    assert r.get("x") is None


def test_runtime_error_is_a_value_and_the_rest_runs(r: redis.Redis) -> None:
    r.set("s", "text")
    pipe = r.pipeline(transaction=True)
    pipe.incr("s").set("after", "yes")
    results = pipe.execute(raise_on_error=False)
    assert isinstance(results[0], redis.ResponseError)
    assert results[1] is True
    assert r.get("after") == b"yes"


def test_misuse_errors(r: redis.Redis) -> None:
    with pytest.raises(redis.ResponseError, match="EXEC without MULTI"):
        r.execute_command("EXEC")
    with pytest.raises(redis.ResponseError, match="DISCARD without MULTI"):
        r.execute_command("DISCARD")


def test_watch_broken_by_another_client(r: redis.Redis, dtm_server) -> None:
    other = dtm_server.client()
    r.set("w", "1")
    pipe = r.pipeline()
    pipe.watch("w", "x:elsewhere")
    other.set("w", "2")
    pipe.multi()
    pipe.set("w", "3")
    with pytest.raises(redis.WatchError):
        pipe.execute()
    assert r.get("w") == b"2"
    other.close()


def test_own_writes_do_not_break_own_watch(r: redis.Redis) -> None:
    pipe = r.pipeline()
    pipe.watch("mine")
    pipe.multi()
    pipe.set("mine", "1").set("mine", "2")
    assert pipe.execute() == [True, True]


@pytest.mark.parametrize("breaker", [
    ("DEL", "w"), ("FLUSHALL",), ("FLUSHDB",), ("EXPIRE", "w", 0),
    # a change of TTL alone is a write, as in Redis (signalModifiedKey)
    ("EXPIRE", "w", 100), ("PEXPIREAT", "w", 99999999999999), ("PERSIST", "w"),
    ("GETEX", "w", "EX", 100), ("GETEX", "w", "PERSIST"),
])
def test_watch_broken_by_delete_flush_and_expiry(r: redis.Redis, dtm_server, breaker) -> None:
    other = dtm_server.client()
    r.set("w", "1", ex=1000)
    pipe = r.pipeline()
    pipe.watch("w")
    other.execute_command(*breaker)
    pipe.multi()
    pipe.set("z", "1")
    with pytest.raises(redis.WatchError):
        pipe.execute()
    other.close()


def test_watch_broken_by_ttl_running_out(r: redis.Redis) -> None:
    import time

    r.set("w", "1", px=30)
    pipe = r.pipeline()
    pipe.watch("w")
    time.sleep(0.05)
    pipe.multi()
    pipe.set("z", "1")
    with pytest.raises(redis.WatchError):
        pipe.execute()


def test_discard_and_unwatch(r: redis.Redis, dtm_server) -> None:
    other = dtm_server.client()
    pipe = r.pipeline()
    pipe.watch("w")
    pipe.unwatch()
    other.set("w", "x")
    pipe.multi()
    pipe.set("w", "mine")
    assert pipe.execute() == [True]
    other.close()


def test_select_inside_multi_moves_later_commands(r: redis.Redis, dtm_server) -> None:
    pipe = r.pipeline(transaction=True)
    pipe.execute_command("SELECT", 2).set("in2", "yes")
    assert pipe.execute() == [True, True]
    fresh = dtm_server.client()
    assert fresh.get("in2") is None
    fresh.execute_command("SELECT", 2)
    assert fresh.get("in2") == b"yes"
    fresh.close()


def test_exec_refused_before_it_runs_aborts_the_transaction_as_redis(dtm_server, redis_server: int) -> None:
    """Redis's rejectCommand: an EXEC refused before it runs (wrong arity) discards the
    transaction and its watches with EXECABORT, in MULTI or not."""
    commands = [["WATCH", "w"], ["MULTI"], ["SET", "k", "1"], ["EXEC", "extra"], ["EXEC"],
                ["GET", "k"], ["EXEC", "x"]]
    ours, theirs = dtm_server.client(), redis.Redis(port=redis_server)
    ours.flushall()
    theirs.flushall()
    mine = replies_of(ours, commands)
    assert mine == replies_of(theirs, commands)
    assert mine[3] == ("error", "ExecAbortError",  # redis-py strips the EXECABORT code
                       "Transaction discarded because of: wrong number of arguments for 'exec' command")
    assert mine[4] == ("error", "ResponseError", "EXEC without MULTI")  # discarded
    ours.close()
    theirs.close()
