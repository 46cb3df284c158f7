"""Write a complete data directory (source, tasks, spec) in one atomic step: synth and importers end here."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from tasks.atomic import staged_directory
from tasks.errors import DataError
from tasks.job import load_job
from tasks.schema import DEFAULT_METRIC
from tasks.sequences import Sequences, write_sequences
from tasks.spec import JobSpec, TaskSpec, valid_task_name, write_spec
from tasks.splits import split_codes
from tasks.taskdata import write_task
from tasks.vocab import write_item_vocab, write_target_vocab

SPEC_NAME = "tasks.toml"


@dataclass
class NewTask:
    """A task to write: its spec fields and its rows (one row per label).

    Splits are assigned per user on write from the data set's seed, unless `split` gives them.
    """

    name: str
    kind: str  # "classify" | "coldrec"
    user_ids: np.ndarray  # object (n,)
    labels: np.ndarray  # int (n,): class index, or target id
    num_classes: int | None = None  # classify
    label_names: list[str] | None = None  # classify, optional
    target_raw_ids: Sequence[str] | None = None  # coldrec: original id of each target id
    metric: str | None = None  # default: accuracy (classify), mrr@5 (coldrec)
    overrides: dict = field(default_factory=dict)
    split: np.ndarray | None = None  # int8 (n,) split codes to keep, e.g. when re-importing a data set


def finetune_command(out: str | Path) -> str:
    """The command that fine-tunes on a data directory, for the spec header."""
    name = Path(out).absolute().name
    spec = Path(out) / SPEC_NAME
    return f"python cli.py finetune --backbone runs/{name}/backbone --tasks {spec.as_posix()} --out runs/{name}/job"


def pretrain_command(out: str | Path) -> str:
    """The command that pretrains the backbone the fine-tuning command expects."""
    return f"python cli.py pretrain --data {Path(out).as_posix()} --out runs/{Path(out).absolute().name}/backbone"


def write_dataset(
    out: str | Path,
    sequences: Sequences,
    item_raw_ids: Sequence[str],
    tasks: Sequence[NewTask],
    *,
    seed: int,
    command: str | None = None,
    notes: Sequence[str] = (),
    force: bool = False,
) -> Path:
    """Write DIR/source/*, DIR/tasks/* and DIR/tasks.toml; return the spec path.

    `item_raw_ids[k]` is the original id of dense item k + 1. Splits are assigned per user from
    `seed`. Everything is written to a temporary sibling, read back through load_job, and only
    then renamed to `out`: on any error nothing is left behind. An existing non-empty `out` is
    refused unless `force`.
    """
    for task in tasks:
        if not valid_task_name(task.name):
            raise ValueError(f"{task.name!r} is not a valid task name (letters, digits, '_', '.', '-')")
    if len(item_raw_ids) != sequences.vocab_size - 1:
        raise ValueError(f"{len(item_raw_ids)} raw item ids for vocab_size {sequences.vocab_size}")
    with staged_directory(out, force=force) as stage:
        (stage / "source").mkdir()
        (stage / "tasks").mkdir()
        sequences_path = stage / "source" / "sequences.parquet"
        write_sequences(sequences_path, sequences)
        write_item_vocab(stage / "source" / "items.parquet", item_raw_ids)
        specs = [_write_task(stage / "tasks", task, seed) for task in tasks]
        job = JobSpec(stage / SPEC_NAME, sequences_path, sequences.vocab_size, specs)
        notes = [f"Pretrain first: {pretrain_command(out)}", *notes]
        write_spec(job.path, job, command or finetune_command(out), notes=notes)
        try:
            load_job(job.path)
        except DataError as error:  # name the file as it would have been, not the temporary one
            relative = error.path.relative_to(stage) if error.path.is_relative_to(stage) else error.path
            raise DataError(Path(out) / relative, error.problem, row=error.row, field=error.field,
                            where=error.where) from None
    return Path(out).absolute() / SPEC_NAME


def _write_task(folder: Path, task: NewTask, seed: int) -> TaskSpec:
    spec = TaskSpec(
        name=task.name,
        kind=task.kind,
        data=folder / f"{task.name}.parquet",
        metric=task.metric or DEFAULT_METRIC[task.kind],
        num_classes=task.num_classes if task.kind == "classify" else None,
        target_vocab=len(task.target_raw_ids) if task.kind == "coldrec" else None,
        labels=list(task.label_names) if task.label_names is not None else None,
        overrides=dict(task.overrides),
    )
    split = task.split if task.split is not None else split_codes(task.user_ids, seed)
    write_task(spec.data, task.user_ids, task.labels, split)
    if task.kind == "coldrec":
        write_target_vocab(spec.target_items, task.target_raw_ids)
    return spec
