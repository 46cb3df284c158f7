"""What a worker does with a unit of a job (one task, or a fused pack of tasks), wherever it runs.

Plain functions that know neither Ray nor threads: the executors (executors.py) call them on a Ray worker
or in this process, handing them a `hub` (the job's progress hub, hub.py) and a `load` that returns the
shared backbone and sequences. A task's failure comes back as {"error": text}; the driver decides what
runs again. Results are the task state as numpy arrays plus its summary.
"""

from __future__ import annotations

import math
import time
from typing import Callable

import torch

from peterrec.finetune import FinetuneSettings, finetune_pack, finetune_task
from peterrec.training import Progress

REPORT_EVERY_S = 0.5


class InjectedFailure(RuntimeError):
    """Raised on purpose (PETERREC_FAIL_TASKS) to exercise retries and failure handling."""


class HubReporter:
    """training.train's on_progress: sends progress to the hub at most every REPORT_EVERY_S (and at the
    end) without waiting; returns True (stop) once the hub has answered that the task is cancelled."""

    def __init__(self, hub, name: str, attempt: int, fail: bool = False):
        self.hub, self.name, self.attempt, self.fail = hub, name, attempt, fail
        self.last = -math.inf
        self.answer = None  # the latest report whose answer (cancelled?) is still to be read
        self.cancelled = False

    def __call__(self, p: Progress) -> bool:
        if self.fail:  # in the middle of training, as a real failure would come
            raise InjectedFailure(f"injected failure of attempt {self.attempt} (PETERREC_FAIL_TASKS)")
        if self.answer is not None and self.answer.ready():
            self.cancelled = self.cancelled or bool(self.answer.value())
            self.answer = None
        now = time.monotonic()
        if p.done or now - self.last >= REPORT_EVERY_S:
            self.last = now
            answer = self.hub.report(self.name, self.attempt, p.step, p.total_steps, p.epoch, p.loss, p.metric,
                                     p.samples_per_s)
            self.answer = self.answer or answer
        return self.cancelled


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


def failure(hub, name: str, attempt: int, error: BaseException, seconds: float) -> dict:
    hub.attempt_failed(name, attempt, error_text(error))
    return {"error": error_text(error), "attempt": attempt, "seconds": seconds}


def started(hub, name: str, where: tuple, pack: int = 1) -> tuple[int, bool]:
    """hub.started for a worker at `where`: (node label, pid) or (node label, pid, Ray node id)."""
    node, pid, *node_id = where
    return hub.started(name, node, pid, pack, *node_id)


def run_task(hub, load: Callable, task_spec, task_data, settings: FinetuneSettings, device: torch.device,
             where: tuple[str, int], fail_attempts: int = 0) -> dict:
    """Fine-tune one task over the job's shared backbone (`load()` -> (backbone, sequences)).

    Returns {"state": {name: np.ndarray}, "summary": FinetuneOutcome.summary(), "seconds", "attempt"},
    {"cancelled": True, ...} when the hub cancelled the task, or {"error": text, ...} when it failed.
    """
    start = time.perf_counter()
    attempt, cancelled = started(hub, task_spec.name, where)
    if cancelled:
        return {"cancelled": True, "attempt": attempt, "seconds": time.perf_counter() - start}
    try:
        if attempt <= fail_attempts:
            raise InjectedFailure(f"injected failure of attempt {attempt} (PETERREC_FAIL_TASKS)")
        backbone, sequences = load()
        reporter = HubReporter(hub, task_spec.name, attempt)
        outcome = finetune_task(backbone, task_spec, task_data, sequences, settings, device, reporter)
    except Exception as e:  # noqa: BLE001 - the task failed: the driver decides whether it runs again
        return failure(hub, task_spec.name, attempt, e, time.perf_counter() - start)
    return task_result(outcome, attempt, time.perf_counter() - start)


def run_pack(hub, load: Callable, task_specs: list, task_datas: list, settings: list[FinetuneSettings],
             device: torch.device, where: tuple[str, int], fail_attempts: list[int] | None = None):
    """Fine-tune several tasks at once, one fused pass over the shared backbone per step; yields (name,
    what run_task returns) as each task leaves the pack. A task's error never stops the pack."""
    start = time.perf_counter()
    names = [s.name for s in task_specs]
    begun = [started(hub, name, where, len(names)) for name in names]
    attempts = {name: attempt for name, (attempt, _) in zip(names, begun)}
    members = []
    for spec, data, task_settings, (attempt, cancelled), fails in zip(
            task_specs, task_datas, settings, begun, fail_attempts or [0] * len(names)):
        if cancelled:
            yield spec.name, {"cancelled": True, "attempt": attempt, "seconds": 0.0}
        else:
            members.append((spec, data, task_settings, HubReporter(hub, spec.name, attempt, attempt <= fails)))
    try:
        backbone, sequences = load()
    except Exception as e:  # noqa: BLE001 - nothing could train here: each task runs again alone
        outcomes = ((spec.name, e) for spec, *_ in members)
    else:
        outcomes = finetune_pack(backbone, members, sequences, device)
    for name, outcome in outcomes:
        seconds = time.perf_counter() - start
        if isinstance(outcome, BaseException):
            yield name, failure(hub, name, attempts[name], outcome, seconds)
        else:
            yield name, task_result(outcome, attempts[name], seconds)


def measure_pack(backbone, sequences, task_specs: list, task_datas: list, settings: list[FinetuneSettings],
                 work_steps: int | None = None) -> dict:
    """The pack size for `--pack auto`, measured with this worker's threads and device:
    {"k", "reason", "samples_per_s"}."""
    from peterrec.finetune import measure_pack_size

    choice = measure_pack_size(backbone, list(zip(task_specs, task_datas, settings)), sequences,
                               work_steps=work_steps)
    return {"k": choice.k, "reason": choice.reason,
            "samples_per_s": {str(k): round(v, 1) for k, v in choice.samples_per_s.items()}}


def error_text(error: BaseException) -> str:
    """The exception a user should see: for Ray's wrappers, the task's own exception."""
    cause = getattr(error, "cause", None)
    if isinstance(cause, BaseException) and cause is not error:
        error = cause
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:500]
