"""The one exception every data problem raises, with the place it was found."""

from __future__ import annotations

from pathlib import Path


class DataError(Exception):
    """A problem in a data file, reported where a user can find and fix it.

    `path` is the file, `row` the position in it (0-based row of a Parquet table, index of a
    `[[task]]` entry of a spec, 1-based line of a text file), `field` the column or key. `where`
    is how the position reads in the message ("row 17", "task[2] 'age'", "line 5"); it defaults
    to "row {row}". str() is the message shown to users, e.g.
    `data/x/tasks/age.parquet: row 17, field 'label': 9 is outside 0..6 (num_classes = 7)`.
    """

    def __init__(
        self,
        path: str | Path,
        problem: str,
        *,
        row: int | None = None,
        field: str | None = None,
        where: str | None = None,
    ):
        self.path = Path(path) if path is not None else None
        self.row = row
        self.field = field
        self.problem = problem
        if where is None and row is not None:
            where = f"row {row}"
        self.where = where
        parts = [p for p in (where, f"field '{field}'" if field else None) if p]
        location = ", ".join(parts)
        super().__init__(f"{path}: {location + ': ' if location else ''}{problem}")


class OutputExistsError(DataError):
    """The output directory exists and is not empty, and the caller did not ask to replace it."""

    def __init__(self, path: str | Path, state: str = "exists and is not empty"):
        super().__init__(path, f"{state}; use --force to replace it")
