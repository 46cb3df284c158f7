"""The driver of a fine-tuning job: every task of a validated plan, on a Ray cluster or in this process.

The executor (executors.py) runs units: one task, or with --pack a fused pack of tasks (packing.py).
The driver submits them (as many as the executor has slots), collects each task's result as it comes and
writes its bundle entry and results row at once, keeps the job's state (state.json, for every client: its
pace, the cluster's use, each task's log under logs/ and its curves as TensorBoard runs) and applies
commands (cancel, retry, stop). A task that fails runs again on its own while it has
attempts left (--retries); the tasks of a unit whose worker or node was lost run again together; a task
that fails every attempt is recorded `failed` and the others go on.
"""

from __future__ import annotations

import os
import queue
import socket
import time
from collections import deque
from dataclasses import replace
from typing import Callable

import psutil

from orchestrator import state as st
from orchestrator.executors import LocalExecutor, RayExecutor, UnitCancelled, UnitLost
from orchestrator.packing import Unit, auto_candidates, packable_names, plan_units, steps_per_task
from orchestrator.pace import Pace
from orchestrator.plan import JobPlan
from orchestrator.settings import JobOptions
from orchestrator.state import JobState, TaskState
from orchestrator.tensorboard import JobBoard
from orchestrator.worker import error_text, precision_as_asked, precision_fallback

TICK_S = 0.25  # the driver's loop: results, commands, display
PERSIST_S = 0.5  # state.json (and the logs that changed) at most this often,
PERSIST_SHARE = 0.05  # and writing it takes at most this share of the driver's time (1,000 tasks: ~0.6 MB)
NODES_S = 2.0  # the cluster's node list at most this often (a lost node's tasks show `retrying`)
USAGE_S = 3.0  # the cluster's use (Ray's view of its nodes) at most this often
FAULTS_ENV = "PETERREC_FAIL_TASKS"  # "a,b:1": task a fails every attempt, b its first attempt


def injected_faults(names: list[str]) -> dict[str, int]:
    """Attempts to fail per task, from PETERREC_FAIL_TASKS ("name" = every attempt, "name:N" = the first N)."""
    out = {}
    for item in filter(None, (s.strip() for s in os.environ.get(FAULTS_ENV, "").split(","))):
        name, _, count = item.partition(":")
        out[name] = int(count) if count else 1_000_000
    return {n: out[n] for n in names if n in out}


