"""`peterrec reproduce`: the paper's comparison (Table 3) on MovieLens, as one command."""

from __future__ import annotations

import argparse

HELP = "the paper's comparison on MovieLens: every method x task x fold x seed, with baselines and confidence intervals"
DESCRIPTION = """Reproduce the paper's Table 3 on real data, with user-level k-fold cross-validation. Imports a
MovieLens 100K or 1M folder, splits its users into --folds folds (every user is tested exactly once), pretrains a
non-causal (cloze) and a causal (next item) backbone side by side, then fine-tunes the grid
{FineCLS, FineLast, FineAll, PeterRec serial, PeterRec parallel, PeterZero} x {coldrec, gender, age} x folds x
seeds as one orchestrated job per backbone on one Ray session. Baselines on the same folds and candidates:
majority class, bag-of-items logistic regression (scikit-learn, weight decay chosen on validation), popularity
and item kNN. Writes OUT/results.parquet (one row per cell), OUT/per_row.parquet (every test row's metric),
OUT/results.md (per architecture: each method and baseline over all test users with a 95% bootstrap CI, and
paired differences marked where significant) and OUT/tradeoff.png (metric against trained parameters).
Fine-tuning settings are one set per method (reproduce/grid.py, REPRODUCE_LR), chosen on the validation
split with --select-lr. Examples:

  python cli.py reproduce --movielens ../shared/data/ml-100k --out runs/ml100k
  python cli.py reproduce --movielens ../shared/data/ml-100k --out runs/ml100k-quick --quick
  python cli.py reproduce --movielens ../shared/data/ml-100k --out runs/ml100k-lr --select-lr 3e-4,1e-3,3e-3,1e-2
  python cli.py synth --out runs/paper-data --paper-regime --users 6000 --items 3000 --tasks 4
  python cli.py reproduce --data runs/paper-data --out runs/paper --archs causal"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from peterrec.config import DEFAULT_ITEM_INIT, ITEM_INITS

    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--movielens", metavar="DIR",
                        help="a MovieLens 100K (u.data, u.user, u.item) or 1M (ratings.dat, users.dat) folder")
    source.add_argument("--data", metavar="DIR",
                        help="instead: a data directory with tasks.toml, e.g. from `synth --paper-regime`; its tasks "
                             "(or --tasks) are the grid's columns")
    parser.add_argument("--out", required=True, metavar="OUT", help="directory for data, backbones, jobs and results")
    parser.add_argument("--seeds", type=int, default=None,
                        help="fine-tuning seeds per grid cell and fold (default: 1); a test row's metric is "
                             "averaged over them")
    parser.add_argument("--folds", type=int, default=None,
                        help="user-level K-fold cross-validation: every labelled user is tested once (default: 5; "
                             "2 with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke variant: tiny backbone, a few steps per cell, one seed, 2 folds (a minute or two)")
    parser.add_argument("--select-lr", default=None, metavar="LR,LR,...",
                        help="instead of the table: run every method at each of these learning rates (one seed) "
                             "and report the validation metric only, with the learning rate it selects")
    parser.add_argument("--resume", action="store_true",
                        help="continue a run in OUT with the same flags: keeps its data, backbones and finished cells")
    parser.add_argument("--force", action="store_true", help="replace an earlier reproduction in OUT")
    grid = parser.add_argument_group("grid and settings (defaults: the documented ones; docs/RESULTS.md)")
    grid.add_argument("--methods", default=None, help="comma-separated subset of finecls, finelast, fineall, "
                                                      "peterrec_serial, peterrec_parallel, peterzero (the default "
                                                      "grid), and peterrec_emb (PeterRec + a rank-4 embedding "
                                                      "patch, not the paper's)")
    grid.add_argument("--tasks", default=None, help="comma-separated subset of coldrec, gender, age (--movielens) or "
                                                    "of the data directory's tasks (--data; default: all of them)")
    grid.add_argument("--archs", default=None, help="comma-separated subset of noncausal, causal")
    grid.add_argument("--pretrain-epochs", type=int, default=None, help="pretraining epochs (a cap: the best "
                                                                        "validation-loss epoch is kept)")
    grid.add_argument("--item-init", choices=list(ITEM_INITS), default=None,
                      help=f"how the backbones' item embedding starts (as pretrain's --item-init; default "
                           f"{DEFAULT_ITEM_INIT})")
    cluster = parser.add_argument_group("cluster")
    cluster.add_argument("--num-cpus", type=int, default=None,
                         help="CPUs of the embedded Ray cluster (default: every core); one per task")
    cluster.add_argument("--address", default=None, help="join this Ray cluster instead of starting one")
    cluster.add_argument("--ui", choices=["rich", "plain"], default=None,
                         help="fine-tuning display (default: rich on a terminal, else plain)")


def _names(text: str | None) -> tuple[str, ...] | None:
    return None if text is None else tuple(n.strip() for n in text.split(",") if n.strip())


def config_from(args):
    from reproduce.grid import ReproduceConfig

    changes = {"seeds": args.seeds} if args.seeds is not None else {}
    if args.data and not args.tasks:
        from pathlib import Path

        from tasks import load_spec

        changes["tasks"] = tuple(t.name for t in load_spec(Path(args.data) / "tasks.toml").tasks)
    if args.folds is not None:
        changes["folds"] = args.folds
    for key in ("methods", "tasks", "archs"):
        names = _names(getattr(args, key))
        if names is not None:
            changes[key] = names
    if args.pretrain_epochs is not None:
        changes["pretrain_epochs"] = args.pretrain_epochs
    if args.item_init is not None:
        changes["item_init"] = args.item_init
    return ReproduceConfig.quick(**changes) if args.quick else ReproduceConfig(**changes)


def parse_lrs(text: str) -> list[float]:
    try:
        lrs = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--select-lr {text!r}: expected comma-separated numbers, e.g. 3e-4,1e-3,3e-3") from None
    if not lrs or any(lr <= 0 for lr in lrs):
        raise ValueError(f"--select-lr {text!r}: expected positive learning rates")
    return sorted(set(lrs))


def command_line(args) -> str:
    """The command as a user would type it again (for the spec headers and results.md)."""
    source = ["--movielens", str(args.movielens)] if args.movielens else ["--data", str(args.data)]
    parts = ["python cli.py reproduce", *source, "--out", str(args.out)]
    if args.quick:
        parts.append("--quick")
    for flag in ("seeds", "folds", "select_lr", "methods", "tasks", "archs", "pretrain_epochs", "item_init",
                 "num_cpus"):
        value = getattr(args, flag)
        if value is not None:
            parts += [f"--{flag.replace('_', '-')}", str(value)]
    return " ".join(parts)


def run(args) -> int:
    from commands._common import user_errors

    with user_errors():
        return reproduce_command(args)


def reproduce_command(args) -> int:
    import platform
    import sys
    from functools import partial

    from rich.console import Console

    from tui.console import make_display
    from orchestrator.settings import JobOptions
    from reproduce.pipeline import reproduce

    if args.seeds is not None and args.seeds < 1:
        raise ValueError(f"--seeds must be >= 1 (got {args.seeds})")
    if args.folds is not None and args.folds < 2:
        raise ValueError(f"--folds must be >= 2 (got {args.folds})")
    config = config_from(args)
    lrs = parse_lrs(args.select_lr) if args.select_lr else None
    options = JobOptions(address=args.address, num_cpus=args.num_cpus, cpus_per_task=1.0)
    console = Console(highlight=False)
    ui = args.ui or ("rich" if sys.stdout.isatty() else "plain")
    kind = "movielens" if args.movielens else "data"
    outcome = reproduce(args.movielens or args.data, args.out, config, options, command=command_line(args), kind=kind,
                        resume=args.resume,
                        force=args.force, select_lrs=lrs, display=partial(make_display, ui, console=console),
                        log=console.print)
    console.print(outcome.files["table"].read_text(), soft_wrap=True, markup=False)
    where = ", ".join(f"{k}: {v}" for k, v in outcome.files.items())
    resumed = " (resumed: only what was unfinished ran)" if args.resume else ""
    console.print(f"{len(outcome.rows)} cells in {outcome.seconds:.0f} s on {platform.node()}{resumed} "
                  f"({outcome.timings.get('pretrain', 0):.0f} s pretraining). {where}")
    if outcome.failed:
        console.print(f"[red]{len(outcome.failed)} cell(s) failed: {', '.join(outcome.failed[:5])}")
        return 1
    return 0
