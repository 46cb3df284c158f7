"""One fine-tune step against the matmul limit, fp32 and bf16, side by side in one run.

Run: .venv/bin/python benchmarks/bench_step.py                 (3-5 minutes on 2 CPU cores)
     .venv/bin/python benchmarks/bench_step.py --quick         (about a minute)
     .venv/bin/python benchmarks/bench_step.py --device cuda
     .venv/bin/python benchmarks/bench_step.py --job           (adds the 1,000-task job: 5-30 minutes more)
     .venv/bin/python benchmarks/bench_step.py --quick --job --compile   (the job with `finetune --compile`)
     .venv/bin/python benchmarks/bench_step.py --profile 256   (where one fp32 step's time goes, per op)
     .venv/bin/python benchmarks/bench_step.py --threads 1 --clock cpu   (on a machine others load)

Printed, with the CPU model and its bf16 units:
1. GEMM peaks: the best GFLOP/s of square fp32 and bf16 matmuls (1024 and 2048; 2048 and 4096 on CUDA).
2. The step: peterrec mode, serial patches, L=20, B=256, 8 blocks (dilations 1,4 four times), at
   C=64 and C=256, one optimisation step as training.train takes it (forward, loss, backward, clip,
   fused AdamW). FLOPs are counted as in issue 19: the frozen convolutions' forward and input
   gradients (4 * B*L * k*C * C each) plus the patches' forward and backward (3 * B*L * C^2 each),
   that is 30 * B*L*C^2 per block. Sides, interleaved in rounds with each keeping its best:
   - fp32 and bf16 (training.autocast_for) of the project's network;
   - the same network with its convolutions run by nn.Conv1d on (B, C, L) (the bare reference), and
     as the project ran them before DilatedConvFunction (pad + concatenated slices + one matmul);
   - "GEMMs only": the step's own matmuls alone, same shapes and count (what a perfectly fused step
     would still cost: the rest of a step's time is elementwise work, LayerNorm, copies, optimizer).
   % of peak is the counted FLOP/s over the fp32 GEMM peak (bf16 also over the bf16 peak).
3. --job: `python cli.py synth` + `pretrain` + `finetune` of 1,000 tiny tasks on Ray (sizes in
   JOB_* below): its wall time; per task, its time on its worker (results.parquet), its training loop
   (steps + validations, from the rate its bundle records) and its steps alone (timed in this process
   after the job, one thread). Fixed cost = 1 - steps / the task's time on its worker.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from peterrec.backbone import Backbone, DilatedConv  # noqa: E402
from peterrec.bundle import open_bundle  # noqa: E402
from peterrec.config import BackboneConfig, PatchConfig  # noqa: E402
from peterrec.task_model import build_task_model  # noqa: E402
from peterrec.precision import native_bf16  # noqa: E402
from peterrec.training import TrainConfig, autocast_for, make_optimizer, optimizer_step, trainable_parameters  # noqa: E402
from machine import cpu_model  # noqa: E402  (benchmarks/machine.py: this script's folder is on sys.path)

BATCH, LENGTH, BLOCKS, VOCAB = 256, 20, 8, 5000
# The 1,000-task job of issue 19: 60 steps of batch 64 per task over a C=32 backbone, 2 workers.
JOB_TASKS, JOB_USERS, JOB_ITEMS, JOB_STEPS, JOB_BATCH, JOB_CHANNELS, JOB_WORKERS = 1000, 2000, 500, 60, 64, 32, 2


CLOCK = time.perf_counter  # --clock cpu: time.process_time


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gemm_peak(dtype: torch.dtype, device: torch.device, rounds: int) -> float:
    """Best GFLOP/s of square matmuls in `dtype`."""
    best = 0.0
    for n in ((2048, 4096) if device.type == "cuda" else (1024, 2048)):
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        reps = max(1, int(2e12 / (2 * n**3))) if device.type == "cuda" else 2
        a @ b
        for _ in range(rounds):
            sync(device)
            t0 = CLOCK()
            for _ in range(reps):
                a @ b
            sync(device)
            best = max(best, reps * 2 * n**3 / (CLOCK() - t0) / 1e9)
    return best


class ReferenceConv(nn.Module):
    """The same convolution (same nn.Conv1d weights) the bare way: transpose to (B, C, L), pad,
    nn.Conv1d, transpose back."""

    def __init__(self, conv: DilatedConv):
        super().__init__()
        self.conv, self.padding = conv.conv, conv.padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x.transpose(1, 2), self.padding)).transpose(1, 2)


class CatConv(ReferenceConv):
    """The convolution as the project had it before DilatedConvFunction: pad, k shifted slices
    concatenated through autograd, one matmul (its backward zero-fills a padded tensor per tap)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        length, (k,), (d,) = x.shape[1], self.conv.kernel_size, self.conv.dilation
        padded = F.pad(x, (0, 0, *self.padding))  # (B, L + span, C)
        shifted = torch.cat([padded[:, i * d:i * d + length] for i in range(k)], dim=-1)  # (B, L, k*C)
        weight = self.conv.weight.permute(0, 2, 1).reshape(self.conv.out_channels, -1)
        return F.linear(shifted, weight, self.conv.bias)


