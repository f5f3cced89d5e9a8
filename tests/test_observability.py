"""What monitoring tools read: INFO sections and their selection, commandstats and
errorstats, SLOWLOG, LATENCY, MONITOR, and CLIENT PAUSE / REPLY / NO-EVICT — as Redis 7
answers them (compared with a real redis-server where the fields depend on nothing dtm
does differently)."""

from __future__ import annotations

import re
from typing import Any

import pytest
import redis
import trio

from tests.helpers import RawClient, encode_command as encode, serving

# ------------------------------------------------------------------------ INFO


def _raw_info(client: redis.Redis, *args: str) -> str:
    client.set_response_callback("INFO", lambda response, **options: response)
    return client.execute_command("INFO", *args).decode()


def _sections(text: str) -> list[str]:
    return [line[2:] for line in text.split("\r\n") if line.startswith("# ")]


@pytest.mark.parametrize(
    "args",
    [(), ("default",), ("all",), ("everything",), ("server", "cpu"), ("bogus",),
     ("commandstats", "keyspace"), ("latencystats",), ("modules",), ("CPU", "Replication")],
)
def test_info_selects_sections_as_redis(args: tuple[str, ...], dtm_server, redis_server: int) -> None:
    ours = _sections(_raw_info(dtm_server.client(), *args))
    theirs = _sections(_raw_info(redis.Redis(port=redis_server), *args))
    assert [s for s in ours if s != "DTM"] == theirs


def test_info_unknown_section_is_empty(r: redis.Redis) -> None:
    assert _raw_info(r, "bogus") == ""


def test_info_replication_cpu_cluster_have_redis_fields(r: redis.Redis, redis_server: int) -> None:
    theirs = redis.Redis(port=redis_server)
    for section in ("replication", "cpu", "cluster"):
        assert list(r.info(section)) == list(theirs.info(section)), section
    replication = r.info("replication")
    assert replication["role"] == "master" and replication["connected_slaves"] == 0
    assert re.fullmatch(r"[0-9a-f]{40}", replication["master_replid"])
    assert r.info("cluster") == {"cluster_enabled": 0}
    assert r.info("cpu")["used_cpu_user"] > 0


def test_info_stats_has_the_fields_tools_read(r: redis.Redis) -> None:
    before = r.info("stats")
    r.set("k", "v" * 1000)
    after = r.info("stats")
    for field in ("instantaneous_ops_per_sec", "total_error_replies", "instantaneous_input_kbps"):
        assert field in after
    assert after["total_net_input_bytes"] >= before["total_net_input_bytes"] + 1000
    assert after["total_net_output_bytes"] > before["total_net_output_bytes"]


# ------------------------------------------------------- commandstats, errorstats


def _cmdstat(client: redis.Redis, name: str) -> dict[str, Any]:
    return client.info("commandstats").get(f"cmdstat_{name}", {})


def _counts(client: redis.Redis, name: str) -> tuple[int, int, int]:
    stat = _cmdstat(client, name)
    return stat.get("calls", 0), stat.get("rejected_calls", 0), stat.get("failed_calls", 0)


def _scenario(client: redis.Redis) -> None:
    """Calls, rejections (arity, unknown subcommand) and failures, inside EXEC too."""
    client.set("text", "abc")
    client.get("text")
    for bad in (("GET",), ("CLIENT",), ("CLIENT", "bogus"), ("INCR", "text"), ("NOSUCH",)):
        with pytest.raises(redis.ResponseError):
            client.execute_command(*bad)
    client.execute_command("CLIENT", "ID")
    with client.pipeline(transaction=True) as pipe:
        pipe.set("n", "1")
        pipe.incr("text")
        pipe.get("n")
        pipe.execute(raise_on_error=False)
    client.execute_command("MULTI")
    with pytest.raises(redis.ResponseError):
        client.execute_command("SET", "only-key")
    with pytest.raises(redis.exceptions.ExecAbortError):
        client.execute_command("EXEC")


def test_commandstats_and_errorstats_match_redis(dtm_server, redis_server: int) -> None:
    ours, theirs = dtm_server.client(), redis.Redis(port=redis_server)
    for client in (ours, theirs):
        client.config_resetstat()
        _scenario(client)
    for name in ("set", "get", "incr", "client", "client|id", "exec", "multi", "nosuch"):
        assert _counts(ours, name) == _counts(theirs, name), name
    assert ours.info("errorstats") == theirs.info("errorstats")
    assert ours.info("stats")["total_error_replies"] == theirs.info("stats")["total_error_replies"]


