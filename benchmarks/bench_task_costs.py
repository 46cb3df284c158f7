"""Where a small task's time goes besides its training steps, in one process (what a Ray worker runs).

Run: .venv/bin/python benchmarks/bench_task_costs.py            (about a minute on 2 CPU cores)
     .venv/bin/python benchmarks/bench_task_costs.py --worker   (through run_task on Ray; --local: in process)
     .venv/bin/python benchmarks/bench_task_costs.py --driver 500   (the driver recording 500 finished tasks)
     .venv/bin/python benchmarks/bench_task_costs.py --publish 1000 (the driver's per-tick state copy, 1,000 tasks)
     .venv/bin/python benchmarks/bench_task_costs.py --tasks 40

The small task of issue 19: 60 steps of batch 64 over a C=32 backbone (4 blocks, length 50), the
synthetic world's tasks (2,000 users, 500 items; one task in four a cold-start task), one torch
thread (a worker holds one CPU). Each task runs finetune_task's own calls, timed by phase:
- prepare: prepare_task: its train/valid/test arrays (Sequences.padded), evaluators (fixed negatives)
  and build_task_model (timed again alone, for its share);
- steps: the optimisation steps alone;
- validation: the evaluations during training (once per epoch by default) and keep-best's copies;
- final: the valid and test evaluation after training, and the parameter report;
- ship: the task's state as numpy, as orchestrator.worker.task_result sends it.
Printed: mean milliseconds per phase and the fixed-cost share (everything but the steps).

--worker: the same tasks through orchestrator.worker.run_task, as a Ray worker runs them: on Ray (2
worker slots of one CPU, the job's progress-hub actor, the zero-copy shared backbone), or with --local
in this process with the in-process hub. Phases are timed inside the worker by wrapping the functions
run_task calls (hub start, load, prepare, steps, validation, final, ship: the state as numpy plus the
last log line); "other" is the rest of run_task, and "between" the slot time per task that is not
run_task at all (Ray scheduling, arguments and result transport, the driver's pickup).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from peterrec.backbone import Backbone  # noqa: E402
from peterrec.config import BackboneConfig  # noqa: E402
from peterrec.finetune import FinetuneSettings, prepare_task  # noqa: E402
from peterrec.task_model import build_task_model  # noqa: E402
from peterrec.training import TrainConfig, train  # noqa: E402
from tasks import load_job  # noqa: E402
from tasks.synth import synthesize  # noqa: E402

STEPS, BATCH, CHANNELS, USERS, ITEMS, LENGTH = 60, 64, 32, 2000, 500, 50


class Clock:
    """Accumulates seconds per phase."""

    def __init__(self):
        self.seconds = defaultdict(float)

    def timed(self, phase: str, fn, *args, **kwargs):
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        self.seconds[phase] += time.perf_counter() - t0
        return out


def run_task(clock: Clock, backbone, spec, data, sequences, settings: FinetuneSettings) -> None:
    """finetune_task's calls (peterrec.finetune), each phase timed, then the worker's shipping."""
    task = clock.timed("prepare", prepare_task, backbone, spec, data, sequences, settings)
    s = task.settings  # build_task_model alone, as prepare_task calls it: its share of "prepare"
    clock.timed("(model)", build_task_model, backbone, spec.kind, spec.num_outputs, s.mode, s.patch,
                s.finelast_blocks, s.representation, seed=s.train.seed)
    validation = task.validation()
    timed_validation = (lambda: clock.timed("validation", validation)) if validation else None
    before = clock.seconds["validation"]
    result = clock.timed("loop", train, task.model, task.arrays, s.train, torch.device("cpu"),
                         evaluate=timed_validation, loss_fn=task.model.loss)
    clock.seconds["steps"] += clock.seconds.pop("loop") - (clock.seconds["validation"] - before)
    outcome = clock.timed("final", task.finish, result)
    clock.timed("ship", lambda: {n: t.detach().cpu().numpy() for n, t in outcome.model.task_state_dict().items()})


def install_phase_clock(clock: Clock) -> None:
    """Wrap what orchestrator.worker.run_task calls so that each phase's seconds add up in `clock`
    (in the process that runs the tasks; idempotent)."""
    import orchestrator.worker as worker
    import peterrec.finetune as finetune

    if getattr(worker, "_phase_clock", None) is not None:
        worker._phase_clock = clock
        return
    worker._phase_clock = clock

    def wrap(module, name, phase):
        inner = getattr(module, name)

        def timed(*args, **kwargs):
            return worker._phase_clock.timed(phase, inner, *args, **kwargs)

        setattr(module, name, timed)

    wrap(worker, "started", "start")
    wrap(worker, "started_log", "start")
    wrap(worker, "task_result", "ship")
    wrap(worker, "ended", "ship")
    wrap(finetune, "prepare_task", "prepare")
    wrap(finetune, "make_optimizer", "prepare")
    wrap(finetune.PreparedTask, "finish", "final")
    train = finetune.train

    def timed_train(*args, evaluate=None, **kwargs):
        c = worker._phase_clock
        before = c.seconds["validation"]
        timed_evaluate = (lambda: c.timed("validation", evaluate)) if evaluate else None
        out = c.timed("loop", train, *args, evaluate=timed_evaluate, **kwargs)
        c.seconds["steps"] += c.seconds.pop("loop") - (c.seconds["validation"] - before)
        return out

    finetune.train = timed_train


def _worker_task(refs, hub, spec, data, settings) -> tuple[dict, dict]:
    """On a Ray worker: executors._ray_task's own path, each phase timed; (its result, the phases)."""
    import orchestrator.executors as executors

    clock = Clock()
    install_phase_clock(clock)
    t0 = time.perf_counter()
    result = executors._ray_task(refs, hub, spec, data, settings, 1.0, 0.0, 0)
    clock.seconds["run_task"] = time.perf_counter() - t0
    return {k: v for k, v in result.items() if k != "state"}, dict(clock.seconds)


