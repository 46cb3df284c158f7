"""From the launcher's fields (text) to the JobSettings of a fine-tuning job (no Textual): the same settings,
checks and plan as `python cli.py finetune`, so a job started from the UI is one the CLI could have started."""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field, fields

from orchestrator.client import JobSettings, SettingError, job_flags, parse_pack

EXISTING = {"new": "refuse a non-empty job directory", "resume": "resume (keep finished tasks)",
            "force": "start over (delete its results)"}


@dataclass
class LaunchSettings:
    """What the launcher's fields hold (text, as typed); defaults come from `python cli.py tui` flags."""

    backbone: str = ""
    spec: str = ""
    out: str = ""
    mode: str = "peterrec"
    existing: str = "new"  # new | resume | force
    workers: str = "0"  # most tasks at once; 0: as many as the cluster's resources allow
    pack: str = "1"  # most tasks trained together per worker (a number, or auto)
    cpus: str = "1"
    gpus: str = "0"
    address: str = ""  # blank (or "local"): an embedded Ray on this machine
    epochs: str = "5"
    max_steps: str = ""
    batch_size: str = "64"
    lr: str = "0.001"
    num_cpus: int | None = None  # size of the embedded cluster (tests keep it small)
    object_store_mb: int | None = None
    base: JobSettings = field(default_factory=JobSettings)  # every setting the form does not show

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_settings(cls, settings: JobSettings, **extra) -> "LaunchSettings":
        """The fields a JobSettings fills in (the `tui` command's flags)."""
        t, c = settings.training, settings.cluster
        return cls(backbone=settings.backbone, spec=settings.tasks, out=settings.out, mode=t.mode,
                   existing="resume" if settings.resume else "force" if settings.force else "new",
                   workers=str(c.max_concurrent), pack=str(settings.pack), cpus=f"{c.cpus:g}", gpus=f"{c.gpus:g}",
                   address=c.address or "", epochs=str(t.epochs),
                   max_steps="" if t.max_steps is None else str(t.max_steps), batch_size=str(t.batch_size),
                   lr=f"{t.lr:g}", num_cpus=c.num_cpus, object_store_mb=c.object_store_mb,
                   base=copy.deepcopy(settings), **extra)


class LaunchError(SettingError):
    """A field the user must fix; `field` names the launcher input."""


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


def job_settings(s: LaunchSettings) -> JobSettings:
    """The JobSettings of these fields (LaunchError names the field that is wrong)."""
    for name, label in (("backbone", "backbone checkpoint"), ("spec", "task spec"), ("out", "job directory")):
        if not getattr(s, name).strip():
            raise LaunchError(name, f"{label}: required")
    settings = copy.deepcopy(s.base)
    settings.backbone, settings.tasks, settings.out = s.backbone.strip(), s.spec.strip(), s.out.strip()
    settings.resume, settings.force = s.existing == "resume", s.existing == "force"
    try:
        settings.pack = parse_pack(s.pack)
    except ValueError as e:
        raise LaunchError("pack", f"pack: {e}".replace("--pack ", "")) from None
    t, c = settings.training, settings.cluster
    t.mode = s.mode
    c.max_concurrent = _number(int, "workers", "workers", s.workers, 0)
    c.cpus = _number(float, "cpus", "CPUs per task", s.cpus, 0.01)
    c.gpus = _number(float, "gpus", "GPU per task", s.gpus, 0)
    t.epochs = _number(int, "epochs", "epochs", s.epochs, 1)
    t.max_steps = _number(int, "max_steps", "max steps", s.max_steps, 1, optional=True)
    t.batch_size = _number(int, "batch_size", "batch size", s.batch_size, 1)
    t.lr = _number(float, "lr", "learning rate", s.lr, 1e-12)
    address = s.address.strip()
    c.address = address if address and address != "local" else None
    c.num_cpus, c.object_store_mb = s.num_cpus, s.object_store_mb
    try:
        settings.check()
    except SettingError as e:
        raise LaunchError(LAUNCHER_FIELD.get(e.field, e.field), str(e)) from None
    return settings


# JobSettings names -> the launcher's inputs, for errors found by JobSettings.check()
LAUNCHER_FIELD = {"tasks": "spec", "resume": "existing", "force": "existing", "cluster.max_concurrent": "workers",
                  "cluster.cpus": "cpus", "cluster.gpus": "gpus", "cluster.address": "address",
                  "training.device": "gpus", "training.epochs": "epochs", "training.max_steps": "max_steps",
                  "training.batch_size": "batch_size", "training.lr": "lr", "training.mode": "mode"}

# The launcher's controls, as its labels name them (errors point at these, not at `finetune` flags)
LABELS = {"backbone": "backbone", "spec": "task spec", "out": "job dir", "existing": "if it exists", "mode": "mode",
          "cpus": "CPUs/task", "gpus": "GPU/task", "workers": "workers", "pack": "tasks per worker",
          "epochs": "epochs", "max_steps": "max steps", "batch_size": "batch", "lr": "lr", "address": "cluster"}
CHOICES = {"resume": EXISTING["resume"], "force": EXISTING["force"]}


def in_launcher_words(message: str) -> str:
    """A message from the planner or the settings checks, with each `finetune` flag the launcher has a
    control for named as that control ("pass --resume" -> "pick 'resume (keep finished tasks)' in 'if it
    exists'"); flags the form does not show stay as they are (they come from `tui`'s own flags)."""
    for name, flag in sorted(job_flags().items(), key=lambda item: -len(item[1])):
        if name in CHOICES:
            words = f"pick '{CHOICES[name]}' in '{LABELS['existing']}'"
            message = re.sub(rf"(?:pass |with |use )?{re.escape(flag)}(?![\w-])", words, message)
        elif LAUNCHER_FIELD.get(name, name) in LABELS:
            message = re.sub(rf"{re.escape(flag)}(?![\w-])", f"'{LABELS[LAUNCHER_FIELD.get(name, name)]}'", message)
    return message
