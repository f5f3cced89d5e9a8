"""``dtm-bench``: the load generator, and ``dtm-bench compare``.

    dtm-bench HOST:PORT[,HOST:PORT…] CLIENTS SECONDS WORKLOAD [--spread] [options]
    dtm-bench compare [options]
"""

from __future__ import annotations

import argparse
import json
import sys

from bench.runner import BenchError, Plan, default_procs, parse_hosts, run
from bench.saturation import BUSY_THRESHOLD
from bench.workloads import WORKLOADS, Settings


def _bench_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dtm-bench",
        description="Load generator for dtm and Redis: throughput, latency percentiles, "
        "aborts, errors. `dtm-bench compare --help` for the side-by-side comparison.",
    )
    parser.add_argument("hosts", help="HOST:PORT[,HOST:PORT...]: CLIENTS connections to each "
                        "(with --spread: CLIENTS in all, dealt round-robin)")
    parser.add_argument("clients", type=int, help="connections per host (with --spread: in all)")
    parser.add_argument("seconds", type=float, help="measured duration")
    parser.add_argument("workload", choices=WORKLOADS)
    parser.add_argument("--spread", action="store_true",
                        help="the hosts are fronts of one server: deal the CLIENTS connections "
                        "over them round-robin instead of opening CLIENTS to each")
    parser.add_argument("--pipeline", type=int, default=1, help="requests in flight per connection (get_set)")
    parser.add_argument("--keys", type=int, default=9999, help="key space size")
    parser.add_argument("--value-size", type=int, default=3, help="bytes per value")
    parser.add_argument("--procs", type=int, default=None,
                        help=f"processes to spread the clients over (default: one per usable core, "
                        f"here {default_procs()})")
    parser.add_argument("--warmup", type=float, default=0.0, help="seconds of load before measuring")
    parser.add_argument("--cpu-warn", type=float, default=BUSY_THRESHOLD, metavar="FRACTION",
                        help="warn when a generator process was busy more than this fraction of "
                        "the run (default %(default)s): its figure is then a lower bound")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress line")
    return parser


def format_text(result: dict[str, object]) -> str:
    ms = lambda us: f"{int(us) / 1000:.3f} ms"  # noqa: E731
    per_host: dict[str, int] = result["connections_per_host"]  # type: ignore[assignment]
    clients = (f"{sum(per_host.values())} in all, spread" if result["spread"]
               else f"{result['clients_per_host']} per host")
    lines = [
        f"workload:          {result['workload']}  hosts: {', '.join(result['hosts'])}  "  # type: ignore[arg-type]
        f"clients: {clients}  pipeline: {result['pipeline']}  processes: {result['procs']}",
        f"total requests:    {result['total_requests']}",
        f"total latency:     {int(result['total_latency_us']) / 1e6:.3f} s",  # type: ignore[call-overload]
        f"average latency:   {float(result['average_latency_us']) / 1000:.3f} ms",  # type: ignore[arg-type]
        f"max latency:       {ms(result['max_latency_us'])}",
        f"elapsed:           {result['elapsed_s']} s",
        f"requests/sec:      {result['requests_per_sec']}",
        f"p50 / p90 / p99 / p99.9: {ms(result['p50_us'])} / {ms(result['p90_us'])} / "
        f"{ms(result['p99_us'])} / {ms(result['p999_us'])}",
        f"aborts:            {result['aborts']}",
        f"errors:            {result['errors']}",
        "generator CPU:     " + ", ".join(f"{b:.0%}" for b in result["generator_cpu_busy"])  # type: ignore[attr-defined]
        + " busy per process",
    ]
    if len(per_host) > 1:
        rates: dict[str, float] = result["requests_per_sec_per_host"]  # type: ignore[assignment]
        lines.append("requests/sec per host: " + ", ".join(
            f"{host} {rates[host]} ({n} clients)" for host, n in per_host.items()))
    for sample in result["error_samples"]:  # type: ignore[attr-defined]
        lines.append(f"  error: {sample}")
    if "bank_total_ok" in result:
        lines.append(f"bank total:        {'ok' if result['bank_total_ok'] else 'MISMATCH'} "
                     f"(expected {result['bank_total_expected']}, found {result['bank_total_found']})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["compare"]:
        from bench.compare import main as compare_main

        return compare_main(argv[1:])
    args = _bench_parser().parse_args(argv)
    try:
        plan = Plan(
            hosts=parse_hosts(args.hosts), clients=args.clients, seconds=args.seconds,
            workload=args.workload, procs=args.procs or default_procs(), warmup=args.warmup,
            busy_threshold=args.cpu_warn, spread=args.spread,
            settings=Settings(pipeline=max(1, args.pipeline), keys=max(1, args.keys),
                              value_size=max(1, args.value_size)),
        )
        if args.clients < 1 or args.seconds <= 0:
            raise BenchError("CLIENTS must be at least 1 and SECONDS above 0")
        result = run(plan, progress=not args.quiet and not args.json)
    except BenchError as exc:
        print(f"dtm-bench: error: {exc}", file=sys.stderr)
        return 1
    for warning in result["warnings"]:
        print(f"dtm-bench: warning: {warning}", file=sys.stderr)
    print(json.dumps(result, indent=2) if args.json else format_text(result))
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