def run_worker_path(job, data, sequences, backbone, settings, local: bool) -> None:
    """Every task through orchestrator.worker.run_task (on Ray, or with --local in this process)."""
    from orchestrator.hub import LocalHub
    from orchestrator.state import TaskState

    names = [t.name for t in job.tasks]
    states = [TaskState(t.name, t.kind, t.metric) for t in job.tasks]
    if local:
        import orchestrator.worker as worker

        clock = Clock()
        install_phase_clock(clock)
        hub = LocalHub(states)
        load = lambda: (backbone, sequences)  # noqa: E731
        worker.run_task(hub, load, job.tasks[0], data[names[0]], settings, torch.device("cpu"), ("here", 0))
        clock.seconds.clear()
        t0 = time.perf_counter()
        for spec in job.tasks:
            c0 = time.perf_counter()
            worker.run_task(hub, load, spec, data[spec.name], settings, torch.device("cpu"), ("here", 0))
            clock.seconds["run_task"] += time.perf_counter() - c0
        wall, slots, phases = time.perf_counter() - t0, 1, [dict(clock.seconds)]
    else:
        import ray

        from orchestrator.cluster import connect
        from orchestrator.hub import ActorHub, start_hub
        from orchestrator.shared import share

        cluster = connect(num_cpus=2, object_store_mb=200)
        try:
            refs = share(backbone, sequences)
            hub = ActorHub(start_hub(states + [TaskState("warm-up", job.tasks[0].kind, job.tasks[0].metric)]))
            remote = ray.remote(_worker_task).options(num_cpus=1, max_retries=0)
            warm = replace(job.tasks[0], name="warm-up")
            ray.get([remote.remote(refs, hub, warm, data[names[0]], settings) for _ in range(2)])  # both workers
            t0 = time.perf_counter()
            pending, phases = [], []
            for spec in job.tasks:  # at most 2 in flight, as the driver keeps them
                pending.append(remote.remote(refs, hub, spec, data[spec.name], settings))
                if len(pending) == 2:
                    done, pending = ray.wait(pending, num_returns=1)
                    phases.append(ray.get(done[0])[1])
            phases += [ray.get(p)[1] for p in pending]
            wall, slots = time.perf_counter() - t0, 2
        finally:
            cluster.shutdown()
    total = defaultdict(float)
    for p in phases:
        for k, v in p.items():
            total[k] += v
    n = len(names)
    slot_s = wall * slots / n
    run_task = total.pop("run_task") / n
    print(f"{n} tasks through orchestrator.worker.run_task {'in this process' if local else 'on Ray, 2 workers'}: "
          f"{1e3 * slot_s:.0f} ms of a worker slot per task, {1e3 * run_task:.0f} ms of it in run_task")
    known = 0.0
    for phase in ("start", "prepare", "steps", "validation", "final", "ship"):
        ms = 1e3 * total[phase] / n
        known += ms
        print(f"  {phase:<11s} {ms:7.1f} ms  {100 * ms / (1e3 * slot_s):5.1f}%")
    other = 1e3 * run_task - known
    between = 1e3 * (slot_s - run_task)
    print(f"  {'other':<11s} {other:7.1f} ms  {100 * other / (1e3 * slot_s):5.1f}%   (load, log capture, the rest)")
    print(f"  {'between':<11s} {between:7.1f} ms  {100 * between / (1e3 * slot_s):5.1f}%   (not in run_task)")
    steps = 1e3 * total["steps"] / n
    print(f"fixed cost (all but the steps): {100 * (1 - steps / (1e3 * slot_s)):.1f}% of a worker slot's time per task")


