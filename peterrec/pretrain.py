"""Pretraining recipe: a backbone learns users' item sequences (next item, or cloze)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from peterrec.backbone import Backbone
from peterrec.config import BackboneConfig
from peterrec.objectives import make_objective
from peterrec.training import Progress, TrainConfig, TrainResult, autocast_for, train

EVAL_BATCH = 256


def pretrain_arrays(sequences, config: BackboneConfig, rows: np.ndarray | None = None) -> np.ndarray:
    """Left-padded item matrix: max_len + 1 columns for next-item (inputs shifted against targets),
    max_len for cloze."""
    rows = np.arange(len(sequences)) if rows is None else rows
    return sequences.padded(rows, config.max_len + (1 if config.causal else 0))


def split_users(n: int, valid_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, validation rows), a seeded split of 0..n-1."""
    order = np.random.default_rng(seed).permutation(n)
    n_valid = int(round(n * valid_fraction)) if n > 1 else 0
    return np.sort(order[n_valid:]), np.sort(order[:n_valid])


@torch.no_grad()
def mean_loss(objective: torch.nn.Module, items: np.ndarray, device: torch.device, seed: int = 0,
              precision: str = "fp32") -> float:
    """Average objective over `items` (seeded, so cloze masks are the same before and after), at the
    training's precision."""
    if len(items) == 0:
        return float("nan")
    was_training = objective.training
    objective.eval()
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    total, count = 0.0, 0
    for start in range(0, len(items), EVAL_BATCH):
        batch = torch.as_tensor(items[start:start + EVAL_BATCH]).to(device)
        with autocast_for(device, precision):
            total += objective(batch).float().item() * len(batch)
        count += len(batch)
    torch.random.set_rng_state(state)
    objective.train(was_training)
    return total / count


@dataclass
class PretrainOutcome:
    backbone: Backbone
    objective: torch.nn.Module  # holds the output layer, saved beside the backbone
    result: TrainResult
    valid_loss_before: float
    valid_loss_after: float


def pretrain(sequences, config: BackboneConfig, train_config: TrainConfig, sampled_softmax: int = 0,
             device: torch.device | None = None, valid_fraction: float = 0.05,
             on_progress: Callable[[Progress], bool | None] | None = None,
             backbone: Backbone | None = None) -> PretrainOutcome:
    """Pretrain (or continue pretraining `backbone`) on every user's sequence but a validation share."""
    if sequences.vocab_size > config.vocab_size:
        raise ValueError(f"the sequences use a vocabulary of {sequences.vocab_size} items but the backbone "
                         f"has vocab_size {config.vocab_size}")
    device = device or torch.device("cpu")
    torch.manual_seed(train_config.seed)
    backbone = (backbone or Backbone(config)).to(device)
    objective = make_objective(backbone, sampled_softmax).to(device)
    train_rows, valid_rows = split_users(len(sequences), valid_fraction, train_config.seed)
    valid_items = pretrain_arrays(sequences, config, valid_rows)
    before = mean_loss(objective, valid_items, device, precision=train_config.precision)
    result = train(objective, (pretrain_arrays(sequences, config, train_rows),), train_config, device,
                   on_progress=on_progress)
    after = mean_loss(objective, valid_items, device, precision=train_config.precision)
    return PretrainOutcome(backbone, objective, result, before, after)


def measure_precision(sequences, config: BackboneConfig, train_config: TrainConfig, sampled_softmax: int = 0,
                      device: torch.device | None = None, requested: str = "auto", budget_s: float = 2.0):
    """`--precision auto` for pretraining: peterrec.precision.choose_precision, measured on a throwaway
    backbone and objective of this shape and one batch of the users' sequences. Returns a PrecisionChoice."""
    from peterrec.precision import choose_precision, native_bf16, step_probe

    device = device or torch.device("cpu")
    if requested != "auto" or not native_bf16(device)[0]:
        return choose_precision(requested, device)
    objective = make_objective(Backbone(config), sampled_softmax).to(device)
    rows = np.arange(min(train_config.batch_size, len(sequences)))
    batch = torch.as_tensor(pretrain_arrays(sequences, config, rows)).to(device)
    return choose_precision(requested, device, step_probe(objective, objective, (batch,), train_config, device),
                            budget_s)
