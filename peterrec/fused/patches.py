"""PackedPatches: many tasks' patches applied in one forward pass over the shared, frozen backbone.

A packed batch holds rows of K tasks. The backbone's convolutions run once over all rows; at each
adapter hook every row gets its own task's patch and LayerNorm2 affine. The tasks' own TaskPatches
stay the source of truth (their nn.Parameters are read, never copied), so each task keeps its own
weights, optimizer state and bundle.

Two ways to apply K patches to their rows (`strategy`):
- "group": each task's own BlockPatches runs on its contiguous rows (K small matmuls per hook);
  the results are exactly those of the task alone. Any patch widths, any insertion mix.
- "bmm":   the K patches' weights are stacked (torch.stack each forward, so gradients flow back to
  each task's parameters) and applied by one batched matmul over a (K, rows*L, C) view of the
  batch; narrower patches are zero-padded to the widest. One normalisation, then per-row affine.
Measured on 2 CPU cores (C=64 and 256, per-task batch 32, K=4 and 16) the two are within noise of
each other: the frozen convolutions and elementwise work dominate. "auto" takes "group" below
BMM_FROM_K tasks (exactly the alone arithmetic, no padding) and "bmm" from there on, since one
batched matmul per hook instead of K small ones is what a GPU wants.

Tasks may mix serial and parallel insertion, and trained or shared LayerNorm2. A task without
patches (finecls) is the identity at every hook and uses the backbone's LayerNorm2.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from peterrec.backbone import Backbone
from peterrec.patches import PATCH_INPUT, BlockPatches, TaskPatches

STRATEGIES = ("auto", "group", "bmm")
BMM_FROM_K = 4  # "auto" uses bmm from this many tasks in a batch (see module docstring)


class PackedPatches:
    """Adapter for Backbone.forward over a batch whose row r belongs to task task_of_row[r].

    patches: one TaskPatches per task (None = no patches, as in finecls), all made for `backbone`.
    task_of_row: (B,) int tensor of task indices 0..K-1, in any order (sorted is fastest).
    """

    def __init__(self, backbone: Backbone, patches: Sequence[TaskPatches | None], task_of_row: torch.Tensor,
                 strategy: str = "auto"):
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown pack strategy {strategy!r} (expected one of {', '.join(STRATEGIES)})")
        self.patches = list(patches)
        if not self.patches:
            raise ValueError("a pack needs at least one task")
        n_blocks = len(backbone.blocks)
        for k, p in enumerate(self.patches):
            if p is not None and len(p.blocks) != n_blocks:
                raise ValueError(f"task {k} of the pack has patches for {len(p.blocks)} blocks; "
                                 f"the backbone has {n_blocks}")
        self.k = len(self.patches)
        self.task_of_row = task_of_row.to(torch.long)
        counts = torch.bincount(self.task_of_row, minlength=self.k)
        if len(counts) != self.k:
            raise ValueError(f"task_of_row holds indices beyond the pack's {self.k} tasks")
        self.counts = counts.tolist()
        n_rows = len(self.task_of_row)
        self.sorted = n_rows < 2 or bool((self.task_of_row[1:] >= self.task_of_row[:-1]).all())
        if strategy == "auto":
            strategy = "bmm" if sum(c > 0 for c in self.counts) >= BMM_FROM_K else "group"
        self.strategy = strategy
        self._blocks = [_PackedBlock(self, i) for i in range(n_blocks)]
        self._prepare_layout()

    def block(self, i: int) -> "_PackedBlock":
        return self._blocks[i]

    def embed(self, items: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Each row's item embeddings with its own task's embedding patch added (tasks without one: none)."""
        patched = [k for k, p in enumerate(self.patches) if p is not None and p.embedding is not None]
        if not patched:
            return x
        delta = torch.zeros_like(x)
        for k in patched:
            rows = (self.task_of_row == k).nonzero().flatten()
            if len(rows):
                delta = delta.index_put((rows,), self.patches[k].embedding(items[rows]).to(x.dtype))
        return x + delta

    def task_block(self, k: int, i: int) -> BlockPatches | None:
        p = self.patches[k]
        return None if p is None else p.blocks[i]

    # Row layout -------------------------------------------------------------------------------------
    def _prepare_layout(self) -> None:
        device = self.task_of_row.device
        present = [k for k in range(self.k) if self.counts[k]]
        # group: per-task row segments (slices when sorted, index lists otherwise)
        if self.sorted:
            starts = [0]
            for c in self.counts:
                starts.append(starts[-1] + c)
            self.segments = [(k, slice(starts[k], starts[k + 1])) for k in present]
            self.inverse = None
        else:
            self.segments = [(k, (self.task_of_row == k).nonzero().squeeze(1)) for k in present]
            order = torch.cat([idx for _, idx in self.segments])
            self.inverse = torch.empty_like(order)
            self.inverse[order] = torch.arange(len(order), device=device)
        # bmm: row r sits at slot task*n_max + rank-within-task of a (K*n_max, L, C) padded layout
        self.n_max = max(self.counts)
        if self.sorted and all(c == self.n_max for c in self.counts):
            self.dest = None  # (B, L, C) already is (K, n, L, C): a free view
        else:
            rank = torch.empty_like(self.task_of_row)
            for k, idx in self.segments:
                rank[idx] = torch.arange(self.counts[k], device=device)
            self.dest = self.task_of_row * self.n_max + rank  # (B,)
        # Which tensor a patch reads (patches.PATCH_INPUT), per insertion kind present; a task without
        # patches adds zero whatever it reads, so it takes the first kind.
        kinds = [None if p is None else p.config.insertion for p in self.patches]
        present_kinds = sorted({kinds[k] for k in present if kinds[k] is not None}) or [next(iter(PATCH_INPUT))]
        self.insertions = present_kinds
        self.row_kind = None  # (B, 1, 1) index into self.insertions per row, when the pack mixes kinds
        if len(present_kinds) > 1:
            of_task = [present_kinds.index(k) if k is not None else 0 for k in kinds]
            self.row_kind = torch.tensor(of_task, device=device)[self.task_of_row][:, None, None]
        self.any_ln2 = any(p is not None and p.config.train_layernorm2 for p in self.patches)

    def group_apply(self, fn, *tensors: torch.Tensor) -> torch.Tensor:
        """fn(k, *row_slices_of_task_k) for each task present, reassembled in row order."""
        if self.inverse is None:  # split, not slicing: one backward for all parts, not one per part
            parts = [t.split(self.counts) for t in tensors]
            outs = [fn(k, *(p[k] for p in parts)) for k, _ in self.segments]
        else:
            outs = [fn(k, *(t.index_select(0, idx) for t in tensors)) for k, idx in self.segments]
        out = torch.cat(outs) if len(outs) > 1 else outs[0]
        return out if self.inverse is None else out.index_select(0, self.inverse)

    def to_slots(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, C) -> (K, n_max*L, C), each task's rows in its own slot (zero-padded)."""
        b, length, c = x.shape
        if self.dest is not None:
            x = x.new_zeros(self.k * self.n_max, length, c).index_copy(0, self.dest, x)
        return x.reshape(self.k, self.n_max * length, c)

    def from_slots(self, y: torch.Tensor, length: int) -> torch.Tensor:
        y = y.reshape(self.k * self.n_max, length, y.shape[-1])
        return y if self.dest is None else y.index_select(0, self.dest)


