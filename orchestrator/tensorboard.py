"""TensorBoard event files of a job, written by its driver (which sees every task's progress):
JOB_DIR/tensorboard/<task>/, one run per task, so `tensorboard --logdir JOB_DIR` shows them all.

Per task: `loss/train` at each curve point, `valid/<metric>` at each evaluation and `test/<metric>` once it is
done (mrr@5 is written mrr_at_5: TensorBoard tags take no @), at the step and wall clock the worker reported
them. tensorboardX (which Ray Tune depends on) writes
the standard format. A writer is open only while its task has points to write (at most the tasks running at
once); each attempt writes its own event file in the task's run.
"""

from __future__ import annotations

from pathlib import Path

from orchestrator.state import DONE, FINISHED, TaskState

BOARD_DIR = "tensorboard"


def metric_tag(metric: str) -> str:
    return metric.replace("@", "_at_")


def board_path(job_dir: str | Path) -> Path:
    return Path(job_dir) / BOARD_DIR


class JobBoard:
    """`update(tasks)` after every pull writes the points that are new since the last call."""

    def __init__(self, job_dir: str | Path):
        self.root = board_path(job_dir)
        self.writers: dict[str, object] = {}  # task -> SummaryWriter of its current attempt
        self.written: dict[str, tuple[int, int, int]] = {}  # task -> (attempt, last loss step, last valid step)
        self.tested: set[str] = set()  # tasks whose test metric is written

    def update(self, tasks: dict[str, TaskState], names) -> None:
        """Write what `names` (the tasks that changed) have new; close the writers of finished tasks."""
        for name in names:
            task = tasks[name]
            attempt, loss_step, valid_step = self.written.get(name, (0, -1, -1))
            if task.attempts != attempt:  # a new attempt: its own event file
                self._close(name)
                attempt, loss_step, valid_step = task.attempts, -1, -1
            for point in task.history:  # a point may come back with its validation metric added
                step, loss, metric = point[:3]
                walltime = point[3] if len(point) > 3 else None
                if loss is not None and step > loss_step:
                    self._writer(name, attempt).add_scalar("loss/train", loss, step, walltime=walltime)
                    loss_step = step
                if metric is not None and step > valid_step:
                    self._writer(name, attempt).add_scalar(f"valid/{metric_tag(task.metric_name)}", metric, step,
                                                           walltime=walltime)
                    valid_step = step
            if task.status == DONE and task.value is not None and name not in self.tested:
                self.tested.add(name)
                self._writer(name, attempt).add_scalar(f"test/{metric_tag(task.metric_name)}", task.value,
                                                       max(task.step, loss_step, 0))
            self.written[name] = (attempt, loss_step, valid_step)
            if task.status in FINISHED:
                self._close(name)

    def _writer(self, name: str, attempt: int):
        if name not in self.writers:
            from tensorboardX import SummaryWriter

            self.writers[name] = SummaryWriter(str(self.root / name), flush_secs=5,
                                               filename_suffix=f".attempt{attempt}")
        return self.writers[name]

    def _close(self, name: str) -> None:
        writer = self.writers.pop(name, None)
        if writer is not None:
            writer.close()

    def close(self) -> None:
        for name in list(self.writers):
            self._close(name)
