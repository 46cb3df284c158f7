"""Bundles: one shared backbone's fingerprint plus a small patch set per task (format in bundle_format.py).

Writer: `write_task` adds or replaces one task (atomic directory + atomic index). Reader: `open_bundle`
validates the index; `Bundle.load_task` attaches a task to a loaded backbone after checking the
fingerprint, the checksums and every tensor. Archives: `export_bundle` / `import_bundle` (.tar).
"""

from __future__ import annotations

import functools
import io
import shutil
import tarfile
import tempfile
import weakref
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from peterrec.backbone import Backbone
from peterrec.bundle_format import (
    ADAPTER_FORMAT, CONFIG_FILE, FORMAT, INDEX, MODEL_FILE, NAME, TASK_FILES, VERSION, BundleError,
    build_from_config, check_adapter_config, check_index, describe, expected_task, extract_archive,
    json_safe, locked, package_version, publish, read_json, sha256_file, sniff_not_safetensors, swap_into_place,
    tensor_mismatch, write_json_atomic,
)
from peterrec.checkpoint import fingerprint
from peterrec.config import BackboneConfig
from peterrec.finetune import with_overrides
from peterrec.modes import TaskModel
from tasks.atomic import staged_file

__all__ = ["Bundle", "BundleError", "backbone_fingerprint", "export_bundle", "find_bundle", "import_bundle",
           "open_bundle", "write_task"]

# Fingerprints hash every weight, so each backbone object is hashed once; the key holds each tensor's
# storage and in-place version counter, so a backbone changed after hashing is hashed again.
_FINGERPRINTS: "weakref.WeakKeyDictionary[Backbone, tuple]" = weakref.WeakKeyDictionary()


def backbone_fingerprint(backbone: Backbone) -> str:
    state = tuple((t.data_ptr(), t._version) for t in [*backbone.parameters(), *backbone.buffers()])
    cached = _FINGERPRINTS.get(backbone)
    if cached is None or cached[0] != state:
        cached = (state, fingerprint(backbone))
        _FINGERPRINTS[backbone] = cached
    return cached[1]


