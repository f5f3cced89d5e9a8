"""``none``: nothing is written on its own; SAVE/BGSAVE write a snapshot, and at
start-up whatever the directory holds (a snapshot, logs another mode wrote) is loaded
(Redis does the same with ``save ""``). A failed save is reported, writes go on."""

from __future__ import annotations

from modes.base import SnapshottingMode


class NoneMode(SnapshottingMode):
    name = "none"
    waits_for_commit = False
    creates_dir = False
