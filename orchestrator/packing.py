"""Which tasks of a job train together: fused packs of up to K tasks per worker (`finetune --pack`).

A pack is one Ray task that trains its members in one forward pass over the shared backbone per step
(peterrec.fused). Only tasks over the shared frozen backbone can share a pass (modes peterrec and
finecls), and members share one bf16 setting; every other task runs alone, as without packing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


def parse_pack(text: str) -> int | str:
    """`--pack` value: a positive int, or "auto"."""
    if str(text).strip().lower() == "auto":
        return "auto"
    try:
        k = int(text)
    except (TypeError, ValueError):
        raise ValueError(f"--pack takes a number of tasks or 'auto' (got {text!r})") from None
    if k < 1:
        raise ValueError(f"--pack must be >= 1 (got {k})")
    return k


@dataclass
class Unit:
    """What one Ray task runs: one task alone, or a pack of several; `retries` left for a lone task."""

    names: list[str]
    retries: int
    reported: set[str] = field(default_factory=set)  # a running pack's tasks whose result has come back

    @property
    def packed(self) -> bool:
        return len(self.names) > 1


def packable_names(names: list[str], settings: dict) -> list[str]:
    from peterrec.finetune import packable

    return [n for n in names if packable(settings[n])]


def steps_per_task(names: list[str], settings: dict, task_data: dict) -> dict[str, int]:
    """Each task's optimiser steps, from its train split and its TrainConfig."""
    return {n: settings[n].train.total_steps(len(task_data[n].part("train")[1])) for n in names}


def worker_slots(cluster: dict, cpus_per_task: float, gpus_per_task: float, max_concurrent: int) -> int:
    """How many workers (lone tasks or packs) the cluster runs at once."""
    slots = int(cluster["cpus"] // cpus_per_task)
    if gpus_per_task:
        slots = min(slots, int(cluster["gpus"] // gpus_per_task))
    if max_concurrent:
        slots = min(slots, max_concurrent)
    return max(1, slots)


def auto_candidates(packable: list[str], steps: dict[str, int], slots: int) -> tuple[list[str], int]:
    """What --pack auto measures: up to 16 of the packable tasks (no more than each slot will get,
    since packs never leave slots idle), and the task-steps each slot will train (its time budget
    is a small share of theirs)."""
    candidates = packable[:max(1, min(16, math.ceil(len(packable) / slots)))]
    return candidates, sum(steps[n] for n in packable) // slots


def measure_on_worker(refs, plan, packable: list[str], steps: dict[str, int], slots: int, cpus: float,
                      gpus: float) -> dict:
    """--pack auto on a cluster: {"k", "reason", "samples_per_s"} from orchestrator.worker.measure_pack,
    run on a worker holding a task's resources, over auto_candidates."""
    import ray

    from orchestrator.worker import measure_pack

    candidates, work_steps = auto_candidates(packable, steps, slots)
    if len(candidates) < 2:
        return {"k": 1, "reason": "fewer than two packable tasks per worker", "samples_per_s": {}}
    measure = ray.remote(measure_pack).options(num_cpus=cpus, num_gpus=gpus)
    return ray.get(measure.remote(refs, [plan.spec(n) for n in candidates], [plan.task_data[n] for n in candidates],
                                  [plan.task_settings[n] for n in candidates], cpus, gpus, work_steps))


def plan_units(names: list[str], settings: dict, steps: dict[str, int], k: int, slots: int,
               retries: int) -> list[Unit]:
    """Submission units, in the order to run them.

    names: the tasks to run, in spec order; settings: their FinetuneSettings; steps: their training
    steps; k: the most tasks per pack; slots: how many units can run at once.
    Packs never leave slots idle: K is lowered to ceil(packable / slots) when that is smaller, and
    the packable tasks are spread over as few packs as K allows, in sizes that differ by at most one.
    Within each bf16 setting, packed tasks are sorted by training steps (longest first) so a pack's
    members finish together; units then run longest first. With k = 1 every task runs alone, in
    spec order.
    """
    if k <= 1:
        return [Unit([n], retries) for n in names]
    pack_these = set(packable_names(names, settings))
    alone = [[n] for n in names if n not in pack_these]
    groups: dict[bool, list[str]] = {}
    for n in names:
        if n in pack_these:
            groups.setdefault(settings[n].train.bf16, []).append(n)
    packs = []
    for members in groups.values():
        members.sort(key=lambda n: -steps[n])
        size = max(1, min(k, math.ceil(len(members) / max(1, slots))))
        count = math.ceil(len(members) / size)
        base, extra = divmod(len(members), count)
        start = 0
        for i in range(count):
            end = start + base + (i < extra)
            packs.append(members[start:end])
            start = end
    units = sorted(packs + alone, key=lambda unit: -max(steps[n] for n in unit))
    return [Unit(unit, retries) for unit in units]
