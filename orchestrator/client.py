"""The one API a UI needs of the orchestrator: jobs (JobClient), searches (SearchClient), and launching.

JobClient reads a fine-tuning job's state and acts on it, for a job running in this process
(`JobClient(job_dir, job)`) or one started by another process (`JobClient.attach(job_dir)`): that driver
rewrites JOB_DIR/state.json about twice a second and polls JOB_DIR/control/ for commands. A finished job is
reviewed the same way, from state.json and results.parquet. It also gives the job's parameter budget,
each task's configuration and log, and the bundle export. SearchClient reads a search's trials. `launch` plans and
builds a job from JobSettings; `plan_budget` is the budget of settings before anything runs. No Ray here:
clients never touch the cluster. UIs import this module only; the state model comes with it (`status`).
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import psutil

from orchestrator import state as st
from orchestrator import state as status  # the job-state model clients read: statuses, JobState, TaskState
from orchestrator.results import bundle_path, read_results, results_path
from orchestrator.settings import JobSettings, SettingError, TrainingSettings, parse_pack, resolve_spec
from orchestrator.state import JobState, TaskState
from orchestrator.tune.results import SearchResults as SearchClient
from orchestrator.tune.results import best_trial, trial_name
from peterrec.efficiency import JobBudget, ParamReport, storage_for  # (no torch)
from peterrec.modes import MODE_NAMES, MODES  # (no torch)

__all__ = [  # what UIs use: this module, and what it hands out
    "LIVE_STATUSES", "JobBudget", "JobClient", "JobSettings", "JobState", "MODES", "MODE_NAMES", "ParamReport",
    "SearchClient", "SettingError", "TaskState", "TrainingSettings", "best_trial", "job_flags", "launch",
    "parse_pack", "plan_budget", "plan_tasks", "status", "storage_for", "trial_name",
]

LIVE_STATUSES = (st.STARTING, st.JOB_RUNNING, st.STOPPING)
STALE_S = 15.0  # a driver on another host that has not written state.json for this long is presumed gone


class JobClient:
    """Read a job (state(), task(), results()) and act on it (cancel, retry_failed, stop)."""

    def __init__(self, job_dir: str | Path, job=None):
        self.job_dir = Path(job_dir)
        self.job = job  # orchestrator.job.FinetuneJob when the job runs in this process
        self._rows: tuple[tuple, list[dict]] = ((), [])  # results.parquet, read again only when it changes

    @classmethod
    def attach(cls, job_dir: str | Path) -> "JobClient":
        """A client for the job in JOB_DIR, whichever process runs (or ran) it."""
        job_dir = Path(job_dir)
        if not (job_dir / st.STATE_FILE).exists() and not results_path(job_dir).exists():
            raise FileNotFoundError(f"{job_dir}: no state.json or results.parquet, not a fine-tuning job directory")
        return cls(job_dir)

    # Reading ---------------------------------------------------------------------------------------

    def state(self) -> JobState:
        """The job now: status, cluster, timings and every task (a copy, safe to keep)."""
        if self.job is not None:
            state = JobState.from_dict(self.job.snapshot)
        else:
            state = st.read_state(self.job_dir) or JobState(str(self.job_dir), status=st.JOB_DONE)
            if state.status in LIVE_STATUSES and not self._driver_alive(state):
                state.status = st.LOST
                state.pace = {}
                for task in state.tasks.values():  # nothing runs them any more: --resume will
                    if task.status in (st.RUNNING, st.RETRYING):
                        task.requeue()
        live = state.status in LIVE_STATUSES
        for row in self.results():
            task = state.tasks.get(row["task"])
            if task is None:
                task = state.tasks[row["task"]] = TaskState(row["task"], row["kind"], row["metric"] or "")
            elif live and not task.finished:  # a live job may be running it again (retry_failed)
                continue
            task.status, task.value, task.error = row["status"], row["value"], row["error"]
            task.seconds, task.attempts = row["seconds"], row["attempts"] or task.attempts
        return state

    def task(self, name: str) -> TaskState:
        tasks = self.state().tasks
        if name not in tasks:
            raise KeyError(f"no task {name!r} in {self.job_dir}")
        return tasks[name]

    def log(self, name: str) -> list[str]:
        """A task's latest log lines (JOB_DIR/logs/<task>.log: what its attempts printed, their progress now
        and then, a failure's traceback, and what the driver made of each attempt)."""
        return st.read_task_log(self.job_dir, name)

    def results(self) -> list[dict]:
        """The rows of results.parquet (finished tasks)."""
        try:
            stat = results_path(self.job_dir).stat()
            key = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        except FileNotFoundError:
            return []
        if key != self._rows[0]:
            self._rows = (key, read_results(self.job_dir))
        return [dict(r) for r in self._rows[1]]

    @property
    def live(self) -> bool:
        """Whether a driver is running the job now."""
        return self.state().status in LIVE_STATUSES

    def wait(self, timeout: float | None = None, poll: float = 0.5) -> JobState:
        """Block until the job is no longer live (or `timeout` seconds); returns its state."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            state = self.state()
            if state.status not in LIVE_STATUSES or (deadline is not None and time.monotonic() >= deadline):
                return state
            time.sleep(poll)

    def settings(self):
        """The job-wide FinetuneSettings (None for a job recorded before they were kept in its state)."""
        from peterrec.finetune import FinetuneSettings

        saved = self.state().settings
        return FinetuneSettings.from_dict(saved) if saved else None

    def budget(self):
        """Every task's parameters (a peterrec.efficiency.JobBudget): measured for the tasks done
        (results.parquet), planned from the job's settings and each task's overrides for the others.
        None when the spec or the backbone's config cannot be read (a job reviewed on another machine)."""
        state = self.state()
        measured = {r["task"]: ParamReport.from_row(r) for r in self.results()
                    if r["status"] == "done" and r.get("fineall_params")}
        planned = None
        settings = self.settings()
        if state.spec and state.backbone and settings is not None:
            try:
                planned = plan_tasks(state.backbone, state.spec, settings)
            except Exception:  # noqa: BLE001  an input moved or changed: show what was measured
                planned = None
        if planned is None and not measured:
            return None
        backbone = planned.backbone_params if planned else next(iter(measured.values())).backbone_params
        tasks = {name: measured.get(name) or (planned.tasks.get(name) if planned else None) for name in state.tasks}
        kinds = {name: task.kind for name, task in state.tasks.items()}
        return JobBudget(backbone, {n: r for n, r in tasks.items() if r is not None}, kinds)

    def task_config(self, name: str) -> dict:
        """A task's configuration, flat: from its bundle entry once it is done, else its spec entry and the
        settings it runs with (overrides applied), plus where it runs. Blocking (file reads)."""
        from peterrec.bundle import BundleError, open_bundle

        state = self.state()
        out = None
        if (bundle_path(self.job_dir) / "index.json").exists():
            try:
                bundle = open_bundle(self.job_dir)
                if name in bundle.names:
                    config = bundle.config(name)
                    task = config["task"]
                    out = {"source": "bundle entry", "kind": task.get("kind"), "metric": task.get("metric"),
                           "outputs": task.get("num_classes") or task.get("target_vocab"),
                           **_flatten(config.get("settings", {}))}
            except (BundleError, OSError, ValueError):
                out = None
        if out is None:
            out = self._spec_config(state, name)
        out.update(state.resources)
        return {k: v for k, v in out.items() if v is not None}

    def _spec_config(self, state: JobState, name: str) -> dict:
        if not state.spec:
            return {"mode": state.mode}
        try:
            from tasks import load_spec

            spec = load_spec(state.spec).task(name)
        except Exception as e:  # noqa: BLE001  the spec moved or changed: say so, show what we have
            return {"mode": state.mode, "spec": f"unreadable: {e}"}
        out = {"source": "task spec", "kind": spec.kind, "metric": spec.metric, "outputs": spec.num_outputs,
               "data": str(spec.data), "overrides": spec.overrides or None, "mode": state.mode}
        settings = self.settings()
        if settings is not None:
            from peterrec.finetune import with_overrides

            out.update(_flatten(with_overrides(settings, spec.overrides or {}).to_dict()))
            out["source"] = "task spec + job settings"
        return out

    def has_bundle(self) -> bool:
        return (bundle_path(self.job_dir) / "index.json").is_file()

    def export(self, out: str | Path, force: bool = False) -> tuple[Path, int]:
        """Verify the job's bundle and pack it into one .tar archive: (its path, the number of tasks).
        Raises ValueError (a bundle that does not verify), FileExistsError or OSError."""
        from peterrec.bundle import BundleError, export_bundle, open_bundle

        try:
            path = export_bundle(self.job_dir, out, force=force)
        except BundleError as e:
            raise ValueError(str(e)) from None
        bundle = open_bundle(path)
        try:
            return path, len(bundle.tasks)
        finally:
            bundle.close()

    # Acting ------------------------------------------------------------------------------------------

    def cancel(self, task: str) -> None:
        """Stop one task (it is recorded failed, error "cancelled"; retry_failed or --resume reruns it)."""
        self._send("cancel", task)

    def retry(self, task: str) -> None:
        """Queue one failed task again (a live job only)."""
        self._send("retry", task)

    def retry_failed(self) -> None:
        """Queue the job's failed tasks again (a live job only; a finished one is rerun with --resume)."""
        self._send("retry_failed")

    def stop(self) -> None:
        """Stop the job: running tasks are interrupted, nothing more starts; --resume continues it."""
        self._send("stop")

    def _send(self, action: str, task: str | None = None) -> None:
        state = self.state()
        if state.status not in LIVE_STATUSES:
            raise RuntimeError(f"{self.job_dir}: the job is {state.status}, not running; "
                               f"rerun it with `finetune --resume --out {self.job_dir} ...`")
        if task is not None and task not in state.tasks:
            raise KeyError(f"no task {task!r} in {self.job_dir}")
        if self.job is not None:
            getattr(self.job, action)(*([task] if task is not None else []))
        else:
            st.send_command(self.job_dir, action, task)

    @staticmethod
    def _driver_alive(state: JobState) -> bool:
        if state.host == socket.gethostname() and state.pid:
            try:
                return abs(psutil.Process(state.pid).create_time() - (state.pid_started or 0.0)) < 1.0
            except psutil.NoSuchProcess:
                return False
        return time.time() - state.updated_at < STALE_S


