"""`tune` searches side by side: random + ASHA, Optuna (TPE) + ASHA and PBT, the best validation value each
reaches against the training steps it spends.

Run: nice .venv/bin/python benchmarks/bench_tune.py            (about an hour on 2 idle CPU cores)
     nice .venv/bin/python benchmarks/bench_tune.py --quick    (a few minutes: 2 small tasks, 1 seed)

The synthetic world of docs/TUNE.md (6 tasks, 2000 users, 300 items, length 30) and its backbone (causal, 32
channels, dilations 1,4,1,4, pretrained 3 epochs). Each method searches every task with the same trials per
task (--samples, the baseline included) and the same bounds per trial (--max-steps, --epochs, --evals), for
each of --seeds (the search's --seed: the random draws, TPE's and PBT's generators, the trials' own seeds), on
one embedded Ray cluster (2 CPUs, 1 per trial) that every search shares.

While a search runs, its monitor is sampled after every step of Tune's loop: per task, the training steps its
trials have spent so far (every run of every trial: resumed, paused, exploited) and the best validation value
any of them has reached so far (the trials keep their best weights, so that value is a checkpoint one could
keep). Printed, per method (means over tasks and seeds): the final best, the steps spent, and the best reached
at a share of the steps random + ASHA spent on the same task and seed, normalised by random + ASHA's final
best; then how often, and with what share of random + ASHA's steps, the method reached random's best.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import orchestrator  # noqa: E402,F401  (Ray's loopback environment, before Ray is imported)

METHODS = {"random+asha": ("random", "asha"), "optuna+asha": ("optuna", "asha"), "pbt": ("random", "pbt")}
SHARES = (0.25, 0.5, 0.75, 1.0)  # budgets: shares of the steps random + ASHA spent on a task


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def make_world(root: Path, quick: bool) -> tuple[Path, Path]:
    import cli

    spec = root / "data"
    tasks, users, epochs = (2, 600, 1) if quick else (6, 2000, 3)
    assert cli.main(["synth", "--out", str(spec), "--tasks", str(tasks), "--users", str(users), "--items", "300",
                     "--max-len", "30"]) == 0
    assert cli.main(["pretrain", "--data", str(spec), "--out", str(root / "backbone"), "--channels", "32",
                     "--max-len", "30", "--epochs", str(epochs)]) == 0
    return spec, root / "backbone"


class Recorder:
    """The monitor's on_update: per task, (steps spent, best reached) whenever either changes."""

    def __init__(self):
        self.curves: dict[str, list[tuple[int, float]]] = {}

    def __call__(self, monitor) -> None:
        spent = monitor.steps_per_task()
        for task, best in monitor.tasks.items():
            scores = [t.score for t in best.trials.values() if t.score is not None]
            if not scores:
                continue
            point = (spent[task], max(scores))
            curve = self.curves.setdefault(task, [])
            if not curve or point != curve[-1]:
                curve.append(point)


def search(spec: Path, backbone: Path, out: Path, method: str, seed: int, args) -> dict:
    from orchestrator.settings import SearchSettings, TrainingSettings
    from orchestrator.tune import TuneSearch, plan_for

    kind, scheduler = METHODS[method]
    settings = SearchSettings(backbone=str(backbone), tasks=str(spec), out=str(out), samples=args.samples,
                              scheduler=scheduler, search=kind, evals=args.evals, force=True,
                              training=TrainingSettings(max_steps=args.max_steps, epochs=args.epochs, seed=seed))
    plan = plan_for(settings)
    recorder = Recorder()
    start = time.perf_counter()
    outcome = TuneSearch(plan, settings.options(), "finetune").run(on_update=recorder)
    seconds = time.perf_counter() - start
    assert outcome.complete, f"{method} seed {seed}: the search did not complete"
    spent = {t: sum(r["steps_trained"] or 0 for r in outcome.rows if r["task"] == t) for t in outcome.best}
    return {"method": method, "seed": seed, "seconds": seconds, "curves": recorder.curves, "spent": spent,
            "best": {t: b["score"] for t, b in outcome.best.items()},
            "reached": {t: c[-1][1] for t, c in recorder.curves.items()},
            "exploits": sum(len(json.loads(r["lineage"])) > 0 for r in outcome.rows)}


def best_at(curve: list[tuple[int, float]], steps: float) -> float | None:
    """The best reached once `steps` were spent (None: nothing evaluated yet)."""
    values = [best for spent, best in curve if spent <= steps]
    return values[-1] if values else None


def steps_to(curve: list[tuple[int, float]], target: float) -> int | None:
    return next((spent for spent, best in curve if best >= target - 1e-12), None)


