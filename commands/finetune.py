"""`peterrec finetune`: fine-tune every task of a spec over one frozen pretrained backbone."""

from __future__ import annotations

HELP = "fine-tune patch sets (or a baseline mode) for every task of a task spec"
DESCRIPTION = """Fine-tune each task of a task spec over one pretrained backbone, in parallel on Ray, and write
JOB_DIR/results.parquet (one row per task) and JOB_DIR/bundle/ (a patch set + head per task) as each task
finishes. By default the command starts its own Ray on this machine (loopback only); --address joins a
cluster started with `ray start`; --in-process runs without Ray. The backbone is put into Ray's object
store once and shared, never copied, by every worker. Example:

  python cli.py finetune --backbone runs/demo/backbone --tasks runs/demo/data --out runs/demo/job"""


def add_arguments(parser):
    from commands._common import add_bf16_alias
    from commands._flags import add_settings_flags
    from orchestrator.settings import JobSettings

    groups = add_settings_flags(parser, JobSettings, unit="task")
    add_bf16_alias(groups["training"], "training.precision")
    groups["cluster"].add_argument("--ui", choices=["rich", "plain", "tui"], default=None,
                                   help="rich: live bar and table; plain: one line per finished task; tui: the "
                                        "full-screen terminal UI (rich without a terminal) (default: rich on a "
                                        "terminal, else plain)")


def run(args) -> int:
    from commands._common import user_errors
    from commands._flags import settings_from_args
    from orchestrator.plan import plan_for
    from orchestrator.settings import JobSettings

    settings = settings_from_args(JobSettings, args)
    with user_errors():
        plan = plan_for(settings)  # every check, before any worker (or Ray) starts
        try:
            return finetune(settings, plan, args.ui)
        finally:
            plan.release()


def finetune(settings, plan, ui: str | None) -> int:
    import sys

    from rich.console import Console

    from orchestrator.client import JobClient
    from orchestrator.job import FinetuneJob
    from tui.console import make_display, pack_line, precision_line, results_table

    console = Console()
    job = FinetuneJob(plan, settings.options())
    cluster = settings.cluster
    where = ("this process (no Ray)" if settings.in_process else f"the Ray cluster at {cluster.address}"
             if cluster.address else "an embedded Ray cluster (loopback)")
    per = "" if settings.in_process else (f"; {cluster.cpus:g} CPU + {cluster.gpus:g} GPU per "
                                          f"{'task' if settings.pack == 1 else 'worker (task or pack)'}")
    precision_said: list = []
    header = [f"fine-tuning {len(plan.todo)} of {len(plan.tasks)} tasks in mode {plan.settings.mode} on {where}{per}"]

    def announce(*_) -> None:  # once the cluster is joined (or started): never a claim about one not reached
        if header:
            console.print(header.pop())
        if "precision" in job.state.resources and not precision_said:  # resolved (--precision auto) at the start
            precision_said.append(True)
            resources = job.state.resources
            console.print(precision_line(resources["precision"], resources.get("precision_reason")),
                          highlight=False, soft_wrap=True)

    ui = ui or ("rich" if sys.stdout.isatty() else "plain")
    if ui == "tui":
        import tui

        if not tui.available():
            console.print("--ui tui needs a terminal: showing the progress display instead")
            ui = "rich" if sys.stdout.isatty() else "plain"
    client = JobClient(plan.job_dir, job)
    if ui == "tui":  # the job runs inside the UI; quitting the UI stops it (resumable)
        announce()
        state = tui.run_job(job)
    else:
        with make_display(ui, client, console) as display:
            state = job.run(on_tick=lambda s: (announce(), display.update(s)))
    announce()  # a job with nothing left to run never ticks
    rows = {r["task"]: r for r in client.results()}
    console.print(results_table([rows[t.name] for t in plan.tasks if t.name in rows]))
    console.print(f"results: {plan.job_dir / 'results.parquet'}   bundle: {plan.job_dir / 'bundle'}")
    if settings.pack != 1:
        console.print(pack_line(state.resources))
    if "first_progress" in state.timings and "ray_ready" in state.timings:
        console.print(f"start-up: {state.timings['first_progress']:.1f} s from the command's start to the first "
                      f"progress report (Ray up after {state.timings['ray_ready']:.1f} s)")
    return 0 if all(rows.get(t.name, {}).get("status") == "done" for t in plan.tasks) else 1
