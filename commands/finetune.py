"""`peterrec finetune`: fine-tune every task of a spec over one frozen pretrained backbone."""

from __future__ import annotations

HELP = "fine-tune patch sets (or a baseline mode) for every task of a task spec"
DESCRIPTION = """Fine-tune each task of a task spec over one pretrained backbone, in parallel on Ray, and write
JOB_DIR/results.parquet (one row per task) and JOB_DIR/bundle/ (a patch set + head per task) as each task
finishes. By default the command starts its own Ray on this machine (loopback only); --address joins a
cluster started with `ray start`. The backbone is put into Ray's object store once and shared, never copied,
by every worker. Modes: peterrec (patches + head), finecls (head only), finelast (last blocks + head),
fineall (everything), peterzero (patches over a random backbone). Example:

  python cli.py finetune --backbone runs/demo/backbone --tasks data/demo --mode peterrec --out runs/demo/job"""


def add_arguments(parser):
    from commands._common import add_cluster_flags, add_train_flags
    from peterrec.config import MODES

    parser.add_argument("--backbone", required=True, help="pretrained checkpoint directory (from `pretrain`)")
    parser.add_argument("--tasks", required=True, help="task spec .toml, or a data directory holding tasks.toml")
    parser.add_argument("--out", required=True, help="job directory: results.parquet and the bundle go here")
    parser.add_argument("--mode", choices=MODES, default="peterrec", help="what is trained per task")
    parser.add_argument("--only", action="append", default=None, metavar="TASK",
                        help="run only these tasks (repeat the flag or give a comma-separated list)")
    parser.add_argument("--resume", action="store_true",
                        help="keep finished tasks of an existing JOB_DIR (bundles untouched) and run the others")
    parser.add_argument("--force", action="store_true", help="start over in an existing JOB_DIR")
    group = add_cluster_flags(parser, "task", ui_choices=("rich", "plain", "tui"))
    group.add_argument("--in-process", action="store_true",
                       help="no Ray: run the tasks one after another in this process (for debugging)")
    group.add_argument("--pack", type=pack_size, default=1, metavar="K|auto",
                       help="train up to K tasks per worker at once, in one fused pass over the backbone per step "
                            "(modes peterrec and finecls; other tasks run alone). Pays where per-task batches are "
                            "small (see benchmarks/bench_fused.py). auto: measure K = 1, 2, 4, 8, 16 on a worker "
                            "at the start and keep the fastest, 1 when packing does not pay")
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


