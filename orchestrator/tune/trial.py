"""One Tune trial on a worker: a checkpointed run of the one fine-tuning recipe.

`run_trial(config, inputs)` is a plain function trainable: `inputs` (TrialInputs) reaches it through
`tune.with_parameters`, so the job's SharedRefs (the backbone and sequences, put once) and each task's
data travel as ObjectRefs; the trial rebuilds the backbone zero-copy (cached per worker process, and Tune
reuses the worker between trials), applies its config as task overrides and runs finetune_task, reporting
the validation metric to Tune at every evaluation, each report with a checkpoint of the run (task state:
weights, best weights, optimizer, step, RNG; peterrec.task_state), and its progress to the hub. A trial that
Tune starts from a checkpoint (resumed, retried, paused, or given another trial's by a PBT exploit)
continues from it; an exploit is recorded in the trial's lineage.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import ray
from ray import tune

from orchestrator.cluster import node_label
from orchestrator.shared import SharedRefs, shared_backbone, shared_sequences
from orchestrator.tune.results import META_KEYS, trial_name
from orchestrator.tune.schedulers import METRIC
from orchestrator.worker import HubReporter, InjectedFailure, error_text, worker_device
from peterrec.finetune import FinetuneSettings, finetune_task, with_overrides
from peterrec.task_state import read_task_state
from peterrec.training import Progress

FAULTS_ENV = "PETERREC_FAIL_TRIALS"
for _logger in ("ray.train._internal.storage", "ray.tune.trainable.trainable"):
    logging.getLogger(_logger).setLevel(logging.WARNING)  # else a console line per checkpoint saved or restored


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
    """finetune_task's on_progress: each new evaluation goes to Tune (one training_iteration each) with a
    checkpoint of the run, every step to the hub (rate-limited). Stops when the hub cancels; ASHA stops a
    trial inside tune.report, PBT pauses or exploits it there (the next run starts from a checkpoint)."""

    def __init__(self, hub: HubReporter, fixed: dict, meta: dict):
        self.hub, self.fixed, self.meta = hub, fixed, meta
        self.run = None  # peterrec.finetune.TaskRun, from finetune_task's on_start
        self.reported = 0  # evaluations reported (a resumed run: those of its checkpoint)

    def start(self, run) -> None:
        self.run, self.reported = run, len(run.state.history)

    @property
    def best(self) -> float | None:
        return self.run.state.best

    def __call__(self, p: Progress) -> bool:
        cancelled = self.hub(p)
        history = self.run.state.history
        if not p.done and len(history) > self.reported:  # at the step of an evaluation (an epoch's: one after)
            self.reported = len(history)
            self.report({METRIC: history[-1]["metric"], "best_valid": self.best, "step": p.step,
                         "total_steps": p.total_steps, "loss": p.loss, "evaluations": len(history)}, {})
        return cancelled

    def report(self, metrics: dict, meta: dict) -> None:
        """tune.report with a checkpoint of the run as it stands (Tune copies it into the trial's storage
        before report returns, so the temporary directory can go)."""
        with tempfile.TemporaryDirectory(prefix="trial-") as tmp:
            path = self.run.save(Path(tmp) / "state", {**self.meta, "step": self.run.state.step, **meta})
            tune.report({**metrics, **self.fixed}, checkpoint=tune.Checkpoint.from_directory(str(path)))


def run_trial(config: dict, inputs: TrialInputs) -> None:
    task, sample = config["task"], config["sample"]
    searched = {k: v for k, v in config.items() if k not in META_KEYS}
    spec, data_ref = inputs.tasks[task]
    name = trial_name(task, sample)
    device = worker_device(inputs.cpus, inputs.gpus)
    attempt, _ = inputs.hub.started(name, node_label(), os.getpid())
    trial_id = tune.get_context().get_trial_id()
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
        with contextlib.ExitStack() as stack:
            checkpoint = tune.get_checkpoint()
            resume_from = Path(stack.enter_context(checkpoint.as_directory())) if checkpoint else None
            lineage, start = restored_lineage(resume_from, trial_id, searched) if resume_from else ([], 0)
            # run_id / run_start: each run of a trial (resumed, retried, paused, exploited) counts the steps it
            # trains from its start (orchestrator.tune.monitor's ledger -> steps_trained)
            fixed = {"eval_every": eval_every, "attempt": attempt, "backbone_zero_copy": zero_copy(backbone, inputs),
                     "run_id": f"{trial_id}:{attempt}:{start}", "run_start": start, "lineage": json.dumps(lineage)}
            meta = {"trial_id": trial_id, "task": task, "sample": sample, "config": searched, "lineage": lineage}
            reporter = TuneReporter(HubReporter(inputs.hub, name, attempt), fixed, meta)
            run_spec = replace(spec, overrides={**overrides, "log_every": 1})
            outcome = finetune_task(backbone, run_spec, data, sequences, inputs.settings, device, reporter,
                                    resume_from=resume_from, on_start=reporter.start)
    except Exception as e:  # reported, then raised so that Tune retries the trial (FailureConfig)
        inputs.hub.attempt_failed(name, attempt, error_text(e))
        raise
    valid = outcome.valid[spec.metric]
    best = valid if reporter.best is None else max(reporter.best, valid)
    # The finished (keep-best) weights are the last checkpoint: `tune --export` writes them into a bundle.
    reporter.report({METRIC: valid, "best_valid": best, "test_value": outcome.value, "final": True,
                     "step": outcome.result.steps, "total_steps": outcome.result.steps,
                     "loss": outcome.result.final_loss, "evaluations": len(outcome.result.history),
                     "trained_params": outcome.params.trained_params}, {"final": True})


def restored_lineage(path: Path, trial_id: str, searched: dict) -> tuple[list, int]:
    """(lineage, step) of the checkpoint a trial starts from. Another trial's checkpoint is a PBT exploit:
    {trial, parent, step, perturbed: {key: [parent's value, this trial's]}} goes after the parent's lineage."""
    document = read_task_state(path)
    meta, step = document["meta"], int(document["step"])
    lineage = list(meta.get("lineage", []))
    if meta.get("trial_id") != trial_id:
        parent = meta.get("config", {})
        lineage.append({"trial": trial_id, "parent": meta.get("trial_id"), "step": step,
                        "perturbed": {k: [parent.get(k), v] for k, v in searched.items() if parent.get(k) != v}})
    return lineage, step


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
