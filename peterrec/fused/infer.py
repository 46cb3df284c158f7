"""predict_mixed: score a batch whose rows belong to different tasks, with one fused backbone pass.

Bundle inference ([bundle]) serves many tasks over one backbone; requests for different tasks are
scored together: the rows of every task that shares `backbone` (peterrec / finecls) go through the
backbone once per chunk with PackedPatches, each task's head scores its own rows. Tasks with a
backbone of their own (finelast, fineall, peterzero) are scored through their own TaskModel.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from peterrec.backbone import Backbone, limit_items
from peterrec.fused.patches import PackedPatches
from peterrec.fused.stacked import StackedPatches
from peterrec.fused.train import split_representations
from peterrec.modes import PACKABLE_MODES
from peterrec.task_model import TaskModel
from peterrec.training import autocast_for


def _row_tasks(task_of_row, names: list[str]) -> torch.Tensor:
    """Task names (or indices into `names`) per row -> (N,) int64 indices."""
    index = {n: i for i, n in enumerate(names)}
    if isinstance(task_of_row, torch.Tensor) or (isinstance(task_of_row, np.ndarray)
                                                  and task_of_row.dtype.kind in "iu"):
        rows = torch.as_tensor(task_of_row).to(torch.long).cpu()
    else:
        unknown = [t for t in task_of_row if isinstance(t, str) and t not in index]
        if unknown:
            raise ValueError(f"unknown task {unknown[0]!r} in task_of_row; known tasks: {names}")
        rows = torch.tensor([index[t] if isinstance(t, str) else int(t) for t in task_of_row], dtype=torch.long)
    bad = rows[(rows < 0) | (rows >= len(names))]
    if len(bad):
        raise ValueError(f"task index {int(bad[0])} in task_of_row is out of range for tasks {names}")
    return rows


@torch.no_grad()
def predict_mixed(backbone: Backbone, task_models: Mapping[str, TaskModel], items,
                  task_of_row: Sequence, batch_size: int = 512, strategy: str = "auto",
                  precision: str = "fp32", stacked: StackedPatches | None = None) -> list[torch.Tensor]:
    """Scores of each row under its own task: a list of N 1-D CPU float tensors (class logits for a
    classify task, scores over the whole target vocabulary for a coldrec task), in row order.
    precision: fp32 or bf16 (training.autocast_for). stacked: the patches of task_models, in their order,
    stacked once (stacked_for): rows then gather their task's patches instead of a per-batch restack.

    items: (N, L) item ids (array or tensor); task_of_row: N task names (or indices into task_models).
    """
    names = list(task_models)
    models = [task_models[n] for n in names]
    rows_task = _row_tasks(task_of_row, names)
    items = torch.as_tensor(items)
    if items.dim() != 2 or len(items) != len(rows_task):
        raise ValueError(f"items must be (N, L) with N = len(task_of_row) = {len(rows_task)} "
                         f"(got shape {tuple(items.shape)})")
    device = next(backbone.parameters()).device
    with autocast_for(device, precision):
        return _predict(backbone, models, items, rows_task, batch_size, strategy, device, stacked)


def stacked_for(backbone: Backbone, task_models: Mapping[str, TaskModel]) -> StackedPatches:
    """The StackedPatches of predict_mixed(..., stacked=): every task's patches over `backbone`, in order
    (tasks with a backbone of their own take no part in the fused pass: None)."""
    return StackedPatches(backbone, [m.patches if m.mode in PACKABLE_MODES and m.backbone is backbone else None
                                     for m in task_models.values()])


def _predict(backbone: Backbone, models: list[TaskModel], items: torch.Tensor, rows_task: torch.Tensor,
             batch_size: int, strategy: str, device: torch.device,
             stacked: StackedPatches | None) -> list[torch.Tensor]:
    out: list[torch.Tensor | None] = [None] * len(rows_task)
    fused = torch.tensor([m.mode in PACKABLE_MODES and m.backbone is backbone for m in models], dtype=torch.bool)

    def put(rows: torch.Tensor, scores: torch.Tensor) -> None:
        for r, s in zip(rows.tolist(), scores.float().cpu().unbind(0)):
            out[r] = s

    # Tasks with their own backbone: their own forward, in chunks.
    for k in (~fused).nonzero().flatten().tolist():
        rows = (rows_task == k).nonzero().flatten()
        for i in range(0, len(rows), batch_size):
            chunk = rows[i:i + batch_size]
            put(chunk, models[k].scores(items[chunk].to(device)))

    # Shared-backbone tasks: rows sorted by task, one fused pass per chunk.
    shared = fused[rows_task].nonzero().flatten()
    order = shared[torch.argsort(rows_task[shared], stable=True)]
    for i in range(0, len(order), batch_size):
        chunk = order[i:i + batch_size]
        tasks, local, counts = torch.unique_consecutive(rows_task[chunk], return_inverse=True, return_counts=True)
        tasks, counts = tasks.tolist(), counts.tolist()
        if stacked is not None and len(tasks) > 1:  # one task alone: its own patches, no gathers
            adapter = stacked.rows(rows_task[chunk].to(device))
        else:
            adapter = PackedPatches(backbone, [models[k].patches for k in tasks], local.to(device), strategy)
        chunk_items = items[chunk].to(device)
        for k, rows in zip(tasks, torch.arange(len(chunk)).split(counts)):  # each task's input length
            chunk_items[rows] = limit_items(chunk_items[rows], models[k].input_len, backbone.config.pad_id)
        chunk_items = backbone.trimmed(chunk_items)
        hidden = backbone(chunk_items, adapter)  # (b, L, C)
        reps = split_representations(hidden, [models[k] for k in tasks], counts, chunk_items)
        for k, rows, rep in zip(tasks, chunk.split(counts), reps):
            put(rows, models[k].head.scores(rep))
    return out
