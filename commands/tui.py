"""`peterrec tui`: the terminal UI: launch a fine-tuning job, watch it, act on it, review it."""

from __future__ import annotations

HELP = "terminal UI: launch a fine-tuning job and watch it, attach to one, or review a search"
DESCRIPTION = """A full-screen terminal UI (works over SSH; keys are shown in the footer).

  python cli.py tui                                     the launcher: backbone, task spec, mode, resources,
                                                        the parameter budget; Start runs the job here
  python cli.py tui --backbone runs/w/backbone --tasks data/w --out runs/w/job    the launcher, filled in
  python cli.py tui --attach runs/w/job                 watch a job started elsewhere, or review a finished one
  python cli.py tui --tune runs/w/tune                  the trials of a search (DIR/trials.parquet)

Quitting the UI of a job it started stops the job cleanly (finished tasks are kept; `finetune --resume`
continues it). Without a terminal, --attach prints the job's progress instead (rich or plain lines)."""


def add_arguments(parser):
    from peterrec.config import MODES

    what = parser.add_mutually_exclusive_group()
    what.add_argument("--attach", metavar="JOB_DIR", help="watch (or review) the fine-tuning job in JOB_DIR")
    what.add_argument("--tune", metavar="DIR", help="show the trials of a search from DIR/trials.parquet")
    launcher = parser.add_argument_group("launcher defaults")
    launcher.add_argument("--backbone", help="pretrained checkpoint directory")
    launcher.add_argument("--tasks", help="task spec .toml, or a data directory holding tasks.toml")
    launcher.add_argument("--out", help="job directory")
    launcher.add_argument("--mode", choices=MODES, default="peterrec", help="what is trained per task")
    launcher.add_argument("--cpus-per-task", type=float, default=1.0, help="CPUs each task holds")
    launcher.add_argument("--gpus-per-task", type=float, default=0.0, help="GPUs each task holds (fractions share)")
    launcher.add_argument("--max-concurrent", type=int, default=0,
                          help="workers: most tasks at once; 0: as many as the cluster's resources allow")
    launcher.add_argument("--pack", default="1", metavar="K|auto",
                          help="tasks trained together per worker in one fused pass (see `finetune --help`)")
    launcher.add_argument("--address", help="Ray cluster to join (default: an embedded local one)")
    launcher.add_argument("--epochs", type=int, default=5, help="passes over each task's training data")
    launcher.add_argument("--max-steps", type=int, default=None, help="optimiser steps per task at most")
    launcher.add_argument("--batch-size", type=int, default=64, help="examples per step")
    launcher.add_argument("--lr", type=float, default=1e-3, help="learning rate")
    launcher.add_argument("--num-cpus", type=int, default=None, help="CPUs of the embedded Ray cluster")
    launcher.add_argument("--object-store-mb", type=int, default=None, help="object store of the embedded cluster")


def run(args) -> int:
    import sys

    from commands._common import fail

    if args.tune:
        if not _terminal():
            return fail("the tune view needs a terminal; read DIR/trials.parquet with pyarrow instead")
        from tui import run_app

        run_app(tune_dir=args.tune)
        return 0
    if args.attach:
        from orchestrator.client import JobClient

        try:
            client = JobClient.attach(args.attach)
        except FileNotFoundError as e:
            return fail(str(e))
        if not _terminal():
            return watch_without_terminal(client)
        from tui import run_app

        run_app(client=client)
        return 0
    if not _terminal():
        print("error: the launcher needs a terminal; run `python cli.py finetune ...` instead (it shows a rich "
              "or plain progress display)", file=sys.stderr)
        return 2
    from tui import run_app
    from tui.launch import LaunchSettings

    defaults = LaunchSettings(backbone=args.backbone or "", spec=args.tasks or "", out=args.out or "",
                              mode=args.mode, workers=str(args.max_concurrent), pack=args.pack,
                              cpus=f"{args.cpus_per_task:g}",
                              gpus=f"{args.gpus_per_task:g}", address=args.address or "", epochs=str(args.epochs),
                              max_steps="" if args.max_steps is None else str(args.max_steps),
                              batch_size=str(args.batch_size), lr=f"{args.lr:g}", num_cpus=args.num_cpus,
                              object_store_mb=args.object_store_mb)
    run_app(defaults=defaults)
    return 0


def _terminal() -> bool:
    from tui import available

    return available()


def watch_without_terminal(client) -> int:
    """`tui --attach` with no terminal: the finetune command's display (plain lines when piped) until the
    job is over."""
    import sys
    import time

    from orchestrator.display import make_display

    ui = "rich" if sys.stdout.isatty() else "plain"
    with make_display(ui, client) as display:
        while client.live:
            display.update()
            time.sleep(1.0)
    state = client.state()
    return 0 if all(t.status == "done" for t in state.tasks.values()) else 1
