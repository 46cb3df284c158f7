"""Fused multi-task training and inference: many tasks' patch sets in one pass over the shared backbone.

mLoRA-style packing for PeterRec. The backbone is frozen and shared, so K tasks' batches can run
through its convolutions as one batch, each row patched by its own task (patches.py). On top:
- train_pack (train.py): K tasks trained at once, each exactly as training.train alone would
  (iter_train_pack: the same, yielding each task's outcome as it leaves the pack);
- predict_mixed (infer.py): a mixed-task batch scored in one pass, for bundle inference; with
  StackedPatches (stacked.py) every task's patches are stacked once and each row gathers its own;
- choose_pack_size (auto.py): the K for `--pack auto`, measured, 1 when packing does not pay.

Usage (the orchestrator's view):

    tasks = [PackTask(name, model, (items, labels), train_config, evaluate, on_progress), ...]
    k = choose_pack_size(backbone, tasks).k
    for pack in (tasks[i:i + k] for i in range(0, len(tasks), k)):
        outcomes = train_pack(pack)          # {name: PackOutcome(result | error)}
"""

from peterrec.fused.auto import PackChoice, choose_pack_size, estimate_step_bytes
from peterrec.fused.infer import predict_mixed, stacked_for
from peterrec.fused.patches import STRATEGIES, PackedPatches
from peterrec.fused.stacked import StackedPatches
from peterrec.fused.train import (PackOutcome, PackTask, check_packable, iter_train_pack,
                                  split_representations, task_loss, train_pack)

__all__ = [
    "STRATEGIES", "PackChoice", "PackOutcome", "PackTask", "PackedPatches", "StackedPatches", "check_packable",
    "choose_pack_size", "estimate_step_bytes", "iter_train_pack", "predict_mixed", "split_representations",
    "stacked_for", "task_loss", "train_pack",
]
