"""Tune view: the trials of a hyper-parameter search, per task, with their configs and scores, live.

Reads the search directory through the client (orchestrator.client.SearchClient: DIR/trials.parquet, one
row per trial, which a running search rewrites every few seconds and which is re-read whenever it changes);
a task's best trial is the client's rule (best_trial). Tab moves between the tasks and the trials of the
highlighted task; the config of the highlighted row is shown whole underneath (never cut).
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Static

from orchestrator.client import SearchClient, best_trial
from tui.keys import KeyFooter

STATUS_STYLE = {"done": "green", "terminated": "green", "stopped": "yellow", "failed": "bold red",
                "error": "bold red", "running": "bold cyan", "pending": "dim", "unfinished": "dim"}
WIDE = 110  # columns from which the task table shows done, stopped, failed and open apart


def config_text(config: dict) -> str:
    return " ".join(f"{k}={_short(v)}" for k, v in config.items())


def _short(value) -> str:
    """A config value as typed: 0.01 stays 0.01, 3e-05 stays 3e-05 (six significant digits)."""
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _score(value: float | None, style: str = "") -> Text:
    return Text("" if value is None else f"{value:.4f}", style=style)


def fill(table: DataTable, columns: tuple[tuple[str, str], ...], rows: dict[str, tuple]) -> None:
    """Replace a table's columns and rows; widths computed here from the content, so the table looks
    the same however soon it is drawn. The cursor stays on its row."""
    current = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value if table.row_count else None
    table.clear(columns=True)
    for i, (key, label) in enumerate(columns):
        width = max([len(label)] + [Text(r[i]).cell_len if isinstance(r[i], str) else r[i].cell_len
                                     for r in rows.values()])
        table.add_column(label, key=key, width=width)
    for key, row in rows.items():
        table.add_row(*row, key=key)
    if current in rows:
        table.move_cursor(row=list(rows).index(current), animate=False)


class TuneScreen(Screen):
    """Tasks of a search (trials, best score so far) above the trials of the highlighted task."""

    TITLE = "Tune"
    HELP = ("The tasks of a search above the trials of the highlighted task; a running search rewrites "
            "trials.parquet every few seconds and this view follows it. * marks the best trial so far.")
    BINDINGS = [Binding("tab", "switch_table", "Switch table", priority=True),
                Binding("question_mark", "app.help", "Help"),
                Binding("q", "app.quit", "Quit")]

    def __init__(self, folder: str | Path, poll_s: float = 1.0):
        super().__init__()
        self.folder = Path(folder)
        self.search = SearchClient(self.folder)
        self.poll_s = poll_s
        self.trials: list = []
        self.loaded = False
        self.problem: str | None = None
        self.selected: str | None = None
        self.wide: bool | None = None

    def compose(self) -> ComposeResult:
        yield Static(id="tune-title")
        yield DataTable(id="tune-tasks", cursor_type="row", zebra_stripes=True)
        yield Static(id="tune-trials-title")
        yield DataTable(id="tune-trials", cursor_type="row", zebra_stripes=True)
        yield Static(id="tune-config")
        yield KeyFooter()

    def on_mount(self) -> None:
        self.query_one("#tune-tasks", DataTable).focus()
        self.reload()
        self.set_interval(self.poll_s, self.reload)

    def on_resize(self) -> None:
        if self.loaded and self.wide != (self.size.width >= WIDE):
            self._show(self.trials, self.problem)

    @work(thread=True, exclusive=True, group="tune-read")
    def reload(self) -> None:
        if self.loaded and not self.search.changed():
            self.app.call_from_thread(self._title)  # the "updated ... ago" of a live search
            return
        try:
            trials, problem = self.search.trials(), None
        except (OSError, ValueError) as e:
            trials, problem = [], str(e)
        self.app.call_from_thread(self._show, trials, problem)

    def _title(self) -> None:
        by_task = {t.task for t in self.trials}
        title = Text()
        title.append("tune ", style="dim").append(str(self.folder), style="bold")
        title.append(f"  {len(self.trials)} trials over {len(by_task)} tasks")
        running = sum(t.status == "running" for t in self.trials)
        waiting = sum(t.status in ("pending", "paused") for t in self.trials)
        unfinished = sum(t.status == "unfinished" for t in self.trials)
        if running or waiting:  # a search running now rewrites the file every few seconds
            title.append(f"  {running} running, {waiting} waiting", style="bold cyan")
            updated = self.search.updated_at()
            if updated:
                title.append(f" (updated {max(time.time() - updated, 0):.0f}s ago)", style="dim")
        elif unfinished:
            title.append(f"  {unfinished} unfinished: the search was interrupted (tune --resume)", style="yellow")
        if self.problem:
            title.append(f"\n{self.problem}", style="bold red")
        self.query_one("#tune-title", Static).update(title)

    def _show(self, trials: list, problem: str | None) -> None:
        self.trials, self.loaded, self.problem = trials, True, problem
        self.wide = self.size.width >= WIDE
        by_task: dict[str, list] = {}
        for t in trials:
            by_task.setdefault(t.task, []).append(t)
        self._title()
        table = self.query_one("#tune-tasks", DataTable)
        current = self.selected
        rows = {}
        for name, group in by_task.items():
            top = best_trial(group)
            baseline = next((t for t in group if t.baseline), None)
            count = lambda state: sum(t.state == state for t in group)  # noqa: E731
            failed = count("failed")
            outcome = (str(count("done")), str(count("stopped")), Text(str(failed), style="red" if failed else ""),
                       str(count("open")))
            if not self.wide:
                outcome = (Text("/").join(Text(o) if isinstance(o, str) else o for o in outcome),)
            rows[name] = (name, group[0].metric or "", str(len(group)), *outcome,
                          _score(baseline.score if baseline else None),
                          _score(top.score if top else None, "bold green"), top.trial_id if top else "")
        outcome_columns = ((("done", "done"), ("stopped", "stopped"), ("failed", "failed"), ("open", "open"))
                           if self.wide else (("outcome", "d/s/f/open"),))
        fill(table, (("task", "task"), ("metric", "metric"), ("trials", "trials"), *outcome_columns,
                     ("baseline", "baseline"), ("best", "best"), ("trial", "best trial")), rows)
        names = list(by_task)
        if names:
            self.selected = current if current in names else names[0]
            table.move_cursor(row=names.index(self.selected), animate=False)
        self._show_trials()

    @on(DataTable.RowHighlighted, "#tune-tasks")
    def task_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.row_key is not None and event.row_key.value != self.selected:
            self.selected = event.row_key.value
            self._show_trials()
        self._show_config()

    @on(DataTable.RowHighlighted, "#tune-trials")
    def trial_highlighted(self, _event: DataTable.RowHighlighted) -> None:
        self._show_config()

    def _group(self) -> list:
        return sorted((t for t in self.trials if t.task == self.selected),
                      key=lambda t: (t.score is None, -(t.score or 0.0)))

    def _show_trials(self) -> None:
        table = self.query_one("#tune-trials", DataTable)
        group = self._group()
        top = best_trial(group)
        rows = {}
        for t in group:
            mark = " *" if top is not None and t.trial_id == top.trial_id else ""
            rows[f"{t.task}/{t.trial_id}"] = (
                t.trial_id + mark, "baseline" if t.baseline else ("" if t.sample is None else str(t.sample)),
                Text(t.status, style=STATUS_STYLE.get(t.status, "")), _score(t.score), _score(t.test_value),
                Text((t.error or "")[:60], style="red"))
        fill(table, (("trial", "trial"), ("sample", "sample"), ("status", "status"), ("score", "score"),
                     ("test", "test"), ("error", "error")), rows)
        title = Text()
        if self.selected:
            title.append("trials of ", style="dim").append(self.selected, style="bold")
            title.append("  (best first; * best so far)", style="dim")
        self.query_one("#tune-trials-title", Static).update(title)
        self._show_config()

    def _show_config(self) -> None:
        """The highlighted trial's config (in the trial table) or the task's best (in the task table), whole."""
        group = self._group()
        trials_table = self.query_one("#tune-trials", DataTable)
        if self.focused is trials_table and trials_table.row_count:
            key = trials_table.coordinate_to_cell_key(trials_table.cursor_coordinate).row_key.value
            trial = next((t for t in group if f"{t.task}/{t.trial_id}" == key), None)
            what = "config of trial"
        else:
            trial, what = best_trial(group), "best config"
        text = Text()
        if trial is not None:
            text.append(f"{what} {trial.trial_id}: ", style="dim").append(config_text(trial.config) or "(defaults)")
            if trial.error:
                text.append(f"\nerror: {trial.error}", style="red")
        self.query_one("#tune-config", Static).update(text)

    def action_switch_table(self) -> None:
        tasks, trials = self.query_one("#tune-tasks", DataTable), self.query_one("#tune-trials", DataTable)
        (trials if self.focused is tasks else tasks).focus()
        self._show_config()
