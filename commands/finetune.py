"""`peterrec finetune`: fine-tune every task of a spec over one frozen pretrained backbone."""

from __future__ import annotations

HELP = "fine-tune patch sets (or a baseline mode) for every task of a task spec"
DESCRIPTION = """Fine-tune each task of a task spec over one pretrained backbone and write JOB_DIR/results.parquet
(one row per task). Modes: peterrec (patches + head), finecls (head only), finelast (last blocks + head),
fineall (everything), peterzero (patches over a random backbone). Example:

  python cli.py finetune --backbone runs/demo/backbone --tasks data/demo --mode peterrec --out runs/demo/job"""


def add_arguments(parser):
    from commands._common import add_train_flags
    from peterrec.modes import MODES

    parser.add_argument("--backbone", required=True, help="pretrained checkpoint directory (from `pretrain`)")
    parser.add_argument("--tasks", required=True, help="task spec .toml, or a data directory holding tasks.toml")
    parser.add_argument("--out", required=True, help="job directory: results.parquet and the bundle go here")
    parser.add_argument("--mode", choices=MODES, default="peterrec", help="what is trained per task")
    parser.add_argument("--only", action="append", default=None, metavar="TASK",
                        help="run only these tasks (repeat the flag or give a comma-separated list)")
    parser.add_argument("--resume", action="store_true",
                        help="keep finished tasks of an existing JOB_DIR and run only the others")
    parser.add_argument("--force", action="store_true", help="start over in an existing JOB_DIR")
    add_patch_flags(parser)
    add_train_flags(parser, epochs=5, batch_size=64, lr=1e-3)


def add_patch_flags(parser) -> None:
    group = parser.add_argument_group("patches and heads")
    group.add_argument("--insertion", choices=["serial", "parallel"], default="serial",
                       help="serial: patch each conv's output; parallel: patch beside each conv")
    group.add_argument("--bottleneck-ratio", type=int, default=4, help="patch width = channels / ratio")
    group.add_argument("--cardinality", type=int, default=1, help="parallel bottleneck branches per patch")
    group.add_argument("--no-layernorm2", action="store_true",
                       help="do not train each block's second LayerNorm (peterrec / peterzero)")
    group.add_argument("--finelast-blocks", type=int, default=1, help="blocks trained by --mode finelast")
    group.add_argument("--representation", choices=["auto", "last", "first_last", "mean"], default="auto",
                       help="user vector: auto = last position (causal) or first + last (non-causal)")
    group.add_argument("--eval-negatives", type=int, default=99,
                       help="sampled negatives for cold-start metrics; 0 = rank the whole target vocabulary")


def settings_from(args):
    from commands._common import train_config_from
    from peterrec.config import PatchConfig
    from peterrec.finetune import FinetuneSettings

    patch = PatchConfig(bottleneck_ratio=args.bottleneck_ratio, cardinality=args.cardinality,
                        insertion=args.insertion, train_layernorm2=not args.no_layernorm2)
    return FinetuneSettings(mode=args.mode, patch=patch, train=train_config_from(args),
                            finelast_blocks=args.finelast_blocks, representation=args.representation,
                            eval_negatives=args.eval_negatives)


def selected_tasks(job, only):
    if not only:
        return list(job.tasks)
    names = [n.strip() for item in only for n in item.split(",") if n.strip()]
    return [job.task(n) for n in names]


def run(args) -> int:
    from commands._common import user_errors

    with user_errors():
        return finetune_in_process(args)


def finetune_in_process(args) -> int:
    import time
    from pathlib import Path

    from rich.console import Console
    from rich.progress import Progress

    from commands._common import TrainingBar, resolve_spec, training_progress
    from orchestrator.results import done_row, failed_row, read_results, write_results
    from peterrec.checkpoint import load_backbone
    from peterrec.finetune import finetune_task
    from peterrec.training import pick_device
    from tasks import load_job

    console = Console()
    job_dir = Path(args.out)
    if job_dir.exists() and any(job_dir.iterdir()) and not (args.resume or args.force):
        raise FileExistsError(f"{job_dir} already exists and is not empty (pass --resume to continue it, "
                              f"--force to start over)")
    settings = settings_from(args)
    job, sequences, task_data = load_job(resolve_spec(args.tasks))  # validates everything up front
    tasks = selected_tasks(job, args.only)
    device = pick_device(args.device)
    backbone, _ = load_backbone(args.backbone, device)
    if job.vocab_size > backbone.config.vocab_size:
        raise ValueError(f"{job.path}: the tasks use {job.vocab_size} source items but the backbone "
                         f"{args.backbone} knows only {backbone.config.vocab_size}")
    rows = {r["task"]: r for r in read_results(job_dir)} if args.resume else {}
    todo = [t for t in tasks if rows.get(t.name, {}).get("status") != "done"]
    console.print(f"fine-tuning {len(todo)} of {len(tasks)} tasks in mode {settings.mode} on {device}")
    with training_progress(console) as progress:
        overall = progress.add_task("all tasks", total=len(todo), loss="", metric="")
        for spec in todo:
            start = time.perf_counter()
            bar = TrainingBar(progress, spec.name)
            try:
                outcome = finetune_task(backbone, spec, task_data[spec.name], sequences, settings, device, bar)
                rows[spec.name] = done_row(spec, outcome, time.perf_counter() - start, attempts=1)
            except (ValueError, RuntimeError) as e:
                rows[spec.name] = failed_row(spec, settings.mode, f"{type(e).__name__}: {e}",
                                             time.perf_counter() - start, attempts=1)
            write_results(job_dir, list(rows.values()))
            progress.remove_task(bar.task)
            progress.advance(overall)
    print_results(console, [rows[t.name] for t in tasks if t.name in rows])
    console.print(f"results: {job_dir / 'results.parquet'}")
    return 0 if all(r["status"] == "done" for r in rows.values()) else 1


def print_results(console, rows) -> None:
    from rich.table import Table

    table = Table(title="fine-tuning results")
    for col in ("task", "kind", "mode", "status", "metric", "value", "trained params", "% of FineAll", "seconds"):
        table.add_column(col, justify="right" if col in ("value", "trained params", "% of FineAll", "seconds")
                         else "left")
    for r in rows:
        done = r["status"] == "done"
        table.add_row(r["task"], r["kind"], r["mode"], r["status"] if done else f"[red]{r['status']}",
                      r["metric"] or "", f"{r['value']:.4f}" if done else "",
                      f"{r['trained_params']:,}" if done else "",
                      f"{r['ratio_vs_fineall']:.2f}%" if done else "", f"{r['seconds']:.1f}")
    console.print(table)
