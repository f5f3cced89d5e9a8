"""LCS: the longest common subsequence of two strings, as Redis 7's lcsCommand answers.

Redis fills an (n+1)*(m+1) table of lengths in C and backtracks from its far corner: on
equal bytes it takes the byte, otherwise it steps up (i-1) when LCS(i-1,j) > LCS(i,j-1)
and left (j-1) on a tie. Among several subsequences of the longest length this picks one
particular one, and IDX reports its runs in that backtracking order, so reproducing
Redis means reproducing that walk.

A cell-by-cell table in Python costs about a hundred times what it costs in C, and the
size is the client's choice. The table is therefore computed a row at a time as bit
vectors over the longer string (Allison-Dix / Crochemore et al.: one big-integer add and
three masks per byte of the shorter string), which keeps exactly the information the
walk needs: bit j-1 of row i is clear exactly where LCS(i,j) = LCS(i,j-1) + 1. The walk
then crosses whole stretches of cells with one search each (``rfind`` for the next equal
byte, the highest bit for the next rise), so it costs O(min(n, m)) Python steps. The
whole command costs a fraction of Redis's, so, like Redis, it runs without yielding.

This module is sans-I/O apart from the handler at the bottom.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dtm.commands.args import integer
from dtm.commands.table import command
from dtm.errors import SYNTAX, err

if TYPE_CHECKING:
    from dtm.commands.context import DataContext

Text = bytes | bytearray
# One run of equal bytes on the walk: a[a_start..a_end] == b[b_start..b_end].
Run = tuple[int, int, int, int]

_UINT32_MAX = 2**32 - 1
_ZEROS = b"0" * 256


def _masks(text: Text, alphabet: set[int]) -> dict[int, int]:
    """For each byte value: the integer whose bit k is set where text[k] is that byte."""
    backwards = bytes(text[::-1])  # int(..., 2) reads the most significant digit first
    return {
        byte: int(backwards.translate(_ZEROS[:byte] + b"1" + _ZEROS[byte + 1 :]), 2)
        for byte in alphabet
    }


def _rows(short: Text, long: Text, keep: bool) -> tuple[int, list[int]]:
    """The LCS length, and (when keep) the row after each byte of short: Crochemore
    et al.'s bit vector, where bit k is clear exactly where the row's LCS grows by one
    at column k+1 (bits above len(long) are noise)."""
    full = (1 << len(long)) - 1
    masks = _masks(long, set(short))
    others = {byte: full ^ mask for byte, mask in masks.items()}
    rows: list[int] = []
    row = full
    for byte in short:
        match = row & masks[byte]
        # The carry out of the top bit lands above it and only ever counts carries:
        # a few bits, masked off wherever rows are read.
        row = (row + match) | (row & others[byte])
        if keep:
            rows.append(row)
    return len(long) - (row & full).bit_count(), rows


def _run_from(a: Text, b: Text, i: int, j: int) -> tuple[int, int]:
    """Follow equal bytes diagonally from cell (i, j) towards the origin."""
    while i > 0 and j > 0 and a[i - 1] == b[j - 1]:
        i -= 1
        j -= 1
    return i, j


def _walk_rows(a: Text, b: Text, rows: list[int]) -> list[Run]:
    """Redis's walk when a is the shorter string: rows[i-1] is row i, over b."""
    runs: list[Run] = []
    i, j = len(a), len(b)
    rises, rises_row = 0, 0  # row i's rises as set bits, computed once per row visited
    while i > 0 and j > 0:
        byte = a[i - 1]
        if b[j - 1] == byte:
            start_i, start_j = _run_from(a, b, i, j)
            runs.append((start_i, i - 1, start_j, j - 1))
            i, j = start_i, start_j
            continue
        # Along row i, cells without a rise step left; the first equal byte or rise ends
        # the stretch (equal bytes are checked first, so they win a tie).
        if rises_row != i:
            rises, rises_row = ~rows[i - 1], i
        rise = (rises & ((1 << j) - 1)).bit_length()
        equal = b.rfind(byte, 0, j) + 1
        if equal >= rise:
            j = equal  # 0 when neither: the walk ends
        else:
            j = rise
            i -= 1  # LCS(i-1,j) > LCS(i,j-1): up
    return runs


