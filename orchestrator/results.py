"""JOB_DIR/results.parquet: one row per task, rewritten atomically as each task finishes."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

SCHEMA = pa.schema([
    pa.field("task", pa.string(), nullable=False),
    pa.field("kind", pa.string(), nullable=False),
    pa.field("mode", pa.string(), nullable=False),
    pa.field("status", pa.string(), nullable=False),  # "done" | "failed"
    pa.field("metric", pa.string()),
    pa.field("value", pa.float64()),
    pa.field("trained_params", pa.int64()),
    pa.field("backbone_params", pa.int64()),
    pa.field("ratio_vs_fineall", pa.float64()),  # trained params as % of FineAll's
    pa.field("seconds", pa.float64()),
    pa.field("attempts", pa.int32()),
    pa.field("error", pa.string()),
])


def results_path(job_dir: Path) -> Path:
    return Path(job_dir) / "results.parquet"


def read_results(job_dir: Path) -> list[dict]:
    path = results_path(job_dir)
    if not path.exists():
        return []
    return pq.read_table(path, schema=SCHEMA).to_pylist()


def write_results(job_dir: Path, rows: list[dict]) -> Path:
    """Write all rows (sorted by task) to results.parquet via a temporary file and a rename."""
    path = results_path(job_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = sorted(rows, key=lambda r: r["task"])
    table = pa.Table.from_pylist([{f.name: r.get(f.name) for f in SCHEMA} for r in rows], schema=SCHEMA)
    fd, tmp = tempfile.mkstemp(prefix=".results.", suffix=".parquet.tmp", dir=path.parent)
    os.close(fd)
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def done_row(task_spec, outcome, seconds: float, attempts: int) -> dict:
    params = outcome.params
    return {"task": task_spec.name, "kind": task_spec.kind, "mode": params.mode, "status": "done",
            "metric": outcome.metric, "value": float(outcome.value), "trained_params": params.trained_params,
            "backbone_params": params.backbone_params, "ratio_vs_fineall": params.ratio_vs_fineall,
            "seconds": seconds, "attempts": attempts, "error": None}


def failed_row(task_spec, mode: str, error: str, seconds: float, attempts: int) -> dict:
    return {"task": task_spec.name, "kind": task_spec.kind, "mode": mode, "status": "failed",
            "metric": task_spec.metric, "value": None, "trained_params": None, "backbone_params": None,
            "ratio_vs_fineall": None, "seconds": seconds, "attempts": attempts, "error": error}
