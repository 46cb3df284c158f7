"""What a search leaves in OUT: trials.parquet (every trial), best.json (per task) and tasks.toml (the input
spec with each task's best overrides, ready for `finetune`). No Ray here: rows are plain dicts.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

TRIALS_FILE, BEST_FILE, SPEC_FILE = "trials.parquet", "best.json", "tasks.toml"
# Trial status: done (its whole budget), stopped (early, by ASHA), failed (every attempt),
# unfinished (the search was interrupted before it ended; --resume runs it).
DONE, STOPPED, FAILED, UNFINISHED = "done", "stopped", "failed", "unfinished"

SCHEMA = pa.schema([
    pa.field("task", pa.string()),
    pa.field("sample", pa.int32()),  # 0 is the task's baseline: the very run `finetune` would make
    pa.field("trial_id", pa.string()),
    pa.field("status", pa.string()),
    pa.field("metric", pa.string()),  # the task's metric, e.g. accuracy or mrr@5
    pa.field("score", pa.float64()),  # its best value on the validation split
    pa.field("test_value", pa.float64()),  # on the test split, for the record (done trials only)
    pa.field("config", pa.string()),  # JSON of the searched hyper-parameters
    pa.field("steps", pa.int64()),
    pa.field("evaluations", pa.int32()),
    pa.field("eval_every", pa.int32()),
    pa.field("seconds", pa.float64()),
    pa.field("attempts", pa.int32()),  # of the attempt that reported last (retries: FailureConfig)
    pa.field("backbone_zero_copy", pa.bool_()),  # the trial's backbone was the object store's memory
    pa.field("error", pa.string()),
])


def _number(value) -> float | None:
    return None if value is None or not math.isfinite(float(value)) else float(value)


def trial_row(task_metric: str, config: dict, trial_id: str, status: str, metrics: dict,
              error: str | None = None) -> dict:
    """One row of trials.parquet from a trial's config and its last reported metrics."""
    searched = {k: v for k, v in config.items() if k not in ("task", "sample")}
    return {"task": config["task"], "sample": int(config["sample"]), "trial_id": trial_id, "status": status,
            "metric": task_metric, "score": _number(metrics.get("best_valid")),
            "test_value": _number(metrics.get("test_value")) if status == DONE else None,
            "config": json.dumps(searched, sort_keys=True), "steps": metrics.get("step"),
            "evaluations": metrics.get("evaluations", metrics.get("training_iteration", 0)),
            "attempts": metrics.get("attempt"),
            "eval_every": metrics.get("eval_every"), "seconds": _number(metrics.get("time_total_s")),
            "backbone_zero_copy": metrics.get("backbone_zero_copy"), "error": error}


def write_trials(out_dir: Path, rows: list[dict]) -> Path:
    """All rows, by task then sample, written atomically."""
    rows = sorted(rows, key=lambda r: (r["task"], r["sample"]))
    table = pa.Table.from_pylist([{f.name: r.get(f.name) for f in SCHEMA} for r in rows], schema=SCHEMA)
    path = Path(out_dir) / TRIALS_FILE
    fd, tmp = tempfile.mkstemp(prefix=".trials.", suffix=".parquet.tmp", dir=out_dir)
    os.close(fd)
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def read_trials(out_dir: Path) -> list[dict]:
    path = Path(out_dir) / TRIALS_FILE
    return pq.read_table(path, schema=SCHEMA).to_pylist() if path.exists() else []


def best_per_task(rows: list[dict], tasks: list) -> dict:
    """Per task: the done trial with the best validation score (its config, score and overrides), and the
    baseline's score beside it. A task whose trials all failed gets its errors instead."""
    best = {}
    for task in tasks:
        mine = [r for r in rows if r["task"] == task.name]
        done = [r for r in mine if r["status"] == DONE and r["score"] is not None]
        baseline = next((r for r in mine if r["sample"] == 0), None)
        if not done:
            errors = sorted({r["error"] for r in mine if r["error"]})
            best[task.name] = {"metric": task.metric, "score": None, "error": "; ".join(errors) or "no trial finished"}
            continue
        top = max(done, key=lambda r: (r["score"], -r["sample"]))  # ties: the earlier sample (the baseline)
        config = json.loads(top["config"])
        best[task.name] = {
            "metric": task.metric, "score": top["score"], "test_value": top["test_value"],
            "trial_id": top["trial_id"], "sample": top["sample"], "config": config,
            # the baseline keeps the task's settings; another trial's are pinned, with its evaluation cadence
            "overrides": task.overrides if top["sample"] == 0 else {**task.overrides, **config,
                                                                      "eval_every": top["eval_every"]},
            "baseline_score": baseline["score"] if baseline and baseline["status"] == DONE else None,
            "trials": {s: sum(r["status"] == s for r in mine) for s in (DONE, STOPPED, FAILED, UNFINISHED)},
        }
    return best


def write_best(out_dir: Path, best: dict) -> Path:
    path = Path(out_dir) / BEST_FILE
    fd, tmp = tempfile.mkstemp(prefix=".best.", suffix=".json.tmp", dir=out_dir)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump(best, out, indent=2, sort_keys=True)
        out.write("\n")
    os.replace(tmp, path)
    return path


def write_tuned_spec(out_dir: Path, job, best: dict, command: str) -> Path:
    """The input spec with each tuned task's best overrides (eval_every included, so `finetune` evaluates
    and keeps its best weights at the cadence the trial did), written with tasks.write_spec."""
    from tasks import write_spec

    tasks = [replace(t, overrides=best[t.name]["overrides"]) if "overrides" in best.get(t.name, {}) else t
             for t in job.tasks]
    notes = [f"Tuned by `tune` from {job.path}: per task, the overrides of the trial with the best validation",
             f"metric (scores in {Path(out_dir) / BEST_FILE}, every trial in {Path(out_dir) / TRIALS_FILE})."]
    return write_spec(Path(out_dir) / SPEC_FILE, replace(job, tasks=tasks), command, notes=notes)
