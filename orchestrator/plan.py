"""Everything a job checks before any worker starts: spec, data, backbone, settings, the job directory.

No Ray here: a bad spec, bad data, a bad checkpoint or an override that cannot work fails in
`plan_job` with a message naming the file, the entry and the field, before a cluster is started.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.results import JobOutputs, bundle_path, read_results, results_path
from orchestrator.settings import SettingError
from orchestrator.state import CONTROL_DIR, STATE_FILE
from tasks.paths import check_apart

LOCK_FILE = ".lock"


@dataclass
class JobPlan:
    """A validated job: its inputs loaded, the settings of each task, and the tasks still to run."""

    job_dir: Path
    job: object  # tasks.JobSpec
    sequences: object  # tasks.Sequences
    task_data: dict  # name -> tasks.TaskData
    backbone: object  # peterrec Backbone (CPU)
    backbone_path: Path
    fingerprint: str
    settings: object  # FinetuneSettings given on the command line
    task_settings: dict  # name -> FinetuneSettings with the task's overrides
    tasks: list  # the selected TaskSpecs, in spec order
    outputs: JobOutputs
    lock: object = field(default=None, repr=False)  # open file holding JOB_DIR/.lock

    @property
    def todo(self) -> list:
        """Selected tasks without a `done` row."""
        return [t for t in self.tasks if self.outputs.status(t.name) != "done"]

    def spec(self, name: str):
        return self.job.task(name)

    def release(self) -> None:
        if self.lock is not None:
            self.lock.close()
            self.lock = None


def plan_job(spec_path, backbone_path, job_dir, settings, only=None, resume: bool = False,
             force: bool = False, vocab_prefix: bool = False) -> JobPlan:
    """Load and check everything; then take JOB_DIR (a lock held until `release`) and, with `force`,
    clear the previous job's outputs. Raises DataError, CheckpointError, ValueError or FileExistsError."""
    from peterrec.bundle import backbone_fingerprint

    job_dir = Path(job_dir)
    check_output_dir(job_dir, resume, force, "job's finished tasks", "continue it")
    job, sequences, task_data, backbone, tasks, task_settings = load_inputs(
        spec_path, backbone_path, settings, only, vocab_prefix)
    check_apart(job_dir, "--out", {"--backbone": backbone_path, **job.inputs()})
    fingerprint = backbone_fingerprint(backbone)
    rows = read_results(job_dir) if resume else []
    if resume:
        check_bundle_backbone(job_dir, fingerprint)
    lock = take_job_dir(job_dir)
    if force:
        for name in (results_path(job_dir).name, STATE_FILE):
            (job_dir / name).unlink(missing_ok=True)
        for folder in (bundle_path(job_dir), job_dir / CONTROL_DIR):
            shutil.rmtree(folder, ignore_errors=True)
    return JobPlan(job_dir, job, sequences, task_data, backbone, Path(backbone_path), fingerprint, settings,
                   task_settings, tasks, JobOutputs(job_dir, backbone, fingerprint, rows), lock)


def plan_for(settings) -> JobPlan:
    """plan_job for an orchestrator.settings.JobSettings: its own checks first (SettingError naming the
    setting), then everything plan_job checks."""
    settings.check()
    if settings.cluster.address:  # within seconds, before JOB_DIR is taken (ClusterUnreachable)
        from orchestrator.cluster import check_address

        check_address(settings.cluster.address)
    return plan_job(settings.spec_path(), settings.backbone, settings.out, settings.training.finetune_settings(),
                    settings.only, resume=settings.resume, force=settings.force,
                    vocab_prefix=settings.training.vocab_prefix)


def check_output_dir(out: Path, resume: bool, force: bool, kept: str, continue_hint: str) -> None:
    """OUT must be new or empty, unless --resume (keep what it holds) or --force (start over)."""
    if resume and force:
        raise ValueError(f"--resume keeps a {kept} and --force deletes them: pass only one")
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (resume or force):
        raise FileExistsError(f"{out} already exists and is not empty (pass --resume to {continue_hint}, "
                              f"--force to start over)")


