"""What a Ray Train checkpoint of `pretrain --workers N` holds, so that a run can resume: no Ray, no pickle.

A peterrec backbone checkpoint directory (model.safetensors + config.json, peterrec.checkpoint) plus the
run's training state beside it (optimizer.safetensors + trainer_state.json, peterrec.task_state: the one
owner of how an optimizer and a run's step are saved, for fine-tuning trials too) and
  rng.safetensors   each rank's global RNG state where the checkpoint was taken (cpu.<rank>, and
                    cuda.<rank> on GPUs), so a resumed run draws the same cloze masks and sampled
                    negatives as an uninterrupted one
"""

from __future__ import annotations

from pathlib import Path

import torch

from safetensors.torch import save_file

from peterrec.checkpoint import CheckpointError, load_tensors, read_safetensors, save_checkpoint
from peterrec.task_state import save_train_state

RNG_FILE = "rng.safetensors"


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
    tensors = read_safetensors(rng_path)
    ranks = {int(name.split(".")[1]) for name in tensors}
    if ranks != set(range(world)):
        raise CheckpointError(f"{rng_path}: saved by {len(ranks)} workers, this run has {world}; resume with "
                              f"--workers {len(ranks)}")
    return {kind: tensors[f"{kind}.{rank}"] for kind in ("cpu", "cuda") if f"{kind}.{rank}" in tensors}
