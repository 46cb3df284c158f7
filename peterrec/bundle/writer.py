"""Writing a bundle: add (or replace) one task's patch set, the only way a bundle changes.

The task's directory is staged beside its place and renamed in (tasks.atomic), then index.json is
rewritten atomically; other tasks' files are never touched, and one writer at a time holds the bundle.
"""

from __future__ import annotations

import json
import threading
from contextlib import contextmanager
from pathlib import Path

from safetensors.torch import save_file

from peterrec.bundle.format import (ADAPTER_FORMAT, CONFIG_FILE, FORMAT, INDEX, MODEL_FILE, NAME, TASK_FILES, VERSION,
                                    BundleError, check_index, describe, expected_task, json_safe, package_version,
                                    read_json, sha256_file, tensor_mismatch)
from peterrec.config import BackboneConfig
from peterrec.finetune import with_overrides
from peterrec.task_model import TaskModel
from tasks.atomic import staged_directory, write_json_atomic, write_text_atomic

def write_task(bundle_dir: str | Path, model: TaskModel, task_spec, settings, metrics: dict,
               backbone_fingerprint: str, backbone_config: BackboneConfig,
               target_raw_ids: list[str] | None = None) -> dict:
    """Add (or replace, on a retry) one task's patch set and return its index entry.

    The task directory is built in a temporary sibling and renamed into place, then index.json is
    rewritten atomically; other tasks' files are never touched. Fails if the bundle belongs to another
    backbone. `task_spec` needs name, kind, metric, num_outputs and optionally labels.
    """
    root = Path(bundle_dir)
    name, kind = task_spec.name, task_spec.kind
    if not NAME.match(name):
        raise BundleError(root, f"{name!r} is not a valid task name (letters, digits, '_', '.', '-')")
    # finetune_task applies the task's overrides itself; applying them again here is a no-op when the
    # caller already did, and keeps e.g. an overridden finelast_blocks from being lost when it did not.
    settings = with_overrides(settings, getattr(task_spec, "overrides", None) or {})
    if model.mode != settings.mode:
        raise ValueError(f"task {name!r}: the model is mode {model.mode!r}, the settings say {settings.mode!r}")
    # The patch config and representation are read off the model itself: a serial and a parallel patch
    # have the same tensor shapes, so a wrong one could not be caught later.
    patch = model.patches.config.to_dict() if model.patches is not None else None
    config = {
        "format": ADAPTER_FORMAT, "version": VERSION, "package_version": package_version(),
        "task": {"name": name, "kind": kind, "metric": getattr(task_spec, "metric", None),
                 "num_classes": task_spec.num_outputs if kind == "classify" else None,
                 "target_vocab": task_spec.num_outputs if kind == "coldrec" else None,
                 "labels": list(task_spec.labels) if getattr(task_spec, "labels", None) else None,
                 "target_raw_ids": [str(r) for r in target_raw_ids] if target_raw_ids is not None else None},
        "mode": model.mode,
        "patch": patch,
        "finelast_blocks": settings.finelast_blocks,
        "representation": model.representation,
        "input_len": model.input_len,
        "seed": settings.train.seed,
        "settings": {**settings.to_dict(), "patch": patch or settings.patch.to_dict(),
                     "representation": model.representation},
        "metrics": json_safe(metrics or {}),
        "backbone": {"fingerprint": backbone_fingerprint, "config": backbone_config.to_dict()},
    }
    # What the mode needs, from a model built afresh: catches a model frozen after training (whose
    # task_state_dict would silently drop the head) before anything is written.
    wanted, report = expected_task(backbone_config, config)
    tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.task_state_dict().items()}
    problem = tensor_mismatch(describe(tensors), wanted, f"what mode {model.mode!r} needs")
    if problem:
        raise ValueError(f"task {name!r}: {problem}")
    config["params"] = report
    config["tensors"] = wanted
    root.mkdir(parents=True, exist_ok=True)
    (root / "tasks").mkdir(exist_ok=True)
    with locked(root):
        index = _read_or_new_index(root, backbone_fingerprint, backbone_config)
        with staged_directory(root / "tasks" / name, force=True) as staging:
            save_file(tensors, str(staging / MODEL_FILE), metadata={"format": "pt"})
            write_json_atomic(staging / CONFIG_FILE, config)
            files = {f: sha256_file(staging / f) for f in TASK_FILES}
            size = sum((staging / f).stat().st_size for f in TASK_FILES)
        entry = {"name": name, "path": f"tasks/{name}", "kind": kind, "mode": model.mode,
                 "files": files, "bytes": size}
        tasks = [t for t in index["tasks"] if t["name"] != name]
        at = next((i for i, t in enumerate(index["tasks"]) if t["name"] == name), len(tasks))
        index["tasks"] = tasks[:at] + [entry] + tasks[at:]
        index["package_version"] = package_version()
        try:
            write_text_atomic(root / INDEX, index_text(index), sync=True)
        finally:
            _INDEXES.pop(root / INDEX, None)
        _remember(root / INDEX, index)
    return entry


def index_text(index: dict) -> str:
    """index.json as text: indented, one line per task. json's indenting encoder is pure Python (about 30 ms
    for a 300-task index, at every task a job records); each line here goes through its C encoder."""
    dumps = lambda value: json.dumps(value, allow_nan=False)  # noqa: E731
    lines = [f"  {dumps(k)}: {dumps(v)}" for k, v in index.items() if k != "tasks"]
    tasks = ",\n".join(f"    {dumps(t)}" for t in index["tasks"])
    lines.append(f'  "tasks": [\n{tasks}\n  ]' if tasks else '  "tasks": []')
    return "{\n" + ",\n".join(lines) + "\n}\n"


# The index this process last wrote, per bundle, with its file's identity: a job's driver records a task
# at a time, and reading and checking the whole index again for each cost as much as writing it.
_INDEXES: dict[Path, tuple[tuple, dict]] = {}


def _identity(path: Path) -> tuple:
    stat = path.stat()
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


def _remember(path: Path, index: dict) -> None:
    try:
        _INDEXES[path] = (_identity(path), dict(index))  # write_task replaces entries, never changes one
    except OSError:
        pass


def _read_or_new_index(root: Path, backbone_fingerprint: str, backbone_config: BackboneConfig) -> dict:
    path = root / INDEX
    if not path.exists():
        return {"format": FORMAT, "version": VERSION, "package_version": package_version(),
                "backbone": {"fingerprint": backbone_fingerprint, "config": backbone_config.to_dict()},
                "tasks": []}
    known = _INDEXES.get(path)
    if known is not None and _identity(path) == known[0]:  # the file as this process wrote it
        index = dict(known[1])
    else:
        index = read_json(path, "bundle index")
        check_index(path, index)
    if index["backbone"]["fingerprint"] != backbone_fingerprint:
        raise BundleError(path, f"this bundle holds tasks of backbone {index['backbone']['fingerprint'][:16]}..., "
                                f"not {backbone_fingerprint[:16]}...; write to a new bundle directory")
    return index



_WRITE_LOCK = threading.Lock()


@contextmanager
def locked(root: Path):
    """One writer at a time per bundle: a thread lock plus an advisory file lock across processes."""
    with _WRITE_LOCK, open(root / ".lock", "a") as handle:
        try:
            import fcntl  # noqa: PLC0415  (POSIX only)

            fcntl.flock(handle, fcntl.LOCK_EX)
        except ImportError:
            pass
        yield
