"""One task's labelled users: read, validated against its spec and the sequences, and written."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tasks import schema
from tasks.checks import check_range, fail_first
from tasks.io import read_table, write_table
from tasks.sequences import Sequences
from tasks.spec import TaskSpec
from tasks.splits import split_names
from tasks.vocab import read_target_vocab


@dataclass
class TaskData:
    """A task's examples: row into Sequences, label, and split code (0 train, 1 valid, 2 test)."""

    spec: TaskSpec
    rows: np.ndarray  # int64 (n,)
    labels: np.ndarray  # int64 (n,)
    split: np.ndarray  # int8 (n,)

    def __len__(self) -> int:
        return len(self.rows)

    def part(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(rows, labels) of the "train", "valid" or "test" part."""
        if name not in schema.SPLITS:
            raise ValueError(f"unknown split {name!r}, expected one of {', '.join(schema.SPLITS)}")
        mask = self.split == schema.SPLITS.index(name)
        return self.rows[mask], self.labels[mask]


def read_task(spec: TaskSpec, sequences: Sequences) -> TaskData:
    """Read and validate a task table against its spec and the sequences it indexes.

    Checks types and nulls, split values, labels in 0..num_outputs-1, users present in the
    sequences, and that all rows of one user share a split; a coldrec task's target vocabulary
    file, when present, must hold exactly target_vocab ids.
    """
    return read_tasks([spec], sequences)[spec.name]


def read_tasks(specs: list[TaskSpec], sequences: Sequences) -> dict[str, TaskData]:
    """read_task for every task of a job, with one user lookup for all of them."""
    tables = [_read_table(spec) for spec in specs]
    rows_per_task = sequences.rows_of([(user_ids, spec.data) for spec, (user_ids, _, _) in zip(specs, tables)])
    out = {}
    for spec, (_, labels, split), rows in zip(specs, tables, rows_per_task):
        _check_one_split_per_user(spec.data, rows, split)
        if spec.kind == "coldrec" and spec.target_items.exists():
            read_target_vocab(spec.target_items, spec.target_vocab)
        out[spec.name] = TaskData(spec=spec, rows=rows, labels=labels, split=split)
    return out


def _read_table(spec: TaskSpec) -> tuple[pa.Array, np.ndarray, np.ndarray]:
    """(user ids, labels, split codes) of a task table, its splits and labels checked."""
    path = spec.data
    table = read_table(path, schema.TASK)
    split_column = table.column("split").combine_chunks()
    codes = pc.index_in(split_column, value_set=pa.array(schema.SPLITS))
    fail_first(
        codes.is_null().to_numpy(zero_copy_only=False), path, "split",
        lambda i: f"{split_column[i].as_py()!r} is not a split, expected one of {', '.join(schema.SPLITS)}",
    )
    split = codes.to_numpy().astype(np.int8)
    labels = table.column("label").to_numpy().astype(np.int64)
    size = "num_classes" if spec.kind == "classify" else "target_vocab"
    check_range(labels, 0, spec.num_outputs - 1, path, "label", f"{size} = {spec.num_outputs}")
    return table.column("user_id").combine_chunks(), labels, split


def write_task(path: str | Path, user_ids, labels, split_codes) -> None:
    """Write tasks/<name>.parquet from user ids, integer labels and split codes."""
    table = pa.table(
        {
            "user_id": pa.array(np.asarray(user_ids, dtype=object), type=pa.string()),
            "label": pa.array(np.asarray(labels, dtype=np.int32)),
            "split": pa.array(split_names(np.asarray(split_codes, dtype=np.int8)), type=pa.string()),
        }
    )
    write_table(path, table, schema.TASK)


def _check_one_split_per_user(path: Path, rows: np.ndarray, split: np.ndarray) -> None:
    order = np.argsort(rows, kind="stable")
    same_user = rows[order][1:] == rows[order][:-1]
    differs = same_user & (split[order][1:] != split[order][:-1])
    fail_first(
        differs, path, "split",
        lambda i: f"{schema.SPLITS[split[order[i + 1]]]!r}, but the same user is "
        f"{schema.SPLITS[split[order[i]]]!r} at row {order[i]} (one split per user)",
        row_of=lambda i: order[i + 1],
    )
