"""The live state of a fine-tuning job: what the progress hub holds, state.json stores and clients read.

Plain dataclasses of JSON types, no Ray: the hub (an actor), the driver, the CLI display and the TUI
all speak this one model.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from dataclasses import dataclass, field, fields
from pathlib import Path

from tasks.atomic import write_text_atomic

# Task status, in the order a task moves through them.
QUEUED, RUNNING, RETRYING, DONE, FAILED = "queued", "running", "retrying", "done", "failed"
FINISHED = (DONE, FAILED)
# Job status.
STARTING, JOB_RUNNING, STOPPING, JOB_DONE, STOPPED, LOST = "starting", "running", "stopping", "done", "stopped", "lost"

HISTORY_POINTS = 120  # per task curve; halved (every other point kept) when full
LOG_LINES = 200  # per task log (JOB_DIR/logs/<task>.log): the latest lines, across its attempts


@dataclass
class TaskState:
    """One task as the TUI sees it."""

    name: str
    kind: str
    metric_name: str  # the task's metric, e.g. accuracy or mrr@5
    status: str = QUEUED  # queued | running | retrying | done | failed
    step: int = 0
    total: int = 0  # optimiser steps of the current attempt
    epoch: int = 0
    loss: float | None = None
    metric: float | None = None  # latest validation metric
    value: float | None = None  # the test metric, once done
    samples_per_s: float | None = None
    attempts: int = 0  # attempts started (Ray retries included)
    error: str | None = None  # last error text
    node: str | None = None  # node IP and worker pid of the current attempt
    pid: int | None = None
    pack: int = 1  # tasks trained together in the current attempt's fused pack (1: alone)
    started_at: float | None = None  # wall clock of the first attempt's start
    updated_at: float | None = None
    seconds: float | None = None  # of the successful attempt, or until the final failure
    history: list[list] = field(default_factory=list)  # [step, loss, metric, wall clock] points of the latest attempt
    submitted_at: float | None = None  # wall clock the driver handed its current attempt to the executor
    attempt_started_at: float | None = None  # wall clock its current attempt began on a worker

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    def to_dict(self) -> dict:
        # Not dataclasses.asdict: it deep-copies every curve point, about 1000x slower for a 100-task job.
        # Points are replaced, never changed in place, so a shallow copy of the curve is a snapshot. The
        # driver publishes every task 4 times a second: the instance's own dict, copied, is the fast way.
        d = self.__dict__.copy()
        d["history"] = list(self.history)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TaskState":
        if d.keys() == TASK_FIELD_SET:  # what to_dict wrote: taken as it is (a client reads 1,000 tasks per frame)
            task = cls.__new__(cls)
            task.__dict__.update(d)
            return task
        return cls(**{k: v for k, v in d.items() if k in TASK_FIELD_SET})  # older files: other keys, defaults

    @property
    def queue_wait(self) -> float | None:
        """Seconds its current attempt waited between submission and its start on a worker."""
        if self.submitted_at is None or self.attempt_started_at is None:
            return None
        return max(self.attempt_started_at - self.submitted_at, 0.0)

    def add_point(self, step: int, loss: float | None, metric: float | None, at: float | None = None) -> None:
        point = [step, loss, metric, at if at is not None else time.time()]
        if self.history and self.history[-1][0] == step:
            self.history[-1] = point
            return
        self.history.append(point)
        if len(self.history) > HISTORY_POINTS:
            self.history = self.history[::2]

    def requeue(self) -> None:
        """Back in the queue (retried, or interrupted by a stop or a lost driver): the numbers of the attempt
        it left are no longer its own, so none of them stays."""
        self.status, self.value, self.error, self.seconds = QUEUED, None, None, None
        self.step, self.total, self.epoch = 0, 0, 0
        self.loss = self.metric = self.samples_per_s = None
        self.history = []


@dataclass
class JobState:
    """A whole job: its settings, its cluster, and every task."""

    job_dir: str
    status: str = STARTING  # starting | running | stopping | done | stopped | lost (driver gone)
    mode: str = ""
    spec: str = ""
    backbone: str = ""
    settings: dict = field(default_factory=dict)  # the job-wide FinetuneSettings (to_dict), under each task's overrides
    pid: int | None = None  # the driver process, its host and its start time (tells it from a reused pid)
    host: str | None = None
    pid_started: float | None = None
    address: str | None = None  # the Ray cluster
    cluster: dict = field(default_factory=dict)  # nodes, CPU, GPU
    resources: dict = field(default_factory=dict)  # per task: cpus, gpus; max_concurrent, retries
    timings: dict = field(default_factory=dict)  # seconds since command start: ray_ready, first_progress, ...
    pace: dict = field(default_factory=dict)  # orchestrator.pace.Pace.figures(): throughput, steps left, ETA
    usage: dict = field(default_factory=dict)  # the cluster's nodes and their use (cluster.usage), every few seconds
    started_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    tasks: dict[str, TaskState] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        out = {s: 0 for s in (QUEUED, RUNNING, RETRYING, DONE, FAILED)}
        for task in self.tasks.values():
            out[task.status] = out.get(task.status, 0) + 1
        return out

    @property
    def finished(self) -> int:
        return sum(t.finished for t in self.tasks.values())

    @property
    def samples_per_s(self) -> float:
        """The job's training rate: samples trained per second over the last seconds (the driver's pace),
        else the sum of the running tasks' own rates."""
        if self.pace.get("samples_per_s") is not None:
            return self.pace["samples_per_s"]
        return sum(t.samples_per_s or 0.0 for t in self.tasks.values() if t.status == RUNNING)

    def tally(self) -> str:
        """Every status with its count, in one line: '12 done, 1 failed, 3 queued of 16 tasks'."""
        counts = self.counts()
        parts = [f"{counts[s]} {s}" for s in (DONE, FAILED, RUNNING, RETRYING, QUEUED) if counts.get(s)]
        return f"{', '.join(parts) or 'no tasks'} of {len(self.tasks)} task{'s' if len(self.tasks) != 1 else ''}"

    def to_dict(self) -> dict:
        d = {name: getattr(self, name) for name in JOB_FIELDS}
        d["cluster"] = {k: list(v) if isinstance(v, list) else v for k, v in self.cluster.items()}
        d["resources"], d["timings"], d["settings"] = dict(self.resources), dict(self.timings), dict(self.settings)
        d["pace"], d["usage"] = dict(self.pace), dict(self.usage)
        d["tasks"] = {name: t.to_dict() for name, t in self.tasks.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "JobState":
        known = {f.name for f in fields(cls)}
        state = cls(**{k: v for k, v in d.items() if k in known and k != "tasks"})
        state.tasks = {name: TaskState.from_dict(t) for name, t in d.get("tasks", {}).items()}
        return state


TASK_FIELDS = tuple(f.name for f in fields(TaskState))
TASK_FIELD_SET = frozenset(TASK_FIELDS)
JOB_FIELDS = tuple(f.name for f in fields(JobState) if f.name != "tasks")


# On disk: the driver writes JOB_DIR/state.json; clients drop commands into JOB_DIR/control/.

STATE_FILE = "state.json"
CONTROL_DIR = "control"
LOGS_DIR = "logs"
ACTIONS = ("cancel", "retry", "retry_failed", "stop")  # retry: one failed task (by name)


def write_state(job_dir: str | Path, state: JobState) -> None:
    """Atomically replace JOB_DIR/state.json (temporary file + rename; readers never see half a file)."""
    path = Path(job_dir) / STATE_FILE
    write_text_atomic(path, json.dumps(state.to_dict(), allow_nan=False, default=_json_number))


def read_state(job_dir: str | Path) -> JobState | None:
    path = Path(job_dir) / STATE_FILE
    try:
        return JobState.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        return None


def log_path(job_dir: str | Path, task: str) -> Path:
    return Path(job_dir) / LOGS_DIR / f"{task}.log"


def write_task_log(job_dir: str | Path, task: str, lines) -> None:
    """A task's log: its latest LOG_LINES lines, replaced atomically (readers never see half a file)."""
    lines = list(lines)[-LOG_LINES:]
    write_text_atomic(log_path(job_dir, task), "".join(line + "\n" for line in lines))


def read_task_log(job_dir: str | Path, task: str) -> list[str]:
    try:
        return log_path(job_dir, task).read_text(encoding="utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        return []


def send_command(job_dir: str | Path, action: str, task: str | None = None) -> Path:
    """Leave a command for the driver of the job (it polls JOB_DIR/control/ a few times a second)."""
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r} (expected one of {', '.join(ACTIONS)})")
    path = Path(job_dir) / CONTROL_DIR / f"{time.time_ns()}-{uuid.uuid4().hex[:8]}.json"
    write_text_atomic(path, json.dumps({"action": action, "task": task}))
    return path


def take_commands(job_dir: str | Path) -> list[dict]:
    """Driver side: the commands left since the last call, oldest first (each is read once)."""
    folder = Path(job_dir) / CONTROL_DIR
    if not folder.is_dir():
        return []
    commands = []
    for path in sorted(folder.glob("*.json")):
        try:
            command = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            command = None
        path.unlink(missing_ok=True)
        if isinstance(command, dict) and command.get("action") in ACTIONS:
            commands.append(command)
    return commands


def _json_number(value):
    """numpy scalars and the like, as plain numbers."""
    return float(value)


def clean_number(value: float | None) -> float | None:
    """NaN and infinities are stored as null (state.json is strict JSON)."""
    return None if value is None or not math.isfinite(value) else float(value)
