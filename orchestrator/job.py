"""The driver of a fine-tuning job: every task of a validated plan, in parallel on a Ray cluster.

One put of the backbone and of the sequences, one progress hub, then tasks submitted with their
resources (and a concurrency cap, if any) and collected with ray.wait as they finish: each one's
bundle entry and results row is written at once. Ray retries failed attempts (exceptions and lost
workers or nodes alike); a task that fails every attempt is recorded `failed` and the others go on.
With --pack, tasks are submitted in fused packs (packing.py), which Ray does not retry: a task that
fails inside a pack runs again on its own, and the tasks of a pack whose worker was lost run again
together, each with the attempts it has left.
"""

from __future__ import annotations

import os
import queue
import socket
import time
from collections import deque
from dataclasses import dataclass, replace
from typing import Callable

import psutil
import ray

from orchestrator import state as st
from orchestrator.cluster import connect
from orchestrator.hub import start_hub
from orchestrator.packing import (Unit, measure_on_worker, packable_names, parse_pack, plan_units, steps_per_task,
                                  worker_slots)
from orchestrator.plan import JobPlan
from orchestrator.shared import share
from orchestrator.state import JobState, TaskState
from orchestrator.worker import error_text, run_pack, run_task

TICK_S = 0.25  # the driver's loop: results, commands, display
PERSIST_S = 0.5  # state.json at most this often
FAULTS_ENV = "PETERREC_FAIL_TASKS"  # "a,b:1": task a fails every attempt, b its first attempt


@dataclass
class JobOptions:
    """Where and how the tasks run."""

    address: str | None = None  # join this cluster; None: start an embedded loopback one
    cpus_per_task: float = 1.0
    gpus_per_task: float = 0.0  # fractions share a GPU
    max_concurrent: int = 0  # workers (tasks or packs) in flight at once; 0 = as many as resources allow
    retries: int = 2  # extra attempts of a failed task
    pack: int | str = 1  # most tasks trained together per worker; "auto": measured at the job's start
    num_cpus: int | None = None  # embedded cluster size (default: every core)
    num_gpus: int | None = None
    object_store_mb: int | None = None

    def __post_init__(self):
        problems = []
        if not self.cpus_per_task > 0:
            problems.append(f"--cpus-per-task must be > 0 (got {self.cpus_per_task})")
        if self.gpus_per_task < 0 or (self.gpus_per_task > 1 and self.gpus_per_task != int(self.gpus_per_task)):
            problems.append(f"--gpus-per-task must be a fraction of one GPU or a whole number (got "
                            f"{self.gpus_per_task})")
        if self.max_concurrent < 0:
            problems.append(f"--max-concurrent must be >= 0 (got {self.max_concurrent})")
        if self.retries < 0:
            problems.append(f"--retries must be >= 0 (got {self.retries})")
        try:
            self.pack = parse_pack(self.pack)
        except ValueError as e:
            problems.append(str(e))
        if problems:
            raise ValueError("; ".join(problems))


def injected_faults(names: list[str]) -> dict[str, int]:
    """Attempts to fail per task, from PETERREC_FAIL_TASKS ("name" = every attempt, "name:N" = the first N)."""
    out = {}
    for item in filter(None, (s.strip() for s in os.environ.get(FAULTS_ENV, "").split(","))):
        name, _, count = item.partition(":")
        out[name] = int(count) if count else 1_000_000
    return {n: out[n] for n in names if n in out}