def job_flags() -> dict[str, str]:
    """The `finetune` flag of each setting, by dotted name ("cluster.cpus": "--cpus-per-task")."""
    from orchestrator.settings import flag_name, walk

    return {name: flag_name(f, JobSettings.UNIT) for name, f in walk(JobSettings)}


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def plan_tasks(backbone: str | Path, spec: str | Path, settings):
    """The planned JobBudget of every task of a spec with these FinetuneSettings (each task's overrides
    applied): from the checkpoint's config.json and the spec file only, models built with shapes only.
    Raises CheckpointError / DataError / ValueError naming the file or task that is wrong."""
    from peterrec.checkpoint import read_checkpoint_config
    from peterrec.config import BackboneConfig
    from peterrec.efficiency import count_parameters_of_config, planned_report
    from peterrec.finetune import with_overrides
    from tasks import load_spec

    config = BackboneConfig.from_dict(read_checkpoint_config(Path(backbone).expanduser())["backbone"])
    job = load_spec(resolve_spec(spec))
    seen: dict[tuple, object] = {}
    tasks = {}
    for t in job.tasks:
        try:
            task_settings = with_overrides(settings, t.overrides or {})
        except (TypeError, ValueError) as e:
            raise ValueError(f"task {t.name!r}: {e}") from None
        key = (t.kind, t.num_outputs, task_settings.mode, task_settings.patch, task_settings.finelast_blocks)
        if key not in seen:  # same-shaped tasks are built once
            seen[key] = planned_report(config, t.kind, t.num_outputs, task_settings)
        tasks[t.name] = seen[key]
    return JobBudget(count_parameters_of_config(config), tasks, {t.name: t.kind for t in job.tasks})


def plan_budget(settings: JobSettings):
    """The parameter budget of a job's settings before it runs (the launcher's panel)."""
    return plan_tasks(settings.backbone, settings.tasks, settings.training.finetune_settings())


def launch(settings: JobSettings, started_at: float | None = None):
    """Plan a job (every check `finetune` makes) and build it, ready to `run()` on any thread: an
    orchestrator.job.FinetuneJob, whose client is `JobClient(job.plan.job_dir, job)`. Blocking (reads the
    inputs). Raises DataError, CheckpointError, FileExistsError or ValueError."""
    import time

    from orchestrator.job import FinetuneJob
    from orchestrator.plan import plan_for

    started_at = started_at or time.time()  # the job's clock starts now, not when the UI did
    settings.check()  # plan_for checks --address too (ClusterUnreachable, a SettingError)
    options = settings.options()
    plan = plan_for(settings)
    try:
        return FinetuneJob(plan, options, started_at=started_at)
    except BaseException:
        plan.release()
        raise
