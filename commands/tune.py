"""`peterrec tune`: Ray Tune hyper-parameter searches for every task of a spec, ready for `finetune`."""

from __future__ import annotations

HELP = "search per-task hyper-parameters with Ray Tune; writes a tuned task spec for `finetune`"
DESCRIPTION = """Search each task's fine-tuning hyper-parameters with Ray Tune over one frozen backbone, then write
OUT/trials.parquet (every trial), OUT/best.json (per task: the best config and its validation score) and
OUT/tasks.toml: the input spec with each task's best overrides, which `finetune` takes as it is (its header
comment is the command). Trials are ranked by the task's own validation metric (accuracy, mrr@5, ...); the
test metric is recorded, never used. Sample 0 of each task is its baseline (the settings `finetune` would
use), so the tuned spec is never worse than the defaults on validation. With --scheduler asha (default)
each task has its own ASHA: poor trials stop at early evaluations, and trials of different tasks are never
compared. The space is the defaults of --mode (lr, weight decay, batch size; patch bottleneck, insertion and
LayerNorm2 for peterrec / peterzero; trained blocks for finelast) or a --space TOML file (docs/TUNE.md).
The training flags bound every trial and become the flags of the tuned spec's command. Example:

  python cli.py tune --backbone runs/demo/backbone --tasks data/demo --samples 8 --max-steps 300 --out runs/demo/tune
  python cli.py finetune --backbone runs/demo/backbone --tasks runs/demo/tune/tasks.toml --max-steps 300 \\
      --out runs/demo/tune/job"""

# finetune flags that say where, not how: left out of the tuned spec's command
_NOT_SETTINGS = {"backbone", "tasks", "out", "only", "resume", "force", "address", "cpus_per_task", "gpus_per_task",
                 "max_concurrent", "retries", "num_cpus", "object_store_mb", "ui", "in_process", "device"}


def add_arguments(parser):
    from commands._common import add_cluster_flags, add_train_flags
    from commands.finetune import add_patch_flags
    from orchestrator.tune import SCHEDULERS
    from peterrec.config import MODES

    parser.add_argument("--backbone", required=True, help="pretrained checkpoint directory (from `pretrain`)")
    parser.add_argument("--tasks", required=True, help="task spec .toml, or a data directory holding tasks.toml")
    parser.add_argument("--out", required=True,
                        help="search directory: trials.parquet, best.json, tasks.toml, and Tune's state in ray/")
    parser.add_argument("--mode", choices=MODES, default="peterrec", help="what is trained per task")
    search = parser.add_argument_group("search")
    search.add_argument("--samples", type=int, default=8, help="trials per task, its baseline (sample 0) included")
    search.add_argument("--space", default=None, metavar="FILE",
                        help="search space TOML (default: the space of --mode, see docs/TUNE.md)")
    search.add_argument("--scheduler", choices=SCHEDULERS, default="asha",
                        help="asha: one ASHA per task stops poor trials early; fifo: every trial runs its "
                             "budget; pbt: not supported yet (explains why)")
    search.add_argument("--evals", type=int, default=8,
                        help="validation evaluations per trial: ASHA's rungs (grace period: a quarter of them)")
    search.add_argument("--only", action="append", default=None, metavar="TASK",
                        help="search only these tasks (repeat the flag or give a comma-separated list)")
    search.add_argument("--resume", action="store_true",
                        help="continue the interrupted search in OUT: finished trials are kept, the rest run")
    search.add_argument("--force", action="store_true", help="start over in an existing OUT")
    add_cluster_flags(parser, "trial")
    add_patch_flags(parser)
    add_train_flags(parser, epochs=5, batch_size=64, lr=1e-3)


