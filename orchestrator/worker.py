"""What a worker does with a unit of a job (one task, or a fused pack of tasks), wherever it runs.

Plain functions that know neither Ray nor threads: the executors (executors.py) call them on a Ray worker
or in this process, handing them a `hub` (the job's progress hub, hub.py) and a `load` that returns the
shared backbone and sequences. A task's failure comes back as {"error": text}; the driver decides what
runs again. Results are the task state as numpy arrays plus its summary. Each attempt keeps a log (TaskLog:
what it printed, its progress now and then, the traceback of a failure) that goes to the hub with it.
"""

from __future__ import annotations

import math
import sys
import threading
import time
import traceback
import warnings
from contextlib import contextmanager
from typing import Callable

import torch

from peterrec.finetune import FinetuneSettings, finetune_pack, finetune_task
from peterrec.training import Progress

REPORT_EVERY_S = 0.5
LOG_EVERY_S = 10.0  # a progress line in the task's log at most this often (and at every new validation metric)
TRACEBACK_LINES = 60  # the end of a failure's traceback, where its cause is


class InjectedFailure(RuntimeError):
    """Raised on purpose (PETERREC_FAIL_TASKS) to exercise retries and failure handling."""


class TaskLog:
    """One attempt's log lines, buffered and sent to the hub with the progress reports (fire-and-forget):
    its start, what its thread printed (stdout, stderr, warnings: `capture()`), a progress line now and
    then, how it ended and, for a failure, its traceback."""

    def __init__(self, hub, name: str, attempt: int):
        self.hub, self.name, self.attempt = hub, name, attempt
        self.lines: list[str] = []
        self.partial = ""  # printed text not yet ended by a newline
        self.lock = threading.Lock()

    def line(self, text: str) -> None:
        with self.lock:
            self.lines.extend(str(text).splitlines() or [""])

    def write(self, text: str) -> None:
        with self.lock:
            *whole, self.partial = (self.partial + text).split("\n")
            self.lines.extend(whole)

    def failure(self, error: BaseException) -> None:
        """The traceback as Python prints it (its last TRACEBACK_LINES lines)."""
        text = "".join(traceback.format_exception(error)).rstrip("\n").splitlines()
        self.line("\n".join(text[-TRACEBACK_LINES:]))

    def flush(self) -> None:
        with self.lock:
            lines, self.lines = self.lines, []
        if lines:
            self.hub.log(self.name, self.attempt, lines)


_LOGS: dict[int, list[TaskLog]] = {}  # thread -> the logs of the task(s) it runs (every member of a pack)
_quiet = threading.local()  # set while a warning already logged is shown the usual way


class _ThreadStreams:
    """sys.stdout / sys.stderr while tasks run here: what a task's thread writes also goes to its logs;
    other threads' writes pass straight through."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> int:
        if not getattr(_quiet, "on", False):
            for log in _LOGS.get(threading.get_ident(), ()):
                log.write(text)
        return self.stream.write(text)

    def __getattr__(self, name):
        return getattr(self.stream, name)


def _show_warning(message, category, filename, lineno, file=None, line=None):
    """warnings.showwarning while tasks run here: a task's warning goes to its logs, then on as usual."""
    logs = _LOGS.get(threading.get_ident(), ())
    for log in logs:
        log.write(warnings.formatwarning(message, category, filename, lineno, line))
    _quiet.on = bool(logs)
    try:
        return _show_warning.previous(message, category, filename, lineno, file, line)
    finally:
        _quiet.on = False


@contextmanager
def capture(logs: list[TaskLog]):
    """Route this thread's prints and warnings into `logs` while the block runs."""
    if not _LOGS:  # the first task here: put the routers in place
        for attr in ("stdout", "stderr"):
            setattr(sys, attr, _ThreadStreams(getattr(sys, attr)))
        _show_warning.previous, warnings.showwarning = warnings.showwarning, _show_warning
    _LOGS[threading.get_ident()] = logs
    try:
        yield
    finally:
        _LOGS.pop(threading.get_ident(), None)
        if not _LOGS:  # the last task here: put back what was there (unless someone replaced it since)
            for attr in ("stdout", "stderr"):
                stream = getattr(sys, attr)
                if isinstance(stream, _ThreadStreams):
                    setattr(sys, attr, stream.stream)
            if warnings.showwarning is _show_warning:
                warnings.showwarning = _show_warning.previous


