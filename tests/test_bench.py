"""dtm-bench: short runs against a real dtm and redis-server, its JSON, its errors, its
default process count and CPU-saturation warning, and the compare command's output
directory, docs update and charts (with and without matplotlib)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT

from bench import saturation
from bench.histogram import Histogram
from bench.processes import free_port
from bench.runner import BenchError, Plan, run
from bench.workloads import WORKLOADS, Settings

FIELDS = {"total_requests", "total_latency_us", "average_latency_us", "max_latency_us", "elapsed_s",
          "requests_per_sec", "p50_us", "p90_us", "p99_us", "p999_us", "aborts", "errors",
          "error_samples", "workload", "hosts", "clients_per_host", "pipeline", "procs",
          "generator_cpu_busy", "warnings", "spread", "connections_per_host",
          "requests_per_sec_per_host"}
BLOCK_MATPLOTLIB = "import sys; sys.modules['matplotlib'] = None; "


def bench(*args: str, timeout: float = 60, cwd: Path = ROOT, prelude: str = "",
          **popen: Any) -> subprocess.CompletedProcess[str]:
    """dtm-bench in a subprocess; prelude runs first (e.g. to make an import fail)."""
    code = f"{prelude}import sys; from bench.cli import main; sys.exit(main(sys.argv[1:]))"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout, env=env, **popen)


def tracked_docs() -> dict[str, str]:
    """What dtm-bench compare --update-docs may rewrite in the repository, by content."""
    paths = [ROOT / "docs" / "benchmarks.md", *sorted((ROOT / "docs").glob("*.png"))]
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths if p.exists()}


def test_histogram_percentiles_are_within_its_precision() -> None:
    histogram = Histogram()
    for value in range(1, 10001):
        histogram.record(value)
    assert histogram.count == 10000 and histogram.max == 10000
    for fraction in (0.5, 0.9, 0.99, 0.999):
        exact = fraction * 10000
        assert abs(histogram.percentile(fraction) - exact) <= exact / 60
    other = Histogram()
    other.record(50000)
    histogram.merge(other)
    assert histogram.max == 50000 and histogram.percentile(1.0) == 50000


@pytest.mark.parametrize("workload", WORKLOADS)
def test_every_workload_runs_clean_against_dtm(workload: str, dtm_server) -> None:
    result = run(Plan([("127.0.0.1", dtm_server.port)], clients=4, seconds=0.7, workload=workload,
                      settings=Settings(pipeline=4 if workload == "get_set" else 1)), progress=False)
    assert result["errors"] == 0, result["error_samples"]
    assert result["total_requests"] > 0
    assert result["p50_us"] <= result["p99_us"] <= result["max_latency_us"]
    if workload == "bank":
        assert result["bank_total_ok"] is True


@pytest.mark.parametrize("workload", ["get_set", "bank"])
def test_workloads_run_clean_against_redis(workload: str, redis_server: int) -> None:
    result = run(Plan([("127.0.0.1", redis_server)], clients=4, seconds=0.5, workload=workload,
                      procs=2), progress=False)
    assert result["errors"] == 0, result["error_samples"]
    assert result["total_requests"] > 0 and result["procs"] == 2


def test_json_output_has_every_field(dtm_server) -> None:
    completed = bench(f"127.0.0.1:{dtm_server.port}", "2", "0.5", "trans", "--json")
    assert completed.returncode == 0, completed.stderr
    result = json.loads(completed.stdout)
    assert FIELDS <= set(result)


def test_text_output_has_the_original_fields_and_progress(dtm_server) -> None:
    completed = bench(f"127.0.0.1:{dtm_server.port}", "2", "1.2", "get_set")
    assert completed.returncode == 0, completed.stderr
    for field in ("total requests:", "total latency:", "average latency:", "max latency:",
                  "elapsed:", "requests/sec:", "p50 / p90 / p99 / p99.9:", "aborts:", "errors:"):
        assert field in completed.stdout
    assert "req/s" in completed.stderr  # the live progress line


def test_a_dead_host_is_a_clear_error_and_a_failing_exit() -> None:
    completed = bench(f"127.0.0.1:{free_port()}", "2", "0.5", "get_set")
    assert completed.returncode == 1
    assert "cannot connect to 127.0.0.1:" in completed.stderr


def test_the_default_process_count_is_the_usable_cores(dtm_server) -> None:
    cores = len(os.sched_getaffinity(0))
    assert Plan([("127.0.0.1", 1)], clients=1, seconds=1, workload="get_set").procs == cores
    completed = bench(f"127.0.0.1:{dtm_server.port}", "4", "0.3", "get_set", "--json")
    assert completed.returncode == 0, completed.stderr
    result = json.loads(completed.stdout)
    assert result["procs"] == min(cores, 4) and len(result["generator_cpu_busy"]) == result["procs"]
    # a narrower affinity mask (taskset, a container's cpuset) means fewer processes
    one = min(os.sched_getaffinity(0))
    completed = bench(f"127.0.0.1:{dtm_server.port}", "4", "0.3", "get_set", "--json",
                      preexec_fn=lambda: os.sched_setaffinity(0, {one}))
    assert completed.returncode == 0, completed.stderr
    assert json.loads(completed.stdout)["procs"] == 1


def test_the_cpu_meter_tells_a_busy_process_from_a_waiting_one() -> None:
    meter = saturation.CpuMeter()
    meter.start()
    time.sleep(0.2)
    waiting = meter.busy()
    meter.start()
    end = time.process_time() + 0.1
    while time.process_time() < end:  # 0.1 s of CPU, however long a loaded machine takes
        pass
    spinning = meter.busy()
    # a spinner gets only a share of a core on a loaded machine, hence the margins
    assert waiting < 0.05 and spinning > 0.1 and spinning > 10 * waiting
    assert saturation.warnings([waiting, 0.2]) == []
    (warning,) = saturation.warnings([0.95, 0.2])
    assert "1 of 2 worker processes" in warning and "lower bound" in warning


def test_a_saturated_generator_warns_on_stderr_and_in_the_json(dtm_server) -> None:
    # a threshold of 0 makes any measured busy fraction "saturated": the whole path from
    # the worker processes to the output is exercised without depending on the load
    completed = bench(f"127.0.0.1:{dtm_server.port}", "2", "0.3", "get_set", "--json",
                      "--cpu-warn", "0")
    assert completed.returncode == 0, completed.stderr
    result = json.loads(completed.stdout)
    assert len(result["warnings"]) == 1 and "CPU-bound" in result["warnings"][0]
    assert f"dtm-bench: warning: {result['warnings'][0]}" in completed.stderr
    completed = bench(f"127.0.0.1:{dtm_server.port}", "2", "0.3", "get_set", "--cpu-warn", "1.01")
    assert completed.returncode == 0, completed.stderr
    assert "warning" not in completed.stderr and "generator CPU:" in completed.stdout


TINY_COMPARE = ("compare", "--seconds", "0.2", "--clients", "2", "--rounds", "1", "--workloads",
                "get_set", "--sweep", "1", "--warmup", "0", "--no-redis")


def test_compare_writes_to_a_new_directory_and_leaves_the_docs_alone_without_matplotlib(
        tmp_path: Path) -> None:
    before = tracked_docs()
    completed = bench(*TINY_COMPARE, cwd=tmp_path, prelude=BLOCK_MATPLOTLIB, timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert "| get_set | dtm none |" in completed.stdout
    assert "charts skipped: matplotlib is not installed" in completed.stderr
    assert "pip install -e '.[bench]'" in completed.stderr
    (out,) = tmp_path.iterdir()
    assert out.name.startswith("dtm-bench-compare-") and f"results go to {out.name}/" in completed.stderr
    assert sorted(p.name for p in out.iterdir()) == ["compare.md", "results.json"]
    assert "| get_set | dtm checkpoint |" in (out / "compare.md").read_text()
    assert {r["server"] for r in json.loads((out / "results.json").read_text())["runs"]} == {
        "dtm none", "dtm binlog", "dtm checkpoint"}
    assert tracked_docs() == before


def test_compare_updates_the_docs_only_when_asked(tmp_path: Path) -> None:
    docs = tmp_path / "docs" / "benchmarks.md"
    docs.parent.mkdir()
    docs.write_text("# Benchmarks\n\nhand-written figures stay\n")
    out = tmp_path / "out"
    completed = bench(*TINY_COMPARE, "--out", str(out), "--update-docs", "--docs", str(docs),
                      timeout=120)
    assert completed.returncode == 0, completed.stderr
    text = docs.read_text()
    assert "hand-written figures stay" in text and "| get_set | dtm checkpoint |" in text
    assert "![bench-compare](bench-compare.png)" in text
    import matplotlib.image

    for name in ("bench-compare.png", "bench-sweep.png"):
        for directory in (out, docs.parent):
            image = matplotlib.image.imread(directory / name)
            assert image.shape[0] > 100 and image.shape[1] > 100
    assert (out / "compare.md").read_text().strip() in text


def test_compare_refuses_a_docs_update_it_could_not_do(tmp_path: Path) -> None:
    # found out before any server starts, not after minutes of runs
    completed = bench(*TINY_COMPARE, "--update-docs", "--docs", str(tmp_path / "missing.md"),
                      cwd=tmp_path, timeout=30)
    assert completed.returncode == 2 and "no file" in completed.stderr
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n")
    completed = bench(*TINY_COMPARE, "--update-docs", "--docs", str(docs), cwd=tmp_path,
                      prelude=BLOCK_MATPLOTLIB, timeout=30)
    assert completed.returncode == 2 and "needs matplotlib" in completed.stderr
    assert docs.read_text() == "# Benchmarks\n" and list(tmp_path.iterdir()) == [docs]


def test_a_server_that_never_answers_cannot_hang_the_generator() -> None:
    with socket.socket() as silent:  # the kernel accepts connections; nothing ever replies
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        started = time.monotonic()
        result = run(Plan([silent.getsockname()], clients=3, seconds=0.2, workload="get_set",
                          procs=1, give_up_after=0.3), progress=False)
    assert time.monotonic() - started < 5
    assert result["errors"] == 3 and result["total_requests"] == 0
    assert "no reply" in result["error_samples"][0]


def test_spread_deals_the_clients_over_the_hosts_round_robin() -> None:
    a, b = ("127.0.0.1", 1), ("127.0.0.1", 2)
    spread = Plan([a, b], clients=5, seconds=1, workload="get_set", spread=True).connections()
    assert [host for host, _ in spread] == [a, b, a, b, a]
    assert len({index for _, index in spread}) == 5  # each connection its own random stream
    each = Plan([a, b], clients=5, seconds=1, workload="get_set").connections()
    assert [host for host, _ in each] == [a] * 5 + [b] * 5


def test_a_spread_run_loads_every_host_and_reports_each(dtm_server, redis_server: int) -> None:
    hosts = [("127.0.0.1", dtm_server.port), ("127.0.0.1", redis_server)]
    result = run(Plan(hosts, clients=4, seconds=0.5, workload="get_set", procs=2, spread=True),
                 progress=False)
    assert result["errors"] == 0, result["error_samples"]
    names = [f"127.0.0.1:{port}" for _, port in hosts]
    assert result["spread"] is True and result["connections_per_host"] == dict.fromkeys(names, 2)
    per_host = result["requests_per_sec_per_host"]
    assert set(per_host) == set(names) and all(rate > 0 for rate in per_host.values())
    assert sum(per_host.values()) == pytest.approx(result["requests_per_sec"], abs=1)
    completed = bench(",".join(names), "4", "0.3", "get_set", "--spread")
    assert completed.returncode == 0, completed.stderr
    assert "clients: 4 in all, spread" in completed.stdout
    assert "requests/sec per host:" in completed.stdout and "(2 clients)" in completed.stdout


def test_compare_has_the_redis_engine_targets_one_and_two_fronts_in_every_mode(tmp_path: Path) -> None:
    from bench.compare import _targets, select_targets, servers_of

    targets = _targets(tmp_path, with_redis=True)
    names = [t.name for t in targets]
    for mode in ("none", "binlog", "checkpoint"):
        assert f"dtm {mode}" in names
        one = targets[names.index(f"redis engine {mode}")]
        two = targets[names.index(f"redis engine {mode} 2 fronts")]
        assert two.fronts[0] is one.fronts[0] and len(two.fronts) == 2
        first, second = two.fronts
        assert first.command[first.command.index("--engine") + 1] == "redis"
        assert first.command[first.command.index("--buckets") + 1] == "8"
        assert first.command[first.command.index("--mode") + 1] == mode
        home = first.command[first.command.index("--dir") + 1]
        assert second.command[second.command.index("--shards") + 1] == ",".join(
            f"unix:{home}/shard-{i}/redis.sock" for i in range(8))
        assert second.after is first and second.command[second.command.index("--mode") + 1] == mode
        assert (one.pause_field is not None) == (mode == "checkpoint")
    if shutil.which("redis-server"):
        assert {"redis", "redis aof-always"} <= set(names)
    chosen = select_targets(targets, "redis engine none 2 fronts,dtm none")
    assert [t.name for t in chosen] == ["redis engine none 2 fronts", "dtm none"]
    # a second front starts after the first, which spawns the shards it joins
    assert [s.name for s in servers_of(chosen)] == [
        "redis engine none", "redis engine none (second front)", "dtm none"]
    with pytest.raises(BenchError, match="unknown targets"):
        select_targets(targets, "dtm none,redis engine sometimes")


def test_compare_two_fronts_over_one_set_of_shards_reports_per_front_and_the_pause(
        tmp_path: Path) -> None:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server not installed")
    out = tmp_path / "out"
    # checkpoints every second: a 1.5 s run sees at least one
    completed = bench("compare", "--seconds", "1.5", "--clients", "4", "--rounds", "1",
                      "--workloads", "get_set", "--sweep", "", "--warmup", "0", "--targets",
                      "redis engine checkpoint 2 fronts", "--out", str(out),
                      prelude=BLOCK_MATPLOTLIB, timeout=120)
    assert completed.returncode == 0, completed.stderr
    row, cpu_row = [[c.strip() for c in line.strip("|").split("|")]
                    for line in completed.stdout.splitlines()
                    if line.startswith("| get_set | redis engine checkpoint 2 fronts |")]
    total, per_front, pause = (float(row[i].replace(",", "")) for i in (2, 3, 7))
    assert per_front == pytest.approx(total / 2, abs=1) and pause > 0
    # the servers' CPU: the fronts', and the shards' (children of the first front)
    assert float(cpu_row[2]) > 0 and float(cpu_row[3]) > 0
    (result,) = json.loads((out / "results.json").read_text())["runs"]
    assert result["fronts"] == 2 and result["checkpoint_pauses_seen"] >= 1
    assert len(result["requests_per_sec_per_host"]) == 2
    assert all(rate > 0 for rate in result["requests_per_sec_per_host"].values())