def step_flops(channels: int) -> float:
    return 30.0 * BATCH * LENGTH * channels**2 * BLOCKS


class StepSide:
    """One fine-tune step (peterrec, serial patches) at a channel width, precision and conv kind."""

    def __init__(self, channels: int, precision: str, device: torch.device, conv: type | None = None):
        torch.manual_seed(0)
        config = BackboneConfig(vocab_size=VOCAB, channels=channels, dilations=(1, 4) * (BLOCKS // 2), max_len=LENGTH)
        backbone = Backbone(config).to(device).requires_grad_(False)
        if conv is not None:  # the same weights, convolved another way
            for block in backbone.blocks:
                block.conv1, block.conv2 = conv(block.conv1), conv(block.conv2)
        self.model = build_task_model(backbone, "classify", 4, "peterrec", PatchConfig())
        self.params = trainable_parameters(self.model)
        self.config = TrainConfig()
        self.optimizer = make_optimizer(self.params, self.config)
        self.items = torch.randint(1, VOCAB, (BATCH, LENGTH), device=device)
        self.labels = torch.randint(0, 4, (BATCH,), device=device)
        self.device, self.precision = device, precision

    def __call__(self) -> None:
        with autocast_for(self.device, self.precision):
            loss = self.model.loss(self.items, self.labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer_step(self.params, self.optimizer, self.config.grad_clip)


class GemmsOnly:
    """The step's matmuls alone, as (M, K) @ (K, N) products of the same shapes and count."""

    def __init__(self, channels: int, device: torch.device, dtype: torch.dtype = torch.float32):
        rows, c, w, k = BATCH * LENGTH, channels, channels // 4, 3
        shapes = [(rows, k * c, c)] * 4  # two convs: forward, input gradient
        shapes += [(rows, c, w), (rows, w, c)] * 2  # two patches forward
        shapes += [(rows, c, w), (c, rows, w), (rows, w, c), (w, rows, c)] * 2  # their input and weight grads
        self.pairs = [(torch.randn(m, kk, device=device, dtype=dtype), torch.randn(kk, n, device=device, dtype=dtype))
                      for m, kk, n in shapes]

    def __call__(self) -> None:
        for _ in range(BLOCKS):
            for a, b in self.pairs:
                a @ b


def race(sides: dict, device: torch.device, rounds: int, steps: int) -> dict[str, float]:
    """Best seconds per call of each side, interleaved in rounds (order alternating)."""
    for fn in sides.values():  # warm-up
        fn()
        fn()
    best = {name: float("inf") for name in sides}
    names = list(sides)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            sync(device)
            t0 = CLOCK()
            for _ in range(steps):
                sides[name]()
            sync(device)
            best[name] = min(best[name], (CLOCK() - t0) / steps)
    return best


def bench_steps(channels: int, device: torch.device, rounds: int, peaks: dict) -> None:
    sides = {"fp32": StepSide(channels, "fp32", device), "bf16": StepSide(channels, "bf16", device),
             "nn.Conv1d fp32": StepSide(channels, "fp32", device, ReferenceConv),
             "cat conv fp32": StepSide(channels, "fp32", device, CatConv),
             "GEMMs only fp32": GemmsOnly(channels, device)}
    steps = 20 if device.type == "cuda" else 2 if channels >= 256 else 5
    best = race(sides, device, rounds, steps)
    flops = step_flops(channels)
    print(f"\nC={channels}, L={LENGTH}, B={BATCH}, {BLOCKS} blocks, serial patches: "
          f"{flops / 1e9:.1f} GFLOP counted per step ({rounds} rounds x {steps} steps, best round)")
    for name, seconds in best.items():
        rate = flops / seconds / 1e9
        extra = f", {100 * rate / peaks['bf16']:4.1f}% of the bf16 peak" if name == "bf16" else ""
        print(f"  {name:<16s} {BATCH / seconds:8.0f} samples/s  {1e3 * seconds:7.1f} ms/step  "
              f"{rate:7.1f} GFLOP/s  {100 * rate / peaks['fp32']:5.1f}% of the fp32 peak{extra}")
    print(f"  bf16 / fp32 step: {best['fp32'] / best['bf16']:.2f}x;  fp32 / nn.Conv1d: "
          f"{best['nn.Conv1d fp32'] / best['fp32']:.2f}x;  fp32 / cat conv: {best['cat conv fp32'] / best['fp32']:.2f}x;"
          f"  GEMMs' share of the fp32 step: {100 * best['GEMMs only fp32'] / best['fp32']:.0f}%")


def profile_step(channels: int, device: torch.device, precision: str) -> None:
    from torch.profiler import ProfilerActivity, profile

    step = StepSide(channels, precision, device)
    step()
    step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(3):
            step()
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=sort, row_limit=20))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    parser.add_argument("--channels", default="64,256", help="comma-separated widths C to measure")
    parser.add_argument("--profile", type=int, metavar="C", help="only profile one fp32 step at width C")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="cpu: this process's CPU time, for a machine other processes load (use with "
                             "--threads 1: with more, waiting threads spin and count)")
    parser.add_argument("--job", action="store_true", help="also run the 1,000-task job (needs Ray)")
    parser.add_argument("--job-tasks", type=int, default=JOB_TASKS, help="tasks of the --job run")
    parser.add_argument("--compile", action="store_true",
                        help="the --job runs `finetune --compile` (its steps-alone figure then compiled too)")
    args = parser.parse_args(argv)
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    native, units = native_bf16(device)
    where = cpu_model() if device.type == "cpu" else torch.cuda.get_device_name(device)
    print(f"{where} ({units}; native bf16: {'yes' if native else 'no'}); torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores, "
          f"{args.clock} clock")
    if args.profile:
        profile_step(args.profile, device, "fp32")
        return
    rounds = 3 if args.quick else 8
    peaks = {"fp32": gemm_peak(torch.float32, device, rounds), "bf16": gemm_peak(torch.bfloat16, device, rounds)}
    print(f"GEMM peaks: fp32 {peaks['fp32']:.0f} GFLOP/s, bf16 {peaks['bf16']:.0f} GFLOP/s "
          f"({peaks['bf16'] / peaks['fp32']:.1f}x)")
    for channels in (int(c) for c in args.channels.split(",")):
        bench_steps(channels, device, rounds, peaks)
    if args.job:
        bench_job(args.job_tasks, args.compile)
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end")