class HubReporter:
    """training.train's on_progress: sends progress to the hub at most every REPORT_EVERY_S (and at the
    end) without waiting; returns True (stop) once the hub has answered that the task is cancelled.
    With a TaskLog, it adds a progress line now and then and sends the log's new lines along."""

    def __init__(self, hub, name: str, attempt: int, fail: bool = False, log: TaskLog | None = None):
        self.hub, self.name, self.attempt, self.fail, self.log = hub, name, attempt, fail, log
        self.last = self.logged = -math.inf
        self.logged_metric = None
        self.logged_at: tuple | None = None  # (step, metric) of the last progress line
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
            if self.log is not None:
                self._log_progress(p, now)
                self.log.flush()
            answer = self.hub.report(self.name, self.attempt, p.step, p.total_steps, p.epoch, p.loss, p.metric,
                                     p.samples_per_s)
            self.answer = self.answer or answer
        return self.cancelled

    def _log_progress(self, p: Progress, now: float) -> None:
        if (p.step, p.metric) == self.logged_at:  # the last report repeats the step of the one before
            return
        if p.done or now - self.logged >= LOG_EVERY_S or (p.metric is not None and p.metric != self.logged_metric):
            self.logged, self.logged_metric, self.logged_at = now, p.metric, (p.step, p.metric)
            valid = "" if p.metric is None else f"  valid {p.metric:.4f}"
            self.log.line(f"step {p.step}/{p.total_steps}  epoch {p.epoch}  loss {p.loss:.4f}{valid}  "
                          f"{p.samples_per_s:,.0f} samples/s")


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


def failure(hub, name: str, attempt: int, error: BaseException, seconds: float, log: TaskLog | None = None) -> dict:
    if log is not None:
        log.failure(error)
        log.flush()
    hub.attempt_failed(name, attempt, error_text(error))
    return {"error": error_text(error), "attempt": attempt, "seconds": seconds}


def started(hub, name: str, where: tuple, pack: int = 1) -> tuple[int, bool]:
    """hub.started for a worker at `where`: (node label, pid) or (node label, pid, Ray node id)."""
    node, pid, *node_id = where
    return hub.started(name, node, pid, pack, *node_id)
def started_log(hub, name: str, attempt: int, where: tuple[str, int], device, pack: int = 1) -> TaskLog:
    log = TaskLog(hub, name, attempt)
    company = f", in a fused pack of {pack} tasks" if pack > 1 else ""
    log.line(f"attempt {attempt} on {where[0]} (pid {where[1]}), {device}, {torch.get_num_threads()} torch "
             f"thread(s){company}")
    return log


def ended(log: TaskLog, result: dict) -> dict:
    """The last line of an attempt that did not fail (a failure's is its traceback)."""
    if result.get("cancelled"):
        log.line(f"stopped at the hub's word after {result['seconds']:.1f} s")
    else:
        summary = result["summary"]
        value = summary.get("value")
        log.line(f"done in {result['seconds']:.1f} s: test {summary.get('metric')} "
                 f"{'-' if value is None else format(value, '.4f')}")
    log.flush()
    return result


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
    log = started_log(hub, task_spec.name, attempt, where, device)
    try:
        with capture([log]):
            if attempt <= fail_attempts:
                raise InjectedFailure(f"injected failure of attempt {attempt} (PETERREC_FAIL_TASKS)")
            backbone, sequences = load()
            reporter = HubReporter(hub, task_spec.name, attempt, log=log)
            outcome = finetune_task(backbone, task_spec, task_data, sequences, settings, device, reporter)
    except Exception as e:  # noqa: BLE001 - the task failed: the driver decides whether it runs again
        return failure(hub, task_spec.name, attempt, e, time.perf_counter() - start, log)
    return ended(log, task_result(outcome, attempt, time.perf_counter() - start))


