"""train_pack: train K tasks at once, one fused forward/backward over the shared backbone per step.

Each task keeps everything training.train would give it alone: the same training.training_steps
(its shuffled batch order, epochs / max_steps, evaluation, keep-best, progress callback), its own
negative-sampling generator (seeded so it draws what the global RNG would after train()'s
manual_seed), its own AdamW and grad clipping. A step
concatenates the next batch of every active task, runs the backbone once with PackedPatches, takes
each task's loss on its own rows and backpropagates their sum once: rows never mix, so each task's
parameters receive exactly its own loss's gradient. A task that finishes, is asked to stop or
raises leaves the pack; the others go on.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from peterrec.backbone import Backbone
from peterrec.pooling import pool
from peterrec.fused.patches import PackedPatches
from peterrec.modes import PACKABLE_MODES
from peterrec.task_model import TaskModel
from peterrec.training import (Progress, TrainConfig, TrainResult, autocast_for, make_optimizer, optimizer_step,
                               trainable_parameters, training_steps)



@dataclass
class PackTask:
    """One task of a pack: what training.train(model, arrays, config, evaluate=, on_progress=,
    loss_fn=model.loss) would take for it alone."""

    name: str
    model: TaskModel  # must share the pack's backbone object (mode peterrec or finecls)
    arrays: tuple[np.ndarray, np.ndarray]  # (items (N, L), labels (N,)) of the train split
    config: TrainConfig
    evaluate: Callable[[], float] | None = None  # validation metric, higher is better
    on_progress: Callable[[Progress], bool | None] | None = None  # may return True to stop the task


@dataclass
class PackOutcome:
    """How one task of a pack ended: a TrainResult, or the error that made it leave the pack."""

    name: str
    result: TrainResult | None
    error: BaseException | None = None
    traceback: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def check_packable(models: Sequence[TaskModel]) -> Backbone:
    """The shared backbone of `models`; ValueError naming every model that cannot join the pack."""
    if not models:
        raise ValueError("a pack needs at least one task")
    backbone = models[0].backbone
    problems = []
    for i, m in enumerate(models):
        if m.mode not in PACKABLE_MODES:
            problems.append(f"task {i}: mode {m.mode!r} cannot be packed (expected one of {PACKABLE_MODES})")
        if m.backbone is not backbone:
            problems.append(f"task {i}: its backbone is not the pack's shared backbone object")
        if any(p.requires_grad for p in m.backbone.parameters()):
            problems.append(f"task {i}: the shared backbone must be frozen")
    if problems:
        raise ValueError("cannot pack these tasks: " + "; ".join(problems))
    return backbone


def split_representations(hidden: torch.Tensor, models: Sequence[TaskModel], counts: list[int],
                          items: torch.Tensor):
    """Each model's user representations (n_k, C) from its rows of the packed hidden (B, L, C) of `items`.

    Reduces (B, L, C) -> (B, C) once per parameter-free representation kind and splits that: slicing the
    big tensor per task would make backward allocate a full (B, L, C) gradient for every task. A learned
    pooling (attention) reads its own rows only."""
    cfg = models[0].backbone.config
    mask = items != cfg.pad_id
    shared = {m.representation for m in models if m.pooling is None}
    reps = {how: pool(hidden, mask, how, cfg.causal).split(counts) for how in shared}
    out, start = [], 0
    for k, m in enumerate(models):
        if m.pooling is None:
            out.append(reps[m.representation][k])
        else:
            rows = slice(start, start + counts[k])
            out.append(m.represent(hidden[rows], items[rows]))
        start += counts[k]
    return out


def task_loss(model: TaskModel, rep: torch.Tensor, labels: torch.Tensor,
              generator: torch.Generator | None) -> torch.Tensor:
    """A task's loss from its user representations (same as TaskModel.loss on its rows)."""
    return model.head.loss(rep, labels, generator=generator)


class _Member:
    """One task inside the pack: training.training_steps (the run's bookkeeping, as training.train
    has it) with its own optimizer and negative-sampling generator; the pack does the steps."""

    def __init__(self, task: PackTask, device: torch.device, start: float):
        self.task, self.name, self.config, self.model = task, task.name, task.config, task.model
        try:
            self.params = trainable_parameters(self.model)
        except ValueError as e:
            raise ValueError(f"task {task.name!r}: {e}") from None
        self.optimizer = make_optimizer(self.params, self.config)
        # What the global RNG would draw after train()'s torch.manual_seed(config.seed).
        self.negatives = torch.Generator(device=device).manual_seed(self.config.seed)
        self.batch: list[torch.Tensor] | None = None  # the next batch; None once the task has left
        self.outcome: PackOutcome | None = None
        self._loop = training_steps(self.model, self.params, task.arrays, self.config, device, task.evaluate,
                                    task.on_progress, start=start)

    def advance(self, loss_value: float | None) -> None:
        """Finish the last step (None: start) and fetch the next batch, or leave the pack."""
        try:
            self.batch = next(self._loop) if loss_value is None else self._loop.send(loss_value)
        except StopIteration as end:
            self.batch, self.outcome = None, PackOutcome(self.name, end.value)
        except Exception as exc:  # noqa: BLE001 - a task's failure must not stop the pack
            self.fail(exc)

    def fail(self, exc: BaseException) -> None:
        self.batch = None
        self.outcome = PackOutcome(self.name, None, exc, "".join(traceback.format_exception(exc)))
        self._loop.close()

    def optimise(self) -> None:
        optimizer_step(self.params, self.optimizer, self.config.grad_clip)


