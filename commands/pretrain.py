"""`peterrec pretrain`: pretrain a backbone on users' item sequences and save a checkpoint."""

from __future__ import annotations

import argparse

from commands._common import int_at_least

HELP = "pretrain a causal (next item) or non-causal (cloze) backbone on item sequences"
DESCRIPTION = """Pretrain one backbone on the source domain's item sequences and save it as a checkpoint
directory (model.safetensors + config.json). A causal backbone (NextItNet) learns next-item prediction;
a non-causal one (GRec encoder) learns to fill in masked items. Examples:

  python cli.py pretrain --data data/demo --out runs/demo/backbone --epochs 3
  python cli.py pretrain --data data/demo --out runs/demo/backbone --epochs 3 --workers 2

With --workers N > 1 the run is data-parallel on Ray Train (DDP; each worker trains on its shard of the
users, --batch-size is split across them) and checkpoints every epoch into --storage (default OUT.ray);
an interrupted run continues from its latest checkpoint: the same command plus --resume."""


def add_arguments(parser):
    from commands._common import add_train_flags
    from peterrec.config import DEFAULT_ITEM_INIT, ITEM_INITS

    parser.add_argument("--data", required=True,
                        help="a data directory (with tasks.toml), a task spec .toml, or a sequences .parquet")
    parser.add_argument("--out", required=True, help="checkpoint directory to write")
    parser.add_argument("--force", action="store_true",
                        help="replace --out if it exists (and, with --workers > 1, an earlier run in --storage)")
    arch = parser.add_argument_group("backbone")
    arch.add_argument("--arch", choices=["causal", "noncausal"], default="causal",
                      help="causal: NextItNet, next-item objective; noncausal: GRec encoder, cloze objective")
    arch.add_argument("--channels", type=int, default=64, help="embedding / hidden width C")
    arch.add_argument("--dilations", type=_dilations, default="1,4,16,64",
                      help="comma-separated dilation per residual block (each block covers d and 2d); the "
                           "default sees 511 items back, a whole MovieLens history")
    arch.add_argument("--kernel", type=int, default=3, help="convolution kernel size")
    arch.add_argument("--max-len", type=int, default=200,
                      help="most recent items a task reads per user (and the pretraining window)")
    parser.add_argument("--latest-only", action="store_true",
                        help="pretrain on each user's latest --max-len items only, not on windows covering the "
                             "whole history (single-process runs; Ray Train runs always use the latest)")
    arch.add_argument("--item-init", choices=list(ITEM_INITS), default=DEFAULT_ITEM_INIT,
                      help="how the item embedding starts: "
                           + "; ".join(f"{name}: {what}" for name, what in ITEM_INITS.items()))
    arch.add_argument("--sampled-softmax", type=int_at_least(0, "0: the full softmax"), default=0, metavar="S",
                      help="train against S sampled negatives instead of the full softmax (large catalogues)")
    parser.add_argument("--valid-fraction", type=_fraction, default=0.05,
                        help="share of users held out for the validation loss (above 0, below 1)")
    parser.add_argument("--workers", type=int, default=1,
                        help="data-parallel workers on Ray Train (DDP); 1 runs in this process, without Ray")
    ray = parser.add_argument_group("Ray Train (--workers > 1)")
    ray.add_argument("--storage", default=None,
                     help="directory for the run's Ray Train checkpoints, reachable from every node "
                          "(default: OUT.ray beside --out)")
    ray.add_argument("--resume", action="store_true",
                     help="continue the run in --storage from its latest checkpoint (same settings; "
                          "--epochs and --max-steps may change)")
    ray.add_argument("--address", default=None,
                     help="join the Ray cluster at this address (default: start one on 127.0.0.1)")
    add_train_flags(parser, epochs=3, batch_size=64, lr=1e-3)


def _dilations(text: str) -> tuple[int, ...]:
    """--dilations: comma-separated positive integers."""
    values = []
    for token in str(text).split(","):
        if not token.strip():
            continue
        try:
            values.append(int(token))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{token.strip()!r} is not an integer (expected comma-separated "
                                             f"positive integers, e.g. 1,4,1,4)") from None
        if values[-1] < 1:
            raise argparse.ArgumentTypeError(f"{values[-1]} is not >= 1 (a dilation is a positive integer)")
    if not values:
        raise argparse.ArgumentTypeError("no dilations (expected comma-separated positive integers, e.g. 1,4,1,4)")
    return tuple(values)


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"{value:g} must lie strictly between 0 and 1 (the share of users held "
                                         f"out for the validation loss)")
    return value


def load_sequences(data: str):
    """(sequences, vocab_size) from a data dir, a spec or a sequences Parquet file."""
    from pathlib import Path

    from tasks import load_spec, read_sequences

    path = Path(data)
    if path.suffix == ".parquet":
        sequences = read_sequences(path)
        return sequences, sequences.vocab_size
    from orchestrator.settings import resolve_spec

    spec = load_spec(resolve_spec(path))
    return read_sequences(spec.sequences, spec.vocab_size), spec.vocab_size


def run(args) -> int:
    from commands._common import fail, user_errors

    if args.workers < 1:
        return fail(f"--workers must be >= 1 (got {args.workers})")
    ray_only = [flag for flag, value in (("--storage", args.storage), ("--resume", args.resume),
                                         ("--address", args.address)) if value]
    if args.workers == 1 and ray_only:
        return fail(f"{', '.join(ray_only)} only apply to a Ray Train run (--workers > 1)")
    with user_errors():
        check_paths(args)
        return pretrain_command(args)


