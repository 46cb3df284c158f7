"""What several sub-commands share: pretraining's training flags, and how a user error ends a command."""

from __future__ import annotations

import argparse
import sys
from contextlib import contextmanager


def add_train_flags(parser: argparse.ArgumentParser, *, epochs: int, batch_size: int, lr: float) -> None:
    """--epochs, --max-steps, --batch-size, --lr, --seed, --device: any run can be bounded and repeated."""
    group = parser.add_argument_group("training")
    group.add_argument("--epochs", type=int, default=epochs, help="passes over the training data")
    group.add_argument("--max-steps", type=int, default=None,
                       help="stop after this many optimiser steps (per task), whatever --epochs says")
    group.add_argument("--batch-size", type=int, default=batch_size, help="examples per step")
    group.add_argument("--lr", type=float, default=lr, help="AdamW learning rate")
    group.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay")
    group.add_argument("--seed", type=int, default=0, help="seed for initialisation, shuffling and sampling")
    group.add_argument("--device", default=None,
                       help="torch device (cpu, cuda, cuda:1); default: CUDA when present, else CPU")
    group.add_argument("--bf16", action="store_true", help="bfloat16 autocast (CUDA only)")


def train_config_from(args: argparse.Namespace, **extra):
    from peterrec.training import TrainConfig

    return TrainConfig(epochs=args.epochs, max_steps=args.max_steps, batch_size=args.batch_size, lr=args.lr,
                       weight_decay=args.weight_decay, seed=args.seed, bf16=args.bf16, **extra)


def fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def user_error_types() -> tuple[type, ...]:
    """The errors a user can fix: bad data, checkpoint, bundle, settings or paths."""
    from peterrec.bundle import BundleError
    from peterrec.checkpoint import CheckpointError
    from tasks import DataError

    return DataError, CheckpointError, BundleError, FileExistsError, FileNotFoundError, ValueError


def user_error_text(error: BaseException) -> str:
    """What `error: ...` says: an OSError names its file and what the system said (no errno tuple)."""
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        return f"{error.filename}: {error.strerror}"
    return str(error)


@contextmanager
def user_errors():
    """Turn the errors a user can fix (bad data, checkpoint, bundle, settings or paths) into `error: ...` +
    exit 2; so is an OSError about a file the command was pointed at (permissions, a full disk)."""
    try:
        yield
    except user_error_types() as e:
        raise SystemExit(fail(user_error_text(e))) from None
    except OSError as e:
        if e.filename is None:
            raise
        raise SystemExit(fail(user_error_text(e))) from None
