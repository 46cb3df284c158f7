"""The backbone's forward through torch.compile, for fine-tuning steps (`--compile`).

At the small widths of many-task jobs (C=32, batches of 64) a step is made of many small elementwise
operations (LayerNorm, ReLU, the padding masks, residual adds, the taps' copies), each paying a full pass
over memory; inductor fuses them. Compiling costs tens of seconds per process (less with inductor's
on-disk cache), so it pays only for a worker that runs many steps: benchmarks/bench_compile.py measures
both. One compiled function per process serves every task: the backbone and its patches are arguments
(their weights graph inputs), shapes are dynamic, and torch only compiles again for what it cannot reuse
(another dtype, another set of live taps, a trainable backbone). Only the backbone is compiled: the
heads differ per task, and evaluation (no gradients) stays eager.
"""

from __future__ import annotations

import functools

import torch


def _run(backbone, items, patches):
    return backbone(items, patches)


@functools.cache
def compiled_backbone():
    """(backbone, items, patches) -> hidden states, compiled on first use in this process. Where a graph
    cannot be compiled (no C++ compiler, an unsupported operation) torch runs that part eagerly."""
    import torch._dynamo

    torch._dynamo.config.suppress_errors = True  # a compilation error falls back to eager, never fails a task
    compiled = torch.compile(_run, dynamic=True)

    def run(backbone, items, patches):
        # torch compiles a graph of its own for a batch of one row (sizes 0 and 1 are never dynamic): an
        # epoch's last batch may hold one row, not worth tens of seconds of compiling
        return _run(backbone, items, patches) if items.shape[0] < 2 else compiled(backbone, items, patches)

    return run


def training_loss(model, compile: bool):
    """The loss a task model's training steps minimise: (items, labels) -> loss, its backbone run through
    compiled_backbone() when `compile` (TrainConfig.compile), else eagerly."""
    return functools.partial(model.loss, run_backbone=compiled_backbone()) if compile else model.loss