def packed_representations(backbone: Backbone, models: Sequence[TaskModel], item_batches: Sequence[torch.Tensor],
                           strategy: str = "auto") -> list[torch.Tensor]:
    """Each model's user representations (n_k, C) of its own batch (n_k, L), from one forward pass
    of the concatenated batches over the backbone, each row patched by its own model."""
    items = backbone.trimmed(torch.cat(list(item_batches)))  # (B, L)
    counts = [len(b) for b in item_batches]
    task_of_row = torch.repeat_interleave(torch.arange(len(models), device=items.device),
                                          torch.tensor(counts, device=items.device))
    hidden = backbone(items, PackedPatches(backbone, [m.patches for m in models], task_of_row, strategy))  # (B, L, C)
    return split_representations(hidden, models, counts, items)


def _fused_losses(backbone: Backbone, members: list[_Member], strategy: str, autocast):
    """One forward over the members' concatenated batches -> ({member: loss}, {member: error})."""
    losses, errors = {}, {}
    with autocast:
        reps = packed_representations(backbone, [m.model for m in members], [m.batch[0] for m in members], strategy)
        for m, rep in zip(members, reps):
            try:
                losses[m] = task_loss(m.model, rep, m.batch[1], m.negatives)
            except Exception as exc:  # noqa: BLE001
                errors[m] = exc
    return losses, errors


def _blame(backbone: Backbone, members: list[_Member], autocast) -> dict:
    """After a fused forward failed: run each member's batch alone (no grad) to find who broke it.
    Negatives are drawn from a throwaway generator, so the members' own streams are untouched."""
    errors = {}
    with torch.no_grad(), autocast:
        for m in members:
            try:
                task_loss(m.model, packed_representations(backbone, [m.model], [m.batch[0]])[0], m.batch[1], None)
            except Exception as exc:  # noqa: BLE001
                errors[m] = exc
    return errors


def train_pack(tasks: Sequence[PackTask], device: torch.device | None = None,
               strategy: str = "auto") -> dict[str, PackOutcome]:
    """Train `tasks` together over their shared frozen backbone; {task name: PackOutcome}, in order.

    For the same data and seeds each task ends with the weights training.train would give it alone
    (up to floating-point reassociation). Errors of one task are caught and reported in its outcome;
    only an error that no single task's batch reproduces alone (e.g. out of memory) is raised.
    """
    outcomes = {o.name: o for o in iter_train_pack(tasks, device, strategy)}
    return {t.name: outcomes[t.name] for t in tasks}


def iter_train_pack(tasks: Sequence[PackTask], device: torch.device | None = None,
                    strategy: str = "auto") -> Iterator[PackOutcome]:
    """train_pack, yielding each task's PackOutcome as soon as it leaves the pack (finished, stopped
    or failed), while the others train on: a caller can save and evaluate it at once."""
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise ValueError(f"task names in a pack must be unique (got {names})")
    backbone = check_packable([t.model for t in tasks])
    device = device or next(backbone.parameters()).device
    if len({t.config.precision for t in tasks}) > 1:
        raise ValueError("tasks in a pack must agree on precision (fp32 or bf16)")
    autocast = autocast_for(device, tasks[0].config.precision)
    start = time.perf_counter()
    members = []
    for t in tasks:
        try:
            members.append(_Member(t, device, start))
        except Exception as exc:  # noqa: BLE001 - e.g. nothing to train: that task alone is refused
            yield PackOutcome(t.name, None, exc, "".join(traceback.format_exception(exc)))
    for m in members:
        m.advance(None)
    left = set()

    def leaving():
        for m in members:
            if m.batch is None and m not in left:
                left.add(m)
                yield m.outcome

    yield from leaving()
    while active := [m for m in members if m.batch is not None]:
        try:
            losses, errors = _fused_losses(backbone, active, strategy, autocast)
        except Exception:  # noqa: BLE001 - find the task(s) whose batch breaks the forward
            errors = _blame(backbone, active, autocast)
            if not errors:
                raise
            for m, exc in errors.items():
                m.fail(exc)
            yield from leaving()
            continue
        for m, exc in errors.items():
            m.fail(exc)
        if losses:
            for m in losses:
                m.optimizer.zero_grad(set_to_none=True)
            torch.stack(list(losses.values())).sum().backward()
            values = torch.stack([loss.detach().float() for loss in losses.values()]).tolist()  # one sync
            for (m, _), value in zip(losses.items(), values):
                try:
                    m.optimise()
                except Exception as exc:  # noqa: BLE001
                    m.fail(exc)
                    continue
                m.advance(value)
        yield from leaving()


__all__ = ["PackOutcome", "PackTask", "check_packable", "iter_train_pack", "packed_representations",
           "split_representations", "task_loss", "train_pack"]
