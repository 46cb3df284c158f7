"""Backbone checkpoints: safetensors tensors + a JSON config. Loading never unpickles.

A checkpoint is a directory:
  config.json        {"format": "peterrec-backbone", "version": 1, "backbone": {...}, "pretraining": {...}}
  model.safetensors  backbone.* tensors and the pretraining output layer (output.*)
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from peterrec.backbone import Backbone
from peterrec.config import BackboneConfig
from tasks.atomic import staged_directory

FORMAT = "peterrec-backbone"
VERSION = 1
CHECKPOINT_FILES = ("config.json", "model.safetensors")


class CheckpointError(Exception):
    """A checkpoint that cannot be read; the message names the file."""


def save_checkpoint(path: Path, backbone: Backbone, output_layer: torch.nn.Module | None = None,
                    info: dict | None = None, force: bool = False) -> Path:
    tensors = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
    if output_layer is not None:
        tensors.update({f"output.{k}": v for k, v in output_layer.state_dict().items()})
    config = {"format": FORMAT, "version": VERSION, "backbone": backbone.config.to_dict(),
              "fingerprint": fingerprint(backbone), **(info or {})}
    with staged_directory(Path(path), force=force) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp / "model.safetensors"))
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return Path(path)


def read_versioned_json(path: Path, form: str, version: int, missing: str) -> dict:
    """A JSON document with "format" and "version" fields, checked; errors name the file."""
    path = Path(path)
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: not found ({missing})") from None
    except NotADirectoryError:
        raise CheckpointError(f"{path.parent}: is a file, expected a directory ({missing})") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path}: is a directory, expected a file ({missing})") from None
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(document, dict) or document.get("format") != form:
        found = document.get("format") if isinstance(document, dict) else None
        raise CheckpointError(f"{path}: field 'format' is {found!r}, expected {form!r}")
    if document.get("version", 0) > version:
        raise CheckpointError(f"{path}: format version {document['version']} is newer than this "
                              f"package reads ({version}); upgrade peterrec-orchestra")
    return document


def read_checkpoint_config(path: Path) -> dict:
    path = Path(path)
    if path.is_file():  # a file of the checkpoint given for the checkpoint (model.safetensors, config.json)
        hint = f"; the checkpoint is the folder holding it: {path.parent}" if path.name in CHECKPOINT_FILES else ""
        raise CheckpointError(f"{path}: is a file, expected a backbone checkpoint directory{hint}")
    return read_versioned_json(Path(path) / "config.json", FORMAT, VERSION,
                               f"is {path} a backbone checkpoint directory?")


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of one safetensors file (CPU); CheckpointError naming the file when it cannot be read."""
    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: not found") from None
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint (CPU), read with safetensors only."""
    return read_safetensors(Path(path) / "model.safetensors")


def load_backbone(path: Path, device: torch.device | str = "cpu") -> tuple[Backbone, dict]:
    """(Backbone with pretrained weights, checkpoint config)."""
    config = read_checkpoint_config(path)
    backbone = Backbone(BackboneConfig.from_dict(config["backbone"]))
    tensors = load_tensors(path)
    state = {k.removeprefix("backbone."): v for k, v in tensors.items() if k.startswith("backbone.")}
    try:
        backbone.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{Path(path) / 'model.safetensors'}: tensors do not fit the config ({e})") from None
    return backbone.to(device), config


def fingerprint(backbone: Backbone | dict[str, torch.Tensor], config: BackboneConfig | None = None) -> str:
    """SHA-256 over the backbone's tensors (name, dtype, shape, bytes, in name order) and its config."""
    if isinstance(backbone, Backbone):
        config, state = backbone.config, backbone.state_dict()
    else:
        state = backbone
    digest = hashlib.sha256()
    digest.update(json.dumps(config.to_dict() if config else None, sort_keys=True).encode())
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def backbone_arrays(backbone: Backbone) -> dict[str, np.ndarray]:
    """The backbone as plain numpy arrays (what Ray's object store shares zero-copy)."""
    return {k: v.detach().cpu().numpy() for k, v in backbone.state_dict().items()}
