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
compared; --scheduler pbt (or pb2) trains a population per task that copies its better members' checkpoints
and perturbs their lr and weight decay. --search optuna suggests each task's trials with its own TPE study
instead of drawing them at random. Trials checkpoint at every evaluation: --resume continues an interrupted
trial where it stopped, and --export writes OUT/bundle from each task's best checkpoint. The space is the defaults of --mode (lr, weight decay, batch size; patch bottleneck, insertion and
LayerNorm2 for patched modes; trained blocks for finelast) or a --space TOML file (docs/TUNE.md).
The training flags bound every trial and become the flags of the tuned spec's command. Example:

  python cli.py tune --backbone runs/demo/backbone --tasks runs/demo/data --samples 8 --max-steps 300 \\
      --out runs/demo/tune
  python cli.py finetune --backbone runs/demo/backbone --tasks runs/demo/tune/tasks.toml --max-steps 300 \\
      --out runs/demo/tune/job"""


def add_arguments(parser):
    from commands._common import add_bf16_alias
    from commands._flags import add_settings_flags
    from orchestrator.settings import SearchSettings

    groups = add_settings_flags(parser, SearchSettings, unit="trial")
    add_bf16_alias(groups["training"], "training.precision")
    groups["cluster"].add_argument("--ui", choices=["rich", "plain"], default=None,
                                   help="rich: live bar and table; plain: one line per finished trial (default: "
                                        "rich on a terminal, else plain)")


def run(args) -> int:
    import shlex
    import sys

    from rich.console import Console

    from commands._common import user_errors
    from commands._flags import settings_from_args
    from orchestrator.settings import SearchSettings
    from orchestrator.tune import TuneSearch, plan_for
    from tui.console import make_search_display, precision_line, search_summary

    settings = settings_from_args(SearchSettings, args)
    command = " ".join(shlex.quote(w) for w in settings.finetune_command())
    with user_errors():
        plan = plan_for(settings)
        try:
            console = Console()
            c = settings.cluster
            where = f"the Ray cluster at {c.address}" if c.address else "an embedded Ray cluster (loopback)"
            header = [f"{'resuming' if settings.resume else 'searching'} {len(plan.tasks)} tasks x "
                      f"{settings.samples} samples in mode {settings.training.mode} with {settings.search} search "
                      f"and {settings.scheduler} on {where}; {c.cpus:g} CPU + {c.gpus:g} GPU per trial"]

            def announce() -> None:  # once the cluster is joined (or started)
                if header:
                    console.print(header.pop())
                    if plan.precision:  # resolved (--precision auto) before the first trial
                        console.print(precision_line(plan.precision["precision"], plan.precision["reason"]),
                                      highlight=False, soft_wrap=True)
                    for dim in plan.space.values():
                        console.print(f"  {dim.describe()}", highlight=False)

            search = TuneSearch(plan, settings.options(), command)
            ui = args.ui or ("rich" if sys.stdout.isatty() else "plain")
            with make_search_display(ui, console) as display:
                outcome = search.run(on_update=lambda monitor: (announce(), display.update(monitor)))
            announce()
        finally:
            plan.release()
    table, configs = search_summary(outcome.best)
    console.print(table)
    for line in configs:
        console.print(line, highlight=False, soft_wrap=True)
    if outcome.interrupted:
        ended = sum(r["status"] != "unfinished" for r in outcome.rows)
        console.print(f"[yellow]search interrupted: {ended} of {outcome.total} trials ended; continue it with the "
                      f"same command and --resume[/yellow]  (trials so far: {outcome.paths['trials']})")
        return 130
    console.print(f"trials: {outcome.paths['trials']}   best: {outcome.paths['best']}   "
                  f"tuned spec: {outcome.paths['spec']}")
    if "bundle" in outcome.paths:
        console.print(f"bundle of the best checkpoints: {outcome.paths['bundle']}")
    elif settings.export:
        console.print("[yellow]--export: no bundle written, a task has no trial that ran its whole budget[/yellow]")
    console.print(f"next: {command}", highlight=False, soft_wrap=True)
    return 0 if outcome.complete else 1
