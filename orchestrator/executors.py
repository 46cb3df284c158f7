"""Where a job's units (one task, or a fused pack) run: on a Ray cluster, or in this process without Ray.

The driver (job.py) is the same for both: it submits units, waits for any of them to have a result, takes
results one at a time and cancels what it must. An executor hands out each unit's results as
(task name, what orchestrator.worker returns), raises UnitLost when the unit's worker or node was lost,
UnitCancelled when it was cancelled before it ran, and None once the unit has nothing more to give.

RayExecutor: one put of the backbone and of the sequences, a progress-hub actor, each unit a Ray task (a
pack streams its tasks back as a Ray generator). Nothing is retried by Ray: the driver runs failed tasks
again with the attempts they have left, on either executor.
LocalExecutor: the same worker functions on one thread of this process, one unit after another.
"""

from __future__ import annotations

import os
import queue
import socket
import threading
from collections import deque

from orchestrator.cluster import connect, lost_nodes, node_id, node_label
from orchestrator.hub import ActorHub, LocalHub, start_hub
from orchestrator.packing import Unit, worker_slots
from orchestrator.shared import share, shared_backbone, shared_sequences
from orchestrator.worker import measure_pack, measure_precision, run_pack, run_task, worker_device


class UnitLost(Exception):
    """The unit's worker or node was lost (or its process died): its unreported tasks have no result."""


class UnitCancelled(Exception):
    """The unit was taken off the queue before it started."""


# On a Ray worker ---------------------------------------------------------------------------------------------


def _ray_task(refs, hub, spec, data, settings, cpus: float, gpus: float, fails: int) -> dict:
    device = worker_device(cpus, gpus)
    return run_task(hub, lambda: (shared_backbone(refs, device), shared_sequences(refs)), spec, data, settings,
                    device, (node_label(), os.getpid(), node_id()), fails)


def _ray_pack(refs, hub, specs, datas, settings, cpus: float, gpus: float, fails: list[int]):
    device = worker_device(cpus, gpus)
    yield from run_pack(hub, lambda: (shared_backbone(refs, device), shared_sequences(refs)), specs, datas,
                        settings, device, (node_label(), os.getpid(), node_id()), fails)


def _ray_measure(refs, specs, datas, settings, cpus: float, gpus: float, work_steps: int | None) -> dict:
    device = worker_device(cpus, gpus)
    return measure_pack(shared_backbone(refs, device), shared_sequences(refs), specs, datas, settings, work_steps)


def _ray_precision(refs, specs, datas, settings, cpus: float, gpus: float, work_steps: int | None) -> dict:
    device = worker_device(cpus, gpus)
    return measure_precision(shared_backbone(refs, device), shared_sequences(refs), specs, datas, settings, work_steps)


def precision_on_ray(refs, specs: list, datas: list, settings: list, cpus: float, gpus: float,
                     work_steps: int | None = None) -> dict:
    """--precision auto on a Ray worker holding one unit's resources (its device and threads), measured on
    the first of these tasks: orchestrator.worker.measure_precision's record. A job and a search use it."""
    import ray

    remote = ray.remote(_ray_precision).options(num_cpus=cpus, num_gpus=gpus, max_retries=0)
    return ray.get(remote.remote(refs, specs, datas, settings, cpus, gpus, work_steps))