def summarise(runs: list[dict]) -> list[str]:
    reference = {(r["seed"], t): (r["spent"][t], r["reached"][t], r["curves"][t])
                 for r in runs if r["method"] == "random+asha" for t in r["curves"]}
    lines = ["| method | best valid (mean) | reached, / random's | steps spent | wall s | "
             + " | ".join(f"best at {int(s * 100)}% of random's steps" for s in SHARES)
             + " | reached random's best | steps to it / random's steps (median) |",
             "|---" * (7 + len(SHARES)) + "|"]
    for method in METHODS:
        mine = [r for r in runs if r["method"] == method]
        if not mine:
            continue
        cells, reached, ratios, at = [], 0, [], {s: [] for s in SHARES}
        keys = [(r, t) for r in mine for t in r["curves"] if (r["seed"], t) in reference]
        for r, t in keys:
            spent, target, _ = reference[(r["seed"], t)]
            for share in SHARES:
                value = best_at(r["curves"][t], share * spent)
                at[share].append((value or 0.0) / target if target else 1.0)
            hit = steps_to(r["curves"][t], target)
            if hit is not None:
                reached += 1
                ratios.append(hit / spent)
        mean = lambda xs: statistics.fmean(xs) if xs else float("nan")  # noqa: E731
        cells = [method, f"{mean([r['best'][t] for r, t in keys]):.4f}",
                 f"{mean([r['reached'][t] / reference[(r['seed'], t)][1] for r, t in keys if reference[(r['seed'], t)][1]]):.3f}",
                 f"{mean([sum(r['spent'].values()) for r in mine]):.0f}", f"{mean([r['seconds'] for r in mine]):.0f}",
                 *(f"{mean(at[s]):.3f}" for s in SHARES), f"{reached}/{len(keys)}",
                 f"{statistics.median(ratios):.2f}" if ratios else "never"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def plot(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    reference = {(r["seed"], t): (r["spent"][t], r["reached"][t])
                 for r in runs if r["method"] == "random+asha" for t in r["curves"]}
    grid = [i / 50 for i in range(0, 101)]  # 0 .. 2x random's steps
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    for method in METHODS:
        mine = [(r, t) for r in runs if r["method"] == method for t in r["curves"] if (r["seed"], t) in reference]
        if not mine:
            continue
        ys = []
        for x in grid:
            values = [(best_at(r["curves"][t], x * reference[(r["seed"], t)][0]) or 0.0)
                      / (reference[(r["seed"], t)][1] or 1.0) for r, t in mine]
            ys.append(statistics.fmean(values))
        ax.plot(grid, ys, label=method)
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.axvline(0.5, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("training steps spent / steps random+ASHA spent (per task)")
    ax.set_ylabel("best valid reached / random+ASHA's")
    ax.set_ylim(0.5, 1.1)
    ax.legend(loc="lower right")
    ax.set_title("best reached vs steps (mean over tasks and seeds)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 small tasks, 5 samples, 40 steps, 1 seed")
    parser.add_argument("--samples", type=int, default=12, help="trials per task, the baseline included")
    parser.add_argument("--max-steps", type=int, default=150)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--evals", type=int, default=8)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--work", default=None, help="working directory (default: a temporary one)")
    parser.add_argument("--plot", default=None, help="write the curves to this PNG")
    parser.add_argument("--json", default=None, help="write every run's curves to this JSON file")
    args = parser.parse_args(argv)
    if args.quick:
        args.samples, args.max_steps, args.seeds = 5, 40, "0"

    from orchestrator.cluster import connect

    seeds = [int(s) for s in args.seeds.split(",")]
    methods = [m for m in args.methods.split(",") if m]
    with tempfile.TemporaryDirectory(prefix="bench_tune.") as tmp:
        root = Path(args.work or tmp)
        spec, backbone = ((root / "data", root / "backbone") if (root / "backbone").exists()
                          else make_world(root, args.quick))
        cluster = connect(num_cpus=2, object_store_mb=300)
        runs = []
        try:
            for seed in seeds:
                for method in methods:
                    run = search(spec, backbone, root / f"{method}-s{seed}", method, seed, args)
                    runs.append(run)
                    print(f"{method} seed {seed}: {run['seconds']:.0f} s, steps {sum(run['spent'].values())}, "
                          f"exploits {run['exploits']}, best " + json.dumps({t: round(v, 4) for t, v in
                                                                            run["best"].items()}), flush=True)
        finally:
            cluster.shutdown()
        if args.json:
            Path(args.json).write_text(json.dumps(runs, indent=1))
        if args.plot:
            plot(runs, Path(args.plot))
    print(f"\n{cpu_model()}, {len(seeds)} seed(s), {args.samples} trials per task, --max-steps {args.max_steps} "
          f"--evals {args.evals}, 2 CPUs, 1 per trial\n")
    print("\n".join(summarise(runs)))


if __name__ == "__main__":
    main()
