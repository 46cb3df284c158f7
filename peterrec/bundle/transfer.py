"""Bundles in and out of archives: export (verify, then pack) and import (unpack, verify, then appear)."""

from __future__ import annotations

from pathlib import Path

from peterrec.bundle.archive import extract_archive, pack_archive
from peterrec.bundle.format import INDEX, TASK_FILES, BundleError
from peterrec.bundle.reader import Bundle, open_bundle
from tasks.atomic import staged_directory

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz")


def export_bundle(path: str | Path, out: str | Path, force: bool = False) -> Path:
    """Pack the bundle at `path` (after verifying it) into one .tar (or .tar.gz) archive."""
    out = Path(out)
    if not out.name.endswith(ARCHIVE_SUFFIXES):
        raise BundleError(out, f"an archive's name ends in {', '.join(ARCHIVE_SUFFIXES)} (the suffix picks the "
                               f"format: .tar.gz and .tgz are compressed)")
    if out.exists() and not force:
        raise FileExistsError(f"{out} already exists (pass --force to replace it)")
    bundle = open_bundle(path)
    try:
        problems = bundle.verify()
        if problems:
            raise BundleError(bundle.source, f"not exported, verify found {len(problems)} problem(s); "
                                             f"first: {problems[0]}")
        pack_archive(bundle.root, [INDEX] + [f"{t['path']}/{f}" for t in bundle.tasks for f in TASK_FILES], out)
    finally:
        bundle.close()
    return out


def import_bundle(archive: str | Path, out: str | Path, force: bool = False) -> Path:
    """Unpack an archive into the bundle directory `out`, verified before it appears there."""
    with staged_directory(Path(out), force=force) as tmp:
        extract_archive(Path(archive), tmp)
        problems = Bundle(tmp, source=archive, archive=archive).verify()
        if problems:
            raise BundleError(archive, f"not imported, verify found {len(problems)} problem(s); first: {problems[0]}")
    return Path(out)
