"""The PeterRec terminal UI (Textual): launch a fine-tuning job, watch it, act on it, review it.

It talks to jobs only through orchestrator.client.JobClient. Entry points:
  `python cli.py tui`                  the launcher
  `python cli.py tui --attach JOB_DIR` watch a job started elsewhere, or review a finished one
  `python cli.py tui --tune DIR`       the trials of a search (DIR/trials.parquet)
  run_job(job)                         run a FinetuneJob inside the UI (`finetune --ui tui`)
Textual is imported only when a UI starts.
"""

from __future__ import annotations

import os
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path


def available() -> bool:
    """Whether a full-screen UI can run here: stdin and stdout are a terminal."""
    return sys.stdin.isatty() and sys.stdout.isatty()


def run_app(**kwargs):
    """Run the app (see PeterRecApp for the keyword arguments); returns it once closed."""
    from tui.app import PeterRecApp

    with native_output_to_log() as log:
        app = PeterRecApp(**kwargs)
        app.run()
    if log is not None and log.stat().st_size:
        print(f"messages written by Ray and other native code while the UI ran: {log}", file=sys.stderr)
    elif log is not None:
        log.unlink(missing_ok=True)
    return app


@contextmanager
def native_output_to_log():
    """Native code (Ray's core worker, raylet and GCS) writes warnings straight to file descriptor 2, the
    terminal the UI draws on. While the UI runs, fd 2 goes to a log file, and the UI gets its own handle on
    the terminal (Textual writes to sys.__stderr__). Yields the log's path (None without a terminal)."""
    if not sys.__stderr__ or not sys.__stderr__.isatty():
        yield None
        return
    log_path = Path(tempfile.gettempdir()) / f"peterrec-tui-{os.getpid()}.log"
    sys.__stderr__.flush()
    saved = sys.__stderr__
    terminal = open(os.dup(2), "w", encoding=saved.encoding or "utf-8", errors="backslashreplace")
    with open(log_path, "a", encoding="utf-8") as log:
        os.dup2(log.fileno(), 2)
        sys.__stderr__ = terminal
        try:
            yield log_path
        finally:
            terminal.flush()
            os.dup2(terminal.fileno(), 2)
            sys.__stderr__ = saved
            terminal.close()


def run_job(job):
    """Run `job` (an orchestrator.job.FinetuneJob, or a callable returning one) inside the UI and return
    its final JobState (None if it never started). Quitting the UI stops the job cleanly; an error
    raised by the job is raised again here. Callers check available() first and otherwise keep their
    rich / plain display."""
    if not available():
        raise RuntimeError("the terminal UI needs a terminal (stdin and stdout are not a TTY)")
    app = run_app(job=job)
    if app.job_error is not None:
        raise app.job_error
    if app.final_state is not None:
        return app.final_state
    return app.client.state() if app.client is not None else None
