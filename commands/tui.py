"""`peterrec tui`: the terminal UI: launch a fine-tuning job, watch it, act on it, review it."""

from __future__ import annotations

HELP = "terminal UI: launch a fine-tuning job and watch it, attach to one, or review a search"
DESCRIPTION = """A full-screen terminal UI (works over SSH; keys are shown in the footer).

  python cli.py tui                                     the launcher: backbone, task spec, mode, resources,
                                                        the parameter budget; Start runs the job here
  python cli.py tui --backbone runs/w/backbone --tasks data/w --out runs/w/job    the launcher, filled in
  python cli.py tui --attach runs/w/job                 watch a job started elsewhere, or review a finished one
  python cli.py tui --tune runs/w/tune                  the trials of a search (DIR/trials.parquet)

Every `finetune` flag sets the launcher's defaults (those the form does not show apply as given).
Quitting the UI of a job it started stops the job cleanly (finished tasks are kept; `finetune --resume`
continues it). Without a terminal, --attach prints the job's progress instead (rich or plain lines)."""


def add_arguments(parser):
    from commands._flags import add_settings_flags
    from orchestrator.settings import JobSettings

    what = parser.add_mutually_exclusive_group()
    what.add_argument("--attach", metavar="JOB_DIR", help="watch (or review) the fine-tuning job in JOB_DIR")
    what.add_argument("--tune", metavar="DIR", help="show the trials of a search from DIR/trials.parquet")
    add_settings_flags(parser, JobSettings, unit="task", required=())


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
    from commands._flags import settings_from_args
    from orchestrator.settings import JobSettings
    from tui import run_app
    from tui.launch import LaunchSettings

    run_app(defaults=LaunchSettings.from_settings(settings_from_args(JobSettings, args)))
    return 0


def _terminal() -> bool:
    from tui import available

    return available()


def watch_without_terminal(client) -> int:
    """`tui --attach` with no terminal: one line per task finished (those finished before included), the
    job's status once it changes, and at its end the parameter budget (plain lines when piped)."""
    import sys
    import time

    from rich.console import Console

    from tui.console import PlainDisplay, efficiency_text, make_display

    console = Console(highlight=False, soft_wrap=True) if not sys.stdout.isatty() else Console()
    display = make_display("rich", client, console) if sys.stdout.isatty() else PlainDisplay(client, console,
                                                                                              replay=True)
    with display:
        while client.live:
            display.update()
            time.sleep(1.0)
    state = client.state()
    console.print(efficiency_text(client, state, console.width))
    return 0 if all(t.status == "done" for t in state.tasks.values()) else 1
