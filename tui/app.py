"""The PeterRec terminal UI: launch a fine-tuning job, watch it, act on it, review it.

One App. It holds the JobClient of the job it shows and polls `client.state()` off the UI thread
(a thread worker) into the reactive `view`, which the dashboard and the detail screen watch. A job
started here runs in another thread worker (`FinetuneJob.run`); the UI acts on it only through the
client (cancel, retry_failed, stop). Widgets are touched only on the UI thread: workers hand results
back with `call_from_thread`.
"""

from __future__ import annotations

import faulthandler
import gc
import time
from pathlib import Path

from textual import work
from textual.app import App
from textual.binding import Binding
from textual.reactive import reactive
from textual.worker import Worker, WorkerState

from orchestrator.client import LIVE_STATUSES, JobClient, launch
from orchestrator.client import status as st
from tui.dialogs import ConfirmScreen, ExportScreen
from tui.keys import HelpScreen, key_commands
from tui.launch import LaunchSettings
from tui.view import JobView

POLL_S = 0.5


class PeterRecApp(App):
    """`client`: watch that job (attach / review); `job`: run this FinetuneJob (or a callable making one)
    and watch it; `tune_dir`: show a search's trials; none of them: the launcher."""

    CSS_PATH = "app.tcss"
    TITLE = "PeterRec"
    ENABLE_COMMAND_PALETTE = True  # ctrl+p: every key of the screen is also a command there
    BINDINGS = [Binding("ctrl+q", "quit", "Quit", priority=True, show=False),
                Binding("question_mark", "help", "Help", show=False),
                Binding("ctrl+p", "command_palette", "Commands", priority=True,
                        tooltip="the command palette: every key of the screen, by name")]

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
        self.alerted: tuple[str | None, set[str]] = (None, set())  # job status and failed tasks already told

    def on_mount(self) -> None:
        from tui.dashboard import DashboardScreen
        from tui.launcher import LauncherScreen
        from tui.tune import TuneScreen

        # Python's full garbage collections scan every object: with Textual, pyarrow and the app loaded that
        # is ~250k of them, a pause of 0.3-0.8 s on a busy 2-core machine, long enough to eat a key press.
        # What is loaded by now lives as long as the app: frozen, later full collections skip it.
        gc.freeze()
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
        self.alert(view)
        self.view = view

    def alert(self, view: JobView) -> None:
        """The terminal bell and a toast when the watched job ends (done, stopped, lost) or tasks fail.
        What was already so when the app first saw the job is not news."""
        state = view.state
        failed = {n for n, t in state.tasks.items() if t.status == st.FAILED}
        seen_status, seen_failed = self.alerted
        self.alerted = (state.status, failed)
        if seen_status is None:
            return
        new = sorted(failed - seen_failed)
        if new and state.status in LIVE_STATUSES:
            self.bell()
            self.notify(f"{', '.join(new[:3])}{f' and {len(new) - 3} more' if len(new) > 3 else ''}: "
                        f"{state.tasks[new[0]].error or 'failed'}", title=f"{len(new)} task(s) failed",
                        severity="warning", timeout=10)
        if seen_status in LIVE_STATUSES and state.status not in LIVE_STATUSES:
            self.bell()
            severity = {st.JOB_DONE: "information" if not failed else "warning", st.STOPPED: "warning",
                        st.LOST: "error"}.get(state.status, "information")
            about = {st.LOST: "its driver is gone; `finetune --resume` continues it"}.get(state.status, "")
            self.notify(f"{state.tally()}{'; ' + about if about else ''}", title=f"job {state.status}",
                        severity=severity, timeout=30)

    @work(thread=True, group="budget", exit_on_error=False)
    def compute_budget(self) -> None:
        """The job's parameter budget (every task, planned); spec and checkpoint reads, torch import.
        A read that fails (a file being replaced) is tried again a little later."""
        try:
            budget = self.client.budget()
        except Exception as e:  # noqa: BLE001
            self._ui(self.log.warning, f"budget: {e}")
            self._ui(self.set_timer, 2.0, self.compute_budget)
            return
        self._ui(self._set_budget, budget)

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
            field = "existing" if isinstance(error, FileExistsError) else getattr(error, "field", None)
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
        if self.stopping and self.client is not None:  # the last view is the job's final word, then exit
            state = self.client.state()
            self._apply_view(JobView(state, self._read_results(self.client), self.budget, time.time(), final=True))
            self.exit()
            return
        self.poll()  # the final state

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
        self.cancel_tasks([name])

    def cancel_tasks(self, names: list[str]) -> None:
        tasks = self.view.state.tasks if self.view else {}
        open_ = [n for n in names if n in tasks and not tasks[n].finished]
        if not open_:
            self.notify(f"{names[0]} is already {tasks[names[0]].status}" if len(names) == 1 and names[0] in tasks
                        else "none of these tasks is still to run", severity="warning")
            return
        what = f"task [b]{open_[0]}[/b]" if len(open_) == 1 else f"[b]{len(open_)} tasks[/b]"

        def answered(yes: bool) -> None:
            if yes:
                self._act(f"cancelling {open_[0] if len(open_) == 1 else f'{len(open_)} tasks'}",
                          lambda: [self.client.cancel(n) for n in open_])

        self.push_screen(ConfirmScreen(f"Cancel {what}? A cancelled task is recorded failed ('cancelled'); "
                                       f"r (retry) runs it again.", "Cancel", "Keep running"), answered)

    def action_retry_failed(self) -> None:
        self.retry_tasks(None)

    def retry_failed(self) -> None:
        self.retry_tasks(None)

    def retry_tasks(self, names: list[str] | None) -> None:
        """Retry these tasks (those of them that failed), or every failed task (None)."""
        tasks = self.view.state.tasks if self.view else {}
        failed = [n for n, t in tasks.items() if t.status == st.FAILED and (names is None or n in names)]
        if not failed:
            self.notify("no failed task to retry" + (" among the marked ones" if names else ""),
                        severity="information")
            return
        if names is None:
            self._act(f"retrying {len(failed)} failed task(s)", self.client.retry_failed)
        else:
            self._act(f"retrying {len(failed)} failed task(s)", lambda: [self.client.retry(n) for n in failed])

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

    def open_detail(self, name: str, pane: str = "curves", compare: list[str] | None = None) -> None:
        from tui.detail import TaskDetailScreen

        self.push_screen(TaskDetailScreen(name, pane, compare))

    def action_resources(self) -> None:
        from tui.resources import ResourcesScreen

        if self.client is None:
            self.notify("no job yet", severity="warning")
            return
        self.push_screen(ResourcesScreen())

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen(self.screen))

    def get_system_commands(self, screen):
        yield from key_commands(screen)
        yield from super().get_system_commands(screen)

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
