"""A short printed account of a data directory: users, items, tasks and their label balance."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from rich import box
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from tasks.job import load_job
from tasks.schema import SPLITS
from tasks.sequences import Sequences
from tasks.spec import JobSpec
from tasks.taskdata import TaskData

_SHOWN_CLASSES = 4


def summary(job: JobSpec, sequences: Sequences, tasks: dict[str, TaskData], notes: Sequence[str] = ()) -> Group:
    """A rich renderable: one header line per fact, then one table row per task."""
    lengths = sequences.lengths
    header = [
        Text.assemble(("users ", "bold"), f"{len(sequences):,}", ("   items ", "bold"),
                      f"{sequences.vocab_size - 1:,} (vocab_size {sequences.vocab_size:,})",
                      ("   interactions ", "bold"), f"{len(sequences.items):,}",
                      f" (length {lengths.min() if len(lengths) else 0}..{lengths.max() if len(lengths) else 0},"
                      f" mean {lengths.mean() if len(lengths) else 0:.1f})"),
        *(Text(note, style="yellow") for note in notes),
    ]
    table = Table(title=f"{len(job.tasks)} tasks", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for column in ("task", "kind", "outputs", "users", "rows", "train/valid/test", "label balance", "metric"):
        table.add_column(column, justify="right" if column in ("outputs", "users", "rows") else "left",
                         no_wrap=column != "label balance")
    for spec in job.tasks:
        data = tasks[spec.name]
        parts = "/".join(f"{np.count_nonzero(data.split == code):,}" for code in range(len(SPLITS)))
        table.add_row(
            spec.name, spec.kind, f"{spec.num_outputs:,}", f"{len(np.unique(data.rows)):,}", f"{len(data):,}",
            parts, label_balance(data), spec.metric,
        )
    spec_line = Text.assemble(("spec ", "bold"), str(job.path))
    if not job.tasks:
        return Group(*header, Text("no tasks (source domain only)"), spec_line)
    return Group(*header, table, spec_line)


def label_balance(data: TaskData) -> str:
    """Class shares ("F 29% M 71%"; a range for many classes), or for coldrec how many targets occur
    and the most common one's share of the rows."""
    counts = np.bincount(data.labels, minlength=data.spec.num_outputs)
    total = max(len(data.labels), 1)
    if data.spec.kind == "coldrec":
        return f"{np.count_nonzero(counts)}/{len(counts)} used, top {counts.max(initial=0) / total:.0%}"
    if len(counts) > _SHOWN_CLASSES:
        return f"{counts.min() / total:.0%}..{counts.max() / total:.0%} per class"
    names = data.spec.labels or [str(k) for k in range(len(counts))]
    return " ".join(f"{names[k]} {counts[k] / total:.0%}" for k in range(len(counts)))


def print_summary(spec_path: str | Path, *, notes: Sequence[str] = (), console: Console | None = None) -> None:
    """Load a written data directory's spec and print its summary (used by `synth` and `import`)."""
    job, sequences, tasks = load_job(spec_path)
    if console is None:
        console = Console()
        if not console.is_terminal:  # logs and pipes: wide enough for the table, no wrapping
            console = Console(width=132)
    console.print(summary(job, sequences, tasks, notes))
