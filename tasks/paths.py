"""Paths a command is given: checked for existence and kind before use, and kept apart from its output.

Every check raises DataError (exit 2 with `error: PATH: ...`) before anything is read or written.
"""

from __future__ import annotations

import os
from pathlib import Path

from tasks.errors import DataError

# Files that sit inside a directory argument, which users pass instead of the directory.
_INSIDE = {"config.json": "a checkpoint directory", "model.safetensors": "a checkpoint directory",
           "index.json": "a bundle directory", "tasks.toml": "a data directory"}


def require_file(path: str | Path, what: str | None = None) -> Path:
    """`path`, which must be a readable file; `what` says which one in the message (e.g. "--input")."""
    path, ctx = Path(path), f" ({what})" if what else ""
    if path.is_dir():
        raise DataError(path, f"is a directory, expected a file{ctx}")
    if not path.exists():
        raise DataError(path, f"not found{ctx}")
    if not os.access(path, os.R_OK):
        raise DataError(path, f"not readable: permission denied{ctx}")
    return path


def require_dir(path: str | Path, what: str | None = None) -> Path:
    """`path`, which must be a readable directory; a file that lives in such a directory gets a hint."""
    path, ctx = Path(path), f" ({what})" if what else ""
    if not path.exists():
        raise DataError(path, f"not found{ctx}")
    if not path.is_dir():
        hint = f"; {_INSIDE[path.name]} is the folder holding it: {path.parent}" if path.name in _INSIDE else ""
        raise DataError(path, f"is a file, expected a directory{ctx}{hint}")
    if not os.access(path, os.R_OK | os.X_OK):
        raise DataError(path, f"not readable: permission denied{ctx}")
    return path


def check_apart(out: str | Path, out_flag: str, inputs: dict[str, str | Path | None]) -> None:
    """Refuse an output that is, holds or lies inside one of the inputs (symlinks and '..' resolved):
    writing it, or replacing it with --force, would delete or overwrite what the command reads.

    `inputs` maps a flag (or a description such as "the data of task 'age'") to its path; None entries are
    skipped. A directory input counts as a whole (nothing may be written inside it); a file input only
    for itself, so `--tasks data/tasks.toml --out data/job` stays allowed."""
    target = Path(out).resolve()
    for flag, path in inputs.items():
        if path is None or str(path) == "":
            continue
        source = Path(path).resolve()
        if target == source:
            raise DataError(out, f"{out_flag} is the input {flag} ({path}); write to another path")
        if source.is_relative_to(target):
            raise DataError(out, f"{out_flag} holds the input {flag} ({path}): writing it would replace that "
                                 f"input; write to another path")
        if target.is_relative_to(source) and source.is_dir():
            raise DataError(out, f"{out_flag} lies inside the input {flag} ({path}); write outside it")
