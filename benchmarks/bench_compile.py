"""Does torch.compile pay for the 1,000-task job's small tasks? Eager against compiled steps, side by side.

Run: .venv/bin/python benchmarks/bench_compile.py             (10-15 minutes on 2 CPU cores: compiling is slow)
     .venv/bin/python benchmarks/bench_compile.py --tasks 4 --steps 10   (a few minutes)
     .venv/bin/python benchmarks/bench_compile.py --device cuda

The job's tasks (issue 19): a synthetic world of 2,000 users and 500 items (histories of 20-50 items), a
C=32 backbone as `pretrain` builds it by default (dilations 1,4,16,64, max_len 200, padding masked; its
weights do not change the time), peterrec mode, batch 64, one thread. For each task in turn, one model and
one optimizer take their steps alternately through two sides, the same batch on both, so that the
machine's noise hits both alike:
- eager: TaskModel.loss as training.train runs it;
- compiled: the same loss through torch.compile (inductor). Variant `backbone` is what `finetune
  --compile` runs (peterrec.compiled: the backbone with its patches, one graph for every task, shapes
  dynamic); variant `loss` compiles the whole loss instead (a head of another size or kind is another
  graph, and torch gives up after 8), for comparison.
A compiled step that takes over a second is counted as a compilation (the first graph, or a recompile
for a new shape or head). Printed per variant: the steady step times (median after the compilations),
their ratio, the seconds spent compiling, and the tasks a worker must run before compiling has paid
(compile seconds / seconds saved per task of --job-steps steps).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from peterrec.backbone import Backbone  # noqa: E402
from peterrec.compiled import training_loss  # noqa: E402
from peterrec.config import BackboneConfig  # noqa: E402
from peterrec.finetune import FinetuneSettings, prepare_task  # noqa: E402
from peterrec.training import TrainConfig, make_optimizer, trainable_parameters  # noqa: E402
from tasks import load_job  # noqa: E402
from tasks.synth import synthesize  # noqa: E402
from machine import cpu_model  # noqa: E402  (benchmarks/machine.py: this script's folder is on sys.path)

USERS, ITEMS, CHANNELS, BATCH, JOB_STEPS = 2000, 500, 32, 64, 60
COMPILING_S = 1.0  # a compiled step slower than this compiled (or recompiled) a graph


def compiled_loss(variant: str):
    """(model, items, labels) -> loss, through torch.compile as `variant` says."""
    if variant == "loss":
        return torch.compile(lambda model, items, labels: model.loss(items, labels))
    return lambda model, items, labels: training_loss(model, True)(items, labels)  # what `finetune --compile` runs


def step(loss_fn, model, optimizer, batch) -> float:
    start = time.perf_counter()
    loss = loss_fn(model, *batch)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return time.perf_counter() - start


def compare(variant: str, job, sequences, data, backbone, settings, tasks: int, steps: int,
            device: torch.device) -> None:
    """Every task's steps alternately eager and compiled; prints the variant's line."""
    torch._dynamo.reset()  # each variant compiles from nothing (inductor's on-disk cache may still hit)
    compiled = compiled_loss(variant)
    eager_times, compiled_times, compiling = [], [], []
    for spec in job.tasks[:tasks]:
        task = prepare_task(backbone, spec, data[spec.name], sequences, settings)
        model = task.model.to(device)
        optimizer = make_optimizer(trainable_parameters(model), settings.train)
        arrays = [torch.as_tensor(a) for a in task.arrays]
        generator = torch.Generator().manual_seed(0)
        for _ in range(steps):
            index = torch.randperm(len(arrays[0]), generator=generator)[:BATCH]
            batch = [t[index].to(device) for t in arrays]
            eager_times.append(step(lambda m, i, l: m.loss(i, l), model, optimizer, batch))
            seconds = step(compiled, model, optimizer, batch)
            (compiling if seconds > COMPILING_S else compiled_times).append(seconds)
        print(f"  {variant}: {spec.name} done ({len(compiling)} compilations so far, "
              f"{sum(compiling):.0f} s)", flush=True)
    eager, fast = float(np.median(eager_times)), float(np.median(compiled_times))
    saved = (eager - fast) * JOB_STEPS
    paid = f"{sum(compiling) / saved:.0f} tasks" if saved > 0 else "never (not faster)"
    print(f"compile {variant:8s}: eager {1e3 * eager:.1f} ms/step, compiled {1e3 * fast:.1f} ms/step "
          f"({eager / fast:.2f}x); {len(compiling)} compilations, {sum(compiling):.0f} s; "
          f"pays after {paid} of {JOB_STEPS} steps per worker", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=12, help="tasks of the job, in its order (mixed kinds)")
    parser.add_argument("--steps", type=int, default=20, help="steps per task and side")
    parser.add_argument("--variants", default="backbone,loss", help="comma-separated: backbone, loss")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a job's worker has 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"{cpu_model()}; torch {torch.__version__}; device {device}; {args.threads} thread(s)")
    with tempfile.TemporaryDirectory() as tmp:
        spec_path = synthesize(Path(tmp) / "data", tasks=args.tasks, users=USERS, items=ITEMS, seed=0)
        job, sequences, data = load_job(spec_path)
        torch.manual_seed(0)
        config = BackboneConfig(vocab_size=ITEMS + 1, channels=CHANNELS, dilations=(1, 4, 16, 64), max_len=200,
                                mask_padding=True)
        backbone = Backbone(config).to(device).requires_grad_(False)
        settings = FinetuneSettings(train=TrainConfig(epochs=1, batch_size=BATCH))
        print(f"{args.tasks} tasks ({', '.join(sorted({t.kind for t in job.tasks[:args.tasks]}))}), "
              f"{args.steps} steps of batch {BATCH} per side, C={CHANNELS}")
        for variant in args.variants.split(","):
            compare(variant, job, sequences, data, backbone, settings, args.tasks, args.steps, device)


if __name__ == "__main__":
    main()
