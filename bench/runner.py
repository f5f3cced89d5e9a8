"""Running a workload: CLIENTS connections to each host (or, with ``spread``, CLIENTS in
all, dealt round-robin over the hosts: several fronts of one server) for SECONDS (after a
warm-up), spread over ``procs`` processes (by default one per usable core) so the generator is not
the bottleneck, with a live progress line on stderr; the per-client histograms and
counters are merged at the end, and each process reports how busy its CPU was."""

from __future__ import annotations

import multiprocessing
import os
import random
import socket
import sys
import time
from typing import Any

import attrs

from bench import saturation
from bench.client import BenchClient, ServerError
from bench.histogram import Histogram
from bench.loop import EventLoop, sleep_until
from bench.workloads import (
    LOOPS,
    ClientStats,
    Recorder,
    Settings,
    bank_setup,
    bank_total,
    run_client,
    summarize,
)

Host = tuple[str, int]


class BenchError(Exception):
    """The run cannot start (a host is unreachable, bad arguments)."""


def default_procs() -> int:
    """The cores this process may run on (its affinity mask, which containers and
    taskset narrow; os.cpu_count() counts the machine's)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@attrs.define
class Plan:
    hosts: list[Host]
    clients: int
    seconds: float
    workload: str
    settings: Settings = attrs.Factory(Settings)
    procs: int = attrs.Factory(default_procs)
    warmup: float = 0.0
    busy_threshold: float = saturation.BUSY_THRESHOLD
    give_up_after: float = 10.0  # seconds past the end a client still waits for a reply
    spread: bool = False  # clients is the total, dealt round-robin over the hosts

    def connections(self) -> list[tuple[Host, int]]:
        """Every connection the run opens, as (host, client index)."""
        if self.spread:
            return [(self.hosts[i % len(self.hosts)], i) for i in range(self.clients)]
        return [(host, index) for host in self.hosts for index in range(self.clients)]


def parse_hosts(text: str) -> list[Host]:
    hosts = []
    for part in text.split(","):
        host, sep, port = part.strip().rpartition(":")
        if not sep or not host or not port.isdigit():
            raise BenchError(f"bad host {part!r}: expected HOST:PORT")
        hosts.append((host, int(port)))
    return hosts


def check_reachable(hosts: list[Host]) -> None:
    for host, port in hosts:
        try:
            with socket.create_connection((host, port), timeout=3):
                pass
        except OSError as exc:
            raise BenchError(f"cannot connect to {host}:{port}: {exc.strerror or exc}") from None


def _for_each_host(hosts: list[Host], action: Any) -> list[Any]:
    async def each() -> list[Any]:
        results = []
        for host, port in hosts:
            client = await BenchClient.connect(host, port)
            try:
                results.append(await action(client))
            finally:
                await client.aclose()
        return results

    try:
        return EventLoop().run(each(), give_up_at=time.monotonic() + 30)
    except (OSError, ServerError) as exc:
        raise BenchError(f"{action.__name__}: {exc}") from None


def _assignments(plan: Plan) -> list[list[tuple[Host, int]]]:
    """Which (host, client index) each process runs."""
    connections = plan.connections()
    procs = max(1, min(plan.procs, len(connections)))
    work: list[list[tuple[Host, int]]] = [[] for _ in range(procs)]
    for n, connection in enumerate(connections):
        work[n % procs].append(connection)
    return work


def _run_clients(plan: Plan, work: list[tuple[Host, int]], start_wall: float,
                 counter: Any) -> tuple[ClientStats, float, dict[str, int]]:
    """This process's clients, merged, how busy its CPU was from the start, and the
    requests each host answered."""
    loop = LOOPS[plan.workload]
    start = time.monotonic() + max(0.0, start_wall - time.time())
    measure_from = start + plan.warmup
    deadline = measure_from + plan.seconds
    stats = [ClientStats() for _ in work]
    meter = saturation.CpuMeter()
    event_loop = EventLoop()

    async def main() -> None:
        await sleep_until(start)
        meter.start()
        for (host, index), client_stats in zip(work, stats, strict=True):
            rng = random.Random(hash((plan.settings.seed, host, index)))
            recorder = Recorder(client_stats, measure_from)
            event_loop.spawn(run_client(loop, host[0], host[1], recorder, plan.settings, deadline, rng))
        if counter is not None:
            event_loop.spawn(_publish(stats, counter, deadline))

    event_loop.run(main(), give_up_at=deadline + plan.give_up_after)
    busy = meter.busy()
    merged = ClientStats()
    per_host: dict[str, int] = {}
    for (host, _), client_stats in zip(work, stats, strict=True):
        name = _host_name(host)
        per_host[name] = per_host.get(name, 0) + client_stats.requests
        merged.histogram.merge(client_stats.histogram)
        merged.requests += client_stats.requests
        merged.aborts += client_stats.aborts
        merged.errors += client_stats.errors
        merged.error_samples += client_stats.error_samples[: 5 - len(merged.error_samples)]
    return merged, busy, per_host


def _host_name(host: Host) -> str:
    return f"{host[0]}:{host[1]}"


async def _publish(stats: list[ClientStats], counter: Any, deadline: float) -> None:
    while time.monotonic() < deadline:
        counter.value = sum(s.requests for s in stats)
        await sleep_until(min(deadline, time.monotonic() + 0.2))
    counter.value = sum(s.requests for s in stats)


def _process_main(plan: Plan, work: list[tuple[Host, int]], start_wall: float, counter: Any,
                  results: Any) -> None:
    merged, busy, per_host = _run_clients(plan, work, start_wall, counter)
    results.send({"histogram": merged.histogram.to_state(), "requests": merged.requests,
                  "aborts": merged.aborts, "errors": merged.errors, "samples": merged.error_samples,
                  "busy": busy, "per_host": per_host})
    results.close()


def run(plan: Plan, *, progress: bool = True) -> dict[str, Any]:
    """Run plan and return its summary (the fields dtm-bench prints)."""
    if plan.workload not in LOOPS:
        raise BenchError(f"unknown workload {plan.workload!r} (choose from {', '.join(LOOPS)})")
    check_reachable(plan.hosts)
    initial_totals: list[int] = []
    if plan.workload == "bank":
        _for_each_host(plan.hosts, bank_setup)
        initial_totals = _for_each_host(plan.hosts, bank_total)
    context = multiprocessing.get_context("fork")
    start_wall = time.time() + 0.3
    workers = []
    for work in _assignments(plan):
        counter = context.Value("q", 0, lock=False)
        receiver, sender = context.Pipe(duplex=False)
        process = context.Process(target=_process_main, args=(plan, work, start_wall, counter, sender))
        process.start()
        sender.close()
        workers.append((process, counter, receiver))
    _show_progress(plan, workers, start_wall, progress)
    merged = ClientStats()
    busy: list[float] = []
    per_host = {_host_name(host): 0 for host in plan.hosts}
    for process, _, receiver in workers:
        try:
            state = receiver.recv()
        except EOFError:
            merged.error("a load-generator process died")
            continue
        finally:
            process.join()
        merged.histogram.merge(Histogram.from_state(state["histogram"]))
        merged.requests += state["requests"]
        merged.aborts += state["aborts"]
        merged.errors += state["errors"]
        merged.error_samples += state["samples"][: 5 - len(merged.error_samples)]
        busy.append(state["busy"])
        for name, requests in state["per_host"].items():
            per_host[name] += requests
    summary = summarize(merged, plan.seconds)
    spread = {_host_name(host): 0 for host in plan.hosts}
    for host, _ in plan.connections():
        spread[_host_name(host)] += 1
    summary.update(workload=plan.workload, hosts=[_host_name(h) for h in plan.hosts],
                   clients_per_host=None if plan.spread else plan.clients, spread=plan.spread,
                   connections_per_host=spread,
                   requests_per_sec_per_host={name: round(n / plan.seconds, 1)
                                              for name, n in per_host.items()},
                   pipeline=plan.settings.pipeline,
                   procs=len(workers), generator_cpu_busy=[round(b, 3) for b in busy],
                   warnings=saturation.warnings(busy, plan.busy_threshold))
    if plan.workload == "bank":
        final = _for_each_host(plan.hosts, bank_total)
        summary["bank_total_expected"] = initial_totals
        summary["bank_total_found"] = final
        summary["bank_total_ok"] = final == initial_totals
        if final != initial_totals:
            summary["errors"] += 1
            summary["error_samples"].append(f"bank total changed: {initial_totals} -> {final}")
    return summary


def _show_progress(plan: Plan, workers: list[Any], start_wall: float, enabled: bool) -> None:
    end = start_wall + plan.warmup + plan.seconds
    last_count, last_time = 0, time.time()
    while any(process.is_alive() for process, _, _ in workers):
        time.sleep(0.5)
        if not enabled:
            continue
        now = time.time()
        count = sum(counter.value for _, counter, _ in workers)
        rate = (count - last_count) / (now - last_time) if now > last_time else 0.0
        phase = "warm-up" if now < start_wall + plan.warmup else "measuring"
        elapsed = max(0.0, min(now, end) - start_wall)
        sys.stderr.write(f"\r{plan.workload}: {phase} {elapsed:5.1f}s  {rate:12,.0f} req/s  "
                         f"{count:12,d} requests ")
        sys.stderr.flush()
        last_count, last_time = count, now
    if enabled:
        sys.stderr.write("\n")