def test_commandstats_line_format(r: redis.Redis) -> None:
    r.config_resetstat()
    r.set("a", "1")
    text = _raw_info(r, "commandstats")
    assert re.search(
        r"^cmdstat_set:calls=1,usec=\d+,usec_per_call=\d+\.\d\d,rejected_calls=0,failed_calls=0\r$",
        text, re.M,
    )
    assert re.search(r"^cmdstat_config\|resetstat:calls=1,", text, re.M)


def test_pipelined_fast_path_commands_are_all_counted(r: redis.Redis) -> None:
    r.config_resetstat()
    with r.pipeline(transaction=False) as pipe:
        for i in range(500):
            pipe.set(f"k{i}", i)
            pipe.get(f"k{i}")
        pipe.execute()
    assert _counts(r, "set") == (500, 0, 0)
    assert _counts(r, "get") == (500, 0, 0)
    assert _cmdstat(r, "get")["usec"] > 0


def test_config_resetstat_clears_command_and_error_stats(r: redis.Redis) -> None:
    r.set("a", "x")
    with pytest.raises(redis.ResponseError):
        r.incr("a")
    r.config_resetstat()
    assert _cmdstat(r, "set") == {}
    assert r.info("errorstats") == {}
    assert r.info("stats")["total_error_replies"] == 0


# --------------------------------------------------------------------- SLOWLOG


def test_slowlog_entries_as_redis(r: redis.Redis) -> None:
    r.config_set("slowlog-log-slower-than", 0)
    try:
        r.slowlog_reset()
        r.client_setname("watcher")
        r.execute_command("SET", "x" * 200, "v")
        r.execute_command("MSET", *[f"k{i}" for i in range(40)])
        entries = r.execute_command("SLOWLOG", "GET", 3)
    finally:
        r.config_set("slowlog-log-slower-than", 10000)
    mset, set_, setname = entries
    assert mset[0] == set_[0] + 1 == setname[0] + 2  # ids grow, newest first
    assert set_[3] == [b"SET", b"x" * 128 + b"... (72 more bytes)", b"v"]
    assert len(mset[3]) == 32 and mset[3][-1] == b"... (10 more arguments)"
    assert mset[3][:2] == [b"MSET", b"k0"]
    assert isinstance(set_[1], int) and isinstance(set_[2], int)
    assert re.fullmatch(rb"127\.0\.0\.1:\d+", set_[4]) and set_[5] == b"watcher"


def test_slowlog_len_reset_and_max_len(r: redis.Redis) -> None:
    r.config_set("slowlog-log-slower-than", 0)
    r.config_set("slowlog-max-len", 3)
    try:
        for i in range(10):
            r.set(f"k{i}", i)
        assert r.slowlog_len() == 3
        assert len(r.execute_command("SLOWLOG", "GET", -1)) == 3
        assert r.execute_command("SLOWLOG", "RESET") == b"OK"
    finally:
        r.config_set("slowlog-log-slower-than", 10000)
        r.config_set("slowlog-max-len", 128)
    assert r.slowlog_len() == 1  # the RESET itself, logged after it ran (as Redis does)
    r.set("fast", "1")  # under the default 10 ms threshold
    assert r.slowlog_len() == 1


@pytest.mark.parametrize(
    "command",
    [["SLOWLOG", "GET", "-2"], ["SLOWLOG", "GET", "abc"], ["SLOWLOG", "LEN", "x"], ["SLOWLOG"],
     ["SLOWLOG", "HELP"], ["SLOWLOG", "GET", "0"], ["SLOWLOG", "nope"],
     ["LATENCY", "HELP"], ["LATENCY", "LATEST"], ["LATENCY", "HISTORY", "command"],
     ["LATENCY", "RESET", "a", "b"], ["LATENCY", "GRAPH", "command"], ["LATENCY", "DOCTOR"],
     ["CLIENT", "PAUSE", "abc"], ["CLIENT", "PAUSE", "-1"], ["CLIENT", "PAUSE", "10", "bogus"],
     ["CLIENT", "PAUSE", "10", "write", "x"], ["CLIENT", "REPLY", "bogus"],
     ["CLIENT", "NO-EVICT", "bogus"], ["CLIENT", "NO-EVICT", "on"], ["CLIENT", "UNPAUSE"]],
)
def test_introspection_replies_match_redis(command: list[str], dtm_server, redis_server: int) -> None:
    def reply(client: redis.Redis) -> Any:
        try:
            return client.execute_command(*command)
        except redis.ResponseError as exc:
            return ("error", str(exc))

    assert reply(dtm_server.client()) == reply(redis.Redis(port=redis_server))


