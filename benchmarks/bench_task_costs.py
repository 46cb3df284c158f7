"""Where a small task's time goes besides its training steps, in one process (what a Ray worker runs).

Run: .venv/bin/python benchmarks/bench_task_costs.py            (about a minute on 2 CPU cores)
     .venv/bin/python benchmarks/bench_task_costs.py --tasks 40

The small task of issue 19: 60 steps of batch 64 over a C=32 backbone (4 blocks, length 50), the
synthetic world's tasks (2,000 users, 500 items; one task in four a cold-start task), one torch
thread (a worker holds one CPU). Each task runs finetune_task's own calls, timed by phase:
- prepare: prepare_task: its train/valid/test arrays (Sequences.padded), evaluators (fixed negatives)
  and build_task_model (timed again alone, for its share);
- steps: the optimisation steps alone;
- validation: the evaluations during training (once per epoch by default) and keep-best's copies;
- final: the valid and test evaluation after training, and the parameter report;
- ship: the task's state as numpy, as orchestrator.worker.task_result sends it.
Printed: mean milliseconds per phase and the fixed-cost share (everything but the steps).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from peterrec.backbone import Backbone  # noqa: E402
from peterrec.config import BackboneConfig  # noqa: E402
from peterrec.finetune import FinetuneSettings, prepare_task  # noqa: E402
from peterrec.task_model import build_task_model  # noqa: E402
from peterrec.training import TrainConfig, train  # noqa: E402
from tasks import load_job  # noqa: E402
from tasks.synth import synthesize  # noqa: E402

STEPS, BATCH, CHANNELS, USERS, ITEMS, LENGTH = 60, 64, 32, 2000, 500, 50


class Clock:
    """Accumulates seconds per phase."""

    def __init__(self):
        self.seconds = defaultdict(float)

    def timed(self, phase: str, fn, *args, **kwargs):
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        self.seconds[phase] += time.perf_counter() - t0
        return out


def run_task(clock: Clock, backbone, spec, data, sequences, settings: FinetuneSettings) -> None:
    """finetune_task's calls (peterrec.finetune), each phase timed, then the worker's shipping."""
    task = clock.timed("prepare", prepare_task, backbone, spec, data, sequences, settings)
    s = task.settings  # build_task_model alone, as prepare_task calls it: its share of "prepare"
    clock.timed("(model)", build_task_model, backbone, spec.kind, spec.num_outputs, s.mode, s.patch,
                s.finelast_blocks, s.representation, seed=s.train.seed)
    validation = task.validation()
    timed_validation = (lambda: clock.timed("validation", validation)) if validation else None
    before = clock.seconds["validation"]
    result = clock.timed("loop", train, task.model, task.arrays, s.train, torch.device("cpu"),
                         evaluate=timed_validation, loss_fn=task.model.loss)
    clock.seconds["steps"] += clock.seconds.pop("loop") - (clock.seconds["validation"] - before)
    outcome = clock.timed("final", task.finish, result)
    clock.timed("ship", lambda: {n: t.detach().cpu().numpy() for n, t in outcome.model.task_state_dict().items()})


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=16, help="tasks to run (the first of the synthetic world)")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        spec = synthesize(Path(tmp) / "data", tasks=args.tasks, users=USERS, items=ITEMS, seed=0, max_len=LENGTH)
        job, sequences, data = load_job(spec)
    torch.manual_seed(0)
    backbone = Backbone(BackboneConfig(vocab_size=job.vocab_size, channels=CHANNELS, max_len=LENGTH))
    backbone.requires_grad_(False)
    settings = FinetuneSettings(train=TrainConfig(epochs=100, max_steps=STEPS, batch_size=BATCH,
                                                  precision=args.precision))
    clock = Clock()
    run_task(Clock(), backbone, job.tasks[0], data[job.tasks[0].name], sequences, settings)  # warm-up
    for spec_ in job.tasks:
        run_task(clock, backbone, spec_, data[spec_.name], sequences, settings)
    model = clock.seconds.pop("(model)")
    n = len(job.tasks)
    total = sum(clock.seconds.values())
    print(f"{n} tasks: {STEPS} steps of batch {BATCH}, C={CHANNELS}, {args.precision}, 1 thread; "
          f"{1e3 * total / n:.0f} ms per task")
    for phase in ("prepare", "steps", "validation", "final", "ship"):
        s = clock.seconds[phase]
        print(f"  {phase:<11s} {1e3 * s / n:7.1f} ms  {100 * s / total:5.1f}%")
        if phase == "prepare":
            print(f"    of which build_task_model {1e3 * model / n:.1f} ms")
    print(f"fixed cost (all but the steps): {100 * (1 - clock.seconds['steps'] / total):.1f}% of a task")


if __name__ == "__main__":
    main()