# ---------------------------------------------------------------------------------------------------
# Writing


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
        staging = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=root / "tasks"))
        try:
            save_file(tensors, str(staging / MODEL_FILE), metadata={"format": "pt"})
            write_json_atomic(staging / CONFIG_FILE, config)
            files = {f: sha256_file(staging / f) for f in TASK_FILES}
            size = sum((staging / f).stat().st_size for f in TASK_FILES)
            swap_into_place(staging, root / "tasks" / name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        entry = {"name": name, "path": f"tasks/{name}", "kind": kind, "mode": model.mode,
                 "files": files, "bytes": size}
        tasks = [t for t in index["tasks"] if t["name"] != name]
        at = next((i for i, t in enumerate(index["tasks"]) if t["name"] == name), len(tasks))
        index["tasks"] = tasks[:at] + [entry] + tasks[at:]
        index["package_version"] = package_version()
        write_json_atomic(root / INDEX, index)
    return entry


def _read_or_new_index(root: Path, backbone_fingerprint: str, backbone_config: BackboneConfig) -> dict:
    path = root / INDEX
    if not path.exists():
        return {"format": FORMAT, "version": VERSION, "package_version": package_version(),
                "backbone": {"fingerprint": backbone_fingerprint, "config": backbone_config.to_dict()},
                "tasks": []}
    index = read_json(path, "bundle index")
    check_index(path, index)
    if index["backbone"]["fingerprint"] != backbone_fingerprint:
        raise BundleError(path, f"this bundle holds tasks of backbone {index['backbone']['fingerprint'][:16]}..., "
                                f"not {backbone_fingerprint[:16]}...; write to a new bundle directory")
    return index


# ---------------------------------------------------------------------------------------------------
# Reading


def find_bundle(path: str | Path) -> Path:
    """The bundle root of `path`: the directory itself or JOB_DIR/bundle (archives: open_bundle)."""
    path = Path(path)
    if not path.exists():
        raise BundleError(path, "not found")
    if (path / INDEX).is_file() or not (path / "bundle").is_dir():
        return path
    return path / "bundle"


def open_bundle(path: str | Path) -> "Bundle":
    """Open a bundle root, a JOB_DIR holding bundle/, or a .tar archive; validates the index."""
    path = Path(path)
    if path.is_file():
        tmp = tempfile.TemporaryDirectory(prefix="peterrec-bundle-")
        try:
            extract_archive(path, Path(tmp.name))
            return Bundle(Path(tmp.name), source=path, archive=path, _tmp=tmp)
        except BaseException:
            tmp.cleanup()
            raise
    return Bundle(find_bundle(path), source=path)


def _naming_source(method):
    """Errors inside an unpacked archive name the archive and the member, not a temporary path."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except BundleError as e:
            if self._archive is None or not e.path.is_relative_to(self.root):
                raise
            raise BundleError(f"{self._archive}:{e.path.relative_to(self.root).as_posix()}", e.problem) from None

    return wrapper


class Bundle:
    """A validated bundle on disk. Reading checks checksums and shapes; nothing is ever unpickled."""

    @_naming_source
    def __init__(self, root: Path, source: Path | None = None, archive: Path | None = None, _tmp=None):
        """`root` holds index.json; `source` is what the user named; `archive` the .tar it came from."""
        self.root, self.source, self._tmp = Path(root), Path(source or root), _tmp
        self._archive = Path(archive) if archive is not None else None
        self.index_path = self.root / INDEX
        self.index = read_json(self.index_path, "bundle index; pass a bundle directory, a job directory holding "
                                                    "bundle/, or a .tar archive")
        check_index(self.index_path, self.index)
        for entry in self.index["tasks"]:
            if not (self.root / entry["path"]).is_dir():
                raise BundleError(self.root / entry["path"], f"task directory missing (index.json lists task "
                                                             f"{entry['name']!r})")

    def __repr__(self) -> str:
        return f"Bundle({str(self.source)!r}, {len(self.tasks)} tasks)"

    @property
    def tasks(self) -> list[dict]:
        return self.index["tasks"]

    @property
    def names(self) -> list[str]:
        return [t["name"] for t in self.tasks]

    @property
    def fingerprint(self) -> str:
        return self.index["backbone"]["fingerprint"]

    @property
    def backbone_config(self) -> BackboneConfig:
        return BackboneConfig.from_dict(self.index["backbone"]["config"])

    @_naming_source
    def entry(self, name: str) -> dict:
        for entry in self.tasks:
            if entry["name"] == name:
                return entry
        raise BundleError(self.index_path, f"no task {name!r} (tasks: {', '.join(self.names) or 'none'})")

    @_naming_source
    def config(self, name: str) -> dict:
        """The task's adapter_config.json, validated against the index (checksums: verify/load_task)."""
        entry = self.entry(name)
        path = self.root / entry["path"] / CONFIG_FILE
        config = read_json(path, "adapter config")
        check_adapter_config(path, config, entry, self.fingerprint)
        return config

    def verify(self, backbone: Backbone | None = None) -> list[str]:
        """Every problem found (empty: all good): files, checksums, headers, shapes, and with a
        backbone its fingerprint. Each problem names its file."""
        problems = []
        if backbone is not None and backbone_fingerprint(backbone) != self.fingerprint:
            problems.append(str(self._wrong_backbone(backbone)))
        for name in self.names:
            try:
                self._read_task(name, load=False)
            except BundleError as e:
                problems.append(str(e))
        return problems

    @_naming_source
    def load_task(self, name: str, backbone: Backbone) -> TaskModel:
        """The task model over `backbone` with every task tensor from the bundle, in eval mode."""
        if backbone_fingerprint(backbone) != self.fingerprint:
            raise self._wrong_backbone(backbone)
        config, tensors = self._read_task(name, load=True)
        model_path = self.root / self.entry(name)["path"] / MODEL_FILE
        model = build_from_config(backbone, config)
        try:
            model.load_task_state_dict(tensors)
        except (KeyError, ValueError, RuntimeError) as e:
            raise BundleError(model_path, f"does not fit the task model: {e}") from None
        loaded = model.task_state_dict()
        if set(loaded) != set(tensors) or not all(torch.equal(loaded[k].cpu(), tensors[k]) for k in tensors):
            raise BundleError(model_path, "task state differs from the file after loading")
        return model.eval()

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def _wrong_backbone(self, backbone: Backbone) -> BundleError:
        return BundleError(self.index_path, f"the given backbone has fingerprint "
                                            f"{backbone_fingerprint(backbone)[:16]}..., but the bundle was "
                                            f"trained on {self.fingerprint[:16]}...; use that backbone")

    @_naming_source
    def _read_task(self, name: str, load: bool) -> tuple[dict, dict[str, torch.Tensor] | None]:
        entry = self.entry(name)
        folder = self.root / entry["path"]
        for file in TASK_FILES:
            path = folder / file
            if not path.is_file():
                raise BundleError(path, f"missing (index.json lists it for task {name!r})")
            if sha256_file(path) != entry["files"][file]:
                raise BundleError(path, "checksum differs from index.json: the file was changed or corrupted")
        config = self.config(name)
        model_path = folder / MODEL_FILE
        why = sniff_not_safetensors(model_path)
        if why:
            raise BundleError(model_path, why)
        try:
            if load:
                tensors = load_file(str(model_path))
                found = describe(tensors)
            else:
                tensors = None
                with safe_open(str(model_path), framework="pt") as f:
                    found = {k: {"dtype": f.get_slice(k).get_dtype(), "shape": list(f.get_slice(k).get_shape())}
                             for k in f.keys()}
        except (SafetensorError, OSError, ValueError) as e:
            raise BundleError(model_path, f"not a readable safetensors file ({e})") from None
        try:
            wanted = expected_task(self.backbone_config, config)[0]
        except (TypeError, ValueError) as e:  # e.g. finelast_blocks beyond the backbone's blocks
            raise BundleError(folder / CONFIG_FILE, f"describes no valid task model ({e})") from None
        problem = tensor_mismatch(found, config["tensors"], CONFIG_FILE) or \
            tensor_mismatch(config["tensors"], wanted, f"what mode {config['mode']!r} needs")
        if problem:
            raise BundleError(model_path, problem)
        return config, tensors


# ---------------------------------------------------------------------------------------------------
# Archives


def export_bundle(path: str | Path, out: str | Path, force: bool = False) -> Path:
    """Pack the bundle at `path` (after verifying it) into one .tar (or .tar.gz) archive."""
    out = Path(out)
    if out.exists() and not force:
        raise FileExistsError(f"{out} already exists (pass --force to replace it)")
    bundle = open_bundle(path)
    try:
        problems = bundle.verify()
        if problems:
            raise BundleError(bundle.source, f"not exported, verify found {len(problems)} problem(s); "
                                             f"first: {problems[0]}")
        _pack(bundle, out)
    finally:
        bundle.close()
    return out


def _pack(bundle: Bundle, out: Path) -> None:
    names = [INDEX] + [f"{t['path']}/{f}" for t in bundle.tasks for f in TASK_FILES]
    mode = "w:gz" if out.name.endswith((".gz", ".tgz")) else "w"
    with staged_file(out) as staging, tarfile.open(staging, mode, format=tarfile.PAX_FORMAT) as tar:
        for name in names:  # fixed order, owner and times: the same bundle packs to the same bytes
            data = (bundle.root / name).read_bytes()
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))


def import_bundle(archive: str | Path, out: str | Path, force: bool = False) -> Path:
    """Unpack an archive into the bundle directory `out`, verified before it appears there."""
    from tasks.atomic import staged_directory  # noqa: PLC0415

    with staged_directory(Path(out), force=force) as tmp:
        extract_archive(Path(archive), tmp)
        problems = Bundle(tmp, source=archive, archive=archive).verify()
        if problems:
            raise BundleError(archive, f"not imported, verify found {len(problems)} problem(s); first: {problems[0]}")
        for folder in (tmp, *[p for p in tmp.rglob("*") if p.is_dir()]):
            publish(folder)
    return Path(out)