# --------------------------------------------------------------------- LATENCY


def test_latency_histogram_is_empty_as_with_tracking_off(r: redis.Redis) -> None:
    r.get("k")
    assert r.execute_command("LATENCY", "HISTOGRAM") == []  # an empty map, in RESP2
    assert r.execute_command("LATENCY", "HISTOGRAM", "get") == []


def test_latency_monitor_records_slow_commands(r: redis.Redis) -> None:
    assert r.execute_command("LATENCY", "LATEST") == []
    r.config_set("latency-monitor-threshold", 1)
    try:
        # Thousands of keys across buckets take well over a millisecond here.
        r.execute_command("MSET", *[f"key{i}" for i in range(40000)])
        latest = r.execute_command("LATENCY", "LATEST")
        history = r.execute_command("LATENCY", "HISTORY", "command")
        graph = r.execute_command("LATENCY", "GRAPH", "command").decode()
        doctor = r.execute_command("LATENCY", "DOCTOR").decode()
    finally:
        r.config_set("latency-monitor-threshold", 0)
        assert r.execute_command("LATENCY", "RESET") >= 1
    (event, when, latency, worst), = latest
    assert event == b"command" and latency >= 1 and worst >= latency
    assert history == [[when, latency]]
    assert graph.startswith(f"command - high {latency} ms, low {latency} ms")
    assert "\n" + "-" * 80 + "\n" in graph
    assert doctor.startswith("Dave, I have observed latency spikes")
    assert "1. command: 1 latency spikes" in doctor


# ------------------------------------------------------------------ MONITOR

LINE = re.compile(rb"^\+(\d+\.\d{6}) \[(\d+) (127\.0\.0\.1:\d+)\] (.*)\r$")


async def _monitor_lines(monitor: RawClient, count: int) -> list[bytes]:
    lines: list[bytes] = []
    while len(lines) < count:
        lines.append(await monitor.reply())
    return lines


async def test_monitor_streams_other_clients_commands_as_redis() -> None:
    async with serving() as server:
        monitor = await RawClient.connect(server.port)
        other = await RawClient.connect(server.port)
        assert await monitor.call("MONITOR") == b"OK"
        await other.call("SET", "key", b'a "quoted"\\ \n\x01\xff value')
        await other.call("CONFIG", "GET", "maxclients")  # admin: never shown
        await other.call("AUTH", "nobody", "secret")  # shown redacted
        await other.call("SELECT", "3")
        await other.call("GET", "missing")
        with trio.fail_after(2):
            lines = await _monitor_lines(monitor, 4)
        shown = [(line.split(b"] ", 1)[1], line.split(b" ")[1]) for line in lines]
        assert shown == [
            (b'"SET" "key" "a \\"quoted\\"\\\\ \\n\\x01\\xff value"', b"[0"),
            (b'"AUTH" "(redacted)" "(redacted)"', b"[0"),
            (b'"SELECT" "3"', b"[3"),
            (b'"GET" "missing"', b"[3"),
        ]
        assert re.match(rb"^\d+\.\d{6} \[0 127\.0\.0\.1:\d+\] ", lines[0])
        # A monitor may PING but not touch the keyspace; RESET ends monitoring.
        assert await monitor.call("PING") == b"PONG"
        error = await monitor.call("GET", "key")
        assert str(error) == "ERR Replica can't interact with the keyspace"
        assert await monitor.call("RESET") == b"RESET"
        await other.call("SELECT", "0")
        await other.call("SET", "after", "reset")
        assert await monitor.call("GET", "after") == b"reset"  # no feed line before it
        assert not server.observe.monitors