class FinetuneJob:
    """Runs a JobPlan (on Ray, or in this process with options.in_process). `run()` blocks; cancel / retry_failed / stop may be called from any thread
    (they are queued and applied by the driver loop), or sent by another process via JOB_DIR/control/."""

    def __init__(self, plan: JobPlan, options: JobOptions, started_at: float | None = None):
        self.plan, self.options = plan, options
        created = psutil.Process().create_time()
        self.t0 = started_at or created  # start-up is measured from the command's start
        todo = {t.name for t in plan.todo}
        tasks = {}
        for spec in plan.tasks:
            task = TaskState(spec.name, spec.kind, spec.metric)
            row = plan.outputs.rows.get(spec.name)
            if spec.name not in todo:
                task.status, task.value, task.seconds, task.attempts = st.DONE, row["value"], row["seconds"], \
                    row["attempts"] or 0
            tasks[spec.name] = task
        self.state = JobState(str(plan.job_dir), mode=plan.settings.mode, spec=str(plan.job.path),
                              backbone=str(plan.backbone_path), settings=plan.settings.to_dict(),
                              pid=os.getpid(), host=socket.gethostname(),
                              pid_started=created,
                              resources={"cpus_per_task": options.cpus_per_task,
                                         "gpus_per_task": options.gpus_per_task,
                                         "max_concurrent": options.max_concurrent, "retries": options.retries,
                                         "pack": options.pack},
                              started_at=self.t0, tasks=tasks)
        self.todo = [t.name for t in plan.todo]
        self.faults = injected_faults(self.todo)
        self.commands: queue.Queue = queue.Queue()
        self.stopping = False
        self.snapshot = self.state.to_dict()  # what other threads read (JobClient): replaced, never mutated
        self._seen_version = 0
        self._persisted_at = self._persist_cost = 0.0
        self._nodes_at, self._lost_nodes = 0.0, {}
        self.logs: dict[str, deque] = {name: deque(st.read_task_log(plan.job_dir, name), maxlen=st.LOG_LINES)
                                       for name in self.todo}  # a resumed job's tasks keep their earlier lines
        self._logs_changed: set[str] = set()
        self._changed: set[str] = set()  # tasks changed since the last look (_observe)
        self.submitted: dict[str, float] = {}  # task -> when its current attempt was handed to the executor
        self.pace: Pace | None = None
        self.board = JobBoard(plan.job_dir)
        self._usage_at = -float("inf")

    # Actions (any thread) ------------------------------------------------------------------------

    def cancel(self, task: str) -> None:
        self.commands.put({"action": "cancel", "task": task})

    def retry(self, task: str) -> None:
        self.commands.put({"action": "retry", "task": task})

    def retry_failed(self) -> None:
        self.commands.put({"action": "retry_failed", "task": None})

    def stop(self) -> None:
        self.commands.put({"action": "stop", "task": None})

    # The driver loop -------------------------------------------------------------------------------

    def run(self, on_tick: Callable[[JobState], None] | None = None) -> JobState:
        """Run every task still to do; returns the final state. Ray is started (or joined) here and shut
        down at the end when this call started it (no Ray with options.in_process)."""
        plan, options = self.plan, self.options
        self._timing("validated")
        self._persist(force=True)
        if not self.todo:  # nothing left to run (a resumed, finished job): no cluster needed
            self.state.status = st.JOB_DONE
            self._timing("finished")
            self._persist(force=True)
            plan.release()
            return self.state
        executor = LocalExecutor(options) if options.in_process else RayExecutor(options)
        try:
            self.state.cluster = executor.start(plan, list(self.state.tasks.values()), self._timing)
            self.state.address = executor.address
            self.state.status = st.JOB_RUNNING
            self._resolve_precision(executor)
            units = self._units(executor)
            self._drive(executor, units, on_tick)
            self.state.status = st.STOPPED if self.stopping else st.JOB_DONE
        except BaseException:
            self.state.status = st.STOPPED
            raise
        finally:
            self._timing("finished")
            self.state.pace = {}  # a job that is over has no pace
            self._persist(force=True)
            self.board.close()
            executor.shutdown()
            plan.release()
            if on_tick:
                on_tick(self.state)
        return self.state

    def _resolve_precision(self, executor) -> None:
        """--precision auto, once per job: measured on a worker (its device and threads) with the first task
        that asks for it; every such task then trains in the choice (and packs group by precision)."""
        plan = self.plan
        auto = [n for n in self.todo if plan.task_settings[n].train.precision == "auto"]
        if not auto:
            choice = precision_as_asked(plan.settings.train.precision)
        else:
            steps = steps_per_task(auto, plan.task_settings, plan.task_data)
            work_steps = sum(steps.values()) // executor.slots(self.state.cluster)
            try:
                choice = executor.measure_precision(plan, auto[:1], work_steps)
            except Exception as e:  # noqa: BLE001  a speed choice: fp32 always works, so the job goes on
                choice = precision_fallback(e)
            for name in auto:
                task = plan.task_settings[name]
                plan.task_settings[name] = replace(task, train=replace(task.train, precision=choice["precision"]))
            self._timing("precision_measured")
        self.state.resources.update(precision=choice["precision"], precision_reason=choice["reason"],
                                    precision_measured=choice["samples_per_s"])

    def _units(self, executor) -> list[Unit]:
        """The job's units: lone tasks, or packs of a size given or measured (--pack auto)."""
        options, plan = self.options, self.plan
        settings = plan.task_settings
        steps = steps_per_task(self.todo, settings, plan.task_data)
        slots = executor.slots(self.state.cluster)
        k = options.pack
        if k == "auto":
            candidates, work_steps = auto_candidates(packable_names(self.todo, settings), steps, slots)
            if len(candidates) < 2:
                choice = {"k": 1, "reason": "fewer than two packable tasks per worker", "samples_per_s": {}}
            else:
                choice = executor.measure(plan, candidates, work_steps)
            k = choice["k"]
            self.state.resources.update(pack_reason=choice["reason"], pack_measured=choice["samples_per_s"])
            self._timing("pack_measured")
        units = plan_units(self.todo, settings, steps, k, slots)
        self.state.resources["pack_size"] = max(len(u.names) for u in units)
        self.pace = Pace(steps, {n: settings[n].train.batch_size for n in self.todo})
        return units

    def _drive(self, executor, units: list[Unit], on_tick) -> None:
        self.hub = hub = executor.hub
        pending = deque(units)
        in_flight: dict = {}  # executor handle -> Unit
        while True:
            self._apply_commands(executor, pending, in_flight)
            while pending and not self.stopping and (not executor.max_in_flight
                                                     or len(in_flight) < executor.max_in_flight):
                unit = pending.popleft()
                now = time.time()
                for name in unit.names:
                    self.submitted[name] = self.state.tasks[name].submitted_at = now
                in_flight[executor.submit(unit, self.plan, self.faults)] = unit
            if not in_flight:
                self._pull(hub)  # the last log lines and numbers
                self._observe(executor)
                break
            ready = executor.wait(list(in_flight), TICK_S)
            if ready:
                self._pull(hub)  # attempts and timings of the finished tasks
            for handle in ready:
                self._collect(executor, handle, in_flight, pending)
            self._watch_nodes(executor)
            self._pull(hub)
            self._observe(executor)
            self._persist()
            if on_tick:
                on_tick(self.state)

    def _watch_nodes(self, executor) -> None:
        """Tasks on a node the cluster declared dead show `retrying` at once: Ray reports their lost attempts
        about when it declares the node dead, but runs them again only when a CPU is free."""
        now = time.monotonic()
        if now - self._nodes_at < NODES_S:
            return
        self._nodes_at = now
        lost = {k: v for k, v in executor.lost_nodes().items() if k not in self._lost_nodes}
        if lost:
            self._lost_nodes.update(lost)
            self.hub.node_lost(lost)
            self.state.cluster["lost_nodes"] = [f"{ip} ({node[:8]})" for node, ip in self._lost_nodes.items()]

    def _collect(self, executor, handle, in_flight: dict, pending: deque) -> None:
        """Record the next result the unit has given; when it has no more (or was lost or cancelled), what
        happens to its tasks that gave none."""
        unit = in_flight[handle]
        try:
            got = executor.take(handle, unit)
        except UnitCancelled:
            in_flight.pop(handle)
            self._unreported(unit, {"cancelled": True}, pending)
            return
        except UnitLost as e:  # its worker or node was lost
            in_flight.pop(handle)
            self._unreported(unit, {"error": str(e)}, pending)
            return
        if got is None:
            in_flight.pop(handle)
            self._unreported(unit, {"error": "the unit ended without a result for this task"}, pending)
            return
        name, out = got
        unit.reported.add(name)
        self._record(name, out, pending)
        if not unit.packed:  # its one result is in
            in_flight.pop(handle)

    def _unreported(self, unit: Unit, out: dict, pending: deque) -> None:
        """A unit's tasks without a result: run again together while they have attempts left."""
        missing = [n for n in unit.names if n not in unit.reported]
        again = [n for n in missing if "error" in out and self._attempts_left(n) > 0]
        if len(again) > 1 and not self.stopping:
            self._retrying(again, out["error"])
            pending.appendleft(Unit(again))
            missing = [n for n in missing if n not in again]
        for name in missing:
            self._record(name, out, pending)

    def _record(self, name: str, out: dict, pending: deque) -> None:
        """One task's outcome: bundle + row when it succeeded; a failure runs it again alone while it has
        attempts left."""
        spec, settings, outputs = self.plan.spec(name), self.plan.task_settings[name], self.plan.outputs
        task = self.state.tasks[name]
        attempts = max(1, task.attempts, out.get("attempt", 0))
        if "error" in out:
            left = self._attempts_left(name, out.get("attempt", 0))
            if left > 0 and not self.stopping:
                self._log(name, f"attempt {attempts} failed: {out['error']}; it runs again ({left} attempt"
                                f"{'s' if left != 1 else ''} left)")
                self._retrying([name], out["error"], out.get("attempt"))
                pending.appendleft(Unit([name]))
                return
            self._log(name, f"attempt {attempts} failed: {out['error']}; no attempt left: the task is failed")
            self._failed(name, out["error"], time.time() - (task.started_at or time.time()), attempts)
            return
        if out.get("cancelled"):
            if self.stopping:  # a stopped job leaves the task to --resume
                self._log(name, "interrupted: the job was stopped; `finetune --resume` runs it again")
                self._requeue([name])
            else:
                self._log(name, "cancelled")
                self._failed(name, "cancelled", out.get("seconds"), attempts)
            return
        try:
            row = outputs.done(spec, settings, out["state"], out["summary"], out["seconds"], attempts)
        except Exception as e:  # the bundle could not take it: a failure of this task, not of the job
            outputs.failed(spec, settings.mode, f"writing the bundle: {error_text(e)}", out["seconds"], attempts)
            self._finished(name, st.FAILED, error=error_text(e), seconds=out["seconds"])
            return
        self._finished(name, st.DONE, value=row["value"], seconds=row["seconds"])
        self._timing("first_result", once=True)

    def _retrying(self, names: list[str], error: str, attempt: int | None = None) -> None:
        """Tasks that run again show `retrying` until their next attempt starts (a lost worker's task would
        otherwise show `running` with a dead pid while it waits for a free CPU)."""
        for name in names:
            self.hub.attempt_failed(name, attempt or self.state.tasks[name].attempts, error)

    def _attempts_left(self, name: str, attempt: int = 0) -> int:
        """Attempts a task may still make: --retries + 1 in all, packed or alone."""
        return self.options.retries + 1 - max(1, self.state.tasks[name].attempts, attempt)

    def _failed(self, name: str, error: str, seconds: float | None, attempts: int) -> None:
        """Record a task's final failure: its row (seconds 0 when unknown) and its state."""
        self.plan.outputs.failed(self.plan.spec(name), self.plan.task_settings[name].mode, error,
                                 0.0 if seconds is None else seconds, attempts)
        self._finished(name, st.FAILED, error=error, seconds=seconds)

    def _finished(self, name: str, status: str, **fields) -> None:
        self.hub.finished(name, status, **fields)
        task = self.state.tasks[name]
        task.status = status
        task.value = st.clean_number(fields.get("value"))
        task.error, task.seconds = fields.get("error"), fields.get("seconds")
        self._changed.add(name)
        self._persist()  # state.json within PERSIST_S: rewriting all of it per finished task made a job O(tasks^2)

    def _requeue(self, names: list[str]) -> None:
        """Tasks back in the queue: the same word in the hub, this state, and results.parquet (which
        loses their failed rows), so every view shows them queued."""
        self.hub.queued(names)
        for name in names:
            self.state.tasks[name].requeue()
            self._changed.add(name)
        self.plan.outputs.requeued(names)
        self._persist(force=True)

    def _apply_commands(self, executor, pending: deque, in_flight: dict) -> None:
        commands = st.take_commands(self.plan.job_dir)
        while not self.commands.empty():
            commands.append(self.commands.get_nowait())
        for command in commands:
            action, name = command["action"], command.get("task")
            if action == "stop":
                self.stopping = True
                self.state.status = st.STOPPING
                pending.clear()
                self.hub.cancel(list(self.state.tasks))
                self._cancel_queued(executor, in_flight)
            elif action == "cancel" and name in self.state.tasks and not self.state.tasks[name].finished:
                unit = next((u for u in pending if name in u.names), None)
                if unit is not None:  # not submitted yet: taken out of its unit
                    unit.names.remove(name)
                    if not unit.names:
                        pending.remove(unit)
                    self._failed(name, "cancelled", 0.0, self.state.tasks[name].attempts)
                else:
                    self.hub.cancel([name])
                    self._cancel_queued(executor, {h: u for h, u in in_flight.items() if u.names == [name]})
            elif action in ("retry", "retry_failed") and not self.stopping:
                names = [n for n, t in self.state.tasks.items() if t.status == st.FAILED
                         and (action == "retry_failed" or n == name)]
                for n in names:
                    self._log(n, "queued again (retry)")
                self._requeue(names)
                pending.extend(Unit([n]) for n in names)

    def _cancel_queued(self, executor, in_flight: dict) -> None:
        """Units submitted but not started yet are taken off the executor's queue (a pack only when all of
        its tasks are cancelled: stop); running ones stop at their next progress report (the hub's
        cancel flag), and a pack that starts later skips its cancelled tasks."""
        for handle, unit in in_flight.items():
            if all(self.state.tasks[n].status == st.QUEUED for n in unit.names):
                executor.cancel(handle)

    # State -------------------------------------------------------------------------------------------

    def _pull(self, hub) -> None:
        """Merge the tasks the hub changed since the last pull into self.state, and their new log lines."""
        snapshot = hub.snapshot(self._seen_version)
        self._seen_version = snapshot["version"]
        for name, task in snapshot["tasks"].items():
            mine = self.state.tasks[name]
            fresh = TaskState.from_dict(task)
            if mine.finished and not fresh.finished:  # the driver's word on the outcome wins
                fresh = replace(fresh, status=mine.status, value=mine.value, error=mine.error, seconds=mine.seconds)
            fresh.submitted_at = self.submitted.get(name)
            self.state.tasks[name] = fresh
            self._changed.add(name)
        for name, lines in snapshot.get("logs", {}).items():
            self.logs.setdefault(name, deque(maxlen=st.LOG_LINES)).extend(lines)
            self._logs_changed.add(name)
        if snapshot["first_progress_at"] and "first_progress" not in self.state.timings:
            self.state.timings["first_progress"] = round(snapshot["first_progress_at"] - self.t0, 3)
        if any(self.state.tasks[n].attempts for n in self.todo):
            self._timing("first_start", once=True)

    def _log(self, name: str, line: str) -> None:
        """A line of the driver's own in a task's log (what became of an attempt)."""
        self.logs.setdefault(name, deque(maxlen=st.LOG_LINES)).append(line)
        self._logs_changed.add(name)

    def _observe(self, executor) -> None:
        """After each pull: the job's pace, the TensorBoard points of the tasks that changed, and now and then
        the cluster's use. None of them may stop the job: a problem is recorded where a view shows it."""
        now = time.time()
        changed, self._changed = self._changed, set()
        if self.pace is not None:
            self.pace.update(self.state.tasks, now)
            self.state.pace = self.pace.figures()
        try:
            self.board.update(self.state.tasks, changed)
        except Exception as e:  # noqa: BLE001  a full disk, say: the job goes on without its curves
            self.state.resources["tensorboard_error"] = error_text(e)
        if now - self._usage_at >= USAGE_S:
            self._usage_at = now
            try:
                self.state.usage = executor.usage() or {}
            except Exception as e:  # noqa: BLE001  Ray's status call timed out: said, tried again later
                self.state.usage = {**self.state.usage, "error": error_text(e), "at": now}

    def _timing(self, what: str, once: bool = False) -> None:
        if not (once and what in self.state.timings):
            self.state.timings[what] = round(time.time() - self.t0, 3)

    def _persist(self, force: bool = False) -> None:
        """Publish the state to this process's clients (every call) and to state.json (at most every
        PERSIST_S, or as often as its writing takes PERSIST_SHARE of the time, or when forced)."""
        self.snapshot = self.state.to_dict()
        now = time.monotonic()
        if force or now - self._persisted_at >= max(PERSIST_S, self._persist_cost / PERSIST_SHARE):
            self._persisted_at = now
            self.state.updated_at = time.time()
            st.write_state(self.plan.job_dir, self.state)
            changed, self._logs_changed = self._logs_changed, set()
            for name in changed:
                st.write_task_log(self.plan.job_dir, name, self.logs[name])
            self._persist_cost = time.monotonic() - now
