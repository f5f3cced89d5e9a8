"""dtm-bench: short runs against a real dtm and redis-server, its JSON, its errors, and
the compare command's table and charts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.histogram import Histogram
from bench.processes import free_port
from bench.runner import Plan, run
from bench.workloads import WORKLOADS, Settings
from conftest import ROOT

FIELDS = {"total_requests", "total_latency_us", "average_latency_us", "max_latency_us", "elapsed_s",
          "requests_per_sec", "p50_us", "p90_us", "p99_us", "p999_us", "aborts", "errors",
          "error_samples", "workload", "hosts", "clients_per_host", "pipeline", "procs"}


def bench(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bench.cli", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=timeout)


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


def test_compare_writes_the_table_and_charts(tmp_path: Path) -> None:
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n\nhand-written figures stay\n")
    completed = bench("compare", "--seconds", "0.3", "--clients", "2", "--rounds", "1",
                      "--workloads", "get_set,bank", "--sweep", "1,2", "--warmup", "0",
                      "--out-dir", str(tmp_path), "--docs", str(docs), timeout=300)
    assert completed.returncode == 0, completed.stderr
    assert "| get_set | dtm none |" in completed.stdout
    assert "| bank | dtm binlog |" in completed.stdout
    text = docs.read_text()
    assert "hand-written figures stay" in text and "| get_set | dtm checkpoint |" in text
    import matplotlib.image

    for name in ("bench-compare.png", "bench-sweep.png"):
        image = matplotlib.image.imread(tmp_path / name)
        assert image.shape[0] > 100 and image.shape[1] > 100
