"""Flags and displays shared by the training sub-commands (pretrain, finetune, tune, reproduce)."""

from __future__ import annotations

import argparse
import sys
from contextlib import contextmanager
from pathlib import Path


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


def add_cluster_flags(parser: argparse.ArgumentParser, unit: str, ui_choices=("rich", "plain")):
    """Where the work runs and how much of the cluster each `unit` (task, trial) holds; returns the group."""
    group = parser.add_argument_group("cluster")
    group.add_argument("--address", default=None,
                       help="join this Ray cluster (e.g. HEAD_IP:6379 of `ray start --head`) instead of starting one")
    group.add_argument(f"--cpus-per-{unit}", type=float, default=1.0,
                       help=f"CPUs each {unit} holds; its torch thread count follows")
    group.add_argument(f"--gpus-per-{unit}", type=float, default=0.0,
                       help=f"GPUs each {unit} holds; fractions (e.g. 0.25) share a GPU between {unit}s")
    group.add_argument("--max-concurrent", type=int, default=0,
                       help=f"most {unit}s in flight at once; 0: as many as the cluster's resources allow")
    group.add_argument("--retries", type=int, default=2,
                       help=f"extra attempts of a failed {unit} (an error, or a lost worker or node)")
    group.add_argument("--num-cpus", type=int, default=None,
                       help="CPUs of the embedded cluster (default: every core of this machine)")
    group.add_argument("--object-store-mb", type=int, default=None,
                       help="object store size of the embedded cluster (default: Ray's, 30%% of memory)")
    tui = " tui: the full-screen terminal UI (rich without a terminal);" if "tui" in ui_choices else ""
    group.add_argument("--ui", choices=list(ui_choices), default=None,
                       help=f"rich: live bar and table; plain: one line per finished {unit};{tui} "
                            "(default: rich on a terminal, else plain)")
    return group


def check_ray_device(args, unit: str) -> None:
    """On Ray the device follows the resources each task or trial holds: --device may only agree with them."""
    gpus = getattr(args, f"gpus_per_{unit}")
    if args.device not in (None, "cpu", "cuda"):
        raise ValueError(f"--device {args.device}: on Ray a {unit}'s device follows its resources; use "
                         f"--gpus-per-{unit} to run on GPUs")
    if args.device == "cuda" and not gpus:
        raise ValueError(f"--device cuda on Ray needs --gpus-per-{unit} (e.g. 1, or 0.25 to share a GPU)")


def train_config_from(args: argparse.Namespace, **extra):
    from peterrec.training import TrainConfig

    return TrainConfig(epochs=args.epochs, max_steps=args.max_steps, batch_size=args.batch_size, lr=args.lr,
                       weight_decay=args.weight_decay, seed=args.seed, bf16=args.bf16, **extra)


def resolve_spec(path: str | Path) -> Path:
    """A task spec path from a spec file or a data directory holding tasks.toml."""
    path = Path(path)
    if path.is_dir():
        path = path / "tasks.toml"
    return path


def fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


@contextmanager
def user_errors():
    """Turn the errors a user can fix (bad data, checkpoint, bundle or settings) into `error: ...` + exit 2."""
    from peterrec.bundle import BundleError
    from peterrec.checkpoint import CheckpointError
    from tasks import DataError

    try:
        yield
    except (DataError, CheckpointError, BundleError, FileExistsError, FileNotFoundError, ValueError) as e:
        raise SystemExit(fail(str(e))) from None


class TrainingBar:
    """A rich progress bar fed by training.Progress callbacks (one bar per run)."""

    def __init__(self, progress, description: str):
        self.progress = progress
        self.task = progress.add_task(description, total=None, loss="", metric="")

    def __call__(self, p) -> bool:
        metric = "" if p.metric is None else f"valid {p.metric:.4f}"
        self.progress.update(self.task, total=p.total_steps, completed=p.step, loss=f"loss {p.loss:.4f}",
                             metric=metric, rate=f"{p.samples_per_s:,.0f}/s")
        return False


def training_progress(console=None):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
        TimeRemainingColumn

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[loss]}"), TextColumn("{task.fields[metric]}"),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=console)
