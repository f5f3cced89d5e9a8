"""The ``dtm`` command line: ``dtm serve`` and ``dtm --version``."""

from __future__ import annotations

import argparse
import signal
import sys
from typing import Any

import structlog
import trio

from dtm import __version__
from dtm.buckets.start import EngineError
from dtm.config import (
    ENGINES,
    FIELDS,
    LOG_FORMATS,
    LOG_LEVELS,
    MODES,
    Config,
    build,
    coerce,
    load_toml,
)
from dtm.errors import ConfigError
from dtm.log import configure
from modes.datadir import DataDirError

log = structlog.get_logger("dtm.cli")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dtm", description="A Redis-compatible server with ACID transactions across buckets."
    )
    parser.add_argument("--version", action="version", version=f"dtm {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = commands.add_parser("serve", help="run the server")
    serve.add_argument("--config", metavar="FILE", help="TOML file with settings (flags win)")
    serve.add_argument("--port", type=int, help="TCP port (default 6378; 0 picks a free one)")
    serve.add_argument("--bind", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--buckets", type=int, help="number of buckets (default 8)")
    serve.add_argument("--dir", help="data directory (default ./dtm-data)")
    serve.add_argument("--engine", choices=ENGINES, help="bucket storage: memory (default) or redis (a redis-server per bucket)")
    serve.add_argument("--shards", help="redis engine: existing redis-servers HOST:PORT,… (one per bucket) instead of spawning them under --dir")
    serve.add_argument("--lease-ms", dest="lease_ms", type=int, help="redis engine: how long a transaction's locks outlive a front that died (default 5000)")
    serve.add_argument("--mode", choices=MODES, help="durability mode (default none)")
    serve.add_argument("--fsync", choices=("always", "everysec"), help="binlog: sync before every reply (always, default) or once a second")
    serve.add_argument("--binlog-max-mb", dest="binlog_max_mb", type=int, help="binlog: compact past this size (default 64)")
    serve.add_argument("--checkpoint-interval", dest="checkpoint_interval", type=float, help="checkpoint: seconds between checkpoints (default 60)")
    serve.add_argument("--maxclients", type=int, help="maximum connections (default 10000)")
    serve.add_argument("--requirepass", help="password clients must AUTH with")
    serve.add_argument("--timeout", type=int, help="close clients idle this many seconds (0: never)")
    serve.add_argument("--tcp-keepalive", dest="tcp_keepalive", type=int, help="seconds of silence before TCP keepalive probes (default 300; 0: off)")
    serve.add_argument("--databases", type=int, help="number of logical databases (default 16)")
    serve.add_argument("--proto-max-bulk-len", dest="proto_max_bulk_len", help="largest bulk string")
    serve.add_argument("--log-level", dest="log_level", choices=LOG_LEVELS)
    serve.add_argument("--log-format", dest="log_format", choices=LOG_FORMATS)
    check = commands.add_parser("check", help="verify a data directory (like redis-check-aof)")
    check.add_argument("dir", help="the data directory")
    check.add_argument("--repair", action="store_true", help="cut a damaged log at its last good record")
    return parser


def run_check(directory: str, repair: bool) -> int:
    from modes.check import check

    report = check(directory, repair)
    for line in report.lines:
        print(line)
    if report.problems and report.repaired:
        print(f"{report.problems} problem(s); repaired")
        return 0
    if report.problems:
        print(f"{report.problems} problem(s) found" + ("" if repair else "; --repair cuts a damaged log"))
        return 1
    print("data directory is healthy")
    return 0


def load_config(args: argparse.Namespace) -> Config:
    file_settings = load_toml(args.config) if args.config else {}
    flags: dict[str, Any] = {}
    for name in FIELDS:
        value = getattr(args, name, None)
        if value is not None:
            flags[name] = coerce(name, value)
    return build(file_settings, flags)


async def _watch_signals(server: Any) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            name = signal.Signals(signum).name
            log.info("signal received, shutting down", signal=name)
            refused = await server.request_shutdown()
            # Only a refused shutdown returns (its save failed): keep serving, as Redis.
            log.error(f"{name} received but errors trying to shut down the server, check the "
                      "logs for more information", error=refused)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "check":
        return run_check(args.dir, args.repair)
    if args.command != "serve":
        parser.print_help()
        return 2
    try:
        config = load_config(args)
    except ConfigError as exc:
        print(f"dtm: error: {exc}", file=sys.stderr)
        return 2
    configure(config.log_level, config.log_format)
    try:
        trio.run(_serve_until_stopped, config)
    except (DataDirError, EngineError, OSError, BaseExceptionGroup) as exc:
        message = startup_error(exc, config)
        if message is None:
            raise
        print(f"dtm: error: {message}", file=sys.stderr)
        return 1
    return 0


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def startup_error(exc: BaseException, config: Config) -> str | None:
    """One line for an error that stops the start-up (trio wraps what a nursery's
    body raises in an ExceptionGroup); None for anything else (a bug: traceback)."""
    for leaf in _leaves(exc):
        if isinstance(leaf, (DataDirError, EngineError)):
            return str(leaf)
        if isinstance(leaf, OSError):
            reason = leaf.strerror or str(leaf)
            if leaf.filename is not None:  # a data-directory file
                return f"{leaf.filename}: {reason}"
            return f"cannot listen on {config.bind}:{config.port}: {reason}"
    return None


async def _serve_until_stopped(config: Config) -> None:
    from dtm.server import Server

    server = Server(config)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_watch_signals, server)
        await server.serve()
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    sys.exit(main())