CPU_ROLES = (("hub", "ProgressHub"), ("workers", "ray::"), ("ray system", ""))  # by command line, first match


def cli(*args, log: Path, cpu: dict | None = None) -> None:
    """`python cli.py ARGS`, its output appended to `log` (its tail shown if it fails). With `cpu`, the CPU
    seconds of the command's process tree go there by role: driver, workers, hub, ray system."""
    import threading

    import psutil

    with open(log, "a") as out:
        proc = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), *map(str, args)], stdout=out,
                                stderr=subprocess.STDOUT, cwd=ROOT)
        seen: dict[int, tuple[str, float]] = {}

        def sample() -> None:
            try:
                root = psutil.Process(proc.pid)
                tree = [root, *root.children(recursive=True)]
            except psutil.Error:
                return
            for p in tree:
                try:
                    with p.oneshot():
                        times, line = p.cpu_times(), " ".join(p.cmdline())
                except psutil.Error:
                    continue
                role = "driver" if p.pid == proc.pid else next(r for r, key in CPU_ROLES if key in line)
                seen[p.pid] = (role, times.user + times.system)

        def watch() -> None:
            while proc.poll() is None:
                sample()
                time.sleep(0.5)

        watcher = threading.Thread(target=watch, daemon=True)
        if cpu is not None:
            watcher.start()
        returncode = proc.wait()
        if cpu is not None:
            watcher.join()
            for role, seconds in seen.values():
                cpu[role] = cpu.get(role, 0.0) + seconds
    if returncode:
        raise SystemExit(f"cli.py {args[0]} failed (exit {returncode}):\n" + log.read_text()[-3000:])


