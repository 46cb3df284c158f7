"""Following a search while it runs: a Tune callback feeds a SearchMonitor in the driver, which merges
what Tune knows (each trial's status and reported scores) with the progress hub (each running trial's
step, loss and validation metric). Displays (tui/console.py) read the monitor; they never touch Ray. The
monitor also rewrites OUT/trials.parquet every few seconds, so another process (`tui --tune OUT`) follows
the search while it runs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from ray import tune

from orchestrator import state as st
from orchestrator.tune.results import LIVE_S, META_KEYS, live_status, trial_name, trial_row, write_trials

PULL_S = 0.5  # hub snapshots at most this often
ENDED = ("TERMINATED", "ERROR")

# Tune stores its RunConfig (callbacks included) in the experiment, and a resumed search gets them back
# from there; so the callback holds nothing, and finds the monitor of the search this process runs here.
_active: list = [None]


def activate(monitor: "SearchMonitor | None") -> None:
    _active[0] = monitor


class Forward(tune.Callback):
    """Tune callback: hands the trial list to this process's monitor after every step of Tune's loop."""

    def on_step_end(self, iteration, trials, **info):
        if _active[0] is not None:
            _active[0].step(trials)


@dataclass
class TrialView:
    task: str
    sample: int
    config: dict
    status: str = "PENDING"  # Tune's: PENDING, RUNNING, PAUSED, TERMINATED, ERROR
    score: float | None = None  # best validation metric so far
    final: bool = False  # ran its whole budget
    seconds: float | None = None

    @property
    def ended(self) -> bool:
        return self.status in ENDED

    @property
    def failed(self) -> bool:
        return self.status == "ERROR"


@dataclass
class TaskBest:
    metric: str
    trials: dict = field(default_factory=dict)  # sample -> TrialView

    def best(self) -> TrialView | None:
        scored = [t for t in self.trials.values() if t.score is not None]
        return max(scored, key=lambda t: (t.score, -t.sample)) if scored else None


class SearchMonitor:
    """The live state of a search, in the driver: `statuses` (Tune's, per trial), `tasks` (per task, its
    trials and best so far) and `running` (the hub's TaskState of each running trial)."""

    def __init__(self, plan, hub, on_update=None):
        self.hub, self.on_update = hub, on_update
        self.total = len(plan.points)
        self.tasks = {t.name: TaskBest(t.metric) for t in plan.tasks}
        self.statuses: dict[tuple, str] = {}  # (task, sample) -> Tune's status, as last seen
        self.running: dict[str, st.TaskState] = {}
        self._version, self._pulled = 0, 0.0
        self.out_dir = plan.out_dir
        self.rows: dict[str, dict] = {}  # trial id -> its trials.parquet row as it stands
        self._written = 0.0

    def step(self, trials) -> None:
        for trial in trials:
            key = (trial.config.get("task"), trial.config.get("sample"))
            if key[0] not in self.tasks:
                continue
            view = self.tasks[key[0]].trials.setdefault(
                key[1], TrialView(*key, {k: v for k, v in trial.config.items() if k not in META_KEYS}))
            result = trial.last_result or {}
            view.status, view.score = trial.status, result.get("best_valid", view.score)
            view.final, view.seconds = bool(result.get("final")), result.get("time_total_s")
            if trial.status in ENDED and self.statuses.get(key) not in ENDED:  # ended now, or before a resume
                failed = trial.status == "ERROR"
                self.hub.finished(trial_name(*key), st.FAILED if failed else st.DONE,
                                         value=result.get("test_value"), error="failed" if failed else None,
                                         seconds=view.seconds)
            self.statuses[key] = trial.status
            self.rows[trial.trial_id] = trial_row(self.tasks[key[0]].metric, trial.config, trial.trial_id,
                                                  live_status(trial.status, result), result)
        self.refresh()
        self.write_live()

    def write_live(self, force: bool = False) -> None:
        """trials.parquet as the search stands, at most every LIVE_S seconds."""
        now = time.monotonic()
        if self.rows and (force or now - self._written >= LIVE_S):
            self._written = now
            write_trials(self.out_dir, list(self.rows.values()))

    def refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._pulled < PULL_S:
            return
        self._pulled = now
        snapshot = self.hub.snapshot(self._version)
        self._version = snapshot["version"]
        for name, task in snapshot["tasks"].items():
            self.running[name] = st.TaskState.from_dict(task)
        self.running = {n: t for n, t in self.running.items() if t.status in (st.RUNNING, st.RETRYING)}
        if self.on_update:
            self.on_update(self)

    def counts(self) -> dict[str, int]:
        statuses = list(self.statuses.values())
        return {"ended": sum(s in ENDED for s in statuses), "running": sum(s == "RUNNING" for s in statuses)}