class RayExecutor:
    def __init__(self, options):
        self.options = options
        self.cluster = self.refs = self.hub = None
        self.max_in_flight = options.max_concurrent  # until start() knows the cluster: its slots

    def start(self, plan, task_states, mark) -> dict:
        """Start (or join) the cluster, share the backbone and sequences, start the hub; the cluster's resources."""
        o = self.options
        self.cluster = connect(o.address, o.num_cpus, o.num_gpus, o.object_store_mb)
        resources = self.cluster.resources()
        mark("ray_ready")
        check_fits(o, resources)
        # No more units in flight than the cluster has slots for. Ray would queue the rest by their
        # resources, but a worker blocked in ray.get (reporting its start to the hub) lends its CPU to a
        # queued unit, which then trains beside it: three tasks on two CPUs.
        self.max_in_flight = self.slots(resources)
        self.refs = share(plan.backbone, plan.sequences)  # the one put of each per job
        mark("shared")
        self.hub = ActorHub(start_hub(task_states))
        self.address = self.cluster.address
        return resources

    def slots(self, resources: dict) -> int:
        o = self.options
        return worker_slots(resources, o.cpus_per_task, o.gpus_per_task, o.max_concurrent)

    def submit(self, unit: Unit, plan, faults: dict) -> object:
        import ray

        o, names = self.options, unit.names
        resources = {"num_cpus": o.cpus_per_task, "num_gpus": o.gpus_per_task, "max_retries": 0}
        if not unit.packed:
            name = names[0]
            return ray.remote(_ray_task).options(**resources).remote(
                self.refs, self.hub, plan.spec(name), plan.task_data[name], plan.task_settings[name],
                o.cpus_per_task, o.gpus_per_task, faults.get(name, 0))
        return ray.remote(_ray_pack).options(**resources).remote(
            self.refs, self.hub, [plan.spec(n) for n in names], [plan.task_data[n] for n in names],
            [plan.task_settings[n] for n in names], o.cpus_per_task, o.gpus_per_task, [faults.get(n, 0) for n in names])

    def wait(self, handles: list, timeout: float) -> list:
        import ray

        ready, _ = ray.wait(handles, num_returns=1, timeout=timeout)
        if ready:
            ready, _ = ray.wait(handles, num_returns=len(handles), timeout=0)
        return ready

    def take(self, handle, unit: Unit):
        """The unit's next (name, result); None when it has no more; UnitLost / UnitCancelled."""
        import ray

        try:
            if not unit.packed:
                return None if unit.reported else (unit.names[0], ray.get(handle))
            return ray.get(next(handle))
        except StopIteration:
            return None
        except ray.exceptions.TaskCancelledError:
            raise UnitCancelled() from None
        except ray.exceptions.RayError as e:
            from orchestrator.worker import error_text

            raise UnitLost(error_text(e)) from None

    def cancel(self, handle) -> None:
        import ray

        ray.cancel(handle)

    def lost_nodes(self) -> dict[str, str]:
        """{node id: IP} of the cluster's dead nodes (a task on one shows `retrying` before Ray says so)."""
        return lost_nodes()
    def usage(self) -> dict:
        return self.cluster.usage()

    def measure(self, plan, names: list[str], work_steps: int | None) -> dict:
        import ray

        o = self.options
        remote = ray.remote(_ray_measure).options(num_cpus=o.cpus_per_task, num_gpus=o.gpus_per_task)
        return ray.get(remote.remote(self.refs, [plan.spec(n) for n in names], [plan.task_data[n] for n in names],
                                     [plan.task_settings[n] for n in names], o.cpus_per_task, o.gpus_per_task,
                                     work_steps))

    def measure_precision(self, plan, names: list[str], work_steps: int | None) -> dict:
        """--precision auto on a worker holding a task's resources (its device and threads)."""
        o = self.options
        return precision_on_ray(self.refs, [plan.spec(n) for n in names], [plan.task_data[n] for n in names],
                                [plan.task_settings[n] for n in names], o.cpus_per_task, o.gpus_per_task, work_steps)

    def shutdown(self) -> None:
        if self.cluster is not None:
            self.cluster.shutdown()


def check_fits(options, resources: dict) -> None:
    """A unit that needs more than the cluster has would wait forever: say so instead."""
    cpus, gpus = options.cpus_per_task, options.gpus_per_task
    if cpus > resources["cpus"] or gpus > resources["gpus"]:
        raise ValueError(f"a task needs {cpus:g} CPU and {gpus:g} GPU but the cluster has {resources['cpus']:g} "
                         f"CPU and {resources['gpus']:g} GPU in all; lower --cpus-per-task / --gpus-per-task")


# In this process ----------------------------------------------------------------------------------------------


class _LocalUnit:
    """A unit queued or running on the local worker thread, and the results it has produced."""

    def __init__(self, unit: Unit, faults: dict):
        self.unit, self.faults = unit, faults
        self.results: deque = deque()
        self.finished = self.cancelled = False
        self.error: str | None = None


