"""choose_precision: fp32 or bf16 for a job, from what the device has and a short measurement.

bf16 autocast (training.autocast_for) runs matmuls in bfloat16 and keeps weights, optimizer state and
reductions in fp32. On units built for it (Intel AMX and AVX512-BF16, Arm BF16, CUDA GPUs that support
it natively) that is up to 2x a step; elsewhere bf16 is emulated and slower. So, as `--pack auto`
does for packs, `auto` measures: bf16 only where the device has native bf16 matrix units AND a few
training steps of the job's own shapes, fp32 and bf16 interleaved, run at least `min_gain` faster.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from peterrec.training import (PRECISIONS, TrainConfig, autocast_for, make_optimizer, optimizer_step,
                               trainable_parameters)

CPU_BF16_UNITS = ("amx_bf16", "avx512_bf16", "sve_bf16", "bf16")  # torch.cpu.get_capabilities() keys
MIN_ROUNDS = 2
WORK_SHARE = 0.02  # the most of a job's fp32 training time a measurement may take


@dataclass
class PrecisionChoice:
    precision: str  # fp32 | bf16: what the job trains in
    reason: str  # one line for the user and state.json
    samples_per_s: dict[str, float] = field(default_factory=dict)  # measured, per precision


def native_bf16(device: torch.device) -> tuple[bool, str]:
    """(whether `device` has native bf16 matrix units, the evidence in words)."""
    if device.type == "cuda":
        native = torch.cuda.is_bf16_supported(including_emulation=False)
        return native, f"{torch.cuda.get_device_name(device)} {'supports' if native else 'lacks'} native bf16"
    if device.type == "cpu":
        caps = torch.cpu.get_capabilities()
        units = [u for u in CPU_BF16_UNITS if caps.get(u)]
        name = caps.get("cpu_name") or caps.get("architecture", "this CPU")
        return bool(units), f"{name}: {'+'.join(units)}" if units else f"{name}: no bf16 matrix units"
    return False, f"device type {device.type}: no bf16 check"


def step_probe(module: nn.Module, loss_fn: Callable[..., torch.Tensor], batch: Sequence[torch.Tensor],
               config: TrainConfig, device: torch.device) -> Callable[[str], int]:
    """One optimisation step of `module` on `batch` as training.train takes it, at a given precision:
    step(precision) -> the rows it trained. `module` must be a throwaway: its weights change."""
    params = trainable_parameters(module)
    optimizer = make_optimizer(params, config)

    def step(precision: str) -> int:
        with autocast_for(device, precision):
            loss = loss_fn(*batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer_step(params, optimizer, config.grad_clip)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return len(batch[0])

    return step


def as_asked(precision: str) -> PrecisionChoice:
    """An explicit fp32 or bf16: kept, nothing measured."""
    return PrecisionChoice(precision, f"{precision}: as asked")


def choose_precision(requested: str, device: torch.device, step: Callable[[str], int] | None = None,
                     budget_s: float = 2.0, min_gain: float = 1.1, work_steps: int | None = None) -> PrecisionChoice:
    """fp32 or bf16 for `requested` (auto | fp32 | bf16); an explicit fp32 or bf16 is kept as asked.

    `auto` is bf16 only where native_bf16(device) holds and `step` (step_probe over a throwaway copy of
    the job's model and one of its batches) runs at least min_gain faster in bf16. Other processes may
    share the cores, so the two are measured interleaved, in rounds within budget_s, and each keeps
    its best round (at least MIN_ROUNDS). work_steps: the steps the job will train per worker; a short
    job measures for at most WORK_SHARE of their time (a test job's few steps are not worth seconds)."""
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)} (got {requested!r})")
    if requested != "auto":
        return as_asked(requested)
    native, evidence = native_bf16(device)
    if not native:
        return PrecisionChoice("fp32", f"fp32: {evidence}")
    if step is None:
        return PrecisionChoice("fp32", f"fp32: {evidence}, but nothing to measure a gain on")
    sides = ("fp32", "bf16")
    for precision in sides:  # warm-up: allocation, kernel selection, bf16 weight casts
        step(precision)
    best, rows, start, rounds = {p: float("inf") for p in sides}, {}, time.perf_counter(), 0
    def budget() -> float:
        return budget_s if work_steps is None else min(budget_s, WORK_SHARE * work_steps * best["fp32"])

    while rounds < MIN_ROUNDS or time.perf_counter() - start + sum(best.values()) <= budget():
        for precision in sides if rounds % 2 == 0 else sides[::-1]:
            t0 = time.perf_counter()
            rows[precision] = step(precision)
            best[precision] = min(best[precision], time.perf_counter() - t0)
        rounds += 1
    rates = {p: rows[p] / best[p] for p in sides}
    gain = rates["bf16"] / rates["fp32"]
    measured = f"bf16 {rates['bf16']:.0f} vs fp32 {rates['fp32']:.0f} samples/s ({gain:.2f}x, {rounds} rounds)"
    if gain >= min_gain:
        return PrecisionChoice("bf16", f"bf16: {evidence}; {measured}", rates)
    return PrecisionChoice("fp32", f"fp32: {evidence}, but {measured} is under {min_gain:.2f}x", rates)
