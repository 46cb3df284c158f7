"""A synthetic world for tests, demos and benchmarks: `python cli.py synth`.

Users' latent traits drive both their item sequences (world.py) and the labels of every
downstream task (downstream.py), so a backbone pretrained on the sequences genuinely helps the
tasks. Deterministic for a seed; chunked over users so memory stays bounded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tasks.dataset import write_dataset
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
) -> Path:
    """Generate a source domain and `tasks` tasks into `out`; return the spec path."""
    if users < 1 or items < 1 or tasks < 0 or max_len < 1:
        raise ValueError("users, items and max_len must be >= 1 and tasks >= 0")
    world = make_world(users, items, seed)
    offsets, flat = make_sequences(world, max_len, seed)
    width = len(str(users - 1))
    user_ids = np.array([f"u{i:0{width}d}" for i in range(users)], dtype=object)
    sequences = Sequences(user_ids, offsets, flat, vocab_size=items + 1)
    new_tasks = [make_task(index, world.traits, user_ids, seed) for index in range(tasks)]
    made_by = command or (
        f"python cli.py synth --out {out} --tasks {tasks} --users {users} --items {items} --seed {seed} --max-len {max_len}"
    )
    return write_dataset(
        out, sequences, [f"item{j}" for j in range(1, items + 1)], new_tasks,
        seed=seed, notes=[f"Made by: {made_by}"], force=force,
    )
