"""The progress hub: one per job, that every task reports to and the driver reads.

It holds each task's TaskState (step, loss, metric, samples/s, status, attempts, curve), its latest log
lines and the cancel flags the workers poll. Workers report fire-and-forget; the driver pulls the tasks changed since its
last look, so a 100-task job costs little per refresh. On Ray it is an actor (`start_hub`), used through
ActorHub; a job without Ray holds a LocalHub: both offer the same calls.
"""

from __future__ import annotations

import threading
import time
from collections import deque

from orchestrator.state import DONE, FAILED, LOG_LINES, RETRYING, RUNNING, TaskState, clean_number


class ProgressHub:
    """Per-task state, attempts and cancel flags (wrapped as a Ray actor by `start_hub`)."""

    def __init__(self, tasks: list[dict]):
        self.tasks = {t["name"]: TaskState.from_dict(t) for t in tasks}
        self.cancelled: set[str] = set()
        self.version = 0
        self.changed = {name: 0 for name in self.tasks}
        self.first_progress_at: float | None = None
        self.node_ids: dict[str, str | None] = {}  # task -> Ray node id of its current attempt (node_lost)
        self.logs: dict[str, deque] = {}  # name -> (version, line) of its latest LOG_LINES lines
        self.logged: dict[str, int] = {}  # name -> version of its latest line

    def _touch(self, task: TaskState) -> None:
        self.version += 1
        self.changed[task.name] = self.version
        task.updated_at = time.time()

    # Workers -------------------------------------------------------------------------------------

    def started(self, name: str, node: str, pid: int, pack: int = 1, node_id: str | None = None) -> tuple[int, bool]:
        """A new attempt begins (alone, or in a fused pack of `pack` tasks) on `node` (its Ray node id:
        `node_id`): (its number, whether the task is cancelled)."""
        task = self.tasks[name]
        self.node_ids[name] = node_id
        task.attempts += 1
        task.status, task.node, task.pid, task.pack = RUNNING, node, pid, pack
        task.step, task.total, task.loss, task.metric, task.samples_per_s, task.history = 0, 0, None, None, None, []
        task.attempt_started_at = time.time()
        task.started_at = task.started_at or task.attempt_started_at
        self._touch(task)
        return task.attempts, name in self.cancelled

    def report(self, name: str, attempt: int, step: int, total: int, epoch: int, loss: float,
               metric: float | None, samples_per_s: float) -> bool:
        """Progress of an attempt; returns True when the task is cancelled (the worker then stops)."""
        task = self.tasks[name]
        if attempt == task.attempts and task.status == RUNNING:  # a late report of an older attempt is dropped
            loss, metric = clean_number(loss), clean_number(metric)
            task.step, task.total, task.epoch, task.loss, task.metric = step, total, epoch, loss, metric
            task.samples_per_s = clean_number(samples_per_s)
            task.add_point(step, loss, metric, time.time())
            self.first_progress_at = self.first_progress_at or time.time()
            self._touch(task)
        return name in self.cancelled

    def log(self, name: str, attempt: int, lines: list[str]) -> None:
        """Lines of an attempt's log (what it printed, its progress now and then, a traceback)."""
        self.version += 1
        kept = self.logs.setdefault(name, deque(maxlen=LOG_LINES))
        kept.extend((self.version, line) for line in lines)
        self.logged[name] = self.version

    def attempt_failed(self, name: str, attempt: int, error: str) -> None:
        task = self.tasks[name]
        if attempt == task.attempts and not task.finished:  # the driver may have had the last word already
            task.status, task.error = RETRYING, error
            self._touch(task)

    # Driver --------------------------------------------------------------------------------------

    def node_lost(self, lost: dict[str, str]) -> list[str]:
        """Nodes the cluster declared dead ({node id: IP}): their running tasks show `retrying` (the driver
        runs them again once Ray reports the lost attempt); returns those tasks."""
        moved = []
        for name, task in self.tasks.items():
            node_id = self.node_ids.get(name)
            if task.status == RUNNING and node_id in lost:
                task.status, task.pid = RETRYING, None
                task.error = f"node {lost[node_id]} ({node_id[:8]}) lost; the task runs again elsewhere"
                self._touch(task)
                moved.append(name)
        return moved

    def finished(self, name: str, status: str, value: float | None = None, error: str | None = None,
                 seconds: float | None = None) -> None:
        assert status in (DONE, FAILED), status
        task = self.tasks[name]
        task.status, task.value, task.error, task.seconds = status, clean_number(value), error, seconds
        task.samples_per_s = None if status == FAILED else task.samples_per_s
        self._touch(task)

    def queued(self, names: list[str]) -> None:
        """Tasks back in the queue (retried, or interrupted by a stop): no longer cancelled, and none of
        the numbers of the attempt they left."""
        for name in names:
            self.cancelled.discard(name)
            task = self.tasks[name]
            task.requeue()
            self._touch(task)

    def cancel(self, names: list[str]) -> None:
        self.cancelled.update(names)

    def snapshot(self, since: int = 0) -> dict:
        """Tasks changed after version `since`, their log lines logged since, the current version, and
        when progress first came in."""
        tasks = {n: self.tasks[n].to_dict() for n, v in self.changed.items() if v > since}
        logs = {n: [line for v, line in self.logs[n] if v > since] for n, v in self.logged.items() if v > since}
        return {"version": self.version, "tasks": tasks, "logs": logs, "first_progress_at": self.first_progress_at}


