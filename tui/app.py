"""The PeterRec terminal UI: launch a fine-tuning job, watch it, act on it, review it.

One App. It holds the JobClient of the job it shows and polls `client.state()` off the UI thread
(a thread worker) into the reactive `view`, which the dashboard and the detail screen watch. A job
started here runs in another thread worker (`FinetuneJob.run`); the UI acts on it only through the
client (cancel, retry_failed, stop). Widgets are touched only on the UI thread: workers hand results
back with `call_from_thread`.
"""

from __future__ import annotations

import faulthandler
import time
from pathlib import Path

from textual import work
from textual.app import App
from textual.binding import Binding
from textual.reactive import reactive
from textual.worker import Worker, WorkerState

from orchestrator.client import LIVE_STATUSES, JobClient, launch
from tui.dialogs import ConfirmScreen, ExportScreen
from tui.launch import LaunchSettings
from tui.view import JobView

POLL_S = 0.5


class PeterRecApp(App):
    """`client`: watch that job (attach / review); `job`: run this FinetuneJob (or a callable making one)
    and watch it; `tune_dir`: show a search's trials; none of them: the launcher."""

    CSS_PATH = "app.tcss"
    TITLE = "PeterRec"
    ENABLE_COMMAND_PALETTE = False
    BINDINGS = [Binding("ctrl+q", "quit", "Quit", priority=True, show=False)]

    view: reactive[JobView | None] = reactive(None, always_update=True)

    def __init__(self, *, client=None, job=None, tune_dir: str | Path | None = None,
                 defaults: LaunchSettings | None = None, poll_s: float = POLL_S):
        super().__init__()
        # Ray enables faulthandler on sys.stderr, which inside the app is a capture without a file
        # descriptor: enable it here, on file descriptor 2, so Ray leaves it alone.
        if not faulthandler.is_enabled():
            faulthandler.enable(file=2)
        self.client = client
        self.pending_job = job
        self.tune_dir = tune_dir
        self.defaults = defaults or LaunchSettings()
        self.poll_s = poll_s
        self.job_worker: Worker | None = None
        self.job_error: BaseException | None = None
        self.final_state = None
        self.stopping = False  # quit asked while a job runs here: stop it, then exit
        self.budget = None
        self._reading = False
        self._poll_timer = None

    def on_mount(self) -> None:
        from tui.dashboard import DashboardScreen
        from tui.launcher import LauncherScreen
        from tui.tune import TuneScreen

        if self.tune_dir is not None:
            self.push_screen(TuneScreen(self.tune_dir))
        elif self.pending_job is not None:
            self.push_screen(DashboardScreen())
            self.run_job(self.pending_job)
        elif self.client is not None:
            self.push_screen(DashboardScreen())
            self.watch_client(self.client)
        else:
            self.push_screen(LauncherScreen(self.defaults))

    # Watching a job ------------------------------------------------------------------------------------

    def watch_client(self, client) -> None:
        self.client = client
        self.compute_budget()
        self.poll()
        if self._poll_timer is None:
            self._poll_timer = self.set_interval(self.poll_s, self.poll)

    def poll(self) -> None:
        if self.client is not None and not self._reading and not self._settled():
            self._reading = True
            self.read_view(self.client)

    def _settled(self) -> bool:
        """A job that is over and fully read needs no more polls (a review of files)."""
        view = self.view
        return view is not None and view.final

    @work(thread=True, group="poll", exit_on_error=False)
    def read_view(self, client) -> None:
        """state.json (or the in-process job), and results.parquet when it changed: small reads, but
        file system reads, so never on the UI thread."""
        try:
            state = client.state()
            results = self._read_results(client)
            if client.job is not None and self.job_worker_done() and state.status in LIVE_STATUSES:
                state.status = "stopped"  # the job thread ended before the job got going (an error)
            final = state.status not in LIVE_STATUSES and self.job_worker_done()
            view = JobView(state, results, self.budget, now=time.time(), final=final)
            self._ui(self._apply_view, view)
        except Exception as e:  # noqa: BLE001  a torn read: try again next poll
            self._ui(self.log.warning, f"poll failed: {e}")
        finally:
            self._reading = False

    def _read_results(self, client) -> dict[str, dict]:
        return {r["task"]: r for r in client.results()}  # the client re-reads results.parquet only when it changed

    def _apply_view(self, view: JobView) -> None:
        if view.budget is None and self.budget is not None:
            view.budget = self.budget
        self.view = view

    @work(thread=True, group="budget", exit_on_error=False)
    def compute_budget(self) -> None:
        """The job's parameter budget (every task, planned); spec and checkpoint reads, torch import."""
        self._ui(self._set_budget, self.client.budget())

    def _set_budget(self, budget) -> None:
        self.budget = budget
        if self.view is not None:
            self.view = JobView(self.view.state, self.view.results, budget, self.view.now, self.view.final)

    # Running a job here --------------------------------------------------------------------------------

    def start_job(self, settings) -> None:
        """From the launcher: plan the job (off the UI thread), then run it and show the dashboard."""
        self.run_job(lambda: launch(settings))

    def run_job(self, job_or_factory) -> None:
        self.job_worker = self._job_thread(job_or_factory)

    @work(thread=True, group="job", exit_on_error=False)
    def _job_thread(self, job_or_factory):
        try:
            job = job_or_factory() if callable(job_or_factory) else job_or_factory
        except Exception as e:  # noqa: BLE001  a problem in the spec, data, backbone or settings
            self._ui(self._job_not_started, e)
            return None
        if self.stopping:  # quit while the job was being planned
            job.plan.release()
            return None
        client = JobClient(job.plan.job_dir, job)
        self._ui(self._job_started, client)
        try:
            return job.run()
        except BaseException as e:
            job.plan.release()  # (run() releases it too, unless the cluster could not even be reached)
            self.job_error = e
            started = any(t.attempts or t.finished for t in client.state().tasks.values())
            self._ui(self._job_failed, e, started)
            raise

    def _job_failed(self, error: BaseException, started: bool) -> None:
        """A job that failed before any task ran (cluster unreachable, too small...) goes back to the
        launcher, with the error next to Start; otherwise the dashboard stays, with a notice."""
        from tui.launcher import LauncherScreen

        launcher = next((s for s in self.screen_stack if isinstance(s, LauncherScreen)), None)
        if started or launcher is None:
            self.notify(f"the job stopped with an error: {error}", title="job", severity="error", timeout=60)
            return
        while self.screen is not launcher:
            self.pop_screen()
        self.client, self.view, self.budget, self.job_error = None, None, None, None
        launcher.show_error(f"the job could not start: {error}. Its directory now holds state.json: pick "
                            f"'resume' to try again there.", "existing")

    def _job_not_started(self, error: Exception) -> None:
        from tui.launch import LAUNCHER_FIELD
        from tui.launcher import LauncherScreen

        if isinstance(self.screen, LauncherScreen):
            field = getattr(error, "field", None)
            self.screen.show_error(str(error), LAUNCHER_FIELD.get(field, field))
        else:
            self.job_error = error
            self.notify(str(error), title="cannot start the job", severity="error", timeout=60)

    def _job_started(self, client) -> None:
        from tui.dashboard import DashboardScreen
        from tui.launcher import LauncherScreen

        self.watch_client(client)
        if self.stopping:  # quit was confirmed while the job was being planned
            self.stop_and_exit()
        if isinstance(self.screen, LauncherScreen):  # kept below: a job that cannot start comes back to it
            self.push_screen(DashboardScreen())

    def job_worker_done(self) -> bool:
        return self.job_worker is None or self.job_worker.is_finished

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.worker is not self.job_worker or not event.worker.is_finished:
            return
        if event.state == WorkerState.SUCCESS:
            self.final_state = event.worker.result
        self.poll()  # the final state
        if self.stopping:
            self.exit()

    # Acting on the job (through the client) --------------------------------------------------------------

    def _act(self, what: str, call) -> None:
        if self.client is None:
            self.notify("no job yet", severity="warning")
            return
        self.act_in_thread(what, call)

    @work(thread=True, group="act", exit_on_error=False)
    def act_in_thread(self, what: str, call) -> None:
        try:
            call()
            self._ui(self.notify, what, timeout=4)
            self._ui(self.poll)
        except (RuntimeError, KeyError) as e:
            self._ui(self.notify, str(e).strip("'\""), severity="warning", timeout=8)

    def cancel_task(self, name: str) -> None:
        task = self.view.state.tasks.get(name) if self.view else None
        if task is not None and task.finished:
            self.notify(f"{name} is already {task.status}", severity="warning")
            return

        def answered(yes: bool) -> None:
            if yes:
                self._act(f"cancelling {name}", lambda: self.client.cancel(name))

        self.push_screen(ConfirmScreen(f"Cancel task [b]{name}[/b]? It is recorded failed ('cancelled'); "
                                       f"r (retry failed) runs it again.", "Cancel task", "Keep running"),
                         answered)

    def action_retry_failed(self) -> None:
        self.retry_failed()

    def retry_failed(self) -> None:
        failed = [n for n, t in self.view.state.tasks.items() if t.status == "failed"] if self.view else []
        if not failed:
            self.notify("no failed tasks", severity="information")
            return
        self._act(f"retrying {len(failed)} failed task(s)", self.client.retry_failed)

    def action_stop_job(self) -> None:
        """Stop the whole job (any driver, through the client) but keep watching it."""
        if self.view is None or not self.view.live:
            self.notify("the job is not running", severity="warning")
            return

        def answered(yes: bool) -> None:
            if yes:
                self._act("stopping the job: running tasks stop at their next progress report",
                          self.client.stop)

        self.push_screen(ConfirmScreen("Stop the job? Running tasks are interrupted and nothing new starts; "
                                       "`finetune --resume` continues it later.", "Stop the job", "Keep running"),
                         answered)

    def action_export_bundle(self) -> None:
        self.export_bundle()

    def export_bundle(self) -> None:
        if self.client is None:
            return
        job_dir = Path(self.client.job_dir)
        if not self.client.has_bundle():
            self.notify("no finished task yet: the bundle is empty", severity="warning")
            return
        default = str(job_dir.parent / f"{job_dir.name}-bundle.tar")

        def chosen(path: str | None) -> None:
            if path:
                self.notify(f"exporting the bundle to {path}...", timeout=4)
                self.export_in_thread(path)

        self.push_screen(ExportScreen(default), chosen)

    @work(thread=True, group="export", exit_on_error=False)
    def export_in_thread(self, out: str) -> None:
        try:
            path, tasks = self.client.export(out)
            self._ui(self.notify, f"wrote {path}: {tasks} task(s), {path.stat().st_size:,} bytes",
                     title="bundle exported", timeout=15)
        except (FileExistsError, OSError, ValueError) as e:
            self._ui(self.notify, str(e), title="export failed", severity="error", timeout=20)

    def open_detail(self, name: str) -> None:
        from tui.detail import TaskDetailScreen

        self.push_screen(TaskDetailScreen(name))

    # Quitting ---------------------------------------------------------------------------------------------

    def job_runs_here(self) -> bool:
        return self.job_worker is not None and not self.job_worker.is_finished

    async def action_quit(self) -> None:
        if self.stopping:
            self.notify("stopping the job: running tasks stop at their next progress report...", timeout=5)
            return
        if self.job_runs_here():
            def answered(yes: bool) -> None:
                if yes:
                    self.stop_and_exit()

            self.push_screen(ConfirmScreen("A job runs in this window. Stop it and quit?\n\nRunning tasks are "
                                           "interrupted and nothing new starts; finished tasks keep their "
                                           "results and bundle entries, and `finetune --resume` continues "
                                           "the rest.", "Stop and quit", "Keep watching"), answered)
        elif self.view is not None and self.view.live:
            def leave(yes: bool) -> None:
                if yes:
                    self.exit()

            self.push_screen(ConfirmScreen("Leave? The job keeps running in its own process; "
                                           "`tui --attach` watches it again.", "Leave", "Stay"), leave)
        else:
            self.exit()

    def stop_and_exit(self) -> None:
        self.stopping = True
        if self.client is None:  # still planning: the worker notices `stopping` and returns
            return
        self.notify("stopping the job...", timeout=10)
        try:
            self.client.stop()
        except RuntimeError:  # it had just finished
            pass

    # Helpers ------------------------------------------------------------------------------------------------

    def _ui(self, fn, *args, **kwargs) -> None:
        """Run fn on the UI thread (from a worker); nothing when the app has already closed."""
        try:
            self.call_from_thread(fn, *args, **kwargs)
        except RuntimeError:
            pass
