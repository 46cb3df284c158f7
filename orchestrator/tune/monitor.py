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
    """Tune callback: hands the trial list to this process's monitor after every step of Tune's loop, and
    every result to its ledger of steps trained."""

    def on_step_end(self, iteration, trials, **info):
        if _active[0] is not None:
            _active[0].step(trials)

    def on_experiment_end(self, trials, **info):
        # Who is who only (a search resumed with nothing left to run never steps); the statuses stay as last
        # seen while running, where a trial cut by Ctrl-C still shows RUNNING.
        if _active[0] is not None:
            for trial in trials:
                _active[0].identify(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        # Every result, the one a PBT exploit replaces included (Tune's own result log drops that one).
        if _active[0] is not None and "run_id" in result:
            _active[0].count(trial.trial_id, result["run_id"], result["run_start"], result["step"])

    def get_state(self):  # kept in Tune's experiment state: --resume brings the ledger back
        return {"ledger": _active[0].ledger} if _active[0] is not None else None

    def set_state(self, state):
        if _active[0] is not None and state:
            _active[0].ledger.update(state.get("ledger", {}))


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
        # Tune's trial directory -> ((task, sample), trial_id): which trial a Result of the ResultGrid is. Not
        # Result.config: until a trial on a reused actor has reported, Tune shows the config and trial_id of
        # that actor's previous trial there (Trial.set_ray_actor asks the actor before its reset; issue 16).
        self.identity: dict[str, tuple[tuple, str]] = {}
        self.running: dict[str, st.TaskState] = {}
        self.ledger: dict[str, dict] = {}  # trial_id -> run_id -> [start step, last step reported]
        self.task_of: dict[str, str] = {}  # trial_id -> task
        self._version, self._pulled = 0, 0.0
        self.out_dir = plan.out_dir
        self.rows: dict[str, dict] = {}  # trial id -> its trials.parquet row as it stands
        self._written = 0.0

    def step(self, trials) -> None:
        for trial in trials:
            view = self.identify(trial)
            if view is None:
                continue
            key = (view.task, view.sample)
            self.task_of[trial.trial_id] = view.task
            result = trial.last_result or {}
            if result.get("trial_id") != trial.trial_id:  # a reused actor's stand-in for its previous trial
                result = {}
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

    def identify(self, trial) -> "TrialView | None":
        """The trial's view, made when first seen, and its entry in `identity`; None: not a trial of this
        search."""
        key = (trial.config.get("task"), trial.config.get("sample"))
        if key[0] not in self.tasks:
            return None
        try:
            self.identity[trial.path] = (key, trial.trial_id)
        except RuntimeError:  # its directory is named when it is first scheduled
            pass
        return self.tasks[key[0]].trials.setdefault(
            key[1], TrialView(*key, {k: v for k, v in trial.config.items() if k not in META_KEYS}))

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

    def count(self, trial_id: str, run_id: str, start: int, step: int) -> None:
        runs = self.ledger.setdefault(trial_id, {})
        run = runs.setdefault(run_id, [start, start])
        run[1] = max(run[1], step)

    def steps_trained(self, trial_id: str) -> int | None:
        """Steps the trial computed over all its runs (resumed, retried, paused, exploited: each from where it
        started to its last report; steps after the last report of a run that was cut are not seen)."""
        runs = self.ledger.get(trial_id)
        return sum(last - start for start, last in runs.values()) if runs else None

    def steps_per_task(self) -> dict[str, int]:
        """Steps trained so far by each task's trials (the budget a search has spent on it)."""
        spent = dict.fromkeys(self.tasks, 0)
        for trial_id, task in self.task_of.items():
            spent[task] += self.steps_trained(trial_id) or 0
        return spent

    def counts(self) -> dict[str, int]:
        statuses = list(self.statuses.values())
        return {"ended": sum(s in ENDED for s in statuses), "running": sum(s == "RUNNING" for s in statuses)}