async def test_monitor_shows_exec_commands_in_order() -> None:
    async with serving() as server:
        monitor = await RawClient.connect(server.port)
        other = await RawClient.connect(server.port)
        await monitor.call("MONITOR")
        await other.send_raw(
            b"*1\r\n$5\r\nMULTI\r\n*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n"
            b"*2\r\n$4\r\nINCR\r\n$1\r\nk\r\n*1\r\n$4\r\nEXEC\r\n"
        )
        with trio.fail_after(2):
            lines = await _monitor_lines(monitor, 4)
        assert [line.split(b"] ", 1)[1] for line in lines] == [
            b'"MULTI"', b'"SET" "k" "v"', b'"INCR" "k"', b'"EXEC"',
        ]


def test_monitor_works_with_redis_py(dtm_server) -> None:
    client = dtm_server.client()
    with client.monitor() as monitor:
        client.set("monitored", "value")
        command = monitor.next_command()
        while command["command"] != "SET monitored value":  # other clients' commands
            command = monitor.next_command()
    assert command["command"] == "SET monitored value"
    assert command["db"] == 0 and command["client_type"] == "tcp"


async def test_monitor_client_closing_leaves_no_feed() -> None:
    async with serving() as server:
        monitor = await RawClient.connect(server.port)
        await monitor.call("MONITOR")
        assert len(server.observe.monitors) == 1
        await monitor.aclose()
        other = await RawClient.connect(server.port)
        with trio.fail_after(2):
            while server.observe.monitors:
                await other.call("PING")
        assert await other.call("SET", "k", "v") == b"OK"


# ---------------------------------------------------------------- CLIENT PAUSE


async def test_client_pause_write_holds_writes_not_reads() -> None:
    async with serving() as server:
        admin = await RawClient.connect(server.port)
        writer = await RawClient.connect(server.port)
        reader = await RawClient.connect(server.port)
        assert await admin.call("CLIENT", "PAUSE", "20000", "WRITE") == b"OK"
        await writer.send("SET", "k", "v")
        with trio.fail_after(1):  # reads go on while the write waits
            assert await reader.call("PING") == b"PONG"
            assert await reader.call("GET", "k") is None
            assert await reader.call("CLIENT", "UNPAUSE") == b"OK"
            assert await writer.reply() == b"OK"
            assert await reader.call("GET", "k") == b"v"
        assert not server.pause.active


async def test_client_pause_all_holds_everything_until_it_ends() -> None:
    async with serving() as server:
        admin = await RawClient.connect(server.port)
        other = await RawClient.connect(server.port)
        assert await admin.call("CLIENT", "PAUSE", "300", "ALL") == b"OK"
        began = trio.current_time()
        await other.send("PING")
        with trio.fail_after(1):
            # Rejected before running (wrong arity): answered at once, as Redis does.
            assert "wrong number of arguments" in str(await admin.call("GET"))
            assert await other.reply() == b"PONG"
        assert trio.current_time() - began >= 0.25
        assert await admin.call("SET", "k", "v") == b"OK"


async def test_client_pause_timeout_ends_the_pause() -> None:
    async with serving() as server:
        client = await RawClient.connect(server.port)
        assert await client.call("CLIENT", "PAUSE", "50", "WRITE") == b"OK"
        with trio.fail_after(1):
            assert await client.call("SET", "k", "v") == b"OK"
        assert not server.pause.active  # the fast path is back


# ---------------------------------------------------------------- CLIENT REPLY


async def test_client_reply_off_on_skip() -> None:
    async with serving() as server:
        client = await RawClient.connect(server.port)
        await client.send_raw(b"".join([
            encode("CLIENT", "REPLY", "OFF"), encode("PING", "hidden"), encode("GET"),
            encode("CLIENT", "REPLY", "ON"), encode("PING", "shown"),
            encode("CLIENT", "REPLY", "SKIP"), encode("PING", "skipped"), encode("PING", "last"),
        ]))
        with trio.fail_after(2):
            assert await client.reply() == b"OK"
            assert await client.reply() == b"shown"
            assert await client.reply() == b"last"
        assert await client.call("PING") == b"PONG"


async def test_client_no_evict_shows_in_client_list() -> None:
    async with serving() as server:
        client = await RawClient.connect(server.port)
        assert await client.call("CLIENT", "NO-EVICT", "on") == b"OK"
        assert b" flags=e " in await client.call("CLIENT", "INFO")
        assert await client.call("CLIENT", "NO-EVICT", "off") == b"OK"
        assert b" flags=N " in await client.call("CLIENT", "INFO")
