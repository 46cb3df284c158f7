"""Data on disk for peterrec-orchestra: Parquet tables, schemas, validation, task specs, synth, importers.

numpy + pyarrow only: the model library imports this package, never the other way round.
Formats: docs/ARCHITECTURE.md, "Data on disk".
"""

from tasks.dataset import NewTask, write_dataset
from tasks.errors import DataError, OutputExistsError
from tasks.job import load_job
from tasks.sequences import Sequences, read_sequences, write_sequences
from tasks.spec import JobSpec, TaskSpec, load_spec, write_spec
from tasks.summary import print_summary, summary
from tasks.taskdata import TaskData, read_task, read_tasks, write_task
from tasks.vocab import read_item_vocab, read_target_vocab

__all__ = [
    "DataError",
    "JobSpec",
    "NewTask",
    "OutputExistsError",
    "Sequences",
    "TaskData",
    "TaskSpec",
    "load_job",
    "load_spec",
    "print_summary",
    "read_item_vocab",
    "read_sequences",
    "read_target_vocab",
    "read_task",
    "read_tasks",
    "summary",
    "write_dataset",
    "write_sequences",
    "write_spec",
    "write_task",
]
