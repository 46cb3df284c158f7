"""Reading the text files importers start from, with errors that name the file, line and field."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from tasks.errors import DataError


def line_error(path: Path, line: int, field: str | None, problem: str) -> DataError:
    """A DataError at a 1-based line of a text file."""
    return DataError(path, problem, row=line, field=field, where=f"line {line}")


def read_text(path: str | Path, encoding: str = "utf-8") -> str:
    """The whole file as text (DataError when missing or undecodable)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file not found")
    try:
        return path.read_text(encoding=encoding)
    except UnicodeDecodeError as error:
        raise DataError(path, f"not {encoding} text ({error})") from None


def numbered_lines(path: str | Path, encoding: str = "utf-8") -> Iterator[tuple[int, str]]:
    """(1-based line number, text without line ending) of every non-blank line."""
    for number, text in enumerate(read_text(path, encoding).splitlines(), start=1):
        if text.strip():
            yield number, text.rstrip("\r")


def fields_of(path: Path, line: int, text: str, separator: str, names: Sequence[str]) -> list[str]:
    """Split a line into exactly len(names) fields."""
    parts = text.split(separator)
    if len(parts) != len(names):
        raise line_error(
            path, line, None,
            f"{len(parts)} fields, expected {len(names)} ({separator.join(names)}) separated by {separator!r}",
        )
    return parts


def to_int(path: Path, line: int, field: str, token: str, minimum: int | None = 0) -> int:
    """An integer field, at least `minimum`."""
    try:
        value = int(token.strip())
    except ValueError:
        raise line_error(path, line, field, f"{token!r} is not an integer") from None
    if minimum is not None and value < minimum:
        raise line_error(path, line, field, f"{value} is below {minimum}")
    return value


def int_table(
    path: str | Path, separator: str, names: Sequence[str], encoding: str = "utf-8"
) -> tuple[np.ndarray, np.ndarray]:
    """A file of integer-only lines: (values int64 (n, len(names)), 1-based line numbers (n,)).

    Parsed in one vectorised pass; only when that fails is the file scanned line by line to
    name the first bad line and field.
    """
    path = Path(path)
    text = read_text(path, encoding)
    lines = text.splitlines()
    kept = [i for i, line in enumerate(lines) if line.strip()]
    numbers = np.asarray(kept, dtype=np.int64) + 1
    separators = len(names) - 1
    tokens = "\n".join(lines[i] for i in kept).replace(separator, " ").split()
    if len(tokens) == len(kept) * len(names) and all(lines[i].count(separator) == separators for i in kept):
        try:
            return np.array(tokens, dtype=np.int64).reshape(len(kept), len(names)), numbers
        except (ValueError, OverflowError):
            pass
    for index in kept:  # slow path: find what is wrong, and where
        parts = fields_of(path, index + 1, lines[index], separator, names)
        for name, token in zip(names, parts):
            to_int(path, index + 1, name, token, minimum=None)
    raise line_error(path, 1, None, "could not parse the file as integers")  # not reached in practice
