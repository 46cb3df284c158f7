"""StackedPatches: many tasks' patches stacked once, each row of a batch applying its own task's: inference.

PackedPatches (patches.py) stacks the patches of the tasks present in a batch at every hook, because in
training the weights change after every step. At inference they do not change until a task is reloaded, so
the stacks of every task are built once and each row gathers its own task's slice: per hook two gathers
and two batched matmuls over the rows, however many distinct tasks a batch holds, and no padded slots (a
serving batch of 64 rows spread over 100 tasks holds about 48 of them). Build a new StackedPatches whenever
a task's weights change; it keeps detached copies, not the tasks' parameters.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from peterrec.backbone import Backbone
from peterrec.fused.patches import stack_patch
from peterrec.patches import PATCH_INPUT, TaskPatches


class StackedPatches:
    """The patches of tasks 0..T-1 (None: no patches, as in finecls), stacked per block and convolution."""

    @torch.no_grad()
    def __init__(self, backbone: Backbone, patches: Sequence[TaskPatches | None]):
        patches = list(patches)
        if not patches:
            raise ValueError("StackedPatches needs at least one task")
        like = next(backbone.parameters())
        channels = backbone.config.channels
        self.convs = []  # per block: ((Wd, bd, Wu, bu) of conv 0, of conv 1), each (T, ...)
        self.ln2 = []  # per block: (gamma (T, C), beta (T, C)), or None where no task trains LayerNorm2
        for i, block in enumerate(backbone.blocks):
            own = [None if p is None else p.blocks[i] for p in patches]
            self.convs.append(tuple(
                tuple(t.detach().clone() for t in stack_patch(
                    [None if bp is None else (bp.patch1 if which == 0 else bp.patch2) for bp in own], channels, like))
                for which in (0, 1)))
            norms = [None if bp is None else bp.ln2 for bp in own]
            self.ln2.append(None if all(n is None for n in norms) else (
                torch.stack([(n or block.ln2).weight for n in norms]).detach().clone(),
                torch.stack([(n or block.ln2).bias for n in norms]).detach().clone()))
        # Embedding patches (PatchConfig.embedding_rank): each task's (A, B), detached; None without one
        self.embeddings = [None if p is None or p.embedding is None else
                           (p.embedding.a.weight.detach().clone(), p.embedding.b.detach().clone()) for p in patches]
        kinds = [None if p is None else p.config.insertion for p in patches]
        self.insertions = sorted({k for k in kinds if k is not None}) or [next(iter(PATCH_INPUT))]
        self.kind_of_task = torch.tensor([self.insertions.index(k) if k is not None else 0 for k in kinds],
                                         device=like.device)

    def rows(self, task_of_row: torch.Tensor) -> "_RowsAdapter":
        """The adapter for Backbone.forward over a batch whose row r belongs to task task_of_row[r]."""
        return _RowsAdapter(self, task_of_row.to(device=self.kind_of_task.device, dtype=torch.long))


class _RowsAdapter:
    def __init__(self, stack: StackedPatches, task_of_row: torch.Tensor):
        self.stack, self.task_of_row = stack, task_of_row
        self.row_kind = stack.kind_of_task[task_of_row][:, None, None] if len(stack.insertions) > 1 else None

    def block(self, i: int) -> "_RowsBlock":
        return _RowsBlock(self, i)

    def embed(self, items: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Each row's item embeddings with its own task's embedding patch added (tasks without one: none)."""
        delta = None
        for k, pair in enumerate(self.stack.embeddings):
            rows = (self.task_of_row == k).nonzero().flatten() if pair is not None else None
            if rows is None or not len(rows):
                continue
            a, b = pair
            delta = torch.zeros_like(x) if delta is None else delta
            delta[rows] = (a[items[rows]] @ b).to(x.dtype)
        return x if delta is None else x + delta


class _RowsBlock:
    """The BlockAdapter of block i: each row's own task's patch and LayerNorm2 affine."""

    def __init__(self, rows: _RowsAdapter, i: int):
        self.rows, self.i = rows, i

    def conv(self, which: int, conv_in: torch.Tensor, conv_out: torch.Tensor) -> torch.Tensor:
        rows, stack = self.rows, self.rows.stack
        src = PATCH_INPUT[stack.insertions[0]](conv_in, conv_out)  # (B, L, C)
        for j, kind in enumerate(stack.insertions[1:], start=1):  # tasks of both kinds: each row its own
            src = torch.where(rows.row_kind == j, PATCH_INPUT[kind](conv_in, conv_out), src)
        wd, bd, wu, bu = (t.index_select(0, rows.task_of_row) for t in stack.convs[self.i][which])
        h = F.gelu(torch.baddbmm(bd, src, wd))  # (B, L, w)
        return conv_out + torch.baddbmm(bu, h, wu)

    def norm2(self, h: torch.Tensor, layer_norm: nn.LayerNorm) -> torch.Tensor:
        affine = self.rows.stack.ln2[self.i]
        if affine is None:
            return layer_norm(h)
        gamma, beta = (t.index_select(0, self.rows.task_of_row)[:, None] for t in affine)
        normed = F.layer_norm(h, layer_norm.normalized_shape, None, None, layer_norm.eps)
        return torch.addcmul(beta, normed, gamma)
