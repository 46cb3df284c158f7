"""A synthetic world for tests, demos and benchmarks: `python cli.py synth`.

Users' latent traits drive both their item sequences (world.py) and the labels of every
downstream task (downstream.py), so a backbone pretrained on the sequences genuinely helps the
tasks. Deterministic for a seed; chunked over users so memory stays bounded.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from tasks.dataset import write_dataset
from tasks.io import INT32_MAX
from tasks.sequences import Sequences
from tasks.synth.downstream import make_task
from tasks.synth.world import make_sequences, make_world


def synthesize(
    out: str | Path,
    *,
    tasks: int = 8,
    users: int = 2000,
    items: int = 500,
    seed: int = 0,
    max_len: int = 50,
    force: bool = False,
    command: str | None = None,
    paper_regime: bool = False,
) -> Path:
    """Generate a source domain and `tasks` tasks into `out`; return the spec path. paper_regime: every
    user is labelled in every task (many labelled users per task, where fine-tuning everything should be
    the upper bound) and cold-start target tables stay small (100..150 items)."""
    if users < 1 or items < 1 or tasks < 0 or max_len < 1:
        raise ValueError("users, items and max_len must be >= 1 and tasks >= 0")
    check_size(users, items, max_len, tasks)
    world = make_world(users, items, seed)
    offsets, flat = make_sequences(world, max_len, seed)
    width = len(str(users - 1))
    user_ids = np.array([f"u{i:0{width}d}" for i in range(users)], dtype=object)
    sequences = Sequences(user_ids, offsets, flat, vocab_size=items + 1)
    new_tasks = [make_task(index, world, (offsets, flat), user_ids, seed, paper_regime) for index in range(tasks)]
    made_by = command or (
        f"python cli.py synth --out {out} --tasks {tasks} --users {users} --items {items} --seed {seed} --max-len {max_len}"
        + (" --paper-regime" if paper_regime else "")
    )
    return write_dataset(
        out, sequences, [f"item{j}" for j in range(1, items + 1)], new_tasks,
        seed=seed, notes=[f"Made by: {made_by}"], force=force,
    )


MAX_ITEMS = INT32_MAX - 1  # item ids 1..items are int32, and vocab_size = items + 1 must be one too


def check_size(users: int, items: int, max_len: int, tasks: int) -> None:
    """ValueError naming the flags when the world cannot be made: item ids beyond int32, or more memory than
    half this machine has (a rough upper bound of what generating and writing it holds at once)."""
    if items > MAX_ITEMS:
        raise ValueError(f"--items {items}: item ids are 32-bit integers, so at most {MAX_ITEMS:,} items")
    need = items * 96 + users * (max_len * 24 + tasks * 24 + 128)  # bytes: item tables; sequences, labels, ids
    try:
        have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not a POSIX system: no bound known
        return
    if need > have // 2:
        raise ValueError(f"--users {users:,} x --max-len {max_len} and --items {items:,} need about "
                         f"{need / 2**30:,.1f} GiB of memory to generate, and this machine has "
                         f"{have / 2**30:,.1f} GiB; make the world smaller")