def pack_size(text: str):
    import argparse

    from orchestrator.packing import parse_pack

    try:
        return parse_pack(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def settings_from(args):
    from commands._common import train_config_from
    from peterrec.config import PatchConfig
    from peterrec.finetune import FinetuneSettings

    patch = PatchConfig(bottleneck_ratio=args.bottleneck_ratio, cardinality=args.cardinality,
                        insertion=args.insertion, train_layernorm2=not args.no_layernorm2)
    return FinetuneSettings(mode=args.mode, patch=patch, train=train_config_from(args),
                            finelast_blocks=args.finelast_blocks, representation=args.representation,
                            eval_negatives=args.eval_negatives)


def run(args) -> int:
    from commands._common import user_errors

    with user_errors():
        plan = plan_from(args)  # every check, before any worker (or Ray) starts
        try:
            return finetune_in_process(args, plan) if args.in_process else finetune_on_ray(args, plan)
        finally:
            plan.release()


def plan_from(args):
    from commands._common import check_ray_device, resolve_spec
    from orchestrator.plan import plan_job

    if args.in_process and args.address:
        raise ValueError("--in-process runs without Ray; it cannot take --address")
    if not args.in_process:
        check_ray_device(args, "task")
    return plan_job(resolve_spec(args.tasks), args.backbone, args.out, settings_from(args), args.only,
                    resume=args.resume, force=args.force)


def finetune_on_ray(args, plan) -> int:
    import sys

    from rich.console import Console

    from orchestrator.client import JobClient
    from orchestrator.display import make_display
    from orchestrator.job import FinetuneJob

    console = Console()
    job = FinetuneJob(plan, job_options(args))
    todo = len(plan.todo)
    where = f"the Ray cluster at {args.address}" if args.address else "an embedded Ray cluster (loopback)"
    console.print(f"fine-tuning {todo} of {len(plan.tasks)} tasks in mode {plan.settings.mode} on {where}; "
                  f"{args.cpus_per_task:g} CPU + {args.gpus_per_task:g} GPU per "
                  f"{'task' if args.pack == 1 else 'worker (task or pack)'}")
    ui = args.ui or ("rich" if sys.stdout.isatty() else "plain")
    if ui == "tui":
        import tui

        if not tui.available():
            console.print("--ui tui needs a terminal: showing the progress display instead")
            ui = "rich" if sys.stdout.isatty() else "plain"
    client = JobClient(plan.job_dir, job)
    try:
        if ui == "tui":  # the job runs inside the UI; quitting the UI stops it (resumable)
            state = tui.run_job(job)
        else:
            with make_display(ui, client, console) as display:
                state = job.run(on_tick=display.update)
    except ConnectionError as e:  # --address that cannot be joined
        raise ValueError(str(e)) from None
    rows = plan.outputs.rows
    print_results(console, [rows[t.name] for t in plan.tasks if t.name in rows])
    console.print(f"results: {plan.job_dir / 'results.parquet'}   bundle: {plan.job_dir / 'bundle'}")
    if args.pack != 1:
        console.print(pack_line(state.resources))
    if "first_progress" in state.timings:
        console.print(f"start-up: {state.timings['first_progress']:.1f} s from the command's start to the first "
                      f"progress report (Ray up after {state.timings['ray_ready']:.1f} s)")
    return 0 if all(rows.get(t.name, {}).get("status") == "done" for t in plan.tasks) else 1


def job_options(args):
    """Where and how a job's tasks run, from the command line (also used by the TUI's launcher)."""
    from orchestrator.job import JobOptions

    return JobOptions(address=args.address, cpus_per_task=args.cpus_per_task, gpus_per_task=args.gpus_per_task,
                      max_concurrent=args.max_concurrent, retries=args.retries, num_cpus=args.num_cpus,
                      object_store_mb=args.object_store_mb, pack=args.pack)


def pack_line(resources: dict) -> str:
    size, reason = resources.get("pack_size"), resources.get("pack_reason")
    line = f"packs: up to {size} tasks per worker" if size and size > 1 else "packs: none, every task ran alone"
    return line + (f" (--pack {resources.get('pack')}: {reason})" if reason else "")


def finetune_in_process(args, plan) -> int:
    import time

    from rich.console import Console

    from commands._common import TrainingBar, training_progress
    from peterrec.finetune import finetune_pack, finetune_task
    from peterrec.training import pick_device

    console = Console()
    device = pick_device(args.device)
    backbone = plan.backbone.to(device)
    outputs = plan.outputs
    todo = plan.todo
    console.print(f"fine-tuning {len(todo)} of {len(plan.tasks)} tasks in mode {plan.settings.mode} on {device} "
                  f"(in process, no Ray)")
    units = in_process_units(args, plan, backbone, console)
    with training_progress(console) as progress:
        overall = progress.add_task("all tasks", total=len(todo), loss="", metric="")
        for names in units:
            start = time.perf_counter()
            bars = {name: TrainingBar(progress, name) for name in names}
            members = [(plan.spec(n), plan.task_data[n], plan.task_settings[n], bars[n]) for n in names]
            if len(members) > 1:
                outcomes = finetune_pack(backbone, members, plan.sequences, device)
            else:
                try:
                    spec, data, settings, bar = members[0]
                    outcomes = [(names[0], finetune_task(backbone, spec, data, plan.sequences, settings, device,
                                                         bar))]
                except (ValueError, RuntimeError) as e:
                    outcomes = [(names[0], e)]
            for name, outcome in outcomes:  # each written as soon as it leaves its pack
                spec, settings, seconds = plan.spec(name), plan.task_settings[name], time.perf_counter() - start
                if isinstance(outcome, BaseException):
                    outputs.failed(spec, settings.mode, f"{type(outcome).__name__}: {outcome}", seconds, attempts=1)
                else:
                    outputs.done(spec, settings, outcome.model, outcome.summary(), seconds, attempts=1)
                progress.remove_task(bars[name].task)
                progress.advance(overall)
    rows = outputs.rows
    print_results(console, [rows[t.name] for t in plan.tasks if t.name in rows])
    console.print(f"results: {plan.job_dir / 'results.parquet'}   bundle: {plan.job_dir / 'bundle'}")
    return 0 if all(rows.get(t.name, {}).get("status") == "done" for t in plan.tasks) else 1


def in_process_units(args, plan, backbone, console) -> list[list[str]]:
    """The tasks, alone or in packs (--pack), in the order to train them in this process."""
    from orchestrator.packing import auto_candidates, packable_names, plan_units, steps_per_task
    from peterrec.finetune import measure_pack_size

    names = [t.name for t in plan.todo]
    steps = steps_per_task(names, plan.task_settings, plan.task_data)
    k = args.pack
    if k == "auto":
        candidates, work_steps = auto_candidates(packable_names(names, plan.task_settings), steps, slots=1)
        k = 1
        if len(candidates) > 1:
            choice = measure_pack_size(backbone, [(plan.spec(n), plan.task_data[n], plan.task_settings[n])
                                                  for n in candidates], plan.sequences, work_steps=work_steps)
            k = choice.k
            console.print(f"--pack auto: {choice.reason}")
    return [unit.names for unit in plan_units(names, plan.task_settings, steps, k, slots=1, retries=0)]


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
