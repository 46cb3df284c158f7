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
    add_precision_flags(group, "--workers N: measured in this process, with one worker's share of the batch "
                               "and one thread")


PRECISION_HELP = ("auto: bf16 where the device has native bf16 matrix units (Intel AMX or AVX512-BF16, a CUDA "
                  "GPU that supports it) and a few steps of this run's own shapes, measured at the start, run at "
                  "least 1.1x faster; fp32 otherwise. fp32: always fp32. bf16: bfloat16 autocast (matmuls in bf16; "
                  "weights, optimizer state and reductions in fp32) on CPU or CUDA")


def add_precision_flags(group, note: str = "") -> None:
    """--precision auto|fp32|bf16, and --bf16, its old spelling (dest `precision`)."""
    group.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                       help=PRECISION_HELP + (f" ({note})" if note else ""))
    add_bf16_alias(group, "precision")


def add_bf16_alias(group, dest: str) -> None:
    """--bf16: deprecated, the same as --precision bf16."""
    group.add_argument("--bf16", dest=dest, action="store_const", const="bf16",
                       help="deprecated: the same as --precision bf16")


def train_config_from(args: argparse.Namespace, **extra):
    from peterrec.training import TrainConfig

    return TrainConfig(epochs=args.epochs, max_steps=args.max_steps, batch_size=args.batch_size, lr=args.lr,
                       weight_decay=args.weight_decay, seed=args.seed, precision=args.precision, **extra)


def int_at_least(minimum: int, note: str = ""):
    """An argparse `type` for an integer >= minimum; its errors say what was wrong (and `note`, why)."""
    suffix = f" ({note})" if note else ""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is not >= {minimum}{suffix}")
        return value

    return parse


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
