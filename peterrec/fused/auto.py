"""choose_pack_size: the K behind `finetune --pack auto`, from a short measurement.

Packing pays where per-step overhead and small matmuls dominate (small channels, small batches);
where the convolutions already saturate the device it gains nothing and costs memory. So measure:
a few training steps of throwaway copies of the candidate tasks' patches and heads (the real tasks
are never touched) at K = 1 (one task per step, as unpacked training runs), 2, 4, 8, 16; keep the
fastest K that fits in memory, and 1 unless packing beats it by `min_gain`.
"""

from __future__ import annotations

import copy
import itertools
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from peterrec.backbone import Backbone
from peterrec.fused.train import PackTask, check_packable, packed_representations, task_loss
from peterrec.task_model import TaskModel
from peterrec.training import autocast_for, make_optimizer, optimizer_step, trainable_parameters

SINGLE_STEPS = 4  # unpacked steps per measurement round (the tasks in turn); a pack K takes one step
MIN_BUDGET_S = 0.5  # the least time measuring takes when a short job shrinks the budget
SAVED_PER_BLOCK = 16  # (B, L, C)-sized tensors autograd keeps per residual block (estimate)


@dataclass
class PackChoice:
    k: int  # the pack size to use; 1 = train tasks one by one
    samples_per_s: dict[int, float] = field(default_factory=dict)  # measured, per K tried
    bytes_per_step: dict[int, int] = field(default_factory=dict)  # peak on CUDA, estimate on CPU
    reason: str = ""


def estimate_step_bytes(backbone: Backbone, rows: int) -> int:
    """Activation memory of one packed training step of `rows` sequences (rough, for CPU)."""
    cfg = backbone.config
    per_block = rows * cfg.max_len * cfg.channels * 4 * SAVED_PER_BLOCK
    return per_block * len(backbone.blocks)


