"""Pretraining recipe: a backbone learns users' item sequences (next item, or cloze)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from peterrec.backbone import Backbone
from peterrec.config import BackboneConfig
from peterrec.item_init import init_item_embedding
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
    total, count = 0.0, 0
    # The training's RNG streams (CPU and this CUDA device) continue as if no validation had run.
    with torch.random.fork_rng(devices=[device] if torch.device(device).type == "cuda" else []):
        torch.manual_seed(seed)
        for start in range(0, len(items), EVAL_BATCH):
            batch = torch.as_tensor(items[start:start + EVAL_BATCH]).to(device)
            with autocast_for(device, precision):
                total += objective(batch).float().item() * len(batch)
            count += len(batch)
    objective.train(was_training)
    return total / count


@dataclass
class PretrainOutcome:
    backbone: Backbone
    objective: torch.nn.Module  # holds the output layer, saved beside the backbone
    result: TrainResult
    valid_loss_before: float
    valid_loss_after: float
    examples: int = 0  # training sequences (or windows of them)
    curve: list[dict] = field(default_factory=list)  # per epoch, with `patience`: train and valid loss
    item_init: str = "random"  # how the item embedding started (peterrec.item_init.ITEM_INITS)

    @property
    def best_epoch(self) -> int | None:
        return min(self.curve, key=lambda c: c["valid_loss"])["epoch"] if self.curve else None

    def info(self, train_config: TrainConfig, sampled_softmax: int = 0, **extra) -> dict:
        """What a checkpoint's config.json records of this pretraining."""
        cfg = self.backbone.config
        return {"pretraining": {
            "objective": "next-item" if cfg.causal else "cloze", "sampled_softmax": sampled_softmax,
            "item_init": self.item_init, "train": train_config.to_dict(), "steps": self.result.steps,
            "examples": self.examples,
            "seconds": self.result.seconds, "valid_loss_before": self.valid_loss_before,
            "valid_loss_after": self.valid_loss_after, "curve": self.curve, "best_epoch": self.best_epoch,
            **extra}}


def window_arrays(sequences, rows: np.ndarray, width: int, step: int) -> np.ndarray:
    """Left-padded (N, width) windows over the given rows' sequences, cut from the most recent item back
    every `step` items, so the whole history is trained on and not only its latest `width` items.
    Windows with fewer than 2 items (nothing to predict from) are dropped."""
    starts, ends = [], []
    for row in np.asarray(rows, dtype=np.int64):
        first, last = int(sequences.offsets[row]), int(sequences.offsets[row + 1])
        for end in range(last, first + 1, -step):
            starts.append(max(first, end - width))
            ends.append(end)
    starts, ends = np.asarray(starts, dtype=np.int64), np.asarray(ends, dtype=np.int64)
    kept = ends - starts  # (N,) items per window, at most width
    column = np.arange(width)  # (W,)
    filled = column[None, :] >= (width - kept)[:, None]  # (N, W): True where an item goes
    source = ends[:, None] - width + column[None, :]  # (N, W): flat index of that item
    out = np.zeros((len(ends), width), dtype=np.int64)
    out[filled] = sequences.items[source[filled]]
    return out


def pretrain(sequences, config: BackboneConfig, train_config: TrainConfig, sampled_softmax: int = 0,
             device: torch.device | None = None, valid_fraction: float = 0.05,
             on_progress: Callable[[Progress], bool | None] | None = None,
             backbone: Backbone | None = None, windows: bool = False, patience: int | None = None,
             item_init: str = "random") -> PretrainOutcome:
    """Pretrain (or continue pretraining `backbone`) on every user's sequence but a validation share.

    item_init: how a new backbone's item embedding starts (peterrec.item_init.ITEM_INITS; 'svd' from the
    training users' bags of items, held fixed while the blocks train).
    windows: train on every window of each history (pretrain_arrays' width, cut every max_len items: a
    causal window overlaps the next by the one item it predicts), not only on its latest max_len items.
    patience: measure the validation loss after every epoch, keep the weights of the best epoch and stop
    once `patience` epochs in a row have not beaten it; None trains every epoch without validating."""
    if sequences.vocab_size > config.vocab_size:
        raise ValueError(f"the sequences use a vocabulary of {sequences.vocab_size} items but the backbone "
                         f"has vocab_size {config.vocab_size}")
    if backbone is not None and item_init != "random":
        raise ValueError(f"item_init {item_init!r} starts a new backbone; continuing one keeps its embedding")
    device = device or torch.device("cpu")
    torch.manual_seed(train_config.seed)
    train_rows, valid_rows = split_users(len(sequences), valid_fraction, train_config.seed)
    if backbone is None:
        backbone = Backbone(config)
        init_item_embedding(backbone, item_init, sequences, train_rows, train_config.seed)
    backbone = backbone.to(device)
    objective = make_objective(backbone, sampled_softmax).to(device)
    valid_items = pretrain_arrays(sequences, config, valid_rows)  # the latest window of held-out users
    if windows:
        train_items = window_arrays(sequences, train_rows, valid_items.shape[1], config.max_len)
    else:
        train_items = pretrain_arrays(sequences, config, train_rows)
    precision = train_config.precision
    before = mean_loss(objective, valid_items, device, precision=precision)
    best = {"loss": float("inf"), "epoch": 0}

    def validate() -> float:  # the loop maximises its metric: the negated validation loss
        return -mean_loss(objective, valid_items, device, precision=precision)

    def stop_when_flat(progress: Progress) -> bool:
        if -progress.metric < best["loss"]:
            best.update(loss=-progress.metric, epoch=progress.epoch)
        return progress.epoch - best["epoch"] >= patience

    watch = patience is not None
    result = train(objective, (train_items,), train_config, device, evaluate=validate if watch else None,
                   on_progress=on_progress, on_epoch_end=stop_when_flat if watch else None)
    after = mean_loss(objective, valid_items, device, precision=precision)
    curve = [{"epoch": h["epoch"] + 1, "step": h["step"], "train_loss": h["loss"], "valid_loss": -h["metric"]}
             for h in result.history]
    return PretrainOutcome(backbone, objective, result, before, after, len(train_items), curve, item_init)


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
