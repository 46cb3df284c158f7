"""From the launcher's fields to a fine-tuning job (no Textual): the same flags, checks and plan as
`python cli.py finetune`, so a job started from the UI is one the CLI could have started."""

from __future__ import annotations

import contextlib
import io
import time
from dataclasses import asdict, dataclass

EXISTING = {"new": "refuse a non-empty job directory", "resume": "resume (keep finished tasks)",
            "force": "start over (delete its results)"}


@dataclass
class LaunchSettings:
    """What the launcher asks for; defaults come from `python cli.py tui` flags."""

    backbone: str = ""
    spec: str = ""
    out: str = ""
    mode: str = "peterrec"
    existing: str = "new"  # new | resume | force
    workers: str = "0"  # most tasks at once; 0: as many as the cluster's resources allow
    pack: str = "1"  # most tasks trained together per worker (a number, or auto)
    cpus: str = "1"
    gpus: str = "0"
    address: str = ""  # blank: an embedded Ray on this machine
    epochs: str = "5"
    max_steps: str = ""
    batch_size: str = "64"
    lr: str = "0.001"
    num_cpus: int | None = None  # size of the embedded cluster (tests keep it small)
    object_store_mb: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)


class LaunchError(ValueError):
    """A field the user must fix; `field` names the launcher input."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def _number(kind, field: str, label: str, value: str, minimum: float, optional: bool = False):
    value = value.strip()
    if not value and optional:
        return None
    try:
        number = kind(value)
    except ValueError:
        raise LaunchError(field, f"{label}: expected {'a whole number' if kind is int else 'a number'}, "
                                 f"got {value!r}") from None
    if number < minimum:
        raise LaunchError(field, f"{label}: must be >= {minimum:g} (got {value})")
    return number


def finetune_argv(s: LaunchSettings) -> list[str]:
    """The `finetune` command line of these settings (LaunchError names the field that is wrong)."""
    for field, label in (("backbone", "backbone checkpoint"), ("spec", "task spec"), ("out", "job directory")):
        if not getattr(s, field).strip():
            raise LaunchError(field, f"{label}: required")
    workers = _number(int, "workers", "workers", s.workers, 0)
    try:
        from orchestrator.packing import parse_pack

        pack = parse_pack(s.pack)
    except ValueError as e:
        raise LaunchError("pack", f"pack: {e}".replace("--pack ", "")) from None
    cpus = _number(float, "cpus", "CPUs per task", s.cpus, 0.01)
    gpus = _number(float, "gpus", "GPU per task", s.gpus, 0)
    epochs = _number(int, "epochs", "epochs", s.epochs, 1)
    max_steps = _number(int, "max_steps", "max steps", s.max_steps, 1, optional=True)
    batch = _number(int, "batch_size", "batch size", s.batch_size, 1)
    lr = _number(float, "lr", "learning rate", s.lr, 1e-12)
    argv = ["finetune", "--backbone", s.backbone.strip(), "--tasks", s.spec.strip(), "--out", s.out.strip(),
            "--mode", s.mode, "--max-concurrent", str(workers), "--cpus-per-task", f"{cpus:g}",
            "--gpus-per-task", f"{gpus:g}", "--pack", str(pack), "--epochs", str(epochs), "--batch-size", str(batch),
            "--lr", f"{lr:g}"]
    if max_steps is not None:
        argv += ["--max-steps", str(max_steps)]
    if s.address.strip() and s.address.strip() != "local":
        argv += ["--address", s.address.strip()]
    if s.existing in ("resume", "force"):
        argv.append(f"--{s.existing}")
    if s.num_cpus:
        argv += ["--num-cpus", str(s.num_cpus)]
    if s.object_store_mb:
        argv += ["--object-store-mb", str(s.object_store_mb)]
    return argv


def parse_finetune(argv: list[str]):
    """argparse Namespace of a `finetune` command line; a bad value raises ValueError (never exits)."""
    import cli

    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            return cli.build_parser().parse_args(argv)
    except SystemExit:
        message = errors.getvalue().strip().splitlines()
        raise ValueError(message[-1].removeprefix("peterrec finetune: ") if message else "invalid settings") \
            from None


def settings_of(s: LaunchSettings):
    """The FinetuneSettings these fields give (for the parameter budget)."""
    from dataclasses import replace

    from commands.finetune import settings_from

    return settings_from(parse_finetune(finetune_argv(replace(s, out=s.out or "unused"))))


def make_job(args):
    """Plan (every check of `finetune`: spec, data, backbone, job directory) and build the job; blocking,
    so called off the UI thread. Raises DataError, CheckpointError, FileExistsError or ValueError."""
    from commands.finetune import job_options, plan_from
    from orchestrator.job import FinetuneJob

    options = job_options(args)
    started = time.time()  # the job's clock starts now, not when the UI did
    if args.address:
        check_address(args.address)
    plan = plan_from(args)
    try:
        return FinetuneJob(plan, options, started_at=started)
    except BaseException:
        plan.release()
        raise


def check_address(address: str, timeout: float = 5.0) -> None:
    """Fail fast on a cluster address nothing listens on (joining one makes Ray wait for minutes)."""
    import socket

    host, _, port = address.removeprefix("ray://").rpartition(":")
    if address in ("auto", "local") or not host or not port.isdigit():
        return  # let Ray interpret it
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise LaunchError("address", f"cluster {address}: nothing answers there ({e}); start it with "
                                     f"`ray start --head`, or leave the field blank for a local cluster") from None
