"""The descriptor budget: maxclients fitted to RLIMIT_NOFILE, as Redis's
adjustOpenFilesLimit does, so that clients can never take the descriptors that data
files, the log and snapshots need."""

from __future__ import annotations

import resource

import attrs

# Redis's CONFIG_MIN_RESERVED_FDS: listeners, the log, snapshot files, Trio's own.
RESERVED_FDS = 32


@attrs.frozen
class Fit:
    maxclients: int  # what fits (the request itself when it does)
    limit: int  # RLIMIT_NOFILE's soft value now
    raised_from: int | None = None  # the old soft limit, when it had to be raised
    error: str | None = None  # why it could not be raised far enough


def fit_maxclients(requested: int) -> Fit:
    """Raise the soft descriptor limit to requested + RESERVED_FDS if it is lower (up to
    the hard limit, or past it with the privilege to), and return the maxclients that
    fits what the limit became."""
    wanted = requested + RESERVED_FDS
    old, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if old == resource.RLIM_INFINITY or old >= wanted:
        return Fit(requested, old)
    if hard == resource.RLIM_INFINITY or hard >= wanted:
        attempts = [(wanted, hard)]
    else:  # with CAP_SYS_RESOURCE the hard limit may rise too; else take all there is
        attempts = [(wanted, wanted), (hard, hard)]
    error = "the hard limit is lower"
    soft = old
    for new_soft, new_hard in attempts:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new_soft, new_hard))
        except (OSError, ValueError) as exc:
            error = str(exc)
            continue
        soft = new_soft
        break
    if soft >= wanted:
        return Fit(requested, soft, raised_from=old)
    return Fit(max(soft - RESERVED_FDS, 1), soft, raised_from=old if soft > old else None, error=error)