def steps_alone(spec_path: Path, backbone_path: Path, tasks: int = 8, compiled: bool = False) -> float:
    """Seconds of a job task's JOB_STEPS optimisation steps alone (no evaluation), one thread, in this
    process: the training part of a task, for its fixed-cost share (compiled: as `finetune --compile`
    runs them, after a first task that compiles)."""
    from peterrec.compiled import training_loss
    from peterrec.checkpoint import load_backbone
    from peterrec.finetune import FinetuneSettings, prepare_task
    from peterrec.training import train
    from tasks import load_job

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    job, sequences, data = load_job(spec_path)
    backbone = load_backbone(backbone_path)[0].requires_grad_(False)
    settings = FinetuneSettings(train=TrainConfig(epochs=1000, max_steps=JOB_STEPS, batch_size=JOB_BATCH,
                                                  log_every=JOB_STEPS))
    seconds = []
    for spec in job.tasks[:tasks + 1]:
        task = prepare_task(backbone, spec, data[spec.name], sequences, settings)
        loss_fn = training_loss(task.model, compiled)
        seconds.append(train(task.model, task.arrays, task.settings.train, loss_fn=loss_fn).seconds)
    torch.set_num_threads(threads)
    return float(np.mean(seconds[1:]))  # the first warms up


def bench_job(tasks: int, compiled: bool = False) -> None:
    """The job of issue 19 end to end through the CLI, on Ray: wall time and fixed-cost share."""
    import pyarrow.parquet as pq

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        log = tmp / "log.txt"
        data, backbone, job = tmp / "data", tmp / "backbone", tmp / "job"
        print(f"\n{tasks}-task job: synth {JOB_USERS} users, {JOB_ITEMS} items; C={JOB_CHANNELS} backbone; "
              f"{JOB_STEPS} steps of batch {JOB_BATCH} per task, {JOB_WORKERS} workers (1 CPU each)"
              f"{', --compile' if compiled else ''}", flush=True)
        cli("synth", "--out", data, "--tasks", tasks, "--users", JOB_USERS, "--items", JOB_ITEMS, "--seed", 0,
            log=log)
        cli("pretrain", "--data", data, "--out", backbone, "--channels", JOB_CHANNELS, "--epochs", 1,
            "--max-steps", 100, log=log)
        t0 = time.perf_counter()
        cpu: dict[str, float] = {}
        cli("finetune", "--backbone", backbone, "--tasks", data, "--out", job, "--max-steps", JOB_STEPS,
            "--epochs", 1000, "--batch-size", JOB_BATCH, "--cpus-per-task", 1, "--num-cpus", JOB_WORKERS,
            "--ui", "plain", *(["--compile"] if compiled else []), log=log, cpu=cpu)
        wall = time.perf_counter() - t0
        rows = pq.read_table(job / "results.parquet").to_pylist()
        done = [r for r in rows if r["status"] == "done"]
        per_task = float(np.mean([r["seconds"] for r in done]))
        bundle = open_bundle(job / "bundle")
        # The training loop (steps + validations) of each task, from its recorded rate: samples / rate.
        metrics = [bundle.config(r["task"])["metrics"] for r in done]
        loop = float(np.mean([m["steps"] * JOB_BATCH / m["samples_per_s"] for m in metrics]))
        steps = steps_alone(data / "tasks.toml", backbone, compiled=compiled)
    print(f"  wall time {wall // 60:.0f} min {wall % 60:.0f} s for {len(done)}/{tasks} tasks done "
          f"({wall / max(len(done), 1):.2f} s per task per job, {JOB_WORKERS} workers)")
    print(f"  a task on its worker {per_task:.2f} s: its training loop (steps + validations) {loop:.2f} s, "
          f"so {100 * (1 - loop / per_task):.0f}% outside the loop (data, model, final evaluation, shipping, Ray)")
    print(f"  its {JOB_STEPS} steps alone, measured here after the job: {steps:.2f} s -> fixed cost "
          f"{100 * (1 - steps / per_task):.0f}% of a task (comparable only on an otherwise idle machine)")
    total = sum(cpu.values())
    print(f"  CPU seconds of the finetune command's processes (sampled every 0.5 s; {total:.0f} s in all, "
          f"{JOB_WORKERS * wall:.0f} s of {JOB_WORKERS} cores): " +
          ", ".join(f"{role} {seconds:.0f} s ({1e3 * seconds / max(len(done), 1):.0f} ms per task)"
                    for role, seconds in sorted(cpu.items(), key=lambda kv: -kv[1])))


if __name__ == "__main__":
    main()
