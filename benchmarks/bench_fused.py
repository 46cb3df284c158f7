"""Packed vs one-by-one fine-tuning: aggregate samples/s of K tasks trained in one fused pack against
the same K tasks trained one after another with training.train, on the same cores, in one run.

Run: .venv/bin/python benchmarks/bench_fused.py            (about 3 minutes on 2 idle CPU cores)
     .venv/bin/python benchmarks/bench_fused.py --quick    (about a minute)
     .venv/bin/python benchmarks/bench_fused.py --device cuda

Each setting (channels x per-task batch) builds a backbone (the default shape: 4 blocks, dilations
1,4,1,4, length 50) and K tasks, half classify (4 classes) and half coldrec (500 target items, 20
sampled negatives). First `--pack auto` (choose_pack_size) picks its K for the setting. Then each
round trains fresh copies of the K tasks for a few steps each three ways: one by one
(training.train per task), as one pack of K (train_pack), and in packs of auto's K; rounds
alternate the order, so all sides see the same load from other processes. Printed: aggregate
samples/s of each side, the ratios, and the median of the per-round ratios (the figure least
disturbed by other processes); a summary table at the end. With 2 torch threads on a busy machine
OpenMP threads spin and wait, which hurts small unpacked steps most: the load average is printed
too, and --threads 1 gives a view that load distorts less.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from peterrec.backbone import Backbone  # noqa: E402
from peterrec.config import BackboneConfig, PatchConfig  # noqa: E402
from peterrec.fused import PackTask, choose_pack_size, train_pack  # noqa: E402
from peterrec.task_model import build_task_model  # noqa: E402
from peterrec.training import TrainConfig, train  # noqa: E402

VOCAB, LENGTH = 5000, 50


def make_tasks(backbone: Backbone, k: int, batch: int, steps: int) -> list[PackTask]:
    tasks = []
    for i in range(k):
        kind, outputs = ("classify", 4) if i % 2 == 0 else ("coldrec", 500)
        model = build_task_model(backbone, kind, outputs, "peterrec", PatchConfig(), seed=i)
        rng = np.random.default_rng(i)
        items = rng.integers(1, VOCAB, size=(batch * steps, LENGTH)).astype(np.int64)
        labels = rng.integers(0, outputs, size=batch * steps).astype(np.int64)
        config = TrainConfig(epochs=1, max_steps=steps, batch_size=batch, lr=1e-3, seed=i, log_every=10**6)
        tasks.append(PackTask(f"task{i}", model, (items, labels), config))
    return tasks


def one_by_one(tasks: list[PackTask], device) -> tuple[int, float]:
    """(samples, seconds) of training the tasks one after another, as unpacked workers do."""
    start, samples = time.perf_counter(), 0
    for t in tasks:
        result = train(t.model, t.arrays, t.config, device, loss_fn=t.model.loss)
        samples += result.steps * t.config.batch_size
    return samples, time.perf_counter() - start


def packed(tasks: list[PackTask], device, strategy: str) -> tuple[int, float]:
    start = time.perf_counter()
    outcomes = train_pack(tasks, device, strategy=strategy)
    seconds = time.perf_counter() - start
    failed = [o.name for o in outcomes.values() if not o.ok]
    if failed:
        raise RuntimeError(f"tasks failed in the pack: {failed}: {outcomes[failed[0]].traceback}")
    return sum(o.result.steps * t.config.batch_size for o, t in zip(outcomes.values(), tasks)), seconds


def packs_of(k: int):
    """Training the tasks in consecutive packs of k (k = 1: one by one), as `finetune --pack k` would."""
    def run(tasks, device, strategy):
        if k == 1:
            return one_by_one(tasks, device)
        samples, seconds = 0, 0.0
        for i in range(0, len(tasks), k):
            n, s = packed(tasks[i:i + k], device, strategy)
            samples, seconds = samples + n, seconds + s
        return samples, seconds
    return run


def setting(channels: int, k: int, batch: int, steps: int, rounds: int, device, strategy: str) -> dict:
    torch.manual_seed(0)
    config = BackboneConfig(vocab_size=VOCAB, channels=channels, dilations=(1, 4, 1, 4), max_len=LENGTH)
    backbone = Backbone(config).to(device).requires_grad_(False)
    one_by_one(make_tasks(backbone, 2, batch, 1), device)  # warm-up: allocator, kernel selection
    packed(make_tasks(backbone, 2, batch, 1), device, strategy)
    choice = choose_pack_size(backbone, make_tasks(backbone, k, batch, 4), budget_s=4.0)
    sides = {"one": packs_of(1), "pack": packs_of(k), "auto": packs_of(choice.k)}
    totals = {name: [0, 0.0] for name in sides}
    ratios = {"pack": [], "auto": []}
    for r in range(rounds):
        rates = {}
        order = list(sides) if r % 2 == 0 else list(sides)[::-1]  # alternate, so load hits all sides alike
        for name in order:
            samples, seconds = sides[name](make_tasks(backbone, k, batch, steps), device, strategy)
            totals[name][0] += samples
            totals[name][1] += seconds
            rates[name] = samples / seconds
        for name in ratios:
            ratios[name].append(rates[name] / rates["one"])
    rate = {name: totals[name][0] / totals[name][1] for name in sides}
    print(f"C={channels:<4d} batch={batch:<3d} K={k} ({rounds} rounds x {steps} steps/task): "
          f"one-by-one {rate['one']:7.1f}  packed {rate['pack']:7.1f} samples/s  "
          f"ratio {rate['pack'] / rate['one']:4.2f}x "
          f"(median of rounds {statistics.median(ratios['pack']):4.2f}x, "
          f"range {min(ratios['pack']):4.2f}-{max(ratios['pack']):4.2f})", flush=True)
    measured = ", ".join(f"K={n}: {v:.0f}" for n, v in choice.samples_per_s.items())
    print(f"    --pack auto -> K={choice.k} ({measured} samples/s): {rate['auto']:7.1f} samples/s, "
          f"{rate['auto'] / rate['one']:4.2f}x one-by-one (median {statistics.median(ratios['auto']):4.2f}x)",
          flush=True)
    return {"channels": channels, "batch": batch, "pack": statistics.median(ratios["pack"]), "auto_k": choice.k,
            "auto": statistics.median(ratios["auto"])}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    parser.add_argument("--tasks", type=int, default=16, help="tasks in the pack (K)")
    parser.add_argument("--settings", default="64x8,64x16,64x32,256x32",
                        help="CHANNELSxBATCH settings to measure (per-task batch)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--strategy", default="auto", help="PackedPatches strategy: auto, bmm or group")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} threads, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    rows = []
    for item in args.settings.split(","):
        channels, batch = (int(v) for v in item.lower().split("x"))
        small = channels <= 64
        steps = (3 if small else 1) * (10 if device.type == "cuda" else 1)
        rounds = (2 if args.quick else 5) if small else (2 if args.quick else 3)
        rows.append(setting(channels, args.tasks, batch, steps, rounds, device, args.strategy))
    print(f"\nsummary (median of rounds; packed = K={args.tasks}, auto = the K `--pack auto` picked):")
    print("  channels  batch  packed/one  auto K  auto/one")
    for r in rows:
        print(f"  {r['channels']:>8d}  {r['batch']:>5d}  {r['pack']:>9.2f}x  {r['auto_k']:>6d}  {r['auto']:>7.2f}x")
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