def load_inputs(spec_path, backbone_path, settings, only=None, vocab_prefix: bool = False):
    """(job, sequences, task_data, backbone, tasks, task_settings): the spec, its data and the backbone,
    loaded and checked against each other; every selected task's settings with its overrides.
    `vocab_prefix`: the spec's item ids are the first ones of a larger backbone catalogue (--vocab-prefix)."""
    from peterrec.checkpoint import load_backbone
    from tasks import load_job

    job, sequences, task_data = load_job(spec_path)
    backbone, _ = load_backbone(backbone_path, "cpu")
    backbone.requires_grad_(False)
    check_vocabularies(job, backbone.config.vocab_size, backbone_path, vocab_prefix)
    tasks = selected_tasks(job, only)
    task_settings = {t.name: task_settings_for(job, t, settings, backbone.config, task_data[t.name])
                     for t in tasks}
    return job, sequences, task_data, backbone, tasks, task_settings


def check_vocabularies(job, known: int, backbone_path, vocab_prefix: bool) -> None:
    """The spec's items are the backbone's: the same vocab_size, or (--vocab-prefix) the first of them."""
    if job.vocab_size > known:
        raise ValueError(f"{job.path}: [source] vocab_size is {job.vocab_size} ({job.vocab_size - 1} items) but "
                         f"the backbone {backbone_path} knows only {known - 1} items")
    if job.vocab_size < known and not vocab_prefix:
        raise ValueError(f"{job.path}: [source] vocab_size is {job.vocab_size} ({job.vocab_size - 1} items) but "
                         f"the backbone {backbone_path} was pretrained on {known - 1} items: another catalogue? If "
                         f"this spec's items 1..{job.vocab_size - 1} are the backbone's items of the same ids, "
                         f"pass --vocab-prefix")


def selected_tasks(job, only) -> list:
    """The spec's tasks, or those named by --only (repeated or comma-separated), in spec order."""
    if not only:
        return list(job.tasks)
    names = [n.strip() for item in only for n in item.split(",") if n.strip()]
    unknown = [n for n in names if n not in {t.name for t in job.tasks}]
    if unknown:
        raise ValueError(f"--only: no task {', '.join(map(repr, unknown))} in {job.path} "
                         f"(tasks: {', '.join(t.name for t in job.tasks)})")
    return [t for t in job.tasks if t.name in names]


def task_settings_for(job, task_spec, settings, backbone_config, task_data):
    """The task's settings with its overrides, checked against the backbone (DataError naming the entry)."""
    from peterrec.finetune import check_settings, with_overrides
    from tasks import DataError

    index = job.tasks.index(task_spec)
    where = f"task[{index}] '{task_spec.name}'"
    try:
        check_settings(settings, backbone_config)
    except (ValueError, TypeError) as e:
        if not (task_spec.overrides or {}):  # the value came from the command line (or the launcher)
            raise SettingError(*_setting_of(str(e))) from None
    try:
        task_settings = with_overrides(settings, task_spec.overrides or {})
        check_settings(task_settings, backbone_config)
    except (ValueError, TypeError) as e:
        raise DataError(job.path, str(e), row=index, field="overrides", where=where) from None
    if len(task_data.part("train")[0]) == 0:
        raise DataError(task_spec.data, "no rows in split 'train': nothing to fine-tune on", field="split")
    return task_settings


def _setting_of(problem: str) -> tuple[str, str]:
    """(dotted setting, message naming its flag) for a problem of the command line's settings."""
    import re

    from orchestrator.settings import TrainingSettings, flag_name, walk

    for name, f in walk(TrainingSettings):
        if re.search(rf"\b{name}\b", problem):
            return f"training.{name}", f"{flag_name(f, 'task')}: {problem}"
    return "training", f"the training settings: {problem}"


def check_bundle_backbone(job_dir: Path, fingerprint: str) -> None:
    """A resumed job must use the backbone its bundle was trained on."""
    import json

    index = bundle_path(job_dir) / "index.json"
    if not index.exists():
        return
    try:
        found = json.loads(index.read_text())["backbone"]["fingerprint"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{index}: unreadable bundle index ({e}); pass --force to start over") from None
    if found != fingerprint:
        raise ValueError(f"{index}: the bundle was trained on backbone {found[:16]}..., not on this one "
                         f"({fingerprint[:16]}...); resume with the same --backbone, or pass --force")


def take_job_dir(job_dir: Path):
    """Lock JOB_DIR for this process (released when the process ends, even by SIGKILL)."""
    job_dir.mkdir(parents=True, exist_ok=True)
    handle = open(job_dir / LOCK_FILE, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        owner = handle.read().strip() or "another process"
        handle.close()
        raise FileExistsError(f"{job_dir} is in use by a running job (pid {owner}); wait for it or stop it") \
            from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle
