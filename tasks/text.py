"""Reading a user's text files: the kind of path checked, a UTF-8 byte-order mark dropped, and errors that
name the file, the line and the field (bad bytes included).

Spreadsheet programs often start a saved CSV with the mark; every text reader goes through read_text.
"""

from __future__ import annotations

import codecs
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from tasks.errors import DataError
from tasks.paths import require_file

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def line_error(path: Path, line: int, field: str | None, problem: str) -> DataError:
    """A DataError at a 1-based line of a text file."""
    return DataError(path, problem, row=line, field=field, where=f"line {line}")


def read_text(path: str | Path, encoding: str = "utf-8", what: str | None = None) -> str:
    """The whole file as text, without a leading UTF-8 byte-order mark (whatever `encoding`); `what` says
    which file it is in a message (e.g. "--input")."""
    path = require_file(path, what)
    data = path.read_bytes()
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as error:
        line = data[:error.start].count(b"\n") + 1
        raise DataError(path, f"not {encoding} text (byte {data[error.start]:#04x} at byte offset "
                              f"{error.start})", where=f"line {line}") from None


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
    """An integer field, at least `minimum`, and within 64 bits (ids become int64 arrays)."""
    try:
        value = int(token.strip())
    except ValueError:
        raise line_error(path, line, field, f"{token!r} is not an integer") from None
    if minimum is not None and value < minimum:
        raise line_error(path, line, field, f"{value} is below {minimum}")
    if not INT64_MIN <= value <= INT64_MAX:
        raise line_error(path, line, field, f"{value} does not fit a 64-bit integer (at most {INT64_MAX})")
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
