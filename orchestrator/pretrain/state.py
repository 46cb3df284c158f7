"""What a Ray Train checkpoint of `pretrain --workers N` holds, so that a run can resume: no Ray, no pickle.

A peterrec backbone checkpoint directory (model.safetensors + config.json, peterrec.checkpoint) plus the
run's training state beside it (optimizer.safetensors + trainer_state.json, peterrec.task_state: the one
owner of how an optimizer and a run's step are saved, for fine-tuning trials too).
"""

from __future__ import annotations

from pathlib import Path

import torch

from peterrec.checkpoint import CheckpointError, load_tensors, save_checkpoint
from peterrec.task_state import save_train_state


def save_pretrain_state(path: Path, objective: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict,
                        info: dict | None = None) -> Path:
    """Write checkpoint dir `path`: the objective's backbone and output layer, the optimizer and `state`
    (JSON types: step, epoch, losses...)."""
    path = save_checkpoint(path, objective.backbone, objective.output, info)
    save_train_state(path, optimizer, state)
    return path


def load_weights(path: Path, objective: torch.nn.Module) -> None:
    """Load a checkpoint's backbone.* and output.* tensors into a pretraining objective (in place)."""
    tensors = load_tensors(path)
    try:
        for prefix, module in (("backbone.", objective.backbone), ("output.", objective.output)):
            module.load_state_dict({k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)},
                                   strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{Path(path) / 'model.safetensors'}: tensors do not fit the run ({e})") from None
