"""User-level K-fold splits of a data set: every labelled user is tested exactly once.

A fold is a split of users (sequence rows), so it applies to every task alike: a user tested in fold i
is tested there in every task. The other users are split train/valid by the same seeded permutation
(valid_fraction of all users), so each fold's settings (epoch, weight decay) are chosen on its own
valid users. write_folds() writes each fold as a spec whose task tables carry the fold's splits.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from tasks.job import load_job
from tasks.spec import write_spec
from tasks.taskdata import write_task


@dataclass(frozen=True)
class Fold:
    index: int
    train: np.ndarray  # sequence rows, sorted
    valid: np.ndarray
    test: np.ndarray

    def codes(self, rows: np.ndarray) -> np.ndarray:
        """Split code (0 train, 1 valid, 2 test) of each of `rows` (every row must be in the fold)."""
        codes = np.full(len(rows), -1, dtype=np.int8)
        for code, part in enumerate((self.train, self.valid, self.test)):
            codes[np.isin(rows, part)] = code
        if (codes < 0).any():
            raise ValueError(f"fold {self.index}: row {int(rows[codes < 0][0])} is in none of its splits")
        return codes


def kfold_users(rows, k: int = 5, seed: int = 0, valid_fraction: float = 0.1) -> list[Fold]:
    """K folds over the distinct `rows` (users): fold i tests the i-th of k near-equal parts of a seeded
    permutation and validates on valid_fraction of all users drawn from the other parts."""
    rows = np.unique(np.asarray(rows, dtype=np.int64))
    if k < 2:
        raise ValueError(f"folds must be >= 2 (got {k})")
    if len(rows) < 2 * k:
        raise ValueError(f"{len(rows)} users cannot make {k} folds (at least {2 * k} needed)")
    if not 0 <= valid_fraction < 1 - 1 / k:
        raise ValueError(f"valid_fraction must lie in [0, {1 - 1 / k:.2f}) for {k} folds (got {valid_fraction})")
    parts = np.array_split(np.random.default_rng([seed, 14]).permutation(rows), k)
    n_valid = int(round(valid_fraction * len(rows)))
    folds = []
    for i in range(k):
        rest = np.random.default_rng([seed, 14, i]).permutation(np.concatenate(parts[:i] + parts[i + 1:]))
        folds.append(Fold(i, np.sort(rest[n_valid:]), np.sort(rest[:n_valid]), np.sort(parts[i])))
    return folds


def labelled_rows(task_data: dict) -> np.ndarray:
    """Every user (sequence row) with a label in any task."""
    return np.unique(np.concatenate([d.rows for d in task_data.values()]))


def write_folds(spec_path: Path, out: Path, k: int, seed: int = 0, valid_fraction: float = 0.1,
                command: str = "") -> tuple[list[Fold], list[Path]]:
    """OUT/f<i>/tasks.toml for each fold: the spec's tasks with their tables' splits replaced by the fold's
    (coldrec target vocabularies copied beside them; the sequences stay where they are)."""
    job, sequences, task_data = load_job(spec_path)
    folds = kfold_users(labelled_rows(task_data), k, seed, valid_fraction)
    specs = []
    for fold in folds:
        folder = Path(out) / f"f{fold.index}"
        (folder / "tasks").mkdir(parents=True, exist_ok=True)
        tasks = []
        for task in job.tasks:
            data = task_data[task.name]
            path = folder / "tasks" / task.data.name
            write_task(path, sequences.user_ids[data.rows], data.labels, fold.codes(data.rows))
            if task.kind == "coldrec" and task.target_items.exists():
                shutil.copyfile(task.target_items, folder / "tasks" / task.target_items.name)
            tasks.append(replace(task, data=path.absolute()))
        specs.append(write_spec(folder / "tasks.toml", replace(job, path=folder / "tasks.toml", tasks=tasks),
                                command or "(written by tasks.folds.write_folds)",
                                notes=[f"Fold {fold.index} of {k} (seed {seed}): {len(fold.train)} train, "
                                       f"{len(fold.valid)} valid, {len(fold.test)} test users."]))
    return folds, specs
