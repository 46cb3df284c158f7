"""What a search leaves in OUT, and the one way to read it back: trials.parquet (every trial), best.json (per
task) and tasks.toml (the input spec with each task's best overrides, ready for `finetune`). No Ray here:
rows are plain dicts, or Trial records for readers; best_trial is the one rule for a task's best.
While a search runs, trials.parquet is rewritten every LIVE_S seconds with each trial as it stands (status
running or pending, score so far), so a reader follows it live; the search's end writes it one last time.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from tasks.atomic import staged_file, write_text_atomic

TRIALS_FILE, BEST_FILE, SPEC_FILE = "trials.parquet", "best.json", "tasks.toml"
LIVE_S = 2.0  # a running search rewrites trials.parquet at most this often
META_KEYS = ("task", "sample")  # config keys that say which trial this is; the rest are overrides
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
    # Where the trial's weights come from under PBT: a JSON list of exploits, oldest first, each
    # {trial, parent, step, perturbed: {key: [parent's value, new value]}}; parent_trial_id is the last donor.
    pa.field("lineage", pa.string()),
    pa.field("parent_trial_id", pa.string()),
    # Training steps the trial computed over all its runs (resumed, retried, paused, or started from a donor's
    # step): what a search's budget is counted in. `steps` is the step its weights reached.
    pa.field("steps_trained", pa.int64()),
    pa.field("checkpoint", pa.string()),  # its latest checkpoint, relative to OUT (done: the finished weights)
])


def trial_name(task: str, sample: int) -> str:
    """A trial's name: its entry in the progress hub and in displays."""
    return f"{task}#{sample}"


def _number(value) -> float | None:
    return None if value is None or not math.isfinite(float(value)) else float(value)


def trial_row(task_metric: str, config: dict, trial_id: str, status: str, metrics: dict,
              error: str | None = None, steps_trained: int | None = None, checkpoint: str | None = None) -> dict:
    """One row of trials.parquet from a trial's config and its last reported metrics."""
    searched = {k: v for k, v in config.items() if k not in META_KEYS}
    lineage = metrics.get("lineage") or "[]"
    events = json.loads(lineage)
    return {"task": config["task"], "sample": int(config["sample"]), "trial_id": trial_id, "status": status,
            "metric": task_metric, "score": _number(metrics.get("best_valid")),
            "test_value": _number(metrics.get("test_value")) if status == DONE else None,
            "config": json.dumps(searched, sort_keys=True), "steps": metrics.get("step"),
            "evaluations": metrics.get("evaluations", metrics.get("training_iteration", 0)),
            "attempts": metrics.get("attempt"),
            "eval_every": metrics.get("eval_every"), "seconds": _number(metrics.get("time_total_s")),
            "backbone_zero_copy": metrics.get("backbone_zero_copy"), "error": error,
            "lineage": lineage, "parent_trial_id": events[-1]["parent"] if events else None,
            "steps_trained": steps_trained, "checkpoint": checkpoint}


def live_status(tune_status: str, metrics: dict) -> str:
    """A trial's status while the search runs: running, pending or paused, else what it ended as."""
    if tune_status in ("RUNNING", "PENDING", "PAUSED"):
        return tune_status.lower()
    if tune_status == "ERROR":
        return FAILED
    return DONE if metrics.get("final") else STOPPED


def write_trials(out_dir: Path, rows: list[dict]) -> Path:
    """All rows, by task then sample, written atomically; exactly one row per (task, sample)."""
    rows = sorted(rows, key=lambda r: (r["task"], r["sample"]))
    twice = sorted({(a["task"], a["sample"]) for a, b in zip(rows, rows[1:])
                    if (a["task"], a["sample"]) == (b["task"], b["sample"])})
    if twice:  # a bug in reading Tune's results, never a user error: nothing is written
        raise RuntimeError(f"{TRIALS_FILE}: more than one row for trial(s) "
                           f"{', '.join(trial_name(t, s) for t, s in twice)}; not written")
    table = pa.Table.from_pylist([{f.name: r.get(f.name) for f in SCHEMA} for r in rows], schema=SCHEMA)
    path = Path(out_dir) / TRIALS_FILE
    with staged_file(path) as staging:
        pq.write_table(table, staging)
    return path


# Reading ----------------------------------------------------------------------------------------------------

REQUIRED = ("task", "trial_id", "config", "score", "status")  # what a reader cannot do without
ENDED_STATUSES = {"done": DONE, "terminated": DONE, "stopped": STOPPED, "failed": FAILED, "error": FAILED}


@dataclass(frozen=True)
class Trial:
    """One row of trials.parquet, as readers see it: config parsed, status in lower case."""

    task: str
    trial_id: str
    config: dict
    score: float | None  # best validation metric (higher is better); None when none was reported
    status: str  # as written: done, stopped, failed, unfinished (Tune's own words are read too)
    sample: int | None = None  # 0 is the task's baseline
    metric: str | None = None
    test_value: float | None = None
    error: str | None = None
    steps: int | None = None  # the step its weights reached
    steps_trained: int | None = None  # steps computed over all its runs
    eval_every: int | None = None
    checkpoint: str | None = None  # its latest checkpoint, relative to the search directory
    lineage: tuple = ()  # PBT exploits, oldest first (dicts: trial, parent, step, perturbed)

    @property
    def baseline(self) -> bool:
        return self.sample == 0

    @property
    def state(self) -> str:
        """done (its whole budget), stopped (early), failed, or open (running, pending, unfinished)."""
        return ENDED_STATUSES.get(self.status, "open")


