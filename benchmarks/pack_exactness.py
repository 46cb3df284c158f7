"""Packed against single training on one device: the largest weight difference after training.

Run: .venv/bin/python benchmarks/pack_exactness.py --device cuda     (seconds; torch only, no Ray)

K tasks (half classify, half coldrec; peterrec mode, serial patches) are built twice from the same
seeds; one copy trains as one fused pack (peterrec.fused.train_pack), the other task by task with
training.train. A pack gives each task the weights it would get alone up to floating-point
reassociation, so in fp32 the difference is rounding noise (around 1e-6 of weights of order 0.1-1);
in bf16 it is bf16 rounding noise. Printed per precision: the max abs difference over every trained
weight of every task, and the largest weight, for scale. Exit status 1 when fp32 exceeds --tolerance.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_fused import make_tasks  # noqa: E402
from peterrec.backbone import Backbone  # noqa: E402
from peterrec.config import BackboneConfig  # noqa: E402
from peterrec.fused import train_pack  # noqa: E402
from peterrec.training import train  # noqa: E402


def max_difference(device: torch.device, precision: str, k: int, channels: int, batch: int, steps: int):
    torch.manual_seed(0)
    config = BackboneConfig(vocab_size=5000, channels=channels, dilations=(1, 4, 1, 4), max_len=50)
    backbone = Backbone(config).to(device).requires_grad_(False)

    def tasks():
        made = make_tasks(backbone, k, batch, steps)
        for t in made:
            t.config = replace(t.config, precision=precision)
        return made

    packed, single = tasks(), tasks()
    outcomes = train_pack(packed, device)
    failed = [name for name, o in outcomes.items() if not o.ok]
    if failed:
        raise SystemExit(f"tasks failed in the pack: {failed}: {outcomes[failed[0]].traceback}")
    for t in single:
        train(t.model, t.arrays, t.config, device, loss_fn=t.model.loss)
    diff, scale = 0.0, 0.0
    for a, b in zip(packed, single):
        mine, theirs = a.model.task_state_dict(), b.model.task_state_dict()
        for name in mine:
            diff = max(diff, (mine[name].float() - theirs[name].float()).abs().max().item())
            scale = max(scale, theirs[name].abs().max().item())
    return diff, scale


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tasks", type=int, default=8, help="tasks in the pack (K)")
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32, help="per-task batch")
    parser.add_argument("--steps", type=int, default=20, help="steps per task")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="largest fp32 difference accepted")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    print(f"packed vs single, {args.tasks} tasks x {args.steps} steps of batch {args.batch}, C={args.channels}, "
          f"on {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}")
    worst = {}
    for precision in ("fp32", "bf16"):
        diff, scale = max_difference(device, precision, args.tasks, args.channels, args.batch, args.steps)
        worst[precision] = diff
        print(f"  {precision}: max |packed - single| = {diff:.2e} (largest weight {scale:.2f})", flush=True)
    if worst["fp32"] > args.tolerance:
        print(f"fp32 difference {worst['fp32']:.2e} exceeds the tolerance {args.tolerance:.0e}")
        raise SystemExit(1)


if __name__ == "__main__":
    main()