def start_hub(task_states: list[TaskState]):
    """The hub as an actor on the driver's node (it lives as long as the driver, whatever other nodes do).
    It needs no CPU, so it never takes a slot from a task."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    actor = ray.remote(num_cpus=0, max_restarts=0, scheduling_strategy=here)(ProgressHub)
    return actor.remote([t.to_dict() for t in task_states])


class ActorHub:
    """The hub actor as the driver and the workers use it: calls look local; reports and the driver's
    updates go fire-and-forget, `started` and `snapshot` wait for their answer."""

    def __init__(self, actor):
        self.actor = actor

    def started(self, name: str, node: str, pid: int, pack: int = 1, node_id: str | None = None) -> tuple[int, bool]:
        import ray

        return ray.get(self.actor.started.remote(name, node, pid, pack, node_id))

    def report(self, *args) -> "_RayAnswer":
        return _RayAnswer(self.actor.report.remote(*args))

    def log(self, name: str, attempt: int, lines: list[str]) -> None:
        self.actor.log.remote(name, attempt, lines)

    def attempt_failed(self, name: str, attempt: int, error: str) -> None:
        self.actor.attempt_failed.remote(name, attempt, error)

    def finished(self, name: str, status: str, **fields) -> None:
        self.actor.finished.remote(name, status, **fields)

    def queued(self, names: list[str]) -> None:
        self.actor.queued.remote(names)

    def node_lost(self, lost: dict[str, str]) -> None:
        self.actor.node_lost.remote(lost)

    def cancel(self, names: list[str]) -> None:
        self.actor.cancel.remote(names)

    def snapshot(self, since: int = 0, timeout: float | None = None) -> dict:
        import ray

        return ray.get(self.actor.snapshot.remote(since), timeout=timeout)


class _RayAnswer:
    """A report's answer (is the task cancelled?), read once it has come, never waited for."""

    def __init__(self, ref):
        self.ref = ref

    def ready(self) -> bool:
        import ray

        return bool(ray.wait([self.ref], timeout=0)[0])

    def value(self) -> bool:
        import ray

        return ray.get(self.ref)


class LocalHub:
    """A ProgressHub in this process (jobs run without Ray), called from the driver's and the worker
    thread: the same interface as ActorHub, one call at a time."""

    def __init__(self, task_states: list[TaskState]):
        self.hub = ProgressHub([t.to_dict() for t in task_states])
        self.lock = threading.Lock()

    def __getattr__(self, name: str):
        method = getattr(self.hub, name)

        def call(*args, **kwargs):
            with self.lock:
                result = method(*args, **kwargs)
            return _Answered(result) if name == "report" else result

        return call


class _Answered:
    def __init__(self, value):
        self._value = value

    def ready(self) -> bool:
        return True

    def value(self):
        return self._value
