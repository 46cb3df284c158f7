"""Load a whole job (spec, sequences, every task) validated up front."""

from __future__ import annotations

from pathlib import Path

from tasks.paths import require_file
from tasks.sequences import Sequences, read_sequences
from tasks.spec import JobSpec, load_spec
from tasks.taskdata import TaskData, read_tasks


def load_job(spec_path: str | Path) -> tuple[JobSpec, Sequences, dict[str, TaskData]]:
    """Read the spec, its sequences and every task table, validating all of them (DataError on the first problem)."""
    job = load_spec(spec_path)
    require_file(job.sequences, f"the [source] sequences of {job.path}")
    for index, task in enumerate(job.tasks):  # a missing file names the task that refers to it
        require_file(task.data, f"the data of task[{index}] '{task.name}' in {job.path}")
    sequences = read_sequences(job.sequences, job.vocab_size)
    return job, sequences, read_tasks(list(job.tasks), sequences)
