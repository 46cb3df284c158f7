"""Reading a bundle: open it (a directory, a job directory holding bundle/, or a .tar archive), validate its
index, and attach a task to a loaded backbone after checking the fingerprint, the checksums and every
tensor. Nothing in a bundle is ever unpickled.
"""

from __future__ import annotations

import functools
import tempfile
import weakref
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from peterrec.backbone import Backbone
from peterrec.bundle.archive import extract_archive
from peterrec.bundle.format import (CONFIG_FILE, INDEX, MODEL_FILE, TASK_FILES, BundleError, build_from_config,
                                    check_adapter_config, check_index, describe, expected_task, read_json,
                                    sha256_file, sniff_not_safetensors, tensor_mismatch)
from peterrec.checkpoint import fingerprint
from peterrec.config import BackboneConfig
from peterrec.task_model import TaskModel


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

    def unchanged(self, name: str) -> bool:
        """Whether the task's files are there and match index.json's checksums (cheap; `verify` checks
        headers and shapes too)."""
        folder = self.root / self.entry(name)["path"]
        files = self.entry(name)["files"]
        return all((folder / f).is_file() and sha256_file(folder / f) == files[f] for f in TASK_FILES)

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