def stack_patch(patches: list[nn.Module | None], channels: int, like: torch.Tensor):
    """Stack K patches into (Wd (K, C, w), bd (K, 1, w), Wu (K, w, C), bu (K, 1, C)); absent or
    narrower patches are zero-padded, which adds exactly zero (GELU(0) = 0)."""
    width = max((p.down.out_features for p in patches if p is not None), default=1)
    zero_d, zero_u = like.new_zeros(width, channels), like.new_zeros(channels, width)
    wd, bd, wu, bu = [], [], [], []
    for p in patches:
        if p is None:
            wd.append(zero_d), bd.append(like.new_zeros(width)), wu.append(zero_u), bu.append(like.new_zeros(channels))
            continue
        pad = width - p.down.out_features
        wd.append(F.pad(p.down.weight, (0, 0, 0, pad)) if pad else p.down.weight)  # (w, C)
        bd.append(F.pad(p.down.bias, (0, pad)) if pad else p.down.bias)
        wu.append(F.pad(p.up.weight, (0, pad)) if pad else p.up.weight)  # (C, w)
        bu.append(p.up.bias)
    return (torch.stack(wd).transpose(1, 2), torch.stack(bd)[:, None], torch.stack(wu).transpose(1, 2),
            torch.stack(bu)[:, None])


class _PackedBlock:
    """The BlockAdapter of block i for a packed batch."""

    def __init__(self, pack: PackedPatches, i: int):
        self.pack, self.i = pack, i

    def conv(self, which: int, conv_in: torch.Tensor, conv_out: torch.Tensor) -> torch.Tensor:
        pack = self.pack
        if pack.strategy == "group":
            def one(k, x, h):
                bp = pack.task_block(k, self.i)
                return h if bp is None else bp.conv(which, x, h)
            return pack.group_apply(one, conv_in, conv_out)
        src = PATCH_INPUT[pack.insertions[0]](conv_in, conv_out)  # (B, L, C)
        for i, kind in enumerate(pack.insertions[1:], start=1):  # a pack mixing kinds: each row its own
            src = torch.where(pack.row_kind == i, PATCH_INPUT[kind](conv_in, conv_out), src)
        patches = [None if bp is None else (bp.patch1 if which == 0 else bp.patch2)
                   for bp in (pack.task_block(k, self.i) for k in range(pack.k))]
        wd, bd, wu, bu = stack_patch(patches, src.shape[-1], src)
        x = pack.to_slots(src)  # (K, n*L, C)
        h = F.gelu(torch.baddbmm(bd, x, wd))  # (K, n*L, w)
        y = torch.baddbmm(bu, h, wu)  # (K, n*L, C)
        return conv_out + pack.from_slots(y, src.shape[1])

    def norm2(self, h: torch.Tensor, layer_norm: nn.LayerNorm) -> torch.Tensor:
        pack = self.pack
        if not pack.any_ln2:
            return layer_norm(h)
        if pack.strategy == "group":
            def one(k, x):
                bp = pack.task_block(k, self.i)
                return layer_norm(x) if bp is None else bp.norm2(x, layer_norm)
            return pack.group_apply(one, h)
        own = [pack.task_block(k, self.i) for k in range(pack.k)]
        own = [None if bp is None else bp.ln2 for bp in own]
        gamma = torch.stack([layer_norm.weight if ln is None else ln.weight for ln in own])  # (K, C)
        beta = torch.stack([layer_norm.bias if ln is None else ln.bias for ln in own])
        normed = F.layer_norm(h, layer_norm.normalized_shape, None, None, layer_norm.eps)  # (B, L, C)
        rows = pack.task_of_row
        return torch.addcmul(beta.index_select(0, rows)[:, None], normed, gamma.index_select(0, rows)[:, None])
