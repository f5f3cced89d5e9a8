"""``none``: nothing is written on its own; SAVE/BGSAVE write a snapshot, and a snapshot
found at start-up is loaded (Redis does the same with ``save ""``)."""

from __future__ import annotations

from modes.base import SnapshottingMode


class NoneMode(SnapshottingMode):
    name = "none"
    waits_for_commit = False