class FinetuneJob:
    """Runs a JobPlan on Ray. `run()` blocks; cancel / retry_failed / stop may be called from any thread
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
                              backbone=str(plan.backbone_path), pid=os.getpid(), host=socket.gethostname(),
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
        self._persisted_at = 0.0

    # Actions (any thread) ------------------------------------------------------------------------

    def cancel(self, task: str) -> None:
        self.commands.put({"action": "cancel", "task": task})

    def retry_failed(self) -> None:
        self.commands.put({"action": "retry_failed", "task": None})

    def stop(self) -> None:
        self.commands.put({"action": "stop", "task": None})

    # The driver loop -------------------------------------------------------------------------------

    def run(self, on_tick: Callable[[JobState], None] | None = None) -> JobState:
        """Run every task still to do; returns the final state. Ray is started (or joined) here and
        shut down at the end when this call started it."""
        plan, options = self.plan, self.options
        self._timing("validated")
        self._persist(force=True)
        cluster = None
        if not self.todo:  # nothing left to run (a resumed, finished job): no cluster needed
            self.state.status = st.JOB_DONE
            self._timing("finished")
            self._persist(force=True)
            plan.release()
            return self.state
        try:
            cluster = connect(options.address, options.num_cpus, options.num_gpus, options.object_store_mb)
            self.state.address = cluster.address
            self.state.cluster = cluster.resources()
            self._timing("ray_ready")
            self._check_fits(self.state.cluster)
            refs = share(plan.backbone, plan.sequences)  # the one put of each per job
            self._timing("shared")
            hub = start_hub(list(self.state.tasks.values()))
            self.state.status = st.JOB_RUNNING
            units = self._units(refs, self.state.cluster)
            self._drive(refs, hub, units, on_tick)
            self.state.status = st.STOPPED if self.stopping else st.JOB_DONE
        except BaseException:
            self.state.status = st.STOPPED
            raise
        finally:
            self._timing("finished")
            self._persist(force=True)
            if cluster is not None:
                cluster.shutdown()
            plan.release()
            if on_tick:
                on_tick(self.state)
        return self.state

    def _units(self, refs, cluster: dict) -> list[Unit]:
        """The job's Ray tasks: lone tasks, or packs of a size given or measured (--pack auto)."""
        options, plan = self.options, self.plan
        settings = plan.task_settings
        steps = steps_per_task(self.todo, settings, plan.task_data)
        slots = worker_slots(cluster, options.cpus_per_task, options.gpus_per_task, options.max_concurrent)
        k = options.pack
        if k == "auto":
            choice = measure_on_worker(refs, plan, packable_names(self.todo, settings), steps, slots,
                                       options.cpus_per_task, options.gpus_per_task)
            k = choice["k"]
            self.state.resources.update(pack_reason=choice["reason"], pack_measured=choice["samples_per_s"])
            self._timing("pack_measured")
        units = plan_units(self.todo, settings, steps, k, slots, options.retries)
        self.state.resources["pack_size"] = max(len(u.names) for u in units)
        return units

    def _drive(self, refs, hub, units: list[Unit], on_tick) -> None:
        options, plan = self.options, self.plan
        resources = {"num_cpus": options.cpus_per_task, "num_gpus": options.gpus_per_task}
        alone = ray.remote(run_task)
        # A pack streams each task's result as it leaves (a Ray generator). Ray does not retry it: its
        # tasks' errors come back as results, and when its worker is lost the driver runs the tasks that
        # had not come back again, with the attempts they have left (_lost_pack).
        packed = ray.remote(run_pack).options(**resources, max_retries=0)

        def submit(unit: Unit):
            names = unit.names
            if not unit.packed:
                name = names[0]
                return alone.options(**resources, max_retries=unit.retries, retry_exceptions=True).remote(
                    refs, plan.spec(name), plan.task_data[name], plan.task_settings[name], hub,
                    options.cpus_per_task, options.gpus_per_task, self.faults.get(name, 0))
            return packed.remote(refs, [plan.spec(n) for n in names], [plan.task_data[n] for n in names],
                                 [plan.task_settings[n] for n in names], hub, options.cpus_per_task,
                                 options.gpus_per_task, [self.faults.get(n, 0) for n in names])

        pending = deque(units)
        in_flight: dict = {}  # ObjectRef (a lone task) or ObjectRefGenerator (a pack) -> Unit
        while True:
            self._apply_commands(hub, pending, in_flight)
            while pending and not self.stopping and (not options.max_concurrent
                                                     or len(in_flight) < options.max_concurrent):
                unit = pending.popleft()
                in_flight[submit(unit)] = unit
            if not in_flight:
                break
            ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=TICK_S)
            if ready:
                ready, _ = ray.wait(list(in_flight), num_returns=len(in_flight), timeout=0)
                self._pull(hub)  # attempts and timings of the finished tasks
            for ref in ready:
                if in_flight[ref].packed:
                    self._collect_pack(ref, in_flight, hub, pending)
                else:
                    self._collect(ref, in_flight.pop(ref), hub, pending)
            self._pull(hub)
            self._persist()
            if on_tick:
                on_tick(self.state)

    def _collect(self, ref, unit: Unit, hub, pending: deque) -> None:
        """Record a lone task: its outcome, or its final failure."""
        name = unit.names[0]
        try:
            out = ray.get(ref)
        except ray.exceptions.TaskCancelledError:
            out = {"cancelled": True}
        except ray.exceptions.RayError as e:  # every attempt failed: the task's error or a lost worker/node
            task = self.state.tasks[name]
            self._failed(hub, name, error_text(e), time.time() - (task.started_at or time.time()),
                         max(1, task.attempts))
            return
        self._record(name, out, hub, pending)

    def _collect_pack(self, gen, in_flight: dict, hub, pending: deque) -> None:
        """Record the next task a pack has yielded; at the pack's end (or its loss), the tasks it did
        not report."""
        unit = in_flight[gen]
        try:
            name, out = ray.get(next(gen))
        except StopIteration:
            in_flight.pop(gen)
            self._lost_pack(unit, {"error": "the pack ended without a result for this task"}, hub, pending)
            return
        except ray.exceptions.TaskCancelledError:
            in_flight.pop(gen)
            self._lost_pack(unit, {"cancelled": True}, hub, pending)
            return
        except ray.exceptions.RayError as e:  # its worker or node was lost
            in_flight.pop(gen)
            self._lost_pack(unit, {"error": error_text(e)}, hub, pending)
            return
        unit.reported.add(name)
        self._record(name, out, hub, pending)

    def _lost_pack(self, unit: Unit, out: dict, hub, pending: deque) -> None:
        """A pack's tasks without a result: run again together while they have attempts left."""
        missing = [n for n in unit.names if n not in unit.reported]
        again = [n for n in missing if "error" in out and self._attempts_left(n) > 0]
        if len(again) > 1 and not self.stopping:
            pending.appendleft(Unit(again, 0))
            missing = [n for n in missing if n not in again]
        for name in missing:
            self._record(name, out, hub, pending)

    def _record(self, name: str, out: dict, hub, pending: deque) -> None:
        """One task's outcome: bundle + row when it succeeded; a failure in a pack runs it again alone
        while it has attempts left."""
        spec, settings, outputs = self.plan.spec(name), self.plan.task_settings[name], self.plan.outputs
        task = self.state.tasks[name]
        attempts = max(1, task.attempts, out.get("attempt", 0))
        if "error" in out:
            left = self._attempts_left(name, out.get("attempt", 0))
            if left > 0 and not self.stopping:
                pending.appendleft(Unit([name], left - 1))
                return
            self._failed(hub, name, out["error"], time.time() - (task.started_at or time.time()), attempts)
            return
        if out.get("cancelled"):
            if self.stopping:  # a stopped job leaves the task to --resume
                hub.queued.remote([name])
                task.status = st.QUEUED
            else:
                self._failed(hub, name, "cancelled", out.get("seconds"), attempts)
            return
        try:
            row = outputs.done(spec, settings, out["state"], out["summary"], out["seconds"], attempts)
        except Exception as e:  # the bundle could not take it: a failure of this task, not of the job
            outputs.failed(spec, settings.mode, f"writing the bundle: {error_text(e)}", out["seconds"], attempts)
            self._finished(hub, name, st.FAILED, error=error_text(e), seconds=out["seconds"])
            return
        self._finished(hub, name, st.DONE, value=row["value"], seconds=row["seconds"])
        self._timing("first_result", once=True)

    def _attempts_left(self, name: str, attempt: int = 0) -> int:
        """Attempts a task may still make: --retries + 1 in all, packed or alone."""
        return self.options.retries + 1 - max(1, self.state.tasks[name].attempts, attempt)

    def _failed(self, hub, name: str, error: str, seconds: float | None, attempts: int) -> None:
        """Record a task's final failure: its row (seconds 0 when unknown) and its state."""
        self.plan.outputs.failed(self.plan.spec(name), self.plan.task_settings[name].mode, error,
                                 0.0 if seconds is None else seconds, attempts)
        self._finished(hub, name, st.FAILED, error=error, seconds=seconds)

    def _finished(self, hub, name: str, status: str, **fields) -> None:
        hub.finished.remote(name, status, **fields)
        task = self.state.tasks[name]
        task.status = status
        task.value = st.clean_number(fields.get("value"))
        task.error, task.seconds = fields.get("error"), fields.get("seconds")
        self._persist(force=True)

    def _apply_commands(self, hub, pending: deque, in_flight: dict) -> None:
        commands = st.take_commands(self.plan.job_dir)
        while not self.commands.empty():
            commands.append(self.commands.get_nowait())
        for command in commands:
            action, name = command["action"], command.get("task")
            if action == "stop":
                self.stopping = True
                self.state.status = st.STOPPING
                pending.clear()
                hub.cancel.remote(list(self.state.tasks))
                self._cancel_queued(in_flight)
            elif action == "cancel" and name in self.state.tasks and not self.state.tasks[name].finished:
                unit = next((u for u in pending if name in u.names), None)
                if unit is not None:  # not submitted yet: taken out of its unit
                    unit.names.remove(name)
                    if not unit.names:
                        pending.remove(unit)
                    self._failed(hub, name, "cancelled", 0.0, self.state.tasks[name].attempts)
                else:
                    hub.cancel.remote([name])
                    self._cancel_queued({r: u for r, u in in_flight.items() if u.names == [name]})
            elif action == "retry_failed" and not self.stopping:
                names = [n for n, t in self.state.tasks.items() if t.status == st.FAILED]
                hub.queued.remote(names)
                for n in names:
                    self.state.tasks[n].status = st.QUEUED
                pending.extend(Unit([n], self.options.retries) for n in names)

    def _cancel_queued(self, in_flight: dict) -> None:
        """Ray tasks submitted but not started yet are taken off Ray's queue (a pack only when all of
        its tasks are cancelled: stop); running ones stop at their next progress report (the hub's
        cancel flag), and a pack that starts later skips its cancelled tasks."""
        for ref, unit in in_flight.items():
            if all(self.state.tasks[n].status == st.QUEUED for n in unit.names):
                ray.cancel(ref)

    # State -------------------------------------------------------------------------------------------

    def _pull(self, hub) -> None:
        """Merge the tasks the hub changed since the last pull into self.state."""
        snapshot = ray.get(hub.snapshot.remote(self._seen_version))
        self._seen_version = snapshot["version"]
        for name, task in snapshot["tasks"].items():
            mine = self.state.tasks[name]
            fresh = TaskState.from_dict(task)
            if mine.finished and not fresh.finished:  # the driver's word on the outcome wins
                fresh = replace(fresh, status=mine.status, value=mine.value, error=mine.error, seconds=mine.seconds)
            self.state.tasks[name] = fresh
        if snapshot["first_progress_at"] and "first_progress" not in self.state.timings:
            self.state.timings["first_progress"] = round(snapshot["first_progress_at"] - self.t0, 3)
        if any(self.state.tasks[n].attempts for n in self.todo):
            self._timing("first_start", once=True)

    def _timing(self, what: str, once: bool = False) -> None:
        if not (once and what in self.state.timings):
            self.state.timings[what] = round(time.time() - self.t0, 3)

    def _persist(self, force: bool = False) -> None:
        """Publish the state to this process's clients (every call) and to state.json (at most every
        PERSIST_S, or when forced)."""
        self.snapshot = self.state.to_dict()
        now = time.monotonic()
        if force or now - self._persisted_at >= PERSIST_S:
            self._persisted_at = now
            self.state.updated_at = time.time()
            st.write_state(self.plan.job_dir, self.state)

    def _check_fits(self, cluster: dict) -> None:
        """A task that needs more than the cluster has would wait forever: say so instead."""
        cpus, gpus = self.options.cpus_per_task, self.options.gpus_per_task
        if cpus > cluster["cpus"] or gpus > cluster["gpus"]:
            raise ValueError(f"a task needs {cpus:g} CPU and {gpus:g} GPU but the cluster has {cluster['cpus']:g} "
                             f"CPU and {cluster['gpus']:g} GPU in all; lower --cpus-per-task / --gpus-per-task")
