"""What a k-fold reproduction measures per test row: each fine-tuned cell re-scored from its bundle entry, and
the baselines on the same folds and candidates. OUT/per_row.parquet holds them; reproduce/report.py turns
them into metrics with confidence intervals over users and paired differences."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from tasks.atomic import staged_file

PER_ROW_COLUMNS = ("arch", "task", "method", "fold", "seed", "index", "user", "value")


def prepare_folds(spec: Path, out: Path, config, resume: bool) -> list[Path]:
    """OUT/folds/f<i>/tasks.toml (tasks.folds), kept as they are on --resume once the last one exists."""
    from tasks.folds import write_folds

    specs = [out / f"f{i}" / "tasks.toml" for i in range(config.folds)]
    if resume and specs[-1].exists():
        return specs
    _, written = write_folds(spec, out, config.folds, config.fold_seed, config.fold_valid_fraction)
    return written


def cell_rows(model, task_data, sequences, seed: int, negatives: int, max_len: int) -> np.ndarray:
    """A trained cell's metric per test row, with the candidates its own evaluation drew (seed + 1)."""
    from peterrec.finetune import TaskEvaluator, task_arrays

    spec = task_data.spec
    items, labels = task_arrays(task_data, sequences, "test", max_len)
    evaluator = TaskEvaluator(spec.kind, spec.metric, spec.num_outputs, items, labels, negatives=negatives,
                              seed=seed + 1)
    return evaluator.row_values(model)


def _records(arch, task, method, fold, seed, data, values) -> list[dict]:
    users, _ = data.part("test")
    return [{"arch": arch, "task": task, "method": method, "fold": fold, "seed": seed, "index": i, "user": int(u),
             "value": float(v)} for i, (u, v) in enumerate(zip(users, values))]


def method_rows(jobs: dict[str, Path], backbones: dict[str, Path], fold_specs: list[Path], cells, config,
                log: Callable[[str], None] = print) -> list[dict]:
    """Per test row of every finished cell of every job (its weights from the job's bundle)."""
    from orchestrator.results import bundle_path, read_results
    from peterrec.bundle import open_bundle
    from peterrec.checkpoint import load_backbone
    from tasks import load_job

    folds = [load_job(path) for path in fold_specs]
    records = []
    for arch, job_dir in jobs.items():
        done = {r["task"] for r in read_results(job_dir) if r["status"] == "done"}
        backbone, _ = load_backbone(backbones[arch])
        bundle = open_bundle(bundle_path(job_dir))
        try:
            for cell in cells:
                if cell.name() not in done:
                    continue
                _, sequences, task_data = folds[cell.fold]
                model = bundle.load_task(cell.name(), backbone)
                values = cell_rows(model, task_data[cell.task], sequences, cell.seed, config.eval_negatives,
                                   backbone.config.max_len)
                records += _records(arch, cell.task, cell.method.name, cell.fold, cell.seed, task_data[cell.task],
                                    values)
        finally:
            bundle.close()
        log(f"  {arch}: {len(done)} cells re-scored per test row")
    return records


def baseline_rows(fold_specs: list[Path], config) -> tuple[list[dict], dict]:
    """Per test row of each baseline (reproduce/baselines.py) on every fold; and what each chose per fold."""
    from reproduce.baselines import baseline_values
    from tasks import load_job

    records, chosen = [], {}
    for fold, path in enumerate(fold_specs):
        _, sequences, task_data = load_job(path)
        for task in config.tasks:
            for name, (values, choice) in baseline_values(sequences, task_data[task], config.seeds,
                                                          config.eval_negatives).items():
                records += _records(None, task, name, fold, -1, task_data[task], values)
                chosen.setdefault(f"{task}/{name}", []).append(choice)
    return records, chosen


def write_per_row(path: Path, records: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("arch", pa.string()), ("task", pa.string()), ("method", pa.string()), ("fold", pa.int32()),
                        ("seed", pa.int32()), ("index", pa.int32()), ("user", pa.int64()), ("value", pa.float64())])
    table = pa.Table.from_pylist([{c: r[c] for c in PER_ROW_COLUMNS} for r in records], schema=schema)
    with staged_file(path) as staging:
        pq.write_table(table, staging)
    return path
