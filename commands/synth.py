"""`peterrec synth`: a synthetic world (source sequences + N tasks) for tests, demos and benchmarks."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from commands._common import int_at_least

HELP = "generate a synthetic data set: item sequences and N downstream tasks driven by latent user traits"
DESCRIPTION = (
    "Generate DIR/source/*, DIR/tasks/* and DIR/tasks.toml. Users have latent traits that drive both their "
    "item sequences and the labels of every task (binary and multi-class classification with label noise, "
    "about one task in four a cold-start recommendation task), so pretraining on the sequences helps the "
    "tasks. Deterministic for a seed."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="data directory to write")
    parser.add_argument("--tasks", type=int_at_least(0), default=8, help="number of downstream tasks")
    parser.add_argument("--users", type=int_at_least(1), default=2000, help="number of users")
    parser.add_argument("--items", type=int_at_least(1), default=500, help="number of source items (vocab_size = items + 1)")
    parser.add_argument("--seed", type=int, default=0, help="random seed: same seed, same files (default: %(default)s)")
    parser.add_argument("--max-len", type=int_at_least(1), default=50, help="longest sequence (lengths are drawn from 20..max-len)")
    parser.add_argument("--paper-regime", action="store_true",
                        help="every user labelled in every task and small cold-start target tables: the regime "
                             "where full fine-tuning is the expected upper bound (reproduce --data)")
    parser.add_argument("--force", action="store_true", help="replace DIR if it exists and is not empty")


def run(args: argparse.Namespace) -> int:
    from tasks import DataError, print_summary
    from tasks.synth import synthesize

    started = time.perf_counter()
    try:
        spec = synthesize(
            args.out, tasks=args.tasks, users=args.users, items=args.items, seed=args.seed,
            max_len=args.max_len, force=args.force, paper_regime=args.paper_regime,
        )
    except (DataError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print_summary(spec, notes=[f"generated in {time.perf_counter() - started:.1f} s"])
    return 0
