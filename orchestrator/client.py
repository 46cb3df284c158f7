"""JobClient: the one API for reading a fine-tuning job's state and acting on it.

The CLI display and the TUI use it, for a job running in this process (`JobClient(job_dir, job)`) or
one started by another process (`JobClient.attach(job_dir)`): that driver rewrites JOB_DIR/state.json
about twice a second and polls JOB_DIR/control/ for commands. A finished job is reviewed the same way,
from state.json and results.parquet. No Ray here: clients never touch the cluster.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import psutil

from orchestrator import state as st
from orchestrator.results import read_results
from orchestrator.state import JobState, TaskState

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
        if not (job_dir / st.STATE_FILE).exists() and not (job_dir / "results.parquet").exists():
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

    def results(self) -> list[dict]:
        """The rows of results.parquet (finished tasks)."""
        try:
            stat = (self.job_dir / "results.parquet").stat()
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

    # Acting ------------------------------------------------------------------------------------------

    def cancel(self, task: str) -> None:
        """Stop one task (it is recorded failed, error "cancelled"; retry_failed or --resume reruns it)."""
        self._send("cancel", task)

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
