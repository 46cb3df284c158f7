"""Import a data directory in this project's own format (e.g. one written by hand or with pandas).

Everything is read through load_job, so it is validated exactly as fine-tuning would read it,
then written again in the canonical form: explicit schemas, int32 ids, vocab_size in the
sequences metadata, target vocabularies for coldrec tasks. Splits, labels and overrides are kept.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tasks.dataset import NewTask, write_dataset
from tasks.job import load_job
from tasks.paths import check_apart
from tasks.vocab import read_item_vocab, read_target_vocab


def import_data_dir(src: str | Path, out: str | Path, *, force: bool = False, command: str | None = None) -> tuple[Path, list[str]]:
    """Validate the data set of spec file `src` (or of DIR/tasks.toml) and write a canonical copy to `out`."""
    spec_path = Path(src) / "tasks.toml" if Path(src).is_dir() else Path(src)
    job, sequences, tasks = load_job(spec_path)
    check_apart(out, "--out", job.inputs("SRC"))
    items_path = job.sequences.with_name("items.parquet")
    if items_path.exists():
        item_raw = read_item_vocab(items_path)[1:]
    else:
        item_raw = np.arange(1, job.vocab_size).astype(str)
    new_tasks = []
    for spec in job.tasks:
        data = tasks[spec.name]
        targets = None
        if spec.kind == "coldrec":
            targets = (read_target_vocab(spec.target_items, spec.target_vocab) if spec.target_items.exists()
                       else np.arange(spec.target_vocab).astype(str))
        new_tasks.append(NewTask(
            spec.name, spec.kind, sequences.user_ids[data.rows], data.labels, num_classes=spec.num_classes,
            label_names=spec.labels, target_raw_ids=targets, metric=spec.metric, overrides=spec.overrides,
            split=data.split,
        ))
    notes = [f"imported {spec_path} (validated, rewritten in canonical form)"]
    written = write_dataset(out, sequences, list(item_raw), new_tasks, seed=0, force=force, command=command,
                            notes=[f"Made by: python cli.py import data-dir {src} --out {out}"])
    return written, notes
