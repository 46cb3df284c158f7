"""Typed reading of one TOML table of a spec, with errors that name the file, the entry and the key."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from tasks.errors import DataError


class TableChecker:
    """Typed access to one TOML table that raises DataError naming the file, entry and key."""

    def __init__(self, path: Path, table: dict, where: str, row: int | None = None):
        self.path, self.table, self.where, self.row = path, table, where, row

    def fail(self, key: str, problem: str):
        raise DataError(self.path, problem, row=self.row, field=key, where=self.where)

    def get(self, key: str, expected: str):
        if key not in self.table:
            self.fail(key, f"missing, expected {expected}")
        return self.table[key]

    def no_unknown_keys(self, known: Sequence[str]) -> None:
        for key in self.table:
            if key not in known:
                self.fail(key, f"unknown key, expected one of {', '.join(known)}")

    def absent(self, key: str, why: str) -> None:
        if key in self.table:
            self.fail(key, f"not allowed here: {why}")

    def string(self, key: str) -> str:
        value = self.get(key, "a string")
        if not isinstance(value, str) or not value:
            self.fail(key, f"expected a non-empty string, got {value!r}")
        return value

    def integer(self, key: str, minimum: int) -> int:
        value = self.get(key, f"an integer >= {minimum}")
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            self.fail(key, f"expected an integer >= {minimum}, got {value!r}")
        return value

    def choice(self, key: str, allowed: Sequence[str], what: str | None = None) -> str:
        value = self.get(key, f"one of {', '.join(allowed)}")
        if value not in allowed:
            self.fail(key, f"{value!r} is not a known {what or key}, expected one of {', '.join(allowed)}")
        return value

    def string_list(self, key: str) -> list[str]:
        value = self.get(key, "a list of strings")
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.fail(key, f"expected a list of strings, got {value!r}")
        return list(value)

    def path_field(self, key: str) -> Path:
        return Path(os.path.normpath(self.path.parent / self.string(key)))