def default_memory_limit(device: torch.device) -> int:
    if device.type == "cuda":
        return int(0.8 * torch.cuda.mem_get_info(device)[0])
    try:
        return int(0.5 * os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 1 << 34


class _Probe:
    """A throwaway copy of one task (its patches, head and optimizer) and one fixed batch."""

    def __init__(self, task: PackTask, device: torch.device):
        m = task.model
        self.model = TaskModel(m.backbone, copy.deepcopy(m.head), copy.deepcopy(m.patches), m.mode,
                               m.representation, copy.deepcopy(m.pooling), m.input_len)
        self.params, self.clip = trainable_parameters(self.model), task.config.grad_clip
        self.optimizer = make_optimizer(self.params, task.config)
        b = min(task.config.batch_size, len(task.arrays[1]))
        self.batch = [torch.as_tensor(a[:b]).to(device) for a in task.arrays]
        self.negatives = torch.Generator(device=device).manual_seed(0)

    def optimise(self) -> None:
        optimizer_step(self.params, self.optimizer, self.clip)
        self.optimizer.zero_grad(set_to_none=True)


def _packed_step(backbone: Backbone, probes: list[_Probe], strategy: str, autocast) -> int:
    with autocast:
        reps = packed_representations(backbone, [p.model for p in probes], [p.batch[0] for p in probes], strategy)
        losses = [task_loss(p.model, rep, p.batch[1], p.negatives) for p, rep in zip(probes, reps)]
    torch.stack(losses).sum().backward()
    for p in probes:
        p.optimise()
    return sum(len(p.batch[0]) for p in probes)


def _single_step(probe: _Probe, autocast) -> int:
    """The unpacked path: TaskModel.loss as training.train runs it."""
    with autocast:
        loss = probe.model.loss(*probe.batch)
    loss.backward()
    probe.optimise()
    return len(probe.batch[0])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def choose_pack_size(backbone: Backbone, candidate_tasks: Sequence[PackTask], max_k: int = 16,
                     budget_s: float = 4.0, min_gain: float = 1.1, memory_limit: int | None = None,
                     strategy: str = "auto", work_steps: int | None = None, share: float = 0.05) -> PackChoice:
    """The pack size with the highest measured training throughput (samples/s) for these tasks.

    K runs over 1, 2, 4, 8, 16 (capped by max_k and the number of candidates, which is tried too).
    Other processes may share the cores, so the sizes are measured interleaved, in rounds (one
    packed step per K, a few unpacked steps for K=1), and each K keeps its best round. Where
    rounds would not fit the time budget the largest sizes are left out (a size that does not pay
    at K=4 will not at 16). A K whose step memory exceeds memory_limit (default: 80% of free GPU
    memory, half of free RAM) is left out too. With `work_steps` (the unpacked task-steps the job
    will run on this worker) the budget shrinks to `share` of their estimated time, at least 0.5 s:
    measuring never costs a short job much of what packing could save it.
    """
    check_packable([t.model for t in candidate_tasks])
    n = min(max_k, len(candidate_tasks))
    sizes = sorted({k for k in (1, 2, 4, 8, 16) if k <= n} | {n})
    device = next(backbone.parameters()).device
    limit = memory_limit if memory_limit is not None else default_memory_limit(device)
    probes = [_Probe(t, device) for t in candidate_tasks[:n]]
    autocast = autocast_for(device, candidate_tasks[0].config.precision)  # the pack's, as train_pack runs it
    choice, notes = PackChoice(1), []
    start = time.perf_counter()

    turns = itertools.count()

    def run(k: int) -> int:  # one step of K tasks; K = 1 is unpacked training, the tasks in turn
        rows = (_single_step(probes[next(turns) % n], autocast) if k == 1
                else _packed_step(backbone, probes[:k], strategy, autocast))
        _sync(device)
        return rows

    # Warm-up (first calls pay for allocation) and the cost of one task-batch, unpacked.
    run(1)
    batch_s = min(_timed(lambda: run(1)) for _ in range(2))
    if work_steps:
        budget_s = min(budget_s, max(MIN_BUDGET_S, share * batch_s * work_steps))
    # Sizes whose memory fits, and as many as fit their warm-up and two measurement rounds.
    usable = [1]
    for k in sizes[1:]:
        rows = sum(len(p.batch[0]) for p in probes[:k])
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            warm = _timed(lambda: run(k))
            used = torch.cuda.max_memory_allocated(device) - base
        else:
            used, warm = estimate_step_bytes(backbone, rows), None
        choice.bytes_per_step[k] = used
        if used > limit:
            notes.append(f"K={k} needs ~{used >> 20} MiB > limit {limit >> 20} MiB")
            break
        left = budget_s - (time.perf_counter() - start)
        if 3 * (sum(usable[1:]) + k + SINGLE_STEPS) * batch_s > left:  # warm-up + 2 rounds, in task-batches
            notes.append(f"K>={k} not measured: time budget")
            break
        if warm is None:
            run(k)
        usable.append(k)
    best_s = {k: float("inf") for k in usable}
    samples = {k: 0 for k in usable}
    while True:
        for k in usable:
            t0 = time.perf_counter()
            samples[k] = sum(run(k) for _ in range(SINGLE_STEPS if k == 1 else 1))
            best_s[k] = min(best_s[k], time.perf_counter() - t0)
        round_s = sum(best_s.values())
        if time.perf_counter() - start + round_s > budget_s:
            break
    choice.samples_per_s = {k: samples[k] / best_s[k] for k in usable}
    one = choice.samples_per_s[1]
    best = max(choice.samples_per_s, key=choice.samples_per_s.get)
    if best > 1 and choice.samples_per_s[best] >= min_gain * one:
        choice.k = best
        head = f"K={best}: {choice.samples_per_s[best]:.0f} samples/s vs {one:.0f} one by one"
    else:
        head = f"K=1: packing measured no {min_gain:.2f}x gain over {one:.0f} samples/s one by one"
    choice.reason = "; ".join([head, *notes])
    return choice
