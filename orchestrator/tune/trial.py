"""One Tune trial on a worker, and the scheduler that keeps tasks apart.

`run_trial(config, inputs)` is a plain function trainable: `inputs` (TrialInputs) reaches it through
`tune.with_parameters`, so the job's SharedRefs (the backbone and sequences, put once) and each task's
data travel as ObjectRefs; the trial rebuilds the backbone zero-copy (cached per worker process, and Tune
reuses the worker between trials), applies its config as task overrides and runs the one fine-tuning
recipe, reporting the validation metric to Tune at every evaluation and its progress to the hub.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, replace

import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from orchestrator.cluster import node_label
from orchestrator.shared import SharedRefs, shared_backbone, shared_sequences
from orchestrator.tune.results import META_KEYS, trial_name
from orchestrator.worker import HubReporter, InjectedFailure, error_text, worker_device
from peterrec.finetune import FinetuneSettings, finetune_task, with_overrides
from peterrec.training import Progress

METRIC = "valid_metric"  # every task's own validation metric (accuracy, mrr@5, ...): higher is better
MODE = "max"
FAULTS_ENV = "PETERREC_FAIL_TRIALS"


@dataclass
class TrialInputs:
    """Everything a trial reads besides its config; small, its big parts are ObjectRefs."""

    shared: SharedRefs
    tasks: dict  # task name -> (TaskSpec, ObjectRef of its TaskData)
    settings: FinetuneSettings  # the command line's; the task's overrides and the trial's config go on top
    hub: object  # orchestrator.hub.ActorHub
    cpus: float
    gpus: float
    evals: int  # evaluations per trial: the rungs ASHA can compare trials at


class TuneReporter:
    """training.train's on_progress: every evaluation (every `eval_every` steps; 0: none) goes to Tune, one
    training_iteration each, and every step to the hub (rate-limited). Stops when the hub cancels; ASHA
    stops a trial inside tune.report."""

    def __init__(self, hub: HubReporter, eval_every: int, fixed: dict):
        self.hub, self.eval_every, self.fixed = hub, eval_every, fixed
        self.best, self.last_step = float("-inf"), -1

    def __call__(self, p: Progress) -> bool:
        cancelled = self.hub(p)
        if (self.eval_every and p.metric is not None and not p.done and p.step % self.eval_every == 0
                and p.step != self.last_step):
            self.last_step = p.step
            self.best = max(self.best, p.metric)
            tune.report({METRIC: p.metric, "best_valid": self.best, "step": p.step, "total_steps": p.total_steps,
                         "loss": p.loss, **self.fixed})
        return cancelled


def run_trial(config: dict, inputs: TrialInputs) -> None:
    task, sample = config["task"], config["sample"]
    searched = {k: v for k, v in config.items() if k not in META_KEYS}
    spec, data_ref = inputs.tasks[task]
    name = trial_name(task, sample)
    device = worker_device(inputs.cpus, inputs.gpus)
    attempt, _ = inputs.hub.started(name, node_label(), os.getpid())
    try:
        if attempt <= injected_failures(name):
            raise InjectedFailure(f"injected failure of attempt {attempt} ({FAULTS_ENV})")
        backbone = shared_backbone(inputs.shared, device)
        data, sequences = ray.get(data_ref), shared_sequences(inputs.shared)
        overrides = {**spec.overrides, **searched}
        if sample == 0:  # the baseline: exactly the run `finetune` would make, its evaluation cadence included
            eval_every = with_overrides(inputs.settings, overrides).train.eval_every
        else:  # ~evals evaluations per trial, whatever its batch size: ASHA's rungs are shares of the budget
            total = with_overrides(inputs.settings, overrides).train.total_steps(len(data.part("train")[1]))
            eval_every = overrides["eval_every"] = max(1, total // inputs.evals)
        fixed = {"eval_every": eval_every, "attempt": attempt, "backbone_zero_copy": zero_copy(backbone, inputs)}
        # The baseline reports only its final result: it stays out of ASHA (PerTaskScheduler).
        reporter = TuneReporter(HubReporter(inputs.hub, name, attempt), eval_every if sample else 0, fixed)
        run_spec = replace(spec, overrides={**overrides, "log_every": 1})
        outcome = finetune_task(backbone, run_spec, data, sequences, inputs.settings, device, reporter)
    except Exception as e:  # reported, then raised so that Tune retries the trial (FailureConfig)
        inputs.hub.attempt_failed(name, attempt, error_text(e))
        raise
    valid = outcome.valid[spec.metric]
    tune.report({METRIC: valid, "best_valid": max(reporter.best, valid), "test_value": outcome.value,
                 "final": True, "step": outcome.result.steps, "total_steps": outcome.result.steps,
                 "loss": outcome.result.final_loss, "evaluations": len(outcome.result.history),
                 "trained_params": outcome.params.trained_params, **fixed})


def injected_failures(name: str) -> int:
    """Attempts of trial `name` to fail on purpose, from PETERREC_FAIL_TRIALS ("task#1" = every attempt,
    "task#1:N" = the first N), to exercise retries. Read on the worker: set it before Ray starts."""
    for item in filter(None, (s.strip() for s in os.environ.get(FAULTS_ENV, "").split(","))):
        trial, _, count = item.partition(":")
        if trial == name:
            return int(count) if count else 1_000_000
    return 0


def zero_copy(backbone, inputs: TrialInputs) -> bool:
    """Whether every backbone tensor of this trial is the object store's read-only buffer (no copy)."""
    if next(backbone.parameters()).device.type != "cpu":
        return False  # on a GPU each worker process holds one copy, by design
    arrays = ray.get(inputs.shared.backbone)  # another zero-copy view of the same shared buffers
    state = backbone.state_dict()
    return all(not a.flags.writeable and state[k].data_ptr() == a.ctypes.data for k, a in arrays.items())


