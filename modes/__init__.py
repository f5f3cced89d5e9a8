"""Durability modes: how committed changes reach the disk. One module per mode; the
server picks one by name with ``create_mode``."""

from __future__ import annotations

from typing import Any

from dtm.durability import CommitRecord, DurabilityMode
from modes.base import SnapshottingMode
from modes.binlog import BinlogMode
from modes.checkpoint import CheckpointMode
from modes.none import NoneMode


def create_mode(config: Any, ops: Any = None) -> DurabilityMode:
    """The mode config.mode names, set up from the config's other settings."""
    if config.mode == "none":
        return NoneMode(config.dir, ops)
    if config.mode == "binlog":
        return BinlogMode(config.dir, fsync=config.fsync, max_bytes=config.binlog_max_mb << 20, ops=ops)
    if config.mode == "checkpoint":
        return CheckpointMode(config.dir, config.checkpoint_interval, ops)
    raise ValueError(f"unknown mode {config.mode!r}")


__all__ = ["BinlogMode", "CheckpointMode", "CommitRecord", "DurabilityMode", "NoneMode",
           "SnapshottingMode", "create_mode"]
