"""The on-disk format of a bundle: names, versions, checksums and the checks that read it back.

A bundle holds what users carry away from a job: one backbone fingerprint and, per task, a patch set
in the layout PEFT adapters use.

  BUNDLE/index.json                              format, version, backbone {fingerprint, config}, tasks
  BUNDLE/tasks/<name>/adapter_config.json        task, mode, patch config, metrics, params, tensor list
  BUNDLE/tasks/<name>/adapter_model.safetensors  everything the task needs except the frozen backbone

Everything here reads JSON and safetensors only: nothing in a bundle is ever unpickled or executed.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
from pathlib import Path

import torch

from peterrec.backbone import Backbone
from peterrec.config import BackboneConfig, PatchConfig
from peterrec.efficiency import param_report
from peterrec.config import REPRESENTATIONS, legacy_representation
from peterrec.modes import MODES, get_mode
from peterrec.task_model import TaskModel, build_task_model, shapes_only

FORMAT = "peterrec-bundle"
ADAPTER_FORMAT = "peterrec-adapter"
VERSION = 1  # the newest format this package reads and writes
INDEX = "index.json"
CONFIG_FILE = "adapter_config.json"
MODEL_FILE = "adapter_model.safetensors"
TASK_FILES = (CONFIG_FILE, MODEL_FILE)
KINDS = ("classify", "coldrec")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # task names become directory names
SHA256 = re.compile(r"^[0-9a-f]{64}$")

# torch dtype <-> the dtype code a safetensors header uses
DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
          torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
          torch.bool: "BOOL"}


class BundleError(Exception):
    """A bundle that cannot be written or read as asked; the message starts with the file."""

    def __init__(self, path: str | Path, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


def package_version() -> str:
    import peterrec  # noqa: PLC0415  (at call time the package is fully imported)

    return getattr(peterrec, "__version__", "unknown")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_json(path: Path, what: str) -> dict:
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(path, f"not found (expected the {what})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(path, f"not valid JSON ({e})") from None
    if not isinstance(document, dict):
        raise BundleError(path, f"expected a JSON object, got {type(document).__name__}")
    return document


def check_version(path: Path, document: dict, expected_format: str) -> None:
    if document.get("format") != expected_format:
        raise BundleError(path, f"field 'format' is {document.get('format')!r}, expected {expected_format!r}")
    version = document.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise BundleError(path, f"field 'version' is {version!r}, expected a positive integer")
    if version > VERSION:
        raise BundleError(path, f"format version {version} is newer than this package reads ({VERSION}); "
                                f"upgrade peterrec-orchestra (written by {document.get('package_version', '?')})")


def json_safe(value):
    """Metrics as plain JSON: numpy/torch scalars to numbers, NaN and infinities to null."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if hasattr(value, "item"):
        return json_safe(value.item())
    return str(value)


# ---------------------------------------------------------------------------------------------------
# The index


def check_index(path: Path, index: dict) -> None:
    """Validate index.json (not the files it names); BundleError names `path` and the entry."""
    check_version(path, index, FORMAT)
    backbone = index.get("backbone")
    if not isinstance(backbone, dict) or not SHA256.match(str(backbone.get("fingerprint", ""))):
        raise BundleError(path, "field 'backbone' must hold a sha256 'fingerprint' and a 'config'")
    try:
        BackboneConfig.from_dict(backbone.get("config") or {})
    except (TypeError, ValueError) as e:
        raise BundleError(path, f"field 'backbone.config': {e}") from None
    tasks = index.get("tasks")
    if not isinstance(tasks, list):
        raise BundleError(path, "field 'tasks' must be a list")
    seen: dict[str, int] = {}
    for i, entry in enumerate(tasks):
        where = f"tasks[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise BundleError(path, f"{where}: expected an object with a 'name'")
        name = entry["name"]
        if name in seen:
            raise BundleError(path, f"{where}: task {name!r} is listed twice (also tasks[{seen[name]}])")
        seen[name] = i
        if not NAME.match(name):
            raise BundleError(path, f"{where}: {name!r} is not a valid task name")
        if entry.get("path") != f"tasks/{name}":
            raise BundleError(path, f"{where}: field 'path' is {entry.get('path')!r}, expected 'tasks/{name}'")
        if entry.get("kind") not in KINDS or entry.get("mode") not in MODES:
            raise BundleError(path, f"{where}: kind {entry.get('kind')!r} / mode {entry.get('mode')!r} unknown")
        if isinstance(entry.get("bytes"), bool) or not isinstance(entry.get("bytes"), int):
            raise BundleError(path, f"{where}: field 'bytes' must be an integer")
        files = entry.get("files")
        if not isinstance(files, dict) or sorted(files) != sorted(TASK_FILES) or \
                not all(SHA256.match(str(h)) for h in files.values()):
            raise BundleError(path, f"{where}: field 'files' must map {', '.join(TASK_FILES)} to sha256 digests")


# ---------------------------------------------------------------------------------------------------
# Per-task adapter config


def num_outputs(config: dict) -> int:
    task = config["task"]
    return task["num_classes"] if task["kind"] == "classify" else task["target_vocab"]


def build_from_config(backbone: Backbone, config: dict) -> TaskModel:
    """The task model an adapter config describes, around `backbone` (weights still initial)."""
    patch = PatchConfig.from_dict(config["patch"]) if config.get("patch") is not None else None
    with torch.random.fork_rng(devices=[]):  # build_task_model seeds; keep the caller's RNG as it was
        representation = legacy_representation(config["representation"], backbone.config.causal)
        return build_task_model(backbone, config["task"]["kind"], num_outputs(config), config["mode"], patch,
                                config["finelast_blocks"], representation, seed=config["seed"],
                                input_len=config.get("input_len", 0))