def record_tasks(count: int) -> None:
    """--driver N: what a job's driver does per finished task (orchestrator.results.JobOutputs.done: the
    bundle entry and the results row, from the task state a worker ships) for N tasks in a row, in
    milliseconds per task by fifths of the job: a cost that grows with the job shows as rising fifths."""
    import numpy as np

    from orchestrator.results import JobOutputs
    from peterrec.bundle import backbone_fingerprint

    with tempfile.TemporaryDirectory() as tmp:
        spec = synthesize(Path(tmp) / "data", tasks=count, users=300, items=ITEMS, seed=0, max_len=LENGTH)
        job, _, _ = load_job(spec)
        torch.manual_seed(0)
        backbone = Backbone(BackboneConfig(vocab_size=job.vocab_size, channels=CHANNELS, max_len=LENGTH))
        outputs = JobOutputs(Path(tmp) / "job", backbone.requires_grad_(False), backbone_fingerprint(backbone))
        settings = FinetuneSettings()
        summary = {"mode": "peterrec", "metric": "accuracy", "value": 0.5, "valid": {}, "test": {}, "steps": STEPS,
                   "trained_params": 1, "backbone_params": 1, "fineall_params": 1, "stored_params": 1,
                   "ratio_vs_fineall": 1.0, "samples_per_s": 1.0}
        seconds = []
        for spec_ in job.tasks:
            model = build_task_model(backbone, spec_.kind, spec_.num_outputs, settings.mode, settings.patch)
            state = {k: v.numpy() for k, v in model.task_state_dict().items()}  # as a worker ships it
            t0 = time.perf_counter()
            outputs.done(spec_, settings, state, summary, 1.0, 1)
            seconds.append(time.perf_counter() - t0)
    fifths = np.array_split(np.array(seconds), 5)
    print(f"{count} finished tasks recorded by the driver (JobOutputs.done), ms per task by fifths of the job: "
          + ", ".join(f"{1e3 * f.mean():.0f}" for f in fifths))


