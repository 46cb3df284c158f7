"""Atomic outputs, the one place they are made: a file or a directory is built in a temporary sibling and
renamed into place at the end, so nothing half-written is ever visible and a failure leaves the old one."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from tasks.errors import OutputExistsError


def check_output_free(out: str | Path, force: bool) -> None:
    """Refuse an existing non-empty `out` unless `force` (then it will be replaced)."""
    out = Path(out)
    if force or not out.exists():
        return
    if out.is_dir() and not any(out.iterdir()):
        return
    raise OutputExistsError(out, "is a file" if not out.is_dir() else "exists and is not empty")


@contextmanager
def staged_directory(out: str | Path, *, force: bool = False) -> Iterator[Path]:
    """Yield an empty temporary directory next to `out`; on success it becomes `out`.

    On any error the temporary directory, and any parent directories this call created, are
    removed, and an existing `out` is left as it was: nothing half-written is ever visible.
    """
    out = Path(out).absolute()
    check_output_free(out, force)
    created = [p for p in reversed(out.parents) if not p.exists()]
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    staging.chmod(0o777 & ~_umask())  # mkdtemp makes it owner-only; outputs get the usual mode
    try:
        yield staging
        _replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for parent in reversed(created):
            _remove_if_empty(parent)
        raise


@contextmanager
def staged_file(out: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling path of `out` to write; on success it gets the usual file mode and is
    renamed over `out` (readers never see half a file); on any error it is removed."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(handle)
    staging = Path(name)
    try:
        yield staging
        staging.chmod(0o666 & ~_umask())  # mkstemp makes it owner-only
        os.replace(staging, out)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise


def write_text_atomic(out: str | Path, text: str, *, sync: bool = False) -> None:
    """Replace `out` with `text` through staged_file; `sync`: flushed to disk before the rename (what must
    survive a power cut, such as a bundle's index)."""
    with staged_file(out) as staging, open(staging, "w", encoding="utf-8") as handle:
        handle.write(text)
        if sync:
            handle.flush()
            os.fsync(handle.fileno())


def write_json_atomic(out: str | Path, document, *, sync: bool = True) -> None:
    """Replace `out` with `document` as strict JSON (NaN refused), indented, synced to disk."""
    write_text_atomic(out, json.dumps(document, indent=2, allow_nan=False) + "\n", sync=sync)


def _replace(staging: Path, out: Path) -> None:
    if not out.exists():
        staging.rename(out)
        return
    # Move the old output aside first, so a failed rename never loses both copies.
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
    old.rmdir()
    out.rename(old)
    try:
        staging.rename(out)
    except BaseException:
        old.rename(out)
        raise
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old, ignore_errors=True)
    else:
        old.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _remove_if_empty(directory: Path) -> None:
    try:
        directory.rmdir()
    except OSError:
        pass