def read_trials(out_dir: Path) -> list[Trial]:
    """The trials of OUT/trials.parquet; FileNotFoundError / ValueError naming the file, row and column
    when it is missing or does not fit (a file written by hand or another tool needs only REQUIRED)."""
    path = Path(out_dir) / TRIALS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (expected the trial table of a `tune` run)")
    with open(path, "rb") as handle:  # one handle: a running search renames a new file in every few seconds
        table = pq.read_table(handle)
    missing = [c for c in REQUIRED if c not in table.column_names]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; expected {list(REQUIRED)}")
    optional = [c for c in ("sample", "metric", "test_value", "error", "steps", "steps_trained", "eval_every",
                            "checkpoint", "lineage") if c in table.column_names]
    trials = []
    for i, row in enumerate(table.select([*REQUIRED, *optional]).to_pylist()):
        try:
            config = json.loads(row["config"]) if row["config"] else {}
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: row {i}, column 'config': not a JSON object ({e})") from None
        status = str(row["status"] or "").lower()
        try:
            lineage = tuple(json.loads(row.get("lineage") or "[]"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: row {i}, column 'lineage': not a JSON list ({e})") from None
        trials.append(Trial(str(row["task"]), str(row["trial_id"]),
                            config if isinstance(config, dict) else {"config": config}, _number(row["score"]),
                            status, row.get("sample"), row.get("metric"),
                            _number(row.get("test_value")), row.get("error"), row.get("steps"),
                            row.get("steps_trained"), row.get("eval_every"), row.get("checkpoint"), lineage))
    return trials


def best_trial(trials: list, final: bool = False):
    """The best of one task's trials (Trial records or trials.parquet rows): the best-scored trial that ran its
    whole budget (done), ties to the earlier sample (the baseline first); while none has, the best scored
    so far, unless `final` (a finished search's best must have run its whole budget). None: no candidate."""
    def get(t, key):
        return t[key] if isinstance(t, dict) else getattr(t, key)

    def done(t) -> bool:
        return (t["status"] if isinstance(t, dict) else t.state) == DONE

    scored = [t for t in trials if get(t, "score") is not None]
    pool = [t for t in scored if done(t)] or ([] if final else scored)
    return max(pool, key=lambda t: (get(t, "score"), -(get(t, "sample") or 0))) if pool else None


class SearchResults:
    """A search directory read back for a UI: its trials, re-read only when trials.parquet changes."""

    def __init__(self, out_dir: str | Path):
        self.out_dir = Path(out_dir)
        self._cache: tuple = (None, [])

    @property
    def path(self) -> Path:
        return self.out_dir / TRIALS_FILE

    def changed(self) -> bool:
        """Whether trials.parquet changed since the last read."""
        return self._stamp() != self._cache[0]

    def trials(self) -> list[Trial]:
        stamp = self._stamp()
        if stamp is None or stamp != self._cache[0]:
            self._cache = (stamp, read_trials(self.out_dir))
        return list(self._cache[1])

    def updated_at(self) -> float | None:
        """When trials.parquet was last written (a running search rewrites it every LIVE_S seconds)."""
        try:
            return self.path.stat().st_mtime
        except OSError:
            return None

    def _stamp(self):
        try:
            stat = self.path.stat()
        except OSError:
            return None
        return stat.st_mtime_ns, stat.st_size

    @staticmethod
    def best(trials: list[Trial]) -> Trial | None:
        return best_trial(trials)


def best_per_task(rows: list[dict], tasks: list) -> dict:
    """Per task: the done trial with the best validation score (its config, score and overrides), and the
    baseline's score beside it. A task whose trials all failed gets its errors instead."""
    best = {}
    for task in tasks:
        mine = [r for r in rows if r["task"] == task.name]
        baseline = next((r for r in mine if r["sample"] == 0), None)
        top = best_trial(mine, final=True)
        if top is None:
            errors = sorted({r["error"] for r in mine if r["error"]})
            best[task.name] = {"metric": task.metric, "score": None, "error": "; ".join(errors) or "no trial finished"}
            continue
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
    write_text_atomic(path, json.dumps(best, indent=2, sort_keys=True) + "\n")
    return path


def read_best(out_dir: Path) -> dict:
    """best.json of a finished search (FileNotFoundError / ValueError naming the file)."""
    path = Path(out_dir) / BEST_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (written once every trial of a search has ended)")
    try:
        best = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(best, dict):
        raise ValueError(f"{path}: expected an object of tasks")
    return best


def write_tuned_spec(out_dir: Path, job, best: dict, command: str) -> Path:
    """The input spec with each tuned task's best overrides (eval_every included, so `finetune` evaluates
    and keeps its best weights at the cadence the trial did), written with tasks.write_spec."""
    from tasks import write_spec

    tasks = [replace(t, overrides=best[t.name]["overrides"]) if "overrides" in best.get(t.name, {}) else t
             for t in job.tasks]
    notes = [f"Tuned by `tune` from {job.path}: per task, the overrides of the trial with the best validation",
             f"metric (scores in {Path(out_dir) / BEST_FILE}, every trial in {Path(out_dir) / TRIALS_FILE})."]
    return write_spec(Path(out_dir) / SPEC_FILE, replace(job, tasks=tasks), command, notes=notes)
