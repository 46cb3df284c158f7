"""Training state on disk: what a run needs besides its weights to continue where it stopped. Safetensors and
JSON, no pickle, no Ray; the one owner of how an optimizer is saved, for fine-tuning and for pretraining.

A fine-tuning run's state (a Tune trial's checkpoint: `save_task_state`, `load_task_state`) is a directory:
  task.safetensors        the trainable tensors now, by parameter name (patches.*, head.*, ...)
  best.safetensors        the same tensors at the best evaluation so far (keep_best), when there was one
  optimizer.safetensors   the optimizer's tensors (state.<param index>.<key>) and the torch RNG states
                          (rng.cpu; rng.cuda on CUDA)
  task_state.json         {"format": "peterrec-task-state", "version": 1, "step", "loss", "best", "history",
                           "optimizer": {"param_groups", "state": its non-tensor entries}, "meta": {...}}
Only trainable tensors are saved: the rest of a task model (the shared backbone, or peterzero's random one)
is rebuilt from the settings and the seed, as a bundle does.

A pretraining run's state (`save_train_state`, `load_train_state`) sits beside a backbone checkpoint
(peterrec.checkpoint) in each Ray Train checkpoint of `pretrain --workers N`:
  optimizer.safetensors   as above, without RNG states
  trainer_state.json      {"format": "peterrec-pretrain-state", "version": 1, "step", "epoch", ...,
                           "optimizer": {"param_groups", "state"}}
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from peterrec.checkpoint import CheckpointError, read_safetensors, read_versioned_json
from peterrec.training import TrainState
from tasks.atomic import staged_directory

OPTIMIZER_FILE = "optimizer.safetensors"
TASK_FORMAT, TASK_VERSION = "peterrec-task-state", 1
TASK_FILE, BEST_FILE, TASK_STATE_FILE = "task.safetensors", "best.safetensors", "task_state.json"
FORMAT, VERSION, STATE_FILE = "peterrec-pretrain-state", 1, "trainer_state.json"  # pretraining's


# The optimizer: its tensors in safetensors, the rest in the JSON document beside them -------------------------


def _write_optimizer(path: Path, optimizer: torch.optim.Optimizer, extra: dict | None = None) -> dict:
    """Write optimizer.safetensors (plus `extra` tensors) into directory `path`; returns what goes to JSON."""
    saved = optimizer.state_dict()
    tensors, plain = dict(extra or {}), {}
    for index, entries in saved["state"].items():
        for key, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"state.{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                plain.setdefault(str(index), {})[key] = value
    save_file(tensors, str(Path(path) / OPTIMIZER_FILE))
    return {"param_groups": saved["param_groups"], "state": plain}


def _load_optimizer(optimizer: torch.optim.Optimizer, tensors: dict, saved: dict, where: Path) -> None:
    state: dict[int, dict] = {}
    for name, tensor in tensors.items():
        if name.startswith("state."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = tensor
    for index, entries in saved["state"].items():
        state.setdefault(int(index), {}).update(entries)
    groups = [{**group, "betas": tuple(group["betas"])} if "betas" in group else group
              for group in saved["param_groups"]]
    try:
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError, RuntimeError) as e:
        raise CheckpointError(f"{where}: does not fit the optimizer ({e})") from None


# A fine-tuning run ---------------------------------------------------------------------------------------------


def trainable_names(model: torch.nn.Module) -> list[str]:
    """The trainable parameters' names, in training.trainable_parameters' order (TrainState.best_state's)."""
    return [name for name, p in model.named_parameters() if p.requires_grad]


def save_task_state(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: TrainState,
                    meta: dict | None = None) -> Path:
    """Write a run's state as the new directory `path` (atomically). Call it between steps (an on_progress
    callback): then weights, optimizer, state and RNG all stand after step `state.step`. `meta` is the
    caller's (JSON types), read back by read_task_state."""
    names = trainable_names(model)
    params = dict(model.named_parameters())
    device = params[names[0]].device
    state.capture_rng(device)
    rng = {"rng.cpu": state.rng, **({"rng.cuda": state.cuda_rng} if state.cuda_rng is not None else {})}
    with staged_directory(Path(path)) as tmp:
        save_file({n: params[n].detach().cpu().contiguous() for n in names}, str(tmp / TASK_FILE))
        if state.best_state is not None:
            save_file({n: t.detach().cpu().contiguous() for n, t in zip(names, state.best_state)},
                      str(tmp / BEST_FILE))
        optimizer_json = _write_optimizer(tmp, optimizer, rng)
        document = {"format": TASK_FORMAT, "version": TASK_VERSION, "step": state.step, "loss": _finite(state.loss),
                    "best": _finite(state.best), "history": [{k: _finite(v) for k, v in h.items()}
                                                             for h in state.history],
                    "optimizer": optimizer_json, "meta": meta or {}}
        (tmp / TASK_STATE_FILE).write_text(json.dumps(document, indent=1) + "\n")
    return Path(path)


def read_task_state(path: Path) -> dict:
    """task_state.json of a task-state directory, checked (step and meta included)."""
    document = read_versioned_json(Path(path) / TASK_STATE_FILE, TASK_FORMAT, TASK_VERSION,
                                   "not a fine-tuning checkpoint (task state)?")
    for key in ("step", "history", "optimizer", "meta"):
        if key not in document:
            raise CheckpointError(f"{Path(path) / TASK_STATE_FILE}: field {key!r} is missing")
    return document


@dataclass
class LoadedState:
    state: TrainState  # give it to training.train(state=...) to continue the run
    meta: dict


def load_task_state(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    hyper: dict | None = None) -> LoadedState:
    """Load the trainable tensors of `path` into `model` (and its state into `optimizer`). `hyper` (lr,
    weight_decay) is set on every parameter group afterwards: the run's settings decide those, the
    checkpoint only the state (PBT explores them from a copied checkpoint)."""
    path = Path(path)
    document = read_task_state(path)
    names = trainable_names(model)
    params = dict(model.named_parameters())
    device = params[names[0]].device
    current = read_safetensors(path / TASK_FILE)
    best_state = None
    if (path / BEST_FILE).exists():
        best = read_safetensors(path / BEST_FILE)
        best_state = [best[n].to(device) for n in names if n in best]
    if set(current) != set(names) or (best_state is not None and len(best_state) != len(names)):
        raise CheckpointError(f"{path / TASK_FILE}: its tensors {sorted(current)} are not the model's trainable "
                              f"parameters {names}")
    with torch.no_grad():
        for n in names:
            if current[n].shape != params[n].shape:
                raise CheckpointError(f"{path / TASK_FILE}: {n} has shape {tuple(current[n].shape)}, the model's "
                                      f"{tuple(params[n].shape)}")
            params[n].copy_(current[n])
    tensors = read_safetensors(path / OPTIMIZER_FILE)
    if optimizer is not None:
        _load_optimizer(optimizer, tensors, document["optimizer"], path / OPTIMIZER_FILE)
        for group in optimizer.param_groups:
            group.update(hyper or {})
    history = [{k: (float("nan") if v is None and k in ("loss", "metric") else v) for k, v in h.items()}
               for h in document["history"]]
    loss = document.get("loss")
    state = TrainState(step=int(document["step"]), loss=float("nan") if loss is None else loss,
                       best=document.get("best"), best_state=best_state, history=history,
                       rng=tensors.get("rng.cpu"), cuda_rng=tensors.get("rng.cuda"))
    return LoadedState(state, document["meta"])


def _finite(value):
    return None if isinstance(value, float) and not math.isfinite(value) else value


# A pretraining run (Ray Train) -----------------------------------------------------------------------------------


def save_train_state(path: Path, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Write the optimizer and `state` (JSON types: step, epoch, losses...) into checkpoint dir `path`."""
    optimizer_json = _write_optimizer(Path(path), optimizer)
    document = {"format": FORMAT, "version": VERSION, **state, "optimizer": optimizer_json}
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
    _load_optimizer(optimizer, read_safetensors(tensors_path), document.pop("optimizer"), tensors_path)
    document.pop("format"), document.pop("version", None)
    return document