def _walk_columns(a: Text, b: Text, columns: list[int], length: int) -> list[Run]:
    """Redis's walk when b is the shorter string: columns[j-1] is column j, over a,
    with bit i-1 clear where LCS(i,j) = LCS(i-1,j) + 1."""
    runs: list[Run] = []
    i, j = len(a), len(b)
    here = length  # LCS(i, j): the walk only leaves a cell for one of equal value
    while i > 0 and j > 0:
        byte = b[j - 1]
        if a[i - 1] == byte:
            start_i, start_j = _run_from(a, b, i, j)
            runs.append((start_i, i - 1, start_j, j - 1))
            here -= i - start_i
            i, j = start_i, start_j
            continue
        left = i - (columns[j - 2] & ((1 << i) - 1)).bit_count() if j > 1 else 0
        if left < here:
            # Up this column every cell keeps LCS = here while the one to its left has
            # less, so the walk climbs to the next equal byte (or off the table).
            i = a.rfind(byte, 0, i) + 1
        else:
            j -= 1
    return runs


def lcs(a: Text, b: Text, *, want_runs: bool) -> tuple[int, list[Run]]:
    """The LCS length and, when asked, the runs of Redis's walk (last run first)."""
    if not a or not b:
        return 0, []
    if len(a) <= len(b):
        length, rows = _rows(a, b, want_runs)
        return length, _walk_rows(a, b, rows) if want_runs else []
    length, columns = _rows(b, a, want_runs)
    return length, _walk_columns(a, b, columns, length) if want_runs else []


def subsequence(a: Text, runs: list[Run]) -> bytes:
    return b"".join(bytes(a[start : end + 1]) for start, end, _, _ in reversed(runs))


@command("lcs", -3, "readonly", keys=(1, 2, 1), group="string", summary="Find longest common substring", since="7.0.0")
def lcs_command(s: DataContext, argv: list[bytes]) -> Any:
    get = s.db.get
    a = get(argv[1]) or b""
    b = get(argv[2]) or b""
    want_len = want_idx = with_match_len = False
    min_match_len = 0
    i = 3
    while i < len(argv):
        option = argv[i].lower()
        if option == b"idx":
            want_idx = True
        elif option == b"len":
            want_len = True
        elif option == b"withmatchlen":
            with_match_len = True
        elif option == b"minmatchlen" and i + 1 < len(argv):
            min_match_len = max(integer(argv[i + 1]), 0)
            i += 1
        else:
            raise SYNTAX
        i += 1
    if want_len and want_idx:
        raise err("If you want both the length and indexes, please just use IDX.")
    if len(a) >= _UINT32_MAX - 1 or len(b) >= _UINT32_MAX - 1:
        raise err("String too long for LCS")
    # Redis refuses a table of uint32 lengths larger than proto-max-bulk-len.
    if (len(a) + 1) * (len(b) + 1) * 4 > s.config.proto_max_bulk_len:
        raise err("Insufficient memory, transient memory for LCS exceeds proto-max-bulk-len")
    length, runs = lcs(a, b, want_runs=not want_len)
    if want_len:
        return length
    if not want_idx:
        return subsequence(a, runs)
    matches = []
    for a_start, a_end, b_start, b_end in runs:
        size = a_end - a_start + 1
        if min_match_len == 0 or size >= min_match_len:
            match: list[Any] = [[a_start, a_end], [b_start, b_end]]
            if with_match_len:
                match.append(size)
            matches.append(match)
    return {b"matches": matches, b"len": length}