def publish_state(count: int, rounds: int = 40) -> None:
    """--publish N: what the driver's loop costs per tick whatever finishes: it publishes the job's state
    to its clients (JobState.to_dict) and an in-process client (the plain display, the TUI) reads it back
    (JobState.from_dict). Timed now and with the generic field-by-field conversion the code had before,
    side by side, for N finished tasks with a 12-point curve each."""
    from dataclasses import fields

    from orchestrator.state import JobState, TaskState

    state = JobState("/nowhere")
    for i in range(count):
        task = TaskState(f"t{i:04d}", "classify", "accuracy", status="done", step=STEPS, total=STEPS, value=0.5)
        for k in range(12):
            task.add_point(5 * k, 0.5, 0.4, float(k))
        state.tasks[task.name] = task
    names = [f.name for f in fields(TaskState)]

    def generic_to(task):
        d = {name: getattr(task, name) for name in names}
        d["history"] = list(task.history)
        return d

    def generic_from(d):
        known = {f.name for f in fields(TaskState)}
        return TaskState(**{k: v for k, v in d.items() if k in known})

    def tick_now():
        JobState.from_dict(state.to_dict())

    def tick_before():
        d = state.to_dict()
        d["tasks"] = {n: generic_to(t) for n, t in state.tasks.items()}
        {n: generic_from(t) for n, t in d["tasks"].items()}

    times = {"now": [], "before": []}
    for r in range(rounds):  # alternated, so both see the same load
        for name, tick in (("now", tick_now), ("before", tick_before))[::1 if r % 2 else -1]:
            t0 = time.perf_counter()
            tick()
            times[name].append(time.perf_counter() - t0)
    now, before = (1e3 * statistics.median(times[k]) for k in ("now", "before"))
    print(f"{count} tasks, publishing the state and reading it back once per driver tick (median of {rounds}): "
          f"now {now:.1f} ms, before {before:.1f} ms ({before / now:.1f}x); at 4 ticks a second that was "
          f"{0.4 * before:.0f}% of a core and is {0.4 * now:.0f}%")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=16, help="tasks to run (the first of the synthetic world)")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--worker", action="store_true", help="through orchestrator.worker.run_task, on Ray")
    parser.add_argument("--local", action="store_true", help="with --worker: in this process, without Ray")
    parser.add_argument("--driver", type=int, metavar="N", help="only time the driver recording N finished tasks")
    parser.add_argument("--publish", type=int, metavar="N", help="only time the driver's per-tick state copy, N tasks")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.driver:
        return record_tasks(args.driver)
    if args.publish:
        return publish_state(args.publish)
    with tempfile.TemporaryDirectory() as tmp:
        spec = synthesize(Path(tmp) / "data", tasks=args.tasks, users=USERS, items=ITEMS, seed=0, max_len=LENGTH)
        job, sequences, data = load_job(spec)
    torch.manual_seed(0)
    backbone = Backbone(BackboneConfig(vocab_size=job.vocab_size, channels=CHANNELS, max_len=LENGTH))
    backbone.requires_grad_(False)
    settings = FinetuneSettings(train=TrainConfig(epochs=100, max_steps=STEPS, batch_size=BATCH,
                                                  precision=args.precision))
    if args.worker:
        return run_worker_path(job, data, sequences, backbone, settings, args.local)
    clock = Clock()
    run_task(Clock(), backbone, job.tasks[0], data[job.tasks[0].name], sequences, settings)  # warm-up
    for spec_ in job.tasks:
        run_task(clock, backbone, spec_, data[spec_.name], sequences, settings)
    model = clock.seconds.pop("(model)")
    n = len(job.tasks)
    total = sum(clock.seconds.values())
    print(f"{n} tasks: {STEPS} steps of batch {BATCH}, C={CHANNELS}, {args.precision}, 1 thread; "
          f"{1e3 * total / n:.0f} ms per task")
    for phase in ("prepare", "steps", "validation", "final", "ship"):
        s = clock.seconds[phase]
        print(f"  {phase:<11s} {1e3 * s / n:7.1f} ms  {100 * s / total:5.1f}%")
        if phase == "prepare":
            print(f"    of which build_task_model {1e3 * model / n:.1f} ms")
    print(f"fixed cost (all but the steps): {100 * (1 - clock.seconds['steps'] / total):.1f}% of a task")


if __name__ == "__main__":
    main()
