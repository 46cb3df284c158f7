"""The Ray tasks that fine-tune: shared backbone in, task state (numpy) + summary out.

Plain functions; the driver wraps them with ray.remote and their resources and retries.
- run_task: one task. Any exception is reported to the hub, then raised so that Ray retries the task.
- run_pack: several tasks in one fused pack (peterrec.fused), a Ray generator that yields each task's
  result as it leaves the pack. A task that fails leaves it and comes back as failed (the driver runs
  it again on its own); the others train on.
- measure_pack: the pack size `--pack auto` uses, measured on a worker like the ones that will train.
"""

from __future__ import annotations

import math
import os
import time

import ray
import torch

from orchestrator.cluster import node_label
from orchestrator.shared import SharedRefs, shared_backbone, shared_sequences
from peterrec.finetune import FinetuneSettings, finetune_pack, finetune_task
from peterrec.training import Progress

REPORT_EVERY_S = 0.5


class InjectedFailure(RuntimeError):
    """Raised on purpose (PETERREC_FAIL_TASKS) to exercise retries and failure handling."""


class HubReporter:
    """training.train's on_progress: sends progress to the hub at most every REPORT_EVERY_S (and at the
    end), fire-and-forget; returns True (stop) once the hub has answered that the task is cancelled."""

    def __init__(self, hub, name: str, attempt: int, fail: bool = False):
        self.hub, self.name, self.attempt, self.fail = hub, name, attempt, fail
        self.last = -math.inf
        self.answer = None  # the latest report whose answer (cancelled?) is still to be read
        self.cancelled = False

    def __call__(self, p: Progress) -> bool:
        if self.fail:  # in the middle of training, as a real failure would come
            raise InjectedFailure(f"injected failure of attempt {self.attempt} (PETERREC_FAIL_TASKS)")
        if self.answer is not None and ray.wait([self.answer], timeout=0)[0]:
            self.cancelled = self.cancelled or bool(ray.get(self.answer))
            self.answer = None
        now = time.monotonic()
        if p.done or now - self.last >= REPORT_EVERY_S:
            self.last = now
            ref = self.hub.report.remote(self.name, self.attempt, p.step, p.total_steps, p.epoch, p.loss,
                                         p.metric, p.samples_per_s)
            self.answer = self.answer or ref
        return self.cancelled


def run_task(refs: SharedRefs, task_spec, task_data, settings: FinetuneSettings, hub, cpus: float,
             gpus: float = 0.0, fail_attempts: int = 0) -> dict:
    """Fine-tune one task over the job's shared backbone.

    Returns {"state": {name: np.ndarray}, "summary": FinetuneOutcome.summary(), "seconds", "attempt"},
    or {"cancelled": True, ...} when the hub cancelled the task.
    """
    start = time.perf_counter()
    device = worker_device(cpus, gpus)
    attempt, cancelled = ray.get(hub.started.remote(task_spec.name, node_label(), os.getpid()))
    if cancelled:
        return {"cancelled": True, "attempt": attempt, "seconds": time.perf_counter() - start}
    try:
        if attempt <= fail_attempts:
            raise InjectedFailure(f"injected failure of attempt {attempt} (PETERREC_FAIL_TASKS)")
        backbone = shared_backbone(refs, device)
        sequences = shared_sequences(refs)
        reporter = HubReporter(hub, task_spec.name, attempt)
        outcome = finetune_task(backbone, task_spec, task_data, sequences, settings, device, reporter)
    except Exception as e:
        hub.attempt_failed.remote(task_spec.name, attempt, error_text(e))
        raise
    return task_result(outcome, attempt, time.perf_counter() - start)


def worker_device(cpus: float, gpus: float) -> torch.device:
    """The device of a worker holding these resources; torch's threads follow its CPU share, not the
    whole machine."""
    torch.set_num_threads(max(1, int(cpus)))
    return torch.device("cuda" if gpus > 0 else "cpu")


def task_result(outcome, attempt: int, seconds: float) -> dict:
    """What the driver records of a fine-tuned task: its state as numpy and its summary, or that it
    was cancelled (it stopped early at the hub's word)."""
    if outcome.result.stopped:
        return {"cancelled": True, "attempt": attempt, "seconds": seconds}
    state = {name: t.detach().cpu().numpy() for name, t in outcome.model.task_state_dict().items()}
    return {"state": state, "summary": outcome.summary(), "seconds": seconds, "attempt": attempt}


def run_pack(refs: SharedRefs, task_specs: list, task_datas: list, settings: list[FinetuneSettings], hub,
             cpus: float, gpus: float = 0.0, fail_attempts: list[int] | None = None):
    """A Ray generator: fine-tunes several tasks at once, one fused pass over the shared backbone per
    step, and yields (name, what run_task returns, or {"error": text, ...}) as each task leaves the pack.

    A task's error never stops the pack (the driver decides what runs again); only the loss of the
    worker ends it early.
    """
    start = time.perf_counter()
    device = worker_device(cpus, gpus)
    names = [s.name for s in task_specs]
    node, pid = node_label(), os.getpid()
    begun = ray.get([hub.started.remote(name, node, pid, len(names)) for name in names])
    attempts = {name: attempt for name, (attempt, _) in zip(names, begun)}
    members = []
    for spec, data, task_settings, (attempt, cancelled), fails in zip(
            task_specs, task_datas, settings, begun, fail_attempts or [0] * len(names)):
        if cancelled:
            yield spec.name, {"cancelled": True, "attempt": attempt, "seconds": 0.0}
        else:
            members.append((spec, data, task_settings, HubReporter(hub, spec.name, attempt, attempt <= fails)))
    try:
        backbone, sequences = shared_backbone(refs, device), shared_sequences(refs)
    except Exception as e:  # noqa: BLE001 - nothing could train here: each task runs again alone
        outcomes = ((spec.name, e) for spec, *_ in members)
    else:
        outcomes = finetune_pack(backbone, members, sequences, device)
    for name, outcome in outcomes:
        attempt, seconds = attempts[name], time.perf_counter() - start
        if isinstance(outcome, BaseException):
            hub.attempt_failed.remote(name, attempt, error_text(outcome))
            yield name, {"error": error_text(outcome), "attempt": attempt, "seconds": seconds}
        else:
            yield name, task_result(outcome, attempt, seconds)


def measure_pack(refs: SharedRefs, task_specs: list, task_datas: list, settings: list[FinetuneSettings],
                 cpus: float, gpus: float = 0.0, work_steps: int | None = None) -> dict:
    """The pack size for `--pack auto`, measured with this worker's threads and device:
    {"k", "reason", "samples_per_s"}."""
    from peterrec.finetune import measure_pack_size

    device = worker_device(cpus, gpus)
    choice = measure_pack_size(shared_backbone(refs, device), list(zip(task_specs, task_datas, settings)),
                               shared_sequences(refs), work_steps=work_steps)
    return {"k": choice.k, "reason": choice.reason,
            "samples_per_s": {str(k): round(v, 1) for k, v in choice.samples_per_s.items()}}


def error_text(error: BaseException) -> str:
    """The exception a user should see: for Ray's wrappers, the task's own exception."""
    cause = getattr(error, "cause", None)
    if isinstance(cause, BaseException) and cause is not error:
        error = cause
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:500]