class PerTaskScheduler(FIFOScheduler):
    """One ASHA per task, so a trial is only ever compared with trials of its own task (and metric).
    A task's baseline (sample 0) stays out of it: it runs its whole budget at `finetune`'s evaluation
    cadence, as the reference. Trials start in submission order (FIFO), which interleaves the tasks."""

    def __init__(self, tasks: list[str], evals: int):
        super().__init__()
        self._metric = METRIC
        self.grace_period = max(1, evals // 4)
        # Rungs at grace * 2^k up to max_t: below the last evaluation, where stopping would save nothing.
        # stop_last_trials=False: a trial that survives every rung finishes its budget and reports its
        # final (test) figures, rather than being stopped at max_t.
        max_t = max(self.grace_period, evals - 1)
        self.by_task = {t: ASHAScheduler(metric=METRIC, mode=MODE, max_t=max_t, grace_period=self.grace_period,
                                         reduction_factor=2, stop_last_trials=False) for t in tasks}

    def _asha(self, trial):
        return None if trial.config["sample"] == 0 else self.by_task[trial.config["task"]]

    def on_trial_add(self, controller, trial):
        if asha := self._asha(trial):
            asha.on_trial_add(controller, trial)

    def on_trial_result(self, controller, trial, result):
        asha = self._asha(trial)
        return asha.on_trial_result(controller, trial, result) if asha else self.CONTINUE

    def on_trial_complete(self, controller, trial, result):
        if asha := self._asha(trial):
            with contextlib.suppress(KeyError):  # a trial ASHA never saw added (restored by --resume)
                asha.on_trial_complete(controller, trial, result)

    def on_trial_remove(self, controller, trial):
        if asha := self._asha(trial):
            with contextlib.suppress(KeyError):
                asha.on_trial_remove(controller, trial)

    def debug_string(self) -> str:
        return f"ASHA per task (grace period {self.grace_period} evaluations, reduction factor 2)"


def make_scheduler(kind: str, tasks: list[str], evals: int):
    if kind == "asha":
        return PerTaskScheduler(tasks, evals)
    if kind == "fifo":
        return FIFOScheduler()
    raise ValueError(f"unknown scheduler {kind!r}")
