"""`peterrec demo`: the whole product on generated data, one step after another."""

from __future__ import annotations

HELP = "run the demo: synthetic tasks -> pretrain -> parallel fine-tune on Ray -> bundle"
DESCRIPTION = """Generate a synthetic world of users and tasks, pretrain a backbone on its item sequences,
fine-tune a patch set for every task, then show the bundle. Each step is the same command a user would
type, printed before it runs, so the demo doubles as a tour of the CLI. Everything goes under --out."""


def add_arguments(parser):
    parser.add_argument("--out", default="runs/demo", help="directory for the data, backbone and job")
    parser.add_argument("--tasks", type=int, default=20, help="synthetic downstream tasks")
    parser.add_argument("--users", type=int, default=3000, help="synthetic users")
    parser.add_argument("--items", type=int, default=300, help="items in the source catalogue")
    parser.add_argument("--channels", type=int, default=32, help="backbone width")
    parser.add_argument("--pretrain-epochs", type=int, default=3, help="passes over the sequences")
    parser.add_argument("--finetune-steps", type=int, default=150, help="optimiser steps per task")
    parser.add_argument("--seed", type=int, default=0, help="seed for data and training")
    parser.add_argument("--quick", action="store_true", help="a tiny run (a few seconds per step), for smoke tests")
    parser.add_argument("--force", action="store_true", help="replace an earlier demo in --out")


def steps(args) -> list[list[str]]:
    out = args.out.rstrip("/")
    data, backbone, job = f"{out}/data", f"{out}/backbone", f"{out}/job"
    tasks, users, items, channels = args.tasks, args.users, args.items, args.channels
    pretrain_epochs, finetune_steps = args.pretrain_epochs, args.finetune_steps
    if args.quick:
        tasks, users, items, channels, pretrain_epochs, finetune_steps = min(tasks, 4), 300, 60, 16, 1, 20
    force = ["--force"] if args.force else []
    return [
        ["synth", "--out", data, "--tasks", str(tasks), "--users", str(users), "--items", str(items),
         "--seed", str(args.seed), "--max-len", "30", *force],
        ["pretrain", "--data", data, "--out", backbone, "--channels", str(channels), "--dilations", "1,4,1,4",
         "--max-len", "30", "--epochs", str(pretrain_epochs), "--seed", str(args.seed), *force],
        ["finetune", "--backbone", backbone, "--tasks", data, "--out", job, "--mode", "peterrec",
         "--max-steps", str(finetune_steps), "--epochs", "100", "--seed", str(args.seed), *force],
        ["bundle", "inspect", job],
    ]


def run(args) -> int:
    import cli
    from rich.console import Console
    from rich.rule import Rule

    console = Console()
    for argv in steps(args):
        console.print(Rule(f"[bold]python cli.py {' '.join(argv)}", align="left"))
        code = cli.main(argv)
        if code:
            console.print(f"[red]demo stopped: `{argv[0]}` exited with {code}")
            return code
    console.print(Rule("[bold]done", align="left"))
    job = f"{args.out.rstrip('/')}/job"
    console.print(f"results: {job}/results.parquet   bundle: {job}/bundle/")
    console.print("next: python cli.py tui --attach " + job + "    (review the job in the terminal UI)")
    console.print(f"      python cli.py bundle export {job} --out demo-bundle.tar")
    return 0
