"""The server's settings: one attrs object, filled from defaults, a TOML file and flags.

Every setting has a Redis-style name for CONFIG GET/SET (``proto-max-bulk-len``) and a
flag/TOML name (``proto_max_bulk_len`` / ``--proto-max-bulk-len``). Values are checked
when set, from whichever source, and a bad one raises ``ConfigError`` with a message
naming the setting.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import attrs

from dtm.errors import ConfigError
from dtm.fdlimit import fit_maxclients

MODES = ("none", "binlog", "checkpoint")
ENGINES = ("memory", "redis")
FSYNC_POLICIES = ("always", "everysec")
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("console", "json")


def _positive(name: str, low: int = 1, high: int = 2**63 - 1) -> Any:
    def check(instance: Any, attribute: Any, value: int) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise ConfigError(f"{name} must be an integer between {low} and {high}, got {value!r}")

    return check


def _choice(name: str, choices: tuple[str, ...]) -> Any:
    def check(instance: Any, attribute: Any, value: str) -> None:
        if value not in choices:
            raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")

    return check


def _seconds(name: str) -> Any:
    def check(instance: Any, attribute: Any, value: float) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.01 <= value <= 86400 * 365:
            raise ConfigError(f"{name} must be a number of seconds between 0.01 and 31536000, got {value!r}")

    return check


def _string(name: str) -> Any:
    def check(instance: Any, attribute: Any, value: Any) -> None:
        if not isinstance(value, str):
            raise ConfigError(f"{name} must be a string, got {value!r}")

    return check


@attrs.define
class Config:
    port: int = attrs.field(default=6378, validator=_positive("port", 0, 65535))
    bind: str = attrs.field(default="127.0.0.1", validator=_string("bind"))
    buckets: int = attrs.field(default=8, validator=_positive("buckets", 1, 16384))
    # memory: buckets in this process; redis: a redis-server per bucket (spawned under
    # dir, or the servers listed in shards), shared by every front given the same list.
    engine: str = attrs.field(default="memory", validator=_choice("engine", ENGINES))
    shards: str = attrs.field(default="", validator=_string("shards"))
    lease_ms: int = attrs.field(default=5000, validator=_positive("lease-ms", 10, 3_600_000))
    dir: str = attrs.field(default="./dtm-data", validator=_string("dir"))
    mode: str = attrs.field(default="none", validator=_choice("mode", MODES))
    fsync: str = attrs.field(default="always", validator=_choice("fsync", FSYNC_POLICIES))
    binlog_max_mb: int = attrs.field(default=64, validator=_positive("binlog-max-mb", 1, 1 << 20))
    checkpoint_interval: float = attrs.field(default=60.0, validator=_seconds("checkpoint-interval"))
    maxclients: int = attrs.field(default=10000, validator=_positive("maxclients"))
    requirepass: str = attrs.field(default="", validator=_string("requirepass"))
    log_level: str = attrs.field(default="info", validator=_choice("log-level", LOG_LEVELS))
    log_format: str = attrs.field(default="console", validator=_choice("log-format", LOG_FORMATS))
    timeout: int = attrs.field(default=0, validator=_positive("timeout", 0))
    tcp_keepalive: int = attrs.field(default=300, validator=_positive("tcp-keepalive", 0, 2**31 - 1))
    databases: int = attrs.field(default=16, validator=_positive("databases", 1, 1024))
    proto_max_bulk_len: int = attrs.field(
        default=512 * 1024 * 1024, validator=_positive("proto-max-bulk-len", 1024)
    )
    client_query_buffer_limit: int = attrs.field(
        default=1024 * 1024 * 1024, validator=_positive("client-query-buffer-limit", 1024 * 1024)
    )
    # Observability (Redis's names and defaults): µs, entries, ms (0: latency monitor off).
    slowlog_log_slower_than: int = attrs.field(
        default=10000, validator=_positive("slowlog-log-slower-than", -1)
    )
    slowlog_max_len: int = attrs.field(default=128, validator=_positive("slowlog-max-len", 0))
    latency_monitor_threshold: int = attrs.field(
        default=0, validator=_positive("latency-monitor-threshold", 0)
    )

    def __attrs_post_init__(self) -> None:
        attrs.validate(self)


# Settings that CONFIG SET may change while the server runs.
MUTABLE = frozenset({"maxclients", "requirepass", "timeout", "tcp_keepalive", "proto_max_bulk_len",
                     "client_query_buffer_limit", "log_level",
                     "slowlog_log_slower_than", "slowlog_max_len", "latency_monitor_threshold"})
FIELDS = {field.name: field for field in attrs.fields(Config)}


def redis_name(field: str) -> str:
    return {"log_level": "loglevel"}.get(field, field.replace("_", "-"))


REDIS_NAMES = {redis_name(name): name for name in FIELDS}


def coerce(field: str, raw: Any) -> Any:
    """A value from a flag, TOML or CONFIG SET as the field's type."""
    if field not in FIELDS:
        raise ConfigError(f"unknown setting {field!r}")
    kind = FIELDS[field].type
    if kind == "float":
        if isinstance(raw, bool):
            raise ConfigError(f"{redis_name(field)} must be a number, got {raw!r}")
        try:
            return float(raw)
        except (TypeError, ValueError):
            raise ConfigError(f"{redis_name(field)} must be a number, got {raw!r}") from None
    if kind == "int":
        if isinstance(raw, bool):
            raise ConfigError(f"{redis_name(field)} must be an integer, got {raw!r}")
        if isinstance(raw, int):
            return raw
        try:
            return _parse_memory(str(raw))
        except ValueError:
            raise ConfigError(f"{redis_name(field)} must be an integer, got {raw!r}") from None
    if not isinstance(raw, str):
        raise ConfigError(f"{redis_name(field)} must be a string, got {raw!r}")
    return raw


def _parse_memory(text: str) -> int:
    """Integers, with Redis's memory units (1k, 5mb, 1gb) accepted."""
    lowered = text.strip().lower()
    if len(lowered) > 22:  # int64 and a unit; keeps int() clear of its digit limit
        raise ValueError(text)
    for suffix, factor in (("gb", 1024**3), ("mb", 1024**2), ("kb", 1024), ("g", 10**9),
                           ("m", 10**6), ("k", 1000), ("b", 1)):
        if lowered.endswith(suffix) and lowered[: -len(suffix)].isdigit():
            return int(lowered[: -len(suffix)]) * factor
    if lowered.lstrip("-").isdigit():
        return int(lowered)
    raise ValueError(text)


def load_toml(path: str | Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    settings = {}
    for key, value in data.items():
        field = key.replace("-", "_")
        if field not in FIELDS:
            raise ConfigError(f"config file {path}: unknown setting {key!r}")
        settings[field] = coerce(field, value)
    return settings


def build(file_settings: dict[str, Any], flag_settings: dict[str, Any]) -> Config:
    """Defaults, then the file, then flags: flags win."""
    merged = {**file_settings, **{k: v for k, v in flag_settings.items() if v is not None}}
    return Config(**merged)


def set_value(config: Config, field: str, raw: Any) -> None:
    value = coerce(field, raw)
    if field == "maxclients" and isinstance(value, int) and value > config.maxclients:
        fitted = fit_maxclients(value).maxclients  # as Redis: raise the limit, or refuse
        if fitted < value:
            raise ConfigError(
                f"The operating system is not able to handle the specified number of clients, try with {fitted}"
            )
    old = getattr(config, field)
    setattr(config, field, value)
    try:
        attrs.validate(config)
    except ConfigError:
        setattr(config, field, old)
        raise
