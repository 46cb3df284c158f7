"""The orchestrator's costs, measured side by side in one run on this machine.

Run: .venv/bin/python benchmarks/bench_orchestrator.py            (10-15 minutes on 2 busy CPU cores)
     .venv/bin/python benchmarks/bench_orchestrator.py --quick    (about 3 minutes)

1. Memory: resident memory each worker process gains when it acquires the backbone, shared (the
   orchestrator's path: numpy arrays put once, read zero-copy) against naive (a torch copy of the
   backbone shipped through the object store and loaded into each worker's own module). Measured
   with psutil as USS (pages private to the process) and PSS (shared pages split between their
   users), after every weight has been read.
2. Throughput: aggregate training samples/s of 8 tasks run as an orchestrated job (1 CPU per task on
   an embedded cluster of this machine's cores) against a bare single-process loop over the same
   tasks (torch using every core). The sides alternate for --rounds rounds and each keeps its best, so
   load from other processes hurts both alike; the first (cold: worker processes import torch) job
   round is reported too.
3. Start-up: `python cli.py finetune` as a fresh process: seconds from its start to the first progress
   report of a task, with the stages recorded in JOB_DIR/state.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import orchestrator  # noqa: E402,F401  (Ray's loopback environment, before Ray is imported)
import psutil  # noqa: E402
import ray  # noqa: E402
import torch  # noqa: E402

from orchestrator.cluster import connect  # noqa: E402
from orchestrator.shared import share  # noqa: E402
from peterrec import Backbone, BackboneConfig  # noqa: E402
from peterrec.checkpoint import save_checkpoint  # noqa: E402
from peterrec.efficiency import count_parameters  # noqa: E402

MB = 1024 * 1024


# ---------------------------------------------------------------------------------------------------
# 1. Memory


class Probe:
    """A worker process that reports its memory before and after acquiring a backbone."""

    def __init__(self):
        # Imports and torch's one-time set-up (about 70 MB here, paid by any worker that trains) are
        # not the backbone's cost: both happen before the first measurement, through both paths.
        from orchestrator.shared import backbone_from_arrays

        small = Backbone(BackboneConfig(vocab_size=50, channels=8, dilations=(1,), max_len=5))
        arrays = {k: v.numpy().copy() for k, v in small.state_dict().items()}
        for array in arrays.values():
            array.setflags(write=False)
        self.warm = [backbone_from_arrays(arrays, small.config), small]
        self.warm[1].load_state_dict({k: torch.from_numpy(a.copy()) for k, a in arrays.items()})
        with torch.no_grad():
            sum(float(p.sum()) for b in self.warm for p in b.parameters())
        self.before = None

    @staticmethod
    def memory() -> dict:
        info = psutil.Process().memory_full_info()
        return {"uss": info.uss, "pss": info.pss}

    def ready(self) -> bool:  # a first call, so Ray's own per-call set-up is not counted either
        return True

    def _start(self) -> None:
        gc.collect()
        self.before = self.memory()

    def acquire_shared(self, refs) -> dict:
        from orchestrator.shared import shared_backbone

        self._start()
        self.backbone = shared_backbone(refs)
        return self._after()

    def acquire_naive(self, holder) -> dict:
        self._start()
        state = ray.get(holder[0])  # torch tensors: deserialised into this process's own memory
        self.backbone = Backbone(BackboneConfig.from_dict(holder[1]))
        self.backbone.load_state_dict(state)
        del state
        return self._after()

    def _after(self) -> dict:
        with torch.no_grad():  # read every weight (no temporary copies), so every page is resident
            checksum = sum(float(p.sum()) for p in self.backbone.parameters())
        gc.collect()
        after = self.memory()
        return {"uss": after["uss"] - self.before["uss"], "pss": after["pss"] - self.before["pss"],
                "checksum": checksum}


def measure_memory(vocab: int, channels: int, workers: int) -> dict:
    torch.manual_seed(0)
    backbone = Backbone(BackboneConfig(vocab_size=vocab, channels=channels, dilations=(1, 4), max_len=50))
    size = sum(t.numel() * t.element_size() for t in backbone.state_dict().values())
    from tasks.sequences import Sequences

    tiny = Sequences.from_lists(["u0"], [[1, 2, 3]], vocab)
    probe = ray.remote(num_cpus=0)(Probe)
    out = {"backbone_mb": size / MB, "params": count_parameters(backbone), "workers": workers}
    for way in ("shared", "naive"):
        actors = [probe.remote() for _ in range(workers)]
        ray.get([a.ready.remote() for a in actors])
        if way == "shared":
            refs = share(backbone, tiny)  # one put per job
            results = ray.get([a.acquire_shared.remote(refs) for a in actors])
        else:
            holder = [ray.put(backbone.state_dict()), backbone.config.to_dict()]  # one put, torch tensors
            results = ray.get([a.acquire_naive.remote(holder) for a in actors])
        assert len({round(r["checksum"], 3) for r in results}) == 1
        out[way] = {"uss_mb": [r["uss"] / MB for r in results], "pss_mb": [r["pss"] / MB for r in results]}
        for actor in actors:
            ray.kill(actor)
        del actors
        time.sleep(1.0)
    return out


# ---------------------------------------------------------------------------------------------------
# 2. Throughput


def make_world(root: Path, tasks: int, users: int, channels: int):
    from tasks.synth import synthesize

    spec = synthesize(root / "data", tasks=tasks, users=users, items=2000, seed=7, max_len=50)
    torch.manual_seed(0)
    backbone = Backbone(BackboneConfig(vocab_size=2001, channels=channels, dilations=(1, 4, 1, 4), max_len=50))
    save_checkpoint(root / "backbone", backbone)
    return spec, root / "backbone"


def settings(steps: int):
    from peterrec.finetune import FinetuneSettings
    from peterrec.training import TrainConfig

    return FinetuneSettings(train=TrainConfig(epochs=10_000, max_steps=steps, batch_size=64, lr=1e-3))


def bare_loop(spec, backbone_dir, steps: int, threads: int, budget_s: float | None = None) -> tuple[float, int]:
    """(seconds, training samples) of the tasks run one after another in this process; with a budget,
    of the work done until it ran out (a rate all the same)."""
    from peterrec.checkpoint import load_backbone
    from peterrec.finetune import finetune_task
    from tasks import load_job

    job, sequences, task_data = load_job(spec)
    backbone, _ = load_backbone(backbone_dir)
    backbone.requires_grad_(False)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        start, samples = time.perf_counter(), 0
        deadline = start + budget_s if budget_s else float("inf")
        for task in job.tasks:
            outcome = finetune_task(backbone, task, task_data[task.name], sequences, settings(steps),
                                    on_progress=lambda p: time.perf_counter() > deadline)
            samples += round(outcome.result.samples_per_s * outcome.result.seconds)
            if time.perf_counter() > deadline:
                break
        return time.perf_counter() - start, samples
    finally:
        torch.set_num_threads(before)


def orchestrated(spec, backbone_dir, steps: int, out: Path) -> float:
    """Seconds of the job on the running cluster: from submitting the tasks to the last result."""
    from orchestrator.job import FinetuneJob
    from orchestrator.settings import JobOptions
    from orchestrator.plan import plan_job

    plan = plan_job(spec, backbone_dir, out, settings(steps))
    job = FinetuneJob(plan, JobOptions(cpus_per_task=1))
    state = job.run()
    assert all(t.status == "done" for t in state.tasks.values()), state.counts()
    return state.timings["finished"] - state.timings["shared"]


# ---------------------------------------------------------------------------------------------------
# 3. Start-up


def startup(spec, backbone_dir, out: Path, cpus: int) -> dict:
    command = [sys.executable, "cli.py", "finetune", "--backbone", str(backbone_dir), "--tasks", str(spec),
               "--out", str(out), "--max-steps", "20", "--epochs", "100", "--ui", "plain", "--num-cpus", str(cpus)]
    start = time.time()
    child = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    if child.returncode != 0:
        raise RuntimeError(child.stderr[-2000:])
    timings = json.loads((out / "state.json").read_text())["timings"]
    return {"wall": time.time() - start, **timings}


# ---------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller backbone, fewer steps, one round")
    parser.add_argument("--rounds", type=int, default=None, help="throughput rounds per side (default 3; quick 2)")
    parser.add_argument("--parts", default="memory,throughput,startup", help="which measurements to run")
    args = parser.parse_args()
    cores = psutil.cpu_count(logical=True) or 2
    vocab, channels, workers = (30_000, 128, 3) if args.quick else (100_000, 256, 4)
    tasks, users, width, steps = (8, 600, 32, 40) if args.quick else (8, 1500, 64, 100)
    rounds = args.rounds or (2 if args.quick else 3)
    parts = set(args.parts.split(","))

    cluster = connect(num_cpus=cores, object_store_mb=max(200, int(vocab * channels * 4 * 3 / MB)))
    print(f"Ray {ray.__version__}, torch {torch.__version__}, {cores} cores, cluster {cluster.address}; "
          f"load average {os.getloadavg()[0]:.1f}")
    memory = start = None
    bare, jobs, samples = {1: [], cores: []}, [], 0
    try:
        if "memory" in parts:
            memory = measure_memory(vocab, channels, workers)
        with tempfile.TemporaryDirectory(prefix="bench-orch-") as tmp:
            spec, backbone_dir = make_world(Path(tmp), tasks, users, width)
            if "throughput" in parts:
                bare_loop(spec, backbone_dir, 5, cores)  # warm-up: this process's one-time torch set-up
            for r in range(rounds if "throughput" in parts else 0):
                seconds, samples = bare_loop(spec, backbone_dir, steps, 1)
                bare[1].append(samples / seconds)
                if r == 0:  # torch's threads stall when other processes take the cores: bounded, once
                    bare[cores].append(rate(*bare_loop(spec, backbone_dir, steps, cores, budget_s=60)))
                jobs.append(orchestrated(spec, backbone_dir, steps, Path(tmp) / f"job{r}"))
                print(f"  round {r + 1}: bare loop 1 thread {bare[1][-1]:,.0f}, {cores} threads {bare[cores][-1]:,.0f}; "
                      f"orchestrated {samples / jobs[-1]:,.0f} samples/s   (load average {os.getloadavg()[0]:.1f})")
            cluster.shutdown()
            if "startup" in parts:
                start = startup(spec, backbone_dir, Path(tmp) / "startup", cores)
    finally:
        cluster.shutdown()
    report(memory, bare, jobs, samples, start, tasks=tasks, steps=steps, width=width, cores=cores, rounds=rounds)


def report(memory, bare, jobs, samples, start, *, tasks, steps, width, cores, rounds) -> None:
    if memory:
        print_memory(memory)
    if jobs:
        print_throughput(bare, jobs, samples, tasks=tasks, steps=steps, width=width, cores=cores, rounds=rounds)
    if start:
        print(f"\n3. Start-up of `cli.py finetune` (seconds since the process started): "
              f"checked inputs {start['validated']:.1f}, Ray up {start['ray_ready']:.1f}, backbone shared "
              f"{start['shared']:.1f}, first task started {start['first_start']:.1f}, "
              f"first progress row {start['first_progress']:.1f}, first result {start['first_result']:.1f}")


def print_memory(memory) -> None:
    backbone_mb = memory["backbone_mb"]
    print(f"\n1. Memory per worker attributable to the backbone ({memory['params']:,} parameters, "
          f"{backbone_mb:.1f} MB; {memory['workers']} worker processes)")
    print(f"   {'':28}{'USS +MB / worker':>20}{'% of backbone':>16}{'PSS +MB / worker':>20}")
    for way, label in (("shared", "shared (zero-copy numpy)"), ("naive", "naive (torch copy per task)")):
        uss, pss = memory[way]["uss_mb"], memory[way]["pss_mb"]
        mean_uss = sum(uss) / len(uss)
        print(f"   {label:28}{mean_uss:>20.1f}{100 * mean_uss / backbone_mb:>15.1f}%{sum(pss) / len(pss):>20.1f}")
    print("   (shared: the one copy lives in the node's object store, whatever the number of workers)")


def rate(seconds: float, samples: int) -> float:
    return samples / seconds


def print_throughput(bare, jobs, samples, *, tasks, steps, width, cores, rounds) -> None:
    job_rate = samples / min(jobs)
    print(f"\n2. Throughput: {tasks} tasks x {steps} steps x batch 64 = {samples:,} training samples "
          f"(backbone {width} channels, 4 blocks, length 50; best of {rounds} round(s))")
    for threads, rates in bare.items():
        print(f"   bare single-process loop, {threads} thread(s) {max(rates):>12,.0f} samples/s")
    print(f"   orchestrated job, {cores} tasks x 1 CPU     {job_rate:>12,.0f} samples/s  ({min(jobs):.1f} s)"
          f"   cold first round {samples / jobs[0]:,.0f} samples/s")
    best_bare = max(max(r) for r in bare.values())
    print(f"   orchestrated / best bare loop: {100 * job_rate / best_bare:.0f}%")


if __name__ == "__main__":
    main()