def run_pack(hub, load: Callable, task_specs: list, task_datas: list, settings: list[FinetuneSettings],
             device: torch.device, where: tuple[str, int], fail_attempts: list[int] | None = None):
    """Fine-tune several tasks at once, one fused pass over the shared backbone per step; yields (name,
    what run_task returns) as each task leaves the pack. A task's error never stops the pack."""
    start = time.perf_counter()
    names = [s.name for s in task_specs]
    begun = [started(hub, name, where, len(names)) for name in names]
    attempts = {name: attempt for name, (attempt, _) in zip(names, begun)}
    members, logs = [], {}
    for spec, data, task_settings, (attempt, cancelled), fails in zip(
            task_specs, task_datas, settings, begun, fail_attempts or [0] * len(names)):
        if cancelled:
            yield spec.name, {"cancelled": True, "attempt": attempt, "seconds": 0.0}
        else:
            logs[spec.name] = log = started_log(hub, spec.name, attempt, where, device, len(names))
            members.append((spec, data, task_settings, HubReporter(hub, spec.name, attempt, attempt <= fails, log)))
    with capture(list(logs.values())):
        try:
            backbone, sequences = load()
        except Exception as e:  # noqa: BLE001 - nothing could train here: each task runs again alone
            outcomes = ((spec.name, e) for spec, *_ in members)
        else:
            outcomes = finetune_pack(backbone, members, sequences, device)
        for name, outcome in outcomes:
            seconds = time.perf_counter() - start
            if isinstance(outcome, BaseException):
                yield name, failure(hub, name, attempts[name], outcome, seconds, logs[name])
            else:
                yield name, ended(logs[name], task_result(outcome, attempts[name], seconds))


def measure_pack(backbone, sequences, task_specs: list, task_datas: list, settings: list[FinetuneSettings],
                 work_steps: int | None = None) -> dict:
    """The pack size for `--pack auto`, measured with this worker's threads and device:
    {"k", "reason", "samples_per_s"}."""
    from peterrec.finetune import measure_pack_size

    choice = measure_pack_size(backbone, list(zip(task_specs, task_datas, settings)), sequences,
                               work_steps=work_steps)
    return {"k": choice.k, "reason": choice.reason,
            "samples_per_s": {str(k): round(v, 1) for k, v in choice.samples_per_s.items()}}


def measure_precision(backbone, sequences, task_specs: list, task_datas: list, settings: list[FinetuneSettings],
                      work_steps: int | None = None) -> dict:
    """The precision for `--precision auto`, measured with this worker's threads and device on the first
    of these tasks: {"precision", "reason", "samples_per_s"}."""
    from peterrec.finetune import measure_precision as measure

    choice = measure(backbone, list(zip(task_specs, task_datas, settings)), sequences, "auto", work_steps=work_steps)
    return precision_record(choice)


def precision_record(choice) -> dict:
    """A peterrec.precision.PrecisionChoice as state.json and search.json record it: {"precision",
    "reason", "samples_per_s"} (a job's state.json keeps them as precision, precision_reason and
    precision_measured among its resources)."""
    return {"precision": choice.precision, "reason": choice.reason,
            "samples_per_s": {k: round(v, 1) for k, v in choice.samples_per_s.items()}}


def precision_as_asked(precision: str) -> dict:
    """The record of an explicit --precision fp32 or bf16."""
    from peterrec.precision import as_asked

    return precision_record(as_asked(precision))


def precision_fallback(error: BaseException) -> dict:
    """The record when measuring bf16 failed: fp32 always works, so the job goes on in it."""
    from peterrec.precision import PrecisionChoice

    return precision_record(PrecisionChoice("fp32", f"fp32: measuring bf16 failed ({error_text(error)})"))


def error_text(error: BaseException) -> str:
    """The exception a user should see: for Ray's wrappers, the task's own exception."""
    cause = getattr(error, "cause", None)
    if isinstance(cause, BaseException) and cause is not error:
        error = cause
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:500]
