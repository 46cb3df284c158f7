"""Inference over one loaded backbone with any number of task patch sets from a bundle.

    backbone, _ = load_backbone("runs/demo/backbone")
    predictor = MultiTaskPredictor(backbone, open_bundle("runs/demo/job"))
    rows = predictor.predict(items, ["gender", "coldrec_0", "gender"])  # one task per row

Classification tasks give class probabilities; cold-start tasks give their top-k target items.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from peterrec.backbone import Backbone
from peterrec.bundle import Bundle
from peterrec.fused.infer import predict_mixed, stacked_for
from peterrec.training import autocast_for


@dataclass
class Prediction:
    """The output for one row."""

    task: str
    kind: str  # "classify" | "coldrec"
    probabilities: torch.Tensor | None = None  # classify: (num_classes,)
    items: torch.Tensor | None = None  # coldrec: (k,) target ids, best first
    scores: torch.Tensor | None = None  # coldrec: (k,) scores of those items
    names: list[str] | None = None  # classify: class names; coldrec: raw ids of `items` (when known)


@dataclass
class TaskPredictions:
    """The outputs of one task for a batch of B rows."""

    task: str
    kind: str
    probabilities: torch.Tensor | None = None  # classify: (B, num_classes)
    items: torch.Tensor | None = None  # coldrec: (B, k)
    scores: torch.Tensor | None = None  # coldrec: (B, k)
    class_names: list[str] | None = None
    target_raw_ids: list[str] | None = None  # raw id of every target item id

    def __len__(self) -> int:
        return len(self.probabilities if self.kind == "classify" else self.items)

    def row(self, i: int) -> Prediction:
        if self.kind == "classify":
            return Prediction(self.task, self.kind, probabilities=self.probabilities[i], names=self.class_names)
        names = [self.target_raw_ids[j] for j in self.items[i].tolist()] if self.target_raw_ids else None
        return Prediction(self.task, self.kind, items=self.items[i], scores=self.scores[i], names=names)


def trained_precision(adapter_config: dict) -> str:
    """fp32 or bf16: what a bundle's task trained in (its adapter_config.json settings; an older bundle's
    bf16 flag reads too, and an unresolved 'auto' ran as fp32)."""
    train = (adapter_config.get("settings") or {}).get("train") or {}
    precision = train.get("precision") or ("bf16" if train.get("bf16") else "fp32")
    return "bf16" if precision == "bf16" else "fp32"


class MultiTaskPredictor:
    """One backbone, many tasks: each task model shares the same backbone object (FineLast / FineAll /
    PeterZero tasks own the blocks they trained). Loading is all-or-nothing."""

    def __init__(self, backbone: Backbone, bundle: Bundle, task_names: list[str] | None = None, top_k: int = 10,
                 precision: str | None = None, stack_once: bool = True):
        self.backbone = backbone
        self.top_k = top_k
        names = list(bundle.names if task_names is None else task_names)
        self.models = {name: bundle.load_task(name, backbone) for name in names}
        adapter_configs = {name: bundle.config(name) for name in names}
        self.configs = {name: c["task"] for name, c in adapter_configs.items()}
        # fp32 or bf16 (training.autocast_for) per task: as it trained, unless `precision` says otherwise
        self.precisions = {name: precision or trained_precision(c) for name, c in adapter_configs.items()}
        # Every task's patches stacked once (peterrec.fused.stacked) at the first predict; stack_once=False
        # restacks the tasks of each batch instead (the training path, PackedPatches: for comparison).
        self.stack_once, self._stacked = stack_once, None

    @property
    def tasks(self) -> list[str]:
        return list(self.models)

    def kind(self, name: str) -> str:
        return self.configs[self._known(name)]["kind"]

    @torch.no_grad()
    def predict_task(self, name: str, items: torch.Tensor, top_k: int | None = None) -> TaskPredictions:
        """items (B, L) left-padded item ids -> that task's outputs for every row (on the CPU)."""
        model = self.models[self._known(name)]
        device = next(model.parameters()).device
        with autocast_for(device, self.precisions[name]):
            scores = model.scores(items.to(device)).float()
        return self._outputs(name, scores, top_k)

    @torch.no_grad()
    def predict(self, items: torch.Tensor, tasks: list[str], top_k: int | None = None) -> list[Prediction]:
        """items (B, L) whose row b belongs to task tasks[b] -> one Prediction per row, in row order.

        Rows of tasks that share the backbone go through it together, in one fused pass (peterrec.fused)."""
        if len(tasks) != items.shape[0]:
            raise ValueError(f"{items.shape[0]} rows but {len(tasks)} task names")
        groups: dict[str, list[int]] = {}  # task -> its rows
        by_precision: dict[str, list[int]] = {}  # precision -> the rows of the tasks trained in it
        for row, name in enumerate(tasks):
            groups.setdefault(self._known(name), []).append(row)
            by_precision.setdefault(self.precisions[name], []).append(row)
        if self.stack_once and self._stacked is None:
            self._stacked = stacked_for(self.backbone, self.models)
        scores: list = [None] * len(tasks)  # one per row
        for precision, rows in by_precision.items():  # each task at the precision it trained in
            part = items if len(rows) == len(tasks) else items[rows]
            for row, row_scores in zip(rows, predict_mixed(self.backbone, self.models, part, [tasks[r] for r in rows],
                                                           precision=precision, stacked=self._stacked)):
                scores[row] = row_scores
        out: list[Prediction | None] = [None] * len(tasks)
        for name, rows in groups.items():
            batch = self._outputs(name, torch.stack([scores[r] for r in rows]), top_k)
            for j, row in enumerate(rows):
                out[row] = batch.row(j)
        return out

    def _outputs(self, name: str, scores: torch.Tensor, top_k: int | None) -> TaskPredictions:
        """Class probabilities, or the top-k target items, from scores (B, num_classes | target_vocab)."""
        task = self.configs[name]
        if task["kind"] == "classify":
            return TaskPredictions(name, "classify", probabilities=scores.softmax(dim=-1).cpu(),
                                   class_names=task.get("labels"))
        k = min(top_k or self.top_k, scores.shape[1])
        top = scores.topk(k, dim=-1)  # (B, k), best first
        return TaskPredictions(name, "coldrec", items=top.indices.cpu(), scores=top.values.cpu(),
                               target_raw_ids=task.get("target_raw_ids"))

    def _known(self, name: str) -> str:
        if name not in self.models:
            raise KeyError(f"task {name!r} is not attached to this predictor (attached: {', '.join(self.models)})")
        return name
