"""`peterrec import`: turn a public data set into a data directory (source sequences, tasks, spec)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "import a data set (peterrec-csv, movielens, data-dir) into a validated data directory"
DESCRIPTION = (
    "peterrec-csv: the paper's released format, one user per line 's1,...,sn,,t1,...' (a pretraining file has "
    "only the source part); a fine-tuning file becomes a cold-start task, or with --as-classify a "
    "classification task. movielens: a MovieLens 100K (u.data, u.user, u.item) or 1M (ratings.dat, users.dat, "
    "movies.dat) folder; becomes source sequences, gender/age/occupation tasks and a cold-start task over a "
    "held-out part of the catalogue. data-dir: a data directory in this project's own format (its tasks.toml), "
    "e.g. made by hand; validated and rewritten in canonical form, splits kept. Writes DIR/source/*, DIR/tasks/* and DIR/tasks.toml, all or nothing."
)
FORMATS = ("peterrec-csv", "movielens", "data-dir")
_CSV_ONLY = ("as_classify", "source_vocab", "task_name")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("format", choices=FORMATS, help="format of SRC")
    parser.add_argument("src", type=Path, metavar="SRC", help="a .csv file (peterrec-csv), a release folder (movielens), a tasks.toml or its folder (data-dir)")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="data directory to write")
    parser.add_argument("--force", action="store_true", help="replace DIR if it exists and is not empty")
    parser.add_argument("--seed", type=int, default=0, help="seed of the train/valid/test split and of the movielens catalogue split (default: %(default)s)")
    csv = parser.add_argument_group("peterrec-csv")
    csv.add_argument("--as-classify", action="store_true", help="make the targets of a fine-tuning file classes of a classification task, not cold-start items")
    csv.add_argument("--source-vocab", type=Path, metavar="DATA_DIR", help="map source items through this imported data directory's source/items.parquet (unknown items are errors)")
    csv.add_argument("--task-name", type=_task_name, help="name of the task (default: the file name)")
    movielens = parser.add_argument_group("movielens")
    movielens.add_argument("--target-share", type=float, default=0.3, help="share of the movie catalogue held out as the cold-start target platform")
    movielens.add_argument("--coldrec-max", type=int, default=3, help="most target-platform movies per user kept as coldrec rows (the latest ones)")


def _task_name(text: str) -> str:
    from tasks.spec import valid_task_name

    if not valid_task_name(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a valid task name (letters, digits, '_', '.', '-')")
    return text


def run(args: argparse.Namespace) -> int:
    from tasks import DataError, print_summary
    from tasks.importers import import_data_dir, import_movielens, import_peterrec_csv

    problem = _check(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    try:
        if args.format == "peterrec-csv":
            spec, notes = import_peterrec_csv(
                args.src, args.out, seed=args.seed, force=args.force, as_classify=args.as_classify,
                source_vocab=args.source_vocab, task_name=args.task_name,
            )
        elif args.format == "movielens":
            spec, notes = import_movielens(
                args.src, args.out, seed=args.seed, force=args.force,
                target_share=args.target_share, coldrec_max=args.coldrec_max,
            )
        else:
            spec, notes = import_data_dir(args.src, args.out, force=args.force)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print_summary(spec, notes=notes)
    return 0


def _check(args: argparse.Namespace) -> str | None:
    if args.format != "peterrec-csv":
        used = [f"--{name.replace('_', '-')}" for name in _CSV_ONLY if getattr(args, name)]
        if used:
            return f"{', '.join(used)} only apply to peterrec-csv"
    if not 0 < args.target_share < 1:
        return f"--target-share {args.target_share} must lie strictly between 0 and 1"
    if args.coldrec_max < 1:
        return f"--coldrec-max {args.coldrec_max} must be >= 1"
    return None
