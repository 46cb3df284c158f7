"""Fine-tuning recipe for one task: data -> task model -> train (one loop) -> evaluate.

The in-process CLI, the Ray workers and the Tune trials all call finetune_task(); they differ only in
where the backbone comes from and where progress goes.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Callable, Iterator

import numpy as np
import torch

from peterrec.backbone import Backbone
from peterrec.compiled import training_loss
from peterrec.config import REPRESENTATIONS, PatchConfig
from peterrec.efficiency import ParamReport, param_report
from peterrec.modes import get_mode
from peterrec.metrics import accuracy, parse_metric, rank_metrics_for, row_values, sample_negatives
from peterrec.task_model import TaskModel, build_task_model
from peterrec.task_state import load_task_state, save_task_state
from peterrec.training import (Progress, TrainConfig, TrainResult, TrainState, autocast_for, make_optimizer, train,
                               trainable_parameters)

EVAL_BATCH = 512


@dataclass
class FinetuneSettings:
    """Everything that shapes one fine-tuning run besides the data."""

    mode: str = "peterrec"
    patch: PatchConfig = field(default_factory=PatchConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=5, batch_size=64, lr=1e-3))
    finelast_blocks: int = 1
    representation: str = "auto"
    eval_negatives: int = 99  # the paper's protocol; 0 = full ranking over the target vocabulary
    input_len: int = 0  # a user's latest items the task reads; 0 = the backbone's max_len

    def to_dict(self) -> dict:
        return {"mode": self.mode, "patch": self.patch.to_dict(), "train": self.train.to_dict(),
                "finelast_blocks": self.finelast_blocks, "representation": self.representation,
                "eval_negatives": self.eval_negatives, "input_len": self.input_len}

    @classmethod
    def from_dict(cls, d: dict) -> "FinetuneSettings":
        """From to_dict()'s form (a job's state, a bundle entry's settings)."""
        train_keys = {f.name for f in fields(TrainConfig)}
        return cls(mode=d["mode"], patch=PatchConfig.from_dict(d["patch"]),
                   train=TrainConfig(**{k: v for k, v in d["train"].items() if k in train_keys}),
                   finelast_blocks=d["finelast_blocks"], representation=d["representation"],
                   eval_negatives=d["eval_negatives"], input_len=d.get("input_len", 0))


TRAIN_KEYS = {f.name for f in fields(TrainConfig)}
PATCH_KEYS = {f.name for f in fields(PatchConfig)}
TOP_KEYS = {"mode", "finelast_blocks", "representation", "eval_negatives", "input_len"}
OVERRIDE_KEYS = TRAIN_KEYS | PATCH_KEYS | TOP_KEYS


def with_overrides(settings: FinetuneSettings, overrides: dict) -> FinetuneSettings:
    """Settings with per-task overrides (a task spec's [task.overrides] or a Tune config) applied."""
    if "bf16" in overrides and "precision" not in overrides:  # older specs: bf16 = true | false
        overrides = {**overrides, "precision": "bf16" if overrides["bf16"] else "fp32"}
    overrides = {k: v for k, v in overrides.items() if k != "bf16"}
    unknown = sorted(set(overrides) - OVERRIDE_KEYS)
    if unknown:
        raise ValueError(f"unknown hyper-parameter override(s) {unknown}; known: {sorted(OVERRIDE_KEYS)}")
    pick = lambda keys: {k: v for k, v in overrides.items() if k in keys}  # noqa: E731
    return replace(settings, **pick(TOP_KEYS), patch=replace(settings.patch, **pick(PATCH_KEYS)),
                   train=replace(settings.train, **pick(TRAIN_KEYS)))


