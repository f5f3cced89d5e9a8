"""``dtm-bench compare``: dtm in every mode and redis-server side by side.

Starts dtm in each mode (fresh temporary data directories; checkpoint every second so
checkpoints happen during the runs) on the memory engine (``dtm MODE``) and, where
redis-server is installed, on the redis engine: one front over 8 spawned shards
(``redis engine MODE``) and two fronts over those same shards (``redis engine MODE 2
fronts``: the connections are dealt over both, and the table shows the rate per front
too), and redis-server alone without persistence and with ``appendfsync always``.
``--targets`` picks some of them. Runs the same workloads against each in alternating
rounds, plus a client-count sweep of binlog against none (memory engine) that shows
group commit at work. Records, for checkpoint targets, the longest checkpoint pause a
front reported during the runs, and for every target the servers' CPU per request.
Prints Markdown tables and writes them (with machine, date and command line), the raw
results and PNG charts into an output directory: ``--out DIR``, by default a new
``dtm-bench-compare-DATE-TIME`` in the current directory.
docs/benchmarks.md and its charts change only with ``--update-docs``. Charts need
matplotlib (``.venv/bin/pip install -e '.[bench]'``); without them they are skipped, with a line
saying so.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

import attrs

from bench.cpu import CpuWindow, children
from bench.pause import PausePoller
from bench.processes import StartError, free_port, stop, wait_listening
from bench.runner import BenchError, Plan, default_procs, run
from bench.workloads import WORKLOADS, Settings

BEGIN = "<!-- dtm-bench compare: begin -->"
END = "<!-- dtm-bench compare: end -->"


@attrs.define(eq=False)
class Server:
    """One process the comparison starts (a dtm front, a redis-server)."""

    name: str
    command: list[str]
    port: int
    after: Server | None = None  # started once that one listens: a front over its shards
    process: subprocess.Popen[bytes] | None = None


@attrs.define(eq=False)
class Target:
    """What one row of the tables measures: the load is dealt over its fronts."""

    name: str
    fronts: list[Server]
    pause_field: str | None = None  # INFO field of the last checkpoint's pause (ms)

    @property
    def ports(self) -> list[int]:
        return [front.port for front in self.fronts]


MODES: tuple[tuple[str, list[str]], ...] = (
    ("none", []), ("binlog", []), ("checkpoint", ["--checkpoint-interval", "1"]))
BUCKETS = 8


def _targets(workdir: Path, with_redis: bool) -> list[Target]:
    dtm = [sys.executable, "-m", "dtm.cli", "serve", "--log-level", "warning"]
    targets = []
    for mode, extra in MODES:
        port = free_port()
        server = Server(f"dtm {mode}", [*dtm, "--port", str(port), "--mode", mode,
                                        "--dir", str(workdir / mode), *extra], port)
        targets.append(Target(server.name, [server],
                              "snapshot_last_pause_ms" if mode == "checkpoint" else None))
    redis = shutil.which("redis-server")
    if not with_redis or redis is None:
        return targets
    for mode, extra in MODES:
        # the seed's set-up: 8 shards, spawned by the first front; the second front joins
        # them over their unix sockets (short paths: a socket path must fit 107 bytes)
        name = f"redis engine {mode}"
        home = workdir / f"re-{mode}"
        pause = "checkpoint_last_pause_ms" if mode == "checkpoint" else None
        first_port, second_port = free_port(), free_port()
        first = Server(name, [*dtm, "--engine", "redis", "--buckets", str(BUCKETS), "--port",
                              str(first_port), "--mode", mode, "--dir", str(home), *extra], first_port)
        shards = ",".join(f"unix:{home}/shard-{i}/redis.sock" for i in range(BUCKETS))
        second = Server(f"{name} (second front)",
                        [*dtm, "--engine", "redis", "--shards", shards, "--port", str(second_port),
                         "--mode", mode, "--dir", str(workdir / f"re-{mode}-2"), *extra],
                        second_port, after=first)
        targets.append(Target(name, [first], pause))
        targets.append(Target(f"{name} 2 fronts", [first, second], pause))
    for name, extra in (("redis", ["--appendonly", "no"]),
                        ("redis aof-always", ["--appendonly", "yes", "--appendfsync", "always"])):
        port = free_port()
        directory = workdir / name.replace(" ", "-")
        directory.mkdir(parents=True, exist_ok=True)
        server = Server(name, [redis, "--port", str(port), "--save", "", "--dir",
                               str(directory), *extra], port)
        targets.append(Target(name, [server]))
    return targets


def select_targets(targets: list[Target], names: str | None) -> list[Target]:
    """The targets named (comma list, in the order given), or all of them."""
    if names is None:
        return targets
    by_name = {t.name: t for t in targets}
    chosen = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in chosen if n not in by_name]
    if unknown:
        raise BenchError(f"unknown targets {unknown} (known: {', '.join(by_name)})")
    return [by_name[n] for n in dict.fromkeys(chosen)]


def servers_of(targets: list[Target]) -> list[Server]:
    """Every process the targets need, each once, each after the one it joins."""
    servers: list[Server] = []
    for target in targets:
        for front in target.fronts:
            for server in (front.after, front):
                if server is not None and server not in servers:
                    servers.append(server)
    return servers


def _start(servers: list[Server]) -> None:
    # all of a stage launched before waiting for any: their start-ups overlap
    pending = list(servers)
    while pending:
        stage = [s for s in pending if s.after is None or s.after not in pending]
        pending = [s for s in pending if s not in stage]
        for server in stage:
            server.process = subprocess.Popen(server.command, stdout=subprocess.DEVNULL,
                                              stderr=subprocess.DEVNULL)
        for server in stage:
            assert server.process is not None
            try:
                wait_listening(server.name, server.port, server.process, timeout=30)
            except StartError as exc:
                raise BenchError(str(exc)) from None


def _stop(servers: list[Server]) -> None:
    # fronts that joined others' shards first: the first front stops the shards it spawned
    spawned = [(kid, _cmdline(kid)) for s in servers if s.process is not None
               for kid in children(s.process.pid)]
    for server in reversed(servers):
        if server.process is not None:
            stop(server.process, timeout=15)
    # a front that went without stopping its shards (seen with checkpoint mode) must not
    # leave them running past the comparison; the command line tells a reused pid apart
    for pid, cmdline in spawned:
        if cmdline and _cmdline(pid) == cmdline:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dtm-bench compare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per run")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--rounds", type=int, default=2, help="rounds, alternating the servers' order")
    parser.add_argument("--sweep", default="1,10,50,100", help="client counts for binlog vs none")
    parser.add_argument("--sweep-workload", default="trans", choices=WORKLOADS)
    parser.add_argument("--procs", type=int, default=None,
                        help=f"load-generator processes (default: one per usable core, here {default_procs()})")
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="directory for the tables, raw results and charts (default: a new "
                        "dtm-bench-compare-DATE-TIME in the current directory)")
    parser.add_argument("--update-docs", action="store_true",
                        help="also replace the generated section of --docs and copy the charts beside it")
    parser.add_argument("--docs", default="docs/benchmarks.md",
                        help="the Markdown file --update-docs rewrites (default %(default)s)")
    parser.add_argument("--no-redis", action="store_true",
                        help="leave redis-server out, and with it the redis engine")
    parser.add_argument("--targets", default=None, metavar="NAMES",
                        help="comma list of the servers to compare, e.g. 'dtm none,redis engine "
                        "none,redis engine none 2 fronts,redis' (default: all; dtm is the memory "
                        "engine, '2 fronts' two redis-engine fronts over the same 8 shards)")
    return parser


def output_dir(requested: str | None, now: datetime) -> Path:
    """The directory results go to: the one named, or a new one under the current directory
    (never an existing one, so an earlier run's results are not overwritten)."""
    if requested is not None:
        path = Path(requested)
        path.mkdir(parents=True, exist_ok=True)
        return path
    base = Path(f"dtm-bench-compare-{now:%Y%m%d-%H%M%S}")
    path, n = base, 1
    while True:
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            n += 1
            path = Path(f"{base}-{n}")


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    workloads = [w for w in args.workloads.split(",") if w]
    sweep = [int(c) for c in args.sweep.split(",") if c]
    unknown = set(workloads) - set(WORKLOADS)
    if unknown:
        print(f"dtm-bench compare: error: unknown workloads {sorted(unknown)}", file=sys.stderr)
        return 2
    docs = Path(args.docs)
    if args.update_docs and not docs.is_file():
        # found out now, not after minutes of runs
        print(f"dtm-bench compare: error: --update-docs: no file {docs} (run from the repository "
              "root or pass --docs PATH)", file=sys.stderr)
        return 2
    if args.update_docs and not have_matplotlib():
        print("dtm-bench compare: error: --update-docs redraws the charts docs/benchmarks.md shows "
              f"and needs matplotlib: {MATPLOTLIB_HINT}", file=sys.stderr)
        return 2
    now = datetime.now()
    try:
        out = output_dir(args.out, now)
    except OSError as exc:
        print(f"dtm-bench compare: error: cannot create the output directory: {exc}", file=sys.stderr)
        return 2
    print(f"dtm-bench compare: results go to {out}/", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="dtm-compare-") as tmp:
        servers: list[Server] = []
        try:
            targets = select_targets(_targets(Path(tmp), not args.no_redis), args.targets)
            servers = servers_of(targets)
            _start(servers)
            results = _rounds(targets, workloads, args)
            sweep_results = _sweep(targets, sweep, args)
        except BenchError as exc:
            print(f"dtm-bench compare: error: {exc}", file=sys.stderr)
            return 1
        finally:
            _stop(servers)
    table = markdown_table(results)
    cpu_table = markdown_cpu(results)
    if cpu_table:
        table += "\n\nThe servers' CPU in the same runs (from /proc, inside the measured window):\n\n" + cpu_table
    # the sweep compares memory-engine binlog with none: absent when neither was selected
    sweep_table = markdown_sweep(sweep_results, args.sweep_workload) if sweep_results else ""
    print(table)
    if sweep_table:
        print()
        print(sweep_table)
    charts = draw_charts(results, sweep_results, args.sweep_workload, out)
    section = report(table, sweep_table, charts, args, argv, now, generator_notes(results, sweep_results))
    write_results(out, section, results, sweep_results)
    print(f"dtm-bench compare: wrote {out / 'compare.md'}, {out / 'results.json'}"
          + "".join(f", {c}" for c in charts), file=sys.stderr)
    if args.update_docs:
        update_docs(docs, charts, section)
        print(f"dtm-bench compare: updated {docs}", file=sys.stderr)
    errors = sum(r["errors"] for runs in results.values() for r in runs)
    return 1 if errors else 0


def _run_one(target: Target, workload: str, clients: int, args: argparse.Namespace) -> dict[str, Any]:
    plan = Plan(hosts=[("127.0.0.1", port) for port in target.ports], clients=clients,
                seconds=args.seconds, workload=workload, procs=args.procs or default_procs(),
                warmup=args.warmup, settings=Settings(), spread=True)
    print(f"{target.name:32s} {workload:8s} {clients:4d} clients ...", end=" ", file=sys.stderr, flush=True)
    pids = [front.process.pid for front in target.fronts if front.process is not None]
    # sampled well inside the measured window (the run starts 0.3 s after it is called)
    with CpuWindow(pids, delay=0.5 + args.warmup, length=args.seconds - 0.4) as cpu:
        if target.pause_field is None:
            result = run(plan, progress=False)
        else:
            with PausePoller(target.ports, target.pause_field) as poller:
                result = run(plan, progress=False)
            result["checkpoint_pause_max_ms"] = poller.max_ms
            result["checkpoint_pauses_seen"] = poller.seen
    if cpu.busy is not None and cpu.kids_busy is not None:
        rate = max(result["requests_per_sec"], 1.0)
        result["server_cpu"] = {"fronts_busy": round(cpu.busy, 3), "shards_busy": round(cpu.kids_busy, 3),
                                "fronts_us_per_request": round(cpu.busy / rate * 1e6, 1),
                                "shards_us_per_request": round(cpu.kids_busy / rate * 1e6, 1)}
    busy = max(result["generator_cpu_busy"], default=0.0)
    note = "  (generator CPU-bound: a lower bound)" if result["warnings"] else ""
    pause = (f"  checkpoint pause max {result['checkpoint_pause_max_ms']:.1f} ms"
             if "checkpoint_pause_max_ms" in result else "")
    print(f"{result['requests_per_sec']:>12,.0f} req/s  generator CPU {busy:.0%}{pause}{note}",
          file=sys.stderr)
    result["server"] = target.name
    result["fronts"] = len(target.fronts)
    return result


def _rounds(targets: list[Target], workloads: list[str], args: argparse.Namespace) -> dict[tuple[str, str], list[dict[str, Any]]]:
    results: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for round_ in range(args.rounds):
        order = targets if round_ % 2 == 0 else list(reversed(targets))
        for workload in workloads:
            for target in order:
                results.setdefault((workload, target.name), []).append(
                    _run_one(target, workload, args.clients, args))
    return results


Sweep = dict[str, list[tuple[int, dict[str, Any]]]]


def _sweep(targets: list[Target], counts: list[int], args: argparse.Namespace) -> Sweep:
    chosen = [t for t in targets if t.name in ("dtm none", "dtm binlog")] if counts else []
    curves: Sweep = {t.name: [] for t in chosen}
    for clients in counts:
        for target in chosen:
            curves[target.name].append((clients, _run_one(target, args.sweep_workload, clients, args)))
    return curves


def _rates(curves: Sweep) -> dict[str, list[tuple[int, float]]]:
    return {name: [(c, r["requests_per_sec"]) for c, r in points] for name, points in curves.items()}


def generator_notes(results: dict[tuple[str, str], list[dict[str, Any]]], curves: Sweep) -> list[str]:
    """Which runs' figures the generator's own CPU limited."""
    bound = [f"{workload} on {server}" for (workload, server), runs in results.items()
             if any(r["warnings"] for r in runs)]
    bound += [f"sweep {c} clients on {name}" for name, points in curves.items()
              for c, r in points if r["warnings"]]
    if not bound:
        return []
    return [f"Load generator CPU-bound (figures are lower bounds) in: {', '.join(bound)}."]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def markdown_table(results: dict[tuple[str, str], list[dict[str, Any]]]) -> str:
    """One row per workload and server; "per front" is the rate over the fronts the load
    was dealt to, "pause" the longest checkpoint pause reported during the runs."""
    lines = [("| workload | server | requests/s | per front | avg latency ms | p99 ms | max ms | "
              "checkpoint pause max ms | aborts | errors |"),
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for (workload, server), runs in results.items():
        rate = _mean([r["requests_per_sec"] for r in runs])
        fronts = max(r.get("fronts", 1) for r in runs)
        pauses = [r["checkpoint_pause_max_ms"] for r in runs if "checkpoint_pause_max_ms" in r]
        lines.append(
            f"| {workload} | {server} | {rate:,.0f} | {rate / fronts:,.0f} | "
            f"{_mean([r['average_latency_us'] for r in runs]) / 1000:.3f} | "
            f"{max(r['p99_us'] for r in runs) / 1000:.3f} | {max(r['max_latency_us'] for r in runs) / 1000:.3f} | "
            f"{f'{max(pauses):.1f}' if pauses else ''} | "
            f"{sum(r['aborts'] for r in runs)} | {sum(r['errors'] for r in runs)} |"
        )
    return "\n".join(lines)


def markdown_cpu(results: dict[tuple[str, str], list[dict[str, Any]]]) -> str:
    """The servers' CPU per request (processes read from /proc during the measured window:
    the fronts, or redis-server, and the shards the first front spawned) and the cores
    they kept busy."""
    lines = ["| workload | server | CPU µs/request: fronts | shards | cores busy: fronts | shards |",
             "|---|---|---:|---:|---:|---:|"]
    for (workload, server), runs in results.items():
        cpu = [r["server_cpu"] for r in runs if "server_cpu" in r]
        if not cpu:
            continue
        fronts = _mean([c["fronts_us_per_request"] for c in cpu])
        shards = _mean([c["shards_us_per_request"] for c in cpu])
        fronts_busy = _mean([c["fronts_busy"] for c in cpu])
        shards_busy = _mean([c["shards_busy"] for c in cpu])
        # processes without children (memory engine, redis-server) leave the shard cells empty
        lines.append(f"| {workload} | {server} | {fronts:.0f} | {f'{shards:.0f}' if shards else ''} | "
                     f"{fronts_busy:.2f} | {f'{shards_busy:.2f}' if shards else ''} |")
    return "\n".join(lines) if len(lines) > 2 else ""


def markdown_sweep(sweep: Sweep, workload: str) -> str:
    curves = _rates(sweep)
    counts = sorted({c for points in curves.values() for c, _ in points})
    lines = [f"| {workload}: clients | " + " | ".join(str(c) for c in counts) + " |",
             "|---|" + "---:|" * len(counts)]
    for name, points in curves.items():
        by_count = dict(points)
        lines.append(f"| {name} | " + " | ".join(f"{by_count.get(c, 0):,.0f}" for c in counts) + " |")
    return "\n".join(lines)


MATPLOTLIB_HINT = "install it with `.venv/bin/pip install -e '.[bench]'`"


def have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def draw_charts(results: dict[tuple[str, str], list[dict[str, Any]]], sweep: Sweep, workload: str,
                out: Path) -> list[Path]:
    """The PNG charts, or none (said in one line) when matplotlib is not installed."""
    if not have_matplotlib():
        print(f"dtm-bench compare: charts skipped: matplotlib is not installed ({MATPLOTLIB_HINT})",
              file=sys.stderr)
        return []
    charts = [draw_comparison(results, out / "bench-compare.png")]
    if sweep:
        charts.append(draw_sweep(_rates(sweep), workload, out / "bench-sweep.png"))
    return charts


def draw_comparison(results: dict[tuple[str, str], list[dict[str, Any]]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workloads = list(dict.fromkeys(w for w, _ in results))
    servers = list(dict.fromkeys(s for _, s in results))
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(10, 8))
    width = 0.8 / max(1, len(servers))
    for i, server in enumerate(servers):
        xs = [j + i * width for j in range(len(workloads))]
        rates = [_mean([r["requests_per_sec"] for r in results.get((w, server), [])]) for w in workloads]
        p99 = [max([r["p99_us"] for r in results.get((w, server), [])] or [0]) / 1000 for w in workloads]
        top.bar(xs, rates, width, label=server)
        bottom.bar(xs, p99, width, label=server)
    for axis, title in ((top, "throughput (requests/s)"), (bottom, "p99 latency (ms)")):
        axis.set_xticks([j + width * (len(servers) - 1) / 2 for j in range(len(workloads))], workloads)
        axis.set_title(title)
        axis.grid(axis="y", alpha=0.3)
    top.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def draw_sweep(curves: dict[str, list[tuple[int, float]]], workload: str, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 5))
    for name, points in curves.items():
        axis.plot([c for c, _ in points], [r for _, r in points], marker="o", label=name)
    axis.set_xlabel("clients")
    axis.set_ylabel(f"{workload} requests/s")
    axis.set_title("group commit: throughput against concurrency")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _machine() -> str:
    memory = ""
    try:
        with open("/proc/meminfo") as handle:
            kib = int(handle.readline().split()[1])
            memory = f", {kib / 1024 / 1024:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores{memory}, Python {platform.python_version()}"


def report(table: str, sweep_table: str, charts: list[Path], args: argparse.Namespace,
           argv: list[str], now: datetime, notes: list[str]) -> str:
    """The generated Markdown section: machine, date, command line, tables, notes, charts
    (linked by file name: the charts sit beside the file that holds the section)."""
    procs = args.procs or default_procs()
    lines = [
        BEGIN,
        "## dtm-bench compare (generated)",
        "",
        f"Machine: {_machine()}. Date: {now.date().isoformat()}. "
        f"Command: `dtm-bench compare {' '.join(argv)}` ({args.clients} clients, "
        f"{args.seconds:g} s per run, {args.rounds} rounds, averaged; load generator: up to "
        f"{procs} processes).",
        "",
        table,
        "",
    ]
    if sweep_table:
        lines += [sweep_table, ""]
    if notes:
        lines += [*notes, ""]
    lines += [f"![{c.stem}]({c.name})" for c in charts]
    lines.append(END)
    return "\n".join(lines)


def write_results(out: Path, section: str, results: dict[tuple[str, str], list[dict[str, Any]]],
                  sweep: Sweep) -> None:
    (out / "compare.md").write_text(section + "\n")
    raw = {"runs": [r for runs in results.values() for r in runs],
           "sweep": [r for points in sweep.values() for _, r in points]}
    (out / "results.json").write_text(json.dumps(raw, indent=1) + "\n")


def update_docs(docs: Path, charts: list[Path], section: str) -> None:
    """Replace the generated section of docs (or append it) and copy the charts beside it."""
    for chart in charts:
        target = docs.parent / chart.name
        if chart.resolve() != target.resolve():
            shutil.copyfile(chart, target)
    text = docs.read_text()
    if BEGIN in text and END in text:
        before, rest = text.split(BEGIN, 1)
        text = before + section + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    docs.write_text(text)
