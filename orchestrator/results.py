"""A job's outputs: JOB_DIR/results.parquet (one row per task, rewritten atomically as each task
finishes) and JOB_DIR/bundle/ (a patch set + head per task, written by peterrec.bundle)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq

from tasks.atomic import staged_file

SCHEMA = pa.schema([
    pa.field("task", pa.string(), nullable=False),
    pa.field("kind", pa.string(), nullable=False),
    pa.field("mode", pa.string(), nullable=False),
    pa.field("status", pa.string(), nullable=False),  # "done" | "failed"
    pa.field("metric", pa.string()),
    pa.field("value", pa.float64()),
    pa.field("trained_params", pa.int64()),  # optimised for the task
    pa.field("backbone_params", pa.int64()),  # the shared backbone's
    pa.field("fineall_params", pa.int64()),  # what FineAll trains for the same task: backbone + head
    pa.field("stored_params", pa.int64()),  # what its bundle entry holds (PeterZero: its own backbone too)
    pa.field("ratio_vs_fineall", pa.float64()),  # trained params as % of FineAll's
    pa.field("seconds", pa.float64()),
    pa.field("attempts", pa.int32()),
    pa.field("error", pa.string()),
])


def results_path(job_dir: Path) -> Path:
    return Path(job_dir) / "results.parquet"


def bundle_path(job_dir: Path) -> Path:
    return Path(job_dir) / "bundle"


def read_results(job_dir: Path) -> list[dict]:
    """Every row of JOB_DIR/results.parquet (a column an older file lacks reads as null)."""
    path = results_path(job_dir)
    if not path.exists():
        return []
    with open(path, "rb") as handle:  # one handle: a path is opened twice (footer, then pages), and the
        table = pq.read_table(handle)  # driver may rename a new file in between
    return [{f.name: row.get(f.name) for f in SCHEMA} for row in table.to_pylist()]


def write_results(job_dir: Path, rows: list[dict]) -> Path:
    """Write all rows (sorted by task) to results.parquet via a temporary file and a rename."""
    path = results_path(job_dir)
    rows = sorted(rows, key=lambda r: r["task"])
    table = pa.Table.from_pylist(rows, schema=SCHEMA)  # the schema's columns; a missing key is null
    with staged_file(path) as staging:
        pq.write_table(table, staging)
    return path


def done_row(task_spec, summary: dict, seconds: float, attempts: int) -> dict:
    """A finished task's row from FinetuneOutcome.summary()."""
    return {"task": task_spec.name, "kind": task_spec.kind, "mode": summary["mode"], "status": "done",
            "metric": summary["metric"], "value": float(summary["value"]),
            "trained_params": summary["trained_params"], "backbone_params": summary["backbone_params"],
            "fineall_params": summary["fineall_params"], "stored_params": summary["stored_params"],
            "ratio_vs_fineall": summary["ratio_vs_fineall"], "seconds": seconds, "attempts": attempts,
            "error": None}


def failed_row(task_spec, mode: str, error: str, seconds: float, attempts: int) -> dict:
    return {"task": task_spec.name, "kind": task_spec.kind, "mode": mode, "status": "failed",
            "metric": task_spec.metric, "value": None, "trained_params": None, "backbone_params": None,
            "fineall_params": None, "stored_params": None, "ratio_vs_fineall": None, "seconds": seconds,
            "attempts": attempts, "error": error}


class JobOutputs:
    """Records each finished task: its bundle entry first, then its results row, both atomically.

    A task killed between the two has a bundle entry but no `done` row, so a resumed job runs it again
    and the bundle replaces that entry; a `done` row always has its bundle entry.
    """

    def __init__(self, job_dir: Path, backbone, fingerprint: str, rows: list[dict] | None = None):
        self.job_dir = Path(job_dir)
        self.backbone = backbone
        self.fingerprint = fingerprint
        self.rows = {r["task"]: r for r in rows or []}

    def status(self, name: str) -> str | None:
        row = self.rows.get(name)
        return row["status"] if row else None

    def done(self, task_spec, settings, model, summary: dict, seconds: float, attempts: int) -> dict:
        """`model`: the trained TaskModel, or its task state {name: array} as a worker ships it."""
        if not hasattr(model, "task_state_dict"):
            model = TrainedTask.from_state(settings, model, task_spec.kind, self.backbone.config.causal)
        self._write_bundle(task_spec, settings, model, summary)
        return self._put(done_row(task_spec, summary, seconds, attempts))

    def failed(self, task_spec, mode: str, error: str, seconds: float, attempts: int) -> dict:
        return self._put(failed_row(task_spec, mode, error, seconds, attempts))

    def requeued(self, names: list[str]) -> None:
        """Tasks queued to run again (retried): their failed rows go, so the file never says `failed` of a
        task the job will run again (its bundle entry, if any, is replaced when it is done)."""
        if any(self.rows.get(n, {}).get("status") == "failed" for n in names):
            for name in names:
                if self.rows.get(name, {}).get("status") == "failed":
                    del self.rows[name]
            write_results(self.job_dir, list(self.rows.values()))

    def _put(self, row: dict) -> dict:
        self.rows[row["task"]] = row
        write_results(self.job_dir, list(self.rows.values()))
        return row

    def _write_bundle(self, task_spec, settings, model, summary: dict) -> None:
        # The one place a job writes its bundle; the format belongs to peterrec.bundle.
        from peterrec.bundle import write_task

        metrics = {k: summary[k] for k in ("metric", "value", "valid", "test", "steps", "samples_per_s")
                   if k in summary}
        write_task(bundle_path(self.job_dir), model, task_spec, settings, metrics, self.fingerprint,
                   self.backbone.config, target_raw_ids=target_raw_ids(task_spec))


@dataclass
class TrainedTask:
    """A trained task as a worker ships it (its tensors) with what peterrec.bundle.write_task reads of a
    TaskModel (mode, patch config, representation, input_len, task_state_dict), so the driver records it without
    building a model: that cost it tens of milliseconds a task, which a 1,000-task job's workers lost on
    the cores they share with it. write_task still checks the tensors against a model built for the
    settings (shapes only)."""

    mode: str
    patches: object | None  # has .config (PatchConfig) when the mode is patched
    representation: str  # resolved, never 'auto' (as TaskModel holds it)
    tensors: dict
    input_len: int = 0  # the latest items the task reads (0: all of max_len)

    @classmethod
    def from_state(cls, settings, state: dict, kind: str, causal: bool) -> "TrainedTask":
        import torch

        from peterrec.config import resolve_representation
        from peterrec.modes import get_mode

        patches = SimpleNamespace(config=settings.patch) if get_mode(settings.mode).patched else None
        return cls(settings.mode, patches, resolve_representation(settings.representation, kind, causal),
                   {k: torch.tensor(v) for k, v in state.items()},  # copies: v may be read-only
                   settings.input_len)

    def task_state_dict(self) -> dict:
        return self.tensors


def target_raw_ids(task_spec) -> list[str] | None:
    """A coldrec task's original target ids (kept in the bundle so predictions can name them)."""
    if task_spec.kind != "coldrec" or not task_spec.target_items.exists():
        return None
    from tasks import read_target_vocab

    return [str(r) for r in read_target_vocab(task_spec.target_items, task_spec.target_vocab)]