def check_paths(args) -> None:
    """Before anything is read or written: --address can be joined, --out is no input (nor Ray Train's
    --storage, whose checkpoints replacing --out would take with it)."""
    from pathlib import Path

    from orchestrator.settings import resolve_spec
    from tasks import load_spec
    from tasks.paths import check_apart

    if args.address:
        from orchestrator.cluster import check_address

        check_address(args.address)
    data = Path(args.data)
    inputs = {"--data": data} if data.suffix == ".parquet" else load_spec(resolve_spec(data)).inputs("--data")
    if args.workers > 1:
        from orchestrator.pretrain.ray_train import default_storage

        inputs["--storage"] = args.storage or default_storage(args.out)
    check_apart(args.out, "--out", inputs)


def pretrain_command(args) -> int:
    from dataclasses import replace
    from pathlib import Path

    import torch
    from rich.console import Console
    from rich.table import Table

    from commands._common import train_config_from
    from tui.console import TrainingBar, training_progress
    from peterrec.checkpoint import save_checkpoint
    from peterrec.config import BackboneConfig
    from peterrec.efficiency import count_parameters
    from peterrec.pretrain import pretrain
    from peterrec.training import pick_device

    console = Console()
    sequences, vocab_size = load_sequences(args.data)
    dilations = args.dilations
    config = BackboneConfig(vocab_size=vocab_size, channels=args.channels, kernel_size=args.kernel,
                            dilations=dilations, causal=args.arch == "causal", max_len=args.max_len)
    train_config = train_config_from(args)
    device = pick_device(args.device)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.force:
        raise FileExistsError(f"{out} already exists and is not empty (pass --force to replace it)")
    where = f"device {device}" if args.workers == 1 else f"{args.workers} Ray Train workers ({device.type})"
    console.print(f"pretraining a {config.arch} backbone on {len(sequences):,} users, {vocab_size - 1:,} items, "
                  f"{where}")
    choice = resolve_precision(args, sequences, config, train_config, device)
    train_config = replace(train_config, precision=choice.precision)
    console.print(f"precision: {choice.precision} ({choice.reason})", highlight=False, soft_wrap=True)
    extra_info, extra_rows = {}, []
    with training_progress(console) as progress:
        bar = TrainingBar(progress, "pretrain")
        if args.workers == 1:
            outcome = pretrain(sequences, config, train_config, args.sampled_softmax, device, args.valid_fraction,
                               on_progress=bar, windows=not args.latest_only, item_init=args.item_init)
        else:
            ray_run = pretrain_with_ray(args, sequences, config, train_config, device, bar)
            if ray_run is None:
                return 1
            outcome = ray_run.outcome
            extra_info = {"workers": args.workers, "resumed_from_step": ray_run.resumed_from_step,
                          "ray_storage": str(ray_run.storage)}
            extra_rows = [("workers", str(args.workers)), ("ray storage", str(ray_run.storage))]
            if ray_run.resumed_from_step:
                extra_rows.append(("resumed from step", f"{ray_run.resumed_from_step:,}"))
    info = outcome.info(train_config, args.sampled_softmax, users=len(sequences), precision_reason=choice.reason,
                        **extra_info)
    save_checkpoint(out, outcome.backbone, outcome.objective.output, info, force=args.force)
    table = Table(title="pretraining summary", show_header=False)
    for key, value in [("checkpoint", str(out)), ("architecture", config.arch),
                       ("item embedding start", args.item_init),
                       ("backbone parameters", f"{count_parameters(outcome.backbone):,}"),
                       ("steps", f"{outcome.result.steps:,}"), ("seconds", f"{outcome.result.seconds:.1f}"),
                       ("samples/s", f"{outcome.result.samples_per_s:,.0f}"),
                       ("validation loss", f"{outcome.valid_loss_before:.4f} -> {outcome.valid_loss_after:.4f}"),
                       *extra_rows]:
        table.add_row(key, value)
    console.print(table)
    return 0


def resolve_precision(args, sequences, config, train_config, device):
    """--precision auto, once before training (peterrec.pretrain.measure_precision): in this process for a run
    here; for --workers N with one worker's share of the batch and one thread, as a Ray Train worker on a
    CPU of this machine holds. A PrecisionChoice."""
    from dataclasses import replace

    import torch

    from peterrec.pretrain import measure_precision

    if args.workers == 1:
        return measure_precision(sequences, config, train_config, args.sampled_softmax, device, train_config.precision)
    from orchestrator.pretrain.ray_train import rank_batch_size

    worker = replace(train_config, batch_size=rank_batch_size(train_config.batch_size, args.workers))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return measure_precision(sequences, config, worker, args.sampled_softmax, device, train_config.precision)
    finally:
        torch.set_num_threads(threads)


def pretrain_with_ray(args, sequences, config, train_config, device, bar):
    """The Ray Train run of --workers N; None (after printing why) when it failed."""
    import sys

    from orchestrator.pretrain.ray_train import PretrainFailed, RayOptions, default_storage, pretrain_on_ray

    options = RayOptions(workers=args.workers, storage=args.storage or default_storage(args.out),
                         resume=args.resume, force=args.force, address=args.address,
                         use_gpu=device.type == "cuda")
    try:
        return pretrain_on_ray(sequences, config, train_config, options, args.sampled_softmax,
                               args.valid_fraction, on_progress=bar, item_init=args.item_init)
    except (PretrainFailed, ConnectionError) as e:
        print(f"error: {e}", file=sys.stderr)
        return None
