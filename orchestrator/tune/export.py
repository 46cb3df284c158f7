"""`tune --export`: a bundle of each task's best trial, from that trial's final checkpoint, so that the best
weights become the task's result without being trained again.

Per task of best.json: the model is rebuilt with the settings the tuned spec gives `finetune` (the task's
overrides and the trial's config, its evaluation cadence included), its trainable tensors are loaded from the
trial's last checkpoint (peterrec.task_state), it is evaluated on valid and test, and written with
peterrec.bundle.write_task as a `finetune` job writes its bundle. Its validation value must be the trial's
score: otherwise that checkpoint is not the weights the trial was ranked by, and nothing is written for it.
"""

from __future__ import annotations

import contextlib
from dataclasses import replace
from pathlib import Path

import torch

from orchestrator.results import target_raw_ids
from orchestrator.tune.results import read_best, read_trials
from peterrec.bundle import backbone_fingerprint, write_task
from peterrec.finetune import prepare_task
from peterrec.task_state import load_task_state

BUNDLE = "bundle"  # OUT/bundle
TOLERANCE = 1e-6


def export_best(plan, threads: int = 1) -> Path:
    """Write OUT/bundle from a finished search's best checkpoints (`plan`: orchestrator.tune.SearchPlan);
    `threads`: the trials' torch thread count (evaluations then sum in the trials' order)."""
    out_dir = Path(plan.out_dir)
    best = read_best(out_dir)
    trials = {t.trial_id: t for t in read_trials(out_dir)}
    bundle_dir = out_dir / BUNDLE
    fingerprint = backbone_fingerprint(plan.backbone)
    models = []
    with _threads(threads):
        for spec in plan.tasks:  # every model checked before anything is written
            b = best.get(spec.name, {})
            if b.get("score") is None:
                raise ValueError(f"{out_dir / 'best.json'}: task {spec.name!r} has no best trial to export "
                                 f"({b.get('error', 'not in the search')})")
            trial = trials.get(b["trial_id"])
            if trial is None or not trial.checkpoint:
                raise ValueError(f"{out_dir / 'trials.parquet'}: trial {b['trial_id']} ({spec.name}) has no "
                                 f"checkpoint to export")
            checkpoint = out_dir / trial.checkpoint
            run_spec = replace(spec, overrides=b["overrides"])  # what the tuned spec gives `finetune`
            task = prepare_task(plan.backbone, run_spec, plan.task_data[spec.name], plan.sequences, plan.settings)
            load_task_state(checkpoint, task.model)
            valid = task.evaluators["valid"].evaluate(task.model)
            if not abs(valid[spec.metric] - b["score"]) <= TOLERANCE:
                raise ValueError(f"{checkpoint}: its weights score {valid[spec.metric]:.6f} ({spec.metric}) on valid "
                                 f"where trial {b['trial_id']} reported {b['score']:.6f}: not the weights the trial "
                                 f"was ranked by; nothing exported")
            test = task.evaluators["test"].evaluate(task.model)
            metrics = {"metric": spec.metric, "value": test[spec.metric], "valid": valid, "test": test,
                       "steps": trial.steps, "tuned": {"trial_id": trial.trial_id, "sample": trial.sample,
                                                       "checkpoint": trial.checkpoint}}
            models.append((run_spec, task, metrics))
    for run_spec, task, metrics in models:
        write_task(bundle_dir, task.model, run_spec, task.settings, metrics, fingerprint, plan.backbone.config,
                   target_raw_ids=target_raw_ids(run_spec))
    return bundle_dir


@contextlib.contextmanager
def _threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, n))
    try:
        yield
    finally:
        torch.set_num_threads(before)