def run(args) -> int:
    import sys

    from rich.console import Console

    from commands._common import check_ray_device, resolve_spec, user_errors
    from commands.finetune import settings_from
    from orchestrator.tune import SearchOptions, TuneSearch, plan_search
    from orchestrator.tune_display import make_search_display

    with user_errors():
        check_ray_device(args, "trial")
        options = SearchOptions(samples=args.samples, scheduler=args.scheduler, evals=args.evals,
                                address=args.address, cpus_per_trial=args.cpus_per_trial,
                                gpus_per_trial=args.gpus_per_trial, max_concurrent=args.max_concurrent,
                                retries=args.retries, num_cpus=args.num_cpus, object_store_mb=args.object_store_mb)
        plan = plan_search(resolve_spec(args.tasks), args.backbone, args.out, settings_from(args), options,
                           args.space, args.only, resume=args.resume, force=args.force)
        try:
            console = Console()
            where = f"the Ray cluster at {args.address}" if args.address else "an embedded Ray cluster (loopback)"
            console.print(f"{'resuming' if args.resume else 'searching'} {len(plan.tasks)} tasks x {args.samples} "
                          f"samples in mode {args.mode} with {args.scheduler} on {where}; "
                          f"{args.cpus_per_trial:g} CPU + {args.gpus_per_trial:g} GPU per trial")
            for dim in plan.space.values():
                console.print(f"  {dim.describe()}", highlight=False)
            search = TuneSearch(plan, options, finetune_command(args))
            ui = args.ui or ("rich" if sys.stdout.isatty() else "plain")
            try:
                with make_search_display(ui, console) as display:
                    outcome = search.run(on_update=display.update)
            except ConnectionError as e:  # --address that cannot be joined
                raise ValueError(str(e)) from None
        finally:
            plan.release()
    print_best(console, outcome)
    if outcome.interrupted:
        ended = sum(r["status"] != "unfinished" for r in outcome.rows)
        console.print(f"[yellow]search interrupted: {ended} of {outcome.total} trials ended; continue it with the "
                      f"same command and --resume[/yellow]  (trials so far: {outcome.paths['trials']})")
        return 130
    console.print(f"trials: {outcome.paths['trials']}   best: {outcome.paths['best']}   "
                  f"tuned spec: {outcome.paths['spec']}")
    console.print(f"next: {finetune_command(args)}", highlight=False, soft_wrap=True)
    return 0 if outcome.complete else 1


def finetune_command(args) -> str:
    """The `finetune` command that runs the tuned spec with this search's settings: every finetune flag whose
    value here differs from finetune's default (the per-task searched values are in the spec itself)."""
    import argparse
    import shlex
    from pathlib import Path

    from commands import finetune

    parser = argparse.ArgumentParser(add_help=False)
    finetune.add_arguments(parser)
    out = Path(args.out)
    words = ["python", "cli.py", "finetune", "--backbone", args.backbone, "--tasks", str(out / "tasks.toml"),
             "--out", str(out / "job")]
    for action in parser._actions:
        if not action.option_strings or action.dest in _NOT_SETTINGS or not hasattr(args, action.dest):
            continue
        value = getattr(args, action.dest)
        if value != action.default:
            flag = action.option_strings[0]
            words += [flag] if action.nargs == 0 else [flag, str(value)]
    return " ".join(shlex.quote(w) for w in words)


def print_best(console, outcome) -> None:
    from rich.table import Table

    table = Table(title="best per task (validation metric)")
    for column in ("task", "metric", "best", "baseline", "test", "sample", "done/stopped/failed"):
        table.add_column(column, justify="left" if column in ("task", "metric") else "right")
    fmt = lambda v: "" if v is None else f"{v:.4f}"  # noqa: E731
    configs = []
    for name, best in outcome.best.items():
        if best.get("score") is None:
            table.add_row(name, best["metric"], "[red]none", "", "", "", "")
            configs.append(f"{name}: {best.get('error', '')}")
            continue
        counts = best["trials"]
        table.add_row(name, best["metric"], fmt(best["score"]), fmt(best["baseline_score"]), fmt(best["test_value"]),
                      str(best["sample"]), f"{counts['done']}/{counts['stopped']}/{counts['failed']}")
        configs.append(f"{name}: " + " ".join(f"{k}={v}" for k, v in sorted(best["config"].items())))
    console.print(table)
    for line in configs:
        console.print(line, highlight=False, soft_wrap=True)