def expected_task(backbone_config: BackboneConfig, config: dict) -> tuple[dict[str, dict], dict]:
    """({name: {dtype, shape}} the task state of this config must hold, its parameter report), from a
    model built on the meta device: no memory, no backbone weights needed. Remembered per shape (what
    builds the model, less its seed): a job's driver asks it for every task it records, and building
    even a meta model costs tens of milliseconds."""
    shape = {k: config.get(k) for k in ("mode", "patch", "finelast_blocks", "representation")}
    key = json.dumps([backbone_config.to_dict(), config["task"]["kind"], num_outputs(config), shape], sort_keys=True)
    wanted, report = _expected_task(key)
    return json.loads(wanted), json.loads(report)  # fresh copies: callers may change them


@functools.lru_cache(maxsize=256)
def _expected_task(key: str) -> tuple[str, str]:
    backbone_config, kind, outputs, shape = json.loads(key)
    config = {**shape, "seed": 0, "task": {"kind": kind, "num_classes": outputs, "target_vocab": outputs}}
    with shapes_only():
        model = build_from_config(Backbone(BackboneConfig.from_dict(backbone_config)), config)
    return json.dumps(describe(model.task_state_dict())), json.dumps(param_report(model).to_dict())


def describe(tensors: dict[str, torch.Tensor]) -> dict[str, dict]:
    return {name: {"dtype": DTYPES.get(t.dtype, str(t.dtype)), "shape": list(t.shape)}
            for name, t in sorted(tensors.items())}


def check_adapter_config(path: Path, config: dict, entry: dict, fingerprint: str) -> None:
    """Validate an adapter_config.json against its index entry and the bundle's backbone."""
    check_version(path, config, ADAPTER_FORMAT)
    task = config.get("task")
    if not isinstance(task, dict):
        raise BundleError(path, "field 'task' must be an object")
    for key, want in (("name", entry["name"]), ("kind", entry["kind"])):
        if task.get(key) != want:
            raise BundleError(path, f"field 'task.{key}' is {task.get(key)!r}, index.json says {want!r}")
    if config.get("mode") != entry["mode"]:
        raise BundleError(path, f"field 'mode' is {config.get('mode')!r}, index.json says {entry['mode']!r}")
    size_key = "num_classes" if task["kind"] == "classify" else "target_vocab"
    size = task.get(size_key)
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise BundleError(path, f"field 'task.{size_key}' is {size!r}, expected a positive integer")
    for key in ("labels", "target_raw_ids"):
        names = task.get(key)
        if names is not None and (not isinstance(names, list) or len(names) != size):
            raise BundleError(path, f"field 'task.{key}' must be null or a list of {size} names")
    if (config.get("backbone") or {}).get("fingerprint") != fingerprint:
        raise BundleError(path, "field 'backbone.fingerprint' differs from index.json's: the task was "
                                "trained on another backbone")
    if config.get("mode") in MODES and get_mode(config["mode"]).patched and not isinstance(config.get("patch"), dict):
        raise BundleError(path, f"field 'patch' must describe the patches of mode {config['mode']!r}")
    if not isinstance(config.get("tensors"), dict) or not config["tensors"]:
        raise BundleError(path, "field 'tensors' must list every tensor of the task")
    for key in ("finelast_blocks", "seed"):
        if isinstance(config.get(key), bool) or not isinstance(config.get(key), int):
            raise BundleError(path, f"field {key!r} is {config.get(key)!r}, expected an integer")
    if config.get("representation") not in REPRESENTATIONS:
        raise BundleError(path, f"field 'representation' is {config.get('representation')!r}, expected one of "
                                f"{', '.join(REPRESENTATIONS)}")
    if config.get("patch") is not None:
        try:
            PatchConfig.from_dict(config["patch"])
        except (TypeError, ValueError) as e:
            raise BundleError(path, f"field 'patch': {e}") from None
    for key in ("metrics", "params"):
        if not isinstance(config.get(key), dict):
            raise BundleError(path, f"field {key!r} must be an object")


def tensor_mismatch(found: dict[str, dict], wanted: dict[str, dict], what: str) -> str | None:
    """A one-line description of how two tensor lists differ, or None when they agree."""
    missing, extra = sorted(set(wanted) - set(found)), sorted(set(found) - set(wanted))
    if missing or extra:
        return f"tensors differ from {what}: missing {missing[:4]}, unexpected {extra[:4]}"
    for name in sorted(wanted):
        if found[name] != wanted[name]:
            return f"tensor {name!r} is {found[name]}, {what} says {wanted[name]}"
    return None


def sniff_not_safetensors(path: Path) -> str | None:
    """Why the file is clearly not safetensors (pickle, torch.save zip, too short), else None."""
    with open(path, "rb") as f:
        head = f.read(16)
    if len(head) < 8:
        return f"{len(head)} bytes, too short for a safetensors header"
    header_size = int.from_bytes(head[:8], "little")  # safetensors: u64 header length, then JSON
    if header_size + 8 <= path.stat().st_size and head[8:9] == b"{":
        return None
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "is a Python pickle, not safetensors; refusing to load it (bundles are never unpickled)"
    if head[:4] == b"PK\x03\x04":
        return "is a zip archive (torch.save format), not safetensors; refusing to load it"
    return f"not a safetensors file (header claims {header_size} bytes; file truncated or not safetensors)"
