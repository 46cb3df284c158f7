"""`tune` searches side by side: random + ASHA, Optuna (TPE) + ASHA and PBT, the best validation value each
reaches against the training steps it spends.

Run: nice .venv/bin/python benchmarks/bench_tune.py            (about an hour on 2 idle CPU cores)
     nice .venv/bin/python benchmarks/bench_tune.py --quick    (a few minutes: 2 small tasks, 1 seed)
     .venv/bin/python benchmarks/bench_tune.py --from-work DIR --plot curves.png   (summarise a finished --work DIR)

The synthetic world of docs/TUNE.md (6 tasks, 2000 users, 300 items, length 30) and its backbone (causal, 32
channels, dilations 1,4,1,4, pretrained 3 epochs). Each method searches every task with the same trials per
task (--samples, the baseline included) and the same bounds per trial (--max-steps, --epochs, --evals), for
each of --seeds (the search's --seed: the random draws, TPE's and PBT's generators, the trials' own seeds), on
one embedded Ray cluster (2 CPUs, 1 per trial) that every search shares.

Each search's curves are read back from its directory once it has ended (`--from-work DIR` does only that,
for searches run before; `--work DIR` reuses a search finished there with the same flags): per task, every
report of every trial in time order (Tune's result.json lines, to the second), each adding the steps its run
trained since that run's previous report (every run of every trial: resumed, paused, exploited; the driver's
ledger of steps trained adds the reports Tune's log drops), and the best validation value any trial has
reported so far (a trial keeps its best weights, so that value was a checkpoint one could keep; under PBT an
exploit can later overwrite it, so the search's final best in best.json, from finished trials, can be lower).
Printed, per method (means over tasks and seeds): the final best (best.json), the best reached over the
run / random + ASHA's, the steps spent, the best reached at a share of the steps random + ASHA spent on the
same task and seed, normalised by random + ASHA's best reached; then how often, and with what share of
random + ASHA's steps, the method reached random's best.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import orchestrator  # noqa: E402,F401  (Ray's loopback environment, before Ray is imported)
from machine import cpu_model  # noqa: E402  (benchmarks/machine.py: this script's folder is on sys.path)

METHODS = {"random+asha": ("random", "asha"), "optuna+asha": ("optuna", "asha"), "pbt": ("random", "pbt")}
SHARES = (0.25, 0.5, 0.75, 1.0)  # budgets: shares of the steps random + ASHA spent on a task


def make_world(root: Path, quick: bool) -> tuple[Path, Path]:
    import cli

    spec = root / "data"
    tasks, users, epochs = (2, 600, 1) if quick else (6, 2000, 3)
    assert cli.main(["synth", "--out", str(spec), "--tasks", str(tasks), "--users", str(users), "--items", "300",
                     "--max-len", "30"]) == 0
    assert cli.main(["pretrain", "--data", str(spec), "--out", str(root / "backbone"), "--channels", "32",
                     "--max-len", "30", "--epochs", str(epochs)]) == 0
    return spec, root / "backbone"


def search(spec: Path, backbone: Path, out: Path, method: str, seed: int, args) -> None:
    from orchestrator.settings import SearchSettings, TrainingSettings
    from orchestrator.tune import TuneSearch, plan_for

    kind, scheduler = METHODS[method]
    settings = SearchSettings(backbone=str(backbone), tasks=str(spec), out=str(out), samples=args.samples,
                              scheduler=scheduler, search=kind, evals=args.evals, force=True,
                              training=TrainingSettings(max_steps=args.max_steps, epochs=args.epochs, seed=seed))
    outcome = TuneSearch(plan_for(settings), settings.options(), "finetune").run()
    assert outcome.complete, f"{method} seed {seed}: the search did not complete"


def complete(out: Path) -> bool:
    """A search whose trials all ended: `tune` writes best.json only then."""
    return all((out / name).exists() for name in ("best.json", "trials.parquet", "search.json"))


def same_search(out: Path, method: str, seed: int, args) -> bool:
    """The finished search in `out` is the one these flags ask for (a run to reuse, not to redo)."""
    saved = json.loads((out / "search.json").read_text())
    train = saved["settings"]["train"]
    kind, scheduler = METHODS[method]
    return ((saved["search"], saved["scheduler"], saved["samples"], saved["evals"], train["max_steps"],
             train["epochs"], train["seed"]) == (kind, scheduler, args.samples, args.evals, args.max_steps,
                                                 args.epochs, seed))


def ledger_of(experiment: Path) -> dict[str, dict[str, list[int]]]:
    """The driver's ledger of steps trained, trial_id -> run_id -> [start step, last step reported]: the state
    of orchestrator.tune.monitor.Forward, which Tune saves with its experiment (a pickle `tune` wrote)."""
    import pickle

    for path in sorted(experiment.glob("callback-states-*.pkl"))[-1:]:
        for state in pickle.loads(path.read_bytes()).values():
            if isinstance(state, dict) and "ledger" in state:
                return state["ledger"]
    return {}


def rebuild_curves(experiment: Path) -> dict[str, list[tuple[int, float]]]:
    """Per task, (steps spent, best validation so far) after each report of any of its trials, in time order.

    Each report (a line of a trial's result.json) adds the steps its run trained since that run's previous
    report, or since the run's start step. The report at which PBT exploits a trial is missing from Tune's
    result log but not from the ledger: steps of a run that the ledger has and result.json lacks are added
    just before the first report of the trial's next run (their score unknown: the best stays as it stood).
    On a PBT search whose curves were also sampled live, that placement gave the same curves."""
    ledger = ledger_of(experiment)
    events = []  # (time, task, steps, best_valid or None)
    for trial in sorted(p for p in experiment.iterdir() if (p / "result.json").exists()):
        task, _, trial_id = trial.name.rsplit("-", 2)  # orchestrator.tune.search.trial_dirname
        reports = [json.loads(line) for line in (trial / "result.json").read_text().splitlines() if line.strip()]
        reports = [r for r in reports if r.get("trial_id") == trial_id and "run_id" in r]
        reached, first = {}, {}  # run_id -> step of its latest report; run_id -> time of its first one
        for r in reports:
            events.append((r["timestamp"], task, r["step"] - reached.get(r["run_id"], r["run_start"]),
                           r.get("best_valid")))
            reached[r["run_id"]] = r["step"]
            first.setdefault(r["run_id"], r["timestamp"])
        runs = sorted(ledger.get(trial_id, {}).items(), key=lambda kv: int(kv[0].split(":")[1]))  # by attempt
        for i, (run_id, (start, end)) in enumerate(runs):
            step = reached.get(run_id, start)
            if end > step:  # just before the trial's next run reported (the run that replaced this one)
                after = [first[later] for later, _ in runs[i + 1:] if later in first]
                when = after[0] - 0.5 if after else max((r["timestamp"] for r in reports), default=0)
                events.append((when, task, end - step, None))
    curves: dict[str, list[tuple[int, float]]] = {}
    spent, best = {}, {}
    for _, task, steps, value in sorted(events, key=lambda e: e[0]):  # stable: a trial's own order is kept
        spent[task] = spent.get(task, 0) + steps
        if value is not None and value > best.get(task, float("-inf")):
            best[task] = value
        if task in best:
            curve = curves.setdefault(task, [])
            if curve and curve[-1][0] == spent[task]:
                curve.pop()
            curve.append((spent[task], best[task]))
    return curves


def load_run(out: Path, method: str, seed: int) -> dict:
    """One finished search, read back from its directory: its curves, steps spent (trials.parquet's
    steps_trained), best per task (best.json), trials exploited, and seconds from Tune's start to the last
    report."""
    import pyarrow.parquet as pq

    experiment = out / "ray" / "search"
    rows = pq.read_table(out / "trials.parquet").to_pylist()
    best = json.loads((out / "best.json").read_text())
    curves = rebuild_curves(experiment)
    spent = {t: sum(r["steps_trained"] or 0 for r in rows if r["task"] == t) for t in best}
    for task, curve in curves.items():
        if curve[-1][0] != spent[task]:
            print(f"warning: {out.name} {task}: its curve ends at {curve[-1][0]} steps, trials.parquet says "
                  f"{spent[task]}", file=sys.stderr)
    state = json.loads(max(experiment.glob("experiment_state-*.json")).read_text())
    stats = state["stats"] if isinstance(state["stats"], dict) else json.loads(state["stats"])
    last = max(json.loads(line)["timestamp"] for f in experiment.glob("*/result.json")
               for line in f.read_text().splitlines() if line.strip())
    return {"method": method, "seed": seed, "seconds": last - stats["start_time"], "curves": curves,
            "spent": spent, "best": {t: b["score"] for t, b in best.items()},
            "reached": {t: c[-1][1] for t, c in curves.items()},
            "exploits": sum(len(json.loads(r["lineage"] or "[]")) > 0 for r in rows),
            "search": json.loads((out / "search.json").read_text())}


def runs_in(work: Path, methods) -> list[dict]:
    """Every finished search of `methods` in `work` (its directories METHOD-sSEED), read back."""
    runs = []
    for out in sorted(p for p in work.iterdir() if p.is_dir()):
        method, _, seed = out.name.rpartition("-s")
        if method in methods and seed.isdigit():
            if complete(out):
                runs.append(load_run(out, method, int(seed)))
            else:
                print(f"{out}: not a finished search, left out", file=sys.stderr)
    return runs


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
             + " | reached random's best | ... with at most half of random's steps (the goal)"
             " | steps to it / random's steps (median) |",
             "|---" * (8 + len(SHARES)) + "|"]
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
                 f"{sum(x <= 0.5 for x in ratios)}/{len(keys)}",
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


def described(run: dict) -> str:
    return (f"{run['method']} seed {run['seed']}: {run['seconds']:.0f} s, steps {sum(run['spent'].values())}, "
            f"exploits {run['exploits']}, best " + json.dumps({t: round(v, 4) for t, v in run["best"].items()}))


def setup(runs: list[dict]) -> str:
    """The bounds the runs searched with (their search.json), or 'mixed' where they differ."""
    def one(values):
        values = sorted(set(values))
        return str(values[0]) if len(values) == 1 else "mixed " + "/".join(map(str, values))

    searches = [r["search"] for r in runs]
    return (f"{cpu_model()}, {len({r['seed'] for r in runs})} seed(s), {one(s['samples'] for s in searches)} "
            f"trials per task, --max-steps {one(s['settings']['train']['max_steps'] for s in searches)} "
            f"--evals {one(s['evals'] for s in searches)}, 2 CPUs, 1 per trial")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 small tasks, 5 samples, 40 steps, 1 seed")
    parser.add_argument("--samples", type=int, default=12, help="trials per task, the baseline included")
    parser.add_argument("--max-steps", type=int, default=150)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--evals", type=int, default=8)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--work", default=None, help="working directory (default: a temporary one); a search "
                        "already finished there with the same flags is reused, not run again")
    parser.add_argument("--from-work", default=None, metavar="DIR",
                        help="search nothing: summarise every finished search of --methods in DIR (the "
                             "METHOD-sSEED directories a run with --work DIR leaves)")
    parser.add_argument("--plot", default=None, help="write the curves to this PNG")
    parser.add_argument("--json", default=None, help="write every run's curves to this JSON file")
    args = parser.parse_args(argv)
    if args.quick:
        args.samples, args.max_steps, args.seeds = 5, 40, "0"

    methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        parser.error(f"unknown method(s) {', '.join(unknown)}; known: {', '.join(METHODS)}")
    with tempfile.TemporaryDirectory(prefix="bench_tune.") as tmp:
        if args.from_work:
            runs = runs_in(Path(args.from_work), methods)
            for run in runs:
                print(described(run))
        else:
            runs = run_all(Path(args.work or tmp), methods, [int(s) for s in args.seeds.split(",")], args)
    if not runs:
        sys.exit("no finished search to summarise")
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=1))
    if args.plot:
        plot(runs, Path(args.plot))
    print(f"\n{setup(runs)}\n")
    print("\n".join(summarise(runs)))


def run_all(root: Path, methods: list[str], seeds: list[int], args) -> list[dict]:
    """Each method for each seed into root/METHOD-sSEED, on one cluster started for the first search run."""
    from orchestrator.cluster import connect

    spec, backbone = ((root / "data", root / "backbone") if (root / "backbone").exists()
                      else make_world(root, args.quick))
    cluster, runs = None, []
    try:
        for seed in seeds:
            for method in methods:
                out = root / f"{method}-s{seed}"
                reused = complete(out) and same_search(out, method, seed, args)
                if not reused:
                    cluster = cluster or connect(num_cpus=2, object_store_mb=300)
                    search(spec, backbone, out, method, seed, args)
                runs.append(load_run(out, method, seed))
                print(described(runs[-1]) + (" (reused)" if reused else ""), flush=True)
    finally:
        if cluster is not None:
            cluster.shutdown()
    return runs


if __name__ == "__main__":
    main()