def check_settings(settings: FinetuneSettings, backbone_config) -> None:
    """ValueError naming the setting when these settings cannot make a task model over a backbone of this
    shape (checked before any training starts)."""
    mode = get_mode(settings.mode)
    if mode.patched:
        settings.patch.width(backbone_config.channels)
    blocks = len(backbone_config.dilations)
    if mode.trains == "last_blocks" and not 1 <= settings.finelast_blocks <= blocks:
        raise ValueError(f"finelast_blocks must lie in 1..{blocks} (got {settings.finelast_blocks})")
    if settings.eval_negatives < 0:
        raise ValueError(f"eval_negatives must be >= 0 (got {settings.eval_negatives}; 0 ranks the whole target "
                         f"vocabulary)")
    if not 0 <= settings.input_len <= backbone_config.max_len:
        raise ValueError(f"input_len must lie in 0..{backbone_config.max_len} (the backbone's max_len; 0 = all of "
                         f"it), got {settings.input_len}")
    if settings.representation not in REPRESENTATIONS:
        raise ValueError(f"unknown representation {settings.representation!r} (expected one of "
                         f"{', '.join(REPRESENTATIONS)})")


def task_arrays(task_data, sequences, part: str, max_len: int, input_len: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(items (N, max_len) left-padded, labels (N,)) of one split of a task; with input_len, only each
    user's latest input_len items (the same width, so tasks of any input_len pack together)."""
    rows, labels = task_data.part(part)
    items = sequences.padded(rows, max_len)
    if input_len and input_len < max_len:
        items[:, :-input_len] = 0
    return items, np.asarray(labels, dtype=np.int64)


class TaskEvaluator:
    """Scores one split of a task with the task's metric; candidates are fixed once, so every mode
    and every evaluation ranks against the same negatives."""

    def __init__(self, kind: str, metric: str, num_outputs: int, items: np.ndarray, labels: np.ndarray,
                 negatives: int = 99, seed: int = 0, precision: str = "fp32"):
        self.kind, self.metric, self.precision = kind, metric, precision
        self.base, self.k = parse_metric(metric)
        self.items = torch.as_tensor(items)
        self.labels = torch.as_tensor(labels)
        self.negatives = None
        if kind == "coldrec" and negatives:
            self.negatives = torch.as_tensor(sample_negatives(labels, num_outputs, negatives, seed))

    def __len__(self) -> int:
        return len(self.labels)

    @torch.inference_mode()
    def scores(self, model: TaskModel) -> torch.Tensor:
        device = next(model.parameters()).device
        with autocast_for(device, self.precision):
            parts = [model.scores(self.items[i:i + EVAL_BATCH].to(device)).float().cpu()
                     for i in range(0, len(self.items), EVAL_BATCH)]
        return torch.cat(parts) if parts else torch.empty(0)

    def evaluate(self, model: TaskModel) -> dict[str, float]:
        """All metrics for this split; the task metric is under its own name."""
        if len(self) == 0:
            return {self.metric: float("nan")}
        was_training = model.training
        model.eval()
        scores = self.scores(model)
        model.train(was_training)
        if self.kind == "classify":
            return {"accuracy": accuracy(scores, self.labels)}
        return rank_metrics_for(scores, self.labels, self.negatives, self.k)

    def row_values(self, model: TaskModel) -> np.ndarray:
        """The task metric of each row (metrics.row_values): what a bootstrap over users resamples."""
        was_training = model.training
        model.eval()
        scores = self.scores(model)
        model.train(was_training)
        return row_values(self.metric, scores, self.labels, self.negatives)

    def value(self, model: TaskModel) -> float:
        return self.evaluate(model)[self.metric]


@dataclass
class FinetuneOutcome:
    model: TaskModel
    metric: str
    value: float  # the task metric on the test split
    valid: dict[str, float]
    test: dict[str, float]
    params: ParamReport
    result: TrainResult

    def summary(self) -> dict:
        return {"metric": self.metric, "value": self.value, "valid": self.valid, "test": self.test,
                **self.params.to_dict(), "steps": self.result.steps, "seconds": self.result.seconds,
                "samples_per_s": self.result.samples_per_s}


@dataclass
class PreparedTask:
    """A task ready to train: its model over the backbone, train arrays and valid/test evaluators."""

    spec: object  # tasks.TaskSpec
    settings: FinetuneSettings  # with the task's overrides
    model: TaskModel
    arrays: tuple[np.ndarray, np.ndarray]
    evaluators: dict[str, TaskEvaluator]

    validated: list[dict[str, float]] = field(default_factory=list)  # each validation's metrics, in order

    def validation(self) -> Callable[[], float] | None:
        valid = self.evaluators["valid"]
        if not len(valid):
            return None

        def metric() -> float:
            self.validated.append(valid.evaluate(self.model))
            return self.validated[-1][self.spec.metric]

        return metric

    def finish(self, result: TrainResult) -> FinetuneOutcome:
        """Evaluate the trained model on test, and on valid unless a validation during training already
        saw the weights training ended with (keep-best's, or the last step's)."""
        valid = self.validation_of_final_weights(result) or self.evaluators["valid"].evaluate(self.model)
        test = self.evaluators["test"].evaluate(self.model)
        return FinetuneOutcome(self.model, self.spec.metric, test[self.spec.metric], valid, test,
                               param_report(self.model), result)

    def validation_of_final_weights(self, result: TrainResult) -> dict[str, float] | None:
        """The metrics of the validation that ran on the final weights: the first best one under keep-best
        (those weights were restored), else one at the last step; None when none did."""
        history = result.history
        if not history or len(history) != len(self.validated):
            return None
        if self.settings.train.keep_best:
            best = result.best_metric
            return next(seen for seen, h in zip(self.validated, history)
                        if h["metric"] == best or (h["metric"] != h["metric"] and best != best))
        return self.validated[-1] if history[-1]["step"] == result.steps else None


def prepare_task(backbone: Backbone, task_spec, task_data, sequences, settings: FinetuneSettings) -> PreparedTask:
    settings = with_overrides(settings, task_spec.overrides or {})
    max_len, input_len = backbone.config.max_len, settings.input_len
    arrays = task_arrays(task_data, sequences, "train", max_len, input_len)
    if len(arrays[1]) == 0:
        raise ValueError(f"task {task_spec.name!r} has no training rows")
    evaluators = {
        part: TaskEvaluator(task_spec.kind, task_spec.metric, task_spec.num_outputs,
                            *task_arrays(task_data, sequences, part, max_len, input_len),
                            negatives=settings.eval_negatives, seed=settings.train.seed + i,
                            precision=settings.train.precision)
        for i, part in enumerate(("valid", "test"))
    }
    model = build_task_model(backbone, task_spec.kind, task_spec.num_outputs, settings.mode, settings.patch,
                             settings.finelast_blocks, settings.representation, seed=settings.train.seed,
                             input_len=input_len)
    return PreparedTask(task_spec, settings, model, arrays, evaluators)


@dataclass
class TaskRun:
    """A fine-tuning run in progress, for a caller that checkpoints it (a Tune trial): the task, its optimizer
    and the loop's TrainState, all current whenever on_progress is called."""

    task: PreparedTask
    optimizer: torch.optim.Optimizer
    state: TrainState

    def save(self, path, meta: dict | None = None):
        """The run's state as directory `path` (peterrec.task_state), to continue it from there."""
        return save_task_state(path, self.task.model, self.optimizer, self.state, meta)


def finetune_task(backbone: Backbone, task_spec, task_data, sequences, settings: FinetuneSettings,
                  device: torch.device | None = None,
                  on_progress: Callable[[Progress], bool | None] | None = None,
                  resume_from=None, on_start: Callable[[TaskRun], None] | None = None) -> FinetuneOutcome:
    """Fine-tune one task over `backbone` (never modified) and evaluate it on valid and test.

    resume_from: a task-state directory (TaskRun.save) to continue from: on the same device and thread
    count the run ends with the weights it would have had uninterrupted; its lr and weight decay give way
    to `settings`' (the rest of the optimizer state is the checkpoint's). on_start gets the TaskRun before
    the first step, for a caller that saves it from on_progress."""
    device = device or next(backbone.parameters()).device
    task = prepare_task(backbone, task_spec, task_data, sequences, settings)
    config = task.settings.train
    optimizer = make_optimizer(trainable_parameters(task.model), config)
    state = TrainState()
    if resume_from is not None:
        hyper = {"lr": config.lr, "weight_decay": config.weight_decay}
        state = load_task_state(resume_from, task.model, optimizer, hyper).state
    if on_start is not None:
        on_start(TaskRun(task, optimizer, state))
    # compiled or not, only the steps: evaluation runs without gradients, eagerly
    result = train(task.model, task.arrays, config, device, evaluate=task.validation(), on_progress=on_progress,
                   loss_fn=training_loss(task.model, config.compile), optimizer=optimizer, state=state)
    return task.finish(result)


def packable(settings: FinetuneSettings) -> bool:
    """Whether a task with these settings (its overrides applied) can train in a fused pack."""
    return get_mode(settings.mode).shares_backbone


def finetune_pack(backbone: Backbone, members: list[tuple], sequences, device: torch.device | None = None,
                  strategy: str = "auto") -> Iterator[tuple[str, FinetuneOutcome | Exception]]:
    """Fine-tune several tasks at once, one fused pass over `backbone` per step (peterrec.fused).

    members: (task_spec, task_data, settings, on_progress) per task, every mode in PACKABLE_MODES and one
    bf16 setting. Yields (task name, FinetuneOutcome or the exception that task failed with) as each task
    leaves the pack, evaluated; one task's failure (or early stop) leaves the others training. Each task
    gets the weights finetune_task would give it alone, up to floating-point reassociation. An error no
    single task can be blamed for (e.g. out of memory) ends the pack: every task still in it is yielded
    with that error.
    """
    from peterrec.fused import PackTask, iter_train_pack

    device = device or next(backbone.parameters()).device
    prepared = {}
    for spec, data, settings, on_progress in members:
        try:
            prepared[spec.name] = (prepare_task(backbone, spec, data, sequences, settings), on_progress)
        except Exception as e:  # noqa: BLE001 - that task alone fails
            yield spec.name, e
    tasks = [PackTask(name, t.model, t.arrays, t.settings.train, t.validation(), on_progress)
             for name, (t, on_progress) in prepared.items()]
    if not tasks:
        return
    left = list(prepared)
    try:
        for trained in iter_train_pack(tasks, device, strategy):
            left.remove(trained.name)
            try:
                outcome = prepared[trained.name][0].finish(trained.result) if trained.ok else trained.error
            except Exception as e:  # noqa: BLE001 - evaluation failed: that task alone
                outcome = e
            yield trained.name, outcome
    except Exception as e:  # noqa: BLE001 - no one task to blame (e.g. out of memory)
        for name in left:
            yield name, e


def measure_pack_size(backbone: Backbone, members: list[tuple], sequences, budget_s: float = 4.0,
                      work_steps: int | None = None):
    """`--pack auto`: peterrec.fused.choose_pack_size over throwaway models of these tasks
    ((task_spec, task_data, settings) each, packable), on the backbone's device and this thread count;
    work_steps: the task-steps the job will run per worker (a short job measures for less time)."""
    from peterrec.fused import PackTask, choose_pack_size

    tasks = []
    for spec, data, settings in members:
        t = prepare_task(backbone, spec, data, sequences, settings)
        tasks.append(PackTask(spec.name, t.model, t.arrays, t.settings.train))
    return choose_pack_size(backbone, tasks, max_k=len(tasks), budget_s=budget_s, work_steps=work_steps)


def measure_precision(backbone: Backbone, members: list[tuple], sequences, requested: str = "auto",
                      budget_s: float = 2.0, work_steps: int | None = None):
    """`--precision auto` for a fine-tuning job: peterrec.precision.choose_precision, measured on a
    throwaway model of the first of `members` ((task_spec, task_data, settings) each) and one of its
    training batches, on the backbone's device and this thread count; work_steps: the task-steps the job
    will run per worker (a short job measures for less time). Returns a PrecisionChoice."""
    from peterrec.precision import choose_precision, native_bf16, step_probe

    device = next(backbone.parameters()).device
    if requested != "auto" or not members or not native_bf16(device)[0]:
        return choose_precision(requested, device)
    spec, data, settings = members[0]
    task = prepare_task(backbone, spec, data, sequences, settings)
    rows = min(task.settings.train.batch_size, len(task.arrays[1]))
    batch = [torch.as_tensor(a[:rows]).to(device) for a in task.arrays]
    step = step_probe(task.model, task.model.loss, batch, task.settings.train, device)
    return choose_precision(requested, device, step, budget_s, work_steps=work_steps)
