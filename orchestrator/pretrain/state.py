"""What a pretraining checkpoint holds beyond the weights, so that a run can resume: no Ray, no pickle.

A Ray Train checkpoint of `pretrain --workers N` is a peterrec backbone checkpoint directory
(model.safetensors + config.json, see peterrec.checkpoint) plus:
  optimizer.safetensors   the optimizer's tensors, named state.<param index>.<key> (AdamW: step, exp_avg, ...)
  trainer_state.json      {"format": "peterrec-pretrain-state", "version": 1, "step": ..., "epoch": ...,
                           "optimizer": {"param_groups": [...], "state": {non-tensor entries}}, ...}
  rng.safetensors         each rank's global RNG state where the checkpoint was taken (cpu.<rank>, and
                           cuda.<rank> on GPUs), so a resumed run draws the same cloze masks and sampled
                           negatives as an uninterrupted one
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from peterrec.checkpoint import CheckpointError, load_tensors, read_versioned_json

FORMAT = "peterrec-pretrain-state"
VERSION = 1
OPTIMIZER_FILE = "optimizer.safetensors"
RNG_FILE = "rng.safetensors"
STATE_FILE = "trainer_state.json"


def save_train_state(path: Path, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Write the optimizer and `state` (JSON types: step, epoch, losses...) into checkpoint dir `path`."""
    saved = optimizer.state_dict()
    tensors, plain = {}, {}
    for index, entries in saved["state"].items():
        for key, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"state.{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                plain.setdefault(str(index), {})[key] = value
    save_file(tensors, str(Path(path) / OPTIMIZER_FILE))
    document = {"format": FORMAT, "version": VERSION, **state,
                "optimizer": {"param_groups": saved["param_groups"], "state": plain}}
    (Path(path) / STATE_FILE).write_text(json.dumps(document, indent=2) + "\n")


def read_train_state(path: Path) -> dict:
    """trainer_state.json of checkpoint dir `path`, checked."""
    state_path = Path(path) / STATE_FILE
    document = read_versioned_json(state_path, FORMAT, VERSION, "not a checkpoint of `pretrain --workers N`?")
    for key in ("step", "optimizer"):
        if key not in document:
            raise CheckpointError(f"{state_path}: field {key!r} is missing")
    return document


def load_train_state(path: Path, optimizer: torch.optim.Optimizer) -> dict:
    """Restore `optimizer` from checkpoint dir `path`; returns trainer_state.json (less the optimizer)."""
    document = read_train_state(path)
    tensors_path = Path(path) / OPTIMIZER_FILE
    try:
        tensors = load_file(str(tensors_path))
    except FileNotFoundError:
        raise CheckpointError(f"{tensors_path}: not found") from None
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{tensors_path}: not a readable safetensors file ({e})") from None
    saved = document.pop("optimizer")
    document.pop("format"), document.pop("version", None)
    state: dict[int, dict] = {}
    for name, tensor in tensors.items():
        _, index, key = name.split(".", 2)
        state.setdefault(int(index), {})[key] = tensor
    for index, entries in saved["state"].items():
        state.setdefault(int(index), {}).update(entries)
    groups = [{**group, "betas": tuple(group["betas"])} if "betas" in group else group
              for group in saved["param_groups"]]
    try:
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError, RuntimeError) as e:
        raise CheckpointError(f"{tensors_path}: does not fit the optimizer ({e})") from None
    return document


def load_weights(path: Path, objective: torch.nn.Module) -> None:
    """Load a checkpoint's backbone.* and output.* tensors into a pretraining objective (in place)."""
    tensors = load_tensors(path)
    try:
        for prefix, module in (("backbone.", objective.backbone), ("output.", objective.output)):
            module.load_state_dict({k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)},
                                   strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{Path(path) / 'model.safetensors'}: tensors do not fit the run ({e})") from None


def save_rng(path: Path, states: list[dict[str, torch.Tensor]]) -> None:
    """Every rank's RNG state (peterrec.training.rng_state, in rank order) into checkpoint dir `path`."""
    save_file({f"{kind}.{rank}": tensor.cpu().contiguous() for rank, state in enumerate(states)
               for kind, tensor in state.items()}, str(Path(path) / RNG_FILE))


def load_rng(path: Path, rank: int, world: int) -> dict[str, torch.Tensor] | None:
    """This rank's RNG state from checkpoint dir `path`; None for a checkpoint written without one (the run
    then continues reseeded, not bit-exact)."""
    rng_path = Path(path) / RNG_FILE
    if not rng_path.exists():
        return None
    try:
        tensors = load_file(str(rng_path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{rng_path}: not a readable safetensors file ({e})") from None
    ranks = {int(name.split(".")[1]) for name in tensors}
    if ranks != set(range(world)):
        raise CheckpointError(f"{rng_path}: saved by {len(ranks)} workers, this run has {world}; resume with "
                              f"--workers {len(ranks)}")
    return {kind: tensors[f"{kind}.{rank}"] for kind in ("cpu", "cuda") if f"{kind}.{rank}" in tensors}
