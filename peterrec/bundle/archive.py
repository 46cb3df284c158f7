"""Bundle archives: the .tar (or .tar.gz) a bundle travels in. Packing is deterministic (fixed member order,
owner and times); unpacking extracts only the files a bundle may hold. Verifying is the caller's
(transfer.py): this module knows files, not bundles.
"""

from __future__ import annotations

import io
import shutil
import tarfile
from pathlib import Path

from peterrec.bundle.format import INDEX, NAME, TASK_FILES, BundleError
from tasks.atomic import staged_file


def pack_archive(root: Path, names: list[str], out: Path) -> None:
    """Write the files `names` (paths under `root`) into the archive `out`, atomically; .gz compresses."""
    mode = "w:gz" if out.name.endswith((".gz", ".tgz")) else "w"
    with staged_file(out) as staging, tarfile.open(staging, mode, format=tarfile.PAX_FORMAT) as tar:
        for name in names:  # fixed order, owner and times: the same bundle packs to the same bytes
            data = (root / name).read_bytes()
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))


def extract_archive(archive: Path, dest: Path) -> None:
    """Extract only the files a bundle may hold (plain files, known names); nothing else is written."""
    try:
        tar = tarfile.open(archive, "r:*")
    except (tarfile.TarError, OSError) as e:
        raise BundleError(archive, f"not a bundle directory or a readable .tar archive ({e})") from None
    with tar:
        try:
            _extract_members(archive, tar, dest)
        except (tarfile.TarError, EOFError, OSError) as e:
            raise BundleError(archive, f"unreadable archive ({e})") from None


def _extract_members(archive: Path, tar: tarfile.TarFile, dest: Path) -> None:
    for member in tar:
        parts = member.name.removeprefix("./").split("/")
        if member.isdir() and (parts in (["tasks"], [""]) or (len(parts) == 2 and parts[0] == "tasks"
                                                              and NAME.match(parts[1]))):
            continue
        allowed = parts == [INDEX] or (len(parts) == 3 and parts[0] == "tasks" and NAME.match(parts[1])
                                       and parts[2] in TASK_FILES)
        if not member.isfile() or not allowed:
            raise BundleError(archive, f"member {member.name!r} is not part of a bundle; nothing extracted")
        target = dest.joinpath(*parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        with tar.extractfile(member) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst)
