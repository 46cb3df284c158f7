"""`peterrec reproduce`: the paper's comparison (Table 3) on MovieLens, as one command."""

from __future__ import annotations

import argparse

HELP = "the paper's comparison on MovieLens: every baseline x task x seed, one orchestrated job per backbone"
DESCRIPTION = """Reproduce the paper's Table 3 on real data. Imports a MovieLens 100K or 1M folder, pretrains a
non-causal (cloze) and a causal (next item) backbone side by side, then fine-tunes the grid
{FineCLS, FineLast, FineAll, PeterRec serial, PeterRec parallel, PeterZero} x {coldrec, gender, age} x seeds
as one orchestrated job per backbone on one Ray session. Writes OUT/results.parquet (one row per cell,
with arch, task, method, seed, test and validation metric), OUT/results.md (Table 3 per architecture:
mean ± std over seeds and the trained parameters as % of FineAll) and OUT/tradeoff.png (metric against
trained parameters). Fine-tuning settings are one set per method (reproduce/grid.py,
REPRODUCE_LR), chosen on the validation split with --select-lr. Examples:

  python cli.py reproduce --movielens ../shared/data/ml-100k --out runs/ml100k
  python cli.py reproduce --movielens ../shared/data/ml-100k --out runs/ml100k-quick --quick
  python cli.py reproduce --movielens ../shared/data/ml-100k --out runs/ml100k-lr --select-lr 3e-4,1e-3,3e-3,1e-2"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--movielens", required=True, metavar="DIR",
                        help="a MovieLens 100K (u.data, u.user, u.item) or 1M (ratings.dat, users.dat) folder")
    parser.add_argument("--out", required=True, metavar="OUT", help="directory for data, backbones, jobs and results")
    parser.add_argument("--seeds", type=int, default=None,
                        help="fine-tuning seeds per grid cell (default: 3; 1 with --quick or --select-lr)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke variant: tiny backbone, a few steps per cell, one seed (about a minute)")
    parser.add_argument("--select-lr", default=None, metavar="LR,LR,...",
                        help="instead of the table: run every method at each of these learning rates (one seed) "
                             "and report the validation metric only, with the learning rate it selects")
    parser.add_argument("--resume", action="store_true",
                        help="continue a run in OUT with the same flags: keeps its data, backbones and finished cells")
    parser.add_argument("--force", action="store_true", help="replace an earlier reproduction in OUT")
    grid = parser.add_argument_group("grid and settings (defaults: the documented ones; docs/RESULTS.md)")
    grid.add_argument("--methods", default=None, help="comma-separated subset of finecls, finelast, fineall, "
                                                      "peterrec_serial, peterrec_parallel, peterzero")
    grid.add_argument("--tasks", default=None, help="comma-separated subset of coldrec, gender, age")
    grid.add_argument("--archs", default=None, help="comma-separated subset of noncausal, causal")
    grid.add_argument("--pretrain-epochs", type=int, default=None, help="pretraining epochs (a cap: the best "
                                                                        "validation-loss epoch is kept)")
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

    changes = {"seeds": args.seeds if args.seeds is not None else (1 if args.quick or args.select_lr else 3)}
    for key in ("methods", "tasks", "archs"):
        names = _names(getattr(args, key))
        if names is not None:
            changes[key] = names
    if args.pretrain_epochs is not None:
        changes["pretrain_epochs"] = args.pretrain_epochs
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
    parts = ["python cli.py reproduce", "--movielens", str(args.movielens), "--out", str(args.out)]
    if args.quick:
        parts.append("--quick")
    for flag in ("seeds", "select_lr", "methods", "tasks", "archs", "pretrain_epochs", "num_cpus"):
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
    config = config_from(args)
    lrs = parse_lrs(args.select_lr) if args.select_lr else None
    options = JobOptions(address=args.address, num_cpus=args.num_cpus, cpus_per_task=1.0)
    console = Console(highlight=False)
    ui = args.ui or ("rich" if sys.stdout.isatty() else "plain")
    outcome = reproduce(args.movielens, args.out, config, options, command=command_line(args), resume=args.resume,
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
