"""The Ray task that fine-tunes one task: shared backbone in, task state (numpy) + summary out.

`run_task` is a plain function; the driver wraps it with ray.remote and its resources and retries.
Any exception is reported to the hub, then raised so that Ray retries the task.
"""

from __future__ import annotations

import math
import os
import time

import ray
import torch

from orchestrator.cluster import node_label
from orchestrator.shared import SharedRefs, shared_backbone, shared_sequences
from peterrec.finetune import FinetuneSettings, finetune_task
from peterrec.training import Progress

REPORT_EVERY_S = 0.5


class InjectedFailure(RuntimeError):
    """Raised on purpose (PETERREC_FAIL_TASKS) to exercise retries and failure handling."""


class HubReporter:
    """training.train's on_progress: sends progress to the hub at most every REPORT_EVERY_S (and at the
    end), fire-and-forget; returns True (stop) once the hub has answered that the task is cancelled."""

    def __init__(self, hub, name: str, attempt: int):
        self.hub, self.name, self.attempt = hub, name, attempt
        self.last = -math.inf
        self.answer = None  # the latest report whose answer (cancelled?) is still to be read
        self.cancelled = False

    def __call__(self, p: Progress) -> bool:
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
    torch.set_num_threads(max(1, int(cpus)))  # the task's CPU share, not the whole machine
    attempt, cancelled = ray.get(hub.started.remote(task_spec.name, node_label(), os.getpid()))
    if cancelled:
        return {"cancelled": True, "attempt": attempt, "seconds": time.perf_counter() - start}
    try:
        if attempt <= fail_attempts:
            raise InjectedFailure(f"injected failure of attempt {attempt} (PETERREC_FAIL_TASKS)")
        device = torch.device("cuda" if gpus > 0 else "cpu")
        backbone = shared_backbone(refs, device)
        sequences = shared_sequences(refs)
        reporter = HubReporter(hub, task_spec.name, attempt)
        outcome = finetune_task(backbone, task_spec, task_data, sequences, settings, device, reporter)
    except Exception as e:
        hub.attempt_failed.remote(task_spec.name, attempt, error_text(e))
        raise
    seconds = time.perf_counter() - start
    if outcome.result.stopped:
        return {"cancelled": True, "attempt": attempt, "seconds": seconds}
    state = {name: t.detach().cpu().numpy() for name, t in outcome.model.task_state_dict().items()}
    return {"state": state, "summary": outcome.summary(), "seconds": seconds, "attempt": attempt}


def error_text(error: BaseException) -> str:
    """The exception a user should see: for Ray's wrappers, the task's own exception."""
    cause = getattr(error, "cause", None)
    if isinstance(cause, BaseException) and cause is not error:
        error = cause
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:500]
