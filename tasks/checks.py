"""Vectorised checks: test a whole column at once, then name the first offending row."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tasks.errors import DataError


def fail_first(
    bad: np.ndarray,
    path: str | Path,
    field: str,
    describe: Callable[[int], str],
    *,
    row_of: Callable[[int], int] | None = None,
) -> None:
    """Raise DataError for the first True of `bad`; `describe(i)` says what is wrong with element i.

    `row_of(i)` gives the row reported for element i (default: i itself), for checks that run on
    flattened list values or on a reordered column; it is only called on failure.
    """
    if not bad.any():
        return
    i = int(np.argmax(bad))
    row = int(row_of(i)) if row_of is not None else i
    raise DataError(path, describe(i), row=row, field=field)


def check_range(
    values: np.ndarray,
    low: int,
    high: int,
    path: str | Path,
    field: str,
    why: str,
    *,
    row_of: Callable[[int], int] | None = None,
) -> None:
    """Every value must lie in low..high (inclusive); `why` explains the bounds, e.g. "num_classes = 7"."""
    if len(values) == 0:
        return
    fail_first(
        (values < low) | (values > high),
        path,
        field,
        lambda i: f"{values[i]} is outside {low}..{high} ({why})",
        row_of=row_of,
    )


def list_row(offsets: np.ndarray) -> Callable[[int], int]:
    """Maps a position in a flattened list column (with these offsets) to its row."""
    return lambda flat_index: int(np.searchsorted(offsets, flat_index, side="right") - 1)


def check_unique(path: str | Path, values: pa.Array, field: str, what: str) -> None:
    """Each value of `values` may occur once; names the row of the first repeat."""
    first = pc.index_in(values, value_set=values).to_numpy()
    repeats = first != np.arange(len(values))
    fail_first(repeats, path, field, lambda i: f"duplicate {what} {values[i].as_py()!r} (first at row {first[i]})")
