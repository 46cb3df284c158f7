"""The schedulers of a search: one ASHA, PBT or PB2 per task inside the one Tuner.

Tune hands a scheduler every trial of the experiment, and a search holds every task's trials (each with its
own metric). PerTaskScheduler gives each task its own scheduler and each of those a view of the controller
that holds only that task's trials (TaskView): ASHA compares, and PBT ranks, copies and time-shares, within
one task only. A task's baseline (sample 0) stays out: it runs its whole budget at `finetune`'s cadence, as
the reference. Population-based training copies a donor's config with its checkpoint; _WithinTask keeps the
trial's identity (task, sample) and the explored values inside the search space.
"""

from __future__ import annotations

import contextlib

from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining
from ray.tune.schedulers.pb2 import PB2  # imports without scikit-learn; constructing one needs it

from orchestrator.tune.results import META_KEYS

METRIC = "valid_metric"  # every task's own validation metric (accuracy, mrr@5, ...): higher is better
MODE = "max"
EXPLORED = ("lr", "weight_decay")  # what PBT may change: other keys change shapes or an epoch's steps


class TaskView:
    """The controller as one task's scheduler sees it: get_trials / get_live_trials hold that task's
    searched trials only, so PBT's quantiles, its "anyone waiting?" check and its choice of the next trial
    never look at another task; everything else (pause_trial, _schedule_trial_save, ...) is the controller."""

    def __init__(self, controller, task: str):
        self._controller, self._task = controller, task

    def _mine(self, trials):
        return [t for t in trials if task_of(t) == self._task]

    def get_trials(self):
        return self._mine(self._controller.get_trials())

    def get_live_trials(self):
        return set(self._mine(self._controller.get_live_trials()))

    def __getattr__(self, name):
        return getattr(self._controller, name)


def task_of(trial) -> str | None:
    """The task whose scheduler a trial belongs to; None for a baseline (no scheduler)."""
    return trial.config["task"] if trial.config.get("sample") else None


class _WithinTask:
    """PBT / PB2 within one task. An exploit copies the donor's whole config (its shapes too, so that the
    donor's checkpoint fits) and explores lr and weight decay; the trial keeps its own task and sample, and
    an explored value stays in the space: a range is clipped to its bounds (PBT multiplies by 0.8 / 1.2
    whatever the bounds) and rounded to 4 significant digits as drawn values are, a choice snaps to its
    nearest value (PB2 treats it as a range)."""

    dims: dict = {}

    def _get_new_config(self, trial, trial_to_clone):
        config, operations = super()._get_new_config(trial, trial_to_clone)
        for key in META_KEYS:
            config[key] = trial.config[key]
        for key, dim in self.dims.items():
            if dim.kind == "choice":
                config[key] = min(dim.values, key=lambda v: abs(v - config[key]))
            else:
                value = int(round(config[key])) if dim.kind == "randint" else float(f"{config[key]:.4g}")
                config[key] = min(max(value, dim.low), dim.high)
        return config, operations


class TaskPBT(_WithinTask, PopulationBasedTraining):
    def __init__(self, dims: dict, **kwargs):
        # A range is a Domain (resampled, or multiplied by 0.8 / 1.2); a choice a sorted list (resampled, or
        # moved to a neighbour). A tune.choice would be multiplied, leaving the choice.
        mutations = {k: sorted(d.values) if d.kind == "choice" else d.to_tune() for k, d in dims.items()}
        super().__init__(hyperparam_mutations=mutations, **kwargs)
        self.dims = dims


class TaskPB2(_WithinTask, PB2):
    """PB2: the explored values come from a GP bandit over the task's (time, lr, weight decay -> score)
    history instead of random perturbations (scikit-learn). Its bounds are linear."""

    def __init__(self, dims: dict, **kwargs):
        super().__init__(hyperparam_bounds={k: [min(d.values), max(d.values)] if d.kind == "choice"
                                            else [d.low, d.high] for k, d in dims.items()}, **kwargs)
        self.dims = dims


class PerTaskScheduler(FIFOScheduler):
    """One scheduler per task (ASHA, PBT or PB2), so that a trial is only ever compared with trials of its
    own task (and metric). Baselines, final reports and the evaluation at a trial's last step never reach
    them: the latter two are the trial's result, not a rung or a perturbation point (an exploit there would
    copy finished weights and train nothing). Trials start in submission order (which interleaves the
    tasks); PBT's paused trials resume after them, the least trained first."""

    def __init__(self, tasks: list[str], evals: int, kind: str = "asha", space: dict | None = None):
        super().__init__()
        self._metric, self.kind = METRIC, kind
        self.grace_period = max(1, evals // 4)
        dims = {k: d for k, d in (space or {}).items() if k in EXPLORED and d.kind != "fixed"}
        if kind in ("pbt", "pb2") and not dims:
            raise ValueError(f"--scheduler {kind} explores lr and weight_decay, and the search space fixes both")
        common = dict(time_attr="training_iteration", metric=METRIC, mode=MODE, quantile_fraction=0.25,
                      perturbation_interval=self.grace_period, log_config=False)

        def make():
            if kind == "pbt":  # every `grace_period` evaluations the worst quarter copies the best quarter
                return TaskPBT(dims, resample_probability=0.25, **common)
            if kind == "pb2":
                return TaskPB2(dims, **common)
            # Rungs at grace * 2^k up to max_t, below the last evaluation, where stopping would save nothing;
            # stop_last_trials=False: a trial that survives every rung runs its budget and reports its test figures.
            return ASHAScheduler(metric=METRIC, mode=MODE, max_t=max(self.grace_period, evals - 1),
                                 grace_period=self.grace_period, reduction_factor=2, stop_last_trials=False)

        self.by_task = {t: make() for t in tasks}

    def _mine(self, controller, trial):
        task = task_of(trial)
        return (self.by_task[task], TaskView(controller, task)) if task is not None else (None, None)

    def on_trial_add(self, controller, trial):
        scheduler, view = self._mine(controller, trial)
        if scheduler:
            scheduler.on_trial_add(view, trial)

    def on_trial_result(self, controller, trial, result):
        scheduler, view = self._mine(controller, trial)
        if scheduler is None or result.get("final") or result.get("step", 0) >= result.get("total_steps", 1 << 62):
            return self.CONTINUE
        return scheduler.on_trial_result(view, trial, result)

    def on_trial_complete(self, controller, trial, result):
        scheduler, view = self._mine(controller, trial)
        if scheduler:
            with contextlib.suppress(KeyError):  # a trial it never saw added (restored by --resume)
                scheduler.on_trial_complete(view, trial, result)

    def on_trial_remove(self, controller, trial):
        scheduler, view = self._mine(controller, trial)
        if scheduler:
            with contextlib.suppress(KeyError):
                scheduler.on_trial_remove(view, trial)

    def choose_trial_to_run(self, controller):
        trials = controller.get_trials()
        for trial in trials:
            if trial.status == "PENDING":
                return trial
        paused = [t for t in trials if t.status == "PAUSED"]
        return min(paused, key=lambda t: t.last_result.get("training_iteration", 0)) if paused else None

    def debug_string(self) -> str:
        return f"{self.kind} per task (every {self.grace_period} evaluations)"


def make_scheduler(kind: str, tasks: list[str], evals: int, space: dict | None = None):
    if kind in ("asha", "pbt", "pb2"):
        return PerTaskScheduler(tasks, evals, kind, space)
    if kind == "fifo":
        return FIFOScheduler()
    raise ValueError(f"unknown scheduler {kind!r}")
