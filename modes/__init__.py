"""Durability modes: how committed changes reach the disk. One module per mode; the
server picks one by name with ``create_mode``."""

from __future__ import annotations

from modes.base import CommitRecord, DurabilityMode
from modes.none import NoneMode

MODES: dict[str, type] = {"none": NoneMode}


def create_mode(name: str) -> DurabilityMode:
    try:
        factory = MODES[name]
    except KeyError:
        raise ValueError(f"unknown mode {name!r} (choose from {', '.join(sorted(MODES))})") from None
    mode: DurabilityMode = factory()
    return mode


__all__ = ["MODES", "CommitRecord", "DurabilityMode", "NoneMode", "create_mode"]
