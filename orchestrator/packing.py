"""Which tasks of a job train together: fused packs of up to K tasks per worker (`finetune --pack`).

A pack is one unit of work that trains its members in one forward pass over the shared backbone per step
(peterrec.fused). Only tasks over the shared frozen backbone can share a pass (modes.PACKABLE_MODES), and
members share one precision (fp32 or bf16); every other task runs alone, as without packing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class Unit:
    """What one worker runs: one task alone, or a pack of several."""

    names: list[str]
    reported: set[str] = field(default_factory=set)  # its tasks whose result has come back

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


def plan_units(names: list[str], settings: dict, steps: dict[str, int], k: int, slots: int) -> list[Unit]:
    """Submission units, in the order to run them.

    names: the tasks to run, in spec order; settings: their FinetuneSettings; steps: their training
    steps; k: the most tasks per pack; slots: how many units can run at once.
    Packs never leave slots idle: K is lowered to ceil(packable / slots) when that is smaller, and
    the packable tasks are spread over as few packs as K allows, in sizes that differ by at most one.
    Within each precision, packed tasks are sorted by training steps (longest first) so a pack's
    members finish together; units then run longest first. With k = 1 every task runs alone, in
    spec order.
    """
    if k <= 1:
        return [Unit([n]) for n in names]
    pack_these = set(packable_names(names, settings))
    alone = [[n] for n in names if n not in pack_these]
    groups: dict[str, list[str]] = {}
    for n in names:
        if n in pack_these:
            groups.setdefault(settings[n].train.precision, []).append(n)
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
    return [Unit(unit) for unit in units]