class LocalExecutor:
    """Units run one after another on a worker thread of this process; the driver thread keeps its loop
    (commands, display, state.json) going meanwhile."""

    address = None
    max_in_flight = 1

    def __init__(self, options):
        self.options = options
        self.queue: queue.Queue = queue.Queue()
        self.changed = threading.Condition()
        self.thread: threading.Thread | None = None

    def start(self, plan, task_states, mark) -> dict:
        from peterrec.training import pick_device

        self.device = pick_device(self.options.device)
        self.backbone = plan.backbone.to(self.device)
        self.sequences = plan.sequences
        self.hub = LocalHub(task_states)
        self.where = (socket.gethostname(), os.getpid())
        self.plan = plan
        self.thread = threading.Thread(target=self._work, name="peterrec-local-worker", daemon=True)
        self.thread.start()
        return {"nodes": 1, "cpus": float(os.cpu_count() or 1), "gpus": float(self.device.type == "cuda"),
                "node_ips": [socket.gethostname()], "local": True}

    def slots(self, resources: dict) -> int:
        return 1

    def submit(self, unit: Unit, plan, faults: dict) -> _LocalUnit:
        handle = _LocalUnit(unit, faults)
        self.queue.put(handle)
        return handle

    def _work(self) -> None:
        while (handle := self.queue.get()) is not None:
            if handle.cancelled:
                self._finish(handle)
                continue
            unit, plan = handle.unit, self.plan
            load = lambda: (self.backbone, self.sequences)  # noqa: E731
            try:
                if unit.packed:
                    results = run_pack(self.hub, load, [plan.spec(n) for n in unit.names],
                                       [plan.task_data[n] for n in unit.names],
                                       [plan.task_settings[n] for n in unit.names], self.device, self.where,
                                       [handle.faults.get(n, 0) for n in unit.names])
                else:
                    name = unit.names[0]
                    results = [(name, run_task(self.hub, load, plan.spec(name), plan.task_data[name],
                                               plan.task_settings[name], self.device, self.where,
                                               handle.faults.get(name, 0)))]
                for result in results:
                    with self.changed:
                        handle.results.append(result)
                        self.changed.notify_all()
            except Exception as e:  # noqa: BLE001 - the unit as a whole broke (as a lost worker would)
                from orchestrator.worker import error_text

                handle.error = error_text(e)
            self._finish(handle)

    def _finish(self, handle: _LocalUnit) -> None:
        with self.changed:
            handle.finished = True
            self.changed.notify_all()

    def wait(self, handles: list, timeout: float) -> list:
        with self.changed:
            self.changed.wait_for(lambda: any(h.results or h.finished for h in handles), timeout=timeout)
            return [h for h in handles if h.results or h.finished]

    def take(self, handle: _LocalUnit, unit: Unit):
        with self.changed:
            if handle.results:
                return handle.results.popleft()
        if handle.cancelled:
            raise UnitCancelled()
        if handle.error is not None:
            raise UnitLost(handle.error)
        return None

    def cancel(self, handle: _LocalUnit) -> None:
        handle.cancelled = True  # skipped if not started; a running unit stops through the hub's cancel flag

    def lost_nodes(self) -> dict[str, str]:
        return {}  # one process, no nodes to lose
    def usage(self) -> dict:
        return {}  # no cluster: the job runs in this process

    def measure(self, plan, names: list[str], work_steps: int | None) -> dict:
        return measure_pack(self.backbone, self.sequences, [plan.spec(n) for n in names],
                            [plan.task_data[n] for n in names], [plan.task_settings[n] for n in names], work_steps)

    def measure_precision(self, plan, names: list[str], work_steps: int | None) -> dict:
        return measure_precision(self.backbone, self.sequences, [plan.spec(n) for n in names],
                                 [plan.task_data[n] for n in names], [plan.task_settings[n] for n in names],
                                 work_steps)

    def shutdown(self) -> None:
        """Cancel what has not run, ask the running unit to stop (at its next progress report), and wait."""
        if self.thread is None:
            return
        while True:
            try:
                handle = self.queue.get_nowait()
            except queue.Empty:
                break
            if handle is not None:
                handle.cancelled = True
        self.hub.cancel(list(self.plan.task_settings))
        self.queue.put(None)
        self.thread.join()
        self.thread = None
