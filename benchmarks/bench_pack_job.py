"""`finetune --pack` end to end: the same job on the same embedded Ray cluster, unpacked and packed.

Run: .venv/bin/python benchmarks/bench_pack_job.py            (about 3 minutes on 2 idle CPU cores)
     .venv/bin/python benchmarks/bench_pack_job.py --quick    (about a minute)

A synthetic world (16 tasks: binary, multi-class and cold start), a random backbone of the default
shape (64 channels, 4 blocks, length 50), every task trained for --steps steps at a small per-task
batch. One embedded cluster (2 CPUs, 1 CPU per worker) runs the job with --pack 1, --pack 16 and
--pack auto, in alternating order for --rounds rounds, each into a fresh job directory. Printed per
side: the job's wall time from submission to the last result written (Ray's start excluded: the
cluster is shared by every run, and warm workers are reused by all sides alike) and training
samples/s over the whole job, then the ratios against --pack 1 (median of rounds).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import orchestrator  # noqa: E402,F401  (Ray's loopback environment, before Ray is imported)
import torch  # noqa: E402

from commands.finetune import settings_from  # noqa: E402
from orchestrator.cluster import connect  # noqa: E402
from orchestrator.job import FinetuneJob  # noqa: E402
from orchestrator.settings import JobOptions  # noqa: E402
from orchestrator.plan import plan_job  # noqa: E402
from peterrec import Backbone, BackboneConfig  # noqa: E402
from peterrec.checkpoint import save_checkpoint  # noqa: E402
from tasks.synth import synthesize  # noqa: E402


def run_job(spec: Path, backbone: Path, out: Path, pack, batch: int, steps: int) -> dict:
    import cli

    args = cli.build_parser().parse_args(
        ["finetune", "--backbone", str(backbone), "--tasks", str(spec), "--out", str(out), "--epochs", "1000",
         "--max-steps", str(steps), "--batch-size", str(batch)])
    plan = plan_job(spec, backbone, out, settings_from(args))
    job = FinetuneJob(plan, JobOptions(cpus_per_task=1, retries=0, pack=pack))
    start = time.perf_counter()
    state = job.run()
    seconds = time.perf_counter() - start
    assert all(t.status == "done" for t in state.tasks.values()), "a task failed"
    samples = sum(t.total for t in state.tasks.values()) * batch
    return {"seconds": seconds, "rate": samples / seconds, "k": state.resources.get("pack_size"),
            "reason": state.resources.get("pack_reason")}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one round, fewer steps")
    parser.add_argument("--batch", type=int, default=8, help="per-task batch size")
    parser.add_argument("--steps", type=int, default=None, help="training steps per task")
    parser.add_argument("--rounds", type=int, default=None, help="rounds of the three sides")
    args = parser.parse_args(argv)
    steps = args.steps or (40 if args.quick else 120)
    rounds = args.rounds or (1 if args.quick else 3)
    work = Path(tempfile.mkdtemp(prefix="bench_pack_job_"))
    spec = synthesize(work / "data", tasks=16, users=3000, items=300, seed=0)
    torch.manual_seed(0)
    save_checkpoint(work / "backbone", Backbone(BackboneConfig(vocab_size=301, channels=64)))
    cluster = connect(num_cpus=2, object_store_mb=200)
    print(f"16 tasks x {steps} steps, batch {args.batch}, 2 CPUs (1 per worker), load average "
          f"{os.getloadavg()[0]:.1f}", flush=True)
    sides = {"--pack 1": 1, "--pack 16": 16, "--pack auto": "auto"}
    results = {name: [] for name in sides}
    try:
        run_job(spec, work / "backbone", work / "warm", 1, args.batch, 5)  # warm workers for every side
        for r in range(rounds):
            order = list(sides) if r % 2 == 0 else list(sides)[::-1]
            for name in order:
                out = run_job(spec, work / "backbone", work / f"{r}{name.split()[-1]}", sides[name], args.batch,
                              steps)
                results[name].append(out)
                print(f"  round {r + 1} {name:<12} {out['seconds']:6.1f} s  {out['rate']:7.0f} samples/s  "
                      f"largest pack {out['k']}{'  (' + out['reason'] + ')' if out['reason'] else ''}", flush=True)
    finally:
        cluster.shutdown()
    base = [o["rate"] for o in results["--pack 1"]]
    print("\nside          median samples/s   vs --pack 1 (median of rounds)")
    for name, outs in results.items():
        ratios = [o["rate"] / b for o, b in zip(outs, base)]
        print(f"{name:<12}  {statistics.median(o['rate'] for o in outs):16.0f}   {statistics.median(ratios):.2f}x")
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
